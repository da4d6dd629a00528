//! One connection's life at the gateway: read the ClientHello (TLS
//! listeners), pick the server by SNI, then either route the raw TLS bytes
//! (PASSTHROUGH), or terminate TLS and route the plaintext (SIMPLE, MUTUAL,
//! ISTIO_MUTUAL), or hand it to a protocol handler (extension listeners such
//! as the Kafka gateway); TCP listeners route by port.
//!
//! A connection that cannot be routed is closed, logged once (target
//! `weir::gateway`) and counted in `weir_gateway_connection_errors_total`
//! with its reason; nothing one client sends affects another connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{info, warn};
use weir_core::kafka::Principal;
use weir_core::Config;
use weir_hbone::{BoxFuture, ReadAhead};
use weir_identity::{Direction, FailureReason};

use crate::gateway::{Ctx, Snapshot};
use crate::io::Counted;
use crate::metrics::{istio_labels, Metrics, RouteCounters};
use crate::principal::principal_of;
use crate::routes::{self, ListenerKind, Route};
use crate::sni::read_client_hello;
use crate::tls::san_allowed;
use crate::upstream::{pick_destination, Upstreams};
use weir_core::config::ServerTls;

/// The TLS stream of a terminated connection (the peeked ClientHello is
/// replayed into the acceptor, so nothing the client sent is lost).
pub type TerminatedStream = tokio_rustls::server::TlsStream<ReadAhead<TcpStream>>;

/// A connection whose TLS the gateway terminated, handed to a
/// [`TerminatedHandler`].
pub struct TerminatedConnection {
    /// The decrypted stream to the client.
    pub stream: TerminatedStream,
    /// Who the client is, from its certificate.
    pub principal: Principal,
    /// The SNI host name the client asked for (broker routing uses it).
    pub sni: Option<String>,
    pub peer: SocketAddr,
    /// The listener port.
    pub port: u16,
    /// The config snapshot current when the connection arrived.
    pub config: Arc<Config>,
    /// Connects to destinations (over HBONE to mesh Workloads) with the
    /// gateway's identity.
    pub upstreams: Arc<Upstreams>,
    /// The gateway's metrics (count handler-level failures with
    /// [`Metrics::error`]).
    pub metrics: Arc<Metrics>,
    /// The `route` label of the listener's connections (its name).
    pub route: String,
    /// The `mode` label (the listener's TLS mode).
    pub mode: &'static str,
}

impl TerminatedConnection {
    /// For a handler that [counts routing](TerminatedHandler::counts_routing):
    /// counts the connection in `weir_gateway_connections_total` once it
    /// reached its upstream, and returns its byte counters.
    pub fn routed(&self) -> RouteCounters {
        self.metrics.connection(self.port, &self.route, self.mode)
    }
}

impl std::fmt::Debug for TerminatedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminatedConnection")
            .field("principal", &self.principal)
            .field("sni", &self.sni)
            .field("peer", &self.peer)
            .field("port", &self.port)
            .finish()
    }
}

/// Serves terminated connections of an extension listener (e.g. a Kafka
/// session). The future runs in the connection's own task, which the
/// gateway counts for draining; it should end when the client or the
/// upstream closes.
pub trait TerminatedHandler: Send + Sync + 'static {
    fn handle(&self, conn: TerminatedConnection) -> BoxFuture<'static, ()>;

    /// Whether the handler counts its connections itself: each exactly once,
    /// in `weir_gateway_connections_total` ([`TerminatedConnection::routed`])
    /// when it reached its upstream, or in
    /// `weir_gateway_connection_errors_total` (`metrics.error`) when it gave
    /// up before. Otherwise (the default) the gateway counts every handed
    /// connection as routed when it hands it over.
    fn counts_routing(&self) -> bool {
        false
    }
}

