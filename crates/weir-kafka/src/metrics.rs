//! Kafka-level metrics: requests by API, latency, bytes and records per
//! topic, authorization denials, bad-input closes.
//!
//! | metric | labels |
//! | --- | --- |
//! | `weir_kafka_requests_total` | `api_key` (Kafka's name, e.g. `Produce`), `api_version` |
//! | `weir_kafka_request_duration_seconds` (histogram) | `api_key` |
//! | `weir_kafka_produced_bytes_total`, `weir_kafka_produced_records_total` | `topic` |
//! | `weir_kafka_fetched_bytes_total`, `weir_kafka_fetched_records_total` | `topic` |
//! | `weir_kafka_authorization_denials_total` | `topic` (the topic, or empty for other resources), `resource_type` (`topic`, `group`, `transactionalId`, `cluster`), `resource`, `principal`, `operation` |
//! | `weir_kafka_connections_closed_total` | `reason` (see [`crate::SessionError::reason`]) |
//!
//! Bytes are record-batch bytes (the records fields, batch headers
//! included); records are the batches' record counts.
//!
//! Label values come from clients, so they are bounded: a name that cannot
//! be a Kafka topic (over 249 characters or outside `[A-Za-z0-9._-]`) is
//! counted as `_invalid`; other names and principals are cut at 249
//! characters; a family holds at most [`MAX_SERIES`] label sets, past which
//! new ones are counted under `_overflow`; an API version outside what the
//! gateway knows of its API is counted as `-1`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use weir_core::kafka::{Operation, ResourceType};

use crate::records::RecordCount;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    api_key: &'static str,
    api_version: i16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api_key: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    /// The topic's name for topic resources, empty otherwise (so the metric
    /// reads "denials per topic and principal" directly).
    topic: String,
    resource_type: &'static str,
    resource: String,
    principal: String,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

type HistogramFamily = Family<ApiLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~52 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 21))
}

/// The Kafka metrics of one gateway, registered once and shared by its sessions.
#[derive(Debug)]
pub struct KafkaMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    produced_bytes: Family<TopicLabels, Counter>,
    produced_records: Family<TopicLabels, Counter>,
    fetched_bytes: Family<TopicLabels, Counter>,
    fetched_records: Family<TopicLabels, Counter>,
    denials: Family<DenialLabels, Counter>,
    closed: Family<ReasonLabels, Counter>,
    /// Label sets created in `denials`, `produced_bytes` and `fetched_bytes`
    /// (the records families follow the bytes ones).
    denial_series: AtomicUsize,
    produced_series: AtomicUsize,
    fetched_series: AtomicUsize,
}

