//! `weir-bench kafka`: Kafka through the mesh, against the same broker
//! reached directly, in the same run.
//!
//! Two hosts (network namespaces) on one bridge: `client` 198.18.0.2 runs
//! real clients (`tools/kafka/client.py` with confluent-kafka, i.e.
//! librdkafka) and `broker` 198.18.0.3 runs one Tansu broker with in-memory
//! storage. Every round first measures DIRECT (no node proxies running, so
//! no capture rules), then starts the two node proxies (the client is a
//! Workload on node-a, the broker one on node-b), checks with a probe that
//! the client's connections now go through both proxies over mTLS, measures
//! the same again THROUGH THE MESH, and stops the proxies. Each measurement
//! writes to a fresh single-partition topic, created before and deleted
//! after, so the broker holds about the same data in both paths.
//!
//! Measurements (all with acks=all, 1 KiB records):
//! - produce: N records as fast as the client can (linger 5 ms), MB/s and
//!   records/s over the client's produce-to-last-ack time;
//! - consume: the first M records of the topic just produced, read back
//!   with a fresh consumer (no group), MB/s and records/s;
//! - latency: records sent one at a time (linger 0), each waiting for its
//!   acknowledgement, after a warm-up; p50/p99 of the produce-to-ack time.

use std::fmt::Write as _;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use weir_testing::{find_in_path, require_root, Host, HostChild, TestNet};

use crate::{
    cpu_ticks, http_get, machine_info, markdown_table, median, start_mesh, stop_mesh, sys,
    tune_host, weir_binary, Mesh, MeshWorkload, Node, RemoveDir,
};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const BROKER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub(crate) const KAFKA_PORT: u16 = 9092;
/// Value size of every record.
pub(crate) const RECORD_SIZE: usize = 1024;
pub(crate) const LINGER_MS: u32 = 5;

// Targets of issue 3.
const TARGET_TPUT_RATIO: f64 = 0.9;
const TARGET_ADDED_P99_US: f64 = 500.0;

const OPENED: &str = "istio_tcp_connections_opened_total";
const MTLS_LABEL: &str = "connection_security_policy=\"mutual_tls\"";

/// How much a Kafka benchmark measures (`weir-bench kafka` and `gateway`).
#[derive(Debug, clap::Args)]
pub(crate) struct PlanArgs {
    /// Smaller runs, for smoke testing (figures are rougher).
    #[arg(long)]
    pub(crate) quick: bool,
    /// Rounds (each measures the direct and the proxied path back to back);
    /// the table shows medians [default: 3, 1 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// 1 KiB records per produce measurement
    /// [default: 1000000, 200000 with --quick].
    #[arg(long, value_name = "N")]
    produce_records: Option<usize>,
    /// Records read back per consume measurement, from the start of the
    /// topic just produced [default: 200000, 50000 with --quick].
    #[arg(long, value_name = "N")]
    consume_records: Option<usize>,
    /// Sequential acks=all records per latency measurement, after the
    /// warm-up [default: 5000, 2000 with --quick].
    #[arg(long, value_name = "N")]
    latency_records: Option<usize>,
}

/// The programs a Kafka benchmark runs.
#[derive(Debug, clap::Args)]
pub(crate) struct ToolArgs {
    /// The weir binary [default: `weir` next to this executable].
    #[arg(long, value_name = "PATH")]
    pub(crate) weir: Option<PathBuf>,
    /// The Tansu broker [default: `tansu` on PATH, /opt/tansu/bin/tansu or
    /// ~/.cargo/bin/tansu].
    #[arg(long, value_name = "PATH")]
    tansu: Option<PathBuf>,
    /// Python interpreter with confluent-kafka [default: python3's
    /// sys.executable].
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// The Kafka client script [default: tools/kafka/client.py of this
    /// source tree].
    #[arg(long, value_name = "PATH")]
    client_py: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct KafkaArgs {
    #[command(flatten)]
    pub(crate) plan: PlanArgs,
    #[command(flatten)]
    pub(crate) tools: ToolArgs,
    /// Only measure the direct path (no node proxies).
    #[arg(long)]
    direct_only: bool,
    /// Extra argument for both `weir node` processes (repeatable).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    node_arg: Vec<String>,
}

/// Rounds and record counts of a Kafka benchmark run.
pub(crate) struct Plan {
    pub(crate) rounds: usize,
    pub(crate) produce: usize,
    pub(crate) consume: usize,
    pub(crate) lat_warmup: usize,
    pub(crate) lat_count: usize,
    pub(crate) warmup_produce: usize,
}

impl Plan {
    /// The defaults (smaller with --quick), each overridden by the option
    /// given.
    pub(crate) fn new(a: &PlanArgs) -> Plan {
        let q = a.quick;
        let produce = a
            .produce_records
            .unwrap_or(if q { 200_000 } else { 1_000_000 });
        Plan {
            rounds: a.rounds.unwrap_or(if q { 1 } else { 3 }).max(1),
            produce,
            consume: a
                .consume_records
                .unwrap_or(if q { 50_000 } else { 200_000 })
                .min(produce),
            lat_warmup: if q { 200 } else { 500 },
            lat_count: a.latency_records.unwrap_or(if q { 2_000 } else { 5_000 }),
            warmup_produce: produce.min(200_000),
        }
    }
}

/// One kind of Kafka measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Produce,
    Consume,
    Latency,
}

impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Produce => "produce",
            Op::Consume => "consume",
            Op::Latency => "latency",
        }
    }
}

/// Figures of one path in one round.
#[derive(Debug, Default, Clone)]
struct Figures {
    produce_mbps: Option<f64>,
    produce_rps: Option<f64>,
    consume_mbps: Option<f64>,
    consume_rps: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
}

type Get = fn(&Figures) -> Option<f64>;

/// CPU seconds used during one measurement.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    wall: f64,
    client: Option<f64>,
    broker: Option<f64>,
    node_a: Option<f64>,
    node_b: Option<f64>,
    /// Share of all CPUs of the machine that were busy (user, system,
    /// softirq, ... of every process, other jobs included), 0..1.
    machine: Option<f64>,
}

/// (busy, total) jiffies of all CPUs, from the first line of /proc/stat.
pub(crate) fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal
    let total: u64 = v.iter().sum();
    Some((total - v[3] - v[4], total))
}

/// Share of the CPUs busy between two [`machine_jiffies`] readings, 0..1.
pub(crate) fn busy_share(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (before?, after?);
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64)
}

/// Everything a measurement needs.
pub(crate) struct Ctx<'a> {
    pub(crate) python: PathBuf,
    pub(crate) client_py: PathBuf,
    pub(crate) tansu: PathBuf,
    pub(crate) client: &'a Host,
    pub(crate) broker: &'a Host,
    pub(crate) broker_pid: u32,
    pub(crate) plan: Plan,
}

impl Ctx<'_> {
    fn bootstrap(&self) -> String {
        format!("{}:{KAFKA_PORT}", self.broker.addr)
    }

    fn broker_url(&self) -> String {
        format!("tcp://{}:{KAFKA_PORT}", self.broker.addr)
    }

    /// The broker itself, plaintext.
    pub(crate) fn direct(&self) -> Endpoint {
        Endpoint {
            bootstrap: self.bootstrap(),
            tls: Vec::new(),
        }
    }
}

/// Where `client.py` connects: its bootstrap address and the TLS arguments
/// (`--tls-ca ...`) it needs there, if any.
pub(crate) struct Endpoint {
    pub(crate) bootstrap: String,
    pub(crate) tls: Vec<String>,
}

/// The Kafka tools of a benchmark run, found and checked.
pub(crate) struct Tools {
    pub(crate) tansu: PathBuf,
    pub(crate) tansu_version: String,
    pub(crate) python: PathBuf,
    pub(crate) client_py: PathBuf,
    /// confluent-kafka's version.
    pub(crate) py_version: String,
    /// librdkafka's version.
    pub(crate) lib_version: String,
}

impl Tools {
    /// Finds Tansu, the Python interpreter (which must import
    /// confluent_kafka) and `client.py`: the explicit paths, else the
    /// defaults described in [`ToolArgs`].
    pub(crate) fn find(a: &ToolArgs) -> Result<Tools> {
        let tansu = find_tansu(a.tansu.as_deref())?;
        let python = a
            .python
            .as_deref()
            .map_or_else(find_python, Path::to_path_buf);
        let client_py = a.client_py.as_deref().map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/kafka/client.py"),
            Path::to_path_buf,
        );
        if !client_py.is_file() {
            bail!(
                "the Kafka client script {} does not exist; pass --client-py PATH \
                 (tools/kafka/client.py of the weir source tree)",
                client_py.display()
            );
        }
        let versions = Command::new(&python)
            .args([
                "-c",
                "import confluent_kafka as c; v = c.version(); \
                 print(v[0] if isinstance(v, tuple) else v, c.libversion()[0])",
            ])
            .output()
            .with_context(|| format!("running {}", python.display()))?;
        if !versions.status.success() {
            bail!(
                "{} cannot import confluent_kafka ({}): install it with \
                 `python3 -m pip install confluent-kafka`, or pass --python PATH",
                python.display(),
                String::from_utf8_lossy(&versions.stderr).trim()
            );
        }
        let versions = String::from_utf8_lossy(&versions.stdout).trim().to_string();
        let (py_version, lib_version) = versions.split_once(' ').unwrap_or((&versions, "?"));
        let client_py = client_py.canonicalize().unwrap_or(client_py);
        let tansu_version = Command::new(&tansu)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Ok(Tools {
            tansu,
            tansu_version,
            python,
            client_py,
            py_version: py_version.to_string(),
            lib_version: lib_version.to_string(),
        })
    }
}

