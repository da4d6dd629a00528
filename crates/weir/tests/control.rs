//! End-to-end tests of `weir control`: the real binary as the control plane
//! (CA + config), two real `weir node --control` proxies with iptables
//! capture in network namespaces on a bridge (198.18.0.0/15), real
//! applications; the control plane listens on loopback.
//!
//! - `control_plane_signs_and_pushes`: traffic between two workloads over
//!   HBONE with certificates the control plane signed; a DENY policy added to
//!   its config directory reaches the nodes and takes effect; a node asking
//!   for another node's identity is refused, logged and counted.
//! - `nodes_fail_static_while_the_control_plane_is_down`: the control plane
//!   is killed (SIGKILL) under traffic: a long-running connection keeps
//!   flowing and new connections are accepted with the last config; a change
//!   made while it is down takes effect once it is back and the nodes resync.
//!
//! Needs what `node.rs` needs (root, iproute2, iptables, tcpdump, python3).
//!
//! Layout: clients `apps/client` and `apps/other` on node-a, the server
//! `data/server` (labels `app: server`) on node-b.

mod common;

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    client, http_get, metric_lines, metric_sum, python, serial, spiffe, start_servers, wait_for,
    workload, Py, TempDir, ECHO_PY,
};
use rustls_pki_types::pem::PemObject;
use weir_testing::{require_root, Host, HostChild, TestNet};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
const APP_PORT: u16 = 9000;
const ECHO_PORT: u16 = 9100;

const TOKEN_A: &str = "node-a-bootstrap-token-0f3c9d";
const TOKEN_B: &str = "node-b-bootstrap-token-7a21e4";

const OPENED: &str = "istio_tcp_connections_opened_total";
const CSR: &str = "weir_control_csr_total";
const CONNECTED: &str = "weir_control_connected";
const UPDATES: &str = "weir_control_updates_total";

/// Denies `apps/other` at the server.
const DENY_OTHER: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-other, namespace: data}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/apps/sa/other]
";

fn step(t0: Instant, what: &str) {
    eprintln!("[control e2e {:>6.1}s] {what}", t0.elapsed().as_secs_f64());
}

fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A `weir` process in the root namespace: log to a file, SIGTERM then
/// SIGKILL on drop, its log printed when a test panics.
struct Weir {
    name: String,
    args: Vec<OsString>,
    child: Option<Child>,
    log: PathBuf,
    /// `/metrics` of the process.
    metrics: SocketAddr,
    /// Where readiness is polled (`/healthz/ready`).
    ready: SocketAddr,
}

impl Weir {
    fn spawn(
        name: &str,
        args: Vec<OsString>,
        log: PathBuf,
        metrics: SocketAddr,
        ready: SocketAddr,
    ) -> Weir {
        let mut w = Weir {
            name: name.to_owned(),
            args,
            child: None,
            log,
            metrics,
            ready,
        };
        w.start();
        w
    }

    fn start(&mut self) {
        let file = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(&self.args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{} exited ({status}); log:\n{}", self.name, self.log_text());
            }
            match http_get(self.ready, "/healthz/ready") {
                Ok((200, _)) => return,
                Ok((code, body)) => last = format!("HTTP {code}: {}", body.trim()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} not ready within 30s (last: {last}); log:\n{}",
            self.name,
            self.log_text()
        );
    }

    fn metrics_text(&self) -> String {
        match http_get(self.metrics, "/metrics") {
            Ok((200, body)) => body,
            other => panic!(
                "{}: GET /metrics: {other:?}; log:\n{}",
                self.name,
                self.log_text()
            ),
        }
    }

