//! The Kubernetes source and TokenReview behind weir-control's seams.
//!
//! There is no Kubernetes API server on this machine: these tests use
//! kube-rs's documented testing approach, a mock `tower` service given to
//! `kube::Client::new` and answered by a scenario task (`common/mod.rs`).

mod common;

use std::time::Duration;

use common::FakeApi;
use serde_json::json;
use weir_control::auth::AuthError;
use weir_control::source::SourceEvent;
use weir_control::{Authenticator, Caller, ConfigSource};
use weir_core::MeshSettings;
use weir_kube::token_review::DEFAULT_AUDIENCE;
use weir_kube::{
    ClusterAuthenticator, KubeAuthenticator, KubeConfigSource, KubeMetrics, KubeSourceOptions,
    ServiceAccountRef, TokenReviewer,
};

#[tokio::test(start_paused = true)]
async fn the_cluster_is_a_config_source() {
    let api = FakeApi::default();
    for (v, p) in [
        ("security.istio.io/v1", "peerauthentications"),
        ("networking.istio.io/v1", "gateways"),
        ("networking.istio.io/v1", "virtualservices"),
        ("networking.istio.io/v1", "serviceentries"),
        ("networking.istio.io/v1", "destinationrules"),
    ] {
        api.not_installed(v, p);
    }
    api.seed(
        "v1",
        "namespaces",
        json!({"metadata": {"name": "data", "labels": {"istio.io/dataplane-mode": "ambient"}}}),
    );
    api.seed("v1", "pods", json!({
        "metadata": {"name": "kafka-0", "namespace": "data", "uid": "u0", "labels": {"app": "kafka"}},
        "spec": {"nodeName": "node-a", "serviceAccountName": "kafka", "containers": []},
        "status": {"phase": "Running", "podIP": "198.18.1.10"}}));
    api.seed(
        "security.istio.io/v1",
        "authorizationpolicies",
        json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "bad", "namespace": "data"},
        "spec": {"action": "CUSTOM"}}),
    );
    let options = KubeSourceOptions {
        debounce: Duration::from_millis(10),
        ..KubeSourceOptions::default()
    };
    let mut source = KubeConfigSource::start(api.client(), options, KubeMetrics::default());
    assert!(source.describe().contains("Kubernetes"));
    let Some(SourceEvent::Update { catalog, skipped }) = source.next().await else {
        panic!("no catalog");
    };
    let keys: Vec<String> = catalog
        .entries
        .keys()
        .map(|k| format!("{}/{}/{}", k.kind, k.namespace, k.name))
        .collect();
    assert_eq!(keys, ["Workload/data/kafka-0"]);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].field.as_deref(), Some("spec.action"));

    api.push(
        "ADDED",
        "v1",
        "pods",
        json!({
        "metadata": {"name": "kafka-1", "namespace": "data", "uid": "u1"},
        "spec": {"nodeName": "node-b", "containers": []},
        "status": {"phase": "Running", "podIP": "198.18.1.11"}}),
    );
    let Some(SourceEvent::Update { catalog, .. }) = source.next().await else {
        panic!("no update");
    };
    assert_eq!(catalog.entries.len(), 2);
}

#[tokio::test]
async fn token_review_is_an_authenticator() {
    let api = FakeApi::default();
    api.token_reviewer(|spec| match spec["token"].as_str() {
        Some("node-token") => {
            json!({"authenticated": true, "audiences": [DEFAULT_AUDIENCE], "user": {
            "username": "system:serviceaccount:weir-system:weir-node",
            "extra": {"authentication.kubernetes.io/node-name": ["node-a"]}}})
        }
        Some("gateway-token") => {
            json!({"authenticated": true, "audiences": [DEFAULT_AUDIENCE], "user": {
            "username": "system:serviceaccount:weir-system:weir-gateway"}})
        }
        _ => json!({"authenticated": false, "error": "invalid bearer token"}),
    });
    let auth = KubeAuthenticator::new(
        ClusterAuthenticator::new(
            TokenReviewer::new(api.client(), vec![DEFAULT_AUDIENCE.to_owned()]),
            vec![ServiceAccountRef::new("weir-system", "weir-node")],
            vec![ServiceAccountRef::new("weir-system", "weir-gateway")],
        ),
        MeshSettings::default().trust_domain,
    );
    assert_eq!(
        auth.authenticate("node-a", "node-token").await,
        Ok(Caller::Node {
            name: "node-a".into()
        })
    );
    // Another node's name with this node's token: refused.
    assert_eq!(
        auth.authenticate("node-b", "node-token").await,
        Err(AuthError::WrongToken("node-b".into()))
    );
    assert_eq!(
        auth.authenticate("node-a", "forged").await,
        Err(AuthError::WrongToken("node-a".into()))
    );
    assert_eq!(
        auth.authenticate("node-a", "").await,
        Err(AuthError::MissingToken)
    );
    let Ok(Caller::Gateway { name, identities }) =
        auth.authenticate("ingress", "gateway-token").await
    else {
        panic!("gateway not authenticated");
    };
    assert_eq!(name, "ingress");
    let ids: Vec<String> = identities.iter().map(ToString::to_string).collect();
    assert_eq!(
        ids,
        ["spiffe://cluster.local/ns/weir-system/sa/weir-gateway"]
    );
}
