//! Helpers for the session tests: a client and a scripted broker on
//! in-memory streams, requests and responses built with kafka-protocol.

#![allow(dead_code)]

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use weir_core::kafka::{Operation, Principal, ResourceType};
use weir_kafka::frame::FrameReader;
use weir_kafka::{
    Authorizer, BrokerAddr, Decision, HostMapper, KafkaMetrics, KafkaProxy, KafkaProxyConfig,
    SessionError, Side, TcpConnector,
};

pub const PORT: u16 = 9093;

pub fn mapper() -> HostMapper {
    HostMapper::new("kafka.example.com", "b{id}-kafka.example.com", PORT).unwrap()
}

/// Denies every operation on names starting with `secret`, and the
/// resources listed in `deny`; allows the rest.
pub struct TestAuthz {
    pub deny: Vec<(ResourceType, &'static str, Operation)>,
}

impl Authorizer for TestAuthz {
    fn authorize(
        &self,
        _: &Principal,
        resource: ResourceType,
        name: &str,
        op: Operation,
    ) -> Decision {
        if name.starts_with("secret")
            || self
                .deny
                .iter()
                .any(|(r, n, o)| *r == resource && *n == name && *o == op)
        {
            Decision::deny("test deny")
        } else {
            Decision::allow("test allow")
        }
    }
}

pub fn proxy_with(
    authz: Arc<dyn Authorizer>,
    bootstrap: Vec<BrokerAddr>,
) -> (Arc<KafkaProxy>, Arc<KafkaMetrics>) {
    let metrics = Arc::new(KafkaMetrics::unregistered());
    let proxy = KafkaProxy::new(
        KafkaProxyConfig::new(mapper(), bootstrap),
        Arc::new(TcpConnector::default()),
        authz,
        metrics.clone(),
    );
    (Arc::new(proxy), metrics)
}

pub fn proxy_with_max_frame(
    authz: Arc<dyn Authorizer>,
    max: usize,
) -> (Arc<KafkaProxy>, Arc<KafkaMetrics>) {
    let metrics = Arc::new(KafkaMetrics::unregistered());
    let mut config = KafkaProxyConfig::new(mapper(), vec![]);
    config.max_frame_size = max;
    let proxy = KafkaProxy::new(
        config,
        Arc::new(TcpConnector::default()),
        authz,
        metrics.clone(),
    );
    (Arc::new(proxy), metrics)
}

/// A session over in-memory streams: the test plays client and broker.
pub struct Harness {
    pub client: WriteHalf<DuplexStream>,
    pub client_frames: FrameReader<ReadHalf<DuplexStream>>,
    pub broker: WriteHalf<DuplexStream>,
    pub broker_frames: FrameReader<ReadHalf<DuplexStream>>,
    pub session: tokio::task::JoinHandle<Result<(), SessionError>>,
}

pub fn harness(proxy: Arc<KafkaProxy>, max_frame: usize) -> Harness {
    let (client_app, client_gw) = tokio::io::duplex(1 << 20);
    let (broker_app, broker_gw) = tokio::io::duplex(1 << 20);
    let session = tokio::spawn(async move {
        proxy
            .run_session(client_gw, broker_gw, Principal::Anonymous)
            .await
    });
    let (cr, cw) = tokio::io::split(client_app);
    let (br, bw) = tokio::io::split(broker_app);
    Harness {
        client: cw,
        client_frames: FrameReader::new(cr, Side::Upstream, max_frame),
        broker: bw,
        broker_frames: FrameReader::new(br, Side::Client, max_frame),
        session,
    }
}

pub fn request_frame<T: Request>(version: i16, correlation_id: i32, body: &T) -> Bytes {
    let mut h = RequestHeader::default();
    h.request_api_key = T::KEY;
    h.request_api_version = version;
    h.correlation_id = correlation_id;
    h.client_id = Some(StrBytes::from_static_str("test-client"));
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    h.encode(&mut buf, T::header_version(version)).unwrap();
    body.encode(&mut buf, version).unwrap();
    let n = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&n.to_be_bytes());
    buf.freeze()
}