    /// Waits (`secs`) until `metric(name, labels)` satisfies `ok`.
    #[track_caller]
    fn expect_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        secs: u64,
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let mut value = f64::NAN;
        let mut text = String::new();
        let done = wait_for(Duration::from_secs(secs), || {
            text = http_get(self.metrics, "/metrics")
                .map(|r| r.1)
                .unwrap_or_default();
            value = metric_sum(&text, name, labels);
            ok(value)
        });
        assert!(
            done,
            "{}: {name}{labels:?} = {value}, not as expected. Lines:\n{}\n--- log:\n{}",
            self.name,
            metric_lines(&text, name),
            self.log_text()
        );
        value
    }

    /// SIGKILL: a crash, no chance to close anything.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut f = File::options().append(true).open(&self.log).unwrap();
        let _ = writeln!(
            f,
            "----- test harness: {} killed (SIGKILL) -----",
            self.name
        );
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        self.terminate();
        if std::thread::panicking() || std::env::var_os("WEIR_E2E_LOGS").is_some_and(|v| v == "1") {
            eprintln!(
                "===== log of {} =====\n{}\n===== end of {} =====",
                self.name,
                self.log_text(),
                self.name
            );
        }
    }
}

/// The control plane, two node proxies and three hosts.
struct Mesh {
    _net: TestNet,
    client: Host,
    server: Host,
    other: Host,
    cfg: TempDir,
    state: TempDir,
    api: SocketAddr,
    control: Weir,
    node_a: Weir,
    node_b: Weir,
    _servers: HostChild,
    dir: TempDir,
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

impl Mesh {
    fn start(tag: &str, t0: Instant) -> Mesh {
        let net = TestNet::new(tag);
        let client = net.add_host("client", CLIENT_IP);
        let server = net.add_host("server", SERVER_IP);
        let other = net.add_host("other", OTHER_IP);
        let dir = TempDir::new(&format!("{tag}-files"));
        let cfg = TempDir::new(&format!("{tag}-cfg"));
        let state = TempDir::new(&format!("{tag}-ca"));
        cfg.write(
            "workloads.yaml",
            &(workload("client", "apps", "client", &client, "node-a")
                + &workload("other", "apps", "other", &other, "node-a")
                + &workload("server", "data", "server", &server, "node-b")),
        );
        let tokens = dir.write(
            "tokens.yaml",
            &format!("nodes:\n  node-a: {TOKEN_A}\n  node-b: {TOKEN_B}\n"),
        );
        let token_a = dir.write("token-a", TOKEN_A);
        let token_b = dir.write("token-b", TOKEN_B);

        let [api, cp_metrics] = free_ports::<2>();
        let api = loopback(api);
        let mut control = Weir::spawn(
            "control",
            [
                os(&["control", "--config"]),
                vec![cfg.path().into()],
                os(&["--listen", &api.to_string()]),
                os(&["--metrics-addr", &loopback(cp_metrics).to_string()]),
                os(&["--node-tokens"]),
                vec![tokens.into()],
                os(&["--state-dir"]),
                vec![state.path().into()],
                os(&["--reload-interval", "200ms"]),
            ]
            .concat(),
            dir.join("control.log"),
            loopback(cp_metrics),
            loopback(cp_metrics),
        );
        control.wait_ready();
        let root = state.join("ca-cert.pem");
        assert!(
            root.exists(),
            "the control plane did not create {}",
            root.display()
        );
        step(t0, "control plane ready");

        let node = |name: &str, token: &Path| {
            let [admin, metrics, ready] = free_ports::<3>();
            Weir::spawn(
                name,
                [
                    os(&["node", "--node", name, "--control", &api.to_string()]),
                    os(&["--control-token-file"]),
                    vec![token.into()],
                    os(&["--control-ca"]),
                    vec![root.clone().into()],
                    // No CA here: a node with --control never reads it.
                    os(&["--state-dir"]),
                    vec![dir.join(&format!("{name}-no-ca")).into()],
                    os(&["--admin-addr", &loopback(admin).to_string()]),
                    os(&["--metrics-addr", &loopback(metrics).to_string()]),
                    os(&["--readiness-addr", &loopback(ready).to_string()]),
                    os(&["--drain-timeout", "1s"]),
                ]
                .concat(),
                dir.join(&format!("{name}.log")),
                loopback(metrics),
                loopback(ready),
            )
        };
        let mut node_a = node("node-a", &token_a);
        let mut node_b = node("node-b", &token_b);
        node_a.wait_ready();
        node_b.wait_ready();
        step(t0, "node proxies ready");
        let servers = start_servers(&server, &[(APP_PORT, "SERVER-REPLY")]);
        Mesh {
            _net: net,
            client,
            server,
            other,
            cfg,
            state,
            api,
            control,
            node_a,
            node_b,
            _servers: servers,
            dir,
        }
    }
}

#[track_caller]
fn assert_reply(r: &common::ClientResult, what: &str) {
    assert!(
        r.connected && r.reply.contains("SERVER-REPLY"),
        "{what}: expected the server's reply, got {r:?}"
    );
}

#[track_caller]
fn assert_denied(r: &common::ClientResult, what: &str) {
    assert!(
        !r.reply.contains("SERVER-REPLY"),
        "{what}: the server's reply came through: {r:?}"
    );
}

/// Retries `client` until `ok` holds (config changes take a moment).
fn eventually(
    what: &str,
    mut f: impl FnMut() -> common::ClientResult,
    ok: impl Fn(&common::ClientResult) -> bool,
) {
    let mut last = None;
    let done = wait_for(Duration::from_secs(20), || {
        let r = f();
        let good = ok(&r);
        last = Some(r);
        good
    });
    assert!(done, "{what}: never happened; last result {last:?}");
}

#[test]
fn control_plane_signs_and_pushes() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    let mesh = Mesh::start("cp", t0);

