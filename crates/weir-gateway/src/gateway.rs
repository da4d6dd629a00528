//! The gateway's lifecycle: load config and identity, open the listeners of
//! the Gateways that select this instance, reload on change (refusing
//! invalid config, adding and removing listeners while open connections
//! continue), serve the admin endpoints, drain on shutdown.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{error, info, warn};
use weir_core::config::{read_sources, ConfigFiles, Reload, ReloadStatus, ServerTls, TlsMode};
use weir_core::{Config, SpiffeId};
use weir_identity::IdentityManager;
use weir_node::admin::{Reply, JSON, OPENMETRICS, TEXT};
use weir_node::drain::Drain;
use weir_node::options::{serialize_secs, ProxyOptions};

use crate::listener::{handle, TerminatedListener, TerminatedListeners};
use crate::metrics::Metrics;
use crate::routes::RouteTable;
use crate::tls::{server_config, TlsFiles};
use crate::upstream::Upstreams;
use crate::Error;

/// Istio's default ingress gateway labels.
pub const DEFAULT_LABELS: &[(&str, &str)] = &[("istio", "ingressgateway")];

/// Everything `weir gateway` is configured with (dumped by `/config_dump`).
#[derive(Debug, Clone, Serialize)]
pub struct GatewayOptions {
    #[serde(flatten)]
    pub common: ProxyOptions,
    /// This instance's labels: it serves the Gateways whose `spec.selector`
    /// they match (Istio's rule for gateway pods).
    pub labels: BTreeMap<String, String>,
    /// The gateway's namespace and service account: its SPIFFE identity
    /// `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub namespace: String,
    pub service_account: String,
    /// Address the listeners bind to.
    pub listen_address: IpAddr,
    /// Bound on receiving a client's ClientHello, and on a terminated
    /// handshake.
    #[serde(serialize_with = "serialize_secs")]
    pub client_hello_timeout: Duration,
    /// Protocol-aware listeners (e.g. the Kafka gateway).
    #[serde(skip)]
    pub extensions: Vec<Arc<dyn TerminatedListeners>>,
}

impl GatewayOptions {
    pub fn new(config_paths: Vec<PathBuf>) -> Self {
        Self {
            common: ProxyOptions::new(config_paths),
            labels: DEFAULT_LABELS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            namespace: "istio-system".to_owned(),
            service_account: "weir-gateway".to_owned(),
            listen_address: IpAddr::from([0, 0, 0, 0]),
            client_hello_timeout: Duration::from_secs(10),
            extensions: Vec::new(),
        }
    }
}

/// A terminating server's (or extension listener's) TLS config, with the
/// file contents it was built from.
#[derive(Debug, Clone)]
pub(crate) struct TlsEntry {
    pub tls: ServerTls,
    pub files: Option<TlsFiles>,
    pub config: Option<Arc<rustls::ServerConfig>>,
    pub error: Option<String>,
}

/// An extension listener and its TLS config.
#[derive(Debug, Clone)]
pub(crate) struct ExtensionEntry {
    pub listener: TerminatedListener,
    pub config: Option<Arc<rustls::ServerConfig>>,
    pub error: Option<String>,
    files: Option<TlsFiles>,
}

/// Everything a connection needs, swapped whole on a change.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub config: Arc<Config>,
    pub table: RouteTable,
    /// Keyed by (Gateway `namespace/name`, server index).
    pub tls: HashMap<(String, usize), TlsEntry>,
    pub extensions: BTreeMap<u16, ExtensionEntry>,
    /// Extension listeners refused because another one has their port.
    pub extension_conflicts: Vec<String>,
}

impl Snapshot {
    fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self
            .table
            .listeners
            .keys()
            .chain(self.extensions.keys())
            .copied()
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// Whether a certificate file of a terminating listener changed on disk.
    fn tls_files_changed(&self) -> bool {
        self.tls
            .values()
            .map(|t| (&t.tls, &t.files))
            .chain(
                self.extensions
                    .values()
                    .map(|e| (&e.listener.tls, &e.files)),
            )
            .any(|(tls, files)| TlsFiles::read(tls).ok().as_ref() != files.as_ref())
    }

