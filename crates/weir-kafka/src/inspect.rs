//! Zero-copy walks of the requests the gateway authorizes: what resources a
//! request names, and where each filterable entry (a topic, a group, a
//! config resource, a coordinator key) lies in the body, so denied entries
//! can be cut out without decoding and re-encoding the rest (record data is
//! never copied or parsed beyond batch headers).
//!
//! Only the part of a body up to the end of its entry array is walked; what
//! follows is copied as it is. Every length is checked before use.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use weir_core::kafka::{Operation, ResourceType};

use crate::authz::Ask;
use crate::error::Malformed;
use crate::records::{count_records, RecordCount};
use crate::wire::{put_array_len, Reader};

/// Kafka error codes the gateway answers with.
pub mod codes {
    /// UNSUPPORTED_VERSION
    pub const UNSUPPORTED_VERSION: i16 = 35;
    /// TOPIC_AUTHORIZATION_FAILED
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    /// GROUP_AUTHORIZATION_FAILED
    pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    /// CLUSTER_AUTHORIZATION_FAILED
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    /// TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    /// OPERATION_NOT_ATTEMPTED
    pub const OPERATION_NOT_ATTEMPTED: i16 = 55;
    /// UNKNOWN_TOPIC_ID
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    /// UNKNOWN_TOPIC_OR_PARTITION
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    /// LEADER_NOT_AVAILABLE
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
}

/// The error code a broker answers when `resource` is not authorized.
pub fn denial_code(resource: ResourceType) -> i16 {
    match resource {
        ResourceType::Topic => codes::TOPIC_AUTHORIZATION_FAILED,
        ResourceType::Group => codes::GROUP_AUTHORIZATION_FAILED,
        ResourceType::TransactionalId => codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        ResourceType::Cluster => codes::CLUSTER_AUTHORIZATION_FAILED,
    }
}

/// A resource name in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameRef {
    /// A string at this range of the frame body.
    Body(Range<usize>),
    /// A topic id (named by id in newer versions).
    TopicId([u8; 16]),
    /// The cluster.
    Cluster,
}

/// One authorization question of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    pub resource: ResourceType,
    pub name: NameRef,
    pub op: Operation,
    /// The question asked: `op` on the resource, or one of the requests
    /// Kafka authorizes by more than one question.
    pub ask: Ask,
}

/// A filterable element of a request's main array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The element's bytes in the frame body.
    pub range: Range<usize>,
    /// What must be allowed for the element to pass (one or two checks on
    /// the same name).
    pub check: Check,
    /// Partition indexes in the element (for per-partition error entries).
    pub partitions: Vec<i32>,
    /// Produce: the records the element carries.
    pub records: RecordCount,
    /// DescribeConfigs: resource type; FindCoordinator: key type.
    pub kind: i8,
}

/// A request's main array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entries {
    /// The encoded element count.
    pub count_at: Range<usize>,
    pub flexible: bool,
    pub items: Vec<Entry>,
}

impl Entries {
    fn new(count_at: Range<usize>, flexible: bool) -> Self {
        Entries {
            count_at,
            flexible,
            items: Vec::new(),
        }
    }

    fn end(&self) -> usize {
        self.items.last().map_or(self.count_at.end, |e| e.range.end)
    }
}

/// Metadata request facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetadataFacts {
    /// Null topics (or an empty array in v0): every topic.
    pub all_topics: bool,
    /// Where allow_auto_topic_creation is, if the version has it and it is true.
    pub auto_create_at: Option<usize>,
    /// v0-v3 with a topic list: the broker creates every topic it does not
    /// have (those versions have no allow_auto_topic_creation; Kafka reads
    /// them as true).
    pub implicit_auto_create: bool,
}

impl MetadataFacts {
    /// Whether the broker would create topics the request names.
    pub fn auto_creates(&self) -> bool {
        self.auto_create_at.is_some() || self.implicit_auto_create
    }
}

