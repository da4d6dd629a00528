//! Certificates signed by a remote CA (the control plane): the signer seam,
//! certificate signing requests, and the checks on what comes back.
//!
//! The private key is generated here and never leaves the process; the CSR
//! carries the public key and the SPIFFE id asked for. What the CA returns is
//! accepted only if it chains to the mesh root this process trusts, names
//! exactly the identity asked for, and certifies the key generated for it.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use weir_core::{SpiffeId, TrustDomain};

use crate::ca::WorkloadCertificate;
use crate::error::{Error, Result};
use crate::metrics::TlsMetrics;
use crate::verify::MeshServerVerifier;

/// An error from a [`CsrSigner`]: transport failures or the CA's refusal.
pub type SignError = Box<dyn std::error::Error + Send + Sync>;

/// The future a [`CsrSigner`] returns: the chain, leaf first.
pub type SignFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<CertificateDer<'static>>, SignError>> + Send + 'a>>;

/// Sends certificate signing requests to a remote CA (the control plane's CA
/// service) for an [`IdentityManager`](crate::IdentityManager) that holds no
/// CA key.
pub trait CsrSigner: Send + Sync + 'static {
    /// Asks the CA to sign `csr_pem` (PEM PKCS#10) for `id`, valid for `ttl`.
    /// Returns the chain, leaf first (the root may follow).
    fn sign<'a>(&'a self, id: &'a SpiffeId, csr_pem: String, ttl: Duration) -> SignFuture<'a>;
}

/// A fresh key and a CSR for one identity.
pub(crate) struct CertificateRequest {
    id: SpiffeId,
    key: KeyPair,
    /// The CSR, PEM: empty subject, the SPIFFE id as its only (URI) SAN.
    pub(crate) csr_pem: String,
}

