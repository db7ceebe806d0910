//! The consumer-group coordinator (Kafka's classic protocol): membership,
//! generations and the JoinGroup / SyncGroup barrier, for every group this
//! gateway coordinates. It follows Kafka's `GroupCoordinator` state by
//! state: Empty → PreparingRebalance → CompletingRebalance → Stable, and
//! back to PreparingRebalance whenever a member joins, leaves, changes its
//! protocols or expires.
//!
//! Invariants:
//! - *Membership lives in memory only*: committed offsets are the backend's
//!   and durable; members, generations and assignments are here and are
//!   lost when the gateway restarts, after which clients rejoin (their
//!   heartbeats and commits get UNKNOWN_MEMBER_ID / ILLEGAL_GENERATION,
//!   which makes Kafka clients rejoin). An Empty group is forgotten.
//! - *No I/O, no clock of its own*: every call takes `now`; answers that
//!   must wait (JoinGroup until the rebalance completes, a follower's
//!   SyncGroup until the leader's) are handed back as a oneshot receiver,
//!   so the one mutex is never held across an await and a waiting member
//!   never blocks another connection. Timers (session expiry, rebalance
//!   and sync deadlines) run when [`Coordinator::sweep`] is called.
//! - *Bounded*: groups by [`GROUPS_MAX`], members (and members told their
//!   id but not yet joined) per group by [`MEMBERS_MAX`], protocols per
//!   member by [`PROTOCOLS_MAX`], every wait by a deadline.
//! - *Every waiting member is answered*: a member removed while it waits
//!   gets an error through its channel, never silence.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::backend::GroupRef;
use crate::codes;

/// Groups coordinated at once; a JoinGroup creating one more gets
/// COORDINATOR_NOT_AVAILABLE.
pub const GROUPS_MAX: usize = 10_000;
/// Members of one group, counting those given an id (MEMBER_ID_REQUIRED)
/// but not yet joined; one more gets GROUP_MAX_SIZE_REACHED.
pub const MEMBERS_MAX: usize = 1_000;
/// Protocols one member may offer (a consumer offers its assignors).
pub const PROTOCOLS_MAX: usize = 64;
/// Rebalance timeouts above this are cut to it (it bounds how long a
/// JoinGroup or SyncGroup may wait).
pub const REBALANCE_TIMEOUT_MS_MAX: u64 = 30 * 60 * 1000;
/// How often the gateway calls [`Coordinator::sweep`]: the precision of
/// session expiry and rebalance deadlines.
pub const SWEEP_MS: u64 = 100;
/// Kafka's `group.min.session.timeout.ms` / `group.max.session.timeout.ms`.
pub const SESSION_TIMEOUT_MS_MIN_DEFAULT: u64 = 6_000;
pub const SESSION_TIMEOUT_MS_MAX_DEFAULT: u64 = 30 * 60 * 1000;
/// Client ids are cut to this many bytes in generated member ids.
const MEMBER_ID_PREFIX_BYTES_MAX: usize = 64;

/// Kafka's group states, named as DescribeGroups and ListGroups name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    /// Only reported for groups that do not exist.
    Dead,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
            State::Dead => "Dead",
        }
    }
}

/// A JoinGroup as the coordinator needs it.
#[derive(Debug, Clone)]
pub struct JoinParams {
    /// The name as the client gave it (kept for ListGroups).
    pub name: String,
    /// Empty for a new member.
    pub member_id: String,
    pub instance_id: Option<String>,
    /// v4+ (KIP-394): a new member is first given an id and must join again
    /// with it.
    pub require_known_member_id: bool,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
}

/// A member as the leader sees it in its JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

/// A JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinReply {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata for the chosen protocol: for the
    /// leader only.
    pub members: Vec<JoinedMember>,
}

impl JoinReply {
    fn error(error: i16, member_id: &str) -> JoinReply {
        JoinReply {
            error,
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: vec![],
        }
    }
}

/// A SyncGroup answer: the member's assignment or an error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReply {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncReply {
    fn error(error: i16) -> SyncReply {
        SyncReply {
            error,
            protocol_type: None,
            protocol: None,
            assignment: Bytes::new(),
        }
    }
}

/// An answer now, or one to wait for.
#[derive(Debug)]
pub enum Answer<T> {
    Now(T),
    Wait(oneshot::Receiver<T>),
}

/// A SyncGroup as the coordinator needs it.
#[derive(Debug, Clone)]
pub struct SyncParams {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    /// v5: checked against the group's when given.
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    /// From the leader: (member id, assignment).
    pub assignments: Vec<(String, Bytes)>,
}

/// A member as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSummary {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Empty unless the group is Stable (as Kafka reports).
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub state: State,
    pub protocol_type: String,
    /// The chosen protocol when Stable, else empty.
    pub protocol: String,
    pub members: Vec<MemberSummary>,
}

/// A group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub group: GroupRef,
    pub name: String,
    pub protocol_type: String,
    pub state: State,
}

/// Bounds on the session timeouts members may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub session_timeout_ms_min: u64,
    pub session_timeout_ms_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            session_timeout_ms_min: SESSION_TIMEOUT_MS_MIN_DEFAULT,
            session_timeout_ms_max: SESSION_TIMEOUT_MS_MAX_DEFAULT,
        }
    }
}

struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    /// Expired when this passes while neither join nor sync waits.
    heartbeat_deadline: Instant,
    /// Set while its JoinGroup waits for the rebalance to complete.
    join: Option<oneshot::Sender<JoinReply>>,
    /// Set while its SyncGroup waits for the leader's.
    sync: Option<oneshot::Sender<SyncReply>>,
    /// Sent SyncGroup in this generation.
    synced: bool,
}

