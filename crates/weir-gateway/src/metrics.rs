//! The gateway's Prometheus metrics. One [`Metrics`] is registered at
//! start-up and shared by every listener.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weir_core::config::{Config, Endpoint, Workload};
use weir_core::SpiffeId;
use weir_node::metrics::{TcpLabels, CLUSTER, FLAG_NONE, MUTUAL_TLS, PROTOCOL_TCP, UNKNOWN};

use crate::upstream::Connected;

/// `weir_gateway_connections_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// The listener's port.
    pub listener: String,
    /// `namespace/virtualservice#tls[i]` (or `#tcp[i]`), or the extension
    /// listener's name.
    pub route: String,
    /// `PASSTHROUGH`, `SIMPLE`, `MUTUAL`, `ISTIO_MUTUAL` or `TCP`.
    pub mode: String,
}

/// Byte counter labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: String,
    pub route: String,
}

/// `weir_gateway_connection_errors_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub listener: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: String,
}

/// The gateway's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: Family<ConnectionLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    sent: Family<RouteLabels, Counter>,
    received: Family<RouteLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    active: Gauge,
    listeners: Gauge,
    /// Istio's TCP metrics, reported as an Istio ingress gateway reports
    /// them (`reporter="source"`), for routed connections.
    istio_opened: Family<TcpLabels, Counter>,
    istio_closed: Family<TcpLabels, Counter>,
    istio_sent: Family<TcpLabels, Counter>,
    istio_received: Family<TcpLabels, Counter>,
}

/// Istio's counters of one routed connection: opened when it is routed,
/// closed and its bytes added when it ends.
#[derive(Debug)]
pub struct IstioCounters {
    closed: Counter,
    sent: Counter,
    received: Counter,
}

impl IstioCounters {
    /// The connection ended after `received` bytes from the client and
    /// `sent` to it.
    pub fn close(self, received: u64, sent: u64) {
        self.closed.inc();
        self.received.inc_by(received);
        self.sent.inc_by(sent);
    }
}

/// Istio's labels for a connection the gateway (identity `gateway`) routed
/// to `upstream`, as an ingress gateway reports it: the gateway is the
/// source (its workload and canonical service named after its service
/// account, like `istio-ingressgateway`), the endpoint's Workload the
/// destination.
pub fn istio_labels(config: &Config, gateway: &SpiffeId, upstream: &Connected) -> TcpLabels {
    let s = |v: &str| v.to_owned();
    let dst: Option<&Workload> = match &upstream.endpoint {
        Endpoint::Workload {
            namespace, name, ..
        } => config.workload(namespace, name),
        _ => None,
    };
    let mesh = upstream.is_mesh();
    let or_unknown = |v: Option<&str>| v.unwrap_or(UNKNOWN).to_owned();
    let service = upstream.service.as_ref();
    TcpLabels {
        reporter: s("source"),
        source_workload: s(gateway.service_account()),
        source_canonical_service: s(gateway.service_account()),
        source_canonical_revision: s("latest"),
        source_workload_namespace: s(gateway.namespace()),
        source_principal: if mesh {
            gateway.to_string()
        } else {
            s(UNKNOWN)
        },
        source_app: s(UNKNOWN),
        source_version: s(UNKNOWN),
        source_cluster: s(CLUSTER),
        destination_service: or_unknown(service.map(|x| x.0.as_str())),
        destination_service_namespace: or_unknown(service.map(|x| x.2.as_str())),
        destination_service_name: or_unknown(service.map(|x| x.1.as_str())),
        destination_workload: or_unknown(dst.map(|w| w.workload_name())),
        destination_canonical_service: or_unknown(dst.map(|w| w.canonical_service())),
        destination_canonical_revision: or_unknown(dst.map(|w| w.canonical_revision())),
        destination_workload_namespace: or_unknown(dst.map(|w| w.namespace())),
        destination_principal: match (&upstream.endpoint, mesh) {
            (Endpoint::Workload { identity, .. }, true) => identity.to_string(),
            _ => s(UNKNOWN),
        },
        destination_app: or_unknown(dst.map(|w| w.canonical_service())),
        destination_version: or_unknown(dst.map(|w| w.canonical_revision())),
        destination_cluster: s(if dst.is_some() { CLUSTER } else { UNKNOWN }),
        request_protocol: s(PROTOCOL_TCP),
        response_flags: s(FLAG_NONE),
        connection_security_policy: s(if mesh { MUTUAL_TLS } else { UNKNOWN }),
    }
}

