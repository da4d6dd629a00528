//! Kafka wire protocol handling for weir's gateway.
//!
//! A [`KafkaProxy`] is one Kafka-aware listener: the gateway terminates TLS,
//! knows the client's SNI and [`Principal`](weir_core::kafka::Principal),
//! and calls [`KafkaProxy::serve`]. The session then
//!
//! - frames requests and responses ([`frame`]), closing a connection whose
//!   frames are too large, truncated or malformed with a counted reason;
//! - rewrites broker addresses in Metadata, FindCoordinator,
//!   DescribeCluster and the Produce/Fetch node endpoints to the gateway's
//!   names ([`HostMapper`]), learning the real ones in a shared
//!   [`BrokerRegistry`], so a client dials every broker through the gateway;
//! - narrows ApiVersions to the versions it can read ([`versions`]);
//! - authorizes requests per topic, group, transactional id and cluster
//!   as Kafka's authorizer does ([`Authorizer`]), answering denied parts
//!   with Kafka's error codes;
//! - counts requests, latency, bytes and records per topic ([`KafkaMetrics`]).
//!
//! See `docs/kafka-gateway-protocol.md` for what is decoded, rewritten,
//! authorized and passed through.
#![forbid(unsafe_code)]

pub mod authz;
pub mod error;
pub mod frame;
pub mod fuzz;
pub mod header;
pub mod inspect;
pub mod mapper;
pub mod metrics;
pub mod proxy;
pub mod records;
pub mod registry;
mod response;
mod session;
pub mod upstream;
pub mod versions;
mod wire;

pub use authz::{AllowAll, Authorizer, Decision};
pub use error::{SessionError, Side};
pub use frame::DEFAULT_MAX_FRAME_SIZE;
pub use mapper::{HostMapper, SniTarget};
pub use metrics::KafkaMetrics;
pub use proxy::{KafkaProxy, KafkaProxyConfig, Route};
pub use registry::{BrokerAddr, BrokerRegistry};
pub use upstream::{BoxStream, Connector, TcpConnector};
