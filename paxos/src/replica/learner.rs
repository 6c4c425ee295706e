//! The learner: decided values become blocks, strictly in height order; a node that is behind
//! fetches the blocks it lacks and checks every hash link before it applies them.

use super::{Committed, Event, Fetch, FetchInFlight, ProposeError, Replica, Reply, Role};
use crate::ledger::{Batch, Block};
use crate::message::Decide;
use crate::storage::Write;
use crate::types::{Height, NodeId};

impl Replica {
    /// The leader says `slot` is decided in its ballot. If we accepted that ballot's value we know
    /// the decided value; otherwise we fetch the block.
    pub(super) fn handle_decide(&mut self, from: NodeId, decide: Decide) {
        if decide.slot <= self.ledger.height() {
            return;
        }
        match self.accepted.get(&decide.slot) {
            Some((ballot, batch)) if *ballot == decide.ballot => {
                let batch = batch.clone();
                self.learn(decide.slot, batch);
            }
            _ => self.fetch_from(from),
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
            let result = if record.transfer == pending.transfer {
                Ok(Committed {
                    height: record.height,
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
    }

    /// Blocks fetched from `from` arrive: append each one that extends the chain and verifies.
    pub(super) fn receive_blocks(&mut self, from: NodeId, blocks: Vec<Block>) {
        if from == 0 || from > self.config.nodes || from == self.config.id {
            return;
        }
        if self.fetch.is_some_and(|fetch| fetch.peer == from) {
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
            // The peer had nothing for us; do not ask it again until it reports a greater height.
            self.peer_heights[from as usize - 1] = last;
        }
        self.apply_decided();
        self.fetch_if_behind();
        self.try_finish_election();
    }

    /// Fetches from the peer reporting the greatest height, if that is above ours.
    pub(super) fn fetch_if_behind(&mut self) {
        let height = self.ledger.height();
        let best = (1..=self.config.nodes)
            .filter(|node| *node != self.config.id)
            .map(|node| (node, self.peer_heights[node as usize - 1]))
            .filter(|(_, peer_height)| *peer_height > height)
            .max_by_key(|(node, peer_height)| (*peer_height, std::cmp::Reverse(*node)));
        if let Some((peer, _)) = best {
            self.fetch_from(peer);
        }
    }

    /// Asks the host to fetch the blocks above our height from `peer`, unless a fetch is already
    /// waiting for its answer. A fetch unanswered for too long is abandoned and the peer is not
    /// asked again until it reports its height anew.
    pub(super) fn fetch_from(&mut self, peer: NodeId) {
        if let Some(fetch) = self.fetch {
            if self.now - fetch.sent_at < self.config.fetch_timeout_ticks {
                return;
            }
            self.peer_heights[fetch.peer as usize - 1] = 0;
        }
        self.fetch = Some(FetchInFlight {
            peer,
            sent_at: self.now,
        });
        self.ready.fetches.push(Fetch {
            peer,
            from: self.ledger.height() + 1,
        });
    }
}
