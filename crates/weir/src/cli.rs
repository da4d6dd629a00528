//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use weir_core::config::DEFAULT_ROOT_NAMESPACE;
use weir_core::spiffe::DEFAULT_TRUST_DOMAIN;
use weir_core::{MeshSettings, TrustDomain};

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "weir: a zero-trust ambient service mesh for event streaming",
    long_about = "weir secures Kafka and other event-streaming workloads with mutual TLS \
                  (HBONE tunnels between per-node proxies), SPIFFE identities and Istio's \
                  PeerAuthentication and AuthorizationPolicy, with no sidecar and no change \
                  to the application."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate configuration files; print a summary per kind, or every error
    /// with its file, document and field.
    Check(CheckArgs),
    /// Explain the decision for one connection: allow or deny, the effective
    /// mTLS mode, and the policy that decided.
    Explain(ExplainArgs),
}

/// Settings shared by every command that reads mesh configuration.
#[derive(Debug, Args, Clone)]
pub struct MeshArgs {
    /// SPIFFE trust domain of the mesh.
    #[arg(long, env = "WEIR_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Root namespace: policies there apply mesh-wide (Istio's rootNamespace).
    #[arg(long, env = "WEIR_ROOT_NAMESPACE", default_value = DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
}

impl MeshArgs {
    pub fn settings(&self) -> Result<MeshSettings, String> {
        let trust_domain = TrustDomain::new(&self.trust_domain)
            .map_err(|e| format!("--trust-domain {:?}: {e}", self.trust_domain))?;
        Ok(MeshSettings {
            trust_domain,
            root_namespace: self.root_namespace.clone(),
        })
    }
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Files or directories of YAML documents (directories are read recursively).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub mesh: MeshArgs,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Files or directories of YAML documents.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub config: Vec<PathBuf>,
    /// The caller: a SPIFFE id (spiffe://td/ns/x/sa/y), a principal as Istio
    /// writes it (td/ns/x/sa/y), or `plaintext` for a non-mesh client.
    #[arg(long, value_name = "SPIFFE-ID|PRINCIPAL|plaintext")]
    pub from: String,
    /// The caller's IP address (for ipBlocks and source.ip).
    #[arg(long, value_name = "IP")]
    pub source_ip: Option<std::net::IpAddr>,
    /// The destination workload.
    #[arg(long, value_name = "NAMESPACE/WORKLOAD")]
    pub to: String,
    /// The destination port.
    #[arg(long, value_name = "N")]
    pub port: u16,
    #[command(flatten)]
    pub mesh: MeshArgs,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}
