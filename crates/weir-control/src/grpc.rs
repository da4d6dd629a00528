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
/// CSR in PEM is under 1 KiB). Requests are decoded before the caller's
/// token is checked, so they are kept small.
pub const MAX_CSR_REQUEST: usize = 64 * 1024;

/// Largest config-stream request the control plane decodes: it lists the
/// versions a reconnecting node holds (about 60 bytes per resource, so 16 MiB
/// covers over 200 000 resources).
pub const MAX_STREAM_REQUEST: usize = 16 * 1024 * 1024;

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

fn metadata<'a, T>(request: &'a Request<T>, name: &str) -> &'a str {
    request
        .metadata()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Authenticates a call from its metadata.
async fn authenticate<T>(shared: &Shared, request: &Request<T>) -> Result<Caller, AuthError> {
    let node = metadata(request, proto::NODE_HEADER);
    let authorization = metadata(request, "authorization");
    let token = authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))
        .unwrap_or("")
        .trim();
    shared.auth.authenticate(node, token).await
}

fn unauthenticated(e: &AuthError, what: &str, request_node: &str) -> Status {
    tracing::warn!(node = request_node, error = %e, "{what}: caller not authenticated");
    Status::unauthenticated(e.to_string())
}

struct CreateCertificate(Arc<Shared>);

impl UnaryService<CreateCertificateRequest> for CreateCertificate {
    type Response = CreateCertificateResponse;
    type Future = BoxFuture<Result<Response<CreateCertificateResponse>, Status>>;

    fn call(&mut self, request: Request<CreateCertificateRequest>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            let caller = match authenticate(&shared, &request).await {
                Ok(c) => c,
                Err(e) => {
                    shared.metrics.csr(csr::UNAUTHENTICATED);
                    let node = metadata(&request, proto::NODE_HEADER);
                    tracing::warn!(
                        node,
                        identity = %request.get_ref().identity,
                        error = %e,
                        "certificate signing request refused: caller not authenticated"
                    );
                    return Err(Status::unauthenticated(e.to_string()));
                }
            };
            match shared.ca.create_certificate(&caller, request.get_ref()) {
                Ok(response) => Ok(Response::new(response)),
                Err(Refusal::Denied(m)) => Err(Status::permission_denied(m)),
                Err(Refusal::Invalid(m)) => Err(Status::invalid_argument(m)),
                Err(Refusal::Internal(m)) => Err(Status::internal(m)),
            }
        })
    }
}

struct StreamConfig(Arc<Shared>);

impl ServerStreamingService<StreamConfigRequest> for StreamConfig {
    type Response = ConfigUpdate;
    type ResponseStream = UpdateStream;
    type Future = BoxFuture<Result<Response<UpdateStream>, Status>>;

    fn call(&mut self, request: Request<StreamConfigRequest>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            let caller = match authenticate(&shared, &request).await {
                Ok(c) => c,
                Err(e) => {
                    let node = metadata(&request, proto::NODE_HEADER).to_owned();
                    return Err(unauthenticated(&e, "config stream", &node));
                }
            };
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
        match request.uri().path() {
            proto::CREATE_CERTIFICATE_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default())
                    .apply_max_message_size_config(Some(MAX_CSR_REQUEST), None);
                Ok(grpc.unary(CreateCertificate(shared), request).await)
            }),
            proto::STREAM_CONFIG_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default())
                    .apply_max_message_size_config(Some(MAX_STREAM_REQUEST), None);
                Ok(grpc.server_streaming(StreamConfig(shared), request).await)
            }),
            _ => Box::pin(async move {
                Ok(Status::unimplemented(
                    "weir control serves CertificateService and ConfigService only",
                )
                .into_http())
            }),
        }
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
