//! `weir demo`: the whole mesh on one Linux machine — network-namespace
//! "pods" on a bridge, two `weir node` proxies, a real Kafka-protocol broker
//! and real Kafka clients — with checks that show what the mesh does.
//!
//! The demo body runs on its own thread; the main thread waits for it or for
//! SIGINT, SIGTERM or SIGHUP. A signal cancels the run: every child is asked
//! to stop, no new one is started, and the body unwinds through
//! [`lab::Lab`]'s cleanup. A second signal forces an emergency cleanup.
//! Short helper commands run in their own process group, so the Ctrl-C a
//! terminal sends to the whole foreground group does not kill them halfway.

/// `println!` that never panics (see [`ui::line`]).
macro_rules! say {
    () => {
        $crate::demo::ui::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::demo::ui::line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics.
macro_rules! esay {
    ($($arg:tt)*) => {
        $crate::demo::ui::eline(format_args!($($arg)*))
    };
}

mod lab;
mod metrics;
mod prereq;
mod procs;
mod ui;

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use lab::{Lab, BROKER_IP, KAFKA_PORT, METRICS_PORT, MONITORING, PODS, TOPIC};
use prereq::Tools;

use crate::cli::{DemoArgs, DemoBroker};

/// Exit code when a prerequisite is missing.
const EXIT_MISSING: u8 = 2;

pub fn run(args: DemoArgs) -> ExitCode {
    // A panic (a failed `ip` command, say) is reported in one line, not a
    // trace; after a signal it is a consequence of the interruption (a child
    // that got the same Ctrl-C), not news.
    std::panic::set_hook(Box::new(|info| {
        if procs::cancelled() {
            return;
        }
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown error");
        esay!("\nweir demo: internal error: {msg}");
    }));
    // Before any thread exists: the tools the demo finds in the sbin
    // directories (`ip`, `iptables-restore`) must also be found by the
    // children that run them, whatever PATH the demo was started with.
    prereq::add_system_dirs_to_path();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            esay!("weir demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            esay!("weir demo: cannot install signal handlers");
            return 1;
        };
        let (tx, mut done) = tokio::sync::oneshot::channel::<u8>();
        let spawned = std::thread::Builder::new()
            .name("weir-demo".into())
            .spawn(move || {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&args)))
                    .unwrap_or_else(|_| {
                        if procs::cancelled() {
                            procs::interrupted_code()
                        } else {
                            1
                        }
                    });
                let _ = tx.send(code);
            });
        if let Err(e) = spawned {
            esay!("weir demo: cannot start: {e}");
            return 1;
        }
        // SIGHUP too: a closed terminal must not leave namespaces and
        // processes behind.
        let name = tokio::select! {
            code = &mut done => return code.unwrap_or(1),
            _ = int.recv() => procs::Signal::Int,
            _ = term.recv() => procs::Signal::Term,
            _ = hup.recv() => procs::Signal::Hup,
        };
        say!(
            "\n\nInterrupted ({}): stopping and removing everything the demo created (press Ctrl-C again to force).",
            name.name()
        );
        procs::cancel_all(name);
        let forced = |why: &str| {
            say!("{why}: killing every process the demo started and deleting its namespaces.");
            lab::emergency_cleanup();
            procs::interrupted_code()
        };
        tokio::select! {
            code = &mut done => code.unwrap_or_else(|_| procs::interrupted_code()),
            _ = int.recv() => forced("Forced"),
            _ = term.recv() => forced("Forced"),
            _ = tokio::time::sleep(Duration::from_secs(60)) => forced("Cleanup is taking too long"),
        }
    });
    ExitCode::from(code)
}

/// One row of the summary.
struct Check {
    name: String,
    expected: String,
    observed: String,
    pass: bool,
}

impl Check {
    fn new(name: &str, expected: &str, observed: String, pass: bool) -> Check {
        if pass {
            ui::ok(&format!("{name}: {observed}"));
        } else {
            ui::fail(&format!("{name}: {observed} (expected {expected})"));
        }
        Check {
            name: name.to_string(),
            expected: expected.to_string(),
            observed,
            pass,
        }
    }
}

