//! Responses: broker-address rewriting, discovery, ApiVersions capping,
//! response-side authorization (Metadata listings, OffsetFetch topics,
//! ListGroups), per-topic fetch metrics, and the error entries for what the
//! gateway denied — merged into the broker's response, or making up the
//! whole response when nothing was forwarded.
//!
//! Responses come from the broker and are decoded with kafka-protocol.
//! Only responses that change are re-encoded; the rest are forwarded as
//! they came.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use weir_core::kafka::{Operation, ResourceType};

use crate::authz::SessionAuthz;
use crate::inspect::codes;
use crate::mapper::HostMapper;
use crate::metrics::TopicMeter;
use crate::records::count_records;
use crate::registry::BrokerRegistry;
use crate::versions::cap_api_versions;

/// An element the gateway kept from the broker, answered with an error.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Denied {
    /// The resource name (empty for a topic named by id only).
    pub name: StrBytes,
    /// The topic id, for versions that name topics by id.
    pub id: [u8; 16],
    /// Partitions to answer for.
    pub partitions: Vec<i32>,
    /// The Kafka error code.
    pub code: i16,
    /// DescribeConfigs resource type / FindCoordinator key type.
    pub kind: i8,
}

/// What the gateway must do to the response of one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResponseWork {
    pub api: ApiKey,
    pub version: i16,
    /// Elements denied at request time.
    pub denied: Vec<Denied>,
    /// The whole request was denied with this code (top-level error).
    pub whole: Option<i16>,
    /// Apply response-side authorization (Metadata listing, OffsetFetch
    /// topics, ListGroups).
    pub enforce: bool,
    /// Metadata: the request asked for every topic. OffsetFetch v2-v7: for
    /// every partition of the group.
    pub all_topics: bool,
    /// OffsetFetch v8+: the groups asked for every partition.
    pub all_topics_groups: Vec<StrBytes>,
    /// Metadata: topics the client asked to auto-create without Create
    /// permission (auto-creation was switched off for the request).
    pub uncreatable: Vec<StrBytes>,
    /// Metadata: topics the gateway asked the broker to create just before
    /// (auto-creation was switched off for the client's request).
    pub creating: Vec<StrBytes>,
    /// Metadata v0-v3 forwarded as this version (auto-creation switched
    /// off): the broker's answer is read as this version.
    pub forwarded_as: Option<i16>,
}

impl ResponseWork {
    pub(crate) fn new(api: ApiKey, version: i16) -> Self {
        ResponseWork {
            api,
            version,
            denied: Vec::new(),
            whole: None,
            enforce: false,
            all_topics: false,
            all_topics_groups: Vec::new(),
            uncreatable: Vec::new(),
            creating: Vec::new(),
            forwarded_as: None,
        }
    }

    /// Whether the response must be decoded at all.
    pub(crate) fn needs_decoding(&self) -> bool {
        if !self.denied.is_empty() || self.whole.is_some() {
            return true;
        }
        match self.api {
            ApiKey::Metadata
            | ApiKey::FindCoordinator
            | ApiKey::DescribeCluster
            | ApiKey::ApiVersions
            | ApiKey::Fetch
            // Their node_endpoints (DescribeQuorum, offered only below v2,
            // carries none).
            | ApiKey::ShareFetch
            | ApiKey::ShareAcknowledge => true,
            ApiKey::Produce => self.version >= 10,
            ApiKey::OffsetFetch | ApiKey::ListGroups | ApiKey::DescribeGroups => self.enforce,
            // v5+ returns the created topics' configs (DescribeConfigs).
            ApiKey::CreateTopics => self.enforce && self.version >= 5,
            _ => false,
        }
    }
}

/// Kafka's AclOperation code of `op`, the bit it sets in a response's
/// `*_authorized_operations` field.
fn acl_operation_code(op: Operation) -> Option<u32> {
    Some(match op {
        Operation::Read => 3,
        Operation::Write => 4,
        Operation::Create => 5,
        Operation::Delete => 6,
        Operation::Alter => 7,
        Operation::Describe => 8,
        Operation::DescribeConfigs => 10,
        Operation::AlterConfigs => 11,
        Operation::IdempotentWrite => 12,
        Operation::All => return None,
    })
}

/// The `*_authorized_operations` bit field a broker computes from its ACLs,
/// computed from the gateway's policy instead: one bit per operation Kafka
/// defines for the resource type that the principal is allowed.
fn authorized_operations(authz: &mut SessionAuthz, resource: ResourceType, name: &str) -> i32 {
    let mut bits = 0i32;
    for op in Operation::ALL {
        if let Some(code) = acl_operation_code(op) {
            if resource.supports(op) && authz.allowed(resource, name, op) {
                bits |= 1 << code;
            }
        }
    }
    bits
}

/// The cluster's authorized operations, as Kafka answers them: none (0)
/// unless the principal may Describe the cluster.
fn cluster_operations(authz: &mut SessionAuthz) -> i32 {
    let name = crate::authz::CLUSTER_RESOURCE;
    if authz.allowed(ResourceType::Cluster, name, Operation::Describe) {
        authorized_operations(authz, ResourceType::Cluster, name)
    } else {
        0
    }
}

/// The value of an `*_authorized_operations` field when the client did not
/// ask for it (and in answers to denied resources, as Kafka leaves it).
const NOT_REQUESTED: i32 = i32::MIN;