impl Member {
    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }

    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// Answers a waiting JoinGroup and SyncGroup with `error` (the member
    /// is being removed).
    fn fail_waiters(&mut self, error: i16) {
        if let Some(tx) = self.join.take() {
            let _ = tx.send(JoinReply::error(error, &self.id));
        }
        if let Some(tx) = self.sync.take() {
            let _ = tx.send(SyncReply::error(error));
        }
    }
}

struct Group {
    name: String,
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    /// In join order (the first one is the leader when one must be chosen).
    members: Vec<Member>,
    /// Members given an id by MEMBER_ID_REQUIRED, until they join with it
    /// or their session timeout passes: (id, deadline).
    pending: Vec<(String, Instant)>,
    /// PreparingRebalance: when members that did not rejoin are dropped.
    rebalance_deadline: Option<Instant>,
    /// After a join completes: when members that sent no SyncGroup are
    /// dropped.
    sync_deadline: Option<Instant>,
}

impl Group {
    fn new(name: &str) -> Group {
        Group {
            name: name.to_string(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: vec![],
            pending: vec![],
            rebalance_deadline: None,
            sync_deadline: None,
        }
    }

    fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    fn member_mut(&mut self, id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    /// The member a SyncGroup, Heartbeat or OffsetCommit names, if it is
    /// one of this generation: else UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID
    /// or ILLEGAL_GENERATION, in Kafka's order.
    fn member_of_generation(
        &mut self,
        id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<&mut Member, i16> {
        let current = self.generation;
        let m = self.member_mut(id).ok_or(codes::UNKNOWN_MEMBER_ID)?;
        if !instance_matches(m, instance_id) {
            return Err(codes::FENCED_INSTANCE_ID);
        }
        if generation != current {
            return Err(codes::ILLEGAL_GENERATION);
        }
        Ok(m)
    }

    fn is_pending(&self, id: &str) -> bool {
        self.pending.iter().any(|(p, _)| p == id)
    }

    fn forgettable(&self) -> bool {
        self.state == State::Empty && self.members.is_empty() && self.pending.is_empty()
    }

    /// Kafka's `supportsProtocols`: an empty group takes any non-empty
    /// offer; otherwise the type must match and one offered protocol must
    /// be supported by every other member.
    fn supports(
        &self,
        member_id: &str,
        protocol_type: &str,
        protocols: &[(String, Bytes)],
    ) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        let others: Vec<&Member> = self.members.iter().filter(|m| m.id != member_id).collect();
        if others.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols
                .iter()
                .any(|(name, _)| others.iter().all(|m| m.supports(name)))
    }

    /// Kafka's protocol selection: among the protocols every member
    /// supports, each member votes for the first of its own list; most
    /// votes wins, ties going to the leader's preference.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.first()?;
        let leader = self
            .leader
            .as_deref()
            .and_then(|l| self.member(l))
            .unwrap_or(first);
        let candidates: Vec<&str> = leader
            .protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| self.members.iter().all(|m| m.supports(name)))
            .collect();
        let mut votes = vec![0usize; candidates.len()];
        for m in &self.members {
            let vote = m
                .protocols
                .iter()
                .find_map(|(name, _)| candidates.iter().position(|c| c == name));
            if let Some(i) = vote {
                votes[i] += 1;
            }
        }
        let mut best: Option<usize> = None;
        for (i, &n) in votes.iter().enumerate() {
            if best.is_none_or(|b| n > votes[b]) {
                best = Some(i);
            }
        }
        best.map(|i| candidates[i].to_string())
    }

    fn rebalance_timeout(&self) -> Duration {
        self.members
            .iter()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default()
    }

