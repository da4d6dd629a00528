//! weir's cluster mode: Kubernetes as the source of truth (what istiod's
//! Kubernetes controllers are to Istio). kube-rs and k8s-openapi live in
//! this crate only: weir-node and weir-gateway do not depend on it, and in
//! the `weir` binary only `weir control` and `weir crds` call it.
//!
//! - [`workload`]: Pod → Workload (ambient enrollment by Istio's rule), a
//!   pure function; [`service`]: Kubernetes Service → weir Service.
//! - [`document`]: every cluster object as the YAML document weir's strict
//!   loader reads, one source per object, and a load that leaves invalid
//!   objects out (reported with `weir check`'s message) and serves the rest.
//! - [`source`]: [`KubeSource`] watches Namespaces, Pods, Services, the
//!   Istio kinds and weir's kinds, and produces whole config [`Snapshot`]s.
//! - [`token_review`]: node proxies' and gateways' ServiceAccount tokens,
//!   checked with TokenReview: a node proxy is the node its token is bound to.
//! - [`control`]: both behind weir-control's seams ([`KubeConfigSource`],
//!   [`KubeAuthenticator`]).
//! - [`crd`]: the CustomResourceDefinitions of weir's kinds, generated from
//!   the loader's types (`weir crds`).
//!
//! See docs/kubernetes.md.
#![forbid(unsafe_code)]

pub mod control;
pub mod crd;
pub mod document;
pub mod metrics;
pub mod service;
pub mod source;
pub mod token_review;
pub mod workload;

pub use control::{KubeAuthenticator, KubeConfigSource};
pub use metrics::KubeMetrics;
pub use service::{service_from_kube, ServiceSkip};
pub use source::{CustomKind, KubeSource, KubeSourceOptions, Snapshot, ISTIO_KINDS, WEIR_KINDS};
pub use token_review::{
    ClusterAuthenticator, ClusterCaller, ReviewedToken, ServiceAccountRef, TokenReviewError,
    TokenReviewer,
};
pub use workload::{workload_from_pod, PodSkip};
