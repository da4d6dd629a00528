//! What a node proxy and a gateway are configured with alike: where config
//! and the mesh CA come from, the admin endpoints, the timings of reload,
//! drain and connect, and the HBONE connection pool. `NodeOptions` and the gateway's options each
//! hold one and add their own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;

use serde::Serialize;
use weir_core::MeshSettings;
use weir_hbone::PoolConfig;
use weir_identity::{CertificateAuthority, IdentityManager, TlsMetrics};

/// Options shared by `weir node` and `weir gateway` (dumped, flattened, by
/// their `/config_dump`).
#[derive(Debug, Clone, Serialize)]
pub struct ProxyOptions {
    /// Config files or directories.
    pub config_paths: Vec<PathBuf>,
    pub settings: MeshSettings,
    /// Where the mesh CA lives when it is not given as files.
    pub state_dir: PathBuf,
    /// `--ca-cert` and `--ca-key`.
    pub ca_files: Option<(PathBuf, PathBuf)>,
    /// Lifetime of the certificates the proxy holds; renewed at half-life.
    #[serde(serialize_with = "serialize_secs")]
    pub cert_ttl: Duration,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    #[serde(serialize_with = "serialize_secs")]
    pub reload_interval: Duration,
    /// How long open connections may finish after shutdown starts.
    #[serde(serialize_with = "serialize_secs")]
    pub drain_timeout: Duration,
    /// Bound on connecting to a destination (a workload's port, a
    /// passthrough destination, an upstream; DNS included).
    #[serde(serialize_with = "serialize_secs")]
    pub connect_timeout: Duration,
    /// HBONE: at most this many tunnels share one HTTP/2 connection to a
    /// destination; the next one opens another connection.
    pub hbone_max_streams: usize,
    /// HBONE: busy tunnels to one destination are spread over up to this
    /// many connections before they share one (1: share one connection up
    /// to `hbone_max_streams`, as ztunnel does).
    pub hbone_parallel_connections: usize,
}

impl ProxyOptions {
    /// Istio's ports (admin 15000 on loopback, metrics 15020, readiness
    /// 15021), 24 h certificates, reload every second, 5 s drain, 10 s
    /// connect.
    pub fn new(config_paths: Vec<PathBuf>) -> Self {
        Self {
            config_paths,
            settings: MeshSettings::default(),
            state_dir: PathBuf::from("/var/lib/weir"),
            ca_files: None,
            cert_ttl: weir_identity::DEFAULT_CERT_TTL,
            admin_addr: ([127, 0, 0, 1], 15000).into(),
            metrics_addr: ([0, 0, 0, 0], 15020).into(),
            readiness_addr: ([0, 0, 0, 0], 15021).into(),
            reload_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            hbone_max_streams: PoolConfig::default().max_streams_per_connection,
            hbone_parallel_connections: PoolConfig::default().parallel_connections,
        }
    }

    /// The HBONE connection pool settings these options set.
    pub fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            max_streams_per_connection: self.hbone_max_streams.max(1),
            parallel_connections: self.hbone_parallel_connections.max(1),
            connect_timeout: self.connect_timeout,
            ..PoolConfig::default()
        }
    }

    /// The local mesh CA: `ca_files`, or the one in `state_dir` (created on
    /// first use).
    pub fn load_ca(&self) -> Result<CertificateAuthority, weir_identity::Error> {
        CertificateAuthority::load(
            self.ca_files.as_ref(),
            &self.state_dir,
            self.settings.trust_domain.clone(),
        )
    }

    /// Certificates issued by the local CA (`cert_ttl`), with their TLS
    /// handshake metrics registered in `registry`: what the proxy holds
    /// when no control plane signs for it.
    pub fn local_identity(
        &self,
        registry: &mut Registry,
    ) -> Result<Arc<IdentityManager>, weir_identity::Error> {
        let tls_metrics = TlsMetrics::register(registry);
        let ca = Arc::new(self.load_ca()?);
        Ok(Arc::new(IdentityManager::new(
            ca,
            self.cert_ttl,
            tls_metrics,
        )?))
    }
}

/// A duration as seconds (what `/config_dump` shows).
pub fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
