//! Helpers for end-to-end tests that run the real `weir` binary against
//! network namespaces created by `weir_testing::TestNet`.
//!
//! - [`NodeProxy`]: a `weir node` process in the root namespace, with its own
//!   admin/metrics/readiness ports and a log file; SIGTERM (then SIGKILL) on
//!   drop so it removes its iptables rules. On a panicking test its log is
//!   printed, as evidence.
//! - [`http_get`], [`metric_sum`]: plain HTTP/1.0 and a Prometheus text parser.
//! - [`App`]: tiny python3 TCP servers and clients run inside a host.
//! - [`TempDir`]: a directory removed on drop.
#![allow(dead_code)]

pub mod gateway;
pub mod kafka;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use weir_testing::{Host, HostChild};

/// Node-proxy tests start several processes that each install iptables rules
/// (the xtables lock is global) on a 2-core machine: run them one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Temporary directories

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "weir-e2e-{}-{}-{tag}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` atomically (a hidden temp file, then rename), so a proxy
    /// that re-reads the directory never sees half a file.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Config documents

/// A `weir.dev/v1alpha1` Workload in `host`'s network namespace.
pub fn workload(name: &str, namespace: &str, sa: &str, host: &Host, node: &str) -> String {
    let netns = host
        .netns_path
        .file_name()
        .expect("netns path has a file name")
        .to_string_lossy();
    format!(
        "---\napiVersion: weir.dev/v1alpha1\nkind: Workload\n\
         metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}\n\
         spec:\n  serviceAccount: {sa}\n  address: {addr}\n  node: {node}\n  netns: {netns}\n",
        addr = host.addr
    )
}

/// The SPIFFE id of a service account in the default trust domain.
pub fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}

// ---------------------------------------------------------------------------
// HTTP and metrics

