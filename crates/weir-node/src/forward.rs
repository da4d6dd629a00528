//! Moving bytes between the two sides of a proxied connection.
//!
//! Data moves as whole [`Bytes`] chunks: a TCP read allocates a chunk only once
//! the socket is readable, and an HBONE stream hands out the DATA frames h2
//! received. So an idle connection holds no buffer, which keeps the memory of
//! thousands of idle Kafka connections small, and no chunk is copied between
//! the two sides. A half-close on one side is passed on; an error on either
//! side ends both.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;
use weir_hbone::{H2Recv, H2Send, H2Stream};

/// TCP read sizes adapt per direction: a read that fills its buffer doubles
/// the next one (bulk transfers such as Kafka produce batches then move in
/// few large chunks: fewer syscalls, HTTP/2 frames and task wake-ups per
/// byte), a read that fills less than a quarter halves it, so chatty
/// request/response traffic keeps small buffers.
const MIN_CHUNK: usize = 16 * 1024;
const MAX_CHUNK: usize = 256 * 1024;

/// One side of a proxied connection.
pub enum Side {
    Tcp(TcpStream),
    H2(H2Send, H2Recv),
}

impl From<TcpStream> for Side {
    fn from(s: TcpStream) -> Self {
        Side::Tcp(s)
    }
}

impl From<H2Stream> for Side {
    fn from(s: H2Stream) -> Self {
        let (w, r) = s.into_parts();
        Side::H2(w, r)
    }
}

impl Side {
    /// The next chunk read from this side (at most `size` bytes from TCP);
    /// `None` at end of stream.
    fn poll_read(&mut self, cx: &mut Context<'_>, size: usize) -> Poll<io::Result<Option<Bytes>>> {
        match self {
            Side::Tcp(s) => {
                ready!(s.poll_read_ready(cx))?;
                // Allocated only now that there is data: idle connections hold no buffer.
                let mut buf = BytesMut::with_capacity(size);
                // Through `AsyncRead` rather than `try_read_buf`: a read that
                // fills less than the buffer tells tokio the socket is drained,
                // so the next poll waits for epoll instead of costing a
                // `recvfrom` that returns EAGAIN (one syscall less per
                // request/response pass, on the latency path).
                match ready!(poll_read_buf(Pin::new(s), cx, &mut buf))? {
                    0 => Poll::Ready(Ok(None)),
                    _ => Poll::Ready(Ok(Some(buf.freeze()))),
                }
            }
            Side::H2(_, r) => r.poll_chunk(cx),
        }
    }

    /// Writes all of `data` to this side, advancing it.
    fn poll_write(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>> {
        match self {
            Side::Tcp(s) => {
                // `AsyncWrite` likewise takes a short write as "buffer full".
                while !data.is_empty() {
                    match ready!(Pin::new(&mut *s).poll_write(cx, data))? {
                        0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        n => data.advance(n),
                    }
                }
                Poll::Ready(Ok(()))
            }
            Side::H2(w, _) => w.poll_send(cx, data),
        }
    }

    /// `n` bytes read from this side were written on: for HBONE, return
    /// their flow-control window so the peer may send more (backpressure).
    fn consumed(&mut self, n: usize) {
        if let Side::H2(_, r) = self {
            r.release(n);
        }
    }

    /// Half-close the write direction.
    fn finish(&mut self) -> io::Result<()> {
        match self {
            Side::Tcp(s) => match socket2::SockRef::from(&*s).shutdown(std::net::Shutdown::Write) {
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                r => r,
            },
            Side::H2(w, _) => w.finish(),
        }
    }

    /// Ends this side abruptly: RST_STREAM for a tunnel, a TCP reset (not a
    /// clean FIN) for a socket, so the peer cannot mistake a failed
    /// connection for one that finished.
    fn abort(&mut self) {
        match self {
            Side::H2(w, _) => w.reset(),
            Side::Tcp(s) => {
                let _ = socket2::SockRef::from(&*s).set_linger(Some(std::time::Duration::ZERO));
            }
        }
    }
}

/// One direction: at most one chunk in flight, nothing else.
struct Direction {
    pending: Option<(Bytes, usize)>,
    total: u64,
    /// Size of the next TCP read (see [`MIN_CHUNK`]).
    chunk: u32,
    done: bool,
}

impl Default for Direction {
    fn default() -> Self {
        Self {
            pending: None,
            total: 0,
            chunk: MIN_CHUNK as u32,
            done: false,
        }
    }
}

impl Direction {
    /// Moves chunks from `from` to `to` until `from` ends (then half-closes
    /// `to`) or an error.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Side,
        to: &mut Side,
        (counter, seen): (&Counter, Option<&AtomicU64>),
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some((data, len)) = &mut self.pending {
                ready!(to.poll_write(cx, data))?;
                let n = *len;
                self.pending = None;
                from.consumed(n);
                counter.inc_by(n as u64);
                if let Some(seen) = seen {
                    seen.fetch_add(n as u64, Ordering::Relaxed);
                }
                self.total += n as u64;
            }
            let size = self.chunk as usize;
            match ready!(from.poll_read(cx, size))? {
                Some(data) => {
                    let n = data.len();
                    if n >= size {
                        self.chunk = (size * 2).min(MAX_CHUNK) as u32;
                    } else if n < size / 4 {
                        self.chunk = (size / 2).max(MIN_CHUNK) as u32;
                    }
                    self.pending = Some((data, n));
                }
                None => {
                    self.done = true;
                    return Poll::Ready(to.finish());
                }
            }
        }
    }
}

