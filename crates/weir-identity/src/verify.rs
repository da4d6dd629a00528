//! rustls certificate verifiers that enforce the mesh rules: the chain leads to
//! the mesh root, the leaf is within its validity period, and it carries exactly
//! one URI SAN holding a SPIFFE id of the mesh trust domain (and, on the client
//! side, optionally a specific expected identity). DNS names are never checked:
//! mesh certificates have none.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use weir_core::{SpiffeId, TrustDomain};
use x509_parser::extensions::GeneralName;

use crate::error::{Error, Result};
use crate::metrics::{Direction, FailureReason, TlsMetrics};
use crate::tls::provider;

/// Why a peer certificate was refused.
///
/// `Debug` prints the same operator-facing message as `Display`, because
/// rustls formats `CertificateError::Other` with `Debug`.
#[derive(Clone, thiserror::Error)]
pub enum PeerCertError {
    /// The chain does not lead to the mesh root.
    #[error(
        "peer certificate is not signed by the mesh root ({0}); is the peer using another weir CA?"
    )]
    UnknownCa(rustls::Error),
    /// The certificate has expired.
    #[error("peer certificate has expired ({0}); is the peer's certificate rotation stuck, or a clock wrong?")]
    Expired(rustls::Error),
    /// The certificate is not valid yet.
    #[error("peer certificate is not valid yet ({0}); check clock synchronisation between nodes")]
    NotYetValid(rustls::Error),
    /// Any other chain verification failure.
    #[error("peer certificate refused: {0}")]
    Chain(rustls::Error),
    /// The leaf cannot be parsed.
    #[error("peer certificate cannot be parsed: {0}")]
    Unparseable(String),
    /// The leaf has no URI SAN.
    #[error(
        "peer certificate has no URI SAN with a SPIFFE id; it was not issued to a mesh workload"
    )]
    MissingSpiffeId,
    /// The leaf has more than one URI SAN.
    #[error("peer certificate has {0} URI SANs; a mesh certificate has exactly one SPIFFE id")]
    MultipleUriSans(usize),
    /// The URI SAN is not a SPIFFE id.
    #[error("peer certificate URI SAN {uri:?} is not a SPIFFE id spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>: {reason}")]
    MalformedSpiffeId {
        /// The URI SAN as presented.
        uri: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The SPIFFE id belongs to another trust domain.
    #[error("peer identity {id} is in trust domain {}, but this mesh trusts only {expected}", id.trust_domain())]
    ForeignTrustDomain {
        /// The presented identity.
        id: SpiffeId,
        /// The mesh trust domain.
        expected: TrustDomain,
    },
    /// The SPIFFE id is not the expected one.
    #[error("peer identity {got} is not the expected {expected}; the destination may be served by another workload")]
    IdentityMismatch {
        /// The presented identity.
        got: Box<SpiffeId>,
        /// The identity the client asked for.
        expected: Box<SpiffeId>,
    },
}

impl std::fmt::Debug for PeerCertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl PeerCertError {
    /// Classifies an error from rustls/webpki chain verification.
    fn from_chain(err: rustls::Error) -> Self {
        use CertificateError as C;
        match &err {
            rustls::Error::InvalidCertificate(c) => match c {
                // A same-named issuer whose signature does not verify is as
                // unknown as a missing one.
                C::UnknownIssuer | C::BadSignature => PeerCertError::UnknownCa(err),
                C::Expired | C::ExpiredContext { .. } => PeerCertError::Expired(err),
                C::NotValidYet | C::NotValidYetContext { .. } => PeerCertError::NotYetValid(err),
                _ => PeerCertError::Chain(err),
            },
            _ => PeerCertError::Chain(err),
        }
    }

    /// The metric label for this failure.
    pub fn reason(&self) -> FailureReason {
        match self {
            PeerCertError::UnknownCa(_) => FailureReason::UnknownCa,
            PeerCertError::Expired(_) => FailureReason::Expired,
            PeerCertError::NotYetValid(_) => FailureReason::NotYetValid,
            PeerCertError::Chain(_) | PeerCertError::Unparseable(_) => FailureReason::Other,
            PeerCertError::MissingSpiffeId => FailureReason::MissingSpiffeId,
            PeerCertError::MultipleUriSans(_) | PeerCertError::MalformedSpiffeId { .. } => {
                FailureReason::MalformedSpiffeId
            }
            PeerCertError::ForeignTrustDomain { .. } => FailureReason::ForeignTrustDomain,
            PeerCertError::IdentityMismatch { .. } => FailureReason::IdentityMismatch,
        }
    }

