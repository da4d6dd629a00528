//! `weir-bench gateway`: Kafka through `weir gateway`'s Kafka-aware
//! listener (a `KafkaGateway`), against the same broker reached directly,
//! in the same run (issue 4, item 7).
//!
//! Three hosts (network namespaces) on one bridge: `client` 198.18.0.2 runs
//! real clients (`tools/kafka/client.py` with confluent-kafka), `broker`
//! 198.18.0.3 one Tansu broker with in-memory storage, `gw` 198.18.0.4 one
//! `weir gateway` serving a KafkaGateway on port 9094: TLS (SIMPLE, a
//! server certificate made with the openssl CLI for `kafka.example.com` and
//! `*.example.com`) terminated at the gateway, brokers advertised as
//! `b{id}-kafka.example.com:9094`, upstream plain TCP to `broker:9092` (the
//! broker is not a mesh workload). The client namespace resolves those
//! names to the gateway through `/etc/netns/<client-ns>/hosts`.
//!
//! Paths, measured back to back in every round (their order alternates
//! from round to round), each on fresh single-partition topics:
//! - `direct`: client → broker:9092, plaintext;
//! - `gateway`: client → TLS with SNI → gateway:9094 → TCP → broker:9092;
//! - with `--hbone`, `gw-hbone` (last in each round): a second gateway
//!   (port 9095) whose config makes the broker a mesh Workload served by a
//!   `weir node` (node-b), so the upstream is HBONE (HTTP/2 CONNECT over
//!   mTLS with the gateway's SPIFFE identity) to node-b, then the broker.
//!   node-b runs only during that measurement (its capture rules would
//!   otherwise sit on the other paths).
//!
//! Measurements as `weir-bench kafka` (see `kafka.rs`): produce and consume
//! throughput, sequential produce latency. Every gateway measurement is
//! checked against the gateway's own per-topic counters
//! (`weir_kafka_produced_records_total`, `weir_kafka_fetched_records_total`),
//! which proves it went through the gateway. The gateway's CPU time during
//! each measurement gives its cost per MB moved.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use weir_core::config::SourceFile;
use weir_core::{Config, MeshSettings};
use weir_testing::{require_root, Host, HostChild, TestNet};

use crate::kafka::{
    self, busy_share, consume_args, latency_args, machine_jiffies, mtls_opened, num, produce_args,
    report_latency, run_client, start_tansu, tail, topic, warm_up, Ctx, Endpoint, Op, Plan,
    PlanArgs, ToolArgs, Tools, KAFKA_PORT, RECORD_SIZE,
};
use crate::{
    cpu_ticks, machine_info, markdown_table, median, start_node, sys, tune_host, weir_binary, Node,
    RemoveDir,
};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const BROKER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);

const BOOTSTRAP_HOST: &str = "kafka.example.com";
/// The KafkaGateway's `brokerHostTemplate`.
const BROKER_HOST_TEMPLATE: &str = "b{id}-kafka.example.com";

// Targets of issue 4, item 7.
const TARGET_PRODUCE_RATIO: f64 = 0.95;
const TARGET_CONSUME_RATIO: f64 = 0.9;
const TARGET_ADDED_P99_US: f64 = 300.0;

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    plan: PlanArgs,
    /// Also measure the gateway with an HBONE upstream: the broker a mesh
    /// Workload behind a `weir node`.
    #[arg(long)]
    hbone: bool,
    #[command(flatten)]
    tools: ToolArgs,
    /// Extra argument for the `weir gateway` processes (repeatable), e.g.
    /// `--gateway-arg=--worker-threads=1`.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    gateway_arg: Vec<String>,
    /// Extra argument for the `weir node` of --hbone (repeatable).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    node_arg: Vec<String>,
}

/// The ways from the client to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// client → broker, plaintext.
    Direct,
    /// client → TLS → gateway → TCP → broker.
    Gateway,
    /// client → TLS → gateway → HBONE → node-b → broker.
    Hbone,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Gateway => "gateway",
            Via::Hbone => "gw-hbone",
        }
    }
}

/// A `weir gateway` instance's ports (inside the gateway namespace).
#[derive(Debug, Clone, Copy)]
struct GatewayPorts {
    kafka: u16,
    admin: u16,
    metrics: u16,
    readiness: u16,
}

const PLAIN_GATEWAY: GatewayPorts = GatewayPorts {
    kafka: 9094,
    admin: 15000,
    metrics: 15020,
    readiness: 15021,
};
const HBONE_GATEWAY: GatewayPorts = GatewayPorts {
    kafka: 9095,
    admin: 15100,
    metrics: 15120,
    readiness: 15121,
};

/// Figures of one path in one round.
#[derive(Debug, Default, Clone)]
struct Figures {
    produce_mbps: Option<f64>,
    produce_rps: Option<f64>,
    consume_mbps: Option<f64>,
    consume_rps: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    /// CPU seconds of the proxies (gateway, and node-b for gw-hbone) per MB
    /// produced / consumed.
    proxy_cpu_per_mb_produce: Option<f64>,
    proxy_cpu_per_mb_consume: Option<f64>,
}

type Get = fn(&Figures) -> Option<f64>;

/// CPU seconds used during one measurement.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    wall: f64,
    client: Option<f64>,
    broker: Option<f64>,
    gateway: Option<f64>,
    node: Option<f64>,
    /// Share of all CPUs busy (every process, kernel included), 0..1.
    machine: Option<f64>,
}

