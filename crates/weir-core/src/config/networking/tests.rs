use super::*;
use crate::config::{MeshSettings, SourceFile};

fn load(yaml: &str) -> Config {
    match Config::from_sources(&[SourceFile::new("n.yaml", yaml)], MeshSettings::default()) {
        Ok(c) => c,
        Err(e) => panic!("expected to load:\n{e}\n---\n{yaml}"),
    }
}

fn errors(yaml: &str) -> Vec<ConfigError> {
    match Config::from_sources(&[SourceFile::new("n.yaml", yaml)], MeshSettings::default()) {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(e) => e.0,
    }
}

#[track_caller]
fn one_error(yaml: &str, field: &str, needle: &str) -> ConfigError {
    let e = errors(yaml);
    let found = e
        .iter()
        .find(|e| e.field.as_deref() == Some(field))
        .unwrap_or_else(|| panic!("no error at {field}: {e:#?}"));
    assert!(
        found.message.contains(needle),
        "error at {field}: {:?} does not mention {needle:?}",
        found.message
    );
    found.clone()
}

fn workload(name: &str, ns: &str, ip: &str, labels: &str) -> String {
    format!(
        "---\napiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{serviceAccount: {name}, address: {ip}, node: n}}\n"
    )
}

// ---------------------------------------------------------------- host patterns

#[test]
fn host_patterns_match_like_istio() {
    let p = |s: &str| HostPattern::parse(s).unwrap();
    assert!(p("*").matches("anything.example.com"));
    assert!(p("*.example.com").matches("a.example.com"));
    assert!(p("*.example.com").matches("b.a.EXAMPLE.com"));
    assert!(!p("*.example.com").matches("example.com"));
    assert!(!p("*.example.com").matches("aexample.com"));
    assert!(p("Broker-0.Example.com").matches("broker-0.example.com."));
    assert!(!p("broker-0.example.com").matches("broker-1.example.com"));
    assert!(p("*.example.com").intersects(&p("a.example.com")));
    assert!(p("*.example.com").intersects(&p("*.a.example.com")));
    assert!(!p("*.example.com").intersects(&p("*.example.org")));
    assert!(p("*").intersects(&p("x.y")));
    assert!(p("a.example.com").specificity() > p("*.example.com").specificity());
    assert!(p("*.a.example.com").specificity() > p("*.example.com").specificity());
    assert!(p("*.example.com").specificity() > p("*").specificity());
    for bad in ["", "a.*.com", "*example.com", "a b", "a..b", "*.*"] {
        assert!(HostPattern::parse(bad).is_none(), "{bad:?}");
    }
}

// ---------------------------------------------------------------- Istio's documented examples

#[test]
fn istio_reference_examples_load() {
    let c = load(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: my-gateway
  namespace: some-config-namespace
spec:
  selector:
    app: my-gateway-controller
  servers:
  - port:
      number: 443
      name: https-443
      protocol: HTTPS
    hosts:
    - "bookinfo-namespace/*.bookinfo.com"
    tls:
      mode: SIMPLE # enables HTTPS on this port
      serverCertificate: /etc/certs/servercert.pem
      privateKey: /etc/certs/privatekey.pem
  - port:
      number: 9443
      name: https-9443
      protocol: HTTPS
    hosts:
    - "bookinfo-namespace/*.bookinfo.com"
    tls:
      mode: MUTUAL
      serverCertificate: /etc/certs/servercert.pem
      privateKey: /etc/certs/privatekey.pem
      caCertificates: /etc/certs/ca.pem
      minProtocolVersion: TLSV1_2
  - port:
      number: 2379 # to expose internal service via external port 2379
      name: mongo
      protocol: MONGO
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo-sni
  namespace: bookinfo-namespace
spec:
  hosts:
  - "*.bookinfo.com"
  gateways:
  - some-config-namespace/my-gateway
  tls:
  - match:
    - port: 443
      sniHosts:
      - login.bookinfo.com
    route:
    - destination:
        host: login.prod.svc.cluster.local
  - match:
    - port: 443
      sniHosts:
      - reviews.bookinfo.com
    route:
    - destination:
        host: reviews.prod.svc.cluster.local
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: bookinfo-mongo
spec:
  hosts:
  - mongo.prod.svc.cluster.local
  tcp:
  - match:
    - port: 27017
    route:
    - destination:
        host: mongo.backup.svc.cluster.local
        port:
          number: 5555
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: external-svc-mongocluster
spec:
  hosts:
  - mymongodb.somedomain # not used
  addresses:
  - 192.192.192.192/24 # VIPs
  ports:
  - number: 27018
    name: mongodb
    protocol: MONGO
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - address: 2.2.2.2
  - address: 3.3.3.3
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-dns
spec:
  hosts:
  - foo.bar.com
  location: MESH_EXTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  endpoints:
  - address: us.foo.bar.com
    ports:
      http: 8080
  - address: uk.foo.bar.com
    ports:
      http: 9080
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: details-svc
spec:
  hosts:
  - details.bookinfo.com
  location: MESH_INTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
    targetPort: 8080
  resolution: STATIC
  workloadSelector:
    labels:
      app: details-legacy
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: bookinfo-ratings
spec:
  host: ratings.prod.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
  subsets:
  - name: testversion
    labels:
      version: v3
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
"#,
    );
    assert_eq!(c.gateways.len(), 1);
    let g = &c.gateways[0];
    assert_eq!(g.servers.len(), 3);
    assert_eq!(g.servers[0].port.protocol, ServerProtocol::Tls);
    assert_eq!(g.servers[0].tls.as_ref().unwrap().mode, TlsMode::Simple);
    assert_eq!(
        g.servers[0].hosts[0].namespace,
        HostNamespace::Named("bookinfo-namespace".into())
    );
    assert_eq!(g.servers[1].tls.as_ref().unwrap().mode, TlsMode::Mutual);
    assert_eq!(g.servers[2].port.protocol, ServerProtocol::Tcp);
    assert!(g.servers[2].tls.is_none());
    assert!(g.selects(&[("app".into(), "my-gateway-controller".into())].into()));
    assert!(!g.selects(&[("istio".into(), "ingressgateway".into())].into()));

    assert_eq!(c.virtual_services.len(), 2);
    let vs = &c.virtual_services[0];
    assert!(vs.binds(&g.metadata));
    assert_eq!(vs.tls.len(), 2);
    assert_eq!(vs.tls[0].matches[0].port, Some(443));
    assert_eq!(vs.tls[0].route[0].weight, 100);
    assert_eq!(
        c.virtual_services[1].tcp[0].route[0].destination.port,
        Some(5555)
    );
    assert!(c.virtual_services[1].gateways.is_empty());

    assert_eq!(c.service_entries.len(), 3);
    assert_eq!(c.service_entries[1].resolution, Resolution::Dns);
    assert_eq!(
        c.service_entries[1].endpoints[0].address,
        EndpointAddress::Dns("us.foo.bar.com".into())
    );
    assert_eq!(c.destination_rules[0].subsets[0].name, "testversion");
    // HTTPS is carried as TLS, with a warning saying so.
    assert!(
        c.warnings
            .iter()
            .any(|w| w.field.as_deref() == Some("spec.servers[0].port.protocol")),
        "{:#?}",
        c.warnings
    );
    // Destinations that name nothing known are warnings, not errors.
    assert!(c.warnings.iter().any(|w| w.field.as_deref()
        == Some("spec.tls[0].route[0].destination")
        && w.message.contains("login.prod.svc.cluster.local")));
}

