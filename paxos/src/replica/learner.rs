//! The learner: decided values become blocks, strictly in height order; a node that is behind
//! fetches the blocks it lacks and checks every hash link before it applies them.

use super::acceptor::ACCEPT_AHEAD_MAX;
use super::{Committed, Event, Fetch, FetchInFlight, ProposeError, Replica, Reply, Role};
use crate::bugs::PlantedBug;
use crate::ledger::{Batch, Block};
use crate::message::{Decide, Message};
use crate::storage::Write;
use crate::types::{Height, NodeId};

impl Replica {
    /// The leader says `slot` is decided in its ballot. The value comes with it when the leader did
    /// not ask us to accept it; otherwise, if we accepted that ballot's value we know the decided
    /// value, and if not we fetch the block.
    pub(super) fn handle_decide(&mut self, from: NodeId, decide: Decide) {
        if decide.slot <= self.ledger.height() {
            return;
        }
        if decide.batch.is_some() && decide.ballot.node != from {
            self.reject(
                from,
                &Message::Decide(decide),
                "only the leader of the ballot tells its decisions".to_string(),
            );
            return;
        }
        if let Some(batch) = decide.batch {
            // Kept only within the window an Accept may be, so a node far behind (cut from
            // every peer it could fetch from, say) holds a bounded number of values in memory.
            if decide.slot <= self.ledger.height() + ACCEPT_AHEAD_MAX {
                self.learn(decide.slot, batch);
            }
            if decide.slot > self.ledger.height() {
                // Blocks below it are missing: ask for them, from the leader first, as for a
                // decision whose value we lack.
                self.fetch_preferring(Some(from));
            }
            return;
        }
        match self.accepted.get(&decide.slot) {
            Some((ballot, batch)) if *ballot == decide.ballot => {
                let batch = batch.clone();
                self.learn(decide.slot, batch);
            }
            _ => self.fetch_preferring(Some(from)),
        }
    }

    /// Records `batch` as decided for `slot` and applies every block that is now contiguous.
    pub(super) fn learn(&mut self, slot: Height, batch: Batch) {
        if slot <= self.ledger.height() {
            return;
        }
        match self.decided.get(&slot) {
            Some(known) => assert_eq!(
                known, &batch,
                "agreement violated: slot {slot} decided twice with different batches"
            ),
            None => {
                self.decided.insert(slot, batch);
            }
        }
        self.apply_decided();
    }

    fn apply_decided(&mut self) {
        let height = self.ledger.height();
        while let Some(batch) = self.decided.remove(&(self.ledger.height() + 1)) {
            let block = self.ledger.apply(batch.proposer, &batch.transfers);
            self.on_appended(block);
        }
        if self.ledger.height() > height {
            // A candidate may have been waiting for exactly these blocks.
            self.try_finish_election();
        }
    }

    /// Bookkeeping once `block` is the chain's head: forget what it settles, answer the clients
    /// waiting on its transfers, and write it.
    fn on_appended(&mut self, block: Block) {
        let height = block.height;
        self.accepted = self.accepted.split_off(&(height + 1));
        if let Role::Leader(leader) = &mut self.role {
            // Blocks can reach a leader by catch-up (another leader decided them): never propose
            // at or below the chain's head.
            leader.next_slot = leader.next_slot.max(height + 1);
            leader.in_flight = leader.in_flight.split_off(&(height + 1));
            for entry in &block.entries {
                leader.proposed.remove(&entry.transfer.id);
            }
        }
        for entry in &block.entries {
            let Some(pending) = self.pending.remove(&entry.transfer.id) else {
                continue;
            };
            let record = self
                .ledger
                .lookup(&entry.transfer.id)
                .expect("an applied block's transfers are indexed");
            let same = record.transfer == pending.transfer
                || self
                    .config
                    .planted_bugs
                    .has(PlantedBug::AcknowledgeConflictingId);
            let result = if same {
                Ok(Committed {
                    height: record.height,
                    block_hash: record.block_hash,
                    outcome: record.outcome.clone(),
                })
            } else {
                Err(ProposeError::IdConflict {
                    id: record.transfer.id.clone(),
                    from: record.transfer.from,
                    to: record.transfer.to,
                    amount: record.transfer.amount,
                })
            };
            self.ready
                .writes
                .push(Write::RemovePending(entry.transfer.id.clone()));
            self.answer(Reply {
                id: entry.transfer.id.clone(),
                result,
            });
        }
        self.ready.writes.push(Write::AppendBlock(block));
        self.ready
            .writes
            .push(Write::Snapshot(self.ledger.snapshot()));
    }

