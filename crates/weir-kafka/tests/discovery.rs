//! Routing by SNI and discovery of brokers added to the cluster, against a
//! scripted bootstrap server (librdkafka's mock cluster cannot report where
//! a broker added at run time listens).

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use weir_kafka::frame::FrameReader;
use weir_kafka::{AllowAll, BrokerAddr, Side, SniTarget};

use common::{proxy_with, response_frame};

/// A bootstrap server that answers ApiVersions v0 and Metadata with the
/// brokers in `brokers` (broker N at 10.9.0.N:9092); counts Metadata requests.
async fn bootstrap_server(
    brokers: Arc<Mutex<Vec<i32>>>,
    metadata_requests: Arc<Mutex<Vec<bool>>>,
) -> BrokerAddr {
    bootstrap_server_at(
        Arc::new(move || {
            brokers
                .lock()
                .unwrap()
                .iter()
                .map(|id| {
                    let host = format!("10.9.0.{id}");
                    (*id, BrokerAddr { host, port: 9092 })
                })
                .collect()
        }),
        metadata_requests,
    )
    .await
}

type BrokerList = Arc<dyn Fn() -> Vec<(i32, BrokerAddr)> + Send + Sync>;

/// A bootstrap server whose Metadata lists what `brokers` returns.
async fn bootstrap_server_at(
    brokers: BrokerList,
    metadata_requests: Arc<Mutex<Vec<bool>>>,
) -> BrokerAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let brokers = brokers.clone();
            let metadata_requests = metadata_requests.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut frames = FrameReader::new(r, Side::Client, 1 << 20);
                while let Ok(Some(f)) = frames.next().await {
                    let b = f.body();
                    let (key, version) = (
                        i16::from_be_bytes([b[0], b[1]]),
                        i16::from_be_bytes([b[2], b[3]]),
                    );
                    let corr = i32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                    let out: Bytes = if key == ApiKey::ApiVersions as i16 {
                        let mut resp = ApiVersionsResponse::default();
                        let mut k = api_versions_response::ApiVersion::default();
                        k.api_key = ApiKey::Metadata as i16;
                        k.max_version = 12;
                        resp.api_keys.push(k);
                        let mut body = bytes::BytesMut::new();
                        resp.encode(&mut body, 0).unwrap();
                        let mut out = ((4 + body.len()) as u32).to_be_bytes().to_vec();
                        out.extend(corr.to_be_bytes());
                        out.extend(body);
                        out.into()
                    } else {
                        assert_eq!((key, version), (ApiKey::Metadata as i16, 12));
                        let mut body = Bytes::copy_from_slice(b);
                        let _ = RequestHeader::decode(&mut body, 2).unwrap();
                        let req = MetadataRequest::decode(&mut body, 12).unwrap();
                        metadata_requests.lock().unwrap().push(req.topics.is_none());
                        let mut resp = MetadataResponse::default();
                        for (id, at) in brokers() {
                            let mut b = metadata_response::MetadataResponseBroker::default();
                            b.node_id = BrokerId(id);
                            b.host = StrBytes::from_string(at.host);
                            b.port = i32::from(at.port);
                            resp.brokers.push(b);
                        }
                        response_frame(12, corr, &resp)
                    };
                    if w.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    BrokerAddr {
        host: addr.ip().to_string(),
        port: addr.port(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_broker_added_to_the_cluster_is_found_without_config_changes() {
    let brokers = Arc::new(Mutex::new(vec![1, 2]));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let bootstrap = bootstrap_server(brokers.clone(), requests.clone()).await;
    let (proxy, _) = proxy_with(Arc::new(AllowAll), vec![bootstrap.clone()]);

    // The bootstrap name goes to the bootstrap servers.
    let route = proxy.resolve("kafka.example.com").await.unwrap();
    assert_eq!(route.target, SniTarget::Bootstrap);
    assert_eq!(route.candidates, vec![bootstrap.clone()]);

    // Broker 2 is unknown until metadata is seen: one refresh finds it.
    let route = proxy.resolve("b2-kafka.example.com").await.unwrap();
    assert_eq!(route.target, SniTarget::Broker(2));
    assert_eq!(route.candidates[0].to_string(), "10.9.0.2:9092");
    assert_eq!(requests.lock().unwrap().len(), 1);
    // Known now: no new refresh.
    proxy.resolve("b1-kafka.example.com").await.unwrap();
    assert_eq!(requests.lock().unwrap().len(), 1);

    // Broker 3 joins the cluster; a client dials its name. Within a second
    // of the last refresh no new one is made (what it learned is current;
    // clients naming unknown brokers cannot flood the cluster), after it one is.
    brokers.lock().unwrap().push(3);
    let err = proxy.resolve("b3-kafka.example.com").await.unwrap_err();
    assert_eq!(err.reason(), "unknown_broker");
    assert_eq!(requests.lock().unwrap().len(), 1);
    tokio::time::sleep(weir_kafka::registry::MIN_REFRESH_INTERVAL).await;
    let route = proxy.resolve("B3-Kafka.Example.Com").await.unwrap();
    assert_eq!(route.candidates[0].to_string(), "10.9.0.3:9092");
    // A brokers-only refresh (empty topic list, not every topic).
    assert_eq!(*requests.lock().unwrap(), vec![false, false]);

    // A broker that does not exist, and a name that is not ours.
    let err = proxy.resolve("b9-kafka.example.com").await.unwrap_err();
    assert_eq!(err.reason(), "unknown_broker");
    let err = proxy.resolve("other.example.com").await.unwrap_err();
    assert_eq!(err.reason(), "unknown_host");
}

#[tokio::test]
async fn unreachable_bootstrap_servers_are_reported() {
    // A port nothing listens on.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let dead = BrokerAddr {
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    let (proxy, metrics) = proxy_with(Arc::new(AllowAll), vec![dead]);
    let (client, _peer) = tokio::io::duplex(64);
    let err = proxy
        .serve(
            client,
            "kafka.example.com",
            weir_core::kafka::Principal::Anonymous,
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "upstream_unreachable");
    let err = proxy.resolve("b1-kafka.example.com").await.unwrap_err();
    assert_eq!(err.reason(), "unknown_broker");
    drop(metrics);
}

/// `serve_with` reports the broker once the upstream connection is open,
/// and only then: a connection that fails before was never routed.
#[tokio::test]
async fn serve_with_reports_the_connection_only_once_routed() {
    let brokers = Arc::new(Mutex::new(vec![1]));
    let bootstrap = bootstrap_server(brokers, Arc::new(Mutex::new(Vec::new()))).await;
    let (proxy, _) = proxy_with(Arc::new(AllowAll), vec![bootstrap.clone()]);
    let anonymous = weir_core::kafka::Principal::Anonymous;

    // Routed: the client sends a bad frame after the broker connection opened.
    let (client, mut app) = tokio::io::duplex(64);
    app.write_all(&(-1i32).to_be_bytes()).await.unwrap();
    let mut seen = None;
    let err = proxy
        .serve_with(client, "kafka.example.com", anonymous.clone(), |b| {
            seen = Some(b.clone())
        })
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "malformed_frame");
    assert_eq!(seen, Some(bootstrap));

    // Not routed: a name that is not ours.
    let (client, _app) = tokio::io::duplex(64);
    let mut called = false;
    let err = proxy
        .serve_with(client, "other.example.com", anonymous, |_| called = true)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "unknown_host");
    assert!(!called);
}

fn addr_of(l: &TcpListener) -> BrokerAddr {
    let a = l.local_addr().unwrap();
    BrokerAddr {
        host: a.ip().to_string(),
        port: a.port(),
    }
}

/// An address nothing listens on (connections are refused at once).
async fn dead_addr() -> BrokerAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    addr_of(&l)
}

