//! End-to-end tests of Kafka through the mesh: real Kafka-protocol brokers,
//! real clients (confluent-kafka and kafka-python, via `tools/kafka`), two
//! `weir node` proxies, network namespaces on a bridge (198.18.0.0/15).
//!
//! - `broker_discovery_through_the_mesh`: librdkafka's mock cluster, three
//!   brokers each behind its own workload address; a client bootstraps on one
//!   and reaches all three, every connection over HBONE mTLS.
//! - `no_data_lost_across_reload_and_cut`: 100 000 records, acks=all, to a
//!   Tansu broker while one node proxy reloads its config and the other (the
//!   broker's) is restarted, which cuts the broker connection; none missing.
//! - `two_client_families`: the same path with confluent-kafka and kafka-python.
//!
//! Needs what `node.rs` needs (root, iproute2, iptables, tcpdump, python3)
//! plus the Python packages `confluent-kafka` and `kafka-python`, and for the
//! Tansu tests the `tansu` binary (PATH, /opt/tansu/bin or ~/.cargo/bin):
//! `cargo install --locked tansu --features dynostore`.
//! `WEIR_SKIP_TANSU_TESTS=1` skips the Tansu tests where it is not installed.
//!
//! Layout: broker workloads `kafka/kafka-N` (service account `kafka`) on
//! node-a, the client workload `apps/producer` on node-b.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::kafka::{
    assert_consumed_all, assert_produced, bootstrap, require_tansu, run_client, spawn_client,
    start_mock_cluster, start_tansu, tail, RunningClient, KAFKA_PORT,
};
use common::{metric_lines, metric_sum, python, serial, spiffe, wait_for, workload, Ca};
use common::{NodeProxy, TempDir};
use weir_testing::{require_root, Host, TestNet, BRIDGE};

const BROKER_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 0, 10),
    Ipv4Addr::new(198, 18, 0, 11),
    Ipv4Addr::new(198, 18, 0, 12),
];
const PRODUCER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
/// Hosts librdkafka's mock cluster; not a mesh workload.
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 30);

const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const RECEIVED: &str = "istio_tcp_received_bytes_total";
const RELOADS: &str = "weir_config_reloads_total";

/// Prints a progress line with the time since `t0` (shown with --nocapture).
fn step(t0: Instant, what: &str) {
    eprintln!("[kafka e2e {:>6.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// Two proxies sharing one CA: node-a first (it creates the CA in `state`),
/// then node-b with the same state dir.
fn two_nodes(config: &Path, state: &Path) -> (NodeProxy, NodeProxy) {
    let a = NodeProxy::start_ready("node-a", &[config], Ca::StateDir(state), &[]);
    let b = NodeProxy::start_ready("node-b", &[config], Ca::StateDir(state), &[]);
    (a, b)
}

fn broker_workload(i: usize, host: &Host) -> String {
    workload(&format!("kafka-{i}"), "kafka", "kafka", host, "node-a")
}

fn producer_workload(host: &Host) -> String {
    workload("producer", "apps", "producer", host, "node-b")
}

/// Produces `n` records to `topic` and consumes them back with `family`.
fn produce_and_consume(host: &Host, family: &str, boot: &str, topic: &str, n: u64) {
    let count = n.to_string();
    let t = Instant::now();
    let p = run_client(
        host,
        &format!("{family} producer"),
        &[
            "produce",
            "--client",
            family,
            "--bootstrap",
            boot,
            "--topic",
            topic,
            "--count",
            &count,
            "--timeout",
            "90",
        ],
        Duration::from_secs(120),
    );
    assert_produced(&p, n);
    let c = run_client(
        host,
        &format!("{family} consumer"),
        &[
            "consume",
            "--client",
            family,
            "--bootstrap",
            boot,
            "--topic",
            topic,
            "--count",
            &count,
            "--timeout",
            "90",
        ],
        Duration::from_secs(120),
    );
    assert_consumed_all(&c, n);
    eprintln!(
        "{family}: produced {n} in {:.1}s, consumed {} ({} duplicates) in {:.1}s (total {:.1}s)",
        p.elapsed.as_secs_f64(),
        c.num("received"),
        c.num("duplicates"),
        c.elapsed.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}

/// Labels of a connection from the producer workload, as the broker's node
/// proxy reports it.
fn mtls_from_producer<'a>(producer_id: &'a str, broker: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("reporter", "destination"),
        ("connection_security_policy", "mutual_tls"),
        ("destination_workload", broker),
        ("source_principal", producer_id),
    ]
}

/// No plaintext connection reached a broker on `node`.
#[track_caller]
fn assert_no_plaintext(node: &NodeProxy) {
    let text = node.metrics_text();
    let plain = metric_sum(
        &text,
        OPENED,
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "unknown"),
        ],
    );
    assert_eq!(
        plain,
        0.0,
        "{}: plaintext connections reached a broker:\n{}",
        node.name,
        metric_lines(&text, OPENED)
    );
}

