//! Ballot leader election: who should lead, judged from heartbeat rounds.
//!
//! Every tick each node ends a heartbeat round and starts the next: it asks every peer for its
//! ballot and whether that peer heard from a majority in its own last round ("quorum-connected").
//! Only quorum-connected nodes may lead, and every node follows the highest ballot among the
//! quorum-connected nodes it heard, directly or through a peer that heard the leader directly.
//! A quorum-connected node that has not seen its leader alive for a randomized election timeout
//! raises its own ballot above the leader's and runs Phase 1.
//!
//! This is the rule of OmniPaxos' ballot leader election, which keeps the cluster live under
//! partial connectivity: a node that can reach a majority takes over from a leader that cannot
//! (quorum loss); nodes that cannot reach a majority never disrupt (chained and constrained cuts).

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{Event, Replica, Role};
use crate::config::Config;
use crate::message::{Heartbeat, HeartbeatReply, Message};
use crate::types::{Ballot, NodeId};

/// One node's view of who leads.
#[derive(Clone, Debug)]
pub(super) struct Election {
    /// The ballot this node would lead with, or leads with.
    ballot: Ballot,
    /// The leader followed.
    leader: Option<Ballot>,
    /// The peer to hand transfers to for the leader: the leader itself if heard directly,
    /// otherwise a peer that heard it.
    route: Option<NodeId>,
    /// Whether the leader was heard directly, quorum-connected, in the last round.
    leader_heard_directly: bool,
    /// When the leader was last seen alive, in ticks.
    seen_at: u64,
    /// The current election timeout, in ticks.
    timeout: u64,
    /// The current heartbeat round.
    round: u64,
    /// Replies received in the current round.
    replies: BTreeMap<NodeId, HeartbeatReply>,
    /// Whether this node heard a majority (itself included) in its last round.
    quorum_connected: bool,
    /// The highest ballot seen anywhere, so a new ballot can start above it.
    highest_seen: Ballot,
}

/// A ballot seen in a round, and how it was seen.
#[derive(Clone, Copy, Debug)]
struct Sighting {
    ballot: Ballot,
    /// Where to send transfers for this ballot's node (none if it is this node).
    route: Option<NodeId>,
    direct: bool,
}

impl Sighting {
    fn outranks(&self, other: &Sighting) -> bool {
        self.ballot > other.ballot || (self.ballot == other.ballot && self.direct && !other.direct)
    }
}

fn consider(top: &mut Option<Sighting>, sighting: Sighting) {
    if top.is_none_or(|current| sighting.outranks(&current)) {
        *top = Some(sighting);
    }
}

impl Election {
    pub(super) fn new(config: &Config, rng: &mut ChaCha8Rng) -> Election {
        Election {
            ballot: Ballot::new(0, config.id),
            leader: None,
            route: None,
            leader_heard_directly: false,
            seen_at: 0,
            timeout: draw_timeout(config, rng),
            round: 0,
            replies: BTreeMap::new(),
            quorum_connected: false,
            highest_seen: Ballot::ZERO,
        }
    }

    pub(super) fn leader(&self) -> Option<Ballot> {
        self.leader
    }

    pub(super) fn ballot(&self) -> Ballot {
        self.ballot
    }

    pub(super) fn quorum_connected(&self) -> bool {
        self.quorum_connected
    }

    #[cfg(test)]
    pub(super) fn timeout(&self) -> u64 {
        self.timeout
    }

    #[cfg(test)]
    pub(super) fn round(&self) -> u64 {
        self.round
    }

    /// Pretends the last heartbeat round heard a majority.
    #[cfg(test)]
    pub(super) fn quorum_connected_for_tests(&mut self) {
        self.quorum_connected = true;
    }

    pub(super) fn route(&self) -> Option<NodeId> {
        self.route
    }

    pub(super) fn highest_seen(&self) -> Ballot {
        self.highest_seen
    }

    pub(super) fn observe(&mut self, ballot: Ballot) {
        self.highest_seen = self.highest_seen.max(ballot);
    }

    pub(super) fn set_ballot(&mut self, ballot: Ballot) {
        self.ballot = ballot;
        self.observe(ballot);
    }