/// `GET path` over HTTP/1.0; returns (status, body). Bounded by 5 s.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no HTTP status line in {head:?}"),
            )
        })?;
    Ok((status, body.to_string()))
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the Prometheus/OpenMetrics text format (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let name = line[..name_end].to_string();
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if rest.starts_with('{') {
            let mut chars = rest[1..].char_indices();
            let mut key = String::new();
            let mut val = String::new();
            let mut in_val = false;
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if in_val {
                    match c {
                        '\\' => match chars.next() {
                            Some((_, 'n')) => val.push('\n'),
                            Some((_, other)) => val.push(other),
                            None => break,
                        },
                        '"' => {
                            labels.push((key.trim().to_string(), std::mem::take(&mut val)));
                            key.clear();
                            in_val = false;
                        }
                        _ => val.push(c),
                    }
                } else {
                    match c {
                        '}' => {
                            end = Some(i + 2);
                            break;
                        }
                        '"' => in_val = true,
                        '=' | ',' => {}
                        _ => key.push(c),
                    }
                }
            }
            let Some(end) = end else { continue };
            rest = &rest[end..];
        }
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Sum of the samples named `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse_metrics(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .sum()
}

/// The lines of `text` that mention `name` (for assertion messages).
pub fn metric_lines(text: &str, name: &str) -> String {
    text.lines()
        .filter(|l| l.contains(name))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// Node proxies

/// Where a node proxy gets its CA.
pub enum Ca<'a> {
    /// `--state-dir DIR` (created on first use, shared by later proxies).
    StateDir(&'a Path),
    /// `--ca-cert DIR/ca-cert.pem --ca-key DIR/ca-key.pem`.
    Files(&'a Path),
}

fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// Starts the `weir` binary with `args`, stdout and stderr to `log`.
fn spawn_weir(args: &[OsString], log: File) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// A `weir node` process (root namespace). SIGTERM, then SIGKILL, on drop.
pub struct NodeProxy {
    pub name: String,
    child: Option<Child>,
    /// The full argument list, so [`Self::restart`] starts it the same way.
    args: Vec<OsString>,
    pub log: PathBuf,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub ready: SocketAddr,
    _logdir: TempDir,
}

impl NodeProxy {
    /// Starts `weir node --config <config>... --node <name>` with fresh local
    /// admin/metrics/readiness ports, `--reload-interval 1s` and
    /// `--drain-timeout 1s` unless `extra` overrides them.
    pub fn start(name: &str, config: &[&Path], ca: Ca<'_>, extra: &[&str]) -> NodeProxy {
        let [admin, metrics, ready] = free_ports::<3>();
        let loopback = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        let logdir = TempDir::new(&format!("log-{name}"));
        let log = logdir.join(&format!("{name}.log"));
        let file = File::create(&log).unwrap();
        // Collects the arguments; spawn_weir runs them (also on restart).
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.arg("node").arg("--config").args(config);
        cmd.args(["--node", name]);
        match ca {
            Ca::StateDir(d) => {
                cmd.arg("--state-dir").arg(d);
            }
            Ca::Files(d) => {
                cmd.arg("--ca-cert")
                    .arg(d.join("ca-cert.pem"))
                    .arg("--ca-key")
                    .arg(d.join("ca-key.pem"));
            }
        }
        cmd.args(["--admin-addr", &loopback(admin).to_string()]);
        cmd.args(["--metrics-addr", &loopback(metrics).to_string()]);
        cmd.args(["--readiness-addr", &loopback(ready).to_string()]);
        if !extra.contains(&"--reload-interval") {
            cmd.args(["--reload-interval", "1s"]);
        }
        if !extra.contains(&"--drain-timeout") {
            cmd.args(["--drain-timeout", "1s"]);
        }
        cmd.args(extra);
        let args: Vec<OsString> = cmd.get_args().map(OsString::from).collect();
        let child = spawn_weir(&args, file);
        NodeProxy {
            name: name.to_string(),
            child: Some(child),
            args,
            log,
            admin: loopback(admin),
            metrics: loopback(metrics),
            ready: loopback(ready),
            _logdir: logdir,
        }
    }

    /// Starts and waits for readiness (see [`Self::wait_ready`]).
    pub fn start_ready(name: &str, config: &[&Path], ca: Ca<'_>, extra: &[&str]) -> NodeProxy {
        let mut p = Self::start(name, config, ca, extra);
        p.wait_ready();
        p
    }

    /// Everything the proxy wrote to stdout/stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `/healthz/ready` until 200 (20 s); panics with the log if the
    /// proxy exits or never gets ready.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last: String;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited ({status}) before it was ready; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            match http_get(self.ready, "/healthz/ready") {
                Ok((200, _)) => return,
                Ok((code, body)) => last = format!("HTTP {code}: {}", body.trim()),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not ready within 20s (last: {last}); log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `/metrics` text (panics if it cannot be fetched).
    pub fn metrics_text(&self) -> String {
        match http_get(self.metrics, "/metrics") {
            Ok((200, body)) => body,
            Ok((code, body)) => panic!("{}: GET /metrics: HTTP {code}: {body}", self.name),
            Err(e) => panic!(
                "{}: GET /metrics: {e}; log:\n{}",
                self.name,
                self.log_text()
            ),
        }
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics_text(), name, labels)
    }

    /// Waits (10 s) until `metric(name, labels) >= min`; panics with the
    /// metric's lines and the log otherwise. Returns the value.
    #[track_caller]
    pub fn expect_metric_at_least(&self, name: &str, labels: &[(&str, &str)], min: f64) -> f64 {
        let mut value = 0.0;
        let mut text = String::new();
        let ok = wait_for(Duration::from_secs(10), || {
            text = self.metrics_text();
            value = metric_sum(&text, name, labels);
            value >= min
        });
        assert!(
            ok,
            "{}: expected {name}{labels:?} >= {min}, got {value}. Lines:\n{}\n--- log of {}:\n{}",
            self.name,
            metric_lines(&text, name),
            self.name,
            self.log_text()
        );
        value
    }

    /// Waits (10 s) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        wait_for(Duration::from_secs(10), || self.log_text().contains(needle))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then up to `grace` for the process to exit, then SIGKILL.
    /// Returns the exit status and whether it exited on its own.
    pub fn terminate(&mut self, grace: Duration) -> Option<(ExitStatus, bool)> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some((status, true));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((status, true));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok().map(|s| (s, false))
    }
}

impl NodeProxy {
    /// Restarts the proxy as an operator would: SIGTERM, wait (up to
    /// `grace`) for it to exit on its own, then start it again with the same
    /// arguments (same ports, config, CA) and wait until it is ready. The new
    /// process appends to the same log. Panics (with the log) if it had to be
    /// killed. Returns how long the proxy was down.
    pub fn restart(&mut self, grace: Duration) -> Duration {
        let down_at = Instant::now();
        let (status, on_its_own) = self
            .terminate(grace)
            .unwrap_or_else(|| panic!("{} was not running", self.name));
        assert!(
            on_its_own,
            "{} did not exit within {grace:?} of SIGTERM (killed, {status}); log:\n{}",
            self.name,
            self.log_text()
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap();
        let _ = writeln!(
            file,
            "----- test harness: {} exited ({status}); restarting -----",
            self.name
        );
        self.child = Some(spawn_weir(&self.args, file));
        self.wait_ready();
        down_at.elapsed()
    }
}

impl Drop for NodeProxy {
    fn drop(&mut self) {
        // WEIR_E2E_LOGS=1: show every proxy's final metrics and log.
        let verbose = std::env::var_os("WEIR_E2E_LOGS").is_some_and(|v| v == "1");
        if verbose {
            if let Ok((_, body)) = http_get(self.metrics, "/metrics") {
                eprintln!("===== final metrics of {} =====\n{body}", self.name);
            }
        }
        self.terminate(Duration::from_secs(5));
        if verbose || std::thread::panicking() {
            eprintln!(
                "===== log of node proxy {} =====\n{}\n===== end of {} =====",
                self.name,
                self.log_text(),
                self.name
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Applications inside hosts

const APP_PY: &str = r#"
import json, socket, sys, threading

def handle(c, addr, reply):
    c.settimeout(10)
    data = b""
    try:
        while b"\n" not in data:
            d = c.recv(65536)
            if not d:
                break
            data += d
        c.sendall(reply.encode() + b" peer=" + addr[0].encode() + b"\n")
        c.shutdown(socket.SHUT_WR)
        while c.recv(65536):
            pass
    except Exception:
        pass
    finally:
        c.close()

def serve(port, reply):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(128)
    return s

def accept_loop(s, reply):
    while True:
        c, addr = s.accept()
        threading.Thread(target=handle, args=(c, addr, reply), daemon=True).start()

def server(specs):
    socks = []
    for spec in specs:
        port, reply = spec.split(":", 1)
        socks.append((serve(int(port), reply), reply))
    for s, reply in socks:
        threading.Thread(target=accept_loop, args=(s, reply), daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()

def client(host, port, payload):
    res = {"connected": False, "reply": "", "error": None}
    buf = b""
    try:
        c = socket.create_connection((host, int(port)), timeout=5)
        res["connected"] = True
        c.sendall(payload.encode() + b"\n")
        while True:
            d = c.recv(65536)
            if not d:
                break
            buf += d
    except Exception as e:
        res["error"] = repr(e)
    res["reply"] = buf.decode(errors="replace")
    print(json.dumps(res), flush=True)

if sys.argv[1] == "server":
    server(sys.argv[2:])
else:
    client(sys.argv[2], sys.argv[3], sys.argv[4])
"#;

/// The real python3 interpreter (resolved once through any pyenv shim).
pub fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        // Resolve the real interpreter once (a pyenv shim needs more
        // environment than `ip netns exec` may keep).
        Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "python3".to_string())
    })
}

fn app_script() -> &'static Path {
    static SCRIPT: OnceLock<PathBuf> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        // One shared file (not one per run), replaced atomically.
        let dir = std::env::temp_dir();
        let p = dir.join("weir-e2e-app.py");
        let tmp = dir.join(format!(".weir-e2e-app-{}.py", std::process::id()));
        std::fs::write(&tmp, APP_PY).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    })
}

/// What a client saw.
#[derive(Debug, Clone)]
pub struct ClientResult {
    pub connected: bool,
    pub reply: String,
    pub error: Option<String>,
    pub raw: String,
}

/// Starts TCP servers inside `host`: for each `(port, reply)`, every
/// connection gets `"<reply> peer=<source ip>\n"` after the client's first
/// line. Returns once they listen (10 s bound).
pub fn start_servers(host: &Host, specs: &[(u16, &str)]) -> HostChild {
    // python directly (no wrapper), so killing the child kills the server.
    let mut cmd = host.command(python());
    cmd.arg("-u").arg(app_script()).arg("server");
    for (port, reply) in specs {
        cmd.arg(format!("{port}:{reply}"));
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = host.spawn_command(cmd);
    let stdout = child.child_mut().stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) if line.contains("listening") => child,
        Ok(line) => panic!("server in {} did not start: {line:?}", host.name),
        Err(_) => panic!("server in {} did not start within 10s", host.name),
    }
}

/// Connects from inside `host` to `dst:port`, sends `payload` + "\n", reads
/// until EOF (5 s per read; the whole run is bounded by 20 s).
pub fn client(host: &Host, dst: Ipv4Addr, port: u16, payload: &str) -> ClientResult {
    let out = host.exec(
        "timeout",
        &[
            "20",
            python(),
            "-u",
            &app_script().to_string_lossy(),
            "client",
            &dst.to_string(),
            &port.to_string(),
            payload,
        ],
    );
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut diag = String::new();
    let _ = write!(
        diag,
        "{raw} (status {}, stderr {:?})",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(raw.trim())
        .unwrap_or_else(|e| panic!("client in {} printed no result ({e}): {diag}", host.name));
    ClientResult {
        connected: v["connected"].as_bool().unwrap_or(false),
        reply: v["reply"].as_str().unwrap_or_default().to_string(),
        error: v["error"].as_str().map(str::to_string),
        raw: diag,
    }
}

/// Every table of the host's iptables rules.
pub fn iptables_save(host: &Host) -> String {
    host.exec_ok("iptables-save", &[] as &[&str])
}

/// Long-lived echo connections: `serve PORT` echoes every connection;
/// `run HOST PORT STOP` sends a numbered line every 50 ms and checks each
/// echo until the file `STOP` exists, then prints a JSON summary; `hold
/// HOST PORT` prints `echoed` once its first line came back, then pings
/// until the connection ends (`closed`) or 20 s pass (`still-open`).
pub const ECHO_PY: &str = r#"
import json, os, socket, sys, threading, time

