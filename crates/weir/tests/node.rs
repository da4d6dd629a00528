//! End-to-end tests of `weir node`: real node proxies, real iptables capture
//! in network namespaces on a bridge (198.18.0.0/15), real applications.
//!
//! Needs root, iproute2, iptables, tcpdump, python3 and openssl (see
//! `weir_testing::require_root`; `WEIR_SKIP_NETNS_TESTS=1` skips them where
//! they cannot run). Tests run one at a time (`common::serial`).
//!
//! Layout used throughout: clients in Kubernetes namespace `apps` on node
//! `node-a`, the server workload `server` (labels `app: server`) in namespace
//! `data` on node `node-b`, an `outsider` host that is not a Workload.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use common::{
    client, iptables_save, serial, spiffe, start_servers, wait_for, workload, Ca, NodeProxy,
    TempDir,
};
use weir_testing::{require_root, Host, TestNet, BRIDGE};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const OUTSIDER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
/// The cluster IP of a Service with no Pod in the mesh (a plain host has it).
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);

const APP_PORT: u16 = 9000;
const METRICS_PORT: u16 = 9404;

const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const FAILED: &str = "istio_tcp_connections_failed_total";
const SENT: &str = "istio_tcp_sent_bytes_total";
const RECEIVED: &str = "istio_tcp_received_bytes_total";
const TLS_FAILURES: &str = "weir_tls_handshake_failures_total";
const RELOADS: &str = "weir_config_reloads_total";

/// The server workload, on node-b.
fn server_workload(server: &Host) -> String {
    workload("server", "data", "server", server, "node-b")
}

#[track_caller]
fn assert_reply(r: &common::ClientResult, marker: &str, what: &str) {
    assert!(
        r.connected && r.reply.contains(marker),
        "{what}: expected a reply containing {marker:?}, got {r:?}"
    );
}

#[track_caller]
fn assert_no_reply(r: &common::ClientResult, marker: &str, what: &str) {
    assert!(
        !r.reply.contains(marker),
        "{what}: the server's reply {marker:?} came through: {r:?}"
    );
}

/// Two proxies sharing one CA: node-a first (it creates the CA in `state`),
/// then node-b with the same state dir.
fn two_nodes(config: &[&Path], state: &Path) -> (NodeProxy, NodeProxy) {
    let a = NodeProxy::start_ready("node-a", config, Ca::StateDir(state), &[]);
    assert!(
        state.join("ca-cert.pem").exists() && state.join("ca-key.pem").exists(),
        "node-a did not create the CA files in {}",
        state.display()
    );
    let b = NodeProxy::start_ready("node-b", config, Ca::StateDir(state), &[]);
    (a, b)
}

#[test]
fn mesh_traffic_is_mtls_only() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("mtls");
    let client_host = net.add_host("client", CLIENT_IP);
    let server_host = net.add_host("server", SERVER_IP);
    let cfg = TempDir::new("mtls-cfg");
    let state = TempDir::new("mtls-ca");
    cfg.write(
        "workloads.yaml",
        &(workload("client", "apps", "client", &client_host, "node-a")
            + &server_workload(&server_host)),
    );
    let (node_a, node_b) = two_nodes(&[cfg.path()], state.path());
    let _server = start_servers(&server_host, &[(APP_PORT, "SERVER-REPLY-MARKER-67890")]);

    let capture = net.tcpdump_filtered(BRIDGE, "tcp");
    let payload = "PLAINTEXT-MARKER-12345";
    let r = client(&client_host, SERVER_IP, APP_PORT, payload);
    let text = capture.stop();
    assert_reply(
        &r,
        "SERVER-REPLY-MARKER-67890",
        "client -> server:9000 through the mesh",
    );

    // On the wire: HBONE to 15008 only, nothing readable, nothing to 9000.
    assert!(
        text.contains("> 198.18.0.3.15008:"),
        "no traffic to 198.18.0.3:15008 on the bridge:\n{text}"
    );
    assert!(
        !text.contains(payload),
        "payload in clear text on the bridge:\n{text}"
    );
    assert!(
        !text.contains("SERVER-REPLY-MARKER"),
        "reply in clear text on the bridge:\n{text}"
    );
    assert!(
        !text.contains("198.18.0.3.9000"),
        "packets to/from port 9000 on the bridge:\n{text}"
    );

    // Destination side: an mTLS connection from the client's identity.
    let client_id = spiffe("apps", "client");
    let server_id = spiffe("data", "server");
    let dst = [
        ("reporter", "destination"),
        ("connection_security_policy", "mutual_tls"),
        ("source_principal", client_id.as_str()),
        ("source_workload", "client"),
        ("source_workload_namespace", "apps"),
        ("destination_principal", server_id.as_str()),
        ("destination_workload", "server"),
        ("destination_workload_namespace", "data"),
        // Istio's other standard labels, as ztunnel fills them.
        ("source_canonical_service", "client"),
        ("source_canonical_revision", "latest"),
        ("source_app", "client"),
        ("source_version", "latest"),
        ("source_cluster", "Kubernetes"),
        ("destination_canonical_service", "server"),
        ("destination_app", "server"),
        ("destination_cluster", "Kubernetes"),
        ("destination_service", "unknown"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
    ];
    node_b.expect_metric_at_least(OPENED, &dst, 1.0);
    node_b.expect_metric_at_least(CLOSED, &dst, 1.0);
    node_b.expect_metric_at_least(RECEIVED, &dst, (payload.len() + 1) as f64);
    node_b.expect_metric_at_least(SENT, &dst, "SERVER-REPLY-MARKER-67890".len() as f64);
    // Source side.
    let src = [
        ("reporter", "source"),
        ("source_principal", client_id.as_str()),
        ("destination_workload", "server"),
    ];
    node_a.expect_metric_at_least(OPENED, &src, 1.0);
    node_a.expect_metric_at_least(RECEIVED, &src, (payload.len() + 1) as f64);

    // The admin endpoint dumps the config as JSON, with the local workload.
    let (code, body) = common::http_get(node_b.admin, "/config_dump").expect("GET /config_dump");
    assert_eq!(code, 200, "/config_dump: {body}");
    let dump: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/config_dump is not JSON ({e}): {body}"));
    assert!(
        dump.to_string().contains("198.18.0.3"),
        "/config_dump lacks the server workload: {dump:#}"
    );

    // One access log line per closed connection, on the destination's node.
    assert!(
        node_b.wait_log("weir::access"),
        "no weir::access line in node-b's log:\n{}",
        node_b.log_text()
    );
    // Each node logs the bytes from its workload's side (as ztunnel): the
    // client's node says it sent what the server's node says it received.
    assert!(node_a.wait_log("weir::access"), "{}", node_a.log_text());
    let bytes = |log: &str| -> (u64, u64) {
        let line = log
            .lines()
            .find(|l| l.contains("weir::access") && l.contains("dst.addr=198.18.0.3:9000"))
            .unwrap_or_else(|| panic!("no access line for :9000 in\n{log}"));
        let field = |name: &str| -> u64 {
            line.split(name)
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|d| d.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line}"))
        };
        (field("bytes_received="), field("bytes_sent="))
    };
    let (a_received, a_sent) = bytes(&node_a.log_text());
    let (b_received, b_sent) = bytes(&node_b.log_text());
    assert_eq!((a_sent, a_received), (b_received, b_sent));
    assert!(a_sent >= payload.len() as u64 && b_sent >= "SERVER-REPLY-MARKER-67890".len() as u64);
    assert_ne!(a_sent, b_sent, "request and reply differ in size");
}