/// A broker rescheduled to a new address (a pod advertising its IP): the
/// gateway's connection to the old one fails, one metadata refresh finds
/// the new one, and the client's connection goes there.
#[tokio::test]
async fn a_broker_that_moved_is_found_at_its_new_address() {
    let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let new_addr = addr_of(&live);
    let old_addr = dead_addr().await;
    let listed = new_addr.clone();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let bootstrap = bootstrap_server_at(
        Arc::new(move || vec![(1, listed.clone())]),
        requests.clone(),
    )
    .await;
    let (proxy, _) = proxy_with(Arc::new(AllowAll), vec![bootstrap]);
    proxy
        .registry()
        .learn_broker(1, &old_addr.host, i32::from(old_addr.port));

    let route = proxy.resolve("b1-kafka.example.com").await.unwrap();
    assert_eq!(route.candidates, vec![old_addr.clone()]);
    assert!(requests.lock().unwrap().is_empty(), "known: no refresh yet");
    let (connected, _stream) = proxy.connect(&route).await.unwrap();
    assert_eq!(connected, new_addr);
    assert_eq!(requests.lock().unwrap().len(), 1);
    assert_eq!(proxy.registry().broker(1), Some(new_addr));
    drop(live);
}

/// With every configured bootstrap server down, a bootstrap connection
/// (and a metadata refresh) goes to a broker learned from metadata.
#[tokio::test]
async fn learned_brokers_stand_in_for_bootstrap_servers_that_are_down() {
    let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker = addr_of(&live);
    let dead = dead_addr().await;
    let (proxy, _) = proxy_with(Arc::new(AllowAll), vec![dead.clone()]);
    proxy
        .registry()
        .learn_broker(2, &broker.host, i32::from(broker.port));
    let route = proxy.resolve("kafka.example.com").await.unwrap();
    assert_eq!(route.candidates, vec![dead, broker.clone()]);
    let (connected, _stream) = proxy.connect(&route).await.unwrap();
    assert_eq!(connected, broker);
    drop(live);
}