/// What response processing uses from its session.
pub(crate) struct ResponseCtx<'a> {
    pub mapper: &'a HostMapper,
    pub registry: &'a BrokerRegistry,
    pub authz: &'a mut SessionAuthz,
    pub fetched: &'a mut TopicMeter,
}

impl ResponseCtx<'_> {
    /// Whether `op` on `resource` `name` is allowed; a denial is counted in
    /// `weir_kafka_authorization_denials_total` as one at request time is.
    /// (Listings the gateway filters ask [`SessionAuthz::allowed`] directly:
    /// leaving a topic out of a listing is not a denial, as Kafka does not
    /// log one.)
    fn allowed(&mut self, resource: ResourceType, name: &str, op: Operation) -> bool {
        self.authz.check_counted(
            self.fetched.metrics(),
            crate::authz::Ask::Acl,
            resource,
            name,
            op,
        )
    }
}

/// Decodes `body` (or starts from an empty response when `body` is
/// `None`), lets `f` change it, and re-encodes it if `f` says it changed
/// (always when synthesized).
fn transcode<T: Decodable + Encodable + Default>(
    body: Option<Bytes>,
    version: i16,
    f: impl FnOnce(&mut T) -> bool,
) -> Result<Option<BytesMut>, String> {
    transcode_as(body, None, version, f)
}

/// [`transcode`] of a body the broker wrote as `read_as` (if not
/// `version`): written back as `version` even if unchanged.
fn transcode_as<T: Decodable + Encodable + Default>(
    body: Option<Bytes>,
    read_as: Option<i16>,
    version: i16,
    f: impl FnOnce(&mut T) -> bool,
) -> Result<Option<BytesMut>, String> {
    let synthesized = body.is_none();
    let read_as = read_as.unwrap_or(version);
    let mut msg = match body {
        Some(mut b) => T::decode(&mut b, read_as).map_err(|e| e.to_string())?,
        None => T::default(),
    };
    let changed = f(&mut msg);
    if !changed && !synthesized && read_as == version {
        return Ok(None);
    }
    let mut out = BytesMut::new();
    msg.encode(&mut out, version).map_err(|e| e.to_string())?;
    Ok(Some(out))
}

fn rewrite(mapper: &HostMapper, id: i32, host: &mut StrBytes, port: &mut i32) {
    *host = StrBytes::from_string(mapper.broker_host(id));
    *port = i32::from(mapper.advertised_port());
}

