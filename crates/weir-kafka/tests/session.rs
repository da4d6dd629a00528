//! The session against a scripted broker: ordering, pipelining, address
//! rewriting, ApiVersions capping, authorization (filtered, merged and
//! synthesized responses), bad input.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use weir_core::kafka::{Operation, ResourceType};
use weir_kafka::{AllowAll, DEFAULT_MAX_FRAME_SIZE};

fn allow_all() -> Arc<weir_kafka::KafkaProxy> {
    proxy_with(Arc::new(AllowAll), vec![]).0
}

fn deny(list: Vec<(ResourceType, &'static str, Operation)>) -> Arc<weir_kafka::KafkaProxy> {
    proxy_with(Arc::new(TestAuthz { deny: list }), vec![]).0
}

fn metadata_response(topics: &[&'static str]) -> MetadataResponse {
    let mut r = MetadataResponse::default();
    for (id, port) in [(1, 19092), (2, 19093)] {
        let mut b = metadata_response::MetadataResponseBroker::default();
        b.node_id = BrokerId(id);
        b.host = StrBytes::from_string(format!("10.1.0.{id}"));
        b.port = port;
        r.brokers.push(b);
    }
    r.controller_id = BrokerId(1);
    for name in topics {
        let mut t = metadata_response::MetadataResponseTopic::default();
        t.name = Some(topic(name));
        let mut p = metadata_response::MetadataResponsePartition::default();
        p.leader_id = BrokerId(2);
        t.partitions.push(p);
        r.topics.push(t);
    }
    r
}

fn metadata_request(topics: Option<&[&'static str]>) -> MetadataRequest {
    let mut m = MetadataRequest::default();
    m.topics = topics.map(|ts| {
        ts.iter()
            .map(|n| {
                let mut t = metadata_request::MetadataRequestTopic::default();
                t.name = Some(topic(n));
                t
            })
            .collect()
    });
    m.allow_auto_topic_creation = true;
    m
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_rewritten_brokers() {
    let mut h = harness(allow_all(), DEFAULT_MAX_FRAME_SIZE);
    // Three requests back to back, before any response.
    send(
        &mut h.client,
        &request_frame(12, 1, &metadata_request(None)),
    )
    .await;
    let mut av = ApiVersionsRequest::default();
    av.client_software_name = StrBytes::from_static_str("test");
    av.client_software_version = StrBytes::from_static_str("1");
    send(&mut h.client, &request_frame(3, 2, &av)).await;
    // An API key kafka-protocol does not know: passes byte for byte.
    let unknown = Bytes::from_static(&[
        0, 0, 0, 12, 0x03, 0xe7, 0, 0, 0, 0, 0, 3, 0xde, 0xad, 0xbe, 0xef,
    ]);
    send(&mut h.client, &unknown).await;

    for expect in [1, 2, 3] {
        let f = next(&mut h.broker_frames).await;
        let corr = i32::from_be_bytes(f.body()[4..8].try_into().unwrap());
        assert_eq!(corr, expect);
        if expect == 3 {
            assert_eq!(f.wire(), &unknown);
        }
    }
    send(
        &mut h.broker,
        &response_frame(12, 1, &metadata_response(&["orders"])),
    )
    .await;
    let mut avr = ApiVersionsResponse::default();
    for (k, min, max) in [(0, 0, 11), (1, 0, 17), (3, 0, 12), (32, 0, 4), (60, 0, 1)] {
        let mut a = api_versions_response::ApiVersion::default();
        a.api_key = k;
        a.min_version = min;
        a.max_version = max;
        avr.api_keys.push(a);
    }
    // ApiVersions response headers are always v0.
    let mut frame = bytes::BytesMut::new();
    let mut body = bytes::BytesMut::new();
    kafka_protocol::protocol::Encodable::encode(&avr, &mut body, 3).unwrap();
    frame.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
    frame.extend_from_slice(&2i32.to_be_bytes());
    frame.extend_from_slice(&body);
    send(&mut h.broker, &frame.freeze()).await;
    let unknown_resp = Bytes::from_static(&[0, 0, 0, 6, 0, 0, 0, 3, 0xca, 0xfe]);
    send(&mut h.broker, &unknown_resp).await;

    let f = next(&mut h.client_frames).await;
    let (corr, md): (i32, MetadataResponse) = decode_response(f.body(), 12);
    assert_eq!(corr, 1);
    let brokers: Vec<(i32, String, i32)> = md
        .brokers
        .iter()
        .map(|b| (b.node_id.0, b.host.to_string(), b.port))
        .collect();
    assert_eq!(
        brokers,
        vec![
            (1, "b1-kafka.example.com".to_string(), PORT as i32),
            (2, "b2-kafka.example.com".to_string(), PORT as i32)
        ]
    );
    assert_eq!(md.topics.len(), 1);

    let f = next(&mut h.client_frames).await;
    let corr = i32::from_be_bytes(f.body()[..4].try_into().unwrap());
    assert_eq!(corr, 2);
    let mut b = Bytes::copy_from_slice(&f.body()[4..]);
    let avr: ApiVersionsResponse = kafka_protocol::protocol::Decodable::decode(&mut b, 3).unwrap();
    let got: Vec<(i16, i16, i16)> = avr
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect();
    assert_eq!(
        got,
        vec![(0, 3, 11), (1, 4, 17), (3, 0, 12), (32, 1, 4), (60, 0, 1)]
    );

    let f = next(&mut h.client_frames).await;
    assert_eq!(f.wire(), &unknown_resp);
}

#[tokio::test]
async fn api_versions_above_what_the_gateway_reads_is_answered_v0_unsupported() {
    let mut h = harness(allow_all(), DEFAULT_MAX_FRAME_SIZE);
    send(
        &mut h.client,
        &request_frame(4, 7, &ApiVersionsRequest::default()),
    )
    .await;
    // Hand-made v9 request: header v2 (client id, no tags), empty body.
    let v9 = Bytes::from_static(&[0, 0, 0, 11, 0, 18, 0, 9, 0, 0, 0, 8, 0xff, 0xff, 0]);
    send(&mut h.client, &v9).await;
    // v4 is forwarded; answer it.
    let f = next(&mut h.broker_frames).await;
    assert_eq!(&f.body()[..4], &[0, 18, 0, 4]);
    let mut avr = ApiVersionsResponse::default();
    avr.error_code = 0;
    let mut frame = bytes::BytesMut::new();
    let mut body = bytes::BytesMut::new();
    kafka_protocol::protocol::Encodable::encode(&avr, &mut body, 4).unwrap();
    frame.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
    frame.extend_from_slice(&7i32.to_be_bytes());
    frame.extend_from_slice(&body);
    send(&mut h.broker, &frame.freeze()).await;
    let _ = next(&mut h.client_frames).await;
    let f = next(&mut h.client_frames).await;
    assert_eq!(i32::from_be_bytes(f.body()[..4].try_into().unwrap()), 8);
    let mut b = Bytes::copy_from_slice(&f.body()[4..]);
    let r: ApiVersionsResponse = kafka_protocol::protocol::Decodable::decode(&mut b, 0).unwrap();
    assert_eq!(r.error_code, 35);
    assert_eq!((r.api_keys[0].api_key, r.api_keys[0].max_version), (18, 4));
}

#[tokio::test]
async fn metadata_listing_leaves_out_denied_topics_and_errors_requested_ones() {
    let mut h = harness(deny(vec![]), DEFAULT_MAX_FRAME_SIZE);
    // Full listing.
    send(
        &mut h.client,
        &request_frame(12, 1, &metadata_request(None)),
    )
    .await;
    let _ = next(&mut h.broker_frames).await;
    send(
        &mut h.broker,
        &response_frame(12, 1, &metadata_response(&["orders", "secret-a", "logs"])),
    )
    .await;
    let f = next(&mut h.client_frames).await;
    let (_, md): (i32, MetadataResponse) = decode_response(f.body(), 12);
    let names: Vec<String> = md
        .topics
        .iter()
        .map(|t| t.name.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["orders", "logs"]);

    // Explicit request for an allowed and a denied topic: the broker sees
    // only the allowed one, the client gets 29 for the other.
    send(
        &mut h.client,
        &request_frame(12, 2, &metadata_request(Some(&["orders", "secret-b"]))),
    )
    .await;
    let f = next(&mut h.broker_frames).await;
    let (_, req): (RequestHeader, MetadataRequest) = decode_request(f.body());
    let asked: Vec<String> = req
        .topics
        .unwrap()
        .iter()
        .map(|t| t.name.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(asked, vec!["orders"]);
    send(
        &mut h.broker,
        &response_frame(12, 2, &metadata_response(&["orders"])),
    )
    .await;
    let f = next(&mut h.client_frames).await;
    let (corr, md): (i32, MetadataResponse) = decode_response(f.body(), 12);
    assert_eq!(corr, 2);
    let got: Vec<(String, i16)> = md
        .topics
        .iter()
        .map(|t| (t.name.as_ref().unwrap().to_string(), t.error_code))
        .collect();
    assert_eq!(got, vec![("orders".into(), 0), ("secret-b".into(), 29)]);
}

#[tokio::test]
async fn auto_creation_is_switched_off_without_create_permission() {
    // Neither Create on the topic nor Create on the cluster.
    let mut h = harness(
        deny(vec![
            (ResourceType::Topic, "new-topic", Operation::Create),
            (ResourceType::Cluster, "kafka-cluster", Operation::Create),
        ]),
        DEFAULT_MAX_FRAME_SIZE,
    );
    send(
        &mut h.client,
        &request_frame(9, 1, &metadata_request(Some(&["new-topic"]))),
    )
    .await;
    let f = next(&mut h.broker_frames).await;
    let (_, req): (RequestHeader, MetadataRequest) = decode_request(f.body());
    assert!(!req.allow_auto_topic_creation);
    assert_eq!(req.topics.unwrap().len(), 1);
    // The broker, told not to create it, answers "unknown"; the client gets
    // what Kafka answers for a topic it may not create: 29.
    let mut resp = metadata_response(&[]);
    let mut t = metadata_response::MetadataResponseTopic::default();
    t.name = Some(topic("new-topic"));
    t.error_code = 3;
    resp.topics.push(t);
    send(&mut h.broker, &response_frame(9, 1, &resp)).await;
    let f = next(&mut h.client_frames).await;
    let (_, md): (i32, MetadataResponse) = decode_response(f.body(), 9);
    assert_eq!(md.topics.len(), 1);
    assert_eq!(md.topics[0].error_code, 29);

    // A topic that exists is answered as it is, Create or not; and without
    // allow_auto_topic_creation an unknown topic stays unknown.
    let mut req = metadata_request(Some(&["new-topic", "orders"]));
    req.allow_auto_topic_creation = false;
    send(&mut h.client, &request_frame(9, 2, &req)).await;
    let _ = next(&mut h.broker_frames).await;
    let mut resp = metadata_response(&["orders"]);
    let mut t = metadata_response::MetadataResponseTopic::default();
    t.name = Some(topic("new-topic"));
    t.error_code = 3;
    resp.topics.push(t);
    send(&mut h.broker, &response_frame(9, 2, &resp)).await;
    let f = next(&mut h.client_frames).await;
    let (_, md): (i32, MetadataResponse) = decode_response(f.body(), 9);
    let got: Vec<(String, i16)> = md
        .topics
        .iter()
        .map(|t| (t.name.as_ref().unwrap().to_string(), t.error_code))
        .collect();
    assert_eq!(got, vec![("orders".into(), 0), ("new-topic".into(), 3)]);
}

fn create_topics(names: &[&'static str]) -> CreateTopicsRequest {
    let mut r = CreateTopicsRequest::default();
    r.timeout_ms = 1000;
    for name in names {
        let mut t = create_topics_request::CreatableTopic::default();
        t.name = topic(name);
        t.num_partitions = 1;
        t.replication_factor = 1;
        r.topics.push(t);
    }
    r
}

/// Kafka's CreateTopics and Metadata auto-creation ask Create on the
/// cluster first: if allowed, every topic may be created without Create on
/// the topic.
#[tokio::test]
async fn create_on_the_cluster_allows_creating_every_topic() {
    let mut h = harness(
        deny(vec![
            (ResourceType::Topic, "new-topic", Operation::Create),
            (ResourceType::Topic, "other", Operation::Create),
        ]),
        DEFAULT_MAX_FRAME_SIZE,
    );
    send(
        &mut h.client,
        &request_frame(9, 1, &metadata_request(Some(&["new-topic"]))),
    )
    .await;
    let (_, req): (RequestHeader, MetadataRequest) =
        decode_request(next(&mut h.broker_frames).await.body());
    assert!(req.allow_auto_topic_creation);
    send(
        &mut h.broker,
        &response_frame(9, 1, &metadata_response(&["new-topic"])),
    )
    .await;
    next(&mut h.client_frames).await;

    send(
        &mut h.client,
        &request_frame(5, 2, &create_topics(&["new-topic", "other"])),
    )
    .await;
    let (_, fwd): (RequestHeader, CreateTopicsRequest) =
        decode_request(next(&mut h.broker_frames).await.body());
    let names: Vec<&str> = fwd.topics.iter().map(|t| t.name.0.as_str()).collect();
    assert_eq!(names, ["new-topic", "other"]);
}

#[tokio::test]
async fn without_cluster_create_each_topic_needs_create() {
    let mut h = harness(
        deny(vec![
            (ResourceType::Topic, "new-topic", Operation::Create),
            (ResourceType::Cluster, "kafka-cluster", Operation::Create),
        ]),
        DEFAULT_MAX_FRAME_SIZE,
    );
    send(
        &mut h.client,
        &request_frame(5, 1, &create_topics(&["new-topic", "other"])),
    )
    .await;
    let (_, fwd): (RequestHeader, CreateTopicsRequest) =
        decode_request(next(&mut h.broker_frames).await.body());
    let names: Vec<&str> = fwd.topics.iter().map(|t| t.name.0.as_str()).collect();
    assert_eq!(names, ["other"]);
    let mut resp = CreateTopicsResponse::default();
    let mut t = create_topics_response::CreatableTopicResult::default();
    t.name = topic("other");
    resp.topics.push(t);
    send(&mut h.broker, &response_frame(5, 1, &resp)).await;
    let (_, got): (i32, CreateTopicsResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 5);
    let mut codes: Vec<(&str, i16)> = got
        .topics
        .iter()
        .map(|t| (t.name.0.as_str(), t.error_code))
        .collect();
    codes.sort();
    assert_eq!(codes, [("new-topic", 29), ("other", 0)]);
}

/// An authorizer that denies IdempotentWrite on the cluster but allows
/// idempotent producers (as weir's policy engine does for a principal with
/// Write on some topic, KIP-679).
struct TopicWriters;

impl weir_kafka::Authorizer for TopicWriters {
    fn authorize(
        &self,
        _: &weir_core::kafka::Principal,
        resource: ResourceType,
        _: &str,
        op: Operation,
    ) -> weir_kafka::Decision {
        if (resource, op) == (ResourceType::Cluster, Operation::IdempotentWrite) {
            weir_kafka::Decision::deny("no IdempotentWrite")
        } else {
            weir_kafka::Decision::allow("allowed")
        }
    }

    fn authorize_idempotent_producer(
        &self,
        _: &weir_core::kafka::Principal,
    ) -> weir_kafka::Decision {
        weir_kafka::Decision::allow("Write on a topic")
    }
}

#[tokio::test]
async fn init_producer_id_asks_the_idempotent_producer_question() {
    let (proxy, _) = proxy_with(Arc::new(TopicWriters), vec![]);
    let mut h = harness(proxy, DEFAULT_MAX_FRAME_SIZE);
    let mut r = InitProducerIdRequest::default();
    r.transactional_id = None;
    r.transaction_timeout_ms = 60_000;
    send(&mut h.client, &request_frame(4, 1, &r)).await;
    // Forwarded, not answered CLUSTER_AUTHORIZATION_FAILED.
    let (_, fwd): (RequestHeader, InitProducerIdRequest) =
        decode_request(next(&mut h.broker_frames).await.body());
    assert_eq!(fwd.transactional_id, None);
    let mut resp = InitProducerIdResponse::default();
    resp.producer_id = ProducerId(7);
    send(&mut h.broker, &response_frame(4, 1, &resp)).await;
    let (c, got): (i32, InitProducerIdResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 4);
    assert_eq!((c, got.error_code, got.producer_id.0), (1, 0, 7));
}

#[tokio::test]
async fn mixed_produce_is_split_and_merged() {
    let mut h = harness(deny(vec![]), DEFAULT_MAX_FRAME_SIZE);
    let recs = records(3, 50);
    let req = produce(-1, &[("orders", &[0, 1]), ("secret", &[0, 2])], &recs);
    send(&mut h.client, &request_frame(9, 11, &req)).await;
    let f = next(&mut h.broker_frames).await;
    let (hdr, fwd): (RequestHeader, ProduceRequest) = decode_request(f.body());
    assert_eq!(hdr.correlation_id, 11);
    assert_eq!(hdr.client_id.as_deref(), Some("test-client"));
    assert_eq!(fwd.topic_data.len(), 1);
    assert_eq!(fwd.topic_data[0].name.0.as_str(), "orders");
    assert_eq!(
        fwd.topic_data[0].partition_data[1].records.as_ref(),
        Some(&recs)
    );

    let mut resp = ProduceResponse::default();
    let mut t = produce_response::TopicProduceResponse::default();
    t.name = topic("orders");
    for p in [0, 1] {
        let mut pr = produce_response::PartitionProduceResponse::default();
        pr.index = p;
        pr.base_offset = 100;
        t.partition_responses.push(pr);
    }
    resp.responses.push(t);
    send(&mut h.broker, &response_frame(9, 11, &resp)).await;
    let f = next(&mut h.client_frames).await;
    let (corr, got): (i32, ProduceResponse) = decode_response(f.body(), 9);
    assert_eq!(corr, 11);
    let flat: Vec<(String, i32, i16)> = got
        .responses
        .iter()
        .flat_map(|t| {
            t.partition_responses
                .iter()
                .map(|p| (t.name.0.to_string(), p.index, p.error_code))
        })
        .collect();
    assert_eq!(
        flat,
        vec![
            ("orders".into(), 0, 0),
            ("orders".into(), 1, 0),
            ("secret".into(), 0, 29),
            ("secret".into(), 2, 29)
        ]
    );
}

#[tokio::test]
async fn fully_denied_requests_are_answered_in_order_without_the_broker() {
    let mut h = harness(deny(vec![]), DEFAULT_MAX_FRAME_SIZE);
    let recs = records(1, 10);
    send(
        &mut h.client,
        &request_frame(7, 1, &produce(1, &[("orders", &[0])], &recs)),
    )
    .await;
    send(
        &mut h.client,
        &request_frame(7, 2, &produce(1, &[("secret", &[0, 1])], &recs)),
    )
    .await;
    send(
        &mut h.client,
        &request_frame(1, 3, &metadata_request(Some(&["orders"]))),
    )
    .await;
    // The broker sees 1 and 3 only.
    let f1 = next(&mut h.broker_frames).await;
    let f3 = next(&mut h.broker_frames).await;
    assert_eq!(i32::from_be_bytes(f1.body()[4..8].try_into().unwrap()), 1);
    assert_eq!(i32::from_be_bytes(f3.body()[4..8].try_into().unwrap()), 3);
    // Answer 1 late: response 2 (made by the gateway) must wait for it.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut pr = ProduceResponse::default();
    let mut t = produce_response::TopicProduceResponse::default();
    t.name = topic("orders");
    t.partition_responses.push(Default::default());
    pr.responses.push(t);
    send(&mut h.broker, &response_frame(7, 1, &pr)).await;
    send(
        &mut h.broker,
        &response_frame(1, 3, &metadata_response(&["orders"])),
    )
    .await;

    let (c1, _): (i32, ProduceResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 7);
    let (c2, denied): (i32, ProduceResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 7);
    let (c3, _): (i32, MetadataResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 1);
    assert_eq!((c1, c2, c3), (1, 2, 3));
    let codes: Vec<(i32, i16)> = denied.responses[0]
        .partition_responses
        .iter()
        .map(|p| (p.index, p.error_code))
        .collect();
    assert_eq!(codes, vec![(0, 29), (1, 29)]);
    assert_eq!(denied.responses[0].name.0.as_str(), "secret");
}

#[tokio::test]
async fn acks_zero_produce_queues_no_response() {
    let mut h = harness(allow_all(), DEFAULT_MAX_FRAME_SIZE);
    let recs = records(2, 10);
    send(
        &mut h.client,
        &request_frame(8, 1, &produce(0, &[("orders", &[0])], &recs)),
    )
    .await;
    send(
        &mut h.client,
        &request_frame(8, 2, &metadata_request(Some(&[]))),
    )
    .await;
    let _ = next(&mut h.broker_frames).await;
    let _ = next(&mut h.broker_frames).await;
    send(
        &mut h.broker,
        &response_frame(8, 2, &metadata_response(&[])),
    )
    .await;
    let (corr, _): (i32, MetadataResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 8);
    assert_eq!(corr, 2);
}

#[tokio::test]
async fn acks_zero_produce_to_a_denied_topic_closes_like_a_broker() {
    let mut h = harness(deny(vec![]), DEFAULT_MAX_FRAME_SIZE);
    let recs = records(2, 10);
    send(
        &mut h.client,
        &request_frame(
            8,
            1,
            &produce(0, &[("orders", &[0]), ("secret", &[0])], &recs),
        ),
    )
    .await;
    let f = next(&mut h.broker_frames).await;
    let (_, fwd): (RequestHeader, ProduceRequest) = decode_request(f.body());
    assert_eq!(fwd.topic_data.len(), 1);
    let err = ended(h.session).await;
    assert_eq!(err.reason(), "denied_acks0");
}

#[tokio::test]
async fn group_and_cluster_denials_use_their_codes() {
    let mut h = harness(
        deny(vec![
            (ResourceType::Group, "g-denied", Operation::Read),
            (
                ResourceType::Cluster,
                "kafka-cluster",
                Operation::IdempotentWrite,
            ),
        ]),
        DEFAULT_MAX_FRAME_SIZE,
    );
    let mut join = JoinGroupRequest::default();
    join.group_id = GroupId(StrBytes::from_static_str("g-denied"));
    send(&mut h.client, &request_frame(5, 1, &join)).await;
    let mut commit = OffsetCommitRequest::default();
    commit.group_id = GroupId(StrBytes::from_static_str("g-denied"));
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = topic("orders");
    let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
    p.partition_index = 4;
    t.partitions.push(p);
    commit.topics.push(t);
    send(&mut h.client, &request_frame(8, 2, &commit)).await;
    send(
        &mut h.client,
        &request_frame(4, 3, &{
            let mut r = InitProducerIdRequest::default();
            r.transactional_id = None;
            r
        }),
    )
    .await;
    let mut fc = FindCoordinatorRequest::default();
    fc.key_type = 0;
    fc.coordinator_keys = vec![
        StrBytes::from_static_str("g-ok"),
        StrBytes::from_static_str("secret-g"),
    ];
    send(&mut h.client, &request_frame(4, 4, &fc)).await;

    let (c, r): (i32, JoinGroupResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 5);
    assert_eq!((c, r.error_code), (1, 30));
    let (c, r): (i32, OffsetCommitResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 8);
    assert_eq!(
        (
            c,
            r.topics[0].name.0.as_str(),
            r.topics[0].partitions[0].partition_index,
            r.topics[0].partitions[0].error_code
        ),
        (2, "orders", 4, 30)
    );
    let (c, r): (i32, InitProducerIdResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 4);
    assert_eq!((c, r.error_code, r.producer_id.0), (3, 31, -1));

    // FindCoordinator v4 with one allowed and one denied key: split and merged.
    let f = next(&mut h.broker_frames).await;
    let (_, fwd): (RequestHeader, FindCoordinatorRequest) = decode_request(f.body());
    assert_eq!(
        fwd.coordinator_keys,
        vec![StrBytes::from_static_str("g-ok")]
    );
    let mut resp = FindCoordinatorResponse::default();
    let mut c = find_coordinator_response::Coordinator::default();
    c.key = StrBytes::from_static_str("g-ok");
    c.node_id = BrokerId(2);
    c.host = StrBytes::from_static_str("10.1.0.2");
    c.port = 19093;
    resp.coordinators.push(c);
    send(&mut h.broker, &response_frame(4, 4, &resp)).await;
    let (c, r): (i32, FindCoordinatorResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 4);
    assert_eq!(c, 4);
    let got: Vec<(String, i32, String, i32, i16)> = r
        .coordinators
        .iter()
        .map(|c| {
            (
                c.key.to_string(),
                c.node_id.0,
                c.host.to_string(),
                c.port,
                c.error_code,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "g-ok".into(),
                2,
                "b2-kafka.example.com".into(),
                PORT as i32,
                0
            ),
            ("secret-g".into(), -1, "".into(), -1, 30)
        ]
    );
}

#[tokio::test]
async fn transactional_produce_denied_by_transactional_id() {
    let mut h = harness(
        deny(vec![(
            ResourceType::TransactionalId,
            "tx-1",
            Operation::Write,
        )]),
        DEFAULT_MAX_FRAME_SIZE,
    );
    let mut req = produce(-1, &[("orders", &[0, 1])], &records(1, 10));
    req.transactional_id = Some(TransactionalId(StrBytes::from_static_str("tx-1")));
    send(&mut h.client, &request_frame(9, 5, &req)).await;
    let (c, r): (i32, ProduceResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 9);
    assert_eq!(c, 5);
    let codes: Vec<i16> = r.responses[0]
        .partition_responses
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(codes, vec![53, 53]);
}

#[tokio::test]
async fn fetch_of_a_denied_topic_is_answered_per_partition() {
    let mut h = harness(deny(vec![]), DEFAULT_MAX_FRAME_SIZE);
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.session_epoch = -1;
    for name in ["orders", "secret"] {
        let mut t = fetch_request::FetchTopic::default();
        t.topic = topic(name);
        let mut p = fetch_request::FetchPartition::default();
        p.partition = 3;
        t.partitions.push(p);
        req.topics.push(t);
    }
    send(&mut h.client, &request_frame(11, 9, &req)).await;
    let f = next(&mut h.broker_frames).await;
    let (_, fwd): (RequestHeader, FetchRequest) = decode_request(f.body());
    assert_eq!(fwd.topics.len(), 1);
    let mut resp = FetchResponse::default();
    let mut t = fetch_response::FetchableTopicResponse::default();
    t.topic = topic("orders");
    let mut p = fetch_response::PartitionData::default();
    p.partition_index = 3;
    p.records = Some(records(4, 20));
    t.partitions.push(p);
    resp.responses.push(t);
    send(&mut h.broker, &response_frame(11, 9, &resp)).await;
    let (_, r): (i32, FetchResponse) = decode_response(next(&mut h.client_frames).await.body(), 11);
    let got: Vec<(String, i16)> = r
        .responses
        .iter()
        .map(|t| (t.topic.0.to_string(), t.partitions[0].error_code))
        .collect();
    assert_eq!(got, vec![("orders".into(), 0), ("secret".into(), 29)]);
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_the_session() {
    let (proxy, _) = proxy_with_max_frame(Arc::new(AllowAll), 1000);
    let mut h = harness(proxy, 1000);
    send(&mut h.client, &Bytes::from_static(&[0, 0, 0x10, 0])).await;
    let err = ended(h.session).await;
    assert_eq!(err.reason(), "frame_too_large");
}

#[tokio::test]
async fn a_malformed_request_closes_the_session() {
    let mut h = harness(deny(vec![]), DEFAULT_MAX_FRAME_SIZE);
    // Produce v7 whose topic array claims two billion entries.
    let mut body = vec![0, 0, 0, 7, 0, 0, 0, 1, 0xff, 0xff];
    body.extend_from_slice(&[0xff, 0xff, 0, 1, 0, 0, 0x03, 0xe8, 0x7f, 0xff, 0xff, 0xff]);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend(body);
    send(&mut h.client, &Bytes::from(frame)).await;
    let err = ended(h.session).await;
    assert_eq!(err.reason(), "malformed_frame");
    assert!(err.to_string().contains("topic_data"), "{err}");
}

#[tokio::test]
async fn versions_the_gateway_cannot_read_pass_without_enforcement_only() {
    // Produce v2 (below what kafka-protocol reads): acks at the start of the body.
    let v2 = Bytes::from_static(&[
        0, 0, 0, 20, 0, 0, 0, 2, 0, 0, 0, 1, 0xff, 0xff, 0, 1, 0, 0, 0x03, 0xe8, 0, 0, 0, 0,
    ]);
    let mut h = harness(allow_all(), DEFAULT_MAX_FRAME_SIZE);
    send(&mut h.client, &v2).await;
    assert_eq!(next(&mut h.broker_frames).await.wire(), &v2);

    let mut h = harness(deny(vec![]), DEFAULT_MAX_FRAME_SIZE);
    send(&mut h.client, &v2).await;
    let err = ended(h.session).await;
    assert_eq!(err.reason(), "unsupported_version");
}

#[tokio::test]
async fn a_response_for_another_request_closes_the_session() {
    let mut h = harness(allow_all(), DEFAULT_MAX_FRAME_SIZE);
    send(
        &mut h.client,
        &request_frame(1, 1, &metadata_request(Some(&[]))),
    )
    .await;
    let _ = next(&mut h.broker_frames).await;
    send(
        &mut h.broker,
        &response_frame(1, 99, &metadata_response(&[])),
    )
    .await;
    let err = ended(h.session).await;
    assert_eq!(err.reason(), "correlation_mismatch");
}

#[tokio::test]
async fn upstream_closing_with_requests_in_flight_is_reported() {
    let mut h = harness(allow_all(), DEFAULT_MAX_FRAME_SIZE);
    send(
        &mut h.client,
        &request_frame(1, 1, &metadata_request(Some(&[]))),
    )
    .await;
    let _ = next(&mut h.broker_frames).await;
    drop(h.broker);
    drop(h.broker_frames);
    let err = ended(h.session).await;
    assert_eq!(err.reason(), "upstream_closed");
}

fn group(name: &'static str) -> GroupId {
    GroupId(StrBytes::from_static_str(name))
}

fn txn(name: &'static str) -> TransactionalId {
    TransactionalId(StrBytes::from_static_str(name))
}

/// The admin and transaction APIs that change data or offsets are checked
/// as Kafka checks them, with Kafka's answers; mixed requests are split.
#[tokio::test]
async fn admin_and_transaction_apis_are_authorized() {
    let mut h = harness(
        deny(vec![
            (ResourceType::Group, "g-denied", Operation::Delete),
            (ResourceType::Group, "g-denied", Operation::Read),
            (ResourceType::Group, "g-denied", Operation::AlterConfigs),
            (
                ResourceType::Cluster,
                "kafka-cluster",
                Operation::AlterConfigs,
            ),
        ]),
        DEFAULT_MAX_FRAME_SIZE,
    );

    // DeleteRecords: "secret" is cut out, its partition answered 29.
    let mut dr = DeleteRecordsRequest::default();
    for (name, p) in [("orders", 0), ("secret", 1)] {
        let mut t = delete_records_request::DeleteRecordsTopic::default();
        t.name = topic(name);
        let mut part = delete_records_request::DeleteRecordsPartition::default();
        part.partition_index = p;
        part.offset = 10;
        t.partitions.push(part);
        dr.topics.push(t);
    }
    send(&mut h.client, &request_frame(2, 1, &dr)).await;
    let (_, fwd): (RequestHeader, DeleteRecordsRequest) =
        decode_request(next(&mut h.broker_frames).await.body());
    let names: Vec<&str> = fwd.topics.iter().map(|t| t.name.0.as_str()).collect();
    assert_eq!(names, ["orders"]);
    let mut resp = DeleteRecordsResponse::default();
    let mut t = delete_records_response::DeleteRecordsTopicResult::default();
    t.name = topic("orders");
    t.partitions.push(Default::default());
    resp.topics.push(t);
    send(&mut h.broker, &response_frame(2, 1, &resp)).await;
    let (_, got): (i32, DeleteRecordsResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 2);
    let flat: Vec<(&str, i32, i16)> = got
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.as_str(), p.partition_index, p.error_code))
        })
        .collect();
    assert_eq!(flat, [("orders", 0, 0), ("secret", 1, 29)]);

    // IncrementalAlterConfigs: a denied topic (29) and the broker (cluster,
    // 31) answered by the gateway; nothing reaches the broker.
    let mut iac = IncrementalAlterConfigsRequest::default();
    // Type 32 is a group (its own AlterConfigs, denied here: 30), 16 the
    // client metrics subscriptions (the cluster's: 31), as in Kafka.
    for (kind, name) in [
        (2i8, "secret-t"),
        (4, "1"),
        (32, "g-denied"),
        (16, "g-denied"),
    ] {
        let mut r = incremental_alter_configs_request::AlterConfigsResource::default();
        r.resource_type = kind;
        r.resource_name = StrBytes::from_static_str(name);
        let mut c = incremental_alter_configs_request::AlterableConfig::default();
        c.name = StrBytes::from_static_str("retention.ms");
        c.value = Some(StrBytes::from_static_str("1"));
        r.configs.push(c);
        iac.resources.push(r);
    }
    send(&mut h.client, &request_frame(1, 2, &iac)).await;
    let (c, got): (i32, IncrementalAlterConfigsResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 1);
    assert_eq!(c, 2);
    let codes: Vec<(i8, &str, i16)> = got
        .responses
        .iter()
        .map(|r| (r.resource_type, r.resource_name.as_str(), r.error_code))
        .collect();
    assert_eq!(
        codes,
        [
            (2, "secret-t", 29),
            (4, "1", 31),
            (32, "g-denied", 30),
            (16, "g-denied", 31)
        ]
    );

    // CreatePartitions of a denied topic: 29.
    let mut cp = CreatePartitionsRequest::default();
    let mut t = create_partitions_request::CreatePartitionsTopic::default();
    t.name = topic("secret");
    t.count = 6;
    cp.topics.push(t);
    send(&mut h.client, &request_frame(3, 3, &cp)).await;
    let (_, got): (i32, CreatePartitionsResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 3);
    assert_eq!(
        (got.results[0].name.0.as_str(), got.results[0].error_code),
        ("secret", 29)
    );

    // OffsetDelete with a group the principal may not Delete: 30, top level.
    let mut od = OffsetDeleteRequest::default();
    od.group_id = group("g-denied");
    let mut t = offset_delete_request::OffsetDeleteRequestTopic::default();
    t.name = topic("orders");
    t.partitions.push(Default::default());
    od.topics.push(t);
    send(&mut h.client, &request_frame(0, 4, &od)).await;
    let (_, got): (i32, OffsetDeleteResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 0);
    assert_eq!((got.error_code, got.topics.len()), (30, 0));

    // TxnOffsetCommit with a denied transactional id: every partition 53.
    let mut toc = TxnOffsetCommitRequest::default();
    toc.transactional_id = txn("secret-tx");
    toc.group_id = group("g-ok");
    let mut t = txn_offset_commit_request::TxnOffsetCommitRequestTopic::default();
    t.name = topic("orders");
    for p in [0, 1] {
        let mut part = txn_offset_commit_request::TxnOffsetCommitRequestPartition::default();
        part.partition_index = p;
        t.partitions.push(part);
    }
    toc.topics.push(t);
    send(&mut h.client, &request_frame(3, 5, &toc)).await;
    let (_, got): (i32, TxnOffsetCommitResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 3);
    let codes: Vec<(i32, i16)> = got.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.error_code))
        .collect();
    assert_eq!(codes, [(0, 53), (1, 53)]);

    // AddPartitionsToTxn is all or nothing: the denied topic 29, the
    // allowed one OPERATION_NOT_ATTEMPTED, nothing forwarded.
    let mut ap = AddPartitionsToTxnRequest::default();
    ap.v3_and_below_transactional_id = txn("tx-ok");
    for (name, parts) in [("orders", vec![0]), ("secret", vec![2])] {
        let mut t = add_partitions_to_txn_request::AddPartitionsToTxnTopic::default();
        t.name = topic(name);
        t.partitions = parts;
        ap.v3_and_below_topics.push(t);
    }
    send(&mut h.client, &request_frame(3, 6, &ap)).await;
    let (_, got): (i32, AddPartitionsToTxnResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 3);
    let mut flat: Vec<(&str, i32, i16)> = got
        .results_by_topic_v3_and_below
        .iter()
        .flat_map(|t| {
            t.results_by_partition
                .iter()
                .map(|p| (t.name.0.as_str(), p.partition_index, p.partition_error_code))
        })
        .collect();
    flat.sort();
    assert_eq!(flat, [("orders", 0, 55), ("secret", 2, 29)]);

    // AddOffsetsToTxn with a group the principal may not Read: 30.
    let mut ao = AddOffsetsToTxnRequest::default();
    ao.transactional_id = txn("tx-ok");
    ao.group_id = group("g-denied");
    send(&mut h.client, &request_frame(3, 7, &ao)).await;
    let (_, got): (i32, AddOffsetsToTxnResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 3);
    assert_eq!(got.error_code, 30);

    // EndTxn with a denied transactional id: 53.
    let mut et = EndTxnRequest::default();
    et.transactional_id = txn("secret-tx");
    send(&mut h.client, &request_frame(3, 8, &et)).await;
    let (_, got): (i32, EndTxnResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 3);
    assert_eq!(got.error_code, 53);

    // OffsetForLeaderEpoch needs Describe on the topic.
    let mut oe = OffsetForLeaderEpochRequest::default();
    oe.replica_id = BrokerId(-1);
    let mut t = offset_for_leader_epoch_request::OffsetForLeaderTopic::default();
    t.topic = topic("secret");
    let mut part = offset_for_leader_epoch_request::OffsetForLeaderPartition::default();
    part.partition = 3;
    t.partitions.push(part);
    oe.topics.push(t);
    send(&mut h.client, &request_frame(4, 9, &oe)).await;
    let (_, got): (i32, OffsetForLeaderEpochResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 4);
    let p = &got.topics[0].partitions[0];
    assert_eq!((p.partition, p.error_code, p.end_offset), (3, 29, -1));

    // Allowed ones go to the broker unchanged.
    let mut et = EndTxnRequest::default();
    et.transactional_id = txn("tx-ok");
    et.committed = true;
    let frame = request_frame(3, 10, &et);
    send(&mut h.client, &frame).await;
    assert_eq!(next(&mut h.broker_frames).await.wire(), &frame);
}

/// Under a policy, an API the gateway cannot check (here CreateAcls) is
/// refused by closing the connection, as a broker refuses an API it does
/// not offer; without a policy it passes.
#[tokio::test]
async fn apis_the_gateway_cannot_authorize_are_refused_under_a_policy() {
    let producers = request_frame(0, 1, &DescribeProducersRequest::default());
    let mut h = harness(allow_all(), DEFAULT_MAX_FRAME_SIZE);
    send(&mut h.client, &producers).await;
    assert_eq!(next(&mut h.broker_frames).await.wire(), &producers);

    let mut h = harness(deny(vec![]), DEFAULT_MAX_FRAME_SIZE);
    send(&mut h.client, &producers).await;
    let err = ended(h.session).await;
    assert_eq!(err.reason(), "unauthorizable_api");
    assert!(err.to_string().contains("DescribeProducers"), "{err}");

    // SASL needs no authorization and passes under a policy too.
    let mut h = harness(deny(vec![]), DEFAULT_MAX_FRAME_SIZE);
    let mut sasl = SaslHandshakeRequest::default();
    sasl.mechanism = StrBytes::from_static_str("PLAIN");
    let frame = request_frame(1, 1, &sasl);
    send(&mut h.client, &frame).await;
    assert_eq!(next(&mut h.broker_frames).await.wire(), &frame);
}

fn offset_fetch_v7_response(topics: &[&'static str]) -> OffsetFetchResponse {
    let mut r = OffsetFetchResponse::default();
    for name in topics {
        let mut t = offset_fetch_response::OffsetFetchResponseTopic::default();
        t.name = topic(name);
        let mut p = offset_fetch_response::OffsetFetchResponsePartition::default();
        p.committed_offset = 42;
        t.partitions.push(p);
        r.topics.push(t);
    }
    r
}

/// As Kafka's handleOffsetFetchRequest: asked for every partition (null
/// topics), topics the principal may not describe are left out; asked for
/// by name, they get TOPIC_AUTHORIZATION_FAILED.
#[tokio::test]
async fn offset_fetch_of_every_partition_leaves_out_denied_topics() {
    let (proxy, registry) = proxy_registered(Arc::new(TestAuthz { deny: vec![] }));
    let mut h = harness(proxy, DEFAULT_MAX_FRAME_SIZE);
    // v7, null topics.
    let mut req = OffsetFetchRequest::default();
    req.group_id = group("g");
    req.topics = None;
    send(&mut h.client, &request_frame(7, 1, &req)).await;
    let _ = next(&mut h.broker_frames).await;
    send(
        &mut h.broker,
        &response_frame(7, 1, &offset_fetch_v7_response(&["orders", "secret-a"])),
    )
    .await;
    let f = next(&mut h.client_frames).await;
    let (_, r): (i32, OffsetFetchResponse) = decode_response(f.body(), 7);
    let got: Vec<(String, i16)> = r
        .topics
        .iter()
        .map(|t| (t.name.to_string(), t.partitions[0].error_code))
        .collect();
    assert_eq!(got, vec![("orders".into(), 0)]);

    // v7, named topics: the denied one is answered with 29.
    let mut req = OffsetFetchRequest::default();
    req.group_id = group("g");
    let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
    t.name = topic("secret-a");
    t.partition_indexes = vec![0];
    req.topics = Some(vec![t]);
    send(&mut h.client, &request_frame(7, 2, &req)).await;
    let _ = next(&mut h.broker_frames).await;
    send(
        &mut h.broker,
        &response_frame(7, 2, &offset_fetch_v7_response(&["secret-a"])),
    )
    .await;
    let f = next(&mut h.client_frames).await;
    let (_, r): (i32, OffsetFetchResponse) = decode_response(f.body(), 7);
    assert_eq!(r.topics.len(), 1);
    assert_eq!(r.topics[0].partitions[0].error_code, 29);
    assert_eq!(r.topics[0].partitions[0].committed_offset, -1);

    // v8: per group; "all" asked for every partition, "named" for one topic.
    let mut req = OffsetFetchRequest::default();
    let mut all = offset_fetch_request::OffsetFetchRequestGroup::default();
    all.group_id = group("all");
    all.topics = None;
    let mut named = offset_fetch_request::OffsetFetchRequestGroup::default();
    named.group_id = group("named");
    let mut t = offset_fetch_request::OffsetFetchRequestTopics::default();
    t.name = topic("secret-b");
    t.partition_indexes = vec![0];
    named.topics = Some(vec![t]);
    req.groups = vec![all, named];
    send(&mut h.client, &request_frame(8, 3, &req)).await;
    let _ = next(&mut h.broker_frames).await;
    let mut resp = OffsetFetchResponse::default();
    for (g, topics) in [
        ("all", &["orders", "secret-b"][..]),
        ("named", &["secret-b"][..]),
    ] {
        let mut rg = offset_fetch_response::OffsetFetchResponseGroup::default();
        rg.group_id = group(g);
        for name in topics {
            let mut t = offset_fetch_response::OffsetFetchResponseTopics::default();
            t.name = topic(name);
            let mut p = offset_fetch_response::OffsetFetchResponsePartitions::default();
            p.committed_offset = 42;
            t.partitions.push(p);
            rg.topics.push(t);
        }
        resp.groups.push(rg);
    }
    send(&mut h.broker, &response_frame(8, 3, &resp)).await;
    let f = next(&mut h.client_frames).await;
    let (_, r): (i32, OffsetFetchResponse) = decode_response(f.body(), 8);
    let got: Vec<(String, Vec<(String, i16)>)> = r
        .groups
        .iter()
        .map(|g| {
            (
                g.group_id.to_string(),
                g.topics
                    .iter()
                    .map(|t| (t.name.to_string(), t.partitions[0].error_code))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("all".into(), vec![("orders".into(), 0)]),
            ("named".into(), vec![("secret-b".into(), 29)]),
        ]
    );
    // The topics asked for by name are counted denials; those left out of
    // an every-partition answer are not (Kafka does not log them either).
    assert_eq!(
        metric_lines(&registry, "weir_kafka_authorization_denials_total"),
        vec![
            r#"weir_kafka_authorization_denials_total{topic="secret-a",resource_type="topic",resource="secret-a",principal="anonymous",operation="Describe"} 1"#,
            r#"weir_kafka_authorization_denials_total{topic="secret-b",resource_type="topic",resource="secret-b",principal="anonymous",operation="Describe"} 1"#,
        ]
    );
}

/// Kafka 3.8+ (KIP-848): a ConsumerGroupHeartbeat needs Read on the group
/// and Describe on every subscribed topic name; one undescribable topic
/// makes the whole answer TOPIC_AUTHORIZATION_FAILED.
#[tokio::test]
async fn consumer_group_heartbeat_needs_describe_on_subscribed_topics() {
    let mut h = harness(deny(vec![]), DEFAULT_MAX_FRAME_SIZE);
    let hb = |topics: &[&'static str]| {
        let mut r = ConsumerGroupHeartbeatRequest::default();
        r.group_id = group("g");
        r.member_id = StrBytes::from_static_str("m-1");
        r.rebalance_timeout_ms = 30_000;
        r.subscribed_topic_names = Some(topics.iter().map(|t| topic(t)).collect());
        r
    };
    // One denied topic: answered by the gateway, the broker sees nothing.
    send(
        &mut h.client,
        &request_frame(0, 1, &hb(&["orders", "secret-x"])),
    )
    .await;
    let f = next(&mut h.client_frames).await;
    let (corr, r): (i32, ConsumerGroupHeartbeatResponse) = decode_response(f.body(), 0);
    assert_eq!((corr, r.error_code), (1, 29));
    // Only describable topics: forwarded with its fields intact.
    send(&mut h.client, &request_frame(0, 2, &hb(&["orders"]))).await;
    let f = next(&mut h.broker_frames).await;
    let (hdr, req): (RequestHeader, ConsumerGroupHeartbeatRequest) = decode_request(f.body());
    assert_eq!(hdr.correlation_id, 2);
    assert_eq!(req, hb(&["orders"]));
    send(
        &mut h.broker,
        &response_frame(0, 2, &ConsumerGroupHeartbeatResponse::default()),
    )
    .await;
    let _ = next(&mut h.client_frames).await;
    // v1 with a regex: the broker would resolve it as the gateway, so the
    // client's rights could not apply; answered 29 by the gateway.
    let mut with_regex = hb(&[]);
    with_regex.subscribed_topic_names = None;
    with_regex.subscribed_topic_regex = Some(StrBytes::from_static_str(".*"));
    send(&mut h.client, &request_frame(1, 3, &with_regex)).await;
    let f = next(&mut h.client_frames).await;
    let (corr, r): (i32, ConsumerGroupHeartbeatResponse) = decode_response(f.body(), 1);
    assert_eq!((corr, r.error_code), (3, 29));
    // v1 without one: forwarded.
    send(&mut h.client, &request_frame(1, 4, &hb(&["orders"]))).await;
    let f = next(&mut h.broker_frames).await;
    let (hdr, _): (RequestHeader, ConsumerGroupHeartbeatRequest) = decode_request(f.body());
    assert_eq!(hdr.correlation_id, 4);
}

/// CreateTopics v5+ answers with the created topics' configs; as Kafka, a
/// topic the principal may not DescribeConfigs gets them withheld, with
/// topic_config_error_code 29 (the topic is still created).
#[tokio::test]
async fn create_topics_withholds_configs_without_describe_configs() {
    let mut h = harness(
        deny(vec![(
            ResourceType::Topic,
            "hidden",
            Operation::DescribeConfigs,
        )]),
        DEFAULT_MAX_FRAME_SIZE,
    );
    send(
        &mut h.client,
        &request_frame(5, 1, &create_topics(&["shown", "hidden"])),
    )
    .await;
    let _ = next(&mut h.broker_frames).await;
    let mut resp = CreateTopicsResponse::default();
    for name in ["shown", "hidden"] {
        let mut t = create_topics_response::CreatableTopicResult::default();
        t.name = topic(name);
        t.num_partitions = 1;
        t.replication_factor = 1;
        let mut c = create_topics_response::CreatableTopicConfigs::default();
        c.name = StrBytes::from_static_str("retention.ms");
        c.value = Some(StrBytes::from_static_str("604800000"));
        t.configs = Some(vec![c]);
        resp.topics.push(t);
    }
    send(&mut h.broker, &response_frame(5, 1, &resp)).await;
    let f = next(&mut h.client_frames).await;
    let (_, r): (i32, CreateTopicsResponse) = decode_response(f.body(), 5);
    let got: Vec<(String, i16, i16, i32, usize)> = r
        .topics
        .iter()
        .map(|t| {
            (
                t.name.to_string(),
                t.error_code,
                t.topic_config_error_code,
                t.num_partitions,
                t.configs.as_ref().map_or(0, Vec::len),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("shown".into(), 0, 0, 1, 1),
            ("hidden".into(), 0, 29, -1, 0),
        ]
    );
}

/// include_*_authorized_operations: the bit fields are the gateway's
/// policy (Kafka's AclOperation codes, the operations Kafka defines per
/// resource type), not what the broker's own ACLs allow.
#[tokio::test]
async fn authorized_operations_come_from_the_policy() {
    let mut h = harness(
        deny(vec![
            (ResourceType::Topic, "orders", Operation::Write),
            (ResourceType::Group, "g", Operation::Delete),
        ]),
        DEFAULT_MAX_FRAME_SIZE,
    );
    let bits = |codes: &[u32]| codes.iter().fold(0i32, |b, c| b | 1 << c);
    let mut req = metadata_request(Some(&["orders", "new"]));
    req.include_topic_authorized_operations = true;
    req.include_cluster_authorized_operations = true;
    send(&mut h.client, &request_frame(10, 1, &req)).await;
    let _ = next(&mut h.broker_frames).await;
    // The broker has no ACLs: it says everything is allowed. For a topic
    // it answers with an error it says something else again: the caller's
    // bits are the policy's there too, as Kafka sets them for every topic
    // it answers.
    let mut resp = metadata_response(&["orders", "new"]);
    for t in &mut resp.topics {
        t.topic_authorized_operations = bits(&[3, 4, 5, 6, 7, 8, 10, 11]);
    }
    resp.topics[1].error_code = 5; // LEADER_NOT_AVAILABLE
    resp.topics[1].topic_authorized_operations = bits(&[8]);
    resp.cluster_authorized_operations = bits(&[5, 7, 8, 9, 10, 11, 12]);
    send(&mut h.broker, &response_frame(10, 1, &resp)).await;
    let f = next(&mut h.client_frames).await;
    let (_, md): (i32, MetadataResponse) = decode_response(f.body(), 10);
    // Write (4) is denied; ClusterAction (9) is not something weir grants.
    assert_eq!(
        md.topics[0].topic_authorized_operations,
        bits(&[3, 5, 6, 7, 8, 10, 11])
    );
    assert_eq!(md.topics[1].error_code, 5);
    assert_eq!(
        md.topics[1].topic_authorized_operations,
        bits(&[3, 4, 5, 6, 7, 8, 10, 11]),
        "the policy's bits (all allowed for `new`), not left to the broker"
    );
    assert_eq!(
        md.cluster_authorized_operations,
        bits(&[5, 7, 8, 10, 11, 12])
    );

    let mut req = DescribeGroupsRequest::default();
    req.groups = vec![group("g")];
    req.include_authorized_operations = true;
    send(&mut h.client, &request_frame(5, 2, &req)).await;
    let _ = next(&mut h.broker_frames).await;
    let mut resp = DescribeGroupsResponse::default();
    let mut g = describe_groups_response::DescribedGroup::default();
    g.group_id = group("g");
    g.authorized_operations = bits(&[3, 6, 8]);
    resp.groups.push(g);
    send(&mut h.broker, &response_frame(5, 2, &resp)).await;
    let f = next(&mut h.client_frames).await;
    let (_, r): (i32, DescribeGroupsResponse) = decode_response(f.body(), 5);
    assert_eq!(r.groups[0].authorized_operations, bits(&[3, 8, 10, 11]));
}

/// Kafka answers the cluster's authorized operations only to a principal
/// that may Describe the cluster: others get 0, whatever else they may do
/// on it (here Create and IdempotentWrite).
#[tokio::test]
async fn cluster_authorized_operations_need_describe_on_the_cluster() {
    let mut h = harness(
        deny(vec![(
            ResourceType::Cluster,
            "kafka-cluster",
            Operation::Describe,
        )]),
        DEFAULT_MAX_FRAME_SIZE,
    );
    let mut req = metadata_request(Some(&["orders"]));
    req.include_cluster_authorized_operations = true;
    send(&mut h.client, &request_frame(10, 1, &req)).await;
    let _ = next(&mut h.broker_frames).await;
    let mut resp = metadata_response(&["orders"]);
    resp.cluster_authorized_operations = 0x1fe0;
    send(&mut h.broker, &response_frame(10, 1, &resp)).await;
    let (_, md): (i32, MetadataResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 10);
    assert_eq!(md.cluster_authorized_operations, 0);

    let mut req = DescribeClusterRequest::default();
    req.include_cluster_authorized_operations = true;
    send(&mut h.client, &request_frame(0, 2, &req)).await;
    let _ = next(&mut h.broker_frames).await;
    let mut resp = DescribeClusterResponse::default();
    resp.cluster_authorized_operations = 0x1fe0;
    send(&mut h.broker, &response_frame(0, 2, &resp)).await;
    let (_, d): (i32, DescribeClusterResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 0);
    assert_eq!(d.cluster_authorized_operations, 0);
}

/// OffsetFetch v0-v1 have no top-level error code: a denied group is
/// answered with GROUP_AUTHORIZATION_FAILED on every partition asked for
/// (Kafka's OffsetFetchRequest.getErrorResponse); v2+ use the top-level
/// field.
#[tokio::test]
async fn offset_fetch_v1_answers_a_denied_group_per_partition() {
    let mut h = harness(
        deny(vec![(ResourceType::Group, "g", Operation::Describe)]),
        DEFAULT_MAX_FRAME_SIZE,
    );
    let mut req = OffsetFetchRequest::default();
    req.group_id = group("g");
    let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
    t.name = topic("orders");
    t.partition_indexes = vec![0, 2];
    req.topics = Some(vec![t]);
    send(&mut h.client, &request_frame(1, 1, &req)).await;
    let f = next(&mut h.client_frames).await;
    let (_, r): (i32, OffsetFetchResponse) = decode_response(f.body(), 1);
    let got: Vec<(String, i32, i16, i64)> = r
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.to_string(),
                    p.partition_index,
                    p.error_code,
                    p.committed_offset,
                )
            })
        })
        .collect();
    assert_eq!(
        got,
        vec![("orders".into(), 0, 30, -1), ("orders".into(), 2, 30, -1)]
    );
    send(&mut h.client, &request_frame(3, 2, &req)).await;
    let f = next(&mut h.client_frames).await;
    let (_, r): (i32, OffsetFetchResponse) = decode_response(f.body(), 3);
    assert_eq!((r.error_code, r.topics.len()), (30, 0));
}

