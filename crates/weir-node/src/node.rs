//! The node proxy's lifecycle: load config and identity, serve the local
//! workloads, reload on change (refusing invalid config), drain on shutdown.

use std::collections::{BTreeMap, HashMap};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use tracing::{error, info, warn};
use weir_core::config::{read_sources, ConfigFiles, Reload, ReloadStatus};
use weir_core::{Config, MeshSettings};
use weir_identity::IdentityManager;

use crate::access::PeerIndex;
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::options::ProxyOptions;
use crate::proxy::WorkloadProxy;
use crate::{admin, Error};

/// Everything `weir node` is configured with (dumped by `/config_dump`).
#[derive(Debug, Clone, Serialize)]
pub struct NodeOptions {
    /// The node this proxy serves: Workloads with `spec.node` equal to it.
    pub node: String,
    #[serde(flatten)]
    pub common: ProxyOptions,
    /// Install iptables capture rules (off only for tests of the listeners).
    pub capture: bool,
    /// Connect to the app from the client's address, as ztunnel does
    /// (needs `capture`; see `capture::rules`). Off: from the pod's own.
    pub preserve_source_ip: bool,
    /// The host's `/proc`: where the network namespace of a Workload made
    /// from a Pod (annotation `weir.dev/pod-uid`) is found. `/proc` unless
    /// the proxy runs in a container with the host's mounted elsewhere.
    pub proc_root: PathBuf,
    /// The control plane config and certificates come from (`--control`),
    /// instead of `config_paths` and a local CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
}

impl NodeOptions {
    pub fn new(node: impl Into<String>, config_paths: Vec<PathBuf>) -> Self {
        Self {
            node: node.into(),
            common: ProxyOptions::new(config_paths),
            capture: true,
            preserve_source_ip: true,
            proc_root: PathBuf::from("/proc"),
            control: None,
        }
    }
}

/// Where the node's config and certificates come from, when not from
/// `config_paths` and the local CA (the control plane's client provides them).
#[derive(Default)]
pub struct NodeSources {
    /// The metrics registry; the node registers its own metrics in it, next
    /// to whatever the caller registered (e.g. the control-plane client's).
    pub registry: prometheus_client::registry::Registry,
    /// Certificates from elsewhere (a manager signing through the control
    /// plane); `None`: the local CA of `state_dir`/`ca_files`. The caller
    /// registers its `TlsMetrics`.
    pub identity: Option<Arc<IdentityManager>>,
    /// Config snapshots pushed to the node (`None` inside until the first
    /// arrives); `None`: read `config_paths`. The last value stays in force
    /// while no newer one comes (fail-static).
    pub config: Option<tokio::sync::watch::Receiver<Option<Arc<Config>>>>,
}

impl std::fmt::Debug for NodeSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSources")
            .field("identity", &self.identity)
            .field("pushed_config", &self.config.is_some())
            .finish_non_exhaustive()
    }
}

/// The current config and its peer index; replaced whole on a valid reload.
pub(crate) struct ConfigStore {
    current: RwLock<(Arc<Config>, Arc<PeerIndex>)>,
    /// Told of every replacement, so that open inbound connections are
    /// checked against the new policies.
    changes: tokio::sync::watch::Sender<()>,
}

impl ConfigStore {
    pub(crate) fn new(c: Arc<Config>) -> Self {
        let peers = Arc::new(PeerIndex::build(&c));
        Self {
            current: RwLock::new((c, peers)),
            changes: tokio::sync::watch::channel(()).0,
        }
    }

    /// A receiver that is woken by every later replacement.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.changes.subscribe()
    }

    pub fn current(&self) -> Arc<Config> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    pub fn peers(&self) -> Arc<PeerIndex> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    fn replace(&self, c: Arc<Config>) {
        let peers = Arc::new(PeerIndex::build(&c));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (c, peers);
        self.changes.send_replace(());
    }
}

/// Status of one local workload, for readiness and `/config_dump`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WorkloadStatus {
    pub identity: String,
    pub address: std::net::IpAddr,
    pub netns: String,
    pub serving: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What every connection handler shares.