/// A Strimzi cluster exposed the way its users do it with Istio: one
/// PASSTHROUGH Gateway, a VirtualService and a ServiceEntry per broker
/// (broker-side TLS on 9093), per-broker DNS names.
#[test]
fn strimzi_per_broker_manifests_load() {
    let mut yaml = String::from(
        r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: kafka-gateway
  namespace: kafka
  annotations: {meta.helm.sh/release-name: kafka}
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 9093
      name: tls-kafka
      protocol: TLS
    tls:
      mode: PASSTHROUGH
    hosts:
    - bootstrap.kafka.example.com
    - broker-0.kafka.example.com
    - broker-1.kafka.example.com
status: {}
"#,
    );
    for b in 0..2 {
        yaml += &format!(
            r#"---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: kafka-broker-{b}
  namespace: kafka
spec:
  hosts:
  - broker-{b}.kafka.example.com
  gateways:
  - kafka-gateway
  tls:
  - match:
    - port: 9093
      sniHosts:
      - broker-{b}.kafka.example.com
    route:
    - destination:
        host: my-cluster-kafka-{b}.my-cluster-kafka-brokers.kafka.svc.cluster.local
        port:
          number: 9093
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: kafka-broker-{b}
  namespace: kafka
spec:
  hosts:
  - my-cluster-kafka-{b}.my-cluster-kafka-brokers.kafka.svc.cluster.local
  location: MESH_INTERNAL
  ports:
  - number: 9093
    name: tcp-kafka-tls
    protocol: TCP
  resolution: DNS
"#
        );
    }
    let c = load(&yaml);
    assert_eq!(c.virtual_services.len(), 2);
    assert_eq!(c.service_entries.len(), 2);
    let r = c
        .resolve_destination(&c.virtual_services[1].tls[0].route[0].destination, "kafka")
        .unwrap();
    assert_eq!(
        r.endpoints,
        vec![(
            Endpoint::Dns {
                host: "my-cluster-kafka-1.my-cluster-kafka-brokers.kafka.svc.cluster.local".into(),
                port: 9093
            },
            1
        )]
    );
    assert!(
        c.warnings.is_empty(),
        "clean manifests give no warnings: {:#?}",
        c.warnings
    );
}

/// StreamNative-style Pulsar (6651) and Kafka-on-Pulsar (9093) passthrough
/// with a wildcard server host and a custom gateway selector label.
#[test]
fn streamnative_style_manifests_load() {
    let c = load(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: pulsar-gateway
  namespace: pulsar
spec:
  selector:
    cloud.streamnative.io/role: istio-ingressgateway
  servers:
  - port: {number: 6651, name: tls-pulsar, protocol: TLS}
    hosts: ["*.pulsar.example.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 9093, name: tls-kafka, protocol: TLS}
    hosts: ["*.pulsar.example.com"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: pulsar-broker, namespace: pulsar}
spec:
  hosts: ["broker.pulsar.example.com", "*.broker.pulsar.example.com"]
  gateways: [pulsar/pulsar-gateway]
  exportTo: ["*"]
  tls:
  - match:
    - {port: 6651, sniHosts: [broker.pulsar.example.com]}
    route:
    - destination: {host: pulsar-broker.pulsar.svc.cluster.local, port: {number: 6651}}
  - match:
    - {port: 9093, sniHosts: ["*.broker.pulsar.example.com"]}
    route:
    - destination: {host: pulsar-broker.pulsar.svc.cluster.local, port: {number: 9093}}
"#,
    );
    let g = &c.gateways[0];
    assert!(g.selects(
        &[(
            "cloud.streamnative.io/role".into(),
            "istio-ingressgateway".into()
        )]
        .into()
    ));
    assert_eq!(c.virtual_services[0].tls.len(), 2);
}

// ---------------------------------------------------------------- errors and warnings

const GW: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: edge}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n";

#[test]
fn unknown_fields_are_located() {
    let e = one_error(
        &format!("{GW}  - port: {{number: 443, name: tls, protocol: TLS}}\n    hosts: ['*']\n    tls: {{mode: PASSTHROUGH, modee: SIMPLE}}\n"),
        "spec.servers[0].tls.modee",
        "unknown field \"modee\"",
    );
    let d = e.document.unwrap();
    assert_eq!(d.kind.as_deref(), Some("Gateway"));
    assert_eq!(d.name.as_deref(), Some("edge/gw"));
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a.example.com]\n  tls:\n  - match: [{sniHosts: [a.example.com], snihosts: [x]}]\n    route: [{destination: {host: a}}]\n",
        "spec.tls[0].match[0].snihosts",
        "unknown field",
    );
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [a.b], ports: [{number: 1, name: x}], endpoints: [{address: 1.2.3.4, prots: {}}]}\n",
        "spec.endpoints[0].prots",
        "unknown field",
    );
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: a, subsets: [{name: v1, label: {}}]}\n",
        "spec.subsets[0].label",
        "unknown field",
    );
    one_error(
        "apiVersion: weir.dev/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {app: a}, ports: [{port: 1}], clusterIp: None}\n",
        "spec.clusterIp",
        "unknown field",
    );
}

#[test]
fn what_a_tls_tcp_gateway_cannot_do_is_refused() {
    // Valid for Istio but not served by weir: that server is skipped with
    // a warning, the Gateway's other servers are served.
    let served = "  - port: {number: 9443, name: kafka, protocol: TLS}\n    hosts: ['*']\n    tls: {mode: PASSTHROUGH}\n";
    for (server, field, needle) in [
        (
            "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n",
            "spec.servers[0].port.protocol",
            "weir gateways carry TLS and TCP only",
        ),
        (
            "  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: ['*']\n    tls: {mode: AUTO_PASSTHROUGH}\n",
            "spec.servers[0].tls.mode",
            "AUTO_PASSTHROUGH is not supported",
        ),
        (
            "  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: ['*']\n    tls: {mode: SIMPLE, credentialName: my-secret}\n",
            "spec.servers[0].tls.credentialName",
            "mounted files only",
        ),
        (
            "  - port: {number: 443, name: tls, protocol: HTTPS}\n    hosts: ['*']\n    tls: {mode: MUTUAL, credentialNames: [a, b]}\n",
            "spec.servers[0].tls.credentialNames",
            "mounted files only",
        ),
    ] {
        let c = load(&format!("{GW}{server}{served}"));
        assert_eq!(c.gateways[0].servers.len(), 1);
        assert_eq!(c.gateways[0].servers[0].port.number, 9443);
        let w = c
            .warnings
            .iter()
            .find(|w| w.field.as_deref() == Some(field))
            .unwrap_or_else(|| panic!("no warning at {field}: {:#?}", c.warnings));
        assert!(
            w.message.contains("not served") && w.message.contains(needle),
            "{}",
            w.message
        );
    }
    // A skipped server is still validated.
    one_error(
        &format!(
            "{GW}  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: ['a/b/c']\n"
        ),
        "spec.servers[0].hosts[0]",
        "is not a host",
    );
    one_error(
        &format!("{GW}  - port: {{number: 443, name: tls, protocol: TLS}}\n    hosts: ['*']\n"),
        "spec.servers[0].tls",
        "needs tls.mode",
    );
    one_error(
        &format!("{GW}  - port: {{number: 443, name: tls, protocol: TLS}}\n    hosts: ['*']\n    tls: {{mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}}\n"),
        "spec.servers[0].tls.caCertificates",
        "MUTUAL needs caCertificates",
    );
    one_error(
        &format!("{GW}  - port: {{number: 443, name: tls, protocol: TLS}}\n    hosts: ['*']\n    tls: {{mode: SIMPLE, privateKey: /k.pem}}\n"),
        "spec.servers[0].tls.serverCertificate",
        "needs serverCertificate and privateKey",
    );
    one_error(
        &format!("{GW}  - port: {{number: 443, name: tls, protocol: TLS}}\n    hosts: ['*']\n    tls: {{mode: SIMPLE, serverCertificate: /c, privateKey: /k, caCrl: /crl}}\n"),
        "spec.servers[0].tls.caCrl",
        "revocation",
    );
    one_error(
        &format!("{GW}  - port: {{number: 70000, name: tls, protocol: TLS}}\n    hosts: ['*']\n    tls: {{mode: PASSTHROUGH}}\n"),
        "spec.servers[0].port.number",
        "not a port number",
    );
    one_error(
        &format!("{GW}  - port: {{number: 443, name: tls, protocol: TLS}}\n    hosts: ['a/b/c']\n    tls: {{mode: PASSTHROUGH}}\n"),
        "spec.servers[0].hosts[0]",
        "is not a host",
    );
    one_error(
        &format!("{GW}  - port: {{number: 1883, name: mqtt, protocol: TCP}}\n    hosts: ['*']\n    tls: {{mode: PASSTHROUGH}}\n"),
        "spec.servers[0].tls",
        "use protocol TLS",
    );
    // TLS and TCP on one port of one Gateway: as Istio merges servers, the
    // later is dropped (a warning here, a problem at the gateway); the
    // Gateway itself is valid.
    let c = load(&format!("{GW}  - port: {{number: 443, name: a, protocol: TLS}}\n    hosts: ['*']\n    tls: {{mode: PASSTHROUGH}}\n  - port: {{number: 443, name: b, protocol: TCP}}\n    hosts: ['*']\n"));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.field.as_deref() == Some("spec.servers[1].port")
                && w.message.contains("this server is ignored")),
        "{:#?}",
        c.warnings
    );
}

