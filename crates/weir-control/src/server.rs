//! `weir control`'s lifecycle: CA, config source, the gRPC endpoint, the
//! monitoring endpoint, and shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use weir_core::MeshSettings;
use weir_identity::CertificateAuthority;

use crate::auth::{Authenticator, TokenFile};
use crate::ca::CaService;
use crate::distributor::Distributor;
use crate::grpc::{ControlService, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_CONCURRENT_STREAMS};
use crate::metrics::ControlMetrics;
use crate::source::{ConfigSource, FileSource, SourceEvent};
use crate::tls::ServingCert;
use crate::{control_plane_identity, Error};

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `weir control` is configured with.
#[derive(Debug, Clone, Serialize)]
pub struct ControlOptions {
    /// Config files or directories (local mode).
    pub config_paths: Vec<PathBuf>,
    /// Trust domain and root namespace.
    pub settings: MeshSettings,
    /// The gRPC endpoint (CA and config), default `0.0.0.0:15012`.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz/ready`, `/version`, default `0.0.0.0:15014`.
    pub metrics_addr: SocketAddr,
    /// Where the mesh CA lives when it is not given as files.
    pub state_dir: PathBuf,
    /// `--ca-cert` and `--ca-key`.
    pub ca_files: Option<(PathBuf, PathBuf)>,
    /// The bootstrap tokens of nodes and gateways (local mode).
    pub node_tokens: Option<PathBuf>,
    /// Extra DNS names and IP addresses for the serving certificate.
    pub sans: Vec<String>,
    /// The longest workload certificate lifetime signed (and the default).
    #[serde(with = "secs")]
    pub cert_ttl: Duration,
    /// How often the config files are re-read.
    #[serde(with = "secs")]
    pub reload_interval: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl ControlOptions {
    /// Defaults for everything but the config paths.
    pub fn new(config_paths: Vec<PathBuf>) -> Self {
        Self {
            config_paths,
            settings: MeshSettings::default(),
            listen: ([0, 0, 0, 0], crate::DEFAULT_PORT).into(),
            metrics_addr: ([0, 0, 0, 0], 15014).into(),
            state_dir: PathBuf::from("/var/lib/weir"),
            ca_files: None,
            node_tokens: None,
            sans: Vec::new(),
            cert_ttl: weir_identity::DEFAULT_CERT_TTL,
            reload_interval: Duration::from_secs(1),
        }
    }
}

fn load_ca(o: &ControlOptions) -> Result<CertificateAuthority, Error> {
    Ok(CertificateAuthority::load(
        o.ca_files.as_ref(),
        &o.state_dir,
        o.settings.trust_domain.clone(),
    )?)
}

/// A served TLS connection, with its peer address for tonic.
struct Conn(TlsStream<TcpStream>);

impl Connected for Conn {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Accepts TCP connections and completes their TLS handshakes concurrently
/// (a slow or silent client never blocks the others).
fn spawn_acceptor(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
) -> (
    mpsc::Receiver<Result<Conn, std::io::Error>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let tls = tls.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(Conn(stream))).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    (rx, task)
}

/// Runs the control plane with files as its config source until `shutdown`
/// completes.
pub async fn run(
    options: ControlOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let source = FileSource::new(
        options.config_paths.clone(),
        options.settings.clone(),
        options.reload_interval,
    );
    let tokens = match &options.node_tokens {
        Some(path) => TokenFile::load(path)?,
        None => {
            return Err(Error::Setup(
                "local mode needs --node-tokens: a YAML file mapping each node name to its bootstrap token (see docs/control-plane.md)".to_owned(),
            ))
        }
    };
    if tokens.is_empty() {
        tracing::warn!("the node token file registers no node: no node proxy can connect");
    }
    run_with(options, Box::new(source), Arc::new(tokens), shutdown).await
}

/// Runs the control plane with any config source and authenticator (the
/// seam for cluster mode), listening where `options` say.
pub async fn run_with(
    options: ControlOptions,
    source: Box<dyn ConfigSource>,
    auth: Arc<dyn Authenticator>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|source| Error::Listen {
            what: "the control plane API",
            flag: "listen",
            addr: options.listen,
            source,
        })?;
    let monitoring = TcpListener::bind(options.metrics_addr)
        .await
        .map_err(|source| Error::Listen {
            what: "metrics",
            flag: "metrics-addr",
            addr: options.metrics_addr,
            source,
        })?;
    serve(options, source, auth, listener, monitoring, shutdown).await
}