/// One round's figures of every path measured.
#[derive(Debug, Default)]
struct Round {
    /// "direct, gateway" or "gateway, direct" (plus ", gw-hbone").
    order: String,
    direct: Figures,
    gateway: Figures,
    hbone: Option<Figures>,
}

/// A client's way to one path: the endpoint, and for gateway paths the
/// gateway (and node) whose CPU time and counters go with it.
struct PathRef<'a> {
    via: Via,
    ep: Endpoint,
    gateway: Option<&'a GatewayProc>,
    node: Option<&'a Node>,
}

pub fn run(args: &GatewayArgs) -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    sys::catch_interrupts().context("installing the SIGINT/SIGTERM handler")?;
    let plan = Plan::new(&args.plan);
    let weir = weir_binary(args.tools.weir.as_deref(), false)?;
    let tools = Tools::find(&args.tools)?;
    println!(
        "weir-bench gateway{}",
        if args.plan.quick { " (--quick)" } else { "" }
    );
    print!("{}", machine_info());
    println!(
        "broker:  {} ({}), memory storage",
        tools.tansu.display(),
        tools.tansu_version
    );
    println!(
        "client:  {} {} (confluent-kafka {}, librdkafka {})",
        tools.python.display(),
        tools.client_py.display(),
        tools.py_version,
        tools.lib_version
    );
    println!("gateway: {}", weir.display());
    println!(
        "plan:    {} round(s); produce {} x {RECORD_SIZE} B (acks=all, linger {} ms); \
         consume the first {}; latency {} sequential records after {} warm-up",
        plan.rounds,
        plan.produce,
        kafka::LINGER_MS,
        plan.consume,
        plan.lat_count,
        plan.lat_warmup
    );
    println!();

    let net = TestNet::new("kgwbench");
    let client = net.add_host("client", CLIENT_IP);
    let broker = net.add_host("broker", BROKER_IP);
    let gw_host = net.add_host("gw", GATEWAY_IP);
    for host in [&client, &broker, &gw_host] {
        tune_host(host);
    }
    let dir = std::env::temp_dir().join(format!("weir-bench-gateway-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let _dir_guard = RemoveDir(dir.clone());

    let certs = make_certs(&dir.join("pki"))?;
    println!(
        "== certificates: CA {}, server certificate for {BOOTSTRAP_HOST} and *.example.com",
        certs.ca.display()
    );

    let tansu_log = dir.join("tansu.log");
    let mut tansu_proc = start_tansu(&broker, &tools.tansu, &tansu_log)?;
    let ctx = Ctx {
        python: tools.python.clone(),
        client_py: tools.client_py.clone(),
        tansu: tools.tansu.clone(),
        client: &client,
        broker: &broker,
        broker_pid: tansu_proc.id(),
        plan,
    };
    println!(
        "== broker: tansu pid {} listening on {BROKER_IP}:{KAFKA_PORT}",
        ctx.broker_pid
    );

    // The gateway: plain TCP upstream (no Workload in its config).
    let state = dir.join("state");
    let plain_config = dir.join("gateway.yaml");
    write_config(
        &plain_config,
        &kafka_gateway_doc(PLAIN_GATEWAY.kafka, &certs),
    )?;
    let mut gateway = GatewayProc::start(
        "gateway",
        &gw_host,
        &weir,
        &plain_config,
        &state,
        &dir,
        PLAIN_GATEWAY,
        &tools.python,
        &args.gateway_arg,
    )?;
    println!(
        "== gateway: pid {} listening on {GATEWAY_IP}:{} (KafkaGateway, TLS SIMPLE, \
         upstream {BROKER_IP}:{KAFKA_PORT} over TCP)",
        gateway.pid, PLAIN_GATEWAY.kafka
    );

    // Broker names: Tansu picks its node ids; the client namespace resolves
    // the bootstrap name and every broker's name to the gateway.
    let ids = broker_ids(&ctx)?;
    let mut names = vec![BOOTSTRAP_HOST.to_string()];
    names.extend(ids.iter().map(|id| broker_host(*id)));
    let _hosts = NetnsHosts::write(&client, GATEWAY_IP, &names)?;
    println!(
        "== /etc/netns/{}/hosts: {} -> {GATEWAY_IP}",
        client.name,
        names.join(", ")
    );

    let mut notes = Vec::new();
    let tls = vec![
        "--tls-ca".to_string(),
        certs.ca.to_string_lossy().into_owned(),
    ];
    let gw_ep = |port: u16| Endpoint {
        bootstrap: format!("{BOOTSTRAP_HOST}:{port}"),
        tls: tls.clone(),
    };
    probe(&ctx, &gw_ep(PLAIN_GATEWAY.kafka), "gateway", &mut notes);
    check_interrupt()?;

    // Warm both paths up before anything is recorded.
    warm_up(&ctx, &ctx.direct(), "direct")?;
    check_interrupt()?;
    warm_up(&ctx, &gw_ep(PLAIN_GATEWAY.kafka), "gateway")?;
    println!();

    let hbone_config = dir.join("gateway-hbone.yaml");
    if args.hbone {
        write_config(
            &hbone_config,
            &(broker_workload(broker.addr, &broker.name)
                + &kafka_gateway_doc(HBONE_GATEWAY.kafka, &certs)),
        )?;
    }

    let mut rounds: Vec<Round> = Vec::new();
    let mut cpus: Vec<(Op, Via, Cpu)> = Vec::new();
    for round in 1..=ctx.plan.rounds {
        check_interrupt()?;
        let mut order = [Via::Direct, Via::Gateway];
        if round % 2 == 0 {
            order.reverse();
        }
        let mut r = Round {
            order: order.map(Via::name).join(", "),
            ..Round::default()
        };
        println!(
            "== round {round}/{}: {}",
            ctx.plan.rounds,
            order.map(Via::name).join(" then ")
        );
        let mut vias = order.to_vec();
        if args.hbone {
            vias.push(Via::Hbone);
        }
        // All topics first: the broker's CLI runs in its namespace, which
        // node-b captures while it runs.
        for via in &vias {
            path_topics(&ctx, "create", round, *via)?;
        }
        for via in order {
            for host in [&client, &broker] {
                let n = kafka::redirect_rules(host);
                if n > 0 {
                    notes.push(format!(
                        "round {round}: {n} REDIRECT rules in {} during the {} measurements",
                        host.name,
                        via.name()
                    ));
                }
            }
            let path = match via {
                Via::Direct => PathRef {
                    via,
                    ep: ctx.direct(),
                    gateway: None,
                    node: None,
                },
                _ => PathRef {
                    via,
                    ep: gw_ep(PLAIN_GATEWAY.kafka),
                    gateway: Some(&gateway),
                    node: None,
                },
            };
            let f = if via == Via::Direct {
                &mut r.direct
            } else {
                &mut r.gateway
            };
            measure_path(&ctx, round, &path, f, &mut cpus, &mut notes)?;
            path_topics(&ctx, "delete", round, via)?;
        }
        if args.hbone {
            r.order += ", gw-hbone";
            println!("  -- gw-hbone: starting node-b (broker Workload) and a second gateway");
            match hbone_round(
                &ctx,
                &weir,
                args,
                &gw_host,
                &hbone_config,
                &state,
                &dir,
                gw_ep(HBONE_GATEWAY.kafka),
                round,
                &mut cpus,
                &mut notes,
            ) {
                Ok(f) => r.hbone = Some(f),
                Err(e) if sys::interrupted() => return Err(e),
                Err(e) => {
                    println!("  gw-hbone FAILED: {e:#}");
                    notes.push(format!("round {round}: gw-hbone failed: {e:#}"));
                }
            }
            path_topics(&ctx, "delete", round, Via::Hbone)?;
        }
        rounds.push(r);
        if let Ok(Some(st)) = tansu_proc.child_mut().try_wait() {
            bail!(
                "the broker exited ({st}); its log:\n{}",
                tail(&std::fs::read_to_string(&tansu_log).unwrap_or_default(), 30)
            );
        }
        if gateway.exited() {
            bail!(
                "the gateway exited; its log:\n{}",
                tail(&gateway.log_text(), 30)
            );
        }
        println!();
    }

    let how = gateway.stop();
    println!("== gateway: {how}");
    if !how.starts_with("exited after SIGTERM") {
        notes.push(format!("gateway {how}"));
    }
    log_notes(&gateway, &mut notes);
    tansu_proc.kill();

    println!(
        "Medians of {} round(s); gateway/direct and added (gateway - direct) are medians of the \
         per-round values.",
        ctx.plan.rounds
    );
    let pairs: Vec<(Figures, Figures)> = rounds
        .iter()
        .map(|r| (r.direct.clone(), r.gateway.clone()))
        .collect();
    println!("{}", report("gateway", &pairs));
    if args.hbone {
        let pairs: Vec<(Figures, Figures)> = rounds
            .iter()
            .filter_map(|r| Some((r.direct.clone(), r.hbone.clone()?)))
            .collect();
        println!("Gateway with an HBONE upstream (gateway + node-b CPU), against the same direct figures:");
        println!("{}", report("gw-hbone", &pairs));
    }
    println!(
        "Per round (direct / gateway{}):",
        if args.hbone { " / gw-hbone" } else { "" }
    );
    println!("{}", rounds_report(&rounds));
    println!(
        "CPU seconds per measurement (medians; client = the client.py process, including \
         Python start-up;\ncores = (client + broker + gateway + node) / wall, out of {}; \
         machine busy = all CPUs, all processes, kernel included):",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!("{}", cpu_report(&cpus));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "loadavg at the end: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for n in &notes {
        println!("note: {n}");
    }
    Ok(())
}

fn check_interrupt() -> Result<()> {
    if sys::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

fn broker_host(id: i64) -> String {
    BROKER_HOST_TEMPLATE.replace("{id}", &id.to_string())
}

// ---------------------------------------------------------------- setup

/// The files of the gateway's TLS server.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA and a server certificate for the bootstrap name and
/// `*.example.com` (every broker name), P-256, made with the openssl CLI.
fn make_certs(dir: &Path) -> Result<Certs> {
    std::fs::create_dir_all(dir)?;
    let openssl = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl (is it installed?)")?;
        if !out.status.success() {
            bail!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=weir-bench CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=kafka.example.com",
    ]);
    openssl(&csr)?;
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "basicConstraints=CA:FALSE\nsubjectAltName=DNS:{BOOTSTRAP_HOST},DNS:*.example.com\n\
             extendedKeyUsage=serverAuth\n"
        ),
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.pem",
        "-extfile",
        "server.ext",
    ])?;
    Ok(Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    })
}