#[test]
fn strict_refuses_plaintext_and_port_exception_admits() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("strict");
    let client_host = net.add_host("client", CLIENT_IP);
    let server_host = net.add_host("server", SERVER_IP);
    let outsider = net.add_host("outsider", OUTSIDER_IP);
    let cfg = TempDir::new("strict-cfg");
    let state = TempDir::new("strict-ca");
    cfg.write(
        "workloads.yaml",
        &(workload("client", "apps", "client", &client_host, "node-a")
            + &server_workload(&server_host)),
    );
    cfg.write(
        "peer-authentication.yaml",
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: data}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: metrics-exception, namespace: data}
spec:
  selector: {matchLabels: {app: server}}
  mtls: {mode: UNSET}
  portLevelMtls:
    9404: {mode: PERMISSIVE}
",
    );
    let (node_a, node_b) = two_nodes(&[cfg.path()], state.path());
    let _servers = start_servers(
        &server_host,
        &[
            (APP_PORT, "REPLY-FROM-9000"),
            (METRICS_PORT, "REPLY-FROM-9404"),
        ],
    );

    // A non-mesh caller on the STRICT port: closed without the reply.
    let r = client(&outsider, SERVER_IP, APP_PORT, "plaintext-to-9000");
    assert_no_reply(
        &r,
        "REPLY-FROM-9000",
        "outsider -> server:9000 under STRICT",
    );
    // ... but the port-level PERMISSIVE exception admits it on 9404.
    let r = client(&outsider, SERVER_IP, METRICS_PORT, "plaintext-to-9404");
    assert_reply(
        &r,
        "REPLY-FROM-9404",
        "outsider -> server:9404 (PERMISSIVE port)",
    );
    // A mesh client still reaches the STRICT port.
    let r = client(&client_host, SERVER_IP, APP_PORT, "mesh-to-9000");
    assert_reply(
        &r,
        "REPLY-FROM-9000",
        "mesh client -> server:9000 under STRICT",
    );

    // A mesh workload reaching a non-mesh address: passed through as plain TCP.
    let _outside_app = start_servers(&outsider, &[(APP_PORT, "OUTSIDER-REPLY")]);
    let capture = net.tcpdump_filtered(BRIDGE, "tcp");
    let r = client(&client_host, OUTSIDER_IP, APP_PORT, "passthrough-payload");
    let text = capture.stop();
    assert_reply(
        &r,
        "OUTSIDER-REPLY",
        "mesh client -> non-mesh outsider:9000 (passthrough)",
    );
    assert!(
        text.contains("> 198.18.0.4.9000:") && !text.contains("198.18.0.4.15008"),
        "passthrough did not go straight to 198.18.0.4:9000:\n{text}"
    );

    // Passthrough is reported by the client's node without mTLS and, as
    // ztunnel does, without a source principal (none was presented).
    node_a.expect_metric_at_least(
        OPENED,
        &[
            ("reporter", "source"),
            ("source_workload", "client"),
            ("source_principal", "unknown"),
            ("destination_workload", "unknown"),
            ("connection_security_policy", "unknown"),
        ],
        1.0,
    );

    // The admitted plaintext connection is reported without mTLS.
    node_b.expect_metric_at_least(
        OPENED,
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "unknown"),
            ("source_principal", "unknown"),
            ("destination_workload", "server"),
        ],
        1.0,
    );
}

