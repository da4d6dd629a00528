//! The per-process secret cache (ztunnel's SecretManager): one certificate per
//! workload identity, issued lazily, renewed at half-life, served to rustls
//! through [`CertSlot`]s so that rotation never touches established connections.
//!
//! Certificates are signed either in-process by the mesh CA
//! ([`IdentityManager::new`]) or by a remote CA, the control plane, from a
//! certificate signing request ([`IdentityManager::with_remote_signer`]). With
//! a remote CA the private keys never leave this process, certificates are
//! fetched asynchronously ([`IdentityManager::prepare`]) before a workload is
//! served, and a failed renewal keeps the current certificate until it
//! expires (fail-static), retrying every [`ROTATION_RETRY`].

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;
use tokio::sync::Notify;
use weir_core::{SpiffeId, TrustDomain};

use crate::ca::{CertificateAuthority, WorkloadCertificate};
use crate::error::{Error, Result};
use crate::metrics::TlsMetrics;
use crate::remote::{self, CsrSigner};
use crate::tls::{certified_key, mesh_client_config, mesh_server_config, CertSlot};
use crate::verify::{MeshClientVerifier, MeshServerVerifier};

/// How long the rotation task waits before retrying after a failed renewal.
pub const ROTATION_RETRY: Duration = Duration::from_secs(10);

/// The longest the rotation task sleeps without re-checking (guards against
/// wall-clock jumps, since tokio timers are monotonic).
const MAX_ROTATION_SLEEP: Duration = Duration::from_secs(300);

/// The shortest the rotation task sleeps, so a misbehaving clock cannot make
/// it spin.
const MIN_ROTATION_SLEEP: Duration = Duration::from_millis(100);

struct Identity {
    slot: Arc<CertSlot>,
    cert: Arc<WorkloadCertificate>,
}

#[derive(Default)]
struct State {
    identities: HashMap<SpiffeId, Identity>,
    server_configs: HashMap<SpiffeId, Arc<ServerConfig>>,
    client_configs: HashMap<(SpiffeId, Option<SpiffeId>), Arc<ClientConfig>>,
}

/// Who signs this manager's certificates.
enum Issuer {
    /// The mesh CA, in-process.
    Local(Arc<CertificateAuthority>),
    /// A remote CA (the control plane), from certificate signing requests.
    Remote(Arc<dyn CsrSigner>),
}

/// Issues, caches and renews workload certificates, and hands out rustls
/// configs that serve them.
pub struct IdentityManager {
    issuer: Issuer,
    root: CertificateDer<'static>,
    trust_domain: TrustDomain,
    ttl: Duration,
    metrics: TlsMetrics,
    client_verifier: Arc<MeshClientVerifier>,
    state: Mutex<State>,
    changed: Arc<Notify>,
}

