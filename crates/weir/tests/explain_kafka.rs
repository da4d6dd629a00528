//! Kafka questions through the real `weir explain` and `weir check` binaries:
//! the example's policies, the semantics case by case, and bad arguments.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/kafka-gateway")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("weir-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(config: &[PathBuf], args: &[&str]) -> Output {
    weir()
        .arg("explain")
        .arg("--config")
        .args(config)
        .args(args)
        .output()
        .unwrap()
}

fn explain(config: &[PathBuf], args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = run(config, &all);
    assert!(
        out.status.success(),
        "explain {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[track_caller]
fn expect(v: &Value, decision: &str, policy: Option<&str>, rule: Option<u64>) {
    assert_eq!(v["decision"], decision, "{v:#}");
    match policy {
        Some(p) => assert_eq!(v["policy"], p, "{v:#}"),
        None => assert!(v["policy"].is_null(), "{v:#}"),
    }
    match rule {
        Some(r) => assert_eq!(v["rule"], r, "{v:#}"),
        None => assert!(v["rule"].is_null(), "{v:#}"),
    }
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v:#}");
}

#[track_caller]
fn fails(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
}

const PRODUCER: &str = "spiffe://cluster.local/ns/apps/sa/producer";

#[test]
fn example_policies() {
    let cfg = [example()];
    let v = explain(
        &cfg,
        &[
            "--from",
            PRODUCER,
            "--topic",
            "orders.eu",
            "--operation",
            "Write",
        ],
    );
    expect(&v, "allow", Some("kafka/orders-writers"), Some(0));
    assert_eq!(v["principal"], PRODUCER);
    assert_eq!(v["resource"]["type"], "topic");
    assert_eq!(v["resource"]["name"], "orders.eu");
    assert_eq!(v["operation"], "Write");
    assert_eq!(v["gateway"], "kafka/external");
    // Write grants Describe; nothing grants the producer Read or other topics.
    let v = explain(
        &cfg,
        &[
            "--from",
            "cluster.local/ns/apps/sa/producer",
            "--topic",
            "orders.eu",
            "--operation",
            "describe",
        ],
    );
    expect(&v, "allow", Some("kafka/orders-writers"), Some(0));
    assert_eq!(v["operation"], "Describe");
    let v = explain(
        &cfg,
        &[
            "--from",
            PRODUCER,
            "--topic",
            "orders.eu",
            "--operation",
            "Read",
        ],
    );
    expect(&v, "deny", None, None);
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("kafka/orders-writers, kafka/orders-readers, kafka/billing"),
        "{reason}"
    );
    expect(
        &explain(
            &cfg,
            &[
                "--from",
                PRODUCER,
                "--topic",
                "payments",
                "--operation",
                "Write",
            ],
        ),
        "deny",
        None,
        None,
    );
    // The consumer reads topics and its consumer group.
    let consumer = "cluster.local/ns/apps/sa/consumer";
    expect(
        &explain(
            &cfg,
            &[
                "--from",
                consumer,
                "--topic",
                "orders.us",
                "--operation",
                "READ",
            ],
        ),
        "allow",
        Some("kafka/orders-readers"),
        Some(0),
    );
    let v = explain(
        &cfg,
        &[
            "--from",
            consumer,
            "--group",
            "orders-app",
            "--operation",
            "Read",
        ],
    );
    expect(&v, "allow", Some("kafka/orders-readers"), Some(0));
    assert_eq!(v["resource"]["type"], "group");
    // The external client by subject, spelled differently; DENY wins over its ALLOW.
    let v = explain(
        &cfg,
        &[
            "--from",
            "cn=billing, O=Example",
            "--topic",
            "invoices",
            "--operation",
            "Read",
            "--gateway",
            "kafka/external",
        ],
    );
    expect(&v, "allow", Some("kafka/billing"), Some(0));
    assert_eq!(v["principal"], "cn=billing, O=Example");
    let v = explain(
        &cfg,
        &[
            "--from",
            "User:CN=billing,O=Example",
            "--topic",
            "invoices",
            "--operation",
            "Delete",
        ],
    );
    expect(&v, "deny", Some("istio-system/no-topic-admin"), Some(0));
    assert_eq!(
        v["reason"],
        "denied by DENY KafkaAuthorizationPolicy istio-system/no-topic-admin (rule 0)"
    );
    // Anonymous clients are granted nothing.
    let v = explain(
        &cfg,
        &[
            "--from",
            "anonymous",
            "--topic",
            "invoices",
            "--operation",
            "Read",
        ],
    );
    expect(&v, "deny", None, None);
    assert_eq!(v["principal"], "anonymous");
    // The cluster resource. IdempotentWrite is asked only by an idempotent
    // producer's InitProducerId, which Write on a topic allows (KIP-679).
    let v = explain(
        &cfg,
        &[
            "--from",
            PRODUCER,
            "--cluster",
            "--operation",
            "IdempotentWrite",
        ],
    );
    expect(&v, "allow", Some("kafka/orders-writers"), Some(0));
    assert_eq!(v["resource"]["type"], "cluster");
    assert_eq!(v["resource"]["name"], "kafka-cluster");
    assert!(v["reason"].as_str().unwrap().contains("KIP-679"), "{v:#}");
    // The consumer may only Read: no producer id.
    let v = explain(
        &cfg,
        &[
            "--from",
            "cluster.local/ns/apps/sa/consumer",
            "--cluster",
            "--operation",
            "IdempotentWrite",
        ],
    );
    expect(&v, "deny", None, None);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .ends_with("Write on some topic, which would also do for an idempotent producer (KIP-679), is not allowed either"),
        "{v:#}"
    );
    let v = explain(
        &cfg,
        &["--from", PRODUCER, "--cluster", "--operation", "Describe"],
    );
    expect(&v, "deny", None, None);
}

