//! berth-streams: the streams service. A stream is a namespace entry
//! (`EntryKind::Stream`) holding topics; a topic has partitions; a
//! partition is an ordered log of Kafka record batches (format v2, stored
//! as the producer sent them, compression untouched, with the broker's base
//! offset written in).
//!
//! Layout (all in the stream's volume, so in its namespace shard):
//!
//! ```text
//! StreamState(vol, ino)                       StreamConfig (absent = defaults)
//! StreamState(vol, ino) · str(topic)          TopicRecord
//! StreamLog(vol, ino) · u64(topic id) · u64(partition)
//!                                             PartState: next offset, log start
//! StreamLog(vol, ino) · u64(topic id) · u64(partition) · u64(last offset)
//!                                             one batch, keyed by its LAST offset
//! ```
//!
//! Keying a batch by its last offset makes "the batch holding offset X" the
//! first key at or after X: a forward scan, even when a fetch starts in the
//! middle of a batch.
//!
//! Invariants:
//! - An append is part of one conditional transaction: the batches and the
//!   partition's new next offset commit together, conditional on the state
//!   read, so offsets are contiguous and never reused. Appends to a topic
//!   queue on this node and its committer takes everything queued into the
//!   next transaction (group commit), in queue order.
//! - Nothing is visible before it is durable: the high watermark is the
//!   committed next offset (the transaction returns once applied on a
//!   majority), so a consumer never reads what could still be lost.
//! - Every call authorizes its principal: the ticket scope, the volume's
//!   ACEs, then the stream's ACE for the right asked (produce, consume,
//!   topic, admin; unset = the stream's owner only; administrators always).
//!
//! Retention: [`Streams::retain`] deletes the oldest batches past the
//! stream's `retention_ms` / `retention_bytes`; a sweep
//! ([`Streams::spawn_retention`], [`Streams::sweep`]) visits every
//! partition of every stream in the volumes whose shard this node leads. Idempotent producers: the partition state
//! keeps each producer's last five batches, so a retried batch is answered
//! with its first offset and a gap is refused, in the append's own
//! transaction. Committed offsets of consumer groups live in the group's
//! stream (`StreamState(vol, ino) · u64(1) · str(group) · str(topic) ·
//! u64(partition)`).
//!
//! Compaction (streams created `--compact`): the same sweep keeps the last
//! record of every key (`compact`: the four codecs are decoded to read the
//! keys): a batch whose records are all superseded is deleted, one with
//! some superseded is rewritten with the rest (same offsets, its own codec),
//! and a tombstone that is the last of its key goes once its batch is older
//! than `delete_retention_ms` (default one day, as Kafka). Compacted topics
//! are not trimmed by age or size. Unkeyed records are kept (Kafka refuses
//! them in compacted topics; Berth accepts and keeps them).
//!
//! Not yet: transactions (their batches are refused).

pub mod batch;
pub mod compact;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_fs::access::{ace_allows, check_scope};
use berth_fs::{EntryInfo, EntryKind, Namespace};
use berth_meta::codec::{decode, encode};
use berth_meta::map::VolumeRecord;
use berth_meta::router::backoff;
use berth_meta::router::TX_RETRIES_MAX;
use berth_meta::{Code, Commit, Error, Tx};
use berth_security::principal::Principal;
use berth_security::scope::Access;
use berth_store::keys::{prefix_end, Key, Kind};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Retention when none is given: 7 days, as Kafka and MapR.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// How long tombstones stay in compacted topics when not set: 1 day, as
/// Kafka's `delete.retention.ms`.
pub const DEFAULT_DELETE_RETENTION_MS: i64 = 24 * 3600 * 1000;
/// Most partitions one topic may have.
pub const PARTITIONS_MAX: u32 = 10_000;
/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_MAX: usize = 249;
/// Most bytes one append may carry.
pub const APPEND_BYTES_MAX: usize = 16 << 20;
/// Batches read per fetch scan.
const FETCH_BATCHES_MAX: usize = 1024;

/// A stream's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// Partitions of a topic created without a count.
    pub default_partitions: u32,
    /// Records older than this may go (-1: forever).
    pub retention_ms: i64,
    /// A partition may shrink to this many bytes (-1: no limit).
    pub retention_bytes: i64,
    /// Topics keep the last record per key instead of deleting by age.
    pub compact: bool,
    /// Topics are created on first use (Metadata, Produce).
    pub autocreate: bool,
    pub produce_ace: Option<String>,
    pub consume_ace: Option<String>,
    pub topic_ace: Option<String>,
    pub admin_ace: Option<String>,
    /// Id for the next topic.
    pub next_topic: u64,
    /// In compacted topics, a tombstone (a record with a null value) that is
    /// the last of its key goes once its batch is older than this (-1:
    /// never); Kafka's `delete.retention.ms`.
    // Last: a config stored before it existed fails to decode as this
    // layout (it ends early) and is read as `StreamConfigV1`.
    pub delete_retention_ms: i64,
}

/// [`StreamConfig`] as stored before `delete_retention_ms` existed; read
/// when a stored config does not decode as the current one.
#[derive(Deserialize)]
struct StreamConfigV1 {
    default_partitions: u32,
    retention_ms: i64,
    retention_bytes: i64,
    compact: bool,
    autocreate: bool,
    produce_ace: Option<String>,
    consume_ace: Option<String>,
    topic_ace: Option<String>,
    admin_ace: Option<String>,
    next_topic: u64,
}

/// A stored stream config, in the current layout or the one before it.
fn decode_config(b: &[u8]) -> Result<StreamConfig, Error> {
    decode::<StreamConfig>(b, "stream config").or_else(|e| {
        let Ok(v1) = decode::<StreamConfigV1>(b, "stream config") else {
            return Err(e);
        };
        Ok(StreamConfig {
            default_partitions: v1.default_partitions,
            retention_ms: v1.retention_ms,
            retention_bytes: v1.retention_bytes,
            compact: v1.compact,
            delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
            autocreate: v1.autocreate,
            produce_ace: v1.produce_ace,
            consume_ace: v1.consume_ace,
            topic_ace: v1.topic_ace,
            admin_ace: v1.admin_ace,
            next_topic: v1.next_topic,
        })
    })
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            default_partitions: 1,
            retention_ms: DEFAULT_RETENTION_MS,
            retention_bytes: -1,
            compact: false,
            autocreate: true,
            produce_ace: None,
            consume_ace: None,
            topic_ace: None,
            admin_ace: None,
            next_topic: 1,
            delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
        }
    }
}

/// One topic of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub id: u64,
    /// Kafka's topic id.
    pub uuid: [u8; 16],
    pub partitions: u32,
    pub created_ms: i64,
}

/// The offsets of one partition, and what its idempotent producers wrote
/// last (so a retried batch is recognised in the same transaction that
/// would append it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PartState {
    /// Next offset to give (the log end; the high watermark).
    pub next: i64,
    /// First offset still stored.
    pub log_start: i64,
    /// Bytes of the batches stored (for size retention).
    pub bytes: u64,
    /// Most recently active first, at most [`PRODUCERS_MAX`].
    pub producers: Vec<ProducerState>,
}

/// One idempotent producer's recent batches in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    pub id: i64,
    pub epoch: i16,
    /// (first sequence, last sequence, base offset) of its last batches,
    /// oldest first, at most [`PRODUCER_BATCHES_KEPT`] (Kafka keeps five:
    /// a producer has at most five requests in flight).
    pub batches: Vec<(i32, i32, i64)>,
}

/// Producers remembered per partition.
pub const PRODUCERS_MAX: usize = 1000;
/// Batches remembered per producer and partition.
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// Why an idempotent producer's batch is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not the next sequence (OUT_OF_ORDER_SEQUENCE_NUMBER).
    OutOfOrder(String),
    /// An epoch older than the producer's current one (INVALID_PRODUCER_EPOCH).
    StaleEpoch(String),
}

/// What an append ran into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendError {
    Failed(Error),
    Refused(Refused),
}

impl AppendError {
    /// The service error, when the append failed as any call can.
    pub fn failed(&self) -> Option<&Error> {
        match self {
            AppendError::Failed(e) => Some(e),
            AppendError::Refused(_) => None,
        }
    }
}

impl From<Error> for AppendError {
    fn from(e: Error) -> Self {
        AppendError::Failed(e)
    }
}

/// What to do with one batch of an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seq {
    /// Append it.
    Append,
    /// Already written at this base offset: answer that, write nothing.
    Duplicate(i64),
}

