//! Membership changes over the in-memory transport: a group grows from one replica to three
//! (learner, snapshot, joint promotion), leadership moves, replicas are removed and
//! destroyed, and the raft-rs traps around conf changes are checked.

use berth_raft::cmd::{Op, Txn, TxnOutcome};
use berth_raft::{MemberChange, Membership, NodeId, RaftError, Role};
use berth_store::Space;
use raft::eraftpb::{EntryType, MessageType};

use crate::harness::{bounded, eventually, key, shard, Cluster};

fn put(k: &[u8], v: &[u8]) -> Txn {
    Txn::ops(vec![Op::Put {
        key: k.to_vec(),
        value: v.to_vec(),
    }])
}

fn membership(c: &Cluster, node: NodeId, shard: u64) -> Option<Membership> {
    c.node(node)
        .status()
        .into_iter()
        .find(|s| s.id == shard)
        .map(|s| s.membership)
}

/// The node every replica in `members` agrees leads `shard`.
async fn leader_of(c: &Cluster, shard: u64, members: &[NodeId]) -> NodeId {
    eventually("an agreed leader", 20, || {
        let l = c.node(members[0]).leader(shard)?;
        let agreed = members.iter().all(|&n| c.node(n).leader(shard) == Some(l));
        let leads = c
            .node(l)
            .status()
            .iter()
            .any(|s| s.id == shard && s.role == Role::Leader);
        (agreed && leads).then_some(l)
    })
    .await
}

async fn write(c: &Cluster, leader: NodeId, k: &[u8], v: &[u8]) {
    let r = bounded("propose", 20, c.node(leader).propose(1, put(k, v))).await;
    assert!(matches!(r, Ok(TxnOutcome::Applied { .. })), "{r:?}");
}

async fn replicated(c: &Cluster, nodes: &[NodeId], k: &[u8], v: &[u8]) {
    for &n in nodes {
        eventually("replication", 20, || {
            (c.node(n).get(1, k).ok()?.as_deref() == Some(v)).then_some(())
        })
        .await;
    }
}

/// Adds `node` to shard 1 led by `leader`: empty replica, learner, caught up, promoted.
async fn add_voter(c: &Cluster, leader: NodeId, node: NodeId) -> Membership {
    c.node(node).create_replica(shard(1, vec![])).unwrap();
    // (A learner may already be there: an earlier attempt whose caller gave up.)
    if !membership(c, leader, 1).is_some_and(|m| m.learners.contains(&node)) {
        let m = bounded(
            "add learner",
            20,
            c.node(leader)
                .change_membership(1, vec![MemberChange::AddLearner(node)]),
        )
        .await
        .unwrap();
        assert!(m.learners.contains(&node) && !m.is_joint(), "{m:?}");
    }
    // The learner catches up (by snapshot: the leader's log no longer starts at 1).
    eventually("learner caught up", 20, || {
        let st = c.node(leader).status().into_iter().find(|s| s.id == 1)?;
        let p = st.progress.iter().find(|p| p.node == node)?;
        (p.matched >= st.commit).then_some(())
    })
    .await;
    let m = bounded(
        "promote",
        20,
        c.node(leader)
            .change_membership(1, vec![MemberChange::AddVoter(node)]),
    )
    .await
    .unwrap();
    assert!(
        m.is_joint(),
        "promotion goes through joint consensus: {m:?}"
    );
    eventually("joint left", 20, || {
        let m = membership(c, leader, 1)?;
        (!m.is_joint() && m.voters.contains(&node)).then_some(m)
    })
    .await
}

