//! The Helm chart (deploy/helm/weir) renders to valid Kubernetes objects.
//!
//! Helm is not installable here (no registry this machine reaches ships
//! it), so this test stands in for `helm template`: it renders the chart's
//! templates with a Go-template engine (gtmpl), registering the few Helm
//! and Sprig functions the chart uses (`include`, `toYaml`, `nindent`,
//! `indent`, `quote`, `default`) with Helm's semantics, and the built-in
//! objects `.Values`, `.Release` and `.Chart`. The chart keeps to that
//! subset on purpose.
//!
//! Every rendered object is then parsed as the k8s-openapi type its
//! apiVersion/kind claims (Deployment, DaemonSet, Service, ServiceAccount,
//! ClusterRole, ClusterRoleBinding) and
//! re-serialized: serde silently drops unknown fields, so comparing the
//! round trip with the input catches a misspelt or misplaced field.
//! PodMonitor and ServiceMonitor (no k8s-openapi type) are checked for
//! their required fields. Then what no single object shows
//! (`check_references`): selectors that match their pod templates, mounts
//! of rendered volumes, probes and Services naming ports that exist, valid
//! port names, ServiceAccounts and roles that are rendered.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gtmpl::{Context, Func, FuncError, Template, Value as Tv};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::{json, Value};

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/weir")
}

// ------------------------------------------------------------ the renderer

thread_local! {
    /// The chart's `_helpers.tpl`, for `include`.
    static HELPERS: RefCell<String> = const { RefCell::new(String::new()) };
}

fn json_to_tv(v: &Value) -> Tv {
    match v {
        Value::Null => Tv::Nil,
        Value::Bool(b) => Tv::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Tv::from(u),
            (_, Some(i), _) => Tv::from(i),
            (_, _, Some(f)) => Tv::from(f),
            _ => Tv::Nil,
        },
        Value::String(s) => Tv::from(s.as_str()),
        Value::Array(a) => Tv::Array(a.iter().map(json_to_tv).collect()),
        Value::Object(m) => Tv::Map(m.iter().map(|(k, v)| (k.clone(), json_to_tv(v))).collect()),
    }
}

fn tv_to_json(v: &Tv) -> Value {
    match v {
        Tv::NoValue | Tv::Nil | Tv::Function(_) => Value::Null,
        Tv::Bool(b) => json!(b),
        Tv::String(s) => json!(s),
        Tv::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => json!(u),
            (_, Some(i), _) => json!(i),
            (_, _, Some(f)) => json!(f),
            _ => Value::Null,
        },
        Tv::Array(a) => Value::Array(a.iter().map(tv_to_json).collect()),
        Tv::Map(m) | Tv::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), tv_to_json(v))).collect())
        }
    }
}

fn text(v: &Tv) -> String {
    match v {
        Tv::String(s) => s.clone(),
        Tv::NoValue | Tv::Nil => String::new(),
        other => other.to_string(),
    }
}

/// Sprig's notion of "empty", used by `default`.
fn is_empty(v: &Tv) -> bool {
    match v {
        Tv::NoValue | Tv::Nil => true,
        Tv::Bool(b) => !b,
        Tv::String(s) => s.is_empty(),
        Tv::Number(n) => n.as_f64() == Some(0.0),
        Tv::Array(a) => a.is_empty(),
        Tv::Map(m) | Tv::Object(m) => m.is_empty(),
        Tv::Function(_) => false,
    }
}

fn arg(args: &[Tv], i: usize, name: &str, n: usize) -> Result<Tv, FuncError> {
    if args.len() != n {
        return Err(FuncError::ExactlyXArgs(name.to_owned(), n));
    }
    Ok(args[i].clone())
}

/// Helm's `toYaml`: YAML without the trailing newline.
fn to_yaml(args: &[Tv]) -> Result<Tv, FuncError> {
    let v = tv_to_json(&arg(args, 0, "toYaml", 1)?);
    let y = serde_yaml_ng::to_string(&v).map_err(|e| FuncError::Generic(e.to_string()))?;
    Ok(Tv::from(y.trim_end_matches('\n')))
}

