//! The placement driver's runtime: on the node leading the meta shard, it gathers node
//! reports (heartbeats carrying every replica's role, configuration and progress), asks
//! [`placement::plan`] for the next steps, and carries them out through a [`ShardAdmin`]
//! (the server's node-to-node calls; direct calls in tests), one step per shard at a time.
//!
//! The meta shard is special: it has voters on 3 nodes (5 once there are 5 or more) and a
//! learner on every other node, so every node reads the cluster map from its own replica.
//! Its learners are invisible to the plan unless voters are missing (then a caught-up one is
//! promoted); a voter the plan removes from a live node is demoted to a learner instead.
//!
//! The decisions stay in `placement` (no clock, no I/O); this module owns the clock-free
//! bookkeeping (reports and steps in flight, keyed by the caller's milliseconds) and the
//! execution. Everything here is lost when meta leadership moves: the next leader starts
//! from fresh reports and counts every node as heard at the moment it took over.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use berth_raft::{MemberChange, Membership, NodeId, PeerProgress, RaftNode, Role, ShardDesc};
use parking_lot::Mutex;

use crate::map::{NodeState, ShardRecord, META_SHARD};
use crate::placement::{self, NodeView, Settings, ShardView, Step};
use crate::{Code, Error, Meta};
use berth_raft::ShardId;

/// Voters of the meta shard in a cluster of fewer than 5 nodes.
pub const META_VOTERS: usize = 3;
/// Voters of the meta shard once the cluster has 5 nodes or more.
pub const META_VOTERS_LARGE: usize = 5;
/// How long a step may take before the driver forgets it and may plan again.
pub const STEP_TIMEOUT_MS: u64 = 60_000;

/// One replica as its node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReport {
    pub shard: ShardId,
    pub leader: Option<NodeId>,
    pub is_leader: bool,
    /// The replica's Raft term (a leader's report with a higher term wins over an older
    /// one: a node cut off, paused or dead keeps its last report).
    pub term: u64,
    pub membership: Membership,
    pub conf_pending: bool,
    /// Leader only: the other replicas' progress.
    pub progress: Vec<PeerProgress>,
    pub commit: u64,
    pub applied: u64,
    /// Logical size of the replica's key range (0: not measured).
    pub bytes: u64,
}

/// A node's heartbeat: every replica it holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeReport {
    pub node: NodeId,
    pub replicas: Vec<ReplicaReport>,
    /// Size of the node's store (0: not measured).
    pub bytes: u64,
}

impl NodeReport {
    /// The report of the node running `raft`.
    pub fn of(raft: &RaftNode) -> NodeReport {
        NodeReport {
            node: raft.node_id(),
            replicas: raft
                .status()
                .into_iter()
                .filter(|s| s.stopped.is_none())
                .map(|s| ReplicaReport {
                    shard: s.id,
                    leader: s.leader,
                    is_leader: s.role == Role::Leader,
                    term: s.term,
                    membership: s.membership,
                    conf_pending: s.conf_pending,
                    progress: s.progress,
                    commit: s.commit,
                    applied: s.applied,
                    bytes: 0,
                })
                .collect(),
            bytes: 0,
        }
    }
}

/// A call on one node, as a future.
pub type AdminCall<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>;

/// How the driver acts on nodes.
pub trait ShardAdmin: Send + Sync + 'static {
    /// Creates an empty replica of `desc` (no voters) on `node`.
    fn create_replica(&self, node: NodeId, desc: ShardDesc) -> AdminCall<()>;
    /// Has `leader` propose a membership change of `shard`.
    fn change_membership(
        &self,
        leader: NodeId,
        shard: ShardId,
        changes: Vec<MemberChange>,
    ) -> AdminCall<Membership>;
    /// Has `leader` hand the leadership of `shard` to `to`.
    fn transfer_leader(&self, leader: NodeId, shard: ShardId, to: NodeId) -> AdminCall<()>;
    /// Has `node` destroy its replica of `shard` (removed from the group while it could not
    /// hear it).
    fn destroy_replica(&self, node: NodeId, shard: ShardId) -> AdminCall<()>;
}

/// A step in flight, for `berth cluster status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub step: Step,
    pub started_ms: u64,
}

