//! `weir-bench`: throughput, latency, connection rate and memory of the weir
//! node proxy, measured against a direct baseline taken in the same run.
//!
//! ```text
//! cargo build --release -p weir
//! cargo run --release -p weir-bench -- [--quick]     # as root
//! ```
//!
//! Four hosts (network namespaces) on one bridge: the mesh pair client
//! 198.18.0.2 / server 198.18.0.3, served by two `weir node` processes
//! (node-a for the client, node-b for the server) whose iptables rules
//! capture their traffic into the HBONE mTLS tunnel, and the direct pair
//! dclient 198.18.0.4 / dserver 198.18.0.5, identical but outside the mesh.
//! Each measurement runs on the direct pair and then on the mesh pair, back
//! to back, for a few rounds; the table shows medians and ratios. The load
//! generators are this binary re-executed in the namespaces (hidden
//! subcommands `__serve` and `__client`). See docs/performance.md.
//!
//! `--relay` adds a reference path of the mesh's shape without its work:
//! two plain TCP relays (`__relay`) between the direct pair, the ceiling of
//! any proxy with three TCP legs on the machine.
//!
//! `weir-bench kafka [--quick]` measures Kafka instead: a Tansu broker and
//! real clients, direct and through the mesh (see `kafka.rs`).
//!
//! `weir-bench gateway [--quick]` measures the same broker directly and
//! through `weir gateway`'s Kafka-aware TLS listener (see `gateway.rs`).
//!
//! `weir-bench control` measures the control plane's snapshot and delta
//! computation in-process (see `control.rs`).

mod control;
mod gateway;
mod kafka;
mod load;
mod sys;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use weir_testing::{require_root, Host, HostChild, TestNet};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// The baseline pair: same setup, not in the mesh.
const DCLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
const DSERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
const SERVER_PORT: u16 = 5201;
/// The `--relay` path: dclient -> relay-a (127.0.0.1 in dclient) ->
/// relay-b (dserver) -> dserver's load server over loopback.
const RELAY_A_PORT: u16 = 15101;
const RELAY_B_PORT: u16 = 15102;

// Targets of issue 2 on the 2-core reference machine.
const TARGET_TPUT_RATIO: f64 = 0.35;
const TARGET_ADDED_P50_US: f64 = 40.0;
const TARGET_IDLE_RSS_MIB: f64 = 20.0;
const TARGET_KIB_PER_CONN: f64 = 4.0;

#[derive(Debug, Parser)]
#[command(
    name = "weir-bench",
    about = "Benchmark the weir node proxy against a direct baseline (run as root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Shorter runs, for smoke testing (figures are rougher).
    #[arg(long)]
    quick: bool,
    /// The weir binary [default: `weir` next to this executable].
    #[arg(long, value_name = "PATH")]
    weir: Option<PathBuf>,
    /// Only measure the direct baseline (no node proxies).
    #[arg(long)]
    direct_only: bool,
    /// Idle connections held through the mesh for the memory figure
    /// [default: 10000, 1000 with --quick].
    #[arg(long)]
    conns: Option<usize>,
    /// Alternating direct/mesh rounds; the table shows medians
    /// [default: 3, 1 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Extra argument for both `weir node` processes (repeatable), e.g.
    /// `--node-arg=--worker-threads=1`.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    node_arg: Vec<String>,
    /// Also measure a reference path through two plain TCP relays (no TLS,
    /// no HTTP/2, no policy) shaped like the mesh: three TCP connections and
    /// two user-space passes. What it reaches is the ceiling of any proxy
    /// of that shape on this machine.
    #[arg(long)]
    relay: bool,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Kafka through the mesh: produce/consume throughput and produce
    /// latency of a Tansu broker, direct vs mesh (run as root).
    Kafka(kafka::KafkaArgs),
    /// Kafka through `weir gateway` (a KafkaGateway, TLS terminated there):
    /// produce/consume throughput, produce latency and gateway CPU per MB,
    /// direct vs gateway, same Tansu broker (run as root).
    Gateway(gateway::GatewayArgs),
    /// The control plane at scale, in-process (no root needed): snapshot
    /// and delta computation for 10 000 workloads, 1 000 policies, 100 nodes.
    Control(control::ControlArgs),
    /// (internal) load server, run inside the server namespace.
    #[command(name = "__serve", hide = true)]
    Serve {
        #[arg(long)]
        port: u16,
    },
    /// (internal) plain TCP relay of the `--relay` reference path.
    #[command(name = "__relay", hide = true)]
    Relay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        to: SocketAddr,
    },
    /// (internal) load client, run inside the client namespace.
    #[command(name = "__client", hide = true)]
    Client {
        #[command(subcommand)]
        test: ClientTest,
    },
}

