//! Moving bytes between the two sides of a proxied connection.
//!
//! Data moves as whole [`Bytes`] chunks: a TCP read allocates a chunk only once
//! the socket is readable, and an HBONE stream hands out the DATA frames h2
//! received. So an idle connection holds no buffer, which keeps the memory of
//! thousands of idle Kafka connections small, and no chunk is copied between
//! the two sides. A half-close on one side is passed on; an error on either
//! side ends both.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use weir_hbone::{H2Recv, H2Send, H2Stream};

/// Size of a TCP read: large enough for bulk transfers (two TLS records),
/// small enough that a slow peer doesn't pin much memory.
const CHUNK: usize = 32 * 1024;

pub(crate) enum Rx {
    Tcp(OwnedReadHalf),
    H2(H2Recv),
}

pub(crate) enum Tx {
    Tcp(OwnedWriteHalf),
    H2(H2Send),
}

/// One side of a connection, split.
pub(crate) struct Side {
    rx: Rx,
    tx: Tx,
}

impl From<TcpStream> for Side {
    fn from(s: TcpStream) -> Self {
        let (r, w) = s.into_split();
        Side {
            rx: Rx::Tcp(r),
            tx: Tx::Tcp(w),
        }
    }
}

impl From<H2Stream> for Side {
    fn from(s: H2Stream) -> Self {
        let (w, r) = s.into_parts();
        Side {
            rx: Rx::H2(r),
            tx: Tx::H2(w),
        }
    }
}

impl Rx {
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        match self {
            Rx::Tcp(r) => loop {
                r.readable().await?;
                let mut buf = BytesMut::with_capacity(CHUNK);
                match r.try_read_buf(&mut buf) {
                    Ok(0) => return Ok(None),
                    Ok(_) => return Ok(Some(buf.freeze())),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            },
            Rx::H2(r) => r.chunk().await,
        }
    }

    /// The chunk was written on: return its flow-control window.
    fn written(&mut self, n: usize) {
        if let Rx::H2(r) = self {
            r.release(n);
        }
    }
}

impl Tx {
    async fn send(&mut self, b: Bytes) -> io::Result<()> {
        match self {
            Tx::Tcp(w) => w.write_all(&b).await,
            Tx::H2(w) => w.send(b).await,
        }
    }

    async fn finish(&mut self) -> io::Result<()> {
        match self {
            Tx::Tcp(w) => w.shutdown().await,
            Tx::H2(w) => w.finish(),
        }
    }

    fn abort(&mut self) {
        if let Tx::H2(w) = self {
            w.reset();
        }
    }
}

async fn pump(rx: &mut Rx, tx: &mut Tx, counter: &Counter, total: &AtomicU64) -> io::Result<()> {
    while let Some(b) = rx.next().await? {
        let n = b.len();
        tx.send(b).await?;
        rx.written(n);
        counter.inc_by(n as u64);
        total.fetch_add(n as u64, Ordering::Relaxed);
    }
    tx.finish().await
}

/// What a finished connection moved, and how it ended.
#[derive(Debug, Default)]
pub(crate) struct Transfer {
    /// Client → server bytes.
    pub received: u64,
    /// Server → client bytes.
    pub sent: u64,
    pub error: Option<io::Error>,
}

/// Forwards between `client` and `server` until both directions end or
/// either fails.
pub(crate) async fn forward(
    client: impl Into<Side>,
    server: impl Into<Side>,
    received: &Counter,
    sent: &Counter,
) -> Transfer {
    let (mut c, mut s) = (client.into(), server.into());
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let result = tokio::try_join!(
        pump(&mut c.rx, &mut s.tx, received, &up),
        pump(&mut s.rx, &mut c.tx, sent, &down),
    );
    let error = result.err();
    if error.is_some() {
        // Tell the HBONE peer the stream failed rather than ending it cleanly.
        c.tx.abort();
        s.tx.abort();
    }
    Transfer {
        received: up.into_inner(),
        sent: down.into_inner(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// client <-> [proxy_c | forward | proxy_s] <-> server: bytes arrive
    /// intact both ways, half-closes pass through, counters match.
    #[tokio::test]
    async fn forwards_both_ways_with_half_close_and_counts() {
        let (mut client, proxy_c) = pair().await;
        let (proxy_s, mut server) = pair().await;
        let (received, sent) = (Counter::default(), Counter::default());
        let (r2, s2) = (received.clone(), sent.clone());
        let fwd = tokio::spawn(async move { forward(proxy_c, proxy_s, &r2, &s2).await });

        let up: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let up2 = up.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&up2).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, up, "client->server bytes");
        server.write_all(b"reply after half-close").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply after half-close");
        let t = fwd.await.unwrap();
        assert!(t.error.is_none(), "{:?}", t.error);
        assert_eq!(t.received, up.len() as u64);
        assert_eq!(t.sent, 22);
        assert_eq!(received.get(), up.len() as u64);
        assert_eq!(sent.get(), 22);
    }

    #[tokio::test]
    async fn a_reset_ends_both_directions() {
        let (client, proxy_c) = pair().await;
        let (proxy_s, mut server) = pair().await;
        let (r, s) = (Counter::default(), Counter::default());
        let fwd = tokio::spawn(async move { forward(proxy_c, proxy_s, &r, &s).await });
        socket2::SockRef::from(&client)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(client);
        let mut buf = [0u8; 16];
        // The server side sees the connection end rather than hanging forever.
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("forward must end the other side")
            .unwrap_or(0);
        assert_eq!(n, 0);
        let t = tokio::time::timeout(std::time::Duration::from_secs(5), fwd)
            .await
            .unwrap()
            .unwrap();
        assert!(t.error.is_some());
    }
}
