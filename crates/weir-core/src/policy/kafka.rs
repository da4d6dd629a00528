//! Kafka topic authorization at a KafkaGateway: [`KafkaAuthorizationPolicy`]
//! evaluated for one request (principal, resource, operation). Pure; the
//! policies that apply to a gateway are compiled once per config snapshot
//! ([`KafkaAuthorizer::for_gateway`]), and [`KafkaAuthorizer::authorize`]
//! allocates nothing.
//!
//! Semantics (`docs/kafka-authorization.md` has the table):
//! 1. The policies that apply to gateway `ns/name`: those in `ns` whose
//!    `gateways` is unset or names it, and those in the root namespace
//!    (whose `gateways`, if set, names it).
//! 2. If a rule of an applicable **DENY** policy matches → deny. A DENY
//!    rule's operation denies only itself (`All` denies everything): Kafka
//!    applies no implications to DENY.
//! 3. If no **ALLOW** policy applies → allow.
//! 4. If a rule of an applicable ALLOW policy matches → allow, with Kafka's
//!    implications (`Read`/`Write`/`Delete`/`Alter` grant `Describe`,
//!    `AlterConfigs` grants `DescribeConfigs`, `All` grants everything);
//!    otherwise deny. An ALLOW policy without rules allows nothing.
//!
//! Policies are tried in config order and rules in written order; the first
//! match is reported.
//!
//! Two requests are authorized by more than one question, as Kafka's
//! `KafkaApis` does: creating a topic ([`KafkaAuthorizer::authorize_topic_creation`]:
//! Create on the cluster, else Create on the topic) and an idempotent
//! producer's InitProducerId ([`KafkaAuthorizer::authorize_idempotent_producer`]:
//! IdempotentWrite on the cluster, else Write on any topic, Kafka's
//! `authorizeByResourceType` in [`KafkaAuthorizer::authorize_by_resource_type`]).

use std::fmt;
use std::sync::Arc;

use crate::config::kafka::{
    KafkaRule, PatternType, PrincipalMatcher, PrincipalPattern, ResourcePattern,
};
use crate::config::{Action, Config, KafkaAuthorizationPolicy, StringMatch};
use crate::kafka::{Operation, Principal, ResourceType};
use crate::spiffe::SpiffeId;

#[cfg(test)]
mod tests;

/// What decided a [`KafkaDecision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KafkaBasis {
    /// A rule of a DENY policy matched.
    DenyRule,
    /// A rule of an ALLOW policy matched.
    AllowRule,
    /// No ALLOW policy applies to the gateway, and no DENY rule matched.
    NoAllowPolicy,
    /// ALLOW policies apply, and none of their rules matched.
    NoAllowRuleMatched,
}

impl KafkaBasis {
    /// A short label, e.g. for a metric (`deny_rule`, `allow_rule`,
    /// `no_allow_policy`, `no_allow_rule_matched`).
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaBasis::DenyRule => "deny_rule",
            KafkaBasis::AllowRule => "allow_rule",
            KafkaBasis::NoAllowPolicy => "no_allow_policy",
            KafkaBasis::NoAllowRuleMatched => "no_allow_rule_matched",
        }
    }

    /// The reason in words.
    pub fn reason(self) -> &'static str {
        match self {
            KafkaBasis::DenyRule => "a DENY rule matched",
            KafkaBasis::AllowRule => "an ALLOW rule matched",
            KafkaBasis::NoAllowPolicy => {
                "no ALLOW KafkaAuthorizationPolicy applies to the gateway, so it is allowed unless denied"
            }
            KafkaBasis::NoAllowRuleMatched => {
                "ALLOW KafkaAuthorizationPolicies apply to the gateway but none of their rules matched"
            }
        }
    }

    pub fn allowed(self) -> bool {
        matches!(self, KafkaBasis::AllowRule | KafkaBasis::NoAllowPolicy)
    }
}

/// The decision for one request, with what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaDecision {
    pub allowed: bool,
    /// `namespace/name` of the deciding policy: the matching DENY or ALLOW
    /// policy, or the single applicable ALLOW policy none of whose rules
    /// matched; `None` when the default decided (or several ALLOW policies
    /// applied and none matched).
    pub policy: Option<Arc<str>>,
    /// Index of the matching rule in that policy's `rules`.
    pub rule: Option<usize>,
    /// [`KafkaBasis::reason`].
    pub reason: &'static str,
    pub basis: KafkaBasis,
    /// For the requests Kafka authorizes by more than one question (topic
    /// creation, an idempotent producer): which other question decided, or
    /// why it did not help. `None` for a plain question.
    pub note: Option<&'static str>,
}

