//! The placement driver's decisions: given the cluster (nodes with their
//! labels and last heartbeat, shards with their replicas) and the time,
//! which membership and leadership steps to take next.
//!
//! Pure logic: no clock (time is an argument), no I/O, no randomness, so a
//! scenario table drives it deterministically. The runtime that feeds it
//! heartbeats and carries out its steps through raft-rs `ConfChangeV2`
//! (add learner → promote through joint consensus → transfer leadership →
//! remove) is [`crate::pd`].
//!
//! Rules, in order, per shard (one step per shard per plan: raft-rs turns a
//! second change proposed while one is pending into an empty entry):
//! 1. A shard in a joint configuration leaves it first.
//! 2. A shard with a step in flight is left alone.
//! 3. A caught-up learner is promoted (raft-rs never promotes one itself).
//! 4. Too few good voters (on nodes that are up or suspect and not
//!    draining): add a learner on the best node (see [`Settings`] for the
//!    label that spreads replicas first).
//! 5. A voter on a down or draining node, once the good voters suffice, is
//!    removed (its leadership transferred away first).
//! 6. More good voters than wanted: the worst placed one goes (a duplicate
//!    of a label value first, then the node holding most replicas).
//! 7. Voters that share a label value while a good node has an unused
//!    value: a learner is added there (rule 6 then removes the duplicate).
//!
//! Then, when no shard needed repair other than the steps of moves under
//! way, one balancing step (a swap is two). A move under way counts as done
//! (on the node it goes to, not on the one it leaves), so moves overlap,
//! each new one planned against the cluster as the earlier ones will leave
//! it, within the step limits and one balancing snapshot per target node:
//! 1. Replica counts: a replica moves from the node holding most replicas to
//!    the one holding fewest when they are more than 10 % (and at least 2)
//!    apart from the mean; of the shards that may move, the one that best
//!    evens out their bytes.
//! 2. Bytes: when the bytes held per node (the sum of their replicas'
//!    sizes, as heartbeats measure them) are more than 10 % off the mean and
//!    [`Settings::bytes_slack`] apart, a shard smaller than the difference
//!    moves between the widest pair that has one, or, when a lone move
//!    would unbalance the counts, a large and a smaller shard swap places.
//!    Every such move shrinks the sum of squared loads, so balancing ends.
//! 3. Leaders: a leader moves from the node leading most shards to the one
//!    leading fewest, by the same 10 % rule, never against a preference.
//!
//! A move is [`Step::Move`]: a learner added on the target, promoted by rule
//! 3; the over-replication that follows (rule 6) removes the replica on the
//! node it left, which the caller remembers ([`ShardView::moving_from`]).
//! A move never lowers the number of distinct label values a shard spans.
//! Every step counts against
//! [`Settings::steps_per_node_max`] for each node it touches, and an added
//! learner against [`Settings::snapshots_per_node_max`] of its target.

use std::collections::{BTreeMap, BTreeSet};

use berth_raft::{NodeId, ShardId};

/// How the driver judges nodes and how much it may do at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// A node silent this long is suspect: it keeps its replicas but gets
    /// no new ones.
    pub suspect_after_ms: u64,
    /// A node silent this long is down: its replicas are re-created
    /// elsewhere (`--node-down-timeout`, 5 min by default).
    pub down_after_ms: u64,
    /// The label replicas spread across before they spread across nodes.
    pub spread_label: String,
    /// Steps in flight that may touch one node.
    pub steps_per_node_max: usize,
    /// Learners catching up (by snapshot) on one node at once.
    pub snapshots_per_node_max: usize,
    /// Of those, learners of balancing moves: balancing is never urgent, so
    /// it takes one snapshot stream per node and leaves the rest to repairs
    /// and foreground traffic (a snapshot is built and installed whole).
    /// The next move still starts while the last one's learner is promoted
    /// and its old replica removed.
    pub move_snapshots_per_node_max: usize,
    /// Bytes held per node are balanced only when the most and the least
    /// loaded node differ by more than this (moving a small shard to even
    /// out a small difference is churn, not balance).
    pub bytes_slack: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            suspect_after_ms: 30_000,
            down_after_ms: 5 * 60_000,
            spread_label: "zone".into(),
            steps_per_node_max: 4,
            snapshots_per_node_max: 2,
            move_snapshots_per_node_max: 1,
            bytes_slack: 64 << 20,
        }
    }
}

/// A node as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    pub labels: BTreeMap<String, String>,
    /// When its last heartbeat arrived (ms, the caller's clock).
    pub heartbeat_ms: u64,
    /// Being decommissioned: its replicas move away.
    pub draining: bool,
}

/// A shard as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardView {
    pub id: ShardId,
    /// Replicas wanted (the volume's replication factor).
    pub replication: u32,
    pub voters: Vec<NodeId>,
    /// Learners, and whether each has caught up with the leader's log.
    pub learners: Vec<(NodeId, bool)>,
    pub leader: Option<NodeId>,
    /// In a joint configuration (a membership change half done).
    pub joint: bool,
    /// A step of this shard is in flight.
    pub busy: bool,
    /// Keep the leader on a node with this label (key, value) when a voter
    /// has it.
    pub prefer_leader: Option<(String, String)>,
    /// Logical size of one replica (0: not measured yet).
    pub bytes: u64,
    /// A [`Step::Move`] of this shard is under way off this node: once the
    /// new replica is a voter, this one is the voter removed.
    pub moving_from: Option<NodeId>,
    /// Where that move goes. Balancing counts a move under way as done, so
    /// further moves may be planned beside it.
    pub moving_to: Option<NodeId>,
}

