//! Node-to-node Raft traffic over the native listener: one long-lived
//! client stream per peer node, each item a batch of messages for many
//! shards (the multi-raft loop already batches per peer per iteration).
//!
//! A peer proves which node it is with its node certificate, presented as
//! TLS client certificate: the native listener verifies it against the
//! cluster CA (client certificates are optional there, so ordinary clients
//! with tickets are unaffected) and [`RaftService`] reads the node id from
//! its common name, refusing a stream without one. Only with `--insecure`
//! (no TLS, no certificates) does a node ticket stand in for it. The node
//! id of every message comes from that proof, never from the batch.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::raft::eraftpb::{Message, MessageType};
use berth_api::v1::raft_transport_client::RaftTransportClient;
use berth_api::v1::raft_transport_server::RaftTransport;
use berth_api::v1::{
    Empty, ProposeReply, ProposeRequest, RaftBatch, ShardReadReply, ShardReadRequest, SnapshotChunk,
};
use berth_meta::router::{
    serve_read, Forwarded, ForwardedRead, Forwarder, ReadOp, ReadReply, ReadRequest, ReadValue,
};
use berth_meta::{Code, Error, Meta};
use berth_raft::cmd::{Txn, TxnOutcome};
use berth_raft::{
    decode_message, encode_message, NodeId, RaftNode, ShardId, SnapshotReport, SnapshotSource,
    Transport,
};
use berth_security::principal::Principal;
use berth_security::principal::PrincipalKind;
use berth_security::tls::NodeMaterial;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Request, Response, Status, Streaming};

use super::errors::to_status;

/// Batches queued per peer before further ones are dropped (Raft resends).
const PEER_QUEUE_MAX: usize = 1024;
/// Largest encoded batch accepted from a peer.
pub const RAFT_BATCH_BYTES_MAX: usize = 64 << 20;
/// Bytes of snapshot data per chunk.
const SNAPSHOT_CHUNK_BYTES: usize = berth_raft::SNAPSHOT_CHUNK_BYTES;
/// Largest snapshot accepted from a peer (staged on disk as it arrives).
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 40;
/// Default rate of snapshot data this node sends, all peers together.
pub const SNAPSHOT_RATE_DEFAULT: u64 = 32 << 20;

/// Verifies the ticket a peer presents on its Raft stream.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, ticket: &str) -> Result<Principal, Error>;
}

impl Authenticator for Meta {
    fn authenticate(&self, ticket: &str) -> Result<Principal, Error> {
        Meta::authenticate(self, ticket)
    }
}

/// How a Raft peer proves which node it is.
#[derive(Clone)]
pub enum PeerAuth {
    /// Its node certificate as TLS client certificate, verified against the
    /// cluster CA by the listener; the node id is its common name
    /// `node-<id>`. With the cluster map at hand, a node the map no longer
    /// has (removed) is refused although its certificate is still valid.
    Certificate(Option<Arc<Meta>>),
    /// A node ticket in the call's metadata: `--insecure` only, where there
    /// is no TLS and so no certificate.
    Ticket(Arc<dyn Authenticator>),
}

/// Server side of node-to-node Raft traffic: accepts streams from
/// authenticated cluster nodes and steps their messages into the loop.
pub struct RaftService {
    pub raft: RaftNode,
    pub auth: PeerAuth,
}

/// The node sending `req`, as its credential proves it; anyone else is refused, with an
/// audit line naming `what` was attempted.
pub fn authenticate_node<T>(
    auth: &PeerAuth,
    req: &Request<T>,
    what: &str,
) -> Result<NodeId, Status> {
    node_of(auth, req).map_err(|e| {
        let from = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(target: "audit", what, from, reason = %e.message, "refused node-to-node call");
        to_status(&e)
    })
}