/// Why the run stopped early.
enum Stop {
    Cancelled,
    Failed(String),
}

impl From<String> for Stop {
    fn from(s: String) -> Stop {
        if procs::cancelled() {
            Stop::Cancelled
        } else {
            Stop::Failed(s)
        }
    }
}

fn check_cancel() -> Result<(), Stop> {
    if procs::cancelled() {
        Err(Stop::Cancelled)
    } else {
        Ok(())
    }
}

fn body(args: &DemoArgs) -> u8 {
    if args.cleanup {
        return cleanup_only();
    }
    say!("weir demo: Kafka in a zero-trust ambient mesh, on this machine");
    say!(
        "(network namespaces stand in for pods, a bridge for the cluster network; \
         everything is removed on exit{})",
        if args.keep {
            ", after you press Ctrl-C"
        } else {
            ""
        }
    );
    ui::step(1, "Prerequisites");
    let tools = match prereq::ensure(args) {
        Ok(t) => t,
        Err(_) if procs::cancelled() => {
            say!("\nStopped before anything was created: nothing to remove.");
            return procs::interrupted_code();
        }
        Err(prereq::Missing(why)) => {
            say!();
            esay!("weir demo cannot run on this machine: {why}");
            return EXIT_MISSING;
        }
    };
    if procs::cancelled() {
        say!("\nStopped before anything was created: nothing to remove.");
        return procs::interrupted_code();
    }
    let mut lab = match Lab::new() {
        Ok(l) => l,
        Err(e) => {
            ui::fail(&e);
            return 1;
        }
    };
    let mut checks = Vec::new();
    let result = scenario(args, &tools, &mut lab, &mut checks);
    let mut code = match &result {
        Ok(()) => {
            summary(&checks);
            u8::from(checks.iter().any(|c| !c.pass))
        }
        Err(Stop::Cancelled) => procs::interrupted_code(),
        Err(Stop::Failed(e)) => {
            ui::fail(e);
            if !checks.is_empty() {
                summary(&checks);
            }
            say!("\nThe demo could not finish setting up (see above).");
            1
        }
    };
    if args.keep && !matches!(result, Err(Stop::Cancelled)) && !lab.nodes.is_empty() {
        keep_running(&lab, &tools, args.messages);
        while procs::sleep(Duration::from_secs(3600)) {}
    }
    if procs::cancelled() && !args.keep {
        code = procs::interrupted_code();
    }
    ui::section("Cleaning up");
    let clean = lab.cleanup();
    if !clean {
        say!("\nNot everything could be removed (see above); `weir demo --cleanup` tries again.");
    } else if procs::cancelled() {
        say!("\nStopped: everything the demo created has been removed.");
    }
    code
}

/// `weir demo --cleanup`: stops a running demo (a `--keep` one, say) and
/// removes what a killed one left behind, without running the demo.
fn cleanup_only() -> u8 {
    if prereq::require_root().is_err() {
        esay!(
            "weir demo --cleanup deletes network namespaces and stops processes that a demo \
             started as root, which needs root too: run `sudo weir demo --cleanup`."
        );
        return EXIT_MISSING;
    }
    say!("weir demo --cleanup: removing what `weir demo` created");
    let mut found = false;
    // Stop a running demo, then hold the lock while removing what is left,
    // so that no demo starts meanwhile. A demo that holds the lock before its
    // pid file names it (one that just started) is found by lab::lock_holder.
    found |= stop_running_demo(lab::live_demo());
    let mut lock = lab::take_lock();
    if matches!(lock, Ok(None)) {
        found |= stop_running_demo(lab::lock_holder());
        lock = lab::take_lock();
    }
    let _lock = match lock {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            ui::fail("a weir demo holds the lock @weir-demo.lock but names no pid; run this again");
            return 1;
        }
        Err(e) => {
            ui::fail(&e);
            return 1;
        }
    };
    found |= lab::remove_leftovers();
    let dir = lab::work_dir();
    if dir.exists() {
        found = true;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => ui::ok(&format!("{} removed", dir.display())),
            Err(e) => {
                ui::fail(&format!("cannot remove {}: {e}", dir.display()));
                return 1;
            }
        }
    }
    let left = lab::stale_namespaces();
    if !left.is_empty() {
        ui::fail(&format!("namespaces still present: {}", left.join(" ")));
        return 1;
    }
    if found {
        say!("Done: nothing of weir demo is left on this machine.");
    } else {
        say!("Nothing to remove: no weir demo is running and none left anything behind.");
    }
    0
}