/// What the driver sees, for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverStatus {
    /// This node leads the meta shard and drives placement.
    pub active: bool,
    pub in_flight: Vec<InFlight>,
    /// Shards with fewer voters than their replication factor (and nodes to hold more).
    pub under_replicated: Vec<ShardId>,
    /// Shards in a joint configuration.
    pub joint: Vec<ShardId>,
    /// Per node: the last heartbeat (ms ago), replicas and leaders it reported.
    pub nodes: Vec<NodeSeen>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSeen {
    pub node: NodeId,
    /// joining, up, suspect, down, draining or decommissioned.
    pub health: &'static str,
    pub heartbeat_ago_ms: Option<u64>,
    /// Voting replicas, as the shards' leaders report them.
    pub replicas: usize,
    pub learners: usize,
    pub leaders: usize,
    /// Size of its store, as it last measured.
    pub bytes: u64,
    /// Logical size of its voting replicas (what balancing evens out).
    pub data_bytes: u64,
}

#[derive(Default)]
struct State {
    /// Last report per node, with when it arrived.
    reports: BTreeMap<NodeId, (u64, NodeReport)>,
    /// When this node last became the meta leader (None: not leading).
    leading_since: Option<u64>,
    in_flight: BTreeMap<ShardId, InFlight>,
    /// The time of the last report or tick (ms): what "recent" is measured against.
    now_ms: u64,
    /// Balancing moves under way: shard → (the node it leaves, the node it goes to).
    moves: BTreeMap<ShardId, (NodeId, NodeId)>,
    /// Reports received so far, per node.
    received: BTreeMap<NodeId, u64>,
    /// Shards whose last step ended before their leader reported again: shard → the
    /// reports received per node when it ended. Until the leader's next report the
    /// reported configuration may predate the step, and a plan made from it would
    /// repeat or undo the step (re-adding a learner it just added, destroying it first).
    settling: BTreeMap<ShardId, BTreeMap<NodeId, u64>>,
}

/// The placement driver of one node (active only while the node leads the meta shard).
pub struct Driver {
    meta: Arc<Meta>,
    admin: Arc<dyn ShardAdmin>,
    settings: Settings,
    state: Mutex<State>,
    epoch: Instant,
}

impl Driver {
    pub fn new(meta: Arc<Meta>, admin: Arc<dyn ShardAdmin>, settings: Settings) -> Arc<Driver> {
        Arc::new(Driver {
            meta,
            admin,
            settings,
            state: Mutex::new(State::default()),
            epoch: Instant::now(),
        })
    }

    /// The cluster map this driver reads.
    pub fn meta(&self) -> &Arc<Meta> {
        &self.meta
    }

    /// Milliseconds on this process's monotonic clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes a node's heartbeat.
    pub fn report(&self, r: NodeReport, now_ms: u64) {
        let mut st = self.state.lock();
        st.now_ms = st.now_ms.max(now_ms);
        *st.received.entry(r.node).or_default() += 1;
        st.reports.insert(r.node, (now_ms, r));
    }

    fn leads_meta(&self) -> bool {
        let raft = self.meta.router().raft();
        raft.leader(META_SHARD) == Some(raft.node_id())
    }

