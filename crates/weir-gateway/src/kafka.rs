//! `KafkaGateway` listeners: TLS terminated by the gateway, then a
//! Kafka-aware session (`weir_kafka`) per connection, routed by SNI to the
//! bootstrap servers or to one broker, with topic-level authorization by
//! `KafkaAuthorizationPolicy` and per-topic metrics.
//!
//! Brokers are reached the way every gateway upstream is ([`Upstreams`]):
//! over HBONE with the gateway's identity when the broker's advertised
//! address is a mesh Workload (or a Service/ServiceEntry host that resolves
//! to one), plain TCP otherwise.
//!
//! What a listener learns about its cluster (broker ids and addresses,
//! topic ids) lives in a registry per KafkaGateway that survives config
//! reloads as long as the KafkaGateway keeps its bootstrap servers.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use prometheus_client::registry::Registry;
use tracing::{debug, warn};
use weir_core::config::kafka::{KafkaGateway, KafkaTlsMode, UpstreamHost};
use weir_core::config::{Destination, ServerTls, TlsMode};
use weir_core::kafka::{Operation, Principal, ResourceType};
use weir_core::policy::kafka::{KafkaAuthorizer, KafkaDecision};
use weir_core::Config;
use weir_hbone::BoxFuture;
use weir_kafka::{
    Authorizer, BoxStream, BrokerAddr, BrokerRegistry, Connector, Decision, HostMapper,
    KafkaMetrics, KafkaProxy, KafkaProxyConfig,
};

use crate::listener::{
    TerminatedConnection, TerminatedHandler, TerminatedListener, TerminatedListeners,
};
use crate::upstream::Upstreams;

/// The `KafkaGateway` extension of `weir gateway`.
#[derive(Default)]
pub struct KafkaListeners {
    metrics: OnceLock<Arc<KafkaMetrics>>,
    /// Per KafkaGateway (`namespace/name`): its bootstrap servers and the
    /// registry learnt from them.
    registries: Mutex<HashMap<String, Learnt>>,
    /// Per KafkaGateway: its authorizer, replaced on every config change so
    /// open sessions apply the new policies too (their cached decisions are
    /// dropped when the epoch moves).
    authorizers: Mutex<HashMap<String, Arc<PolicyAuthorizer>>>,
}

/// A KafkaGateway's bootstrap servers and the registry learnt from them.
type Learnt = (Vec<BrokerAddr>, Arc<BrokerRegistry>);

impl std::fmt::Debug for KafkaListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaListeners").finish_non_exhaustive()
    }
}

impl KafkaListeners {
    pub fn new() -> Self {
        Self::default()
    }

    fn metrics(&self) -> Arc<KafkaMetrics> {
        self.metrics
            .get_or_init(|| Arc::new(KafkaMetrics::unregistered()))
            .clone()
    }

    /// The registry for `gw`, kept from the previous config when its
    /// bootstrap servers are unchanged.
    fn registry(&self, gw: &KafkaGateway, servers: &[BrokerAddr]) -> Arc<BrokerRegistry> {
        let mut map = self.registries.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&gw.key()) {
            Some((old, reg)) if old.as_slice() == servers => reg.clone(),
            _ => {
                let reg = Arc::new(BrokerRegistry::new(servers.to_vec()));
                map.insert(gw.key(), (servers.to_vec(), reg.clone()));
                reg
            }
        }
    }

    /// The shared authorizer of `gw`, now answering with `policies`.
    fn authorizer(&self, gw: &KafkaGateway, policies: KafkaAuthorizer) -> Arc<PolicyAuthorizer> {
        let mut map = self.authorizers.lock().unwrap_or_else(|e| e.into_inner());
        let shared = map.entry(gw.key()).or_default().clone();
        shared.replace(policies);
        shared
    }

    fn listener(&self, config: &Config, gw: &KafkaGateway) -> Result<TerminatedListener, String> {
        let mapper = HostMapper::new(
            &gw.bootstrap_host,
            &gw.broker_host_template.as_string(),
            gw.advertised_port,
        )
        .map_err(|e| e.to_string())?;
        let servers: Vec<BrokerAddr> = gw
            .upstream
            .bootstrap_servers
            .iter()
            .map(|s| BrokerAddr {
                host: match &s.host {
                    UpstreamHost::Name(n) => n.clone(),
                    UpstreamHost::Ip(ip) => ip.to_string(),
                },
                port: s.port,
            })
            .collect();
        let mut proxy = KafkaProxyConfig::new(mapper, servers.clone());
        proxy.max_frame_size = gw.max_frame_bytes as usize;
        let authorizer = self.authorizer(
            gw,
            KafkaAuthorizer::for_gateway(config, &gw.metadata.namespace, &gw.metadata.name),
        );
        let handler = KafkaHandler {
            name: gw.key(),
            namespace: gw.metadata.namespace.clone(),
            proxy,
            registry: self.registry(gw, &servers),
            authorizer,
            metrics: self.metrics(),
        };
        Ok(TerminatedListener {
            name: format!("kafka:{}", gw.key()),
            source: format!("KafkaGateway {}", gw.key()),
            port: gw.port,
            tls: ServerTls {
                mode: match gw.tls.mode {
                    KafkaTlsMode::Simple => TlsMode::Simple,
                    KafkaTlsMode::Mutual => TlsMode::Mutual,
                },
                server_certificate: Some(gw.tls.server_certificate.clone()),
                private_key: Some(gw.tls.private_key.clone()),
                ca_certificates: gw.tls.ca_certificates.clone(),
                subject_alt_names: Vec::new(),
                min_protocol_version: gw.tls.min_protocol_version,
                max_protocol_version: gw.tls.max_protocol_version,
            },
            handler: Arc::new(handler),
        })
    }
}