/// Denies Read on `orders` once `deny` is set; a new epoch tells sessions
/// to drop the answers they cached (a policy reload).
struct Reloadable {
    deny: std::sync::atomic::AtomicBool,
    epoch: std::sync::atomic::AtomicU64,
}

impl Reloadable {
    fn deny_orders(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.deny.store(true, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
    }
}

impl weir_kafka::Authorizer for Reloadable {
    fn authorize(
        &self,
        _: &weir_core::kafka::Principal,
        _: ResourceType,
        name: &str,
        op: Operation,
    ) -> weir_kafka::Decision {
        if name == "orders"
            && op == Operation::Read
            && self.deny.load(std::sync::atomic::Ordering::SeqCst)
        {
            weir_kafka::Decision::deny("reloaded")
        } else {
            weir_kafka::Decision::allow("test allow")
        }
    }
    fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn fetch_response_with(name: &'static str, partition: i32, recs: Bytes) -> FetchResponse {
    let mut resp = FetchResponse::default();
    resp.session_id = 5;
    let mut t = fetch_response::FetchableTopicResponse::default();
    t.topic = topic(name);
    let mut p = fetch_response::PartitionData::default();
    p.partition_index = partition;
    p.high_watermark = 4;
    p.records = Some(recs);
    t.partitions.push(p);
    resp.responses.push(t);
    resp
}

/// As Kafka's handleFetchRequest, which authorizes every partition of the
/// fetch session on each request: a partition the session holds without the
/// request naming it is cut off once the policy denies it.
#[tokio::test]
async fn an_incremental_fetch_session_is_checked_again_after_a_policy_reload() {
    let authz = Arc::new(Reloadable {
        deny: false.into(),
        epoch: 0.into(),
    });
    let (proxy, registry) = proxy_registered(authz.clone());
    let mut h = harness(proxy, DEFAULT_MAX_FRAME_SIZE);

    // A full fetch opens the session (id 5 in the broker's answer).
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.session_id = 0;
    req.session_epoch = 0;
    let mut t = fetch_request::FetchTopic::default();
    t.topic = topic("orders");
    let mut p = fetch_request::FetchPartition::default();
    p.partition = 0;
    t.partitions.push(p);
    req.topics.push(t);
    send(&mut h.client, &request_frame(11, 1, &req)).await;
    let _ = next(&mut h.broker_frames).await;
    let resp = fetch_response_with("orders", 0, records(4, 20));
    send(&mut h.broker, &response_frame(11, 1, &resp)).await;
    let (_, r): (i32, FetchResponse) = decode_response(next(&mut h.client_frames).await.body(), 11);
    let p = &r.responses[0].partitions[0];
    assert_eq!(
        (p.error_code, p.records.as_ref().unwrap().len()),
        (0, records(4, 20).len())
    );

    // The policy now denies Read on orders; the next incremental fetch
    // names nothing, and the broker answers from the session it holds.
    authz.deny_orders();
    let mut inc = FetchRequest::default();
    inc.replica_id = BrokerId(-1);
    inc.session_id = 5;
    inc.session_epoch = 1;
    send(&mut h.client, &request_frame(11, 2, &inc)).await;
    let f = next(&mut h.broker_frames).await;
    let (_, fwd): (RequestHeader, FetchRequest) = decode_request(f.body());
    assert_eq!((fwd.session_id, fwd.session_epoch), (5, 1));
    let resp = fetch_response_with("orders", 0, records(4, 20));
    send(&mut h.broker, &response_frame(11, 2, &resp)).await;
    let (_, r): (i32, FetchResponse) = decode_response(next(&mut h.client_frames).await.body(), 11);
    assert_eq!(r.session_id, 5, "the session itself is the broker's");
    let got: Vec<(String, i32, i16, i64, usize)> = r
        .responses
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.topic.to_string(),
                    p.partition_index,
                    p.error_code,
                    p.high_watermark,
                    p.records.as_ref().map_or(0, |r| r.len()),
                )
            })
        })
        .collect();
    assert_eq!(got, vec![("orders".into(), 0, 29, -1, 0)]);

    // Naming the partition again (a new offset) is denied at request time;
    // the broker's session still answers it: one error entry, not two.
    let mut again = inc.clone();
    again.session_epoch = 2;
    again.topics = req.topics.clone();
    send(&mut h.client, &request_frame(11, 3, &again)).await;
    let f = next(&mut h.broker_frames).await;
    let (_, fwd): (RequestHeader, FetchRequest) = decode_request(f.body());
    assert!(
        fwd.topics.is_empty(),
        "the denied partition is not forwarded"
    );
    let resp = fetch_response_with("orders", 0, records(4, 20));
    send(&mut h.broker, &response_frame(11, 3, &resp)).await;
    let (_, r): (i32, FetchResponse) = decode_response(next(&mut h.client_frames).await.body(), 11);
    let got: Vec<(String, i32, i16)> = r
        .responses
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.topic.to_string(), p.partition_index, p.error_code))
        })
        .collect();
    assert_eq!(got, vec![("orders".into(), 0, 29)]);

    // Only the records delivered before the reload are counted as fetched;
    // each cut-off answer is a counted denial.
    assert_eq!(
        metric_lines(&registry, "weir_kafka_fetched_records_total"),
        vec![r#"weir_kafka_fetched_records_total{topic="orders"} 4"#]
    );
    assert_eq!(
        metric_lines(&registry, "weir_kafka_authorization_denials_total"),
        vec![
            r#"weir_kafka_authorization_denials_total{topic="orders",resource_type="topic",resource="orders",principal="anonymous",operation="Read"} 3"#
        ]
    );
}