def serve(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    print("listening", flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()

def echo(c):
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except Exception:
        pass
    finally:
        c.close()

def run(host, port, stop):
    res = {"sent": 0, "echoed": 0, "error": None, "seconds": 0.0}
    t0 = time.time()
    try:
        c = socket.create_connection((host, int(port)), timeout=10)
        f = c.makefile("rb")
        print("connected", flush=True)
        n = 0
        while not os.path.exists(stop):
            line = ("seq %d\n" % n).encode()
            c.sendall(line)
            res["sent"] += 1
            back = f.readline()
            if back != line:
                res["error"] = "echo %r != %r" % (back, line)
                break
            res["echoed"] += 1
            n += 1
            time.sleep(0.05)
    except Exception as e:
        res["error"] = repr(e)
    res["seconds"] = time.time() - t0
    print(json.dumps(res), flush=True)

def hold(host, port):
    c = socket.create_connection((host, int(port)), timeout=10)
    c.sendall(b"hello\n")
    print("echoed" if c.recv(100) == b"hello\n" else "no-echo", flush=True)
    deadline = time.time() + 20
    try:
        while time.time() < deadline:
            c.sendall(b"ping\n")
            if not c.recv(100):
                print("closed", flush=True)
                return
            time.sleep(0.1)
        print("still-open", flush=True)
    except Exception:
        print("closed", flush=True)

if sys.argv[1] == "serve":
    serve(int(sys.argv[2]))
elif sys.argv[1] == "hold":
    hold(sys.argv[2], sys.argv[3])
else:
    run(sys.argv[2], sys.argv[3], sys.argv[4])
"#;

/// A python process in `host` whose stdout lines are collected.
pub struct Py {
    _child: HostChild,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Py {
    pub fn spawn(host: &Host, script: &Path, args: &[&str]) -> Py {
        let mut cmd = host.command(python());
        cmd.arg("-u").arg(script).args(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = host.spawn_command(cmd);
        let stdout = child.child_mut().stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Py {
            _child: child,
            lines,
        }
    }

    pub fn expect_line(&self, what: &str, within: Duration) -> String {
        self.lines
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("no {what} line within {within:?}"))
    }

    /// The next line within `within`, if one comes.
    pub fn next_line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\n\
                    x_total{a=\"1\",b=\"q\\\"z\"} 3\nx_total{a=\"2\"} 4.5\ny 7\n# EOF\n";
        assert_eq!(metric_sum(text, "x_total", &[]), 7.5);
        assert_eq!(metric_sum(text, "x_total", &[("a", "1")]), 3.0);
        assert_eq!(metric_sum(text, "x_total", &[("b", "q\"z")]), 3.0);
        assert_eq!(metric_sum(text, "y", &[]), 7.0);
        assert_eq!(metric_sum(text, "x_total", &[("a", "3")]), 0.0);
    }
}
