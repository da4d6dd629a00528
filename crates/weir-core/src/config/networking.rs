//! Istio's `networking.istio.io` kinds as a gateway uses them: `Gateway`,
//! `VirtualService` (`tls` and `tcp` routes), `ServiceEntry` and
//! `DestinationRule` (subsets), accepted unchanged at `v1`, `v1beta1` and
//! `v1alpha3`; the raw YAML shapes (strict: unknown fields are errors) and the
//! validated forms.
//!
//! What an L4 gateway cannot do is refused with a message naming the field
//! (HTTP servers, Kubernetes-Secret credentials, certificate revocation
//! lists), or accepted with a warning where Istio users commonly set it and
//! ignoring it is safe (`http` routes, upstream TLS settings, cipher suites).
//!
//! Destination resolution ([`Config::resolve_destination`]) is here too: a
//! route's destination host and port become the endpoints to connect to.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use super::load::{check_meta, typed, DocCtx};
use super::meta::ObjectMeta;
use super::service::{Service, ServiceSpec};
use super::workload::Workload;
use super::{Config, ConfigError, DocumentRef};
use crate::spiffe::SpiffeId;

/// Kubernetes' default cluster domain: `name.ns.svc.cluster.local`.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

// ================================================================ host names

/// A host name pattern as Istio writes them in `hosts` and `sniHosts`: an
/// exact DNS name, a wildcard `*.example.com` (any name ending in
/// `.example.com`), or `*` (anything). Compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub enum HostPattern {
    /// `*`
    Any,
    /// `*.suffix`: the suffix is kept with its leading dot (`.example.com`).
    Wildcard(String),
    Exact(String),
}

impl HostPattern {
    /// Parses and lower-cases a pattern; `None` if it is not one (empty, a
    /// `*` elsewhere than as the whole first label, spaces, ...).
    pub fn parse(s: &str) -> Option<HostPattern> {
        let s = s.trim_end_matches('.').to_ascii_lowercase();
        if s == "*" {
            return Some(HostPattern::Any);
        }
        let (wild, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s.as_str()),
        };
        let ok = !rest.is_empty()
            && rest.len() <= 253
            && rest.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !ok {
            return None;
        }
        Some(if wild {
            HostPattern::Wildcard(format!(".{rest}"))
        } else {
            HostPattern::Exact(rest.to_owned())
        })
    }

    /// Whether `name` (a concrete host name, e.g. a TLS SNI) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        match self {
            HostPattern::Any => true,
            HostPattern::Wildcard(suffix) => {
                name.len() > suffix.len()
                    && name
                        .get(name.len() - suffix.len()..)
                        .is_some_and(|t| t.eq_ignore_ascii_case(suffix))
            }
            HostPattern::Exact(e) => e.eq_ignore_ascii_case(name),
        }
    }

    /// Whether some name matches both patterns (Istio's host intersection,
    /// used to bind VirtualServices to Gateway servers).
    pub fn intersects(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Any, _) | (_, HostPattern::Any) => true,
            (HostPattern::Exact(a), b) => b.matches(a),
            (a, HostPattern::Exact(b)) => a.matches(b),
            (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => {
                a.ends_with(b.as_str()) || b.ends_with(a.as_str())
            }
        }
    }

    /// Whether every name `self` matches is matched by `other` (Istio's
    /// `SubsetOf`: an SNI host must be one of a VirtualService's hosts).
    pub fn subset_of(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (_, HostPattern::Any) => true,
            (HostPattern::Any, _) => false,
            (HostPattern::Exact(a), b) => b.matches(a),
            (HostPattern::Wildcard(_), HostPattern::Exact(_)) => false,
            (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => a.ends_with(b.as_str()),
        }
    }

    /// How specific a match is, for choosing between several that match
    /// (Envoy's rule: an exact name beats any wildcard, a longer wildcard
    /// suffix beats a shorter one, `*` comes last).
    pub fn specificity(&self) -> usize {
        match self {
            HostPattern::Any => 0,
            HostPattern::Wildcard(s) => 1 + s.len(),
            HostPattern::Exact(_) => usize::MAX,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
            HostPattern::Exact(e) => f.write_str(e),
        }
    }
}

impl From<HostPattern> for String {
    fn from(h: HostPattern) -> String {
        h.to_string()
    }
}

// ================================================================ Gateway

/// An Istio `Gateway`: the listeners that gateway instances whose labels
/// match [`Gateway::selector`] open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gateway {
    pub metadata: ObjectMeta,
    /// `spec.selector`: labels a gateway instance must all have to serve
    /// this Gateway (`weir gateway --labels`). Empty selects every instance.
    pub selector: BTreeMap<String, String>,
    pub servers: Vec<Server>,
    #[serde(skip)]
    pub(crate) doc: Option<DocumentRef>,
}

impl Gateway {
    /// Whether a gateway instance with `labels` serves this Gateway.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// One `spec.servers[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Server {
    pub port: ServerPort,
    /// `hosts`: which names this server accepts, and from which namespaces
    /// VirtualServices may bind to them.
    pub hosts: Vec<GatewayHost>,
    /// What the server does with TLS; `None` for a plain TCP server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Server {
    /// Whether this is a `tls.mode: PASSTHROUGH` server, which Istio routes
    /// by `tls` routes (SNI) only, never by `tcp` routes.
    pub fn is_passthrough(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.mode == TlsMode::Passthrough)
    }

    /// Whether VirtualService `vs` may attach to this server of a Gateway in
    /// `gateway_namespace` (as Istio binds them): one of the server's hosts
    /// admits the VirtualService's namespace and intersects one of its hosts.
    /// Whether `vs` names the Gateway is asked separately
    /// ([`VirtualService::binds`]).
    pub fn admits(&self, vs: &VirtualService, gateway_namespace: &str) -> bool {
        self.hosts.iter().any(|h| {
            h.admits_namespace(&vs.metadata.namespace, gateway_namespace)
                && vs.hosts.iter().any(|vh| vh.intersects(&h.host))
        })
    }

    /// The host entry that best matches `sni` (`None` = no SNI, which only
    /// `*` matches), with its specificity.
    pub fn best_host(&self, sni: Option<&str>) -> Option<(&GatewayHost, usize)> {
        self.hosts
            .iter()
            .filter(|h| match sni {
                Some(s) => h.host.matches(s),
                None => h.host == HostPattern::Any,
            })
            .map(|h| (h, h.host.specificity()))
            .max_by_key(|(_, s)| *s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerPort {
    pub number: u16,
    pub name: String,
    pub protocol: ServerProtocol,
}

/// The protocols a weir gateway carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerProtocol {
    /// `TLS` (and `HTTPS`, treated as TLS: weir does not look inside HTTP).
    Tls,
    /// `TCP` (and `MONGO`, `MYSQL`, ...: opaque TCP).
    Tcp,
}

/// A server `hosts` entry: `[namespace/]host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayHost {
    pub namespace: HostNamespace,
    pub host: HostPattern,
}

impl GatewayHost {
    /// Whether a VirtualService in `vs_namespace` may bind to this entry
    /// (the Gateway itself is in `gateway_namespace`).
    pub fn admits_namespace(&self, vs_namespace: &str, gateway_namespace: &str) -> bool {
        match &self.namespace {
            HostNamespace::Any => true,
            HostNamespace::Same => vs_namespace == gateway_namespace,
            HostNamespace::Named(n) => n == vs_namespace,
            HostNamespace::None => false,
        }
    }
}

/// The namespace part of a server host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HostNamespace {
    /// `*/host` or a bare `host`: VirtualServices from any namespace.
    Any,
    /// `./host`: the Gateway's own namespace.
    Same,
    /// `ns/host`.
    Named(String),
    /// `~/host`: no VirtualService may bind.
    None,
}

/// `spec.servers[].tls`, for the modes weir implements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTls {
    pub mode: TlsMode,
    /// PEM chain presented to clients (SIMPLE, MUTUAL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<PathBuf>,
    /// PEM private key (SIMPLE, MUTUAL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PathBuf>,
    /// PEM CA bundle that client certificates must chain to (MUTUAL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<PathBuf>,
    /// MUTUAL: if set, the client certificate must carry one of these SANs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Lowest TLS version offered to clients (rustls speaks 1.2 and 1.3).
    pub min_protocol_version: TlsVersion,
    pub max_protocol_version: TlsVersion,
}

impl ServerTls {
    /// A PASSTHROUGH setting (no certificates).
    pub fn passthrough() -> Self {
        Self {
            mode: TlsMode::Passthrough,
            server_certificate: None,
            private_key: None,
            ca_certificates: None,
            subject_alt_names: Vec::new(),
            min_protocol_version: TlsVersion::V1_2,
            max_protocol_version: TlsVersion::V1_3,
        }
    }
}

/// `tls.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Route the client's TLS by SNI without terminating it.
    Passthrough,
    /// Terminate TLS with the server's certificate.
    Simple,
    /// Terminate TLS and require a client certificate from `caCertificates`.
    Mutual,
    /// Terminate TLS with the gateway's own mesh certificate and require a
    /// mesh (SPIFFE) client certificate from the mesh CA.
    IstioMutual,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Passthrough => "PASSTHROUGH",
            TlsMode::Simple => "SIMPLE",
            TlsMode::Mutual => "MUTUAL",
            TlsMode::IstioMutual => "ISTIO_MUTUAL",
        }
    }

    /// Whether the gateway terminates TLS in this mode.
    pub fn terminates(self) -> bool {
        self != TlsMode::Passthrough
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A TLS protocol version the gateway can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "TLSV1_2")]
    V1_2,
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