/// [`KafkaDecision::note`]: Create on the cluster allowed a topic's creation.
pub const NOTE_CLUSTER_CREATE: &str =
    "Create on the cluster lets CreateTopics and Metadata auto-creation create every topic, as in Kafka";
/// [`KafkaDecision::note`]: neither the topic nor the cluster allows Create.
pub const NOTE_NO_CLUSTER_CREATE: &str =
    "Create on the cluster, which would cover every topic, is not allowed either";
/// [`KafkaDecision::note`]: Write on some topic allowed an idempotent producer.
pub const NOTE_TOPIC_WRITE: &str =
    "Write on a topic is enough for an idempotent producer's InitProducerId (Kafka 2.8+, KIP-679)";
/// [`KafkaDecision::note`]: no IdempotentWrite and no topic Write either.
pub const NOTE_NO_TOPIC_WRITE: &str =
    "Write on some topic, which would also do for an idempotent producer (KIP-679), is not allowed either";

impl fmt::Display for KafkaDecision {
    /// One sentence: `denied by DENY KafkaAuthorizationPolicy kafka/x (rule 0)`,
    /// followed by `; <note>` when there is a note.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_basis(f)?;
        match self.note {
            Some(n) => write!(f, "; {n}"),
            None => Ok(()),
        }
    }
}

impl KafkaDecision {
    fn fmt_basis(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.basis, &self.policy, self.rule) {
            (KafkaBasis::DenyRule, Some(p), Some(r)) => {
                write!(f, "denied by DENY KafkaAuthorizationPolicy {p} (rule {r})")
            }
            (KafkaBasis::AllowRule, Some(p), Some(r)) => {
                write!(f, "allowed by ALLOW KafkaAuthorizationPolicy {p} (rule {r})")
            }
            (KafkaBasis::NoAllowRuleMatched, Some(p), _) => write!(
                f,
                "ALLOW KafkaAuthorizationPolicy {p} applies to the gateway but none of its rules matched"
            ),
            _ => f.write_str(self.reason),
        }
    }
}

/// The policies that apply to one KafkaGateway, compiled for fast evaluation.
/// Cheap to share (`Send + Sync`); rebuild it when the config changes.
#[derive(Debug, Clone)]
pub struct KafkaAuthorizer {
    gateway: Arc<str>,
    deny: Vec<CompiledPolicy>,
    allow: Vec<CompiledPolicy>,
    /// `spiffe://<trust-domain>/`: SANs of external certificates in the
    /// mesh's own trust domain are never matched (an external CA cannot
    /// assert a mesh identity).
    mesh_san_prefix: String,
}

#[derive(Debug, Clone)]
struct CompiledPolicy {
    key: Arc<str>,
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    index: usize,
    /// The requested operations the rule covers, as [`Operation::bit`]s.
    ops: u16,
    resources: Vec<ResourcePattern>,
    principals: Vec<PrincipalMatcher>,
    not_principals: Vec<PrincipalMatcher>,
}

fn op_mask(ops: &[Operation], covers: fn(Operation, Operation) -> bool) -> u16 {
    if ops.is_empty() {
        return u16::MAX;
    }
    Operation::ALL
        .into_iter()
        .filter(|&requested| ops.iter().any(|&granted| covers(granted, requested)))
        .fold(0, |m, op| m | op.bit())
}

fn matchers(ps: &[PrincipalPattern]) -> Vec<PrincipalMatcher> {
    ps.iter().map(|p| p.matcher.clone()).collect()
}

impl CompiledRule {
    fn new(index: usize, r: &KafkaRule, action: Action) -> Self {
        let covers = match action {
            Action::Allow => Operation::covers,
            Action::Deny => Operation::covers_for_deny,
        };
        Self {
            index,
            ops: op_mask(&r.operations, covers),
            resources: r.resources.clone(),
            principals: matchers(&r.principals),
            not_principals: matchers(&r.not_principals),
        }
    }

    fn matches(&self, req: &Request<'_>) -> bool {
        self.applies_to(req)
            && (self.resources.is_empty()
                || self
                    .resources
                    .iter()
                    .any(|r| r.matches(req.resource_type, req.name)))
    }

    /// Whether the rule covers the request's operation and principal
    /// (whatever the resource).
    fn applies_to(&self, req: &Request<'_>) -> bool {
        self.ops & req.operation.bit() != 0
            && (self.principals.is_empty() || self.principals.iter().any(|m| req.is(m)))
            && !self.not_principals.iter().any(|m| req.is(m))
    }

