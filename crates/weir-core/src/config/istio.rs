//! Istio's `security.istio.io` kinds, accepted unchanged: the raw YAML shapes
//! (strict: unknown fields are errors) and the validated forms the policy
//! engine uses.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::meta::{ObjectMeta, WorkloadSelector};

// ---------------------------------------------------------------- PeerAuthentication

/// `PeerAuthentication.MutualTLS.Mode`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize, Default,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent (namespace, then mesh); PERMISSIVE at the top.
    #[default]
    Unset,
    /// Plaintext allowed. Ambient meshes treat it as PERMISSIVE for inbound.
    Disable,
    /// mTLS (HBONE) and plaintext both accepted.
    Permissive,
    /// Only mTLS (HBONE) accepted.
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }

    /// Whether a plaintext (non-mesh) connection is accepted in this mode.
    pub fn allows_plaintext(self) -> bool {
        self != MtlsMode::Strict
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerAuthentication {
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    pub mtls: MtlsMode,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<u16, MtlsMode>,
    /// Where it was read from, for warnings found across documents.
    #[serde(skip)]
    pub(crate) doc: Option<super::DocumentRef>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    #[serde(default)]
    pub port_level_mtls: Option<BTreeMap<PortKey, MutualTls>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct MutualTls {
    #[serde(default)]
    pub mode: MtlsMode,
}

/// A `portLevelMtls` key: YAML writes it as a number or a quoted number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PortKey(pub String);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_yaml_ng::Value::deserialize(d)? {
            serde_yaml_ng::Value::Number(n) => Ok(PortKey(n.to_string())),
            serde_yaml_ng::Value::String(s) => Ok(PortKey(s)),
            other => Err(serde::de::Error::custom(format!(
                "a port number was expected, got {other:?}"
            ))),
        }
    }
}

// ---------------------------------------------------------------- AuthorizationPolicy

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
        }
    }
}

/// A validated AuthorizationPolicy, reduced to what an L4 proxy can enforce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    pub action: Action,
    pub rules: Vec<Rule>,
}

/// One rule: `from` (any entry), `to` (any entry) and `when` (all conditions)
/// must all match. Missing sections match everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

impl Rule {
    /// Whether any part of the rule needs L7 (HTTP) attributes, which an L4
    /// proxy cannot see.
    pub fn uses_l7(&self) -> bool {
        self.from.iter().any(|s| s.l7)
            || self.to.iter().any(|o| o.l7)
            || self
                .when
                .iter()
                .any(|c| matches!(c.key, ConditionKey::L7(_)))
    }
}

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (any non-empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl StringMatch {
    /// Istio's reading (istiod's `stringMatch` for ztunnel): `*` alone is
    /// presence, a leading `*` a suffix match (checked first: `*a*` is the
    /// suffix `a*`), a trailing one a prefix match; any other `*` is a
    /// literal character.
    pub fn parse(s: &str) -> Self {
        if s == "*" {
            StringMatch::Presence
        } else if let Some(p) = s.strip_prefix('*') {
            StringMatch::Suffix(p.to_owned())
        } else if let Some(p) = s.strip_suffix('*') {
            StringMatch::Prefix(p.to_owned())
        } else {
            StringMatch::Exact(s.to_owned())
        }
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            StringMatch::Exact(e) => v == e,
            StringMatch::Prefix(p) => v.starts_with(p.as_str()),
            StringMatch::Suffix(s) => v.ends_with(s.as_str()),
            StringMatch::Presence => !v.is_empty(),
        }
    }
}

impl From<StringMatch> for String {
    fn from(m: StringMatch) -> String {
        match m {
            StringMatch::Exact(e) => e,
            StringMatch::Prefix(p) => format!("{p}*"),
            StringMatch::Suffix(s) => format!("*{s}"),
            StringMatch::Presence => "*".to_owned(),
        }
    }
}

/// A `serviceAccounts` entry (Istio 1.24+): `namespace/name`, or `name` in
/// the policy's own namespace, already resolved. Exact on both parts; the
/// trust domain is not compared (as in ztunnel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

impl ServiceAccountMatch {
    /// Whether the peer runs as this service account; a plaintext peer
    /// (no identity) never does.
    pub fn matches(&self, peer: Option<&crate::spiffe::SpiffeId>) -> bool {
        peer.is_some_and(|p| {
            p.namespace() == self.namespace && p.service_account() == self.service_account
        })
    }
}

