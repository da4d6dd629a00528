//! Kafka wire protocol handling for the gateway.
#![forbid(unsafe_code)]
