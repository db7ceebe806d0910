//! Hibernation of idle groups and the node-level liveness that keeps it safe.
//!
//! An idle group that keeps ticking costs a heartbeat per follower per `heartbeat_tick` and a
//! wake-up of the loop per tick, for nothing. A hibernating group does not tick: no heartbeats,
//! no election timer, no check-quorum. Raft's liveness, however, rests on exactly those timers,
//! so sleeping is only allowed while something else watches: **node-level liveness**, one
//! keepalive per peer node (not per group) owned by the loop.
//!
//! # Node liveness ([`PeerLiveness`])
//! Every `heartbeat_tick` ticks the loop sends an empty batch (`Transport::send(peer, vec![])`)
//! to every node it shares a group with. The transport reports every batch it receives, empty
//! or not, with `RaftNode::peer_alive(from)`; the loop also counts each stepped message's
//! `from`. A peer from which nothing arrived for `peer_timeout` (counted in ticks, so the
//! logic sees no clock) is *dead*; a peer never heard from since start is not alive either.
//! When a peer becomes dead, every sleeping group that depends on it wakes: a follower whose
//! leader is on that node, a leader with a voter on it.
//!
//! # The protocol
//! Flags ride on ordinary raft messages in protobuf field [`crate::HIBERNATE_FIELD`] (raft-rs
//! ignores unknown fields, so a node without hibernation treats them as plain messages and the
//! groups simply never fall asleep):
//! - **Leader.** Once a multi-voter leader has been *quiescent* for `hibernate_after_ticks`
//!   consecutive ticks — no pending proposal or read, commit = applied = last index, every
//!   voter's match index = last index, every voter's node alive, no leader transfer — it turns
//!   *drowsy*: it keeps ticking, but its heartbeats carry [`Signal::Sleep`] (and it sends one at
//!   once). It stops ticking only when **every** other voter answered a `Sleep` heartbeat with
//!   a [`Signal::SleepAck`] response, so a lost flag only delays sleep; it never leaves a
//!   follower awake waiting for heartbeats that will not come. Quiescence broken at any tick
//!   cancels drowsiness.
//! - **Follower.** A follower falls asleep when it steps a `Sleep` heartbeat from its current
//!   leader at its current term, the leader's node is alive, and it is itself caught up
//!   (commit = applied = last index, nothing pending); its heartbeat response then carries
//!   `SleepAck`. It cannot decide alone after "N ticks without messages": a sleeping leader
//!   sends nothing, and the randomized election timeout (< 2 × `election_tick`) would fire
//!   first. So the follower's idleness is the leader's, announced explicitly.
//! - **Waking.** A proposal or read on a leader, any message for the group (except `Sleep`
//!   heartbeats and `SleepAck` responses, which are stepped without waking), a [`Signal::Wake`],
//!   or the death of a node it depends on wakes a group. A follower woken by anything but its
//!   leader sends `Wake` to the leader, so the leader resumes heartbeats before the follower's
//!   election timer fires. A group stopped by a fatal error sends `Wake` to its peers, so the
//!   followers of a stopped leader do not sleep forever. A follower is never put back to sleep
//!   except by its leader's next `Sleep` heartbeat.
//!
//! # raft-rs subtleties (pre-vote and check-quorum are on)
//! - **A woken leader must not step down on its first tick.** While asleep its
//!   `election_elapsed` is frozen, possibly at `election_tick - 1`, and the followers'
//!   `recent_active` flags are stale: cleared by the last check-quorum before sleep (then the
//!   first tick after waking runs check-quorum, sees no active follower and steps down — a
//!   spurious step-down), or still set from before (then an *isolated* leader wrongly passes
//!   its first check and lingers a whole extra timeout). [`on_leader_wake`] therefore restarts
//!   the check-quorum window (`election_elapsed = 0`), clears every follower's `recent_active`
//!   and broadcasts a heartbeat at once: live followers answer within a round trip, well
//!   inside the `election_tick` ticks before the next check; with dead followers the leader
//!   steps down exactly one election timeout after waking.
//! - **The follower's clock is never stale in the dangerous direction.** A follower falls
//!   asleep only right after stepping its leader's heartbeat, which zeroes `election_elapsed`
//!   (and every `Sleep` heartbeat stepped while asleep zeroes it again). It wakes with a full
//!   election timeout ahead, so a stray wake-up cannot make it campaign at once against a
//!   healthy sleeping leader; it tells the leader instead (`Wake`).
//! - **Leases and pre-vote.** raft-rs ignores a (pre-)vote while `leader_id != 0 &&
//!   election_elapsed < election_timeout`. A sleeping follower keeps its leader and its zeroed
//!   clock, so while the leader lives, a woken, partitioned follower's pre-votes are rejected
//!   (and its term never rises, thanks to pre-vote). A woken leader restarts its window, so it
//!   rejects them too. After the leader's node dies, the followers wake (within `peer_timeout`
//!   of its last keepalive), each campaigns after its randomized timeout `[election_tick,
//!   2 × election_tick)`, and each grants pre-votes once `election_tick` ticks passed since its
//!   own wake (or once it is itself a pre-candidate, which clears `leader_id`). A new leader is
//!   thus elected about `peer_timeout + 2 × election_tick` ticks after the last keepalive, plus
//!   randomized retries on a split vote — the same bound as an awake group, shifted by the
//!   liveness timeout.
//! - **Nothing in flight while asleep.** Every voter matches the leader's last index and the
//!   followers check commit = applied = last index themselves before acknowledging, so no
//!   replication, commit notification or read is pending in a sleeping group. Reads use
//!   `ReadOnlyOption::Safe` (a heartbeat round), never the leader lease, so waking does not
//!   weaken linearizability.
//! - Single-voter groups need none of this: they sleep as soon as the leader has nothing in
//!   flight (no peer to tell, no one to fail over to).