/// Topic Create is asked only by CreateTopics and Metadata auto-creation,
/// which Kafka allows with Create on the cluster (then every topic).
#[test]
fn topic_create_is_allowed_by_cluster_create() {
    let dir = TempDir::new("explain-create");
    let gw = dir.write("gw.yaml", &gateway("external", 9094));
    let pf = dir.write(
        "p.yaml",
        &(kap(
            "kafka",
            "admins",
            "{rules: [{principals: [\"CN=billing,O=Example\"], resources: [{type: cluster}], operations: [Create, Describe]}]}",
        ) + &kap(
            "kafka",
            "no-secrets",
            "{action: DENY, rules: [{resources: [{type: topic, name: secret, patternType: PREFIXED}], operations: [Create]}]}",
        )),
    );
    let cfg = [gw, pf];
    let from = ["--from", "CN=billing,O=Example"];
    let v = explain(
        &cfg,
        &[&from[..], &["--cluster", "--operation", "Create"]].concat(),
    );
    expect(&v, "allow", Some("kafka/admins"), Some(0));
    let v = explain(
        &cfg,
        &[&from[..], &["--topic", "newtopic", "--operation", "Create"]].concat(),
    );
    expect(&v, "allow", Some("kafka/admins"), Some(0));
    assert!(
        v["reason"].as_str().unwrap().contains(
            "Create on the cluster lets CreateTopics and Metadata auto-creation create every topic"
        ),
        "{v:#}"
    );
    // A DENY of Create on the topic still wins.
    let v = explain(
        &cfg,
        &[&from[..], &["--topic", "secret.x", "--operation", "Create"]].concat(),
    );
    expect(&v, "deny", Some("kafka/no-secrets"), Some(0));
    // Other operations on topics are not affected.
    let v = explain(
        &cfg,
        &[&from[..], &["--topic", "newtopic", "--operation", "Delete"]].concat(),
    );
    expect(&v, "deny", Some("kafka/admins"), None);
}

