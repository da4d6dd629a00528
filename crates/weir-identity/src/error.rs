//! The crate's error type: every variant says what the operator can do about it.

use std::io;
use std::path::PathBuf;

use weir_core::{SpiffeId, TrustDomain};

/// Errors from the mesh CA, certificate issuance and TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CA state directory could not be created.
    #[error("cannot create CA state directory {path}: {source}; check that its parent exists and is writable by weir")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The CA certificate file could not be read.
    #[error("cannot read CA certificate {path}: {source}; pass --ca-cert with a PEM X.509 CA certificate")]
    ReadCaCert {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The CA key file could not be read.
    #[error("cannot read CA key {path}: {source}; pass --ca-key with a PEM PKCS#8 P-256 key")]
    ReadCaKey {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The CA certificate file was read but is not a usable CA certificate.
    #[error("CA certificate {path} is not usable: {reason}; pass --ca-cert with a PEM X.509 CA certificate (basic constraints CA:TRUE)")]
    InvalidCaCert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA key file was read but is not a usable key.
    #[error("CA key {path} is not usable: {reason}; pass --ca-key with a PEM PKCS#8 P-256 key")]
    InvalidCaKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA key does not belong to the CA certificate.
    #[error("CA key {key} does not match the public key in CA certificate {cert}; pass the --ca-key that belongs to --ca-cert")]
    CaKeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// Only one of the two CA files exists in the state directory.
    #[error("CA state directory {dir} holds {present} but not {missing}; restore the missing file, or remove {present} to create a new mesh root (every workload then needs new certificates)")]
    IncompleteCaState {
        /// The state directory.
        dir: PathBuf,
        /// The file that exists.
        present: &'static str,
        /// The file that is missing.
        missing: &'static str,
    },
    /// Writing the CA files failed.
    #[error(
        "cannot write {path}: {source}; check that the CA state directory is writable by weir"
    )]
    WriteState {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A certificate was requested for an identity outside the CA's trust domain.
    #[error("refusing to issue a certificate for {id}: this CA serves trust domain {ca_trust_domain}; check the workload's trust domain (--trust-domain)")]
    ForeignTrustDomain {
        /// The requested identity.
        id: SpiffeId,
        /// The CA's trust domain.
        ca_trust_domain: TrustDomain,
    },
    /// The requested validity period is empty.
    #[error("cannot issue a certificate whose validity ends before it starts; check the certificate TTL")]
    EmptyValidity,
    /// Certificate generation (key generation, encoding or signing) failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: String,
        /// The underlying error.
        source: rcgen::Error,
    },
    /// rustls refused a key or configuration.
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// A certificate signing request cannot be signed.
    #[error("certificate signing request refused: {reason}; send a PEM PKCS#10 request signed by a P-256 key")]
    InvalidCsr {
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate signing request names another identity than the one asked for.
    #[error("certificate signing request for {id} carries SAN {in_csr}; its SAN must be empty or exactly that SPIFFE id")]
    CsrIdentityMismatch {
        /// The identity asked for.
        id: SpiffeId,
        /// The SAN found in the request.
        in_csr: String,
    },
    /// A manager whose certificates come from a remote CA has none yet for this identity.
    #[error("no certificate for {id} yet: with a remote CA (the control plane) certificates are requested when a workload starts (IdentityManager::prepare)")]
    NotPrepared {
        /// The identity.
        id: SpiffeId,
    },
    /// A synchronous issuance was asked of a manager whose CA is remote.
    #[error("cannot issue a certificate for {id} synchronously: this manager's certificates are signed by the control plane; use IdentityManager::prepare or renew_due")]
    RemoteIssuer {
        /// The identity.
        id: SpiffeId,
    },
    /// The remote CA (the control plane) did not sign.
    #[error("the control plane did not sign a certificate for {id}: {source}")]
    Remote {
        /// The identity.
        id: SpiffeId,
        /// What went wrong (transport, refusal).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The remote CA returned a certificate this manager cannot use.
    #[error("the certificate the control plane returned for {id} is not usable: {reason}; does --control-ca hold the mesh root the control plane signs with?")]
    InvalidIssued {
        /// The identity.
        id: SpiffeId,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// A short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::StateDir { .. } => "state_dir",
            Error::ReadCaCert { .. } | Error::ReadCaKey { .. } => "read_ca",
            Error::InvalidCaCert { .. } | Error::InvalidCaKey { .. } => "invalid_ca",
            Error::CaKeyMismatch { .. } => "ca_key_mismatch",
            Error::IncompleteCaState { .. } => "incomplete_ca_state",
            Error::WriteState { .. } => "write_state",
            Error::ForeignTrustDomain { .. } => "foreign_trust_domain",
            Error::EmptyValidity => "empty_validity",
            Error::Generate { .. } => "generate",
            Error::Tls(_) => "tls",
            Error::InvalidCsr { .. } => "invalid_csr",
            Error::CsrIdentityMismatch { .. } => "csr_identity_mismatch",
            Error::NotPrepared { .. } => "not_prepared",
            Error::RemoteIssuer { .. } => "remote_issuer",
            Error::Remote { .. } => "remote",
            Error::InvalidIssued { .. } => "invalid_issued",
        }
    }
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
