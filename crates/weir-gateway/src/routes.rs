//! The route table of one gateway instance, built from a config snapshot:
//! which ports it listens on (the servers of the Gateways whose selector
//! matches its labels), and for a connection on a port with a given SNI,
//! which server handles it and which VirtualService route it takes.
//!
//! Pure: no I/O, rebuilt whole on every config reload.

use std::collections::BTreeMap;

use serde::Serialize;
use weir_core::config::{
    Gateway, GatewayHost, HostPattern, ObjectMeta, RouteDestination, Server, ServerProtocol,
    ServerTls, TlsMode, VirtualService,
};
use weir_core::Config;

/// What kind of listener a port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ListenerKind {
    /// Reads the ClientHello first; the SNI picks the server.
    Tls,
    /// Plain TCP: the port picks the route.
    Tcp,
}

/// One Gateway server on a port, with the routes bound to it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerEntry {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    /// Index in the Gateway's `spec.servers`.
    pub index: usize,
    pub server: Server,
    /// Candidate routes in precedence order (VirtualServices oldest first,
    /// then by name, then by namespace, as Istio; routes in document order).
    pub routes: Vec<Candidate>,
}

impl ServerEntry {
    /// The TLS mode (`None` for a plain TCP server).
    pub fn mode(&self) -> Option<TlsMode> {
        self.server.tls.as_ref().map(|t| t.mode)
    }

    /// The `mode` label of this server's connections.
    pub fn mode_label(&self) -> &'static str {
        self.mode().map_or("TCP", TlsMode::as_str)
    }

    /// TLS settings of a terminating server.
    pub fn terminating_tls(&self) -> Option<&ServerTls> {
        self.server.tls.as_ref().filter(|t| t.mode.terminates())
    }
}

/// A VirtualService route that may apply to a server.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// `namespace/name#tls[i]` or `namespace/name#tcp[i]`: the `route` label.
    pub name: String,
    /// The VirtualService's namespace (destination short names are relative to it).
    pub namespace: String,
    pub kind: CandidateKind,
    pub route: Vec<RouteDestination>,
    /// The server hosts that admit the VirtualService's namespace (and meet
    /// one of its hosts): an SNI outside them is not this route's, even if
    /// its `sniHosts` say so, so a namespace admitted on one host of a
    /// server cannot take another namespace's hosts on it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_hosts: Vec<HostPattern>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CandidateKind {
    /// A `tls` route: any of these (SNI patterns, port) pairs.
    Tls(Vec<(Vec<HostPattern>, Option<u16>)>),
    /// A `tcp` route: any of these ports (`None` = any port); no match
    /// entries at all means every connection.
    Tcp(Vec<Option<u16>>),
}

/// The route a connection takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub namespace: String,
    pub route: Vec<RouteDestination>,
}

/// Every listener of this instance.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteTable {
    pub listeners: BTreeMap<u16, Listener>,
    /// Problems found while building (conflicting servers): logged on change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    pub port: u16,
    pub kind: ListenerKind,
    pub servers: Vec<ServerEntry>,
}

/// Whether a VirtualService may attach to a server: it names the Gateway,
/// one of its hosts intersects one of the server's hosts, and that host
/// admits the VirtualService's namespace.
fn attaches(vs: &VirtualService, gw: &ObjectMeta, server: &Server) -> bool {
    vs.binds(gw) && server.admits(vs, &gw.namespace)
}

