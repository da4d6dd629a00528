//! Reading a TLS ClientHello without consuming it: the gateway buffers the
//! client's first bytes, finds the SNI host name in them, and then replays
//! the very same bytes to a passthrough upstream or to its own TLS acceptor.
//!
//! The parser is small and bounded on purpose: it accepts a handshake
//! message split over several TLS records, never buffers more than
//! [`MAX_CLIENT_HELLO`] bytes, and checks every length against its container,
//! so any input yields a result or an error, never a panic.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Most bytes buffered while looking for the end of a ClientHello (record
/// headers included). Real ClientHellos, even with post-quantum key shares,
/// are a few KiB.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// TLS records carry at most 2^14 bytes of plaintext.
const MAX_RECORD: usize = 1 << 14;

/// What the gateway learned from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The SNI host name, lower-cased, without a trailing dot; `None` when
    /// the client sent none (e.g. it connected to an IP address).
    pub sni: Option<String>,
    /// How many buffered bytes the ClientHello's records took.
    pub len: usize,
}

/// Why the first bytes of a connection are not a usable ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHelloError {
    #[error("not TLS: the first bytes are not a TLS handshake record (a plaintext client on a TLS port?)")]
    NotTls,
    #[error("the ClientHello exceeds {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("the client closed the connection before sending a whole ClientHello")]
    Truncated,
    #[error("no ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("reading the ClientHello: {0}")]
    Io(String),
}

