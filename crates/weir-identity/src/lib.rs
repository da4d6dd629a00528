//! weir's workload identity: the mesh CA, SPIFFE leaf certificates, their
//! rotation, and rustls configurations that enforce the mesh's peer checks.
//!
//! # Public API
//!
//! - [`CertificateAuthority`] — `load_or_create(state_dir, trust_domain)`,
//!   `from_pem_files(cert, key, trust_domain)`, `generate(trust_domain)`,
//!   `issue(&id, ttl)`, `issue_with_validity(&id, not_before, not_after)`,
//!   `issue_with_names(&id, dns, ips, ttl)` (the control plane's serving
//!   certificate), `sign_csr(csr_pem, &id, ttl)` (the control plane's CA
//!   service), `dangerous_issue_raw(uri_sans, not_before, not_after)` (tests
//!   only), `root_cert_der()`, `root_cert_pem()`, `trust_domain()`.
//! - [`WorkloadCertificate`] — `id`, `chain` (leaf first), `key`, `not_before`,
//!   `not_after`, `refresh_at()` (half-life), `leaf()`.
//! - [`IdentityManager`] — the per-process certificate cache:
//!   `new(ca, ttl, metrics)` (local CA) or
//!   `with_remote_signer(root, trust_domain, ttl, metrics, signer)` (CSRs to
//!   the control plane through a [`CsrSigner`]), `prepare(&id).await`,
//!   `server_config(&id)`, `client_config(&id, expected_server)`,
//!   `certificate(&id)`, `force_rotate(&id)`, `rotate_due(now)`,
//!   `renew(&id).await`, `renew_due(now).await`, `next_refresh_at()`,
//!   `spawn_rotation(self: Arc<Self>)`.
//! - [`MeshClientVerifier`] / [`MeshServerVerifier`] — rustls verifiers: chain
//!   to the mesh root, validity period, exactly one SPIFFE URI SAN in the mesh
//!   trust domain, optional expected server identity; no DNS name checks.
//! - [`peer_identity`], [`spiffe_id_of`] — the SPIFFE id of a peer / a leaf.
//! - [`TlsMetrics`] — `weir_tls_handshake_failures_total{direction, reason}`.
//! - [`tls`] — building blocks: [`CertSlot`], [`mesh_server_config`],
//!   [`mesh_client_config`], [`certified_key`], [`provider`].
//! - [`Error`], [`Result`].
//!
//! Mesh TLS is TLS 1.3 only, uses the ring provider explicitly (never the
//! process default), negotiates ALPN `h2`, always requires client
//! certificates, and disables session resumption so every connection
//! verifies a current certificate.
#![forbid(unsafe_code)]

pub mod ca;
pub mod error;
pub mod manager;
pub mod metrics;
pub mod remote;
pub mod tls;
pub mod verify;

pub use ca::{
    certificate_pem, CertificateAuthority, RawCertificate, SignedLeaf, WorkloadCertificate,
    CLOCK_SKEW_ALLOWANCE, DEFAULT_CERT_TTL,
};
pub use error::{Error, Result};
pub use manager::IdentityManager;
pub use metrics::{Direction, FailureReason, TlsMetrics};
pub use remote::{CsrSigner, SignError, SignFuture};
pub use tls::{certified_key, mesh_client_config, mesh_server_config, provider, CertSlot, ALPN_H2};
pub use verify::{
    not_after_of, peer_identity, spiffe_id_of, MeshClientVerifier, MeshServerVerifier,
    PeerCertError,
};