    /// Why a terminating server or extension listener cannot serve at all
    /// (no certificate it could use, not even a previous one).
    fn unservable(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ((gw, i), t) in &self.tls {
            if t.config.is_none() {
                out.push(format!(
                    "Gateway {gw} server {i}: TLS: {}",
                    t.error.as_deref().unwrap_or("no certificate")
                ));
            }
        }
        for (port, e) in &self.extensions {
            if e.config.is_none() {
                out.push(format!(
                    "listener {} (port {port}): TLS: {}",
                    e.listener.name,
                    e.error.as_deref().unwrap_or("no certificate")
                ));
            }
        }
        out
    }

    fn problems(&self) -> Vec<String> {
        let mut out = self.table.problems.clone();
        out.extend(self.extension_conflicts.iter().cloned());
        for ((gw, i), t) in &self.tls {
            if let Some(e) = &t.error {
                out.push(format!("Gateway {gw} server {i}: TLS: {e}"));
            }
        }
        for (port, e) in &self.extensions {
            if let Some(err) = &e.error {
                out.push(format!(
                    "listener {} (port {port}): TLS: {err}",
                    e.listener.name
                ));
            }
        }
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ListenerStatus {
    pub address: SocketAddr,
    pub listening: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What every connection handler shares.
pub(crate) struct Ctx {
    pub options: GatewayOptions,
    pub id: SpiffeId,
    pub identity: Arc<IdentityManager>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    snapshot: RwLock<Arc<Snapshot>>,
    ready: AtomicBool,
    /// Whether it has been ready once (certificate problems after that are
    /// reported, not made a readiness failure).
    ever_ready: AtomicBool,
    status: Mutex<BTreeMap<u16, ListenerStatus>>,
    reload: Mutex<ReloadStatus>,
}

impl Ctx {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace(&self, s: Arc<Snapshot>) {
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = s;
    }
}

/// A previous build's settings, files, config and error, to reuse when
/// unchanged.
type PrevTls<'a> = (
    &'a ServerTls,
    &'a Option<TlsFiles>,
    &'a Option<Arc<rustls::ServerConfig>>,
    &'a Option<String>,
);

/// Builds the snapshot for `config`: route table, TLS configs (reusing
/// those of `prev` whose settings and files are unchanged), extension
/// listeners.
fn build_snapshot(ctx: &Ctx, config: Arc<Config>, prev: Option<&Snapshot>) -> Snapshot {
    let mut table = RouteTable::build_in(
        &config,
        &ctx.options.labels,
        Some(ctx.options.namespace.as_str()),
    );
    // An extension listener's port is its own (a KafkaGateway names exactly
    // one port for itself): Gateway servers on it are dropped and reported;
    // of two extension listeners on one port, the first is kept.
    let mut claimed: BTreeMap<u16, TerminatedListener> = BTreeMap::new();
    let mut extension_conflicts = Vec::new();
    for ext in &ctx.options.extensions {
        for l in ext.listeners(&config, &ctx.options.labels) {
            if let Some(first) = claimed.get(&l.port) {
                extension_conflicts.push(format!(
                    "{} (port {}) conflicts with {} on the same port and is ignored",
                    l.source, l.port, first.source
                ));
                continue;
            }
            table.yield_port(l.port, &l.source);
            claimed.insert(l.port, l);
        }
    }
    let build = |tls: &ServerTls, old: Option<PrevTls<'_>>| {
        // A server that had a working config keeps it when the new files
        // are unusable (a half-written rotation, a key that does not match):
        // the last good certificate stays in force, the error is reported.
        // Only for the same settings: a server whose TLS settings changed
        // (SIMPLE to MUTUAL, a higher minimum version, another server at
        // this index) must not go on with the old ones.
        let previous = old
            .filter(|(t, ..)| *t == tls)
            .and_then(|(_, _, c, _)| c.clone());
        let kept = |e: String| match &previous {
            Some(_) => format!("{e}; still serving the previous certificate"),
            None => e,
        };
        let files = match TlsFiles::read(tls) {
            Ok(f) => f,
            Err(e) => return (None, previous.clone(), Some(kept(e.to_string()))),
        };
        if let Some((t, Some(f), Some(c), error)) = old {
            if t == tls && *f == files {
                // Unchanged: the same config, and the same error if the
                // files it was built from were the unusable ones.
                return (Some(files), Some(c.clone()), error.clone());
            }
        }
        match server_config(tls, &files, &ctx.identity, &ctx.id) {
            Ok(c) => (Some(files), Some(c), None),
            Err(e) => (Some(files), previous.clone(), Some(kept(e.to_string()))),
        }
    };
    let mut tls = HashMap::new();
    for l in table.listeners.values() {
        for s in &l.servers {
            let Some(t) = s.terminating_tls() else {
                continue;
            };
            let key = (s.gateway.clone(), s.index);
            let old = prev
                .and_then(|p| p.tls.get(&key))
                .map(|e| (&e.tls, &e.files, &e.config, &e.error));
            let (files, config, error) = build(t, old);
            tls.insert(
                key,
                TlsEntry {
                    tls: t.clone(),
                    files,
                    config,
                    error,
                },
            );
        }
    }
    let mut extensions = BTreeMap::new();
    for l in claimed.into_values() {
        let (files, cfg, error) = if l.tls.mode == TlsMode::Passthrough {
            (None, None, Some("PASSTHROUGH cannot hand plaintext to a protocol handler; use SIMPLE, MUTUAL or ISTIO_MUTUAL".to_owned()))
        } else {
            let old = prev
                .and_then(|p| p.extensions.get(&l.port))
                .map(|e| (&e.listener.tls, &e.files, &e.config, &e.error));
            build(&l.tls, old)
        };
        extensions.insert(
            l.port,
            ExtensionEntry {
                listener: l,
                config: cfg,
                error,
                files,
            },
        );
    }
    Snapshot {
        config,
        table,
        tls,
        extensions,
        extension_conflicts,
    }
}

/// Where a gateway gets its config and certificate when they do not come
/// from `config_paths` and a local CA: the control plane (`--control`).
#[derive(Default)]
pub struct GatewaySources {
    /// The metrics registry, with whatever the caller registered in it
    /// (e.g. the control-plane client's metrics and the `TlsMetrics` of
    /// `identity`); the gateway adds its own.
    pub registry: Option<Registry>,
    /// Certificates signed elsewhere (through the control plane).
    pub identity: Option<Arc<IdentityManager>>,
    /// Config snapshots pushed to the gateway (`None` inside until the
    /// first arrives). The last one stays in force while no newer one comes
    /// (fail-static).
    pub config: Option<tokio::sync::watch::Receiver<Option<Arc<Config>>>>,
}

impl std::fmt::Debug for GatewaySources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySources")
            .field("identity", &self.identity.is_some())
            .field("pushed_config", &self.config.is_some())
            .finish()
    }
}

