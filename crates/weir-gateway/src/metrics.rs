//! The gateway's Prometheus metrics. One [`Metrics`] is registered at
//! start-up and shared by every listener.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
        m
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