/// What a request asks, for authorization.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Inspection {
    /// Checks the whole request depends on (the group of a JoinGroup, the
    /// transactional id of a Produce).
    pub whole: Vec<Check>,
    /// The filterable elements.
    pub entries: Option<Entries>,
    /// Produce acks (-1 unless Produce).
    pub acks: i16,
    /// Fetch: not part of an incremental fetch session.
    pub sessionless: bool,
    /// Metadata facts.
    pub metadata: Option<MetadataFacts>,
    /// OffsetFetch v2-v7: null topics, i.e. every partition the group has
    /// offsets for.
    pub all_partitions: bool,
    /// OffsetFetch v8+: the groups (names in the body) asked for every
    /// partition.
    pub all_partitions_groups: Vec<Range<usize>>,
    /// OffsetFetch v0-v1: the topics (names in the body) and partitions
    /// asked for; those versions answer a denied group per partition.
    pub offset_fetch_topics: Vec<(Range<usize>, Vec<i32>)>,
    /// Fetch: a follower's fetch (`replica_id` ≥ 0 up to v14, a
    /// `ReplicaState` from v15), which Kafka serves only with ClusterAction.
    pub replica_fetch: bool,
    /// ConsumerGroupHeartbeat v1+: a `subscribed_topic_regex`, which the
    /// broker resolves as the gateway's principal, not the client's.
    pub topic_regex: bool,
}

impl Inspection {
    fn with_acks() -> Self {
        Inspection {
            acks: -1,
            ..Default::default()
        }
    }
}

type Result<T> = std::result::Result<T, Malformed>;

fn body_name(r: &mut Reader<'_>, flexible: bool, what: &'static str) -> Result<NameRef> {
    Ok(NameRef::Body(r.required_string(flexible, what)?))
}

fn check(resource: ResourceType, name: NameRef, op: Operation) -> Check {
    Check {
        resource,
        name,
        op,
        ask: Ask::Acl,
    }
}