/// Runs the gateway until `shutdown` completes, then drains.
pub async fn run(
    options: GatewayOptions,
    shutdown: impl std::future::Future<Output = ()>,
    reload_now: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), Error> {
    run_with(options, GatewaySources::default(), shutdown, reload_now).await
}

/// [`run`] with config and certificates from `sources` where given.
pub async fn run_with(
    options: GatewayOptions,
    sources_from: GatewaySources,
    shutdown: impl std::future::Future<Output = ()>,
    mut reload_now: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), Error> {
    let GatewaySources {
        registry: given_registry,
        identity: given_identity,
        config: mut pushed,
    } = sources_from;
    tokio::pin!(shutdown);
    let (sources, config) = match pushed.as_mut() {
        None => {
            let sources = read_sources(&options.common.config_paths)
                .map_err(|e| weir_core::ConfigErrors(vec![*e]))?;
            let config = Arc::new(Config::from_sources(
                &sources,
                options.common.settings.clone(),
            )?);
            (sources, config)
        }
        Some(rx) => {
            info!(target: "weir::gateway", "waiting for the first config from the control plane");
            let first = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                c = rx.wait_for(|c| c.is_some()) => c.map(|c| c.clone()).ok().flatten(),
            };
            match first {
                Some(c) => (Vec::new(), c),
                None => return Err(Error::ControlEnded),
            }
        }
    };
    for w in &config.warnings {
        warn!("config: {w}");
    }
    let id = SpiffeId::new(
        options.common.settings.trust_domain.clone(),
        &options.namespace,
        &options.service_account,
    )?;

    let mut registry = given_registry.unwrap_or_default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    for ext in &options.extensions {
        ext.register_metrics(&mut registry);
    }
    let identity = match given_identity {
        Some(identity) => identity,
        None => options.common.local_identity(&mut registry)?,
    };
    // Issue (or, with --control, have the control plane sign) the gateway's
    // certificate now: a CA problem fails start-up.
    identity.prepare(&id).await?;
    let _rotation = identity.clone().spawn_rotation();
    let upstreams = Arc::new(
        Upstreams::new(identity.clone(), id.clone(), options.common.pool_config())
            .with_own_addresses(vec![
                options.common.admin_addr,
                options.common.metrics_addr,
                options.common.readiness_addr,
            ]),
    );

    let ctx = Arc::new(Ctx {
        options: options.clone(),
        id: id.clone(),
        identity,
        upstreams,
        metrics,
        drain: Drain::default(),
        snapshot: RwLock::new(Arc::new(Snapshot {
            config: config.clone(),
            table: RouteTable::default(),
            tls: HashMap::new(),
            extensions: BTreeMap::new(),
            extension_conflicts: Vec::new(),
        })),
        ready: AtomicBool::new(false),
        ever_ready: AtomicBool::new(false),
        status: Mutex::new(BTreeMap::new()),
        reload: Mutex::new(ReloadStatus::default()),
    });
    let first = Arc::new(build_snapshot(&ctx, config, None));
    let mut problems = first.problems();
    for p in &problems {
        error!(target: "weir::gateway", "{p}");
    }
    ctx.replace(first);
    let admin_tasks = spawn_admin(ctx.clone(), Arc::new(registry)).await?;

    let labels: Vec<String> = options
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let labels = labels.join(",");
    info!(target: "weir::gateway", identity = %id, labels = %labels, ports = ?ctx.snapshot().ports(), "gateway starting");
    if let Some(w) = selection_warning(None, &ctx.snapshot().ports()) {
        warn!(target: "weir::gateway", labels = %labels, "{w}");
    }
    let mut running: BTreeMap<u16, tokio::task::JoinHandle<()>> = BTreeMap::new();
    reconcile(&ctx, &mut running).await;

    let mut files = ConfigFiles::new(
        options.common.config_paths.clone(),
        options.common.settings.clone(),
        sources,
    );
    let mut tick = tokio::time::interval(options.common.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (forced, pushed_config) = tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => (false, None),
            Some(()) = reload_now.recv() => (true, None),
            Ok(()) = async {
                match pushed.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            } => (false, pushed.as_ref().and_then(|rx| rx.borrow().clone())),
        };
        let current = ctx.snapshot();
        let new_config = if pushed.is_some() {
            // Pushed config was validated by the control plane and the
            // client; TLS files are still re-read on ticks below.
            pushed_config
        } else {
            let reload = files.reload(forced, &ctx.reload);
            if let Some(ok) = reload.outcome() {
                ctx.metrics.reload(ok);
            }
            match reload {
                Reload::Loaded(c) => Some(Arc::from(c)),
                _ => None,
            }
        };
        if new_config.is_some() || current.tls_files_changed() {
            let config = new_config.unwrap_or_else(|| current.config.clone());
            let next = Arc::new(build_snapshot(&ctx, config, Some(&current)));
            let now = next.problems();
            if now != problems {
                for p in &now {
                    error!(target: "weir::gateway", "{p}");
                }
                problems = now;
            }
            info!(target: "weir::gateway", ports = ?next.ports(), "listeners updated");
            if let Some(w) = selection_warning(Some(&current.ports()), &next.ports()) {
                warn!(target: "weir::gateway", labels = %labels, "{w}");
            }
            ctx.replace(next);
        }
        reconcile(&ctx, &mut running).await;
    }

    info!(target: "weir::gateway", open = ctx.drain.open(), drain_timeout = ?options.common.drain_timeout, "shutting down: no new connections; draining");
    ctx.ready.store(false, Ordering::Release);
    for (_, t) in std::mem::take(&mut running) {
        t.abort();
    }
    let left = ctx.drain.wait(options.common.drain_timeout).await;
    if left > 0 {
        warn!(
            target: "weir::gateway",
            open = left,
            "drain deadline passed; closing the remaining connections"
        );
    }
    for t in admin_tasks {
        t.abort();
    }
    info!(target: "weir::gateway", "gateway stopped");
    Ok(())
}