#[test]
fn virtual_service_rules_follow_istio_validation() {
    let vs = |tls: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v, namespace: x}}\nspec:\n  hosts: [a.example.com]\n  gateways: [gw]\n  tls:\n{tls}")
    };
    one_error(
        &vs("  - match: [{port: 443}]\n    route: [{destination: {host: a}}]\n"),
        "spec.tls[0].match[0].sniHosts",
        "at least one SNI host",
    );
    one_error(
        &vs("  - route: [{destination: {host: a}}]\n"),
        "spec.tls[0].match",
        "at least one match",
    );
    one_error(
        &vs("  - match: [{sniHosts: [b.example.com]}]\n    route: [{destination: {host: a}}]\n"),
        "spec.tls[0].match[0].sniHosts[0]",
        "not within any of the VirtualService's hosts",
    );
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a.example.com]\n  exportTo: [., Bad_NS]\n",
        "spec.exportTo[1]",
        "not an exportTo value",
    );
    // A subset, not merely an overlap (Istio's validateSniHost).
    one_error(
        &vs("  - match: [{sniHosts: ['*.example.com']}]\n    route: [{destination: {host: a}}]\n"),
        "spec.tls[0].match[0].sniHosts[0]",
        "subset of one of spec.hosts",
    );
    one_error(
        &vs("  - match: [{sniHosts: [a.example.com], sourceLabels: {app: x}}]\n    route: [{destination: {host: a}}]\n"),
        "spec.tls[0].match[0].sourceLabels",
        "not supported",
    );
    one_error(
        &vs("  - match: [{sniHosts: [a.example.com]}]\n    route: [{destination: {host: a}, weight: 50}, {destination: {host: b}, weight: -1}]\n"),
        "spec.tls[0].route[1].weight",
        "not a weight",
    );
    one_error(
        &vs("  - match: [{sniHosts: [a.example.com]}]\n    route: []\n"),
        "spec.tls[0].route",
        "at least one destination",
    );
    one_error(
        &vs("  - match: [{sniHosts: [a.example.com]}]\n    route: [{destination: {host: '*.x.com'}}]\n"),
        "spec.tls[0].route[0].destination.host",
        "concrete host",
    );
    // A mesh-only VirtualService (no gateways) with source matches: no
    // weir gateway uses it, so a warning, not an error; and a delegate
    // VirtualService (no hosts, http routes only) likewise.
    let c = load(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: x}\nspec:\n  hosts: [a.example.com]\n  tcp:\n  - match: [{sourceLabels: {app: x}, destinationSubnets: [10.0.0.0/8]}]\n    route: [{destination: {host: a, port: {number: 1}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: delegate, namespace: x}\nspec:\n  http:\n  - route: [{destination: {host: a}}]\n",
    );
    let fields: Vec<_> = c
        .warnings
        .iter()
        .filter_map(|w| w.field.as_deref())
        .collect();
    for f in [
        "spec.tcp[0].match[0].sourceLabels",
        "spec.tcp[0].match[0].destinationSubnets",
        "spec.hosts",
    ] {
        assert!(fields.contains(&f), "{f}: {fields:?}");
    }
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  tcp:\n  - route: [{destination: {host: a, port: {number: 1}}}]\n",
        "spec.hosts",
        "needs at least one host",
    );
    // http routes are accepted with a warning.
    let c = load(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a.example.com]\n  http:\n  - route: [{destination: {host: a}}]\n",
    );
    assert!(c
        .warnings
        .iter()
        .any(|w| w.field.as_deref() == Some("spec.http")
            && w.message.contains("does not route HTTP")));
}

/// What `istioctl analyze` says about `gateways`: a Gateway that does not
/// exist, and one whose servers do not admit the VirtualService's hosts
/// from its namespace (here `./` admits only the Gateway's namespace).
#[test]
fn virtual_services_bound_to_nothing_are_warned_about() {
    let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: edge}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: tls, protocol: TLS}\n    tls: {mode: PASSTHROUGH}\n    hosts: [\"./*.example.com\"]\n";
    let vs = |ns: &str, host: &str, gateway: &str| {
        format!("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v, namespace: {ns}}}\nspec:\n  hosts: [{host}]\n  gateways: [{gateway}, mesh]\n  tls:\n  - match: [{{sniHosts: [{host}]}}]\n    route: [{{destination: {{host: {host}}}}}]\n")
    };
    let binding = |c: &Config| -> Vec<(String, String)> {
        c.warnings
            .iter()
            .filter(|w| {
                w.field.as_deref() == Some("spec.hosts")
                    || w.field
                        .as_deref()
                        .is_some_and(|f| f.starts_with("spec.gateways"))
            })
            .map(|w| (w.field.clone().unwrap_or_default(), w.message.clone()))
            .collect()
    };
    // Bound as Istio binds it: no warning.
    let c = load(&(gw.to_owned() + &vs("edge", "a.example.com", "gw")));
    assert_eq!(binding(&c), [], "{:#?}", c.warnings);
    let c = load(&(gw.to_owned() + &vs("apps", "a.example.com", "edge/gw")));
    assert_eq!(
        binding(&c),
        [(
            "spec.hosts".to_owned(),
            "no server of Gateway edge/gw admits hosts [a.example.com] from namespace apps (its server hosts: [./*.example.com]): these routes are not used by that gateway".to_owned()
        )]
    );
    let c = load(&(gw.to_owned() + &vs("edge", "a.other.org", "gw")));
    assert_eq!(binding(&c).len(), 1, "a host the server does not serve");
    // tcp routes on a PASSTHROUGH-only binding: unused, as in Istio.
    let tcp_vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: t, namespace: edge}\nspec:\n  hosts: [a.example.com]\n  gateways: [gw]\n  tcp:\n  - route: [{destination: {host: a.example.com}}]\n";
    let c = load(&(gw.to_owned() + tcp_vs));
    let tcp: Vec<&str> = c
        .warnings
        .iter()
        .filter(|w| w.field.as_deref() == Some("spec.tcp"))
        .map(|w| w.message.as_str())
        .collect();
    assert_eq!(
        tcp,
        ["Gateway edge/gw serves these hosts from PASSTHROUGH servers only, which route by tls routes (match.sniHosts), as in Istio: these tcp routes are not used by that gateway"]
    );
    // ... but not when a terminating server of the Gateway also admits them.
    let simple = "  - port: {number: 8443, name: tls2, protocol: TLS}\n    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}\n    hosts: [\"./*.example.com\"]\n";
    let c = load(&(gw.to_owned() + simple + tcp_vs));
    assert!(
        !c.warnings
            .iter()
            .any(|w| w.field.as_deref() == Some("spec.tcp")),
        "{:#?}",
        c.warnings
    );
    let c = load(&(gw.to_owned() + &vs("edge", "a.example.com", "gateway-typo")));
    assert_eq!(
        binding(&c),
        [(
            "spec.gateways[0]".to_owned(),
            "no Gateway edge/gateway-typo in this configuration: these routes are used by no gateway until it exists".to_owned()
        )]
    );
    // Istio's legacy FQDN form binds, with a warning to write ns/name.
    for legacy in ["gw.edge.svc.cluster.local", "gw.edge"] {
        let c = load(&(gw.to_owned() + &vs("apps", "a.example.com", legacy)));
        assert_eq!(
            c.virtual_services[0].gateways[0],
            GatewayRef::Named {
                namespace: "edge".into(),
                name: "gw".into()
            },
            "{legacy}"
        );
        assert_eq!(
            binding(&c),
            [
                (
                    "spec.gateways[0]".to_owned(),
                    format!("{legacy:?} is Istio's legacy form, read as edge/gw: write namespace/name")
                ),
                (
                    "spec.hosts".to_owned(),
                    "no server of Gateway edge/gw admits hosts [a.example.com] from namespace apps (its server hosts: [./*.example.com]): these routes are not used by that gateway".to_owned()
                )
            ],
            "{legacy}"
        );
    }
}

