//! The proposer: Phase 1 as a candidate, then Phase 2 as a stable leader that batches client
//! transfers and keeps several slots in flight.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use super::{Candidate, Event, Leader, Outgoing, Proposal, Queued, Replica, Role, Untold};
use crate::bugs::PlantedBug;
use crate::ledger::{Batch, Transfer};
use crate::message::{Accept, Accepted, Decide, Message, Nack, Prepare, Promise};
use crate::storage::Write;
use crate::types::{Ballot, Height, NodeId};

/// A proposal unanswered for this many ticks is sent again to the acceptors that have not voted.
const ACCEPT_RESEND_TICKS: u64 = 2;
/// A proposal sent to the asked peers only and still undecided at the next tick goes to every
/// peer that has not voted: a slow or cut-off asked peer holds a slot up for at most one tick.
const ACCEPT_WIDEN_TICKS: u64 = 1;
/// Values the peers not asked have not been told, in transfers, beyond which they are told at
/// once rather than in front of the next heartbeat: it bounds the frame that carries them
/// however long a tick is.
pub(super) const UNTOLD_TRANSFERS_MAX: usize = 8_192;

impl Replica {
    /// The ballot this node runs Phase 1 or leads with, if it does.
    pub(super) fn role_ballot(&self) -> Option<Ballot> {
        match &self.role {
            Role::Follower => None,
            Role::Candidate(candidate) => Some(candidate.ballot),
            Role::Leader(leader) => Some(leader.ballot),
        }
    }

    /// Phase 1a: promise our own ballot (durably, in this step's batch, before any Prepare leaves)
    /// and ask every peer for a promise.
    pub(super) fn start_election(&mut self) {
        let mut ballot = self.election.ballot();
        if ballot.node != self.config.id
            || !self.ballot_below(self.promised, ballot)
            || ballot < self.election.highest_seen()
        {
            ballot = self.raise_ballot();
        }
        self.step_down(None);
        self.election.set_ballot(ballot);
        self.election.set_leader(Some(ballot));
        self.promised = ballot;
        self.write_acceptor_state(Write::Promise(ballot));
        let height = self.ledger.height();
        let own = Promise {
            ballot,
            decided: height,
            accepted: self.accepted_values_above(height),
        };
        let mut promises = BTreeMap::new();
        promises.insert(self.config.id, own);
        self.role = Role::Candidate(Candidate {
            ballot,
            started_at: self.now,
            promises,
            forwarded: Vec::new(),
        });
        self.ready.events.push(Event::ElectionStarted { ballot });
        self.broadcast(Message::Prepare(Prepare {
            ballot,
            decided: height,
        }));
        self.try_finish_election();
    }

    /// Once a tick while Phase 1 runs: a candidate that could not finish within an election
    /// timeout (a promiser it needed blocks from went away, say) starts over with a higher ballot,
    /// so it waits on nobody in particular; otherwise it sends Prepare again to peers that have
    /// not promised (messages may be lost) and retries the catch-up it may be waiting for.
    pub(super) fn resend_prepare(&mut self) {
        let Role::Candidate(candidate) = &self.role else {
            return;
        };
        let gives_up = !self
            .config
            .planted_bugs
            .has(PlantedBug::FetchOnlyFromAheadPromiser);
        if gives_up && self.now - candidate.started_at >= self.config.election_timeout_ticks_max {
            if !self.election.quorum_connected()
                && !self.config.planted_bugs.has(PlantedBug::RerunWithoutQuorum)
            {
                // It no longer hears a majority (its heartbeat replies are lost, say, while its
                // own messages still arrive): a higher ballot could not win, it would only
                // depose the leader the majority has. It goes back to following.
                self.abandon_candidacy();
                return;
            }
            let ballot = self.raise_ballot();
            self.election.set_ballot(ballot);
            self.start_election();
            return;
        }
        self.try_finish_election();
        let Role::Candidate(candidate) = &self.role else {
            return;
        };
        let prepare = Prepare {
            ballot: candidate.ballot,
            decided: self.ledger.height(),
        };
        if candidate.started_at == self.now {
            // Phase 1 began this very tick: its Prepares are on their way.
            return;
        }
        let silent: Vec<NodeId> = self
            .config
            .peers()
            .filter(|peer| !candidate.promises.contains_key(peer))
            .collect();
        for peer in silent {
            self.send(peer, Message::Prepare(prepare.clone()));
        }
    }

