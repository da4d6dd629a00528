//! End-to-end test of `weir demo`: the whole mesh on this machine with the
//! mock broker (librdkafka's mock cluster, from confluent-kafka), then a
//! check that it removed everything it created.
//!
//! Needs root, iproute2, iptables, python3 with confluent-kafka and
//! kafka-python (see `weir_testing::require_root`; `WEIR_SKIP_NETNS_TESTS=1`
//! skips it where it cannot run).

mod common;

use std::process::{Command, Stdio};

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