// ---------------------------------------------------------------- raw Gateway

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct GatewaySpec {
    #[serde(default)]
    selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    servers: Option<Vec<RawServer>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawServer {
    #[serde(default)]
    port: Option<RawPort>,
    #[serde(default)]
    bind: Option<String>,
    #[serde(default)]
    hosts: Option<Vec<String>>,
    #[serde(default)]
    tls: Option<RawServerTls>,
    #[serde(default)]
    default_endpoint: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPort {
    #[serde(default)]
    number: Option<u64>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    target_port: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawServerTls {
    #[serde(default)]
    https_redirect: Option<bool>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    server_certificate: Option<String>,
    #[serde(default)]
    private_key: Option<String>,
    #[serde(default)]
    ca_certificates: Option<String>,
    #[serde(default)]
    ca_crl: Option<String>,
    #[serde(default)]
    credential_name: Option<String>,
    #[serde(default)]
    credential_names: Option<Vec<String>>,
    #[serde(default)]
    tls_certificates: Option<Value>,
    #[serde(default)]
    subject_alt_names: Option<Vec<String>>,
    #[serde(default)]
    verify_certificate_spki: Option<Vec<String>>,
    #[serde(default)]
    verify_certificate_hash: Option<Vec<String>>,
    #[serde(default)]
    min_protocol_version: Option<String>,
    #[serde(default)]
    max_protocol_version: Option<String>,
    #[serde(default)]
    cipher_suites: Option<Vec<String>>,
}

fn port_number(ctx: &mut DocCtx<'_>, field: String, n: Option<u64>) -> Option<u16> {
    match n {
        None => {
            ctx.error(Some(field), "missing: a port number (1-65535) is required");
            None
        }
        Some(n) => match u16::try_from(n) {
            Ok(p) if p != 0 => Some(p),
            _ => {
                ctx.error(Some(field), format!("{n} is not a port number (1-65535)"));
                None
            }
        },
    }
}

fn optional_port(ctx: &mut DocCtx<'_>, field: String, n: Option<u64>) -> Option<u16> {
    n.and_then(|n| port_number(ctx, field, Some(n)))
}

fn gateway_host(ctx: &mut DocCtx<'_>, field: String, raw: &str) -> Option<GatewayHost> {
    let (ns, host) = match raw.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None => (None, raw),
    };
    let namespace = match ns {
        None | Some("*") => HostNamespace::Any,
        Some(".") => HostNamespace::Same,
        Some("~") => HostNamespace::None,
        Some(n) if super::load::is_dns_label(n) => HostNamespace::Named(n.to_owned()),
        Some(n) => {
            ctx.error(
                Some(field),
                format!("{raw:?}: {n:?} is not a namespace (use ns/host, */host, ./host or a bare host)"),
            );
            return None;
        }
    };
    match HostPattern::parse(host) {
        Some(host) => Some(GatewayHost { namespace, host }),
        None => {
            ctx.error(
                Some(field),
                format!("{raw:?} is not a host: use a DNS name, *.domain or *, optionally prefixed by namespace/"),
            );
            None
        }
    }
}

/// Istio's `minProtocolVersion` / `maxProtocolVersion` under the field path
/// `prefix` (which ends in a dot): the versions the gateway offers clients.
pub(crate) fn tls_versions(
    ctx: &mut DocCtx<'_>,
    prefix: &str,
    min: Option<&str>,
    max: Option<&str>,
) -> (TlsVersion, TlsVersion) {
    let min = tls_version(ctx, format!("{prefix}minProtocolVersion"), min, true);
    let max = tls_version(ctx, format!("{prefix}maxProtocolVersion"), max, false);
    if min > max {
        ctx.error(
            Some(format!("{prefix}minProtocolVersion")),
            "minProtocolVersion is above maxProtocolVersion",
        );
    }
    (min, max)
}

fn tls_version(ctx: &mut DocCtx<'_>, field: String, v: Option<&str>, min: bool) -> TlsVersion {
    match v {
        None | Some("TLS_AUTO") => {
            if min {
                TlsVersion::V1_2
            } else {
                TlsVersion::V1_3
            }
        }
        Some("TLSV1_0" | "TLSV1_1") if min => {
            ctx.warn(
                Some(field),
                format!(
                    "{}: weir speaks TLS 1.2 and 1.3 only; clients get at least TLS 1.2",
                    v.unwrap_or_default()
                ),
            );
            TlsVersion::V1_2
        }
        Some("TLSV1_0" | "TLSV1_1") => {
            ctx.error(
                Some(field),
                "weir speaks TLS 1.2 and 1.3 only; maxProtocolVersion must be TLSV1_2, TLSV1_3 or TLS_AUTO",
            );
            TlsVersion::V1_3
        }
        Some("TLSV1_2") => TlsVersion::V1_2,
        Some("TLSV1_3") => TlsVersion::V1_3,
        Some(other) => {
            ctx.error(
                Some(field),
                format!(
                    "{other:?} is not a TLS version (TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2, TLSV1_3)"
                ),
            );
            TlsVersion::V1_3
        }
    }
}

/// Why a valid Istio server is not served by weir: its field and the
/// reason (the first one found).
type Skip = Option<(String, String)>;

fn server_tls(
    ctx: &mut DocCtx<'_>,
    p: &str,
    t: RawServerTls,
    skip: &mut Skip,
) -> Option<ServerTls> {
    let f = |name: &str| format!("{p}.{name}");
    let from_secret = if t.credential_name.is_some() {
        Some("credentialName")
    } else if t.credential_names.is_some() {
        Some("credentialNames")
    } else if t.tls_certificates.is_some() {
        Some("tlsCertificates")
    } else {
        None
    };
    if let Some(field) = from_secret {
        skip.get_or_insert((
            f(field),
            "weir reads certificates from mounted files only, not Kubernetes Secrets: mount the secret and set serverCertificate, privateKey (and caCertificates for MUTUAL) to the file paths".to_owned(),
        ));
    }
    if t.ca_crl.is_some() {
        ctx.error(
            Some(f("caCrl")),
            "certificate revocation lists are not supported; weir would not check revocation, so it refuses rather than accept revoked clients silently",
        );
    }
    for (name, v) in [
        ("verifyCertificateSpki", &t.verify_certificate_spki),
        ("verifyCertificateHash", &t.verify_certificate_hash),
    ] {
        if v.as_ref().is_some_and(|v| !v.is_empty()) {
            ctx.error(
                Some(f(name)),
                "certificate pinning is not supported; use caCertificates (and subjectAltNames) to restrict clients",
            );
        }
    }
    if t.cipher_suites.as_ref().is_some_and(|c| !c.is_empty()) {
        ctx.warn(
            Some(f("cipherSuites")),
            "ignored: weir offers rustls's secure default suites (AES-GCM, ChaCha20-Poly1305)",
        );
    }
    if t.https_redirect == Some(true) {
        ctx.warn(
            Some(f("httpsRedirect")),
            "ignored: weir gateways serve no HTTP, so there is no request to redirect",
        );
    }
    let mode = match t.mode.as_deref() {
        None | Some("PASSTHROUGH") => TlsMode::Passthrough,
        Some("SIMPLE") => TlsMode::Simple,
        Some("MUTUAL") => TlsMode::Mutual,
        Some("ISTIO_MUTUAL") => TlsMode::IstioMutual,
        Some("AUTO_PASSTHROUGH") => {
            skip.get_or_insert((
                f("mode"),
                "AUTO_PASSTHROUGH is not supported: it routes by SNI names Istio encodes for multi-network east-west traffic; use PASSTHROUGH with VirtualService tls routes".to_owned(),
            ));
            return None;
        }
        Some("OPTIONAL_MUTUAL") => {
            skip.get_or_insert((
                f("mode"),
                "OPTIONAL_MUTUAL is not supported: use MUTUAL (client certificate required) or SIMPLE".to_owned(),
            ));
            return None;
        }
        Some(other) => {
            ctx.error(
                Some(f("mode")),
                format!("{other:?} is not a TLS mode (PASSTHROUGH, SIMPLE, MUTUAL, ISTIO_MUTUAL)"),
            );
            return None;
        }
    };
    let path = |ctx: &mut DocCtx<'_>, name: &str, v: Option<String>| -> Option<PathBuf> {
        match v {
            Some(s) if s.is_empty() => {
                ctx.error(Some(f(name)), "must not be empty");
                None
            }
            Some(s) => Some(PathBuf::from(s)),
            None => None,
        }
    };
    let server_certificate = path(ctx, "serverCertificate", t.server_certificate);
    let private_key = path(ctx, "privateKey", t.private_key);
    let ca_certificates = path(ctx, "caCertificates", t.ca_certificates);
    let needs_files = matches!(mode, TlsMode::Simple | TlsMode::Mutual);
    if needs_files && from_secret.is_none() {
        for (name, v) in [
            ("serverCertificate", &server_certificate),
            ("privateKey", &private_key),
        ] {
            if v.is_none() {
                ctx.error(
                    Some(f(name)),
                    format!("missing: tls.mode {mode} needs serverCertificate and privateKey (PEM file paths)"),
                );
            }
        }
    }
    if mode == TlsMode::Mutual && ca_certificates.is_none() && from_secret.is_none() {
        ctx.error(
            Some(f("caCertificates")),
            "missing: tls.mode MUTUAL needs caCertificates (a PEM file of the CAs client certificates must chain to)",
        );
    }
    if !needs_files {
        for (name, v) in [
            ("serverCertificate", &server_certificate),
            ("privateKey", &private_key),
            ("caCertificates", &ca_certificates),
        ] {
            if v.is_some() {
                let why = if mode == TlsMode::Passthrough {
                    "PASSTHROUGH does not terminate TLS"
                } else {
                    "ISTIO_MUTUAL uses the gateway's mesh certificate and the mesh CA"
                };
                ctx.warn(Some(f(name)), format!("ignored: {why}"));
            }
        }
    }
    let subject_alt_names = t.subject_alt_names.unwrap_or_default();
    if !subject_alt_names.is_empty() && mode != TlsMode::Mutual {
        ctx.warn(
            Some(f("subjectAltNames")),
            "ignored: client SANs are checked in MUTUAL mode only",
        );
    }
    let (min, max) = tls_versions(
        ctx,
        &f(""),
        t.min_protocol_version.as_deref(),
        t.max_protocol_version.as_deref(),
    );
    Some(ServerTls {
        mode,
        server_certificate,
        private_key,
        ca_certificates,
        subject_alt_names,
        min_protocol_version: min,
        max_protocol_version: max,
    })
}

fn gateway(ctx: &mut DocCtx<'_>, metadata: ObjectMeta, spec: GatewaySpec) -> Gateway {
    let mut servers = Vec::new();
    let raw = spec.servers.unwrap_or_default();
    if raw.is_empty() {
        ctx.error(
            Some("spec.servers".to_owned()),
            "a Gateway needs at least one server",
        );
    }
    for (i, s) in raw.into_iter().enumerate() {
        let p = format!("spec.servers[{i}]");
        if let Some(s) = server(ctx, &p, s) {
            servers.push(s);
        }
    }
    let mut seen: BTreeMap<u16, (ServerProtocol, bool)> = BTreeMap::new();
    for (i, s) in servers.iter().enumerate() {
        let tls = s.tls.is_some();
        if let Some((proto, had_tls)) = seen.insert(s.port.number, (s.port.protocol, tls)) {
            if proto != s.port.protocol || had_tls != tls {
                // As Istio merges servers: the later one is dropped (the
                // gateway reports it), the rest of the Gateway is served.
                ctx.warn(
                    Some(format!("spec.servers[{i}].port")),
                    format!(
                        "port {} is used by an earlier server of this Gateway with a different protocol; this server is ignored (servers sharing a port must all be TLS, told apart by SNI host)",
                        s.port.number
                    ),
                );
            }
        }
    }
    Gateway {
        metadata,
        selector: spec.selector.unwrap_or_default(),
        servers,
        doc: Some(ctx.doc.clone()),
    }
}

/// A server of a Gateway; `None` if it has errors, or (with a warning) if it
/// is valid for Istio but uses what a weir gateway does not serve (HTTP,
/// certificates from Secrets, AUTO_PASSTHROUGH, OPTIONAL_MUTUAL): the
/// Gateway's other servers are served, as a dump of a cluster's Gateways
/// (the bookinfo HTTP Gateway beside a Kafka one) must load.
fn server(ctx: &mut DocCtx<'_>, p: &str, s: RawServer) -> Option<Server> {
    let before = ctx.error_count();
    let mut skip: Skip = None;
    let Some(port) = s.port else {
        ctx.error(Some(format!("{p}.port")), "missing: a server needs a port");
        return None;
    };
    let number = port_number(ctx, format!("{p}.port.number"), port.number);
    if port.target_port.is_some() {
        ctx.warn(
            Some(format!("{p}.port.targetPort")),
            "ignored: weir listens on port.number",
        );
    }
    let raw_protocol = port.protocol.clone().unwrap_or_default();
    let protocol = match raw_protocol.to_ascii_uppercase().as_str() {
        "TLS" => Some(ServerProtocol::Tls),
        "HTTPS" => {
            ctx.warn(
                Some(format!("{p}.port.protocol")),
                "HTTPS is carried as TLS: routes come from VirtualService tls (and tcp) routes; http routes are not used",
            );
            Some(ServerProtocol::Tls)
        }
        "TCP" | "MONGO" | "MYSQL" | "REDIS" => Some(ServerProtocol::Tcp),
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" | "HTTP_PROXY" => {
            skip = Some((
                format!("{p}.port.protocol"),
                format!("{raw_protocol}: weir gateways carry TLS and TCP only (HTTP routing is not implemented)"),
            ));
            None
        }
        "" => {
            ctx.error(
                Some(format!("{p}.port.protocol")),
                "missing: TLS or TCP (weir gateways carry TLS and TCP only)",
            );
            None
        }
        other => {
            ctx.error(
                Some(format!("{p}.port.protocol")),
                format!("{other:?} is not a protocol weir gateways carry; use TLS or TCP"),
            );
            None
        }
    };
    let name = match port.name {
        Some(n) if !n.is_empty() => n,
        _ => {
            ctx.error(
                Some(format!("{p}.port.name")),
                "missing: every server port needs a name (as in Istio)",
            );
            String::new()
        }
    };
    if let Some(b) = &s.bind {
        ctx.warn(
            Some(format!("{p}.bind")),
            format!("ignored ({b}): a weir gateway listens on --listen-address"),
        );
    }
    if s.default_endpoint.is_some() {
        ctx.warn(
            Some(format!("{p}.defaultEndpoint")),
            "ignored: it applies to sidecars, not gateways",
        );
    }
    let mut hosts = Vec::new();
    let raw_hosts = s.hosts.unwrap_or_default();
    if raw_hosts.is_empty() {
        ctx.error(
            Some(format!("{p}.hosts")),
            "a server needs at least one host (use \"*\" for any)",
        );
    }
    for (i, h) in raw_hosts.iter().enumerate() {
        if let Some(h) = gateway_host(ctx, format!("{p}.hosts[{i}]"), h) {
            hosts.push(h);
        }
    }
    let tls = match s.tls {
        Some(_) if protocol == Some(ServerProtocol::Tcp) => {
            // Istio's validation: TLS settings only on TLS/HTTPS servers.
            ctx.error(
                Some(format!("{p}.tls")),
                format!(
                    "a {raw_protocol} server has no TLS settings: use protocol TLS for a TLS server (as Istio refuses it)"
                ),
            );
            None
        }
        Some(t) => server_tls(ctx, &format!("{p}.tls"), t, &mut skip),
        None => {
            if protocol == Some(ServerProtocol::Tls) {
                ctx.error(
                    Some(format!("{p}.tls")),
                    "missing: a TLS server needs tls.mode (PASSTHROUGH, SIMPLE, MUTUAL or ISTIO_MUTUAL)",
                );
            }
            None
        }
    };
    if ctx.error_count() > before {
        return None;
    }
    if let Some((field, why)) = skip {
        ctx.warn(
            Some(field),
            format!("this server is not served (the rest of the Gateway is): {why}"),
        );
        return None;
    }
    Some(Server {
        port: ServerPort {
            number: number?,
            name,
            protocol: protocol?,
        },
        hosts,
        tls,
        name: s.name,
    })
}

