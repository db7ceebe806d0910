//! The node handle ([`RaftNode`]) and the multi-raft loop it starts.
//!
//! The loop ([`Core`]) is plain, single-threaded code: `handle` (one command), `tick` (one
//! coalesced tick for all groups, peer liveness and keepalives included) and `process` (one
//! round of ready handling). The thread around it only decides *when* to call them, so the
//! raft logic sees no clock: node liveness is counted in ticks, and `peer_alive` only sets a
//! flag the next tick reads.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_store::{Durability, KvPairs, Space, Store, StoreError, WriteBatch};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry,
    EntryType, Message, MessageType,
};
use raft::{RawNode, ReadOnlyOption, ReadState, SnapshotStatus, StateRole};
use tokio::sync::{oneshot, watch};

use crate::blob_gc::BlobGc;
use crate::cmd::{self, ApplyResult, Txn, TxnOutcome};
use crate::hibernate::{self, PeerLiveness, Signal};
use crate::snapshot::{self, StagedReader};
use crate::storage::{self, ShardStorage};
use crate::{
    message_shard, set_message_shard, Config, MemberChange, Membership, NodeId, PeerProgress,
    RaftError, RaftMetrics, Role, ShardDesc, ShardId, ShardStatus, Transport,
};

/// Commands queued to the loop.
const QUEUE_CAPACITY: usize = 65_536;
/// Commands handled per iteration before readies are processed.
const COMMANDS_PER_ITERATION_MAX: usize = 4_096;
/// Proposals waiting per group.
const PENDING_PROPOSALS_MAX: usize = 65_536;
/// Read requests waiting per group.
const PENDING_READS_MAX: usize = 65_536;
/// Largest encoded transaction.
pub const TXN_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes of committed entries handed to apply per group per iteration.
const COMMITTED_BYTES_PER_READY_MAX: u64 = 16 * 1024 * 1024;
/// How long `shutdown` waits to enqueue its stop command.
const SHUTDOWN_SEND_TIMEOUT: Duration = Duration::from_secs(5);

type Reply<T> = oneshot::Sender<Result<T, RaftError>>;

enum Cmd {
    Step(Vec<Message>),
    /// A snapshot message whose pairs this node staged (see `crate::snapshot`).
    StepSnapshot(Message),
    Propose {
        shard: ShardId,
        /// The encoded transaction (what raft replicates).
        data: Vec<u8>,
        /// Its stored form when the proposer already wrote its bulk bytes
        /// to this node's blobs (see `cmd::offload_txn`).
        stored: Option<cmd::Stored>,
        reply: Reply<TxnOutcome>,
    },
    ReadIndex {
        shard: ShardId,
        reply: Reply<()>,
    },
    AddShard(ShardDesc),
    /// Proposes a membership change; an empty list leaves a joint configuration.
    ChangeMembership {
        shard: ShardId,
        changes: Vec<MemberChange>,
        reply: Reply<Membership>,
    },
    TransferLeader {
        shard: ShardId,
        to: NodeId,
        reply: Reply<()>,
    },
    /// Deletes this node's replica of a shard (all its state).
    Destroy {
        shard: ShardId,
        reply: Reply<()>,
    },
    Shutdown,
}

/// Tells the raft loop what became of one snapshot message (see
/// [`crate::Transport::send_snapshot`]). Dropped unused, it reports a failure.
pub struct SnapshotReport {
    tx: Option<Sender<SnapshotSent>>,
    shard: ShardId,
    to: NodeId,
}

impl SnapshotReport {
    /// The snapshot reached the follower's raft loop (`true`), or was lost.
    pub fn done(mut self, delivered: bool) {
        self.send(delivered);
    }

    /// Another snapshot of the shard to the same node is on its way, and its
    /// report answers for this one: nothing is reported.
    pub fn superseded(mut self) {
        self.tx = None;
    }

    fn send(&mut self, delivered: bool) {
        if let Some(tx) = self.tx.take() {
            // Closed: the loop is gone.
            let _ = tx.try_send(SnapshotSent {
                shard: self.shard,
                to: self.to,
                delivered,
            });
        }
    }
}

/// Whether a snapshot of `shard` sent to `to` reached it.
struct SnapshotSent {
    shard: ShardId,
    to: NodeId,
    delivered: bool,
}

impl Drop for SnapshotReport {
    fn drop(&mut self) {
        self.send(false);
    }
}

#[derive(Default)]
struct Metrics {
    loop_iterations: AtomicU64,
    readies: AtomicU64,
    persist_batches: AtomicU64,
    entries_persisted: AtomicU64,
    proposals: AtomicU64,
    proposals_failed: AtomicU64,
    messages_sent: AtomicU64,
    snapshots_sent: AtomicU64,
    snapshots_applied: AtomicU64,
    persist_micros_total: AtomicU64,
    hibernations: AtomicU64,
    wakeups: AtomicU64,
    keepalives_sent: AtomicU64,
    conf_changes_applied: AtomicU64,
    replicas_destroyed: AtomicU64,
    snapshot_bytes_installed: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

struct ShardEntry {
    desc: ShardDesc,
    status: ShardStatus,
    applied: Arc<watch::Sender<u64>>,
}

/// State shared by the handles and the loop thread.
struct Shared {
    shards: RwLock<BTreeMap<ShardId, ShardEntry>>,
    metrics: Metrics,
    stopped: AtomicBool,
    /// Peer nodes sharing a group with this node (entries added by the loop only) and
    /// whether anything arrived from them since the loop's last tick.
    peers_heard: RwLock<BTreeMap<NodeId, AtomicBool>>,
    /// Peer nodes heard from within `peer_timeout` (as of the loop's last tick).
    alive: RwLock<BTreeSet<NodeId>>,
}

impl Shared {
    fn insert_shard(&self, desc: ShardDesc) {
        let mut shards = self.shards.write();
        let id = desc.id;
        let voters = desc.voters.clone();
        shards.entry(id).or_insert_with(|| ShardEntry {
            desc,
            status: ShardStatus {
                id,
                role: Role::Follower,
                term: 0,
                commit: 0,
                applied: 0,
                leader: None,
                hibernating: false,
                log_first: 0,
                log_last: 0,
                stopped: None,
                membership: Membership {
                    voters,
                    ..Membership::default()
                },
                conf_pending: false,
                installing: false,
                progress: Vec::new(),
            },
            applied: Arc::new(watch::channel(0).0),
        });
    }
}

struct NodeInner {
    node_id: NodeId,
    shared: Arc<Shared>,
    tx: Sender<Cmd>,
    store: Arc<Store>,
    propose_timeout: Duration,
    thread: Mutex<Option<JoinHandle<()>>>,
    create_lock: Mutex<()>,
    blob_gc: Arc<Mutex<BlobGc>>,
    gc_thread: Mutex<Option<JoinHandle<()>>>,
}

impl NodeInner {
    fn stop(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Some(gc) = self.gc_thread.lock().take() {
            if gc.thread().id() != std::thread::current().id() {
                let _ = gc.join();
            }
        }
        let Some(handle) = self.thread.lock().take() else {
            return;
        };
        let _ = self.tx.send_timeout(Cmd::Shutdown, SHUTDOWN_SEND_TIMEOUT);
        // The last handle may be dropped on the loop thread itself (a transport holding
        // nodes): never join yourself.
        if handle.thread().id() != std::thread::current().id() {
            let _ = handle.join();
        }
    }
}

impl Drop for NodeInner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cheap, cloneable handle to this node's multi-raft loop. Dropping the last handle stops
/// the loop.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<NodeInner>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("node_id", &self.inner.node_id)
            .finish()
    }
}

