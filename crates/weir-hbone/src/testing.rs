//! Test fixtures: a throwaway mesh CA, SPIFFE leaf certificates and the
//! rustls configs the node proxy would build from them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use weir_core::SpiffeId;

use crate::client::Connector;

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

pub(crate) struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl TestCa {
    pub(crate) fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "weir test mesh");
        let root = params.self_signed(&key).unwrap().der().clone();
        Self {
            issuer: Issuer::new(params, key),
            root,
        }
    }

    /// A leaf for `id`, with an IP SAN when it is a server certificate.
    pub(crate) fn leaf(&self, id: &str, ip: Option<IpAddr>) -> Leaf {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        if let Some(ip) = ip {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: vec![cert.der().clone(), self.root.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.clone()).unwrap();
        Arc::new(roots)
    }

    /// TLS 1.3 server requiring a client certificate from this CA.
    pub(crate) fn server_config(&self, id: &str) -> Arc<rustls::ServerConfig> {
        let leaf = self.leaf(id, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots(), provider())
            .build()
            .unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(leaf.chain, leaf.key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    }

    pub(crate) fn client_config(&self, id: &str) -> Arc<rustls::ClientConfig> {
        self.client_config_trusting(id, self)
    }

    /// A client with this CA's certificate that trusts `roots`' root.
    pub(crate) fn client_config_trusting(
        &self,
        id: &str,
        roots: &TestCa,
    ) -> Arc<rustls::ClientConfig> {
        let leaf = self.leaf(id, None);
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots.roots())
            .with_client_auth_cert(leaf.chain, leaf.key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    }
}

/// A connector with one client config per source identity.
pub(crate) struct TestConnector {
    configs: HashMap<SpiffeId, Arc<rustls::ClientConfig>>,
}

impl TestConnector {
    pub(crate) fn new(ca: &TestCa, sources: &[&str]) -> Arc<Self> {
        let configs = sources
            .iter()
            .map(|s| (s.parse().unwrap(), ca.client_config(s)))
            .collect();
        Arc::new(Self { configs })
    }
}

impl Connector for TestConnector {
    fn tls_config(
        &self,
        source: &SpiffeId,
        _expected: Option<&SpiffeId>,
    ) -> std::io::Result<Arc<rustls::ClientConfig>> {
        Ok(self.configs[source].clone())
    }
}

/// A TCP echo server on loopback that half-closes after echoing EOF.
pub(crate) async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
            });
        }
    });
    addr
}
