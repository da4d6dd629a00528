//! Real TLS handshakes over in-memory pipes (tokio-rustls on both ends),
//! checking the mesh rules, the failure counters and rotation.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, ProtocolVersion, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};
use weir_core::{SpiffeId, TrustDomain};
use weir_identity::{
    certified_key, mesh_client_config, mesh_server_config, peer_identity, CertSlot,
    CertificateAuthority, Direction, FailureReason, IdentityManager, MeshClientVerifier,
    MeshServerVerifier, TlsMetrics, DEFAULT_CERT_TTL,
};

const SERVER: &str = "spiffe://cluster.local/ns/kafka/sa/broker";
const CLIENT: &str = "spiffe://cluster.local/ns/app/sa/producer";

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

struct Mesh {
    ca: Arc<CertificateAuthority>,
    manager: Arc<IdentityManager>,
    metrics: TlsMetrics,
}

impl Mesh {
    fn new() -> Self {
        let ca = Arc::new(CertificateAuthority::generate(TrustDomain::default()).unwrap());
        let metrics = TlsMetrics::default();
        let manager =
            Arc::new(IdentityManager::new(ca.clone(), DEFAULT_CERT_TTL, metrics.clone()).unwrap());
        Self {
            ca,
            manager,
            metrics,
        }
    }

    fn server(&self) -> Arc<ServerConfig> {
        self.manager.server_config(&id(SERVER)).unwrap()
    }

    fn client(&self, expected: Option<SpiffeId>) -> Arc<ClientConfig> {
        self.manager.client_config(&id(CLIENT), expected).unwrap()
    }

    /// A server presenting an arbitrary certificate, verifying clients against this mesh.
    fn server_with(
        &self,
        cert: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    ) -> Arc<ServerConfig> {
        let slot = Arc::new(CertSlot::new(certified_key(cert.0, cert.1).unwrap()));
        let verifier = MeshClientVerifier::new(
            self.ca.root_cert_der(),
            TrustDomain::default(),
            self.metrics.clone(),
        )
        .unwrap();
        Arc::new(mesh_server_config(slot, Arc::new(verifier)).unwrap())
    }

    /// A client presenting an arbitrary certificate, verifying servers against this mesh.
    fn client_with(
        &self,
        cert: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    ) -> Arc<ClientConfig> {
        let slot = Arc::new(CertSlot::new(certified_key(cert.0, cert.1).unwrap()));
        let verifier = MeshServerVerifier::new(
            self.ca.root_cert_der(),
            TrustDomain::default(),
            None,
            self.metrics.clone(),
        )
        .unwrap();
        Arc::new(mesh_client_config(slot, Arc::new(verifier)).unwrap())
    }
}

type Outcome = (
    io::Result<server::TlsStream<DuplexStream>>,
    io::Result<client::TlsStream<DuplexStream>>,
);

async fn handshake(server_config: Arc<ServerConfig>, client_config: Arc<ClientConfig>) -> Outcome {
    let (client_io, server_io) = duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server_config);
    let connector = TlsConnector::from(client_config);
    // The name is not checked by the mesh verifier; any valid name will do.
    let name = ServerName::try_from("mesh.invalid").unwrap();
    let both = async {
        tokio::join!(
            acceptor.accept(server_io),
            connector.connect(name, client_io)
        )
    };
    tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("handshake hung")
}