/// The app sees the real caller's address, through HBONE and as plaintext
/// (ztunnel's source preservation), unless `--no-preserve-source-ip`.
#[test]
fn app_sees_the_client_address() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("srcip");
    let client_host = net.add_host("client", CLIENT_IP);
    let server_host = net.add_host("server", SERVER_IP);
    let outsider = net.add_host("outsider", OUTSIDER_IP);
    let cfg = TempDir::new("srcip-cfg");
    let state = TempDir::new("srcip-ca");
    cfg.write(
        "workloads.yaml",
        &(workload("client", "apps", "client", &client_host, "node-a")
            + &server_workload(&server_host)),
    );
    let (_node_a, node_b) = two_nodes(&[cfg.path()], state.path());
    let _server = start_servers(&server_host, &[(APP_PORT, "SRCIP-REPLY")]);

    let through_mesh = client(&client_host, SERVER_IP, APP_PORT, "hbone");
    assert_reply(&through_mesh, "SRCIP-REPLY", "client -> server over HBONE");
    assert!(
        through_mesh.reply.contains(&format!("peer={CLIENT_IP}\n")),
        "over HBONE the app saw another address than the client's: {through_mesh:?}\n{}",
        node_b.log_text()
    );
    // No PeerAuthentication: PERMISSIVE, so the outsider's plaintext is admitted.
    let plaintext = client(&outsider, SERVER_IP, APP_PORT, "plaintext");
    assert_reply(&plaintext, "SRCIP-REPLY", "outsider -> server as plaintext");
    assert!(
        plaintext.reply.contains(&format!("peer={OUTSIDER_IP}\n")),
        "as plaintext the app saw another address than the outsider's: {plaintext:?}"
    );
    // The pod holds the rule and route that return the app's replies.
    let rules = server_host.exec_ok("ip", &["-4", "rule", "show"]);
    assert!(
        rules.contains("fwmark 0x111/0xfff iif lo lookup 100"),
        "no source-routing rule in the server's namespace:\n{rules}"
    );
    drop(node_b);

    // Switched off: the app sees the pod's own address.
    let _node_b = NodeProxy::start_ready(
        "node-b",
        &[cfg.path()],
        Ca::StateDir(state.path()),
        &["--no-preserve-source-ip"],
    );
    let r = client(&client_host, SERVER_IP, APP_PORT, "hbone-again");
    assert_reply(&r, "SRCIP-REPLY", "client -> server, preservation off");
    assert!(
        r.reply.contains(&format!("peer={SERVER_IP}\n")),
        "with --no-preserve-source-ip the app should see its own address: {r:?}"
    );
}

/// The only ALLOW policy of the server: principal allowed only.
const ALLOW_ONLY_ALLOWED: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-allowed, namespace: data}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/apps/sa/allowed]
";

#[test]
fn authorization_denial_counted() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("authz");
    let allowed = net.add_host("allowed", CLIENT_IP);
    let server = net.add_host("server", SERVER_IP);
    let other = net.add_host("other", OTHER_IP);
    let cfg = TempDir::new("authz-cfg");
    let state = TempDir::new("authz-ca");
    cfg.write(
        "workloads.yaml",
        &(workload("allowed", "apps", "allowed", &allowed, "node-a")
            + &workload("other", "apps", "other", &other, "node-a")
            + &server_workload(&server)),
    );
    cfg.write("policy.yaml", ALLOW_ONLY_ALLOWED);
    let (_node_a, node_b) = two_nodes(&[cfg.path()], state.path());
    let _app = start_servers(&server, &[(APP_PORT, "AUTHZ-REPLY")]);

    let r = client(&allowed, SERVER_IP, APP_PORT, "from-allowed");
    assert_reply(&r, "AUTHZ-REPLY", "sa allowed -> server");
    let r = client(&other, SERVER_IP, APP_PORT, "from-other");
    assert_no_reply(&r, "AUTHZ-REPLY", "sa other -> server (not allowed)");

    let other_id = spiffe("apps", "other");
    let denied = [
        ("reporter", "destination"),
        ("response_flags", "DENY"),
        ("source_principal", other_id.as_str()),
        ("destination_workload", "server"),
    ];
    node_b.expect_metric_at_least(FAILED, &denied, 1.0);
    node_b.expect_metric_at_least(OPENED, &denied, 1.0);
    node_b.expect_metric_at_least(CLOSED, &denied, 1.0);
    // The allowed connection is not flagged.
    let allowed_id = spiffe("apps", "allowed");
    node_b.expect_metric_at_least(
        OPENED,
        &[
            ("reporter", "destination"),
            ("response_flags", "-"),
            ("source_principal", allowed_id.as_str()),
        ],
        1.0,
    );
    let text = node_b.metrics_text();
    let wrongly_denied =
        common::metric_sum(&text, FAILED, &[("source_principal", allowed_id.as_str())]);
    assert_eq!(
        wrongly_denied,
        0.0,
        "allowed connection counted as failed:\n{}",
        common::metric_lines(&text, FAILED)
    );
}

