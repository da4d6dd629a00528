//! A Kafka gateway listener's shared state and the entry points the
//! gateway calls: resolve a client's SNI to a broker, connect, run the
//! session.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use weir_core::kafka::Principal;

use crate::authz::Authorizer;
use crate::error::SessionError;
use crate::frame::DEFAULT_MAX_FRAME_SIZE;
use crate::mapper::{HostMapper, SniTarget};
use crate::metrics::KafkaMetrics;
use crate::registry::{attempt, BrokerAddr, BrokerRegistry};
use crate::upstream::{BoxStream, Connector};

/// Kafka's `connections.max.idle.ms` default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Settings of one Kafka-aware listener.
#[derive(Debug, Clone)]
pub struct KafkaProxyConfig {
    /// External names: bootstrap host, broker host template, advertised port.
    pub mapper: HostMapper,
    /// The cluster's bootstrap servers (real addresses).
    pub bootstrap_servers: Vec<BrokerAddr>,
    /// Largest frame accepted from either side (default 100 MiB).
    pub max_frame_size: usize,
    /// Limit for a metadata refresh (unknown broker id or topic id).
    pub refresh_timeout: Duration,
    /// A client connection that sends no request for this long is closed,
    /// as a broker closes one after `connections.max.idle.ms` (10 min).
    pub idle_timeout: Duration,
}

