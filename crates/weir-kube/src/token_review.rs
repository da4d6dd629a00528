//! Cluster-mode authentication of node proxies and gateways: their
//! Kubernetes ServiceAccount token, checked with a TokenReview
//! (`authentication.k8s.io/v1`).
//!
//! The rule the control plane enforces with it: **a node proxy may have
//! signed only the identities of Pods on its own node.** So a caller must
//! prove which node it runs on, not just claim it:
//!
//! 1. The token is reviewed by the API server, for the control plane's
//!    audience ([`DEFAULT_AUDIENCE`]; the chart mounts a projected token with
//!    that audience, so a token stolen from elsewhere is refused).
//! 2. It must belong to a node proxy's ServiceAccount (or a gateway's):
//!    any Pod can get a valid token of its own ServiceAccount, so being
//!    authenticated is not enough.
//! 3. The node is the one the token is bound to: bound ServiceAccount tokens
//!    carry the Pod they were issued for and, from Kubernetes 1.30, its node
//!    (`authentication.kubernetes.io/node-name` in the review's `extra`).
//!    Without the node extra, the Pod named in the token is looked up (its
//!    UID must match, so a Pod recreated under the same name does not
//!    count) and its `spec.nodeName` used.
//! 4. The node the caller claims must be that node; a mismatch is refused
//!    (and the caller logs it).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::Client;

/// The audience node proxies' projected tokens are issued for.
pub const DEFAULT_AUDIENCE: &str = "weir-control";

/// `extra` key: the node a bound token's Pod runs on (Kubernetes 1.30+).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// `extra` key: the Pod a bound token was issued for.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// `extra` key: that Pod's UID.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

const SA_PREFIX: &str = "system:serviceaccount:";

/// A ServiceAccount, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceAccountRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ServiceAccountRef {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `namespace/name`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| Self::new(ns, name))
    }
}

impl std::fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a successful TokenReview says about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedToken {
    /// The token's ServiceAccount.
    pub service_account: ServiceAccountRef,
    /// The Pod a bound token was issued for: name and UID.
    pub pod: Option<(String, String)>,
    /// The node of that Pod, from the token (`authentication.kubernetes.io/node-name`).
    pub node: Option<String>,
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenReviewError {
    /// The TokenReview call failed.
    #[error("TokenReview failed: {0} (the control plane's ServiceAccount needs create on tokenreviews.authentication.k8s.io)")]
    Api(#[source] kube::Error),
    /// The API server did not authenticate the token.
    #[error("token not authenticated: {0}")]
    NotAuthenticated(String),
    /// The token is a user's or a node's, not a ServiceAccount's.
    #[error("token of {0:?}, not of a ServiceAccount")]
    NotServiceAccount(String),
    /// The token's ServiceAccount is neither a node proxy's nor a gateway's.
    #[error("ServiceAccount {account} is neither a node proxy's nor a gateway's ({allowed})")]
    WrongServiceAccount {
        /// The token's ServiceAccount.
        account: ServiceAccountRef,
        /// The ServiceAccounts allowed.
        allowed: String,
    },
    /// The token is not bound to a Pod on a node.
    #[error("token of {0} is not bound to a pod: mount a projected ServiceAccount token (audience {DEFAULT_AUDIENCE:?} by default)")]
    Unbound(ServiceAccountRef),
    /// The Pod the token was bound to is gone or was replaced.
    #[error("pod {namespace}/{name} the token was issued for no longer runs (uid {uid})")]
    PodGone {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The UID in the token.
        uid: String,
    },
    /// The caller claims another node than the one its token is bound to.
    #[error("claims node {claimed:?} but its token is bound to a pod on node {actual:?}")]
    WrongNode {
        /// The node the caller named.
        claimed: String,
        /// The token's node.
        actual: String,
    },
}

impl TokenReviewError {
    /// A short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            TokenReviewError::Api(_) => "api",
            TokenReviewError::NotAuthenticated(_) => "not_authenticated",
            TokenReviewError::NotServiceAccount(_) => "not_service_account",
            TokenReviewError::WrongServiceAccount { .. } => "wrong_service_account",
            TokenReviewError::Unbound(_) => "unbound",
            TokenReviewError::PodGone { .. } => "pod_gone",
            TokenReviewError::WrongNode { .. } => "wrong_node",
        }
    }

