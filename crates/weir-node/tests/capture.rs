//! In-pod capture against real iptables in network namespaces.
//!
//! Needs root, iproute2 and iptables (see `weir_testing::require_root`; set
//! `WEIR_SKIP_NETNS_TESTS=1` to skip where they are unavailable).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_node::capture::{orig_dst, CaptureRules, Netns, NetnsWorker, PROXY_MARK};
use weir_testing::{require_root, Host, TestNet};

const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const ECHO_PORT: u16 = 9000;

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn netns(host: &Host) -> Netns {
    Netns::open(&host.netns_path).expect("open host netns")
}

fn worker(host: &Host) -> NetnsWorker {
    NetnsWorker::spawn(&netns(host)).expect("start netns worker")
}

/// An echo server on `addr` inside the worker's namespace.
async fn spawn_echo(worker: &NetnsWorker, addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = worker.bind_listener(addr).await.expect("echo listener");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    })
}

/// The next connection on `listener`, or `None` within `wait`.
async fn accept_within(listener: &TcpListener, wait: Duration) -> Option<(TcpStream, SocketAddr)> {
    tokio::time::timeout(wait, listener.accept())
        .await
        .ok()
        .map(|r| r.expect("accept"))
}

async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    accept_within(listener, Duration::from_secs(5))
        .await
        .expect("no connection arrived on the listener")
}

async fn assert_no_accept(listener: &TcpListener, what: &str) {
    if let Some((_, peer)) = accept_within(listener, Duration::from_millis(300)).await {
        panic!("{what}: unexpected connection from {peer}");
    }
}

async fn assert_echo(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).await.unwrap();
    let mut buf = vec![0; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
        .await
        .expect("echo timed out")
        .expect("echo read");
    assert_eq!(buf, msg);
}

/// Data written by `client` arrives on `server`.
async fn assert_delivers(client: &mut TcpStream, server: &mut TcpStream) {
    client.write_all(b"hello").await.unwrap();
    let mut buf = [0; 5];
    tokio::time::timeout(Duration::from_secs(5), server.read_exact(&mut buf))
        .await
        .expect("read timed out")
        .unwrap();
    assert_eq!(&buf, b"hello");
}