fn pad(n: &Tv, s: &Tv) -> Result<String, FuncError> {
    let n = match n {
        Tv::Number(n) => n.as_u64().ok_or(FuncError::UnableToConvertFromValue)?,
        _ => return Err(FuncError::UnableToConvertFromValue),
    };
    let pad = " ".repeat(usize::try_from(n).map_err(|_| FuncError::UnableToConvertFromValue)?);
    Ok(text(s)
        .split('\n')
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Sprig's `indent N S`.
fn indent(args: &[Tv]) -> Result<Tv, FuncError> {
    Ok(Tv::from(pad(&arg(args, 0, "indent", 2)?, &args[1])?))
}

/// Sprig's `nindent N S`: a newline, then `indent`.
fn nindent(args: &[Tv]) -> Result<Tv, FuncError> {
    Ok(Tv::from(format!(
        "\n{}",
        pad(&arg(args, 0, "nindent", 2)?, &args[1])?
    )))
}

/// Sprig's `quote`: a double-quoted string (Go's %q for plain text).
fn quote(args: &[Tv]) -> Result<Tv, FuncError> {
    let s = text(&arg(args, 0, "quote", 1)?);
    Ok(Tv::from(
        serde_json::to_string(&s).map_err(|e| FuncError::Generic(e.to_string()))?,
    ))
}

/// Sprig's `default D V`: V unless empty, else D.
fn default(args: &[Tv]) -> Result<Tv, FuncError> {
    match args {
        [d] => Ok(d.clone()),
        [d, v] => Ok(if is_empty(v) { d.clone() } else { v.clone() }),
        _ => Err(FuncError::AtLeastXArgs("default".to_owned(), 1)),
    }
}

/// Helm's `include NAME CONTEXT`: a named template's output, as a string.
fn include(args: &[Tv]) -> Result<Tv, FuncError> {
    let name = text(&arg(args, 0, "include", 2)?);
    let out = template()
        .and_then(|mut t| {
            t.parse(format!("{{{{ template {name:?} . }}}}"))
                .map_err(|e| e.to_string())?;
            t.render(&Context::from(args[1].clone()))
                .map_err(|e| e.to_string())
        })
        .map_err(|e| FuncError::Generic(format!("include {name:?}: {e}")))?;
    Ok(Tv::from(out))
}

/// A template engine with the chart's functions and `_helpers.tpl` defined.
fn template() -> Result<Template, String> {
    let mut t = Template::default();
    let funcs: &[(&str, Func)] = &[
        ("include", include),
        ("toYaml", to_yaml),
        ("indent", indent),
        ("nindent", nindent),
        ("quote", quote),
        ("default", default),
    ];
    t.add_funcs(funcs);
    let helpers = HELPERS.with(|h| h.borrow().clone());
    t.add_template("_helpers.tpl", helpers)
        .map_err(|e| format!("_helpers.tpl: {e}"))?;
    Ok(t)
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Deep-merges `over` into `base` (Helm's `--set`/`-f` semantics for maps).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// `helm template weir deploy/helm/weir --namespace weir-system` with
/// `overrides` merged into values.yaml: each template file's output.
fn render(overrides: &Value) -> Vec<(String, String)> {
    let dir = chart_dir();
    let chart = read_yaml(&dir.join("Chart.yaml"));
    let mut values = read_yaml(&dir.join("values.yaml"));
    merge(&mut values, overrides);
    let ctx = json!({
        "Values": values,
        "Release": {"Name": "weir", "Namespace": "weir-system", "Service": "Helm",
                    "IsInstall": true, "IsUpgrade": false, "Revision": 1},
        "Chart": {"Name": chart["name"], "Version": chart["version"],
                  "AppVersion": chart["appVersion"]},
    });
    let helpers = std::fs::read_to_string(dir.join("templates/_helpers.tpl")).unwrap();
    HELPERS.with(|h| *h.borrow_mut() = helpers);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let mut t = template().unwrap();
            t.parse(std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let out = t
                .render(&Context::from(json_to_tv(&ctx)))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, out)
        })
        .collect()
}

/// Every object a render produced, with the file it came from.
fn objects(rendered: &[(String, String)]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (file, text) in rendered {
        for de in serde_yaml_ng::Deserializer::from_str(text) {
            let v: Value = serde::Deserialize::deserialize(de)
                .unwrap_or_else(|e| panic!("{file}: not YAML: {e}\n{text}"));
            if !v.is_null() {
                out.push((file.clone(), v));
            }
        }
    }
    out
}

// ------------------------------------------------------------ the checks

/// Parses `v` as `T` and checks nothing was dropped or changed on the way.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, v: &Value) {
    let typed: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{file}: {} {}: {e}", v["kind"], v["metadata"]["name"]));
    let back = serde_json::to_value(&typed).unwrap();
    if &back != v {
        panic!(
            "{file}: {} {} changed in a round trip through its type (a misspelt or misplaced field?)\nrendered:\n{}\nas the type reads it:\n{}",
            v["kind"],
            v["metadata"]["name"],
            serde_yaml_ng::to_string(v).unwrap(),
            serde_yaml_ng::to_string(&back).unwrap()
        );
    }
}

/// PodMonitor/ServiceMonitor: no k8s-openapi type, so check what the
/// Prometheus Operator requires and that nothing unexpected is there.
fn check_monitor(file: &str, v: &Value) {
    let kind = v["kind"].as_str().unwrap();
    let endpoints = if kind == "PodMonitor" {
        "podMetricsEndpoints"
    } else {
        "endpoints"
    };
    let top: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        top,
        BTreeSet::from(["apiVersion", "kind", "metadata", "spec"]),
        "{file}"
    );
    assert!(
        v["metadata"]["name"].is_string(),
        "{file}: {kind} needs metadata.name"
    );
    let spec = v["spec"].as_object().unwrap();
    for k in spec.keys() {
        assert!(
            ["selector", "namespaceSelector", endpoints, "jobLabel"].contains(&k.as_str()),
            "{file}: {kind} has no spec.{k}"
        );
    }
    assert!(
        spec["selector"].is_object(),
        "{file}: {kind} needs spec.selector"
    );
    let eps = spec[endpoints]
        .as_array()
        .unwrap_or_else(|| panic!("{file}: spec.{endpoints}"));
    assert!(!eps.is_empty());
    for ep in eps {
        assert!(
            ep["port"].is_string(),
            "{file}: every endpoint names a port"
        );
        for k in ep.as_object().unwrap().keys() {
            assert!(
                ["port", "path", "interval", "scheme"].contains(&k.as_str()),
                "{file}: {kind} endpoint has no {k}"
            );
        }
    }
}

