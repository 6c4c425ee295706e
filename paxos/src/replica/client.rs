//! Client transfers: validation on arrival, the durable pending log, and forwarding to the leader.

use super::{Committed, Pending, ProposeError, Queued, Replica, Reply, Role};
use crate::bugs::PlantedBug;
use crate::config::FORWARD_HOPS_MAX;
use crate::ledger::Transfer;
use crate::message::{Forward, Message};
use crate::storage::Write;
use crate::types::NodeId;

impl Replica {
    /// A client asks this node to order `transfer`. It is answered at once if it can never apply
    /// or its id is already decided; otherwise it enters the pending log (durably, before the
    /// host acknowledges anything) and goes to the leader.
    pub(super) fn propose(&mut self, transfer: Transfer) {
        if let Err(rejection) = self.ledger.check_shape(&transfer) {
            self.reply(&transfer, Err(ProposeError::Invalid(rejection)));
            return;
        }
        if let Some(record) = self.ledger.lookup(&transfer.id) {
            let result = if record.transfer == transfer {
                Ok(Committed {
                    height: record.height,
                    block_hash: record.block_hash,
                    outcome: record.outcome.clone(),
                })
            } else {
                Err(id_conflict(&record.transfer))
            };
            self.reply(&transfer, result);
            return;
        }
        if let Some(pending) = self.pending.get(&transfer.id) {
            if pending.transfer != transfer {
                let conflict = id_conflict(&pending.transfer);
                self.reply(&transfer, Err(conflict));
            }
            // The same transfer again: the client is simply waiting once more.
            return;
        }
        if self.pending.len() >= self.config.pending_transfers_max {
            let limit = self.config.pending_transfers_max;
            self.reply(&transfer, Err(ProposeError::Busy { limit }));
            return;
        }
        if !self.config.planted_bugs.has(PlantedBug::SkipPendingWrite) {
            self.ready.writes.push(Write::AddPending(transfer.clone()));
        }
        self.pending.insert(
            transfer.id.clone(),
            Pending {
                transfer: transfer.clone(),
                forwarded_at: Some(self.now),
            },
        );
        if matches!(self.role, Role::Leader(_)) {
            self.enqueue(transfer, self.config.id);
            self.propose_from_queue();
        } else if let Some(route) = self.route_to_leader() {
            let forward = Forward {
                transfers: vec![transfer],
                hops: 0,
            };
            self.send(route, Message::Forward(forward));
        }
    }

    fn reply(&mut self, transfer: &Transfer, result: Result<Committed, ProposeError>) {
        self.answer(Reply {
            id: transfer.id.clone(),
            result,
        });
    }

    /// Transfers handed on by another node: the leader queues them, anyone else passes them on.
    pub(super) fn handle_forward(&mut self, from: NodeId, forward: Forward) {
        if forward.transfers.len() > self.config.batch_transfers_max {
            self.reject(
                from,
                &Message::Forward(forward),
                "too many transfers".to_string(),
            );
            return;
        }
        let queue_max = self.config.queue_transfers_max;
        match &mut self.role {
            Role::Leader(_) => {
                for transfer in forward.transfers {
                    if self.ledger.check_shape(&transfer).is_ok() {
                        self.enqueue(transfer, from);
                    }
                }
                self.propose_from_queue();
                return;
            }
            Role::Candidate(candidate) => {
                // Followers already count on this node to lead; keep their transfers for then.
                let room = queue_max.saturating_sub(candidate.forwarded.len());
                candidate.forwarded.extend(
                    forward
                        .transfers
                        .into_iter()
                        .take(room)
                        .map(|transfer| Queued { transfer, from }),
                );
                return;
            }
            Role::Follower => {}
        }
        if forward.hops >= FORWARD_HOPS_MAX {
            return;
        }
        if let Some(route) = self.route_to_leader() {
            let forward = Forward {
                transfers: forward.transfers,
                hops: forward.hops + 1,
            };
            self.send(route, Message::Forward(forward));
        }
    }

    /// Where to send transfers meant for the leader: the leader, or a peer that can reach it.
    fn route_to_leader(&self) -> Option<NodeId> {
        let leader = self.election.leader()?;
        if leader.node == self.config.id {
            return None;
        }
        Some(self.election.route().unwrap_or(leader.node))
    }

    /// Hands the leader every pending transfer not handed over recently (forwards can be lost,
    /// and leaders change), at most one batch per tick.
    pub(super) fn forward_pending(&mut self) {
        let now = self.now;
        let retry = self.config.forward_retry_ticks;
        let due: Vec<Transfer> = self
            .pending
            .values()
            .filter(|pending| pending.forwarded_at.is_none_or(|at| now - at >= retry))
            .take(self.config.batch_transfers_max)
            .map(|pending| pending.transfer.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        let route = self.route_to_leader();
        let leads = matches!(self.role, Role::Leader(_));
        if route.is_none() && !leads {
            return;
        }
        for transfer in &due {
            if let Some(pending) = self.pending.get_mut(&transfer.id) {
                pending.forwarded_at = Some(now);
            }
        }
        if leads {
            for transfer in due {
                self.enqueue(transfer, self.config.id);
            }
            self.propose_from_queue();
        } else if let Some(route) = route {
            let forward = Forward {
                transfers: due,
                hops: 0,
            };
            self.send(route, Message::Forward(forward));
        }
    }

    /// After a change of leader, every pending transfer is due to be handed over again.
    pub(super) fn forward_all_pending_again(&mut self) {
        for pending in self.pending.values_mut() {
            pending.forwarded_at = None;
        }
        self.forward_pending();
    }
}

fn id_conflict(existing: &Transfer) -> ProposeError {
    ProposeError::IdConflict {
        id: existing.id.clone(),
        from: existing.from,
        to: existing.to,
        amount: existing.amount,
    }
}