/// What a finished connection moved, and how it ended.
#[derive(Debug, Default)]
pub struct Transfer {
    /// Client → server bytes.
    pub received: u64,
    /// Server → client bytes.
    pub sent: u64,
    pub error: Option<io::Error>,
}

impl Transfer {
    /// Whether the connection failed, for `istio_tcp_connections_failed_total`:
    /// an error other than a peer's reset, or a write to a side that had
    /// gone, which end connections as a close does (ztunnel's copy ignores
    /// the same kinds). The access log shows every error.
    pub fn failed(&self) -> bool {
        self.error.as_ref().is_some_and(|e| {
            !matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::UnexpectedEof
            )
        })
    }
}

/// What a forwarding has moved so far, readable while it runs and after
/// it was dropped (a connection closed by a policy change still logs its
/// bytes).
#[derive(Debug, Default)]
pub struct Seen {
    /// Client → server bytes.
    pub received: AtomicU64,
    /// Server → client bytes.
    pub sent: AtomicU64,
}

impl Seen {
    /// The totals so far, as a transfer that has not ended with an error.
    pub fn transfer(&self) -> Transfer {
        Transfer {
            received: self.received.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            error: None,
        }
    }
}

/// Forwards between `client` and `server` until both directions end or
/// either fails. Both directions are polled by this one future, which holds
/// the two sides and at most one chunk per direction.
/// (Not `async fn`s themselves: the sides are converted first, so the
/// future holds them once; a wrapping future would hold them twice, and
/// there is one such future per proxied connection.)
pub fn forward<'a>(
    client: impl Into<Side> + 'a,
    server: impl Into<Side> + 'a,
    received: &'a Counter,
    sent: &'a Counter,
) -> impl std::future::Future<Output = Transfer> + 'a {
    forward_inner(client, server, received, sent, NotSeen)
}

/// [`forward`], also adding what moves to `seen` as it moves.
pub fn forward_seen<'a>(
    client: impl Into<Side> + 'a,
    server: impl Into<Side> + 'a,
    received: &'a Counter,
    sent: &'a Counter,
    seen: &'a Seen,
) -> impl std::future::Future<Output = Transfer> + 'a {
    forward_inner(client, server, received, sent, seen)
}

/// Where a forwarding also reports what it moves: nowhere (a zero-sized
/// type, so plain [`forward`] futures stay as small as they were), or a
/// [`Seen`].
trait Observe: Copy + Send + Sync {
    fn received(&self) -> Option<&AtomicU64>;
    fn sent(&self) -> Option<&AtomicU64>;
}

#[derive(Clone, Copy)]
struct NotSeen;

impl Observe for NotSeen {
    fn received(&self) -> Option<&AtomicU64> {
        None
    }
    fn sent(&self) -> Option<&AtomicU64> {
        None
    }
}

impl Observe for &Seen {
    fn received(&self) -> Option<&AtomicU64> {
        Some(&self.received)
    }
    fn sent(&self) -> Option<&AtomicU64> {
        Some(&self.sent)
    }
}

async fn forward_inner(
    client: impl Into<Side>,
    server: impl Into<Side>,
    received: &Counter,
    sent: &Counter,
    seen: impl Observe,
) -> Transfer {
    let (mut c, mut s) = (client.into(), server.into());
    let (mut up, mut down) = (Direction::default(), Direction::default());
    let result = std::future::poll_fn(|cx| {
        let a = up.poll(cx, &mut c, &mut s, (received, seen.received()));
        if let Poll::Ready(Err(e)) = a {
            return Poll::Ready(Err(e));
        }
        let b = down.poll(cx, &mut s, &mut c, (sent, seen.sent()));
        match (a, b) {
            (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await;
    let error = result.err();
    if error.is_some() {
        // Tell both peers the connection failed rather than ending it cleanly.
        c.abort();
        s.abort();
    }
    Transfer {
        received: up.total,
        sent: down.total,
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

    /// A client that resets its connection ends it, as ztunnel counts it;
    /// it is not a failed connection. A real reset through forward().
    #[tokio::test]
    async fn a_peer_reset_is_an_end_not_a_failure() {
        let (client, proxy_c) = pair().await;
        let (proxy_s, _server) = pair().await;
        let (received, sent) = (Counter::default(), Counter::default());
        let fwd = tokio::spawn(async move { forward(proxy_c, proxy_s, &received, &sent).await });
        socket2::SockRef::from(&client)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(client);
        let t = tokio::time::timeout(std::time::Duration::from_secs(10), fwd)
            .await
            .expect("forward ends after a reset")
            .unwrap();
        assert!(
            t.error
                .as_ref()
                .is_some_and(|e| e.kind() == io::ErrorKind::ConnectionReset),
            "{:?}",
            t.error
        );
        assert!(!t.failed());
        let other = Transfer {
            received: 0,
            sent: 0,
            error: Some(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
        };
        assert!(other.failed());
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
    async fn forward_future_is_small() {
        let (a, b) = pair().await;
        let c = Counter::default();
        let f = forward(a, b, &c, &c);
        let n = std::mem::size_of_val(&f);
        eprintln!("forward future: {n} bytes");
        assert!(n <= 512, "forward future grew to {n} bytes");
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
        // The server side sees the connection reset too, not a clean end.
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("forward must end the other side");
        assert_eq!(
            r.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "an aborted connection must be passed on as a reset"
        );
        let t = tokio::time::timeout(std::time::Duration::from_secs(5), fwd)
            .await
            .unwrap()
            .unwrap();
        assert!(t.error.is_some());
    }
}
