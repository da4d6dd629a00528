//! End-to-end test of `weir demo`: the whole mesh on this machine with the
//! mock broker (librdkafka's mock cluster, from confluent-kafka), then a
//! check that it removed everything it created.
//!
//! Needs root, iproute2, iptables, python3 with confluent-kafka and
//! kafka-python (see `weir_testing::require_root`; `WEIR_SKIP_NETNS_TESTS=1`
//! skips it where it cannot run).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::serial;
use weir_testing::require_root;

/// Network namespaces named like the demo's.
fn demo_namespaces() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("weir-demo-"))
                .collect()
        })
        .unwrap_or_default()
}

fn python_clients_available() -> bool {
    Command::new("python3")
        .args(["-c", "import confluent_kafka, kafka"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn demo_with_mock_broker_passes_and_cleans_up() {
    if !require_root() {
        return;
    }
    if !python_clients_available() {
        eprintln!(
            "note: skipping the demo test: python3 cannot import confluent_kafka and kafka \
             (pip install confluent-kafka kafka-python)"
        );
        return;
    }
    let _serial = serial();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "demo",
            "--broker",
            "mock",
            "--messages",
            "200",
            "--no-install",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run weir demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "weir demo failed ({}).\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("Result: all") && stdout.contains("checks passed."),
        "the summary does not say all checks passed:\n{stdout}"
    );
    for check in [
        "produce via mTLS",
        "consume via mTLS",
        "plaintext to 9092 from monitoring",
        "plaintext to 9404 from monitoring",
        "intruder (sa intruder) to 9092",
        "node-a metrics: intruder",
    ] {
        assert!(
            stdout.contains(check),
            "the summary lacks {check:?}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("200 received, 0 missing"),
        "the consumer did not read all 200 records:\n{stdout}"
    );

    // Everything it created is gone.
    let left = demo_namespaces();
    assert!(
        left.is_empty(),
        "weir demo left network namespaces behind: {left:?}\n{stdout}"
    );
    assert!(
        !std::env::temp_dir().join("weir-demo").exists(),
        "weir demo left its work directory behind"
    );
    let procs = Command::new("pgrep")
        .args(["-f", "weir-demo"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert!(
        procs.is_empty(),
        "processes mentioning weir-demo are still running: {procs}"
    );
}

#[test]
fn demo_refuses_without_root_with_an_explanation() {
    // Only meaningful when not root; as root the demo would run for real.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        });
    if uid.as_deref() == Some("0") {
        eprintln!("note: running as root; the not-root explanation is not exercised");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["demo", "--no-install"])
        .stdin(Stdio::null())
        .output()
        .expect("run weir demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("needs root"), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

/// `weir demo --help` says what the demo does and how to stop it and read
/// its result (no root needed).
#[test]
fn help_explains_steps_exit_codes_and_cleanup() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["demo", "--help"])
        .output()
        .expect("weir demo --help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for needle in [
        "--keep",
        "--broker",
        "--messages",
        "--no-install",
        "--cleanup",
        "confluent-kafka",
        "Tansu",
        "STRICT",
        "9404",
        "Exit status",
        "130 for Ctrl-C",
    ] {
        assert!(
            text.contains(needle),
            "`weir demo --help` lacks {needle:?}:\n{text}"
        );
    }
}

/// What a demo left behind: namespaces, its work directory, processes.
fn leftovers() -> Vec<String> {
    let mut left = demo_namespaces();
    if std::env::temp_dir().join("weir-demo").exists() {
        left.push(format!(
            "{}",
            std::env::temp_dir().join("weir-demo").display()
        ));
    }
    let procs = Command::new("pgrep")
        .args(["-a", "-f", "weir-demo"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if !procs.is_empty() {
        left.push(procs);
    }
    left
}

fn signal(target: &str, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", target])
        .status();
}

/// `weir demo --keep` with the mock broker and 30 records.
const KEPT: &[&str] = &[
    "--broker",
    "mock",
    "--no-install",
    "--keep",
    "--messages",
    "30",
];

/// A `weir demo` in its own process group, as a terminal runs a foreground
/// job: a "Ctrl-C" is SIGINT to the whole group. Its stdout is read line by
/// line; on drop it is killed and `weir demo --cleanup` removes what it left.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: String,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        Demo::start_with(args, |_| {})
    }

    /// [`KEPT`], once it has printed how to reach everything.
    fn start_kept() -> Demo {
        let mut demo = Demo::start(KEPT);
        demo.wait_for_line("Press Ctrl-C", Duration::from_secs(90));
        demo
    }

    fn start_with(args: &[&str], f: impl FnOnce(&mut Command)) -> Demo {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        f(&mut cmd);
        let mut child = cmd.spawn().expect("start weir demo");
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo {
            child,
            lines,
            stdout: String::new(),
            reader: Some(reader),
        }
    }

    /// Reads stdout until a line contains `pat`.
    #[track_caller]
    fn wait_for_line(&mut self, pat: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push_str(&line);
                    self.stdout.push('\n');
                    if line.contains(pat) {
                        return;
                    }
                }
                Err(_) => panic!("no line with {pat:?} within {timeout:?}:\n{}", self.stdout),
            }
        }
    }

    /// Signals the demo's process group, as a terminal does on Ctrl-C.
    fn signal_group(&self, sig: &str) {
        signal(&format!("-{}", self.child.id()), sig);
    }

    fn signal(&self, sig: &str) {
        signal(&self.child.id().to_string(), sig);
    }

    /// Waits (up to 2 minutes) for the demo to exit: status, stdout, stderr.
    fn wait(&mut self) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "weir demo did not exit:\n{}",
                self.stdout
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        while let Ok(line) = self.lines.try_recv() {
            self.stdout.push_str(&line);
            self.stdout.push('\n');
        }
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, self.stdout.clone(), err)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal_group("KILL");
            let _ = self.child.wait();
        }
        let _ = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["demo", "--cleanup"])
            .stdout(Stdio::null())
            .status();
    }
}

