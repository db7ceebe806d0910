use std::sync::Arc;

use berth_raft::cmd::{Condition, Op, Txn, TxnOutcome};
use berth_raft::{RaftError, RaftNode, ShardDesc};
use berth_store::keys::{self, Kind};
use berth_store::{Durability, Space, Store};
use protobuf::Message as _;
use raft::eraftpb::Entry;

use crate::harness::{bounded, config, eventually, key, key_in, shard, shard_in, NullTransport};

fn start(store: &Arc<Store>, tweak: impl Fn(&mut berth_raft::Config)) -> RaftNode {
    let mut cfg = config(1);
    tweak(&mut cfg);
    RaftNode::start(store.clone(), cfg, Arc::new(NullTransport)).unwrap()
}

fn put(k: &[u8], v: &[u8]) -> Op {
    Op::Put {
        key: k.to_vec(),
        value: v.to_vec(),
    }
}

async fn wait_leader(node: &RaftNode, shard: u64) {
    eventually("leader", 10, || {
        (node.leader(shard) == Some(1)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn single_node_conditional_txns() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let node = start(&store, |_| {});
    let desc = shard(1, vec![1]);
    node.create_shard(desc.clone()).unwrap();
    node.create_shard(desc.clone()).unwrap(); // idempotent
    let mut other = desc.clone();
    other.end = b"\x00".to_vec();
    assert!(node.create_shard(other).is_err(), "same id, other range");
    let overlapping = ShardDesc {
        id: 2,
        ..desc.clone()
    };
    assert!(node.create_shard(overlapping).is_err());
    assert!(node.create_shard(shard(3, vec![2])).is_err(), "not a voter");
    assert_eq!(node.shards(), vec![desc.clone()]);
    wait_leader(&node, 1).await;

    let (a, b) = (key(1, "a"), key(1, "b"));
    let r = node
        .propose(1, Txn::ops(vec![put(&a, b"1")]))
        .await
        .unwrap();
    let TxnOutcome::Applied { index } = r else {
        panic!("{r:?}")
    };
    assert_eq!(node.get(1, &a).unwrap(), Some(b"1".to_vec()));
    let watch = node.applied_watch(1).unwrap();
    assert!(*watch.borrow() >= index);

    // Condition holds: applied.
    let txn = Txn {
        conditions: vec![Condition::ValueIs {
            key: a.clone(),
            value: Some(b"1".to_vec()),
        }],
        ops: vec![put(&b, b"2")],
    };
    assert!(matches!(
        node.propose(1, txn).await.unwrap(),
        TxnOutcome::Applied { .. }
    ));
    // Second condition fails: nothing applies.
    let txn = Txn {
        conditions: vec![
            Condition::ValueIs {
                key: b.clone(),
                value: Some(b"2".to_vec()),
            },
            Condition::ValueIs {
                key: a.clone(),
                value: None,
            },
        ],
        ops: vec![put(&b, b"3"), Op::Delete { key: a.clone() }],
    };
    assert_eq!(
        node.propose(1, txn).await.unwrap(),
        TxnOutcome::ConditionFailed { condition: 1 }
    );
    assert_eq!(node.get(1, &b).unwrap(), Some(b"2".to_vec()));
    assert_eq!(node.get(1, &a).unwrap(), Some(b"1".to_vec()));

    // RangeEmpty.
    let (s1, e1) = keys::object_range(1, Kind::Inode, 1);
    let (s2, e2) = keys::object_range(1, Kind::Inode, 2);
    let c = |s: &[u8], e: &[u8]| Txn {
        conditions: vec![Condition::RangeEmpty {
            start: s.to_vec(),
            end: e.to_vec(),
        }],
        ops: vec![put(&key(2, "x"), b"x")],
    };
    assert_eq!(
        node.propose(1, c(&s1, &e1)).await.unwrap(),
        TxnOutcome::ConditionFailed { condition: 0 }
    );
    assert!(matches!(
        node.propose(1, c(&s2, &e2)).await.unwrap(),
        TxnOutcome::Applied { .. }
    ));

    // Out of range: refused before proposing; reads are range-checked too.
    let outside = keys::Key::new(2, Kind::Inode, 1).build();
    let r = node.propose(1, Txn::ops(vec![put(&outside, b"no")])).await;
    assert!(
        matches!(r, Err(RaftError::KeyOutOfRange { shard: 1 })),
        "{r:?}"
    );
    let r = node
        .propose(
            1,
            Txn::ops(vec![Op::DeleteRange {
                start: s1.clone(),
                end: Vec::new(),
            }]),
        )
        .await;
    assert!(matches!(r, Err(RaftError::KeyOutOfRange { .. })), "{r:?}");
    assert!(matches!(
        node.get(1, &outside),
        Err(RaftError::KeyOutOfRange { .. })
    ));
    assert!(matches!(
        node.propose(9, Txn::default()).await,
        Err(RaftError::ShardNotFound(9))
    ));

    // read_index, then local reads; scan clamps to the shard.
    bounded("read_index", 10, node.read_index(1)).await.unwrap();
    let all = node.scan(1, b"", b"", 100).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(node.scan(1, &s1, &e1, 100).unwrap().len(), 2);
    // Concurrent barriers share raft read requests.
    let reads: Vec<_> = (0..10).map(|_| node.read_index(1)).collect();
    for r in reads {
        bounded("read_index", 10, r).await.unwrap();
    }

    // DeleteRange removes the object's keys.
    let r = node
        .propose(
            1,
            Txn::ops(vec![Op::DeleteRange {
                start: s1.clone(),
                end: e1.clone(),
            }]),
        )
        .await
        .unwrap();
    assert!(matches!(r, TxnOutcome::Applied { .. }));
    assert!(node.scan(1, &s1, &e1, 100).unwrap().is_empty());

    // An idle single-voter leader hibernates.
    eventually("hibernation", 10, || {
        node.status()
            .iter()
            .find(|s| s.id == 1 && s.hibernating)
            .cloned()
    })
    .await;
    // ...and wakes on a proposal.
    node.propose(1, Txn::ops(vec![put(&a, b"9")]))
        .await
        .unwrap();
    let m = node.metrics();
    assert!(m.proposals >= 8 && m.proposals_failed >= 3 && m.persist_batches > 0);
    node.shutdown();
    assert!(matches!(
        node.propose(1, Txn::default()).await,
        Err(RaftError::Stopped)
    ));
}

#[tokio::test]
async fn restart_keeps_acknowledged_writes_and_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100u64;
    {
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let node = start(&store, |c| c.log_compact_threshold = 20);
        node.create_shard(shard(1, vec![1])).unwrap();
        wait_leader(&node, 1).await;
        for i in 0..n {
            let r = node
                .propose(1, Txn::ops(vec![put(&key(i, "k"), &i.to_be_bytes())]))
                .await
                .unwrap();
            assert!(matches!(r, TxnOutcome::Applied { .. }));
        }
        let st = node.status().into_iter().find(|s| s.id == 1).unwrap();
        assert!(st.log_first > 50, "log compacted: {st:?}");
        assert!(st.applied >= n);
        node.shutdown();
    }
    // Same directory, new store and node.
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let node = start(&store, |c| c.log_compact_threshold = 20);
    assert_eq!(node.shards(), vec![shard(1, vec![1])]);
    wait_leader(&node, 1).await;
    bounded("read_index", 10, node.read_index(1)).await.unwrap();
    for i in 0..n {
        assert_eq!(
            node.get(1, &key(i, "k")).unwrap(),
            Some(i.to_be_bytes().to_vec()),
            "key {i}"
        );
    }
    let r = node
        .propose(1, Txn::ops(vec![put(&key(n, "k"), b"after")]))
        .await
        .unwrap();
    let TxnOutcome::Applied { index } = r else {
        panic!("{r:?}")
    };
    assert!(index > n, "log continues after restart: {index}");
    node.shutdown();
}

#[tokio::test]
async fn failed_fsync_fails_the_proposal_and_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let node = start(&store, |_| {});
    node.create_shard(shard(1, vec![1])).unwrap();
    wait_leader(&node, 1).await;
    node.propose(1, Txn::ops(vec![put(&key(1, "ok"), b"1")]))
        .await
        .unwrap();

    store.fail_next_sync_for_test();
    let r = node
        .propose(1, Txn::ops(vec![put(&key(1, "lost"), b"1")]))
        .await;
    assert!(matches!(r, Err(RaftError::Poisoned)), "{r:?}");
    assert!(store.is_poisoned());
    let r = node
        .propose(1, Txn::ops(vec![put(&key(1, "later"), b"1")]))
        .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(node.get(1, &key(1, "later")).unwrap(), None);
    node.shutdown();
}

#[tokio::test]
async fn concurrent_proposals_share_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let node = start(&store, |_| {});
    node.create_shard(shard(1, vec![1])).unwrap();
    node.create_shard(shard_in(2, 2, vec![1])).unwrap();
    wait_leader(&node, 1).await;
    wait_leader(&node, 2).await;
    let before = node.metrics();
    let n = 200u64;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let node = node.clone();
        set.spawn(async move {
            let (shard, volume) = if i % 2 == 0 { (1, 1) } else { (2, 2) };
            node.propose(shard, Txn::ops(vec![put(&key_in(volume, i, "c"), b"v")]))
                .await
        });
    }
    while let Some(r) = set.join_next().await {
        assert!(matches!(r.unwrap(), Ok(TxnOutcome::Applied { .. })));
    }
    let after = node.metrics();
    let batches = after.persist_batches - before.persist_batches;
    assert!(
        batches < n,
        "{n} proposals over two shards took {batches} group commits"
    );
    assert_eq!(node.scan(1, b"", b"", 1000).unwrap().len() as u64, n / 2);
    assert_eq!(node.scan(2, b"", b"", 1000).unwrap().len() as u64, n / 2);
    node.shutdown();
}