/// Stops the running demo `pid`, if any (it removes what it created); true
/// if there was one.
fn stop_running_demo(pid: Option<u32>) -> bool {
    let Some(pid) = pid else {
        return false;
    };
    ui::progress(&format!(
        "stopping the running weir demo (pid {pid}); it removes what it created"
    ));
    procs::signal(pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(75);
    while Instant::now() < deadline && lab::alive(pid) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if lab::alive(pid) {
        ui::note(&format!(
            "weir demo (pid {pid}) did not stop within 75 s; killing it"
        ));
        procs::signal(pid, "KILL");
        std::thread::sleep(Duration::from_millis(500));
    } else {
        ui::ok(&format!("weir demo (pid {pid}) stopped"));
    }
    true
}

fn scenario(
    args: &DemoArgs,
    tools: &Tools,
    lab: &mut Lab,
    checks: &mut Vec<Check>,
) -> Result<(), Stop> {
    ui::step(
        2,
        "A cluster of network namespaces on a bridge (addresses in 198.18.0.0/15)",
    );
    lab.build_network();
    check_cancel()?;

    ui::step(3, "Mesh configuration (Istio resources, unchanged)");
    let (workloads, policies) = lab.write_config()?;
    ui::ok(&format!(
        "{}: one Workload per pod (name, namespace, serviceAccount, labels, address, node)",
        workloads.display()
    ));
    ui::ok(&format!("{}:", policies.display()));
    ui::info("PeerAuthentication kafka/default        mTLS STRICT for the whole kafka namespace");
    ui::info("PeerAuthentication kafka/kafka-metrics  app=kafka: port 9404 PERMISSIVE (for scrapers outside the mesh)");
    ui::info("AuthorizationPolicy kafka/kafka-clients app=kafka: ALLOW apps/producer and apps/consumer to 9092, anyone to 9404");
    ui::info(&format!(
        "(`weir explain --config {} --from cluster.local/ns/apps/sa/intruder --to kafka/kafka-0 --port 9092` says why)",
        lab.config_dir().display()
    ));

    ui::step(
        4,
        "Node proxies: one `weir node` per node (ztunnel's role), sharing a mesh CA",
    );
    lab.start_node("node-a")?;
    ui::info(&format!(
        "mesh CA created in {} (node-b loads the same CA)",
        lab.dir.join("ca").display()
    ));
    lab.start_node("node-b")?;
    ui::info("each proxy opened 15001/15006/15008 inside its pods' namespaces and installed iptables capture rules there");
    check_cancel()?;

    ui::step(5, "Broker in pod kafka/kafka-0 (198.18.0.10:9092)");
    start_broker(args, tools, lab)?;
    start_metrics_endpoint(tools, lab)?;
    check_cancel()?;

    ui::step(6, "Traffic through the mesh");
    traffic(args, tools, lab, checks)?;
    check_cancel()?;

    ui::step(
        7,
        "What the node proxies saw (istio_tcp_connections_*_total on /metrics)",
    );
    metrics_checks(lab, checks)?;
    Ok(())
}

fn netns_cmd(ns_host: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &lab::netns(ns_host), program]);
    c
}