/// Walks the body (starting at `start` in the frame body `body`) of a
/// request of `api` at `version`. Only called for inspected versions.
pub(crate) fn inspect(
    api: ApiKey,
    version: i16,
    flexible: bool,
    body: &[u8],
    start: usize,
) -> Result<Inspection> {
    let mut r = Reader::new(body, start);
    let f = flexible;
    let v = version;
    let mut ins = Inspection::with_acks();
    match api {
        ApiKey::Produce => {
            if let Some(txn) = r.string(f, "transactional_id")? {
                ins.whole.push(check(
                    ResourceType::TransactionalId,
                    NameRef::Body(txn),
                    Operation::Write,
                ));
            }
            ins.acks = r.i16("acks")?;
            r.i32("timeout_ms")?;
            ins.entries = Some(entries(&mut r, f, "topic_data", |r| {
                let name = if v <= 12 {
                    body_name(r, f, "topic name")?
                } else {
                    NameRef::TopicId(r.uuid("topic_id")?)
                };
                let mut partitions = Vec::new();
                let mut records = RecordCount::default();
                let n = r.required_array(f, "partition_data")?;
                for _ in 0..n {
                    partitions.push(r.i32("partition index")?);
                    if let Some(range) = r.bytes(f, "records")? {
                        records += count_records(&body[range]);
                    }
                    r.skip_tags(f)?;
                }
                r.skip_tags(f)?;
                Ok((
                    check(ResourceType::Topic, name, Operation::Write),
                    partitions,
                    records,
                    0,
                ))
            })?);
        }
        ApiKey::Fetch => {
            if v <= 14 {
                ins.replica_fetch = r.i32("replica_id")? >= 0;
            }
            r.i32("max_wait_ms")?;
            r.i32("min_bytes")?;
            r.i32("max_bytes")?;
            r.i8("isolation_level")?;
            ins.sessionless = true;
            if v >= 7 {
                let session_id = r.i32("session_id")?;
                let epoch = r.i32("session_epoch")?;
                ins.sessionless = session_id == 0 && (epoch == -1 || epoch == 0);
            }
            ins.entries = Some(entries(&mut r, f, "topics", |r| {
                let name = if v <= 12 {
                    body_name(r, f, "topic name")?
                } else {
                    NameRef::TopicId(r.uuid("topic_id")?)
                };
                let mut partitions = Vec::new();
                let n = r.required_array(f, "partitions")?;
                for _ in 0..n {
                    partitions.push(r.i32("partition")?);
                    if v >= 9 {
                        r.i32("current_leader_epoch")?;
                    }
                    r.i64("fetch_offset")?;
                    if v >= 12 {
                        r.i32("last_fetched_epoch")?;
                    }
                    if v >= 5 {
                        r.i64("log_start_offset")?;
                    }
                    r.i32("partition_max_bytes")?;
                    r.skip_tags(f)?;
                }
                r.skip_tags(f)?;
                Ok((
                    check(ResourceType::Topic, name, Operation::Read),
                    partitions,
                    RecordCount::default(),
                    0,
                ))
            })?);
            if v >= 15 {
                ins.replica_fetch = fetch_replica_state(&mut r, v, f)?;
            }
        }
        ApiKey::ListOffsets => {
            r.i32("replica_id")?;
            if v >= 2 {
                r.i8("isolation_level")?;
            }
            ins.entries = Some(entries(&mut r, f, "topics", |r| {
                let name = body_name(r, f, "topic name")?;
                let mut partitions = Vec::new();
                let n = r.required_array(f, "partitions")?;
                for _ in 0..n {
                    partitions.push(r.i32("partition_index")?);
                    if v >= 4 {
                        r.i32("current_leader_epoch")?;
                    }
                    r.i64("timestamp")?;
                    r.skip_tags(f)?;
                }
                r.skip_tags(f)?;
                Ok((
                    check(ResourceType::Topic, name, Operation::Describe),
                    partitions,
                    RecordCount::default(),
                    0,
                ))
            })?);
        }
        ApiKey::Metadata => {
            let count_start = r.pos();
            let n = r.array(f, "topics")?;
            let mut list = Entries::new(count_start..r.pos(), f);
            let mut ids = Vec::new();
            for _ in 0..n.unwrap_or(0) {
                let s = r.pos();
                let id = if v >= 10 {
                    r.uuid("topic_id")?
                } else {
                    [0; 16]
                };
                let name = if v >= 10 {
                    r.string(f, "topic name")?
                } else {
                    Some(r.required_string(f, "topic name")?)
                };
                r.skip_tags(f)?;
                let name = match name {
                    Some(range) => NameRef::Body(range),
                    None => NameRef::TopicId(id),
                };
                ids.push(id);
                list.items.push(Entry {
                    range: s..r.pos(),
                    check: check(ResourceType::Topic, name, Operation::Describe),
                    partitions: Vec::new(),
                    records: RecordCount::default(),
                    kind: 0,
                });
            }
            // Kafka answers by id as soon as one topic has a non-zero id,
            // ignoring every name (KafkaApis.handleTopicMetadataRequest):
            // then a topic is authorized by its id, never by a name sent
            // beside it (a name the principal may describe beside the id
            // of one it may not).
            if ids.iter().any(|id| *id != [0; 16]) {
                for (e, id) in list.items.iter_mut().zip(ids) {
                    e.check.name = NameRef::TopicId(id);
                }
            }
            let all_topics = n.is_none() || (v == 0 && n == Some(0));
            let mut auto_create_at = None;
            if v >= 4 {
                let at = r.pos();
                if r.i8("allow_auto_topic_creation")? != 0 {
                    auto_create_at = Some(at);
                }
            }
            ins.metadata = Some(MetadataFacts {
                all_topics,
                auto_create_at,
                implicit_auto_create: v < 4 && !all_topics && n.unwrap_or(0) > 0,
            });
            ins.entries = Some(list);
        }
        ApiKey::OffsetCommit => {
            let group = body_name(&mut r, f, "group_id")?;
            ins.whole
                .push(check(ResourceType::Group, group, Operation::Read));
            r.i32("generation_id")?;
            r.string(f, "member_id")?;
            if v >= 7 {
                r.string(f, "group_instance_id")?;
            }
            if v <= 4 {
                r.i64("retention_time_ms")?;
            }
            ins.entries = Some(entries(&mut r, f, "topics", |r| {
                let name = body_name(r, f, "topic name")?;
                let mut partitions = Vec::new();
                let n = r.required_array(f, "partitions")?;
                for _ in 0..n {
                    partitions.push(r.i32("partition_index")?);
                    r.i64("committed_offset")?;
                    if v >= 6 {
                        r.i32("committed_leader_epoch")?;
                    }
                    r.string(f, "committed_metadata")?;
                    r.skip_tags(f)?;
                }
                r.skip_tags(f)?;
                Ok((
                    check(ResourceType::Topic, name, Operation::Read),
                    partitions,
                    RecordCount::default(),
                    0,
                ))
            })?);
        }
        ApiKey::OffsetFetch => {
            if v <= 7 {
                let group = body_name(&mut r, f, "group_id")?;
                ins.whole
                    .push(check(ResourceType::Group, group, Operation::Describe));
                // Null topics (v2+): every partition with an offset.
                let topics = r.array(f, "topics")?;
                ins.all_partitions = v >= 2 && topics.is_none();
                if v <= 1 {
                    for _ in 0..topics.unwrap_or(0) {
                        let name = r.required_string(f, "topic name")?;
                        let partitions = r.i32_array(f, "partition_indexes")?;
                        ins.offset_fetch_topics.push((name, partitions));
                    }
                }
            } else {
                let mut all_groups = Vec::new();
                ins.entries = Some(entries(&mut r, f, "groups", |r| {
                    let group = r.required_string(f, "group_id")?;
                    if v >= 9 {
                        r.string(f, "member_id")?;
                        r.i32("member_epoch")?;
                    }
                    let mut partitions = Vec::new();
                    match r.array(f, "topics")? {
                        None => all_groups.push(group.clone()),
                        Some(n) => {
                            for _ in 0..n {
                                r.required_string(f, "topic name")?;
                                partitions.extend(r.i32_array(f, "partition_indexes")?);
                                r.skip_tags(f)?;
                            }
                        }
                    }
                    let group = NameRef::Body(group);
                    r.skip_tags(f)?;
                    Ok((
                        check(ResourceType::Group, group, Operation::Describe),
                        Vec::new(),
                        RecordCount::default(),
                        0,
                    ))
                })?);
                ins.all_partitions_groups = all_groups;
            }
        }
        ApiKey::FindCoordinator => {
            if v <= 3 {
                let key = body_name(&mut r, f, "key")?;
                let key_type = if v >= 1 { r.i8("key_type")? } else { 0 };
                ins.whole.push(coordinator_check(key_type, key));
            } else {
                let key_type = r.i8("key_type")?;
                ins.entries = Some(entries(&mut r, f, "coordinator_keys", |r| {
                    let key = body_name(r, f, "coordinator key")?;
                    Ok((
                        coordinator_check(key_type, key),
                        Vec::new(),
                        RecordCount::default(),
                        key_type,
                    ))
                })?);
            }
        }
        ApiKey::JoinGroup | ApiKey::SyncGroup | ApiKey::Heartbeat | ApiKey::LeaveGroup => {
            let group = body_name(&mut r, f, "group_id")?;
            ins.whole
                .push(check(ResourceType::Group, group, Operation::Read));
        }
        ApiKey::ConsumerGroupHeartbeat => {
            let group = body_name(&mut r, f, "group_id")?;
            ins.whole
                .push(check(ResourceType::Group, group, Operation::Read));
            // Kafka 3.8+: Describe on every subscribed topic name, else
            // the whole answer is TOPIC_AUTHORIZATION_FAILED.
            r.string(f, "member_id")?;
            r.i32("member_epoch")?;
            r.string(f, "instance_id")?;
            r.string(f, "rack_id")?;
            r.i32("rebalance_timeout_ms")?;
            if let Some(n) = r.array(f, "subscribed_topic_names")? {
                for _ in 0..n {
                    let name = body_name(&mut r, f, "subscribed topic name")?;
                    ins.whole
                        .push(check(ResourceType::Topic, name, Operation::Describe));
                }
            }
            if v >= 1 {
                ins.topic_regex = r.string(f, "subscribed_topic_regex")?.is_some();
            }
        }
        ApiKey::DescribeGroups | ApiKey::DeleteGroups => {
            let op = if api == ApiKey::DescribeGroups {
                Operation::Describe
            } else {
                Operation::Delete
            };
            ins.entries = Some(entries(&mut r, f, "groups", |r| {
                let group = body_name(r, f, "group id")?;
                Ok((
                    check(ResourceType::Group, group, op),
                    Vec::new(),
                    RecordCount::default(),
                    0,
                ))
            })?);
        }
        ApiKey::CreateTopics => {
            ins.entries = Some(entries(&mut r, f, "topics", |r| {
                let name = body_name(r, f, "topic name")?;
                r.i32("num_partitions")?;
                r.i16("replication_factor")?;
                let n = r.required_array(f, "assignments")?;
                for _ in 0..n {
                    r.i32("partition_index")?;
                    r.i32_array(f, "broker_ids")?;
                    r.skip_tags(f)?;
                }
                let n = r.required_array(f, "configs")?;
                for _ in 0..n {
                    r.required_string(f, "config name")?;
                    r.string(f, "config value")?;
                    r.skip_tags(f)?;
                }
                r.skip_tags(f)?;
                // Kafka: Create on the cluster, else Create on the topic.
                Ok((
                    Check {
                        ask: Ask::TopicCreation,
                        ..check(ResourceType::Topic, name, Operation::Create)
                    },
                    Vec::new(),
                    RecordCount::default(),
                    0,
                ))
            })?);
        }
        ApiKey::DeleteTopics => {
            if v <= 5 {
                ins.entries = Some(entries(&mut r, f, "topic_names", |r| {
                    let name = body_name(r, f, "topic name")?;
                    Ok((
                        check(ResourceType::Topic, name, Operation::Delete),
                        Vec::new(),
                        RecordCount::default(),
                        0,
                    ))
                })?);
            } else {
                ins.entries = Some(entries(&mut r, f, "topics", |r| {
                    let name = r.string(f, "topic name")?;
                    let id = r.uuid("topic_id")?;
                    r.skip_tags(f)?;
                    let name = match name {
                        Some(range) => NameRef::Body(range),
                        None => NameRef::TopicId(id),
                    };
                    Ok((
                        check(ResourceType::Topic, name, Operation::Delete),
                        Vec::new(),
                        RecordCount::default(),
                        0,
                    ))
                })?);
            }
        }
        ApiKey::InitProducerId => match r.string(f, "transactional_id")? {
            Some(txn) => ins.whole.push(check(
                ResourceType::TransactionalId,
                NameRef::Body(txn),
                Operation::Write,
            )),
            // Kafka 2.8+: IdempotentWrite on the cluster, else Write on any topic.
            None => ins.whole.push(Check {
                ask: Ask::IdempotentProducer,
                ..check(
                    ResourceType::Cluster,
                    NameRef::Cluster,
                    Operation::IdempotentWrite,
                )
            }),
        },
        ApiKey::DescribeConfigs => {
            ins.entries = Some(entries(&mut r, f, "resources", |r| {
                let kind = r.i8("resource_type")?;
                let name = r.required_string(f, "resource_name")?;
                if let Some(n) = r.array(f, "configuration_keys")? {
                    for _ in 0..n {
                        r.required_string(f, "configuration key")?;
                    }
                }
                r.skip_tags(f)?;
                Ok((
                    config_check(kind, name, Operation::DescribeConfigs),
                    Vec::new(),
                    RecordCount::default(),
                    kind,
                ))
            })?);
        }
        ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs => {
            let incremental = api == ApiKey::IncrementalAlterConfigs;
            ins.entries = Some(entries(&mut r, f, "resources", |r| {
                let kind = r.i8("resource_type")?;
                let name = r.required_string(f, "resource_name")?;
                let n = r.required_array(f, "configs")?;
                for _ in 0..n {
                    r.required_string(f, "config name")?;
                    if incremental {
                        r.i8("config_operation")?;
                    }
                    r.string(f, "config value")?;
                    r.skip_tags(f)?;
                }
                r.skip_tags(f)?;
                Ok((
                    config_check(kind, name, Operation::AlterConfigs),
                    Vec::new(),
                    RecordCount::default(),
                    kind,
                ))
            })?);
        }
        ApiKey::DeleteRecords => {
            ins.entries = Some(entries(&mut r, f, "topics", |r| {
                let name = body_name(r, f, "topic name")?;
                let mut partitions = Vec::new();
                let n = r.required_array(f, "partitions")?;
                for _ in 0..n {
                    partitions.push(r.i32("partition_index")?);
                    r.i64("offset")?;
                    r.skip_tags(f)?;
                }
                r.skip_tags(f)?;
                Ok((
                    check(ResourceType::Topic, name, Operation::Delete),
                    partitions,
                    RecordCount::default(),
                    0,
                ))
            })?);
        }
        ApiKey::CreatePartitions => {
            ins.entries = Some(entries(&mut r, f, "topics", |r| {
                let name = body_name(r, f, "topic name")?;
                r.i32("count")?;
                if let Some(n) = r.array(f, "assignments")? {
                    for _ in 0..n {
                        r.i32_array(f, "broker_ids")?;
                        r.skip_tags(f)?;
                    }
                }
                r.skip_tags(f)?;
                Ok((
                    check(ResourceType::Topic, name, Operation::Alter),
                    Vec::new(),
                    RecordCount::default(),
                    0,
                ))
            })?);
        }
        ApiKey::OffsetDelete => {
            let group = body_name(&mut r, f, "group_id")?;
            ins.whole
                .push(check(ResourceType::Group, group, Operation::Delete));
            ins.entries = Some(entries(&mut r, f, "topics", |r| {
                let name = body_name(r, f, "topic name")?;
                let mut partitions = Vec::new();
                let n = r.required_array(f, "partitions")?;
                for _ in 0..n {
                    partitions.push(r.i32("partition_index")?);
                    r.skip_tags(f)?;
                }
                r.skip_tags(f)?;
                Ok((
                    check(ResourceType::Topic, name, Operation::Read),
                    partitions,
                    RecordCount::default(),
                    0,
                ))
            })?);
        }
        ApiKey::OffsetForLeaderEpoch => {
            if v >= 3 {
                r.i32("replica_id")?;
            }
            ins.entries = Some(entries(&mut r, f, "topics", |r| {
                let name = body_name(r, f, "topic name")?;
                let mut partitions = Vec::new();
                let n = r.required_array(f, "partitions")?;
                for _ in 0..n {
                    partitions.push(r.i32("partition")?);
                    r.i32("current_leader_epoch")?;
                    r.i32("leader_epoch")?;
                    r.skip_tags(f)?;
                }
                r.skip_tags(f)?;
                Ok((
                    check(ResourceType::Topic, name, Operation::Describe),
                    partitions,
                    RecordCount::default(),
                    0,
                ))
            })?);
        }
        ApiKey::AddPartitionsToTxn => {
            // v0-3, what clients send (v4+ is broker to broker and is not
            // offered through the gateway).
            let txn = body_name(&mut r, f, "transactional_id")?;
            ins.whole
                .push(check(ResourceType::TransactionalId, txn, Operation::Write));
            r.i64("producer_id")?;
            r.i16("producer_epoch")?;
            ins.entries = Some(entries(&mut r, f, "topics", |r| {
                let name = body_name(r, f, "topic name")?;
                let partitions = r.i32_array(f, "partitions")?;
                r.skip_tags(f)?;
                Ok((
                    check(ResourceType::Topic, name, Operation::Write),
                    partitions,
                    RecordCount::default(),
                    0,
                ))
            })?);
        }
        ApiKey::AddOffsetsToTxn => {
            let txn = body_name(&mut r, f, "transactional_id")?;
            r.i64("producer_id")?;
            r.i16("producer_epoch")?;
            let group = body_name(&mut r, f, "group_id")?;
            ins.whole
                .push(check(ResourceType::TransactionalId, txn, Operation::Write));
            ins.whole
                .push(check(ResourceType::Group, group, Operation::Read));
        }
        ApiKey::EndTxn => {
            let txn = body_name(&mut r, f, "transactional_id")?;
            ins.whole
                .push(check(ResourceType::TransactionalId, txn, Operation::Write));
        }
        ApiKey::TxnOffsetCommit => {
            let txn = body_name(&mut r, f, "transactional_id")?;
            let group = body_name(&mut r, f, "group_id")?;
            ins.whole
                .push(check(ResourceType::TransactionalId, txn, Operation::Write));
            ins.whole
                .push(check(ResourceType::Group, group, Operation::Read));
            r.i64("producer_id")?;
            r.i16("producer_epoch")?;
            if v >= 3 {
                r.i32("generation_id")?;
                r.required_string(f, "member_id")?;
                r.string(f, "group_instance_id")?;
            }
            ins.entries = Some(entries(&mut r, f, "topics", |r| {
                let name = body_name(r, f, "topic name")?;
                let mut partitions = Vec::new();
                let n = r.required_array(f, "partitions")?;
                for _ in 0..n {
                    partitions.push(r.i32("partition_index")?);
                    r.i64("committed_offset")?;
                    if v >= 2 {
                        r.i32("committed_leader_epoch")?;
                    }
                    r.string(f, "committed_metadata")?;
                    r.skip_tags(f)?;
                }
                r.skip_tags(f)?;
                Ok((
                    check(ResourceType::Topic, name, Operation::Read),
                    partitions,
                    RecordCount::default(),
                    0,
                ))
            })?);
        }
        // Cluster administration, as KafkaApis authorizes it: Describe on
        // the cluster to read, Alter to change.
        ApiKey::DescribeAcls | ApiKey::DescribeLogDirs | ApiKey::ListPartitionReassignments => {
            ins.whole.push(check(
                ResourceType::Cluster,
                NameRef::Cluster,
                Operation::Describe,
            ))
        }
        ApiKey::AlterPartitionReassignments => ins.whole.push(check(
            ResourceType::Cluster,
            NameRef::Cluster,
            Operation::Alter,
        )),
        // One answer per creation (or filter), so each is an element. A
        // filter is a binding whose strings may be null.
        ApiKey::CreateAcls | ApiKey::DeleteAcls => {
            let filter = api == ApiKey::DeleteAcls;
            let what = if filter { "filters" } else { "creations" };
            ins.entries = Some(entries(&mut r, f, what, |r| {
                let string = |r: &mut Reader<'_>, what| {
                    if filter {
                        r.string(f, what).map(drop)
                    } else {
                        r.required_string(f, what).map(drop)
                    }
                };
                r.i8("resource_type")?;
                string(r, "resource_name")?;
                r.i8("pattern_type")?;
                string(r, "principal")?;
                string(r, "host")?;
                r.i8("operation")?;
                r.i8("permission_type")?;
                r.skip_tags(f)?;
                Ok((
                    check(ResourceType::Cluster, NameRef::Cluster, Operation::Alter),
                    Vec::new(),
                    RecordCount::default(),
                    0,
                ))
            })?);
        }
        _ => {}
    }
    Ok(ins)
}

