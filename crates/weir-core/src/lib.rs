//! weir's I/O-free core: SPIFFE identities, the configuration model (Kubernetes-style
//! YAML documents parsed into typed kinds), and the policy engine that implements
//! Istio's PeerAuthentication and AuthorizationPolicy semantics.
//!
//! Nothing in this crate opens a socket or spawns a task; it is cheap to test
//! exhaustively.
#![forbid(unsafe_code)]

pub mod spiffe;

pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub mod config;
pub mod kafka;
pub mod policy;

pub use config::{Config, ConfigError, ConfigErrors, MeshSettings};
