//! The Kubernetes source: watches the cluster and produces whole config
//! [`Snapshot`]s.
//!
//! Watched (cluster-wide, with kube-runtime watchers, each retried with
//! backoff): Namespaces (their labels enroll Pods), Pods (→ Workloads,
//! [`crate::workload`]), Services (→ weir Services, [`crate::service`]), the
//! Istio kinds weir supports ([`ISTIO_KINDS`]) and weir's own kinds
//! ([`WEIR_KINDS`], the CRDs `weir crds` prints).
//!
//! Every object becomes one YAML document loaded with weir's strict loader
//! ([`crate::document`]); an invalid one is left out, counted in
//! `weir_config_invalid_resources{kind}` and handed on in the snapshot's
//! `invalid` list (the control plane logs each, with the message `weir
//! check` prints for the same YAML, when it first appears), and the rest is
//! served.
//!
//! The first snapshot is built once every kind has been listed, so a node
//! never gets a config with, say, its DENY policies missing. A kind the
//! cluster does not serve (404: the Istio or weir CRDs are not installed;
//! for an Istio kind, at neither `v1` nor `v1beta1`) counts as listed and
//! empty, since no such object can exist; it is watched on, so installing
//! the CRD later works. Any other failure (403:
//! the ServiceAccount lacks RBAC; the API server unreachable) holds the
//! first snapshot back and, later, keeps the last listed state of that kind
//! while the watch is retried. Changes are batched: a snapshot is built at
//! most `debounce` after the first change, and only handed out if it
//! differs from the last one.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Pod, PodCondition, PodSpec, PodStatus,
    Service as KubeService,
};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_core::config::{DocumentRef, SourceFile, POD_UID_ANNOTATION};
use weir_core::{Config, ConfigError, MeshSettings};

use crate::document;
use crate::metrics::KubeMetrics;
use crate::service::service_from_kube;
use crate::workload::{workload_from_pod, SIDECAR_STATUS_ANNOTATION};

/// A custom resource kind the source watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomKind {
    /// API group, e.g. `security.istio.io`.
    pub group: &'static str,
    /// The version watched, e.g. `v1`.
    pub version: &'static str,
    /// An older version watched instead while the cluster does not serve
    /// `version` (e.g. `v1beta1`: Istio before 1.22 serves no `v1`).
    pub fallback: Option<&'static str>,
    /// The kind, e.g. `AuthorizationPolicy`.
    pub kind: &'static str,
    /// The resource's plural, e.g. `authorizationpolicies`.
    pub plural: &'static str,
}

impl CustomKind {
    /// `group/version`, for `version`.
    fn api_version_at(&self, version: &str) -> Arc<str> {
        format!("{}/{version}", self.group).into()
    }

    /// The kube-rs description of the resource.
    pub fn api_resource(&self) -> ApiResource {
        self.api_resource_at(self.version)
    }

    /// The kube-rs description of the resource at `version`.
    fn api_resource_at(&self, version: &str) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, version, self.kind),
            self.plural,
        )
    }
}

const fn kind(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
) -> CustomKind {
    CustomKind {
        group,
        version,
        fallback: None,
        kind,
        plural,
    }
}

/// An Istio kind: `v1`, or `v1beta1` on a cluster without `v1`.
const fn istio(group: &'static str, kind: &'static str, plural: &'static str) -> CustomKind {
    CustomKind {
        group,
        version: "v1",
        fallback: Some("v1beta1"),
        kind,
        plural,
    }
}

