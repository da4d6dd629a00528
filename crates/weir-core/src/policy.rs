//! The policy engine: Istio's PeerAuthentication and L4 AuthorizationPolicy
//! semantics, as ztunnel applies them. Pure functions of a [`Config`] snapshot
//! and a connection's facts; no I/O.
//!
//! PeerAuthentication: the effective mode for (workload, port) comes from the
//! oldest selector policy in the workload's namespace that selects it (its
//! `portLevelMtls` entry for the port first), then the oldest namespace-wide
//! policy, then the oldest mesh-wide policy in the root namespace; `UNSET`
//! inherits from the next level; no policy at all means `PERMISSIVE`.
//!
//! AuthorizationPolicy: policies in the workload's namespace or the root
//! namespace whose selector matches apply. DENY policies are evaluated first;
//! then, if any ALLOW policy applies, one of its rules must match; with none
//! the connection is allowed. L7-only fields: an ALLOW rule that uses them
//! never matches; a DENY rule is enforced without them (fail closed).
//!
//! [`kafka`]: KafkaAuthorizationPolicy at a KafkaGateway (topic-level
//! authorization by identity).

use std::net::IpAddr;

use serde::Serialize;

use crate::config::{
    Action, AuthorizationPolicy, Condition, ConditionKey, ConditionValues, Config, MtlsMode,
    Operation, PeerAuthentication, Rule, Source, StringMatch, Workload, WorkloadSelector,
};
use crate::spiffe::SpiffeId;

pub mod kafka;
#[cfg(test)]
mod tests;

/// What the destination side knows about an inbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The peer's verified identity; `None` for a plaintext connection.
    pub peer: Option<SpiffeId>,
    /// The source address, if known.
    pub source_ip: Option<IpAddr>,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// The outcome for one connection, with what decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub decision: Decision,
    /// The effective mTLS mode for the destination workload and port.
    pub mtls_mode: MtlsMode,
    /// `namespace/name` of the policy that decided, if one did.
    pub policy: Option<String>,
    /// The kind of that policy (`PeerAuthentication`/`AuthorizationPolicy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_kind: Option<&'static str>,
    /// Index of the matching rule in that policy, if a rule decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    pub reason: String,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.decision == Decision::Allow
    }
}

/// The effective mTLS mode and the PeerAuthentication it came from.
#[derive(Debug, Clone, Copy)]
pub struct EffectiveMtls<'a> {
    pub mode: MtlsMode,
    pub policy: Option<&'a PeerAuthentication>,
    /// Whether the mode came from a `portLevelMtls` entry.
    pub port_level: bool,
}

fn selects(selector: &Option<WorkloadSelector>, w: &Workload) -> bool {
    selector
        .as_ref()
        .is_none_or(|s| s.matches(&w.metadata.labels))
}

/// A selector with no labels is namespace-wide, as in Istio.
fn has_selector(selector: &Option<WorkloadSelector>) -> bool {
    selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty())
}

/// Oldest first: creation timestamp (missing sorts first), then name.
fn oldest<'a>(it: impl Iterator<Item = &'a PeerAuthentication>) -> Option<&'a PeerAuthentication> {
    it.min_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    })
}

/// A PeerAuthentication that never applies where another, older one does.
#[derive(Debug)]
pub struct ShadowedPeerAuthentication<'a> {
    pub ignored: &'a PeerAuthentication,
    /// The oldest policy at the same level, which applies instead.
    pub applies: &'a PeerAuthentication,
    /// The workloads both select (selector policies); empty for
    /// namespace-wide and mesh-wide policies.
    pub workloads: Vec<&'a Workload>,
}

