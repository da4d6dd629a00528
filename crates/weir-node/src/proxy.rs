//! One workload's in-pod proxy: listeners opened inside its network namespace
//! (outbound 15001, inbound plaintext 15006, HBONE 15008) and its capture rules.

mod inbound;
mod outbound;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn, Instrument};
use weir_core::config::Workload;
use weir_core::{Config, SpiffeId};
use weir_hbone::{BoxFuture, Connector, Pool, Shutdown, ShutdownSignal};
use weir_identity::{Direction, FailureReason, IdentityManager};

use crate::capture::{pod_netns, CaptureRules, Netns, NetnsWorker, PROXY_MARK};
use crate::node::Ctx;
use crate::Error;

pub(crate) const OUTBOUND_PORT: u16 = 15001;
pub(crate) const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub(crate) const HBONE_PORT: u16 = weir_hbone::HBONE_PORT;

/// Is `port` one of the proxy's own? Connections to them are never forwarded.
pub(crate) fn is_proxy_port(port: u16) -> bool {
    matches!(port, OUTBOUND_PORT | INBOUND_PLAINTEXT_PORT | HBONE_PORT)
}

/// What the connection handlers share for one workload.
pub(crate) struct Local {
    pub workload: Workload,
    pub id: SpiffeId,
    pub worker: NetnsWorker,
    pub pool: Pool,
    /// The pod routes replies to foreign addresses back to the proxy, so
    /// connections to the app can come from the client's address.
    pub original_source: bool,
}

impl Local {
    /// The workload as the current config has it (labels may have changed).
    pub fn current<'a>(&'a self, config: &'a Config) -> &'a Workload {
        config
            .workload(self.workload.namespace(), self.workload.name())
            .unwrap_or(&self.workload)
    }

    /// Connects `dst` from inside the pod with the proxy's mark, so the
    /// pod's capture rules let it through. Inbound, `client` is the caller:
    /// the connection to the app comes from its address when the pod routes
    /// replies back to the proxy (as ztunnel does: the app sees who really
    /// called). A client address that cannot be used (loopback, the pod's
    /// own, another IP family) or a transparent bind that fails falls back to
    /// the pod's own address.
    pub async fn connect(
        &self,
        dst: SocketAddr,
        client: Option<SocketAddr>,
        timeout: Duration,
    ) -> std::io::Result<TcpStream> {
        let client = client.filter(|c| {
            self.original_source
                && c.is_ipv4() == dst.is_ipv4()
                && !c.ip().is_loopback()
                && !c.ip().is_unspecified()
                && c.ip() != dst.ip()
        });
        // Boxed so the connect state is freed once connected instead of
        // staying in every connection's future.
        let connect: BoxFuture<'_, std::io::Result<TcpStream>> = if let Some(client) = client {
            Box::pin(async move {
                match self
                    .worker
                    .connect_as(dst, Some(PROXY_MARK), client.ip(), client.port())
                    .await
                {
                    Err(e) if e.kind() != std::io::ErrorKind::ConnectionRefused => {
                        debug!(%client, %dst, error = %e, "cannot connect from the client's address; connecting from the pod's");
                        self.worker.connect(dst, Some(PROXY_MARK)).await
                    }
                    r => r,
                }
            })
        } else {
            Box::pin(self.worker.connect(dst, Some(PROXY_MARK)))
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {dst} timed out after {timeout:?}"),
            )),
        }
    }
}

/// HBONE connections from this workload: TLS with its certificate, TCP from
/// inside its network namespace.
struct NetnsConnector {
    worker: NetnsWorker,
    identity: Arc<IdentityManager>,
}

impl Connector for NetnsConnector {
    fn tls_config(
        &self,
        source: &SpiffeId,
        expected: Option<&SpiffeId>,
    ) -> std::io::Result<Arc<rustls::ClientConfig>> {
        self.identity
            .client_config(source, expected.cloned())
            .map_err(std::io::Error::other)
    }

    fn tcp_connect(
        &self,
        _source: &SpiffeId,
        addr: SocketAddr,
    ) -> BoxFuture<'static, std::io::Result<TcpStream>> {
        let worker = self.worker.clone();
        Box::pin(async move { worker.connect(addr, Some(PROXY_MARK)).await })
    }
}

/// Classifies a failed inbound handshake for `weir_tls_handshake_failures_total`.
/// Certificate problems were already counted by the verifier, so they return
/// `None`; what the verifier never sees is counted here.
fn inbound_tls_failure_reason(e: &weir_hbone::Error) -> Option<FailureReason> {
    let weir_hbone::Error::ServerTlsHandshake { source, .. } = e else {
        return Some(FailureReason::Other); // timeout
    };
    match source
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => None,
        Some(rustls::Error::AlertReceived(_)) => Some(FailureReason::PeerAlert),
        Some(rustls::Error::NoCertificatesPresented) => Some(FailureReason::NoCertificate),
        _ => Some(FailureReason::Other),
    }
}