    /// Blocks fetched from `from` arrive: append each one that extends the chain and verifies.
    /// No blocks at all means the fetch failed or the peer had none to give: the next fetch goes
    /// to another peer.
    pub(super) fn receive_blocks(&mut self, from: NodeId, blocks: Vec<Block>) {
        if from == 0 || from > self.config.nodes || from == self.config.id {
            return;
        }
        let answered = self.fetch.is_some_and(|fetch| fetch.peer == from);
        if answered {
            self.fetch = None;
        }
        let first = self.ledger.height() + 1;
        for block in blocks {
            if block.height <= self.ledger.height() {
                continue;
            }
            if let Some(known) = self.decided.get(&block.height) {
                assert_eq!(
                    known,
                    &block.batch(),
                    "agreement violated: block {} from node {from} differs from the value decided here",
                    block.height
                );
            }
            if let Err(error) = self.ledger.append(&block) {
                self.ready
                    .events
                    .push(Event::ChainRejected { peer: from, error });
                break;
            }
            self.decided.remove(&block.height);
            self.on_appended(block);
        }
        let last = self.ledger.height();
        if last >= first {
            self.ready.events.push(Event::CaughtUp {
                peer: from,
                from: first,
                to: last,
            });
            self.note_peer_height(from, last);
        } else {
            // The peer had nothing for us: do not count on it until it reports a greater height.
            self.peer_heights[from as usize - 1] = last;
            if answered {
                self.fetch_failed(from);
            }
        }
        self.apply_decided();
        self.fetch_if_behind();
        self.try_finish_election();
    }

    /// Fetches the blocks above our height from a peer that has them, if any does and no fetch
    /// is already waiting for its answer.
    pub(super) fn fetch_if_behind(&mut self) {
        self.fetch_preferring(None);
    }

    /// Like [`Replica::fetch_if_behind`], but asks `preferred` (a peer that told us of a slot we
    /// lack, say) unless it recently failed us. A fetch unanswered for too long counts as failed.
    pub(super) fn fetch_preferring(&mut self, preferred: Option<NodeId>) {
        if let Some(fetch) = self.fetch {
            if self.now - fetch.sent_at < self.config.fetch_timeout_ticks {
                return;
            }
            self.fetch = None;
            self.fetch_failed(fetch.peer);
        }
        if self.config.planted_bugs.has(PlantedBug::FetchFromSamePeer) {
            // The old choice: the peer reporting the greatest height, reachable or not.
            if let Some(peer) = preferred.or_else(|| self.highest_peer()) {
                self.issue_fetch(peer);
            }
            return;
        }
        let target = preferred
            .filter(|peer| self.fetch_avoid_until[*peer as usize - 1] <= self.now)
            .or_else(|| self.fetch_target());
        if let Some(peer) = target {
            self.issue_fetch(peer);
        }
    }

    /// Asks `peer` and nobody else, retrying it after each timeout (the old behaviour behind the
    /// `FetchOnlyFromAheadPromiser` planted bug).
    pub(super) fn fetch_from_only(&mut self, peer: NodeId) {
        if let Some(fetch) = self.fetch {
            if self.now - fetch.sent_at < self.config.fetch_timeout_ticks {
                return;
            }
        }
        self.issue_fetch(peer);
    }

    /// The peer to fetch from: among peers that report blocks we lack and that we heard from
    /// recently, one that has not just failed us, then the one furthest ahead, ties broken by a
    /// rotation so that repeated failures walk through every candidate.
    fn fetch_target(&self) -> Option<NodeId> {
        let height = self.ledger.height();
        let nodes = u64::from(self.config.nodes);
        let heard_since = self.now.saturating_sub(FETCH_HEARD_TICKS);
        self.config
            .peers()
            .filter(|peer| self.peer_heights[*peer as usize - 1] > height)
            .filter(|peer| {
                self.peer_heard_at[*peer as usize - 1].is_some_and(|at| at >= heard_since)
            })
            .min_by_key(|peer| {
                let index = *peer as usize - 1;
                (
                    self.fetch_avoid_until[index].max(self.now),
                    std::cmp::Reverse(self.peer_heights[index]),
                    (u64::from(*peer) + self.now) % nodes,
                )
            })
    }

    /// The peer reporting the greatest height above ours, heard or not.
    fn highest_peer(&self) -> Option<NodeId> {
        let height = self.ledger.height();
        self.config
            .peers()
            .map(|node| (node, self.peer_heights[node as usize - 1]))
            .filter(|(_, peer_height)| *peer_height > height)
            .max_by_key(|(node, peer_height)| (*peer_height, std::cmp::Reverse(*node)))
            .map(|(node, _)| node)
    }

    fn issue_fetch(&mut self, peer: NodeId) {
        self.fetch = Some(FetchInFlight {
            peer,
            sent_at: self.now,
        });
        self.ready.fetches.push(Fetch {
            peer,
            from: self.ledger.height() + 1,
        });
    }

    /// A fetch from `peer` failed or timed out: ask others for a while. A candidate that counted on
    /// this peer's blocks judges its election again without that promise: Phase 1 needs a majority
    /// of promises whose blocks it can actually get, and the peer may promise again.
    pub(super) fn fetch_failed(&mut self, peer: NodeId) {
        let index = peer as usize - 1;
        self.fetch_avoid_until[index] = self.now + FETCH_AVOID_TICKS;
        let height = self.ledger.height();
        if let Role::Candidate(candidate) = &mut self.role {
            if candidate
                .promises
                .get(&peer)
                .is_some_and(|promise| promise.decided > height)
            {
                candidate.promises.remove(&peer);
            }
        }
    }
}

/// Catch-up asks only peers heard from within this many ticks: one that went silent is likely
/// down or cut off, and its blocks would never come.
const FETCH_HEARD_TICKS: u64 = 3;
/// After a failed fetch, the peer is asked again only once the others were tried, or after this
/// many ticks.
const FETCH_AVOID_TICKS: u64 = 20;
