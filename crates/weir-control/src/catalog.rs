//! A valid config as the control plane distributes it: one [`Entry`] per
//! object (its YAML document, a content hash, and the facts that decide
//! which nodes see it), built from sources with the same strict loader as
//! `weir check` and the node proxy.
//!
//! Objects travel as their own YAML documents (re-emitted from the parsed
//! document, so the node's loader sees exactly what was validated here), not
//! as typed protobuf messages: every kind weir understands, today's and the
//! ones later issues add, is distributed without a protobuf schema of its
//! own, and the node validates what it receives with the code it runs.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use serde::Deserialize;
use serde_yaml_ng::Value;
use weir_core::config::{SourceFile, WorkloadSelector};
use weir_core::{Config, ConfigError, ConfigErrors, MeshSettings};

use crate::proto::{Resource, ResourceKey};

/// Which nodes a resource concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A Workload: every node needs it (the destination lookup of outbound
    /// traffic maps every address to an identity); its node may also have
    /// certificates signed for its identity.
    Workload {
        /// `spec.node`.
        node: String,
        /// `spec.serviceAccount`.
        service_account: String,
        /// `metadata.labels`, for policy selectors.
        labels: BTreeMap<String, String>,
    },
    /// A PeerAuthentication or AuthorizationPolicy: the nodes with a
    /// workload it may apply to (same namespace, or the root namespace,
    /// and the selector matches).
    Policy {
        /// `spec.selector.matchLabels`; empty means namespace-wide.
        match_labels: BTreeMap<String, String>,
    },
    /// Any other kind: every node and gateway.
    Everywhere,
}

/// One distributed object.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The wire form (key, version, document); cloning it is cheap.
    pub resource: Resource,
    /// Which nodes it concerns.
    pub scope: Scope,
}

impl Entry {
    /// The resource's key.
    pub fn key(&self) -> &ResourceKey {
        // Every entry is built with a key.
        self.resource
            .key
            .as_ref()
            .expect("catalog entries always carry their key")
    }
}

/// Every object of one valid config, by key.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// The settings the config was validated with.
    pub settings: MeshSettings,
    /// The objects.
    pub entries: BTreeMap<ResourceKey, Entry>,
}

