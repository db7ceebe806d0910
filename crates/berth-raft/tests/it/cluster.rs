use berth_raft::cmd::{Op, Txn, TxnOutcome};
use berth_raft::{RaftError, Role};

use crate::harness::{bounded, eventually, key, shard, Cluster};

fn put(k: &[u8], v: &[u8]) -> Txn {
    Txn::ops(vec![Op::Put {
        key: k.to_vec(),
        value: v.to_vec(),
    }])
}

#[tokio::test]
async fn elect_replicate_fail_over_and_heal() {
    let c = Cluster::start(3, |_| {});
    for n in &c.nodes {
        n.create_shard(shard(1, vec![1, 2, 3])).unwrap();
    }
    let l1 = c.leader(1, &[]).await;
    let a = key(1, "a");
    let r = bounded("propose", 20, c.node(l1).propose(1, put(&a, b"1"))).await;
    assert!(matches!(r, Ok(TxnOutcome::Applied { .. })), "{r:?}");
    for n in &c.nodes {
        eventually("replication", 10, || {
            (n.get(1, &a).ok().flatten() == Some(b"1".to_vec())).then_some(())
        })
        .await;
    }

    // A follower refuses proposals and reads, and names the leader.
    let f = (1..=3).find(|&n| n != l1).unwrap();
    let r = c.node(f).propose(1, put(&a, b"2")).await;
    assert!(
        matches!(r, Err(RaftError::NotLeader { shard: 1, leader: Some(l) }) if l == l1),
        "{r:?}"
    );
    assert!(r.unwrap_err().is_retryable());
    // A follower serves linearizable reads: its barrier goes through the leader.
    let before = key(1, "before-read");
    let r = bounded("propose", 20, c.node(l1).propose(1, put(&before, b"w"))).await;
    assert!(matches!(r, Ok(TxnOutcome::Applied { .. })), "{r:?}");
    bounded("follower read_index", 20, c.node(f).read_index(1))
        .await
        .unwrap();
    assert_eq!(c.node(f).get(1, &before).unwrap(), Some(b"w".to_vec()));

    // Isolate the leader: its pending proposal fails (it steps down), the others elect a
    // new leader.
    c.router.isolate(l1);
    let lost = key(1, "lost");
    let r = bounded(
        "pending proposal on isolated leader",
        20,
        c.node(l1).propose(1, put(&lost, b"x")),
    )
    .await;
    assert!(
        matches!(
            r,
            Err(RaftError::NotLeader { .. }) | Err(RaftError::Timeout)
        ),
        "{r:?}"
    );
    let l2 = c.leader(1, &[l1]).await;
    assert_ne!(l1, l2);
    let b = key(1, "b");
    let r = bounded(
        "propose on new leader",
        20,
        c.node(l2).propose(1, put(&b, b"2")),
    )
    .await;
    assert!(matches!(r, Ok(TxnOutcome::Applied { .. })), "{r:?}");
    bounded("read_index on new leader", 20, c.node(l2).read_index(1))
        .await
        .unwrap();
    assert_eq!(c.node(l2).get(1, &b).unwrap(), Some(b"2".to_vec()));

    // Heal: the old leader follows and catches up; the failed write is nowhere.
    c.router.heal();
    for n in &c.nodes {
        eventually("catch up after heal", 20, || {
            (n.get(1, &b).ok().flatten() == Some(b"2".to_vec())).then_some(())
        })
        .await;
    }
    for n in &c.nodes {
        assert_eq!(n.get(1, &lost).unwrap(), None, "node {}", n.node_id());
    }
    let st = c.node(l1).status();
    assert!(st[0].role != Role::Leader || c.node(l1).leader(1) == Some(l1));
    assert!(c.node(l1).metrics().proposals_failed >= 1);
    c.shutdown();
}

