//! The shard router: key → shard → leader, and optimistic transactions.
//!
//! Services never address shards themselves: they ask the router for the
//! shard owning a key and run a [`Tx`] against it. A `Tx` reads the shard's
//! applied state after a linearizable read barrier, records every value it
//! read, and commits as one conditional Raft command whose conditions are
//! exactly those reads. If anything it read changed in between, the command
//! applies nothing and the caller retries from fresh reads (bounded).
//!
//! A node holding any replica of a shard serves it: reads come from its own
//! replica after the read barrier (on a follower, the leader's ReadIndex),
//! and a commit on a follower is forwarded to the leader (one hop, through a
//! [`Forwarder`]). A node without a replica answers with a retryable error
//! naming the leader.
//!
//! Architecture invariant: the router is the only place outside berth-raft
//! that proposes commands.

use std::future::Future;
use std::pin::Pin;
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

/// Sends a transaction to the node leading its shard (the server implements it over the
/// node-to-node listener). The receiving node proposes it locally and never forwards again.
pub trait Forwarder: Send + Sync + 'static {
    fn propose(&self, leader: NodeId, shard: ShardId, txn: Txn) -> Forwarded;
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
        self.ensure_local_replica(shard)?;
        self.raft.read_index(shard).await?;
        Ok(Tx {
            router: self.clone(),
            shard,
            conditions: Vec::new(),
            ops: Vec::new(),
        })
    }

    /// Starts a transaction without the read barrier: its reads see this
    /// node's applied state, which may lag writes already committed (by at
    /// most the entries in flight on a leader). For transactions whose commit
    /// is conditional on every read that decides what they write: a stale
    /// read then fails its condition and the caller retries, with
    /// [`Router::begin`]. Saves a round through the Raft loop, which lets
    /// back-to-back writes (a file's write-behind) share log batches.
    pub fn begin_optimistic(self: &Arc<Self>, shard: ShardId) -> Result<Tx, Error> {
        self.ensure_local_replica(shard)?;
        Ok(Tx {
            router: self.clone(),
            shard,
            conditions: Vec::new(),
            ops: Vec::new(),
        })
    }

    /// Reads one key with a read barrier (no transaction).
    pub async fn get(
        self: &Arc<Self>,
        shard: ShardId,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        let tx = self.begin(shard).await?;
        tx.peek(key)
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
        tx.peek_range(start, end, limit)
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

    /// Requests are served on a node holding a replica of the shard (reads
    /// from it after the barrier, commits through the leader). Elsewhere the
    /// answer is a retryable error naming the leader.
    fn ensure_local_replica(&self, shard: ShardId) -> Result<(), Error> {
        if self.raft.has_replica(shard) {
            return Ok(());
        }
        match self.leader_of(shard) {
            Some(l) => Err(Error::elsewhere(
                l,
                format!("shard {shard} is led by node {l}; send the request there"),
            )),
            None => Err(Error::new(
                Code::Again,
                format!("shard {shard} has no leader yet; retry"),
            )),
        }
    }
}

/// An optimistic transaction on one shard. Reads are recorded as conditions;
/// writes are buffered until [`Tx::commit`].
pub struct Tx {
    router: Arc<Router>,
    shard: ShardId,
    conditions: Vec<Condition>,
    ops: Vec<Op>,
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
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Reads `key` and makes the transaction conditional on its value.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let value = self.peek(key)?;
        self.conditions.push(Condition::ValueIs {
            key: key.to_vec(),
            value: value.clone(),
        });
        Ok(value)
    }

    /// Reads `key` without making the transaction depend on it.
    pub fn peek(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.router.raft.get(self.shard, key)?)
    }

    /// Reads up to `len` bytes at `from` of a value without making the
    /// transaction depend on it.
    pub fn peek_part(&self, key: &[u8], from: u32, len: u32) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.router.raft.get_range(self.shard, key, from, len)?)
    }

    /// Scans without making the transaction depend on the result.
    pub fn peek_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<berth_store::KvPairs, Error> {
        Ok(self.router.raft.scan(self.shard, start, end, limit)?)
    }

    /// Keys only, without making the transaction depend on the result.
    pub fn peek_keys(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self.router.raft.scan_keys(self.shard, start, end, limit)?)
    }

    /// Whether `[start, end)` holds no key; when it is empty the transaction
    /// becomes conditional on it staying empty.
    pub fn is_range_empty(&mut self, start: &[u8], end: &[u8]) -> Result<bool, Error> {
        let empty = self.peek_range(start, end, 1)?.is_empty();
        if empty {
            self.conditions.push(Condition::RangeEmpty {
                start: start.to_vec(),
                end: end.to_vec(),
            });
        }
        Ok(empty)
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put { key, value });
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push(Op::Delete { key });
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
    pub async fn commit(self) -> Result<Commit, Error> {
        if self.ops.is_empty() {
            return Ok(Commit::Done(0));
        }
        let txn = Txn {
            conditions: self.conditions,
            ops: self.ops,
        };
        let router = &self.router;
        let leader = router.raft.leader(self.shard);
        let forwarder = router.forwarder.get();
        let outcome = match (leader, forwarder) {
            (Some(l), Some(f)) if l != router.node_id => {
                return match f.propose(l, self.shard, txn).await? {
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