fn check_all(objects: &[(String, Value)]) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for (file, v) in objects {
        let api = v["apiVersion"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no apiVersion"));
        let kind = v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no kind"));
        match (api, kind) {
            ("apps/v1", "Deployment") => round_trip::<Deployment>(file, v),
            ("apps/v1", "DaemonSet") => round_trip::<DaemonSet>(file, v),
            ("v1", "Service") => round_trip::<Service>(file, v),
            ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(file, v),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(file, v),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                round_trip::<ClusterRoleBinding>(file, v)
            }
            ("monitoring.coreos.com/v1", "PodMonitor" | "ServiceMonitor") => check_monitor(file, v),
            _ => panic!("{file}: unexpected {api} {kind}"),
        }
        *kinds.entry(kind.to_owned()).or_default() += 1;
    }
    check_references(objects);
    kinds
}

/// What the API server (or the objects' meaning) requires across fields and
/// objects, which parsing each object alone does not see: a workload's
/// selector matches its pod template, mounts name volumes, probes and
/// Services name ports that exist, Services select a rendered pod template,
/// pods run as rendered ServiceAccounts, bindings name rendered roles.
fn check_references(objects: &[(String, Value)]) {
    let named = |kind: &str| -> BTreeSet<String> {
        objects
            .iter()
            .filter(|(_, v)| v["kind"] == kind)
            .map(|(_, v)| v["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let accounts = named("ServiceAccount");
    let roles = named("ClusterRole");
    let port_name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 15
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && n.chars().any(|c| c.is_ascii_lowercase())
            && !n.starts_with('-')
            && !n.ends_with('-')
            && !n.contains("--")
    };
    // Pod templates: (labels, container port names).
    let mut templates: Vec<(String, Value, BTreeSet<String>)> = Vec::new();
    for (file, v) in objects {
        if !matches!(v["kind"].as_str(), Some("Deployment" | "DaemonSet")) {
            continue;
        }
        let what = format!("{file}: {} {}", v["kind"], v["metadata"]["name"]);
        let labels = &v["spec"]["template"]["metadata"]["labels"];
        for (k, val) in v["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(
                &labels[k], val,
                "{what}: selector {k}={val} does not match the pod template's labels"
            );
        }
        let pod = &v["spec"]["template"]["spec"];
        let sa = pod["serviceAccountName"].as_str().unwrap_or("default");
        assert!(
            accounts.contains(sa),
            "{what}: ServiceAccount {sa} is not rendered"
        );
        let volumes: BTreeSet<&str> = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        let mut ports = BTreeSet::new();
        for c in pod["containers"].as_array().unwrap() {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let n = m["name"].as_str().unwrap();
                assert!(volumes.contains(n), "{what}: mount of unknown volume {n}");
            }
            for p in c["ports"].as_array().into_iter().flatten() {
                if let Some(n) = p["name"].as_str() {
                    assert!(port_name_ok(n), "{what}: port name {n:?} is not an IANA service name (at most 15 lower-case letters, digits, '-')");
                    assert!(ports.insert(n.to_owned()), "{what}: port name {n} twice");
                }
            }
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                let port = &c[probe]["httpGet"]["port"];
                let port = if port.is_null() {
                    &c[probe]["tcpSocket"]["port"]
                } else {
                    port
                };
                if let Some(n) = port.as_str() {
                    assert!(ports.contains(n), "{what}: {probe} names no port {n}");
                }
            }
        }
        templates.push((what, labels.clone(), ports));
    }
    for (file, v) in objects {
        match v["kind"].as_str() {
            Some("Service") => {
                let what = format!("{file}: Service {}", v["metadata"]["name"]);
                let selector = v["spec"]["selector"].as_object().unwrap();
                let selected: Vec<&(String, Value, BTreeSet<String>)> = templates
                    .iter()
                    .filter(|(_, labels, _)| selector.iter().all(|(k, val)| &labels[k] == val))
                    .collect();
                assert_eq!(
                    selected.len(),
                    1,
                    "{what}: selects {} pod templates",
                    selected.len()
                );
                for p in v["spec"]["ports"].as_array().unwrap() {
                    if let Some(n) = p["targetPort"].as_str() {
                        assert!(
                            selected[0].2.contains(n),
                            "{what}: targetPort {n} is no port of {}",
                            selected[0].0
                        );
                    }
                }
            }
            Some("ClusterRoleBinding") => {
                let role = v["roleRef"]["name"].as_str().unwrap();
                assert!(
                    roles.contains(role),
                    "{file}: binding of unknown role {role}"
                );
                for s in v["subjects"].as_array().unwrap() {
                    let sa = s["name"].as_str().unwrap();
                    assert!(
                        accounts.contains(sa),
                        "{file}: binding of unknown ServiceAccount {sa}"
                    );
                }
            }
            Some("PodMonitor") => {
                // Every pod it selects has the port it scrapes.
                let port = v["spec"]["podMetricsEndpoints"][0]["port"]
                    .as_str()
                    .unwrap();
                let mut any = false;
                for (what, labels, ports) in &templates {
                    let selected = v["spec"]["selector"]["matchExpressions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|e| {
                            e["values"]
                                .as_array()
                                .unwrap()
                                .contains(&labels[e["key"].as_str().unwrap()])
                        });
                    if selected {
                        any = true;
                        assert!(ports.contains(port), "{file}: {what} has no port {port}");
                    }
                }
                assert!(any, "{file}: the PodMonitor selects no pod");
            }
            _ => {}
        }
    }
}

