//! Request and response headers, parsed by hand on the hot path.
//!
//! A request header is api_key (i16), api_version (i16), correlation_id
//! (i32), client_id (nullable i16-length string); header version 2 (the
//! request's flexible versions) adds tagged fields. A response header is the
//! correlation id, plus tagged fields in header version 1 — except
//! ApiVersions, whose response header is always version 0.

use std::ops::Range;

use kafka_protocol::messages::ApiKey;

use crate::error::Malformed;
use crate::wire::{str_at, Reader};

/// A parsed request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    /// The raw API key.
    pub api_key: i16,
    /// The API key, if kafka-protocol knows it.
    pub api: Option<ApiKey>,
    /// The request's version.
    pub api_version: i16,
    /// Echoed by the broker in the response.
    pub correlation_id: i32,
    client_id: Option<Range<usize>>,
    /// Where the request body starts in the frame body; `None` for API keys
    /// the gateway does not know (their header version is unknown, and
    /// they are forwarded as they are).
    pub body_offset: Option<usize>,
}

impl RequestHeader {
    /// The client id, read from the frame body the header was parsed from.
    pub fn client_id<'a>(&self, frame_body: &'a [u8]) -> Option<&'a str> {
        self.client_id.clone().map(|r| str_at(frame_body, r))
    }

    /// Whether the body is in a flexible version (compact strings and
    /// arrays, tagged fields).
    pub fn flexible(&self) -> bool {
        self.api
            .is_some_and(|api| api.request_header_version(self.api_version) >= 2)
    }

    /// The header version of the response to this request.
    pub fn response_header_version(&self) -> i16 {
        match self.api {
            // Always v0, so that a client can read it whatever version it asked.
            Some(ApiKey::ApiVersions) | None => 0,
            Some(api) => api.response_header_version(self.api_version),
        }
    }

    /// Kafka's name for the API (`Produce`, `Fetch`, ...), or `Unknown`.
    pub fn api_name(&self) -> &'static str {
        api_name(self.api)
    }
}

/// Kafka's name of an API key, as in the protocol guide.
pub fn api_name(api: Option<ApiKey>) -> &'static str {
    let Some(api) = api else { return "Unknown" };
    // ApiKey's Debug is the variant name, which is Kafka's name; keep a
    // static table for the label so no string is built per request.
    macro_rules! names {
        ($($k:ident),* $(,)?) => {
            match api {
                $(ApiKey::$k => stringify!($k),)*
                #[allow(unreachable_patterns)]
                _ => "Other",
            }
        };
    }
    names!(
        Produce,
        Fetch,
        ListOffsets,
        Metadata,
        OffsetCommit,
        OffsetFetch,
        FindCoordinator,
        JoinGroup,
        Heartbeat,
        LeaveGroup,
        SyncGroup,
        DescribeGroups,
        ListGroups,
        SaslHandshake,
        ApiVersions,
        CreateTopics,
        DeleteTopics,
        DeleteRecords,
        InitProducerId,
        OffsetForLeaderEpoch,
        AddPartitionsToTxn,
        AddOffsetsToTxn,
        EndTxn,
        WriteTxnMarkers,
        TxnOffsetCommit,
        DescribeAcls,
        CreateAcls,
        DeleteAcls,
        DescribeConfigs,
        AlterConfigs,
        AlterReplicaLogDirs,
        DescribeLogDirs,
        SaslAuthenticate,
        CreatePartitions,
        CreateDelegationToken,
        RenewDelegationToken,
        ExpireDelegationToken,
        DescribeDelegationToken,
        DeleteGroups,
        ElectLeaders,
        IncrementalAlterConfigs,
        AlterPartitionReassignments,
        ListPartitionReassignments,
        OffsetDelete,
        DescribeClientQuotas,
        AlterClientQuotas,
        DescribeUserScramCredentials,
        AlterUserScramCredentials,
        Vote,
        BeginQuorumEpoch,
        EndQuorumEpoch,
        DescribeQuorum,
        AlterPartition,
        UpdateFeatures,
        Envelope,
        FetchSnapshot,
        DescribeCluster,
        DescribeProducers,
        BrokerRegistration,
        BrokerHeartbeat,
        UnregisterBroker,
        DescribeTransactions,
        ListTransactions,
        AllocateProducerIds,
        ConsumerGroupHeartbeat,
        ConsumerGroupDescribe,
        ControllerRegistration,
        GetTelemetrySubscriptions,
        PushTelemetry,
        AssignReplicasToDirs,
        ListConfigResources,
        DescribeTopicPartitions,
        ShareGroupHeartbeat,
        ShareGroupDescribe,
        ShareFetch,
        ShareAcknowledge,
        AddRaftVoter,
        RemoveRaftVoter,
        UpdateRaftVoter,
        InitializeShareGroupState,
        ReadShareGroupState,
        WriteShareGroupState,
        DeleteShareGroupState,
        ReadShareGroupStateSummary,
        DescribeShareGroupOffsets,
        AlterShareGroupOffsets,
        DeleteShareGroupOffsets,
    )
}

