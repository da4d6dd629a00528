//! `weir.dev/v1alpha1` `Service`: the local-mode stand-in for a Kubernetes
//! Service, so that a route destination such as `kafka.data.svc.cluster.local`
//! resolves to the Workloads it selects, and a connection to its cluster IP
//! (a virtual address no Workload has) reaches one of them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::load::DocCtx;
use super::meta::ObjectMeta;
use super::workload::Workload;

/// A service: a name for the Workloads (in its namespace) whose labels
/// match `selector`, and the ports it exposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub metadata: ObjectMeta,
    /// Labels a Workload must all have (Kubernetes' `spec.selector`, a plain
    /// map). An empty selector selects no Workload, as in Kubernetes.
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    /// Its virtual addresses (Kubernetes' `clusterIP`/`clusterIPs`): a
    /// node proxy sends a connection to one of them, on one of the ports,
    /// to one of the selected Workloads, over HBONE, as ztunnel does.
    #[serde(rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<IpAddr>,
    /// Kubernetes' `publishNotReadyAddresses`: connections to the Service
    /// go to every Workload it selects, ready or not (by default only to
    /// ready ones).
    #[serde(
        rename = "publishNotReadyAddresses",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub publish_not_ready_addresses: bool,
}

impl Service {
    /// Whether a Workload with `labels` backs this service.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.selector.is_empty() && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Whether a connection to the Service may go to `w`, one of the
    /// Workloads it selects: a ready one, or any with
    /// `publishNotReadyAddresses`.
    pub fn sends_to(&self, w: &Workload) -> bool {
        w.ready || self.publish_not_ready_addresses
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// The port clients (routes) name.
    pub port: u16,
    /// The Workloads' port; defaults to `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ServiceSpec {
    #[serde(default)]
    selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    ports: Option<Vec<RawServicePort>>,
    /// `None` (or empty) for a headless service, as in Kubernetes.
    #[serde(default, rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    cluster_ips: Option<Vec<String>>,
    #[serde(default)]
    publish_not_ready_addresses: Option<bool>,
    /// Kubernetes' Service type: ClusterIP, NodePort and LoadBalancer are
    /// read as a cluster IP Service (weir does not open node ports or load
    /// balancers); ExternalName is refused.
    #[serde(default, rename = "type")]
    service_type: Option<String>,
    // The rest of a Kubernetes ServiceSpec, accepted (so a Service's YAML
    // can be used as it is, with the weir apiVersion) and ignored: they
    // concern kube-proxy, node ports and load balancers.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    session_affinity: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    session_affinity_config: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    ip_families: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    ip_family_policy: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    internal_traffic_policy: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    external_traffic_policy: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "loadBalancerIP")]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    load_balancer_ip: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    load_balancer_source_ranges: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    load_balancer_class: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "externalIPs")]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    external_ips: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    health_check_node_port: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    allocate_load_balancer_node_ports: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    traffic_distribution: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawServicePort {
    #[serde(default)]
    port: Option<u64>,
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "super::schema::int_or_string")
    )]
    target_port: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    // Accepted and ignored, as in a Kubernetes ServicePort.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    node_port: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    #[allow(dead_code)]
    app_protocol: Option<serde_yaml_ng::Value>,
}

fn port(ctx: &mut DocCtx<'_>, field: String, n: u64) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            ctx.error(Some(field), format!("{n} is not a port number (1-65535)"));
            None
        }
    }
}