#[test]
fn destination_rule_upstream_tls_is_ignored_with_a_warning() {
    let c = load(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: kafka\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n    portLevelSettings:\n    - port: {number: 9092}\n      tls: {mode: DISABLE}\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy: {tls: {mode: SIMPLE}}\n",
    );
    let fields: Vec<_> = c.warnings.iter().filter_map(|w| w.field.clone()).collect();
    assert!(
        fields.contains(&"spec.trafficPolicy.tls".to_owned()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"spec.trafficPolicy.portLevelSettings[0].tls".to_owned()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"spec.subsets[0].trafficPolicy.tls".to_owned()),
        "{fields:?}"
    );
    assert!(c.destination_rules[0].traffic_policy.is_some());
}

/// A DestinationRule for a wildcard host applies to the hosts it matches;
/// the most specific rule wins (Istio's MostSpecificHostMatch).
#[test]
fn destination_rules_match_wildcard_hosts_most_specific_first() {
    let se = |name: &str, host: &str| {
        format!("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: data}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 9093, name: tls}}]\n  resolution: STATIC\n  endpoints:\n  - {{address: 198.18.6.1, labels: {{zone: a}}}}\n  - {{address: 198.18.6.2, labels: {{zone: b}}}}\n")
    };
    let dr = |name: &str, host: &str, zone: &str| {
        format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: data}}\nspec:\n  host: '{host}'\n  subsets:\n  - {{name: pick, labels: {{zone: {zone}}}}}\n")
    };
    let c = load(
        &(mesh()
            + &se("b0", "b0.ext.example.com")
            + &se("b1", "b1.ext.example.com")
            + &dr("all", "*.ext.example.com", "a")
            + &dr("b1", "b1.ext.example.com", "b")),
    );
    let pick = |host: &str| {
        addrs(
            &c.resolve_destination(&dest(host, Some(9093), Some("pick")), "edge")
                .unwrap_or_else(|e| panic!("{host}: {e}")),
        )
    };
    assert_eq!(pick("b0.ext.example.com"), ["198.18.6.1:9093"]);
    assert_eq!(pick("b1.ext.example.com"), ["198.18.6.2:9093"]);
}

/// A DestinationRule asking for TLS origination (SIMPLE/MUTUAL) makes the
/// destination refused, not sent in plaintext; the most specific setting
/// (subset over rule, port over top level) decides, as in Istio.
#[test]
fn tls_origination_asked_for_refuses_the_destination() {
    let c = load(
        &(mesh()
            + "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: data}
spec:
  hosts: [broker.example.net]
  ports: [{number: 9093, name: tls}, {number: 9092, name: plain}]
  resolution: DNS
" + "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext, namespace: data}
spec:
  host: broker.example.net
  trafficPolicy:
    tls: {mode: SIMPLE}
    portLevelSettings:
    - port: {number: 9092}
      tls: {mode: DISABLE}
" + "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: kafka-tls, namespace: data}
spec:
  host: kafka
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy: {tls: {mode: MUTUAL}}
"),
    );
    let e = c
        .resolve_destination(&dest("broker.example.net", Some(9093), None), "edge")
        .unwrap_err();
    assert_eq!(e.metric_label(), "upstream_tls");
    assert!(
        e.to_string().contains("data/ext") && e.to_string().contains("SIMPLE"),
        "{e}"
    );
    // Port 9092's own setting (DISABLE) wins over the top level.
    assert!(c
        .resolve_destination(&dest("broker.example.net", Some(9092), None), "edge")
        .is_ok());
    // Only the subset that asks for it.
    assert!(c
        .resolve_destination(&dest("kafka", Some(9092), Some("v2")), "data")
        .is_err_and(|e| e.metric_label() == "upstream_tls"));
    assert!(c
        .resolve_destination(&dest("kafka", Some(9092), None), "data")
        .is_ok());
    let w: Vec<_> = c.warnings.iter().map(|w| w.message.as_str()).collect();
    assert!(
        w.iter().any(|m| m.contains("mode SIMPLE are refused")),
        "{w:?}"
    );
    // Two rules for one host: the older one's policy (Istio merges them so).
    let two = |first: &str, second: &str| {
        let dr = |name: &str, ts: &str, mode: &str| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: data, creationTimestamp: '{ts}'}}\nspec:\n  host: broker.example.net\n  trafficPolicy: {{tls: {{mode: {mode}}}}}\n")
        };
        load(&(mesh()
            + "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: data}\nspec:\n  hosts: [broker.example.net]\n  ports: [{number: 9093, name: tls}]\n  resolution: DNS\n"
            + &dr("a", "2024-01-01T00:00:00Z", first)
            + &dr("b", "2025-01-01T00:00:00Z", second)))
        .resolve_destination(&dest("broker.example.net", Some(9093), None), "edge")
        .is_ok()
    };
    assert!(!two("SIMPLE", "DISABLE"), "the older SIMPLE decides");
    assert!(two("DISABLE", "SIMPLE"), "the older DISABLE decides");
}

#[test]
fn service_entry_validation() {
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [a.b], ports: [{number: 1, name: x}], resolution: STATIC}\n",
        "spec.endpoints",
        "needs endpoints",
    );
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [a.b], ports: [{number: 1, name: x}], resolution: STATIC, endpoints: [{address: a.b.c}]}\n",
        "spec.endpoints[0].address",
        "IP addresses",
    );
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [a.b], ports: [{number: 1}]}\n",
        "spec.ports[0].name",
        "needs a name",
    );
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [a.b], ports: [{number: 1, name: x}], resolution: MAGIC}\n",
        "spec.resolution",
        "not a resolution",
    );
}

