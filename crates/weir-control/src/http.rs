//! The control plane's monitoring endpoint (istiod's 15014): `/metrics`,
//! `/healthz/ready`, `/version` (the config version served).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::distributor::Distributor;

const TEXT: &str = "text/plain; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn route(
    path: &str,
    registry: &Registry,
    distributor: &Distributor,
) -> (StatusCode, &'static str, String) {
    match path {
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, registry) {
                Ok(()) => (StatusCode::OK, OPENMETRICS, out),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
            }
        }
        "/healthz/ready" => (StatusCode::OK, TEXT, "ready\n".to_owned()),
        "/version" => (
            StatusCode::OK,
            TEXT,
            format!(
                "instance {} version {} objects {} subscribers {}\n",
                distributor.instance(),
                distributor.version(),
                distributor.objects(),
                distributor.subscribers()
            ),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "try /metrics, /healthz/ready or /version\n".to_owned(),
        ),
    }
}

/// Most connections the monitoring endpoint serves at once; past it new
/// ones are closed (a scraper and a probe open one or two each), as the
/// node proxy's admin endpoints do.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// Serves HTTP/1 on `listener` until the task is aborted. Connections are
/// bounded in number ([`MAX_CONNECTIONS`]) and must send a request's
/// headers within 10 s: the port is reachable from the cluster, and file
/// descriptors are what the gRPC streams of every node proxy need too.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    distributor: Arc<Distributor>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, limit = MAX_CONNECTIONS, "too many monitoring connections; closing");
            continue;
        };
        let registry = registry.clone();
        let distributor = distributor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req: Request<Incoming>| {
                let (status, content_type, body) = route(req.uri().path(), &registry, &distributor);
                async move {
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(content_type),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "monitoring connection error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::catalog::Catalog;

    async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
        let mut sink = Vec::new();
        tokio::time::timeout(wait, s.read_to_end(&mut sink))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_and_the_rest_served() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let distributor = Arc::new(Distributor::new(Catalog::default(), "cp-test"));
        tokio::spawn(serve(listener, Arc::new(Registry::default()), distributor));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut extra, Duration::from_secs(5)).await);
        assert!(!closed_within(&mut idle[0], Duration::from_millis(200)).await);
        drop(idle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /version HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
}
