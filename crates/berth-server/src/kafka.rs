//! The Kafka gateway's view of the streams service (`berth_kafka::Backend`
//! over `berth_streams::Streams`): topic names to streams, service errors
//! to Kafka's terms, and the cluster as Kafka brokers. No authorization
//! here: the service decides.
//!
//! Brokers are nodes (broker id = node id) and a topic's partitions are
//! led by the node leading the shard of the topic's stream; a group is
//! coordinated by the node leading the shard of the group's stream. Only
//! that node serves produce, fetch and the offsets of the partitions
//! (NotLeader on any other), so the high watermark, long polls and an
//! idempotent producer's sequence checks all happen where the appends are
//! committed. Metadata leaves out brokers the local Raft loop knows are
//! down (a node sharing a shard with this one, silent for the peer
//! timeout), names no leader on such a node, and counts such voters out of
//! the ISR; nodes this one shares no shard with are listed as the cluster
//! map has them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use berth_kafka::backend::{
    Appended, Backend, Broker, BrokerId, Committed, Fetched, GroupRef, OffsetSpec,
    PartitionOffsets, Placement, ProduceWait, ProducerId, ScramCredential, ScramMechanism,
    StreamError, TopicInfo, TopicRef,
};
use berth_meta::map::{NodeRecord, NodeState};
use berth_meta::Meta;
use berth_meta::{Code, Error};
use berth_raft::{NodeId, ShardId, ShardStatus};
use berth_security::principal::Principal;
use berth_streams::{
    authorize, AppendError, Refused, Right, StreamConfig, StreamRef, Streams, TopicRecord,
};
use bytes::Bytes;
use parking_lot::Mutex;

/// Where plain topic names live when the operator names no stream.
pub const DEFAULT_STREAM: &str = "/streams/default";
/// Partitions remembered for long polls, at most.
const KNOWN_MAX: usize = 100_000;
/// Groups whose stream's shard is remembered (for `coordinates`), at most.
const GROUP_SHARDS_MAX: usize = 100_000;
/// The node label reported as a broker's rack.
const RACK_LABEL: &str = "zone";

pub struct StreamsBackend {
    /// The streams, the cluster map and the topics resolved lately.
    topics: Topics,
    default_stream: String,
    /// Principals whose plain names resolve in another stream.
    principal_streams: HashMap<String, String>,
    /// Per topic, the signal that the last produce request submitted for it is
    /// queued: a request resolves its stream and topic (reads behind read barriers)
    /// concurrently with the requests before it, and queues its appends only once
    /// they have queued theirs, so pipelined requests keep their order.
    produce_order: Mutex<HashMap<TopicRef, tokio::sync::oneshot::Receiver<()>>>,
    /// The shard of each group's stream, as last looked up: whether this
    /// node still coordinates a group is whether it leads that shard.
    group_shards: Mutex<HashMap<GroupRef, ShardId>>,
}

impl StreamsBackend {
    /// `principal_streams`: per-principal overrides of `default_stream`.
    pub fn new(
        streams: Arc<Streams>,
        meta: Arc<Meta>,
        default_stream: String,
        principal_streams: HashMap<String, String>,
    ) -> StreamsBackend {
        StreamsBackend {
            topics: Topics {
                streams,
                meta,
                known: Arc::new(Mutex::new(HashMap::new())),
            },
            default_stream,
            principal_streams,
            produce_order: Mutex::new(HashMap::new()),
            group_shards: Mutex::new(HashMap::new()),
        }
    }

    /// Where the partitions of the streams in `shard` are served, as this
    /// node sees it now.
    fn placement(&self, view: &View, shard: ShardId) -> Placement {
        let map = self.topics.meta.map();
        let voters = map
            .shards
            .iter()
            .find(|s| s.id == shard)
            .map(|s| s.replicas.clone())
            .unwrap_or_default();
        let (leader, term) = match view.local.iter().find(|s| s.id == shard) {
            // A replica here: its leader and term.
            Some(st) => (st.leader, Some(st.term)),
            // None: the leader the cluster map records (no term known).
            None => (self.topics.meta.router().leader_of(shard), None),
        };
        placement(&voters, leader, term, &view.down)
    }

    /// The broker coordinating groups of the stream in `shard`: its
    /// leader, unless known down.
    fn coordinator(&self, shard: ShardId) -> Option<BrokerId> {
        let leader = self.topics.meta.router().leader_of(shard)?;
        if leader != self.topics.me() && View::of(&self.topics.meta).down.contains(&leader) {
            return None;
        }
        broker_id(leader)
    }

    /// The stream `p`'s plain topic and group names live in.
    fn default_for(&self, p: &Principal) -> &str {
        self.principal_streams
            .get(&p.name)
            .unwrap_or(&self.default_stream)
    }