/// The Istio kinds weir supports, watched at `v1` (served by Istio 1.22 and
/// later), or at `v1beta1` where the cluster serves no `v1` (older Istio).
pub const ISTIO_KINDS: [CustomKind; 6] = [
    istio(
        "security.istio.io",
        "PeerAuthentication",
        "peerauthentications",
    ),
    istio(
        "security.istio.io",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    istio("networking.istio.io", "Gateway", "gateways"),
    istio("networking.istio.io", "VirtualService", "virtualservices"),
    istio("networking.istio.io", "ServiceEntry", "serviceentries"),
    istio("networking.istio.io", "DestinationRule", "destinationrules"),
];

/// weir's own kinds, served by the CRDs `weir crds` prints.
pub const WEIR_KINDS: [CustomKind; 4] = [
    kind("weir.dev", "v1alpha1", "Workload", "workloads"),
    kind("weir.dev", "v1alpha1", "Service", "services"),
    kind("weir.dev", "v1alpha1", "KafkaGateway", "kafkagateways"),
    kind(
        "weir.dev",
        "v1alpha1",
        "KafkaAuthorizationPolicy",
        "kafkaauthorizationpolicies",
    ),
];

/// How the source runs.
#[derive(Debug, Clone)]
pub struct KubeSourceOptions {
    /// Mesh settings the documents are validated with.
    pub settings: MeshSettings,
    /// Longest wait between a change and the snapshot that includes it.
    pub debounce: Duration,
    /// The custom kinds watched (default: [`ISTIO_KINDS`] and [`WEIR_KINDS`]).
    pub custom_kinds: Vec<CustomKind>,
}

impl Default for KubeSourceOptions {
    fn default() -> Self {
        Self {
            settings: MeshSettings::default(),
            debounce: Duration::from_millis(100),
            custom_kinds: ISTIO_KINDS.iter().chain(&WEIR_KINDS).copied().collect(),
        }
    }
}

/// One state of the cluster's config.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The valid objects, one document per source, sorted by name
    /// (`kubernetes:<Kind>[.<group>]/<namespace>/<name>`); they load
    /// together into `config`.
    pub sources: Vec<SourceFile>,
    /// The config of `sources`.
    pub config: Arc<Config>,
    /// The errors of the objects left out.
    pub invalid: Vec<ConfigError>,
    /// Counts snapshots from 1.
    pub generation: u64,
}

/// A running Kubernetes source. Dropping it stops the watches.
#[derive(Debug)]
pub struct KubeSource {
    rx: watch::Receiver<Option<Arc<Snapshot>>>,
    task: JoinHandle<()>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeSource {
    /// Starts watching the cluster `client` talks to. Needs a Tokio runtime.
    pub fn start(client: Client, options: KubeSourceOptions, metrics: KubeMetrics) -> Self {
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(run(client, options, metrics, tx));
        Self { rx, task }
    }

    /// Waits for a snapshot newer than the last one returned (the first
    /// call waits for the initial one). `None`: the source stopped.
    pub async fn next(&mut self) -> Option<Arc<Snapshot>> {
        loop {
            self.rx.changed().await.ok()?;
            if let Some(s) = self.rx.borrow_and_update().clone() {
                return Some(s);
            }
        }
    }

    /// The latest snapshot, if there is one yet.
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.rx.borrow().clone()
    }
}

type Key = (String, String);

fn key<K: kube::Resource>(k: &K) -> Key {
    let m = k.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    /// Not listed yet.
    No,
    Yes,
    /// The cluster does not serve this kind: listed and empty.
    NotServed,
}

/// The objects of one kind, as last listed and watched.
struct Store<T> {
    name: String,
    items: BTreeMap<Key, T>,
    relist: Option<BTreeMap<Key, T>>,
    listed: Listed,
}

