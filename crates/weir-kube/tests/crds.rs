//! weir's CRDs (`weir crds`): valid CustomResourceDefinitions whose schemas
//! accept weir's examples, and the same as the Helm chart's `crds/`.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{json, Value};
use weir_core::config::SourceFile;
use weir_core::{Config, MeshSettings};
use weir_kube::crd::{crds_yaml, custom_resource_definitions};
use weir_kube::WEIR_KINDS;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|de| serde::Deserialize::deserialize(de).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// A structural check of `v` against a CRD's OpenAPI schema, as the API
/// server's validation does for what the schemas here use: types,
/// `nullable`, `properties` (unknown fields refused, as with kubectl's
/// strict field validation), `additionalProperties`, `required`, `items`,
/// `enum`, `minimum`, int-or-string.
fn validate(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    // The API server checks `metadata` as an ObjectMeta, not with the schema.
    if path.ends_with(".metadata") && !path[..path.len() - ".metadata".len()].contains('.') {
        return;
    }
    if v.is_null() {
        if schema["nullable"] != json!(true) {
            errors.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == json!(true) {
        if !(v.is_i64() || v.is_u64() || v.is_string()) {
            errors.push(format!("{path}: must be an integer or a string"));
        }
        return;
    }
    let ty = schema["type"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: schema without a type: {schema}"));
    let ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        other => panic!("{path}: unexpected type {other}"),
    };
    if !ok {
        errors.push(format!("{path}: must be of type {ty}, not {v}"));
        return;
    }
    if let Some(values) = schema["enum"].as_array() {
        if !values.contains(v) {
            errors.push(format!("{path}: {v} is not one of {values:?}"));
        }
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), v.as_f64()) {
        if n < min {
            errors.push(format!("{path}: {n} < {min}"));
        }
    }
    match v {
        Value::Object(m) => {
            let props = schema["properties"].as_object();
            for (k, child) in m {
                let p = format!("{path}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(s) => validate(s, child, &p, errors),
                    None => match schema.get("additionalProperties") {
                        Some(s) if s.is_object() => validate(s, child, &p, errors),
                        _ if schema["x-kubernetes-preserve-unknown-fields"] == json!(true) => {}
                        _ => errors.push(format!("{p}: unknown field")),
                    },
                }
            }
            for r in schema["required"].as_array().into_iter().flatten() {
                if !m.contains_key(r.as_str().unwrap()) {
                    errors.push(format!("{path}.{}: required", r.as_str().unwrap()));
                }
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                validate(&schema["items"], child, &format!("{path}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

/// Kubernetes' structural-schema rules that matter here: every node has a
/// type (or is int-or-string), `properties` and `additionalProperties`
/// exclusive, no `additionalProperties: false`.
fn check_structural(schema: &Value, path: &str) {
    let m = schema.as_object().unwrap();
    assert!(
        m.contains_key("type") || m.get("x-kubernetes-int-or-string") == Some(&json!(true)),
        "{path}: no type"
    );
    assert!(
        !(m.contains_key("properties") && m.contains_key("additionalProperties")),
        "{path}: properties and additionalProperties"
    );
    assert_ne!(m.get("additionalProperties"), Some(&json!(false)), "{path}");
    for k in ["$schema", "$ref", "definitions", "title", "oneOf", "allOf"] {
        assert!(!m.contains_key(k), "{path}: {k}");
    }
    for (k, v) in m
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        check_structural(v, &format!("{path}.{k}"));
    }
    if let Some(i) = m.get("items") {
        check_structural(i, &format!("{path}[]"));
    }
    if let Some(a) = m.get("additionalProperties").filter(|a| a.is_object()) {
        check_structural(a, &format!("{path}.*"));
    }
}

fn schema_of(kind: &str) -> Value {
    let crd = custom_resource_definitions()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn crds_parse_as_custom_resource_definitions() {
    let docs = documents(&crds_yaml());
    assert_eq!(docs.len(), WEIR_KINDS.len());
    for (doc, kind) in docs.iter().zip(&WEIR_KINDS) {
        let crd: CustomResourceDefinition = serde_json::from_value(doc.clone()).unwrap();
        // Nothing dropped by the type (a misspelt field would be).
        assert_eq!(&serde_json::to_value(&crd).unwrap(), doc);
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{}.{}", kind.plural, kind.group).as_str())
        );
        assert_eq!(crd.spec.group, kind.group);
        assert_eq!(crd.spec.names.kind, kind.kind);
        assert_eq!(crd.spec.names.plural, kind.plural);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions.len(), 1);
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, kind.version);
        assert!(v.served && v.storage);
        let schema = serde_json::to_value(
            v.schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        check_structural(&schema, kind.kind);
        assert!(
            schema["properties"]["spec"]["properties"]
                .as_object()
                .is_some_and(|p| !p.is_empty()),
            "{}: a spec schema with fields",
            kind.kind
        );
    }
}

/// Every weir-kind document in examples/ (and a Service, which has no
/// example file) is accepted by its CRD's schema and by weir's loader; the
/// same documents with a misspelt field are refused by both.
#[test]
fn schemas_accept_the_examples() {
    let mut docs: Vec<Value> = Vec::new();
    for src in weir_core::config::read_sources(&[repo().join("examples")]).unwrap() {
        docs.extend(documents(&src.content));
    }
    docs.push(json!({"apiVersion": "weir.dev/v1alpha1", "kind": "Service",
        "metadata": {"name": "kafka", "namespace": "kafka"},
        "spec": {"selector": {"app": "kafka"}, "ports": [
            {"name": "client", "port": 9092, "targetPort": 19092, "protocol": "TCP"},
            {"name": "tls", "port": 9093, "targetPort": "9093"}]}}));
    let mut seen = std::collections::BTreeSet::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap().to_owned();
        if !WEIR_KINDS.iter().any(|k| k.kind == kind) {
            continue;
        }
        seen.insert(kind.clone());
        let schema = schema_of(&kind);
        let mut errors = Vec::new();
        validate(&schema, &doc, &kind, &mut errors);
        assert!(
            errors.is_empty(),
            "{kind} {}: {errors:?}",
            doc["metadata"]["name"]
        );
        let yaml = serde_yaml_ng::to_string(&doc).unwrap();
        Config::from_sources(&[SourceFile::new("d.yaml", yaml)], MeshSettings::default())
            .unwrap_or_else(|e| panic!("{e}"));

        // A misspelt spec field: refused by the schema, as by `weir check`.
        let mut bad = doc.clone();
        bad["spec"]["colour"] = json!("blue");
        let mut errors = Vec::new();
        validate(&schema, &bad, &kind, &mut errors);
        assert_eq!(errors, [format!("{kind}.spec.colour: unknown field")]);
        let yaml = serde_yaml_ng::to_string(&bad).unwrap();
        let e = Config::from_sources(&[SourceFile::new("d.yaml", yaml)], MeshSettings::default())
            .unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }
    assert_eq!(
        seen.len(),
        WEIR_KINDS.len(),
        "every weir kind checked: {seen:?}"
    );
}

/// The chart installs exactly what `weir crds` prints. After changing a
/// kind's type, regenerate with `WEIR_UPDATE_CRDS=1 cargo test -p weir-kube
/// --test crds` (or `weir crds > deploy/helm/weir/crds/weir.dev.yaml`).
#[test]
fn the_charts_crds_are_weir_crds_output() {
    let path = repo().join("deploy/helm/weir/crds/weir.dev.yaml");
    let generated = crds_yaml();
    if std::env::var_os("WEIR_UPDATE_CRDS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let shipped = std::fs::read_to_string(&path).unwrap();
    assert!(
        shipped == generated,
        "{} differs from `weir crds`; regenerate it: WEIR_UPDATE_CRDS=1 cargo test -p weir-kube --test crds",
        path.display()
    );
}