    /// (stream path, name in it) of a topic or group name: a stream's
    /// Kafka name and `.`, `/path/stream:`, or nothing (the principal's
    /// default stream).
    fn locate(
        &self,
        p: &Principal,
        name: &str,
        what: &str,
    ) -> Result<(String, String), StreamError> {
        match named(name, |n| self.topics.streams.kafka_name_path(n)) {
            Some(found) => Ok(found),
            None => split_name(name, self.default_for(p), what),
        }
    }

    /// The name a client would use for topic `t` of the stream at `path`:
    /// plain in `p`'s default stream, `NAME.t` in a stream with a Kafka
    /// name, else `/path:t`.
    fn client_name(&self, p: &Principal, path: &str, t: &str) -> String {
        if path == self.default_for(p) {
            return t.to_string();
        }
        match self.topics.streams.kafka_names_of(path).first() {
            Some(n) => format!("{n}.{t}"),
            None => format!("{path}:{t}"),
        }
    }

    /// Every topic of the stream at `path` that `p` may see, or nothing
    /// when the stream is missing or hidden from `p`.
    async fn visible_topics(
        &self,
        p: &Principal,
        path: &str,
    ) -> Result<Option<(StreamRef, Vec<(String, TopicRecord)>)>, StreamError> {
        let s = match self.topics.streams.lookup(p, path).await {
            Ok(s) => s,
            Err(e) if is_hidden(&e) => return Ok(None),
            Err(e) => return Err(to_kafka(e, path)),
        };
        match self.topics.streams.topics(p, &s).await {
            Ok(t) => Ok(Some((s, t))),
            Err(e) if is_hidden(&e) => Ok(None),
            Err(e) => Err(to_kafka(e, path)),
        }
    }

    /// A group's stream, with the consume right it takes to use the group.
    async fn group_stream(&self, p: &Principal, g: &GroupRef) -> Result<StreamRef, StreamError> {
        self.topics
            .streams
            .stream(p, &g.stream, Right::Consume)
            .await
            .map_err(|e| group_error(e, g))
    }

    /// A topic's stream, with the topic right (create, delete, grow).
    async fn topic_stream(&self, p: &Principal, t: &TopicRef) -> Result<StreamRef, StreamError> {
        self.topics
            .streams
            .stream(p, &t.stream, Right::Topic)
            .await
            .map_err(|e| to_kafka(e, &t.topic))
    }
}

/// The streams and the cluster map, and how a topic is resolved and who leads it;
/// cloned into a produce request's wait, which resolves there (see
/// `StreamsBackend::produce_order`).
#[derive(Clone)]
struct Topics {
    streams: Arc<Streams>,
    meta: Arc<Meta>,
    /// Partitions recently read, so a long poll can wait on them without a
    /// principal (the fetch that precedes it authorized the reader).
    known: Arc<Mutex<HashMap<TopicRef, (StreamRef, TopicRecord)>>>,
}

impl Topics {
    fn me(&self) -> NodeId {
        self.meta.router().node_id()
    }

    /// Whether this node leads `shard` (its own replica is the leader).
    fn leads(&self, shard: ShardId) -> bool {
        self.meta.router().raft().leader(shard) == Some(self.me())
    }

    /// A passing failure of a call only the leader serves: NotLeader when
    /// this node does not lead the shard (or the shard is not known), so
    /// the client looks for the leader; still Retriable on the leader.
    fn on_leader(&self, shard: Option<ShardId>, e: StreamError) -> StreamError {
        match e {
            StreamError::Retriable(m) if shard.is_none_or(|s| !self.leads(s)) => {
                StreamError::NotLeader(m)
            }
            e => e,
        }
    }

    /// The stream and topic, with `right` checked on the stream, read behind one
    /// read barrier.
    async fn open(
        &self,
        p: &Principal,
        t: &TopicRef,
        right: Right,
    ) -> Result<(StreamRef, TopicRecord), StreamError> {
        let (s, topic) = self
            .streams
            .stream_topic(p, &t.stream, right, &t.topic)
            .await
            .map_err(|e| to_kafka(e, &t.topic))?;
        let topic =
            topic.ok_or_else(|| StreamError::UnknownTopic(format!("{}:{}", t.stream, t.topic)))?;
        let mut known = self.known.lock();
        if known.len() >= KNOWN_MAX {
            known.clear();
        }
        known.insert(t.clone(), (s.clone(), topic.clone()));
        Ok((s, topic))
    }

    /// [`Topics::open`] for the calls only the partition's leader serves (produce,
    /// fetch, offsets): NotLeader on any other node.
    async fn open_led(
        &self,
        p: &Principal,
        t: &TopicRef,
        right: Right,
    ) -> Result<(StreamRef, TopicRecord), StreamError> {
        let (s, topic) = self
            .open(p, t, right)
            .await
            .map_err(|e| self.on_leader(None, e))?;
        let shard = s.vol.shard_id;
        if !self.leads(shard) {
            let me = self.me();
            let leader = match self.meta.router().leader_of(shard) {
                Some(n) => format!("node {n}"),
                None => "no node yet".to_string(),
            };
            return Err(StreamError::NotLeader(format!(
                "{}:{} is led by {leader}, not node {me}",
                t.stream, t.topic
            )));
        }
        Ok((s, topic))
    }
}

