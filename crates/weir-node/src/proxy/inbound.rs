//! Inbound: HBONE tunnels on 15008 (mTLS, then PeerAuthentication and
//! AuthorizationPolicy, then a connection to the workload's port) and
//! plaintext connections redirected to 15006 (refused under STRICT, otherwise
//! subject to AuthorizationPolicy without a principal).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;
use tokio::net::TcpStream;
use tracing::{debug, warn};
use weir_core::policy::{self, Connection, Verdict};
use weir_core::SpiffeId;
use weir_hbone::{BoxFuture, Handler, InboundRequest, Responder};

use super::outbound::reset;
use super::{is_proxy_port, Local};
use crate::access::Conn;
use crate::capture::orig_dst;
use crate::forward::{forward_seen, Seen};
use crate::metrics::{FLAG_CONNECT, FLAG_DENY, FLAG_NONE, REPORTER_DESTINATION};
use crate::node::Ctx;

pub(crate) struct HboneHandler {
    pub ctx: Arc<Ctx>,
    pub local: Arc<Local>,
}

impl Handler for HboneHandler {
    /// Identity, authority and policy are checked here, synchronously; only
    /// an admitted tunnel gets a future, holding just what it needs.
    fn handle(&self, req: InboundRequest, responder: Responder) -> BoxFuture<'static, ()> {
        match admit(&self.ctx, &self.local, &req) {
            Ok((conn, peer, changes)) => Box::pin(tunnel(
                self.ctx.clone(),
                self.local.clone(),
                (conn, peer, changes),
                responder,
            )),
            Err(status) => {
                let _ = responder.reject(status);
                Box::pin(std::future::ready(()))
            }
        }
    }
}

/// Decides whether an HBONE request may reach this workload; refusals are
/// counted and logged here.
fn admit(ctx: &Ctx, local: &Local, req: &InboundRequest) -> Result<Admitted, StatusCode> {
    // rustls verified the chain and the SPIFFE id; this cannot fail for a
    // connection that got this far, but never trust it blindly.
    let Some(peer_id) = req
        .peer_certificates
        .first()
        .and_then(|c| weir_identity::spiffe_id_of(c).ok())
    else {
        warn!(peer = %req.peer_addr, "HBONE request without a SPIFFE identity; refusing");
        return Err(StatusCode::FORBIDDEN);
    };
    let target = req.target;
    if target.ip() != local.workload.address || is_proxy_port(target.port()) {
        debug!(peer = %req.peer_addr, %target, "HBONE target is not this workload");
        return Err(StatusCode::BAD_REQUEST);
    }
    // Before the decision: a change made while it is taken is seen.
    let changes = ctx.store.changes();
    let (verdict, conn) = decide(ctx, local, Some(&peer_id), req.peer_addr, target);
    if !verdict.allowed() {
        ctx.metrics
            .refused(&conn.labels(REPORTER_DESTINATION, FLAG_DENY));
        conn.log("deny", FLAG_DENY, &verdict.reason, None, None);
        return Err(StatusCode::FORBIDDEN);
    }
    Ok((conn, Some(peer_id), changes))
}

/// An admitted connection: what the access log says of it, the peer's
/// identity, and the config changes it is checked again on.
type Admitted = (Conn, Option<SpiffeId>, tokio::sync::watch::Receiver<()>);

/// The current config's verdict on a connection to this workload: taken
/// when it arrives and again on every config change (as ztunnel does, a
/// connection a new policy, or its workload's new labels, denies is closed,
/// not left running).
fn verdict(
    ctx: &Ctx,
    local: &Local,
    peer: Option<&SpiffeId>,
    src_addr: SocketAddr,
    target: SocketAddr,
) -> Verdict {
    let config = ctx.store.current();
    policy::evaluate(
        &config,
        local.current(&config),
        &Connection {
            peer: peer.cloned(),
            source_ip: Some(src_addr.ip()),
            destination_ip: target.ip(),
            destination_port: target.port(),
        },
    )
}

