//! The router on follower replicas: reads after the leader's read index, commits forwarded
//! to the leader, conflicts still detected; a node without a replica reads from another's.

use std::sync::Arc;

use berth_meta::map::{user_key, ShardRecord, META_SHARD};
use berth_meta::{Code, Commit};

use crate::net::{eventually, start_lonely, start_node, Net};

#[tokio::test]
async fn followers_read_and_commit_through_the_leader() {
    let net = Arc::new(Net::default());
    let mut dirs = Vec::new();
    let mut routers = Vec::new();
    for id in 1..=4 {
        let (router, dir) = start_node(&net, id);
        if id <= 3 {
            router
                .raft()
                .create_shard(ShardRecord::meta(vec![1, 2, 3]).desc())
                .unwrap();
        }
        routers.push(router);
        dirs.push(dir);
    }
    let leader = eventually("a leader", || {
        let l = routers[0].raft().leader(META_SHARD)?;
        (1..3)
            .all(|i| routers[i].raft().leader(META_SHARD) == Some(l))
            .then_some(l)
    })
    .await;
    let follower = &routers[(1..=3).find(|&n| n != leader).unwrap() as usize - 1];
    let key = user_key("forwarded");

    // A follower's transaction: barrier through the leader, reads of its own replica,
    // commit forwarded.
    let mut tx = follower.begin(META_SHARD).await.unwrap();
    assert_eq!(tx.get(&key).await.unwrap(), None);
    tx.put(key.clone(), b"1".to_vec());
    assert!(matches!(tx.commit().await.unwrap(), Commit::Done(_)));
    // Its next barrier sees its own write, forward and backward.
    let tx = follower.begin(META_SHARD).await.unwrap();
    assert_eq!(tx.peek(&key).await.unwrap(), Some(b"1".to_vec()));
    let mut after = key.clone();
    after.push(0);
    assert_eq!(
        tx.peek_range_rev(&key, &after, 5).await.unwrap(),
        vec![(key.clone(), b"1".to_vec())]
    );
    assert_eq!(
        follower
            .scan_rev(META_SHARD, &key, &after, 5)
            .await
            .unwrap()
            .len(),
        1
    );

    // Two transactions that read the same value: the second commit conflicts.
    let mut a = follower.begin(META_SHARD).await.unwrap();
    let mut b = routers[leader as usize - 1]
        .begin(META_SHARD)
        .await
        .unwrap();
    a.get(&key).await.unwrap();
    b.get(&key).await.unwrap();
    a.put(key.clone(), b"a".to_vec());
    b.put(key.clone(), b"b".to_vec());
    assert!(matches!(a.commit().await.unwrap(), Commit::Done(_)));
    assert_eq!(b.commit().await.unwrap(), Commit::Conflict);

    // Node 4 holds no replica: it reads remotely and commits through the leader, even
    // when the map's leader hint is stale (it names a follower).
    let other = (1..=3).find(|&n| n != leader).unwrap();
    let mut shards = vec![ShardRecord::meta(vec![1, 2, 3])];
    shards[0].leader_hint = other;
    routers[3].set_shards(shards.clone());
    let mut tx = routers[3].begin(META_SHARD).await.unwrap();
    assert!(tx.is_remote());
    assert_eq!(tx.get(&key).await.unwrap(), Some(b"a".to_vec()));
    let (start, end) = berth_meta::map::table_range(berth_meta::map::T_USER);
    let users = tx.peek_range(&start, &end, 10).await.unwrap();
    assert_eq!(users.len(), 1, "{users:?}");
    // Backward through the other node's replica: the same pairs.
    assert_eq!(tx.peek_range_rev(&start, &end, 10).await.unwrap(), users);
    assert_eq!(tx.peek_keys(&start, &end, 10).await.unwrap().len(), 1);
    assert_eq!(tx.peek_part(&key, 0, 1).await.unwrap(), Some(b"a".to_vec()));
    tx.put(key.clone(), b"4".to_vec());
    assert!(matches!(tx.commit().await.unwrap(), Commit::Done(_)));
    // Every replica and node 4 itself see the write after their barrier.
    for r in &routers {
        assert_eq!(
            r.get(META_SHARD, &key).await.unwrap(),
            Some(b"4".to_vec()),
            "node {}",
            r.node_id()
        );
    }
    // A remote transaction whose read changed meanwhile conflicts.
    let mut stale = routers[3].begin(META_SHARD).await.unwrap();
    stale.get(&key).await.unwrap();
    let mut tx = follower.begin(META_SHARD).await.unwrap();
    tx.get(&key).await.unwrap();
    tx.put(key.clone(), b"5".to_vec());
    assert!(matches!(tx.commit().await.unwrap(), Commit::Done(_)));
    stale.put(key.clone(), b"stale".to_vec());
    assert_eq!(stale.commit().await.unwrap(), Commit::Conflict);
    // Without any hint it picks a node the map lists as holding a replica.
    shards[0].leader_hint = 0;
    routers[3].set_shards(shards);
    assert_eq!(
        routers[3].get(META_SHARD, &key).await.unwrap(),
        Some(b"5".to_vec())
    );

    // The node the hint names is unreachable: the read moves on to another replica.
    let mut shards = vec![ShardRecord::meta(vec![1, 2, 3])];
    shards[0].leader_hint = other;
    routers[3].set_shards(shards);
    net.isolate(other);
    assert_eq!(
        routers[3].get(META_SHARD, &key).await.unwrap(),
        Some(b"5".to_vec())
    );
    net.heal(other);

    // A node alone (no forwarder) cannot read remotely: it names the leader.
    let (lonely, _dir) = start_lonely(5);
    let mut shards = vec![ShardRecord::meta(vec![1, 2, 3])];
    shards[0].leader_hint = leader;
    lonely.set_shards(shards);
    let e = match lonely.begin(META_SHARD).await {
        Err(e) => e,
        Ok(_) => panic!("a node without a replica or a forwarder served a transaction"),
    };
    assert_eq!(e.code, Code::Again);
    assert_eq!(e.redirect, Some(leader));
    lonely.raft().shutdown();
    net.clear();
    for r in &routers {
        r.raft().shutdown();
    }
}