impl<T> Store<T> {
    fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            items: BTreeMap::new(),
            relist: None,
            listed: Listed::No,
        }
    }

    /// Applies a watch event; whether the served objects may have changed.
    fn apply<K: kube::Resource>(&mut self, event: Event<K>, convert: impl Fn(K) -> T) -> bool {
        match event {
            Event::Apply(k) => {
                self.items.insert(key(&k), convert(k));
                true
            }
            Event::Delete(k) => self.items.remove(&key(&k)).is_some(),
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(k) => {
                if let Some(r) = &mut self.relist {
                    r.insert(key(&k), convert(k));
                }
                false
            }
            Event::InitDone => {
                if let Some(r) = self.relist.take() {
                    self.items = r;
                }
                self.listed = Listed::Yes;
                true
            }
        }
    }

    /// Handles a failed list or watch; whether the served objects changed.
    fn fail(&mut self, e: &watcher::Error, metrics: &KubeMetrics) -> bool {
        if not_served(e) {
            if self.listed == Listed::NotServed {
                return false;
            }
            tracing::info!(
                kind = %self.name,
                "the cluster does not serve {} (CRD not installed?): treated as empty until it does",
                self.name
            );
            self.items.clear();
            self.relist = None;
            self.listed = Listed::NotServed;
            return true;
        }
        metrics.watch_error(&self.name);
        let hint = if forbidden(e) {
            format!(
                ": the control plane's ServiceAccount needs get, list and watch on {} (the Helm chart's ClusterRole grants them)",
                self.name
            )
        } else {
            String::new()
        };
        if self.listed == Listed::No {
            tracing::warn!(kind = %self.name, error = %e, "cannot list {}{hint}; the first config waits for it, retrying with backoff", self.name);
        } else {
            tracing::warn!(kind = %self.name, error = %e, "watching {} failed{hint}; serving what was last listed, retrying with backoff", self.name);
        }
        false
    }
}

fn api_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(r))
        | watcher::Error::WatchStartFailed(kube::Error::Api(r))
        | watcher::Error::WatchFailed(kube::Error::Api(r)) => Some(r.code),
        watcher::Error::WatchError(r) => Some(r.code),
        _ => None,
    }
}

fn not_served(e: &watcher::Error) -> bool {
    api_code(e) == Some(404)
}

fn forbidden(e: &watcher::Error) -> bool {
    api_code(e) == Some(403)
}

/// Keeps what Pod → Workload and Service port resolution read, so that
/// 10 000 Pods do not hold their managed fields, conditions and
/// container statuses in memory.
#[cfg(test)]
pub(crate) fn prune_pod_for_test(pod: Pod) -> Pod {
    prune_pod(pod)
}

fn prune_pod(pod: Pod) -> Pod {
    let mut metadata = pod.metadata;
    metadata.managed_fields = None;
    // Only the controller: it names the workload (workload_from_pod).
    metadata.owner_references = metadata
        .owner_references
        .map(|o| {
            o.into_iter()
                .filter(|r| r.controller == Some(true))
                .collect::<Vec<_>>()
        })
        .filter(|o| !o.is_empty());
    metadata.annotations = metadata
        .annotations
        .map(|a| {
            a.into_iter()
                .filter(|(k, _)| k == SIDECAR_STATUS_ANNOTATION)
                .collect::<BTreeMap<_, _>>()
        })
        .filter(|a| !a.is_empty());
    let spec = pod.spec.map(|s| PodSpec {
        service_account_name: s.service_account_name,
        node_name: s.node_name,
        host_network: s.host_network,
        containers: s
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|p| ContainerPort {
                            name: p.name,
                            container_port: p.container_port,
                            protocol: p.protocol,
                            ..ContainerPort::default()
                        })
                        .collect()
                }),
                ..Container::default()
            })
            .collect(),
        ..PodSpec::default()
    });
    let status = pod.status.map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        // Only the Ready condition (readiness), without its timestamps and
        // messages: the rest changes often and means nothing to weir.
        conditions: s
            .conditions
            .map(|c| {
                c.into_iter()
                    .filter(|c| c.type_ == "Ready")
                    .map(|c| PodCondition {
                        type_: c.type_,
                        status: c.status,
                        ..PodCondition::default()
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|c| !c.is_empty()),
        ..PodStatus::default()
    });
    Pod {
        metadata,
        spec,
        status,
    }
}

fn prune_service(mut svc: KubeService) -> KubeService {
    svc.metadata.managed_fields = None;
    svc.metadata.annotations = None;
    svc.status = None;
    svc
}

enum Update {
    Namespace(Result<Event<Namespace>, watcher::Error>),
    // Boxed: a Pod or Service event is far larger than the others.
    Pod(Box<Result<Event<Pod>, watcher::Error>>),
    Service(Box<Result<Event<KubeService>, watcher::Error>>),
    /// Of the `i`th custom kind, watched at `api_version`.
    Custom {
        i: usize,
        api_version: Arc<str>,
        result: Result<Event<DynamicObject>, watcher::Error>,
    },
}

