//! JSON schemas of the `spec` of weir's own kinds, generated from the types
//! the loader reads them with (behind the `schema` feature, for weir's
//! CustomResourceDefinitions: `weir crds`).
//!
//! They describe the documents' shape (fields, types); the loader's checks
//! (a port in range, a known action, references between objects) stay with
//! the loader, so the schema accepts every document the loader might and
//! the loader's messages stay the ones users see.

use schemars::{json_schema, Schema, SchemaGenerator};

/// The kinds with a schema: weir's own (`weir.dev/v1alpha1`).
pub const KINDS: &[&str] = &[
    "Workload",
    "Service",
    "KafkaGateway",
    "KafkaAuthorizationPolicy",
];

/// The schema of `kind`'s `spec`, built with `generator` (whose settings
/// decide the dialect, e.g. OpenAPI 3 with inlined subschemas for CRDs).
pub fn spec_schema(kind: &str, generator: &mut SchemaGenerator) -> Option<Schema> {
    match kind {
        "Workload" => Some(generator.root_schema_for::<super::workload::WorkloadSpec>()),
        "Service" => Some(generator.root_schema_for::<super::service::ServiceSpec>()),
        _ => super::kafka::spec_schema(kind, generator),
    }
}

/// A port given as a number or a name (Kubernetes' IntOrString).
pub(crate) fn int_or_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "nullable": true
    })
}
