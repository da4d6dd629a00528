//! Broker discovery: node id → the broker's real (advertised) address,
//! learned from the responses that pass through the gateway (Metadata,
//! FindCoordinator, DescribeCluster, Produce/Fetch node endpoints), and
//! topic id → topic name (Metadata v10+), for the APIs that name topics by
//! id. No static id ranges: a broker added to the cluster appears in the
//! next metadata, or is fetched on demand when a client dials its name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader as KpRequestHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};
use tokio::io::AsyncWriteExt;

use crate::error::Side;
use crate::frame::{Frame, FrameReader};
use crate::header::parse_response_header;
use crate::upstream::Connector;

/// When the registry's metadata refreshes last ended.
#[derive(Debug, Clone, Copy, Default)]
struct Refreshed {
    brokers_attempt: Option<tokio::time::Instant>,
    every_topic_attempt: Option<tokio::time::Instant>,
    success: Option<tokio::time::Instant>,
}

/// The shortest time between two metadata refreshes of the same kind.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// How many learned brokers are tried after the configured bootstrap
/// servers (each failed attempt may cost a connect timeout).
pub const LEARNED_FALLBACKS: usize = 3;

/// A broker's address as the cluster advertises it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerAddr {
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why a metadata refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// No bootstrap server could be reached.
    #[error("no bootstrap server reachable (tried {tried}): {last}")]
    Unreachable { tried: String, last: std::io::Error },
    /// The broker's answer was not what Kafka's protocol says.
    #[error("bootstrap server {addr} answered a metadata refresh with {detail}")]
    Protocol { addr: BrokerAddr, detail: String },
    /// The refresh did not finish in time.
    #[error("metadata refresh timed out after {0:?}")]
    Timeout(Duration),
}

/// What the gateway knows about one cluster, shared by all its sessions.
/// Reads are a read lock and a hash lookup; writes happen only when a
/// response carries something new.
#[derive(Debug)]
pub struct BrokerRegistry {
    bootstrap: Vec<BrokerAddr>,
    next: AtomicUsize,
    brokers: RwLock<HashMap<i32, BrokerAddr>>,
    topics: RwLock<HashMap<[u8; 16], Arc<str>>>,
    refresh: tokio::sync::Mutex<()>,
    /// When the last refresh ended: (any, an every-topic one).
    refreshed: std::sync::Mutex<Refreshed>,
}

impl BrokerRegistry {
    /// A registry that starts from the cluster's bootstrap servers.
    pub fn new(bootstrap_servers: Vec<BrokerAddr>) -> Self {
        BrokerRegistry {
            bootstrap: bootstrap_servers,
            next: AtomicUsize::new(0),
            brokers: RwLock::new(HashMap::new()),
            topics: RwLock::new(HashMap::new()),
            refresh: tokio::sync::Mutex::new(()),
            refreshed: std::sync::Mutex::new(Refreshed::default()),
        }
    }

    /// The configured bootstrap servers, rotated by one on every call
    /// (round robin over connections).
    pub fn bootstrap_order(&self) -> Vec<BrokerAddr> {
        let mut v = self.bootstrap.clone();
        if !v.is_empty() {
            let n = self.next.fetch_add(1, Ordering::Relaxed) % v.len();
            v.rotate_left(n);
        }
        v
    }