/// The content hash carried as [`Resource::version`]: 128 bits of SHA-256, hex.
pub fn content_version(document: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, document);
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A [`ResourceKey`].
pub fn key(kind: &str, namespace: &str, name: &str) -> ResourceKey {
    ResourceKey {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

#[derive(Deserialize)]
struct Head {
    kind: String,
    metadata: HeadMeta,
}

#[derive(Deserialize)]
struct HeadMeta {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
}

fn default_namespace() -> String {
    "default".to_owned()
}

impl Catalog {
    /// Validates `sources` with the strict loader (the messages are `weir
    /// check`'s) and splits them into entries. Any error refuses the whole
    /// load: what a file source does, so that a half-edited directory never
    /// goes out.
    pub fn load(sources: &[SourceFile], settings: MeshSettings) -> Result<Catalog, ConfigErrors> {
        let config = Config::from_sources(sources, settings)?;
        Self::from_valid(sources, &config).map_err(|e| ConfigErrors(vec![*e]))
    }

    /// Like [`load`](Self::load), but a source with an error is left out and
    /// reported, and the rest is served: what a cluster source does, where
    /// one bad object must not stop the mesh. A source is the unit left out,
    /// so sources that must be skipped one object at a time hold one object
    /// each (the Kubernetes source does).
    pub fn load_skipping_invalid(
        sources: &[SourceFile],
        settings: MeshSettings,
    ) -> (Catalog, Vec<ConfigError>) {
        let mut kept: Vec<SourceFile> = sources.to_vec();
        let mut skipped = Vec::new();
        // Each round removes at least one source (or stops), so this ends.
        loop {
            let before = kept.len();
            match Config::from_sources(&kept, settings.clone()) {
                Ok(config) => match Self::from_valid(&kept, &config) {
                    Ok(catalog) => return (catalog, skipped),
                    Err(e) => {
                        let file = e.file.clone();
                        skipped.push(*e);
                        kept.retain(|s| s.name != file);
                    }
                },
                Err(ConfigErrors(errors)) => {
                    let bad: std::collections::HashSet<String> =
                        errors.iter().map(|e| e.file.clone()).collect();
                    kept.retain(|s| !bad.contains(&s.name));
                    skipped.extend(errors);
                }
            }
            if kept.len() == before {
                // An error that names no source: nothing left to serve safely.
                let catalog = Catalog {
                    settings,
                    entries: BTreeMap::new(),
                };
                return (catalog, skipped);
            }
        }
    }

    /// Splits sources that `config` was loaded from into entries.
    fn from_valid(sources: &[SourceFile], config: &Config) -> Result<Catalog, Box<ConfigError>> {
        let workloads: HashMap<(&str, &str), _> = config
            .workloads
            .iter()
            .map(|w| ((w.namespace(), w.name()), w))
            .collect();
        let selector = |s: &Option<WorkloadSelector>| {
            s.as_ref()
                .map(|s| s.match_labels.clone())
                .unwrap_or_default()
        };
        let mut policies: HashMap<(&str, &str, &str), BTreeMap<String, String>> = HashMap::new();
        for p in &config.peer_authentications {
            policies.insert(
                (
                    "PeerAuthentication",
                    p.metadata.namespace.as_str(),
                    p.metadata.name.as_str(),
                ),
                selector(&p.selector),
            );
        }
        for p in &config.authorization_policies {
            policies.insert(
                (
                    "AuthorizationPolicy",
                    p.metadata.namespace.as_str(),
                    p.metadata.name.as_str(),
                ),
                selector(&p.selector),
            );
        }

        let mut entries = BTreeMap::new();
        for src in sources {
            for (index, de) in serde_yaml_ng::Deserializer::from_str(&src.content).enumerate() {
                let internal = |message: String| {
                    Box::new(ConfigError {
                        document: None,
                        file: src.name.clone(),
                        field: None,
                        message: format!("document {}: {message}", index + 1),
                    })
                };
                // The loader accepted these documents; failures here would
                // be a disagreement between it and this splitter.
                let value = Value::deserialize(de).map_err(|e| internal(e.to_string()))?;
                if value.is_null() {
                    continue;
                }
                let head: Head = serde_yaml_ng::from_value(value.clone())
                    .map_err(|e| internal(e.to_string()))?;
                let text = serde_yaml_ng::to_string(&value).map_err(|e| internal(e.to_string()))?;
                let k = key(&head.kind, &head.metadata.namespace, &head.metadata.name);
                let scope = match head.kind.as_str() {
                    "Workload" => {
                        let w = workloads
                            .get(&(k.namespace.as_str(), k.name.as_str()))
                            .ok_or_else(|| {
                                internal("Workload missing from the loaded config".into())
                            })?;
                        Scope::Workload {
                            node: w.node.clone(),
                            service_account: w.service_account.clone(),
                            labels: w.metadata.labels.clone(),
                        }
                    }
                    kind @ ("PeerAuthentication" | "AuthorizationPolicy") => {
                        match policies.get(&(kind, k.namespace.as_str(), k.name.as_str())) {
                            Some(m) => Scope::Policy {
                                match_labels: m.clone(),
                            },
                            // Valid but not enforced (istio.io/dry-run,
                            // targetRefs): the loader left it out of the
                            // config; every proxy's loader leaves it out too.
                            None if kind == "AuthorizationPolicy" => Scope::Everywhere,
                            None => {
                                return Err(internal(format!(
                                    "{kind} missing from the loaded config"
                                )))
                            }
                        }
                    }
                    _ => Scope::Everywhere,
                };
                let document = Bytes::from(text);
                let resource = Resource {
                    version: content_version(&document),
                    key: Some(k.clone()),
                    document,
                };
                entries.insert(k, Entry { resource, scope });
            }
        }
        Ok(Catalog {
            settings: config.settings.clone(),
            entries,
        })
    }

    /// The sources a node rebuilds its config from: one per resource.
    pub fn sources_of<'a>(resources: impl IntoIterator<Item = &'a Resource>) -> Vec<SourceFile> {
        resources
            .into_iter()
            .map(|r| {
                let name = match &r.key {
                    Some(k) => format!("control-plane:{}/{}/{}", k.kind, k.namespace, k.name),
                    None => "control-plane:?".to_owned(),
                };
                SourceFile::new(name, String::from_utf8_lossy(&r.document).into_owned())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dry-run or targetRefs AuthorizationPolicy is valid but not
    /// enforced: the catalog serves it (every proxy's loader leaves it out
    /// again) instead of refusing the whole config.
    #[test]
    fn policies_the_loader_leaves_out_do_not_invalidate_the_catalog() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: dry, namespace: apps, annotations: {istio.io/dry-run: \"true\"}}\nspec: {action: DENY, rules: [{}]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: waypoint, namespace: apps}\nspec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: w}], rules: [{}]}\n";
        let c = Catalog::load(&[SourceFile::new("p.yaml", yaml)], MeshSettings::default());
        assert!(c.is_ok(), "{:?}", c.err());
    }

    const WORKLOADS: &str = "apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {name: a, namespace: apps, labels: {app: a}}
spec: {serviceAccount: sa-a, address: 10.0.0.1, node: n1}
---
apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {name: b, namespace: apps}
spec: {address: 10.0.0.2, node: n2}
";

    const POLICIES: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: apps}
spec:
  selector: {matchLabels: {app: a}}
  action: DENY
  rules: [{from: [{source: {namespaces: [evil]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";

    fn sources() -> Vec<SourceFile> {
        vec![
            SourceFile::new("w.yaml", WORKLOADS),
            SourceFile::new("p.yaml", POLICIES),
        ]
    }

    #[test]
    fn splits_documents_with_scopes_and_stable_versions() {
        let c = Catalog::load(&sources(), MeshSettings::default()).unwrap();
        assert_eq!(c.entries.len(), 4);
        let a = &c.entries[&key("Workload", "apps", "a")];
        assert_eq!(
            a.scope,
            Scope::Workload {
                node: "n1".into(),
                service_account: "sa-a".into(),
                labels: [("app".to_owned(), "a".to_owned())].into(),
            }
        );
        let b = &c.entries[&key("Workload", "apps", "b")];
        assert!(
            matches!(&b.scope, Scope::Workload { service_account, .. } if service_account == "default")
        );
        let deny = &c.entries[&key("AuthorizationPolicy", "apps", "deny")];
        assert_eq!(
            deny.scope,
            Scope::Policy {
                match_labels: [("app".to_owned(), "a".to_owned())].into()
            }
        );
        let pa = &c.entries[&key("PeerAuthentication", "istio-system", "default")];
        assert_eq!(
            pa.scope,
            Scope::Policy {
                match_labels: BTreeMap::new()
            }
        );

        // Same content, same version; the documents load back alone.
        let again = Catalog::load(&sources(), MeshSettings::default()).unwrap();
        assert_eq!(
            again.entries[&key("Workload", "apps", "a")]
                .resource
                .version,
            a.resource.version
        );
        let resources: Vec<&Resource> = c.entries.values().map(|e| &e.resource).collect();
        let back =
            Config::from_sources(&Catalog::sources_of(resources), MeshSettings::default()).unwrap();
        assert_eq!(back.workloads.len(), 2);
        assert_eq!(back.authorization_policies.len(), 1);
        assert_eq!(back.peer_authentications.len(), 1);
        let original = Config::from_sources(&sources(), MeshSettings::default()).unwrap();
        assert_eq!(back.workloads, original.workloads);
        assert_eq!(back.authorization_policies, original.authorization_policies);

        // A changed document gets a new version.
        let changed = WORKLOADS.replace("10.0.0.1", "10.0.0.9");
        let c2 = Catalog::load(
            &[
                SourceFile::new("w.yaml", changed),
                SourceFile::new("p.yaml", POLICIES),
            ],
            MeshSettings::default(),
        )
        .unwrap();
        assert_ne!(
            c2.entries[&key("Workload", "apps", "a")].resource.version,
            a.resource.version
        );
        assert_eq!(
            c2.entries[&key("Workload", "apps", "b")].resource.version,
            b.resource.version
        );
    }

    #[test]
    fn invalid_input_refuses_all_or_skips_the_source() {
        let bad = SourceFile::new(
            "bad.yaml",
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: apps}
spec: {action: MAYBE}
",
        );
        let mut with_bad = sources();
        with_bad.push(bad);
        let errors = Catalog::load(&with_bad, MeshSettings::default()).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].file, "bad.yaml");

        let (c, skipped) = Catalog::load_skipping_invalid(&with_bad, MeshSettings::default());
        assert_eq!(c.entries.len(), 4, "the valid sources are still served");
        assert_eq!(skipped.len(), 1);
        // The message is the one `weir check` prints for the same YAML.
        assert_eq!(skipped[0].to_string(), errors.0[0].to_string());
        assert!(
            skipped[0].to_string().contains("bad.yaml"),
            "{}",
            skipped[0]
        );
    }
}
