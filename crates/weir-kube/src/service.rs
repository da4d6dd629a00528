//! Kubernetes Service → weir [`Service`]: the name route destinations such as
//! `kafka.data.svc.cluster.local` resolve through, to the Workloads it
//! selects.
//!
//! A pure function of the Service and the Pods of its namespace (the Pods
//! are only read to resolve named target ports).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_core::config::{ObjectMeta, Service, ServicePort};

/// Why a Kubernetes Service is not a weir Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceSkip {
    /// `type: ExternalName`: a DNS alias, with no Pods behind it.
    ExternalName,
    /// No `spec.selector`: its endpoints are managed by something else
    /// (weir Services select Workloads by label only).
    NoSelector,
    /// No TCP port whose target could be resolved; the reasons per port.
    NoUsablePort(Vec<String>),
}

impl ServiceSkip {
    /// A short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ServiceSkip::ExternalName => "external_name",
            ServiceSkip::NoSelector => "no_selector",
            ServiceSkip::NoUsablePort(_) => "no_usable_port",
        }
    }
}

impl fmt::Display for ServiceSkip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceSkip::ExternalName => write!(f, "is an ExternalName alias"),
            ServiceSkip::NoSelector => write!(
                f,
                "has no selector (its endpoints are not chosen by Pod labels)"
            ),
            ServiceSkip::NoUsablePort(reasons) => {
                write!(f, "has no usable port: {}", reasons.join("; "))
            }
        }
    }
}

/// The weir Service a Kubernetes Service is, or why it is none.
///
/// - `metadata`: name and namespace (labels and annotations do not matter
///   to a weir Service and are not copied).
/// - `selector`: `spec.selector`; Services without one are skipped, and so
///   are `ExternalName` Services.
/// - `ports`: the TCP ports (weir carries TCP only; UDP and SCTP ports are
///   left out). A numeric `targetPort` is kept; a named one (a container
///   port's name) is resolved against the containers of the `pods` the
///   selector matches, and kept when they agree on one number; otherwise
///   that port is left out (a Workload declares no container ports). A
///   Service left with no port is skipped.
///
/// The second element lists the ports left out and why, for logs.
pub fn service_from_kube<'a>(
    svc: &KubeService,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Result<(Service, Vec<String>), ServiceSkip> {
    let spec = svc.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return Err(ServiceSkip::ExternalName);
    }
    let selector = spec
        .and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty())
        .ok_or(ServiceSkip::NoSelector)?;
    let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or_default();

    let selected: Vec<&Pod> = pods
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref().unwrap_or("default") == namespace)
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .collect();

    let mut ports = Vec::new();
    let mut dropped = Vec::new();
    for p in spec.and_then(|s| s.ports.as_ref()).into_iter().flatten() {
        let label = p.name.clone().unwrap_or_else(|| p.port.to_string());
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        if !protocol.eq_ignore_ascii_case("TCP") {
            dropped.push(format!("port {label}: {protocol} (weir carries TCP only)"));
            continue;
        }
        let Some(port) = u16::try_from(p.port).ok().filter(|p| *p != 0) else {
            dropped.push(format!("port {label}: {} is not a port number", p.port));
            continue;
        };
        let target_port = match &p.target_port {
            None => None,
            Some(IntOrString::Int(n)) => match u16::try_from(*n).ok().filter(|n| *n != 0) {
                Some(n) => Some(n),
                None => {
                    dropped.push(format!("port {label}: targetPort {n} is not a port number"));
                    continue;
                }
            },
            Some(IntOrString::String(s)) => {
                if let Some(n) = s.parse::<u16>().ok().filter(|n| *n != 0) {
                    Some(n)
                } else {
                    match named_port(&selected, s) {
                        Ok(n) => Some(n),
                        Err(why) => {
                            dropped.push(format!("port {label}: targetPort {s:?} {why}"));
                            continue;
                        }
                    }
                }
            }
        };
        ports.push(ServicePort {
            port,
            // Kubernetes defaults targetPort to port; so does weir.
            target_port: target_port.filter(|t| *t != port),
            name: p.name.clone().filter(|n| !n.is_empty()),
        });
    }
    if ports.is_empty() {
        return Err(ServiceSkip::NoUsablePort(dropped));
    }
    Ok((
        Service {
            metadata: ObjectMeta::new(namespace, name),
            selector,
            ports,
            cluster_ips: cluster_ips(spec),
            publish_not_ready_addresses: spec
                .and_then(|s| s.publish_not_ready_addresses)
                .unwrap_or(false),
        },
        dropped,
    ))
}

