//! `weir control`: the control plane (what istiod is to Istio's ambient mode)
//! and the client node proxies and gateways use to talk to it.
//!
//! One process holds the mesh CA and the config. Over one gRPC endpoint
//! (TLS 1.3 with a certificate from the mesh CA, port 15012 like istiod):
//!
//! - **CA service** ([`ca`]): a node sends a CSR for a SPIFFE id; it is signed
//!   only if a Workload on that node runs as that identity (gateways: only
//!   their registered identities). Callers authenticate with a bootstrap
//!   token in local mode ([`auth`]), a ServiceAccount token checked with
//!   TokenReview in cluster mode (weir-kube), both behind the
//!   [`auth::Authenticator`] trait.
//! - **Config distribution** ([`distributor`]): each node gets a full
//!   snapshot of its view when it connects, then deltas. A node that
//!   reconnects sends the content hashes it holds and gets only what differs.
//!
//! Config comes from a [`source::ConfigSource`]: files and directories in
//! local mode ([`source::FileSource`]); the Kubernetes API in cluster mode
//! (weir-kube), through the same seam. Objects travel as their YAML
//! documents ([`catalog`]), so the node validates them with the same strict
//! loader as `weir check`.
//!
//! On the node side, [`client::ControlClient`] keeps the config stream up
//! (exponential, jittered [`backoff`]) and signs certificates through it;
//! when the control plane is away the node keeps serving with what it has
//! (fail-static).
//!
//! The gRPC messages ([`proto`]) and the service glue ([`grpc`]) are written
//! by hand from `proto/control.proto`: no `protoc` at build time.
#![forbid(unsafe_code)]

pub mod auth;
pub mod backoff;
pub mod ca;
pub mod catalog;
pub mod client;
pub mod distributor;
pub mod grpc;
mod http;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod source;
pub mod tls;

pub use auth::{Authenticator, Caller, TokenFile};
pub use catalog::Catalog;
pub use client::{ClientOptions, ControlClient};
pub use distributor::{Distributor, Role};
pub use server::{run, ControlOptions};
pub use source::{ConfigSource, FileSource, SourceEvent};

use std::net::SocketAddr;
use std::path::PathBuf;

/// The service account of the control plane; its SPIFFE id is
/// `spiffe://<trust-domain>/ns/<root-namespace>/sa/weir-control`.
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "weir-control";

/// istiod's port for xDS and the CA, used by `weir control` too.
pub const DEFAULT_PORT: u16 = 15012;

/// The control plane's SPIFFE id in a mesh.
pub fn control_plane_identity(
    settings: &weir_core::MeshSettings,
) -> Result<weir_core::SpiffeId, weir_core::SpiffeIdError> {
    weir_core::SpiffeId::new(
        settings.trust_domain.clone(),
        &settings.root_namespace,
        CONTROL_PLANE_SERVICE_ACCOUNT,
    )
}

/// Why the control plane (or its client) could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The initial config is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] weir_core::ConfigErrors),
    /// The mesh CA or a certificate.
    #[error("mesh CA: {0}")]
    Identity(#[from] weir_identity::Error),
    /// The node token file.
    #[error("node token file {path}: {reason}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A listener could not be opened.
    #[error("cannot listen on {addr} for {what}: {source}; pass --{flag} to move it")]
    Listen {
        /// What the listener is for.
        what: &'static str,
        /// The flag that moves it.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Something else about the setup (flags, names).
    #[error("{0}")]
    Setup(String),
}

impl Error {
    /// A short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Identity(_) => "identity",
            Error::TokenFile { .. } => "token_file",
            Error::Listen { .. } => "listen",
            Error::Tls(_) => "tls",
            Error::Setup(_) => "setup",
        }
    }
}