/// A listener that terminates TLS and hands connections to a handler.
#[derive(Clone)]
pub struct TerminatedListener {
    /// Shown in logs, `/config_dump` and the `route` metric label
    /// (e.g. `kafka:kafka/external` for a KafkaGateway).
    pub name: String,
    /// The resource it comes from, for messages about it (e.g. `KafkaGateway
    /// kafka/external`).
    pub source: String,
    pub port: u16,
    /// How TLS is terminated: SIMPLE, MUTUAL (client certificates from a
    /// CA file) or ISTIO_MUTUAL (mesh clients). PASSTHROUGH is refused.
    pub tls: ServerTls,
    pub handler: Arc<dyn TerminatedHandler>,
}

impl std::fmt::Debug for TerminatedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminatedListener")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The extension point for protocol-aware listeners: asked for its
/// listeners at start-up and after every valid config change, with this
/// gateway instance's labels (to match a kind's selector the way Istio
/// matches `Gateway.spec.selector`). A port it returns is its own: Gateway
/// servers on that port are ignored on this instance, and the conflict is
/// reported (ERROR log, `/config_dump` `problems`).
pub trait TerminatedListeners: Send + Sync + std::fmt::Debug + 'static {
    /// Registers the extension's own metrics in the gateway's registry
    /// (served on `/metrics`); called once, before the first `listeners`.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}

    fn listeners(
        &self,
        config: &Config,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Vec<TerminatedListener>;
}

/// A fatal TLS alert `unrecognized_name` (RFC 6066), sent to a client whose
/// SNI the gateway does not serve, so it fails with a clear message.
const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [21, 3, 3, 0, 2, 2, 112];

/// Facts about a connection for its log lines.
struct ConnInfo {
    port: u16,
    peer: SocketAddr,
    sni: Option<String>,
    start: Instant,
}

/// At most this many "connection refused" warnings per second: refusals
/// are caused by unauthenticated clients, who must not be able to flood the
/// log. The rest are logged at debug level and counted (`suppressed`) in
/// the next warning; every refusal is counted in the metrics.
const REFUSAL_WARNINGS_PER_SECOND: u64 = 10;

