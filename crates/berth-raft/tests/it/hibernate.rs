//! Hibernation of multi-voter groups: idle groups sleep on every node, wake for work, and
//! node-level liveness fails them over when a node disappears while they sleep.

use std::time::{Duration, Instant};

use berth_raft::cmd::{Op, Txn, TxnOutcome};
use berth_raft::{NodeId, Role};

use crate::harness::{bounded, eventually, key_in, shard_in, Cluster};

fn put(k: &[u8], v: &[u8]) -> Txn {
    Txn::ops(vec![Op::Put {
        key: k.to_vec(),
        value: v.to_vec(),
    }])
}

/// Starts `n_shards` three-voter shards (shard `s` owns volume `s`) and waits for leaders.
async fn cluster_with_shards(n_shards: u64, tweak: impl Fn(&mut berth_raft::Config)) -> Cluster {
    let c = Cluster::start(3, tweak);
    for s in 1..=n_shards {
        for n in &c.nodes {
            n.create_shard(shard_in(s, s, vec![1, 2, 3])).unwrap();
        }
    }
    for s in 1..=n_shards {
        c.leader(s, &[]).await;
    }
    c
}

/// True when every node outside `excluded` reports every shard asleep.
fn all_asleep(c: &Cluster, n_shards: u64, excluded: &[NodeId]) -> bool {
    c.nodes
        .iter()
        .filter(|n| !excluded.contains(&n.node_id()))
        .all(|n| {
            let st = n.status();
            (1..=n_shards).all(|s| st.iter().any(|x| x.id == s && x.hibernating))
        })
}

async fn wait_all_asleep(c: &Cluster, n_shards: u64, what: &str) {
    eventually(what, 10, || all_asleep(c, n_shards, &[]).then_some(())).await;
}

async fn propose_ok(c: &Cluster, node: NodeId, shard: u64, k: &[u8], v: &[u8]) {
    let r = bounded("propose", 20, c.node(node).propose(shard, put(k, v))).await;
    assert!(
        matches!(r, Ok(TxnOutcome::Applied { .. })),
        "shard {shard} on node {node}: {r:?}"
    );
}