    // Both nodes' certificates come from the control plane; the nodes hold
    // no CA.
    mesh.control
        .expect_metric(CSR, &[("result", "signed")], 10, |v| v >= 3.0);
    assert!(!mesh.dir.join("node-a-no-ca").join("ca-key.pem").exists());

    // Traffic over HBONE with those certificates.
    let r = client(&mesh.client, SERVER_IP, APP_PORT, "hello");
    assert_reply(&r, "client -> server");
    let r = client(&mesh.other, SERVER_IP, APP_PORT, "hello");
    assert_reply(&r, "other -> server");
    let client_id = spiffe("apps", "client");
    mesh.node_b.expect_metric(
        OPENED,
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
            ("source_principal", client_id.as_str()),
            ("destination_workload", "server"),
        ],
        10,
        |v| v >= 1.0,
    );
    step(t0, "traffic over HBONE with control-plane certificates");

    // A DENY policy added to the control plane's config reaches node-b.
    mesh.cfg.write("deny.yaml", DENY_OTHER);
    mesh.node_b
        .expect_metric(UPDATES, &[("result", "applied")], 20, |v| v >= 2.0);
    eventually(
        "other -> server denied after the DENY policy",
        || client(&mesh.other, SERVER_IP, APP_PORT, "after-deny"),
        |r| !r.reply.contains("SERVER-REPLY"),
    );
    let r = client(&mesh.client, SERVER_IP, APP_PORT, "still-allowed");
    assert_reply(&r, "client -> server after the DENY policy");
    mesh.node_b.expect_metric(
        "istio_tcp_connections_failed_total",
        &[
            ("response_flags", "DENY"),
            ("source_principal", spiffe("apps", "other").as_str()),
        ],
        10,
        |v| v >= 1.0,
    );
    // The policy selects a workload of node-b only: node-a's view did not
    // change (it got no update for it).
    let a_updates = metric_sum(
        &mesh.node_a.metrics_text(),
        UPDATES,
        &[("result", "applied")],
    );
    assert_eq!(
        a_updates, 1.0,
        "node-a got an update for a policy of node-b"
    );
    step(t0, "DENY policy pushed and enforced");

    // node-a asks for node-b's workload identity: refused, logged, counted.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let root =
        rustls_pki_types::CertificateDer::from_pem_file(mesh.state.join("ca-cert.pem")).unwrap();
    let err = rt.block_on(async {
        let c = weir_control::ControlClient::new(
            weir_control::ClientOptions::new(
                mesh.api.to_string(),
                "node-a",
                TOKEN_A,
                root.clone(),
                weir_core::MeshSettings::default(),
            ),
            Default::default(),
        )
        .unwrap();
        let foreign: weir_core::SpiffeId = spiffe("data", "server").parse().unwrap();
        c.create_certificate(&foreign, "any CSR".into(), Duration::from_secs(3600))
            .await
            .unwrap_err()
    });
    assert!(
        err.to_string().contains("permission") || err.to_string().contains("Permission"),
        "{err}"
    );
    mesh.control
        .expect_metric(CSR, &[("result", "denied")], 10, |v| v >= 1.0);
    let log = mesh.control.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("certificate signing request refused")
                && l.contains("node-a")
                && l.contains("spiffe://cluster.local/ns/data/sa/server")),
        "no structured refusal in the control plane's log:\n{log}"
    );
    // A token that is not node-b's does not make you node-b.
    let err = rt.block_on(async {
        let c = weir_control::ControlClient::new(
            weir_control::ClientOptions::new(
                mesh.api.to_string(),
                "node-b",
                TOKEN_A,
                root,
                weir_core::MeshSettings::default(),
            ),
            Default::default(),
        )
        .unwrap();
        let id: weir_core::SpiffeId = spiffe("data", "server").parse().unwrap();
        c.create_certificate(&id, "any CSR".into(), Duration::from_secs(3600))
            .await
            .unwrap_err()
    });
    assert!(
        err.to_string().contains("the token is not its token"),
        "{err}"
    );
    mesh.control
        .expect_metric(CSR, &[("result", "unauthenticated")], 10, |v| v >= 1.0);
    step(t0, "foreign identity and wrong token refused");
}