fn find<'a>(objects: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .map(|(_, v)| v)
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn default_values_render_valid_objects() {
    let objects = objects(&render(&json!({})));
    let kinds = check_all(&objects);
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("ClusterRole".to_owned(), 1),
            ("ClusterRoleBinding".to_owned(), 1),
            ("DaemonSet".to_owned(), 1),
            ("Deployment".to_owned(), 2),
            ("Service".to_owned(), 2),
            ("ServiceAccount".to_owned(), 3),
        ])
    );

    // The node proxy: what in-pod capture needs, not the host network.
    let ds = find(&objects, "DaemonSet", "weir-node");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod.get("hostNetwork"), None);
    let c = &pod["containers"][0];
    assert_eq!(
        c["securityContext"]["capabilities"]["add"],
        json!([
            "NET_ADMIN",
            "NET_RAW",
            "SYS_ADMIN",
            "SYS_PTRACE",
            "DAC_OVERRIDE"
        ])
    );
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(
        mounts.contains(&"/host/proc") && mounts.contains(&"/var/run/netns"),
        "{mounts:?}"
    );
    // It never gets the CA key.
    let ca = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "ca-root")
        .unwrap();
    assert_eq!(
        ca["secret"]["items"],
        json!([{"key": "tls.crt", "path": "root-cert.pem"}])
    );
    let token = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "token")
        .unwrap();
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "weir-control"
    );
    assert_eq!(
        pod["tolerations"],
        json!([{"operator": "Exists", "effect": "NoSchedule"}, {"operator": "Exists", "effect": "NoExecute"}, {"key": "CriticalAddonsOnly", "operator": "Exists"}])
    );
    // The node proxy's arguments name the control plane's Service.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"--control=weir-control.weir-system.svc:15012"),
        "{args:?}"
    );
    let svc = find(&objects, "Service", "weir-control");
    assert_eq!(svc["spec"]["ports"][0]["port"], 15012);

    // The gateway: a LoadBalancer with the listener ports from values.
    let gw = find(&objects, "Service", "weir-gateway");
    assert_eq!(gw["spec"]["type"], "LoadBalancer");
    assert_eq!(
        gw["spec"]["ports"],
        json!([{"name": "kafka-tls", "port": 9094, "targetPort": "kafka-tls", "protocol": "TCP"}])
    );
    let gd = find(&objects, "Deployment", "weir-gateway");
    assert_eq!(
        gd["spec"]["template"]["metadata"]["labels"]["istio"],
        "ingressgateway"
    );
    // It runs as non-root with no capabilities: ports below 1024 need the
    // pod's unprivileged-port sysctl (an added NET_BIND_SERVICE would not
    // be in effect for a non-root process).
    let gpod = &gd["spec"]["template"]["spec"];
    assert_eq!(
        gpod["containers"][0]["securityContext"]["runAsNonRoot"],
        true
    );
    assert_eq!(
        gpod["securityContext"]["sysctls"],
        json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}])
    );

    // The control plane is ready when it serves a config (its
    // /healthz/ready answers only then), not when its port is bound.
    let cd = find(&objects, "Deployment", "weir-control");
    let cc = &cd["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        cc["readinessProbe"]["httpGet"],
        json!({"path": "/healthz/ready", "port": "metrics"})
    );
    assert!(cc["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "metrics"));
}

#[test]
fn optional_parts_render_valid_objects() {
    let objects = objects(&render(&json!({
        "monitoring": {"enabled": true, "labels": {"release": "prometheus"}},
        "gateway": {
            "tlsSecretName": "kafka-edge-tls",
            "ports": [{"name": "kafka-tls", "port": 9094}, {"name": "kafka-alt", "port": 443, "targetPort": 8443}],
            "service": {"type": "NodePort", "annotations": {"example.com/lb": "internal"}},
            "podAnnotations": {"a": "b"},
            "tolerations": [{"key": "edge", "operator": "Exists"}]
        },
        "image": {"tag": "1.2.3"},
        "commonLabels": {"team": "platform"},
        "control": {"nodeSelector": {"kubernetes.io/os": "linux"}}
    })));
    let kinds = check_all(&objects);
    assert_eq!(kinds.get("PodMonitor"), Some(&1));
    assert_eq!(kinds.get("ServiceMonitor"), Some(&1));
    let gd = find(&objects, "Deployment", "weir-gateway");
    let c = &gd["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "ghcr.io/weir-mesh/weir:1.2.3");
    assert_eq!(
        c["ports"][1],
        json!({"name": "kafka-alt", "containerPort": 8443, "protocol": "TCP"})
    );
    assert!(c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountPath"] == "/etc/weir/tls"));
    assert_eq!(gd["metadata"]["labels"]["team"], "platform");
    let pm = find(&objects, "PodMonitor", "weir-proxies");
    assert_eq!(pm["metadata"]["labels"]["release"], "prometheus");

    // Without the gateway: no gateway objects at all.
    let objects = objects_without_gateway();
    assert!(objects
        .iter()
        .all(|(_, v)| !v["metadata"]["name"].as_str().unwrap().contains("gateway")));
}

fn objects_without_gateway() -> Vec<(String, Value)> {
    let objects = objects(&render(&json!({"gateway": {"enabled": false}})));
    check_all(&objects);
    objects
}

/// The ClusterRole grants the control plane what the Kubernetes source
/// watches and TokenReview needs: nothing more, nothing less.
#[test]
fn cluster_role_matches_what_the_source_watches() {
    let objects = objects(&render(&json!({})));
    let role = find(&objects, "ClusterRole", "weir-control");
    let mut granted: BTreeSet<(String, String, String)> = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    granted.insert((
                        g.as_str().unwrap().into(),
                        r.as_str().unwrap().into(),
                        v.as_str().unwrap().into(),
                    ));
                }
            }
        }
    }
    let mut needed = BTreeSet::new();
    let read = |needed: &mut BTreeSet<_>, g: &str, r: &str| {
        for v in ["get", "list", "watch"] {
            needed.insert((g.to_owned(), r.to_owned(), v.to_owned()));
        }
    };
    for r in ["namespaces", "pods", "services"] {
        read(&mut needed, "", r);
    }
    for k in weir_kube::ISTIO_KINDS.iter().chain(&weir_kube::WEIR_KINDS) {
        read(&mut needed, k.group, k.plural);
    }
    needed.insert((
        "authentication.k8s.io".into(),
        "tokenreviews".into(),
        "create".into(),
    ));
    assert_eq!(granted, needed);
}

