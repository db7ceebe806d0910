//! Node administration between cluster nodes: the heartbeats the placement driver runs on
//! (`Report`, to the meta leader) and the calls it makes to carry out its steps (create an
//! empty replica, change a group's membership on its leader, move leadership, destroy a
//! removed replica). Only cluster nodes may call them. The client side is the
//! [`ShardAdmin`] of the driver, over the transport's cached node connections.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_api::v1::member_change_msg::Kind;
use berth_api::v1::node_admin_client::NodeAdminClient;
use berth_api::v1::node_admin_server::NodeAdmin;
use berth_api::v1::{
    ChangeMembershipRequest, CreateReplicaRequest, DestroyReplicaRequest, Empty, MemberChangeMsg,
    MembershipMsg, NodeDetail, NodeReportMsg, PeerProgressMsg, PlacementStatus, PlacementStep,
    ReplicaStatusMsg, TransferLeaderRequest,
};
use berth_meta::map::META_SHARD;
use berth_meta::pd::{AdminCall, Driver, InFlight, NodeReport, ReplicaReport, ShardAdmin};
use berth_meta::placement::Step;
use berth_meta::{Code, Error, Meta};
use berth_raft::{MemberChange, Membership, NodeId, PeerProgress, RaftNode, ShardDesc, ShardId};
use tonic::{Request, Response, Status};

use super::errors::to_status;
use super::raft::{GrpcTransport, MetaDirectory, PeerAuth};

/// How long one administration call may take (a membership change waits for its commit).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a heartbeat may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The server side.
pub struct NodeAdminService {
    pub raft: RaftNode,
    pub meta: Arc<Meta>,
    pub driver: Arc<Driver>,
    pub auth: PeerAuth,
    pub down_timeout: Duration,
    pub placement: Arc<Placement>,
}

impl NodeAdminService {
    fn node<T>(&self, req: &Request<T>, what: &str) -> Result<NodeId, Status> {
        super::raft::authenticate_node(&self.auth, req, what)
    }
}

#[tonic::async_trait]
impl NodeAdmin for NodeAdminService {
    async fn report(&self, req: Request<NodeReportMsg>) -> Result<Response<Empty>, Status> {
        let from = self.node(&req, "report")?;
        let msg = req.into_inner();
        if msg.node != from {
            return Err(to_status(&Error::new(
                Code::Perm,
                format!("node {from} cannot report for node {}", msg.node),
            )));
        }
        // A node whose map is stale may report to a node that no longer leads
        // the meta shard: it passes the report on (once) to the leader.
        let me = self.raft.node_id();
        match self.meta.router().leader_of(META_SHARD) {
            Some(l) if l != me && self.raft.leader(META_SHARD).is_some() => {
                let t = self.placement.transport.clone();
                tokio::spawn(async move {
                    let r = report_from_msg(msg);
                    if let Err(e) = send_report(&t, l, &r).await {
                        tracing::debug!(to = l, error = %e, "passing a heartbeat on failed");
                    }
                });
            }
            _ => self
                .driver
                .report(report_from_msg(msg), self.driver.now_ms()),
        }
        Ok(Response::new(Empty {}))
    }

    async fn placement(&self, req: Request<Empty>) -> Result<Response<PlacementStatus>, Status> {
        self.node(&req, "placement")?;
        Ok(Response::new(placement_msg(
            &self.driver,
            self.raft.node_id(),
            self.down_timeout,
        )))
    }

    async fn create_replica(
        &self,
        req: Request<CreateReplicaRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.node(&req, "create replica")?;
        let r = req.into_inner();
        // A shard the map knows must be asked for with the map's range.
        if let Some(s) = self.meta.map().shards.iter().find(|s| s.id == r.shard) {
            if s.start != r.start || s.end != r.end {
                return Err(to_status(&Error::new(
                    Code::Invalid,
                    format!("shard {}: the range asked for is not the map's", r.shard),
                )));
            }
        }
        let desc = ShardDesc {
            id: r.shard,
            start: r.start,
            end: r.end,
            voters: Vec::new(),
        };
        self.raft
            .create_replica(desc)
            .map_err(|e| to_status(&e.into()))?;
        tracing::info!(
            shard = r.shard,
            "empty replica created for the placement driver"
        );
        Ok(Response::new(Empty {}))
    }