// ---------------------------------------------------------------------------
// Tests

/// Prints `{partition: leader}` of a topic, as the cluster reports it.
const LEADERS_PY: &str = "import json, sys
from confluent_kafka.admin import AdminClient
md = AdminClient({'bootstrap.servers': sys.argv[1]}).list_topics(sys.argv[2], timeout=30)
t = md.topics[sys.argv[2]]
print(json.dumps({'error': str(t.error) if t.error else None,
                  'leaders': {str(p.id): p.leader for p in t.partitions.values()}}))
";

#[test]
fn broker_discovery_through_the_mesh() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    let net = TestNet::new("kdisc");
    let brokers: Vec<Host> = BROKER_IPS
        .iter()
        .enumerate()
        .map(|(i, ip)| net.add_host(&format!("kafka{i}"), *ip))
        .collect();
    let producer = net.add_host("producer", PRODUCER_IP);
    let cluster = net.add_host("cluster", CLUSTER_IP);
    let cfg = TempDir::new("kdisc-cfg");
    let state = TempDir::new("kdisc-ca");
    let mut docs: String = brokers
        .iter()
        .enumerate()
        .map(|(i, b)| broker_workload(i, b))
        .collect();
    docs += &producer_workload(&producer);
    cfg.write("workloads.yaml", &docs);
    let (node_a, node_b) = two_nodes(cfg.path(), state.path());
    let _cluster = start_mock_cluster(&cluster, &brokers, &["orders:6"]);
    step(t0, "two node proxies and a 3-broker mock cluster up");

    // All TCP on the bridge: it must all be HBONE (port 15008).
    let capture = net.tcpdump_filtered(BRIDGE, "tcp");
    let boot = bootstrap(BROKER_IPS[0]);

    // Bootstrap on broker 1 only: the metadata lists all three.
    let md = run_client(
        &producer,
        "metadata",
        &["metadata", "--bootstrap", &boot, "--timeout", "30"],
        Duration::from_secs(60),
    );
    let expected: Vec<serde_json::Value> = BROKER_IPS
        .iter()
        .enumerate()
        .map(|(i, ip)| serde_json::json!({"id": i + 1, "host": ip.to_string(), "port": KAFKA_PORT}))
        .collect();
    assert_eq!(
        md.json["brokers"].as_array(),
        Some(&expected),
        "metadata through the mesh does not list the three brokers:\n{}",
        md.describe()
    );
    // Partition leaders are spread over all three brokers.
    let out = producer.exec(
        "timeout",
        &["60", python(), "-c", LEADERS_PY, &boot, "orders"],
    );
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let leaders: serde_json::Value =
        serde_json::from_str(raw.trim()).unwrap_or(serde_json::Value::Null);
    let mut distinct: Vec<u64> = leaders["leaders"]
        .as_object()
        .map(|m| m.values().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct,
        vec![1, 2, 3],
        "partition leaders of `orders` are not spread over brokers 1-3: {raw} (stderr {})",
        String::from_utf8_lossy(&out.stderr)
    );
    step(
        t0,
        &format!("metadata: 3 brokers, leaders {}", leaders["leaders"]),
    );

    let n = 3000;
    let count = n.to_string();
    let p = run_client(
        &producer,
        "producer",
        &[
            "produce",
            "--bootstrap",
            &boot,
            "--topic",
            "orders",
            "--count",
            &count,
            "--timeout",
            "60",
        ],
        Duration::from_secs(90),
    );
    assert_produced(&p, n);
    step(
        t0,
        &format!("produced {n} records in {:.1}s", p.elapsed.as_secs_f64()),
    );
    let c = run_client(
        &producer,
        "consumer",
        &[
            "consume",
            "--bootstrap",
            &boot,
            "--topic",
            "orders",
            "--count",
            &count,
            "--timeout",
            "60",
        ],
        Duration::from_secs(90),
    );
    assert_consumed_all(&c, n);
    step(
        t0,
        &format!(
            "consumed {} records ({} unique) in {:.1}s",
            c.num("received"),
            c.num("unique"),
            c.elapsed.as_secs_f64()
        ),
    );
    let wire = capture.stop();

    // Every broker was reached from the producer's identity over mTLS.
    let producer_id = spiffe("apps", "producer");
    for i in 0..BROKER_IPS.len() {
        let broker = format!("kafka-{i}");
        node_a.expect_metric_at_least(OPENED, &mtls_from_producer(&producer_id, &broker), 1.0);
        node_b.expect_metric_at_least(
            OPENED,
            &[
                ("reporter", "source"),
                ("source_principal", producer_id.as_str()),
                ("destination_workload", broker.as_str()),
            ],
            1.0,
        );
    }
    assert_no_plaintext(&node_a);

    // On the wire: HBONE handshakes to each broker, and no TCP segment that
    // is not to or from port 15008 (none to 9092 in particular).
    let segments: Vec<(&str, &str, &str)> = wire.lines().filter_map(tcp_segment).collect();
    assert!(
        !segments.is_empty(),
        "the capture saw no TCP at all:\n{wire}"
    );
    let port = |endpoint: &str| endpoint.rsplit('.').next().unwrap_or_default().to_string();
    let not_hbone: Vec<&str> = segments
        .iter()
        .filter(|(_, src, dst)| port(src) != "15008" && port(dst) != "15008")
        .map(|(line, _, _)| *line)
        .collect();
    assert!(
        not_hbone.is_empty(),
        "TCP on the bridge that is not HBONE (port 15008), e.g. Kafka on 9092 not tunnelled:\n{}",
        not_hbone.join("\n")
    );
    for ip in BROKER_IPS {
        let hbone = format!("{ip}.15008");
        assert!(
            segments
                .iter()
                .any(|(line, _, dst)| *dst == hbone && line.contains("Flags [S]")),
            "no TCP handshake to {ip}:15008 on the bridge; segments:\n{}",
            segments.iter().map(|s| s.0).collect::<Vec<_>>().join("\n")
        );
    }
    step(
        t0,
        "all three brokers reached over mTLS; only HBONE (15008) on the bridge",
    );
}