impl From<ServiceAccountMatch> for String {
    fn from(m: ServiceAccountMatch) -> String {
        format!("{}/{}", m.namespace, m.service_account)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
    /// `requestPrincipals`/`remoteIpBlocks` (and their `not` forms) were set.
    pub l7: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    /// `hosts`/`methods`/`paths` (and their `not` forms) were set.
    pub l7: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ConditionKey {
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
    /// Any other Istio key (`request.headers[..]`, `request.auth.*`, ...).
    L7(String),
}

impl ConditionKey {
    pub fn parse(s: &str) -> Self {
        match s {
            "source.ip" => ConditionKey::SourceIp,
            "source.namespace" => ConditionKey::SourceNamespace,
            "source.principal" => ConditionKey::SourcePrincipal,
            "destination.ip" => ConditionKey::DestinationIp,
            "destination.port" => ConditionKey::DestinationPort,
            other => ConditionKey::L7(other.to_owned()),
        }
    }
}

/// A `when` condition with values parsed for its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub key: ConditionKey,
    pub values: ConditionValues,
    pub not_values: ConditionValues,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ConditionValues {
    Strings(Vec<StringMatch>),
    Ips(Vec<IpNet>),
    Ports(Vec<u16>),
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub target_ref: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub target_refs: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub provider: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub rules: Option<Vec<RawRule>>,
}

impl AuthorizationPolicySpec {
    /// The field that binds the policy to a waypoint or gateway
    /// (`spec.targetRef`, else `spec.targetRefs`), if one is set: such a
    /// policy is not a node proxy's to enforce.
    pub(crate) fn target_field(&self) -> Option<&'static str> {
        match (&self.target_ref, &self.target_refs) {
            (Some(_), _) => Some("spec.targetRef"),
            (None, Some(_)) => Some("spec.targetRefs"),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawRule {
    #[serde(default)]
    pub from: Option<Vec<RawFrom>>,
    #[serde(default)]
    pub to: Option<Vec<RawTo>>,
    #[serde(default)]
    pub when: Option<Vec<RawCondition>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawFrom {
    #[serde(default)]
    pub source: Option<RawSource>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawSource {
    pub principals: Option<Vec<String>>,
    pub not_principals: Option<Vec<String>>,
    pub request_principals: Option<Vec<String>>,
    pub not_request_principals: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    pub not_namespaces: Option<Vec<String>>,
    pub service_accounts: Option<Vec<String>>,
    pub not_service_accounts: Option<Vec<String>>,
    pub ip_blocks: Option<Vec<String>>,
    pub not_ip_blocks: Option<Vec<String>>,
    pub remote_ip_blocks: Option<Vec<String>>,
    pub not_remote_ip_blocks: Option<Vec<String>>,
}

/// Whether a list field is set to something (absent and `[]` are not).
pub(crate) fn is_set<T>(v: &Option<Vec<T>>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_empty())
}

impl RawSource {
    /// The HTTP (L7) fields this source sets, by Istio's name: what an L4
    /// proxy cannot see.
    pub(crate) fn l7_fields(&self) -> impl Iterator<Item = &'static str> + '_ {
        [
            ("requestPrincipals", &self.request_principals),
            ("notRequestPrincipals", &self.not_request_principals),
            ("remoteIpBlocks", &self.remote_ip_blocks),
            ("notRemoteIpBlocks", &self.not_remote_ip_blocks),
        ]
        .into_iter()
        .filter(|(_, v)| is_set(v))
        .map(|(name, _)| name)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawTo {
    #[serde(default)]
    pub operation: Option<RawOperation>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawOperation {
    pub hosts: Option<Vec<String>>,
    pub not_hosts: Option<Vec<String>>,
    pub ports: Option<Vec<PortKey>>,
    pub not_ports: Option<Vec<PortKey>>,
    pub methods: Option<Vec<String>>,
    pub not_methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub not_paths: Option<Vec<String>>,
}

impl RawOperation {
    /// The HTTP (L7) fields this operation sets, by Istio's name.
    pub(crate) fn l7_fields(&self) -> impl Iterator<Item = &'static str> + '_ {
        [
            ("hosts", &self.hosts),
            ("notHosts", &self.not_hosts),
            ("methods", &self.methods),
            ("notMethods", &self.not_methods),
            ("paths", &self.paths),
            ("notPaths", &self.not_paths),
        ]
        .into_iter()
        .filter(|(_, v)| is_set(v))
        .map(|(name, _)| name)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawCondition {
    pub key: String,
    #[serde(default)]
    pub values: Option<Vec<String>>,
    #[serde(default)]
    pub not_values: Option<Vec<String>>,
}

/// Parses an `ipBlocks` entry: a CIDR or a single address.
pub(crate) fn parse_ip_block(s: &str) -> Option<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net);
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}
