//! End-to-end tests over loopback: real TLS 1.3 with client certificates,
//! real HTTP/2, real TCP targets.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::testing::{echo_server, TestCa, TestConnector};
use crate::{InboundRequest, Pool, PoolConfig, PoolKey, Responder, Server, ServerConfig, Shutdown};

const CLIENT: &str = "spiffe://cluster.local/ns/app/sa/client";
const OTHER_CLIENT: &str = "spiffe://cluster.local/ns/app/sa/other";
const BROKER: &str = "spiffe://cluster.local/ns/kafka/sa/broker";

/// Connects to the target and pipes bytes; 503 if the target refuses.
async fn proxy(req: InboundRequest, responder: Responder) {
    match TcpStream::connect(req.target).await {
        Ok(mut tcp) => {
            let Ok(mut tunnel) = responder.accept() else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tunnel, &mut tcp).await;
        }
        Err(_) => {
            let _ = responder.reject(StatusCode::SERVICE_UNAVAILABLE);
        }
    }
}

struct TestServer {
    addr: SocketAddr,
    server: Server,
    shutdown: Shutdown,
}

async fn start_server(ca: &TestCa, handler: impl crate::Handler) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        drain_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let server = Server::new(config, ca.server_config(BROKER), handler);
    let shutdown = Shutdown::new();
    let (s, signal) = (server.clone(), shutdown.signal());
    tokio::spawn(async move { s.serve(listener, signal).await });
    TestServer {
        addr,
        server,
        shutdown,
    }
}

fn key(source: &str, addr: SocketAddr) -> PoolKey {
    PoolKey {
        source: source.parse().unwrap(),
        hbone_addr: addr,
        destination: Some(BROKER.parse().unwrap()),
    }
}

