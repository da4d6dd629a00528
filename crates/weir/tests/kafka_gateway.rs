//! End-to-end tests of the Kafka-aware gateway (`KafkaGateway`): real
//! Kafka-protocol brokers behind a `weir node` (HBONE mTLS from the
//! gateway), the real `weir gateway` binary in its own network namespace,
//! real clients outside reaching the whole cluster through ONE endpoint over
//! TLS with SNI (`/etc/netns/<ns>/hosts` gives the outside namespace the
//! gateway's host names).
//!
//! - `multi_broker_cluster_through_one_endpoint`: librdkafka's mock cluster
//!   (three brokers, a fourth added while a consumer runs), client
//!   certificates (MUTUAL), topic authorization by certificate subject:
//!   kcat metadata shows only gateway addresses and only allowed topics;
//!   confluent-kafka produces and consumes with a consumer group; a denied
//!   topic fails with TOPIC_AUTHORIZATION_FAILED; a raw Metadata request
//!   naming an allowed and a denied topic is served for one with a per-topic
//!   error for the other, on a connection that stays open; per-topic metrics
//!   equal what was sent; bad input (plaintext on the TLS port, an
//!   oversized frame) closes only that connection, counted.
//! - `tansu_with_two_client_families`: a Tansu broker, SIMPLE TLS behind a
//!   port mapping (`advertisedPort`: clients dial and are told the mapped
//!   port, the gateway listens on another), kafka-python
//!   and confluent-kafka producing and consuming through the gateway; then,
//!   under a DENY policy on one topic's Delete and AlterConfigs, a
//!   confluent-kafka AdminClient: IncrementalAlterConfigs passes on another
//!   topic and is refused on that one, DeleteRecords is refused, and
//!   CreateAcls without Alter on the cluster is answered
//!   CLUSTER_AUTHORIZATION_FAILED by the gateway.
//!
//! Needs what `kafka.rs` needs plus kcat and openssl.

mod common;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::gateway::{Gateway, NetnsHosts, Pki};
use common::kafka::{
    assert_consumed_all, assert_produced, bootstrap, require_tansu, run_client, spawn_client,
    start_mock_cluster, start_tansu, KAFKA_PORT,
};
use common::{metric_lines, metric_sum, python, serial, spiffe, wait_for, workload, Ca};
use common::{NodeProxy, TempDir};
use weir_testing::{require_root, Host, TestNet};

const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const BROKER_IPS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(198, 18, 0, 10),
    Ipv4Addr::new(198, 18, 0, 11),
    Ipv4Addr::new(198, 18, 0, 12),
    Ipv4Addr::new(198, 18, 0, 13),
];
/// Hosts librdkafka's mock cluster process (not a mesh workload).
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 30);

const GATEWAY_PORT: u16 = 9094;
const BOOTSTRAP_HOST: &str = "kafka.example.com";
const SUBJECT: &str = "/CN=billing/O=Example";

fn broker_host(id: u32) -> String {
    format!("b{id}-kafka.example.com")
}

fn step(t0: Instant, what: &str) {
    eprintln!(
        "[kafka gateway e2e {:>6.1}s] {what}",
        t0.elapsed().as_secs_f64()
    );
}