fn start_broker(args: &DemoArgs, tools: &Tools, lab: &mut Lab) -> Result<(), Stop> {
    let log = lab.dir.join("logs").join("broker.log");
    let logfile = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    match (args.broker, &tools.tansu) {
        (DemoBroker::Tansu, Some(tansu)) => {
            let tansu = tansu.to_string_lossy().into_owned();
            let url = format!("tcp://{BROKER_IP}:{KAFKA_PORT}");
            let mut cmd = netns_cmd("kafka-0", &tansu);
            cmd.args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(std::process::Stdio::null())
            .stdout(logfile.try_clone().map_err(|e| e.to_string())?)
            .stderr(logfile);
            let mut proc = procs::Proc::spawn("tansu", cmd)?;
            // Creating the topic doubles as the readiness check.
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut last;
            loop {
                check_cancel()?;
                if let Some(status) = proc.exited() {
                    return Err(Stop::Failed(format!(
                        "Tansu exited ({status}); its log ends:\n{}",
                        lab::log_tail(&log, 15)
                    )));
                }
                let mut c = netns_cmd("kafka-0", &tansu);
                c.args(["topic", "create", TOPIC, "--broker", &url]);
                match procs::run(c, Duration::from_secs(15)) {
                    Ok(f) if f.status.success() => break,
                    Ok(f) => last = format!("{}{}", f.stdout.trim(), f.stderr.trim()),
                    Err(e) => last = e,
                }
                if Instant::now() >= deadline {
                    return Err(Stop::Failed(format!(
                        "could not create topic {TOPIC} on Tansu within 30 s: {last}"
                    )));
                }
                procs::sleep(Duration::from_millis(500));
            }
            ui::ok(&format!(
                "Tansu (pid {}) listening on {BROKER_IP}:{KAFKA_PORT} inside {}, memory storage; log {}",
                proc.pid(),
                lab::netns("kafka-0"),
                log.display()
            ));
            ui::ok(&format!(
                "topic {TOPIC} created (`tansu topic create` inside the pod)"
            ));
            lab.broker = Some(proc);
        }
        _ => {
            let mut cmd = Command::new(&tools.python);
            cmd.arg("-u")
                .arg(lab.tool("mock_cluster.py"))
                .arg("--broker")
                .arg(format!(
                    "1={BROKER_IP}:{KAFKA_PORT}@{}",
                    lab::netns("kafka-0")
                ))
                .args(["--topic", &format!("{TOPIC}:1")])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(logfile);
            let mut proc = procs::Proc::spawn("mock broker", cmd)?;
            let stdout = proc.child_mut().stdout.take().expect("piped");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                use std::io::BufRead;
                let mut line = String::new();
                let _ = std::io::BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line.contains("brokers") => {}
                Ok(line) => {
                    return Err(Stop::Failed(format!(
                        "the mock broker did not start: {}{}",
                        line.trim(),
                        lab::log_tail(&log, 10)
                    )))
                }
                Err(_) => {
                    return Err(Stop::Failed(format!(
                        "the mock broker did not start within 20 s; log:\n{}",
                        lab::log_tail(&log, 10)
                    )))
                }
            }
            ui::ok(&format!(
                "librdkafka mock cluster (pid {}): one broker advertised as {BROKER_IP}:{KAFKA_PORT}, \
                 listening inside {} (relayed to the mock broker); topic {TOPIC} created",
                proc.pid(),
                lab::netns("kafka-0")
            ));
            lab.broker = Some(proc);
        }
    }
    Ok(())
}

/// The broker's metrics port: a stand-in for the Prometheus JMX exporter a
/// real Kafka pod runs on 9404 (Tansu and the mock broker have none there).
fn start_metrics_endpoint(tools: &Tools, lab: &mut Lab) -> Result<(), Stop> {
    let dir = lab.dir.join("broker-metrics");
    std::fs::write(
        dir.join("metrics"),
        "# HELP kafka_server_up Stand-in for the Prometheus JMX exporter of a Kafka pod (weir demo).\n\
         # TYPE kafka_server_up gauge\n\
         kafka_server_up{pod=\"kafka-0\",namespace=\"kafka\"} 1\n",
    )
    .map_err(|e| e.to_string())?;
    let log = lab.dir.join("logs").join("broker-metrics.log");
    let logfile = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut cmd = netns_cmd("kafka-0", &tools.python);
    cmd.args(["-m", "http.server", &METRICS_PORT.to_string()])
        .args(["--bind", "0.0.0.0", "--directory"])
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(logfile.try_clone().map_err(|e| e.to_string())?)
        .stderr(logfile);
    let proc = procs::Proc::spawn("metrics endpoint", cmd)?;
    lab.metrics_server = Some(proc);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        check_cancel()?;
        let r = probe(
            tools,
            lab,
            "kafka-0",
            &["http", "127.0.0.1", "9404", "/metrics"],
        );
        if r["status"].as_u64() == Some(200) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Stop::Failed(format!(
                "the metrics endpoint on 9404 did not start: {r}"
            )));
        }
        procs::sleep(Duration::from_millis(200));
    }
    ui::ok(&format!(
        "metrics endpoint on {BROKER_IP}:{METRICS_PORT}/metrics (a stand-in for the JMX exporter a Kafka pod runs)"
    ));
    Ok(())
}

