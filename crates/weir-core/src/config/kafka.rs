//! weir's Kafka kinds (`weir.dev/v1alpha1`):
//! - [`KafkaGateway`], a Kafka-aware TLS listener of `weir gateway`: one
//!   bootstrap host name and one host name per broker, all on one port;
//! - [`KafkaAuthorizationPolicy`], topic-level authorization by identity at
//!   those listeners (evaluated by [`crate::policy::kafka`]).
//!
//! The raw YAML shapes (strict: unknown fields are errors) and the validated
//! forms. Nothing here reads a file: certificate paths are checked for
//! presence only, the gateway reads them when it starts.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use super::istio::{Action, StringMatch};
use super::load::{check_meta, is_dns_label, is_dns_subdomain, typed, DocCtx};
use super::meta::ObjectMeta;
use super::networking::{tls_versions, TlsVersion};
use super::{Config, ConfigError, DocumentRef};
use crate::kafka::dn::DnMatch;
use crate::kafka::{Operation, ResourceType};

/// The default limit on the size of one Kafka frame: 100 MiB, Kafka's own
/// `socket.request.max.bytes` default.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 100 * 1024 * 1024;

/// The largest frame size the Kafka protocol can express (its length field
/// is an `int32`).
pub const MAX_FRAME_BYTES_LIMIT: u32 = i32::MAX as u32;

// ================================================================ KafkaGateway

/// A Kafka-aware listener: TLS terminated on [`KafkaGateway::port`], clients
/// bootstrap at [`KafkaGateway::bootstrap_host`] and reach broker `N` at
/// [`BrokerHostTemplate::host`]`(N)`, all told apart by SNI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaGateway {
    pub metadata: ObjectMeta,
    /// Labels a gateway instance must all have to serve this listener, as
    /// Istio's `Gateway.spec.selector`. Empty selects every instance.
    pub selector: BTreeMap<String, String>,
    /// The listener port.
    pub port: u16,
    /// The port advertised to clients for the bootstrap and every broker
    /// address: `spec.advertisedPort`, by default [`KafkaGateway::port`]. It
    /// differs when clients reach the gateway through a port mapping (a
    /// LoadBalancer Service's 9094 in front of a container port 19094).
    pub advertised_port: u16,
    pub tls: KafkaGatewayTls,
    /// The SNI name of the bootstrap address (lower case).
    pub bootstrap_host: String,
    pub broker_host_template: BrokerHostTemplate,
    pub upstream: KafkaUpstream,
    /// Frames larger than this close the connection.
    pub max_frame_bytes: u32,
    #[serde(skip)]
    pub(crate) doc: Option<DocumentRef>,
}

impl KafkaGateway {
    /// Whether a gateway instance with `labels` serves this listener.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        self.metadata.key()
    }
}

/// How a KafkaGateway terminates TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KafkaTlsMode {
    /// Server certificate only; clients are [`crate::kafka::Principal::Anonymous`].
    Simple,
    /// Client certificates required, verified against `caCertificates`.
    Mutual,
}

impl KafkaTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaTlsMode::Simple => "SIMPLE",
            KafkaTlsMode::Mutual => "MUTUAL",
        }
    }
}

impl fmt::Display for KafkaTlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// File-mounted TLS material (PEM), read by the gateway when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaGatewayTls {
    pub mode: KafkaTlsMode,
    pub server_certificate: PathBuf,
    pub private_key: PathBuf,
    /// The CAs client certificates must chain to; `Some` exactly in MUTUAL mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<PathBuf>,
    /// The TLS versions offered to clients, as in an Istio Gateway server's
    /// `tls` (default TLS 1.2 to 1.3).
    pub min_protocol_version: TlsVersion,
    pub max_protocol_version: TlsVersion,
}

/// A per-broker host name template such as `b{id}-kafka.example.com`: the
/// `{id}` placeholder stands for the broker's node id (decimal, no leading
/// zeros). Stored lower case; SNI names are compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct BrokerHostTemplate {
    prefix: String,
    suffix: String,
}

/// The placeholder in a [`BrokerHostTemplate`].
pub const BROKER_ID_PLACEHOLDER: &str = "{id}";

impl BrokerHostTemplate {
    /// Parses a template: `{id}` exactly once, and a valid DNS name for
    /// every id. The error says what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let n = s.matches(BROKER_ID_PLACEHOLDER).count();
        if n != 1 {
            return Err(format!(
                "{s:?} must contain {BROKER_ID_PLACEHOLDER} exactly once (found {n}), e.g. \"b{{id}}-kafka.example.com\""
            ));
        }
        let lower = s.to_ascii_lowercase();
        let Some((prefix, suffix)) = lower.split_once(BROKER_ID_PLACEHOLDER) else {
            return Err(format!("{s:?} must contain {BROKER_ID_PLACEHOLDER}"));
        };
        if prefix.contains(['{', '}']) || suffix.contains(['{', '}']) {
            return Err(format!(
                "{s:?}: the only placeholder is {BROKER_ID_PLACEHOLDER}"
            ));
        }
        let t = Self {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        };
        // Digits never break a label's characters, so one id checks them;
        // they do add length, so the longest id checks the 63- and
        // 253-character limits.
        let sample = t.host(0);
        if !is_host_name(&sample) {
            return Err(format!(
                "{s:?} does not yield a DNS name (e.g. {sample:?}): use lower-case letters, digits, '-' and '.', with {BROKER_ID_PLACEHOLDER} inside a label"
            ));
        }
        let longest = t.host(i32::MAX);
        if !is_host_name(&longest) {
            return Err(format!(
                "{s:?} is too long for 10-digit broker ids ({longest:?}): a DNS label has at most 63 characters, a name at most 253"
            ));
        }
        if looks_like_an_address(&sample) {
            return Err(format!(
                "{s:?} yields IP addresses (e.g. {sample:?}): {NO_SNI_FOR_ADDRESSES}"
            ));
        }
        Ok(t)
    }

    /// The host name of broker `id`.
    pub fn host(&self, id: i32) -> String {
        format!("{}{id}{}", self.prefix, self.suffix)
    }

    /// The broker id an SNI name stands for, if it is an instance of the
    /// template (case-insensitive; ids are non-negative, without leading zeros).
    pub fn broker_id(&self, sni: &str) -> Option<i32> {
        let b = sni.as_bytes();
        let (p, s) = (self.prefix.len(), self.suffix.len());
        if b.len() <= p + s
            || !b[..p].eq_ignore_ascii_case(self.prefix.as_bytes())
            || !b[b.len() - s..].eq_ignore_ascii_case(self.suffix.as_bytes())
        {
            return None;
        }
        let digits = sni.get(p..b.len() - s)?;
        if !digits.bytes().all(|c| c.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return None;
        }
        digits.parse::<i32>().ok()
    }

    /// The template as written (lower case).
    pub fn as_string(&self) -> String {
        format!("{}{BROKER_ID_PLACEHOLDER}{}", self.prefix, self.suffix)
    }
}

impl fmt::Display for BrokerHostTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{BROKER_ID_PLACEHOLDER}{}", self.prefix, self.suffix)
    }
}

impl From<BrokerHostTemplate> for String {
    fn from(t: BrokerHostTemplate) -> String {
        t.to_string()
    }
}

/// Where the gateway finds the Kafka cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaUpstream {
    /// At least one; tried in order.
    pub bootstrap_servers: Vec<BootstrapServer>,
}

/// A `host:port` upstream address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct BootstrapServer {
    pub host: UpstreamHost,
    pub port: u16,
}

/// The host part of a [`BootstrapServer`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamHost {
    /// A DNS name (lower case), resolved by the gateway.
    Name(String),
    Ip(IpAddr),
}

