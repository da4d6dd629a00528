//! `weir explain`: why a connection would be allowed or denied.

use std::process::ExitCode;

use serde::Serialize;
use weir_core::config::MtlsMode;
use weir_core::policy::{self, Connection, Decision};
use weir_core::{Config, SpiffeId};

use crate::cli::{ExplainArgs, Output};

/// The JSON document `weir explain --output json` prints.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub decision: Decision,
    pub mtls_mode: MtlsMode,
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
    let full = if s.starts_with("spiffe://") {
        s.to_owned()
    } else {
        format!("spiffe://{s}")
    };
    full.parse::<SpiffeId>().map(Some).map_err(|e| {
        format!("--from {s:?}: {e}; expected spiffe://<td>/ns/<ns>/sa/<sa>, <td>/ns/<ns>/sa/<sa> or plaintext")
    })
}

pub fn run(args: &ExplainArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::from(2)
    };
    let settings = match args.mesh.settings() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let config = match Config::load_paths(&args.config, settings) {
        Ok(c) => c,
        Err(e) => {
            for e in &e.0 {
                eprintln!("error: {e}");
            }
            return fail("the configuration is invalid; run `weir check` on it".to_owned());
        }
    };
    let peer = match parse_from(&args.from) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let Some((ns, name)) = args.to.split_once('/') else {
        return fail(format!(
            "--to {:?}: expected <namespace>/<workload>",
            args.to
        ));
    };
    let Some(workload) = config.workload(ns, name) else {
        let known: Vec<String> = config
            .workloads
            .iter()
            .map(|w| format!("{}/{}", w.namespace(), w.name()))
            .collect();
        return fail(format!(
            "--to {}: no such Workload; known workloads: {}",
            args.to,
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
        destination_port: args.port,
    };
    let v = policy::evaluate(&config, workload, &conn);
    let out = Explanation {
        decision: v.decision,
        mtls_mode: v.mtls_mode,
        policy: v.policy.clone(),
        policy_kind: v.policy_kind,
        rule: v.rule,
        reason: v.reason.clone(),
        source: Source {
            identity: peer.as_ref().map(ToString::to_string),
            principal: peer.as_ref().map(SpiffeId::principal),
            ip: args.source_ip,
        },
        destination: Destination {
            workload: format!("{}/{}", workload.namespace(), workload.name()),
            address: workload.address,
            port: args.port,
            identity: workload.identity(&config.settings.trust_domain).to_string(),
        },
    };
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializable")
        ),
        Output::Text => {
            println!("decision:  {}", out.decision.as_str());
            println!("mtls mode: {}", out.mtls_mode);
            match (&out.policy, out.policy_kind) {
                (Some(p), Some(k)) => match out.rule {
                    Some(r) => println!("policy:    {k} {p} (rule {r})"),
                    None => println!("policy:    {k} {p}"),
                },
                _ => println!("policy:    none"),
            }
            println!("reason:    {}", out.reason);
        }
    }
    ExitCode::SUCCESS
}
