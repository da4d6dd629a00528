//! Istio semantics, case by case, plus properties over generated policies.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::config::{MeshSettings, SourceFile};

const WORKLOADS: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {name: kafka-0, namespace: kafka, labels: {app: kafka}}
spec: {serviceAccount: kafka, address: 198.18.0.10, node: node-a}
---
apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {name: zk-0, namespace: kafka, labels: {app: zk}}
spec: {serviceAccount: zk, address: 198.18.0.11, node: node-a}
---
apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {name: producer, namespace: apps, labels: {app: producer}}
spec: {serviceAccount: producer, address: 198.18.0.20, node: node-b}
"#;

fn config(policies: &str) -> Config {
    let src = [
        SourceFile::new("workloads.yaml", WORKLOADS),
        SourceFile::new("policies.yaml", policies),
    ];
    match Config::from_sources(&src, MeshSettings::default()) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn conn(peer: Option<&str>, src_ip: &str, port: u16) -> Connection {
    Connection {
        peer: peer.map(id),
        source_ip: Some(src_ip.parse::<IpAddr>().unwrap()),
        destination_ip: "198.18.0.10".parse().unwrap(),
        destination_port: port,
    }
}

const PRODUCER: &str = "spiffe://cluster.local/ns/apps/sa/producer";
const OTHER: &str = "spiffe://cluster.local/ns/apps/sa/other";

fn eval(c: &Config, workload: &str, conn: &Connection) -> Verdict {
    let (ns, name) = workload.split_once('/').unwrap();
    evaluate(c, c.workload(ns, name).unwrap(), conn)
}

fn mode(c: &Config, workload: &str, port: u16) -> MtlsMode {
    let (ns, name) = workload.split_once('/').unwrap();
    effective_mtls(c, c.workload(ns, name).unwrap(), port).mode
}

fn pa(ns: &str, name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {body}\n"
    )
}

fn pa_ts(ns: &str, name: &str, ts: &str, body: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{ts}\"}}\nspec: {body}\n"
    )
}

fn ap(ns: &str, name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {body}\n"
    )
}

// ------------------------------------------------------------ PeerAuthentication

#[test]
fn no_policy_is_permissive() {
    let c = config("");
    assert_eq!(mode(&c, "kafka/kafka-0", 9092), MtlsMode::Permissive);
    let v = eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.99", 9092));
    assert!(v.allowed());
    assert_eq!(v.policy, None);
}

#[test]
fn namespace_strict_refuses_plaintext_accepts_mtls() {
    let c = config(&pa("kafka", "default", "{mtls: {mode: STRICT}}"));
    let v = eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.99", 9092));
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(v.mtls_mode, MtlsMode::Strict);
    assert_eq!(v.policy.as_deref(), Some("kafka/default"));
    assert!(eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092)
    )
    .allowed());
}

#[test]
fn precedence_workload_over_namespace_over_mesh() {
    let mesh = pa("istio-system", "default", "{mtls: {mode: STRICT}}");
    let c = config(&mesh);
    assert_eq!(mode(&c, "kafka/kafka-0", 1), MtlsMode::Strict);
    assert_eq!(mode(&c, "apps/producer", 1), MtlsMode::Strict);

    let ns = pa("kafka", "ns", "{mtls: {mode: PERMISSIVE}}");
    let c = config(&format!("{mesh}{ns}"));
    assert_eq!(mode(&c, "kafka/kafka-0", 1), MtlsMode::Permissive);
    assert_eq!(
        mode(&c, "apps/producer", 1),
        MtlsMode::Strict,
        "other namespaces keep mesh"
    );

    let wl = pa(
        "kafka",
        "wl",
        "{selector: {matchLabels: {app: kafka}}, mtls: {mode: STRICT}}",
    );
    let c = config(&format!("{mesh}{ns}{wl}"));
    assert_eq!(mode(&c, "kafka/kafka-0", 1), MtlsMode::Strict);
    assert_eq!(
        mode(&c, "kafka/zk-0", 1),
        MtlsMode::Permissive,
        "selector scopes"
    );
}