impl ClientHelloError {
    /// The `reason` label of `weir_gateway_connection_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ClientHelloError::NotTls => "not_tls",
            ClientHelloError::TooLarge => "client_hello_too_large",
            ClientHelloError::Malformed(_) | ClientHelloError::Truncated => {
                "malformed_client_hello"
            }
            ClientHelloError::Timeout(_) => "client_hello_timeout",
            ClientHelloError::Io(_) => "client_io",
        }
    }
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        if self.buf.len() < n {
            return Err(ClientHelloError::Malformed(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ClientHelloError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ClientHelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a `len_bytes`-byte length prefix.
    fn vec(&mut self, len_bytes: usize, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        let n = match len_bytes {
            1 => usize::from(self.u8(what)?),
            _ => usize::from(self.u16(what)?),
        };
        self.take(n, what)
    }
}

/// Parses the ClientHello at the start of `buf` (as received: TLS records).
///
/// Returns `Ok(None)` if `buf` is a valid prefix that needs more bytes,
/// `Ok(Some(_))` once the whole ClientHello is there.
pub fn parse_client_hello(buf: &[u8]) -> Result<Option<ClientHello>, ClientHelloError> {
    // Reassemble the handshake message from consecutive handshake records.
    let mut message: Vec<u8> = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = buf.get(at..at + RECORD_HEADER) else {
            // Check what we have of the first header, to fail fast on plaintext.
            if at == 0 {
                check_first_bytes(buf)?;
            }
            return if buf.len() >= MAX_CLIENT_HELLO {
                Err(ClientHelloError::TooLarge)
            } else {
                Ok(None)
            };
        };
        if header[0] != CONTENT_HANDSHAKE || header[1] != 3 {
            return Err(if at == 0 {
                ClientHelloError::NotTls
            } else {
                ClientHelloError::Malformed("a non-handshake record inside the ClientHello")
            });
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Err(ClientHelloError::Malformed("bad record length"));
        }
        let end = at + RECORD_HEADER + len;
        if end > MAX_CLIENT_HELLO {
            return Err(ClientHelloError::TooLarge);
        }
        let Some(fragment) = buf.get(at + RECORD_HEADER..end) else {
            return Ok(None);
        };
        message.extend_from_slice(fragment);
        at = end;
        if message.len() >= 4 {
            if message[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(ClientHelloError::Malformed(
                    "the first handshake message is not a ClientHello",
                ));
            }
            let body_len = (usize::from(message[1]) << 16)
                | (usize::from(message[2]) << 8)
                | usize::from(message[3]);
            if 4 + body_len > MAX_CLIENT_HELLO {
                return Err(ClientHelloError::TooLarge);
            }
            if message.len() >= 4 + body_len {
                let sni = client_hello_sni(&message[4..4 + body_len])?;
                return Ok(Some(ClientHello { sni, len: at }));
            }
        }
    }
}

/// Rejects plaintext as soon as the first byte or two show it.
fn check_first_bytes(buf: &[u8]) -> Result<(), ClientHelloError> {
    match buf {
        [] => Ok(()),
        [t, ..] if *t != CONTENT_HANDSHAKE => Err(ClientHelloError::NotTls),
        [_, major, ..] if *major != 3 => Err(ClientHelloError::NotTls),
        _ => Ok(()),
    }
}

/// The server_name extension of a ClientHello body.
fn client_hello_sni(body: &[u8]) -> Result<Option<String>, ClientHelloError> {
    let mut r = Reader { buf: body };
    r.take(2, "client version")?;
    r.take(32, "random")?;
    let session_id = r.vec(1, "session id")?;
    if session_id.len() > 32 {
        return Err(ClientHelloError::Malformed(
            "session id longer than 32 bytes",
        ));
    }
    let suites = r.vec(2, "cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(ClientHelloError::Malformed("bad cipher suite list"));
    }
    if r.vec(1, "compression methods")?.is_empty() {
        return Err(ClientHelloError::Malformed("no compression method"));
    }
    if r.buf.is_empty() {
        return Ok(None); // no extensions at all
    }
    let mut exts = Reader {
        buf: r.vec(2, "extensions")?,
    };
    let mut sni = None;
    while !exts.buf.is_empty() {
        let ty = exts.u16("extension type")?;
        let data = exts.vec(2, "extension data")?;
        if ty != EXTENSION_SERVER_NAME {
            continue;
        }
        if sni.is_some() {
            return Err(ClientHelloError::Malformed("two server_name extensions"));
        }
        let mut list = Reader {
            buf: Reader { buf: data }.vec(2, "server name list")?,
        };
        while !list.buf.is_empty() {
            let name_type = list.u8("server name type")?;
            let name = list.vec(2, "server name")?;
            if name_type == NAME_TYPE_HOST_NAME && sni.is_none() {
                sni = Some(host_name(name)?);
            }
        }
    }
    Ok(sni)
}

/// Validates an SNI host name (RFC 6066: ASCII, no trailing dot; we also
/// accept one and drop it) and lower-cases it.
fn host_name(raw: &[u8]) -> Result<String, ClientHelloError> {
    let name = std::str::from_utf8(raw)
        .map_err(|_| ClientHelloError::Malformed("the server name is not ASCII"))?;
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty()
        || name.len() > 253
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(ClientHelloError::Malformed(
            "the server name is not a host name",
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// Reads from `stream` until `buf` holds a whole ClientHello (or an error),
/// within `timeout`. The bytes stay in `buf`, to be replayed.
pub async fn read_client_hello(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<ClientHello, ClientHelloError> {
    let read = async {
        loop {
            if let Some(hello) = parse_client_hello(buf)? {
                return Ok(hello);
            }
            buf.reserve(2048.min(MAX_CLIENT_HELLO - buf.len()).max(1));
            match stream.read_buf(buf).await {
                Ok(0) if buf.is_empty() => return Err(ClientHelloError::Truncated),
                Ok(0) => {
                    // Tell plaintext apart from a cut-off hello.
                    check_first_bytes(buf)?;
                    return Err(ClientHelloError::Truncated);
                }
                Ok(_) => {}
                Err(e) => return Err(ClientHelloError::Io(e.to_string())),
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => {
            check_first_bytes(buf)?;
            Err(ClientHelloError::Timeout(timeout))
        }
    }
}

#[cfg(test)]
mod tests;