#[test]
fn service_validation() {
    one_error(
        "apiVersion: weir.dev/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 1}]}\n",
        "spec.selector",
        "needs a selector",
    );
    one_error(
        "apiVersion: weir.dev/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {a: b}, ports: [{port: 1, targetPort: kafka}]}\n",
        "spec.ports[0].targetPort",
        "named target ports",
    );
    one_error(
        "apiVersion: weir.dev/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {a: b}, ports: [{port: 1, name: a}, {port: 2}]}\n",
        "spec.ports",
        "every port needs a name",
    );
    // A Kubernetes Service's spec as kubectl prints it loads (with the weir
    // apiVersion); what concerns kube-proxy and load balancers is ignored.
    let c = load("apiVersion: weir.dev/v1alpha1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec:\n  type: LoadBalancer\n  selector: {a: b}\n  ports: [{name: k, port: 9092, targetPort: 9092, nodePort: 30092, protocol: TCP, appProtocol: kafka}]\n  clusterIP: 10.96.0.15\n  clusterIPs: [10.96.0.15]\n  sessionAffinity: None\n  ipFamilies: [IPv4]\n  ipFamilyPolicy: SingleStack\n  internalTrafficPolicy: Cluster\n  externalTrafficPolicy: Local\n  allocateLoadBalancerNodePorts: true\n");
    assert_eq!(c.services[0].ports[0].port, 9092);
    one_error(
        "apiVersion: weir.dev/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec: {type: ExternalName, selector: {a: b}, ports: [{port: 1}]}\n",
        "spec.type",
        "ServiceEntry",
    );
    one_error(
        "apiVersion: weir.dev/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec: {type: Headless, selector: {a: b}, ports: [{port: 1}]}\n",
        "spec.type",
        "not a Service type",
    );
    let e = one_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {selector: {a: b}, ports: [{port: 1}]}\n",
        "apiVersion",
        "weir.dev/v1alpha1",
    );
    assert!(e.message.contains("Service is not served"), "{}", e.message);
}

// ---------------------------------------------------------------- resolution

fn mesh() -> String {
    workload("kafka-0", "data", "198.18.0.10", "app: kafka, version: v1")
        + &workload("kafka-1", "data", "198.18.0.11", "app: kafka, version: v2")
        + &workload("other", "data", "198.18.0.12", "app: other")
        + "---\napiVersion: weir.dev/v1alpha1\nkind: Service\nmetadata: {name: kafka, namespace: data}\nspec:\n  selector: {app: kafka}\n  ports:\n  - {name: tls, port: 9093, targetPort: 19093}\n  - {name: plain, port: 9092}\n"
        + "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: kafka, namespace: data}\nspec:\n  host: kafka.data.svc.cluster.local\n  subsets:\n  - {name: v1, labels: {version: v1}}\n"
}

fn dest(host: &str, port: Option<u16>, subset: Option<&str>) -> Destination {
    Destination {
        host: host.into(),
        port,
        subset: subset.map(Into::into),
    }
}

fn addrs(r: &ResolvedDestination) -> Vec<String> {
    r.endpoints.iter().map(|(e, _)| e.to_string()).collect()
}

#[test]
fn service_names_resolve_like_kubernetes_dns() {
    let c = load(&mesh());
    let both = vec![
        "198.18.0.10:19093 (workload data/kafka-0)".to_owned(),
        "198.18.0.11:19093 (workload data/kafka-1)".to_owned(),
    ];
    for (host, ns) in [
        ("kafka", "data"),
        ("kafka.data", "edge"),
        ("kafka.data.svc", "edge"),
        ("kafka.data.svc.cluster.local", "edge"),
    ] {
        let r = c
            .resolve_destination(&dest(host, Some(9093), None), ns)
            .unwrap_or_else(|e| panic!("{host} from {ns}: {e}"));
        assert_eq!(addrs(&r), both, "{host} from {ns}");
        assert_eq!(r.host, "kafka.data.svc.cluster.local");
        assert_eq!(r.port, 9093);
        assert!(
            matches!(&r.endpoints[0].0, Endpoint::Workload { identity, .. } if identity.to_string() == "spiffe://cluster.local/ns/data/sa/kafka-0")
        );
    }
    // A bare name is relative to the VirtualService's namespace.
    assert_eq!(
        c.resolve_destination(&dest("kafka", Some(9093), None), "edge"),
        Err(ResolveError::UnknownHost("kafka".into()))
    );
    // The per-pod name of a headless service.
    let r = c
        .resolve_destination(
            &dest("kafka-1.kafka.data.svc.cluster.local", Some(9092), None),
            "edge",
        )
        .unwrap();
    assert_eq!(addrs(&r), vec!["198.18.0.11:9092 (workload data/kafka-1)"]);
    // Subsets from the DestinationRule, found through the short name too.
    let r = c
        .resolve_destination(&dest("kafka", Some(9092), Some("v1")), "data")
        .unwrap();
    assert_eq!(addrs(&r), vec!["198.18.0.10:9092 (workload data/kafka-0)"]);
    assert!(matches!(
        c.resolve_destination(&dest("kafka", Some(9092), Some("v9")), "data"),
        Err(ResolveError::UnknownSubset { .. })
    ));
    // Ports. Without one, several ports need the server's port (Istio's
    // GetDestinationCluster: the only port, else the listener's).
    assert!(matches!(
        c.resolve_destination(&dest("kafka.data", None, None), "x"),
        Err(ResolveError::PortRequired { .. })
    ));
    let r = c
        .resolve_destination_on(&dest("kafka.data", None, None), "x", Some(9092), None)
        .unwrap();
    assert_eq!(
        (r.port, addrs(&r)[0].as_str()),
        (9092, "198.18.0.10:9092 (workload data/kafka-0)")
    );
    assert!(matches!(
        c.resolve_destination_on(&dest("kafka.data", None, None), "x", Some(443), None),
        Err(ResolveError::PortRequired { .. })
    ));
    let r = c
        .resolve_destination_on(&dest("198.18.1.1", None, None), "x", Some(8883), None)
        .unwrap();
    assert_eq!(r.port, 8883);
    let e = c
        .resolve_destination(&dest("kafka.data", Some(1), None), "x")
        .unwrap_err();
    assert!(e.to_string().contains("9093, 9092"), "{e}");
    // An IP address.
    let r = c
        .resolve_destination(&dest("198.18.0.12", Some(80), None), "x")
        .unwrap();
    assert_eq!(addrs(&r), vec!["198.18.0.12:80 (workload data/other)"]);
    let r = c
        .resolve_destination(&dest("198.18.1.1", Some(80), None), "x")
        .unwrap();
    assert_eq!(
        r.endpoints[0].0,
        Endpoint::Address {
            address: "198.18.1.1:80".parse().unwrap()
        }
    );
}