#[derive(Debug, Subcommand)]
enum ClientTest {
    Tput {
        addr: SocketAddr,
        #[arg(long)]
        streams: usize,
        #[arg(long)]
        secs: f64,
    },
    Latency {
        addr: SocketAddr,
        #[arg(long)]
        warmup: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        max_secs: f64,
    },
    Cps {
        addr: SocketAddr,
        #[arg(long)]
        workers: usize,
        #[arg(long)]
        secs: f64,
    },
    Hold {
        addr: SocketAddr,
        #[arg(long)]
        n: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    // Every process of the benchmark (and the node proxies it starts)
    // inherits this; the 10k-connection test needs well over 1024 fds.
    let nofile = sys::raise_nofile(200_000);
    let result = match cli.command {
        Some(Sub::Serve { port }) => load::serve(port),
        Some(Sub::Relay { listen, to }) => load::relay(listen, to),
        Some(Sub::Client { test }) => run_client(test),
        Some(Sub::Kafka(ref args)) => kafka::run(args),
        Some(Sub::Gateway(ref args)) => gateway::run(args),
        Some(Sub::Control(ref args)) => control::run(args),
        None => run_bench(&cli, nofile.ok()),
    };
    if let Err(e) = result {
        eprintln!("weir-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run_client(test: ClientTest) -> Result<()> {
    match test {
        ClientTest::Tput {
            addr,
            streams,
            secs,
        } => load::throughput(addr, streams, secs),
        ClientTest::Latency {
            addr,
            warmup,
            count,
            max_secs,
        } => load::latency(addr, warmup, count, max_secs),
        ClientTest::Cps {
            addr,
            workers,
            secs,
        } => load::cps(addr, workers, secs),
        ClientTest::Hold { addr, n } => load::hold(addr, n),
    }
}

// ---------------------------------------------------------------- plan

struct Plan {
    rounds: usize,
    tput_secs: f64,
    lat_warmup: usize,
    lat_count: usize,
    lat_max_secs: f64,
    cps_secs: f64,
    cps_workers: usize,
    hold_conns: usize,
}

impl Plan {
    fn new(cli: &Cli) -> Plan {
        if cli.quick {
            Plan {
                rounds: cli.rounds.unwrap_or(1),
                tput_secs: 1.0,
                lat_warmup: 200,
                lat_count: 2_000,
                lat_max_secs: 2.0,
                cps_secs: 1.0,
                cps_workers: 4,
                hold_conns: cli.conns.unwrap_or(1_000),
            }
        } else {
            Plan {
                rounds: cli.rounds.unwrap_or(3),
                tput_secs: 3.0,
                lat_warmup: 1_000,
                lat_count: 10_000,
                lat_max_secs: 5.0,
                cps_secs: 3.0,
                cps_workers: 4,
                hold_conns: cli.conns.unwrap_or(10_000),
            }
        }
    }
}

/// Figures of one path (direct or mesh).
#[derive(Debug, Default, Clone)]
struct Figures {
    tput1_gbit: Option<f64>,
    tput8_gbit: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    cps1: Option<f64>,
    cps_n: Option<f64>,
}

impl Figures {
    /// Per-figure median over the rounds that produced it.
    fn median(all: &[Figures]) -> Figures {
        let med = |get: Get| median(all.iter().filter_map(get).collect());
        Figures {
            tput1_gbit: med(|f| f.tput1_gbit),
            tput8_gbit: med(|f| f.tput8_gbit),
            p50_us: med(|f| f.p50_us),
            p99_us: med(|f| f.p99_us),
            cps1: med(|f| f.cps1),
            cps_n: med(|f| f.cps_n),
        }
    }
}

/// Memory figures of the mesh.
#[derive(Debug, Default)]
struct Memory {
    idle_rss_kib: [Option<u64>; 2],
    /// (rss before, rss after) of each node around the held connections.
    held: Option<(usize, [(u64, u64); 2])>,
}

// ---------------------------------------------------------------- bench

fn run_bench(cli: &Cli, nofile: Option<libc::rlim_t>) -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let plan = Plan::new(cli);
    let weir = weir_binary(cli.weir.as_deref(), cli.direct_only)?;
    let machine = machine_info();
    println!("weir-bench{}", if cli.quick { " (--quick)" } else { "" });
    print!("{machine}");
    println!(
        "nofile limit: {}",
        nofile.map_or("unchanged".into(), |n| n.to_string())
    );
    println!();

    // Two pairs of hosts on one bridge. The mesh pair (client, server) is
    // captured by the node proxies; the direct pair (dclient, dserver) is
    // identical but not in the mesh config, so the baseline can be measured
    // while the proxies run, interleaved with the mesh measurements.
    let net = TestNet::new("bench");
    let client = net.add_host("client", CLIENT_IP);
    let server = net.add_host("server", SERVER_IP);
    let dclient = net.add_host("dclient", DCLIENT_IP);
    let dserver = net.add_host("dserver", DSERVER_IP);
    for host in [&client, &server, &dclient, &dserver] {
        tune_host(host);
    }
    let server_proc = start_server(&server)?;
    let dserver_proc = start_server(&dserver)?;
    let direct_path = LoadPath {
        client: &dclient,
        target: SocketAddr::from((DSERVER_IP, SERVER_PORT)),
        procs: vec![("server", dserver_proc.id())],
    };

    let mut mem = Memory::default();
    let mut notes = Vec::new();
    let mut mesh_nodes = None;
    if !cli.direct_only {
        println!("== mesh setup (client -> node-a -> HBONE mTLS -> node-b -> server)");
        let workloads = [
            MeshWorkload {
                name: "client",
                namespace: "bench",
                host: &client,
                node: "node-a",
            },
            MeshWorkload {
                name: "server",
                namespace: "bench",
                host: &server,
                node: "node-b",
            },
        ];
        match start_mesh(&weir, &workloads, &cli.node_arg, &mut notes) {
            Ok(m) => mesh_nodes = Some(m),
            Err(e) => {
                println!("mesh setup failed: {e:#}");
                notes.push(format!("mesh setup failed: {e:#}"));
            }
        }
    }
    let mesh_path = mesh_nodes.as_ref().map(|m| LoadPath {
        client: &client,
        target: SocketAddr::from((SERVER_IP, SERVER_PORT)),
        procs: vec![
            ("server", server_proc.id()),
            ("node-a", m.a.pid()),
            ("node-b", m.b.pid()),
        ],
    });
    if let (Some(m), Some(path)) = (&mesh_nodes, &mesh_path) {
        mesh_checks(m, path, plan.hold_conns, &mut mem, &mut notes);
    }
    let relays = if cli.relay {
        println!("== relay setup (dclient -> relay-a -> relay-b -> dserver; plain TCP)");
        match start_relays(&dclient, &dserver) {
            Ok(r) => Some(r),
            Err(e) => {
                println!("relay setup failed: {e:#}");
                notes.push(format!("relay setup failed: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let relay_path = relays.as_ref().map(|(a, b)| LoadPath {
        client: &dclient,
        target: SocketAddr::from((Ipv4Addr::LOCALHOST, RELAY_A_PORT)),
        procs: vec![
            ("server", dserver_proc.id()),
            ("relay-a", a.id()),
            ("relay-b", b.id()),
        ],
    });
    println!();

    // Each measurement runs direct, then mesh, back to back, round after
    // round, so that load from other jobs on the machine hits both about
    // equally; the table shows the median over the rounds.
    let mut directs = Vec::new();
    let mut meshes = Vec::new();
    let mut relayed = Vec::new();
    for round in 1..=plan.rounds {
        println!("== round {round}/{}", plan.rounds);
        let mut d = Figures::default();
        let mut m = Figures::default();
        let mut r = Figures::default();
        for test in [
            Test::Tput(1),
            Test::Tput(8),
            Test::Latency,
            Test::Cps(1),
            Test::Cps(plan.cps_workers),
        ] {
            run_test(test, "direct", &direct_path, &plan, &mut d);
            if let Some(path) = &mesh_path {
                run_test(test, "mesh", path, &plan, &mut m);
            }
            if let Some(path) = &relay_path {
                run_test(test, "relay", path, &plan, &mut r);
            }
        }
        directs.push(d);
        if mesh_path.is_some() {
            meshes.push(m);
        }
        if relay_path.is_some() {
            relayed.push(r);
        }
        println!();
    }
    if let Some(mut m) = mesh_nodes {
        stop_mesh(&mut m, &client, &server, &mut notes);
        println!();
    }
    println!(
        "Medians of {} round(s); mesh/direct and added (mesh - direct) are medians of the per-round values.",
        plan.rounds
    );
    let table = report(&directs, &meshes, &mem, &plan);
    println!("{table}");
    if relay_path.is_some() {
        println!(
            "Reference: two plain TCP relays in the mesh's shape (no TLS, no HTTP/2); \
             relay/direct is the ceiling of such a proxy here, mesh/relay what weir reaches of it."
        );
        println!("{}", report_relay(&directs, &meshes, &relayed, &plan));
    }
    drop(relays);
    for n in &notes {
        println!("note: {n}");
    }
    Ok(())
}

/// The `weir` binary: `explicit`, or `weir` next to this executable. Must
/// exist unless only the direct baseline is measured.
fn weir_binary(explicit: Option<&Path>, direct_only: bool) -> Result<PathBuf> {
    let weir = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("executable has no directory")?
            .join("weir"),
    };
    if !direct_only && !weir.is_file() {
        bail!(
            "the weir binary {} does not exist: build it first \
             (`cargo build --release -p weir`), or pass --weir PATH, or --direct-only",
            weir.display()
        );
    }
    Ok(weir)
}

/// Widens the ephemeral port range and enables `tcp_tw_reuse` in `host`.
fn tune_host(host: &Host) {
    // Many short connections (cps) in a few seconds: widen the ephemeral
    // range and let TIME_WAIT ports be reused, per namespace. The range
    // stays above the mesh ports (15000-15090): a TIME_WAIT socket on local
    // port 15008 would keep the proxy from listening.
    for (k, v) in [
        ("net.ipv4.ip_local_port_range", "20000 65535"),
        ("net.ipv4.tcp_tw_reuse", "1"),
    ] {
        let out = host.exec("sysctl", &["-qw", &format!("{k}={v}")]);
        if !out.status.success() {
            eprintln!(
                "warning: sysctl {k} in {}: {}",
                host.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// Starts the load server in the server namespace and waits for `READY`.
fn start_server(server: &Host) -> Result<HostChild> {
    let mut cmd = server.command(&std::env::current_exe()?.to_string_lossy());
    cmd.args(["__serve", "--port", &SERVER_PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = server.spawn_command(cmd);
    let stdout = child.child_mut().stdout.take().context("server stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != "READY" {
        bail!("load server did not start (said {line:?})");
    }
    Ok(child)
}

/// Starts the two relays of the `--relay` path (relay-b first, so relay-a
/// never forwards to nothing) and waits for each to say `READY`.
fn start_relays(dclient: &Host, dserver: &Host) -> Result<(HostChild, HostChild)> {
    let exe = std::env::current_exe()?;
    let start = |host: &Host, listen: SocketAddr, to: SocketAddr| -> Result<HostChild> {
        let mut cmd = host.command(&exe.to_string_lossy());
        cmd.args([
            "__relay",
            "--listen",
            &listen.to_string(),
            "--to",
            &to.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
        let mut child = host.spawn_command(cmd);
        let stdout = child.child_mut().stdout.take().context("relay stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "READY" {
            bail!("relay in {} did not start (said {line:?})", host.name);
        }
        Ok(child)
    };
    let b = start(
        dserver,
        SocketAddr::from((DSERVER_IP, RELAY_B_PORT)),
        SocketAddr::from((Ipv4Addr::LOCALHOST, SERVER_PORT)),
    )?;
    let a = start(
        dclient,
        SocketAddr::from((Ipv4Addr::LOCALHOST, RELAY_A_PORT)),
        SocketAddr::from((DSERVER_IP, RELAY_B_PORT)),
    )?;
    Ok((a, b))
}

/// Runs `f` and prints the CPU time and minor page faults of the processes
/// `procs` meanwhile (many faults per MB moved mean buffers are being
/// faulted in afresh, e.g. a malloc that returns memory too eagerly).
fn with_cpu<T>(procs: &[(&str, u32)], f: impl FnOnce() -> T) -> T {
    let before: Vec<Option<ProcStat>> = procs.iter().map(|(_, pid)| proc_stat(*pid)).collect();
    let t = Instant::now();
    let r = f();
    let wall = t.elapsed().as_secs_f64();
    let (mut cpu, mut faults) = (String::new(), String::new());
    for ((name, pid), b) in procs.iter().zip(before) {
        if let (Some(b), Some(a)) = (b, proc_stat(*pid)) {
            // /proc reports in USER_HZ = 100 ticks per second.
            let ticks = a.cpu_ticks.saturating_sub(b.cpu_ticks);
            let _ = write!(cpu, " {name} {:.2}", ticks as f64 / 100.0);
            let _ = write!(
                faults,
                " {name} {}",
                a.minor_faults.saturating_sub(b.minor_faults)
            );
        }
    }
    println!(
        "      cpu s:{cpu} (wall {wall:.2} s, 2 cores = {:.2} cpu s); page faults:{faults}",
        wall * 2.0
    );
    r
}

/// What `/proc/<pid>/stat` says of a process (all threads).
struct ProcStat {
    /// utime + stime, in USER_HZ ticks.
    cpu_ticks: u64,
    /// minflt.
    minor_faults: u64,
}

/// utime + stime of a process (all threads), in USER_HZ ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|s| s.cpu_ticks)
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 10, 14 and 15 of stat(5); `rest` starts at field 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        cpu_ticks: field(14)? + field(15)?,
        minor_faults: field(10)?,
    })
}

/// Where a load runs: the client host, the server address, and the
/// processes whose CPU time is reported.
struct LoadPath<'a> {
    client: &'a Host,
    target: SocketAddr,
    procs: Vec<(&'static str, u32)>,
}

#[derive(Debug, Clone, Copy)]
enum Test {
    Tput(usize),
    Latency,
    Cps(usize),
}

/// Runs one measurement on one path and stores it in `f`.
fn run_test(test: Test, label: &str, path: &LoadPath<'_>, plan: &Plan, f: &mut Figures) {
    let t = path.target.to_string();
    match test {
        Test::Tput(streams) => {
            let n = streams.to_string();
            let secs = plan.tput_secs.to_string();
            let r = with_cpu(&path.procs, || {
                run_client_proc(
                    path.client,
                    &["tput", &t, "--streams", &n, "--secs", &secs],
                    Duration::from_secs_f64(plan.tput_secs + 30.0),
                )
                .map(|r| {
                    let mb = r.get("mbps").copied().unwrap_or(0.0);
                    let gb = r.get("gbitps").copied().unwrap_or(0.0);
                    println!(
                        "  {label:<6} throughput x{streams:<2}: {mb:>9.1} MB/s  {gb:>7.3} Gbit/s"
                    );
                    gb
                })
            });
            let v = report_err(&format!("{label} throughput x{streams}"), r);
            if streams == 1 {
                f.tput1_gbit = v;
            } else {
                f.tput8_gbit = v;
            }
        }
        Test::Latency => {
            let r = with_cpu(&path.procs, || {
                run_client_proc(
                    path.client,
                    &[
                        "latency",
                        &t,
                        "--warmup",
                        &plan.lat_warmup.to_string(),
                        "--count",
                        &plan.lat_count.to_string(),
                        "--max-secs",
                        &plan.lat_max_secs.to_string(),
                    ],
                    Duration::from_secs_f64(plan.lat_max_secs + 30.0),
                )
                .inspect(|r| {
                    println!(
                        "  {label:<6} latency 1 KiB : p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  ({} round trips)",
                        r["p50_us"], r["p90_us"], r["p99_us"], r["p999_us"], r["count"]
                    );
                })
            });
            if let Some(r) = report_err(&format!("{label} latency"), r) {
                f.p50_us = r.get("p50_us").copied();
                f.p99_us = r.get("p99_us").copied();
            }
        }
        Test::Cps(workers) => {
            let w = workers.to_string();
            let r = with_cpu(&path.procs, || {
                run_client_proc(
                    path.client,
                    &[
                        "cps",
                        &t,
                        "--workers",
                        &w,
                        "--secs",
                        &plan.cps_secs.to_string(),
                    ],
                    Duration::from_secs_f64(plan.cps_secs + 30.0),
                )
                .map(|r| {
                    println!(
                        "  {label:<6} conn/s x{workers:<2}    : {:>9.0} /s  ({} ok, {} failed)",
                        r["cps"], r["ok"], r["failed"]
                    );
                    r["cps"]
                })
            });
            let v = report_err(&format!("{label} cps x{workers}"), r);
            if workers == 1 {
                f.cps1 = v;
            } else {
                f.cps_n = v;
            }
        }
    }
}

fn report_err<T>(what: &str, r: Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            println!("  {what}: FAILED: {e:#}");
            None
        }
    }
}

/// Runs `weir-bench __client <args>` in the client namespace and parses its
/// `RESULT` line.
fn run_client_proc(
    client: &Host,
    args: &[&str],
    timeout: Duration,
) -> Result<HashMap<String, f64>> {
    let mut cmd = client.command(&std::env::current_exe()?.to_string_lossy());
    cmd.arg("__client")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = client.spawn_command(cmd);
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
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.child_mut().try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.is_none() {
        child.kill();
        bail!("client `{}` timed out after {timeout:?}", args.join(" "));
    }
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !err.trim().is_empty() {
        for line in err.lines().take(5) {
            println!("  [client stderr] {line}");
        }
    }
    parse_result(&out).ok_or_else(|| {
        anyhow!(
            "client `{}` exited {:?} without a result: {}",
            args.join(" "),
            status,
            err.trim()
        )
    })
}

fn parse_result(out: &str) -> Option<HashMap<String, f64>> {
    let line = out.lines().find_map(|l| l.strip_prefix("RESULT "))?;
    Some(
        line.split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}

// ---------------------------------------------------------------- mesh

/// A running `weir node`; stopped with SIGTERM (SIGKILL after 5 s) on drop.
struct Node {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    readiness: SocketAddr,
    metrics: SocketAddr,
}

impl Node {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid())
    }

    /// SIGTERM, then wait up to 5 s, then SIGKILL. Returns how it ended.
    fn stop(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return "not running".into();
        };
        if let Ok(Some(st)) = child.try_wait() {
            return format!("had already exited ({st})");
        }
        let t = Instant::now();
        if let Err(e) = sys::sigterm(child.id()) {
            let _ = child.kill();
            let _ = child.wait();
            return format!("SIGTERM failed ({e}), killed");
        }
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(st)) = child.try_wait() {
                return format!("exited after SIGTERM in {:?} ({st})", t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        "did not exit within 5 s of SIGTERM; SIGKILLed".into()
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_node(
    weir: &Path,
    name: &'static str,
    config: &Path,
    state: &Path,
    dir: &Path,
    extra: &[String],
) -> Result<Node> {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let readiness = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let log = dir.join(format!("{name}.log"));
    let log_file = std::fs::File::create(&log)?;
    let child = Command::new(weir)
        .arg("node")
        .arg("--config")
        .arg(config)
        .args(["--node", name])
        .arg("--state-dir")
        .arg(state)
        .args(["--admin-addr", &admin.to_string()])
        .args(["--metrics-addr", &metrics.to_string()])
        .args(["--readiness-addr", &readiness.to_string()])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", weir.display()))?;
    let mut node = Node {
        name,
        child: Some(child),
        log,
        readiness,
        metrics,
    };
    let t = Instant::now();
    loop {
        if let Some(Ok(Some(st))) = node.child.as_mut().map(Child::try_wait) {
            node.child = None;
            bail!(
                "{name} exited during startup ({st}):\n{}",
                node.log_tail(20)
            );
        }
        if matches!(http_get(node.readiness, "/healthz/ready"), Ok((200, _))) {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("{name} not ready after 30 s:\n{}", node.log_tail(20));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "  {name}: pid {} ready in {:.0} ms (readiness {}, metrics {})",
        node.pid(),
        t.elapsed().as_secs_f64() * 1e3,
        node.readiness,
        node.metrics
    );
    Ok(node)
}

/// The two node proxies and their temporary directory.
struct Mesh {
    a: Node,
    b: Node,
    _dir: RemoveDir,
}

/// A mesh Workload of the benchmark: its service account is its name, its
/// address the host's.
struct MeshWorkload<'a> {
    name: &'a str,
    namespace: &'a str,
    host: &'a Host,
    /// "node-a" or "node-b".
    node: &'a str,
}

/// Writes the mesh config, starts node-a (which creates the CA in a fresh
/// temporary state directory) and then node-b, and checks that each
/// workload's namespace got its REDIRECT rules.
fn start_mesh(
    weir: &Path,
    workloads: &[MeshWorkload<'_>],
    node_args: &[String],
    notes: &mut Vec<String>,
) -> Result<Mesh> {
    let dir = std::env::temp_dir().join(format!("weir-bench-{}", std::process::id()));
    // A fresh CA and state for every start.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let guard = RemoveDir(dir.clone());
    let config = dir.join("mesh.yaml");
    let mut yaml = String::new();
    for w in workloads {
        let _ = write!(
            yaml,
            "---
apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}
spec: {{serviceAccount: {name}, address: {addr}, node: {node}, netns: {netns}}}
",
            name = w.name,
            ns = w.namespace,
            addr = w.host.addr,
            node = w.node,
            netns = w.host.name,
        );
    }
    std::fs::write(&config, yaml)?;
    let state = dir.join("state");
    let a = start_node(weir, "node-a", &config, &state, &dir, node_args)?;
    let b = start_node(weir, "node-b", &config, &state, &dir, node_args)?;

    // Capture in place?
    for w in workloads {
        let rules = w.host.exec_ok("iptables-save", &["-t", "nat"]);
        let redirects = rules.lines().filter(|l| l.contains("REDIRECT")).count();
        println!(
            "  {}: {redirects} REDIRECT rules in {}",
            w.node, w.host.name
        );
        if redirects == 0 {
            notes.push(format!(
                "no REDIRECT rule found in {} after {} was ready",
                w.host.name, w.node
            ));
        }
    }
    Ok(Mesh { a, b, _dir: guard })
}

/// Idle RSS, a probe proving the traffic goes through both proxies, and the
/// held idle connections.
fn mesh_checks(
    mesh: &Mesh,
    path: &LoadPath<'_>,
    hold: usize,
    mem: &mut Memory,
    notes: &mut Vec<String>,
) {
    let (a, b) = (&mesh.a, &mesh.b);
    // Idle memory, before any traffic (one settle second after readiness).
    std::thread::sleep(Duration::from_secs(1));
    mem.idle_rss_kib = [a.rss_kib().ok(), b.rss_kib().ok()];
    println!(
        "  idle RSS: node-a {} KiB, node-b {} KiB",
        fmt_opt_u(mem.idle_rss_kib[0]),
        fmt_opt_u(mem.idle_rss_kib[1])
    );

    // One burst of connections, then the connection counters of both nodes
    // must have moved.
    let before = [opened_total(a), opened_total(b)];
    let probe = run_client_proc(
        path.client,
        &[
            "cps",
            &path.target.to_string(),
            "--workers",
            "1",
            "--secs",
            "0.05",
        ],
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(300));
    let after = [opened_total(a), opened_total(b)];
    match &probe {
        Ok(r) => println!(
            "  probe: {} ok / {} failed connections",
            r["ok"], r["failed"]
        ),
        Err(e) => println!("  probe FAILED: {e:#}"),
    }
    println!(
        "  istio_tcp_connections_opened_total: node-a {} -> {}, node-b {} -> {}",
        fmt_opt_f(before[0]),
        fmt_opt_f(after[0]),
        fmt_opt_f(before[1]),
        fmt_opt_f(after[1])
    );
    let moved = |i: usize| matches!((before[i], after[i]), (Some(x), Some(y)) if y > x);
    if !moved(0) || !moved(1) {
        notes.push(
            "the connection counters of the node proxies did not move during the probe: \
             the mesh figures may not be going through the proxies"
                .into(),
        );
    }

    match hold_conns(path.client, path.target, hold, a, b) {
        Ok(h) => mem.held = Some(h),
        Err(e) => {
            println!("  held connections FAILED: {e:#}");
            notes.push(format!("holding {hold} connections failed: {e:#}"));
        }
    }
    // Let the closes of the held connections finish.
    std::thread::sleep(Duration::from_secs(1));
}

/// Checks the logs, stops both nodes, checks that their rules are gone.
fn stop_mesh(mesh: &mut Mesh, client: &Host, server: &Host, notes: &mut Vec<String>) {
    println!("== mesh teardown");
    for node in [&mesh.a, &mesh.b] {
        // What the load left behind: live memory plus what malloc keeps free.
        if let Ok(kib) = node.rss_kib() {
            println!(
                "  {}: RSS after the load {:.1} MiB",
                node.name,
                kib as f64 / 1024.0
            );
        }
        let tail = node.log_tail(200);
        let warn = tail
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("\"level\":\"warn"))
            .count();
        if warn > 0 {
            notes.push(format!(
                "{} logged {warn} warn/error lines; last ones:\n{}",
                node.name,
                node.log_tail(5)
            ));
        }
    }
    for node in [&mut mesh.b, &mut mesh.a] {
        let how = node.stop();
        println!("  {}: {how}", node.name);
        if !how.starts_with("exited after SIGTERM") {
            notes.push(format!("{} {how}", node.name));
        }
    }
    for host in [client, server] {
        let rules = host.exec_ok("iptables-save", &["-t", "nat"]);
        let left = rules.lines().filter(|l| l.contains("REDIRECT")).count();
        if left > 0 {
            notes.push(format!(
                "{left} REDIRECT rules left in {} after the nodes exited",
                host.name
            ));
        }
    }
}

fn hold_conns(
    client: &Host,
    target: SocketAddr,
    n: usize,
    a: &Node,
    b: &Node,
) -> Result<(usize, [(u64, u64); 2])> {
    let rss0 = [a.rss_kib()?, b.rss_kib()?];
    let mut cmd = client.command(&std::env::current_exe()?.to_string_lossy());
    cmd.args([
        "__client",
        "hold",
        &target.to_string(),
        "--n",
        &n.to_string(),
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    let mut child = client.spawn_command(cmd);
    let stdout = child.child_mut().stdout.take().context("hold stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .map_err(|_| anyhow!("holding {n} connections took over 120 s"))?;
    let r = parse_result(&line).ok_or_else(|| anyhow!("hold client said {line:?}"))?;
    let held = r.get("held").copied().unwrap_or(0.0) as usize;
    println!(
        "  held {held} idle connections (opened in {:.2} s)",
        r.get("secs").copied().unwrap_or(0.0)
    );
    std::thread::sleep(Duration::from_secs(2));
    let rss1 = [a.rss_kib()?, b.rss_kib()?];
    // Closing stdin tells the client to close everything.
    drop(child.child_mut().stdin.take());
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if child.child_mut().try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill();
    if held < n {
        bail!("only {held} of {n} connections could be opened (see the client's message above)");
    }
    for (i, name) in ["node-a", "node-b"].iter().enumerate() {
        println!(
            "  {name}: RSS {} KiB -> {} KiB with {held} connections = {:.2} KiB/connection",
            rss0[i],
            rss1[i],
            per_conn_kib(rss0[i], rss1[i], held)
        );
    }
    Ok((held, [(rss0[0], rss1[0]), (rss0[1], rss1[1])]))
}

fn per_conn_kib(before: u64, after: u64, n: usize) -> f64 {
    (after as f64 - before as f64) / n.max(1) as f64
}

struct RemoveDir(PathBuf);
impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))
}

/// Sum of `istio_tcp_connections_opened_total` over all label sets.
fn opened_total(node: &Node) -> Option<f64> {
    let (code, body) = http_get(node.metrics, "/metrics").ok()?;
    if code != 200 {
        return None;
    }
    Some(
        body.lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Minimal HTTP/1.1 GET; returns the status code and body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP response"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

// ---------------------------------------------------------------- report

fn machine_info() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, m)| m.trim().to_string());
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "date:    {date}");
    let _ = writeln!(s, "cpu:     {nproc} x {model}");
    let _ = writeln!(s, "kernel:  {}", kernel.trim());
    let _ = writeln!(s, "memory:  {:.1} GiB", mem_kib as f64 / 1024.0 / 1024.0);
    let _ = writeln!(
        s,
        "loadavg: {} (machine shared with other jobs: figures are noisy)",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    s
}

fn fmt_opt_u(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn fmt_opt_f(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.0}", v.abs()))
}

/// The median of some values (mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

type Get = fn(&Figures) -> Option<f64>;

/// The table. Direct and mesh columns are medians over the rounds; ratios
/// and added latencies are medians of the per-round (paired, back-to-back)
/// ratios and differences.
fn report(ds: &[Figures], ms: &[Figures], mem: &Memory, plan: &Plan) -> String {
    let d = &Figures::median(ds);
    let m = &Figures::median(ms);
    let paired = |get: Get, op: fn(f64, f64) -> Option<f64>| {
        median(
            ds.iter()
                .zip(ms)
                .filter_map(|(d, m)| op(get(d)?, get(m)?))
                .collect(),
        )
    };
    let ratio_of = |get: Get| paired(get, |d, m| (d > 0.0).then(|| m / d));
    let added_of = |get: Get| paired(get, |d, m| Some(m - d));
    struct Row {
        metric: String,
        direct: String,
        mesh: String,
        ratio: String,
        added: String,
        target: String,
        verdict: String,
    }
    let f = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "PASS".to_string(),
        Some(false) => "FAIL".to_string(),
        None => "n/a".to_string(),
    };
    let mut rows = Vec::new();
    let rows_tput: [(&str, Get); 2] = [
        ("throughput, 1 stream (Gbit/s)", |f| f.tput1_gbit),
        ("throughput, 8 streams (Gbit/s)", |f| f.tput8_gbit),
    ];
    for (name, get) in rows_tput {
        let (dv, mv) = (get(d), get(m));
        let r = ratio_of(get);
        rows.push(Row {
            metric: name.into(),
            direct: f(dv, 3),
            mesh: f(mv, 3),
            ratio: f(r, 2),
            added: String::new(),
            target: format!(">= {TARGET_TPUT_RATIO}x"),
            verdict: verdict(r.map(|r| r >= TARGET_TPUT_RATIO)),
        });
    }
    let rows_lat: [(&str, Get, bool); 2] = [
        ("latency 1 KiB rr, p50 (µs)", |f| f.p50_us, true),
        ("latency 1 KiB rr, p99 (µs)", |f| f.p99_us, false),
    ];
    for (name, get, target) in rows_lat {
        let (dv, mv) = (get(d), get(m));
        let added = added_of(get);
        rows.push(Row {
            metric: name.into(),
            direct: f(dv, 1),
            mesh: f(mv, 1),
            ratio: f(ratio_of(get), 2),
            added: added.map_or(String::new(), |a| format!("{a:+.1} µs")),
            target: if target {
                format!("+<= {TARGET_ADDED_P50_US} µs")
            } else {
                String::new()
            },
            verdict: if target {
                verdict(added.map(|a| a <= TARGET_ADDED_P50_US))
            } else {
                String::new()
            },
        });
    }
    let rows_cps: [(String, Get); 2] = [
        ("connections/s, 1 worker".to_string(), |f| f.cps1),
        (
            format!("connections/s, {} workers", plan.cps_workers),
            |f| f.cps_n,
        ),
    ];
    for (name, get) in rows_cps {
        rows.push(Row {
            metric: name,
            direct: f(get(d), 0),
            mesh: f(get(m), 0),
            ratio: f(ratio_of(get), 2),
            added: String::new(),
            target: String::new(),
            verdict: String::new(),
        });
    }
    for (i, name) in ["node-a", "node-b"].iter().enumerate() {
        let mib = mem.idle_rss_kib[i].map(|k| k as f64 / 1024.0);
        rows.push(Row {
            metric: format!("{name} idle RSS (MiB)"),
            direct: "-".into(),
            mesh: f(mib, 1),
            ratio: String::new(),
            added: String::new(),
            target: format!("<= {TARGET_IDLE_RSS_MIB} MiB"),
            verdict: verdict(mib.map(|m| m <= TARGET_IDLE_RSS_MIB)),
        });
    }
    for (i, name) in ["node-a", "node-b"].iter().enumerate() {
        let per = mem.held.map(|(n, rss)| per_conn_kib(rss[i].0, rss[i].1, n));
        rows.push(Row {
            metric: format!(
                "{name} KiB per idle conn ({} held)",
                mem.held.map_or(plan.hold_conns, |(n, _)| n)
            ),
            direct: "-".into(),
            mesh: f(per, 2),
            ratio: String::new(),
            added: String::new(),
            target: format!("<= {TARGET_KIB_PER_CONN} KiB"),
            verdict: verdict(per.map(|p| p <= TARGET_KIB_PER_CONN)),
        });
    }
    let header = [
        "metric",
        "direct",
        "mesh",
        "mesh/direct",
        "added",
        "target",
        "result",
    ];
    let cells: Vec<[String; 7]> = rows
        .into_iter()
        .map(|r| {
            [
                r.metric, r.direct, r.mesh, r.ratio, r.added, r.target, r.verdict,
            ]
        })
        .collect();
    markdown_table(&header, &cells)
}

/// The `--relay` table: the plain relays next to the direct path and the
/// mesh, as per-round ratios (medians), and for latency what each adds to
/// the direct round trip.
fn report_relay(ds: &[Figures], ms: &[Figures], rs: &[Figures], plan: &Plan) -> String {
    let (d, m, r) = (
        Figures::median(ds),
        Figures::median(ms),
        Figures::median(rs),
    );
    let f = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    // Per round: op(a, b) where both figures exist; the median of those.
    let paired = |xs: &[Figures], ys: &[Figures], get: Get, op: fn(f64, f64) -> Option<f64>| {
        median(
            xs.iter()
                .zip(ys)
                .filter_map(|(x, y)| op(get(x)?, get(y)?))
                .collect(),
        )
    };
    let ratio = |x: f64, y: f64| (x > 0.0).then(|| y / x);
    let added = |x: f64, y: f64| Some(y - x);
    let mut cells = Vec::new();
    let rows: [(String, Get, usize, bool); 6] = [
        (
            "throughput, 1 stream (Gbit/s)".into(),
            |f| f.tput1_gbit,
            3,
            false,
        ),
        (
            "throughput, 8 streams (Gbit/s)".into(),
            |f| f.tput8_gbit,
            3,
            false,
        ),
        ("latency 1 KiB rr, p50 (µs)".into(), |f| f.p50_us, 1, true),
        ("latency 1 KiB rr, p99 (µs)".into(), |f| f.p99_us, 1, true),
        ("connections/s, 1 worker".into(), |f| f.cps1, 0, false),
        (
            format!("connections/s, {} workers", plan.cps_workers),
            |f| f.cps_n,
            0,
            false,
        ),
    ];
    for (name, get, prec, latency) in rows {
        let (rd, md, mr) = if latency {
            let us = |v: Option<f64>| v.map_or("-".to_string(), |a| format!("{a:+.1} µs"));
            (
                us(paired(ds, rs, get, added)),
                us(paired(ds, ms, get, added)),
                us(paired(rs, ms, get, added)),
            )
        } else {
            (
                f(paired(ds, rs, get, ratio), 2),
                f(paired(ds, ms, get, ratio), 2),
                f(paired(rs, ms, get, ratio), 2),
            )
        };
        cells.push([
            name,
            f(get(&d), prec),
            f(get(&r), prec),
            f(get(&m), prec),
            rd,
            md,
            mr,
        ]);
    }
    markdown_table(
        &[
            "metric",
            "direct",
            "relay",
            "mesh",
            "relay/direct",
            "mesh/direct",
            "mesh/relay",
        ],
        &cells,
    )
}

/// A markdown table, columns padded; the first column left-aligned, the
/// others right-aligned.
fn markdown_table<const N: usize>(header: &[&str; N], cells: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| -> String {
        let mut s = String::from("|");
        for (i, c) in cols.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if i == 0 {
                let _ = write!(s, " {c}{} |", " ".repeat(pad));
            } else {
                let _ = write!(s, " {}{c} |", " ".repeat(pad));
            }
        }
        s
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", line(&header.map(String::from)));
    let sep: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                format!(":{}", "-".repeat(*w - 1))
            } else {
                format!("{}:", "-".repeat(*w - 1))
            }
        })
        .collect();
    let mut sep_line = String::from("|");
    for s in &sep {
        let _ = write!(sep_line, " {s} |");
    }
    let _ = writeln!(out, "{sep_line}");
    for row in cells {
        let _ = writeln!(out, "{}", line(row));
    }
    out
}
