//! One client connection ↔ one broker connection.
//!
//! Two loops run concurrently in the connection's task. The request loop
//! reads client frames, authorizes them, and forwards them (as they came,
//! or with denied elements cut out) or answers them itself; for every
//! request that has a response it queues an in-flight entry. The response
//! loop takes entries in order: for a forwarded request it reads the
//! broker's next response (checking the correlation id), for a request the
//! gateway answers it makes the response, so answers stay in request order.
//! Produce with acks=0 has no response and queues nothing. Frames that
//! arrive together are written together.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use weir_core::kafka::{Operation, Principal, ResourceType};

use crate::authz::{Ask, SessionAuthz, CLUSTER_RESOURCE};
use crate::error::{SessionError, Side};
use crate::frame::{write_chunks, Frame, FrameReader};
use crate::header::{parse_request_header, parse_response_header, RequestHeader};
use crate::inspect::{
    codes, config_resource_name, denial_code, filter_request, inspect, metadata_as_v4, patch_false,
    NameRef, METADATA_NO_AUTO_CREATE,
};
use crate::metrics::TopicMeter;
use crate::proxy::KafkaProxy;
use crate::response::{process, Denied, ResponseCtx, ResponseWork};
use crate::versions::{
    allowed_unchecked, carries_addresses, inspected_versions, is_inspected, rewritten_versions,
};
use crate::wire::Reader;

/// Requests in flight per connection before the gateway stops reading the
/// client (librdkafka defaults to 1 000 000, Java to 5).
const MAX_IN_FLIGHT: usize = 1024;
/// Frames handled before their output is written (must stay well under
/// [`MAX_IN_FLIGHT`]: a batch's entries are queued before it is written).
const BATCH_FRAMES: usize = 64;
/// Bytes gathered before they are written.
const BATCH_BYTES: usize = 1 << 20;

/// How the response to a request is made.
enum Reply {
    /// Read the broker's response; change it as `work` says (None: forward as is).
    Upstream(Option<Box<ResponseWork>>),
    /// The gateway answers alone.
    Gateway(Box<ResponseWork>),
    /// Read the broker's answer to the gateway's own auto-creation Metadata
    /// request (of this version); it is not passed on, but says which
    /// topics the broker created (or is creating) for the client's answer.
    Creation(i16),
}

struct InFlight {
    correlation_id: i32,
    api_name: &'static str,
    header_version: i16,
    started: Instant,
    reply: Reply,
}

/// What to do with one request.
enum Plan {
    /// Forward these bytes; expect a response unless `reply` is None.
    Forward(Bytes, Option<Reply>),
    /// Answer without forwarding.
    Answer(Box<ResponseWork>),
    /// acks=0 produce with denied topics: forward the rest, then close.
    ForwardThenClose(Option<Bytes>, String),
    /// Forward a request of the gateway's own first (its response dropped),
    /// then the client's.
    Prelude(Bytes, Bytes, Reply),
}

/// Runs a session between `client` and `upstream` until either closes.
pub(crate) async fn run<C, U>(
    proxy: &KafkaProxy,
    client: C,
    upstream: U,
    principal: Principal,
) -> Result<(), SessionError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (client_r, mut client_w) = tokio::io::split(client);
    let (upstream_r, mut upstream_w) = tokio::io::split(upstream);
    let max = proxy.config().max_frame_size;
    let mut client_frames = FrameReader::new(client_r, Side::Client, max);
    let mut upstream_frames = FrameReader::new(upstream_r, Side::Upstream, max);
    let (tx, rx) = mpsc::channel::<InFlight>(MAX_IN_FLIGHT);

    let mut requests = RequestSide {
        proxy,
        authz: SessionAuthz::new(proxy.authorizer().clone(), principal.clone()),
        produced: TopicMeter::produced(proxy.metrics().clone()),
    };
    let mut responses = ResponseSide {
        proxy,
        authz: SessionAuthz::new(proxy.authorizer().clone(), principal),
        fetched: TopicMeter::fetched(proxy.metrics().clone()),
        created: Vec::new(),
    };

    let req = requests.run(&mut client_frames, &mut upstream_w, tx);
    let resp = responses.run(&mut upstream_frames, &mut client_w, rx);
    tokio::pin!(req);
    tokio::pin!(resp);
    tokio::select! {
        r = &mut req => match r {
            // The client finished sending: deliver what is still in flight.
            Ok(()) => resp.await,
            // The client's own request closes the connection: as a broker,
            // which answers a connection's requests in order, first answer
            // the ones before it (a producer would otherwise resend batches
            // the broker already has), within a bound.
            Err(e) if e.is_bad_input() || matches!(e, SessionError::DeniedWithoutResponse { .. }) => {
                match tokio::time::timeout(ANSWER_BEFORE_CLOSE, resp).await {
                    Ok(Err(other)) => tracing::debug!(error = %other, "answering the requests in flight before closing failed"),
                    Err(_) => tracing::debug!(timeout = ?ANSWER_BEFORE_CLOSE, "requests in flight still unanswered at close"),
                    Ok(Ok(())) => {}
                }
                Err(e)
            }
            Err(e) => Err(e),
        },
        r = &mut resp => r,
    }
}

