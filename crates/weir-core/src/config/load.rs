//! Documents → typed kinds, collecting every error with its location.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml_ng::Value;

use super::istio::{
    is_set, parse_ip_block, Action, AuthorizationPolicy, AuthorizationPolicySpec, Condition,
    ConditionKey, ConditionValues, MtlsMode, Operation, PeerAuthentication, PeerAuthenticationSpec,
    PortKey, RawCondition, RawOperation, RawRule, RawSource, Rule, ServiceAccountMatch, Source,
    StringMatch,
};
use super::meta::{ObjectMeta, WorkloadSelector};
use super::workload::{is_pod_uid, Workload, WorkloadSpec, POD_UID_ANNOTATION};
use super::{Config, ConfigError, ConfigErrors, DocumentRef, MeshSettings, SourceFile};
use crate::spiffe::SpiffeId;

const WEIR_API: &str = "weir.dev/v1alpha1";
const ISTIO_SECURITY_APIS: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];
const ISTIO_NETWORKING_APIS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// The kinds weir understands and the apiVersions each accepts.
pub(crate) const KINDS: &[(&str, &[&str])] = &[
    ("Workload", &[WEIR_API]),
    ("PeerAuthentication", ISTIO_SECURITY_APIS),
    ("AuthorizationPolicy", ISTIO_SECURITY_APIS),
    ("Gateway", ISTIO_NETWORKING_APIS),
    ("VirtualService", ISTIO_NETWORKING_APIS),
    ("ServiceEntry", ISTIO_NETWORKING_APIS),
    ("DestinationRule", ISTIO_NETWORKING_APIS),
    ("Service", &[WEIR_API]),
    ("KafkaGateway", &[WEIR_API]),
    ("KafkaAuthorizationPolicy", &[WEIR_API]),
];

/// A whole document with a typed spec; unknown top-level fields are errors.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: ObjectMeta,
    #[serde(default = "Option::default")]
    spec: Option<S>,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<Value>,
}

/// Errors for one document, located.
pub(super) struct DocCtx<'a> {
    pub(super) doc: DocumentRef,
    errors: &'a mut Vec<ConfigError>,
    warnings: &'a mut Vec<ConfigError>,
    /// Unknown fields already reported and taken out so that the rest of
    /// the document could be checked: no second error at, below or above
    /// them (a source whose only field was misspelt is not also "empty").
    reported: Vec<String>,
}