    /// The views the plan decides on, from the cluster map and the reports.
    fn views(&self, st: &State, now_ms: u64) -> (Vec<NodeView>, Vec<ShardView>) {
        let map = self.meta.map();
        let since = st.leading_since.unwrap_or(now_ms);
        let nodes: Vec<NodeView> = map
            .nodes
            .iter()
            .filter(|n| n.state != NodeState::Decommissioned)
            .map(|n| NodeView {
                id: n.id,
                labels: n.labels.clone(),
                heartbeat_ms: st
                    .reports
                    .get(&n.id)
                    .map_or(since, |(at, _)| (*at).max(since)),
                draining: n.state == NodeState::Draining,
            })
            .collect();
        // The leader's report of each shard is the authority on its configuration.
        let leaders = leader_reports(st);
        let live_nodes = nodes.len();
        let shards = map
            .shards
            .iter()
            .map(|s| {
                let replication = self.replication_of(s, live_nodes);
                let prefer_leader = map
                    .volumes
                    .iter()
                    .find(|v| v.shard_id == s.id)
                    .and_then(|v| v.leader_preference.as_deref())
                    .and_then(|l| crate::map::parse_label_pair(l).ok());
                // The leader's measure of the shard's size, else any replica's.
                let bytes = leaders
                    .get(&s.id)
                    .map(|(_, rep)| rep.bytes)
                    .filter(|b| *b > 0)
                    .or_else(|| {
                        st.reports
                            .values()
                            .flat_map(|(_, r)| r.replicas.iter())
                            .filter(|rep| rep.shard == s.id)
                            .map(|rep| rep.bytes)
                            .max()
                    })
                    .unwrap_or(0);
                let (moving_from, moving_to) = match st.moves.get(&s.id) {
                    Some((from, to)) => (Some(*from), Some(*to)),
                    None => (None, None),
                };
                let Some((leader, rep)) = leaders.get(&s.id) else {
                    // No leader reported: nothing can be changed; the plan waits.
                    return ShardView {
                        id: s.id,
                        replication,
                        voters: s.replicas.clone(),
                        learners: Vec::new(),
                        leader: None,
                        joint: false,
                        busy: true,
                        prefer_leader,
                        bytes,
                        moving_from,
                        moving_to,
                    };
                };
                let m = &rep.membership;
                let caught_up = |n: NodeId| {
                    rep.progress
                        .iter()
                        .any(|p| p.node == n && !p.snapshot && p.matched >= rep.commit)
                };
                let mut learners: Vec<(NodeId, bool)> =
                    m.learners.iter().map(|&n| (n, caught_up(n))).collect();
                if s.id == META_SHARD && m.voters.len() >= replication as usize {
                    // Meta learners are every other node's copy of the map, not
                    // replicas on their way to become voters.
                    learners.clear();
                }
                ShardView {
                    id: s.id,
                    replication,
                    voters: m.voters.clone(),
                    learners,
                    leader: Some(*leader),
                    joint: m.is_joint(),
                    busy: st.in_flight.contains_key(&s.id)
                        || st.settling.contains_key(&s.id)
                        || rep.conf_pending,
                    prefer_leader,
                    bytes,
                    moving_from,
                    moving_to,
                }
            })
            .collect();
        (nodes, shards)
    }

    /// Drops the moves that ended: the node left is no longer a voter (done), or the node
    /// joined holds no replica while nothing is in flight (the step failed; the plan starts
    /// afresh).
    fn forget_moves(&self, st: &mut State) {
        let members: BTreeMap<ShardId, Membership> = leader_reports(st)
            .into_iter()
            .map(|(shard, (_, rep))| (shard, rep.membership.clone()))
            .collect();
        let in_flight: BTreeSet<ShardId> = st.in_flight.keys().copied().collect();
        st.moves.retain(|shard, (from, to)| {
            let Some(m) = members.get(shard) else {
                return true;
            };
            m.voters.contains(from) && (m.contains(*to) || in_flight.contains(shard))
        });
    }

    /// Voters wanted for a shard.
    fn replication_of(&self, s: &ShardRecord, nodes: usize) -> u32 {
        if s.id == META_SHARD {
            let n = if nodes >= META_VOTERS_LARGE {
                META_VOTERS_LARGE
            } else {
                META_VOTERS
            };
            return n as u32;
        }
        self.meta
            .map()
            .volumes
            .iter()
            .find(|v| v.shard_id == s.id)
            .map_or(1, |v| v.replication.max(1))
    }

