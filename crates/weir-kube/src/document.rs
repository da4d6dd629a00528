//! Cluster objects as the YAML documents weir's strict loader reads, one
//! [`SourceFile`] per object, and a load that skips invalid objects.
//!
//! Every object the Kubernetes source serves goes through the same loader as
//! `weir check` and the file source, so an invalid resource gets the same
//! message (field and text) in the cluster's log as `weir check` prints for
//! the same YAML; only the location differs: the "file" is the object, named
//! `kubernetes:<Kind>[.<group>]/<namespace>/<name>`, e.g.
//! `kubernetes:AuthorizationPolicy.security.istio.io/kafka/allow-apps`.

use std::collections::{BTreeMap, HashSet};

use kube::api::DynamicObject;
use serde_json::{json, Map, Value};
use weir_core::config::{Service, SourceFile, Workload};
use weir_core::{Config, ConfigError, ConfigErrors, MeshSettings};

/// The annotation `kubectl apply` stores the whole last applied object in;
/// dropped from documents (it doubles their size and means nothing to weir).
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// weir's API group and version.
pub const WEIR_API_VERSION: &str = "weir.dev/v1alpha1";

/// The source name of an object: `kubernetes:<Kind>[.<group>]/<ns>/<name>`
/// (the group is left out for the core API, as kubectl does).
pub fn source_name(kind: &str, group: &str, namespace: &str, name: &str) -> String {
    if group.is_empty() {
        format!("kubernetes:{kind}/{namespace}/{name}")
    } else {
        format!("kubernetes:{kind}.{group}/{namespace}/{name}")
    }
}

fn to_yaml(value: &Value) -> String {
    // A serde_json::Value always serializes (string keys, finite numbers).
    serde_yaml_ng::to_string(value).unwrap_or_default()
}

fn meta_value(meta: &weir_core::config::ObjectMeta) -> Value {
    // ObjectMeta serializes name, namespace, labels, annotations and
    // creationTimestamp only; it cannot fail.
    serde_json::to_value(meta).unwrap_or(Value::Null)
}

/// The `weir.dev/v1alpha1` `Workload` document of a Workload: loading it
/// gives back an equal Workload.
pub fn workload(w: &Workload) -> Value {
    let mut spec = Map::new();
    spec.insert("serviceAccount".into(), json!(w.service_account));
    spec.insert("address".into(), json!(w.address.to_string()));
    spec.insert("node".into(), json!(w.node));
    if w.netns != w.metadata.name {
        spec.insert("netns".into(), json!(w.netns));
    }
    if !w.ready {
        spec.insert("ready".into(), json!(false));
    }
    json!({
        "apiVersion": WEIR_API_VERSION,
        "kind": "Workload",
        "metadata": meta_value(&w.metadata),
        "spec": spec,
    })
}

/// The `weir.dev/v1alpha1` `Service` document of a Service: loading it gives
/// back an equal Service.
pub fn service(s: &Service) -> Value {
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|p| {
            let mut m = Map::new();
            if let Some(n) = &p.name {
                m.insert("name".into(), json!(n));
            }
            m.insert("port".into(), json!(p.port));
            if let Some(t) = p.target_port {
                m.insert("targetPort".into(), json!(t));
            }
            Value::Object(m)
        })
        .collect();
    let mut spec = Map::new();
    spec.insert("selector".into(), json!(s.selector));
    spec.insert("ports".into(), Value::Array(ports));
    if !s.cluster_ips.is_empty() {
        spec.insert("clusterIPs".into(), json!(s.cluster_ips));
    }
    if s.publish_not_ready_addresses {
        spec.insert("publishNotReadyAddresses".into(), json!(true));
    }
    json!({
        "apiVersion": WEIR_API_VERSION,
        "kind": "Service",
        "metadata": meta_value(&s.metadata),
        "spec": spec,
    })
}

