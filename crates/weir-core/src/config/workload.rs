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

/// Annotation naming the workload a Workload is one instance of (a Pod's
/// Deployment, StatefulSet, ...), as Istio's `source_workload` and
/// `destination_workload` metric labels name it. The Kubernetes source
/// sets it from the Pod's controller; without it the name is the
/// Workload's own.
pub const WORKLOAD_NAME_ANNOTATION: &str = "weir.dev/workload-name";

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
    /// Whether it takes connections made to a Service that selects it (its
    /// cluster IP or name), as a Pod's `Ready` condition decides whether
    /// kube-proxy and ztunnel send it Service traffic. Connections to its
    /// own address are not affected. Default true.
    pub ready: bool,
}

impl Workload {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn namespace(&self) -> &str {
        &self.metadata.namespace
    }

    /// The workload it is an instance of ([`WORKLOAD_NAME_ANNOTATION`],
    /// else its own name): Istio's `*_workload` metric label.
    pub fn workload_name(&self) -> &str {
        self.metadata
            .annotations
            .get(WORKLOAD_NAME_ANNOTATION)
            .map_or(self.name(), String::as_str)
    }

    /// A label's value, if set and not empty.
    fn label(&self, key: &str) -> Option<&str> {
        self.metadata
            .labels
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Istio's canonical service: `service.istio.io/canonical-name`, else
    /// `app.kubernetes.io/name`, else `app`, else the workload name.
    pub fn canonical_service(&self) -> &str {
        self.label("service.istio.io/canonical-name")
            .or_else(|| self.label("app.kubernetes.io/name"))
            .or_else(|| self.label("app"))
            .unwrap_or_else(|| self.workload_name())
    }

    /// Istio's canonical revision: `service.istio.io/canonical-revision`,
    /// else `app.kubernetes.io/version`, else `version`, else `latest`.
    pub fn canonical_revision(&self) -> &str {
        self.label("service.istio.io/canonical-revision")
            .or_else(|| self.label("app.kubernetes.io/version"))
            .or_else(|| self.label("version"))
            .unwrap_or("latest")
    }

    /// The `app` label (Istio's `*_app` metric label).
    pub fn app(&self) -> Option<&str> {
        self.label("app")
    }

    /// The `version` label (Istio's `*_version` metric label).
    pub fn version(&self) -> Option<&str> {
        self.label("version")
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
    #[serde(default)]
    pub ready: Option<bool>,
}

/// An IP address, with a message that repeats the value (serde's says only
/// "invalid IP address syntax").
fn ip_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{s:?} is not an IP address (an IPv4 address such as 198.18.0.10)"
        ))
    })
}

fn default_sa() -> String {
    "default".to_owned()
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, MeshSettings, SourceFile};

    fn workload(meta: &str) -> super::Workload {
        let yaml = format!("apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {meta}\nspec: {{address: 198.18.0.10, node: n}}\n");
        let c = Config::from_sources(&[SourceFile::new("w.yaml", &yaml)], MeshSettings::default())
            .unwrap_or_else(|e| panic!("{e}"));
        c.workloads[0].clone()
    }

    /// Istio's canonical service and revision: the first label of each
    /// chain that is set, else the workload name / "latest".
    #[test]
    fn canonical_names_follow_istios_label_order() {
        let w = workload("{name: p-1, namespace: a}");
        assert_eq!(
            (
                w.workload_name(),
                w.canonical_service(),
                w.canonical_revision()
            ),
            ("p-1", "p-1", "latest")
        );
        assert_eq!((w.app(), w.version()), (None, None));
        let w = workload("{name: p-1, namespace: a, labels: {app: shop, version: v2}, annotations: {weir.dev/workload-name: producer}}");
        assert_eq!(
            (
                w.workload_name(),
                w.canonical_service(),
                w.canonical_revision()
            ),
            ("producer", "shop", "v2")
        );
        let w = workload("{name: p-1, namespace: a, labels: {app: shop, version: v2, app.kubernetes.io/name: store, app.kubernetes.io/version: '3', service.istio.io/canonical-name: front, service.istio.io/canonical-revision: r9}}");
        assert_eq!(
            (w.canonical_service(), w.canonical_revision()),
            ("front", "r9")
        );
        assert_eq!((w.app(), w.version()), (Some("shop"), Some("v2")));
        let w = workload("{name: p-1, namespace: a, labels: {app: shop, app.kubernetes.io/name: store, app.kubernetes.io/version: '3'}}");
        assert_eq!(
            (w.canonical_service(), w.canonical_revision()),
            ("store", "3")
        );
    }

    #[test]
    fn a_bad_workload_name_annotation_is_refused() {
        let yaml = "apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: p, namespace: a, annotations: {weir.dev/workload-name: Not_A_Name}}\nspec: {address: 198.18.0.10, node: n}\n";
        let e = Config::from_sources(&[SourceFile::new("w.yaml", yaml)], MeshSettings::default())
            .unwrap_err();
        assert!(
            e.0.iter().any(|e| e.field.as_deref() == Some("metadata.annotations[weir.dev/workload-name]")),
            "{e}"
        );
    }
}
