//! The CA service: signs a caller's CSR only for identities that are its own.
//!
//! A node may have an identity signed when a Workload on that node
//! (`spec.node`) runs in the identity's namespace with its service account,
//! in the config being served at that moment: istiod's check that the pod
//! asking really runs on the asking node. A gateway may have exactly the
//! identities registered for it. The control plane's own identity is never
//! signed for anyone. Everything else is refused with
//! PERMISSION_DENIED, logged as a structured warning and counted in
//! `weir_control_csr_total{result="denied"}`.

use std::sync::Arc;
use std::time::Duration;

use weir_core::SpiffeId;
use weir_identity::{certificate_pem, CertificateAuthority};

use crate::auth::Caller;
use crate::distributor::Distributor;
use crate::metrics::{csr, ControlMetrics};
use crate::proto::{CreateCertificateRequest, CreateCertificateResponse};

/// Why a CSR was not signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The identity is not the caller's.
    #[error("{0}")]
    Denied(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The control plane failed.
    #[error("{0}")]
    Internal(String),
}

impl Refusal {
    /// The `weir_control_csr_total` result label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Refusal::Denied(_) => csr::DENIED,
            Refusal::Invalid(_) => csr::INVALID,
            Refusal::Internal(_) => csr::ERROR,
        }
    }
}

/// Signs CSRs for authenticated callers.
#[derive(Debug, Clone)]
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    max_ttl: Duration,
    distributor: Arc<Distributor>,
    metrics: ControlMetrics,
}