/// As Kafka (KafkaApis' metadata and ControllerApis' deleteTopics): a topic
/// asked for by id that the principal may not describe is answered with a
/// null name, so the id does not reveal it.
#[tokio::test]
async fn a_topic_denied_by_id_is_answered_without_its_name() {
    let proxy = deny(vec![]);
    let id = [7u8; 16];
    proxy.registry().learn_topic(id, "secret-payroll");
    proxy.registry().learn_topic([8u8; 16], "orders");
    let mut h = harness(proxy, DEFAULT_MAX_FRAME_SIZE);

    let mut req = MetadataRequest::default();
    let mut t = metadata_request::MetadataRequestTopic::default();
    t.topic_id = uuid::Uuid::from_bytes(id);
    t.name = None;
    req.topics = Some(vec![t]);
    send(&mut h.client, &request_frame(12, 1, &req)).await;
    let _ = next(&mut h.broker_frames).await;
    send(
        &mut h.broker,
        &response_frame(12, 1, &metadata_response(&[])),
    )
    .await;
    let (_, r): (i32, MetadataResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 12);
    let got: Vec<(Option<String>, [u8; 16], i16)> = r
        .topics
        .iter()
        .map(|t| {
            (
                t.name.as_ref().map(|n| n.to_string()),
                *t.topic_id.as_bytes(),
                t.error_code,
            )
        })
        .collect();
    assert_eq!(got, vec![(None, id, 29)]);

    // DeleteTopics v6 by id: Delete denied on a topic the principal may
    // describe keeps the name; one it may not describe does not.
    let mut h = harness(
        {
            let p = deny(vec![(ResourceType::Topic, "orders", Operation::Delete)]);
            p.registry().learn_topic(id, "secret-payroll");
            p.registry().learn_topic([8u8; 16], "orders");
            p
        },
        DEFAULT_MAX_FRAME_SIZE,
    );
    let mut req = DeleteTopicsRequest::default();
    for tid in [id, [8u8; 16]] {
        let mut t = delete_topics_request::DeleteTopicState::default();
        t.name = None;
        t.topic_id = uuid::Uuid::from_bytes(tid);
        req.topics.push(t);
    }
    send(&mut h.client, &request_frame(6, 2, &req)).await;
    let (_, r): (i32, DeleteTopicsResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 6);
    let mut got: Vec<(Option<String>, [u8; 16], i16)> = r
        .responses
        .iter()
        .map(|t| {
            (
                t.name.as_ref().map(|n| n.to_string()),
                *t.topic_id.as_bytes(),
                t.error_code,
            )
        })
        .collect();
    got.sort_by_key(|g| g.1);
    assert_eq!(
        got,
        vec![(None, id, 29), (Some("orders".into()), [8u8; 16], 29)]
    );
}