use std::collections::BTreeMap;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use raft::{Raft, RawNode, StateRole, Storage};

use crate::{set_message_shard, NodeId, ShardId, HIBERNATE_FIELD};

/// A hibernation flag carried in [`HIBERNATE_FIELD`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// On a leader's `MsgHeartbeat`: "I am idle and going to sleep; sleep too".
    Sleep = 1,
    /// On a follower's `MsgHeartbeatResponse`: "I am asleep".
    SleepAck = 2,
    /// On a `MsgHeartbeatResponse` that is not stepped into raft: "wake this group".
    Wake = 3,
}

/// The flag a message carries, if any.
pub(crate) fn signal(m: &Message) -> Option<Signal> {
    let v = m
        .unknown_fields
        .get(HIBERNATE_FIELD)
        .and_then(|v| v.varint.first().copied())?;
    match v {
        1 => Some(Signal::Sleep),
        2 => Some(Signal::SleepAck),
        3 => Some(Signal::Wake),
        _ => None,
    }
}

/// Sets the flag of a message.
pub(crate) fn set_signal(m: &mut Message, s: Signal) {
    m.mut_unknown_fields().remove(HIBERNATE_FIELD);
    m.mut_unknown_fields().add_varint(HIBERNATE_FIELD, s as u64);
}

/// A `Wake` for `shard` from `from` to `to`. Typed as a heartbeat response so that a node that
/// does not know the flag steps something harmless.
pub(crate) fn wake_message(from: NodeId, to: NodeId, term: u64, shard: ShardId) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeatResponse);
    m.from = from;
    m.to = to;
    m.term = term;
    set_message_shard(&mut m, shard);
    set_signal(&mut m, Signal::Wake);
    m
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    silent_ticks: u64,
    alive: bool,
}

/// Which peer nodes are alive, from what arrived from them, counted in ticks.
#[derive(Debug)]
pub(crate) struct PeerLiveness {
    timeout_ticks: u64,
    peers: BTreeMap<NodeId, Peer>,
}

impl PeerLiveness {
    /// A peer silent for `timeout_ticks` consecutive ticks is dead.
    pub(crate) fn new(timeout_ticks: u64) -> PeerLiveness {
        assert!(timeout_ticks > 0, "peer timeout must be at least one tick");
        PeerLiveness {
            timeout_ticks,
            peers: BTreeMap::new(),
        }
    }