/// Checks an idempotent batch against the producer's state (Kafka's
/// rules): a batch seen among the last five is a duplicate; otherwise its
/// first sequence must follow the last one (sequences wrap at i32::MAX);
/// a newer epoch starts over at any sequence; an older epoch is refused.
fn check_sequence(
    st: &PartState,
    pid: i64,
    epoch: i16,
    first: i32,
    last: i32,
) -> Result<Seq, Refused> {
    let Some(p) = st.producers.iter().find(|p| p.id == pid) else {
        return Ok(Seq::Append);
    };
    if epoch < p.epoch {
        return Err(Refused::StaleEpoch(format!(
            "producer {pid}: epoch {epoch} is older than {}",
            p.epoch
        )));
    }
    if epoch > p.epoch {
        return Ok(Seq::Append);
    }
    if let Some(&(_, _, base)) = p.batches.iter().find(|b| b.0 == first && b.1 == last) {
        return Ok(Seq::Duplicate(base));
    }
    let expected = match p.batches.last() {
        Some(&(_, l, _)) if l == i32::MAX => 0,
        Some(&(_, l, _)) => l + 1,
        None => return Ok(Seq::Append),
    };
    if first == expected {
        Ok(Seq::Append)
    } else {
        Err(Refused::OutOfOrder(format!(
            "producer {pid}: sequence {first}, expected {expected}"
        )))
    }
}

/// Records an appended batch of producer `pid` in the partition state.
fn remember_batch(st: &mut PartState, pid: i64, epoch: i16, first: i32, last: i32, base: i64) {
    let mut p = match st.producers.iter().position(|p| p.id == pid) {
        Some(i) => st.producers.remove(i),
        None => ProducerState {
            id: pid,
            epoch,
            batches: Vec::new(),
        },
    };
    if epoch != p.epoch {
        p.epoch = epoch;
        p.batches.clear();
    }
    p.batches.push((first, last, base));
    if p.batches.len() > PRODUCER_BATCHES_KEPT {
        p.batches.remove(0);
    }
    st.producers.insert(0, p);
    st.producers.truncate(PRODUCERS_MAX);
}

/// What a principal wants of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    Produce,
    Consume,
    /// Create, delete and grow topics.
    Topic,
    /// Change the stream's settings, delete it.
    Admin,
}

impl Right {
    fn name(self) -> &'static str {
        match self {
            Right::Produce => "produce",
            Right::Consume => "consume",
            Right::Topic => "topic",
            Right::Admin => "admin",
        }
    }
}

/// A stream found and authorized.
#[derive(Debug, Clone)]
pub struct StreamRef {
    pub entry: EntryInfo,
    pub vol: VolumeRecord,
    pub config: StreamConfig,
}

/// Answer to an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Where the first batch went (for a duplicate: where it went before).
    pub base_offset: i64,
    /// The partition's log start and end after the append.
    pub log_start: i64,
    pub next: i64,
}

/// The streams service.
pub struct Streams {
    ns: Arc<Namespace>,
    /// Appends waiting for their topic's next transaction.
    appends: parking_lot::Mutex<HashMap<TopicKey, Arc<parking_lot::Mutex<AppendQueue>>>>,
    /// The latest committed next offset per partition, for long polls.
    ends: parking_lot::Mutex<HashMap<PartKey, watch::Sender<i64>>>,
    /// Compacted partitions whose last pass changed nothing: the log end
    /// then, when its oldest kept tombstone expires (ms) and the stream's
    /// `delete_retention_ms`; a pass is skipped until one of them moves.
    compacted: parking_lot::Mutex<HashMap<PartKey, (i64, i64, i64)>>,
}

/// Identifies a partition on this node: volume, stream inode, topic id,
/// partition.
type PartKey = (u64, u64, u64, u32);
/// Identifies a topic on this node: volume, stream inode, topic id.
type TopicKey = (u64, u64, u64);

/// One partition's part of an append: its place in the caller's list, the
/// partition, the records and their checked batches.
struct Work {
    at: usize,
    part: u32,
    records: Bytes,
    batches: Vec<batch::BatchInfo>,
}

/// One append's per-partition results: (place in the caller's list,
/// result).
type PartResults = Vec<(usize, Result<Appended, AppendError>)>;
/// One append's results, or the error that failed its whole transaction.
type AppendResult = Result<PartResults, Error>;

/// A group's appends staged in a transaction: each append's results, and
/// the partitions whose end moves (partition, new end).
struct Staged {
    results: Vec<PartResults>,
    advanced: Vec<(u32, i64)>,
}

/// An append waiting in its topic's queue.
struct Pending {
    s: StreamRef,
    name: String,
    t: TopicRecord,
    work: Vec<Work>,
    done: tokio::sync::oneshot::Sender<AppendResult>,
}

/// Clears a topic's "committer runs" flag when its committer unwinds from a
/// panic. Only then: on a normal exit the flag is cleared under the lock,
/// and clearing it again could let two committers run at once.
struct Unstick<'a>(&'a parking_lot::Mutex<AppendQueue>);

impl Drop for Unstick<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().running = false;
        }
    }
}

/// A topic's appends not yet committed, and whether its committer runs.
#[derive(Default)]
struct AppendQueue {
    pending: std::collections::VecDeque<Pending>,
    running: bool,
}

fn config_key(vol: u64, ino: u64) -> Vec<u8> {
    Key::new(vol, Kind::StreamState, ino).build()
}
fn topic_key(vol: u64, ino: u64, topic: &str) -> Vec<u8> {
    Key::new(vol, Kind::StreamState, ino).str(topic).build()
}
/// Committed offsets live under this integer component of the stream's
/// state (integers sort before the topic names, which are text).
const GROUPS: u64 = 1;
/// Longest consumer group name.
pub const GROUP_NAME_MAX: usize = 255;

fn group_prefix(vol: u64, ino: u64, group: &str) -> Vec<u8> {
    Key::new(vol, Kind::StreamState, ino)
        .u64(GROUPS)
        .str(group)
        .build()
}
fn offset_key(vol: u64, ino: u64, group: &str, topic: &str, part: u32) -> Vec<u8> {
    Key::new(vol, Kind::StreamState, ino)
        .u64(GROUPS)
        .str(group)
        .str(topic)
        .u64(part as u64)
        .build()
}

/// A consumer group's committed offset for one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: i64,
    pub metadata: String,
    pub at_ms: i64,
}

fn part_key(vol: u64, ino: u64, topic: u64, part: u32) -> Vec<u8> {
    Key::new(vol, Kind::StreamLog, ino)
        .u64(topic)
        .u64(part as u64)
        .build()
}
fn batch_key(vol: u64, ino: u64, topic: u64, part: u32, last: i64) -> Vec<u8> {
    Key::new(vol, Kind::StreamLog, ino)
        .u64(topic)
        .u64(part as u64)
        .u64(last as u64)
        .build()
}

/// Longest Kafka name of a stream.
pub const KAFKA_NAME_MAX: usize = 64;

/// Checks a stream's Kafka name: 1–64 characters of `[A-Za-z0-9_-]`. No
/// dot: `NAME.topic` splits at the first one.
pub fn valid_kafka_name(name: &str) -> Result<(), Error> {
    if name.contains('.') {
        return Err(Error::invalid(format!(
            "Kafka name {name:?}: no '.', which separates it from the topic"
        )));
    }
    valid_chars("Kafka name", name, KAFKA_NAME_MAX, &['_', '-'])
}

