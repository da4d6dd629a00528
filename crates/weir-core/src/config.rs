//! The configuration model: Kubernetes-style YAML documents parsed once into
//! typed, validated kinds.
//!
//! Supported kinds:
//! - `weir.dev/v1alpha1` [`Workload`] (local-mode stand-in for a Pod);
//! - `security.istio.io/v1` and `v1beta1` [`PeerAuthentication`] and
//!   [`AuthorizationPolicy`], accepted unchanged;
//! - `networking.istio.io/v1`, `v1beta1` and `v1alpha3` [`Gateway`],
//!   [`VirtualService`], [`ServiceEntry`] and [`DestinationRule`] (what a
//!   TLS/TCP gateway uses of them);
//! - `weir.dev/v1alpha1` [`Service`] (local-mode stand-in for a Kubernetes
//!   Service: route destinations resolve to the Workloads it selects);
//! - `weir.dev/v1alpha1` [`KafkaGateway`] (a Kafka-aware listener of
//!   `weir gateway`) and [`KafkaAuthorizationPolicy`] (topic-level
//!   authorization at it), in [`kafka`].
//!
//! Unknown kinds and unknown fields are errors. Every error names the file,
//! the document (its position and name) and the field.

mod files;
mod istio;
pub mod kafka;
mod load;
mod meta;
mod networking;
mod reload;
#[cfg(feature = "schema")]
pub mod schema;
mod service;
mod workload;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

pub use files::{read_sources, read_sources_or_stdin, SourceFile};
pub use istio::{
    Action, AuthorizationPolicy, Condition, ConditionKey, ConditionValues, MtlsMode, Operation,
    PeerAuthentication, Rule, ServiceAccountMatch, Source, StringMatch,
};
pub use kafka::{KafkaAuthorizationPolicy, KafkaGateway};
pub use load::{is_dns_label, is_dns_subdomain};
pub use meta::{ObjectMeta, Timestamp, WorkloadSelector};
pub use networking::{
    Destination, DestinationRule, DestinationSource, Endpoint, EndpointAddress, EntryPort, Gateway,
    GatewayHost, GatewayRef, HostNamespace, HostPattern, L4Match, Location, Resolution,
    ResolveError, ResolvedDestination, RouteDestination, Server, ServerPort, ServerProtocol,
    ServerTls, ServiceEntry, Subset, TcpRoute, TlsMatch, TlsMode, TlsRoute, TlsVersion,
    VirtualService, WorkloadEntry, CLUSTER_DOMAIN,
};
pub use reload::{ConfigFiles, Reload, ReloadStatus};
pub use service::{Service, ServicePort};
pub use workload::{is_pod_uid, Workload, POD_UID_ANNOTATION, WORKLOAD_NAME_ANNOTATION};

use crate::spiffe::TrustDomain;

/// Istio's default root namespace: policies there apply mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// Mesh-wide settings that are not themselves config documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeshSettings {
    pub trust_domain: TrustDomain,
    pub root_namespace: String,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            trust_domain: TrustDomain::default(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
        }
    }
}

/// Where a document came from: file and position in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DocumentRef {
    pub file: String,
    /// 0-based position of the document in its file (`---` separated).
    pub index: usize,
    /// 0-based position in the document's `items` when it is a `kind: List`
    /// (what `kubectl get -o yaml` prints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `namespace/name` when the metadata could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: document {} (index {})",
            self.file,
            self.index + 1,
            self.index
        )?;
        if let Some(item) = self.item {
            write!(f, " items[{item}]")?;
        }
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, " {k} {n}"),
            (Some(k), None) => write!(f, " {k}"),
            (None, Some(n)) => write!(f, " {n}"),
            (None, None) => Ok(()),
        }
    }
}

/// One problem in the input, located precisely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// `None` for problems with a whole file (unreadable, not YAML at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<DocumentRef>,
    /// The file, repeated here so file-level errors have one too.
    pub file: String,
    /// Dotted path to the offending field (`spec.rules[0].from[0].source.principals`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.document {
            Some(d) => write!(f, "{d}")?,
            None => write!(f, "{}", self.file)?,
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error found in a load; a load either yields a whole [`Config`] or
/// this, never a partial config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} configuration error{}",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A validated, indexed configuration snapshot. Immutable: reloads build a new one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Config {
    pub settings: MeshSettings,
    pub workloads: Vec<Workload>,
    pub peer_authentications: Vec<PeerAuthentication>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    /// Istio `Gateway`s (served by `weir gateway` instances they select).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<Gateway>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub virtual_services: Vec<VirtualService>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_entries: Vec<ServiceEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_rules: Vec<DestinationRule>,
    /// weir `Service`s (local mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Kafka-aware listeners of `weir gateway`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kafka_gateways: Vec<KafkaGateway>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kafka_authorization_policies: Vec<KafkaAuthorizationPolicy>,
    /// Non-fatal findings (e.g. a policy Istio would ignore).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<ConfigError>,
    /// How many documents (List items counted one by one) were loaded.
    #[serde(skip)]
    documents: usize,
    #[serde(skip)]
    by_address: HashMap<IpAddr, usize>,
    #[serde(skip)]
    by_name: HashMap<(String, String), usize>,
    /// Service cluster IP → index in `services`.
    #[serde(skip)]
    by_cluster_ip: HashMap<IpAddr, usize>,
    /// Per Service (by index), the indices of the Workloads it selects:
    /// found once per snapshot, not per connection.
    #[serde(skip)]
    selected: Vec<Vec<usize>>,
}