/// How long a connection the client's request closes waits for the
/// answers to its earlier requests (a Fetch waits up to its max_wait_ms,
/// 500 ms by default).
const ANSWER_BEFORE_CLOSE: std::time::Duration = std::time::Duration::from_secs(10);

struct RequestSide<'a> {
    proxy: &'a KafkaProxy,
    authz: SessionAuthz,
    produced: TopicMeter,
}

impl RequestSide<'_> {
    async fn run<R, W>(
        &mut self,
        frames: &mut FrameReader<R>,
        upstream: &mut W,
        tx: mpsc::Sender<InFlight>,
    ) -> Result<(), SessionError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut out: Vec<Bytes> = Vec::with_capacity(BATCH_FRAMES);
        let idle = self.proxy.config().idle_timeout;
        loop {
            // A request is answered within the client's request timeout, so
            // a connection without requests for this long has nothing in
            // flight worth waiting for.
            let Ok(next) = tokio::time::timeout(idle, frames.next()).await else {
                let _ = upstream.shutdown().await;
                return Err(SessionError::Idle(idle));
            };
            let Some(frame) = next? else {
                let _ = upstream.shutdown().await;
                return Ok(());
            };
            // A request that closes the connection still lets the ones
            // before it in this batch go out (their entries are queued).
            let mut close = self.handle(frame, &mut out, &tx).await.unwrap_or_else(Some);
            let mut n = 1;
            while close.is_none()
                && n < BATCH_FRAMES
                && out.iter().map(Bytes::len).sum::<usize>() < BATCH_BYTES
            {
                let frame = match frames.buffered() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        close = Some(e);
                        break;
                    }
                };
                close = self.handle(frame, &mut out, &tx).await.unwrap_or_else(Some);
                n += 1;
            }
            write_chunks(upstream, &mut out)
                .await
                .map_err(|source| SessionError::Io {
                    side: Side::Upstream,
                    source,
                })?;
            if let Some(e) = close {
                return Err(e);
            }
        }
    }

    /// Handles one request: bytes to forward go to `out`, entries to `tx`.
    /// Returns an error to close with after `out` is written.
    async fn handle(
        &mut self,
        frame: Frame,
        out: &mut Vec<Bytes>,
        tx: &mpsc::Sender<InFlight>,
    ) -> Result<Option<SessionError>, SessionError> {
        let started = Instant::now();
        let hdr = parse_request_header(frame.body())
            .map_err(|m| SessionError::malformed(Side::Client, m))?;
        let api_name = hdr.api_name();
        // A version Kafka has no such API at is one label value, not one per
        // number a client makes up.
        let counted_version = match hdr.api.map(|api| api.valid_versions()) {
            Some(r) if (r.min..=r.max).contains(&hdr.api_version) => hdr.api_version,
            _ => -1,
        };
        self.produced.request(api_name, counted_version);
        let plan = self.plan(&hdr, frame).await?;
        let entry = |reply| InFlight {
            correlation_id: hdr.correlation_id,
            api_name,
            header_version: hdr.response_header_version(),
            started,
            reply,
        };
        let queued = match plan {
            Plan::Forward(bytes, reply) => {
                out.push(bytes);
                reply.map(entry)
            }
            Plan::Answer(work) => Some(entry(Reply::Gateway(work))),
            Plan::ForwardThenClose(bytes, topic) => {
                out.extend(bytes);
                return Ok(Some(SessionError::DeniedWithoutResponse { topic }));
            }
            Plan::Prelude(first, bytes, reply) => {
                out.push(first);
                if tx
                    .send(entry(Reply::Creation(hdr.api_version)))
                    .await
                    .is_err()
                {
                    return Err(SessionError::UpstreamClosed { pending: 0 });
                }
                out.push(bytes);
                Some(entry(reply))
            }
        };
        if let Some(e) = queued {
            // The response side has ended (it returns the reason itself).
            if tx.send(e).await.is_err() {
                return Err(SessionError::UpstreamClosed { pending: 0 });
            }
        }
        Ok(None)
    }

    async fn plan(&mut self, hdr: &RequestHeader, frame: Frame) -> Result<Plan, SessionError> {
        let v = hdr.api_version;
        let enforcing = self.authz.enforcing();
        // With a policy in force, an API the gateway cannot check is
        // refused as a broker refuses an API it does not have (the
        // gateway's ApiVersions did not offer it): closing the connection.
        if enforcing && !hdr.api.is_some_and(allowed_unchecked) {
            return Err(SessionError::UnauthorizableApi {
                api: hdr.api_name(),
                key: hdr.api_key,
            });
        }
        let (Some(api), Some(start)) = (hdr.api, hdr.body_offset) else {
            // Unknown API key: pass through.
            return Ok(Plan::Forward(
                frame.into_wire(),
                Some(Reply::Upstream(None)),
            ));
        };
        let unsupported =
            |range: kafka_protocol::protocol::VersionRange| SessionError::UnsupportedVersion {
                api: hdr.api_name(),
                version: v,
                min: range.min,
                max: range.max,
            };
        let Some(range) = inspected_versions(api) else {
            // Not enforcing here (an API the gateway cannot authorize was
            // refused above).
            // Outside the versions it reads, such an API's addresses could
            // not be rewritten: refused, as a broker refuses a version.
            if let Some(r) = rewritten_versions(api).filter(|r| v > r.max || v < r.min) {
                return Err(unsupported(r));
            }
            return Ok(Plan::Forward(
                frame.into_wire(),
                Some(reply_for(ResponseWork::new(api, v))),
            ));
        };
        if !is_inspected(api, v) {
            if api == ApiKey::ApiVersions && v > range.max {
                // As a broker does: v0 UNSUPPORTED_VERSION with the versions it has.
                let mut work = ResponseWork::new(api, 0);
                work.whole = Some(codes::UNSUPPORTED_VERSION);
                return Ok(Plan::Answer(Box::new(work)));
            }
            if (enforcing && authorized_api(api)) || (v > range.max && carries_addresses(api)) {
                return Err(unsupported(range));
            }
            if api == ApiKey::Produce
                && produce_acks(v, hdr.flexible(), frame.body(), start) == Some(0)
            {
                return Ok(Plan::Forward(frame.into_wire(), None));
            }
            return Ok(Plan::Forward(
                frame.into_wire(),
                Some(Reply::Upstream(None)),
            ));
        }

        let frame = if api == ApiKey::Fetch {
            clamp_fetch_max_bytes(frame, v, start, self.proxy.config().max_frame_size / 2)
        } else {
            frame
        };

        let mut work = ResponseWork::new(api, v);
        work.enforce = enforcing;
        if !enforcing && api != ApiKey::Produce {
            let reply = work.needs_decoding().then(|| Box::new(work));
            return Ok(Plan::Forward(
                frame.into_wire(),
                Some(Reply::Upstream(reply)),
            ));
        }

        let body = frame.body_bytes();
        let ins = inspect(api, v, hdr.flexible(), &body, start)
            .map_err(|m| SessionError::malformed(Side::Client, m))?;
        if let Some(m) = &ins.metadata {
            work.all_topics = m.all_topics;
        }
        if api == ApiKey::OffsetFetch {
            work.all_topics = ins.all_partitions;
            work.all_topics_groups = ins
                .all_partitions_groups
                .iter()
                .map(|r| body_str(&body, r.clone()))
                .collect();
        }
        let no_response = api == ApiKey::Produce && ins.acks == 0;

        // Whole-request checks.
        let mut whole_code = None;
        if enforcing && ins.replica_fetch {
            // A follower's fetch reads past the high watermark and moves
            // the follower's state; Kafka serves it only with ClusterAction,
            // which no policy grants a client of the gateway: every
            // partition TOPIC_AUTHORIZATION_FAILED, as Kafka answers.
            tracing::warn!(
                principal = %self.authz.principal,
                "Fetch as a replica (replica_id or ReplicaState) refused under a policy"
            );
            whole_code = Some(codes::TOPIC_AUTHORIZATION_FAILED);
        }
        if enforcing && ins.topic_regex {
            // The broker would resolve the regex and filter it by Describe
            // as the gateway's principal: the client's own rights could not
            // apply. Kafka's answer to a subscription it may not describe.
            tracing::warn!(
                principal = %self.authz.principal,
                "ConsumerGroupHeartbeat with subscribed_topic_regex refused under a policy: subscribe by topic names"
            );
            whole_code = Some(codes::TOPIC_AUTHORIZATION_FAILED);
        }
        if enforcing && whole_code.is_none() {
            for c in &ins.whole {
                let name = self.name_of(&body, &c.name, enforcing).await;
                if !self.check(c.ask, c.resource, &name, c.op) {
                    whole_code = Some(denial_code(c.resource));
                    break;
                }
            }
        }
        let Some(entries) = &ins.entries else {
            return Ok(match whole_code {
                Some(code) => {
                    work.whole = Some(code);
                    // OffsetFetch v0-v1 have no top-level error: the code
                    // goes to every partition asked for, as Kafka answers.
                    for (name, partitions) in &ins.offset_fetch_topics {
                        work.denied.push(Denied {
                            name: body_str(&body, name.clone()),
                            id: [0; 16],
                            partitions: partitions.clone(),
                            code,
                            kind: 0,
                        });
                    }
                    Plan::Answer(Box::new(work))
                }
                None => Plan::Forward(frame.into_wire(), Some(reply_for(work))),
            });
        };
        // Where Kafka answers a whole-request denial per partition, every
        // element gets the code; elsewhere the gateway answers alone.
        if let (Some(code), false) = (
            whole_code,
            matches!(
                api,
                ApiKey::Produce
                    | ApiKey::OffsetCommit
                    | ApiKey::TxnOffsetCommit
                    | ApiKey::AddPartitionsToTxn
                    | ApiKey::Fetch
            ),
        ) {
            work.whole = Some(code);
            return Ok(Plan::Answer(Box::new(work)));
        }

        // Per-element checks.
        let mut keep = vec![true; entries.items.len()];
        // Metadata auto-creation: the topics the principal may create, and
        // whether the forwarded request must not create any (some named
        // topic may not be created).
        let auto_creates = ins.metadata.as_ref().is_some_and(|m| m.auto_creates());
        let mut creatable = vec![false; entries.items.len()];
        let mut switch_off = false;
        for (i, e) in entries.items.iter().enumerate() {
            let name = self.name_of(&body, &e.check.name, enforcing).await;
            let code = if let Some(code) = whole_code {
                Some(code)
            } else if !enforcing {
                None
            } else if name.is_empty() && matches!(e.check.name, NameRef::TopicId(_)) {
                Some(codes::UNKNOWN_TOPIC_ID)
            } else if !self.check(e.check.ask, e.check.resource, &name, e.check.op) {
                Some(denial_code(e.check.resource))
            } else {
                if auto_creates {
                    // Kafka: Create on the cluster, else Create on the topic.
                    if !self.authz.allowed_as(
                        Ask::TopicCreation,
                        ResourceType::Topic,
                        &name,
                        Operation::Create,
                    ) {
                        switch_off = true;
                        work.uncreatable.push(name.clone());
                    } else {
                        creatable[i] = true;
                        work.creating.push(name.clone());
                    }
                }
                None
            };
            if let Some(code) = code {
                keep[i] = false;
                // A broker's answer names the resource as the request did
                // (a cluster-level config resource: the broker id).
                let answer_name = match (&e.check.name, config_api(api)) {
                    (NameRef::Cluster, true) => config_resource_name(&body, e, entries.flexible)
                        .map(|r| body_str(&body, r))
                        .unwrap_or_else(|| name.clone()),
                    // Asked for by id, a topic the principal may not
                    // Describe is answered without its name, as Kafka does
                    // (the id does not reveal the name).
                    (NameRef::TopicId(_), _)
                        if code == codes::TOPIC_AUTHORIZATION_FAILED
                            && !self.authz.allowed(
                                ResourceType::Topic,
                                &name,
                                Operation::Describe,
                            ) =>
                    {
                        StrBytes::default()
                    }
                    _ => name.clone(),
                };
                work.denied.push(Denied {
                    name: answer_name,
                    id: match e.check.name {
                        NameRef::TopicId(id) => id,
                        _ => [0; 16],
                    },
                    partitions: e.partitions.clone(),
                    code,
                    kind: e.kind,
                });
            } else if api == ApiKey::Produce {
                if name.is_empty() {
                    self.produced.add(&topic_id_label(&e.check.name), e.records);
                } else {
                    self.produced.add(&name, e.records);
                }
            }
        }
        if api == ApiKey::AddPartitionsToTxn && !work.denied.is_empty() {
            // All or nothing, as Kafka: the partitions that were allowed are
            // answered OPERATION_NOT_ATTEMPTED and nothing is added.
            for (i, e) in entries.items.iter().enumerate() {
                if keep[i] {
                    keep[i] = false;
                    work.denied.push(Denied {
                        name: self.name_of(&body, &e.check.name, false).await,
                        id: [0; 16],
                        partitions: e.partitions.clone(),
                        code: codes::OPERATION_NOT_ATTEMPTED,
                        kind: e.kind,
                    });
                }
            }
        }
        let kept = keep.iter().filter(|k| **k).count();
        if whole_code.is_some() {
            // Nothing of a request denied as a whole reaches the broker, also
            // one that names no element, or whose elements were all cut: an
            // empty follower's Fetch would still be served from the fetch
            // session the client opened as a consumer, and an empty Produce
            // or commit would still run the denied transactional id or
            // group's checks at the broker.
            if no_response {
                return Ok(Plan::ForwardThenClose(None, first_denied(&work)));
            }
            return Ok(Plan::Answer(Box::new(work)));
        }
        // Auto-creation switched off for topics the principal may not
        // create: the ones it may create are created by a Metadata request
        // of the gateway's own, forwarded first with only them (and its
        // answer dropped), as a broker would create them from the client's.
        let creation = if switch_off && creatable.contains(&true) {
            Some(filter_request(&body, entries, &creatable, None))
        } else {
            work.creating.clear();
            None
        };
        // Switched off by setting allow_auto_topic_creation to false (v4+),
        // or, in v0-v3, which have no such field, by forwarding the request
        // as v4 (the response is read as v4 and written back as the
        // client's version). v0 is also forwarded as v4 when topics are
        // cut out: an empty v0 list would mean every topic.
        let patch_auto_create = ins
            .metadata
            .as_ref()
            .and_then(|m| m.auto_create_at)
            .filter(|_| switch_off);
        let as_v4 = api == ApiKey::Metadata
            && v < METADATA_NO_AUTO_CREATE
            && (switch_off || (v == 0 && kept < entries.items.len()));
        if as_v4 {
            work.forwarded_as = Some(METADATA_NO_AUTO_CREATE);
        }
        let forward = |bytes, work| match creation {
            Some(first) => Plan::Prelude(first, bytes, reply_for(work)),
            None => Plan::Forward(bytes, Some(reply_for(work))),
        };

        if kept == entries.items.len() {
            let bytes = match patch_auto_create {
                Some(at) => patch_false(&body, at),
                None if as_v4 => metadata_as_v4(frame.wire(), false),
                None => frame.into_wire(),
            };
            if no_response {
                return Ok(Plan::Forward(bytes, None));
            }
            return Ok(forward(bytes, work));
        }
        if no_response {
            let rest = (kept > 0).then(|| filter_request(&body, entries, &keep, None));
            return Ok(Plan::ForwardThenClose(rest, first_denied(&work)));
        }
        let must_forward = (api == ApiKey::Fetch && !ins.sessionless) || (api == ApiKey::Metadata);
        if kept == 0 && !must_forward {
            return Ok(Plan::Answer(Box::new(work)));
        }
        let mut bytes = filter_request(&body, entries, &keep, patch_auto_create);
        if as_v4 {
            bytes = metadata_as_v4(&bytes, !switch_off);
        }
        Ok(forward(bytes, work))
    }

    /// A name as a string: from the body, the registry (topic ids; with
    /// `refresh`, refreshed once if unknown), or the cluster's name. Empty
    /// if an id is unknown.
    async fn name_of(&self, body: &Bytes, name: &NameRef, refresh: bool) -> StrBytes {
        match name {
            NameRef::Body(r) => body_str(body, r.clone()),
            NameRef::Cluster => StrBytes::from_static_str(CLUSTER_RESOURCE),
            NameRef::TopicId(id) => {
                let registry = self.proxy.registry();
                if refresh && registry.topic_name(id).is_none() {
                    let cfg = self.proxy.config();
                    if let Err(e) = registry
                        .refresh(
                            self.proxy.connector().as_ref(),
                            true,
                            cfg.refresh_timeout,
                            |r| r.topic_name(id).is_some(),
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "metadata refresh for an unknown topic id failed");
                    }
                }
                registry
                    .topic_name(id)
                    .map(|n| StrBytes::from_string(n.to_string()))
                    .unwrap_or_default()
            }
        }
    }

    /// Asks `ask` about `op` on `resource` `name`; a denial is counted
    /// under that resource and operation.
    fn check(&mut self, ask: Ask, resource: ResourceType, name: &str, op: Operation) -> bool {
        self.authz
            .check_counted(self.proxy.metrics(), ask, resource, name, op)
    }
}

