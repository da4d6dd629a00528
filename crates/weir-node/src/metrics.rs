//! Prometheus metrics with Istio's names and labels, so existing dashboards
//! work. One `Metrics` is registered at start-up and passed to the proxies.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Istio's `reporter` label values.
pub const REPORTER_SOURCE: &str = "source";
pub const REPORTER_DESTINATION: &str = "destination";
/// `connection_security_policy` values.
pub const MUTUAL_TLS: &str = "mutual_tls";
pub const UNKNOWN: &str = "unknown";
/// `response_flags` values (ztunnel's): none, denied by policy, upstream connection failure.
pub const FLAG_NONE: &str = "-";
pub const FLAG_DENY: &str = "DENY";
pub const FLAG_CONNECT: &str = "CONNECT";

/// `request_protocol` of the TCP metrics.
pub const PROTOCOL_TCP: &str = "tcp";
/// The cluster of a known workload (`source_cluster`,
/// `destination_cluster`): Istio's default cluster id.
pub const CLUSTER: &str = "Kubernetes";

/// The labels of Istio's TCP metrics: Istio's standard set, as ztunnel
/// emits it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: String,
}

/// The node proxy's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    failed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    workloads: Gauge,
    active: Gauge,
}

/// The counters of one open connection, resolved once at open so that
/// forwarding only does atomic adds and an open connection holds four
/// pointers, not its label strings.
#[derive(Debug)]
pub struct ConnectionCounters {
    /// Bytes from the client to the server (Istio's "received").
    pub received: Counter,
    /// Bytes from the server to the client (Istio's "sent").
    pub sent: Counter,
    closed: Counter,
    failed: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            m.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            m.closed.clone(),
        );
        registry.register(
            "istio_tcp_connections_failed",
            "TCP connections that failed: denied by policy (response_flags DENY) or the upstream could not be reached (CONNECT)",
            m.failed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent from the server to the client",
            m.sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client by the server",
            m.received.clone(),
        );
        registry.register(
            "weir_config_reloads",
            "Configuration reloads by result (success or error; an error keeps the previous config)",
            m.reloads.clone(),
        );
        registry.register(
            "weir_node_workloads",
            "Workloads this node proxy serves",
            m.workloads.clone(),
        );
        registry.register(
            "weir_node_active_connections",
            "Connections currently proxied",
            m.active.clone(),
        );
        m
    }

    /// Records an accepted connection and returns its byte counters.
    pub fn open(&self, labels: TcpLabels) -> ConnectionCounters {
        self.opened.get_or_create(&labels).inc();
        self.active.inc();
        ConnectionCounters {
            received: self.received.get_or_create(&labels).clone(),
            sent: self.sent.get_or_create(&labels).clone(),
            closed: self.closed.get_or_create(&labels).clone(),
            failed: self.failed.get_or_create(&labels).clone(),
        }
    }

    /// Records the end of a connection opened with [`Metrics::open`].
    pub fn close(&self, c: &ConnectionCounters, failed: bool) {
        self.active.dec();
        c.closed.inc();
        if failed {
            c.failed.inc();
        }
    }

    /// Records a connection refused before any byte moved (policy denial or
    /// unreachable upstream): opened, closed and failed, with its flags.
    pub fn refused(&self, labels: &TcpLabels) {
        self.opened.get_or_create(labels).inc();
        self.closed.get_or_create(labels).inc();
        self.failed.get_or_create(labels).inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.reloads
            .get_or_create(&ReloadLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn set_workloads(&self, n: usize) {
        self.workloads.set(n as i64);
    }
}
