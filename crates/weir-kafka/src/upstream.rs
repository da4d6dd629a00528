//! How the gateway reaches brokers: a [`Connector`] opens a byte stream to a
//! broker's advertised (host, port). The gateway provides one that tunnels
//! over HBONE with its own identity to mesh workloads; [`TcpConnector`]
//! dials plain TCP (non-mesh brokers, tests).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A bidirectional byte stream to a broker or from a client.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

/// A boxed [`AsyncStream`].
pub type BoxStream = Box<dyn AsyncStream>;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens connections to brokers.
pub trait Connector: Send + Sync {
    /// Connects to the broker advertised as `host:port`.
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxStream>>;
}

/// Plain TCP, resolving host names with the system resolver.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    /// Limit for resolving and connecting to one address.
    pub connect_timeout: Duration,
}

impl Default for TcpConnector {
    fn default() -> Self {
        TcpConnector {
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let addrs =
                tokio::time::timeout(self.connect_timeout, tokio::net::lookup_host((host, port)))
                    .await
                    .map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("resolving {host} timed out"),
                        )
                    })??;
            let mut last = io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} resolved to no address"),
            );
            for addr in addrs {
                match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        return Ok(Box::new(s) as BoxStream);
                    }
                    Ok(Err(e)) => last = e,
                    Err(_) => {
                        last = io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("connecting to {addr} timed out"),
                        )
                    }
                }
            }
            Err(last)
        })
    }
}