fn last_entry(store: &Store, shard: u64) -> (u64, Vec<u8>, Vec<u8>) {
    let start = [shard.to_be_bytes(), 0u64.to_be_bytes()].concat();
    let end = [(shard + 1).to_be_bytes(), 0u64.to_be_bytes()].concat();
    let (k, v) = store
        .last_in_range(Space::RaftLog, &start, &end)
        .unwrap()
        .unwrap();
    (u64::from_be_bytes(k[8..16].try_into().unwrap()), k, v)
}

#[tokio::test]
async fn corrupt_or_undecodable_entries_stop_only_their_shard() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let node = start(&store, |_| {});
        for id in 1..=3 {
            node.create_shard(shard_in(id, id, vec![1])).unwrap();
            wait_leader(&node, id).await;
            node.propose(id, Txn::ops(vec![put(&key_in(id, 1, "k"), b"v")]))
                .await
                .unwrap();
        }
        node.shutdown();
    }
    {
        let store = Store::open(dir.path()).unwrap();
        let mut b = store.batch();
        // Shard 1: a well-formed log record whose command does not decode.
        let (idx, _, v) = last_entry(&store, 1);
        let old = Entry::parse_from_bytes(&v[5..]).unwrap();
        let e = Entry {
            index: idx + 1,
            term: old.term,
            data: vec![
                1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            ]
            .into(),
            ..Entry::default()
        };
        let payload = e.write_to_bytes().unwrap();
        let mut rec = vec![1];
        rec.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
        rec.extend_from_slice(&payload);
        let k = [1u64.to_be_bytes(), (idx + 1).to_be_bytes()].concat();
        b.put(Space::RaftLog, &k, &rec);
        // Shard 2: flip a bit of a stored entry (checksum mismatch).
        let (_, k, mut v) = last_entry(&store, 2);
        let last = v.len() - 1;
        v[last] ^= 0x01;
        b.put(Space::RaftLog, &k, &v);
        store.write(b, Durability::Sync).unwrap();
    }
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let node = start(&store, |_| {});
    let stopped = |id: u64| {
        node.status()
            .into_iter()
            .find(|s| s.id == id)
            .and_then(|s| s.stopped)
    };
    let why1 = eventually("shard 1 stops", 10, || stopped(1)).await;
    assert!(why1.contains("not a valid command"), "{why1}");
    let why2 = eventually("shard 2 stops", 10, || stopped(2)).await;
    assert!(why2.contains("checksum"), "{why2}");
    let r = node
        .propose(1, Txn::ops(vec![put(&key_in(1, 2, "k"), b"v")]))
        .await;
    assert!(matches!(r, Err(RaftError::Internal(_))), "{r:?}");
    // The healthy shard on the same node keeps working.
    wait_leader(&node, 3).await;
    let r = node
        .propose(3, Txn::ops(vec![put(&key_in(3, 2, "k"), b"v")]))
        .await;
    assert!(matches!(r, Ok(TxnOutcome::Applied { .. })), "{r:?}");
    assert!(stopped(3).is_none());
    node.shutdown();
}