#[test]
fn nodes_fail_static_while_the_control_plane_is_down() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    let mut mesh = Mesh::start("cpdown", t0);
    mesh.cfg.write("deny.yaml", DENY_OTHER);
    eventually(
        "other -> server denied",
        || client(&mesh.other, SERVER_IP, APP_PORT, "x"),
        |r| !r.reply.contains("SERVER-REPLY"),
    );

    let script = mesh.dir.write("echo.py", ECHO_PY);
    let echo_server = Py::spawn(&mesh.server, &script, &["serve", &ECHO_PORT.to_string()]);
    assert_eq!(
        echo_server.expect_line("listening", Duration::from_secs(10)),
        "listening"
    );
    let stop = mesh.dir.join("stop-echo");
    let long = Py::spawn(
        &mesh.client,
        &script,
        &[
            "run",
            &SERVER_IP.to_string(),
            &ECHO_PORT.to_string(),
            &stop.to_string_lossy(),
        ],
    );
    assert_eq!(
        long.expect_line("connected", Duration::from_secs(10)),
        "connected"
    );
    step(t0, "long-running connection open");

    // Crash the control plane under traffic.
    std::thread::sleep(Duration::from_millis(500));
    mesh.control.kill9();
    for node in [&mesh.node_a, &mesh.node_b] {
        node.expect_metric(CONNECTED, &[], 20, |v| v == 0.0);
    }
    step(t0, "control plane killed; nodes disconnected");

    // New connections are accepted, with the last config: the DENY stays.
    for i in 0..3 {
        let r = client(
            &mesh.client,
            SERVER_IP,
            APP_PORT,
            &format!("while-down-{i}"),
        );
        assert_reply(&r, "client -> server while the control plane is down");
    }
    let r = client(&mesh.other, SERVER_IP, APP_PORT, "while-down");
    assert_denied(
        &r,
        "other -> server while the control plane is down (last config)",
    );
    // A change while it is down: the DENY policy is removed.
    std::fs::remove_file(mesh.cfg.join("deny.yaml")).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let r = client(&mesh.other, SERVER_IP, APP_PORT, "still-down");
    assert_denied(&r, "other -> server before the control plane is back");
    step(
        t0,
        "fail-static: new connections served with the last config",
    );

    // Back (same CA, tokens and port): the nodes resync.
    mesh.control.start();
    mesh.control.wait_ready();
    for node in [&mesh.node_a, &mesh.node_b] {
        node.expect_metric(CONNECTED, &[], 30, |v| v == 1.0);
    }
    eventually(
        "other -> server allowed after the resync",
        || client(&mesh.other, SERVER_IP, APP_PORT, "after-restart"),
        |r| r.reply.contains("SERVER-REPLY"),
    );
    let log = mesh.control.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("config stream opened") && l.contains("node-b") && l.contains("full=false")),
        "node-b did not resume with what it held (expected a difference, not a full snapshot):\n{log}"
    );
    step(t0, "control plane back; change made while down took effect");

    // The long-running connection flowed the whole time.
    std::fs::write(&stop, "").unwrap();
    let summary = long.expect_line("summary", Duration::from_secs(15));
    let v: serde_json::Value =
        serde_json::from_str(&summary).unwrap_or_else(|e| panic!("bad summary {summary:?}: {e}"));
    assert!(
        v["error"].is_null(),
        "long-running connection broke: {summary}"
    );
    let (sent, echoed) = (v["sent"].as_u64().unwrap(), v["echoed"].as_u64().unwrap());
    assert_eq!(sent, echoed, "{summary}");
    // It was open before the kill and stopped only now, after the resync.
    assert!(echoed > 20, "too few round trips: {summary}");
    // The certificates the nodes hold came from the first control-plane
    // instance; nothing needed re-issuing to keep serving.
    assert_eq!(
        metric_sum(
            &mesh.node_b.metrics_text(),
            "weir_control_certificate_requests_total",
            &[("result", "error")]
        ),
        0.0
    );
    step(t0, "long-running connection never broke");
}