/// The Service's IPv4 cluster IPs (`clusterIPs`, else `clusterIP`; none
/// for a headless Service). IPv6 ones are left out: capture is IPv4 only.
pub(crate) fn cluster_ips(
    spec: Option<&k8s_openapi::api::core::v1::ServiceSpec>,
) -> Vec<std::net::IpAddr> {
    let Some(spec) = spec else { return Vec::new() };
    let listed = spec
        .cluster_ips
        .clone()
        .filter(|l| !l.is_empty())
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default();
    let mut out = Vec::new();
    for raw in listed {
        if let Ok(ip @ std::net::IpAddr::V4(v4)) = raw.parse::<std::net::IpAddr>() {
            if !v4.is_unspecified() && !v4.is_loopback() && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// The number of the container port called `name` in every selected Pod
/// (TCP ports only), if they agree.
fn named_port(pods: &[&Pod], name: &str) -> Result<u16, String> {
    let mut numbers: BTreeMap<i32, usize> = BTreeMap::new();
    for pod in pods {
        let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
        for c in containers {
            for cp in c.ports.iter().flatten() {
                let tcp = cp
                    .protocol
                    .as_deref()
                    .is_none_or(|p| p.eq_ignore_ascii_case("TCP"));
                if tcp && cp.name.as_deref() == Some(name) {
                    *numbers.entry(cp.container_port).or_default() += 1;
                }
            }
        }
    }
    let mut it = numbers.keys();
    match (it.next(), it.next()) {
        (None, _) => Err("names no container port of the selected pods".to_owned()),
        (Some(n), None) => u16::try_from(*n)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| format!("resolves to {n}, not a port number")),
        (Some(_), Some(_)) => {
            let all: Vec<String> = numbers.keys().map(i32::to_string).collect();
            Err(format!(
                "resolves to different numbers in the selected pods ({})",
                all.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use weir_core::config::SourceFile;
    use weir_core::{Config, MeshSettings};

    use super::*;
    use crate::document;

    fn kube_service(spec: serde_json::Value) -> KubeService {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kafka", "namespace": "data", "uid": "s-1",
                         "labels": {"app": "kafka"}},
            "spec": spec
        }))
        .unwrap()
    }

    fn pod(namespace: &str, app: &str, client_port: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{app}-{client_port}"), "namespace": namespace,
                         "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "ports": [
                {"name": "client", "containerPort": client_port},
                {"name": "metrics", "containerPort": 9404, "protocol": "UDP"}
            ]}]}
        }))
        .unwrap()
    }

    fn load_one(yaml: &str) -> Service {
        let c = Config::from_sources(&[SourceFile::new("s.yaml", yaml)], MeshSettings::default())
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(c.services.len(), 1);
        c.services[0].clone()
    }

    #[test]
    fn service_is_the_one_the_file_source_loads() {
        let svc = kube_service(json!({
            "type": "ClusterIP", "clusterIP": "10.96.0.10",
            "selector": {"app": "kafka"},
            "ports": [
                {"name": "client", "port": 9092, "targetPort": "client", "protocol": "TCP"},
                {"name": "internal", "port": 9093, "targetPort": 19093},
                {"name": "same", "port": 9094, "targetPort": 9094},
                {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"}
            ]
        }));
        let pods = [
            pod("data", "kafka", 29092),
            pod("data", "kafka", 29092),
            pod("other", "kafka", 1),
        ];
        let (s, dropped) = service_from_kube(&svc, &pods).unwrap();
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert!(dropped[0].contains("UDP"), "{dropped:?}");
        let file = load_one(
            "apiVersion: weir.dev/v1alpha1
kind: Service
metadata: {name: kafka, namespace: data}
spec:
  selector: {app: kafka}
  clusterIP: 10.96.0.10
  ports:
  - {name: client, port: 9092, targetPort: 29092}
  - {name: internal, port: 9093, targetPort: 19093}
  - {name: same, port: 9094}
",
        );
        assert_eq!(s, file);
        assert!(!s.publish_not_ready_addresses);
        let served = serde_yaml_ng::to_string(&document::service(&s)).unwrap();
        assert_eq!(load_one(&served), s);

        // publishNotReadyAddresses (Strimzi sets it on its broker Services)
        // is carried, through the served document too.
        let svc = kube_service(json!({
            "clusterIP": "10.96.0.11", "selector": {"app": "kafka"},
            "publishNotReadyAddresses": true,
            "ports": [{"name": "client", "port": 9092}]
        }));
        let (s, _) = service_from_kube(&svc, &pods).unwrap();
        assert!(s.publish_not_ready_addresses);
        let served = serde_yaml_ng::to_string(&document::service(&s)).unwrap();
        assert!(
            served.contains("publishNotReadyAddresses: true"),
            "{served}"
        );
        assert_eq!(load_one(&served), s);
    }

    #[test]
    fn services_that_are_not_weir_services() {
        let ext = kube_service(json!({"type": "ExternalName", "externalName": "db.example"}));
        assert_eq!(
            service_from_kube(&ext, []).unwrap_err(),
            ServiceSkip::ExternalName
        );
        let headless = kube_service(json!({"clusterIP": "None", "ports": [{"port": 9092}]}));
        assert_eq!(
            service_from_kube(&headless, []).unwrap_err(),
            ServiceSkip::NoSelector
        );
        let udp = kube_service(json!({"selector": {"app": "dns"},
            "ports": [{"port": 53, "protocol": "UDP"}]}));
        let e = service_from_kube(&udp, []).unwrap_err();
        assert!(
            matches!(&e, ServiceSkip::NoUsablePort(r) if r.len() == 1),
            "{e:?}"
        );
        assert!(e.to_string().contains("TCP only"), "{e}");
    }

    /// Cluster IPs: the IPv4 ones of clusterIPs (dual-stack), none for a
    /// headless Service; they survive the served document.
    #[test]
    fn cluster_ips_are_the_ipv4_ones() {
        let dual = kube_service(json!({"selector": {"app": "kafka"},
            "clusterIP": "fd00::10", "clusterIPs": ["fd00::10", "10.96.0.11"],
            "ports": [{"port": 9092}]}));
        let (s, _) = service_from_kube(&dual, []).unwrap();
        assert_eq!(
            s.cluster_ips,
            ["10.96.0.11".parse::<std::net::IpAddr>().unwrap()]
        );
        let served = serde_yaml_ng::to_string(&document::service(&s)).unwrap();
        assert_eq!(load_one(&served), s);
        let headless = kube_service(json!({"selector": {"app": "kafka"},
            "clusterIP": "None", "ports": [{"port": 9092}]}));
        assert!(service_from_kube(&headless, [])
            .unwrap()
            .0
            .cluster_ips
            .is_empty());
    }

    #[test]
    fn named_target_ports_need_agreeing_pods() {
        let svc = kube_service(json!({"selector": {"app": "kafka"}, "ports": [
            {"name": "client", "port": 9092, "targetPort": "client"},
            {"name": "metrics", "port": 9404, "targetPort": "metrics"}
        ]}));
        // No pods: nothing to resolve against.
        let e = service_from_kube(&svc, []).unwrap_err();
        assert!(e.to_string().contains("names no container port"), "{e}");
        // Pods disagree on "client"; "metrics" is UDP in the pods.
        let pods = [pod("data", "kafka", 9092), pod("data", "kafka", 19092)];
        let e = service_from_kube(&svc, &pods).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("different numbers in the selected pods (9092, 19092)"),
            "{text}"
        );
        assert!(
            text.contains("\"metrics\" names no container port"),
            "{text}"
        );
        // Pods of another app do not count.
        let pods = [pod("data", "kafka", 9092), pod("data", "zk", 2181)];
        let (s, dropped) = service_from_kube(&svc, &pods).unwrap();
        assert_eq!(s.ports.len(), 1);
        assert_eq!(s.ports[0].target_port, None, "9092 → 9092 is the default");
        assert_eq!(dropped.len(), 1);
    }
}