impl CertificateRequest {
    /// Generates an ECDSA P-256 key and a CSR for `id` signed with it.
    pub(crate) fn new(id: &SpiffeId) -> Result<Self> {
        let gen_err = |source| Error::Generate {
            what: format!("a certificate signing request for {id}"),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().map_err(gen_err)?)];
        let csr_pem = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(gen_err)?;
        Ok(Self {
            id: id.clone(),
            key,
            csr_pem,
        })
    }

    /// Checks the chain the CA returned and pairs its leaf with the key.
    pub(crate) fn accept(
        self,
        chain: Vec<CertificateDer<'static>>,
        root: &CertificateDer<'static>,
        trust_domain: &TrustDomain,
    ) -> Result<WorkloadCertificate> {
        let invalid = |reason: String| Error::InvalidIssued {
            id: self.id.clone(),
            reason,
        };
        let Some((leaf, rest)) = chain.split_first() else {
            return Err(invalid("the chain is empty".to_owned()));
        };
        // Chain to the mesh root, validity now, exactly the SPIFFE id asked
        // for: the checks a peer makes. Not counted as handshake failures.
        let verifier = MeshServerVerifier::new(
            root,
            trust_domain.clone(),
            Some(self.id.clone()),
            TlsMetrics::default(),
        )?;
        let intermediates: Vec<CertificateDer<'static>> =
            rest.iter().filter(|c| *c != root).cloned().collect();
        let name = ServerName::try_from("weir-control.invalid")
            .map_err(|e| invalid(format!("internal: {e}")))?;
        verifier
            .verify_server_cert(leaf, &intermediates, &name, &[], UnixTime::now())
            .map_err(|e| invalid(e.to_string()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| invalid(format!("cannot parse X.509 ({e})")))?;
        if x509.public_key().subject_public_key.data.as_ref() != self.key.public_key_raw() {
            return Err(invalid(
                "it certifies another public key than the one in the request".to_owned(),
            ));
        }
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = u64::try_from(t.timestamp()).unwrap_or(0);
            UNIX_EPOCH + Duration::from_secs(secs)
        };
        let not_before: SystemTime = time(x509.validity().not_before);
        let not_after: SystemTime = time(x509.validity().not_after);
        Ok(WorkloadCertificate {
            id: self.id,
            chain: vec![leaf.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der())),
            not_before,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::ca::{CertificateAuthority, DEFAULT_CERT_TTL};
    use crate::IdentityManager;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    /// Signs with an in-process CA, as the control plane would; `claim`
    /// overrides the identity it signs for (a misbehaving CA).
    struct TestSigner {
        ca: Arc<CertificateAuthority>,
        claim: Option<SpiffeId>,
        refuse: bool,
        calls: AtomicUsize,
        /// Waited on before signing, when set (a slow CA).
        gate: Option<Arc<tokio::sync::Notify>>,
    }

    impl CsrSigner for TestSigner {
        fn sign<'a>(&'a self, id: &'a SpiffeId, csr_pem: String, ttl: Duration) -> SignFuture<'a> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::Relaxed);
                if let Some(gate) = &self.gate {
                    gate.notified().await;
                }
                if self.refuse {
                    return Err("permission denied".into());
                }
                let signed_for = self.claim.as_ref().unwrap_or(id);
                let leaf = self
                    .ca
                    .sign_csr(&csr_pem, signed_for, ttl)
                    .map_err(|e| -> SignError { Box::new(e) })?;
                Ok(vec![leaf.leaf, self.ca.root_cert_der().clone()])
            })
        }
    }

    fn remote(ca: &Arc<CertificateAuthority>, signer: TestSigner) -> IdentityManager {
        IdentityManager::with_remote_signer(
            ca.root_cert_der().clone(),
            TrustDomain::default(),
            DEFAULT_CERT_TTL,
            TlsMetrics::default(),
            Arc::new(signer),
        )
        .unwrap()
    }

    fn signer(ca: &Arc<CertificateAuthority>) -> TestSigner {
        TestSigner {
            ca: ca.clone(),
            claim: None,
            refuse: false,
            calls: AtomicUsize::new(0),
            gate: None,
        }
    }

    /// An identity forgotten (the workload left) while its renewal was at
    /// the CA stays forgotten: the late certificate is not installed, so it
    /// is not renewed (and refused) forever.
    #[tokio::test(flavor = "current_thread")]
    async fn a_renewal_in_flight_does_not_bring_back_a_forgotten_identity() {
        let ca = Arc::new(CertificateAuthority::generate(TrustDomain::default()).unwrap());
        let gate = Arc::new(tokio::sync::Notify::new());
        let m = remote(&ca, signer(&ca));
        let a = id("spiffe://cluster.local/ns/a/sa/a");
        m.prepare(&a).await.unwrap();
        let slow = remote(
            &ca,
            TestSigner {
                gate: Some(gate.clone()),
                ..signer(&ca)
            },
        );
        // The slow manager serves `a` too (prepared without the gate first).
        slow.install_for_test(&a, m.certificate(&a).unwrap());
        let (renewed, ()) = tokio::join!(slow.renew(&a), async {
            tokio::task::yield_now().await;
            slow.retain(|_| false);
            gate.notify_one();
        });
        renewed.unwrap();
        assert!(slow.identities().is_empty(), "{:?}", slow.identities());
        assert!(slow.next_refresh_at().is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn remote_manager_prepares_then_serves_and_renews() {
        let ca = Arc::new(CertificateAuthority::generate(TrustDomain::default()).unwrap());
        let m = remote(&ca, signer(&ca));
        let a = id("spiffe://cluster.local/ns/a/sa/a");
        assert!(m.is_remote() && m.ca().is_none());
        // Not fetched yet: the synchronous accessors refuse.
        assert!(matches!(
            m.server_config(&a),
            Err(Error::NotPrepared { .. })
        ));
        let first = m.prepare(&a).await.unwrap();
        assert_eq!(crate::spiffe_id_of(first.leaf()).unwrap(), a);
        assert!(Arc::ptr_eq(&first, &m.prepare(&a).await.unwrap()));
        m.server_config(&a).unwrap();
        m.client_config(&a, None).unwrap();
        // Synchronous rotation needs the CA in-process.
        assert!(matches!(
            m.force_rotate(&a),
            Err(Error::RemoteIssuer { .. })
        ));
        assert_eq!(m.renew_due(first.refresh_at()).await.unwrap(), 1);
        assert_ne!(m.certificate(&a).unwrap().leaf(), first.leaf());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn remote_refusal_and_wrong_identity_are_errors() {
        let ca = Arc::new(CertificateAuthority::generate(TrustDomain::default()).unwrap());
        let a = id("spiffe://cluster.local/ns/a/sa/a");
        let refusing = remote(
            &ca,
            TestSigner {
                refuse: true,
                ..signer(&ca)
            },
        );
        let err = refusing.prepare(&a).await.unwrap_err();
        assert!(matches!(err, Error::Remote { .. }), "{err}");
        assert!(err.to_string().contains("permission denied"), "{err}");
        assert!(refusing.identities().is_empty());

        // A CA that signs another identity than asked: refused here. The
        // CSR's SAN names `a`, so the CA itself refuses to sign it for `b`.
        let lying = remote(
            &ca,
            TestSigner {
                claim: Some(id("spiffe://cluster.local/ns/b/sa/b")),
                ..signer(&ca)
            },
        );
        let err = lying.prepare(&a).await.unwrap_err();
        assert!(err.to_string().contains("SAN"), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn chain_from_another_root_is_refused() {
        let ca = Arc::new(CertificateAuthority::generate(TrustDomain::default()).unwrap());
        let other = Arc::new(CertificateAuthority::generate(TrustDomain::default()).unwrap());
        // Trusts `ca`, but the signer uses `other`.
        let m = IdentityManager::with_remote_signer(
            ca.root_cert_der().clone(),
            TrustDomain::default(),
            DEFAULT_CERT_TTL,
            TlsMetrics::default(),
            Arc::new(signer(&other)),
        )
        .unwrap();
        let err = m
            .prepare(&id("spiffe://cluster.local/ns/a/sa/a"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidIssued { .. }), "{err}");
    }

    #[test]
    fn accept_refuses_a_leaf_for_another_key() {
        let ca = CertificateAuthority::generate(TrustDomain::default()).unwrap();
        let a = id("spiffe://cluster.local/ns/a/sa/a");
        let request = CertificateRequest::new(&a).unwrap();
        // A valid leaf for the right identity, but with the CA's own key pair.
        let foreign = ca.issue(&a, DEFAULT_CERT_TTL).unwrap();
        let err = request
            .accept(
                foreign.chain.clone(),
                ca.root_cert_der(),
                &TrustDomain::default(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("another public key"), "{err}");
    }
}