/// A running workload proxy; [`WorkloadProxy::stop`] tears it down.
pub(crate) struct WorkloadProxy {
    pub workload: Workload,
    netns: Netns,
    shutdown: Shutdown,
    captured: bool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WorkloadProxy {
    pub async fn start(ctx: Arc<Ctx>, workload: Workload) -> Result<WorkloadProxy, Error> {
        let id = workload.identity(&ctx.settings.trust_domain);
        let key = || format!("{}/{}", workload.namespace(), workload.name());
        let ns_err = |source| match workload.pod_uid() {
            Some(uid) => Error::PodNetns {
                workload: key(),
                uid: uid.to_owned(),
                source,
            },
            None => Error::Netns {
                workload: key(),
                netns: workload.netns.clone(),
                source,
            },
        };
        // A Workload made from a Pod is found by the Pod's UID (its
        // namespace has a runtime-chosen name); others by spec.netns.
        let netns = match workload.pod_uid() {
            Some(uid) => pod_netns(&ctx.options.proc_root, uid),
            None => Netns::open_named(&workload.netns),
        }
        .map_err(ns_err)?;
        let worker = NetnsWorker::spawn(&netns).map_err(ns_err)?;
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let bind = |port| {
            let worker = worker.clone();
            let w = format!("{}/{}", workload.namespace(), workload.name());
            async move {
                worker
                    .bind_listener(any(port))
                    .await
                    .map_err(|source| Error::Bind {
                        workload: w,
                        port,
                        source,
                    })
            }
        };
        let outbound = bind(OUTBOUND_PORT).await?;
        let plaintext = bind(INBOUND_PLAINTEXT_PORT).await?;
        let hbone = bind(HBONE_PORT).await?;
        let server_tls = ctx.identity.server_config(&id).map_err(Error::Identity)?;

        // Listeners first, then the rules that send traffic to them (the
        // listeners queue what arrives until the accept loops start).
        let (captured, original_source) = if ctx.options.capture {
            let ns = netns.try_clone().map_err(ns_err)?;
            let preserve = ctx.options.preserve_source_ip;
            let w = key();
            tokio::task::spawn_blocking(move || {
                let rules = CaptureRules::default();
                rules.install(&ns)?;
                let original_source = preserve
                    && match rules.install_source_routing(&ns) {
                        Ok(()) => true,
                        Err(e) => {
                            warn!(workload = %w, error = %e, "cannot route replies to the client's address back to the proxy: the app sees connections from its own address");
                            false
                        }
                    };
                Ok((true, original_source))
            })
            .await
            .expect("capture install task")
            .map_err(Error::Capture)?
        } else {
            (false, false)
        };

        let pool = Pool::new(
            ctx.options.common.pool_config(),
            Arc::new(NetnsConnector {
                worker: worker.clone(),
                identity: ctx.identity.clone(),
            }),
        );
        let local = Arc::new(Local {
            workload: workload.clone(),
            id: id.clone(),
            worker,
            pool,
            original_source,
        });
        let tls_metrics = ctx.identity.metrics().clone();
        let hbone_server = weir_hbone::Server::with_tls_failure_hook(
            weir_hbone::ServerConfig {
                drain_timeout: ctx.options.common.drain_timeout,
                peer_expiry: Some(weir_hbone::PeerExpiry(Arc::new(|leaf| {
                    weir_identity::not_after_of(leaf)
                }))),
                ..Default::default()
            },
            server_tls,
            inbound::HboneHandler {
                ctx: ctx.clone(),
                local: local.clone(),
            },
            Arc::new(move |e| {
                if let Some(reason) = inbound_tls_failure_reason(e) {
                    tls_metrics.record(Direction::Inbound, reason);
                }
            }),
        );

        let shutdown = Shutdown::new();
        let span = tracing::info_span!("workload", name = %workload.name(), namespace = %workload.namespace());
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(
            accept_loop(outbound, shutdown.signal(), {
                let (ctx, local) = (ctx.clone(), local.clone());
                move |s, peer| outbound::handle(ctx.clone(), local.clone(), s, peer)
            })
            .instrument(span.clone()),
        ));
        tasks.push(tokio::spawn(
            accept_loop(plaintext, shutdown.signal(), {
                let (ctx, local) = (ctx.clone(), local.clone());
                move |s, peer| inbound::plaintext(ctx.clone(), local.clone(), s, peer)
            })
            .instrument(span.clone()),
        ));
        let signal = shutdown.signal();
        tasks.push(tokio::spawn(
            async move { hbone_server.serve(hbone, signal).await }.instrument(span),
        ));
        info!(
            workload = %format!("{}/{}", workload.namespace(), workload.name()),
            identity = %id,
            address = %workload.address,
            netns = %workload.netns,
            capture = captured,
            original_source,
            "serving workload"
        );
        Ok(WorkloadProxy {
            workload,
            netns,
            shutdown,
            captured,
            tasks,
        })
    }

