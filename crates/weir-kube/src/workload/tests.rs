use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use weir_core::config::SourceFile;
use weir_core::{Config, MeshSettings};

use super::*;
use crate::document;

/// A Pod as the API server returns it (JSON), with `patch` merged over the
/// top-level sections.
fn pod(patch: Value) -> Pod {
    let mut base = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "kafka-0", "namespace": "data", "uid": "5f1c-77",
            "labels": {"app": "kafka", "statefulset.kubernetes.io/pod-name": "kafka-0"},
            "annotations": {"prometheus.io/scrape": "true"},
            "creationTimestamp": "2024-05-01T10:00:00Z",
            "resourceVersion": "812"
        },
        "spec": {
            "serviceAccountName": "kafka",
            "nodeName": "node-a",
            "containers": [{"name": "broker", "image": "kafka",
                            "ports": [{"name": "client", "containerPort": 9092}]}]
        },
        "status": {"phase": "Running", "podIP": "198.18.1.10",
                   "podIPs": [{"ip": "198.18.1.10"}], "hostIP": "198.18.0.1",
                   "conditions": [
                       {"type": "Initialized", "status": "True"},
                       {"type": "Ready", "status": "True",
                        "lastTransitionTime": "2024-05-01T10:00:09Z"},
                       {"type": "ContainersReady", "status": "True"},
                       {"type": "PodScheduled", "status": "True"}
                   ]}
    });
    for (section, fields) in patch.as_object().unwrap() {
        let target = base[section].as_object_mut().unwrap();
        for (k, v) in fields.as_object().unwrap() {
            if v.is_null() {
                target.remove(k);
            } else {
                target.insert(k.clone(), v.clone());
            }
        }
    }
    serde_json::from_value(base).unwrap()
}

fn ambient() -> BTreeMap<String, String> {
    [(DATAPLANE_MODE_LABEL.to_owned(), AMBIENT.to_owned())].into()
}

fn load_one(yaml: &str) -> Workload {
    let c = Config::from_sources(&[SourceFile::new("w.yaml", yaml)], MeshSettings::default())
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(c.workloads.len(), 1);
    c.workloads[0].clone()
}

#[test]
fn pod_is_the_workload_the_file_source_loads() {
    let w = workload_from_pod(&pod(json!({})), &ambient()).unwrap();
    // The equivalent document, written by hand as a local-mode user would.
    let file = load_one(
        "apiVersion: weir.dev/v1alpha1
kind: Workload
metadata:
  name: kafka-0
  namespace: data
  labels:
    app: kafka
    statefulset.kubernetes.io/pod-name: kafka-0
  annotations:
    weir.dev/pod-uid: 5f1c-77
spec:
  serviceAccount: kafka
  address: 198.18.1.10
  node: node-a
",
    );
    assert_eq!(w, file);
    assert_eq!(w.netns, "kafka-0", "the loader's default");
    assert_eq!(
        w.identity(&MeshSettings::default().trust_domain)
            .to_string(),
        "spiffe://cluster.local/ns/data/sa/kafka"
    );
    // And the document the Kubernetes source serves loads back to it.
    let served = serde_yaml_ng::to_string(&document::workload(&w)).unwrap();
    assert_eq!(load_one(&served), w);
}

#[test]
fn defaults() {
    let p = pod(json!({
        "metadata": {"labels": null, "uid": null, "namespace": null},
        "spec": {"serviceAccountName": null},
        "status": {"podIP": "198.18.1.5"}
    }));
    let w = workload_from_pod(&p, &ambient()).unwrap();
    assert_eq!(w.service_account, "default");
    assert_eq!(w.namespace(), "default");
    assert!(w.metadata.labels.is_empty());
    assert!(w.metadata.annotations.is_empty());
    assert_eq!(w.address.to_string(), "198.18.1.5");
    let file = load_one(
        "apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: kafka-0}\nspec: {address: 198.18.1.5, node: node-a}\n",
    );
    assert_eq!(w, file);
    let served = serde_yaml_ng::to_string(&document::workload(&w)).unwrap();
    assert_eq!(load_one(&served), w);
}

/// An IPv6 Pod maps to a Workload document, which the loader then refuses
/// (capture is IPv4 only), so the source leaves it out as invalid, with the
/// reason, instead of serving a workload whose traffic would bypass the mesh.
#[test]
fn ipv6_pods_are_refused_with_the_reason() {
    let p = pod(json!({"status": {"podIP": "fd00::5", "podIPs": [{"ip": "fd00::5"}]}}));
    let w = workload_from_pod(&p, &ambient()).unwrap();
    assert_eq!(w.address.to_string(), "fd00::5");
    let served = serde_yaml_ng::to_string(&document::workload(&w)).unwrap();
    let e = Config::from_sources(
        &[SourceFile::new("w.yaml", &served)],
        MeshSettings::default(),
    )
    .unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].field.as_deref(), Some("spec.address"));
    assert!(e.0[0].message.contains("IPv4 only"), "{}", e.0[0].message);
}

