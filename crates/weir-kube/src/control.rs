//! Cluster mode for `weir control`: the Kubernetes source and TokenReview
//! authentication behind weir-control's seams ([`ConfigSource`],
//! [`Authenticator`]), so the control plane runs the same whether its
//! config comes from files or from the cluster:
//!
//! ```ignore
//! let client = kube::Client::try_default().await?;
//! let metrics = KubeMetrics::register(&mut registry);
//! let source = KubeConfigSource::start(client.clone(), KubeSourceOptions { settings, ..Default::default() }, metrics);
//! let auth = KubeAuthenticator::new(
//!     ClusterAuthenticator::new(TokenReviewer::new(client, vec![DEFAULT_AUDIENCE.into()]), nodes, gateways),
//!     settings.trust_domain.clone(),
//! );
//! weir_control::server::run_with(options, Box::new(source), Arc::new(auth), shutdown).await
//! ```

use weir_control::auth::{AuthError, AuthFuture};
use weir_control::source::{SourceEvent, SourceFuture};
use weir_control::{Authenticator, Caller, Catalog, ConfigSource};
use weir_core::{MeshSettings, SpiffeId, TrustDomain};

use crate::metrics::KubeMetrics;
use crate::source::{KubeSource, KubeSourceOptions};
use crate::token_review::{ClusterAuthenticator, ClusterCaller};

/// The Kubernetes source as a [`ConfigSource`]: every snapshot becomes a
/// catalog of its valid objects; the invalid ones are passed on as
/// `skipped` (counted in `weir_config_invalid_resources{kind}` by the
/// source; the control plane logs each with `weir check`'s message when it
/// first appears).
#[derive(Debug)]
pub struct KubeConfigSource {
    source: KubeSource,
    settings: MeshSettings,
    metrics: KubeMetrics,
}

impl KubeConfigSource {
    /// Starts watching the cluster `client` talks to.
    pub fn start(client: kube::Client, options: KubeSourceOptions, metrics: KubeMetrics) -> Self {
        let settings = options.settings.clone();
        Self {
            source: KubeSource::start(client, options, metrics.clone()),
            settings,
            metrics,
        }
    }
}

impl ConfigSource for KubeConfigSource {
    fn next(&mut self) -> SourceFuture<'_> {
        Box::pin(async move {
            let snapshot = self.source.next().await?;
            // The snapshot's sources loaded together already; loading them
            // again cannot fail unless the two loads disagree.
            Some(
                match Catalog::load(&snapshot.sources, self.settings.clone()) {
                    Ok(catalog) => SourceEvent::Update {
                        catalog,
                        skipped: snapshot.invalid.clone(),
                    },
                    Err(errors) => SourceEvent::Invalid(errors),
                },
            )
        })
    }

    fn describe(&self) -> String {
        "the Kubernetes API (namespaces, pods, services, Istio and weir resources)".to_owned()
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register_in(registry);
    }
}

/// TokenReview authentication as an [`Authenticator`]: node proxies are
/// the node their ServiceAccount token is bound to; gateways may have their
/// own ServiceAccount's identity signed.
#[derive(Debug, Clone)]
pub struct KubeAuthenticator {
    inner: ClusterAuthenticator,
    trust_domain: TrustDomain,
}

impl KubeAuthenticator {
    /// Gateways' identities are in `trust_domain`.
    pub fn new(inner: ClusterAuthenticator, trust_domain: TrustDomain) -> Self {
        Self {
            inner,
            trust_domain,
        }
    }
}

impl Authenticator for KubeAuthenticator {
    fn authenticate<'a>(&'a self, node: &'a str, token: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            if token.is_empty() {
                return Err(AuthError::MissingToken);
            }
            match self.inner.authenticate(node, token).await {
                Ok(ClusterCaller::Node { node }) => Ok(Caller::Node { name: node }),
                Ok(ClusterCaller::Gateway {
                    name,
                    service_account,
                }) => {
                    let id = SpiffeId::new(
                        self.trust_domain.clone(),
                        &service_account.namespace,
                        &service_account.name,
                    )
                    .map_err(|e| {
                        AuthError::Backend(format!("gateway ServiceAccount {service_account}: {e}"))
                    })?;
                    Ok(Caller::Gateway {
                        name,
                        identities: vec![id],
                    })
                }
                Err(e) if e.is_refusal() => {
                    tracing::warn!(caller = node, reason = e.metric_label(), "refused: {e}");
                    Err(AuthError::WrongToken(node.to_owned()))
                }
                Err(e) => Err(AuthError::Backend(e.to_string())),
            }
        })
    }
}
