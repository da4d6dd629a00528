//! HBONE: HTTP/2 `CONNECT` tunnels over mutual TLS (port 15008).
//!
//! The wire format is what Istio's ztunnel speaks: a TLS 1.3 connection with
//! both sides presenting SPIFFE certificates, HTTP/2 on top, and one plain
//! RFC 7540 `CONNECT` stream per tunneled TCP connection. `:authority` is the
//! target `ip:port`; a `200` response opens the tunnel, after which the
//! stream's DATA frames carry the TCP bytes both ways and END_STREAM is a
//! half-close.
//!
//! - [`client::Pool`] opens and pools connections per
//!   (source identity, HBONE address, expected destination identity).
//! - [`server::Server`] accepts connections and hands each valid `CONNECT`
//!   to a [`server::Handler`] in its own task.
//! - [`H2Stream`] is one tunnel as `AsyncRead + AsyncWrite`.
#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod server;
pub mod stream;
pub mod transport;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use client::{Connector, Pool, PoolConfig, PoolKey};
pub use error::Error;
pub use server::{
    Handler, InboundRequest, PeerExpiry, Responder, Server, ServerConfig, ServerStats, Shutdown,
    ShutdownSignal, TlsFailureHook,
};
pub use stream::{H2Recv, H2Send, H2Stream};
pub use transport::{ReadAhead, TLS_WRITE_BUFFER};

use std::future::Future;
use std::pin::Pin;

/// The well-known HBONE port, as in Istio.
pub const HBONE_PORT: u16 = 15008;

/// A boxed, sendable future (the crate avoids a dependency on `futures`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// HTTP/2 settings shared by the client and the server.
///
/// The defaults are ztunnel's: a tunnel is a bulk byte pipe, so the spec's
/// 64 KiB windows would cap a single stream at roughly 64 KiB per round trip.
/// 4 MiB per stream lets one tunnel fill a fast link at millisecond RTTs;
/// 16 MiB per connection lets a few streams do so at once without one stalled
/// reader starving the others forever. 1 MiB frames cut per-frame overhead
/// for bulk transfers (rustls records are 16 KiB anyway, so larger frames
/// mostly save h2 bookkeeping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Settings {
    /// SETTINGS_INITIAL_WINDOW_SIZE: per-stream receive window.
    pub stream_window: u32,
    /// Connection-level receive window.
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE we accept.
    pub max_frame_size: u32,
    /// Bytes h2 buffers per stream before `poll_write` applies backpressure.
    pub max_send_buffer: usize,
}

impl Default for H2Settings {
    fn default() -> Self {
        Self {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 1024 * 1024,
            max_send_buffer: 4 * 1024 * 1024,
        }
    }
}
