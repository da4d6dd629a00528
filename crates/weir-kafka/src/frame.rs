//! Kafka framing: every request and response is a 4-byte big-endian size
//! followed by that many bytes. Frames are cut out of one read buffer as
//! [`Bytes`] (no copy), size prefix included, so a frame that needs no
//! change is forwarded as it came.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{SessionError, Side};

/// Kafka's own default for `socket.request.max.bytes`: 100 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 104_857_600;

/// How much the read buffer grows by when it needs room (large reads keep
/// the produce path at few syscalls per megabyte).
const READ_CHUNK: usize = 256 * 1024;
/// Room reserved at once for the rest of a frame; a larger frame's buffer
/// grows (doubling) as its bytes arrive, so a size prefix alone cannot make
/// the gateway reserve up to the frame limit. 1 MiB covers the usual
/// produce request (librdkafka's and Java's 1 MB batches) in one go.
const UPFRONT: usize = 1 << 20;

/// One complete frame, size prefix included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// Wraps the bytes of a frame whose first four bytes are its size.
    pub(crate) fn from_wire(bytes: Bytes) -> Self {
        Frame(bytes)
    }

    /// Builds a frame from a body (prefixes the size).
    pub fn from_body(body: &[u8]) -> Self {
        let mut b = BytesMut::with_capacity(4 + body.len());
        b.extend_from_slice(&(body.len() as u32).to_be_bytes());
        b.extend_from_slice(body);
        Frame(b.freeze())
    }

    /// The frame as sent on the wire, size prefix included.
    pub fn wire(&self) -> &Bytes {
        &self.0
    }

    /// The frame as sent on the wire, size prefix included.
    pub fn into_wire(self) -> Bytes {
        self.0
    }

    /// The bytes after the size prefix.
    pub fn body(&self) -> &[u8] {
        &self.0[4..]
    }

    /// The bytes after the size prefix, sharing the frame's buffer.
    pub fn body_bytes(&self) -> Bytes {
        self.0.slice(4..)
    }
}

/// Reads frames from one side of a session.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    max: usize,
    side: Side,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of frames of at most `max` bytes (size prefix excluded).
    pub fn new(io: R, side: Side, max: usize) -> Self {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max,
            side,
        }
    }

    /// A complete frame already buffered, without reading.
    pub fn buffered(&mut self) -> Result<Option<Frame>, SessionError> {
        let Some(size) = self.declared_size()? else {
            return Ok(None);
        };
        if self.buf.len() < 4 + size {
            return Ok(None);
        }
        Ok(Some(Frame(self.buf.split_to(4 + size).freeze())))
    }

    /// Whether a complete frame is buffered (checks the size limit).
    pub fn has_buffered_frame(&self) -> Result<bool, SessionError> {
        Ok(self
            .declared_size()?
            .is_some_and(|size| self.buf.len() >= 4 + size))
    }

    /// The next frame; `None` when the peer closed the connection between
    /// frames. A connection that ends inside a frame is
    /// [`SessionError::TruncatedFrame`], whether it was closed cleanly or
    /// not (a TLS peer gone without close_notify, a reset: a crashed or
    /// timed-out client).
    pub async fn next(&mut self) -> Result<Option<Frame>, SessionError> {
        loop {
            if let Some(frame) = self.buffered()? {
                return Ok(Some(frame));
            }
            let needed = match self.declared_size()? {
                Some(size) => 4 + size - self.buf.len(),
                None => 4 - self.buf.len(),
            };
            let room = needed.min(self.buf.len().max(UPFRONT));
            self.buf.reserve(room.max(READ_CHUNK));
            let n = match self.io.read_buf(&mut self.buf).await {
                Ok(n) => n,
                // Inside a frame (only a partial one is ever left in the
                // buffer here), an abrupt end is a truncated frame too.
                Err(e) if !self.buf.is_empty() && ends_the_connection(&e) => 0,
                Err(source) => {
                    return Err(SessionError::Io {
                        side: self.side,
                        source,
                    })
                }
            };
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let expected = match self.declared_size()? {
                    Some(size) => 4 + size,
                    None => 4,
                };
                return Err(SessionError::TruncatedFrame {
                    side: self.side,
                    received: self.buf.len(),
                    expected,
                });
            }
        }
    }

    /// The size in the buffered frame's prefix, checked against the limit.
    fn declared_size(&self) -> Result<Option<usize>, SessionError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let size = (&self.buf[..4]).get_i32();
        if size < 0 {
            return Err(SessionError::MalformedFrame {
                side: self.side,
                detail: format!("negative frame size {size}"),
            });
        }
        let size = size as usize;
        if size > self.max {
            return Err(SessionError::FrameTooLarge {
                side: self.side,
                size,
                max: self.max,
            });
        }
        Ok(Some(size))
    }
}

