//! Self-tests of the namespace harness (need root; see `require_root`).

use std::net::Ipv4Addr;
use std::process::Command;

use weir_testing::{require_root, sweep_stale, TestNet};

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn listed(name: &str) -> bool {
    netns_list()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn hosts_reach_each_other_and_tcpdump_sees_it() {
    if !require_root() {
        return;
    }
    let net = TestNet::new("reach");
    let a = net.add_host("a", Ipv4Addr::new(198, 18, 0, 2));
    let b = net.add_host("b", Ipv4Addr::new(198, 18, 0, 3));
    assert!(a.netns_path.exists());
    assert!(a
        .exec_ok("ip", &["-4", "addr", "show", "eth0"])
        .contains("198.18.0.2/24"));
    let capture = net.tcpdump_filtered("br0", "tcp");
    // Nothing listens on b:9: "Connection refused" proves the path works
    // (a missing path would time out or say "No route to host").
    let out = a.exec(
        "timeout",
        &["5", "bash", "-c", "echo hi > /dev/tcp/198.18.0.3/9"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused"), "unexpected: {stderr}");
    let text = capture.stop();
    assert!(text.contains("198.18.0.2."), "{text}");
    assert!(text.contains("> 198.18.0.3.9:"), "{text}");
    drop(b);
}

#[test]
fn drop_kills_children_and_deletes_namespaces() {
    if !require_root() {
        return;
    }
    let net = TestNet::new("drop");
    let a = net.add_host("a", Ipv4Addr::new(198, 18, 0, 2));
    let child = a.spawn("sleep", &["1000"]);
    let pid = child.id();
    let names = net.namespaces();
    assert_eq!(names.len(), 2);
    assert!(names.iter().all(|n| listed(n)), "{}", netns_list());
    drop(net);
    for n in &names {
        assert!(!listed(n), "{n} still there: {}", netns_list());
    }
    // Killed (a zombie until the handle reaps it).
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z"),
        "sleep still running: {state}"
    );
    drop(child);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn drop_on_panic_deletes_namespaces() {
    if !require_root() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let net = TestNet::new("panic");
        net.add_host("a", Ipv4Addr::new(198, 18, 0, 2));
        tx.send(net.namespaces()).unwrap();
        panic!("test failure inside a TestNet");
    })
    .join();
    assert!(result.is_err());
    let names = rx.recv().unwrap();
    for n in &names {
        assert!(!listed(n), "{n} still there after panic");
    }
}

#[test]
fn sweep_removes_only_dead_owners() {
    if !require_root() {
        return;
    }
    // A pid that just died (reuse within this test is vanishingly unlikely).
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let stale = format!("wt{dead}-0-stale");
    let mine = format!("wt{}-999-mine", std::process::id());
    for n in [&stale, &mine] {
        assert!(Command::new("ip")
            .args(["netns", "add", n])
            .status()
            .unwrap()
            .success());
    }
    let removed = sweep_stale();
    let stale_gone = !listed(&stale);
    let mine_kept = listed(&mine);
    let _ = Command::new("ip").args(["netns", "del", &mine]).status();
    // (A sweep in a concurrently running test may have removed it first.)
    assert!(
        stale_gone,
        "stale namespace survived the sweep: {removed:?}"
    );
    assert!(mine_kept, "sweep removed a live process's namespace");
}

#[test]
#[should_panic(expected = "outside 198.18.0.0/15")]
fn rejects_addresses_outside_the_benchmark_range() {
    if !require_root() {
        panic!("outside 198.18.0.0/15 (skipped)");
    }
    let net = TestNet::new("range");
    net.add_host("a", Ipv4Addr::new(10, 0, 0, 1));
}