/// Every PeerAuthentication that [`effective_mtls`] passes over because an
/// older one applies at the same level: a second namespace-wide (or
/// mesh-wide) policy of a namespace, and selector policies for the
/// workloads an older selector policy also selects.
pub fn shadowed_peer_authentications(config: &Config) -> Vec<ShadowedPeerAuthentication<'_>> {
    let root = config.settings.root_namespace.as_str();
    let pas = &config.peer_authentications;
    let mut out = Vec::new();
    let mut namespaces: Vec<&str> = pas.iter().map(|p| p.metadata.namespace.as_str()).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    for ns in namespaces {
        let wide = || {
            pas.iter()
                .filter(move |p| p.metadata.namespace == ns && !has_selector(&p.selector))
        };
        if let Some(applies) = oldest(wide()) {
            out.extend(
                wide()
                    .filter(|p| !std::ptr::eq(*p, applies))
                    .map(|ignored| ShadowedPeerAuthentication {
                        ignored,
                        applies,
                        workloads: Vec::new(),
                    }),
            );
        }
    }
    // (ignored, applies) -> the workloads where it happens, in config order.
    let mut by_pair: Vec<ShadowedPeerAuthentication<'_>> = Vec::new();
    for w in &config.workloads {
        let selecting = || {
            pas.iter().filter(|p| {
                p.metadata.namespace == w.namespace()
                    && p.metadata.namespace != root
                    && has_selector(&p.selector)
                    && selects(&p.selector, w)
            })
        };
        let Some(applies) = oldest(selecting()) else {
            continue;
        };
        for ignored in selecting().filter(|p| !std::ptr::eq(*p, applies)) {
            match by_pair
                .iter_mut()
                .find(|s| std::ptr::eq(s.ignored, ignored) && std::ptr::eq(s.applies, applies))
            {
                Some(s) => s.workloads.push(w),
                None => by_pair.push(ShadowedPeerAuthentication {
                    ignored,
                    applies,
                    workloads: vec![w],
                }),
            }
        }
    }
    out.extend(by_pair);
    out
}

/// Resolves PeerAuthentication for a workload and port.
pub fn effective_mtls<'a>(config: &'a Config, w: &Workload, port: u16) -> EffectiveMtls<'a> {
    let root = config.settings.root_namespace.as_str();
    let pas = &config.peer_authentications;
    let workload_level = oldest(pas.iter().filter(|p| {
        p.metadata.namespace == w.namespace()
            && p.metadata.namespace != root
            && has_selector(&p.selector)
            && selects(&p.selector, w)
    }));
    let namespace_level = oldest(
        pas.iter()
            .filter(|p| p.metadata.namespace == w.namespace() && !has_selector(&p.selector)),
    );
    let mesh_level = oldest(
        pas.iter()
            .filter(|p| p.metadata.namespace == root && !has_selector(&p.selector)),
    );

    if let Some(p) = workload_level {
        if let Some(&m) = p.port_level_mtls.get(&port) {
            if m != MtlsMode::Unset {
                return EffectiveMtls {
                    mode: m,
                    policy: Some(p),
                    port_level: true,
                };
            }
        }
        if p.mtls != MtlsMode::Unset {
            return EffectiveMtls {
                mode: p.mtls,
                policy: Some(p),
                port_level: false,
            };
        }
    }
    for p in [namespace_level, mesh_level].into_iter().flatten() {
        if p.mtls != MtlsMode::Unset {
            return EffectiveMtls {
                mode: p.mtls,
                policy: Some(p),
                port_level: false,
            };
        }
    }
    EffectiveMtls {
        mode: MtlsMode::Permissive,
        policy: None,
        port_level: false,
    }
}

/// The AuthorizationPolicies that apply to a workload.
pub fn applicable_policies<'a>(
    config: &'a Config,
    w: &'a Workload,
) -> impl Iterator<Item = &'a AuthorizationPolicy> + 'a {
    let root = config.settings.root_namespace.as_str();
    config.authorization_policies.iter().filter(move |p| {
        (p.metadata.namespace == w.namespace() || p.metadata.namespace == root)
            && selects(&p.selector, w)
    })
}

fn any_string(ms: &[StringMatch], v: Option<&str>) -> bool {
    v.is_some_and(|v| ms.iter().any(|m| m.matches(v)))
}

fn any_ip(nets: &[ipnet::IpNet], ip: Option<IpAddr>) -> bool {
    ip.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)))
}

/// `values` (if set) must match and `not_values` (if set) must not.
fn field(positive: bool, negative: bool, pos_set: bool, neg_set: bool) -> bool {
    (!pos_set || positive) && (!neg_set || !negative)
}

struct Facts<'a> {
    principal: Option<String>,
    namespace: Option<&'a str>,
    conn: &'a Connection,
}