/// Makes a foreign CA and a leaf it signed that claims `id`, with openssl.
/// Returns (leaf cert, leaf key).
fn foreign_leaf(dir: &TempDir, id: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let d = dir.path();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "ca.key",
    ]);
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=foreign-ca",
        "-days",
        "1",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "leaf.key",
    ]);
    run(&[
        "req",
        "-new",
        "-key",
        "leaf.key",
        "-subj",
        "/CN=intruder",
        "-out",
        "leaf.csr",
    ]);
    std::fs::write(
        d.join("leaf.ext"),
        format!(
            "subjectAltName=critical,URI:{id}\nextendedKeyUsage=clientAuth,serverAuth\n\
             keyUsage=critical,digitalSignature\n"
        ),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
    (d.join("leaf.pem"), d.join("leaf.key"))
}

#[test]
fn foreign_ca_refused() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("foreign");
    let client_host = net.add_host("client", CLIENT_IP);
    let server_host = net.add_host("server", SERVER_IP);
    let outsider = net.add_host("outsider", OUTSIDER_IP);
    let cfg = TempDir::new("foreign-cfg");
    cfg.write(
        "workloads.yaml",
        &(workload("client", "apps", "client", &client_host, "node-a")
            + &server_workload(&server_host)),
    );
    // Two state dirs: two unrelated CAs.
    let state_a = TempDir::new("foreign-ca-a");
    let state_b = TempDir::new("foreign-ca-b");
    let node_a = NodeProxy::start_ready("node-a", &[cfg.path()], Ca::StateDir(state_a.path()), &[]);
    let node_b = NodeProxy::start_ready("node-b", &[cfg.path()], Ca::StateDir(state_b.path()), &[]);
    assert_ne!(
        std::fs::read(state_a.join("ca-cert.pem")).unwrap(),
        std::fs::read(state_b.join("ca-cert.pem")).unwrap(),
        "the two state dirs hold the same CA"
    );
    let _app = start_servers(&server_host, &[(APP_PORT, "FOREIGN-REPLY")]);

    // Mesh client -> server across the two CAs: the client side (node-a)
    // verifies node-b's certificate first (TLS 1.3: the server's Certificate
    // comes first) and refuses it.
    let r = client(&client_host, SERVER_IP, APP_PORT, "across-cas");
    assert_no_reply(&r, "FOREIGN-REPLY", "client -> server with foreign CAs");
    node_a.expect_metric_at_least(
        TLS_FAILURES,
        &[("direction", "outbound"), ("reason", "unknown_ca")],
        1.0,
    );
    // node-b saw the client abort the handshake (it rejected node-b's
    // certificate): that failure is counted too.
    node_b.expect_metric_at_least(
        TLS_FAILURES,
        &[("direction", "inbound"), ("reason", "peer_alert")],
        1.0,
    );
    let text = node_b.metrics_text();
    assert_eq!(
        common::metric_sum(
            &text,
            OPENED,
            &[
                ("reporter", "destination"),
                ("source_principal", spiffe("apps", "client").as_str())
            ]
        ),
        0.0,
        "node-b admitted a connection:\n{}",
        common::metric_lines(&text, OPENED)
    );

    // The server side verifies too: a client certificate from a foreign CA
    // (claiming a valid mesh identity) presented straight to node-b's HBONE
    // port is refused with unknown_ca.
    let before = node_b.metric(
        TLS_FAILURES,
        &[("direction", "inbound"), ("reason", "unknown_ca")],
    );
    let pki = TempDir::new("foreign-pki");
    let (cert, key) = foreign_leaf(&pki, &spiffe("apps", "client"));
    let out = outsider.exec(
        "timeout",
        &[
            "10",
            "openssl",
            "s_client",
            "-connect",
            "198.18.0.3:15008",
            "-tls1_3",
            "-alpn",
            "h2",
            "-cert",
            &cert.to_string_lossy(),
            "-key",
            &key.to_string_lossy(),
        ],
    );
    let s_client = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut now = before;
    let counted = wait_for(Duration::from_secs(10), || {
        now = node_b.metric(
            TLS_FAILURES,
            &[("direction", "inbound"), ("reason", "unknown_ca")],
        );
        now >= before + 1.0
    });
    let text = node_b.metrics_text();
    assert!(
        counted,
        "node-b did not count the foreign client certificate as inbound unknown_ca \
         ({before} -> {now}). Lines:\n{}\nopenssl s_client {s_client}\nlog:\n{}",
        common::metric_lines(&text, TLS_FAILURES),
        node_b.log_text()
    );
}