#[test]
fn text_output() {
    let out = run(
        &[example()],
        &[
            "--from",
            PRODUCER,
            "--topic",
            "orders.eu",
            "--operation",
            "Write",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        "decision:  allow\n\
         gateway:   KafkaGateway kafka/external\n\
         principal: spiffe://cluster.local/ns/apps/sa/producer\n\
         resource:  topic orders.eu\n\
         operation: Write\n\
         policy:    KafkaAuthorizationPolicy kafka/orders-writers (rule 0)\n\
         reason:    allowed by ALLOW KafkaAuthorizationPolicy kafka/orders-writers (rule 0)\n"
    );
}

fn gateway(name: &str, port: u16) -> String {
    format!("---\napiVersion: weir.dev/v1alpha1\nkind: KafkaGateway\nmetadata: {{name: {name}, namespace: kafka}}\nspec:\n  port: {port}\n  tls: {{serverCertificate: /tls.crt, privateKey: /tls.key}}\n  bootstrapHost: {name}.example.com\n  brokerHostTemplate: \"b{{id}}-{name}.example.com\"\n  upstream: {{bootstrapServers: [\"198.18.0.10:9092\"]}}\n")
}

fn kap(ns: &str, name: &str, spec: &str) -> String {
    format!("---\napiVersion: weir.dev/v1alpha1\nkind: KafkaAuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
}

#[test]
fn semantics_table() {
    let dir = TempDir::new("kafka-semantics");
    let gw = dir.write("gw.yaml", &gateway("external", 9094));
    let allow_orders = kap("kafka", "allow", "{rules: [{principals: [\"cluster.local/ns/apps/*\"], resources: [{type: topic, name: orders., patternType: PREFIXED}], operations: [Read, AlterConfigs]}]}");
    let deny_read = kap("kafka", "deny", "{action: DENY, rules: [{resources: [{type: topic, name: orders.secret}], operations: [Read]}]}");
    let p = PRODUCER;
    // (policies, from, resource flag, name, operation, decision, policy, rule)
    #[allow(clippy::type_complexity)]
    let table: Vec<(String, &str, &str, &str, &str, &str, Option<&str>, Option<u64>)> = vec![
        // no policy: allowed
        (String::new(), p, "--topic", "t", "Write", "allow", None, None),
        // spec {} allows nothing
        (kap("kafka", "nothing", "{}"), p, "--topic", "t", "Read", "deny", Some("kafka/nothing"), None),
        // ALLOW by prefix; implied Describe and DescribeConfigs; not Write
        (allow_orders.clone(), p, "--topic", "orders.eu", "Read", "allow", Some("kafka/allow"), Some(0)),
        (allow_orders.clone(), p, "--topic", "orders.eu", "Describe", "allow", Some("kafka/allow"), Some(0)),
        (allow_orders.clone(), p, "--topic", "orders.eu", "DescribeConfigs", "allow", Some("kafka/allow"), Some(0)),
        (allow_orders.clone(), p, "--topic", "orders.eu", "Write", "deny", Some("kafka/allow"), None),
        (allow_orders.clone(), p, "--topic", "order", "Read", "deny", Some("kafka/allow"), None),
        (allow_orders.clone(), "cluster.local/ns/other/sa/x", "--topic", "orders.eu", "Read", "deny", Some("kafka/allow"), None),
        // DENY first; a DENY of Read does not deny Describe
        (allow_orders.clone() + &deny_read, p, "--topic", "orders.secret", "Read", "deny", Some("kafka/deny"), Some(0)),
        (allow_orders.clone() + &deny_read, p, "--topic", "orders.secret", "Describe", "allow", Some("kafka/allow"), Some(0)),
        // transactional ids and the cluster
        (kap("kafka", "tx", "{rules: [{resources: [{type: transactionalId, name: \"*\"}, {type: cluster}], operations: [Write, IdempotentWrite]}]}"), p, "--transactional-id", "tx-1", "Write", "allow", Some("kafka/tx"), Some(0)),
        (kap("kafka", "tx", "{rules: [{resources: [{type: transactionalId, name: \"*\"}, {type: cluster}], operations: [Write, IdempotentWrite]}]}"), p, "--cluster", "", "IdempotentWrite", "allow", Some("kafka/tx"), Some(0)),
        // root namespace DENY applies; another namespace's policy does not
        (kap("istio-system", "deny-all", "{action: DENY, rules: [{}]}"), "anonymous", "--group", "g", "Read", "deny", Some("istio-system/deny-all"), Some(0)),
        (kap("apps", "deny-all", "{action: DENY, rules: [{}]}"), "anonymous", "--group", "g", "Read", "allow", None, None),
        // gateways: naming another gateway leaves this one unrestricted
        (kap("kafka", "internal-only", "{gateways: [internal]}"), p, "--topic", "t", "Read", "allow", None, None),
        // certificate subjects and SANs
        (kap("kafka", "cert", "{rules: [{principals: [\"CN=app,O=Example\"]}]}"), "O = Example, CN = app", "--topic", "t", "Read", "allow", Some("kafka/cert"), Some(0)),
        (kap("kafka", "cert", "{rules: [{principals: [\"*.example.com\"]}]}"), "CN=app", "--topic", "t", "Read", "deny", Some("kafka/cert"), None),
        // anonymous: only `*` and User:ANONYMOUS
        (kap("kafka", "anon", "{rules: [{principals: [\"User:ANONYMOUS\"], operations: [Describe]}]}"), "anonymous", "--topic", "t", "Describe", "allow", Some("kafka/anon"), Some(0)),
        (kap("kafka", "anon", "{rules: [{notPrincipals: [\"User:ANONYMOUS\"]}]}"), "anonymous", "--topic", "t", "Describe", "deny", Some("kafka/anon"), None),
    ];
    for (i, (policies, from, flag, name, op, decision, policy, rule)) in table.iter().enumerate() {
        let pf = dir.write(&format!("p{i}.yaml"), policies);
        let mut args = vec!["--from", from];
        if *flag == "--cluster" {
            args.push(flag);
        } else {
            args.extend([*flag, *name]);
        }
        args.extend(["--operation", op]);
        let v = explain(&[gw.clone(), pf.clone()], &args);
        assert_eq!(v["decision"], *decision, "case {i}: {policies}\n{v:#}");
        assert_eq!(v["policy"].as_str(), *policy, "case {i}: {policies}\n{v:#}");
        assert_eq!(v["rule"].as_u64(), *rule, "case {i}: {policies}\n{v:#}");
        let _ = std::fs::remove_file(&pf);
    }
    // A SAN given with --san.
    let pf = dir.write(
        "san.yaml",
        &kap(
            "kafka",
            "san",
            "{rules: [{principals: [\"*.example.com\"]}]}",
        ),
    );
    let v = explain(
        &[gw, pf],
        &[
            "--from",
            "CN=app",
            "--san",
            "app.example.com",
            "--topic",
            "t",
            "--operation",
            "Read",
        ],
    );
    expect(&v, "allow", Some("kafka/san"), Some(0));
}

#[test]
fn choosing_the_gateway() {
    let dir = TempDir::new("kafka-gateways");
    let cfg = [
        dir.write(
            "gw.yaml",
            &(gateway("external", 9094) + &gateway("internal", 9095)),
        ),
        dir.write(
            "p.yaml",
            &kap(
                "kafka",
                "p",
                "{gateways: [internal], action: DENY, rules: [{}]}",
            ),
        ),
    ];
    let args = ["--from", "anonymous", "--topic", "t", "--operation", "Read"];
    fails(
        &run(&cfg, &args),
        "several KafkaGateways (kafka/external, kafka/internal)",
    );
    let with = |g: &str| {
        let mut a = args.to_vec();
        a.extend(["--gateway", g]);
        explain(&cfg, &a)
    };
    expect(&with("kafka/internal"), "deny", Some("kafka/p"), Some(0));
    let v = with("external");
    expect(&v, "allow", None, None);
    assert_eq!(v["gateway"], "kafka/external");
    let mut a = args.to_vec();
    a.extend(["--gateway", "kafka/nope"]);
    fails(
        &run(&cfg, &a),
        "no such KafkaGateway; known KafkaGateways: kafka/external, kafka/internal",
    );
}

#[test]
fn bad_arguments_are_explained() {
    let cfg = [example()];
    let out = run(
        &cfg,
        &["--from", PRODUCER, "--topic", "t", "--operation", "Fly"],
    );
    fails(&out, "unknown Kafka operation \"Fly\"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("IdempotentWrite"));
    // Kafka never asks about All (a wildcard in rules): refused, in any case.
    for all in ["All", "ALL", "all"] {
        fails(
            &run(
                &cfg,
                &[
                    "--from",
                    PRODUCER,
                    "--topic",
                    "orders.eu",
                    "--operation",
                    all,
                ],
            ),
            "is not a question Kafka asks: All is a wildcard in rules",
        );
    }
    fails(
        &run(
            &cfg,
            &["--from", "nobody", "--topic", "t", "--operation", "Read"],
        ),
        "--from \"nobody\"",
    );
    fails(
        &run(
            &cfg,
            &["--from", "plaintext", "--topic", "t", "--operation", "Read"],
        ),
        "anonymous",
    );
    fails(
        &run(
            &cfg,
            &[
                "--from",
                PRODUCER,
                "--san",
                "x.example.com",
                "--topic",
                "t",
                "--operation",
                "Read",
            ],
        ),
        "--san",
    );
    // A resource needs an operation, and the reverse; one resource at a time;
    // no L4 flags in a Kafka question; no Kafka flags without a resource.
    fails(
        &run(&cfg, &["--from", PRODUCER, "--topic", "t"]),
        "--operation",
    );
    fails(
        &run(&cfg, &["--from", PRODUCER, "--operation", "Read"]),
        "--topic",
    );
    fails(
        &run(
            &cfg,
            &[
                "--from",
                PRODUCER,
                "--topic",
                "t",
                "--group",
                "g",
                "--operation",
                "Read",
            ],
        ),
        "cannot be used with",
    );
    fails(
        &run(
            &cfg,
            &[
                "--from",
                PRODUCER,
                "--topic",
                "t",
                "--operation",
                "Read",
                "--to",
                "kafka/kafka-0",
            ],
        ),
        "cannot be used with",
    );
    fails(&run(&cfg, &["--from", PRODUCER]), "--to");
    fails(
        &run(
            &cfg,
            &["--from", PRODUCER, "--topic", "", "--operation", "Read"],
        ),
        "must not be empty",
    );
    // No KafkaGateway at all.
    let mesh = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/kafka-mesh");
    fails(
        &run(
            &[mesh],
            &["--from", PRODUCER, "--topic", "t", "--operation", "Read"],
        ),
        "no KafkaGateway in the configuration",
    );
}

#[test]
fn check_summarises_and_locates_kafka_kinds() {
    let out = weir().arg("check").arg(example()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("KafkaGateway: 1 (ports: 9094)"), "{stdout}");
    assert!(
        stdout.contains("KafkaAuthorizationPolicy: 4 (ALLOW: 3, DENY: 1)"),
        "{stdout}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = weir()
        .args(["check", "-o", "json"])
        .arg(example())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kinds"]["KafkaGateway"], 1);
    assert_eq!(v["kinds"]["KafkaAuthorizationPolicy"], 4);

    let dir = TempDir::new("kafka-check");
    let bad = dir.write(
        "bad.yaml",
        &(gateway("external", 9094).replace("b{id}-external", "broker-external")
            + &gateway("second", 9095)
            + &kap(
                "kafka",
                "p",
                "{rules: [{resources: [{type: topic, name: \"orders.*\"}], operations: [Fly]}]}",
            )),
    );
    let out = weir().arg("check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let file = bad.display().to_string();
    assert!(stderr.contains(&format!("{file}: document 1 (index 0) KafkaGateway kafka/external: field spec.brokerHostTemplate: \"broker-external.example.com\" must contain {{id}} exactly once")), "{stderr}");
    assert!(stderr.contains("document 3 (index 2) KafkaAuthorizationPolicy kafka/p: field spec.rules[0].resources[0].name: \"orders.*\": '*' is not a glob"), "{stderr}");
    assert!(stderr.contains("document 3 (index 2) KafkaAuthorizationPolicy kafka/p: field spec.rules[0].operations[0]: unknown Kafka operation \"Fly\""), "{stderr}");
    // Two gateways on one port with the same selector.
    let two = dir.write(
        "two.yaml",
        &(gateway("external", 9094) + &gateway("second", 9094)),
    );
    let out = weir().arg("check").arg(&two).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("KafkaGateway kafka/second: field spec.port: port 9094 is already the port of KafkaGateway kafka/external"), "{stderr}");
}