impl std::fmt::Debug for IdentityManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityManager")
            .field("trust_domain", &self.trust_domain)
            .field(
                "issuer",
                &match self.issuer {
                    Issuer::Local(_) => "local CA",
                    Issuer::Remote(_) => "remote CA",
                },
            )
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl IdentityManager {
    /// A manager signing with `ca` in-process, issuing certificates valid for
    /// `ttl` (usually [`DEFAULT_CERT_TTL`](crate::DEFAULT_CERT_TTL)), counting
    /// refused handshakes in `metrics`.
    pub fn new(ca: Arc<CertificateAuthority>, ttl: Duration, metrics: TlsMetrics) -> Result<Self> {
        let root = ca.root_cert_der().clone();
        let trust_domain = ca.trust_domain().clone();
        Self::build(Issuer::Local(ca), root, trust_domain, ttl, metrics)
    }

    /// A manager whose certificates are signed by a remote CA through
    /// `signer` (the control plane): it generates each key locally, sends a
    /// CSR, and checks that what comes back chains to `root`, names the
    /// identity asked for and matches the key. Certificates must be fetched
    /// with [`prepare`](Self::prepare) before the synchronous accessors can
    /// serve them; renewals go through the same signer.
    pub fn with_remote_signer(
        root: CertificateDer<'static>,
        trust_domain: TrustDomain,
        ttl: Duration,
        metrics: TlsMetrics,
        signer: Arc<dyn CsrSigner>,
    ) -> Result<Self> {
        Self::build(Issuer::Remote(signer), root, trust_domain, ttl, metrics)
    }

    fn build(
        issuer: Issuer,
        root: CertificateDer<'static>,
        trust_domain: TrustDomain,
        ttl: Duration,
        metrics: TlsMetrics,
    ) -> Result<Self> {
        let client_verifier = Arc::new(MeshClientVerifier::new(
            &root,
            trust_domain.clone(),
            metrics.clone(),
        )?);
        Ok(Self {
            issuer,
            root,
            trust_domain,
            ttl,
            metrics,
            client_verifier,
            state: Mutex::new(State::default()),
            changed: Arc::new(Notify::new()),
        })
    }

    /// The in-process CA this manager signs with; `None` when certificates
    /// come from a remote CA.
    pub fn ca(&self) -> Option<&Arc<CertificateAuthority>> {
        match &self.issuer {
            Issuer::Local(ca) => Some(ca),
            Issuer::Remote(_) => None,
        }
    }

    /// Whether certificates are signed by a remote CA (the control plane).
    pub fn is_remote(&self) -> bool {
        matches!(self.issuer, Issuer::Remote(_))
    }

    /// The mesh root certificate peers are verified against.
    pub fn root_cert_der(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The mesh trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The lifetime of issued certificates.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The TLS metrics the verifiers count into.
    pub fn metrics(&self) -> &TlsMetrics {
        &self.metrics
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is only mutated by complete inserts; a panic elsewhere
        // cannot leave it half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues synchronously with the local CA.
    fn issue(&self, id: &SpiffeId) -> Result<Arc<WorkloadCertificate>> {
        let Issuer::Local(ca) = &self.issuer else {
            return Err(Error::RemoteIssuer { id: id.clone() });
        };
        let cert = Arc::new(ca.issue(id, self.ttl)?);
        tracing::debug!(identity = %id, not_after = ?cert.not_after, "issued workload certificate");
        Ok(cert)
    }

    /// Obtains a new certificate for `id` from whichever CA this manager uses.
    async fn obtain(&self, id: &SpiffeId) -> Result<Arc<WorkloadCertificate>> {
        match &self.issuer {
            Issuer::Local(_) => self.issue(id),
            Issuer::Remote(signer) => {
                if id.trust_domain() != &self.trust_domain {
                    return Err(Error::ForeignTrustDomain {
                        id: id.clone(),
                        ca_trust_domain: self.trust_domain.clone(),
                    });
                }
                let request = remote::CertificateRequest::new(id)?;
                let chain = signer
                    .sign(id, request.csr_pem.clone(), self.ttl)
                    .await
                    .map_err(|source| Error::Remote {
                        id: id.clone(),
                        source,
                    })?;
                let cert = request.accept(chain, &self.root, &self.trust_domain)?;
                tracing::debug!(identity = %id, not_after = ?cert.not_after, "control plane signed workload certificate");
                Ok(Arc::new(cert))
            }
        }
    }

    /// Installs `cert` as `id`'s current certificate (new handshakes only).
    fn install(
        &self,
        state: &mut State,
        id: &SpiffeId,
        cert: Arc<WorkloadCertificate>,
    ) -> Result<()> {
        let key = certified_key(cert.chain.clone(), cert.key.clone_key())?;
        match state.identities.get_mut(id) {
            Some(identity) => {
                identity.slot.replace(key);
                identity.cert = cert;
            }
            None => {
                state.identities.insert(
                    id.clone(),
                    Identity {
                        slot: Arc::new(CertSlot::new(key)),
                        cert,
                    },
                );
            }
        }
        // Wake the rotation task: the earliest refresh time may have changed.
        self.changed.notify_one();
        Ok(())
    }

    /// Returns the slot for `id`, issuing its first certificate if needed
    /// (local CA only; with a remote CA it must have been prepared).
    fn ensure<'a>(&self, state: &'a mut State, id: &SpiffeId) -> Result<&'a Identity> {
        match state.identities.entry(id.clone()) {
            Entry::Occupied(entry) => Ok(entry.into_mut()),
            Entry::Vacant(entry) => {
                if self.is_remote() {
                    return Err(Error::NotPrepared { id: id.clone() });
                }
                let cert = self.issue(id)?;
                let key = certified_key(cert.chain.clone(), cert.key.clone_key())?;
                let identity = entry.insert(Identity {
                    slot: Arc::new(CertSlot::new(key)),
                    cert,
                });
                // Wake the rotation task: it may have had nothing to watch.
                self.changed.notify_one();
                Ok(identity)
            }
        }
    }

    /// Makes sure `id` has a certificate, fetching it from the remote CA if
    /// needed (with a local CA this is [`certificate`](Self::certificate)).
    /// Call it before serving a workload; afterwards the synchronous
    /// accessors serve `id` and the rotation task renews it.
    pub async fn prepare(&self, id: &SpiffeId) -> Result<Arc<WorkloadCertificate>> {
        if let Some(identity) = self.state().identities.get(id) {
            return Ok(identity.cert.clone());
        }
        if !self.is_remote() {
            return self.certificate(id);
        }
        let cert = self.obtain(id).await?;
        let mut state = self.state();
        if let Some(identity) = state.identities.get(id) {
            // Prepared concurrently: keep the one already served.
            return Ok(identity.cert.clone());
        }
        self.install(&mut state, id, cert.clone())?;
        Ok(cert)
    }

    /// The current certificate of `id` (with a local CA, issued now if this is
    /// its first use; with a remote CA, [`Error::NotPrepared`] until
    /// [`prepare`](Self::prepare) fetched it).
    pub fn certificate(&self, id: &SpiffeId) -> Result<Arc<WorkloadCertificate>> {
        let mut state = self.state();
        Ok(self.ensure(&mut state, id)?.cert.clone())
    }

    /// Forgets every identity for which `keep` is false (its certificate,
    /// and the configs that serve it): it is no longer renewed. Connections
    /// already established with it are untouched. The node proxy calls this
    /// when a workload leaves it, so that a certificate the control plane
    /// would no longer sign is not retried forever.
    pub fn retain(&self, keep: impl Fn(&SpiffeId) -> bool) {
        let mut state = self.state();
        let before = state.identities.len();
        state.identities.retain(|id, _| keep(id));
        state.server_configs.retain(|id, _| keep(id));
        state.client_configs.retain(|(id, _), _| keep(id));
        if state.identities.len() != before {
            tracing::debug!(
                dropped = before - state.identities.len(),
                "forgot certificates of identities no longer served"
            );
        }
    }

    /// The identities that have certificates.
    pub fn identities(&self) -> Vec<SpiffeId> {
        let mut ids: Vec<_> = self.state().identities.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The server config for workload `id`: TLS 1.3, ALPN `h2`, presents `id`'s
    /// current certificate, requires a mesh client certificate. Cached per id.
    pub fn server_config(&self, id: &SpiffeId) -> Result<Arc<ServerConfig>> {
        let mut state = self.state();
        if let Some(config) = state.server_configs.get(id) {
            return Ok(config.clone());
        }
        let slot = self.ensure(&mut state, id)?.slot.clone();
        let config = Arc::new(mesh_server_config(slot, self.client_verifier.clone())?);
        state.server_configs.insert(id.clone(), config.clone());
        Ok(config)
    }

    /// The client config for workload `id` connecting to a mesh server; if
    /// `expected_server` is set the server must present exactly that identity.
    /// The TLS server name is not checked (use any name, e.g. the IP).
    /// Cached per (id, expected_server).
    pub fn client_config(
        &self,
        id: &SpiffeId,
        expected_server: Option<SpiffeId>,
    ) -> Result<Arc<ClientConfig>> {
        let mut state = self.state();
        let cache_key = (id.clone(), expected_server);
        if let Some(config) = state.client_configs.get(&cache_key) {
            return Ok(config.clone());
        }
        let slot = self.ensure(&mut state, id)?.slot.clone();
        let verifier = Arc::new(MeshServerVerifier::new(
            &self.root,
            self.trust_domain.clone(),
            cache_key.1.clone(),
            self.metrics.clone(),
        )?);
        let config = Arc::new(mesh_client_config(slot, verifier)?);
        state.client_configs.insert(cache_key, config.clone());
        Ok(config)
    }

    fn rotate_locked(&self, state: &mut State, id: &SpiffeId) -> Result<Arc<WorkloadCertificate>> {
        let cert = self.issue(id)?;
        self.install(state, id, cert.clone())?;
        tracing::info!(identity = %id, refresh_at = ?cert.refresh_at(), "rotated workload certificate");
        Ok(cert)
    }

    /// Replaces `id`'s certificate now (issuing one if it had none). New
    /// handshakes present the new certificate; established connections keep
    /// theirs. Local CA only ([`Error::RemoteIssuer`] otherwise; see
    /// [`renew`](Self::renew)).
    pub fn force_rotate(&self, id: &SpiffeId) -> Result<Arc<WorkloadCertificate>> {
        let mut state = self.state();
        self.rotate_locked(&mut state, id)
    }

    /// Replaces `id`'s certificate now with one from this manager's CA, local
    /// or remote. On failure the current certificate stays. An identity
    /// [`retain`](Self::retain) forgot while the CA was signing stays
    /// forgotten (the new certificate is returned, not installed), as
    /// ztunnel drops a fetch for an identity it is forgetting.
    pub async fn renew(&self, id: &SpiffeId) -> Result<Arc<WorkloadCertificate>> {
        let cert = self.obtain(id).await?;
        let mut state = self.state();
        if !state.identities.contains_key(id) {
            tracing::debug!(identity = %id, "renewed certificate dropped: the identity was forgotten meanwhile");
            return Ok(cert);
        }
        self.install(&mut state, id, cert.clone())?;
        tracing::info!(identity = %id, refresh_at = ?cert.refresh_at(), "rotated workload certificate");
        Ok(cert)
    }

    #[cfg(test)]
    pub(crate) fn install_for_test(&self, id: &SpiffeId, cert: Arc<WorkloadCertificate>) {
        let mut state = self.state();
        self.install(&mut state, id, cert).unwrap();
    }

    fn due(&self, now: SystemTime) -> Vec<SpiffeId> {
        self.state()
            .identities
            .iter()
            .filter(|(_, identity)| identity.cert.refresh_at() <= now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Renews every certificate whose [`refresh_at`](WorkloadCertificate::refresh_at)
    /// is at or before `now`. Returns how many were renewed; if any renewal
    /// failed, the others are still done, the failed ones keep their current
    /// certificate, and the first error is returned. Local CA only
    /// ([`Error::RemoteIssuer`] otherwise; see [`renew_due`](Self::renew_due)).
    pub fn rotate_due(&self, now: SystemTime) -> Result<usize> {
        let mut state = self.state();
        let due: Vec<SpiffeId> = state
            .identities
            .iter()
            .filter(|(_, identity)| identity.cert.refresh_at() <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut round = RenewalRound::new(due.len());
        for id in due {
            let result = self.rotate_locked(&mut state, &id).map(drop);
            round.record(id, result);
        }
        round.finish()
    }

    /// [`rotate_due`](Self::rotate_due) for either kind of CA: renewals from a
    /// remote CA are fetched one after the other, without holding any lock.
    pub async fn renew_due(&self, now: SystemTime) -> Result<usize> {
        if !self.is_remote() {
            return self.rotate_due(now);
        }
        let due = self.due(now);
        let mut round = RenewalRound::new(due.len());
        for id in due {
            let result = self.renew(&id).await.map(drop);
            round.record(id, result);
        }
        round.finish()
    }

    /// The earliest time a certificate is due for renewal.
    pub fn next_refresh_at(&self) -> Option<SystemTime> {
        self.state()
            .identities
            .values()
            .map(|identity| identity.cert.refresh_at())
            .min()
    }

    /// Starts the renewal task: it sleeps until the earliest
    /// [`next_refresh_at`](Self::next_refresh_at) (or until a new identity
    /// appears), renews what is due, and retries failures after
    /// [`ROTATION_RETRY`]. The task ends when the manager is dropped (at its
    /// next wake-up) or when the handle is aborted. Must be called within a
    /// tokio runtime.
    pub fn spawn_rotation(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self);
        let changed = self.changed.clone();
        drop(self);
        tokio::spawn(async move {
            loop {
                let sleep_for = {
                    let Some(this) = weak.upgrade() else {
                        return;
                    };
                    let now = SystemTime::now();
                    match this.renew_due(now).await {
                        Ok(_) => this
                            .next_refresh_at()
                            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
                            .unwrap_or(MAX_ROTATION_SLEEP),
                        Err(_) => ROTATION_RETRY,
                    }
                };
                let sleep_for = sleep_for.clamp(MIN_ROTATION_SLEEP, MAX_ROTATION_SLEEP);
                tokio::select! {
                    _ = tokio::time::sleep(sleep_for) => {}
                    _ = changed.notified() => {}
                }
            }
        })
    }
}

/// The outcome of one pass over the certificates due for renewal. Failures
/// are logged as one line per pass (with a CA that is down, every identity
/// fails the same way, every [`ROTATION_RETRY`]), each identity at debug.
struct RenewalRound {
    due: usize,
    renewed: usize,
    failed: Vec<SpiffeId>,
    first_error: Option<Error>,
}

impl RenewalRound {
    fn new(due: usize) -> Self {
        RenewalRound {
            due,
            renewed: 0,
            failed: Vec::new(),
            first_error: None,
        }
    }

    fn record(&mut self, id: SpiffeId, result: Result<()>) {
        match result {
            Ok(()) => self.renewed += 1,
            Err(e) => {
                tracing::debug!(identity = %id, error = %e, "certificate renewal failed");
                self.failed.push(id);
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// How many were renewed, or the first error after logging the pass.
    fn finish(self) -> Result<usize> {
        let Some(e) = self.first_error else {
            return Ok(self.renewed);
        };
        tracing::warn!(
            failed = self.failed.len(),
            due = self.due,
            identity = %self.failed[0],
            error = %e,
            "certificate renewal failed; keeping the current certificates until they expire, retrying in {}s",
            ROTATION_RETRY.as_secs()
        );
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::DEFAULT_CERT_TTL;
    use crate::error::Error;
    use weir_core::TrustDomain;

    fn manager(ttl: Duration) -> IdentityManager {
        let ca = Arc::new(CertificateAuthority::generate(TrustDomain::default()).unwrap());
        IdentityManager::new(ca, ttl, TlsMetrics::default()).unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn caches_certificates_and_configs() {
        let m = manager(DEFAULT_CERT_TTL);
        let a = id("spiffe://cluster.local/ns/a/sa/a");
        assert!(m.identities().is_empty());
        let c1 = m.certificate(&a).unwrap();
        let c2 = m.certificate(&a).unwrap();
        assert!(Arc::ptr_eq(&c1, &c2));
        assert!(Arc::ptr_eq(
            &m.server_config(&a).unwrap(),
            &m.server_config(&a).unwrap()
        ));
        let b = id("spiffe://cluster.local/ns/b/sa/b");
        let plain = m.client_config(&a, None).unwrap();
        assert!(Arc::ptr_eq(&plain, &m.client_config(&a, None).unwrap()));
        assert!(!Arc::ptr_eq(&plain, &m.client_config(&a, Some(b)).unwrap()));
        assert_eq!(m.identities(), vec![a]);
    }

    #[test]
    fn retain_forgets_identities_and_their_configs() {
        let m = manager(DEFAULT_CERT_TTL);
        let a = id("spiffe://cluster.local/ns/a/sa/a");
        let b = id("spiffe://cluster.local/ns/b/sa/b");
        let a_server = m.server_config(&a).unwrap();
        m.client_config(&b, None).unwrap();
        m.retain(|i| i == &a);
        assert_eq!(m.identities(), vec![a.clone()]);
        assert!(Arc::ptr_eq(&a_server, &m.server_config(&a).unwrap()));
        // b comes back only if asked for again (a new certificate).
        m.client_config(&b, None).unwrap();
        assert_eq!(m.identities().len(), 2);
    }

    #[test]
    fn refuses_foreign_trust_domain() {
        let m = manager(DEFAULT_CERT_TTL);
        let err = m
            .server_config(&id("spiffe://other.td/ns/a/sa/a"))
            .unwrap_err();
        assert!(matches!(err, Error::ForeignTrustDomain { .. }), "{err}");
        assert!(m.identities().is_empty());
    }

    #[test]
    fn rotate_due_renews_only_due_certificates() {
        let m = manager(DEFAULT_CERT_TTL);
        let a = id("spiffe://cluster.local/ns/a/sa/a");
        let first = m.certificate(&a).unwrap();
        assert_eq!(m.next_refresh_at(), Some(first.refresh_at()));
        assert_eq!(m.rotate_due(SystemTime::now()).unwrap(), 0);
        assert!(Arc::ptr_eq(&first, &m.certificate(&a).unwrap()));
        assert_eq!(m.rotate_due(first.refresh_at()).unwrap(), 1);
        let second = m.certificate(&a).unwrap();
        assert_ne!(first.leaf(), second.leaf());
        let third = m.force_rotate(&a).unwrap();
        assert_ne!(second.leaf(), third.leaf());
        assert!(Arc::ptr_eq(&third, &m.certificate(&a).unwrap()));
    }

    #[test]
    fn refresh_is_in_the_future_even_for_short_ttls() {
        let m = manager(Duration::from_secs(4));
        let cert = m
            .certificate(&id("spiffe://cluster.local/ns/a/sa/a"))
            .unwrap();
        assert!(cert.refresh_at() > SystemTime::now());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn rotation_task_renews_at_half_life() {
        let m = Arc::new(manager(Duration::from_secs(4)));
        let a = id("spiffe://cluster.local/ns/a/sa/a");
        let handle = m.clone().spawn_rotation();
        let first = m.certificate(&a).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let current = m.certificate(&a).unwrap();
            if current.leaf() != first.leaf() {
                assert!(SystemTime::now() + Duration::from_secs(1) >= first.refresh_at());
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no rotation");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        handle.abort();
    }
}