/// A tcpdump header line `HH:MM:SS.us IP a.b.c.d.port > e.f.g.h.port: ...`
/// as (line, source, destination); `None` for payload lines.
fn tcp_segment(line: &str) -> Option<(&str, &str, &str)> {
    if !line.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let (_, rest) = line.split_once(" IP ")?;
    let mut words = rest.split_whitespace();
    let src = words.next()?;
    if words.next()? != ">" {
        return None;
    }
    let dst = words.next()?.strip_suffix(':')?;
    Some((line, src, dst))
}

/// Limits `host`'s outgoing bandwidth on eth0 (tc tbf), so a bulk transfer
/// takes a predictable while.
fn shape_egress(host: &Host, rate: &str) {
    let out = host.exec(
        "tc",
        &[
            "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "64kb", "latency",
            "100ms",
        ],
    );
    assert!(
        out.status.success(),
        "tc qdisc add ... tbf in {} failed ({}): {} (is iproute2's tc installed and \
         sch_tbf available?)",
        host.name,
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A valid, harmless policy change: a policy for a namespace with no workloads.
const UNRELATED_POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reload-marker, namespace: elsewhere}
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/elsewhere/sa/nobody]
";

#[test]
fn no_data_lost_across_reload_and_cut() {
    if !require_root() {
        return;
    }
    let Some(tansu) = require_tansu() else {
        return;
    };
    let _serial = serial();
    let t0 = Instant::now();
    let net = TestNet::new("klossless");
    let broker = net.add_host("kafka0", BROKER_IPS[0]);
    let producer = net.add_host("producer", PRODUCER_IP);
    let cfg = TempDir::new("klossless-cfg");
    // Read by node-b only: a change here reloads node-b, not node-a.
    let cfg_b = TempDir::new("klossless-cfg-b");
    let state = TempDir::new("klossless-ca");
    cfg.write(
        "workloads.yaml",
        &(broker_workload(0, &broker) + &producer_workload(&producer)),
    );
    let ca = Ca::StateDir(state.path());
    let mut node_a = NodeProxy::start_ready("node-a", &[cfg.path()], ca, &[]);
    let ca = Ca::StateDir(state.path());
    let node_b = NodeProxy::start_ready("node-b", &[cfg.path(), cfg_b.path()], ca, &[]);
    let topic = "lossless";
    let _tansu = start_tansu(&broker, &tansu, &[(topic, 3)]);
    step(t0, "two node proxies and a Tansu broker up");

    // Unshaped, 100 000 records take well under a second to produce here;
    // shape the producer's egress so there is a mid-stream to act in
    // (about 20 s at 20 Mbit/s for 50 MB of records).
    const N: u64 = 100_000;
    const SIZE: u64 = 500;
    shape_egress(&producer, "20mbit");
    let boot = bootstrap(broker.addr);
    let (n, size) = (N.to_string(), SIZE.to_string());
    let mut run = spawn_client(
        &producer,
        "producer",
        &[
            "produce",
            "--bootstrap",
            &boot,
            "--topic",
            topic,
            "--count",
            &n,
            "--size",
            &size,
            "--acks",
            "all",
            "--progress",
            "10000",
            "--timeout",
            "240",
        ],
        Duration::from_secs(300),
    );
    // Progress is measured on the wire: bytes the producer's node proxy has
    // moved towards the broker (the records alone are N * SIZE bytes).
    let producer_id = spiffe("apps", "producer");
    let to_broker = [
        ("reporter", "source"),
        ("source_principal", producer_id.as_str()),
        ("destination_workload", "kafka-0"),
    ];
    let established = [
        ("reporter", "source"),
        ("source_principal", producer_id.as_str()),
        ("destination_workload", "kafka-0"),
        ("response_flags", "-"),
    ];
    let total = (N * SIZE) as f64;
    let reached = |fraction: f64, run: &mut RunningClient| {
        let mut moved = 0.0;
        let ok = wait_for(Duration::from_secs(120), || {
            moved = node_b.metric(RECEIVED, &to_broker);
            moved >= fraction * total || !run.is_running()
        });
        assert!(
            ok && run.is_running(),
            "the producer {} before {:.0}% of the records crossed the mesh \
             ({moved} of {total} bytes); the test could not act mid-stream. \
             stderr:\n{}\nnode-b metrics:\n{}",
            if run.is_running() {
                "stalled"
            } else {
                "finished"
            },
            fraction * 100.0,
            tail(&run.stderr_text(), 30),
            metric_lines(&node_b.metrics_text(), RECEIVED)
        );
        moved
    };

    // (a) A valid config change on the producer's node: it reloads.
    let moved = reached(0.2, &mut run);
    let reloads = node_b.metric(RELOADS, &[("result", "success")]);
    let opened_before = node_b.metric(OPENED, &established);
    let closed_before = node_b.metric(CLOSED, &to_broker);
    cfg_b.write("unrelated-policy.yaml", UNRELATED_POLICY);
    node_b.expect_metric_at_least(RELOADS, &[("result", "success")], reloads + 1.0);
    step(
        t0,
        &format!(
            "node-b reloaded its config at {moved} bytes moved \
             ({opened_before} connections to the broker so far)"
        ),
    );

    // (b) Cut the broker connection once: restart the broker's node proxy.
    let moved = reached(0.5, &mut run);
    // The reload left the producer's connections alone.
    let text = node_b.metrics_text();
    let closed = metric_sum(&text, CLOSED, &to_broker);
    assert_eq!(
        closed,
        closed_before,
        "node-b's config reload closed producer -> broker connections:\n{}\n--- log of node-b:\n{}",
        metric_lines(&text, CLOSED),
        node_b.log_text()
    );
    let down = node_a.restart(Duration::from_secs(15));
    step(
        t0,
        &format!(
            "node-a restarted at {moved} bytes moved (down for {:.2}s)",
            down.as_secs_f64()
        ),
    );

    let p = run.wait();
    step(
        t0,
        &format!(
            "producer done in {:.1}s: {}",
            p.elapsed.as_secs_f64(),
            p.json
        ),
    );
    // What the client saw of the cut (librdkafka logs start with '%').
    let client_log: Vec<&str> = p.stderr.lines().filter(|l| l.starts_with('%')).collect();
    eprintln!("producer's librdkafka log:\n{}", client_log.join("\n"));
    assert_produced(&p, N);
    // The cut really cut: the producer had to open new connections.
    let opened_after_cut = node_b.metric(OPENED, &established);
    assert!(
        opened_after_cut > opened_before,
        "no new connection to the broker after node-a's restart ({opened_before} -> \
         {opened_after_cut}): the cut did not happen?\n{}\n{}",
        p.describe(),
        metric_lines(&node_b.metrics_text(), OPENED)
    );

    let c = run_client(
        &producer,
        "consumer",
        &[
            "consume",
            "--bootstrap",
            &boot,
            "--topic",
            topic,
            "--count",
            &n,
            "--timeout",
            "180",
        ],
        Duration::from_secs(240),
    );
    step(
        t0,
        &format!(
            "consumer done in {:.1}s: {} received, {} unique, {} duplicates, {} missing",
            c.elapsed.as_secs_f64(),
            c.num("received"),
            c.num("unique"),
            c.num("duplicates"),
            c.num("missing")
        ),
    );
    assert_consumed_all(&c, N);
    // A proxy never acknowledges on the broker's behalf: every ack the
    // producer got is a record the broker has.
    assert_eq!(
        p.num("acked"),
        c.num("unique"),
        "acked records != records in the broker:\n{}\n{}",
        p.describe(),
        c.describe()
    );
    node_a.expect_metric_at_least(OPENED, &mtls_from_producer(&producer_id, "kafka-0"), 1.0);
    assert_no_plaintext(&node_a);
}