    pub(super) fn set_leader(&mut self, leader: Option<Ballot>) {
        self.leader = leader;
    }
}

fn draw_timeout(config: &Config, rng: &mut ChaCha8Rng) -> u64 {
    rng.random_range(config.election_timeout_ticks_min..=config.election_timeout_ticks_max)
}

impl Replica {
    pub(super) fn start_heartbeat_round(&mut self) {
        // The heartbeat reports our height: peers hear first what it was reached by.
        self.tell_decisions();
        self.election.round += 1;
        self.election.replies.clear();
        let heartbeat = Heartbeat {
            round: self.election.round,
            decided: self.ledger.height(),
        };
        self.broadcast(Message::Heartbeat(heartbeat));
    }

    pub(super) fn handle_heartbeat(&mut self, from: NodeId, heartbeat: Heartbeat) {
        self.note_peer_height(from, heartbeat.decided);
        self.tell_decisions_to(from);
        let reply = HeartbeatReply {
            round: heartbeat.round,
            ballot: self.election.ballot,
            quorum_connected: self.election.quorum_connected,
            leader: self
                .election
                .leader
                .filter(|_| self.election.leader_heard_directly),
            decided: self.ledger.height(),
        };
        self.send(from, Message::HeartbeatReply(reply));
        self.fetch_if_behind();
    }

    pub(super) fn handle_heartbeat_reply(&mut self, from: NodeId, reply: HeartbeatReply) {
        self.note_peer_height(from, reply.decided);
        self.election.observe(reply.ballot);
        if let Some(leader) = reply.leader {
            self.election.observe(leader);
        }
        if reply.round == self.election.round {
            self.election.replies.insert(from, reply);
        }
        self.fetch_if_behind();
    }

    /// Judges the round that just ended: who is quorum-connected, who leads, whether the leader
    /// is lost.
    pub(super) fn end_heartbeat_round(&mut self) {
        let replies = std::mem::take(&mut self.election.replies);
        let quorum_connected = 1 + replies.len() >= self.config.majority();
        self.election.quorum_connected = quorum_connected;

        let own = self.election.ballot;
        let mut top = None;
        if quorum_connected {
            consider(
                &mut top,
                Sighting {
                    ballot: own,
                    route: None,
                    direct: true,
                },
            );
        }
        for (peer, reply) in &replies {
            if reply.quorum_connected {
                consider(
                    &mut top,
                    Sighting {
                        ballot: reply.ballot,
                        route: Some(*peer),
                        direct: true,
                    },
                );
            }
        }
        let direct_top = top.map(|sighting| sighting.ballot);
        for (peer, reply) in &replies {
            if let Some(leader) = reply.leader {
                let route = if leader.node == self.config.id {
                    None
                } else {
                    Some(*peer)
                };
                consider(
                    &mut top,
                    Sighting {
                        ballot: leader,
                        route,
                        direct: false,
                    },
                );
            }
        }

        match (top, self.election.leader) {
            (Some(seen), Some(leader)) if seen.ballot > leader => self.follow(Some(seen)),
            (Some(seen), Some(leader)) if seen.ballot == leader => {
                self.election.seen_at = self.now;
                self.election.route = seen.route;
            }
            (Some(seen), None) if seen.ballot != own => self.follow(Some(seen)),
            _ => {
                if self.now - self.election.seen_at >= self.election.timeout {
                    if quorum_connected {
                        let ballot = self.raise_ballot();
                        self.follow(Some(Sighting {
                            ballot,
                            route: None,
                            direct: true,
                        }));
                    } else if top.map(|seen| seen.ballot) != self.election.leader {
                        self.follow(top);
                    } else {
                        self.restart_election_timer();
                    }
                }
            }
        }
        self.election.leader_heard_directly =
            self.election.leader.is_some() && direct_top == self.election.leader;

        // Leading is this node's job but it is not doing it (a Nack made it step down): try again,
        // at most once a round, if it still hears a majority.
        if self
            .election
            .leader
            .is_some_and(|leader| leader.node == self.config.id)
            && matches!(self.role, Role::Follower)
            && quorum_connected
        {
            self.start_election();
        }
    }

