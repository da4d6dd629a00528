//! A KafkaGateway's `tls.minProtocolVersion`, in process with real TLS
//! handshakes: asking for TLS 1.3, it refuses a TLS 1.2-only client with a
//! protocol-version alert and serves a TLS 1.3 one.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, ServerName};

use common::{free_port, Dir, TestGateway};

/// Whether a client speaking only `version` completes a handshake with
/// `addr` for `sni`.
async fn handshake(
    addr: SocketAddr,
    sni: &'static str,
    roots: &RootCertStore,
    version: &'static SupportedProtocolVersion,
) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni).unwrap(), tcp);
    match tokio::time::timeout(Duration::from_secs(10), tls).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_versions_are_enforced() {
    let dir = Dir::new("weir-gw-tlsver");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["kafka.example.com".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (crt, pem_key) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&pem_key, key.serialize_pem()).unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.der().to_vec()))
        .unwrap();

    let kafka_port = free_port();
    let (crt, pem_key) = (crt.display(), pem_key.display());
    std::fs::write(
        dir.0.join("config.yaml"),
        format!(
            "apiVersion: weir.dev/v1alpha1
kind: KafkaGateway
metadata: {{name: external, namespace: kafka}}
spec:
  port: {kafka_port}
  tls: {{mode: SIMPLE, serverCertificate: {crt}, privateKey: {pem_key}, minProtocolVersion: TLSV1_3}}
  bootstrapHost: kafka.example.com
  brokerHostTemplate: \"b{{id}}-kafka.example.com\"
  upstream: {{bootstrapServers: [\"127.0.0.1:9\"]}}
"
        ),
    )
    .unwrap();
    let gateway = TestGateway::start(
        &dir,
        dir.0.join("config.yaml"),
        Arc::new(weir_gateway::kafka::KafkaListeners::new()),
        kafka_port,
    )
    .await;
    let kafka = SocketAddr::from(([127, 0, 0, 1], kafka_port));

    let sni = "kafka.example.com";
    let refused = handshake(kafka, sni, &roots, &TLS12).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("ProtocolVersion")),
        "KafkaGateway with minProtocolVersion TLSV1_3, a TLS 1.2 client: {refused:?}"
    );
    handshake(kafka, sni, &roots, &TLS13)
        .await
        .expect("KafkaGateway serves TLS 1.3");

    gateway.stop().await;
}
