//! The shard router: key → shard → leader, and optimistic transactions.
//!
//! Services never address shards themselves: they ask the router for the
//! shard owning a key and run a [`Tx`] against it. A `Tx` reads the shard's
//! applied state after a linearizable read barrier, records every value it
//! read, and commits as one conditional Raft command whose conditions are
//! exactly those reads. If anything it read changed in between, the command
//! applies nothing and the caller retries from fresh reads (bounded).
//!
//! Every node serves every shard. A node holding a replica reads from it
//! after the read barrier (on a follower, the leader's ReadIndex), and a
//! commit on a follower is forwarded to the leader (one hop, through a
//! [`Forwarder`]). A node without a replica reads remotely: the barrier and
//! every read go to a node holding one (the leader when known), which
//! answers with its applied index; later reads of the transaction ask for at
//! least that index, so a read served by another replica after a failover
//! never goes back in time. Its commit goes to the leader like a
//! follower's.
//!
//! Architecture invariant: the router is the only place outside berth-raft
//! that proposes commands.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use berth_raft::cmd::{Condition, Op, Txn, TxnOutcome};
use berth_raft::{NodeId, RaftError, RaftNode, ShardId};
use parking_lot::RwLock;

use crate::map::ShardRecord;
use crate::{Code, Error};

/// Upper bound on optimistic retries of one operation.
pub const TX_RETRIES_MAX: usize = 64;

/// A proposal in flight on another node.
pub type Forwarded = Pin<Box<dyn Future<Output = Result<TxnOutcome, Error>> + Send>>;

/// A read in flight on another node.
pub type ForwardedRead = Pin<Box<dyn Future<Output = Result<ReadReply, Error>> + Send>>;

/// Reaches other nodes for this node's transactions (the server implements it over the
/// node-to-node listener).
pub trait Forwarder: Send + Sync + 'static {
    /// Sends a transaction to the node leading its shard. The receiving node proposes it
    /// locally and never forwards again.
    fn propose(&self, leader: NodeId, shard: ShardId, txn: Txn) -> Forwarded;
    /// Reads from the replica on `node` ([`serve_read`] there); never forwarded again.
    fn read(&self, node: NodeId, req: ReadRequest) -> ForwardedRead;
}

/// What a remote read asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOp {
    /// Nothing: only the barrier and the applied index.
    Barrier,
    Get {
        key: Vec<u8>,
    },
    GetPart {
        key: Vec<u8>,
        from: u32,
        len: u32,
    },
    Scan {
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
    },
    ScanKeys {
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
    },
    /// The last pairs of `[start, end)`, in descending key order.
    ScanRev {
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
    },
}

/// A read served by another node's replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub shard: ShardId,
    pub op: ReadOp,
    /// Take a linearizable read barrier first.
    pub barrier: bool,
    /// Read only once the replica applied at least this index.
    pub min_applied: u64,
}

/// What a remote read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadValue {
    None,
    Value(Option<Vec<u8>>),
    Pairs(berth_store::KvPairs),
    Keys(Vec<Vec<u8>>),
}

/// The answer to a [`ReadRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadReply {
    /// The replica's applied index when it read: what the reply reflects at least.
    pub applied: u64,
    pub value: ReadValue,
}

/// Most bytes one remote read returns; a larger result is refused (E2BIG) rather than
/// held whole in memory on both nodes.
pub const REMOTE_READ_BYTES_MAX: usize = 48 << 20;
/// How long a replica waits to catch up with a read's `min_applied`.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Nodes tried by one remote read (the first, then the ones redirected to).
const REMOTE_TRIES: usize = 3;