/// Whether the client can use its connection (a server-side refusal in TLS 1.3
/// reaches the client only as an alert after its own handshake completed).
async fn client_works(client: io::Result<client::TlsStream<DuplexStream>>) -> bool {
    let Ok(mut client) = client else {
        return false;
    };
    let _ = client.write_all(b"ping").await;
    let _ = client.flush().await;
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

async fn ping_pong(
    server: &mut server::TlsStream<DuplexStream>,
    client: &mut client::TlsStream<DuplexStream>,
) {
    client.write_all(b"ping").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").await.unwrap();
    server.flush().await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

#[tokio::test]
async fn mutual_tls_both_sides_see_peer_identity() {
    let mesh = Mesh::new();
    let (server, client) = handshake(mesh.server(), mesh.client(Some(id(SERVER)))).await;
    let (mut server, mut client) = (server.unwrap(), client.unwrap());

    assert_eq!(peer_identity(server.get_ref().1), Some(id(CLIENT)));
    assert_eq!(peer_identity(client.get_ref().1), Some(id(SERVER)));
    let states: [&rustls::CommonState; 2] = [server.get_ref().1, client.get_ref().1];
    for conn in states {
        assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    }
    ping_pong(&mut server, &mut client).await;
    assert_eq!(mesh.metrics.total_failures(Direction::Inbound), 0);
    assert_eq!(mesh.metrics.total_failures(Direction::Outbound), 0);
}

#[tokio::test]
async fn configs_offer_only_tls13() {
    let mesh = Mesh::new();
    // rustls does not expose the enabled versions; its Debug output does.
    for debug in [
        format!("{:?}", mesh.server()),
        format!("{:?}", mesh.client(None)),
    ] {
        assert!(debug.contains("versions: [TLSv1_3]"), "{debug}");
    }
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let mesh = Mesh::new();
    let verifier = MeshServerVerifier::new(
        mesh.ca.root_cert_der(),
        TrustDomain::default(),
        None,
        TlsMetrics::default(),
    )
    .unwrap();
    let config = ClientConfig::builder_with_provider(weir_identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let (server, client) = handshake(mesh.server(), Arc::new(config)).await;
    let err = server.unwrap_err();
    assert!(err.to_string().contains("no certificates"), "{err}");
    assert!(!client_works(client).await);
}

type Cert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Certificates that must be refused, with the reason they are counted under
/// and a fragment of the error message.
fn bad_certificates(mesh: &Mesh) -> Vec<(&'static str, Cert, FailureReason, &'static str)> {
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let from_workload = |w: weir_identity::WorkloadCertificate| (w.chain, w.key);
    let raw = |sans: &[&str]| {
        let r = mesh
            .ca
            .dangerous_issue_raw(
                sans.iter().map(|s| s.to_string()).collect(),
                now,
                now + hour,
            )
            .unwrap();
        (r.chain, r.key)
    };
    let foreign_ca = CertificateAuthority::generate(TrustDomain::default()).unwrap();
    vec![
        (
            "foreign CA",
            from_workload(foreign_ca.issue(&id(CLIENT), DEFAULT_CERT_TTL).unwrap()),
            FailureReason::UnknownCa,
            "UnknownIssuer",
        ),
        (
            "foreign trust domain",
            raw(&["spiffe://other.td/ns/app/sa/producer"]),
            FailureReason::ForeignTrustDomain,
            "trust domain other.td",
        ),
        (
            "expired",
            from_workload(
                mesh.ca
                    .issue_with_validity(&id(CLIENT), now - 2 * hour, now - hour)
                    .unwrap(),
            ),
            FailureReason::Expired,
            "expired",
        ),
        (
            "not yet valid",
            from_workload(
                mesh.ca
                    .issue_with_validity(&id(CLIENT), now + hour, now + 2 * hour)
                    .unwrap(),
            ),
            FailureReason::NotYetValid,
            "not valid yet",
        ),
        (
            "missing URI SAN",
            raw(&[]),
            FailureReason::MissingSpiffeId,
            "no URI SAN",
        ),
        (
            "malformed SPIFFE id",
            raw(&["spiffe://cluster.local/not/a/workload"]),
            FailureReason::MalformedSpiffeId,
            "is not a SPIFFE id",
        ),
        (
            "not a SPIFFE URI",
            raw(&["https://example.com/x"]),
            FailureReason::MalformedSpiffeId,
            "is not a SPIFFE id",
        ),
        (
            "two SPIFFE ids",
            raw(&[CLIENT, SERVER]),
            FailureReason::MalformedSpiffeId,
            "2 URI SANs",
        ),
    ]
}

#[tokio::test]
async fn server_refuses_bad_client_certificates_and_counts_them() {
    let mesh = Mesh::new();
    for (name, cert, reason, message) in bad_certificates(&mesh) {
        let before = mesh.metrics.failures(Direction::Inbound, reason);
        let (server, client) = handshake(mesh.server(), mesh.client_with(cert)).await;
        let err = server.expect_err(name);
        assert!(
            err.to_string().contains(message),
            "{name}: {err:?} should mention {message:?}"
        );
        assert!(!client_works(client).await, "{name}: client still works");
        assert_eq!(
            mesh.metrics.failures(Direction::Inbound, reason),
            before + 1,
            "{name}: not counted as {}",
            reason.as_str()
        );
    }
    assert_eq!(mesh.metrics.total_failures(Direction::Outbound), 0);
    assert_eq!(mesh.metrics.total_failures(Direction::Inbound), 8);
}

#[tokio::test]
async fn client_refuses_bad_server_certificates_and_counts_them() {
    let mesh = Mesh::new();
    for (name, cert, reason, message) in bad_certificates(&mesh) {
        let before = mesh.metrics.failures(Direction::Outbound, reason);
        let (server, client) = handshake(mesh.server_with(cert), mesh.client(None)).await;
        let err = client.expect_err(name);
        assert!(
            err.to_string().contains(message),
            "{name}: {err:?} should mention {message:?}"
        );
        assert!(server.is_err(), "{name}: server handshake succeeded");
        assert_eq!(
            mesh.metrics.failures(Direction::Outbound, reason),
            before + 1,
            "{name}: not counted as {}",
            reason.as_str()
        );
    }
    assert_eq!(mesh.metrics.total_failures(Direction::Inbound), 0);
    assert_eq!(mesh.metrics.total_failures(Direction::Outbound), 8);
}

/// A genuine mesh certificate presented by a peer that does not hold its
/// key (signing the handshake with another one) is refused and counted as
/// `bad_signature`, both ways.
#[tokio::test]
async fn a_certificate_without_its_key_is_refused_and_counted() {
    let mesh = Mesh::new();
    let copied = |who: &str| {
        let genuine = mesh.ca.issue(&id(who), DEFAULT_CERT_TTL).unwrap();
        let other = mesh.ca.issue(&id(who), DEFAULT_CERT_TTL).unwrap();
        let signer = rustls::crypto::ring::sign::any_supported_type(&other.key).unwrap();
        // CertifiedKey::new does not check that the key is the certificate's.
        Arc::new(CertSlot::new(Arc::new(rustls::sign::CertifiedKey::new(
            genuine.chain,
            signer,
        ))))
    };
    let client_verifier = Arc::new(
        MeshClientVerifier::new(
            mesh.ca.root_cert_der(),
            TrustDomain::default(),
            mesh.metrics.clone(),
        )
        .unwrap(),
    );
    let server_verifier = Arc::new(
        MeshServerVerifier::new(
            mesh.ca.root_cert_der(),
            TrustDomain::default(),
            None,
            mesh.metrics.clone(),
        )
        .unwrap(),
    );
    // A client with a copied certificate.
    let client = Arc::new(mesh_client_config(copied(CLIENT), server_verifier.clone()).unwrap());
    let (server, client) = handshake(mesh.server(), client).await;
    assert!(server.is_err());
    assert!(!client_works(client).await);
    assert_eq!(
        mesh.metrics
            .failures(Direction::Inbound, FailureReason::BadSignature),
        1
    );
    // A server with one.
    let server = Arc::new(mesh_server_config(copied(SERVER), client_verifier).unwrap());
    let (_, client) = handshake(server, mesh.client(None)).await;
    assert!(client.is_err());
    assert_eq!(
        mesh.metrics
            .failures(Direction::Outbound, FailureReason::BadSignature),
        1
    );
}

#[tokio::test]
async fn client_refuses_unexpected_server_identity() {
    let mesh = Mesh::new();
    let wanted = id("spiffe://cluster.local/ns/kafka/sa/other-broker");
    let (server, client) = handshake(mesh.server(), mesh.client(Some(wanted))).await;
    let err = client.unwrap_err();
    assert!(
        err.to_string()
            .contains("is not the expected spiffe://cluster.local/ns/kafka/sa/other-broker"),
        "{err}"
    );
    assert!(server.is_err());
    assert_eq!(
        mesh.metrics
            .failures(Direction::Outbound, FailureReason::IdentityMismatch),
        1
    );
}

#[tokio::test]
async fn rotation_serves_new_certificates_and_keeps_old_connections() {
    let mesh = Mesh::new();
    let (s1, c1) = handshake(mesh.server(), mesh.client(None)).await;
    let (mut s1, mut c1) = (s1.unwrap(), c1.unwrap());
    let server_leaf_1 = c1.get_ref().1.peer_certificates().unwrap()[0].clone();
    let client_leaf_1 = s1.get_ref().1.peer_certificates().unwrap()[0].clone();

    let old = mesh.manager.certificate(&id(SERVER)).unwrap();
    let new = mesh.manager.force_rotate(&id(SERVER)).unwrap();
    mesh.manager.force_rotate(&id(CLIENT)).unwrap();
    assert_ne!(old.leaf(), new.leaf());

    // Same cached configs, new certificates.
    let (s2, c2) = handshake(mesh.server(), mesh.client(None)).await;
    let (mut s2, mut c2) = (s2.unwrap(), c2.unwrap());
    let server_leaf_2 = c2.get_ref().1.peer_certificates().unwrap()[0].clone();
    let client_leaf_2 = s2.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(server_leaf_1, server_leaf_2);
    assert_ne!(client_leaf_1, client_leaf_2);
    assert_eq!(&server_leaf_2, new.leaf());
    assert_eq!(peer_identity(c2.get_ref().1), Some(id(SERVER)));

    // The first connection is untouched.
    ping_pong(&mut s1, &mut c1).await;
    ping_pong(&mut s2, &mut c2).await;
}

#[tokio::test]
async fn works_over_loopback_tcp() {
    let mesh = Mesh::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(mesh.server());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let peer = peer_identity(tls.get_ref().1);
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(&buf).await.unwrap();
        tls.shutdown().await.unwrap();
        peer
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = TlsConnector::from(mesh.client(Some(id(SERVER))))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(server.await.unwrap(), Some(id(CLIENT)));
}