pub fn run(args: &KafkaArgs) -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let plan = Plan::new(&args.plan);
    let weir = weir_binary(args.tools.weir.as_deref(), args.direct_only)?;
    let Tools {
        tansu,
        tansu_version,
        python,
        client_py,
        py_version,
        lib_version,
    } = Tools::find(&args.tools)?;

    println!(
        "weir-bench kafka{}",
        if args.plan.quick { " (--quick)" } else { "" }
    );
    print!("{}", machine_info());
    println!(
        "broker:  {} ({tansu_version}), memory storage",
        tansu.display()
    );
    println!(
        "client:  {} {} (confluent-kafka {py_version}, librdkafka {lib_version})",
        python.display(),
        client_py.display()
    );
    println!(
        "plan:    {} round(s); produce {} x {RECORD_SIZE} B (acks=all, linger {LINGER_MS} ms); \
         consume the first {}; latency {} sequential records after {} warm-up",
        plan.rounds, plan.produce, plan.consume, plan.lat_count, plan.lat_warmup
    );
    println!();

    let net = TestNet::new("kbench");
    let client = net.add_host("client", CLIENT_IP);
    let broker = net.add_host("broker", BROKER_IP);
    for host in [&client, &broker] {
        tune_host(host);
    }
    let dir = std::env::temp_dir().join(format!("weir-bench-kafka-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _dir_guard = RemoveDir(dir.clone());
    let tansu_log = dir.join("tansu.log");
    let mut tansu_proc = start_tansu(&broker, &tansu, &tansu_log)?;
    let ctx = Ctx {
        python,
        client_py,
        tansu,
        client: &client,
        broker: &broker,
        broker_pid: tansu_proc.id(),
        plan,
    };
    println!(
        "== broker: tansu pid {} listening on {}",
        ctx.broker_pid,
        ctx.bootstrap()
    );

    // Warm the broker (allocations, first connections) up on the direct
    // path before anything is recorded, so round 1's direct figures are not
    // the only cold ones.
    warm_up(&ctx, &ctx.direct(), "direct")?;
    println!();

    let mut notes = Vec::new();
    let mut directs = Vec::new();
    let mut meshes = Vec::new();
    let mut cpus: Vec<(Op, &'static str, Cpu)> = Vec::new();
    let workloads = [
        MeshWorkload {
            name: "kafka-client",
            namespace: "apps",
            host: &client,
            node: "node-a",
        },
        MeshWorkload {
            name: "kafka-broker",
            namespace: "kafka",
            host: &broker,
            node: "node-b",
        },
    ];
    for round in 1..=ctx.plan.rounds {
        println!(
            "== round {round}/{}: direct (no node proxies)",
            ctx.plan.rounds
        );
        for host in [&client, &broker] {
            let n = redirect_rules(host);
            if n > 0 {
                println!("  {n} REDIRECT rules in {}: NOT a direct path", host.name);
                notes.push(format!(
                    "round {round}: {n} REDIRECT rules in {} during the direct measurements",
                    host.name
                ));
            }
        }
        // Topics are created and deleted by the broker's own CLI inside its
        // namespace, only while no node proxy runs.
        path_topics(&ctx, "create", round, "direct")?;
        if !args.direct_only {
            path_topics(&ctx, "create", round, "mesh")?;
        }
        let mut d = Figures::default();
        measure_path(&ctx, round, "direct", None, &mut d, &mut cpus, &mut notes);
        directs.push(d);
        path_topics(&ctx, "delete", round, "direct")?;

        if !args.direct_only {
            println!(
                "== round {round}/{}: mesh (client -> node-a -> HBONE mTLS -> node-b -> broker)",
                ctx.plan.rounds
            );
            match start_mesh(&weir, &workloads, &args.node_arg, &mut notes) {
                Ok(mut mesh) => {
                    probe(&ctx, &mesh, round, &mut notes);
                    let mut m = Figures::default();
                    measure_path(
                        &ctx,
                        round,
                        "mesh",
                        Some(&mesh),
                        &mut m,
                        &mut cpus,
                        &mut notes,
                    );
                    stop_mesh(&mut mesh, &client, &broker, &mut notes);
                    drop(mesh);
                    meshes.push(m);
                }
                Err(e) => {
                    println!("  mesh setup failed: {e:#}");
                    notes.push(format!("round {round}: mesh setup failed: {e:#}"));
                }
            }
            path_topics(&ctx, "delete", round, "mesh")?;
        }
        if let Ok(Some(st)) = tansu_proc.child_mut().try_wait() {
            bail!(
                "the broker exited ({st}); its log:\n{}",
                tail(&std::fs::read_to_string(&tansu_log).unwrap_or_default(), 30)
            );
        }
        println!();
    }
    tansu_proc.kill();

    println!(
        "Medians of {} round(s); mesh/direct and added (mesh - direct) are medians of the \
         per-round values.",
        ctx.plan.rounds
    );
    println!("{}", report(&directs, &meshes));
    println!(
        "CPU seconds per measurement (medians; client = the client.py process, including \
         Python start-up;\ncores = (client + broker + node-a + node-b) / wall, out of {}; \
         machine busy = all CPUs, all processes, kernel included):",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!("{}", cpu_report(&cpus));
    for n in &notes {
        println!("note: {n}");
    }
    Ok(())
}

// ---------------------------------------------------------------- broker

fn find_tansu(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    find_in_path("tansu")
        .or_else(|| {
            [
                Some(PathBuf::from("/opt/tansu/bin/tansu")),
                home.map(|h| h.join(".cargo/bin/tansu")),
            ]
            .into_iter()
            .flatten()
            .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            anyhow!(
                "the Tansu Kafka broker (`tansu`) was not found on PATH, in /opt/tansu/bin or \
                 in ~/.cargo/bin: install it with \
                 `cargo install --locked tansu --features dynostore --root /opt/tansu`, \
                 or pass --tansu PATH"
            )
        })
}

/// The real interpreter behind `python3` (a pyenv shim needs more
/// environment than `ip netns exec` may keep).
fn find_python() -> PathBuf {
    Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

/// Starts Tansu (memory storage) in `host` on port 9092 and waits until it
/// listens.
pub(crate) fn start_tansu(host: &Host, bin: &Path, log: &Path) -> Result<HostChild> {
    let url = format!("tcp://{}:{KAFKA_PORT}", host.addr);
    let file = std::fs::File::create(log)?;
    let mut cmd = host.command(&bin.to_string_lossy());
    cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ])
    .args(["--storage-engine", "memory://tansu/"])
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(file.try_clone()?)
    .stderr(file);
    let mut child = host.spawn_command(cmd);
    let filter = format!("sport = :{KAFKA_PORT}");
    let t = Instant::now();
    loop {
        let out = host.exec("ss", &["-Hltn", &filter]);
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(child);
        }
        if let Ok(Some(st)) = child.child_mut().try_wait() {
            bail!(
                "tansu exited during startup ({st}):\n{}",
                tail(&std::fs::read_to_string(log).unwrap_or_default(), 20)
            );
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!(
                "tansu did not listen on {url} within 30 s:\n{}",
                tail(&std::fs::read_to_string(log).unwrap_or_default(), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tansu topic create|delete NAME` inside the broker's namespace (only
/// called while no node proxy runs).
pub(crate) fn topic(ctx: &Ctx<'_>, action: &str, name: &str) -> Result<()> {
    let tansu = ctx.tansu.to_string_lossy();
    let url = ctx.broker_url();
    let mut args = vec!["30", &*tansu, "topic", action, name, "--broker", &url];
    if action == "create" {
        args.extend(["--partitions", "1"]);
    }
    let out = ctx.broker.exec("timeout", &args);
    if !out.status.success() {
        bail!(
            "tansu topic {action} {name} ({}): {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub(crate) fn redirect_rules(host: &Host) -> usize {
    let out = host.exec("iptables-save", &["-t", "nat"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("REDIRECT"))
        .count()
}

// ---------------------------------------------------------------- client

/// A finished `client.py` run.
pub(crate) struct ClientRun {
    pub(crate) json: Value,
    /// CPU seconds of the client process (read before it was reaped).
    pub(crate) cpu: Option<f64>,
}

/// Runs `client.py ARGS` in the client namespace; fails unless it printed a
/// JSON result without an `error`. `limit` bounds the whole run.
pub(crate) fn run_client(ctx: &Ctx<'_>, args: &[String], limit: Duration) -> Result<ClientRun> {
    let mut cmd = ctx.client.command(&ctx.python.to_string_lossy());
    cmd.arg("-u")
        .arg(&ctx.client_py)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ctx.client.spawn_command(cmd);
    // `ip netns exec` execs the command: this is the Python process.
    let pid = child.id();
    let mut stdout = child.child_mut().stdout.take().context("client stdout")?;
    let mut stderr = child.child_mut().stderr.take().context("client stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let t = Instant::now();
    let mut cpu = None;
    loop {
        match sys::exited_unreaped(pid) {
            Ok(true) => {
                cpu = cpu_ticks(pid).map(|t| t as f64 / 100.0);
                break;
            }
            Ok(false) => {}
            Err(_) => break,
        }
        if t.elapsed() > limit {
            child.kill();
            bail!("client.py {} timed out after {limit:?}", args.join(" "));
        }
        if sys::interrupted() {
            child.kill();
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = child.child_mut().wait()?;
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    for line in err.lines().filter(|l| !l.trim().is_empty()).take(5) {
        println!("  [client stderr] {line}");
    }
    let json = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .ok_or_else(|| {
            anyhow!(
                "client.py {} exited {status} without a result: {}",
                args.join(" "),
                tail(&err, 5)
            )
        })?;
    if let Some(e) = json.get("error") {
        bail!("client.py {}: {e}", args.join(" "));
    }
    Ok(ClientRun { json, cpu })
}

/// Prints a latency run's percentiles (the client reports milliseconds)
/// and returns its p50 and p99 in µs.
pub(crate) fn report_latency(label: &str, j: &Value) -> (Option<f64>, Option<f64>) {
    let l = &j["latency_ms"];
    let us = |k: &str| l[k].as_f64().map(|v| v * 1e3);
    let show = |k: &str| us(k).map_or("-".into(), |v| format!("{v:.0} µs"));
    println!(
        "  {label}: p50 {}  p90 {}  p99 {}  max {}  ({} records, acks=all, one at a time)",
        show("p50"),
        show("p90"),
        show("p99"),
        show("max"),
        num(l, "n")
    );
    (us("p50"), us("p99"))
}

pub(crate) fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn client_args(ep: &Endpoint, op: &str, topic: &str, rest: &[String]) -> Vec<String> {
    let mut v: Vec<String> = [
        op,
        "--bootstrap",
        &ep.bootstrap,
        "--topic",
        topic,
        "--client",
        "confluent",
        "--client-id",
        "weir-bench",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(rest.iter().cloned());
    v.extend(ep.tls.iter().cloned());
    v
}

/// `client.py produce`: `n` records of [`RECORD_SIZE`] bytes, acks=all,
/// linger [`LINGER_MS`].
pub(crate) fn produce_args(ep: &Endpoint, topic: &str, n: usize) -> Vec<String> {
    client_args(
        ep,
        "produce",
        topic,
        &[
            "--count".into(),
            n.to_string(),
            "--size".into(),
            RECORD_SIZE.to_string(),
            "--acks".into(),
            "all".into(),
            "--linger-ms".into(),
            LINGER_MS.to_string(),
            "--timeout".into(),
            "120".into(),
        ],
    )
}

/// `client.py consume`: the first `n` records of `topic`, fresh consumer.
pub(crate) fn consume_args(ep: &Endpoint, topic: &str, n: usize) -> Vec<String> {
    client_args(
        ep,
        "consume",
        topic,
        &[
            "--count".into(),
            n.to_string(),
            "--timeout".into(),
            "120".into(),
        ],
    )
}

/// `client.py latency`: `n` records one at a time after `warmup`.
pub(crate) fn latency_args(ep: &Endpoint, topic: &str, warmup: usize, n: usize) -> Vec<String> {
    client_args(
        ep,
        "latency",
        topic,
        &[
            "--warmup".into(),
            warmup.to_string(),
            "--count".into(),
            n.to_string(),
            "--size".into(),
            RECORD_SIZE.to_string(),
            "--timeout".into(),
            "10".into(),
        ],
    )
}

/// Produces `plan.warmup_produce` records and 200 latency records to
/// `ep`, not recorded, on a topic of its own (deleted after).
pub(crate) fn warm_up(ctx: &Ctx<'_>, ep: &Endpoint, label: &str) -> Result<()> {
    let t = format!("weir-bench-warmup-{label}");
    let t = t.as_str();
    topic(ctx, "create", t)?;
    let n = ctx.plan.warmup_produce;
    let p = run_client(ctx, &produce_args(ep, t, n), Duration::from_secs(180))?;
    let l = run_client(ctx, &latency_args(ep, t, 0, 200), Duration::from_secs(120))?;
    println!(
        "== warm-up ({label}, not recorded): produce {n} records {:.1} MB/s; 200 sequential \
         records p50 {:.0} µs",
        num(&p.json, "mb_per_s"),
        l.json["latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN) * 1e3
    );
    topic(ctx, "delete", t)
}

// ---------------------------------------------------------------- measuring

/// Sum of `istio_tcp_connections_opened_total` over the label sets with
/// `connection_security_policy="mutual_tls"`.
pub(crate) fn mtls_opened(node: &Node) -> Option<f64> {
    let (code, body) = http_get(node.metrics, "/metrics").ok()?;
    (code == 200).then(|| mtls_sum(&body))
}

fn mtls_sum(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(OPENED) && l.contains(MTLS_LABEL))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

fn mtls_both(mesh: &Mesh) -> [Option<f64>; 2] {
    [mtls_opened(&mesh.a), mtls_opened(&mesh.b)]
}

fn grew(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?).filter(|d| *d > 0.0)
}

/// Before measuring the mesh: a metadata request from the client must open
/// an mTLS connection on both node proxies.
fn probe(ctx: &Ctx<'_>, mesh: &Mesh, round: usize, notes: &mut Vec<String>) {
    let before = mtls_both(mesh);
    let args: Vec<String> = [
        "metadata",
        "--bootstrap",
        &ctx.bootstrap(),
        "--timeout",
        "10",
        "--client-id",
        "weir-bench-probe",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let r = run_client(ctx, &args, Duration::from_secs(30));
    let after = mtls_both(mesh);
    match &r {
        Ok(r) => println!(
            "  probe: metadata through the mesh: brokers {}",
            r.json["brokers"]
        ),
        Err(e) => println!("  probe FAILED: {e:#}"),
    }
    let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    println!(
        "  {OPENED} (mutual_tls): node-a {} -> {}, node-b {} -> {}",
        show(before[0]),
        show(after[0]),
        show(before[1]),
        show(after[1])
    );
    if r.is_err() || grew(before[0], after[0]).is_none() || grew(before[1], after[1]).is_none() {
        notes.push(format!(
            "round {round}: the probe did not open an mTLS connection on both node proxies: \
             the mesh figures of this round may not go through the proxies"
        ));
    }
}

/// Produce, consume and latency on one path, each on a fresh topic.
fn measure_path(
    ctx: &Ctx<'_>,
    round: usize,
    path: &'static str,
    mesh: Option<&Mesh>,
    f: &mut Figures,
    cpus: &mut Vec<(Op, &'static str, Cpu)>,
    notes: &mut Vec<String>,
) {
    let [produce_topic, latency_topic] = topics(round, path);
    for op in [Op::Produce, Op::Consume, Op::Latency] {
        let t = if op == Op::Latency {
            &latency_topic
        } else {
            &produce_topic
        };
        measure(ctx, op, path, t, mesh, f, cpus, notes);
    }
}

/// The fresh topics of one path in one round: produce (read back by the
/// consume measurement) and latency.
fn topics(round: usize, path: &str) -> [String; 2] {
    [
        format!("r{round}-{path}-produce"),
        format!("r{round}-{path}-latency"),
    ]
}

/// Creates or deletes the topics of one path in one round.
fn path_topics(ctx: &Ctx<'_>, action: &str, round: usize, path: &str) -> Result<()> {
    for t in topics(round, path) {
        topic(ctx, action, &t)?;
    }
    Ok(())
}

/// One measurement: runs the client, records its figures and the CPU time
/// of the client, the broker and the node proxies, and (mesh) checks that
/// its connections were counted as mTLS by both proxies.
#[allow(clippy::too_many_arguments)]
fn measure(
    ctx: &Ctx<'_>,
    op: Op,
    path: &'static str,
    topic: &str,
    mesh: Option<&Mesh>,
    f: &mut Figures,
    cpus: &mut Vec<(Op, &'static str, Cpu)>,
    notes: &mut Vec<String>,
) {
    let plan = &ctx.plan;
    let ep = ctx.direct();
    let (args, limit) = match op {
        Op::Produce => (
            produce_args(&ep, topic, plan.produce),
            Duration::from_secs(180),
        ),
        Op::Consume => (
            consume_args(&ep, topic, plan.consume),
            Duration::from_secs(180),
        ),
        Op::Latency => (
            latency_args(&ep, topic, plan.lat_warmup, plan.lat_count),
            Duration::from_secs(120),
        ),
    };
    let nodes = mesh.map(|m| [m.a.pid(), m.b.pid()]);
    let ticks = |pid: Option<u32>| pid.and_then(cpu_ticks);
    let before = [
        ticks(Some(ctx.broker_pid)),
        ticks(nodes.map(|n| n[0])),
        ticks(nodes.map(|n| n[1])),
    ];
    let mtls_before = mesh.map(mtls_both);
    let jiffies = machine_jiffies();
    let t = Instant::now();
    let r = run_client(ctx, &args, limit);
    let wall = t.elapsed().as_secs_f64();
    let machine = busy_share(jiffies, machine_jiffies());
    let after = [
        ticks(Some(ctx.broker_pid)),
        ticks(nodes.map(|n| n[0])),
        ticks(nodes.map(|n| n[1])),
    ];
    let used = |i: usize| Some((after[i]?.saturating_sub(before[i]?)) as f64 / 100.0);
    let label = format!("{path:<6} {:<7}", op.name());
    let r = r.and_then(|r| {
        let j = &r.json;
        let ok = match op {
            Op::Produce => num(j, "acked") == plan.produce as f64 && num(j, "error_count") == 0.0,
            Op::Consume => num(j, "unique") == plan.consume as f64 && num(j, "missing") == 0.0,
            Op::Latency => {
                j["latency_ms"]["n"].as_f64() == Some(plan.lat_count as f64)
                    && num(j, "error_count") == 0.0
            }
        };
        if ok {
            Ok(r)
        } else {
            Err(anyhow!("incomplete result: {j}"))
        }
    });
    match r {
        Ok(r) => {
            let j = &r.json;
            match op {
                Op::Produce | Op::Consume => {
                    let (mbps, rps) = (num(j, "mb_per_s"), num(j, "records_per_s"));
                    println!(
                        "  {label}: {mbps:>8.1} MB/s {rps:>10.0} records/s  ({} records in {:.2} s)",
                        num(j, if op == Op::Produce { "acked" } else { "received" }),
                        num(j, "seconds")
                    );
                    if op == Op::Produce {
                        f.produce_mbps = Some(mbps);
                        f.produce_rps = Some(rps);
                    } else {
                        f.consume_mbps = Some(mbps);
                        f.consume_rps = Some(rps);
                    }
                }
                Op::Latency => (f.p50_us, f.p99_us) = report_latency(&label, j),
            }
            let cpu = Cpu {
                wall,
                client: r.cpu,
                broker: used(0),
                node_a: used(1),
                node_b: used(2),
                machine,
            };
            print_cpu(&cpu);
            cpus.push((op, path, cpu));
        }
        Err(e) => {
            println!("  {label}: FAILED: {e:#}");
            notes.push(format!("{path} {} failed: {e:#}", op.name()));
        }
    }
    if let (Some(m), Some(b)) = (mesh, mtls_before) {
        let a = mtls_both(m);
        let d = [grew(b[0], a[0]), grew(b[1], a[1])];
        let show = |v: Option<f64>| v.map_or("none".to_string(), |v| format!("+{v:.0}"));
        println!(
            "      mTLS connections opened: node-a {}, node-b {}",
            show(d[0]),
            show(d[1])
        );
        if d.iter().any(Option::is_none) {
            notes.push(format!(
                "{path} {}: a node proxy counted no new mTLS connection: \
                 not through the mesh?",
                op.name()
            ));
        }
    }
}

fn print_cpu(c: &Cpu) {
    print_cpu_line(
        &[
            ("client", c.client),
            ("broker", c.broker),
            ("node-a", c.node_a),
            ("node-b", c.node_b),
        ],
        c.wall,
        c.machine,
    );
}

/// One measurement's CPU seconds per process (those measured), its wall
/// time and how busy the whole machine was.
pub(crate) fn print_cpu_line(parts: &[(&str, Option<f64>)], wall: f64, machine: Option<f64>) {
    let mut line = String::new();
    for (name, v) in parts {
        if let Some(v) = v {
            let _ = write!(line, " {name} {v:.2}");
        }
    }
    let busy = machine.map_or(String::new(), |m| {
        format!("; machine {:.0}% busy", m * 100.0)
    });
    println!(
        "      cpu s:{line} (wall {:.2} s, 2 cores = {:.2} cpu s{busy})",
        wall,
        wall * 2.0
    );
}

// ---------------------------------------------------------------- report

fn report(ds: &[Figures], ms: &[Figures]) -> String {
    let med = |all: &[Figures], get: Get| median(all.iter().filter_map(get).collect());
    let paired = |get: Get, op: fn(f64, f64) -> Option<f64>| {
        median(
            ds.iter()
                .zip(ms)
                .filter_map(|(d, m)| op(get(d)?, get(m)?))
                .collect(),
        )
    };
    let fmt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "PASS".to_string(),
        Some(false) => "FAIL".to_string(),
        None => "n/a".to_string(),
    };
    let mut rows: Vec<[String; 7]> = Vec::new();
    let tput: [(&str, Get, usize); 4] = [
        ("produce throughput (MB/s)", |f| f.produce_mbps, 1),
        ("produce throughput (records/s)", |f| f.produce_rps, 0),
        ("consume throughput (MB/s)", |f| f.consume_mbps, 1),
        ("consume throughput (records/s)", |f| f.consume_rps, 0),
    ];
    for (name, get, prec) in tput {
        let r = paired(get, |d, m| (d > 0.0).then(|| m / d));
        rows.push([
            name.into(),
            fmt(med(ds, get), prec),
            fmt(med(ms, get), prec),
            fmt(r, 2),
            String::new(),
            format!(">= {TARGET_TPUT_RATIO}x"),
            verdict(r.map(|r| r >= TARGET_TPUT_RATIO)),
        ]);
    }
    let lat: [(&str, Get, bool); 2] = [
        ("produce latency p50 (µs)", |f| f.p50_us, false),
        ("produce latency p99 (µs)", |f| f.p99_us, true),
    ];
    for (name, get, target) in lat {
        let added = paired(get, |d, m| Some(m - d));
        rows.push([
            name.into(),
            fmt(med(ds, get), 0),
            fmt(med(ms, get), 0),
            fmt(paired(get, |d, m| (d > 0.0).then(|| m / d)), 2),
            added.map_or(String::new(), |a| format!("{a:+.0} µs")),
            if target {
                format!("+<= {TARGET_ADDED_P99_US:.0} µs")
            } else {
                String::new()
            },
            if target {
                verdict(added.map(|a| a <= TARGET_ADDED_P99_US))
            } else {
                String::new()
            },
        ]);
    }
    markdown_table(
        &[
            "metric",
            "direct",
            "mesh",
            "mesh/direct",
            "added",
            "target",
            "result",
        ],
        &rows,
    )
}

fn cpu_report(cpus: &[(Op, &'static str, Cpu)]) -> String {
    let mut groups: Vec<((Op, &str), Vec<Cpu>)> = Vec::new();
    for (op, path, c) in cpus {
        match groups.iter_mut().find(|(k, _)| *k == (*op, *path)) {
            Some((_, v)) => v.push(*c),
            None => groups.push(((*op, path), vec![*c])),
        }
    }
    let order = |op: Op| match op {
        Op::Produce => 0,
        Op::Consume => 1,
        Op::Latency => 2,
    };
    groups.sort_by_key(|((op, path), _)| (order(*op), *path != "direct"));
    let mut rows: Vec<[String; 8]> = Vec::new();
    for ((op, path), cs) in &groups {
        let med = |get: fn(&Cpu) -> Option<f64>| median(cs.iter().filter_map(get).collect());
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let wall = med(|c| Some(c.wall));
        let cores = median(
            cs.iter()
                .map(|c| {
                    [c.client, c.broker, c.node_a, c.node_b]
                        .iter()
                        .flatten()
                        .sum::<f64>()
                        / c.wall
                })
                .collect(),
        );
        rows.push([
            format!("{} {path}", op.name()),
            fmt(wall),
            fmt(med(|c| c.client)),
            fmt(med(|c| c.broker)),
            fmt(med(|c| c.node_a)),
            fmt(med(|c| c.node_b)),
            fmt(cores),
            med(|c| c.machine).map_or("-".into(), |m| format!("{:.0}%", m * 100.0)),
        ]);
    }
    markdown_table(
        &[
            "measurement",
            "wall s",
            "client",
            "broker",
            "node-a",
            "node-b",
            "cores",
            "machine busy",
        ],
        &rows,
    )
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_mtls_connections_only() {
        let text = "# TYPE istio_tcp_connections_opened_total counter\n\
            istio_tcp_connections_opened_total{reporter=\"source\",\
            connection_security_policy=\"mutual_tls\"} 2\n\
            istio_tcp_connections_opened_total{reporter=\"destination\",\
            connection_security_policy=\"mutual_tls\"} 3\n\
            istio_tcp_connections_opened_total{reporter=\"destination\",\
            connection_security_policy=\"unknown\"} 7\n\
            istio_tcp_connections_closed_total{connection_security_policy=\"mutual_tls\"} 5\n";
        assert_eq!(mtls_sum(text), 5.0);
        assert_eq!(mtls_sum(""), 0.0);
        assert!(mtls_sum("").is_sign_positive());
    }

    #[test]
    fn busy_share_of_jiffies() {
        assert_eq!(busy_share(Some((10, 100)), Some((60, 200))), Some(0.5));
        assert_eq!(busy_share(Some((10, 100)), Some((10, 100))), None);
        assert_eq!(busy_share(None, Some((1, 2))), None);
    }
}
