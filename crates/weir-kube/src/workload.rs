//! Pod → [`Workload`]: which Pods are mesh workloads (ambient enrollment)
//! and what weir needs to know of them.
//!
//! A pure function of the Pod and its Namespace's labels, so that local mode
//! and cluster mode share one model: a Pod becomes exactly the Workload the
//! file source produces for the equivalent `weir.dev/v1alpha1` document
//! ([`crate::document::workload`] writes that document).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use weir_core::config::{ObjectMeta, Workload};

/// The label that enrolls a Namespace or a Pod in the ambient mesh (value
/// [`AMBIENT`]) or keeps a Pod out of it (value [`NONE`]), as in Istio.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// [`DATAPLANE_MODE_LABEL`] value: enrolled.
pub const AMBIENT: &str = "ambient";
/// [`DATAPLANE_MODE_LABEL`] value on a Pod: not enrolled, whatever its
/// Namespace says.
pub const NONE: &str = "none";
/// Annotation Istio's sidecar injector sets on Pods that have a sidecar;
/// such Pods are left to their sidecar (Istio does the same).
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
pub use weir_core::config::{POD_UID_ANNOTATION, WORKLOAD_NAME_ANNOTATION};
/// The service account of a Pod that names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Why a Pod is not a mesh Workload. Not errors: most Pods of a cluster are
/// skipped for one of these reasons, and each is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSkip {
    /// Neither the Pod nor its Namespace is labelled
    /// `istio.io/dataplane-mode=ambient`.
    NotEnrolled,
    /// The Pod is labelled `istio.io/dataplane-mode=none`.
    OptedOut,
    /// The Pod has an Istio sidecar (`sidecar.istio.io/status`).
    HasSidecar,
    /// `spec.hostNetwork: true`: the Pod shares the node's address and network
    /// namespace, so neither identifies it.
    HostNetwork,
    /// The Pod has finished (`Succeeded` or `Failed`): its address may already
    /// belong to another Pod.
    Finished(String),
    /// Neither running nor pending (phase `Unknown`: its node stopped
    /// reporting), as istiod leaves such Pods out.
    NotRunning(String),
    /// No `status.podIP` yet (not scheduled, or its sandbox is not up).
    NoAddress,
    /// `status.podIP` is not an IP address.
    BadAddress(String),
    /// No `spec.nodeName` (not scheduled).
    NotScheduled,
}

impl PodSkip {
    /// A short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PodSkip::NotEnrolled => "not_enrolled",
            PodSkip::OptedOut => "opted_out",
            PodSkip::HasSidecar => "sidecar",
            PodSkip::HostNetwork => "host_network",
            PodSkip::Finished(_) => "finished",
            PodSkip::NotRunning(_) => "not_running",
            PodSkip::NoAddress => "no_address",
            PodSkip::BadAddress(_) => "bad_address",
            PodSkip::NotScheduled => "not_scheduled",
        }
    }
}

impl fmt::Display for PodSkip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodSkip::NotEnrolled => write!(
                f,
                "not in the ambient mesh: label its namespace (or the pod) {DATAPLANE_MODE_LABEL}={AMBIENT}"
            ),
            PodSkip::OptedOut => write!(f, "opted out with {DATAPLANE_MODE_LABEL}={NONE}"),
            PodSkip::HasSidecar => write!(
                f,
                "has an Istio sidecar ({SIDECAR_STATUS_ANNOTATION}); its sidecar handles its traffic"
            ),
            PodSkip::HostNetwork => write!(
                f,
                "uses the host network: its address and network namespace are the node's"
            ),
            PodSkip::Finished(phase) => write!(f, "has finished (phase {phase})"),
            PodSkip::NotRunning(phase) => {
                write!(f, "is neither running nor pending (phase {phase})")
            }
            PodSkip::NoAddress => write!(f, "has no pod IP yet"),
            PodSkip::BadAddress(ip) => write!(f, "status.podIP {ip:?} is not an IP address"),
            PodSkip::NotScheduled => write!(f, "is not scheduled on a node yet"),
        }
    }
}

