//! The extension point for protocol-aware listeners, in process: a
//! [`TerminatedListeners`] source gets an ISTIO_MUTUAL listener; a mesh
//! client connects with its SPIFFE certificate; the handler receives the
//! decrypted stream, the client's principal and the SNI. A plaintext client
//! on the same port is refused and counted, and the listener keeps serving.
//! A Gateway server on the listener's port is ignored and reported.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, Dir, TestGateway};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use weir_core::config::{ServerTls, TlsMode};
use weir_core::{Config, SpiffeId};
use weir_gateway::{
    TerminatedConnection, TerminatedHandler, TerminatedListener, TerminatedListeners,
};
use weir_hbone::BoxFuture;
use weir_identity::{CertificateAuthority, IdentityManager, TlsMetrics};

#[derive(Debug)]
struct Echo {
    port: u16,
}

struct EchoHandler;

impl TerminatedHandler for EchoHandler {
    fn handle(&self, conn: TerminatedConnection) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let TerminatedConnection {
                stream,
                principal,
                sni,
                ..
            } = conn;
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            if stream.read_line(&mut line).await.is_err() {
                return;
            }
            let reply = format!(
                "principal={principal} sni={} said={}\n",
                sni.unwrap_or_default(),
                line.trim()
            );
            let _ = stream.get_mut().write_all(reply.as_bytes()).await;
            let _ = stream.get_mut().shutdown().await;
        })
    }
}

impl TerminatedListeners for Echo {
    fn listeners(
        &self,
        _config: &Config,
        labels: &BTreeMap<String, String>,
    ) -> Vec<TerminatedListener> {
        assert_eq!(
            labels.get("istio").map(String::as_str),
            Some("ingressgateway")
        );
        let mut tls = ServerTls::passthrough();
        tls.mode = TlsMode::IstioMutual;
        vec![TerminatedListener {
            name: "test/echo".to_owned(),
            source: "test extension echo".to_owned(),
            port: self.port,
            tls,
            handler: Arc::new(EchoHandler),
        }]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_listener_gets_stream_principal_and_sni() {
    let dir = Dir::new("weir-gw-ext");
    let port = free_port();
    // A Gateway in another namespace, for other hosts, on the same port.
    std::fs::write(
        dir.0.join("gateway.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: clash, namespace: other}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: tls-clash, protocol: TLS}}\n    hosts: ['*.other.com']\n    tls: {{mode: PASSTHROUGH}}\n"
        ),
    )
    .unwrap();
    let gateway = TestGateway::start(
        &dir,
        dir.0.join("gateway.yaml"),
        Arc::new(Echo { port }),
        port,
    )
    .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    // A mesh client with its own SPIFFE certificate from the same CA.
    let ca = Arc::new(
        CertificateAuthority::load_or_create(&dir.0.join("ca"), Default::default()).unwrap(),
    );
    let ids = IdentityManager::new(ca, Duration::from_secs(3600), TlsMetrics::default()).unwrap();
    let client_id: SpiffeId = "spiffe://cluster.local/ns/apps/sa/client".parse().unwrap();
    let gateway_id: SpiffeId = "spiffe://cluster.local/ns/istio-system/sa/weir-gateway"
        .parse()
        .unwrap();
    let connect = |payload: &'static str| {
        let config = ids
            .client_config(&client_id, Some(gateway_id.clone()))
            .unwrap();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::try_from("ext.example.com").unwrap(), tcp)
                .await
                .expect("mesh TLS handshake with the gateway");
            tls.write_all(format!("{payload}\n").as_bytes())
                .await
                .unwrap();
            let mut reply = String::new();
            let _ = tls.read_to_string(&mut reply).await;
            reply
        }
    };
    let reply = connect("hello").await;
    assert_eq!(
        reply,
        "principal=spiffe://cluster.local/ns/apps/sa/client sni=ext.example.com said=hello\n"
    );

    // Plaintext on the same port: refused and counted; the listener carries on.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "a plaintext client got {buf:?}");
    assert_eq!(connect("again").await.lines().count(), 1);

    let get = |port: u16, path: &'static str| async move {
        let mut m = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        m.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut text = String::new();
        m.read_to_string(&mut text).await.unwrap();
        text
    };
    // The Gateway server lost the port to the extension listener: reported.
    let dump = get(gateway.admin_port, "/config_dump").await;
    let body = dump.split("\r\n\r\n").nth(1).unwrap();
    let dump: serde_json::Value = serde_json::from_str(body).unwrap();
    let problems = dump["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{dump:#}");
    assert_eq!(
        problems[0],
        format!("Gateway other/clash server 0 (port {port}) conflicts with test extension echo on the same port and is ignored: on a gateway instance both select, the port is the test extension echo's; use another port, or selectors that do not both match")
    );
    assert_eq!(
        dump["extension_listeners"][port.to_string()]["name"],
        "test/echo"
    );

    let text = get(gateway.metrics_port, "/metrics").await;
    assert!(
        text.contains(&format!(
            "weir_gateway_connection_errors_total{{listener=\"{port}\",reason=\"not_tls\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "weir_gateway_connections_total{{listener=\"{port}\",route=\"test/echo\",mode=\"ISTIO_MUTUAL\"}} 2"
        )),
        "{text}"
    );

    gateway.stop().await;
}