#[test]
fn bad_reload_keeps_old_config() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("reload");
    let allowed = net.add_host("allowed", CLIENT_IP);
    let server = net.add_host("server", SERVER_IP);
    let other = net.add_host("other", OTHER_IP);
    let cfg = TempDir::new("reload-cfg");
    let state = TempDir::new("reload-ca");
    cfg.write(
        "workloads.yaml",
        &(workload("allowed", "apps", "allowed", &allowed, "node-a")
            + &workload("other", "apps", "other", &other, "node-a")
            + &server_workload(&server)),
    );
    cfg.write("policy.yaml", ALLOW_ONLY_ALLOWED);
    let (_node_a, node_b) = two_nodes(&[cfg.path()], state.path());
    let _app = start_servers(&server, &[(APP_PORT, "RELOAD-REPLY")]);

    let check_old_decisions = |when: &str| {
        let r = client(&allowed, SERVER_IP, APP_PORT, "from-allowed");
        assert_reply(&r, "RELOAD-REPLY", &format!("{when}: sa allowed -> server"));
        let r = client(&other, SERVER_IP, APP_PORT, "from-other");
        assert_no_reply(&r, "RELOAD-REPLY", &format!("{when}: sa other -> server"));
    };
    check_old_decisions("initial config");

    // An invalid change: an unknown field. Refused, logged with file and
    // field, counted; the old policy stays in force.
    cfg.write(
        "policy.yaml",
        &ALLOW_ONLY_ALLOWED.replace("principals:", "principalz:"),
    );
    std::thread::sleep(Duration::from_millis(2500)); // two reload intervals
    let errors = node_b.expect_metric_at_least(RELOADS, &[("result", "error")], 1.0);
    assert!(
        node_b.wait_log("principalz"),
        "node-b's log does not name the bad field:\n{}",
        node_b.log_text()
    );
    let log = node_b.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("principalz"))
        .unwrap_or_default();
    assert!(
        line.contains("policy.yaml"),
        "the error line does not name the file: {line:?}\nfull log:\n{log}"
    );
    check_old_decisions("after an invalid reload");

    // A valid change takes effect: deny sa allowed as well.
    let successes_before = node_b.metric(RELOADS, &[("result", "success")]);
    cfg.write(
        "policy.yaml",
        &format!(
            "{ALLOW_ONLY_ALLOWED}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-allowed, namespace: data}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  action: DENY
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/apps/sa/allowed]
"
        ),
    );
    let mut last = None;
    let applied = wait_for(Duration::from_secs(10), || {
        let r = client(&allowed, SERVER_IP, APP_PORT, "from-allowed-after-deny");
        let denied = !r.reply.contains("RELOAD-REPLY");
        last = Some(r);
        denied
    });
    assert!(
        applied,
        "the valid DENY policy did not take effect within 10s: last {last:?}\nlog:\n{}",
        node_b.log_text()
    );
    node_b.expect_metric_at_least(RELOADS, &[("result", "success")], successes_before + 1.0);
    // No further errors once the file is valid again.
    let errors_after_fix = node_b.metric(RELOADS, &[("result", "error")]);
    assert!(errors_after_fix >= errors);
    std::thread::sleep(Duration::from_millis(2500));
    let errors_now = node_b.metric(RELOADS, &[("result", "error")]);
    assert_eq!(
        errors_now,
        errors_after_fix,
        "reload errors keep growing after the fix; log:\n{}",
        node_b.log_text()
    );
    node_b.expect_metric_at_least(
        FAILED,
        &[
            ("reporter", "destination"),
            ("response_flags", "DENY"),
            ("source_principal", spiffe("apps", "allowed").as_str()),
        ],
        1.0,
    );
}

#[test]
fn rules_removed_on_exit() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("exit");
    let client_host = net.add_host("client", CLIENT_IP);
    let cfg = TempDir::new("exit-cfg");
    let state = TempDir::new("exit-ca");
    cfg.write(
        "workloads.yaml",
        &workload("client", "apps", "client", &client_host, "node-a"),
    );
    let before = iptables_save(&client_host);
    assert!(
        !before.contains("WEIR"),
        "rules before the proxy started:\n{before}"
    );

    let mut node_a =
        NodeProxy::start_ready("node-a", &[cfg.path()], Ca::StateDir(state.path()), &[]);
    let installed = iptables_save(&client_host);
    assert!(
        installed.contains("WEIR"),
        "no WEIR rules in the workload's namespace while the proxy runs:\n{installed}"
    );
    assert!(
        installed.contains("*mangle") && installed.contains("CONNMARK --set-xmark 0x111/0xfff"),
        "no source-preservation rules in the mangle table:\n{installed}"
    );
    let routing = client_host.exec_ok("ip", &["-4", "rule", "show"])
        + &client_host.exec_ok("ip", &["-4", "route", "show", "table", "100"]);
    assert!(
        routing.contains("lookup 100") && routing.contains("local default dev lo"),
        "no source-routing rule and route in the workload's namespace:\n{routing}"
    );
    let listening = client_host.exec_ok("ss", &["-ltn"]);
    for port in ["15001", "15006", "15008"] {
        assert!(
            listening.contains(&format!(":{port} ")),
            "nothing listens on {port} in the workload's namespace:\n{listening}"
        );
    }

    let (status, on_its_own) = node_a
        .terminate(Duration::from_secs(10))
        .expect("the proxy was running");
    let log = node_a.log_text();
    assert!(
        on_its_own,
        "node-a did not exit within 10s of SIGTERM (killed); log:\n{log}"
    );
    let after = iptables_save(&client_host);
    assert!(
        !after.contains("WEIR"),
        "WEIR rules left after SIGTERM (exit status {status}):\n{after}\nlog:\n{log}"
    );
    let routing = client_host.exec_ok("ip", &["-4", "rule", "show"])
        + &client_host.exec_ok("ip", &["-4", "route", "show", "table", "all"]);
    assert!(
        !routing.contains("lookup 100") && !routing.contains("table 100"),
        "source routing left after SIGTERM:\n{routing}"
    );
    assert!(
        status.success(),
        "node-a exited with {status} after SIGTERM; log:\n{log}"
    );
}