/// The mesh part of the config: broker workloads on node-a, STRICT mTLS in
/// `kafka`, and only the gateway's identity may reach the brokers' port.
fn mesh_docs(brokers: &[Host]) -> String {
    let mut docs = String::new();
    for (i, b) in brokers.iter().enumerate() {
        docs += &workload(&format!("kafka-{i}"), "kafka", "kafka", b, "node-a");
    }
    docs += &format!(
        "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: kafka}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: only-the-gateway, namespace: kafka}}
spec:
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [\"{}\"]}}}}]
    to: [{{operation: {{ports: [\"{KAFKA_PORT}\"]}}}}]
",
        spiffe("istio-system", "weir-gateway").trim_start_matches("spiffe://")
    );
    docs
}

fn kafka_gateway_doc(
    mode: &str,
    cert: &str,
    key: &str,
    ca: Option<&str>,
    upstream: &str,
) -> String {
    let ca = ca
        .map(|c| format!("\n    caCertificates: {c}"))
        .unwrap_or_default();
    format!(
        "---
apiVersion: weir.dev/v1alpha1
kind: KafkaGateway
metadata: {{name: external, namespace: kafka}}
spec:
  selector: {{istio: ingressgateway}}
  port: {GATEWAY_PORT}
  tls:
    mode: {mode}
    serverCertificate: {cert}
    privateKey: {key}{ca}
  bootstrapHost: {BOOTSTRAP_HOST}
  brokerHostTemplate: \"b{{id}}-kafka.example.com\"
  upstream:
    bootstrapServers: [\"{upstream}\"]
  maxFrameBytes: 1048576
"
    )
}

/// Raw Kafka requests over TLS, to check exactly what the gateway answers:
/// `metadata TOPICS` (Metadata v1 for the comma-separated topics, then an
/// ApiVersions v0 on the same connection to show it stays open) and
/// `oversized` (a frame header announcing 64 MiB, over the gateway's limit).
const RAW_PY: &str = r#"
import json, socket, ssl, struct, sys
host, port, sni, ca, cert, key, op = sys.argv[1:8]
ctx = ssl.create_default_context(cafile=ca)
if cert != "-":
    ctx.load_cert_chain(cert, key)
s = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname=sni)
def send(api, ver, corr, body):
    cid = b"raw-probe"
    hdr = struct.pack(">hhih", api, ver, corr, len(cid)) + cid
    s.sendall(struct.pack(">i", len(hdr) + len(body)) + hdr + body)
def recvn(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("connection closed")
        b += c
    return b
def recv():
    n = struct.unpack(">i", recvn(4))[0]
    return recvn(n)
class R:
    def __init__(self, b): self.b, self.o = b, 0
    def take(self, fmt):
        v = struct.unpack_from(fmt, self.b, self.o); self.o += struct.calcsize(fmt); return v[0]
    def string(self):
        n = self.take(">h")
        if n < 0: return None
        v = self.b[self.o:self.o + n].decode(); self.o += n; return v
res = {}
try:
    if op.startswith("metadata"):
        topics = [t for t in op.split(":", 1)[1].split(",") if t] if ":" in op else []
        body = struct.pack(">i", len(topics)) + b"".join(struct.pack(">h", len(t)) + t.encode() for t in topics)
        send(3, 1, 7, body)
        r = R(recv())
        res["correlation_id"] = r.take(">i")
        res["brokers"] = []
        for _ in range(r.take(">i")):
            nid = r.take(">i"); h = r.string(); p = r.take(">i"); r.string()
            res["brokers"].append({"id": nid, "host": h, "port": p})
        r.take(">i")
        res["topics"] = {}
        for _ in range(r.take(">i")):
            err = r.take(">h"); name = r.string(); r.take(">b")
            for _ in range(r.take(">i")):
                r.take(">h"); r.take(">i"); r.take(">i")
                for _ in range(r.take(">i")): r.take(">i")
                for _ in range(r.take(">i")): r.take(">i")
            res["topics"][name] = err
        send(18, 0, 8, b"")
        r = R(recv())
        res["second_correlation_id"] = r.take(">i")
        res["second_error"] = r.take(">h")
    elif op == "oversized":
        s.sendall(struct.pack(">i", 64 * 1024 * 1024) + b"\0" * 1024)
        try:
            res["read"] = len(s.recv(100))
        except Exception as e:
            res["read_error"] = repr(e)
except Exception as e:
    res["error"] = repr(e)
print(json.dumps(res))
"#;

fn raw(outside: &Host, pki: &ClientTls, sni: &str, op: &str) -> serde_json::Value {
    let out = outside.exec(
        python(),
        &[
            "-c",
            RAW_PY,
            &GATEWAY_IP.to_string(),
            &GATEWAY_PORT.to_string(),
            sni,
            &pki.ca,
            pki.cert.as_deref().unwrap_or("-"),
            pki.key.as_deref().unwrap_or("-"),
            op,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "raw probe {op}: {e}: {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// What an outside client trusts and presents.
struct ClientTls {
    ca: String,
    cert: Option<String>,
    key: Option<String>,
}

impl ClientTls {
    /// `client.py` TLS arguments.
    fn client_args(&self) -> Vec<String> {
        let mut v = vec!["--tls-ca".to_owned(), self.ca.clone()];
        if let (Some(c), Some(k)) = (&self.cert, &self.key) {
            v.extend([
                "--tls-cert".to_owned(),
                c.clone(),
                "--tls-key".to_owned(),
                k.clone(),
            ]);
        }
        v
    }

    /// kcat `-X` settings.
    fn kcat_args(&self) -> Vec<String> {
        let mut v = vec![
            "-X".to_owned(),
            "security.protocol=ssl".to_owned(),
            "-X".to_owned(),
            format!("ssl.ca.location={}", self.ca),
        ];
        if let (Some(c), Some(k)) = (&self.cert, &self.key) {
            v.extend([
                "-X".to_owned(),
                format!("ssl.certificate.location={c}"),
                "-X".to_owned(),
                format!("ssl.key.location={k}"),
            ]);
        }
        v
    }
}

fn client_py(
    outside: &Host,
    tls: &ClientTls,
    what: &str,
    args: &[&str],
    limit: Duration,
) -> common::kafka::ClientRun {
    let boot = format!("{BOOTSTRAP_HOST}:{GATEWAY_PORT}");
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--bootstrap".to_owned(), boot]);
    all.extend(tls.client_args());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    run_client(outside, what, &refs, limit)
}

fn kcat(
    outside: &Host,
    tls: &ClientTls,
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Output {
    let mut cmd = outside.command("timeout");
    cmd.arg("30")
        .arg("kcat")
        .arg("-b")
        .arg(format!("{BOOTSTRAP_HOST}:{GATEWAY_PORT}"))
        .args(tls.kcat_args())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kcat");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().expect("kcat output")
}

fn gateway_metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(&gw.metrics_text(), name, labels)
}

#[test]
fn multi_broker_cluster_through_one_endpoint() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    let net = TestNet::new("kgw");
    let outside = net.add_host("outside", OUTSIDE_IP);
    let gw_host = net.add_host("gw", GATEWAY_IP);
    let brokers: Vec<Host> = BROKER_IPS
        .iter()
        .enumerate()
        .map(|(i, ip)| net.add_host(&format!("kafka-{i}"), *ip))
        .collect();
    let cluster = net.add_host("cluster", CLUSTER_IP);
    let mut names = vec![(GATEWAY_IP, BOOTSTRAP_HOST.to_owned())];
    for id in 1..=4 {
        names.push((GATEWAY_IP, broker_host(id)));
    }
    let name_refs: Vec<(Ipv4Addr, &str)> = names.iter().map(|(ip, n)| (*ip, n.as_str())).collect();
    let _hosts = NetnsHosts::new(&outside, &name_refs);

    // Certificates: the gateway's server certificate for the bootstrap and
    // every broker name; a client certificate with the subject the policy names.
    let pki = Pki::new("kgw-pki");
    let ca = pki.ca("ca");
    let (server_cert, server_key) = pki.leaf(
        "ca",
        "server",
        "/CN=kafka.example.com",
        &[BOOTSTRAP_HOST, "*.example.com"],
        false,
    );
    let (client_cert, client_key) = pki.leaf("ca", "billing", SUBJECT, &[], true);
    let tls = ClientTls {
        ca: ca.clone(),
        cert: Some(client_cert),
        key: Some(client_key),
    };

    step(t0, "starting the mock cluster (3 brokers) and node-a");
    let mut mock = start_mock_cluster(
        &cluster,
        &brokers[..3],
        &["orders.eu:3", "orders.idempotent:1", "secret:1"],
    );
    let dir = TempDir::new("kgw-config");
    let state = TempDir::new("kgw-state");
    let docs = mesh_docs(&brokers)
        + &kafka_gateway_doc(
            "MUTUAL",
            &server_cert,
            &server_key,
            Some(&ca),
            &bootstrap(BROKER_IPS[0]),
        )
        + "---
apiVersion: weir.dev/v1alpha1
kind: KafkaAuthorizationPolicy
metadata: {name: billing, namespace: kafka}
spec:
  action: ALLOW
  rules:
  - principals: [\"CN=billing,O=Example\"]
    resources:
    - {type: topic, name: orders., patternType: PREFIXED}
    - {type: group, name: billing-, patternType: PREFIXED}
    operations: [Read, Write, Describe]
  # A mesh identity: an external CA's certificate cannot claim it.
  - principals: [\"cluster.local/ns/apps/sa/producer\"]
    resources: [{type: topic, name: secret}]
    operations: [Describe]
";
    dir.write("config.yaml", &docs);
    let config = dir.path().to_owned();
    let node = NodeProxy::start_ready("node-a", &[&config], Ca::StateDir(state.path()), &[]);
    let gw = Gateway::start(&gw_host, &config, Ca::StateDir(state.path()), &[]);

    step(t0, "kcat metadata through the gateway");
    let md = kcat(&outside, &tls, &["-L", "-J"], None);
    let md_text = String::from_utf8_lossy(&md.stdout).into_owned();
    let md_json: serde_json::Value = serde_json::from_str(md_text.trim()).unwrap_or_else(|e| {
        panic!(
            "kcat -L -J: {e}\nstdout: {md_text}\nstderr: {}",
            String::from_utf8_lossy(&md.stderr)
        )
    });
    let mut advertised: Vec<String> = md_json["brokers"]
        .as_array()
        .unwrap_or_else(|| panic!("no brokers in {md_json}"))
        .iter()
        .map(|b| b["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    advertised.sort();
    assert_eq!(
        advertised,
        (1..=3)
            .map(|id| format!("{}:{GATEWAY_PORT}", broker_host(id)))
            .collect::<Vec<_>>(),
        "every broker must be advertised at the gateway: {md_json}"
    );
    let topics: Vec<&str> = md_json["topics"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["topic"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        topics.contains(&"orders.eu") && !topics.contains(&"secret"),
        "a full listing shows allowed topics only: {topics:?}"
    );

    step(
        t0,
        "produce 3000 records with confluent-kafka, consume with a group",
    );
    let n = 3000u64;
    let p = client_py(
        &outside,
        &tls,
        "producer",
        &[
            "produce",
            "--topic",
            "orders.eu",
            "--count",
            "3000",
            "--size",
            "200",
            "--timeout",
            "60",
        ],
        Duration::from_secs(90),
    );
    assert_produced(&p, n);
    let c = client_py(
        &outside,
        &tls,
        "consumer",
        &[
            "consume",
            "--topic",
            "orders.eu",
            "--count",
            "3000",
            "--group",
            "billing-1",
            "--timeout",
            "60",
        ],
        Duration::from_secs(90),
    );
    assert_consumed_all(&c, n);
    let produced = gateway_metric(
        &gw,
        "weir_kafka_produced_records_total",
        &[("topic", "orders.eu")],
    );
    assert_eq!(
        produced,
        n as f64,
        "produced records counted from batch headers must equal what was sent:\n{}",
        metric_lines(&gw.metrics_text(), "weir_kafka_produced_records_total")
    );
    let bytes = gateway_metric(
        &gw,
        "weir_kafka_produced_bytes_total",
        &[("topic", "orders.eu")],
    );
    assert!(
        bytes >= (n * 200) as f64,
        "produced bytes ({bytes}) cover at least the values sent ({})",
        n * 200
    );
    let fetched = gateway_metric(
        &gw,
        "weir_kafka_fetched_records_total",
        &[("topic", "orders.eu")],
    );
    assert!(fetched >= n as f64, "fetched records {fetched} >= {n}");
    assert!(
        gateway_metric(&gw, "weir_kafka_requests_total", &[("api_key", "Produce")]) >= 1.0,
        "requests by API key:\n{}",
        metric_lines(&gw.metrics_text(), "weir_kafka_requests_total")
    );
    // Every broker connection went over HBONE with the gateway's identity.
    let from_gw = [("source_principal", spiffe("istio-system", "weir-gateway"))];
    let from_gw: Vec<(&str, &str)> = from_gw.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let opened = node.expect_metric_at_least("istio_tcp_connections_opened_total", &from_gw, 3.0);
    assert!(opened >= 3.0);

    step(
        t0,
        "an idempotent producer with Write on topics only (KIP-679)",
    );
    // The policy grants Read and Write on orders.*, no IdempotentWrite: the
    // producer id comes from Write on a topic, as with Kafka 2.8+.
    let idem_denials_before = gateway_metric(
        &gw,
        "weir_kafka_authorization_denials_total",
        &[("operation", "IdempotentWrite")],
    );
    let p = client_py(
        &outside,
        &tls,
        "idempotent producer",
        &[
            "produce",
            "--topic",
            "orders.idempotent",
            "--count",
            "100",
            "--idempotent",
            "--timeout",
            "30",
        ],
        Duration::from_secs(60),
    );
    assert_produced(&p, 100);
    assert_eq!(
        gateway_metric(
            &gw,
            "weir_kafka_authorization_denials_total",
            &[("operation", "IdempotentWrite")],
        ),
        idem_denials_before,
        "InitProducerId was not denied:\n{}",
        metric_lines(&gw.metrics_text(), "weir_kafka_authorization_denials_total")
    );

    step(t0, "a denied topic");
    let denied = kcat(
        &outside,
        &tls,
        &["-P", "-t", "secret"],
        Some("not allowed\n"),
    );
    let denied_err = String::from_utf8_lossy(&denied.stderr).to_lowercase();
    assert!(
        !denied.status.success() || denied_err.contains("authorization"),
        "producing to a denied topic must fail: status {}, stderr {denied_err}",
        denied.status
    );
    assert!(
        denied_err.contains("authorization failed"),
        "kcat reports Kafka's authorization error: {denied_err}"
    );
    assert_eq!(
        gateway_metric(
            &gw,
            "weir_kafka_produced_records_total",
            &[("topic", "secret")]
        ),
        0.0
    );
    assert!(
        gateway_metric(
            &gw,
            "weir_kafka_authorization_denials_total",
            &[("topic", "secret"), ("resource_type", "topic")]
        ) >= 1.0,
        "denials per topic and principal:\n{}",
        metric_lines(&gw.metrics_text(), "weir_kafka_authorization_denials_total")
    );

    step(
        t0,
        "an external certificate with a mesh SPIFFE id is not that identity",
    );
    let (imp_cert, imp_key) = pki.leaf(
        "ca",
        "impostor",
        "/CN=impostor",
        &["URI:spiffe://cluster.local/ns/apps/sa/producer"],
        true,
    );
    let impostor = ClientTls {
        ca: ca.clone(),
        cert: Some(imp_cert),
        key: Some(imp_key),
    };
    let claimed = raw(&outside, &impostor, BOOTSTRAP_HOST, "metadata:secret");
    assert!(claimed["error"].is_null(), "raw metadata: {claimed}");
    assert_eq!(
        claimed["topics"]["secret"], 29,
        "a SPIFFE URI from the external CA was taken for the mesh identity: {claimed}"
    );

    step(t0, "a mixed Metadata request on one connection");
    let mixed = raw(&outside, &tls, BOOTSTRAP_HOST, "metadata:orders.eu,secret");
    assert!(mixed["error"].is_null(), "raw metadata: {mixed}");
    assert_eq!(mixed["correlation_id"], 7, "{mixed}");
    assert_eq!(
        mixed["topics"]["orders.eu"], 0,
        "allowed topic served: {mixed}"
    );
    assert_eq!(
        mixed["topics"]["secret"], 29,
        "denied topic answered TOPIC_AUTHORIZATION_FAILED: {mixed}"
    );
    assert_eq!(
        (
            mixed["second_correlation_id"].as_i64(),
            mixed["second_error"].as_i64()
        ),
        (Some(8), Some(0)),
        "the connection stays open after a denial: {mixed}"
    );

    step(
        t0,
        "bad input: plaintext on the TLS port, an oversized frame",
    );
    let errors_before = gateway_metric(&gw, "weir_gateway_connection_errors_total", &[]);
    let kafka_route = [("route", "kafka:kafka/external")];
    let routed_before = gateway_metric(&gw, "weir_gateway_connections_total", &kafka_route);
    let plain = outside.exec(
        python(),
        &[
            "-c",
            "import socket,sys; s=socket.create_connection((sys.argv[1],int(sys.argv[2])),5); \
             s.sendall(b'\\x00\\x00\\x00\\x10' + b'\\x00'*16); \
             s.settimeout(5)\ntry: print(len(s.recv(100)))\nexcept Exception as e: print(repr(e))",
            &GATEWAY_IP.to_string(),
            &GATEWAY_PORT.to_string(),
        ],
    );
    assert!(plain.status.success(), "{plain:?}");
    let big = raw(&outside, &tls, BOOTSTRAP_HOST, "oversized");
    assert!(big["error"].is_null(), "{big}");
    assert!(
        wait_for(Duration::from_secs(10), || {
            gateway_metric(
                &gw,
                "weir_kafka_connections_closed_total",
                &[("reason", "frame_too_large")],
            ) >= 1.0
        }),
        "an oversized frame is counted:\n{}",
        metric_lines(&gw.metrics_text(), "weir_kafka_connections_closed_total")
    );
    // Each connection is counted once: the plaintext client was never
    // routed (an error); the oversized frame came on a connection already
    // routed to a broker (a connection, its end in weir_kafka_*).
    assert!(
        gateway_metric(&gw, "weir_gateway_connection_errors_total", &[]) >= errors_before + 1.0,
        "plaintext counted:\n{}",
        metric_lines(&gw.metrics_text(), "weir_gateway_connection_errors_total")
    );
    assert_eq!(
        gateway_metric(
            &gw,
            "weir_gateway_connection_errors_total",
            &[("reason", "frame_too_large")]
        ),
        0.0,
        "a routed connection is not also an error:\n{}",
        metric_lines(&gw.metrics_text(), "weir_gateway_connection_errors_total")
    );
    assert!(
        gateway_metric(&gw, "weir_gateway_connections_total", &kafka_route) >= routed_before + 1.0,
        "the oversized frame's connection was routed:\n{}",
        metric_lines(&gw.metrics_text(), "weir_gateway_connections_total")
    );

    step(t0, "a broker added while a consumer runs");
    let running = spawn_client(
        &outside,
        "group consumer",
        &[
            "consume",
            "--topic",
            "orders.eu",
            "--count",
            "4000",
            "--group",
            "billing-2",
            // It cannot reach 4000 unique records (see below): it stops here.
            "--timeout",
            "25",
            "--bootstrap",
            &format!("{BOOTSTRAP_HOST}:{GATEWAY_PORT}"),
            "--tls-ca",
            &tls.ca,
            "--tls-cert",
            tls.cert.as_deref().unwrap(),
            "--tls-key",
            tls.key.as_deref().unwrap(),
        ],
        Duration::from_secs(90),
    );
    let added = mock.command(&format!(
        "add 4={}@{}",
        bootstrap(BROKER_IPS[3]),
        brokers[3].name
    ));
    assert!(added["added"].is_object(), "mock cluster add: {added}");
    let led = mock.command("leader orders.eu 0 4");
    assert!(led["leader"].is_object(), "mock cluster leader: {led}");
    // The new broker is reachable by its own name with no config change.
    let via_b4 = raw(&outside, &tls, &broker_host(4), "metadata");
    assert!(via_b4["error"].is_null(), "metadata through b4: {via_b4}");
    assert!(
        via_b4["brokers"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["host"] == broker_host(4).as_str())),
        "broker 4 advertised at the gateway: {via_b4}"
    );
    let p2 = client_py(
        &outside,
        &tls,
        "producer after the new broker",
        &[
            "produce",
            "--topic",
            "orders.eu",
            "--count",
            "1000",
            "--size",
            "200",
            "--timeout",
            "60",
        ],
        Duration::from_secs(90),
    );
    assert_produced(&p2, 1000);
    let c2 = running.wait();
    // client.py numbers each producer's records from 0: the consumer sees
    // the first 3000 and then the second producer's 1000 again (as
    // "duplicates"), a third of them from the partition broker 4 now leads.
    assert!(
        !c2.timed_out
            && c2.json["error"].is_null()
            && c2.num("received") >= 4000
            && c2.num("unique") == 3000
            && c2.num("foreign") == 0,
        "the running consumer reads the records produced before and after the broker was added:\n{}",
        c2.describe()
    );
    assert!(
        gw.log_text().contains("broker=4"),
        "the gateway learnt broker 4 from the cluster's responses; log:\n{}",
        gw.log_text()
    );
    step(t0, "done");
    drop(gw);
    drop(node);
}

#[test]
fn tansu_with_two_client_families() {
    if !require_root() {
        return;
    }
    let Some(tansu) = require_tansu() else {
        return;
    };
    let _serial = serial();
    let t0 = Instant::now();
    let net = TestNet::new("kgwt");
    let outside = net.add_host("outside", OUTSIDE_IP);
    let gw_host = net.add_host("gw", GATEWAY_IP);
    let broker = net.add_host("kafka-0", BROKER_IPS[0]);
    let pki = Pki::new("kgwt-pki");
    let ca = pki.ca("ca");
    let (server_cert, server_key) = pki.leaf(
        "ca",
        "server",
        "/CN=kafka.example.com",
        &[BOOTSTRAP_HOST, "*.example.com"],
        false,
    );
    let tls = ClientTls {
        ca,
        cert: None,
        key: None,
    };
    step(t0, "starting Tansu, node-a and the gateway");
    let _tansu = start_tansu(&broker, &tansu, &[("orders.py", 1), ("orders.rd", 1)]);
    let dir = TempDir::new("kgwt-config");
    let state = TempDir::new("kgwt-state");
    // Clients reach the gateway through a port mapping, as through a
    // LoadBalancer Service: they dial GATEWAY_PORT, the outside namespace
    // DNATs it to the port the gateway listens on, and the gateway must
    // advertise GATEWAY_PORT (spec.advertisedPort), not its own.
    let listen_port = GATEWAY_PORT + 10000;
    outside.exec_ok(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &GATEWAY_IP.to_string(),
            "--dport",
            &GATEWAY_PORT.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{GATEWAY_IP}:{listen_port}"),
        ],
    );
    let gateway_doc = kafka_gateway_doc(
        "SIMPLE",
        &server_cert,
        &server_key,
        None,
        &bootstrap(BROKER_IPS[0]),
    );
    let port_line = format!("  port: {GATEWAY_PORT}\n");
    assert!(gateway_doc.contains(&port_line));
    let gateway_doc = gateway_doc.replace(
        &port_line,
        &format!("  port: {listen_port}\n  advertisedPort: {GATEWAY_PORT}\n"),
    );
    let docs = mesh_docs(std::slice::from_ref(&broker))
        + &gateway_doc
        + "---
apiVersion: weir.dev/v1alpha1
kind: KafkaAuthorizationPolicy
metadata: {name: no-admin-on-rd, namespace: kafka}
spec:
  action: DENY
  rules:
  - resources: [{type: topic, name: orders.rd}]
    operations: [Delete, AlterConfigs]
  - resources: [{type: cluster}]
    operations: [Alter]
";
    dir.write("config.yaml", &docs);
    let config = dir.path().to_owned();
    let _node = NodeProxy::start_ready(
        "node-a",
        &[config.as_path()],
        Ca::StateDir(state.path()),
        &[],
    );
    let gw = Gateway::start(
        &gw_host,
        Path::new(&config),
        Ca::StateDir(state.path()),
        &[],
    );
    // Tansu picks its own node id: learn the broker names the gateway
    // advertises (a raw request needs no name resolution), then give the
    // outside namespace those names.
    let md = raw(&outside, &tls, BOOTSTRAP_HOST, "metadata");
    let advertised: Vec<String> = md["brokers"]
        .as_array()
        .unwrap_or_else(|| panic!("metadata through the gateway: {md}"))
        .iter()
        .map(|b| {
            assert_eq!(b["port"], GATEWAY_PORT, "the advertised port: {md}");
            b["host"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert!(
        advertised.len() == 1 && advertised[0].ends_with("-kafka.example.com"),
        "Tansu's one broker advertised at the gateway: {md}"
    );
    let mut names = vec![(GATEWAY_IP, BOOTSTRAP_HOST)];
    names.extend(advertised.iter().map(|h| (GATEWAY_IP, h.as_str())));
    let _hosts = NetnsHosts::new(&outside, &names);

    for (family, topic) in [("kafka-python", "orders.py"), ("confluent", "orders.rd")] {
        step(t0, &format!("{family}: produce and consume 2000 records"));
        let p = client_py(
            &outside,
            &tls,
            &format!("{family} producer"),
            &[
                "produce",
                "--client",
                family,
                "--topic",
                topic,
                "--count",
                "2000",
                "--timeout",
                "60",
            ],
            Duration::from_secs(90),
        );
        assert_produced(&p, 2000);
        let c = client_py(
            &outside,
            &tls,
            &format!("{family} consumer"),
            &[
                "consume",
                "--client",
                family,
                "--topic",
                topic,
                "--count",
                "2000",
                "--timeout",
                "60",
            ],
            Duration::from_secs(90),
        );
        assert_consumed_all(&c, 2000);
        assert_eq!(
            gateway_metric(
                &gw,
                "weir_kafka_produced_records_total",
                &[("topic", topic)]
            ),
            2000.0,
            "{}",
            metric_lines(&gw.metrics_text(), "weir_kafka_produced_records_total")
        );
    }

    step(t0, "confluent-kafka AdminClient under the DENY policy");
    let admin = client_py(
        &outside,
        &tls,
        "admin client",
        &[
            "admin",
            "--alter-configs",
            "orders.py",
            "--alter-configs",
            "orders.rd",
            "--delete-records",
            "orders.rd",
            "--create-acl",
            "--timeout",
            "20",
        ],
        Duration::from_secs(90),
    );
    let results = &admin.json["results"];
    assert_eq!(
        results["alter_configs:orders.py"],
        "NONE",
        "allowed IncrementalAlterConfigs reaches Tansu: {}",
        admin.describe()
    );
    assert_eq!(
        results["alter_configs:orders.rd"],
        "TOPIC_AUTHORIZATION_FAILED",
        "{}",
        admin.describe()
    );
    assert_eq!(
        results["delete_records:orders.rd"],
        "TOPIC_AUTHORIZATION_FAILED",
        "{}",
        admin.describe()
    );
    assert_eq!(
        results["create_acls"],
        "CLUSTER_AUTHORIZATION_FAILED",
        "CreateAcls without Alter on the cluster is answered as Kafka does: {}",
        admin.describe()
    );
    for op in ["AlterConfigs", "Delete"] {
        assert_eq!(
            gateway_metric(
                &gw,
                "weir_kafka_authorization_denials_total",
                &[("topic", "orders.rd"), ("operation", op)]
            ),
            1.0,
            "{}",
            metric_lines(&gw.metrics_text(), "weir_kafka_authorization_denials_total")
        );
    }
    assert_eq!(
        gateway_metric(
            &gw,
            "weir_kafka_connections_closed_total",
            &[("reason", "unauthorizable_api")]
        ),
        0.0,
        "the client never sent an API the gateway did not offer"
    );

    step(
        t0,
        "CreateTopics with Create on the cluster only (an ALLOW policy)",
    );
    // The audit's policy: Create and Describe on the cluster, nothing on
    // topics. Kafka lets cluster Create create every topic.
    let reloads = || gateway_metric(&gw, "weir_config_reloads_total", &[("result", "success")]);
    let before = reloads();
    dir.write(
        "config.yaml",
        &(docs.clone()
            + "---
apiVersion: weir.dev/v1alpha1
kind: KafkaAuthorizationPolicy
metadata: {name: cluster-admin, namespace: kafka}
spec:
  rules:
  - principals: [User:ANONYMOUS]
    resources: [{type: cluster}]
    operations: [Create, Describe]
"),
    );
    assert!(
        wait_for(Duration::from_secs(10), || reloads() > before),
        "the gateway reloads the policy"
    );
    let admin = client_py(
        &outside,
        &tls,
        "admin client (create)",
        &["admin", "--create-topic", "orders.new", "--timeout", "20"],
        Duration::from_secs(60),
    );
    assert_eq!(
        admin.json["results"]["create_topics:orders.new"],
        "NONE",
        "cluster Create lets the topic be created: {}",
        admin.describe()
    );
    assert_eq!(
        gateway_metric(
            &gw,
            "weir_kafka_authorization_denials_total",
            &[("operation", "Create")]
        ),
        0.0,
        "{}",
        metric_lines(&gw.metrics_text(), "weir_kafka_authorization_denials_total")
    );
    step(t0, "done");
}