async fn replicated(c: &Cluster, shard: u64, k: &[u8], v: &[u8]) {
    for n in &c.nodes {
        eventually("replication", 10, || {
            (n.get(shard, k).ok().flatten().as_deref() == Some(v)).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn idle_groups_sleep_everywhere_and_wake_for_writes_and_reads() {
    const SHARDS: u64 = 4;
    let c = cluster_with_shards(SHARDS, |_| {}).await;
    wait_all_asleep(&c, SHARDS, "every group asleep on every node").await;
    for n in &c.nodes {
        let m = n.metrics();
        assert!(m.hibernations >= SHARDS, "node {}: {m:?}", n.node_id());
        assert!(m.keepalives_sent > 0, "node {}: {m:?}", n.node_id());
    }

    // A write to a sleeping group succeeds and reaches every replica.
    let l2 = c.leader(2, &[]).await;
    let k = key_in(2, 1, "after-sleep");
    propose_ok(&c, l2, 2, &k, b"v").await;
    replicated(&c, 2, &k, b"v").await;
    assert!(c.node(l2).metrics().wakeups >= 1);

    // So does a linearizable read on another one, once asleep again.
    wait_all_asleep(&c, SHARDS, "asleep again after the write").await;
    let l3 = c.leader(3, &[]).await;
    bounded("read_index after sleep", 20, c.node(l3).read_index(3))
        .await
        .unwrap();
    let k3 = key_in(3, 1, "x");
    propose_ok(&c, l3, 3, &k3, b"1").await;
    replicated(&c, 3, &k3, b"1").await;
    wait_all_asleep(&c, SHARDS, "asleep again after the read").await;
    c.shutdown();
}

#[tokio::test]
async fn sleeping_groups_do_no_per_group_work() {
    const SHARDS: u64 = 8;
    // Keepalives (25 per peer per timeout) keep the groups asleep for longer than the peer
    // timeout; the timeout is generous so a loaded machine does not fake a node death.
    let c = cluster_with_shards(SHARDS, |cfg| {
        cfg.peer_timeout = Some(Duration::from_millis(500));
    })
    .await;
    let sent = |c: &Cluster| -> (u64, u64, u64) {
        c.nodes.iter().fold((0, 0, 0), |(m, r, k), n| {
            let x = n.metrics();
            (m + x.messages_sent, r + x.readies, k + x.keepalives_sent)
        })
    };
    // Awake: 8 leaders heartbeat 2 followers every 2 ticks (20 ms), and get answers.
    let (m0, _, _) = sent(&c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (m1, _, _) = sent(&c);
    wait_all_asleep(&c, SHARDS, "every group asleep on every node").await;
    let (m2, r2, k2) = sent(&c);
    let wakeups = |c: &Cluster| -> u64 { c.nodes.iter().map(|n| n.metrics().wakeups).sum() };
    let w2 = wakeups(&c);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (m3, r3, k3) = sent(&c);
    assert_eq!(wakeups(&c), w2, "nothing woke a group");
    assert!(
        all_asleep(&c, SHARDS, &[]),
        "groups stayed asleep: {:?}",
        c.nodes.iter().map(|n| n.status()).collect::<Vec<_>>()
    );
    // Generous bounds: awake, this is on the order of a thousand messages a second.
    assert!(m3 - m2 < 20, "raft messages while asleep: {}", m3 - m2);
    assert!(r3 - r2 < 20, "readies while asleep: {}", r3 - r2);
    assert!(k3 > k2, "keepalives continue while asleep");
    assert!(m1 - m0 > m3 - m2, "awake {} vs asleep {}", m1 - m0, m3 - m2);
    c.shutdown();
}

#[tokio::test]
async fn leader_node_lost_while_asleep_fails_over_every_shard() {
    const SHARDS: u64 = 4;
    let c = cluster_with_shards(SHARDS, |_| {}).await;
    for s in 1..=SHARDS {
        let l = c.leader(s, &[]).await;
        propose_ok(&c, l, s, &key_in(s, 1, "before"), b"b").await;
    }
    wait_all_asleep(&c, SHARDS, "every group asleep on every node").await;

    let old = c.leader(1, &[]).await;
    c.router.isolate(old);
    let started = Instant::now();
    let mut leaders = Vec::new();
    for s in 1..=SHARDS {
        let l = eventually("a leader on the two connected nodes", 10, || {
            let live: Vec<_> = c.nodes.iter().filter(|n| n.node_id() != old).collect();
            let l = live[0].leader(s)?;
            let leads = c
                .node(l)
                .status()
                .iter()
                .any(|x| x.id == s && x.role == Role::Leader);
            (l != old && leads && live.iter().all(|n| n.leader(s) == Some(l))).then_some(l)
        })
        .await;
        leaders.push((s, l));
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    for &(s, l) in &leaders {
        propose_ok(&c, l, s, &key_in(s, 1, "during"), b"d").await;
    }

    // Heal: the old leader's node follows everywhere and holds the same data.
    c.router.heal();
    for &(s, l) in &leaders {
        let want = c.node(l).scan(s, b"", b"", 1000).unwrap();
        assert_eq!(want.len(), 2, "shard {s}");
        eventually("the old leader catches up", 20, || {
            let st = c.node(old).status();
            let follows = st
                .iter()
                .any(|x| x.id == s && x.role == Role::Follower && x.leader == Some(l));
            (follows && c.node(old).scan(s, b"", b"", 1000).ok().as_ref() == Some(&want))
                .then_some(())
        })
        .await;
    }
    wait_all_asleep(&c, SHARDS, "asleep again after the heal").await;
    c.shutdown();
}

#[tokio::test]
async fn follower_node_lost_while_asleep_catches_up_after_heal() {
    const SHARDS: u64 = 2;
    let c = cluster_with_shards(SHARDS, |_| {}).await;
    wait_all_asleep(&c, SHARDS, "every group asleep on every node").await;

    let l1 = c.leader(1, &[]).await;
    let f = (1..=3).find(|&n| n != l1).unwrap();
    c.router.isolate(f);
    for s in 1..=SHARDS {
        // The isolated node may have led shard 2: then it fails over first.
        let l = c.leader(s, &[f]).await;
        for i in 0..5u64 {
            propose_ok(&c, l, s, &key_in(s, i, "w"), &i.to_be_bytes()).await;
        }
    }
    assert!(c.node(f).scan(1, b"", b"", 1000).unwrap().is_empty());

    c.router.heal();
    for s in 1..=SHARDS {
        let l = c.leader(s, &[]).await;
        let want = c.node(l).scan(s, b"", b"", 1000).unwrap();
        assert_eq!(want.len(), 5, "shard {s}");
        eventually("the follower catches up", 20, || {
            (c.node(f).scan(s, b"", b"", 1000).ok().as_ref() == Some(&want)).then_some(())
        })
        .await;
    }
    wait_all_asleep(&c, SHARDS, "asleep again after the heal").await;
    c.shutdown();
}
