//! What the Kafka gateway needs from the streams service. The gateway only
//! translates the wire protocol into these calls and back; it holds no data
//! and decides no access itself: every call carries the authenticated
//! principal and the backend answers with an [`StreamError`] that the
//! gateway maps to Kafka's error codes.

use std::future::Future;
use std::time::Duration;

// SCRAM credentials and mechanisms are berth-security's (one definition).
pub use berth_security::scram::{Credential as ScramCredential, Mechanism as ScramMechanism};
use bytes::Bytes;

/// The wait for a queued produce's results (see
/// [`Backend::produce_partitions`]).
pub type ProduceWait =
    std::pin::Pin<Box<dyn Future<Output = Vec<Result<Appended, StreamError>>> + Send + 'static>>;

/// Where a topic lives: the stream's namespace path and the topic's name in
/// it. The Kafka topic name `/apps/events:clicks` is
/// `{ stream: "/apps/events", topic: "clicks" }`; a plain name `clicks` is
/// resolved by the backend ([`Backend::resolve`]) in the principal's default
/// stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicRef {
    pub stream: String,
    pub topic: String,
}

/// A broker id. For Berth, a node id.
pub type BrokerId = i32;

/// A broker as Metadata lists it: a node of the cluster and where Kafka
/// clients reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub id: BrokerId,
    pub host: String,
    pub port: i32,
    /// Kafka's rack (for Berth, the node's `zone` label), if any.
    pub rack: Option<String>,
}

/// Who serves a topic's partitions, as Metadata reports it. All partitions
/// of a topic share one placement: a Berth topic lives in its stream, and
/// a stream in one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The broker leading the partitions: Produce, Fetch and ListOffsets
    /// are served there. `None` while there is none the clients could
    /// reach (an election, a leader known down): LEADER_NOT_AVAILABLE, and
    /// clients ask again.
    pub leader: Option<BrokerId>,
    /// Kafka's leader epoch: grows whenever leadership moves (for Berth,
    /// the shard's Raft term); -1 when unknown.
    pub leader_epoch: i32,
    /// Every replica.
    pub replicas: Vec<BrokerId>,
    /// The replicas in sync (not known to be down).
    pub isr: Vec<BrokerId>,
    /// Replicas known to be down.
    pub offline: Vec<BrokerId>,
}

impl Placement {
    /// One broker holding and leading everything.
    pub fn single(id: BrokerId) -> Placement {
        Placement {
            leader: Some(id),
            leader_epoch: 0,
            replicas: vec![id],
            isr: vec![id],
            offline: vec![],
        }
    }
}

/// A topic as Metadata and DescribeConfigs report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// The name clients use (as they asked for it).
    pub name: String,
    /// Stable 16-byte id (Kafka's topic UUID).
    pub id: [u8; 16],
    pub partitions: u32,
    /// Topic configs as Kafka names them (`retention.ms`, `cleanup.policy`, ...).
    pub configs: Vec<(String, String)>,
    /// Who serves its partitions.
    pub placement: Placement,
}

/// Offsets of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionOffsets {
    /// First offset still stored (log start).
    pub log_start: i64,
    /// Next offset to be written (log end = high watermark: only what is
    /// durable on a majority is ever visible).
    pub high_watermark: i64,
}

/// Answer to a produce of one partition's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset given to the first record of the first batch.
    pub base_offset: i64,
    pub log_start: i64,
    /// The broker's append time in ms when the topic uses LogAppendTime,
    /// else -1.
    pub log_append_time_ms: i64,
}

/// Answer to a fetch of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fetched {
    pub offsets: PartitionOffsets,
    /// Whole record batches (v2 bytes as stored), the first one holding the
    /// requested offset; empty when there is nothing at or after it yet.
    pub batches: Vec<Bytes>,
}