/// Forwards until either side ends, or until a config change denies the
/// connection; counts and logs the end.
async fn carry(
    ctx: &Ctx,
    local: &Local,
    (conn, peer, changes): (
        &Conn,
        Option<&SpiffeId>,
        &mut tokio::sync::watch::Receiver<()>,
    ),
    client: impl Into<crate::forward::Side>,
    upstream: TcpStream,
    how: &str,
) {
    let counters = ctx
        .metrics
        .open(conn.labels(REPORTER_DESTINATION, FLAG_NONE));
    let seen = Seen::default();
    let forwarding = forward_seen(client, upstream, &counters.received, &counters.sent, &seen);
    tokio::pin!(forwarding);
    let mut watching = true;
    loop {
        tokio::select! {
            t = &mut forwarding => {
                ctx.metrics.close(&counters, t.failed());
                conn.log("allow", FLAG_NONE, how, Some(&t), None);
                return;
            }
            changed = changes.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                let verdict = verdict(ctx, local, peer, conn.src_addr, conn.dst_addr);
                if !verdict.allowed() {
                    // Returning drops the forwarding: both sockets close.
                    ctx.metrics.close(&counters, false);
                    // The line names the policy that now denies it.
                    let conn = Conn {
                        policy: verdict.policy.clone(),
                        src: conn.src.clone(),
                        dst: conn.dst.clone(),
                        service: conn.service.clone(),
                        ..*conn
                    };
                    conn.log(
                        "deny",
                        FLAG_DENY,
                        &format!("closed by a config change: {}", verdict.reason),
                        Some(&seen.transfer()),
                        None,
                    );
                    return;
                }
            }
        }
    }
}

/// Evaluates policy for a connection to this workload and describes it for
/// the access log and metrics.
fn decide(
    ctx: &Ctx,
    local: &Local,
    peer: Option<&SpiffeId>,
    src_addr: SocketAddr,
    target: SocketAddr,
) -> (Verdict, Conn) {
    let verdict = verdict(ctx, local, peer, src_addr, target);
    let peers = ctx.store.peers();
    let conn = Conn {
        service: None,
        direction: "inbound",
        src_addr,
        src: peers.lookup(src_addr.ip(), peer),
        dst_addr: target,
        dst: peers.lookup(local.workload.address, Some(&local.id)),
        mtls: peer.is_some(),
        policy: verdict.policy.clone(),
        start: Instant::now(),
    };
    (verdict, conn)
}

async fn tunnel(ctx: Arc<Ctx>, local: Arc<Local>, admitted: Admitted, responder: Responder) {
    let _guard = ctx.drain.guard();
    let conn = &admitted.0;
    let Some(upstream) = connect_workload(&ctx, &local, conn, conn.dst_addr).await else {
        let _ = responder.reject(StatusCode::SERVICE_UNAVAILABLE);
        return;
    };
    let tunnel = match responder.accept() {
        Ok(t) => t,
        Err(e) => {
            debug!(error = %e, "HBONE stream closed before it was accepted");
            return;
        }
    };
    let (conn, peer, mut changes) = admitted;
    carry(
        &ctx,
        &local,
        (&conn, peer.as_ref(), &mut changes),
        tunnel,
        upstream,
        "HBONE",
    )
    .await;
}

/// Connects the workload's port; a failure is counted and logged (the
/// caller answers the client).
async fn connect_workload(
    ctx: &Ctx,
    local: &Local,
    conn: &Conn,
    target: SocketAddr,
) -> Option<TcpStream> {
    let connect = local.connect(
        target,
        Some(conn.src_addr),
        ctx.options.common.connect_timeout,
    );
    match Box::pin(connect).await {
        Ok(s) => Some(s),
        Err(e) => {
            ctx.metrics
                .refused(&conn.labels(REPORTER_DESTINATION, FLAG_CONNECT));
            conn.log(
                "allow",
                FLAG_CONNECT,
                "the workload refused the connection",
                None,
                Some(&e.to_string()),
            );
            None
        }
    }
}

pub(crate) async fn plaintext(
    ctx: Arc<Ctx>,
    local: Arc<Local>,
    client: TcpStream,
    peer: SocketAddr,
) {
    let _guard = ctx.drain.guard();
    let target = match orig_dst(&client) {
        Ok(t) => t,
        Err(e) => {
            debug!(%peer, error = %e, "inbound connection without an original destination; closing");
            return;
        }
    };
    // Only connections to this workload: the capture rule redirects
    // whatever arrives, and a sender on the same link could address a
    // packet to another IP (or to this pod's loopback services) through the
    // pod; connecting there with the proxy's mark would make the pod a
    // relay that skips its own outbound capture.
    if target.ip() != local.workload.address || is_proxy_port(target.port()) {
        debug!(%peer, %target, "inbound plaintext connection not to this workload; closing");
        reset(client);
        return;
    }
    let mut changes = ctx.store.changes();
    let (verdict, conn) = decide(&ctx, &local, None, peer, target);
    if !verdict.allowed() {
        ctx.metrics
            .refused(&conn.labels(REPORTER_DESTINATION, FLAG_DENY));
        reset(client);
        conn.log("deny", FLAG_DENY, &verdict.reason, None, None);
        return;
    }
    drop(verdict);
    let Some(upstream) = connect_workload(&ctx, &local, &conn, target).await else {
        reset(client);
        return;
    };
    carry(
        &ctx,
        &local,
        (&conn, None, &mut changes),
        client,
        upstream,
        "plaintext admitted",
    )
    .await;
}