/// What the driver judges a node to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Up,
    Suspect,
    Down,
    Draining,
}

/// One step of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    LeaveJoint {
        shard: ShardId,
    },
    AddLearner {
        shard: ShardId,
        node: NodeId,
    },
    Promote {
        shard: ShardId,
        node: NodeId,
    },
    TransferLeader {
        shard: ShardId,
        to: NodeId,
    },
    Remove {
        shard: ShardId,
        node: NodeId,
    },
    /// A balancing move, begun as [`Step::AddLearner`] on `to`; the caller
    /// remembers `from` and passes it back as [`ShardView::moving_from`],
    /// so the over-replication it leaves removes `from`, not another voter.
    Move {
        shard: ShardId,
        from: NodeId,
        to: NodeId,
    },
}

impl Step {
    /// The shard it changes.
    pub fn shard(&self) -> ShardId {
        match *self {
            Step::LeaveJoint { shard }
            | Step::AddLearner { shard, .. }
            | Step::Promote { shard, .. }
            | Step::TransferLeader { shard, .. }
            | Step::Remove { shard, .. }
            | Step::Move { shard, .. } => shard,
        }
    }

    fn nodes(&self) -> Vec<NodeId> {
        match *self {
            Step::LeaveJoint { .. } => Vec::new(),
            Step::AddLearner { node, .. }
            | Step::Promote { node, .. }
            | Step::Remove { node, .. } => vec![node],
            Step::TransferLeader { to, .. } => vec![to],
            Step::Move { from, to, .. } => vec![from, to],
        }
    }
}

/// The state of `n` at `now_ms`.
pub fn node_state(n: &NodeView, now_ms: u64, s: &Settings) -> NodeState {
    let silent_ms = now_ms.saturating_sub(n.heartbeat_ms);
    if silent_ms >= s.down_after_ms {
        NodeState::Down
    } else if n.draining {
        NodeState::Draining
    } else if silent_ms >= s.suspect_after_ms {
        NodeState::Suspect
    } else {
        NodeState::Up
    }
}

/// The working state of one plan: who holds what, and what each node is
/// already asked to do.
struct Plan<'a> {
    s: &'a Settings,
    states: BTreeMap<NodeId, NodeState>,
    labels: BTreeMap<NodeId, Option<String>>,
    /// Every label of every node.
    all_labels: BTreeMap<NodeId, BTreeMap<String, String>>,
    /// Replicas (voters and learners) per node, counting steps planned.
    replicas: BTreeMap<NodeId, usize>,
    /// Bytes held per node (the sizes of its replicas), counting steps planned.
    bytes: BTreeMap<NodeId, u64>,
    /// Size of each shard's replica.
    sizes: BTreeMap<ShardId, u64>,
    /// Steps touching each node, planned here.
    steps: BTreeMap<NodeId, usize>,
    snapshots: BTreeMap<NodeId, usize>,
    /// Shards with a move under way: the node each leaves (already not
    /// counted there).
    leaving: BTreeMap<ShardId, NodeId>,
    out: Vec<Step>,
}