    /// The answer a member gets when the join completes (or when it
    /// rejoins unchanged in the current generation).
    fn join_reply(&self, member_id: &str) -> JoinReply {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .iter()
                .map(|m| JoinedMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata(&protocol),
                })
                .collect()
        } else {
            vec![]
        };
        JoinReply {
            error: codes::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
        }
    }

    fn sync_reply(&self, assignment: Bytes) -> SyncReply {
        SyncReply {
            error: codes::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment,
        }
    }

    /// Starts a rebalance (Kafka's `prepareRebalance`): members must
    /// rejoin before the deadline.
    fn prepare_rebalance(&mut self, now: Instant) {
        if self.state == State::CompletingRebalance {
            for m in &mut self.members {
                m.assignment = Bytes::new();
                if let Some(tx) = m.sync.take() {
                    let _ = tx.send(SyncReply::error(codes::REBALANCE_IN_PROGRESS));
                }
            }
        }
        self.state = State::PreparingRebalance;
        self.rebalance_deadline = Some(now + self.rebalance_timeout());
        self.sync_deadline = None;
    }

    /// Rebalances unless one is already under way.
    fn maybe_prepare_rebalance(&mut self, now: Instant) {
        if matches!(
            self.state,
            State::Empty | State::Stable | State::CompletingRebalance
        ) {
            self.prepare_rebalance(now);
        }
    }

    /// Completes the join when every member rejoined and no announced
    /// member is still to come, or when `force`d at the deadline: members
    /// that did not rejoin are dropped, the generation advances and every
    /// waiting JoinGroup is answered.
    fn try_complete_join(&mut self, now: Instant, force: bool) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = self.pending.is_empty() && self.members.iter().all(|m| m.join.is_some());
        if !all_joined && !force {
            return;
        }
        self.pending.clear();
        self.members.retain(|m| m.join.is_some());
        if self
            .leader
            .as_deref()
            .is_none_or(|l| self.member(l).is_none())
        {
            self.leader = self.members.first().map(|m| m.id.clone());
        }
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        self.rebalance_deadline = None;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = self.select_protocol();
        debug_assert!(
            self.protocol.is_some(),
            "joins are checked for a common protocol"
        );
        self.state = State::CompletingRebalance;
        self.sync_deadline = Some(now + self.rebalance_timeout());
        let replies: Vec<JoinReply> = self
            .members
            .iter()
            .map(|m| self.join_reply(&m.id))
            .collect();
        for (m, reply) in self.members.iter_mut().zip(replies) {
            m.assignment = Bytes::new();
            m.synced = false;
            m.heartbeat_deadline = now + m.session_timeout;
            if let Some(tx) = m.join.take() {
                let _ = tx.send(reply);
            }
        }
    }

    /// Removes a member (left, expired or fenced) and rebalances.
    fn remove_member(&mut self, id: &str, error: i16, now: Instant) {
        let Some(i) = self.members.iter().position(|m| m.id == id) else {
            return;
        };
        let mut m = self.members.remove(i);
        m.fail_waiters(error);
        if self.leader.as_deref() == Some(id) {
            self.leader = self.members.first().map(|m| m.id.clone());
        }
        match self.state {
            State::Stable | State::CompletingRebalance => self.prepare_rebalance(now),
            State::PreparingRebalance => {}
            State::Empty | State::Dead => {}
        }
        self.try_complete_join(now, false);
    }

    /// Adds a member waiting in JoinGroup and rebalances.
    fn add_member(&mut self, p: JoinParams, id: String, now: Instant) -> Answer<JoinReply> {
        let (tx, rx) = oneshot::channel();
        if self.members.is_empty() {
            self.protocol_type = Some(p.protocol_type.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(id.clone());
        }
        self.pending.retain(|(p, _)| *p != id);
        let session_timeout = ms(p.session_timeout_ms);
        self.members.push(Member {
            id,
            instance_id: p.instance_id,
            client_id: p.client_id,
            client_host: p.client_host,
            session_timeout,
            rebalance_timeout: rebalance_timeout(p.rebalance_timeout_ms),
            protocols: p.protocols,
            assignment: Bytes::new(),
            heartbeat_deadline: now + session_timeout,
            join: Some(tx),
            sync: None,
            synced: false,
        });
        self.maybe_prepare_rebalance(now);
        self.try_complete_join(now, false);
        Answer::Wait(rx)
    }

    /// A known member joins again with new protocols (or during a
    /// rebalance): it waits for the join to complete.
    fn update_member(&mut self, p: JoinParams, now: Instant) -> Answer<JoinReply> {
        let (tx, rx) = oneshot::channel();
        let Some(m) = self.member_mut(&p.member_id) else {
            return Answer::Now(JoinReply::error(codes::UNKNOWN_MEMBER_ID, &p.member_id));
        };
        m.protocols = p.protocols;
        m.session_timeout = ms(p.session_timeout_ms);
        m.rebalance_timeout = rebalance_timeout(p.rebalance_timeout_ms);
        m.client_id = p.client_id;
        m.client_host = p.client_host;
        if let Some(old) = m.join.replace(tx) {
            // The same member joined twice (a retry after a lost answer):
            // the older request is told to rejoin.
            let _ = old.send(JoinReply::error(codes::REBALANCE_IN_PROGRESS, &m.id));
        }
        self.maybe_prepare_rebalance(now);
        self.try_complete_join(now, false);
        Answer::Wait(rx)
    }

    /// Timers: expired sessions and pending ids, rebalance and sync
    /// deadlines.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.join.is_none() && m.sync.is_none() && m.heartbeat_deadline <= now)
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            tracing::debug!(group = %self.name, member = %id, "kafka: group member session expired");
            self.remove_member(&id, codes::UNKNOWN_MEMBER_ID, now);
        }
        let before = self.pending.len();
        self.pending.retain(|(_, deadline)| *deadline > now);
        if self.pending.len() != before {
            self.try_complete_join(now, false);
        }
        if self.rebalance_deadline.is_some_and(|d| d <= now) {
            self.try_complete_join(now, true);
        }
        if self.sync_deadline.is_some_and(|d| d <= now) {
            self.sync_deadline = None;
            let late: Vec<String> = self
                .members
                .iter()
                .filter(|m| !m.synced)
                .map(|m| m.id.clone())
                .collect();
            for id in late {
                tracing::debug!(group = %self.name, member = %id, "kafka: group member sent no SyncGroup in time");
                self.remove_member(&id, codes::UNKNOWN_MEMBER_ID, now);
            }
        }
    }
}

fn ms(v: i32) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

fn rebalance_timeout(v: i32) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0).min(REBALANCE_TIMEOUT_MS_MAX))
}

/// Whether a request's group instance id fits the member (a mismatch is
/// FENCED_INSTANCE_ID).
fn instance_matches(m: &Member, instance_id: Option<&str>) -> bool {
    match (m.instance_id.as_deref(), instance_id) {
        // A dynamic member naming no instance, or a static one naming its
        // own.
        (None, None) => true,
        (Some(a), Some(b)) => a == b,
        // Requests that omit the instance id (older versions) are taken.
        (Some(_), None) => true,
        (None, Some(_)) => false,
    }
}

/// Every group this gateway coordinates, shared by all its connections.
pub struct Coordinator {
    limits: Limits,
    groups: Mutex<HashMap<GroupRef, Group>>,
    /// Makes member ids of this run differ from those of earlier runs.
    boot: u64,
    next_member: AtomicU64,
}