/// What this node's Raft loop knows of the cluster now: its own replicas'
/// state and the nodes known to be down.
struct View {
    local: Vec<ShardStatus>,
    down: BTreeSet<NodeId>,
}

impl View {
    fn of(meta: &Meta) -> View {
        let raft = meta.router().raft();
        let local = raft.status();
        let replicas = local.iter().map(|s| s.membership.replicas());
        let down = known_down(raft.node_id(), replicas, &raft.alive_peers());
        View { local, down }
    }
}

/// The nodes known to be down: those holding replicas of this node's
/// shards (`replicas`, one list per shard; the Raft loop watches exactly
/// those) that it has not heard from within the peer timeout. Nodes
/// sharing no shard with this one are not known either way.
fn known_down(
    me: NodeId,
    replicas: impl IntoIterator<Item = Vec<NodeId>>,
    alive: &BTreeSet<NodeId>,
) -> BTreeSet<NodeId> {
    replicas
        .into_iter()
        .flatten()
        .filter(|n| *n != me && !alive.contains(n))
        .collect()
}

/// A node id as a Kafka broker id (ids beyond i32 are never handed out).
fn broker_id(n: NodeId) -> Option<BrokerId> {
    BrokerId::try_from(n).ok()
}

/// A shard's placement in Kafka's terms: the voters are the replicas, those
/// not known down the ISR, the others offline; the leader is named unless
/// known down; the epoch is the Raft term of a leader seen by a local
/// replica (Raft terms only grow, as Kafka's leader epochs), else -1.
fn placement(
    voters: &[NodeId],
    leader: Option<NodeId>,
    term: Option<u64>,
    down: &BTreeSet<NodeId>,
) -> Placement {
    let ids = |keep: &dyn Fn(&NodeId) -> bool| -> Vec<BrokerId> {
        voters
            .iter()
            .filter(|n| keep(n))
            .filter_map(|n| broker_id(*n))
            .collect()
    };
    let leader = leader.filter(|l| !down.contains(l)).and_then(broker_id);
    Placement {
        leader,
        leader_epoch: match (leader, term) {
            (Some(_), Some(t)) => i32::try_from(t).unwrap_or(i32::MAX),
            _ => -1,
        },
        replicas: ids(&|_| true),
        isr: ids(&|n| !down.contains(n)),
        offline: ids(&|n| down.contains(n)),
    }
}

/// The brokers of the cluster: every node that serves (up or draining)
/// with a Kafka address, except those known down. Joining nodes do not
/// serve Kafka clients yet; decommissioned ones never again.
fn brokers_of(nodes: &[NodeRecord], down: &BTreeSet<NodeId>) -> Vec<Broker> {
    nodes
        .iter()
        .filter(|n| matches!(n.state, NodeState::Up | NodeState::Draining))
        .filter(|n| !down.contains(&n.id))
        .filter_map(|n| {
            let (host, port) = split_host_port(&n.kafka_addr)?;
            Some(Broker {
                id: broker_id(n.id)?,
                host,
                port,
                rack: n.labels.get(RACK_LABEL).cloned(),
            })
        })
        .collect()
}

/// `HOST:PORT` (`[V6]:PORT`) as recorded in the cluster map: the host
/// without brackets, as Kafka's Metadata carries it.
fn split_host_port(addr: &str) -> Option<(String, i32)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), i32::from(port)))
}

/// A legal Kafka name `NAME.rest` whose `NAME` is a stream's Kafka name
/// (`lookup`): (that stream's path, rest).
fn named(name: &str, lookup: impl Fn(&str) -> Option<String>) -> Option<(String, String)> {
    if name.contains(':') {
        return None;
    }
    let (prefix, rest) = name.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    Some((lookup(prefix)?, rest.to_string()))
}

/// Splits `/path/stream:name` into (stream, name); a plain name lives in
/// `default`.
fn split_name(name: &str, default: &str, what: &str) -> Result<(String, String), StreamError> {
    match name.rsplit_once(':') {
        Some((stream, n)) if stream.starts_with('/') && !n.is_empty() => {
            Ok((stream.to_string(), n.to_string()))
        }
        Some(_) => Err(StreamError::InvalidTopic(format!(
            "{name:?}: a stream {what} is /path/to/stream:{what}"
        ))),
        None => Ok((default.to_string(), name.to_string())),
    }
}

/// A topic's full name, `/path/stream:topic`, as committed offsets record it.
fn full_name(t: &TopicRef) -> String {
    format!("{}:{}", t.stream, t.topic)
}

fn partition(p: i32) -> Result<u32, StreamError> {
    u32::try_from(p).map_err(|_| StreamError::UnknownTopic(format!("partition {p}")))
}