    /// Plans the next steps and starts them; returns what it started. Does nothing unless
    /// this node leads the meta shard.
    pub fn tick(self: &Arc<Self>, now_ms: u64) -> Vec<Step> {
        if !self.leads_meta() {
            let mut st = self.state.lock();
            st.leading_since = None;
            st.in_flight.clear();
            st.moves.clear();
            st.settling.clear();
            return Vec::new();
        }
        let mut started = Vec::new();
        let mut st = self.state.lock();
        st.now_ms = st.now_ms.max(now_ms);
        if st.leading_since.is_none() {
            st.leading_since = Some(now_ms);
        }
        st.in_flight
            .retain(|_, f| now_ms.saturating_sub(f.started_ms) < STEP_TIMEOUT_MS);
        self.forget_moves(&mut st);
        settle(&mut st);
        let (nodes, shards) = self.views(&st, now_ms);
        let mut steps = placement::plan(&nodes, &shards, now_ms, &self.settings);
        steps.extend(self.meta_learners(&st, &nodes, now_ms));
        for step in steps {
            let shard = step.shard();
            if st.in_flight.contains_key(&shard) {
                continue;
            }
            if let Step::Move { from, to, .. } = step {
                st.moves.insert(shard, (from, to));
            }
            st.in_flight.insert(
                shard,
                InFlight {
                    step: step.clone(),
                    started_ms: now_ms,
                },
            );
            started.push(step.clone());
            let me = self.clone();
            tokio::spawn(async move {
                let r = me.execute(&step).await;
                match &r {
                    Ok(()) => tracing::info!(?step, "placement step done"),
                    Err(e) => tracing::warn!(?step, error = %e, "placement step failed"),
                }
                let mut st = me.state.lock();
                let received = st.received.clone();
                st.settling.insert(step.shard(), received);
                st.in_flight.remove(&step.shard());
            });
        }
        self.finish_drains(&st);
        self.sync_map(&st);
        for g in self.zombies(&st) {
            let admin = self.admin.clone();
            tokio::spawn(async move {
                let (node, shard) = g;
                match admin.destroy_replica(node, shard).await {
                    Ok(()) => tracing::info!(node, shard, "removed replica destroyed"),
                    Err(e) => {
                        tracing::debug!(node, shard, error = %e, "cannot destroy a removed replica yet")
                    }
                }
            });
        }
        started
    }

    /// The meta shard's learners: one for an up node holding no meta replica, or the
    /// removal of one on a down node (one step at a time).
    fn meta_learners(&self, st: &State, nodes: &[NodeView], now_ms: u64) -> Vec<Step> {
        if st.in_flight.contains_key(&META_SHARD) {
            return Vec::new();
        }
        let leaders = leader_reports(st);
        let Some(m) = leaders.get(&META_SHARD).map(|(_, rep)| &rep.membership) else {
            return Vec::new();
        };
        if m.is_joint() {
            return Vec::new();
        }
        let state = |id: NodeId| {
            nodes
                .iter()
                .find(|n| n.id == id)
                .map_or(placement::NodeState::Down, |n| {
                    placement::node_state(n, now_ms, &self.settings)
                })
        };
        // A down or draining node's copy of the map goes with its other replicas.
        if let Some(&gone) = m.learners.iter().find(|&&n| {
            matches!(
                state(n),
                placement::NodeState::Down | placement::NodeState::Draining
            )
        }) {
            return vec![Step::Remove {
                shard: META_SHARD,
                node: gone,
            }];
        }
        nodes
            .iter()
            .filter(|n| {
                placement::node_state(n, now_ms, &self.settings) == placement::NodeState::Up
            })
            .find(|n| !m.contains(n.id))
            .map(|n| Step::AddLearner {
                shard: META_SHARD,
                node: n.id,
            })
            .into_iter()
            .collect()
    }

    /// Replicas whose node still reports them although their group's leader reports a
    /// configuration without that node (removed while it was away). A replica with an
    /// empty configuration is one just created for a step: never a zombie.
    fn zombies(&self, st: &State) -> Vec<(NodeId, ShardId)> {
        let leaders = leader_reports(st);
        let mut out = Vec::new();
        for (node, (at, r)) in &st.reports {
            if !fresh(st, *at) {
                continue;
            }
            for rep in &r.replicas {
                let Some((_, lead)) = leaders.get(&rep.shard) else {
                    continue;
                };
                let m = &lead.membership;
                // Only a leader at least as recent as the replica may judge it.
                if st.in_flight.contains_key(&rep.shard)
                    || st.settling.contains_key(&rep.shard)
                    || m.is_joint()
                    || rep.membership.replicas().is_empty()
                    || m.contains(*node)
                    || lead.term < rep.term
                {
                    continue;
                }
                out.push((*node, rep.shard));
            }
        }
        out
    }

    /// The leader of `shard` as last reported.
    fn leader_of(&self, shard: ShardId) -> Option<(NodeId, ReplicaReport)> {
        let st = self.state.lock();
        leader_reports(&st)
            .get(&shard)
            .map(|(node, rep)| (*node, (*rep).clone()))
    }