pub(crate) struct Ctx {
    pub options: NodeOptions,
    pub settings: MeshSettings,
    pub store: ConfigStore,
    pub identity: Arc<IdentityManager>,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    pub ready: AtomicBool,
    pub status: Mutex<BTreeMap<String, WorkloadStatus>>,
    pub reload: Mutex<ReloadStatus>,
}

/// Runs the node proxy until `shutdown` completes, then drains and removes
/// every capture rule it installed. Config from `config_paths`, certificates
/// from the local CA.
pub async fn run(
    options: NodeOptions,
    shutdown: impl std::future::Future<Output = ()>,
    reload_now: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), Error> {
    run_with(options, NodeSources::default(), shutdown, reload_now).await
}

/// [`run`] with config and certificates from `sources` (the control plane).
pub async fn run_with(
    options: NodeOptions,
    sources: NodeSources,
    shutdown: impl std::future::Future<Output = ()>,
    mut reload_now: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), Error> {
    let NodeSources {
        mut registry,
        identity,
        config: mut pushed,
    } = sources;
    let (initial, last_sources) = match &mut pushed {
        None => {
            let sources = read_sources(&options.common.config_paths)
                .map_err(|e| weir_core::ConfigErrors(vec![*e]))?;
            let config = Arc::new(Config::from_sources(
                &sources,
                options.common.settings.clone(),
            )?);
            (Some(config), sources)
        }
        Some(rx) => (rx.borrow_and_update().clone(), Vec::new()),
    };
    let config = initial.clone().unwrap_or_else(|| {
        let mut empty = Config::default();
        empty.settings = options.common.settings.clone();
        Arc::new(empty)
    });
    for w in &config.warnings {
        warn!("config: {w}");
    }

    let metrics = Arc::new(Metrics::register(&mut registry));
    let identity = match identity {
        Some(identity) => identity,
        None => options.common.local_identity(&mut registry)?,
    };
    let _rotation = identity.clone().spawn_rotation();

    let ctx = Arc::new(Ctx {
        settings: options.common.settings.clone(),
        options: options.clone(),
        store: ConfigStore::new(config.clone()),
        identity,
        metrics,
        drain: Drain::default(),
        ready: AtomicBool::new(false),
        status: Mutex::new(BTreeMap::new()),
        reload: Mutex::new(ReloadStatus::default()),
    });
    let registry = Arc::new(registry);
    let admin_tasks = admin::spawn(ctx.clone(), registry).await?;

    let mut synced = initial.is_some();
    match &options.control {
        Some(control) if !synced => {
            info!(node = %options.node, control_plane = %control, "node proxy starting; waiting for config from the control plane")
        }
        _ => {
            let serving = config.workloads_on_node(&options.node).count();
            info!(node = %options.node, workloads = serving, "node proxy starting");
            if serving == 0 {
                warn_no_workloads(&config, &options.node);
            }
        }
    }
    let mut proxies: HashMap<(String, String), WorkloadProxy> = HashMap::new();
    if synced {
        reconcile(&ctx, &mut proxies, &config).await;
    }

    let mut files = ConfigFiles::new(
        options.common.config_paths.clone(),
        options.common.settings.clone(),
        last_sources,
    );
    let mut tick = tokio::time::interval(options.common.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let pushed_changed = async {
            match pushed.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let forced = tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => false,
            Some(()) = reload_now.recv() => true,
            alive = pushed_changed => {
                if alive {
                    let latest = pushed.as_mut().and_then(|rx| rx.borrow_and_update().clone());
                    if let Some(c) = latest {
                        for w in &c.warnings {
                            warn!("config: {w}");
                        }
                        ctx.metrics.reload(true);
                        ctx.reload.lock().unwrap_or_else(|p| p.into_inner()).loaded();
                        ctx.store.replace(c);
                        synced = true;
                    }
                } else {
                    warn!("the control-plane client stopped; keeping the last config");
                    pushed = None;
                }
                false
            }
        };
        if pushed.is_none() && options.control.is_none() {
            let reload = files.reload(forced, &ctx.reload);
            if let Some(ok) = reload.outcome() {
                ctx.metrics.reload(ok);
            }
            if let Reload::Loaded(new) = reload {
                ctx.store.replace(Arc::from(new));
            }
        }
        if synced {
            let current = ctx.store.current();
            reconcile(&ctx, &mut proxies, &current).await;
        }
    }

    info!(open = ctx.drain.open(), drain_timeout = ?options.common.drain_timeout, "shutting down: no new connections; draining");
    ctx.ready.store(false, Ordering::Release);
    for p in proxies.values() {
        p.stop_accepting();
    }
    let left = ctx.drain.wait(options.common.drain_timeout).await;
    if left > 0 {
        warn!(
            open = left,
            "drain deadline passed; closing the remaining connections"
        );
    }
    for (_, p) in proxies.drain() {
        p.stop().await;
    }
    for t in admin_tasks {
        t.abort();
    }
    info!("node proxy stopped");
    Ok(())
}