    async fn change_membership(
        &self,
        req: Request<ChangeMembershipRequest>,
    ) -> Result<Response<MembershipMsg>, Status> {
        self.node(&req, "change membership")?;
        let r = req.into_inner();
        let changes = r
            .changes
            .iter()
            .map(change_from_msg)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| to_status(&e))?;
        let m = self
            .raft
            .change_membership(r.shard, changes)
            .await
            .map_err(|e| to_status(&e.into()))?;
        Ok(Response::new(membership_msg(&m)))
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.node(&req, "transfer leader")?;
        let r = req.into_inner();
        self.raft
            .transfer_leader(r.shard, r.to)
            .await
            .map_err(|e| to_status(&e.into()))?;
        Ok(Response::new(Empty {}))
    }

    async fn destroy_replica(
        &self,
        req: Request<DestroyReplicaRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.node(&req, "destroy replica")?;
        let r = req.into_inner();
        // Only a replica this node's own map no longer places here.
        if let Some(s) = self.meta.map().shards.iter().find(|s| s.id == r.shard) {
            if s.replicas.contains(&self.raft.node_id()) {
                return Err(to_status(&Error::new(
                    Code::Again,
                    format!(
                        "shard {}: this node's map still lists its replica here",
                        r.shard
                    ),
                )));
            }
        }
        self.raft
            .destroy_replica(r.shard)
            .await
            .map_err(|e| to_status(&e.into()))?;
        Ok(Response::new(Empty {}))
    }
}

fn change_from_msg(c: &MemberChangeMsg) -> Result<MemberChange, Error> {
    let kind = Kind::try_from(c.kind)
        .map_err(|_| Error::new(Code::Invalid, format!("unknown change kind {}", c.kind)))?;
    Ok(match kind {
        Kind::AddLearner => MemberChange::AddLearner(c.node),
        Kind::AddVoter => MemberChange::AddVoter(c.node),
        Kind::Demote => MemberChange::Demote(c.node),
        Kind::Remove => MemberChange::Remove(c.node),
    })
}

fn change_msg(c: &MemberChange) -> MemberChangeMsg {
    let (kind, node) = match *c {
        MemberChange::AddLearner(n) => (Kind::AddLearner, n),
        MemberChange::AddVoter(n) => (Kind::AddVoter, n),
        MemberChange::Demote(n) => (Kind::Demote, n),
        MemberChange::Remove(n) => (Kind::Remove, n),
    };
    MemberChangeMsg {
        kind: kind as i32,
        node,
    }
}

fn membership_msg(m: &Membership) -> MembershipMsg {
    MembershipMsg {
        voters: m.voters.clone(),
        learners: m.learners.clone(),
        voters_outgoing: m.voters_outgoing.clone(),
        learners_next: m.learners_next.clone(),
    }
}

fn membership_from_msg(m: Option<MembershipMsg>) -> Membership {
    let m = m.unwrap_or_default();
    Membership {
        voters: m.voters,
        learners: m.learners,
        voters_outgoing: m.voters_outgoing,
        learners_next: m.learners_next,
    }
}

/// A node's report on the wire.
pub fn report_msg(r: &NodeReport) -> NodeReportMsg {
    NodeReportMsg {
        node: r.node,
        bytes: r.bytes,
        replicas: r
            .replicas
            .iter()
            .map(|x| ReplicaStatusMsg {
                shard: x.shard,
                leader: x.leader.unwrap_or(0),
                is_leader: x.is_leader,
                term: x.term,
                membership: Some(membership_msg(&x.membership)),
                conf_pending: x.conf_pending,
                progress: x
                    .progress
                    .iter()
                    .map(|p| PeerProgressMsg {
                        node: p.node,
                        matched: p.matched,
                        snapshot: p.snapshot,
                    })
                    .collect(),
                commit: x.commit,
                applied: x.applied,
                bytes: x.bytes,
            })
            .collect(),
    }
}

fn report_from_msg(m: NodeReportMsg) -> NodeReport {
    NodeReport {
        node: m.node,
        bytes: m.bytes,
        replicas: m
            .replicas
            .into_iter()
            .map(|x| ReplicaReport {
                shard: x.shard,
                leader: (x.leader != 0).then_some(x.leader),
                is_leader: x.is_leader,
                term: x.term,
                membership: membership_from_msg(x.membership),
                conf_pending: x.conf_pending,
                progress: x
                    .progress
                    .iter()
                    .map(|p| PeerProgress {
                        node: p.node,
                        matched: p.matched,
                        snapshot: p.snapshot,
                    })
                    .collect(),
                commit: x.commit,
                applied: x.applied,
                bytes: x.bytes,
            })
            .collect(),
    }
}

/// The driver's calls, made over the transport's node connections.
pub struct GrpcShardAdmin(pub Arc<GrpcTransport>);