/// Runs the control plane on listeners already bound (`options.listen` and
/// `options.metrics_addr` are then only reported).
pub async fn serve(
    options: ControlOptions,
    mut source: Box<dyn ConfigSource>,
    auth: Arc<dyn Authenticator>,
    listener: TcpListener,
    monitoring: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let mut registry = Registry::default();
    let metrics = ControlMetrics::register(&mut registry);
    source.register_metrics(&mut registry);

    let what = source.describe();
    let mut skips = SkipReport::default();
    let catalog = match source.next().await {
        Some(SourceEvent::Update { catalog, skipped }) => {
            skips.report(&metrics, &skipped);
            catalog
        }
        Some(SourceEvent::Invalid(errors)) => return Err(Error::Config(errors)),
        None => {
            return Err(Error::Setup(format!(
                "config source {what} ended before yielding a config"
            )))
        }
    };
    let instance = instance_id();
    let distributor = Arc::new(Distributor::new(catalog, instance.clone()));
    metrics.reload(true);
    metrics.state(0, distributor.objects(), distributor.version());

    let ca = Arc::new(load_ca(&options)?);
    let control_id = control_plane_identity(&options.settings)
        .map_err(|e| Error::Setup(format!("control plane identity: {e}")))?;
    let serving = Arc::new(ServingCert::issue(
        ca.clone(),
        control_id.clone(),
        &options.sans,
        options.cert_ttl,
    )?);
    let server_tls = serving.server_config()?;
    let renewal = serving.clone().spawn_renewal();

    let listen = listener.local_addr().unwrap_or(options.listen);
    let monitoring_addr = monitoring.local_addr().unwrap_or(options.metrics_addr);
    let registry = Arc::new(registry);
    let monitoring_task = tokio::spawn(crate::http::serve(
        monitoring,
        registry.clone(),
        distributor.clone(),
    ));

    let service = ControlService::new(
        auth,
        CaService::new(ca, options.cert_ttl, distributor.clone(), metrics.clone()),
        distributor.clone(),
        metrics.clone(),
    );
    let (incoming, acceptor) =
        spawn_acceptor(listener, tokio_rustls::TlsAcceptor::from(server_tls));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
            .serve_with_incoming_shutdown(
                service,
                tokio_stream::wrappers::ReceiverStream::new(incoming),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );
    tracing::info!(
        %listen,
        metrics = %monitoring_addr,
        identity = %control_id,
        source = %what,
        objects = distributor.objects(),
        instance = %instance,
        "control plane serving"
    );

    let watch = {
        let distributor = distributor.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            while let Some(event) = source.next().await {
                match event {
                    SourceEvent::Update { catalog, skipped } => {
                        skips.report(&metrics, &skipped);
                        let objects = catalog.entries.len();
                        let stats = distributor.replace(catalog);
                        metrics.reload(true);
                        metrics.pushed(stats.messages, stats.bytes);
                        metrics.state(distributor.subscribers(), objects, stats.version);
                        tracing::info!(
                            version = stats.version,
                            objects,
                            changed = stats.changed,
                            pushed = stats.messages,
                            bytes = stats.bytes,
                            "config changed; deltas pushed"
                        );
                    }
                    SourceEvent::Invalid(errors) => {
                        metrics.reload(false);
                        tracing::error!(
                            errors = errors.0.len(),
                            "config change refused; still serving the last good config"
                        );
                        for e in &errors.0 {
                            tracing::error!("config: {e}");
                        }
                    }
                }
            }
            tracing::warn!("config source ended; serving the last config");
        })
    };
    let gauges = {
        let distributor = distributor.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                metrics.state(
                    distributor.subscribers(),
                    distributor.objects(),
                    distributor.version(),
                );
            }
        })
    };

    tokio::pin!(server);
    tokio::select! {
        _ = shutdown => {}
        result = &mut server => {
            watch.abort();
            gauges.abort();
            acceptor.abort();
            monitoring_task.abort();
            renewal.abort();
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::Setup(format!("gRPC server failed: {e}"))),
                Err(e) => Err(Error::Setup(format!("gRPC server task failed: {e}"))),
            };
        }
    }
    tracing::info!("shutting down: closing config streams");
    watch.abort();
    gauges.abort();
    acceptor.abort();
    // Streams end when their subscriptions go: drop them all, then stop.
    distributor.disconnect_all();
    let _ = stop_tx.send(());
    if tokio::time::timeout(Duration::from_secs(5), &mut server)
        .await
        .is_err()
    {
        tracing::warn!("gRPC connections did not close within 5s");
    }
    monitoring_task.abort();
    renewal.abort();
    tracing::info!("control plane stopped");
    Ok(())
}