/// Service errors in Kafka's terms (`what` names the topic in messages).
fn to_kafka(e: Error, what: &str) -> StreamError {
    let m = format!("{what}: {}", e.message);
    match e.code {
        Code::NotFound | Code::NotDir => StreamError::UnknownTopic(m),
        Code::Access | Code::Perm | Code::Auth => StreamError::TopicDenied(m),
        Code::Range => StreamError::OffsetOutOfRange(m),
        Code::BadMessage => StreamError::CorruptBatch(m),
        Code::Exists => StreamError::TopicExists(m),
        Code::Invalid | Code::NameTooLong => StreamError::InvalidTopic(m),
        Code::TooBig | Code::Quota => StreamError::TooLarge(m),
        Code::Again => StreamError::Retriable(m),
        _ => StreamError::Internal(m),
    }
}

/// An append's answer in Kafka's terms.
fn appended(a: berth_streams::Appended) -> Appended {
    Appended {
        base_offset: a.base_offset,
        log_start: a.log_start,
        log_append_time_ms: -1,
    }
}

/// An append's failure in Kafka's terms.
fn append_error(e: AppendError, topic: &str) -> StreamError {
    match e {
        AppendError::Refused(Refused::OutOfOrder(m)) => StreamError::OutOfOrderSequence(m),
        AppendError::Refused(Refused::StaleEpoch(m)) => StreamError::InvalidProducerEpoch(m),
        AppendError::Failed(e) => to_kafka(e, topic),
    }
}

/// A group's stream could not be used: denied means
/// GROUP_AUTHORIZATION_FAILED; a missing stream is named, with the fix, as
/// a passing failure (COORDINATOR_NOT_AVAILABLE for the group APIs): the
/// client keeps asking and succeeds once the stream exists.
fn group_error(e: Error, g: &GroupRef) -> StreamError {
    match e.code {
        Code::Access | Code::Perm | Code::Auth => {
            StreamError::GroupDenied(format!("{}:{}: {}", g.stream, g.group, e.message))
        }
        Code::NotFound | Code::NotDir => StreamError::Retriable(format!(
            "group {:?} lives in the stream {}, which does not exist ({}): create it \
             (berth stream create {}) or name the group's stream (/path/stream:{})",
            g.group, g.stream, e.message, g.stream, g.group
        )),
        _ => to_kafka(e, &g.group),
    }
}

/// Errors that hide a stream from a listing instead of failing it.
fn is_hidden(e: &Error) -> bool {
    matches!(
        e.code,
        Code::NotFound | Code::NotDir | Code::Invalid | Code::Access | Code::Perm
    )
}

fn info(name: &str, t: &TopicRecord, c: &StreamConfig, placement: Placement) -> TopicInfo {
    TopicInfo {
        name: name.to_string(),
        id: t.uuid,
        partitions: t.partitions,
        placement,
        configs: vec![
            ("retention.ms".into(), c.retention_ms.to_string()),
            ("retention.bytes".into(), c.retention_bytes.to_string()),
            (
                "cleanup.policy".into(),
                if c.compact { "compact" } else { "delete" }.into(),
            ),
            (
                "delete.retention.ms".into(),
                c.delete_retention_ms.to_string(),
            ),
            ("message.timestamp.type".into(), "CreateTime".into()),
        ],
    }
}

impl Backend for StreamsBackend {
    type Principal = Principal;

    fn brokers(&self) -> Vec<Broker> {
        brokers_of(
            &self.topics.meta.map().nodes,
            &View::of(&self.topics.meta).down,
        )
    }

    async fn authenticate_plain(&self, user: &str, password: &str) -> Result<Principal, String> {
        // A ticket (checked locally) first, then a user's password.
        match self.topics.streams.authenticate(password) {
            Ok(p) => Ok(p),
            Err(ticket_err) => self
                .topics
                .streams
                .login(user, password)
                .await
                .map_err(|e| {
                    format!("user {user:?}: not a valid ticket ({ticket_err}) nor password ({e})")
                }),
        }
    }

    fn resolve(&self, p: &Principal, name: &str) -> Result<TopicRef, StreamError> {
        let (stream, topic) = self.locate(p, name, "topic")?;
        Ok(TopicRef { stream, topic })
    }

    async fn topic(
        &self,
        p: &Principal,
        t: &TopicRef,
        name: &str,
        auto_create: bool,
    ) -> Result<TopicInfo, StreamError> {
        let s = self
            .topics
            .streams
            .lookup(p, &t.stream)
            .await
            .map_err(|e| to_kafka(e, name))?;
        // Describing a topic needs one of the stream's data rights.
        authorize(p, &s, Right::Consume)
            .or_else(|_| authorize(p, &s, Right::Produce))
            .map_err(|e| to_kafka(e, name))?;
        let topic = self
            .topics
            .streams
            .topic_or_create(p, &s, &t.topic, auto_create)
            .await
            .map_err(|e| to_kafka(e, name))?;
        let placement = self.placement(&View::of(&self.topics.meta), s.vol.shard_id);
        Ok(info(name, &topic, &s.config, placement))
    }