/// Whether root and the Python clients are there (else the test is skipped).
fn can_run_demo() -> bool {
    if !require_root() {
        return false;
    }
    if !python_clients_available() {
        eprintln!("note: skipping: python3 cannot import confluent_kafka and kafka");
        return false;
    }
    true
}

#[track_caller]
fn assert_nothing_left(stdout: &str) {
    let left = leftovers();
    assert!(left.is_empty(), "weir demo left {left:?} behind:\n{stdout}");
}

/// Ctrl-C while the network is being built: the terminal's SIGINT reaches
/// the whole foreground group, including the `ip` commands the demo runs. It
/// must still end as an orderly stop (exit 130, everything removed), not as
/// an "internal error" about a killed `ip` command.
#[test]
fn ctrl_c_during_setup_stops_cleanly() {
    if !can_run_demo() {
        return;
    }
    let _serial = serial();
    let mut demo = Demo::start(&["--broker", "mock", "--no-install"]);
    demo.wait_for_line("[2/7]", Duration::from_secs(60));
    demo.signal_group("INT");
    let (status, stdout, stderr) = demo.wait();
    assert_eq!(
        status.code(),
        Some(130),
        "exit status {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("internal error") && !stderr.contains("internal error"),
        "an interruption reported as an internal error:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("Interrupted (SIGINT)") && stdout.contains("Stopped"),
        "no clear message about the interruption:\n{stdout}"
    );
    assert_nothing_left(&stdout);
}

/// A closed terminal (SIGHUP) stops the demo like Ctrl-C: everything removed.
#[test]
fn sighup_during_traffic_removes_everything() {
    if !can_run_demo() {
        return;
    }
    let _serial = serial();
    let mut demo = Demo::start(&["--broker", "mock", "--no-install", "--messages", "200000"]);
    demo.wait_for_line("[6/7]", Duration::from_secs(60));
    // Just before the producer starts: it must not be started any more, nor
    // run its 200 000 records to the end.
    demo.signal("HUP");
    let t = Instant::now();
    let (status, stdout, stderr) = demo.wait();
    assert_eq!(
        status.code(),
        Some(129),
        "exit status {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the demo took {:?} to stop (cleanup should take seconds):\n{stdout}",
        t.elapsed()
    );
    assert!(
        !stdout.contains("taking too long"),
        "cleanup was forced:\n{stdout}"
    );
    assert_nothing_left(&stdout);
}

/// `weir demo | head`: the reader goes away mid-run. The demo must neither
/// panic on the closed pipe nor abort while cleaning up; it finishes and
/// removes everything.
#[test]
fn demo_whose_reader_goes_away_still_cleans_up() {
    if !can_run_demo() {
        return;
    }
    let _serial = serial();
    let mut demo = Demo::start(&["--broker", "mock", "--no-install", "--messages", "200"]);
    demo.wait_for_line("[4/7]", Duration::from_secs(60));
    // Close the read end of the pipe: later writes get EPIPE.
    let reader = std::mem::replace(&mut demo.lines, mpsc::channel().1);
    drop(reader);
    let out: Option<ChildStdout> = demo.child.stdout.take();
    drop(out);
    let (status, stdout, stderr) = demo.wait();
    assert!(
        status.signal().is_none() && status.code() == Some(0),
        "exit status {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!stderr.contains("internal error"), "stderr: {stderr}");
    assert_nothing_left(&stdout);
}

/// With a PATH that lacks the sbin directories (a root shell from `su`,
/// cron), the demo still runs: it found `ip` and `iptables` there, so the
/// node proxies it starts must find `iptables-restore` too.
#[test]
fn demo_runs_with_a_path_without_sbin() {
    if !can_run_demo() {
        return;
    }
    let _serial = serial();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let without_sbin: Vec<_> = std::env::split_paths(&path)
        .filter(|p| !p.to_string_lossy().contains("sbin"))
        .collect();
    let path = std::env::join_paths(without_sbin).expect("PATH");
    let mut demo = Demo::start_with(
        &["--broker", "mock", "--no-install", "--messages", "50"],
        |c| {
            c.env("PATH", &path);
        },
    );
    let (status, stdout, stderr) = demo.wait();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("Result: all"), "{stdout}");
    assert_nothing_left(&stdout);
}