/// Dials plain TCP, except `hole`, where a connection never completes (a
/// black-holed address: SYNs dropped).
struct BlackHole {
    hole: BrokerAddr,
}

impl weir_kafka::Connector for BlackHole {
    fn connect<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> weir_kafka::upstream::BoxFuture<'a, std::io::Result<weir_kafka::BoxStream>> {
        Box::pin(async move {
            if host == self.hole.host && port == self.hole.port {
                std::future::pending::<()>().await;
            }
            let s = tokio::net::TcpStream::connect((host, port)).await?;
            Ok(Box::new(s) as weir_kafka::BoxStream)
        })
    }
}

/// One unresponsive bootstrap server costs a bounded wait (3 s), not the
/// whole timeout, before the next is tried.
#[tokio::test(start_paused = true)]
async fn a_black_holed_bootstrap_server_does_not_stall_the_next() {
    let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let good = addr_of(&live);
    let hole = BrokerAddr {
        host: "198.18.255.1".into(),
        port: 9092,
    };
    let proxy = weir_kafka::KafkaProxy::new(
        weir_kafka::KafkaProxyConfig::new(common::mapper(), vec![hole.clone(), good.clone()]),
        Arc::new(BlackHole { hole: hole.clone() }),
        Arc::new(AllowAll),
        Arc::new(weir_kafka::KafkaMetrics::unregistered()),
    );
    let route = proxy.resolve("kafka.example.com").await.unwrap();
    assert_eq!(route.candidates, vec![hole, good.clone()]);
    let started = tokio::time::Instant::now();
    let (connected, _s) =
        tokio::time::timeout(std::time::Duration::from_secs(60), proxy.connect(&route))
            .await
            .expect("stuck on the black-holed server")
            .unwrap();
    assert_eq!(connected, good);
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(3) && waited < std::time::Duration::from_secs(4),
        "{waited:?}"
    );
    drop(live);
}