fn nat_table(host: &Host) -> String {
    host.exec_ok("iptables-save", &["-t", "nat"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_is_redirected_marked_and_loopback_are_not() {
    if !require_root() {
        return;
    }
    let net = TestNet::new("out");
    let a = net.add_host("a", A);
    let b = net.add_host("b", B);
    let (wa, wb) = (worker(&a), worker(&b));
    let _echo = spawn_echo(&wb, addr(B, ECHO_PORT)).await;

    CaptureRules::default().install(&netns(&a)).unwrap();
    let outbound = wa
        .bind_listener(addr(Ipv4Addr::UNSPECIFIED, 15001))
        .await
        .unwrap();

    // An app socket (no mark) is redirected to 15001; SO_ORIGINAL_DST says
    // where it was going.
    let (client, accepted) = tokio::join!(wa.connect(addr(B, ECHO_PORT), None), accept(&outbound));
    let mut client = client.expect("captured connect");
    let (mut server, peer) = accepted;
    assert_eq!(peer, client.local_addr().unwrap());
    assert_eq!(orig_dst(&server).unwrap(), addr(B, ECHO_PORT));
    assert_delivers(&mut client, &mut server).await;

    // The proxy's own (marked) socket bypasses capture and reaches B.
    let mut marked = wa
        .connect(addr(B, ECHO_PORT), Some(PROXY_MARK))
        .await
        .expect("marked connect");
    assert_echo(&mut marked, b"marked goes straight through").await;
    assert_no_accept(&outbound, "marked socket was captured").await;

    // Loopback inside A is not captured.
    let local = wa
        .bind_listener(addr(Ipv4Addr::LOCALHOST, 9100))
        .await
        .unwrap();
    let (client, accepted) = tokio::join!(
        wa.connect(addr(Ipv4Addr::LOCALHOST, 9100), None),
        accept(&local)
    );
    client.expect("loopback connect");
    drop(accepted);
    assert_no_accept(&outbound, "loopback was captured").await;

    // Neither is traffic to the pod's own address (it leaves via lo).
    let own = wa.bind_listener(addr(A, 9101)).await.unwrap();
    let (client, accepted) = tokio::join!(wa.connect(addr(A, 9101), None), accept(&own));
    client.expect("pod-local connect");
    drop(accepted);
    assert_no_accept(&outbound, "pod-local traffic was captured").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_plaintext_is_redirected_hbone_is_not() {
    if !require_root() {
        return;
    }
    let net = TestNet::new("in");
    let a = net.add_host("a", A);
    let b = net.add_host("b", B);
    let (wa, wb) = (worker(&a), worker(&b));

    CaptureRules::default().install(&netns(&b)).unwrap();
    let plaintext = wb
        .bind_listener(addr(Ipv4Addr::UNSPECIFIED, 15006))
        .await
        .unwrap();
    let hbone = wb
        .bind_listener(addr(Ipv4Addr::UNSPECIFIED, 15008))
        .await
        .unwrap();

    // A (no capture there) dials B's app port: B redirects it to 15006.
    let (client, accepted) = tokio::join!(wa.connect(addr(B, ECHO_PORT), None), accept(&plaintext));
    let mut client = client.expect("connect to B:9000");
    let (mut server, peer) = accepted;
    assert_eq!(peer, addr(A, client.local_addr().unwrap().port()));
    assert_eq!(orig_dst(&server).unwrap(), addr(B, ECHO_PORT));
    assert_delivers(&mut client, &mut server).await;
    assert_no_accept(&hbone, "plaintext reached the HBONE listener").await;

    // HBONE goes to the 15008 listener untouched.
    let (client, accepted) = tokio::join!(wa.connect(addr(B, 15008), None), accept(&hbone));
    let mut client = client.expect("connect to B:15008");
    let (mut server, _) = accepted;
    assert_eq!(server.local_addr().unwrap(), addr(B, 15008));
    assert_delivers(&mut client, &mut server).await;
    assert_no_accept(&plaintext, "HBONE was redirected to 15006").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_is_idempotent_and_remove_is_exact() {
    if !require_root() {
        return;
    }
    let net = TestNet::new("rm");
    let a = net.add_host("a", A);
    let b = net.add_host("b", B);
    let (wa, wb) = (worker(&a), worker(&b));
    let _echo = spawn_echo(&wb, addr(B, ECHO_PORT)).await;
    let ns = netns(&a);

    // Removing from a namespace that never had rules is fine.
    CaptureRules::remove(&ns).unwrap();

    let rules = CaptureRules::default();
    rules.install(&ns).unwrap();
    rules.install(&ns).unwrap();
    let nat = nat_table(&a);
    let count = |needle: &str| nat.lines().filter(|l| l.starts_with(needle)).count();
    assert_eq!(count("-A OUTPUT -p tcp -j WEIR_OUTPUT"), 1, "{nat}");
    assert_eq!(count("-A PREROUTING -p tcp -j WEIR_PREROUTING"), 1, "{nat}");
    assert_eq!(count("-A WEIR_OUTPUT "), 4, "{nat}");
    assert_eq!(count("-A WEIR_PREROUTING "), 3, "{nat}");

    let outbound = wa
        .bind_listener(addr(Ipv4Addr::UNSPECIFIED, 15001))
        .await
        .unwrap();
    let (client, accepted) = tokio::join!(wa.connect(addr(B, ECHO_PORT), None), accept(&outbound));
    client.unwrap();
    drop(accepted);

    CaptureRules::remove(&ns).unwrap();
    let nat = nat_table(&a);
    assert!(!nat.contains("WEIR"), "{nat}");
    CaptureRules::remove(&ns).unwrap();

    // Without rules an app socket goes straight to B.
    let mut direct = wa.connect(addr(B, ECHO_PORT), None).await.unwrap();
    assert_echo(&mut direct, b"no capture any more").await;
    assert_no_accept(&outbound, "captured after remove").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcpdump_sees_plaintext_on_the_bridge() {
    if !require_root() {
        return;
    }
    let net = TestNet::new("dump");
    let a = net.add_host("a", A);
    let b = net.add_host("b", B);
    let (wa, wb) = (worker(&a), worker(&b));
    let _echo = spawn_echo(&wb, addr(B, ECHO_PORT)).await;
    let capture = net.tcpdump_filtered(weir_testing::BRIDGE, "tcp");
    let mut s = wa.connect(addr(B, ECHO_PORT), None).await.unwrap();
    assert_echo(&mut s, b"plaintext-marker-7e1f").await;
    let text = capture.stop();
    assert!(text.contains("plaintext-marker-7e1f"), "{text}");
    assert!(
        text.contains("198.18.0.2.") && text.contains("> 198.18.0.3.9000:"),
        "{text}"
    );
}

#[test]
fn harness_removes_its_namespaces() {
    if !require_root() {
        return;
    }
    let net = TestNet::new("clean");
    let a = net.add_host("a", A);
    let _b = net.add_host("b", B);
    // A worker parked in a namespace does not stop its name being removed.
    let _worker = worker(&a);
    let names = net.namespaces();
    assert_eq!(names.len(), 3);
    drop(net);
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    for name in &names {
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name.as_str())),
            "{name} still listed:\n{list}"
        );
    }
}