/// A Fetch request whose `max_bytes` is above `cap` gets `cap` instead, as
/// a broker caps it at its `fetch.max.bytes`: the response must fit in the
/// gateway's frame limit, which also bounds responses, and a response over
/// it would close the connection on every retry. Half the limit leaves room
/// for the one record batch a broker returns past `max_bytes` (KIP-74) and
/// the per-partition fields; the default 100 MiB limit leaves clients'
/// default 50 MiB untouched. (`max_bytes` exists from v3, after
/// `replica_id` up to v14, `max_wait_ms` and `min_bytes`.)
fn clamp_fetch_max_bytes(frame: Frame, version: i16, start: usize, cap: usize) -> Frame {
    if version < 3 {
        return frame;
    }
    let at = start + if version <= 14 { 12 } else { 8 };
    let Some(field) = frame.body().get(at..at + 4) else {
        return frame;
    };
    let max_bytes = i32::from_be_bytes(field.try_into().expect("four bytes"));
    let cap = i32::try_from(cap).unwrap_or(i32::MAX).max(1);
    if max_bytes <= cap {
        return frame;
    }
    tracing::debug!(
        max_bytes,
        cap,
        "Fetch max_bytes capped to half the frame limit"
    );
    let mut wire = BytesMut::from(&frame.wire()[..]);
    wire[4 + at..4 + at + 4].copy_from_slice(&cap.to_be_bytes());
    Frame::from_wire(wire.freeze())
}