/// Where a consumer group lives: groups are named like topics. The group
/// `/apps/events:billing` lives in stream `/apps/events`; a plain name
/// `billing` in the principal's default stream. Joining it and committing
/// or fetching its offsets need the consume right on that stream
/// (GROUP_AUTHORIZATION_FAILED otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupRef {
    pub stream: String,
    pub group: String,
}

/// A committed offset of a group for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    /// The client's metadata string ("" when none).
    pub metadata: String,
}

/// A producer id and epoch handed out by InitProducerId.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerId {
    pub id: i64,
    pub epoch: i16,
}

/// Which offset ListOffsets asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// The first offset whose record timestamp is >= this (ms).
    Timestamp(i64),
}

/// Failures, in terms the gateway maps to Kafka error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// UNKNOWN_TOPIC_OR_PARTITION (3).
    #[error("unknown topic or partition: {0}")]
    UnknownTopic(String),
    /// TOPIC_AUTHORIZATION_FAILED (29).
    #[error("not authorized: {0}")]
    TopicDenied(String),
    /// GROUP_AUTHORIZATION_FAILED (30).
    #[error("not authorized for group: {0}")]
    GroupDenied(String),
    /// CLUSTER_AUTHORIZATION_FAILED (31).
    #[error("not authorized: {0}")]
    ClusterDenied(String),
    /// OFFSET_OUT_OF_RANGE (1).
    #[error("offset out of range: {0}")]
    OffsetOutOfRange(String),
    /// CORRUPT_MESSAGE (2): a batch that is not record batch v2 or fails its CRC.
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    /// TOPIC_ALREADY_EXISTS (36).
    #[error("topic exists: {0}")]
    TopicExists(String),
    /// INVALID_TOPIC_EXCEPTION (17).
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    /// INVALID_PARTITIONS (37).
    #[error("invalid partitions: {0}")]
    InvalidPartitions(String),
    /// MESSAGE_TOO_LARGE (10).
    #[error("too large: {0}")]
    TooLarge(String),
    /// OUT_OF_ORDER_SEQUENCE_NUMBER (45): an idempotent producer's batch
    /// does not follow its previous one.
    #[error("out of order sequence: {0}")]
    OutOfOrderSequence(String),
    /// INVALID_PRODUCER_EPOCH (47): a fenced (older) producer epoch.
    #[error("invalid producer epoch: {0}")]
    InvalidProducerEpoch(String),
    /// This broker does not lead what the request is about: the client
    /// refreshes its metadata and goes to the leader. NOT_LEADER_OR_FOLLOWER
    /// (6) for a partition, NOT_COORDINATOR (16) for a group,
    /// LEADER_NOT_AVAILABLE (5) in Metadata.
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// REQUEST_TIMED_OUT (7) (COORDINATOR_NOT_AVAILABLE (15) for a group,
    /// LEADER_NOT_AVAILABLE (5) in Metadata): passing, the client retries.
    #[error("temporarily unavailable: {0}")]
    Retriable(String),
    /// KAFKA_STORAGE_ERROR (56) / UNKNOWN_SERVER_ERROR (-1).
    #[error("server error: {0}")]
    Internal(String),
}