/// Fetch v15+ after its topics: whether the request carries a
/// `ReplicaState` (tagged field 1) naming a replica (`replica_id` ≥ 0).
fn fetch_replica_state(r: &mut Reader<'_>, v: i16, f: bool) -> Result<bool> {
    let n = r.required_array(f, "forgotten_topics_data")?;
    for _ in 0..n {
        if v <= 12 {
            r.string(f, "forgotten topic name")?;
        } else {
            r.uuid("forgotten topic id")?;
        }
        let parts = r.required_array(f, "forgotten partitions")?;
        for _ in 0..parts {
            r.i32("forgotten partition")?;
        }
        r.skip_tags(f)?;
    }
    r.string(f, "rack_id")?;
    let tags = r.uvarint("tagged fields")?;
    let mut replica = false;
    for _ in 0..tags {
        let tag = r.uvarint("tag")?;
        let len = r.uvarint("tagged field size")? as usize;
        let at = r.pos();
        if tag == 1 {
            // ReplicaState: replica_id, replica_epoch, tags.
            replica |= r.i32("replica_state.replica_id")? >= 0;
        }
        let read = r.pos() - at;
        r.skip(len.saturating_sub(read), "tagged field")?;
        if r.pos() - at != len {
            return Err(Malformed::new("tagged field size", at));
        }
    }
    Ok(replica)
}