/// Serves a [`ReadRequest`] from this node's replica: the barrier when asked, a wait
/// until the replica applied `min_applied`, then the read. A node without a replica
/// answers with a retryable error naming the leader it knows.
pub async fn serve_read(raft: &RaftNode, req: ReadRequest) -> Result<ReadReply, Error> {
    let shard = req.shard;
    let Some(mut applied) = raft.applied_watch(shard) else {
        return Err(match raft.leader(shard) {
            Some(l) => Error::elsewhere(l, format!("shard {shard} has no replica on this node")),
            None => Error::new(
                Code::Again,
                format!("shard {shard} has no replica on this node"),
            ),
        });
    };
    if req.barrier {
        raft.read_index(shard).await?;
    }
    if *applied.borrow() < req.min_applied {
        let caught_up =
            tokio::time::timeout(CATCH_UP_WAIT, applied.wait_for(|a| *a >= req.min_applied)).await;
        if !matches!(caught_up, Ok(Ok(_))) {
            return Err(Error::new(
                Code::Again,
                format!(
                    "shard {shard}: this replica is behind index {}; retry",
                    req.min_applied
                ),
            ));
        }
    }
    // Read after the index: the data reflects at least it.
    let at = *applied.borrow();
    let too_big = || {
        Error::new(
            Code::TooBig,
            format!("a read of more than {REMOTE_READ_BYTES_MAX} bytes from another node"),
        )
    };
    let reverse = matches!(req.op, ReadOp::ScanRev { .. });
    let value = match req.op {
        ReadOp::Barrier => ReadValue::None,
        ReadOp::Get { key } => ReadValue::Value(raft.get(shard, &key)?),
        ReadOp::GetPart { key, from, len } => {
            ReadValue::Value(raft.get_range(shard, &key, from, len)?)
        }
        ReadOp::Scan { start, end, limit } | ReadOp::ScanRev { start, end, limit } => {
            let pairs = match reverse {
                false => raft.scan(shard, &start, &end, limit)?,
                true => raft.scan_rev(shard, &start, &end, limit)?,
            };
            let bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
            if bytes > REMOTE_READ_BYTES_MAX {
                return Err(too_big());
            }
            ReadValue::Pairs(pairs)
        }
        ReadOp::ScanKeys { start, end, limit } => {
            let keys = raft.scan_keys(shard, &start, &end, limit)?;
            if keys.iter().map(Vec::len).sum::<usize>() > REMOTE_READ_BYTES_MAX {
                return Err(too_big());
            }
            ReadValue::Keys(keys)
        }
    };
    Ok(ReadReply { applied: at, value })
}

/// Routes keys to shards and runs transactions on them.
pub struct Router {
    raft: RaftNode,
    node_id: NodeId,
    /// Every shard of the cluster, sorted by range start.
    shards: RwLock<Vec<ShardRecord>>,
    /// How commits made on a follower reach the leader; unset: they fail with a
    /// retryable error naming the leader.
    forwarder: OnceLock<Arc<dyn Forwarder>>,
}

impl Router {
    pub fn new(raft: RaftNode, node_id: NodeId) -> Router {
        Router {
            raft,
            node_id,
            shards: RwLock::new(vec![ShardRecord::meta(vec![node_id])]),
            forwarder: OnceLock::new(),
        }
    }

    /// Lets commits on follower replicas reach their leader (set once, at startup).
    pub fn set_forwarder(&self, f: Arc<dyn Forwarder>) {
        let _ = self.forwarder.set(f);
    }

    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Replaces the shard table (called when the cluster map changes). The
    /// meta shard is always present.
    pub fn set_shards(&self, mut shards: Vec<ShardRecord>) {
        if !shards.iter().any(|s| s.id == crate::map::META_SHARD) {
            shards.push(ShardRecord::meta(vec![self.node_id]));
        }
        shards.sort_by(|a, b| a.start.cmp(&b.start));
        *self.shards.write() = shards;
    }

    pub fn shards(&self) -> Vec<ShardRecord> {
        self.shards.read().clone()
    }

    /// The shard whose range holds `key`.
    pub fn shard_for(&self, key: &[u8]) -> Result<ShardRecord, Error> {
        let shards = self.shards.read();
        shards
            .iter()
            .find(|s| s.contains(key))
            .cloned()
            .ok_or_else(|| Error::new(Code::Again, "no shard owns this key yet; retry"))
    }