/// `--keep`: the printed produce and consume commands work as printed: the
/// consumer reads every record, the demo's and the new ones, none missing.
#[test]
fn keep_prints_commands_that_work() {
    if !can_run_demo() {
        return;
    }
    let _serial = serial();
    let mut demo = Demo::start_kept();
    let stdout = demo.stdout.clone();
    assert!(stdout.contains("Result: all"), "{stdout}");
    let command = |op: &str| -> String {
        stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("ip netns exec") && l.contains(&format!(" {op} ")))
            .unwrap_or_else(|| panic!("no printed {op} command:\n{stdout}"))
            .to_string()
    };
    for op in ["produce", "consume"] {
        let cmd = command(op);
        let out = Command::new("sh")
            .args(["-c", &cmd])
            .stdin(Stdio::null())
            .output()
            .expect("run the printed command");
        let text = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("{cmd}: no JSON result:\n{text}"));
        assert!(
            out.status.success() && json["error"].is_null(),
            "{cmd}: {json}"
        );
        if op == "consume" {
            assert_eq!(json["missing"], 0, "{cmd}: {json}");
            assert_eq!(json["unique"], 40, "{cmd}: {json}");
        }
    }
    demo.signal_group("INT");
    let (status, stdout, stderr) = demo.wait();
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    assert_nothing_left(&stdout);
}

/// A kept demo killed outright (SIGKILL: nothing of it runs to clean up)
/// leaves namespaces and processes; `weir demo --cleanup` removes them, and
/// says when there is nothing to remove.
#[test]
fn cleanup_removes_what_a_killed_demo_left() {
    if !can_run_demo() {
        return;
    }
    let _serial = serial();
    let mut demo = Demo::start_kept();
    demo.signal("KILL");
    let (status, stdout, _) = demo.wait();
    assert_eq!(status.signal(), Some(9));
    assert!(!demo_namespaces().is_empty(), "a killed demo left nothing?");
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["demo", "--cleanup"])
        .output()
        .expect("weir demo --cleanup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_nothing_left(&format!("{stdout}\n--cleanup:\n{text}"));
    let again = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["demo", "--cleanup"])
        .output()
        .expect("weir demo --cleanup");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("Nothing to remove"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
}

/// One demo at a time: a demo holds the abstract Unix socket
/// `@weir-demo.lock` while it runs (binding it is atomic, where checking a
/// pid file and then writing it let two demos started in the same instant
/// both through). A demo that finds it held is refused and touches nothing;
/// once the holder is gone, even killed outright, a new demo starts.
#[test]
fn a_second_demo_is_refused_while_one_runs() {
    if !can_run_demo() {
        return;
    }
    let _serial = serial();
    // Held here, as a demo starting in the same instant would hold it.
    let addr = UnixAddr::from_abstract_name(b"weir-demo.lock").expect("abstract name");
    let lock = UnixListener::bind_addr(&addr).expect("take the demo's lock");
    let marker = "weir-demo-lock-test";
    let _ = Command::new("ip").args(["netns", "add", marker]).status();
    let mut refused = Demo::start(KEPT);
    let (status, stdout, stderr) = refused.wait();
    let kept = demo_namespaces().contains(&marker.to_string());
    let _ = Command::new("ip").args(["netns", "del", marker]).status();
    drop(refused); // its drop runs `weir demo --cleanup`
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("another `weir demo` is running"),
        "{stdout}\n{stderr}"
    );
    assert!(kept, "the refused demo removed a namespace it did not own");
    drop(lock);

    let mut running = Demo::start_kept();
    let (status, stdout, stderr) = Demo::start(KEPT).wait();
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains(&format!(
            "another `weir demo` is running (pid {})",
            running.child.id()
        )),
        "{stdout}\n{stderr}"
    );
    running.signal("KILL");
    let _ = running.wait();
    let mut next = Demo::start_kept();
    next.signal_group("INT");
    let (status, stdout, stderr) = next.wait();
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    assert_nothing_left(&stdout);
}