#[test]
fn service_entries_resolve_to_mesh_plain_or_dns_endpoints() {
    let c = load(&(mesh()
        + "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: brokers, namespace: data}\nspec:\n  hosts: [b0.kafka.internal]\n  location: MESH_INTERNAL\n  ports: [{number: 9093, name: tls, targetPort: 19093}]\n  resolution: STATIC\n  endpoints:\n  - {address: 198.18.0.10}\n  - {address: 198.18.5.5, ports: {tls: 29093}}\n"
        + "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: by-label, namespace: data}\nspec:\n  hosts: [all.kafka.internal]\n  ports: [{number: 9092, name: plain}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: kafka}}\n"
        + "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: data}\nspec:\n  hosts: [broker.example.net]\n  ports: [{number: 9093, name: tls}]\n  resolution: DNS\n"
        + "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: none, namespace: data}\nspec:\n  hosts: [vip.example.net]\n  addresses: [198.18.7.7]\n  ports: [{number: 1883, name: mqtt}]\n"));
    let r = c
        .resolve_destination(&dest("b0.kafka.internal", None, None), "edge")
        .unwrap();
    assert_eq!(
        addrs(&r),
        vec![
            "198.18.0.10:19093 (workload data/kafka-0)",
            "198.18.5.5:29093"
        ]
    );
    assert!(matches!(
        r.source,
        DestinationSource::ServiceEntry {
            location: Location::MeshInternal,
            ..
        }
    ));
    let r = c
        .resolve_destination(&dest("all.kafka.internal", Some(9092), None), "edge")
        .unwrap();
    assert_eq!(r.endpoints.len(), 2);
    let r = c
        .resolve_destination(&dest("broker.example.net", Some(9093), None), "edge")
        .unwrap();
    assert_eq!(
        r.endpoints,
        vec![(
            Endpoint::Dns {
                host: "broker.example.net".into(),
                port: 9093
            },
            1
        )]
    );
    let r = c
        .resolve_destination(&dest("vip.example.net", None, None), "edge")
        .unwrap();
    assert_eq!(addrs(&r), vec!["198.18.7.7:1883"]);
}

/// As Istio (ResolveShortnameToFQDN): a destination host without a dot is
/// `name.<VirtualService namespace>.svc.cluster.local`, which may be a
/// ServiceEntry's host (operators' per-broker entries); a DestinationRule's
/// short host is read the same way.
#[test]
fn a_short_destination_name_finds_the_service_entry_of_its_fqdn() {
    let c = load(
        &(mesh()
            + "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: broker-0, namespace: kafka}
spec:
  hosts: [broker-0.kafka.svc.cluster.local]
  ports: [{number: 9093, name: tls}, {number: 9092, name: plain}]
  resolution: STATIC
  endpoints:
  - {address: 198.18.5.5, labels: {zone: a}}
  - {address: 198.18.5.6, labels: {zone: b}}
" + "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: broker-0, namespace: kafka}
spec:
  host: broker-0
  subsets:
  - {name: a, labels: {zone: a}}
"),
    );
    let r = c
        .resolve_destination(&dest("broker-0", Some(9093), None), "kafka")
        .unwrap();
    assert_eq!(addrs(&r), vec!["198.18.5.5:9093", "198.18.5.6:9093"]);
    let r = c
        .resolve_destination(&dest("broker-0", Some(9093), Some("a")), "kafka")
        .unwrap();
    assert_eq!(addrs(&r), vec!["198.18.5.5:9093"]);
    // From another namespace the short name means another host.
    assert_eq!(
        c.resolve_destination(&dest("broker-0", Some(9093), None), "edge"),
        Err(ResolveError::UnknownHost("broker-0".into()))
    );
    // Two ports, none given: the server's port picks one.
    let r = c
        .resolve_destination_on(&dest("broker-0", None, None), "kafka", Some(9092), None)
        .unwrap();
    assert_eq!(addrs(&r), vec!["198.18.5.5:9092", "198.18.5.6:9092"]);
}

#[test]
fn config_lists_gateways_selecting_an_instance() {
    let c = load(&format!(
        "{GW}  - port: {{number: 8883, name: tls-mqtt, protocol: TLS}}\n    hosts: ['*']\n    tls: {{mode: PASSTHROUGH}}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: other}}\nspec:\n  selector: {{app: egress}}\n  servers:\n  - port: {{number: 1, name: t, protocol: TCP}}\n    hosts: ['*']\n"
    ));
    let labels: BTreeMap<String, String> = [("istio".into(), "ingressgateway".into())].into();
    let names: Vec<_> = c
        .gateways_selecting(&labels)
        .map(|g| g.metadata.key())
        .collect();
    assert_eq!(names, vec!["edge/gw"]);
    let summary = c.summary();
    assert!(summary.contains(&("Gateway", 2)), "{summary:?}");
}

/// ServiceEntry exportTo: a gateway sees only what is exported to its
/// namespace (weir check, with no namespace, sees every entry).
#[test]
fn service_entry_export_to_hides_entries_from_other_namespaces() {
    let se = |name: &str, ns: &str, export: &str, ip: &str| {
        format!("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{name}.example.net]\n  exportTo: {export}\n  ports: [{{number: 9093, name: tls}}]\n  resolution: STATIC\n  endpoints: [{{address: {ip}}}]\n")
    };
    let c = load(
        &(se("private", "kafka", "['.']", "198.18.7.1")
            + &se("edge-only", "kafka", "[istio-system]", "198.18.7.2")
            + &se("nobody", "kafka", "['~']", "198.18.7.3")
            + &se("all", "kafka", "['*']", "198.18.7.4")),
    );
    let seen = |host: &str, viewer: Option<&str>| {
        c.resolve_destination_on(&dest(host, Some(9093), None), "kafka", None, viewer)
            .map(|r| addrs(&r))
            .map_err(|e| e.to_string())
    };
    assert_eq!(
        seen("private.example.net", Some("kafka")),
        Ok(vec!["198.18.7.1:9093".to_owned()])
    );
    let hidden = seen("private.example.net", Some("istio-system")).unwrap_err();
    assert!(
        hidden.contains("kafka/private")
            && hidden.contains("not exported to namespace istio-system"),
        "{hidden}"
    );
    assert_eq!(
        seen("edge-only.example.net", Some("istio-system")),
        Ok(vec!["198.18.7.2:9093".to_owned()])
    );
    assert!(seen("edge-only.example.net", Some("apps")).is_err());
    assert!(seen("nobody.example.net", Some("kafka")).is_err());
    assert!(seen("all.example.net", Some("apps")).is_ok());
    // weir check's view: every entry.
    assert!(seen("nobody.example.net", None).is_ok());
    assert_eq!(c.service_entries[0].export_to, ["."]);
}