/// Runs probe.py inside a host; its JSON result (or `{"outcome":"error"}`).
fn probe(tools: &Tools, lab: &Lab, host: &str, args: &[&str]) -> serde_json::Value {
    let mut c = netns_cmd(host, &tools.python);
    c.arg(lab.tool("probe.py")).args(args);
    match procs::run(c, Duration::from_secs(20)) {
        Ok(f) => last_json(&f.stdout)
            .unwrap_or_else(|| serde_json::json!({"outcome": "error", "detail": f.stderr.trim()})),
        Err(e) => serde_json::json!({"outcome": "error", "detail": e}),
    }
}

fn last_json(stdout: &str) -> Option<serde_json::Value> {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
}

/// Runs tools/kafka/client.py inside a host.
fn kafka_client(
    tools: &Tools,
    lab: &Lab,
    host: &str,
    op: &str,
    extra: &[&str],
    timeout: Duration,
) -> serde_json::Value {
    let bootstrap = format!("{BROKER_IP}:{KAFKA_PORT}");
    let mut c = netns_cmd(host, &tools.python);
    c.arg("-u")
        .arg(lab.tool("client.py"))
        .arg(op)
        .args(["--bootstrap", &bootstrap, "--topic", TOPIC])
        .args(["--client-id", host])
        .args(extra);
    match procs::run(c, timeout) {
        Ok(f) => last_json(&f.stdout).unwrap_or_else(|| {
            let err = f.stderr.trim().lines().last().unwrap_or("").to_string();
            serde_json::json!({"error": format!("no result ({}): {err}", f.status)})
        }),
        Err(e) => serde_json::json!({"error": e}),
    }
}

