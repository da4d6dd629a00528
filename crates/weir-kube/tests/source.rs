//! The Kubernetes source against a fake API server.
//!
//! There is no Kubernetes API server on this machine: these tests use
//! kube-rs's documented testing approach, a mock `tower` service
//! (`tower_test::mock::pair`) given to `kube::Client::new`, driven by a
//! scenario task that answers list and watch calls with JSON (see
//! `common/mod.rs`). Time is paused (Tokio's test clock), so the watchers'
//! backoff and the source's debounce take no real time.

mod common;

mod erased {
    pub trait Ser {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap()
        }
    }
}

use std::time::Duration;

use common::FakeApi;
use serde_json::{json, Value};
use weir_core::config::SourceFile;
use weir_core::{Config, MeshSettings};
use weir_kube::{KubeMetrics, KubeSource, KubeSourceOptions};

const SECURITY: &str = "security.istio.io/v1";
const NETWORKING: &str = "networking.istio.io/v1";
const WEIR: &str = "weir.dev/v1alpha1";

fn namespace(name: &str, ambient: bool) -> Value {
    let labels = if ambient {
        json!({"istio.io/dataplane-mode": "ambient", "kubernetes.io/metadata.name": name})
    } else {
        json!({"kubernetes.io/metadata.name": name})
    };
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": labels}})
}

fn pod(ns: &str, name: &str, ip: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                     "labels": {"app": "kafka"},
                     "managedFields": [{"manager": "kubelet"}]},
        "spec": {"serviceAccountName": "kafka", "nodeName": node,
                 "containers": [{"name": "broker", "image": "kafka",
                                 "ports": [{"name": "client", "containerPort": 9092}]}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// The AuthorizationPolicy YAML as a user applies it (and runs `weir check` on).
const BAD_POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: audit-all
  namespace: data
spec:
  action: AUDIT
";

/// The same object as the API server returns it.
fn stored(yaml: &str) -> Value {
    let mut v: Value = serde_yaml_ng::from_str(yaml).unwrap();
    let m = &mut v["metadata"];
    m["uid"] = json!("0f3e");
    m["generation"] = json!(1);
    m["creationTimestamp"] = json!("2024-05-01T10:00:00Z");
    m["annotations"] = json!({"kubectl.kubernetes.io/last-applied-configuration": "{}"});
    m["managedFields"] = json!([{"manager": "kubectl-client-side-apply"}]);
    v
}

fn allow_policy(name: &str) -> Value {
    stored(&format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: data}}
spec:
  selector: {{matchLabels: {{app: kafka}}}}
  rules:
  - from:
    - source: {{namespaces: [apps]}}
"
    ))
}

/// A cluster with Istio's security CRDs installed, its networking CRDs and
/// weir's CRDs not installed.
/// The plurals of Istio's networking kinds and of weir's kinds.
const NETWORKING_KINDS: [&str; 4] = [
    "gateways",
    "virtualservices",
    "serviceentries",
    "destinationrules",
];
const WEIR_KINDS: [&str; 4] = [
    "workloads",
    "services",
    "kafkagateways",
    "kafkaauthorizationpolicies",
];

/// Makes the fake API server answer 404 for these collections.
fn not_installed(api: &FakeApi, api_version: &str, plurals: &[&str]) {
    for plural in plurals {
        api.not_installed(api_version, plural);
    }
}

fn cluster() -> FakeApi {
    let api = FakeApi::default();
    not_installed(&api, NETWORKING, &NETWORKING_KINDS);
    not_installed(&api, WEIR, &WEIR_KINDS);
    api.seed("v1", "namespaces", namespace("data", true));
    api.seed("v1", "namespaces", namespace("apps", false));
    api.seed(
        "v1",
        "pods",
        pod("data", "kafka-0", "198.18.1.10", "node-a"),
    );
    // Not enrolled: its namespace is not ambient.
    api.seed("v1", "pods", pod("apps", "client", "198.18.1.20", "node-b"));
    api.seed(
        "v1",
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "kafka", "namespace": "data"},
               "spec": {"selector": {"app": "kafka"}, "clusterIP": "10.96.0.7",
                        "ports": [{"name": "client", "port": 9092, "targetPort": "client",
                                   "protocol": "TCP"}]}}),
    );
    api.seed(
        SECURITY,
        "peerauthentications",
        stored("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: data}\nspec: {mtls: {mode: STRICT}}\n"),
    );
    api.seed(
        SECURITY,
        "authorizationpolicies",
        allow_policy("allow-apps"),
    );
    api.seed(SECURITY, "authorizationpolicies", stored(BAD_POLICY));
    api
}

