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

/// Serves HTTP/1 on `listener` until the task is aborted.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    distributor: Arc<Distributor>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let registry = registry.clone();
        let distributor = distributor.clone();
        tokio::spawn(async move {
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