    /// Whether the caller's credentials are at fault (`false`: the API
    /// server could not be asked, so the caller may retry).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, TokenReviewError::Api(_))
    }
}

/// Most TokenReviews in flight at once: callers past it wait, so a flood
/// of made-up tokens (each a new review: refusals are not cached) costs the
/// API server a bounded load.
pub const MAX_CONCURRENT_REVIEWS: usize = 8;

/// Reviews tokens with the API server.
#[derive(Clone)]
pub struct TokenReviewer {
    client: Client,
    audiences: Vec<String>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audiences", &self.audiences)
            .finish()
    }
}

fn first(extra: &BTreeMap<String, Vec<String>>, key: &str) -> Option<String> {
    extra
        .get(key)
        .and_then(|v| v.first())
        .filter(|s| !s.is_empty())
        .cloned()
}

impl TokenReviewer {
    /// Reviews tokens for `audiences` (empty: the API server's default
    /// audience, which any ServiceAccount token of the cluster has).
    pub fn new(client: Client, audiences: Vec<String>) -> Self {
        Self {
            client,
            audiences,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REVIEWS)),
        }
    }

    /// One TokenReview: whose token it is and what it is bound to.
    pub async fn review(&self, token: &str) -> Result<ReviewedToken, TokenReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = {
            // Never closed, so acquiring cannot fail.
            let _permit = self.in_flight.acquire().await.ok();
            api.create(&PostParams::default(), &review)
                .await
                .map_err(TokenReviewError::Api)?
        };
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(TokenReviewError::NotAuthenticated(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "rejected by the API server".to_owned()),
            ));
        }
        // As the TokenReview API asks of a client that sets audiences: the
        // answer must name one of them, or the authenticator that answered
        // did not check the token's audience (and a token issued for any
        // other audience would pass).
        if !self.audiences.is_empty() {
            let confirmed = status.audiences.unwrap_or_default();
            if !confirmed.iter().any(|a| self.audiences.contains(a)) {
                return Err(TokenReviewError::NotAuthenticated(format!(
                    "the API server did not confirm the audience {:?} (status.audiences: {confirmed:?})",
                    self.audiences
                )));
            }
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let account = username
            .strip_prefix(SA_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
            .map(|(ns, name)| ServiceAccountRef::new(ns, name))
            .ok_or_else(|| TokenReviewError::NotServiceAccount(username.clone()))?;
        let extra = user.extra.unwrap_or_default();
        let pod = first(&extra, POD_NAME_EXTRA).zip(first(&extra, POD_UID_EXTRA));
        Ok(ReviewedToken {
            service_account: account,
            pod,
            node: first(&extra, NODE_NAME_EXTRA),
        })
    }

    /// The node a reviewed token is bound to: the token's node, or else its
    /// Pod's (looked up, UID checked).
    pub async fn node_of(&self, token: &ReviewedToken) -> Result<String, TokenReviewError> {
        if let Some(node) = &token.node {
            return Ok(node.clone());
        }
        let Some((name, uid)) = &token.pod else {
            return Err(TokenReviewError::Unbound(token.service_account.clone()));
        };
        let namespace = &token.service_account.namespace;
        let gone = || TokenReviewError::PodGone {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.clone(),
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = pods
            .get_opt(name)
            .await
            .map_err(TokenReviewError::Api)?
            .ok_or_else(gone)?;
        if pod.metadata.uid.as_deref() != Some(uid.as_str()) {
            return Err(gone());
        }
        pod.spec
            .and_then(|s| s.node_name)
            .filter(|n| !n.is_empty())
            .ok_or_else(gone)
    }
}

/// Who an accepted caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterCaller {
    /// A node proxy on `node`: may have identities of Pods on that node signed.
    Node {
        /// Its node.
        node: String,
    },
    /// A gateway: may have its own ServiceAccount's identity signed.
    Gateway {
        /// The name it gave.
        name: String,
        /// Its ServiceAccount.
        service_account: ServiceAccountRef,
    },
}

