//! Readiness and certificate problems, in process with real TLS handshakes:
//! a KafkaGateway whose key does not match its certificate is not ready
//! (503 naming the listener); one whose working certificate is replaced by
//! an unusable one stays ready and keeps serving the previous certificate.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};

use common::{free_port, Dir, TestGateway};

fn config(dir: &Dir, port: u16) -> std::path::PathBuf {
    let (crt, key) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));
    let path = dir.0.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: weir.dev/v1alpha1
kind: KafkaGateway
metadata: {{name: external, namespace: kafka}}
spec:
  port: {port}
  tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}
  bootstrapHost: kafka.example.com
  brokerHostTemplate: \"b{{id}}-kafka.example.com\"
  upstream: {{bootstrapServers: [\"127.0.0.1:9\"]}}
",
            crt.display(),
            key.display()
        ),
    )
    .unwrap();
    path
}

/// A certificate for kafka.example.com and its key, as PEM.
fn cert() -> (String, String, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["kafka.example.com".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (
        cert.pem(),
        key.serialize_pem(),
        CertificateDer::from(cert.der().to_vec()),
    )
}

async fn handshake(port: u16, root: &CertificateDer<'static>) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("kafka.example.com").unwrap(), tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_without_a_usable_certificate_is_not_ready() {
    let dir = Dir::new("weir-gw-ready-bad");
    let (crt, _, _) = cert();
    let (_, other_key, _) = cert();
    std::fs::write(dir.0.join("tls.crt"), crt).unwrap();
    std::fs::write(dir.0.join("tls.key"), other_key).unwrap();
    let port = free_port();
    let gw = TestGateway::start(
        &dir,
        config(&dir, port),
        Arc::new(weir_gateway::kafka::KafkaListeners::new()),
        port,
    )
    .await;
    let (code, body) = gw.readiness().await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("kafka:kafka/external") && body.contains("TLS"),
        "{body}"
    );
    // The message names both files.
    assert!(
        body.contains(&format!(
            "privateKey {} does not match serverCertificate {}",
            dir.0.join("tls.key").display(),
            dir.0.join("tls.crt").display()
        )),
        "{body}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_rotation_keeps_the_previous_certificate() {
    let dir = Dir::new("weir-gw-ready-rotate");
    let (crt, key, root) = cert();
    std::fs::write(dir.0.join("tls.crt"), &crt).unwrap();
    std::fs::write(dir.0.join("tls.key"), &key).unwrap();
    let port = free_port();
    let gw = TestGateway::start(
        &dir,
        config(&dir, port),
        Arc::new(weir_gateway::kafka::KafkaListeners::new()),
        port,
    )
    .await;
    let mut ready = (0, String::new());
    for _ in 0..50 {
        ready = gw.readiness().await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    handshake(port, &root).await.expect("the first certificate");

    // A rotation writes a key that does not match the certificate.
    let (_, other_key, _) = cert();
    std::fs::write(dir.0.join("tls.key"), other_key).unwrap();
    // Several reload ticks (1 s each).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (code, body) = gw.readiness().await;
    assert_eq!(code, 200, "{body}");
    handshake(port, &root)
        .await
        .expect("still served with the previous certificate");
    gw.stop().await;
}

/// A server whose TLS settings change (SIMPLE to MUTUAL) and whose new files
/// cannot be used is not served with its old settings: a client without a
/// certificate no longer gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_changed_to_mutual_never_goes_on_without_client_certificates() {
    let dir = Dir::new("weir-gw-ready-mutual");
    let (crt, key, root) = cert();
    std::fs::write(dir.0.join("tls.crt"), &crt).unwrap();
    std::fs::write(dir.0.join("tls.key"), &key).unwrap();
    let port = free_port();
    let path = config(&dir, port);
    let gw = TestGateway::start(
        &dir,
        path.clone(),
        Arc::new(weir_gateway::kafka::KafkaListeners::new()),
        port,
    )
    .await;
    handshake(port, &root)
        .await
        .expect("SIMPLE: no client certificate needed");
    // MUTUAL with a CA file that does not exist.
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "mode: SIMPLE,",
        &format!(
            "mode: MUTUAL, caCertificates: {},",
            dir.0.join("missing-ca.pem").display()
        ),
    );
    std::fs::write(&path, text).unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let refused = handshake(port, &root).await;
    assert!(refused.is_err(), "served with the old SIMPLE settings");
    gw.stop().await;
}

/// Once ready, a port added later that cannot be bound (another process
/// holds it) is reported and retried, but the gateway stays ready for every
/// other listener; the port is served once it is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_cannot_be_bound_later_does_not_make_the_gateway_unready() {
    let dir = Dir::new("weir-gw-ready-bind");
    let (crt, key, root) = cert();
    std::fs::write(dir.0.join("tls.crt"), &crt).unwrap();
    std::fs::write(dir.0.join("tls.key"), &key).unwrap();
    let port = free_port();
    let path = config(&dir, port);
    let gw = TestGateway::start(
        &dir,
        path.clone(),
        Arc::new(weir_gateway::kafka::KafkaListeners::new()),
        port,
    )
    .await;
    let mut ready = (0, String::new());
    for _ in 0..50 {
        ready = gw.readiness().await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    // A second KafkaGateway on a port another process holds.
    let held = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let first = std::fs::read_to_string(&path).unwrap();
    let second = first
        .replace("name: external", "name: second")
        .replace(&format!("port: {port}"), &format!("port: {taken}"))
        .replace("kafka.example.com", "kafka2.example.com");
    std::fs::write(&path, format!("{first}---\n{second}")).unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (code, body) = gw.readiness().await;
    assert_eq!(code, 200, "{body}");
    handshake(port, &root)
        .await
        .expect("the first listener still serves");
    // Freed: listened on at a later tick.
    drop(held);
    let mut bound = false;
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", taken)).is_ok() {
            bound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bound, "the freed port was never listened on");
    gw.stop().await;
}
