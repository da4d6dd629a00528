//! How a TLS session meets its socket: large reads and large writes.
//!
//! rustls asks its transport for at most one TLS record at a time (its
//! deframer holds up to ~16 KiB), so a TLS stream read straight from a
//! socket costs one `recvfrom` per 16 KiB: on a bulk tunnel that was a
//! dozen syscalls, each taking the socket lock and possibly sending a
//! window update, for every 256 KiB the plaintext side moves in one.
//! [`ReadAhead`] sits between the socket and the TLS session and reads up
//! to [`READ_AHEAD`] bytes per syscall, handing them to rustls from memory.
//! The buffer exists only while it holds bytes (a read that finds nothing
//! gives it back), so an idle connection carries none.
//!
//! On the sending side rustls accepts plaintext only while its queue of
//! encrypted records is under a limit, 64 KiB by default, and tokio-rustls
//! writes that queue out after every accepted write: a 256 KiB chunk went
//! out in four or five `writev`s. Sessions that carry bulk data raise the
//! limit to [`TLS_WRITE_BUFFER`] after the handshake.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes asked of the socket per read.
pub const READ_AHEAD: usize = 256 * 1024;

/// The limit on a bulk TLS session's queue of encrypted records (rustls'
/// `set_buffer_limit`): as much as the plaintext side reads at once.
pub const TLS_WRITE_BUFFER: usize = 256 * 1024;

/// A transport that reads ahead in large chunks (see the module docs).
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    buf: BytesMut,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
        }
    }

    /// Wraps `inner`, yielding `prefix` before its bytes (e.g. a ClientHello
    /// that was peeked to route the connection).
    pub fn with_prefix(prefix: Bytes, inner: S) -> Self {
        Self {
            inner,
            buf: BytesMut::from(&prefix[..]),
        }
    }

    /// The transport.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Bytes read from the transport and not yet handed on.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            if out.remaining() >= READ_AHEAD {
                // The caller reads as much as we would: no copy.
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            this.buf.reserve(READ_AHEAD);
            let n =
                match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf) {
                    Poll::Ready(r) => r?,
                    Poll::Pending => {
                        // Nothing to read: an idle connection (or one that
                        // never sends, before its handshake) holds no buffer.
                        this.buf = BytesMut::new();
                        return Poll::Pending;
                    }
                };
            if n == 0 {
                this.buf = BytesMut::new();
                return Poll::Ready(Ok(()));
            }
        }
        let n = out.remaining().min(this.buf.len());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        if this.buf.is_empty() {
            // Give the memory back; the next read allocates again.
            this.buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A reader that records the size of every read asked of it.
    struct Recording<R> {
        inner: R,
        asked: Vec<usize>,
    }

    impl<R: AsyncRead + Unpin> AsyncRead for Recording<R> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let asked = buf.remaining();
            let r = Pin::new(&mut self.inner).poll_read(cx, buf);
            if r.is_ready() {
                self.asked.push(asked);
            }
            r
        }
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read() {
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = ReadAhead::new(Recording {
            inner: &data[..],
            asked: Vec::new(),
        });
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = r.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
        let asked = &r.get_ref().asked;
        // 147 reads of 4 KiB were served by a few reads of the source (and
        // the one that saw its end), each as large as READ_AHEAD.
        assert!(asked.iter().all(|&a| a >= READ_AHEAD), "{asked:?}");
        assert_eq!(
            asked.len(),
            data.len().div_ceil(READ_AHEAD) + 1,
            "{asked:?}"
        );
        assert_eq!(r.buffered(), 0);
        assert_eq!(r.buf.capacity(), 0, "an empty buffer is given back");
    }

    #[tokio::test]
    async fn a_connection_waiting_for_bytes_holds_no_buffer() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = ReadAhead::new(a);
        let mut chunk = [0u8; 16];
        let pending = tokio::time::timeout(Duration::from_millis(20), r.read(&mut chunk)).await;
        assert!(pending.is_err(), "nothing was sent");
        assert_eq!(r.buf.capacity(), 0, "a waiting read keeps no buffer");
        b.write_all(b"late").await.unwrap();
        let n = r.read(&mut chunk).await.unwrap();
        assert_eq!(&chunk[..n], b"late");
    }

    #[tokio::test]
    async fn a_large_read_goes_straight_to_the_caller() {
        let data = vec![7u8; 1000];
        let mut r = ReadAhead::new(&data[..]);
        let mut out = vec![0u8; READ_AHEAD];
        let n = r.read(&mut out).await.unwrap();
        assert_eq!(n, 1000);
        assert_eq!(r.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn the_prefix_comes_first_and_writes_pass_through() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = ReadAhead::with_prefix(Bytes::from_static(b"hello "), a);
        b.write_all(b"world").await.unwrap();
        drop(b);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");

        let (a, mut b) = tokio::io::duplex(64);
        let mut w = ReadAhead::new(a);
        w.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }
}
