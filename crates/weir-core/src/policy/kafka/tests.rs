//! The Kafka authorization semantics, rule by rule, plus properties over
//! generated policies checked against a naive reference evaluator.

use proptest::prelude::*;

use super::*;
use crate::config::kafka::PatternType;
use crate::config::{MeshSettings, ObjectMeta, SourceFile};
use crate::kafka::dn;
use crate::kafka::Operation::*;
use crate::kafka::ResourceType::*;

const GATEWAYS: &str = "
apiVersion: weir.dev/v1alpha1
kind: KafkaGateway
metadata: {name: external, namespace: kafka}
spec:
  port: 9094
  tls: {mode: MUTUAL, serverCertificate: /tls.crt, privateKey: /tls.key, caCertificates: /ca.crt}
  bootstrapHost: kafka.example.com
  brokerHostTemplate: \"b{id}-kafka.example.com\"
  upstream: {bootstrapServers: [\"198.18.0.10:9092\"]}
---
apiVersion: weir.dev/v1alpha1
kind: KafkaGateway
metadata: {name: internal, namespace: kafka}
spec:
  port: 9095
  tls: {serverCertificate: /tls.crt, privateKey: /tls.key}
  bootstrapHost: kafka.internal.example.com
  brokerHostTemplate: \"b{id}-kafka.internal.example.com\"
  upstream: {bootstrapServers: [\"198.18.0.10:9092\"]}
";

fn config(policies: &str) -> Config {
    let src = [
        SourceFile::new("gateways.yaml", GATEWAYS),
        SourceFile::new("policies.yaml", policies),
    ];
    match Config::from_sources(&src, MeshSettings::default()) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn kap(ns: &str, name: &str, spec: &str) -> String {
    format!("---\napiVersion: weir.dev/v1alpha1\nkind: KafkaAuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
}

fn external(policies: &str) -> KafkaAuthorizer {
    KafkaAuthorizer::for_gateway(&config(policies), "kafka", "external")
}

fn mesh(s: &str) -> Principal {
    Principal::Spiffe(s.parse().unwrap())
}

fn cert(subject: &str, sans: &[&str]) -> Principal {
    Principal::Certificate {
        subject: subject.to_owned(),
        sans: sans.iter().map(|s| (*s).to_owned()).collect(),
    }
}

const PRODUCER: &str = "spiffe://cluster.local/ns/apps/sa/producer";
const CONSUMER: &str = "spiffe://cluster.local/ns/apps/sa/consumer";

#[track_caller]
fn expect(
    d: &KafkaDecision,
    allowed: bool,
    basis: KafkaBasis,
    policy: Option<&str>,
    rule: Option<usize>,
) {
    assert_eq!(d.allowed, allowed, "{d:?}");
    assert_eq!(d.basis, basis, "{d:?}");
    assert_eq!(d.policy.as_deref(), policy, "{d:?}");
    assert_eq!(d.rule, rule, "{d:?}");
    assert_eq!(d.reason, basis.reason());
}

#[test]
fn no_policy_allows_everything() {
    let a = external("");
    assert!(!a.has_policies());
    for p in [mesh(PRODUCER), cert("CN=x", &[]), Principal::Anonymous] {
        let d = a.authorize(&p, Topic, "orders", Write);
        expect(&d, true, KafkaBasis::NoAllowPolicy, None, None);
    }
    assert_eq!(a.gateway(), "kafka/external");
}

#[test]
fn allow_policy_without_rules_allows_nothing() {
    let a = external(&kap("kafka", "nothing", "{}"));
    let d = a.authorize(&mesh(PRODUCER), Topic, "orders", Read);
    expect(
        &d,
        false,
        KafkaBasis::NoAllowRuleMatched,
        Some("kafka/nothing"),
        None,
    );
    assert_eq!(d.to_string(), "ALLOW KafkaAuthorizationPolicy kafka/nothing applies to the gateway but none of its rules matched");
}

#[test]
fn empty_rule_matches_everything() {
    let a = external(&kap("kafka", "all", "{rules: [{}]}"));
    let d = a.authorize(
        &Principal::Anonymous,
        Cluster,
        "kafka-cluster",
        IdempotentWrite,
    );
    expect(&d, true, KafkaBasis::AllowRule, Some("kafka/all"), Some(0));
    assert_eq!(
        d.to_string(),
        "allowed by ALLOW KafkaAuthorizationPolicy kafka/all (rule 0)"
    );
}

#[test]
fn producer_may_write_orders_and_nothing_else() {
    let a = external(&kap(
        "kafka",
        "orders-writers",
        "{rules: [{principals: [cluster.local/ns/apps/sa/producer], resources: [{type: topic, name: orders., patternType: PREFIXED}], operations: [Write]}]}",
    ));
    let p = mesh(PRODUCER);
    expect(
        &a.authorize(&p, Topic, "orders.eu", Write),
        true,
        KafkaBasis::AllowRule,
        Some("kafka/orders-writers"),
        Some(0),
    );
    // Write implies Describe (needed for Metadata).
    assert!(a.authorize(&p, Topic, "orders.eu", Describe).allowed);
    for (t, name, op) in [
        (Topic, "orders.eu", Read),
        (Topic, "orders.eu", Delete),
        (Topic, "orders.eu", DescribeConfigs),
        (Topic, "orders", Write),
        (Topic, "payments", Write),
        (Group, "orders.eu", Read),
        (Cluster, "kafka-cluster", IdempotentWrite),
    ] {
        expect(
            &a.authorize(&p, t, name, op),
            false,
            KafkaBasis::NoAllowRuleMatched,
            Some("kafka/orders-writers"),
            None,
        );
    }
    assert!(
        !a.authorize(&mesh(CONSUMER), Topic, "orders.eu", Write)
            .allowed
    );
    assert!(
        !a.authorize(&Principal::Anonymous, Topic, "orders.eu", Write)
            .allowed
    );
}

#[test]
fn deny_comes_first_and_names_its_rule() {
    let a = external(&(kap("kafka", "allow-all", "{rules: [{}]}")
        + &kap("kafka", "no-payments", "{action: DENY, rules: [{resources: [{type: group, name: x}]}, {principals: [\"*\"], resources: [{type: topic, name: payments}]}]}")));
    let d = a.authorize(&mesh(PRODUCER), Topic, "payments", Read);
    expect(
        &d,
        false,
        KafkaBasis::DenyRule,
        Some("kafka/no-payments"),
        Some(1),
    );
    assert_eq!(
        d.to_string(),
        "denied by DENY KafkaAuthorizationPolicy kafka/no-payments (rule 1)"
    );
    expect(
        &a.authorize(&mesh(PRODUCER), Topic, "orders", Read),
        true,
        KafkaBasis::AllowRule,
        Some("kafka/allow-all"),
        Some(0),
    );
    let order: Vec<_> = a.policies().collect();
    assert_eq!(
        order,
        [
            ("kafka/no-payments", Action::Deny),
            ("kafka/allow-all", Action::Allow)
        ]
    );
}

#[test]
fn deny_has_no_implications_allow_has_kafkas() {
    let a = external(
        &(kap(
            "kafka",
            "allow",
            "{rules: [{operations: [Read, AlterConfigs]}]}",
        ) + &kap(
            "kafka",
            "deny",
            "{action: DENY, rules: [{operations: [Read]}]}",
        )),
    );
    let p = mesh(PRODUCER);
    // DENY Read does not deny Describe; ALLOW Read grants it.
    expect(
        &a.authorize(&p, Topic, "t", Read),
        false,
        KafkaBasis::DenyRule,
        Some("kafka/deny"),
        Some(0),
    );
    expect(
        &a.authorize(&p, Topic, "t", Describe),
        true,
        KafkaBasis::AllowRule,
        Some("kafka/allow"),
        Some(0),
    );
    // AlterConfigs grants DescribeConfigs, not Alter.
    assert!(a.authorize(&p, Topic, "t", DescribeConfigs).allowed);
    assert!(!a.authorize(&p, Topic, "t", Alter).allowed);
    assert!(!a.authorize(&p, Topic, "t", Write).allowed);
    // DENY All denies everything.
    let a = external(
        &(kap("kafka", "allow", "{rules: [{}]}")
            + &kap(
                "kafka",
                "deny",
                "{action: DENY, rules: [{operations: [All]}]}",
            )),
    );
    for op in Operation::ALL {
        assert!(!a.authorize(&p, Topic, "t", op).allowed, "{op}");
    }
    // ALLOW All grants everything; each of Read/Write/Delete/Alter grants Describe.
    let a = external(&kap("kafka", "allow", "{rules: [{operations: [All]}]}"));
    for op in Operation::ALL {
        assert!(a.authorize(&p, Topic, "t", op).allowed, "{op}");
    }
    for granted in ["Read", "Write", "Delete", "Alter"] {
        let a = external(&kap(
            "kafka",
            "allow",
            &format!("{{rules: [{{operations: [{granted}]}}]}}"),
        ));
        assert!(a.authorize(&p, Topic, "t", Describe).allowed, "{granted}");
        assert!(!a.authorize(&p, Topic, "t", Create).allowed, "{granted}");
    }
}

#[test]
fn which_policies_apply_to_a_gateway() {
    let policies = kap("kafka", "ext-only", "{gateways: [external], rules: [{resources: [{type: topic, name: ext}]}]}")
        + &kap("apps", "elsewhere", "{action: DENY, rules: [{}]}")
        + &kap("istio-system", "mesh-wide", "{action: DENY, rules: [{resources: [{type: topic, name: forbidden}]}]}")
        + &kap("istio-system", "root-internal", "{action: DENY, gateways: [kafka/internal], rules: [{resources: [{type: topic, name: internal-only}]}]}");
    let c = config(&policies);
    let ext = KafkaAuthorizer::for_gateway(&c, "kafka", "external");
    let int = KafkaAuthorizer::for_gateway(&c, "kafka", "internal");
    let p = mesh(PRODUCER);
    // The apps policy applies to neither gateway.
    assert!(ext.authorize(&p, Topic, "ext", Read).allowed);
    assert!(!ext.authorize(&p, Topic, "other", Read).allowed);
    // ext-only is not at the internal gateway: no ALLOW policy there.
    expect(
        &int.authorize(&p, Topic, "other", Read),
        true,
        KafkaBasis::NoAllowPolicy,
        None,
        None,
    );
    // The root namespace reaches both; root-internal only internal.
    expect(
        &ext.authorize(&p, Topic, "forbidden", Read),
        false,
        KafkaBasis::DenyRule,
        Some("istio-system/mesh-wide"),
        Some(0),
    );
    expect(
        &int.authorize(&p, Topic, "forbidden", Read),
        false,
        KafkaBasis::DenyRule,
        Some("istio-system/mesh-wide"),
        Some(0),
    );
    assert!(!int.authorize(&p, Topic, "internal-only", Read).allowed);
    assert_eq!(
        ext.authorize(&p, Topic, "internal-only", Read).basis,
        KafkaBasis::NoAllowRuleMatched
    );
    // A custom root namespace.
    let src = [
        SourceFile::new("g.yaml", GATEWAYS),
        SourceFile::new(
            "p.yaml",
            kap("mesh-root", "deny", "{action: DENY, rules: [{}]}"),
        ),
    ];
    let settings = MeshSettings {
        root_namespace: "mesh-root".to_owned(),
        ..MeshSettings::default()
    };
    let c = Config::from_sources(&src, settings).unwrap();
    assert!(
        !KafkaAuthorizer::for_gateway(&c, "kafka", "external")
            .authorize(&p, Topic, "t", Read)
            .allowed
    );
}

#[test]
fn several_allow_policies_none_matching_blame_none() {
    let a = external(
        &(kap(
            "kafka",
            "a",
            "{rules: [{resources: [{type: topic, name: a}]}]}",
        ) + &kap(
            "kafka",
            "b",
            "{rules: [{resources: [{type: topic, name: b}]}]}",
        )),
    );
    expect(
        &a.authorize(&mesh(PRODUCER), Topic, "c", Read),
        false,
        KafkaBasis::NoAllowRuleMatched,
        None,
        None,
    );
    expect(
        &a.authorize(&mesh(PRODUCER), Topic, "b", Read),
        true,
        KafkaBasis::AllowRule,
        Some("kafka/b"),
        Some(0),
    );
}

#[test]
fn mesh_principal_forms() {
    let allowed = |pattern: &str, who: &Principal| {
        external(&kap(
            "kafka",
            "p",
            &format!("{{rules: [{{principals: [\"{pattern}\"]}}]}}"),
        ))
        .authorize(who, Topic, "t", Read)
        .allowed
    };
    let p = mesh(PRODUCER);
    for pattern in [
        "cluster.local/ns/apps/sa/producer",
        "spiffe://cluster.local/ns/apps/sa/producer",
        "spiffe://cluster.local/ns/apps/sa/*",
        "cluster.local/ns/apps/*",
        "*/sa/producer",
        "*",
        "User:*",
        "User:spiffe://cluster.local/ns/apps/sa/producer",
    ] {
        assert!(allowed(pattern, &p), "{pattern}");
    }
    for pattern in [
        "cluster.local/ns/apps/sa/consumer",
        "cluster.local/ns/apps/sa/prod",
        "cluster.local/ns/other/*",
        "*/sa/consumer",
        "spiffe://other.domain/ns/apps/sa/producer",
        "User:ANONYMOUS",
        "CN=producer",
    ] {
        assert!(!allowed(pattern, &p), "{pattern}");
    }
}

#[test]
fn certificate_principal_forms() {
    let allowed = |pattern: &str, who: &Principal| {
        external(&kap(
            "kafka",
            "p",
            &format!("{{rules: [{{principals: [\"{pattern}\"]}}]}}"),
        ))
        .authorize(who, Topic, "t", Read)
        .allowed
    };
    let billing = cert(
        "CN=billing,O=Example",
        &["billing.example.com", "spiffe://partner.example/billing"],
    );
    for pattern in [
        "CN=billing,O=Example",
        "cn=billing, o=Example",
        "O=Example,CN=billing",
        "User:CN=billing,O=Example",
        "CN=bill*",
        "*,O=Example",
        "billing.example.com",
        "*.example.com",
        "spiffe://partner.example/billing",
        "*",
    ] {
        assert!(allowed(pattern, &billing), "{pattern}");
    }
    for pattern in [
        "CN=Billing,O=Example",
        "CN=billing",
        "CN=billing,O=Example,C=DE",
        "User:ANONYMOUS",
        "cluster.local/ns/apps/sa/producer",
        "other.example.com",
    ] {
        assert!(!allowed(pattern, &billing), "{pattern}");
    }
    // An external certificate cannot claim a mesh identity through its
    // SANs: not with the mesh's trust domain (in any case of the scheme),
    // nor with the bare Istio form, which names mesh identities only.
    let imposter = cert(
        "CN=x",
        &[
            "spiffe://cluster.local/ns/apps/sa/producer",
            "SPIFFE://cluster.local/ns/apps/sa/producer",
            "cluster.local/ns/apps/sa/producer",
            "spiffe://partner.example/ns/apps/sa/producer",
        ],
    );
    for pattern in [
        "spiffe://cluster.local/ns/apps/sa/producer",
        "cluster.local/ns/apps/sa/producer",
        "cluster.local/ns/apps/*",
        "*/sa/producer",
    ] {
        assert!(!allowed(pattern, &imposter), "{pattern}");
    }
    // A foreign SPIFFE id is matched by its full URI.
    assert!(allowed(
        "spiffe://partner.example/ns/apps/sa/producer",
        &imposter
    ));
    assert!(allowed("*", &imposter));
    // Anonymous: only `*` and User:ANONYMOUS.
    assert!(allowed("*", &Principal::Anonymous));
    assert!(allowed("User:ANONYMOUS", &Principal::Anonymous));
    assert!(!allowed("CN=*", &Principal::Anonymous));
    assert!(!allowed("cluster.local/*", &Principal::Anonymous));
}

#[test]
fn not_principals_exclude() {
    let a = external(&kap(
        "kafka",
        "p",
        "{rules: [{notPrincipals: [\"User:ANONYMOUS\", \"cluster.local/ns/apps/sa/consumer\"]}]}",
    ));
    assert!(a.authorize(&mesh(PRODUCER), Topic, "t", Read).allowed);
    assert!(a.authorize(&cert("CN=x", &[]), Topic, "t", Read).allowed);
    assert!(!a.authorize(&mesh(CONSUMER), Topic, "t", Read).allowed);
    assert!(!a.authorize(&Principal::Anonymous, Topic, "t", Read).allowed);
    // principals and notPrincipals together: in the first, not in the second.
    let a = external(&kap("kafka", "p", "{rules: [{principals: [\"cluster.local/ns/apps/*\"], notPrincipals: [\"*/sa/consumer\"]}]}"));
    assert!(a.authorize(&mesh(PRODUCER), Topic, "t", Read).allowed);
    assert!(!a.authorize(&mesh(CONSUMER), Topic, "t", Read).allowed);
    // `*` in notPrincipals excludes everyone, anonymous included.
    let a = external(&kap("kafka", "p", "{rules: [{notPrincipals: [\"*\"]}]}"));
    assert!(!a.authorize(&Principal::Anonymous, Topic, "t", Read).allowed);
}

#[test]
fn resource_kinds_and_patterns() {
    let a = external(&kap("kafka", "p", "{rules: [{resources: [{type: topic, name: \"*\"}, {type: group, name: app-, patternType: PREFIXED}, {type: transactionalId, name: tx-1}, {type: cluster}]}]}"));
    let p = mesh(PRODUCER);
    assert!(a.authorize(&p, Topic, "anything", Read).allowed);
    assert!(a.authorize(&p, Group, "app-eu", Read).allowed);
    assert!(!a.authorize(&p, Group, "other", Read).allowed);
    assert!(a.authorize(&p, TransactionalId, "tx-1", Write).allowed);
    assert!(!a.authorize(&p, TransactionalId, "tx-2", Write).allowed);
    assert!(a.authorize(&p, Cluster, "", IdempotentWrite).allowed);
    assert!(a.authorize(&p, Cluster, "kafka-cluster", Create).allowed);
}

// ------------------------------------------- requests decided by several questions

const BILLING: &str = "CN=billing,O=Example";

fn billing() -> Principal {
    cert(BILLING, &[])
}

/// `billing` with `rules` in an ALLOW policy, and `deny` (if not empty) in a
/// DENY policy.
fn billing_policies(rules: &str, deny: &str) -> KafkaAuthorizer {
    let mut p = kap("kafka", "billing", &format!("{{rules: [{rules}]}}"));
    if !deny.is_empty() {
        p += &kap(
            "kafka",
            "billing-deny",
            &format!("{{action: DENY, rules: [{deny}]}}"),
        );
    }
    external(&p)
}

#[test]
fn idempotent_producer_allowed_by_cluster_idempotent_write() {
    let a = billing_policies(
        "{principals: [\"CN=billing,O=Example\"], resources: [{type: cluster}], operations: [IdempotentWrite]}",
        "",
    );
    let d = a.authorize_idempotent_producer(&billing());
    expect(
        &d,
        true,
        KafkaBasis::AllowRule,
        Some("kafka/billing"),
        Some(0),
    );
    assert_eq!(d.note, None);
    assert!(!a.authorize_idempotent_producer(&mesh(PRODUCER)).allowed);
}

#[test]
fn idempotent_producer_allowed_by_write_on_a_topic() {
    // The and the example's policy: Read and Write on topics only
    // (KIP-679: Kafka 2.8+ needs no IdempotentWrite then).
    for pattern in [
        "{type: topic, name: orders., patternType: PREFIXED}",
        "{type: topic, name: orders.eu}",
        "{type: topic, name: \"*\"}",
    ] {
        let a = billing_policies(
            &format!("{{principals: [\"CN=billing,O=Example\"], resources: [{pattern}], operations: [Read, Write]}}"),
            "",
        );
        // The cluster question alone says no ...
        assert!(
            !a.authorize(&billing(), Cluster, "kafka-cluster", IdempotentWrite)
                .allowed
        );
        // ... the producer question says yes, naming the topic rule.
        let d = a.authorize_idempotent_producer(&billing());
        expect(
            &d,
            true,
            KafkaBasis::AllowRule,
            Some("kafka/billing"),
            Some(0),
        );
        assert_eq!(d.note, Some(NOTE_TOPIC_WRITE), "{pattern}");
        assert!(d.to_string().ends_with("(rule 0); Write on a topic is enough for an idempotent producer's InitProducerId (Kafka 2.8+, KIP-679)"), "{d}");
        // Another principal has no Write anywhere.
        let d = a.authorize_idempotent_producer(&mesh(PRODUCER));
        expect(
            &d,
            false,
            KafkaBasis::NoAllowRuleMatched,
            Some("kafka/billing"),
            None,
        );
        assert_eq!(d.note, Some(NOTE_NO_TOPIC_WRITE));
    }
    // `All` grants Write; a rule without resources grants every topic.
    for rules in [
        "{principals: [\"CN=billing,O=Example\"], resources: [{type: topic, name: t}], operations: [All]}",
        "{principals: [\"CN=billing,O=Example\"], operations: [Write]}",
    ] {
        assert!(
            billing_policies(rules, "")
                .authorize_idempotent_producer(&billing())
                .allowed,
            "{rules}"
        );
    }
}

#[test]
fn idempotent_producer_denied_when_deny_covers_every_write_allow() {
    let allow_prefixed = "{principals: [\"CN=billing,O=Example\"], resources: [{type: topic, name: orders., patternType: PREFIXED}], operations: [Write]}";
    let allow_literal = "{principals: [\"CN=billing,O=Example\"], resources: [{type: topic, name: orders.eu}], operations: [Write]}";
    for (allow, deny, covered) in [
        // A DENY prefix that is a prefix of the allowed prefix.
        (allow_prefixed, "{resources: [{type: topic, name: orders, patternType: PREFIXED}], operations: [Write]}", true),
        (allow_prefixed, "{resources: [{type: topic, name: orders., patternType: PREFIXED}], operations: [All]}", true),
        // `*`, and a DENY rule without resources: every topic.
        (allow_prefixed, "{resources: [{type: topic, name: \"*\"}], operations: [Write]}", true),
        (allow_literal, "{principals: [\"*\"], operations: [Write]}", true),
        // A literal allow: the same literal, or a prefix of it.
        (allow_literal, "{resources: [{type: topic, name: orders.eu}], operations: [Write]}", true),
        (allow_literal, "{resources: [{type: topic, name: orders.e, patternType: PREFIXED}], operations: [Write]}", true),
        // Not covered: a longer DENY prefix, a DENY literal under an ALLOW
        // prefix, another operation, another principal, another type.
        (allow_prefixed, "{resources: [{type: topic, name: orders.eu, patternType: PREFIXED}], operations: [Write]}", false),
        (allow_prefixed, "{resources: [{type: topic, name: orders.eu}], operations: [Write]}", false),
        (allow_prefixed, "{resources: [{type: topic, name: \"*\"}], operations: [Read]}", false),
        (allow_prefixed, "{principals: [\"CN=other\"], resources: [{type: topic, name: \"*\"}], operations: [Write]}", false),
        (allow_prefixed, "{resources: [{type: group, name: \"*\"}], operations: [All]}", false),
    ] {
        let a = billing_policies(allow, deny);
        let d = a.authorize_idempotent_producer(&billing());
        assert_eq!(d.allowed, !covered, "allow {allow} deny {deny}: {d}");
        let by_type = a.authorize_by_resource_type(&billing(), Topic, Write);
        assert_eq!(by_type.allowed, !covered, "allow {allow} deny {deny}: {by_type}");
        if covered {
            // The DENY rule is named; the answer is about the cluster.
            expect(
                &by_type,
                false,
                KafkaBasis::DenyRule,
                Some("kafka/billing-deny"),
                Some(0),
            );
            expect(
                &d,
                false,
                KafkaBasis::NoAllowRuleMatched,
                Some("kafka/billing"),
                None,
            );
            assert_eq!(d.note, Some(NOTE_NO_TOPIC_WRITE));
        }
    }
    // One covered ALLOW and one that is not: allowed by the second.
    let a = billing_policies(
        &format!("{allow_literal}, {allow_prefixed}"),
        "{resources: [{type: topic, name: orders.eu}], operations: [Write]}",
    );
    let d = a.authorize_by_resource_type(&billing(), Topic, Write);
    expect(
        &d,
        true,
        KafkaBasis::AllowRule,
        Some("kafka/billing"),
        Some(1),
    );
    // An ALLOW of `*` is not covered by DENY prefixes (Kafka: a wildcard
    // ALLOW allows), only by a DENY of `*`.
    let a = billing_policies(
        "{resources: [{type: topic, name: \"*\"}], operations: [Write]}",
        "{resources: [{type: topic, name: o, patternType: PREFIXED}], operations: [Write]}",
    );
    assert!(
        a.authorize_by_resource_type(&billing(), Topic, Write)
            .allowed
    );
}

#[test]
fn idempotent_producer_denied_with_only_read() {
    let a = billing_policies(
        "{principals: [\"CN=billing,O=Example\"], resources: [{type: topic, name: \"*\"}, {type: group, name: \"*\"}], operations: [Read, Describe]}",
        "",
    );
    let d = a.authorize_idempotent_producer(&billing());
    expect(
        &d,
        false,
        KafkaBasis::NoAllowRuleMatched,
        Some("kafka/billing"),
        None,
    );
    assert_eq!(d.note, Some(NOTE_NO_TOPIC_WRITE));
    assert!(
        !a.authorize_by_resource_type(&billing(), Topic, Write)
            .allowed
    );
    assert!(
        a.authorize_by_resource_type(&billing(), Topic, Read)
            .allowed
    );
}

#[test]
fn idempotent_producer_without_allow_policies_and_with_cluster_deny() {
    // No policy: allowed. Only DENY policies: IdempotentWrite on the
    // cluster is allowed unless denied itself (DENY first), whatever is
    // denied on topics.
    assert!(
        external("")
            .authorize_idempotent_producer(&billing())
            .allowed
    );
    let deny_only = |deny: &str| {
        external(&kap(
            "kafka",
            "d",
            &format!("{{action: DENY, rules: [{deny}]}}"),
        ))
    };
    let a = deny_only("{resources: [{type: topic, name: \"*\"}], operations: [Write]}");
    expect(
        &a.authorize_idempotent_producer(&billing()),
        true,
        KafkaBasis::NoAllowPolicy,
        None,
        None,
    );
    // By resource type without ALLOW policies: allowed unless denied on
    // every name (Kafka's allow.everyone.if.no.acl.found).
    expect(
        &a.authorize_by_resource_type(&billing(), Topic, Write),
        false,
        KafkaBasis::DenyRule,
        Some("kafka/d"),
        Some(0),
    );
    let a = deny_only("{resources: [{type: topic, name: orders}], operations: [Write]}");
    expect(
        &a.authorize_by_resource_type(&billing(), Topic, Write),
        true,
        KafkaBasis::NoAllowPolicy,
        None,
        None,
    );
    let d = deny_only("{resources: [{type: cluster}], operations: [IdempotentWrite]}")
        .authorize_idempotent_producer(&billing());
    expect(&d, false, KafkaBasis::DenyRule, Some("kafka/d"), Some(0));
    assert_eq!(d.note, None);
    // A DENY of IdempotentWrite wins over an ALLOW of topic Write.
    let a = billing_policies(
        "{resources: [{type: topic, name: orders}], operations: [Write]}",
        "{resources: [{type: cluster}], operations: [IdempotentWrite]}",
    );
    expect(
        &a.authorize_idempotent_producer(&billing()),
        false,
        KafkaBasis::DenyRule,
        Some("kafka/billing-deny"),
        Some(0),
    );
}

#[test]
fn topic_creation_by_cluster_create_or_topic_create() {
    // The audit's policy: Create and Describe on the cluster only.
    let a = billing_policies(
        "{principals: [\"CN=billing,O=Example\"], resources: [{type: cluster}], operations: [Create, Describe]}",
        "",
    );
    assert!(!a.authorize(&billing(), Topic, "newtopic", Create).allowed);
    let d = a.authorize_topic_creation(&billing(), "newtopic");
    expect(
        &d,
        true,
        KafkaBasis::AllowRule,
        Some("kafka/billing"),
        Some(0),
    );
    assert_eq!(d.note, Some(NOTE_CLUSTER_CREATE));
    // Create on the topic alone.
    let a = billing_policies(
        "{principals: [\"CN=billing,O=Example\"], resources: [{type: topic, name: new, patternType: PREFIXED}], operations: [Create]}",
        "",
    );
    let d = a.authorize_topic_creation(&billing(), "newtopic");
    expect(
        &d,
        true,
        KafkaBasis::AllowRule,
        Some("kafka/billing"),
        Some(0),
    );
    assert_eq!(d.note, None);
    let d = a.authorize_topic_creation(&billing(), "other");
    expect(
        &d,
        false,
        KafkaBasis::NoAllowRuleMatched,
        Some("kafka/billing"),
        None,
    );
    assert_eq!(d.note, Some(NOTE_NO_CLUSTER_CREATE));
    // A DENY of Create on the topic wins over cluster Create.
    let a = billing_policies(
        "{resources: [{type: cluster}], operations: [Create]}",
        "{resources: [{type: topic, name: secret, patternType: PREFIXED}], operations: [Create]}",
    );
    assert!(a.authorize_topic_creation(&billing(), "orders").allowed);
    expect(
        &a.authorize_topic_creation(&billing(), "secret.x"),
        false,
        KafkaBasis::DenyRule,
        Some("kafka/billing-deny"),
        Some(0),
    );
}

#[test]
fn authorizer_is_shareable() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<KafkaAuthorizer>();
    assert_send_sync::<KafkaDecision>();
}

// ---------------------------------------------------------------- properties

const PRINCIPAL_PATTERNS: &[&str] = &[
    "*",
    "User:ANONYMOUS",
    "cluster.local/ns/apps/sa/producer",
    "spiffe://cluster.local/ns/apps/*",
    "*/sa/consumer",
    "CN=billing,O=Example",
    "CN=bill*",
    "*.example.com",
];

const NAMES: &[&str] = &["orders", "orders.", "orders.eu", "pay", "*"];
const REQUEST_NAMES: &[&str] = &["orders", "orders.eu", "orders.us", "payments", "x"];

fn principals() -> Vec<Principal> {
    vec![
        mesh(PRODUCER),
        mesh(CONSUMER),
        mesh("spiffe://cluster.local/ns/other/sa/producer"),
        cert("CN=billing, O=Example", &["billing.example.com"]),
        cert("CN=other", &["x.example.org"]),
        cert(
            "CN=imposter",
            &["spiffe://cluster.local/ns/apps/sa/producer"],
        ),
        Principal::Anonymous,
    ]
}

fn pattern_strategy() -> impl Strategy<Value = PrincipalPattern> {
    prop::sample::select(PRINCIPAL_PATTERNS).prop_map(|s| PrincipalPattern::parse(s).unwrap())
}

fn resource_strategy() -> impl Strategy<Value = ResourcePattern> {
    (
        prop::sample::select(&ResourceType::ALL[..]),
        prop::sample::select(NAMES),
        any::<bool>(),
    )
        .prop_map(|(t, n, prefixed)| ResourcePattern {
            resource_type: t,
            name: if t == Cluster {
                "kafka-cluster".to_owned()
            } else {
                n.to_owned()
            },
            pattern_type: if prefixed && n != "*" && t != Cluster {
                PatternType::Prefixed
            } else {
                PatternType::Literal
            },
        })
}

fn rule_strategy() -> impl Strategy<Value = KafkaRule> {
    (
        prop::collection::vec(pattern_strategy(), 0..3),
        prop::collection::vec(pattern_strategy(), 0..2),
        prop::collection::vec(resource_strategy(), 0..3),
        prop::collection::vec(prop::sample::select(&Operation::ALL[..]), 0..3),
    )
        .prop_map(
            |(principals, not_principals, resources, operations)| KafkaRule {
                principals,
                not_principals,
                resources,
                operations,
            },
        )
}

fn policy_strategy() -> impl Strategy<Value = KafkaAuthorizationPolicy> {
    (any::<bool>(), prop::collection::vec(rule_strategy(), 0..3)).prop_map(|(deny, rules)| {
        KafkaAuthorizationPolicy {
            metadata: ObjectMeta::new("kafka", "extra"),
            gateways: None,
            action: if deny { Action::Deny } else { Action::Allow },
            rules,
            doc: None,
        }
    })
}

/// Up to three policies with distinct names (`p0`, `p1`, ...).
fn policies_strategy() -> impl Strategy<Value = Vec<KafkaAuthorizationPolicy>> {
    prop::collection::vec(policy_strategy(), 0..4).prop_map(|mut v| {
        for (i, p) in v.iter_mut().enumerate() {
            p.metadata.name = format!("p{i}");
        }
        v
    })
}

#[derive(Debug, Clone)]
struct Req {
    principal: usize,
    resource_type: ResourceType,
    name: &'static str,
    operation: Operation,
}

fn request_strategy() -> impl Strategy<Value = Req> {
    (
        0..principals().len(),
        prop::sample::select(&ResourceType::ALL[..]),
        prop::sample::select(REQUEST_NAMES),
        prop::sample::select(&Operation::ALL[..]),
    )
        .prop_map(|(principal, resource_type, name, operation)| Req {
            principal,
            resource_type,
            name,
            operation,
        })
}

fn with_policies(policies: &[KafkaAuthorizationPolicy]) -> Config {
    let mut c = Config::default();
    c.kafka_authorization_policies = policies.to_vec();
    c
}

fn authorize(policies: &[KafkaAuthorizationPolicy], r: &Req) -> KafkaDecision {
    KafkaAuthorizer::for_gateway(&with_policies(policies), "kafka", "external").authorize(
        &principals()[r.principal],
        r.resource_type,
        r.name,
        r.operation,
    )
}

/// The reference: the semantics read literally, with strings built.
fn reference_principal(pattern: &str, p: &Principal) -> bool {
    let body = pattern.strip_prefix("User:").unwrap_or(pattern);
    if body == "*" {
        return true;
    }
    if pattern == "User:ANONYMOUS" {
        return matches!(p, Principal::Anonymous);
    }
    let sm = StringMatch::parse(body);
    match p {
        Principal::Anonymous => false,
        Principal::Spiffe(id) => {
            StringMatch::parse(body.trim_start_matches("spiffe://")).matches(&id.principal())
        }
        Principal::Certificate { subject, sans } => {
            let canon = dn::canonical(subject);
            let subject_ok = match &sm {
                StringMatch::Exact(e) => {
                    let mut rev: Vec<&str> = subject.split(',').collect();
                    rev.reverse();
                    canon == dn::canonical(e) || dn::canonical(&rev.join(",")) == dn::canonical(e)
                }
                StringMatch::Prefix(x) => canon.starts_with(&dn::canonical(x)),
                StringMatch::Suffix(x) => canon.ends_with(&dn::canonical(x)),
                StringMatch::Presence => true,
            };
            let mesh_only =
                !body.starts_with("spiffe://") && (body.contains("/ns/") || body.contains("/sa/"));
            !mesh_only
                && (subject_ok
                    || sans.iter().any(|s| {
                        !s.to_ascii_lowercase()
                            .starts_with("spiffe://cluster.local/")
                            && sm.matches(s)
                    }))
        }
    }
}

fn reference_rule(rule: &KafkaRule, deny: bool, p: &Principal, r: &Req) -> bool {
    let op = rule.operations.is_empty()
        || rule.operations.iter().any(|o| {
            if deny {
                o.covers_for_deny(r.operation)
            } else {
                o.covers(r.operation)
            }
        });
    let res = rule.resources.is_empty()
        || rule
            .resources
            .iter()
            .any(|x| x.matches(r.resource_type, r.name));
    let who = rule.principals.is_empty()
        || rule
            .principals
            .iter()
            .any(|x| reference_principal(x.as_str(), p));
    let not = rule
        .not_principals
        .iter()
        .any(|x| reference_principal(x.as_str(), p));
    op && res && who && !not
}

fn reference(policies: &[KafkaAuthorizationPolicy], r: &Req) -> bool {
    let p = &principals()[r.principal];
    let matches = |pol: &KafkaAuthorizationPolicy| {
        pol.rules
            .iter()
            .any(|rule| reference_rule(rule, pol.action == Action::Deny, p, r))
    };
    if policies
        .iter()
        .any(|pol| pol.action == Action::Deny && matches(pol))
    {
        return false;
    }
    let allows: Vec<_> = policies
        .iter()
        .filter(|pol| pol.action == Action::Allow)
        .collect();
    allows.is_empty() || allows.into_iter().any(matches)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn agrees_with_the_reference(policies in policies_strategy(), r in request_strategy()) {
        let d = authorize(&policies, &r);
        prop_assert_eq!(d.allowed, reference(&policies, &r), "{:?} {:?}", d, r);
        // The reported policy and rule really decide.
        if let (Some(key), Some(i)) = (&d.policy, d.rule) {
            let pol = policies.iter().find(|p| p.metadata.key() == **key).unwrap();
            prop_assert!(reference_rule(&pol.rules[i], pol.action == Action::Deny, &principals()[r.principal], &r));
            prop_assert_eq!(pol.action == Action::Allow, d.allowed);
        }
    }

    #[test]
    fn deny_always_wins(policies in policies_strategy(), extra in policy_strategy(), r in request_strategy()) {
        let d = authorize(&policies, &r);
        if d.basis == KafkaBasis::DenyRule {
            // Adding any policy (an ALLOW one in particular) keeps it denied by a DENY rule.
            let mut more = policies.clone();
            more.push(KafkaAuthorizationPolicy { action: Action::Allow, ..extra.clone() });
            more.push(extra);
            let again = authorize(&more, &r);
            prop_assert!(!again.allowed);
            prop_assert_eq!(again.basis, KafkaBasis::DenyRule);
        }
        // A matching DENY rule anywhere means deny.
        let p = &principals()[r.principal];
        if policies.iter().any(|pol| pol.action == Action::Deny && pol.rules.iter().any(|rule| reference_rule(rule, true, p, &r))) {
            prop_assert_eq!(d.basis, KafkaBasis::DenyRule);
        }
    }

    #[test]
    fn without_allow_policies_only_deny_rules_deny(policies in policies_strategy(), r in request_strategy()) {
        let denies: Vec<_> = policies.into_iter().filter(|p| p.action == Action::Deny).collect();
        let d = authorize(&denies, &r);
        prop_assert!(d.allowed || d.basis == KafkaBasis::DenyRule);
    }

    #[test]
    fn implications_hold(policies in policies_strategy(), r in request_strategy(), implied in prop::sample::select(&Operation::ALL[..])) {
        let d = authorize(&policies, &r);
        if d.basis == KafkaBasis::AllowRule && r.operation.covers(implied) {
            // What an ALLOW grants, it grants with its implications, unless a DENY names the implied operation.
            let d2 = authorize(&policies, &Req { operation: implied, ..r.clone() });
            prop_assert!(d2.allowed || d2.basis == KafkaBasis::DenyRule, "{:?} -> {:?}", r.operation, implied);
        }
    }

    #[test]
    fn some_allowed_name_means_allowed_by_resource_type(policies in policies_strategy(), r in request_strategy()) {
        // Kafka's authorizeByResourceType errs only on the side of allowing:
        // if one name of the type is allowed, so is the type.
        let a = KafkaAuthorizer::for_gateway(&with_policies(&policies), "kafka", "external");
        let p = &principals()[r.principal];
        if r.resource_type != Cluster
            && REQUEST_NAMES.iter().any(|n| a.authorize(p, r.resource_type, n, r.operation).allowed)
        {
            prop_assert!(a.authorize_by_resource_type(p, r.resource_type, r.operation).allowed);
        }
        // A reported rule is of the decision's action.
        let by_type = a.authorize_by_resource_type(p, r.resource_type, r.operation);
        if let (Some(key), Some(_)) = (by_type.policy.as_deref(), by_type.rule) {
            let pol = policies.iter().find(|x| x.metadata.key() == key).unwrap();
            prop_assert_eq!(pol.action == Action::Allow, by_type.allowed, "{:?}", by_type);
        }
    }

    #[test]
    fn two_question_requests_are_at_least_their_own_question(policies in policies_strategy(), r in request_strategy()) {
        let a = KafkaAuthorizer::for_gateway(&with_policies(&policies), "kafka", "external");
        let p = &principals()[r.principal];
        // What the plain question allows, the request-level one allows; a
        // DENY of the plain question still denies.
        let topic = a.authorize(p, Topic, r.name, Create);
        let creation = a.authorize_topic_creation(p, r.name);
        prop_assert!(!topic.allowed || creation.allowed);
        if topic.basis == KafkaBasis::DenyRule {
            prop_assert!(!creation.allowed);
        }
        prop_assert_eq!(
            creation.allowed,
            topic.allowed
                || (topic.basis != KafkaBasis::DenyRule
                    && a.authorize(p, Cluster, "kafka-cluster", Create).allowed)
        );
        let cluster = a.authorize(p, Cluster, "kafka-cluster", IdempotentWrite);
        let producer = a.authorize_idempotent_producer(p);
        prop_assert_eq!(
            producer.allowed,
            cluster.allowed
                || (cluster.basis != KafkaBasis::DenyRule
                    && a.authorize_by_resource_type(p, Topic, Write).allowed)
        );
    }

    #[test]
    fn prefixed_means_starts_with(prefix in "[a-z.]{1,6}", name in "[a-z.]{0,10}") {
        let p = ResourcePattern { resource_type: Topic, name: prefix.clone(), pattern_type: PatternType::Prefixed };
        prop_assert_eq!(p.matches(Topic, &name), name.starts_with(&prefix));
        prop_assert_eq!(p.matches(Topic, &format!("{prefix}{name}")), true);
        let l = ResourcePattern { pattern_type: PatternType::Literal, ..p };
        prop_assert_eq!(l.matches(Topic, &name), name == prefix);
    }

    #[test]
    fn spiffe_matching_agrees_with_istio(
        ns in "[a-z]{1,4}", sa in "[a-z]{1,4}",
        pattern in "(cluster\\.local|[a-z]{1,3})?(/ns/)?[a-z]{0,4}(/sa/)?[a-z]{0,4}",
        kind in 0..4u8,
    ) {
        let id = SpiffeId::new(Default::default(), &ns, &sa).unwrap();
        let m = match kind {
            0 => StringMatch::Exact(pattern.clone()),
            1 => StringMatch::Prefix(pattern.clone()),
            2 => StringMatch::Suffix(pattern.clone()),
            _ => StringMatch::Presence,
        };
        prop_assert_eq!(spiffe_matches(&m, &id), m.matches(&id.principal()));
        // The id's own principal, cut anywhere, is a prefix and a suffix.
        let full = id.principal();
        for cut in 0..=full.len() {
            prop_assert!(spiffe_matches(&StringMatch::Prefix(full[..cut].to_owned()), &id));
            prop_assert!(spiffe_matches(&StringMatch::Suffix(full[cut..].to_owned()), &id));
        }
        prop_assert!(spiffe_matches(&StringMatch::Exact(full), &id));
    }
}
