//! Connecting to a route's destination: a mesh Workload over HBONE (HTTP/2
//! CONNECT to its port 15008, mTLS with the gateway's own SPIFFE
//! certificate, the Workload's identity expected), anything else over plain
//! TCP, DNS names resolved at connect time.

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;
use weir_core::config::{Destination, Endpoint, ResolveError, RouteDestination};
use weir_core::{Config, SpiffeId};
use weir_hbone::{BoxFuture, Connector, H2Stream, Pool, PoolConfig, PoolKey, HBONE_PORT};
use weir_identity::IdentityManager;

/// How many endpoints a connection tries before giving up.
const MAX_ATTEMPTS: usize = 3;

/// An open upstream connection.
#[derive(Debug)]
pub enum UpstreamStream {
    /// Plain TCP to a non-mesh destination.
    Tcp(TcpStream),
    /// An HBONE tunnel to a mesh Workload.
    Hbone(H2Stream),
}

impl From<UpstreamStream> for weir_node::forward::Side {
    fn from(s: UpstreamStream) -> Self {
        match s {
            UpstreamStream::Tcp(t) => t.into(),
            UpstreamStream::Hbone(h) => h.into(),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Hbone(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Hbone(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Hbone(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Hbone(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A connection to one endpoint of a destination.
#[derive(Debug)]
pub struct Connected {
    pub stream: UpstreamStream,
    /// The service the destination named (host, name, namespace), for
    /// Istio's `destination_service*` labels; `None` for an address.
    pub service: Option<(String, String, String)>,
    /// The endpoint it reached (for logs).
    pub endpoint: Endpoint,
    /// The address connected to (a DNS endpoint's resolved address).
    pub address: SocketAddr,
}

impl Connected {
    /// Whether the connection is an HBONE tunnel (mutual TLS in the mesh).
    pub fn is_mesh(&self) -> bool {
        matches!(self.stream, UpstreamStream::Hbone(_))
    }
}

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("resolving {host}: {message}")]
    Dns { host: String, message: String },
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("HBONE to {addr}: {source}")]
    Hbone {
        addr: SocketAddr,
        source: weir_hbone::Error,
    },
}

impl UpstreamError {
    /// The `reason` label of `weir_gateway_connection_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            UpstreamError::Resolve(e) => e.metric_label(),
            UpstreamError::Dns { .. } => "upstream_dns",
            UpstreamError::Connect { .. } => "upstream_connect",
            UpstreamError::Hbone { source, .. } => match source.rejected_status() {
                Some(s) if s == http::StatusCode::FORBIDDEN => "upstream_denied",
                _ => "upstream_hbone",
            },
        }
    }
}

/// HBONE connections from the gateway: its own certificate, TCP from the
/// gateway's network namespace (where the process runs).
struct GatewayConnector {
    identity: Arc<IdentityManager>,
}

impl Connector for GatewayConnector {
    fn tls_config(
        &self,
        source: &SpiffeId,
        expected: Option<&SpiffeId>,
    ) -> io::Result<Arc<rustls::ClientConfig>> {
        self.identity
            .client_config(source, expected.cloned())
            .map_err(io::Error::other)
    }

    fn tcp_connect(
        &self,
        _source: &SpiffeId,
        addr: SocketAddr,
    ) -> BoxFuture<'static, io::Result<TcpStream>> {
        Box::pin(TcpStream::connect(addr))
    }
}

/// Connects to destinations on behalf of the gateway (and of protocol
/// handlers such as the Kafka session, for their broker connections).
pub struct Upstreams {
    pool: Pool,
    source: SpiffeId,
    connect_timeout: Duration,
    /// The gateway's own admin, metrics and readiness addresses: never an
    /// upstream (a route to 127.0.0.1:15000 would give `/config_dump`, the
    /// config of every namespace, to the internet).
    own: Vec<SocketAddr>,
}

/// Why a plain TCP upstream address is refused, if it is: link-local
/// (169.254.0.0/16: cloud metadata services) and unspecified addresses are
/// no upstream, nor are the gateway's own admin ports (`own`) on loopback,
/// on their own address or, when bound to every address, anywhere.
pub fn forbidden_upstream(addr: SocketAddr, own: &[SocketAddr]) -> Option<&'static str> {
    let ip = addr.ip();
    let link_local = match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        return Some("a link-local address (e.g. a cloud metadata service) is no upstream");
    }
    if ip.is_unspecified() {
        return Some("the unspecified address is no upstream");
    }
    let own_port = own.iter().any(|o| {
        o.port() == addr.port() && (ip.is_loopback() || o.ip().is_unspecified() || o.ip() == ip)
    });
    own_port.then_some("the gateway's own admin, metrics or readiness port is no upstream")
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("source", &self.source)
            .finish()
    }
}

