//! Why a Kafka session ended, as one error type whose [`SessionError::reason`]
//! is a short label for logs and the `weir_kafka_connections_closed_total`
//! metric.

use std::fmt;
use std::io;

/// Which end of a session a frame or an I/O error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The Kafka client connected to the gateway.
    Client,
    /// The broker the gateway connected to.
    Upstream,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream broker",
        })
    }
}

/// A fault in one frame's bytes: what could not be read and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {offset}")]
pub struct Malformed {
    /// What was being read (`"request header"`, `"topic name"`, ...).
    pub what: &'static str,
    /// Offset in the frame body (after the 4-byte size) where reading failed.
    pub offset: usize,
}

impl Malformed {
    pub(crate) fn new(what: &'static str, offset: usize) -> Self {
        Malformed { what, offset }
    }
}

/// Why a session (one client connection and its upstream connection) ended
/// abnormally. A clean close by either side is not an error.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A frame's declared size is over the configured limit.
    #[error("{side} sent a frame of {size} bytes, over the limit of {max} bytes (KafkaGateway spec.maxFrameBytes)")]
    FrameTooLarge { side: Side, size: usize, max: usize },
    /// The connection ended in the middle of a frame.
    #[error(
        "{side} closed the connection in the middle of a frame ({received} of {expected} bytes)"
    )]
    TruncatedFrame {
        side: Side,
        received: usize,
        expected: usize,
    },
    /// A frame with a negative size, or whose header or body does not parse.
    #[error("malformed frame from {side}: {detail}")]
    MalformedFrame { side: Side, detail: String },
    /// The upstream broker closed the connection while requests were waiting for responses.
    #[error("upstream broker closed the connection with {pending} request(s) unanswered")]
    UpstreamClosed { pending: usize },
    /// The client sent no request for the idle timeout.
    #[error("no request from the client for {0:?}; closing as a broker closes an idle connection (connections.max.idle.ms)")]
    Idle(std::time::Duration),
    /// No upstream broker could be connected to.
    #[error("cannot connect to upstream broker {addr}: {source}")]
    UpstreamUnreachable { addr: String, source: io::Error },
    /// The SNI named a broker id the gateway does not know, even after a metadata refresh.
    #[error("SNI {sni:?} names broker {id}, which the cluster's metadata does not list")]
    UnknownBroker { sni: String, id: i32 },
    /// The SNI matches neither the bootstrap host nor the broker host template.
    #[error("SNI {sni:?} is neither the bootstrap host nor a broker host of this Kafka gateway")]
    UnknownHost { sni: String },
    /// A request in a version the gateway cannot read where it must read it:
    /// an API it authorizes (with a policy in force), or one whose responses
    /// carry broker addresses, in a newer version (the gateway's ApiVersions
    /// never offers it).
    #[error("client sent {api} v{version}, a version the gateway cannot read to authorize it or rewrite broker addresses (it offers v{min}-v{max})")]
    UnsupportedVersion {
        api: &'static str,
        version: i16,
        min: i16,
        max: i16,
    },
    /// With an authorization policy in force, a request of an API the
    /// gateway cannot check (the gateway's ApiVersions never offers it).
    #[error("client sent {api} (API key {key}), which the gateway cannot authorize; with a KafkaAuthorizationPolicy in force only the APIs it checks are offered and forwarded")]
    UnauthorizableApi { api: &'static str, key: i16 },
    /// A response's correlation id is not the one of the oldest request in flight.
    #[error("upstream broker answered correlation id {got}, expected {expected}")]
    CorrelationMismatch { expected: i32, got: i32 },
    /// Kafka closes a connection whose acks=0 produce request had errors: the
    /// client has no response to read them from.
    #[error("acks=0 produce request to {topic:?} denied; closing the connection as a broker does")]
    DeniedWithoutResponse { topic: String },
    /// Reading from or writing to one side failed.
    #[error("{side} I/O error: {source}")]
    Io { side: Side, source: io::Error },
}

impl SessionError {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::FrameTooLarge { .. } => "frame_too_large",
            SessionError::TruncatedFrame { .. } => "truncated_frame",
            SessionError::MalformedFrame { side, .. } => match side {
                Side::Client => "malformed_frame",
                Side::Upstream => "malformed_response",
            },
            SessionError::UpstreamClosed { .. } => "upstream_closed",
            SessionError::UpstreamUnreachable { .. } => "upstream_unreachable",
            SessionError::Idle(_) => "idle_timeout",
            SessionError::UnknownBroker { .. } => "unknown_broker",
            SessionError::UnknownHost { .. } => "unknown_host",
            SessionError::UnsupportedVersion { .. } => "unsupported_version",
            SessionError::UnauthorizableApi { .. } => "unauthorizable_api",
            SessionError::CorrelationMismatch { .. } => "correlation_mismatch",
            SessionError::DeniedWithoutResponse { .. } => "denied_acks0",
            SessionError::Io { side, .. } => match side {
                Side::Client => "client_io",
                Side::Upstream => "upstream_io",
            },
        }
    }

    /// Whether the client's input caused this close (counted in
    /// `weir_kafka_connections_closed_total` with the reason).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            SessionError::FrameTooLarge {
                side: Side::Client,
                ..
            } | SessionError::TruncatedFrame {
                side: Side::Client,
                ..
            } | SessionError::MalformedFrame {
                side: Side::Client,
                ..
            } | SessionError::UnsupportedVersion { .. }
                | SessionError::UnauthorizableApi { .. }
                | SessionError::UnknownHost { .. }
                | SessionError::UnknownBroker { .. }
        )
    }

    pub(crate) fn malformed(side: Side, m: Malformed) -> Self {
        SessionError::MalformedFrame {
            side,
            detail: m.to_string(),
        }
    }
}
