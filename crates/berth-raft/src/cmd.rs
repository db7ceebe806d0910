//! The replicated command: a deterministic conditional transaction (like an etcd `Txn`).
//!
//! The kernel knows nothing about files, tables or streams: services express every mutation
//! as conditions plus operations on cluster keys. At apply time every condition is checked
//! against the shard's current state (including the effects of earlier entries of the same
//! apply batch); if all hold, all operations apply atomically, otherwise nothing does.
//!
//! Wire/log format of an entry: `version (u8 = 1) · postcard(Txn)`. A log entry that does not
//! decode is a fatal invariant violation for its group (never skipped).

use berth_store::{Space, Store, StoreError, WriteBatch};
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
            Op::Put { key, .. } | Op::Delete { key } => desc.contains(key),
            Op::DeleteRange { start, end } => desc.contains_range(start, end),
        });
        conds && ops
    }
}

/// Encodes a transaction for the log.
pub fn encode(txn: &Txn) -> Result<Vec<u8>, postcard::Error> {
    let mut out = vec![TXN_FORMAT_VERSION];
    out.extend_from_slice(&postcard::to_stdvec(txn)?);
    Ok(out)
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
    for op in &txn.ops {
        match op {
            Op::Put { key, value } => batch.put(Space::Data, key, value),
            Op::Delete { key } => batch.delete(Space::Data, key),
            Op::DeleteRange { start, end } => {
                batch.delete_range(Space::Data, start, end)?;
            }
        }
    }
    Ok(ApplyResult::Done(TxnOutcome::Applied { index }))
}

fn current(store: &Store, batch: &WriteBatch, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    match batch.pending(Space::Data, key) {
        Some(v) => Ok(v.map(<[u8]>::to_vec)),
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
}