impl DocCtx<'_> {
    pub(super) fn error(&mut self, field: impl Into<Option<String>>, message: impl Into<String>) {
        let field = field.into();
        if let Some(f) = &field {
            let nested = |outer: &str, inner: &str| {
                inner == outer
                    || inner
                        .strip_prefix(outer)
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            };
            if self.reported.iter().any(|r| nested(r, f) || nested(f, r)) {
                return;
            }
        }
        self.errors.push(ConfigError {
            document: Some(self.doc.clone()),
            file: self.doc.file.clone(),
            field,
            message: message.into(),
        });
    }

    pub(super) fn warn(&mut self, field: impl Into<Option<String>>, message: impl Into<String>) {
        self.warnings.push(ConfigError {
            document: Some(self.doc.clone()),
            file: self.doc.file.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    pub(super) fn error_count(&self) -> usize {
        self.errors.len()
    }
}

pub(crate) fn load(sources: &[SourceFile], settings: MeshSettings) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut config = Config {
        settings,
        ..Config::default()
    };
    // (kind, namespace, name) → where it was first defined.
    let mut seen: HashMap<(String, String, String), DocumentRef> = HashMap::new();
    // address → (workload key, where)
    let mut addresses: HashMap<IpAddr, (String, DocumentRef)> = HashMap::new();

    for src in sources {
        for (index, de) in serde_yaml_ng::Deserializer::from_str(
            // A byte-order mark may start a YAML stream (editors on Windows
            // write one); kubectl accepts it too.
            src.content.strip_prefix('\u{feff}').unwrap_or(&src.content),
        )
        .enumerate()
        {
            let mut ctx = DocCtx {
                doc: DocumentRef {
                    file: src.name.clone(),
                    index,
                    item: None,
                    kind: None,
                    name: None,
                },
                errors: &mut errors,
                warnings: &mut warnings,
                reported: Vec::new(),
            };
            let value = match Value::deserialize(de) {
                Ok(v) => v,
                Err(e) => {
                    ctx.error(None, format!("not valid YAML: {e}"));
                    // The YAML stream cannot be resynchronised after a syntax error.
                    break;
                }
            };
            if value.is_null() {
                continue; // an empty document, e.g. a trailing `---`
            }
            if !is_list(&value) {
                config.documents += 1;
                load_document(&mut ctx, value, &mut config, &mut seen, &mut addresses);
                continue;
            }
            let Some(items) = list_items(&mut ctx, value) else {
                continue;
            };
            let list = ctx.doc;
            for (item, value) in items.into_iter().enumerate() {
                config.documents += 1;
                let mut ctx = DocCtx {
                    doc: DocumentRef {
                        item: Some(item),
                        kind: None,
                        name: None,
                        ..list.clone()
                    },
                    errors: &mut errors,
                    warnings: &mut warnings,
                    reported: Vec::new(),
                };
                if is_list(&value) {
                    ctx.doc.kind = Some("List".to_owned());
                    ctx.error(
                        Some("kind".to_owned()),
                        "a List inside a List is not supported; put its items in the outer List",
                    );
                    continue;
                }
                load_document(&mut ctx, value, &mut config, &mut seen, &mut addresses);
            }
        }
    }

    super::kafka::cross_check(&config, &mut errors, &mut warnings);
    cluster_ip_check(&config, &addresses, &seen, &mut errors);
    if errors.is_empty() {
        super::networking::cross_check(&config, &mut warnings);
        shadowed_peer_authentication_warnings(&config, &mut warnings);
        config.warnings = warnings;
        config.index();
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// What Istio resolves silently when several PeerAuthentications apply at
/// one level: only the oldest counts, the others (their `portLevelMtls`
/// too) are ignored for those workloads. Warnings, because that is valid;
/// but a second selector policy for a port exception is a classic way to
/// turn a namespace's other exceptions back to STRICT.
fn shadowed_peer_authentication_warnings(config: &Config, warnings: &mut Vec<ConfigError>) {
    for s in crate::policy::shadowed_peer_authentications(config) {
        let Some(doc) = &s.ignored.doc else {
            continue;
        };
        let winner = format!(
            "{}/{}",
            s.applies.metadata.namespace, s.applies.metadata.name
        );
        // Istio's order: creationTimestamp, then name; say which decided.
        let older =
            if s.applies.metadata.creation_timestamp == s.ignored.metadata.creation_timestamp {
                "comes first by name (same creationTimestamp, or none)"
            } else {
                "is older"
            };
        let message = if s.workloads.is_empty() {
            let scope = if s.ignored.metadata.namespace == config.settings.root_namespace {
                "mesh-wide".to_owned()
            } else {
                format!("namespace-wide in {:?}", s.ignored.metadata.namespace)
            };
            format!(
                "ignored: PeerAuthentication {winner} {older} and is also {scope}; only the oldest applies (creationTimestamp, then name, as in Istio)"
            )
        } else {
            const SHOWN: usize = 5;
            let mut names: Vec<&str> = s.workloads.iter().map(|w| w.name()).collect();
            names.sort_unstable();
            let more = names.len().saturating_sub(SHOWN);
            names.truncate(SHOWN);
            let extra = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!(
                "ignored for workload(s) {}{extra}: PeerAuthentication {winner} {older} and also selects them; only the oldest selector policy applies to a workload, with its portLevelMtls (as in Istio); put all of a workload's port exceptions in one PeerAuthentication",
                names.join(", ")
            )
        };
        warnings.push(ConfigError {
            document: Some(doc.clone()),
            file: doc.file.clone(),
            field: Some(
                if s.workloads.is_empty() {
                    "metadata"
                } else {
                    "spec.selector"
                }
                .to_owned(),
            ),
            message,
        });
    }
}

/// A `kind: List` document, the wrapper `kubectl get -o yaml` prints around
/// several objects.
fn is_list(value: &Value) -> bool {
    value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k == "List" || typed_list_kind(k).is_some())
}

/// `PeerAuthenticationList` → `PeerAuthentication` and its apiVersions: the
/// list kinds the API server returns for a collection (`kubectl get --raw`,
/// client libraries), for the kinds weir reads.
fn typed_list_kind(kind: &str) -> Option<(&'static str, &'static [&'static str])> {
    let item = kind.strip_suffix("List")?;
    KINDS.iter().find(|(k, _)| *k == item).copied()
}

/// The `items` of a `v1` `List`, or of a typed list (`<Kind>List` at that
/// kind's apiVersion, whose items the API server sends without `apiVersion`
/// and `kind`: they are the list's), each then loaded as a document of its
/// own; `None` when the wrapper itself is wrong (errors reported).
fn list_items(ctx: &mut DocCtx<'_>, value: Value) -> Option<Vec<Value>> {
    let Value::Mapping(mut map) = value else {
        return None; // is_list() saw a mapping
    };
    let list_kind = map.get("kind").and_then(Value::as_str).unwrap_or("List");
    ctx.doc.kind = Some(list_kind.to_owned());
    let typed = typed_list_kind(list_kind);
    let before = ctx.error_count();
    for key in map.keys() {
        let key = key.as_str().unwrap_or("?");
        if !matches!(key, "apiVersion" | "kind" | "metadata" | "items") {
            ctx.error(
                Some(key.to_owned()),
                format!("unknown field {key:?} in a List, expected one of \"apiVersion\", \"kind\", \"metadata\", \"items\""),
            );
        }
    }
    let api_version = map.get("apiVersion").and_then(Value::as_str);
    match (typed, api_version) {
        (None, Some("v1")) => {}
        (None, other) => ctx.error(
            Some("apiVersion".to_owned()),
            match other {
                Some(v) => format!(
                    "a List is served at \"v1\" (as `kubectl get -o yaml` prints it), not {v:?}"
                ),
                None => "missing: a List is served at \"v1\" (as `kubectl get -o yaml` prints it)"
                    .to_owned(),
            },
        ),
        (Some((_, apis)), v) => {
            if !v.is_some_and(|v| apis.contains(&v)) {
                ctx.error(
                    Some("apiVersion".to_owned()),
                    format!(
                        "a {list_kind} is served at {}, not {}",
                        apis.join(", "),
                        v.map_or("nothing".to_owned(), |v| format!("{v:?}"))
                    ),
                );
            }
        }
    }
    let items = match (map.remove("items"), typed) {
        (None | Some(Value::Null), _) => Vec::new(),
        (Some(Value::Sequence(items)), Some((kind, _))) => {
            let api = map.get("apiVersion").cloned();
            items
                .into_iter()
                .map(|mut item| {
                    if let Value::Mapping(m) = &mut item {
                        if !m.contains_key("apiVersion") {
                            if let Some(api) = &api {
                                m.insert("apiVersion".into(), api.clone());
                            }
                        }
                        if !m.contains_key("kind") {
                            m.insert("kind".into(), kind.into());
                        }
                    }
                    item
                })
                .collect()
        }
        (Some(Value::Sequence(items)), None) => items,
        (Some(_), _) => {
            ctx.error(
                Some("items".to_owned()),
                "must be a list of documents (apiVersion, kind, metadata, spec)",
            );
            Vec::new()
        }
    };
    (ctx.error_count() == before).then_some(items)
}

fn load_document(
    ctx: &mut DocCtx<'_>,
    value: Value,
    config: &mut Config,
    seen: &mut HashMap<(String, String, String), DocumentRef>,
    addresses: &mut HashMap<IpAddr, (String, DocumentRef)>,
) {
    let Some(map) = value.as_mapping() else {
        ctx.error(
            None,
            "a document must be a mapping with apiVersion, kind, metadata and spec",
        );
        return;
    };
    let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_owned);
    let meta = map.get("metadata").and_then(Value::as_mapping);
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    ctx.doc.name = name.map(|n| format!("{ns}/{n}"));

    let Some(kind) = text("kind") else {
        ctx.error(
            Some("kind".to_owned()),
            "missing: every document needs a kind",
        );
        return;
    };
    ctx.doc.kind = Some(kind.clone());
    let Some(api_version) = text("apiVersion") else {
        ctx.error(
            Some("apiVersion".to_owned()),
            "missing: every document needs an apiVersion",
        );
        return;
    };
    let Some((_, apis)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        let known: Vec<_> = KINDS.iter().map(|(k, _)| *k).collect();
        let hint = match kind.as_str() {
            "RequestAuthentication" | "Telemetry" | "EnvoyFilter" | "Sidecar" | "WasmPlugin" => {
                " (an L7/Envoy feature an L4 mesh cannot enforce)"
            }
            _ => "",
        };
        ctx.error(
            Some("kind".to_owned()),
            format!(
                "unknown kind {kind:?} (apiVersion {api_version}){hint}; weir understands: {}",
                known.join(", ")
            ),
        );
        return;
    };
    if !apis.contains(&api_version.as_str()) {
        ctx.error(
            Some("apiVersion".to_owned()),
            format!(
                "{kind} is not served at {api_version:?}; use {}",
                apis.join(" or ")
            ),
        );
        return;
    }

    let before = ctx.error_count();
    let key;
    match kind.as_str() {
        "Workload" => {
            let Some((meta, spec)) = typed::<WorkloadSpec>(ctx, value) else {
                return;
            };
            let Some(spec) = spec else {
                ctx.error(
                    Some("spec".to_owned()),
                    "missing: a Workload needs spec.address and spec.node",
                );
                return;
            };
            check_meta(ctx, &meta);
            if let Err(e) = SpiffeId::new(
                config.settings.trust_domain.clone(),
                "x",
                &spec.service_account,
            ) {
                ctx.error(Some("spec.serviceAccount".to_owned()), e.to_string());
            }
            if spec.node.is_empty() {
                ctx.error(Some("spec.node".to_owned()), "must not be empty");
            } else if !is_dns_subdomain(&spec.node) {
                ctx.error(
                    Some("spec.node".to_owned()),
                    format!("{:?} is not a node name (a Kubernetes node name: lower-case letters, digits, '-' and '.')", spec.node),
                );
            }
            if let Some(n) = &spec.netns {
                if n.is_empty() || n.contains('/') || n == "." || n == ".." {
                    ctx.error(Some("spec.netns".to_owned()), format!("{n:?} is not a network namespace name (it names /var/run/netns/<netns>)"));
                }
            }
            if let Some(uid) = meta.annotations.get(POD_UID_ANNOTATION) {
                if !is_pod_uid(uid) {
                    ctx.error(
                        Some(format!("metadata.annotations[{POD_UID_ANNOTATION}]")),
                        format!("{uid:?} is not a Pod UID (letters, digits and dashes, e.g. 7d3c1a52-9e0b-4f6d-8c21-5b4a3e2f1d09)"),
                    );
                }
            }
            if let Some(n) = meta.annotations.get(super::WORKLOAD_NAME_ANNOTATION) {
                if !is_dns_subdomain(n) {
                    ctx.error(
                        Some(format!("metadata.annotations[{}]", super::WORKLOAD_NAME_ANNOTATION)),
                        format!("{n:?} is not a workload name (a Kubernetes object name such as kafka or my-app)"),
                    );
                }
            }
            if let Some(why) = unusable_workload_address(spec.address) {
                ctx.error(
                    Some("spec.address".to_owned()),
                    format!("{} {why}", spec.address),
                );
            }
            if let Some((other, at)) = addresses.get(&spec.address) {
                ctx.error(
                    Some("spec.address".to_owned()),
                    format!(
                        "{} is already the address of Workload {other} ({at})",
                        spec.address
                    ),
                );
            }
            if ctx.error_count() > before {
                return;
            }
            addresses.insert(spec.address, (meta.key(), ctx.doc.clone()));
            key = (kind.clone(), meta.namespace.clone(), meta.name.clone());
            let netns = spec.netns.unwrap_or_else(|| meta.name.clone());
            config.workloads.push(Workload {
                metadata: meta,
                service_account: spec.service_account,
                address: spec.address,
                node: spec.node,
                netns,
                ready: spec.ready.unwrap_or(true),
            });
        }
        "PeerAuthentication" => {
            let Some((meta, spec)) = typed::<PeerAuthenticationSpec>(ctx, value) else {
                return;
            };
            check_meta(ctx, &meta);
            let spec = spec.unwrap_or_default();
            let pa = peer_authentication(ctx, meta, spec, &config.settings);
            if ctx.error_count() > before {
                return;
            }
            let Some(pa) = pa else { return };
            key = (
                kind.clone(),
                pa.metadata.namespace.clone(),
                pa.metadata.name.clone(),
            );
            config.peer_authentications.push(pa);
        }
        "AuthorizationPolicy" => {
            let Some((meta, spec)) = typed::<AuthorizationPolicySpec>(ctx, value) else {
                return;
            };
            check_meta(ctx, &meta);
            let spec = spec.unwrap_or_default();
            let targeted = spec.target_field();
            let ap = authorization_policy(ctx, meta, spec);
            if ctx.error_count() > before {
                return;
            }
            let Some(ap) = ap else { return };
            warn_other_trust_domain(ctx, &ap, &config.settings);
            key = (
                kind.clone(),
                ap.metadata.namespace.clone(),
                ap.metadata.name.clone(),
            );
            if let Some(field) = targeted {
                // istiod sends ztunnel no policy with targetRefs: it is a
                // waypoint's (or a gateway's) to enforce.
                ctx.warn(
                    Some(field.to_owned()),
                    "not enforced: targetRef/targetRefs bind the policy to a waypoint or gateway (L7), and weir's node proxy, like ztunnel, enforces only policies that select workloads (spec.selector or none); weir has no waypoints",
                );
            } else if !is_dry_run(ctx, &ap.metadata) {
                config.authorization_policies.push(ap);
            }
        }
        "Gateway" | "VirtualService" | "ServiceEntry" | "DestinationRule" | "Service" => {
            let Some(k) = super::networking::load(ctx, &kind, value, config) else {
                return;
            };
            key = k;
        }
        "KafkaGateway" | "KafkaAuthorizationPolicy" => {
            let Some(k) = super::kafka::load(ctx, &kind, value, config) else {
                return;
            };
            key = k;
        }
        _ => unreachable!("kinds are checked against KINDS above"),
    }
    if let Some(first) = seen.get(&key) {
        ctx.error(
            Some("metadata.name".to_owned()),
            format!(
                "duplicate {} {}/{}: already defined at {first}",
                key.0, key.1, key.2
            ),
        );
        return;
    }
    seen.insert(key, ctx.doc.clone());
}

/// At most this many structural errors are reported per document.
const MAX_ERRORS_PER_DOCUMENT: usize = 20;

/// Deserializes a whole document strictly, reporting the failing field's path.
///
/// serde stops at a document's first unknown field or wrong type; to report
/// every such error, not only the first, the failing field is taken out of
/// the document and it is parsed again, until it parses (the result is then
/// still refused) or the error is not one a removed field can get past: a
/// missing field, a list element (removing it would renumber the ones after
/// it), or an error without a field.
pub(super) fn typed<S: DeserializeOwned>(
    ctx: &mut DocCtx<'_>,
    value: Value,
) -> Option<(ObjectMeta, Option<S>)> {
    // A `-` with nothing after it: serde would read it as an entry with
    // every field unset (for an AuthorizationPolicy rule: one that matches
    // everything). Istio's validation and the API server refuse it.
    // (`status` and `metadata`, written by the API server, are not looked
    // at.)
    let mut nulls = Vec::new();
    if let Some(spec) = value.get("spec") {
        null_list_entries(spec, &mut "spec".to_owned(), &mut nulls);
    }
    if !nulls.is_empty() {
        for path in nulls {
            ctx.error(
                Some(path),
                "an empty (null) list entry, a \"-\" with nothing after it: remove it or give it a value",
            );
        }
        return None;
    }
    let e = match serde_path_to_error::deserialize::<_, Document<S>>(&value) {
        Ok(doc) => return Some((doc.metadata, doc.spec)),
        Err(e) => e,
    };
    let mut value = value;
    let mut removed: Vec<String> = Vec::new();
    let mut only_unknown = true;
    let mut next = Some(e);
    while let Some(e) = next.take() {
        let path = e.path().clone();
        let shown = path.to_string();
        let message = e.into_inner().to_string();
        only_unknown &= message.starts_with("unknown field");
        if let Some(field) = missing_field(&message) {
            // A field taken out to get past an earlier error is not missing.
            let full = if shown == "." {
                field.to_owned()
            } else {
                format!("{shown}.{field}")
            };
            if removed.contains(&full) {
                break;
            }
        }
        // A missing top-level field (`metadata`) is located at itself.
        let field = match (shown.as_str(), missing_field(&message)) {
            (".", Some(f)) => Some(f.to_owned()),
            (".", None) => None,
            _ => Some(shown.clone()),
        };
        ctx.error(field, clean_serde_message(&message));
        if removed.len() + 1 >= MAX_ERRORS_PER_DOCUMENT || !remove_field(&mut value, &path) {
            break;
        }
        removed.push(shown);
        if let Err(e) = serde_path_to_error::deserialize::<_, Document<S>>(&value) {
            next = Some(e);
        }
    }
    // If only unknown fields were wrong, the rest means what it says: check
    // its values too, so that one run reports every error of the document
    // (the caller refuses it, since errors were reported). After a value of
    // the wrong type is taken out the rest would be checked without it,
    // which gives errors that are only its consequences.
    if !only_unknown {
        return None;
    }
    let doc = serde_path_to_error::deserialize::<_, Document<S>>(&value).ok()?;
    ctx.reported = removed;
    Some((doc.metadata, doc.spec))
}

/// The field of serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Removes the mapping entry at `path` from `value`; false if `path` does not
/// end in a mapping key or leads nowhere.
fn remove_field(value: &mut Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((Segment::Map { key }, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = value;
    for segment in parents {
        let child = match (segment, at) {
            (Segment::Map { key }, Value::Mapping(m)) => m.get_mut(key.as_str()),
            (Segment::Seq { index }, Value::Sequence(s)) => s.get_mut(*index),
            _ => None,
        };
        match child {
            Some(c) => at = c,
            None => return false,
        }
    }
    match at {
        Value::Mapping(m) => m.remove(key.as_str()).is_some(),
        _ => false,
    }
}

/// serde's message in a user's words: quotes instead of backticks, and
/// what was expected without Rust's type names (`u64`, `struct MutualTls`,
/// `a sequence`).
/// The paths (as field paths are shown: `spec.rules[1]`) of the null
/// entries of every list in `value`.
fn null_list_entries(value: &Value, path: &mut String, out: &mut Vec<String>) {
    let len = path.len();
    match value {
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                use std::fmt::Write as _;
                let _ = write!(path, "[{i}]");
                if item.is_null() {
                    out.push(path.clone());
                } else {
                    null_list_entries(item, path, out);
                }
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key);
                null_list_entries(v, path, out);
                path.truncate(len);
            }
        }
        Value::Tagged(t) => null_list_entries(&t.value, path, out),
        _ => {}
    }
}

fn clean_serde_message(m: &str) -> String {
    let mut out = m
        .replace('`', "\"")
        .replace("invalid type: unit value", "invalid type: null");
    // The last one: a quoted value may itself contain ", expected ".
    let Some(at) = out.rfind(", expected ") else {
        return out;
    };
    let expected = &out[at + ", expected ".len()..];
    let plain = match expected.split_whitespace().next().unwrap_or("") {
        "u8" | "u16" | "u32" | "u64" | "usize" => Some("a whole number (0 or more)"),
        "i8" | "i16" | "i32" | "i64" | "isize" => Some("a whole number"),
        "f32" | "f64" => Some("a number"),
        "struct" => Some("a mapping (key: value pairs)"),
        "a" if expected.starts_with("a sequence") => Some("a list"),
        "a" if expected.starts_with("a map") => Some("a mapping (key: value pairs)"),
        "a" if expected.starts_with("a boolean") => Some("true or false"),
        _ => None,
    };
    if let Some(plain) = plain {
        out.truncate(at);
        out.push_str(", expected ");
        out.push_str(plain);
    }
    out
}

/// A Kubernetes DNS label (RFC 1123): namespaces, service accounts.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Kubernetes DNS subdomain: object and node names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub(super) fn check_meta(ctx: &mut DocCtx<'_>, meta: &ObjectMeta) {
    if !is_dns_subdomain(&meta.name) {
        ctx.error(
            Some("metadata.name".to_owned()),
            format!(
                "{:?} is not a valid name (lower-case letters, digits, '-' and '.')",
                meta.name
            ),
        );
    }
    if !is_dns_label(&meta.namespace) {
        ctx.error(
            Some("metadata.namespace".to_owned()),
            format!(
                "{:?} is not a valid namespace (a DNS label: lower-case letters, digits and '-')",
                meta.namespace
            ),
        );
    }
}