/// The string at `range` of a request body, copied: what the gateway
/// answers itself is queued until the client reads it, and a slice would
/// keep the whole frame (up to the frame limit) alive for a few bytes of
/// name. The inspector has checked names to be UTF-8 (a request with any
/// other name is malformed and closes the connection); a range that is not
/// one reads as empty.
fn body_str(body: &Bytes, range: std::ops::Range<usize>) -> StrBytes {
    body.get(range)
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(|s| StrBytes::from_string(s.to_owned()))
        .unwrap_or_default()
}

/// The first denied name of `work`, for the log line of an acks=0 Produce
/// the connection is closed for.
fn first_denied(work: &ResponseWork) -> String {
    work.denied
        .first()
        .map(|d| d.name.to_string())
        .unwrap_or_default()
}

fn reply_for(work: ResponseWork) -> Reply {
    Reply::Upstream(work.needs_decoding().then(|| Box::new(work)))
}

fn topic_id_label(name: &NameRef) -> String {
    match name {
        NameRef::TopicId(id) => uuid::Uuid::from_bytes(*id).to_string(),
        _ => String::new(),
    }
}

/// The APIs whose elements are config resources (type, name, ...).
fn config_api(api: ApiKey) -> bool {
    matches!(
        api,
        ApiKey::DescribeConfigs | ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs
    )
}

