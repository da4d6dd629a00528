//! CustomResourceDefinitions of weir's own kinds (`weir.dev/v1alpha1`
//! Workload, Service, KafkaGateway, KafkaAuthorizationPolicy), generated
//! from the types weir's loader reads their `spec` with
//! (`weir_core::config::schema`), so the cluster accepts the documents
//! `weir check` accepts. `weir crds` prints them; the Helm chart ships the
//! same output in `crds/` (a test keeps the two equal).
//!
//! The schemas are structural (what `apiextensions.k8s.io/v1` requires):
//! subschemas inlined, `Option` fields `nullable`, enums and untagged
//! unions rewritten by kube-rs's `StructuralSchemaRewriter`, then the
//! JSON-Schema keywords Kubernetes refuses or ignores taken out
//! (`additionalProperties: false`, formats it does not know, titles). Unknown
//! fields are refused by the API server's strict field validation (kubectl's
//! default), as `weir check` refuses them. The loader's own checks (a port
//! in range, a known action, references between objects) are not repeated
//! in the schema: an invalid object is admitted, then reported and skipped
//! by the Kubernetes source with `weir check`'s message.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceValidation,
    JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::schema::StructuralSchemaRewriter;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use crate::source::{CustomKind, WEIR_KINDS};

/// The formats Kubernetes' OpenAPI schemas understand; schemars' others
/// (`uint64`, `ip`, …) are dropped.
const KUBERNETES_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "binary",
    "date",
    "date-time",
    "password",
];

/// What a weir kind's CRD says beyond its schema.
struct KindDoc {
    description: &'static str,
    columns: &'static [(&'static str, &'static str, &'static str)],
}

fn kind_doc(kind: &str) -> KindDoc {
    match kind {
        "Workload" => KindDoc {
            description: "A mesh workload that is not a Pod (a VM, a bare-metal broker): its identity (namespace and service account), address and node. Pods in ambient namespaces need none.",
            columns: &[
                ("Address", "string", ".spec.address"),
                ("Node", "string", ".spec.node"),
                ("Service Account", "string", ".spec.serviceAccount"),
            ],
        },
        "Service" => KindDoc {
            description: "A name for the Workloads whose labels match its selector, for route destinations (kafka.data.svc.cluster.local). Kubernetes Services are read as weir Services already; this kind is for Workloads that are not Pods.",
            columns: &[],
        },
        "KafkaGateway" => KindDoc {
            description: "A Kafka-aware listener of `weir gateway`: one TLS endpoint for a whole Kafka cluster, brokers told apart by SNI and their addresses rewritten in Metadata responses.",
            columns: &[
                ("Port", "integer", ".spec.port"),
                ("Bootstrap", "string", ".spec.bootstrapHost"),
            ],
        },
        "KafkaAuthorizationPolicy" => KindDoc {
            description: "Topic-, group- and cluster-level authorization of Kafka requests at KafkaGateways, by client principal (ALLOW or DENY, as Istio's AuthorizationPolicy).",
            columns: &[("Action", "string", ".spec.action")],
        },
        _ => KindDoc {
            description: "",
            columns: &[],
        },
    }
}

/// Takes out what Kubernetes' structural schemas refuse or ignore.
fn kubernetes_schema(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("$schema");
            m.remove("title");
            if m.get("additionalProperties") == Some(&Value::Bool(false)) {
                m.remove("additionalProperties");
            }
            if m.get("default") == Some(&Value::Null) {
                m.remove("default");
            }
            if let Some(Value::String(f)) = m.get("format") {
                if !KUBERNETES_FORMATS.contains(&f.as_str()) {
                    m.remove("format");
                }
            }
            for (k, child) in m.iter_mut() {
                // `enum` values and `example`s are data, not schemas.
                if !matches!(k.as_str(), "enum" | "example" | "default") {
                    kubernetes_schema(child);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(kubernetes_schema),
        _ => {}
    }
}

/// The OpenAPI v3 schema of a weir kind's `spec`, as a CRD embeds it.
pub fn spec_schema(kind: &str) -> Option<Value> {
    let mut generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(StructuralSchemaRewriter)
        .into_generator();
    let schema = weir_core::config::schema::spec_schema(kind, &mut generator)?;
    let mut v = schema.to_value();
    kubernetes_schema(&mut v);
    if let Value::Object(m) = &mut v {
        // `spec` itself is required; its own `nullable` would allow `spec: null`.
        m.remove("nullable");
    }
    Some(v)
}

fn crd(k: &CustomKind) -> CustomResourceDefinition {
    let doc = kind_doc(k.kind);
    let spec = spec_schema(k.kind).unwrap_or_else(|| json!({"type": "object"}));
    let mut properties = Map::new();
    properties.insert("apiVersion".into(), json!({"type": "string"}));
    properties.insert("kind".into(), json!({"type": "string"}));
    properties.insert("metadata".into(), json!({"type": "object"}));
    properties.insert("spec".into(), spec);
    let root = json!({
        "type": "object",
        "description": doc.description,
        "required": ["spec"],
        "properties": properties,
    });
    // Every keyword kept above is a JSONSchemaProps field.
    let open_api_v3_schema: JSONSchemaProps =
        serde_json::from_value(root).expect("generated schemas use JSONSchemaProps keywords only");
    let columns: Vec<CustomResourceColumnDefinition> = doc
        .columns
        .iter()
        .map(|(name, type_, path)| CustomResourceColumnDefinition {
            name: (*name).to_owned(),
            type_: (*type_).to_owned(),
            json_path: (*path).to_owned(),
            ..CustomResourceColumnDefinition::default()
        })
        .chain(std::iter::once(CustomResourceColumnDefinition {
            name: "Age".to_owned(),
            type_: "date".to_owned(),
            json_path: ".metadata.creationTimestamp".to_owned(),
            ..CustomResourceColumnDefinition::default()
        }))
        .collect();
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{}.{}", k.plural, k.group)),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "weir".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: k.group.to_owned(),
            names: CustomResourceDefinitionNames {
                kind: k.kind.to_owned(),
                list_kind: Some(format!("{}List", k.kind)),
                plural: k.plural.to_owned(),
                singular: Some(k.kind.to_ascii_lowercase()),
                categories: Some(vec!["weir".to_owned()]),
                short_names: None,
            },
            scope: "Namespaced".to_owned(),
            versions: vec![CustomResourceDefinitionVersion {
                name: k.version.to_owned(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(open_api_v3_schema),
                }),
                additional_printer_columns: Some(columns),
                ..CustomResourceDefinitionVersion::default()
            }],
            ..CustomResourceDefinitionSpec::default()
        },
        status: None,
    }
}

/// The CRDs of weir's kinds, in [`WEIR_KINDS`] order.
pub fn custom_resource_definitions() -> Vec<CustomResourceDefinition> {
    WEIR_KINDS.iter().map(crd).collect()
}

/// `weir crds`' output: the CRDs as one YAML stream.
pub fn crds_yaml() -> String {
    let mut out = String::from(
        "# weir's CustomResourceDefinitions, generated from weir's Rust types by\n# `weir crds`. Do not edit: regenerate.\n",
    );
    for c in custom_resource_definitions() {
        out.push_str("---\n");
        // A k8s-openapi object always serializes.
        out.push_str(&serde_yaml_ng::to_string(&c).unwrap_or_default());
    }
    out
}
