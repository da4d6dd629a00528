//! The gRPC glue, written by hand (what tonic-build would generate): the
//! server's dispatch of `CertificateService` and `ConfigService` over one
//! HTTP/2 endpoint, and the client calls over one HTTP/2 connection.
//!
//! The client does not use tonic's channel: it opens its own TCP + TLS +
//! HTTP/2 connection ([`connect`]), so the reconnect policy (backoff,
//! fail-static) is entirely the caller's, and the dependency tree stays small.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::metadata::MetadataValue;
use tonic::server::{Grpc, ServerStreamingService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::auth::{AuthError, Authenticator, Caller};
use crate::ca::{CaService, Refusal};
use crate::distributor::{Distributor, Role};
use crate::metrics::{csr, ControlMetrics};
use crate::proto::{
    self, ConfigUpdate, CreateCertificateRequest, CreateCertificateResponse, StreamConfigRequest,
};

/// Largest message a node or gateway decodes: a full snapshot of a large
/// mesh (10 000 workloads are about 3 MB) must fit.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Largest certificate signing request the control plane decodes (a P-256
/// CSR in PEM is under 1 KiB).
pub const MAX_CSR_REQUEST: usize = 64 * 1024;

/// Largest config-stream request the control plane decodes: it lists the
/// versions a reconnecting node holds (about 60 bytes per resource, so 16 MiB
/// covers over 200 000 resources).
pub const MAX_STREAM_REQUEST: usize = 16 * 1024 * 1024;

/// Most resources a config-stream request may list as held. An empty entry
/// is 2 bytes on the wire and about 100 in memory, so the count is checked
/// on the wire before the request is decoded.
pub const MAX_KNOWN: usize = 200_000;

/// Most concurrent calls on one connection to the control plane (a node
/// holds one config stream and renews certificates a few at a time).
pub const MAX_CONCURRENT_STREAMS: u32 = 64;

/// Longest caller-supplied node name written to the log.
const MAX_LOGGED_NAME: usize = 253;

/// HTTP/2 keepalive: a control plane (or node) that vanished without closing
/// its connections is noticed within interval + timeout.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type UpdateStream = Pin<Box<dyn Stream<Item = Result<ConfigUpdate, Status>> + Send>>;

// ------------------------------------------------------------------ server

struct Shared {
    auth: Arc<dyn Authenticator>,
    ca: CaService,
    distributor: Arc<Distributor>,
    metrics: ControlMetrics,
}

/// Both services of the control plane, as one tower service for
/// `tonic::transport::Server::serve_with_incoming_shutdown`.
#[derive(Clone)]
pub struct ControlService {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ControlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlService").finish_non_exhaustive()
    }
}

impl ControlService {
    /// Serves the CA with `ca` and config from `distributor`, authenticating
    /// every call with `auth`.
    pub fn new(
        auth: Arc<dyn Authenticator>,
        ca: CaService,
        distributor: Arc<Distributor>,
        metrics: ControlMetrics,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                auth,
                ca,
                distributor,
                metrics,
            }),
        }
    }
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The claimed node name and the bearer token of a call (gRPC metadata is
/// HTTP/2 headers).
fn credentials(headers: &http::HeaderMap) -> (String, String) {
    let authorization = header(headers, "authorization");
    let token = authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))
        .unwrap_or("")
        .trim();
    (
        header(headers, proto::NODE_HEADER).to_owned(),
        token.to_owned(),
    )
}

/// A caller-supplied name as it is logged: bounded, and escaped by the
/// `?` formatting at the call sites.
fn logged(name: &str) -> &str {
    match name.char_indices().nth(MAX_LOGGED_NAME) {
        Some((end, _)) => &name[..end],
        None => name,
    }
}

/// Which call a request is.
#[derive(Clone, Copy)]
enum Rpc {
    CreateCertificate,
    StreamConfig,
}

impl Rpc {
    fn what(self) -> &'static str {
        match self {
            Rpc::CreateCertificate => "certificate signing request",
            Rpc::StreamConfig => "config stream",
        }
    }
}