impl Plan<'_> {
    fn state(&self, n: NodeId) -> NodeState {
        // A replica on a node the map no longer has is as good as down.
        self.states.get(&n).copied().unwrap_or(NodeState::Down)
    }

    /// Holds its replicas: up or suspect, not draining.
    fn good(&self, n: NodeId) -> bool {
        matches!(self.state(n), NodeState::Up | NodeState::Suspect)
    }

    fn label(&self, n: NodeId) -> Option<&str> {
        self.labels.get(&n).and_then(|l| l.as_deref())
    }

    fn has_room(&self, n: NodeId) -> bool {
        self.steps.get(&n).copied().unwrap_or(0) < self.s.steps_per_node_max
    }

    fn push(&mut self, step: Step) {
        for n in step.nodes() {
            *self.steps.entry(n).or_default() += 1;
        }
        match step {
            Step::AddLearner { shard, node }
            | Step::Move {
                shard, to: node, ..
            } => {
                *self.snapshots.entry(node).or_default() += 1;
                *self.replicas.entry(node).or_default() += 1;
                let size = self.size(shard);
                *self.bytes.entry(node).or_default() += size;
            }
            // The end of a move, already counted as done.
            Step::Remove { shard, node } if self.leaving.get(&shard) == Some(&node) => {}
            Step::Remove { shard, node } => {
                let r = self.replicas.entry(node).or_default();
                *r = r.saturating_sub(1);
                let size = self.size(shard);
                let b = self.bytes.entry(node).or_default();
                *b = b.saturating_sub(size);
            }
            _ => {}
        }
        if let Step::Move { shard, from, .. } = step {
            // The removal it leads to, counted now so one plan does not
            // move more off `from` than balance wants.
            let r = self.replicas.entry(from).or_default();
            *r = r.saturating_sub(1);
            let size = self.size(shard);
            let b = self.bytes.entry(from).or_default();
            *b = b.saturating_sub(size);
        }
        self.out.push(step);
    }

    fn size(&self, shard: ShardId) -> u64 {
        self.sizes.get(&shard).copied().unwrap_or(0)
    }

    fn count(&self, n: NodeId) -> usize {
        self.replicas.get(&n).copied().unwrap_or(0)
    }

    fn held(&self, n: NodeId) -> u64 {
        self.bytes.get(&n).copied().unwrap_or(0)
    }

    /// The best node for a new replica of a shard held on `holders`: up
    /// (not suspect), with room, not a holder; an unused label value
    /// first, then fewest replicas, then lowest id.
    fn target(&self, holders: &[NodeId]) -> Option<NodeId> {
        let used: BTreeSet<&str> = holders.iter().filter_map(|n| self.label(*n)).collect();
        self.states
            .iter()
            .filter(|(n, st)| **st == NodeState::Up && !holders.contains(n))
            .map(|(n, _)| *n)
            .filter(|n| self.has_room(*n))
            .filter(|n| self.snapshots.get(n).copied().unwrap_or(0) < self.s.snapshots_per_node_max)
            .min_by_key(|n| {
                let reused = self.label(*n).is_some_and(|l| used.contains(l));
                (reused, self.replicas.get(n).copied().unwrap_or(0), *n)
            })
    }

    /// Removes `node`'s voter from `shard`, moving leadership away first.
    fn remove(&mut self, shard: &ShardView, node: NodeId) {
        if shard.leader == Some(node) {
            let to = shard
                .voters
                .iter()
                .copied()
                .filter(|v| *v != node && self.good(*v))
                .min_by_key(|v| (self.replicas.get(v).copied().unwrap_or(0), *v));
            if let Some(to) = to {
                self.push(Step::TransferLeader {
                    shard: shard.id,
                    to,
                });
            }
        } else if self.has_room(node) || !self.good(node) {
            self.push(Step::Remove {
                shard: shard.id,
                node,
            });
        }
    }

    /// The good voter that is worst placed: a duplicate of a label value
    /// first, then the node holding most replicas, then most bytes, then
    /// the highest id.
    fn worst(&self, voters: &[NodeId]) -> Option<NodeId> {
        voters.iter().copied().max_by_key(|v| {
            let dup = self
                .label(*v)
                .is_some_and(|l| voters.iter().filter(|o| self.label(**o) == Some(l)).count() > 1);
            (dup, self.count(*v), self.held(*v), *v)
        })
    }

    /// Rules 1–7 for one shard; whether it needed anything.
    fn repair(&mut self, shard: &ShardView) -> bool {
        if shard.joint {
            self.push(Step::LeaveJoint { shard: shard.id });
            return true;
        }
        if shard.busy {
            return true;
        }
        // A learner whose node died will never catch up: it goes first.
        if let Some((node, _)) = shard
            .learners
            .iter()
            .find(|(n, _)| self.state(*n) == NodeState::Down)
        {
            self.push(Step::Remove {
                shard: shard.id,
                node: *node,
            });
            return true;
        }
        if let Some((node, _)) = shard
            .learners
            .iter()
            .find(|(n, ready)| *ready && self.good(*n))
        {
            self.push(Step::Promote {
                shard: shard.id,
                node: *node,
            });
            return true;
        }
        let good_nodes = self.states.keys().filter(|n| self.good(**n)).count();
        let wanted = (shard.replication.max(1) as usize).min(good_nodes.max(1));
        let good: Vec<NodeId> = shard
            .voters
            .iter()
            .copied()
            .filter(|v| self.good(*v))
            .collect();
        let catching_up = shard.learners.iter().filter(|(n, _)| self.good(*n)).count();
        let holders: Vec<NodeId> = shard
            .voters
            .iter()
            .copied()
            .chain(shard.learners.iter().map(|(n, _)| *n))
            .collect();
        if good.len() + catching_up < wanted {
            if let Some(node) = self.target(&holders) {
                self.push(Step::AddLearner {
                    shard: shard.id,
                    node,
                });
            }
            return true;
        }
        if catching_up > 0 {
            return true; // wait for the learner
        }
        if let Some(bad) = shard.voters.iter().copied().find(|v| !self.good(*v)) {
            if good.len() >= wanted {
                self.remove(shard, bad);
            }
            return true;
        }
        if good.len() > wanted {
            // The end of a move takes the replica it was moving away.
            let moved = shard.moving_from.filter(|f| good.contains(f));
            if let Some(w) = moved.or_else(|| self.worst(&good)) {
                self.remove(shard, w);
            }
            return true;
        }
        // Rule 7: a label value held twice while another is free.
        let values: Vec<&str> = good.iter().filter_map(|v| self.label(*v)).collect();
        let distinct: BTreeSet<&str> = values.iter().copied().collect();
        if distinct.len() < values.len() {
            let free = self.states.iter().any(|(n, st)| {
                *st == NodeState::Up && self.label(*n).is_some_and(|l| !distinct.contains(l))
            });
            if free {
                if let Some(node) = self.target(&holders) {
                    if self.label(node).is_some_and(|l| !distinct.contains(l)) {
                        self.push(Step::AddLearner {
                            shard: shard.id,
                            node,
                        });
                        return true;
                    }
                }
            }
        }
        false
    }

    /// A move (or a swap) of bytes between two up nodes, when the bytes
    /// held per node are more than 10 % off their mean and the most and
    /// least loaded differ by more than [`Settings::bytes_slack`]. Pairs
    /// are tried from the widest difference down. A move must leave
    /// replica counts balanced and shrink its pair's difference (a shard
    /// smaller than it), so the sum of squared loads falls with every move
    /// and balancing ends; a swap exchanges a large shard for a smaller one
    /// when a lone move would unbalance the counts. Whether it planned
    /// anything.
    fn balance_bytes(&mut self, shards: &[ShardView], up: &[NodeId]) -> bool {
        let load: Vec<(u64, NodeId)> = up.iter().map(|n| (self.held(*n), *n)).collect();
        let mean = load.iter().map(|(b, _)| *b as f64).sum::<f64>() / load.len() as f64;
        let (Some(lo), Some(hi)) = (load.iter().min(), load.iter().max()) else {
            return false;
        };
        let out = hi.0 as f64 > mean * 1.1 || (lo.0 as f64) < mean * 0.9;
        if !out || hi.0 - lo.0 <= self.s.bytes_slack {
            return false;
        }
        let mut pairs: Vec<(u64, NodeId, NodeId)> = load
            .iter()
            .flat_map(|(bf, from)| {
                load.iter()
                    .filter(move |(bt, _)| bf > bt)
                    .map(move |(bt, to)| (bf - bt, *from, *to))
            })
            .filter(|(d, _, _)| *d > self.s.bytes_slack)
            .collect();
        pairs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        pairs
            .into_iter()
            .any(|(d, from, to)| self.move_bytes(shards, up, i128::from(d), from, to))
    }

    /// One move (or swap) shrinking the difference `diff` of bytes between
    /// `from` and `to` (see [`Plan::balance_bytes`]).
    fn move_bytes(
        &mut self,
        shards: &[ShardView],
        up: &[NodeId],
        diff: i128,
        from: NodeId,
        to: NodeId,
    ) -> bool {
        if !self.can_receive(to) {
            return false;
        }
        // Replica counts after one replica leaves `from` for `to`.
        let mut counts_after: Vec<(usize, NodeId)> = up
            .iter()
            .map(|n| {
                let c = self.count(*n);
                let c = if *n == from {
                    c.saturating_sub(1)
                } else if *n == to {
                    c + 1
                } else {
                    c
                };
                (c, *n)
            })
            .collect();
        counts_after.sort();
        let gain = |moved: i128| (diff - 2 * moved).abs();
        if !unbalanced(&counts_after) {
            let best = shards
                .iter()
                .filter(|s| s.bytes > 0 && i128::from(s.bytes) < diff)
                .filter(|s| self.movable(s, from, to))
                .min_by_key(|s| (gain(i128::from(s.bytes)), s.id));
            if let Some(s) = best {
                self.push(Step::Move {
                    shard: s.id,
                    from,
                    to,
                });
                return true;
            }
        }
        if !self.can_receive(from) {
            return false;
        }
        let best = shards
            .iter()
            .filter(|s| self.movable(s, from, to))
            .flat_map(|big| {
                shards
                    .iter()
                    .filter(|small| small.id != big.id && self.movable(small, to, from))
                    .map(move |small| (big, small))
            })
            .filter(|(big, small)| {
                let moved = i128::from(big.bytes) - i128::from(small.bytes);
                moved > 0 && moved < diff
            })
            .min_by_key(|(big, small)| {
                (
                    gain(i128::from(big.bytes) - i128::from(small.bytes)),
                    big.id,
                    small.id,
                )
            });
        let Some((big, small)) = best else {
            return false;
        };
        let (big, small) = (big.id, small.id);
        self.push(Step::Move {
            shard: big,
            from,
            to,
        });
        self.push(Step::Move {
            shard: small,
            from: to,
            to: from,
        });
        true
    }

    /// Whether `n` satisfies the shard's leader preference (any node does
    /// when there is none).
    fn preferred(&self, shard: &ShardView, n: NodeId) -> bool {
        shard.prefer_leader.as_ref().is_none_or(|(k, v)| {
            self.all_labels
                .get(&n)
                .and_then(|l| l.get(k))
                .is_some_and(|x| x == v)
        })
    }

    /// Moves a shard's leadership to a voter with its preferred label.
    fn prefer(&mut self, shard: &ShardView) {
        let Some(leader) = shard.leader else { return };
        if shard.busy || shard.joint || self.preferred(shard, leader) {
            return;
        }
        let to = shard
            .voters
            .iter()
            .copied()
            .filter(|v| self.state(*v) == NodeState::Up && self.preferred(shard, *v))
            .filter(|v| self.has_room(*v))
            .min_by_key(|v| (self.replicas.get(v).copied().unwrap_or(0), *v));
        if let Some(to) = to {
            self.push(Step::TransferLeader {
                shard: shard.id,
                to,
            });
        }
    }

    /// Whether `shard` may move from `from` to `to` without hurting its
    /// spread: `to` holds no replica of it, the voters keep at least as many
    /// distinct label values, and nothing else is happening to the shard.
    fn movable(&self, shard: &ShardView, from: NodeId, to: NodeId) -> bool {
        let distinct = |with: NodeId| {
            shard
                .voters
                .iter()
                .filter(|v| **v != from)
                .chain(std::iter::once(&with))
                .filter_map(|v| self.label(*v))
                .collect::<BTreeSet<&str>>()
                .len()
        };
        shard.voters.contains(&from)
            && !shard.voters.contains(&to)
            && shard.moving_from.is_none()
            && shard.learners.is_empty()
            && !shard.busy
            && !shard.joint
            && distinct(to) >= distinct(from)
    }

    /// Room on `to` for one more step and the snapshot of one more move.
    fn can_receive(&self, to: NodeId) -> bool {
        self.has_room(to)
            && self.snapshots.get(&to).copied().unwrap_or(0)
                < self
                    .s
                    .move_snapshots_per_node_max
                    .min(self.s.snapshots_per_node_max)
    }

    /// One replica move (or a swap of two), else one leader move, between
    /// the most and the least loaded up nodes, when they are out of
    /// balance: replica counts first, then bytes, then leaders.
    fn balance(&mut self, shards: &[ShardView]) {
        let up: Vec<NodeId> = self
            .states
            .iter()
            .filter(|(_, st)| **st == NodeState::Up)
            .map(|(n, _)| *n)
            .collect();
        if up.len() < 2 {
            return;
        }
        let count = |m: &BTreeMap<NodeId, usize>| {
            let mut v: Vec<(usize, NodeId)> = up
                .iter()
                .map(|n| (m.get(n).copied().unwrap_or(0), *n))
                .collect();
            v.sort();
            v
        };
        let by_replicas = count(&self.replicas);
        if unbalanced(&by_replicas) {
            let (_, to) = by_replicas[0];
            let (_, from) = by_replicas[by_replicas.len() - 1];
            // Of the shards that may move, the one that best evens out bytes.
            let diff = self.held(from) as i128 - self.held(to) as i128;
            let shard = shards
                .iter()
                .filter(|s| self.movable(s, from, to))
                .min_by_key(|s| ((diff - 2 * s.bytes as i128).abs(), s.id));
            if let (Some(shard), true) = (shard, self.can_receive(to)) {
                self.push(Step::Move {
                    shard: shard.id,
                    from,
                    to,
                });
                return;
            }
        }
        if self.balance_bytes(shards, &up) {
            return;
        }
        let mut leaders: BTreeMap<NodeId, usize> = BTreeMap::new();
        for s in shards {
            if let Some(l) = s.leader {
                *leaders.entry(l).or_default() += 1;
            }
        }
        let by_leaders = count(&leaders);
        if unbalanced(&by_leaders) {
            let (_, to) = by_leaders[0];
            let (_, from) = by_leaders[by_leaders.len() - 1];
            // Never against a shard's leader preference.
            if let Some(shard) = shards.iter().find(|s| {
                s.leader == Some(from)
                    && s.voters.contains(&to)
                    && (s.prefer_leader.is_none() || self.preferred(s, to))
            }) {
                self.push(Step::TransferLeader {
                    shard: shard.id,
                    to,
                });
            }
        }
    }
}

