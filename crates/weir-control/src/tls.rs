//! TLS of the control-plane endpoint: TLS 1.3, ALPN `h2`, the ring provider.
//!
//! The control plane serves a certificate from the mesh CA for its SPIFFE id
//! (`spiffe://<td>/ns/<root-namespace>/sa/weir-control`), plus the DNS names
//! and addresses of `--san`, renewed at half-life. Clients verify it against
//! the mesh root (`--control-ca`, the analogue of Istio's
//! `istio-ca-root-cert`) and require exactly that SPIFFE id; host names are
//! not checked, so any address of the control plane works. Callers are
//! authenticated by their token, not by a client certificate: a node has no
//! certificate before the control plane signs one.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;
use weir_core::{SpiffeId, TrustDomain};
use weir_identity::{
    certified_key, provider, CertSlot, CertificateAuthority, MeshServerVerifier, TlsMetrics,
    ALPN_H2,
};

use crate::Error;

static TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The control plane's serving certificate, renewed by [`ServingCert::spawn_renewal`].
#[derive(Debug)]
pub struct ServingCert {
    ca: Arc<CertificateAuthority>,
    id: SpiffeId,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    ttl: Duration,
    slot: Arc<CertSlot>,
    refresh_at: SystemTime,
}

impl ServingCert {
    /// Issues the first certificate for `id` with the `sans` (DNS names or
    /// IP addresses).
    pub fn issue(
        ca: Arc<CertificateAuthority>,
        id: SpiffeId,
        sans: &[String],
        ttl: Duration,
    ) -> Result<Self, Error> {
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for san in sans {
            match san.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => dns.push(san.clone()),
            }
        }
        let cert = ca.issue_with_names(&id, &dns, &ips, ttl)?;
        let refresh_at = cert.refresh_at();
        let slot = Arc::new(CertSlot::new(certified_key(cert.chain, cert.key)?));
        tracing::debug!(identity = %id, ?refresh_at, "issued the control plane's serving certificate");
        Ok(Self {
            ca,
            id,
            dns,
            ips,
            ttl,
            slot,
            refresh_at,
        })
    }

    /// The server config: TLS 1.3, ALPN h2, no client certificates.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, Error> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(TLS13)?
            .with_no_client_auth()
            .with_cert_resolver(self.slot.clone());
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    fn renew(&self) -> Result<SystemTime, Error> {
        let cert = self
            .ca
            .issue_with_names(&self.id, &self.dns, &self.ips, self.ttl)?;
        let refresh_at = cert.refresh_at();
        self.slot.replace(certified_key(cert.chain, cert.key)?);
        Ok(refresh_at)
    }

    /// Renews the certificate at half-life, forever (abort the handle to stop).
    pub fn spawn_renewal(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut refresh_at = self.refresh_at;
            loop {
                // Bounded sleeps: tokio timers are monotonic, certificates
                // follow the wall clock.
                let wait = refresh_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .clamp(Duration::from_millis(100), Duration::from_secs(300));
                tokio::time::sleep(wait).await;
                if SystemTime::now() < refresh_at {
                    continue;
                }
                match self.renew() {
                    Ok(at) => {
                        tracing::info!(identity = %self.id, "renewed the control plane's serving certificate");
                        refresh_at = at;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the control plane's serving certificate; retrying in 10s");
                        refresh_at = SystemTime::now() + Duration::from_secs(10);
                    }
                }
            }
        })
    }
}

/// The client config of node proxies and gateways: verifies the control
/// plane's certificate against `root` and requires `control_plane` as its
/// SPIFFE id.
pub fn client_config(
    root: &CertificateDer<'static>,
    trust_domain: TrustDomain,
    control_plane: SpiffeId,
) -> Result<Arc<ClientConfig>, Error> {
    let verifier = MeshServerVerifier::new(
        root,
        trust_domain,
        Some(control_plane),
        TlsMetrics::default(),
    )?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(TLS13)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}