// ================================================================ VirtualService

/// A VirtualService's `gateways` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub enum GatewayRef {
    /// The reserved name `mesh`: sidecars (not a gateway).
    Mesh,
    Named {
        namespace: String,
        name: String,
    },
}

impl GatewayRef {
    fn parse(s: &str, vs_namespace: &str) -> Option<GatewayRef> {
        if s == "mesh" {
            return Some(GatewayRef::Mesh);
        }
        let (ns, name) = match s.split_once('/') {
            Some((ns, name)) => (ns, name),
            None => (vs_namespace, s),
        };
        (super::load::is_dns_label(ns) && super::load::is_dns_subdomain(name)).then(|| {
            GatewayRef::Named {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            }
        })
    }

    /// Whether this names `gateway`.
    pub fn is(&self, gateway: &ObjectMeta) -> bool {
        matches!(self, GatewayRef::Named { namespace, name } if *namespace == gateway.namespace && *name == gateway.name)
    }
}

impl From<GatewayRef> for String {
    fn from(g: GatewayRef) -> String {
        match g {
            GatewayRef::Mesh => "mesh".to_owned(),
            GatewayRef::Named { namespace, name } => format!("{namespace}/{name}"),
        }
    }
}

/// Whether a resource of namespace `own` with `exportTo` `export_to` is
/// visible to proxies in namespace `viewer`, as Istio decides it: no
/// `exportTo` (the mesh default) or `*` is every namespace, `.` its own,
/// `~` none, a name that namespace.
pub fn exported_to(export_to: &[String], own: &str, viewer: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == viewer || (e == "." && own == viewer))
}

/// A `spec.exportTo` list, each value checked.
/// As Istio's validateExportTo: `*` and `~` stand alone, no value twice
/// (`.` counts as the resource's own namespace).
fn export_to(ctx: &mut DocCtx<'_>, own: &str, raw: Option<Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let raw = raw.unwrap_or_default();
    let n = raw.len();
    for (i, e) in raw.into_iter().enumerate() {
        let field = format!("spec.exportTo[{i}]");
        if !(e == "." || e == "*" || e == "~" || super::load::is_dns_label(&e)) {
            ctx.error(
                Some(field),
                format!("{e:?} is not an exportTo value (\".\", \"*\", \"~\" or a namespace)"),
            );
            continue;
        }
        if (e == "*" || e == "~") && n > 1 {
            ctx.error(
                Some(field),
                format!("{e:?} must be the only exportTo value (as Istio requires)"),
            );
            continue;
        }
        let key = if e == "." { own.to_owned() } else { e.clone() };
        if seen.contains(&key) {
            ctx.error(
                Some(field),
                format!("{e:?}: duplicate exportTo value (\".\" is the resource's own namespace)"),
            );
            continue;
        }
        seen.push(key);
        out.push(e);
    }
    out
}

/// An Istio `VirtualService`, reduced to its `tls` and `tcp` routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualService {
    pub metadata: ObjectMeta,
    pub hosts: Vec<HostPattern>,
    /// Where the routes apply; empty means `mesh` (sidecars only), as in Istio.
    pub gateways: Vec<GatewayRef>,
    pub tls: Vec<TlsRoute>,
    pub tcp: Vec<TcpRoute>,
    /// `exportTo`: the namespaces whose proxies may use it (`.` its own,
    /// `*` all); empty means all, Istio's default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    #[serde(skip)]
    pub(crate) doc: Option<DocumentRef>,
}

impl VirtualService {
    /// Whether a proxy in `namespace` (a gateway's) sees this
    /// VirtualService under its `exportTo`, as Istio decides it.
    pub fn visible_to(&self, namespace: &str) -> bool {
        exported_to(&self.export_to, &self.metadata.namespace, namespace)
    }

    /// Whether the VirtualService as a whole is bound to `gateway`.
    pub fn binds(&self, gateway: &ObjectMeta) -> bool {
        self.gateways.iter().any(|g| g.is(gateway))
    }
}

/// One `tls[]` route: any match selects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsRoute {
    #[serde(rename = "match")]
    pub matches: Vec<TlsMatch>,
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsMatch {
    pub sni_hosts: Vec<HostPattern>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Restricts the match to these gateways (else: the VirtualService's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayRef>,
}

/// One `tcp[]` route; no match means every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpRoute {
    #[serde(rename = "match")]
    pub matches: Vec<L4Match>,
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct L4Match {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayRef>,
}

/// `route[]`: a destination and its share of connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteDestination {
    pub destination: Destination,
    /// Relative weight; Istio's default for a single destination is 100.
    pub weight: u32,
}