/// APIs whose requests the gateway authorizes.
fn authorized_api(api: ApiKey) -> bool {
    !matches!(api, ApiKey::ApiVersions | ApiKey::DescribeCluster)
}

/// The acks of a Produce request of any version (v3+ start with the
/// transactional id), without decoding the rest.
fn produce_acks(version: i16, flexible: bool, body: &[u8], start: usize) -> Option<i16> {
    let mut r = Reader::new(body, start);
    if version >= 3 {
        r.string(flexible, "transactional_id").ok()?;
    }
    r.i16("acks").ok()
}

struct ResponseSide<'a> {
    proxy: &'a KafkaProxy,
    authz: SessionAuthz,
    fetched: TopicMeter,
    /// The topics the last auto-creation Metadata request created (or is
    /// creating): error 0 or LEADER_NOT_AVAILABLE in its answer.
    created: Vec<StrBytes>,
}

impl ResponseSide<'_> {
    async fn run<R, W>(
        &mut self,
        frames: &mut FrameReader<R>,
        client: &mut W,
        mut rx: mpsc::Receiver<InFlight>,
    ) -> Result<(), SessionError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut out: Vec<Bytes> = Vec::with_capacity(BATCH_FRAMES);
        let mut next: Option<InFlight> = None;
        loop {
            let entry = match next.take() {
                Some(e) => e,
                None => {
                    // Biased: an entry is queued before its request is
                    // written, so a response never arrives before its entry.
                    tokio::select! {
                        biased;
                        e = rx.recv() => match e {
                            Some(e) => e,
                            None => {
                                let _ = client.shutdown().await;
                                return Ok(());
                            }
                        },
                        // Idle: the broker should not send anything, but may close.
                        f = frames.next() => return match f? {
                            None => Ok(()),
                            Some(_) => Err(SessionError::MalformedFrame {
                                side: Side::Upstream,
                                detail: "a response with no request in flight".into(),
                            }),
                        },
                    }
                }
            };
            let pending = rx.len() + 1;
            out.push(self.answer(entry, frames, pending).await?);
            // Gather what is ready without waiting.
            while out.len() < BATCH_FRAMES {
                let Ok(e) = rx.try_recv() else { break };
                let ready = matches!(e.reply, Reply::Gateway(_)) || frames_ready(frames)?;
                if !ready {
                    next = Some(e);
                    break;
                }
                let pending = rx.len() + 1;
                out.push(self.answer(e, frames, pending).await?);
            }
            write_chunks(client, &mut out)
                .await
                .map_err(|source| SessionError::Io {
                    side: Side::Client,
                    source,
                })?;
        }
    }

    async fn answer<R: AsyncRead + Unpin>(
        &mut self,
        e: InFlight,
        frames: &mut FrameReader<R>,
        pending: usize,
    ) -> Result<Bytes, SessionError> {
        let bytes = match e.reply {
            Reply::Creation(version) => {
                let (frame, at) =
                    broker_response(frames, e.correlation_id, e.header_version, pending).await?;
                use kafka_protocol::protocol::Decodable;
                let mut body = frame.body_bytes().slice(at..);
                let resp = kafka_protocol::messages::MetadataResponse::decode(&mut body, version)
                    .map_err(|err| SessionError::MalformedFrame {
                    side: Side::Upstream,
                    detail: format!("Metadata v{version} response: {err}"),
                })?;
                self.created = resp
                    .topics
                    .into_iter()
                    .filter(|t| {
                        t.error_code == 0
                            || t.error_code == crate::inspect::codes::LEADER_NOT_AVAILABLE
                    })
                    .filter_map(|t| t.name.map(|n| n.0))
                    .collect();
                return Ok(Bytes::new());
            }
            Reply::Gateway(work) => {
                let body = self.process(&work, None)?.unwrap_or_default();
                response_frame(e.correlation_id, e.header_version, &body)
            }
            Reply::Upstream(mut work) => {
                if let Some(w) = work.as_mut().filter(|w| !w.creating.is_empty()) {
                    // Only what the broker did create is "being created";
                    // a topic it refused (auto-creation off, a policy)
                    // stays unknown.
                    let created = std::mem::take(&mut self.created);
                    w.creating.retain(|n| created.contains(n));
                }
                let (frame, at) =
                    broker_response(frames, e.correlation_id, e.header_version, pending).await?;
                match work {
                    None => frame.into_wire(),
                    Some(work) => {
                        match self.process(&work, Some(frame.body_bytes().slice(at..)))? {
                            None => frame.into_wire(),
                            Some(body) => {
                                let mut b = BytesMut::with_capacity(4 + at + body.len());
                                b.extend_from_slice(&((at + body.len()) as u32).to_be_bytes());
                                b.extend_from_slice(&frame.body()[..at]);
                                b.extend_from_slice(&body);
                                b.freeze()
                            }
                        }
                    }
                }
            }
        };
        self.fetched
            .observe_duration(e.api_name, e.started.elapsed().as_secs_f64());
        Ok(bytes)
    }

    fn process(
        &mut self,
        work: &ResponseWork,
        body: Option<Bytes>,
    ) -> Result<Option<BytesMut>, SessionError> {
        let mut ctx = ResponseCtx {
            mapper: &self.proxy.config().mapper,
            registry: self.proxy.registry(),
            authz: &mut self.authz,
            fetched: &mut self.fetched,
        };
        process(work, body, &mut ctx).map_err(|detail| SessionError::MalformedFrame {
            side: Side::Upstream,
            detail: format!("{:?} v{} response: {detail}", work.api, work.version),
        })
    }
}

