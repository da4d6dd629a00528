//! Prometheus metrics of the Kubernetes source.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A `kind` label: a config kind (`AuthorizationPolicy`, `Workload`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The kind.
    pub kind: String,
}

/// The Kubernetes source's metrics.
#[derive(Debug, Clone, Default)]
pub struct KubeMetrics {
    invalid_resources: Family<KindLabels, Gauge>,
    watch_errors: Family<KindLabels, Counter>,
    snapshots: Counter,
    objects: Gauge,
}

impl KubeMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        m.register_in(registry);
        m
    }

    /// Registers these (already created, possibly in use) metrics in
    /// `registry`: clones share their values.
    pub fn register_in(&self, registry: &mut Registry) {
        let m = self;
        registry.register(
            "weir_config_invalid_resources",
            "Cluster resources left out of the served config because they are invalid, by kind (the log has each one's error, as `weir check` prints it)",
            m.invalid_resources.clone(),
        );
        registry.register(
            "weir_kube_watch_errors",
            "Failed list or watch calls to the Kubernetes API, by watched kind (retried with backoff)",
            m.watch_errors.clone(),
        );
        registry.register(
            "weir_kube_snapshots",
            "Config snapshots built from the cluster and handed to the control plane",
            m.snapshots.clone(),
        );
        registry.register(
            "weir_kube_objects",
            "Objects in the last served snapshot (Workloads from Pods, Services, Istio and weir resources)",
            m.objects.clone(),
        );
    }

    /// Sets the invalid count of `kind`.
    pub(crate) fn set_invalid(&self, kind: &str, n: usize) {
        self.invalid_resources
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The invalid count of `kind` (for tests and the admin page).
    pub fn invalid(&self, kind: &str) -> i64 {
        self.invalid_resources
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .get()
    }

    pub(crate) fn watch_error(&self, kind: &str) {
        self.watch_errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub(crate) fn snapshot(&self, objects: usize) {
        self.snapshots.inc();
        self.objects.set(i64::try_from(objects).unwrap_or(i64::MAX));
    }
}