    async fn execute(&self, step: &Step) -> Result<(), Error> {
        let shard = step.shard();
        let (leader, rep) = self
            .leader_of(shard)
            .ok_or_else(|| Error::new(Code::Again, format!("shard {shard} has no leader")))?;
        let m = &rep.membership;
        let meta = shard == META_SHARD;
        let membership = match *step {
            Step::LeaveJoint { .. } => self.admin.change_membership(leader, shard, vec![]).await?,
            Step::AddLearner { node, .. } | Step::Move { to: node, .. }
                if meta && m.learners.contains(&node) =>
            {
                // Balancing meta voters onto a node that already holds the map.
                self.admin
                    .change_membership(leader, shard, vec![MemberChange::AddVoter(node)])
                    .await?
            }
            Step::AddLearner { node, .. } | Step::Move { to: node, .. } => {
                let record = self
                    .meta
                    .map()
                    .shards
                    .iter()
                    .find(|s| s.id == shard)
                    .cloned()
                    .ok_or_else(|| Error::new(Code::NotFound, format!("shard {shard} is gone")))?;
                let mut desc = record.desc();
                desc.voters.clear();
                // A replica the node still holds while its group does not list it (removed
                // while away, or brought back by a stale record) is in the way: it goes first.
                let stale = self.state.lock().reports.get(&node).is_some_and(|(_, r)| {
                    r.replicas
                        .iter()
                        .any(|x| x.shard == shard && !x.membership.replicas().is_empty())
                });
                if stale && !m.contains(node) {
                    self.admin.destroy_replica(node, shard).await?;
                }
                self.admin.create_replica(node, desc).await?;
                self.admin
                    .change_membership(leader, shard, vec![MemberChange::AddLearner(node)])
                    .await?
            }
            Step::Promote { node, .. } => {
                self.admin
                    .change_membership(leader, shard, vec![MemberChange::AddVoter(node)])
                    .await?
            }
            Step::TransferLeader { to, .. } => {
                self.admin.transfer_leader(leader, shard, to).await?;
                return Ok(());
            }
            Step::Remove { node, .. } => {
                let live = self.is_live(node);
                let change = if meta && live && m.voters.contains(&node) {
                    // A live node keeps its copy of the cluster map.
                    MemberChange::Demote(node)
                } else {
                    MemberChange::Remove(node)
                };
                self.admin
                    .change_membership(leader, shard, vec![change])
                    .await?
            }
        };
        self.record(shard, &membership).await
    }

    fn is_live(&self, node: NodeId) -> bool {
        let now = self.now_ms();
        let st = self.state.lock();
        st.reports
            .get(&node)
            .is_some_and(|(at, _)| now.saturating_sub(*at) < self.settings.suspect_after_ms)
    }

    /// Records the shard's voters in the cluster map as its replicas (routing and operators
    /// read them; the Raft group stays the authority). Learners are left out: they are on
    /// their way in (or the meta shard's copies of the map), and a shard counts as
    /// replicated only once its voters are.
    async fn record(&self, shard: ShardId, m: &Membership) -> Result<(), Error> {
        let mut voters = m.voters.clone();
        if m.is_joint() {
            voters.extend(m.voters_outgoing.iter().filter(|v| !m.voters.contains(v)));
        }
        voters.sort_unstable();
        self.meta.set_shard_replicas(shard, voters).await
    }

    /// What the driver sees now.
    pub fn status(&self) -> DriverStatus {
        let now = self.now_ms();
        let active = self.leads_meta();
        let map = self.meta.map();
        let st = self.state.lock();
        let (nodes, shards) = self.views(&st, now);
        let up: BTreeSet<NodeId> = nodes
            .iter()
            .filter(|n| placement::node_state(n, now, &self.settings) == placement::NodeState::Up)
            .map(|n| n.id)
            .collect();
        let leaders = leader_reports(&st);
        let count = |f: &dyn Fn(&Membership) -> &Vec<NodeId>, id: NodeId| {
            leaders
                .values()
                .filter(|(_, rep)| f(&rep.membership).contains(&id))
                .count()
        };
        let mut seen: Vec<NodeSeen> = map
            .nodes
            .iter()
            .map(|rec| {
                let report = st.reports.get(&rec.id);
                let health = match (rec.state, nodes.iter().find(|n| n.id == rec.id)) {
                    (NodeState::Decommissioned, _) | (_, None) => "decommissioned",
                    (NodeState::Draining, _) => "draining",
                    (NodeState::Joining, Some(_)) if report.is_none() => "joining",
                    (_, Some(n)) => match placement::node_state(n, now, &self.settings) {
                        placement::NodeState::Up => "up",
                        placement::NodeState::Suspect => "suspect",
                        placement::NodeState::Down => "down",
                        placement::NodeState::Draining => "draining",
                    },
                };
                NodeSeen {
                    node: rec.id,
                    health,
                    heartbeat_ago_ms: report.map(|(at, _)| now.saturating_sub(*at)),
                    replicas: count(&|m| &m.voters, rec.id),
                    learners: count(&|m| &m.learners, rec.id),
                    leaders: leaders.values().filter(|(l, _)| *l == rec.id).count(),
                    bytes: report.map_or(0, |(_, r)| r.bytes),
                    data_bytes: shards
                        .iter()
                        .filter(|s| s.voters.contains(&rec.id))
                        .map(|s| s.bytes)
                        .sum(),
                }
            })
            .collect();
        seen.sort_by_key(|n| n.node);
        DriverStatus {
            active,
            in_flight: st.in_flight.values().cloned().collect(),
            under_replicated: shards
                .iter()
                .filter(|s| {
                    let wanted = (s.replication as usize).min(up.len().max(1));
                    s.voters.iter().filter(|v| up.contains(v)).count() < wanted
                })
                .map(|s| s.id)
                .collect(),
            joint: shards.iter().filter(|s| s.joint).map(|s| s.id).collect(),
            nodes: seen,
        }
    }