#[tokio::test]
async fn a_group_grows_from_one_to_three_moves_its_leader_and_drops_a_replica() {
    let c = Cluster::start(3, |_| {});
    c.node(1).create_shard(shard(1, vec![1])).unwrap();
    let l = leader_of(&c, 1, &[1]).await;
    assert_eq!(l, 1);
    let a = key(1, "a");
    write(&c, 1, &a, b"before").await;

    let m = add_voter(&c, 1, 2).await;
    assert_eq!(m.voters, vec![1, 2]);
    // Node 2 got the state written before it joined (from the snapshot).
    replicated(&c, &[2], &a, b"before").await;
    assert!(c.node(2).metrics().snapshots_applied >= 1);
    let m = add_voter(&c, 1, 3).await;
    assert_eq!(m.voters, vec![1, 2, 3]);
    let b = key(1, "b");
    write(&c, 1, &b, b"three").await;
    replicated(&c, &[1, 2, 3], &b, b"three").await;
    for n in 1..=3 {
        let m = eventually("every replica sees three voters", 20, || {
            membership(&c, n, 1).filter(|m| m.voters.len() == 3 && !m.is_joint())
        })
        .await;
        assert_eq!(m.voters, vec![1, 2, 3]);
    }

    // The leader cannot remove itself; a change of an unknown node is refused too.
    let r = c
        .node(1)
        .change_membership(1, vec![MemberChange::Remove(1)])
        .await;
    assert!(
        matches!(&r, Err(RaftError::ConfChangeRefused { why, .. }) if why.contains("transfer leadership")),
        "{r:?}"
    );
    let r = c
        .node(1)
        .change_membership(1, vec![MemberChange::AddVoter(7)])
        .await;
    assert!(
        matches!(r, Err(RaftError::ConfChangeRefused { .. })),
        "{r:?}"
    );

    // Leadership moves to node 2, which then removes node 1.
    c.node(1).transfer_leader(1, 2).await.unwrap();
    eventually("leadership moved to node 2", 20, || {
        (1..=3)
            .all(|n| c.node(n).leader(1) == Some(2))
            .then_some(())
    })
    .await;
    assert_eq!(leader_of(&c, 1, &[1, 2, 3]).await, 2);
    let m = bounded(
        "remove node 1",
        20,
        c.node(2)
            .change_membership(1, vec![MemberChange::Remove(1)]),
    )
    .await
    .unwrap();
    assert!(
        m.is_joint(),
        "removing a voter goes through joint consensus: {m:?}"
    );
    // Node 1 applies its removal once the joint configuration is left, and destroys its
    // replica: the group, its raft state and its data are gone from node 1.
    // (The replica leaves the shard list before its data is deleted, so that no read
    // answers from a half-deleted replica; the counter moves once the deletion is durable.)
    eventually("node 1's replica destroyed", 20, || {
        let gone = c.node(1).shards().iter().all(|d| d.id != 1);
        (gone && c.node(1).metrics().replicas_destroyed >= 1).then_some(())
    })
    .await;
    assert_eq!(c.node(1).metrics().replicas_destroyed, 1);
    let (start, end) = berth_store::keys::volume_range(1);
    assert!(c.stores[0]
        .scan(Space::Data, &start, &end, 1)
        .unwrap()
        .is_empty());
    let m = eventually("two voters left", 20, || {
        membership(&c, 2, 1).filter(|m| !m.is_joint() && !m.contains(1))
    })
    .await;
    assert_eq!(m.voters, vec![2, 3]);
    let d = key(1, "d");
    write(&c, 2, &d, b"two").await;
    replicated(&c, &[2, 3], &d, b"two").await;
    assert_eq!(
        c.node(1)
            .propose(1, put(&d, b"x"))
            .await
            .unwrap_err()
            .to_string(),
        RaftError::ShardNotFound(1).to_string()
    );
    // The removal leaves a tombstone: the shard's first configuration (which names node 1)
    // cannot bring the replica back; being added again (an empty replica) clears it.
    assert!(c.node(1).was_removed(1).unwrap());
    assert!(c.node(1).create_shard(shard(1, vec![1, 2, 3])).is_err());
    c.node(1).create_replica(shard(1, vec![])).unwrap();
    assert!(!c.node(1).was_removed(1).unwrap());
    c.shutdown();
}

#[tokio::test]
async fn one_change_at_a_time() {
    let c = Cluster::start(3, |_| {});
    c.node(1).create_shard(shard(1, vec![1])).unwrap();
    leader_of(&c, 1, &[1]).await;
    write(&c, 1, &key(1, "a"), b"1").await;
    // Node 2's replica receives nothing: its learner stays behind, the change after it
    // waits. A second change proposed while the first is pending is refused (raft-rs
    // would turn it into an empty entry).
    c.node(2).create_replica(shard(1, vec![])).unwrap();
    c.router.isolate(2);
    let first = c
        .node(1)
        .change_membership(1, vec![MemberChange::AddLearner(2)]);
    let second = c
        .node(1)
        .change_membership(1, vec![MemberChange::AddLearner(3)]);
    let (first, second) = tokio::join!(first, second);
    assert!(first.is_ok(), "{first:?}");
    assert!(
        matches!(&second, Err(RaftError::ConfChangeRefused { why, .. }) if why.contains("pending")),
        "{second:?}"
    );
    // Promoting a learner that never caught up is allowed by raft, but a replica that was
    // not a learner cannot become a voter directly.
    let r = c
        .node(1)
        .change_membership(1, vec![MemberChange::AddVoter(3)])
        .await;
    assert!(
        matches!(&r, Err(RaftError::ConfChangeRefused { why, .. }) if why.contains("not a learner")),
        "{r:?}"
    );
    c.router.heal();
    eventually("learner caught up after heal", 20, || {
        (c.node(2).get(1, &key(1, "a")).ok()?.as_deref() == Some(b"1")).then_some(())
    })
    .await;
    c.shutdown();
}