fn node_of<T>(auth: &PeerAuth, req: &Request<T>) -> Result<NodeId, Error> {
    let denied = |m: &str| Error::new(Code::Perm, m);
    match auth {
        PeerAuth::Certificate(members) => {
            let certs = req.peer_certs();
            let leaf = certs.as_ref().and_then(|c| c.first()).ok_or_else(|| {
                denied("node-to-node calls need the sending node's certificate as TLS client certificate")
            })?;
            let id = berth_security::pki::node_id_of_cert(leaf.as_ref()).ok_or_else(|| {
                denied("the client certificate is not a node certificate (CN node-<id>)")
            })?;
            // Before this node has a map (it joined and waits for its first
            // snapshot) every certificate of the cluster CA is admitted.
            if let Some(map) = members.as_ref().map(|m| m.map()) {
                if map.cluster.is_some() && !map.nodes.iter().any(|n| n.id == id) {
                    return Err(denied(&format!(
                        "node {id} is not a member of this cluster (removed)"
                    )));
                }
            }
            Ok(id)
        }
        PeerAuth::Ticket(auth) => {
            let p = super::bearer(req).and_then(|t| auth.authenticate(t))?;
            if p.kind != PrincipalKind::Node {
                return Err(denied("only cluster nodes may send Raft traffic"));
            }
            p.name
                .strip_prefix("node:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| denied("the node ticket names no node id"))
        }
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn propose(
        &self,
        req: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        authenticate_node(&self.auth, &req, "RaftTransport/Propose")?;
        let req = req.into_inner();
        let txn = berth_raft::cmd::decode(&req.txn)
            .map_err(|e| Status::invalid_argument(format!("undecodable transaction: {e}")))?;
        // Only a leader proposes here: a follower would forward again.
        if self.raft.leader(req.shard) != Some(self.raft.node_id()) {
            let leader = self.raft.leader(req.shard);
            let e = Error::from(berth_raft::RaftError::NotLeader {
                shard: req.shard,
                leader,
            });
            let mut reply = error_reply(&e);
            reply.redirect = leader.unwrap_or(0);
            return Ok(Response::new(reply));
        }
        let reply = match self.raft.propose(req.shard, txn).await {
            Ok(berth_raft::cmd::TxnOutcome::Applied { index }) => ProposeReply {
                applied: true,
                index,
                ..ProposeReply::default()
            },
            Ok(berth_raft::cmd::TxnOutcome::ConditionFailed { condition }) => ProposeReply {
                failed_condition: condition as u64,
                ..ProposeReply::default()
            },
            Err(e) => error_reply(&Error::from(e)),
        };
        Ok(Response::new(reply))
    }

    async fn read(
        &self,
        req: Request<ShardReadRequest>,
    ) -> Result<Response<ShardReadReply>, Status> {
        authenticate_node(&self.auth, &req, "RaftTransport/Read")?;
        let req =
            read_request_from(req.into_inner()).map_err(|e| Status::invalid_argument(e.message))?;
        Ok(Response::new(match serve_read(&self.raft, req).await {
            Ok(r) => read_reply_to(r),
            Err(e) => ShardReadReply {
                error_code: e.code.symbol().to_string(),
                error_message: e.message,
                redirect: e.redirect.unwrap_or(0),
                ..ShardReadReply::default()
            },
        }))
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Empty>, Status> {
        let peer = authenticate_node(&self.auth, &req, "RaftTransport/Snapshot")?;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty snapshot stream"))?;
        let msg = decode_message(&first.head)
            .map_err(|e| Status::invalid_argument(format!("snapshot head: {e}")))?;
        if msg.from != peer || msg.get_msg_type() != MessageType::MsgSnapshot {
            tracing::warn!(
                peer,
                claimed = msg.from,
                "dropping a snapshot stream that is not the peer's snapshot"
            );
            return Err(Status::invalid_argument(
                "the head is not a snapshot message of the sending node",
            ));
        }
        // The pairs go to a staged file, chunk by chunk (each checked), never whole in
        // memory; the message is stepped once the file is durable.
        let sink = self
            .raft
            .snapshot_sink(msg)
            .map_err(|e| Status::invalid_argument(format!("snapshot head: {e}")))?;
        let mut sink = Some(sink);
        let mut pending = first.data;
        loop {
            if !pending.is_empty() {
                let mut s = sink.take().expect("kept between chunks");
                let chunk = std::mem::take(&mut pending);
                let (s, r) = tokio::task::spawn_blocking(move || {
                    let r = s.write_chunk(&chunk);
                    (s, r)
                })
                .await
                .map_err(|e| Status::internal(format!("snapshot writer: {e}")))?;
                r.map_err(|e| Status::invalid_argument(format!("snapshot data: {e}")))?;
                if s.bytes() > SNAPSHOT_BYTES_MAX {
                    return Err(Status::resource_exhausted(format!(
                        "a snapshot above the {SNAPSHOT_BYTES_MAX} bytes accepted"
                    )));
                }
                sink = Some(s);
            }
            match stream.message().await? {
                Some(chunk) => {
                    // Every chunk proves the peer alive, as its batches do.
                    self.raft.peer_alive(peer);
                    pending = chunk.data;
                }
                None => break,
            }
        }
        let s = sink.take().expect("kept between chunks");
        let msg = tokio::task::spawn_blocking(move || s.finish())
            .await
            .map_err(|e| Status::internal(format!("snapshot writer: {e}")))?
            .map_err(|e| Status::invalid_argument(format!("snapshot: {e}")))?;
        self.raft.peer_alive(peer);
        // The sender's raft learns from this answer whether the snapshot
        // arrived: it must not be dropped silently.
        self.raft
            .step_snapshot(msg)
            .map_err(|e| Status::unavailable(format!("raft loop: {e}")))?;
        Ok(Response::new(Empty {}))
    }

    async fn stream(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<Empty>, Status> {
        // The peer's node id comes from its credential, never from what the batch claims.
        let peer = authenticate_node(&self.auth, &req, "RaftTransport/Stream")?;
        let mut stream = req.into_inner();
        while let Some(batch) = stream.message().await? {
            // Every batch, empty keepalives included, proves the peer alive.
            self.raft.peer_alive(peer);
            let mut msgs = Vec::with_capacity(batch.messages.len());
            for m in &batch.messages {
                match decode_message(m) {
                    Ok(m) if m.from == peer => msgs.push(m),
                    Ok(m) => {
                        tracing::warn!(
                            peer,
                            claimed = m.from,
                            "dropping a raft message whose sender is not the authenticated peer"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(peer, error = %e, "dropping undecodable raft message");
                    }
                }
            }
            self.raft.step(msgs);
        }
        Ok(Response::new(Empty {}))
    }
}

fn read_request_to(r: ReadRequest) -> ShardReadRequest {
    let mut m = ShardReadRequest {
        shard: r.shard,
        barrier: r.barrier,
        min_applied: r.min_applied,
        ..ShardReadRequest::default()
    };
    match r.op {
        ReadOp::Barrier => m.op = 0,
        ReadOp::Get { key } => (m.op, m.key) = (1, key),
        ReadOp::GetPart { key, from, len } => (m.op, m.key, m.from, m.len) = (2, key, from, len),
        ReadOp::Scan { start, end, limit } => {
            (m.op, m.key, m.end, m.limit) = (3, start, end, limit as u64)
        }
        ReadOp::ScanKeys { start, end, limit } => {
            (m.op, m.key, m.end, m.limit) = (4, start, end, limit as u64)
        }
        ReadOp::ScanRev { start, end, limit } => {
            (m.op, m.key, m.end, m.limit) = (5, start, end, limit as u64)
        }
    }
    m
}

fn read_request_from(m: ShardReadRequest) -> Result<ReadRequest, Error> {
    let limit = usize::try_from(m.limit).unwrap_or(usize::MAX);
    let op = match m.op {
        0 => ReadOp::Barrier,
        1 => ReadOp::Get { key: m.key },
        2 => ReadOp::GetPart {
            key: m.key,
            from: m.from,
            len: m.len,
        },
        3 => ReadOp::Scan {
            start: m.key,
            end: m.end,
            limit,
        },
        4 => ReadOp::ScanKeys {
            start: m.key,
            end: m.end,
            limit,
        },
        5 => ReadOp::ScanRev {
            start: m.key,
            end: m.end,
            limit,
        },
        n => return Err(Error::invalid(format!("unknown read operation {n}"))),
    };
    Ok(ReadRequest {
        shard: m.shard,
        op,
        barrier: m.barrier,
        min_applied: m.min_applied,
    })
}

fn read_reply_to(r: ReadReply) -> ShardReadReply {
    let mut m = ShardReadReply {
        applied: r.applied,
        ..ShardReadReply::default()
    };
    match r.value {
        ReadValue::None => {}
        ReadValue::Value(v) => {
            m.found = v.is_some();
            m.value = v.unwrap_or_default();
        }
        ReadValue::Pairs(pairs) => (m.keys, m.values) = pairs.into_iter().unzip(),
        ReadValue::Keys(keys) => m.keys = keys,
    }
    m
}

/// The reply to a read of operation `op`, or the error it carries.
fn read_reply_from(op: &ReadOp, m: ShardReadReply) -> Result<ReadReply, Error> {
    if !m.error_code.is_empty() {
        let code = Code::from_symbol(&m.error_code).unwrap_or(Code::Io);
        let mut e = Error::new(code, m.error_message);
        e.redirect = (m.redirect != 0).then_some(m.redirect);
        return Err(e);
    }
    let value = match op {
        ReadOp::Barrier => ReadValue::None,
        ReadOp::Get { .. } | ReadOp::GetPart { .. } => ReadValue::Value(m.found.then_some(m.value)),
        ReadOp::Scan { .. } | ReadOp::ScanRev { .. } => {
            if m.keys.len() != m.values.len() {
                return Err(Error::new(
                    Code::Io,
                    "a remote scan answered with unpaired keys and values",
                ));
            }
            ReadValue::Pairs(m.keys.into_iter().zip(m.values).collect())
        }
        ReadOp::ScanKeys { .. } => ReadValue::Keys(m.keys),
    };
    Ok(ReadReply {
        applied: m.applied,
        value,
    })
}

fn error_reply(e: &Error) -> ProposeReply {
    ProposeReply {
        error_code: e.code.symbol().to_string(),
        error_message: e.message.clone(),
        ..ProposeReply::default()
    }
}

/// Where peer nodes listen, and (`--insecure` only) the ticket that proves
/// this node to them.
pub trait PeerDirectory: Send + Sync + 'static {
    fn addr_of(&self, node: NodeId) -> Option<String>;
    fn node_ticket(&self) -> Option<String>;
}

/// The peer directory of a running node: the cluster map, and before this
/// node has one (it joined and holds no replica of the meta shard yet) the
/// nodes the join answered with.
pub struct MetaDirectory {
    node_id: NodeId,
    meta: OnceLock<Arc<Meta>>,
    known: RwLock<Vec<(NodeId, String)>>,
}

impl MetaDirectory {
    pub fn new(node_id: NodeId) -> Arc<MetaDirectory> {
        Arc::new(MetaDirectory {
            node_id,
            meta: OnceLock::new(),
            known: RwLock::new(Vec::new()),
        })
    }

    /// Connects the directory to the cluster map. Until then only the
    /// nodes given to [`MetaDirectory::remember`] are known; messages to
    /// others are dropped (Raft resends).
    pub fn attach(&self, meta: Arc<Meta>) {
        let _ = self.meta.set(meta);
    }

    /// Every node this directory can reach: the map's, else the join's.
    pub fn known_nodes(&self) -> Vec<NodeId> {
        let from_map: Vec<NodeId> = self
            .meta
            .get()
            .map(|m| m.map().nodes.iter().map(|n| n.id).collect())
            .unwrap_or_default();
        if !from_map.is_empty() {
            return from_map;
        }
        self.known.read().iter().map(|(id, _)| *id).collect()
    }

    /// Nodes (id, native address) to reach while the cluster map does not
    /// name them: what a join answered with.
    pub fn remember(&self, nodes: Vec<(NodeId, String)>) {
        *self.known.write() = nodes;
    }
}

impl PeerDirectory for MetaDirectory {
    fn addr_of(&self, node: NodeId) -> Option<String> {
        let from_map = self.meta.get().and_then(|meta| {
            meta.map()
                .nodes
                .iter()
                .find(|n| n.id == node)
                .map(|n| n.native_addr.clone())
        });
        from_map.or_else(|| {
            self.known
                .read()
                .iter()
                .find(|(id, _)| *id == node)
                .map(|(_, addr)| addr.clone())
        })
    }

    fn node_ticket(&self) -> Option<String> {
        match self.meta.get()?.sign_node_ticket(self.node_id) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot sign a node ticket");
                None
            }
        }
    }
}

/// How the transport reaches peers: addresses (and, `--insecure`, tickets)
/// from the directory; TLS under the cluster CA with this node's
/// certificate as client certificate.
struct PeerContext {
    node_id: NodeId,
    directory: Arc<dyn PeerDirectory>,
    tls: Option<NodeMaterial>,
}

impl PeerContext {
    async fn connect(&self, addr: &str) -> Result<Channel, String> {
        let uri = match self.tls {
            Some(_) => format!("https://{addr}"),
            None => format!("http://{addr}"),
        };
        let mut ep = Channel::from_shared(uri).map_err(|e| e.to_string())?;
        if let Some(tls) = &self.tls {
            let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            ep = ep
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                        .domain_name(host),
                )
                .map_err(|e| e.to_string())?;
        }
        ep.connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| e.to_string())
    }
}