fn candidates(
    config: &Config,
    gw: &Gateway,
    server: &Server,
    namespace: Option<&str>,
    problems: &mut Vec<String>,
) -> Vec<Candidate> {
    let mut vss: Vec<&VirtualService> = config
        .virtual_services
        .iter()
        .filter(|vs| namespace.is_none_or(|ns| vs.visible_to(ns)))
        .filter(|vs| attaches(vs, &gw.metadata, server))
        .collect();
    // Istio's sortConfigByCreationTime: oldest first, then by name, then
    // by namespace.
    vss.sort_by(|a, b| {
        (
            &a.metadata.creation_timestamp,
            &a.metadata.name,
            &a.metadata.namespace,
        )
            .cmp(&(
                &b.metadata.creation_timestamp,
                &b.metadata.name,
                &b.metadata.namespace,
            ))
    });
    let bound_here = |gateways: &[weir_core::config::GatewayRef]| {
        gateways.is_empty() || gateways.iter().any(|g| g.is(&gw.metadata))
    };
    let mut out = Vec::new();
    // The SNI names `tls` matches have taken on this server (by port): as
    // Istio builds a passthrough server's filter chains, a later match
    // naming one again is skipped whole (its other names get no route).
    let mut sni_taken: Vec<(Option<u16>, HostPattern)> = Vec::new();
    for vs in vss {
        let key = vs.metadata.key();
        let server_hosts: Vec<HostPattern> = server
            .hosts
            .iter()
            .filter(|h| {
                h.admits_namespace(&vs.metadata.namespace, &gw.metadata.namespace)
                    && vs.hosts.iter().any(|vh| vh.intersects(&h.host))
            })
            .map(|h| h.host.clone())
            .collect();
        for (i, r) in vs.tls.iter().enumerate() {
            let mut matches = Vec::new();
            for m in r.matches.iter().filter(|m| bound_here(&m.gateways)) {
                if let Some(dup) = m
                    .sni_hosts
                    .iter()
                    .find(|h| sni_taken.iter().any(|(p, t)| *p == m.port && t == *h))
                {
                    problems.push(format!(
                        "VirtualService {key} tls[{i}]: a match is skipped on Gateway {}: its SNI host {dup} is already routed by an earlier match (as Istio, duplicate SNI hosts are not routed twice)",
                        gw.metadata.key(),
                    ));
                    continue;
                }
                sni_taken.extend(m.sni_hosts.iter().map(|h| (m.port, h.clone())));
                matches.push((m.sni_hosts.clone(), m.port));
            }
            if !matches.is_empty() {
                out.push(Candidate {
                    name: format!("{key}#tls[{i}]"),
                    namespace: vs.metadata.namespace.clone(),
                    kind: CandidateKind::Tls(matches),
                    route: r.route.clone(),
                    server_hosts: server_hosts.clone(),
                });
            }
        }
        if server.is_passthrough() {
            // Istio builds a PASSTHROUGH server's filter chains from `tls`
            // routes only: an SNI no `tls` route names is refused, never
            // handed to a `tcp` route.
            continue;
        }
        for (i, r) in vs.tcp.iter().enumerate() {
            let ports: Vec<_> = r
                .matches
                .iter()
                .filter(|m| bound_here(&m.gateways))
                .map(|m| m.port)
                .collect();
            if r.matches.is_empty() || !ports.is_empty() {
                out.push(Candidate {
                    name: format!("{key}#tcp[{i}]"),
                    namespace: vs.metadata.namespace.clone(),
                    kind: CandidateKind::Tcp(ports),
                    route: r.route.clone(),
                    server_hosts: server_hosts.clone(),
                });
            }
        }
    }
    out
}

impl RouteTable {
    /// The listeners of a gateway instance with `labels`.
    pub fn build(config: &Config, labels: &BTreeMap<String, String>) -> RouteTable {
        Self::build_in(config, labels, None)
    }

    /// [`RouteTable::build`] for a gateway instance in `namespace`: only
    /// VirtualServices whose `exportTo` makes them visible there are used,
    /// as Istio's gateways see them (`None`: every VirtualService).
    pub fn build_in(
        config: &Config,
        labels: &BTreeMap<String, String>,
        namespace: Option<&str>,
    ) -> RouteTable {
        let mut table = RouteTable::default();
        let mut gateways: Vec<&Gateway> = config.gateways_selecting(labels).collect();
        // Istio's order (sortConfigByCreationTime): oldest first, then by
        // name, then by namespace.
        gateways.sort_by(|a, b| {
            (
                &a.metadata.creation_timestamp,
                &a.metadata.name,
                &a.metadata.namespace,
            )
                .cmp(&(
                    &b.metadata.creation_timestamp,
                    &b.metadata.name,
                    &b.metadata.namespace,
                ))
        });
        // The hosts of the TLS servers kept so far, per port: as Istio
        // merges Gateways (CheckDuplicates), a later server naming a host
        // an earlier one on its port has is dropped whole, so the first
        // Gateway keeps the name (a terminating server of another Gateway
        // cannot take over a passthrough server's host by being more
        // specific for it).
        let mut tls_hosts: BTreeMap<u16, Vec<(&GatewayHost, String)>> = BTreeMap::new();
        for gw in gateways {
            for (index, server) in gw.servers.iter().enumerate() {
                let kind = if server.tls.is_some() {
                    ListenerKind::Tls
                } else {
                    debug_assert_eq!(server.port.protocol, ServerProtocol::Tcp);
                    ListenerKind::Tcp
                };
                let port = server.port.number;
                let listener = table.listeners.entry(port).or_insert_with(|| Listener {
                    port,
                    kind,
                    servers: Vec::new(),
                });
                let conflict = listener.kind != kind
                    || (kind == ListenerKind::Tcp && !listener.servers.is_empty());
                if conflict {
                    table.problems.push(format!(
                        "Gateway {} server {index} (port {port}) conflicts with Gateway {} on the same port and is ignored: a port carries either TLS servers told apart by SNI host or one TCP server",
                        gw.metadata.key(),
                        listener.servers.first().map_or("?", |s| s.gateway.as_str()),
                    ));
                    continue;
                }
                if kind == ListenerKind::Tls {
                    let seen = tls_hosts.entry(port).or_default();
                    let duplicate = server
                        .hosts
                        .iter()
                        .find_map(|h| seen.iter().find(|(s, _)| *s == h));
                    if let Some((host, owner)) = duplicate {
                        table.problems.push(format!(
                            "Gateway {} server {index} (port {port}) is ignored: its host {} is already a host of {owner} on that port (as Istio, the first Gateway keeps a host name)",
                            gw.metadata.key(),
                            host.host,
                        ));
                        continue;
                    }
                    let owner = format!("Gateway {} server {index}", gw.metadata.key());
                    seen.extend(server.hosts.iter().map(|h| (h, owner.clone())));
                }
                listener.servers.push(ServerEntry {
                    gateway: gw.metadata.key(),
                    index,
                    server: server.clone(),
                    routes: candidates(config, gw, server, namespace, &mut table.problems),
                });
            }
        }
        table
    }

