//! Entry points for fuzzing (`crates/weir-kafka/fuzz`) and the property
//! tests that run the same code on stable: untrusted bytes through the
//! framing, header parsing, request inspection and filtering, and response
//! processing. None of them may panic; the checks inside are invariants.
#![doc(hidden)]

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use weir_core::kafka::Principal;

use crate::authz::{AllowAll, Authorizer, Decision, SessionAuthz};
use crate::error::Side;
use crate::frame::FrameReader;
use crate::header::parse_request_header;
use crate::inspect::{filter_request, inspect, metadata_as_v4, METADATA_NO_AUTO_CREATE};
use crate::mapper::HostMapper;
use crate::metrics::{KafkaMetrics, TopicMeter};
use crate::registry::BrokerRegistry;
use crate::response::{process, Denied, ResponseCtx, ResponseWork};
use crate::versions::is_inspected;

/// Reads every frame of `data` with a `max`-byte limit (synchronously: a
/// byte slice is always ready).
pub fn frames(data: &[u8], max: usize) {
    let mut reader = FrameReader::new(data, Side::Client, max);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        let fut = reader.next();
        let mut fut = std::pin::pin!(fut);
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(Some(frame))) => {
                assert!(frame.body().len() <= max);
                let _ = request(frame.body());
            }
            Poll::Ready(Ok(None)) | Poll::Ready(Err(_)) => return,
            Poll::Pending => unreachable!("a byte slice is always ready"),
        }
    }
}

/// One request frame body through the request path: header, inspection,
/// and filtering with every other element dropped; the filtered request
/// must inspect to exactly the kept elements. Returns whether the request
/// got as far as filtering.
pub fn request(body: &[u8]) -> bool {
    let Ok(hdr) = parse_request_header(body) else {
        return false;
    };
    let (Some(api), Some(start)) = (hdr.api, hdr.body_offset) else {
        return false;
    };
    if !is_inspected(api, hdr.api_version) {
        return false;
    }
    let flexible = hdr.flexible();
    let Ok(ins) = inspect(api, hdr.api_version, flexible, body, start) else {
        return false;
    };
    let Some(entries) = &ins.entries else {
        return false;
    };
    let keep: Vec<bool> = (0..entries.items.len()).map(|i| i % 2 == 0).collect();
    let body_bytes = Bytes::copy_from_slice(body);
    let patch = ins.metadata.as_ref().and_then(|m| m.auto_create_at);
    let filtered = filter_request(&body_bytes, entries, &keep, patch);
    let again = inspect(api, hdr.api_version, flexible, &filtered[4..], start)
        .expect("a filtered request parses");
    let kept: Vec<&[u8]> = entries
        .items
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(e, _)| &body[e.range.clone()])
        .collect();
    let again_items: Vec<&[u8]> = again
        .entries
        .as_ref()
        .map(|l| {
            l.items
                .iter()
                .map(|e| &filtered[4..][e.range.clone()])
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        kept, again_items,
        "filtering keeps exactly the kept elements"
    );
    if let Some(m) = &again.metadata {
        assert!(m.auto_create_at.is_none(), "auto-creation was switched off");
    }
    if api == ApiKey::Metadata && hdr.api_version < METADATA_NO_AUTO_CREATE {
        // v0-v3 have no flag to patch: forwarded as v4 with it off, the
        // same topics, and a header that still reads.
        let upgraded = metadata_as_v4(&filtered, false);
        let hdr4 = parse_request_header(&upgraded[4..]).expect("a v4 header parses");
        assert_eq!(hdr4.api_version, METADATA_NO_AUTO_CREATE);
        assert_eq!(hdr4.correlation_id, hdr.correlation_id);
        let start4 = hdr4.body_offset.expect("Metadata has a body");
        let v4 = inspect(api, METADATA_NO_AUTO_CREATE, false, &upgraded[4..], start4)
            .expect("the upgraded request parses");
        let v4_items: Vec<&[u8]> = v4
            .entries
            .as_ref()
            .map(|l| {
                l.items
                    .iter()
                    .map(|e| &upgraded[4..][e.range.clone()])
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(kept, v4_items, "the upgrade keeps the topics");
        assert!(
            !v4.metadata.is_some_and(|m| m.auto_creates()),
            "auto-creation off"
        );
    }
    true
}

/// Denies names starting with `s`.
struct DenyS;

impl Authorizer for DenyS {
    fn authorize(
        &self,
        _: &Principal,
        _: weir_core::kafka::ResourceType,
        name: &str,
        _: weir_core::kafka::Operation,
    ) -> Decision {
        if name.starts_with('s') {
            Decision::deny("fuzz")
        } else {
            Decision::allow("fuzz")
        }
    }
}

/// Small structured input taken from fuzz bytes.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn name(&mut self) -> StrBytes {
        let n = (self.byte() % 6) as usize;
        let s: String = (0..n).map(|_| (b'a' + self.byte() % 26) as char).collect();
        StrBytes::from_string(s)
    }
}