    /// Where to bootstrap: the configured servers (rotated, as
    /// [`BrokerRegistry::bootstrap_order`]), then up to
    /// [`LEARNED_FALLBACKS`] brokers learned from metadata that are not
    /// among them, so that a cluster whose configured bootstrap servers are
    /// down is still reached through the brokers that are up.
    pub fn bootstrap_candidates(&self) -> Vec<BrokerAddr> {
        let mut v = self.bootstrap_order();
        let extra: Vec<BrokerAddr> = self
            .brokers()
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| !v.contains(a))
            .take(LEARNED_FALLBACKS)
            .collect();
        v.extend(extra);
        v
    }

    /// The address of broker `id`, if known.
    pub fn broker(&self, id: i32) -> Option<BrokerAddr> {
        self.brokers.read().ok()?.get(&id).cloned()
    }

    /// All known brokers, by id.
    pub fn brokers(&self) -> Vec<(i32, BrokerAddr)> {
        let mut v: Vec<(i32, BrokerAddr)> = self
            .brokers
            .read()
            .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// Records broker `id` at `host:port` (as the cluster advertises it).
    pub fn learn_broker(&self, id: i32, host: &str, port: i32) {
        let Ok(port) = u16::try_from(port) else {
            return;
        };
        if id < 0 || host.is_empty() {
            return;
        }
        if let Ok(m) = self.brokers.read() {
            if m.get(&id).is_some_and(|a| a.host == host && a.port == port) {
                return;
            }
        }
        if let Ok(mut m) = self.brokers.write() {
            tracing::info!(broker = id, addr = %format!("{host}:{port}"), "learned Kafka broker");
            m.insert(
                id,
                BrokerAddr {
                    host: host.to_owned(),
                    port,
                },
            );
        }
    }

    /// Records that topic id `id` is topic `name`.
    pub fn learn_topic(&self, id: [u8; 16], name: &str) {
        if id == [0; 16] || name.is_empty() {
            return;
        }
        if let Ok(m) = self.topics.read() {
            if m.get(&id).is_some_and(|n| &**n == name) {
                return;
            }
        }
        if let Ok(mut m) = self.topics.write() {
            m.insert(id, Arc::from(name));
        }
    }

    /// The name of the topic with id `id`, if known.
    pub fn topic_name(&self, id: &[u8; 16]) -> Option<Arc<str>> {
        self.topics.read().ok()?.get(id).cloned()
    }

    /// Learns from a Metadata response (brokers and topic ids).
    pub fn learn_metadata(&self, resp: &MetadataResponse) {
        for b in &resp.brokers {
            self.learn_broker(b.node_id.0, &b.host, b.port);
        }
        for t in &resp.topics {
            if let Some(name) = &t.name {
                self.learn_topic(*t.topic_id.as_bytes(), name);
            }
        }
    }

    /// Asks a bootstrap server for the cluster's metadata and learns from
    /// it: the brokers, and with `all_topics` the topic ids of every topic.
    /// Concurrent callers share one refresh: a caller that waited for
    /// another's refresh returns without a new one if `satisfied` holds.
    pub async fn refresh(
        &self,
        connector: &dyn Connector,
        all_topics: bool,
        timeout: Duration,
        satisfied: impl Fn(&BrokerRegistry) -> bool,
    ) -> Result<(), RefreshError> {
        let _one = self.refresh.lock().await;
        if satisfied(self) {
            return Ok(());
        }
        // At most one refresh of a kind per MIN_REFRESH_INTERVAL: what the
        // last one learned is current enough, and clients naming unknown
        // brokers or topic ids cannot turn every connection into a metadata
        // request to the cluster.
        // A kind is limited by its last attempt, failed or not (failures
        // must not turn into a stream of attempts either); a brokers-only
        // refresh is also skipped right after any successful one, which
        // learned the brokers too.
        let recent =
            |t: Option<tokio::time::Instant>| t.is_some_and(|t| t.elapsed() < MIN_REFRESH_INTERVAL);
        let last = *self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
        let skip = if all_topics {
            recent(last.every_topic_attempt)
        } else {
            recent(last.brokers_attempt) || recent(last.success)
        };
        if skip {
            return Ok(());
        }
        let result = tokio::time::timeout(timeout, self.fetch_metadata(connector, all_topics))
            .await
            .map_err(|_| RefreshError::Timeout(timeout))
            .and_then(|r| r);
        {
            let now = Some(tokio::time::Instant::now());
            let mut r = self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
            if all_topics {
                r.every_topic_attempt = now;
            } else {
                r.brokers_attempt = now;
            }
            if result.is_ok() {
                r.success = now;
            }
        }
        self.learn_metadata(&result?);
        Ok(())
    }

    async fn fetch_metadata(
        &self,
        connector: &dyn Connector,
        all_topics: bool,
    ) -> Result<MetadataResponse, RefreshError> {
        let mut last = None;
        let order = self.bootstrap_candidates();
        for (i, addr) in order.iter().enumerate() {
            match attempt(connector, addr, i + 1 < order.len()).await {
                Ok(stream) => return metadata_exchange(stream, addr, all_topics).await,
                Err(e) => last = Some(e),
            }
        }
        Err(RefreshError::Unreachable {
            tried: order
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            last: last.unwrap_or_else(|| std::io::Error::other("no bootstrap servers configured")),
        })
    }
}