/// Checks that `name` has 1 to `max` bytes, each an ASCII letter or digit
/// or one of `extra`.
fn valid_chars(what: &str, name: &str, max: usize, extra: &[char]) -> Result<(), Error> {
    if name.is_empty() || name.len() > max {
        return Err(Error::invalid(format!(
            "{what} {name:?}: 1 to {max} characters"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(c)))
    {
        let allowed: Vec<String> = extra.iter().map(|c| format!("'{c}'")).collect();
        return Err(Error::invalid(format!(
            "{what} {name:?}: {c:?} is not allowed (letters, digits, {})",
            allowed.join(", ")
        )));
    }
    Ok(())
}

/// Checks a topic name: 1–249 bytes of `[A-Za-z0-9._-]`, not `.` or `..`
/// (Kafka's rule).
pub fn valid_topic_name(name: &str) -> Result<(), Error> {
    if name == "." || name == ".." {
        return Err(Error::invalid(format!("topic name {name:?}: not . or ..")));
    }
    valid_chars("topic name", name, TOPIC_NAME_MAX, &['.', '_', '-'])
}

fn now_ms() -> i64 {
    berth_fs::namespace::now_ns() / 1_000_000
}

impl Streams {
    pub fn new(ns: Arc<Namespace>) -> Arc<Streams> {
        Arc::new(Streams {
            ns,
            appends: parking_lot::Mutex::new(HashMap::new()),
            ends: parking_lot::Mutex::new(HashMap::new()),
            compacted: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// A fresh idempotent-producer id: random in [1, 2^62), unique in
    /// practice without a cluster-wide counter (two producers collide with
    /// probability ~n²/2^63), so a restarted producer never inherits
    /// another's sequence state.
    pub fn new_producer_id(&self) -> i64 {
        (rand::random::<u64>() >> 2).max(1) as i64
    }

    /// Authenticates a ticket.
    pub fn authenticate(&self, ticket: &str) -> Result<Principal, Error> {
        self.ns.meta().authenticate(ticket)
    }

    /// Authenticates a user's password.
    pub async fn login(&self, user: &str, password: &str) -> Result<Principal, Error> {
        let (ticket, _) = self.ns.meta().login(user, password, 3600).await?;
        self.ns.meta().authenticate(&ticket)
    }

    /// Creates a stream entry at `path` with `config`.
    pub async fn create_stream(
        &self,
        p: &Principal,
        path: &str,
        config: StreamConfig,
    ) -> Result<StreamRef, Error> {
        check_config(&config)?;
        let entry = self
            .ns
            .create(p, path, EntryKind::Stream, 0o644, true)
            .await?;
        let vol = self.volume(entry.volume_id)?;
        // The entry exists from here; a stream without a stored config has
        // the defaults, so only a non-default config needs a second write.
        if config != StreamConfig::default() {
            let mut tx = self.ns.meta().router().begin(vol.shard_id).await?;
            tx.put(config_key(vol.id, entry.ino), encode(&config));
            tx.commit().await?;
        }
        Ok(StreamRef { entry, vol, config })
    }

    /// One-time setup of the stream where plain Kafka topic and group
    /// names live: on the first start with `path` as the default stream,
    /// creates it (and its missing parent directories) so a fresh node
    /// takes any topic and group name, with ACEs letting every
    /// authenticated principal produce, consume and create topics (an
    /// operator narrows them with `berth stream edit`). Crash-safe like the
    /// root volume: the step is recorded in the cluster map as started
    /// before the entry is made and as done after its config is written, so
    /// a restart finishes it, and an operator's later removal or change is
    /// never undone. A stream already at `path` when the step first runs
    /// (made by an operator) is left as it is.
    pub async fn ensure_default_stream(&self, path: &str) -> Result<(), Error> {
        let path = berth_meta::map::normalize_path(path)?;
        let system = berth_fs::volumes::system_principal();
        let exists = async {
            match self.lookup(&system, &path).await {
                Ok(_) => Ok(true),
                Err(e) if e.code == Code::NotFound => Ok(false),
                Err(e) => Err(e),
            }
        };
        let make = async {
            if let Some((parent, _)) = berth_meta::map::split_parent(&path) {
                self.ns.mkdir(&system, parent, 0o755, true).await?;
            }
            self.ns
                .create(&system, &path, EntryKind::Stream, 0o644, false)
                .await?;
            let everyone = Some("p".to_string());
            self.configure(&system, &path, |c| {
                c.produce_ace = everyone.clone();
                c.consume_ace = everyone.clone();
                c.topic_ace = everyone.clone();
            })
            .await
            .map(|_| ())
        };
        let step = format!("kafka default stream {path}");
        self.ns.meta().setup_once(&step, exists, make).await
    }

    /// The stream at `path`, if `p` has `right` on it.
    pub async fn stream(
        &self,
        p: &Principal,
        path: &str,
        right: Right,
    ) -> Result<StreamRef, Error> {
        let s = self.lookup(p, path).await?;
        authorize(p, &s, right)?;
        Ok(s)
    }

    /// The stream at `path` (every directory on the way searchable by `p`);
    /// the caller authorizes what it does with it ([`authorize`]; the calls
    /// below that read or write a partition do so themselves).
    pub async fn lookup(&self, p: &Principal, path: &str) -> Result<StreamRef, Error> {
        Ok(self.lookup_tx(p, path).await?.0)
    }

    /// [`Streams::lookup`], with the transaction that read the stream: its reads are
    /// behind the read barrier the lookup took.
    async fn lookup_tx(&self, p: &Principal, path: &str) -> Result<(StreamRef, Tx), Error> {
        let (entry, tx) = self.ns.stat_following_tx(p, path).await?;
        if entry.inode.kind != EntryKind::Stream {
            return Err(Error::invalid(format!(
                "{} is a {}, not a stream",
                entry.path,
                entry.inode.kind.name()
            )));
        }
        let vol = self.volume(entry.volume_id)?;
        let config = match tx.peek(&config_key(vol.id, entry.ino)).await? {
            Some(b) => decode_config(&b)?,
            None => StreamConfig::default(),
        };
        Ok((StreamRef { entry, vol, config }, tx))
    }

    /// The stream at `path`, if `p` has `right` on it, with its topic `name` (`None`
    /// when there is none), read behind one read barrier (per shard the path
    /// crosses): what a produce or fetch request resolves.
    pub async fn stream_topic(
        &self,
        p: &Principal,
        path: &str,
        right: Right,
        name: &str,
    ) -> Result<(StreamRef, Option<TopicRecord>), Error> {
        let (s, tx) = self.lookup_tx(p, path).await?;
        authorize(p, &s, right)?;
        let topic = tx
            .peek(&topic_key(s.vol.id, s.entry.ino, name))
            .await?
            .map(|b| decode(&b, "topic"))
            .transpose()?;
        Ok((s, topic))
    }

    /// Removes a stream with its topics and logs (admin right, and the
    /// right to change its directory).
    pub async fn delete_stream(&self, p: &Principal, path: &str) -> Result<(), Error> {
        self.stream(p, path, Right::Admin).await?;
        self.ns.remove(p, path, false).await
    }

    /// Changes a stream's settings (admin right).
    pub async fn configure(
        &self,
        p: &Principal,
        path: &str,
        change: impl Fn(&mut StreamConfig),
    ) -> Result<StreamConfig, Error> {
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let s = self.stream(p, path, Right::Admin).await?;
            let mut tx = self.ns.meta().router().begin(s.vol.shard_id).await?;
            let key = config_key(s.vol.id, s.entry.ino);
            let mut config = read_config(&mut tx, &key).await?;
            change(&mut config);
            check_config(&config)?;
            tx.put(key, encode(&config));
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(config);
            }
        }
        Err(berth_meta::router::too_much_contention(path))
    }

    /// Gives the stream at `path` the Kafka name `name` (admin right on
    /// the stream), or takes its name away (`None`): clients that validate
    /// topic names reach its topics as `NAME.topic` and its groups as
    /// `NAME.group`. A name maps to a path, as a full name
    /// `/path:topic` does: it is the cluster map's (unique), a name whose
    /// path holds no stream any more may be claimed again, and a stream has
    /// at most one (setting another drops the old).
    pub async fn set_kafka_name(
        &self,
        p: &Principal,
        path: &str,
        name: Option<&str>,
    ) -> Result<(), Error> {
        let s = self.stream(p, path, Right::Admin).await?;
        let path = s.entry.path;
        let meta = self.ns.meta();
        if let Some(n) = name {
            valid_kafka_name(n)?;
            let holder = meta.map().kafka_names.get(n).cloned();
            let stale = match holder {
                Some(h) if h != path => {
                    let system = berth_fs::volumes::system_principal();
                    match self.lookup(&system, &h).await {
                        Ok(_) => {
                            return Err(Error::new(
                                Code::Exists,
                                format!("the Kafka name {n:?} belongs to the stream {h}"),
                            ))
                        }
                        // Nothing, or no stream, at the holder's path.
                        Err(e)
                            if matches!(e.code, Code::NotFound | Code::NotDir | Code::Invalid) =>
                        {
                            Some(h)
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => None,
            };
            meta.claim_kafka_name(n, &path, stale.as_deref()).await?;
        }
        for old in self.kafka_names_of(&path) {
            if Some(old.as_str()) != name {
                meta.release_kafka_name(&old, &path).await?;
            }
        }
        Ok(())
    }

    /// The Kafka names recorded for `path` (normally none or one).
    pub fn kafka_names_of(&self, path: &str) -> Vec<String> {
        self.ns
            .meta()
            .map()
            .kafka_names
            .iter()
            .filter(|(_, p)| p.as_str() == path)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The path a Kafka name maps to, if it is recorded.
    pub fn kafka_name_path(&self, name: &str) -> Option<String> {
        self.ns.meta().map().kafka_names.get(name).cloned()
    }

    /// Every recorded Kafka name with its path.
    pub fn kafka_names(&self) -> Vec<(String, String)> {
        self.ns
            .meta()
            .map()
            .kafka_names
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect()
    }

    /// Every topic of a stream (consume or topic right).
    pub async fn topics(
        &self,
        p: &Principal,
        s: &StreamRef,
    ) -> Result<Vec<(String, TopicRecord)>, Error> {
        if authorize(p, s, Right::Consume).is_err() {
            authorize(p, s, Right::Topic)?;
        }
        let tx = self.ns.meta().router().begin(s.vol.shard_id).await?;
        let start = topic_key(s.vol.id, s.entry.ino, "");
        let end = prefix_end(&config_key(s.vol.id, s.entry.ino));
        let mut out = Vec::new();
        for (k, v) in tx.peek_range(&start, &end, usize::MAX).await? {
            let decoded = berth_store::keys::decode(&k)
                .map_err(|e| Error::corrupt(format!("topic key: {e}")))?;
            if let Some(berth_store::keys::Component::Str(name)) = decoded.components.first() {
                out.push((name.clone(), decode(&v, "topic")?));
            }
        }
        Ok(out)
    }

    /// A topic; `None` when it does not exist.
    pub async fn topic(&self, s: &StreamRef, name: &str) -> Result<Option<TopicRecord>, Error> {
        let tx = self.ns.meta().router().begin(s.vol.shard_id).await?;
        tx.peek(&topic_key(s.vol.id, s.entry.ino, name))
            .await?
            .map(|b| decode(&b, "topic"))
            .transpose()
    }

    /// Creates a topic (topic right); `partitions` 0 = the stream's default.
    pub async fn create_topic(
        &self,
        p: &Principal,
        s: &StreamRef,
        name: &str,
        partitions: u32,
    ) -> Result<TopicRecord, Error> {
        authorize(p, s, Right::Topic)?;
        valid_topic_name(name)?;
        let partitions = if partitions == 0 {
            s.config.default_partitions
        } else {
            partitions
        };
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return Err(Error::invalid(format!(
                "partitions: 1 to {PARTITIONS_MAX}, not {partitions}"
            )));
        }
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.ns.meta().router().begin(s.vol.shard_id).await?;
            let tkey = topic_key(s.vol.id, s.entry.ino, name);
            if tx.get(&tkey).await?.is_some() {
                return Err(Error::exists(format!("topic {name} in {}", s.entry.path)));
            }
            let ckey = config_key(s.vol.id, s.entry.ino);
            let mut config = read_config(&mut tx, &ckey).await?;
            let id = config.next_topic;
            config.next_topic += 1;
            let t = TopicRecord {
                id,
                uuid: rand::random(),
                partitions,
                created_ms: now_ms(),
            };
            // Clear what a deleted topic with this id could have left (ids
            // are never reused, so this is only belt and braces).
            let (start, end) = topic_log_range(s, id);
            tx.delete_range(start, end);
            tx.put(ckey, encode(&config));
            tx.put(tkey, encode(&t));
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(t);
            }
        }
        Err(berth_meta::router::too_much_contention(name))
    }

    /// The topic, created first when missing and the stream auto-creates
    /// (with the topic right).
    pub async fn topic_or_create(
        &self,
        p: &Principal,
        s: &StreamRef,
        name: &str,
        create: bool,
    ) -> Result<TopicRecord, Error> {
        if let Some(t) = self.topic(s, name).await? {
            return Ok(t);
        }
        if !create || !s.config.autocreate {
            return Err(Error::not_found(format!(
                "topic {name} in {}",
                s.entry.path
            )));
        }
        match self.create_topic(p, s, name, 0).await {
            Err(e) if e.code == Code::Exists => self
                .topic(s, name)
                .await?
                .ok_or_else(|| Error::not_found(name)),
            r => r,
        }
    }

    /// Deletes a topic and its partition logs (topic right).
    pub async fn delete_topic(
        &self,
        p: &Principal,
        s: &StreamRef,
        name: &str,
    ) -> Result<(), Error> {
        authorize(p, s, Right::Topic)?;
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.ns.meta().router().begin(s.vol.shard_id).await?;
            let tkey = topic_key(s.vol.id, s.entry.ino, name);
            let t: TopicRecord = match tx.get(&tkey).await? {
                Some(b) => decode(&b, "topic")?,
                None => {
                    return Err(Error::not_found(format!(
                        "topic {name} in {}",
                        s.entry.path
                    )))
                }
            };
            let (start, end) = topic_log_range(s, t.id);
            tx.delete_range(start, end);
            tx.delete(tkey);
            if let Commit::Done(_) = tx.commit().await? {
                let mut ends = self.ends.lock();
                ends.retain(|k, _| !(k.0 == s.vol.id && k.1 == s.entry.ino && k.2 == t.id));
                return Ok(());
            }
        }
        Err(berth_meta::router::too_much_contention(name))
    }

    /// Grows a topic to `count` partitions (topic right).
    pub async fn add_partitions(
        &self,
        p: &Principal,
        s: &StreamRef,
        name: &str,
        count: u32,
    ) -> Result<TopicRecord, Error> {
        authorize(p, s, Right::Topic)?;
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.ns.meta().router().begin(s.vol.shard_id).await?;
            let tkey = topic_key(s.vol.id, s.entry.ino, name);
            let mut t: TopicRecord = match tx.get(&tkey).await? {
                Some(b) => decode(&b, "topic")?,
                None => {
                    return Err(Error::not_found(format!(
                        "topic {name} in {}",
                        s.entry.path
                    )))
                }
            };
            if count <= t.partitions || count > PARTITIONS_MAX {
                return Err(Error::invalid(format!(
                    "topic {name} has {} partitions: the new count must be larger and at most {PARTITIONS_MAX}, not {count}",
                    t.partitions
                )));
            }
            t.partitions = count;
            tx.put(tkey, encode(&t));
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(t);
            }
        }
        Err(berth_meta::router::too_much_contention(name))
    }

    /// Appends a produce request's batches to a partition (produce right);
    /// returns once they are durable and applied.
    pub async fn append(
        self: &Arc<Self>,
        p: &Principal,
        s: &StreamRef,
        name: &str,
        t: &TopicRecord,
        part: u32,
        records: Bytes,
    ) -> Result<Appended, AppendError> {
        self.append_submit(p, s, name, t, vec![(part, records)])
            .await
            .pop()
            .unwrap_or_else(|| Err(Error::new(Code::Io, "internal: no append result").into()))
    }

    /// Queues an append of batches to several partitions of one topic and
    /// returns the wait for its results (one per input, in order), durable
    /// when they come. Group commit: the appends queued on a topic while
    /// its previous transaction commits go together in the next one (one
    /// Raft entry, one fsync), in queue order, so successive calls keep
    /// the order they were made in — a Kafka connection's pipelined
    /// produce requests stay in order without waiting for each other's
    /// fsync. A partition whose batches are refused (bad batch, sequence
    /// gap, fenced epoch) fails alone; the others are written. Queueing
    /// happens before this returns: the wait need not be polled for the
    /// append to happen (dropping it only drops the answer).
    pub fn append_submit(
        self: &Arc<Self>,
        p: &Principal,
        s: &StreamRef,
        name: &str,
        t: &TopicRecord,
        parts: Vec<(u32, Bytes)>,
    ) -> impl std::future::Future<Output = Vec<Result<Appended, AppendError>>> + Send + 'static
    {
        let n = parts.len();
        let mut results: Vec<Option<Result<Appended, AppendError>>> = vec![None; n];
        let mut work = Vec::new();
        match authorize(p, s, Right::Produce) {
            Err(e) => results
                .iter_mut()
                .for_each(|r| *r = Some(Err(e.clone().into()))),
            Ok(()) => {
                for (i, (part, records)) in parts.into_iter().enumerate() {
                    match check_append(t, part, &records) {
                        Ok(batches) => work.push(Work {
                            at: i,
                            part,
                            records,
                            batches,
                        }),
                        Err(e) => results[i] = Some(Err(e)),
                    }
                }
            }
        }
        let queued: Vec<usize> = work.iter().map(|w| w.at).collect();
        let rx = (!work.is_empty()).then(|| self.enqueue(s, name, t, work));
        async move {
            if let Some(rx) = rx {
                match rx.await {
                    Ok(Ok(done)) => {
                        for (i, r) in done {
                            results[i] = Some(r);
                        }
                    }
                    Ok(Err(e)) => {
                        for i in queued {
                            results[i] = Some(Err(e.clone().into()));
                        }
                    }
                    Err(_) => {} // the committer went away: "no result" below
                }
            }
            results
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| {
                        Err(Error::new(Code::Io, "internal: no append result").into())
                    })
                })
                .collect()
        }
    }

    /// Puts an append in its topic's queue, starting the topic's committer
    /// when none runs.
    fn enqueue(
        self: &Arc<Self>,
        s: &StreamRef,
        name: &str,
        t: &TopicRecord,
        work: Vec<Work>,
    ) -> tokio::sync::oneshot::Receiver<AppendResult> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let key: TopicKey = (s.vol.id, s.entry.ino, t.id);
        let q = self.appends.lock().entry(key).or_default().clone();
        let start = {
            let mut q = q.lock();
            q.pending.push_back(Pending {
                s: s.clone(),
                name: name.to_string(),
                t: t.clone(),
                work,
                done: tx,
            });
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.drain(q).await });
        }
        rx
    }

    /// A topic's committer: commits what is queued, as one transaction per
    /// round (at most [`APPEND_BYTES_MAX`] of batches, at least one
    /// append), until the queue is empty.
    async fn drain(self: Arc<Self>, q: Arc<parking_lot::Mutex<AppendQueue>>) {
        // Should a round panic, the next append starts a new committer
        // (the waiters of the lost round get "no result").
        let _unstick = Unstick(&q);
        loop {
            let group: Vec<Pending> = {
                let mut q = q.lock();
                if q.pending.is_empty() {
                    q.running = false;
                    return;
                }
                let mut bytes = 0;
                let mut group = Vec::new();
                while let Some(next) = q.pending.front() {
                    let len: usize = next.work.iter().map(|w| w.records.len()).sum();
                    if !group.is_empty() && bytes + len > APPEND_BYTES_MAX {
                        break;
                    }
                    bytes += len;
                    group.extend(q.pending.pop_front());
                }
                group
            };
            let results = self.append_group(&group).await;
            for (pending, r) in group.into_iter().zip(results) {
                let _ = pending.done.send(r);
            }
        }
    }

    /// The transaction of one round of a topic's committer: every queued
    /// append in order, each partition's state carried from one to the
    /// next. One result per append: its per-partition results, or the
    /// error that failed the whole transaction.
    async fn append_group(&self, group: &[Pending]) -> Vec<AppendResult> {
        let first = &group[0];
        let (s, name, t) = (&first.s, first.name.as_str(), &first.t);
        let fail = |e: Error| group.iter().map(|_| Err(e.clone())).collect();
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = match self.ns.meta().router().begin(s.vol.shard_id).await {
                Ok(tx) => tx,
                Err(e) => return fail(e),
            };
            match self.stage_group(&mut tx, s, name, t, group).await {
                Ok(Staged { results, advanced }) => match tx.commit().await {
                    Ok(Commit::Done(_)) => {
                        for (part, next) in advanced {
                            self.advanced((s.vol.id, s.entry.ino, t.id, part), next);
                        }
                        return results.into_iter().map(Ok).collect();
                    }
                    Ok(_) => continue,
                    Err(e) => return fail(e),
                },
                Err(e) => return fail(e),
            }
        }
        fail(berth_meta::router::too_much_contention(&s.entry.path))
    }

    /// Stages a group's batches in `tx`.
    async fn stage_group(
        &self,
        tx: &mut Tx,
        s: &StreamRef,
        name: &str,
        t: &TopicRecord,
        group: &[Pending],
    ) -> Result<Staged, Error> {
        // The topic must still be the one asked for (not deleted, or
        // deleted and created again, meanwhile).
        let live: Option<TopicRecord> = tx
            .get(&topic_key(s.vol.id, s.entry.ino, name))
            .await?
            .map(|b| decode(&b, "topic"))
            .transpose()?;
        let live_parts = match live {
            Some(l) if l.id == t.id => l.partitions,
            _ => {
                return Err(Error::not_found(format!(
                    "topic {name} in {}",
                    s.entry.path
                )))
            }
        };
        // Each partition's state as staged so far (read once: the read is
        // the transaction's condition).
        let mut states: HashMap<u32, PartState> = HashMap::new();
        let mut changed: std::collections::BTreeSet<u32> = Default::default();
        let mut outs = Vec::with_capacity(group.len());
        for pending in group {
            let mut out = Vec::with_capacity(pending.work.len());
            for w in &pending.work {
                let part = w.part;
                if part >= live_parts {
                    out.push((
                        w.at,
                        Err(Error::not_found(format!("partition {part} of {name}")).into()),
                    ));
                    continue;
                }
                let state = match states.get(&part) {
                    Some(st) => st.clone(),
                    None => {
                        let skey = part_key(s.vol.id, s.entry.ino, t.id, part);
                        let st: PartState = match tx.get(&skey).await? {
                            Some(b) => decode(&b, "partition state")?,
                            None => PartState::default(),
                        };
                        states.insert(part, st.clone());
                        st
                    }
                };
                // Staged first, kept only when the whole partition passes.
                let mut new = state.clone();
                let mut first_base = None;
                let mut puts = Vec::new();
                let mut refused = None;
                for b in &w.batches {
                    let idempotent = b.producer_id >= 0;
                    let last_seq = b.base_sequence.wrapping_add(b.offsets as i32 - 1);
                    if idempotent {
                        match check_sequence(
                            &new,
                            b.producer_id,
                            b.producer_epoch,
                            b.base_sequence,
                            last_seq,
                        ) {
                            Ok(Seq::Duplicate(base)) => {
                                first_base.get_or_insert(base);
                                continue;
                            }
                            Ok(Seq::Append) => {}
                            Err(r) => {
                                refused = Some(r);
                                break;
                            }
                        }
                    }
                    let mut bytes = w.records[b.start..b.start + b.len].to_vec();
                    let base = new.next;
                    batch::place(&mut bytes, base, 0);
                    let last = base + b.offsets as i64 - 1;
                    puts.push((batch_key(s.vol.id, s.entry.ino, t.id, part, last), bytes));
                    if idempotent {
                        remember_batch(
                            &mut new,
                            b.producer_id,
                            b.producer_epoch,
                            b.base_sequence,
                            last_seq,
                            base,
                        );
                    }
                    first_base.get_or_insert(base);
                    new.next = last + 1;
                    new.bytes += b.len as u64;
                }
                if let Some(r) = refused {
                    out.push((w.at, Err(AppendError::Refused(r))));
                    continue;
                }
                let base_offset = first_base.unwrap_or(state.next);
                if new != state {
                    for (k, v) in puts {
                        tx.put(k, v);
                    }
                    changed.insert(part);
                }
                out.push((
                    w.at,
                    Ok(Appended {
                        base_offset,
                        log_start: new.log_start,
                        next: new.next,
                    }),
                ));
                states.insert(part, new);
            }
            outs.push(out);
        }
        let mut advanced = Vec::with_capacity(changed.len());
        for part in changed {
            let st = &states[&part];
            tx.put(part_key(s.vol.id, s.entry.ino, t.id, part), encode(st));
            advanced.push((part, st.next));
        }
        Ok(Staged {
            results: outs,
            advanced,
        })
    }

    /// Commits a consumer group's offset for partition `part` of `topic`
    /// (the topic's full name, `/stream:topic`), durably. Groups live in stream
    /// `gs`; using one needs the consume right on it (the caller checks the
    /// consume right on the topic's own stream).
    pub async fn commit_offset(
        &self,
        p: &Principal,
        gs: &StreamRef,
        group: &str,
        (topic, part): (&str, u32),
        offset: i64,
        metadata: &str,
    ) -> Result<(), Error> {
        authorize(p, gs, Right::Consume)?;
        check_group(group)?;
        if metadata.len() > 4096 {
            return Err(Error::new(Code::TooBig, "offset metadata over 4096 bytes"));
        }
        let mut tx = self.ns.meta().router().begin(gs.vol.shard_id).await?;
        let c = CommittedOffset {
            offset,
            metadata: metadata.to_string(),
            at_ms: now_ms(),
        };
        tx.put(
            offset_key(gs.vol.id, gs.entry.ino, group, topic, part),
            encode(&c),
        );
        tx.commit().await?;
        Ok(())
    }

    /// A group's committed offset for a partition.
    pub async fn committed(
        &self,
        p: &Principal,
        gs: &StreamRef,
        group: &str,
        topic: &str,
        part: u32,
    ) -> Result<Option<CommittedOffset>, Error> {
        authorize(p, gs, Right::Consume)?;
        check_group(group)?;
        let tx = self.ns.meta().router().begin(gs.vol.shard_id).await?;
        tx.peek(&offset_key(gs.vol.id, gs.entry.ino, group, topic, part))
            .await?
            .map(|b| decode(&b, "committed offset"))
            .transpose()
    }

    /// Every committed offset of a group: (topic, partition, offset).
    pub async fn group_offsets(
        &self,
        p: &Principal,
        gs: &StreamRef,
        group: &str,
    ) -> Result<Vec<(String, u32, CommittedOffset)>, Error> {
        authorize(p, gs, Right::Consume)?;
        check_group(group)?;
        let tx = self.ns.meta().router().begin(gs.vol.shard_id).await?;
        let start = group_prefix(gs.vol.id, gs.entry.ino, group);
        let end = prefix_end(&start);
        let mut out = Vec::new();
        for (k, v) in tx.peek_range(&start, &end, usize::MAX).await? {
            let d = berth_store::keys::decode(&k)
                .map_err(|e| Error::corrupt(format!("offset key: {e}")))?;
            use berth_store::keys::Component;
            if let [_, _, Component::Str(topic), Component::U64(part)] = d.components.as_slice() {
                let part = u32::try_from(*part)
                    .map_err(|_| Error::corrupt("offset key: partition out of range"))?;
                out.push((topic.clone(), part, decode(&v, "committed offset")?));
            }
        }
        Ok(out)
    }

    /// Batches from `offset` on, about `max_bytes` of them (at least one
    /// whole batch when any), with the partition's offsets (consume right).
    pub async fn read(
        &self,
        p: &Principal,
        s: &StreamRef,
        t: &TopicRecord,
        part: u32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<(PartState, Vec<Bytes>), Error> {
        authorize(p, s, Right::Consume)?;
        check_partition(t, part)?;
        let tx = self.ns.meta().router().begin(s.vol.shard_id).await?;
        let state = read_state(&tx, s, t, part).await?;
        if offset < state.log_start || offset > state.next {
            return Err(Error::new(
                Code::Range,
                format!(
                    "offset {offset} is outside the log [{}, {}]",
                    state.log_start, state.next
                ),
            ));
        }
        let mut out = Vec::new();
        if offset == state.next {
            return Ok((state, out));
        }
        let from = batch_key(s.vol.id, s.entry.ino, t.id, part, offset);
        let end = prefix_end(&part_key(s.vol.id, s.entry.ino, t.id, part));
        let mut bytes = 0usize;
        scan_batches(&tx, from, &end, |_, v| {
            if !out.is_empty() && bytes + v.len() > max_bytes {
                return false;
            }
            bytes += v.len();
            out.push(Bytes::from(v));
            bytes < max_bytes && out.len() < FETCH_BATCHES_MAX
        })
        .await?;
        Ok((state, out))
    }

    /// The partition's offsets (consume right).
    pub async fn offsets(
        &self,
        p: &Principal,
        s: &StreamRef,
        t: &TopicRecord,
        part: u32,
    ) -> Result<PartState, Error> {
        authorize(p, s, Right::Consume)?;
        check_partition(t, part)?;
        let tx = self.ns.meta().router().begin(s.vol.shard_id).await?;
        read_state(&tx, s, t, part).await
    }

    /// The first offset whose batch holds a timestamp >= `ts` (batch
    /// resolution: the base offset of the first batch whose max timestamp
    /// is >= `ts`); the log end when none.
    pub async fn offset_for_time(
        &self,
        p: &Principal,
        s: &StreamRef,
        t: &TopicRecord,
        part: u32,
        ts: i64,
    ) -> Result<i64, Error> {
        authorize(p, s, Right::Consume)?;
        check_partition(t, part)?;
        let tx = self.ns.meta().router().begin(s.vol.shard_id).await?;
        let state = read_state(&tx, s, t, part).await?;
        let from = batch_key(s.vol.id, s.entry.ino, t.id, part, state.log_start);
        let end = prefix_end(&part_key(s.vol.id, s.entry.ino, t.id, part));
        let mut found = state.next;
        scan_batches(&tx, from, &end, |_, v| {
            if batch::max_timestamp(&v) >= ts {
                found = batch::base_offset(&v);
                return false;
            }
            true
        })
        .await?;
        Ok(found)
    }

    /// Resolves when the partition's end passes `offset`, or after
    /// `max_wait`. Only appends through this node wake it early (the
    /// partition's shard is led here).
    pub async fn wait(
        &self,
        s: &StreamRef,
        t: &TopicRecord,
        part: u32,
        offset: i64,
        max_wait: Duration,
    ) {
        let pk: PartKey = (s.vol.id, s.entry.ino, t.id, part);
        let mut rx = {
            let mut ends = self.ends.lock();
            ends.entry(pk)
                .or_insert_with(|| watch::channel(0).0)
                .subscribe()
        };
        // Subscribed first, then read: an append that lands in between is
        // seen by one or the other.
        let now = match self.ns.meta().router().begin(s.vol.shard_id).await {
            Ok(tx) => read_state(&tx, s, t, part)
                .await
                .map(|st| st.next)
                .unwrap_or(0),
            Err(_) => 0,
        };
        if now > offset {
            return;
        }
        let _ = tokio::time::timeout(max_wait, rx.wait_for(|end| *end > offset)).await;
    }

    /// Deletes the oldest batches of a partition that its stream's
    /// retention no longer keeps: older than `retention_ms` (by the
    /// batch's max timestamp) or beyond `retention_bytes`; the log start
    /// moves past them. The batch holding the log end is never deleted by
    /// size. In a compacted stream, compacts instead ([`compact_window`]).
    /// Returns the number of batches deleted or rewritten. Housekeeping: no
    /// principal, the stream's own settings decide.
    pub async fn retain(
        &self,
        s: &StreamRef,
        name: &str,
        t: &TopicRecord,
        part: u32,
    ) -> Result<usize, Error> {
        self.retain_at(&s.vol, s.entry.ino, &s.entry.path, name, t, part)
            .await
    }

    /// [`Streams::retain`] for the stream `ino` of volume `vol`; `label`
    /// names it in errors.
    async fn retain_at(
        &self,
        vol: &VolumeRecord,
        ino: u64,
        label: &str,
        name: &str,
        t: &TopicRecord,
        part: u32,
    ) -> Result<usize, Error> {
        let pk: PartKey = (vol.id, ino, t.id, part);
        for attempt in 0..TX_RETRIES_MAX {
            backoff(attempt).await;
            let mut tx = self.ns.meta().router().begin(vol.shard_id).await?;
            let config = read_config(&mut tx, &config_key(vol.id, ino)).await?;
            // A deleted (or re-created) topic is not ours to trim.
            let live: Option<TopicRecord> = tx
                .get(&topic_key(vol.id, ino, name))
                .await?
                .map(|b| decode(&b, "topic"))
                .transpose()?;
            if live.is_none_or(|l| l.id != t.id) {
                return Ok(0);
            }
            let skey = part_key(vol.id, ino, t.id, part);
            let Some(raw) = tx.get(&skey).await? else {
                return Ok(0);
            };
            let mut st: PartState = decode(&raw, "partition state")?;
            if config.compact {
                // Compacted topics keep the last record of every key, not
                // an age or a size (Kafka's cleanup.policy=compact).
                let now = now_ms();
                let skip = self.compacted.lock().get(&pk).copied();
                if skip.is_some_and(|(next, expires, dr)| {
                    next == st.next && now < expires && dr == config.delete_retention_ms
                }) {
                    return Ok(0);
                }
                let pass =
                    compact_window(&mut tx, vol.id, ino, t, part, &mut st, &config, now).await?;
                if pass.changed == 0 {
                    self.compacted
                        .lock()
                        .insert(pk, (st.next, pass.next_expiry, config.delete_retention_ms));
                    return Ok(0);
                }
                tx.put(skey, encode(&st));
                if let Commit::Done(_) = tx.commit().await? {
                    return Ok(pass.changed);
                }
                continue;
            }
            if config.retention_ms < 0 && config.retention_bytes < 0 {
                return Ok(0);
            }
            let oldest_kept = if config.retention_ms >= 0 {
                now_ms().saturating_sub(config.retention_ms)
            } else {
                i64::MIN
            };
            let start = batch_key(vol.id, ino, t.id, part, st.log_start);
            let mut gone = Vec::new();
            scan_batches(&tx, start, &prefix_end(&skey), |k, v| {
                let too_old = batch::max_timestamp(&v) < oldest_kept;
                let too_big =
                    config.retention_bytes >= 0 && st.bytes > config.retention_bytes as u64;
                let last = batch::base_offset(&v) + batch::offsets(&v) - 1;
                let holds_end = last + 1 >= st.next;
                if !(too_old || (too_big && !holds_end)) {
                    return false;
                }
                st.bytes = st.bytes.saturating_sub(v.len() as u64);
                st.log_start = last + 1;
                gone.push(k);
                true
            })
            .await?;
            let deleted = gone.len();
            for k in gone {
                tx.delete(k);
            }
            if deleted == 0 {
                return Ok(0);
            }
            tx.put(skey, encode(&st));
            if let Commit::Done(_) = tx.commit().await? {
                return Ok(deleted);
            }
        }
        Err(berth_meta::router::too_much_contention(label))
    }

    /// One retention and compaction pass over every partition of every
    /// stream in the volumes whose shard this node leads (the node that
    /// serves their appends). Returns the batches deleted or rewritten;
    /// a partition that fails is logged and left for the next pass.
    pub async fn sweep(&self) -> usize {
        let map = self.ns.meta().map();
        let router = self.ns.meta().router();
        let mut changed = 0;
        for vol in &map.volumes {
            if router.leader_of(vol.shard_id) != Some(router.node_id()) {
                continue;
            }
            match self.sweep_volume(vol).await {
                Ok(n) => changed += n,
                Err(e) => {
                    tracing::debug!(volume = %vol.path, error = %e, "stream sweep failed; the next one retries")
                }
            }
        }
        changed
    }

    async fn sweep_volume(&self, vol: &VolumeRecord) -> Result<usize, Error> {
        let router = self.ns.meta().router();
        let (mut from, end) = berth_store::keys::kind_range(vol.id, Kind::StreamState);
        let mut changed = 0;
        // Each stream: the first key at or after `from` names it; its topics
        // are its state keys with one text component.
        loop {
            let first = router.scan(vol.shard_id, &from, &end, 1).await?;
            let Some((k, _)) = first.first() else { break };
            let ino = berth_store::keys::KeyReader::new(k)
                .map_err(|e| Error::corrupt(format!("stream state key: {e}")))?
                .object();
            let label = format!("stream {ino} in volume {}", vol.path);
            let (_, stream_end) = berth_store::keys::object_range(vol.id, Kind::StreamState, ino);
            let mut tfrom = Key::new(vol.id, Kind::StreamState, ino).str("").build();
            loop {
                let topics = router
                    .scan(vol.shard_id, &tfrom, &stream_end, FETCH_BATCHES_MAX)
                    .await?;
                let Some((last, _)) = topics.last() else {
                    break;
                };
                tfrom = last.clone();
                tfrom.push(0);
                for (k, v) in &topics {
                    let mut r = berth_store::keys::KeyReader::new(k)
                        .map_err(|e| Error::corrupt(format!("topic key: {e}")))?;
                    let Ok(name) = r.next_str() else { continue };
                    if !r.is_at_end() {
                        continue;
                    }
                    let t: TopicRecord = decode(v, "topic")?;
                    for part in 0..t.partitions {
                        match self.retain_at(vol, ino, &label, &name, &t, part).await {
                            Ok(0) => {}
                            Ok(n) => {
                                changed += n;
                                tracing::debug!(stream = %label, topic = name, part, batches = n, "retention or compaction changed batches")
                            }
                            Err(e) => {
                                tracing::debug!(stream = %label, topic = name, part, error = %e, "stream sweep failed; the next one retries")
                            }
                        }
                    }
                }
            }
            from = stream_end;
        }
        Ok(changed)
    }

    /// Runs [`Streams::sweep`] every `every`, until the returned task is
    /// dropped or aborted.
    pub fn spawn_retention(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(streams) = me.upgrade() else { return };
                streams.sweep().await;
            }
        })
    }

    fn advanced(&self, pk: PartKey, next: i64) {
        let ends = self.ends.lock();
        if let Some(tx) = ends.get(&pk) {
            tx.send_if_modified(|end| {
                let moved = next > *end;
                if moved {
                    *end = next;
                }
                moved
            });
        }
    }

    fn volume(&self, id: u64) -> Result<VolumeRecord, Error> {
        self.ns.meta().map().volume(id).cloned().ok_or_else(|| {
            Error::new(
                Code::Again,
                format!("volume {id} is not in the cluster map yet; retry"),
            )
        })
    }
}