#[test]
fn unset_inherits_and_port_level_overrides() {
    let ns = pa("kafka", "ns", "{mtls: {mode: STRICT}}");
    let wl = pa(
        "kafka",
        "metrics",
        "{selector: {matchLabels: {app: kafka}}, mtls: {mode: UNSET}, portLevelMtls: {9404: {mode: PERMISSIVE}, 9405: {mode: UNSET}}}",
    );
    let c = config(&format!("{ns}{wl}"));
    assert_eq!(
        mode(&c, "kafka/kafka-0", 9092),
        MtlsMode::Strict,
        "UNSET inherits namespace"
    );
    assert_eq!(
        mode(&c, "kafka/kafka-0", 9404),
        MtlsMode::Permissive,
        "port-level exception"
    );
    assert_eq!(
        mode(&c, "kafka/kafka-0", 9405),
        MtlsMode::Strict,
        "port-level UNSET inherits"
    );
    let v = eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.99", 9404));
    assert!(v.allowed(), "{v:?}");
    let v = eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.99", 9092));
    assert!(!v.allowed());
    // The port-level exception applies only to the selected workload.
    assert_eq!(mode(&c, "kafka/zk-0", 9404), MtlsMode::Strict);
}

#[test]
fn no_mtls_field_is_unset() {
    let c = config(&format!(
        "{}{}",
        pa("kafka", "ns", "{mtls: {mode: STRICT}}"),
        pa("kafka", "wl", "{selector: {matchLabels: {app: kafka}}}")
    ));
    assert_eq!(mode(&c, "kafka/kafka-0", 1), MtlsMode::Strict);
}

#[test]
fn oldest_selector_policy_wins_then_name() {
    let newer = pa_ts(
        "kafka",
        "a-newer",
        "2024-02-01T00:00:00Z",
        "{selector: {matchLabels: {app: kafka}}, mtls: {mode: STRICT}}",
    );
    let older = pa_ts(
        "kafka",
        "z-older",
        "2024-01-01T00:00:00Z",
        "{selector: {matchLabels: {app: kafka}}, mtls: {mode: PERMISSIVE}}",
    );
    let c = config(&format!("{newer}{older}"));
    let m = effective_mtls(&c, c.workload("kafka", "kafka-0").unwrap(), 1);
    assert_eq!(m.mode, MtlsMode::Permissive);
    assert_eq!(m.policy.unwrap().metadata.name, "z-older");
    // Same timestamp: the name decides.
    let b = pa_ts(
        "kafka",
        "b",
        "2024-01-01T00:00:00Z",
        "{selector: {matchLabels: {app: kafka}}, mtls: {mode: STRICT}}",
    );
    let a = pa_ts(
        "kafka",
        "a",
        "2024-01-01T00:00:00Z",
        "{selector: {matchLabels: {app: kafka}}, mtls: {mode: DISABLE}}",
    );
    let c = config(&format!("{b}{a}"));
    assert_eq!(mode(&c, "kafka/kafka-0", 1), MtlsMode::Disable);
}

#[test]
fn root_namespace_selector_policy_is_ignored() {
    let c = config(&pa(
        "istio-system",
        "sel",
        "{selector: {matchLabels: {app: kafka}}, mtls: {mode: STRICT}}",
    ));
    assert_eq!(mode(&c, "kafka/kafka-0", 1), MtlsMode::Permissive);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
}

#[test]
fn configurable_root_namespace() {
    let src = [
        SourceFile::new("w.yaml", WORKLOADS),
        SourceFile::new(
            "p.yaml",
            pa("mesh-root", "default", "{mtls: {mode: STRICT}}"),
        ),
    ];
    let settings = MeshSettings {
        root_namespace: "mesh-root".into(),
        ..MeshSettings::default()
    };
    let c = Config::from_sources(&src, settings).unwrap();
    assert_eq!(mode(&c, "apps/producer", 1), MtlsMode::Strict);
    let c = config(&pa("mesh-root", "default", "{mtls: {mode: STRICT}}"));
    assert_eq!(mode(&c, "apps/producer", 1), MtlsMode::Permissive);
}

