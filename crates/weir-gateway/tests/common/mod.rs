//! What the in-process gateway tests share: free ports, a temporary
//! directory removed on drop, and a `weir_gateway::run` on loopback.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weir_gateway::{GatewayOptions, TerminatedListeners};

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory under the system's temporary directory, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Dir {
        let dir = Dir(std::env::temp_dir().join(format!("{name}-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        dir
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits (up to 5 s) until something listens on 127.0.0.1:`port`.
pub async fn wait_for_port(port: u16) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway never listened on {addr}");
}

/// A gateway running in this process on 127.0.0.1, its CA in `<dir>/ca`.
pub struct TestGateway {
    pub admin_port: u16,
    pub metrics_port: u16,
    pub readiness_port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), weir_gateway::Error>>,
}

impl TestGateway {
    /// Starts a gateway on `config` with `extension`, and waits until it
    /// listens on `port`.
    pub async fn start(
        dir: &Dir,
        config: PathBuf,
        extension: Arc<dyn TerminatedListeners>,
        port: u16,
    ) -> TestGateway {
        let (admin_port, metrics_port, readiness_port) = (free_port(), free_port(), free_port());
        let mut options = GatewayOptions::new(vec![config]);
        options.listen_address = [127, 0, 0, 1].into();
        options.common.state_dir = dir.0.join("ca");
        options.common.admin_addr = ([127, 0, 0, 1], admin_port).into();
        options.common.metrics_addr = ([127, 0, 0, 1], metrics_port).into();
        options.common.readiness_addr = ([127, 0, 0, 1], readiness_port).into();
        options.client_hello_timeout = Duration::from_secs(5);
        options.extensions.push(extension);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (_reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(weir_gateway::run(
            options,
            async {
                let _ = stop_rx.await;
            },
            reload_rx,
        ));
        wait_for_port(port).await;
        TestGateway {
            admin_port,
            metrics_port,
            readiness_port,
            stop,
            task,
        }
    }

    /// `GET /healthz/ready`: the status code and body.
    pub async fn readiness(&self) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.readiness_port))
            .await
            .unwrap();
        s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (code, body)
    }

    /// Stops the gateway; it must end without an error within 10 s.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the gateway stops")
            .unwrap()
            .unwrap();
    }
}