/// The broker's next response, checked to answer the request with
/// `correlation_id`, and where its body starts (after a header of
/// `header_version`).
async fn broker_response<R: AsyncRead + Unpin>(
    frames: &mut FrameReader<R>,
    correlation_id: i32,
    header_version: i16,
    pending: usize,
) -> Result<(Frame, usize), SessionError> {
    let frame = frames
        .next()
        .await?
        .ok_or(SessionError::UpstreamClosed { pending })?;
    let (corr, at) = parse_response_header(frame.body(), header_version)
        .map_err(|m| SessionError::malformed(Side::Upstream, m))?;
    if corr != correlation_id {
        return Err(SessionError::CorrelationMismatch {
            expected: correlation_id,
            got: corr,
        });
    }
    Ok((frame, at))
}

fn frames_ready<R: AsyncRead + Unpin>(frames: &mut FrameReader<R>) -> Result<bool, SessionError> {
    frames.has_buffered_frame()
}

/// A response frame: size, correlation id, tagged fields (header v1), body.
pub(crate) fn response_frame(correlation_id: i32, header_version: i16, body: &[u8]) -> Bytes {
    let header = if header_version >= 1 { 5 } else { 4 };
    let mut b = BytesMut::with_capacity(4 + header + body.len());
    b.extend_from_slice(&((header + body.len()) as u32).to_be_bytes());
    b.extend_from_slice(&correlation_id.to_be_bytes());
    if header_version >= 1 {
        b.extend_from_slice(&[0]);
    }
    b.extend_from_slice(body);
    b.freeze()
}

#[allow(dead_code)]
fn _assert_send(p: &KafkaProxy, c: tokio::net::TcpStream, u: tokio::net::TcpStream) {
    fn is_send<T: Send>(_: &T) {}
    let f = run(p, c, u, Principal::Anonymous);
    is_send(&f);
}