fn vsplice(base: &[u8], offset: u32, data: Vec<u8>) -> Op {
    Op::VSplice {
        base: base.to_vec(),
        offset,
        data,
        counter: Some(key(9, "usage")),
        state: key(9, "versions"),
    }
}

fn usage(node: &RaftNode) -> i64 {
    node.get(1, &key(9, "usage"))
        .unwrap()
        .map_or(0, |v| i64::from_be_bytes(v.try_into().unwrap()))
}

/// Bulk splices are written once, to a blob segment: the state machine keeps
/// a reference to the log's bytes. Reads (whole and partial), partial
/// overwrites, restarts and the collector all see the same bytes, and dead
/// segments go away.
#[tokio::test]
async fn bulk_values_live_in_blobs_and_dead_segments_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let base = key(1, "chunk");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let cur = keys::versioned(&base, 0);
    {
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let node = start(&store, |c| c.blob_gc_interval = std::time::Duration::ZERO);
        node.create_shard(shard(1, vec![1])).unwrap();
        wait_leader(&node, 1).await;
        let journal_before = store.metrics().bytes_written;
        node.propose(1, Txn::ops(vec![vsplice(&base, 0, big.clone())]))
            .await
            .unwrap();
        // The bytes went to a segment, not through the engine.
        let through_engine = store.metrics().bytes_written - journal_before;
        assert!(through_engine < 10_000, "{through_engine} bytes journaled");
        assert!(store.blobs().disk_bytes() >= big.len() as u64);
        assert_eq!(node.get(1, &cur).unwrap(), Some(big.clone()));
        assert_eq!(
            node.get_range(1, &cur, 1000, 10).unwrap(),
            Some(big[1000..1010].to_vec())
        );
        assert_eq!(
            node.get_range(1, &cur, 299_995, 100).unwrap(),
            Some(big[299_995..].to_vec())
        );
        assert_eq!(usage(&node), big.len() as i64);
        // A small splice into the middle materialises the value.
        node.propose(1, Txn::ops(vec![vsplice(&base, 10, b"xyz".to_vec())]))
            .await
            .unwrap();
        let mut want = big.clone();
        want[10..13].copy_from_slice(b"xyz");
        assert_eq!(node.get(1, &cur).unwrap(), Some(want.clone()));
        assert_eq!(usage(&node), big.len() as i64);
        // A large splice not at 0 reads its bytes back from the blob.
        node.propose(1, Txn::ops(vec![vsplice(&base, 200_000, big.clone())]))
            .await
            .unwrap();
        want.resize(500_000, 0);
        want[200_000..].copy_from_slice(&big);
        assert_eq!(node.get(1, &cur).unwrap(), Some(want.clone()));
        assert_eq!(usage(&node), 500_000);
        // And a covering one becomes a reference again.
        let whole: Vec<u8> = (0..600_000u32).map(|i| (i % 13) as u8).collect();
        node.propose(1, Txn::ops(vec![vsplice(&base, 0, whole.clone())]))
            .await
            .unwrap();
        assert_eq!(node.get(1, &cur).unwrap(), Some(whole.clone()));
        assert_eq!(store.size_of(Space::Data, &cur).unwrap(), Some(600_000));
        assert_eq!(usage(&node), 600_000);
        node.shutdown();
    }
    // The log holds references too: let it be compacted at every apply.
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let node = start(&store, |c| {
        c.blob_gc_interval = std::time::Duration::ZERO;
        c.log_compact_threshold = 1;
    });
    wait_leader(&node, 1).await;
    let whole: Vec<u8> = (0..600_000u32).map(|i| (i % 13) as u8).collect();
    assert_eq!(node.get(1, &cur).unwrap(), Some(whole), "after restart");
    let sealed = store.blobs().sealed();
    assert_eq!(sealed.len(), 1, "the segment written before the restart");
    // Still referenced (by the value): two passes keep it.
    node.collect_blobs().unwrap();
    assert_eq!(node.collect_blobs().unwrap(), 0);
    assert_eq!(store.blobs().sealed(), sealed);
    // Deleted: the second pass that finds it dead removes it.
    node.propose(
        1,
        Txn::ops(vec![Op::VDeleteRange {
            start: base.clone(),
            end: keys::versions_range(&base).1,
            counter: key(9, "usage"),
            state: key(9, "versions"),
        }]),
    )
    .await
    .unwrap();
    assert_eq!(node.get(1, &cur).unwrap(), None);
    assert_eq!(usage(&node), 0);
    let mut removed = 0;
    for _ in 0..3 {
        removed += node.collect_blobs().unwrap();
    }
    assert_eq!(removed, 1);
    assert!(store.blobs().sealed().is_empty());
    node.shutdown();
}