/// The gateway's frame limit bounds responses too, so a Fetch asking for
/// more than half of it is capped (as a broker's fetch.max.bytes caps it);
/// one asking for less is forwarded byte for byte. With and without a
/// policy, in a version with replica_id (v11) and one without (v15).
#[tokio::test]
async fn fetch_max_bytes_is_capped_to_fit_the_frame_limit() {
    for authz in [
        Arc::new(AllowAll) as Arc<dyn weir_kafka::Authorizer>,
        Arc::new(TestAuthz { deny: vec![] }),
    ] {
        let (proxy, _) = proxy_with_max_frame(authz, 1 << 20);
        proxy.registry().learn_topic([3; 16], "orders");
        let mut h = harness(proxy, DEFAULT_MAX_FRAME_SIZE);
        for (corr, (version, asked, forwarded)) in [
            (11, 52_428_800, 524_288),
            (15, 52_428_800, 524_288),
            (11, 100_000, 100_000),
        ]
        .into_iter()
        .enumerate()
        {
            let mut req = FetchRequest::default();
            req.replica_id = BrokerId(-1);
            req.max_wait_ms = 500;
            req.min_bytes = 1;
            req.max_bytes = asked;
            req.session_epoch = -1;
            let mut t = fetch_request::FetchTopic::default();
            t.topic = topic("orders");
            t.topic_id = uuid::Uuid::from_bytes([3; 16]);
            let mut p = fetch_request::FetchPartition::default();
            p.partition_max_bytes = 1 << 20;
            t.partitions.push(p);
            req.topics.push(t);
            let sent = request_frame(version, corr as i32, &req);
            send(&mut h.client, &sent).await;
            let f = next(&mut h.broker_frames).await;
            let (_, fwd): (RequestHeader, FetchRequest) = decode_request(f.body());
            assert_eq!(fwd.max_bytes, forwarded, "v{version} asking {asked}");
            assert_eq!(
                (fwd.max_wait_ms, fwd.min_bytes, fwd.topics.len()),
                (500, 1, 1)
            );
            if asked == forwarded {
                assert_eq!(f.wire(), &sent, "unchanged requests pass as they came");
            }
            let resp = fetch_response_with("orders", 0, records(1, 10));
            send(&mut h.broker, &response_frame(version, corr as i32, &resp)).await;
            let _ = next(&mut h.client_frames).await;
        }
    }
}