impl BootstrapServer {
    /// Parses `host:port`, `1.2.3.4:port` or `[v6]:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let Some((v6, port)) = rest.split_once("]:") else {
                return Err(format!(
                    "{s:?} is not host:port (an IPv6 address is written [fd00::1]:9092)"
                ));
            };
            let ip: Ipv6Addr = v6
                .parse()
                .map_err(|_| format!("{s:?}: {v6:?} is not an IPv6 address"))?;
            (UpstreamHost::Ip(IpAddr::V6(ip)), port)
        } else {
            let Some((host, port)) = s.rsplit_once(':') else {
                return Err(format!(
                    "{s:?} is not host:port (e.g. kafka-0.kafka.svc.cluster.local:9092)"
                ));
            };
            if host.contains(':') {
                return Err(format!(
                    "{s:?}: an IPv6 address must be in brackets, e.g. [fd00::1]:9092"
                ));
            }
            let host = if let Ok(ip) = host.parse::<IpAddr>() {
                UpstreamHost::Ip(ip)
            } else if is_host_name(&host.to_ascii_lowercase()) {
                UpstreamHost::Name(host.to_ascii_lowercase())
            } else {
                return Err(format!(
                    "{s:?}: {host:?} is neither an IP address nor a DNS name"
                ));
            };
            (host, port)
        };
        match port.parse::<u16>() {
            Ok(p) if p != 0 => Ok(Self { host, port: p }),
            _ => Err(format!("{s:?}: {port:?} is not a port number (1-65535)")),
        }
    }
}

impl fmt::Display for BootstrapServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            UpstreamHost::Name(n) => write!(f, "{n}:{}", self.port),
            UpstreamHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            UpstreamHost::Ip(ip) => write!(f, "{ip}:{}", self.port),
        }
    }
}

impl From<BootstrapServer> for String {
    fn from(b: BootstrapServer) -> String {
        b.to_string()
    }
}

/// Why a KafkaGateway's host names cannot be IP addresses.
const NO_SNI_FOR_ADDRESSES: &str = "TLS clients send no SNI for an IP address (RFC 6066; librdkafka and Java alike), and the gateway routes Kafka connections by SNI: use DNS names";

/// Whether a host name reads as an IPv4 address to a TLS client: its last
/// label is all digits (no real top-level domain is).
fn looks_like_an_address(host: &str) -> bool {
    host.rsplit('.')
        .next()
        .is_some_and(|l| !l.is_empty() && l.bytes().all(|c| c.is_ascii_digit()))
}

/// A DNS host name: dot-separated labels of lower-case letters, digits and
/// `-` (RFC 1123), at most 253 characters; no wildcards.
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[derive(Debug, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KafkaGatewaySpec {
    #[serde(default)]
    selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    port: Option<u64>,
    #[serde(default)]
    advertised_port: Option<u64>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    bootstrap_host: Option<String>,
    #[serde(default)]
    broker_host_template: Option<String>,
    #[serde(default)]
    upstream: Option<RawUpstream>,
    #[serde(default)]
    max_frame_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    server_certificate: Option<String>,
    #[serde(default)]
    private_key: Option<String>,
    #[serde(default)]
    ca_certificates: Option<String>,
    /// `TLS_AUTO` (the default: TLS 1.2), `TLSV1_2` or `TLSV1_3`, as in Istio.
    #[serde(default)]
    min_protocol_version: Option<String>,
    /// `TLS_AUTO` (the default: TLS 1.3), `TLSV1_2` or `TLSV1_3`, as in Istio.
    #[serde(default)]
    max_protocol_version: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    credential_name: Option<Value>,
}

#[derive(Debug, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawUpstream {
    #[serde(default)]
    bootstrap_servers: Option<Vec<String>>,
}

fn kafka_tls(ctx: &mut DocCtx<'_>, t: Option<RawTls>) -> Option<KafkaGatewayTls> {
    let Some(t) = t else {
        ctx.error(
            Some("spec.tls".to_owned()),
            "missing: a KafkaGateway terminates TLS (it routes brokers by SNI); set mode, serverCertificate and privateKey",
        );
        return None;
    };
    if t.credential_name.is_some() {
        ctx.error(
            Some("spec.tls.credentialName".to_owned()),
            "weir reads certificates from mounted files only, not Kubernetes Secrets: mount the secret and set serverCertificate, privateKey (and caCertificates for MUTUAL) to the file paths",
        );
    }
    let mode = match t.mode.as_deref() {
        None | Some("SIMPLE") => Some(KafkaTlsMode::Simple),
        Some("MUTUAL") => Some(KafkaTlsMode::Mutual),
        Some("PASSTHROUGH" | "AUTO_PASSTHROUGH") => {
            ctx.error(
                Some("spec.tls.mode".to_owned()),
                "a KafkaGateway always terminates TLS (it reads and rewrites Kafka responses); use SIMPLE or MUTUAL, or an Istio Gateway with PASSTHROUGH to forward TLS untouched",
            );
            None
        }
        Some(other) => {
            ctx.error(
                Some("spec.tls.mode".to_owned()),
                format!("{other:?} is not a KafkaGateway TLS mode; use SIMPLE or MUTUAL"),
            );
            None
        }
    };
    let mut path = |name: &str, v: Option<String>, required: bool| -> Option<PathBuf> {
        let field = Some(format!("spec.tls.{name}"));
        match v {
            Some(s) if s.trim().is_empty() => {
                ctx.error(field, "must not be empty");
                None
            }
            Some(s) => Some(PathBuf::from(s)),
            None => {
                if required {
                    ctx.error(
                        field,
                        format!("missing: tls needs {name} (a PEM file path)"),
                    );
                }
                None
            }
        }
    };
    let server_certificate = path("serverCertificate", t.server_certificate, true);
    let private_key = path("privateKey", t.private_key, true);
    let mutual = mode == Some(KafkaTlsMode::Mutual);
    let ca_certificates = path("caCertificates", t.ca_certificates, false);
    let (min_protocol_version, max_protocol_version) = tls_versions(
        ctx,
        "spec.tls.",
        t.min_protocol_version.as_deref(),
        t.max_protocol_version.as_deref(),
    );
    let mode = mode?;
    if mutual && ca_certificates.is_none() {
        ctx.error(
            Some("spec.tls.caCertificates".to_owned()),
            "missing: MUTUAL needs caCertificates (a PEM file of the CAs client certificates must chain to)",
        );
    }
    let ca_certificates = if !mutual && ca_certificates.is_some() {
        ctx.warn(
            Some("spec.tls.caCertificates".to_owned()),
            "ignored: client certificates are only requested in MUTUAL mode",
        );
        None
    } else {
        ca_certificates
    };
    Some(KafkaGatewayTls {
        mode,
        server_certificate: server_certificate?,
        private_key: private_key?,
        ca_certificates,
        min_protocol_version,
        max_protocol_version,
    })
}

/// `p` as a TCP port (1-65535), or an error on `field`.
fn port_number(ctx: &mut DocCtx<'_>, field: &str, p: u64) -> Option<u16> {
    match u16::try_from(p) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            ctx.error(
                Some(field.to_owned()),
                format!("{p} is not a port number (1-65535)"),
            );
            None
        }
    }
}