/// Counts a config-stream request's `known` entries on the wire, without
/// decoding them.
fn count_known(mut wire: &[u8]) -> Result<usize, prost::DecodeError> {
    let mut known = 0;
    while !wire.is_empty() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut wire)?;
        if tag == 1 {
            known += 1;
        }
        prost::encoding::skip_field(
            wire_type,
            tag,
            &mut wire,
            prost::encoding::DecodeContext::default(),
        )?;
    }
    Ok(known)
}

/// Decodes a [`StreamConfigRequest`] after checking that it lists at most
/// [`MAX_KNOWN`] held resources.
struct StreamRequestDecoder(tonic_prost::ProstDecoder<StreamConfigRequest>);

impl tonic::codec::Decoder for StreamRequestDecoder {
    type Item = StreamConfigRequest;
    type Error = Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<StreamConfigRequest>, Status> {
        use bytes::Buf;
        let wire = buf.chunk();
        let wire = &wire[..wire.len().min(buf.remaining())];
        match count_known(wire) {
            Ok(n) if n > MAX_KNOWN => {
                return Err(Status::resource_exhausted(format!(
                    "the config stream request lists {n} held resources; at most {MAX_KNOWN} are accepted"
                )))
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Status::invalid_argument(format!(
                    "malformed config stream request: {e}"
                )))
            }
        }
        self.0.decode(buf)
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.0.buffer_settings()
    }
}

/// [`ProstCodec`] for `StreamConfig` with [`StreamRequestDecoder`].
#[derive(Default)]
struct StreamCodec;

impl tonic::codec::Codec for StreamCodec {
    type Encode = ConfigUpdate;
    type Decode = StreamConfigRequest;
    type Encoder = tonic_prost::ProstEncoder<ConfigUpdate>;
    type Decoder = StreamRequestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(Default::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StreamRequestDecoder(tonic_prost::ProstDecoder::new(Default::default()))
    }
}

struct CreateCertificate(Arc<Shared>, Caller);

impl UnaryService<CreateCertificateRequest> for CreateCertificate {
    type Response = CreateCertificateResponse;
    type Future = BoxFuture<Result<Response<CreateCertificateResponse>, Status>>;

    fn call(&mut self, request: Request<CreateCertificateRequest>) -> Self::Future {
        let shared = self.0.clone();
        let caller = self.1.clone();
        Box::pin(async move {
            match shared.ca.create_certificate(&caller, request.get_ref()) {
                Ok(response) => Ok(Response::new(response)),
                Err(Refusal::Denied(m)) => Err(Status::permission_denied(m)),
                Err(Refusal::Invalid(m)) => Err(Status::invalid_argument(m)),
                Err(Refusal::Internal(m)) => Err(Status::internal(m)),
            }
        })
    }
}

struct StreamConfig(Arc<Shared>, Caller);

impl ServerStreamingService<StreamConfigRequest> for StreamConfig {
    type Response = ConfigUpdate;
    type ResponseStream = UpdateStream;
    type Future = BoxFuture<Result<Response<UpdateStream>, Status>>;

    fn call(&mut self, request: Request<StreamConfigRequest>) -> Self::Future {
        let shared = self.0.clone();
        let caller = self.1.clone();
        Box::pin(async move {
            let asked = request.get_ref().role.as_str();
            let role = match (&caller, asked) {
                (Caller::Node { .. }, "" | proto::ROLE_NODE) => Role::Node,
                (Caller::Gateway { .. }, "" | proto::ROLE_GATEWAY) => Role::Gateway,
                (_, other) => {
                    tracing::warn!(
                        node = caller.name(),
                        role = other,
                        "config stream refused: role does not match the caller's registration"
                    );
                    return Err(Status::permission_denied(format!(
                        "{} is not registered as a {other:?}",
                        caller.name()
                    )));
                }
            };
            let known = &request.get_ref().known;
            let sub = shared.distributor.subscribe(caller.name(), role, known);
            tracing::info!(
                node = caller.name(),
                full = sub.first.full,
                resources = sub.first.resources.len(),
                removed = sub.first.removed.len(),
                held = known.len(),
                version = sub.first.version,
                "config stream opened"
            );
            shared
                .metrics
                .pushed(1, prost::Message::encoded_len(&sub.first));
            let stream = tokio_stream::once(Ok(sub.first))
                .chain(tokio_stream::wrappers::ReceiverStream::new(sub.updates).map(Ok));
            Ok(Response::new(Box::pin(stream) as UpdateStream))
        })
    }
}