fn uuid(id: [u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes(id)
}

const AUTH_FAILED: &str = "Authorization failed.";

/// Processes one response body (after its header). `None` for `body`
/// means the gateway answers alone. Returns the new body, or `None` to
/// forward the broker's bytes unchanged.
pub(crate) fn process(
    w: &ResponseWork,
    body: Option<Bytes>,
    ctx: &mut ResponseCtx<'_>,
) -> Result<Option<BytesMut>, String> {
    // Produce and Fetch responses are read for metrics only in the versions
    // without node endpoints: one kafka-protocol cannot read there (Tansu
    // sends Fetch v12 with a v16 tagged field) is forwarded as it came,
    // uncounted. Where they may carry node endpoints (Produce v10+, Fetch
    // v16+), an unreadable one would pass broker addresses unrewritten:
    // that closes the connection (malformed_response).
    let endpoints = match w.api {
        ApiKey::Produce => w.version >= 10,
        ApiKey::Fetch => w.version >= 16,
        _ => true,
    };
    let tolerant = matches!(w.api, ApiKey::Produce | ApiKey::Fetch)
        && !endpoints
        && w.denied.is_empty()
        && body.is_some();
    match process_strict(w, body, ctx) {
        Err(e) if tolerant => {
            tracing::debug!(api = ?w.api, version = w.version, error = %e, "forwarding a response the gateway cannot read");
            Ok(None)
        }
        r => r,
    }
}

fn process_strict(
    w: &ResponseWork,
    body: Option<Bytes>,
    ctx: &mut ResponseCtx<'_>,
) -> Result<Option<BytesMut>, String> {
    let v = w.version;
    let denied = &w.denied;
    match w.api {
        ApiKey::ApiVersions => api_versions(body, v, w.enforce),
        ApiKey::Metadata => transcode_as::<MetadataResponse>(body, w.forwarded_as, v, |r| {
            ctx.registry.learn_metadata(r);
            for b in &mut r.brokers {
                rewrite(ctx.mapper, b.node_id.0, &mut b.host, &mut b.port);
            }
            // A topic that does not exist and may not be created is, as
            // Kafka answers it, TOPIC_AUTHORIZATION_FAILED rather than the
            // UNKNOWN_TOPIC_OR_PARTITION of a broker told not to create it.
            // One the gateway had created just before (the broker may not
            // show it yet) is LEADER_NOT_AVAILABLE, as a broker answers a
            // topic it has just auto-created: the client retries.
            for t in &mut r.topics {
                if t.error_code != codes::UNKNOWN_TOPIC_OR_PARTITION {
                    continue;
                }
                let Some(n) = &t.name else { continue };
                if w.uncreatable.contains(&n.0) {
                    t.error_code = codes::TOPIC_AUTHORIZATION_FAILED;
                    t.topic_authorized_operations = NOT_REQUESTED;
                } else if w.creating.contains(&n.0) {
                    t.error_code = codes::LEADER_NOT_AVAILABLE;
                }
            }
            if w.enforce && w.all_topics {
                let authz = &mut *ctx.authz;
                r.topics.retain(|t| match &t.name {
                    Some(n) => authz.allowed(ResourceType::Topic, n, Operation::Describe),
                    None => false,
                });
            }
            if w.enforce {
                // Asked for (include_*_authorized_operations): answer what
                // the gateway's policy allows, not the broker's ACLs.
                let authz = &mut *ctx.authz;
                for t in &mut r.topics {
                    if let Some(n) = &t.name {
                        if t.topic_authorized_operations != NOT_REQUESTED
                            && t.error_code != codes::TOPIC_AUTHORIZATION_FAILED
                        {
                            t.topic_authorized_operations =
                                authorized_operations(authz, ResourceType::Topic, n);
                        }
                    }
                }
                if r.cluster_authorized_operations != NOT_REQUESTED {
                    r.cluster_authorized_operations = cluster_operations(authz);
                }
            }
            for d in denied {
                let mut t = metadata_response::MetadataResponseTopic::default();
                t.error_code = d.code;
                // By id (v12+), a topic answered without its name: null.
                t.name = (!(d.name.is_empty() && v >= 12)).then(|| TopicName(d.name.clone()));
                t.topic_id = uuid(d.id);
                t.topic_authorized_operations = NOT_REQUESTED;
                r.topics.push(t);
            }
            true
        }),
        ApiKey::FindCoordinator => transcode::<FindCoordinatorResponse>(body, v, |r| {
            if let Some(code) = w.whole {
                r.error_code = code;
                r.error_message = Some(StrBytes::from_static_str(AUTH_FAILED));
                r.node_id = BrokerId(-1);
                r.host = StrBytes::new();
                r.port = -1;
                return true;
            }
            if v <= 3 {
                if r.error_code == 0 && r.node_id.0 >= 0 {
                    ctx.registry.learn_broker(r.node_id.0, &r.host, r.port);
                    rewrite(ctx.mapper, r.node_id.0, &mut r.host, &mut r.port);
                }
            } else {
                for c in &mut r.coordinators {
                    if c.error_code == 0 && c.node_id.0 >= 0 {
                        ctx.registry.learn_broker(c.node_id.0, &c.host, c.port);
                        rewrite(ctx.mapper, c.node_id.0, &mut c.host, &mut c.port);
                    }
                }
                for d in denied {
                    let mut c = find_coordinator_response::Coordinator::default();
                    c.key = d.name.clone();
                    c.node_id = BrokerId(-1);
                    c.host = StrBytes::new();
                    c.port = -1;
                    c.error_code = d.code;
                    c.error_message = Some(StrBytes::from_static_str(AUTH_FAILED));
                    r.coordinators.push(c);
                }
            }
            true
        }),
        ApiKey::DescribeCluster => transcode::<DescribeClusterResponse>(body, v, |r| {
            for b in &mut r.brokers {
                ctx.registry.learn_broker(b.broker_id.0, &b.host, b.port);
                rewrite(ctx.mapper, b.broker_id.0, &mut b.host, &mut b.port);
            }
            if w.enforce && r.cluster_authorized_operations != NOT_REQUESTED {
                r.cluster_authorized_operations = cluster_operations(ctx.authz);
            }
            true
        }),
        ApiKey::Produce => transcode::<ProduceResponse>(body, v, |r| {
            let mut changed = false;
            for e in &mut r.node_endpoints {
                ctx.registry.learn_broker(e.node_id.0, &e.host, e.port);
                rewrite(ctx.mapper, e.node_id.0, &mut e.host, &mut e.port);
                changed = true;
            }
            r.responses.extend(denied_partitions(
                denied,
                |p, code| {
                    produce_response::PartitionProduceResponse::default()
                        .with_index(p)
                        .with_error_code(code)
                        .with_base_offset(-1)
                        .with_log_append_time_ms(-1)
                        .with_log_start_offset(-1)
                        .with_error_message(Some(StrBytes::from_static_str(AUTH_FAILED)))
                },
                |d, partitions| {
                    produce_response::TopicProduceResponse::default()
                        .with_name(TopicName(d.name.clone()))
                        .with_topic_id(uuid(d.id))
                        .with_partition_responses(partitions)
                },
            ));
            changed || !denied.is_empty()
        }),
        ApiKey::Fetch => transcode::<FetchResponse>(body, v, |r| {
            let mut blanked = false;
            for t in &mut r.responses {
                let name: Option<std::borrow::Cow<'_, str>> = if v <= 12 {
                    Some(std::borrow::Cow::Borrowed(&t.topic.0))
                } else {
                    ctx.registry
                        .topic_name(t.topic_id.as_bytes())
                        .map(|n| std::borrow::Cow::Owned(n.to_string()))
                };
                if w.enforce {
                    // As Kafka: every partition a response carries is checked,
                    // also those an incremental fetch session holds without
                    // naming them, so a policy change cuts a running consumer
                    // off at its next fetch.
                    let code = match &name {
                        Some(n) => (!ctx.allowed(ResourceType::Topic, n, Operation::Read))
                            .then_some(codes::TOPIC_AUTHORIZATION_FAILED),
                        None => Some(codes::UNKNOWN_TOPIC_ID),
                    };
                    if let Some(code) = code {
                        for p in &mut t.partitions {
                            *p = fetch_error_partition(p.partition_index, code);
                        }
                        blanked = true;
                        continue;
                    }
                }
                let mut count = crate::records::RecordCount::default();
                for p in &t.partitions {
                    if let Some(recs) = &p.records {
                        count += count_records(recs);
                    }
                }
                match name {
                    Some(n) => ctx.fetched.add(&n, count),
                    None => ctx.fetched.add(&t.topic_id.to_string(), count),
                }
            }
            let mut changed = blanked;
            for e in &mut r.node_endpoints {
                ctx.registry.learn_broker(e.node_id.0, &e.host, e.port);
                rewrite(ctx.mapper, e.node_id.0, &mut e.host, &mut e.port);
                changed = true;
            }
            // A partition denied at request time that the broker answered
            // anyway (its fetch session held it) has its error entry already.
            let remaining: Vec<Denied>;
            let denied = if blanked {
                remaining = denied
                    .iter()
                    .map(|d| {
                        let answered = r.responses.iter().find(|t| {
                            if v <= 12 {
                                t.topic.0 == d.name
                            } else {
                                *t.topic_id.as_bytes() == d.id
                            }
                        });
                        let mut d = d.clone();
                        if let Some(t) = answered {
                            d.partitions
                                .retain(|p| !t.partitions.iter().any(|a| a.partition_index == *p));
                        }
                        d
                    })
                    .filter(|d| !d.partitions.is_empty())
                    .collect();
                &remaining[..]
            } else {
                &denied[..]
            };
            r.responses.extend(denied_partitions(
                denied,
                fetch_error_partition,
                |d, partitions| {
                    fetch_response::FetchableTopicResponse::default()
                        .with_topic(TopicName(d.name.clone()))
                        .with_topic_id(uuid(d.id))
                        .with_partitions(partitions)
                },
            ));
            changed || !denied.is_empty()
        }),
        ApiKey::ShareFetch => transcode::<ShareFetchResponse>(body, v, |r| {
            for e in &mut r.node_endpoints {
                ctx.registry.learn_broker(e.node_id.0, &e.host, e.port);
                rewrite(ctx.mapper, e.node_id.0, &mut e.host, &mut e.port);
            }
            !r.node_endpoints.is_empty()
        }),
        ApiKey::ShareAcknowledge => transcode::<ShareAcknowledgeResponse>(body, v, |r| {
            for e in &mut r.node_endpoints {
                ctx.registry.learn_broker(e.node_id.0, &e.host, e.port);
                rewrite(ctx.mapper, e.node_id.0, &mut e.host, &mut e.port);
            }
            !r.node_endpoints.is_empty()
        }),
        ApiKey::ListOffsets => transcode::<ListOffsetsResponse>(body, v, |r| {
            r.topics.extend(denied_partitions(
                denied,
                |p, code| {
                    list_offsets_response::ListOffsetsPartitionResponse::default()
                        .with_partition_index(p)
                        .with_error_code(code)
                        .with_timestamp(-1)
                        .with_offset(-1)
                        .with_leader_epoch(-1)
                },
                |d, partitions| {
                    list_offsets_response::ListOffsetsTopicResponse::default()
                        .with_name(TopicName(d.name.clone()))
                        .with_partitions(partitions)
                },
            ));
            true
        }),
        ApiKey::OffsetCommit => transcode::<OffsetCommitResponse>(body, v, |r| {
            r.topics.extend(denied_partitions(
                denied,
                |p, code| {
                    offset_commit_response::OffsetCommitResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(code)
                },
                |d, partitions| {
                    offset_commit_response::OffsetCommitResponseTopic::default()
                        .with_name(TopicName(d.name.clone()))
                        .with_topic_id(uuid(d.id))
                        .with_partitions(partitions)
                },
            ));
            true
        }),
        ApiKey::OffsetFetch => transcode::<OffsetFetchResponse>(body, v, |r| {
            if let Some(code) = w.whole {
                r.error_code = code;
                r.topics.clear();
                if v < 2 {
                    // No top-level error field: each partition carries it.
                    for d in denied {
                        let mut t = offset_fetch_response::OffsetFetchResponseTopic::default();
                        t.name = TopicName(d.name.clone());
                        for &p in &d.partitions {
                            let mut part =
                                offset_fetch_response::OffsetFetchResponsePartition::default();
                            part.partition_index = p;
                            part.committed_offset = -1;
                            part.error_code = d.code;
                            t.partitions.push(part);
                        }
                        r.topics.push(t);
                    }
                }
                return true;
            }
            let mut changed = false;
            if w.enforce {
                // As Kafka answers: a topic asked for by name that may not be
                // described gets an error; from "every partition" it is left
                // out, so the answer does not tell that it exists (and is
                // not counted as a denial).
                // (The v0-v7 and v8+ topic types differ, with the same fields.)
                macro_rules! deny_named {
                    ($topics:expr) => {{
                        let mut changed = false;
                        for t in $topics {
                            if !ctx.allowed(ResourceType::Topic, &t.name, Operation::Describe) {
                                for p in &mut t.partitions {
                                    p.error_code = codes::TOPIC_AUTHORIZATION_FAILED;
                                    p.committed_offset = -1;
                                    p.metadata = None;
                                }
                                changed = true;
                            }
                        }
                        changed
                    }};
                }
                if w.all_topics {
                    let before = r.topics.len();
                    let authz = &mut *ctx.authz;
                    r.topics.retain(|t| {
                        authz.allowed(ResourceType::Topic, &t.name, Operation::Describe)
                    });
                    changed |= r.topics.len() != before;
                } else {
                    changed |= deny_named!(&mut r.topics);
                }
                for g in &mut r.groups {
                    if w.all_topics_groups.contains(&g.group_id.0) {
                        let before = g.topics.len();
                        let authz = &mut *ctx.authz;
                        g.topics.retain(|t| {
                            authz.allowed(ResourceType::Topic, &t.name, Operation::Describe)
                        });
                        changed |= g.topics.len() != before;
                    } else {
                        changed |= deny_named!(&mut g.topics);
                    }
                }
            }
            for d in denied {
                let mut g = offset_fetch_response::OffsetFetchResponseGroup::default();
                g.group_id = GroupId(d.name.clone());
                g.error_code = d.code;
                r.groups.push(g);
                changed = true;
            }
            changed
        }),
        ApiKey::ListGroups => transcode::<ListGroupsResponse>(body, v, |r| {
            let authz = &mut *ctx.authz;
            if !w.enforce
                || authz.allowed(
                    ResourceType::Cluster,
                    crate::authz::CLUSTER_RESOURCE,
                    Operation::Describe,
                )
            {
                return false;
            }
            let before = r.groups.len();
            r.groups
                .retain(|g| authz.allowed(ResourceType::Group, &g.group_id, Operation::Describe));
            r.groups.len() != before
        }),
        ApiKey::JoinGroup => whole_only::<JoinGroupResponse>(body, v, w.whole, |r, code| {
            r.error_code = code;
            r.generation_id = -1;
        }),
        ApiKey::SyncGroup => {
            whole_only::<SyncGroupResponse>(body, v, w.whole, |r, code| r.error_code = code)
        }
        ApiKey::Heartbeat => {
            whole_only::<HeartbeatResponse>(body, v, w.whole, |r, code| r.error_code = code)
        }
        ApiKey::LeaveGroup => {
            whole_only::<LeaveGroupResponse>(body, v, w.whole, |r, code| r.error_code = code)
        }
        ApiKey::ConsumerGroupHeartbeat => {
            whole_only::<ConsumerGroupHeartbeatResponse>(body, v, w.whole, |r, code| {
                r.error_code = code;
                r.error_message = Some(StrBytes::from_static_str(AUTH_FAILED));
            })
        }
        ApiKey::DescribeAcls => whole_only::<DescribeAclsResponse>(body, v, w.whole, |r, code| {
            r.error_code = code;
            r.error_message = Some(StrBytes::from_static_str(AUTH_FAILED));
        }),
        ApiKey::DescribeLogDirs => {
            // v1-v2 have no error field: Kafka answers no log directories.
            whole_only::<DescribeLogDirsResponse>(body, v, w.whole, |r, code| {
                if v >= 3 {
                    r.error_code = code;
                }
            })
        }
        ApiKey::ListPartitionReassignments => {
            whole_only::<ListPartitionReassignmentsResponse>(body, v, w.whole, |r, code| {
                r.error_code = code;
                r.error_message = Some(StrBytes::from_static_str(AUTH_FAILED));
            })
        }
        ApiKey::AlterPartitionReassignments => {
            whole_only::<AlterPartitionReassignmentsResponse>(body, v, w.whole, |r, code| {
                r.error_code = code;
                r.error_message = Some(StrBytes::from_static_str(AUTH_FAILED));
            })
        }
        ApiKey::CreateAcls => transcode::<CreateAclsResponse>(body, v, |r| {
            for d in denied {
                let mut c = create_acls_response::AclCreationResult::default();
                c.error_code = d.code;
                c.error_message = Some(StrBytes::from_static_str(AUTH_FAILED));
                r.results.push(c);
            }
            !denied.is_empty()
        }),
        ApiKey::DeleteAcls => transcode::<DeleteAclsResponse>(body, v, |r| {
            for d in denied {
                let mut f = delete_acls_response::DeleteAclsFilterResult::default();
                f.error_code = d.code;
                f.error_message = Some(StrBytes::from_static_str(AUTH_FAILED));
                r.filter_results.push(f);
            }
            !denied.is_empty()
        }),
        ApiKey::InitProducerId => {
            whole_only::<InitProducerIdResponse>(body, v, w.whole, |r, code| {
                r.error_code = code;
                r.producer_id = ProducerId(-1);
                r.producer_epoch = -1;
            })
        }
        ApiKey::DescribeGroups => transcode::<DescribeGroupsResponse>(body, v, |r| {
            let mut changed = !denied.is_empty();
            if w.enforce {
                for g in &mut r.groups {
                    if g.authorized_operations != NOT_REQUESTED && g.error_code == 0 {
                        g.authorized_operations =
                            authorized_operations(ctx.authz, ResourceType::Group, &g.group_id);
                        changed = true;
                    }
                }
            }
            for d in denied {
                let mut g = describe_groups_response::DescribedGroup::default();
                g.error_code = d.code;
                g.group_id = GroupId(d.name.clone());
                g.authorized_operations = NOT_REQUESTED;
                r.groups.push(g);
            }
            changed
        }),
        ApiKey::DeleteGroups => transcode::<DeleteGroupsResponse>(body, v, |r| {
            for d in denied {
                let mut g = delete_groups_response::DeletableGroupResult::default();
                g.group_id = GroupId(d.name.clone());
                g.error_code = d.code;
                r.results.push(g);
            }
            true
        }),
        ApiKey::CreateTopics => transcode::<CreateTopicsResponse>(body, v, |r| {
            let mut changed = !denied.is_empty();
            if w.enforce && v >= 5 {
                // As Kafka: the configs of a created topic the principal may
                // not DescribeConfigs are withheld, with 29 in their place.
                let authz = &mut *ctx.authz;
                for t in &mut r.topics {
                    if t.error_code == 0
                        && !authz.allowed(ResourceType::Topic, &t.name, Operation::DescribeConfigs)
                    {
                        t.topic_config_error_code = codes::TOPIC_AUTHORIZATION_FAILED;
                        t.num_partitions = -1;
                        t.replication_factor = -1;
                        t.configs = Some(Vec::new());
                        changed = true;
                    }
                }
            }
            for d in denied {
                let mut t = create_topics_response::CreatableTopicResult::default();
                t.name = TopicName(d.name.clone());
                t.error_code = d.code;
                t.error_message = Some(StrBytes::from_static_str(AUTH_FAILED));
                t.num_partitions = -1;
                t.replication_factor = -1;
                t.configs = None;
                r.topics.push(t);
            }
            changed
        }),
        ApiKey::DeleteTopics => transcode::<DeleteTopicsResponse>(body, v, |r| {
            for d in denied {
                let mut t = delete_topics_response::DeletableTopicResult::default();
                t.name = if d.name.is_empty() {
                    None
                } else {
                    Some(TopicName(d.name.clone()))
                };
                t.topic_id = uuid(d.id);
                t.error_code = d.code;
                t.error_message = Some(StrBytes::from_static_str(AUTH_FAILED));
                r.responses.push(t);
            }
            true
        }),
        ApiKey::DescribeConfigs => transcode::<DescribeConfigsResponse>(body, v, |r| {
            for d in denied {
                let mut res = describe_configs_response::DescribeConfigsResult::default();
                res.error_code = d.code;
                res.error_message = Some(StrBytes::from_static_str(AUTH_FAILED));
                res.resource_type = d.kind;
                res.resource_name = d.name.clone();
                r.results.push(res);
            }
            true
        }),
        ApiKey::AlterConfigs => transcode::<AlterConfigsResponse>(body, v, |r| {
            for d in denied {
                let mut res = alter_configs_response::AlterConfigsResourceResponse::default();
                res.error_code = d.code;
                res.error_message = Some(StrBytes::from_static_str(AUTH_FAILED));
                res.resource_type = d.kind;
                res.resource_name = d.name.clone();
                r.responses.push(res);
            }
            true
        }),
        ApiKey::IncrementalAlterConfigs => {
            transcode::<IncrementalAlterConfigsResponse>(body, v, |r| {
                for d in denied {
                    let mut res =
                        incremental_alter_configs_response::AlterConfigsResourceResponse::default();
                    res.error_code = d.code;
                    res.error_message = Some(StrBytes::from_static_str(AUTH_FAILED));
                    res.resource_type = d.kind;
                    res.resource_name = d.name.clone();
                    r.responses.push(res);
                }
                true
            })
        }
        ApiKey::DeleteRecords => transcode::<DeleteRecordsResponse>(body, v, |r| {
            r.topics.extend(denied_partitions(
                denied,
                |p, code| {
                    delete_records_response::DeleteRecordsPartitionResult::default()
                        .with_partition_index(p)
                        .with_low_watermark(-1)
                        .with_error_code(code)
                },
                |d, partitions| {
                    delete_records_response::DeleteRecordsTopicResult::default()
                        .with_name(TopicName(d.name.clone()))
                        .with_partitions(partitions)
                },
            ));
            true
        }),
        ApiKey::CreatePartitions => transcode::<CreatePartitionsResponse>(body, v, |r| {
            for d in denied {
                let mut t = create_partitions_response::CreatePartitionsTopicResult::default();
                t.name = TopicName(d.name.clone());
                t.error_code = d.code;
                t.error_message = Some(StrBytes::from_static_str(AUTH_FAILED));
                r.results.push(t);
            }
            true
        }),
        ApiKey::OffsetDelete => transcode::<OffsetDeleteResponse>(body, v, |r| {
            if let Some(code) = w.whole {
                r.error_code = code;
                r.topics.clear();
                return true;
            }
            r.topics.extend(denied_partitions(
                denied,
                |p, code| {
                    offset_delete_response::OffsetDeleteResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(code)
                },
                |d, partitions| {
                    offset_delete_response::OffsetDeleteResponseTopic::default()
                        .with_name(TopicName(d.name.clone()))
                        .with_partitions(partitions)
                },
            ));
            true
        }),
        ApiKey::OffsetForLeaderEpoch => transcode::<OffsetForLeaderEpochResponse>(body, v, |r| {
            r.topics.extend(denied_partitions(
                denied,
                |p, code| {
                    offset_for_leader_epoch_response::EpochEndOffset::default()
                        .with_partition(p)
                        .with_error_code(code)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1)
                },
                |d, partitions| {
                    offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                        .with_topic(TopicName(d.name.clone()))
                        .with_partitions(partitions)
                },
            ));
            true
        }),
        ApiKey::AddPartitionsToTxn => transcode::<AddPartitionsToTxnResponse>(body, v, |r| {
            r.results_by_topic_v3_and_below.extend(denied_partitions(
                denied,
                |p, code| {
                    add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(p)
                        .with_partition_error_code(code)
                },
                |d, partitions| {
                    add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                        .with_name(TopicName(d.name.clone()))
                        .with_results_by_partition(partitions)
                },
            ));
            true
        }),
        ApiKey::TxnOffsetCommit => transcode::<TxnOffsetCommitResponse>(body, v, |r| {
            r.topics.extend(denied_partitions(
                denied,
                |p, code| {
                    txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(code)
                },
                |d, partitions| {
                    txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                        .with_name(TopicName(d.name.clone()))
                        .with_partitions(partitions)
                },
            ));
            true
        }),
        ApiKey::AddOffsetsToTxn => {
            whole_only::<AddOffsetsToTxnResponse>(body, v, w.whole, |r, code| r.error_code = code)
        }
        ApiKey::EndTxn => whole_only::<EndTxnResponse>(body, v, w.whole, |r, code| {
            r.error_code = code;
            r.producer_id = ProducerId(-1);
            r.producer_epoch = -1;
        }),
        _ => Ok(None),
    }
}