impl KafkaMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Arc::new(Self::unregistered());
        registry.register(
            "weir_kafka_requests",
            "Kafka requests received from clients, by API key and version",
            m.requests.clone(),
        );
        registry.register(
            "weir_kafka_request_duration_seconds",
            "Time from a Kafka request's arrival to its response's delivery, by API key",
            m.duration.clone(),
        );
        registry.register(
            "weir_kafka_produced_bytes",
            "Record batch bytes produced, by topic",
            m.produced_bytes.clone(),
        );
        registry.register(
            "weir_kafka_produced_records",
            "Records produced (from batch headers), by topic",
            m.produced_records.clone(),
        );
        registry.register(
            "weir_kafka_fetched_bytes",
            "Record batch bytes fetched, by topic",
            m.fetched_bytes.clone(),
        );
        registry.register(
            "weir_kafka_fetched_records",
            "Records fetched (from batch headers), by topic",
            m.fetched_records.clone(),
        );
        registry.register(
            "weir_kafka_authorization_denials",
            "Kafka operations denied by authorization policy, by resource and principal",
            m.denials.clone(),
        );
        registry.register(
            "weir_kafka_connections_closed",
            "Kafka client connections closed by the gateway because of bad input or upstream failure, by reason",
            m.closed.clone(),
        );
        m
    }

    /// Metrics that are not exposed anywhere (tests, or no metrics wanted).
    pub fn unregistered() -> Self {
        KafkaMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            produced_bytes: Family::default(),
            produced_records: Family::default(),
            fetched_bytes: Family::default(),
            fetched_records: Family::default(),
            denials: Family::default(),
            closed: Family::default(),
            denial_series: AtomicUsize::new(0),
            produced_series: AtomicUsize::new(0),
            fetched_series: AtomicUsize::new(0),
        }
    }

    #[cfg(test)]
    pub(crate) fn request(&self, api_key: &'static str, api_version: i16) {
        self.request_counter(api_key, api_version).inc();
    }

    pub(crate) fn request_counter(&self, api_key: &'static str, api_version: i16) -> Counter {
        self.requests
            .get_or_create(&RequestLabels {
                api_key,
                api_version,
            })
            .clone()
    }

    pub(crate) fn duration(&self, api_key: &'static str) -> Histogram {
        self.duration.get_or_create(&ApiLabels { api_key }).clone()
    }

    pub(crate) fn denial(
        &self,
        resource_type: ResourceType,
        resource: &str,
        principal: &str,
        op: Operation,
    ) {
        let resource = if resource_type == ResourceType::Topic {
            topic_label(resource)
        } else {
            cut_label(resource)
        };
        let labels = DenialLabels {
            topic: if resource_type == ResourceType::Topic {
                resource.clone()
            } else {
                String::new()
            },
            resource_type: resource_type.as_str(),
            resource,
            principal: cut_label(principal),
            operation: op.as_str(),
        };
        let labels = bounded(&self.denials, &self.denial_series, labels, || {
            DenialLabels {
                topic: OVERFLOW.to_owned(),
                resource_type: resource_type.as_str(),
                resource: OVERFLOW.to_owned(),
                principal: OVERFLOW.to_owned(),
                operation: op.as_str(),
            }
        });
        self.denials.get_or_create(&labels).inc();
    }

    /// Counts a connection closed for `reason`.
    pub fn closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabels { reason }).inc();
    }

    fn topic_pair(&self, fetched: bool, topic: &str) -> TopicCounters {
        let (b, r, series) = if fetched {
            (
                &self.fetched_bytes,
                &self.fetched_records,
                &self.fetched_series,
            )
        } else {
            (
                &self.produced_bytes,
                &self.produced_records,
                &self.produced_series,
            )
        };
        let l = bounded(
            b,
            series,
            TopicLabels {
                topic: topic_label(topic),
            },
            || TopicLabels {
                topic: OVERFLOW.to_owned(),
            },
        );
        TopicCounters {
            bytes: b.get_or_create(&l).clone(),
            records: r.get_or_create(&l).clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct TopicCounters {
    bytes: Counter,
    records: Counter,
}

const TOPIC_CACHE_LIMIT: usize = 1024;

/// Most label sets one per-topic or per-principal family holds.
pub const MAX_SERIES: usize = 10_000;

/// Kafka's longest topic name; also where other client-given label values
/// are cut.
const MAX_LABEL: usize = 249;

const INVALID: &str = "_invalid";
const OVERFLOW: &str = "_overflow";

/// A topic name as a label: itself when Kafka could have such a topic.
fn topic_label(name: &str) -> String {
    let valid = !name.is_empty()
        && name.len() <= MAX_LABEL
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        name.to_owned()
    } else {
        INVALID.to_owned()
    }
}

/// Any other client-given value (a group, a transactional id, a principal),
/// cut at [`MAX_LABEL`] characters.
fn cut_label(value: &str) -> String {
    match value.char_indices().nth(MAX_LABEL) {
        Some((end, _)) => value[..end].to_owned(),
        None => value.to_owned(),
    }
}

/// `labels`, or `overflow()` when `family` holds [`MAX_SERIES`] label sets
/// (counted in `series`) and not these.
fn bounded<S, M, C>(
    family: &Family<S, M, C>,
    series: &AtomicUsize,
    labels: S,
    overflow: impl FnOnce() -> S,
) -> S
where
    S: Clone + std::hash::Hash + Eq,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    if family.get(&labels).is_some() {
        return labels;
    }
    // Two sessions adding the same set at once count it twice: the bound
    // errs on the small side.
    if series.fetch_add(1, Ordering::Relaxed) < MAX_SERIES {
        labels
    } else {
        series.fetch_sub(1, Ordering::Relaxed);
        overflow()
    }
}

/// A session's handles to per-topic counters, so the data path does a hash
/// lookup and two atomic adds, not a label-set lookup under a lock.
pub(crate) struct TopicMeter {
    metrics: Arc<KafkaMetrics>,
    fetched: bool,
    cache: HashMap<Box<str>, TopicCounters>,
    durations: HashMap<&'static str, Histogram>,
    requests: HashMap<(&'static str, i16), Counter>,
}

impl TopicMeter {
    pub(crate) fn produced(metrics: Arc<KafkaMetrics>) -> Self {
        TopicMeter {
            metrics,
            fetched: false,
            cache: HashMap::new(),
            durations: HashMap::new(),
            requests: HashMap::new(),
        }
    }

    pub(crate) fn fetched(metrics: Arc<KafkaMetrics>) -> Self {
        TopicMeter {
            fetched: true,
            ..TopicMeter::produced(metrics)
        }
    }

    pub(crate) fn add(&mut self, topic: &str, count: RecordCount) {
        if count.bytes == 0 && count.records == 0 {
            return;
        }
        if let Some(c) = self.cache.get(topic) {
            c.bytes.inc_by(count.bytes);
            c.records.inc_by(count.records);
            return;
        }
        if self.cache.len() >= TOPIC_CACHE_LIMIT {
            self.cache.clear();
        }
        let c = self.metrics.topic_pair(self.fetched, topic);
        c.bytes.inc_by(count.bytes);
        c.records.inc_by(count.records);
        self.cache.insert(Box::from(topic), c);
    }

