//! The placement driver carrying out its plan on four in-process nodes: the meta shard
//! grows from one voter to three as nodes appear, a fourth node gets a learner (its own copy
//! of the map), and a node that goes silent past the down timeout is replaced.

use std::sync::Arc;
use std::time::Duration;

use berth_meta::map::{NodeRecord, ShardRecord, META_SHARD};
use berth_meta::pd::{AdminCall, Driver, NodeReport, ShardAdmin};
use berth_meta::placement::Settings;
use berth_meta::{Bootstrap, Code, Error, Meta};
use berth_raft::{MemberChange, Membership, NodeId, RaftNode, ShardDesc, ShardId};

use crate::net::{eventually, start_node, Net};

/// Calls the nodes directly, as the server does over the node-to-node listener.
struct Direct(Arc<Net>);

impl Direct {
    fn node(&self, id: NodeId) -> Result<RaftNode, Error> {
        if self.0.is_isolated(id) {
            return Err(Error::new(Code::Again, format!("node {id} unreachable")));
        }
        self.0
            .node(id)
            .ok_or_else(|| Error::new(Code::Again, format!("no node {id}")))
    }
}

impl ShardAdmin for Direct {
    fn create_replica(&self, node: NodeId, desc: ShardDesc) -> AdminCall<()> {
        let n = self.node(node);
        Box::pin(async move { Ok(n?.create_replica(desc)?) })
    }

    fn change_membership(
        &self,
        leader: NodeId,
        shard: ShardId,
        changes: Vec<MemberChange>,
    ) -> AdminCall<Membership> {
        let n = self.node(leader);
        Box::pin(async move { Ok(n?.change_membership(shard, changes).await?) })
    }

    fn transfer_leader(&self, leader: NodeId, shard: ShardId, to: NodeId) -> AdminCall<()> {
        let n = self.node(leader);
        Box::pin(async move { Ok(n?.transfer_leader(shard, to).await?) })
    }

    fn destroy_replica(&self, node: NodeId, shard: ShardId) -> AdminCall<()> {
        let n = self.node(node);
        Box::pin(async move { Ok(n?.destroy_replica(shard).await?) })
    }
}

fn node_record(id: NodeId) -> NodeRecord {
    NodeRecord {
        id,
        native_addr: format!("127.0.0.1:{id}"),
        admin_addr: String::new(),
        advertise: vec![],
        started_at: 0,
        kafka_addr: String::new(),
        labels: Default::default(),
        state: berth_meta::map::NodeState::Up,
        mongo_addr: String::new(),
    }
}

fn meta_membership(net: &Net, node: NodeId) -> Option<Membership> {
    net.node(node)?
        .status()
        .into_iter()
        .find(|s| s.id == META_SHARD)
        .map(|s| s.membership)
}