#[test]
fn sighup_reloads_config() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("hup");
    let server = net.add_host("server", SERVER_IP);
    let cfg = TempDir::new("hup-cfg");
    let state = TempDir::new("hup-ca");
    cfg.write("workloads.yaml", &server_workload(&server));
    // Periodic reloads effectively off: only SIGHUP can pick the change up.
    let node_b = NodeProxy::start_ready(
        "node-b",
        &[cfg.path()],
        Ca::StateDir(state.path()),
        &["--reload-interval", "1h"],
    );
    let dump = |p: &NodeProxy| {
        let (code, body) = common::http_get(p.admin, "/config_dump").expect("GET /config_dump");
        assert_eq!(code, 200, "/config_dump: {body}");
        body
    };
    assert!(!dump(&node_b).contains("added-by-sighup"));
    cfg.write(
        "policy.yaml",
        &ALLOW_ONLY_ALLOWED.replace("only-allowed", "added-by-sighup"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !dump(&node_b).contains("added-by-sighup"),
        "reloaded without SIGHUP despite --reload-interval 1h"
    );
    let pid = node_b.pid().expect("running").to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut last = String::new();
    let reloaded = wait_for(Duration::from_secs(10), || {
        last = dump(&node_b);
        last.contains("added-by-sighup")
    });
    assert!(
        reloaded,
        "SIGHUP did not reload the config; /config_dump:\n{last}\nlog:\n{}",
        node_b.log_text()
    );
    node_b.expect_metric_at_least(RELOADS, &[("result", "success")], 1.0);
}

/// A cgroup whose path names a Pod UID the way the kubelet's does
/// (`...-pod<uid>`), to stand in for a Pod's cgroup on this machine.
/// Removed on drop (after the processes in it are gone).
struct PodCgroup {
    dir: std::path::PathBuf,
}

impl PodCgroup {
    /// In the first writable cgroup hierarchy (v2 root, v2 under
    /// /sys/fs/cgroup/unified, or v1 pids); `None` if there is none.
    fn new(uid: &str) -> Option<PodCgroup> {
        let name = format!("weir-test{}-pod{uid}", std::process::id());
        [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup/pids",
        ]
        .iter()
        .map(Path::new)
        .filter(|h| h.join("cgroup.procs").exists())
        .find_map(|h| {
            let dir = h.join(&name);
            std::fs::create_dir(&dir).ok()?;
            Some(PodCgroup { dir })
        })
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("cannot move pid {pid} into {}: {e}", self.dir.display()));
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // The processes were killed first; an emptied cgroup may take a
        // moment to be removable.
        wait_for(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.dir).is_ok()
        });
    }
}

/// Cluster mode: a Workload made from a Pod carries the Pod's UID
/// (`weir.dev/pod-uid`) and a `netns` that names nothing (the runtime's
/// name is unknown to the API). The node proxy must find the Pod's network
/// namespace from a process whose cgroup path names the UID, and serve it.
#[test]
fn pod_network_namespace_is_found_by_uid() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    const UID: &str = "7d3c1a52-9e0b-4f6d-8c21-5b4a3e2f1d09";
    let Some(cgroup) = PodCgroup::new(UID) else {
        eprintln!("SKIPPED: no writable cgroup hierarchy to stand in for a Pod's cgroup");
        return;
    };
    let net = TestNet::new("poduid");
    let client_host = net.add_host("client", CLIENT_IP);
    let server_host = net.add_host("server", SERVER_IP);
    // The Pod's container: the server, in the Pod's cgroup.
    let server = start_servers(&server_host, &[(APP_PORT, "POD-UID-REPLY")]);
    cgroup.add(server.id());

    let cfg = TempDir::new("poduid-cfg");
    let state = TempDir::new("poduid-ca");
    let pod = format!(
        "---\napiVersion: weir.dev/v1alpha1\nkind: Workload\n\
         metadata: {{name: server, namespace: data, labels: {{app: server}},\n\
         \x20 annotations: {{weir.dev/pod-uid: {UID}}}}}\n\
         spec:\n  serviceAccount: server\n  address: {SERVER_IP}\n  node: node-b\n\
         \x20 netns: cni-not-a-name-this-machine-has\n"
    );
    cfg.write(
        "workloads.yaml",
        &(workload("client", "apps", "client", &client_host, "node-a") + &pod),
    );
    let (_node_a, node_b) = two_nodes(&[cfg.path()], state.path());

    let r = client(&client_host, SERVER_IP, APP_PORT, "to-the-pod");
    assert_reply(&r, "POD-UID-REPLY", "client -> pod found by its UID");
    node_b.expect_metric_at_least(
        OPENED,
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
            ("destination_workload", "server"),
        ],
        1.0,
    );
    // The capture rules went into the Pod's namespace.
    assert!(
        iptables_save(&server_host).contains("WEIR"),
        "no capture rules in the pod's namespace:\n{}",
        iptables_save(&server_host)
    );
    drop(server);
}