impl<B> tower_service::Service<http::Request<B>> for ControlService
where
    B: hyper::body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let rpc = match request.uri().path() {
            proto::CREATE_CERTIFICATE_PATH => Rpc::CreateCertificate,
            proto::STREAM_CONFIG_PATH => Rpc::StreamConfig,
            _ => {
                return Box::pin(async move {
                    Ok(Status::unimplemented(
                        "weir control serves CertificateService and ConfigService only",
                    )
                    .into_http())
                })
            }
        };
        // The caller is authenticated from the headers before its request
        // body is read or decoded: an unauthenticated peer costs a header
        // block, never a message allocation.
        let (node, token) = credentials(request.headers());
        Box::pin(async move {
            let caller = match shared.auth.authenticate(&node, &token).await {
                Ok(c) => c,
                Err(e) => {
                    if let Rpc::CreateCertificate = rpc {
                        shared.metrics.csr(csr::UNAUTHENTICATED);
                    }
                    tracing::warn!(
                        node = ?logged(&node),
                        error = %e,
                        "{} refused: caller not authenticated",
                        rpc.what()
                    );
                    let status = match e {
                        // Not the caller's fault: it retries.
                        AuthError::Backend(_) => Status::unavailable(e.to_caller()),
                        _ => Status::unauthenticated(e.to_caller()),
                    };
                    return Ok(status.into_http());
                }
            };
            Ok(match rpc {
                Rpc::CreateCertificate => {
                    let mut grpc = Grpc::new(ProstCodec::default())
                        .apply_max_message_size_config(Some(MAX_CSR_REQUEST), None);
                    grpc.unary(CreateCertificate(shared, caller), request).await
                }
                Rpc::StreamConfig => {
                    let mut grpc = Grpc::new(StreamCodec)
                        .apply_max_message_size_config(Some(MAX_STREAM_REQUEST), None);
                    grpc.server_streaming(StreamConfig(shared, caller), request)
                        .await
                }
            })
        })
    }
}

// ------------------------------------------------------------------ client

/// Why a call to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The address could not be resolved or reached.
    #[error("cannot connect to the control plane at {addr}: {source}")]
    Connect {
        /// The address as configured.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// TLS failed (often: --control-ca is not the mesh root the control plane uses).
    #[error("TLS with the control plane at {addr} failed: {source}; check that --control-ca holds the mesh root the control plane signs with")]
    Tls {
        /// The address.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// HTTP/2 failed.
    #[error("HTTP/2 with the control plane at {addr} failed: {source}")]
    Http2 {
        /// The address.
        addr: String,
        /// The underlying error.
        source: hyper::Error,
    },
    /// The control plane answered with an error.
    #[error("control plane: {}: {}", .0.code(), .0.message())]
    Status(#[from] Status),
    /// A metadata value could not be encoded.
    #[error("invalid {what}: not a valid gRPC metadata value")]
    Metadata {
        /// Which value.
        what: &'static str,
    },
}

impl CallError {
    /// Whether retrying with the same request cannot help (refused, not
    /// authenticated, malformed): reported at error level.
    pub fn is_refusal(&self) -> bool {
        matches!(self, CallError::Status(s) if matches!(
            s.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated | tonic::Code::InvalidArgument
        ))
    }
}

/// One HTTP/2 connection to the control plane; clones share it.
#[derive(Clone)]
pub struct Channel {
    send: hyper::client::conn::http2::SendRequest<Body>,
    origin: http::Uri,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl tower_service::Service<http::Request<Body>> for Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<Result<Self::Response, hyper::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.send.send_request(request))
    }
}