#[test]
fn disable_admits_plaintext() {
    let c = config(&pa("kafka", "ns", "{mtls: {mode: DISABLE}}"));
    assert!(eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.99", 9092)).allowed());
}

// ------------------------------------------------------------ AuthorizationPolicy

#[test]
fn deny_before_allow() {
    let allow = ap("kafka", "allow-all", "{rules: [{}]}");
    let deny = ap(
        "kafka",
        "deny-producer",
        &format!(
            "{{action: DENY, rules: [{{from: [{{source: {{principals: [\"{}\"]}}}}]}}]}}",
            &PRODUCER[9..]
        ),
    );
    let c = config(&format!("{allow}{deny}"));
    let v = eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092),
    );
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(v.policy.as_deref(), Some("kafka/deny-producer"));
    assert!(eval(&c, "kafka/kafka-0", &conn(Some(OTHER), "198.18.0.21", 9092)).allowed());
}

#[test]
fn empty_spec_allows_nothing_and_empty_rule_everything() {
    let c = config(&ap("kafka", "deny-all", "{}"));
    let v = eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092),
    );
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(v.policy.as_deref(), Some("kafka/deny-all"));
    assert_eq!(
        v.reason,
        "ALLOW AuthorizationPolicy kafka/deny-all has no rules: it allows nothing, so every connection to kafka/kafka-0 is denied"
    );
    // Among several ALLOW policies, the rule-less ones are named.
    let c = config(&format!(
        "{}{}",
        ap("kafka", "deny-all", "{}"),
        ap(
            "kafka",
            "ns-only",
            "{rules: [{from: [{source: {namespaces: [nope]}}]}]}"
        )
    ));
    let v = eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092),
    );
    assert_eq!(v.policy, None);
    assert!(
        v.reason
            .ends_with("(kafka/deny-all has no rules: it allows nothing)"),
        "{}",
        v.reason
    );
    let c = config(&ap("kafka", "allow-all", "{rules: [{}]}"));
    assert!(eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.99", 1)).allowed());
    // (A DENY policy without rules is refused by the loader, as in Istio.)
}

#[test]
fn selector_scopes_authorization() {
    let c = config(&ap(
        "kafka",
        "zk-only",
        "{selector: {matchLabels: {app: zk}}}",
    ));
    assert!(eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092)
    )
    .allowed());
    assert!(!eval(&c, "kafka/zk-0", &conn(Some(PRODUCER), "198.18.0.20", 2181)).allowed());
}

#[test]
fn root_namespace_policy_applies_everywhere() {
    let c = config(&ap("istio-system", "deny-all", "{}"));
    assert!(!eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092)
    )
    .allowed());
    assert!(!eval(
        &c,
        "apps/producer",
        &conn(Some(PRODUCER), "198.18.0.20", 9092)
    )
    .allowed());
    // A policy in another ordinary namespace does not.
    let c = config(&ap("apps", "deny-all", "{}"));
    assert!(eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092)
    )
    .allowed());
}

#[test]
fn principals_exact_prefix_suffix_presence() {
    let check = |pattern: &str, peer: Option<&str>| {
        let c = config(&ap(
            "kafka",
            "p",
            &format!("{{rules: [{{from: [{{source: {{principals: [\"{pattern}\"]}}}}]}}]}}"),
        ));
        eval(&c, "kafka/kafka-0", &conn(peer, "198.18.0.20", 9092)).allowed()
    };
    assert!(check("cluster.local/ns/apps/sa/producer", Some(PRODUCER)));
    assert!(!check("cluster.local/ns/apps/sa/producer", Some(OTHER)));
    assert!(check("cluster.local/ns/apps/*", Some(OTHER)));
    assert!(check("*/sa/producer", Some(PRODUCER)));
    assert!(!check("*/sa/producer", Some(OTHER)));
    assert!(check("*", Some(OTHER)));
    assert!(!check("*", None), "plaintext has no principal");
    // Istio writes principals without the scheme: the scheme form never matches.
    assert!(!check(PRODUCER, Some(PRODUCER)));
}