/// The byte counters of one routed connection.
#[derive(Debug, Clone)]
pub struct RouteCounters {
    /// Client → upstream bytes.
    pub received: Counter,
    /// Upstream → client bytes.
    pub sent: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "weir_gateway_connections",
            "Connections routed by the gateway, by listener port, route and TLS mode",
            m.connections.clone(),
        );
        registry.register(
            "weir_gateway_connection_errors",
            "Connections the gateway closed without routing them, by listener port and reason",
            m.errors.clone(),
        );
        registry.register(
            "weir_gateway_sent_bytes",
            "Bytes sent to clients (upstream to client), by listener port and route",
            m.sent.clone(),
        );
        registry.register(
            "weir_gateway_received_bytes",
            "Bytes received from clients (client to upstream), by listener port and route",
            m.received.clone(),
        );
        registry.register(
            "weir_config_reloads",
            "Configuration reloads by result (success or error; an error keeps the previous config)",
            m.reloads.clone(),
        );
        registry.register(
            "weir_gateway_active_connections",
            "Connections currently open through the gateway",
            m.active.clone(),
        );
        registry.register(
            "weir_gateway_listeners",
            "Ports the gateway listens on",
            m.listeners.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections the gateway routed (Istio's metric, reporter source)",
            m.istio_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "Routed TCP connections that ended (Istio's metric, reporter source)",
            m.istio_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Response bytes (upstream to client) of routed connections, counted when they end (Istio's metric)",
            m.istio_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Request bytes (client to upstream) of routed connections, counted when they end (Istio's metric)",
            m.istio_received.clone(),
        );
        m
    }

    /// Counts a routed connection in Istio's metrics.
    pub fn istio_open(&self, labels: &TcpLabels) -> IstioCounters {
        self.istio_opened.get_or_create(labels).inc();
        IstioCounters {
            closed: self.istio_closed.get_or_create(labels).clone(),
            sent: self.istio_sent.get_or_create(labels).clone(),
            received: self.istio_received.get_or_create(labels).clone(),
        }
    }

    /// Counts a connection that failed with `reason` on `listener`.
    pub fn error(&self, listener: u16, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                listener: listener.to_string(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The value of an error counter (tests, admin).
    pub fn errors(&self, listener: u16, reason: &str) -> u64 {
        self.errors
            .get_or_create(&ErrorLabels {
                listener: listener.to_string(),
                reason: reason.to_owned(),
            })
            .get()
    }

    /// Counts a routed connection and returns its byte counters.
    pub fn connection(&self, listener: u16, route: &str, mode: &str) -> RouteCounters {
        self.connections
            .get_or_create(&ConnectionLabels {
                listener: listener.to_string(),
                route: route.to_owned(),
                mode: mode.to_owned(),
            })
            .inc();
        let labels = RouteLabels {
            listener: listener.to_string(),
            route: route.to_owned(),
        };
        RouteCounters {
            received: self.received.get_or_create(&labels).clone(),
            sent: self.sent.get_or_create(&labels).clone(),
        }
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                result: if ok { "success" } else { "error" }.to_owned(),
            })
            .inc();
    }

    pub fn set_listeners(&self, n: usize) {
        self.listeners.set(n as i64);
    }

    /// Marks a connection open until the guard drops.
    pub fn active(&self) -> ActiveGuard {
        self.active.inc();
        ActiveGuard(self.active.clone())
    }
}

/// Decrements `weir_gateway_active_connections` on drop.
#[derive(Debug)]
pub struct ActiveGuard(Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