    /// Starts tracking `id` (not alive until heard from). True when it is new.
    pub(crate) fn add(&mut self, id: NodeId) -> bool {
        if self.peers.contains_key(&id) {
            return false;
        }
        self.peers.insert(
            id,
            Peer {
                silent_ticks: 0,
                alive: false,
            },
        );
        true
    }

    /// Something arrived from `id`. Unknown nodes (sharing no group) are ignored, which keeps
    /// the table bounded by the groups' voters.
    pub(crate) fn heard(&mut self, id: NodeId) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.silent_ticks = 0;
            p.alive = true;
        }
    }

    /// One tick passed; returns the peers that just became dead.
    pub(crate) fn tick(&mut self) -> Vec<NodeId> {
        let mut died = Vec::new();
        for (&id, p) in self.peers.iter_mut() {
            p.silent_ticks = p.silent_ticks.saturating_add(1);
            if p.alive && p.silent_ticks >= self.timeout_ticks {
                p.alive = false;
                died.push(id);
            }
        }
        died
    }

    /// True when `id` was heard from within the timeout.
    pub(crate) fn is_alive(&self, id: NodeId) -> bool {
        self.peers.get(&id).is_some_and(|p| p.alive)
    }

    /// Every tracked peer.
    pub(crate) fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.keys().copied()
    }
}

/// The raft side of a leader's quiescence: everything committed and applied, every other
/// replica matching the last index on a live node, no leader transfer. (The loop adds: no
/// pending proposal or read.)
pub(crate) fn leader_quiescent<T: Storage>(r: &Raft<T>, alive: impl Fn(NodeId) -> bool) -> bool {
    let last = r.raft_log.last_index();
    r.state == StateRole::Leader
        && r.lead_transferee.is_none()
        && r.raft_log.committed == last
        && r.raft_log.applied == last
        && r.prs()
            .iter()
            .all(|(&id, pr)| id == r.id || (pr.matched == last && alive(id)))
}

/// The raft side of a follower's permission to sleep after stepping a `Sleep` heartbeat from
/// `leader` at `term`: it still follows that leader at that term and is caught up.
pub(crate) fn follower_may_sleep<T: Storage>(r: &Raft<T>, leader: NodeId, term: u64) -> bool {
    let last = r.raft_log.last_index();
    r.state == StateRole::Follower
        && leader != r.id
        && r.leader_id == leader
        && r.term == term
        && r.raft_log.committed == last
        && r.raft_log.applied == last
}