    /// Gives `port` to another listener, `owner` (e.g. `KafkaGateway
    /// kafka/external`): the Gateway servers on it are dropped from this
    /// instance's table, each reported as a problem naming both.
    pub fn yield_port(&mut self, port: u16, owner: &str) {
        let Some(l) = self.listeners.remove(&port) else {
            return;
        };
        for s in &l.servers {
            self.problems.push(format!(
                "Gateway {} server {} (port {port}) conflicts with {owner} on the same port and is ignored: on a gateway instance both select, the port is the {owner}'s; use another port, or selectors that do not both match",
                s.gateway, s.index,
            ));
        }
    }

    /// The server of `port` that handles a connection with `sni`, among
    /// those with a host matching it, as Envoy picks a filter chain by
    /// server name: a PASSTHROUGH server is ranked by its most specific
    /// `tls` route for `sni` (its chain's names are the routes' sniHosts),
    /// a terminating one by its most specific host; the highest wins (on a
    /// tie the more specific server host, then the first Gateway). A PASSTHROUGH server without a route for
    /// `sni` counts only if no server has one (so the refusal names it).
    /// For a TCP listener, its server.
    pub fn server(&self, port: u16, sni: Option<&str>) -> Option<&ServerEntry> {
        let l = self.listeners.get(&port)?;
        if l.kind == ListenerKind::Tcp {
            return l.servers.first();
        }
        // Ties go to the more specific server host.
        let mut routed: Option<(&ServerEntry, (usize, usize))> = None;
        for s in &l.servers {
            let Some((_, host)) = s.server.best_host(sni) else {
                continue;
            };
            let spec = if s.mode() == Some(TlsMode::Passthrough) {
                match best_tls(s, port, sni) {
                    Some((_, spec)) => spec,
                    None => continue,
                }
            } else {
                host
            };
            if routed.is_none_or(|(_, b)| (spec, host) > b) {
                routed = Some((s, (spec, host)));
            }
        }
        if let Some((s, _)) = routed {
            return Some(s);
        }
        let mut best: Option<(&ServerEntry, usize)> = None;
        for s in &l.servers {
            if let Some((_, spec)) = s.server.best_host(sni) {
                if best.is_none_or(|(_, b)| spec > b) {
                    best = Some((s, spec));
                }
            }
        }
        best.map(|(s, _)| s)
    }
}

/// The route for a connection on `port` with `sni` handled by `server`.
/// On a PASSTHROUGH server (which has no `tcp` candidates): the `tls` route
/// whose SNI pattern matches most specifically (earliest on a tie). On a
/// terminating or TCP server: the first `tcp` route for the port, as Istio
/// routes the plaintext of a terminated server; failing that (a weir
/// extension) the best `tls` route by SNI. The SNI must also be one of the
/// server's hosts (already true when `server` came from
/// [`RouteTable::server`]).
pub fn route(server: &ServerEntry, port: u16, sni: Option<&str>) -> Option<Route> {
    let tcp = || {
        server.routes.iter().find(|c| match &c.kind {
            CandidateKind::Tcp(ports) => {
                ports.is_empty() || ports.iter().any(|p| p.is_none_or(|p| p == port))
            }
            CandidateKind::Tls(_) => false,
        })
    };
    let passthrough = server.mode() == Some(TlsMode::Passthrough);
    let chosen = match (!passthrough).then(tcp).flatten() {
        Some(c) => Some(c),
        None => best_tls(server, port, sni).map(|(c, _)| c),
    }?;
    Some(Route {
        name: chosen.name.clone(),
        namespace: chosen.namespace.clone(),
        route: chosen.route.clone(),
    })
}