    /// Starts a transaction on `shard`: waits for a linearizable read barrier
    /// so the reads below see every write acknowledged before this call.
    pub async fn begin(self: &Arc<Self>, shard: ShardId) -> Result<Tx, Error> {
        if self.raft.has_replica(shard) {
            self.raft.read_index(shard).await?;
            return Ok(Tx::new(self.clone(), shard, None));
        }
        let tx = Tx::new(self.clone(), shard, Some(self.remote(shard)?));
        tx.remote_read(ReadOp::Barrier, true).await?;
        Ok(tx)
    }

    /// Starts a snapshot transaction on `shard`: after the read barrier,
    /// its reads see one point-in-time view of this node's replica (every
    /// write acknowledged before the call, none after), under the
    /// transaction's own writes. Its commit is conditional on every key it
    /// read with [`Tx::get`] or wrote being unchanged since the view, so
    /// of two transactions writing one key only the first commits
    /// (snapshot isolation). Needs a replica of the shard on this node.
    pub async fn begin_snapshot(self: &Arc<Self>, shard: ShardId) -> Result<Tx, Error> {
        if !self.raft.has_replica(shard) {
            return Err(Error::new(
                Code::Invalid,
                "a snapshot transaction needs a replica of its shard on this node",
            ));
        }
        self.raft.read_index(shard).await?;
        let mut tx = Tx::new(self.clone(), shard, None);
        tx.snap = Some(Box::new(Snap {
            view: self.raft.snapshot(shard)?,
            writes: BTreeMap::new(),
            guarded: BTreeSet::new(),
        }));
        Ok(tx)
    }

    /// Starts a transaction without the read barrier: its reads see this
    /// node's applied state, which may lag writes already committed (by at
    /// most the entries in flight on a leader). For transactions whose commit
    /// is conditional on every read that decides what they write: a stale
    /// read then fails its condition and the caller retries, with
    /// [`Router::begin`]. Saves a round through the Raft loop, which lets
    /// back-to-back writes (a file's write-behind) share log batches. On a
    /// node without a replica the reads go to another node's, as lagging.
    pub fn begin_optimistic(self: &Arc<Self>, shard: ShardId) -> Result<Tx, Error> {
        let remote = match self.raft.has_replica(shard) {
            true => None,
            false => Some(self.remote(shard)?),
        };
        Ok(Tx::new(self.clone(), shard, remote))
    }

    /// Reads one key with a read barrier (no transaction).
    pub async fn get(
        self: &Arc<Self>,
        shard: ShardId,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        let tx = self.begin(shard).await?;
        tx.peek(key).await
    }