/// A Fetch partition answered with `code` and no data.
fn fetch_error_partition(index: i32, code: i16) -> fetch_response::PartitionData {
    fetch_response::PartitionData::default()
        .with_partition_index(index)
        .with_error_code(code)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
        .with_records(Some(Bytes::new()))
}

/// The error entries of denied topics in the shape most per-partition
/// responses share: one topic entry per denied element, holding one
/// partition entry (built by `partition` from its index and the error code)
/// per partition the request named.
fn denied_partitions<T, P>(
    denied: &[Denied],
    partition: impl Fn(i32, i16) -> P,
    topic: impl Fn(&Denied, Vec<P>) -> T,
) -> Vec<T> {
    denied
        .iter()
        .map(|d| {
            let partitions = d.partitions.iter().map(|p| partition(*p, d.code)).collect();
            topic(d, partitions)
        })
        .collect()
}

fn whole_only<T: Decodable + Encodable + Default>(
    body: Option<Bytes>,
    version: i16,
    whole: Option<i16>,
    f: impl FnOnce(&mut T, i16),
) -> Result<Option<BytesMut>, String> {
    match whole {
        Some(code) => transcode::<T>(None, version, |r| {
            f(r, code);
            true
        }),
        None => match body {
            Some(_) => Ok(None),
            None => Err("nothing to answer".into()),
        },
    }
}