/// A port as Istio's validation reads one: decimal digits only (Rust's
/// integer parsing would also take a leading `+`, which Istio refuses),
/// 1-65535.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Whether a selector names at least one label (one with none is
/// namespace-wide, as in Istio).
fn labelled_selector(selector: &Option<WorkloadSelector>) -> bool {
    selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty())
}

/// Istio's `validateWorkloadSelector`: no empty keys and no wildcards (they
/// would be compared literally and select nothing); a selector without
/// labels is a warning.
fn check_selector(ctx: &mut DocCtx<'_>, selector: &Option<WorkloadSelector>) {
    let Some(selector) = selector else { return };
    if selector.match_labels.is_empty() {
        ctx.warn(
            Some("spec.selector".to_owned()),
            "workload selector specified without labels: it selects every workload of the namespace, as if it were absent (Istio warns too); drop it or add matchLabels",
        );
    }
    for (k, v) in &selector.match_labels {
        if k.is_empty() {
            ctx.error(
                Some("spec.selector.matchLabels".to_owned()),
                format!("empty key is not supported in selector: \"={v}\" (as in Istio)"),
            );
        }
        if k.contains('*') || v.contains('*') {
            ctx.error(
                Some(format!("spec.selector.matchLabels[{k}]")),
                format!("wildcard is not supported in selector: \"{k}={v}\" (labels are compared exactly, as in Istio); to select every workload of the namespace, omit the selector"),
            );
        }
    }
}

// ---------------------------------------------------------------- PeerAuthentication

fn peer_authentication(
    ctx: &mut DocCtx<'_>,
    metadata: ObjectMeta,
    spec: PeerAuthenticationSpec,
    settings: &MeshSettings,
) -> Option<PeerAuthentication> {
    let mut port_level = BTreeMap::new();
    if let Some(ports) = spec.port_level_mtls {
        if ports.is_empty() {
            ctx.error(
                Some("spec.portLevelMtls".to_owned()),
                "portLevelMtls, if present, must have at least one port (Istio rejects an empty map); remove it or add a port",
            );
        } else if !labelled_selector(&spec.selector) {
            ctx.error(
                Some("spec.portLevelMtls".to_owned()),
                "portLevelMtls needs a workload selector with at least one label (spec.selector.matchLabels): port-level exceptions only apply to selected workloads, and Istio rejects them in a mesh- or namespace-wide PeerAuthentication",
            );
        }
        for (PortKey(k), m) in ports {
            match parse_port(&k) {
                Some(p) => {
                    port_level.insert(p, m.mode);
                }
                None => ctx.error(
                    Some(format!("spec.portLevelMtls.{k}")),
                    format!("{k:?} is not a port number (1-65535)"),
                ),
            }
        }
    }
    check_selector(ctx, &spec.selector);
    if labelled_selector(&spec.selector) && metadata.namespace == settings.root_namespace {
        ctx.warn(
            Some("spec.selector".to_owned()),
            format!(
                "ignored: a PeerAuthentication with a selector in the root namespace {:?} applies to nothing (as in Istio); drop the selector for a mesh-wide policy",
                settings.root_namespace
            ),
        );
    }
    Some(PeerAuthentication {
        metadata,
        selector: spec.selector,
        mtls: spec.mtls.map(|m| m.mode).unwrap_or(MtlsMode::Unset),
        port_level_mtls: port_level,
        doc: Some(ctx.doc.clone()),
    })
}

// ---------------------------------------------------------------- AuthorizationPolicy

/// Istio's annotation for an AuthorizationPolicy that is evaluated but not
/// enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Whether an AuthorizationPolicy is marked dry-run. Such a policy is
/// validated but left out of the config, as istiod leaves it out of what it
/// sends to ztunnel in ambient mode: it neither allows nor denies anything.
/// The value is read as Go's `strconv.ParseBool` reads it, as istiod does; any
/// other value means "enforced", with a warning.
fn is_dry_run(ctx: &mut DocCtx<'_>, meta: &ObjectMeta) -> bool {
    let Some(v) = meta.annotations.get(DRY_RUN_ANNOTATION) else {
        return false;
    };
    let field = format!("metadata.annotations[{DRY_RUN_ANNOTATION}]");
    match v.as_str() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => {
            ctx.warn(
                Some(field),
                "dry-run: this policy is not enforced (ambient mode does not evaluate dry-run policies); remove the annotation to enforce it",
            );
            true
        }
        "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
        other => {
            ctx.warn(
                Some(field),
                format!("{other:?} is not a boolean (true or false): the policy is enforced"),
            );
            false
        }
    }
}

fn authorization_policy(
    ctx: &mut DocCtx<'_>,
    metadata: ObjectMeta,
    spec: AuthorizationPolicySpec,
) -> Option<AuthorizationPolicy> {
    // A refused action is reported with every other error of the policy
    // (its rules are checked as if it were ALLOW), not instead of them.
    let refused = |ctx: &mut DocCtx<'_>, message: String| {
        ctx.error(Some("spec.action".to_owned()), message);
        (Action::Allow, false)
    };
    let (action, action_ok) = match spec.action.as_deref() {
        None | Some("ALLOW") => (Action::Allow, true),
        Some("DENY") => (Action::Deny, true),
        Some("CUSTOM") => refused(
            ctx,
            "CUSTOM is not supported: it delegates to an external authorizer (ext_authz), which weir does not have; use ALLOW or DENY".to_owned(),
        ),
        Some("AUDIT") => refused(
            ctx,
            "AUDIT is not supported: it only marks requests for an Envoy audit logger, which weir does not have; use ALLOW or DENY".to_owned(),
        ),
        Some(other) => refused(ctx, format!("{other:?} is not an action; use ALLOW or DENY")),
    };
    if spec.provider.is_some() && action_ok {
        ctx.error(
            Some("spec.provider".to_owned()),
            "provider is only used with action CUSTOM, which weir does not support",
        );
    }
    // Istio's validation: one way of choosing what a policy applies to.
    if spec.target_ref.is_some() && spec.target_refs.is_some() {
        ctx.error(
            Some("spec.targetRef".to_owned()),
            "only one of targetRef and targetRefs can be set",
        );
    }
    if spec.target_field().is_some() && spec.selector.is_some() {
        ctx.error(
            Some("spec.selector".to_owned()),
            "only one of selector and targetRef/targetRefs can be set",
        );
    }
    check_selector(ctx, &spec.selector);
    if action == Action::Deny && spec.rules.as_ref().is_none_or(Vec::is_empty) {
        // `rules: []` decodes as no rules in Istio (a proto list has no presence).
        ctx.error(
            Some("spec.rules".to_owned()),
            "a DENY policy without rules is meaningless: it never denies anything (Istio rejects it); add an empty rule `{}` to deny every connection",
        );
    }
    // A waypoint's policy may use HTTP attributes freely: it is not
    // enforced here, so the node proxy's warning about them would mislead.
    let for_node = spec.target_field().is_none();
    let mut rules = Vec::new();
    for (i, r) in spec.rules.unwrap_or_default().into_iter().enumerate() {
        rules.push(rule(
            ctx,
            &format!("spec.rules[{i}]"),
            r,
            action,
            &metadata.namespace,
            for_node,
        ));
    }
    if !action_ok {
        return None;
    }
    Some(AuthorizationPolicy {
        metadata,
        selector: spec.selector,
        action,
        rules,
    })
}

/// The HTTP (L7) attributes a rule uses, by Istio's field or key name, as
/// istiod lists them for ztunnel (`found: methods, paths`).
fn l7_attributes(r: &RawRule) -> BTreeSet<String> {
    let mut found: BTreeSet<String> = r
        .from
        .iter()
        .flatten()
        .filter_map(|f| f.source.as_ref())
        .flat_map(RawSource::l7_fields)
        .chain(
            r.to.iter()
                .flatten()
                .filter_map(|t| t.operation.as_ref())
                .flat_map(RawOperation::l7_fields),
        )
        .map(str::to_owned)
        .collect();
    for c in r.when.iter().flatten() {
        if matches!(ConditionKey::parse(&c.key), ConditionKey::L7(_)) {
            found.insert(c.key.clone());
        }
    }
    found
}

