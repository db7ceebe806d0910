//! Kafka error codes the gateway sends, and the one table that maps
//! [`StreamError`] to them. Numbers are Kafka's (`Errors.java`); they are
//! stable on the wire and must never change.

use crate::backend::StreamError;

pub const NONE: i16 = 0;
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const LEADER_NOT_AVAILABLE: i16 = 5;
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub const REQUEST_TIMED_OUT: i16 = 7;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const NOT_COORDINATOR: i16 = 16;
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub const INVALID_GROUP_ID: i16 = 24;
pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
pub const REBALANCE_IN_PROGRESS: i16 = 27;
pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const INVALID_PARTITIONS: i16 = 37;
pub const INVALID_REQUEST: i16 = 42;
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
pub const KAFKA_STORAGE_ERROR: i16 = 56;
pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
pub const MEMBER_ID_REQUIRED: i16 = 79;
pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
pub const FENCED_INSTANCE_ID: i16 = 82;
pub const UNKNOWN_TOPIC_ID: i16 = 100;

/// Where an error is reported: Kafka has a storage error for partitions and
/// only the generic server error elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Produce, Fetch, ListOffsets partition results.
    Partition,
    /// Topic-level results (CreateTopics, DeleteTopics, ...).
    Topic,
    /// Metadata's topic results: a passing failure is LEADER_NOT_AVAILABLE,
    /// which clients answer by asking again (from any broker).
    Metadata,
    /// A group's name or the group itself (the group APIs, InitProducerId):
    /// a name the backend cannot resolve is an invalid group id, and a
    /// passing failure sends the client looking for the coordinator again.
    Group,
}