    /// Phase 1b arrives.
    pub(super) fn handle_promise(&mut self, from: NodeId, promise: Promise) {
        self.note_peer_height(from, promise.decided);
        let Role::Candidate(candidate) = &mut self.role else {
            return;
        };
        if promise.ballot != candidate.ballot {
            return;
        }
        candidate.promises.insert(from, promise);
        self.try_finish_election();
    }

    /// With promises from a majority, becomes leader: first learns every block a promiser has
    /// decided, then re-proposes, slot by slot, the value accepted in the highest ballot (Paxos'
    /// rule that keeps a possibly chosen value chosen), filling slots nobody accepted with empty
    /// batches.
    pub(super) fn try_finish_election(&mut self) {
        let Role::Candidate(candidate) = &self.role else {
            return;
        };
        if candidate.promises.len() < self.config.majority() {
            return;
        }
        let height = self.ledger.height();
        let (ahead_peer, ahead_height) = candidate
            .promises
            .iter()
            .map(|(node, promise)| (*node, promise.decided))
            .max_by_key(|(_, decided)| *decided)
            .expect("a majority is at least one promise");
        if ahead_height > height {
            // Slots up to `ahead_height` are decided; their values come by catch-up, never by
            // a new proposal. Any peer that has the blocks will do: if the fetch fails, the
            // promiser that reported them is dropped and the election judged again.
            if self
                .config
                .planted_bugs
                .has(PlantedBug::FetchOnlyFromAheadPromiser)
            {
                self.fetch_from_only(ahead_peer);
            } else {
                self.fetch_if_behind();
            }
            return;
        }
        let ballot = candidate.ballot;
        let forwarded = candidate.forwarded.clone();
        let mut values: BTreeMap<Height, (Ballot, Batch)> = BTreeMap::new();
        if !self
            .config
            .planted_bugs
            .has(PlantedBug::IgnorePromisedValues)
        {
            for promise in candidate.promises.values() {
                for value in promise.accepted.iter().filter(|value| value.slot > height) {
                    let replace = values
                        .get(&value.slot)
                        .is_none_or(|(best, _)| self.ballot_below(*best, value.ballot));
                    if replace {
                        values.insert(value.slot, (value.ballot, value.batch.clone()));
                    }
                }
            }
        }
        for (slot, batch) in &self.decided {
            values.insert(*slot, (ballot, batch.clone()));
        }
        let top_slot = values.keys().next_back().copied().unwrap_or(height);
        self.role = Role::Leader(Leader {
            ballot,
            next_slot: height + 1,
            in_flight: BTreeMap::new(),
            queue: VecDeque::new(),
            proposed: HashSet::default(),
            untold: Vec::new(),
            asked: BTreeSet::new(),
            probe_due: true,
        });
        // Clients anywhere may wait on what an earlier leader proposed.
        let everyone: BTreeSet<NodeId> = self.config.peers().collect();
        for slot in height + 1..=top_slot {
            let batch = match values.remove(&slot) {
                Some((_, batch)) => batch,
                None => Batch {
                    proposer: self.config.id,
                    transfers: Vec::new(),
                },
            };
            self.propose_at(slot, batch, everyone.clone());
        }
        self.ready.events.push(Event::BecameLeader {
            ballot,
            reproposed: (top_slot - height) as usize,
        });
        let id = self.config.id;
        let own: Vec<Queued> = self
            .pending()
            .map(|transfer| Queued {
                transfer: transfer.clone(),
                from: id,
            })
            .collect();
        for queued in own.into_iter().chain(forwarded) {
            self.enqueue(queued.transfer, queued.from);
        }
        self.propose_from_queue();
    }

