//! `weir node`: the per-node L4 proxy (what Istio's ztunnel is).
//!
//! For every Workload on its node it opens listeners inside the workload's
//! network namespace (the in-pod model) and installs capture rules there:
//! outbound connections go over HBONE (HTTP/2 CONNECT over mTLS) with the
//! workload's SPIFFE certificate; inbound HBONE and plaintext connections are
//! checked against PeerAuthentication and AuthorizationPolicy.
//!
//! - [`capture`]: network namespaces, SO_ORIGINAL_DST, iptables rules
//! - `proxy`: one workload's listeners; `proxy/outbound.rs`, `proxy/inbound.rs`
//! - `forward`: moving bytes, `metrics`: Istio's TCP metrics, `access`: access log
//! - `node`: options, reload, reconcile, admin endpoints
#![deny(unsafe_code)]

mod access;
pub mod admin;
pub mod capture;
pub mod drain;
pub mod forward;
pub mod metrics;
mod node;
pub mod options;
mod proxy;

pub use node::{run, run_with, NodeOptions, NodeSources};
pub use options::ProxyOptions;

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the node proxy could not start or serve a workload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(#[from] weir_core::ConfigErrors),
    #[error("mesh CA: {0}")]
    Identity(#[from] weir_identity::Error),
    #[error("workload {workload}: network namespace {netns:?} (/var/run/netns/{netns}): {source}; create it (ip netns add) or fix spec.netns")]
    Netns {
        workload: String,
        netns: String,
        source: std::io::Error,
    },
    #[error("workload {workload}: network namespace of pod {uid}: {source}")]
    PodNetns {
        workload: String,
        uid: String,
        source: std::io::Error,
    },
    #[error("workload {workload}: cannot listen on port {port} in its network namespace: {source}; is another proxy already serving it?")]
    Bind {
        workload: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("capture rules: {0}")]
    Capture(#[from] capture::Error),
    #[error("cannot listen on {addr} for {what}: {source}; pass --{what}-addr to move it")]
    Admin {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("state directory {0}: {1}")]
    StateDir(PathBuf, std::io::Error),
    /// Wiring of the proxy's sources (e.g. `--control` flags).
    #[error("{0}")]
    Setup(String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Identity(_) => "identity",
            Error::Netns { .. } | Error::PodNetns { .. } => "netns",
            Error::Bind { .. } => "bind",
            Error::Capture(_) => "capture",
            Error::Admin { .. } => "admin",
            Error::StateDir(..) => "state_dir",
            Error::Setup(_) => "setup",
        }
    }
}