/// A v4+ Metadata request naming a topic the client may create and one it
/// may not: as Kafka, the first is created and the second is not. The
/// gateway forwards a Metadata request of its own for the creatable topic
/// with auto-creation on (its answer is not passed on), then the client's
/// with auto-creation off.
#[tokio::test]
async fn mixed_auto_creation_creates_only_what_may_be_created() {
    let mut h = harness(
        deny(vec![
            (ResourceType::Topic, "no-create", Operation::Create),
            (ResourceType::Cluster, "kafka-cluster", Operation::Create),
        ]),
        DEFAULT_MAX_FRAME_SIZE,
    );
    send(
        &mut h.client,
        &request_frame(9, 7, &metadata_request(Some(&["may-create", "no-create"]))),
    )
    .await;
    let f = next(&mut h.broker_frames).await;
    let (hdr, first): (RequestHeader, MetadataRequest) = decode_request(f.body());
    assert_eq!(hdr.correlation_id, 7);
    assert!(first.allow_auto_topic_creation);
    let names = |r: &MetadataRequest| -> Vec<String> {
        r.topics
            .iter()
            .flatten()
            .map(|t| t.name.as_ref().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&first), ["may-create"]);
    let f = next(&mut h.broker_frames).await;
    let (_, second): (RequestHeader, MetadataRequest) = decode_request(f.body());
    assert!(!second.allow_auto_topic_creation);
    assert_eq!(names(&second), ["may-create", "no-create"]);

    // The broker answers its creation request (dropped), then the client's
    // before it shows the new topic.
    let mut created = metadata_response(&[]);
    let mut t = metadata_response::MetadataResponseTopic::default();
    t.name = Some(topic("may-create"));
    t.error_code = 5;
    created.topics.push(t);
    send(&mut h.broker, &response_frame(9, 7, &created)).await;
    // Time for the gateway to take the dropped answer on its own (it must
    // write nothing to the client for it).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut resp = metadata_response(&[]);
    for name in ["may-create", "no-create"] {
        let mut t = metadata_response::MetadataResponseTopic::default();
        t.name = Some(topic(name));
        t.error_code = 3;
        resp.topics.push(t);
    }
    send(&mut h.broker, &response_frame(9, 7, &resp)).await;
    let f = next(&mut h.client_frames).await;
    let (corr, md): (i32, MetadataResponse) = decode_response(f.body(), 9);
    assert_eq!(corr, 7);
    let got: Vec<(String, i16)> = md
        .topics
        .iter()
        .map(|t| (t.name.as_ref().unwrap().to_string(), t.error_code))
        .collect();
    // LEADER_NOT_AVAILABLE (being created: retry) and 29.
    assert_eq!(
        got,
        vec![("may-create".into(), 5), ("no-create".into(), 29)]
    );

    // A broker that does not create it (auto.create.topics.enable=false):
    // the topic stays unknown (3), not "being created" forever.
    send(
        &mut h.client,
        &request_frame(9, 9, &metadata_request(Some(&["may-create", "no-create"]))),
    )
    .await;
    let _ = next(&mut h.broker_frames).await;
    let _ = next(&mut h.broker_frames).await;
    let mut refused = metadata_response(&[]);
    let mut t = metadata_response::MetadataResponseTopic::default();
    t.name = Some(topic("may-create"));
    t.error_code = 3;
    refused.topics.push(t);
    send(&mut h.broker, &response_frame(9, 9, &refused)).await;
    send(&mut h.broker, &response_frame(9, 9, &resp)).await;
    let (_, md): (i32, MetadataResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 9);
    let got: Vec<(String, i16)> = md
        .topics
        .iter()
        .map(|t| (t.name.as_ref().unwrap().to_string(), t.error_code))
        .collect();
    assert_eq!(
        got,
        vec![("may-create".into(), 3), ("no-create".into(), 29)]
    );

    // One answer per client request: the next one is answered next.
    send(
        &mut h.client,
        &request_frame(9, 8, &metadata_request(Some(&["may-create"]))),
    )
    .await;
    let f = next(&mut h.broker_frames).await;
    let (_, req): (RequestHeader, MetadataRequest) = decode_request(f.body());
    assert!(req.allow_auto_topic_creation, "nothing to switch off");
    send(
        &mut h.broker,
        &response_frame(9, 8, &metadata_response(&["may-create"])),
    )
    .await;
    let (corr, md): (i32, MetadataResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 9);
    assert_eq!((corr, md.topics[0].error_code), (8, 0));
}