pub fn response_frame<T: Encodable + HeaderVersion>(
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Bytes {
    let mut h = ResponseHeader::default();
    h.correlation_id = correlation_id;
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    h.encode(&mut buf, T::header_version(version)).unwrap();
    body.encode(&mut buf, version).unwrap();
    let n = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&n.to_be_bytes());
    buf.freeze()
}

/// Decodes a request frame body: header, then body.
pub fn decode_request<T: Request>(frame_body: &[u8]) -> (RequestHeader, T) {
    let mut b = Bytes::copy_from_slice(frame_body);
    let api_version = i16::from_be_bytes([b[2], b[3]]);
    let h = RequestHeader::decode(&mut b, T::header_version(api_version)).unwrap();
    let body = T::decode(&mut b, api_version).unwrap();
    (h, body)
}

/// Decodes a response frame body; ApiVersions headers are v0.
pub fn decode_response<T: Decodable + HeaderVersion>(frame_body: &[u8], version: i16) -> (i32, T) {
    let mut b = Bytes::copy_from_slice(frame_body);
    let h = ResponseHeader::decode(&mut b, T::header_version(version)).unwrap();
    (h.correlation_id, T::decode(&mut b, version).unwrap())
}

pub fn topic(name: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(name))
}

pub fn records(n: usize, size: usize) -> Bytes {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from(vec![b'v'; size])),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

pub fn produce(acks: i16, topics: &[(&'static str, &[i32])], recs: &Bytes) -> ProduceRequest {
    let mut r = ProduceRequest::default();
    r.acks = acks;
    r.timeout_ms = 1000;
    for (name, parts) in topics {
        let mut t = produce_request::TopicProduceData::default();
        t.name = topic(name);
        for p in *parts {
            let mut pd = produce_request::PartitionProduceData::default();
            pd.index = *p;
            pd.records = Some(recs.clone());
            t.partition_data.push(pd);
        }
        r.topic_data.push(t);
    }
    r
}

pub async fn send(w: &mut WriteHalf<DuplexStream>, frame: &Bytes) {
    w.write_all(frame).await.unwrap();
}

/// The next frame, or a panic naming the wait (no test hangs).
pub async fn next<R: tokio::io::AsyncRead + Unpin>(
    frames: &mut FrameReader<R>,
) -> weir_kafka::frame::Frame {
    tokio::time::timeout(std::time::Duration::from_secs(10), frames.next())
        .await
        .expect("no frame within 10s")
        .expect("frame error")
        .expect("stream closed")
}

/// How a session ended (it must end with an error within 10 s).
pub async fn ended(session: tokio::task::JoinHandle<Result<(), SessionError>>) -> SessionError {
    tokio::time::timeout(std::time::Duration::from_secs(10), session)
        .await
        .expect("session still running after 10s")
        .expect("session task panicked")
        .expect_err("session ended without an error")
}

/// A proxy whose metrics are registered, for tests that read them.
pub fn proxy_registered(
    authz: Arc<dyn Authorizer>,
) -> (
    Arc<KafkaProxy>,
    Arc<std::sync::Mutex<prometheus_client::registry::Registry>>,
) {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = KafkaMetrics::register(&mut registry);
    let proxy = KafkaProxy::new(
        KafkaProxyConfig::new(mapper(), vec![]),
        Arc::new(TcpConnector::default()),
        authz,
        metrics,
    );
    (Arc::new(proxy), Arc::new(std::sync::Mutex::new(registry)))
}

/// The samples of `registry` whose line starts with `name`, sorted.
pub fn metric_lines(
    registry: &std::sync::Mutex<prometheus_client::registry::Registry>,
    name: &str,
) -> Vec<String> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry.lock().unwrap()).unwrap();
    let mut lines: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with(name))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}
