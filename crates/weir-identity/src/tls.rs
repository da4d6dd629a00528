//! rustls configurations for mesh connections: TLS 1.3 only, the ring provider
//! (never the process default), ALPN `h2`, mandatory client certificates, no
//! session resumption (every connection verifies a fresh certificate), and
//! certificates served from a replaceable [`CertSlot`] so rotation affects new
//! handshakes only.

use std::sync::{Arc, RwLock};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Result;

/// The ALPN protocol mesh connections negotiate (HBONE runs over HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// The only protocol version mesh connections use.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The crypto provider of every mesh config: ring, explicitly, with the TLS
/// 1.3 suites in the order the mesh prefers. AES-128-GCM comes first: with
/// AES-NI it is the cheapest suite per byte (fewer rounds than AES-256) and
/// every tunnelled byte is encrypted once per node proxy; ChaCha20 stays for
/// CPUs without AES instructions.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// Builds a rustls [`CertifiedKey`] from a chain and its private key.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>> {
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider())?))
}

/// The current certificate of one identity, shared by every config that serves
/// it. [`replace`](Self::replace) affects only handshakes that start later.
#[derive(Debug)]
pub struct CertSlot {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertSlot {
    /// A slot holding `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(key),
        }
    }

    /// The certificate new handshakes will present.
    pub fn current(&self) -> Arc<CertifiedKey> {
        // A poisoned lock still holds a valid Arc: keep serving it.
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the certificate for handshakes that start from now on.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut guard) => *guard = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A mesh server config: presents the certificate in `slot`, requires and
/// verifies a client certificate with `verifier`.
pub fn mesh_server_config(
    slot: Arc<CertSlot>,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A mesh client config: presents the certificate in `slot` and verifies the
/// server with `verifier` (no DNS name check).
pub fn mesh_client_config(
    slot: Arc<CertSlot>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(slot);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}