/// Share-group fetches (KIP-932) are not authorized by the gateway, so they
/// are offered only without a policy; their responses' node endpoints are
/// rewritten like Produce's and Fetch's, so a share consumer following a
/// leader change dials the gateway, not the broker.
#[tokio::test]
async fn share_fetch_and_acknowledge_node_endpoints_are_rewritten() {
    let mut h = harness(allow_all(), DEFAULT_MAX_FRAME_SIZE);
    let endpoint = |id: i32| {
        let mut e = share_fetch_response::NodeEndpoint::default();
        e.node_id = BrokerId(id);
        e.host = StrBytes::from_string(format!("10.1.0.{id}"));
        e.port = 19092;
        e
    };
    send(
        &mut h.client,
        &request_frame(1, 1, &ShareFetchRequest::default()),
    )
    .await;
    let _ = next(&mut h.broker_frames).await;
    let mut resp = ShareFetchResponse::default();
    resp.node_endpoints = vec![endpoint(2), endpoint(3)];
    send(&mut h.broker, &response_frame(1, 1, &resp)).await;
    let (_, r): (i32, ShareFetchResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 1);
    let got: Vec<(i32, String, i32)> = r
        .node_endpoints
        .iter()
        .map(|e| (e.node_id.0, e.host.to_string(), e.port))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, "b2-kafka.example.com".into(), PORT as i32),
            (3, "b3-kafka.example.com".into(), PORT as i32),
        ]
    );

    send(
        &mut h.client,
        &request_frame(1, 2, &ShareAcknowledgeRequest::default()),
    )
    .await;
    let _ = next(&mut h.broker_frames).await;
    let mut resp = ShareAcknowledgeResponse::default();
    let mut e = share_acknowledge_response::NodeEndpoint::default();
    e.node_id = BrokerId(4);
    e.host = StrBytes::from_static_str("10.1.0.4");
    e.port = 19092;
    resp.node_endpoints.push(e);
    send(&mut h.broker, &response_frame(1, 2, &resp)).await;
    let (_, r): (i32, ShareAcknowledgeResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 1);
    assert_eq!(r.node_endpoints[0].host.to_string(), "b4-kafka.example.com");
}