impl RaftNode {
    /// Restores every shard persisted in `store` and spawns the loop thread.
    pub fn start(
        store: Arc<Store>,
        cfg: Config,
        transport: Arc<dyn Transport>,
    ) -> Result<RaftNode, RaftError> {
        if cfg.node_id == 0 {
            return Err(RaftError::Internal("node id must not be 0".into()));
        }
        if cfg.tick_interval.is_zero()
            || cfg.heartbeat_tick == 0
            || cfg.election_tick <= cfg.heartbeat_tick
        {
            return Err(RaftError::Internal(
                "need tick_interval > 0 and election_tick > heartbeat_tick > 0".into(),
            ));
        }
        let peer_timeout_ticks = cfg.peer_timeout_ticks();
        if peer_timeout_ticks < 2 * cfg.heartbeat_tick as u64 {
            return Err(RaftError::Internal(format!(
                "peer_timeout ({:?}) must span at least two keepalive intervals \
                 (2 x heartbeat_tick x tick_interval)",
                cfg.effective_peer_timeout()
            )));
        }
        let shared = Arc::new(Shared {
            shards: RwLock::new(BTreeMap::new()),
            metrics: Metrics::default(),
            stopped: AtomicBool::new(false),
            peers_heard: RwLock::new(BTreeMap::new()),
            alive: RwLock::new(BTreeSet::new()),
        });
        let mut core = Core {
            node_id: cfg.node_id,
            snapshots_sent: crossbeam_channel::unbounded(),
            cfg: cfg.clone(),
            store: store.clone(),
            transport,
            shared: shared.clone(),
            logger: crate::logger::root(cfg.node_id),
            groups: BTreeMap::new(),
            read_ctx_prefix: read_ctx_prefix(&store, cfg.node_id)?,
            next_read_ctx: 1,
            touched: BTreeSet::new(),
            fatal: false,
            liveness: PeerLiveness::new(peer_timeout_ticks),
            ticks: 0,
            wake_out: Vec::new(),
            staged: Vec::new(),
        };
        for desc in storage::load_descs(&store).map_err(RaftError::from_store)? {
            shared.insert_shard(desc.clone());
            core.add_group_or_mark(desc);
        }
        core.remove_unused_staged();
        core.publish_status();
        let (tx, rx) = bounded(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name(format!("raft-loop-{}", cfg.node_id))
            .spawn(move || core.run(rx))
            .map_err(|e| RaftError::Internal(format!("spawn raft loop: {e}")))?;
        let blob_gc = Arc::new(Mutex::new(BlobGc::default()));
        let gc_thread = if cfg.blob_gc_interval.is_zero() {
            None
        } else {
            let (store, shared, gc, every) = (
                store.clone(),
                shared.clone(),
                blob_gc.clone(),
                cfg.blob_gc_interval,
            );
            let spawned = std::thread::Builder::new()
                .name(format!("blob-gc-{}", cfg.node_id))
                .spawn(move || blob_gc_loop(&store, &shared, &gc, every));
            match spawned {
                Ok(h) => Some(h),
                Err(e) => {
                    // Space is not reclaimed; everything else works.
                    tracing::error!(error = %e, "cannot start the blob collector");
                    None
                }
            }
        };
        Ok(RaftNode {
            inner: Arc::new(NodeInner {
                node_id: cfg.node_id,
                shared,
                tx,
                store,
                propose_timeout: cfg.propose_timeout,
                thread: Mutex::new(Some(thread)),
                create_lock: Mutex::new(()),
                blob_gc,
                gc_thread: Mutex::new(gc_thread),
            }),
        })
    }

    /// Runs one pass of the blob collector now (see `blob_gc`); returns the
    /// segments deleted. A segment goes at the second pass that finds it dead.
    pub fn collect_blobs(&self) -> Result<usize, RaftError> {
        self.inner
            .blob_gc
            .lock()
            .pass(&self.inner.store)
            .map_err(RaftError::from_store)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Creates a replica of a new shard on this node. Idempotent: an identical descriptor is
    /// accepted again; a different one with the same id, or one overlapping another shard, is
    /// refused. The initial state (conf state = `desc.voters`, empty log) is durable before
    /// this returns. This node must be one of the voters.
    pub fn create_shard(&self, desc: ShardDesc) -> Result<(), RaftError> {
        let node = self.inner.node_id;
        if desc.voters.is_empty() || !desc.voters.contains(&node) {
            return Err(RaftError::Internal(format!(
                "shard {}: node {node} is not among voters {:?}",
                desc.id, desc.voters
            )));
        }
        if self.was_removed(desc.id)? {
            return Err(RaftError::Internal(format!(
                "shard {}: this node's replica was removed from the group",
                desc.id
            )));
        }
        self.create(desc)
    }

    /// Whether this node's replica of `shard` was removed from its group (destroyed) and not
    /// added again since: a shard's first configuration naming this node must not bring it
    /// back (the cluster map may not show the removal yet).
    pub fn was_removed(&self, shard: ShardId) -> Result<bool, RaftError> {
        storage::removed(&self.inner.store, shard).map_err(RaftError::from_store)
    }

    /// Creates an empty replica of an existing shard on this node, to be added to the group
    /// with [`RaftNode::change_membership`] (`AddLearner`) by its leader: it has no
    /// configuration, never campaigns, and takes its whole state from the first snapshot
    /// the leader sends (the leader makes sure one is needed). `desc.voters` must be empty.
    /// Idempotent like [`RaftNode::create_shard`].
    pub fn create_replica(&self, desc: ShardDesc) -> Result<(), RaftError> {
        if !desc.voters.is_empty() {
            return Err(RaftError::Internal(format!(
                "shard {}: an added replica starts without voters (got {:?})",
                desc.id, desc.voters
            )));
        }
        self.create(desc)
    }

    fn create(&self, desc: ShardDesc) -> Result<(), RaftError> {
        let mut voters = desc.voters.clone();
        voters.sort_unstable();
        voters.dedup();
        if voters.len() != desc.voters.len() || voters.contains(&0) {
            return Err(RaftError::Internal(format!(
                "shard {}: voters must be distinct and non-zero",
                desc.id
            )));
        }
        if !desc.end.is_empty() && desc.start >= desc.end {
            return Err(RaftError::Internal(format!(
                "shard {}: empty key range",
                desc.id
            )));
        }
        let _guard = self.inner.create_lock.lock();
        {
            let shards = self.inner.shared.shards.read();
            if let Some(e) = shards.get(&desc.id) {
                return if e.desc == desc {
                    Ok(())
                } else {
                    Err(RaftError::Internal(format!(
                        "shard {} exists with another descriptor",
                        desc.id
                    )))
                };
            }
            if let Some(e) = shards.values().find(|e| e.desc.overlaps(&desc)) {
                return Err(RaftError::Internal(format!(
                    "shard {} overlaps shard {}",
                    desc.id, e.desc.id
                )));
            }
        }
        if self.inner.shared.stopped.load(Ordering::SeqCst) {
            return Err(RaftError::Stopped);
        }
        ShardStorage::create(&self.inner.store, &desc).map_err(RaftError::from_store)?;
        self.inner.shared.insert_shard(desc.clone());
        self.inner
            .tx
            .send(Cmd::AddShard(desc))
            .map_err(|_| RaftError::Stopped)
    }

    /// True when this node holds a replica of `shard` (of any role).
    pub fn has_replica(&self, shard: ShardId) -> bool {
        self.inner.shared.shards.read().contains_key(&shard)
    }

    /// The logical size of every replica on this node (its key range's keys
    /// and values, blobs at their length), from one consistent view of the
    /// store. Walks every key: call it off the async runtime, and rarely.
    pub fn replica_bytes(&self) -> Result<Vec<(ShardId, u64)>, StoreError> {
        let view = self.inner.store.snapshot();
        self.shards()
            .into_iter()
            .map(|d| Ok((d.id, view.range_bytes(Space::Data, &d.start, &d.end)?)))
            .collect()
    }

    /// Descriptors of every shard with a replica on this node.
    pub fn shards(&self) -> Vec<ShardDesc> {
        self.inner
            .shared
            .shards
            .read()
            .values()
            .map(|e| e.desc.clone())
            .collect()
    }

    /// Proposes a membership change of `shard` (this node must lead it) and resolves once
    /// it is applied here, with the new configuration. One change at a time: it is refused
    /// (nothing proposed) while another is pending or while the group is joint, except the
    /// empty list, which leaves a joint configuration.
    ///
    /// - Learners are added and removed in one simple step. The leader first makes sure a
    ///   new learner needs a snapshot (its log must not start at index 1), so the learner's
    ///   configuration always comes from a snapshot that names it.
    /// - Any change of voters (`AddVoter`, `Demote`, removing a voter) goes through joint
    ///   consensus, left automatically once the change is applied; should that leave be lost
    ///   (a leader change in between), the next leader leaves it (see `Core::tick`).
    /// - The leader cannot remove or demote itself: transfer leadership first.
    pub async fn change_membership(
        &self,
        shard: ShardId,
        changes: Vec<MemberChange>,
    ) -> Result<Membership, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.try_send(Cmd::ChangeMembership {
            shard,
            changes,
            reply: tx,
        })?;
        self.wait(rx).await
    }

    /// Asks the leader of `shard` (this node) to hand leadership to voter `to`. Resolves
    /// when the transfer was started; it completes (or is abandoned after an election
    /// timeout) asynchronously: watch [`RaftNode::leader`].
    pub async fn transfer_leader(&self, shard: ShardId, to: NodeId) -> Result<(), RaftError> {
        let (tx, rx) = oneshot::channel();
        self.try_send(Cmd::TransferLeader {
            shard,
            to,
            reply: tx,
        })?;
        self.wait(rx).await
    }

    /// Deletes this node's replica of `shard`: its log, raft state and the data of its key
    /// range. For replicas the cluster layer knows were removed from their group while this
    /// node could not learn it (a removed replica that applies its own removal is destroyed
    /// by the loop). Refused while this node leads the group, and while a leader has
    /// replicated to this replica within the last two election timeouts (its group counts
    /// it as a member, whatever a stale report says).
    pub async fn destroy_replica(&self, shard: ShardId) -> Result<(), RaftError> {
        let (tx, rx) = oneshot::channel();
        self.try_send(Cmd::Destroy { shard, reply: tx })?;
        self.wait(rx).await
    }

    fn desc(&self, shard: ShardId) -> Result<ShardDesc, RaftError> {
        self.inner
            .shared
            .shards
            .read()
            .get(&shard)
            .map(|e| e.desc.clone())
            .ok_or(RaftError::ShardNotFound(shard))
    }

    fn try_send(&self, cmd: Cmd) -> Result<(), RaftError> {
        if self.inner.shared.stopped.load(Ordering::SeqCst) {
            return Err(RaftError::Stopped);
        }
        match self.inner.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(RaftError::Timeout),
            Err(TrySendError::Disconnected(_)) => Err(RaftError::Stopped),
        }
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T, RaftError>>) -> Result<T, RaftError> {
        match tokio::time::timeout(self.inner.propose_timeout, rx).await {
            Err(_) => Err(RaftError::Timeout),
            Ok(Err(_)) => Err(RaftError::Stopped),
            Ok(Ok(r)) => r,
        }
    }

    /// Replicates and applies `txn` on `shard`. Resolves after the entry is durable on a
    /// majority and applied on this node. Errors: `NotLeader` (with a hint) when this node is
    /// not the leader or loses leadership before the entry applies; `KeyOutOfRange` when a
    /// key lies outside the shard (nothing proposed); `Timeout` after `propose_timeout`.
    /// After `NotLeader` from a pending proposal, `Timeout` or `Stopped`, the outcome is
    /// unknown; never is an error reported as success or vice versa.
    pub async fn propose(&self, shard: ShardId, txn: Txn) -> Result<TxnOutcome, RaftError> {
        add(&self.inner.shared.metrics.proposals, 1);
        let r = self.propose_inner(shard, txn).await;
        if r.is_err() {
            add(&self.inner.shared.metrics.proposals_failed, 1);
        }
        r
    }

    async fn propose_inner(&self, shard: ShardId, txn: Txn) -> Result<TxnOutcome, RaftError> {
        let desc = self.desc(shard)?;
        cmd_valid(&desc, &txn)?;
        // Encoding (a copy of the bulk bytes) and, on the leader, writing
        // them to blobs happen here, on the caller's thread, not on the one
        // Raft loop thread every shard shares. Blobs of a proposal that then
        // fails are garbage for blob_gc.
        let data =
            cmd::encode(&txn).map_err(|e| RaftError::Internal(format!("encode txn: {e}")))?;
        if data.len() > TXN_BYTES_MAX {
            return Err(RaftError::Internal(format!(
                "txn of {} bytes exceeds {TXN_BYTES_MAX}",
                data.len()
            )));
        }
        let stored = if self.leader(shard) == Some(self.inner.node_id) {
            cmd::offload_txn(&self.inner.store, txn).map_err(RaftError::from_store)?
        } else {
            None
        };
        let (tx, rx) = oneshot::channel();
        self.try_send(Cmd::Propose {
            shard,
            data,
            stored,
            reply: tx,
        })?;
        self.wait(rx).await
    }