/// `namespace`: the policy's, for `serviceAccounts` entries without one.
fn rule(
    ctx: &mut DocCtx<'_>,
    path: &str,
    r: RawRule,
    action: Action,
    namespace: &str,
    warn_l7: bool,
) -> Rule {
    let mut out = Rule::default();
    // What istiod reports on such a policy for ztunnel ("accepted with a
    // warning"): the rule is valid but an L4 proxy cannot honour it as written.
    let l7 = l7_attributes(&r);
    if warn_l7 && !l7.is_empty() {
        let found = l7.into_iter().collect::<Vec<_>>().join(", ");
        let effect = match action {
            Action::Allow => "within an ALLOW policy, a rule that uses them is omitted: this rule never matches, which is more restrictive than requested",
            Action::Deny => "a DENY rule that uses them is enforced without them: this rule denies every connection the rest of it matches, which is more restrictive than requested; name the ports in to.operation.ports to limit it",
        };
        ctx.warn(
            Some(path.to_owned()),
            format!(
                "the node proxy, like ztunnel, does not support HTTP attributes (found: {found}); {effect}"
            ),
        );
    }
    // Istio: "`from` must not be empty", "`to` must not be empty". A missing
    // section matches everything; an empty list is a mistake, not a synonym.
    for (field, empty) in [
        ("from", r.from.as_ref().is_some_and(Vec::is_empty)),
        ("to", r.to.as_ref().is_some_and(Vec::is_empty)),
    ] {
        if empty {
            ctx.error(
                Some(format!("{path}.{field}")),
                format!(
                    "`{field}` must not be empty (Istio rejects it); omit it to match any {}",
                    if field == "from" {
                        "source"
                    } else {
                        "operation"
                    }
                ),
            );
        }
    }
    for (i, f) in r.from.unwrap_or_default().into_iter().enumerate() {
        let p = format!("{path}.from[{i}]");
        match f.source {
            Some(s) => out
                .from
                .push(source(ctx, &format!("{p}.source"), s, namespace)),
            None => ctx.error(Some(p), "a from entry needs a source"),
        }
    }
    for (i, t) in r.to.unwrap_or_default().into_iter().enumerate() {
        let p = format!("{path}.to[{i}]");
        match t.operation {
            Some(o) => out.to.push(operation(ctx, &format!("{p}.operation"), o)),
            None => ctx.error(Some(p), "a to entry needs an operation"),
        }
    }
    for (i, c) in r.when.unwrap_or_default().into_iter().enumerate() {
        if let Some(c) = condition(ctx, &format!("{path}.when[{i}]"), c) {
            out.when.push(c);
        }
    }
    out
}

/// Principals written for `cluster.local` in a mesh with another trust
/// domain. Sidecar Istio reads `cluster.local` as an alias of the local
/// trust domain; ztunnel, and weir with it, compare principals as written,
/// so such a rule never matches: an ALLOW admits nobody by it and a DENY
/// denies nobody.
fn warn_other_trust_domain(
    ctx: &mut DocCtx<'_>,
    ap: &AuthorizationPolicy,
    settings: &MeshSettings,
) {
    const DEFAULT: &str = "cluster.local";
    let td = settings.trust_domain.as_str();
    if td == DEFAULT {
        return;
    }
    for (i, rule) in ap.rules.iter().enumerate() {
        for (j, source) in rule.from.iter().enumerate() {
            for (field, values) in [
                ("principals", &source.principals),
                ("notPrincipals", &source.not_principals),
            ] {
                for (k, m) in values.iter().enumerate() {
                    let (StringMatch::Exact(v) | StringMatch::Prefix(v)) = m else {
                        continue;
                    };
                    if let Some(rest) = v.strip_prefix("cluster.local/") {
                        ctx.warn(
                            Some(format!("spec.rules[{i}].from[{j}].source.{field}[{k}]")),
                            format!("names the trust domain {DEFAULT:?}, but this mesh's is {td:?} (--trust-domain): principals are compared as written, as ztunnel does (sidecar Istio's {DEFAULT:?} alias does not apply), so it never matches; write \"{td}/{rest}{}\"", if matches!(m, StringMatch::Prefix(_)) { "*" } else { "" }),
                        );
                    }
                }
            }
        }
    }
}

fn string_matches(
    ctx: &mut DocCtx<'_>,
    path: &str,
    values: Option<Vec<String>>,
    principal: bool,
) -> Vec<StringMatch> {
    let mut out = Vec::new();
    for (i, v) in values.unwrap_or_default().into_iter().enumerate() {
        let p = format!("{path}[{i}]");
        if v.is_empty() {
            ctx.error(Some(p), "empty value");
            continue;
        }
        let m = StringMatch::parse(&v);
        let literal = match &m {
            StringMatch::Exact(s) | StringMatch::Prefix(s) | StringMatch::Suffix(s) => {
                s.contains('*')
            }
            StringMatch::Presence => false,
        };
        if literal {
            // Istio accepts it and so does weir, with what it means spelt out.
            let meaning = match &m {
                StringMatch::Suffix(s) => format!("values ending in {s:?}"),
                StringMatch::Prefix(s) => format!("values starting with {s:?}"),
                _ => format!("only the value {v:?} itself"),
            };
            ctx.warn(
                Some(p.clone()),
                format!("{v:?}: only one '*' is a wildcard, as in Istio (a first one: suffix match, else a last one: prefix match); any other '*' is a literal character, so this matches {meaning}"),
            );
        }
        if principal && v.starts_with("spiffe://") {
            ctx.warn(
                Some(p.clone()),
                format!(
                    "{v:?} never matches: Istio writes principals without the spiffe:// scheme, e.g. {:?}",
                    v.trim_start_matches("spiffe://")
                ),
            );
        }
        out.push(m);
    }
    out
}

fn ip_blocks(ctx: &mut DocCtx<'_>, path: &str, values: Option<Vec<String>>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, v) in values.unwrap_or_default().into_iter().enumerate() {
        match parse_ip_block(&v) {
            Some(n) => out.push(n),
            None => ctx.error(
                Some(format!("{path}[{i}]")),
                format!("{v:?} is not an IP address or CIDR block (e.g. 198.18.0.0/15)"),
            ),
        }
    }
    out
}

fn ports(ctx: &mut DocCtx<'_>, path: &str, values: Option<Vec<PortKey>>) -> Vec<u16> {
    let mut out = Vec::new();
    for (i, PortKey(v)) in values.unwrap_or_default().into_iter().enumerate() {
        match parse_port(&v) {
            Some(p) => out.push(p),
            None => ctx.error(
                Some(format!("{path}[{i}]")),
                format!("{v:?} is not a port number (1-65535)"),
            ),
        }
    }
    out
}

/// Istio's limit on `serviceAccounts` entries per source.
const MAX_SERVICE_ACCOUNTS: usize = 16;

/// `serviceAccounts`/`notServiceAccounts` entries, validated as Istio's
/// `CheckServiceAccount` does: at most 16, `name` or `namespace/name`, no
/// `*`, neither part empty, at most 320 characters. `name` alone means the
/// policy's namespace.
fn service_accounts(
    ctx: &mut DocCtx<'_>,
    path: &str,
    values: Option<Vec<String>>,
    namespace: &str,
) -> Vec<ServiceAccountMatch> {
    let values = values.unwrap_or_default();
    if values.len() > MAX_SERVICE_ACCOUNTS {
        ctx.error(
            Some(path.to_owned()),
            format!(
                "{} values: Istio allows at most {MAX_SERVICE_ACCOUNTS}; use namespaces or principals for larger sets",
                values.len()
            ),
        );
    }
    let mut out = Vec::new();
    for (i, v) in values.into_iter().enumerate() {
        let p = format!("{path}[{i}]");
        let format_hint = "expected \"name\" (in the policy's namespace) or \"namespace/name\"";
        let problem = if v.is_empty() {
            Some("empty value".to_owned())
        } else if v.contains('*') {
            Some(format!("{v:?}: wildcards are not allowed in serviceAccounts (exact match only); use principals for prefix or suffix matches"))
        } else if v.matches('/').count() > 1 {
            Some(format!("{v:?}: {format_hint}"))
        } else if v.len() > 320 {
            Some(format!("{v:?}: longer than 320 characters"))
        } else {
            None
        };
        if let Some(problem) = problem {
            ctx.error(Some(p), problem);
            continue;
        }
        let (ns, sa) = v.split_once('/').unwrap_or((namespace, &v));
        if ns.is_empty() || sa.is_empty() {
            ctx.error(
                Some(p),
                format!(
                    "{v:?}: empty {}; {format_hint}",
                    if ns.is_empty() {
                        "namespace"
                    } else {
                        "service account"
                    }
                ),
            );
            continue;
        }
        out.push(ServiceAccountMatch {
            namespace: ns.to_owned(),
            service_account: sa.to_owned(),
        });
    }
    out
}

fn source(ctx: &mut DocCtx<'_>, path: &str, s: RawSource, namespace: &str) -> Source {
    // Istio: serviceAccounts name the identity already; combined with
    // principals or namespaces in one source they are refused.
    if (is_set(&s.service_accounts) || is_set(&s.not_service_accounts))
        && [
            &s.principals,
            &s.not_principals,
            &s.namespaces,
            &s.not_namespaces,
        ]
        .into_iter()
        .any(is_set)
    {
        ctx.error(
            Some(path.to_owned()),
            "cannot set serviceAccounts (or notServiceAccounts) with principals or namespaces (or their not* forms) in the same source (as in Istio); put them in separate from entries",
        );
    }
    // Istio checks which fields are set, not whether their values are valid:
    // a source whose only values are wrong gets errors for those values only.
    let set = [
        &s.principals,
        &s.not_principals,
        &s.request_principals,
        &s.not_request_principals,
        &s.namespaces,
        &s.not_namespaces,
        &s.service_accounts,
        &s.not_service_accounts,
        &s.ip_blocks,
        &s.not_ip_blocks,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
    ]
    .into_iter()
    .any(is_set);
    let l7 = s.l7_fields().next().is_some();
    let out = Source {
        principals: string_matches(ctx, &format!("{path}.principals"), s.principals, true),
        not_principals: string_matches(
            ctx,
            &format!("{path}.notPrincipals"),
            s.not_principals,
            true,
        ),
        namespaces: string_matches(ctx, &format!("{path}.namespaces"), s.namespaces, false),
        not_namespaces: string_matches(
            ctx,
            &format!("{path}.notNamespaces"),
            s.not_namespaces,
            false,
        ),
        service_accounts: service_accounts(
            ctx,
            &format!("{path}.serviceAccounts"),
            s.service_accounts,
            namespace,
        ),
        not_service_accounts: service_accounts(
            ctx,
            &format!("{path}.notServiceAccounts"),
            s.not_service_accounts,
            namespace,
        ),
        ip_blocks: ip_blocks(ctx, &format!("{path}.ipBlocks"), s.ip_blocks),
        not_ip_blocks: ip_blocks(ctx, &format!("{path}.notIpBlocks"), s.not_ip_blocks),
        l7,
    };
    if !set {
        ctx.error(
            Some(path.to_owned()),
            "a source must set at least one field (Istio rejects an empty source)",
        );
    }
    out
}