impl Channel {
    /// Whether the connection is gone (a new one is needed).
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    fn grpc(&self) -> tonic::client::Grpc<Channel> {
        tonic::client::Grpc::with_origin(self.clone(), self.origin.clone())
            .max_decoding_message_size(MAX_MESSAGE)
    }
}

/// Opens TCP, TLS and HTTP/2 to `addr` (`host:port`), bounded by `timeout`.
pub async fn connect(
    addr: &str,
    tls: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Channel, CallError> {
    let connect_err = |source| CallError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let timed_out = || {
        connect_err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        ))
    };
    let tcp = tokio::time::timeout(timeout, async {
        let mut last = None;
        for a in tokio::net::lookup_host(addr).await? {
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name resolves to no address",
            )
        }))
    })
    .await
    .map_err(|_| timed_out())?
    .map_err(connect_err)?;
    let _ = tcp.set_nodelay(true);
    // The verifier checks the SPIFFE id, not the name; any valid name works.
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned())
        .or_else(|_| ServerName::try_from("weir-control.invalid".to_owned()))
        .map_err(|e| connect_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let tls_stream = tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(|source| CallError::Tls {
        addr: addr.to_owned(),
        source,
    })?;
    let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls_stream))
        .await
        .map_err(|source| CallError::Http2 {
            addr: addr.to_owned(),
            source,
        })?;
    let peer = addr.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(control_plane = %peer, error = %e, "control plane connection ended");
        }
    });
    let origin = http::Uri::builder()
        .scheme("https")
        .authority(addr)
        .path_and_query("/")
        .build()
        .unwrap_or_else(|_| http::Uri::from_static("https://weir-control.invalid/"));
    Ok(Channel { send, origin })
}

/// The credentials every call carries.
#[derive(Clone)]
pub struct Credentials {
    /// `x-weir-node`.
    pub node: String,
    /// The bearer token.
    pub token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    fn request<T>(&self, message: T) -> Result<Request<T>, CallError> {
        let mut request = Request::new(message);
        let node: MetadataValue<_> = self
            .node
            .parse()
            .map_err(|_| CallError::Metadata { what: "node name" })?;
        let bearer: MetadataValue<_> = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| CallError::Metadata { what: "token" })?;
        request.metadata_mut().insert(proto::NODE_HEADER, node);
        request.metadata_mut().insert("authorization", bearer);
        Ok(request)
    }
}

/// `CertificateService/CreateCertificate`.
pub async fn create_certificate(
    channel: &Channel,
    credentials: &Credentials,
    message: CreateCertificateRequest,
) -> Result<CreateCertificateResponse, CallError> {
    let mut grpc = channel.grpc();
    grpc.ready().await.map_err(|source| CallError::Http2 {
        addr: channel.origin.to_string(),
        source,
    })?;
    let response = grpc
        .unary(
            credentials.request(message)?,
            PathAndQuery::from_static(proto::CREATE_CERTIFICATE_PATH),
            ProstCodec::default(),
        )
        .await?;
    Ok(response.into_inner())
}