/// `destination`: a service host (Service, ServiceEntry host), its port and
/// optionally a DestinationRule subset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Destination {
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct VirtualServiceSpec {
    #[serde(default)]
    hosts: Option<Vec<String>>,
    #[serde(default)]
    gateways: Option<Vec<String>>,
    #[serde(default)]
    http: Option<Value>,
    #[serde(default)]
    tls: Option<Vec<RawTlsRoute>>,
    #[serde(default)]
    tcp: Option<Vec<RawTcpRoute>>,
    #[serde(default)]
    export_to: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTlsRoute {
    #[serde(default, rename = "match")]
    matches: Option<Vec<RawTlsMatch>>,
    #[serde(default)]
    route: Option<Vec<RawRouteDestination>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTlsMatch {
    #[serde(default)]
    sni_hosts: Option<Vec<String>>,
    #[serde(default)]
    destination_subnets: Option<Vec<String>>,
    #[serde(default)]
    port: Option<u64>,
    #[serde(default)]
    source_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    gateways: Option<Vec<String>>,
    #[serde(default)]
    source_namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTcpRoute {
    #[serde(default, rename = "match")]
    matches: Option<Vec<RawL4Match>>,
    #[serde(default)]
    route: Option<Vec<RawRouteDestination>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawL4Match {
    #[serde(default)]
    destination_subnets: Option<Vec<String>>,
    #[serde(default)]
    port: Option<u64>,
    #[serde(default)]
    source_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    gateways: Option<Vec<String>>,
    #[serde(default)]
    source_namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRouteDestination {
    #[serde(default)]
    destination: Option<RawDestination>,
    #[serde(default)]
    weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDestination {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    subset: Option<String>,
    #[serde(default)]
    port: Option<RawPortSelector>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPortSelector {
    #[serde(default)]
    number: Option<u64>,
}

fn gateway_refs(
    ctx: &mut DocCtx<'_>,
    p: &str,
    v: Option<Vec<String>>,
    ns: &str,
) -> Vec<GatewayRef> {
    let mut out = Vec::new();
    for (i, g) in v.unwrap_or_default().iter().enumerate() {
        // Istio's legacy form (resolveGatewayName): a dotted name without a
        // `/` is `name.namespace[.svc.cluster.local]`.
        let legacy = match g.split_once('.') {
            Some((name, rest)) if !g.contains('/') => {
                let namespace = rest.split('.').next().unwrap_or(rest);
                ctx.warn(
                    Some(format!("{p}[{i}]")),
                    format!("{g:?} is Istio's legacy form, read as {namespace}/{name}: write namespace/name"),
                );
                Some(format!("{namespace}/{name}"))
            }
            _ => None,
        };
        let g = legacy.as_deref().unwrap_or(g);
        match GatewayRef::parse(g, ns) {
            Some(r) => out.push(r),
            None => ctx.error(
                Some(format!("{p}[{i}]")),
                format!("{g:?} is not a gateway reference (name, namespace/name or mesh)"),
            ),
        }
    }
    out
}

/// Fields of Istio's match attributes a gateway cannot evaluate: refused
/// in a VirtualService bound to a gateway; in a mesh-only one (no
/// `gateways`, or only `mesh`), which no weir gateway uses, a warning.
fn refuse_source_matching(
    ctx: &mut DocCtx<'_>,
    p: &str,
    gateway_bound: bool,
    subnets: &Option<Vec<String>>,
    labels: &Option<BTreeMap<String, String>>,
    ns: &Option<String>,
) {
    let say = |ctx: &mut DocCtx<'_>, field: String, why: &str| {
        if gateway_bound {
            ctx.error(
                Some(field),
                format!("not supported by weir's gateway: {why}"),
            );
        } else {
            ctx.warn(
                Some(field),
                "ignored: this VirtualService is bound to no gateway (sidecars and waypoints only), so no weir gateway uses it",
            );
        }
    };
    if subnets.as_ref().is_some_and(|s| !s.is_empty()) {
        say(
            ctx,
            format!("{p}.destinationSubnets"),
            "a gateway connection has no original destination address to match",
        );
    }
    if labels.as_ref().is_some_and(|l| !l.is_empty()) || ns.is_some() {
        let field = if ns.is_some() {
            "sourceNamespace"
        } else {
            "sourceLabels"
        };
        say(
            ctx,
            format!("{p}.{field}"),
            "it matches the calling sidecar, and a gateway's clients are outside the mesh; bind the route with gateways instead",
        );
    }
}

fn route_destinations(
    ctx: &mut DocCtx<'_>,
    p: &str,
    v: Option<Vec<RawRouteDestination>>,
) -> Vec<RouteDestination> {
    let v = v.unwrap_or_default();
    if v.is_empty() {
        ctx.error(
            Some(format!("{p}.route")),
            "a route needs at least one destination",
        );
    }
    let single = v.len() == 1;
    let mut out = Vec::new();
    for (i, r) in v.into_iter().enumerate() {
        let rp = format!("{p}.route[{i}]");
        let weight = match r.weight {
            None if single => 100,
            None => 0,
            Some(w) if (0..=i64::from(u32::MAX)).contains(&w) => w as u32,
            Some(w) => {
                ctx.error(
                    Some(format!("{rp}.weight")),
                    format!("{w} is not a weight (0 or more)"),
                );
                0
            }
        };
        let Some(d) = r.destination else {
            ctx.error(
                Some(format!("{rp}.destination")),
                "missing: a route needs a destination",
            );
            continue;
        };
        let host = match d.host {
            Some(h) if !h.trim().is_empty() => h.trim_end_matches('.').to_ascii_lowercase(),
            _ => {
                ctx.error(
                    Some(format!("{rp}.destination.host")),
                    "missing: a destination needs a host (a Service or ServiceEntry host)",
                );
                continue;
            }
        };
        if host.contains('*') {
            ctx.error(
                Some(format!("{rp}.destination.host")),
                format!("{host:?}: a destination must be a concrete host, not a wildcard"),
            );
            continue;
        }
        let port = d
            .port
            .and_then(|p| optional_port(ctx, format!("{rp}.destination.port.number"), p.number));
        out.push(RouteDestination {
            destination: Destination {
                host,
                port,
                subset: d.subset.filter(|s| !s.is_empty()),
            },
            weight,
        });
    }
    if out.len() > 1 && out.iter().all(|r| r.weight == 0) {
        ctx.error(
            Some(format!("{p}.route")),
            "with several destinations, give each a weight (they are relative shares)",
        );
    }
    out
}

fn virtual_service(
    ctx: &mut DocCtx<'_>,
    metadata: ObjectMeta,
    spec: VirtualServiceSpec,
) -> VirtualService {
    let ns = metadata.namespace.clone();
    let mut hosts = Vec::new();
    let raw_hosts = spec.hosts.unwrap_or_default();
    let has_l4 = spec.tls.as_ref().is_some_and(|t| !t.is_empty())
        || spec.tcp.as_ref().is_some_and(|t| !t.is_empty());
    if raw_hosts.is_empty() {
        if has_l4 {
            ctx.error(
                Some("spec.hosts".to_owned()),
                "a VirtualService with tls or tcp routes needs at least one host",
            );
        } else {
            // Istio's delegate VirtualService: used from another one's
            // http route, never bound to a Gateway on its own.
            ctx.warn(
                Some("spec.hosts".to_owned()),
                "no hosts: a delegate VirtualService (used by another one's http routes), which weir does not use",
            );
        }
    }
    for (i, h) in raw_hosts.iter().enumerate() {
        match HostPattern::parse(h) {
            Some(p) => hosts.push(p),
            None => ctx.error(
                Some(format!("spec.hosts[{i}]")),
                format!("{h:?} is not a host (a DNS name, *.domain or *)"),
            ),
        }
    }
    let gateways = gateway_refs(ctx, "spec.gateways", spec.gateways, &ns);
    let gateway_bound = gateways
        .iter()
        .any(|g| matches!(g, GatewayRef::Named { .. }));
    let has_http = match &spec.http {
        None | Some(Value::Null) => false,
        Some(Value::Sequence(s)) => !s.is_empty(),
        Some(_) => true,
    };
    if has_http {
        ctx.warn(
            Some("spec.http".to_owned()),
            "ignored: weir does not route HTTP; only tls and tcp routes apply",
        );
    }
    if let Some(http) = &spec.http {
        shape::check(ctx, "spec.http", http, &shape::HTTP_ROUTES);
    }
    let export_to = export_to(ctx, &metadata.namespace, spec.export_to);
    let mut tls = Vec::new();
    for (i, r) in spec.tls.unwrap_or_default().into_iter().enumerate() {
        let p = format!("spec.tls[{i}]");
        let raw_matches = r.matches.unwrap_or_default();
        if raw_matches.is_empty() {
            ctx.error(
                Some(format!("{p}.match")),
                "a tls route needs at least one match with sniHosts (as in Istio)",
            );
        }
        let mut matches = Vec::new();
        for (j, m) in raw_matches.into_iter().enumerate() {
            let mp = format!("{p}.match[{j}]");
            refuse_source_matching(
                ctx,
                &mp,
                gateway_bound,
                &m.destination_subnets,
                &m.source_labels,
                &m.source_namespace,
            );
            let raw_sni = m.sni_hosts.unwrap_or_default();
            if raw_sni.is_empty() {
                ctx.error(
                    Some(format!("{mp}.sniHosts")),
                    "a tls match needs at least one SNI host (as in Istio)",
                );
            }
            let mut sni_hosts = Vec::new();
            for (k, h) in raw_sni.iter().enumerate() {
                let hp = format!("{mp}.sniHosts[{k}]");
                match HostPattern::parse(h) {
                    Some(pat) => {
                        if !hosts.is_empty() && !hosts.iter().any(|vh| pat.subset_of(vh)) {
                            ctx.error(
                                Some(hp),
                                format!("{h:?} is not within any of the VirtualService's hosts (Istio requires each SNI host to be a subset of one of spec.hosts)"),
                            );
                        }
                        sni_hosts.push(pat);
                    }
                    None => ctx.error(
                        Some(hp),
                        format!("{h:?} is not a host (a DNS name, *.domain or *)"),
                    ),
                }
            }
            matches.push(TlsMatch {
                sni_hosts,
                port: optional_port(ctx, format!("{mp}.port"), m.port),
                gateways: gateway_refs(ctx, &format!("{mp}.gateways"), m.gateways, &ns),
            });
        }
        let route = route_destinations(ctx, &p, r.route);
        tls.push(TlsRoute { matches, route });
    }
    let mut tcp = Vec::new();
    for (i, r) in spec.tcp.unwrap_or_default().into_iter().enumerate() {
        let p = format!("spec.tcp[{i}]");
        let mut matches = Vec::new();
        for (j, m) in r.matches.unwrap_or_default().into_iter().enumerate() {
            let mp = format!("{p}.match[{j}]");
            refuse_source_matching(
                ctx,
                &mp,
                gateway_bound,
                &m.destination_subnets,
                &m.source_labels,
                &m.source_namespace,
            );
            matches.push(L4Match {
                port: optional_port(ctx, format!("{mp}.port"), m.port),
                gateways: gateway_refs(ctx, &format!("{mp}.gateways"), m.gateways, &ns),
            });
        }
        let route = route_destinations(ctx, &p, r.route);
        tcp.push(TcpRoute { matches, route });
    }
    VirtualService {
        metadata,
        hosts,
        gateways,
        tls,
        tcp,
        export_to,
        doc: Some(ctx.doc.clone()),
    }
}

// ================================================================ ServiceEntry

/// `location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

/// `resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Connect to the address the client asked for (at a gateway: the
    /// entry's `addresses`, if they are single IPs).
    None,
    /// `endpoints` (IP addresses) or the Workloads `workloadSelector` selects.
    Static,
    /// Resolve the endpoints' names (or the hosts) with DNS at connect time.
    Dns,
    DnsRoundRobin,
}

/// An Istio `ServiceEntry`: hosts outside the Kubernetes registry, such as
/// the per-broker entries Kafka and Pulsar operators create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntry {
    pub metadata: ObjectMeta,
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpNet>,
    pub ports: Vec<EntryPort>,
    pub location: Location,
    pub resolution: Resolution,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<BTreeMap<String, String>>,
    /// `exportTo`: the namespaces whose proxies see it (empty: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

impl ServiceEntry {
    /// Whether a proxy in `namespace` sees this ServiceEntry under its
    /// `exportTo`.
    pub fn visible_to(&self, namespace: &str) -> bool {
        exported_to(&self.export_to, &self.metadata.namespace, namespace)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryPort {
    pub number: u16,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

/// An endpoint of a ServiceEntry (Istio's inline `WorkloadEntry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadEntry {
    pub address: EndpointAddress,
    /// Port name → port on this endpoint.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum EndpointAddress {
    Ip(IpAddr),
    Dns(String),
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddress::Ip(ip) => ip.fmt(f),
            EndpointAddress::Dns(h) => f.write_str(h),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ServiceEntrySpec {
    #[serde(default)]
    hosts: Option<Vec<String>>,
    #[serde(default)]
    addresses: Option<Vec<String>>,
    #[serde(default)]
    ports: Option<Vec<RawEntryPort>>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    resolution: Option<String>,
    #[serde(default)]
    endpoints: Option<Vec<RawWorkloadEntry>>,
    #[serde(default)]
    workload_selector: Option<RawEntrySelector>,
    #[serde(default)]
    export_to: Option<Vec<String>>,
    #[serde(default)]
    subject_alt_names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawEntryPort {
    #[serde(default)]
    number: Option<u64>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    target_port: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawWorkloadEntry {
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    ports: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    locality: Option<String>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    service_account: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawEntrySelector {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn service_entry(
    ctx: &mut DocCtx<'_>,
    metadata: ObjectMeta,
    spec: ServiceEntrySpec,
) -> ServiceEntry {
    let mut hosts = Vec::new();
    let raw_hosts = spec.hosts.unwrap_or_default();
    if raw_hosts.is_empty() {
        ctx.error(
            Some("spec.hosts".to_owned()),
            "a ServiceEntry needs at least one host",
        );
    }
    for (i, h) in raw_hosts.iter().enumerate() {
        match HostPattern::parse(h) {
            Some(p) => hosts.push(p.to_string()),
            None => ctx.error(
                Some(format!("spec.hosts[{i}]")),
                format!("{h:?} is not a host (a DNS name or *.domain)"),
            ),
        }
    }
    let mut addresses = Vec::new();
    for (i, a) in spec.addresses.unwrap_or_default().iter().enumerate() {
        match super::istio::parse_ip_block(a) {
            Some(n) => addresses.push(n),
            None => ctx.error(
                Some(format!("spec.addresses[{i}]")),
                format!("{a:?} is not an IP address or CIDR block"),
            ),
        }
    }
    let mut ports = Vec::new();
    let raw_ports = spec.ports.unwrap_or_default();
    if raw_ports.is_empty() {
        ctx.error(
            Some("spec.ports".to_owned()),
            "a ServiceEntry needs at least one port",
        );
    }
    for (i, p) in raw_ports.into_iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        let number = port_number(ctx, format!("{f}.number"), p.number);
        let target_port = optional_port(ctx, format!("{f}.targetPort"), p.target_port);
        let name = p.name.filter(|n| !n.is_empty());
        if name.is_none() {
            ctx.error(
                Some(format!("{f}.name")),
                "missing: every port needs a name (as in Istio)",
            );
        }
        if let (Some(number), Some(name)) = (number, name) {
            ports.push(EntryPort {
                number,
                name,
                protocol: p.protocol,
                target_port,
            });
        }
    }
    let location = match spec.location.as_deref() {
        None | Some("MESH_EXTERNAL") => Location::MeshExternal,
        Some("MESH_INTERNAL") => Location::MeshInternal,
        Some(other) => {
            ctx.error(
                Some("spec.location".to_owned()),
                format!("{other:?} is not a location (MESH_EXTERNAL, MESH_INTERNAL)"),
            );
            Location::MeshExternal
        }
    };
    let resolution = match spec.resolution.as_deref() {
        None | Some("NONE") => Resolution::None,
        Some("STATIC") => Resolution::Static,
        Some("DNS") => Resolution::Dns,
        Some("DNS_ROUND_ROBIN") => Resolution::DnsRoundRobin,
        Some(other) => {
            ctx.error(
                Some("spec.resolution".to_owned()),
                format!("{other:?} is not a resolution (NONE, STATIC, DNS, DNS_ROUND_ROBIN)"),
            );
            Resolution::None
        }
    };
    let mut endpoints = Vec::new();
    let raw_endpoints = spec.endpoints.unwrap_or_default();
    for (i, e) in raw_endpoints.into_iter().enumerate() {
        let f = format!("spec.endpoints[{i}]");
        let _ = (e.network, e.locality, e.service_account);
        let address = match e.address.as_deref() {
            None | Some("") => {
                ctx.error(
                    Some(format!("{f}.address")),
                    "missing: an endpoint needs an address",
                );
                continue;
            }
            Some(a) => match a.parse::<IpAddr>() {
                Ok(ip) => EndpointAddress::Ip(ip),
                Err(_) if a.starts_with("unix://") => {
                    ctx.error(
                        Some(format!("{f}.address")),
                        "unix domain socket endpoints are not supported",
                    );
                    continue;
                }
                Err(_) => {
                    if resolution == Resolution::Static {
                        ctx.error(
                            Some(format!("{f}.address")),
                            format!("{a:?}: resolution STATIC needs IP addresses (use DNS for host names)"),
                        );
                        continue;
                    }
                    match HostPattern::parse(a) {
                        Some(HostPattern::Exact(h)) => EndpointAddress::Dns(h),
                        _ => {
                            ctx.error(
                                Some(format!("{f}.address")),
                                format!("{a:?} is not an IP address or host name"),
                            );
                            continue;
                        }
                    }
                }
            },
        };
        let mut ports = BTreeMap::new();
        for (name, n) in e.ports.unwrap_or_default() {
            if let Some(p) = port_number(ctx, format!("{f}.ports.{name}"), Some(n)) {
                ports.insert(name, p);
            }
        }
        endpoints.push(WorkloadEntry {
            address,
            ports,
            labels: e.labels.unwrap_or_default(),
            weight: e.weight.unwrap_or(1),
        });
    }
    let workload_selector = spec.workload_selector.map(|s| s.labels);
    if workload_selector.is_some() && !endpoints.is_empty() {
        ctx.error(
            Some("spec.workloadSelector".to_owned()),
            "workloadSelector and endpoints are mutually exclusive (as in Istio)",
        );
    }
    if resolution == Resolution::Static && endpoints.is_empty() && workload_selector.is_none() {
        ctx.error(
            Some("spec.endpoints".to_owned()),
            "resolution STATIC needs endpoints or a workloadSelector",
        );
    }
    if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
        && endpoints.is_empty()
        && hosts.iter().any(|h| h.starts_with('*'))
    {
        ctx.error(
            Some("spec.hosts".to_owned()),
            "resolution DNS with a wildcard host needs endpoints (a wildcard cannot be resolved)",
        );
    }
    let export_to = export_to(ctx, &metadata.namespace, spec.export_to);
    let _ = spec.subject_alt_names;
    ServiceEntry {
        export_to,
        metadata,
        hosts,
        addresses,
        ports,
        location,
        resolution,
        endpoints,
        workload_selector,
    }
}

// ================================================================ DestinationRule

/// An Istio `DestinationRule`: kept for its subsets (which label sets a
/// route's `destination.subset` names). Its traffic policy is not applied:
/// the mesh secures upstream connections itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRule {
    pub metadata: ObjectMeta,
    pub host: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<serde_json::Value>,
    /// The `tls.mode`s its traffic policies set (top level, per port, per
    /// subset), so a route to a host that asks for TLS origination, which
    /// weir does not do, is refused rather than sent in plaintext.
    #[serde(skip)]
    pub tls_modes: Vec<UpstreamTlsMode>,
    /// `exportTo`: the namespaces whose proxies see it (empty: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

impl DestinationRule {
    /// Istio's namespace-local rules of its namespace: what a proxy there
    /// looks at first (no `exportTo`, `*`, `.` or its own namespace).
    fn local(&self) -> bool {
        let ns = &self.metadata.namespace;
        self.export_to.is_empty()
            || self
                .export_to
                .iter()
                .any(|e| e == "*" || e == "." || e == ns)
    }

    /// Exported beyond its namespace (not only `.` or its own name).
    fn exported(&self) -> bool {
        let ns = &self.metadata.namespace;
        !(self.export_to.len() == 1 && (self.export_to[0] == "." || &self.export_to[0] == ns))
    }
}

/// One `tls.mode` of a DestinationRule traffic policy and where it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsMode {
    /// A subset's policy (else the rule's).
    pub subset: Option<String>,
    /// A `portLevelSettings` entry (else the policy's top level).
    pub port: Option<u16>,
    /// `DISABLE`, `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DestinationRuleSpec {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    traffic_policy: Option<Value>,
    #[serde(default)]
    subsets: Option<Vec<RawSubset>>,
    #[serde(default)]
    export_to: Option<Vec<String>>,
    #[serde(default)]
    workload_selector: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSubset {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    traffic_policy: Option<Value>,
}

/// Reads the upstream TLS settings of a traffic policy (top level or per
/// port) into `modes`, warning about each: weir does not originate TLS.
fn upstream_tls(
    ctx: &mut DocCtx<'_>,
    p: &str,
    policy: &Value,
    subset: Option<&str>,
    modes: &mut Vec<UpstreamTlsMode>,
) {
    let Some(m) = policy.as_mapping() else { return };
    let mut one = |ctx: &mut DocCtx<'_>, field: String, tls: &Value, port: Option<u16>| {
        let mode = tls
            .get("mode")
            .and_then(Value::as_str)
            .unwrap_or("DISABLE")
            .to_owned();
        let message = if matches!(mode.as_str(), "SIMPLE" | "MUTUAL") {
            format!("weir does not originate TLS to upstreams: connections routed to this host with mode {mode} are refused rather than sent in plaintext (carry the client's TLS through with a PASSTHROUGH server instead)")
        } else {
            "ignored: weir secures upstream connections itself (HBONE mTLS to mesh workloads, plain TCP otherwise)".to_owned()
        };
        ctx.warn(Some(field), message);
        modes.push(UpstreamTlsMode {
            subset: subset.map(str::to_owned),
            port,
            mode,
        });
    };
    if let Some(tls) = m.get("tls") {
        one(ctx, format!("{p}.tls"), tls, None);
    }
    if let Some(ports) = m.get("portLevelSettings").and_then(Value::as_sequence) {
        for (i, ps) in ports.iter().enumerate() {
            let Some(tls) = ps.get("tls") else { continue };
            let port = ps
                .get("port")
                .and_then(|p| p.get("number"))
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0);
            let Some(port) = port else {
                // Istio refuses such an entry; it must not become rule-wide.
                ctx.warn(
                    Some(format!("{p}.portLevelSettings[{i}].port")),
                    "ignored: a port-level setting needs port.number (1-65535)",
                );
                continue;
            };
            one(
                ctx,
                format!("{p}.portLevelSettings[{i}].tls"),
                tls,
                Some(port),
            );
        }
    }
}

fn to_json(v: Value) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}

fn destination_rule(
    ctx: &mut DocCtx<'_>,
    metadata: ObjectMeta,
    spec: DestinationRuleSpec,
) -> DestinationRule {
    let host = match spec.host {
        Some(h) if HostPattern::parse(&h).is_some() => h.trim_end_matches('.').to_ascii_lowercase(),
        Some(h) => {
            ctx.error(Some("spec.host".to_owned()), format!("{h:?} is not a host"));
            String::new()
        }
        None => {
            ctx.error(
                Some("spec.host".to_owned()),
                "missing: a DestinationRule needs a host",
            );
            String::new()
        }
    };
    let mut tls_modes = Vec::new();
    if let Some(tp) = &spec.traffic_policy {
        shape::check(ctx, "spec.trafficPolicy", tp, &shape::TRAFFIC_POLICY);
        upstream_tls(ctx, "spec.trafficPolicy", tp, None, &mut tls_modes);
    }
    if let Some(ws) = &spec.workload_selector {
        shape::check(ctx, "spec.workloadSelector", ws, &shape::WORKLOAD_SELECTOR);
    }
    let mut subsets = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in spec.subsets.unwrap_or_default().into_iter().enumerate() {
        let p = format!("spec.subsets[{i}]");
        if let Some(tp) = &s.traffic_policy {
            shape::check(
                ctx,
                &format!("{p}.trafficPolicy"),
                tp,
                &shape::TRAFFIC_POLICY,
            );
            upstream_tls(
                ctx,
                &format!("{p}.trafficPolicy"),
                tp,
                s.name.as_deref(),
                &mut tls_modes,
            );
        }
        let Some(name) = s.name.filter(|n| !n.is_empty()) else {
            ctx.error(Some(format!("{p}.name")), "missing: a subset needs a name");
            continue;
        };
        if !names.insert(name.clone()) {
            ctx.error(
                Some(format!("{p}.name")),
                format!("duplicate subset {name:?}"),
            );
        }
        subsets.push(Subset {
            name,
            labels: s.labels.unwrap_or_default(),
        });
    }
    let export_to = export_to(ctx, &metadata.namespace, spec.export_to);
    let _ = spec.workload_selector;
    DestinationRule {
        export_to,
        metadata,
        host,
        subsets,
        traffic_policy: spec.traffic_policy.and_then(to_json),
        tls_modes,
    }
}

// ================================================================ loading

/// The networking kinds (and weir's local-mode `Service`): parses one
/// document of `kind` and adds it to `config`. Returns the duplicate-check
/// key, or `None` if the document had errors.
pub(crate) fn load(
    ctx: &mut DocCtx<'_>,
    kind: &str,
    value: Value,
    config: &mut Config,
) -> Option<(String, String, String)> {
    let before = ctx.error_count();
    let meta = match kind {
        "Gateway" => {
            let (meta, spec) = typed::<GatewaySpec>(ctx, value)?;
            check_meta(ctx, &meta);
            let g = gateway(ctx, meta.clone(), spec.unwrap_or_default());
            if ctx.error_count() > before {
                return None;
            }
            config.gateways.push(g);
            meta
        }
        "VirtualService" => {
            let (meta, spec) = typed::<VirtualServiceSpec>(ctx, value)?;
            check_meta(ctx, &meta);
            let v = virtual_service(ctx, meta.clone(), spec.unwrap_or_default());
            if ctx.error_count() > before {
                return None;
            }
            config.virtual_services.push(v);
            meta
        }
        "ServiceEntry" => {
            let (meta, spec) = typed::<ServiceEntrySpec>(ctx, value)?;
            check_meta(ctx, &meta);
            let e = service_entry(ctx, meta.clone(), spec.unwrap_or_default());
            if ctx.error_count() > before {
                return None;
            }
            config.service_entries.push(e);
            meta
        }
        "DestinationRule" => {
            let (meta, spec) = typed::<DestinationRuleSpec>(ctx, value)?;
            check_meta(ctx, &meta);
            let d = destination_rule(ctx, meta.clone(), spec.unwrap_or_default());
            if ctx.error_count() > before {
                return None;
            }
            config.destination_rules.push(d);
            meta
        }
        "Service" => {
            let (meta, spec) = typed::<ServiceSpec>(ctx, value)?;
            check_meta(ctx, &meta);
            let s = super::service::service(ctx, meta.clone(), spec.unwrap_or_default());
            if ctx.error_count() > before {
                return None;
            }
            config.services.push(s);
            meta
        }
        _ => return None,
    };
    Some((kind.to_owned(), meta.namespace, meta.name))
}

/// Checks across documents, once all are loaded: route destinations that
/// name no known host, port or subset. Warnings, not errors: in Kubernetes
/// the documents arrive in any order, and Istio accepts such routes too
/// (connections to them fail).
pub(crate) fn cross_check(config: &Config, warnings: &mut Vec<ConfigError>) {
    for vs in &config.virtual_services {
        gateway_binding_warnings(config, vs, warnings);
        let routes = vs
            .tls
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                r.route
                    .iter()
                    .enumerate()
                    .map(move |(j, d)| (format!("spec.tls[{i}].route[{j}].destination"), d))
            })
            .chain(vs.tcp.iter().enumerate().flat_map(|(i, r)| {
                r.route
                    .iter()
                    .enumerate()
                    .map(move |(j, d)| (format!("spec.tcp[{i}].route[{j}].destination"), d))
            }));
        for (field, rd) in routes {
            match config.resolve_destination(&rd.destination, vs.metadata.namespace.as_str()) {
                // Without a port, the server's port decides at connect time.
                Ok(_) | Err(ResolveError::PortRequired { .. }) => {}
                Err(e) => {
                    let Some(doc) = &vs.doc else { continue };
                    warnings.push(ConfigError {
                        document: Some(doc.clone()),
                        file: doc.file.clone(),
                        field: Some(field),
                        message: format!("{e}; connections routed here will be refused"),
                    });
                }
            }
        }
    }
}

/// What `istioctl analyze` reports about a VirtualService's `gateways`: an
/// entry naming no Gateway (ReferencedResourceNotFound), and a Gateway none
/// of whose servers admits the VirtualService's hosts from its namespace
/// (VirtualServiceHostNotFoundInGateway). Either way its routes are unused
/// there; warnings, as a file set may hold only part of a cluster's config.
fn gateway_binding_warnings(config: &Config, vs: &VirtualService, warnings: &mut Vec<ConfigError>) {
    let Some(doc) = &vs.doc else {
        return;
    };
    let mut warn = |field: String, message: String| {
        warnings.push(ConfigError {
            document: Some(doc.clone()),
            file: doc.file.clone(),
            field: Some(field),
            message,
        });
    };
    for (i, g) in vs.gateways.iter().enumerate() {
        let GatewayRef::Named { namespace, name } = g else {
            continue;
        };
        let Some(gw) = config.gateways.iter().find(|gw| g.is(&gw.metadata)) else {
            warn(
                format!("spec.gateways[{i}]"),
                format!("no Gateway {namespace}/{name} in this configuration: these routes are used by no gateway until it exists"),
            );
            continue;
        };
        let admitting: Vec<&Server> = gw
            .servers
            .iter()
            .filter(|s| s.admits(vs, namespace))
            .collect();
        if !vs.tcp.is_empty()
            && !admitting.is_empty()
            && admitting.iter().all(|s| s.is_passthrough())
        {
            warn(
                "spec.tcp".to_owned(),
                format!(
                    "Gateway {namespace}/{name} serves these hosts from PASSTHROUGH servers only, which route by tls routes (match.sniHosts), as in Istio: these tcp routes are not used by that gateway"
                ),
            );
        }
        if admitting.is_empty() {
            let hosts: Vec<String> = vs.hosts.iter().map(ToString::to_string).collect();
            let servers: Vec<String> = gw
                .servers
                .iter()
                .flat_map(|s| s.hosts.iter())
                .map(|h| match &h.namespace {
                    HostNamespace::Any => h.host.to_string(),
                    HostNamespace::Same => format!("./{}", h.host),
                    HostNamespace::Named(n) => format!("{n}/{}", h.host),
                    HostNamespace::None => format!("~/{}", h.host),
                })
                .collect();
            warn(
                "spec.hosts".to_owned(),
                format!(
                    "no server of Gateway {namespace}/{name} admits hosts [{}] from namespace {} (its server hosts: [{}]): these routes are not used by that gateway",
                    hosts.join(", "),
                    vs.metadata.namespace,
                    servers.join(", ")
                ),
            );
        }
    }
}

// ================================================================ resolution

/// Where a resolved destination came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum DestinationSource {
    /// A weir `Service` (`namespace/name`).
    Service { name: String },
    /// A `ServiceEntry` (`namespace/name`).
    ServiceEntry { name: String, location: Location },
    /// An IP address written as the destination host.
    Address,
}

/// One place a connection to a destination can go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Endpoint {
    /// A mesh Workload: reach it over HBONE (its address, port 15008) and
    /// expect its identity.
    Workload {
        namespace: String,
        name: String,
        address: SocketAddr,
        identity: SpiffeId,
    },
    /// A non-mesh address: plain TCP.
    Address { address: SocketAddr },
    /// A host name to resolve when connecting (ServiceEntry DNS resolution).
    Dns { host: String, port: u16 },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Workload {
                namespace,
                name,
                address,
                ..
            } => write!(f, "{address} (workload {namespace}/{name})"),
            Endpoint::Address { address } => address.fmt(f),
            Endpoint::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A route destination resolved against a config snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedDestination {
    /// The fully qualified host (`name.ns.svc.cluster.local` for a Service).
    pub host: String,
    /// The service port the route asked for.
    pub port: u16,
    pub source: DestinationSource,
    /// Every endpoint, with its weight (relative).
    pub endpoints: Vec<(Endpoint, u32)>,
}

/// Why a destination resolves to nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("destination host {0:?} is neither a weir Service (name, name.namespace[.svc[.cluster.local]]), nor a ServiceEntry host, nor an IP address")]
    UnknownHost(String),
    #[error("destination {host:?}: port {port} is not one of its ports ({available})")]
    UnknownPort {
        host: String,
        port: u16,
        available: String,
    },
    #[error("destination {host:?} has several ports ({available}) and none is the server's port: set destination.port.number")]
    PortRequired { host: String, available: String },
    #[error("destination {host:?}: no DestinationRule defines subset {subset:?}")]
    UnknownSubset { host: String, subset: String },
    #[error("destination {host:?} has no endpoints{why}")]
    NoEndpoints { host: String, why: String },
    #[error("destination host {host:?}: ServiceEntry {entry} is not exported to namespace {namespace} (its exportTo: {export_to})")]
    NotExported {
        host: String,
        entry: String,
        namespace: String,
        export_to: String,
    },
    #[error("destination {host:?}: DestinationRule {rule} asks for TLS origination (mode {mode}), which weir does not do; refused rather than sent in plaintext")]
    UpstreamTls {
        host: String,
        rule: String,
        mode: String,
    },
}

impl ResolveError {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ResolveError::UnknownHost(_) | ResolveError::NotExported { .. } => {
                "unknown_destination"
            }
            ResolveError::UnknownPort { .. } | ResolveError::PortRequired { .. } => {
                "destination_port"
            }
            ResolveError::UnknownSubset { .. } => "unknown_subset",
            ResolveError::NoEndpoints { .. } => "no_endpoints",
            ResolveError::UpstreamTls { .. } => "upstream_tls",
        }
    }
}

/// A Kubernetes-style service name: `svc` in `ns`, optionally one pod
/// (`pod.svc.ns.svc.cluster.local`, a headless service's per-pod name).
#[derive(Debug, PartialEq, Eq)]
struct ServiceName<'a> {
    pod: Option<&'a str>,
    name: &'a str,
    namespace: &'a str,
}

/// Splits `host` the way Kubernetes DNS and Istio read short names:
/// `name` (in `namespace`), `name.ns`, `name.ns.svc`, `name.ns.svc.<domain>`,
/// and `pod.name.ns.svc[.<domain>]`.
fn service_name<'a>(host: &'a str, namespace: &'a str) -> Option<ServiceName<'a>> {
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        [name] => Some(ServiceName {
            pod: None,
            name,
            namespace,
        }),
        [name, ns] => Some(ServiceName {
            pod: None,
            name,
            namespace: ns,
        }),
        [name, ns, "svc", ..] => Some(ServiceName {
            pod: None,
            name,
            namespace: ns,
        }),
        [pod, name, ns, "svc", ..] => Some(ServiceName {
            pod: Some(pod),
            name,
            namespace: ns,
        }),
        _ => None,
    }
}

