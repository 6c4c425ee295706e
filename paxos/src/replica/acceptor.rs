//! The acceptor: promises (Phase 1b) and votes (Phase 2b).
//!
//! Paxos' safety rests here. An acceptor never answers a ballot below its promise, and everything
//! its answer vouches for (the promise, the accepted value) is in the step's durable batch, which
//! the host writes before it sends the answer.

use super::Replica;
use crate::bugs::PlantedBug;
use crate::message::{Accept, Accepted, AcceptedValue, Message, Nack, Prepare, Promise};
use crate::storage::Write;
use crate::types::{Ballot, Height, NodeId};

/// How far above its own height an acceptor stores accepted values: twice the deepest pipeline a
/// leader may run. A node further behind than this declines to vote (a majority does not need it)
/// and catches up first, so a peer cannot make it hold more than this many batches in memory, on
/// disk or in a Promise.
pub(super) const ACCEPT_AHEAD_MAX: Height = 2 * crate::config::IN_FLIGHT_SLOTS_LIMIT as Height;

impl Replica {
    /// Phase 1b. Paxos: promise not to accept ballots below `ballot`, and report every value
    /// accepted so far, so the new leader re-proposes whatever may have been chosen.
    pub(super) fn handle_prepare(&mut self, from: NodeId, prepare: Prepare) {
        self.note_peer_height(from, prepare.decided);
        self.election.observe(prepare.ballot);
        if self.ballot_below(prepare.ballot, self.promised) {
            self.send_nack(from, prepare.ballot);
            return;
        }
        self.raise_promise(prepare.ballot);
        let promise = Promise {
            ballot: prepare.ballot,
            decided: self.ledger.height(),
            accepted: self.accepted_values_above(prepare.decided),
        };
        self.send(from, Message::Promise(promise));
        self.fetch_if_behind();
    }

    /// Phase 2b. Paxos: accept unless a higher ballot was promised.
    pub(super) fn handle_accept(&mut self, from: NodeId, accept: Accept) {
        self.election.observe(accept.ballot);
        let below = self.ballot_below(accept.ballot, self.promised)
            && !self.config.planted_bugs.has(PlantedBug::AcceptBelowPromise);
        if below {
            self.send_nack(from, accept.ballot);
            return;
        }
        let height = self.ledger.height();
        if accept.slot > height + ACCEPT_AHEAD_MAX {
            self.reject(
                from,
                &Message::Accept(accept),
                "slot too far above this node's height".to_string(),
            );
            self.fetch_preferring(Some(from));
            return;
        }
        self.raise_promise(accept.ballot);
        // A slot at or below the chain's head is decided, and Paxos makes any later proposal for it
        // the decided value: the vote is safe without storing anything.
        if accept.slot > height {
            self.accepted
                .insert(accept.slot, (accept.ballot, accept.batch.clone()));
            self.write_acceptor_state(Write::Accept {
                slot: accept.slot,
                ballot: accept.ballot,
                batch: accept.batch,
            });
        }
        let accepted = Accepted {
            ballot: accept.ballot,
            slot: accept.slot,
        };
        self.send(from, Message::Accepted(accepted));
    }

    /// Promises `ballot` if it is above the current promise; a candidate or leader with a lower
    /// ballot steps down, as its own acceptor now refuses it.
    ///
    /// A new promise also counts as sight of a live candidate: like granting a vote in Raft, it
    /// restarts the election timer, so nodes that lost the same leader at the same moment do not
    /// outbid the first candidate before it can finish Phase 1.
    fn raise_promise(&mut self, ballot: Ballot) {
        if self.promised < ballot {
            self.promised = ballot;
            self.write_acceptor_state(Write::Promise(ballot));
            if self.role_ballot().is_some_and(|own| own < ballot) {
                self.step_down(Some(ballot));
            } else {
                self.follow_ballot(ballot);
            }
        }
    }

    fn send_nack(&mut self, to: NodeId, ballot: Ballot) {
        let nack = Nack {
            ballot,
            promised: self.promised,
        };
        self.send(to, Message::Nack(nack));
    }

    /// Every value accepted above the chain's head and above `height`.
    pub(super) fn accepted_values_above(&self, height: Height) -> Vec<AcceptedValue> {
        self.accepted
            .range(height.saturating_add(1)..)
            .map(|(slot, (ballot, batch))| AcceptedValue {
                slot: *slot,
                ballot: *ballot,
                batch: batch.clone(),
            })
            .collect()
    }
}