/// Builds a well-formed response from `data`, and runs it and its
/// truncations through response processing (rewriting, filtering, merging).
/// Responses come from brokers; kafka-protocol's decoders pre-allocate from
/// declared counts, so arbitrary bytes are not decoded here (see
/// docs/kafka-gateway-protocol.md).
pub fn response(data: &[u8]) {
    let mut input = Input(data);
    let which = input.byte() % 5;
    let (api, range) = match which {
        0 => (ApiKey::Metadata, (0, 13)),
        1 => (ApiKey::FindCoordinator, (0, 6)),
        2 => (ApiKey::Produce, (3, 13)),
        3 => (ApiKey::ApiVersions, (0, 4)),
        _ => (ApiKey::DescribeCluster, (0, 2)),
    };
    let version = range.0 + (input.byte() as i16 % (range.1 - range.0 + 1));
    let mut body = BytesMut::new();
    let encoded = match api {
        ApiKey::Metadata => {
            let mut r = MetadataResponse::default();
            for _ in 0..input.byte() % 4 {
                let mut b = metadata_response::MetadataResponseBroker::default();
                b.node_id = BrokerId(input.byte() as i32 - 8);
                b.host = input.name();
                b.port = input.byte() as i32 * 300 - 1000;
                r.brokers.push(b);
            }
            for _ in 0..input.byte() % 4 {
                let mut t = metadata_response::MetadataResponseTopic::default();
                t.name = Some(TopicName(input.name()));
                r.topics.push(t);
            }
            r.encode(&mut body, version)
        }
        ApiKey::FindCoordinator => {
            let mut r = FindCoordinatorResponse::default();
            r.node_id = BrokerId(input.byte() as i32);
            r.host = input.name();
            for _ in 0..input.byte() % 3 {
                let mut c = find_coordinator_response::Coordinator::default();
                c.key = input.name();
                c.node_id = BrokerId(input.byte() as i32);
                c.host = input.name();
                r.coordinators.push(c);
            }
            r.encode(&mut body, version)
        }
        ApiKey::Produce => {
            let mut r = ProduceResponse::default();
            if version >= 10 {
                for _ in 0..input.byte() % 3 {
                    let mut e = produce_response::NodeEndpoint::default();
                    e.node_id = BrokerId(input.byte() as i32);
                    e.host = input.name();
                    r.node_endpoints.push(e);
                }
            }
            r.encode(&mut body, version)
        }
        ApiKey::ApiVersions => {
            let mut r = ApiVersionsResponse::default();
            for _ in 0..input.byte() % 6 {
                let mut k = api_versions_response::ApiVersion::default();
                k.api_key = input.byte() as i16 % 80;
                k.min_version = input.byte() as i16 % 20;
                k.max_version = input.byte() as i16 % 20;
                r.api_keys.push(k);
            }
            r.encode(&mut body, version)
        }
        _ => {
            let mut r = DescribeClusterResponse::default();
            for _ in 0..input.byte() % 3 {
                let mut b = describe_cluster_response::DescribeClusterBroker::default();
                b.broker_id = BrokerId(input.byte() as i32);
                b.host = input.name();
                r.brokers.push(b);
            }
            r.encode(&mut body, version)
        }
    };
    if encoded.is_err() {
        return;
    }
    let mut work = ResponseWork::new(api, version);
    work.enforce = input.byte() % 2 == 0;
    work.all_topics = input.byte() % 2 == 0;
    if api != ApiKey::ApiVersions
        && api != ApiKey::DescribeCluster
        && (api != ApiKey::FindCoordinator || version >= 4)
    {
        for _ in 0..input.byte() % 3 {
            work.denied.push(Denied {
                name: input.name(),
                id: [input.byte(); 16],
                partitions: vec![input.byte() as i32],
                code: 29,
                kind: 0,
            });
        }
    }
    let mapper =
        HostMapper::new("kafka.example.com", "b{id}.example.com", 9093).expect("valid names");
    let registry = BrokerRegistry::new(vec![]);
    let authorizer: Arc<dyn Authorizer> = if input.byte() % 2 == 0 {
        Arc::new(DenyS)
    } else {
        Arc::new(AllowAll)
    };
    let mut authz = SessionAuthz::new(authorizer, Principal::Anonymous);
    let mut fetched = TopicMeter::fetched(Arc::new(KafkaMetrics::unregistered()));
    let body = body.freeze();
    let cut = input.byte() as usize;
    for b in [body.clone(), body.slice(..body.len().saturating_sub(cut))] {
        let mut ctx = ResponseCtx {
            mapper: &mapper,
            registry: &registry,
            authz: &mut authz,
            fetched: &mut fetched,
        };
        let _ = process(&work, Some(b), &mut ctx);
    }
    // Whatever the gateway rewrote names only gateway hosts.
    if api == ApiKey::Metadata {
        let mut ctx = ResponseCtx {
            mapper: &mapper,
            registry: &registry,
            authz: &mut authz,
            fetched: &mut fetched,
        };
        if let Ok(Some(out)) = process(&work, Some(body.clone()), &mut ctx) {
            let mut out = out.freeze();
            let r = <MetadataResponse as kafka_protocol::protocol::Decodable>::decode(
                &mut out, version,
            )
            .expect("the gateway's own encoding decodes");
            for b in &r.brokers {
                assert_eq!(b.host.to_string(), mapper.broker_host(b.node_id.0));
                assert_eq!(b.port, 9093);
            }
        }
    }
}