    /// Brings the map's replicas of each shard (its voters) in line with what the shard's
    /// leader reports, for shards with no step in flight and not joint: a configuration can
    /// change without a step of this driver (raft-rs leaves a joint configuration by
    /// itself, a previous driver's step completed after it lost leadership).
    fn sync_map(self: &Arc<Self>, st: &State) {
        let map = self.meta.map();
        for (shard, (_, rep)) in leader_reports(st) {
            let m = &rep.membership;
            if st.in_flight.contains_key(&shard) || m.is_joint() || m.voters.is_empty() {
                continue;
            }
            let Some(rec) = map.shards.iter().find(|s| s.id == shard) else {
                continue;
            };
            let mut voters = m.voters.clone();
            voters.sort_unstable();
            if rec.replicas == voters {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.meta.set_shard_replicas(shard, voters).await {
                    tracing::debug!(shard, error = %e, "cannot record a shard's replicas");
                }
            });
        }
    }

    /// Draining nodes no group lists any more (every shard's leader reported) become
    /// decommissioned in the map.
    fn finish_drains(self: &Arc<Self>, st: &State) {
        let map = self.meta.map();
        let leaders = leader_reports(st);
        if map.shards.iter().any(|s| !leaders.contains_key(&s.id)) {
            return;
        }
        for n in map.nodes.iter().filter(|n| n.state == NodeState::Draining) {
            let holds = leaders
                .values()
                .any(|(_, rep)| rep.membership.contains(n.id));
            if holds {
                continue;
            }
            let (me, id) = (self.clone(), n.id);
            tokio::spawn(async move {
                match me.meta.set_node_state(id, NodeState::Decommissioned).await {
                    Ok(()) => tracing::info!(node = id, "node drained: decommissioned"),
                    Err(e) => {
                        tracing::warn!(node = id, error = %e, "cannot mark a drained node decommissioned")
                    }
                }
            });
        }
    }
}

/// Each shard's leader and its report, from the nodes' reports.
/// How recent a report must be to speak for its node's replicas: a few heartbeats.
pub const REPORT_FRESH_MS: u64 = 5_000;

/// Whether a report that arrived at `at` is recent (see [`REPORT_FRESH_MS`]).
fn fresh(st: &State, at: u64) -> bool {
    at.saturating_add(REPORT_FRESH_MS) >= st.now_ms
}

/// Each shard's leader as reported: of the recent reports claiming leadership, the one with
/// the highest term (then the most recent). A node that was cut off, paused or killed while
/// leading keeps its last report, which still claims the leadership it lost: old reports
/// never count (trusting one, the driver once destroyed a learner its stale membership
/// lacked).
/// Forgets the settling shards whose leader reported since their step ended.
fn settle(st: &mut State) {
    let leaders: BTreeMap<ShardId, NodeId> = leader_reports(st)
        .into_iter()
        .map(|(shard, (node, _))| (shard, node))
        .collect();
    let received = &st.received;
    st.settling.retain(|shard, then| {
        leaders.get(shard).is_none_or(|l| {
            received.get(l).copied().unwrap_or(0) <= then.get(l).copied().unwrap_or(0)
        })
    });
}

