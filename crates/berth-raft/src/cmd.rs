//! The replicated command: a deterministic conditional transaction (like an etcd `Txn`).
//!
//! The kernel knows nothing about files, tables or streams: services express every mutation
//! as conditions plus operations on cluster keys. At apply time every condition is checked
//! against the shard's current state (including the effects of earlier entries of the same
//! apply batch); if all hold, all operations apply atomically, otherwise nothing does.
//!
//! Wire/log format of an entry: `version (u8 = 1) · postcard(Txn)`. A log entry that does not
//! decode is a fatal invariant violation for its group (never skipped).

use berth_store::blobs::Pin;
use berth_store::{keys, Space, Store, StoreError, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::ShardDesc;

/// Version byte of the command encoding.
pub const TXN_FORMAT_VERSION: u8 = 1;

/// A predicate on the shard's state at apply time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// The key's current value equals `value` (`None` = the key is absent).
    ValueIs {
        /// Key to test.
        key: Vec<u8>,
        /// Expected value; `None` means absent.
        value: Option<Vec<u8>>,
    },
    /// No key exists in `[start, end)` (empty `end` = unbounded).
    RangeEmpty {
        /// Inclusive start.
        start: Vec<u8>,
        /// Exclusive end; empty = unbounded.
        end: Vec<u8>,
    },
}