/// A request frame built by hand (flexible header v2), for versions
/// kafka-protocol cannot encode.
fn raw_request(api_key: i16, version: i16, correlation_id: i32, body: &[u8]) -> Bytes {
    let mut b = Vec::new();
    b.extend_from_slice(&api_key.to_be_bytes());
    b.extend_from_slice(&version.to_be_bytes());
    b.extend_from_slice(&correlation_id.to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    b.push(0); // no tagged fields
    b.extend_from_slice(body);
    let mut f = (b.len() as u32).to_be_bytes().to_vec();
    f.extend(b);
    Bytes::from(f)
}

/// Without a policy, a version newer than the gateway reads passes through
/// unchanged, except for the APIs whose responses carry broker addresses:
/// those close the connection (the gateway's ApiVersions never offered the
/// version), so no address reaches a client unrewritten.
#[tokio::test]
async fn newer_versions_of_apis_with_broker_addresses_are_refused() {
    // Heartbeat v99: no addresses, passes.
    let mut h = harness(allow_all(), DEFAULT_MAX_FRAME_SIZE);
    let hb = raw_request(ApiKey::Heartbeat as i16, 99, 1, &[0; 8]);
    send(&mut h.client, &hb).await;
    assert_eq!(next(&mut h.broker_frames).await.wire(), &hb);
    // DescribeQuorum v1: no addresses, passes as it came.
    let dq = raw_request(ApiKey::DescribeQuorum as i16, 1, 2, &[0; 8]);
    send(&mut h.client, &dq).await;
    assert_eq!(next(&mut h.broker_frames).await.wire(), &dq);
    for (api, version) in [
        (ApiKey::Metadata, 99),
        (ApiKey::FindCoordinator, 99),
        (ApiKey::DescribeCluster, 99),
        (ApiKey::Produce, 99),
        (ApiKey::Fetch, 99),
        (ApiKey::ShareFetch, 99),
        // Below the readable range too (v0 also carries node endpoints).
        (ApiKey::ShareFetch, 0),
        // v2+ lists the controllers' listeners (KIP-853).
        (ApiKey::DescribeQuorum, 2),
    ] {
        let h = harness(allow_all(), DEFAULT_MAX_FRAME_SIZE);
        let mut client = h.client;
        send(&mut client, &raw_request(api as i16, version, 1, &[0; 8])).await;
        let e = ended(h.session).await;
        assert_eq!(e.reason(), "unsupported_version", "{api:?}: {e}");
        assert!(e.to_string().contains(&format!("v{version}")), "{e}");
    }
}

/// A Produce or Fetch response the gateway cannot read passes as it came
/// where it carries no broker addresses (Fetch v12: Tansu's quirk), and
/// closes the connection where it may (Produce v10+, Fetch v16+), so no
/// node endpoint reaches the client unrewritten.
#[tokio::test]
async fn unreadable_responses_pass_only_where_they_carry_no_addresses() {
    let garbage = |corr: i32, flexible: bool| {
        let mut b = corr.to_be_bytes().to_vec();
        if flexible {
            b.push(0);
        }
        b.extend([0xff; 3]);
        let mut f = (b.len() as u32).to_be_bytes().to_vec();
        f.extend(b);
        Bytes::from(f)
    };
    let mut fetch = FetchRequest::default();
    fetch.replica_id = BrokerId(-1);
    fetch.session_epoch = -1;

    let mut h = harness(allow_all(), DEFAULT_MAX_FRAME_SIZE);
    send(&mut h.client, &request_frame(12, 1, &fetch)).await;
    let _ = next(&mut h.broker_frames).await;
    let raw = garbage(1, true);
    send(&mut h.broker, &raw).await;
    assert_eq!(next(&mut h.client_frames).await.wire(), &raw);

    for (version, request) in [
        (16, request_frame(16, 2, &fetch)),
        (
            10,
            request_frame(10, 2, &produce(1, &[("orders", &[0])], &records(1, 10))),
        ),
    ] {
        let mut h = harness(allow_all(), DEFAULT_MAX_FRAME_SIZE);
        send(&mut h.client, &request).await;
        let _ = next(&mut h.broker_frames).await;
        send(&mut h.broker, &garbage(2, true)).await;
        let e = ended(h.session).await;
        assert_eq!(e.reason(), "malformed_response", "v{version}: {e}");
    }
}

/// A response body decoded at `version`, with nothing left over (a body
/// written at another version would not read cleanly).
fn decode_exact_metadata(frame_body: &[u8], version: i16) -> (i32, MetadataResponse) {
    use kafka_protocol::protocol::{Decodable, HeaderVersion};
    let mut b = Bytes::copy_from_slice(frame_body);
    let h = ResponseHeader::decode(&mut b, MetadataResponse::header_version(version)).unwrap();
    let md = MetadataResponse::decode(&mut b, version).unwrap();
    assert!(b.is_empty(), "{} bytes after a v{version} body", b.len());
    (h.correlation_id, md)
}

fn topic_names(r: &MetadataRequest) -> Vec<String> {
    r.topics
        .iter()
        .flatten()
        .map(|t| t.name.as_ref().unwrap().to_string())
        .collect()
}

fn topic_codes(md: &MetadataResponse) -> Vec<(String, i16)> {
    md.topics
        .iter()
        .map(|t| (t.name.as_ref().unwrap().to_string(), t.error_code))
        .collect()
}

/// Metadata v0-v3 have no allow_auto_topic_creation: a broker creates every
/// topic they name. A topic the principal may not create is not created
/// through them either: the request goes to the broker as v4 with
/// auto-creation off, and its answer comes back in the client's version
/// (kafka-python 2.0 asks Metadata v1).
#[tokio::test]
async fn old_metadata_versions_do_not_auto_create_without_create_permission() {
    for v in [0, 1, 2, 3] {
        // orders exists: answered as it is, Create or not.
        let mut h = harness(
            deny(vec![
                (ResourceType::Topic, "orders", Operation::Create),
                (ResourceType::Topic, "new-topic", Operation::Create),
                (ResourceType::Cluster, "kafka-cluster", Operation::Create),
            ]),
            DEFAULT_MAX_FRAME_SIZE,
        );
        send(
            &mut h.client,
            &request_frame(v, 3, &metadata_request(Some(&["orders", "new-topic"]))),
        )
        .await;
        let f = next(&mut h.broker_frames).await;
        let (hdr, req): (RequestHeader, MetadataRequest) = decode_request(f.body());
        assert_eq!(hdr.request_api_version, 4, "v{v} forwarded as v4");
        assert_eq!(hdr.correlation_id, 3);
        assert_eq!(hdr.client_id.as_deref(), Some("test-client"));
        assert!(!req.allow_auto_topic_creation, "v{v}");
        assert_eq!(topic_names(&req), ["orders", "new-topic"]);

        let mut resp = metadata_response(&["orders"]);
        resp.throttle_time_ms = 0;
        resp.cluster_id = Some(StrBytes::from_static_str("cluster-a"));
        let mut t = metadata_response::MetadataResponseTopic::default();
        t.name = Some(topic("new-topic"));
        t.error_code = 3;
        resp.topics.push(t);
        send(&mut h.broker, &response_frame(4, 3, &resp)).await;
        let f = next(&mut h.client_frames).await;
        let (corr, md) = decode_exact_metadata(f.body(), v);
        assert_eq!(corr, 3);
        assert_eq!(
            topic_codes(&md),
            vec![("orders".into(), 0), ("new-topic".into(), 29)],
            "v{v}"
        );
        assert!(
            md.brokers
                .iter()
                .all(|b| b.host.ends_with("-kafka.example.com")),
            "v{v}: {:?}",
            md.brokers
        );
        assert_eq!(md.cluster_id.is_some(), v >= 2);
    }
}

/// v0-v3 requests stay as they are where nothing needs switching off; v0
/// with a topic cut out goes as v4 (an empty v0 list means every topic).
#[tokio::test]
async fn old_metadata_versions_pass_unchanged_unless_something_is_withheld() {
    let mut h = harness(deny(vec![]), DEFAULT_MAX_FRAME_SIZE);
    let asked = request_frame(1, 4, &metadata_request(Some(&["may-create"])));
    send(&mut h.client, &asked).await;
    let f = next(&mut h.broker_frames).await;
    assert_eq!(f.wire(), &asked, "forwarded byte for byte");
    send(
        &mut h.broker,
        &response_frame(1, 4, &metadata_response(&["may-create"])),
    )
    .await;
    let (_, md) = decode_exact_metadata(next(&mut h.client_frames).await.body(), 1);
    assert_eq!(topic_codes(&md), vec![("may-create".into(), 0)]);

    // v0, only a topic the principal may not see: the broker is asked for
    // no topic at all (auto-creation stays on), not for every topic.
    send(
        &mut h.client,
        &request_frame(0, 5, &metadata_request(Some(&["secret-x"]))),
    )
    .await;
    let f = next(&mut h.broker_frames).await;
    let (hdr, req): (RequestHeader, MetadataRequest) = decode_request(f.body());
    assert_eq!(hdr.request_api_version, 4);
    assert!(req.allow_auto_topic_creation);
    assert_eq!(req.topics.as_ref().map(Vec::len), Some(0));
    send(
        &mut h.broker,
        &response_frame(4, 5, &metadata_response(&[])),
    )
    .await;
    let (corr, md) = decode_exact_metadata(next(&mut h.client_frames).await.body(), 0);
    assert_eq!(corr, 5);
    assert_eq!(topic_codes(&md), vec![("secret-x".into(), 29)]);
}

/// v2 naming a topic that may be created and one that may not: the first
/// is created by the gateway's own request in the client's version (which
/// auto-creates), the client's goes as v4 with auto-creation off.
#[tokio::test]
async fn old_metadata_versions_create_only_what_may_be_created() {
    let mut h = harness(
        deny(vec![
            (ResourceType::Topic, "no-create", Operation::Create),
            (ResourceType::Cluster, "kafka-cluster", Operation::Create),
        ]),
        DEFAULT_MAX_FRAME_SIZE,
    );
    send(
        &mut h.client,
        &request_frame(2, 6, &metadata_request(Some(&["may-create", "no-create"]))),
    )
    .await;
    let f = next(&mut h.broker_frames).await;
    let (hdr, first): (RequestHeader, MetadataRequest) = decode_request(f.body());
    assert_eq!(hdr.request_api_version, 2);
    assert_eq!(topic_names(&first), ["may-create"]);
    let f = next(&mut h.broker_frames).await;
    let (hdr, second): (RequestHeader, MetadataRequest) = decode_request(f.body());
    assert_eq!(hdr.request_api_version, 4);
    assert!(!second.allow_auto_topic_creation);
    assert_eq!(topic_names(&second), ["may-create", "no-create"]);

    let mut created = metadata_response(&[]);
    let mut t = metadata_response::MetadataResponseTopic::default();
    t.name = Some(topic("may-create"));
    t.error_code = 5;
    created.topics.push(t);
    send(&mut h.broker, &response_frame(2, 6, &created)).await;
    let mut resp = metadata_response(&[]);
    for name in ["may-create", "no-create"] {
        let mut t = metadata_response::MetadataResponseTopic::default();
        t.name = Some(topic(name));
        t.error_code = 3;
        resp.topics.push(t);
    }
    send(&mut h.broker, &response_frame(4, 6, &resp)).await;
    let (corr, md) = decode_exact_metadata(next(&mut h.client_frames).await.body(), 2);
    assert_eq!(corr, 6);
    assert_eq!(
        topic_codes(&md),
        vec![("may-create".into(), 5), ("no-create".into(), 29)]
    );
}

/// Cluster administration under a policy: ACL, log-dir and reassignment
/// APIs are offered and authorized as Kafka does (Describe on the cluster
/// to read, Alter to change); a denial is Kafka's answer
/// (CLUSTER_AUTHORIZATION_FAILED, per creation or filter for the ACL
/// changes) and the connection stays open; an allowed one is forwarded.
#[tokio::test]
async fn cluster_administration_is_authorized_on_the_cluster() {
    let mut h = harness(
        deny(vec![(
            ResourceType::Cluster,
            "kafka-cluster",
            Operation::Alter,
        )]),
        DEFAULT_MAX_FRAME_SIZE,
    );
    let mut req = CreateAclsRequest::default();
    for principal in ["User:a", "User:b"] {
        let mut c = create_acls_request::AclCreation::default();
        c.resource_type = 2;
        c.resource_name = StrBytes::from_static_str("orders");
        c.resource_pattern_type = 3;
        c.principal = StrBytes::from_static_str(principal);
        c.host = StrBytes::from_static_str("*");
        c.operation = 3;
        c.permission_type = 3;
        req.creations.push(c);
    }
    send(&mut h.client, &request_frame(3, 1, &req)).await;
    let (corr, r): (i32, CreateAclsResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 3);
    assert_eq!(corr, 1);
    let codes: Vec<i16> = r.results.iter().map(|c| c.error_code).collect();
    assert_eq!(codes, [31, 31]);

    let mut req = DeleteAclsRequest::default();
    req.filters
        .push(delete_acls_request::DeleteAclsFilter::default());
    send(&mut h.client, &request_frame(2, 2, &req)).await;
    let (_, r): (i32, DeleteAclsResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 2);
    assert_eq!(r.filter_results.len(), 1);
    assert_eq!(r.filter_results[0].error_code, 31);

    let req = AlterPartitionReassignmentsRequest::default();
    send(&mut h.client, &request_frame(0, 3, &req)).await;
    let (_, r): (i32, AlterPartitionReassignmentsResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 0);
    assert_eq!(r.error_code, 31);

    // Describe on the cluster is allowed: forwarded as it is.
    let req = DescribeAclsRequest::default();
    let asked = request_frame(3, 4, &req);
    send(&mut h.client, &asked).await;
    let f = next(&mut h.broker_frames).await;
    assert_eq!(
        f.wire(),
        &asked,
        "the broker gets the first forwarded request"
    );
    send(
        &mut h.broker,
        &response_frame(3, 4, &DescribeAclsResponse::default()),
    )
    .await;
    let (corr, r): (i32, DescribeAclsResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 3);
    assert_eq!((corr, r.error_code), (4, 0));

    // Denied Describe: DescribeLogDirs v3+ carries the error, v1 answers
    // no directories.
    let mut h = harness(
        deny(vec![(
            ResourceType::Cluster,
            "kafka-cluster",
            Operation::Describe,
        )]),
        DEFAULT_MAX_FRAME_SIZE,
    );
    send(
        &mut h.client,
        &request_frame(4, 5, &DescribeLogDirsRequest::default()),
    )
    .await;
    let (_, r): (i32, DescribeLogDirsResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 4);
    assert_eq!((r.error_code, r.results.len()), (31, 0));
    send(
        &mut h.client,
        &request_frame(1, 6, &DescribeLogDirsRequest::default()),
    )
    .await;
    let (corr, r): (i32, DescribeLogDirsResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 1);
    assert_eq!((corr, r.results.len()), (6, 0));
}

/// Client-made label values stay bounded: a version Kafka has no such API
/// at is counted as -1, one series for all.
#[tokio::test]
async fn made_up_api_versions_are_counted_as_one_series() {
    let (proxy, registry) = proxy_registered(Arc::new(AllowAll));
    let mut h = harness(proxy, DEFAULT_MAX_FRAME_SIZE);
    for (i, version) in [999i16, 1000, 4242].into_iter().enumerate() {
        let hb = raw_request(ApiKey::Heartbeat as i16, version, i as i32, &[0; 8]);
        send(&mut h.client, &hb).await;
        assert_eq!(next(&mut h.broker_frames).await.wire(), &hb);
    }
    let hb = raw_request(ApiKey::Heartbeat as i16, 4, 9, &[0; 8]);
    send(&mut h.client, &hb).await;
    let _ = next(&mut h.broker_frames).await;
    let lines = metric_lines(&registry, "weir_kafka_requests_total");
    assert_eq!(
        lines,
        [
            r#"weir_kafka_requests_total{api_key="Heartbeat",api_version="-1"} 3"#,
            r#"weir_kafka_requests_total{api_key="Heartbeat",api_version="4"} 1"#,
        ],
        "{lines:?}"
    );
}

/// Metadata v9 asking for `n` topics with empty names (2 bytes each).
fn metadata_v9_of_empty_names(n: usize, correlation_id: i32) -> Bytes {
    let mut body = Vec::new();
    let mut count = (n + 1) as u64;
    loop {
        let b = (count & 0x7f) as u8;
        count >>= 7;
        if count == 0 {
            body.push(b);
            break;
        }
        body.push(b | 0x80);
    }
    for _ in 0..n {
        body.extend_from_slice(&[0x01, 0x00]);
    }
    body.extend_from_slice(&[0, 0, 0, 0]);
    raw_request(ApiKey::Metadata as i16, 9, correlation_id, &body)
}

/// One element costs the gateway far more than its two bytes on the wire:
/// a request past the element budget closes its connection (counted as a
/// malformed frame) instead of costing gigabytes; one within it is served.
#[tokio::test]
async fn a_request_of_too_many_elements_closes_its_connection() {
    let mut h = harness(deny(vec![]), DEFAULT_MAX_FRAME_SIZE);
    send(&mut h.client, &metadata_v9_of_empty_names(100_000, 1)).await;
    let forwarded = next(&mut h.broker_frames).await;
    assert_eq!(
        forwarded.body().len(),
        metadata_v9_of_empty_names(100_000, 1).len() - 4
    );

    let mut h = harness(deny(vec![]), DEFAULT_MAX_FRAME_SIZE);
    send(&mut h.client, &metadata_v9_of_empty_names((1 << 18) + 1, 1)).await;
    let err = ended(h.session).await;
    assert_eq!(err.reason(), "malformed_frame");
    assert!(err.to_string().contains("more array elements"), "{err}");
}

/// Kafka answers Metadata by id once a topic has a non-zero id, ignoring
/// names: a name the principal may describe sent beside the id of one it
/// may not must not let the id through.
#[tokio::test]
async fn metadata_by_id_is_authorized_by_the_id_not_a_name_beside_it() {
    let proxy = deny(vec![]);
    let id = [7u8; 16];
    proxy.registry().learn_topic(id, "secret-payroll");
    proxy.registry().learn_topic([8u8; 16], "orders");
    let mut h = harness(proxy, DEFAULT_MAX_FRAME_SIZE);
    let mut req = MetadataRequest::default();
    let mut t = metadata_request::MetadataRequestTopic::default();
    t.topic_id = uuid::Uuid::from_bytes(id);
    t.name = Some(topic("orders"));
    req.topics = Some(vec![t]);
    send(&mut h.client, &request_frame(12, 1, &req)).await;
    // The broker is asked for its brokers only, not for the topic.
    let (_, fwd): (RequestHeader, MetadataRequest) =
        decode_request(next(&mut h.broker_frames).await.body());
    assert_eq!(fwd.topics.map(|t| t.len()), Some(0));
    send(
        &mut h.broker,
        &response_frame(12, 1, &metadata_response(&[])),
    )
    .await;
    let (_, r): (i32, MetadataResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 12);
    let got: Vec<(Option<String>, [u8; 16], i16)> = r
        .topics
        .iter()
        .map(|t| {
            (
                t.name.as_ref().map(|n| n.to_string()),
                *t.topic_id.as_bytes(),
                t.error_code,
            )
        })
        .collect();
    assert_eq!(got, vec![(None, id, 29)]);
}

/// A follower's Fetch (replica_id up to v14, ReplicaState from v15) reads
/// past the high watermark; Kafka serves it only with ClusterAction, which
/// a client of the gateway never has under a policy: every partition 29,
/// nothing forwarded. A consumer's Fetch of the same topic goes through.
#[tokio::test]
async fn a_fetch_as_a_replica_is_refused_under_a_policy() {
    let fetch = |version: i16, replica: i32| {
        let mut req = FetchRequest::default();
        let mut t = fetch_request::FetchTopic::default();
        if version <= 14 {
            req.replica_id = BrokerId(replica);
        } else {
            req.replica_state.replica_id = BrokerId(replica);
        }
        if version <= 12 {
            t.topic = topic("orders");
        } else {
            t.topic_id = uuid::Uuid::from_bytes([8; 16]);
        }
        req.session_epoch = -1;
        let mut p = fetch_request::FetchPartition::default();
        p.partition = 3;
        t.partitions.push(p);
        req.topics.push(t);
        req
    };
    let proxy = deny(vec![]);
    proxy.registry().learn_topic([8u8; 16], "orders");
    let mut h = harness(proxy, DEFAULT_MAX_FRAME_SIZE);
    for (i, version) in [(1, 12i16), (2, 15)] {
        send(
            &mut h.client,
            &request_frame(version, i, &fetch(version, 1)),
        )
        .await;
        let (c, r): (i32, FetchResponse) =
            decode_response(next(&mut h.client_frames).await.body(), version);
        assert_eq!(c, i);
        let codes: Vec<(i32, i16)> = r
            .responses
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (p.partition_index, p.error_code))
            })
            .collect();
        assert_eq!(codes, [(3, 29)], "v{version}");
    }
    // In the fetch session a consumer opened: the broker would serve the
    // session's partitions to the "replica" with no topic named, or with
    // every named topic cut out. Answered by the gateway alike.
    for (i, version, named) in [(4, 12i16, false), (5, 15, false), (6, 15, true)] {
        let mut req = fetch(version, 1);
        req.session_id = 77;
        req.session_epoch = 1;
        if !named {
            req.topics.clear();
        }
        send(&mut h.client, &request_frame(version, i, &req)).await;
        let (c, r): (i32, FetchResponse) =
            decode_response(next(&mut h.client_frames).await.body(), version);
        assert_eq!(c, i, "answered by the gateway");
        assert!(
            r.responses
                .iter()
                .flat_map(|t| &t.partitions)
                .all(|p| p.error_code == 29),
            "v{version}"
        );
        assert_eq!(r.responses.len(), usize::from(named), "v{version}");
    }
    // A consumer (replica -1): forwarded (the first frame the broker sees).
    send(&mut h.client, &request_frame(15, 3, &fetch(15, -1))).await;
    let f = next(&mut h.broker_frames).await;
    let (hdr, _): (RequestHeader, FetchRequest) = decode_request(f.body());
    assert_eq!(hdr.correlation_id, 3);
}