/// Parses the request header at the start of a frame body.
pub fn parse_request_header(body: &[u8]) -> Result<RequestHeader, Malformed> {
    let mut r = Reader::new(body, 0);
    let api_key = r.i16("request header: api_key")?;
    let api_version = r.i16("request header: api_version")?;
    let correlation_id = r.i32("request header: correlation_id")?;
    if api_version < 0 {
        return Err(Malformed::new("request header: negative api_version", 2));
    }
    let api = ApiKey::try_from(api_key).ok();
    let Some(known) = api else {
        return Ok(RequestHeader {
            api_key,
            api,
            api_version,
            correlation_id,
            client_id: None,
            body_offset: None,
        });
    };
    let header_version = known.request_header_version(api_version);
    let client_id = if header_version >= 1 {
        r.string(false, "request header: client_id")?
    } else {
        None
    };
    r.skip_tags(header_version >= 2)?;
    Ok(RequestHeader {
        api_key,
        api,
        api_version,
        correlation_id,
        client_id,
        body_offset: Some(r.pos()),
    })
}

/// Parses a response header of `header_version`; returns the correlation id
/// and where the body starts.
pub fn parse_response_header(body: &[u8], header_version: i16) -> Result<(i32, usize), Malformed> {
    let mut r = Reader::new(body, 0);
    let correlation_id = r.i32("response header: correlation_id")?;
    r.skip_tags(header_version >= 1)?;
    Ok((correlation_id, r.pos()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::RequestHeader as KpHeader;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn encode(api: ApiKey, version: i16, client: Option<&'static str>) -> Vec<u8> {
        let mut h = KpHeader::default();
        h.request_api_key = api as i16;
        h.request_api_version = version;
        h.correlation_id = 4242;
        h.client_id = client.map(StrBytes::from_static_str);
        h.unknown_tagged_fields
            .insert(7, bytes::Bytes::from_static(b"xyz"));
        let mut buf = BytesMut::new();
        let hv = api.request_header_version(version);
        h.encode(&mut buf, hv).unwrap();
        buf.extend_from_slice(b"BODY");
        buf.to_vec()
    }

    #[test]
    fn non_flexible_header() {
        // Produce v7: header v1, no tagged fields (the tag above is not encoded).
        let body = encode(ApiKey::Produce, 7, Some("rdkafka"));
        let h = parse_request_header(&body).unwrap();
        assert_eq!((h.api_key, h.api_version, h.correlation_id), (0, 7, 4242));
        assert_eq!(h.client_id(&body), Some("rdkafka"));
        assert!(!h.flexible());
        assert_eq!(&body[h.body_offset.unwrap()..], b"BODY");
        assert_eq!(h.api_name(), "Produce");
    }

    #[test]
    fn flexible_header_skips_tagged_fields() {
        // Produce v9: header v2 with a tagged field.
        let body = encode(ApiKey::Produce, 9, None);
        let h = parse_request_header(&body).unwrap();
        assert_eq!(h.client_id(&body), None);
        assert!(h.flexible());
        assert_eq!(&body[h.body_offset.unwrap()..], b"BODY");
        // Metadata v12 with a client id.
        let body = encode(ApiKey::Metadata, 12, Some("c"));
        let h = parse_request_header(&body).unwrap();
        assert_eq!(h.client_id(&body), Some("c"));
        assert_eq!(&body[h.body_offset.unwrap()..], b"BODY");
        assert_eq!(h.response_header_version(), 1);
    }

    #[test]
    fn api_versions_response_header_is_always_v0() {
        let body = encode(ApiKey::ApiVersions, 3, Some("c"));
        let h = parse_request_header(&body).unwrap();
        assert!(h.flexible());
        assert_eq!(h.response_header_version(), 0);
    }

    #[test]
    fn unknown_api_key_keeps_only_the_fixed_fields() {
        let mut body = vec![0x03, 0xe7, 0, 1, 0, 0, 0, 9];
        body.extend_from_slice(b"anything");
        let h = parse_request_header(&body).unwrap();
        assert_eq!((h.api_key, h.api, h.correlation_id), (999, None, 9));
        assert_eq!(h.body_offset, None);
        assert_eq!(h.api_name(), "Unknown");
    }

    #[test]
    fn short_or_broken_headers_are_malformed() {
        assert!(parse_request_header(&[0, 0, 0]).is_err());
        // Produce v7 with a client id longer than the frame.
        assert!(parse_request_header(&[0, 0, 0, 7, 0, 0, 0, 1, 0, 9, b'a']).is_err());
        // Negative version.
        assert!(parse_request_header(&[0, 3, 0xff, 0xff, 0, 0, 0, 1, 0xff, 0xff]).is_err());
    }

    #[test]
    fn response_headers() {
        let body = [0, 0, 0, 5, 0, b'x'];
        assert_eq!(parse_response_header(&body, 1).unwrap(), (5, 5));
        assert_eq!(parse_response_header(&body, 0).unwrap(), (5, 4));
        assert!(parse_response_header(&[0, 0], 0).is_err());
    }
}