impl GrpcShardAdmin {
    async fn client(
        &self,
        node: NodeId,
    ) -> Result<
        (
            NodeAdminClient<tonic::transport::Channel>,
            super::raft::NodeChannel,
        ),
        Error,
    > {
        let conn = self.0.channel_to(node).await?;
        Ok((NodeAdminClient::new(conn.channel.clone()), conn))
    }
}

fn call_failed(conn: &super::raft::NodeChannel, node: NodeId, s: &Status) -> Error {
    if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown {
        conn.broken();
    }
    super::errors::from_status(s)
        .unwrap_or_else(|| Error::new(Code::Again, format!("node {node}: {}", s.message())))
}

impl ShardAdmin for GrpcShardAdmin {
    fn create_replica(&self, node: NodeId, desc: ShardDesc) -> AdminCall<()> {
        let me = GrpcShardAdmin(self.0.clone());
        Box::pin(async move {
            let (mut c, conn) = me.client(node).await?;
            let req = conn.request(
                CreateReplicaRequest {
                    shard: desc.id,
                    start: desc.start,
                    end: desc.end,
                },
                CALL_TIMEOUT,
            )?;
            c.create_replica(req)
                .await
                .map_err(|s| call_failed(&conn, node, &s))?;
            Ok(())
        })
    }

    fn change_membership(
        &self,
        leader: NodeId,
        shard: ShardId,
        changes: Vec<MemberChange>,
    ) -> AdminCall<Membership> {
        let me = GrpcShardAdmin(self.0.clone());
        Box::pin(async move {
            let (mut c, conn) = me.client(leader).await?;
            let req = conn.request(
                ChangeMembershipRequest {
                    shard,
                    changes: changes.iter().map(change_msg).collect(),
                },
                CALL_TIMEOUT,
            )?;
            let m = c
                .change_membership(req)
                .await
                .map_err(|s| call_failed(&conn, leader, &s))?;
            Ok(membership_from_msg(Some(m.into_inner())))
        })
    }

    fn transfer_leader(&self, leader: NodeId, shard: ShardId, to: NodeId) -> AdminCall<()> {
        let me = GrpcShardAdmin(self.0.clone());
        Box::pin(async move {
            let (mut c, conn) = me.client(leader).await?;
            let req = conn.request(TransferLeaderRequest { shard, to }, CALL_TIMEOUT)?;
            c.transfer_leader(req)
                .await
                .map_err(|s| call_failed(&conn, leader, &s))?;
            Ok(())
        })
    }

    fn destroy_replica(&self, node: NodeId, shard: ShardId) -> AdminCall<()> {
        let me = GrpcShardAdmin(self.0.clone());
        Box::pin(async move {
            let (mut c, conn) = me.client(node).await?;
            let req = conn.request(DestroyReplicaRequest { shard }, CALL_TIMEOUT)?;
            c.destroy_replica(req)
                .await
                .map_err(|s| call_failed(&conn, node, &s))?;
            Ok(())
        })
    }
}

/// Sends this node's report to the meta shard's leader every `every` (to its own driver
/// when it leads), and ticks the driver, for the life of the process.
pub fn spawn_heartbeats(
    driver: Arc<Driver>,
    meta: Arc<Meta>,
    transport: Arc<GrpcTransport>,
    directory: Arc<MetaDirectory>,
    store_dir: std::path::PathBuf,
    every: Duration,
) {
    tokio::spawn(async move {
        let mut bytes = 0;
        let mut sizes: BTreeMap<ShardId, u64> = BTreeMap::new();
        let mut round: u64 = 0;
        loop {
            tokio::time::sleep(every).await;
            // The store's and the replicas' sizes are measured every tenth
            // heartbeat, off the runtime.
            if round.is_multiple_of(10) {
                let dir = store_dir.clone();
                let raft = meta.router().raft().clone();
                let measured =
                    tokio::task::spawn_blocking(move || (dir_bytes(&dir), raft.replica_bytes()))
                        .await;
                if let Ok((b, s)) = measured {
                    bytes = b;
                    match s {
                        Ok(s) => sizes = s.into_iter().collect(),
                        Err(e) => tracing::warn!(error = %e, "measuring replica sizes failed"),
                    }
                }
            }
            round += 1;
            let raft = meta.router().raft();
            let mut report = NodeReport::of(raft);
            report.bytes = bytes;
            for r in &mut report.replicas {
                r.bytes = sizes.get(&r.shard).copied().unwrap_or(0);
            }
            // A node that does not know the meta leader yet (it joined and
            // holds no map) reports to every node it knows of: the leader's
            // driver keeps it, the others' are inactive.
            let me = raft.node_id();
            let targets = match meta.router().leader_of(META_SHARD) {
                // A hint naming this node while it does not lead (its replica
                // went, or it never had one) is stale.
                Some(l) if l != me || raft.leader(META_SHARD) == Some(me) => vec![l],
                _ => directory.known_nodes(),
            };
            for to in targets {
                if to == raft.node_id() {
                    driver.report(report.clone(), driver.now_ms());
                } else if let Err(e) = send_report(&transport, to, &report).await {
                    tracing::debug!(to, error = %e, "heartbeat to the placement driver failed");
                }
            }
            driver.tick(driver.now_ms());
        }
    });
}

