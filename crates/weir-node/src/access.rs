//! One structured access log line per closed (or refused) connection, like
//! ztunnel's: both identities, bytes each way, duration, decision.

use std::net::SocketAddr;
use std::time::Duration;

use tracing::info;
use weir_core::config::Workload;
use weir_core::SpiffeId;

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

/// Everything one access log line says.
pub(crate) struct Entry<'a> {
    pub direction: &'static str,
    pub src_addr: SocketAddr,
    pub src: &'a Peer,
    pub dst_addr: SocketAddr,
    pub dst: &'a Peer,
    pub mtls: bool,
    pub decision: &'static str,
    pub policy: Option<&'a str>,
    pub reason: &'a str,
    pub flags: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Duration,
    pub error: Option<String>,
}

pub(crate) fn log(e: Entry<'_>) {
    info!(
        target: "weir::access",
        direction = e.direction,
        src.addr = %e.src_addr,
        src.workload = %e.src.workload,
        src.namespace = %e.src.namespace,
        src.identity = %e.src.principal(),
        dst.addr = %e.dst_addr,
        dst.workload = %e.dst.workload,
        dst.namespace = %e.dst.namespace,
        dst.identity = %e.dst.principal(),
        mtls = e.mtls,
        decision = e.decision,
        policy = e.policy.unwrap_or("-"),
        response_flags = if e.flags.is_empty() { FLAG_NONE } else { e.flags },
        bytes_received = e.bytes_received,
        bytes_sent = e.bytes_sent,
        duration_ms = e.duration.as_secs_f64() * 1000.0,
        reason = e.reason,
        error = e.error.as_deref().unwrap_or("-"),
        "connection complete"
    );
}