/// Batches one compaction pass looks at (from the log start).
const COMPACT_WINDOW_BATCHES: usize = 4096;

/// Bytes one compaction pass holds at most: the stored batches and their
/// decompressed records. A batch may decompress to
/// [`compact::RECORDS_BYTES_MAX`], so without this bound a window of small
/// batches that each decompress to that much (a producer's "zip bombs")
/// would hold thousands of times it; with it, the window ends early (it
/// always takes its first batch).
const COMPACT_WINDOW_BYTES_MAX: u64 = 256 << 20;

/// The batches of one compaction pass, from the log start: at most
/// [`COMPACT_WINDOW_BATCHES`] and `bytes_max` bytes held, never the batch
/// holding the log end; with the latest offset of every key among them.
struct Window {
    next: i64,
    bytes_max: u64,
    bytes: u64,
    batches: Vec<(Vec<u8>, Vec<u8>, Option<compact::Parsed>)>,
    latest: HashMap<Vec<u8>, i64>,
}

impl Window {
    fn new(next: i64, bytes_max: u64) -> Window {
        Window {
            next,
            bytes_max,
            bytes: 0,
            batches: Vec::new(),
            latest: HashMap::new(),
        }
    }

    /// Takes the next batch (key, value) unless the window is full; false
    /// ends the scan.
    fn offer(&mut self, k: Vec<u8>, v: Vec<u8>) -> bool {
        if self.batches.len() >= COMPACT_WINDOW_BATCHES {
            return false;
        }
        let last = batch::base_offset(&v) + batch::offsets(&v) - 1;
        if last + 1 >= self.next {
            return false; // the active batch
        }
        let parsed = compact::parse(&v).ok();
        let held = (v.len() + parsed.as_ref().map_or(0, |p| p.records.len())) as u64;
        if !self.batches.is_empty() && self.bytes.saturating_add(held) > self.bytes_max {
            return false;
        }
        self.bytes += held;
        for r in parsed.iter().flat_map(|p| &p.keys) {
            if let Some(key) = &r.key {
                let e = self.latest.entry(key.clone()).or_insert(r.offset);
                *e = (*e).max(r.offset);
            }
        }
        self.batches.push((k, v, parsed));
        true
    }
}

