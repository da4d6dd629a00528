//! Kafka test helpers shared by the end-to-end tests: real brokers
//! (librdkafka's mock cluster via `tools/kafka/mock_cluster.py`, Tansu) and
//! real clients (`tools/kafka/client.py`), each a process inside a
//! `weir_testing` host, killed on drop, with its log printed when a test
//! fails.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use weir_testing::{find_in_path, Host, HostChild};

use super::{python, wait_for, TempDir};

pub const KAFKA_PORT: u16 = 9092;

/// Set to skip (rather than fail) the tests that need a Tansu broker.
pub const SKIP_TANSU_ENV: &str = "WEIR_SKIP_TANSU_TESTS";

pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/kafka")
}

pub fn bootstrap(ip: Ipv4Addr) -> String {
    format!("{ip}:{KAFKA_PORT}")
}

// ---------------------------------------------------------------------------
// Background services (mock cluster, Tansu) with a log shown on failure

/// A long-running process inside a host. Killed on drop; its log is printed
/// if the test is panicking.
pub struct Service {
    pub name: String,
    pub child: HostChild,
    pub log: PathBuf,
    pub _dir: TempDir,
    /// Lines the service printed on stdout (services that answer commands).
    pub out: Option<mpsc::Receiver<String>>,
}

impl Service {
    /// Sends one command line on stdin and returns the JSON line it prints
    /// in answer (mock_cluster.py's `add`, `leader`).
    pub fn command(&mut self, line: &str) -> serde_json::Value {
        use std::io::Write as _;
        let stdin = self.child.child_mut().stdin.as_mut().expect("stdin piped");
        writeln!(stdin, "{line}").expect("write command");
        stdin.flush().expect("flush command");
        let out = self.out.as_ref().expect("service without command output");
        let answer = out
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "{}: no answer to {line:?}; log:\n{}",
                    self.name,
                    self.log_text()
                )
            });
        serde_json::from_str(answer.trim()).unwrap_or_else(|e| {
            panic!(
                "{}: answer to {line:?} is not JSON ({e}): {answer}",
                self.name
            )
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.child_mut().try_wait().ok().flatten()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== log of {} =====\n{}\n===== end of {} =====",
                self.name,
                self.log_text(),
                self.name
            );
        }
    }
}

/// Starts `tools/kafka/mock_cluster.py` in `cluster`: broker `i + 1` is
/// advertised at `brokers[i]`'s address and relayed from inside its netns.
pub fn start_mock_cluster(cluster: &Host, brokers: &[Host], topics: &[&str]) -> Service {
    let dir = TempDir::new("mock-cluster");
    let log = dir.join("mock_cluster.log");
    let mut cmd = cluster.command(python());
    cmd.arg("-u").arg(tools_dir().join("mock_cluster.py"));
    for (i, b) in brokers.iter().enumerate() {
        cmd.arg("--broker")
            .arg(format!("{}={}@{}", i + 1, bootstrap(b.addr), b.name));
    }
    for t in topics {
        cmd.arg("--topic").arg(t);
    }
    // stdin stays open (held by the child handle): the tool serves until it closes.
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).unwrap());
    let mut child = cluster.spawn_command(cmd);
    let stdout = child.child_mut().stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut svc = Service {
        name: "mock_cluster.py".into(),
        child,
        log,
        _dir: dir,
        out: None,
    };
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "mock_cluster.py printed nothing within 30s; log:\n{}",
                svc.log_text()
            )
        });
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| {
        panic!(
            "mock_cluster.py did not start ({e}; exit {:?}): {line:?}; log:\n{}",
            svc.exited(),
            svc.log_text()
        )
    });
    assert_eq!(
        v["brokers"].as_array().map(Vec::len),
        Some(brokers.len()),
        "mock_cluster.py: {v}"
    );
    svc.out = Some(rx);
    svc
}

/// The `tansu` binary: PATH, /opt/tansu/bin, ~/.cargo/bin. `None` (skip)
/// only with `WEIR_SKIP_TANSU_TESTS=1`; otherwise a missing binary fails.
pub fn require_tansu() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let found = find_in_path("tansu").or_else(|| {
        [
            Some(PathBuf::from("/opt/tansu/bin/tansu")),
            home.map(|h| h.join(".cargo/bin/tansu")),
        ]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
    });
    if found.is_some() {
        return found;
    }
    let how = "the Tansu Kafka broker (`tansu`) was not found on PATH, in /opt/tansu/bin or \
               in ~/.cargo/bin. Install it with \
               `cargo install --locked tansu --features dynostore --root /opt/tansu` \
               (or without --root, into ~/.cargo/bin)";
    if std::env::var(SKIP_TANSU_ENV).is_ok_and(|v| v == "1") {
        eprintln!("note: skipping Tansu test ({SKIP_TANSU_ENV}=1): {how}");
        return None;
    }
    panic!("{how}; set {SKIP_TANSU_ENV}=1 to skip these tests instead");
}

