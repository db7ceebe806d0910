use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_raft::{
    decode_message, encode_message, Config, NodeId, RaftNode, Role, ShardDesc, SnapshotReport,
    SnapshotSource, Transport, SNAPSHOT_CHUNK_BYTES,
};
use berth_store::keys::{self, Key, Kind};
use berth_store::Store;
use parking_lot::{Mutex, RwLock};
use raft::eraftpb::Message;

/// Test settings: fast ticks, generous timeouts.
pub fn config(node: NodeId) -> Config {
    let mut c = Config::new(node);
    c.tick_interval = Duration::from_millis(10);
    c.propose_timeout = Duration::from_secs(10);
    c
}

/// The shard used by the tests: all of volume 1.
pub fn shard(id: u64, voters: Vec<NodeId>) -> ShardDesc {
    shard_in(id, 1, voters)
}

/// A shard owning all of `volume`.
pub fn shard_in(id: u64, volume: u64, voters: Vec<NodeId>) -> ShardDesc {
    let (start, end) = keys::volume_range(volume);
    ShardDesc {
        id,
        start,
        end,
        voters,
    }
}

pub fn key(object: u64, name: &str) -> Vec<u8> {
    key_in(1, object, name)
}

pub fn key_in(volume: u64, object: u64, name: &str) -> Vec<u8> {
    Key::new(volume, Kind::Inode, object).str(name).build()
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `fut` with an outer bound so a hung test fails instead of hanging.
pub async fn bounded<T>(what: &str, secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Drops everything.
pub struct NullTransport;

impl Transport for NullTransport {
    fn send(&self, _to: NodeId, _msgs: Vec<Message>) {}
}

/// Delivers messages between nodes of one process, through the wire codec, unless a filter
/// drops them. An isolated node neither sends nor receives anything, keepalives included.
/// Decides whether one message (from, to, message) is dropped.
pub type Filter = Box<dyn Fn(NodeId, NodeId, &Message) -> bool + Send + Sync>;

#[derive(Default)]
pub struct Router {
    nodes: RwLock<HashMap<NodeId, RaftNode>>,
    isolated: Mutex<HashSet<NodeId>>,
    filters: Mutex<Vec<Filter>>,
    /// Every batch arrives this much later (on a thread of its own, so
    /// batches may also arrive out of order).
    delay: Mutex<Option<std::time::Duration>>,
    /// Bytes of pairs per snapshot chunk (0: the transport's default).
    snapshot_chunk: std::sync::atomic::AtomicUsize,
}

impl Router {
    pub fn isolate(&self, n: NodeId) {
        self.isolated.lock().insert(n);
    }

    /// Ends isolation and removes every filter.
    pub fn heal(&self) {
        self.isolated.lock().clear();
        self.filters.lock().clear();
    }

    /// Delays every batch by `d` (None: deliver at once).
    pub fn set_delay(&self, d: Option<std::time::Duration>) {
        *self.delay.lock() = d;
    }

    /// Streams snapshots in chunks of about `bytes` of pairs.
    pub fn set_snapshot_chunk(&self, bytes: usize) {
        self.snapshot_chunk
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Removes every filter (isolation stays).
    pub fn clear_filters(&self) {
        self.filters.lock().clear();
    }

    /// Drops every message `f` says to drop, until `heal`.
    pub fn add_filter(&self, f: Filter) {
        self.filters.lock().push(f);
    }
}

pub struct MemTransport {
    from: NodeId,
    router: Arc<Router>,
}

impl Transport for MemTransport {
    fn send(&self, to: NodeId, msgs: Vec<Message>) {
        {
            let iso = self.router.isolated.lock();
            if iso.contains(&self.from) || iso.contains(&to) {
                return;
            }
        }
        let msgs: Vec<Message> = {
            let filters = self.router.filters.lock();
            msgs.iter()
                .filter(|m| !filters.iter().any(|f| f(self.from, to, m)))
                .map(|m| decode_message(&encode_message(m)).expect("codec roundtrip"))
                .collect()
        };
        // As the gRPC server does: every batch, even an empty keepalive, proves the sender
        // alive; then its messages are stepped.
        let Some(n) = self.router.nodes.read().get(&to).cloned() else {
            return;
        };
        let from = self.from;
        match *self.router.delay.lock() {
            None => {
                n.peer_alive(from);
                n.step(msgs);
            }
            Some(d) => {
                std::thread::spawn(move || {
                    std::thread::sleep(d);
                    n.peer_alive(from);
                    n.step(msgs);
                });
            }
        }
    }

    /// As the gRPC transport does: the head through the codec, the pairs chunk by chunk
    /// into the receiver's sink (a staged file), on a thread of its own; a snapshot that
    /// a filter or an isolation drops is reported lost.
    fn send_snapshot(
        &self,
        to: NodeId,
        msg: Message,
        mut source: SnapshotSource,
        report: SnapshotReport,
    ) {
        let dropped = {
            let iso = self.router.isolated.lock();
            iso.contains(&self.from) || iso.contains(&to)
        } || self
            .router
            .filters
            .lock()
            .iter()
            .any(|f| f(self.from, to, &msg));
        let node = self.router.nodes.read().get(&to).cloned();
        let (Some(n), false) = (node, dropped) else {
            report.done(false);
            return;
        };
        let from = self.from;
        let chunk_bytes = match self
            .router
            .snapshot_chunk
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => SNAPSHOT_CHUNK_BYTES,
            n => n,
        };
        std::thread::spawn(move || {
            let head = decode_message(&encode_message(&msg)).expect("codec roundtrip");
            let sent = (|| -> Result<(), String> {
                let mut sink = n.snapshot_sink(head).map_err(|e| e.to_string())?;
                while let Some(chunk) = source.next_chunk(chunk_bytes).map_err(|e| e.to_string())? {
                    sink.write_chunk(&chunk).map_err(|e| e.to_string())?;
                }
                let m = sink.finish().map_err(|e| e.to_string())?;
                n.peer_alive(from);
                n.step_snapshot(m).map_err(|e| e.to_string())
            })();
            report.done(sent.is_ok());
        });
    }
}

pub struct Cluster {
    pub router: Arc<Router>,
    pub nodes: Vec<RaftNode>,
    pub stores: Vec<Arc<Store>>,
    configs: Vec<Config>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    pub fn start(n: u64, tweak: impl Fn(&mut Config)) -> Cluster {
        let router = Arc::new(Router::default());
        let mut c = Cluster {
            router: router.clone(),
            nodes: Vec::new(),
            stores: Vec::new(),
            configs: Vec::new(),
            _dirs: Vec::new(),
        };
        for id in 1..=n {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let mut cfg = config(id);
            tweak(&mut cfg);
            let t = Arc::new(MemTransport {
                from: id,
                router: router.clone(),
            });
            let node = RaftNode::start(store.clone(), cfg.clone(), t).unwrap();
            router.nodes.write().insert(id, node.clone());
            c.configs.push(cfg);
            c.nodes.push(node);
            c.stores.push(store);
            c._dirs.push(dir);
        }
        c
    }

    /// Stops node `id`'s loop and starts it again from its store, as a restarted process
    /// does (what was written is kept; nothing in memory survives).
    pub fn restart(&mut self, id: NodeId) {
        self.restart_with(id, |_| {});
    }

    /// [`Cluster::restart`] with its configuration changed by `tweak` from now on.
    pub fn restart_with(&mut self, id: NodeId, tweak: impl Fn(&mut Config)) {
        let i = (id - 1) as usize;
        tweak(&mut self.configs[i]);
        self.router.nodes.write().remove(&id);
        self.nodes[i].shutdown();
        let t = Arc::new(MemTransport {
            from: id,
            router: self.router.clone(),
        });
        let node = RaftNode::start(self.stores[i].clone(), self.configs[i].clone(), t).unwrap();
        self.router.nodes.write().insert(id, node.clone());
        self.nodes[i] = node;
    }

    pub fn node(&self, id: NodeId) -> &RaftNode {
        &self.nodes[(id - 1) as usize]
    }

    /// Waits until every node not in `excluded` agrees on one leader not in `excluded`.
    pub async fn leader(&self, shard: u64, excluded: &[NodeId]) -> NodeId {
        eventually("an agreed leader", 20, || {
            let live: Vec<&RaftNode> = self
                .nodes
                .iter()
                .filter(|n| !excluded.contains(&n.node_id()))
                .collect();
            let l = live[0].leader(shard)?;
            let agreed = live.iter().all(|n| n.leader(shard) == Some(l));
            let is_leader = self
                .node(l)
                .status()
                .iter()
                .any(|s| s.id == shard && s.role == Role::Leader);
            (agreed && is_leader && !excluded.contains(&l)).then_some(l)
        })
        .await
    }

    pub fn shutdown(self) {
        self.router.nodes.write().clear();
        for n in &self.nodes {
            n.shutdown();
        }
    }
}
