//! Which objects concern which node, snapshots, deltas and resync.

use std::collections::BTreeSet;

use bytes::Bytes;
use weir_core::config::SourceFile;

use super::*;
use crate::catalog::{content_version, key};

fn workload(name: &str, ns: &str, sa: &str, app: &str, ip: &str, node: &str) -> String {
    format!(
        "---\napiVersion: weir.dev/v1alpha1\nkind: Workload\n\
         metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\n\
         spec: {{serviceAccount: {sa}, address: {ip}, node: {node}}}\n"
    )
}

fn policy(kind: &str, name: &str, ns: &str, app: Option<&str>) -> String {
    let selector = app
        .map(|a| format!("  selector: {{matchLabels: {{app: {a}}}}}\n"))
        .unwrap_or_default();
    let body = match kind {
        "AuthorizationPolicy" => {
            "  action: DENY\n  rules: [{from: [{source: {namespaces: [evil]}}]}]\n"
        }
        _ => "  mtls: {mode: STRICT}\n",
    };
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: {kind}\n\
         metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{selector}{body}"
    )
}

/// a (apps, app=a) on n1; b (apps, app=b) on n2; c (data) on n3.
fn base_workloads() -> String {
    workload("a", "apps", "sa-a", "a", "10.0.0.1", "n1")
        + &workload("b", "apps", "sa-b", "b", "10.0.0.2", "n2")
        + &workload("c", "data", "sa-c", "c", "10.0.0.3", "n3")
}

fn base_policies() -> String {
    policy("AuthorizationPolicy", "deny-a", "apps", Some("a"))
        + &policy("AuthorizationPolicy", "apps-wide", "apps", None)
        + &policy("PeerAuthentication", "mesh", "istio-system", None)
        + &policy("AuthorizationPolicy", "data-only", "data", None)
}

fn catalog(workloads: &str, policies: &str) -> Catalog {
    Catalog::load(
        &[
            SourceFile::new("w.yaml", workloads),
            SourceFile::new("p.yaml", policies),
        ],
        MeshSettings::default(),
    )
    .unwrap()
}

fn keys(resources: &[Resource]) -> BTreeSet<String> {
    resources
        .iter()
        .map(|r| {
            let k = r.key.as_ref().unwrap();
            format!("{}/{}/{}", k.kind, k.namespace, k.name)
        })
        .collect()
}