/// A mutation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Sets a key.
    Put {
        /// Key.
        key: Vec<u8>,
        /// New value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Deletes a key (no-op when absent).
    Delete {
        /// Key.
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)` (empty `end` = unbounded).
    DeleteRange {
        /// Inclusive start.
        start: Vec<u8>,
        /// Exclusive end; empty = unbounded.
        end: Vec<u8>,
    },
    /// Writes `data` into the value of `key` at byte `offset`, zero-filling
    /// any gap and creating the value when absent. Splices of disjoint byte
    /// ranges commute, so writers of different parts of a value never need a
    /// condition; overlapping splices apply in log order.
    Splice {
        /// Key.
        key: Vec<u8>,
        /// Byte offset in the value.
        offset: u32,
        /// Bytes to write.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// When set, the number of bytes the value grew by is added to this
        /// i64 counter (byte accounting, e.g. volume usage).
        counter: Option<Vec<u8>>,
    },
    /// Cuts the value of `key` to at most `len` bytes (no-op when absent or
    /// shorter).
    Truncate {
        /// Key.
        key: Vec<u8>,
        /// New maximum length.
        len: u32,
        /// When set, the number of bytes removed is subtracted from this
        /// i64 counter.
        counter: Option<Vec<u8>>,
    },
    /// Deletes every key in `[start, end)` like `DeleteRange` and subtracts
    /// the total length of the deleted values from the i64 `counter`.
    DeleteRangeCounted {
        /// Inclusive start.
        start: Vec<u8>,
        /// Exclusive end; empty = unbounded.
        end: Vec<u8>,
        /// Counter key.
        counter: Vec<u8>,
    },
    /// Raises the big-endian u64 at `key` to `value` when that is larger
    /// (absent, or not 8 bytes, counts as 0). Commutative.
    MaxU64 {
        /// Key.
        key: Vec<u8>,
        /// Candidate value.
        value: u64,
    },
    /// Adds `delta` to the big-endian i64 at `key` (absent, or not 8 bytes,
    /// counts as 0), saturating. Commutative.
    AddI64 {
        /// Key.
        key: Vec<u8>,
        /// Amount to add.
        delta: i64,
    },
    /// `Splice` on the versioned value at `base` (see [`VersionState`]).
    VSplice {
        /// Base key of the versioned value.
        base: Vec<u8>,
        /// Byte offset in the value.
        offset: u32,
        /// Bytes to write.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// i64 counter of current bytes, when kept.
        counter: Option<Vec<u8>>,
        /// Key of the [`VersionState`].
        state: Vec<u8>,
    },
    /// `Truncate` on the versioned value at `base`.
    VTruncate {
        /// Base key of the versioned value.
        base: Vec<u8>,
        /// New maximum length.
        len: u32,
        /// i64 counter of current bytes, when kept.
        counter: Option<Vec<u8>>,
        /// Key of the [`VersionState`].
        state: Vec<u8>,
    },
    /// Deletes every versioned value whose versions lie in `[start, end)`
    /// (keeping what kept versions still read) and subtracts their current
    /// bytes from the i64 `counter`.
    VDeleteRange {
        /// Inclusive start.
        start: Vec<u8>,
        /// Exclusive end (not empty).
        end: Vec<u8>,
        /// Counter key.
        counter: Vec<u8>,
        /// Key of the [`VersionState`].
        state: Vec<u8>,
    },
    /// Drops the versions in `[start, end)` that no kept version reads any
    /// longer (after a version stopped being kept).
    VPrune {
        /// Inclusive start.
        start: Vec<u8>,
        /// Exclusive end (not empty).
        end: Vec<u8>,
        /// Key of the [`VersionState`].
        state: Vec<u8>,
    },
    /// Copies every key in `[start, end)` (both in one volume) to its
    /// `keys::snapshot_key` for `snapshot`: a point-in-time copy done at
    /// apply time, so the log carries no data.
    SnapshotCopy {
        /// Inclusive start.
        start: Vec<u8>,
        /// Exclusive end (not empty).
        end: Vec<u8>,
        /// Snapshot id.
        snapshot: u64,
    },
    /// A [`Op::VSplice`] whose bytes this node moved to its blob segments
    /// when it persisted the entry (see [`offload`]): `blob` is the
    /// node-local reference, `len` the number of bytes. Exists only in this
    /// node's log: proposals carrying it are refused and entries leave the
    /// node with the bytes back in place ([`inflate`]).
    VSpliceBlob {
        /// Base key of the versioned value.
        base: Vec<u8>,
        /// Byte offset in the value.
        offset: u32,
        /// Blob reference (berth-store `blobs`).
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
        /// Bytes in the blob.
        len: u32,
        /// i64 counter of current bytes, when kept.
        counter: Option<Vec<u8>>,
        /// Key of the [`VersionState`].
        state: Vec<u8>,
    },
    /// A [`Op::Put`] of at least [`BLOB_MIN_BYTES`] whose value this node
    /// moved to its blob segments (see [`Op::VSpliceBlob`]): the key's value
    /// becomes the reference. Exists only in this node's log.
    PutBlob {
        /// Key.
        key: Vec<u8>,
        /// Blob reference (berth-store `blobs`).
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
        /// Bytes in the blob.
        len: u32,
    },
    /// Sets the key `keys::stamped(prefix, index, n)`, where `index` is the
    /// Raft index the transaction applies at and `n` counts the
    /// transaction's earlier `PutStamped` ops: keys in commit order without
    /// a counter every writer would read (a change log; FoundationDB calls
    /// these versionstamps).
    PutStamped {
        /// Key prefix (a whole key; two u64 components are appended).
        prefix: Vec<u8>,
        /// New value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Deletes every key in `[start, end)` like `DeleteRange` and subtracts
    /// the total length of the deleted keys *and* values from the i64
    /// `counter`: the accounting of records whose keys hold data too (a
    /// table's documents and index entries, counted key + value by
    /// `berth-docs`), where [`Op::DeleteRangeCounted`] counts values only.
    /// Last in the enum, as every op added later: the encoding numbers
    /// variants in order.
    DeleteRangeCountedPairs {
        /// Inclusive start.
        start: Vec<u8>,
        /// Exclusive end (not empty).
        end: Vec<u8>,
        /// Counter key.
        counter: Vec<u8>,
    },
}

/// Splices (and puts) at least this large leave the log entry for a blob segment when
/// the entry is persisted.
pub const BLOB_MIN_BYTES: usize = 64 << 10;

/// The stored form of a log entry's payload: every [`Op::VSplice`] of at
/// least [`BLOB_MIN_BYTES`] becomes an [`Op::VSpliceBlob`] whose bytes are
/// appended to the node's blob segments (synced by the store before the
/// batch holding the entry is written), with the pins that keep those
/// segments from the collector until the entry is stored. `None` when
/// nothing moves.
pub(crate) fn offload(store: &Store, data: &[u8]) -> Result<Option<Stored>, StoreError> {
    if data.len() < BLOB_MIN_BYTES {
        return Ok(None);
    }
    let Ok(txn) = decode(data) else {
        return Ok(None); // applied as what it is: an undecodable entry
    };
    offload_txn(store, txn)
}

/// A payload's stored form and the pins on the segments it refers to.
pub(crate) type Stored = (Vec<u8>, Vec<Pin>);

/// [`offload`] of a transaction not yet encoded (a leader does this on the
/// proposing thread, so the Raft loop neither copies nor writes the bytes).
pub(crate) fn offload_txn(store: &Store, mut txn: Txn) -> Result<Option<Stored>, StoreError> {
    let mut pins = Vec::new();
    txn.ops = txn
        .ops
        .into_iter()
        .map(|op| match op {
            Op::VSplice {
                base,
                offset,
                data,
                counter,
                state,
            } if data.len() >= BLOB_MIN_BYTES => {
                let len = u32::try_from(data.len())
                    .map_err(|_| StoreError::Invalid("splice larger than 4 GiB".into()))?;
                let (blob, pin) = store.put_blob(&data)?;
                pins.push(pin);
                Ok(Op::VSpliceBlob {
                    base,
                    offset,
                    len,
                    blob,
                    counter,
                    state,
                })
            }
            Op::Put { key, value } if value.len() >= BLOB_MIN_BYTES => {
                let len = u32::try_from(value.len())
                    .map_err(|_| StoreError::Invalid("value larger than 4 GiB".into()))?;
                let (blob, pin) = store.put_blob(&value)?;
                pins.push(pin);
                Ok(Op::PutBlob { key, blob, len })
            }
            other => Ok(other),
        })
        .collect::<Result<_, StoreError>>()?;
    if pins.is_empty() {
        return Ok(None);
    }
    Ok(Some((encode_txn(&txn)?, pins)))
}

/// The wire form of a stored payload: blob references replaced by their
/// bytes (for peers, which cannot read this node's segments). `None` when
/// the payload holds no reference.
pub(crate) fn inflate(store: &Store, data: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let Ok(mut txn) = decode(data) else {
        return Ok(None);
    };
    if !txn.ops.iter().any(Op::is_blob) {
        return Ok(None);
    }
    txn.ops = txn
        .ops
        .into_iter()
        .map(|op| match op {
            Op::VSpliceBlob {
                base,
                offset,
                blob,
                counter,
                state,
                ..
            } => Ok(Op::VSplice {
                base,
                offset,
                data: blob_bytes(store, &blob)?,
                counter,
                state,
            }),
            Op::PutBlob { key, blob, .. } => Ok(Op::Put {
                key,
                value: blob_bytes(store, &blob)?,
            }),
            other => Ok(other),
        })
        .collect::<Result<_, StoreError>>()?;
    encode_txn(&txn).map(Some)
}

fn encode_txn(txn: &Txn) -> Result<Vec<u8>, StoreError> {
    encode(txn).map_err(|e| StoreError::Invalid(format!("encode txn: {e}")))
}

/// The bytes behind a blob reference of this node; an error when `blob` is
/// not one (only this node's log holds references).
fn blob_bytes(store: &Store, blob: &[u8]) -> Result<Vec<u8>, StoreError> {
    let r = store
        .blobs()
        .parse(blob)
        .ok_or_else(|| StoreError::Corrupt("log entry holds a foreign blob reference".into()))?;
    store.blobs().read(&r)
}

/// The blob references an encoded payload holds (for blob GC).
pub(crate) fn blob_refs(data: &[u8]) -> Vec<Vec<u8>> {
    match decode(data) {
        Ok(txn) => txn
            .ops
            .into_iter()
            .filter_map(|o| match o {
                Op::VSpliceBlob { blob, .. } | Op::PutBlob { blob, .. } => Some(blob),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Which versions of versioned values are still read, stored (postcard) at a
/// state key the versioned ops name; absent = epoch 0, nothing kept.
///
/// A versioned value at `base` is the keys `keys::versioned(base, v)`. The
/// highest version is the current value; a reader of version `s` (a
/// snapshot) sees the highest version `<= s`; an empty value reads as
/// absent. Writes are stamped with `epoch`. When the current version is
/// older than `epoch` and some kept version still reads it, a write copies
/// it to a new version `epoch` first (copy-on-write); otherwise the write
/// changes it in place. Versions no kept version reads are dropped whenever
/// their value is written, and by [`Op::VPrune`]. Because the kernel reads
/// the state at apply time, a snapshot (a new epoch) is exact: every write
/// ordered before it is in it and none after.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionState {
    /// The version new writes are stamped with.
    pub epoch: u64,
    /// Versions still read (ascending).
    pub keep: Vec<u64>,
    /// Set when the stored state did not decode: keep every version.
    #[serde(skip)]
    keep_all: bool,
}

impl VersionState {
    /// A state at `epoch` keeping `keep`.
    pub fn new(epoch: u64, mut keep: Vec<u64>) -> VersionState {
        keep.sort_unstable();
        keep.dedup();
        VersionState {
            epoch,
            keep,
            keep_all: false,
        }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Parses the stored form (absent = the default).
    pub fn decode(b: Option<&[u8]>) -> Result<VersionState, String> {
        match b {
            None => Ok(VersionState::default()),
            Some(b) => postcard::from_bytes(b).map_err(|e| format!("version state: {e}")),
        }
    }

    /// Whether a version that is current from `from` until (excluding)
    /// `until` is read by a kept version.
    pub fn needed(&self, from: u64, until: u64) -> bool {
        self.keep_all || self.keep.iter().any(|s| from <= *s && *s < until)
    }

    /// The version a reader of `version` sees among `versions` (ascending).
    pub fn visible(versions: &[u64], version: u64) -> Option<u64> {
        versions.iter().rev().copied().find(|v| *v <= version)
    }
}

impl Op {
    /// Whether the op carries a blob reference (only a node's own log holds
    /// such ops).
    pub fn is_blob(&self) -> bool {
        matches!(self, Op::VSpliceBlob { .. } | Op::PutBlob { .. })
    }

    /// The single key an op writes, if it writes exactly one.
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Splice { key, .. }
            | Op::Truncate { key, .. }
            | Op::MaxU64 { key, .. }
            | Op::AddI64 { key, .. }
            | Op::PutBlob { key, .. } => Some(key),
            Op::DeleteRange { .. }
            | Op::DeleteRangeCounted { .. }
            | Op::DeleteRangeCountedPairs { .. }
            | Op::VSplice { .. }
            | Op::VTruncate { .. }
            | Op::VDeleteRange { .. }
            | Op::VPrune { .. }
            | Op::SnapshotCopy { .. }
            | Op::VSpliceBlob { .. }
            | Op::PutStamped { .. } => None,
        }
    }
}

/// Conditions and operations applied atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// All must hold for the operations to apply.
    pub conditions: Vec<Condition>,
    /// Applied in order when the conditions hold.
    pub ops: Vec<Op>,
}

/// What happened to a committed transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Conditions held; the operations are applied at this log index.
    Applied {
        /// Raft log index of the entry.
        index: u64,
    },
    /// The condition at this position did not hold; nothing was written.
    ConditionFailed {
        /// Index into `Txn::conditions`.
        condition: usize,
    },
}

impl Txn {
    /// A transaction without conditions.
    pub fn ops(ops: Vec<Op>) -> Txn {
        Txn {
            conditions: Vec::new(),
            ops,
        }
    }

    /// True when every key and range the transaction touches lies inside the shard's range.
    pub fn within(&self, desc: &ShardDesc) -> bool {
        let conds = self.conditions.iter().all(|c| match c {
            Condition::ValueIs { key, .. } => desc.contains(key),
            Condition::RangeEmpty { start, end } => desc.contains_range(start, end),
        });
        let ops = self.ops.iter().all(|o| match o {
            Op::DeleteRange { start, end } => desc.contains_range(start, end),
            Op::DeleteRangeCounted {
                start,
                end,
                counter,
            } => desc.contains_range(start, end) && desc.contains(counter),
            Op::DeleteRangeCountedPairs {
                start,
                end,
                counter,
            } => !end.is_empty() && desc.contains_range(start, end) && desc.contains(counter),
            Op::Splice {
                key,
                counter: Some(c),
                ..
            }
            | Op::Truncate {
                key,
                counter: Some(c),
                ..
            } => desc.contains(key) && desc.contains(c),
            Op::VSplice {
                base,
                counter,
                state,
                ..
            }
            | Op::VSpliceBlob {
                base,
                counter,
                state,
                ..
            }
            | Op::VTruncate {
                base,
                counter,
                state,
                ..
            } => {
                let (vs, ve) = keys::versions_range(base);
                desc.contains_range(&vs, &ve)
                    && desc.contains(state)
                    && counter.as_ref().is_none_or(|c| desc.contains(c))
            }
            Op::VDeleteRange {
                start,
                end,
                counter,
                state,
            } => {
                !end.is_empty()
                    && desc.contains_range(start, end)
                    && desc.contains(counter)
                    && desc.contains(state)
            }
            Op::VPrune { start, end, state } => {
                !end.is_empty() && desc.contains_range(start, end) && desc.contains(state)
            }
            Op::SnapshotCopy {
                start,
                end,
                snapshot,
            } => {
                start.len() >= 8
                    && end.len() >= 8
                    && start[..8] == end[..8]
                    && desc.contains_range(start, end)
                    && desc.contains_range(
                        &keys::snapshot_key(start, *snapshot),
                        &keys::snapshot_key(end, *snapshot),
                    )
            }
            Op::PutStamped { prefix, .. } => {
                let (s, e) = keys::versions_range(prefix);
                desc.contains_range(&s, &e)
            }
            o => o.key().is_some_and(|k| desc.contains(k)),
        });
        conds && ops
    }
}

/// Encodes a transaction for the log.
pub fn encode(txn: &Txn) -> Result<Vec<u8>, postcard::Error> {
    // Sized first, then written once: a transaction carries bulk values
    // (record batches, file data), and growing the buffer by doubling and
    // then copying it behind the version byte copied them three times.
    let mut out = Vec::with_capacity(1 + postcard::experimental::serialized_size(txn)?);
    out.push(TXN_FORMAT_VERSION);
    postcard::to_extend(txn, out)
}

/// Decodes a log entry's payload.
pub fn decode(data: &[u8]) -> Result<Txn, String> {
    match data.split_first() {
        Some((&TXN_FORMAT_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| format!("undecodable txn: {e}"))
        }
        Some((v, _)) => Err(format!("unknown txn format version {v}")),
        None => Err("empty txn payload".into()),
    }
}

/// Result of applying one entry's transaction.
pub(crate) enum ApplyResult {
    Done(TxnOutcome),
    /// The txn touches keys outside the shard: nothing written (asserted at apply time too).
    OutOfRange,
}

/// Page size when scanning the store to evaluate `RangeEmpty`.
const RANGE_PAGE: usize = 128;

/// Applies `txn` into `batch`, evaluating conditions against `store` overlaid with `batch`.
pub(crate) fn apply(
    store: &Store,
    batch: &mut WriteBatch,
    desc: &ShardDesc,
    txn: &Txn,
    index: u64,
) -> Result<ApplyResult, StoreError> {
    if !txn.within(desc) {
        return Ok(ApplyResult::OutOfRange);
    }
    for (i, c) in txn.conditions.iter().enumerate() {
        let holds = match c {
            Condition::ValueIs { key, value } => current(store, batch, key)? == *value,
            Condition::RangeEmpty { start, end } => range_empty(store, batch, start, end)?,
        };
        if !holds {
            return Ok(ApplyResult::Done(TxnOutcome::ConditionFailed {
                condition: i,
            }));
        }
    }
    let mut stamped = 0u64;
    for op in &txn.ops {
        match op {
            Op::Put { key, value } => batch.put(Space::Data, key, value),
            Op::PutStamped { prefix, value } => {
                batch.put(Space::Data, &keys::stamped(prefix, index, stamped), value);
                stamped += 1;
            }
            // The value is the reference: reads resolve it.
            Op::PutBlob { key, blob, .. } => batch.put(Space::Data, key, blob),
            Op::Delete { key } => batch.delete(Space::Data, key),
            Op::DeleteRange { start, end } => {
                batch.delete_range(Space::Data, start, end)?;
            }
            Op::Splice {
                key,
                offset,
                data,
                counter,
            } => {
                let mut v = current(store, batch, key)?.unwrap_or_default();
                let before = v.len();
                let off = *offset as usize;
                let end = off + data.len();
                if v.len() < end {
                    v.resize(end, 0);
                }
                v[off..end].copy_from_slice(data);
                batch.put(Space::Data, key, &v);
                if let Some(c) = counter {
                    add_i64(store, batch, c, (v.len() - before) as i64)?;
                }
            }
            Op::Truncate { key, len, counter } => {
                if let Some(mut v) = current(store, batch, key)? {
                    if v.len() > *len as usize {
                        let removed = v.len() - *len as usize;
                        v.truncate(*len as usize);
                        batch.put(Space::Data, key, &v);
                        if let Some(c) = counter {
                            add_i64(store, batch, c, -(removed as i64))?;
                        }
                    }
                }
            }
            Op::DeleteRangeCounted {
                start,
                end,
                counter,
            } => {
                let bytes = range_bytes(store, batch, start, end, false)?;
                batch.delete_range(Space::Data, start, end)?;
                add_i64(store, batch, counter, -(bytes as i64))?;
            }
            Op::DeleteRangeCountedPairs {
                start,
                end,
                counter,
            } => {
                let bytes = range_bytes(store, batch, start, end, true)?;
                batch.delete_range(Space::Data, start, end)?;
                add_i64(store, batch, counter, -(bytes as i64))?;
            }
            Op::MaxU64 { key, value } => {
                let cur = current(store, batch, key)?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                if *value > cur {
                    batch.put(Space::Data, key, &value.to_be_bytes());
                }
            }
            Op::AddI64 { key, delta } => add_i64(store, batch, key, *delta)?,
            Op::VSplice {
                base,
                offset,
                data,
                counter,
                state,
            } => {
                let st = version_state(store, batch, state)?;
                let off = *offset as usize;
                let end = off + data.len();
                let replace = (off == 0).then_some((data.as_slice(), data.len()));
                write_versioned(store, batch, &st, base, counter.as_deref(), replace, |v| {
                    if v.len() < end {
                        v.resize(end, 0);
                    }
                    v[off..end].copy_from_slice(data);
                    Ok(())
                })?;
            }
            Op::VSpliceBlob {
                base,
                offset,
                blob,
                len,
                counter,
                state,
            } => {
                let st = version_state(store, batch, state)?;
                let off = *offset as usize;
                let end = off + *len as usize;
                // Covering the value: the value becomes the reference (no copy).
                let replace = (off == 0).then_some((blob.as_slice(), *len as usize));
                write_versioned(store, batch, &st, base, counter.as_deref(), replace, |v| {
                    let data = blob_bytes(store, blob)?;
                    if v.len() < end {
                        v.resize(end, 0);
                    }
                    v[off..end].copy_from_slice(&data);
                    Ok(())
                })?;
            }
            Op::VTruncate {
                base,
                len,
                counter,
                state,
            } => {
                let st = version_state(store, batch, state)?;
                let len = *len as usize;
                let vs = versions(store, batch, base)?;
                let cur = match vs.last() {
                    Some(v) => value_len(store, batch, &keys::versioned(base, *v))?,
                    None => 0,
                };
                if cur > len {
                    write_versioned(store, batch, &st, base, counter.as_deref(), None, |v| {
                        v.truncate(len);
                        Ok(())
                    })?;
                }
            }
            Op::VDeleteRange {
                start,
                end,
                counter,
                state,
            } => {
                let st = version_state(store, batch, state)?;
                let mut removed = 0u64;
                for base in bases(store, batch, start, end)? {
                    removed += delete_versioned(store, batch, &st, &base)?;
                }
                add_i64(store, batch, counter, -(removed as i64))?;
            }
            Op::VPrune { start, end, state } => {
                let st = version_state(store, batch, state)?;
                for base in bases(store, batch, start, end)? {
                    let vs = versions(store, batch, &base)?;
                    let vs = prune(batch, &st, &base, vs);
                    if let [only] = vs[..] {
                        let key = keys::versioned(&base, only);
                        if value_len(store, batch, &key)? == 0 {
                            batch.delete(Space::Data, &key);
                        }
                    }
                }
            }
            Op::SnapshotCopy {
                start,
                end,
                snapshot,
            } => {
                for (k, v) in merged_range(store, batch, start, end)? {
                    batch.put(Space::Data, &keys::snapshot_key(&k, *snapshot), &v);
                }
            }
        }
    }
    Ok(ApplyResult::Done(TxnOutcome::Applied { index }))
}

fn version_state(
    store: &Store,
    batch: &WriteBatch,
    key: &[u8],
) -> Result<VersionState, StoreError> {
    let v = current(store, batch, key)?;
    // A state that does not decode is a service bug; keeping every version
    // is the safe reading of it.
    Ok(VersionState::decode(v.as_deref()).unwrap_or(VersionState {
        epoch: u64::MAX,
        keep: Vec::new(),
        keep_all: true,
    }))
}

/// The versions of the versioned value at `base`, ascending, as the batch
/// would leave them.
fn versions(store: &Store, batch: &WriteBatch, base: &[u8]) -> Result<Vec<u64>, StoreError> {
    let (start, end) = keys::versions_range(base);
    let mut out = std::collections::BTreeSet::new();
    each_stored_key(store, &start, &end, |k| {
        if let Some((_, v)) = keys::split_version(k) {
            out.insert(v);
        }
    })?;
    for (k, v) in batch.pending_range(Space::Data, &start, &end) {
        if let Some((_, ver)) = keys::split_version(k) {
            match v {
                Some(_) => out.insert(ver),
                None => out.remove(&ver),
            };
        }
    }
    Ok(out.into_iter().collect())
}

/// The bases of every versioned value with a version in `[start, end)`.
fn bases(
    store: &Store,
    batch: &WriteBatch,
    start: &[u8],
    end: &[u8],
) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut out = std::collections::BTreeSet::new();
    each_stored_key(store, start, end, |k| {
        if let Some((base, _)) = keys::split_version(k) {
            out.insert(base.to_vec());
        }
    })?;
    for (k, v) in batch.pending_range(Space::Data, start, end) {
        if let (Some((base, _)), Some(_)) = (keys::split_version(k), v) {
            out.insert(base.to_vec());
        }
    }
    Ok(out.into_iter().collect())
}

/// Calls `f` with every key stored in `[start, end)` (not the batch's), in
/// pages, without reading values.
fn each_stored_key(
    store: &Store,
    start: &[u8],
    end: &[u8],
    mut f: impl FnMut(&[u8]),
) -> Result<(), StoreError> {
    let mut cursor = start.to_vec();
    loop {
        let page = store.scan_keys(Space::Data, &cursor, end, RANGE_PAGE)?;
        page.iter().for_each(|k| f(k));
        match page.last() {
            Some(k) if page.len() == RANGE_PAGE => {
                cursor = k.clone();
                cursor.push(0);
            }
            _ => return Ok(()),
        }
    }
}

/// The length of a stored value as readers see it (a blob's for a reference).
fn logical_len(store: &Store, v: &[u8]) -> usize {
    store.blobs().parse(v).map_or(v.len(), |r| r.len as usize)
}

fn value_len(store: &Store, batch: &WriteBatch, key: &[u8]) -> Result<usize, StoreError> {
    match batch.pending(Space::Data, key) {
        Some(v) => Ok(v.map_or(0, |v| logical_len(store, v))),
        None => Ok(store.size_of(Space::Data, key)?.unwrap_or(0) as usize),
    }
}

/// Deletes the versions below the current one that no kept version reads;
/// returns the versions left.
fn prune(batch: &mut WriteBatch, st: &VersionState, base: &[u8], vs: Vec<u64>) -> Vec<u64> {
    let mut left = Vec::with_capacity(vs.len());
    for (i, v) in vs.iter().enumerate() {
        match vs.get(i + 1) {
            Some(next) if !st.needed(*v, *next) => {
                batch.delete(Space::Data, &keys::versioned(base, *v));
            }
            _ => left.push(*v),
        }
    }
    left
}

/// Changes the current value at `base` with `change`, copying it to a new
/// version first when a kept version still reads it. `replace`: when the
/// current value is no longer than it, the result is exactly these bytes
/// (a splice at 0 covering the value), so the old value is not read: the
/// stored value and its length as read (a blob reference is stored as is).
fn write_versioned(
    store: &Store,
    batch: &mut WriteBatch,
    st: &VersionState,
    base: &[u8],
    counter: Option<&[u8]>,
    replace: Option<(&[u8], usize)>,
    change: impl FnOnce(&mut Vec<u8>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let vs = prune(batch, st, base, versions(store, batch, base)?);
    let (target, old) = match vs.last() {
        None => (st.epoch, None),
        Some(&v) if v < st.epoch && st.needed(v, st.epoch) => (st.epoch, Some(v)),
        Some(&v) => (v, Some(v)),
    };
    let old_key = old.map(|v| keys::versioned(base, v));
    let before = match &old_key {
        Some(k) => value_len(store, batch, k)?,
        None => 0,
    };
    let (value, len) = match replace {
        Some((stored, len)) if len >= before => (stored.to_vec(), len),
        _ => {
            let mut value = match &old_key {
                Some(k) => current(store, batch, k)?.unwrap_or_default(),
                None => Vec::new(),
            };
            change(&mut value)?;
            let len = value.len();
            (value, len)
        }
    };
    batch.put(Space::Data, &keys::versioned(base, target), &value);
    if let Some(c) = counter {
        add_i64(store, batch, c, len as i64 - before as i64)?;
    }
    Ok(())
}

/// Deletes the versioned value at `base` for current readers; returns the
/// bytes it held.
fn delete_versioned(
    store: &Store,
    batch: &mut WriteBatch,
    st: &VersionState,
    base: &[u8],
) -> Result<u64, StoreError> {
    let vs = prune(batch, st, base, versions(store, batch, base)?);
    let Some(&v) = vs.last() else {
        return Ok(0);
    };
    let key = keys::versioned(base, v);
    let len = value_len(store, batch, &key)? as u64;
    if v < st.epoch && st.needed(v, st.epoch) {
        if len > 0 {
            // An empty version hides the kept one from current readers.
            batch.put(Space::Data, &keys::versioned(base, st.epoch), &[]);
        }
    } else if vs.len() > 1 {
        batch.put(Space::Data, &key, &[]);
    } else {
        batch.delete(Space::Data, &key);
    }
    Ok(len)
}

/// Every pair in `[start, end)` as the batch would leave them.
fn merged_range(
    store: &Store,
    batch: &WriteBatch,
    start: &[u8],
    end: &[u8],
) -> Result<berth_store::KvPairs, StoreError> {
    let mut out = std::collections::BTreeMap::new();
    let mut cursor = start.to_vec();
    loop {
        let page = store.scan(Space::Data, &cursor, end, RANGE_PAGE)?;
        let next = match page.last() {
            Some((k, _)) if page.len() == RANGE_PAGE => {
                let mut c = k.clone();
                c.push(0);
                Some(c)
            }
            _ => None,
        };
        out.extend(page);
        match next {
            Some(c) => cursor = c,
            None => break,
        }
    }
    for (k, v) in batch.pending_range(Space::Data, start, end) {
        match v {
            Some(v) => out.insert(k.to_vec(), v.to_vec()),
            None => out.remove(k),
        };
    }
    Ok(out.into_iter().collect())
}

fn add_i64(
    store: &Store,
    batch: &mut WriteBatch,
    key: &[u8],
    delta: i64,
) -> Result<(), StoreError> {
    let cur = current(store, batch, key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(i64::from_be_bytes)
        .unwrap_or(0);
    batch.put(Space::Data, key, &cur.saturating_add(delta).to_be_bytes());
    Ok(())
}

/// Total length of the values in `[start, end)` as the batch would leave
/// them, and of their keys too with `with_keys`.
fn range_bytes(
    store: &Store,
    batch: &WriteBatch,
    start: &[u8],
    end: &[u8],
    with_keys: bool,
) -> Result<u64, StoreError> {
    let key_len = |k: &[u8]| if with_keys { k.len() as u64 } else { 0 };
    let mut stored = Vec::new();
    each_stored_key(store, start, end, |k| stored.push(k.to_vec()))?;
    let mut lens = std::collections::BTreeMap::new();
    for k in stored {
        // Lengths without reading large values (or blobs).
        let n = store.size_of(Space::Data, &k)?.unwrap_or(0);
        let n = u64::from(n) + key_len(&k);
        lens.insert(k, n);
    }
    for (k, v) in batch.pending_range(Space::Data, start, end) {
        match v {
            Some(v) => lens.insert(k.to_vec(), logical_len(store, v) as u64 + key_len(k)),
            None => lens.remove(k),
        };
    }
    Ok(lens.values().sum())
}

fn current(store: &Store, batch: &WriteBatch, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    match batch.pending(Space::Data, key) {
        Some(v) => v
            .map(|v| store.resolve(Space::Data, v.to_vec()))
            .transpose(),
        None => store.get(Space::Data, key),
    }
}

fn range_empty(
    store: &Store,
    batch: &WriteBatch,
    start: &[u8],
    end: &[u8],
) -> Result<bool, StoreError> {
    if batch
        .pending_range(Space::Data, start, end)
        .any(|(_, v)| v.is_some())
    {
        return Ok(false);
    }
    let mut cursor = start.to_vec();
    loop {
        let page = store.scan(Space::Data, &cursor, end, RANGE_PAGE)?;
        for (k, _) in &page {
            // A key the batch deletes does not count.
            if batch.pending(Space::Data, k) != Some(None) {
                return Ok(false);
            }
        }
        match page.last() {
            Some((k, _)) if page.len() == RANGE_PAGE => {
                cursor = k.clone();
                cursor.push(0);
            }
            _ => return Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..8)
    }

    fn txn() -> impl Strategy<Value = Txn> {
        let cond = prop_oneof![
            (bytes(), prop::option::of(bytes()))
                .prop_map(|(key, value)| Condition::ValueIs { key, value }),
            (bytes(), bytes()).prop_map(|(start, end)| Condition::RangeEmpty { start, end }),
        ];
        let op = prop_oneof![
            (bytes(), bytes()).prop_map(|(key, value)| Op::Put { key, value }),
            bytes().prop_map(|key| Op::Delete { key }),
            (bytes(), bytes()).prop_map(|(start, end)| Op::DeleteRange { start, end }),
            (bytes(), any::<u32>(), bytes(), prop::option::of(bytes())).prop_map(
                |(key, offset, data, counter)| Op::Splice {
                    key,
                    offset,
                    data,
                    counter,
                }
            ),
            (bytes(), any::<u32>(), prop::option::of(bytes()))
                .prop_map(|(key, len, counter)| Op::Truncate { key, len, counter }),
            (bytes(), bytes(), bytes()).prop_map(|(start, end, counter)| {
                Op::DeleteRangeCounted {
                    start,
                    end,
                    counter,
                }
            }),
            (bytes(), bytes(), bytes()).prop_map(|(start, end, counter)| {
                Op::DeleteRangeCountedPairs {
                    start,
                    end,
                    counter,
                }
            }),
            (bytes(), any::<u64>()).prop_map(|(key, value)| Op::MaxU64 { key, value }),
            (bytes(), any::<i64>()).prop_map(|(key, delta)| Op::AddI64 { key, delta }),
        ];
        (
            prop::collection::vec(cond, 0..4),
            prop::collection::vec(op, 0..4),
        )
            .prop_map(|(conditions, ops)| Txn { conditions, ops })
    }

    proptest! {
        #[test]
        fn codec_roundtrip(t in txn()) {
            prop_assert_eq!(decode(&encode(&t).unwrap()).unwrap(), t);
        }

        #[test]
        fn garbage_never_panics(b in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&b);
        }
    }

    fn desc() -> ShardDesc {
        ShardDesc {
            id: 1,
            start: b"k".to_vec(),
            end: b"l".to_vec(),
            voters: vec![1],
        }
    }

    #[test]
    fn conditions_see_earlier_writes_of_the_same_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = store.batch();
        b.put(Space::Data, b"k1", b"old");
        store.write(b, berth_store::Durability::Buffered).unwrap();

        let mut batch = store.batch();
        let d = desc();
        // Entry 1 deletes the whole range; entry 2 sees it empty; entry 3 sees entry 2's put.
        let t1 = Txn::ops(vec![Op::DeleteRange {
            start: b"k".to_vec(),
            end: b"l".to_vec(),
        }]);
        let t2 = Txn {
            conditions: vec![Condition::RangeEmpty {
                start: b"k".to_vec(),
                end: b"l".to_vec(),
            }],
            ops: vec![Op::Put {
                key: b"k2".to_vec(),
                value: b"new".to_vec(),
            }],
        };
        let t3 = Txn {
            conditions: vec![Condition::ValueIs {
                key: b"k2".to_vec(),
                value: Some(b"new".to_vec()),
            }],
            ops: vec![],
        };
        for (i, t) in [t1, t2, t3].iter().enumerate() {
            let r = apply(&store, &mut batch, &d, t, i as u64 + 1).unwrap();
            assert!(
                matches!(r, ApplyResult::Done(TxnOutcome::Applied { .. })),
                "entry {i}"
            );
        }
        let outside = Txn::ops(vec![Op::Delete { key: b"z".to_vec() }]);
        assert!(matches!(
            apply(&store, &mut batch, &d, &outside, 4).unwrap(),
            ApplyResult::OutOfRange
        ));
        store
            .write(batch, berth_store::Durability::Buffered)
            .unwrap();
        assert_eq!(
            store.scan(Space::Data, b"", b"", 10).unwrap(),
            vec![(b"k2".to_vec(), b"new".to_vec())]
        );
    }

    #[test]
    fn value_ops_splice_truncate_max_add() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = desc();
        let mut batch = store.batch();
        let ops = vec![
            // Splice into an absent value zero-fills the gap.
            Op::Splice {
                key: b"ka".to_vec(),
                offset: 3,
                data: b"xy".to_vec(),
                counter: Some(b"ku".to_vec()),
            },
            // Disjoint splices commute; overlapping ones apply in order.
            Op::Splice {
                key: b"ka".to_vec(),
                offset: 0,
                data: b"ab".to_vec(),
                counter: Some(b"ku".to_vec()),
            },
            Op::Splice {
                key: b"ka".to_vec(),
                offset: 4,
                data: b"ZZ".to_vec(),
                counter: Some(b"ku".to_vec()),
            },
            Op::Truncate {
                key: b"ka".to_vec(),
                len: 5,
                counter: Some(b"ku".to_vec()),
            },
            Op::Truncate {
                key: b"kz".to_vec(),
                len: 1,
                counter: None,
            },
            Op::Splice {
                key: b"kb1".to_vec(),
                offset: 0,
                data: b"1234".to_vec(),
                counter: Some(b"ku".to_vec()),
            },
            Op::Put {
                key: b"kb2".to_vec(),
                value: b"123".to_vec(),
            },
            Op::DeleteRangeCounted {
                start: b"kb".to_vec(),
                end: b"kc".to_vec(),
                counter: b"kd".to_vec(),
            },
            // Keys count too: kp1 (3 + 2 bytes, pending) and kp22 (4 + 3).
            Op::Put {
                key: b"kp1".to_vec(),
                value: b"ab".to_vec(),
            },
            Op::Put {
                key: b"kp22".to_vec(),
                value: b"abc".to_vec(),
            },
            Op::DeleteRangeCountedPairs {
                start: b"kp".to_vec(),
                end: b"kq".to_vec(),
                counter: b"ke".to_vec(),
            },
            Op::MaxU64 {
                key: b"km".to_vec(),
                value: 7,
            },
            Op::MaxU64 {
                key: b"km".to_vec(),
                value: 3,
            },
            Op::AddI64 {
                key: b"kc".to_vec(),
                delta: 10,
            },
            Op::AddI64 {
                key: b"kc".to_vec(),
                delta: -25,
            },
            Op::AddI64 {
                key: b"kx".to_vec(),
                delta: i64::MAX,
            },
            Op::AddI64 {
                key: b"kx".to_vec(),
                delta: 1,
            },
        ];
        let r = apply(&store, &mut batch, &d, &Txn::ops(ops), 1).unwrap();
        assert!(matches!(r, ApplyResult::Done(TxnOutcome::Applied { .. })));
        store
            .write(batch, berth_store::Durability::Buffered)
            .unwrap();
        let get = |k: &[u8]| store.get(Space::Data, k).unwrap();
        assert_eq!(get(b"ka").unwrap(), b"ab\0xZ");
        assert_eq!(get(b"kz"), None);
        assert_eq!(get(b"km").unwrap(), 7u64.to_be_bytes());
        assert_eq!(get(b"kc").unwrap(), (-15i64).to_be_bytes());
        assert_eq!(get(b"kx").unwrap(), i64::MAX.to_be_bytes());
        // ka grew to 6 bytes, was cut to 5; kb1 grew by 4: usage 9.
        assert_eq!(get(b"ku").unwrap(), 9i64.to_be_bytes());
        // kb1 (4 bytes, pending in the batch) and kb2 (3) were deleted.
        assert_eq!(get(b"kd").unwrap(), (-7i64).to_be_bytes());
        assert_eq!(get(b"kb1"), None);
        assert_eq!(get(b"ke").unwrap(), (-12i64).to_be_bytes());
        assert_eq!(get(b"kp22"), None);
        // Out-of-range value ops are refused like any other op.
        let outside = Txn::ops(vec![Op::MaxU64 {
            key: b"z".to_vec(),
            value: 1,
        }]);
        let mut batch = store.batch();
        assert!(matches!(
            apply(&store, &mut batch, &d, &outside, 2).unwrap(),
            ApplyResult::OutOfRange
        ));
    }

    /// Applies `ops` as one entry and writes the batch.
    fn run(store: &Store, ops: Vec<Op>) {
        let d = ShardDesc {
            id: 1,
            start: Vec::new(),
            end: Vec::new(),
            voters: vec![1],
        };
        let mut batch = store.batch();
        let r = apply(store, &mut batch, &d, &Txn::ops(ops), 1).unwrap();
        assert!(matches!(r, ApplyResult::Done(TxnOutcome::Applied { .. })));
        store
            .write(batch, berth_store::Durability::Buffered)
            .unwrap();
    }

    #[test]
    fn a_pairs_counted_range_delete_subtracts_keys_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let big = vec![7u8; BLOB_MIN_BYTES + 1];
        run(
            &store,
            vec![
                Op::Put {
                    key: b"t1".to_vec(),
                    value: b"abc".to_vec(),
                },
                Op::Put {
                    key: b"t22".to_vec(),
                    value: big.clone(),
                },
                Op::Put {
                    key: b"u".to_vec(),
                    value: b"kept".to_vec(),
                },
                Op::AddI64 {
                    key: b"c".to_vec(),
                    delta: 100,
                },
            ],
        );
        // Stored pairs (one large value), and one the same entry adds.
        run(
            &store,
            vec![
                Op::Put {
                    key: b"t3".to_vec(),
                    value: b"x".to_vec(),
                },
                Op::DeleteRangeCountedPairs {
                    start: b"t".to_vec(),
                    end: b"u".to_vec(),
                    counter: b"c".to_vec(),
                },
            ],
        );
        let get = |k: &[u8]| store.get(Space::Data, k).unwrap();
        let removed = (2 + 3) + (3 + big.len() as i64) + (2 + 1);
        assert_eq!(get(b"c").unwrap(), (100 - removed).to_be_bytes());
        assert_eq!(get(b"t1"), None);
        assert_eq!(get(b"u").unwrap(), b"kept");
        // An unbounded end is refused: the range must be explicit.
        let open = Txn::ops(vec![Op::DeleteRangeCountedPairs {
            start: b"k".to_vec(),
            end: Vec::new(),
            counter: b"kc".to_vec(),
        }]);
        assert!(!open.within(&desc()));
    }

    #[test]
    fn stamped_puts_are_keyed_by_the_entry_index_and_their_place() {
        use berth_store::keys::{split_stamp, stamped, Key, Kind};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = ShardDesc {
            id: 1,
            start: Key::new(1, Kind::Meta, 0).build(),
            end: Key::new(2, Kind::Meta, 0).build(),
            voters: vec![1],
        };
        let prefix = Key::new(1, Kind::TableChange, 0).build();
        let put = |v: &[u8]| Op::PutStamped {
            prefix: prefix.clone(),
            value: v.to_vec(),
        };
        for (index, ops) in [(7, vec![put(b"a"), put(b"b")]), (9, vec![put(b"c")])] {
            let mut batch = store.batch();
            let r = apply(&store, &mut batch, &d, &Txn::ops(ops), index).unwrap();
            assert!(matches!(r, ApplyResult::Done(TxnOutcome::Applied { .. })));
            store
                .write(batch, berth_store::Durability::Buffered)
                .unwrap();
        }
        let (s, e) = berth_store::keys::versions_range(&prefix);
        let got = store.scan(Space::Data, &s, &e, 10).unwrap();
        let got: Vec<_> = got
            .iter()
            .map(|(k, v)| (split_stamp(k).unwrap(), v.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ((7, 0), b"a".to_vec()),
                ((7, 1), b"b".to_vec()),
                ((9, 0), b"c".to_vec())
            ]
        );
        assert_eq!(split_stamp(&stamped(&prefix, 9, 0)), Some((9, 0)));
        // A prefix outside the shard is refused.
        let outside = Txn::ops(vec![Op::PutStamped {
            prefix: Key::new(3, Kind::TableChange, 0).build(),
            value: Vec::new(),
        }]);
        let mut batch = store.batch();
        assert!(matches!(
            apply(&store, &mut batch, &d, &outside, 10).unwrap(),
            ApplyResult::OutOfRange
        ));
    }

    #[test]
    fn versioned_values_copy_on_write_for_kept_versions_only() {
        use berth_store::keys::{versioned, Key, Kind};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let state = Key::new(1, Kind::Meta, 0).build();
        let counter = Key::new(1, Kind::FileAttr, 0).build();
        let base = |i: u64| Key::new(1, Kind::Chunk, 5).u64(i).build();
        let splice = |i: u64, offset: u32, data: &[u8]| Op::VSplice {
            base: base(i),
            offset,
            data: data.to_vec(),
            counter: Some(counter.clone()),
            state: state.clone(),
        };
        let set_state = |epoch: u64, keep: Vec<u64>| Op::Put {
            key: state.clone(),
            value: VersionState::new(epoch, keep).encode(),
        };
        let get = |k: &[u8]| store.get(Space::Data, k).unwrap();
        let vers = |i: u64| {
            let (s, e) = keys::versions_range(&base(i));
            store
                .scan(Space::Data, &s, &e, 100)
                .unwrap()
                .into_iter()
                .map(|(k, v)| (keys::split_version(&k).unwrap().1, v))
                .collect::<Vec<_>>()
        };
        // No state yet: epoch 0, written in place.
        run(&store, vec![splice(0, 0, b"aaaa"), splice(0, 1, b"b")]);
        run(&store, vec![splice(1, 0, b"cc")]);
        assert_eq!(vers(0), vec![(0, b"abaa".to_vec())]);
        // Snapshot 0 taken: the next write copies, later ones change the copy.
        run(&store, vec![set_state(1, vec![0])]);
        run(&store, vec![splice(0, 0, b"X")]);
        run(&store, vec![splice(0, 3, b"YZ")]);
        assert_eq!(vers(0), vec![(0, b"abaa".to_vec()), (1, b"XbaYZ".to_vec())]);
        // Delete both values: chunk 0's kept version stays hidden behind an
        // empty version; chunk 1 likewise.
        run(
            &store,
            vec![Op::VDeleteRange {
                start: base(0),
                end: Key::new(1, Kind::Chunk, 6).build(),
                counter: counter.clone(),
                state: state.clone(),
            }],
        );
        assert_eq!(vers(0), vec![(0, b"abaa".to_vec()), (1, Vec::new())]);
        assert_eq!(vers(1), vec![(0, b"cc".to_vec()), (1, Vec::new())]);
        // Usage: 4 + 2 = 6 live, +1 grew to 5, -5 -2 deleted = 0.
        assert_eq!(get(&counter).unwrap(), 0i64.to_be_bytes());
        // Truncate of a value a snapshot reads copies too.
        run(&store, vec![splice(2, 0, b"hello")]);
        run(&store, vec![set_state(2, vec![0, 1])]);
        run(
            &store,
            vec![Op::VTruncate {
                base: base(2),
                len: 2,
                counter: Some(counter.clone()),
                state: state.clone(),
            }],
        );
        assert_eq!(vers(2), vec![(1, b"hello".to_vec()), (2, b"he".to_vec())]);
        // Snapshots dropped: pruning leaves only what current readers see.
        run(
            &store,
            vec![
                set_state(2, vec![]),
                Op::VPrune {
                    start: base(0),
                    end: Key::new(1, Kind::Chunk, 6).build(),
                    state: state.clone(),
                },
            ],
        );
        assert_eq!(vers(0), vec![]);
        assert_eq!(vers(1), vec![]);
        assert_eq!(vers(2), vec![(2, b"he".to_vec())]);
        assert_eq!(get(&versioned(&base(2), 1)), None);
        assert_eq!(get(&counter).unwrap(), 2i64.to_be_bytes());
        // Without kept versions an old version is changed in place.
        run(&store, vec![splice(2, 2, b"y")]);
        assert_eq!(vers(2), vec![(2, b"hey".to_vec())]);
    }

    #[test]
    fn snapshot_copy_copies_a_range_at_apply_time() {
        use berth_store::keys::{kind_range, snapshot_key, unsnapshot_key, Key, Kind};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = Key::new(3, Kind::Inode, 1).build();
        let b = Key::new(3, Kind::Dirent, 1).str("x").build();
        let c = Key::new(3, Kind::Chunk, 1).u64(0).build();
        let (start, _) = kind_range(3, Kind::Inode);
        let (_, end) = kind_range(3, Kind::FileAttr);
        run(
            &store,
            vec![
                Op::Put {
                    key: a.clone(),
                    value: b"A".to_vec(),
                },
                Op::Put {
                    key: c.clone(),
                    value: b"C".to_vec(),
                },
            ],
        );
        // The put of `b` in the same entry is copied too; the chunk is not.
        run(
            &store,
            vec![
                Op::Put {
                    key: b.clone(),
                    value: b"B".to_vec(),
                },
                Op::SnapshotCopy {
                    start,
                    end,
                    snapshot: 9,
                },
            ],
        );
        let (ss, se) = keys::object_range(3, Kind::Snapshot, 9);
        let copied: Vec<_> = store
            .scan(Space::Data, &ss, &se, 10)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (unsnapshot_key(&k).unwrap(), v))
            .collect();
        assert_eq!(copied, vec![(a.clone(), b"A".to_vec()), (b, b"B".to_vec())]);
        assert_eq!(
            store.get(Space::Data, &snapshot_key(&a, 9)).unwrap(),
            Some(b"A".to_vec())
        );
    }
}
