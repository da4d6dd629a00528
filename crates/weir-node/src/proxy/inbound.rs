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
use weir_core::policy::{self, Connection};
use weir_hbone::{BoxFuture, Handler, InboundRequest, Responder};

use super::outbound::reset;
use super::{is_proxy_port, Local};
use crate::access::{self, Entry, Peer};
use crate::capture::orig_dst;
use crate::forward::forward;
use crate::metrics::{FLAG_CONNECT, FLAG_DENY, FLAG_NONE, REPORTER_DESTINATION};
use crate::node::Ctx;

pub(crate) struct HboneHandler {
    pub ctx: Arc<Ctx>,
    pub local: Arc<Local>,
}

impl Handler for HboneHandler {
    fn handle(&self, req: InboundRequest, responder: Responder) -> BoxFuture<'static, ()> {
        Box::pin(hbone(self.ctx.clone(), self.local.clone(), req, responder))
    }
}

async fn hbone(ctx: Arc<Ctx>, local: Arc<Local>, req: InboundRequest, responder: Responder) {
    let _guard = ctx.drain.guard();
    let start = Instant::now();
    let target = req.target;
    // rustls verified the chain and the SPIFFE id; this cannot fail for a
    // connection that got this far, but never trust it blindly.
    let Some(peer_id) = req
        .peer_certificates
        .first()
        .and_then(|c| weir_identity::spiffe_id_of(c).ok())
    else {
        warn!(peer = %req.peer_addr, "HBONE request without a SPIFFE identity; refusing");
        let _ = responder.reject(StatusCode::FORBIDDEN);
        return;
    };
    if target.ip() != local.workload.address || is_proxy_port(target.port()) {
        debug!(peer = %req.peer_addr, %target, "HBONE target is not this workload");
        let _ = responder.reject(StatusCode::BAD_REQUEST);
        return;
    }
    let config = ctx.store.current();
    let dst_w = local.current(&config);
    let src_w = config
        .workload_by_address(req.peer_addr.ip())
        .filter(|w| w.identity(&config.settings.trust_domain) == peer_id);
    let src = Peer::of(src_w, Some(&peer_id));
    let dst = Peer::of(Some(dst_w), Some(&local.id));
    let verdict = policy::evaluate(
        &config,
        dst_w,
        &Connection {
            peer: Some(peer_id.clone()),
            source_ip: Some(req.peer_addr.ip()),
            destination_ip: target.ip(),
            destination_port: target.port(),
        },
    );
    drop(config);
    let entry = |flags, decision, bytes: (u64, u64), error: Option<String>| Entry {
        direction: "inbound",
        src_addr: req.peer_addr,
        src: &src,
        dst_addr: target,
        dst: &dst,
        mtls: true,
        decision,
        policy: verdict.policy.as_deref(),
        reason: &verdict.reason,
        flags,
        bytes_received: bytes.0,
        bytes_sent: bytes.1,
        duration: start.elapsed(),
        error,
    };
    if !verdict.allowed() {
        ctx.metrics.refused(&access::labels(
            REPORTER_DESTINATION,
            &src,
            &dst,
            true,
            FLAG_DENY,
        ));
        let _ = responder.reject(StatusCode::FORBIDDEN);
        access::log(entry(FLAG_DENY, "deny", (0, 0), None));
        return;
    }
    let upstream = match local.connect(target, ctx.options.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            ctx.metrics.refused(&access::labels(
                REPORTER_DESTINATION,
                &src,
                &dst,
                true,
                FLAG_CONNECT,
            ));
            let _ = responder.reject(StatusCode::SERVICE_UNAVAILABLE);
            access::log(entry(FLAG_CONNECT, "allow", (0, 0), Some(e.to_string())));
            return;
        }
    };
    let tunnel = match responder.accept() {
        Ok(t) => t,
        Err(e) => {
            debug!(error = %e, "HBONE stream closed before it was accepted");
            return;
        }
    };
    let counters = ctx.metrics.open(access::labels(
        REPORTER_DESTINATION,
        &src,
        &dst,
        true,
        FLAG_NONE,
    ));
    let t = forward(tunnel, upstream, &counters.received, &counters.sent).await;
    ctx.metrics.close(&counters, t.error.is_some());
    access::log(entry(
        FLAG_NONE,
        "allow",
        (t.received, t.sent),
        t.error.map(|e| e.to_string()),
    ));
}

pub(crate) async fn plaintext(
    ctx: Arc<Ctx>,
    local: Arc<Local>,
    client: TcpStream,
    peer: SocketAddr,
) {
    let _guard = ctx.drain.guard();
    let start = Instant::now();
    let target = match orig_dst(&client) {
        Ok(t) => t,
        Err(e) => {
            debug!(%peer, error = %e, "inbound connection without an original destination; closing");
            return;
        }
    };
    if is_proxy_port(target.port()) {
        return;
    }
    let config = ctx.store.current();
    let dst_w = local.current(&config);
    let src = Peer::of(config.workload_by_address(peer.ip()), None);
    let dst = Peer::of(Some(dst_w), Some(&local.id));
    let verdict = policy::evaluate(
        &config,
        dst_w,
        &Connection {
            peer: None,
            source_ip: Some(peer.ip()),
            destination_ip: target.ip(),
            destination_port: target.port(),
        },
    );
    drop(config);
    let entry = |flags, decision, bytes: (u64, u64), error: Option<String>| Entry {
        direction: "inbound",
        src_addr: peer,
        src: &src,
        dst_addr: target,
        dst: &dst,
        mtls: false,
        decision,
        policy: verdict.policy.as_deref(),
        reason: &verdict.reason,
        flags,
        bytes_received: bytes.0,
        bytes_sent: bytes.1,
        duration: start.elapsed(),
        error,
    };
    if !verdict.allowed() {
        ctx.metrics.refused(&access::labels(
            REPORTER_DESTINATION,
            &src,
            &dst,
            false,
            FLAG_DENY,
        ));
        reset(client);
        access::log(entry(FLAG_DENY, "deny", (0, 0), None));
        return;
    }
    let upstream = match local.connect(target, ctx.options.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            ctx.metrics.refused(&access::labels(
                REPORTER_DESTINATION,
                &src,
                &dst,
                false,
                FLAG_CONNECT,
            ));
            reset(client);
            access::log(entry(FLAG_CONNECT, "allow", (0, 0), Some(e.to_string())));
            return;
        }
    };
    let counters = ctx.metrics.open(access::labels(
        REPORTER_DESTINATION,
        &src,
        &dst,
        false,
        FLAG_NONE,
    ));
    let t = forward(client, upstream, &counters.received, &counters.sent).await;
    ctx.metrics.close(&counters, t.error.is_some());
    access::log(entry(
        FLAG_NONE,
        "allow",
        (t.received, t.sent),
        t.error.map(|e| e.to_string()),
    ));
}