/// Which DestinationRule a gateway uses, as Istio's lookup: its own
/// namespace's first, then the service's namespace's exported rules, then
/// the root namespace's; rules elsewhere do not apply. A gateway in the
/// root namespace takes the root's rules exported only there first.
#[test]
fn destination_rules_are_looked_up_by_namespace_as_istio_does() {
    let se = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: b0, namespace: kafka}\nspec:\n  hosts: [b0.example.net]\n  ports: [{number: 9093, name: tls}]\n  resolution: STATIC\n  endpoints: [{address: 198.18.7.10}]\n";
    let dr = |name: &str, ns: &str, export: &str, mode: &str| {
        format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: b0.example.net\n  exportTo: {export}\n  trafficPolicy: {{tls: {{mode: {mode}}}}}\n")
    };
    let refused_by = |c: &Config, viewer: &str| -> Option<String> {
        match c.resolve_destination_on(
            &dest("b0.example.net", Some(9093), None),
            "kafka",
            None,
            Some(viewer),
        ) {
            Ok(_) => None,
            Err(ResolveError::UpstreamTls { rule, .. }) => Some(rule),
            Err(e) => panic!("{e}"),
        }
    };
    // The service's namespace asks for TLS origination; a rule in a third
    // namespace does not apply to anyone else.
    let c = load(
        &(se.to_owned()
            + &dr("svc", "kafka", "['*']", "SIMPLE")
            + &dr("elsewhere", "apps", "['*']", "DISABLE")),
    );
    assert_eq!(refused_by(&c, "istio-system").as_deref(), Some("kafka/svc"));
    assert_eq!(refused_by(&c, "edge").as_deref(), Some("kafka/svc"));
    // The gateway's own namespace comes first ...
    assert_eq!(refused_by(&c, "apps"), None);
    // ... and a private rule of the service's namespace is not seen.
    let c = load(&(se.to_owned() + &dr("svc", "kafka", "['.']", "SIMPLE")));
    assert_eq!(refused_by(&c, "istio-system"), None);
    assert_eq!(refused_by(&c, "kafka").as_deref(), Some("kafka/svc"));
    // Root namespace: a rule exported only there wins for a gateway there;
    // a public one comes after the service namespace's.
    let c = load(
        &(se.to_owned()
            + &dr("svc", "kafka", "['*']", "SIMPLE")
            + &dr("root", "istio-system", "['.']", "DISABLE")),
    );
    assert_eq!(refused_by(&c, "istio-system"), None);
    assert_eq!(refused_by(&c, "edge").as_deref(), Some("kafka/svc"));
    let c = load(
        &(se.to_owned()
            + &dr("svc", "kafka", "['*']", "DISABLE")
            + &dr("root", "istio-system", "['*']", "SIMPLE")),
    );
    assert_eq!(refused_by(&c, "istio-system"), None);
    // '.' in an exported rule's list is its own namespace (Istio's reading).
    let c = load(&(se.to_owned() + &dr("root", "istio-system", "['.', apps]", "SIMPLE")));
    assert_eq!(
        refused_by(&c, "istio-system").as_deref(),
        Some("istio-system/root")
    );
    assert_eq!(refused_by(&c, "apps").as_deref(), Some("istio-system/root"));
    assert_eq!(refused_by(&c, "edge"), None);
    let c = load(&(se.to_owned() + &dr("root", "istio-system", "['*']", "SIMPLE")));
    assert_eq!(refused_by(&c, "edge").as_deref(), Some("istio-system/root"));
    assert_eq!(
        refused_by(&c, "istio-system").as_deref(),
        Some("istio-system/root")
    );
}

/// A Workload that is not ready (`spec.ready: false`, a Pod whose Ready
/// condition is not True) gets no connection made to a Service: neither at
/// its cluster IP nor by its name (nor a ServiceEntry's workloadSelector),
/// unless the Service has `publishNotReadyAddresses`; its Pod name
/// (`pod.service...`) still reaches it.
#[test]
fn not_ready_workloads_get_no_service_traffic() {
    let starting = "---\napiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: kafka-2, namespace: data, labels: {app: kafka}}\nspec: {address: 198.18.0.13, node: n, ready: false}\n";
    let svc = |name: &str, app: &str, extra: &str| {
        format!("---\napiVersion: weir.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: data}}\nspec:\n  selector: {{app: {app}}}\n  clusterIP: {extra}\n  ports: [{{name: client, port: 9092}}]\n")
    };
    let c = load(
        &(mesh()
            + starting
            + &svc("bootstrap", "kafka", "198.18.9.1")
            + &svc("all", "kafka", "198.18.9.2\n  publishNotReadyAddresses: true")
            + &svc("cold", "cold", "198.18.9.3")
            + "---\napiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: cold-0, namespace: data, labels: {app: cold}}\nspec: {address: 198.18.0.14, node: n, ready: false}\n"
            + "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: brokers, namespace: data}\nspec:\n  hosts: [brokers.example.com]\n  ports: [{number: 9092, name: tcp, protocol: TCP}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: kafka}}\n"),
    );
    assert!(c.workload("data", "kafka-0").unwrap().ready);
    assert!(!c.workload("data", "kafka-2").unwrap().ready);
    let names = |addr: &str| {
        let b = c.service_backends(addr.parse().unwrap()).unwrap();
        let mut n: Vec<&str> = b.workloads.iter().map(|w| w.name()).collect();
        n.sort_unstable();
        (n, b.not_ready)
    };
    assert_eq!(names("198.18.9.1:9092"), (vec!["kafka-0", "kafka-1"], 1));
    assert_eq!(
        names("198.18.9.2:9092"),
        (vec!["kafka-0", "kafka-1", "kafka-2"], 0)
    );
    assert_eq!(names("198.18.9.3:9092"), (vec![], 1));

    let resolved = |host: &str| c.resolve_destination(&dest(host, Some(9092), None), "data");
    let ok = |host: &str| addrs(&resolved(host).unwrap_or_else(|e| panic!("{host}: {e}")));
    assert_eq!(
        ok("kafka"),
        [
            "198.18.0.10:9092 (workload data/kafka-0)",
            "198.18.0.11:9092 (workload data/kafka-1)"
        ]
    );
    assert_eq!(ok("bootstrap"), ok("kafka"));
    assert_eq!(ok("all").len(), 3);
    assert_eq!(ok("brokers.example.com"), ok("kafka"));
    assert_eq!(
        ok("kafka-2.kafka.data.svc.cluster.local"),
        ["198.18.0.13:9092 (workload data/kafka-2)"]
    );
    let e = resolved("cold").unwrap_err().to_string();
    assert!(
        e.contains("none of the 1 Workloads Service data/cold selects is ready"),
        "{e}"
    );
    // The cluster IP of a Service with only not-ready Workloads still
    // stands for the Service (not for an address to dial).
    let e = resolved("198.18.9.3").unwrap_err().to_string();
    assert!(e.contains("is ready"), "{e}");

    one_error(
        "apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec: {address: 198.18.0.9, node: n, ready: maybe}\n",
        "spec.ready",
        "expected true or false",
    );
}

/// A Service's cluster IPs: Kubernetes' clusterIP/clusterIPs ("None" for
/// headless), virtual (no Workload's address, no other Service's), IPv4.
#[test]
fn service_cluster_ips_are_virtual_addresses_of_its_workloads() {
    let svc = |name: &str, extra: &str| {
        format!("---\napiVersion: weir.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: data}}\nspec:\n  selector: {{app: kafka}}\n  ports: [{{name: client, port: 9092, targetPort: 19092}}]\n{extra}")
    };
    let c = load(
        &(mesh()
            + &svc(
                "bootstrap",
                "  clusterIP: 198.18.9.1\n  clusterIPs: [198.18.9.1, 198.18.9.2]\n",
            )
            + &svc("headless", "  clusterIP: None\n")),
    );
    let b = c
        .service_by_cluster_ip("198.18.9.2".parse().unwrap())
        .unwrap();
    assert_eq!(b.metadata.name, "bootstrap");
    assert_eq!(b.cluster_ips.len(), 2);
    assert!(c
        .service("data", "headless")
        .unwrap()
        .cluster_ips
        .is_empty());
    let backends = c
        .service_backends("198.18.9.1:9092".parse().unwrap())
        .expect("a Service port");
    assert_eq!(backends.target_port, 19092);
    let mut names: Vec<&str> = backends.workloads.iter().map(|w| w.name()).collect();
    names.sort_unstable();
    assert_eq!(names, ["kafka-0", "kafka-1"]);
    assert!(
        c.service_backends("198.18.9.1:9093".parse().unwrap())
            .is_none(),
        "not its port"
    );
    assert!(
        c.service_backends("198.18.0.10:9092".parse().unwrap())
            .is_none(),
        "a Workload's address"
    );

    one_error(
        &svc("s", "  clusterIP: 10.0.0\n"),
        "spec.clusterIP",
        "not an IP address",
    );
    one_error(
        &svc("s", "  clusterIPs: [fd00::1]\n"),
        "spec.clusterIPs[0]",
        "IPv4 only",
    );
    one_error(
        &svc("s", "  clusterIP: 127.0.0.1\n"),
        "spec.clusterIP",
        "loopback",
    );
    one_error(
        &(mesh() + &svc("s", "  clusterIP: 198.18.0.10\n")),
        "spec.clusterIP",
        "is the address of Workload data/kafka-0",
    );
    let e = one_error(
        &(svc("a", "  clusterIP: 198.18.9.9\n") + &svc("b", "  clusterIP: 198.18.9.9\n")),
        "spec.clusterIP",
        "already the cluster IP of Service data/a",
    );
    assert_eq!(e.document.and_then(|d| d.name).as_deref(), Some("data/b"));
}