/// FindCoordinator key type 0 is a group, 1 a transactional id.
fn coordinator_check(key_type: i8, key: NameRef) -> Check {
    let resource = if key_type == 1 {
        ResourceType::TransactionalId
    } else {
        ResourceType::Group
    };
    check(resource, key, Operation::Describe)
}

/// Config resource types (Kafka's `ConfigResource.Type`): 2 topic, 32
/// group; the others (4 broker, 8 broker logger, 16 client metrics) are
/// cluster-level, as a broker authorizes them.
fn config_check(kind: i8, name: Range<usize>, op: Operation) -> Check {
    match kind {
        2 => check(ResourceType::Topic, NameRef::Body(name), op),
        32 => check(ResourceType::Group, NameRef::Body(name), op),
        _ => check(ResourceType::Cluster, NameRef::Cluster, op),
    }
}

/// The resource name of a config resource element (DescribeConfigs,
/// AlterConfigs, IncrementalAlterConfigs: resource type, then name).
pub(crate) fn config_resource_name(
    body: &[u8],
    entry: &Entry,
    flexible: bool,
) -> Option<Range<usize>> {
    let mut r = Reader::new(&body[..entry.range.end], entry.range.start);
    r.i8("resource_type").ok()?;
    r.required_string(flexible, "resource_name").ok()
}