    /// The metrics this meter counts into.
    pub(crate) fn metrics(&self) -> &KafkaMetrics {
        &self.metrics
    }

    /// Counts a request (handles cached per (API key, version)).
    pub(crate) fn request(&mut self, api_key: &'static str, api_version: i16) {
        let metrics = &self.metrics;
        self.requests
            .entry((api_key, api_version))
            .or_insert_with(|| metrics.request_counter(api_key, api_version))
            .inc();
    }

    pub(crate) fn observe_duration(&mut self, api_key: &'static str, seconds: f64) {
        let metrics = &self.metrics;
        self.durations
            .entry(api_key)
            .or_insert_with(|| metrics.duration(api_key))
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn client_given_label_values_are_bounded() {
        let mut reg = Registry::default();
        let m = KafkaMetrics::register(&mut reg);
        let long = "t".repeat(MAX_LABEL + 1);
        for name in [long.as_str(), "a/b", ""] {
            m.denial(ResourceType::Topic, name, "p", Operation::Read);
        }
        m.denial(
            ResourceType::Group,
            &"g".repeat(1000),
            &"p".repeat(1000),
            Operation::Read,
        );
        let mut meter = TopicMeter::produced(m.clone());
        meter.add(
            &long,
            RecordCount {
                records: 1,
                bytes: 10,
            },
        );
        // Past MAX_SERIES label sets, new ones share one.
        for i in 0..MAX_SERIES + 5 {
            m.denial(ResourceType::Topic, &format!("t{i}"), "p", Operation::Write);
        }
        let mut text = String::new();
        encode(&mut text, &reg).unwrap();
        let denials: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("weir_kafka_authorization_denials_total{"))
            .collect();
        assert!(denials.len() <= MAX_SERIES + 1, "{}", denials.len());
        assert!(text.contains(r#"weir_kafka_authorization_denials_total{topic="_invalid",resource_type="topic",resource="_invalid",principal="p",operation="Read"} 3"#), "{text}");
        assert!(text.contains(r#"weir_kafka_produced_bytes_total{topic="_invalid"} 10"#));
        assert!(text.contains(&format!("resource=\"{}\"", "g".repeat(MAX_LABEL))));
        assert!(!text.contains(&"g".repeat(MAX_LABEL + 1)));
        assert!(text.contains(r#"topic="_overflow",resource_type="topic",resource="_overflow",principal="_overflow",operation="Write"}"#), "no overflow series");
        // A label set seen before the family filled up still counts as itself.
        m.denial(ResourceType::Topic, "t0", "p", Operation::Write);
        let mut text = String::new();
        encode(&mut text, &reg).unwrap();
        assert!(text.contains(
            r#"{topic="t0",resource_type="topic",resource="t0",principal="p",operation="Write"} 2"#
        ));
    }

    #[test]
    fn names_and_labels_as_documented() {
        let mut reg = Registry::default();
        let m = KafkaMetrics::register(&mut reg);
        m.request("Produce", 9);
        m.denial(
            ResourceType::Topic,
            "secret",
            "spiffe://td/ns/a/sa/b",
            Operation::Write,
        );
        m.closed("frame_too_large");
        let mut meter = TopicMeter::produced(m.clone());
        meter.add(
            "orders",
            RecordCount {
                records: 3,
                bytes: 100,
            },
        );
        meter.add(
            "orders",
            RecordCount {
                records: 2,
                bytes: 50,
            },
        );
        meter.observe_duration("Produce", 0.001);
        let mut fetched = TopicMeter::fetched(m.clone());
        fetched.add(
            "orders",
            RecordCount {
                records: 5,
                bytes: 150,
            },
        );
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        for line in [
            r#"weir_kafka_requests_total{api_key="Produce",api_version="9"} 1"#,
            r#"weir_kafka_produced_bytes_total{topic="orders"} 150"#,
            r#"weir_kafka_produced_records_total{topic="orders"} 5"#,
            r#"weir_kafka_fetched_bytes_total{topic="orders"} 150"#,
            r#"weir_kafka_fetched_records_total{topic="orders"} 5"#,
            r#"weir_kafka_authorization_denials_total{topic="secret",resource_type="topic",resource="secret",principal="spiffe://td/ns/a/sa/b",operation="Write"} 1"#,
            r#"weir_kafka_connections_closed_total{reason="frame_too_large"} 1"#,
            r#"weir_kafka_request_duration_seconds_count{api_key="Produce"} 1"#,
        ] {
            assert!(out.contains(line), "missing {line} in\n{out}");
        }
    }
}
