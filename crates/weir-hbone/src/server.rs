//! The HBONE server: accepts mTLS connections, speaks HTTP/2, and hands each
//! valid `CONNECT` stream to a [`Handler`] running in its own task.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, debug_span, info, info_span, warn, Instrument};

use crate::error::{Error, Result};
use crate::stream::H2Stream;
use crate::transport::{ReadAhead, TLS_WRITE_BUFFER};
use crate::{BoxFuture, H2Settings};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub h2: H2Settings,
    /// A client that has not finished the TLS handshake, or then the
    /// HTTP/2 preface and settings, by then is dropped.
    pub tls_handshake_timeout: Duration,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients.
    pub max_concurrent_streams: u32,
    /// After shutdown, how long open tunnels may keep running; then their
    /// connection is closed and they are reset.
    pub drain_timeout: Duration,
    /// When the client's certificate expires (read from its leaf): from then
    /// the connection takes no new tunnel (GOAWAY; open ones finish), so a
    /// certificate is not used past its validity by keeping a connection
    /// open. `None`: no such limit.
    pub peer_expiry: Option<PeerExpiry>,
}

/// A function reading a certificate's end of validity.
pub type ExpiryFn = dyn Fn(&CertificateDer<'_>) -> Option<std::time::SystemTime> + Send + Sync;

/// Reads a certificate's end of validity.
#[derive(Clone)]
pub struct PeerExpiry(pub Arc<ExpiryFn>);

impl std::fmt::Debug for PeerExpiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerExpiry")
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            h2: H2Settings::default(),
            tls_handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 1000,
            drain_timeout: Duration::from_secs(30),
            peer_expiry: None,
        }
    }
}

/// One `CONNECT` request that passed validation.
#[derive(Debug, Clone)]
pub struct InboundRequest {
    /// The client's certificate chain, leaf first, as verified by rustls; the
    /// caller derives the source identity from the leaf's URI SAN. Shared by
    /// every stream of the connection.
    pub peer_certificates: Arc<[CertificateDer<'static>]>,
    /// The client's address (the remote end of the TLS connection).
    pub peer_addr: SocketAddr,
    /// The address the client connected to (`pod-ip:15008`).
    pub local_addr: SocketAddr,
    /// The `:authority` of the `CONNECT`: where the client wants to go.
    pub target: SocketAddr,
}

/// Answers one `CONNECT`. Dropping it unanswered sends 503.
#[derive(Debug)]
pub struct Responder {
    respond: Option<SendResponse<Bytes>>,
    body: Option<RecvStream>,
}

impl Responder {
    /// Refuses the tunnel: 403 for a policy denial, 503 when the target
    /// refused or is unreachable, ...
    pub fn reject(mut self, status: StatusCode) -> Result<()> {
        let respond = self.respond.take().expect("Responder is answered once");
        send_status(respond, status)
    }

    /// Opens the tunnel: answers 200 and returns the stream.
    pub fn accept(mut self) -> Result<H2Stream> {
        let mut respond = self.respond.take().expect("Responder is answered once");
        let body = self.body.take().expect("Responder is answered once");
        let response = Response::builder()
            .status(StatusCode::OK)
            .body(())
            .expect("static response");
        let send = respond
            .send_response(response, false)
            .map_err(Error::Respond)?;
        Ok(H2Stream::new(send, body, None))
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(respond) = self.respond.take() {
            warn!("HBONE handler dropped the request without answering; sending 503");
            let _ = send_status(respond, StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}

fn send_status(mut respond: SendResponse<Bytes>, status: StatusCode) -> Result<()> {
    let response = Response::builder()
        .status(status)
        .body(())
        .expect("static response");
    respond
        .send_response(response, true)
        .map(drop)
        .map_err(Error::Respond)
}

/// Decides what to do with a `CONNECT`; runs in its own task per stream.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: InboundRequest, responder: Responder) -> BoxFuture<'static, ()>;
}

impl<F, Fut> Handler for F
where
    F: Fn(InboundRequest, Responder) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(&self, request: InboundRequest, responder: Responder) -> BoxFuture<'static, ()> {
        Box::pin(self(request, responder))
    }
}

/// Tells servers to stop accepting and drain. Clone the receiver side with
/// [`Shutdown::signal`].
#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

/// Wait side of [`Shutdown`].
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            tx: watch::channel(false).0,
        }
    }

    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            rx: self.tx.subscribe(),
        }
    }

    /// Stops accepting; open tunnels drain until their deadline.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownSignal {
    /// A signal that never fires.
    pub fn never() -> Self {
        Self {
            rx: watch::channel(false).1,
        }
    }

    /// Resolves once shutdown was triggered. If the [`Shutdown`] is dropped
    /// without triggering, it never resolves.
    pub async fn fired(&mut self) {
        if self.rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Counters of what the server saw, for metrics and tests.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// TCP connections handed to the server.
    pub connections: AtomicU64,
    /// Connections that completed TLS and HTTP/2 handshakes.
    pub connections_established: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub h2_errors: AtomicU64,
    /// Valid `CONNECT` streams passed to the handler.
    pub streams: AtomicU64,
    /// Requests answered 400.
    pub bad_requests: AtomicU64,
}