impl CaService {
    /// Signs with `ca`, certificates valid for at most `max_ttl`, checking
    /// identities against the config `distributor` serves.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        max_ttl: Duration,
        distributor: Arc<Distributor>,
        metrics: ControlMetrics,
    ) -> Self {
        Self {
            ca,
            max_ttl,
            distributor,
            metrics,
        }
    }

    /// Checks that `caller` may have `id`.
    pub fn authorize(&self, caller: &Caller, id: &SpiffeId) -> Result<(), Refusal> {
        if id.trust_domain() != self.ca.trust_domain() {
            return Err(Refusal::Denied(format!(
                "{id} is not in this mesh's trust domain {}",
                self.ca.trust_domain()
            )));
        }
        // Node proxies and gateways accept the control plane by this SPIFFE
        // id alone: signed for a workload, it would let that workload's node
        // impersonate the control plane to every other node.
        let settings = self.distributor.settings();
        if id.namespace() == settings.root_namespace
            && id.service_account() == crate::CONTROL_PLANE_SERVICE_ACCOUNT
        {
            return Err(Refusal::Denied(format!(
                "{id} is the control plane's own identity (node proxies and gateways trust the control plane by it); it is never signed for a node or gateway"
            )));
        }
        match caller {
            Caller::Node { name } => {
                if self
                    .distributor
                    .has_identity_on_node(name, id.namespace(), id.service_account())
                {
                    Ok(())
                } else {
                    Err(Refusal::Denied(format!(
                        "no Workload on node {name} runs as namespace {} service account {}; a node may only have its own workloads' identities signed",
                        id.namespace(),
                        id.service_account()
                    )))
                }
            }
            Caller::Gateway { name, identities } => {
                if identities.contains(id) {
                    Ok(())
                } else {
                    Err(Refusal::Denied(format!(
                        "{id} is not an identity of gateway {name} (gateways.{name}.identities in --node-tokens)"
                    )))
                }
            }
        }
    }

    /// Authorizes and signs; logs and counts every outcome.
    pub fn create_certificate(
        &self,
        caller: &Caller,
        request: &CreateCertificateRequest,
    ) -> Result<CreateCertificateResponse, Refusal> {
        let result = self.sign(caller, request);
        match &result {
            Ok(_) => {
                self.metrics.csr(csr::SIGNED);
                tracing::info!(node = caller.name(), identity = %request.identity, "signed workload certificate");
            }
            Err(refusal) => {
                self.metrics.csr(refusal.metric_label());
                tracing::warn!(
                    node = caller.name(),
                    identity = ?request.identity,
                    result = refusal.metric_label(),
                    reason = %refusal,
                    "certificate signing request refused"
                );
            }
        }
        result
    }

    fn sign(
        &self,
        caller: &Caller,
        request: &CreateCertificateRequest,
    ) -> Result<CreateCertificateResponse, Refusal> {
        let id: SpiffeId = request
            .identity
            .parse()
            .map_err(|e| Refusal::Invalid(format!("identity {:?}: {e}", request.identity)))?;
        self.authorize(caller, &id)?;
        let ttl = u64::try_from(request.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .map_or(self.max_ttl, |d| d.min(self.max_ttl));
        let signed = self
            .ca
            .sign_csr(&request.csr, &id, ttl)
            .map_err(|e| match e {
                weir_identity::Error::InvalidCsr { .. }
                | weir_identity::Error::CsrIdentityMismatch { .. } => {
                    Refusal::Invalid(e.to_string())
                }
                other => Refusal::Internal(other.to_string()),
            })?;
        Ok(CreateCertificateResponse {
            cert_chain: vec![
                certificate_pem(&signed.leaf),
                self.ca.root_cert_pem().to_owned(),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
    use weir_core::config::SourceFile;
    use weir_core::{MeshSettings, TrustDomain};

    use super::*;
    use crate::catalog::Catalog;

    const CONFIG: &str = "apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: apps}
spec: {serviceAccount: client, address: 10.0.0.1, node: node-a}
---
apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {name: server, namespace: data}
spec: {serviceAccount: server, address: 10.0.0.2, node: node-b}
---
apiVersion: weir.dev/v1alpha1
kind: Workload
metadata: {name: impostor, namespace: istio-system}
spec: {serviceAccount: weir-control, address: 10.0.0.3, node: node-a}
";

    fn service() -> (CaService, String) {
        let catalog = Catalog::load(
            &[SourceFile::new("w.yaml", CONFIG)],
            MeshSettings::default(),
        )
        .unwrap();
        let d = Arc::new(Distributor::new(catalog, "cp"));
        let ca = Arc::new(CertificateAuthority::generate(TrustDomain::default()).unwrap());
        let mut registry = Registry::default();
        let metrics = ControlMetrics::register(&mut registry);
        let svc = CaService::new(ca, Duration::from_secs(3600), d, metrics);
        let key = rcgen_key_csr();
        (svc, key)
    }

    fn rcgen_key_csr() -> String {
        // Any P-256 CSR without SAN; the identity comes from the request.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    }

    fn request(csr: &str, id: &str) -> CreateCertificateRequest {
        CreateCertificateRequest {
            csr: csr.to_owned(),
            validity_duration: 0,
            identity: id.to_owned(),
        }
    }

    fn node(name: &str) -> Caller {
        Caller::Node { name: name.into() }
    }

    #[test]
    fn a_node_gets_only_its_own_workloads_identities() {
        let (svc, csr) = service();
        let own = "spiffe://cluster.local/ns/apps/sa/client";
        let response = svc
            .create_certificate(&node("node-a"), &request(&csr, own))
            .unwrap();
        assert_eq!(response.cert_chain.len(), 2);
        assert!(response.cert_chain[0].starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(response.cert_chain[1], svc.ca.root_cert_pem());

        // node-b's workload, asked by node-a: refused.
        let other = "spiffe://cluster.local/ns/data/sa/server";
        let err = svc
            .create_certificate(&node("node-a"), &request(&csr, other))
            .unwrap_err();
        assert!(matches!(err, Refusal::Denied(_)), "{err}");
        assert!(err.to_string().contains("node node-a"), "{err}");
        // An unknown node has no identities at all.
        assert!(matches!(
            svc.create_certificate(&node("node-z"), &request(&csr, own)),
            Err(Refusal::Denied(_))
        ));
        // Right namespace, wrong service account.
        assert!(matches!(
            svc.create_certificate(
                &node("node-a"),
                &request(&csr, "spiffe://cluster.local/ns/apps/sa/admin")
            ),
            Err(Refusal::Denied(_))
        ));
        // Another trust domain.
        assert!(matches!(
            svc.create_certificate(
                &node("node-a"),
                &request(&csr, "spiffe://other.td/ns/apps/sa/client")
            ),
            Err(Refusal::Denied(_))
        ));
        // Malformed identity and CSR.
        assert!(matches!(
            svc.create_certificate(&node("node-a"), &request(&csr, "apps/client")),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(
            svc.create_certificate(&node("node-a"), &request("junk", own)),
            Err(Refusal::Invalid(_))
        ));
    }

    #[test]
    fn the_control_planes_identity_is_never_signed() {
        let (svc, csr) = service();
        let control = "spiffe://cluster.local/ns/istio-system/sa/weir-control";
        // A Workload on node-a runs as it: still refused.
        let err = svc
            .create_certificate(&node("node-a"), &request(&csr, control))
            .unwrap_err();
        assert!(matches!(err, Refusal::Denied(_)), "{err}");
        assert!(
            err.to_string().contains("control plane's own identity"),
            "{err}"
        );
        // Registered for a gateway: refused too.
        let gw = Caller::Gateway {
            name: "ingress".into(),
            identities: vec![control.parse().unwrap()],
        };
        assert!(matches!(
            svc.create_certificate(&gw, &request(&csr, control)),
            Err(Refusal::Denied(_))
        ));
    }

    #[test]
    fn gateways_get_their_registered_identities() {
        let (svc, csr) = service();
        let gw_id: SpiffeId = "spiffe://cluster.local/ns/istio-system/sa/weir-gateway"
            .parse()
            .unwrap();
        let gw = Caller::Gateway {
            name: "ingress".into(),
            identities: vec![gw_id.clone()],
        };
        svc.create_certificate(&gw, &request(&csr, &gw_id.to_string()))
            .unwrap();
        assert!(matches!(
            svc.create_certificate(
                &gw,
                &request(&csr, "spiffe://cluster.local/ns/apps/sa/client")
            ),
            Err(Refusal::Denied(_))
        ));
    }

    #[test]
    fn requested_validity_is_capped() {
        use rustls_pki_types::pem::PemObject;
        let (svc, csr) = service();
        let mut req = request(&csr, "spiffe://cluster.local/ns/apps/sa/client");
        req.validity_duration = 10 * 24 * 3600;
        let chain = svc.create_certificate(&node("node-a"), &req).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(chain.cert_chain[0].as_bytes())
            .unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        let validity = x509.validity();
        let life = validity.not_after.timestamp() - validity.not_before.timestamp();
        // One hour, plus the clock-skew backdating.
        assert!((3600..=3600 + 60).contains(&life), "{life}");
    }
}