/// ApiVersions: capped to what the gateway reads. A broker that does not
/// support the request's version answers v0 with UNSUPPORTED_VERSION.
fn api_versions(
    body: Option<Bytes>,
    version: i16,
    enforcing: bool,
) -> Result<Option<BytesMut>, String> {
    let Some(body) = body else {
        return unsupported_api_versions().map(Some);
    };
    // An error response (UNSUPPORTED_VERSION: the client retries with a
    // version from it) has no versions to narrow: pass it on. Brokers write
    // it in v0 format, some (librdkafka's mock) in their own.
    if body.len() >= 2 && i16::from_be_bytes([body[0], body[1]]) != 0 {
        return Ok(None);
    }
    let mut resp =
        ApiVersionsResponse::decode(&mut body.clone(), version).map_err(|e| e.to_string())?;
    if !cap_api_versions(&mut resp, enforcing) {
        return Ok(None);
    }
    let mut out = BytesMut::new();
    resp.encode(&mut out, version).map_err(|e| e.to_string())?;
    Ok(Some(out))
}

/// What a broker answers an ApiVersions request of a version it does not
/// know: v0, UNSUPPORTED_VERSION, and the ApiVersions versions it knows.
pub(crate) fn unsupported_api_versions() -> Result<BytesMut, String> {
    let mut resp = ApiVersionsResponse::default();
    resp.error_code = codes::UNSUPPORTED_VERSION;
    let mut k = api_versions_response::ApiVersion::default();
    k.api_key = ApiKey::ApiVersions as i16;
    let range = crate::versions::inspected_versions(ApiKey::ApiVersions)
        .unwrap_or(kafka_protocol::protocol::VersionRange { min: 0, max: 0 });
    k.min_version = range.min;
    k.max_version = range.max;
    resp.api_keys.push(k);
    let mut out = BytesMut::new();
    resp.encode(&mut out, 0).map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::AllowAll;
    use crate::metrics::KafkaMetrics;
    use std::sync::Arc;
    use weir_core::kafka::Principal;

    struct Env {
        mapper: HostMapper,
        registry: BrokerRegistry,
        authz: SessionAuthz,
        fetched: TopicMeter,
    }

    fn env() -> Env {
        Env {
            mapper: HostMapper::new("kafka.example.com", "b{id}-kafka.example.com", 9093).unwrap(),
            registry: BrokerRegistry::new(vec![]),
            authz: SessionAuthz::new(Arc::new(AllowAll), Principal::Anonymous),
            fetched: TopicMeter::fetched(Arc::new(KafkaMetrics::unregistered())),
        }
    }

    /// Encodes `msg` at `version`, runs it through `process`, decodes the result.
    fn run<T: Encodable + Decodable>(e: &mut Env, api: ApiKey, version: i16, msg: &T) -> Option<T> {
        let mut b = BytesMut::new();
        msg.encode(&mut b, version).unwrap();
        let mut ctx = ResponseCtx {
            mapper: &e.mapper,
            registry: &e.registry,
            authz: &mut e.authz,
            fetched: &mut e.fetched,
        };
        let out = process(&ResponseWork::new(api, version), Some(b.freeze()), &mut ctx).unwrap()?;
        Some(T::decode(&mut out.freeze(), version).unwrap())
    }

    fn s(v: &str) -> StrBytes {
        StrBytes::from_string(v.to_owned())
    }

    #[test]
    fn find_coordinator_old_and_new_versions() {
        let mut e = env();
        for v in [0, 3] {
            let mut r = FindCoordinatorResponse::default();
            r.node_id = BrokerId(5);
            r.host = s("10.0.0.5");
            r.port = 9092;
            let out = run(&mut e, ApiKey::FindCoordinator, v, &r).unwrap();
            assert_eq!(
                (out.host.as_str(), out.port),
                ("b5-kafka.example.com", 9093)
            );
        }
        // An error answer (no coordinator yet) is left alone.
        let mut r = FindCoordinatorResponse::default();
        r.error_code = 15;
        r.node_id = BrokerId(-1);
        r.host = s("");
        r.port = -1;
        let out = run(&mut e, ApiKey::FindCoordinator, 2, &r).unwrap();
        assert_eq!((out.host.as_str(), out.port), ("", -1));
        let mut r = FindCoordinatorResponse::default();
        let mut c = find_coordinator_response::Coordinator::default();
        c.key = s("g");
        c.node_id = BrokerId(7);
        c.host = s("10.0.0.7");
        c.port = 9092;
        r.coordinators.push(c);
        let out = run(&mut e, ApiKey::FindCoordinator, 4, &r).unwrap();
        assert_eq!(out.coordinators[0].host.as_str(), "b7-kafka.example.com");
        assert_eq!(e.registry.broker(5).unwrap().to_string(), "10.0.0.5:9092");
        assert_eq!(e.registry.broker(7).unwrap().to_string(), "10.0.0.7:9092");
    }

    #[test]
    fn describe_cluster_brokers() {
        let mut e = env();
        let mut r = DescribeClusterResponse::default();
        let mut b = describe_cluster_response::DescribeClusterBroker::default();
        b.broker_id = BrokerId(2);
        b.host = s("10.0.0.2");
        b.port = 9094;
        b.rack = Some(s("rack-a"));
        r.brokers.push(b);
        let out = run(&mut e, ApiKey::DescribeCluster, 1, &r).unwrap();
        let b = &out.brokers[0];
        assert_eq!(
            (b.host.as_str(), b.port, b.rack.as_deref()),
            ("b2-kafka.example.com", 9093, Some("rack-a"))
        );
        assert_eq!(e.registry.broker(2).unwrap().port, 9094);
    }

    #[test]
    fn produce_and_fetch_node_endpoints() {
        let mut e = env();
        let mut r = ProduceResponse::default();
        let mut n = produce_response::NodeEndpoint::default();
        n.node_id = BrokerId(3);
        n.host = s("10.0.0.3");
        n.port = 9092;
        r.node_endpoints.push(n);
        let out = run(&mut e, ApiKey::Produce, 10, &r).unwrap();
        assert_eq!(out.node_endpoints[0].host.as_str(), "b3-kafka.example.com");
        assert_eq!(out.node_endpoints[0].port, 9093);
        // Nothing to rewrite: forwarded as it came.
        assert!(run(&mut e, ApiKey::Produce, 10, &ProduceResponse::default()).is_none());

        let mut r = FetchResponse::default();
        let mut n = fetch_response::NodeEndpoint::default();
        n.node_id = BrokerId(4);
        n.host = s("10.0.0.4");
        n.port = 9092;
        r.node_endpoints.push(n);
        let out = run(&mut e, ApiKey::Fetch, 16, &r).unwrap();
        assert_eq!(out.node_endpoints[0].host.as_str(), "b4-kafka.example.com");
        assert!(run(&mut e, ApiKey::Fetch, 12, &FetchResponse::default()).is_none());
        assert_eq!(e.registry.brokers().len(), 2);
    }

    #[test]
    fn fetched_records_are_counted_per_topic() {
        use prometheus_client::registry::Registry;
        let mut reg = Registry::default();
        let metrics = KafkaMetrics::register(&mut reg);
        let mut e = env();
        e.fetched = TopicMeter::fetched(metrics);
        // One v2 batch header claiming 7 records, 61 bytes plus 9 of records.
        let mut batch = vec![0u8; 70];
        batch[8..12].copy_from_slice(&58i32.to_be_bytes());
        batch[16] = 2;
        batch[57..61].copy_from_slice(&7i32.to_be_bytes());
        let mut r = FetchResponse::default();
        let mut t = fetch_response::FetchableTopicResponse::default();
        t.topic = TopicName(s("orders"));
        let mut p = fetch_response::PartitionData::default();
        p.records = Some(Bytes::from(batch));
        t.partitions.push(p);
        r.responses.push(t);
        assert!(run(&mut e, ApiKey::Fetch, 11, &r).is_none());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains(r#"weir_kafka_fetched_records_total{topic="orders"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_kafka_fetched_bytes_total{topic="orders"} 70"#),
            "{text}"
        );
    }
}