/// `GET http://127.0.0.1:<port><path>` from inside `host`: (status, body).
fn get_in(host: &Host, port: u16, path: &str) -> (u16, String) {
    const GET_PY: &str = "import sys, urllib.request, urllib.error\n\
try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=5); code, body = r.status, r.read()\n\
except urllib.error.HTTPError as e:\n    code, body = e.code, e.read()\n\
except Exception as e:\n    code, body = 0, repr(e).encode()\n\
sys.stdout.write(str(code) + '\\n' + body.decode(errors='replace'))\n";
    let out = host.exec(
        python(),
        &["-c", GET_PY, &format!("http://127.0.0.1:{port}{path}")],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, body) = text.split_once('\n').unwrap_or((&text, ""));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn gateway_docs(ports: &[u16]) -> String {
    let mut docs = String::new();
    for p in ports {
        docs += &format!(
            "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tcp-{p}, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {p}, name: tcp-{p}, protocol: TCP}}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: to-server-{p}, namespace: istio-system}}
spec:
  hosts: [\"*\"]
  gateways: [tcp-{p}]
  tcp:
  - match: [{{port: {p}}}]
    route: [{{destination: {{host: \"{SERVER_IP}\", port: {{number: {APP_PORT}}}}}}}]
"
        );
    }
    docs
}

/// `weir gateway --control`: the gateway's config (Gateway, VirtualService)
/// and its certificate come from the control plane, and a change pushed
/// later opens a new listener. The control plane and the gateway run in
/// one network namespace ("infra"), the client and the (non-mesh) backend
/// in their own.
#[test]
fn gateway_gets_config_and_certificate_from_the_control_plane() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    let net = TestNet::new("cpgw");
    let client_host = net.add_host("client", CLIENT_IP);
    let server = net.add_host("server", SERVER_IP);
    let infra = net.add_host("infra", Ipv4Addr::new(198, 18, 0, 6));
    let _servers = start_servers(&server, &[(APP_PORT, "SERVER-REPLY")]);
    let dir = TempDir::new("cpgw-files");
    let cfg = TempDir::new("cpgw-cfg");
    let state = TempDir::new("cpgw-ca");
    cfg.write("gateway.yaml", &gateway_docs(&[9443]));
    const GW_TOKEN: &str = "gateway-bootstrap-token-5be07c";
    let tokens = dir.write(
        "tokens.yaml",
        &format!(
            "nodes:\n  node-a: {TOKEN_A}\ngateways:\n  ingress:\n    token: {GW_TOKEN}\n    identities: [{}]\n",
            spiffe("istio-system", "weir-gateway")
        ),
    );
    let gw_token = dir.write("gw-token", GW_TOKEN);

    let log = |name: &str| File::create(dir.join(&format!("{name}.log"))).unwrap();
    let mut cmd = infra.command(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["control", "--config"])
        .arg(cfg.path())
        .args([
            "--listen",
            "127.0.0.1:15012",
            "--metrics-addr",
            "127.0.0.1:15014",
        ])
        .arg("--node-tokens")
        .arg(&tokens)
        .arg("--state-dir")
        .arg(state.path())
        .args(["--reload-interval", "200ms"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log("control"))
        .stderr(log("control"));
    let _control = infra.spawn_command(cmd);
    let dump = |what: &str| {
        format!(
            "{what}\n--- control log:\n{}\n--- gateway log:\n{}",
            std::fs::read_to_string(dir.join("control.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
        )
    };
    assert!(
        wait_for(Duration::from_secs(20), || get_in(
            &infra,
            15014,
            "/healthz/ready"
        )
        .0 == 200),
        "{}",
        dump("control plane not ready")
    );
    step(t0, "control plane ready");

    let mut cmd = infra.command(env!("CARGO_BIN_EXE_weir"));
    cmd.args([
        "gateway",
        "--control",
        "127.0.0.1:15012",
        "--control-token-file",
    ])
    .arg(&gw_token)
    .arg("--control-ca")
    .arg(state.join("ca-cert.pem"))
    // No CA here: with --control the gateway never reads one.
    .arg("--state-dir")
    .arg(dir.join("gateway-no-ca"))
    .env("RUST_LOG", "info")
    .stdin(Stdio::null())
    .stdout(log("gateway"))
    .stderr(log("gateway"));
    let _gateway = infra.spawn_command(cmd);
    assert!(
        wait_for(Duration::from_secs(20), || get_in(
            &infra,
            15021,
            "/healthz/ready"
        )
        .0 == 200),
        "{}",
        dump("gateway not ready")
    );
    step(t0, "gateway ready");

    let r = client(&client_host, infra.addr, 9443, "hello");
    assert!(
        r.reply.contains("SERVER-REPLY"),
        "{}",
        dump(&format!("through the pushed route: {r:?}"))
    );
    let (_, cp_metrics) = get_in(&infra, 15014, "/metrics");
    assert!(
        metric_sum(&cp_metrics, CSR, &[("result", "signed")]) >= 1.0,
        "the gateway's certificate was signed by the control plane:\n{}",
        metric_lines(&cp_metrics, CSR)
    );
    assert!(!dir.join("gateway-no-ca").join("ca-key.pem").exists());

    // A change to the control plane's config reaches the gateway.
    cfg.write("gateway.yaml", &gateway_docs(&[9443, 9444]));
    assert!(
        wait_for(Duration::from_secs(20), || {
            client(&client_host, infra.addr, 9444, "hello")
                .reply
                .contains("SERVER-REPLY")
        }),
        "{}",
        dump("the pushed second listener")
    );
    step(t0, "done");
}