#[derive(Clone)]
pub struct Server {
    inner: Arc<ServerInner>,
}

/// Called with every failed TLS handshake (after it is logged and counted in
/// [`ServerStats`]), so the caller can count it by reason.
pub type TlsFailureHook = Arc<dyn Fn(&Error) + Send + Sync>;

struct ServerInner {
    config: ServerConfig,
    acceptor: TlsAcceptor,
    handler: Arc<dyn Handler>,
    stats: ServerStats,
    on_tls_failure: Option<TlsFailureHook>,
}

impl Server {
    pub fn new(
        config: ServerConfig,
        tls: Arc<rustls::ServerConfig>,
        handler: impl Handler,
    ) -> Self {
        Self {
            inner: Arc::new(ServerInner {
                config,
                acceptor: TlsAcceptor::from(tls),
                handler: Arc::new(handler),
                stats: ServerStats::default(),
                on_tls_failure: None,
            }),
        }
    }

    /// Like [`Server::new`], with a hook called on every failed TLS handshake.
    pub fn with_tls_failure_hook(
        config: ServerConfig,
        tls: Arc<rustls::ServerConfig>,
        handler: impl Handler,
        hook: TlsFailureHook,
    ) -> Self {
        Self {
            inner: Arc::new(ServerInner {
                config,
                acceptor: TlsAcceptor::from(tls),
                handler: Arc::new(handler),
                stats: ServerStats::default(),
                on_tls_failure: Some(hook),
            }),
        }
    }

    pub fn stats(&self) -> &ServerStats {
        &self.inner.stats
    }

