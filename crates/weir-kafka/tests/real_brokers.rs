//! The session with real brokers and real clients: librdkafka's mock
//! cluster (three brokers, `tools/kafka/mock_cluster.py --loopback 3`) and
//! a Tansu broker, behind plain-TCP gateway listeners, one per broker name. The broker host
//! template is `127.0.1.{id}` and the bootstrap host `127.0.2.1`, so clients
//! dial the rewritten addresses without DNS; each listener passes its own
//! address as the SNI would be.
//!
//! Needs python3 with confluent-kafka and kafka-python, kcat, and the
//! `tansu` binary (PATH, /opt/tansu/bin or ~/.cargo/bin;
//! `WEIR_SKIP_TANSU_TESTS=1` skips the Tansu test where it is missing).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::*;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_core::kafka::{Operation, Principal, ResourceType};
use weir_kafka::frame::FrameReader;
use weir_kafka::{
    AllowAll, Authorizer, BrokerAddr, HostMapper, KafkaMetrics, KafkaProxy, KafkaProxyConfig, Side,
    TcpConnector,
};

use common::{decode_response, request_frame, topic, TestAuthz};

const BOOTSTRAP_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 1);

fn broker_ip(id: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, id)
}

fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/kafka")
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the mock cluster; returns it and its brokers' loopback addresses.
fn mock_cluster(brokers: usize, topics: &[&str]) -> (Proc, Vec<BrokerAddr>) {
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(tools().join("mock_cluster.py"))
        .arg("--loopback")
        .arg(brokers.to_string());
    for t in topics {
        cmd.arg("--topic").arg(t);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Proc(
        cmd.spawn()
            .expect("python3 runs tools/kafka/mock_cluster.py"),
    );
    let stdout = child.0.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("mock_cluster.py printed its brokers within 30s");
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let addrs = v["brokers"]
        .as_array()
        .expect("brokers")
        .iter()
        .map(|b| {
            let a: SocketAddr = b["loopback"].as_str().unwrap().parse().unwrap();
            BrokerAddr {
                host: a.ip().to_string(),
                port: a.port(),
            }
        })
        .collect();
    (child, addrs)
}

/// The gateway under test: a bootstrap listener and one per broker.
struct Gateway {
    port: u16,
    registry: Arc<Mutex<Registry>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Gateway {
    async fn start(brokers: u8, bootstrap: Vec<BrokerAddr>, authz: Arc<dyn Authorizer>) -> Gateway {
        // One more listener than brokers: a name for a broker that does not exist.
        let ids: Vec<u8> = (1..=brokers + 1).collect();
        Self::start_ids(&ids, bootstrap, authz).await
    }

    /// Listens on the bootstrap address and on `127.0.1.{id}` for each id.
    async fn start_ids(
        ids: &[u8],
        bootstrap: Vec<BrokerAddr>,
        authz: Arc<dyn Authorizer>,
    ) -> Gateway {
        for _ in 0..10 {
            let first = TcpListener::bind((BOOTSTRAP_IP, 0)).await.unwrap();
            let port = first.local_addr().unwrap().port();
            let mut listeners = vec![first];
            for id in ids {
                match TcpListener::bind((broker_ip(*id), port)).await {
                    Ok(l) => listeners.push(l),
                    Err(_) => break,
                }
            }
            if listeners.len() != ids.len() + 1 {
                continue;
            }
            let mut registry = Registry::default();
            let metrics = KafkaMetrics::register(&mut registry);
            let mapper = HostMapper::new(&BOOTSTRAP_IP.to_string(), "127.0.1.{id}", port).unwrap();
            let mut config = KafkaProxyConfig::new(mapper, bootstrap);
            config.max_frame_size = 10 << 20;
            let proxy = Arc::new(KafkaProxy::new(
                config,
                Arc::new(TcpConnector::default()),
                authz,
                metrics,
            ));
            let tasks = listeners
                .into_iter()
                .map(|l| {
                    let proxy = proxy.clone();
                    tokio::spawn(async move {
                        loop {
                            let Ok((s, _)) = l.accept().await else { return };
                            let _ = s.set_nodelay(true);
                            let sni = s
                                .local_addr()
                                .map(|a| a.ip().to_string())
                                .unwrap_or_default();
                            let proxy = proxy.clone();
                            tokio::spawn(async move {
                                let principal = Principal::Certificate {
                                    subject: "CN=test-client".into(),
                                    sans: vec![],
                                };
                                if let Err(e) = proxy.serve(s, &sni, principal).await {
                                    eprintln!(
                                        "gateway: session via {sni} ended: {e} ({})",
                                        e.reason()
                                    );
                                }
                            });
                        }
                    })
                })
                .collect();
            return Gateway {
                port,
                registry: Arc::new(Mutex::new(registry)),
                tasks,
            };
        }
        panic!("no free port on 127.0.1.x / 127.0.2.1 after 10 tries");
    }

    fn bootstrap(&self) -> String {
        format!("{BOOTSTRAP_IP}:{}", self.port)
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().unwrap())
            .unwrap();
        out
    }

    /// The value of the sample of `name` whose labels contain all of `labels`.
    fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.metrics();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Runs tools/kafka/client.py; returns its JSON result.
async fn client(args: Vec<String>) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(tools().join("client.py"))
            .args(&args)
            .stderr(Stdio::inherit())
            .output()
            .expect("python3 runs tools/kafka/client.py")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("client.py printed {text:?}: {e}"))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn kcat(args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .arg("60")
            .arg("kcat")
            .args(&args)
            .stderr(Stdio::inherit())
            .output()
            .expect("kcat runs")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "kcat failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_through_the_gateway() {
    let (_cluster, brokers) = mock_cluster(3, &["orders:3"]);
    let gw = Gateway::start(3, brokers, Arc::new(AllowAll)).await;
    let bootstrap = gw.bootstrap();

    // Clients only ever see the gateway's names.
    let md = client(args(&[
        "metadata",
        "--bootstrap",
        &bootstrap,
        "--timeout",
        "20",
    ]))
    .await;
    let seen: Vec<(i64, String, i64)> = md["brokers"]
        .as_array()
        .unwrap_or_else(|| panic!("metadata: {md}"))
        .iter()
        .map(|b| {
            (
                b["id"].as_i64().unwrap(),
                b["host"].as_str().unwrap().to_owned(),
                b["port"].as_i64().unwrap(),
            )
        })
        .collect();
    let port = gw.port as i64;
    assert_eq!(
        seen,
        vec![
            (1, "127.0.1.1".to_string(), port),
            (2, "127.0.1.2".to_string(), port),
            (3, "127.0.1.3".to_string(), port)
        ]
    );

    const N: u64 = 3000;
    let p = client(args(&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "orders",
        "--count",
        &N.to_string(),
        "--size",
        "200",
        "--timeout",
        "60",
    ]))
    .await;
    assert_eq!(p["acked"].as_u64(), Some(N), "produce: {p}");
    assert_eq!(p["error_count"].as_u64(), Some(0), "produce: {p}");

    let c = client(args(&[
        "consume",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "orders",
        "--count",
        &N.to_string(),
        "--group",
        "g1",
        "--timeout",
        "60",
    ]))
    .await;
    assert_eq!(c["unique"].as_u64(), Some(N), "consume: {c}");
    assert_eq!(c["missing"].as_u64(), Some(0), "consume: {c}");

    // Per-topic metrics match what was sent.
    assert_eq!(
        gw.metric("weir_kafka_produced_records_total", &[r#"topic="orders""#]),
        N as f64
    );
    let bytes = gw.metric("weir_kafka_produced_bytes_total", &[r#"topic="orders""#]);
    assert!(
        bytes > (N * 200) as f64 && bytes < (N * 400) as f64,
        "produced bytes {bytes}"
    );
    assert!(gw.metric("weir_kafka_fetched_records_total", &[r#"topic="orders""#]) >= N as f64);
    assert!(gw.metric("weir_kafka_fetched_bytes_total", &[r#"topic="orders""#]) >= bytes);
    assert!(gw.metric("weir_kafka_requests_total", &[r#"api_key="Produce""#]) >= 1.0);
    assert!(gw.metric("weir_kafka_requests_total", &[r#"api_key="JoinGroup""#]) >= 1.0);
    assert!(
        gw.metric(
            "weir_kafka_request_duration_seconds_count",
            &[r#"api_key="Fetch""#]
        ) >= 1.0
    );

    // A second client family: kcat (librdkafka 2.0.2).
    let listing = kcat(args(&["-b", &bootstrap, "-L", "-J", "-m", "20"])).await;
    let v: serde_json::Value =
        serde_json::from_str(listing.trim()).unwrap_or_else(|e| panic!("{e}: {listing}"));
    for b in v["brokers"].as_array().unwrap() {
        let name = b["name"].as_str().unwrap();
        assert!(
            name.starts_with("127.0.1.") && name.ends_with(&format!(":{port}")),
            "kcat saw {name}"
        );
    }
    let consumed = kcat(args(&[
        "-C",
        "-b",
        &bootstrap,
        "-t",
        "orders",
        "-o",
        "beginning",
        "-e",
        "-q",
        "-f",
        "%p\n",
        "-m",
        "30",
    ]))
    .await;
    assert_eq!(consumed.lines().count() as u64, N, "kcat consumed");
    let produced = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || {
            let mut child = Command::new("timeout")
                .args(["60", "kcat", "-P", "-b", &bootstrap, "-t", "orders"])
                .stdin(Stdio::piped())
                .spawn()
                .expect("kcat runs");
            let mut stdin = child.stdin.take().unwrap();
            for i in 0..100 {
                std::io::Write::write_all(&mut stdin, format!("kcat-{i}\n").as_bytes()).unwrap();
            }
            drop(stdin);
            child.wait().unwrap()
        }
    })
    .await
    .unwrap();
    assert!(produced.success());
    assert_eq!(
        gw.metric("weir_kafka_produced_records_total", &[r#"topic="orders""#]),
        (N + 100) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_and_denied_topics_with_real_clients() {
    let (_cluster, brokers) = mock_cluster(3, &["orders:3", "secret:1"]);
    let gw = Gateway::start(3, brokers, Arc::new(TestAuthz { deny: vec![] })).await;
    let bootstrap = gw.bootstrap();

    let ok = client(args(&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "orders",
        "--count",
        "100",
        "--timeout",
        "30",
    ]))
    .await;
    assert_eq!(ok["acked"].as_u64(), Some(100), "{ok}");
    let denied = client(args(&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "secret",
        "--count",
        "10",
        "--timeout",
        "15",
    ]))
    .await;
    assert_eq!(denied["acked"].as_u64(), Some(0), "{denied}");
    let errors = denied.to_string();
    assert!(
        errors.contains("TOPIC_AUTHORIZATION_FAILED")
            || errors.contains("Topic authorization failed"),
        "{errors}"
    );

    // The full listing leaves the denied topic out.
    let md = client(args(&[
        "metadata",
        "--bootstrap",
        &bootstrap,
        "--timeout",
        "20",
    ]))
    .await;
    let topics: Vec<&str> = md["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        topics.contains(&"orders") && !topics.contains(&"secret"),
        "{topics:?}"
    );

    // A mixed request on a raw connection: Metadata for both topics.
    let mut s = TcpStream::connect((BOOTSTRAP_IP, gw.port)).await.unwrap();
    let mut req = MetadataRequest::default();
    req.topics = Some(
        ["orders", "secret"]
            .into_iter()
            .map(|n| {
                let mut t = metadata_request::MetadataRequestTopic::default();
                t.name = Some(topic(n));
                t
            })
            .collect(),
    );
    s.write_all(&request_frame(9, 77, &req)).await.unwrap();
    let (r, _w) = s.into_split();
    let mut frames = FrameReader::new(r, Side::Upstream, 1 << 20);
    let f = common::next(&mut frames).await;
    let (corr, resp): (i32, MetadataResponse) = decode_response(f.body(), 9);
    assert_eq!(corr, 77);
    let got: Vec<(String, i16, usize)> = resp
        .topics
        .iter()
        .map(|t| {
            (
                t.name.as_ref().unwrap().to_string(),
                t.error_code,
                t.partitions.len(),
            )
        })
        .collect();
    assert_eq!(got, vec![("orders".into(), 0, 3), ("secret".into(), 29, 0)]);

    assert!(
        gw.metric(
            "weir_kafka_authorization_denials_total",
            &[
                r#"resource_type="topic""#,
                r#"resource="secret""#,
                r#"principal="CN=test-client""#
            ]
        ) >= 1.0
    );
    assert_eq!(
        gw.metric("weir_kafka_produced_records_total", &[r#"topic="secret""#]),
        0.0
    );
    assert_eq!(
        gw.metric("weir_kafka_produced_records_total", &[r#"topic="orders""#]),
        100.0
    );
}

/// Metadata naming a topic the client may create and one it may not
/// (auto-creation asked for): librdkafka's mock cluster creates the first
/// and not the second, as a Kafka broker with ACLs would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_auto_creation_against_a_real_cluster() {
    let (_cluster, brokers) = mock_cluster(1, &["orders:1"]);
    let gw = Gateway::start(
        1,
        brokers,
        Arc::new(TestAuthz {
            deny: vec![
                (ResourceType::Topic, "no-create", Operation::Create),
                (ResourceType::Cluster, "kafka-cluster", Operation::Create),
            ],
        }),
    )
    .await;
    let s = TcpStream::connect((BOOTSTRAP_IP, gw.port)).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut frames = FrameReader::new(r, Side::Upstream, 1 << 20);
    let metadata = |names: &[&'static str], create: bool| {
        let mut req = MetadataRequest::default();
        req.allow_auto_topic_creation = create;
        req.topics = Some(
            names
                .iter()
                .map(|n| {
                    let mut t = metadata_request::MetadataRequestTopic::default();
                    t.name = Some(topic(n));
                    t
                })
                .collect(),
        );
        req
    };
    let codes = |resp: &MetadataResponse| -> Vec<(String, i16)> {
        resp.topics
            .iter()
            .map(|t| (t.name.as_ref().unwrap().to_string(), t.error_code))
            .collect()
    };
    w.write_all(&request_frame(
        9,
        1,
        &metadata(&["may-create", "no-create"], true),
    ))
    .await
    .unwrap();
    let (corr, resp): (i32, MetadataResponse) =
        decode_response(common::next(&mut frames).await.body(), 9);
    assert_eq!(corr, 1);
    let got = codes(&resp);
    assert!(
        got == [("may-create".into(), 0), ("no-create".into(), 29)]
            || got == [("may-create".into(), 5), ("no-create".into(), 29)],
        "{got:?}"
    );
    // Asked again without auto-creation: one exists now, the other does not.
    w.write_all(&request_frame(
        9,
        2,
        &metadata(&["may-create", "no-create"], false),
    ))
    .await
    .unwrap();
    let (corr, resp): (i32, MetadataResponse) =
        decode_response(common::next(&mut frames).await.body(), 9);
    assert_eq!(corr, 2);
    assert_eq!(
        codes(&resp),
        [("may-create".into(), 0), ("no-create".into(), 3)]
    );

    // Metadata v1 (kafka-python 2.0's version) has no
    // allow_auto_topic_creation: the broker is asked as v4 with it off, and
    // the answer comes back as v1.
    w.write_all(&request_frame(
        1,
        3,
        &metadata(&["no-create", "orders"], true),
    ))
    .await
    .unwrap();
    let (corr, resp): (i32, MetadataResponse) =
        decode_response(common::next(&mut frames).await.body(), 1);
    assert_eq!(corr, 3);
    assert_eq!(
        codes(&resp),
        [("no-create".into(), 29), ("orders".into(), 0)]
    );
    assert!(resp.brokers.iter().all(|b| b.host.starts_with("127.0.1.")));
    w.write_all(&request_frame(4, 4, &metadata(&["no-create"], false)))
        .await
        .unwrap();
    let (_, resp): (i32, MetadataResponse) =
        decode_response(common::next(&mut frames).await.body(), 4);
    assert_eq!(codes(&resp), [("no-create".into(), 3)], "not created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_one_connection_with_a_counted_reason() {
    let (_cluster, brokers) = mock_cluster(3, &["orders:1"]);
    let gw = Gateway::start(3, brokers, Arc::new(AllowAll)).await;

    // Broker 4 does not exist: the gateway refreshes, then closes.
    let mut s = TcpStream::connect((broker_ip(4), gw.port)).await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        s.read(&mut buf).await.unwrap_or(0),
        0,
        "connection to an unknown broker is closed"
    );

    // A frame over the limit (10 MiB here): refused from its size prefix.
    let mut s = TcpStream::connect((BOOTSTRAP_IP, gw.port)).await.unwrap();
    s.write_all(&(20u32 << 20).to_be_bytes()).await.unwrap();
    assert_eq!(s.read(&mut buf).await.unwrap_or(0), 0);

    // A truncated frame.
    let mut s = TcpStream::connect((BOOTSTRAP_IP, gw.port)).await.unwrap();
    s.write_all(&[0, 0, 0, 100, 0, 3]).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(s.read(&mut buf).await.unwrap_or(0), 0);

    // The gateway carries on.
    let md = client(args(&[
        "metadata",
        "--bootstrap",
        &gw.bootstrap(),
        "--timeout",
        "20",
    ]))
    .await;
    assert_eq!(md["brokers"].as_array().map(Vec::len), Some(3), "{md}");

    tokio::time::sleep(Duration::from_millis(200)).await;
    for reason in ["unknown_broker", "frame_too_large", "truncated_frame"] {
        assert_eq!(
            gw.metric(
                "weir_kafka_connections_closed_total",
                &[&format!(r#"reason="{reason}""#)]
            ),
            1.0,
            "{reason} in\n{}",
            gw.metrics()
        );
    }
    let _ = Bytes::new();
    let _ = IpAddr::V4(BOOTSTRAP_IP);
}

/// The `tansu` binary, or `None` (skip) with `WEIR_SKIP_TANSU_TESTS=1`.
fn tansu_bin() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|d| d.join("tansu"))
        .chain(
            [
                Some(PathBuf::from("/opt/tansu/bin/tansu")),
                home.map(|h| h.join(".cargo/bin/tansu")),
            ]
            .into_iter()
            .flatten(),
        )
        .find(|p| p.is_file());
    if found.is_none() && std::env::var("WEIR_SKIP_TANSU_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("note: skipping the Tansu test (WEIR_SKIP_TANSU_TESTS=1)");
        return None;
    }
    Some(found.expect(
        "the Tansu broker (`tansu`) is needed: cargo install --locked tansu --features dynostore --root /opt/tansu \
         (or set WEIR_SKIP_TANSU_TESTS=1)",
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_client_families_through_the_gateway_to_tansu() {
    let Some(bin) = tansu_bin() else { return };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("tcp://127.0.0.1:{port}");
    let _broker = Proc(
        Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts"),
    );
    let mut up = false;
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "tansu listens on {url}");
    let created = Command::new("timeout")
        .arg("30")
        .arg(&bin)
        .args([
            "topic",
            "create",
            "events",
            "--broker",
            &url,
            "--partitions",
            "2",
        ])
        .status()
        .unwrap();
    assert!(created.success(), "tansu topic create");

    // Tansu is one broker, node id 111: its name is 127.0.1.111.
    let bootstrap = vec![BrokerAddr {
        host: "127.0.0.1".into(),
        port,
    }];
    let gw = Gateway::start_ids(&[111], bootstrap, Arc::new(AllowAll)).await;
    let b = gw.bootstrap();

    let md = client(args(&["metadata", "--bootstrap", &b, "--timeout", "20"])).await;
    assert_eq!(
        md["brokers"][0]["host"].as_str(),
        Some("127.0.1.111"),
        "{md}"
    );

    for (family, n) in [("confluent", 1000u64), ("kafka-python", 300)] {
        let p = client(args(&[
            "produce",
            "--client",
            family,
            "--bootstrap",
            &b,
            "--topic",
            "events",
            "--count",
            &n.to_string(),
            "--timeout",
            "60",
        ]))
        .await;
        assert_eq!(p["acked"].as_u64(), Some(n), "{family} produce: {p}");
    }
    for (family, group) in [("confluent", "g-confluent"), ("kafka-python", "g-python")] {
        let c = client(args(&[
            "consume",
            "--client",
            family,
            "--bootstrap",
            &b,
            "--topic",
            "events",
            "--count",
            "1000",
            "--group",
            group,
            "--timeout",
            "60",
        ]))
        .await;
        // Both producers numbered their records from 0: 1000 distinct sequence numbers.
        assert_eq!(c["unique"].as_u64(), Some(1000), "{family} consume: {c}");
    }
    assert_eq!(
        gw.metric("weir_kafka_produced_records_total", &[r#"topic="events""#]),
        1300.0
    );
    assert!(gw.metric("weir_kafka_fetched_records_total", &[r#"topic="events""#]) >= 1300.0);
}

/// Not a test: prints produce throughput direct and through the gateway
/// (`cargo test --release -p weir-kafka --test real_brokers -- --ignored --nocapture`).
/// The benchmark of record is weir-bench.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn produce_throughput_direct_vs_gateway() {
    let (_cluster, brokers) = mock_cluster(1, &["bench:1"]);
    let direct = format!("{}:{}", brokers[0].host, brokers[0].port);
    let gw = Gateway::start(1, brokers, Arc::new(AllowAll)).await;
    let via = gw.bootstrap();
    for round in 0..2 {
        for (name, b) in [("direct", &direct), ("gateway", &via)] {
            let p = client(args(&[
                "produce",
                "--bootstrap",
                b,
                "--topic",
                "bench",
                "--count",
                "1000000",
                "--size",
                "1000",
                "--acks",
                "1",
                "--timeout",
                "120",
            ]))
            .await;
            eprintln!(
                "round {round} {name}: {:.1} MB/s ({} acked)",
                p["mb_per_s"].as_f64().unwrap_or(0.0),
                p["acked"]
            );
        }
    }
}
