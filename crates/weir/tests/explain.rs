//! The policy semantics table, case by case, through the real `weir explain`
//! and `weir check` binaries.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/kafka-mesh")
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

fn explain(config: &[PathBuf], from: &str, src_ip: Option<&str>, to: &str, port: u16) -> Value {
    let mut cmd = weir();
    cmd.arg("explain").arg("--config").args(config);
    cmd.args([
        "--from",
        from,
        "--to",
        to,
        "--port",
        &port.to_string(),
        "--output",
        "json",
    ]);
    if let Some(ip) = src_ip {
        cmd.args(["--source-ip", ip]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "explain failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[track_caller]
fn expect(v: &Value, decision: &str, mode: &str, policy: Option<&str>) {
    assert_eq!(v["decision"], decision, "{v:#}");
    assert_eq!(v["mtls_mode"], mode, "{v:#}");
    match policy {
        Some(p) => assert_eq!(v["policy"], p, "{v:#}"),
        None => assert!(v["policy"].is_null(), "{v:#}"),
    }
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v:#}");
}

#[test]
fn example_policy_table() {
    let cfg = [example()];
    let producer = "spiffe://cluster.local/ns/apps/sa/producer";
    // The allowed service accounts reach the broker port over mTLS.
    let v = explain(&cfg, producer, None, "kafka/kafka-0", 9092);
    expect(&v, "allow", "STRICT", Some("kafka/kafka-clients"));
    // The caller as serviceAccounts entries name it.
    assert_eq!(v["source"]["service_account"], "apps/producer", "{v:#}");
    expect(
        &explain(
            &cfg,
            "cluster.local/ns/apps/sa/consumer",
            None,
            "kafka/kafka-0",
            9092,
        ),
        "allow",
        "STRICT",
        Some("kafka/kafka-clients"),
    );
    // Another service account is denied by the ALLOW policy's absence of a match.
    expect(
        &explain(
            &cfg,
            "cluster.local/ns/apps/sa/intruder",
            None,
            "kafka/kafka-0",
            9092,
        ),
        "deny",
        "STRICT",
        Some("kafka/kafka-clients"),
    );
    // Plaintext on the broker port: refused by STRICT.
    expect(
        &explain(
            &cfg,
            "plaintext",
            Some("198.18.0.99"),
            "kafka/kafka-0",
            9092,
        ),
        "deny",
        "STRICT",
        Some("kafka/default"),
    );
    // Plaintext on the metrics port: the port-level PERMISSIVE exception admits it.
    expect(
        &explain(
            &cfg,
            "plaintext",
            Some("198.18.0.99"),
            "kafka/kafka-0",
            9404,
        ),
        "allow",
        "PERMISSIVE",
        Some("kafka/kafka-clients"),
    );
    // Workloads without policies: PERMISSIVE, allowed by default.
    expect(
        &explain(&cfg, "plaintext", None, "apps/producer", 8080),
        "allow",
        "PERMISSIVE",
        None,
    );
}

const WL: &str = "apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: kafka-0, namespace: kafka, labels: {app: kafka}}\nspec: {serviceAccount: kafka, address: 198.18.0.10, node: node-a}\n";

fn case(dir: &TempDir, n: usize, policies: &str) -> Vec<PathBuf> {
    vec![
        dir.write("w.yaml", WL),
        dir.write(&format!("p{n}.yaml"), policies),
    ]
}

#[test]
fn semantics_table() {
    let dir = TempDir::new("semantics");
    let pa = |ns: &str, name: &str, ts: &str, spec: &str| {
        format!("---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{ts}\"}}\nspec: {spec}\n")
    };
    let ap = |ns: &str, name: &str, spec: &str| {
        format!("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
    };
    let dry = |ns: &str, name: &str, value: &str, spec: &str| {
        format!("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}, annotations: {{istio.io/dry-run: {value}}}}}\nspec: {spec}\n")
    };
    let sel = "selector: {matchLabels: {app: kafka}}";
    let p = "spiffe://cluster.local/ns/apps/sa/producer";
    let t0 = "2024-01-01T00:00:00Z";
    let t1 = "2024-06-01T00:00:00Z";
    // (policies, from, source ip, port, decision, mode, policy)
    #[allow(clippy::type_complexity)]
    let table: Vec<(String, &str, Option<&str>, u16, &str, &str, Option<&str>)> = vec![
        // no policy at all = PERMISSIVE, allowed
        (String::new(), "plaintext", None, 9092, "allow", "PERMISSIVE", None),
        // mesh STRICT
        (pa("istio-system", "mesh", t0, "{mtls: {mode: STRICT}}"), "plaintext", None, 9092, "deny", "STRICT", Some("istio-system/mesh")),
        // namespace beats mesh
        (pa("istio-system", "mesh", t0, "{mtls: {mode: STRICT}}") + &pa("kafka", "ns", t0, "{mtls: {mode: PERMISSIVE}}"), "plaintext", None, 9092, "allow", "PERMISSIVE", None),
        // workload beats namespace
        (pa("kafka", "ns", t0, "{mtls: {mode: PERMISSIVE}}") + &pa("kafka", "wl", t0, &format!("{{{sel}, mtls: {{mode: STRICT}}}}")), "plaintext", None, 9092, "deny", "STRICT", Some("kafka/wl")),
        // UNSET inherits
        (pa("kafka", "ns", t0, "{mtls: {mode: STRICT}}") + &pa("kafka", "wl", t0, &format!("{{{sel}, mtls: {{mode: UNSET}}}}")), "plaintext", None, 9092, "deny", "STRICT", Some("kafka/ns")),
        // port-level exception on that port only
        (pa("kafka", "wl", t0, &format!("{{{sel}, mtls: {{mode: STRICT}}, portLevelMtls: {{9404: {{mode: PERMISSIVE}}}}}}")), "plaintext", None, 9404, "allow", "PERMISSIVE", None),
        (pa("kafka", "wl", t0, &format!("{{{sel}, mtls: {{mode: STRICT}}, portLevelMtls: {{9404: {{mode: PERMISSIVE}}}}}}")), "plaintext", None, 9092, "deny", "STRICT", Some("kafka/wl")),
        // oldest selector policy wins
        (pa("kafka", "a-new", t1, &format!("{{{sel}, mtls: {{mode: PERMISSIVE}}}}")) + &pa("kafka", "b-old", t0, &format!("{{{sel}, mtls: {{mode: STRICT}}}}")), "plaintext", None, 9092, "deny", "STRICT", Some("kafka/b-old")),
        // root-namespace selector PA ignored
        (pa("istio-system", "sel", t0, &format!("{{{sel}, mtls: {{mode: STRICT}}}}")), "plaintext", None, 9092, "allow", "PERMISSIVE", None),
        // mTLS callers are not affected by STRICT
        (pa("kafka", "ns", t0, "{mtls: {mode: STRICT}}"), p, None, 9092, "allow", "STRICT", None),
        // DENY before ALLOW
        (ap("kafka", "allow", "{rules: [{}]}") + &ap("kafka", "deny", "{action: DENY, rules: [{from: [{source: {namespaces: [apps]}}]}]}"), p, None, 9092, "deny", "PERMISSIVE", Some("kafka/deny")),
        // spec {} allows nothing
        (ap("kafka", "nothing", "{}"), p, None, 9092, "deny", "PERMISSIVE", Some("kafka/nothing")),
        // rule {} matches everything
        (ap("kafka", "all", "{rules: [{}]}"), "plaintext", None, 1, "allow", "PERMISSIVE", Some("kafka/all")),
        // selector scoping: a policy for another app does not apply
        (ap("kafka", "zk", "{selector: {matchLabels: {app: zk}}}"), p, None, 9092, "allow", "PERMISSIVE", None),
        // root namespace AP applies mesh-wide
        (ap("istio-system", "deny-all", "{action: DENY, rules: [{}]}"), p, None, 9092, "deny", "PERMISSIVE", Some("istio-system/deny-all")),
        // principals: prefix, suffix, presence; plaintext has no principal
        (ap("kafka", "pfx", "{rules: [{from: [{source: {principals: [\"cluster.local/ns/apps/*\"]}}]}]}"), p, None, 9092, "allow", "PERMISSIVE", Some("kafka/pfx")),
        (ap("kafka", "sfx", "{rules: [{from: [{source: {principals: [\"*/sa/consumer\"]}}]}]}"), p, None, 9092, "deny", "PERMISSIVE", Some("kafka/sfx")),
        (ap("kafka", "any", "{rules: [{from: [{source: {principals: [\"*\"]}}]}]}"), "plaintext", None, 9092, "deny", "PERMISSIVE", Some("kafka/any")),
        // notPrincipals, notNamespaces
        (ap("kafka", "np", "{rules: [{from: [{source: {notPrincipals: [\"cluster.local/ns/apps/sa/producer\"]}}]}]}"), p, None, 9092, "deny", "PERMISSIVE", Some("kafka/np")),
        (ap("kafka", "nn", "{rules: [{from: [{source: {notNamespaces: [apps]}}]}]}"), "plaintext", None, 9092, "allow", "PERMISSIVE", Some("kafka/nn")),
        // serviceAccounts / notServiceAccounts (namespace/name; name alone = the policy's namespace)
        (ap("kafka", "sa", "{rules: [{from: [{source: {serviceAccounts: [apps/producer]}}]}]}"), p, None, 9092, "allow", "PERMISSIVE", Some("kafka/sa")),
        (ap("kafka", "sa", "{rules: [{from: [{source: {serviceAccounts: [producer]}}]}]}"), p, None, 9092, "deny", "PERMISSIVE", Some("kafka/sa")),
        (ap("kafka", "nsa", "{action: DENY, rules: [{from: [{source: {notServiceAccounts: [apps/producer]}}]}]}"), "plaintext", None, 9092, "deny", "PERMISSIVE", Some("kafka/nsa")),
        (ap("kafka", "nsa", "{action: DENY, rules: [{from: [{source: {notServiceAccounts: [apps/producer]}}]}]}"), p, None, 9092, "allow", "PERMISSIVE", None),
        // ipBlocks / notIpBlocks
        (ap("kafka", "ip", "{rules: [{from: [{source: {ipBlocks: [198.18.0.0/24]}}]}]}"), "plaintext", Some("198.18.0.7"), 9092, "allow", "PERMISSIVE", Some("kafka/ip")),
        (ap("kafka", "ip", "{rules: [{from: [{source: {ipBlocks: [198.18.0.0/24]}}]}]}"), "plaintext", Some("198.19.0.7"), 9092, "deny", "PERMISSIVE", Some("kafka/ip")),
        (ap("kafka", "nip", "{rules: [{from: [{source: {notIpBlocks: [198.18.0.7]}}]}]}"), "plaintext", Some("198.18.0.7"), 9092, "deny", "PERMISSIVE", Some("kafka/nip")),
        // ports / notPorts
        (ap("kafka", "port", "{rules: [{to: [{operation: {ports: [\"9092\"]}}]}]}"), p, None, 9093, "deny", "PERMISSIVE", Some("kafka/port")),
        (ap("kafka", "nport", "{rules: [{to: [{operation: {notPorts: [\"9092\"]}}]}]}"), p, None, 9093, "allow", "PERMISSIVE", Some("kafka/nport")),
        // when keys
        (ap("kafka", "w", "{rules: [{when: [{key: source.namespace, values: [apps]}, {key: destination.port, values: [\"9092\"]}]}]}"), p, None, 9092, "allow", "PERMISSIVE", Some("kafka/w")),
        (ap("kafka", "w", "{rules: [{when: [{key: source.principal, notValues: [\"cluster.local/ns/apps/sa/producer\"]}]}]}"), p, None, 9092, "deny", "PERMISSIVE", Some("kafka/w")),
        (ap("kafka", "w", "{rules: [{when: [{key: source.ip, values: [198.18.0.0/16]}, {key: destination.ip, values: [198.18.0.10]}]}]}"), "plaintext", Some("198.18.3.3"), 9092, "allow", "PERMISSIVE", Some("kafka/w")),
        // L7 in ALLOW never matches; L7 in DENY is enforced without it
        (ap("kafka", "l7", "{rules: [{to: [{operation: {methods: [GET]}}]}]}"), p, None, 9092, "deny", "PERMISSIVE", Some("kafka/l7")),
        (ap("kafka", "l7", "{action: DENY, rules: [{to: [{operation: {paths: [/admin], ports: [\"9092\"]}}]}]}"), p, None, 9092, "deny", "PERMISSIVE", Some("kafka/l7")),
        (ap("kafka", "l7", "{action: DENY, rules: [{to: [{operation: {paths: [/admin], ports: [\"9092\"]}}]}]}"), p, None, 9093, "allow", "PERMISSIVE", None),
        // istio.io/dry-run: "true": neither denies nor counts as an ALLOW policy
        (dry("kafka", "deny-all", "\"true\"", "{action: DENY, rules: [{}]}"), p, None, 9092, "allow", "PERMISSIVE", None),
        (dry("kafka", "nothing", "\"True\"", "{}") + &ap("kafka", "all", "{rules: [{}]}"), p, None, 9092, "allow", "PERMISSIVE", Some("kafka/all")),
        // ... only true: "false" or a value that is not a boolean is enforced
        (dry("kafka", "deny-all", "\"false\"", "{action: DENY, rules: [{}]}"), p, None, 9092, "deny", "PERMISSIVE", Some("kafka/deny-all")),
        (dry("kafka", "deny-all", "\"yes\"", "{action: DENY, rules: [{}]}"), p, None, 9092, "deny", "PERMISSIVE", Some("kafka/deny-all")),
    ];
    for (i, (policies, from, ip, port, decision, mode, policy)) in table.iter().enumerate() {
        let cfg = case(&dir, i, policies);
        let v = explain(&cfg, from, *ip, "kafka/kafka-0", *port);
        assert_eq!(v["decision"], *decision, "case {i}: {policies}\n{v:#}");
        assert_eq!(v["mtls_mode"], *mode, "case {i}: {policies}\n{v:#}");
        assert_eq!(v["policy"].as_str(), *policy, "case {i}: {policies}\n{v:#}");
        let _ = std::fs::remove_file(&cfg[1]);
    }
    // spec {}: the reason says why nothing matched.
    let cfg = case(&dir, 999, &ap("kafka", "nothing", "{}"));
    let v = explain(&cfg, p, None, "kafka/kafka-0", 9092);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("kafka/nothing has no rules: it allows nothing"),
        "{v:#}"
    );
}

#[test]
fn explain_refuses_a_foreign_trust_domain() {
    let dir = TempDir::new("foreign-td");
    let sfx = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: sfx, namespace: kafka}\nspec: {rules: [{from: [{source: {principals: [\"*/sa/producer\"]}}]}]}\n";
    // With no policy (allowed for a mesh peer) and with a principal pattern
    // that matches the foreign id: the handshake refuses it first. Both the
    // SPIFFE id and the principal form (no scheme).
    for (n, policies) in ["", sfx].into_iter().enumerate() {
        let cfg = case(&dir, 100 + n, policies);
        for from in [
            "spiffe://evil.example/ns/apps/sa/producer",
            "evil.example/ns/apps/sa/producer",
        ] {
            let v = explain(&cfg, from, None, "kafka/kafka-0", 9092);
            expect(&v, "deny", "PERMISSIVE", None);
            let reason = v["reason"].as_str().unwrap();
            assert!(
                reason
                    .contains("trust domain \"evil.example\", not the mesh's (\"cluster.local\")"),
                "{v:#}"
            );
        }
    }
    // --trust-domain names the mesh's.
    let cfg = case(&dir, 102, "");
    let out = weir()
        .arg("explain")
        .arg("--config")
        .args(&cfg)
        .args([
            "--trust-domain",
            "evil.example",
            "--from",
            "evil.example/ns/apps/sa/producer",
        ])
        .args(["--to", "kafka/kafka-0", "--port", "9092", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    expect(&v, "allow", "PERMISSIVE", None);
}

/// Where the mTLS mode comes from: the PeerAuthentication (and whether its
/// portLevelMtls entry for the port), or none (Istio's PERMISSIVE default).
#[test]
fn explain_names_the_peer_authentication_behind_the_mode() {
    let ex = [example()];
    let v = explain(&ex, "plaintext", None, "kafka/kafka-0", 9404);
    assert_eq!(
        (&v["mtls_mode"], &v["mtls_policy"], &v["mtls_port_level"]),
        (
            &"PERMISSIVE".into(),
            &"kafka/kafka-metrics".into(),
            &true.into()
        ),
        "{v:#}"
    );
    let v = explain(&ex, "plaintext", None, "kafka/kafka-0", 9092);
    assert_eq!(
        (&v["mtls_mode"], &v["mtls_policy"], &v["mtls_port_level"]),
        (&"STRICT".into(), &"kafka/default".into(), &false.into()),
        "{v:#}"
    );
    let dir = TempDir::new("explain-no-pa");
    let w = dir.write(
        "w.yaml",
        "apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: w, namespace: a}\nspec: {address: 198.18.0.9, node: n}\n",
    );
    let v = explain(&[w], "plaintext", None, "a/w", 80);
    assert_eq!(v["mtls_mode"], "PERMISSIVE", "{v:#}");
    assert!(v["mtls_policy"].is_null(), "{v:#}");
}

#[test]
fn check_summarises_valid_config() {
    let out = weir().arg("check").arg(example()).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("Workload: 4"), "{stdout}");
    assert!(stdout.contains("PeerAuthentication: 2"), "{stdout}");
    assert!(stdout.contains("AuthorizationPolicy: 1"), "{stdout}");
}

/// `-` reads standard input (as `kubectl apply -f -`), a byte-order mark
/// is no error, a file named twice is read once (not a duplicate of
/// itself), and a typed list as the API server returns it loads.
#[test]
fn check_reads_stdin_and_files_once() {
    use std::io::Write as _;
    let dir = TempDir::new("check-stdin");
    let pa = dir.write(
        "pa.yaml",
        "\u{feff}apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: kafka}\nspec: {mtls: {mode: STRICT}}\n",
    );
    let mut child = weir()
        .args(["check", "-"])
        .arg(&pa)
        .arg(&pa)
        .arg(&dir.0)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicyList\nitems:\n- metadata: {name: a, namespace: kafka}\n  spec: {action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]}\n- metadata: {name: b, namespace: kafka}\n  spec: {}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("PeerAuthentication: 1"), "{stdout}");
    assert!(
        stdout.contains("AuthorizationPolicy: 2 (ALLOW: 1, DENY: 1)"),
        "{stdout}"
    );
}

#[test]
fn check_reports_every_error_with_location() {
    let dir = TempDir::new("check");
    let bad = dir.write(
        "bad.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: kafka}\nspec: {action: CUSTOM, provider: {name: opa}}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n---\n\
         apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: w, namespace: kafka}\nspec: {address: 198.18.0.1, node: a, colour: blue, size: 3}\n",
    );
    let out = weir().arg("check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let file = bad.display().to_string();
    assert!(stderr.contains(&format!("{file}: document 1 (index 0) AuthorizationPolicy kafka/ext: field spec.action: CUSTOM is not supported")), "{stderr}");
    assert!(
        stderr.contains(
            "document 2 (index 1) ConfigMap default/cm: field kind: unknown kind \"ConfigMap\""
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "document 3 (index 2) Workload kafka/w: field spec.colour: unknown field \"colour\""
        ),
        "{stderr}"
    );
    // Every error of a document, not only the first serde met.
    assert!(
        stderr.contains(
            "document 3 (index 2) Workload kafka/w: field spec.size: unknown field \"size\""
        ),
        "{stderr}"
    );

    let out = weir()
        .args(["check", "-o", "json"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 4, "{v:#}");
    assert_eq!(v["errors"][0]["document"]["index"], 0);
    // The same keys as for a valid config, so scripts need no second shape.
    assert_eq!(v["kinds"], serde_json::json!({}), "{v:#}");
    assert_eq!(v["warnings"], serde_json::json!([]), "{v:#}");
}

/// `weir check ... | head -1`: the reader goes away after one line; weir
/// ends quietly with success instead of panicking on the broken pipe.
#[test]
fn check_and_explain_end_quietly_when_the_reader_goes_away() {
    use std::process::Stdio;
    for args in [
        vec!["check".to_owned(), example().display().to_string()],
        vec![
            "explain".to_owned(),
            "--config".to_owned(),
            example().display().to_string(),
            "--from".to_owned(),
            "plaintext".to_owned(),
            "--to".to_owned(),
            "kafka/kafka-0".to_owned(),
            "--port".to_owned(),
            "9092".to_owned(),
        ],
    ] {
        let mut child = weir()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before weir writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A refused config stays a failure when the reader goes away (so
/// `weir check bad/ | head -1` fails under pipefail), for stdout (JSON) and
/// for stderr (the error lines); and a closed stderr is no panic.
#[test]
fn a_refused_config_fails_even_when_the_reader_goes_away() {
    use std::process::Stdio;
    let dir = TempDir::new("check-pipe");
    let mut docs = String::new();
    for i in 0..300 {
        docs.push_str(&format!(
            "---\napiVersion: weir.dev/v1alpha1\nkind: Nonsense{i}\nmetadata: {{name: n{i}}}\n"
        ));
    }
    let bad = dir.write("bad.yaml", &docs);
    for json in [false, true] {
        let mut cmd = weir();
        cmd.arg("check").arg(&bad);
        if json {
            cmd.args(["--output", "json"]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the stream the answer goes to before weir writes it.
        if json {
            drop(child.stdout.take());
        } else {
            drop(child.stderr.take());
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "json={json}: {stderr}");
        assert!(!stderr.contains("panicked"), "json={json}: {stderr}");
    }
}

#[test]
fn check_warns_about_rules_with_http_attributes() {
    let dir = TempDir::new("check-l7");
    // The httpbin policy of Istio's documentation: valid, but its first rule
    // needs HTTP attributes, so at L4 it never matches.
    let p = dir.write(
        "httpbin.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: httpbin, namespace: foo}\n\
         spec:\n  selector: {matchLabels: {app: httpbin}}\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/default/sa/sleep]}\n\
         \x20   to:\n    - operation: {methods: [GET], paths: [\"/info*\"]}\n\
         \x20   when:\n    - key: request.auth.claims[iss]\n      values: [\"https://accounts.google.com\"]\n",
    );
    let out = weir().arg("check").arg(&p).output().unwrap();
    assert!(out.status.success(), "a warning does not fail check");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("warning: ") && stderr.contains("AuthorizationPolicy foo/httpbin: field spec.rules[0]: the node proxy, like ztunnel, does not support HTTP attributes (found: methods, paths, request.auth.claims[iss])"),
        "{stderr}"
    );
    let out = weir()
        .args(["check", "-o", "json"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["warnings"][0]["field"], "spec.rules[0]", "{v:#}");
}

#[test]
fn check_refuses_paths_without_documents() {
    let dir = TempDir::new("check-empty");
    let empty = dir.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    dir.write("empty/README.md", "not a config file\n");
    let comments = dir.write("comments.yaml", "# nothing here\n---\n");
    let list = dir.write("list.yaml", "apiVersion: v1\nkind: List\nitems: []\n");
    for p in [&empty, &comments, &list] {
        let out = weir().arg("check").arg(p).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", p.display());
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains(&format!("error: no documents found in {}", p.display())),
            "{stderr}"
        );
    }
    let out = weir()
        .args(["check", "-o", "json"])
        .arg(&empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert!(v["errors"][0]["message"]
        .as_str()
        .unwrap()
        .starts_with("no documents found in"));
    // One document anywhere among the paths is enough.
    let out = weir()
        .arg("check")
        .arg(&empty)
        .arg(dir.write("w.yaml", WL))
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn explain_rejects_bad_arguments_clearly() {
    let out = weir()
        .args(["explain", "--config"])
        .arg(example())
        .args([
            "--from",
            "nobody",
            "--to",
            "kafka/kafka-0",
            "--port",
            "9092",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from \"nobody\""));
    let out = weir()
        .args(["explain", "--config"])
        .arg(example())
        .args([
            "--from",
            "plaintext",
            "--to",
            "kafka/nope",
            "--port",
            "9092",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("known workloads: kafka/kafka-0"));
    let out = weir()
        .args(["explain", "--config"])
        .arg(example())
        .args([
            "--from",
            "plaintext",
            "--to",
            "kafka/kafka-0",
            "--port",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "port 0 is no destination port");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"));
}

/// Without --source-ip, a policy that tests the caller's address cannot be
/// answered as for a real caller: explain says so on stderr (only then).
#[test]
fn explain_notes_an_unknown_source_ip_when_policies_test_it() {
    let dir = TempDir::new("explain-ip");
    let by_ip = dir.write(
        "deny-outside.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: outside, namespace: kafka}\n\
         spec:\n  action: DENY\n  rules:\n  - from:\n    - source: {notIpBlocks: [198.18.0.0/16]}\n",
    );
    let ask = |paths: &[PathBuf], ip: Option<&str>| {
        let mut cmd = weir();
        cmd.arg("explain").arg("--config").args(paths).args([
            "--from",
            "cluster.local/ns/apps/sa/producer",
            "--to",
            "kafka/kafka-0",
            "--port",
            "9092",
        ]);
        if let Some(ip) = ip {
            cmd.args(["--source-ip", ip]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (stdout, stderr) = ask(&[example(), by_ip.clone()], None);
    assert!(stdout.starts_with("decision:  deny"), "{stdout}");
    assert!(stderr.contains("note: no --source-ip given"), "{stderr}");
    let (stdout, stderr) = ask(&[example(), by_ip], Some("198.18.0.7"));
    assert!(stdout.starts_with("decision:  allow"), "{stdout}");
    assert!(!stderr.contains("note:"), "{stderr}");
    let (_, stderr) = ask(&[example()], None);
    assert!(
        !stderr.contains("note:"),
        "no policy tests an address: {stderr}"
    );
}

/// Mistakes in a question get a message about that mistake, not about
/// something else (each exits 2).
#[test]
fn explain_names_the_mistake_in_a_question() {
    let empty = TempDir::new("explain-empty");
    let cfg = example().display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--config", &cfg, "--from", "anonymous", "--to", "kafka/kafka-0", "--port", "9092"]
                .into_iter()
                .map(String::from)
                .collect(),
            "a connection without mesh mTLS is `plaintext`",
        ),
        (
            vec!["--config", &cfg, "--from", "CN=billing,O=Example", "--to", "kafka/kafka-0", "--port", "9092"]
                .into_iter()
                .map(String::from)
                .collect(),
            "is a certificate subject, which only Kafka questions take",
        ),
        (
            vec!["--config", &cfg, "--from", "anonymous", "--operation", "Write"]
                .into_iter()
                .map(String::from)
                .collect(),
            "--operation asks a Kafka question: add --topic, --group, --transactional-id or --cluster",
        ),
        (
            vec!["--config", &empty.0.display().to_string(), "--from", "plaintext", "--to", "kafka/kafka-0", "--port", "9092"]
                .into_iter()
                .map(String::from)
                .collect(),
            "no documents found in",
        ),
    ];
    for (args, expected) in cases {
        let out = weir().arg("explain").args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // An unknown operation lists only the ones that can be asked (not All).
    let out = weir()
        .args([
            "explain",
            "--config",
            &cfg,
            "--from",
            "anonymous",
            "--topic",
            "t",
            "--operation",
            "Wrte",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("IdempotentWrite)") && !stderr.contains("All)"),
        "{stderr}"
    );
}
