//! TokenReview against a fake API server.
//!
//! There is no Kubernetes API server on this machine: these tests use
//! kube-rs's documented testing approach, a mock `tower` service given to
//! `kube::Client::new`, answering TokenReviews (and Pod lookups) the way
//! the API server does for bound ServiceAccount tokens (see `common/mod.rs`).

mod common;

use common::FakeApi;
use serde_json::{json, Value};
use weir_kube::token_review::DEFAULT_AUDIENCE;
use weir_kube::{
    ClusterAuthenticator, ClusterCaller, ServiceAccountRef, TokenReviewError, TokenReviewer,
};

/// The API server's answers: a bound token of the node proxy on node-a
/// (with the node extra, Kubernetes 1.30+), one from an older cluster (pod
/// only), one of an application pod, one of a gateway, and a bad token.
fn api() -> FakeApi {
    let api = FakeApi::default();
    api.token_reviewer(|spec: &Value| {
        let audiences = spec["audiences"].clone();
        let user = |sa: &str, extra: Value| {
            json!({"authenticated": true, "audiences": audiences,
                   "user": {"username": format!("system:serviceaccount:{sa}"),
                            "uid": "u", "groups": ["system:serviceaccounts"], "extra": extra}})
        };
        match spec["token"].as_str().unwrap_or_default() {
            "node-a-token" => user("weir-system:weir-node", json!({
                "authentication.kubernetes.io/pod-name": ["weir-node-x1"],
                "authentication.kubernetes.io/pod-uid": ["uid-x1"],
                "authentication.kubernetes.io/node-name": ["node-a"],
                "authentication.kubernetes.io/node-uid": ["n-a"]
            })),
            "old-cluster-token" => user("weir-system:weir-node", json!({
                "authentication.kubernetes.io/pod-name": ["weir-node-y2"],
                "authentication.kubernetes.io/pod-uid": ["uid-y2"]
            })),
            "replaced-pod-token" => user("weir-system:weir-node", json!({
                "authentication.kubernetes.io/pod-name": ["weir-node-y2"],
                "authentication.kubernetes.io/pod-uid": ["uid-old"]
            })),
            "legacy-secret-token" => user("weir-system:weir-node", json!({})),
            "app-token" => user("apps:default", json!({
                "authentication.kubernetes.io/node-name": ["node-a"]
            })),
            "gateway-token" => user("weir-system:weir-gateway", json!({})),
            // An authenticator that is not audience-aware: authenticated,
            // but without the audiences it checked.
            "any-audience-token" => json!({"authenticated": true,
                "user": {"username": "system:serviceaccount:weir-system:weir-node",
                         "extra": {"authentication.kubernetes.io/node-name": ["node-a"]}}}),
            "admin-token" => json!({"authenticated": true, "audiences": audiences, "user": {"username": "kubernetes-admin"}}),
            _ => json!({"authenticated": false, "error": "invalid bearer token, token lookup failed"}),
        }
    });
    api.seed(
        "v1",
        "pods",
        json!({"metadata": {"name": "weir-node-y2", "namespace": "weir-system", "uid": "uid-y2"},
               "spec": {"nodeName": "node-b", "containers": []}}),
    );
    api
}

fn authenticator(api: &FakeApi) -> ClusterAuthenticator {
    ClusterAuthenticator::new(
        TokenReviewer::new(api.client(), vec![DEFAULT_AUDIENCE.to_owned()]),
        vec![ServiceAccountRef::new("weir-system", "weir-node")],
        vec![ServiceAccountRef::new("weir-system", "weir-gateway")],
    )
}