    fn restart_election_timer(&mut self) {
        self.election.seen_at = self.now;
        self.election.timeout = draw_timeout(&self.config, &mut self.rng);
    }

    /// Raises this node's ballot above every ballot it knows of and returns it.
    pub(super) fn raise_ballot(&mut self) -> Ballot {
        let rounds = [
            self.election.ballot.round,
            self.election.highest_seen.round,
            self.election.leader.map_or(0, |leader| leader.round),
            self.promised.round,
        ];
        // Every ballot here passed `check_message` (rounds below ROUND_MAX) or was made by this
        // node, so the next round exists.
        let ballot = Ballot::above(rounds, self.config.id)
            .expect("every known ballot round is below ROUND_MAX");
        self.election.set_ballot(ballot);
        ballot
    }

    /// The connection with `peer` closed: its process is gone. It no longer counts as heard in
    /// this round, and if it was the leader, a quorum-connected follower takes over now rather
    /// than after its election timeout (the heartbeat round that would notice is up to a timeout
    /// away; a closed connection is certain).
    pub(super) fn disconnected(&mut self, peer: NodeId) {
        if peer == 0 || peer > self.config.nodes || peer == self.config.id {
            return;
        }
        self.peer_heard_at[peer as usize - 1] = None;
        self.election.replies.remove(&peer);
        self.ask_others_than(peer);
        let redirect = !self
            .config
            .planted_bugs
            .has(crate::bugs::PlantedBug::FetchOnlyFromAheadPromiser);
        if redirect && self.fetch.is_some_and(|fetch| fetch.peer == peer) {
            self.fetch = None;
            self.fetch_failed(peer);
            self.fetch_if_behind();
        }
        let leader_lost = self
            .election
            .leader
            .is_some_and(|leader| leader.node == peer);
        if leader_lost && self.election.quorum_connected && matches!(self.role, Role::Follower) {
            let ballot = self.raise_ballot();
            self.follow(Some(Sighting {
                ballot,
                route: None,
                direct: true,
            }));
        }
    }

    /// Gives up Phase 1 and follows no one until the next heartbeat round shows whom to follow.
    pub(super) fn abandon_candidacy(&mut self) {
        self.follow(None);
    }

    /// Follows the owner of `ballot`, seen in a Paxos message rather than in a heartbeat round,
    /// if it is above the leader followed now.
    pub(super) fn follow_ballot(&mut self, ballot: Ballot) {
        let above = self.election.leader.is_none_or(|leader| {
            leader < ballot || (leader.node == self.config.id && self.role_ballot().is_none())
        });
        if ballot.node == self.config.id || !above {
            return;
        }
        self.follow(Some(Sighting {
            ballot,
            route: Some(ballot.node),
            direct: false,
        }));
    }

    /// Follows the node of `sighting` (or no one), starting Phase 1 if that is this node.
    fn follow(&mut self, sighting: Option<Sighting>) {
        let leader = sighting.map(|seen| seen.ballot);
        let changed = self.election.leader != leader;
        self.election.leader = leader;
        self.election.route = sighting.and_then(|seen| seen.route);
        self.restart_election_timer();
        match leader {
            Some(ballot) if ballot.node == self.config.id && !self.election.quorum_connected => {
                // A peer still reports this node's old ballot, but this node hears no majority:
                // running would only depose the leader the majority has.
                self.election.leader = None;
                self.election.route = None;
                self.step_down(None);
                if changed {
                    self.ready
                        .events
                        .push(Event::LeaderChanged { leader: None });
                    self.forward_all_pending_again();
                }
            }
            Some(ballot) if ballot.node == self.config.id => {
                let running = self.role_ballot().filter(|current| *current >= ballot);
                match running {
                    Some(current) => self.election.leader = Some(current),
                    None => self.start_election(),
                }
            }
            _ => {
                self.step_down(None);
                if changed {
                    self.ready.events.push(Event::LeaderChanged { leader });
                    self.forward_all_pending_again();
                }
            }
        }
    }
}