impl KafkaProxyConfig {
    /// Defaults for everything but the names and the bootstrap servers.
    pub fn new(mapper: HostMapper, bootstrap_servers: Vec<BrokerAddr>) -> Self {
        KafkaProxyConfig {
            mapper,
            bootstrap_servers,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            refresh_timeout: Duration::from_secs(10),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Where a client connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// What the SNI named.
    pub target: SniTarget,
    /// Brokers to try, in order (one for a broker route; the bootstrap
    /// servers, rotated per connection, for the bootstrap host).
    pub candidates: Vec<BrokerAddr>,
}

/// One Kafka-aware listener: its names, its cluster's registry, how it
/// reaches brokers, who may do what, and its metrics. Shared by all the
/// listener's connections.
pub struct KafkaProxy {
    config: KafkaProxyConfig,
    registry: Arc<BrokerRegistry>,
    connector: Arc<dyn Connector>,
    authorizer: Arc<dyn Authorizer>,
    metrics: Arc<KafkaMetrics>,
}

impl std::fmt::Debug for KafkaProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProxy")
            .field("config", &self.config)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl KafkaProxy {
    /// A listener with a registry of its own.
    pub fn new(
        config: KafkaProxyConfig,
        connector: Arc<dyn Connector>,
        authorizer: Arc<dyn Authorizer>,
        metrics: Arc<KafkaMetrics>,
    ) -> Self {
        let registry = Arc::new(BrokerRegistry::new(config.bootstrap_servers.clone()));
        Self::with_registry(config, registry, connector, authorizer, metrics)
    }

    /// A listener sharing `registry` (e.g. kept across config reloads, or
    /// shared by listeners of the same cluster).
    pub fn with_registry(
        config: KafkaProxyConfig,
        registry: Arc<BrokerRegistry>,
        connector: Arc<dyn Connector>,
        authorizer: Arc<dyn Authorizer>,
        metrics: Arc<KafkaMetrics>,
    ) -> Self {
        KafkaProxy {
            config,
            registry,
            connector,
            authorizer,
            metrics,
        }
    }

    /// The listener's settings.
    pub fn config(&self) -> &KafkaProxyConfig {
        &self.config
    }

    /// What the listener knows about the cluster.
    pub fn registry(&self) -> &Arc<BrokerRegistry> {
        &self.registry
    }

    /// How the listener reaches brokers.
    pub fn connector(&self) -> &Arc<dyn Connector> {
        &self.connector
    }

    /// The listener's authorizer.
    pub fn authorizer(&self) -> &Arc<dyn Authorizer> {
        &self.authorizer
    }

    /// The listener's metrics.
    pub fn metrics(&self) -> &Arc<KafkaMetrics> {
        &self.metrics
    }

    /// Where a connection with this SNI goes. A broker id the registry does
    /// not know triggers one metadata refresh from a bootstrap server (a
    /// broker added since the last metadata), then `unknown_broker`.
    pub async fn resolve(&self, sni: &str) -> Result<Route, SessionError> {
        let target = self
            .config
            .mapper
            .classify(sni)
            .ok_or_else(|| SessionError::UnknownHost {
                sni: sni.to_owned(),
            })?;
        let candidates = match target {
            SniTarget::Bootstrap => self.registry.bootstrap_candidates(),
            SniTarget::Broker(id) => {
                if self.registry.broker(id).is_none() {
                    if let Err(e) = self
                        .registry
                        .refresh(
                            self.connector.as_ref(),
                            false,
                            self.config.refresh_timeout,
                            |r| r.broker(id).is_some(),
                        )
                        .await
                    {
                        tracing::warn!(sni, broker = id, error = %e, "metadata refresh for an unknown broker failed");
                    }
                }
                let addr = self
                    .registry
                    .broker(id)
                    .ok_or_else(|| SessionError::UnknownBroker {
                        sni: sni.to_owned(),
                        id,
                    })?;
                vec![addr]
            }
        };
        Ok(Route { target, candidates })
    }

    /// Connects to the first reachable candidate of `route`. A broker that
    /// cannot be reached at the address the gateway knows may have moved (a
    /// rescheduled pod advertising its IP): after one brokers-only metadata
    /// refresh, a new address is tried once.
    pub async fn connect(&self, route: &Route) -> Result<(BrokerAddr, BoxStream), SessionError> {
        let mut last = None;
        let n = route.candidates.len();
        for (i, addr) in route.candidates.iter().enumerate() {
            match attempt(self.connector.as_ref(), addr, i + 1 < n).await {
                Ok(s) => return Ok((addr.clone(), s)),
                Err(e) => {
                    tracing::debug!(upstream = %addr, error = %e, "Kafka upstream connect failed");
                    last = Some((addr.clone(), e));
                }
            }
        }
        if let (SniTarget::Broker(id), Some((failed, _))) = (route.target, &last) {
            let moved = |r: &BrokerRegistry| r.broker(id).is_some_and(|a| a != *failed);
            if let Err(e) = self
                .registry
                .refresh(
                    self.connector.as_ref(),
                    false,
                    self.config.refresh_timeout,
                    moved,
                )
                .await
            {
                tracing::warn!(broker = id, error = %e, "metadata refresh for an unreachable broker failed");
            }
            if let Some(addr) = self.registry.broker(id).filter(|a| a != failed) {
                tracing::info!(broker = id, from = %failed, to = %addr, "broker moved; connecting to its new address");
                match self.connector.connect(&addr.host, addr.port).await {
                    Ok(s) => return Ok((addr, s)),
                    Err(e) => last = Some((addr, e)),
                }
            }
        }
        let (addr, source) = last.unwrap_or_else(|| {
            (
                BrokerAddr {
                    host: "-".into(),
                    port: 0,
                },
                std::io::Error::other("no upstream configured"),
            )
        });
        Err(SessionError::UpstreamUnreachable {
            addr: addr.to_string(),
            source,
        })
    }

    /// Serves one client connection (TLS already terminated, `sni` and
    /// `principal` known): resolves, connects, runs the session to its end.
    /// The close reason is logged and, for bad input and upstream
    /// failures, counted in `weir_kafka_connections_closed_total`.
    pub async fn serve<S>(
        &self,
        client: S,
        sni: &str,
        principal: Principal,
    ) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.serve_with(client, sni, principal, |_| {}).await
    }

    /// [`KafkaProxy::serve`], calling `connected` with the broker once the
    /// upstream connection is open (the connection is routed from then on;
    /// an error before it means it never was).
    pub async fn serve_with<S, F>(
        &self,
        client: S,
        sni: &str,
        principal: Principal,
        connected: F,
    ) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
        F: FnOnce(&BrokerAddr) + Send,
    {
        let result = async {
            let route = self.resolve(sni).await?;
            let (addr, upstream) = self.connect(&route).await?;
            connected(&addr);
            self.run_session(client, upstream, principal.clone()).await
        }
        .await;
        self.finish(sni, &principal, result)
    }

    /// Like [`KafkaProxy::serve`] with a route chosen by the caller (a
    /// listener with a fixed destination).
    pub async fn serve_route<S>(
        &self,
        client: S,
        route: &Route,
        principal: Principal,
    ) -> Result<(), SessionError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let result = async {
            let (_, upstream) = self.connect(route).await?;
            self.run_session(client, upstream, principal.clone()).await
        }
        .await;
        self.finish("-", &principal, result)
    }

    /// Runs a session between a client and an already connected broker,
    /// without counting the close (see [`KafkaProxy::serve`]).
    pub async fn run_session<C, U>(
        &self,
        client: C,
        upstream: U,
        principal: Principal,
    ) -> Result<(), SessionError>
    where
        C: AsyncRead + AsyncWrite + Unpin + Send,
        U: AsyncRead + AsyncWrite + Unpin + Send,
    {
        crate::session::run(self, client, upstream, principal).await
    }

    fn finish(
        &self,
        sni: &str,
        principal: &Principal,
        result: Result<(), SessionError>,
    ) -> Result<(), SessionError> {
        if let Err(e) = &result {
            let reason = e.reason();
            if !matches!(reason, "client_io") {
                self.metrics.closed(reason);
            }
            if e.is_bad_input() {
                tracing::warn!(sni, principal = %principal, reason, error = %e, "closed Kafka connection");
            } else {
                tracing::info!(sni, principal = %principal, reason, error = %e, "Kafka connection ended");
            }
        }
        result
    }
}