const CLIENT_ID: &str = "weir-gateway";

/// Bound on connecting to one of several candidates while others remain,
/// so that one unresponsive (black-holed) server does not use up the
/// caller's whole timeout; the last candidate gets the connector's own.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to `addr`, within [`ATTEMPT_TIMEOUT`] if `more` candidates remain.
pub(crate) async fn attempt(
    connector: &dyn Connector,
    addr: &BrokerAddr,
    more: bool,
) -> std::io::Result<crate::upstream::BoxStream> {
    let connect = connector.connect(&addr.host, addr.port);
    if !more {
        return connect.await;
    }
    tokio::time::timeout(ATTEMPT_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {ATTEMPT_TIMEOUT:?}; trying the next server"),
            ))
        })
}

/// ApiVersions v0 (which every broker answers) to learn the Metadata
/// versions, then Metadata with no topics (brokers only) or all topics.
async fn metadata_exchange(
    mut stream: crate::upstream::BoxStream,
    addr: &BrokerAddr,
    all_topics: bool,
) -> Result<MetadataResponse, RefreshError> {
    let proto = |detail: String| RefreshError::Protocol {
        addr: addr.clone(),
        detail,
    };
    let io = |e: crate::error::SessionError| proto(e.to_string());

    let req = encode_request(ApiKey::ApiVersions, 0, 1, &ApiVersionsRequest::default());
    stream
        .write_all(req.wire())
        .await
        .map_err(|e| proto(e.to_string()))?;
    let mut reader = FrameReader::new(
        &mut stream,
        Side::Upstream,
        crate::frame::DEFAULT_MAX_FRAME_SIZE,
    );
    let frame = reader
        .next()
        .await
        .map_err(io)?
        .ok_or_else(|| proto("a closed connection".into()))?;
    let mut body = response_body(&frame, 0, 1).map_err(proto)?;
    let versions = ApiVersionsResponse::decode(&mut body, 0)
        .map_err(|e| proto(format!("an unreadable ApiVersions response: {e}")))?;
    let ours = <MetadataRequest as Message>::VERSIONS;
    let theirs = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Metadata as i16)
        .ok_or_else(|| proto("no Metadata API".into()))?;
    let version = theirs.max_version.min(ours.max);
    if version < theirs.min_version.max(1) {
        return Err(proto(format!(
            "Metadata versions {}-{} (the gateway needs 1-{})",
            theirs.min_version, theirs.max_version, ours.max
        )));
    }

    let mut meta = MetadataRequest::default();
    meta.topics = if all_topics { None } else { Some(Vec::new()) };
    meta.allow_auto_topic_creation = false;
    drop(reader);
    let req = encode_request(ApiKey::Metadata, version, 2, &meta);
    stream
        .write_all(req.wire())
        .await
        .map_err(|e| proto(e.to_string()))?;
    let mut reader = FrameReader::new(
        &mut stream,
        Side::Upstream,
        crate::frame::DEFAULT_MAX_FRAME_SIZE,
    );
    let frame = reader
        .next()
        .await
        .map_err(io)?
        .ok_or_else(|| proto("a closed connection".into()))?;
    let hv = ApiKey::Metadata.response_header_version(version);
    let mut body = response_body(&frame, hv, 2).map_err(proto)?;
    MetadataResponse::decode(&mut body, version)
        .map_err(|e| proto(format!("an unreadable Metadata v{version} response: {e}")))
}

/// A request frame: header (client id `weir-gateway`) and body.
pub(crate) fn encode_request<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Frame {
    let mut h = KpRequestHeader::default();
    h.request_api_key = api as i16;
    h.request_api_version = version;
    h.correlation_id = correlation_id;
    h.client_id = Some(StrBytes::from_static_str(CLIENT_ID));
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    // Encoding our own header and a well-formed body cannot fail.
    let _ = h.encode(&mut buf, api.request_header_version(version));
    let _ = body.encode(&mut buf, version);
    let size = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Frame::from_wire(buf.freeze())
}