/// Dual-stack with IPv6 as the primary family: the Pod's IPv4 address
/// from `podIPs` is its Workload address (capture is IPv4 only).
#[test]
fn a_dual_stack_pod_gets_its_ipv4_address() {
    let p = pod(json!({"status": {"podIP": "fd00::5",
                                   "podIPs": [{"ip": "fd00::5"}, {"ip": "10.244.1.5"}]}}));
    let w = workload_from_pod(&p, &ambient()).unwrap();
    assert_eq!(w.address.to_string(), "10.244.1.5");
    // And the pruned Pod the source keeps still has them.
    let pruned = crate::source::prune_pod_for_test(p);
    let w = workload_from_pod(&pruned, &ambient()).unwrap();
    assert_eq!(w.address.to_string(), "10.244.1.5");
}

#[test]
fn enrollment_follows_istio() {
    let none: BTreeMap<String, String> = BTreeMap::new();
    let label = |v: &str| -> BTreeMap<String, String> {
        [(DATAPLANE_MODE_LABEL.to_owned(), v.to_owned())].into()
    };
    let sidecar: BTreeMap<String, String> =
        [(SIDECAR_STATUS_ANNOTATION.to_owned(), "{}".to_owned())].into();
    // (pod labels, pod annotations, namespace labels, expected)
    let cases: Vec<(_, _, _, Result<(), PodSkip>)> = vec![
        (none.clone(), none.clone(), ambient(), Ok(())),
        (label("ambient"), none.clone(), none.clone(), Ok(())),
        (
            none.clone(),
            none.clone(),
            none.clone(),
            Err(PodSkip::NotEnrolled),
        ),
        (
            none.clone(),
            none.clone(),
            label("none"),
            Err(PodSkip::NotEnrolled),
        ),
        (
            none.clone(),
            none.clone(),
            label("sidecar"),
            Err(PodSkip::NotEnrolled),
        ),
        (
            label("none"),
            none.clone(),
            ambient(),
            Err(PodSkip::OptedOut),
        ),
        (
            label("none"),
            none.clone(),
            none.clone(),
            Err(PodSkip::OptedOut),
        ),
        (
            none.clone(),
            sidecar.clone(),
            ambient(),
            Err(PodSkip::HasSidecar),
        ),
        (
            label("ambient"),
            sidecar.clone(),
            none.clone(),
            Err(PodSkip::HasSidecar),
        ),
        // An unknown value on the pod defers to the namespace.
        (label("bogus"), none.clone(), ambient(), Ok(())),
    ];
    for (pl, pa, nl, want) in cases {
        assert_eq!(
            enrollment(&pl, &pa, &nl),
            want,
            "pod {pl:?} {pa:?} ns {nl:?}"
        );
    }
    // Through workload_from_pod: the pod's own label enrolls it.
    let p = pod(json!({"metadata": {"labels": {DATAPLANE_MODE_LABEL: "ambient"}}}));
    assert!(workload_from_pod(&p, &BTreeMap::new()).is_ok());
    assert_eq!(
        workload_from_pod(&pod(json!({})), &BTreeMap::new()),
        Err(PodSkip::NotEnrolled)
    );
}

#[test]
fn pods_that_are_not_workloads() {
    let ns = ambient();
    let cases = [
        (json!({"spec": {"hostNetwork": true}}), PodSkip::HostNetwork),
        (
            json!({"status": {"phase": "Succeeded"}}),
            PodSkip::Finished("Succeeded".into()),
        ),
        (
            json!({"status": {"phase": "Failed"}}),
            PodSkip::Finished("Failed".into()),
        ),
        // Its node stopped reporting: istiod leaves it out too.
        (
            json!({"status": {"phase": "Unknown"}}),
            PodSkip::NotRunning("Unknown".into()),
        ),
        (json!({"status": {"podIP": null}}), PodSkip::NoAddress),
        (json!({"status": {"podIP": ""}}), PodSkip::NoAddress),
        (
            json!({"status": {"podIP": "10.0.0"}}),
            PodSkip::BadAddress("10.0.0".into()),
        ),
        (json!({"spec": {"nodeName": null}}), PodSkip::NotScheduled),
    ];
    for (patch, want) in cases {
        let p = pod(patch.clone());
        assert_eq!(workload_from_pod(&p, &ns), Err(want.clone()), "{patch}");
        assert!(!want.to_string().is_empty());
        assert!(!want.metric_label().is_empty());
    }
}