#[test]
fn two_client_families() {
    if !require_root() {
        return;
    }
    let Some(tansu) = require_tansu() else {
        return;
    };
    let _serial = serial();
    let t0 = Instant::now();
    let net = TestNet::new("kfamilies");
    let broker = net.add_host("kafka0", BROKER_IPS[0]);
    let producer = net.add_host("producer", PRODUCER_IP);
    let cfg = TempDir::new("kfamilies-cfg");
    let state = TempDir::new("kfamilies-ca");
    cfg.write(
        "workloads.yaml",
        &(broker_workload(0, &broker) + &producer_workload(&producer)),
    );
    let (node_a, _node_b) = two_nodes(cfg.path(), state.path());
    let families = [
        ("confluent", "family-confluent"),
        ("kafka-python", "family-kafka-python"),
    ];
    let topics: Vec<(&str, u32)> = families.iter().map(|(_, t)| (*t, 3)).collect();
    let _tansu = start_tansu(&broker, &tansu, &topics);
    step(t0, "two node proxies and a Tansu broker up");

    let boot = bootstrap(broker.addr);
    let producer_id = spiffe("apps", "producer");
    let labels = mtls_from_producer(&producer_id, "kafka-0");
    for (family, topic) in families {
        let before = node_a.metric(OPENED, &labels);
        produce_and_consume(&producer, family, &boot, topic, 5000);
        node_a.expect_metric_at_least(OPENED, &labels, before + 1.0);
        step(
            t0,
            &format!("{family}: 5000 records through the mesh, none missing"),
        );
    }
    assert_no_plaintext(&node_a);
}
