//! `weir.dev/v1alpha1` `Workload`: the local-mode stand-in for a Pod.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::meta::ObjectMeta;
use crate::spiffe::{SpiffeId, TrustDomain};

/// Annotation carrying a Pod's UID on a Workload (the Kubernetes source sets
/// it on every Workload it makes from a Pod). A node proxy finds the network
/// namespace of such a Workload from the UID, not from `spec.netns`: a
/// process of the Pod has a cgroup path that names it.
pub const POD_UID_ANNOTATION: &str = "weir.dev/pod-uid";

/// Whether `uid` can be a Kubernetes object UID (a UUID in practice): a
/// non-empty run of at most 64 ASCII letters, digits and dashes. Anything
/// else could not appear in a cgroup path as the kubelet writes it.
pub fn is_pod_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 64 && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A mesh workload: who it is (namespace + service account), where it is
/// (address, node) and which network namespace holds its sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub metadata: ObjectMeta,
    pub service_account: String,
    pub address: IpAddr,
    pub node: String,
    /// Network namespace name (`/var/run/netns/<netns>`); defaults to the
    /// workload's name. Not used for a Workload with [`POD_UID_ANNOTATION`].
    pub netns: String,
}

impl Workload {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn namespace(&self) -> &str {
        &self.metadata.namespace
    }

    /// The Pod UID of a Workload made from a Pod ([`POD_UID_ANNOTATION`]).
    pub fn pod_uid(&self) -> Option<&str> {
        self.metadata
            .annotations
            .get(POD_UID_ANNOTATION)
            .map(String::as_str)
    }

    /// The workload's SPIFFE id in the given trust domain. The service account
    /// was validated at load time, so this cannot fail.
    pub fn identity(&self, trust_domain: &TrustDomain) -> SpiffeId {
        SpiffeId::new(
            trust_domain.clone(),
            &self.metadata.namespace,
            &self.service_account,
        )
        .expect("workload namespace and service account are validated at load")
    }
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct WorkloadSpec {
    #[serde(default = "default_sa")]
    pub service_account: String,
    #[serde(deserialize_with = "ip_address")]
    #[cfg_attr(feature = "schema", schemars(with = "IpAddr"))]
    pub address: IpAddr,
    pub node: String,
    #[serde(default)]
    pub netns: Option<String>,
}

/// An IP address, with a message that repeats the value (serde's says only
/// "invalid IP address syntax").
fn ip_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{s:?} is not an IP address (an IPv4 address such as 198.18.0.10, or IPv6)"
        ))
    })
}

fn default_sa() -> String {
    "default".to_owned()
}
