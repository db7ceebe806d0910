//! berth-raft — replication: every shard is a Raft group (raft-rs `RawNode`) owning a key
//! range, and one multi-raft loop per node drives all of them.
//!
//! # The loop
//! One dedicated std thread per node ([`RaftNode::start`]) owns every group. It is fed by a
//! bounded crossbeam channel (inbound messages, proposals, read requests, new shards) and a
//! single coalesced tick timer for all groups. It does no async I/O: the raft logic advances
//! only on ticks, messages and proposals. Each iteration:
//! 1. drains the channel (bounded per iteration); if the tick is due, counts peer-node
//!    liveness, sends keepalives every `heartbeat_tick` ticks and ticks every awake group;
//!    issues at most one raft ReadIndex per shard for all queued `read_index` calls;
//! 2. collects every group's `Ready` and persists all of them — log entries, hard states,
//!    received snapshots — in **one** `WriteBatch` with **one** `Durability::Sync` write
//!    (group commit; `Buffered` when raft says no sync is needed, i.e. only the commit index
//!    moved);
//! 3. only then sends messages, batched per destination: one [`Transport::send`] per peer
//!    per iteration;
//! 4. applies committed entries of all groups in one atomic batch that also records each
//!    group's applied index (`Buffered`: the log is the durable source; on restart entries
//!    after the persisted applied index are applied again), then completes waiters.
//!
//! # Hibernation
//! An idle group stops ticking (see the `hibernate` module for the protocol and the raft-rs
//! reasoning). A single-voter group sleeps as soon as it leads with nothing in flight. A
//! multi-voter group sleeps only with node-level liveness watching over it:
//! - the loop sends one empty batch to every peer node it shares a group with every
//!   `heartbeat_tick` ticks, and the transport reports every batch it receives (empty or
//!   not) with [`RaftNode::peer_alive`]; a peer silent for [`Config::peer_timeout`] is dead;
//! - a leader quiescent for [`Config::hibernate_after_ticks`] ticks (nothing pending,
//!   commit = applied = every voter's match index = last index, every voter's node alive)
//!   flags its heartbeats "sleep", and stops ticking once every follower answered "asleep";
//!   a caught-up follower sleeps on its leader's "sleep" heartbeat;
//! - a proposal, a read, any other message for the group, or the death of the node it depends
//!   on (a follower's leader, a leader's voter) wakes it; a woken leader restarts its
//!   check-quorum window and heartbeats at once, a follower woken by anything but its leader
//!   wakes the leader.
//!
//! The flags travel in raft heartbeats (protobuf field [`HIBERNATE_FIELD`]). A sleeping
//! group sends nothing and costs a tick only a flag check. Failover of a sleeping group takes
//! up to `peer_timeout` longer than of an awake one (its followers must first notice the
//! death). A transport that never calls `peer_alive` stays correct — stepped messages count
//! as proof of life too — but then idle peers look dead after `peer_timeout` and their
//! groups wake, heartbeat, and fall asleep again, over and over.
//!
//! # Persistence
//! See the `storage` module: log in `Space::RaftLog` (`shard_id BE · index BE`, each entry
//! checksummed and verified when read), hard/apply/log state and the [`ShardDesc`] in
//! `Space::RaftState`, state-machine data in `Space::Data` under the cluster key itself.
//! After a group's applied index passes `log_compact_threshold` entries beyond its first log
//! index, the applied prefix of its log is deleted. Snapshots are built from a consistent
//! store snapshot of the shard's range + apply state (`version · crc32 · postcard`) and
//! installed atomically (range delete + puts + raft state, in the Sync group commit).
//!
//! # Invariants
//! - Nothing is acknowledged before it is durable on a majority and applied locally.
//! - A multi-voter group sleeps only when every voter has the whole log and a live node, and
//!   wakes when one of the nodes it depends on dies; a follower never campaigns while asleep.
//! - A proposal's waiter succeeds only when the entry at exactly the (index, term) it was
//!   appended at is applied; if leadership is lost first it gets an error, never a success.
//! - No write outside a shard's key range: checked at propose time and again at apply time.
//! - An undecodable committed entry (or any raft-rs invariant panic) stops that group loudly;
//!   it is never skipped. A failed store write stops the whole loop (the store is poisoned).
//!
//! # Membership
//! [`RaftNode::change_membership`] proposes raft-rs `ConfChangeV2`s, one at a time per
//! group (a second one while another is pending, or while joint, is refused up front:
//! raft-rs would silently turn it into an empty entry). A new replica is created empty with
//! [`RaftNode::create_replica`] (no configuration: it never campaigns) and added as a
//! learner; the leader first compacts a log that still starts at index 1, so the learner's
//! state and configuration come from a snapshot that names it (raft-rs rejects a snapshot
//! whose configuration lacks the receiver). Voter changes go through joint consensus, left
//! automatically; a leader that finds its group joint with nothing pending (the leader that
//! entered it died first) leaves it. A leader never removes or demotes itself: transfer
//! leadership first ([`RaftNode::transfer_leader`]). A replica that applies its own removal
//! is destroyed (log, raft state and the data of its range, in one durable write), at once
//! or at the next start, so a removed leader cannot keep heartbeating; one removed while it
//! could not hear it is destroyed by the cluster layer ([`RaftNode::destroy_replica`]).
//! Groups with learners or in a joint configuration never hibernate.
//!
//! # Reads
//! [`RaftNode::read_index`] works on every replica: a follower's goes to its leader (raft
//! `MsgReadIndex`) and completes once the follower applied the index the leader confirmed,
//! so any replica serves linearizable reads from its own store.
//!
//! # Not handled yet
//! - A node receiving messages for a shard it has no replica of drops them: replicas are
//!   created by the cluster layer ([`RaftNode::create_shard`], [`RaftNode::create_replica`]).
//! - Snapshots are built in memory whole (the server's transport sends them in paced chunks); the
//!   loop reports a snapshot finished as soon as the transport took it.