fn source_matches(s: &Source, f: &Facts<'_>) -> bool {
    let p = f.principal.as_deref();
    let peer = f.conn.peer.as_ref();
    field(
        any_string(&s.principals, p),
        any_string(&s.not_principals, p),
        !s.principals.is_empty(),
        !s.not_principals.is_empty(),
    ) && field(
        any_string(&s.namespaces, f.namespace),
        any_string(&s.not_namespaces, f.namespace),
        !s.namespaces.is_empty(),
        !s.not_namespaces.is_empty(),
    ) && field(
        s.service_accounts.iter().any(|m| m.matches(peer)),
        s.not_service_accounts.iter().any(|m| m.matches(peer)),
        !s.service_accounts.is_empty(),
        !s.not_service_accounts.is_empty(),
    ) && field(
        any_ip(&s.ip_blocks, f.conn.source_ip),
        any_ip(&s.not_ip_blocks, f.conn.source_ip),
        !s.ip_blocks.is_empty(),
        !s.not_ip_blocks.is_empty(),
    )
}

fn operation_matches(o: &Operation, f: &Facts<'_>) -> bool {
    let port = f.conn.destination_port;
    field(
        o.ports.contains(&port),
        o.not_ports.contains(&port),
        !o.ports.is_empty(),
        !o.not_ports.is_empty(),
    )
}

fn values_match(v: &ConditionValues, key: &ConditionKey, f: &Facts<'_>) -> bool {
    match (v, key) {
        (ConditionValues::Ips(nets), ConditionKey::SourceIp) => any_ip(nets, f.conn.source_ip),
        (ConditionValues::Ips(nets), ConditionKey::DestinationIp) => {
            any_ip(nets, Some(f.conn.destination_ip))
        }
        (ConditionValues::Ports(ps), _) => ps.contains(&f.conn.destination_port),
        (ConditionValues::Strings(ms), ConditionKey::SourcePrincipal) => {
            any_string(ms, f.principal.as_deref())
        }
        (ConditionValues::Strings(ms), ConditionKey::SourceNamespace) => {
            any_string(ms, f.namespace)
        }
        _ => false,
    }
}

fn values_len(v: &ConditionValues) -> usize {
    match v {
        ConditionValues::Strings(s) => s.len(),
        ConditionValues::Ips(s) => s.len(),
        ConditionValues::Ports(s) => s.len(),
    }
}

fn condition_matches(c: &Condition, f: &Facts<'_>) -> bool {
    if matches!(c.key, ConditionKey::L7(_)) {
        // Only reached for DENY rules, which are enforced without L7 parts.
        return true;
    }
    field(
        values_match(&c.values, &c.key, f),
        values_match(&c.not_values, &c.key, f),
        values_len(&c.values) > 0,
        values_len(&c.not_values) > 0,
    )
}

fn rule_matches(action: Action, r: &Rule, f: &Facts<'_>) -> bool {
    if action == Action::Allow && r.uses_l7() {
        // ztunnel cannot see HTTP attributes: an ALLOW rule that needs them never matches.
        return false;
    }
    (r.from.is_empty() || r.from.iter().any(|s| source_matches(s, f)))
        && (r.to.is_empty() || r.to.iter().any(|o| operation_matches(o, f)))
        && r.when.iter().all(|c| condition_matches(c, f))
}

fn first_match(p: &AuthorizationPolicy, f: &Facts<'_>) -> Option<usize> {
    p.rules.iter().position(|r| rule_matches(p.action, r, f))
}

