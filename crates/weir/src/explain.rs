//! `weir explain`: why a connection would be allowed or denied, or, given a
//! Kafka resource and operation, why a Kafka request at a KafkaGateway would be.

use std::process::ExitCode;

use serde::Serialize;
use weir_core::config::{Action, ConditionKey, KafkaGateway, MtlsMode};
use weir_core::kafka::{Operation, Principal, ResourceType};
use weir_core::policy::kafka::{KafkaAuthorizer, KafkaBasis};
use weir_core::policy::{self, Connection, Decision};
use weir_core::{Config, SpiffeId};

use crate::cli::{ExplainArgs, Output};

/// The JSON document `weir explain --output json` prints.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub decision: Decision,
    pub mtls_mode: MtlsMode,
    /// `namespace/name` of the PeerAuthentication the mode comes from, or
    /// null (no policy: PERMISSIVE).
    pub mtls_policy: Option<String>,
    /// Whether the mode comes from that policy's `portLevelMtls` entry for
    /// the port.
    pub mtls_port_level: bool,
    /// `namespace/name` of the deciding policy, or null.
    pub policy: Option<String>,
    pub policy_kind: Option<&'static str>,
    pub rule: Option<usize>,
    pub reason: String,
    pub source: Source,
    pub destination: Destination,
}

#[derive(Debug, Serialize)]
pub struct Source {
    /// The caller's SPIFFE id, or null for plaintext.
    pub identity: Option<String>,
    pub principal: Option<String>,
    /// `namespace/name`, what `serviceAccounts` entries match.
    pub service_account: Option<String>,
    pub ip: Option<std::net::IpAddr>,
}

#[derive(Debug, Serialize)]
pub struct Destination {
    pub workload: String,
    pub address: std::net::IpAddr,
    pub port: u16,
    pub identity: String,
}

/// Parses `--from`: a SPIFFE id, an Istio principal, or `plaintext`.
pub fn parse_from(s: &str) -> Result<Option<SpiffeId>, String> {
    if s.eq_ignore_ascii_case("plaintext") {
        return Ok(None);
    }
    if s.eq_ignore_ascii_case("anonymous") {
        return Err(format!(
            "--from {s:?} describes a Kafka client without a certificate (Kafka questions: --topic, --group, --transactional-id, --cluster); a connection without mesh mTLS is `plaintext`"
        ));
    }
    if s.contains('=') && !s.contains('/') {
        return Err(format!(
            "--from {s:?} is a certificate subject, which only Kafka questions take (--topic, --group, --transactional-id, --cluster); for a connection give a SPIFFE id, a principal or plaintext"
        ));
    }
    let full = if s.starts_with("spiffe://") {
        s.to_owned()
    } else {
        format!("spiffe://{s}")
    };
    full.parse::<SpiffeId>().map(Some).map_err(|e| {
        format!("--from {s:?}: {e}; expected spiffe://<td>/ns/<ns>/sa/<sa>, <td>/ns/<ns>/sa/<sa> or plaintext")
    })
}

/// Whether an AuthorizationPolicy that applies to `w` tests the caller's IP
/// address (so an answer without `--source-ip` may not be the one a real
/// caller gets).
fn policies_use_source_ip(config: &Config, w: &weir_core::config::Workload) -> bool {
    policy::applicable_policies(config, w).any(|p| {
        p.rules.iter().any(|r| {
            r.from
                .iter()
                .any(|s| !s.ip_blocks.is_empty() || !s.not_ip_blocks.is_empty())
                || r.when.iter().any(|c| c.key == ConditionKey::SourceIp)
        })
    })
}

fn fail(msg: String) -> ExitCode {
    crate::fail_on_broken_pipe(2);
    diag!("error: {msg}");
    ExitCode::from(2)
}

