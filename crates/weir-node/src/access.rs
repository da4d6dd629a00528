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
use crate::metrics::{TcpLabels, CLUSTER, FLAG_NONE, PROTOCOL_TCP, UNKNOWN};

/// One end of a connection as the log and the metrics name it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The Workload's (a Pod's) name: the access log's.
    pub workload: String,
    /// The workload it is an instance of (a Deployment's name): the
    /// metrics' `*_workload`.
    pub workload_name: String,
    pub namespace: String,
    pub identity: Option<SpiffeId>,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub app: String,
    pub version: String,
    pub cluster: &'static str,
}

impl Peer {
    pub fn of(w: Option<&Workload>, identity: Option<&SpiffeId>) -> Peer {
        let or_unknown = |v: Option<&str>| v.unwrap_or(UNKNOWN).to_owned();
        Peer {
            workload: or_unknown(w.map(|w| w.name())),
            workload_name: or_unknown(w.map(|w| w.workload_name())),
            namespace: or_unknown(w.map(|w| w.namespace()).or(identity.map(|i| i.namespace()))),
            identity: identity.cloned(),
            canonical_service: or_unknown(w.map(|w| w.canonical_service())),
            canonical_revision: or_unknown(w.map(|w| w.canonical_revision())),
            // As ztunnel fills *_app and *_version: the canonical names.
            app: or_unknown(w.map(|w| w.canonical_service())),
            version: or_unknown(w.map(|w| w.canonical_revision())),
            cluster: if w.is_some() { CLUSTER } else { UNKNOWN },
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
    /// The same peers as plaintext callers (no identity), shared too.
    plain_by_addr: HashMap<IpAddr, Arc<Peer>>,
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
            plain_by_addr: config
                .workloads
                .iter()
                .map(|w| (w.address, Arc::new(Peer::of(Some(w), None))))
                .collect(),
            unknown: Arc::new(Peer::of(None, None)),
        }
    }

    /// The peer at `ip`. With `identity`, the workload there counts only if
    /// it has that identity; without, the peer is a plaintext caller.
    pub fn lookup(&self, ip: IpAddr, identity: Option<&SpiffeId>) -> Arc<Peer> {
        match (self.by_addr.get(&ip), identity) {
            (Some(p), Some(id)) if p.identity.as_ref() == Some(id) => p.clone(),
            (Some(p), None) => self.plain_by_addr.get(&ip).cloned().unwrap_or_else(|| {
                Arc::new(Peer {
                    identity: None,
                    ..Peer::clone(p)
                })
            }),
            (_, Some(id)) => Arc::new(Peer::of(None, Some(id))),
            (None, None) => self.unknown.clone(),
        }
    }

    pub fn unknown(&self) -> Arc<Peer> {
        self.unknown.clone()
    }
}

/// The Service a connection was addressed to (its cluster IP), for the
/// `destination_service*` labels.
#[derive(Debug)]
pub(crate) struct DstService {
    /// `name.namespace.svc.cluster.local`.
    pub host: String,
    pub name: String,
    pub namespace: String,
}

pub(crate) fn labels(
    reporter: &str,
    src: &Peer,
    dst: &Peer,
    service: Option<&DstService>,
    mtls: bool,
    flags: &str,
) -> TcpLabels {
    let svc = |f: fn(&DstService) -> &String| {
        service.map_or_else(|| UNKNOWN.to_owned(), |s| f(s).clone())
    };
    TcpLabels {
        reporter: reporter.to_owned(),
        source_workload: src.workload_name.clone(),
        source_canonical_service: src.canonical_service.clone(),
        source_canonical_revision: src.canonical_revision.clone(),
        source_workload_namespace: src.namespace.clone(),
        source_principal: src.principal(),
        source_app: src.app.clone(),
        source_version: src.version.clone(),
        source_cluster: src.cluster.to_owned(),
        destination_service: svc(|s| &s.host),
        destination_service_namespace: svc(|s| &s.namespace),
        destination_service_name: svc(|s| &s.name),
        destination_workload: dst.workload_name.clone(),
        destination_canonical_service: dst.canonical_service.clone(),
        destination_canonical_revision: dst.canonical_revision.clone(),
        destination_workload_namespace: dst.namespace.clone(),
        destination_principal: dst.principal(),
        destination_app: dst.app.clone(),
        destination_version: dst.version.clone(),
        destination_cluster: dst.cluster.to_owned(),
        request_protocol: PROTOCOL_TCP.to_owned(),
        response_flags: flags.to_owned(),
        connection_security_policy: if mtls { "mutual_tls" } else { UNKNOWN }.to_owned(),
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
    /// The Service whose cluster IP the client dialled.
    pub service: Option<Arc<DstService>>,
    pub start: Instant,
}

impl Conn {
    pub fn labels(&self, reporter: &str, flags: &str) -> TcpLabels {
        labels(
            reporter,
            &self.src,
            &self.dst,
            self.service.as_deref(),
            self.mtls,
            flags,
        )
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
        // As ztunnel logs them, from the local workload's side: inbound,
        // what the app received (client -> server) and sent back; outbound,
        // what the app sent (client -> server) and received. (The metrics
        // keep Istio's direction, client -> server as received, both ways.)
        let (received, sent) = t.map_or((0, 0), |t| match self.direction {
            "outbound" => (t.sent, t.received),
            _ => (t.received, t.sent),
        });
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