#[test]
fn not_principals_and_namespaces() {
    let c = config(&ap(
        "kafka",
        "p",
        "{rules: [{from: [{source: {notPrincipals: [\"cluster.local/ns/apps/sa/other\"]}}]}]}",
    ));
    assert!(eval(&c, "kafka/kafka-0", &conn(Some(PRODUCER), "198.18.0.20", 1)).allowed());
    assert!(!eval(&c, "kafka/kafka-0", &conn(Some(OTHER), "198.18.0.20", 1)).allowed());
    assert!(
        eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.20", 1)).allowed(),
        "no principal is not the excluded one"
    );

    let c = config(&ap(
        "kafka",
        "p",
        "{rules: [{from: [{source: {namespaces: [apps]}}]}]}",
    ));
    assert!(eval(&c, "kafka/kafka-0", &conn(Some(PRODUCER), "198.18.0.20", 1)).allowed());
    assert!(!eval(
        &c,
        "kafka/kafka-0",
        &conn(
            Some("spiffe://cluster.local/ns/kafka/sa/x"),
            "198.18.0.20",
            1
        )
    )
    .allowed());
    assert!(!eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.20", 1)).allowed());

    let c = config(&ap(
        "kafka",
        "p",
        "{rules: [{from: [{source: {notNamespaces: [apps]}}]}]}",
    ));
    assert!(!eval(&c, "kafka/kafka-0", &conn(Some(PRODUCER), "198.18.0.20", 1)).allowed());
    assert!(eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.20", 1)).allowed());
}

#[test]
fn service_accounts_match_namespace_and_name_exactly() {
    let c = config(&ap(
        "kafka",
        "sa",
        "{rules: [{from: [{source: {serviceAccounts: [\"apps/producer\"]}}]}]}",
    ));
    let v = eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092),
    );
    assert!(v.allowed(), "{v:?}");
    assert_eq!((v.policy.as_deref(), v.rule), (Some("kafka/sa"), Some(0)));
    assert!(!eval(&c, "kafka/kafka-0", &conn(Some(OTHER), "198.18.0.21", 9092)).allowed());
    // A plaintext caller has no service account.
    assert!(!eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.20", 9092)).allowed());
    // Without a namespace the entry means the policy's namespace.
    let c = config(&ap(
        "kafka",
        "sa",
        "{rules: [{from: [{source: {serviceAccounts: [producer]}}]}]}",
    ));
    assert!(!eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092)
    )
    .allowed());
    assert!(eval(
        &c,
        "kafka/kafka-0",
        &conn(
            Some("spiffe://cluster.local/ns/kafka/sa/producer"),
            "198.18.0.20",
            9092
        )
    )
    .allowed());
    // notServiceAccounts: everyone else, plaintext included, is denied.
    let c = config(&ap(
        "kafka",
        "only-producer",
        "{action: DENY, rules: [{from: [{source: {notServiceAccounts: [\"apps/producer\"]}}]}]}",
    ));
    assert!(eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092)
    )
    .allowed());
    for peer in [Some(OTHER), None] {
        let v = eval(&c, "kafka/kafka-0", &conn(peer, "198.18.0.21", 9092));
        assert_eq!(v.decision, Decision::Deny, "{peer:?}");
        assert_eq!(v.policy.as_deref(), Some("kafka/only-producer"));
    }
}