    /// Gives up candidacy or leadership (if any). When a higher ballot is the reason, its owner
    /// is running Phase 1 or leading: follow it, and give it a full election timeout before
    /// contesting, so two candidates do not take turns outbidding each other every round.
    pub(super) fn step_down(&mut self, higher: Option<Ballot>) {
        // What this node decided stays decided: say so before forgetting it led.
        self.tell_decisions();
        if let Some(ballot) = self.role_ballot() {
            self.role = Role::Follower;
            self.ready
                .events
                .push(Event::SteppedDown { ballot, higher });
        }
        if let Some(higher) = higher {
            self.election.observe(higher);
            self.follow_ballot(higher);
        }
    }

    /// An acceptor refused our ballot: someone promised a higher one.
    pub(super) fn handle_nack(&mut self, _from: NodeId, nack: Nack) {
        self.election.observe(nack.promised);
        if self.role_ballot() == Some(nack.ballot) && self.ballot_below(nack.ballot, nack.promised)
        {
            self.step_down(Some(nack.promised));
        }
    }

    /// Queues a transfer for proposal unless it is already queued or in flight. (One already
    /// decided would only be recorded as a duplicate; the node that took it from its client
    /// answered from the chain before forwarding, so that is rare and not worth a lookup per
    /// transfer here.)
    pub(super) fn enqueue(&mut self, transfer: Transfer, from: NodeId) {
        let queue_max = self.config.queue_transfers_max;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        if leader.queue.len() >= queue_max || leader.proposed.contains(&transfer.id) {
            return;
        }
        leader.proposed.insert(transfer.id.clone());
        leader.queue.push_back(Queued { transfer, from });
    }

    /// Proposes queued transfers as one batch when the in-flight window has room and this node
    /// is not still writing its vote for an earlier slot. That is group commit on the leader: what
    /// arrives while its disk works goes into the next block, so blocks fill themselves with what
    /// is waiting, and no timer delays a proposal.
    pub(super) fn propose_from_queue(&mut self) {
        let id = self.config.id;
        loop {
            let Role::Leader(leader) = &mut self.role else {
                return;
            };
            let writing_own_vote = leader
                .in_flight
                .values()
                .any(|proposal| !proposal.accepted_by.contains(&id));
            if leader.in_flight.len() >= self.config.in_flight_slots_max
                || leader.queue.is_empty()
                || writing_own_vote
            {
                return;
            }
            let take = leader.queue.len().min(self.config.batch_transfers_max);
            let mut waiting = BTreeSet::new();
            let transfers: Vec<Transfer> = leader
                .queue
                .drain(..take)
                .map(|queued| {
                    if queued.from != id {
                        waiting.insert(queued.from);
                    }
                    queued.transfer
                })
                .collect();
            let slot = leader.next_slot;
            let batch = Batch {
                proposer: id,
                transfers,
            };
            self.propose_at(slot, batch, waiting);
        }
    }

