//! Which API versions the gateway reads, and the ApiVersions rewrite that
//! keeps clients within them.
//!
//! The gateway decodes the bodies of the APIs it rewrites (broker
//! addresses) or authorizes. For those, the ApiVersions response a client
//! sees offers the intersection of the broker's range and the range this
//! build can decode (kafka-protocol's request and response types), and
//! drops a key whose intersection is empty, so the gateway never negotiates
//! a version neither side supports. Every other API key passes unchanged.

use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Message, VersionRange};

macro_rules! inspected_apis {
    ($($key:ident => $req:ty, $resp:ty;)*) => {
        /// The versions of `api` kafka-protocol reads and writes, for the
        /// APIs the gateway inspects.
        fn decodable_versions(api: ApiKey) -> Option<VersionRange> {
            match api {
                $(ApiKey::$key => Some(<$req as Message>::VERSIONS.intersect(&<$resp as Message>::VERSIONS)),)*
                _ => None,
            }
        }
    };
}

inspected_apis! {
    Produce => ProduceRequest, ProduceResponse;
    Fetch => FetchRequest, FetchResponse;
    ListOffsets => ListOffsetsRequest, ListOffsetsResponse;
    Metadata => MetadataRequest, MetadataResponse;
    OffsetCommit => OffsetCommitRequest, OffsetCommitResponse;
    OffsetFetch => OffsetFetchRequest, OffsetFetchResponse;
    FindCoordinator => FindCoordinatorRequest, FindCoordinatorResponse;
    JoinGroup => JoinGroupRequest, JoinGroupResponse;
    Heartbeat => HeartbeatRequest, HeartbeatResponse;
    LeaveGroup => LeaveGroupRequest, LeaveGroupResponse;
    SyncGroup => SyncGroupRequest, SyncGroupResponse;
    DescribeGroups => DescribeGroupsRequest, DescribeGroupsResponse;
    ListGroups => ListGroupsRequest, ListGroupsResponse;
    ApiVersions => ApiVersionsRequest, ApiVersionsResponse;
    CreateTopics => CreateTopicsRequest, CreateTopicsResponse;
    DeleteTopics => DeleteTopicsRequest, DeleteTopicsResponse;
    InitProducerId => InitProducerIdRequest, InitProducerIdResponse;
    DescribeConfigs => DescribeConfigsRequest, DescribeConfigsResponse;
    DeleteGroups => DeleteGroupsRequest, DeleteGroupsResponse;
    DescribeCluster => DescribeClusterRequest, DescribeClusterResponse;
    ConsumerGroupHeartbeat => ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse;
    AlterConfigs => AlterConfigsRequest, AlterConfigsResponse;
    IncrementalAlterConfigs => IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse;
    DeleteRecords => DeleteRecordsRequest, DeleteRecordsResponse;
    CreatePartitions => CreatePartitionsRequest, CreatePartitionsResponse;
    OffsetDelete => OffsetDeleteRequest, OffsetDeleteResponse;
    OffsetForLeaderEpoch => OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse;
    AddPartitionsToTxn => AddPartitionsToTxnRequest, AddPartitionsToTxnResponse;
    AddOffsetsToTxn => AddOffsetsToTxnRequest, AddOffsetsToTxnResponse;
    EndTxn => EndTxnRequest, EndTxnResponse;
    TxnOffsetCommit => TxnOffsetCommitRequest, TxnOffsetCommitResponse;
    DescribeAcls => DescribeAclsRequest, DescribeAclsResponse;
    CreateAcls => CreateAclsRequest, CreateAclsResponse;
    DeleteAcls => DeleteAclsRequest, DeleteAclsResponse;
    DescribeLogDirs => DescribeLogDirsRequest, DescribeLogDirsResponse;
    ListPartitionReassignments => ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse;
    AlterPartitionReassignments => AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse;
}

/// The versions of `api` whose requests and responses the gateway reads
/// and writes, or `None` if it does not inspect `api` (then the API passes
/// through unchanged when no authorization policy is in force).
pub fn inspected_versions(api: ApiKey) -> Option<VersionRange> {
    let mut range = decodable_versions(api)?;
    if api == ApiKey::AddPartitionsToTxn {
        // v4+ batches several producers' transactions: brokers send it to
        // each other (KIP-890), clients send v0-3.
        range.max = range.max.min(3);
    }
    Some(range)
}