fn response_body(frame: &Frame, header_version: i16, correlation_id: i32) -> Result<Bytes, String> {
    let (corr, at) =
        parse_response_header(frame.body(), header_version).map_err(|e| e.to_string())?;
    if corr != correlation_id {
        return Err(format!("correlation id {corr}, expected {correlation_id}"));
    }
    Ok(frame.body_bytes().slice(at..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};

    /// Counts connection attempts; every one fails.
    struct Refusing(std::sync::atomic::AtomicUsize);

    impl Connector for Refusing {
        fn connect<'a>(
            &'a self,
            _: &'a str,
            _: u16,
        ) -> crate::upstream::BoxFuture<'a, std::io::Result<crate::upstream::BoxStream>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err(std::io::Error::other("refused")) })
        }
    }

    /// Failed refreshes are limited like successful ones, per kind; a
    /// failed every-topic refresh does not hold back a brokers-only one.
    #[tokio::test(start_paused = true)]
    async fn failing_refreshes_are_limited_too() {
        let r = BrokerRegistry::new(vec![BrokerAddr {
            host: "198.18.0.9".into(),
            port: 9092,
        }]);
        let c = Refusing(std::sync::atomic::AtomicUsize::new(0));
        let t = Duration::from_secs(1);
        let attempts = || c.0.load(Ordering::SeqCst);
        assert!(r.refresh(&c, true, t, |_| false).await.is_err());
        assert_eq!(attempts(), 1);
        // Within the second: no new every-topic attempt...
        assert!(r.refresh(&c, true, t, |_| false).await.is_ok());
        assert_eq!(attempts(), 1);
        // ... but a brokers-only one still goes (nothing succeeded).
        assert!(r.refresh(&c, false, t, |_| false).await.is_err());
        assert_eq!(attempts(), 2);
        assert!(r.refresh(&c, false, t, |_| false).await.is_ok());
        assert_eq!(attempts(), 2);
        tokio::time::sleep(MIN_REFRESH_INTERVAL).await;
        assert!(r.refresh(&c, true, t, |_| false).await.is_err());
        assert_eq!(attempts(), 3);
    }

    #[test]
    fn learns_brokers_and_topic_ids() {
        let r = BrokerRegistry::new(vec![]);
        let mut resp = MetadataResponse::default();
        let mut b = MetadataResponseBroker::default();
        b.node_id = BrokerId(3);
        b.host = StrBytes::from_static_str("10.0.0.3");
        b.port = 9092;
        resp.brokers.push(b);
        let mut t = MetadataResponseTopic::default();
        t.name = Some(TopicName(StrBytes::from_static_str("orders")));
        t.topic_id = uuid::Uuid::from_bytes([7; 16]);
        resp.topics.push(t);
        r.learn_metadata(&resp);
        assert_eq!(
            r.broker(3),
            Some(BrokerAddr {
                host: "10.0.0.3".into(),
                port: 9092
            })
        );
        assert_eq!(r.broker(4), None);
        assert_eq!(r.topic_name(&[7; 16]).as_deref(), Some("orders"));
        // A moved broker is updated; invalid entries are ignored.
        r.learn_broker(3, "10.0.0.33", 9093);
        r.learn_broker(-1, "x", 1);
        r.learn_broker(5, "x", 70000);
        assert_eq!(r.brokers().len(), 1);
        assert_eq!(r.broker(3).unwrap().to_string(), "10.0.0.33:9093");
    }

    #[test]
    fn bootstrap_servers_rotate() {
        let a = |h: &str| BrokerAddr {
            host: h.into(),
            port: 1,
        };
        let r = BrokerRegistry::new(vec![a("x"), a("y")]);
        let first: Vec<String> = (0..4)
            .map(|_| r.bootstrap_order()[0].host.clone())
            .collect();
        assert_eq!(first, vec!["x", "y", "x", "y"]);
    }
}