    /// The rustls error handed back to the handshake. Chain failures keep
    /// rustls's own error (so the peer gets the precise alert), except that
    /// every unknown-CA case becomes `UnknownIssuer` (alert `unknown_ca`);
    /// SPIFFE failures become `InvalidCertificate(Other)` carrying this
    /// error's message.
    fn into_rustls(self) -> rustls::Error {
        match self {
            PeerCertError::UnknownCa(_) => {
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            }
            PeerCertError::Expired(e) | PeerCertError::NotYetValid(e) | PeerCertError::Chain(e) => {
                e
            }
            other => rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                Arc::new(other),
            ))),
        }
    }
}

/// The end of a certificate's validity (`notAfter`), if it parses.
pub fn not_after_of(cert: &CertificateDer<'_>) -> Option<std::time::SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// Reads the SPIFFE id from a leaf certificate: exactly one URI SAN, which must
/// parse as a SPIFFE id. Does not verify the chain or the trust domain.
pub fn spiffe_id_of(leaf: &CertificateDer<'_>) -> Result<SpiffeId, PeerCertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| PeerCertError::Unparseable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PeerCertError::Unparseable(e.to_string()))?;
    let mut uris = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let uri = uris.next().ok_or(PeerCertError::MissingSpiffeId)?;
    let extra = uris.count();
    if extra > 0 {
        return Err(PeerCertError::MultipleUriSans(extra + 1));
    }
    uri.parse::<SpiffeId>()
        .map_err(|e| PeerCertError::MalformedSpiffeId {
            uri: uri.to_owned(),
            reason: e.to_string(),
        })
}

/// The SPIFFE id of the peer of an established connection, from its leaf
/// certificate's URI SAN. `None` before the handshake, without a client
/// certificate, or if the SAN is not a single SPIFFE id (which the mesh
/// verifiers never let through).
pub fn peer_identity(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    spiffe_id_of(leaf).ok()
}

/// The mesh checks on the leaf after the chain has been verified.
fn check_identity(
    leaf: &CertificateDer<'_>,
    trust_domain: &TrustDomain,
    expected: Option<&SpiffeId>,
) -> Result<SpiffeId, PeerCertError> {
    let id = spiffe_id_of(leaf)?;
    if id.trust_domain() != trust_domain {
        return Err(PeerCertError::ForeignTrustDomain {
            id,
            expected: trust_domain.clone(),
        });
    }
    if let Some(expected) = expected {
        if &id != expected {
            return Err(PeerCertError::IdentityMismatch {
                got: Box::new(id),
                expected: Box::new(expected.clone()),
            });
        }
    }
    Ok(id)
}

fn root_store(root: &CertificateDer<'static>) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone())?;
    Ok(Arc::new(roots))
}

/// What both verifiers do once the chain is checked: the SPIFFE rules, the
/// count and log line of a refusal, and the handshake signatures.
#[derive(Debug)]
struct MeshChecks {
    trust_domain: TrustDomain,
    metrics: TlsMetrics,
    direction: Direction,
    provider: Arc<CryptoProvider>,
}

impl MeshChecks {
    /// Applies the identity rules after `chain`, counts and logs a refusal,
    /// and answers rustls with `verified` or the refusal.
    fn conclude<T>(
        &self,
        chain: Result<(), PeerCertError>,
        leaf: &CertificateDer<'_>,
        expected: Option<&SpiffeId>,
        verified: T,
    ) -> Result<T, rustls::Error> {
        let peer = self.peer();
        match chain.and_then(|()| check_identity(leaf, &self.trust_domain, expected)) {
            Ok(id) => {
                tracing::trace!(peer = %id, "{peer} certificate accepted");
                Ok(verified)
            }
            Err(e) => {
                self.metrics.record(self.direction, e.reason());
                tracing::debug!(error = %e, reason = e.reason().as_str(), "{peer} certificate refused");
                Err(e.into_rustls())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let r = rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        );
        self.signature_checked(r)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let r = rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        );
        self.signature_checked(r)
    }

    /// Counts a handshake signature that does not verify: the peer showed a
    /// certificate the chain checks accepted without holding its key. (The
    /// proxies count handshake errors about certificates as the verifier's,
    /// so this is the only place it can be counted.)
    fn signature_checked(
        &self,
        r: Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if let Err(e) = &r {
            self.metrics
                .record(self.direction, FailureReason::BadSignature);
            tracing::debug!(error = %e, reason = FailureReason::BadSignature.as_str(), "{} handshake signature refused", self.peer());
        }
        r
    }

    /// Which end the verified certificate is, for log lines.
    fn peer(&self) -> &'static str {
        match self.direction {
            Direction::Inbound => "client",
            Direction::Outbound => "server",
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether `chain` (leaf first) is a valid client certificate chain of the
/// mesh `root` of `trust_domain` now, with a SPIFFE id of that trust
/// domain: for a certificate another CA was asked to accept (a gateway's
/// MUTUAL server), whether its SPIFFE URI SAN can be believed. No metrics:
/// a `false` is not a refused handshake.
pub fn issued_by_mesh(
    root: &CertificateDer<'static>,
    trust_domain: &TrustDomain,
    chain: &[CertificateDer<'_>],
) -> bool {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return false;
    };
    if !spiffe_id_of(leaf).is_ok_and(|id| id.trust_domain() == trust_domain) {
        return false;
    }
    let Ok(store) = root_store(root) else {
        return false;
    };
    let Ok(verifier) = WebPkiClientVerifier::builder_with_provider(store, provider()).build()
    else {
        return false;
    };
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .is_ok()
}

/// Server side: verifies client certificates. Client authentication is mandatory.
#[derive(Debug)]
pub struct MeshClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    checks: MeshChecks,
}

impl MeshClientVerifier {
    /// A verifier trusting only `root` and identities of `trust_domain`;
    /// refusals are counted as `direction="inbound"` in `metrics`.
    pub fn new(
        root: &CertificateDer<'static>,
        trust_domain: TrustDomain,
        metrics: TlsMetrics,
    ) -> Result<Self> {
        let provider = provider();
        let inner =
            WebPkiClientVerifier::builder_with_provider(root_store(root)?, provider.clone())
                .build()
                .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))?;
        Ok(Self {
            inner,
            checks: MeshChecks {
                trust_domain,
                metrics,
                direction: Direction::Inbound,
                provider,
            },
        })
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .map(|_| ())
            .map_err(PeerCertError::from_chain);
        self.checks
            .conclude(chain, end_entity, None, ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.checks.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.checks.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.checks.supported_verify_schemes()
    }
}

/// Client side: verifies server certificates against the mesh root and,
/// optionally, an expected SPIFFE id. The TLS server name is ignored.
#[derive(Debug)]
pub struct MeshServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Option<SpiffeId>,
    checks: MeshChecks,
}

