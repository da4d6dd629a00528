//! `weir check`: validate configuration.

use std::collections::BTreeMap;
use std::process::ExitCode;

use weir_core::config::{Action, MtlsMode};
use weir_core::Config;

use crate::cli::{CheckArgs, Output};

/// One line per kind: the count and a breakdown that helps spot surprises.
pub fn summary_lines(config: &Config) -> Vec<String> {
    let mut nodes: BTreeMap<&str, usize> = BTreeMap::new();
    for w in &config.workloads {
        *nodes.entry(w.node.as_str()).or_default() += 1;
    }
    let nodes: Vec<String> = nodes.iter().map(|(n, c)| format!("{n}: {c}")).collect();
    let mut modes: BTreeMap<MtlsMode, usize> = BTreeMap::new();
    for p in &config.peer_authentications {
        *modes.entry(p.mtls).or_default() += 1;
    }
    let modes: Vec<String> = modes.iter().map(|(m, c)| format!("{m}: {c}")).collect();
    let allow = config
        .authorization_policies
        .iter()
        .filter(|p| p.action == Action::Allow)
        .count();
    let deny = config.authorization_policies.len() - allow;
    let mut lines = vec![
        format!(
            "Workload: {} ({})",
            config.workloads.len(),
            if nodes.is_empty() {
                "no nodes".to_owned()
            } else {
                nodes.join(", ")
            }
        ),
        format!(
            "PeerAuthentication: {}{}",
            config.peer_authentications.len(),
            if modes.is_empty() {
                String::new()
            } else {
                format!(" ({})", modes.join(", "))
            }
        ),
        format!(
            "AuthorizationPolicy: {} (ALLOW: {allow}, DENY: {deny})",
            config.authorization_policies.len()
        ),
    ];
    // Every other kind: a breakdown where one helps, else the count.
    for (kind, n) in config.summary() {
        if lines.iter().any(|l| l.starts_with(&format!("{kind}:"))) {
            continue;
        }
        lines.push(match kind {
            "KafkaGateway" => {
                let ports: std::collections::BTreeSet<u16> =
                    config.kafka_gateways.iter().map(|g| g.port).collect();
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                if ports.is_empty() {
                    format!("{kind}: {n}")
                } else {
                    format!("{kind}: {n} (ports: {})", ports.join(", "))
                }
            }
            "KafkaAuthorizationPolicy" => {
                let allow = config
                    .kafka_authorization_policies
                    .iter()
                    .filter(|p| p.action == Action::Allow)
                    .count();
                format!("{kind}: {n} (ALLOW: {allow}, DENY: {})", n - allow)
            }
            _ => format!("{kind}: {n}"),
        });
    }
    lines
}

pub fn run(args: &CheckArgs) -> ExitCode {
    let settings = match args.mesh.settings() {
        Ok(s) => s,
        Err(e) => {
            crate::fail_on_broken_pipe(2);
            diag!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match Config::load_paths_or_stdin(&args.paths, settings) {
        Ok(config) if config.documents() == 0 => no_documents(args),
        Ok(config) => {
            match args.output {
                Output::Text => {
                    for w in &config.warnings {
                        diag!("warning: {w}");
                    }
                    for line in summary_lines(&config) {
                        out!("{line}");
                    }
                }
                Output::Json => {
                    let kinds: BTreeMap<&str, usize> = config.summary().into_iter().collect();
                    let out = serde_json::json!({"valid": true, "kinds": kinds, "warnings": config.warnings, "errors": []});
                    crate::print_json(&out);
                }
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            crate::fail_on_broken_pipe(1);
            match args.output {
                Output::Text => {
                    for e in &errors.0 {
                        diag!("error: {e}");
                    }
                    diag!(
                        "{} error{} found; nothing was applied",
                        errors.0.len(),
                        if errors.0.len() == 1 { "" } else { "s" }
                    );
                }
                Output::Json => {
                    // The same keys as for a valid config: no kinds are counted
                    // and no warnings computed when the config is refused.
                    let out = serde_json::json!({"valid": false, "kinds": {}, "warnings": [], "errors": errors.0});
                    crate::print_json(&out);
                }
            }
            ExitCode::from(1)
        }
    }
}

/// Paths that hold no document at all: most likely a mistyped directory or
/// file, so an error (as `kubectl apply` says "no objects passed to apply"),
/// not an all-zero summary. Only `weir check`: a proxy may start empty.
fn no_documents(args: &CheckArgs) -> ExitCode {
    let paths: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
    let message = format!(
        "no documents found in {} (directories are searched recursively for *.yaml, *.yml and *.json; empty and comment-only documents do not count)",
        paths.join(", ")
    );
    crate::fail_on_broken_pipe(1);
    match args.output {
        Output::Text => diag!("error: {message}"),
        Output::Json => {
            let out = serde_json::json!({
                "valid": false,
                "kinds": {},
                "warnings": [],
                "errors": [{"file": paths.join(", "), "message": message}],
            });
            crate::print_json(&out);
        }
    }
    ExitCode::from(1)
}