    async fn default_topics(&self, p: &Principal) -> Result<Vec<TopicInfo>, StreamError> {
        // Every name the principal could use: plain and full names in its
        // default stream, `NAME.topic` and full names in every stream with
        // a Kafka name (streams without one are not enumerated: a full name
        // still reaches them).
        let default = self.default_for(p).to_string();
        let mut names = self.topics.streams.kafka_names();
        let mut paths: Vec<String> = vec![default.clone()];
        for (_, path) in &names {
            if !paths.contains(path) {
                paths.push(path.clone());
            }
        }
        names.sort();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let view = View::of(&self.topics.meta);
        for path in &paths {
            let Some((s, topics)) = self.visible_topics(p, path).await? else {
                continue;
            };
            let placement = self.placement(&view, s.vol.shard_id);
            for (topic, t) in &topics {
                let mut forms = Vec::new();
                if *path == default {
                    forms.push(topic.clone());
                }
                for (n, _) in names.iter().filter(|(_, np)| np == path) {
                    forms.push(format!("{n}.{topic}"));
                }
                forms.push(format!("{path}:{topic}"));
                for name in forms {
                    if seen.insert(name.clone()) {
                        out.push(info(&name, t, &s.config, placement.clone()));
                    }
                }
            }
        }
        Ok(out)
    }

    async fn create_topic(
        &self,
        p: &Principal,
        t: &TopicRef,
        name: &str,
        partitions: i32,
        configs: Vec<(String, String)>,
    ) -> Result<TopicInfo, StreamError> {
        if !configs.is_empty() {
            tracing::debug!(
                topic = name,
                "topic configs ignored: retention and compaction are the stream's settings"
            );
        }
        let s = self
            .topics
            .streams
            .stream(p, &t.stream, Right::Topic)
            .await
            .map_err(|e| to_kafka(e, name))?;
        let count = u32::try_from(partitions.max(0))
            .map_err(|_| StreamError::InvalidPartitions(partitions.to_string()))?;
        let topic = self
            .topics
            .streams
            .create_topic(p, &s, &t.topic, count)
            .await
            .map_err(|e| match e.code {
                Code::Invalid if e.message.starts_with("partitions") => {
                    StreamError::InvalidPartitions(e.message)
                }
                _ => to_kafka(e, name),
            })?;
        let placement = self.placement(&View::of(&self.topics.meta), s.vol.shard_id);
        Ok(info(name, &topic, &s.config, placement))
    }

    async fn delete_topic(&self, p: &Principal, t: &TopicRef) -> Result<(), StreamError> {
        let s = self.topic_stream(p, t).await?;
        self.topics.known.lock().remove(t);
        self.topics
            .streams
            .delete_topic(p, &s, &t.topic)
            .await
            .map_err(|e| to_kafka(e, &t.topic))
    }

    async fn add_partitions(
        &self,
        p: &Principal,
        t: &TopicRef,
        count: u32,
    ) -> Result<(), StreamError> {
        let s = self.topic_stream(p, t).await?;
        self.topics.known.lock().remove(t);
        self.topics
            .streams
            .add_partitions(p, &s, &t.topic, count)
            .await
            .map(drop)
            .map_err(|e| match e.code {
                Code::Invalid => StreamError::InvalidPartitions(e.message),
                _ => to_kafka(e, &t.topic),
            })
    }

    async fn produce(
        &self,
        p: &Principal,
        t: &TopicRef,
        part: i32,
        records: Bytes,
    ) -> Result<Appended, StreamError> {
        let part = partition(part)?;
        let (s, topic) = self.topics.open_led(p, t, Right::Produce).await?;
        self.topics
            .streams
            .append(p, &s, &t.topic, &topic, part, records)
            .await
            .map(appended)
            .map_err(|e| {
                self.topics
                    .on_leader(Some(s.vol.shard_id), append_error(e, &t.topic))
            })
    }