/// The warning for an instance that nothing selects: at start-up
/// (`before` is None) when it has no port, after a change when it just lost
/// its last one.
fn selection_warning(before: Option<&[u16]>, now: &[u16]) -> Option<&'static str> {
    (now.is_empty() && before.is_none_or(|b| !b.is_empty())).then_some(
        "no Gateway or KafkaGateway selects this instance's labels: nothing to listen on (check their spec.selector and --labels)",
    )
}

/// Opens listeners for new ports (retrying failed binds every tick) and
/// closes those of removed ports; open connections are not touched.
async fn reconcile(ctx: &Arc<Ctx>, running: &mut BTreeMap<u16, tokio::task::JoinHandle<()>>) {
    let ports = ctx.snapshot().ports();
    let stale: Vec<u16> = running
        .keys()
        .filter(|p| !ports.contains(p))
        .copied()
        .collect();
    for p in stale {
        if let Some(t) = running.remove(&p) {
            t.abort();
            info!(target: "weir::gateway", port = p, "listener closed (no longer configured)");
        }
        ctx.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&p);
    }
    let mut all_ok = true;
    for port in ports {
        if running.contains_key(&port) {
            continue;
        }
        let addr = SocketAddr::new(ctx.options.listen_address, port);
        let status = match TcpListener::bind(addr).await {
            Ok(l) => {
                info!(target: "weir::gateway", %addr, "listening");
                running.insert(port, tokio::spawn(accept_loop(ctx.clone(), port, l)));
                ListenerStatus {
                    address: addr,
                    listening: true,
                    error: None,
                }
            }
            Err(e) => {
                all_ok = false;
                let msg = format!("cannot listen on {addr}: {e}");
                let previous = ctx
                    .status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&port)
                    .and_then(|s| s.error.clone());
                if previous.as_deref() != Some(msg.as_str()) {
                    error!(target: "weir::gateway", "{msg} (retrying)");
                }
                ListenerStatus {
                    address: addr,
                    listening: false,
                    error: Some(msg),
                }
            }
        };
        ctx.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(port, status);
    }
    ctx.metrics.set_listeners(running.len());
    // Ready when, at start-up, every port listens and every terminating
    // server has a certificate it can use. Once ready, a port that cannot
    // be bound (taken, privileged) or a server added later without a
    // certificate is reported and retried but does not take the whole
    // gateway (every other server's routes) out of its Service, as Envoy
    // keeps serving the listeners it could build.
    let servable = ctx.snapshot().unservable().is_empty();
    let ready = (all_ok && servable) || ctx.ever_ready.load(Ordering::Acquire);
    if ready {
        ctx.ever_ready.store(true, Ordering::Release);
    }
    ctx.ready.store(ready, Ordering::Release);
}

