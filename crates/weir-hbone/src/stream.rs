//! One HBONE tunnel (an HTTP/2 stream) as `AsyncRead + AsyncWrite`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counts a connection's streams and remembers when it last became idle.
#[derive(Debug)]
pub(crate) struct StreamCounter {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl StreamCounter {
    pub(crate) fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Takes a slot; the returned guard gives it back when dropped.
    pub(crate) fn acquire(self: &Arc<Self>) -> ActiveStreamGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveStreamGuard(self.clone())
    }

    /// How long the connection has had no streams (zero while it has some).
    pub(crate) fn idle_for(&self) -> Duration {
        if self.active() > 0 {
            return Duration::ZERO;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        since.elapsed()
    }
}

/// One stream slot of a connection, released on drop.
#[derive(Debug)]
pub(crate) struct ActiveStreamGuard(Arc<StreamCounter>);

impl Drop for ActiveStreamGuard {
    fn drop(&mut self) {
        let mut since = self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
        }
    }
}

/// A bidirectional byte stream tunneled through one HTTP/2 stream.
///
/// - Reading hands out slices of the DATA frame h2 received (no copy inside
///   this type) and returns receive-window capacity to the peer as the bytes
///   are consumed, so a slow reader applies backpressure to the sender.
/// - Writing copies the caller's buffer once into a [`Bytes`], sized to the
///   send capacity h2 granted.
/// - `poll_shutdown` sends END_STREAM (a TCP half-close); EOF on read is the
///   peer's END_STREAM. A reset stream reads and writes as
///   `ConnectionReset` (`BrokenPipe` when the peer just stopped reading).
#[derive(Debug)]
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// The rest of the last DATA frame, not yet handed to the reader.
    chunk: Bytes,
    write_closed: bool,
    _guard: Option<ActiveStreamGuard>,
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<ActiveStreamGuard>,
    ) -> Self {
        Self {
            send,
            recv,
            chunk: Bytes::new(),
            write_closed: false,
            _guard: guard,
        }
    }

    /// Aborts the tunnel: the peer sees a reset instead of a clean end of stream.
    pub fn reset(&mut self) {
        self.send.send_reset(Reason::CANCEL);
    }

    /// Splits the tunnel into halves that move whole [`Bytes`] chunks, for
    /// forwarding without copy buffers: a proxy holds no buffer while a tunnel
    /// is idle. Bytes already received but not yet read stay in the receive half.
    pub fn into_parts(self) -> (H2Send, H2Recv) {
        let guard = self._guard.map(Arc::new);
        (
            H2Send {
                send: self.send,
                closed: self.write_closed,
                _guard: guard.clone(),
            },
            H2Recv {
                recv: self.recv,
                pending: self.chunk,
                _guard: guard,
            },
        )
    }

    fn consume(&mut self, n: usize) {
        // Give the peer its window back now that the application has the bytes.
        // An error means the stream is gone; the next poll reports it.
        let _ = self.recv.flow_control().release_capacity(n);
    }

    fn poll_reset_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        Poll::Ready(match ready!(self.send.poll_reset(cx)) {
            Ok(Reason::NO_ERROR) | Ok(Reason::STREAM_CLOSED) => io::ErrorKind::BrokenPipe.into(),
            Ok(reason) => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("HBONE stream reset by peer: {reason}"),
            ),
            Err(e) => h2_to_io(e),
        })
    }
}

/// The sending half of a tunnel (see [`H2Stream::into_parts`]).
#[derive(Debug)]
pub struct H2Send {
    send: SendStream<Bytes>,
    closed: bool,
    _guard: Option<Arc<ActiveStreamGuard>>,
}

impl H2Send {
    /// Sends `data`, waiting for flow-control capacity; no copy is made.
    pub async fn send(&mut self, mut data: Bytes) -> io::Result<()> {
        if self.closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        while !data.is_empty() {
            self.send.reserve_capacity(data.len());
            let cap = std::future::poll_fn(|cx| loop {
                let cap = self.send.capacity();
                if cap > 0 {
                    return Poll::Ready(Ok(cap));
                }
                match ready!(self.send.poll_capacity(cx)) {
                    Some(Ok(_)) => continue,
                    None | Some(Err(_)) => return reset_error(&mut self.send, cx).map(Err),
                }
            })
            .await?;
            let chunk = data.split_to(cap.min(data.len()));
            if self.send.send_data(chunk, false).is_err() {
                return Err(std::future::poll_fn(|cx| reset_error(&mut self.send, cx)).await);
            }
        }
        Ok(())
    }