/// Four nodes, each with its map cache and its driver (only the meta leader's acts).
struct World {
    net: Arc<Net>,
    metas: Vec<Arc<Meta>>,
    drivers: Vec<Arc<Driver>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl World {
    /// One heartbeat round: every reachable node refreshes its map and reports to every
    /// driver; every driver ticks.
    async fn round(&self) {
        for (i, m) in self.metas.iter().enumerate() {
            if !self.net.is_isolated(i as NodeId + 1) {
                let _ = tokio::time::timeout(Duration::from_millis(200), m.refresh()).await;
            }
        }
        for d in &self.drivers {
            let now = d.now_ms();
            for id in 1..=4 {
                if let Some(n) = self.net.node(id).filter(|_| !self.net.is_isolated(id)) {
                    d.report(NodeReport::of(&n), now);
                }
            }
        }
        for (i, d) in self.drivers.iter().enumerate() {
            if !self.net.is_isolated(i as NodeId + 1) {
                d.tick(d.now_ms());
            }
        }
    }

    /// Runs rounds until `f` holds (20 s at most).
    async fn until<T>(&self, what: &str, mut f: impl FnMut(&World) -> Option<T>) -> T {
        for _ in 0..1000 {
            self.round().await;
            if let Some(v) = f(self) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let st: Vec<_> = self.drivers.iter().map(|d| d.status()).collect();
        let ms: Vec<_> = (1..=4).map(|n| meta_membership(&self.net, n)).collect();
        panic!("timed out waiting for {what}: drivers {st:#?} memberships {ms:#?}");
    }

    /// The meta leader's map cache.
    fn leader_meta(&self) -> Option<&Arc<Meta>> {
        let l = self
            .net
            .node(1)?
            .leader(META_SHARD)
            .or_else(|| (2..=4).find_map(|i| self.net.node(i)?.leader(META_SHARD)))?;
        self.metas.get(l as usize - 1)
    }
}

async fn register(w: &World, id: NodeId) {
    w.until("node registered", |_| Some(())).await;
    for _ in 0..500 {
        if let Some(m) = w.leader_meta() {
            if m.register_node(&node_record(id)).await.is_ok() {
                return;
            }
        }
        w.round().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("node {id} never registered");
}

#[tokio::test]
async fn the_driver_grows_the_meta_shard_and_replaces_a_silent_node() {
    let net = Arc::new(Net::default());
    let mut dirs = Vec::new();
    let mut metas = Vec::new();
    for id in 1..=4 {
        let (router, dir) = start_node(&net, id);
        metas.push(Meta::new(router));
        dirs.push(dir);
    }
    let raft1 = net.node(1).unwrap();
    raft1
        .create_shard(ShardRecord::meta(vec![1]).desc())
        .unwrap();
    eventually("a meta leader", || raft1.leader(META_SHARD)).await;
    metas[0]
        .bootstrap(&Bootstrap {
            cluster_name: "pd".into(),
            cluster_id: "pd".into(),
            node: node_record(1),
            ca: berth_security::tls::new_ca("pd").unwrap(),
            now_secs: 0,
            now_ns: 0,
        })
        .await
        .unwrap();
    metas[0].refresh().await.unwrap();
    for id in 2..=3 {
        metas[0].register_node(&node_record(id)).await.unwrap();
    }
    let settings = Settings {
        suspect_after_ms: 400,
        down_after_ms: 1_500,
        ..Settings::default()
    };
    let drivers = metas
        .iter()
        .map(|m| Driver::new(m.clone(), Arc::new(Direct(net.clone())), settings.clone()))
        .collect();
    let w = World {
        net: net.clone(),
        metas,
        drivers,
        _dirs: dirs,
    };

    // Nodes 2 and 3 become meta voters: learner, snapshot, promotion.
    let m = w
        .until("three meta voters", |w| {
            meta_membership(&w.net, 1).filter(|m| m.voters == vec![1, 2, 3] && !m.is_joint())
        })
        .await;
    assert!(m.learners.is_empty(), "{m:?}");
    let replicas = w
        .until("the map records them", |w| {
            w.leader_meta()?
                .map()
                .shards
                .iter()
                .find(|s| s.id == META_SHARD && s.replicas.len() == 3)
                .map(|s| s.replicas.clone())
        })
        .await;
    assert_eq!(replicas, vec![1, 2, 3]);
    // Node 2 reads the map from its own replica.
    w.until("node 2 holds the map", |w| {
        (w.metas[1].map().nodes.len() == 3).then_some(())
    })
    .await;

    // A fourth node gets a learner: every node holds the map, three vote.
    register(&w, 4).await;
    let m = w
        .until("a meta learner on node 4", |w| {
            let l = w.net.node(1)?.leader(META_SHARD)?;
            meta_membership(&w.net, l).filter(|m| m.learners == vec![4] && !m.is_joint())
        })
        .await;
    assert_eq!(m.voters, vec![1, 2, 3]);
    assert!(w.drivers.iter().any(|d| d.status().active));

    // A silent node past the down timeout is replaced: node 4 is promoted in its place
    // and the silent node removed. (Node 3, unless it leads the meta shard: then node 2.)
    let leader = w.net.node(1).unwrap().leader(META_SHARD).unwrap();
    let silent = if leader == 3 { 2 } else { 3 };
    net.isolate(silent);
    let m = w
        .until("the silent node replaced", |w| {
            let l = w.net.node(leader)?.leader(META_SHARD)?;
            meta_membership(&w.net, l)
                .filter(|m| !m.is_joint() && !m.contains(silent) && m.voters.len() == 3)
        })
        .await;
    assert!(m.voters.contains(&4), "{m:?}");
    let st = w
        .until("nothing left to do", |w| {
            let d = w.drivers.iter().find(|d| d.status().active)?;
            let st = d.status();
            (st.in_flight.is_empty() && st.under_replicated.is_empty() && st.joint.is_empty())
                .then_some(st)
        })
        .await;
    assert!(st
        .nodes
        .iter()
        .any(|n| n.node == silent && n.heartbeat_ago_ms.is_some_and(|ms| ms >= 1_500)));

    // Back: the silent node still believes it holds a replica; the driver has it destroyed.
    assert!(net.node(silent).unwrap().has_replica(META_SHARD));
    net.heal(silent);
    w.until("the stale replica destroyed", |w| {
        (!w.net.node(silent)?.has_replica(META_SHARD)).then_some(())
    })
    .await;
    net.clear();
}