/// A node proxy started with a --node no Workload names says so (with the
/// nodes the config does name) instead of idling silently. No namespaces:
/// it serves nothing, so --no-capture is enough.
#[test]
fn a_node_that_serves_nothing_says_which_nodes_exist() {
    let cfg = TempDir::new("ghost-cfg");
    let state = TempDir::new("ghost-ca");
    cfg.write(
        "w.yaml",
        "apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: a, namespace: apps}\nspec: {address: 198.18.0.2, node: node-a, netns: a}\n---\napiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: b, namespace: apps}\nspec: {address: 198.18.0.3, node: node-b, netns: b}\n",
    );
    let mut p = NodeProxy::start(
        "node-typo",
        &[cfg.path()],
        Ca::StateDir(state.path()),
        &["--no-capture"],
    );
    p.wait_ready();
    let log = p.log_text();
    assert!(
        log.contains(r#"no Workload has spec.node "node-typo""#)
            && log.contains("nodes in the config: node-a, node-b"),
        "{log}"
    );
}

/// A Service's cluster IP (a virtual address no host has): the client's
/// node sends the connection over HBONE to a Workload the Service selects,
/// at the port's targetPort, as ztunnel does for a service VIP; the
/// server's STRICT policy admits it (it is mTLS). A Workload that is not
/// ready gets none of them; a Service whose Workloads are all not ready
/// refuses the connection; a Service that selects no mesh Workload is passed
/// through to its address.
#[test]
fn service_cluster_ip_reaches_a_selected_workload_over_hbone() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("vip");
    let client_host = net.add_host("client", CLIENT_IP);
    let server_host = net.add_host("server", SERVER_IP);
    let outsider = net.add_host("plain", EMPTY_VIP);
    let cfg = TempDir::new("vip-cfg");
    let state = TempDir::new("vip-ca");
    cfg.write(
        "mesh.yaml",
        &(workload("client", "apps", "client", &client_host, "node-a")
            + &server_workload(&server_host)
            + "---
apiVersion: weir.dev/v1alpha1
kind: Service
metadata: {name: bootstrap, namespace: data}
spec:
  selector: {app: server}
  clusterIP: 198.18.0.100
  ports: [{name: client, port: 80, targetPort: 9000}]
---
apiVersion: weir.dev/v1alpha1
kind: Service
metadata: {name: empty, namespace: data}
spec:
  selector: {app: nobody}
  clusterIP: 198.18.0.101
  ports: [{name: client, port: 80}]
---
# Selected by `bootstrap` too, but not ready (and nothing has its address):
# a connection sent to it would fail.
apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {name: server-starting, namespace: data, labels: {app: server}}
spec: {serviceAccount: server, address: 198.18.0.60, node: node-c, ready: false}
---
apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {name: warming-0, namespace: data, labels: {app: warming}}
spec: {address: 198.18.0.61, node: node-c, ready: false}
---
apiVersion: weir.dev/v1alpha1
kind: Service
metadata: {name: warming, namespace: data}
spec:
  selector: {app: warming}
  clusterIP: 198.18.0.102
  ports: [{name: client, port: 80}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: data}
spec: {mtls: {mode: STRICT}}
"),
    );
    let (node_a, node_b) = two_nodes(&[cfg.path()], state.path());
    let _server = start_servers(&server_host, &[(APP_PORT, "VIP-REPLY-MARKER")]);

    let capture = net.tcpdump_filtered(BRIDGE, "tcp");
    let vip = Ipv4Addr::new(198, 18, 0, 100);
    let r = client(&client_host, vip, 80, "through-the-vip");
    let text = capture.stop();
    assert_reply(
        &r,
        "VIP-REPLY-MARKER",
        "client -> Service cluster IP 198.18.0.100:80",
    );
    assert!(
        text.contains("> 198.18.0.3.15008:") && !text.contains("198.18.0.100"),
        "the cluster IP connection did not go over HBONE to the server:\n{text}"
    );
    let client_id = spiffe("apps", "client");
    node_b.expect_metric_at_least(
        OPENED,
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
            ("source_principal", client_id.as_str()),
            ("destination_workload", "server"),
        ],
        1.0,
    );
    node_a.expect_metric_at_least(
        OPENED,
        &[
            ("reporter", "source"),
            ("destination_workload", "server"),
            ("connection_security_policy", "mutual_tls"),
            ("destination_service", "bootstrap.data.svc.cluster.local"),
            ("destination_service_name", "bootstrap"),
            ("destination_service_namespace", "data"),
        ],
        1.0,
    );
    // Every connection goes to the ready Workload: were the not-ready one
    // picked (at random, as often as the other) one would fail.
    for i in 0..12 {
        let r = client(&client_host, vip, 80, &format!("ready-only-{i}"));
        assert_reply(&r, "VIP-REPLY-MARKER", "a connection to the cluster IP");
    }
    // No ready Workload: refused at the source, and said why.
    let warming = Ipv4Addr::new(198, 18, 0, 102);
    let r = client(&client_host, warming, 80, "to-a-warming-service");
    assert!(r.reply.is_empty(), "{r:?}");
    node_a.expect_metric_at_least(
        FAILED,
        &[
            ("reporter", "source"),
            ("response_flags", "CONNECT"),
            ("destination_service_name", "warming"),
        ],
        1.0,
    );
    assert!(
        node_a.wait_log("Service data/warming has no ready Workload (1 not ready)"),
        "{}",
        node_a.log_text()
    );

    // A Service none of whose Pods is in the mesh (kube-dns, a database in
    // a namespace outside it): passed through to its address as plain TCP,
    // as without a proxy (here a plain host has the address).
    let _plain = start_servers(&outsider, &[(80, "PLAIN-BACKEND-REPLY")]);
    let r = client(&client_host, EMPTY_VIP, 80, "to-a-plain-service");
    assert_reply(
        &r,
        "PLAIN-BACKEND-REPLY",
        "client -> Service with no mesh Pod",
    );
    node_a.expect_metric_at_least(
        OPENED,
        &[
            ("reporter", "source"),
            ("destination_workload", "unknown"),
            ("connection_security_policy", "unknown"),
        ],
        1.0,
    );
}