/// A route (or a KafkaGateway upstream) to a Service's cluster IP reaches
/// the Service's Workloads over the mesh, not the virtual address.
#[test]
fn a_cluster_ip_destination_resolves_to_the_services_workloads() {
    let c = load(
        &(mesh()
            + "---\napiVersion: weir.dev/v1alpha1\nkind: Service\nmetadata: {name: bootstrap, namespace: data}\nspec:\n  selector: {app: kafka}\n  clusterIP: 198.18.9.1\n  ports: [{name: client, port: 9092, targetPort: 19092}]\n"),
    );
    let r = c
        .resolve_destination(&dest("198.18.9.1", Some(9092), None), "edge")
        .unwrap();
    let mut got = addrs(&r);
    got.sort();
    assert_eq!(
        got,
        [
            "198.18.0.10:19092 (workload data/kafka-0)",
            "198.18.0.11:19092 (workload data/kafka-1)"
        ]
    );
    assert!(
        matches!(r.source, DestinationSource::Service { .. }),
        "{:?}",
        r.source
    );
    assert!(c
        .resolve_destination(&dest("198.18.9.1", Some(9093), None), "edge")
        .is_err_and(|e| e.metric_label() == "destination_port"));
    // A subset of the Service's DestinationRule, as by its name.
    let c = load(
        &(mesh()
            + "---\napiVersion: weir.dev/v1alpha1\nkind: Service\nmetadata: {name: bootstrap, namespace: data}\nspec:\n  selector: {app: kafka}\n  clusterIP: 198.18.9.1\n  ports: [{name: client, port: 9092}]\n"
            + "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bootstrap, namespace: data}\nspec:\n  host: bootstrap.data.svc.cluster.local\n  subsets: [{name: v2, labels: {version: v2}}]\n"
            + "---\napiVersion: weir.dev/v1alpha1\nkind: Service\nmetadata: {name: dns, namespace: kube-system}\nspec:\n  selector: {k8s-app: kube-dns}\n  clusterIP: 198.18.9.53\n  ports: [{name: dns-tcp, port: 53}]\n"),
    );
    let r = c
        .resolve_destination(&dest("198.18.9.1", Some(9092), Some("v2")), "edge")
        .unwrap();
    assert_eq!(addrs(&r), ["198.18.0.11:9092 (workload data/kafka-1)"]);
    // A Service none of whose Pods is in the mesh stays an address.
    let r = c
        .resolve_destination(&dest("198.18.9.53", Some(53), None), "edge")
        .unwrap();
    assert!(
        matches!(r.source, DestinationSource::Address),
        "{:?}",
        r.source
    );
}

/// exportTo as Istio validates it: `*` and `~` alone, no value twice
/// (`.` is the resource's own namespace).
#[test]
fn export_to_is_validated_as_istio_does() {
    let vs = |export: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v, namespace: kafka}}\nspec:\n  hosts: [a.example.com]\n  exportTo: {export}\n")
    };
    one_error(&vs("['*', apps]"), "spec.exportTo[0]", "must be the only");
    one_error(&vs("[apps, '~']"), "spec.exportTo[1]", "must be the only");
    one_error(&vs("['.', kafka]"), "spec.exportTo[1]", "duplicate");
    one_error(&vs("[apps, apps]"), "spec.exportTo[1]", "duplicate");
    let c = load(&vs("['.', apps]"));
    assert_eq!(c.virtual_services[0].export_to, [".", "apps"]);
    let c = load(&vs("['~']"));
    assert!(!c.virtual_services[0].visible_to("kafka"));
}

/// The parts of DestinationRules and VirtualServices weir does not act on
/// are still checked for unknown fields (a typo in `tls.mode` would
/// otherwise turn off the refusal of TLS origination), while every field of
/// Istio's API is accepted.
#[test]
fn traffic_policies_and_http_routes_are_checked_for_unknown_fields() {
    let dr = |tp: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d, namespace: data}}\nspec:\n  host: kafka.data.svc.cluster.local\n  trafficPolicy:\n{tp}")
    };
    let full = "    loadBalancer:\n      consistentHash: {httpCookie: {name: user, ttl: 0s}, minimumRingSize: 1024}\n      localityLbSetting: {enabled: true, failover: [{from: us-east, to: eu-west}]}\n      warmup: {duration: 60s}\n    connectionPool:\n      tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {time: 7200s, interval: 75s, probes: 9}, idleTimeout: 1h}\n      http: {http2MaxRequests: 1000, maxRequestsPerConnection: 10, h2UpgradePolicy: UPGRADE}\n    outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 100}\n    portLevelSettings:\n    - port: {number: 9092}\n      loadBalancer: {simple: LEAST_REQUEST}\n      tls: {mode: DISABLE}\n    tunnel: {protocol: CONNECT, targetHost: 10.0.0.1, targetPort: 8080}\n    proxyProtocol: {version: V2}\n    tls: {mode: ISTIO_MUTUAL, sni: kafka.example.com}\n";
    load(&dr(full));
    for (tp, field) in [
        ("    tls: {mod: SIMPLE}\n", "spec.trafficPolicy.tls.mod"),
        (
            "    connectionPool: {tcp: {maxConnectionz: 1}}\n",
            "spec.trafficPolicy.connectionPool.tcp.maxConnectionz",
        ),
        (
            "    portLevelSettings: [{port: {number: 1, name: x}}]\n",
            "spec.trafficPolicy.portLevelSettings[0].port.name",
        ),
        (
            "    loadBalancer: LEAST_REQUEST\n",
            "spec.trafficPolicy.loadBalancer",
        ),
        (
            "    portLevelSettings: {port: 1}\n",
            "spec.trafficPolicy.portLevelSettings",
        ),
    ] {
        one_error(&dr(tp), field, "");
    }
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: data}\nspec:\n  host: kafka\n  subsets: [{name: v1, labels: {v: '1'}, trafficPolicy: {bogus: true}}]\n",
        "spec.subsets[0].trafficPolicy.bogus",
        "unknown field \"bogus\", expected one of \"loadBalancer\"",
    );
    one_error(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: data}\nspec:\n  host: kafka\n  workloadSelector: {labels: {app: a}}\n",
        "spec.workloadSelector.labels",
        "unknown field",
    );
    let vs = |http: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v, namespace: data}}\nspec:\n  hosts: [kafka]\n  http:\n{http}")
    };
    // Valid (ignored with a warning: weir does not route HTTP).
    load(&vs("  - name: r\n    match: [{uri: {prefix: /a}, headers: {x: {exact: y}}}]\n    route: [{destination: {host: kafka, port: {number: 80}}, weight: 100}]\n    timeout: 5s\n    retries: {attempts: 3}\n"));
    one_error(
        &vs("  - rout: [{destination: {host: kafka}}]\n"),
        "spec.http[0].rout",
        "unknown field",
    );
    one_error(
        &vs("  - route: [{destination: {hots: kafka}}]\n"),
        "spec.http[0].route[0].destination.hots",
        "unknown field",
    );
}