fn operation(ctx: &mut DocCtx<'_>, path: &str, o: RawOperation) -> Operation {
    let l7 = o.l7_fields().next().is_some();
    // Set fields, not valid values, as for a source.
    let set = l7 || [&o.ports, &o.not_ports].into_iter().any(is_set);
    let out = Operation {
        ports: ports(ctx, &format!("{path}.ports"), o.ports),
        not_ports: ports(ctx, &format!("{path}.notPorts"), o.not_ports),
        l7,
    };
    if !set {
        ctx.error(
            Some(path.to_owned()),
            "an operation must set at least one field (Istio rejects an empty operation)",
        );
    }
    out
}

/// Condition keys Istio accepts that an L4 proxy cannot evaluate (or, for
/// `source.serviceAccount`, that istiod does not give ztunnel).
fn is_known_l7_key(k: &str) -> bool {
    k.starts_with("request.headers[")
        || k.starts_with("request.experimental.inline.headers[")
        || k.starts_with("request.auth.claims[")
        || k.starts_with("experimental.envoy.filters.")
        || matches!(
            k,
            "request.auth.principal"
                | "request.auth.audiences"
                | "request.auth.presenter"
                | "remote.ip"
                | "connection.sni"
                | "source.serviceAccount"
                | "request.regex.headers"
        )
}

fn condition(ctx: &mut DocCtx<'_>, path: &str, c: RawCondition) -> Option<Condition> {
    let key = ConditionKey::parse(&c.key);
    if let ConditionKey::L7(k) = &key {
        if !is_known_l7_key(k) {
            ctx.error(
                Some(format!("{path}.key")),
                format!("unknown condition key {k:?}; L4 keys are source.ip, source.namespace, source.principal, destination.ip, destination.port"),
            );
            return None;
        }
    }
    if c.values.as_ref().is_none_or(Vec::is_empty)
        && c.not_values.as_ref().is_none_or(Vec::is_empty)
    {
        ctx.error(
            Some(path.to_owned()),
            "a condition needs values or notValues",
        );
        return None;
    }
    let parse = |ctx: &mut DocCtx<'_>, field: &str, v: Option<Vec<String>>| -> ConditionValues {
        let p = format!("{path}.{field}");
        match &key {
            ConditionKey::SourceIp | ConditionKey::DestinationIp => {
                ConditionValues::Ips(ip_blocks(ctx, &p, v))
            }
            ConditionKey::DestinationPort => ConditionValues::Ports(ports(
                ctx,
                &p,
                v.map(|v| v.into_iter().map(PortKey).collect()),
            )),
            ConditionKey::SourcePrincipal => {
                ConditionValues::Strings(string_matches(ctx, &p, v, true))
            }
            ConditionKey::SourceNamespace | ConditionKey::L7(_) => {
                ConditionValues::Strings(string_matches(ctx, &p, v, false))
            }
        }
    };
    let values = parse(ctx, "values", c.values);
    let not_values = parse(ctx, "notValues", c.not_values);
    Some(Condition {
        key,
        values,
        not_values,
    })
}

/// Why `ip` cannot be a Workload's address, if it cannot. Loopback is
/// allowed (in-process setups and tests use it); IPv6 is refused because the
/// node proxy's capture rules and listeners are IPv4 only: traffic to the
/// address would bypass the mesh instead of being secured by it.
/// A Service's cluster IP must be virtual: no Workload's address, and no
/// other Service's (a connection to it would not know where to go).
fn cluster_ip_check(
    config: &Config,
    workloads: &HashMap<IpAddr, (String, DocumentRef)>,
    documents: &HashMap<(String, String, String), DocumentRef>,
    errors: &mut Vec<ConfigError>,
) {
    let doc_of = |s: &super::Service| {
        documents.get(&(
            "Service".to_owned(),
            s.metadata.namespace.clone(),
            s.metadata.name.clone(),
        ))
    };
    let mut seen: HashMap<IpAddr, &super::Service> = HashMap::new();
    for s in &config.services {
        let Some(doc) = doc_of(s) else { continue };
        for ip in &s.cluster_ips {
            let clash = if let Some((w, at)) = workloads.get(ip) {
                Some(format!("{ip} is the address of Workload {w} ({at}); a cluster IP is virtual: give the Service an address no Workload has"))
            } else {
                seen.get(ip).map(|other| {
                    let at = doc_of(other).map(|d| format!(" ({d})")).unwrap_or_default();
                    format!(
                        "{ip} is already the cluster IP of Service {}{at}",
                        other.metadata.key()
                    )
                })
            };
            match clash {
                Some(message) => errors.push(ConfigError {
                    document: Some(doc.clone()),
                    file: doc.file.clone(),
                    field: Some("spec.clusterIP".to_owned()),
                    message,
                }),
                None => {
                    seen.insert(*ip, s);
                }
            }
        }
    }
}