impl Coordinator {
    pub fn new(limits: Limits) -> Coordinator {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Coordinator {
            limits,
            groups: Mutex::new(HashMap::new()),
            boot,
            next_member: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<GroupRef, Group>> {
        // Every operation leaves the groups consistent before it can
        // panic (none should); a poisoned lock is taken as it is.
        self.groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn new_member_id(&self, prefix: &str) -> String {
        let mut end = prefix.len().min(MEMBER_ID_PREFIX_BYTES_MAX);
        while !prefix.is_char_boundary(end) {
            end -= 1;
        }
        let n = self.next_member.fetch_add(1, Ordering::Relaxed);
        format!("{}-{:016x}-{n}", &prefix[..end], self.boot)
    }

    /// JoinGroup.
    pub fn join(&self, g: &GroupRef, p: JoinParams, now: Instant) -> Answer<JoinReply> {
        let session = u64::try_from(p.session_timeout_ms).unwrap_or(0);
        if !(self.limits.session_timeout_ms_min..=self.limits.session_timeout_ms_max)
            .contains(&session)
        {
            return Answer::Now(JoinReply::error(
                codes::INVALID_SESSION_TIMEOUT,
                &p.member_id,
            ));
        }
        if p.protocols.len() > PROTOCOLS_MAX {
            return Answer::Now(JoinReply::error(codes::INVALID_REQUEST, &p.member_id));
        }
        let mut groups = self.lock();
        if !groups.contains_key(g) {
            if !p.member_id.is_empty() {
                return Answer::Now(JoinReply::error(codes::UNKNOWN_MEMBER_ID, &p.member_id));
            }
            if groups.len() >= GROUPS_MAX {
                tracing::warn!(groups = GROUPS_MAX, "kafka: too many consumer groups");
                return Answer::Now(JoinReply::error(codes::COORDINATOR_NOT_AVAILABLE, ""));
            }
        }
        let group = groups
            .entry(g.clone())
            .or_insert_with(|| Group::new(&p.name));
        let answer = if p.member_id.is_empty() {
            self.join_new(group, p, now)
        } else {
            Self::join_known(group, p, now)
        };
        if group.forgettable() {
            groups.remove(g);
        }
        answer
    }

    fn join_new(&self, group: &mut Group, p: JoinParams, now: Instant) -> Answer<JoinReply> {
        if !group.supports("", &p.protocol_type, &p.protocols) {
            return Answer::Now(JoinReply::error(codes::INCONSISTENT_GROUP_PROTOCOL, ""));
        }
        if let Some(instance) = p.instance_id.as_deref() {
            // Static membership: a new instance of a known id replaces the
            // old member (which is fenced) and the group rebalances.
            // One rebalance, as for a join: the old member is taken out
            // without one.
            let old = group
                .members
                .iter()
                .position(|m| m.instance_id.as_deref() == Some(instance));
            if let Some(i) = old {
                let mut old = group.members.remove(i);
                old.fail_waiters(codes::FENCED_INSTANCE_ID);
                if group.leader.as_deref() == Some(old.id.as_str()) {
                    group.leader = None;
                }
            }
        }
        if group.members.len() + group.pending.len() >= MEMBERS_MAX {
            return Answer::Now(JoinReply::error(codes::GROUP_MAX_SIZE_REACHED, ""));
        }
        let prefix = p.instance_id.as_deref().unwrap_or(&p.client_id);
        let id = self.new_member_id(prefix);
        if p.require_known_member_id && p.instance_id.is_none() {
            let deadline = now + ms(p.session_timeout_ms);
            group.pending.push((id.clone(), deadline));
            return Answer::Now(JoinReply::error(codes::MEMBER_ID_REQUIRED, &id));
        }
        group.add_member(p, id, now)
    }

    fn join_known(group: &mut Group, p: JoinParams, now: Instant) -> Answer<JoinReply> {
        let id = p.member_id.clone();
        if group.is_pending(&id) {
            if !group.supports(&id, &p.protocol_type, &p.protocols) {
                return Answer::Now(JoinReply::error(codes::INCONSISTENT_GROUP_PROTOCOL, &id));
            }
            return group.add_member(p, id, now);
        }
        let Some(m) = group.member(&id) else {
            return Answer::Now(JoinReply::error(codes::UNKNOWN_MEMBER_ID, &id));
        };
        if !instance_matches(m, p.instance_id.as_deref()) {
            return Answer::Now(JoinReply::error(codes::FENCED_INSTANCE_ID, &id));
        }
        if !group.supports(&id, &p.protocol_type, &p.protocols) {
            return Answer::Now(JoinReply::error(codes::INCONSISTENT_GROUP_PROTOCOL, &id));
        }
        let unchanged = m.protocols == p.protocols;
        let is_leader = group.leader.as_deref() == Some(id.as_str());
        match group.state {
            State::PreparingRebalance => group.update_member(p, now),
            // The member lost its JoinGroup answer: it gets it again.
            State::CompletingRebalance if unchanged => Answer::Now(group.join_reply(&id)),
            State::CompletingRebalance => group.update_member(p, now),
            // The leader rejoining asks for a new assignment (Kafka's rule).
            State::Stable if unchanged && !is_leader => {
                if let Some(m) = group.member_mut(&id) {
                    m.heartbeat_deadline = now + m.session_timeout;
                }
                Answer::Now(group.join_reply(&id))
            }
            State::Stable => group.update_member(p, now),
            State::Empty | State::Dead => {
                Answer::Now(JoinReply::error(codes::UNKNOWN_MEMBER_ID, &id))
            }
        }
    }

    /// SyncGroup.
    pub fn sync(&self, g: &GroupRef, p: SyncParams, now: Instant) -> Answer<SyncReply> {
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(g) else {
            return Answer::Now(SyncReply::error(codes::UNKNOWN_MEMBER_ID));
        };
        let assignment = match group.member_of_generation(
            &p.member_id,
            p.instance_id.as_deref(),
            p.generation,
        ) {
            Ok(m) => m.assignment.clone(),
            Err(code) => return Answer::Now(SyncReply::error(code)),
        };
        let type_differs = p
            .protocol_type
            .as_ref()
            .is_some_and(|t| group.protocol_type.as_ref() != Some(t));
        let protocol_differs = p
            .protocol
            .as_ref()
            .is_some_and(|t| group.protocol.as_ref() != Some(t));
        if type_differs || protocol_differs {
            return Answer::Now(SyncReply::error(codes::INCONSISTENT_GROUP_PROTOCOL));
        }
        match group.state {
            State::Empty | State::Dead => Answer::Now(SyncReply::error(codes::UNKNOWN_MEMBER_ID)),
            State::PreparingRebalance => {
                Answer::Now(SyncReply::error(codes::REBALANCE_IN_PROGRESS))
            }
            State::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let is_leader = group.leader.as_deref() == Some(p.member_id.as_str());
                if let Some(m) = group.member_mut(&p.member_id) {
                    m.synced = true;
                    if let Some(old) = m.sync.replace(tx) {
                        let _ = old.send(SyncReply::error(codes::REBALANCE_IN_PROGRESS));
                    }
                }
                if is_leader {
                    for m in &mut group.members {
                        m.assignment = p
                            .assignments
                            .iter()
                            .rev()
                            .find(|(id, _)| *id == m.id)
                            .map(|(_, a)| a.clone())
                            .unwrap_or_default();
                    }
                    group.state = State::Stable;
                    let replies: Vec<SyncReply> = group
                        .members
                        .iter()
                        .map(|m| group.sync_reply(m.assignment.clone()))
                        .collect();
                    for (m, reply) in group.members.iter_mut().zip(replies) {
                        if let Some(tx) = m.sync.take() {
                            m.heartbeat_deadline = now + m.session_timeout;
                            let _ = tx.send(reply);
                        }
                    }
                    if group.members.iter().all(|m| m.synced) {
                        group.sync_deadline = None;
                    }
                }
                Answer::Wait(rx)
            }
            State::Stable => {
                let reply = group.sync_reply(assignment);
                if let Some(m) = group.member_mut(&p.member_id) {
                    m.synced = true;
                    m.heartbeat_deadline = now + m.session_timeout;
                }
                if group.members.iter().all(|m| m.synced) {
                    group.sync_deadline = None;
                }
                Answer::Now(reply)
            }
        }
    }

    /// Heartbeat: the error code.
    pub fn heartbeat(
        &self,
        g: &GroupRef,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(g) else {
            return codes::UNKNOWN_MEMBER_ID;
        };
        let state = group.state;
        let m = match group.member_of_generation(member_id, instance_id, generation) {
            Ok(m) => m,
            Err(code) => return code,
        };
        match state {
            State::Empty | State::Dead => codes::UNKNOWN_MEMBER_ID,
            State::PreparingRebalance => {
                m.heartbeat_deadline = now + m.session_timeout;
                codes::REBALANCE_IN_PROGRESS
            }
            State::CompletingRebalance | State::Stable => {
                m.heartbeat_deadline = now + m.session_timeout;
                codes::NONE
            }
        }
    }

    /// LeaveGroup of `members` (member id, or "" and an instance id): one
    /// error code each.
    pub fn leave(
        &self,
        g: &GroupRef,
        members: &[(String, Option<String>)],
        now: Instant,
    ) -> Vec<i16> {
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(g) else {
            return vec![codes::UNKNOWN_MEMBER_ID; members.len()];
        };
        let codes: Vec<i16> = members
            .iter()
            .map(|(id, instance)| {
                if !id.is_empty() && group.is_pending(id) {
                    group.pending.retain(|(p, _)| p != id);
                    group.try_complete_join(now, false);
                    return codes::NONE;
                }
                let found = if id.is_empty() {
                    instance.as_deref().and_then(|i| {
                        group
                            .members
                            .iter()
                            .find(|m| m.instance_id.as_deref() == Some(i))
                    })
                } else {
                    group.member(id)
                };
                let Some(m) = found else {
                    return codes::UNKNOWN_MEMBER_ID;
                };
                if !instance_matches(m, instance.as_deref()) {
                    return codes::FENCED_INSTANCE_ID;
                }
                let id = m.id.clone();
                group.remove_member(&id, codes::UNKNOWN_MEMBER_ID, now);
                codes::NONE
            })
            .collect();
        if group.forgettable() {
            groups.remove(g);
        }
        codes
    }

    /// Whether an OffsetCommit of this generation and member may commit
    /// (Kafka's `validateOffsetCommit`): the error code. Generation -1 with
    /// no members is a simple consumer's commit.
    pub fn check_commit(
        &self,
        g: &GroupRef,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
    ) -> i16 {
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(g) else {
            return if generation < 0 {
                codes::NONE
            } else {
                codes::ILLEGAL_GENERATION
            };
        };
        if generation < 0 && group.members.is_empty() {
            return codes::NONE;
        }
        let state = group.state;
        let m = match group.member_of_generation(member_id, instance_id, generation) {
            Ok(m) => m,
            Err(code) => return code,
        };
        match state {
            State::CompletingRebalance => codes::REBALANCE_IN_PROGRESS,
            State::Empty | State::Dead => codes::UNKNOWN_MEMBER_ID,
            // Members commit during a rebalance too (before giving up
            // their partitions).
            State::Stable | State::PreparingRebalance => {
                m.heartbeat_deadline = now + m.session_timeout;
                codes::NONE
            }
        }
    }

    /// DescribeGroups: `None` for a group not coordinated (reported Dead).
    pub fn describe(&self, g: &GroupRef) -> Option<Summary> {
        let groups = self.lock();
        let group = groups.get(g)?;
        let stable = group.state == State::Stable;
        let protocol = if stable {
            group.protocol.clone().unwrap_or_default()
        } else {
            String::new()
        };
        Some(Summary {
            state: group.state,
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            members: group
                .members
                .iter()
                .map(|m| MemberSummary {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata(&protocol)
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
            protocol,
        })
    }

    /// Every coordinated group (ListGroups filters by authorization).
    pub fn list(&self) -> Vec<Listed> {
        self.lock()
            .iter()
            .map(|(g, group)| Listed {
                group: g.clone(),
                name: group.name.clone(),
                protocol_type: group.protocol_type.clone().unwrap_or_default(),
                state: group.state,
            })
            .collect()
    }

    /// Forgets a group this broker no longer coordinates (its coordinator
    /// moved to another broker): members waiting in JoinGroup or SyncGroup
    /// are answered NOT_COORDINATOR, so they look the coordinator up again
    /// and rejoin there. True when the group was here.
    pub fn unload(&self, g: &GroupRef) -> bool {
        let Some(mut group) = self.lock().remove(g) else {
            return false;
        };
        for m in &mut group.members {
            m.fail_waiters(codes::NOT_COORDINATOR);
        }
        tracing::debug!(group = %group.name, "kafka: group coordinated elsewhere now; dropped");
        true
    }

    /// Runs the timers of every group; forgets groups left empty.
    pub fn sweep(&self, now: Instant) {
        let mut groups = self.lock();
        groups.retain(|_, group| {
            group.sweep(now);
            !group.forgettable()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g() -> GroupRef {
        GroupRef {
            stream: "/s".into(),
            group: "g".into(),
        }
    }

    fn params(member_id: &str, protocols: &[&str]) -> JoinParams {
        JoinParams {
            name: "g".into(),
            member_id: member_id.into(),
            instance_id: None,
            require_known_member_id: true,
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("{member_id}:{p}"))))
                .collect(),
        }
    }

    fn now_reply(a: Answer<JoinReply>) -> JoinReply {
        match a {
            Answer::Now(r) => r,
            Answer::Wait(_) => panic!("expected an answer now"),
        }
    }

    fn waiting<T>(a: Answer<T>) -> oneshot::Receiver<T> {
        match a {
            Answer::Wait(rx) => rx,
            Answer::Now(_) => panic!("expected to wait"),
        }
    }

    fn ready<T>(rx: &mut oneshot::Receiver<T>) -> Option<T> {
        rx.try_recv().ok()
    }

    fn limits() -> Limits {
        Limits {
            session_timeout_ms_min: 1,
            session_timeout_ms_max: 60_000,
        }
    }

    /// A new member id (MEMBER_ID_REQUIRED), then the join with it.
    fn join_new(
        c: &Coordinator,
        protocols: &[&str],
        now: Instant,
    ) -> (String, oneshot::Receiver<JoinReply>) {
        let r = now_reply(c.join(&g(), params("", protocols), now));
        assert_eq!(r.error, codes::MEMBER_ID_REQUIRED);
        assert!(!r.member_id.is_empty());
        let rx = waiting(c.join(&g(), params(&r.member_id, protocols), now));
        (r.member_id, rx)
    }

    fn sync(
        c: &Coordinator,
        id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Answer<SyncReply> {
        c.sync(
            &g(),
            SyncParams {
                member_id: id.into(),
                instance_id: None,
                generation,
                protocol_type: Some("consumer".into()),
                protocol: None,
                assignments,
            },
            now,
        )
    }

    #[test]
    fn two_members_join_sync_and_rebalance_when_one_leaves() {
        let c = Coordinator::new(limits());
        let t = Instant::now();
        // Both announce themselves before either joins: one generation.
        let a = now_reply(c.join(&g(), params("", &["range", "rr"]), t));
        let b = now_reply(c.join(&g(), params("", &["rr", "range"]), t));
        let mut rx_a = waiting(c.join(&g(), params(&a.member_id, &["range", "rr"]), t));
        assert!(ready(&mut rx_a).is_none(), "b is still to come");
        let mut rx_b = waiting(c.join(&g(), params(&b.member_id, &["rr", "range"]), t));
        let ra = ready(&mut rx_a).unwrap();
        let rb = ready(&mut rx_b).unwrap();
        assert_eq!((ra.error, ra.generation), (0, 1));
        assert_eq!(ra.leader, a.member_id);
        assert_eq!(ra.members.len(), 2, "the leader sees everyone");
        assert!(rb.members.is_empty());
        // One vote each: the tie goes to the leader's preference.
        assert_eq!(ra.protocol.as_deref(), Some("range"));
        assert_eq!(
            ra.members[1].metadata,
            Bytes::from(format!("{}:range", b.member_id))
        );

        // The follower syncs first and waits for the leader.
        let mut sb = waiting(sync(&c, &b.member_id, 1, vec![], t));
        assert!(ready(&mut sb).is_none());
        assert_eq!(c.heartbeat(&g(), &b.member_id, None, 1, t), 0);
        let assignments = vec![
            (a.member_id.clone(), Bytes::from_static(b"A")),
            (b.member_id.clone(), Bytes::from_static(b"B")),
        ];
        let mut sa = waiting(sync(&c, &a.member_id, 1, assignments, t));
        assert_eq!(ready(&mut sa).unwrap().assignment, Bytes::from_static(b"A"));
        assert_eq!(ready(&mut sb).unwrap().assignment, Bytes::from_static(b"B"));
        assert_eq!(c.describe(&g()).unwrap().state, State::Stable);

        // Offsets: members of the generation commit; others do not.
        assert_eq!(c.check_commit(&g(), 1, &a.member_id, None, t), 0);
        assert_eq!(
            c.check_commit(&g(), 0, &a.member_id, None, t),
            codes::ILLEGAL_GENERATION
        );
        assert_eq!(
            c.check_commit(&g(), 1, "stranger", None, t),
            codes::UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            c.check_commit(&g(), -1, "", None, t),
            codes::UNKNOWN_MEMBER_ID
        );

        // a leaves: b is told to rejoin, and is alone in generation 2.
        assert_eq!(c.leave(&g(), &[(a.member_id.clone(), None)], t), vec![0]);
        assert_eq!(
            c.heartbeat(&g(), &b.member_id, None, 1, t),
            codes::REBALANCE_IN_PROGRESS
        );
        let mut rx_b = waiting(c.join(&g(), params(&b.member_id, &["rr", "range"]), t));
        let rb = ready(&mut rx_b).unwrap();
        assert_eq!((rb.error, rb.generation), (0, 2));
        assert_eq!(rb.leader, b.member_id);
        assert_eq!(rb.protocol.as_deref(), Some("rr"));
        assert_eq!(
            c.heartbeat(&g(), &b.member_id, None, 1, t),
            codes::ILLEGAL_GENERATION
        );

        // The last member leaves: the group is forgotten.
        assert_eq!(c.leave(&g(), &[(b.member_id.clone(), None)], t), vec![0]);
        assert!(c.describe(&g()).is_none());
        assert_eq!(c.check_commit(&g(), -1, "", None, t), 0, "simple consumer");
        assert_eq!(
            c.check_commit(&g(), 2, &b.member_id, None, t),
            codes::ILLEGAL_GENERATION
        );
    }

    #[test]
    fn members_that_do_not_rejoin_are_dropped_at_the_rebalance_deadline() {
        let c = Coordinator::new(limits());
        let t = Instant::now();
        let (a, mut rx) = join_new(&c, &["range"], t);
        assert_eq!(ready(&mut rx).unwrap().generation, 1);
        waiting(sync(&c, &a, 1, vec![], t));
        let (b, mut rx_b) = join_new(&c, &["range"], t);
        // a keeps its session but does not rejoin.
        assert!(ready(&mut rx_b).is_none());
        for s in [9, 18, 27] {
            let at = t + Duration::from_secs(s);
            assert_eq!(
                c.heartbeat(&g(), &a, None, 1, at),
                codes::REBALANCE_IN_PROGRESS
            );
            c.sweep(at);
        }
        c.sweep(t + Duration::from_millis(29_999));
        assert!(ready(&mut rx_b).is_none());
        c.sweep(t + Duration::from_millis(30_000));
        let r = ready(&mut rx_b).unwrap();
        assert_eq!((r.generation, r.leader.as_str()), (2, b.as_str()));
        assert_eq!(r.members.len(), 1);
        assert_eq!(c.heartbeat(&g(), &a, None, 1, t), codes::UNKNOWN_MEMBER_ID);
    }

    #[test]
    fn sessions_expire_and_the_rest_rebalance() {
        let c = Coordinator::new(limits());
        let t = Instant::now();
        let r_a = now_reply(c.join(&g(), params("", &["range"]), t));
        let r_b = now_reply(c.join(&g(), params("", &["range"]), t));
        let mut rx_a = waiting(c.join(&g(), params(&r_a.member_id, &["range"]), t));
        let mut rx_b = waiting(c.join(&g(), params(&r_b.member_id, &["range"]), t));
        let (ra, _) = (ready(&mut rx_a).unwrap(), ready(&mut rx_b).unwrap());
        let (a, b) = (r_a.member_id, r_b.member_id);
        assert_eq!(ra.leader, a);
        let mut sb = waiting(sync(&c, &b, 1, vec![], t));
        waiting(sync(&c, &a, 1, vec![], t));
        ready(&mut sb).unwrap();

        // b heartbeats, a goes silent: a expires after its session.
        let later = t + Duration::from_millis(6_000);
        assert_eq!(c.heartbeat(&g(), &b, None, 1, later), 0);
        c.sweep(t + Duration::from_millis(9_999));
        assert_eq!(c.describe(&g()).unwrap().members.len(), 2);
        c.sweep(t + Duration::from_millis(10_000));
        let d = c.describe(&g()).unwrap();
        assert_eq!(d.members.len(), 1);
        assert_eq!(d.state, State::PreparingRebalance);
        let at = t + Duration::from_millis(10_100);
        assert_eq!(
            c.heartbeat(&g(), &b, None, 1, at),
            codes::REBALANCE_IN_PROGRESS
        );
        let mut rx_b = waiting(c.join(&g(), params(&b, &["range"]), at));
        let r = ready(&mut rx_b).unwrap();
        assert_eq!((r.generation, r.leader.as_str()), (2, b.as_str()));
    }

    #[test]
    fn a_leader_that_never_syncs_is_dropped_at_the_sync_deadline() {
        let c = Coordinator::new(limits());
        let t = Instant::now();
        // Sessions outlast the rebalance timeout: the sync deadline acts.
        let long = |id: &str| {
            let mut p = params(id, &["range"]);
            p.session_timeout_ms = 50_000;
            p
        };
        let r_a = now_reply(c.join(&g(), long(""), t));
        let r_b = now_reply(c.join(&g(), long(""), t));
        let _rx_a = waiting(c.join(&g(), long(&r_a.member_id), t));
        let mut rx_b = waiting(c.join(&g(), long(&r_b.member_id), t));
        ready(&mut rx_b).unwrap();
        c.sweep(t + Duration::from_millis(29_999));
        let mut sb = waiting(sync(&c, &r_b.member_id, 1, vec![], t));
        c.sweep(t + Duration::from_millis(30_000));
        assert_eq!(ready(&mut sb).unwrap().error, codes::REBALANCE_IN_PROGRESS);
        assert_eq!(c.describe(&g()).unwrap().members.len(), 1);
    }

    #[test]
    fn joins_are_checked() {
        let c = Coordinator::new(limits());
        let t = Instant::now();
        let mut p = params("", &["range"]);
        p.session_timeout_ms = 60_001;
        assert_eq!(
            now_reply(c.join(&g(), p, t)).error,
            codes::INVALID_SESSION_TIMEOUT
        );
        assert_eq!(
            now_reply(c.join(&g(), params("nobody", &["range"]), t)).error,
            codes::UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            now_reply(c.join(&g(), params("", &[]), t)).error,
            codes::INCONSISTENT_GROUP_PROTOCOL
        );
        assert!(
            c.describe(&g()).is_none(),
            "failed joins leave nothing behind"
        );

        let (_a, mut rx) = join_new(&c, &["range"], t);
        ready(&mut rx).unwrap();
        assert_eq!(
            now_reply(c.join(&g(), params("", &["sticky"]), t)).error,
            codes::INCONSISTENT_GROUP_PROTOCOL
        );
        let mut other = params("", &["range"]);
        other.protocol_type = "connect".into();
        assert_eq!(
            now_reply(c.join(&g(), other, t)).error,
            codes::INCONSISTENT_GROUP_PROTOCOL
        );
        // An announced member that never joins is forgotten after its
        // session timeout.
        let r = now_reply(c.join(&g(), params("", &["range"]), t));
        assert_eq!(r.error, codes::MEMBER_ID_REQUIRED);
        c.sweep(t + Duration::from_millis(10_000));
        assert_eq!(
            now_reply(c.join(&g(), params(&r.member_id, &["range"]), t)).error,
            codes::UNKNOWN_MEMBER_ID
        );
    }

    #[test]
    fn old_clients_join_without_a_member_id_round() {
        let c = Coordinator::new(limits());
        let t = Instant::now();
        let mut p = params("", &["range"]);
        p.require_known_member_id = false;
        let mut rx = waiting(c.join(&g(), p, t));
        let r = ready(&mut rx).unwrap();
        assert_eq!((r.error, r.generation), (0, 1));
        assert_eq!(r.leader, r.member_id);
    }

    #[test]
    fn a_static_member_rejoining_fences_its_old_self() {
        let c = Coordinator::new(limits());
        let t = Instant::now();
        let mut p = params("", &["range"]);
        p.instance_id = Some("pod-1".into());
        let mut rx = waiting(c.join(&g(), p.clone(), t));
        let first = ready(&mut rx).unwrap();
        assert_eq!(first.generation, 1);
        let mut rx = waiting(c.join(&g(), p, t));
        let second = ready(&mut rx).unwrap();
        assert_eq!(second.generation, 2);
        assert_ne!(first.member_id, second.member_id);
        assert_eq!(
            c.heartbeat(&g(), &first.member_id, Some("pod-1"), 2, t),
            codes::UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            c.leave(&g(), &[(String::new(), Some("pod-1".into()))], t),
            vec![0]
        );
        assert!(c.describe(&g()).is_none());
    }

    /// A group whose coordinator moved is dropped: members waiting for a
    /// rebalance are told NOT_COORDINATOR, and a member that comes back
    /// (to a broker coordinating it again) is unknown and joins afresh.
    #[test]
    fn an_unloaded_group_answers_its_waiters_and_is_forgotten() {
        let c = Coordinator::new(limits());
        let t = Instant::now();
        let (a, mut rx_a) = join_new(&c, &["range"], t);
        let ra = ready(&mut rx_a).unwrap();
        assert_eq!((ra.error, ra.generation), (0, 1));
        // A second member starts a rebalance: its join waits for a's.
        let (_, mut rx_b) = join_new(&c, &["range"], t);
        assert!(ready(&mut rx_b).is_none(), "b waits for a to rejoin");
        assert!(c.unload(&g()));
        assert!(!c.unload(&g()), "gone already");
        let rb = ready(&mut rx_b).expect("the waiting member is answered");
        assert_eq!(rb.error, codes::NOT_COORDINATOR);
        assert!(c.describe(&g()).is_none());
        assert!(c.list().is_empty());
        assert_eq!(
            c.heartbeat(&g(), &a, None, 1, t),
            codes::UNKNOWN_MEMBER_ID,
            "membership does not come back with the coordinator"
        );
        let r = now_reply(c.join(&g(), params(&a, &["range"]), t));
        assert_eq!(r.error, codes::UNKNOWN_MEMBER_ID);
    }
}