/// Proposals may not carry blob references (only a node's own log makes them).
#[tokio::test]
async fn proposals_cannot_carry_blob_references() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let node = start(&store, |_| {});
    node.create_shard(shard(1, vec![1])).unwrap();
    wait_leader(&node, 1).await;
    let forged = Op::VSpliceBlob {
        base: key(1, "chunk"),
        offset: 0,
        blob: vec![0; berth_store::blobs::REF_LEN],
        len: 10,
        counter: None,
        state: key(9, "versions"),
    };
    let r = node.propose(1, Txn::ops(vec![forged])).await;
    assert!(r.is_err(), "{r:?}");
    node.shutdown();
}

/// Bulk puts (a stream's record batches) are written once too: the value is
/// a reference to the log's bytes, read back whole by gets and scans, after
/// a restart as well; forged references are refused.
#[tokio::test]
async fn bulk_puts_live_in_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(1, "batch");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    {
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let node = start(&store, |c| c.blob_gc_interval = std::time::Duration::ZERO);
        node.create_shard(shard(1, vec![1])).unwrap();
        wait_leader(&node, 1).await;
        let journal_before = store.metrics().bytes_written;
        node.propose(
            1,
            Txn::ops(vec![Op::Put {
                key: k.clone(),
                value: big.clone(),
            }]),
        )
        .await
        .unwrap();
        let through_engine = store.metrics().bytes_written - journal_before;
        assert!(through_engine < 10_000, "{through_engine} bytes journaled");
        assert!(store.blobs().disk_bytes() >= big.len() as u64);
        assert_eq!(node.get(1, &k).unwrap(), Some(big.clone()));
        let (start_key, end_key) = (key(1, ""), key(2, ""));
        let scanned = node.scan(1, &start_key, &end_key, 10).unwrap();
        assert_eq!(scanned, vec![(k.clone(), big.clone())]);
        let forged = Op::PutBlob {
            key: key(1, "forged"),
            blob: vec![0; berth_store::blobs::REF_LEN],
            len: 10,
        };
        assert!(node.propose(1, Txn::ops(vec![forged])).await.is_err());
        node.shutdown();
    }
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let node = start(&store, |c| c.blob_gc_interval = std::time::Duration::ZERO);
    wait_leader(&node, 1).await;
    assert_eq!(node.get(1, &k).unwrap(), Some(big), "after restart");
    node.propose(1, Txn::ops(vec![Op::Delete { key: k.clone() }]))
        .await
        .unwrap();
    assert_eq!(node.get(1, &k).unwrap(), None);
    node.shutdown();
}