/// `ConfigService/StreamConfig`.
pub async fn stream_config(
    channel: &Channel,
    credentials: &Credentials,
    message: StreamConfigRequest,
) -> Result<tonic::Streaming<ConfigUpdate>, CallError> {
    let mut grpc = channel.grpc();
    grpc.ready().await.map_err(|source| CallError::Http2 {
        addr: channel.origin.to_string(),
        source,
    })?;
    let response = grpc
        .server_streaming(
            credentials.request(message)?,
            PathAndQuery::from_static(proto::STREAM_CONFIG_PATH),
            ProstCodec::default(),
        )
        .await?;
    Ok(response.into_inner())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;
    use prometheus_client::registry::Registry;
    use tower_service::Service;
    use weir_identity::CertificateAuthority;

    use super::*;
    use crate::auth::TokenFile;
    use crate::ca::CaService;
    use crate::catalog::Catalog;

    const TOKEN: &str = "node-a-token-0123456789";

    fn service() -> ControlService {
        let distributor = Arc::new(Distributor::new(Catalog::default(), "cp"));
        let ca = Arc::new(CertificateAuthority::generate(Default::default()).unwrap());
        let mut registry = Registry::default();
        let metrics = ControlMetrics::register(&mut registry);
        ControlService::new(
            Arc::new(TokenFile::parse(&format!("nodes: {{node-a: {TOKEN}}}")).unwrap()),
            CaService::new(
                ca,
                Duration::from_secs(3600),
                distributor.clone(),
                metrics.clone(),
            ),
            distributor,
            metrics,
        )
    }

    fn request<B>(path: &str, token: &str, body: B) -> http::Request<B> {
        http::Request::builder()
            .method("POST")
            .uri(format!("http://control{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header(proto::NODE_HEADER, "node-a")
            .header("authorization", format!("Bearer {token}"))
            .body(body)
            .unwrap()
    }

    /// One length-prefixed gRPC message.
    fn frame(message: &[u8]) -> Full<Bytes> {
        let mut wire = vec![0u8];
        wire.extend_from_slice(&(message.len() as u32).to_be_bytes());
        wire.extend_from_slice(message);
        Full::new(Bytes::from(wire))
    }

    async fn status<B>(svc: &mut ControlService, request: http::Request<B>) -> Option<Status>
    where
        B: hyper::body::Body + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let response = tokio::time::timeout(Duration::from_secs(10), svc.call(request))
            .await
            .expect("the control plane answers")
            .unwrap();
        Status::from_header_map(response.headers())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unauthenticated_call_is_refused_before_its_body_is_read() {
        let mut svc = service();
        for path in [proto::STREAM_CONFIG_PATH, proto::CREATE_CERTIFICATE_PATH] {
            // A body that never arrives: answering at all shows that nothing
            // of it was read or decoded.
            let never =
                StreamBody::new(tokio_stream::pending::<Result<Frame<Bytes>, Infallible>>());
            let refused = status(&mut svc, request(path, "not-the-token-of-node-a", never))
                .await
                .expect("a gRPC status");
            assert_eq!(
                refused.code(),
                tonic::Code::Unauthenticated,
                "{path}: {refused:?}"
            );
            // An unknown name reads as a wrong token does.
            assert!(
                refused
                    .message()
                    .contains("not registered or the token is not its token"),
                "{refused:?}"
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_config_stream_request_listing_too_many_resources_is_refused_undecoded() {
        let mut svc = service();
        // Empty `known` entries: 2 bytes each on the wire.
        let too_many = [0x0a, 0x00].repeat(MAX_KNOWN + 1);
        let refused = status(
            &mut svc,
            request(proto::STREAM_CONFIG_PATH, TOKEN, frame(&too_many)),
        )
        .await
        .expect("a gRPC status");
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        assert!(refused.message().contains("200001"), "{refused:?}");
        // At the limit, the same caller's stream opens.
        let at_limit = [0x0a, 0x00].repeat(MAX_KNOWN);
        let opened = status(
            &mut svc,
            request(proto::STREAM_CONFIG_PATH, TOKEN, frame(&at_limit)),
        )
        .await;
        assert!(opened.is_none(), "{opened:?}");
        // Garbage on the wire is a malformed request, not a panic.
        let garbage = status(
            &mut svc,
            request(proto::STREAM_CONFIG_PATH, TOKEN, frame(&[0x0a, 0xff, 0xff])),
        )
        .await
        .expect("a gRPC status");
        assert_eq!(garbage.code(), tonic::Code::InvalidArgument, "{garbage:?}");
    }

    #[test]
    fn counting_held_resources_follows_the_wire_format() {
        use prost::Message;
        let request = StreamConfigRequest {
            known: vec![proto::ResourceVersion::default(); 3],
            role: "node".into(),
        };
        assert_eq!(count_known(&request.encode_to_vec()).unwrap(), 3);
        assert_eq!(count_known(&[]).unwrap(), 0);
        assert!(count_known(&[0x0a, 0x05, 0x00]).is_err(), "truncated entry");
    }
}