/// The backends of a connection to a Service's cluster IP and port.
#[derive(Debug)]
pub struct ServiceBackends<'a> {
    pub service: &'a Service,
    /// The Workloads' port.
    pub target_port: u16,
    /// The Workloads a connection may go to: those the Service selects
    /// that are ready (all of them with `publishNotReadyAddresses`).
    pub workloads: Vec<&'a Workload>,
    /// How many Workloads the Service selects that are not ready and so
    /// not in `workloads`. With none in `workloads` either, the Service's
    /// Pods are outside the mesh.
    pub not_ready: usize,
}

impl Config {
    /// Parses and validates documents from already-read sources.
    pub fn from_sources(
        sources: &[SourceFile],
        settings: MeshSettings,
    ) -> Result<Config, ConfigErrors> {
        load::load(sources, settings)
    }

    /// Reads files or directories (recursively, `*.yaml`/`*.yml`/`*.json`) and
    /// parses them.
    pub fn load_paths<P: AsRef<std::path::Path>>(
        paths: &[P],
        settings: MeshSettings,
    ) -> Result<Config, ConfigErrors> {
        let sources = read_sources(paths).map_err(|e| ConfigErrors(vec![*e]))?;
        Self::from_sources(&sources, settings)
    }

    /// [`Config::load_paths`] where a path `-` is standard input (for
    /// one-shot readers such as `weir check`).
    pub fn load_paths_or_stdin<P: AsRef<std::path::Path>>(
        paths: &[P],
        settings: MeshSettings,
    ) -> Result<Config, ConfigErrors> {
        let sources = read_sources_or_stdin(paths).map_err(|e| ConfigErrors(vec![*e]))?;
        Self::from_sources(&sources, settings)
    }

    pub(crate) fn index(&mut self) {
        self.by_address = self
            .workloads
            .iter()
            .enumerate()
            .map(|(i, w)| (w.address, i))
            .collect();
        self.by_name = self
            .workloads
            .iter()
            .enumerate()
            .map(|(i, w)| ((w.namespace().to_owned(), w.name().to_owned()), i))
            .collect();
        self.by_cluster_ip = self
            .services
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.cluster_ips.iter().map(move |ip| (*ip, i)))
            .collect();
        self.selected = self
            .services
            .iter()
            .map(|s| {
                self.workloads
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.namespace() == s.metadata.namespace)
                    .filter(|(_, w)| s.selects(&w.metadata.labels))
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
    }

    /// The Service with cluster IP `ip` if it selects a Workload (one
    /// whose Pods are all outside the mesh is an address like any other).
    pub(crate) fn mesh_service_by_cluster_ip(&self, ip: IpAddr) -> Option<&Service> {
        let &i = self.by_cluster_ip.get(&ip)?;
        (!self.selected[i].is_empty()).then(|| &self.services[i])
    }

    /// The Service whose cluster IP is `ip`.
    pub fn service_by_cluster_ip(&self, ip: IpAddr) -> Option<&Service> {
        self.by_cluster_ip.get(&ip).map(|&i| &self.services[i])
    }

    /// Where a connection to `addr` goes if `addr` is a Service's cluster
    /// IP and one of its ports: the ready Workloads the Service selects, at
    /// the port's target port. `None` if `addr` is not a Service port.
    pub fn service_backends(&self, addr: SocketAddr) -> Option<ServiceBackends<'_>> {
        let &i = self.by_cluster_ip.get(&addr.ip())?;
        let service = &self.services[i];
        let port = service.ports.iter().find(|p| p.port == addr.port())?;
        let selected = &self.selected[i];
        let workloads: Vec<&Workload> = selected
            .iter()
            .map(|&w| &self.workloads[w])
            .filter(|w| service.sends_to(w))
            .collect();
        Some(ServiceBackends {
            service,
            target_port: port.target_port.unwrap_or(port.port),
            not_ready: selected.len() - workloads.len(),
            workloads,
        })
    }

    pub fn workload_by_address(&self, ip: IpAddr) -> Option<&Workload> {
        self.by_address.get(&ip).map(|&i| &self.workloads[i])
    }

    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Workload> {
        self.by_name
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|&i| &self.workloads[i])
    }

    /// How many documents the config was loaded from: objects, not files;
    /// empty and comment-only documents do not count, the items of a `List`
    /// do. 0 means the sources held nothing (which `weir check` refuses; a
    /// proxy may legitimately start empty).
    pub fn documents(&self) -> usize {
        self.documents
    }

    pub fn workloads_on_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Workload> {
        self.workloads.iter().filter(move |w| w.node == node)
    }

    /// `(kind, count)` for every supported kind, for `weir check`'s summary.
    pub fn summary(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("Workload", self.workloads.len()),
            ("PeerAuthentication", self.peer_authentications.len()),
            ("AuthorizationPolicy", self.authorization_policies.len()),
            ("Gateway", self.gateways.len()),
            ("VirtualService", self.virtual_services.len()),
            ("ServiceEntry", self.service_entries.len()),
            ("DestinationRule", self.destination_rules.len()),
            ("Service", self.services.len()),
            ("KafkaGateway", self.kafka_gateways.len()),
            (
                "KafkaAuthorizationPolicy",
                self.kafka_authorization_policies.len(),
            ),
        ]
    }
}
