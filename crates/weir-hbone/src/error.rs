//! Errors of the HBONE client and server, worded for the operator.

use std::io;
use std::net::SocketAddr;

use http::StatusCode;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection to {addr} timed out; maybe a NetworkPolicy is blocking HBONE port 15008")]
    ConnectTimeout { addr: SocketAddr },

    #[error(
        "could not connect to {addr}: {source}; is the destination's node proxy running \
         and does a NetworkPolicy allow HBONE port 15008?"
    )]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error(
        "TLS handshake with {addr} failed: {source}; check that both sides trust the same \
         mesh root and that the peer presents the expected SPIFFE identity"
    )]
    TlsHandshake {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error("HTTP/2 handshake with {addr} failed: {source}; is the peer an HBONE endpoint?")]
    Http2Handshake {
        addr: SocketAddr,
        #[source]
        source: h2::Error,
    },

    #[error("HTTP/2 error on the HBONE connection to {addr}: {source}")]
    Http2 {
        addr: SocketAddr,
        #[source]
        source: h2::Error,
    },

    #[error("the destination proxy at {addr} did not answer the CONNECT for {target} in time")]
    ResponseTimeout {
        addr: SocketAddr,
        target: SocketAddr,
    },

    #[error(
        "the destination proxy at {addr} answered {} for {target}: {}",
        status.as_u16(),
        explain_status(*status)
    )]
    Rejected {
        addr: SocketAddr,
        target: SocketAddr,
        status: StatusCode,
    },

    #[error("TLS handshake with client {peer} failed: {source}")]
    ServerTlsHandshake {
        peer: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error("TLS handshake with client {peer} timed out")]
    ServerTlsTimeout { peer: SocketAddr },

    #[error("client {peer} finished TLS but sent no HTTP/2 preface and settings in time")]
    ServerHttp2Timeout { peer: SocketAddr },

    #[error("HTTP/2 error serving client {peer}: {source}")]
    ServerHttp2 {
        peer: SocketAddr,
        #[source]
        source: h2::Error,
    },

    #[error("could not answer the CONNECT request: {0}")]
    Respond(#[source] h2::Error),

    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

fn explain_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => {
            "it did not understand the CONNECT request (malformed target address?)"
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "denied by its authorization policy",
        StatusCode::SERVICE_UNAVAILABLE => "the target refused the connection or is unreachable",
        StatusCode::GATEWAY_TIMEOUT => "connecting to the target timed out",
        _ => "the tunnel was refused",
    }
}

impl Error {
    /// A short, stable label for counting failures in metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::ConnectTimeout { .. } => "connect_timeout",
            Error::Connect { .. } => "connect",
            Error::TlsHandshake { .. } => "tls_handshake",
            Error::Http2Handshake { .. } => "h2_handshake",
            Error::Http2 { .. } => "h2",
            Error::ResponseTimeout { .. } => "response_timeout",
            Error::Rejected { status, .. } => match *status {
                StatusCode::BAD_REQUEST => "rejected_bad_request",
                StatusCode::FORBIDDEN => "rejected_forbidden",
                StatusCode::SERVICE_UNAVAILABLE => "rejected_unavailable",
                _ => "rejected_other",
            },
            Error::ServerTlsHandshake { .. } => "server_tls_handshake",
            Error::ServerTlsTimeout { .. } => "server_tls_timeout",
            Error::ServerHttp2Timeout { .. } => "server_h2_timeout",
            Error::ServerHttp2 { .. } => "server_h2",
            Error::Respond(_) => "respond",
            Error::Io(_) => "io",
        }
    }

    /// The HTTP status the destination proxy answered, if it refused the tunnel.
    pub fn rejected_status(&self) -> Option<StatusCode> {
        match self {
            Error::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }
}