    /// Sends from `data` as far as flow control allows, advancing it; ready
    /// when all of it is handed to h2 (no copy is made).
    pub fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        while !data.is_empty() {
            self.send.reserve_capacity(data.len());
            let mut cap = self.send.capacity();
            while cap == 0 {
                match ready!(self.send.poll_capacity(cx)) {
                    Some(Ok(_)) => cap = self.send.capacity(),
                    None | Some(Err(_)) => return reset_error(&mut self.send, cx).map(Err),
                }
            }
            let chunk = data.split_to(cap.min(data.len()));
            if self.send.send_data(chunk, false).is_err() {
                return reset_error(&mut self.send, cx).map(Err);
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Half-closes: sends END_STREAM.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.send
            .send_data(Bytes::new(), true)
            .map_err(|_| io::ErrorKind::BrokenPipe.into())
    }

    /// Aborts the tunnel with RST_STREAM(CANCEL).
    pub fn reset(&mut self) {
        self.send.send_reset(Reason::CANCEL);
    }
}

/// The receiving half of a tunnel (see [`H2Stream::into_parts`]).
#[derive(Debug)]
pub struct H2Recv {
    recv: RecvStream,
    pending: Bytes,
    _guard: Option<Arc<ActiveStreamGuard>>,
}

impl H2Recv {
    /// The next DATA chunk; `None` at the peer's END_STREAM. The receive
    /// window is only returned by [`H2Recv::release`], so a caller that
    /// releases after writing the chunk on applies backpressure to the sender.
    pub async fn chunk(&mut self) -> io::Result<Option<Bytes>> {
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        loop {
            match self.recv.data().await {
                None => return Ok(None),
                Some(Ok(data)) if data.is_empty() => continue,
                Some(Ok(data)) => return Ok(Some(data)),
                Some(Err(e)) => {
                    return match e.reason() {
                        Some(Reason::NO_ERROR) if e.is_reset() => Ok(None),
                        _ => Err(h2_to_io(e)),
                    }
                }
            }
        }
    }

    /// Poll form of [`H2Recv::chunk`].
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.pending))));
        }
        loop {
            return Poll::Ready(match ready!(self.recv.poll_data(cx)) {
                None => Ok(None),
                Some(Ok(data)) if data.is_empty() => continue,
                Some(Ok(data)) => Ok(Some(data)),
                Some(Err(e)) => match e.reason() {
                    Some(Reason::NO_ERROR) if e.is_reset() => Ok(None),
                    _ => Err(h2_to_io(e)),
                },
            });
        }
    }

    /// Returns `n` bytes of receive window to the peer.
    pub fn release(&mut self, n: usize) {
        let _ = self.recv.flow_control().release_capacity(n);
    }
}

fn reset_error(send: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<io::Error> {
    Poll::Ready(match ready!(send.poll_reset(cx)) {
        Ok(Reason::NO_ERROR) | Ok(Reason::STREAM_CLOSED) => io::ErrorKind::BrokenPipe.into(),
        Ok(reason) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("HBONE stream reset by peer: {reason}"),
        ),
        Err(e) => h2_to_io(e),
    })
}

/// Maps an h2 error to an `io::Error`, keeping the I/O error when there is one.
pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::ErrorKind::Other.into());
    }
    let kind = if e.is_reset() || e.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        while this.chunk.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                // END_STREAM: the peer half-closed.
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => this.chunk = data,
                Some(Err(e)) => {
                    return Poll::Ready(match e.reason() {
                        Some(Reason::NO_ERROR) if e.is_reset() => Ok(()),
                        _ => Err(h2_to_io(e)),
                    })
                }
            }
        }
        let n = buf.remaining().min(this.chunk.len());
        let head = this.chunk.split_to(n);
        buf.put_slice(&head);
        this.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        this.send.reserve_capacity(buf.len());
        let mut cap = this.send.capacity();
        while cap == 0 {
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(n)) => cap = n,
                // The stream closed or was reset: find out why.
                None | Some(Err(_)) => {
                    return this.poll_reset_error(cx).map(Err);
                }
            }
        }
        let n = cap.min(buf.len());
        match this
            .send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
        {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => this.poll_reset_error(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task flushes h2's buffers to the socket.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Ok(()));
        }
        match this.send.send_data(Bytes::new(), true) {
            Ok(()) => {
                this.write_closed = true;
                Poll::Ready(Ok(()))
            }
            Err(_) => this.poll_reset_error(cx).map(Err),
        }
    }
}