fn short(s: &str, n: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn traffic(args: &DemoArgs, tools: &Tools, lab: &Lab, checks: &mut Vec<Check>) -> Result<(), Stop> {
    let n = args.messages;
    let capture = if tools.tcpdump {
        lab.net
            .as_ref()
            .map(|net| net.tcpdump_filtered(weir_testing::BRIDGE, "tcp"))
    } else {
        None
    };

    ui::progress(&format!(
        "apps/producer produces {n} records to {TOPIC} (confluent-kafka, acks=all) via {BROKER_IP}:{KAFKA_PORT}"
    ));
    let timeout = Duration::from_secs(120 + u64::from(n) / 100);
    let count = n.to_string();
    let secs = (timeout.as_secs() - 10).to_string();
    let p = kafka_client(
        tools,
        lab,
        "producer",
        "produce",
        &["--count", &count, "--acks", "all", "--timeout", &secs],
        timeout,
    );
    check_cancel()?;
    let acked = p["acked"].as_u64().unwrap_or(0);
    let observed = match p["error"].as_str() {
        Some(e) => format!("failed: {}", short(e, 70)),
        None => format!(
            "{acked} acked in {:.2} s, {} errors",
            p["seconds"].as_f64().unwrap_or(0.0),
            p["error_count"].as_u64().unwrap_or(0)
        ),
    };
    let produced_ok = acked == u64::from(n) && p["error_count"].as_u64() == Some(0);
    checks.push(Check::new(
        "produce via mTLS (apps/producer)",
        &format!("{n} acked"),
        observed,
        produced_ok,
    ));

    ui::progress(&format!(
        "apps/consumer reads them back from the start of {TOPIC}"
    ));
    let c = kafka_client(
        tools,
        lab,
        "consumer",
        "consume",
        &["--count", &count, "--timeout", &secs],
        timeout,
    );
    check_cancel()?;
    let unique = c["unique"].as_u64().unwrap_or(0);
    let observed = match c["error"].as_str() {
        Some(e) => format!("failed: {}", short(e, 70)),
        None => format!(
            "{unique} received, {} missing, {} duplicates",
            c["missing"].as_u64().unwrap_or(0),
            c["duplicates"].as_u64().unwrap_or(0)
        ),
    };
    checks.push(Check::new(
        "consume via mTLS (apps/consumer)",
        &format!("{n} received, 0 missing"),
        observed,
        unique == u64::from(n) && c["missing"].as_u64() == Some(0),
    ));

    if let Some(capture) = capture {
        let text = capture.stop();
        // A Ctrl-C also reaches tcpdump: its capture is then cut short.
        check_cancel()?;
        let filler = "x".repeat(48);
        let to_hbone = text.contains(&format!("> {BROKER_IP}.15008:"));
        let clear = text.contains(&filler);
        let to_9092 = text.contains(&format!("{BROKER_IP}.{KAFKA_PORT}"));
        let observed = match (to_hbone, clear, to_9092) {
            (true, false, false) => "only TLS to :15008 (HBONE), no record bytes".to_string(),
            (false, _, _) => "no traffic to :15008 seen".to_string(),
            (_, true, _) => "record payload seen in clear text".to_string(),
            (_, _, true) => format!("packets to :{KAFKA_PORT} on the wire"),
        };
        checks.push(Check::new(
            "on the wire (tcpdump on the bridge)",
            "encrypted HBONE only",
            observed,
            to_hbone && !clear && !to_9092,
        ));
    }

    ui::progress(&format!(
        "monitoring (not in the mesh) connects in plaintext to {BROKER_IP}:{KAFKA_PORT} and sends a Kafka ApiVersions request"
    ));
    let r = probe(
        tools,
        lab,
        MONITORING,
        &["kafka", &BROKER_IP.to_string(), &KAFKA_PORT.to_string()],
    );
    check_cancel()?;
    let outcome = r["outcome"].as_str().unwrap_or("error");
    let observed = match outcome {
        "reset" => "connection reset (STRICT mTLS)".to_string(),
        "answered" => format!("the broker answered ({} bytes)", r["bytes"]),
        other => format!(
            "{other} {}",
            short(r["detail"].as_str().unwrap_or_default(), 50)
        ),
    };
    checks.push(Check::new(
        "plaintext to 9092 from monitoring",
        "refused (reset)",
        observed.trim().to_string(),
        outcome == "reset",
    ));

    ui::progress(&format!(
        "monitoring scrapes http://{BROKER_IP}:{METRICS_PORT}/metrics in plaintext"
    ));
    let r = probe(
        tools,
        lab,
        MONITORING,
        &[
            "http",
            &BROKER_IP.to_string(),
            &METRICS_PORT.to_string(),
            "/metrics",
        ],
    );
    check_cancel()?;
    let status = r["status"].as_u64();
    let observed = match status {
        Some(code) => format!("HTTP {code}, {} bytes of metrics", r["bytes"]),
        None => format!(
            "{} {}",
            r["outcome"].as_str().unwrap_or("error"),
            short(r["detail"].as_str().unwrap_or_default(), 50)
        ),
    };
    checks.push(Check::new(
        "plaintext to 9404 from monitoring",
        "admitted (HTTP 200)",
        observed.trim().to_string(),
        status == Some(200),
    ));

    ui::progress(&format!(
        "apps/intruder (service account intruder) asks {BROKER_IP}:{KAFKA_PORT} for metadata, 5 s timeout"
    ));
    let r = kafka_client(
        tools,
        lab,
        "intruder",
        "metadata",
        &["--timeout", "5"],
        Duration::from_secs(30),
    );
    check_cancel()?;
    let (observed, pass) = match r["error"].as_str() {
        Some(e) => (format!("no metadata within 5 s ({})", kafka_error(e)), true),
        None => (format!("got metadata: brokers {}", r["brokers"]), false),
    };
    checks.push(Check::new(
        "intruder (sa intruder) to 9092",
        "denied (no metadata)",
        observed,
        pass,
    ));
    Ok(())
}

/// The error code of a client error (`KafkaError{code=_TRANSPORT,...}`), or its start.
fn kafka_error(e: &str) -> String {
    match e.split_once("code=") {
        Some((_, rest)) => rest.split([',', '}']).next().unwrap_or(rest).to_string(),
        None => short(e, 40),
    }
}

fn metrics_checks(lab: &Lab, checks: &mut Vec<Check>) -> Result<(), Stop> {
    let fetch = |node: &str| -> Vec<metrics::Sample> {
        match lab::http_get(lab.node(node).metrics, "/metrics") {
            Ok((200, body)) => metrics::parse(&body),
            _ => Vec::new(),
        }
    };
    let kafka = |p: &str| format!("spiffe://cluster.local/ns/apps/sa/{p}");
    let producer = kafka("producer");
    let consumer = kafka("consumer");
    let intruder = kafka("intruder");
    let mtls = |samples: &[metrics::Sample], principal: &str| {
        metrics::sum(
            samples,
            metrics::OPENED,
            &[
                ("reporter", "destination"),
                ("source_principal", principal),
                ("destination_workload", "kafka-0"),
                ("connection_security_policy", "mutual_tls"),
            ],
        )
    };
    let denied = |samples: &[metrics::Sample]| {
        metrics::sum(
            samples,
            metrics::FAILED,
            &[
                ("reporter", "destination"),
                ("source_principal", intruder.as_str()),
                ("destination_workload", "kafka-0"),
                ("response_flags", "DENY"),
            ],
        )
    };
    let plaintext_failed = |samples: &[metrics::Sample]| {
        metrics::sum(
            samples,
            metrics::FAILED,
            &[
                ("reporter", "destination"),
                ("destination_workload", "kafka-0"),
                ("connection_security_policy", "unknown"),
                ("response_flags", "DENY"),
            ],
        )
    };
    // Counters of connections that just closed may lag a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut a = fetch("node-a");
    while Instant::now() < deadline
        && (mtls(&a, &producer) < 1.0
            || mtls(&a, &consumer) < 1.0
            || denied(&a) < 1.0
            || plaintext_failed(&a) < 1.0)
    {
        procs::sleep(Duration::from_millis(250));
        check_cancel()?;
        a = fetch("node-a");
    }
    let b = fetch("node-b");
    let rows = metrics::summarize(&[("node-a", a.clone()), ("node-b", b)]);
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .filter(|(k, _)| k.destination == "kafka/kafka-0")
        .map(|(k, (opened, failed))| {
            vec![
                k.node,
                k.reporter,
                format!("{} → {}", k.source, k.destination),
                k.security,
                k.flags,
                format!("{opened}"),
                format!("{failed}"),
            ]
        })
        .collect();
    if rows.is_empty() {
        ui::fail("no connection metrics for kafka/kafka-0 on either node");
    } else {
        ui::table(
            &[
                "node",
                "reporter",
                "source → destination",
                "security",
                "flags",
                "opened",
                "failed",
            ],
            &rows,
        );
        ui::info(
            "reporter=source: counted by the client's node; destination: by the broker's node.",
        );
        ui::info(
            "flags DENY: refused by policy (AuthorizationPolicy, or STRICT mTLS for plaintext).",
        );
        ui::info("non-mesh client with flags -: the scrape of 9404; with DENY: the plaintext attempt on 9092.");
        ui::info(
            "The intruder's client retries until its 5 s timeout, so it is denied many times.",
        );
    }
    let (p, c) = (mtls(&a, &producer), mtls(&a, &consumer));
    checks.push(Check::new(
        "node-a metrics: producer, consumer",
        "opened, mutual_tls",
        format!("{p} + {c} connections, mutual_tls"),
        p >= 1.0 && c >= 1.0,
    ));
    let d = denied(&a);
    checks.push(Check::new(
        "node-a metrics: intruder",
        "failed, DENY",
        if d >= 1.0 {
            format!("{d} failed, flags DENY")
        } else {
            format!(
                "none failed with DENY (other failures: flags {})",
                flags_of(&a, intruder.as_str()).unwrap_or_else(|| "none".into())
            )
        },
        d >= 1.0,
    ));
    let pf = plaintext_failed(&a);
    checks.push(Check::new(
        "node-a metrics: plaintext to 9092",
        "failed, not mTLS, DENY",
        format!("{pf} failed with security unknown, flags DENY"),
        pf >= 1.0,
    ));
    Ok(())
}

fn flags_of(samples: &[metrics::Sample], principal: &str) -> Option<String> {
    samples
        .iter()
        .find(|s| {
            s.name == metrics::FAILED && s.label("source_principal") == principal && s.value > 0.0
        })
        .map(|s| s.label("response_flags").to_string())
}

fn summary(checks: &[Check]) {
    ui::section("Summary");
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.expected.clone(),
                c.observed.clone(),
                if c.pass { "✓ pass" } else { "✗ FAIL" }.to_string(),
            ]
        })
        .collect();
    ui::table(&["check", "expected", "observed", "result"], &rows);
    let failed = checks.iter().filter(|c| !c.pass).count();
    say!();
    if failed == 0 {
        say!("Result: all {} checks passed.", checks.len());
    } else {
        say!(
            "Result: {failed} of {} checks FAILED. The node proxies' logs are in {}/logs while the demo runs (use --keep to look).",
            checks.len(),
            std::env::temp_dir().join(lab::PREFIX).display()
        );
    }
}

