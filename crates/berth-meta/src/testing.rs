//! Test harness: a real single-node kernel (store, multi-raft loop, meta
//! shard) in a temp dir, no network, shared by the integration tests of
//! berth-meta and of the services above it.
//!
//! Compiled only with the `testing` feature, which services enable in their
//! `[dev-dependencies]`; never part of a server build.
//!
//! Paths go through `berth_meta::` rather than `crate::` because berth-meta's
//! own integration test compiles this file into its test binary with
//! `#[path]` (a package cannot enable its own feature for its tests); lib.rs
//! declares `extern crate self as berth_meta` so the same paths resolve here.

use std::sync::Arc;
use std::time::Duration;

use berth_meta::map::{NodeRecord, NodeState, ShardRecord, META_SHARD, ROOT_SHARD};
use berth_meta::{Bootstrap, Meta, Router};
use berth_raft::{NodeId, RaftNode, Transport};
use berth_security::principal::Principal;
use berth_store::Store;

/// Id of the only node.
pub const NODE_ID: NodeId = 1;

/// Raft tick of the test node: short, so elections take milliseconds.
const TICK_INTERVAL_MS: u64 = 10;
/// Poll period and poll count bound of [`wait_leader`] (10 s in all).
const LEADER_POLL_MS: u64 = 5;
const LEADER_POLLS_MAX: u32 = 2000;
/// Lifetime of the administrator's ticket.
const ADMIN_TICKET_TTL_SECS: u64 = 3600;

/// A transport for a cluster of one: there is nobody to send to.
pub struct NullTransport;

impl Transport for NullTransport {
    fn send(&self, _to: NodeId, _msgs: Vec<raft::eraftpb::Message>) {}
}

/// A bootstrapped single-node kernel. Keep it alive for the whole test:
/// dropping `dir` removes the store under the running node.
pub struct SingleNode {
    pub dir: tempfile::TempDir,
    pub raft: RaftNode,
    pub meta: Arc<Meta>,
    /// The built-in `admin` principal, authenticated by a fresh ticket.
    pub admin: Principal,
}

/// Waits until `shard` has a leader on `raft`; panics after about 10 s.
pub async fn wait_leader(raft: &RaftNode, shard: u64) {
    for _ in 0..LEADER_POLLS_MAX {
        if raft.leader(shard).is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(LEADER_POLL_MS)).await;
    }
    panic!("shard {shard} elected no leader");
}

/// Starts a single node in a new temp dir: opens the store, starts the
/// multi-raft loop, creates the meta shard, bootstraps cluster `test`,
/// loads the map, waits for the root shard's leader and signs in as
/// `admin`. Panics on any failure (it is a test fixture).
///
/// Services with volumes (berth-fs and above) still have to run
/// `Namespace::reconcile()` to make the root volume ready.
pub async fn single_node() -> SingleNode {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
    let mut cfg = berth_raft::Config::new(NODE_ID);
    cfg.tick_interval = Duration::from_millis(TICK_INTERVAL_MS);
    let raft = RaftNode::start(store, cfg, Arc::new(NullTransport)).unwrap();
    raft.create_shard(ShardRecord::meta(vec![NODE_ID]).desc())
        .unwrap();
    wait_leader(&raft, META_SHARD).await;
    let meta = Meta::new(Arc::new(Router::new(raft.clone(), NODE_ID)));
    meta.bootstrap(&Bootstrap {
        cluster_name: "test".into(),
        cluster_id: "t".into(),
        node: NodeRecord {
            id: NODE_ID,
            native_addr: "127.0.0.1:1".into(),
            admin_addr: "127.0.0.1:2".into(),
            advertise: vec![],
            started_at: 0,
            kafka_addr: String::new(),
            labels: Default::default(),
            state: NodeState::Up,
            mongo_addr: String::new(),
        },
        ca: berth_security::tls::new_ca("test").unwrap(),
        now_secs: 0,
        now_ns: 0,
    })
    .await
    .unwrap();
    meta.refresh().await.unwrap();
    wait_leader(&raft, ROOT_SHARD).await;
    let (ticket, _) = meta.sign_for("admin", None, ADMIN_TICKET_TTL_SECS).unwrap();
    let admin = meta.authenticate(&ticket).unwrap();
    SingleNode {
        dir,
        raft,
        meta,
        admin,
    }
}