    /// The rule's patterns for `resource_type`; a rule without resources
    /// matches every name, as Kafka's wildcard `*` does.
    fn patterns(&self, resource_type: ResourceType) -> impl Iterator<Item = Pattern<'_>> + '_ {
        let every = self.resources.is_empty().then_some(Pattern::Every);
        every.into_iter().chain(
            self.resources
                .iter()
                .filter(move |r| r.resource_type == resource_type)
                .map(|r| match r.pattern_type {
                    PatternType::Literal if r.name == "*" => Pattern::Every,
                    PatternType::Literal => Pattern::Literal(&r.name),
                    PatternType::Prefixed => Pattern::Prefixed(&r.name),
                }),
        )
    }
}

/// A rule's resource pattern for one resource type.
#[derive(Debug, Clone, Copy)]
enum Pattern<'a> {
    /// Every name (LITERAL `*`, or a rule without resources).
    Every,
    Literal(&'a str),
    Prefixed(&'a str),
}

impl Pattern<'_> {
    /// Whether a DENY of `self` covers every name an ALLOW of `allow`
    /// matches, as Kafka's `authorizeByResourceType` decides it: a LITERAL
    /// name is covered by the same LITERAL or a PREFIXED prefix of it, a
    /// PREFIXED name by a PREFIXED prefix of it; everything by `*`.
    fn covers(self, allow: Pattern<'_>) -> bool {
        match (self, allow) {
            (Pattern::Every, _) => true,
            (_, Pattern::Every) => false,
            (Pattern::Literal(d), Pattern::Literal(a)) => d == a,
            (Pattern::Literal(_), Pattern::Prefixed(_)) => false,
            (Pattern::Prefixed(d), Pattern::Literal(a) | Pattern::Prefixed(a)) => a.starts_with(d),
        }
    }
}

impl CompiledPolicy {
    fn new(p: &KafkaAuthorizationPolicy) -> Self {
        Self {
            key: p.metadata.key().into(),
            rules: p
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| CompiledRule::new(i, r, p.action))
                .collect(),
        }
    }

    fn first_match(&self, req: &Request<'_>) -> Option<usize> {
        self.rules.iter().find(|r| r.matches(req)).map(|r| r.index)
    }
}

struct Request<'a> {
    principal: &'a Principal,
    resource_type: ResourceType,
    name: &'a str,
    operation: Operation,
    mesh_san_prefix: &'a str,
}

impl Request<'_> {
    /// Whether the request's principal matches `m`.
    fn is(&self, m: &PrincipalMatcher) -> bool {
        match (m, self.principal) {
            (PrincipalMatcher::Any, _) => true,
            (PrincipalMatcher::Anonymous, p) => p.is_anonymous(),
            (PrincipalMatcher::Name { .. }, Principal::Anonymous) => false,
            (PrincipalMatcher::Name { mesh, .. }, Principal::Spiffe(id)) => {
                spiffe_matches(mesh, id)
            }
            (
                PrincipalMatcher::Name {
                    mesh_only: true, ..
                },
                Principal::Certificate { .. },
            ) => false,
            (
                PrincipalMatcher::Name { san, subject, .. },
                Principal::Certificate { subject: s, sans },
            ) => {
                // A SAN in the mesh's own trust domain from another CA is
                // no mesh identity (the scheme compared without case, as
                // URIs compare it).
                let mesh_san = |x: &str| {
                    x.get(..self.mesh_san_prefix.len())
                        .is_some_and(|p| p.eq_ignore_ascii_case(self.mesh_san_prefix))
                };
                subject.matches(s) || sans.iter().any(|x| !mesh_san(x) && san.matches(x))
            }
        }
    }
}

/// [`StringMatch::matches`] against [`SpiffeId::principal`]
/// (`td/ns/x/sa/y`), without building the string.
pub(crate) fn spiffe_matches(m: &StringMatch, id: &SpiffeId) -> bool {
    let parts = [
        id.trust_domain().as_str(),
        "/ns/",
        id.namespace(),
        "/sa/",
        id.service_account(),
    ];
    match m {
        StringMatch::Exact(e) => {
            parts.iter().map(|p| p.len()).sum::<usize>() == e.len() && starts_with(&parts, e)
        }
        StringMatch::Prefix(p) => starts_with(&parts, p),
        StringMatch::Suffix(s) => ends_with(&parts, s),
        StringMatch::Presence => true,
    }
}

