//! `tls.minProtocolVersion` / `maxProtocolVersion`, in process with real
//! TLS handshakes: a KafkaGateway asking for TLS 1.3 at least refuses a
//! TLS 1.2-only client with a protocol-version alert and serves a TLS 1.3
//! one; an Istio Gateway SIMPLE server capped at TLS 1.2 does the reverse.
//! Both pick AES-128-GCM over the AES-256-GCM the client lists first.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, ServerName};

use common::{free_port, wait_for_port, Dir, TestGateway};

/// Whether a client speaking only `version` completes a handshake with
/// `addr` for `sni`, and the suite it got. The client lists its suites in
/// rustls' order (AES-256-GCM first, as OpenSSL's default).
async fn handshake(
    addr: SocketAddr,
    sni: &'static str,
    roots: &RootCertStore,
    version: &'static SupportedProtocolVersion,
) -> Result<rustls::CipherSuite, String> {
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
        Ok(Ok(tls)) => Ok(tls
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .expect("a completed handshake has a suite")
            .suite()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".to_owned()),
    }
}

/// Asserts that a client speaking only `version` is refused with a
/// protocol-version alert.
async fn assert_refused(
    addr: SocketAddr,
    sni: &'static str,
    roots: &RootCertStore,
    version: &'static SupportedProtocolVersion,
    what: &str,
) {
    let refused = handshake(addr, sni, roots, version).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("ProtocolVersion")),
        "{what}: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_versions_are_enforced() {
    let dir = Dir::new("weir-gw-tlsver");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![
        "kafka.example.com".to_owned(),
        "legacy.example.com".to_owned(),
    ])
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
    let gateway_port = free_port();
    // The Gateway server's route goes here; connections only need to be
    // accepted (the kernel does that from the backlog).
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
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
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: apps}}
spec:
  servers:
  - port: {{number: {gateway_port}, name: tls-legacy, protocol: TLS}}
    hosts: [legacy.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {crt}, privateKey: {pem_key}, maxProtocolVersion: TLSV1_2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: legacy, namespace: apps}}
spec:
  hosts: [legacy.example.com]
  gateways: [edge]
  tcp:
  - route: [{{destination: {{host: 127.0.0.1, port: {{number: {backend_port}}}}}}}]
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
    assert_refused(
        kafka,
        sni,
        &roots,
        &TLS12,
        "KafkaGateway with minProtocolVersion TLSV1_3, a TLS 1.2 client",
    )
    .await;
    let suite = handshake(kafka, sni, &roots, &TLS13)
        .await
        .expect("KafkaGateway serves TLS 1.3");
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);

    // The Gateway's listener starts with the KafkaGateway's, not before it.
    wait_for_port(gateway_port).await;
    let edge = SocketAddr::from(([127, 0, 0, 1], gateway_port));
    let sni = "legacy.example.com";
    assert_refused(
        edge,
        sni,
        &roots,
        &TLS13,
        "Gateway server with maxProtocolVersion TLSV1_2, a TLS 1.3 client",
    )
    .await;
    let suite = handshake(edge, sni, &roots, &TLS12)
        .await
        .expect("the Gateway server serves TLS 1.2");
    assert_eq!(
        suite,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    );
    drop(backend);

    gateway.stop().await;
}
