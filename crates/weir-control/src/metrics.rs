//! Prometheus metrics of the control plane ([`ControlMetrics`]) and of its
//! client in node proxies and gateways ([`ClientMetrics`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The outcome.
    pub result: String,
}

fn result(r: &str) -> ResultLabels {
    ResultLabels {
        result: r.to_owned(),
    }
}

/// `weir_control_csr_total` results.
pub mod csr {
    /// Signed.
    pub const SIGNED: &str = "signed";
    /// Refused: the identity does not belong to the caller (PERMISSION_DENIED).
    pub const DENIED: &str = "denied";
    /// Refused: bad credentials (UNAUTHENTICATED).
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    /// Refused: a malformed request (INVALID_ARGUMENT).
    pub const INVALID: &str = "invalid";
    /// Failed on the control plane's side.
    pub const ERROR: &str = "error";
}

/// The control plane's metrics.
#[derive(Debug, Clone, Default)]
pub struct ControlMetrics {
    csr: Family<ResultLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    invalid_documents: Counter,
    pushes: Counter,
    push_bytes: Counter,
    subscribers: Gauge,
    objects: Gauge,
    version: Gauge,
}

impl ControlMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "weir_control_csr",
            "Certificate signing requests by result (signed, denied, unauthenticated, invalid, error)",
            m.csr.clone(),
        );
        registry.register(
            "weir_config_reloads",
            "Config source changes by result (success, or error: the last good config stays)",
            m.reloads.clone(),
        );
        registry.register(
            "weir_control_invalid_documents",
            "Config documents a skipping source (cluster mode) left out while the rest is served, counted when each becomes invalid (the log has its error)",
            m.invalid_documents.clone(),
        );
        registry.register(
            "weir_control_pushes",
            "Config updates queued to node proxies and gateways",
            m.pushes.clone(),
        );
        registry.register(
            "weir_control_push_bytes",
            "Encoded size of the config updates queued",
            m.push_bytes.clone(),
        );
        registry.register(
            "weir_control_subscribers",
            "Node proxies and gateways with an open config stream",
            m.subscribers.clone(),
        );
        registry.register(
            "weir_control_objects",
            "Config objects served",
            m.objects.clone(),
        );
        registry.register(
            "weir_control_config_version",
            "The config version served",
            m.version.clone(),
        );
        m
    }

    /// Counts a CSR outcome (see [`csr`]).
    pub fn csr(&self, outcome: &str) {
        self.csr.get_or_create(&result(outcome)).inc();
    }

    /// Counts a config source change.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&result(if ok { "success" } else { "error" }))
            .inc();
    }

    /// Counts documents left out.
    pub fn invalid_documents(&self, n: usize) {
        self.invalid_documents.inc_by(n as u64);
    }

    /// Records a push.
    pub fn pushed(&self, messages: usize, bytes: usize) {
        self.pushes.inc_by(messages as u64);
        self.push_bytes.inc_by(bytes as u64);
    }

    /// Sets the gauges.
    pub fn state(&self, subscribers: usize, objects: usize, version: u64) {
        self.subscribers.set(subscribers as i64);
        self.objects.set(objects as i64);
        self.version.set(i64::try_from(version).unwrap_or(i64::MAX));
    }
}

/// The metrics of a node proxy's (or gateway's) control-plane client.
#[derive(Debug, Clone, Default)]
pub struct ClientMetrics {
    connected: Gauge,
    updates: Family<ResultLabels, Counter>,
    csr: Family<ResultLabels, Counter>,
}

impl ClientMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "weir_control_connected",
            "1 while the config stream from the control plane is up",
            m.connected.clone(),
        );
        registry.register(
            "weir_control_updates",
            "Config updates from the control plane by result (applied, or rejected: the last good config stays)",
            m.updates.clone(),
        );
        registry.register(
            "weir_control_certificate_requests",
            "Certificate signing requests sent to the control plane by result (signed, or error)",
            m.csr.clone(),
        );
        m
    }

    /// Sets the connected gauge.
    pub fn connected(&self, up: bool) {
        self.connected.set(i64::from(up));
    }

    /// Whether the gauge says connected.
    pub fn is_connected(&self) -> bool {
        self.connected.get() == 1
    }

    /// Counts an update.
    pub fn update(&self, applied: bool) {
        self.updates
            .get_or_create(&result(if applied { "applied" } else { "rejected" }))
            .inc();
    }

    /// Counts a CSR.
    pub fn certificate_request(&self, signed: bool) {
        self.csr
            .get_or_create(&result(if signed { "signed" } else { "error" }))
            .inc();
    }
}