pub(crate) fn service(ctx: &mut DocCtx<'_>, metadata: ObjectMeta, spec: ServiceSpec) -> Service {
    match spec.service_type.as_deref() {
        None | Some("ClusterIP" | "NodePort" | "LoadBalancer") => {}
        Some("ExternalName") => ctx.error(
            Some("spec.type".to_owned()),
            "ExternalName: a DNS alias selects no Workloads; use an Istio ServiceEntry for an external host",
        ),
        Some(other) => ctx.error(
            Some("spec.type".to_owned()),
            format!("{other:?} is not a Service type (ClusterIP, NodePort, LoadBalancer)"),
        ),
    }
    let selector = spec.selector.unwrap_or_default();
    if selector.is_empty() {
        ctx.error(
            Some("spec.selector".to_owned()),
            "missing: a Service needs a selector (the labels of the Workloads it names)",
        );
    }
    let raw = spec.ports.unwrap_or_default();
    if raw.is_empty() {
        ctx.error(
            Some("spec.ports".to_owned()),
            "a Service needs at least one port",
        );
    }
    let mut ports: Vec<ServicePort> = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        if let Some(proto) = p.protocol.as_deref() {
            if !proto.eq_ignore_ascii_case("TCP") {
                ctx.error(
                    Some(format!("{f}.protocol")),
                    format!("{proto:?}: weir carries TCP only"),
                );
            }
        }
        let Some(number) = p.port else {
            ctx.error(Some(format!("{f}.port")), "missing: a port number");
            continue;
        };
        let Some(number) = port(ctx, format!("{f}.port"), number) else {
            continue;
        };
        let target_port = match p.target_port {
            None => None,
            Some(serde_yaml_ng::Value::Number(n)) => match n.as_u64() {
                Some(n) => port(ctx, format!("{f}.targetPort"), n),
                None => {
                    ctx.error(
                        Some(format!("{f}.targetPort")),
                        format!("{n} is not a port number (1-65535)"),
                    );
                    None
                }
            },
            Some(serde_yaml_ng::Value::String(s)) => match s.parse::<u64>() {
                Ok(n) => port(ctx, format!("{f}.targetPort"), n),
                Err(_) => {
                    ctx.error(
                        Some(format!("{f}.targetPort")),
                        format!("{s:?}: named target ports refer to container ports, which Workloads do not declare; use a number"),
                    );
                    None
                }
            },
            Some(other) => {
                ctx.error(
                    Some(format!("{f}.targetPort")),
                    format!("{other:?} is not a port number"),
                );
                None
            }
        };
        if ports.iter().any(|q| q.port == number) {
            ctx.error(
                Some(format!("{f}.port")),
                format!("duplicate port {number}"),
            );
            continue;
        }
        ports.push(ServicePort {
            port: number,
            target_port,
            name: p.name.filter(|n| !n.is_empty()),
        });
    }
    if ports.len() > 1 && ports.iter().any(|p| p.name.is_none()) {
        ctx.error(
            Some("spec.ports".to_owned()),
            "with several ports every port needs a name (as in Kubernetes)",
        );
    }
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    let given = spec
        .cluster_ip
        .map(|ip| ("spec.clusterIP".to_owned(), ip))
        .into_iter()
        .chain(
            spec.cluster_ips
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip)),
        );
    for (field, raw) in given {
        if raw.is_empty() || raw == "None" {
            continue; // headless
        }
        let ip: IpAddr = match raw.parse() {
            Ok(ip) => ip,
            Err(_) => {
                ctx.error(
                    Some(field),
                    format!("{raw:?} is not an IP address (or None for a headless Service)"),
                );
                continue;
            }
        };
        if let Some(why) = unusable_cluster_ip(ip) {
            ctx.error(Some(field), format!("{ip} {why}"));
            continue;
        }
        if !cluster_ips.contains(&ip) {
            cluster_ips.push(ip);
        }
    }
    Service {
        metadata,
        selector,
        ports,
        cluster_ips,
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
    }
}

fn unusable_cluster_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_unspecified() || ip.is_loopback() => {
            Some("cannot be a cluster IP (unspecified or loopback: capture leaves it alone)")
        }
        _ if ip.is_multicast() => Some("is a multicast address, not a cluster IP"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("is the broadcast address, not a cluster IP"),
        IpAddr::V4(_) => None,
        IpAddr::V6(_) => Some(
            "is an IPv6 address: weir's capture is IPv4 only for now, so connections to it would bypass the mesh",
        ),
    }
}