    /// Scans `[start, end)` with a read barrier (no transaction).
    pub async fn scan(
        self: &Arc<Self>,
        shard: ShardId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<berth_store::KvPairs, Error> {
        let tx = self.begin(shard).await?;
        tx.peek_range(start, end, limit).await
    }

    /// Scans `[start, end)` backward (its last pairs first) with a read
    /// barrier (no transaction).
    pub async fn scan_rev(
        self: &Arc<Self>,
        shard: ShardId,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<berth_store::KvPairs, Error> {
        let tx = self.begin(shard).await?;
        tx.peek_range_rev(start, end, limit).await
    }

    /// The shard's leader: from the local replica when this node hosts one,
    /// else the hint the leader recorded in the cluster map.
    pub fn leader_of(&self, shard: ShardId) -> Option<NodeId> {
        self.raft.leader(shard).or_else(|| {
            self.shards
                .read()
                .iter()
                .find(|s| s.id == shard)
                .map(|s| s.leader_hint)
                .filter(|l| *l != 0)
        })
    }

    /// Where a transaction on a shard this node holds no replica of reads:
    /// its leader as the map knows it, else a node the map lists as holding
    /// a replica. Without a forwarder (a node alone) there is nowhere to go.
    fn remote(&self, shard: ShardId) -> Result<Remote, Error> {
        let no_leader = || {
            Error::new(
                Code::Again,
                format!("shard {shard} has no known replica yet; retry"),
            )
        };
        if self.forwarder.get().is_none() {
            return Err(match self.leader_of(shard) {
                Some(l) => Error::elsewhere(
                    l,
                    format!("shard {shard} is led by node {l}; send the request there"),
                ),
                None => no_leader(),
            });
        }
        let node = self
            .leader_of(shard)
            .filter(|l| *l != self.node_id)
            .or_else(|| {
                let shards = self.shards.read();
                let s = shards.iter().find(|s| s.id == shard)?;
                s.replicas.iter().copied().find(|n| *n != self.node_id)
            })
            .ok_or_else(no_leader)?;
        Ok(Remote {
            node: AtomicU64::new(node),
            applied: AtomicU64::new(0),
        })
    }
}

impl Router {
    /// The replica the map lists after `after` (wrapping), other than this node.
    fn next_replica(&self, shard: ShardId, after: NodeId) -> Option<NodeId> {
        let shards = self.shards.read();
        let s = shards.iter().find(|s| s.id == shard)?;
        let others: Vec<NodeId> = s
            .replicas
            .iter()
            .copied()
            .filter(|n| *n != self.node_id)
            .collect();
        let at = others.iter().position(|n| *n == after);
        let next = match at {
            Some(i) => others.get((i + 1) % others.len()).copied(),
            None => others.first().copied(),
        };
        next.filter(|n| *n != after)
    }
}

/// Where a transaction's reads go when this node holds no replica.
struct Remote {
    /// The node serving them (moved along by redirects).
    node: AtomicU64,
    /// The highest applied index a reply reflected: no later read may see less.
    applied: AtomicU64,
}

/// An optimistic transaction on one shard. Reads are recorded as conditions;
/// writes are buffered until [`Tx::commit`].
pub struct Tx {
    router: Arc<Router>,
    shard: ShardId,
    /// Set when this node holds no replica of the shard.
    remote: Option<Remote>,
    conditions: Vec<Condition>,
    ops: Vec<Op>,
    /// Set for a snapshot transaction ([`Router::begin_snapshot`]).
    snap: Option<Box<Snap>>,
}

/// A snapshot transaction's reads: one point-in-time view of the replica,
/// under the transaction's own writes.
struct Snap {
    view: berth_raft::ShardSnapshot,
    /// What the transaction's `put`s and `delete`s left (`None` = deleted).
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Keys the transaction is already conditional on.
    guarded: BTreeSet<Vec<u8>>,
}

impl Snap {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.view.get(key)?),
        }
    }

    /// The view's pairs in `[start, end)` under the transaction's writes.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<berth_store::KvPairs, Error> {
        if limit == 0 || (!end.is_empty() && start >= end) {
            return Ok(Vec::new());
        }
        let upper = match end.is_empty() {
            true => Bound::Unbounded,
            false => Bound::Excluded(end.to_vec()),
        };
        let mine: Vec<_> = self
            .writes
            .range((Bound::Included(start.to_vec()), upper))
            .collect();
        // Each deletion may hide one of the view's pairs: read that many more.
        let hidden = mine.iter().filter(|(_, v)| v.is_none()).count();
        let base = self.view.scan(start, end, limit.saturating_add(hidden))?;
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            base.into_iter().map(|(k, v)| (k, Some(v))).collect();
        let last = merged.keys().next_back().cloned();
        let full = merged.len() >= limit.saturating_add(hidden);
        for (k, v) in mine {
            // Past the view's last pair when the view was cut short, the
            // view's next pairs are unknown: they are read by a later page.
            if full && last.as_ref().is_some_and(|l| k > l) {
                break;
            }
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .take(limit)
            .collect())
    }

    /// [`Snap::scan`] backward: the last pairs of `[start, end)` under the
    /// transaction's writes, in descending key order.
    fn scan_rev(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<berth_store::KvPairs, Error> {
        if limit == 0 || (!end.is_empty() && start >= end) {
            return Ok(Vec::new());
        }
        let upper = match end.is_empty() {
            true => Bound::Unbounded,
            false => Bound::Excluded(end.to_vec()),
        };
        let mine: Vec<_> = self
            .writes
            .range((Bound::Included(start.to_vec()), upper))
            .collect();
        // Each deletion may hide one of the view's pairs: read that many more.
        let hidden = mine.iter().filter(|(_, v)| v.is_none()).count();
        let base = self
            .view
            .scan_rev(start, end, limit.saturating_add(hidden))?;
        let full = base.len() >= limit.saturating_add(hidden);
        // The view's pairs come last key first: the last is the least.
        let least = base.last().map(|(k, _)| k.clone());
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            base.into_iter().map(|(k, v)| (k, Some(v))).collect();
        for (k, v) in mine.into_iter().rev() {
            // Below the view's least pair when the view was cut short, the
            // view's earlier pairs are unknown: they are read by a later page.
            if full && least.as_ref().is_some_and(|l| k < l) {
                break;
            }
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged
            .into_iter()
            .rev()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .take(limit)
            .collect())
    }
}