    /// Accepts connections until `shutdown` fires, then lets the open
    /// connections drain for up to `drain_timeout` and aborts the rest.
    /// Errors of single connections are logged and counted, never returned.
    pub async fn serve(&self, listener: TcpListener, mut shutdown: ShutdownSignal) {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.fired() => break,
                // Reap finished connection tasks so the set does not grow.
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        let server = self.clone();
                        let signal = shutdown.clone();
                        conns.spawn(async move {
                            let _ = server.serve_connection(tcp, signal).await;
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!("accepting HBONE connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        info!(
            connections = conns.len(),
            "HBONE server stopped accepting; draining"
        );
        // Each connection enforces the deadline itself; this is a backstop.
        let backstop = self.inner.config.drain_timeout + Duration::from_secs(1);
        let drained = tokio::time::timeout(backstop, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                connections = conns.len(),
                "HBONE drain deadline passed; closing remaining connections"
            );
            conns.shutdown().await;
        }
    }

    /// Serves one accepted TCP connection: TLS, HTTP/2, then one task per
    /// stream. For callers that accept TCP themselves (in a pod's network
    /// namespace). Returns when the client closes, on error, or once drained
    /// after `shutdown` (at most `drain_timeout`). The error is already
    /// logged and counted.
    pub async fn serve_connection(&self, tcp: TcpStream, shutdown: ShutdownSignal) -> Result<()> {
        let peer_addr = tcp.peer_addr()?;
        let local_addr = tcp.local_addr()?;
        let span = info_span!("hbone_inbound", peer = %peer_addr);
        let r = self
            .serve_connection_inner(tcp, peer_addr, local_addr, shutdown)
            .instrument(span.clone())
            .await;
        if let Err(e) = &r {
            let _enter = span.enter();
            warn!(error = %e, label = e.metric_label(), "HBONE connection ended with an error");
        }
        r
    }

    async fn serve_connection_inner(
        &self,
        tcp: TcpStream,
        peer_addr: SocketAddr,
        local_addr: SocketAddr,
        mut shutdown: ShutdownSignal,
    ) -> Result<()> {
        let stats = &self.inner.stats;
        let cfg = &self.inner.config;
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);

        let mut tls = tokio::time::timeout(
            cfg.tls_handshake_timeout,
            self.inner.acceptor.accept(ReadAhead::new(tcp)),
        )
        .await
        .map_err(|_| Error::ServerTlsTimeout { peer: peer_addr })
        .and_then(|r| {
            r.map_err(|source| Error::ServerTlsHandshake {
                peer: peer_addr,
                source,
            })
        })
        .inspect_err(|e| {
            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
            if let Some(hook) = &self.inner.on_tls_failure {
                hook(e);
            }
        })?;
        tls.get_mut().1.set_buffer_limit(Some(TLS_WRITE_BUFFER));
        let peer_certificates = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        let peer_certificates: Arc<[CertificateDer<'static>]> = peer_certificates.into();

        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(cfg.h2.stream_window)
            .initial_connection_window_size(cfg.h2.connection_window)
            .max_frame_size(cfg.h2.max_frame_size)
            .max_send_buffer_size(cfg.h2.max_send_buffer)
            .max_concurrent_streams(cfg.max_concurrent_streams)
            .max_header_list_size(64 * 1024);
        let h2_err = |source| {
            stats.h2_errors.fetch_add(1, Ordering::Relaxed);
            Error::ServerHttp2 {
                peer: peer_addr,
                source,
            }
        };
        // A peer that finished TLS but never sends the HTTP/2 preface is
        // dropped as one that never finishes TLS is.
        let mut conn = tokio::time::timeout(
            cfg.tls_handshake_timeout,
            builder.handshake::<_, Bytes>(tls),
        )
        .await
        .map_err(|_| Error::ServerHttp2Timeout { peer: peer_addr })?
        .map_err(h2_err)?;
        stats
            .connections_established
            .fetch_add(1, Ordering::Relaxed);
        debug!("HBONE connection established");

        // When the client's certificate stops being valid.
        let expires = cfg
            .peer_expiry
            .as_ref()
            .zip(peer_certificates.first())
            .and_then(|(f, leaf)| (f.0)(leaf))
            .map(|at| {
                let left = at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                Instant::now() + left
            });
        let mut expired = false;
        // Far future until shutdown; then the drain deadline.
        let mut deadline = None;
        loop {
            tokio::select! {
                _ = sleep_until_opt(expires), if !expired && deadline.is_none() => {
                    info!("client certificate expired; this HBONE connection takes no new tunnels");
                    conn.graceful_shutdown();
                    expired = true;
                }
                _ = shutdown.fired(), if deadline.is_none() => {
                    debug!("draining HBONE connection");
                    conn.graceful_shutdown();
                    deadline = Some(Instant::now() + cfg.drain_timeout);
                }
                _ = sleep_until_opt(deadline) => {
                    warn!("HBONE drain deadline passed; closing the connection and its tunnels");
                    break;
                }
                next = conn.accept() => match next {
                    None => break,
                    Some(Ok((request, respond))) => {
                        let conn_info = ConnInfo {
                            peer_certificates: peer_certificates.clone(),
                            peer_addr,
                            local_addr,
                        };
                        // The task holds only the handler's future: the request
                        // is taken apart first, so nothing else stays alive
                        // (memory) for as long as the tunnel.
                        if let Some(handling) = self.inner.handle_stream(request, respond, conn_info) {
                            tokio::spawn(handling.in_current_span());
                        }
                    }
                    Some(Err(e)) => return Err(h2_err(e)),
                },
            }
        }
        debug!("HBONE connection closed");
        Ok(())
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

struct ConnInfo {
    peer_certificates: Arc<[CertificateDer<'static>]>,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
}

/// The target of a valid HBONE `CONNECT`, or why the request is not one.
pub(crate) fn parse_target(
    method: &Method,
    uri: &http::Uri,
) -> std::result::Result<SocketAddr, String> {
    if method != Method::CONNECT {
        return Err(format!("method {method} is not CONNECT"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| "CONNECT without :authority".to_owned())?;
    authority
        .as_str()
        .parse::<SocketAddr>()
        .map_err(|_| format!("authority {:?} is not an ip:port", authority.as_str()))
}

impl ServerInner {
    fn handle_stream(
        &self,
        request: Request<RecvStream>,
        respond: SendResponse<Bytes>,
        conn: ConnInfo,
    ) -> Option<tracing::instrument::Instrumented<BoxFuture<'static, ()>>> {
        let target = match parse_target(request.method(), request.uri()) {
            Ok(t) => t,
            Err(why) => {
                self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                warn!("rejecting malformed HBONE request with 400: {why}");
                let _ = send_status(respond, StatusCode::BAD_REQUEST);
                return None;
            }
        };
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        let inbound = InboundRequest {
            peer_certificates: conn.peer_certificates.clone(),
            peer_addr: conn.peer_addr,
            local_addr: conn.local_addr,
            target,
        };
        let responder = Responder {
            respond: Some(respond),
            body: Some(request.into_body()),
        };
        Some(
            self.handler
                .handle(inbound, responder)
                // debug level: an info span would live (and hold memory) as long
                // as every tunnel; the access log line names the target anyway.
                .instrument(debug_span!("hbone_stream", target = %target)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::parse_target;
    use http::{Method, Uri};

    fn target(method: Method, uri: &str) -> Result<String, String> {
        parse_target(&method, &uri.parse::<Uri>().unwrap()).map(|a| a.to_string())
    }

    #[test]
    fn targets_are_ip_and_port() {
        assert_eq!(
            target(Method::CONNECT, "10.0.0.1:9092").unwrap(),
            "10.0.0.1:9092"
        );
        assert_eq!(
            target(Method::CONNECT, "[fd00::1]:9092").unwrap(),
            "[fd00::1]:9092"
        );
        assert!(target(Method::CONNECT, "10.0.0.1").is_err());
        assert!(target(Method::CONNECT, "broker:9092").is_err());
        assert!(target(Method::GET, "http://10.0.0.1:9092/").is_err());
    }
}