/// Reports the documents a skipping source left out. A source yields its
/// whole state on every change, so a document that stays invalid comes
/// back with every later update (every Pod change in cluster mode): it is
/// logged and counted once, when it appears, and again only if it is fixed
/// and breaks anew.
#[derive(Debug, Default)]
struct SkipReport {
    last: std::collections::BTreeSet<String>,
}

impl SkipReport {
    /// Logs and counts the errors in `skipped` that were not in the last
    /// update; returns how many that was.
    fn report(&mut self, metrics: &ControlMetrics, skipped: &[weir_core::ConfigError]) -> usize {
        let now: std::collections::BTreeSet<String> =
            skipped.iter().map(ToString::to_string).collect();
        let new: Vec<&String> = now.difference(&self.last).collect();
        metrics.invalid_documents(new.len());
        for e in &new {
            tracing::warn!("config: invalid document left out, the rest is served: {e}");
        }
        let n = new.len();
        self.last = now;
        n
    }
}

/// A random id for this control-plane instance.
fn instance_id() -> String {
    let mut bytes = [0u8; 6];
    use ring::rand::SecureRandom;
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes.copy_from_slice(&nanos.to_le_bytes()[..6]);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("weir-control-{hex}")
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
    use weir_core::ConfigError;

    use crate::catalog::Catalog;

    use super::*;

    fn error(file: &str, message: &str) -> ConfigError {
        ConfigError {
            document: None,
            file: file.to_owned(),
            field: Some("spec.action".to_owned()),
            message: message.to_owned(),
        }
    }

    fn counted(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out.lines()
            .find(|l| l.starts_with("weir_control_invalid_documents_total "))
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_document_that_stays_invalid_is_reported_once() {
        let mut registry = Registry::default();
        let metrics = ControlMetrics::register(&mut registry);
        let mut skips = SkipReport::default();
        let bad = error(
            "kubernetes:AuthorizationPolicy.security.istio.io/data/bad",
            "CUSTOM",
        );
        assert_eq!(skips.report(&metrics, std::slice::from_ref(&bad)), 1);
        // The next updates (say, Pods coming and going) still carry it.
        for _ in 0..5 {
            assert_eq!(skips.report(&metrics, std::slice::from_ref(&bad)), 0);
        }
        assert_eq!(counted(&registry), "weir_control_invalid_documents_total 1");
        // A second one appears: only it is new.
        let other = error(
            "kubernetes:PeerAuthentication.security.istio.io/data/p",
            "mode",
        );
        assert_eq!(skips.report(&metrics, &[bad.clone(), other.clone()]), 1);
        // Fixed, then broken again: reported again.
        assert_eq!(skips.report(&metrics, std::slice::from_ref(&other)), 0);
        assert_eq!(skips.report(&metrics, &[bad, other]), 1);
        assert_eq!(counted(&registry), "weir_control_invalid_documents_total 3");
    }

    /// A source driven by the test.
    struct Scripted(mpsc::UnboundedReceiver<SourceEvent>);

    impl ConfigSource for Scripted {
        fn next(&mut self) -> crate::source::SourceFuture<'_> {
            Box::pin(self.0.recv())
        }

        fn describe(&self) -> String {
            "scripted".to_owned()
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_control_plane_counts_a_left_out_document_once() {
        use weir_core::config::SourceFile;
        let dir = std::env::temp_dir().join(format!("weir-control-skips-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut options = ControlOptions::new(Vec::new());
        options.state_dir = dir.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let monitoring = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = monitoring.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            options,
            Box::new(Scripted(rx)),
            Arc::new(TokenFile::parse("nodes: {}").unwrap()),
            listener,
            monitoring,
            async {
                let _ = stopped.await;
            },
        ));
        let workload = |ip: &str| {
            SourceFile::new(
                "kubernetes:Pod/apps/a",
                format!("apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {{name: a, namespace: apps}}\nspec: {{address: {ip}, node: n1}}\n"),
            )
        };
        let bad = error(
            "kubernetes:AuthorizationPolicy.security.istio.io/data/bad",
            "CUSTOM",
        );
        // The first state, then Pod changes that still leave `bad` out.
        for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"] {
            tx.send(SourceEvent::Update {
                catalog: Catalog::load(&[workload(ip)], MeshSettings::default()).unwrap(),
                skipped: vec![bad.clone()],
            })
            .unwrap();
        }
        let mut text = String::new();
        for _ in 0..100 {
            text = get(metrics_addr, "/metrics").await;
            if text.contains("weir_config_reloads_total{result=\"success\"} 4") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            text.contains("weir_config_reloads_total{result=\"success\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("\nweir_control_invalid_documents_total 1\n"),
            "{text}"
        );
        let _ = stop.send(());
        task.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