impl TerminatedListeners for KafkaListeners {
    fn register_metrics(&self, registry: &mut Registry) {
        let _ = self.metrics.set(KafkaMetrics::register(registry));
    }

    fn listeners(
        &self,
        config: &Config,
        labels: &BTreeMap<String, String>,
    ) -> Vec<TerminatedListener> {
        config
            .kafka_gateways
            .iter()
            .filter(|gw| gw.selects(labels))
            .filter_map(|gw| match self.listener(config, gw) {
                Ok(l) => Some(l),
                Err(e) => {
                    warn!(target: "weir::gateway", kafka_gateway = %gw.key(), error = %e, "KafkaGateway not served");
                    None
                }
            })
            .collect()
    }
}

/// `KafkaAuthorizationPolicy` decisions for one KafkaGateway, in the form
/// the Kafka session asks for them; the policies are swapped on reload.
struct PolicyAuthorizer {
    current: RwLock<Arc<KafkaAuthorizer>>,
    epoch: AtomicU64,
}

impl Default for PolicyAuthorizer {
    /// No policies (allows everything) until the first `replace`.
    fn default() -> Self {
        PolicyAuthorizer {
            current: RwLock::new(Arc::new(KafkaAuthorizer::for_gateway(
                &Config::default(),
                "",
                "",
            ))),
            epoch: AtomicU64::new(0),
        }
    }
}

impl PolicyAuthorizer {
    fn replace(&self, policies: KafkaAuthorizer) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policies);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn current(&self) -> Arc<KafkaAuthorizer> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The session's form of an engine decision (the reason names the policy).
fn decision(d: KafkaDecision) -> Decision {
    let reason = match (&d.policy, d.note) {
        (Some(p), Some(n)) => format!("{} ({p}); {n}", d.reason),
        (Some(p), None) => format!("{} ({p})", d.reason),
        (None, Some(n)) => format!("{}; {n}", d.reason),
        (None, None) => d.reason.to_owned(),
    };
    Decision {
        allowed: d.allowed,
        reason,
    }
}

impl Authorizer for PolicyAuthorizer {
    fn authorize(
        &self,
        principal: &Principal,
        resource: ResourceType,
        name: &str,
        op: Operation,
    ) -> Decision {
        decision(self.current().authorize(principal, resource, name, op))
    }

    fn authorize_topic_creation(&self, principal: &Principal, name: &str) -> Decision {
        decision(self.current().authorize_topic_creation(principal, name))
    }

    fn authorize_idempotent_producer(&self, principal: &Principal) -> Decision {
        decision(self.current().authorize_idempotent_producer(principal))
    }

