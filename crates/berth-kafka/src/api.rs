//! Which requests the gateway serves, in which versions: the one table that
//! ApiVersions advertises and the dispatcher checks. Adding an API is a row
//! here, an arm in `conn::Conn::dispatch` and its schema in `guard` (when
//! it has arrays). Versions stop where Kafka starts addressing topics by
//! id, or where a version only adds what the gateway does not offer
//! (KIP-848 member epochs, share groups, two-phase-commit transactions).

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use crate::codes;

/// An API and the versions advertised for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supported {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
}

const fn row(key: ApiKey, min: i16, max: i16) -> Supported {
    Supported { key, min, max }
}

/// Advertised versions. A request is served when its version is both
/// advertised here and decodable by kafka-protocol (`ApiKey::valid_versions`).
pub const SUPPORTED: &[Supported] = &[
    // Min 0 although only v3+ decodes: librdkafka refuses compressed
    // produce unless Produce v0 is advertised (KAFKA-18659); clients that
    // negotiate pick v3+ anyway.
    row(ApiKey::Produce, 0, 9),
    // v13+ addresses topics by id only.
    row(ApiKey::Fetch, 4, 12),
    row(ApiKey::ListOffsets, 1, 7),
    row(ApiKey::Metadata, 0, 12),
    // kafka-protocol decodes OffsetCommit v2+ and OffsetFetch v1+; v9 is
    // KIP-848's, v10 names topics by id.
    row(ApiKey::OffsetCommit, 2, 8),
    row(ApiKey::OffsetFetch, 1, 8),
    // v5+: transaction errors and share groups.
    row(ApiKey::FindCoordinator, 0, 4),
    row(ApiKey::JoinGroup, 0, 9),
    row(ApiKey::Heartbeat, 0, 4),
    row(ApiKey::LeaveGroup, 0, 5),
    row(ApiKey::SyncGroup, 0, 5),
    row(ApiKey::DescribeGroups, 0, 5),
    row(ApiKey::ListGroups, 0, 4),
    row(ApiKey::SaslHandshake, 0, 1),
    row(ApiKey::ApiVersions, 0, 3),
    row(ApiKey::CreateTopics, 2, 7),
    row(ApiKey::DeleteTopics, 1, 5),
    // Idempotent producers only; v5+ is for transactions.
    row(ApiKey::InitProducerId, 0, 4),
    // kafka-protocol decodes DescribeConfigs v1+ only.
    row(ApiKey::DescribeConfigs, 1, 4),
    row(ApiKey::SaslAuthenticate, 0, 2),
    row(ApiKey::CreatePartitions, 0, 3),
];

/// The highest ApiVersions version understood; a client asking above it
/// gets a v0 answer with UNSUPPORTED_VERSION and the full list (KIP-511).
pub const API_VERSIONS_MAX: i16 = 3;

/// Whether `version` of `key` is served.
pub fn served(key: ApiKey, version: i16) -> bool {
    let decodable = key.valid_versions();
    SUPPORTED.iter().any(|s| {
        s.key == key
            && (s.min..=s.max).contains(&version)
            && (decodable.min..=decodable.max).contains(&version)
    })
}

/// The ApiVersions answer (`error_code` NONE, or UNSUPPORTED_VERSION for a
/// too-new request).
pub fn api_versions(error_code: i16) -> ApiVersionsResponse {
    let mut resp = ApiVersionsResponse::default();
    resp.error_code = error_code;
    resp.api_keys = SUPPORTED
        .iter()
        .map(|s| {
            let mut v = ApiVersion::default();
            v.api_key = s.key as i16;
            v.min_version = s.min;
            v.max_version = s.max;
            v
        })
        .collect();
    // v1+: throttle 0; v3+: no supported or finalized features.
    resp.throttle_time_ms = 0;
    resp.finalized_features_epoch = -1;
    debug_assert!(error_code == codes::NONE || error_code == codes::UNSUPPORTED_VERSION);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_max_is_decodable() {
        for s in SUPPORTED {
            let codec = s.key.valid_versions();
            assert!(s.max <= codec.max, "{:?} max {}", s.key, s.max);
            assert!(served(s.key, s.max), "{:?}", s.key);
        }
    }

    #[test]
    fn exactly_these_apis() {
        let mut keys: Vec<i16> = SUPPORTED.iter().map(|s| s.key as i16).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 32, 36, 37]
        );
        // Transactions are not offered.
        for k in [24, 25, 26, 28] {
            assert!(!keys.contains(&k), "{k}");
        }
    }

    #[test]
    fn served_checks_both_ranges() {
        assert!(!served(ApiKey::Produce, 2), "advertised but not decodable");
        assert!(served(ApiKey::Produce, 3));
        assert!(!served(ApiKey::Fetch, 13), "decodable but not advertised");
        assert!(served(ApiKey::JoinGroup, 0));
        assert!(!served(ApiKey::OffsetCommit, 1), "advertised from v2 only");
        assert!(!served(ApiKey::OffsetCommit, 9));
        assert!(!served(ApiKey::OffsetFetch, 9));
        assert!(!served(ApiKey::ApiVersions, 4));
    }
}