#[tokio::test]
async fn lagging_follower_catches_up_by_snapshot() {
    let c = Cluster::start(3, |cfg| cfg.log_compact_threshold = 20);
    for n in &c.nodes {
        n.create_shard(shard(1, vec![1, 2, 3])).unwrap();
    }
    let l = c.leader(1, &[]).await;
    let f = (1..=3).find(|&n| n != l).unwrap();
    c.router.isolate(f);
    for i in 0..60u64 {
        let r = bounded(
            "propose",
            20,
            c.node(l).propose(1, put(&key(i, "k"), &i.to_be_bytes())),
        )
        .await;
        assert!(matches!(r, Ok(TxnOutcome::Applied { .. })), "{i}: {r:?}");
    }
    let st = c.node(l).status().into_iter().find(|s| s.id == 1).unwrap();
    assert!(st.log_first > 20, "leader compacted its log: {st:?}");
    assert!(c.node(f).get(1, &key(0, "k")).unwrap().is_none());

    c.router.heal();
    let want = c.node(l).scan(1, b"", b"", 1000).unwrap();
    assert_eq!(want.len(), 60);
    eventually("follower data equals leader data", 20, || {
        (c.node(f).scan(1, b"", b"", 1000).ok().as_ref() == Some(&want)).then_some(())
    })
    .await;
    // Streamed as the gRPC transport does: staged on the follower, installed in slices.
    let m = c.node(f).metrics();
    assert!(
        m.snapshots_applied >= 1 && m.snapshot_bytes_installed > 0,
        "{m:?}"
    );
    assert!(c.node(l).metrics().snapshots_sent >= 1);
    let staged = c.stores[(f - 1) as usize].dir().join("raft-snapshots");
    let left = std::fs::read_dir(&staged).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "staged snapshots are deleted once installed");

    // The follower keeps replicating normally after the snapshot.
    let r = bounded(
        "propose",
        20,
        c.node(l).propose(1, put(&key(99, "k"), b"after")),
    )
    .await;
    assert!(matches!(r, Ok(TxnOutcome::Applied { .. })), "{r:?}");
    eventually("replication after snapshot", 20, || {
        (c.node(f).get(1, &key(99, "k")).ok().flatten() == Some(b"after".to_vec())).then_some(())
    })
    .await;
    c.shutdown();
}

/// A follower restarted while it installs a snapshot's data installs it again from the
/// staged file: no read is answered from the half-written range meanwhile, and the data
/// ends equal to the leader's.
#[tokio::test]
async fn a_restart_in_the_middle_of_an_install_installs_again() {
    const PAIRS: u64 = 2000;
    const VALUE: usize = 100;
    let mut c = Cluster::start(3, |cfg| cfg.log_compact_threshold = 20);
    for n in &c.nodes {
        n.create_shard(shard(1, vec![1, 2, 3])).unwrap();
    }
    let l = c.leader(1, &[]).await;
    let f = (1..=3).find(|&n| n != l).unwrap();
    c.router.isolate(f);
    for b in 0..PAIRS / 100 {
        let ops = (b * 100..(b + 1) * 100)
            .map(|i| Op::Put {
                key: key(i, "k"),
                value: vec![i as u8; VALUE],
            })
            .collect();
        let r = bounded("propose", 20, c.node(l).propose(1, Txn::ops(ops))).await;
        assert!(matches!(r, Ok(TxnOutcome::Applied { .. })), "{b}: {r:?}");
    }
    let want = c.node(l).scan(1, b"", b"", 10_000).unwrap();
    assert_eq!(want.len() as u64, PAIRS);
    // The follower's installs are held: it stages the snapshot, clears its range, marks
    // the install, and stops there; its range answers no read meanwhile.
    c.restart_with(f, |cfg| cfg.snapshot_install_slice_bytes = 0);
    // Streamed in many chunks (about 16 KiB of pairs each).
    c.router.set_snapshot_chunk(16 * 1024);
    c.router.heal();
    eventually("the follower installing", 20, || {
        let st = c.node(f).status().into_iter().find(|s| s.id == 1)?;
        st.installing.then_some(())
    })
    .await;
    let r = c.node(f).get(1, &key(0, "k"));
    assert!(r.is_err(), "a read while installing: {r:?}");
    let r = bounded("a read barrier", 20, c.node(f).read_index(1)).await;
    assert!(r.is_err(), "a read barrier while installing: {r:?}");
    // Restarted (cut off from the leader: no new snapshot), it installs again from the
    // staged file.
    c.router.isolate(f);
    c.restart_with(f, |cfg| cfg.snapshot_install_slice_bytes = 4096);
    let full = PAIRS * (VALUE as u64 + key(0, "k").len() as u64);
    eventually("the install done again", 20, || {
        let st = c.node(f).status().into_iter().find(|s| s.id == 1)?;
        let bytes = c.node(f).metrics().snapshot_bytes_installed;
        (!st.installing && bytes >= full).then_some(())
    })
    .await;
    assert_eq!(c.node(f).scan(1, b"", b"", 10_000).unwrap(), want);
    let staged = c.stores[(f - 1) as usize].dir().join("raft-snapshots");
    let left = std::fs::read_dir(&staged).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "the staged snapshot is deleted once installed");
    c.router.heal();
    c.shutdown();
}