    /// Phase 2a for one slot: ask the peers in `Leader::asked` to accept it (every peer, for a
    /// probe), and accept it ourselves. The Accepts leave at once, while our own vote is written;
    /// the vote comes back to us as an Accepted once durable (see `Ready`), and only then counts
    /// towards the majority. Decisions not yet told to the peers asked travel in front of the
    /// Accepts. `waiting`: the peers to tell at once when it is decided.
    ///
    /// Asking only a majority is still Paxos: a value is chosen once a majority accepted it,
    /// whichever majority. It spares the other peers a flush and a vote per block, and on a small
    /// machine it spares the peers that decide the CPU those would take. A slot they leave
    /// undecided goes to every peer at the next tick (`ACCEPT_WIDEN_TICKS`), or at once when one
    /// of them disconnects.
    fn propose_at(&mut self, slot: Height, batch: Batch, waiting: BTreeSet<NodeId>) {
        let peers_needed = self.config.majority() - 1;
        let everyone: BTreeSet<NodeId> = self.config.peers().collect();
        let Role::Leader(leader) = &mut self.role else {
            unreachable!("only a leader proposes");
        };
        assert!(
            slot > self.ledger.height(),
            "slot {slot} is already in the chain"
        );
        let probe = leader.probe_due || leader.asked.len() < peers_needed;
        let asked = if probe {
            leader.probe_due = false;
            everyone
        } else {
            leader.asked.clone()
        };
        let ballot = leader.ballot;
        leader.next_slot = leader.next_slot.max(slot + 1);
        leader.in_flight.insert(
            slot,
            Proposal {
                batch: batch.clone(),
                accepted_by: BTreeSet::new(),
                sent_at: self.now,
                waiting,
                asked: asked.clone(),
                probe_votes: probe.then(Vec::new),
            },
        );
        for peer in asked {
            self.tell_decisions_to(peer);
            self.send(
                peer,
                Message::Accept(Accept {
                    ballot,
                    slot,
                    batch: batch.clone(),
                }),
            );
        }
        self.accepted.insert(slot, (ballot, batch.clone()));
        self.write_acceptor_state(Write::Accept {
            slot,
            ballot,
            batch,
        });
        let own_vote = Outgoing {
            to: self.config.id,
            message: Message::Accepted(Accepted { ballot, slot }),
        };
        if self
            .config
            .planted_bugs
            .has(PlantedBug::LeaderVoteBeforeWrite)
        {
            self.ready.messages.push(own_vote);
        } else {
            self.ready.messages_after_writes.push(own_vote);
        }
    }

    /// Once a tick: the next proposal is a probe, and proposals unanswered for a while go again
    /// to every acceptor that has not voted, asked at first or not (at the first tick, for a
    /// proposal that went to the asked peers only).
    pub(super) fn resend_accepts(&mut self) {
        let now = self.now;
        let peers = self.config.nodes as usize - 1;
        let asked_only = self.config.planted_bugs.has(PlantedBug::AskedPeersOnly);
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        leader.probe_due = true;
        self.ask_again(
            |proposal| {
                let due = if proposal.asked.len() < peers {
                    ACCEPT_WIDEN_TICKS
                } else {
                    ACCEPT_RESEND_TICKS
                };
                now - proposal.sent_at >= due
            },
            |proposal, peer| !asked_only || proposal.asked.contains(&peer),
        );
    }

    /// Sends each in-flight proposal `due` picks again, to the peers that have not voted for it
    /// and that `to` picks, and counts it sent now.
    fn ask_again(
        &mut self,
        due: impl Fn(&Proposal) -> bool,
        to: impl Fn(&Proposal, NodeId) -> bool,
    ) {
        let now = self.now;
        let peers: Vec<NodeId> = self.config.peers().collect();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let ballot = leader.ballot;
        let mut resend = Vec::new();
        for (slot, proposal) in leader.in_flight.iter_mut() {
            if !due(proposal) {
                continue;
            }
            proposal.sent_at = now;
            for peer in peers.iter().copied() {
                if !proposal.accepted_by.contains(&peer) && to(proposal, peer) {
                    let accept = Accept {
                        ballot,
                        slot: *slot,
                        batch: proposal.batch.clone(),
                    };
                    resend.push((peer, accept));
                }
            }
        }
        for (peer, accept) in resend {
            self.send(peer, Message::Accept(accept));
        }
    }