/// Whether a read error means the peer is gone: an EOF without TLS
/// close_notify (rustls reports it as `UnexpectedEof`), a reset or an abort.
fn ends_the_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted
    )
}

/// Writes `chunks` in order with as few syscalls as the writer allows
/// (vectored writes), then flushes. Empties `chunks`.
pub(crate) async fn write_chunks<W: AsyncWrite + Unpin>(
    w: &mut W,
    chunks: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    // An empty chunk (a dropped answer) would make a lone write return 0.
    chunks.retain(|c| !c.is_empty());
    let mut first = 0;
    while first < chunks.len() {
        let slices: Vec<std::io::IoSlice<'_>> = chunks[first..]
            .iter()
            .take(64)
            .map(|c| std::io::IoSlice::new(c))
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < chunks.len() {
            let len = chunks[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                chunks[first].advance(n);
                n = 0;
            }
        }
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
    }
    chunks.clear();
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(input: Vec<u8>, max: usize) -> Result<Vec<Frame>, SessionError> {
        let mut r = FrameReader::new(&input[..], Side::Client, max);
        let mut out = Vec::new();
        while let Some(f) = r.next().await? {
            out.push(f);
        }
        Ok(out)
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        Frame::from_body(body).into_wire().to_vec()
    }

    #[tokio::test]
    async fn frames_are_cut_at_their_size() {
        let mut input = framed(b"hello");
        input.extend(framed(b""));
        input.extend(framed(&[7u8; 1000]));
        let frames = read_all(input, 1 << 20).await.unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].body(), b"hello");
        assert_eq!(frames[0].wire().len(), 9);
        assert!(frames[1].body().is_empty());
        assert_eq!(frames[2].body(), &[7u8; 1000][..]);
    }

    #[tokio::test]
    async fn frame_over_the_limit_is_refused_before_it_is_read() {
        // Only the size prefix is sent: the reader must not wait for the body.
        let err = read_all(200u32.to_be_bytes().to_vec(), 100)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "frame_too_large");
        assert!(err.to_string().contains("200 bytes"), "{err}");
        // The message names the setting as it is written in the config.
        assert!(
            err.to_string()
                .ends_with("over the limit of 100 bytes (KafkaGateway spec.maxFrameBytes)"),
            "{err}"
        );
        // Exactly at the limit is fine.
        assert_eq!(read_all(framed(&[0; 100]), 100).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn memory_follows_the_bytes_that_arrive_not_the_declared_size() {
        // A 50 MiB frame declared, 10 bytes of it sent, then nothing.
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(rx, Side::Client, 100 << 20);
        let mut prefix = (50u32 << 20).to_be_bytes().to_vec();
        prefix.extend([0u8; 10]);
        tokio::io::AsyncWriteExt::write_all(&mut tx, &prefix)
            .await
            .unwrap();
        let pending = tokio::time::timeout(std::time::Duration::from_millis(200), r.next()).await;
        assert!(pending.is_err(), "the frame is not complete");
        assert!(
            r.buf.capacity() <= 2 * UPFRONT,
            "{} bytes reserved for 14 received",
            r.buf.capacity()
        );
        // The whole frame still arrives intact.
        let body: Vec<u8> = (0..(50u32 << 20) - 10).map(|i| i as u8).collect();
        let writer = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut tx, &body)
                .await
                .unwrap();
            tx
        });
        let f = r.next().await.unwrap().unwrap();
        assert_eq!(f.body().len(), 50 << 20);
        assert_eq!(&f.body()[..10], &[0u8; 10]);
        assert_eq!(f.body()[10 + 300], 300u32 as u8);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn empty_chunks_are_skipped_not_written() {
        let mut out = Vec::new();
        write_chunks(&mut out, &mut vec![Bytes::new()])
            .await
            .unwrap();
        let mut chunks = vec![Bytes::new(), Bytes::from_static(b"ab"), Bytes::new()];
        write_chunks(&mut out, &mut chunks).await.unwrap();
        assert_eq!(out, b"ab");
        assert!(chunks.is_empty());
    }

    #[tokio::test]
    async fn negative_size_is_malformed() {
        let err = read_all((-1i32).to_be_bytes().to_vec(), 100)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "malformed_frame");
        assert!(err.to_string().contains("negative frame size -1"), "{err}");
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_truncation() {
        let mut input = framed(b"complete");
        input.extend(10u32.to_be_bytes());
        input.extend(b"abc");
        let err = read_all(input, 100).await.unwrap_err();
        assert_eq!(err.reason(), "truncated_frame");
        assert!(err.to_string().contains("7 of 14 bytes"), "{err}");
        // EOF inside the size prefix too.
        let err = read_all(vec![0, 0], 100).await.unwrap_err();
        assert_eq!(err.reason(), "truncated_frame");
    }

    /// Yields `data`, then fails with `kind`, as a TLS stream whose peer
    /// vanished without close_notify (or a reset socket) does.
    struct ThenFail {
        data: Vec<u8>,
        kind: std::io::ErrorKind,
    }

    impl AsyncRead for ThenFail {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.data.is_empty() {
                let e = std::io::Error::new(
                    self.kind,
                    "peer closed connection without sending TLS close_notify",
                );
                return std::task::Poll::Ready(Err(e));
            }
            let n = buf.remaining().min(self.data.len());
            buf.put_slice(&self.data[..n]);
            self.data.drain(..n);
            std::task::Poll::Ready(Ok(()))
        }
    }

    async fn read_then_fail(data: Vec<u8>, kind: std::io::ErrorKind) -> (Vec<Frame>, SessionError) {
        let mut r = FrameReader::new(ThenFail { data, kind }, Side::Client, 1 << 20);
        let mut frames = Vec::new();
        loop {
            match r.next().await {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => panic!("a clean end"),
                Err(e) => return (frames, e),
            }
        }
    }

    #[tokio::test]
    async fn abrupt_end_inside_a_frame_is_truncation() {
        use std::io::ErrorKind::*;
        // The audit's input: a size of 100, 4 bytes, then the client is gone
        // without a TLS close_notify (or its socket is reset).
        for kind in [UnexpectedEof, ConnectionReset, ConnectionAborted] {
            let mut input = framed(b"complete");
            input.extend(100u32.to_be_bytes());
            input.extend(b"abcd");
            let (frames, err) = read_then_fail(input, kind).await;
            assert_eq!(frames.len(), 1);
            assert_eq!(err.reason(), "truncated_frame", "{kind:?}: {err}");
            assert!(err.is_bad_input());
            assert!(err.to_string().contains("8 of 104 bytes"), "{err}");
            // Inside the size prefix too.
            let (_, err) = read_then_fail(vec![0, 0], kind).await;
            assert_eq!(err.reason(), "truncated_frame", "{kind:?}: {err}");
        }
        // Between frames it stays an I/O error of that side (nothing lost).
        let (frames, err) = read_then_fail(framed(b"complete"), UnexpectedEof).await;
        assert_eq!(frames.len(), 1);
        assert_eq!(err.reason(), "client_io");
        // Other errors inside a frame stay I/O errors.
        let mut input = 100u32.to_be_bytes().to_vec();
        input.extend(b"abcd");
        let (_, err) = read_then_fail(input, TimedOut).await;
        assert_eq!(err.reason(), "client_io");
    }

    #[tokio::test]
    async fn default_limit_is_kafkas() {
        assert_eq!(DEFAULT_MAX_FRAME_SIZE, 100 * 1024 * 1024);
        let err = read_all(
            ((DEFAULT_MAX_FRAME_SIZE + 1) as u32).to_be_bytes().to_vec(),
            DEFAULT_MAX_FRAME_SIZE,
        )
        .await
        .unwrap_err();
        assert_eq!(err.reason(), "frame_too_large");
    }

    #[tokio::test]
    async fn vectored_writes_deliver_everything_in_order() {
        let mut out: Vec<u8> = Vec::new();
        let mut chunks: Vec<Bytes> = (0..200u32).map(|i| Bytes::from(format!("<{i}>"))).collect();
        write_chunks(&mut out, &mut chunks).await.unwrap();
        let expected: String = (0..200u32).map(|i| format!("<{i}>")).collect();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert!(chunks.is_empty());
    }
}