/// Bulk entries make the leader trim its log early, but never past what a
/// peer still lacks: a lagging follower catches up from the log, not by a
/// snapshot; once everyone holds the entries they go.
#[tokio::test]
async fn bulk_log_is_trimmed_only_to_what_every_peer_holds() {
    let c = Cluster::start(3, |_| {});
    for n in &c.nodes {
        n.create_shard(shard(1, vec![1, 2, 3])).unwrap();
    }
    let l = c.leader(1, &[]).await;
    let f = (1..=3).find(|&n| n != l).unwrap();
    let bulk = vec![7u8; 512 << 10];
    let propose_bulk = |from: u64| {
        let c = &c;
        let bulk = &bulk;
        async move {
            for i in from..from + 24 {
                let r = bounded("propose", 20, c.node(l).propose(1, put(&key(i, "b"), bulk))).await;
                assert!(matches!(r, Ok(TxnOutcome::Applied { .. })), "{i}: {r:?}");
            }
        }
    };
    c.router.isolate(f);
    let before = c.node(l).status().into_iter().find(|s| s.id == 1).unwrap();
    propose_bulk(0).await;
    let st = c.node(l).status().into_iter().find(|s| s.id == 1).unwrap();
    assert!(
        st.log_first <= before.log_last + 1,
        "trimmed past the isolated follower: {before:?} -> {st:?}"
    );

    c.router.heal();
    let want = c.node(l).scan(1, b"", b"", 1000).unwrap();
    assert_eq!(want.len(), 24);
    eventually("follower data equals leader data", 20, || {
        (c.node(f).scan(1, b"", b"", 1000).ok().as_ref() == Some(&want)).then_some(())
    })
    .await;
    assert_eq!(c.node(f).metrics().snapshots_applied, 0);
    assert_eq!(c.node(l).metrics().snapshots_sent, 0);

    // Everyone holds the entries now: the next bulk trims the log.
    let mark = c.node(l).status().into_iter().find(|s| s.id == 1).unwrap();
    propose_bulk(100).await;
    let st = c.node(l).status().into_iter().find(|s| s.id == 1).unwrap();
    assert!(
        st.log_first > mark.log_last,
        "log not trimmed: {mark:?} -> {st:?}"
    );
    c.shutdown();
}

/// Peers never see a node's blob references: a follower that lags behind
/// the leader's in-memory log catches up from the stored log (references
/// turned back into bytes), and one that lags behind the log by a snapshot
/// (values resolved); both end with the same bytes, which they keep in their
/// own blobs.
#[tokio::test]
async fn followers_catch_up_on_bulk_data_from_the_stored_log_and_snapshots() {
    let c = Cluster::start(3, |cfg| cfg.blob_gc_interval = std::time::Duration::ZERO);
    for n in &c.nodes {
        n.create_shard(shard(1, vec![1, 2, 3])).unwrap();
    }
    let l = c.leader(1, &[]).await;
    let f = (1..=3).find(|&n| n != l).unwrap();
    let splice = |i: u64, byte: u8| {
        Txn::ops(vec![Op::VSplice {
            base: key(i, "chunk"),
            offset: 0,
            data: vec![byte; 1 << 20],
            counter: None,
            state: key(999, "versions"),
        }])
    };
    c.router.isolate(f);
    // 24 MiB: more than the leader keeps in memory, less than forces a snapshot.
    for i in 0..24u64 {
        let r = bounded("propose", 20, c.node(l).propose(1, splice(i, i as u8))).await;
        assert!(matches!(r, Ok(TxnOutcome::Applied { .. })), "{i}: {r:?}");
    }
    c.router.heal();
    let chunk = |i: u64| berth_store::keys::versioned(&key(i, "chunk"), 0);
    for i in [0u64, 11, 23] {
        eventually("follower has the bulk data", 30, || {
            (c.node(f).get(1, &chunk(i)).ok().flatten() == Some(vec![i as u8; 1 << 20]))
                .then_some(())
        })
        .await;
    }
    assert_eq!(c.node(f).metrics().snapshots_applied, 0);
    c.shutdown();
}

#[tokio::test]
async fn replication_and_failover_with_delayed_messages() {
    // 30 ms one way (election timeout 100 ms with 10 ms ticks): slow, not partitioned.
    let c = Cluster::start(3, |_| {});
    c.router
        .set_delay(Some(std::time::Duration::from_millis(30)));
    for n in &c.nodes {
        n.create_shard(shard(1, vec![1, 2, 3])).unwrap();
    }
    // Slow links make leadership flap now and then: commit as clients do,
    // retrying at the current leader.
    async fn commit(c: &Cluster, excluded: &[u64], k: &[u8], v: &[u8]) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let l = c.leader(1, excluded).await;
            match bounded("propose", 20, c.node(l).propose(1, put(k, v))).await {
                Ok(TxnOutcome::Applied { .. }) => return,
                Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {}
                other => panic!("{other:?}"),
            }
        }
    }
    for i in 0..20 {
        commit(&c, &[], &key(1, &format!("d{i}")), b"v").await;
    }
    // Every replica ends with every acknowledged write.
    for n in &c.nodes {
        eventually("replication", 20, || {
            (n.get(1, &key(1, "d19")).ok().flatten() == Some(b"v".to_vec())).then_some(())
        })
        .await;
    }
    // The leader goes away: the delayed others still elect one and commit.
    let l1 = c.leader(1, &[]).await;
    c.router.isolate(l1);
    commit(&c, &[l1], &key(1, "after"), b"w").await;
    c.shutdown();
}