    /// Phase 2b arrives (from a peer, or our own vote once durable); a majority decides the slot.
    pub(super) fn handle_accepted(&mut self, from: NodeId, accepted: Accepted) {
        let mut majority = self.config.majority();
        if self
            .config
            .planted_bugs
            .has(PlantedBug::DecideWithoutQuorum)
        {
            majority = majority.saturating_sub(1).max(1);
        }
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        if accepted.ballot != leader.ballot {
            return;
        }
        let Some(proposal) = leader.in_flight.get_mut(&accepted.slot) else {
            return;
        };
        let first_vote = proposal.accepted_by.insert(from);
        let peers_needed = self.config.majority() - 1;
        let mut fastest = None;
        if let Some(votes) = &mut proposal.probe_votes {
            // The peers that answer a probe first are asked for the slots that follow.
            if first_vote && from != self.config.id && votes.len() < peers_needed {
                votes.push(from);
                if votes.len() == peers_needed {
                    fastest = Some(votes.iter().copied().collect());
                }
            }
        }
        let decided = proposal.accepted_by.len() >= majority;
        if let Some(fastest) = fastest {
            leader.asked = fastest;
        }
        if decided {
            self.decide(accepted.slot);
        } else if from == self.config.id {
            // Our vote for this slot is durable: the next batch may go.
            self.propose_from_queue();
        }
    }

    /// The connection with `gone` closed. If it was one of the peers asked, the slots it has not
    /// voted for go at once to the peers not asked for them, and the next proposal is a probe.
    pub(super) fn ask_others_than(&mut self, gone: NodeId) {
        if self.config.planted_bugs.has(PlantedBug::AskedPeersOnly) {
            return;
        }
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        // A probe it answered before it went must not make it one of the peers asked.
        for proposal in leader.in_flight.values_mut() {
            if let Some(votes) = &mut proposal.probe_votes {
                votes.retain(|voter| *voter != gone);
            }
        }
        if !leader.asked.remove(&gone) {
            return;
        }
        leader.probe_due = true;
        self.ask_again(
            |proposal| proposal.asked.contains(&gone) && !proposal.accepted_by.contains(&gone),
            |proposal, peer| peer != gone && !proposal.asked.contains(&peer),
        );
    }

    /// A majority accepted `slot`: tell the peers whose clients wait on it now and everyone else
    /// soon (see `Leader::untold`), learn it, and use the freed window.
    fn decide(&mut self, slot: Height) {
        let peers = self.config.nodes as usize - 1;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let ballot = leader.ballot;
        let Some(proposal) = leader.in_flight.remove(&slot) else {
            return;
        };
        let decide = Decide {
            ballot,
            slot,
            batch: None,
        };
        if proposal.waiting.len() < peers {
            leader.untold.push(Untold {
                decide: decide.clone(),
                told: proposal.waiting.clone(),
                batch: proposal.batch.clone(),
                asked: proposal.asked.clone(),
            });
        }
        let untold_values: usize = leader
            .untold
            .iter()
            .filter(|untold| untold.asked.len() < peers)
            .map(|untold| untold.batch.transfers.len())
            .sum();
        for peer in &proposal.waiting {
            let batch = (!proposal.asked.contains(peer)).then(|| proposal.batch.clone());
            self.send(
                *peer,
                Message::Decide(Decide {
                    batch,
                    ..decide.clone()
                }),
            );
        }
        if untold_values > UNTOLD_TRANSFERS_MAX {
            self.tell_decisions();
        }
        self.learn(slot, proposal.batch);
        self.propose_from_queue();
    }

    /// Tells every peer the decisions it has not heard yet.
    pub(super) fn tell_decisions(&mut self) {
        if !matches!(&self.role, Role::Leader(leader) if !leader.untold.is_empty()) {
            return;
        }
        for peer in self.config.peers().collect::<Vec<_>>() {
            self.tell_decisions_to(peer);
        }
    }

    /// Tells `peer` the decisions it has not heard yet. Called before anything that reports this
    /// node's height goes to it, so that it never fetches a block only because its Decide waited.
    pub(super) fn tell_decisions_to(&mut self, peer: NodeId) {
        let peers = self.config.nodes as usize - 1;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let mut decides = Vec::new();
        for untold in &mut leader.untold {
            if untold.told.insert(peer) {
                let batch = (!untold.asked.contains(&peer)).then(|| untold.batch.clone());
                decides.push(Decide {
                    batch,
                    ..untold.decide.clone()
                });
            }
        }
        leader.untold.retain(|untold| untold.told.len() < peers);
        for decide in decides {
            self.send(peer, Message::Decide(decide));
        }
    }
}