/// DescribeQuorum's last version without addresses: from v2 (KIP-853) its
/// response lists every controller's listeners, host:port inside the
/// cluster that no client reaches through the gateway (and controller ids
/// are not broker ids the host template could name).
pub const DESCRIBE_QUORUM_MAX: i16 = 1;

/// The versions of `api` offered without a policy for APIs the gateway
/// does not authorize whose responses carry addresses: the share group
/// (KIP-932) fetches, read to rewrite their `node_endpoints`, and
/// DescribeQuorum up to [`DESCRIBE_QUORUM_MAX`], which has nothing to
/// rewrite (as Kroxylicious caps it). A request outside them closes the
/// connection; with a policy these APIs are not offered at all, as every
/// API the gateway cannot authorize.
pub fn rewritten_versions(api: ApiKey) -> Option<VersionRange> {
    match api {
        ApiKey::DescribeQuorum => Some(VersionRange {
            min: <DescribeQuorumRequest as Message>::VERSIONS.min,
            max: DESCRIBE_QUORUM_MAX,
        }),
        ApiKey::ShareFetch => Some(
            <ShareFetchRequest as Message>::VERSIONS
                .intersect(&<ShareFetchResponse as Message>::VERSIONS),
        ),
        ApiKey::ShareAcknowledge => Some(
            <ShareAcknowledgeRequest as Message>::VERSIONS
                .intersect(&<ShareAcknowledgeResponse as Message>::VERSIONS),
        ),
        _ => None,
    }
}

/// Whether responses of `api` carry broker addresses the gateway must
/// rewrite; a request of such an API in a version newer than the gateway
/// reads is refused (closing the connection, as a broker does), so no
/// address passes unrewritten.
pub fn carries_addresses(api: ApiKey) -> bool {
    matches!(
        api,
        ApiKey::Metadata
            | ApiKey::FindCoordinator
            | ApiKey::DescribeCluster
            | ApiKey::Produce
            | ApiKey::Fetch
            | ApiKey::ShareFetch
            | ApiKey::ShareAcknowledge
            | ApiKey::DescribeQuorum
    )
}

/// APIs a broker answers without any ACL check: version negotiation, SASL
/// authentication and client telemetry (KIP-714). With an authorization
/// policy in force, these and the inspected APIs are the only ones the
/// gateway offers and forwards.
pub fn needs_no_authorization(api: ApiKey) -> bool {
    matches!(
        api,
        ApiKey::ApiVersions
            | ApiKey::SaslHandshake
            | ApiKey::SaslAuthenticate
            | ApiKey::GetTelemetrySubscriptions
            | ApiKey::PushTelemetry
    )
}

/// Whether a request of `api` may pass while an authorization policy is in
/// force without the gateway checking it.
pub fn allowed_unchecked(api: ApiKey) -> bool {
    needs_no_authorization(api) || inspected_versions(api).is_some()
}

/// Whether the gateway reads requests of `api` at `version`.
pub fn is_inspected(api: ApiKey, version: i16) -> bool {
    inspected_versions(api).is_some_and(|r| r.min <= version && version <= r.max)
}