fn kafka_gateway(
    ctx: &mut DocCtx<'_>,
    metadata: ObjectMeta,
    spec: KafkaGatewaySpec,
) -> Option<KafkaGateway> {
    let selector = spec.selector.unwrap_or_default();
    let port = match spec.port {
        None => {
            ctx.error(
                Some("spec.port".to_owned()),
                "missing: the listener port (1-65535)",
            );
            None
        }
        Some(p) => port_number(ctx, "spec.port", p),
    };
    let advertised_port = match spec.advertised_port {
        None => port,
        Some(p) => port_number(ctx, "spec.advertisedPort", p),
    };
    let tls = kafka_tls(ctx, spec.tls);
    let template = match spec.broker_host_template.as_deref() {
        None => {
            ctx.error(
                Some("spec.brokerHostTemplate".to_owned()),
                "missing: a host name per broker, with {id} for the broker id, e.g. \"b{id}-kafka.example.com\"",
            );
            None
        }
        Some(t) => match BrokerHostTemplate::parse(t) {
            Ok(t) => Some(t),
            Err(e) => {
                ctx.error(Some("spec.brokerHostTemplate".to_owned()), e);
                None
            }
        },
    };
    let bootstrap_host = match spec.bootstrap_host.as_deref() {
        None => {
            ctx.error(
                Some("spec.bootstrapHost".to_owned()),
                "missing: the host name (SNI) clients bootstrap at, e.g. kafka.example.com",
            );
            None
        }
        Some(h) => {
            let lower = h.to_ascii_lowercase();
            if !is_host_name(&lower) {
                ctx.error(
                    Some("spec.bootstrapHost".to_owned()),
                    format!(
                        "{h:?} is not a DNS host name (letters, digits, '-' and '.'; no wildcards)"
                    ),
                );
                None
            } else if looks_like_an_address(&lower) {
                ctx.error(
                    Some("spec.bootstrapHost".to_owned()),
                    format!("{h:?} is an IP address: {NO_SNI_FOR_ADDRESSES}"),
                );
                None
            } else if let Some(id) = template.as_ref().and_then(|t| t.broker_id(&lower)) {
                ctx.error(
                    Some("spec.bootstrapHost".to_owned()),
                    format!(
                        "{h:?} is also the host of broker {id} under brokerHostTemplate {:?}: the gateway could not tell bootstrap connections from broker {id}'s",
                        template.as_ref().map(ToString::to_string).unwrap_or_default()
                    ),
                );
                None
            } else {
                Some(lower)
            }
        }
    };
    let mut servers = Vec::new();
    match spec.upstream.and_then(|u| u.bootstrap_servers) {
        None => ctx.error(
            Some("spec.upstream.bootstrapServers".to_owned()),
            "missing: at least one host:port of the Kafka cluster",
        ),
        Some(list) if list.is_empty() => ctx.error(
            Some("spec.upstream.bootstrapServers".to_owned()),
            "empty: at least one host:port of the Kafka cluster is needed",
        ),
        Some(list) => {
            for (i, s) in list.iter().enumerate() {
                let field = Some(format!("spec.upstream.bootstrapServers[{i}]"));
                match BootstrapServer::parse(s) {
                    Ok(b) if servers.contains(&b) => {
                        ctx.warn(field, format!("{s:?} is listed twice"))
                    }
                    Ok(b) => servers.push(b),
                    Err(e) => ctx.error(field, e),
                }
            }
        }
    }
    let max_frame_bytes = match spec.max_frame_bytes {
        None => Some(DEFAULT_MAX_FRAME_BYTES),
        Some(n) => match u32::try_from(n) {
            Ok(n) if (1..=MAX_FRAME_BYTES_LIMIT).contains(&n) => Some(n),
            _ => {
                ctx.error(
                    Some("spec.maxFrameBytes".to_owned()),
                    format!("{n} is out of range: a Kafka frame size is 1 to {MAX_FRAME_BYTES_LIMIT} bytes (default {DEFAULT_MAX_FRAME_BYTES}, 100 MiB)"),
                );
                None
            }
        },
    };
    Some(KafkaGateway {
        metadata,
        selector,
        port: port?,
        advertised_port: advertised_port?,
        tls: tls?,
        bootstrap_host: bootstrap_host?,
        broker_host_template: template?,
        upstream: KafkaUpstream {
            bootstrap_servers: servers,
        },
        max_frame_bytes: max_frame_bytes?,
        doc: Some(ctx.doc.clone()),
    })
}

// ================================================================ KafkaAuthorizationPolicy

/// Topic-level authorization at KafkaGateways: DENY rules first, then, if
/// any ALLOW policy applies, a matching ALLOW rule is needed (see
/// `docs/kafka-authorization.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaAuthorizationPolicy {
    pub metadata: ObjectMeta,
    /// The KafkaGateways it applies to; `None`: every KafkaGateway in its
    /// namespace (in the root namespace: every KafkaGateway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateways: Option<Vec<KafkaGatewayRef>>,
    pub action: Action,
    pub rules: Vec<KafkaRule>,
    #[serde(skip)]
    pub(crate) doc: Option<DocumentRef>,
}

impl KafkaAuthorizationPolicy {
    /// Whether the policy applies to KafkaGateway `namespace/name`, given the
    /// mesh's root namespace.
    pub fn applies_to(&self, namespace: &str, name: &str, root_namespace: &str) -> bool {
        let ns = self.metadata.namespace.as_str();
        let root = ns == root_namespace;
        if ns != namespace && !root {
            return false;
        }
        match &self.gateways {
            None => true,
            Some(refs) => refs.iter().any(|r| match &r.namespace {
                Some(rns) => rns == namespace && r.name == name,
                // In the root namespace a bare name matches that name in
                // every namespace, as a root-namespace selector does in Istio.
                None => r.name == name && (root || ns == namespace),
            }),
        }
    }
}

/// A `gateways` entry: `name` (in the policy's namespace; in the root
/// namespace, that name in every namespace) or, in the root namespace only,
/// `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct KafkaGatewayRef {
    pub namespace: Option<String>,
    pub name: String,
}

impl From<KafkaGatewayRef> for String {
    fn from(r: KafkaGatewayRef) -> String {
        match r.namespace {
            Some(ns) => format!("{ns}/{}", r.name),
            None => r.name,
        }
    }
}

/// One rule: every field that is set must match (`principals`: any entry;
/// `notPrincipals`: none; `resources`: any; `operations`: any). An unset or
/// empty field matches everything, so `{}` matches every request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct KafkaRule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<PrincipalPattern>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<PrincipalPattern>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourcePattern>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<Operation>,
}

/// Kafka's resource pattern types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PatternType {
    /// The exact name; `*` is Kafka's wildcard (any name).
    #[default]
    Literal,
    /// Every name that starts with the given name.
    Prefixed,
}

/// `{type, name, patternType}`, as a Kafka ACL's resource pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourcePattern {
    #[serde(rename = "type")]
    pub resource_type: ResourceType,
    /// For `cluster`, always `kafka-cluster`.
    pub name: String,
    pub pattern_type: PatternType,
}

impl ResourcePattern {
    /// Kafka's matching: same type; `cluster` matches the cluster whatever
    /// its name; LITERAL `*` matches any name, another LITERAL only itself
    /// (case-sensitive); PREFIXED every name that starts with it.
    pub fn matches(&self, resource_type: ResourceType, name: &str) -> bool {
        self.resource_type == resource_type
            && (resource_type == ResourceType::Cluster
                || match self.pattern_type {
                    PatternType::Literal => self.name == "*" || self.name == name,
                    PatternType::Prefixed => name.starts_with(self.name.as_str()),
                })
    }
}

impl fmt::Display for ResourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pattern_type {
            PatternType::Literal => write!(f, "{} {}", self.resource_type, self.name),
            PatternType::Prefixed => write!(f, "{} {}*", self.resource_type, self.name),
        }
    }
}

/// A principal entry of a rule, parsed once (see `docs/kafka-authorization.md`):
/// `*` (anyone, anonymous included), `User:ANONYMOUS`, or a name with an
/// optional `*` at the start or the end, matched against a mesh client's
/// Istio principal (`cluster.local/ns/apps/sa/producer`; a `spiffe://`
/// scheme is dropped) and against an external client's certificate subject
/// (as a distinguished name) and SANs. A `User:` prefix (Kafka's principal
/// string) is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct PrincipalPattern {
    text: String,
    pub(crate) matcher: PrincipalMatcher,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrincipalMatcher {
    /// `*`, `User:*`.
    Any,
    /// `User:ANONYMOUS`.
    Anonymous,
    Name {
        /// Against a SPIFFE principal (scheme removed).
        mesh: StringMatch,
        /// Against each SAN.
        san: StringMatch,
        /// Against the certificate subject.
        subject: DnMatch,
        /// Written as Istio writes a mesh principal (`td/ns/x/sa/y`, or a
        /// pattern with `/ns/` or `/sa/`, without `spiffe://`): it names
        /// mesh identities only, never what an external certificate's SANs
        /// or subject say, since any CA in `caCertificates` may put such a
        /// string in a SAN.
        mesh_only: bool,
    },
}

impl PrincipalPattern {
    /// Parses an entry; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let body = s.strip_prefix("User:").unwrap_or(s);
        if body.trim().is_empty() {
            return Err("empty principal".to_owned());
        }
        let matcher = if body == "*" {
            PrincipalMatcher::Any
        } else if body == "ANONYMOUS" && s.starts_with("User:") {
            PrincipalMatcher::Anonymous
        } else {
            let inner = body.strip_prefix('*').unwrap_or(body);
            let inner = inner.strip_suffix('*').unwrap_or(inner);
            if inner.is_empty()
                || inner.contains('*')
                || (body.starts_with('*') && body.ends_with('*'))
            {
                return Err(format!(
                    "{s:?}: '*' may only be the first or the last character (prefix or suffix match), or the whole entry"
                ));
            }
            let san = StringMatch::parse(body);
            let mesh = StringMatch::parse(body.strip_prefix("spiffe://").unwrap_or(body));
            let subject = match &san {
                StringMatch::Prefix(p) => DnMatch::prefix(p),
                StringMatch::Suffix(x) => DnMatch::suffix(x),
                StringMatch::Exact(e) => DnMatch::exact(e),
                // `*` alone is handled above.
                StringMatch::Presence => DnMatch::exact(body),
            };
            let mesh_only =
                !body.starts_with("spiffe://") && (body.contains("/ns/") || body.contains("/sa/"));
            PrincipalMatcher::Name {
                mesh,
                san,
                subject,
                mesh_only,
            }
        };
        Ok(Self {
            text: s.to_owned(),
            matcher,
        })
    }

    /// The entry as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for PrincipalPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<PrincipalPattern> for String {
    fn from(p: PrincipalPattern) -> String {
        p.text
    }
}