fn keep_running(lab: &Lab, tools: &Tools, n: u32) {
    let py = &tools.python;
    let client = lab.tool("client.py");
    let probe = lab.tool("probe.py");
    let b = format!("{BROKER_IP}:{KAFKA_PORT}");
    ui::section("The demo keeps running (--keep). Try:");
    let ns = lab::netns;
    say!("  # produce 10 more records and read all of them back through the mesh (mTLS between the node proxies)");
    say!(
        "  ip netns exec {} {py} {client} produce --bootstrap {b} --topic {TOPIC} --count 10 --first-seq {n}",
        ns("producer")
    );
    say!(
        "  ip netns exec {} {py} {client} consume --bootstrap {b} --topic {TOPIC} --count {} --timeout 30",
        ns("consumer"),
        u64::from(n) + 10
    );
    say!("  # denied: another service account (librdkafka logs each reset on stderr)");
    say!(
        "  ip netns exec {} {py} {client} metadata --bootstrap {b} --timeout 5 2>/dev/null",
        ns("intruder")
    );
    say!("  # from outside the mesh: 9092 is reset, the metrics port answers");
    say!(
        "  ip netns exec {} {py} {probe} kafka {BROKER_IP} {KAFKA_PORT}",
        ns(MONITORING)
    );
    say!(
        "  ip netns exec {} {py} {probe} http {BROKER_IP} {METRICS_PORT} /metrics",
        ns(MONITORING)
    );
    say!("  # the capture rules the proxy installed in the broker's pod");
    say!("  ip netns exec {} iptables-save -t nat", ns("kafka-0"));
    for node in &lab.nodes {
        say!(
            "  # {}: metrics http://{}/metrics  config http://{}/config_dump  ready http://{}/healthz/ready  log {}",
            node.name,
            node.metrics,
            node.admin,
            node.ready,
            node.log.display()
        );
    }
    say!(
        "  # config: {} (re-read every second: edit a policy and retry)",
        lab.config_dir().display()
    );
    say!(
        "  # namespaces: {}",
        PODS.iter()
            .map(|p| ns(p.name))
            .chain([ns(MONITORING), ns("hub")])
            .collect::<Vec<_>>()
            .join(" ")
    );
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "weir".into());
    say!(
        "\nPress Ctrl-C to stop the demo and remove everything it created \
         (or run `{exe} demo --cleanup` from another terminal)."
    );
}