#[tokio::test]
async fn a_learner_whose_snapshots_are_dropped_catches_up_once_they_pass() {
    let c = Cluster::start(2, |_| {});
    c.node(1).create_shard(shard(1, vec![1])).unwrap();
    leader_of(&c, 1, &[1]).await;
    for i in 0..20 {
        write(&c, 1, &key(1, &format!("k{i}")), b"v").await;
    }
    c.node(2).create_replica(shard(1, vec![])).unwrap();
    c.router.add_filter(Box::new(|_, _, m| {
        m.get_msg_type() == MessageType::MsgSnapshot
    }));
    bounded(
        "add learner",
        20,
        c.node(1)
            .change_membership(1, vec![MemberChange::AddLearner(2)]),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Without a snapshot the learner has nothing: the log it would need starts later.
    assert_eq!(c.node(2).get(1, &key(1, "k0")).unwrap(), None);
    assert!(c.node(1).metrics().snapshots_sent >= 1);
    c.router.heal();
    replicated(&c, &[2], &key(1, "k19"), b"v").await;
    let m = eventually("the learner knows its configuration", 20, || {
        membership(&c, 2, 1).filter(|m| m.learners == vec![2])
    })
    .await;
    assert_eq!(m.voters, vec![1]);
    c.shutdown();
}

#[tokio::test]
async fn a_joint_configuration_left_behind_by_a_dead_leader_is_left_by_the_next() {
    let mut c = Cluster::start(4, |_| {});
    for n in 1..=3 {
        c.node(n).create_shard(shard(1, vec![1, 2, 3])).unwrap();
    }
    let l = leader_of(&c, 1, &[1, 2, 3]).await;
    write(&c, l, &key(1, "a"), b"1").await;
    c.node(4).create_replica(shard(1, vec![])).unwrap();
    bounded(
        "add learner",
        20,
        c.node(l)
            .change_membership(1, vec![MemberChange::AddLearner(4)]),
    )
    .await
    .unwrap();
    replicated(&c, &[4], &key(1, "a"), b"1").await;
    // Nothing carries the entry that leaves the joint configuration: the group stays
    // joint while this leader leads.
    c.router.add_filter(Box::new(|_, _, m| {
        m.get_msg_type() == MessageType::MsgAppend
            && m.entries
                .iter()
                .any(|e| e.get_entry_type() == EntryType::EntryConfChangeV2 && e.data.is_empty())
    }));
    let m = bounded(
        "promote",
        20,
        c.node(l)
            .change_membership(1, vec![MemberChange::AddVoter(4)]),
    )
    .await
    .unwrap();
    assert!(m.is_joint(), "{m:?}");
    let others: Vec<NodeId> = (1..=4).filter(|&n| n != l).collect();
    for &n in &others {
        eventually("followers applied the joint configuration", 20, || {
            membership(&c, n, 1).filter(|m| m.is_joint())
        })
        .await;
    }
    // The leader crashes; a majority of both configurations (old: two of three, new: three
    // of four) elects another, which leaves the joint configuration.
    c.router.isolate(l);
    c.restart(l);
    c.router.clear_filters();
    let l2 = leader_of(&c, 1, &others).await;
    assert_ne!(l2, l);
    let m = eventually("the group left the joint configuration", 30, || {
        membership(&c, l2, 1).filter(|m| !m.is_joint())
    })
    .await;
    assert_eq!(m.voters, vec![1, 2, 3, 4]);
    write(&c, l2, &key(1, "b"), b"2").await;
    c.router.heal();
    replicated(&c, &[1, 2, 3, 4], &key(1, "b"), b"2").await;
    let m = eventually("the restarted node left it too", 20, || {
        membership(&c, l, 1).filter(|m| !m.is_joint())
    })
    .await;
    assert_eq!(m.voters, vec![1, 2, 3, 4]);
    c.shutdown();
}

#[tokio::test]
async fn a_two_voter_group_loses_a_voter_and_is_repaired_by_removing_it() {
    // RF=2 losing a voter: no quorum until the dead one is removed — which needs a quorum.
    // The answer is to never run two voters across a failure: add the third replica first,
    // then remove the dead one (a majority of three is two).
    let c = Cluster::start(3, |_| {});
    for n in 1..=2 {
        c.node(n).create_shard(shard(1, vec![1, 2])).unwrap();
    }
    let l = leader_of(&c, 1, &[1, 2]).await;
    write(&c, l, &key(1, "a"), b"1").await;
    let dead = if l == 1 { 2 } else { 1 };
    c.router.isolate(dead);
    // The leader cannot commit alone.
    let r = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        c.node(l).propose(1, put(&key(1, "b"), b"2")),
    )
    .await;
    assert!(!matches!(r, Ok(Ok(_))), "{r:?}");
    // Adding a learner is a configuration change too: it needs a quorum, so a two-voter
    // group that lost one cannot repair itself. This is why placement never removes the
    // second-to-last voter before a replacement is a voter.
    let r = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        c.node(l)
            .change_membership(1, vec![MemberChange::AddLearner(3)]),
    )
    .await;
    assert!(!matches!(r, Ok(Ok(_))), "{r:?}");
    c.router.heal();
    // The AddLearner whose caller gave up is still in the leader's log: after the heal it
    // commits, or a new leader drops it. Either way, wait until nothing is pending.
    leader_of(&c, 1, &[1, 2]).await;
    let l = eventually("the abandoned change decided", 20, || {
        let l = c.node(1).leader(1)?;
        let st = c.node(l).status().into_iter().find(|s| s.id == 1)?;
        (st.role == Role::Leader && !st.conf_pending && st.applied == st.commit).then_some(l)
    })
    .await;
    let m = add_voter(&c, l, 3).await;
    assert_eq!(m.voters, vec![1, 2, 3]);
    // Now one of three may die and the group still commits.
    let down = if l == 1 { 2 } else { 1 };
    c.router.isolate(down);
    let l = leader_of(&c, 1, &[l, 3]).await;
    write(&c, l, &key(1, "c"), b"3").await;
    let m = bounded(
        "remove the dead voter",
        20,
        c.node(l)
            .change_membership(1, vec![MemberChange::Remove(down)]),
    )
    .await
    .unwrap();
    assert!(m.is_joint());
    // (The status is published after the change's waiter is answered: wait for the
    // configuration after the joint one.)
    let m = eventually("left joint", 20, || {
        membership(&c, l, 1).filter(|m| !m.is_joint() && m.voters.len() == 2)
    })
    .await;
    assert!(!m.contains(down), "{m:?}");
    c.shutdown();
}