#[derive(Debug, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KafkaAuthorizationPolicySpec {
    #[serde(default)]
    gateways: Option<Vec<String>>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    rules: Option<Vec<RawKafkaRule>>,
}

#[derive(Debug, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawKafkaRule {
    #[serde(default)]
    principals: Option<Vec<String>>,
    #[serde(default)]
    not_principals: Option<Vec<String>>,
    #[serde(default)]
    resources: Option<Vec<RawResource>>,
    #[serde(default)]
    operations: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawResource {
    #[serde(default, rename = "type")]
    resource_type: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    pattern_type: Option<String>,
}

fn kafka_authorization_policy(
    ctx: &mut DocCtx<'_>,
    metadata: ObjectMeta,
    spec: KafkaAuthorizationPolicySpec,
    root_namespace: &str,
) -> Option<KafkaAuthorizationPolicy> {
    let action = match spec.action.as_deref() {
        None | Some("ALLOW") => Some(Action::Allow),
        Some("DENY") => Some(Action::Deny),
        Some(other) => {
            ctx.error(
                Some("spec.action".to_owned()),
                format!(
                    "{other:?} is not an action of a KafkaAuthorizationPolicy; use ALLOW or DENY"
                ),
            );
            None
        }
    };
    let in_root = metadata.namespace == root_namespace;
    let gateways = match spec.gateways {
        None => None,
        Some(list) if list.is_empty() => {
            ctx.error(
                Some("spec.gateways".to_owned()),
                "an empty list is ambiguous: omit gateways to apply the policy to every KafkaGateway in the namespace, or name them",
            );
            None
        }
        Some(list) => {
            let mut refs = Vec::new();
            for (i, g) in list.iter().enumerate() {
                let field = Some(format!("spec.gateways[{i}]"));
                let r = match g.split_once('/') {
                    Some((ns, name)) => {
                        if !in_root {
                            ctx.error(
                                field,
                                format!("{g:?}: a policy applies to KafkaGateways in its own namespace ({}) only; name them without a namespace, or put the policy in the root namespace {root_namespace:?} to reach other namespaces", metadata.namespace),
                            );
                            continue;
                        }
                        KafkaGatewayRef {
                            namespace: Some(ns.to_owned()),
                            name: name.to_owned(),
                        }
                    }
                    None => KafkaGatewayRef {
                        namespace: None,
                        name: g.clone(),
                    },
                };
                if r.namespace.as_deref().is_some_and(|ns| !is_dns_label(ns))
                    || !is_dns_subdomain(&r.name)
                {
                    ctx.error(
                        field,
                        format!("{g:?} is not a KafkaGateway name (name, or namespace/name in the root namespace)"),
                    );
                    continue;
                }
                refs.push(r);
            }
            Some(refs)
        }
    };
    let mut rules = Vec::new();
    for (i, r) in spec.rules.unwrap_or_default().into_iter().enumerate() {
        rules.push(kafka_rule(ctx, &format!("spec.rules[{i}]"), r));
    }
    Some(KafkaAuthorizationPolicy {
        metadata,
        gateways,
        action: action?,
        rules,
        doc: Some(ctx.doc.clone()),
    })
}

fn warn_if_empty<T>(ctx: &mut DocCtx<'_>, path: &str, v: &Option<Vec<T>>) {
    if v.as_ref().is_some_and(Vec::is_empty) {
        ctx.warn(
            Some(path.to_owned()),
            "an empty list matches everything, as if the field were omitted",
        );
    }
}

fn principal_patterns(
    ctx: &mut DocCtx<'_>,
    path: &str,
    v: Option<Vec<String>>,
) -> Vec<PrincipalPattern> {
    warn_if_empty(ctx, path, &v);
    let mut out = Vec::new();
    for (i, s) in v.unwrap_or_default().into_iter().enumerate() {
        let field = format!("{path}[{i}]");
        match PrincipalPattern::parse(&s) {
            Ok(p) => {
                let anonymous_typo = s.eq_ignore_ascii_case("anonymous")
                    || (s.eq_ignore_ascii_case("User:anonymous") && s != "User:ANONYMOUS");
                if anonymous_typo {
                    ctx.warn(
                        Some(field),
                        format!("{s:?} is matched as a certificate name; clients without a certificate are written User:ANONYMOUS"),
                    );
                }
                out.push(p);
            }
            Err(e) => ctx.error(Some(field), e),
        }
    }
    out
}