mod blob_gc;
pub mod cmd;
mod hibernate;
mod logger;
mod node;
mod snapshot;
mod storage;

use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Message;
use serde::{Deserialize, Serialize};

pub use node::{RaftNode, ShardSnapshot, SnapshotReport};
pub use snapshot::{SnapshotSink, SnapshotSource, SNAPSHOT_CHUNK_BYTES};

/// Identifies a shard (one Raft group) cluster-wide.
pub type ShardId = u64;
/// Identifies a node (one `berth server` process) cluster-wide; never 0.
pub type NodeId = u64;

/// A shard: its id, the key range it owns, and its voters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDesc {
    /// Shard id.
    pub id: ShardId,
    /// Inclusive start of the key range.
    pub start: Vec<u8>,
    /// Exclusive end of the key range; empty = unbounded.
    pub end: Vec<u8>,
    /// The voters the group was created with (empty for a replica added to an existing
    /// group). The group's current configuration is in [`ShardStatus::membership`].
    pub voters: Vec<NodeId>,
}

impl ShardDesc {
    /// True when `key` lies in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }

    /// True when `[start, end)` (empty `end` = unbounded) lies inside the shard's range. An
    /// empty range (`start >= end`) touches no key and is always inside.
    pub fn contains_range(&self, start: &[u8], end: &[u8]) -> bool {
        if !end.is_empty() && start >= end {
            return true;
        }
        let end_ok = if self.end.is_empty() {
            true
        } else {
            !end.is_empty() && end <= self.end.as_slice()
        };
        start >= self.start.as_slice() && end_ok
    }

    /// True when the two shards' ranges intersect.
    pub fn overlaps(&self, other: &ShardDesc) -> bool {
        let a_before_b = !self.end.is_empty() && self.end <= other.start;
        let b_before_a = !other.end.is_empty() && other.end <= self.start;
        !(a_before_b || b_before_a)
    }