async fn accept_loop(ctx: Arc<Ctx>, port: u16, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, peer)) => {
                tokio::spawn(handle(ctx.clone(), port, s, peer));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!(target: "weir::gateway", port, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

// ---------------------------------------------------------------- admin

async fn spawn_admin(
    ctx: Arc<Ctx>,
    registry: Arc<Registry>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Error> {
    let bind = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Admin { what, addr, source })
    };
    let o = &ctx.options;
    let admin = bind("admin", o.common.admin_addr).await?;
    let metrics = bind("metrics", o.common.metrics_addr).await?;
    let ready = bind("readiness", o.common.readiness_addr).await?;
    // The bound addresses: with port 0 the kernel picked them.
    let at = |l: &TcpListener, asked: SocketAddr| l.local_addr().unwrap_or(asked);
    info!(target: "weir::gateway", admin = %at(&admin, o.common.admin_addr), metrics = %at(&metrics, o.common.metrics_addr), readiness = %at(&ready, o.common.readiness_addr), "admin endpoints listening");
    let c = ctx.clone();
    let admin = tokio::spawn(weir_node::admin::serve(
        admin,
        Arc::new(move |path: &str| admin_route(&c, path)),
    ));
    let metrics = tokio::spawn(weir_node::admin::serve(
        metrics,
        Arc::new(move |path: &str| match path {
            "/metrics" | "/stats/prometheus" => {
                let mut out = String::new();
                match prometheus_client::encoding::text::encode(&mut out, &registry) {
                    Ok(()) => (StatusCode::OK, OPENMETRICS, out),
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        TEXT,
                        format!("encoding metrics failed: {e}\n"),
                    ),
                }
            }
            _ => (StatusCode::NOT_FOUND, TEXT, "try /metrics\n".to_owned()),
        }),
    ));
    let c = ctx;
    let ready = tokio::spawn(weir_node::admin::serve(
        ready,
        Arc::new(move |path: &str| match path {
            "/healthz/ready" => {
                if c.ready.load(Ordering::Acquire) {
                    (StatusCode::OK, TEXT, "ready\n".to_owned())
                } else {
                    let status = c.status.lock().unwrap_or_else(|p| p.into_inner());
                    let mut waiting: Vec<String> =
                        status.values().filter_map(|s| s.error.clone()).collect();
                    waiting.extend(c.snapshot().unservable());
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        TEXT,
                        format!("not ready\n{}\n", waiting.join("\n")),
                    )
                }
            }
            _ => (
                StatusCode::NOT_FOUND,
                TEXT,
                "try /healthz/ready\n".to_owned(),
            ),
        }),
    ));
    Ok(vec![admin, metrics, ready])
}