/// The AuthorizationPolicy decision alone (no mTLS mode check).
pub fn authorize(config: &Config, w: &Workload, conn: &Connection, mtls: MtlsMode) -> Verdict {
    let facts = Facts {
        principal: conn.peer.as_ref().map(SpiffeId::principal),
        namespace: conn.peer.as_ref().map(SpiffeId::namespace),
        conn,
    };
    let applicable: Vec<&AuthorizationPolicy> = applicable_policies(config, w).collect();
    let verdict = |decision, p: Option<&AuthorizationPolicy>, rule, reason| Verdict {
        decision,
        mtls_mode: mtls,
        policy: p.map(|p| p.metadata.key()),
        policy_kind: p.map(|_| "AuthorizationPolicy"),
        rule,
        reason,
    };
    for p in applicable.iter().filter(|p| p.action == Action::Deny) {
        if let Some(i) = first_match(p, &facts) {
            return verdict(
                Decision::Deny,
                Some(p),
                Some(i),
                format!(
                    "denied by DENY AuthorizationPolicy {} (rule {i})",
                    p.metadata.key()
                ),
            );
        }
    }
    let allows: Vec<&&AuthorizationPolicy> = applicable
        .iter()
        .filter(|p| p.action == Action::Allow)
        .collect();
    if allows.is_empty() {
        return verdict(
            Decision::Allow,
            None,
            None,
            format!(
                "no ALLOW AuthorizationPolicy applies to {}/{}, so it is allowed unless denied",
                w.namespace(),
                w.name()
            ),
        );
    }
    for p in &allows {
        if let Some(i) = first_match(p, &facts) {
            return verdict(
                Decision::Allow,
                Some(p),
                Some(i),
                format!(
                    "allowed by ALLOW AuthorizationPolicy {} (rule {i})",
                    p.metadata.key()
                ),
            );
        }
    }
    let names: Vec<String> = allows.iter().map(|p| p.metadata.key()).collect();
    // A single ALLOW policy that could have matched is the one to blame.
    let blame: Option<&AuthorizationPolicy> = (allows.len() == 1).then(|| *allows[0]);
    // `spec: {}` and friends: an ALLOW policy without rules allows nothing.
    let ruleless: Vec<String> = allows
        .iter()
        .filter(|p| p.rules.is_empty())
        .map(|p| p.metadata.key())
        .collect();
    let reason = match (&blame, ruleless.len()) {
        (Some(p), 1) => format!(
            "ALLOW AuthorizationPolicy {} has no rules: it allows nothing, so every connection to {}/{} is denied",
            p.metadata.key(),
            w.namespace(),
            w.name()
        ),
        (Some(p), 0) => format!(
            "ALLOW AuthorizationPolicy {} applies to {}/{} but none of its rules matched",
            p.metadata.key(),
            w.namespace(),
            w.name()
        ),
        (None, 0) => format!(
            "ALLOW AuthorizationPolicies apply to {}/{} ({}) but none of their rules matched",
            w.namespace(),
            w.name(),
            names.join(", ")
        ),
        (_, n) => format!(
            "ALLOW AuthorizationPolicies apply to {}/{} ({}) but none of their rules matched ({} {} no rules: {} nothing)",
            w.namespace(),
            w.name(),
            names.join(", "),
            ruleless.join(", "),
            if n == 1 { "has" } else { "have" },
            if n == 1 { "it allows" } else { "they allow" },
        ),
    };
    verdict(Decision::Deny, blame, None, reason)
}

/// The full inbound decision for a connection to workload `w`: a peer from
/// another trust domain is refused (as at the handshake), then the mTLS mode
/// (STRICT refuses plaintext), then AuthorizationPolicy.
pub fn evaluate(config: &Config, w: &Workload, conn: &Connection) -> Verdict {
    let mtls = effective_mtls(config, w, conn.destination_port);
    let mesh = &config.settings.trust_domain;
    if let Some(peer) = conn.peer.as_ref().filter(|p| p.trust_domain() != mesh) {
        // The node proxy verifies peer certificates against the mesh's trust
        // domain: this peer never gets past the handshake, whatever a policy
        // (e.g. `principals: ["*/sa/x"]`) would say.
        return Verdict {
            decision: Decision::Deny,
            mtls_mode: mtls.mode,
            policy: None,
            policy_kind: None,
            rule: None,
            reason: format!(
                "{peer} is in trust domain {:?}, not the mesh's ({:?}): the node proxy refuses its certificate at the mTLS handshake, before any policy",
                peer.trust_domain().as_str(),
                mesh.as_str()
            ),
        };
    }
    if conn.peer.is_none() && !mtls.mode.allows_plaintext() {
        let pa = mtls.policy.map(|p| p.metadata.key());
        return Verdict {
            decision: Decision::Deny,
            mtls_mode: mtls.mode,
            policy_kind: pa.as_ref().map(|_| "PeerAuthentication"),
            reason: format!(
                "mTLS is STRICT for {}/{} port {} (PeerAuthentication {}{}): plaintext connections are refused",
                w.namespace(),
                w.name(),
                conn.destination_port,
                pa.as_deref().unwrap_or("?"),
                if mtls.port_level { ", port-level" } else { "" },
            ),
            policy: pa,
            rule: None,
        };
    }
    authorize(config, w, conn, mtls.mode)
}