/// The one StreamError → Kafka error code table.
pub fn code(e: &StreamError, scope: Scope) -> i16 {
    match e {
        StreamError::UnknownTopic(_) | StreamError::InvalidTopic(_) if scope == Scope::Group => {
            INVALID_GROUP_ID
        }
        StreamError::Retriable(_) if scope == Scope::Group => COORDINATOR_NOT_AVAILABLE,
        StreamError::NotLeader(_) => match scope {
            Scope::Partition => NOT_LEADER_OR_FOLLOWER,
            Scope::Group => NOT_COORDINATOR,
            Scope::Topic | Scope::Metadata => LEADER_NOT_AVAILABLE,
        },
        StreamError::Retriable(_) if scope == Scope::Metadata => LEADER_NOT_AVAILABLE,
        StreamError::UnknownTopic(_) => UNKNOWN_TOPIC_OR_PARTITION,
        StreamError::TopicDenied(_) => TOPIC_AUTHORIZATION_FAILED,
        StreamError::GroupDenied(_) => GROUP_AUTHORIZATION_FAILED,
        StreamError::ClusterDenied(_) => CLUSTER_AUTHORIZATION_FAILED,
        StreamError::OffsetOutOfRange(_) => OFFSET_OUT_OF_RANGE,
        StreamError::CorruptBatch(_) => CORRUPT_MESSAGE,
        StreamError::TopicExists(_) => TOPIC_ALREADY_EXISTS,
        StreamError::InvalidTopic(_) => INVALID_TOPIC_EXCEPTION,
        StreamError::InvalidPartitions(_) => INVALID_PARTITIONS,
        StreamError::TooLarge(_) => MESSAGE_TOO_LARGE,
        StreamError::Retriable(_) => REQUEST_TIMED_OUT,
        StreamError::OutOfOrderSequence(_) => OUT_OF_ORDER_SEQUENCE_NUMBER,
        StreamError::InvalidProducerEpoch(_) => INVALID_PRODUCER_EPOCH,
        StreamError::Internal(_) => match scope {
            Scope::Partition => KAFKA_STORAGE_ERROR,
            Scope::Topic | Scope::Metadata | Scope::Group => UNKNOWN_SERVER_ERROR,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::ResponseError as K;

    /// Our constants agree with kafka-protocol's copy of Kafka's table.
    #[test]
    fn constants_match_kafka() {
        for (ours, theirs) in [
            (UNKNOWN_SERVER_ERROR, K::UnknownServerError),
            (OFFSET_OUT_OF_RANGE, K::OffsetOutOfRange),
            (CORRUPT_MESSAGE, K::CorruptMessage),
            (UNKNOWN_TOPIC_OR_PARTITION, K::UnknownTopicOrPartition),
            (LEADER_NOT_AVAILABLE, K::LeaderNotAvailable),
            (NOT_LEADER_OR_FOLLOWER, K::NotLeaderOrFollower),
            (NOT_COORDINATOR, K::NotCoordinator),
            (REQUEST_TIMED_OUT, K::RequestTimedOut),
            (MESSAGE_TOO_LARGE, K::MessageTooLarge),
            (OFFSET_METADATA_TOO_LARGE, K::OffsetMetadataTooLarge),
            (COORDINATOR_NOT_AVAILABLE, K::CoordinatorNotAvailable),
            (ILLEGAL_GENERATION, K::IllegalGeneration),
            (INCONSISTENT_GROUP_PROTOCOL, K::InconsistentGroupProtocol),
            (INVALID_GROUP_ID, K::InvalidGroupId),
            (UNKNOWN_MEMBER_ID, K::UnknownMemberId),
            (INVALID_SESSION_TIMEOUT, K::InvalidSessionTimeout),
            (REBALANCE_IN_PROGRESS, K::RebalanceInProgress),
            (MEMBER_ID_REQUIRED, K::MemberIdRequired),
            (GROUP_MAX_SIZE_REACHED, K::GroupMaxSizeReached),
            (FENCED_INSTANCE_ID, K::FencedInstanceId),
            (INVALID_TOPIC_EXCEPTION, K::InvalidTopicException),
            (TOPIC_AUTHORIZATION_FAILED, K::TopicAuthorizationFailed),
            (GROUP_AUTHORIZATION_FAILED, K::GroupAuthorizationFailed),
            (CLUSTER_AUTHORIZATION_FAILED, K::ClusterAuthorizationFailed),
            (UNSUPPORTED_SASL_MECHANISM, K::UnsupportedSaslMechanism),
            (UNSUPPORTED_VERSION, K::UnsupportedVersion),
            (TOPIC_ALREADY_EXISTS, K::TopicAlreadyExists),
            (INVALID_PARTITIONS, K::InvalidPartitions),
            (INVALID_REQUEST, K::InvalidRequest),
            (
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                K::TransactionalIdAuthorizationFailed,
            ),
            (KAFKA_STORAGE_ERROR, K::KafkaStorageError),
            (SASL_AUTHENTICATION_FAILED, K::SaslAuthenticationFailed),
            (FETCH_SESSION_ID_NOT_FOUND, K::FetchSessionIdNotFound),
            (UNKNOWN_TOPIC_ID, K::UnknownTopicId),
        ] {
            assert_eq!(ours, theirs.code(), "{theirs:?}");
        }
    }

    #[test]
    fn stream_errors_map_as_documented() {
        let s = || "x".to_string();
        let table = [
            (StreamError::UnknownTopic(s()), 3, 3),
            (StreamError::TopicDenied(s()), 29, 29),
            (StreamError::GroupDenied(s()), 30, 30),
            (StreamError::ClusterDenied(s()), 31, 31),
            (StreamError::OffsetOutOfRange(s()), 1, 1),
            (StreamError::CorruptBatch(s()), 2, 2),
            (StreamError::TopicExists(s()), 36, 36),
            (StreamError::InvalidTopic(s()), 17, 17),
            (StreamError::InvalidPartitions(s()), 37, 37),
            (StreamError::TooLarge(s()), 10, 10),
            (StreamError::Retriable(s()), 7, 7),
            (StreamError::NotLeader(s()), 6, 5),
            (StreamError::OutOfOrderSequence(s()), 45, 45),
            (StreamError::InvalidProducerEpoch(s()), 47, 47),
            (StreamError::Internal(s()), 56, -1),
        ];
        for (e, partition, topic) in table {
            assert_eq!(code(&e, Scope::Partition), partition, "{e:?}");
            assert_eq!(code(&e, Scope::Topic), topic, "{e:?}");
            let group = match e {
                StreamError::UnknownTopic(_) | StreamError::InvalidTopic(_) => 24,
                StreamError::Retriable(_) => 15,
                StreamError::NotLeader(_) => 16,
                _ => topic,
            };
            assert_eq!(code(&e, Scope::Group), group, "{e:?}");
            // Metadata: whatever passes is "no leader now, ask again".
            let metadata = match e {
                StreamError::Retriable(_) | StreamError::NotLeader(_) => 5,
                _ => topic,
            };
            assert_eq!(code(&e, Scope::Metadata), metadata, "{e:?}");
        }
    }
}