/// How long an accepted token is remembered (Kubernetes' own webhook token
/// authenticator caches for 2 minutes). A token of a deleted Pod is refused
/// by the API server at once, here at most this long after.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);

/// Most tokens remembered; past it, the cache is emptied.
const CACHE_CAPACITY: usize = 16_384;

type CacheKey = [u8; 32];

/// Authenticates node proxies and gateways by their ServiceAccount tokens.
///
/// Accepted `(name, token)` pairs are remembered for a while
/// ([`DEFAULT_CACHE_TTL`]), so that a node proxy renewing the certificates
/// of its workloads does not send a TokenReview per certificate. Only the
/// SHA-256 of the pair is kept, never the token; refusals are not cached.
#[derive(Debug, Clone)]
pub struct ClusterAuthenticator {
    reviewer: TokenReviewer,
    /// The ServiceAccounts node proxies run as (the chart's DaemonSet).
    pub node_accounts: Vec<ServiceAccountRef>,
    /// The ServiceAccounts gateways run as.
    pub gateway_accounts: Vec<ServiceAccountRef>,
    cache_ttl: Duration,
    cache: Arc<Mutex<HashMap<CacheKey, (Instant, ClusterCaller)>>>,
}

fn list(accounts: &[ServiceAccountRef]) -> String {
    if accounts.is_empty() {
        return "none".to_owned();
    }
    accounts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl ClusterAuthenticator {
    /// Accepts node proxies running as `node_accounts` and gateways running
    /// as `gateway_accounts`.
    pub fn new(
        reviewer: TokenReviewer,
        node_accounts: Vec<ServiceAccountRef>,
        gateway_accounts: Vec<ServiceAccountRef>,
    ) -> Self {
        Self {
            reviewer,
            node_accounts,
            gateway_accounts,
            cache_ttl: DEFAULT_CACHE_TTL,
            cache: Arc::default(),
        }
    }

    /// Remembers accepted tokens for `ttl` (zero: not at all).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    fn cache_key(name: &str, token: &str) -> CacheKey {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(name.as_bytes());
        ctx.update(&[0]);
        ctx.update(token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    fn cached(&self, key: &CacheKey) -> Option<ClusterCaller> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.cache_ttl)
            .map(|(_, c)| c.clone())
    }

    fn remember(&self, key: CacheKey, caller: &ClusterCaller) {
        if self.cache_ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (at, _)| at.elapsed() < self.cache_ttl);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), caller.clone()));
    }

    /// Authenticates a caller that names itself `name` (a node name for a
    /// node proxy, any name for a gateway) with `token`. A node proxy's
    /// `name` must be the node its token is bound to.
    pub async fn authenticate(
        &self,
        name: &str,
        token: &str,
    ) -> Result<ClusterCaller, TokenReviewError> {
        let key = Self::cache_key(name, token);
        if let Some(caller) = self.cached(&key) {
            return Ok(caller);
        }
        let caller = self.review(name, token).await?;
        self.remember(key, &caller);
        Ok(caller)
    }

    async fn review(&self, name: &str, token: &str) -> Result<ClusterCaller, TokenReviewError> {
        let reviewed = self.reviewer.review(token).await?;
        let account = &reviewed.service_account;
        if self.gateway_accounts.contains(account) {
            return Ok(ClusterCaller::Gateway {
                name: name.to_owned(),
                service_account: account.clone(),
            });
        }
        if !self.node_accounts.contains(account) {
            return Err(TokenReviewError::WrongServiceAccount {
                account: account.clone(),
                allowed: format!(
                    "node proxies: {}; gateways: {}",
                    list(&self.node_accounts),
                    list(&self.gateway_accounts)
                ),
            });
        }
        let node = self.reviewer.node_of(&reviewed).await?;
        if node != name {
            return Err(TokenReviewError::WrongNode {
                claimed: name.to_owned(),
                actual: node,
            });
        }
        Ok(ClusterCaller::Node { node })
    }
}