/// The result of [`Tx::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Applied at this Raft index.
    Done(u64),
    /// Something read changed before the command applied; nothing was written.
    Conflict,
}

impl Tx {
    fn new(router: Arc<Router>, shard: ShardId, remote: Option<Remote>) -> Tx {
        Tx {
            router,
            shard,
            remote,
            conditions: Vec::new(),
            ops: Vec::new(),
            snap: None,
        }
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Whether the reads go to another node (this one holds no replica).
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The shard's index this transaction's reads reflect at least: after
    /// [`Router::begin`]'s barrier, every write acknowledged before it lies
    /// at or below it.
    pub fn applied(&self) -> u64 {
        if let Some(s) = &self.snap {
            return s.view.applied();
        }
        match &self.remote {
            None => self
                .router
                .raft
                .applied_watch(self.shard)
                .map_or(0, |w| *w.borrow()),
            Some(r) => r.applied.load(Ordering::Relaxed),
        }
    }

    /// Reads `key` and makes the transaction conditional on its value.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if let Some(s) = &mut self.snap {
            if let Some(v) = s.writes.get(key) {
                return Ok(v.clone());
            }
            let value = s.view.get(key)?;
            if s.guarded.insert(key.to_vec()) {
                self.conditions.push(Condition::ValueIs {
                    key: key.to_vec(),
                    value: value.clone(),
                });
            }
            return Ok(value);
        }
        let value = self.peek(key).await?;
        self.conditions.push(Condition::ValueIs {
            key: key.to_vec(),
            value: value.clone(),
        });
        Ok(value)
    }

    /// Makes the transaction conditional on `key` still holding `value`,
    /// which the caller read of it in this transaction (with a scan, say):
    /// [`Tx::get`] without reading the key again. Nothing for a key the
    /// transaction wrote or is already conditional on (snapshot
    /// transactions).
    pub fn guard(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        if let Some(s) = &mut self.snap {
            if s.writes.contains_key(key) || !s.guarded.insert(key.to_vec()) {
                return;
            }
        }
        self.conditions.push(Condition::ValueIs {
            key: key.to_vec(),
            value,
        });
    }

    /// Reads `key` without making the transaction depend on it.
    pub async fn peek(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if let Some(s) = &self.snap {
            return s.get(key);
        }
        if self.remote.is_none() {
            return Ok(self.router.raft.get(self.shard, key)?);
        }
        let op = ReadOp::Get { key: key.to_vec() };
        match self.remote_read(op, false).await? {
            ReadValue::Value(v) => Ok(v),
            other => Err(mismatched(&other)),
        }
    }

    /// Reads up to `len` bytes at `from` of a value without making the
    /// transaction depend on it.
    pub async fn peek_part(
        &self,
        key: &[u8],
        from: u32,
        len: u32,
    ) -> Result<Option<Vec<u8>>, Error> {
        if let Some(s) = &self.snap {
            return Ok(s.get(key)?.map(|v| {
                let start = (from as usize).min(v.len());
                let end = start.saturating_add(len as usize).min(v.len());
                v[start..end].to_vec()
            }));
        }
        if self.remote.is_none() {
            return Ok(self.router.raft.get_range(self.shard, key, from, len)?);
        }
        let op = ReadOp::GetPart {
            key: key.to_vec(),
            from,
            len,
        };
        match self.remote_read(op, false).await? {
            ReadValue::Value(v) => Ok(v),
            other => Err(mismatched(&other)),
        }
    }

    /// Scans without making the transaction depend on the result.
    pub async fn peek_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<berth_store::KvPairs, Error> {
        if let Some(s) = &self.snap {
            return s.scan(start, end, limit);
        }
        if self.remote.is_none() {
            return Ok(self.router.raft.scan(self.shard, start, end, limit)?);
        }
        let op = ReadOp::Scan {
            start: start.to_vec(),
            end: end.to_vec(),
            limit,
        };
        match self.remote_read(op, false).await? {
            ReadValue::Pairs(p) => Ok(p),
            other => Err(mismatched(&other)),
        }
    }

    /// Scans `[start, end)` backward (its last pairs first, at most
    /// `limit`) without making the transaction depend on the result: from
    /// the local replica, another node's, or a snapshot transaction's view
    /// under its own writes. The next page is `[start, k)`, `k` the last
    /// key returned.
    pub async fn peek_range_rev(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<berth_store::KvPairs, Error> {
        if let Some(s) = &self.snap {
            return s.scan_rev(start, end, limit);
        }
        if self.remote.is_none() {
            return Ok(self.router.raft.scan_rev(self.shard, start, end, limit)?);
        }
        let op = ReadOp::ScanRev {
            start: start.to_vec(),
            end: end.to_vec(),
            limit,
        };
        match self.remote_read(op, false).await? {
            ReadValue::Pairs(p) => Ok(p),
            other => Err(mismatched(&other)),
        }
    }

    /// Keys only, without making the transaction depend on the result.
    pub async fn peek_keys(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, Error> {
        if let Some(s) = &self.snap {
            let pairs = s.scan(start, end, limit)?;
            return Ok(pairs.into_iter().map(|(k, _)| k).collect());
        }
        if self.remote.is_none() {
            return Ok(self.router.raft.scan_keys(self.shard, start, end, limit)?);
        }
        let op = ReadOp::ScanKeys {
            start: start.to_vec(),
            end: end.to_vec(),
            limit,
        };
        match self.remote_read(op, false).await? {
            ReadValue::Keys(k) => Ok(k),
            other => Err(mismatched(&other)),
        }
    }

    /// Whether `[start, end)` holds no key; when it is empty the transaction
    /// becomes conditional on it staying empty.
    pub async fn is_range_empty(&mut self, start: &[u8], end: &[u8]) -> Result<bool, Error> {
        let empty = self.peek_keys(start, end, 1).await?.is_empty();
        if empty {
            self.conditions.push(Condition::RangeEmpty {
                start: start.to_vec(),
                end: end.to_vec(),
            });
        }
        Ok(empty)
    }

    /// One read on the remote replica, following redirects to the nodes the
    /// answers name (a bounded number of hops).
    async fn remote_read(&self, op: ReadOp, barrier: bool) -> Result<ReadValue, Error> {
        let (Some(remote), Some(f)) = (&self.remote, self.router.forwarder.get()) else {
            return Err(Error::new(
                Code::Io,
                "internal: a remote read without a remote replica",
            ));
        };
        let mut tries = 0;
        loop {
            let node = remote.node.load(Ordering::Relaxed);
            let req = ReadRequest {
                shard: self.shard,
                op: op.clone(),
                barrier,
                min_applied: remote.applied.load(Ordering::Relaxed),
            };
            tries += 1;
            match f.read(node, req).await {
                Ok(reply) => {
                    remote.applied.fetch_max(reply.applied, Ordering::Relaxed);
                    return Ok(reply.value);
                }
                Err(e) if tries >= REMOTE_TRIES || e.code != Code::Again => return Err(e),
                Err(e) => {
                    // Where the answer points, else (the node is unreachable
                    // or knows no leader) the next replica the map lists.
                    let next = e
                        .redirect
                        .filter(|n| *n != node)
                        .or_else(|| self.router.next_replica(self.shard, node));
                    match next {
                        Some(n) => remote.node.store(n, Ordering::Relaxed),
                        None => return Err(e),
                    }
                }
            }
        }
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if let Some(s) = &mut self.snap {
            s.writes.insert(key.clone(), Some(value.clone()));
        }
        self.ops.push(Op::Put { key, value });
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        if let Some(s) = &mut self.snap {
            s.writes.insert(key.clone(), None);
        }
        self.ops.push(Op::Delete { key });
    }

    /// Whether this is a snapshot transaction ([`Router::begin_snapshot`]).
    pub fn is_snapshot(&self) -> bool {
        self.snap.is_some()
    }

    /// The bytes of the writes buffered so far (keys and values).
    pub fn write_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => key.len() + value.len(),
                Op::PutStamped { prefix, value } => prefix.len() + value.len(),
                _ => 64,
            })
            .sum()
    }

    /// Writes `value` at `keys::stamped(prefix, index, n)`: the key carries
    /// the Raft index the transaction applies at (see `Op::PutStamped`).
    pub fn put_stamped(&mut self, prefix: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::PutStamped { prefix, value });
    }

    pub fn delete_range(&mut self, start: Vec<u8>, end: Vec<u8>) {
        self.ops.push(Op::DeleteRange { start, end });
    }

    /// Writes `data` into the value of `key` at `offset` (see `Op::Splice`);
    /// the value's growth is added to `counter` when given.
    pub fn splice(&mut self, key: Vec<u8>, offset: u32, data: Vec<u8>, counter: Option<Vec<u8>>) {
        self.ops.push(Op::Splice {
            key,
            offset,
            data,
            counter,
        });
    }

    /// Cuts the value of `key` to `len` bytes; the bytes removed are
    /// subtracted from `counter` when given.
    pub fn truncate_value(&mut self, key: Vec<u8>, len: u32, counter: Option<Vec<u8>>) {
        self.ops.push(Op::Truncate { key, len, counter });
    }

    /// Raises the u64 at `key` to `value` (commutative).
    pub fn max_u64(&mut self, key: Vec<u8>, value: u64) {
        self.ops.push(Op::MaxU64 { key, value });
    }

    /// Adds `delta` to the i64 at `key` (commutative).
    pub fn add_i64(&mut self, key: Vec<u8>, delta: i64) {
        self.ops.push(Op::AddI64 { key, delta });
    }

    /// Deletes `[start, end)` and subtracts the deleted bytes from `counter`.
    pub fn delete_range_counted(&mut self, start: Vec<u8>, end: Vec<u8>, counter: Vec<u8>) {
        self.ops.push(Op::DeleteRangeCounted {
            start,
            end,
            counter,
        });
    }

    /// Deletes `[start, end)` and subtracts the deleted keys' and values'
    /// bytes from `counter` (see `Op::DeleteRangeCountedPairs`).
    pub fn delete_range_counted_pairs(&mut self, start: Vec<u8>, end: Vec<u8>, counter: Vec<u8>) {
        self.ops.push(Op::DeleteRangeCountedPairs {
            start,
            end,
            counter,
        });
    }

    /// What this transaction's buffered [`Tx::add_i64`]s add to the i64 at
    /// `key` (a reader of the counter, e.g. a quota check, adds it to the
    /// stored value: a snapshot transaction's view does not show them).
    pub fn pending_add_i64(&self, key: &[u8]) -> i64 {
        self.ops
            .iter()
            .map(|op| match op {
                Op::AddI64 { key: k, delta } if k == key => *delta,
                _ => 0,
            })
            .fold(0i64, i64::saturating_add)
    }

    /// Appends a raw operation (the versioned and snapshot ops of
    /// `berth_raft::cmd`).
    pub fn op(&mut self, op: Op) {
        self.ops.push(op);
    }

    pub fn has_writes(&self) -> bool {
        !self.ops.is_empty()
    }

    /// Proposes the buffered writes under the recorded conditions. Returns
    /// only once the command is durable on a majority and applied.
    pub async fn commit(mut self) -> Result<Commit, Error> {
        if self.ops.is_empty() {
            return Ok(Commit::Done(0));
        }
        if let Some(s) = self.snap.take() {
            // First committer wins: every key written must still hold what
            // the view saw.
            for key in s.writes.keys() {
                if !s.guarded.contains(key) {
                    self.conditions.push(Condition::ValueIs {
                        key: key.clone(),
                        value: s.view.get(key)?,
                    });
                }
            }
        }
        let txn = Txn {
            conditions: self.conditions,
            ops: self.ops,
        };
        let router = &self.router;
        let leader = match &self.remote {
            None => router.raft.leader(self.shard),
            Some(r) => Some(
                router
                    .leader_of(self.shard)
                    .filter(|l| *l != router.node_id)
                    .unwrap_or_else(|| r.node.load(Ordering::Relaxed)),
            ),
        };
        let forwarder = router.forwarder.get();
        let outcome = match (leader, forwarder) {
            (Some(l), Some(f)) if l != router.node_id => {
                // A remote transaction's leader is the map's hint, which may
                // be stale: one more hop, to the leader the answer names.
                let again = self.remote.as_ref().map(|_| txn.clone());
                let outcome = match (f.propose(l, self.shard, txn).await, again) {
                    (Err(e), Some(txn)) if e.redirect.is_some_and(|n| n != l) => {
                        let next = e.redirect.unwrap_or(l);
                        f.propose(next, self.shard, txn).await?
                    }
                    (r, _) => r?,
                };
                return match outcome {
                    TxnOutcome::Applied { index } => Ok(Commit::Done(index)),
                    TxnOutcome::ConditionFailed { .. } => Ok(Commit::Conflict),
                };
            }
            _ => router.raft.propose(self.shard, txn).await,
        };
        match outcome {
            Ok(TxnOutcome::Applied { index }) => Ok(Commit::Done(index)),
            Ok(TxnOutcome::ConditionFailed { .. }) => Ok(Commit::Conflict),
            Err(RaftError::KeyOutOfRange { shard }) => Err(Error::new(
                Code::Io,
                format!("internal: transaction wrote outside shard {shard}"),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

fn mismatched(v: &ReadValue) -> Error {
    let kind = match v {
        ReadValue::None => "nothing",
        ReadValue::Value(_) => "a value",
        ReadValue::Pairs(_) => "pairs",
        ReadValue::Keys(_) => "keys",
    };
    Error::new(
        Code::Io,
        format!("internal: a remote read answered with {kind}"),
    )
}

/// Error for an operation that kept conflicting past [`TX_RETRIES_MAX`].
pub fn too_much_contention(what: &str) -> Error {
    Error::new(
        Code::Again,
        format!("{what}: too many concurrent changes to the same entries; retry"),
    )
}

/// Sleeps a little before retry `attempt` (bounded, jittered) so contending
/// writers spread out.
pub async fn backoff(attempt: usize) {
    if attempt == 0 {
        return;
    }
    let base_us = 200u64 << attempt.min(6);
    let jitter = rand::random::<u64>() % base_us.max(1);
    tokio::time::sleep(std::time::Duration::from_micros(base_us + jitter)).await;
}