/// Makes a leader that slept safe to tick again (see the module doc): restarts the
/// check-quorum window, forgets stale follower activity, and heartbeats at once so live
/// followers prove activity (and learn the leader is awake) within a round trip.
pub(crate) fn on_leader_wake<T: Storage>(raw: &mut RawNode<T>) {
    if raw.raft.state != StateRole::Leader {
        return;
    }
    raw.raft.election_elapsed = 0;
    let me = raw.raft.id;
    for (&id, pr) in raw.raft.mut_prs().iter_mut() {
        if id != me {
            pr.recent_active = false;
        }
    }
    raw.ping();
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::storage::MemStorage;
    use raft::{Config, ReadOnlyOption};

    const ELECTION_TICK: usize = 10;
    const HEARTBEAT_TICK: usize = 2;

    #[test]
    fn liveness_counts_ticks() {
        let mut l = PeerLiveness::new(3);
        assert!(l.add(2) && l.add(3) && !l.add(2));
        assert!(!l.is_alive(2), "never heard: not alive");
        assert!(l.tick().is_empty(), "a peer never heard from does not die");
        l.heard(2);
        l.heard(9); // unknown: ignored
        assert!(l.is_alive(2) && !l.is_alive(9));
        assert!(l.tick().is_empty() && l.tick().is_empty());
        l.heard(2);
        assert!(l.tick().is_empty() && l.tick().is_empty());
        assert_eq!(l.tick(), vec![2], "dead after 3 silent ticks");
        assert!(!l.is_alive(2));
        assert!(l.tick().is_empty(), "dies once");
        l.heard(2);
        assert!(l.is_alive(2));
        assert_eq!(l.peers().collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn signals_roundtrip_through_the_codec() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        assert_eq!(signal(&m), None);
        set_signal(&mut m, Signal::Sleep);
        set_signal(&mut m, Signal::SleepAck);
        let d = crate::decode_message(&crate::encode_message(&m)).unwrap();
        assert_eq!(signal(&d), Some(Signal::SleepAck));
        let w = wake_message(1, 2, 7, 42);
        let d = crate::decode_message(&crate::encode_message(&w)).unwrap();
        assert_eq!(
            (signal(&d), crate::message_shard(&d), d.term, d.to),
            (Some(Signal::Wake), Some(42), 7, 2)
        );
    }

    /// Three raft-rs nodes over `MemStorage`, messages delivered by hand: the real raft-rs
    /// behaviour under pre-vote and check-quorum, deterministic apart from raft-rs's own
    /// randomized election timeouts (the assertions hold for any of them).
    struct Net {
        nodes: Vec<RawNode<MemStorage>>,
        /// Nodes whose messages are dropped, both ways.
        down: Vec<u64>,
    }

    impl Net {
        fn new() -> Net {
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            let nodes = (1..=3u64)
                .map(|id| {
                    let cfg = Config {
                        id,
                        election_tick: ELECTION_TICK,
                        heartbeat_tick: HEARTBEAT_TICK,
                        check_quorum: true,
                        pre_vote: true,
                        read_only_option: ReadOnlyOption::Safe,
                        ..Config::default()
                    };
                    let s = MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
                    RawNode::new(&cfg, s, &logger).unwrap()
                })
                .collect();
            Net {
                nodes,
                down: Vec::new(),
            }
        }

        fn node(&mut self, id: u64) -> &mut RawNode<MemStorage> {
            &mut self.nodes[(id - 1) as usize]
        }

        /// Handles readies and delivers messages until the network is quiet (bounded).
        fn pump(&mut self) {
            for _ in 0..1_000 {
                let mut msgs = Vec::new();
                for n in self.nodes.iter_mut() {
                    if !n.has_ready() {
                        continue;
                    }
                    let mut rd = n.ready();
                    msgs.extend(rd.take_messages());
                    n.mut_store().wl().append(rd.entries()).unwrap();
                    if let Some(hs) = rd.hs() {
                        n.mut_store().wl().set_hardstate(hs.clone());
                    }
                    msgs.extend(rd.take_persisted_messages());
                    let mut light = n.advance(rd);
                    if let Some(c) = light.commit_index() {
                        n.mut_store().wl().mut_hard_state().commit = c;
                    }
                    msgs.extend(light.take_messages());
                    n.advance_apply();
                }
                if msgs.is_empty() {
                    return;
                }
                for m in msgs {
                    if self.down.contains(&m.from) || self.down.contains(&m.to) {
                        continue;
                    }
                    let _ = self.node(m.to).step(m);
                }
            }
            panic!("network never went quiet");
        }

        fn leader(&self) -> Option<u64> {
            self.nodes
                .iter()
                .find(|n| n.raft.state == StateRole::Leader && !self.down.contains(&n.raft.id))
                .map(|n| n.raft.id)
        }

        /// Node 1 leads, everything committed, applied and replicated.
        fn elected() -> Net {
            let mut net = Net::new();
            net.node(1).campaign().unwrap();
            net.pump();
            assert_eq!(net.leader(), Some(1));
            net.node(1).ping();
            net.pump();
            net
        }
    }

    #[test]
    fn quiescence_needs_replication_and_live_voters() {
        let mut net = Net::elected();
        assert!(leader_quiescent(&net.node(1).raft, |_| true));
        assert!(!leader_quiescent(&net.node(1).raft, |id| id != 3));
        assert!(
            !leader_quiescent(&net.node(2).raft, |_| true),
            "not a leader"
        );
        let t = net.node(2).raft.term;
        assert!(follower_may_sleep(&net.node(2).raft, 1, t));
        assert!(
            !follower_may_sleep(&net.node(2).raft, 3, t),
            "not its leader"
        );
        net.down = vec![3];
        net.node(1).propose(vec![], b"x".to_vec()).unwrap();
        net.pump();
        assert!(
            !leader_quiescent(&net.node(1).raft, |_| true),
            "node 3 does not match the last index"
        );
        net.down.clear();
        net.node(1).ping();
        net.pump();
        assert!(leader_quiescent(&net.node(1).raft, |_| true));
    }

    /// Puts the leader to sleep in the worst state for a later wake-up: one tick before
    /// check-quorum, with the followers' activity just cleared by the previous check.
    fn asleep_just_before_check_quorum(net: &mut Net) {
        let r = &mut net.node(1).raft;
        r.election_elapsed = ELECTION_TICK - 1;
        for (_, pr) in r.mut_prs().iter_mut() {
            pr.recent_active = false;
        }
    }

    #[test]
    fn a_leader_woken_naively_steps_down_on_its_first_tick() {
        // The failure `on_leader_wake` prevents: waking by just ticking again.
        let mut net = Net::elected();
        asleep_just_before_check_quorum(&mut net);
        net.node(1).tick();
        net.pump();
        assert_eq!(net.node(1).raft.state, StateRole::Follower);
    }

    #[test]
    fn a_woken_leader_keeps_leading_with_live_followers() {
        let mut net = Net::elected();
        asleep_just_before_check_quorum(&mut net);
        on_leader_wake(net.node(1));
        net.pump();
        for _ in 0..5 * ELECTION_TICK {
            net.node(1).tick();
            net.pump();
            assert_eq!(net.leader(), Some(1));
        }
    }

    #[test]
    fn a_woken_leader_with_dead_followers_steps_down_within_one_election_timeout() {
        let mut net = Net::elected();
        // Stale activity from before sleep must not count.
        for (_, pr) in net.node(1).raft.mut_prs().iter_mut() {
            pr.recent_active = true;
        }
        net.node(1).raft.election_elapsed = 3;
        net.down = vec![2, 3];
        on_leader_wake(net.node(1));
        for tick in 1..=ELECTION_TICK {
            net.node(1).tick();
            net.pump();
            let leading = net.node(1).raft.state == StateRole::Leader;
            assert_eq!(leading, tick < ELECTION_TICK, "tick {tick}");
        }
    }

    #[test]
    fn sleeping_followers_woken_after_leader_death_elect_within_bounded_ticks() {
        // Every follower fell asleep right after stepping a heartbeat (election_elapsed = 0);
        // they learn of the leader's death at different ticks (their liveness timeouts are
        // not aligned) and must still elect a new leader within a bounded number of ticks.
        for offset in [0usize, 1, HEARTBEAT_TICK, ELECTION_TICK / 2, ELECTION_TICK] {
            for _round in 0..10 {
                let mut net = Net::elected();
                assert_eq!(net.node(2).raft.election_elapsed, 0);
                assert_eq!(net.node(3).raft.election_elapsed, 0);
                net.down = vec![1];
                // Randomized election timeouts make split votes possible
                // (two voters left): a geometric tail, so the bound is generous.
                let bound = offset + 40 * ELECTION_TICK;
                let mut elected_at = None;
                for tick in 0..bound {
                    net.node(2).tick();
                    if tick >= offset {
                        net.node(3).tick();
                    }
                    net.pump();
                    if net.leader().is_some() {
                        elected_at = Some(tick);
                        break;
                    }
                }
                assert!(
                    elected_at.is_some(),
                    "no leader within {bound} ticks (offset {offset})"
                );
            }
        }
    }

    #[test]
    fn a_sleeping_followers_lease_rejects_a_stray_pre_candidate() {
        // Node 3 lost the leader (only from its point of view) and campaigns; node 2, asleep
        // with its leader known, refuses, so a healthy sleeping leader is not deposed.
        let mut net = Net::elected();
        let term = net.node(1).raft.term;
        net.down = vec![1];
        for _ in 0..2 * ELECTION_TICK {
            net.node(3).tick();
            net.pump();
        }
        assert_eq!(net.node(2).raft.term, term);
        assert_eq!(net.node(2).raft.leader_id, 1);
        assert_eq!(net.node(3).raft.term, term, "pre-vote kept the term");
        net.down.clear();
        on_leader_wake(net.node(1));
        net.pump();
        assert_eq!(net.leader(), Some(1));
        assert_eq!(
            net.node(3).raft.leader_id,
            1,
            "the woken leader's heartbeat"
        );
    }
}
