//! The fuzz targets' entry points on random input, so CI exercises them
//! without a nightly toolchain (`crates/weir-kafka/fuzz` runs them with
//! libFuzzer).

use proptest::prelude::*;
use weir_kafka::fuzz;

/// A request frame body with a real API key and version in front of random
/// bytes, so inspection is reached more often than with bytes alone.
fn request_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![
            0i16, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 19, 20, 22, 32, 42, 68,
        ]),
        0i16..20,
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(key, version, rest)| {
            let mut b = key.to_be_bytes().to_vec();
            b.extend(version.to_be_bytes());
            b.extend([0, 0, 0, 1, 0xff, 0xff]);
            b.extend(rest);
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_frames_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        fuzz::frames(&data, 256);
    }

    #[test]
    fn random_requests_never_panic(body in request_body()) {
        let _ = fuzz::request(&body);
    }

    #[test]
    fn responses_and_their_truncations_never_panic(data in prop::collection::vec(any::<u8>(), 0..200)) {
        fuzz::response(&data);
    }
}

/// Requests built by kafka-protocol, then damaged byte by byte: inspection
/// and filtering either refuse them or keep their invariants.
#[test]
fn damaged_real_requests() {
    use bytes::BytesMut;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    let mut req = ProduceRequest::default();
    req.acks = -1;
    for name in ["orders", "secret", "logs"] {
        let mut t = produce_request::TopicProduceData::default();
        t.name = TopicName(StrBytes::from_static_str(name));
        let mut p = produce_request::PartitionProduceData::default();
        p.records = Some(bytes::Bytes::from_static(&[0; 70]));
        t.partition_data.push(p);
        req.topic_data.push(t);
    }
    for version in [3i16, 7, 9, 12] {
        let mut h = RequestHeader::default();
        h.request_api_version = version;
        let mut body = BytesMut::new();
        h.encode(&mut body, if version >= 9 { 2 } else { 1 })
            .unwrap();
        req.encode(&mut body, version).unwrap();
        assert!(fuzz::request(&body), "v{version} reaches filtering");
        for i in 0..body.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut damaged = body.to_vec();
                damaged[i] ^= flip;
                let _ = fuzz::request(&damaged);
            }
        }
    }
}