/// Every value in values.yaml is in the table of docs/kubernetes.md and
/// of the chart's README.
#[test]
fn every_value_is_documented() {
    fn leaves(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    // Maps handed to Kubernetes as they are are one value.
                    if matches!(
                        k.as_str(),
                        "resources"
                            | "nodeSelector"
                            | "annotations"
                            | "podAnnotations"
                            | "labels"
                            | "commonLabels"
                    ) {
                        out.push(p);
                    } else {
                        leaves(&p, v, out);
                    }
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let values = read_yaml(&chart_dir().join("values.yaml"));
    let mut paths = Vec::new();
    leaves("", &values, &mut paths);
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/kubernetes.md"),
    )
    .unwrap();
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).unwrap();
    for (name, text) in [
        ("docs/kubernetes.md", &doc),
        ("the chart's README.md", &readme),
    ] {
        let missing: Vec<&String> = paths
            .iter()
            .filter(|p| !text.contains(&format!("| `{p}` |")))
            .collect();
        assert!(
            missing.is_empty(),
            "values missing from the table in {name}: {missing:?}"
        );
    }
    // The two tables are one table: the chart's README (`helm show
    // readme`) and the cluster-mode guide say the same.
    let rows = |text: &str, heading: &str| -> Vec<String> {
        let section = text
            .split_once(heading)
            .unwrap_or_else(|| panic!("no {heading:?}"))
            .1;
        let section = section.split("\n## ").next().unwrap();
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        rows(&doc, "\n## Chart values\n"),
        rows(&readme, "\n## Values\n"),
        "the values tables of docs/kubernetes.md and deploy/helm/weir/README.md differ"
    );
    // And every value (and section) in values.yaml follows a comment line.
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut previous = "";
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        if t.is_empty() || t.starts_with('#') || t.starts_with('-') {
            if !t.is_empty() {
                previous = t;
            }
            continue;
        }
        let Some((key, _)) = t.split_once(':') else {
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_owned()));
        let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
        let path = path.join(".");
        let documented = paths
            .iter()
            .any(|p| *p == path || p.starts_with(&format!("{path}.")));
        if documented {
            assert!(
                previous.starts_with('#'),
                "values.yaml line {}: {path} has no comment above it",
                n + 1
            );
        }
        previous = t;
    }
}

/// Prints the rendered chart, like `helm template` would:
/// `cargo test -p weir-kube --test helm print_rendered_chart -- --ignored --nocapture`.
#[test]
#[ignore = "prints the rendered chart; not a check"]
fn print_rendered_chart() {
    for (f, t) in render(&json!({"monitoring": {"enabled": true}})) {
        println!("# ---- {f}\n{t}");
    }
}