/// Whether a Pod is in the ambient mesh, by Istio's rule:
///
/// 1. a Pod labelled `istio.io/dataplane-mode=none` is out;
/// 2. a Pod with an Istio sidecar is out (the sidecar takes precedence);
/// 3. a Pod labelled `istio.io/dataplane-mode=ambient` is in;
/// 4. otherwise it is in exactly when its Namespace is labelled
///    `istio.io/dataplane-mode=ambient`.
pub fn enrollment(
    pod_labels: &BTreeMap<String, String>,
    pod_annotations: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<(), PodSkip> {
    fn mode(labels: &BTreeMap<String, String>) -> Option<&str> {
        labels.get(DATAPLANE_MODE_LABEL).map(String::as_str)
    }
    if mode(pod_labels) == Some(NONE) {
        return Err(PodSkip::OptedOut);
    }
    if pod_annotations.contains_key(SIDECAR_STATUS_ANNOTATION) {
        return Err(PodSkip::HasSidecar);
    }
    if mode(pod_labels) == Some(AMBIENT) || mode(namespace_labels) == Some(AMBIENT) {
        Ok(())
    } else {
        Err(PodSkip::NotEnrolled)
    }
}

/// The Workload a Pod is, or why it is none.
///
/// - `metadata`: the Pod's name, namespace and labels (policy selectors match
///   them); other Pod labels and annotations are not copied, except the
///   Pod's UID in [`POD_UID_ANNOTATION`] and, for a Pod of a controller (a
///   Deployment's, StatefulSet's, ...), the controller's name in
///   [`WORKLOAD_NAME_ANNOTATION`] (the metrics' workload, as Istio names it).
/// - `serviceAccount`: `spec.serviceAccountName`, `default` when unset (as
///   Kubernetes does).
/// - `address`: `status.podIP`. Pods without one are skipped, and so are:
///   Pods that have finished (`Succeeded`/`Failed`: the kubelet releases their
///   address, which a new Pod may get, so keeping them would give two
///   Workloads one address); `hostNetwork` Pods (their address is the node's,
///   shared by every such Pod, so it does not identify one, and capturing in
///   their network namespace would capture the node's traffic). `Pending`
///   Pods that already have an address are Workloads (their init containers
///   may already talk), and so are Pods being deleted until they are gone:
///   a terminating Kafka broker still drains its connections, which must stay
///   in the mesh until its containers stop (Istio keeps them too).
/// - `node`: `spec.nodeName`; unscheduled Pods are skipped.
/// - `ready`: the Pod's `Ready` condition is `True` and it is not being
///   deleted, as an EndpointSlice's `ready` condition (what kube-proxy and
///   istiod go by): a Pod that is starting, failing its readiness probe or
///   terminating stays a Workload (its own address is still in the mesh)
///   but gets no new connections to a Service.
/// - `netns`: the default (the Pod's name), as for a Workload document
///   without `spec.netns`. The runtime's network namespace of a Pod cannot be
///   derived from the API (containerd names it `cni-<random uuid>`), so a node
///   proxy in cluster mode does not open `/var/run/netns/<netns>`: it finds
///   the Pod's network namespace from [`POD_UID_ANNOTATION`] at run time, the
///   way istio-cni does, by finding a process of the Pod (its cgroup path
///   contains the Pod UID) under the host's `/proc` and using
///   `/proc/<pid>/ns/net` (the chart mounts `/proc` and `/var/run/netns`).
pub fn workload_from_pod(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<Workload, PodSkip> {
    let meta = &pod.metadata;
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    enrollment(labels, annotations, namespace_labels)?;

    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Err(PodSkip::HostNetwork);
    }
    let status = pod.status.as_ref();
    if let Some(phase) = status.and_then(|s| s.phase.as_deref()) {
        if matches!(phase, "Succeeded" | "Failed") {
            return Err(PodSkip::Finished(phase.to_owned()));
        }
        if !matches!(phase, "Running" | "Pending") {
            return Err(PodSkip::NotRunning(phase.to_owned()));
        }
    }
    // `podIP`, or, when that is IPv6 (a dual-stack cluster whose primary
    // family is IPv6), the Pod's IPv4 address from `podIPs` (istio-cni
    // reads them all): capture is IPv4 only.
    let primary = status
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty());
    let ipv4 = || {
        status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
    };
    let ip = match primary {
        Some(ip) if ip.parse::<std::net::Ipv6Addr>().is_ok() => ipv4().unwrap_or(ip),
        Some(ip) => ip,
        None => return Err(PodSkip::NoAddress),
    };
    let address: IpAddr = ip.parse().map_err(|_| PodSkip::BadAddress(ip.to_owned()))?;
    let node = spec
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
        .ok_or(PodSkip::NotScheduled)?;
    let service_account = spec
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|sa| !sa.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT);

    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let mut metadata = ObjectMeta::new(&namespace, &name);
    metadata.labels = labels.clone();
    if let Some(uid) = meta.uid.as_ref().filter(|u| !u.is_empty()) {
        metadata
            .annotations
            .insert(POD_UID_ANNOTATION.to_owned(), uid.clone());
    }
    // A custom controller's name need not be an object name weir accepts:
    // then the Pod's own name stands (never a Workload the loader refuses,
    // which would take the Pod out of the mesh).
    if let Some(w) =
        workload_name(pod).filter(|w| *w != name && weir_core::config::is_dns_subdomain(w))
    {
        metadata
            .annotations
            .insert(WORKLOAD_NAME_ANNOTATION.to_owned(), w);
    }
    Ok(Workload {
        metadata,
        service_account: service_account.to_owned(),
        address,
        node: node.to_owned(),
        netns: name,
        ready: is_ready(pod),
    })
}

/// Whether a Pod takes Service traffic: `Ready` is `True` and no deletion
/// has begun.
fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The workload a Pod is an instance of, as Istio names it for metrics
/// (its `GetDeployMetaFromPod`): for a Pod with a generated name, its
/// controller's name, with a ReplicaSet's `-<pod-template-hash>` taken off
/// (the Deployment) and a Job's `-<8 to 10 digits>` (the CronJob); `None`
/// otherwise (the Pod's own name).
fn workload_name(pod: &Pod) -> Option<String> {
    let meta = &pod.metadata;
    meta.generate_name.as_ref().filter(|g| !g.is_empty())?;
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))?;
    let name = owner.name.as_str();
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .filter(|h| !h.is_empty());
    Some(match (owner.kind.as_str(), hash) {
        ("ReplicaSet", Some(h)) => name
            .strip_suffix(h.as_str())
            .and_then(|n| n.strip_suffix('-'))
            .unwrap_or(name)
            .to_owned(),
        ("Job", _) => match name.rsplit_once('-') {
            Some((cron, ts))
                if (8..=10).contains(&ts.len()) && ts.bytes().all(|b| b.is_ascii_digit()) =>
            {
                cron.to_owned()
            }
            _ => name.to_owned(),
        },
        _ => name.to_owned(),
    })
}

#[cfg(test)]
mod tests;