fn start(api: &FakeApi) -> (KubeSource, KubeMetrics) {
    let metrics = KubeMetrics::default();
    let options = KubeSourceOptions {
        debounce: Duration::from_millis(50),
        ..KubeSourceOptions::default()
    };
    (
        KubeSource::start(api.client(), options, metrics.clone()),
        metrics,
    )
}

fn workload_names(config: &Config) -> Vec<String> {
    config
        .workloads
        .iter()
        .map(|w| format!("{}/{}", w.namespace(), w.name()))
        .collect()
}

fn policy_names(config: &Config) -> Vec<&str> {
    config
        .authorization_policies
        .iter()
        .map(|p| p.metadata.name.as_str())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn snapshots_follow_the_cluster_and_skip_invalid_resources() {
    let api = cluster();
    let (mut source, metrics) = start(&api);

    // Initial lists → the first snapshot.
    let s = source.next().await.expect("initial snapshot");
    assert_eq!(s.generation, 1);
    assert_eq!(workload_names(&s.config), ["data/kafka-0"]);
    let w = &s.config.workloads[0];
    assert_eq!(w.service_account, "kafka");
    assert_eq!(w.node, "node-a");
    assert_eq!(w.address.to_string(), "198.18.1.10");
    assert_eq!(s.config.services.len(), 1);
    assert_eq!(
        s.config.services[0].ports[0].target_port, None,
        "client → 9092 = port"
    );
    assert_eq!(s.config.peer_authentications.len(), 1);
    let policies = policy_names(&s.config);
    assert_eq!(
        policies,
        ["allow-apps"],
        "the invalid policy is skipped, the rest served"
    );

    // The invalid policy: reported with `weir check`'s message for the same YAML.
    assert_eq!(s.invalid.len(), 1, "{:?}", s.invalid);
    let e = &s.invalid[0];
    assert_eq!(
        e.file,
        "kubernetes:AuthorizationPolicy.security.istio.io/data/audit-all"
    );
    let check = Config::from_sources(
        &[SourceFile::new("p.yaml", BAD_POLICY)],
        MeshSettings::default(),
    )
    .unwrap_err();
    assert_eq!(check.0.len(), 1);
    assert_eq!(e.field, check.0[0].field);
    assert_eq!(e.message, check.0[0].message);
    assert!(
        e.message.contains("AUDIT is not supported"),
        "{}",
        e.message
    );
    assert_eq!(metrics.invalid("AuthorizationPolicy"), 1);
    // The served documents load by themselves, with the same strict loader.
    let again = Config::from_sources(&s.sources, MeshSettings::default()).unwrap();
    assert_eq!(again.workloads, s.config.workloads);
    assert!(
        s.sources
            .iter()
            .all(|src| !src.content.contains("managedFields")
                && !src.content.contains("last-applied"))
    );

    // A watch event adding a Pod → a new snapshot with its Workload.
    api.push(
        "ADDED",
        "v1",
        "pods",
        pod("data", "kafka-1", "198.18.1.11", "node-b"),
    );
    let s = source.next().await.unwrap();
    assert_eq!(s.generation, 2);
    assert_eq!(workload_names(&s.config), ["data/kafka-0", "data/kafka-1"]);
    assert!(s.config.workloads.iter().all(|w| w.ready));

    // Its readiness probe failing → still a Workload, but not ready (no
    // Service traffic), in the served document too.
    let mut unready = pod("data", "kafka-1", "198.18.1.11", "node-b");
    unready["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    api.push("MODIFIED", "v1", "pods", unready);
    let s = source.next().await.unwrap();
    assert_eq!(workload_names(&s.config), ["data/kafka-0", "data/kafka-1"]);
    let ready: Vec<bool> = s.config.workloads.iter().map(|w| w.ready).collect();
    assert_eq!(ready, [true, false]);
    let again = Config::from_sources(&s.sources, MeshSettings::default()).unwrap();
    assert_eq!(again.workloads, s.config.workloads);
    api.push(
        "MODIFIED",
        "v1",
        "pods",
        pod("data", "kafka-1", "198.18.1.11", "node-b"),
    );
    let s = source.next().await.unwrap();
    assert!(s.config.workloads.iter().all(|w| w.ready));

    // Fixing the invalid policy → served, the gauge back to 0.
    let mut fixed = allow_policy("audit-all");
    fixed["metadata"]["name"] = json!("audit-all");
    api.push("MODIFIED", SECURITY, "authorizationpolicies", fixed);
    let s = source.next().await.unwrap();
    assert!(s.invalid.is_empty());
    assert_eq!(s.config.authorization_policies.len(), 2);
    assert_eq!(metrics.invalid("AuthorizationPolicy"), 0);

    // Enrolling a namespace brings its Pods in; deleting a Pod takes it out.
    api.push("MODIFIED", "v1", "namespaces", namespace("apps", true));
    api.push(
        "DELETED",
        "v1",
        "pods",
        pod("data", "kafka-0", "198.18.1.10", "node-a"),
    );
    let s = source.next().await.unwrap();
    assert_eq!(workload_names(&s.config), ["apps/client", "data/kafka-1"]);

    // A Pod that takes another's address: the later one (by name) is left
    // out and reported, the rest stays.
    api.push(
        "ADDED",
        "v1",
        "pods",
        pod("data", "kafka-2", "198.18.1.11", "node-b"),
    );
    let s = source.next().await.unwrap();
    assert_eq!(workload_names(&s.config), ["apps/client", "data/kafka-1"]);
    assert_eq!(s.invalid.len(), 1);
    assert_eq!(s.invalid[0].file, "kubernetes:Pod/data/kafka-2");
    assert_eq!(s.invalid[0].field.as_deref(), Some("spec.address"));
    assert_eq!(metrics.invalid("Workload"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_kind_that_cannot_be_listed_holds_the_first_snapshot_back() {
    let api = cluster();
    api.forbid(SECURITY, "authorizationpolicies", true);
    let (mut source, _metrics) = start(&api);
    let forbidden =
        |r: &str| r.starts_with("GET /apis/security.istio.io/v1/authorizationpolicies?");
    // Listed and refused three times (retried with backoff): no snapshot,
    // since one without the cluster's policies could allow too much.
    api.wait_for(3, forbidden).await;
    assert!(source.latest().is_none());
    // RBAC fixed → the first snapshot, with the policies.
    api.forbid(SECURITY, "authorizationpolicies", false);
    let s = source.next().await.unwrap();
    assert_eq!(s.config.authorization_policies.len(), 1);
    assert_eq!(s.invalid.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_istio_without_v1_is_watched_at_v1beta1() {
    // Istio before 1.22: its CRDs serve v1beta1 (and v1alpha3), no v1.
    const SECURITY_BETA: &str = "security.istio.io/v1beta1";
    let api = FakeApi::default();
    not_installed(
        &api,
        SECURITY,
        &["peerauthentications", "authorizationpolicies"],
    );
    // Networking CRDs not installed at all, at either version.
    not_installed(&api, NETWORKING, &NETWORKING_KINDS);
    not_installed(&api, "networking.istio.io/v1beta1", &NETWORKING_KINDS);
    not_installed(&api, WEIR, &WEIR_KINDS);
    api.seed("v1", "namespaces", namespace("data", true));
    api.seed(
        "v1",
        "pods",
        pod("data", "kafka-0", "198.18.1.10", "node-a"),
    );
    let deny = stored(
        "apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-outside, namespace: data}
spec:
  action: DENY
  rules:
  - from:
    - source: {notNamespaces: [apps]}
",
    );
    api.seed(SECURITY_BETA, "authorizationpolicies", deny);
    api.seed(
        SECURITY_BETA,
        "peerauthentications",
        stored("apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: data}\nspec: {mtls: {mode: STRICT}}\n"),
    );
    let (mut source, _metrics) = start(&api);

    // The first snapshot already holds the v1beta1 policies: a cluster's
    // DENY policy is never taken for "none" because v1 answered 404.
    let s = source.next().await.expect("initial snapshot");
    assert!(s.invalid.is_empty(), "{:?}", s.invalid);
    assert_eq!(workload_names(&s.config), ["data/kafka-0"]);
    let policies = policy_names(&s.config);
    assert_eq!(policies, ["deny-outside"]);
    assert_eq!(s.config.peer_authentications.len(), 1);
    let doc = s
        .sources
        .iter()
        .find(|d| d.name == "kubernetes:AuthorizationPolicy.security.istio.io/data/deny-outside")
        .expect("the policy's document");
    assert!(
        doc.content
            .contains("apiVersion: security.istio.io/v1beta1"),
        "{}",
        doc.content
    );
    assert!(
        api.count(|r| r.starts_with("GET /apis/security.istio.io/v1beta1/authorizationpolicies?"))
            >= 1
    );

    // Watched at v1beta1 from then on: changes there are followed.
    let mut allow = allow_policy("allow-apps");
    allow["apiVersion"] = json!(SECURITY_BETA);
    api.push("ADDED", SECURITY_BETA, "authorizationpolicies", allow);
    let s = source.next().await.unwrap();
    assert_eq!(s.config.authorization_policies.len(), 2);

    // A kind served at neither version is tried on: Istio's networking
    // CRDs installed later (at v1beta1) bring their Gateway in.
    assert!(s.config.gateways.is_empty());
    api.with_installed("networking.istio.io/v1beta1", "gateways");
    api.seed(
        "networking.istio.io/v1beta1",
        "gateways",
        stored(
            "apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: edge, namespace: data}
spec:
  servers:
  - port: {number: 6651, name: tls-pulsar, protocol: TLS}
    hosts: [\"*\"]
    tls: {mode: PASSTHROUGH}
",
        ),
    );
    let s = source.next().await.unwrap();
    assert_eq!(s.config.gateways.len(), 1, "{:?}", s.invalid);
    assert_eq!(s.config.authorization_policies.len(), 2);
}

/// The documents of `examples/<dir>` (the repo's examples, as a user
/// would `kubectl apply -f` them).
fn example_documents(dir: &str) -> Vec<Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(dir);
    let sources = weir_core::config::read_sources(&[root]).unwrap();
    let mut docs = Vec::new();
    for src in sources {
        for de in serde_yaml_ng::Deserializer::from_str(&src.content) {
            let v: Value = serde::Deserialize::deserialize(de).unwrap();
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    docs
}

#[tokio::test(start_paused = true)]
async fn weir_kinds_are_served_when_their_crds_are_installed() {
    let api = cluster();
    api.with_installed(WEIR, "kafkagateways");
    api.with_installed(WEIR, "kafkaauthorizationpolicies");
    let docs = example_documents("kafka-gateway");
    for mut doc in docs.clone() {
        let plural = match doc["kind"].as_str() {
            Some("KafkaGateway") => "kafkagateways",
            Some("KafkaAuthorizationPolicy") => "kafkaauthorizationpolicies",
            other => panic!("unexpected kind {other:?} in the example"),
        };
        doc["metadata"]["uid"] = json!("x");
        doc["status"] = json!({"conditions": []});
        api.seed(WEIR, plural, doc);
    }
    let (mut source, _metrics) = start(&api);
    let s = source.next().await.unwrap();
    let check = Config::load_paths(
        &[std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kafka-gateway")],
        MeshSettings::default(),
    )
    .unwrap();
    assert!(!check.kafka_gateways.is_empty());
    // Equal but for where each came from (serialization leaves that out)
    // and their order (the cluster's is by name).
    let json = |v: &dyn erased::Ser| {
        let mut items = v.json().as_array().cloned().unwrap_or_default();
        items.sort_by_key(|i| i["metadata"].to_string());
        items
    };
    assert_eq!(
        json(&s.config.kafka_gateways),
        json(&check.kafka_gateways),
        "{:?}",
        s.invalid
    );
    assert_eq!(
        json(&s.config.kafka_authorization_policies),
        json(&check.kafka_authorization_policies)
    );
}

/// A `weir.dev` Workload object as `kubectl apply` stores it.
fn workload_object(name: &str, spec: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": WEIR, "kind": "Workload",
        "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}"),
                     "annotations": annotations},
        "spec": spec,
    })
}

#[tokio::test(start_paused = true)]
async fn a_workload_object_cannot_claim_a_pod_or_a_cluster_node() {
    let api = cluster();
    api.with_installed(WEIR, "workloads");
    // A machine outside the cluster, with its own node proxy: served.
    api.seed(
        WEIR,
        "workloads",
        workload_object(
            "vm-1",
            json!({"address": "198.18.5.1", "node": "vm-node-1"}),
            json!({}),
        ),
    );
    // data/kafka-0's Pod UID from a tenant of `apps`: node-a's proxy would
    // capture in that Pod's network namespace.
    api.seed(
        WEIR,
        "workloads",
        workload_object(
            "steal-uid",
            json!({"address": "198.18.5.2", "node": "vm-node-2"}),
            json!({"weir.dev/pod-uid": "uid-kafka-0"}),
        ),
    );
    // A node where Pods run: its proxy would enter /var/run/netns/<netns>,
    // where the runtime keeps Pods' namespaces.
    api.seed(
        WEIR,
        "workloads",
        workload_object(
            "on-node-a",
            json!({"address": "198.18.5.3", "node": "node-a", "netns": "cni-0f3e"}),
            json!({}),
        ),
    );
    api.seed(
        WEIR,
        "workloads",
        workload_object(
            "loopback",
            json!({"address": "127.0.0.1", "node": "vm-node-3"}),
            json!({}),
        ),
    );
    let (mut source, metrics) = start(&api);
    let sorted = |c: &Config| {
        let mut names = workload_names(c);
        names.sort();
        names
    };
    let s = source.next().await.unwrap();
    assert_eq!(sorted(&s.config), ["apps/vm-1", "data/kafka-0"]);
    let refused: Vec<(&str, Option<&str>)> = s
        .invalid
        .iter()
        .filter(|e| e.file.starts_with("kubernetes:Workload"))
        .map(|e| (e.file.as_str(), e.field.as_deref()))
        .collect();
    assert_eq!(
        refused,
        [
            (
                "kubernetes:Workload.weir.dev/apps/loopback",
                Some("spec.address")
            ),
            (
                "kubernetes:Workload.weir.dev/apps/on-node-a",
                Some("spec.node")
            ),
            (
                "kubernetes:Workload.weir.dev/apps/steal-uid",
                Some("metadata.annotations[weir.dev/pod-uid]")
            ),
        ]
    );
    assert!(
        s.invalid
            .iter()
            .any(|e| e.message.contains("a Workload object cannot claim a Pod")),
        "{:?}",
        s.invalid
    );
    assert_eq!(metrics.invalid("Workload"), 3);
    // Served documents never carry the claim.
    assert!(s.sources.iter().all(|src| !src.name.contains("steal-uid")));
    // The node that runs no Pod any more is no longer a cluster node.
    api.push(
        "DELETED",
        "v1",
        "pods",
        pod("data", "kafka-0", "198.18.1.10", "node-a"),
    );
    let s = source.next().await.unwrap();
    assert_eq!(sorted(&s.config), ["apps/on-node-a", "apps/vm-1"]);
}

/// A `weir.dev` Service or Workload object that claims a Kubernetes
/// Service's cluster IP is refused: as a copy it would sort first and win,
/// sending data/kafka's clients (over HBONE) to the author's Pods, or
/// black-holing the address. The Kubernetes Service keeps its IP.
#[tokio::test(start_paused = true)]
async fn a_weir_object_cannot_take_a_kubernetes_service_cluster_ip() {
    let api = cluster();
    api.with_installed(WEIR, "services");
    api.with_installed(WEIR, "workloads");
    api.seed(
        WEIR,
        "services",
        json!({"apiVersion": WEIR, "kind": "Service",
               "metadata": {"name": "x", "namespace": "apps", "uid": "uid-x"},
               "spec": {"selector": {"app": "fake"}, "clusterIP": "10.96.0.7",
                        "ports": [{"port": 9092}]}}),
    );
    api.seed(
        WEIR,
        "workloads",
        workload_object(
            "vm-on-vip",
            json!({"address": "10.96.0.7", "node": "vm-node-1"}),
            json!({}),
        ),
    );
    let (mut source, _metrics) = start(&api);
    let s = source.next().await.unwrap();
    let services: Vec<(String, Vec<std::net::IpAddr>)> = s
        .config
        .services
        .iter()
        .map(|svc| (svc.metadata.key(), svc.cluster_ips.clone()))
        .collect();
    assert_eq!(
        services,
        [("data/kafka".to_owned(), vec!["10.96.0.7".parse().unwrap()])],
        "{:?}",
        s.invalid
    );
    let refused: Vec<(&str, Option<&str>)> = s
        .invalid
        .iter()
        .filter(|e| e.file.contains(".weir.dev/"))
        .map(|e| (e.file.as_str(), e.field.as_deref()))
        .collect();
    assert_eq!(
        refused,
        [
            ("kubernetes:Service.weir.dev/apps/x", Some("spec.clusterIP")),
            (
                "kubernetes:Workload.weir.dev/apps/vm-on-vip",
                Some("spec.address")
            ),
        ],
        "{:?}",
        s.invalid
    );
    assert!(s.invalid.iter().any(|e| e
        .message
        .contains("cluster IP of the Kubernetes Service data/kafka")));
}