fn removed(update: &ConfigUpdate) -> BTreeSet<String> {
    update
        .removed
        .iter()
        .map(|k| format!("{}/{}/{}", k.kind, k.namespace, k.name))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const WORKLOADS: [&str; 3] = ["Workload/apps/a", "Workload/apps/b", "Workload/data/c"];

fn with_workloads(extra: &[&str]) -> BTreeSet<String> {
    WORKLOADS
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn each_node_gets_all_workloads_and_the_policies_that_may_apply() {
    let d = Distributor::new(catalog(&base_workloads(), &base_policies()), "cp-1");
    let n1 = d.snapshot("n1", Role::Node);
    assert!(n1.full);
    assert_eq!(n1.control_plane, "cp-1");
    assert_eq!(
        n1.mesh.as_ref().map(|m| m.trust_domain.as_str()),
        Some("cluster.local")
    );
    assert_eq!(
        keys(&n1.resources),
        with_workloads(&[
            "AuthorizationPolicy/apps/deny-a",
            "AuthorizationPolicy/apps/apps-wide",
            "PeerAuthentication/istio-system/mesh",
        ])
    );
    // b is not selected by deny-a.
    assert_eq!(
        keys(&d.snapshot("n2", Role::Node).resources),
        with_workloads(&[
            "AuthorizationPolicy/apps/apps-wide",
            "PeerAuthentication/istio-system/mesh",
        ])
    );
    assert_eq!(
        keys(&d.snapshot("n3", Role::Node).resources),
        with_workloads(&[
            "AuthorizationPolicy/data/data-only",
            "PeerAuthentication/istio-system/mesh",
        ])
    );
    // A node without workloads needs only the address index.
    assert_eq!(
        keys(&d.snapshot("n9", Role::Node).resources),
        with_workloads(&[])
    );
    // A gateway sees everything.
    assert_eq!(d.snapshot("gw", Role::Gateway).resources.len(), 7);
}

#[test]
fn root_namespace_selector_policies_follow_labels_across_namespaces() {
    let policies = policy("AuthorizationPolicy", "root-c", "istio-system", Some("c"));
    let d = Distributor::new(catalog(&base_workloads(), &policies), "cp");
    assert_eq!(
        keys(&d.snapshot("n3", Role::Node).resources),
        with_workloads(&["AuthorizationPolicy/istio-system/root-c"])
    );
    assert_eq!(
        keys(&d.snapshot("n1", Role::Node).resources),
        with_workloads(&[])
    );
}

#[test]
fn deltas_reach_only_the_nodes_whose_view_changed() {
    let d = Distributor::new(catalog(&base_workloads(), &base_policies()), "cp");
    let mut subs: Vec<Subscription> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| d.subscribe(n, Role::Node, &[]))
        .collect();
    let mut gw = d.subscribe("gw", Role::Gateway, &[]);
    let v0 = d.version();

    // A policy for b's namespace and label: only n2 (and the gateway).
    let policies = base_policies() + &policy("AuthorizationPolicy", "deny-b", "apps", Some("b"));
    let stats = d.replace(catalog(&base_workloads(), &policies));
    assert_eq!((stats.changed, stats.messages), (1, 2), "{stats:?}");
    assert_eq!(stats.version, v0 + 1);
    assert!(subs[0].updates.try_recv().is_err());
    let u = subs[1].updates.try_recv().unwrap();
    assert!(!u.full);
    assert_eq!(u.version, v0 + 1);
    assert_eq!(
        keys(&u.resources),
        set(&["AuthorizationPolicy/apps/deny-b"])
    );
    assert!(subs[2].updates.try_recv().is_err());
    assert_eq!(
        keys(&gw.updates.try_recv().unwrap().resources),
        set(&["AuthorizationPolicy/apps/deny-b"])
    );

    // One workload changes: every node gets it (address index); a's label
    // change moves deny-a out of n1's view.
    let workloads = base_workloads().replace("labels: {app: a}", "labels: {app: z}");
    let stats = d.replace(catalog(&workloads, &policies));
    assert_eq!((stats.changed, stats.messages), (1, 4), "{stats:?}");
    let u1 = subs[0].updates.try_recv().unwrap();
    assert_eq!(keys(&u1.resources), set(&["Workload/apps/a"]));
    assert_eq!(removed(&u1), set(&["AuthorizationPolicy/apps/deny-a"]));
    for s in &mut subs[1..] {
        let u = s.updates.try_recv().unwrap();
        assert_eq!(keys(&u.resources), set(&["Workload/apps/a"]));
        assert!(u.removed.is_empty());
    }
    gw.updates.try_recv().unwrap();

    // a moves to n3: n3 gains the apps policies, n1 loses apps-wide.
    let workloads = workloads.replace("address: 10.0.0.1, node: n1", "address: 10.0.0.1, node: n3");
    d.replace(catalog(&workloads, &policies));
    let u1 = subs[0].updates.try_recv().unwrap();
    assert_eq!(
        removed(&u1),
        set(&[
            "AuthorizationPolicy/apps/apps-wide",
            "PeerAuthentication/istio-system/mesh"
        ])
    );
    let u3 = subs[2].updates.try_recv().unwrap();
    assert_eq!(
        keys(&u3.resources),
        set(&["Workload/apps/a", "AuthorizationPolicy/apps/apps-wide"])
    );
    // n2's view only changed by the workload.
    let u2 = subs[1].updates.try_recv().unwrap();
    assert_eq!(keys(&u2.resources), set(&["Workload/apps/a"]));
    assert!(d.has_identity_on_node("n3", "apps", "sa-a"));
    assert!(!d.has_identity_on_node("n1", "apps", "sa-a"));

    // A policy's content changes: the nodes that hold it get the new version.
    let changed = policies.replace("namespaces: [evil]", "namespaces: [worse]");
    d.replace(catalog(&workloads, &changed));
    let u2 = subs[1].updates.try_recv().unwrap();
    assert!(keys(&u2.resources).contains("AuthorizationPolicy/apps/apps-wide"));
    let u3 = subs[2].updates.try_recv().unwrap();
    assert!(keys(&u3.resources).contains("AuthorizationPolicy/apps/apps-wide"));
    assert!(
        subs[0].updates.try_recv().is_err(),
        "n1 has no apps workload now"
    );

    // A root-namespace change reaches every node with workloads.
    let stats = d.replace(catalog(
        &workloads,
        &changed.replace("STRICT", "PERMISSIVE"),
    ));
    assert_eq!(stats.changed, 1);
    assert!(
        subs[0].updates.try_recv().is_err(),
        "n1 has no workload left"
    );
    for s in &mut subs[1..] {
        let u = s.updates.try_recv().unwrap();
        assert_eq!(
            keys(&u.resources),
            set(&["PeerAuthentication/istio-system/mesh"])
        );
    }

    // Nothing changed: nothing sent, same version.
    let before = d.version();
    let stats = d.replace(catalog(
        &workloads,
        &changed.replace("STRICT", "PERMISSIVE"),
    ));
    assert_eq!(
        (stats.changed, stats.messages, stats.version),
        (0, 0, before)
    );
}

#[test]
fn removed_objects_are_pushed_as_removals() {
    let d = Distributor::new(catalog(&base_workloads(), &base_policies()), "cp");
    let mut s1 = d.subscribe("n1", Role::Node, &[]);
    let workloads = workload("a", "apps", "sa-a", "a", "10.0.0.1", "n1")
        + &workload("c", "data", "sa-c", "c", "10.0.0.3", "n3");
    let policies = policy("AuthorizationPolicy", "apps-wide", "apps", None)
        + &policy("PeerAuthentication", "mesh", "istio-system", None)
        + &policy("AuthorizationPolicy", "data-only", "data", None);
    d.replace(catalog(&workloads, &policies));
    let u = s1.updates.try_recv().unwrap();
    assert!(u.resources.is_empty());
    assert_eq!(
        removed(&u),
        set(&["Workload/apps/b", "AuthorizationPolicy/apps/deny-a"])
    );
}

#[test]
fn reconnect_with_known_versions_gets_only_the_difference() {
    let d = Distributor::new(catalog(&base_workloads(), &base_policies()), "cp");
    let first = d.subscribe("n1", Role::Node, &[]).first;
    let held: Vec<ResourceVersion> = first
        .resources
        .iter()
        .map(|r| ResourceVersion {
            key: r.key.clone(),
            version: r.version.clone(),
        })
        .collect();

    // Nothing changed: an empty difference.
    let again = d.subscribe("n1", Role::Node, &held).first;
    assert!(!again.full);
    assert!(
        again.resources.is_empty() && again.removed.is_empty(),
        "{again:?}"
    );

    // While the node was away: b changed, deny-a was removed. It also holds
    // something the control plane never had (e.g. from an older instance).
    let policies = policy("AuthorizationPolicy", "apps-wide", "apps", None)
        + &policy("PeerAuthentication", "mesh", "istio-system", None)
        + &policy("AuthorizationPolicy", "data-only", "data", None);
    let workloads = base_workloads().replace("10.0.0.2", "10.0.0.20");
    d.replace(catalog(&workloads, &policies));
    let mut held = held;
    held.push(ResourceVersion {
        key: Some(key("Workload", "old", "ghost")),
        version: "x".into(),
    });
    let diff = d.subscribe("n1", Role::Node, &held).first;
    assert!(!diff.full);
    assert_eq!(keys(&diff.resources), set(&["Workload/apps/b"]));
    assert_eq!(
        removed(&diff),
        set(&["AuthorizationPolicy/apps/deny-a", "Workload/old/ghost"])
    );
}

#[test]
fn a_subscriber_that_does_not_read_is_dropped_to_resync() {
    let d = Distributor::new(catalog(&base_workloads(), &base_policies()), "cp");
    let mut slow = d.subscribe("n1", Role::Node, &[]);
    for i in 0..=QUEUE {
        // A different address for b each time: one change per push.
        let workloads = base_workloads().replace("10.0.0.2", &format!("10.0.1.{}", i + 1));
        let stats = d.replace(catalog(&workloads, &base_policies()));
        if i == QUEUE {
            assert_eq!(stats.dropped, 1, "{stats:?}");
        }
    }
    let mut got = 0;
    while slow.updates.try_recv().is_ok() {
        got += 1;
    }
    assert_eq!(got, QUEUE);
    // The queue is closed: the stream ends and the node reconnects.
    assert!(matches!(
        slow.updates.try_recv(),
        Err(mpsc::error::TryRecvError::Disconnected)
    ));
    assert_eq!(d.subscribers(), 0);
}

#[test]
fn everywhere_kinds_and_direct_changes() {
    let d = Distributor::new(catalog(&base_workloads(), &base_policies()), "cp");
    let mut s3 = d.subscribe("n3", Role::Node, &[]);
    let document = Bytes::from_static(b"apiVersion: weir.dev/v1alpha1\nkind: Other\n");
    let k = key("Other", "apps", "x");
    let entry = Entry {
        resource: Resource {
            key: Some(k.clone()),
            version: content_version(&document),
            document,
        },
        scope: Scope::Everywhere,
    };
    let stats = d.apply(vec![(k.clone(), Some(entry))]);
    assert_eq!(stats.messages, 1);
    assert_eq!(
        keys(&s3.updates.try_recv().unwrap().resources),
        set(&["Other/apps/x"])
    );
    d.apply(vec![(k, None)]);
    assert_eq!(
        removed(&s3.updates.try_recv().unwrap()),
        set(&["Other/apps/x"])
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_caller_holds_a_bounded_number_of_streams_the_oldest_ends_first() {
    let d = Distributor::new(catalog(&base_workloads(), &base_policies()), "cp");
    for role in [Role::Node, Role::Gateway] {
        let (caller, other) = match role {
            Role::Node => ("n1", "n2"),
            Role::Gateway => ("gw-a", "gw-b"),
        };
        let others = d.subscribe(other, role, &[]);
        let mut subs: Vec<Subscription> = (0..MAX_STREAMS_PER_CALLER + 2)
            .map(|_| d.subscribe(caller, role, &[]))
            .collect();
        // The two oldest were ended; the newest and the other caller's stay.
        for (i, sub) in subs.iter_mut().enumerate() {
            let ended = sub.updates.is_closed();
            assert_eq!(ended, i < 2, "{role:?} stream {i}");
        }
        assert!(
            !others.updates.is_closed(),
            "{role:?}: another caller's stream"
        );
        assert_eq!(d.subscribers(), MAX_STREAMS_PER_CALLER + 1, "{role:?}");
    }
}
