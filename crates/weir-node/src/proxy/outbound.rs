//! Outbound: the workload's own TCP connections, redirected to 15001. A mesh
//! destination goes over HBONE with the workload's certificate; a Service's
//! cluster IP and port goes to one of the Workloads the Service selects, at
//! its target port, over HBONE (as ztunnel sends a connection to a service
//! VIP); anything else passes through as plain TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::{debug, warn};
use weir_hbone::PoolKey;

use super::{is_proxy_port, Local, HBONE_PORT};
use crate::access::{Conn, DstService};
use crate::capture::orig_dst;
use crate::forward::{forward, Side};
use crate::metrics::{FLAG_CONNECT, FLAG_DENY, FLAG_NONE, REPORTER_SOURCE};
use crate::node::Ctx;

pub(crate) async fn handle(ctx: Arc<Ctx>, local: Arc<Local>, app: TcpStream, peer: SocketAddr) {
    let _guard = ctx.drain.guard();
    let target = match orig_dst(&app) {
        Ok(t) => t,
        Err(e) => {
            debug!(%peer, error = %e, "outbound connection without an original destination (not redirected); closing");
            return;
        }
    };
    // A connection made to the listener itself, not redirected to it (the
    // original destination is where it arrived; loopback is never
    // captured): passing it through would dial the listener again, with
    // the proxy's mark, without end.
    if (is_proxy_port(target.port()) && target.ip() == local.workload.address)
        || target.ip().is_loopback()
        || target.ip().is_unspecified()
        || app.local_addr().is_ok_and(|a| a == target)
    {
        debug!(%peer, %target, "refusing to proxy a connection to the proxy itself");
        return;
    }
    let (key, conn, none_ready) = {
        let config = ctx.store.current();
        let peers = ctx.store.peers();
        let mut dst_w = config.workload_by_address(target.ip());
        let mut target = target;
        // A Service's cluster IP and port: one of its Workloads, at random.
        let mut service = None;
        // Set when the Service has Workloads in the mesh but none is ready:
        // the connection is refused, as ztunnel refuses one with no healthy
        // endpoint (passing it through to the virtual address would reach
        // nothing).
        let mut none_ready = None;
        if dst_w.is_none() {
            // A Service that selects no mesh Workload (its Pods are outside
            // the mesh, e.g. kube-dns) passes through to the cluster IP, as
            // without a proxy.
            if let Some(b) = config
                .service_backends(target)
                .filter(|b| !b.workloads.is_empty() || b.not_ready > 0)
            {
                let (name, ns) = (&b.service.metadata.name, &b.service.metadata.namespace);
                service = Some(Arc::new(DstService {
                    host: format!("{name}.{ns}.svc.cluster.local"),
                    name: name.clone(),
                    namespace: ns.clone(),
                }));
                if b.workloads.is_empty() {
                    none_ready = Some(format!(
                        "Service {} has no ready Workload ({} not ready)",
                        b.service.metadata.key(),
                        b.not_ready
                    ));
                } else {
                    let w = b.workloads[random_index(b.workloads.len())];
                    debug!(%peer, vip = %target, service = %b.service.metadata.key(), backend = %w.metadata.key(), "service cluster IP");
                    target = SocketAddr::new(w.address, b.target_port);
                    dst_w = Some(w);
                }
            }
        }
        let dst_id = dst_w.map(|w| w.identity(&config.settings.trust_domain));
        let conn = Conn {
            direction: "outbound",
            src_addr: peer,
            // The source's identity is presented over mTLS only: to a
            // destination outside the mesh its principal is unknown (as
            // ztunnel reports it).
            src: peers.lookup(
                local.workload.address,
                dst_id.is_some().then_some(&local.id),
            ),
            dst_addr: target,
            dst: match &dst_id {
                Some(id) => peers.lookup(target.ip(), Some(id)),
                None => peers.unknown(),
            },
            mtls: dst_id.is_some(),
            policy: None,
            service,
            start: Instant::now(),
        };
        let key = dst_w.map(|w| PoolKey {
            source: local.id.clone(),
            hbone_addr: SocketAddr::new(w.address, HBONE_PORT),
            destination: dst_id,
        });
        (key, conn, none_ready)
    };
    // The connect futures are boxed and own what they need (the pool key):
    // handshakes are large and must not stay part of the connection's future
    // (memory per idle connection) once they are done.
    let upstream: Result<Side, (&'static str, String)> = match (none_ready, key) {
        (Some(why), _) => Err((FLAG_CONNECT, why)),
        (None, Some(key)) => {
            let (pool, target) = (local.pool.clone(), conn.dst_addr);
            match Box::pin(async move { pool.connect(&key, target).await }).await {
                Ok(t) => Ok(t.into()),
                Err(e) => {
                    warn!(peer = %conn.src_addr, target = %conn.dst_addr, error = %e, "HBONE connection failed");
                    let flags = match e.rejected_status() {
                        // 403 from weir, 401 from ztunnel: a policy denial.
                        Some(s)
                            if s == http::StatusCode::FORBIDDEN
                                || s == http::StatusCode::UNAUTHORIZED =>
                        {
                            FLAG_DENY
                        }
                        _ => FLAG_CONNECT,
                    };
                    Err((flags, e.to_string()))
                }
            }
        }
        (None, None) => {
            match Box::pin(local.connect(conn.dst_addr, None, ctx.options.common.connect_timeout))
                .await
            {
                Ok(s) => Ok(s.into()),
                Err(e) => Err((FLAG_CONNECT, e.to_string())),
            }
        }
    };
    let reason = if conn.service.is_some() {
        "HBONE to a Workload of the Service at the cluster IP"
    } else if conn.mtls {
        "HBONE"
    } else {
        "passthrough: the destination is not in the mesh"
    };
    let upstream = match upstream {
        Ok(u) => u,
        Err((flags, error)) => {
            ctx.metrics.refused(&conn.labels(REPORTER_SOURCE, flags));
            reset(app);
            let decision = if flags == FLAG_DENY { "deny" } else { "allow" };
            conn.log(decision, flags, reason, None, Some(&error));
            return;
        }
    };
    let counters = ctx.metrics.open(conn.labels(REPORTER_SOURCE, FLAG_NONE));
    let t = forward(app, upstream, &counters.received, &counters.sent).await;
    ctx.metrics.close(&counters, t.failed());
    conn.log("allow", FLAG_NONE, reason, Some(&t), None);
}

/// A random index below `n` (load spreading, not anything secret).
fn random_index(n: usize) -> usize {
    use std::hash::{BuildHasher, RandomState};
    // Each RandomState has fresh keys: a cheap random u64.
    (RandomState::new().hash_one(0u8) % n as u64) as usize
}

/// Closes with a TCP reset, so the application sees a refused connection
/// rather than a clean end of stream.
pub(crate) fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO));
    drop(s);
}