/// What a compaction pass did.
struct CompactPass {
    /// Batches deleted or rewritten.
    changed: usize,
    /// When the oldest tombstone it kept expires (ms; `i64::MAX`: none will).
    next_expiry: i64,
}

/// One compaction pass over the oldest batches of a partition ([`Window`]:
/// at most [`COMPACT_WINDOW_BATCHES`] and [`COMPACT_WINDOW_BYTES_MAX`]), never the batch holding the log end (Kafka's active
/// segment). A record stays when it has no key, or is the latest record of
/// its key in the window (later records outside it are not seen: a smaller
/// window only keeps more) — except a latest tombstone whose batch is older
/// than `delete_retention_ms`. A batch with no record left is deleted, its
/// offsets becoming a gap as in Kafka; a batch with some is rewritten with
/// them ([`compact::rewrite`]: same key, same offsets, its own codec) when
/// that makes it smaller. Batches that cannot be read stay whole.
#[allow(clippy::too_many_arguments)]
async fn compact_window(
    tx: &mut Tx,
    vol: u64,
    ino: u64,
    t: &TopicRecord,
    part: u32,
    st: &mut PartState,
    config: &StreamConfig,
    now: i64,
) -> Result<CompactPass, Error> {
    let skey = part_key(vol, ino, t.id, part);
    let start = batch_key(vol, ino, t.id, part, st.log_start);
    let mut window = Window::new(st.next, COMPACT_WINDOW_BYTES_MAX);
    scan_batches(tx, start, &prefix_end(&skey), |k, v| window.offer(k, v)).await?;
    let Window {
        batches, latest, ..
    } = window;
    let keep_tombstones = config.delete_retention_ms < 0;
    let mut pass = CompactPass {
        changed: 0,
        next_expiry: i64::MAX,
    };
    for (k, v, parsed) in &batches {
        let Some(p) = parsed else { continue };
        let expires = batch::max_timestamp(v).saturating_add(config.delete_retention_ms);
        let expired = !keep_tombstones && expires <= now;
        let keep: Vec<usize> = (0..p.keys.len())
            .filter(|i| {
                let r = &p.keys[*i];
                let Some(key) = &r.key else { return true };
                latest.get(key) == Some(&r.offset) && !(r.tombstone && expired)
            })
            .collect();
        if !keep_tombstones && keep.iter().any(|i| p.keys[*i].tombstone) {
            pass.next_expiry = pass.next_expiry.min(expires);
        }
        if keep.len() == p.keys.len() {
            continue;
        }
        if keep.is_empty() {
            tx.delete(k.clone());
            st.bytes = st.bytes.saturating_sub(v.len() as u64);
            pass.changed += 1;
            continue;
        }
        match compact::rewrite(v, p, &keep) {
            Ok(smaller) if smaller.len() < v.len() => {
                st.bytes = st.bytes.saturating_sub((v.len() - smaller.len()) as u64);
                tx.put(k.clone(), smaller);
                pass.changed += 1;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "compaction could not rewrite a batch"),
        }
    }
    Ok(pass)
}