/// The gRPC implementation of the multi-raft [`Transport`], and of the router's
/// [`Forwarder`] (proposals made on a follower, sent to the leader).
pub struct GrpcTransport {
    ctx: Arc<PeerContext>,
    rt: tokio::runtime::Handle,
    peers: Mutex<HashMap<NodeId, mpsc::Sender<Vec<Message>>>>,
    /// Connections for unary node-to-node calls (forwarded proposals, node
    /// administration), by node, with the address they go to.
    forward: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
    /// Peers a snapshot is being streamed to (one at a time each).
    /// Snapshots on their way: (to, shard).
    snapshots: Arc<Mutex<std::collections::HashSet<(NodeId, ShardId)>>>,
    /// Paces the snapshot data this node sends.
    snapshot_rate: Arc<Pacer>,
}

/// Paces bytes to a rate shared by every stream that uses it.
pub struct Pacer {
    bytes_per_sec: std::sync::atomic::AtomicU64,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(bytes_per_sec: u64) -> Pacer {
        Pacer {
            bytes_per_sec: std::sync::atomic::AtomicU64::new(bytes_per_sec.max(1)),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits until `n` more bytes may go.
    async fn take(&self, n: usize) {
        let rate = self
            .bytes_per_sec
            .load(std::sync::atomic::Ordering::Relaxed);
        let cost = Duration::from_secs_f64(n as f64 / rate as f64);
        let start = {
            let mut next = self.next.lock().await;
            let start = (*next).max(tokio::time::Instant::now());
            *next = start + cost;
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// How long a forwarded proposal may take (the leader's own propose timeout is 10 s).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);

impl GrpcTransport {
    /// `tls`: this node's certificate, key and the cluster CA; `None` =
    /// plaintext with node tickets (insecure development mode).
    pub fn new(
        node_id: NodeId,
        directory: Arc<dyn PeerDirectory>,
        tls: Option<NodeMaterial>,
        rt: tokio::runtime::Handle,
    ) -> Arc<GrpcTransport> {
        Arc::new(GrpcTransport {
            ctx: Arc::new(PeerContext {
                node_id,
                directory,
                tls,
            }),
            rt,
            peers: Mutex::new(HashMap::new()),
            forward: Arc::new(Mutex::new(HashMap::new())),
            snapshots: Arc::new(Mutex::new(std::collections::HashSet::new())),
            snapshot_rate: Arc::new(Pacer::new(SNAPSHOT_RATE_DEFAULT)),
        })
    }
}

/// A connection to another node for unary node-to-node calls, and the ticket proving
/// this node to it. Connections are cached per node; [`NodeChannel::broken`] drops one.
pub struct NodeChannel {
    pub channel: Channel,
    /// `--insecure` only: with TLS the client certificate is the credential.
    ticket: Option<String>,
    node: NodeId,
    cache: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
}

impl NodeChannel {
    /// `msg` as a request from this node, bounded by `timeout`.
    pub fn request<T>(&self, msg: T, timeout: Duration) -> Result<Request<T>, Error> {
        let mut req = Request::new(msg);
        req.set_timeout(timeout);
        if let Some(ticket) = &self.ticket {
            let bearer = format!("Bearer {ticket}")
                .parse()
                .map_err(|_| Error::new(Code::Io, "the node ticket is not printable"))?;
            req.metadata_mut().insert(berth_api::AUTH_METADATA, bearer);
        }
        Ok(req)
    }

    /// The call failed at the transport: connect again next time.
    pub fn broken(&self) {
        self.cache.lock().remove(&self.node);
    }
}

impl GrpcTransport {
    /// A connection to `node` (cached), or why there is none (`Code::Again`).
    pub async fn channel_to(&self, node: NodeId) -> Result<NodeChannel, Error> {
        channel_to(&self.ctx, &self.forward, node).await
    }
}

async fn channel_to(
    ctx: &PeerContext,
    cache: &Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
    node: NodeId,
) -> Result<NodeChannel, Error> {
    let unreachable =
        |why: String| Error::new(Code::Again, format!("cannot reach node {node}: {why}"));
    let Some(addr) = ctx.directory.addr_of(node) else {
        return Err(unreachable("its address is unknown".into()));
    };
    let ticket = match ctx.tls {
        Some(_) => None,
        None => Some(
            ctx.directory
                .node_ticket()
                .ok_or_else(|| unreachable("no node ticket to present".into()))?,
        ),
    };
    let cached = cache
        .lock()
        .get(&node)
        .filter(|(a, _)| *a == addr)
        .map(|(_, c)| c.clone());
    let channel = match cached {
        Some(c) => c,
        None => {
            let c = ctx.connect(&addr).await.map_err(unreachable)?;
            cache.lock().insert(node, (addr, c.clone()));
            c
        }
    };
    Ok(NodeChannel {
        channel,
        ticket,
        node,
        cache: cache.clone(),
    })
}

impl Forwarder for GrpcTransport {
    fn read(&self, node: NodeId, req: ReadRequest) -> ForwardedRead {
        self.forward_read(node, req)
    }

    fn propose(&self, leader: NodeId, shard: ShardId, txn: Txn) -> Forwarded {
        let ctx = self.ctx.clone();
        let cache = self.forward.clone();
        let encoded = berth_raft::cmd::encode(&txn);
        Box::pin(async move {
            let txn = encoded.map_err(|e| Error::new(Code::Io, format!("encode: {e}")))?;
            let conn = channel_to(&ctx, &cache, leader).await?;
            let req = conn.request(ProposeRequest { shard, txn }, FORWARD_TIMEOUT)?;
            let mut client = RaftTransportClient::new(conn.channel.clone())
                .max_encoding_message_size(RAFT_BATCH_BYTES_MAX);
            let reply = match client.propose(req).await {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    conn.broken();
                    return Err(Error::new(
                        Code::Again,
                        format!(
                            "shard {shard}: cannot reach its leader, node {leader}: {}",
                            status.message()
                        ),
                    ));
                }
            };
            if !reply.error_code.is_empty() {
                let code = Code::from_symbol(&reply.error_code).unwrap_or(Code::Io);
                let mut e = Error::new(code, reply.error_message);
                e.redirect = (reply.redirect != 0).then_some(reply.redirect);
                return Err(e);
            }
            Ok(if reply.applied {
                TxnOutcome::Applied { index: reply.index }
            } else {
                TxnOutcome::ConditionFailed {
                    condition: usize::try_from(reply.failed_condition).unwrap_or(usize::MAX),
                }
            })
        })
    }
}

impl GrpcTransport {
    fn forward_read(&self, node: NodeId, req: ReadRequest) -> ForwardedRead {
        let ctx = self.ctx.clone();
        let cache = self.forward.clone();
        Box::pin(async move {
            let (shard, op) = (req.shard, req.op.clone());
            let conn = channel_to(&ctx, &cache, node).await?;
            let msg = conn.request(read_request_to(req), FORWARD_TIMEOUT)?;
            let mut client = RaftTransportClient::new(conn.channel.clone())
                .max_decoding_message_size(RAFT_BATCH_BYTES_MAX);
            match client.read(msg).await {
                Ok(r) => read_reply_from(&op, r.into_inner()),
                Err(status) => {
                    conn.broken();
                    Err(Error::new(
                        Code::Again,
                        format!(
                            "shard {shard}: cannot read from node {node}: {}",
                            status.message()
                        ),
                    ))
                }
            }
        })
    }

    /// Sets the rate of snapshot data this node sends (bytes per second, all
    /// peers together; `--snapshot-rate`).
    pub fn set_snapshot_rate(&self, bytes_per_sec: u64) {
        self.snapshot_rate
            .bytes_per_sec
            .store(bytes_per_sec.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Streams one snapshot message to `to` in chunks, paced, and reports
    /// whether it arrived. A second snapshot of the same shard to the same
    /// node while one is on its way is dropped: the first one's report
    /// answers for it.
    fn stream_snapshot_to(
        &self,
        to: NodeId,
        msg: Message,
        source: SnapshotSource,
        report: SnapshotReport,
    ) {
        let shard = berth_raft::message_shard(&msg).unwrap_or(0);
        if !self.snapshots.lock().insert((to, shard)) {
            tracing::debug!(
                to,
                shard,
                "a snapshot of this shard is already on its way to this peer; dropping another"
            );
            report.superseded();
            return;
        }
        let (ctx, pacer, busy) = (
            self.ctx.clone(),
            self.snapshot_rate.clone(),
            self.snapshots.clone(),
        );
        self.rt.spawn(async move {
            let started = std::time::Instant::now();
            let r = stream_snapshot(&ctx, &pacer, to, &msg, source).await;
            busy.lock().remove(&(to, shard));
            match &r {
                Ok(bytes) => tracing::info!(
                    to,
                    shard,
                    bytes,
                    secs = started.elapsed().as_secs_f64(),
                    "raft snapshot sent"
                ),
                Err(e) => tracing::warn!(to, shard, error = %e, "sending a raft snapshot failed; raft will send another"),
            }
            report.done(r.is_ok());
        });
    }
}

/// Streams a snapshot: its head, then its pairs read from `source` chunk by chunk (off
/// the executor's threads), paced. Returns the bytes of pairs sent.
async fn stream_snapshot(
    ctx: &PeerContext,
    pacer: &Pacer,
    to: NodeId,
    msg: &Message,
    source: SnapshotSource,
) -> Result<u64, String> {
    let addr = ctx
        .directory
        .addr_of(to)
        .ok_or_else(|| "its address is unknown".to_string())?;
    let channel = ctx.connect(&addr).await?;
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
    let mut req = Request::new(ReceiverStream::new(rx));
    if ctx.tls.is_none() {
        let ticket = ctx
            .directory
            .node_ticket()
            .ok_or_else(|| "no node ticket".to_string())?;
        let v = format!("Bearer {ticket}")
            .parse()
            .map_err(|_| "the node ticket is not printable".to_string())?;
        req.metadata_mut().insert(berth_api::AUTH_METADATA, v);
    }
    let mut client =
        RaftTransportClient::new(channel).max_encoding_message_size(RAFT_BATCH_BYTES_MAX);
    let call = tokio::spawn(async move { client.snapshot(req).await });
    let mut source = Some(source);
    let mut head = Some(encode_message(msg));
    let mut bytes = 0;
    let mut read_error = None;
    loop {
        let mut src = source.take().expect("kept between chunks");
        let read = tokio::task::spawn_blocking(move || {
            let r = src.next_chunk(SNAPSHOT_CHUNK_BYTES);
            (src, r)
        })
        .await;
        let piece = match read {
            Ok((src, Ok(piece))) => {
                bytes = src.bytes();
                source = Some(src);
                piece
            }
            Ok((_, Err(e))) => {
                read_error = Some(format!("reading the snapshot: {e}"));
                break;
            }
            Err(e) => {
                read_error = Some(format!("snapshot reader: {e}"));
                break;
            }
        };
        let Some(data) = piece else {
            break;
        };
        pacer.take(data.len()).await;
        let chunk = SnapshotChunk {
            head: head.take().unwrap_or_default(),
            total: 0,
            data,
        };
        if tx.send(chunk).await.is_err() {
            break; // the call ended: its result says why
        }
    }
    if let Some(e) = read_error {
        // Ending the stream without the end chunk makes the receiver refuse it.
        drop(tx);
        let _ = call.await;
        return Err(e);
    }
    drop(tx);
    match call.await {
        Ok(Ok(_)) => Ok(bytes),
        Ok(Err(status)) => Err(status.message().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

impl Transport for GrpcTransport {
    fn send_snapshot(
        &self,
        to: NodeId,
        msg: Message,
        source: SnapshotSource,
        report: SnapshotReport,
    ) {
        self.stream_snapshot_to(to, msg, source, report);
    }

    fn send(&self, to: NodeId, msgs: Vec<Message>) {
        let mut peers = self.peers.lock();
        let tx = peers.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            self.rt.spawn(peer_loop(self.ctx.clone(), to, rx));
            tx
        });
        if tx.try_send(msgs).is_err() {
            tracing::debug!(to, "raft queue to peer full or closed; dropping a batch");
        }
    }
}

async fn peer_loop(ctx: Arc<PeerContext>, to: NodeId, mut rx: mpsc::Receiver<Vec<Message>>) {
    let mut attempt: u32 = 0;
    loop {
        if attempt > 0 {
            let ms = 100u64 << attempt.min(5);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        attempt += 1;
        // With TLS the certificate is the credential; a ticket only without.
        let ticket = match ctx.tls {
            Some(_) => None,
            None => ctx.directory.node_ticket(),
        };
        let (Some(addr), true) = (
            ctx.directory.addr_of(to),
            ctx.tls.is_some() || ticket.is_some(),
        ) else {
            // Drain what is queued so the channel does not fill with stale
            // traffic; Raft resends what matters.
            while rx.try_recv().is_ok() {}
            continue;
        };
        let channel = match ctx.connect(&addr).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(to, addr, error = %e, "cannot reach peer");
                while rx.try_recv().is_ok() {}
                continue;
            }
        };
        let (conn_tx, conn_rx) = mpsc::channel::<RaftBatch>(64);
        let mut req = Request::new(ReceiverStream::new(conn_rx));
        if let Some(ticket) = ticket {
            match format!("Bearer {ticket}").parse() {
                Ok(v) => {
                    req.metadata_mut().insert(berth_api::AUTH_METADATA, v);
                }
                Err(_) => continue,
            }
        }
        let mut client =
            RaftTransportClient::new(channel).max_encoding_message_size(RAFT_BATCH_BYTES_MAX);
        let call = tokio::spawn(async move { client.stream(req).await });
        loop {
            let Some(msgs) = rx.recv().await else {
                return; // transport dropped
            };
            let batch = RaftBatch {
                from_node: ctx.node_id,
                messages: msgs.iter().map(encode_message).collect(),
            };
            if conn_tx.send(batch).await.is_err() || call.is_finished() {
                break;
            }
        }
        attempt = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_operations_cross_the_wire_unchanged() {
        let scan = |start: &[u8], end: &[u8]| (start.to_vec(), end.to_vec(), 7usize);
        let (start, end, limit) = scan(b"a", b"z");
        for op in [
            ReadOp::Barrier,
            ReadOp::Get { key: b"k".to_vec() },
            ReadOp::GetPart {
                key: b"k".to_vec(),
                from: 3,
                len: 9,
            },
            ReadOp::Scan {
                start: start.clone(),
                end: end.clone(),
                limit,
            },
            ReadOp::ScanKeys {
                start: start.clone(),
                end: end.clone(),
                limit,
            },
            ReadOp::ScanRev { start, end, limit },
        ] {
            let req = ReadRequest {
                shard: 4,
                op: op.clone(),
                barrier: true,
                min_applied: 11,
            };
            assert_eq!(
                read_request_from(read_request_to(req.clone())).unwrap(),
                req
            );
        }
        // A backward scan's pairs come back in the order they were read.
        let pairs = vec![
            (b"b".to_vec(), b"2".to_vec()),
            (b"a".to_vec(), b"1".to_vec()),
        ];
        let reply = ReadReply {
            applied: 5,
            value: ReadValue::Pairs(pairs.clone()),
        };
        let op = ReadOp::ScanRev {
            start: Vec::new(),
            end: Vec::new(),
            limit: 2,
        };
        let back = read_reply_from(&op, read_reply_to(reply)).unwrap();
        assert_eq!(back.value, ReadValue::Pairs(pairs));
    }
}