/// A per-second budget of log lines.
struct LogBudget {
    second: std::sync::atomic::AtomicU64,
    used: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl LogBudget {
    const fn new() -> Self {
        use std::sync::atomic::AtomicU64;
        LogBudget {
            second: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one)` when a line may be
    /// written in second `now`, else `None` (and the line is counted).
    fn take(&self, now: u64, per_second: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let current = self.second.load(Relaxed);
        if current != now
            && self
                .second
                .compare_exchange(current, now, Relaxed, Relaxed)
                .is_ok()
        {
            self.used.store(0, Relaxed);
        }
        if self.used.fetch_add(1, Relaxed) < per_second {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

static REFUSAL_LOG: LogBudget = LogBudget::new();

impl ConnInfo {
    /// Logs and counts a connection closed without being routed.
    fn refuse(&self, metrics: &Metrics, reason: &str, error: &dyn std::fmt::Display) {
        metrics.error(self.port, reason);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let sni = self.sni.as_deref().unwrap_or("-");
        match REFUSAL_LOG.take(now, REFUSAL_WARNINGS_PER_SECOND) {
            Some(suppressed) => warn!(
                target: "weir::gateway",
                listener = self.port,
                peer = %self.peer,
                sni,
                reason,
                error = %error,
                suppressed,
                "connection refused"
            ),
            None => tracing::debug!(
                target: "weir::gateway",
                listener = self.port,
                peer = %self.peer,
                sni,
                reason,
                error = %error,
                "connection refused"
            ),
        }
    }
}

/// Closes with a TCP reset so the client sees a failed connection.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
}

pub(crate) async fn handle(ctx: Arc<Ctx>, port: u16, mut stream: TcpStream, peer: SocketAddr) {
    let _guard = ctx.drain.guard();
    let _active = ctx.metrics.active();
    let snap = ctx.snapshot();
    let _ = stream.set_nodelay(true);
    let mut info = ConnInfo {
        port,
        peer,
        sni: None,
        start: Instant::now(),
    };
    let kind = match (snap.extensions.get(&port), snap.table.listeners.get(&port)) {
        (_, Some(l)) => l.kind,
        (Some(_), None) => ListenerKind::Tls,
        (None, None) => {
            info.refuse(
                &ctx.metrics,
                "no_listener",
                &"the listener was removed by a config change",
            );
            reset(&stream);
            return;
        }
    };
    if kind == ListenerKind::Tcp {
        let Some(server) = snap.table.server(port, None) else {
            info.refuse(&ctx.metrics, "no_route", &"the TCP listener has no server");
            reset(&stream);
            return;
        };
        let Some(route) = routes::route(server, port, None) else {
            info.refuse(
                &ctx.metrics,
                "no_route",
                &"no VirtualService tcp route for this port",
            );
            reset(&stream);
            return;
        };
        let mode = server.mode_label();
        proxy(&ctx, &snap, &info, route, mode, stream, Bytes::new()).await;
        return;
    }

    let mut buf = BytesMut::new();
    let hello =
        match read_client_hello(&mut stream, &mut buf, ctx.options.client_hello_timeout).await {
            Ok(h) => h,
            Err(e) => {
                info.refuse(&ctx.metrics, e.metric_label(), &e);
                reset(&stream);
                return;
            }
        };
    info.sni = hello.sni.clone();
    let sni = hello.sni.as_deref();

    if !snap.table.listeners.contains_key(&port) {
        if let Some(ext) = snap.extensions.get(&port) {
            let Some(tls) = ext.config.clone() else {
                info.refuse(
                    &ctx.metrics,
                    "tls_config",
                    &ext.error.as_deref().unwrap_or("no TLS config"),
                );
                reset(&stream);
                return;
            };
            let Some((tls_stream, principal)) =
                terminate(&ctx, &info, tls, &ext.listener.tls, buf.freeze(), stream).await
            else {
                return;
            };
            let mode = ext.listener.tls.mode.as_str();
            if !ext.listener.handler.counts_routing() {
                let _ = ctx.metrics.connection(port, &ext.listener.name, mode);
            }
            info!(target: "weir::gateway", listener = port, peer = %peer, sni = sni.unwrap_or("-"), principal = %principal, handler = %ext.listener.name, "connection handed to protocol handler");
            ext.listener
                .handler
                .handle(TerminatedConnection {
                    stream: tls_stream,
                    principal,
                    sni: info.sni.clone(),
                    peer,
                    port,
                    config: snap.config.clone(),
                    upstreams: ctx.upstreams.clone(),
                    metrics: ctx.metrics.clone(),
                    route: ext.listener.name.clone(),
                    mode,
                })
                .await;
            return;
        }
    }

    let Some(server) = snap.table.server(port, sni) else {
        info.refuse(
            &ctx.metrics,
            "unknown_sni",
            &format!(
                "no Gateway server on port {port} has a host matching SNI {}",
                sni.unwrap_or("(none)")
            ),
        );
        let _ = stream.write_all(&ALERT_UNRECOGNIZED_NAME).await;
        return;
    };
    let mode = server.mode_label();
    let route = routes::route(server, port, sni);
    match server.terminating_tls() {
        None => {
            let Some(route) = route else {
                info.refuse(
                    &ctx.metrics,
                    "unknown_sni",
                    &format!(
                        "no VirtualService tls route bound to Gateway {} matches SNI {}",
                        server.gateway,
                        sni.unwrap_or("(none)")
                    ),
                );
                let _ = stream.write_all(&ALERT_UNRECOGNIZED_NAME).await;
                return;
            };
            proxy(&ctx, &snap, &info, route, mode, stream, buf.freeze()).await;
        }
        Some(tls) => {
            let Some(route) = route else {
                info.refuse(
                    &ctx.metrics,
                    "unknown_sni",
                    &format!(
                        "no VirtualService tls or tcp route bound to Gateway {} matches SNI {}",
                        server.gateway,
                        sni.unwrap_or("(none)")
                    ),
                );
                let _ = stream.write_all(&ALERT_UNRECOGNIZED_NAME).await;
                return;
            };
            let config = match snap.tls.get(&(server.gateway.clone(), server.index)) {
                Some(t) => t.config.clone(),
                None => None,
            };
            let Some(config) = config else {
                let why = snap
                    .tls
                    .get(&(server.gateway.clone(), server.index))
                    .and_then(|t| t.error.clone())
                    .unwrap_or_else(|| "no TLS config".to_owned());
                info.refuse(&ctx.metrics, "tls_config", &why);
                reset(&stream);
                return;
            };
            let Some((tls_stream, principal)) =
                terminate(&ctx, &info, config, tls, buf.freeze(), stream).await
            else {
                return;
            };
            proxy_terminated(&ctx, &snap, &info, route, mode, tls_stream, principal).await;
        }
    }
}

/// Completes the TLS handshake (bounded by the ClientHello timeout) and
/// checks the client certificate's SANs; refusals are counted here.
async fn terminate(
    ctx: &Ctx,
    info: &ConnInfo,
    config: Arc<rustls::ServerConfig>,
    tls: &ServerTls,
    hello: Bytes,
    stream: TcpStream,
) -> Option<(TerminatedStream, Principal)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let accept = Box::pin(acceptor.accept(ReadAhead::with_prefix(hello, stream)));
    let mut tls_stream = match tokio::time::timeout(ctx.options.client_hello_timeout, accept).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let rustls_error = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
            let reason = match rustls_error {
                Some(rustls::Error::NoCertificatesPresented) => {
                    if tls.mode == weir_core::config::TlsMode::IstioMutual {
                        ctx.identity
                            .metrics()
                            .record(Direction::Inbound, FailureReason::NoCertificate);
                    }
                    "no_client_certificate"
                }
                Some(rustls::Error::InvalidCertificate(_)) => "bad_client_certificate",
                Some(rustls::Error::AlertReceived(_)) => "tls_peer_alert",
                _ => "tls_handshake",
            };
            info.refuse(&ctx.metrics, reason, &e);
            return None;
        }
        Err(_) => {
            info.refuse(
                &ctx.metrics,
                "tls_handshake",
                &format!(
                    "handshake not done within {:?}",
                    ctx.options.client_hello_timeout
                ),
            );
            return None;
        }
    };
    tls_stream
        .get_mut()
        .1
        .set_buffer_limit(Some(weir_hbone::TLS_WRITE_BUFFER));
    let certs = tls_stream.get_ref().1.peer_certificates();
    // A SPIFFE id is believed from the mesh CA only: ISTIO_MUTUAL verified
    // the chain to it; a MUTUAL server's own CAs may sign anything.
    let principal = principal_of(certs, || {
        tls.mode == weir_core::config::TlsMode::IstioMutual
            || certs.is_some_and(|c| {
                weir_identity::verify::issued_by_mesh(
                    ctx.identity.root_cert_der(),
                    ctx.identity.trust_domain(),
                    c,
                )
            })
    });
    if tls.mode == weir_core::config::TlsMode::Mutual
        && !san_allowed(&principal, &tls.subject_alt_names)
    {
        info.refuse(
            &ctx.metrics,
            "client_certificate_san",
            &format!(
                "client {principal} has none of the subjectAltNames {:?}",
                tls.subject_alt_names
            ),
        );
        let mut s = tls_stream;
        let _ = s.shutdown().await;
        return None;
    }
    Some((tls_stream, principal))
}

/// Connects the route's destination, replays `prefix` (the ClientHello of a
/// passthrough connection) and forwards both ways.
async fn proxy(
    ctx: &Ctx,
    snap: &Snapshot,
    info: &ConnInfo,
    route: Route,
    mode: &'static str,
    client: TcpStream,
    prefix: Bytes,
) {
    let Some(dest) = pick_destination(&route.route) else {
        info.refuse(
            &ctx.metrics,
            "no_endpoints",
            &"the route has no destination",
        );
        reset(&client);
        return;
    };
    let upstream = match ctx
        .upstreams
        .connect(
            &snap.config,
            &dest.destination,
            &route.namespace,
            Some(info.port),
        )
        .await
    {
        Ok(u) => u,
        Err(e) => {
            info.refuse(&ctx.metrics, e.metric_label(), &e);
            reset(&client);
            return;
        }
    };
    let counters = ctx.metrics.connection(info.port, &route.name, mode);
    let istio = ctx
        .metrics
        .istio_open(&istio_labels(&snap.config, &ctx.id, &upstream));
    let (endpoint, mesh) = (upstream.endpoint.to_string(), upstream.is_mesh());
    let mut up = upstream.stream;
    if !prefix.is_empty() {
        if let Err(e) = up.write_all(&prefix).await {
            istio.close(0, 0);
            info.refuse(&ctx.metrics, "upstream_write", &e);
            reset(&client);
            return;
        }
        counters.received.inc_by(prefix.len() as u64);
    }
    let t = weir_node::forward::forward(client, up, &counters.received, &counters.sent).await;
    istio.close(t.received + prefix.len() as u64, t.sent);
    info!(
        target: "weir::gateway",
        listener = info.port,
        peer = %info.peer,
        sni = info.sni.as_deref().unwrap_or("-"),
        route = %route.name,
        mode,
        upstream = %endpoint,
        mesh,
        received = t.received + prefix.len() as u64,
        sent = t.sent,
        duration_ms = info.start.elapsed().as_millis() as u64,
        error = t.error.as_ref().map(ToString::to_string).unwrap_or_default(),
        "connection closed"
    );
}

/// Routes a terminated connection's plaintext.
async fn proxy_terminated(
    ctx: &Ctx,
    snap: &Snapshot,
    info: &ConnInfo,
    route: Route,
    mode: &'static str,
    client: TerminatedStream,
    principal: Principal,
) {
    let Some(dest) = pick_destination(&route.route) else {
        info.refuse(
            &ctx.metrics,
            "no_endpoints",
            &"the route has no destination",
        );
        return;
    };
    let upstream = match ctx
        .upstreams
        .connect(
            &snap.config,
            &dest.destination,
            &route.namespace,
            Some(info.port),
        )
        .await
    {
        Ok(u) => u,
        Err(e) => {
            info.refuse(&ctx.metrics, e.metric_label(), &e);
            let mut c = client;
            let _ = c.shutdown().await;
            return;
        }
    };
    let counters = ctx.metrics.connection(info.port, &route.name, mode);
    let istio = ctx
        .metrics
        .istio_open(&istio_labels(&snap.config, &ctx.id, &upstream));
    let (endpoint, mesh) = (upstream.endpoint.to_string(), upstream.is_mesh());
    let mut client = Counted {
        inner: client,
        read: counters.received.clone(),
        written: counters.sent.clone(),
        totals: (0, 0),
    };
    let mut up = upstream.stream;
    let error = match tokio::io::copy_bidirectional(&mut client, &mut up).await {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    let (received, sent) = client.totals;
    istio.close(received, sent);
    info!(
        target: "weir::gateway",
        listener = info.port,
        peer = %info.peer,
        sni = info.sni.as_deref().unwrap_or("-"),
        principal = %principal,
        route = %route.name,
        mode,
        upstream = %endpoint,
        mesh,
        received,
        sent,
        duration_ms = info.start.elapsed().as_millis() as u64,
        error,
        "connection closed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_warnings_are_bounded_per_second_and_count_what_they_skip() {
        let budget = LogBudget::new();
        let mut written = Vec::new();
        for _ in 0..25 {
            written.push(budget.take(100, 10));
        }
        assert_eq!(written.iter().filter(|w| w.is_some()).count(), 10);
        assert_eq!(written[0], Some(0));
        // The next second: a line again, saying how many were skipped.
        assert_eq!(budget.take(101, 10), Some(15));
        assert_eq!(budget.take(101, 10), Some(0));
    }
}