struct State {
    options: KubeSourceOptions,
    metrics: KubeMetrics,
    namespaces: Store<BTreeMap<String, String>>,
    pods: Store<Pod>,
    services: Store<KubeService>,
    custom: Vec<(CustomKind, Store<serde_json::Value>)>,
    /// The errors last logged, so each is logged once, when it appears.
    reported: BTreeSet<String>,
    /// Kinds with invalid resources in the last snapshot (their gauges are
    /// reset to 0 when they have none).
    invalid_kinds: BTreeSet<String>,
    last: Option<Arc<Snapshot>>,
}

impl State {
    fn handle(&mut self, update: Update) -> bool {
        let metrics = &self.metrics;
        match update {
            Update::Namespace(Ok(e)) => self
                .namespaces
                .apply(e, |n: Namespace| n.metadata.labels.unwrap_or_default()),
            Update::Namespace(Err(e)) => self.namespaces.fail(&e, metrics),
            Update::Pod(r) => match *r {
                Ok(e) => self.pods.apply(e, prune_pod),
                Err(e) => self.pods.fail(&e, metrics),
            },
            Update::Service(r) => match *r {
                Ok(e) => self.services.apply(e, prune_service),
                Err(e) => self.services.fail(&e, metrics),
            },
            Update::Custom {
                i,
                api_version,
                result,
            } => {
                let Some((kind, store)) = self.custom.get_mut(i) else {
                    return false;
                };
                match result {
                    Ok(e) => store.apply(e, |o: DynamicObject| {
                        document::custom_resource(&api_version, kind.kind, &o)
                    }),
                    Err(e) => store.fail(&e, metrics),
                }
            }
        }
    }

    fn listed(&self) -> bool {
        let done = |l: Listed| l != Listed::No;
        done(self.namespaces.listed)
            && done(self.pods.listed)
            && done(self.services.listed)
            && self.custom.iter().all(|(_, s)| done(s.listed))
    }