/// The streams service as the gateway sees it. `P` is the authenticated
/// principal, opaque to the gateway.
///
/// Several brokers: the backend says who leads what ([`TopicInfo::placement`],
/// [`Backend::authorize_group`]) and which brokers exist
/// ([`Backend::brokers`]); the calls that only the leader serves (produce,
/// fetch, list_offset, offsets) answer [`StreamError::NotLeader`] on any
/// other broker.
pub trait Backend: Send + Sync + 'static {
    type Principal: Clone + Send + Sync + 'static;

    /// The brokers Metadata lists: the nodes that serve Kafka clients, with
    /// the address clients reach them at. It may leave out brokers known to
    /// be down; the gateway adds itself when it is missing.
    fn brokers(&self) -> Vec<Broker>;

    /// SASL PLAIN: `password` may be a Berth ticket (any user name, or the
    /// ticket's principal) or a user's password. Err = authentication failed
    /// (the message is logged, not sent).
    fn authenticate_plain(
        &self,
        user: &str,
        password: &str,
    ) -> impl Future<Output = Result<Self::Principal, String>> + Send;

    /// Resolves a Kafka topic name (`/path/stream:topic` or a plain name in
    /// the principal's default stream).
    fn resolve(&self, p: &Self::Principal, name: &str) -> Result<TopicRef, StreamError>;

    /// The topic; when it does not exist and `auto_create` is set, creates
    /// it if the stream allows auto-creation (with the stream's default
    /// partition count).
    fn topic(
        &self,
        p: &Self::Principal,
        t: &TopicRef,
        name: &str,
        auto_create: bool,
    ) -> impl Future<Output = Result<TopicInfo, StreamError>> + Send;

    /// Every topic the principal may see, under every name it could use
    /// for it (Metadata with a null topic list): for Berth, plain and full
    /// names in its default stream, `NAME.topic` and full names in the
    /// streams that have a Kafka name.
    fn default_topics(
        &self,
        p: &Self::Principal,
    ) -> impl Future<Output = Result<Vec<TopicInfo>, StreamError>> + Send;

    /// CreateTopics (`partitions` <= 0: the stream's default).
    fn create_topic(
        &self,
        p: &Self::Principal,
        t: &TopicRef,
        name: &str,
        partitions: i32,
        configs: Vec<(String, String)>,
    ) -> impl Future<Output = Result<TopicInfo, StreamError>> + Send;

    /// DeleteTopics.
    fn delete_topic(
        &self,
        p: &Self::Principal,
        t: &TopicRef,
    ) -> impl Future<Output = Result<(), StreamError>> + Send;

    /// CreatePartitions: grows the topic to `count` partitions.
    fn add_partitions(
        &self,
        p: &Self::Principal,
        t: &TopicRef,
        count: u32,
    ) -> impl Future<Output = Result<(), StreamError>> + Send;

    /// Appends one partition's records (`records`: one or more record batch
    /// v2, as the producer sent them). Returns once durable (acks=all and
    /// acks=1 alike; acks=0 is the gateway not answering). Only on the
    /// partition's leader: [`StreamError::NotLeader`] elsewhere.
    fn produce(
        &self,
        p: &Self::Principal,
        t: &TopicRef,
        partition: i32,
        records: Bytes,
    ) -> impl Future<Output = Result<Appended, StreamError>> + Send;

    /// [`Backend::produce`] for several partitions of one topic (a produce
    /// request's), in two steps: the returned future finishes once the
    /// appends' order is fixed (queued, or bound to be queued after those of
    /// the calls before), and yields the wait for their results (one per
    /// input, in order, once durable). The gateway awaits the first step of
    /// one request before it reads the next, so pipelined produce requests
    /// keep their order while their fsyncs overlap (and, where the backend
    /// resolves in the wait, their resolutions too). A backend that can make them durable together (one
    /// transaction, one fsync) overrides this; by default each partition is
    /// produced on its own, concurrently, all in the first step.
    fn produce_partitions(
        &self,
        p: &Self::Principal,
        t: &TopicRef,
        parts: Vec<(i32, Bytes)>,
    ) -> impl Future<Output = ProduceWait> + Send {
        // The first step yields the (here already finished) second.
        #[allow(clippy::async_yields_async)]
        async move {
            let results = futures_util::future::join_all(
                parts
                    .into_iter()
                    .map(|(part, records)| self.produce(p, t, part, records)),
            )
            .await;
            Box::pin(std::future::ready(results)) as ProduceWait
        }
    }

    /// Batches from `offset` on, up to about `max_bytes` (at least one whole
    /// batch when any exists). Returns at once; long polling is
    /// [`Backend::wait`]. Only on the partition's leader (followers do not
    /// serve fetches): [`StreamError::NotLeader`] elsewhere.
    fn fetch(
        &self,
        p: &Self::Principal,
        t: &TopicRef,
        partition: i32,
        offset: i64,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Fetched, StreamError>> + Send;

    /// Resolves when the partition's high watermark passes `offset` or
    /// after `max_wait`, whichever is first (Fetch long poll).
    fn wait(
        &self,
        t: &TopicRef,
        partition: i32,
        offset: i64,
        max_wait: Duration,
    ) -> impl Future<Output = ()> + Send;

    /// ListOffsets (leader only, like fetch).
    fn list_offset(
        &self,
        p: &Self::Principal,
        t: &TopicRef,
        partition: i32,
        spec: OffsetSpec,
    ) -> impl Future<Output = Result<i64, StreamError>> + Send;

    /// Resolves a group name (`/path/stream:group` or a plain name in the
    /// default stream).
    fn resolve_group(&self, p: &Self::Principal, name: &str) -> Result<GroupRef, StreamError>;

    /// Whether `p` may use the group (join it, commit and fetch its
    /// offsets): Err(GroupDenied) when not. Ok is the broker coordinating
    /// it (FindCoordinator names it; the other group APIs are served only
    /// there, NOT_COORDINATOR elsewhere); Err(Retriable) while no broker
    /// does (COORDINATOR_NOT_AVAILABLE).
    fn authorize_group(
        &self,
        p: &Self::Principal,
        g: &GroupRef,
    ) -> impl Future<Output = Result<BrokerId, StreamError>> + Send;

    /// Whether this broker still coordinates `g`, as far as the backend
    /// knows without I/O (true when it cannot tell). Asked periodically for
    /// every group in the coordinator's memory: a group that moved away is
    /// dropped and its waiting members are told NOT_COORDINATOR, so they
    /// find the new coordinator and rejoin there.
    fn coordinates(&self, g: &GroupRef) -> bool;

    /// OffsetCommit for one partition: durable before it returns. Needs
    /// the group (see [`Backend::authorize_group`]) and the consume right
    /// on the topic.
    fn commit_offset(
        &self,
        p: &Self::Principal,
        g: &GroupRef,
        t: &TopicRef,
        partition: i32,
        c: Committed,
    ) -> impl Future<Output = Result<(), StreamError>> + Send;

    /// OffsetFetch for one partition: `None` when the group committed none.
    fn committed_offset(
        &self,
        p: &Self::Principal,
        g: &GroupRef,
        t: &TopicRef,
        partition: i32,
    ) -> impl Future<Output = Result<Option<Committed>, StreamError>> + Send;

    /// OffsetFetch with a null topic list: every committed offset of the
    /// group, with the topic names as clients use them.
    fn group_offsets(
        &self,
        p: &Self::Principal,
        g: &GroupRef,
    ) -> impl Future<Output = Result<Vec<(String, i32, Committed)>, StreamError>> + Send;

    /// InitProducerId for an idempotent producer (`transactional_id` is
    /// None; transactions are not supported). A fresh id, unique in the
    /// cluster, epoch 0.
    fn init_producer_id(
        &self,
        p: &Self::Principal,
    ) -> impl Future<Output = Result<ProducerId, StreamError>> + Send;

    /// SCRAM: the stored credential of `user` for `mechanism`, `None` when
    /// the user is unknown or has none (the exchange then fails the same
    /// way as a wrong password).
    fn scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> impl Future<Output = Option<ScramCredential>> + Send;

    /// The principal of `user` once its SCRAM proof checked out.
    fn scram_principal(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Self::Principal, String>> + Send;

    /// OAUTHBEARER: the token is a Berth ticket.
    fn authenticate_token(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<Self::Principal, String>> + Send;

    /// Partition offsets (leader only, like fetch).
    fn offsets(
        &self,
        p: &Self::Principal,
        t: &TopicRef,
        partition: i32,
    ) -> impl Future<Output = Result<PartitionOffsets, StreamError>> + Send;
}