/// A pool that shares one connection until `max_streams` (no spreading,
/// so connection counts do not depend on the machine's cores).
fn pool(ca: &TestCa, max_streams: usize) -> Pool {
    let config = PoolConfig {
        max_streams_per_connection: max_streams,
        parallel_connections: 1,
        connect_timeout: Duration::from_secs(5),
        ..PoolConfig::default()
    };
    Pool::new(config, TestConnector::new(ca, &[CLIENT, OTHER_CLIENT]))
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trip_large_payload_and_half_close() {
    let ca = TestCa::new();
    let srv = start_server(&ca, proxy).await;
    let target = echo_server().await;
    let pool = pool(&ca, 100);

    let stream = pool.connect(&key(CLIENT, srv.addr), target).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let data = pattern(8 * 1024 * 1024);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(100_000) {
            wr.write_all(chunk).await.unwrap();
        }
        // Client half-close travels to the echo server as TCP EOF ...
        wr.shutdown().await.unwrap();
        wr
    });
    let mut echoed = Vec::with_capacity(data.len());
    // ... and the echo server's half-close comes back as EOF here.
    tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut echoed))
        .await
        .expect("echo finished")
        .unwrap();
    let _wr = writer.await.unwrap();
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "echoed bytes differ");
    assert_eq!(srv.server.stats().streams.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn the_server_half_closes_first() {
    let ca = TestCa::new();
    // The target greets, closes its side, then reads what the client sends.
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let got = tokio::spawn(async move {
        let (mut s, _) = target.accept().await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        buf
    });
    let srv = start_server(&ca, proxy).await;
    let pool = pool(&ca, 100);
    let mut stream = pool
        .connect(&key(CLIENT, srv.addr), target_addr)
        .await
        .unwrap();
    let mut greeting = Vec::new();
    stream.read_to_end(&mut greeting).await.unwrap();
    assert_eq!(greeting, b"hello");
    // Our direction is still open after the peer's half-close.
    stream.write_all(b"still here").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(got.await.unwrap(), b"still here");
}

/// A raw HTTP/2 connection with the client's certificate, for sending
/// requests the pool never would.
async fn raw_h2(ca: &TestCa, addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(ca.client_config(CLIENT))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    send
}

async fn status_of(send: &mut h2::client::SendRequest<Bytes>, req: Request<()>) -> StatusCode {
    let mut send = send.clone().ready().await.unwrap();
    let (response, _body) = send.send_request(req, false).unwrap();
    response.await.unwrap().status()
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let ca = TestCa::new();
    let srv = start_server(&ca, proxy).await;
    let mut send = raw_h2(&ca, srv.addr).await;

    for authority in ["not-an-addr", "broker.kafka.svc:9092"] {
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(())
            .unwrap();
        assert_eq!(
            status_of(&mut send, req).await,
            StatusCode::BAD_REQUEST,
            "{authority}"
        );
    }
    let get = Request::builder()
        .method(Method::GET)
        .uri("http://127.0.0.1:9092/")
        .body(())
        .unwrap();
    assert_eq!(status_of(&mut send, get).await, StatusCode::BAD_REQUEST);
    assert_eq!(srv.server.stats().bad_requests.load(Ordering::Relaxed), 3);
    assert_eq!(srv.server.stats().streams.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_policy_denial_is_a_typed_403() {
    let ca = TestCa::new();
    let srv = start_server(&ca, |_req: InboundRequest, r: Responder| async move {
        let _ = r.reject(StatusCode::FORBIDDEN);
    })
    .await;
    let target = echo_server().await;
    let err = pool(&ca, 100)
        .connect(&key(CLIENT, srv.addr), target)
        .await
        .unwrap_err();
    assert_eq!(err.rejected_status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(err.metric_label(), "rejected_forbidden");
    assert!(err.to_string().contains("authorization policy"), "{err}");
}

#[tokio::test]
async fn a_refusing_target_is_a_typed_503() {
    let ca = TestCa::new();
    let srv = start_server(&ca, proxy).await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let pool = pool(&ca, 100);
    let err = pool
        .connect(&key(CLIENT, srv.addr), closed)
        .await
        .unwrap_err();
    assert_eq!(err.rejected_status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(err.metric_label(), "rejected_unavailable");
    // The connection survives a refused stream and is reused.
    let target = echo_server().await;
    let mut s = pool.connect(&key(CLIENT, srv.addr), target).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    assert_eq!(
        srv.server
            .stats()
            .connections_established
            .load(Ordering::Relaxed),
        1
    );
}

async fn open_concurrently(
    pool: &Pool,
    key: &PoolKey,
    target: SocketAddr,
    n: usize,
) -> Vec<crate::H2Stream> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (pool, key) = (pool.clone(), key.clone());
            tokio::spawn(async move { pool.connect(&key, target).await })
        })
        .collect();
    let mut streams = Vec::new();
    for t in tasks {
        streams.push(t.await.unwrap().unwrap());
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_cap_opens_more_connections() {
    let ca = TestCa::new();
    let srv = start_server(&ca, proxy).await;
    let target = echo_server().await;
    let pool = pool(&ca, 2);
    let k = key(CLIENT, srv.addr);
    let mut streams = open_concurrently(&pool, &k, target, 5).await;
    assert_eq!(
        srv.server
            .stats()
            .connections_established
            .load(Ordering::Relaxed),
        3
    );
    assert_eq!(pool.connection_count(&k), 3);
    // Every tunnel works.
    for (i, s) in streams.iter_mut().enumerate() {
        let msg = format!("stream {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0; msg.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    // Freed slots are reused instead of dialing again.
    drop(streams);
    let _again = open_concurrently(&pool, &k, target, 2).await;
    assert_eq!(
        srv.server
            .stats()
            .connections_established
            .load(Ordering::Relaxed),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_spreading_streams_share_one_connection() {
    let ca = TestCa::new();
    let srv = start_server(&ca, proxy).await;
    let target = echo_server().await;
    let pool = pool(&ca, PoolConfig::default().max_streams_per_connection);
    let k = key(CLIENT, srv.addr);
    let _streams = open_concurrently(&pool, &k, target, 5).await;
    assert_eq!(
        srv.server
            .stats()
            .connections_established
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(pool.connection_count(&k), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_tunnels_spread_over_parallel_connections() {
    let ca = TestCa::new();
    let srv = start_server(&ca, proxy).await;
    let target = echo_server().await;
    let config = PoolConfig {
        parallel_connections: 3,
        connect_timeout: Duration::from_secs(5),
        ..PoolConfig::default()
    };
    let pool = Pool::new(config, TestConnector::new(&ca, &[CLIENT]));
    let k = key(CLIENT, srv.addr);
    let dialed = || {
        srv.server
            .stats()
            .connections_established
            .load(Ordering::Relaxed)
    };
    // One tunnel at a time: the idle connection is reused, never a second.
    for _ in 0..3 {
        let mut s = pool.connect(&k, target).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    }
    assert_eq!(dialed(), 1);
    // Held tunnels: each busy connection makes the next tunnel dial, up to
    // three connections; past that, the least-loaded one is shared.
    let mut held = Vec::new();
    for _ in 0..7 {
        held.push(pool.connect(&k, target).await.unwrap());
    }
    assert_eq!(dialed(), 3);
    assert_eq!(pool.connection_count(&k), 3);
    for (i, s) in held.iter_mut().enumerate() {
        let msg = format!("tunnel {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0; msg.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    drop(held);
    let _again = pool.connect(&k, target).await.unwrap();
    assert_eq!(dialed(), 3, "a freed connection is reused");
}

/// Dials succeed `ok` times, then TCP connects are refused.
struct FailAfter {
    inner: Arc<TestConnector>,
    ok: usize,
    dials: std::sync::atomic::AtomicUsize,
}

impl crate::Connector for FailAfter {
    fn tls_config(
        &self,
        source: &weir_core::SpiffeId,
        expected: Option<&weir_core::SpiffeId>,
    ) -> std::io::Result<Arc<rustls::ClientConfig>> {
        self.inner.tls_config(source, expected)
    }

    fn tcp_connect(
        &self,
        _source: &weir_core::SpiffeId,
        addr: SocketAddr,
    ) -> crate::BoxFuture<'static, std::io::Result<tokio::net::TcpStream>> {
        let refuse = self.dials.fetch_add(1, Ordering::Relaxed) >= self.ok;
        Box::pin(async move {
            if refuse {
                return Err(std::io::ErrorKind::ConnectionRefused.into());
            }
            tokio::net::TcpStream::connect(addr).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_extra_connection_falls_back_to_a_busy_one() {
    let ca = TestCa::new();
    let srv = start_server(&ca, proxy).await;
    let target = echo_server().await;
    let config = PoolConfig {
        parallel_connections: 3,
        connect_timeout: Duration::from_secs(5),
        ..PoolConfig::default()
    };
    let connector = Arc::new(FailAfter {
        inner: TestConnector::new(&ca, &[CLIENT]),
        ok: 1,
        dials: Default::default(),
    });
    let pool = Pool::new(config, connector.clone());
    let k = key(CLIENT, srv.addr);
    let _first = pool.connect(&k, target).await.unwrap();
    // The spreading dial is refused: the tunnel shares the busy connection.
    let mut second = pool.connect(&k, target).await.unwrap();
    second.write_all(b"shared").await.unwrap();
    let mut buf = [0u8; 6];
    second.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"shared");
    assert_eq!(connector.dials.load(Ordering::Relaxed), 2);
    assert_eq!(pool.connection_count(&k), 1);
}

#[tokio::test]
async fn source_identities_never_share_a_connection() {
    let ca = TestCa::new();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let recorded = seen.clone();
    let srv = start_server(&ca, move |req: InboundRequest, r: Responder| {
        recorded
            .lock()
            .unwrap()
            .insert(req.peer_certificates[0].to_vec());
        proxy(req, r)
    })
    .await;
    let target = echo_server().await;
    let pool = pool(&ca, 100);
    let (a, b) = (key(CLIENT, srv.addr), key(OTHER_CLIENT, srv.addr));
    let _s1 = pool.connect(&a, target).await.unwrap();
    let _s2 = pool.connect(&b, target).await.unwrap();
    let _s3 = pool.connect(&a, target).await.unwrap();
    assert_eq!(pool.connection_count(&a), 1);
    assert_eq!(pool.connection_count(&b), 1);
    assert_eq!(
        srv.server
            .stats()
            .connections_established
            .load(Ordering::Relaxed),
        2
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "two distinct client certificates"
    );
}

#[tokio::test]
async fn a_garbage_client_does_not_stop_the_server() {
    let ca = TestCa::new();
    let srv = start_server(&ca, proxy).await;
    let mut bad = TcpStream::connect(srv.addr).await.unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    // The server closes the broken connection (maybe after a TLS alert).
    let _ = tokio::time::timeout(Duration::from_secs(5), bad.read_to_end(&mut sink))
        .await
        .expect("server closed the garbage connection");

    let target = echo_server().await;
    let mut s = pool(&ca, 100)
        .connect(&key(CLIENT, srv.addr), target)
        .await
        .unwrap();
    s.write_all(b"ok").await.unwrap();
    let mut buf = [0; 2];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok");
    let stats = srv.server.stats();
    assert_eq!(stats.tls_handshake_failures.load(Ordering::Relaxed), 1);
    assert_eq!(stats.connections_established.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_client_with_a_foreign_certificate_is_refused() {
    let ca = TestCa::new();
    let srv = start_server(&ca, proxy).await;
    let other_ca = TestCa::new();
    // A client of another mesh: another root, another certificate.
    let pool = Pool::new(
        PoolConfig::default(),
        TestConnector::new(&other_ca, &[CLIENT]),
    );
    let target = echo_server().await;
    let err = pool
        .connect(&key(CLIENT, srv.addr), target)
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "tls_handshake", "{err}");
}

#[tokio::test]
async fn a_timeout_names_the_likely_network_policy() {
    // 198.18.0.0/15 is reserved for benchmarks; nothing answers, so the
    // connect hangs until our timeout (or fails fast without a route).
    struct Hang;
    impl crate::Connector for Hang {
        fn tls_config(
            &self,
            _: &weir_core::SpiffeId,
            _: Option<&weir_core::SpiffeId>,
        ) -> std::io::Result<Arc<rustls::ClientConfig>> {
            Ok(TestCa::new().client_config(CLIENT))
        }
        fn tcp_connect(
            &self,
            _: &weir_core::SpiffeId,
            _: SocketAddr,
        ) -> crate::BoxFuture<'static, std::io::Result<TcpStream>> {
            Box::pin(std::future::pending())
        }
    }
    let config = PoolConfig {
        connect_timeout: Duration::from_millis(100),
        ..PoolConfig::default()
    };
    let pool = Pool::new(config, Arc::new(Hang));
    let addr: SocketAddr = "198.18.0.1:15008".parse().unwrap();
    let err = pool.connect(&key(CLIENT, addr), addr).await.unwrap_err();
    assert_eq!(err.metric_label(), "connect_timeout");
    assert!(err.to_string().contains("NetworkPolicy"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_drains_open_tunnels() {
    let ca = TestCa::new();
    let srv = start_server(&ca, proxy).await;
    let target = echo_server().await;
    let pool = pool(&ca, 100);
    let mut s = pool.connect(&key(CLIENT, srv.addr), target).await.unwrap();
    srv.shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The open tunnel keeps working during the drain.
    s.write_all(b"draining").await.unwrap();
    let mut buf = [0; 8];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"draining");
    // New connections are not accepted.
    let fresh = Pool::new(PoolConfig::default(), TestConnector::new(&ca, &[CLIENT]));
    assert!(fresh.connect(&key(CLIENT, srv.addr), target).await.is_err());
}

#[tokio::test]
async fn the_server_refuses_a_certificate_from_another_mesh() {
    struct Foreign(Arc<rustls::ClientConfig>);
    impl crate::Connector for Foreign {
        fn tls_config(
            &self,
            _: &weir_core::SpiffeId,
            _: Option<&weir_core::SpiffeId>,
        ) -> std::io::Result<Arc<rustls::ClientConfig>> {
            Ok(self.0.clone())
        }
    }
    let ca = TestCa::new();
    let srv = start_server(&ca, proxy).await;
    // Trusts our server, but presents a certificate of another root.
    let foreign = TestCa::new().client_config_trusting(CLIENT, &ca);
    let pool = Pool::new(PoolConfig::default(), Arc::new(Foreign(foreign)));
    let target = echo_server().await;
    assert!(pool.connect(&key(CLIENT, srv.addr), target).await.is_err());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        srv.server
            .stats()
            .tls_handshake_failures
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(srv.server.stats().streams.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_reset_reads_as_an_io_error() {
    let ca = TestCa::new();
    let srv = start_server(&ca, |_req: InboundRequest, r: Responder| async move {
        let mut s = r.accept().unwrap();
        s.write_all(b"partial").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.reset();
    })
    .await;
    let target = echo_server().await;
    let mut s = pool(&ca, 100)
        .connect(&key(CLIENT, srv.addr), target)
        .await
        .unwrap();
    let mut buf = Vec::new();
    let err = s.read_to_end(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert_eq!(buf, b"partial");
}

#[tokio::test]
async fn an_ipv6_target_round_trips() {
    let ca = TestCa::new();
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        return; // no IPv6 on this host
    };
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"v6").await.unwrap();
    });
    let srv = start_server(&ca, proxy).await;
    let mut s = pool(&ca, 100)
        .connect(&key(CLIENT, srv.addr), target)
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, b"v6");
}

#[tokio::test]
async fn tunnels_past_the_drain_deadline_are_closed() {
    let ca = TestCa::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        drain_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let server = Server::new(config, ca.server_config(BROKER), proxy);
    let shutdown = Shutdown::new();
    let serving = tokio::spawn({
        let (s, signal) = (server.clone(), shutdown.signal());
        async move { s.serve(listener, signal).await }
    });
    let target = echo_server().await;
    let mut s = pool(&ca, 100)
        .connect(&key(CLIENT, addr), target)
        .await
        .unwrap();
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("serve returns after the drain deadline")
        .unwrap();
    let mut buf = Vec::new();
    let err = s.read_to_end(&mut buf).await.unwrap_err();
    assert!(buf.is_empty(), "{err}");
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let ca = TestCa::new();
    let srv = start_server(&ca, proxy).await;
    let target = echo_server().await;
    let config = PoolConfig {
        idle_timeout: Duration::from_millis(300),
        ..PoolConfig::default()
    };
    let pool = Pool::new(config, TestConnector::new(&ca, &[CLIENT]));
    let k = key(CLIENT, srv.addr);
    let s = pool.connect(&k, target).await.unwrap();
    // A connection with an open tunnel is never idle.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(pool.connection_count(&k), 1);
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        pool.connection_count(&k),
        1,
        "idle time counts from the last stream"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(pool.connection_count(&k), 0);
    // The next tunnel dials again.
    let _s = pool.connect(&k, target).await.unwrap();
    assert_eq!(
        srv.server
            .stats()
            .connections_established
            .load(Ordering::Relaxed),
        2
    );
}

/// A peer that completes TLS but never sends the HTTP/2 preface is dropped
/// after the handshake timeout, as one that never completes TLS.
#[tokio::test]
async fn a_client_that_sends_no_preface_is_dropped() {
    let ca = TestCa::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        tls_handshake_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let server = Server::new(config, ca.server_config(BROKER), proxy);
    let shutdown = Shutdown::new();
    tokio::spawn({
        let (s, signal) = (server.clone(), shutdown.signal());
        async move { s.serve(listener, signal).await }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsConnector::from(ca.client_config(CLIENT))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    // TLS done; no HTTP/2 preface follows. The server's own settings may
    // arrive first; then it closes.
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the server kept a connection without a preface"
    );
    assert_eq!(
        server
            .stats()
            .connections_established
            .load(Ordering::Relaxed),
        0
    );
}

/// Once the client's certificate expires its connection takes no new
/// tunnel (GOAWAY); the open tunnel goes on, and the pool carries the next
/// tunnel over a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_takes_no_new_tunnel_after_the_client_certificate_expires() {
    let ca = TestCa::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let expires = std::time::SystemTime::now() + Duration::from_millis(500);
    let config = ServerConfig {
        peer_expiry: Some(crate::PeerExpiry(Arc::new(move |_| Some(expires)))),
        ..ServerConfig::default()
    };
    let server = Server::new(config, ca.server_config(BROKER), proxy);
    let shutdown = Shutdown::new();
    tokio::spawn({
        let (s, signal) = (server.clone(), shutdown.signal());
        async move { s.serve(listener, signal).await }
    });
    let target = echo_server().await;
    let pool = pool(&ca, 100);
    let mut open = pool.connect(&key(CLIENT, addr), target).await.unwrap();
    open.write_all(b"one").await.unwrap();
    let mut buf = [0; 3];
    open.read_exact(&mut buf).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The open tunnel still works...
    open.write_all(b"two").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"two");
    // ... and a new one goes over a new connection.
    let mut next = pool.connect(&key(CLIENT, addr), target).await.unwrap();
    next.write_all(b"new").await.unwrap();
    next.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"new");
    assert_eq!(
        server
            .stats()
            .connections_established
            .load(Ordering::Relaxed),
        2
    );
}

/// A pooled connection older than max_connection_age gets no new tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_pooled_connection_is_not_reused() {
    let ca = TestCa::new();
    let srv = start_server(&ca, proxy).await;
    let target = echo_server().await;
    let pool = Pool::new(
        PoolConfig {
            max_connection_age: Duration::from_millis(300),
            parallel_connections: 1,
            ..PoolConfig::default()
        },
        TestConnector::new(&ca, &[CLIENT]),
    );
    let first = pool.connect(&key(CLIENT, srv.addr), target).await.unwrap();
    drop(first);
    let again = pool.connect(&key(CLIENT, srv.addr), target).await.unwrap();
    drop(again);
    assert_eq!(
        pool.connection_count(&key(CLIENT, srv.addr)),
        1,
        "reused while young"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _late = pool.connect(&key(CLIENT, srv.addr), target).await.unwrap();
    assert_eq!(
        srv.server
            .stats()
            .connections_established
            .load(Ordering::Relaxed),
        2
    );
}