async fn send_report(t: &GrpcTransport, to: NodeId, r: &NodeReport) -> Result<(), Error> {
    let conn = t.channel_to(to).await?;
    let req = conn.request(report_msg(r), REPORT_TIMEOUT)?;
    NodeAdminClient::new(conn.channel.clone())
        .report(req)
        .await
        .map_err(|s| call_failed(&conn, to, &s))?;
    Ok(())
}

/// The placement driver's view for operators, from wherever the driver runs.
pub struct Placement {
    pub driver: Arc<Driver>,
    pub meta: Arc<Meta>,
    pub transport: Arc<GrpcTransport>,
    pub down_timeout: Duration,
}

impl Placement {
    /// The driver's status: this node's when it leads the meta shard, else the leader's.
    pub async fn status(&self) -> Result<PlacementStatus, Error> {
        let me = self.meta.router().raft().node_id();
        match self.meta.router().leader_of(META_SHARD) {
            Some(l) if l == me => Ok(placement_msg(&self.driver, me, self.down_timeout)),
            Some(l) => {
                let conn = self.transport.channel_to(l).await?;
                let req = conn.request(Empty {}, REPORT_TIMEOUT)?;
                let st = NodeAdminClient::new(conn.channel.clone())
                    .placement(req)
                    .await
                    .map_err(|s| call_failed(&conn, l, &s))?;
                Ok(st.into_inner())
            }
            None => Err(Error::new(
                Code::Again,
                "the meta shard has no leader yet; retry",
            )),
        }
    }
}

fn step_msg(f: &InFlight, now_ms: u64) -> PlacementStep {
    let (kind, shard, node, from) = match f.step {
        Step::LeaveJoint { shard } => ("leave-joint", shard, 0, 0),
        Step::AddLearner { shard, node } => ("add-learner", shard, node, 0),
        Step::Promote { shard, node } => ("promote", shard, node, 0),
        Step::TransferLeader { shard, to } => ("transfer-leader", shard, to, 0),
        Step::Remove { shard, node } => ("remove", shard, node, 0),
        Step::Move { shard, from, to } => ("move", shard, to, from),
    };
    PlacementStep {
        kind: kind.into(),
        shard,
        node,
        from,
        started_ms_ago: i64::try_from(now_ms.saturating_sub(f.started_ms)).unwrap_or(i64::MAX),
    }
}

/// The driver's status on the wire.
pub fn placement_msg(driver: &Driver, me: NodeId, down_timeout: Duration) -> PlacementStatus {
    let st = driver.status();
    let now = driver.now_ms();
    let map = driver.meta().map();
    let alive = driver.meta().router().raft().alive_peers();
    PlacementStatus {
        driver_node: me,
        nodes: st
            .nodes
            .iter()
            .map(|n| NodeDetail {
                node: map
                    .nodes
                    .iter()
                    .find(|r| r.id == n.node)
                    .map(|r| super::cluster::node_info(r, me, &alive)),
                health: n.health.to_string(),
                replicas: u32::try_from(n.replicas).unwrap_or(u32::MAX),
                learners: u32::try_from(n.learners).unwrap_or(u32::MAX),
                leaders: u32::try_from(n.leaders).unwrap_or(u32::MAX),
                bytes: n.bytes,
                data_bytes: n.data_bytes,
                heartbeat_ago_ms: n
                    .heartbeat_ago_ms
                    .map_or(-1, |ms| i64::try_from(ms).unwrap_or(i64::MAX)),
            })
            .collect(),
        under_replicated: st.under_replicated,
        joint: st.joint,
        in_flight: st.in_flight.iter().map(|f| step_msg(f, now)).collect(),
        down_timeout_ms: u64::try_from(down_timeout.as_millis()).unwrap_or(u64::MAX),
    }
}

/// Size of the files under `dir` (the node's store), recursively.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
