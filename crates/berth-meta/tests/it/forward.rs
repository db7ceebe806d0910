//! The router on follower replicas: reads after the leader's read index, commits forwarded
//! to the leader, conflicts still detected; a node without a replica names the leader.

use std::sync::Arc;

use berth_meta::map::{user_key, ShardRecord, META_SHARD};
use berth_meta::{Code, Commit};

use crate::net::{eventually, start_node, Net};

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
    assert_eq!(tx.get(&key).unwrap(), None);
    tx.put(key.clone(), b"1".to_vec());
    assert!(matches!(tx.commit().await.unwrap(), Commit::Done(_)));
    // Its next barrier sees its own write.
    let tx = follower.begin(META_SHARD).await.unwrap();
    assert_eq!(tx.peek(&key).unwrap(), Some(b"1".to_vec()));

    // Two transactions that read the same value: the second commit conflicts.
    let mut a = follower.begin(META_SHARD).await.unwrap();
    let mut b = routers[leader as usize - 1]
        .begin(META_SHARD)
        .await
        .unwrap();
    a.get(&key).unwrap();
    b.get(&key).unwrap();
    a.put(key.clone(), b"a".to_vec());
    b.put(key.clone(), b"b".to_vec());
    assert!(matches!(a.commit().await.unwrap(), Commit::Done(_)));
    assert_eq!(b.commit().await.unwrap(), Commit::Conflict);

    // Node 4 holds no replica: it names the leader it knows of and serves nothing.
    let mut shards = vec![ShardRecord::meta(vec![1, 2, 3])];
    shards[0].leader_hint = leader;
    routers[3].set_shards(shards);
    let e = match routers[3].begin(META_SHARD).await {
        Err(e) => e,
        Ok(_) => panic!("a node without a replica served a transaction"),
    };
    assert_eq!(e.code, Code::Again);
    // A refusal before anything was done: clients may send it to the leader.
    assert_eq!(e.redirect, Some(leader));
    assert!(
        e.message.contains(&format!("node {leader}")),
        "{}",
        e.message
    );
    net.clear();
    for r in &routers {
        r.raft().shutdown();
    }
}