/// Starts a Tansu broker (in-memory storage) inside `host` on
/// `host:9092`, waits until it listens, and creates `topics` (name,
/// partitions).
pub fn start_tansu(host: &Host, bin: &Path, topics: &[(&str, u32)]) -> Service {
    let dir = TempDir::new("tansu");
    let log = dir.join("tansu.log");
    let url = format!("tcp://{}", bootstrap(host.addr));
    let file = File::create(&log).unwrap();
    let mut cmd = host.command(&bin.to_string_lossy());
    cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ])
    .args(["--storage-engine", "memory://tansu/"])
    .stdin(Stdio::null())
    .stdout(file.try_clone().unwrap())
    .stderr(file);
    let child = host.spawn_command(cmd);
    let mut svc = Service {
        name: "tansu broker".into(),
        child,
        log,
        _dir: dir,
        out: None,
    };
    let port = format!("sport = :{KAFKA_PORT}");
    let listening = wait_for(Duration::from_secs(30), || {
        let out = host.exec("ss", &["-Hltn", &port]);
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    });
    if !listening {
        panic!(
            "tansu did not listen on {url} within 30s (exit {:?}); log:\n{}",
            svc.exited(),
            svc.log_text()
        );
    }
    for (name, partitions) in topics {
        let out = host.exec(
            "timeout",
            &[
                "30",
                &bin.to_string_lossy(),
                "topic",
                "create",
                name,
                "--broker",
                &url,
                "--partitions",
                &partitions.to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "tansu topic create {name} ({}): stdout {}\nstderr {}\nbroker log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            svc.log_text()
        );
    }
    svc
}

// ---------------------------------------------------------------------------
// tools/kafka/client.py

/// A finished `client.py` run: its JSON result and everything it printed.
pub struct ClientRun {
    pub what: String,
    pub json: serde_json::Value,
    pub stdout: String,
    pub stderr: String,
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl ClientRun {
    pub fn num(&self, key: &str) -> u64 {
        self.json[key].as_u64().unwrap_or(u64::MAX)
    }

    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        let stderr = tail(&self.stderr, 60);
        format!(
            "--- {} ({:?}, exit {:?}{}) ---\nresult: {}\nstdout: {}\nstderr (last lines):\n{stderr}",
            self.what,
            self.elapsed,
            self.status,
            if self.timed_out { ", KILLED: timed out" } else { "" },
            self.json,
            self.stdout.trim()
        )
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A `client.py` process running inside a host.
pub struct RunningClient {
    pub what: String,
    pub child: HostChild,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub started: Instant,
    pub limit: Duration,
    pub _dir: TempDir,
}

/// Starts `client.py ARGS...` inside `host`; `limit` bounds the whole run
/// (the process is killed after it; pass the client a smaller `--timeout`).
pub fn spawn_client(host: &Host, what: &str, args: &[&str], limit: Duration) -> RunningClient {
    let dir = TempDir::new("kafka-client");
    let stdout = dir.join("stdout");
    let stderr = dir.join("stderr");
    let mut cmd = host.command(python());
    cmd.arg("-u")
        .arg(tools_dir().join("client.py"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).unwrap())
        .stderr(File::create(&stderr).unwrap());
    RunningClient {
        what: format!("{what}: client.py {}", args.join(" ")),
        child: host.spawn_command(cmd),
        stdout,
        stderr,
        started: Instant::now(),
        limit,
        _dir: dir,
    }
}

impl RunningClient {
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.child_mut().try_wait(), Ok(None))
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the client to finish (killing it past its limit).
    pub fn wait(mut self) -> ClientRun {
        let deadline = self.started + self.limit;
        let mut status = None;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.child_mut().try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let timed_out = status.is_none();
        if timed_out {
            let _ = self.child.child_mut().kill();
            status = self.child.child_mut().wait().ok();
        }
        let stdout = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let json = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l.trim()).ok())
            .unwrap_or(serde_json::Value::Null);
        ClientRun {
            what: self.what.clone(),
            json,
            stdout,
            stderr: self.stderr_text(),
            status,
            timed_out,
            elapsed: self.started.elapsed(),
        }
    }
}

pub fn run_client(host: &Host, what: &str, args: &[&str], limit: Duration) -> ClientRun {
    spawn_client(host, what, args, limit).wait()
}

/// The producer acknowledged all `n` records, without errors.
#[track_caller]
pub fn assert_produced(run: &ClientRun, n: u64) {
    let ok = !run.timed_out
        && run.json["error"].is_null()
        && run.num("acked") == n
        && run.num("error_count") == 0
        && run.num("unacked") == 0;
    assert!(
        ok,
        "expected the producer to have {n} records acked, no errors:\n{}",
        run.describe()
    );
}

/// The consumer read all `n` records (duplicates allowed), none missing.
#[track_caller]
pub fn assert_consumed_all(run: &ClientRun, n: u64) {
    let ok = !run.timed_out
        && run.json["error"].is_null()
        && run.num("missing") == 0
        && run.num("unique") == n
        && run.num("foreign") == 0;
    assert!(
        ok,
        "expected the consumer to read all {n} records:\n{}",
        run.describe()
    );
}