impl MeshServerVerifier {
    /// A verifier trusting only `root` and identities of `trust_domain`; if
    /// `expected` is set, the server must present exactly that identity.
    /// Refusals are counted as `direction="outbound"` in `metrics`.
    pub fn new(
        root: &CertificateDer<'static>,
        trust_domain: TrustDomain,
        expected: Option<SpiffeId>,
        metrics: TlsMetrics,
    ) -> Result<Self> {
        Ok(Self {
            roots: root_store(root)?,
            expected,
            checks: MeshChecks {
                trust_domain,
                metrics,
                direction: Direction::Outbound,
                provider: provider(),
            },
        })
    }

    /// The identity this verifier requires, if any.
    pub fn expected(&self) -> Option<&SpiffeId> {
        self.expected.as_ref()
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = ParsedCertificate::try_from(end_entity)
            .and_then(|parsed| {
                verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &self.roots,
                    intermediates,
                    now,
                    self.checks.provider.signature_verification_algorithms.all,
                )
            })
            .map_err(PeerCertError::from_chain);
        self.checks.conclude(
            chain,
            end_entity,
            self.expected.as_ref(),
            ServerCertVerified::assertion(),
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.checks.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.checks.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.checks.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::ca::{CertificateAuthority, DEFAULT_CERT_TTL};

    #[test]
    fn spiffe_id_of_classifies_sans() {
        let ca = CertificateAuthority::generate(TrustDomain::default()).unwrap();
        let now = SystemTime::now();
        let later = now + Duration::from_secs(3600);
        let raw = |sans: &[&str]| {
            ca.dangerous_issue_raw(sans.iter().map(|s| s.to_string()).collect(), now, later)
                .unwrap()
                .chain
                .remove(0)
        };
        assert!(matches!(
            spiffe_id_of(&raw(&[])),
            Err(PeerCertError::MissingSpiffeId)
        ));
        assert!(matches!(
            spiffe_id_of(&raw(&["https://example.com/x"])),
            Err(PeerCertError::MalformedSpiffeId { .. })
        ));
        let two = spiffe_id_of(&raw(&[
            "spiffe://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/c",
        ]))
        .unwrap_err();
        assert_eq!(two.reason(), FailureReason::MalformedSpiffeId);
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let cert = ca.issue(&id, DEFAULT_CERT_TTL).unwrap();
        assert_eq!(spiffe_id_of(cert.leaf()).unwrap(), id);
        assert!(matches!(
            spiffe_id_of(&CertificateDer::from(vec![1, 2, 3])),
            Err(PeerCertError::Unparseable(_))
        ));
    }

    /// issued_by_mesh: the mesh CA's leaf of its trust domain, not another
    /// CA's leaf claiming the same SPIFFE id, nor the mesh's own leaf of a
    /// foreign trust domain.
    #[test]
    fn issued_by_mesh_believes_the_mesh_ca_only() {
        let mesh = CertificateAuthority::generate(TrustDomain::default()).unwrap();
        let other = CertificateAuthority::generate(TrustDomain::default()).unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/apps/sa/producer"
            .parse()
            .unwrap();
        let root = mesh.root_cert_der();
        let td = TrustDomain::default();
        let ours = mesh.issue(&id, DEFAULT_CERT_TTL).unwrap();
        assert!(issued_by_mesh(root, &td, std::slice::from_ref(ours.leaf())));
        let theirs = other.issue(&id, DEFAULT_CERT_TTL).unwrap();
        assert!(!issued_by_mesh(
            root,
            &td,
            std::slice::from_ref(theirs.leaf())
        ));
        let now = SystemTime::now();
        let foreign = mesh
            .dangerous_issue_raw(
                vec!["spiffe://partner.example/ns/x/sa/y".to_owned()],
                now,
                now + Duration::from_secs(3600),
            )
            .unwrap()
            .chain
            .remove(0);
        assert!(!issued_by_mesh(root, &td, &[foreign]));
        assert!(!issued_by_mesh(root, &td, &[]));
    }

    #[test]
    fn check_identity_enforces_trust_domain_and_expected() {
        let ca = CertificateAuthority::generate("other.td".parse().unwrap()).unwrap();
        let id: SpiffeId = "spiffe://other.td/ns/a/sa/b".parse().unwrap();
        let cert = ca.issue(&id, DEFAULT_CERT_TTL).unwrap();
        let err = check_identity(cert.leaf(), &TrustDomain::default(), None).unwrap_err();
        assert_eq!(err.reason(), FailureReason::ForeignTrustDomain);
        let other: SpiffeId = "spiffe://other.td/ns/a/sa/c".parse().unwrap();
        let err = check_identity(cert.leaf(), ca.trust_domain(), Some(&other)).unwrap_err();
        assert_eq!(err.reason(), FailureReason::IdentityMismatch);
        assert!(err.to_string().contains("sa/c"), "{err}");
        assert_eq!(
            check_identity(cert.leaf(), ca.trust_domain(), Some(&id)).unwrap(),
            id
        );
    }

    #[test]
    fn rustls_errors_carry_operator_messages() {
        let err = PeerCertError::MalformedSpiffeId {
            uri: "https://x".into(),
            reason: "a SPIFFE id must start with \"spiffe://\"".into(),
        };
        assert_eq!(err.reason(), FailureReason::MalformedSpiffeId);
        let shown = err.into_rustls().to_string();
        assert!(
            shown.contains("URI SAN \"https://x\" is not a SPIFFE id"),
            "{shown}"
        );
        let unknown = PeerCertError::from_chain(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature,
        ));
        assert_eq!(unknown.reason(), FailureReason::UnknownCa);
        assert_eq!(
            unknown.into_rustls(),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
    }
}