    fn allows_everything(&self) -> bool {
        !self.current().has_policies()
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

/// Serves one KafkaGateway's connections.
struct KafkaHandler {
    name: String,
    namespace: String,
    proxy: KafkaProxyConfig,
    registry: Arc<BrokerRegistry>,
    authorizer: Arc<dyn Authorizer>,
    metrics: Arc<KafkaMetrics>,
}

impl TerminatedHandler for KafkaHandler {
    fn counts_routing(&self) -> bool {
        true
    }

    fn handle(&self, conn: TerminatedConnection) -> BoxFuture<'static, ()> {
        let connector = MeshConnector {
            upstreams: conn.upstreams.clone(),
            config: conn.config.clone(),
            namespace: self.namespace.clone(),
        };
        let proxy = KafkaProxy::with_registry(
            self.proxy.clone(),
            self.registry.clone(),
            Arc::new(connector),
            self.authorizer.clone(),
            self.metrics.clone(),
        );
        let name = self.name.clone();
        Box::pin(async move {
            let TerminatedConnection {
                stream,
                principal,
                sni,
                peer,
                port,
                metrics,
                route,
                mode,
                ..
            } = conn;
            let Some(sni) = sni else {
                metrics.error(port, "kafka_no_sni");
                warn!(target: "weir::gateway", kafka_gateway = %name, %peer, "Kafka client sent no SNI: cannot tell the bootstrap address from a broker; closing");
                return;
            };
            // Each connection is counted once: routed when its broker
            // connection opens (weir_gateway_connections_total), or as an
            // error if it never gets there (unknown_host, unknown_broker,
            // upstream_unreachable). How a routed session ends is the
            // session's to log and count (weir_kafka_connections_closed_total).
            let mut routed = false;
            let result = proxy
                .serve_with(stream, &sni, principal, |_| {
                    let _ = metrics.connection(port, &route, mode);
                    routed = true;
                })
                .await;
            if let Err(e) = result {
                if !routed {
                    metrics.error(port, e.reason());
                }
                debug!(target: "weir::gateway", kafka_gateway = %name, %peer, sni = %sni, reason = e.reason(), routed, "Kafka connection failed");
            }
        })
    }
}

/// Reaches brokers at their advertised addresses through the gateway's
/// upstreams: HBONE to mesh Workloads, TCP otherwise.
struct MeshConnector {
    upstreams: Arc<Upstreams>,
    config: Arc<Config>,
    /// The KafkaGateway's namespace: short host names resolve relative to it.
    namespace: String,
}

impl Connector for MeshConnector {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let dest = Destination {
                host: host.to_owned(),
                port: Some(port),
                subset: None,
            };
            match self
                .upstreams
                .connect(&self.config, &dest, &self.namespace, None)
                .await
            {
                Ok(c) => Ok(Box::new(c.stream) as BoxStream),
                Err(e) => Err(io::Error::other(e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::config::{MeshSettings, SourceFile};

    fn authorizer(policies: &str) -> PolicyAuthorizer {
        let src = [SourceFile::new("p.yaml", policies)];
        let config = Config::from_sources(&src, MeshSettings::default()).unwrap();
        let a = PolicyAuthorizer::default();
        a.replace(KafkaAuthorizer::for_gateway(&config, "kafka", "external"));
        a
    }

    const BILLING_WRITES_ORDERS: &str = "
apiVersion: weir.dev/v1alpha1
kind: KafkaAuthorizationPolicy
metadata: {name: billing, namespace: kafka}
spec:
  rules:
  - principals: [\"CN=billing,O=Example\"]
    resources: [{type: topic, name: orders., patternType: PREFIXED}]
    operations: [Read, Write]
  - principals: [\"CN=admin\"]
    resources: [{type: cluster}]
    operations: [Create]
";

    fn cert(subject: &str) -> Principal {
        Principal::Certificate {
            subject: subject.to_owned(),
            sans: Vec::new(),
        }
    }

    /// The gateway answers InitProducerId and topic creation with the
    /// engine's request-level rules (KIP-679; cluster Create first).
    #[test]
    fn request_level_questions_use_the_policy_engine() {
        let a = authorizer(BILLING_WRITES_ORDERS);
        let billing = cert("CN=billing,O=Example");
        assert!(
            !a.authorize(
                &billing,
                ResourceType::Cluster,
                "kafka-cluster",
                Operation::IdempotentWrite
            )
            .allowed
        );
        let d = a.authorize_idempotent_producer(&billing);
        assert!(d.allowed, "{d:?}");
        assert!(
            d.reason.contains("kafka/billing") && d.reason.contains("KIP-679"),
            "{d:?}"
        );
        assert!(!a.authorize_idempotent_producer(&cert("CN=admin")).allowed);

        let admin = cert("CN=admin");
        assert!(
            !a.authorize(&admin, ResourceType::Topic, "newtopic", Operation::Create)
                .allowed
        );
        assert!(a.authorize_topic_creation(&admin, "newtopic").allowed);
        assert!(!a.authorize_topic_creation(&billing, "orders.new").allowed);
    }
}