#[test]
fn ip_blocks_and_ports() {
    let c = config(&ap("kafka", "p", "{rules: [{from: [{source: {ipBlocks: [198.18.1.0/24, 198.18.0.20]}}], to: [{operation: {ports: [\"9092\"]}}]}]}"));
    assert!(eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.20", 9092)).allowed());
    assert!(eval(&c, "kafka/kafka-0", &conn(None, "198.18.1.7", 9092)).allowed());
    assert!(!eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.21", 9092)).allowed());
    assert!(!eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.20", 9093)).allowed());

    let c = config(&ap("kafka", "p", "{rules: [{from: [{source: {notIpBlocks: [198.18.0.0/24]}}], to: [{operation: {notPorts: [9093]}}]}]}"));
    assert!(eval(&c, "kafka/kafka-0", &conn(None, "198.18.1.1", 9092)).allowed());
    assert!(!eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.1", 9092)).allowed());
    assert!(!eval(&c, "kafka/kafka-0", &conn(None, "198.18.1.1", 9093)).allowed());
}

#[test]
fn when_conditions_are_anded() {
    let body = "{rules: [{when: [{key: source.namespace, values: [apps]}, {key: destination.port, values: [\"9092\"]}, {key: source.ip, notValues: [198.18.0.66]}, {key: destination.ip, values: [198.18.0.0/24]}, {key: source.principal, values: [\"*/sa/producer\"]}]}]}";
    let c = config(&ap("kafka", "p", body));
    assert!(eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092)
    )
    .allowed());
    assert!(!eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9093)
    )
    .allowed());
    assert!(!eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.66", 9092)
    )
    .allowed());
    assert!(!eval(&c, "kafka/kafka-0", &conn(Some(OTHER), "198.18.0.20", 9092)).allowed());
}

#[test]
fn from_entries_are_ored_fields_anded() {
    let c = config(&ap("kafka", "p", "{rules: [{from: [{source: {namespaces: [nope]}}, {source: {namespaces: [apps], ipBlocks: [198.18.0.20/32]}}]}]}"));
    assert!(eval(&c, "kafka/kafka-0", &conn(Some(PRODUCER), "198.18.0.20", 1)).allowed());
    assert!(!eval(&c, "kafka/kafka-0", &conn(Some(PRODUCER), "198.18.0.21", 1)).allowed());
}

#[test]
fn l7_allow_rule_never_matches() {
    let c = config(&ap(
        "kafka",
        "http",
        "{rules: [{from: [{source: {namespaces: [apps]}}], to: [{operation: {methods: [GET]}}]}]}",
    ));
    let v = eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092),
    );
    assert_eq!(v.decision, Decision::Deny, "{v:?}");
    let c = config(&ap(
        "kafka",
        "http",
        "{rules: [{when: [{key: \"request.headers[x-user]\", values: [a]}]}]}",
    ));
    assert!(!eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092)
    )
    .allowed());
}

/// Keys Istio validates that istiod does not give ztunnel as L4 ones
/// (source.serviceAccount, the experimental inline headers) are accepted
/// and treated as L7: an ALLOW rule with them never matches.
#[test]
fn istio_keys_ztunnel_does_not_evaluate_are_l7() {
    for key in [
        "source.serviceAccount",
        "request.experimental.inline.headers[x-user]",
    ] {
        let c = config(&ap(
            "kafka",
            "l7",
            &format!("{{rules: [{{when: [{{key: \"{key}\", values: [apps/producer]}}]}}]}}"),
        ));
        assert!(
            !eval(
                &c,
                "kafka/kafka-0",
                &conn(Some(PRODUCER), "198.18.0.20", 9092)
            )
            .allowed(),
            "{key}"
        );
    }
}

#[test]
fn l7_deny_rule_is_enforced_without_l7_parts() {
    // methods is dropped: the rule denies everything on 9092 from apps.
    let c = config(&ap("kafka", "http", "{action: DENY, rules: [{from: [{source: {namespaces: [apps]}}], to: [{operation: {methods: [GET], ports: [\"9092\"]}}]}]}"));
    assert!(!eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092)
    )
    .allowed());
    assert!(eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9093)
    )
    .allowed());
    // requestPrincipals only: the source matches everything.
    let c = config(&ap(
        "kafka",
        "jwt",
        "{action: DENY, rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]}",
    ));
    assert!(!eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.20", 1)).allowed());
}