    /// Clamps `[start, end)` to the shard's range.
    pub fn clamp(&self, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let s = if start < self.start.as_slice() {
            self.start.clone()
        } else {
            start.to_vec()
        };
        let e = match (end.is_empty(), self.end.is_empty()) {
            (true, _) => self.end.clone(),
            (false, true) => end.to_vec(),
            (false, false) => end.min(self.end.as_slice()).to_vec(),
        };
        (s, e)
    }
}

/// Sends raft messages to other nodes.
pub trait Transport: Send + Sync + 'static {
    /// Sends `msgs` to node `to`. Must not block; may drop (raft retries). Every message
    /// carries its shard id (see [`message_shard`]); snapshot messages may be large. An
    /// empty `msgs` is a node keepalive and must be delivered like any batch: the receiving
    /// side calls [`RaftNode::peer_alive`] for every batch, empty or not, before stepping it.
    fn send(&self, to: NodeId, msgs: Vec<Message>);

    /// Sends one snapshot message (never in a batch given to [`Transport::send`]) and says
    /// through `report` whether it reached `to`'s raft loop. Until then raft sends that
    /// follower neither entries nor another snapshot of the shard, so a large snapshot is
    /// generated and sent once, however long it takes. Dropping `report` unused counts as
    /// a failure; a transport dropping a second snapshot of a shard while one is on its
    /// way calls [`SnapshotReport::superseded`] (the first one's report stands for both).
    ///
    /// `msg` carries only the snapshot's head; its pairs come from `source`, chunk by chunk
    /// ([`SnapshotSource::next_chunk`], blocking reads: run it off the loop and off async
    /// executors), and go to the receiver's [`RaftNode::snapshot_sink`]. The default reads
    /// them all into the message (on the calling thread) and hands it to
    /// [`Transport::send`]: for in-process transports.
    fn send_snapshot(
        &self,
        to: NodeId,
        msg: Message,
        source: SnapshotSource,
        report: SnapshotReport,
    ) {
        match snapshot::inline(msg, source) {
            Ok(m) => {
                self.send(to, vec![m]);
                report.done(true);
            }
            Err(e) => {
                tracing::warn!(to, error = %e, "reading a snapshot's data failed");
                report.done(false);
            }
        }
    }
}

/// Node-wide raft settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (non-zero).
    pub node_id: NodeId,
    /// Length of one raft tick.
    pub tick_interval: Duration,
    /// Ticks without a leader before a follower campaigns.
    pub election_tick: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_tick: usize,
    /// Append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// Bytes of entries per append message.
    pub max_size_per_msg: u64,
    /// Applied entries kept in a group's log before its prefix is deleted.
    pub log_compact_threshold: u64,
    /// How long `propose` and `read_index` wait.
    pub propose_timeout: Duration,
    /// Consecutive quiescent ticks after which a multi-voter leader starts putting its group
    /// to sleep; 0 keeps multi-voter groups always awake.
    pub hibernate_after_ticks: usize,
    /// A peer node from which nothing (not even a keepalive) arrived for this long is dead.
    /// `None` = 2 × `election_tick` × `tick_interval`; see [`Config::effective_peer_timeout`].
    /// Must span at least two keepalive intervals (`heartbeat_tick` ticks each).
    pub peer_timeout: Option<Duration>,
    /// How often dead blob segments are looked for; a segment is deleted at
    /// the second pass that finds it dead (see `blob_gc`). Zero disables the
    /// background passes ([`RaftNode::collect_blobs`] still works).
    pub blob_gc_interval: Duration,
    /// Bytes of a staged snapshot's pairs installed per loop iteration (see the
    /// `snapshot` module): larger installs faster, smaller keeps other groups' iterations
    /// shorter. Zero holds installs where they are (for tests of restarts mid-install).
    pub snapshot_install_slice_bytes: usize,
}