/// Makes the running workload proxies match the config: starts new ones
/// (retrying failed ones on every tick), stops removed or moved ones.
async fn reconcile(
    ctx: &Arc<Ctx>,
    proxies: &mut HashMap<(String, String), WorkloadProxy>,
    config: &Config,
) {
    let desired: HashMap<(String, String), &weir_core::config::Workload> = config
        .workloads_on_node(&ctx.options.node)
        .map(|w| ((w.namespace().to_owned(), w.name().to_owned()), w))
        .collect();
    let stale: Vec<(String, String)> = proxies
        .iter()
        .filter(|(k, p)| {
            desired.get(*k).is_none_or(|w| {
                w.address != p.workload.address
                    || w.netns != p.workload.netns
                    // A Pod re-created under the same name (a StatefulSet's)
                    // has a new UID and a new network namespace.
                    || w.pod_uid() != p.workload.pod_uid()
                    || w.service_account != p.workload.service_account
            })
        })
        .map(|(k, _)| k.clone())
        .collect();
    for k in stale {
        if let Some(p) = proxies.remove(&k) {
            p.stop().await;
        }
        ctx.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&format!("{}/{}", k.0, k.1));
    }
    // Certificates of workloads no longer here are not renewed (the control
    // plane would refuse them now).
    let identities: std::collections::HashSet<weir_core::SpiffeId> = desired
        .values()
        .map(|w| w.identity(&ctx.settings.trust_domain))
        .collect();
    ctx.identity.retain(|id| identities.contains(id));
    let mut all_ok = true;
    for (k, w) in &desired {
        if proxies.contains_key(k) {
            continue;
        }
        let key = format!("{}/{}", k.0, k.1);
        let mut status = WorkloadStatus {
            identity: w.identity(&ctx.settings.trust_domain).to_string(),
            address: w.address,
            netns: w.netns.clone(),
            serving: false,
            error: None,
        };
        let started = match ctx
            .identity
            .prepare(&w.identity(&ctx.settings.trust_domain))
            .await
        {
            Ok(_) => WorkloadProxy::start(ctx.clone(), (*w).clone()).await,
            Err(e) => Err(Error::Identity(e)),
        };
        match started {
            Ok(p) => {
                proxies.insert(k.clone(), p);
                status.serving = true;
            }
            Err(e) => {
                all_ok = false;
                let msg = e.to_string();
                let previous = ctx
                    .status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&key)
                    .and_then(|s| s.error.clone());
                if previous.as_deref() != Some(msg.as_str()) {
                    error!(workload = %key, "cannot serve workload (retrying): {msg}");
                }
                status.error = Some(msg);
            }
        }
        ctx.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, status);
    }
    ctx.metrics.set_workloads(proxies.len());
    ctx.ready.store(all_ok, Ordering::Release);
}

/// A node proxy that serves no Workload is most likely started with the
/// wrong --node (or the config names another): say so, with the nodes the
/// config does name, as `weir gateway` warns when nothing selects it.
fn warn_no_workloads(config: &Config, node: &str) {
    let nodes: std::collections::BTreeSet<&str> =
        config.workloads.iter().map(|w| w.node.as_str()).collect();
    let named = if nodes.is_empty() {
        "none: the config has no Workloads".to_owned()
    } else {
        nodes.into_iter().collect::<Vec<_>>().join(", ")
    };
    tracing::warn!(node, "no Workload has spec.node {node:?}: this node proxy serves nothing until one does (nodes in the config: {named})");
}