#[test]
fn strict_plaintext_denial_names_the_peer_authentication() {
    let c = config(&format!(
        "{}{}",
        pa("kafka", "strict", "{mtls: {mode: STRICT}}"),
        ap("kafka", "allow-all", "{rules: [{}]}")
    ));
    let v = eval(&c, "kafka/kafka-0", &conn(None, "198.18.0.99", 9092));
    assert_eq!(v.policy_kind, Some("PeerAuthentication"));
    assert!(v.reason.contains("STRICT"), "{}", v.reason);
}

#[test]
fn a_peer_from_another_trust_domain_is_refused() {
    // No policy at all would allow it, and this principal pattern matches it;
    // the handshake refuses it first.
    let c = config(&ap(
        "kafka",
        "sfx",
        "{rules: [{from: [{source: {principals: [\"*/sa/producer\"]}}]}]}",
    ));
    let foreign = "spiffe://evil.example/ns/apps/sa/producer";
    for c in [config(""), c] {
        let v = eval(
            &c,
            "kafka/kafka-0",
            &conn(Some(foreign), "198.18.0.20", 9092),
        );
        assert_eq!(v.decision, Decision::Deny);
        assert_eq!(v.mtls_mode, MtlsMode::Permissive);
        assert_eq!((v.policy, v.policy_kind, v.rule), (None, None, None));
        assert!(
            v.reason
                .contains("trust domain \"evil.example\", not the mesh's (\"cluster.local\")"),
            "{}",
            v.reason
        );
    }
    // The mesh's own trust domain comes from the settings.
    let src = [
        SourceFile::new("workloads.yaml", WORKLOADS),
        SourceFile::new("p.yaml", ""),
    ];
    let settings = MeshSettings {
        trust_domain: "evil.example".parse().unwrap(),
        ..MeshSettings::default()
    };
    let c = Config::from_sources(&src, settings).unwrap();
    assert!(eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(foreign), "198.18.0.20", 9092)
    )
    .allowed());
    let v = eval(
        &c,
        "kafka/kafka-0",
        &conn(Some(PRODUCER), "198.18.0.20", 9092),
    );
    assert_eq!(v.decision, Decision::Deny, "cluster.local is foreign here");
}

// ------------------------------------------------------------ properties

fn arb_source() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("{principals: [\"cluster.local/ns/apps/sa/producer\"]}".to_owned()),
        Just("{principals: [\"*\"]}".to_owned()),
        Just("{notPrincipals: [\"cluster.local/ns/apps/*\"]}".to_owned()),
        Just("{namespaces: [apps]}".to_owned()),
        Just("{notNamespaces: [kafka]}".to_owned()),
        Just("{ipBlocks: [198.18.0.0/24]}".to_owned()),
        Just("{notIpBlocks: [198.18.0.20]}".to_owned()),
        Just("{requestPrincipals: [\"*\"]}".to_owned()),
        Just("{serviceAccounts: [\"apps/producer\"]}".to_owned()),
        Just("{notServiceAccounts: [kafka]}".to_owned()),
    ]
}

fn arb_rule() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop::collection::vec(arb_source(), 1..3)),
        prop::option::of(prop_oneof![
            Just("[{operation: {ports: [\"9092\"]}}]"),
            Just("[{operation: {notPorts: [\"9092\"]}}]"),
            Just("[{operation: {methods: [GET]}}]"),
        ]),
    )
        .prop_map(|(from, to)| {
            let mut parts = Vec::new();
            if let Some(f) = from {
                let f: Vec<String> = f.into_iter().map(|s| format!("{{source: {s}}}")).collect();
                parts.push(format!("from: [{}]", f.join(", ")));
            }
            if let Some(t) = to {
                parts.push(format!("to: {t}"));
            }
            format!("{{{}}}", parts.join(", "))
        })
}