    async fn produce_partitions(
        &self,
        p: &Principal,
        t: &TopicRef,
        parts: Vec<(i32, Bytes)>,
    ) -> ProduceWait {
        // The first step only takes this request's place in the topic's order; the
        // stream and topic are resolved (behind read barriers) in the wait, while the
        // connection reads its next request, and the appends are queued once every
        // request before this one has queued its own.
        let (queued, queued_rx) = tokio::sync::oneshot::channel::<()>();
        let before = {
            let mut order = self.produce_order.lock();
            if order.len() >= KNOWN_MAX {
                order.clear();
            }
            order.insert(t.clone(), queued_rx)
        };
        let topics = self.topics.clone();
        let (p, t) = (p.clone(), t.clone());
        Box::pin(async move {
            let n = parts.len();
            let resolved = topics.open_led(&p, &t, Right::Produce).await;
            if let Some(before) = before {
                let _ = before.await; // queued, or failed before queueing
            }
            let (s, topic) = match resolved {
                Ok(x) => x,
                Err(e) => return (0..n).map(|_| Err(e.clone())).collect(),
            };
            // Negative partition numbers fail alone; the rest go in one append.
            let mut out: Vec<Option<Result<Appended, StreamError>>> = vec![None; n];
            let mut at = Vec::new();
            let mut valid = Vec::new();
            for (i, (part, records)) in parts.into_iter().enumerate() {
                match partition(part) {
                    Ok(part) => {
                        at.push(i);
                        valid.push((part, records));
                    }
                    Err(e) => out[i] = Some(Err(e)),
                }
            }
            let wait = topics
                .streams
                .append_submit(&p, &s, &t.topic, &topic, valid);
            // Queued (append_submit queues before it returns): the next may queue.
            drop(queued);
            // Whether this node still leads when an append failed in passing
            // (leadership moved while it committed): NotLeader if not.
            let raft = topics.meta.router().raft().clone();
            let (me, shard) = (raft.node_id(), s.vol.shard_id);
            for (i, r) in at.into_iter().zip(wait.await) {
                out[i] = Some(
                    r.map(appended)
                        .map_err(|e| match append_error(e, &t.topic) {
                            StreamError::Retriable(m) if raft.leader(shard) != Some(me) => {
                                StreamError::NotLeader(m)
                            }
                            e => e,
                        }),
                );
            }
            out.into_iter()
                .map(|r| r.unwrap_or_else(|| Err(StreamError::Internal("no result".into()))))
                .collect()
        })
    }