/// Whether the concatenation of `parts` starts with `prefix`.
fn starts_with(parts: &[&str], prefix: &str) -> bool {
    let mut rest = prefix.as_bytes();
    for p in parts {
        let p = p.as_bytes();
        if rest.len() <= p.len() {
            return p.starts_with(rest);
        }
        if !rest.starts_with(p) {
            return false;
        }
        rest = &rest[p.len()..];
    }
    rest.is_empty()
}

/// Whether the concatenation of `parts` ends with `suffix`.
fn ends_with(parts: &[&str], suffix: &str) -> bool {
    let mut rest = suffix.as_bytes();
    for p in parts.iter().rev() {
        let p = p.as_bytes();
        if rest.len() <= p.len() {
            return p.ends_with(rest);
        }
        if !rest.ends_with(p) {
            return false;
        }
        rest = &rest[..rest.len() - p.len()];
    }
    rest.is_empty()
}

impl KafkaAuthorizer {
    /// Compiles the KafkaAuthorizationPolicies that apply to KafkaGateway
    /// `namespace/name` in `config` (the gateway itself need not exist).
    pub fn for_gateway(config: &Config, namespace: &str, name: &str) -> Self {
        let root = config.settings.root_namespace.as_str();
        let mut deny = Vec::new();
        let mut allow = Vec::new();
        for p in config
            .kafka_authorization_policies
            .iter()
            .filter(|p| p.applies_to(namespace, name, root))
        {
            match p.action {
                Action::Deny => deny.push(CompiledPolicy::new(p)),
                Action::Allow => allow.push(CompiledPolicy::new(p)),
            }
        }
        Self {
            gateway: format!("{namespace}/{name}").into(),
            deny,
            allow,
            mesh_san_prefix: format!("spiffe://{}/", config.settings.trust_domain),
        }
    }

    /// `namespace/name` of the gateway.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Whether any policy applies (with none, every request is allowed).
    pub fn has_policies(&self) -> bool {
        !self.deny.is_empty() || !self.allow.is_empty()
    }

