//! An in-memory network of raft nodes for the multi-node tests of this crate.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use berth_meta::router::{Forwarded, ForwardedRead, Forwarder, ReadRequest};
use berth_meta::{Code, Error};
use berth_raft::cmd::Txn;
use berth_raft::{NodeId, RaftNode, ShardId, Transport};
use parking_lot::{Mutex, RwLock};
use raft::eraftpb::Message;

#[derive(Default)]
pub struct Net {
    nodes: RwLock<HashMap<NodeId, RaftNode>>,
    isolated: Mutex<HashSet<NodeId>>,
}

impl Net {
    pub fn add(&self, n: RaftNode) {
        self.nodes.write().insert(n.node_id(), n);
    }

    pub fn node(&self, id: NodeId) -> Option<RaftNode> {
        self.nodes.read().get(&id).cloned()
    }

    /// Cuts `id` off: nothing reaches it or leaves it.
    pub fn isolate(&self, id: NodeId) {
        self.isolated.lock().insert(id);
    }

    pub fn heal(&self, id: NodeId) {
        self.isolated.lock().remove(&id);
    }

    pub fn is_isolated(&self, id: NodeId) -> bool {
        self.isolated.lock().contains(&id)
    }

    pub fn clear(&self) {
        self.nodes.write().clear();
    }
}

pub struct Mem {
    pub from: NodeId,
    pub net: Arc<Net>,
}

impl Transport for Mem {
    fn send(&self, to: NodeId, msgs: Vec<Message>) {
        if self.net.is_isolated(self.from) || self.net.is_isolated(to) {
            return;
        }
        if let Some(n) = self.net.node(to) {
            n.peer_alive(self.from);
            n.step(msgs);
        }
    }
}

/// Starts node `id` (a fast-ticking Raft loop in a temp dir) on `net`, with
/// a router whose commits on followers go straight to the leader's node.
/// Keep the directory for the life of the test.
pub fn start_node(net: &Arc<Net>, id: NodeId) -> (Arc<berth_meta::Router>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(berth_store::Store::open(dir.path()).unwrap());
    let mut cfg = berth_raft::Config::new(id);
    cfg.tick_interval = Duration::from_millis(10);
    let t = Arc::new(Mem {
        from: id,
        net: net.clone(),
    });
    let raft = RaftNode::start(store, cfg, t).unwrap();
    net.add(raft.clone());
    let router = Arc::new(berth_meta::Router::new(raft, id));
    router.set_forwarder(Arc::new(DirectForwarder(net.clone())));
    (router, dir)
}

/// Starts node `id` on a network of its own, with no forwarder.
pub fn start_lonely(id: NodeId) -> (Arc<berth_meta::Router>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(berth_store::Store::open(dir.path()).unwrap());
    let net = Arc::new(Net::default());
    let t = Arc::new(Mem { from: id, net });
    let raft = RaftNode::start(store, berth_raft::Config::new(id), t).unwrap();
    (Arc::new(berth_meta::Router::new(raft, id)), dir)
}

/// Polls `f` for up to 20 s.
pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..2000 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Proposes on the leader's node directly, as the server's gRPC forwarder does remotely.
pub struct DirectForwarder(pub Arc<Net>);

impl Forwarder for DirectForwarder {
    fn propose(&self, leader: NodeId, shard: ShardId, txn: Txn) -> Forwarded {
        let node = self.0.node(leader).filter(|_| !self.0.is_isolated(leader));
        Box::pin(async move {
            let node = node.ok_or_else(|| Error::new(Code::Again, "leader unreachable"))?;
            // As the server does: a node that does not lead refuses before
            // proposing, naming the leader it knows.
            if node.leader(shard) != Some(leader) {
                return Err(match node.leader(shard) {
                    Some(l) => Error::elsewhere(l, format!("node {leader} does not lead")),
                    None => Error::new(Code::Again, format!("node {leader} does not lead")),
                });
            }
            Ok(node.propose(shard, txn).await?)
        })
    }

    fn read(&self, node: NodeId, req: ReadRequest) -> ForwardedRead {
        let node = self.0.node(node).filter(|_| !self.0.is_isolated(node));
        Box::pin(async move {
            let node = node.ok_or_else(|| Error::new(Code::Again, "node unreachable"))?;
            berth_meta::router::serve_read(&node, req).await
        })
    }
}
