//! The node's HTTP endpoints: `/config_dump` (admin, localhost by default),
//! Prometheus `/metrics`, and `/healthz/ready`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::node::Ctx;
use crate::Error;

/// What a route answers: status, content type, body.
pub type Reply = (StatusCode, &'static str, String);

/// Content types of the admin endpoints.
pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=utf-8";
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds all three listeners (failing start-up if one can't be bound) and
/// serves them in the background.
pub(crate) async fn spawn(
    ctx: Arc<Ctx>,
    registry: Arc<Registry>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Error> {
    let bind = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Admin { what, addr, source })
    };
    let admin = bind("admin", ctx.options.common.admin_addr).await?;
    let metrics = bind("metrics", ctx.options.common.metrics_addr).await?;
    let ready = bind("readiness", ctx.options.common.readiness_addr).await?;
    // The bound addresses: with port 0 the kernel picked them.
    let at = |l: &TcpListener, asked: SocketAddr| l.local_addr().unwrap_or(asked);
    info!(admin = %at(&admin, ctx.options.common.admin_addr), metrics = %at(&metrics, ctx.options.common.metrics_addr), readiness = %at(&ready, ctx.options.common.readiness_addr), "admin endpoints listening");

    let c = ctx.clone();
    let admin = tokio::spawn(serve(
        admin,
        Arc::new(move |path: &str| admin_route(&c, path)),
    ));
    let metrics = tokio::spawn(serve(
        metrics,
        Arc::new(move |path: &str| match path {
            "/metrics" | "/stats/prometheus" => {
                let mut out = String::new();
                match prometheus_client::encoding::text::encode(&mut out, &registry) {
                    Ok(()) => (StatusCode::OK, OPENMETRICS, out),
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        TEXT,
                        format!("encoding metrics failed: {e}\n"),
                    ),
                }
            }
            _ => (StatusCode::NOT_FOUND, TEXT, "try /metrics\n".to_owned()),
        }),
    ));
    let c = ctx;
    let ready = tokio::spawn(serve(
        ready,
        Arc::new(move |path: &str| match path {
            "/healthz/ready" => {
                if c.ready.load(Ordering::Acquire) {
                    (StatusCode::OK, TEXT, "ready\n".to_owned())
                } else {
                    let status = c.status.lock().unwrap_or_else(|p| p.into_inner());
                    let waiting: Vec<String> = status
                        .iter()
                        .filter(|(_, s)| !s.serving)
                        .map(|(k, s)| format!("{k}: {}", s.error.as_deref().unwrap_or("starting")))
                        .collect();
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        TEXT,
                        format!("not ready\n{}\n", waiting.join("\n")),
                    )
                }
            }
            _ => (
                StatusCode::NOT_FOUND,
                TEXT,
                "try /healthz/ready\n".to_owned(),
            ),
        }),
    ));
    Ok(vec![admin, metrics, ready])
}

fn admin_route(ctx: &Ctx, path: &str) -> Reply {
    match path {
        "/config_dump" => {
            let config = ctx.store.current();
            let certs: Vec<serde_json::Value> = ctx
                .identity
                .identities()
                .iter()
                .filter_map(|id| ctx.identity.certificate(id).ok())
                .map(|c| {
                    let secs = |t: std::time::SystemTime| {
                        t.duration_since(UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0)
                    };
                    serde_json::json!({
                        "identity": c.id.to_string(),
                        "not_before_unix": secs(c.not_before),
                        "not_after_unix": secs(c.not_after),
                        "refresh_at_unix": secs(c.refresh_at()),
                    })
                })
                .collect();
            let dump = serde_json::json!({
                "node": ctx.options.node,
                "options": ctx.options,
                "ready": ctx.ready.load(Ordering::Acquire),
                "workloads": *ctx.status.lock().unwrap_or_else(|p| p.into_inner()),
                "certificates": certs,
                "reload": *ctx.reload.lock().unwrap_or_else(|p| p.into_inner()),
                "active_connections": ctx.drain.open(),
                "config": *config,
            });
            (
                StatusCode::OK,
                JSON,
                serde_json::to_string_pretty(&dump).unwrap_or_default() + "\n",
            )
        }
        "/" => (
            StatusCode::OK,
            TEXT,
            "weir node admin: /config_dump\n".to_owned(),
        ),
        _ => (StatusCode::NOT_FOUND, TEXT, "try /config_dump\n".to_owned()),
    }
}

/// Most connections the admin, metrics and readiness listeners each serve
/// at once; past it new ones are closed (a scraper opens one or two).
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send a request's headers (also the most a
/// kept-alive connection waits idle for its next request).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves HTTP/1 on `listener`, answering every GET with `route(path)`.
/// Connections are bounded in number ([`MAX_CONNECTIONS`]) and in how long
/// they may dawdle ([`HEADER_READ_TIMEOUT`]): the metrics and readiness
/// ports are reachable from the whole cluster, and their file descriptors
/// are the data path's.
pub async fn serve(listener: TcpListener, route: Arc<dyn Fn(&str) -> Reply + Send + Sync>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, limit = MAX_CONNECTIONS, "too many admin connections; closing");
            continue;
        };
        let route = route.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req: Request<Incoming>| {
                let (status, ctype, body) = route(req.uri().path());
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header(http::header::CONTENT_TYPE, ctype)
                            .body(Full::new(Bytes::from(body)))
                            .expect("static response"),
                    )
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, error = %e, "admin connection error");
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

    async fn start() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            Arc::new(|_: &str| (StatusCode::OK, "text/plain", "ok\n".to_owned())),
        ));
        addr
    }

    /// Whether the server closed `s` within `wait` (reading to its end).
    async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
        let mut sink = Vec::new();
        tokio::time::timeout(wait, s.read_to_end(&mut sink))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_and_the_rest_served() {
        let addr = start().await;
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut extra, Duration::from_secs(5)).await);
        assert!(!closed_within(&mut idle[0], Duration::from_millis(200)).await);
        // A slot freed is a request served.
        drop(idle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_no_request_is_closed() {
        let addr = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\n").await.unwrap();
        assert!(closed_within(&mut s, HEADER_READ_TIMEOUT + Duration::from_secs(5)).await);
    }
}