/// Kafka's legal topic names: letters, digits, `.`, `_`, `-`; at most 249.
fn is_topic_chars(s: &str) -> bool {
    s.len() <= 249
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn resource_pattern(ctx: &mut DocCtx<'_>, path: &str, r: RawResource) -> Option<ResourcePattern> {
    let resource_type = match r.resource_type.as_deref() {
        None => {
            ctx.error(
                Some(format!("{path}.type")),
                "missing: topic, group, transactionalId or cluster",
            );
            return None;
        }
        Some(t) => match t.parse::<ResourceType>() {
            Ok(t) => t,
            Err(e) => {
                ctx.error(Some(format!("{path}.type")), e);
                return None;
            }
        },
    };
    let pattern_type = match r.pattern_type.as_deref() {
        None => PatternType::Literal,
        Some(p) if p.eq_ignore_ascii_case("LITERAL") => PatternType::Literal,
        Some(p) if p.eq_ignore_ascii_case("PREFIXED") => PatternType::Prefixed,
        Some(p) => {
            let hint = if p.eq_ignore_ascii_case("MATCH") || p.eq_ignore_ascii_case("ANY") {
                " (MATCH and ANY are Kafka filters for listing ACLs, not patterns)"
            } else {
                ""
            };
            ctx.error(
                Some(format!("{path}.patternType")),
                format!("{p:?} is not a pattern type; use LITERAL or PREFIXED{hint}"),
            );
            return None;
        }
    };
    let name_field = Some(format!("{path}.name"));
    if resource_type == ResourceType::Cluster {
        if pattern_type == PatternType::Prefixed {
            ctx.error(
                Some(format!("{path}.patternType")),
                "the cluster resource is one resource: use LITERAL (or omit patternType)",
            );
            return None;
        }
        if let Some(n) = r.name.as_deref() {
            if n != ResourceType::CLUSTER_NAME && n != "*" {
                ctx.error(
                    name_field,
                    format!(
                        "{n:?}: the cluster resource is named {:?} (or omit name)",
                        ResourceType::CLUSTER_NAME
                    ),
                );
                return None;
            }
        }
        return Some(ResourcePattern {
            resource_type,
            name: ResourceType::CLUSTER_NAME.to_owned(),
            pattern_type,
        });
    }
    let Some(name) = r.name else {
        ctx.error(
            name_field,
            format!("missing: a {resource_type} name (\"*\" for any)"),
        );
        return None;
    };
    if name.is_empty() {
        ctx.error(name_field, "must not be empty (\"*\" matches any name)");
        return None;
    }
    let glob_hint = || {
        let stem = name.trim_end_matches('*');
        format!("{name:?}: '*' is not a glob; for every name starting with {stem:?} write name: {stem:?} with patternType: PREFIXED, for any name write name: \"*\"")
    };
    match pattern_type {
        PatternType::Prefixed if name == "*" => {
            ctx.error(
                name_field,
                "\"*\" with PREFIXED matches only names that start with '*'; for any name use patternType LITERAL (Kafka's wildcard)",
            );
            return None;
        }
        _ if name != "*" && name.contains('*') => {
            if resource_type == ResourceType::Topic {
                ctx.error(name_field, glob_hint());
                return None;
            }
            ctx.warn(
                name_field,
                format!("{}; as written it matches a literal '*'", glob_hint()),
            );
        }
        _ if resource_type == ResourceType::Topic && name != "*" && !is_topic_chars(&name) => {
            ctx.error(
                name_field,
                format!("{name:?} never matches a topic: Kafka topic names use only letters, digits, '.', '_' and '-' (at most 249)"),
            );
            return None;
        }
        _ => {}
    }
    Some(ResourcePattern {
        resource_type,
        name,
        pattern_type,
    })
}

fn kafka_rule(ctx: &mut DocCtx<'_>, path: &str, r: RawKafkaRule) -> KafkaRule {
    let principals = principal_patterns(ctx, &format!("{path}.principals"), r.principals);
    let not_principals =
        principal_patterns(ctx, &format!("{path}.notPrincipals"), r.not_principals);
    let rp = format!("{path}.resources");
    warn_if_empty(ctx, &rp, &r.resources);
    let mut resources = Vec::new();
    for (i, raw) in r.resources.unwrap_or_default().into_iter().enumerate() {
        if let Some(p) = resource_pattern(ctx, &format!("{rp}[{i}]"), raw) {
            resources.push(p);
        }
    }
    let op_path = format!("{path}.operations");
    warn_if_empty(ctx, &op_path, &r.operations);
    let mut operations = Vec::new();
    for (i, o) in r.operations.unwrap_or_default().iter().enumerate() {
        let field = format!("{op_path}[{i}]");
        match o.parse::<Operation>() {
            Ok(op) => {
                if !resources.is_empty() && !resources.iter().any(|r| r.resource_type.supports(op))
                {
                    let types: Vec<&str> =
                        resources.iter().map(|r| r.resource_type.as_str()).collect();
                    ctx.warn(
                        Some(field),
                        format!("{op} never applies to the rule's resources ({}): Kafka does not define it for them", types.join(", ")),
                    );
                }
                if !operations.contains(&op) {
                    operations.push(op);
                }
            }
            Err(e) => {
                let hint = if o.eq_ignore_ascii_case("ClusterAction")
                    || o.eq_ignore_ascii_case("CLUSTER_ACTION")
                {
                    "; ClusterAction is for broker-to-broker requests, which never pass through the gateway"
                } else if o.to_ascii_lowercase().contains("token") {
                    "; delegation tokens are not supported at the gateway"
                } else {
                    ""
                };
                ctx.error(Some(field), format!("{e}{hint}"));
            }
        }
    }
    KafkaRule {
        principals,
        not_principals,
        resources,
        operations,
    }
}

// ================================================================ loading

/// The Kafka kinds: parses one document of `kind` and adds it to `config`.
/// Returns the duplicate-check key, or `None` if the document had errors.
pub(super) fn load(
    ctx: &mut DocCtx<'_>,
    kind: &str,
    value: Value,
    config: &mut Config,
) -> Option<(String, String, String)> {
    let before = ctx.error_count();
    let meta = match kind {
        "KafkaGateway" => {
            let (meta, spec) = typed::<KafkaGatewaySpec>(ctx, value)?;
            check_meta(ctx, &meta);
            let Some(spec) = spec else {
                ctx.error(
                    Some("spec".to_owned()),
                    "missing: a KafkaGateway needs port, tls, bootstrapHost, brokerHostTemplate and upstream",
                );
                return None;
            };
            let g = kafka_gateway(ctx, meta.clone(), spec);
            if ctx.error_count() > before {
                return None;
            }
            config.kafka_gateways.push(g?);
            meta
        }
        "KafkaAuthorizationPolicy" => {
            let (meta, spec) = typed::<KafkaAuthorizationPolicySpec>(ctx, value)?;
            check_meta(ctx, &meta);
            let root = config.settings.root_namespace.clone();
            let p = kafka_authorization_policy(ctx, meta.clone(), spec.unwrap_or_default(), &root);
            if ctx.error_count() > before {
                return None;
            }
            config.kafka_authorization_policies.push(p?);
            meta
        }
        _ => return None,
    };
    Some((kind.to_owned(), meta.namespace, meta.name))
}

fn located(doc: &Option<DocumentRef>, field: &str, message: String) -> Option<ConfigError> {
    doc.as_ref().map(|d| ConfigError {
        document: Some(d.clone()),
        file: d.file.clone(),
        field: Some(field.to_owned()),
        message,
    })
}

fn selector_text(s: &BTreeMap<String, String>) -> String {
    if s.is_empty() {
        "{} (every instance)".to_owned()
    } else {
        let kv: Vec<String> = s.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{{{}}}", kv.join(", "))
    }
}

/// Whether some set of labels satisfies both selectors.
fn compatible(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> bool {
    a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
}

/// Checks across documents, once all are loaded. Errors: two KafkaGateways
/// on one port with the same selector (one instance cannot listen twice).
/// Warnings: selectors an instance could satisfy both of on one port (two
/// KafkaGateways, or a Gateway server and a KafkaGateway: such an instance
/// serves the KafkaGateway and ignores the server), policies that name no
/// KafkaGateway or whose namespace has none.
pub(super) fn cross_check(
    config: &Config,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) {
    let gws = &config.kafka_gateways;
    for (i, g) in gws.iter().enumerate() {
        for h in &gws[..i] {
            if g.port != h.port {
                continue;
            }
            let at = h
                .doc
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            if g.selector == h.selector {
                errors.extend(located(
                    &g.doc,
                    "spec.port",
                    format!(
                        "port {} is already the port of KafkaGateway {}{at} with the same selector {}: a gateway instance opens one listener per port; use another port or selector",
                        g.port,
                        h.key(),
                        selector_text(&g.selector)
                    ),
                ));
            } else if compatible(&g.selector, &h.selector) {
                warnings.extend(located(
                    &g.doc,
                    "spec.selector",
                    format!(
                        "a gateway instance labelled for both {} and KafkaGateway {}{at} ({}) would need two listeners on port {}",
                        selector_text(&g.selector),
                        h.key(),
                        selector_text(&h.selector),
                        g.port
                    ),
                ));
            }
        }
    }
    for g in gws {
        let at = g
            .doc
            .as_ref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        for gw in &config.gateways {
            if !compatible(&g.selector, &gw.selector) {
                continue;
            }
            for (i, s) in gw.servers.iter().enumerate() {
                if s.port.number != g.port {
                    continue;
                }
                let instance = if gw.selector == g.selector {
                    format!("selected by {}", selector_text(&g.selector))
                } else {
                    format!(
                        "selected by both {} and {}",
                        selector_text(&gw.selector),
                        selector_text(&g.selector)
                    )
                };
                warnings.extend(located(
                    &gw.doc,
                    &format!("spec.servers[{i}].port"),
                    format!(
                        "port {} is also the port of KafkaGateway {}{at}: a gateway instance {instance} serves the KafkaGateway on this port and ignores this server (reported in /config_dump problems); use another port, or selectors that do not both match",
                        g.port,
                        g.key(),
                    ),
                ));
            }
        }
    }
    let root = config.settings.root_namespace.as_str();
    for p in &config.kafka_authorization_policies {
        let ns = p.metadata.namespace.as_str();
        match &p.gateways {
            None if ns != root && !gws.iter().any(|g| g.metadata.namespace == ns) => {
                warnings.extend(located(
                    &p.doc,
                    "metadata.namespace",
                    format!("no KafkaGateway in namespace {ns:?}: the policy applies to none (policies apply to KafkaGateways in their own namespace, or to all from the root namespace {root:?})"),
                ));
            }
            None => {}
            Some(refs) => {
                for (i, r) in refs.iter().enumerate() {
                    let found = gws.iter().any(|g| match &r.namespace {
                        Some(rns) => g.metadata.namespace == *rns && g.metadata.name == r.name,
                        None => {
                            g.metadata.name == r.name && (ns == root || g.metadata.namespace == ns)
                        }
                    });
                    if !found {
                        let name = String::from(r.clone());
                        warnings.extend(located(
                            &p.doc,
                            &format!("spec.gateways[{i}]"),
                            format!(
                                "no KafkaGateway {name:?} in {}: this entry applies to nothing",
                                if r.namespace.is_some() || ns == root {
                                    "the configuration".to_owned()
                                } else {
                                    format!("namespace {ns:?}")
                                }
                            ),
                        ));
                    }
                }
            }
        }
    }
}

/// JSON schemas of the Kafka kinds' `spec` (for weir's CRDs).
#[cfg(feature = "schema")]
pub(crate) fn spec_schema(
    kind: &str,
    g: &mut schemars::SchemaGenerator,
) -> Option<schemars::Schema> {
    match kind {
        "KafkaGateway" => Some(g.root_schema_for::<KafkaGatewaySpec>()),
        "KafkaAuthorizationPolicy" => Some(g.root_schema_for::<KafkaAuthorizationPolicySpec>()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MeshSettings, SourceFile};

    fn load(yaml: &str) -> Result<Config, Vec<ConfigError>> {
        Config::from_sources(&[SourceFile::new("k.yaml", yaml)], MeshSettings::default())
            .map_err(|e| e.0)
    }

    fn errors(yaml: &str) -> Vec<ConfigError> {
        match load(yaml) {
            Ok(_) => panic!("expected errors for:\n{yaml}"),
            Err(e) => e,
        }
    }

    /// The one error's field and message.
    #[track_caller]
    fn one(yaml: &str) -> (String, String) {
        let e = errors(yaml);
        assert_eq!(e.len(), 1, "{e:#?}");
        (e[0].field.clone().unwrap_or_default(), e[0].message.clone())
    }

    const GW: &str = "apiVersion: weir.dev/v1alpha1\nkind: KafkaGateway\nmetadata: {name: external, namespace: kafka}\nspec:\n  selector: {istio: ingressgateway}\n  port: 9094\n  tls: {mode: SIMPLE, serverCertificate: /etc/weir/tls/tls.crt, privateKey: /etc/weir/tls/tls.key}\n  bootstrapHost: kafka.example.com\n  brokerHostTemplate: \"b{id}-kafka.example.com\"\n  upstream: {bootstrapServers: [\"kafka-0.kafka.svc.cluster.local:9092\", \"198.18.0.10:9092\", \"[fd00::1]:9092\"]}\n";

    fn gw_with(from: &str, to: &str) -> String {
        assert!(GW.contains(from), "{from}");
        GW.replacen(from, to, 1)
    }

    #[test]
    fn gateway_loads_with_defaults() {
        let c = load(GW).unwrap();
        let g = &c.kafka_gateways[0];
        assert_eq!(g.port, 9094);
        assert_eq!(g.advertised_port, 9094, "advertised as listened by default");
        assert_eq!(g.tls.mode, KafkaTlsMode::Simple);
        assert_eq!(g.tls.ca_certificates, None);
        assert_eq!(g.bootstrap_host, "kafka.example.com");
        assert_eq!(g.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);
        assert_eq!(g.broker_host_template.host(3), "b3-kafka.example.com");
        let servers: Vec<String> = g
            .upstream
            .bootstrap_servers
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            servers,
            [
                "kafka-0.kafka.svc.cluster.local:9092",
                "198.18.0.10:9092",
                "[fd00::1]:9092"
            ]
        );
        assert!(g.selects(
            &[
                ("istio".to_owned(), "ingressgateway".to_owned()),
                ("x".to_owned(), "y".to_owned())
            ]
            .into()
        ));
        assert!(!g.selects(&BTreeMap::new()));
        assert_eq!(
            c.summary().iter().find(|(k, _)| *k == "KafkaGateway"),
            Some(&("KafkaGateway", 1))
        );
        let json = serde_json::to_value(&c.kafka_gateways).unwrap();
        assert_eq!(json[0]["brokerHostTemplate"], "b{id}-kafka.example.com");
        assert_eq!(json[0]["upstream"]["bootstrapServers"][2], "[fd00::1]:9092");
    }

    #[test]
    fn gateway_advertises_another_port_when_told() {
        let c = load(&gw_with(
            "port: 9094",
            "port: 19094\n  advertisedPort: 9094",
        ))
        .unwrap();
        let g = &c.kafka_gateways[0];
        assert_eq!((g.port, g.advertised_port), (19094, 9094));
        let json = serde_json::to_value(&c.kafka_gateways).unwrap();
        assert_eq!(json[0]["advertisedPort"], 9094);
    }

    #[test]
    fn gateway_field_errors() {
        let cases = [
            ("port: 9094", "port: 70000", "spec.port", "70000 is not a port number"),
            ("port: 9094", "port: 0", "spec.port", "not a port number"),
            ("port: 9094", "port: 9094\n  advertisedPort: 0", "spec.advertisedPort", "0 is not a port number"),
            ("port: 9094", "port: 9094\n  advertisedPort: 65536", "spec.advertisedPort", "65536 is not a port number"),
            ("  port: 9094\n", "", "spec.port", "missing"),
            ("\"b{id}-kafka.example.com\"", "\"b-kafka.example.com\"", "spec.brokerHostTemplate", "exactly once (found 0)"),
            ("\"b{id}-kafka.example.com\"", "\"b{id}-{id}.example.com\"", "spec.brokerHostTemplate", "exactly once (found 2)"),
            ("\"b{id}-kafka.example.com\"", "\"b{id}_x.example.com\"", "spec.brokerHostTemplate", "does not yield a DNS name"),
            ("\"b{id}-kafka.example.com\"", "\"*.b{id}.example.com\"", "spec.brokerHostTemplate", "does not yield a DNS name"),
            ("\"b{id}-kafka.example.com\"", "\"b{id}{x}.example.com\"", "spec.brokerHostTemplate", "only placeholder"),
            ("bootstrapHost: kafka.example.com", "bootstrapHost: b7-kafka.example.com", "spec.bootstrapHost", "also the host of broker 7"),
            ("bootstrapHost: kafka.example.com", "bootstrapHost: \"*.example.com\"", "spec.bootstrapHost", "not a DNS host name"),
            ("bootstrapHost: kafka.example.com", "bootstrapHost: 198.51.100.7", "spec.bootstrapHost", "no SNI for an IP address"),
            ("\"b{id}-kafka.example.com\"", "\"10.0.0.{id}\"", "spec.brokerHostTemplate", "yields IP addresses"),
            ("\"198.18.0.10:9092\"", "\"fd00::1:9092\"", "spec.upstream.bootstrapServers[1]", "must be in brackets"),
            ("\"198.18.0.10:9092\"", "\"198.18.0.10\"", "spec.upstream.bootstrapServers[1]", "not host:port"),
            ("\"198.18.0.10:9092\"", "\"198.18.0.10:0\"", "spec.upstream.bootstrapServers[1]", "not a port number"),
            ("\"198.18.0.10:9092\"", "\"bad_host:9092\"", "spec.upstream.bootstrapServers[1]", "neither an IP address nor a DNS name"),
            ("\"[fd00::1]:9092\"", "\"[fd00::zz]:9092\"", "spec.upstream.bootstrapServers[2]", "not an IPv6 address"),
            ("mode: SIMPLE", "mode: PASSTHROUGH", "spec.tls.mode", "always terminates TLS"),
            ("mode: SIMPLE", "mode: ISTIO_MUTUAL", "spec.tls.mode", "use SIMPLE or MUTUAL"),
            ("mode: SIMPLE", "mode: MUTUAL", "spec.tls.caCertificates", "MUTUAL needs caCertificates"),
            (", privateKey: /etc/weir/tls/tls.key", "", "spec.tls.privateKey", "missing"),
            ("serverCertificate: /etc/weir/tls/tls.crt", "serverCertificate: \"\"", "spec.tls.serverCertificate", "must not be empty"),
            ("mode: SIMPLE", "credentialName: kafka-tls, mode: SIMPLE", "spec.tls.credentialName", "mounted files only"),
            ("  port: 9094\n", "  port: 9094\n  maxFrameBytes: 0\n", "spec.maxFrameBytes", "out of range"),
            ("  port: 9094\n", "  port: 9094\n  maxFrameBytes: 4294967296\n", "spec.maxFrameBytes", "out of range"),
            ("  port: 9094\n", "  port: 9094\n  listeners: 2\n", "spec.listeners", "unknown field \"listeners\""),
            ("upstream: {", "upstream: {tls: true, ", "spec.upstream.tls", "unknown field \"tls\""),
            ("tls: {", "tls: {minProtocolVersion: TLSV1_9, ", "spec.tls.minProtocolVersion", "not a TLS version"),
            ("tls: {", "tls: {maxProtocolVersion: TLSV1_1, ", "spec.tls.maxProtocolVersion", "TLS 1.2 and 1.3 only"),
            ("tls: {", "tls: {minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2, ", "spec.tls.minProtocolVersion", "above maxProtocolVersion"),
            ("[\"kafka-0.kafka.svc.cluster.local:9092\", \"198.18.0.10:9092\", \"[fd00::1]:9092\"]", "[]", "spec.upstream.bootstrapServers", "empty"),
        ];
        for (from, to, field, msg) in cases {
            let (f, m) = one(&gw_with(from, to));
            assert_eq!(f, field, "{to}: {m}");
            assert!(m.contains(msg), "{to}: {m}");
        }
        let (f, _) = one("apiVersion: weir.dev/v1alpha1\nkind: KafkaGateway\nmetadata: {name: g, namespace: kafka}\n");
        assert_eq!(f, "spec");
        // Every missing field at once.
        let e = errors("apiVersion: weir.dev/v1alpha1\nkind: KafkaGateway\nmetadata: {name: g, namespace: kafka}\nspec: {}\n");
        let fields: Vec<_> = e
            .iter()
            .map(|e| e.field.clone().unwrap_or_default())
            .collect();
        for f in [
            "spec.port",
            "spec.tls",
            "spec.bootstrapHost",
            "spec.brokerHostTemplate",
            "spec.upstream.bootstrapServers",
        ] {
            assert!(fields.contains(&f.to_owned()), "{f} in {fields:?}");
        }
    }

    #[test]
    fn gateway_mutual_and_limits() {
        let c = load(
            &gw_with(
                "mode: SIMPLE",
                "mode: MUTUAL, caCertificates: /etc/weir/tls/ca.crt",
            )
            .replacen(
                "  port: 9094\n",
                "  port: 9094\n  maxFrameBytes: 1048576\n",
                1,
            ),
        )
        .unwrap();
        let g = &c.kafka_gateways[0];
        assert_eq!(g.tls.mode, KafkaTlsMode::Mutual);
        assert_eq!(
            g.tls.ca_certificates.as_deref(),
            Some(std::path::Path::new("/etc/weir/tls/ca.crt"))
        );
        assert_eq!(g.max_frame_bytes, 1 << 20);
        // caCertificates with SIMPLE: a warning, and not used.
        let c = load(&gw_with(
            "mode: SIMPLE",
            "mode: SIMPLE, caCertificates: /ca.crt",
        ))
        .unwrap();
        assert_eq!(c.kafka_gateways[0].tls.ca_certificates, None);
        assert_eq!(
            c.warnings[0].field.as_deref(),
            Some("spec.tls.caCertificates")
        );
    }

    #[test]
    fn template_fits_the_longest_broker_id() {
        let label = "a".repeat(53);
        assert!(BrokerHostTemplate::parse(&format!("{label}{{id}}.example.com")).is_ok());
        let e = BrokerHostTemplate::parse(&format!("a{label}{{id}}.example.com")).unwrap_err();
        assert!(e.contains("too long for 10-digit broker ids"), "{e}");
        let long = format!("b{{id}}.{}", vec!["x".repeat(60); 4].join("."));
        assert!(
            BrokerHostTemplate::parse(&long).is_err(),
            "over 253 with 10 digits"
        );
    }

    #[test]
    fn template_parses_sni() {
        let t = BrokerHostTemplate::parse("B{id}-Kafka.Example.com").unwrap();
        assert_eq!(t.to_string(), "b{id}-kafka.example.com");
        assert_eq!(t.broker_id("b12-kafka.example.com"), Some(12));
        assert_eq!(t.broker_id("B0-KAFKA.example.COM"), Some(0));
        for bad in [
            "b-kafka.example.com",
            "b01-kafka.example.com",
            "bx-kafka.example.com",
            "b1-kafka.example.org",
            "b99999999999-kafka.example.com",
            "kafka.example.com",
            "",
        ] {
            assert_eq!(t.broker_id(bad), None, "{bad}");
        }
        let t = BrokerHostTemplate::parse("{id}.brokers.example.com").unwrap();
        assert_eq!(t.host(2147483647), "2147483647.brokers.example.com");
        assert_eq!(
            t.broker_id("2147483647.brokers.example.com"),
            Some(i32::MAX)
        );
        // The id may be followed by digits: prefix and suffix are fixed.
        let t = BrokerHostTemplate::parse("b{id}0.example.com").unwrap();
        assert_eq!(t.broker_id(&t.host(10)), Some(10));
    }

    #[test]
    fn same_port_and_selector_is_an_error() {
        let two = format!(
            "{GW}---\n{}",
            GW.replace(
                "name: external, namespace: kafka",
                "name: second, namespace: other"
            )
        );
        let e = errors(&two);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].field.as_deref(), Some("spec.port"));
        assert_eq!(
            e[0].document.as_ref().unwrap().name.as_deref(),
            Some("other/second")
        );
        assert!(
            e[0].message
                .contains("KafkaGateway kafka/external (k.yaml: document 1"),
            "{}",
            e[0].message
        );
        // Another port: fine. An overlapping selector on the same port: a warning.
        assert!(load(&format!(
            "{GW}---\n{}",
            GW.replace("external", "second").replace("9094", "9095")
        ))
        .is_ok());
        let c = load(&format!(
            "{GW}---\n{}",
            GW.replace("external", "second").replace(
                "{istio: ingressgateway}",
                "{istio: ingressgateway, zone: a}"
            )
        ))
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
        assert_eq!(c.warnings[0].field.as_deref(), Some("spec.selector"));
        // Disjoint selectors: nothing to say.
        let c = load(&format!(
            "{GW}---\n{}",
            GW.replace("external", "second")
                .replace("{istio: ingressgateway}", "{istio: other}")
        ))
        .unwrap();
        assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    }

    #[test]
    fn a_gateway_server_on_a_kafka_gateway_port_is_a_warning_naming_both() {
        let clash = |selector: &str, port: u16| {
            format!(
                "{GW}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: clash, namespace: other}}\nspec:\n  selector: {selector}\n  servers:\n  - port: {{number: 443, name: tls, protocol: TLS}}\n    hosts: ['*']\n    tls: {{mode: PASSTHROUGH}}\n  - port: {{number: {port}, name: tls-clash, protocol: TLS}}\n    hosts: ['*.other.com']\n    tls: {{mode: PASSTHROUGH}}\n"
            )
        };
        for selector in [
            "{istio: ingressgateway}",
            "{}",
            "{istio: ingressgateway, zone: a}",
        ] {
            let c = load(&clash(selector, 9094)).unwrap();
            assert_eq!(c.warnings.len(), 1, "{selector}: {:#?}", c.warnings);
            let w = &c.warnings[0];
            assert_eq!(w.field.as_deref(), Some("spec.servers[1].port"));
            assert_eq!(
                w.document.as_ref().unwrap().name.as_deref(),
                Some("other/clash")
            );
            assert!(
                w.message.starts_with(
                    "port 9094 is also the port of KafkaGateway kafka/external (k.yaml: document 1"
                ),
                "{}",
                w.message
            );
            assert!(w.message.contains("ignores this server"), "{}", w.message);
        }
        // Another port, or selectors no instance has both of: nothing.
        assert!(load(&clash("{istio: ingressgateway}", 9095))
            .unwrap()
            .warnings
            .is_empty());
        assert!(load(&clash("{istio: other}", 9094))
            .unwrap()
            .warnings
            .is_empty());
    }

    fn policy(ns: &str, spec: &str) -> String {
        format!("---\napiVersion: weir.dev/v1alpha1\nkind: KafkaAuthorizationPolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec: {spec}\n")
    }

    #[test]
    fn policy_loads() {
        let c = load(&format!(
            "{GW}{}",
            policy(
                "kafka",
                "{gateways: [external], action: DENY, rules: [{principals: [\"cluster.local/ns/apps/sa/producer\", \"User:CN=billing,O=Example\", \"*\"], notPrincipals: [\"User:ANONYMOUS\"], resources: [{type: topic, name: orders., patternType: PREFIXED}, {type: TRANSACTIONAL_ID, name: \"*\"}, {type: cluster}], operations: [WRITE, describe_configs, Write]}]}"
            )
        ))
        .unwrap();
        assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
        let p = &c.kafka_authorization_policies[0];
        assert_eq!(p.action, Action::Deny);
        let r = &p.rules[0];
        assert_eq!(r.principals.len(), 3);
        assert_eq!(r.principals[2].matcher, PrincipalMatcher::Any);
        assert_eq!(r.not_principals[0].matcher, PrincipalMatcher::Anonymous);
        assert_eq!(r.operations, [Operation::Write, Operation::DescribeConfigs]);
        assert_eq!(r.resources[0].pattern_type, PatternType::Prefixed);
        assert_eq!(r.resources[1].resource_type, ResourceType::TransactionalId);
        assert_eq!(r.resources[2].name, "kafka-cluster");
        assert!(p.applies_to("kafka", "external", "istio-system"));
        assert!(!p.applies_to("kafka", "internal", "istio-system"));
        let json = serde_json::to_value(p).unwrap();
        assert_eq!(
            json["rules"][0]["principals"][1],
            "User:CN=billing,O=Example"
        );
        assert_eq!(json["rules"][0]["resources"][0]["patternType"], "PREFIXED");
        assert_eq!(json["action"], "DENY");
        assert_eq!(
            c.summary()
                .iter()
                .find(|(k, _)| *k == "KafkaAuthorizationPolicy"),
            Some(&("KafkaAuthorizationPolicy", 1))
        );
    }

    #[test]
    fn policy_field_errors() {
        let cases = [
            ("{action: CUSTOM}", "spec.action", "use ALLOW or DENY"),
            ("{gateways: []}", "spec.gateways", "ambiguous"),
            (
                "{gateways: [other/external]}",
                "spec.gateways[0]",
                "own namespace",
            ),
            (
                "{gateways: [Bad_Name]}",
                "spec.gateways[0]",
                "not a KafkaGateway name",
            ),
            (
                "{rules: [{principals: [\"a*b\"]}]}",
                "spec.rules[0].principals[0]",
                "first or the last",
            ),
            (
                "{rules: [{principals: [\"*a*\"]}]}",
                "spec.rules[0].principals[0]",
                "first or the last",
            ),
            (
                "{rules: [{notPrincipals: [\"User:\"]}]}",
                "spec.rules[0].notPrincipals[0]",
                "empty principal",
            ),
            (
                "{rules: [{operations: [Fly]}]}",
                "spec.rules[0].operations[0]",
                "unknown Kafka operation \"Fly\"",
            ),
            (
                "{rules: [{operations: [ClusterAction]}]}",
                "spec.rules[0].operations[0]",
                "broker-to-broker",
            ),
            (
                "{rules: [{resources: [{type: queue, name: x}]}]}",
                "spec.rules[0].resources[0].type",
                "unknown Kafka resource type",
            ),
            (
                "{rules: [{resources: [{name: x}]}]}",
                "spec.rules[0].resources[0].type",
                "missing",
            ),
            (
                "{rules: [{resources: [{type: topic}]}]}",
                "spec.rules[0].resources[0].name",
                "missing",
            ),
            (
                "{rules: [{resources: [{type: topic, name: \"\"}]}]}",
                "spec.rules[0].resources[0].name",
                "must not be empty",
            ),
            (
                "{rules: [{resources: [{type: topic, name: \"orders.*\"}]}]}",
                "spec.rules[0].resources[0].name",
                "not a glob",
            ),
            (
                "{rules: [{resources: [{type: topic, name: \"orders/eu\"}]}]}",
                "spec.rules[0].resources[0].name",
                "never matches a topic",
            ),
            (
                "{rules: [{resources: [{type: topic, name: \"*\", patternType: PREFIXED}]}]}",
                "spec.rules[0].resources[0].name",
                "LITERAL",
            ),
            (
                "{rules: [{resources: [{type: topic, name: x, patternType: MATCH}]}]}",
                "spec.rules[0].resources[0].patternType",
                "filters",
            ),
            (
                "{rules: [{resources: [{type: cluster, name: prod}]}]}",
                "spec.rules[0].resources[0].name",
                "kafka-cluster",
            ),
            (
                "{rules: [{resources: [{type: cluster, patternType: PREFIXED}]}]}",
                "spec.rules[0].resources[0].patternType",
                "one resource",
            ),
            (
                "{rules: [{resources: [{type: topic, name: x, pattern: LITERAL}]}]}",
                "spec.rules[0].resources[0].pattern",
                "unknown field \"pattern\"",
            ),
            (
                "{rules: [{from: [{source: {principals: [a]}}]}]}",
                "spec.rules[0].from",
                "unknown field \"from\"",
            ),
            (
                "{selector: {matchLabels: {a: b}}}",
                "spec.selector",
                "unknown field \"selector\"",
            ),
        ];
        for (spec, field, msg) in cases {
            let (f, m) = one(&format!("{GW}{}", policy("kafka", spec)));
            assert_eq!(f, field, "{spec}: {m}");
            assert!(m.contains(msg), "{spec}: {m}");
        }
    }

    #[test]
    fn policy_warnings() {
        let warn = |yaml: &str| -> Vec<(String, String)> {
            load(yaml)
                .unwrap()
                .warnings
                .iter()
                .map(|w| (w.field.clone().unwrap_or_default(), w.message.clone()))
                .collect()
        };
        let w = warn(&format!("{GW}{}", policy("kafka", "{rules: [{resources: [{type: topic, name: t}], operations: [IdempotentWrite, Write]}]}")));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].0, "spec.rules[0].operations[0]");
        // Group configs (Kafka 3.8, KIP-848): defined for groups, no warning;
        // IdempotentWrite is not.
        let w = warn(&format!("{GW}{}", policy("kafka", "{rules: [{resources: [{type: group, name: g}], operations: [DescribeConfigs, AlterConfigs, IdempotentWrite]}]}")));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].0, "spec.rules[0].operations[2]");
        let w = warn(&format!(
            "{GW}{}",
            policy("kafka", "{rules: [{operations: []}]}")
        ));
        assert!(w[0].1.contains("matches everything"), "{w:?}");
        let w = warn(&format!(
            "{GW}{}",
            policy("kafka", "{rules: [{principals: [anonymous]}]}")
        ));
        assert!(w[0].1.contains("User:ANONYMOUS"), "{w:?}");
        let w = warn(&format!(
            "{GW}{}",
            policy(
                "kafka",
                "{rules: [{resources: [{type: group, name: \"app-*\"}]}]}"
            )
        ));
        assert!(w[0].1.contains("PREFIXED"), "{w:?}");
        // References to gateways that do not exist.
        let w = warn(&format!(
            "{GW}{}",
            policy("kafka", "{gateways: [internal]}")
        ));
        assert_eq!(w[0].0, "spec.gateways[0]");
        let w = warn(&format!("{GW}{}", policy("apps", "{}")));
        assert_eq!(w[0].0, "metadata.namespace");
        // Root namespace: namespace/name entries allowed and checked.
        assert!(warn(&format!(
            "{GW}{}",
            policy("istio-system", "{gateways: [kafka/external, external]}")
        ))
        .is_empty());
        let w = warn(&format!(
            "{GW}{}",
            policy("istio-system", "{gateways: [kafka/nope]}")
        ));
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn root_namespace_references() {
        let c = load(&format!(
            "{GW}{}{}",
            policy("istio-system", "{gateways: [external]}").replace("name: p,", "name: bare,"),
            policy("istio-system", "{gateways: [kafka/external]}")
        ))
        .unwrap();
        let [bare, full] = &c.kafka_authorization_policies[..] else {
            panic!()
        };
        assert!(bare.applies_to("kafka", "external", "istio-system"));
        assert!(bare.applies_to("other", "external", "istio-system"));
        assert!(!bare.applies_to("kafka", "internal", "istio-system"));
        assert!(full.applies_to("kafka", "external", "istio-system"));
        assert!(!full.applies_to("other", "external", "istio-system"));
    }

    #[test]
    fn resource_patterns_follow_kafka() {
        let p = |t, n: &str, pt| ResourcePattern {
            resource_type: t,
            name: n.to_owned(),
            pattern_type: pt,
        };
        use PatternType::*;
        use ResourceType::*;
        assert!(p(Topic, "orders", Literal).matches(Topic, "orders"));
        assert!(!p(Topic, "orders", Literal).matches(Topic, "orders.eu"));
        assert!(!p(Topic, "orders", Literal).matches(Topic, "Orders"));
        assert!(!p(Topic, "orders", Literal).matches(Group, "orders"));
        assert!(p(Topic, "*", Literal).matches(Topic, "anything"));
        assert!(p(Topic, "orders.", Prefixed).matches(Topic, "orders.eu"));
        assert!(p(Topic, "orders.", Prefixed).matches(Topic, "orders."));
        assert!(!p(Topic, "orders.", Prefixed).matches(Topic, "orders"));
        assert!(p(Cluster, "kafka-cluster", Literal).matches(Cluster, ""));
        assert!(p(Cluster, "kafka-cluster", Literal).matches(Cluster, "kafka-cluster"));
    }
}
