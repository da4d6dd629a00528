//! TLS handshake failure counters.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Which side of the handshake rejected the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We are the server and rejected the client's certificate.
    Inbound,
    /// We are the client and rejected the server's certificate.
    Outbound,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Why a peer certificate was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The chain does not lead to the mesh root.
    UnknownCa,
    /// The leaf (or an issuer) has expired.
    Expired,
    /// The leaf (or an issuer) is not valid yet.
    NotYetValid,
    /// The leaf has no URI SAN.
    MissingSpiffeId,
    /// The leaf's URI SAN is not a single well-formed SPIFFE id.
    MalformedSpiffeId,
    /// The SPIFFE id belongs to another trust domain.
    ForeignTrustDomain,
    /// The SPIFFE id is not the one the client expected.
    IdentityMismatch,
    /// The peer aborted the handshake with an alert: it rejected our certificate
    /// (e.g. it trusts another CA).
    PeerAlert,
    /// The peer presented no certificate at all (a client without mTLS).
    NoCertificate,
    /// The peer's certificate passed, but its handshake signature does not
    /// verify with the certificate's key: it does not hold that key (a
    /// copied certificate).
    BadSignature,
    /// Anything else (not TLS, timeout, bad encoding, bad signature algorithm, ...).
    Other,
}

impl FailureReason {
    /// Every reason, for dashboards and tests.
    pub const ALL: [FailureReason; 11] = [
        FailureReason::UnknownCa,
        FailureReason::Expired,
        FailureReason::NotYetValid,
        FailureReason::MissingSpiffeId,
        FailureReason::MalformedSpiffeId,
        FailureReason::ForeignTrustDomain,
        FailureReason::IdentityMismatch,
        FailureReason::PeerAlert,
        FailureReason::NoCertificate,
        FailureReason::BadSignature,
        FailureReason::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::UnknownCa => "unknown_ca",
            FailureReason::Expired => "expired",
            FailureReason::NotYetValid => "not_yet_valid",
            FailureReason::MissingSpiffeId => "missing_spiffe_id",
            FailureReason::MalformedSpiffeId => "malformed_spiffe_id",
            FailureReason::ForeignTrustDomain => "foreign_trust_domain",
            FailureReason::IdentityMismatch => "identity_mismatch",
            FailureReason::PeerAlert => "peer_alert",
            FailureReason::NoCertificate => "no_certificate",
            FailureReason::BadSignature => "bad_signature",
            FailureReason::Other => "other",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for FailureReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Labels of `weir_tls_handshake_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabels {
    /// `inbound` or `outbound`.
    pub direction: Direction,
    /// One of [`FailureReason::as_str`].
    pub reason: FailureReason,
}

/// TLS metrics. Cheap to clone; clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct TlsMetrics {
    failures: Family<FailureLabels, Counter>,
}

impl TlsMetrics {
    /// Creates the metrics and registers them in `registry` as
    /// `weir_tls_handshake_failures_total{direction, reason}`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "weir_tls_handshake_failures",
            "TLS handshakes refused because the peer certificate failed mesh verification",
            metrics.failures.clone(),
        );
        metrics
    }

    /// Counts one refused handshake. The verifiers of this crate call it;
    /// callers may count failures the verifiers never see as [`FailureReason::Other`].
    pub fn record(&self, direction: Direction, reason: FailureReason) {
        self.failures
            .get_or_create(&FailureLabels { direction, reason })
            .inc();
    }

    /// The current count for one label pair (for tests and the admin endpoint).
    pub fn failures(&self, direction: Direction, reason: FailureReason) -> u64 {
        self.failures
            .get_or_create(&FailureLabels { direction, reason })
            .get()
    }

    /// The total over all reasons for one direction.
    pub fn total_failures(&self, direction: Direction) -> u64 {
        FailureReason::ALL
            .iter()
            .map(|r| self.failures(direction, *r))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_istio_style_name_and_labels() {
        let mut registry = Registry::default();
        let metrics = TlsMetrics::register(&mut registry);
        metrics.record(Direction::Inbound, FailureReason::UnknownCa);
        metrics.record(Direction::Inbound, FailureReason::UnknownCa);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(
                r#"weir_tls_handshake_failures_total{direction="inbound",reason="unknown_ca"} 2"#
            ),
            "{out}"
        );
        assert_eq!(metrics.total_failures(Direction::Inbound), 2);
        assert_eq!(metrics.total_failures(Direction::Outbound), 0);
    }
}