    /// The applicable policies (`namespace/name`, action): DENY first, each
    /// group in config order.
    pub fn policies(&self) -> impl Iterator<Item = (&str, Action)> + '_ {
        self.deny
            .iter()
            .map(|p| (&*p.key, Action::Deny))
            .chain(self.allow.iter().map(|p| (&*p.key, Action::Allow)))
    }

    /// The decision for `principal` doing `operation` on the resource
    /// `resource_type` `name` (for [`ResourceType::Cluster`], `name` is
    /// ignored). Allocation-free.
    pub fn authorize(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        name: &str,
        operation: Operation,
    ) -> KafkaDecision {
        let req = Request {
            principal,
            resource_type,
            name,
            operation,
            mesh_san_prefix: &self.mesh_san_prefix,
        };
        for p in &self.deny {
            if let Some(i) = p.first_match(&req) {
                return decide(KafkaBasis::DenyRule, Some(p), Some(i));
            }
        }
        if self.allow.is_empty() {
            return decide(KafkaBasis::NoAllowPolicy, None, None);
        }
        for p in &self.allow {
            if let Some(i) = p.first_match(&req) {
                return decide(KafkaBasis::AllowRule, Some(p), Some(i));
            }
        }
        decide(KafkaBasis::NoAllowRuleMatched, self.blame(), None)
    }

    /// The single applicable ALLOW policy, blamed when none of its rules matched.
    fn blame(&self) -> Option<&CompiledPolicy> {
        (self.allow.len() == 1).then(|| &self.allow[0])
    }

    /// Kafka's `authorizeByResourceType`: may `principal` do `operation` on
    /// at least one resource of `resource_type`? Allowed when an ALLOW rule
    /// for the principal grants the operation on a pattern of that type
    /// (LITERAL or PREFIXED; a rule without resources grants every name)
    /// that DENY rules for the principal and operation do not cover
    /// entirely: a LITERAL name is covered by a DENY of the same name or of
    /// a PREFIXED prefix of it, a PREFIXED pattern by a DENY of a PREFIXED
    /// prefix of it, and everything by a DENY of `*` (or a DENY rule without
    /// resources), which denies outright. An ALLOW of `*` allows unless so
    /// denied. Without ALLOW policies, allowed unless denied outright (Kafka
    /// with `allow.everyone.if.no.acl.found=true`). For the cluster (a single
    /// resource) it is [`KafkaAuthorizer::authorize`].
    ///
    /// The decision names the granting ALLOW rule, the DENY rule that denies
    /// outright, or the DENY rule covering the first ALLOW pattern found.
    pub fn authorize_by_resource_type(
        &self,
        principal: &Principal,
        resource_type: ResourceType,
        operation: Operation,
    ) -> KafkaDecision {
        if resource_type == ResourceType::Cluster {
            return self.authorize(
                principal,
                resource_type,
                ResourceType::CLUSTER_NAME,
                operation,
            );
        }
        let req = Request {
            principal,
            resource_type,
            name: "",
            operation,
            mesh_san_prefix: &self.mesh_san_prefix,
        };
        let req = &req;
        let denying = || {
            self.deny.iter().flat_map(move |p| {
                p.rules
                    .iter()
                    .filter(move |r| r.applies_to(req))
                    .map(move |r| (p, r))
            })
        };
        for (p, r) in denying() {
            if r.patterns(resource_type)
                .any(|d| matches!(d, Pattern::Every))
            {
                return decide(KafkaBasis::DenyRule, Some(p), Some(r.index));
            }
        }
        if self.allow.is_empty() {
            return decide(KafkaBasis::NoAllowPolicy, None, None);
        }
        let mut covered_by = None;
        for p in &self.allow {
            for r in p.rules.iter().filter(|r| r.applies_to(req)) {
                for a in r.patterns(resource_type) {
                    let cover =
                        denying().find(|(_, dr)| dr.patterns(resource_type).any(|d| d.covers(a)));
                    match cover {
                        None => return decide(KafkaBasis::AllowRule, Some(p), Some(r.index)),
                        Some((dp, dr)) => {
                            covered_by.get_or_insert((dp, dr.index));
                        }
                    }
                }
            }
        }
        match covered_by {
            Some((dp, i)) => decide(KafkaBasis::DenyRule, Some(dp), Some(i)),
            None => decide(KafkaBasis::NoAllowRuleMatched, self.blame(), None),
        }
    }

    /// May `principal` create topic `name` (CreateTopics, or Metadata with
    /// auto-creation)? As Kafka's `KafkaApis`: Create on the cluster allows
    /// every topic, otherwise Create on the topic is needed. A DENY rule for
    /// Create on the topic still denies it (weir's DENY first; Kafka itself
    /// would let cluster Create override it).
    pub fn authorize_topic_creation(&self, principal: &Principal, name: &str) -> KafkaDecision {
        let topic = self.authorize(principal, ResourceType::Topic, name, Operation::Create);
        if topic.allowed || topic.basis == KafkaBasis::DenyRule {
            return topic;
        }
        let cluster = self.authorize(
            principal,
            ResourceType::Cluster,
            ResourceType::CLUSTER_NAME,
            Operation::Create,
        );
        if cluster.allowed {
            KafkaDecision {
                note: Some(NOTE_CLUSTER_CREATE),
                ..cluster
            }
        } else {
            KafkaDecision {
                note: Some(NOTE_NO_CLUSTER_CREATE),
                ..topic
            }
        }
    }

    /// May `principal` get a producer id without a transactional id (an
    /// idempotent producer's InitProducerId)? As Kafka 2.8+ (KIP-679):
    /// IdempotentWrite on the cluster, or else Write on at least one topic
    /// ([`KafkaAuthorizer::authorize_by_resource_type`]). A DENY rule for
    /// IdempotentWrite on the cluster still denies it (weir's DENY first).
    /// A denial reports the cluster question (Kafka answers
    /// CLUSTER_AUTHORIZATION_FAILED).
    pub fn authorize_idempotent_producer(&self, principal: &Principal) -> KafkaDecision {
        let cluster = self.authorize(
            principal,
            ResourceType::Cluster,
            ResourceType::CLUSTER_NAME,
            Operation::IdempotentWrite,
        );
        if cluster.allowed || cluster.basis == KafkaBasis::DenyRule {
            return cluster;
        }
        let write =
            self.authorize_by_resource_type(principal, ResourceType::Topic, Operation::Write);
        if write.allowed {
            KafkaDecision {
                note: Some(NOTE_TOPIC_WRITE),
                ..write
            }
        } else {
            KafkaDecision {
                note: Some(NOTE_NO_TOPIC_WRITE),
                ..cluster
            }
        }
    }
}

fn decide(
    basis: KafkaBasis,
    policy: Option<&CompiledPolicy>,
    rule: Option<usize>,
) -> KafkaDecision {
    KafkaDecision {
        allowed: basis.allowed(),
        policy: policy.map(|p| p.key.clone()),
        rule,
        reason: basis.reason(),
        basis,
        note: None,
    }
}
