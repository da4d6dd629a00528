//! The HBONE client: a pool of HTTP/2-over-mTLS connections that opens one
//! `CONNECT` stream per tunneled TCP connection.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode, Version};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, info_span, warn, Instrument};
use weir_core::SpiffeId;

use crate::error::{Error, Result};
use crate::stream::{ActiveStreamGuard, H2Stream, StreamCounter};
use crate::transport::{ReadAhead, TLS_WRITE_BUFFER};
use crate::{BoxFuture, H2Settings};

/// Connections are shared only between tunnels with the same key.
///
/// The source identity is part of the key because the client certificate is
/// that identity: two workloads must never share a connection, or the
/// destination would authorize one with the other's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity the client certificate presents.
    pub source: SpiffeId,
    /// The destination's HBONE address (`pod-ip:15008`).
    pub hbone_addr: SocketAddr,
    /// The identity the server certificate must present, when known.
    pub destination: Option<SpiffeId>,
}

impl fmt::Display for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.source, self.hbone_addr)?;
        if let Some(d) = &self.destination {
            write!(f, "[{d}]")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// At most this many concurrent tunnels share one connection; the next
    /// one opens another connection. Default 100, as in ztunnel.
    pub max_streams_per_connection: usize,
    /// Busy tunnels of one key are spread over up to this many connections
    /// before they share one: a new tunnel opens another connection while
    /// every open one already carries a tunnel and there are fewer than this.
    /// Each connection is one TLS session driven by one task, so one
    /// connection moves at most one core's worth of bytes; spreading lets
    /// parallel tunnels to one destination use several cores. Idle
    /// connections are reused first. Default: the number of cores, at most 4.
    pub parallel_connections: usize,
    /// Bound on TCP connect + TLS handshake + HTTP/2 handshake.
    pub connect_timeout: Duration,
    /// Bound on waiting for the answer to a `CONNECT` (the destination
    /// connects to the target before answering).
    pub response_timeout: Duration,
    /// A connection without tunnels for this long is closed.
    pub idle_timeout: Duration,
    /// A connection older than this takes no new tunnel (open ones finish;
    /// it closes once idle), so new tunnels go over a connection made with
    /// the current certificate: a leaf is renewed at half-life, and a server
    /// takes no new tunnel on a connection whose client certificate expired.
    /// Default 1 h.
    pub max_connection_age: Duration,
    pub h2: H2Settings,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_streams_per_connection: 100,
            parallel_connections: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(300),
            max_connection_age: Duration::from_secs(3600),
            h2: H2Settings::default(),
        }
    }
}

/// How the pool reaches a destination: the TLS settings for a source
/// identity, and the TCP socket (a hook, because the node proxy creates it
/// inside the source pod's network namespace with a firewall mark).
pub trait Connector: Send + Sync {
    /// The rustls config presenting `source`'s certificate and verifying the
    /// server against the mesh root and, if given, `expected` identity.
    /// Fails when no certificate can be had for `source` (e.g. the CA refused).
    fn tls_config(
        &self,
        source: &SpiffeId,
        expected: Option<&SpiffeId>,
    ) -> io::Result<Arc<rustls::ClientConfig>>;

    /// Opens the TCP connection to `addr` on behalf of `source`. The pool
    /// sets TCP_NODELAY on what this returns.
    fn tcp_connect(
        &self,
        _source: &SpiffeId,
        addr: SocketAddr,
    ) -> BoxFuture<'static, io::Result<TcpStream>> {
        Box::pin(async move {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(s)
        })
    }
}

/// A pool of HBONE connections. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    config: PoolConfig,
    connector: Arc<dyn Connector>,
    entries: Mutex<HashMap<PoolKey, Entry>>,
    next_id: AtomicU64,
}