#[test]
fn pending_and_terminating_pods_with_an_address_are_workloads() {
    let ns = ambient();
    let pending = pod(json!({"status": {"phase": "Pending"}}));
    assert!(workload_from_pod(&pending, &ns).is_ok());
    let terminating = pod(json!({"metadata": {
        "deletionTimestamp": "2024-05-01T11:00:00Z", "deletionGracePeriodSeconds": 30
    }}));
    let w = workload_from_pod(&terminating, &ns).unwrap();
    assert_eq!(w.address.to_string(), "198.18.1.10");
    assert!(
        !w.ready,
        "a terminating Pod takes no new Service connections"
    );
    // Pod annotations other than the UID are not copied.
    assert_eq!(
        w.metadata.annotations.keys().collect::<Vec<_>>(),
        [POD_UID_ANNOTATION]
    );
}

/// Readiness as an EndpointSlice's `ready`: the Ready condition is True
/// and the Pod is not terminating; it survives the document round trip.
#[test]
fn readiness_follows_the_ready_condition() {
    let ns = ambient();
    assert!(workload_from_pod(&pod(json!({})), &ns).unwrap().ready);
    let conditions = |ready: &str| {
        json!({"status": {"conditions": [
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": ready, "reason": "ContainersNotReady"}
        ]}})
    };
    for (patch, want) in [
        (conditions("True"), true),
        (conditions("False"), false),
        (conditions("Unknown"), false),
        (json!({"status": {"conditions": null}}), false),
        (
            json!({"status": {"phase": "Pending", "conditions": []}}),
            false,
        ),
    ] {
        let w = workload_from_pod(&pod(patch.clone()), &ns).unwrap();
        assert_eq!(w.ready, want, "{patch}");
        let doc = document::workload(&w);
        assert_eq!(doc["spec"].get("ready").is_some(), !want, "{doc}");
        let back = load_one(&serde_yaml_ng::to_string(&doc).unwrap());
        assert_eq!(back, w, "{doc}");
    }
}

/// The metrics' workload name is the controller's, as Istio derives it:
/// a Deployment's Pod (its ReplicaSet less the pod-template-hash), a
/// CronJob's Job less its timestamp, a StatefulSet as it is; a Pod without
/// a generated name or a controller is its own workload.
#[test]
fn workload_name_comes_from_the_controller() {
    let owned = |kind: &str, owner: &str, labels: Value| {
        pod(json!({"metadata": {
            "name": "p-x7k2q", "generateName": "p-",
            "labels": labels,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Other", "name": "not-the-controller", "uid": "1"},
                {"apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": "2", "controller": true}
            ]
        }}))
    };
    let name = |p: &Pod| {
        let w = workload_from_pod(p, &ambient()).unwrap();
        w.workload_name().to_owned()
    };
    assert_eq!(
        name(&owned(
            "ReplicaSet",
            "producer-7d9f8b6c5",
            json!({"app": "producer", "pod-template-hash": "7d9f8b6c5"})
        )),
        "producer"
    );
    assert_eq!(
        name(&owned("ReplicaSet", "standalone-rs", json!({"app": "x"}))),
        "standalone-rs"
    );
    assert_eq!(
        name(&owned("Job", "nightly-28471520", json!({}))),
        "nightly"
    );
    assert_eq!(name(&owned("Job", "migrate-1", json!({}))), "migrate-1");
    assert_eq!(
        name(&owned("StatefulSet", "kafka", json!({"app": "kafka"}))),
        "kafka"
    );
    // A custom controller whose name is not an object name weir accepts:
    // the Pod's own name (the Workload must still load).
    let odd = owned("MyController", "Odd_Name", json!({}));
    assert_eq!(name(&odd), "p-x7k2q");
    let served = serde_yaml_ng::to_string(&crate::document::workload(
        &workload_from_pod(&odd, &ambient()).unwrap(),
    ))
    .unwrap();
    assert_eq!(load_one(&served).workload_name(), "p-x7k2q");
    // A Pod made by hand (no generateName, no controller): its own name.
    let plain = workload_from_pod(&pod(json!({})), &ambient()).unwrap();
    assert_eq!(plain.workload_name(), "kafka-0");
    assert!(!plain
        .metadata
        .annotations
        .contains_key(WORKLOAD_NAME_ANNOTATION));
    // It survives the served document.
    let w = workload_from_pod(
        &owned(
            "ReplicaSet",
            "producer-7d9f8b6c5",
            json!({"app": "producer", "pod-template-hash": "7d9f8b6c5"}),
        ),
        &ambient(),
    )
    .unwrap();
    let served = serde_yaml_ng::to_string(&crate::document::workload(&w)).unwrap();
    assert_eq!(load_one(&served).workload_name(), "producer");
}