impl Upstreams {
    /// Upstream connections with identity `source` (the gateway's); HBONE
    /// upstreams pooled with `pool` (whose connect timeout bounds plain TCP
    /// and DNS too).
    pub fn new(identity: Arc<IdentityManager>, source: SpiffeId, pool: PoolConfig) -> Self {
        let connect_timeout = pool.connect_timeout;
        let pool = Pool::new(pool, Arc::new(GatewayConnector { identity }));
        Self {
            pool,
            source,
            connect_timeout,
            own: Vec::new(),
        }
    }

    /// Refuses `own` (the gateway's admin, metrics and readiness
    /// addresses) as upstreams.
    pub fn with_own_addresses(mut self, own: Vec<SocketAddr>) -> Self {
        self.own = own;
        self
    }

    /// The identity upstream mesh connections present.
    pub fn identity(&self) -> &SpiffeId {
        &self.source
    }

    /// Resolves `dest` (its host relative to `namespace`; without a port,
    /// the host's only port or `listener_port`) and connects to one of its
    /// endpoints, chosen by weight; on failure tries others (up to three
    /// attempts in all).
    pub async fn connect(
        &self,
        config: &Config,
        dest: &Destination,
        namespace: &str,
        listener_port: Option<u16>,
    ) -> Result<Connected, UpstreamError> {
        // The gateway's namespace (its identity's) decides which
        // ServiceEntries and DestinationRules it sees.
        let resolved = config.resolve_destination_on(
            dest,
            namespace,
            listener_port,
            Some(self.source.namespace()),
        )?;
        let weights: Vec<u32> = resolved.endpoints.iter().map(|(_, w)| *w).collect();
        let mut last = None;
        for i in weighted_order(&weights, random())
            .into_iter()
            .take(MAX_ATTEMPTS)
        {
            let ep = &resolved.endpoints[i].0;
            match self.connect_endpoint(config, ep).await {
                Ok(mut c) => {
                    c.service = service_labels(&resolved);
                    return Ok(c);
                }
                Err(e) => {
                    debug!(target: "weir::gateway", endpoint = %ep, error = %e, "upstream endpoint failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            UpstreamError::Resolve(ResolveError::NoEndpoints {
                host: dest.host.clone(),
                why: String::new(),
            })
        }))
    }

    /// Connects to one endpoint.
    pub async fn connect_endpoint(
        &self,
        config: &Config,
        ep: &Endpoint,
    ) -> Result<Connected, UpstreamError> {
        match ep {
            Endpoint::Workload {
                address, identity, ..
            } => {
                let stream = self.hbone(*address, identity.clone()).await?;
                Ok(Connected {
                    service: None,
                    stream,
                    endpoint: ep.clone(),
                    address: *address,
                })
            }
            Endpoint::Address { address } => Ok(Connected {
                service: None,
                stream: self.tcp(*address).await?,
                endpoint: ep.clone(),
                address: *address,
            }),
            Endpoint::Dns { host, port } => {
                let lookup = tokio::net::lookup_host((host.as_str(), *port));
                let mut addrs: Vec<SocketAddr> =
                    match tokio::time::timeout(self.connect_timeout, lookup).await {
                        Ok(Ok(a)) => a.collect(),
                        Ok(Err(e)) => {
                            return Err(UpstreamError::Dns {
                                host: host.clone(),
                                message: e.to_string(),
                            })
                        }
                        Err(_) => {
                            return Err(UpstreamError::Dns {
                                host: host.clone(),
                                message: format!("timed out after {:?}", self.connect_timeout),
                            })
                        }
                    };
                let mut last = UpstreamError::Dns {
                    host: host.clone(),
                    message: "no addresses".to_owned(),
                };
                // Spread connections over the addresses the name has,
                // starting each at a random one, as Istio's DNS resolution
                // balances over them; within the resolver's first address
                // family only (an IPv4-only pod must not start with IPv6).
                spread(&mut addrs, random());
                for addr in addrs.into_iter().take(MAX_ATTEMPTS) {
                    // A name that resolves to a mesh Workload goes over the mesh.
                    let r = match config.workload_by_address(addr.ip()) {
                        Some(w) => {
                            self.hbone(addr, w.identity(&config.settings.trust_domain))
                                .await
                        }
                        None => self.tcp(addr).await,
                    };
                    match r {
                        Ok(stream) => {
                            return Ok(Connected {
                                service: None,
                                stream,
                                endpoint: ep.clone(),
                                address: addr,
                            })
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    async fn hbone(
        &self,
        target: SocketAddr,
        expected: SpiffeId,
    ) -> Result<UpstreamStream, UpstreamError> {
        let key = PoolKey {
            source: self.source.clone(),
            hbone_addr: SocketAddr::new(target.ip(), HBONE_PORT),
            destination: Some(expected),
        };
        // Boxed: the handshake state must not stay in the connection's future.
        let pool = self.pool.clone();
        match Box::pin(async move { pool.connect(&key, target).await }).await {
            Ok(s) => Ok(UpstreamStream::Hbone(s)),
            Err(source) => Err(UpstreamError::Hbone {
                addr: target,
                source,
            }),
        }
    }

    async fn tcp(&self, addr: SocketAddr) -> Result<UpstreamStream, UpstreamError> {
        if let Some(why) = forbidden_upstream(addr, &self.own) {
            return Err(UpstreamError::Connect {
                addr,
                source: io::Error::new(io::ErrorKind::PermissionDenied, why),
            });
        }
        match tokio::time::timeout(self.connect_timeout, Box::pin(TcpStream::connect(addr))).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(UpstreamStream::Tcp(s))
            }
            Ok(Err(source)) => Err(UpstreamError::Connect { addr, source }),
            Err(_) => Err(UpstreamError::Connect {
                addr,
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out after {:?}", self.connect_timeout),
                ),
            }),
        }
    }
}

/// Rotates the leading run of addresses of the resolver's first family to
/// start at `r % run`; the other family's addresses stay behind, in order.
fn spread(addrs: &mut [SocketAddr], r: u64) {
    let family = addrs.first().map(SocketAddr::is_ipv4);
    let same = addrs
        .iter()
        .take_while(|a| Some(a.is_ipv4()) == family)
        .count();
    rotate_randomly(&mut addrs[..same], r);
}

/// Rotates `v` to start at index `r % len`, keeping the order after it.
fn rotate_randomly<T>(v: &mut [T], r: u64) {
    if !v.is_empty() {
        let n = (r % v.len() as u64) as usize;
        v.rotate_left(n);
    }
}

/// Istio's destination service of a resolved destination: its host, and
/// the Service's name and namespace (a ServiceEntry's: the host and the
/// entry's namespace).
fn service_labels(r: &weir_core::config::ResolvedDestination) -> Option<(String, String, String)> {
    use weir_core::config::DestinationSource;
    match &r.source {
        DestinationSource::Service { name } => {
            let (ns, n) = name.split_once('/')?;
            Some((r.host.clone(), n.to_owned(), ns.to_owned()))
        }
        DestinationSource::ServiceEntry { name, .. } => {
            let (ns, _) = name.split_once('/')?;
            Some((r.host.clone(), r.host.clone(), ns.to_owned()))
        }
        DestinationSource::Address => None,
    }
}

/// A pseudo-random number for load balancing (not for anything secret).
pub(crate) fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// Indices of `weights`: the first drawn with probability proportional to
/// its weight (using `r`), the others after it in their order. All-zero
/// weights count as equal.
pub fn weighted_order(weights: &[u32], r: u64) -> Vec<usize> {
    if weights.is_empty() {
        return Vec::new();
    }
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let first = if total == 0 {
        (r % weights.len() as u64) as usize
    } else {
        let mut x = r % total;
        let mut pick = 0;
        for (i, w) in weights.iter().enumerate() {
            let w = u64::from(*w);
            if x < w {
                pick = i;
                break;
            }
            x -= w;
        }
        pick
    };
    std::iter::once(first)
        .chain((0..weights.len()).filter(|i| *i != first))
        .collect()
}

/// Picks one of a route's destinations by weight.
pub fn pick_destination(route: &[RouteDestination]) -> Option<&RouteDestination> {
    let weights: Vec<u32> = route.iter().map(|r| r.weight).collect();
    weighted_order(&weights, random())
        .first()
        .and_then(|i| route.get(*i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_spreading_keeps_the_first_family_first() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        for r in 0..4 {
            let mut v = vec![
                a("198.18.0.1:1"),
                a("198.18.0.2:1"),
                a("[fd00::1]:1"),
                a("[fd00::2]:1"),
            ];
            spread(&mut v, r);
            assert!(v[0].is_ipv4() && v[1].is_ipv4(), "{v:?}");
            assert_eq!(&v[2..], &[a("[fd00::1]:1"), a("[fd00::2]:1")]);
        }
    }

    #[test]
    fn dns_addresses_are_spread_over() {
        let mut firsts = std::collections::BTreeSet::new();
        for r in 0..6 {
            let mut v = vec![1, 2, 3];
            rotate_randomly(&mut v, r);
            assert_eq!(v.len(), 3);
            // A rotation: the order after the start is kept.
            assert_eq!(v[1], v[0] % 3 + 1);
            firsts.insert(v[0]);
        }
        assert_eq!(firsts.len(), 3, "every address comes first for some r");
        rotate_randomly(&mut Vec::<u8>::new(), 7);
    }

    #[test]
    fn weights_are_honoured() {
        assert_eq!(weighted_order(&[], 7), Vec::<usize>::new());
        assert_eq!(weighted_order(&[0, 100], 5), vec![1, 0]);
        assert_eq!(weighted_order(&[100, 0], 5), vec![0, 1]);
        assert_eq!(weighted_order(&[1, 1, 1], 4), vec![1, 0, 2]);
        assert_eq!(weighted_order(&[0, 0], 3), vec![1, 0]);
        let mut hits = [0u32; 2];
        for r in 0..1000u64 {
            hits[weighted_order(&[75, 25], r)[0]] += 1;
        }
        assert_eq!(hits, [750, 250]);
    }
}

#[cfg(test)]
mod forbidden_tests {
    use super::*;

    #[test]
    fn metadata_services_and_the_gateways_own_ports_are_no_upstream() {
        let own: Vec<SocketAddr> = vec![
            "127.0.0.1:15000".parse().unwrap(),
            "0.0.0.0:15020".parse().unwrap(),
            "0.0.0.0:15021".parse().unwrap(),
        ];
        let refused = |a: &str| forbidden_upstream(a.parse().unwrap(), &own);
        assert!(refused("169.254.169.254:80").is_some());
        assert!(refused("[fe80::1]:80").is_some());
        assert!(refused("0.0.0.0:9092").is_some());
        assert!(refused("127.0.0.1:15000").is_some());
        assert!(refused("127.0.0.2:15000").is_some());
        assert!(
            refused("198.18.0.7:15020").is_some(),
            "bound to every address"
        );
        // Other loopback ports and addresses stay usable (local backends).
        assert!(refused("127.0.0.1:9443").is_none());
        assert!(refused("198.18.0.7:15000").is_none());
        assert!(refused("198.18.0.7:9092").is_none());
    }
}