/// The connections of one key, and a lock that serializes dialing so
/// concurrent callers wait for one new connection instead of each opening one.
#[derive(Default)]
struct Entry {
    conns: Vec<Arc<Conn>>,
    dial_lock: Arc<tokio::sync::Mutex<()>>,
}

struct Conn {
    id: u64,
    sender: SendRequest<Bytes>,
    /// Streams in use, including ones whose CONNECT is in flight.
    streams: Arc<StreamCounter>,
    /// Set when the connection ended or left the pool.
    closed: AtomicBool,
    /// When it was made.
    dialed: std::time::Instant,
}

impl Conn {
    fn usable(&self, max_streams: usize, max_age: Duration) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.streams.active() < max_streams
            && self.dialed.elapsed() < max_age
    }
}

impl Pool {
    pub fn new(config: PoolConfig, connector: Arc<dyn Connector>) -> Self {
        let mut config = config;
        config.max_streams_per_connection = config.max_streams_per_connection.max(1);
        config.parallel_connections = config.parallel_connections.max(1);
        Self {
            inner: Arc::new(Inner {
                config,
                connector,
                entries: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Open connections for `key` (for tests and the admin endpoint).
    pub fn connection_count(&self, key: &PoolKey) -> usize {
        let entries = lock(&self.inner.entries);
        entries.get(key).map_or(0, |e| {
            e.conns
                .iter()
                .filter(|c| !c.closed.load(Ordering::Acquire))
                .count()
        })
    }

    /// Opens a tunnel to `target` through the HBONE endpoint of `key`.
    ///
    /// Reuses a pooled connection with a free stream slot, or opens a new
    /// one. A refusal by the destination proxy is [`Error::Rejected`] with
    /// its status (403 policy denial, 503 target unreachable, ...).
    pub async fn connect(&self, key: &PoolKey, target: SocketAddr) -> Result<H2Stream> {
        let span = info_span!("hbone_connect", key = %key, target = %target);
        async {
            // A pooled connection can die between the check and the request
            // (idle close by the peer), or the peer may have sent GOAWAY
            // (draining, or the certificate the connection was made with
            // expired: the request was not processed); then retry once on a
            // fresh one.
            let (conn, slot, reused) = self.checkout(key).await?;
            match self.send_connect(&conn, slot, key, target).await {
                Err(Error::Http2 { source, .. })
                    if reused && (!source.is_remote() || source.is_go_away()) =>
                {
                    debug!(
                        conn = conn.id,
                        "pooled connection failed ({source}), redialing"
                    );
                    self.evict(key, &conn);
                    let (conn, slot, _) = self.checkout(key).await?;
                    self.send_connect(&conn, slot, key, target).await
                }
                r => r,
            }
        }
        .instrument(span)
        .await
    }

    /// Returns a connection with one stream slot reserved for the caller,
    /// and whether it was reused from the pool.
    async fn checkout(&self, key: &PoolKey) -> Result<(Arc<Conn>, ActiveStreamGuard, bool)> {
        let dial_lock = {
            let mut entries = lock(&self.inner.entries);
            let entry = entries.entry(key.clone()).or_default();
            // While another caller dials, take a busy connection rather
            // than queue behind the dial only to spread.
            let dialing = entry.dial_lock.try_lock().is_err();
            if let Some((c, slot)) = self.reserve(entry, !dialing) {
                return Ok((c, slot, true));
            }
            entry.dial_lock.clone()
        };
        let _dialing = dial_lock.lock().await;
        // Someone may have dialed while we waited for the lock.
        {
            let mut entries = lock(&self.inner.entries);
            let entry = entries.entry(key.clone()).or_default();
            if let Some((c, slot)) = self.reserve(entry, true) {
                return Ok((c, slot, true));
            }
        }
        let conn = match self.dial(key).await {
            Ok(conn) => conn,
            Err(e) => {
                // A dial made only to spread load must not fail a tunnel
                // that a busy connection can still carry.
                let mut entries = lock(&self.inner.entries);
                let entry = entries.entry(key.clone()).or_default();
                if let Some((c, slot)) = self.reserve(entry, false) {
                    debug!(
                        conn = c.id,
                        "extra connection failed ({e}); sharing a busy one"
                    );
                    return Ok((c, slot, true));
                }
                return Err(e);
            }
        };
        let mut entries = lock(&self.inner.entries);
        let entry = entries.entry(key.clone()).or_default();
        let slot = conn.streams.acquire();
        entry.conns.push(conn.clone());
        Ok((conn, slot, false))
    }

    /// Reserves a slot on the least-loaded live connection with room, or
    /// returns `None` when the caller should dial: no connection has room,
    /// or (with `spread`) all are busy and there are fewer than
    /// `parallel_connections`. Called with the map locked: slots are only
    /// taken under the lock, so check-then-increment cannot overshoot
    /// (releases only ever lower the count).
    fn reserve(&self, entry: &mut Entry, spread: bool) -> Option<(Arc<Conn>, ActiveStreamGuard)> {
        entry.conns.retain(|c| !c.closed.load(Ordering::Acquire));
        let cfg = &self.inner.config;
        let c = entry
            .conns
            .iter()
            .filter(|c| c.usable(cfg.max_streams_per_connection, cfg.max_connection_age))
            .min_by_key(|c| c.streams.active())?;
        let current = entry
            .conns
            .iter()
            .filter(|c| c.dialed.elapsed() < cfg.max_connection_age)
            .count();
        if spread && c.streams.active() > 0 && current < cfg.parallel_connections {
            return None;
        }
        Some((c.clone(), c.streams.acquire()))
    }

    fn evict(&self, key: &PoolKey, conn: &Arc<Conn>) {
        conn.closed.store(true, Ordering::Release);
        let mut entries = lock(&self.inner.entries);
        if let Some(e) = entries.get_mut(key) {
            e.conns.retain(|c| !Arc::ptr_eq(c, conn));
        }
    }

    async fn dial(&self, key: &PoolKey) -> Result<Arc<Conn>> {
        let addr = key.hbone_addr;
        let cfg = &self.inner.config;
        let handshake = async {
            let tcp = self
                .inner
                .connector
                .tcp_connect(&key.source, addr)
                .await
                .map_err(|source| Error::Connect { addr, source })?;
            tcp.set_nodelay(true)?;
            let tls_config = self
                .inner
                .connector
                .tls_config(&key.source, key.destination.as_ref())
                .map_err(|source| Error::TlsHandshake { addr, source })?;
            // The identity check lives in the rustls config; the name is the IP.
            let server_name = ServerName::IpAddress(addr.ip().into());
            let mut tls = TlsConnector::from(tls_config)
                .connect(server_name, ReadAhead::new(tcp))
                .await
                .map_err(|source| Error::TlsHandshake { addr, source })?;
            tls.get_mut().1.set_buffer_limit(Some(TLS_WRITE_BUFFER));
            let mut builder = h2::client::Builder::new();
            builder
                .initial_window_size(cfg.h2.stream_window)
                .initial_connection_window_size(cfg.h2.connection_window)
                .max_frame_size(cfg.h2.max_frame_size)
                .max_send_buffer_size(cfg.h2.max_send_buffer)
                .initial_max_send_streams(cfg.max_streams_per_connection)
                .max_header_list_size(16 * 1024)
                .enable_push(false);
            builder
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(|source| Error::Http2Handshake { addr, source })
        };
        let (sender, connection) = tokio::time::timeout(cfg.connect_timeout, handshake)
            .await
            .map_err(|_| Error::ConnectTimeout { addr })??;

        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        debug!(conn = id, "HBONE connection established");
        let conn = Arc::new(Conn {
            id,
            sender,
            streams: Arc::new(StreamCounter::new()),
            closed: AtomicBool::new(false),
            dialed: std::time::Instant::now(),
        });
        tokio::spawn(
            drive(
                connection,
                Arc::downgrade(&self.inner),
                key.clone(),
                Arc::downgrade(&conn),
                cfg.idle_timeout,
            )
            .in_current_span(),
        );
        Ok(conn)
    }

    /// Sends the CONNECT on a connection; `slot` is the caller's reserved
    /// stream slot, released on error or when the stream is dropped.
    async fn send_connect(
        &self,
        conn: &Arc<Conn>,
        slot: ActiveStreamGuard,
        key: &PoolKey,
        target: SocketAddr,
    ) -> Result<H2Stream> {
        let addr = key.hbone_addr;
        let request = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri(target.to_string())
            .body(())
            .expect("a socket address is a valid authority");
        let exchange = async {
            let mut sender = conn
                .sender
                .clone()
                .ready()
                .await
                .map_err(|source| Error::Http2 { addr, source })?;
            let (response, send) = sender
                .send_request(request, false)
                .map_err(|source| Error::Http2 { addr, source })?;
            let response = response
                .await
                .map_err(|source| Error::Http2 { addr, source })?;
            Ok::<_, Error>((response, send))
        };
        let (response, send) = tokio::time::timeout(self.inner.config.response_timeout, exchange)
            .await
            .map_err(|_| Error::ResponseTimeout { addr, target })??;
        if response.status() != StatusCode::OK {
            return Err(Error::Rejected {
                addr,
                target,
                status: response.status(),
            });
        }
        Ok(H2Stream::new(send, response.into_body(), Some(slot)))
    }
}

/// Drives one client connection until it ends, and takes it out of the pool
/// once it has been idle for `idle_timeout`. After that the pool no longer
/// holds its sender, so h2 closes it with a GOAWAY when the last stream ends.
async fn drive(
    mut connection: h2::client::Connection<
        tokio_rustls::client::TlsStream<ReadAhead<TcpStream>>,
        Bytes,
    >,
    pool: Weak<Inner>,
    key: PoolKey,
    conn: Weak<Conn>,
    idle_timeout: Duration,
) {
    let tick = (idle_timeout / 2).max(Duration::from_millis(100));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut evicted = false;
    loop {
        tokio::select! {
            res = &mut connection => {
                match res {
                    Ok(()) => debug!("HBONE connection closed"),
                    Err(e) => warn!("HBONE connection failed: {e}"),
                }
                break;
            }
            _ = interval.tick(), if !evicted => {
                evicted = evict_if_idle(&pool, &key, &conn, idle_timeout);
            }
        }
    }
    if let Some(c) = conn.upgrade() {
        c.closed.store(true, Ordering::Release);
        if let Some(inner) = pool.upgrade() {
            let mut entries = lock(&inner.entries);
            if let Some(e) = entries.get_mut(&key) {
                e.conns.retain(|x| !Arc::ptr_eq(x, &c));
            }
        }
    }
}

/// Takes the connection out of the pool if it has had no streams for
/// `idle`; true once it is out. Decided under the pool lock, so no caller
/// can be reserving a slot on it at the same time.
fn evict_if_idle(pool: &Weak<Inner>, key: &PoolKey, conn: &Weak<Conn>, idle: Duration) -> bool {
    let (Some(inner), Some(c)) = (pool.upgrade(), conn.upgrade()) else {
        return true;
    };
    let mut entries = lock(&inner.entries);
    if c.closed.load(Ordering::Acquire) {
        return true;
    }
    if c.streams.idle_for() < idle {
        return false;
    }
    debug!(conn = c.id, "closing idle HBONE connection");
    c.closed.store(true, Ordering::Release);
    if let Some(e) = entries.get_mut(key) {
        e.conns.retain(|x| !Arc::ptr_eq(x, &c));
        if e.conns.is_empty() && Arc::strong_count(&e.dial_lock) == 1 {
            entries.remove(key);
        }
    }
    true
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