/// The document of a custom resource (an Istio kind or one of weir's) as
/// `kubectl get -o yaml` would show it, less what the API server adds:
/// `apiVersion` and `kind` (from `api_version`/`kind`, since list items may
/// lack them), `metadata` reduced to name, namespace, labels, annotations
/// (without [`LAST_APPLIED_ANNOTATION`]) and creationTimestamp (Istio orders
/// competing policies by it), every other top-level field as stored except
/// `status` (written by controllers; it would make every status update a
/// config change). Unknown fields are kept, so the loader reports them as
/// `weir check` does.
pub fn custom_resource(api_version: &str, kind: &str, obj: &DynamicObject) -> Value {
    let m = &obj.metadata;
    let mut meta = Map::new();
    meta.insert("name".into(), json!(m.name.clone().unwrap_or_default()));
    if let Some(ns) = &m.namespace {
        meta.insert("namespace".into(), json!(ns));
    }
    if let Some(labels) = m.labels.as_ref().filter(|l| !l.is_empty()) {
        meta.insert("labels".into(), json!(labels));
    }
    let annotations: BTreeMap<&String, &String> = m
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != LAST_APPLIED_ANNOTATION)
        .collect();
    if !annotations.is_empty() {
        meta.insert("annotations".into(), json!(annotations));
    }
    if let Some(t) = &m.creation_timestamp {
        // RFC 3339 with a `Z`, the form the API server sends.
        meta.insert(
            "creationTimestamp".into(),
            json!(t
                .0
                .to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::AutoSi, true)),
        );
    }
    let mut doc = Map::new();
    doc.insert("apiVersion".into(), json!(api_version));
    doc.insert("kind".into(), json!(kind));
    doc.insert("metadata".into(), Value::Object(meta));
    if let Value::Object(data) = &obj.data {
        for (k, v) in data {
            if !matches!(k.as_str(), "status" | "apiVersion" | "kind" | "metadata") {
                doc.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(doc)
}

/// A document as a one-object source.
pub fn source(name: String, document: &Value) -> SourceFile {
    SourceFile::new(name, to_yaml(document))
}

/// Loads one-object sources, leaving out every source with an error, and
/// returns the config of the rest with the errors of those left out.
///
/// Each round loads what is left; every source an error names is removed
/// and the rest loaded again, until a load succeeds. Errors about one
/// document (nearly all: a field, a value) cost only that object. Checks
/// across documents report on the document that loses: a duplicate name or
/// address on the one that comes later in `sources` (sort them for a stable
/// choice), a reference to a missing object on the referring one. Removing
/// an object can make another invalid (a policy naming a gateway that was
/// left out); the next round reports and removes that one too.
///
/// `Err`: an error named no source of `sources` (the loader reports every
/// document error with its source, so this means a bug): nothing can be
/// served safely, keep the last good config.
pub fn load_skipping_invalid(
    sources: &[SourceFile],
    settings: &MeshSettings,
) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
    let mut kept: Vec<&SourceFile> = sources.iter().collect();
    let mut skipped = Vec::new();
    loop {
        let round: Vec<SourceFile> = kept.iter().map(|s| (*s).clone()).collect();
        match Config::from_sources(&round, settings.clone()) {
            Ok(config) => return Ok((config, skipped)),
            Err(ConfigErrors(errors)) => {
                let bad: HashSet<&str> = errors.iter().map(|e| e.file.as_str()).collect();
                let before = kept.len();
                kept.retain(|s| !bad.contains(s.name.as_str()));
                if kept.len() == before {
                    return Err(ConfigErrors(errors));
                }
                skipped.extend(errors);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_follow_kubectl() {
        assert_eq!(source_name("Pod", "", "apps", "a"), "kubernetes:Pod/apps/a");
        assert_eq!(
            source_name("AuthorizationPolicy", "security.istio.io", "k", "p"),
            "kubernetes:AuthorizationPolicy.security.istio.io/k/p"
        );
    }

    #[test]
    fn custom_resource_keeps_spec_and_drops_server_fields() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {
                "name": "default", "namespace": "kafka", "uid": "u-1",
                "resourceVersion": "7", "generation": 3,
                "creationTimestamp": "2024-05-01T10:00:00Z",
                "deletionTimestamp": "2024-05-02T10:00:00Z",
                "labels": {"team": "data"},
                "annotations": {LAST_APPLIED_ANNOTATION: "{...}", "note": "x"},
                "managedFields": [{"manager": "kubectl"}]
            },
            "spec": {"mtls": {"mode": "STRICT"}},
            "status": {"conditions": []}
        }))
        .unwrap();
        let doc = custom_resource("security.istio.io/v1", "PeerAuthentication", &obj);
        assert_eq!(
            doc,
            json!({
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {
                    "name": "default", "namespace": "kafka",
                    "labels": {"team": "data"}, "annotations": {"note": "x"},
                    "creationTimestamp": "2024-05-01T10:00:00Z"
                },
                "spec": {"mtls": {"mode": "STRICT"}}
            })
        );
        let config =
            Config::from_sources(&[source("x".into(), &doc)], MeshSettings::default()).unwrap();
        assert_eq!(config.peer_authentications.len(), 1);
    }

    #[test]
    fn invalid_objects_are_skipped_with_the_loaders_message() {
        let ok = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: k}\nspec: {mtls: {mode: STRICT}}\n";
        let bad = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b, namespace: k}\nspec: {action: AUDIT}\n";
        let w = |n: &str| {
            format!("apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {n}, namespace: k}}\nspec: {{address: 198.18.0.1, node: n1}}\n")
        };
        let sources = vec![
            SourceFile::new("ok", ok),
            SourceFile::new("bad", bad),
            SourceFile::new("w1", w("w1")),
            // Same address as w1: the later one loses.
            SourceFile::new("w2", w("w2")),
        ];
        let (config, skipped) = load_skipping_invalid(&sources, &MeshSettings::default()).unwrap();
        assert_eq!(config.peer_authentications.len(), 1);
        assert!(config.authorization_policies.is_empty());
        assert_eq!(config.workloads.len(), 1);
        assert_eq!(config.workloads[0].name(), "w1");
        let files: Vec<&str> = skipped.iter().map(|e| e.file.as_str()).collect();
        assert_eq!(files, ["bad", "w2"]);
        // The message `weir check` prints for the same document.
        let check =
            Config::from_sources(&[SourceFile::new("p.yaml", bad)], MeshSettings::default())
                .unwrap_err();
        assert_eq!(skipped[0].field, check.0[0].field);
        assert_eq!(skipped[0].message, check.0[0].message);
    }
}