/// As a broker closes a connection idle for connections.max.idle.ms, the
/// gateway closes one that sends no request for its idle timeout; a
/// connection with requests stays.
#[tokio::test]
async fn an_idle_connection_is_closed() {
    let mut config = weir_kafka::KafkaProxyConfig::new(mapper(), vec![]);
    config.idle_timeout = std::time::Duration::from_millis(300);
    let proxy = Arc::new(weir_kafka::KafkaProxy::new(
        config,
        Arc::new(weir_kafka::TcpConnector::default()),
        Arc::new(AllowAll),
        Arc::new(weir_kafka::KafkaMetrics::unregistered()),
    ));
    let mut h = harness(proxy, DEFAULT_MAX_FRAME_SIZE);
    for i in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let hb = raw_request(ApiKey::Heartbeat as i16, 4, i, &[0; 8]);
        send(&mut h.client, &hb).await;
        assert_eq!(next(&mut h.broker_frames).await.wire(), &hb);
    }
    let err = ended(h.session).await;
    assert_eq!(err.reason(), "idle_timeout");
    assert!(!err.is_bad_input());
}

/// A name that is not UTF-8 cannot be authorized (read as the empty name,
/// `secret\xff` would escape a DENY of `secret*`): the request is
/// malformed, and that connection is closed as bad input.
#[tokio::test]
async fn a_name_that_is_not_utf8_closes_the_connection() {
    let mut h = harness(deny(vec![]), DEFAULT_MAX_FRAME_SIZE);
    // Heartbeat v4: group_id, generation_id, member_id, group_instance_id
    // (null), no tagged fields.
    let mut body = vec![8u8];
    body.extend_from_slice(b"secret\xff");
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&[2, b'm', 0, 0]);
    send(
        &mut h.client,
        &raw_request(ApiKey::Heartbeat as i16, 4, 9, &body),
    )
    .await;
    let err = ended(h.session).await;
    assert!(err.is_bad_input(), "{err}");
    assert!(err.to_string().contains("group_id"), "{err}");
}

/// Requests pipelined before one that closes the connection are answered
/// first, as a broker answers a connection's requests in order: the
/// Metadata request sent in the same write as a Metadata v99 gets its
/// answer, then the connection closes (unsupported_version).
#[tokio::test]
async fn requests_before_a_closing_one_are_answered() {
    let mut h = harness(allow_all(), DEFAULT_MAX_FRAME_SIZE);
    let mut both = request_frame(9, 1, &metadata_request(Some(&["orders"]))).to_vec();
    both.extend_from_slice(&raw_request(ApiKey::Metadata as i16, 99, 2, &[0; 8]));
    send(&mut h.client, &Bytes::from(both)).await;
    let f = next(&mut h.broker_frames).await;
    let (hdr, _): (RequestHeader, MetadataRequest) = decode_request(f.body());
    assert_eq!(hdr.correlation_id, 1, "the first request was forwarded");
    send(
        &mut h.broker,
        &response_frame(9, 1, &metadata_response(&["orders"])),
    )
    .await;
    let (corr, md): (i32, MetadataResponse) =
        decode_response(next(&mut h.client_frames).await.body(), 9);
    assert_eq!((corr, md.topics.len()), (1, 1), "answered before the close");
    let e = ended(h.session).await;
    assert_eq!(e.reason(), "unsupported_version", "{e}");
}