/// Narrows a broker's ApiVersions response to what the gateway can read;
/// with `enforcing` (an authorization policy in force), also leaves out the
/// APIs it cannot authorize (unknown keys included), so clients do not use
/// them. Returns whether anything changed.
pub fn cap_api_versions(resp: &mut ApiVersionsResponse, enforcing: bool) -> bool {
    let before = resp.api_keys.len();
    let mut changed = false;
    resp.api_keys.retain_mut(|k| {
        let Ok(api) = ApiKey::try_from(k.api_key) else {
            return !enforcing;
        };
        let ours = match (inspected_versions(api), rewritten_versions(api)) {
            (Some(r), _) => r,
            (None, Some(r)) if !enforcing => r,
            _ => return !enforcing || needs_no_authorization(api),
        };
        let min = k.min_version.max(ours.min);
        let max = k.max_version.min(ours.max);
        if min > max {
            return false;
        }
        if (min, max) != (k.min_version, k.max_version) {
            k.min_version = min;
            k.max_version = max;
            changed = true;
        }
        true
    });
    changed || resp.api_keys.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;

    #[test]
    fn share_fetches_are_offered_in_readable_versions_without_a_policy_only() {
        let broker = || {
            let mut r = ApiVersionsResponse::default();
            r.api_keys = vec![
                key(ApiKey::ShareFetch as i16, 0, 1),
                key(ApiKey::ShareAcknowledge as i16, 0, 1),
            ];
            r
        };
        let mut r = broker();
        assert!(cap_api_versions(&mut r, false));
        let got: Vec<(i16, i16, i16)> = r
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        assert_eq!(
            got,
            [
                (ApiKey::ShareFetch as i16, 1, 1),
                (ApiKey::ShareAcknowledge as i16, 1, 1)
            ]
        );
        let mut r = broker();
        assert!(cap_api_versions(&mut r, true));
        assert!(r.api_keys.is_empty());
    }

    /// DescribeQuorum v2+ lists the controllers' internal listeners: only
    /// v0-v1 are offered (and nothing under a policy).
    #[test]
    fn describe_quorum_is_offered_without_its_listener_versions() {
        let broker = || {
            let mut r = ApiVersionsResponse::default();
            r.api_keys = vec![key(ApiKey::DescribeQuorum as i16, 0, 2)];
            r
        };
        let mut r = broker();
        assert!(cap_api_versions(&mut r, false));
        let k = &r.api_keys[0];
        assert_eq!((k.min_version, k.max_version), (0, 1));
        let mut r = broker();
        assert!(cap_api_versions(&mut r, true));
        assert!(r.api_keys.is_empty());
    }

    fn key(api: i16, min: i16, max: i16) -> ApiVersion {
        let mut k = ApiVersion::default();
        k.api_key = api;
        k.min_version = min;
        k.max_version = max;
        k
    }

    #[test]
    fn intersects_inspected_keys_and_leaves_the_rest() {
        let mut resp = ApiVersionsResponse::default();
        resp.api_keys = vec![
            key(ApiKey::Produce as i16, 0, 20),      // capped both ends: 3..13
            key(ApiKey::Metadata as i16, 0, 12),     // within: unchanged
            key(ApiKey::OffsetCommit as i16, 0, 10), // request side decodes to 9
            key(ApiKey::Fetch as i16, 0, 3),         // nothing in common: dropped
            key(ApiKey::ElectLeaders as i16, 0, 99), // not inspected: unchanged
            key(9999, 0, 5),                         // unknown key: unchanged
        ];
        let mut enforced = resp.clone();
        assert!(cap_api_versions(&mut resp, false));
        let got: Vec<(i16, i16, i16)> = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 3, 13),
                (3, 0, 12),
                (8, 2, 9),
                (ApiKey::ElectLeaders as i16, 0, 99),
                (9999, 0, 5),
            ]
        );
        // Idempotent.
        assert!(!cap_api_versions(&mut resp, false));

        // Under a policy, what cannot be authorized is not offered.
        enforced
            .api_keys
            .push(key(ApiKey::SaslHandshake as i16, 0, 1));
        enforced
            .api_keys
            .push(key(ApiKey::DescribeProducers as i16, 0, 1));
        // Authorized on the cluster (from v1, what kafka-protocol reads).
        enforced.api_keys.push(key(ApiKey::CreateAcls as i16, 0, 3));
        assert!(cap_api_versions(&mut enforced, true));
        let got: Vec<(i16, i16, i16)> = enforced
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 3, 13),
                (3, 0, 12),
                (8, 2, 9),
                (ApiKey::SaslHandshake as i16, 0, 1),
                (ApiKey::CreateAcls as i16, 1, 3)
            ],
            "ElectLeaders, DescribeProducers and the unknown key are left out"
        );
    }

    #[test]
    fn add_partitions_to_txn_is_offered_in_client_versions_only() {
        let r = inspected_versions(ApiKey::AddPartitionsToTxn).unwrap();
        assert_eq!((r.min, r.max), (0, 3));
        assert!(allowed_unchecked(ApiKey::DeleteRecords));
        assert!(allowed_unchecked(ApiKey::SaslAuthenticate));
        assert!(allowed_unchecked(ApiKey::CreateAcls));
        assert!(!allowed_unchecked(ApiKey::ElectLeaders));
        assert!(!allowed_unchecked(ApiKey::DescribeProducers));
    }

    #[test]
    fn inspection_ranges() {
        assert!(is_inspected(ApiKey::Produce, 9));
        assert!(!is_inspected(ApiKey::Produce, 2));
        assert!(!is_inspected(ApiKey::Produce, 14));
        assert!(!is_inspected(ApiKey::ElectLeaders, 0));
        assert_eq!(
            inspected_versions(ApiKey::ApiVersions).map(|r| r.max),
            Some(4)
        );
    }
}