/// A request to destroy a replica its leader still replicates to (a placement decision
/// made from a stale report) is refused: a member never loses what it acknowledged. Once
/// no leader has reached it for two election timeouts, the request is carried out.
#[tokio::test]
async fn a_replica_its_leader_replicates_to_is_not_destroyed() {
    let c = Cluster::start(3, |_| {});
    for n in &c.nodes {
        n.create_shard(shard(1, vec![1, 2, 3])).unwrap();
    }
    let l = leader_of(&c, 1, &[1, 2, 3]).await;
    let f = (1..=3).find(|&n| n != l).unwrap();
    let k = key(7, "live");
    write(&c, l, &k, b"v").await;
    replicated(&c, &[f], &k, b"v").await;
    let r = bounded("destroy", 20, c.node(f).destroy_replica(1)).await;
    assert!(
        matches!(r, Err(RaftError::ConfChangeRefused { .. })),
        "{r:?}"
    );
    assert!(c.node(f).shards().iter().any(|d| d.id == 1));
    // Cut off from its leader, the replica is judged by the cluster layer alone.
    c.router.isolate(f);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let r = bounded("destroy", 20, c.node(f).destroy_replica(1)).await;
    assert!(r.is_ok(), "{r:?}");
    assert!(c.node(f).shards().iter().all(|d| d.id != 1));
    c.router.heal();
    c.shutdown();
}