pub fn run(args: &ExplainArgs) -> ExitCode {
    let settings = match args.mesh.settings() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let config = match Config::load_paths_or_stdin(&args.config, settings) {
        Ok(c) => c,
        Err(e) => {
            crate::fail_on_broken_pipe(2);
            for e in &e.0 {
                diag!("error: {e}");
            }
            return fail("the configuration is invalid; run `weir check` on it".to_owned());
        }
    };
    if config.documents() == 0 {
        let paths: Vec<String> = args
            .config
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return fail(format!(
            "no documents found in {} (directories are searched recursively for *.yaml, *.yml and *.json)",
            paths.join(", ")
        ));
    }
    if let Some(resource) = kafka_resource(args) {
        return run_kafka(args, &config, resource);
    }
    if args.operation.is_some() {
        return fail(
            "--operation asks a Kafka question: add --topic, --group, --transactional-id or --cluster".to_owned(),
        );
    }
    let (Some(to), Some(port)) = (args.to.as_deref(), args.port) else {
        return fail(
            "a connection question needs --to and --port; a Kafka question needs --topic, --group, --transactional-id or --cluster with --operation".to_owned(),
        );
    };
    let peer = match parse_from(&args.from) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let Some((ns, name)) = to.split_once('/') else {
        return fail(format!("--to {to:?}: expected <namespace>/<workload>"));
    };
    let Some(workload) = config.workload(ns, name) else {
        let known: Vec<String> = config
            .workloads
            .iter()
            .map(|w| format!("{}/{}", w.namespace(), w.name()))
            .collect();
        return fail(format!(
            "--to {to}: no such Workload; known workloads: {}",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ));
    };
    let conn = Connection {
        peer: peer.clone(),
        source_ip: args.source_ip,
        destination_ip: workload.address,
        destination_port: port,
    };
    let v = policy::evaluate(&config, workload, &conn);
    let mtls = policy::effective_mtls(&config, workload, port);
    if args.source_ip.is_none() && policies_use_source_ip(&config, workload) {
        diag!(
            "note: no --source-ip given: ipBlocks and source.ip conditions match no address, notIpBlocks and notValues of source.ip match any"
        );
    }
    let out = Explanation {
        decision: v.decision,
        mtls_mode: v.mtls_mode,
        mtls_policy: mtls.policy.map(|p| p.metadata.key()),
        mtls_port_level: mtls.port_level,
        policy: v.policy.clone(),
        policy_kind: v.policy_kind,
        rule: v.rule,
        reason: v.reason.clone(),
        source: Source {
            identity: peer.as_ref().map(ToString::to_string),
            principal: peer.as_ref().map(SpiffeId::principal),
            service_account: peer
                .as_ref()
                .map(|p| format!("{}/{}", p.namespace(), p.service_account())),
            ip: args.source_ip,
        },
        destination: Destination {
            workload: format!("{}/{}", workload.namespace(), workload.name()),
            address: workload.address,
            port,
            identity: workload.identity(&config.settings.trust_domain).to_string(),
        },
    };
    match args.output {
        Output::Json => crate::print_json(&out),
        Output::Text => {
            out!("decision:  {}", out.decision.as_str());
            match &out.mtls_policy {
                Some(p) if out.mtls_port_level => out!(
                    "mtls mode: {} (PeerAuthentication {p}, portLevelMtls {port})",
                    out.mtls_mode
                ),
                Some(p) => out!("mtls mode: {} (PeerAuthentication {p})", out.mtls_mode),
                None => out!(
                    "mtls mode: {} (no PeerAuthentication applies: Istio's default)",
                    out.mtls_mode
                ),
            }
            match (&out.policy, out.policy_kind) {
                (Some(p), Some(k)) => match out.rule {
                    Some(r) => out!("policy:    {k} {p} (rule {r})"),
                    None => out!("policy:    {k} {p}"),
                },
                _ => out!("policy:    none"),
            }
            out!("reason:    {}", out.reason);
        }
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------- Kafka questions

/// The JSON document `weir explain --output json` prints for a Kafka question.
#[derive(Debug, Serialize)]
pub struct KafkaExplanation {
    pub decision: Decision,
    /// `namespace/name` of the deciding KafkaAuthorizationPolicy, or null.
    pub policy: Option<String>,
    pub rule: Option<usize>,
    pub reason: String,
    /// The caller: SPIFFE id, certificate subject, or `anonymous`.
    pub principal: String,
    pub resource: KafkaResource,
    pub operation: Operation,
    /// `namespace/name` of the KafkaGateway.
    pub gateway: String,
}

#[derive(Debug, Serialize)]
pub struct KafkaResource {
    #[serde(rename = "type")]
    pub resource_type: ResourceType,
    pub name: String,
}

fn kafka_resource(args: &ExplainArgs) -> Option<(ResourceType, String)> {
    if let Some(t) = &args.topic {
        Some((ResourceType::Topic, t.clone()))
    } else if let Some(g) = &args.group {
        Some((ResourceType::Group, g.clone()))
    } else if let Some(t) = &args.transactional_id {
        Some((ResourceType::TransactionalId, t.clone()))
    } else if args.cluster {
        Some((ResourceType::Cluster, ResourceType::CLUSTER_NAME.to_owned()))
    } else {
        None
    }
}

/// Parses `--from` (and `--san`) for a Kafka question: a SPIFFE id or Istio
/// principal (a mesh client), a certificate subject such as `CN=app,O=Example`
/// (an external client; `--san` adds SANs), or `anonymous`. Kafka's `User:`
/// prefix is accepted.
pub fn parse_kafka_principal(from: &str, sans: &[String]) -> Result<Principal, String> {
    let s = from.strip_prefix("User:").unwrap_or(from);
    let principal = if s.eq_ignore_ascii_case("anonymous") {
        Principal::Anonymous
    } else if s.contains('=') {
        return Ok(Principal::Certificate {
            subject: s.to_owned(),
            sans: sans.to_vec(),
        });
    } else if s.eq_ignore_ascii_case("plaintext") {
        return Err(format!(
            "--from {from:?}: a Kafka client at a KafkaGateway always speaks TLS; one without a client certificate is `anonymous`"
        ));
    } else {
        match parse_from(s) {
            Ok(Some(id)) => Principal::Spiffe(id),
            _ => {
                return Err(format!(
                    "--from {from:?}: expected a SPIFFE id (spiffe://<td>/ns/<ns>/sa/<sa>), a principal (<td>/ns/<ns>/sa/<sa>), a certificate subject (CN=...) or anonymous"
                ))
            }
        }
    };
    if !sans.is_empty() {
        return Err(format!(
            "--san describes an external client's certificate: give its subject in --from (CN=...), not {from:?}"
        ));
    }
    Ok(principal)
}

/// The KafkaGateway a question is about: `--gateway` (`namespace/name`, or a
/// name that is unique), or the only one.
fn pick_gateway<'a>(config: &'a Config, arg: Option<&str>) -> Result<&'a KafkaGateway, String> {
    let all = &config.kafka_gateways;
    let known = || {
        all.iter()
            .map(KafkaGateway::key)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if all.is_empty() {
        return Err(
            "no KafkaGateway in the configuration: Kafka requests are authorized at a KafkaGateway (weir.dev/v1alpha1); add one (see docs/kafka-authorization.md)".to_owned(),
        );
    }
    match arg {
        None if all.len() == 1 => Ok(&all[0]),
        None => Err(format!(
            "there are several KafkaGateways ({}); choose one with --gateway <namespace>/<name>",
            known()
        )),
        Some(g) => {
            let found: Vec<&KafkaGateway> = match g.split_once('/') {
                Some((ns, name)) => all
                    .iter()
                    .filter(|k| k.metadata.namespace == ns && k.metadata.name == name)
                    .collect(),
                None => all.iter().filter(|k| k.metadata.name == g).collect(),
            };
            match found[..] {
                [one] => Ok(one),
                [] => Err(format!(
                    "--gateway {g}: no such KafkaGateway; known KafkaGateways: {}",
                    known()
                )),
                _ => Err(format!(
                    "--gateway {g}: several KafkaGateways have that name; use <namespace>/<name> ({})",
                    known()
                )),
            }
        }
    }
}

fn run_kafka(
    args: &ExplainArgs,
    config: &Config,
    (resource_type, name): (ResourceType, String),
) -> ExitCode {
    let Some(operation) = args.operation else {
        return fail("a Kafka question needs --operation (e.g. Write)".to_owned());
    };
    if name.is_empty() {
        return fail(format!(
            "--{}: the name must not be empty",
            match resource_type {
                ResourceType::Topic => "topic",
                ResourceType::Group => "group",
                _ => "transactional-id",
            }
        ));
    }
    let principal = match parse_kafka_principal(&args.from, &args.san) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let gateway = match pick_gateway(config, args.gateway.as_deref()) {
        Ok(g) => g,
        Err(e) => return fail(e),
    };
    let key = gateway.key();
    let authorizer =
        KafkaAuthorizer::for_gateway(config, &gateway.metadata.namespace, &gateway.metadata.name);
    // Topic Create and cluster IdempotentWrite are asked only by the
    // requests Kafka decides by two questions: answer as the gateway does.
    let d = match (resource_type, operation) {
        (ResourceType::Topic, Operation::Create) => {
            authorizer.authorize_topic_creation(&principal, &name)
        }
        (ResourceType::Cluster, Operation::IdempotentWrite) => {
            authorizer.authorize_idempotent_producer(&principal)
        }
        _ => authorizer.authorize(&principal, resource_type, &name, operation),
    };
    let with_note = |s: String| match d.note {
        Some(n) => format!("{s}; {n}"),
        None => s,
    };
    let reason = match d.basis {
        KafkaBasis::NoAllowPolicy => with_note(format!(
            "no ALLOW KafkaAuthorizationPolicy applies to KafkaGateway {key}, so it is allowed unless denied"
        )),
        KafkaBasis::NoAllowRuleMatched if d.policy.is_none() => {
            let names: Vec<&str> = authorizer
                .policies()
                .filter(|(_, a)| *a == Action::Allow)
                .map(|(p, _)| p)
                .collect();
            with_note(format!(
                "ALLOW KafkaAuthorizationPolicies apply to KafkaGateway {key} ({}) but none of their rules matched",
                names.join(", ")
            ))
        }
        _ => d.to_string(),
    };
    let out = KafkaExplanation {
        decision: if d.allowed {
            Decision::Allow
        } else {
            Decision::Deny
        },
        policy: d.policy.as_deref().map(str::to_owned),
        rule: d.rule,
        reason,
        principal: principal.label(),
        resource: KafkaResource {
            resource_type,
            name,
        },
        operation,
        gateway: key,
    };
    match args.output {
        Output::Json => crate::print_json(&out),
        Output::Text => {
            out!("decision:  {}", out.decision.as_str());
            out!("gateway:   KafkaGateway {}", out.gateway);
            out!("principal: {}", out.principal);
            out!(
                "resource:  {} {}",
                out.resource.resource_type,
                out.resource.name
            );
            out!("operation: {}", out.operation);
            match (&out.policy, out.rule) {
                (Some(p), Some(r)) => {
                    out!("policy:    KafkaAuthorizationPolicy {p} (rule {r})")
                }
                (Some(p), None) => out!("policy:    KafkaAuthorizationPolicy {p}"),
                _ => out!("policy:    none"),
            }
            out!("reason:    {}", out.reason);
        }
    }
    ExitCode::SUCCESS
}