impl Config {
    /// Defaults for a node: 100 ms ticks, elections after 10 ticks, heartbeats (and peer
    /// keepalives) every 2, hibernation after 20 idle ticks, peers dead after 2 election
    /// timeouts of silence.
    pub fn new(node_id: NodeId) -> Config {
        Config {
            node_id,
            tick_interval: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            max_inflight_msgs: 256,
            max_size_per_msg: 1024 * 1024,
            log_compact_threshold: 10_000,
            propose_timeout: Duration::from_secs(10),
            hibernate_after_ticks: 20,
            peer_timeout: None,
            blob_gc_interval: Duration::from_secs(30),
            snapshot_install_slice_bytes: snapshot::INSTALL_SLICE_BYTES,
        }
    }

    /// The peer timeout in effect: [`Config::peer_timeout`] or its default, 2 ×
    /// `election_tick` × `tick_interval`.
    pub fn effective_peer_timeout(&self) -> Duration {
        self.peer_timeout.unwrap_or_else(|| {
            self.tick_interval.saturating_mul(
                u32::try_from(self.election_tick.saturating_mul(2)).unwrap_or(u32::MAX),
            )
        })
    }

    /// The peer timeout in ticks, rounded up.
    pub(crate) fn peer_timeout_ticks(&self) -> u64 {
        let tick = self.tick_interval.as_nanos().max(1);
        let ticks = self.effective_peer_timeout().as_nanos().div_ceil(tick);
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }
}

/// Errors of the replication layer.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// This node is not the shard's leader; `leader` is a hint. Returned by `propose` either
    /// before the proposal was appended, or when leadership was lost while it was pending (then
    /// the outcome is unknown: it may still commit under the new leader).
    #[error("shard {shard}: not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The shard.
        shard: ShardId,
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// The shard has no replica on this node.
    #[error("shard {0} not found on this node")]
    ShardNotFound(ShardId),
    /// A key or range lies outside the shard's range.
    #[error("shard {shard}: key outside the shard's range")]
    KeyOutOfRange {
        /// The shard.
        shard: ShardId,
    },
    /// The node is shutting down or its loop stopped.
    #[error("raft node stopped")]
    Stopped,
    /// No answer within the timeout (or the loop's queue was full); the outcome is unknown.
    #[error("raft request timed out")]
    Timeout,
    /// The node store failed.
    #[error("store: {0}")]
    Store(#[from] berth_store::StoreError),
    /// The node store is poisoned after a failed fsync; the node must restart.
    #[error("node store poisoned after a failed write; restart the node")]
    Poisoned,
    /// An invariant was violated (the affected group is stopped) or a codec failed.
    #[error("internal: {0}")]
    Internal(String),
    /// A membership change was refused before it was proposed: another one is pending, the
    /// group is joint, or the change is not valid for the configuration (the text says which).
    #[error("shard {shard}: membership change refused: {why}")]
    ConfChangeRefused {
        /// The shard.
        shard: ShardId,
        /// Why.
        why: String,
    },
}

impl RaftError {
    /// True when the same request may succeed if retried (possibly on another node). Note
    /// that a retried `propose` may apply twice unless its conditions make it idempotent.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RaftError::NotLeader { .. } | RaftError::Timeout | RaftError::Stopped
        )
    }

    pub(crate) fn from_store(e: berth_store::StoreError) -> RaftError {
        match e {
            berth_store::StoreError::Poisoned => RaftError::Poisoned,
            e => RaftError::Store(e),
        }
    }
}

/// A group's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Leader.
    Leader,
    /// Follower.
    Follower,
    /// Campaigning.
    Candidate,
    /// Pre-vote campaign.
    PreCandidate,
}

/// A snapshot of one group's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardStatus {
    /// Shard id.
    pub id: ShardId,
    /// Role of this replica.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Leader, if known.
    pub leader: Option<NodeId>,
    /// Asleep: not ticking (see Hibernation in the crate docs). A leader waiting for its
    /// followers to acknowledge sleep is still awake.
    pub hibernating: bool,
    /// First index still in the log.
    pub log_first: u64,
    /// Last index in the log.
    pub log_last: u64,
    /// Set when the group was stopped by a fatal error; the reason.
    pub stopped: Option<String>,
    /// The group's configuration as this replica last applied it.
    pub membership: Membership,
    /// A membership change was proposed and is not applied yet (leader's view; may be a
    /// false positive right after an election).
    pub conf_pending: bool,
    /// Installing a received snapshot's data: no read is answered until it is done.
    pub installing: bool,
    /// Leader only: how far each other replica's log is known to match (voters and
    /// learners), and whether it is being sent a snapshot.
    pub progress: Vec<PeerProgress>,
}