/// The fully qualified form of a destination host as seen from `namespace`
/// (for matching DestinationRules).
fn qualify(host: &str, namespace: &str, config: &Config) -> String {
    if let Some(n) = service_name(host, namespace) {
        if config.service(n.namespace, n.name).is_some() {
            return match n.pod {
                Some(pod) => format!("{pod}.{}.{}.svc.{CLUSTER_DOMAIN}", n.name, n.namespace),
                None => format!("{}.{}.svc.{CLUSTER_DOMAIN}", n.name, n.namespace),
            };
        }
    }
    short_name_fqdn(host, namespace).unwrap_or_else(|| host.to_owned())
}

/// Istio's reading of a host without a dot (ResolveShortnameToFQDN): the
/// service of that name in `namespace`, `name.<namespace>.svc.cluster.local`.
/// `None` for a host with a dot, `*`, or an IP address.
fn short_name_fqdn(host: &str, namespace: &str) -> Option<String> {
    (!host.contains('.') && !host.contains('*') && !host.contains(':') && !host.is_empty())
        .then(|| format!("{host}.{namespace}.svc.{CLUSTER_DOMAIN}"))
}

impl Config {
    /// The weir `Service` `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.metadata.namespace == namespace && s.metadata.name == name)
    }

    /// The ServiceEntry that declares `host` (exactly, else, for a short
    /// host, its `name.<namespace>.svc.cluster.local`), preferring one in
    /// `namespace`; with `viewer`, only those its `exportTo` shows to a
    /// proxy in that namespace.
    pub fn service_entry_for(
        &self,
        host: &str,
        namespace: &str,
        viewer: Option<&str>,
    ) -> Option<&ServiceEntry> {
        self.service_entry_exactly(host, namespace, viewer)
            .or_else(|| {
                short_name_fqdn(host, namespace)
                    .and_then(|fq| self.service_entry_exactly(&fq, namespace, viewer))
            })
    }

    fn service_entry_exactly(
        &self,
        host: &str,
        namespace: &str,
        viewer: Option<&str>,
    ) -> Option<&ServiceEntry> {
        let mut found = self
            .service_entries
            .iter()
            .filter(|e| e.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
            .filter(|e| viewer.is_none_or(|v| e.visible_to(v)));
        let first = found.next()?;
        if first.metadata.namespace == namespace {
            return Some(first);
        }
        found
            .find(|e| e.metadata.namespace == namespace)
            .or(Some(first))
    }

    /// The DestinationRules that apply to `host` (read from `namespace`)
    /// for a proxy in namespace `viewer`, as Istio's destinationRule lookup
    /// finds them: the rules of the proxy's own namespace first, then
    /// those the service's namespace exports to it, then those the root
    /// namespace exports to it (a proxy in the root namespace looks at the
    /// root's rules exported nowhere else first, at its other rules last).
    /// Without `viewer` (weir check), every rule counts. Within each step,
    /// the rules whose host is the most specific match (exact over a longer
    /// wildcard over a shorter one, MostSpecificHostMatch); rules for the
    /// same host merge.
    fn rules_for(
        &self,
        host: &str,
        namespace: &str,
        viewer: Option<&str>,
    ) -> Vec<&DestinationRule> {
        let Some(proxy) = viewer else {
            return self.most_specific_rules(host, namespace, |_| true);
        };
        let root = self.settings.root_namespace.as_str();
        let first = if proxy == root {
            self.most_specific_rules(host, namespace, |d| {
                d.metadata.namespace == root && d.local() && !d.exported()
            })
        } else {
            self.most_specific_rules(host, namespace, |d| {
                d.metadata.namespace == proxy && d.local()
            })
        };
        if !first.is_empty() {
            return first;
        }
        let visible = |d: &DestinationRule| {
            d.exported() && exported_to(&d.export_to, &d.metadata.namespace, proxy)
        };
        let exported_from = |ns: &str| {
            let mut rules = self.most_specific_rules(host, namespace, |d| {
                d.metadata.namespace == ns && d.exported()
            });
            rules.retain(|d| visible(d));
            rules
        };
        if let Some(svc_ns) = self.service_namespace(host, namespace, proxy) {
            let rules = exported_from(svc_ns);
            if !rules.is_empty() {
                return rules;
            }
        }
        exported_from(root)
    }

    /// The namespace of the service `host` names (read from `namespace`)
    /// for a proxy in `viewer`: its ServiceEntry's, else its Service's.
    fn service_namespace<'a>(
        &'a self,
        host: &str,
        namespace: &str,
        viewer: &str,
    ) -> Option<&'a str> {
        if let Some(se) = self.service_entry_for(host, namespace, Some(viewer)) {
            return Some(se.metadata.namespace.as_str());
        }
        let n = service_name(host, namespace)?;
        self.service(n.namespace, n.name)
            .map(|s| s.metadata.namespace.as_str())
    }

    /// Of the DestinationRules `keep` admits, those whose host is the most
    /// specific match of `host` (read from `namespace`).
    fn most_specific_rules(
        &self,
        host: &str,
        namespace: &str,
        keep: impl Fn(&DestinationRule) -> bool,
    ) -> Vec<&DestinationRule> {
        let fq = qualify(host, namespace, self);
        let matching: Vec<(&DestinationRule, String, usize)> = self
            .destination_rules
            .iter()
            .filter(|d| keep(d))
            .filter_map(|d| {
                let h = qualify(&d.host, &d.metadata.namespace, self);
                let p = HostPattern::parse(&h)?;
                p.matches(&fq).then(|| (d, h, p.specificity()))
            })
            .collect();
        let Some(best) = matching.iter().map(|(_, _, s)| *s).max() else {
            return Vec::new();
        };
        let best_host = matching
            .iter()
            .find(|(_, _, s)| *s == best)
            .map(|(_, h, _)| h.clone())
            .unwrap_or_default();
        matching
            .into_iter()
            .filter(|(_, h, _)| *h == best_host)
            .map(|(d, _, _)| d)
            .collect()
    }

    fn subset_labels(
        &self,
        host: &str,
        namespace: &str,
        subset: &str,
        viewer: Option<&str>,
    ) -> Option<&BTreeMap<String, String>> {
        self.rules_for(host, namespace, viewer)
            .into_iter()
            .flat_map(|d| d.subsets.iter())
            .find(|s| s.name == subset)
            .map(|s| &s.labels)
    }

    fn endpoint_for_ip(&self, ip: IpAddr, port: u16) -> Endpoint {
        match self.workload_by_address(ip) {
            Some(w) => Endpoint::Workload {
                namespace: w.namespace().to_owned(),
                name: w.name().to_owned(),
                address: SocketAddr::new(ip, port),
                identity: w.identity(&self.settings.trust_domain),
            },
            None => Endpoint::Address {
                address: SocketAddr::new(ip, port),
            },
        }
    }

    /// Resolves a route destination (its host read relative to `namespace`,
    /// the VirtualService's) to endpoints:
    ///
    /// 1. a ServiceEntry host: its endpoints (STATIC: IPs, a Workload's IP is
    ///    reached over the mesh; `workloadSelector`: those Workloads; DNS:
    ///    names resolved at connect time, or the host itself), port mapped by
    ///    the endpoint's named port, else `targetPort`, else the port;
    /// 2. a weir `Service` (`name`, `name.ns`, `name.ns.svc`,
    ///    `name.ns.svc.cluster.local`, or `pod.name.ns.svc...` for one of its
    ///    Workloads): the Workloads its selector matches, at `targetPort`;
    /// 3. an IP address: that address (over the mesh if a Workload has it).
    ///
    /// A `subset` narrows the endpoints to the labels of that subset in a
    /// DestinationRule for the same host.
    pub fn resolve_destination(
        &self,
        d: &Destination,
        namespace: &str,
    ) -> Result<ResolvedDestination, ResolveError> {
        self.resolve_destination_on(d, namespace, None, None)
    }

    /// [`Config::resolve_destination`] for a connection that arrived on
    /// `listener_port` of a proxy in namespace `viewer`: as Istio, a
    /// destination without a port takes the host's only port, else the
    /// listener's (if the host has it); ServiceEntries and DestinationRules
    /// count as their `exportTo` and Istio's lookup order for that
    /// namespace say (without `viewer`, all of them).
    pub fn resolve_destination_on(
        &self,
        d: &Destination,
        namespace: &str,
        listener_port: Option<u16>,
        viewer: Option<&str>,
    ) -> Result<ResolvedDestination, ResolveError> {
        let r = self.resolve_endpoints(d, namespace, listener_port, viewer)?;
        // Per connection: look the rules up only if one asks for TLS
        // origination at all (cheap; usually none does).
        let originates = self.destination_rules.iter().any(|d| {
            d.tls_modes
                .iter()
                .any(|m| matches!(m.mode.as_str(), "SIMPLE" | "MUTUAL"))
        });
        if !originates {
            return Ok(r);
        }
        if let Some((rule, mode)) =
            self.upstream_tls_mode(&d.host, namespace, r.port, d.subset.as_deref(), viewer)
        {
            if matches!(mode, "SIMPLE" | "MUTUAL") {
                return Err(ResolveError::UpstreamTls {
                    host: d.host.clone(),
                    rule,
                    mode: mode.to_owned(),
                });
            }
        }
        Ok(r)
    }

    /// The `tls.mode` DestinationRules set for `host` (read from
    /// `namespace`) on `port` and `subset`, with the rule's name: the most
    /// specific setting wins (a subset's over the rule's, a port's over the
    /// policy's top level), as in Istio.
    fn upstream_tls_mode(
        &self,
        host: &str,
        namespace: &str,
        port: u16,
        subset: Option<&str>,
        viewer: Option<&str>,
    ) -> Option<(String, &str)> {
        self.rules_for(host, namespace, viewer)
            .into_iter()
            .flat_map(|d| d.tls_modes.iter().map(move |m| (d, m)))
            .filter(|(_, m)| m.subset.is_none() || m.subset.as_deref() == subset)
            .filter(|(_, m)| m.port.is_none_or(|p| p == port))
            .max_by_key(|(d, m)| {
                // Most specific setting first; between rules for one host,
                // the oldest one's policy, as Istio merges them.
                (
                    m.subset.is_some(),
                    m.port.is_some(),
                    std::cmp::Reverse((
                        d.metadata.creation_timestamp.clone(),
                        d.metadata.name.clone(),
                    )),
                )
            })
            .map(|(d, m)| (d.metadata.key(), m.mode.as_str()))
    }

    fn resolve_endpoints(
        &self,
        d: &Destination,
        namespace: &str,
        listener_port: Option<u16>,
        viewer: Option<&str>,
    ) -> Result<ResolvedDestination, ResolveError> {
        if let Some(svc) = d
            .host
            .parse::<IpAddr>()
            .ok()
            .and_then(|ip| self.mesh_service_by_cluster_ip(ip))
        {
            // A Service's cluster IP stands for the Service (subsets
            // included): its Workloads over the mesh, not the virtual
            // address. One whose Pods are all outside the mesh stays an
            // address.
            let by_name = Destination {
                host: format!(
                    "{}.{}.svc.{CLUSTER_DOMAIN}",
                    svc.metadata.name, svc.metadata.namespace
                ),
                port: d.port,
                subset: d.subset.clone(),
            };
            return self.resolve_endpoints(&by_name, namespace, listener_port, viewer);
        }
        let subset = match &d.subset {
            Some(s) => Some(
                self.subset_labels(&d.host, namespace, s, viewer)
                    .ok_or_else(|| ResolveError::UnknownSubset {
                        host: d.host.clone(),
                        subset: s.clone(),
                    })?,
            ),
            None => None,
        };
        let in_subset = |labels: &BTreeMap<String, String>| {
            subset.is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
        };
        if let Some(se) = self.service_entry_for(&d.host, namespace, viewer) {
            return self.resolve_entry(se, d, listener_port, &in_subset);
        }
        if let Some(n) = service_name(&d.host, namespace) {
            if let Some(svc) = self.service(n.namespace, n.name) {
                let available = || {
                    svc.ports
                        .iter()
                        .map(|p| p.port.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let port = match (d.port, svc.ports.as_slice()) {
                    (Some(p), ports) => ports.iter().find(|sp| sp.port == p).ok_or_else(|| {
                        ResolveError::UnknownPort {
                            host: d.host.clone(),
                            port: p,
                            available: available(),
                        }
                    })?,
                    (None, [only]) => only,
                    (None, ports) => ports
                        .iter()
                        .find(|sp| Some(sp.port) == listener_port)
                        .ok_or_else(|| ResolveError::PortRequired {
                            host: d.host.clone(),
                            available: available(),
                        })?,
                };
                let target = port.target_port.unwrap_or(port.port);
                let matching: Vec<&Workload> = self
                    .workloads
                    .iter()
                    .filter(|w| w.namespace() == svc.metadata.namespace)
                    .filter(|w| svc.selects(&w.metadata.labels))
                    .filter(|w| n.pod.is_none_or(|pod| w.name() == pod))
                    .filter(|w| in_subset(&w.metadata.labels))
                    .collect();
                // The Service's name takes ready Workloads only (as its
                // endpoints do); one Pod's own name (`pod.svc.ns...`)
                // reaches that Pod, ready or not.
                let endpoints: Vec<(Endpoint, u32)> = matching
                    .iter()
                    .filter(|w| svc.sends_to(w) || n.pod.is_some())
                    .map(|w| (self.endpoint_for_ip(w.address, target), 1))
                    .collect();
                let host = qualify(&d.host, namespace, self);
                if endpoints.is_empty() {
                    let why = if matching.is_empty() {
                        format!(
                            ": no Workload in namespace {} matches Service {}'s selector{}{}",
                            svc.metadata.namespace,
                            svc.metadata.name,
                            n.pod.map(|p| format!(" with name {p}")).unwrap_or_default(),
                            if subset.is_some() {
                                " and the subset's labels"
                            } else {
                                ""
                            }
                        )
                    } else {
                        format!(
                            ": none of the {} Workloads Service {} selects{} is ready",
                            matching.len(),
                            svc.metadata.key(),
                            if subset.is_some() {
                                " in the subset"
                            } else {
                                ""
                            }
                        )
                    };
                    return Err(ResolveError::NoEndpoints { host, why });
                }
                return Ok(ResolvedDestination {
                    host,
                    port: port.port,
                    source: DestinationSource::Service {
                        name: svc.metadata.key(),
                    },
                    endpoints,
                });
            }
        }
        if let Ok(ip) = d.host.parse::<IpAddr>() {
            let Some(port) = d.port.or(listener_port) else {
                return Err(ResolveError::PortRequired {
                    host: d.host.clone(),
                    available: "any".to_owned(),
                });
            };
            return Ok(ResolvedDestination {
                host: d.host.clone(),
                port,
                source: DestinationSource::Address,
                endpoints: vec![(self.endpoint_for_ip(ip, port), 1)],
            });
        }
        if let Some(v) = viewer {
            // Not seen because of exportTo: say so.
            if let Some(se) = self.service_entry_for(&d.host, namespace, None) {
                return Err(ResolveError::NotExported {
                    host: d.host.clone(),
                    entry: se.metadata.key(),
                    namespace: v.to_owned(),
                    export_to: se.export_to.join(", "),
                });
            }
        }
        Err(ResolveError::UnknownHost(d.host.clone()))
    }

    fn resolve_entry(
        &self,
        se: &ServiceEntry,
        d: &Destination,
        listener_port: Option<u16>,
        in_subset: &dyn Fn(&BTreeMap<String, String>) -> bool,
    ) -> Result<ResolvedDestination, ResolveError> {
        let available = || {
            se.ports
                .iter()
                .map(|p| p.number.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let port =
            match (d.port, se.ports.as_slice()) {
                (Some(p), ports) => ports.iter().find(|sp| sp.number == p).ok_or_else(|| {
                    ResolveError::UnknownPort {
                        host: d.host.clone(),
                        port: p,
                        available: available(),
                    }
                })?,
                (None, [only]) => only,
                (None, ports) => ports
                    .iter()
                    .find(|sp| Some(sp.number) == listener_port)
                    .ok_or_else(|| ResolveError::PortRequired {
                        host: d.host.clone(),
                        available: available(),
                    })?,
            };
        let default_port = port.target_port.unwrap_or(port.number);
        let mut endpoints = Vec::new();
        if let Some(sel) = &se.workload_selector {
            for w in self
                .workloads
                .iter()
                .filter(|w| w.namespace() == se.metadata.namespace)
                .filter(|w| sel.iter().all(|(k, v)| w.metadata.labels.get(k) == Some(v)))
                .filter(|w| in_subset(&w.metadata.labels))
                // As a Service's: ready Workloads only.
                .filter(|w| w.ready)
            {
                endpoints.push((self.endpoint_for_ip(w.address, default_port), 1));
            }
        } else if !se.endpoints.is_empty() {
            for e in se.endpoints.iter().filter(|e| in_subset(&e.labels)) {
                let p = e.ports.get(&port.name).copied().unwrap_or(default_port);
                let ep = match &e.address {
                    EndpointAddress::Ip(ip) => self.endpoint_for_ip(*ip, p),
                    EndpointAddress::Dns(h) => Endpoint::Dns {
                        host: h.clone(),
                        port: p,
                    },
                };
                endpoints.push((ep, e.weight.max(1)));
            }
        } else {
            match se.resolution {
                Resolution::Dns | Resolution::DnsRoundRobin => endpoints.push((
                    Endpoint::Dns {
                        host: d.host.clone(),
                        port: default_port,
                    },
                    1,
                )),
                Resolution::None => {
                    for a in se
                        .addresses
                        .iter()
                        .filter(|a| a.prefix_len() == a.max_prefix_len())
                    {
                        endpoints.push((self.endpoint_for_ip(a.addr(), default_port), 1));
                    }
                }
                Resolution::Static => {}
            }
        }
        if endpoints.is_empty() {
            return Err(ResolveError::NoEndpoints {
                host: d.host.clone(),
                why: format!(
                    ": ServiceEntry {} gives none{}",
                    se.metadata.key(),
                    if se.workload_selector.is_some() {
                        " (no ready Workload in its namespace matches its workloadSelector)"
                    } else if se.resolution == Resolution::None {
                        " (resolution NONE connects to the address a client asked for, which a gateway does not have: use STATIC or DNS, or single-IP addresses)"
                    } else {
                        ""
                    }
                ),
            });
        }
        Ok(ResolvedDestination {
            host: d.host.clone(),
            port: port.number,
            source: DestinationSource::ServiceEntry {
                name: se.metadata.key(),
                location: se.location,
            },
            endpoints,
        })
    }

    /// The Gateways whose selector matches a gateway instance's `labels`.
    pub fn gateways_selecting<'a>(
        &'a self,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a Gateway> {
        self.gateways.iter().filter(move |g| g.selects(labels))
    }
}

mod shape;

#[cfg(test)]
mod tests;