    /// Every object's document, sorted by source name.
    fn sources(&self) -> Vec<SourceFile> {
        let no_labels = BTreeMap::new();
        let mut sources = Vec::new();
        for ((ns, name), pod) in &self.pods.items {
            let ns_labels = self
                .namespaces
                .items
                .get(&(String::new(), ns.clone()))
                .unwrap_or(&no_labels);
            if let Ok(w) = workload_from_pod(pod, ns_labels) {
                sources.push(document::source(
                    document::source_name("Pod", "", ns, name),
                    &document::workload(&w),
                ));
            }
        }
        for ((ns, name), svc) in &self.services.items {
            let pods = self
                .pods
                .items
                .range((ns.clone(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, p)| p);
            match service_from_kube(svc, pods) {
                Ok((s, dropped)) => {
                    if !dropped.is_empty() {
                        tracing::debug!(service = %format!("{ns}/{name}"), "ports left out: {}", dropped.join("; "));
                    }
                    sources.push(document::source(
                        document::source_name("Service", "", ns, name),
                        &document::service(&s),
                    ));
                }
                Err(skip) => {
                    tracing::debug!(service = %format!("{ns}/{name}"), "not a weir Service: {skip}");
                }
            }
        }
        for (kind, store) in &self.custom {
            for ((ns, name), doc) in &store.items {
                sources.push(document::source(
                    document::source_name(kind.kind, kind.group, ns, name),
                    doc,
                ));
            }
        }
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        sources
    }

    /// `weir.dev` objects that claim what is not theirs. In a
    /// cluster a Workload object stands for a machine outside it (as Istio's
    /// WorkloadEntry): the node proxies of the cluster's nodes serve Pods,
    /// found by the UID weir control puts on the Workloads it makes from
    /// them. A Workload object that named a Pod UID, or a node where Pods
    /// run, would have that node's proxy capture traffic in a network
    /// namespace the object's author does not own (another namespace's Pod),
    /// so it is refused, reported and left out like any invalid resource;
    /// so is an address no Pod or machine of the mesh has (loopback,
    /// link-local). Likewise `weir.dev` Service and Workload objects that
    /// claim a Kubernetes Service's cluster IP: Kubernetes gives each cluster
    /// IP to one Service, and a copy of it (which sorts first and would win)
    /// would send that Service's clients, over HBONE, to the object
    /// author's Pods.
    fn refused_custom_objects(&self) -> Vec<ConfigError> {
        let pod_nodes: BTreeSet<&str> = self
            .pods
            .items
            .values()
            .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
            .collect();
        let cluster_ips: BTreeMap<std::net::IpAddr, String> = self
            .services
            .items
            .iter()
            .flat_map(|((ns, name), svc)| {
                crate::service::cluster_ips(svc.spec.as_ref())
                    .into_iter()
                    .map(move |ip| (ip, format!("{ns}/{name}")))
            })
            .collect();
        let mut refused = Vec::new();
        for (kind, store) in &self.custom {
            let kind_of = (kind.group, kind.kind);
            if kind_of != ("weir.dev", "Workload") && kind_of != ("weir.dev", "Service") {
                continue;
            }
            for ((ns, name), doc) in &store.items {
                let file = document::source_name(kind.kind, kind.group, ns, name);
                let error = |field: String, message: String| ConfigError {
                    document: Some(DocumentRef {
                        file: file.clone(),
                        index: 0,
                        item: None,
                        kind: Some(kind.kind.to_owned()),
                        name: Some(format!("{ns}/{name}")),
                    }),
                    file: file.clone(),
                    field: Some(field),
                    message,
                };
                if kind.kind == "Service" {
                    let claimed = ["/spec/clusterIP", "/spec/clusterIPs"]
                        .iter()
                        .flat_map(|p| match doc.pointer(p) {
                            Some(serde_json::Value::String(s)) => vec![(p, s.as_str())],
                            Some(serde_json::Value::Array(a)) => a
                                .iter()
                                .filter_map(|v| v.as_str())
                                .map(|s| (p, s))
                                .collect(),
                            _ => Vec::new(),
                        })
                        .find_map(|(p, s)| {
                            let ip = s.parse::<std::net::IpAddr>().ok()?;
                            Some((p, ip, cluster_ips.get(&ip)?))
                        });
                    if let Some((p, ip, owner)) = claimed {
                        refused.push(error(
                            p.trim_start_matches('/').replace('/', "."),
                            format!("{ip} is the cluster IP of the Kubernetes Service {owner}; a weir.dev Service cannot take it"),
                        ));
                    }
                    continue;
                }
                let node = doc.pointer("/spec/node").and_then(|v| v.as_str());
                let address = doc
                    .pointer("/spec/address")
                    .and_then(|v| v.as_str())
                    .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok());
                if doc
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(POD_UID_ANNOTATION))
                    .is_some()
                {
                    refused.push(error(
                        format!("metadata.annotations[{POD_UID_ANNOTATION}]"),
                        "only weir control sets it, on the Workloads it makes from Pods; a Workload object cannot claim a Pod".to_owned(),
                    ));
                } else if let Some(node) = node.filter(|n| pod_nodes.contains(n)) {
                    refused.push(error(
                        "spec.node".to_owned(),
                        format!("{node:?} is a node of this cluster (Pods run on it), where weir node serves Pods only; a Workload object describes a machine outside the cluster, served by that machine's own weir node"),
                    ));
                } else if let Some(a) = address.filter(|a| a.is_loopback() || a.is_link_local()) {
                    refused.push(error(
                        "spec.address".to_owned(),
                        format!("{a} is a loopback or link-local address, which no machine of the mesh has in a cluster"),
                    ));
                } else if let Some((a, owner)) = address.and_then(|a| {
                    let ip = std::net::IpAddr::V4(a);
                    cluster_ips.get(&ip).map(|o| (ip, o))
                }) {
                    refused.push(error(
                        "spec.address".to_owned(),
                        format!("{a} is the cluster IP of the Kubernetes Service {owner}, not a machine's address"),
                    ));
                }
            }
        }
        refused
    }

    /// Builds a snapshot; `None` if it would equal the last one.
    fn build(&mut self) -> Option<Arc<Snapshot>> {
        let refused = self.refused_custom_objects();
        let mut sources = self.sources();
        sources.retain(|s| !refused.iter().any(|e| e.file == s.name));
        let (config, mut invalid) =
            match document::load_skipping_invalid(&sources, &self.options.settings) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("cluster config not loadable, keeping the last one: {e}");
                    return None;
                }
            };
        invalid.extend(refused);
        invalid.sort_by(|a, b| a.file.cmp(&b.file));
        self.report(&invalid);
        let bad: HashSet<&str> = invalid.iter().map(|e| e.file.as_str()).collect();
        let valid: Vec<SourceFile> = sources
            .iter()
            .filter(|s| !bad.contains(s.name.as_str()))
            .cloned()
            .collect();
        if let Some(last) = &self.last {
            if last.sources == valid && last.invalid == invalid {
                return None;
            }
        }
        let snapshot = Arc::new(Snapshot {
            sources: valid,
            config: Arc::new(config),
            invalid,
            generation: self.last.as_ref().map_or(1, |l| l.generation + 1),
        });
        self.metrics.snapshot(snapshot.sources.len());
        self.last = Some(snapshot.clone());
        Some(snapshot)
    }

    /// Logs new errors and sets the invalid-resources gauges.
    fn report(&mut self, invalid: &[ConfigError]) {
        let mut now = BTreeSet::new();
        let mut per_kind: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for e in invalid {
            let text = e.to_string();
            if !self.reported.contains(&text) {
                // The control plane logs each at warning level when it first
                // appears (the snapshot carries it as skipped).
                tracing::debug!(resource = %e.file, "invalid resource left out, the rest of the config is served: {text}");
            }
            now.insert(text);
            let kind = e
                .document
                .as_ref()
                .and_then(|d| d.kind.clone())
                .unwrap_or_else(|| "unknown".to_owned());
            per_kind.entry(kind).or_default().insert(e.file.as_str());
        }
        for kind in &self.invalid_kinds {
            if !per_kind.contains_key(kind) {
                self.metrics.set_invalid(kind, 0);
            }
        }
        for (kind, files) in &per_kind {
            self.metrics.set_invalid(kind, files.len());
        }
        self.invalid_kinds = per_kind.into_keys().collect();
        self.reported = now;
    }
}

