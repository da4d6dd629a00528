//! The gateway: TLS/SNI listeners and routes.
#![forbid(unsafe_code)]
