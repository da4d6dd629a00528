//! One structured access log line per closed (or refused) connection, like
//! ztunnel's: both identities, bytes each way, duration, decision.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tracing::info;
use weir_core::config::Workload;
use weir_core::{Config, SpiffeId};

use crate::forward::Transfer;
use crate::metrics::{TcpLabels, FLAG_NONE, UNKNOWN};

/// One end of a connection as the log and the metrics name it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub workload: String,
    pub namespace: String,
    pub identity: Option<SpiffeId>,
}

impl Peer {
    pub fn of(w: Option<&Workload>, identity: Option<&SpiffeId>) -> Peer {
        Peer {
            workload: w.map_or(UNKNOWN, |w| w.name()).to_owned(),
            namespace: w
                .map(|w| w.namespace())
                .or(identity.map(|i| i.namespace()))
                .unwrap_or(UNKNOWN)
                .to_owned(),
            identity: identity.cloned(),
        }
    }

    fn principal(&self) -> String {
        self.identity
            .as_ref()
            .map_or_else(|| UNKNOWN.to_owned(), ToString::to_string)
    }
}

/// Every workload of a config snapshot as a shared [`Peer`], so a connection
/// holds a pointer instead of its own copies of the names.
#[derive(Debug)]
pub(crate) struct PeerIndex {
    by_addr: HashMap<IpAddr, Arc<Peer>>,
    unknown: Arc<Peer>,
}

impl PeerIndex {
    pub fn build(config: &Config) -> PeerIndex {
        let td = &config.settings.trust_domain;
        PeerIndex {
            by_addr: config
                .workloads
                .iter()
                .map(|w| {
                    (
                        w.address,
                        Arc::new(Peer::of(Some(w), Some(&w.identity(td)))),
                    )
                })
                .collect(),
            unknown: Arc::new(Peer::of(None, None)),
        }
    }

    /// The peer at `ip`. With `identity`, the workload there counts only if
    /// it has that identity; without, the peer is a plaintext caller.
    pub fn lookup(&self, ip: IpAddr, identity: Option<&SpiffeId>) -> Arc<Peer> {
        match (self.by_addr.get(&ip), identity) {
            (Some(p), Some(id)) if p.identity.as_ref() == Some(id) => p.clone(),
            (Some(p), None) => Arc::new(Peer {
                identity: None,
                ..Peer::clone(p)
            }),
            (_, Some(id)) => Arc::new(Peer::of(None, Some(id))),
            (None, None) => self.unknown.clone(),
        }
    }

    pub fn unknown(&self) -> Arc<Peer> {
        self.unknown.clone()
    }
}

pub(crate) fn labels(reporter: &str, src: &Peer, dst: &Peer, mtls: bool, flags: &str) -> TcpLabels {
    TcpLabels {
        reporter: reporter.to_owned(),
        source_workload: src.workload.clone(),
        source_workload_namespace: src.namespace.clone(),
        source_principal: src.principal(),
        destination_workload: dst.workload.clone(),
        destination_workload_namespace: dst.namespace.clone(),
        destination_principal: dst.principal(),
        connection_security_policy: if mtls { "mutual_tls" } else { UNKNOWN }.to_owned(),
        response_flags: flags.to_owned(),
    }
}

/// What an access log line says about a connection, kept while it is open
/// (small: addresses, two shared peers, the deciding policy).
pub(crate) struct Conn {
    pub direction: &'static str,
    pub src_addr: SocketAddr,
    pub src: Arc<Peer>,
    pub dst_addr: SocketAddr,
    pub dst: Arc<Peer>,
    pub mtls: bool,
    pub policy: Option<String>,
    pub start: Instant,
}

impl Conn {
    pub fn labels(&self, reporter: &str, flags: &str) -> TcpLabels {
        labels(reporter, &self.src, &self.dst, self.mtls, flags)
    }

    /// Logs the connection's end (or refusal).
    pub fn log(
        &self,
        decision: &str,
        flags: &str,
        reason: &str,
        t: Option<&Transfer>,
        error: Option<&str>,
    ) {
        let (received, sent) = t.map_or((0, 0), |t| (t.received, t.sent));
        let io_error = t.and_then(|t| t.error.as_ref()).map(ToString::to_string);
        info!(
            target: "weir::access",
            direction = self.direction,
            src.addr = %self.src_addr,
            src.workload = %self.src.workload,
            src.namespace = %self.src.namespace,
            src.identity = %self.src.principal(),
            dst.addr = %self.dst_addr,
            dst.workload = %self.dst.workload,
            dst.namespace = %self.dst.namespace,
            dst.identity = %self.dst.principal(),
            mtls = self.mtls,
            decision,
            policy = self.policy.as_deref().unwrap_or("-"),
            response_flags = if flags.is_empty() { FLAG_NONE } else { flags },
            bytes_received = received,
            bytes_sent = sent,
            duration_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            reason,
            error = error.or(io_error.as_deref()).unwrap_or("-"),
            "connection complete"
        );
    }
}