// `any_semantic`: initial lists may be served from the API server's
// cache, as informers do; the watch that follows brings it up to date.
fn watcher_config() -> watcher::Config {
    watcher::Config::default().any_semantic()
}

/// First and longest pause before trying again a kind whose versions are
/// all not served.
const UNSERVED_PAUSE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// Watches the `i`th custom kind. A kind with a `fallback` version is
/// watched at the other version when the cluster answers 404 for one (Istio
/// before 1.22 serves `v1beta1` only), and the store sees the 404 only when
/// neither version is served: a cluster's policies at `v1beta1` are never
/// taken for "no policies", not even for the first snapshot.
fn custom_stream(client: &Client, kind: CustomKind, i: usize) -> BoxStream<'static, Update> {
    let watch = {
        let client = client.clone();
        move |version: &'static str| {
            let api =
                Api::<DynamicObject>::all_with(client.clone(), &kind.api_resource_at(version));
            watcher(api, watcher_config()).default_backoff().boxed()
        }
    };
    let Some(fallback) = kind.fallback else {
        let api_version = kind.api_version_at(kind.version);
        return watch(kind.version)
            .map(move |result| Update::Custom {
                i,
                api_version: api_version.clone(),
                result,
            })
            .boxed();
    };
    // The preferred version and the fallback, each with its apiVersion.
    let versions = [kind.version, fallback];
    let api_versions = versions.map(|v| kind.api_version_at(v));
    struct Versioned<S> {
        /// Index in `versions` of the one watched.
        at: usize,
        stream: S,
        /// The version left last answered 404 too (nothing served since).
        other_unserved: bool,
        pause: Option<Duration>,
    }
    let first = Versioned {
        at: 0,
        stream: watch(versions[0]),
        other_unserved: false,
        pause: None,
    };
    futures::stream::unfold(first, move |mut s| {
        let (watch, api_versions) = (watch.clone(), api_versions.clone());
        async move {
            loop {
                if let Some(pause) = s.pause.take() {
                    tokio::time::sleep(pause).await;
                    s.pause = Some(pause);
                }
                let result = s.stream.next().await?;
                let unserved = result.as_ref().is_err_and(not_served);
                if !unserved {
                    // A watcher says `Init` before it lists; anything after
                    // that means this version is served.
                    if result.as_ref().is_ok_and(|e| !matches!(e, Event::Init)) {
                        s.other_unserved = false;
                        s.pause = None;
                    }
                    if s.at == 1 && matches!(result, Ok(Event::InitDone)) {
                        tracing::info!(
                            "the cluster does not serve {} {}: watching {}",
                            api_versions[0],
                            kind.plural,
                            api_versions[1],
                        );
                    }
                    let api_version = api_versions[s.at].clone();
                    return Some((
                        Update::Custom {
                            i,
                            api_version,
                            result,
                        },
                        s,
                    ));
                }
                let left = s.at;
                s.at = 1 - left;
                s.stream = watch(versions[s.at]);
                if s.other_unserved {
                    // Neither is served: the store learns it; both are
                    // tried on, further apart each time.
                    let next = s
                        .pause
                        .map_or(UNSERVED_PAUSE.0, |p| (p * 2).min(UNSERVED_PAUSE.1));
                    s.pause = Some(next);
                    let api_version = api_versions[left].clone();
                    return Some((
                        Update::Custom {
                            i,
                            api_version,
                            result,
                        },
                        s,
                    ));
                }
                s.other_unserved = true;
            }
        }
    })
    .boxed()
}