fn arb_policy(i: usize) -> impl Strategy<Value = String> {
    (
        prop::bool::ANY,
        prop_oneof![Just("kafka"), Just("istio-system"), Just("apps")],
        prop::option::of(prop_oneof![
            Just("{matchLabels: {app: kafka}}"),
            Just("{matchLabels: {app: zk}}")
        ]),
        prop::collection::vec(arb_rule(), 0..3),
    )
        .prop_map(move |(deny, ns, sel, rules)| {
            // A DENY policy needs a rule (Istio and `weir check` refuse one without).
            let deny = deny && !rules.is_empty();
            let mut body = vec![format!("rules: [{}]", rules.join(", "))];
            if deny {
                body.push("action: DENY".to_owned());
            }
            if let Some(s) = sel {
                body.push(format!("selector: {s}"));
            }
            ap(ns, &format!("p{i}"), &format!("{{{}}}", body.join(", ")))
        })
}

fn arb_policies() -> impl Strategy<Value = Vec<String>> {
    (0usize..5).prop_flat_map(|n| (0..n).map(arb_policy).collect::<Vec<_>>())
}

fn arb_conn() -> impl Strategy<Value = Connection> {
    (
        prop_oneof![
            Just(None),
            Just(Some(PRODUCER)),
            Just(Some(OTHER)),
            Just(Some("spiffe://cluster.local/ns/kafka/sa/kafka"))
        ],
        prop_oneof![Just("198.18.0.20"), Just("198.18.1.5")],
        prop_oneof![Just(9092u16), Just(9404u16)],
    )
        .prop_map(|(p, ip, port)| conn(p, ip, port))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The order of documents never changes a decision.
    #[test]
    fn order_independent(policies in arb_policies(), c in arb_conn()) {
        let a = config(&policies.concat());
        let mut rev = policies.clone();
        rev.reverse();
        let b = config(&rev.concat());
        prop_assert_eq!(eval(&a, "kafka/kafka-0", &c).decision, eval(&b, "kafka/kafka-0", &c).decision);
    }

    /// A matching DENY rule wins over any ALLOW policy.
    #[test]
    fn deny_all_wins(policies in arb_policies(), c in arb_conn()) {
        let cfg = config(&format!("{}{}", policies.concat(), ap("kafka", "zz-deny", "{action: DENY, rules: [{}]}")));
        prop_assert_eq!(eval(&cfg, "kafka/kafka-0", &c).decision, Decision::Deny);
    }

    /// Adding a DENY policy never turns a deny into an allow.
    #[test]
    fn deny_is_monotonic(policies in arb_policies(), extra in arb_policy(99), c in arb_conn()) {
        let before = eval(&config(&policies.concat()), "kafka/kafka-0", &c);
        if extra.contains("action: DENY") && !before.allowed() {
            let after = eval(&config(&format!("{}{extra}", policies.concat())), "kafka/kafka-0", &c);
            prop_assert_eq!(after.decision, Decision::Deny);
        }
    }

    /// An ALLOW-all rule in an applicable ALLOW policy allows whatever no DENY denies.
    #[test]
    fn allow_all_allows_unless_denied(policies in arb_policies(), c in arb_conn()) {
        let base = config(&policies.concat());
        let w = base.workload("kafka", "kafka-0").unwrap();
        let denied = applicable_policies(&base, w)
            .filter(|p| p.action == Action::Deny)
            .any(|p| first_match(p, &Facts { principal: c.peer.as_ref().map(SpiffeId::principal), namespace: c.peer.as_ref().map(SpiffeId::namespace), conn: &c }).is_some());
        let cfg = config(&format!("{}{}", policies.concat(), ap("kafka", "zz-allow", "{rules: [{}]}")));
        prop_assert_eq!(eval(&cfg, "kafka/kafka-0", &c).allowed(), !denied);
    }

    /// Policies in an unrelated, non-root namespace never matter.
    #[test]
    fn other_namespaces_irrelevant(policies in arb_policies(), c in arb_conn()) {
        let only_apps: Vec<String> = policies.iter().filter(|p| p.contains("namespace: apps")).cloned().collect();
        let cfg = config(&only_apps.concat());
        prop_assert!(eval(&cfg, "kafka/kafka-0", &c).allowed());
    }
}