/// The `tls` route of `server` whose SNI pattern matches `sni` most
/// specifically (earliest on a tie), with that pattern's specificity.
fn best_tls<'a>(
    server: &'a ServerEntry,
    port: u16,
    sni: Option<&str>,
) -> Option<(&'a Candidate, usize)> {
    let mut best: Option<(&Candidate, usize)> = None;
    for c in &server.routes {
        let CandidateKind::Tls(matches) = &c.kind else {
            continue;
        };
        let admitted = match sni {
            Some(s) => c.server_hosts.iter().any(|h| h.matches(s)),
            None => c.server_hosts.contains(&HostPattern::Any),
        };
        if !admitted {
            continue;
        }
        for (hosts, p) in matches {
            if p.is_some_and(|p| p != port) {
                continue;
            }
            for h in hosts {
                let ok = match sni {
                    Some(s) => h.matches(s),
                    None => *h == HostPattern::Any,
                };
                let spec = h.specificity();
                if ok && best.is_none_or(|(_, b)| spec > b) {
                    best = Some((c, spec));
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use weir_core::config::SourceFile;
    use weir_core::MeshSettings;

    use super::*;

    fn config(yaml: &str) -> Config {
        Config::from_sources(&[SourceFile::new("r.yaml", yaml)], MeshSettings::default())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn labels(s: &[(&str, &str)]) -> BTreeMap<String, String> {
        s.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    const YAML: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8883, name: tls-mqtt, protocol: TLS}
    hosts: ["mqtt/*.mqtt.example.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 8883, name: tls-term, protocol: TLS}
    hosts: ["secure.mqtt.example.com"]
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
  - port: {number: 6651, name: tls-pulsar, protocol: TLS}
    hosts: ["*"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 1883, name: mqtt, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: other, namespace: x}
spec:
  selector: {app: elsewhere}
  servers:
  - port: {number: 9999, name: tls, protocol: TLS}
    hosts: ["*"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: brokers, namespace: mqtt}
spec:
  hosts: ["*.mqtt.example.com"]
  gateways: [istio-system/edge]
  tls:
  - match: [{sniHosts: ["*.mqtt.example.com"], port: 8883}]
    route: [{destination: {host: fallback.mqtt.svc.cluster.local, port: {number: 8883}}}]
  - match: [{sniHosts: [a.mqtt.example.com]}]
    route: [{destination: {host: a.mqtt.svc.cluster.local, port: {number: 8883}}}]
  - match: [{sniHosts: [b.mqtt.example.com], port: 9999}]
    route: [{destination: {host: b.mqtt.svc.cluster.local, port: {number: 8883}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wrong-namespace, namespace: apps}
spec:
  hosts: ["c.mqtt.example.com"]
  gateways: [istio-system/edge]
  tls:
  - match: [{sniHosts: [c.mqtt.example.com]}]
    route: [{destination: {host: c.apps.svc.cluster.local, port: {number: 8883}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pulsar, namespace: pulsar}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge, mesh]
  tls:
  - match: [{sniHosts: [pulsar.example.com], gateways: [mesh]}]
    route: [{destination: {host: not-for-gateways, port: {number: 6651}}}]
  - match: [{sniHosts: [pulsar.example.com]}]
    route: [{destination: {host: broker.pulsar.svc.cluster.local, port: {number: 6651}}}]
  tcp:
  - match: [{port: 1883}]
    route: [{destination: {host: plain.mqtt.svc.cluster.local, port: {number: 1883}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: unbound, namespace: mqtt}
spec:
  hosts: ["*.mqtt.example.com"]
  tls:
  - match: [{sniHosts: [z.mqtt.example.com]}]
    route: [{destination: {host: z, port: {number: 1}}}]
"#;

    fn dest(r: &Route) -> &str {
        &r.route[0].destination.host
    }

    #[test]
    fn listeners_come_from_selected_gateways_only() {
        let c = config(YAML);
        let t = RouteTable::build(&c, &labels(&[("istio", "ingressgateway"), ("x", "y")]));
        assert_eq!(
            t.listeners.keys().copied().collect::<Vec<_>>(),
            vec![1883, 6651, 8883]
        );
        assert_eq!(t.listeners[&8883].kind, ListenerKind::Tls);
        assert_eq!(t.listeners[&8883].servers.len(), 2);
        assert_eq!(t.listeners[&1883].kind, ListenerKind::Tcp);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let t = RouteTable::build(&c, &labels(&[("app", "elsewhere")]));
        assert_eq!(t.listeners.keys().copied().collect::<Vec<_>>(), vec![9999]);
        assert!(RouteTable::build(&c, &labels(&[])).listeners.is_empty());
    }

    /// A namespace admitted on one host of a server cannot take another
    /// namespace's host on it with a more specific sniHost (as Istio fixed
    /// for TLSRoute, istio/istio#59229).
    #[test]
    fn a_route_gets_only_the_server_hosts_its_namespace_is_admitted_on() {
        let c = config(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shared, namespace: ingress}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: tls, protocol: TLS}
    hosts: [team-a/*.a.example.com, team-b/b.example.com]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: team-a}
spec:
  hosts: ["*.a.example.com"]
  gateways: [ingress/shared]
  tls:
  - match: [{sniHosts: ["*.a.example.com"]}]
    route: [{destination: {host: a-backend, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: team-b}
spec:
  hosts: ["*"]
  gateways: [ingress/shared]
  tls:
  - match: [{sniHosts: [login.a.example.com, b.example.com]}]
    route: [{destination: {host: b-backend, port: {number: 443}}}]
"#,
        );
        let t = RouteTable::build(&c, &labels(&[("istio", "ingressgateway")]));
        let s = t.server(8443, Some("login.a.example.com")).unwrap();
        let r = route(s, 8443, Some("login.a.example.com")).unwrap();
        assert_eq!(r.name, "team-a/a#tls[0]", "team-b took team-a's host");
        let s = t.server(8443, Some("b.example.com")).unwrap();
        assert_eq!(
            route(s, 8443, Some("b.example.com")).unwrap().name,
            "team-b/b#tls[0]"
        );
    }

    #[test]
    fn sni_picks_the_most_specific_server_then_route() {
        let c = config(YAML);
        let t = RouteTable::build(&c, &labels(&[("istio", "ingressgateway")]));
        // The exact server host beats the wildcard one.
        let s = t.server(8883, Some("secure.mqtt.example.com")).unwrap();
        assert_eq!(s.mode(), Some(TlsMode::Simple));
        let s = t.server(8883, Some("a.mqtt.example.com")).unwrap();
        assert_eq!(s.mode(), Some(TlsMode::Passthrough));
        // The exact sniHost beats the earlier wildcard route.
        let r = route(s, 8883, Some("a.mqtt.example.com")).unwrap();
        assert_eq!(dest(&r), "a.mqtt.svc.cluster.local");
        assert_eq!(r.name, "mqtt/brokers#tls[1]");
        // b's route is for port 9999 only: the wildcard route takes it here.
        let r = route(s, 8883, Some("b.mqtt.example.com")).unwrap();
        assert_eq!(dest(&r), "fallback.mqtt.svc.cluster.local");
        // Unknown SNI: no server host matches.
        assert!(t.server(8883, Some("kafka.example.com")).is_none());
        assert!(t.server(8883, None).is_none());
        // c's VirtualService is in a namespace the server host does not admit.
        let s = t.server(8883, Some("c.mqtt.example.com")).unwrap();
        assert_eq!(
            dest(&route(s, 8883, Some("c.mqtt.example.com")).unwrap()),
            "fallback.mqtt.svc.cluster.local"
        );
        // z's VirtualService is not bound to any gateway.
        assert_eq!(
            dest(&route(s, 8883, Some("z.mqtt.example.com")).unwrap()),
            "fallback.mqtt.svc.cluster.local"
        );
    }

    #[test]
    fn match_level_gateways_and_tcp_routes() {
        let c = config(YAML);
        let t = RouteTable::build(&c, &labels(&[("istio", "ingressgateway")]));
        let s = t.server(6651, Some("pulsar.example.com")).unwrap();
        // The match restricted to `mesh` is skipped; the next one applies.
        assert_eq!(
            dest(&route(s, 6651, Some("pulsar.example.com")).unwrap()),
            "broker.pulsar.svc.cluster.local"
        );
        assert!(route(s, 6651, Some("other.example.com")).is_none());
        assert!(
            route(s, 6651, None).is_none(),
            "no SNI, no tls route with sniHosts *"
        );
        let s = t.server(1883, None).unwrap();
        assert_eq!(s.mode_label(), "TCP");
        assert_eq!(
            dest(&route(s, 1883, None).unwrap()),
            "plain.mqtt.svc.cluster.local"
        );
    }

    #[test]
    fn on_a_passthrough_port_the_most_specific_route_picks_the_server() {
        // Istio: a catch-all server's exact sniHost beats another server's
        // wildcard route for that name (Envoy's filter chain names are the
        // routes' sniHosts); weir used to pick the server first, by host.
        // Each VirtualService attaches to one server (namespaced hosts).
        let c = config(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  servers:
  - port: {number: 6651, name: tls-any, protocol: TLS}
    hosts: ["apps/*"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 6651, name: tls-example, protocol: TLS}
    hosts: ["other/*.example.com"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: exact, namespace: apps}
spec:
  hosts: [foo.example.com]
  gateways: [istio-system/edge]
  tls:
  - match: [{sniHosts: [foo.example.com]}]
    route: [{destination: {host: foo.apps.svc.cluster.local, port: {number: 6651}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wildcard, namespace: other}
spec:
  hosts: ["*.example.com"]
  gateways: [istio-system/edge]
  tls:
  - match: [{sniHosts: ["*.example.com"]}]
    route: [{destination: {host: any.other.svc.cluster.local, port: {number: 6651}}}]
"#,
        );
        let t = RouteTable::build(&c, &labels(&[]));
        let pick = |sni: &str| {
            let s = t.server(6651, Some(sni)).unwrap();
            dest(&route(s, 6651, Some(sni)).unwrap()).to_owned()
        };
        assert_eq!(pick("foo.example.com"), "foo.apps.svc.cluster.local");
        assert_eq!(pick("bar.example.com"), "any.other.svc.cluster.local");
    }

    #[test]
    fn export_to_hides_virtual_services_from_gateways_in_other_namespaces() {
        let vs = |name: &str, export: &str| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: kafka}}\nspec:\n  hosts: ['*']\n  gateways: [istio-system/edge]\n  exportTo: {export}\n  tcp:\n  - route: [{{destination: {{host: {name}.example.net, port: {{number: 1}}}}}}]\n")
        };
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: istio-system}}\nspec:\n  servers:\n  - port: {{number: 1883, name: mqtt, protocol: TCP}}\n    hosts: ['*/*']\n{}{}",
            vs("aaa-private", "['.']"),
            vs("bbb-exported", "[istio-system]")
        );
        let c = config(&yaml);
        let first = |ns: Option<&str>| {
            let t = RouteTable::build_in(&c, &labels(&[]), ns);
            let s = t.server(1883, None).unwrap();
            dest(&route(s, 1883, None).unwrap()).to_owned()
        };
        // A gateway in istio-system does not see the kafka-only one.
        assert_eq!(first(Some("istio-system")), "bbb-exported.example.net");
        // One in kafka sees both (name order).
        assert_eq!(first(Some("kafka")), "aaa-private.example.net");
        assert_eq!(first(None), "aaa-private.example.net");
    }

    #[test]
    fn virtual_services_of_the_same_age_are_taken_by_name_then_namespace() {
        // Istio's sortConfigByCreationTime: aaa (in namespace zzz) comes
        // before zzz (in namespace aaa).
        let vs = |ns: &str, name: &str| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: ['*']\n  gateways: [istio-system/edge]\n  tcp:\n  - route: [{{destination: {{host: {ns}-{name}.example.net, port: {{number: 1}}}}}}]\n")
        };
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: istio-system}}\nspec:\n  servers:\n  - port: {{number: 1883, name: mqtt, protocol: TCP}}\n    hosts: ['*/*']\n{}{}",
            vs("aaa", "zzz"),
            vs("zzz", "aaa")
        );
        let t = RouteTable::build(&config(&yaml), &labels(&[]));
        let s = t.server(1883, None).unwrap();
        assert_eq!(dest(&route(s, 1883, None).unwrap()), "zzz-aaa.example.net");
    }

    #[test]
    fn a_terminating_server_takes_its_tcp_route_before_a_tls_route() {
        // As Istio: a terminated server's plaintext goes by `tcp` routes; a
        // `tls` route naming the same SNI (meant for the PASSTHROUGH server
        // on the port) must not get the decrypted bytes. Without a `tcp`
        // route, weir still honours the `tls` route.
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  servers:
  - port: {number: 8883, name: tls-pass, protocol: TLS}
    hosts: ["*.example.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 8883, name: tls-term, protocol: TLS}
    hosts: ["legacy.example.com"]
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mqtt, namespace: apps}
spec:
  hosts: ["*.example.com"]
  gateways: [istio-system/edge]
  tls:
  - match: [{sniHosts: ["*.example.com"]}]
    route: [{destination: {host: tls-broker.apps.svc.cluster.local, port: {number: 8883}}}]
TCP
"#;
        let tcp = "  tcp:\n  - route: [{destination: {host: plain-broker.apps.svc.cluster.local, port: {number: 1883}}}]";
        let c = config(&yaml.replace("TCP", tcp));
        let t = RouteTable::build(&c, &labels(&[]));
        let legacy = t.server(8883, Some("legacy.example.com")).unwrap();
        assert_eq!(legacy.mode(), Some(TlsMode::Simple));
        let r = route(legacy, 8883, Some("legacy.example.com")).unwrap();
        assert_eq!(dest(&r), "plain-broker.apps.svc.cluster.local");
        let other = t.server(8883, Some("a.example.com")).unwrap();
        assert_eq!(
            dest(&route(other, 8883, Some("a.example.com")).unwrap()),
            "tls-broker.apps.svc.cluster.local"
        );
        let c = config(&yaml.replace("TCP", ""));
        let t = RouteTable::build(&c, &labels(&[]));
        let legacy = t.server(8883, Some("legacy.example.com")).unwrap();
        assert_eq!(
            dest(&route(legacy, 8883, Some("legacy.example.com")).unwrap()),
            "tls-broker.apps.svc.cluster.local"
        );
    }

    #[test]
    fn tcp_routes_apply_to_terminating_servers_not_passthrough_ones() {
        // One VirtualService with a catch-all `tcp` route on both servers
        // of a port: Istio routes the SIMPLE server's connections by it and
        // refuses a PASSTHROUGH server's SNI that no `tls` route names.
        let c = config(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  servers:
  - port: {number: 9443, name: tls-pass, protocol: TLS}
    hosts: ["pass.example.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 9443, name: tls-term, protocol: TLS}
    hosts: ["term.example.com"]
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: catch-all, namespace: apps}
spec:
  hosts: ["*.example.com"]
  gateways: [istio-system/edge]
  tcp:
  - route: [{destination: {host: backend.apps.svc.cluster.local, port: {number: 9000}}}]
"#,
        );
        let t = RouteTable::build(&c, &labels(&[]));
        let term = t.server(9443, Some("term.example.com")).unwrap();
        assert_eq!(term.mode(), Some(TlsMode::Simple));
        let r = route(term, 9443, Some("term.example.com")).unwrap();
        assert_eq!(r.name, "apps/catch-all#tcp[0]");
        assert_eq!(dest(&r), "backend.apps.svc.cluster.local");
        let pass = t.server(9443, Some("pass.example.com")).unwrap();
        assert_eq!(pass.mode(), Some(TlsMode::Passthrough));
        assert!(pass.routes.is_empty(), "{:?}", pass.routes);
        assert!(route(pass, 9443, Some("pass.example.com")).is_none());
    }

    #[test]
    fn conflicting_servers_are_reported() {
        let c = config(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: a}\nspec:\n  servers:\n  - port: {number: 9000, name: t, protocol: TLS}\n    hosts: ['*']\n    tls: {mode: PASSTHROUGH}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: b}\nspec:\n  servers:\n  - port: {number: 9000, name: t, protocol: TCP}\n    hosts: ['*']\n",
        );
        let t = RouteTable::build(&c, &labels(&[]));
        assert_eq!(t.listeners[&9000].servers.len(), 1);
        assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
        assert!(t.problems[0].contains("default/b"), "{:?}", t.problems);

        // Equally old: by name, then namespace (Istio's order), so zzz/aaa
        // keeps the port before aaa/zzz.
        let gw = |ns: &str, name: &str| {
            format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  servers:\n  - port: {{number: 1883, name: t, protocol: TCP}}\n    hosts: ['*']\n")
        };
        let c = config(&format!("{}---\n{}", gw("aaa", "zzz"), gw("zzz", "aaa")));
        let t = RouteTable::build(&c, &labels(&[]));
        assert_eq!(t.server(1883, None).unwrap().gateway, "zzz/aaa");
        assert!(t.problems[0].contains("aaa/zzz"), "{:?}", t.problems);
    }

    /// As Istio builds a passthrough server's filter chains: a `tls` match
    /// naming an SNI host an earlier match already routes is skipped
    /// whole, so its other hosts get no route either; reported.
    #[test]
    fn a_match_with_a_duplicate_sni_host_is_skipped_whole() {
        let c = config(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  servers:
  - port: {number: 9093, name: kafka, protocol: TLS}
    hosts: ["*.kafka.example.com"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: brokers, namespace: kafka}
spec:
  hosts: ["*.kafka.example.com"]
  gateways: [istio-system/edge]
  tls:
  - match: [{sniHosts: [b0.kafka.example.com]}]
    route: [{destination: {host: 10.0.0.10, port: {number: 9093}}}]
  - match: [{sniHosts: [b0.kafka.example.com, b1.kafka.example.com]}]
    route: [{destination: {host: 10.0.0.11, port: {number: 9093}}}]
"#,
        );
        let t = RouteTable::build(&c, &labels(&[]));
        let s = t.server(9093, Some("b0.kafka.example.com")).unwrap();
        let r = route(s, 9093, Some("b0.kafka.example.com")).unwrap();
        assert_eq!(r.name, "kafka/brokers#tls[0]");
        assert!(
            t.server(9093, Some("b1.kafka.example.com"))
                .and_then(|s| route(s, 9093, Some("b1.kafka.example.com")))
                .is_none(),
            "b1 is not routed"
        );
        assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
        assert!(
            t.problems[0].contains("kafka/brokers tls[1]"),
            "{:?}",
            t.problems
        );
    }

    /// As Istio merges Gateways: a TLS server naming a host an earlier
    /// server on its port has is dropped, so a terminating server of a
    /// later Gateway cannot take a passthrough server's host (it would be
    /// the more specific match for it). Other hosts share the port.
    #[test]
    fn a_host_already_served_on_a_port_is_not_taken_by_a_later_server() {
        let c = config(
            r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: a-pass, namespace: istio-system, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  servers:
  - port: {number: 8883, name: mqtt, protocol: TLS}
    hosts: ["mqtt.example.com"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: b-term, namespace: istio-system, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  servers:
  - port: {number: 8883, name: mqtt, protocol: TLS}
    hosts: ["mqtt.example.com"]
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
  - port: {number: 8883, name: other, protocol: TLS}
    hosts: ["other.example.com"]
    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mqtt, namespace: apps}
spec:
  hosts: ["*.example.com"]
  gateways: [istio-system/a-pass, istio-system/b-term]
  tls:
  - match: [{sniHosts: ["*.example.com"]}]
    route: [{destination: {host: 10.0.0.7, port: {number: 8883}}}]
  tcp:
  - route: [{destination: {host: 10.0.0.9, port: {number: 1883}}}]
"#,
        );
        let t = RouteTable::build(&c, &labels(&[]));
        let s = t.server(8883, Some("mqtt.example.com")).unwrap();
        assert_eq!(s.gateway, "istio-system/a-pass");
        assert_eq!(s.mode(), Some(TlsMode::Passthrough));
        let other = t.server(8883, Some("other.example.com")).unwrap();
        assert_eq!(
            (other.gateway.as_str(), other.index),
            ("istio-system/b-term", 1)
        );
        assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
        assert!(
            t.problems[0].starts_with("Gateway istio-system/b-term server 0 (port 8883) is ignored: its host mqtt.example.com is already a host of Gateway istio-system/a-pass server 0"),
            "{:?}",
            t.problems
        );
    }

    #[test]
    fn a_port_yielded_to_another_listener_drops_its_servers_and_reports_them() {
        let c = config(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: istio-system}\nspec:\n  servers:\n  - port: {number: 9094, name: t, protocol: TLS}\n    hosts: ['*.other.com']\n    tls: {mode: PASSTHROUGH}\n  - port: {number: 9094, name: t2, protocol: TLS}\n    hosts: ['x.other.com']\n    tls: {mode: PASSTHROUGH}\n  - port: {number: 8443, name: t3, protocol: TLS}\n    hosts: ['*']\n    tls: {mode: PASSTHROUGH}\n",
        );
        let mut t = RouteTable::build(&c, &labels(&[]));
        assert!(t.problems.is_empty());
        t.yield_port(9094, "KafkaGateway kafka/external");
        t.yield_port(1234, "KafkaGateway kafka/nothing-here");
        assert_eq!(t.listeners.keys().copied().collect::<Vec<_>>(), [8443]);
        assert!(t.server(9094, Some("a.other.com")).is_none());
        assert_eq!(t.problems.len(), 2, "{:?}", t.problems);
        assert!(
            t.problems[0].starts_with("Gateway istio-system/edge server 0 (port 9094) conflicts with KafkaGateway kafka/external on the same port and is ignored"),
            "{:?}",
            t.problems
        );
        assert!(
            t.problems[1].contains("server 1 (port 9094)"),
            "{:?}",
            t.problems
        );
    }
}