/// Whether counts per node, sorted, are out of balance: the extremes at
/// least 2 apart and one of them more than 10 % off the mean.
fn unbalanced(v: &[(usize, NodeId)]) -> bool {
    let (Some(lo), Some(hi)) = (v.first(), v.last()) else {
        return false;
    };
    let total: usize = v.iter().map(|(c, _)| c).sum();
    let mean = total as f64 / v.len() as f64;
    hi.0 >= lo.0 + 2 && (hi.0 as f64 > mean * 1.1 || (lo.0 as f64) < mean * 0.9)
}

/// The steps to take now, at most one per shard (see the module's rules).
pub fn plan(nodes: &[NodeView], shards: &[ShardView], now_ms: u64, s: &Settings) -> Vec<Step> {
    let mut p = Plan {
        s,
        states: nodes
            .iter()
            .map(|n| (n.id, node_state(n, now_ms, s)))
            .collect(),
        labels: nodes
            .iter()
            .map(|n| (n.id, n.labels.get(&s.spread_label).cloned()))
            .collect(),
        all_labels: nodes.iter().map(|n| (n.id, n.labels.clone())).collect(),
        replicas: BTreeMap::new(),
        bytes: BTreeMap::new(),
        sizes: BTreeMap::new(),
        steps: BTreeMap::new(),
        snapshots: BTreeMap::new(),
        leaving: shards
            .iter()
            .filter(|sh| sh.moving_to.is_some())
            .filter_map(|sh| Some((sh.id, sh.moving_from?)))
            .collect(),
        out: Vec::new(),
    };
    for sh in shards {
        p.sizes.insert(sh.id, sh.bytes);
        // A move under way counts as done: on the node it goes to, not on the
        // one it leaves.
        let moving = sh.moving_from.zip(sh.moving_to);
        let holders: Vec<NodeId> = sh
            .voters
            .iter()
            .chain(sh.learners.iter().map(|(n, _)| n))
            .copied()
            .filter(|v| moving.is_none_or(|(from, _)| *v != from))
            .chain(moving.map(|(_, to)| to))
            .collect::<BTreeSet<NodeId>>()
            .into_iter()
            .collect();
        for v in holders {
            *p.replicas.entry(v).or_default() += 1;
            *p.bytes.entry(v).or_default() += sh.bytes;
        }
        for (n, ready) in &sh.learners {
            if !ready {
                *p.snapshots.entry(*n).or_default() += 1;
            }
        }
    }
    // Balancing waits for every repair but the steps of moves under way:
    // moves overlap, within the snapshot and step limits.
    let mut urgent = false;
    for sh in shards {
        if p.repair(sh) {
            urgent |= sh.moving_from.is_none();
        } else {
            p.prefer(sh);
        }
    }
    if !urgent {
        p.balance(shards);
    }
    p.out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 10_000_000;

    fn node(id: NodeId, zone: &str) -> NodeView {
        NodeView {
            id,
            labels: [("zone".to_string(), zone.to_string())].into(),
            heartbeat_ms: NOW,
            draining: false,
        }
    }

    fn shard(id: ShardId, rf: u32, voters: &[NodeId], leader: NodeId) -> ShardView {
        ShardView {
            id,
            replication: rf,
            voters: voters.to_vec(),
            leader: Some(leader),
            ..ShardView::default()
        }
    }

    fn run(nodes: &[NodeView], shards: &[ShardView]) -> Vec<Step> {
        plan(nodes, shards, NOW, &Settings::default())
    }

    #[test]
    fn a_learner_on_a_down_node_is_removed() {
        let mut nodes = vec![node(1, "a"), node(2, "b"), node(3, "c"), node(4, "d")];
        nodes[3].heartbeat_ms = 0; // node 4: silent since the start
        let mut s = shard(10, 3, &[1, 2], 1);
        s.learners = vec![(4, false)];
        assert_eq!(run(&nodes, &[s]), vec![Step::Remove { shard: 10, node: 4 }]);
    }

    #[test]
    fn leaders_follow_a_volume_preference() {
        let nodes = [node(1, "a"), node(2, "b"), node(3, "c")];
        let mut s = shard(10, 3, &[1, 2, 3], 1);
        s.prefer_leader = Some(("zone".into(), "c".into()));
        assert_eq!(
            run(&nodes, std::slice::from_ref(&s)),
            vec![Step::TransferLeader { shard: 10, to: 3 }]
        );
        s.leader = Some(3);
        assert!(run(&nodes, std::slice::from_ref(&s)).is_empty());
        // Leader balancing never takes it away: three shards led by node 3,
        // all preferring it.
        let many: Vec<ShardView> = (10..13).map(|id| ShardView { id, ..s.clone() }).collect();
        assert!(run(&nodes, &many).is_empty(), "{:?}", run(&nodes, &many));
        // No voter has the value: nothing to do.
        s.prefer_leader = Some(("zone".into(), "x".into()));
        s.leader = Some(1);
        assert!(run(&nodes, std::slice::from_ref(&s)).is_empty());
    }

    #[test]
    fn node_states_follow_heartbeats_and_draining() {
        let s = Settings::default();
        let mut n = node(1, "a");
        assert_eq!(node_state(&n, NOW, &s), NodeState::Up);
        assert_eq!(node_state(&n, NOW + 30_000, &s), NodeState::Suspect);
        assert_eq!(node_state(&n, NOW + 300_000, &s), NodeState::Down);
        n.draining = true;
        assert_eq!(node_state(&n, NOW, &s), NodeState::Draining);
        // A draining node that went silent is down.
        assert_eq!(node_state(&n, NOW + 300_000, &s), NodeState::Down);
    }

    /// A scenario: what it shows, nodes, shards, the steps expected.
    type Case = (&'static str, Vec<NodeView>, Vec<ShardView>, Vec<Step>);

    #[test]
    fn placement_scenarios() {
        let three = [node(1, "a"), node(2, "b"), node(3, "c")];
        let mut down = three.to_vec();
        down[2].heartbeat_ms = NOW - 400_000;
        let mut draining = three.to_vec();
        draining.push(node(4, "c"));
        draining[2].draining = true;
        let same_zone = [node(1, "a"), node(2, "a"), node(3, "b")];
        let mut suspect = three.to_vec();
        suspect[1].heartbeat_ms = NOW - 60_000;
        let cases: Vec<Case> = vec![
            (
                "one node: RF 3 waits for nodes",
                vec![node(1, "a")],
                vec![shard(1, 3, &[1], 1)],
                vec![],
            ),
            (
                "nodes 2 and 3 join: up-replicate, one learner per shard and plan",
                three.to_vec(),
                vec![shard(1, 3, &[1], 1), shard(2, 3, &[1], 1)],
                vec![
                    Step::AddLearner { shard: 1, node: 2 },
                    Step::AddLearner { shard: 2, node: 3 },
                ],
            ),
            (
                "a caught-up learner is promoted",
                three.to_vec(),
                vec![ShardView {
                    learners: vec![(2, true)],
                    ..shard(1, 3, &[1], 1)
                }],
                vec![Step::Promote { shard: 1, node: 2 }],
            ),
            (
                "a learner still catching up is waited for",
                three.to_vec(),
                vec![ShardView {
                    learners: vec![(2, false)],
                    ..shard(1, 2, &[1], 1)
                }],
                vec![],
            ),
            (
                "a joint shard leaves first; a busy one is left alone",
                three.to_vec(),
                vec![
                    ShardView {
                        joint: true,
                        ..shard(1, 3, &[1], 1)
                    },
                    ShardView {
                        busy: true,
                        ..shard(2, 3, &[1], 1)
                    },
                ],
                vec![Step::LeaveJoint { shard: 1 }],
            ),
            (
                "node 3 down, no spare node: its voter goes (2 of 2 survive what 2 of 3 do)",
                down.clone(),
                vec![shard(1, 3, &[1, 2, 3], 1)],
                vec![Step::Remove { shard: 1, node: 3 }],
            ),
            (
                "node 3 down with a spare node: re-create there",
                {
                    let mut d = down.clone();
                    d.push(node(4, "c"));
                    d
                },
                vec![shard(1, 3, &[1, 2, 3], 1)],
                vec![Step::AddLearner { shard: 1, node: 4 }],
            ),
            (
                "a suspect node keeps its replica and gets no new one",
                suspect,
                vec![shard(1, 3, &[1, 2, 3], 1), shard(2, 2, &[1], 1)],
                vec![Step::AddLearner { shard: 2, node: 3 }],
            ),
            (
                "draining node 3: a replacement first",
                draining.clone(),
                vec![shard(1, 3, &[1, 2, 3], 1)],
                vec![Step::AddLearner { shard: 1, node: 4 }],
            ),
            (
                "draining node 3 once replaced: removed, its leadership moved first",
                draining,
                vec![shard(1, 3, &[1, 2, 3, 4], 3)],
                vec![Step::TransferLeader { shard: 1, to: 1 }],
            ),
            (
                "replicas spread across zones before nodes",
                {
                    let mut z = same_zone.to_vec();
                    z.push(node(4, "c"));
                    z
                },
                vec![shard(1, 2, &[1], 1)],
                vec![Step::AddLearner { shard: 1, node: 3 }],
            ),
            (
                "two voters in zone a while zone c is free: add in c",
                {
                    let mut z = same_zone.to_vec();
                    z.push(node(4, "c"));
                    z
                },
                vec![shard(1, 3, &[1, 2, 3], 1)],
                vec![Step::AddLearner { shard: 1, node: 4 }],
            ),
            (
                "over-replicated: the zone duplicate goes",
                {
                    let mut z = same_zone.to_vec();
                    z.push(node(4, "c"));
                    z
                },
                vec![shard(1, 3, &[1, 2, 3, 4], 1)],
                vec![Step::Remove { shard: 1, node: 2 }],
            ),
            (
                "a voter on a node the map no longer has is removed",
                three.to_vec(),
                vec![shard(1, 3, &[1, 2, 3, 9], 1)],
                vec![Step::Remove { shard: 1, node: 9 }],
            ),
        ];
        for (what, nodes, shards, want) in cases {
            assert_eq!(run(&nodes, &shards), want, "{what}");
        }
    }

    #[test]
    fn steps_are_bounded_per_node() {
        let nodes = [node(1, "a"), node(2, "b"), node(3, "c")];
        let shards: Vec<ShardView> = (1..=10).map(|i| shard(i, 2, &[1], 1)).collect();
        // Two snapshots per target node at once: two learners on node 2,
        // two on node 3, the other shards wait for the next plan.
        let steps = run(&nodes, &shards);
        assert_eq!(
            steps,
            vec![
                Step::AddLearner { shard: 1, node: 2 },
                Step::AddLearner { shard: 2, node: 3 },
                Step::AddLearner { shard: 3, node: 2 },
                Step::AddLearner { shard: 4, node: 3 },
            ]
        );
        // Learners still catching up count against their node too.
        let mut busy = shards.clone();
        busy[0].learners = vec![(2, false)];
        busy[1].learners = vec![(2, false)];
        let steps = run(&nodes, &busy);
        assert!(
            steps
                .iter()
                .all(|s| !matches!(s, Step::AddLearner { node: 2, .. })),
            "{steps:?}"
        );
    }

    #[test]
    fn a_new_node_takes_replicas_and_leaders_until_balanced() {
        let mut nodes: Vec<NodeView> = (1..=3).map(|i| node(i, "a")).collect();
        // Six RF-3 shards on nodes 1-3, all led by node 1.
        let shards: Vec<ShardView> = (1..=6).map(|i| shard(i, 3, &[1, 2, 3], 1)).collect();
        assert_eq!(
            run(&nodes, &shards),
            vec![Step::TransferLeader { shard: 1, to: 2 }]
        );
        nodes.push(node(4, "a"));
        // 18 replicas on 3 of 4 nodes: one moves to node 4 (a learner; the
        // over-replication rule then removes the most loaded voter).
        assert_eq!(
            run(&nodes, &shards),
            vec![Step::Move {
                shard: 1,
                from: 3,
                to: 4
            }]
        );
        // Simulate: apply every step the plan gives until it gives none;
        // the result is balanced and every shard keeps 3 voters.
        let shards = converge(&nodes, shards, &Settings::default());
        assert!(run(&nodes, &shards).is_empty(), "{shards:?}");
        let mut replicas = BTreeMap::<NodeId, usize>::new();
        let mut leaders = BTreeMap::<NodeId, usize>::new();
        for s in &shards {
            assert_eq!(s.voters.len(), 3, "{s:?}");
            for v in &s.voters {
                *replicas.entry(*v).or_default() += 1;
            }
            *leaders.entry(s.leader.expect("leader")).or_default() += 1;
        }
        // 18 replicas on 4 nodes: 4 or 5 each; 6 leaders: 1 or 2 each.
        assert!(
            replicas.values().all(|c| (4..=5).contains(c)),
            "{replicas:?}"
        );
        assert!(leaders.values().all(|c| (1..=2).contains(c)), "{leaders:?}");
    }

    /// Applies every step the plan gives (learners catch up at once) until
    /// it gives none; the shards as they end.
    fn converge(nodes: &[NodeView], mut shards: Vec<ShardView>, s: &Settings) -> Vec<ShardView> {
        for _ in 0..500 {
            let steps = plan(nodes, &shards, NOW, s);
            if steps.is_empty() {
                return shards;
            }
            for step in steps {
                let sh = shards
                    .iter_mut()
                    .find(|x| x.id == step.shard())
                    .expect("shard");
                match step {
                    Step::AddLearner { node, .. } => sh.learners.push((node, true)),
                    Step::Move { from, to, .. } => {
                        sh.learners.push((to, true));
                        sh.moving_from = Some(from);
                        sh.moving_to = Some(to);
                    }
                    Step::Promote { node, .. } => {
                        sh.learners.retain(|(n, _)| *n != node);
                        sh.voters.push(node);
                    }
                    Step::TransferLeader { to, .. } => sh.leader = Some(to),
                    Step::Remove { node, .. } => {
                        sh.voters.retain(|v| *v != node);
                        if sh.moving_from == Some(node) {
                            sh.moving_from = None;
                            sh.moving_to = None;
                        }
                    }
                    Step::LeaveJoint { .. } => sh.joint = false,
                }
            }
        }
        panic!("the plan never settled: {shards:?}");
    }

    /// Bytes per node of `shards`.
    fn held(shards: &[ShardView]) -> BTreeMap<NodeId, u64> {
        let mut m = BTreeMap::new();
        for s in shards {
            for v in &s.voters {
                *m.entry(*v).or_default() += s.bytes;
            }
        }
        m
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_new_node_takes_its_share_of_bytes() {
        let mut nodes: Vec<NodeView> = (1..=3).map(|i| node(i, "a")).collect();
        // Eight RF-3 shards of different sizes on nodes 1-3 (sizes for which
        // ±10 % is reachable: a shard larger than a node's share is not).
        let sizes = [500, 400, 300, 250, 200, 150, 100, 50];
        let shards: Vec<ShardView> = sizes
            .iter()
            .enumerate()
            .map(|(i, mib)| ShardView {
                bytes: mib * MIB,
                ..shard(i as ShardId + 1, 3, &[1, 2, 3], 1 + i as NodeId % 3)
            })
            .collect();
        nodes.push(node(4, "a"));
        let shards = converge(&nodes, shards, &Settings::default());
        let bytes = held(&shards);
        let mean = bytes.values().sum::<u64>() as f64 / 4.0;
        assert!(
            bytes
                .values()
                .all(|b| (*b as f64 - mean).abs() <= mean * 0.1),
            "bytes per node {bytes:?} (mean {mean})"
        );
        let mut replicas = BTreeMap::<NodeId, usize>::new();
        for s in &shards {
            assert_eq!(s.voters.len(), 3, "{s:?}");
            assert_eq!(s.moving_from, None, "{s:?}");
            for v in &s.voters {
                *replicas.entry(*v).or_default() += 1;
            }
        }
        // 24 replicas over 4 nodes: 6 each, give or take what bytes need.
        assert!(
            replicas.values().all(|c| (5..=7).contains(c)),
            "{replicas:?}"
        );
    }

    #[test]
    fn bytes_move_by_a_swap_when_a_lone_move_would_unbalance_counts() {
        let nodes = [node(1, "a"), node(2, "a")];
        let rf1 = |id: ShardId, on: NodeId, mib: u64| ShardView {
            bytes: mib * MIB,
            ..shard(id, 1, &[on], on)
        };
        let shards = vec![rf1(1, 1, 300), rf1(2, 1, 280), rf1(3, 2, 10), rf1(4, 2, 5)];
        let steps = run(&nodes, &shards);
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(
            steps
                .iter()
                .any(|s| matches!(s, Step::Move { from: 1, to: 2, .. }))
                && steps
                    .iter()
                    .any(|s| matches!(s, Step::Move { from: 2, to: 1, .. })),
            "{steps:?}"
        );
        let shards = converge(&nodes, shards, &Settings::default());
        let bytes = held(&shards);
        assert!(bytes[&1].abs_diff(bytes[&2]) < 64 * MIB, "{bytes:?}");
        assert!(shards.iter().all(|s| s.voters.len() == 1), "{shards:?}");
    }

    #[test]
    fn small_differences_in_bytes_are_left_alone() {
        let nodes = [node(1, "a"), node(2, "b"), node(3, "c"), node(4, "d")];
        let shards: Vec<ShardView> = (1..=4)
            .map(|i| ShardView {
                bytes: i * MIB,
                ..shard(i, 1, &[i], i)
            })
            .collect();
        assert_eq!(run(&nodes, &shards), vec![]);
    }

    #[test]
    fn a_move_ends_by_removing_the_node_it_leaves() {
        let nodes = [node(1, "a"), node(2, "b"), node(3, "c"), node(4, "d")];
        // Node 4 was added to move the replica off node 2, although node 1
        // holds the most replicas.
        let mut s = shard(10, 3, &[1, 2, 3, 4], 3);
        s.moving_from = Some(2);
        s.moving_to = Some(4);
        let other = shard(11, 1, &[1], 1);
        // (Counting the move as done, node 2 is left empty: a move of the
        // other shard there may be planned beside it.)
        let steps = run(&nodes, &[s.clone(), other.clone()]);
        assert!(
            steps.contains(&Step::Remove { shard: 10, node: 2 })
                && !steps.iter().any(|st| matches!(
                    st,
                    Step::Remove {
                        node: 1 | 3 | 4,
                        ..
                    }
                )),
            "{steps:?}"
        );
        // Without the move, the most loaded voter goes.
        s.moving_from = None;
        s.moving_to = None;
        assert_eq!(
            run(&nodes, &[s, other]),
            vec![Step::Remove { shard: 10, node: 1 }]
        );
    }

    #[test]
    fn moves_overlap_within_the_snapshot_limit() {
        let nodes = [node(1, "a"), node(2, "b"), node(3, "c"), node(4, "d")];
        let mut shards: Vec<ShardView> = (10..16)
            .map(|id| ShardView {
                bytes: 100 * MIB,
                ..shard(id, 3, &[1, 2, 3], 1)
            })
            .collect();
        let moves_of = |steps: &[Step]| -> Vec<(ShardId, NodeId, NodeId)> {
            steps
                .iter()
                .filter_map(|s| match s {
                    Step::Move { shard, from, to } => Some((*shard, *from, *to)),
                    _ => None,
                })
                .collect()
        };
        let steps = run(&nodes, &shards);
        let [(first, from, 4)] = moves_of(&steps)[..] else {
            panic!("{steps:?}");
        };
        let sh = shards.iter_mut().find(|s| s.id == first).unwrap();
        sh.learners.push((4, false));
        sh.moving_from = Some(from);
        sh.moving_to = Some(4);
        // Its snapshot on the way: no second move to node 4 yet.
        let steps = run(&nodes, &shards);
        assert!(moves_of(&steps).is_empty(), "{steps:?}");
        // Caught up: its promotion, and beside it the next move, planned as
        // if the first were done.
        shards.iter_mut().find(|s| s.id == first).unwrap().learners[0].1 = true;
        let steps = run(&nodes, &shards);
        assert!(
            steps.contains(&Step::Promote {
                shard: first,
                node: 4
            }),
            "{steps:?}"
        );
        let [(second, _, 4)] = moves_of(&steps)[..] else {
            panic!("{steps:?}");
        };
        assert_ne!(second, first, "{steps:?}");
    }
}