fn unusable_workload_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_unspecified() => Some("is the unspecified address, not a workload's"),
        _ if ip.is_multicast() => Some("is a multicast address, not a workload's"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("is the broadcast address, not a workload's"),
        IpAddr::V4(_) => None,
        IpAddr::V6(_) => Some(
            "is an IPv6 address: weir's capture rules and listeners are IPv4 only for now, so its traffic would bypass the mesh; give the workload's IPv4 address",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<ConfigError> {
        match Config::from_sources(&[SourceFile::new("p.yaml", yaml)], MeshSettings::default()) {
            Ok(_) => panic!("expected errors for:\n{yaml}"),
            Err(e) => e.0,
        }
    }

    /// (document index, field) of each error, in order.
    fn located(e: &[ConfigError]) -> Vec<(usize, Option<&str>)> {
        e.iter()
            .map(|e| (e.document.as_ref().unwrap().index, e.field.as_deref()))
            .collect()
    }

    fn one(yaml: &str) -> ConfigError {
        let mut e = errors(yaml);
        assert_eq!(e.len(), 1, "{e:#?}");
        e.remove(0)
    }

    #[test]
    fn unknown_field_is_located() {
        let e = one(
            "apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: a, namespace: x}\nspec: {address: 198.18.0.1, node: n}\n---\n\
             apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-apps, namespace: kafka}\n\
             spec:\n  rules:\n  - from:\n    - source:\n        principalz: [a]\n",
        );
        assert_eq!(e.file, "p.yaml");
        let d = e.document.as_ref().unwrap();
        assert_eq!(d.index, 1);
        assert_eq!(d.name.as_deref(), Some("kafka/allow-apps"));
        assert_eq!(d.kind.as_deref(), Some("AuthorizationPolicy"));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.rules[0].from[0].source.principalz")
        );
        assert!(
            e.message.contains("unknown field \"principalz\""),
            "{}",
            e.message
        );
        let text = e.to_string();
        assert!(text.starts_with("p.yaml: document 2 (index 1) AuthorizationPolicy kafka/allow-apps: field spec.rules[0].from[0].source.principalz"), "{text}");
    }

    /// A null list entry (`-` alone) would read as an entry with nothing
    /// set: a rule that matches everything. Refused, each one located, in
    /// every kind (Istio's validation: "rule must not be nil").
    #[test]
    fn null_list_entries_are_refused() {
        let e = errors(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: kafka}\n\
             spec:\n  rules:\n  -\n  - from:\n    - source: {principals: [cluster.local/ns/apps/sa/p]}\n    -\n---\n\
             apiVersion: weir.dev/v1alpha1\nkind: KafkaAuthorizationPolicy\nmetadata: {name: k, namespace: kafka}\n\
             spec:\n  rules:\n  - ~\n---\n\
             apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: kafka}\n\
             spec: {mtls: {mode: STRICT}}\nstatus: {conditions: [~]}\n",
        );
        let got = located(&e);
        assert_eq!(
            got,
            [
                (0, Some("spec.rules[0]")),
                (0, Some("spec.rules[1].from[1]")),
                (1, Some("spec.rules[0]")),
            ],
            "{e:#?}"
        );
        assert!(e[0].message.contains("null"), "{}", e[0].message);
        // A null where a string goes reads "null", not serde's "unit value".
        let e = one("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: kafka}\nspec:\n  selector: {matchLabels: {app: ~}}\n");
        assert_eq!(e.field.as_deref(), Some("spec.selector.matchLabels.app"));
        assert!(
            e.message.starts_with("invalid type: null, expected"),
            "{}",
            e.message
        );
    }

    /// Unknown fields do not hide the errors in the rest of the document:
    /// one run reports both kinds, and nothing that is only a consequence
    /// of taking the unknown field out (an "empty" source).
    #[test]
    fn unknown_fields_and_bad_values_are_reported_together() {
        let e = errors(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: kafka}\n\
             spec:\n  action: CUSTOM\n  selectr: {}\n  rules:\n  - from:\n    - source: {principalz: [a]}\n  - to: [{operation: {ports: [\"70000\"]}}]\n---\n\
             apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: w, namespace: kafka}\nspec: {address: 198.18.0.1, node: Bad_Node, colour: blue}\n",
        );
        let got = located(&e);
        assert_eq!(
            got,
            [
                (0, Some("spec.selectr")),
                (0, Some("spec.rules[0].from[0].source.principalz")),
                (0, Some("spec.action")),
                (0, Some("spec.rules[1].to[0].operation.ports[0]")),
                (1, Some("spec.colour")),
                (1, Some("spec.node")),
            ],
            "{e:#?}"
        );
    }

    /// Ports are decimal digits, as Istio validates them: a leading `+`
    /// (which Rust's integer parsing takes) is refused, in `ports` and in
    /// `when` alike.
    #[test]
    fn ports_are_digits_only() {
        let e = errors(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: kafka}\n\
             spec:\n  rules:\n  - to: [{operation: {ports: [\"+9092\", \"9093\", \" 9094\"]}}]\n    \
             when: [{key: destination.port, values: [\"+9092\"]}]\n",
        );
        assert_eq!(
            located(&e),
            [
                (0, Some("spec.rules[0].to[0].operation.ports[0]")),
                (0, Some("spec.rules[0].to[0].operation.ports[2]")),
                (0, Some("spec.rules[0].when[0].values[0]")),
            ],
            "{e:#?}"
        );
    }

    #[test]
    fn every_structural_error_of_a_document_is_reported() {
        let e = errors(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {name: a, namespace: kafka, labelz: {x: y}}\n\
             spec:\n  action: 7\n  rules:\n  - from:\n    - source:\n        principalz: [a]\n  selectr: {}\n---\n\
             apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: kafka}\n\
             spec: {mtlz: {mode: STRICT}, selectr: {}}\n",
        );
        let got = located(&e);
        assert_eq!(
            got,
            [
                (0, Some("metadata.labelz")),
                (0, Some("spec.action")),
                (0, Some("spec.selectr")),
                (0, Some("spec.rules[0].from[0].source.principalz")),
                (1, Some("spec.mtlz")),
                (1, Some("spec.selectr")),
            ],
            "{e:#?}"
        );
        assert!(e[1].message.contains("invalid type"), "{}", e[1].message);
    }

    #[test]
    fn type_errors_say_what_was_expected_without_rust_type_names() {
        let cases = [
            (
                "spec: {mtls: STRICT}",
                "spec.mtls",
                "expected a mapping (key: value pairs)",
            ),
            (
                "spec: {portLevelMtls: [9404]}",
                "spec.portLevelMtls",
                "expected a mapping (key: value pairs)",
            ),
        ];
        for (spec, field, expected) in cases {
            let e = one(&format!(
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: a, namespace: k}}\n{spec}\n"
            ));
            assert_eq!(e.field.as_deref(), Some(field), "{spec}");
            assert!(e.message.contains(expected), "{spec}: {}", e.message);
            assert!(!e.message.contains("struct "), "{}", e.message);
        }
        assert_eq!(
            clean_serde_message("invalid type: string \"9094\", expected u64"),
            "invalid type: string \"9094\", expected a whole number (0 or more)"
        );
        assert_eq!(
            clean_serde_message("invalid type: integer `9092`, expected a sequence"),
            "invalid type: integer \"9092\", expected a list"
        );
        assert_eq!(
            clean_serde_message("unknown variant `X`, expected one of `A`, `B`"),
            "unknown variant \"X\", expected one of \"A\", \"B\""
        );
    }

    #[test]
    fn a_workload_node_is_a_node_name() {
        for bad in ["Node A", "node_b"] {
            let e = one(&format!(
                "apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {{name: a, namespace: x}}\nspec: {{address: 198.18.0.2, node: {bad}}}\n"
            ));
            assert_eq!(e.field.as_deref(), Some("spec.node"), "{bad}");
            assert!(e.message.contains("is not a node name"), "{}", e.message);
        }
    }

    #[test]
    fn a_bad_workload_address_is_quoted() {
        let e = one(
            "apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: a, namespace: x}\n\
             spec: {address: 10.0.0.300, node: n}\n",
        );
        assert_eq!(e.field.as_deref(), Some("spec.address"));
        assert!(
            e.message.contains("\"10.0.0.300\" is not an IP address"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_removed_field_is_not_then_reported_missing() {
        // `address` has the wrong type and is required: one error, not a
        // second "missing field" caused by taking it out.
        let e = one(
            "apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: a, namespace: x}\n\
             spec: {address: [1], node: n}\n",
        );
        assert_eq!(e.field.as_deref(), Some("spec.address"));
        // A missing field that was never there is reported, after the others.
        let e = errors(
            "apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {name: a, namespace: x}\n\
             spec: {adress: 198.18.0.1, node: n}\n",
        );
        let fields: Vec<_> = e.iter().map(|e| e.field.as_deref()).collect();
        assert_eq!(fields, [Some("spec.adress"), Some("spec")], "{e:#?}");
        assert!(
            e[1].message.contains("missing field \"address\""),
            "{}",
            e[1].message
        );
    }

    #[test]
    fn errors_in_list_elements_stop_the_document() {
        // Removing a list element would renumber the later ones, so the
        // first error in one ends the document's report.
        let e = one(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {name: a, namespace: kafka}\nspec: {rules: [7, 8]}\n",
        );
        assert_eq!(e.field.as_deref(), Some("spec.rules[0]"));
    }

    #[test]
    fn a_pod_uid_annotation_must_be_a_uid() {
        let e = one("apiVersion: weir.dev/v1alpha1\nkind: Workload\n\
             metadata: {name: a, namespace: x, annotations: {weir.dev/pod-uid: \"../1\"}}\n\
             spec: {address: 198.18.0.1, node: n}\n");
        assert_eq!(
            e.field.as_deref(),
            Some("metadata.annotations[weir.dev/pod-uid]")
        );
        assert!(
            e.message.contains("\"../1\" is not a Pod UID"),
            "{}",
            e.message
        );
        let ok = Config::from_sources(
            &[SourceFile::new(
                "p.yaml",
                "apiVersion: weir.dev/v1alpha1\nkind: Workload\n\
                 metadata: {name: a, namespace: x, annotations: {weir.dev/pod-uid: 7d3c1a52-9e0b-4f6d-8c21-5b4a3e2f1d09}}\n\
                 spec: {address: 198.18.0.1, node: n}\n",
            )],
            MeshSettings::default(),
        )
        .unwrap();
        assert_eq!(
            ok.workloads[0].pod_uid(),
            Some("7d3c1a52-9e0b-4f6d-8c21-5b4a3e2f1d09")
        );
    }

    #[test]
    fn unknown_kind_and_api_version() {
        let e = one("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n");
        assert_eq!(e.field.as_deref(), Some("kind"));
        assert!(e.message.contains("unknown kind \"ConfigMap\""));
        let e = one("apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: a}\n");
        assert_eq!(e.field.as_deref(), Some("apiVersion"));
    }

    #[test]
    fn custom_and_audit_refused() {
        for action in ["CUSTOM", "AUDIT"] {
            let e = one(&format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: a, namespace: k}}\nspec: {{action: {action}}}\n"));
            assert_eq!(e.field.as_deref(), Some("spec.action"));
            assert!(
                e.message.contains(&format!("{action} is not supported")),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn a_refused_action_does_not_hide_the_rules_errors() {
        let e = errors(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: k}\n\
             spec: {action: CUSTOM, rules: [{from: [{source: {ipBlocks: [nope]}}], to: [{operation: {ports: [\"70000\"]}}]}]}\n",
        );
        let fields: Vec<_> = e
            .iter()
            .map(|e| e.field.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            fields,
            [
                "spec.action",
                "spec.rules[0].from[0].source.ipBlocks[0]",
                "spec.rules[0].to[0].operation.ports[0]"
            ],
            "{e:#?}"
        );
    }

    #[test]
    fn every_error_is_reported() {
        let e = errors(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: k}\n\
             spec: {rules: [{from: [{source: {ipBlocks: [nope]}}], to: [{operation: {ports: [\"70000\"]}}], when: [{key: bogus, values: [x]}]}]}\n---\n\
             apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: b, namespace: k}\nspec: {mtls: {mode: STRICT}, portLevelMtls: {9404: {mode: PERMISSIVE}}}\n---\n\
             apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: c, namespace: k}\nspec: {mtls: {mode: strict}}\n",
        );
        let fields: Vec<_> = e
            .iter()
            .map(|e| e.field.clone().unwrap_or_default())
            .collect();
        assert!(
            fields.contains(&"spec.rules[0].from[0].source.ipBlocks[0]".to_owned()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"spec.rules[0].to[0].operation.ports[0]".to_owned()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"spec.rules[0].when[0].key".to_owned()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"spec.portLevelMtls".to_owned()),
            "{fields:?}"
        );
        assert!(fields.contains(&"spec.mtls.mode".to_owned()), "{fields:?}");
    }

    fn pa_doc(spec: &str) -> String {
        format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p, namespace: k}}\nspec: {spec}\n")
    }

    #[test]
    fn port_level_mtls_needs_a_labelled_selector_and_a_port() {
        // Istio's ValidatePeerAuthentication: no selector or a selector with
        // no labels is mesh/namespace-wide, which cannot have port-level mTLS.
        for spec in [
            "{portLevelMtls: {9404: {mode: PERMISSIVE}}}",
            "{selector: {}, portLevelMtls: {9404: {mode: PERMISSIVE}}}",
            "{selector: {matchLabels: {}}, portLevelMtls: {9404: {mode: PERMISSIVE}}}",
        ] {
            let e = one(&pa_doc(spec));
            assert_eq!(e.field.as_deref(), Some("spec.portLevelMtls"), "{spec}");
            assert!(
                e.message
                    .contains("portLevelMtls needs a workload selector with at least one label"),
                "{spec}: {}",
                e.message
            );
        }
        // Present but empty.
        let e = one(&pa_doc(
            "{selector: {matchLabels: {app: a}}, portLevelMtls: {}}",
        ));
        assert_eq!(e.field.as_deref(), Some("spec.portLevelMtls"));
        assert!(e.message.contains("at least one port"), "{}", e.message);
        // Port 0.
        let e = one(&pa_doc(
            "{selector: {matchLabels: {app: a}}, portLevelMtls: {0: {mode: PERMISSIVE}}}",
        ));
        assert_eq!(e.field.as_deref(), Some("spec.portLevelMtls.0"));
        assert!(e.message.contains("1-65535"), "{}", e.message);
        // A labelled selector with a port is fine.
        let c = Config::from_sources(
            &[SourceFile::new(
                "p.yaml",
                pa_doc("{selector: {matchLabels: {app: a}}, portLevelMtls: {9404: {mode: PERMISSIVE}}}"),
            )],
            MeshSettings::default(),
        )
        .unwrap();
        assert_eq!(
            c.peer_authentications[0].port_level_mtls.get(&9404),
            Some(&MtlsMode::Permissive)
        );
    }

    fn warnings(yaml: &str) -> Vec<ConfigError> {
        match Config::from_sources(&[SourceFile::new("p.yaml", yaml)], MeshSettings::default()) {
            Ok(c) => c.warnings,
            Err(e) => panic!("expected a valid config for:\n{yaml}\n{e}"),
        }
    }

    #[test]
    fn cluster_local_principals_in_another_trust_domain_are_flagged() {
        let yaml = ap_doc(
            "data",
            "{action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/apps/sa/bad, example.org/ns/apps/sa/ok], notPrincipals: [\"cluster.local/ns/ops/*\"]}}]}]}",
        );
        let settings = MeshSettings {
            trust_domain: "example.org".parse().unwrap(),
            ..MeshSettings::default()
        };
        let c = Config::from_sources(&[SourceFile::new("p.yaml", &yaml)], settings).unwrap();
        let got: Vec<(Option<&str>, &str)> = c
            .warnings
            .iter()
            .map(|w| (w.field.as_deref(), w.message.as_str()))
            .collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, Some("spec.rules[0].from[0].source.principals[0]"));
        assert!(
            got[0].1.contains("\"example.org/ns/apps/sa/bad\""),
            "{}",
            got[0].1
        );
        assert_eq!(
            got[1].0,
            Some("spec.rules[0].from[0].source.notPrincipals[0]")
        );
        assert!(
            got[1].1.contains("\"example.org/ns/ops/*\""),
            "{}",
            got[1].1
        );
        // In the default trust domain the same policy is fine.
        assert!(warnings(&yaml).is_empty());
    }

    fn ap_doc(ns: &str, spec: &str) -> String {
        format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: a, namespace: {ns}}}\nspec: {spec}\n")
    }

    #[test]
    fn a_dry_run_policy_is_checked_but_not_enforced() {
        let doc = |value: &str, spec: &str| {
            format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: a, namespace: k, annotations: {{istio.io/dry-run: {value}}}}}\nspec: {spec}\n")
        };
        let src = |y: &str| [SourceFile::new("p.yaml", y)];
        let c = Config::from_sources(
            &src(&doc("\"true\"", "{action: DENY, rules: [{}]}")),
            MeshSettings::default(),
        )
        .unwrap();
        assert!(c.authorization_policies.is_empty());
        assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
        assert_eq!(
            c.warnings[0].field.as_deref(),
            Some("metadata.annotations[istio.io/dry-run]")
        );
        assert!(
            c.warnings[0].message.contains("not enforced"),
            "{}",
            c.warnings[0].message
        );
        // Enforced: false, and (with a warning) a value that is not a boolean.
        let c = Config::from_sources(
            &src(&doc("\"false\"", "{rules: [{}]}")),
            MeshSettings::default(),
        )
        .unwrap();
        assert_eq!(c.authorization_policies.len(), 1);
        assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
        let w = warnings(&doc("\"yes\"", "{rules: [{}]}"));
        assert!(
            w[0].message.contains("\"yes\" is not a boolean"),
            "{}",
            w[0].message
        );
        // Still validated: a dry-run policy with an error is refused.
        let e = one(&doc("\"true\"", "{action: AUDIT}"));
        assert_eq!(e.field.as_deref(), Some("spec.action"));
    }

    /// A policy bound to a waypoint or gateway (targetRef/targetRefs) is
    /// validated, not enforced (istiod sends ztunnel none), with one warning
    /// (not the node proxy's warning about its HTTP attributes); with a
    /// selector too, or both forms, it is refused as Istio refuses it.
    #[test]
    fn a_waypoint_policy_is_checked_but_not_enforced() {
        let target =
            "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]";
        let c = Config::from_sources(
            &[SourceFile::new(
                "p.yaml",
                ap_doc(
                    "k",
                    &format!("{{{target}, action: DENY, rules: [{{to: [{{operation: {{methods: [DELETE]}}}}]}}]}}"),
                ),
            )],
            MeshSettings::default(),
        )
        .unwrap();
        assert!(c.authorization_policies.is_empty());
        assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
        assert_eq!(c.warnings[0].field.as_deref(), Some("spec.targetRefs"));
        assert!(c.warnings[0].message.starts_with("not enforced"));
        let w = warnings(&ap_doc(
            "k",
            "{targetRef: {kind: Service, group: '', name: kafka}, rules: [{}]}",
        ));
        assert_eq!(w[0].field.as_deref(), Some("spec.targetRef"));
        // Still validated.
        let e = one(&ap_doc("k", &format!("{{{target}, action: AUDIT}}")));
        assert_eq!(e.field.as_deref(), Some("spec.action"));
        let e = one(&ap_doc(
            "k",
            &format!("{{{target}, selector: {{matchLabels: {{app: a}}}}, rules: [{{}}]}}"),
        ));
        assert_eq!(e.field.as_deref(), Some("spec.selector"));
        let e = one(&ap_doc(
            "k",
            &format!("{{{target}, targetRef: {{kind: Service, name: a}}, rules: [{{}}]}}"),
        ));
        assert_eq!(e.field.as_deref(), Some("spec.targetRef"));
    }

    #[test]
    fn selector_wildcards_and_empty_keys_are_errors() {
        // Istio's validateWorkloadSelector, for both security kinds.
        for doc in [
            ap_doc("k", "{selector: {matchLabels: {app: \"*\"}}, rules: [{}]}"),
            ap_doc(
                "k",
                "{selector: {matchLabels: {app: \"kafka-*\"}}, rules: [{}]}",
            ),
            ap_doc(
                "k",
                "{selector: {matchLabels: {\"app*\": kafka}}, rules: [{}]}",
            ),
            pa_doc("{selector: {matchLabels: {app: \"*\"}}, mtls: {mode: STRICT}}"),
        ] {
            let e = one(&doc);
            assert!(
                e.field
                    .as_deref()
                    .unwrap()
                    .starts_with("spec.selector.matchLabels["),
                "{doc}: {e}"
            );
            assert!(
                e.message.contains("wildcard is not supported in selector"),
                "{doc}: {e}"
            );
        }
        for doc in [
            ap_doc("k", "{selector: {matchLabels: {\"\": a}}, rules: [{}]}"),
            pa_doc("{selector: {matchLabels: {\"\": a}}}"),
        ] {
            let e = one(&doc);
            assert_eq!(
                e.field.as_deref(),
                Some("spec.selector.matchLabels"),
                "{doc}"
            );
            assert!(
                e.message.contains("empty key is not supported in selector"),
                "{doc}: {e}"
            );
        }
    }

    #[test]
    fn selector_without_labels_is_a_warning() {
        let w = warnings(&ap_doc("k", "{selector: {matchLabels: {}}, rules: [{}]}"));
        assert_eq!(w.len(), 1, "{w:#?}");
        assert_eq!(w[0].field.as_deref(), Some("spec.selector"));
        assert!(w[0].message.contains("without labels"), "{}", w[0].message);
        // In the root namespace such a PeerAuthentication is mesh-wide, not an
        // ignored selector policy.
        let w = warnings(
            &pa_doc("{selector: {}, mtls: {mode: STRICT}}")
                .replace("namespace: k", "namespace: istio-system"),
        );
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(w[0].message.contains("without labels"), "{}", w[0].message);
        let w = warnings(
            &pa_doc("{selector: {matchLabels: {app: a}}, mtls: {mode: STRICT}}")
                .replace("namespace: k", "namespace: istio-system"),
        );
        assert!(w[0].message.starts_with("ignored"), "{}", w[0].message);
    }

    #[test]
    fn a_source_whose_values_are_all_invalid_is_not_called_empty() {
        let e = errors(&ap_doc(
            "k",
            "{rules: [{from: [{source: {ipBlocks: [\"10.0.0.0/33\", banana]}}], to: [{operation: {ports: [\"70000\", abc]}}]}]}",
        ));
        let fields: Vec<_> = e.iter().map(|e| e.field.clone().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "spec.rules[0].from[0].source.ipBlocks[0]",
                "spec.rules[0].from[0].source.ipBlocks[1]",
                "spec.rules[0].to[0].operation.ports[0]",
                "spec.rules[0].to[0].operation.ports[1]",
            ],
            "{e:#?}"
        );
        // A '*' inside a value is a literal '*', as Istio reads it: valid,
        // with a warning that says what it matches.
        let w = warnings(&ap_doc(
            "k",
            "{rules: [{from: [{source: {principals: [\"cluster.local/ns/*/sa/x\", \"*/ns/a*\"]}}]}]}",
        ));
        let at: Vec<_> = w.iter().map(|w| w.field.as_deref().unwrap()).collect();
        assert_eq!(
            at,
            [
                "spec.rules[0].from[0].source.principals[0]",
                "spec.rules[0].from[0].source.principals[1]"
            ]
        );
        assert!(w[0].message.contains("only the value"), "{}", w[0].message);
        assert!(
            w[1].message.contains("values ending in \"/ns/a*\""),
            "{}",
            w[1].message
        );
        assert_eq!(
            StringMatch::parse("*/ns/a*"),
            StringMatch::Suffix("/ns/a*".into())
        );
        assert!(!StringMatch::parse("cluster.local/ns/*/sa/x").matches("cluster.local/ns/a/sa/x"));
        // A source or operation with nothing set (or only empty lists) is
        // still refused, as Istio does.
        for (spec, field) in [
            (
                "{rules: [{from: [{source: {}}]}]}",
                "spec.rules[0].from[0].source",
            ),
            (
                "{rules: [{from: [{source: {principals: []}}]}]}",
                "spec.rules[0].from[0].source",
            ),
            (
                "{rules: [{to: [{operation: {ports: []}}]}]}",
                "spec.rules[0].to[0].operation",
            ),
        ] {
            let e = one(&ap_doc("k", spec));
            assert_eq!(e.field.as_deref(), Some(field), "{spec}");
        }
    }

    #[test]
    fn deny_without_rules_and_empty_from_or_to_are_errors() {
        // Istio's ValidateAuthorizationPolicy.
        for spec in ["{action: DENY}", "{action: DENY, rules: []}"] {
            let e = one(&ap_doc("k", spec));
            assert_eq!(e.field.as_deref(), Some("spec.rules"), "{spec}");
            assert!(
                e.message.contains("DENY policy without rules"),
                "{spec}: {}",
                e.message
            );
        }
        let e = errors(&ap_doc("k", "{rules: [{from: [], to: [], when: []}]}"));
        let fields: Vec<_> = e.iter().map(|e| e.field.clone().unwrap()).collect();
        assert_eq!(fields, ["spec.rules[0].from", "spec.rules[0].to"], "{e:#?}");
        assert!(
            e[0].message.contains("must not be empty"),
            "{}",
            e[0].message
        );
        // ALLOW without rules (allow nothing), `rules: [{}]` and `when: []`
        // stay valid.
        for spec in [
            "{}",
            "{rules: []}",
            "{action: DENY, rules: [{}]}",
            "{rules: [{when: []}]}",
        ] {
            warnings(&ap_doc("k", spec));
        }
    }

    #[test]
    fn service_accounts_are_validated_as_istio_does() {
        let c = Config::from_sources(
            &[SourceFile::new(
                "p.yaml",
                ap_doc(
                    "kafka",
                    "{rules: [{from: [{source: {serviceAccounts: [apps/producer, consumer]}}, {source: {notServiceAccounts: [x/y]}}]}]}",
                ),
            )],
            MeshSettings::default(),
        )
        .unwrap();
        let from = &c.authorization_policies[0].rules[0].from;
        let names: Vec<String> = from[0]
            .service_accounts
            .iter()
            .cloned()
            .map(String::from)
            .collect();
        assert_eq!(names, ["apps/producer", "kafka/consumer"]);
        assert_eq!(String::from(from[1].not_service_accounts[0].clone()), "x/y");

        let e = one(&ap_doc(
            "k",
            "{rules: [{from: [{source: {serviceAccounts: [apps/producer], namespaces: [apps]}}]}]}",
        ));
        assert_eq!(e.field.as_deref(), Some("spec.rules[0].from[0].source"));
        assert!(
            e.message.contains("cannot set serviceAccounts"),
            "{}",
            e.message
        );
        for (value, wanted) in [
            ("\"apps/*\"", "wildcards are not allowed"),
            ("a/b/c", "expected \"name\" (in the policy's namespace)"),
            ("/b", "empty namespace"),
            ("a/", "empty service account"),
            ("\"\"", "empty value"),
        ] {
            let e = one(&ap_doc(
                "k",
                &format!("{{rules: [{{from: [{{source: {{notServiceAccounts: [{value}]}}}}]}}]}}"),
            ));
            assert_eq!(
                e.field.as_deref(),
                Some("spec.rules[0].from[0].source.notServiceAccounts[0]"),
                "{value}"
            );
            assert!(e.message.contains(wanted), "{value}: {}", e.message);
        }
        let many: Vec<String> = (0..17).map(|i| format!("sa{i}")).collect();
        let e = one(&ap_doc(
            "k",
            &format!(
                "{{rules: [{{from: [{{source: {{serviceAccounts: [{}]}}}}]}}]}}",
                many.join(", ")
            ),
        ));
        assert_eq!(
            e.field.as_deref(),
            Some("spec.rules[0].from[0].source.serviceAccounts")
        );
        assert!(e.message.contains("at most 16"), "{}", e.message);
    }

    #[test]
    fn rules_with_http_attributes_are_warned_about() {
        // Istio's httpbin example: every rule field is L7 but the principal.
        let w = warnings(&ap_doc(
            "foo",
            "{rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}], to: [{operation: {methods: [GET], paths: [\"/info*\"]}}], when: [{key: \"request.auth.claims[iss]\", values: [\"https://accounts.google.com\"]}]}, {from: [{source: {namespaces: [test]}}]}]}",
        ));
        assert_eq!(w.len(), 1, "{w:#?}");
        assert_eq!(w[0].field.as_deref(), Some("spec.rules[0]"));
        assert!(
            w[0].message
                .contains("(found: methods, paths, request.auth.claims[iss])"),
            "{}",
            w[0].message
        );
        assert!(w[0].message.contains("never matches"), "{}", w[0].message);
        let w = warnings(&ap_doc(
            "foo",
            "{action: DENY, rules: [{from: [{source: {requestPrincipals: [\"*\"]}}], to: [{operation: {hosts: [a.example]}}]}]}",
        ));
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(
            w[0].message.contains("(found: hosts, requestPrincipals)"),
            "{}",
            w[0].message
        );
        assert!(
            w[0].message.contains("enforced without them"),
            "{}",
            w[0].message
        );
        // L4-only rules: no warning.
        assert!(warnings(&ap_doc(
            "foo",
            "{rules: [{to: [{operation: {ports: [\"80\"]}}], when: [{key: source.ip, values: [10.0.0.0/8]}]}]}"
        ))
        .is_empty());
    }

    const KUBECTL_LIST: &str = "apiVersion: v1\nitems:\n\
        - apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: a, namespace: k, uid: 1, resourceVersion: \"7\"}\n  spec: {rules: [{}]}\n\
        - apiVersion: security.istio.io/v1\n  kind: PeerAuthentication\n  metadata: {name: b, namespace: k}\n  spec: {mtls: {mode: STRICT}}\n\
        kind: List\nmetadata: {resourceVersion: \"\"}\n";

    #[test]
    fn a_kubectl_list_loads_its_items() {
        let c = Config::from_sources(
            &[SourceFile::new(
                "k.yaml",
                format!(
                    "{KUBECTL_LIST}---\n{}",
                    pa_doc("{mtls: {mode: PERMISSIVE}}")
                ),
            )],
            MeshSettings::default(),
        )
        .unwrap();
        assert_eq!(c.authorization_policies.len(), 1);
        assert_eq!(c.peer_authentications.len(), 2);
        assert_eq!(c.documents(), 3);
        // An empty List is no objects, not an error.
        let c = Config::from_sources(
            &[SourceFile::new(
                "k.yaml",
                "apiVersion: v1\nkind: List\nitems: []\n",
            )],
            MeshSettings::default(),
        )
        .unwrap();
        assert_eq!(c.summary().iter().map(|(_, n)| n).sum::<usize>(), 0);
        assert_eq!(c.documents(), 0);
    }

    #[test]
    fn empty_and_comment_only_sources_are_no_documents() {
        let c = Config::from_sources(
            &[
                SourceFile::new("a.yaml", ""),
                SourceFile::new("b.yaml", "# only a comment\n---\n---\n"),
            ],
            MeshSettings::default(),
        )
        .unwrap();
        assert_eq!(c.documents(), 0);
        let c = Config::from_sources(
            &[SourceFile::new(
                "p.yaml",
                format!("---\n{}---\n", pa_doc("{}")),
            )],
            MeshSettings::default(),
        )
        .unwrap();
        assert_eq!(c.documents(), 1);
    }

    #[test]
    fn errors_in_a_list_name_the_item() {
        let e = one(&format!(
            "{}---\n{}",
            pa_doc("{}"),
            KUBECTL_LIST.replace("mode: STRICT", "mode: STRICTT")
        ));
        assert_eq!(e.field.as_deref(), Some("spec.mtls.mode"));
        let d = e.document.as_ref().unwrap();
        assert_eq!((d.index, d.item), (1, Some(1)));
        assert!(
            e.to_string()
                .starts_with("p.yaml: document 2 (index 1) items[1] PeerAuthentication k/b: field spec.mtls.mode"),
            "{e}"
        );
        // A duplicate across items points at the first.
        let dup = KUBECTL_LIST
            .replace(
                "name: b, namespace: k}\n  spec: {mtls",
                "name: a, namespace: k}\n  spec: {mtls",
            )
            .replace("kind: PeerAuthentication", "kind: AuthorizationPolicy")
            .replace("{mtls: {mode: STRICT}}", "{rules: [{}]}");
        let e = one(&dup);
        assert!(
            e.message
                .contains("already defined at p.yaml: document 1 (index 0) items[0]"),
            "{e}"
        );
        // The wrapper itself.
        for (yaml, field) in [
            ("apiVersion: v2\nkind: List\nitems: []\n", "apiVersion"),
            ("apiVersion: v1\nkind: List\nitems: {a: b}\n", "items"),
            ("apiVersion: v1\nkind: List\nitems: []\nspec: {}\n", "spec"),
            (
                "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: List}]\n",
                "kind",
            ),
        ] {
            let e = one(yaml);
            assert_eq!(e.field.as_deref(), Some(field), "{yaml}: {e}");
        }
    }

    #[test]
    fn duplicates_and_addresses() {
        let w = |name: &str, addr: &str| {
            format!("---\napiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: x}}\nspec: {{address: {addr}, node: n}}\n")
        };
        let e = one(&format!("{}{}", w("a", "198.18.0.1"), w("a", "198.18.0.2")));
        assert!(
            e.message.contains("duplicate Workload x/a"),
            "{}",
            e.message
        );
        let e = one(&format!("{}{}", w("a", "198.18.0.1"), w("b", "198.18.0.1")));
        assert_eq!(e.field.as_deref(), Some("spec.address"));
        let e = one(&w("a", "not-an-ip"));
        assert_eq!(e.field.as_deref(), Some("spec.address"));
        // Addresses no workload can have, and IPv6 (capture is IPv4 only:
        // its traffic would bypass the mesh). Loopback stays allowed.
        for (addr, says) in [
            ("0.0.0.0", "unspecified"),
            ("224.0.0.5", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("'fd00::5'", "IPv4 only"),
            ("'::'", "unspecified"),
        ] {
            let e = one(&w("a", addr));
            assert_eq!(e.field.as_deref(), Some("spec.address"), "{addr}");
            assert!(e.message.contains(says), "{addr}: {}", e.message);
        }
        Config::from_sources(
            &[SourceFile::new("w.yaml", w("a", "127.0.0.2"))],
            MeshSettings::default(),
        )
        .unwrap();
    }

    #[test]
    fn syntax_error_names_the_file() {
        let e = one("apiVersion: [unclosed\n");
        assert!(e.message.starts_with("not valid YAML"), "{}", e.message);
    }

    #[test]
    fn kubectl_output_loads() {
        let c = Config::from_sources(
            &[SourceFile::new(
                "k.yaml",
                "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: kafka\n  uid: 1234\n  resourceVersion: \"77\"\n  generation: 1\n  creationTimestamp: \"2024-05-01T10:00:00Z\"\n  annotations: {a: b}\nspec:\n  mtls:\n    mode: STRICT\nstatus: {}\n---\n",
            )],
            MeshSettings::default(),
        )
        .unwrap();
        assert_eq!(c.peer_authentications.len(), 1);
        assert_eq!(c.peer_authentications[0].mtls, MtlsMode::Strict);
    }

    #[test]
    fn peer_authentications_shadowed_by_older_ones_are_warned() {
        let pa = |name: &str, ts: &str, sel: &str, extra: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: kafka, creationTimestamp: \"{ts}\"}}\nspec:\n{sel}{extra}---\n"
            )
        };
        let broker = |name: &str, ip: &str| {
            format!("apiVersion: weir.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: kafka, labels: {{app: kafka}}}}\nspec: {{address: {ip}, node: n}}\n---\n")
        };
        let selector = "  selector: {matchLabels: {app: kafka}}\n";
        let yaml = broker("kafka-0", "198.18.0.10")
            + &broker("kafka-1", "198.18.0.11")
            // The classic mistake: one exception per PeerAuthentication.
            + &pa("metrics", "2024-01-01T00:00:00Z", selector, "  portLevelMtls: {9404: {mode: PERMISSIVE}}\n")
            + &pa("webhook", "2024-02-01T00:00:00Z", selector, "  portLevelMtls: {8443: {mode: PERMISSIVE}}\n")
            + &pa("default", "2024-01-01T00:00:00Z", "", "  mtls: {mode: STRICT}\n")
            + &pa("strict-again", "2024-03-01T00:00:00Z", "", "  mtls: {mode: STRICT}\n");
        let w = warnings(&yaml);
        let about = |name: &str| {
            w.iter()
                .filter(|e| e.document.as_ref().and_then(|d| d.name.as_deref()) == Some(name))
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
        };
        let webhook = about("kafka/webhook");
        assert_eq!(webhook.len(), 1, "{w:#?}");
        assert!(
            webhook[0].contains("kafka-0, kafka-1")
                && webhook[0].contains("PeerAuthentication kafka/metrics is older"),
            "{}",
            webhook[0]
        );
        let again = about("kafka/strict-again");
        assert_eq!(again.len(), 1, "{w:#?}");
        assert!(
            again[0].contains("kafka/default is older")
                && again[0].contains("namespace-wide in \"kafka\""),
            "{}",
            again[0]
        );
        // The policies that apply are not warned about.
        assert!(
            about("kafka/metrics").is_empty() && about("kafka/default").is_empty(),
            "{w:#?}"
        );
        // Without timestamps the name decides, and the warning says so.
        let w = warnings(
            &(pa("a", "2024-01-01T00:00:00Z", "", "  mtls: {mode: STRICT}\n")
                + &pa(
                    "b",
                    "2024-01-01T00:00:00Z",
                    "",
                    "  mtls: {mode: PERMISSIVE}\n",
                )),
        );
        assert!(
            w[0].message
                .contains("kafka/a comes first by name (same creationTimestamp, or none)"),
            "{}",
            w[0].message
        );
        // And the engine does what the warning says: 8443 stays STRICT.
        let c = Config::from_sources(&[SourceFile::new("p.yaml", &yaml)], MeshSettings::default())
            .unwrap();
        let kafka0 = c.workload("kafka", "kafka-0").unwrap();
        assert_eq!(
            crate::policy::effective_mtls(&c, kafka0, 8443).mode,
            MtlsMode::Strict
        );
        assert_eq!(
            crate::policy::effective_mtls(&c, kafka0, 9404).mode,
            MtlsMode::Permissive
        );
    }
}