fn admin_route(ctx: &Ctx, path: &str) -> Reply {
    match path {
        "/config_dump" => {
            let snap = ctx.snapshot();
            let secs = |t: SystemTime| {
                t.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            };
            let cert = ctx.identity.certificate(&ctx.id).ok().map(|c| {
                serde_json::json!({
                    "identity": c.id.to_string(),
                    "not_before_unix": secs(c.not_before),
                    "not_after_unix": secs(c.not_after),
                    "refresh_at_unix": secs(c.refresh_at()),
                })
            });
            let extensions: BTreeMap<u16, serde_json::Value> = snap
                .extensions
                .iter()
                .map(|(p, e)| {
                    (
                        *p,
                        serde_json::json!({
                            "name": e.listener.name,
                            "tls": e.listener.tls,
                            "error": e.error,
                        }),
                    )
                })
                .collect();
            let dump = serde_json::json!({
                "identity": ctx.id.to_string(),
                "options": ctx.options,
                "ready": ctx.ready.load(Ordering::Acquire),
                "listeners": *ctx.status.lock().unwrap_or_else(|p| p.into_inner()),
                "routes": snap.table,
                "extension_listeners": extensions,
                "problems": snap.problems(),
                "certificate": cert,
                "reload": *ctx.reload.lock().unwrap_or_else(|p| p.into_inner()),
                "active_connections": ctx.drain.open(),
                "config": *snap.config,
            });
            (
                StatusCode::OK,
                JSON,
                serde_json::to_string_pretty(&dump).unwrap_or_default() + "\n",
            )
        }
        "/" => (
            StatusCode::OK,
            TEXT,
            "weir gateway admin: /config_dump\n".to_owned(),
        ),
        _ => (StatusCode::NOT_FOUND, TEXT, "try /config_dump\n".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::selection_warning;

    #[test]
    fn an_instance_nothing_selects_is_warned_about() {
        let w = selection_warning(None, &[]).unwrap();
        assert!(w.starts_with("no Gateway or KafkaGateway selects this instance's labels"));
        assert!(selection_warning(None, &[9094]).is_none());
        // After a change: when the last port goes, not again while none.
        assert!(selection_warning(Some(&[9094]), &[]).is_some());
        assert!(selection_warning(Some(&[]), &[]).is_none());
        assert!(selection_warning(Some(&[]), &[443]).is_none());
    }
}