/// Connections the node proxy must not make for anyone:
/// - a packet that reaches the pod addressed to another IP is redirected
///   like any inbound TCP, but the proxy does not relay it there (a sender
///   on the link could otherwise use the pod as a relay that skips its
///   outbound capture);
/// - an app that connects to the outbound listener itself (loopback is not
///   captured) gets a closed connection, not a proxy that dials its own
///   listener until it runs out of file descriptors.
#[test]
fn the_proxy_relays_nothing_and_never_dials_itself() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("relay");
    let server_host = net.add_host("server", SERVER_IP);
    let outsider = net.add_host("outsider", OUTSIDER_IP);
    let other = net.add_host("other", OTHER_IP);
    let cfg = TempDir::new("relay-cfg");
    let state = TempDir::new("relay-ca");
    cfg.write("workloads.yaml", &server_workload(&server_host));
    // Without source preservation a relayed connection would come from the
    // pod's own address, so the other host's reply would find its way back.
    let node_b = NodeProxy::start_ready(
        "node-b",
        &[cfg.path()],
        Ca::StateDir(state.path()),
        &["--no-preserve-source-ip"],
    );
    let _server = start_servers(&server_host, &[(APP_PORT, "SERVER-REPLY")]);
    let _other = start_servers(&other, &[(APP_PORT, "RELAYED")]);

    // The outsider sends its packets for `other` to the server pod.
    outsider.exec_ok(
        "ip",
        &[
            "route",
            "add",
            &format!("{OTHER_IP}/32"),
            "via",
            &SERVER_IP.to_string(),
        ],
    );
    let r = client(&outsider, OTHER_IP, APP_PORT, "relay-me");
    assert_no_reply(&r, "RELAYED", "outsider -> other through the server pod");
    // The workload itself is still reached (PERMISSIVE, no policy).
    let r = client(&outsider, SERVER_IP, APP_PORT, "to-the-server");
    assert_reply(&r, "SERVER-REPLY", "outsider -> server as plaintext");

    // The app dials the outbound listener over loopback.
    let r = client(&server_host, Ipv4Addr::LOCALHOST, 15001, "loop");
    assert!(r.reply.is_empty(), "{r:?}");
    let pid = node_b.pid().expect("node-b runs");
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    std::thread::sleep(Duration::from_millis(500));
    assert!(fds() < 200, "node-b holds {} file descriptors", fds());
    let r = client(&outsider, SERVER_IP, APP_PORT, "still-serving");
    assert_reply(
        &r,
        "SERVER-REPLY",
        "outsider -> server after the loop attempt",
    );
}

/// As ztunnel: an open connection that a new policy denies is closed, not
/// left running until it ends by itself.
#[test]
fn an_open_connection_a_new_policy_denies_is_closed() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let net = TestNet::new("revoke");
    let client_host = net.add_host("client", CLIENT_IP);
    let server_host = net.add_host("server", SERVER_IP);
    let cfg = TempDir::new("revoke-cfg");
    let state = TempDir::new("revoke-ca");
    cfg.write(
        "workloads.yaml",
        &(workload("client", "apps", "client", &client_host, "node-a")
            + &server_workload(&server_host)),
    );
    let (_node_a, node_b) = two_nodes(&[cfg.path()], state.path());
    let script = cfg.write("echo.py", common::ECHO_PY);
    let server = common::Py::spawn(&server_host, &script, &["serve", "9100"]);
    assert_eq!(
        server.expect_line("listening", Duration::from_secs(10)),
        "listening"
    );
    let held = common::Py::spawn(
        &client_host,
        &script,
        &["hold", &SERVER_IP.to_string(), "9100"],
    );
    assert_eq!(
        held.next_line(Duration::from_secs(10)).as_deref(),
        Some("echoed"),
        "{}",
        node_b.log_text()
    );
    // A policy change that does not concern it leaves it open...
    let reloads = node_b.metric(RELOADS, &[("result", "success")]);
    cfg.write(
        "allow-client.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: data}
spec:
  rules:
  - from:
    - source: {principals: [cluster.local/ns/apps/sa/client]}
",
    );
    node_b.expect_metric_at_least(RELOADS, &[("result", "success")], reloads + 1.0);
    assert!(
        held.next_line(Duration::from_secs(2)).is_none(),
        "closed by an unrelated change"
    );
    // ... a DENY of its principal closes it.
    cfg.write(
        "deny-client.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: data}
spec:
  action: DENY
  rules:
  - from:
    - source: {principals: [cluster.local/ns/apps/sa/client]}
",
    );
    assert_eq!(
        held.next_line(Duration::from_secs(15)).as_deref(),
        Some("closed"),
        "{}",
        node_b.log_text()
    );
    let log = node_b.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("closed by a config change") && l.contains("deny-client"))
        .unwrap_or_else(|| panic!("no access log line for the closed connection:\n{log}"));
    assert!(line.contains("policy=\"data/deny-client\""), "{line}");
    // The bytes it moved before it was closed (the first line and pings
    // each way), not zeros.
    for field in ["bytes_received=", "bytes_sent="] {
        let n: u64 = line
            .split(field)
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {line}"));
        assert!(n > 0, "{field}0 in {line}");
    }
}