/// A group's configuration: voters, learners and, while it is in a joint
/// configuration, the outgoing voters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Voters (of the incoming configuration while joint).
    pub voters: Vec<NodeId>,
    /// Learners (replicas that receive the log but do not vote).
    pub learners: Vec<NodeId>,
    /// Voters of the outgoing configuration; not empty only while joint.
    pub voters_outgoing: Vec<NodeId>,
    /// Voters that become learners when the joint configuration is left.
    pub learners_next: Vec<NodeId>,
}

impl Membership {
    /// True while the group is in a joint configuration.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// True when `node` holds a replica of the group in this configuration.
    pub fn contains(&self, node: NodeId) -> bool {
        self.voters.contains(&node)
            || self.learners.contains(&node)
            || self.voters_outgoing.contains(&node)
            || self.learners_next.contains(&node)
    }

    /// Every node holding a replica, once each, sorted.
    pub fn replicas(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .voters
            .iter()
            .chain(&self.learners)
            .chain(&self.voters_outgoing)
            .chain(&self.learners_next)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    pub(crate) fn from_conf_state(cs: &raft::eraftpb::ConfState) -> Membership {
        let sorted = |v: &[u64]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v
        };
        Membership {
            voters: sorted(&cs.voters),
            learners: sorted(&cs.learners),
            voters_outgoing: sorted(&cs.voters_outgoing),
            learners_next: sorted(&cs.learners_next),
        }
    }
}

/// A leader's view of one other replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    /// The replica's node.
    pub node: NodeId,
    /// Highest log index known to match the leader's.
    pub matched: u64,
    /// Being sent a snapshot.
    pub snapshot: bool,
}

/// One step of a membership change (see [`RaftNode::change_membership`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Adds a learner: a replica that receives the log (first a snapshot) and does not vote.
    AddLearner(NodeId),
    /// Makes a node a voter (a learner is promoted).
    AddVoter(NodeId),
    /// Makes a voter a learner.
    Demote(NodeId),
    /// Removes a voter or learner.
    Remove(NodeId),
}

/// Counters since the node started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaftMetrics {
    /// Loop iterations.
    pub loop_iterations: u64,
    /// Raft `Ready`s handled.
    pub readies: u64,
    /// Group-commit writes.
    pub persist_batches: u64,
    /// Log entries persisted.
    pub entries_persisted: u64,
    /// Proposals submitted.
    pub proposals: u64,
    /// Proposals that ended in an error.
    pub proposals_failed: u64,
    /// Raft messages handed to the transport.
    pub messages_sent: u64,
    /// Snapshot messages handed to the transport.
    pub snapshots_sent: u64,
    /// Snapshots received and installed.
    pub snapshots_applied: u64,
    /// Time spent in group-commit writes, microseconds.
    pub persist_micros_total: u64,
    /// Groups that fell asleep (stopped ticking).
    pub hibernations: u64,
    /// Sleeping groups woken up.
    pub wakeups: u64,
    /// Empty keepalive batches handed to the transport (one per peer node per
    /// `heartbeat_tick` ticks).
    pub keepalives_sent: u64,
    /// Membership changes applied (every replica counts each).
    pub conf_changes_applied: u64,
    /// Replicas of this node destroyed (removed from their group).
    pub replicas_destroyed: u64,
    /// Bytes of keys and values written by installs of staged snapshots.
    pub snapshot_bytes_installed: u64,
}