/// The benchmark's KafkaGateway on `port`: SIMPLE TLS, upstream the broker.
fn kafka_gateway_doc(port: u16, certs: &Certs) -> String {
    format!(
        "---
apiVersion: weir.dev/v1alpha1
kind: KafkaGateway
metadata: {{name: bench, namespace: kafka}}
spec:
  selector: {{istio: ingressgateway}}
  port: {port}
  tls:
    mode: SIMPLE
    serverCertificate: {cert}
    privateKey: {key}
  bootstrapHost: {BOOTSTRAP_HOST}
  brokerHostTemplate: \"{BROKER_HOST_TEMPLATE}\"
  upstream:
    bootstrapServers: [\"{BROKER_IP}:{KAFKA_PORT}\"]
",
        cert = certs.cert.display(),
        key = certs.key.display(),
    )
}

/// The broker as a mesh Workload on node-b: the gateway then reaches it
/// over HBONE.
fn broker_workload(addr: Ipv4Addr, netns: &str) -> String {
    format!(
        "---
apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {{name: kafka-broker, namespace: kafka, labels: {{app: kafka-broker}}}}
spec: {{serviceAccount: kafka-broker, address: {addr}, node: node-b, netns: {netns}}}
"
    )
}

/// Writes a config file after checking it with weir's own loader, so a
/// mistake shows here rather than as a gateway that serves nothing.
fn write_config(path: &Path, docs: &str) -> Result<()> {
    let name = path.to_string_lossy();
    let config = Config::from_sources(
        &[SourceFile::new(name.as_ref(), docs)],
        MeshSettings::default(),
    )
    .map_err(|e| anyhow!("the benchmark's gateway config {name} is invalid: {e}"))?;
    if config.kafka_gateways.len() != 1 {
        bail!("the benchmark's gateway config {name} has no KafkaGateway");
    }
    std::fs::write(path, docs).with_context(|| format!("writing {name}"))
}

/// `/etc/netns/<ns>/hosts`, which `ip netns exec` bind-mounts over
/// `/etc/hosts`: the names the client namespace resolves. Removed on drop.
struct NetnsHosts(PathBuf);

impl NetnsHosts {
    fn write(host: &Host, ip: Ipv4Addr, names: &[String]) -> Result<NetnsHosts> {
        let dir = Path::new("/etc/netns").join(&host.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let guard = NetnsHosts(dir.clone());
        std::fs::write(dir.join("hosts"), hosts_text(ip, names))
            .with_context(|| format!("writing {}/hosts", dir.display()))?;
        Ok(guard)
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hosts_text(ip: Ipv4Addr, names: &[String]) -> String {
    let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for n in names {
        let _ = writeln!(text, "{ip} {n}");
    }
    text
}

/// The node ids the broker advertises (metadata, direct).
fn broker_ids(ctx: &Ctx<'_>) -> Result<Vec<i64>> {
    let r = run_client(ctx, &metadata_args(&ctx.direct()), Duration::from_secs(30))
        .context("metadata from the broker (direct)")?;
    let ids: Vec<i64> = r.json["brokers"]
        .as_array()
        .map(|b| b.iter().filter_map(|b| b["id"].as_i64()).collect())
        .unwrap_or_default();
    if ids.is_empty() {
        bail!("the broker advertised no brokers: {}", r.json);
    }
    Ok(ids)
}

fn metadata_args(ep: &Endpoint) -> Vec<String> {
    let mut v: Vec<String> = [
        "metadata",
        "--bootstrap",
        &ep.bootstrap,
        "--timeout",
        "10",
        "--client-id",
        "weir-bench-probe",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(ep.tls.iter().cloned());
    v
}

/// Metadata through a gateway: every broker must be advertised at its
/// gateway name and the gateway's port.
fn probe(ctx: &Ctx<'_>, ep: &Endpoint, label: &str, notes: &mut Vec<String>) {
    let port: Option<u64> = ep.bootstrap.rsplit(':').next().and_then(|p| p.parse().ok());
    match run_client(ctx, &metadata_args(ep), Duration::from_secs(30)) {
        Ok(r) => {
            let brokers = &r.json["brokers"];
            println!("  probe: metadata through the {label}: brokers {brokers}");
            let ok = brokers.as_array().is_some_and(|b| {
                !b.is_empty()
                    && b.iter().all(|b| {
                        b["id"].as_i64().map(broker_host).as_deref() == b["host"].as_str()
                            && b["port"].as_u64() == port
                    })
            });
            if !ok {
                notes.push(format!(
                    "{label} probe: the brokers are not advertised at the gateway ({brokers})"
                ));
            }
        }
        Err(e) => {
            println!("  probe through the {label} FAILED: {e:#}");
            notes.push(format!("{label} probe failed: {e:#}"));
        }
    }
}

// ---------------------------------------------------------------- gateway process

/// A running `weir gateway` in the gateway namespace; SIGTERM (then
/// SIGKILL after 5 s) on drop.
struct GatewayProc {
    name: &'static str,
    child: Option<HostChild>,
    pid: u32,
    host: Host,
    log: PathBuf,
    ports: GatewayPorts,
    python: PathBuf,
}

impl GatewayProc {
    /// Starts `weir gateway --config CONFIG` and waits until its Kafka port
    /// listens.
    #[allow(clippy::too_many_arguments)]
    fn start(
        name: &'static str,
        host: &Host,
        weir: &Path,
        config: &Path,
        state: &Path,
        dir: &Path,
        ports: GatewayPorts,
        python: &Path,
        extra: &[String],
    ) -> Result<GatewayProc> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let local = |port: u16| format!("127.0.0.1:{port}");
        let mut cmd = host.command(&weir.to_string_lossy());
        cmd.arg("gateway")
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(state)
            .args(["--admin-addr", &local(ports.admin)])
            .args(["--metrics-addr", &local(ports.metrics)])
            .args(["--readiness-addr", &local(ports.readiness)])
            .args(["--drain-timeout", "1s"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = host.spawn_command(cmd);
        let mut gw = GatewayProc {
            name,
            pid: child.id(),
            child: Some(child),
            host: host.clone(),
            log,
            ports,
            python: python.to_path_buf(),
        };
        let filter = format!("sport = :{}", ports.kafka);
        let t = Instant::now();
        loop {
            let out = host.exec("ss", &["-Hltn", &filter]);
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return Ok(gw);
            }
            if gw.exited() {
                bail!(
                    "{name} exited during startup:\n{}",
                    tail(&gw.log_text(), 20)
                );
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{name} did not listen on port {} within 30 s:\n{}",
                    ports.kafka,
                    tail(&gw.log_text(), 20)
                );
            }
            check_interrupt()?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.child_mut().try_wait(), Ok(Some(_))))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its Prometheus text (fetched from inside its namespace).
    fn metrics(&self) -> Result<String> {
        const GET_PY: &str = "import sys, urllib.request\n\
            sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n";
        let url = format!("http://127.0.0.1:{}/metrics", self.ports.metrics);
        let out = self
            .host
            .exec(&self.python.to_string_lossy(), &["-c", GET_PY, &url]);
        if !out.status.success() {
            bail!(
                "GET {url} in {}: {}",
                self.host.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGTERM, then wait up to 5 s, then SIGKILL. Returns how it ended.
    fn stop(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return "not running".into();
        };
        if let Ok(Some(st)) = child.child_mut().try_wait() {
            return format!("had already exited ({st})");
        }
        let t = Instant::now();
        if let Err(e) = sys::sigterm(self.pid) {
            child.kill();
            return format!("SIGTERM failed ({e}), killed");
        }
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(st)) = child.child_mut().try_wait() {
                return format!("exited after SIGTERM in {:?} ({st})", t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill();
        "did not exit within 5 s of SIGTERM; SIGKILLed".into()
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The gateway log's warnings and errors, and the Kafka connections that
/// ended with an error (counted by reason, one example each), as notes.
fn log_notes(gw: &GatewayProc, notes: &mut Vec<String>) {
    let text = gw.log_text();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    if !bad.is_empty() {
        notes.push(format!(
            "{} logged {} warn/error lines; last ones:\n{}",
            gw.name,
            bad.len(),
            bad[bad.len().saturating_sub(5)..].join("\n")
        ));
    }
    let mut reasons: Vec<(String, usize, &str)> = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.contains("Kafka connection ended") || l.contains("closed Kafka connection"))
    {
        let reason = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("reason="))
            .unwrap_or("?")
            .trim_matches('"')
            .to_string();
        match reasons.iter_mut().find(|(r, _, _)| *r == reason) {
            Some((_, n, _)) => *n += 1,
            None => reasons.push((reason, 1, line)),
        }
    }
    for (reason, n, example) in reasons {
        notes.push(format!(
            "{}: {n} Kafka connection(s) ended with an error, reason={reason}; e.g.\n{example}",
            gw.name
        ));
    }
}

/// Sum of the samples of `name` whose labels include `label="value"`.
fn metric_sum(text: &str, name: &str, label: (&str, &str)) -> f64 {
    let want = format!("{}=\"{}\"", label.0, label.1);
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(&want))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------- gw-hbone

/// One gw-hbone measurement set: node-b (serving the broker Workload) and a
/// second gateway whose config holds that Workload, so its upstream is
/// HBONE; both stopped after.
#[allow(clippy::too_many_arguments)]
fn hbone_round(
    ctx: &Ctx<'_>,
    weir: &Path,
    args: &GatewayArgs,
    gw_host: &Host,
    config: &Path,
    state: &Path,
    dir: &Path,
    ep: Endpoint,
    round: usize,
    cpus: &mut Vec<(Op, Via, Cpu)>,
    notes: &mut Vec<String>,
) -> Result<Figures> {
    let mut node = start_node(weir, "node-b", config, state, dir, &args.node_arg)?;
    let mut gw = GatewayProc::start(
        "gw-hbone",
        gw_host,
        weir,
        config,
        state,
        dir,
        HBONE_GATEWAY,
        &ctx.python,
        &args.gateway_arg,
    )?;
    let before = mtls_opened(&node);
    probe(ctx, &ep, "gw-hbone", notes);
    let after = mtls_opened(&node);
    let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    println!(
        "  node-b mTLS connections opened: {} -> {}",
        show(before),
        show(after)
    );
    if !matches!((before, after), (Some(b), Some(a)) if a > b) {
        notes.push(format!(
            "round {round}: the gw-hbone probe opened no mTLS connection on node-b: \
             not over HBONE?"
        ));
    }
    let path = PathRef {
        via: Via::Hbone,
        ep,
        gateway: Some(&gw),
        node: Some(&node),
    };
    let mut f = Figures::default();
    let r = measure_path(ctx, round, &path, &mut f, cpus, notes);
    drop(path);
    let how = gw.stop();
    if !how.starts_with("exited after SIGTERM") {
        notes.push(format!("round {round}: gw-hbone {how}"));
    }
    log_notes(&gw, notes);
    let how = node.stop();
    if !how.starts_with("exited after SIGTERM") {
        notes.push(format!("round {round}: node-b {how}"));
    }
    r.map(|()| f)
}

// ---------------------------------------------------------------- measuring

/// The fresh topics of one path in one round: produce (read back by the
/// consume measurement) and latency.
fn topics(round: usize, via: Via) -> [String; 2] {
    let p = via.name();
    [
        format!("r{round}-{p}-produce"),
        format!("r{round}-{p}-latency"),
    ]
}

fn path_topics(ctx: &Ctx<'_>, action: &str, round: usize, via: Via) -> Result<()> {
    for t in topics(round, via) {
        topic(ctx, action, &t)?;
    }
    Ok(())
}

/// Produce, consume and latency on one path. Fails only when interrupted;
/// a failed measurement becomes a note.
fn measure_path(
    ctx: &Ctx<'_>,
    round: usize,
    path: &PathRef<'_>,
    f: &mut Figures,
    cpus: &mut Vec<(Op, Via, Cpu)>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let [produce_topic, latency_topic] = topics(round, path.via);
    for op in [Op::Produce, Op::Consume, Op::Latency] {
        check_interrupt()?;
        let t = if op == Op::Latency {
            &latency_topic
        } else {
            &produce_topic
        };
        measure(ctx, op, path, t, f, cpus, notes);
    }
    check_interrupt()
}

/// One measurement: runs the client, records its figures and the CPU time
/// of the client, the broker and the gateway (and node), and for a gateway
/// path checks the gateway's per-topic counters.
fn measure(
    ctx: &Ctx<'_>,
    op: Op,
    path: &PathRef<'_>,
    topic: &str,
    f: &mut Figures,
    cpus: &mut Vec<(Op, Via, Cpu)>,
    notes: &mut Vec<String>,
) {
    let plan = &ctx.plan;
    let ep = &path.ep;
    let (args, limit) = match op {
        Op::Produce => (
            produce_args(ep, topic, plan.produce),
            Duration::from_secs(180),
        ),
        Op::Consume => (
            consume_args(ep, topic, plan.consume),
            Duration::from_secs(180),
        ),
        Op::Latency => (
            latency_args(ep, topic, plan.lat_warmup, plan.lat_count),
            Duration::from_secs(120),
        ),
    };
    let pids = [
        Some(ctx.broker_pid),
        path.gateway.map(|g| g.pid),
        path.node.map(Node::pid),
    ];
    let ticks = || pids.map(|p| p.and_then(cpu_ticks));
    let before = ticks();
    let jiffies = machine_jiffies();
    let t = Instant::now();
    let r = run_client(ctx, &args, limit);
    let wall = t.elapsed().as_secs_f64();
    let machine = busy_share(jiffies, machine_jiffies());
    let after = ticks();
    let used = |i: usize| Some((after[i]?.saturating_sub(before[i]?)) as f64 / 100.0);
    let via = path.via;
    let label = format!("{:<8} {:<7}", via.name(), op.name());
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
    let cpu = Cpu {
        wall,
        client: None,
        broker: used(0),
        gateway: used(1),
        node: used(2),
        machine,
    };
    let proxy_cpu = match (cpu.gateway, cpu.node) {
        (Some(g), n) => Some(g + n.unwrap_or(0.0)),
        (None, _) => None,
    };
    match r {
        Ok(r) => {
            let j = &r.json;
            match op {
                Op::Produce | Op::Consume => {
                    let (mbps, rps) = (num(j, "mb_per_s"), num(j, "records_per_s"));
                    let mb = if op == Op::Produce {
                        num(j, "acked") * RECORD_SIZE as f64 / 1e6
                    } else {
                        num(j, "bytes") / 1e6
                    };
                    println!(
                        "  {label}: {mbps:>8.1} MB/s {rps:>10.0} records/s  ({} records in {:.2} s)",
                        num(j, if op == Op::Produce { "acked" } else { "received" }),
                        num(j, "seconds")
                    );
                    let per_mb = proxy_cpu.filter(|_| mb > 0.0).map(|c| c / mb);
                    if let Some(per_mb) = per_mb {
                        println!(
                            "      {} CPU: {:.2} ms per MB; {:.3} cores at {mbps:.1} MB/s",
                            if path.node.is_some() {
                                "gateway + node-b"
                            } else {
                                "gateway"
                            },
                            per_mb * 1e3,
                            per_mb * mbps
                        );
                    }
                    if op == Op::Produce {
                        f.produce_mbps = Some(mbps);
                        f.produce_rps = Some(rps);
                        f.proxy_cpu_per_mb_produce = per_mb;
                    } else {
                        f.consume_mbps = Some(mbps);
                        f.consume_rps = Some(rps);
                        f.proxy_cpu_per_mb_consume = per_mb;
                    }
                }
                Op::Latency => (f.p50_us, f.p99_us) = report_latency(&label, j),
            }
            let cpu = Cpu {
                client: r.cpu,
                ..cpu
            };
            print_cpu(&cpu);
            cpus.push((op, via, cpu));
        }
        Err(e) => {
            println!("  {label}: FAILED: {e:#}");
            let mut note = format!("{} {} failed: {e:#}", via.name(), op.name());
            if let Some(gw) = path.gateway {
                let text = gw.log_text();
                let bad: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                if !bad.is_empty() {
                    let _ = write!(
                        note,
                        "\n  {} log (last warn/error lines):\n  {}",
                        gw.name,
                        bad[bad.len().saturating_sub(3)..].join("\n  ")
                    );
                }
            }
            notes.push(note);
        }
    }
    if let Some(gw) = path.gateway {
        check_counters(gw, op, topic, ctx, notes);
    }
}

/// The gateway's per-topic counters after a measurement: what it saw is
/// what the client sent or read (so the traffic did go through it).
fn check_counters(gw: &GatewayProc, op: Op, topic: &str, ctx: &Ctx<'_>, notes: &mut Vec<String>) {
    let plan = &ctx.plan;
    let (metric, want) = match op {
        Op::Produce => ("weir_kafka_produced_records_total", plan.produce),
        Op::Consume => ("weir_kafka_fetched_records_total", plan.consume),
        Op::Latency => (
            "weir_kafka_produced_records_total",
            plan.lat_warmup + plan.lat_count,
        ),
    };
    match gw.metrics() {
        Ok(text) => {
            let got = metric_sum(&text, metric, ("topic", topic));
            println!("      {} {metric}{{topic=\"{topic}\"}} = {got:.0}", gw.name);
            if got < want as f64 {
                notes.push(format!(
                    "{} {}: the gateway counted {got:.0} records for {topic} ({metric}), \
                     fewer than the {want} of the measurement",
                    gw.name,
                    op.name()
                ));
            } else if op != Op::Consume && got > want as f64 {
                // A consumer may fetch past what it reads; a producer sends
                // a record twice only when it retries.
                notes.push(format!(
                    "{} {}: the gateway counted {got:.0} records produced to {topic}, {} more \
                     than sent: the producer retried (a connection closed?)",
                    gw.name,
                    op.name(),
                    got - want as f64
                ));
            }
        }
        Err(e) => notes.push(format!("{} metrics: {e:#}", gw.name)),
    }
}

fn print_cpu(c: &Cpu) {
    kafka::print_cpu_line(
        &[
            ("client", c.client),
            ("broker", c.broker),
            ("gateway", c.gateway),
            ("node-b", c.node),
        ],
        c.wall,
        c.machine,
    );
}

// ---------------------------------------------------------------- report

/// The main table: direct against `label` (gateway or gw-hbone), medians
/// and paired per-round ratios, against the targets of issue 4.
fn report(label: &str, pairs: &[(Figures, Figures)]) -> String {
    let ds: Vec<&Figures> = pairs.iter().map(|(d, _)| d).collect();
    let gs: Vec<&Figures> = pairs.iter().map(|(_, g)| g).collect();
    let med = |all: &[&Figures], get: Get| median(all.iter().filter_map(|f| get(f)).collect());
    let paired = |get: Get, op: fn(f64, f64) -> Option<f64>| {
        median(
            pairs
                .iter()
                .filter_map(|(d, g)| op(get(d)?, get(g)?))
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
    let tput: [(&str, Get, usize, f64); 4] = [
        (
            "produce throughput (MB/s)",
            |f| f.produce_mbps,
            1,
            TARGET_PRODUCE_RATIO,
        ),
        (
            "produce throughput (records/s)",
            |f| f.produce_rps,
            0,
            TARGET_PRODUCE_RATIO,
        ),
        (
            "consume throughput (MB/s)",
            |f| f.consume_mbps,
            1,
            TARGET_CONSUME_RATIO,
        ),
        (
            "consume throughput (records/s)",
            |f| f.consume_rps,
            0,
            TARGET_CONSUME_RATIO,
        ),
    ];
    for (name, get, prec, target) in tput {
        let r = paired(get, |d, g| (d > 0.0).then(|| g / d));
        rows.push([
            name.into(),
            fmt(med(&ds, get), prec),
            fmt(med(&gs, get), prec),
            fmt(r, 2),
            String::new(),
            format!(">= {target}x"),
            verdict(r.map(|r| r >= target)),
        ]);
    }
    let lat: [(&str, Get, bool); 2] = [
        ("produce latency p50 (µs)", |f| f.p50_us, false),
        ("produce latency p99 (µs)", |f| f.p99_us, true),
    ];
    for (name, get, target) in lat {
        let added = paired(get, |d, g| Some(g - d));
        rows.push([
            name.into(),
            fmt(med(&ds, get), 0),
            fmt(med(&gs, get), 0),
            fmt(paired(get, |d, g| (d > 0.0).then(|| g / d)), 2),
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
    // The proxies' CPU: seconds per MB moved (= cores per MB/s), and the
    // cores that cost at the rate measured in the same round.
    let ms_per_mb = |get: Get| med(&gs, get).map(|v| v * 1e3);
    let cores_at =
        |cpu: Get, rate: Get| median(gs.iter().filter_map(|g| Some(cpu(g)? * rate(g)?)).collect());
    let who = if label == "gateway" {
        "gateway"
    } else {
        "gateway + node-b"
    };
    rows.push([
        format!("{who} CPU per MB produced (ms)"),
        "-".into(),
        fmt(ms_per_mb(|f| f.proxy_cpu_per_mb_produce), 2),
        String::new(),
        String::new(),
        "recorded".into(),
        String::new(),
    ]);
    rows.push([
        format!("{who} cores at the produce rate"),
        "-".into(),
        fmt(
            cores_at(|f| f.proxy_cpu_per_mb_produce, |f| f.produce_mbps),
            3,
        ),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    rows.push([
        format!("{who} CPU per MB consumed (ms)"),
        "-".into(),
        fmt(ms_per_mb(|f| f.proxy_cpu_per_mb_consume), 2),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    markdown_table(
        &[
            "metric",
            "direct",
            label,
            &format!("{label}/direct"),
            "added",
            "target",
            "result",
        ],
        &rows,
    )
}

/// One row per round: direct / gateway (/ gw-hbone) of the main figures.
fn rounds_report(rounds: &[Round]) -> String {
    let f = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    let cell = |r: &Round, get: Get, prec: usize| {
        let mut s = format!("{} / {}", f(get(&r.direct), prec), f(get(&r.gateway), prec));
        if let Some(h) = &r.hbone {
            let _ = write!(s, " / {}", f(get(h), prec));
        }
        s
    };
    let rows: Vec<[String; 7]> = rounds
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let ms = |f: &Figures| f.proxy_cpu_per_mb_produce.map(|v| v * 1e3);
            let mut cpu = f(ms(&r.gateway), 2);
            if let Some(h) = &r.hbone {
                let _ = write!(cpu, " / {}", f(ms(h), 2));
            }
            [
                (i + 1).to_string(),
                r.order.clone(),
                cell(r, |f| f.produce_mbps, 1),
                cell(r, |f| f.consume_mbps, 1),
                cell(r, |f| f.p50_us, 0),
                cell(r, |f| f.p99_us, 0),
                cpu,
            ]
        })
        .collect();
    markdown_table(
        &[
            "round",
            "order",
            "produce MB/s",
            "consume MB/s",
            "latency p50 (µs)",
            "latency p99 (µs)",
            "gateway CPU ms/MB produced",
        ],
        &rows,
    )
}

fn cpu_report(cpus: &[(Op, Via, Cpu)]) -> String {
    let mut groups: Vec<((Op, Via), Vec<Cpu>)> = Vec::new();
    for (op, via, c) in cpus {
        match groups.iter_mut().find(|(k, _)| *k == (*op, *via)) {
            Some((_, v)) => v.push(*c),
            None => groups.push(((*op, *via), vec![*c])),
        }
    }
    let order = |op: Op| match op {
        Op::Produce => 0,
        Op::Consume => 1,
        Op::Latency => 2,
    };
    let via_order = |v: Via| match v {
        Via::Direct => 0,
        Via::Gateway => 1,
        Via::Hbone => 2,
    };
    groups.sort_by_key(|((op, via), _)| (order(*op), via_order(*via)));
    let mut rows: Vec<[String; 8]> = Vec::new();
    for ((op, via), cs) in &groups {
        let med = |get: fn(&Cpu) -> Option<f64>| median(cs.iter().filter_map(get).collect());
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let cores = median(
            cs.iter()
                .map(|c| {
                    [c.client, c.broker, c.gateway, c.node]
                        .iter()
                        .flatten()
                        .sum::<f64>()
                        / c.wall
                })
                .collect(),
        );
        rows.push([
            format!("{} {}", op.name(), via.name()),
            fmt(med(|c| Some(c.wall))),
            fmt(med(|c| c.client)),
            fmt(med(|c| c.broker)),
            fmt(med(|c| c.gateway)),
            fmt(med(|c| c.node)),
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
            "gateway",
            "node-b",
            "cores",
            "machine busy",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs(dir: &Path) -> Certs {
        Certs {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }

    #[test]
    fn configs_pass_weirs_loader() {
        let dir = std::env::temp_dir().join(format!("weir-bench-gw-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _guard = RemoveDir(dir.clone());
        let c = certs(&dir);
        let plain = dir.join("plain.yaml");
        write_config(&plain, &kafka_gateway_doc(9094, &c)).unwrap();
        let loaded = Config::load_paths(&[&plain], MeshSettings::default()).unwrap();
        assert_eq!(loaded.kafka_gateways.len(), 1);
        assert!(loaded.workloads.is_empty(), "plain upstream: no Workload");

        let hbone = dir.join("hbone.yaml");
        write_config(
            &hbone,
            &(broker_workload(BROKER_IP, "wt1-0-kgwbench-broker") + &kafka_gateway_doc(9095, &c)),
        )
        .unwrap();
        let loaded = Config::load_paths(&[&hbone], MeshSettings::default()).unwrap();
        assert_eq!(loaded.workloads.len(), 1);
        assert_eq!(
            loaded.workloads[0].address.to_string(),
            BROKER_IP.to_string()
        );

        // A broken document is refused before any gateway starts.
        let bad = dir.join("bad.yaml");
        let err = write_config(
            &bad,
            "---\napiVersion: weir.dev/v1alpha1\nkind: KafkaGateway\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalid"), "{err:#}");
        assert!(!bad.exists());
    }

    #[test]
    fn sums_metric_samples_of_one_topic() {
        let text = "# TYPE weir_kafka_produced_records_total counter\n\
            weir_kafka_produced_records_total{topic=\"a\"} 10\n\
            weir_kafka_produced_records_total{topic=\"b\"} 7\n\
            weir_kafka_produced_records_total_extra{topic=\"a\"} 99\n\
            weir_kafka_fetched_records_total{topic=\"a\"} 5\n";
        assert_eq!(
            metric_sum(text, "weir_kafka_produced_records_total", ("topic", "a")),
            10.0
        );
        assert_eq!(
            metric_sum(text, "weir_kafka_fetched_records_total", ("topic", "b")),
            0.0
        );
    }

    #[test]
    fn broker_names_and_hosts_file() {
        assert_eq!(broker_host(7), "b7-kafka.example.com");
        let text = hosts_text(GATEWAY_IP, &[BOOTSTRAP_HOST.into(), broker_host(0)]);
        assert!(text.contains("198.18.0.4 kafka.example.com\n"), "{text}");
        assert!(text.contains("198.18.0.4 b0-kafka.example.com\n"), "{text}");
        assert!(text.starts_with("127.0.0.1 localhost\n"));
    }
}