    async fn fetch(
        &self,
        p: &Principal,
        t: &TopicRef,
        part: i32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Fetched, StreamError> {
        let part = partition(part)?;
        let (s, topic) = self.topics.open_led(p, t, Right::Consume).await?;
        let (state, batches) = self
            .topics
            .streams
            .read(p, &s, &topic, part, offset, max_bytes)
            .await
            .map_err(|e| {
                self.topics
                    .on_leader(Some(s.vol.shard_id), to_kafka(e, &t.topic))
            })?;
        Ok(Fetched {
            offsets: PartitionOffsets {
                log_start: state.log_start,
                high_watermark: state.next,
            },
            batches,
        })
    }

    async fn wait(&self, t: &TopicRef, part: i32, offset: i64, max_wait: Duration) {
        let found = self.topics.known.lock().get(t).cloned();
        match (found, u32::try_from(part)) {
            (Some((s, topic)), Ok(part)) => {
                self.topics
                    .streams
                    .wait(&s, &topic, part, offset, max_wait)
                    .await
            }
            _ => tokio::time::sleep(max_wait).await,
        }
    }

    async fn list_offset(
        &self,
        p: &Principal,
        t: &TopicRef,
        part: i32,
        spec: OffsetSpec,
    ) -> Result<i64, StreamError> {
        let part = partition(part)?;
        let (s, topic) = self.topics.open_led(p, t, Right::Consume).await?;
        let r = match spec {
            OffsetSpec::Earliest => self
                .topics
                .streams
                .offsets(p, &s, &topic, part)
                .await
                .map(|o| o.log_start),
            OffsetSpec::Latest => self
                .topics
                .streams
                .offsets(p, &s, &topic, part)
                .await
                .map(|o| o.next),
            OffsetSpec::Timestamp(ts) => {
                self.topics
                    .streams
                    .offset_for_time(p, &s, &topic, part, ts)
                    .await
            }
        };
        r.map_err(|e| {
            self.topics
                .on_leader(Some(s.vol.shard_id), to_kafka(e, &t.topic))
        })
    }

    fn resolve_group(&self, p: &Principal, name: &str) -> Result<GroupRef, StreamError> {
        let (stream, group) = self.locate(p, name, "group")?;
        Ok(GroupRef { stream, group })
    }

    async fn authorize_group(&self, p: &Principal, g: &GroupRef) -> Result<BrokerId, StreamError> {
        let shard = self.group_stream(p, g).await?.vol.shard_id;
        {
            let mut shards = self.group_shards.lock();
            if shards.len() >= GROUP_SHARDS_MAX && !shards.contains_key(g) {
                shards.clear();
            }
            shards.insert(g.clone(), shard);
        }
        self.coordinator(shard).ok_or_else(|| {
            StreamError::Retriable(format!(
                "group {}:{}: its stream's shard {shard} has no leader now; retry",
                g.stream, g.group
            ))
        })
    }

    fn coordinates(&self, g: &GroupRef) -> bool {
        let shard = self.group_shards.lock().get(g).copied();
        shard.is_none_or(|s| self.topics.leads(s))
    }

    async fn commit_offset(
        &self,
        p: &Principal,
        g: &GroupRef,
        t: &TopicRef,
        part: i32,
        c: Committed,
    ) -> Result<(), StreamError> {
        let part = partition(part)?;
        let gs = self.group_stream(p, g).await?;
        // Committing for a topic needs its consume right too.
        let (_, topic) = self.topics.open(p, t, Right::Consume).await?;
        if part >= topic.partitions {
            return Err(StreamError::UnknownTopic(format!(
                "{}: partition {part}",
                full_name(t)
            )));
        }
        self.topics
            .streams
            .commit_offset(
                p,
                &gs,
                &g.group,
                (&full_name(t), part),
                c.offset,
                &c.metadata,
            )
            .await
            .map_err(|e| to_kafka(e, &t.topic))
    }

    async fn committed_offset(
        &self,
        p: &Principal,
        g: &GroupRef,
        t: &TopicRef,
        part: i32,
    ) -> Result<Option<Committed>, StreamError> {
        let part = partition(part)?;
        let gs = self.group_stream(p, g).await?;
        self.topics.open(p, t, Right::Consume).await?;
        let c = self
            .topics
            .streams
            .committed(p, &gs, &g.group, &full_name(t), part)
            .await
            .map_err(|e| to_kafka(e, &t.topic))?;
        Ok(c.map(|c| Committed {
            offset: c.offset,
            metadata: c.metadata,
        }))
    }

    async fn group_offsets(
        &self,
        p: &Principal,
        g: &GroupRef,
    ) -> Result<Vec<(String, i32, Committed)>, StreamError> {
        let gs = self.group_stream(p, g).await?;
        let all = self
            .topics
            .streams
            .group_offsets(p, &gs, &g.group)
            .await
            .map_err(|e| group_error(e, g))?;
        Ok(all
            .into_iter()
            .filter_map(|(topic, part, c)| {
                // The name a client uses: plain for the default stream,
                // the legal name where the stream has one.
                let name = match topic.rsplit_once(':') {
                    Some((path, t)) => self.client_name(p, path, t),
                    None => topic,
                };
                let part = i32::try_from(part).ok()?;
                Some((
                    name,
                    part,
                    Committed {
                        offset: c.offset,
                        metadata: c.metadata,
                    },
                ))
            })
            .collect())
    }

    async fn init_producer_id(&self, _p: &Principal) -> Result<ProducerId, StreamError> {
        Ok(ProducerId {
            id: self.topics.streams.new_producer_id(),
            epoch: 0,
        })
    }

    async fn scram_credential(&self, user: &str, m: ScramMechanism) -> Option<ScramCredential> {
        crate::kafka_sasl::scram_credential(&self.topics.meta, user, m).await
    }

    async fn scram_principal(&self, user: &str) -> Result<Principal, String> {
        crate::kafka_sasl::scram_principal(&self.topics.meta, user).await
    }

    async fn authenticate_token(&self, token: &str) -> Result<Principal, String> {
        crate::kafka_sasl::authenticate_token(&self.topics.meta, token)
    }

    async fn offsets(
        &self,
        p: &Principal,
        t: &TopicRef,
        part: i32,
    ) -> Result<PartitionOffsets, StreamError> {
        let part = partition(part)?;
        let (s, topic) = self.topics.open_led(p, t, Right::Consume).await?;
        let o = self
            .topics
            .streams
            .offsets(p, &s, &topic, part)
            .await
            .map_err(|e| {
                self.topics
                    .on_leader(Some(s.vol.shard_id), to_kafka(e, &t.topic))
            })?;
        Ok(PartitionOffsets {
            log_start: o.log_start,
            high_watermark: o.next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_stream_and_topic() {
        let d = "/streams/default";
        let ok = |n: &str| split_name(n, d, "topic").unwrap();
        assert_eq!(ok("clicks"), (d.to_string(), "clicks".to_string()));
        assert_eq!(ok("/apps/e:clicks"), ("/apps/e".into(), "clicks".into()));
        // The last colon splits: stream paths may hold colons.
        assert_eq!(ok("/a:b/e:c"), ("/a:b/e".into(), "c".into()));
        for bad in ["apps/e:clicks", "/apps/e:", ":x"] {
            assert!(matches!(
                split_name(bad, d, "topic"),
                Err(StreamError::InvalidTopic(_))
            ));
        }
    }

    #[test]
    fn legal_names_resolve_through_kafka_names() {
        let names = |n: &str| (n == "events").then(|| "/apps/events".to_string());
        assert_eq!(
            named("events.clicks", names),
            Some(("/apps/events".into(), "clicks".into()))
        );
        // The first dot splits: topic names may hold dots.
        assert_eq!(
            named("events.a.b", names),
            Some(("/apps/events".into(), "a.b".into()))
        );
        // Unknown prefixes, no topic, and full names are not Kafka names.
        for plain in [
            "other.clicks",
            "events.",
            "events",
            "/apps/events:x.y",
            "clicks",
        ] {
            assert_eq!(named(plain, names), None, "{plain}");
        }
    }

    #[test]
    fn a_missing_group_stream_is_named_and_passing() {
        let g = GroupRef {
            stream: "/apps/erin".into(),
            group: "my-app".into(),
        };
        match group_error(Error::new(Code::NotFound, "no such entry"), &g) {
            StreamError::Retriable(m) => {
                assert!(m.contains("/apps/erin, which does not exist"), "{m}");
                assert!(m.contains("berth stream create /apps/erin"), "{m}");
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            group_error(Error::new(Code::Access, "x"), &g),
            StreamError::GroupDenied(_)
        ));
    }

    fn node(id: NodeId, kafka: &str, state: NodeState, zone: Option<&str>) -> NodeRecord {
        NodeRecord {
            id,
            native_addr: format!("10.0.0.{id}:5660"),
            admin_addr: format!("10.0.0.{id}:8443"),
            advertise: vec![format!("10.0.0.{id}")],
            started_at: 0,
            kafka_addr: kafka.to_string(),
            labels: zone
                .map(|z| [(RACK_LABEL.to_string(), z.to_string())].into())
                .unwrap_or_default(),
            state,
            mongo_addr: String::new(),
        }
    }

    #[test]
    fn down_means_a_silent_replica_of_a_shared_shard() {
        let alive: BTreeSet<NodeId> = [2].into();
        // Node 1's shards: one on 1, 2, 3; one on 1, 4 (learner 5).
        let down = known_down(1, [vec![1, 2, 3], vec![1, 4, 5]], &alive);
        assert_eq!(down, [3, 4, 5].into(), "never itself, never the heard");
        // Node 6 shares no shard: not known either way.
        assert!(!down.contains(&6));
        assert!(known_down(1, [vec![1]], &BTreeSet::new()).is_empty());
    }

    #[test]
    fn placement_is_the_shards_voters_and_its_live_leader() {
        let none = BTreeSet::new();
        let p = placement(&[1, 2, 3], Some(2), Some(7), &none);
        assert_eq!(
            p,
            Placement {
                leader: Some(2),
                leader_epoch: 7,
                replicas: vec![1, 2, 3],
                isr: vec![1, 2, 3],
                offline: vec![],
            }
        );
        // A leader known down is no leader; down voters leave the ISR.
        let down: BTreeSet<NodeId> = [2].into();
        let p = placement(&[1, 2, 3], Some(2), Some(7), &down);
        assert_eq!((p.leader, p.leader_epoch), (None, -1));
        assert_eq!((p.isr, p.offline), (vec![1, 3], vec![2]));
        assert_eq!(p.replicas, vec![1, 2, 3]);
        // The leader from the cluster map's hint: no epoch known.
        let p = placement(&[1, 2, 3], Some(3), None, &none);
        assert_eq!((p.leader, p.leader_epoch), (Some(3), -1));
        // No leader (an election).
        let p = placement(&[1, 2, 3], None, Some(8), &none);
        assert_eq!((p.leader, p.leader_epoch), (None, -1));
        // Terms beyond i32 saturate; ids beyond i32 are never named.
        let p = placement(&[1, u64::MAX], Some(1), Some(u64::MAX), &none);
        assert_eq!((p.leader_epoch, p.replicas), (i32::MAX, vec![1]));
    }

    #[test]
    fn brokers_are_serving_nodes_with_a_kafka_address() {
        let nodes = [
            node(1, "10.0.0.1:9092", NodeState::Up, Some("a")),
            node(2, "[fd00::2]:9093", NodeState::Draining, None),
            node(3, "10.0.0.3:9092", NodeState::Joining, None),
            node(4, "10.0.0.4:9092", NodeState::Decommissioned, None),
            node(5, "", NodeState::Up, None),
            node(6, "10.0.0.6:9092", NodeState::Up, None),
            node(7, "no-port", NodeState::Up, None),
        ];
        let down: BTreeSet<NodeId> = [6].into();
        let got: Vec<(BrokerId, String, i32, Option<String>)> = brokers_of(&nodes, &down)
            .into_iter()
            .map(|b| (b.id, b.host, b.port, b.rack))
            .collect();
        assert_eq!(
            got,
            [
                (1, "10.0.0.1".to_string(), 9092, Some("a".to_string())),
                (2, "fd00::2".to_string(), 9093, None),
            ]
        );
    }

    #[test]
    fn kafka_addresses_split_into_host_and_port() {
        assert_eq!(
            split_host_port("h.example:9092"),
            Some(("h.example".into(), 9092))
        );
        assert_eq!(split_host_port("[::1]:19092"), Some(("::1".into(), 19092)));
        for bad in ["", "h", "h:", ":9092", "h:70000", "h:x"] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn errors_map_to_kafka_terms() {
        let e = |c| to_kafka(Error::new(c, "x"), "t");
        assert!(matches!(e(Code::NotFound), StreamError::UnknownTopic(_)));
        assert!(matches!(e(Code::Access), StreamError::TopicDenied(_)));
        assert!(matches!(e(Code::Range), StreamError::OffsetOutOfRange(_)));
        assert!(matches!(e(Code::BadMessage), StreamError::CorruptBatch(_)));
        assert!(matches!(e(Code::Again), StreamError::Retriable(_)));
        assert!(matches!(e(Code::Io), StreamError::Internal(_)));
    }
}