/// Version byte of [`encode_message`].
pub const MESSAGE_FORMAT_VERSION: u8 = 1;
/// Protobuf field number carrying the shard id inside a raft `Message` (a field raft-rs does
/// not know; protobuf keeps it as an unknown field through encode and decode).
pub const SHARD_ID_FIELD: u32 = 1000;

/// Protobuf field number carrying a hibernation flag inside a raft `Message` (unknown to
/// raft-rs, like [`SHARD_ID_FIELD`]): 1 = "going to sleep" on a leader's heartbeat, 2 =
/// "asleep" on a follower's heartbeat response, 3 = "wake up" (a heartbeat response the loop
/// handles itself and never steps into raft). A node that ignores it stays correct: its
/// groups just never sleep.
pub const HIBERNATE_FIELD: u32 = 1001;

/// The shard a message belongs to.
pub fn message_shard(m: &Message) -> Option<ShardId> {
    m.unknown_fields
        .get(SHARD_ID_FIELD)
        .and_then(|v| v.varint.first().copied())
}

/// Tags a message with its shard.
pub fn set_message_shard(m: &mut Message, shard: ShardId) {
    m.mut_unknown_fields().remove(SHARD_ID_FIELD);
    m.mut_unknown_fields().add_varint(SHARD_ID_FIELD, shard);
}

/// Encodes a raft message for the wire: `version (u8 = 1) · protobuf bytes`.
pub fn encode_message(m: &Message) -> Vec<u8> {
    let mut out = vec![MESSAGE_FORMAT_VERSION];
    match m.write_to_bytes() {
        Ok(b) => out.extend_from_slice(&b),
        // proto3 messages without required fields always encode; keep the frame decodable.
        Err(e) => tracing::error!(error = %e, "raft message failed to encode"),
    }
    out
}

/// Decodes a message produced by [`encode_message`].
pub fn decode_message(bytes: &[u8]) -> Result<Message, RaftError> {
    match bytes.split_first() {
        Some((&MESSAGE_FORMAT_VERSION, rest)) => Message::parse_from_bytes(rest)
            .map_err(|e| RaftError::Internal(format!("undecodable raft message: {e}"))),
        Some((v, _)) => Err(RaftError::Internal(format!(
            "unknown raft message format version {v}"
        ))),
        None => Err(RaftError::Internal("empty raft message".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, MessageType};

    #[test]
    fn message_roundtrip_keeps_shard() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 7;
        let e = Entry {
            index: 9,
            data: b"payload".to_vec().into(),
            ..Entry::default()
        };
        m.mut_entries().push(e);
        set_message_shard(&mut m, 42);
        let d = decode_message(&encode_message(&m)).unwrap();
        assert_eq!(message_shard(&d), Some(42));
        assert_eq!(d.term, 7);
        assert_eq!(&d.entries[0].data[..], b"payload");
        assert!(decode_message(&[]).is_err());
        assert!(decode_message(&[9, 1, 2]).is_err());
        assert!(decode_message(&[1, 0xFF, 0xFF]).is_err());
    }

    #[test]
    fn ranges() {
        let d = ShardDesc {
            id: 1,
            start: b"b".to_vec(),
            end: b"d".to_vec(),
            voters: vec![1],
        };
        assert!(d.contains(b"b") && d.contains(b"c\xff") && !d.contains(b"d") && !d.contains(b"a"));
        assert!(
            d.contains_range(b"b", b"d")
                && !d.contains_range(b"b", b"")
                && !d.contains_range(b"a", b"c")
        );
        assert!(d.contains_range(b"z", b"a"));
        assert_eq!(d.clamp(b"", b""), (b"b".to_vec(), b"d".to_vec()));
        assert_eq!(d.clamp(b"c", b"cc"), (b"c".to_vec(), b"cc".to_vec()));
        let u = ShardDesc {
            id: 2,
            start: b"d".to_vec(),
            end: Vec::new(),
            voters: vec![1],
        };
        assert!(!d.overlaps(&u) && u.contains_range(b"x", b"") && u.overlaps(&u));
    }
}
