//! The node proxy's (and gateway's) side: the config stream and the CSR
//! signer, over one HTTP/2 connection to the control plane.
//!
//! Fail-static: when the control plane is down or restarting, the node keeps
//! the last config it built (the watch channel keeps its value) and the
//! certificates it holds (the identity manager keeps them until they expire,
//! retrying renewals); the stream is retried with [`Backoff`]; on reconnect
//! the node sends the content hashes of everything it holds and receives only
//! what changed meanwhile.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use weir_core::{Config, MeshSettings, SpiffeId};
use weir_identity::{CsrSigner, SignError, SignFuture};

use crate::backoff::{self, Backoff};
use crate::catalog::Catalog;
use crate::distributor::Role;
use crate::grpc::{self, CallError, Channel, Credentials};
use crate::metrics::ClientMetrics;
use crate::proto::{
    ConfigUpdate, CreateCertificateRequest, Resource, ResourceKey, ResourceVersion,
    StreamConfigRequest, ROLE_GATEWAY, ROLE_NODE,
};
use crate::{control_plane_identity, Error};

/// How a node reaches the control plane.
#[derive(Clone)]
pub struct ClientOptions {
    /// `host:port` of the control plane.
    pub address: String,
    /// This node's (or gateway's) name.
    pub node: String,
    /// Its bootstrap token (the first, when [`Self::token_file`] is set).
    pub token: String,
    /// The file the token was read from: read again before every call, so a
    /// rotated token (a projected ServiceAccount token is replaced before it
    /// expires) is used without a restart. `None`: `token` for good.
    pub token_file: Option<PathBuf>,
    /// The mesh root the control plane's certificate must chain to.
    pub root: CertificateDer<'static>,
    /// The node's mesh settings; the control plane's must be the same.
    pub settings: MeshSettings,
    /// Node proxy or gateway.
    pub role: Role,
    /// Bound on connecting (TCP + TLS).
    pub connect_timeout: Duration,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("ClientOptions")
            .field("address", &self.address)
            .field("node", &self.node)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl ClientOptions {
    /// Defaults for a node proxy.
    pub fn new(
        address: impl Into<String>,
        node: impl Into<String>,
        token: impl Into<String>,
        root: CertificateDer<'static>,
        settings: MeshSettings,
    ) -> Self {
        Self {
            address: address.into(),
            node: node.into(),
            token: token.into(),
            token_file: None,
            root,
            settings,
            role: Role::Node,
            connect_timeout: Duration::from_secs(5),
            backoff_initial: backoff::DEFAULT_INITIAL,
            backoff_max: backoff::DEFAULT_MAX,
        }
    }
}

/// A connection to the control plane, re-established on demand.
pub struct ControlClient {
    options: ClientOptions,
    /// The token last read (kept when a re-read fails).
    token: std::sync::Mutex<String>,
    tls: Arc<ClientConfig>,
    channel: tokio::sync::Mutex<Option<Channel>>,
    metrics: ClientMetrics,
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ControlClient {
    /// A client; connects lazily.
    pub fn new(options: ClientOptions, metrics: ClientMetrics) -> Result<Arc<Self>, Error> {
        let control = control_plane_identity(&options.settings)
            .map_err(|e| Error::Setup(format!("control plane identity: {e}")))?;
        let tls = crate::tls::client_config(
            &options.root,
            options.settings.trust_domain.clone(),
            control,
        )?;
        Ok(Arc::new(Self {
            token: std::sync::Mutex::new(options.token.clone()),
            options,
            tls,
            channel: tokio::sync::Mutex::new(None),
            metrics,
        }))
    }

    /// The metrics it counts into.
    pub fn metrics(&self) -> &ClientMetrics {
        &self.metrics
    }

    /// The credentials of the next call: the token file read again (a
    /// small file, read only when a stream opens or a certificate is
    /// signed); the last token read when it cannot be.
    fn credentials(&self) -> Credentials {
        let mut token = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.options.token_file {
            match std::fs::read_to_string(path) {
                Ok(text) if !text.trim().is_empty() => {
                    if text.trim() != token.as_str() {
                        tracing::info!(file = %path.display(), "control plane token file changed; using its new token");
                        *token = text.trim().to_owned();
                    }
                }
                Ok(_) => tracing::warn!(
                    file = %path.display(),
                    "control plane token file is empty; using the token read before"
                ),
                Err(e) => tracing::warn!(
                    file = %path.display(),
                    error = %e,
                    "cannot read the control plane token file; using the token read before"
                ),
            }
        }
        Credentials {
            node: self.options.node.clone(),
            token: token.clone(),
        }
    }

    /// The open connection, or a new one.
    async fn channel(&self) -> Result<Channel, CallError> {
        let mut slot = self.channel.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = grpc::connect(
            &self.options.address,
            self.tls.clone(),
            self.options.connect_timeout,
        )
        .await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Asks the control plane to sign `csr_pem` for `id`.
    pub async fn create_certificate(
        &self,
        id: &SpiffeId,
        csr_pem: String,
        ttl: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CallError> {
        let channel = self.channel().await?;
        let response = grpc::create_certificate(
            &channel,
            &self.credentials(),
            CreateCertificateRequest {
                csr: csr_pem,
                validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
                identity: id.to_string(),
            },
        )
        .await?;
        response
            .cert_chain
            .iter()
            .map(|pem| {
                CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
                    CallError::Status(tonic::Status::data_loss(format!(
                        "the control plane returned a chain that is not PEM: {e}"
                    )))
                })
            })
            .collect()
    }

    /// Starts the config stream. The receiver holds `None` until the first
    /// valid config arrives, then the latest valid one; it keeps it while
    /// the control plane is away. The task ends when every receiver is gone.
    pub fn spawn_config_watch(
        self: Arc<Self>,
    ) -> (
        watch::Receiver<Option<Arc<Config>>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(async move { self.watch_loop(tx).await });
        (rx, task)
    }

    async fn watch_loop(&self, tx: watch::Sender<Option<Arc<Config>>>) {
        let mut held: BTreeMap<ResourceKey, Resource> = BTreeMap::new();
        let mut backoff = Backoff::new(self.options.backoff_initial, self.options.backoff_max);
        let mut quiet = false;
        loop {
            let result = self.stream_once(&mut held, &tx, &mut backoff).await;
            let was_connected = self.metrics.is_connected();
            self.metrics.connected(false);
            let address = &self.options.address;
            match &result {
                Ok(()) => {
                    tracing::warn!(control_plane = %address, "the control plane closed the config stream; reconnecting, serving the last config meanwhile")
                }
                Err(e) if e.is_refusal() => {
                    tracing::error!(control_plane = %address, error = %e, "the control plane refused this node; retrying")
                }
                Err(e) if (was_connected || !quiet) && tx.borrow().is_none() => {
                    tracing::warn!(control_plane = %address, error = %e, "cannot get config from the control plane; nothing is served until it arrives; retrying with backoff")
                }
                Err(e) if was_connected || !quiet => {
                    tracing::warn!(control_plane = %address, error = %e, "config stream from the control plane lost; serving the last config and certificates, retrying with backoff")
                }
                Err(e) => {
                    tracing::debug!(control_plane = %address, error = %e, "control plane still unreachable")
                }
            }
            quiet = result.is_err();
            if was_connected {
                // Drop a connection that may be half-dead.
                *self.channel.lock().await = None;
            }
            if tx.is_closed() {
                return;
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = tx.closed() => return,
            }
        }
    }

    async fn stream_once(
        &self,
        held: &mut BTreeMap<ResourceKey, Resource>,
        tx: &watch::Sender<Option<Arc<Config>>>,
        backoff: &mut Backoff,
    ) -> Result<(), CallError> {
        let channel = self.channel().await?;
        let request = StreamConfigRequest {
            known: held
                .iter()
                .map(|(k, r)| ResourceVersion {
                    key: Some(k.clone()),
                    version: r.version.clone(),
                })
                .collect(),
            role: match self.options.role {
                Role::Node => ROLE_NODE,
                Role::Gateway => ROLE_GATEWAY,
            }
            .to_owned(),
        };
        let mut stream = grpc::stream_config(&channel, &self.credentials(), request).await?;
        let mut first = true;
        loop {
            let update = tokio::select! {
                message = stream.message() => message?,
                _ = tx.closed() => return Ok(()),
            };
            let Some(update) = update else {
                return Ok(());
            };
            if first {
                first = false;
                self.metrics.connected(true);
                backoff.reset();
                tracing::info!(
                    control_plane = %self.options.address,
                    instance = %update.control_plane,
                    version = update.version,
                    full = update.full,
                    "connected to the control plane"
                );
            }
            self.check_mesh(&update)?;
            let mut version = update.version;
            merge(held, update);
            // Coalesce what is already queued: one rebuild for a burst.
            while let Ok(next) = tokio::time::timeout(Duration::ZERO, stream.message()).await {
                let Some(next) = next? else { break };
                self.check_mesh(&next)?;
                version = next.version;
                merge(held, next);
            }
            match build(held, &self.options.settings) {
                Ok(config) => {
                    self.metrics.update(true);
                    tracing::info!(
                        version,
                        objects = held.len(),
                        workloads = config.workloads.len(),
                        "config from the control plane applied"
                    );
                    tx.send_replace(Some(Arc::new(config)));
                }
                Err(errors) => {
                    self.metrics.update(false);
                    tracing::error!(
                        version,
                        errors = errors.0.len(),
                        "config from the control plane refused; keeping the previous config"
                    );
                    for e in &errors.0 {
                        tracing::error!("config: {e}");
                    }
                }
            }
        }
    }

    /// Refuses a control plane whose mesh settings differ from the node's.
    fn check_mesh(&self, update: &ConfigUpdate) -> Result<(), CallError> {
        let Some(mesh) = &update.mesh else {
            return Ok(());
        };
        let ours = &self.options.settings;
        if mesh.trust_domain == ours.trust_domain.as_str()
            && mesh.root_namespace == ours.root_namespace
        {
            return Ok(());
        }
        self.metrics.update(false);
        Err(CallError::Status(tonic::Status::failed_precondition(format!(
            "the control plane serves trust domain {:?} and root namespace {:?}, this node uses {:?} and {:?}; pass the same --trust-domain and --root-namespace to both",
            mesh.trust_domain, mesh.root_namespace, ours.trust_domain.as_str(), ours.root_namespace
        ))))
    }
}

/// Applies `update` to what the node holds.
fn merge(held: &mut BTreeMap<ResourceKey, Resource>, update: ConfigUpdate) {
    if update.full {
        held.clear();
    }
    for k in update.removed {
        held.remove(&k);
    }
    for r in update.resources {
        if let Some(k) = r.key.clone() {
            held.insert(k, r);
        }
    }
}

/// The node's config from what it holds, with the strict loader.
fn build(
    held: &BTreeMap<ResourceKey, Resource>,
    settings: &MeshSettings,
) -> Result<Config, weir_core::ConfigErrors> {
    Config::from_sources(&Catalog::sources_of(held.values()), settings.clone())
}

/// Applies `update` to what the node holds and rebuilds its config with the
/// strict loader. `held` always mirrors what the control plane sent (so a
/// reconnect asks for the right difference), even when the result is refused.
pub fn apply(
    held: &mut BTreeMap<ResourceKey, Resource>,
    update: ConfigUpdate,
    settings: &MeshSettings,
) -> Result<Config, weir_core::ConfigErrors> {
    merge(held, update);
    build(held, settings)
}

impl CsrSigner for ControlClient {
    fn sign<'a>(&'a self, id: &'a SpiffeId, csr_pem: String, ttl: Duration) -> SignFuture<'a> {
        Box::pin(async move {
            let result = self.create_certificate(id, csr_pem, ttl).await;
            self.metrics.certificate_request(result.is_ok());
            result.map_err(|e| Box::new(e) as SignError)
        })
    }
}

#[cfg(test)]
mod tests;