fn leader_reports(st: &State) -> BTreeMap<ShardId, (NodeId, &ReplicaReport)> {
    let mut best: BTreeMap<ShardId, (u64, u64, NodeId, &ReplicaReport)> = BTreeMap::new();
    for (node, (at, r)) in st.reports.iter().filter(|(_, (at, _))| fresh(st, *at)) {
        for rep in r.replicas.iter().filter(|rep| rep.is_leader) {
            let better = best
                .get(&rep.shard)
                .is_none_or(|(term, seen, _, _)| (rep.term, *at) > (*term, *seen));
            if better {
                best.insert(rep.shard, (rep.term, *at, *node, rep));
            }
        }
    }
    best.into_iter()
        .map(|(shard, (_, _, node, rep))| (shard, (node, rep)))
        .collect()
}

/// Whether the nodes left once `node` is drained can hold every shard at its
/// replication factor (the meta shard at 3 voters, or as many nodes as there are).
pub fn can_drain(map: &crate::meta::MapCache, node: NodeId) -> Result<(), Error> {
    let rec = map
        .nodes
        .iter()
        .find(|n| n.id == node)
        .ok_or_else(|| Error::not_found(format!("node {node}")))?;
    if matches!(rec.state, NodeState::Draining | NodeState::Decommissioned) {
        return Ok(());
    }
    let left = map
        .nodes
        .iter()
        .filter(|n| n.id != node)
        .filter(|n| matches!(n.state, NodeState::Up | NodeState::Joining))
        .count();
    if left == 0 {
        return Err(Error::new(
            Code::Busy,
            format!("cannot decommission node {node}: it is the cluster's last node"),
        ));
    }
    for v in &map.volumes {
        let rf = v.replication.max(1) as usize;
        if rf > left {
            return Err(Error::new(
                Code::Busy,
                format!(
                    "cannot decommission node {node}: volume {} (id {}) wants {rf} replicas and \
                     only {left} other node(s) would be left to hold them; add a node first",
                    v.path, v.id
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leading(shard: ShardId, term: u64) -> ReplicaReport {
        ReplicaReport {
            shard,
            leader: None,
            is_leader: true,
            term,
            membership: Membership::default(),
            conf_pending: false,
            progress: Vec::new(),
            commit: 0,
            applied: 0,
            bytes: 0,
        }
    }

    #[test]
    fn the_leader_with_the_highest_term_wins_over_a_stale_report() {
        let mut st = State::default();
        // Node 1 led shard 7 in term 3 and went silent (its report stays);
        // node 2 leads it in term 4 now.
        for (node, at, term) in [(1, 100, 3), (2, 90, 4)] {
            let r = NodeReport {
                node,
                replicas: vec![leading(7, term)],
                bytes: 0,
            };
            st.reports.insert(node, (at, r));
        }
        assert_eq!(leader_reports(&st).get(&7).map(|(n, _)| *n), Some(2));
        // Same term (a report racing an election): the most recent wins.
        st.reports.get_mut(&1).unwrap().1.replicas[0].term = 4;
        assert_eq!(leader_reports(&st).get(&7).map(|(n, _)| *n), Some(1));
        // A report older than a few heartbeats speaks for nobody, even when it is the only
        // one claiming the shard.
        st.reports.remove(&2);
        st.now_ms = 100 + REPORT_FRESH_MS + 1;
        assert_eq!(leader_reports(&st).get(&7), None);
    }

    #[test]
    fn a_shard_settles_once_its_leader_reports_after_the_step() {
        let mut st = State::default();
        let report = |node| NodeReport {
            node,
            replicas: vec![leading(7, 2)],
            bytes: 0,
        };
        st.reports.insert(1, (100, report(1)));
        st.received.insert(1, 3);
        st.now_ms = 100;
        // The step ended after report 3 of the leader (node 1): its next one is awaited.
        st.settling.insert(7, st.received.clone());
        settle(&mut st);
        assert!(st.settling.contains_key(&7));
        // Another node reporting does not settle it.
        st.received.insert(2, 1);
        settle(&mut st);
        assert!(st.settling.contains_key(&7));
        *st.received.get_mut(&1).unwrap() += 1;
        settle(&mut st);
        assert!(!st.settling.contains_key(&7));
        assert_eq!(st.received.get(&1), Some(&4));
    }
}