#[tokio::test]
async fn review_returns_the_service_account_and_node() {
    let api = api();
    let reviewer = TokenReviewer::new(api.client(), vec![DEFAULT_AUDIENCE.to_owned()]);
    let r = reviewer.review("node-a-token").await.unwrap();
    assert_eq!(
        r.service_account,
        ServiceAccountRef::new("weir-system", "weir-node")
    );
    assert_eq!(r.node.as_deref(), Some("node-a"));
    assert_eq!(
        r.pod,
        Some(("weir-node-x1".to_owned(), "uid-x1".to_owned()))
    );
    // The review asked for the control plane's audience, with the token.
    let sent = api.token_reviews();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(sent[0]["kind"], "TokenReview");
    assert_eq!(sent[0]["spec"]["token"], "node-a-token");
    assert_eq!(sent[0]["spec"]["audiences"], json!([DEFAULT_AUDIENCE]));

    let e = reviewer.review("stolen").await.unwrap_err();
    assert!(
        matches!(e, TokenReviewError::NotAuthenticated(ref m) if m.contains("invalid bearer token")),
        "{e}"
    );
    let e = reviewer.review("admin-token").await.unwrap_err();
    assert!(matches!(e, TokenReviewError::NotServiceAccount(_)), "{e}");
    // No confirmed audience: refused, since the token may be for another.
    let e = reviewer.review("any-audience-token").await.unwrap_err();
    assert!(
        matches!(e, TokenReviewError::NotAuthenticated(ref m) if m.contains("did not confirm the audience")),
        "{e}"
    );
    // Without audiences asked, the API server's default audience is meant
    // and no confirmation is expected.
    let default = TokenReviewer::new(api.client(), Vec::new());
    assert_eq!(
        default
            .review("any-audience-token")
            .await
            .unwrap()
            .node
            .as_deref(),
        Some("node-a")
    );
}

#[tokio::test]
async fn a_node_proxy_is_the_node_its_token_is_bound_to() {
    let api = api();
    let auth = authenticator(&api);
    assert_eq!(
        auth.authenticate("node-a", "node-a-token").await.unwrap(),
        ClusterCaller::Node {
            node: "node-a".into()
        }
    );
    // Asking as another node is refused.
    let e = auth
        .authenticate("node-b", "node-a-token")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, TokenReviewError::WrongNode { claimed, actual } if claimed == "node-b" && actual == "node-a"),
        "{e}"
    );
    assert!(e.is_refusal());
    // An application pod's valid token is not a node proxy's.
    let e = auth.authenticate("node-a", "app-token").await.unwrap_err();
    assert!(
        matches!(e, TokenReviewError::WrongServiceAccount { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("weir-system/weir-node"), "{e}");
    // A gateway.
    assert_eq!(
        auth.authenticate("ingress", "gateway-token").await.unwrap(),
        ClusterCaller::Gateway {
            name: "ingress".into(),
            service_account: ServiceAccountRef::new("weir-system", "weir-gateway")
        }
    );
}

#[tokio::test]
async fn without_the_node_extra_the_tokens_pod_is_looked_up() {
    let api = api();
    let auth = authenticator(&api);
    assert_eq!(
        auth.authenticate("node-b", "old-cluster-token")
            .await
            .unwrap(),
        ClusterCaller::Node {
            node: "node-b".into()
        }
    );
    assert!(api.count(|r| r == "GET /api/v1/namespaces/weir-system/pods/weir-node-y2?") >= 1);
    // Same pod name, another UID: the pod the token was issued for is gone.
    let e = auth
        .authenticate("node-b", "replaced-pod-token")
        .await
        .unwrap_err();
    assert!(matches!(e, TokenReviewError::PodGone { .. }), "{e}");
    // A token bound to no pod (a legacy Secret token) proves no node.
    let e = auth
        .authenticate("node-b", "legacy-secret-token")
        .await
        .unwrap_err();
    assert!(matches!(e, TokenReviewError::Unbound(_)), "{e}");
}

#[tokio::test]
async fn an_api_failure_is_not_a_refusal() {
    let api = FakeApi::default(); // answers TokenReviews with 403
    let auth = authenticator(&api);
    let e = auth
        .authenticate("node-a", "node-a-token")
        .await
        .unwrap_err();
    assert!(matches!(e, TokenReviewError::Api(_)), "{e}");
    assert!(!e.is_refusal());
    assert!(e.to_string().contains("create on tokenreviews"), "{e}");
}

#[tokio::test]
async fn accepted_tokens_are_remembered_refusals_are_not() {
    let api = api();
    let auth = authenticator(&api);
    for _ in 0..3 {
        auth.authenticate("node-a", "node-a-token").await.unwrap();
    }
    assert_eq!(
        api.token_reviews().len(),
        1,
        "one TokenReview for three calls"
    );
    // The same token under another name is reviewed (and refused), every time.
    for _ in 0..2 {
        auth.authenticate("node-b", "node-a-token")
            .await
            .unwrap_err();
    }
    assert_eq!(api.token_reviews().len(), 3);
    // Without a cache, every call is reviewed.
    let auth = authenticator(&api).with_cache_ttl(std::time::Duration::ZERO);
    auth.authenticate("node-a", "node-a-token").await.unwrap();
    auth.authenticate("node-a", "node-a-token").await.unwrap();
    assert_eq!(api.token_reviews().len(), 5);
}