type Walked = (Check, Vec<i32>, RecordCount, i8);

fn entries(
    r: &mut Reader<'_>,
    flexible: bool,
    what: &'static str,
    mut item: impl FnMut(&mut Reader<'_>) -> Result<Walked>,
) -> Result<Entries> {
    let start = r.pos();
    let n = r.required_array(flexible, what)?;
    let mut list = Entries::new(start..r.pos(), flexible);
    list.items.reserve(n.min(64));
    for _ in 0..n {
        let s = r.pos();
        let (check, partitions, records, kind) = item(r)?;
        list.items.push(Entry {
            range: s..r.pos(),
            check,
            partitions,
            records,
            kind,
        });
    }
    Ok(list)
}

/// A new request frame: `frame_body` with only the entries for which
/// `keep` holds, the array count re-encoded, everything else as it was.
pub(crate) fn filter_request(
    frame_body: &Bytes,
    entries: &Entries,
    keep: &[bool],
    patch_false_at: Option<usize>,
) -> Bytes {
    let end = entries.end();
    let kept = keep.iter().filter(|k| **k).count();
    let mut out = BytesMut::with_capacity(frame_body.len() + 4);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&frame_body[..entries.count_at.start]);
    put_array_len(&mut out, entries.flexible, kept);
    for (e, k) in entries.items.iter().zip(keep) {
        if *k {
            out.extend_from_slice(&frame_body[e.range.clone()]);
        }
    }
    let tail_at = out.len();
    out.extend_from_slice(&frame_body[end..]);
    if let Some(at) = patch_false_at.filter(|at| *at >= end) {
        out[tail_at + (at - end)] = 0;
    }
    let size = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    out.freeze()
}

/// The Metadata version a v0-v3 request is forwarded as when the broker
/// must not auto-create what it names: v4 is v1-v3 with
/// allow_auto_topic_creation appended (and v0 for a non-empty topic list),
/// and its response is v3's.
pub(crate) const METADATA_NO_AUTO_CREATE: i16 = 4;

/// A Metadata v0-v3 request frame (with its size prefix) as the same
/// request of version [`METADATA_NO_AUTO_CREATE`] with
/// allow_auto_topic_creation `auto_create`. The request header (v1) does
/// not change between these versions.
pub(crate) fn metadata_as_v4(frame: &[u8], auto_create: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(frame.len() + 1);
    out.extend_from_slice(frame);
    out[6..8].copy_from_slice(&METADATA_NO_AUTO_CREATE.to_be_bytes());
    out.extend_from_slice(&[u8::from(auto_create)]);
    let size = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    out.freeze()
}

/// A request frame with one boolean byte set to false.
pub(crate) fn patch_false(frame_body: &[u8], at: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(frame_body.len() + 4);
    out.extend_from_slice(&(frame_body.len() as u32).to_be_bytes());
    out.extend_from_slice(frame_body);
    if at < frame_body.len() {
        out[4 + at] = 0;
    }
    out.freeze()
}