    /// Stops accepting; open connections drain on their own.
    pub fn stop_accepting(&self) {
        self.shutdown.trigger();
    }

    /// Removes the capture rules (idempotent).
    pub async fn remove_capture(&mut self) {
        if !self.captured {
            return;
        }
        let ns = match self.netns.try_clone() {
            Ok(ns) => ns,
            Err(e) => {
                warn!(netns = %self.workload.netns, error = %e, "cannot reopen network namespace to remove capture rules");
                return;
            }
        };
        match tokio::task::spawn_blocking(move || CaptureRules::remove(&ns)).await {
            Ok(Ok(())) => self.captured = false,
            Ok(Err(e)) => {
                warn!(netns = %self.workload.netns, error = %e, "removing capture rules failed")
            }
            Err(e) => warn!(error = %e, "capture removal task failed"),
        }
    }

    /// Stops accepting, removes the rules and lets the tasks finish draining.
    pub async fn stop(mut self) {
        self.stop_accepting();
        self.remove_capture().await;
        for t in self.tasks.drain(..) {
            // The HBONE server returns after its own drain deadline.
            drop(t);
        }
        info!(workload = %format!("{}/{}", self.workload.namespace(), self.workload.name()), "stopped serving workload");
    }
}

async fn accept_loop<F, Fut>(listener: TcpListener, mut shutdown: ShutdownSignal, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            _ = shutdown.fired() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(handle(stream, peer));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    use super::*;
    use crate::node::{ConfigStore, NodeOptions};

    fn size_of<T>(_: &T) -> usize {
        std::mem::size_of::<T>()
    }

    /// Each proxied connection is one task holding one of these futures, so
    /// their size is memory per connection (ztunnel asserts the same). The
    /// bounds are loose enough for compiler changes, tight enough to catch a
    /// buffer or a large struct slipping into them.
    #[tokio::test]
    async fn per_connection_futures_stay_small() {
        let config = Arc::new(Config::default());
        let ca =
            Arc::new(weir_identity::CertificateAuthority::generate(Default::default()).unwrap());
        let identity = Arc::new(
            IdentityManager::new(ca, weir_identity::DEFAULT_CERT_TTL, Default::default()).unwrap(),
        );
        let ctx = Arc::new(Ctx {
            options: NodeOptions::new("n", vec![]),
            settings: Default::default(),
            store: ConfigStore::new(config),
            identity: identity.clone(),
            metrics: Default::default(),
            drain: Default::default(),
            ready: AtomicBool::new(false),
            status: Mutex::new(Default::default()),
            reload: Mutex::new(Default::default()),
        });
        let worker = NetnsWorker::spawn(&Netns::current().unwrap()).unwrap();
        let workload: Workload = Workload {
            metadata: weir_core::config::ObjectMeta::new("ns", "w"),
            service_account: "sa".into(),
            address: "127.0.0.1".parse().unwrap(),
            node: "n".into(),
            netns: "w".into(),
            ready: true,
        };
        let local = Arc::new(Local {
            id: workload.identity(&Default::default()),
            workload,
            worker: worker.clone(),
            pool: Pool::new(
                weir_hbone::PoolConfig::default(),
                Arc::new(NetnsConnector { worker, identity }),
            ),
            original_source: false,
        });
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = l.local_addr().unwrap();
        let s1 = TcpStream::connect(peer).await.unwrap();
        let s2 = TcpStream::connect(peer).await.unwrap();

        let out = outbound::handle(ctx.clone(), local.clone(), s1, peer);
        let plain = inbound::plaintext(ctx, local, s2, peer);
        eprintln!(
            "outbound future: {} bytes, inbound plaintext future: {} bytes",
            size_of(&out),
            size_of(&plain)
        );
        assert!(
            size_of(&out) <= 1280,
            "outbound future grew to {} bytes",
            size_of(&out)
        );
        // Inbound futures also wait for config changes, to close what a
        // new policy denies (about 370 bytes: the watch and its select).
        assert!(
            size_of(&plain) <= 1408,
            "plaintext future grew to {} bytes",
            size_of(&plain)
        );
    }
}
