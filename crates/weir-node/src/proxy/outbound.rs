//! Outbound: the workload's own TCP connections, redirected to 15001. A mesh
//! destination goes over HBONE with the workload's certificate; anything else
//! passes through as plain TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::{debug, warn};
use weir_hbone::PoolKey;

use super::{is_proxy_port, Local, HBONE_PORT};
use crate::access::{self, Entry, Peer};
use crate::capture::orig_dst;
use crate::forward::forward;
use crate::metrics::{FLAG_CONNECT, FLAG_DENY, FLAG_NONE, REPORTER_SOURCE};
use crate::node::Ctx;

pub(crate) async fn handle(ctx: Arc<Ctx>, local: Arc<Local>, app: TcpStream, peer: SocketAddr) {
    let _guard = ctx.drain.guard();
    let start = Instant::now();
    let target = match orig_dst(&app) {
        Ok(t) => t,
        Err(e) => {
            debug!(%peer, error = %e, "outbound connection without an original destination (not redirected); closing");
            return;
        }
    };
    if is_proxy_port(target.port()) && target.ip() == local.workload.address {
        debug!(%peer, %target, "refusing to proxy a connection to the proxy itself");
        return;
    }
    let config = ctx.store.current();
    let src_w = local.current(&config);
    let src = Peer::of(Some(src_w), Some(&local.id));
    let Some(dst_w) = config.workload_by_address(target.ip()) else {
        return passthrough(&ctx, &local, app, peer, target, src, start).await;
    };
    let dst_id = dst_w.identity(&config.settings.trust_domain);
    let dst = Peer::of(Some(dst_w), Some(&dst_id));
    let key = PoolKey {
        source: local.id.clone(),
        hbone_addr: SocketAddr::new(dst_w.address, HBONE_PORT),
        destination: Some(dst_id),
    };
    drop(config);
    let tunnel = match local.pool.connect(&key, target).await {
        Ok(t) => t,
        Err(e) => {
            let flags = match e.rejected_status() {
                Some(s) if s == http::StatusCode::FORBIDDEN => FLAG_DENY,
                _ => FLAG_CONNECT,
            };
            ctx.metrics
                .refused(&access::labels(REPORTER_SOURCE, &src, &dst, true, flags));
            warn!(%peer, %target, error = %e, "HBONE connection failed");
            reset(app);
            access::log(Entry {
                direction: "outbound",
                src_addr: peer,
                src: &src,
                dst_addr: target,
                dst: &dst,
                mtls: true,
                decision: if flags == FLAG_DENY { "deny" } else { "allow" },
                policy: None,
                reason: &e.to_string(),
                flags,
                bytes_received: 0,
                bytes_sent: 0,
                duration: start.elapsed(),
                error: Some(e.metric_label().to_owned()),
            });
            return;
        }
    };
    let counters = ctx
        .metrics
        .open(access::labels(REPORTER_SOURCE, &src, &dst, true, FLAG_NONE));
    let t = forward(app, tunnel, &counters.received, &counters.sent).await;
    ctx.metrics.close(&counters, t.error.is_some());
    access::log(Entry {
        direction: "outbound",
        src_addr: peer,
        src: &src,
        dst_addr: target,
        dst: &dst,
        mtls: true,
        decision: "allow",
        policy: None,
        reason: "HBONE",
        flags: FLAG_NONE,
        bytes_received: t.received,
        bytes_sent: t.sent,
        duration: start.elapsed(),
        error: t.error.map(|e| e.to_string()),
    });
}

async fn passthrough(
    ctx: &Ctx,
    local: &Local,
    app: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    src: Peer,
    start: Instant,
) {
    let dst = Peer::of(None, None);
    let upstream = match local.connect(target, ctx.options.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            ctx.metrics.refused(&access::labels(
                REPORTER_SOURCE,
                &src,
                &dst,
                false,
                FLAG_CONNECT,
            ));
            reset(app);
            access::log(Entry {
                direction: "outbound",
                src_addr: peer,
                src: &src,
                dst_addr: target,
                dst: &dst,
                mtls: false,
                decision: "allow",
                policy: None,
                reason: "passthrough: destination is not in the mesh",
                flags: FLAG_CONNECT,
                bytes_received: 0,
                bytes_sent: 0,
                duration: start.elapsed(),
                error: Some(e.to_string()),
            });
            return;
        }
    };
    let counters = ctx.metrics.open(access::labels(
        REPORTER_SOURCE,
        &src,
        &dst,
        false,
        FLAG_NONE,
    ));
    let t = forward(app, upstream, &counters.received, &counters.sent).await;
    ctx.metrics.close(&counters, t.error.is_some());
    access::log(Entry {
        direction: "outbound",
        src_addr: peer,
        src: &src,
        dst_addr: target,
        dst: &dst,
        mtls: false,
        decision: "allow",
        policy: None,
        reason: "passthrough: destination is not in the mesh",
        flags: FLAG_NONE,
        bytes_received: t.received,
        bytes_sent: t.sent,
        duration: start.elapsed(),
        error: t.error.map(|e| e.to_string()),
    });
}

/// Closes with a TCP reset, so the application sees a refused connection
/// rather than a clean end of stream.
pub(crate) fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO));
    drop(s);
}