/// Visits the batches in `[from, end)` in key order until `visit` returns
/// false or the range ends, reading pages of 4, 16, 64 ... up to
/// [`FETCH_BATCHES_MAX`] batches: a scan copies every value it returns, so
/// a caller that stops after a few batches copies only a few.
async fn scan_batches(
    tx: &Tx,
    mut from: Vec<u8>,
    end: &[u8],
    mut visit: impl FnMut(Vec<u8>, Vec<u8>) -> bool,
) -> Result<(), Error> {
    let mut page_len = 4;
    loop {
        let page = tx.peek_range(&from, end, page_len).await?;
        let full = page.len() == page_len;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        from = last.clone();
        from.push(0);
        for (k, v) in page {
            if !visit(k, v) {
                return Ok(());
            }
        }
        if !full {
            return Ok(());
        }
        page_len = (page_len * 4).min(FETCH_BATCHES_MAX);
    }
}

fn topic_log_range(s: &StreamRef, topic: u64) -> (Vec<u8>, Vec<u8>) {
    let start = Key::new(s.vol.id, Kind::StreamLog, s.entry.ino)
        .u64(topic)
        .build();
    let end = prefix_end(&start);
    (start, end)
}

async fn read_config(tx: &mut Tx, key: &[u8]) -> Result<StreamConfig, Error> {
    Ok(match tx.get(key).await? {
        Some(b) => decode_config(&b)?,
        None => StreamConfig::default(),
    })
}