fn streams(client: &Client, custom: &[CustomKind]) -> Vec<BoxStream<'static, Update>> {
    let mut s: Vec<BoxStream<'static, Update>> = vec![
        watcher(Api::<Namespace>::all(client.clone()), watcher_config())
            .default_backoff()
            .map(Update::Namespace)
            .boxed(),
        watcher(Api::<Pod>::all(client.clone()), watcher_config())
            .default_backoff()
            .map(|r| Update::Pod(Box::new(r)))
            .boxed(),
        watcher(Api::<KubeService>::all(client.clone()), watcher_config())
            .default_backoff()
            .map(|r| Update::Service(Box::new(r)))
            .boxed(),
    ];
    for (i, k) in custom.iter().enumerate() {
        s.push(custom_stream(client, *k, i));
    }
    s
}

async fn run(
    client: Client,
    options: KubeSourceOptions,
    metrics: KubeMetrics,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
) {
    let mut merged = futures::stream::select_all(streams(&client, &options.custom_kinds));
    let custom = options
        .custom_kinds
        .iter()
        .map(|k| {
            let name = format!("{}.{}", k.plural, k.group);
            (*k, Store::new(name))
        })
        .collect();
    let debounce = options.debounce;
    let mut state = State {
        options,
        metrics,
        namespaces: Store::new("namespaces"),
        pods: Store::new("pods"),
        services: Store::new("services"),
        custom,
        reported: BTreeSet::new(),
        invalid_kinds: BTreeSet::new(),
        last: None,
    };
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let due = deadline.filter(|_| state.listed());
        tokio::select! {
            update = merged.next() => {
                let Some(update) = update else { return };
                if state.handle(update) && deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + debounce);
                }
            }
            () = sleep_until(due), if due.is_some() => {
                deadline = None;
                if let Some(snapshot) = state.build() {
                    tracing::info!(
                        generation = snapshot.generation,
                        objects = snapshot.sources.len(),
                        invalid = snapshot.invalid.len(),
                        "cluster config snapshot"
                    );
                    if tx.send(Some(snapshot)).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