    /// Linearizable barrier (raft ReadIndex): when it returns, local reads
    /// ([`RaftNode::get`], [`RaftNode::scan`]) reflect every write acknowledged before the
    /// call. Concurrent calls share one raft ReadIndex per shard per loop iteration. On a
    /// follower (or learner) it asks the leader for its commit index, which the leader
    /// answers once a quorum confirmed its leadership, and waits until this replica has
    /// applied that far; a follower that knows no leader, or loses it meanwhile, gets
    /// `NotLeader` (retryable).
    ///
    /// A group whose only voter is this node, led by it, with every stored
    /// entry applied, answers at once: no other node can commit anything, a
    /// write acknowledged in this process was applied before it was
    /// acknowledged, and entries acknowledged before a restart are in the log
    /// until they are applied again (so the barrier goes through the loop).
    /// The status read is at most one iteration old, which only makes it
    /// more cautious.
    pub async fn read_index(&self, shard: ShardId) -> Result<(), RaftError> {
        if self.sole_voter_leader(shard)? {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.try_send(Cmd::ReadIndex { shard, reply: tx })?;
        self.wait(rx).await
    }

    /// True when this node is the group's only voter, leads it and has
    /// applied every entry of its log.
    fn sole_voter_leader(&self, shard: ShardId) -> Result<bool, RaftError> {
        let shards = self.inner.shared.shards.read();
        let e = shards.get(&shard).ok_or(RaftError::ShardNotFound(shard))?;
        let st = &e.status;
        let m = &st.membership;
        Ok(m.voters == [self.inner.node_id]
            && m.learners.is_empty()
            && !m.is_joint()
            && st.role == Role::Leader
            && st.stopped.is_none()
            && st.applied >= st.log_last)
    }

    /// Reads a key from this replica's applied state.
    pub fn get(&self, shard: ShardId, key: &[u8]) -> Result<Option<Vec<u8>>, RaftError> {
        let desc = self.desc(shard)?;
        if !desc.contains(key) {
            return Err(RaftError::KeyOutOfRange { shard });
        }
        let v = self
            .inner
            .store
            .get(Space::Data, key)
            .map_err(RaftError::from_store)?;
        self.still_here(shard)?;
        Ok(v)
    }

    /// A point-in-time view of this replica's applied state of `shard`
    /// (for a transaction's snapshot reads). It pins old versions in the
    /// store while held: keep it for seconds, not hours.
    pub fn snapshot(&self, shard: ShardId) -> Result<ShardSnapshot, RaftError> {
        let desc = self.desc(shard)?;
        let applied = self.applied_watch(shard).map_or(0, |w| *w.borrow());
        let view = self.inner.store.snapshot();
        self.still_here(shard)?;
        Ok(ShardSnapshot {
            shard,
            desc,
            applied,
            view,
        })
    }

    /// Reads up to `len` bytes at `from` of a key's value from this
    /// replica's applied state (only those bytes when the value is a blob).
    pub fn get_range(
        &self,
        shard: ShardId,
        key: &[u8],
        from: u32,
        len: u32,
    ) -> Result<Option<Vec<u8>>, RaftError> {
        let desc = self.desc(shard)?;
        if !desc.contains(key) {
            return Err(RaftError::KeyOutOfRange { shard });
        }
        let v = self
            .inner
            .store
            .get_range(Space::Data, key, from, len)
            .map_err(RaftError::from_store)?;
        self.still_here(shard)?;
        Ok(v)
    }

    /// Scans this replica's applied state; `[start, end)` is clamped to the shard's range.
    pub fn scan(
        &self,
        shard: ShardId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<KvPairs, RaftError> {
        let desc = self.desc(shard)?;
        let (s, e) = desc.clamp(start, end);
        let v = self
            .inner
            .store
            .scan(Space::Data, &s, &e, limit)
            .map_err(RaftError::from_store)?;
        self.still_here(shard)?;
        Ok(v)
    }

    /// Like [`RaftNode::scan`], in descending key order (the last pairs of
    /// the clamped range first).
    pub fn scan_rev(
        &self,
        shard: ShardId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<KvPairs, RaftError> {
        let desc = self.desc(shard)?;
        let (s, e) = desc.clamp(start, end);
        let v = self
            .inner
            .store
            .scan_rev(Space::Data, &s, &e, limit)
            .map_err(RaftError::from_store)?;
        self.still_here(shard)?;
        Ok(v)
    }

    /// Like [`RaftNode::scan`], keys only (values are not read).
    pub fn scan_keys(
        &self,
        shard: ShardId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, RaftError> {
        let desc = self.desc(shard)?;
        let (s, e) = desc.clamp(start, end);
        let v = self
            .inner
            .store
            .scan_keys(Space::Data, &s, &e, limit)
            .map_err(RaftError::from_store)?;
        self.still_here(shard)?;
        Ok(v)
    }

    /// After a read of a replica's data: the replica was not destroyed
    /// meanwhile (its entry goes before its data, so a read that raced the
    /// deletion sees the entry gone and is refused, retryably, instead of
    /// answering "absent").
    fn still_here(&self, shard: ShardId) -> Result<(), RaftError> {
        // A replica installing a snapshot's data has part of it: nothing to read yet.
        let here = self
            .inner
            .shared
            .shards
            .read()
            .get(&shard)
            .is_some_and(|e| !e.status.installing);
        if here {
            Ok(())
        } else {
            Err(RaftError::NotLeader {
                shard,
                leader: None,
            })
        }
    }

    /// Hands inbound messages (from the transport) to the loop. Never blocks: when the
    /// loop's queue is full the messages are dropped (raft retries). Each stepped message also
    /// proves its sender's node alive; the transport still calls [`RaftNode::peer_alive`] for
    /// every batch, because empty keepalive batches never reach the loop.
    pub fn step(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        if let Err(TrySendError::Full(_)) = self.inner.tx.try_send(Cmd::Step(msgs)) {
            tracing::debug!(
                node = self.inner.node_id,
                "raft queue full; inbound messages dropped"
            );
        }
    }

    /// Hands an inbound snapshot message to the loop; unlike [`RaftNode::step`] it says
    /// when the loop's queue cannot take it, so the sender's transport reports it lost.
    /// A snapshot received in chunks comes from [`RaftNode::snapshot_sink`]'s `finish`.
    pub fn step_snapshot(&self, msg: Message) -> Result<(), RaftError> {
        self.try_send(Cmd::StepSnapshot(msg))
    }

    /// Starts receiving a snapshot streamed in chunks: `head` is its message whose data is
    /// the head its sender's storage built. The sink stages the chunks in a file beside
    /// the store; its `finish` gives the message for [`RaftNode::step_snapshot`].
    pub fn snapshot_sink(&self, head: Message) -> Result<crate::SnapshotSink, RaftError> {
        crate::SnapshotSink::new(self.inner.store.dir(), head).map_err(RaftError::from_store)
    }

    /// Records that a batch (possibly empty: a keepalive) arrived from node `from`. The
    /// transport calls it for every batch it receives, before [`RaftNode::step`]; it is how
    /// the loop knows which peer nodes are alive, which hibernating groups depend on.
    /// Cheap and non-blocking; nodes sharing no group with this one are ignored.
    pub fn peer_alive(&self, from: NodeId) {
        if let Some(heard) = self.inner.shared.peers_heard.read().get(&from) {
            heard.store(true, Ordering::Relaxed);
        }
    }

    /// Peer nodes (sharing a group with this one) heard from within the peer timeout.
    pub fn alive_peers(&self) -> BTreeSet<NodeId> {
        self.inner.shared.alive.read().clone()
    }

    /// The shard's current Raft term on this node.
    pub fn term(&self, shard: ShardId) -> Option<u64> {
        self.inner
            .shared
            .shards
            .read()
            .get(&shard)
            .map(|e| e.status.term)
    }

    /// Whether the raft loop has stopped (shutdown or a fatal store error).
    pub fn is_stopped(&self) -> bool {
        self.inner.shared.stopped.load(Ordering::SeqCst)
    }

    /// The shard's leader as last seen by this node.
    pub fn leader(&self, shard: ShardId) -> Option<NodeId> {
        self.inner
            .shared
            .shards
            .read()
            .get(&shard)
            .and_then(|e| e.status.leader)
    }

    /// Watches the shard's applied index on this node.
    pub fn applied_watch(&self, shard: ShardId) -> Option<watch::Receiver<u64>> {
        self.inner
            .shared
            .shards
            .read()
            .get(&shard)
            .map(|e| e.applied.subscribe())
    }

    /// Status of every group on this node.
    pub fn status(&self) -> Vec<ShardStatus> {
        self.inner
            .shared
            .shards
            .read()
            .values()
            .map(|e| e.status.clone())
            .collect()
    }

    /// Counters since start.
    pub fn metrics(&self) -> RaftMetrics {
        let m = &self.inner.shared.metrics;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RaftMetrics {
            loop_iterations: l(&m.loop_iterations),
            readies: l(&m.readies),
            persist_batches: l(&m.persist_batches),
            entries_persisted: l(&m.entries_persisted),
            proposals: l(&m.proposals),
            proposals_failed: l(&m.proposals_failed),
            messages_sent: l(&m.messages_sent),
            snapshots_sent: l(&m.snapshots_sent),
            snapshots_applied: l(&m.snapshots_applied),
            persist_micros_total: l(&m.persist_micros_total),
            hibernations: l(&m.hibernations),
            wakeups: l(&m.wakeups),
            keepalives_sent: l(&m.keepalives_sent),
            conf_changes_applied: l(&m.conf_changes_applied),
            replicas_destroyed: l(&m.replicas_destroyed),
            snapshot_bytes_installed: l(&m.snapshot_bytes_installed),
        }
    }

    /// Stops the loop (joining its thread) and fails every waiter with `Stopped`.
    pub fn shutdown(&self) {
        self.inner.stop();
    }
}

/// Checks a transaction before it is proposed (and again before it is applied).
fn cmd_valid(desc: &ShardDesc, txn: &Txn) -> Result<(), RaftError> {
    if !txn.within(desc) || !keys_storable(txn) {
        return Err(RaftError::KeyOutOfRange { shard: desc.id });
    }
    // Blob references are made by this node's log, never proposed.
    if txn.ops.iter().any(cmd::Op::is_blob) {
        return Err(RaftError::Internal(
            "a proposal cannot carry blob references".into(),
        ));
    }
    Ok(())
}

/// Keys the store can hold: 1..=MAX_KEY_BYTES bytes; values within MAX_VALUE_BYTES. A key
/// outside these bounds lies outside every valid key range.
fn keys_storable(txn: &Txn) -> bool {
    let key_ok = |k: &[u8]| !k.is_empty() && k.len() <= berth_store::MAX_KEY_BYTES;
    let conds = txn.conditions.iter().all(|c| match c {
        cmd::Condition::ValueIs { key, .. } => key_ok(key),
        cmd::Condition::RangeEmpty { .. } => true,
    });
    conds
        && txn.ops.iter().all(|o| match o {
            cmd::Op::Put { key, value } => {
                key_ok(key) && value.len() <= berth_store::MAX_VALUE_BYTES
            }
            cmd::Op::Splice {
                key, offset, data, ..
            } => {
                key_ok(key)
                    && (*offset as usize).saturating_add(data.len()) <= berth_store::MAX_VALUE_BYTES
            }
            cmd::Op::Delete { key }
            | cmd::Op::Truncate { key, .. }
            | cmd::Op::MaxU64 { key, .. }
            | cmd::Op::AddI64 { key, .. } => key_ok(key),
            cmd::Op::DeleteRange { .. } => true,
            cmd::Op::DeleteRangeCounted { counter, .. }
            | cmd::Op::DeleteRangeCountedPairs { counter, .. } => key_ok(counter),
            cmd::Op::VSplice {
                base,
                offset,
                data,
                state,
                ..
            } => {
                key_ok(base)
                    && key_ok(state)
                    && (*offset as usize).saturating_add(data.len()) <= berth_store::MAX_VALUE_BYTES
            }
            cmd::Op::VSpliceBlob {
                base,
                offset,
                len,
                state,
                ..
            } => {
                key_ok(base)
                    && key_ok(state)
                    && (*offset as usize).saturating_add(*len as usize)
                        <= berth_store::MAX_VALUE_BYTES
            }
            cmd::Op::PutBlob { key, len, .. } => {
                key_ok(key) && *len as usize <= berth_store::MAX_VALUE_BYTES
            }
            cmd::Op::PutStamped { prefix, value } => {
                !prefix.is_empty()
                    && prefix.len() + 18 <= berth_store::MAX_KEY_BYTES
                    && value.len() <= berth_store::MAX_VALUE_BYTES
            }
            cmd::Op::VTruncate { base, state, .. } => key_ok(base) && key_ok(state),
            cmd::Op::VDeleteRange { counter, state, .. } => key_ok(counter) && key_ok(state),
            cmd::Op::VPrune { state, .. } => key_ok(state),
            cmd::Op::SnapshotCopy { .. } => true,
        })
}

struct Proposal {
    index: u64,
    term: u64,
    reply: Reply<TxnOutcome>,
}

struct Group {
    raw: RawNode<ShardStorage>,
    proposals: VecDeque<Proposal>,
    /// `read_index` calls not yet issued to raft.
    read_queue: Vec<Reply<()>>,
    /// Issued to raft, keyed by request context.
    reads_inflight: Vec<(Vec<u8>, Vec<Reply<()>>)>,
    /// Confirmed read index, waiting for apply to reach it.
    reads_ready: Vec<(u64, Vec<Reply<()>>)>,
    /// The configuration this replica applied (refreshed by conf changes and snapshots).
    membership: Membership,
    /// The pending membership change proposed here: (index, term, waiter).
    conf_waiter: Option<(u64, u64, Reply<Membership>)>,
    /// Asleep: not ticking.
    hibernating: bool,
    /// Leader only: consecutive quiescent ticks (saturates at `hibernate_after_ticks`).
    idle_ticks: usize,
    /// Leader only: announcing sleep (heartbeats carry `Signal::Sleep`), still ticking.
    drowsy: bool,
    /// Leader only, while drowsy: followers that answered "asleep".
    sleep_acks: BTreeSet<NodeId>,
    /// A stopped group told its peers to wake (so none waits on it asleep).
    stop_announced: bool,
    stopped: Option<String>,
    applied_tx: Arc<watch::Sender<u64>>,
    /// Installing a staged snapshot's data (see `crate::snapshot`): no ready is handled,
    /// nothing applied and no read answered until it is done.
    installing: Option<StagedReader>,
    /// The loop tick at which a leader last sent this replica entries, a heartbeat or a
    /// snapshot: a leader does that only to the replicas its group counts as members.
    leader_heard_tick: Option<u64>,
}

impl Group {
    fn id(&self) -> ShardId {
        self.raw.store().desc.id
    }

    fn leader_hint(&self) -> Option<NodeId> {
        let l = self.raw.raft.leader_id;
        (l != 0).then_some(l)
    }

    fn not_leader(&self) -> RaftError {
        RaftError::NotLeader {
            shard: self.id(),
            leader: self.leader_hint(),
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn multi_voter(&self) -> bool {
        self.membership.voters.len() > 1
    }

    /// Groups with learners or in a joint configuration never sleep: they are in the middle
    /// of a change that must make progress (and a learner acknowledges no sleep).
    fn changing(&self) -> bool {
        !self.membership.learners.is_empty() || self.membership.is_joint()
    }

    /// Re-reads the configuration from raft after a conf change or a snapshot.
    fn refresh_membership(&mut self) {
        self.membership = Membership::from_conf_state(&self.raw.raft.prs().conf().to_conf_state());
    }

    /// Stops ticking.
    fn sleep(&mut self, metrics: &Metrics) {
        debug_assert!(!self.hibernating && self.stopped.is_none());
        self.hibernating = true;
        self.drowsy = false;
        self.sleep_acks.clear();
        self.idle_ticks = 0;
        add(&metrics.hibernations, 1);
    }

    /// Back to ticking if asleep (a leader is then made safe to tick again: see
    /// `hibernate`). True when the group was asleep.
    fn wake(&mut self, metrics: &Metrics) -> bool {
        if !self.hibernating {
            return false;
        }
        self.hibernating = false;
        self.drowsy = false;
        self.sleep_acks.clear();
        self.idle_ticks = 0;
        add(&metrics.wakeups, 1);
        if self.is_leader() {
            guarded(self, "wake", hibernate::on_leader_wake);
        }
        true
    }

    /// A proposal or read arrived: wake, and restart the leader's idleness count.
    fn busy(&mut self, metrics: &Metrics) {
        self.wake(metrics);
        self.drowsy = false;
        self.sleep_acks.clear();
        self.idle_ticks = 0;
    }

    /// Every other voter answered "asleep" to this drowsy leader.
    fn all_acked(&self, me: NodeId) -> bool {
        self.membership
            .voters
            .iter()
            .all(|v| *v == me || self.sleep_acks.contains(v))
    }

    fn fail_all(&mut self, make: impl Fn() -> RaftError) {
        if let Some((_, _, w)) = self.conf_waiter.take() {
            let _ = w.send(Err(make()));
        }
        for p in self.proposals.drain(..) {
            let _ = p.reply.send(Err(make()));
        }
        let reads = self
            .read_queue
            .drain(..)
            .chain(self.reads_inflight.drain(..).flat_map(|(_, w)| w))
            .chain(self.reads_ready.drain(..).flat_map(|(_, w)| w));
        for r in reads {
            let _ = r.send(Err(make()));
        }
    }

    fn fail_not_leader(&mut self) {
        let (shard, leader) = (self.id(), self.leader_hint());
        self.fail_all(|| RaftError::NotLeader { shard, leader });
    }

    /// Stops the group after a fatal invariant violation: loudly, with every waiter failed.
    fn stop(&mut self, reason: String) {
        tracing::error!(shard = self.id(), %reason, "raft group stopped by a fatal error");
        let r = reason.clone();
        self.fail_all(|| RaftError::Internal(r.clone()));
        self.stopped = Some(reason);
    }

    fn on_read_state(&mut self, rs: ReadState) {
        if let Some(pos) = self
            .reads_inflight
            .iter()
            .position(|(c, _)| *c == rs.request_ctx)
        {
            let (_, waiters) = self.reads_inflight.swap_remove(pos);
            self.reads_ready.push((rs.index, waiters));
        }
    }

    fn complete_reads(&mut self) {
        if self.installing.is_some() {
            return;
        }
        let applied = self.raw.store().applied_index;
        self.reads_ready.retain_mut(|(index, waiters)| {
            if *index > applied {
                return true;
            }
            for w in waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
            false
        });
    }

    fn purge_abandoned(&mut self) {
        if self
            .conf_waiter
            .as_ref()
            .is_some_and(|(_, _, w)| w.is_closed())
        {
            self.conf_waiter = None;
        }
        self.proposals.retain(|p| !p.reply.is_closed());
        self.read_queue.retain(|r| !r.is_closed());
        for (_, w) in self.reads_inflight.iter_mut() {
            w.retain(|r| !r.is_closed());
        }
        for (_, w) in self.reads_ready.iter_mut() {
            w.retain(|r| !r.is_closed());
        }
        self.reads_inflight.retain(|(_, w)| !w.is_empty());
        self.reads_ready.retain(|(_, w)| !w.is_empty());
    }

    fn idle(&self) -> bool {
        self.conf_waiter.is_none()
            && self.proposals.is_empty()
            && self.read_queue.is_empty()
            && self.reads_inflight.is_empty()
            && self.reads_ready.is_empty()
    }

    fn status(&self) -> ShardStatus {
        let s = self.raw.store();
        ShardStatus {
            id: s.desc.id,
            role: match self.raw.raft.state {
                StateRole::Leader => Role::Leader,
                StateRole::Follower => Role::Follower,
                StateRole::Candidate => Role::Candidate,
                StateRole::PreCandidate => Role::PreCandidate,
            },
            term: self.raw.raft.term,
            commit: self.raw.raft.raft_log.committed,
            applied: s.applied_index,
            leader: self.leader_hint(),
            hibernating: self.hibernating,
            log_first: s.first_log_index(),
            log_last: s.last_log_index(),
            stopped: self.stopped.clone(),
            membership: self.membership.clone(),
            conf_pending: self.raw.raft.has_pending_conf(),
            installing: self.installing.is_some(),
            progress: if self.is_leader() {
                let me = self.raw.raft.id;
                let mut p: Vec<PeerProgress> = self
                    .raw
                    .raft
                    .prs()
                    .iter()
                    .filter(|(&id, _)| id != me)
                    .map(|(&node, pr)| PeerProgress {
                        node,
                        matched: pr.matched,
                        snapshot: pr.state == raft::ProgressState::Snapshot,
                    })
                    .collect();
                p.sort_unstable_by_key(|p| p.node);
                p
            } else {
                Vec::new()
            },
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Runs a raft-rs call; raft-rs panics on violated invariants (e.g. an unreadable log), which
/// stops this group only, loudly, instead of the whole node.
/// Sorts a group's outgoing messages by destination node (snapshots apart: they are
/// streamed one by one), with the shard set and the hibernation flags: a drowsy (or
/// sleeping) leader's heartbeats say "sleep", a sleeping follower's heartbeat responses
/// say "asleep".
fn route_messages(
    me: NodeId,
    id: ShardId,
    g: &Group,
    msgs: Vec<Message>,
    outbox: &mut BTreeMap<NodeId, Vec<Message>>,
    snapshots: &mut Vec<(ShardId, Message)>,
) {
    let leader = g.is_leader();
    let sleep_flag = leader && (g.drowsy || g.hibernating);
    let ack_flag = !leader && g.hibernating;
    for mut m in msgs {
        if m.to == me || m.to == 0 {
            continue;
        }
        match m.get_msg_type() {
            MessageType::MsgSnapshot => {
                set_message_shard(&mut m, id);
                snapshots.push((id, m));
                continue;
            }
            MessageType::MsgHeartbeat if sleep_flag => {
                hibernate::set_signal(&mut m, Signal::Sleep);
            }
            MessageType::MsgHeartbeatResponse if ack_flag => {
                hibernate::set_signal(&mut m, Signal::SleepAck);
            }
            _ => {}
        }
        set_message_shard(&mut m, id);
        outbox.entry(m.to).or_default().push(m);
    }
}

fn guarded<T>(
    g: &mut Group,
    what: &str,
    f: impl FnOnce(&mut RawNode<ShardStorage>) -> T,
) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(|| f(&mut g.raw))) {
        Ok(v) => Some(v),
        Err(p) => {
            g.stop(format!(
                "raft-rs {what} panicked: {}",
                panic_text(p.as_ref())
            ));
            None
        }
    }
}

/// The multi-raft loop: every group of this node.
struct Core {
    node_id: NodeId,
    /// What became of the snapshots handed to the transport (unbounded: one per
    /// snapshot message), drained every iteration.
    snapshots_sent: (Sender<SnapshotSent>, Receiver<SnapshotSent>),
    cfg: Config,
    store: Arc<Store>,
    transport: Arc<dyn Transport>,
    shared: Arc<Shared>,
    logger: slog::Logger,
    groups: BTreeMap<ShardId, Group>,
    /// Node id and incarnation (starts of this store): read contexts are unique across
    /// the nodes a leader serves and across restarts, so a leader never confuses one
    /// node's read with another's, or with an earlier process's.
    read_ctx_prefix: [u8; 16],
    next_read_ctx: u64,
    /// Groups whose visible status may have changed this iteration.
    touched: BTreeSet<ShardId>,
    /// A store write failed: the loop stops.
    fatal: bool,
    /// Which peer nodes are alive (see `hibernate`).
    liveness: PeerLiveness,
    /// Ticks since start (keepalives go out every `heartbeat_tick`).
    ticks: u64,
    /// `Signal::Wake` messages to send this iteration: (to, shard, term).
    wake_out: Vec<(NodeId, ShardId, u64)>,
    /// Staged snapshot files stepped into raft this iteration: each is deleted at its end
    /// unless raft took the snapshot and its install started.
    staged: Vec<std::path::PathBuf>,
}

impl Core {
    /// Tells raft what became of the snapshots the transport finished with:
    /// delivered, the follower gets entries again after it; lost, raft sends
    /// another.
    fn on_snapshots_sent(&mut self) {
        while let Ok(r) = self.snapshots_sent.1.try_recv() {
            if let Some(g) = self.groups.get_mut(&r.shard) {
                let status = match r.delivered {
                    true => SnapshotStatus::Finish,
                    false => SnapshotStatus::Failure,
                };
                guarded(g, "report_snapshot", |raw| {
                    raw.report_snapshot(r.to, status)
                });
                self.touched.insert(r.shard);
            }
        }
    }
}

impl Core {
    fn add_group(&mut self, desc: ShardDesc) -> Result<(), RaftError> {
        let id = desc.id;
        if self.groups.contains_key(&id) {
            return Ok(());
        }
        let applied_tx = self
            .shared
            .shards
            .read()
            .get(&id)
            .map(|e| e.applied.clone())
            .ok_or(RaftError::ShardNotFound(id))?;
        let storage =
            ShardStorage::load(self.store.clone(), desc).map_err(RaftError::from_store)?;
        let single = storage.voters() == [self.node_id];
        let applied = storage.applied_index;
        let rc = raft::Config {
            id: self.node_id,
            election_tick: self.cfg.election_tick,
            heartbeat_tick: self.cfg.heartbeat_tick,
            applied,
            max_size_per_msg: self.cfg.max_size_per_msg,
            max_inflight_msgs: self.cfg.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            max_committed_size_per_ready: COMMITTED_BYTES_PER_READY_MAX,
            ..raft::Config::default()
        };
        let logger = self.logger.new(slog::o!("shard" => id));
        let raw = catch_unwind(AssertUnwindSafe(|| RawNode::new(&rc, storage, &logger)))
            .map_err(|p| {
                RaftError::Internal(format!(
                    "shard {id}: raft init panicked: {}",
                    panic_text(p.as_ref())
                ))
            })?
            .map_err(|e| RaftError::Internal(format!("shard {id}: raft init: {e}")))?;
        applied_tx.send_replace(applied);
        let mut g = Group {
            raw,
            proposals: VecDeque::new(),
            read_queue: Vec::new(),
            reads_inflight: Vec::new(),
            reads_ready: Vec::new(),
            membership: Membership::default(),
            conf_waiter: None,
            hibernating: false,
            idle_ticks: 0,
            drowsy: false,
            sleep_acks: BTreeSet::new(),
            stop_announced: false,
            stopped: None,
            applied_tx,
            installing: None,
            leader_heard_tick: None,
        };
        g.refresh_membership();
        // A restart in the middle of installing a snapshot installs it again: the staged
        // file was durable before the marker, the range is cleared first.
        if let Some(rec) =
            storage::pending_install(&self.store, id).map_err(RaftError::from_store)?
        {
            let desc = g.raw.store().desc.clone();
            let path = snapshot::staged_path(self.store.dir(), id, rec.index, rec.term);
            let mut batch = self.store.batch();
            batch
                .delete_range(Space::Data, &desc.start, &desc.end)
                .map_err(RaftError::from_store)?;
            self.store
                .write(batch, Durability::Sync)
                .map_err(RaftError::from_store)?;
            let reader = StagedReader::open(path, desc).map_err(RaftError::from_store)?;
            tracing::info!(
                shard = id,
                index = rec.index,
                "installing a staged snapshot again after a restart"
            );
            g.installing = Some(reader);
            if let Some(e) = self.shared.shards.write().get_mut(&id) {
                e.status.installing = true;
            }
        }
        if !g.membership.replicas().is_empty() && !g.membership.contains(self.node_id) {
            // Its removal was applied and the node stopped before the replica was destroyed.
            self.groups.insert(id, g);
            return self
                .destroy(id, "removed from its group (found at startup)")
                .map_err(RaftError::from_store);
        }
        if single && !g.changing() {
            // The only voter: no need to wait an election timeout.
            let _ = guarded(&mut g, "campaign", |raw| raw.campaign());
        }
        self.track_peers(&g.membership);
        self.groups.insert(id, g);
        self.touched.insert(id);
        Ok(())
    }

    /// Watches the liveness of every node in `m` (see `hibernate`).
    fn track_peers(&mut self, m: &Membership) {
        let mut heard = None;
        for v in m.replicas().into_iter().filter(|&v| v != self.node_id) {
            if self.liveness.add(v) {
                heard
                    .get_or_insert_with(|| self.shared.peers_heard.write())
                    .insert(v, AtomicBool::new(false));
            }
        }
    }

    /// Starts a group; a shard whose state cannot be loaded is reported as stopped (in its
    /// status, loudly in the log) instead of taking the whole node down.
    fn add_group_or_mark(&mut self, desc: ShardDesc) {
        let id = desc.id;
        if let Err(e) = self.add_group(desc) {
            tracing::error!(shard = id, error = %e, "cannot start raft group");
            if let Some(entry) = self.shared.shards.write().get_mut(&id) {
                entry.status.stopped = Some(e.to_string());
            }
        }
    }

    fn run(mut self, rx: Receiver<Cmd>) {
        let tick = self.cfg.tick_interval;
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = if self.has_ready() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            let mut shutdown = match rx.recv_timeout(wait) {
                Ok(cmd) => self.handle(cmd),
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            for _ in 0..COMMANDS_PER_ITERATION_MAX {
                if shutdown {
                    break;
                }
                match rx.try_recv() {
                    Ok(cmd) => shutdown = self.handle(cmd),
                    Err(_) => break,
                }
            }
            if shutdown {
                break;
            }
            self.on_snapshots_sent();
            let now = Instant::now();
            if now >= next_tick {
                self.tick();
                next_tick = if now.duration_since(next_tick) > tick {
                    now + tick
                } else {
                    next_tick + tick
                };
            }
            self.process();
            if self.fatal {
                break;
            }
        }
        self.shared.stopped.store(true, Ordering::SeqCst);
        for g in self.groups.values_mut() {
            g.fail_all(|| RaftError::Stopped);
        }
        // Fail whatever is still queued.
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Cmd::Propose { reply, .. } => {
                    let _ = reply.send(Err(RaftError::Stopped));
                }
                Cmd::ReadIndex { reply, .. } => {
                    let _ = reply.send(Err(RaftError::Stopped));
                }
                _ => {}
            }
        }
        tracing::info!(node = self.node_id, "raft loop stopped");
    }

    fn has_ready(&self) -> bool {
        let installs = self.cfg.snapshot_install_slice_bytes > 0;
        self.groups.values().any(|g| {
            g.stopped.is_none() && ((installs && g.installing.is_some()) || g.raw.has_ready())
        })
    }

    /// Deletes staged snapshot files no install needs (left by a crash while receiving).
    fn remove_unused_staged(&mut self) {
        let dir = snapshot::staging_dir(self.store.dir());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let keep: BTreeSet<std::path::PathBuf> = self
            .groups
            .values()
            .filter_map(|g| g.installing.as_ref().map(|r| r.path().to_path_buf()))
            .collect();
        for e in entries.flatten() {
            if !keep.contains(&e.path()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Steps a snapshot whose pairs were staged (by this node's sink). Its file goes
    /// unless this iteration starts installing it.
    fn on_staged_snapshot(&mut self, m: Message) {
        let meta = m.get_snapshot().get_metadata();
        let shard = message_shard(&m).unwrap_or(0);
        let path = snapshot::staged_path(self.store.dir(), shard, meta.index, meta.term);
        let installing = self
            .groups
            .get(&shard)
            .is_some_and(|g| g.installing.is_some());
        if installing {
            tracing::debug!(shard, "a snapshot arrived while another installs; dropped");
            let _ = std::fs::remove_file(&path);
            return;
        }
        self.staged.push(path);
        self.on_message(m);
    }

    /// Writes the next slice of every installing replica's data; a replica whose data is
    /// all written ends its install (durably) and is served again.
    fn install_slices(&mut self) {
        if self.cfg.snapshot_install_slice_bytes == 0 {
            return; // held (tests)
        }
        let ids: Vec<ShardId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.installing.is_some() && g.stopped.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            let Some(reader) = g.installing.as_mut() else {
                continue;
            };
            let slice = match reader.next_slice(self.cfg.snapshot_install_slice_bytes) {
                Ok(s) => s,
                Err(e) => {
                    g.stop(format!("cannot install snapshot data: {e}"));
                    continue;
                }
            };
            let ended = reader.ended();
            let mut batch = self.store.batch();
            for (k, v) in &slice {
                batch.put(Space::Data, k, v);
            }
            if ended {
                storage::install_done(&mut batch, id);
            }
            let durability = if ended {
                Durability::Sync
            } else {
                Durability::Buffered
            };
            if let Err(e) = self.store.write(batch, durability) {
                self.fail_store(e);
                return;
            }
            add(
                &self.shared.metrics.snapshot_bytes_installed,
                slice.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum(),
            );
            if !ended {
                continue;
            }
            let path = g.installing.take().map(|r| r.path().to_path_buf());
            if let Some(path) = path {
                let _ = std::fs::remove_file(path);
            }
            if let Some(e) = self.shared.shards.write().get_mut(&id) {
                e.status.installing = false;
            }
            add(&self.shared.metrics.snapshots_applied, 1);
            tracing::info!(
                shard = id,
                applied = g.raw.store().applied_index,
                "raft snapshot installed"
            );
            publish_applied(g);
            self.touched.insert(id);
        }
    }

    /// Handles one command; true = shut down.
    fn handle(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Step(msgs) => {
                for m in msgs {
                    if m.get_msg_type() == MessageType::MsgSnapshot && snapshot::is_staged(&m) {
                        // Only this node's sink stages; a peer cannot name a staged file.
                        tracing::warn!(
                            from = m.from,
                            "dropping a snapshot message claiming staged data"
                        );
                        continue;
                    }
                    self.on_message(m);
                }
            }
            Cmd::StepSnapshot(m) => self.on_staged_snapshot(m),

            Cmd::Propose {
                shard,
                data,
                stored,
                reply,
            } => self.on_propose(shard, data, stored, reply),
            Cmd::ReadIndex { shard, reply } => {
                let Some(g) = self.groups.get_mut(&shard) else {
                    let _ = reply.send(Err(RaftError::ShardNotFound(shard)));
                    return false;
                };
                if let Some(r) = &g.stopped {
                    let _ = reply.send(Err(RaftError::Internal(r.clone())));
                } else if !g.is_leader()
                    && (g.leader_hint().is_none()
                        || !g.membership.contains(self.node_id)
                        || g.installing.is_some())
                {
                    // A follower reads through its leader; a replica still waiting for
                    // its first snapshot has nothing to read.
                    let _ = reply.send(Err(g.not_leader()));
                } else if g.read_queue.len() >= PENDING_READS_MAX {
                    let _ = reply.send(Err(RaftError::Timeout));
                } else {
                    g.busy(&self.shared.metrics);
                    g.read_queue.push(reply);
                    self.touched.insert(shard);
                }
            }
            Cmd::AddShard(desc) => self.add_group_or_mark(desc),
            Cmd::ChangeMembership {
                shard,
                changes,
                reply,
            } => self.on_change_membership(shard, changes, reply),
            Cmd::TransferLeader { shard, to, reply } => {
                let r = self.on_transfer_leader(shard, to);
                let _ = reply.send(r);
            }
            Cmd::Destroy { shard, reply } => {
                let r = match self.groups.get(&shard) {
                    None => Err(RaftError::ShardNotFound(shard)),
                    Some(g) if g.is_leader() => Err(RaftError::ConfChangeRefused {
                        shard,
                        why: "this node leads the group".into(),
                    }),
                    // A leader replicates to this replica: its group counts it as a member,
                    // whatever a (stale) map or report says. Destroying it would make a
                    // member lose what it acknowledged, and its empty successor would be
                    // sent commit indexes beyond its log.
                    Some(g)
                        if g.leader_heard_tick.is_some_and(|t| {
                            self.ticks.saturating_sub(t) < 2 * self.cfg.election_tick as u64
                        }) =>
                    {
                        Err(RaftError::ConfChangeRefused {
                            shard,
                            why: "a leader is replicating to this replica: still a member".into(),
                        })
                    }
                    Some(_) => match self.destroy(shard, "destroyed at the cluster's request") {
                        Ok(()) => Ok(()),
                        Err(e) => {
                            let _ = reply.send(Err(RaftError::Internal(format!(
                                "destroying the replica failed: {e}"
                            ))));
                            self.fail_store(e);
                            return false;
                        }
                    },
                };
                let _ = reply.send(r);
            }
            Cmd::Shutdown => return true,
        }
        false
    }

    fn on_message(&mut self, m: Message) {
        let Some(shard) = message_shard(&m) else {
            tracing::debug!(node = self.node_id, "raft message without shard id dropped");
            return;
        };
        if m.to != self.node_id {
            tracing::debug!(
                node = self.node_id,
                to = m.to,
                "raft message for another node dropped"
            );
            return;
        }
        // Any message is proof that its sender's node lives.
        self.liveness.heard(m.from);
        let Some(g) = self.groups.get_mut(&shard) else {
            // Not handled yet: creating a replica from a message (scale-out).
            tracing::debug!(
                node = self.node_id,
                shard,
                "raft message for unknown shard dropped"
            );
            return;
        };
        if g.stopped.is_some() {
            return;
        }
        let metrics = &self.shared.metrics;
        let (from, term, ty) = (m.from, m.term, m.get_msg_type());
        // What only a leader sends to the replicas it counts as members.
        if matches!(
            ty,
            MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
        ) && term >= g.raw.raft.term
        {
            g.leader_heard_tick = Some(self.ticks);
        }
        let signal = hibernate::signal(&m);
        let mut woken = false;
        match signal {
            Some(Signal::Wake) => {
                // Not a raft message: a peer asks the group to tick again.
                woken = g.wake(metrics);
            }
            Some(Signal::SleepAck) if ty == MessageType::MsgHeartbeatResponse => {
                // Stepped without waking: it tells a drowsy leader that `from` is asleep.
                step(g, shard, m);
                if g.drowsy && g.is_leader() && g.raw.raft.term == term {
                    g.sleep_acks.insert(from);
                    let alive = |n: NodeId| self.liveness.is_alive(n);
                    if g.all_acked(self.node_id)
                        && g.stopped.is_none()
                        && g.idle()
                        && hibernate::leader_quiescent(&g.raw.raft, alive)
                    {
                        g.sleep(metrics);
                        self.touched.insert(shard);
                    }
                }
            }
            Some(Signal::Sleep) if ty == MessageType::MsgHeartbeat => {
                // Stepped without waking (it zeroes the follower's election clock); the group
                // then sleeps if it is caught up with this leader, or wakes if it no longer may
                // sleep. Its heartbeat response says "asleep" when it is.
                step(g, shard, m);
                let may = self.cfg.hibernate_after_ticks > 0
                    && g.stopped.is_none()
                    && g.idle()
                    && self.liveness.is_alive(from)
                    && hibernate::follower_may_sleep(&g.raw.raft, from, term);
                if may && !g.hibernating {
                    g.sleep(metrics);
                    self.touched.insert(shard);
                } else if !may {
                    woken = g.wake(metrics);
                }
            }
            _ => {
                woken = g.wake(metrics);
                step(g, shard, m);
            }
        }
        if woken {
            self.touched.insert(shard);
            // A follower woken by someone other than its leader wakes the leader, which then
            // heartbeats before this follower's election timer runs out.
            if let Some(leader) = g.leader_hint().filter(|&l| !g.is_leader() && l != from) {
                self.wake_out.push((leader, shard, g.raw.raft.term));
            }
        }
        if g.stopped.is_some() {
            self.touched.insert(shard);
        }
    }

    fn on_propose(
        &mut self,
        shard: ShardId,
        data: Vec<u8>,
        stored: Option<cmd::Stored>,
        reply: Reply<TxnOutcome>,
    ) {
        let Some(g) = self.groups.get_mut(&shard) else {
            let _ = reply.send(Err(RaftError::ShardNotFound(shard)));
            return;
        };
        if let Some(r) = &g.stopped {
            let _ = reply.send(Err(RaftError::Internal(r.clone())));
            return;
        }
        if !g.is_leader() {
            let _ = reply.send(Err(g.not_leader()));
            return;
        }
        // The proposing thread checked the transaction against this shard's
        // (fixed) descriptor and encoded it.
        if g.proposals.len() >= PENDING_PROPOSALS_MAX {
            let _ = reply.send(Err(RaftError::Timeout));
            return;
        }
        g.busy(&self.shared.metrics);
        self.touched.insert(shard);
        match append(g, "propose", |raw| raw.propose(Vec::new(), data)) {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok((index, term)) => {
                if let Some(stored) = stored {
                    g.raw.mut_store().set_stored(index, term, stored);
                }
                g.proposals.push_back(Proposal { index, term, reply });
            }
        }
    }

    fn on_change_membership(
        &mut self,
        shard: ShardId,
        changes: Vec<MemberChange>,
        reply: Reply<Membership>,
    ) {
        let Some(g) = self.groups.get_mut(&shard) else {
            let _ = reply.send(Err(RaftError::ShardNotFound(shard)));
            return;
        };
        let refuse = |why: String| RaftError::ConfChangeRefused { shard, why };
        if let Some(r) = &g.stopped {
            let _ = reply.send(Err(RaftError::Internal(r.clone())));
            return;
        }
        if !g.is_leader() {
            let _ = reply.send(Err(g.not_leader()));
            return;
        }
        // raft-rs turns a conf change proposed while another is pending (or while joint)
        // into an empty entry; refuse it here instead, so the caller knows.
        if g.conf_waiter.is_some() || g.raw.raft.has_pending_conf() {
            let _ = reply.send(Err(refuse("another membership change is pending".into())));
            return;
        }
        let cc = match conf_change(self.node_id, &g.membership, &changes) {
            Ok(cc) => cc,
            Err(why) => {
                let _ = reply.send(Err(refuse(why)));
                return;
            }
        };
        let adds_learner = changes
            .iter()
            .any(|c| matches!(c, MemberChange::AddLearner(_)));
        if adds_learner && g.raw.store().first_log_index() <= 1 {
            // A new replica starts with an empty log and no configuration: it must get a
            // snapshot (which carries the configuration), not the log from index 1 (which
            // does not hold the group's initial voters).
            let applied = g.raw.store().applied_index;
            if applied == 0 {
                let _ = reply.send(Err(refuse("the group has applied nothing yet".into())));
                return;
            }
            let mut batch = self.store.batch();
            let compacted = g
                .raw
                .mut_store()
                .compact(&mut batch, applied)
                .and_then(|()| self.store.write(batch, Durability::Buffered));
            if let Err(e) = compacted {
                let _ = reply.send(Err(RaftError::from_store(e)));
                return;
            }
        }
        g.busy(&self.shared.metrics);
        self.touched.insert(shard);
        match append(g, "propose_conf_change", |raw| {
            raw.propose_conf_change(Vec::new(), cc)
        }) {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            // raft-rs appended an empty entry in its place: refused.
            Ok((index, _)) if g.raw.raft.pending_conf_index != index => {
                let _ = reply.send(Err(refuse(format!(
                    "raft did not accept it (entry {index} is not a conf change)"
                ))));
            }
            Ok((index, term)) => {
                tracing::info!(shard, ?changes, index, "membership change proposed");
                g.conf_waiter = Some((index, term, reply));
            }
        }
    }

    fn on_transfer_leader(&mut self, shard: ShardId, to: NodeId) -> Result<(), RaftError> {
        let g = self
            .groups
            .get_mut(&shard)
            .ok_or(RaftError::ShardNotFound(shard))?;
        if let Some(r) = &g.stopped {
            return Err(RaftError::Internal(r.clone()));
        }
        if !g.is_leader() {
            return Err(g.not_leader());
        }
        if to == self.node_id {
            return Ok(());
        }
        if !g.membership.voters.contains(&to) {
            return Err(RaftError::ConfChangeRefused {
                shard,
                why: format!("node {to} is not a voter"),
            });
        }
        g.wake(&self.shared.metrics);
        tracing::info!(shard, to, "leadership transfer started");
        guarded(g, "transfer_leader", |raw| raw.transfer_leader(to));
        self.touched.insert(shard);
        Ok(())
    }

    /// Deletes this node's replica of `shard` (log, raft state, data of its range) in one
    /// durable write, and forgets the group. Its waiters fail.
    fn destroy(&mut self, shard: ShardId, why: &str) -> Result<(), StoreError> {
        let Some(mut g) = self.groups.remove(&shard) else {
            return Ok(());
        };
        let desc = g.raw.store().desc.clone();
        let leader = g.leader_hint();
        g.fail_all(|| RaftError::NotLeader { shard, leader });
        self.shared.shards.write().remove(&shard);
        self.touched.remove(&shard);
        let mut batch = self.store.batch();
        let written = storage::destroy(&mut batch, &desc)
            .and_then(|()| self.store.write(batch, Durability::Sync));
        if let Some(r) = g.installing.take() {
            let _ = std::fs::remove_file(r.path());
        }
        add(&self.shared.metrics.replicas_destroyed, 1);
        tracing::info!(node = self.node_id, shard, why, "replica destroyed");
        if let Err(e) = &written {
            tracing::error!(shard, error = %e, "destroying a replica failed");
        }
        written
    }

    /// One coalesced tick: node liveness and keepalives, then one raft tick for every awake
    /// group with the leaders' hibernation bookkeeping; also drops waiters whose caller gave
    /// up. Sleeping groups are skipped unless a peer node just died.
    fn tick(&mut self) {
        self.ticks = self.ticks.wrapping_add(1);
        {
            let heard = self.shared.peers_heard.read();
            for (&id, flag) in heard.iter() {
                if flag.swap(false, Ordering::Relaxed) {
                    self.liveness.heard(id);
                }
            }
        }
        let died = self.liveness.tick();
        {
            let alive: BTreeSet<NodeId> = self
                .liveness
                .peers()
                .filter(|&p| self.liveness.is_alive(p))
                .collect();
            if *self.shared.alive.read() != alive {
                *self.shared.alive.write() = alive;
            }
        }
        for peer in &died {
            tracing::info!(
                node = self.node_id,
                peer,
                "peer node silent for peer_timeout: considered dead"
            );
        }
        let shared = self.shared.clone();
        let metrics = &shared.metrics;
        if self.ticks.is_multiple_of(self.cfg.heartbeat_tick as u64) {
            for peer in self.liveness.peers() {
                add(&metrics.keepalives_sent, 1);
                self.transport.send(peer, Vec::new());
            }
        }
        let me = self.node_id;
        let hibernate_after = self.cfg.hibernate_after_ticks;
        for (&id, g) in self.groups.iter_mut() {
            if g.stopped.is_some() {
                if !g.stop_announced {
                    // Followers of a stopped leader must not sleep on, waiting for it.
                    g.stop_announced = true;
                    let term = g.raw.raft.term;
                    for v in g.membership.replicas().into_iter().filter(|&v| v != me) {
                        self.wake_out.push((v, id, term));
                    }
                }
                continue;
            }
            if g.hibernating {
                if died.is_empty() {
                    continue;
                }
                let alive = |n: NodeId| self.liveness.is_alive(n);
                let orphaned = if g.is_leader() {
                    g.membership
                        .replicas()
                        .iter()
                        .any(|&v| v != me && !alive(v))
                } else {
                    g.leader_hint().is_none_or(|l| !alive(l))
                };
                if !orphaned {
                    continue;
                }
                tracing::debug!(
                    shard = id,
                    "a node this sleeping group depends on died: waking"
                );
                g.wake(metrics);
                self.touched.insert(id);
            }
            if guarded(g, "tick", |raw| raw.tick()).is_none() {
                self.touched.insert(id);
                continue;
            }
            g.purge_abandoned();
            if g.membership.is_joint() && g.is_leader() {
                leave_joint_if_stuck(g);
            }
            if g.changing() {
                g.idle_ticks = 0;
                g.drowsy = false;
                g.sleep_acks.clear();
                continue;
            }
            if hibernate_after == 0 || !g.multi_voter() {
                continue;
            }
            let quiescent =
                g.idle() && hibernate::leader_quiescent(&g.raw.raft, |n| self.liveness.is_alive(n));
            if !quiescent {
                if g.idle_ticks > 0 || g.drowsy {
                    g.idle_ticks = 0;
                    g.drowsy = false;
                    g.sleep_acks.clear();
                }
                continue;
            }
            g.idle_ticks = (g.idle_ticks + 1).min(hibernate_after);
            if g.idle_ticks >= hibernate_after && !g.drowsy {
                // Announce at once; heartbeats carry `Sleep` until every follower acked.
                g.drowsy = true;
                g.sleep_acks.clear();
                guarded(g, "ping", |raw| raw.ping());
                self.touched.insert(id);
            }
        }
    }

    /// Issues one raft ReadIndex per shard for every queued read.
    fn issue_reads(&mut self) {
        for (id, g) in self.groups.iter_mut() {
            if g.read_queue.is_empty() || g.stopped.is_some() {
                continue;
            }
            if !g.is_leader() && g.leader_hint().is_none() {
                let shard = *id;
                for r in g.read_queue.drain(..) {
                    let _ = r.send(Err(RaftError::NotLeader {
                        shard,
                        leader: None,
                    }));
                }
                continue;
            }
            // raft-rs drops a ReadIndex until the leader committed an entry of its term;
            // keep the reads queued until then. A follower's goes to its leader, which
            // answers with its commit index once it has confirmed its leadership.
            if g.is_leader() && !g.raw.raft.commit_to_current_term() {
                continue;
            }
            let mut ctx = self.read_ctx_prefix.to_vec();
            ctx.extend_from_slice(&self.next_read_ctx.to_be_bytes());
            self.next_read_ctx += 1;
            let c = ctx.clone();
            if guarded(g, "read_index", |raw| raw.read_index(c)).is_some() {
                let waiters = std::mem::take(&mut g.read_queue);
                g.reads_inflight.push((ctx, waiters));
                self.touched.insert(*id);
            }
        }
    }

    fn fail_store(&mut self, e: StoreError) {
        tracing::error!(node = self.node_id, error = %e, "node store write failed; raft loop stops");
        self.fatal = true;
        let poisoned = matches!(e, StoreError::Poisoned) || self.store.is_poisoned();
        let text = e.to_string();
        for g in self.groups.values_mut() {
            if poisoned {
                g.fail_all(|| RaftError::Poisoned);
            } else {
                g.fail_all(|| RaftError::Internal(format!("store write failed: {text}")));
            }
        }
    }

    /// One round: persist every group's Ready in one write, send, apply.
    fn process(&mut self) {
        add(&self.shared.metrics.loop_iterations, 1);
        self.install_slices();
        if self.fatal {
            return;
        }
        self.issue_reads();
        let shared = self.shared.clone();
        let metrics = &shared.metrics;

        // 1. Collect every ready and stage its persistent part in one batch. The messages
        // raft-rs allows before persisting (a leader's appends and heartbeats) go out
        // before the batch is written: followers write and sync the entries while the
        // leader does, instead of after it.
        let mut batch = self.store.batch();
        let mut must_sync = false;
        let mut readies = Vec::new();
        let mut lost_leadership = Vec::new();
        let mut early: BTreeMap<NodeId, Vec<Message>> = BTreeMap::new();
        let mut snapshots: Vec<(ShardId, Message)> = Vec::new();
        for (&id, g) in self.groups.iter_mut() {
            if g.stopped.is_some() || g.installing.is_some() || !g.raw.has_ready() {
                continue;
            }
            let Some(mut rd) = guarded(g, "ready", |raw| raw.ready()) else {
                continue;
            };
            add(&metrics.readies, 1);
            route_messages(
                self.node_id,
                id,
                g,
                rd.take_messages(),
                &mut early,
                &mut snapshots,
            );
            self.touched.insert(id);
            // Waiters of a leader that stepped down fail after this iteration's committed
            // entries are applied (step 5): those may still complete their proposals.
            if rd.ss().is_some_and(|ss| ss.raft_state != StateRole::Leader) {
                lost_leadership.push(id);
            }
            // A follower's reads in flight went to a leader that may be gone: they fail
            // (retryable) rather than wait for an answer that will not come.
            if rd.ss().is_some() && !g.is_leader() {
                let (shard, leader) = (id, g.leader_hint());
                for (_, waiters) in g.reads_inflight.drain(..) {
                    for w in waiters {
                        let _ = w.send(Err(RaftError::NotLeader { shard, leader }));
                    }
                }
            }
            for rs in rd.take_read_states() {
                g.on_read_state(rs);
            }
            let mut installed = false;
            if !rd.snapshot().is_empty() {
                // A staged snapshot's file is opened first: a failure leaves nothing in
                // the batch.
                let meta = rd.snapshot().get_metadata();
                let reader = if snapshot::is_staged_snapshot(rd.snapshot()) {
                    let path = snapshot::staged_path(self.store.dir(), id, meta.index, meta.term);
                    match StagedReader::open(path, g.raw.store().desc.clone()) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            g.stop(format!("cannot install snapshot: {e}"));
                            continue;
                        }
                    }
                } else {
                    None
                };
                match g.raw.mut_store().apply_snapshot(&mut batch, rd.snapshot()) {
                    Err(e) => {
                        g.stop(format!("cannot install snapshot: {e}"));
                        continue;
                    }
                    Ok(Some(_)) => {
                        // Marked before the batch clears the range: no read sees it part
                        // written (`RaftNode::still_here`).
                        if let Some(e) = self.shared.shards.write().get_mut(&id) {
                            e.status.installing = true;
                        }
                        g.installing = reader;
                    }
                    Ok(None) => {}
                }
                installed = true;
            }
            if !rd.entries().is_empty() {
                if let Err(e) = g.raw.mut_store().append(&mut batch, rd.entries()) {
                    g.stop(format!("cannot append entries: {e}"));
                    continue;
                }
                add(&metrics.entries_persisted, rd.entries().len() as u64);
            }
            if let Some(hs) = rd.hs() {
                if let Err(e) = g.raw.mut_store().set_hard_state(&mut batch, hs) {
                    g.stop(format!("cannot persist hard state: {e}"));
                    continue;
                }
            }
            must_sync |= rd.must_sync();
            readies.push((id, rd, installed));
        }
        for (to, msgs) in early {
            add(&metrics.messages_sent, msgs.len() as u64);
            self.transport.send(to, msgs);
        }
        if !batch.is_empty() {
            let started = Instant::now();
            let durability = if must_sync {
                Durability::Sync
            } else {
                Durability::Buffered
            };
            if let Err(e) = self.store.write(batch, durability) {
                self.fail_store(e);
                return;
            }
            add(&metrics.persist_batches, 1);
            add(
                &metrics.persist_micros_total,
                started.elapsed().as_micros() as u64,
            );
        }

        // 2. Advance: messages and committed entries become available.
        let mut outbox: BTreeMap<NodeId, Vec<Message>> = BTreeMap::new();
        let mut to_apply: Vec<(ShardId, Vec<Entry>)> = Vec::new();
        let mut snapshot_members = Vec::new();
        for (id, mut rd, installed) in readies {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            let mut msgs = rd.take_persisted_messages();
            let mut committed = rd.take_committed_entries();
            let Some(mut light) = guarded(g, "advance", |raw| raw.advance_append(rd)) else {
                continue;
            };
            if let Some(commit) = light.commit_index() {
                g.raw.mut_store().set_commit(commit);
            }
            msgs.extend(light.take_messages());
            committed.extend(light.take_committed_entries());
            if installed {
                g.refresh_membership();
                snapshot_members.push(g.membership.clone());
                if g.installing.is_some() {
                    tracing::info!(
                        shard = id,
                        applied = g.raw.store().applied_index,
                        "raft snapshot received; installing its data"
                    );
                    if !committed.is_empty() {
                        g.stop("entries committed with a snapshot being installed".into());
                        continue;
                    }
                } else {
                    add(&metrics.snapshots_applied, 1);
                    tracing::info!(
                        shard = id,
                        applied = g.raw.store().applied_index,
                        "raft snapshot installed"
                    );
                }
            }
            route_messages(self.node_id, id, g, msgs, &mut outbox, &mut snapshots);
            if !committed.is_empty() {
                to_apply.push((id, committed));
            }
        }

        for m in &snapshot_members {
            self.track_peers(m);
        }
        for (to, shard, term) in self.wake_out.drain(..) {
            let m = hibernate::wake_message(self.node_id, to, term, shard);
            outbox.entry(to).or_default().push(m);
        }

        // 3. Send: one transport call per destination node; snapshots one by one, each
        // reported back to the loop (Cmd::SnapshotSent) once delivered or lost.
        for (to, msgs) in outbox {
            add(&metrics.messages_sent, msgs.len() as u64);
            self.transport.send(to, msgs);
        }
        for (shard, m) in snapshots {
            let report = SnapshotReport {
                tx: Some(self.snapshots_sent.0.clone()),
                shard,
                to: m.to,
            };
            let index = m.get_snapshot().get_metadata().index;
            let source = self
                .groups
                .get(&shard)
                .and_then(|g| g.raw.store().take_outgoing(m.to, index));
            let Some(source) = source else {
                // Built for an earlier message: raft is told it failed and builds another.
                tracing::warn!(
                    shard,
                    to = m.to,
                    index,
                    "snapshot without its data source; dropped"
                );
                continue;
            };
            add(&metrics.messages_sent, 1);
            add(&metrics.snapshots_sent, 1);
            self.transport.send_snapshot(m.to, m, source, report);
        }

        // 4. Apply committed entries of every group in one batch, with their applied index.
        let mut batch = self.store.batch();
        let mut completions = Vec::new();
        let mut conf_done = Vec::new();
        let mut conf_changed = Vec::new();
        let applied_ids: Vec<ShardId> = to_apply.iter().map(|(id, _)| *id).collect();
        let mut result = Ok(());
        for (id, ents) in to_apply {
            if let Some(g) = self.groups.get_mut(&id) {
                result = apply_entries(
                    &self.store,
                    &self.cfg,
                    metrics,
                    g,
                    &mut batch,
                    ents,
                    &mut completions,
                    &mut conf_done,
                    &mut conf_changed,
                );
                if result.is_err() {
                    break;
                }
            }
        }
        // A failed read while applying leaves the batch half-built: write none of it (data
        // and applied index must move together) and stop, as after a failed write.
        let result = result.and_then(|()| {
            if batch.is_empty() {
                Ok(())
            } else {
                self.store.write(batch, Durability::Buffered)
            }
        });
        if let Err(e) = result {
            let poisoned = matches!(e, StoreError::Poisoned) || self.store.is_poisoned();
            let failed = || {
                if poisoned {
                    RaftError::Poisoned
                } else {
                    RaftError::Internal("store failed while applying".into())
                }
            };
            for (reply, _) in completions {
                let _ = reply.send(Err(failed()));
            }
            for (reply, _) in conf_done {
                let _ = reply.send(Err(failed()));
            }
            self.fail_store(e);
            return;
        }
        // Watchers see the new applied index no later than the proposers.
        for id in &applied_ids {
            if let Some(g) = self.groups.get(id) {
                publish_applied(g);
            }
        }
        for (reply, result) in completions {
            let _ = reply.send(result);
        }
        for (reply, result) in conf_done {
            let _ = reply.send(result);
        }
        // New members' nodes are watched; a replica whose own removal was just applied
        // (and written) is destroyed, so it neither votes nor heartbeats again.
        for id in conf_changed {
            let Some(m) = self.groups.get(&id).map(|g| g.membership.clone()) else {
                continue;
            };
            if m.contains(self.node_id) {
                self.track_peers(&m);
            } else if let Err(e) = self.destroy(id, "removed from its group") {
                self.fail_store(e);
                return;
            }
        }

        // 5. Tell raft what is applied; wake readers and watchers; hibernate idle groups.
        let touched = std::mem::take(&mut self.touched);
        for id in &touched {
            let Some(g) = self.groups.get_mut(id) else {
                continue;
            };
            let applied = g.raw.store().applied_index;
            if g.stopped.is_none() && applied > g.raw.raft.raft_log.applied {
                guarded(g, "advance_apply", |raw| raw.advance_apply_to(applied));
            }
            g.complete_reads();
            publish_applied(g);
            if lost_leadership.contains(id) && !g.is_leader() {
                g.fail_not_leader();
            }
            if g.stopped.is_none() && !g.hibernating && may_hibernate(self.node_id, g) {
                g.sleep(metrics);
            }
        }
        self.touched = touched;
        self.publish_status();
        // Staged snapshots raft did not take (stale, or refused) are not kept.
        for path in std::mem::take(&mut self.staged) {
            let used = self
                .groups
                .values()
                .any(|g| g.installing.as_ref().is_some_and(|r| r.path() == path));
            if !used {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Copies the status of touched groups to the shared map.
    fn publish_status(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        if touched.is_empty() {
            return;
        }
        let mut shards = self.shared.shards.write();
        for id in touched {
            if let (Some(g), Some(e)) = (self.groups.get(&id), shards.get_mut(&id)) {
                e.status = g.status();
            }
        }
    }
}

/// Key (in `Space::RaftState`, outside the shard keys' 9-byte layout) of the number of
/// times this store's loop started.
const INCARNATION_KEY: &[u8] = b"incarnation";

/// `node id · incarnation`, the incarnation counted up durably at every start.
fn read_ctx_prefix(store: &Store, node: NodeId) -> Result<[u8; 16], RaftError> {
    let prev = store
        .get(Space::RaftState, INCARNATION_KEY)
        .map_err(RaftError::from_store)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes);
    let next = prev.wrapping_add(1);
    let mut b = store.batch();
    b.put(Space::RaftState, INCARNATION_KEY, &next.to_be_bytes());
    store
        .write(b, Durability::Sync)
        .map_err(RaftError::from_store)?;
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&node.to_be_bytes());
    out[8..].copy_from_slice(&next.to_be_bytes());
    Ok(out)
}

/// Proposes one entry with `f` on a leader and returns where raft appended
/// it: (index, term). `NotLeader` when raft dropped it; an internal error
/// when raft panicked (the group stopped) or appended anything but exactly
/// one entry.
fn append(
    g: &mut Group,
    what: &str,
    f: impl FnOnce(&mut RawNode<ShardStorage>) -> raft::Result<()>,
) -> Result<(u64, u64), RaftError> {
    let before = g.raw.raft.raft_log.last_index();
    match guarded(g, what, f) {
        None => Err(RaftError::Internal("raft group stopped".into())),
        Some(Err(e)) => {
            tracing::debug!(shard = g.id(), error = %e, what, "proposal dropped by raft");
            Err(g.not_leader())
        }
        Some(Ok(())) => {
            let index = g.raw.raft.raft_log.last_index();
            if index != before + 1 {
                return Err(RaftError::Internal(format!(
                    "{what}: not appended (last index {before} -> {index})"
                )));
            }
            Ok((index, g.raw.raft.term))
        }
    }
}

/// Steps one raft message into a group (a raft-rs panic stops only that group).
fn step(g: &mut Group, shard: ShardId, m: Message) {
    if let Some(Err(e)) = guarded(g, "step", |raw| raw.step(m)) {
        tracing::debug!(shard, error = %e, "raft step refused a message");
    }
}

fn publish_applied(g: &Group) {
    let applied = g.raw.store().applied_index;
    g.applied_tx.send_if_modified(|v| {
        let changed = *v != applied;
        *v = applied;
        changed
    });
}

/// Single-voter leader with nothing in flight: ticks would do nothing, and there is no peer to
/// tell or to fail over to (multi-voter groups: see `hibernate`).
fn may_hibernate(node_id: NodeId, g: &Group) -> bool {
    let log = &g.raw.raft.raft_log;
    g.raw.store().voters() == [node_id]
        && !g.changing()
        && g.is_leader()
        && g.idle()
        && !g.raw.has_ready()
        && log.committed == log.last_index()
        && g.raw.store().applied_index == log.committed
}

type Completion = (Reply<TxnOutcome>, Result<TxnOutcome, RaftError>);
type ConfCompletion = (Reply<Membership>, Result<Membership, RaftError>);

/// The raft-rs form of a membership change, checked against the current configuration.
/// Voter changes go through joint consensus (left automatically); learner-only changes are
/// one simple step. An empty list leaves a joint configuration.
fn conf_change(
    me: NodeId,
    m: &Membership,
    changes: &[MemberChange],
) -> Result<ConfChangeV2, String> {
    let mut cc = ConfChangeV2::default();
    if changes.is_empty() {
        if !m.is_joint() {
            return Err("the group is not in a joint configuration".into());
        }
        return Ok(cc);
    }
    if m.is_joint() {
        return Err("the group is in a joint configuration; leave it first".into());
    }
    let mut seen = BTreeSet::new();
    let mut voters_change = false;
    for c in changes {
        let (ty, node) = match *c {
            MemberChange::AddLearner(n) => {
                if m.contains(n) {
                    return Err(format!("node {n} already holds a replica"));
                }
                (ConfChangeType::AddLearnerNode, n)
            }
            MemberChange::AddVoter(n) => {
                if m.voters.contains(&n) {
                    return Err(format!("node {n} is already a voter"));
                }
                if !m.learners.contains(&n) {
                    return Err(format!(
                        "node {n} is not a learner: add it as a learner and let it catch up first"
                    ));
                }
                voters_change = true;
                (ConfChangeType::AddNode, n)
            }
            MemberChange::Demote(n) => {
                if !m.voters.contains(&n) {
                    return Err(format!("node {n} is not a voter"));
                }
                voters_change = true;
                (ConfChangeType::AddLearnerNode, n)
            }
            MemberChange::Remove(n) => {
                if !m.contains(n) {
                    return Err(format!("node {n} holds no replica"));
                }
                voters_change |= m.voters.contains(&n);
                (ConfChangeType::RemoveNode, n)
            }
        };
        if node == 0 {
            return Err("node 0 is not a node".into());
        }
        if !seen.insert(node) {
            return Err(format!("node {node} appears twice"));
        }
        if node == me && matches!(c, MemberChange::Remove(_) | MemberChange::Demote(_)) {
            return Err(
                "the leader cannot remove or demote itself: transfer leadership first".into(),
            );
        }
        let mut single = ConfChangeSingle::default();
        single.set_change_type(ty);
        single.node_id = node;
        cc.mut_changes().push(single);
    }
    let remaining = m
        .voters
        .iter()
        .filter(|v| {
            !changes
                .iter()
                .any(|c| matches!(c, MemberChange::Remove(n) | MemberChange::Demote(n) if n == *v))
        })
        .count();
    if remaining == 0 {
        return Err("the group would have no voter left".into());
    }
    cc.set_transition(if voters_change {
        ConfChangeTransition::Implicit
    } else {
        ConfChangeTransition::Auto
    });
    Ok(cc)
}

/// A committed conf change entry as a `ConfChangeV2` (version 1 entries converted).
fn decode_conf_change(e: &Entry) -> Result<ConfChangeV2, String> {
    match e.get_entry_type() {
        EntryType::EntryConfChange => {
            let mut v1 = ConfChange::default();
            v1.merge_from_bytes(&e.data).map_err(|e| e.to_string())?;
            // As raft-rs converts it: one simple step.
            let mut single = ConfChangeSingle::default();
            single.set_change_type(v1.get_change_type());
            single.node_id = v1.node_id;
            let mut v2 = ConfChangeV2::default();
            v2.mut_changes().push(single);
            v2.context = v1.context;
            Ok(v2)
        }
        _ => {
            let mut v2 = ConfChangeV2::default();
            v2.merge_from_bytes(&e.data).map_err(|e| e.to_string())?;
            Ok(v2)
        }
    }
}

/// A leader in a joint configuration with no change pending proposes to leave it: raft-rs
/// leaves automatically only when the leader that applied the entry into it is still
/// leading (a new leader, or a crash in between, would leave the group joint for good).
fn leave_joint_if_stuck(g: &mut Group) {
    if g.conf_waiter.is_some()
        || g.raw.raft.has_pending_conf()
        || !g.raw.raft.commit_to_current_term()
        || g.raw.store().applied_index < g.raw.raft.raft_log.committed
    {
        return;
    }
    let shard = g.id();
    tracing::info!(shard, membership = ?g.membership, "leaving a joint configuration");
    if let Some(Err(e)) = guarded(g, "leave_joint", |raw| {
        raw.propose_conf_change(Vec::new(), ConfChangeV2::default())
    }) {
        tracing::debug!(shard, error = %e, "leave-joint proposal dropped");
    }
}

/// Applies committed entries of one group into `batch`, records the applied index there, and
/// compacts the log when it grew past the threshold. Waiter results go to `completions`
/// (sent only after the batch is written).
#[allow(clippy::too_many_arguments)]
fn apply_entries(
    store: &Store,
    cfg: &Config,
    metrics: &Metrics,
    g: &mut Group,
    batch: &mut WriteBatch,
    ents: Vec<Entry>,
    completions: &mut Vec<Completion>,
    conf_done: &mut Vec<ConfCompletion>,
    conf_changed: &mut Vec<ShardId>,
) -> Result<(), StoreError> {
    let desc = g.raw.store().desc.clone();
    let mut last = None;
    for e in ents {
        if e.index <= g.raw.store().applied_index {
            continue;
        }
        let mut result: Option<Result<TxnOutcome, RaftError>> = None;
        match e.get_entry_type() {
            EntryType::EntryNormal if e.data.is_empty() => {}
            EntryType::EntryNormal => {
                // The stored form when this node moved the entry's bulk
                // bytes to blobs: apply references them instead of copying.
                let stored = g.raw.mut_store().take_stored(e.index, e.term);
                let txn = match cmd::decode(stored.as_deref().unwrap_or(&e.data)) {
                    Ok(t) => t,
                    Err(why) => {
                        if let Some((i, t)) = last {
                            g.raw.mut_store().set_applied(batch, i, t)?;
                        }
                        g.stop(format!("entry {} is not a valid command: {why}", e.index));
                        return Ok(());
                    }
                };
                let applied = if keys_storable(&txn) {
                    cmd::apply(store, batch, &desc, &txn, e.index)?
                } else {
                    ApplyResult::OutOfRange
                };
                result = Some(match applied {
                    ApplyResult::Done(o) => Ok(o),
                    ApplyResult::OutOfRange => {
                        tracing::error!(
                            shard = desc.id,
                            index = e.index,
                            "committed txn touches keys outside the shard; skipped"
                        );
                        Err(RaftError::KeyOutOfRange { shard: desc.id })
                    }
                });
            }
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                let cc = match decode_conf_change(&e) {
                    Ok(cc) => cc,
                    Err(why) => {
                        if let Some((i, t)) = last {
                            g.raw.mut_store().set_applied(batch, i, t)?;
                        }
                        g.stop(format!(
                            "entry {} is not a valid conf change: {why}",
                            e.index
                        ));
                        return Ok(());
                    }
                };
                // Every replica applies the same entries to the same configuration, so a
                // change raft-rs refuses is refused everywhere: it is skipped, not fatal.
                match guarded(g, "apply_conf_change", |raw| raw.apply_conf_change(&cc)) {
                    None => return Ok(()),
                    Some(Err(err)) => {
                        tracing::error!(shard = desc.id, index = e.index, error = %err, "committed conf change is invalid; skipped");
                    }
                    Some(Ok(cs)) => {
                        g.raw.mut_store().set_conf(cs);
                        g.refresh_membership();
                        add(&metrics.conf_changes_applied, 1);
                        tracing::info!(shard = desc.id, index = e.index, membership = ?g.membership, "membership change applied");
                        conf_changed.push(desc.id);
                    }
                }
                if let Some((index, term, _)) = &g.conf_waiter {
                    if *index <= e.index {
                        let same = *index == e.index && *term == e.term;
                        if let Some((_, _, w)) = g.conf_waiter.take() {
                            let r = if same {
                                Ok(g.membership.clone())
                            } else {
                                Err(g.not_leader())
                            };
                            conf_done.push((w, r));
                        }
                    }
                }
            }
        }
        last = Some((e.index, e.term));
        while let Some(p) = g.proposals.front() {
            if p.index > e.index {
                break;
            }
            let Some(p) = g.proposals.pop_front() else {
                break;
            };
            if p.index == e.index && p.term == e.term {
                let r = result
                    .take()
                    .unwrap_or_else(|| Err(RaftError::Internal("entry is not a command".into())));
                completions.push((p.reply, r));
            } else {
                // Another leader's entry took this index: ours is lost.
                completions.push((p.reply, Err(g.not_leader())));
            }
        }
    }
    if let Some((index, term)) = last {
        let s = g.raw.mut_store();
        s.set_applied(batch, index, term)?;
        if index.saturating_sub(s.first_log_index()) >= cfg.log_compact_threshold
            || s.bytes_since_compact >= crate::storage::LOG_COMPACT_BYTES
        {
            s.compact(batch, index)?;
        } else if s.bytes_since_compact >= crate::storage::LOG_TRIM_BYTES {
            // Bulk data: drop what every replica has while the entries are
            // still in the memtable, so they never reach the log's blob files.
            if let Some(to) = replicated_floor(g, index) {
                g.raw.mut_store().compact(batch, to)?;
            }
        }
    }
    Ok(())
}

/// The highest index up to `applied` that every voter and learner of the
/// group is known to hold, when this node leads it; `None` on followers
/// (they keep their log for the day they lead) and when nothing is gained.
fn replicated_floor(g: &Group, applied: u64) -> Option<u64> {
    if !g.is_leader() {
        return None;
    }
    let floor = g
        .raw
        .raft
        .prs()
        .iter()
        .map(|(_, pr)| pr.matched)
        .min()?
        .min(applied);
    (floor > g.raw.store().first_log_index().saturating_sub(1)).then_some(floor)
}

/// The blob collector's thread: one pass per interval until the node stops.
/// A pass reads every key of the node, so on a large store the interval
/// stretches to keep the collector under 5 % of a core.
fn blob_gc_loop(store: &Arc<Store>, shared: &Shared, gc: &Mutex<BlobGc>, every: Duration) {
    let step = Duration::from_millis(100).min(every);
    let mut wait = every;
    let mut waited = Duration::ZERO;
    while !shared.stopped.load(Ordering::SeqCst) {
        std::thread::sleep(step);
        waited += step;
        if waited < wait {
            continue;
        }
        waited = Duration::ZERO;
        let started = Instant::now();
        if let Err(e) = gc.lock().pass(store) {
            tracing::warn!(error = %e, "blob gc pass failed");
        }
        wait = every.max(started.elapsed().saturating_mul(20));
    }
}

/// A replica's applied state of one shard at one instant
/// ([`RaftNode::snapshot`]).
pub struct ShardSnapshot {
    shard: ShardId,
    desc: ShardDesc,
    applied: u64,
    view: berth_store::StoreSnapshot,
}

impl ShardSnapshot {
    /// The shard's applied index when the view was taken (a lower bound:
    /// the view may reflect a few entries more).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Reads a key as of the view.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RaftError> {
        if !self.desc.contains(key) {
            return Err(RaftError::KeyOutOfRange { shard: self.shard });
        }
        self.view
            .get(Space::Data, key)
            .map_err(RaftError::from_store)
    }

    /// Scans the view; `[start, end)` is clamped to the shard's range.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<KvPairs, RaftError> {
        let (s, e) = self.desc.clamp(start, end);
        self.view
            .scan(Space::Data, &s, &e, limit)
            .map_err(RaftError::from_store)
    }

    /// Like [`ShardSnapshot::scan`], in descending key order.
    pub fn scan_rev(&self, start: &[u8], end: &[u8], limit: usize) -> Result<KvPairs, RaftError> {
        let (s, e) = self.desc.clamp(start, end);
        self.view
            .scan_rev(Space::Data, &s, &e, limit)
            .map_err(RaftError::from_store)
    }
}