async fn read_state(
    tx: &Tx,
    s: &StreamRef,
    t: &TopicRecord,
    part: u32,
) -> Result<PartState, Error> {
    Ok(
        match tx
            .peek(&part_key(s.vol.id, s.entry.ino, t.id, part))
            .await?
        {
            Some(b) => decode(&b, "partition state")?,
            None => PartState::default(),
        },
    )
}

fn check_group(group: &str) -> Result<(), Error> {
    if group.is_empty() || group.len() > GROUP_NAME_MAX {
        return Err(Error::invalid(format!(
            "group name: 1 to {GROUP_NAME_MAX} bytes"
        )));
    }
    Ok(())
}

/// What an append of `records` to `part` must pass before any lock is taken:
/// the partition exists, the size bound, well-formed batches.
fn check_append(
    t: &TopicRecord,
    part: u32,
    records: &[u8],
) -> Result<Vec<batch::BatchInfo>, AppendError> {
    check_partition(t, part)?;
    if records.len() > APPEND_BYTES_MAX {
        return Err(Error::new(
            Code::TooBig,
            format!(
                "{} bytes in one append; at most {APPEND_BYTES_MAX}",
                records.len()
            ),
        )
        .into());
    }
    Ok(batch::split(records).map_err(|e| Error::new(Code::BadMessage, e))?)
}

