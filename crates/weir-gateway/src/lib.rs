//! `weir gateway`: the mesh's TLS/SNI ingress (what Istio's ingress gateway
//! is for TLS and TCP).
//!
//! An instance serves the Istio `Gateway`s whose `spec.selector` matches its
//! labels (`--labels`, default `istio=ingressgateway`). Each server port
//! becomes a listener; `VirtualService` `tls` routes (by SNI) and `tcp`
//! routes (by port) bound to the Gateway pick a destination (a weir
//! `Service`, a `ServiceEntry` host or an address), reached over HBONE with
//! the gateway's own SPIFFE identity when it is a mesh Workload, over plain
//! TCP otherwise.
//!
//! - [`sni`]: reading and parsing a ClientHello without consuming it
//! - [`routes`]: the route table (pure): listeners, server by SNI, route
//! - [`tls`]: rustls configs for SIMPLE, MUTUAL and ISTIO_MUTUAL servers
//! - [`principal`]: the client's [`weir_core::kafka::Principal`] from its certificate
//! - [`upstream`]: connecting to destinations (HBONE or TCP, DNS)
//! - `listener`: one connection's life; the extension point for
//!   protocol-aware listeners ([`TerminatedListeners`], [`TerminatedHandler`])
//! - `gateway`: options, reload, listeners, admin endpoints, drain
//! - [`metrics`]: the `weir_gateway_*` metrics
#![forbid(unsafe_code)]

mod gateway;
mod io;
pub mod kafka;
mod listener;
pub mod metrics;
pub mod principal;
pub mod routes;
pub mod sni;
pub mod tls;
pub mod upstream;

pub use gateway::{run, run_with, GatewayOptions, GatewaySources, DEFAULT_LABELS};
pub use listener::{
    TerminatedConnection, TerminatedHandler, TerminatedListener, TerminatedListeners,
    TerminatedStream,
};
pub use principal::principal_of;
pub use upstream::{Connected, UpstreamError, UpstreamStream, Upstreams};

use std::net::SocketAddr;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(#[from] weir_core::ConfigErrors),
    #[error("mesh CA: {0}")]
    Identity(#[from] weir_identity::Error),
    #[error("gateway identity: {0}; check --namespace and --service-account")]
    Id(#[from] weir_core::SpiffeIdError),
    #[error("cannot listen on {addr} for {what}: {source}; pass --{what}-addr to move it")]
    Admin {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the control-plane config stream ended before the first config arrived")]
    ControlEnded,
}

impl Error {
    /// A short label for metrics and exit reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Identity(_) => "identity",
            Error::Id(_) => "identity",
            Error::Admin { .. } => "admin",
            Error::ControlEnded => "control",
        }
    }
}
