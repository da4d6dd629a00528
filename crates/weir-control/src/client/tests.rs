//! The client against a real control plane on loopback: config, CSRs,
//! fail-static while the control plane is down, resync after it restarts.

use std::path::PathBuf;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use weir_core::config::SourceFile;
use weir_identity::{CertificateAuthority, IdentityManager, TlsMetrics};

use super::*;
use crate::auth::TokenFile;
use crate::catalog::key;
use crate::server::{serve, ControlOptions};
use crate::source::FileSource;

const TOKEN_A: &str = "token-of-node-a-0123456789";
const TOKEN_B: &str = "token-of-node-b-0123456789";

fn workloads(server_ip: &str) -> String {
    format!(
        "apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {{name: client, namespace: apps}}
spec: {{serviceAccount: client, address: 10.0.0.1, node: node-a}}
---
apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {{name: server, namespace: data}}
spec: {{serviceAccount: server, address: {server_ip}, node: node-b}}
"
    )
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("weir-control-client-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("config")).unwrap();
        Dir(p)
    }

    fn write(&self, content: &str) {
        // Atomically, so the control plane never reads half a file.
        let tmp = self.0.join("config/.w.yaml.tmp");
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, self.0.join("config/w.yaml")).unwrap();
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Stop = tokio::sync::oneshot::Sender<()>;

/// Starts a control plane on `port` (0: any); returns its port and a stopper.
async fn start(dir: &Dir, port: u16) -> (u16, Stop, tokio::task::JoinHandle<()>) {
    let mut options = ControlOptions::new(vec![dir.0.join("config")]);
    options.state_dir = dir.0.join("ca");
    options.reload_interval = Duration::from_millis(50);
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let monitoring = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let tokens =
        TokenFile::parse(&format!("nodes: {{node-a: {TOKEN_A}, node-b: {TOKEN_B}}}")).unwrap();
    let source = FileSource::new(
        options.config_paths.clone(),
        options.settings.clone(),
        options.reload_interval,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve(
            options,
            Box::new(source),
            Arc::new(tokens),
            listener,
            monitoring,
            async {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
    });
    (port, stop, task)
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn client(port: u16, node: &str, token: &str, root: CertificateDer<'static>) -> Arc<ControlClient> {
    let mut o = ClientOptions::new(
        format!("127.0.0.1:{port}"),
        node,
        token,
        root,
        MeshSettings::default(),
    );
    o.backoff_initial = Duration::from_millis(20);
    o.backoff_max = Duration::from_millis(200);
    ControlClient::new(o, ClientMetrics::register(&mut Registry::default())).unwrap()
}

fn server_address(c: &Option<Arc<Config>>) -> Option<String> {
    c.as_ref()?
        .workload("data", "server")
        .map(|w| w.address.to_string())
}

async fn wait_address(rx: &mut watch::Receiver<Option<Arc<Config>>>, ip: &str) {
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|c| server_address(c).as_deref() == Some(ip)),
    )
    .await
    .unwrap_or_else(|_| panic!("the server's address never became {ip}"))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_certificates_fail_static_and_resync() {
    let dir = Dir::new("e2e");
    dir.write(&workloads("10.0.0.2"));
    // The mesh CA the control plane loads; the node is given its root.
    let root = CertificateAuthority::load_or_create(&dir.0.join("ca"), Default::default())
        .unwrap()
        .root_cert_der()
        .clone();
    let (port, stop, task) = start(&dir, 0).await;

    let a = client(port, "node-a", TOKEN_A, root.clone());
    let (mut rx, watch_task) = a.clone().spawn_config_watch();
    wait_address(&mut rx, "10.0.0.2").await;
    assert_eq!(rx.borrow().as_ref().unwrap().workloads.len(), 2);
    assert!(a.metrics().is_connected());

    // Certificates: node-a's own workload yes, node-b's no.
    let manager = IdentityManager::with_remote_signer(
        root.clone(),
        Default::default(),
        Duration::from_secs(3600),
        TlsMetrics::default(),
        a.clone(),
    )
    .unwrap();
    let own: SpiffeId = "spiffe://cluster.local/ns/apps/sa/client".parse().unwrap();
    let cert = manager.prepare(&own).await.unwrap();
    assert_eq!(weir_identity::spiffe_id_of(cert.leaf()).unwrap(), own);
    let foreign: SpiffeId = "spiffe://cluster.local/ns/data/sa/server".parse().unwrap();
    let err = manager.prepare(&foreign).await.unwrap_err().to_string();
    assert!(err.contains("no Workload on node node-a"), "{err}");

    // node-a's token does not make you node-b.
    let impostor = client(port, "node-b", TOKEN_A, root.clone());
    let err = impostor
        .create_certificate(&foreign, "x".into(), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(err.is_refusal(), "{err}");
    assert!(
        err.to_string().contains("the token is not its token"),
        "{err}"
    );
    // The token is checked before the request is read: a request larger
    // than any CSR from the impostor is refused as unauthenticated...
    let big = "x".repeat(crate::grpc::MAX_CSR_REQUEST + 1);
    let err = impostor
        .create_certificate(&foreign, big.clone(), Duration::from_secs(60))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("the token is not its token"), "{err}");
    // ... and from node-a by the size limit, before it is decoded.
    let err = client(port, "node-a", TOKEN_A, root.clone())
        .create_certificate(&own, big, Duration::from_secs(60))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("too large"), "{err}");

    // A change reaches the node.
    dir.write(&workloads("10.0.0.3"));
    wait_address(&mut rx, "10.0.0.3").await;

    // The control plane goes away: the node keeps its config.
    stop.send(()).unwrap();
    task.await.unwrap();
    wait_until("disconnected", || !a.metrics().is_connected()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server_address(&rx.borrow()).as_deref(), Some("10.0.0.3"));

    // Changed while it was down; it comes back on the same port; the node
    // resyncs.
    dir.write(&workloads("10.0.0.4"));
    let (_, stop, task) = start(&dir, port).await;
    wait_address(&mut rx, "10.0.0.4").await;
    wait_until("reconnected", || a.metrics().is_connected()).await;

    drop(rx);
    watch_task.abort();
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[test]
fn apply_keeps_held_in_step_even_when_refused() {
    let settings = MeshSettings::default();
    let catalog = Catalog::load(
        &[SourceFile::new("w.yaml", workloads("10.0.0.2"))],
        settings.clone(),
    )
    .unwrap();
    let resources: Vec<Resource> = catalog
        .entries
        .values()
        .map(|e| e.resource.clone())
        .collect();
    let mut held = BTreeMap::new();
    let config = apply(
        &mut held,
        ConfigUpdate {
            full: true,
            resources: resources.clone(),
            ..ConfigUpdate::default()
        },
        &settings,
    )
    .unwrap();
    assert_eq!(config.workloads.len(), 2);

    // A delta that gives the server the client's address: refused by the
    // node's loader, but `held` mirrors what the control plane sent.
    let clash = Catalog::load(
        &[SourceFile::new(
            "w.yaml",
            workloads("10.0.0.1").replace(
                "address: 10.0.0.1, node: node-a",
                "address: 10.0.0.9, node: node-a",
            ),
        )],
        settings.clone(),
    )
    .unwrap();
    let server = clash.entries[&key("Workload", "data", "server")]
        .resource
        .clone();
    let err = apply(
        &mut held,
        ConfigUpdate {
            resources: vec![server.clone()],
            ..ConfigUpdate::default()
        },
        &settings,
    )
    .unwrap_err();
    assert!(err.to_string().contains("already the address"), "{err}");
    assert_eq!(
        held[&key("Workload", "data", "server")].version,
        server.version
    );

    // A removal.
    let config = apply(
        &mut held,
        ConfigUpdate {
            removed: vec![key("Workload", "apps", "client")],
            ..ConfigUpdate::default()
        },
        &settings,
    )
    .unwrap();
    assert_eq!(config.workloads.len(), 1);
    // A full update replaces everything.
    let config = apply(
        &mut held,
        ConfigUpdate {
            full: true,
            resources: vec![resources[0].clone()],
            ..ConfigUpdate::default()
        },
        &settings,
    )
    .unwrap();
    assert_eq!(config.workloads.len(), 1);
    assert_eq!(held.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_is_used_without_a_restart() {
    let dir = Dir::new("token");
    dir.write(&workloads("10.0.0.2"));
    let root = CertificateAuthority::load_or_create(&dir.0.join("ca"), Default::default())
        .unwrap()
        .root_cert_der()
        .clone();
    let (port, stop, task) = start(&dir, 0).await;
    // The token read at start-up is no longer node-a's (it was rotated).
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, "stale-token-of-node-a-000000\n").unwrap();
    let mut o = ClientOptions::new(
        format!("127.0.0.1:{port}"),
        "node-a",
        "stale-token-of-node-a-000000",
        root,
        MeshSettings::default(),
    );
    o.token_file = Some(token_file.clone());
    o.backoff_initial = Duration::from_millis(20);
    o.backoff_max = Duration::from_millis(100);
    let a = ControlClient::new(o, ClientMetrics::register(&mut Registry::default())).unwrap();
    let id: SpiffeId = "spiffe://cluster.local/ns/apps/sa/client".parse().unwrap();
    let csr = {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    };
    let err = a
        .create_certificate(&id, csr.clone(), Duration::from_secs(600))
        .await
        .unwrap_err();
    assert!(err.is_refusal(), "{err}");
    let (mut rx, watch_task) = a.clone().spawn_config_watch();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.borrow().is_none(), "no config with a stale token");

    // The kubelet writes the new token: the same client uses it.
    std::fs::write(&token_file, format!("{TOKEN_A}\n")).unwrap();
    wait_address(&mut rx, "10.0.0.2").await;
    let chain = a
        .create_certificate(&id, csr.clone(), Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(weir_identity::spiffe_id_of(&chain[0]).unwrap(), id);
    // A file that cannot be read keeps the token read last.
    std::fs::remove_file(&token_file).unwrap();
    a.create_certificate(&id, csr, Duration::from_secs(600))
        .await
        .unwrap();

    drop(rx);
    watch_task.await.unwrap();
    stop.send(()).unwrap();
    task.await.unwrap();
}