fn check_partition(t: &TopicRecord, part: u32) -> Result<(), Error> {
    if part < t.partitions {
        Ok(())
    } else {
        Err(Error::not_found(format!(
            "partition {part} (the topic has {})",
            t.partitions
        )))
    }
}

fn check_config(c: &StreamConfig) -> Result<(), Error> {
    if c.retention_ms < -1 || c.retention_bytes < -1 || c.delete_retention_ms < -1 {
        return Err(Error::invalid(
            "retention: -1 (no limit) or a positive amount",
        ));
    }
    if c.default_partitions == 0 || c.default_partitions > PARTITIONS_MAX {
        return Err(Error::invalid(format!(
            "partitions: 1 to {PARTITIONS_MAX}, not {}",
            c.default_partitions
        )));
    }
    for (what, ace) in [
        ("produce", &c.produce_ace),
        ("consume", &c.consume_ace),
        ("topic", &c.topic_ace),
        ("admin", &c.admin_ace),
    ] {
        if let Some(a) = ace {
            berth_fs::access::validate_ace(what, a)?;
        }
    }
    Ok(())
}

/// Ticket scope, volume ACE, then the stream's ACE for `right` (unset: the
/// stream's owner); administrators pass the last two.
pub fn authorize(p: &Principal, s: &StreamRef, right: Right) -> Result<(), Error> {
    let path = &s.entry.path;
    let access = match right {
        Right::Consume => Access::Read,
        Right::Produce | Right::Topic => Access::Write,
        Right::Admin => Access::Admin,
    };
    check_scope(p, path, access)?;
    if p.is_admin() {
        return Ok(());
    }
    let vol_ace = match right {
        Right::Consume => s.vol.read_ace.as_deref(),
        _ => s.vol.write_ace.as_deref(),
    };
    if let Some(expr) = vol_ace {
        if !ace_allows(expr, p) {
            return Err(Error::access(format!(
                "permission denied: volume {} ACE does not allow {} to {}",
                s.vol.path,
                p.name,
                right.name()
            )));
        }
    }
    let ace = match right {
        Right::Produce => s.config.produce_ace.as_deref(),
        Right::Consume => s.config.consume_ace.as_deref(),
        Right::Topic => s.config.topic_ace.as_deref(),
        Right::Admin => s.config.admin_ace.as_deref(),
    };
    let allowed = match ace {
        Some(expr) => ace_allows(expr, p),
        None => p.uid == s.entry.inode.uid,
    };
    if allowed {
        Ok(())
    } else {
        Err(Error::access(format!(
            "permission denied: the {} ACE of stream {path} does not allow {}",
            right.name(),
            p.name
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored batch of one record (key `key`, 1000-byte value) at `offset`.
    fn stored(offset: i64, key: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let value = [7u8; 1000];
        let mut b = batch::encode(
            &[batch::Record {
                key: Some(key),
                value: Some(&value),
            }],
            0,
            None,
        );
        b[..8].copy_from_slice(&offset.to_be_bytes());
        (offset.to_be_bytes().to_vec(), b)
    }

    fn fill(w: &mut Window, n: i64) -> usize {
        (0..n)
            .take_while(|&o| {
                let (k, v) = stored(o, if o % 2 == 0 { b"a" } else { b"b" });
                w.offer(k, v)
            })
            .count()
    }

    #[test]
    fn topic_and_kafka_names_take_kafkas_characters() {
        for ok in ["clicks", "a.b_c-d", &"x".repeat(TOPIC_NAME_MAX)] {
            assert!(valid_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "é",
            &"x".repeat(TOPIC_NAME_MAX + 1),
        ] {
            assert!(valid_topic_name(bad).is_err(), "{bad}");
        }
        for ok in ["events", "team_a-1", &"x".repeat(KAFKA_NAME_MAX)] {
            assert!(valid_kafka_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a.b", "a:b", "a b", &"x".repeat(KAFKA_NAME_MAX + 1)] {
            assert!(valid_kafka_name(bad).is_err(), "{bad}");
        }
        let e = valid_kafka_name("a.b").unwrap_err();
        assert!(e.message.contains("separates it from the topic"), "{e}");
    }

    #[test]
    fn a_compaction_window_is_bounded_by_the_bytes_it_holds() {
        // Each batch holds about 2 KB: its bytes and its records decoded.
        let mut w = Window::new(100, 5_000);
        assert_eq!(fill(&mut w, 10), 2);
        assert!(w.bytes <= 5_000, "{}", w.bytes);
        assert_eq!(w.latest.get(b"a".as_slice()), Some(&0));
        assert_eq!(w.latest.get(b"b".as_slice()), Some(&1));
        // The first batch is always taken, however large.
        let mut w = Window::new(100, 1);
        assert_eq!(fill(&mut w, 10), 1);
        // Never the batch holding the log end.
        let mut w = Window::new(3, u64::MAX);
        assert_eq!(fill(&mut w, 10), 2);
        assert_eq!(w.latest.get(b"a".as_slice()), Some(&0));
    }
}
