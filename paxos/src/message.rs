//! The messages nodes exchange. One struct per message; [`Message`] is what travels.
//!
//! Catch-up is not a message here: the core asks its host to fetch decided blocks from a peer
//! ([`crate::Fetch`]) and takes the answer as [`crate::Input::Blocks`], because serving blocks is a
//! read of the peer's disk, not a step of its state machine.

use crate::config::{BATCH_TRANSFERS_LIMIT, FORWARD_HOPS_MAX};
use crate::ledger::{Batch, Transfer};
use crate::types::{Ballot, Height, NodeId, HEIGHT_MAX, ROUND_MAX};

/// A message no correct peer sends. The core drops it; a host refuses it at the edge with this.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A ballot of a node outside the cluster, or with a round no correct node reaches.
    #[error("ballot {ballot} is impossible: ballots belong to nodes 1..={nodes} and rounds stay below {ROUND_MAX}")]
    Ballot {
        /// The ballot.
        ballot: Ballot,
        /// The cluster size.
        nodes: u32,
    },
    /// Slot 0 (the genesis is never proposed) or a slot beyond [`HEIGHT_MAX`].
    #[error("slot {slot} is impossible: slots are 1..={HEIGHT_MAX}")]
    Slot {
        /// The slot.
        slot: Height,
    },
    /// A height beyond [`HEIGHT_MAX`].
    #[error("height {height} is impossible: heights stay at or below {HEIGHT_MAX}")]
    Height {
        /// The height.
        height: Height,
    },
    /// A batch with more transfers than any block may hold, or proposed by a node outside the
    /// cluster.
    #[error("a batch of {transfers} transfers proposed by node {proposer} is impossible (at most {BATCH_TRANSFERS_LIMIT} transfers, by nodes 0..={nodes})")]
    Batch {
        /// Its transfers.
        transfers: usize,
        /// Its proposer.
        proposer: NodeId,
        /// The cluster size.
        nodes: u32,
    },
    /// A forward passed on more often than allowed.
    #[error("a forward passed on {hops} times is impossible (at most {FORWARD_HOPS_MAX})")]
    Hops {
        /// How often it was passed on.
        hops: u32,
    },
}

/// A message from one node to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Leader election: "are you there, and whom do you see?"
    Heartbeat(Heartbeat),
    /// Leader election: the answer to a [`Heartbeat`].
    HeartbeatReply(HeartbeatReply),
    /// Phase 1a: a candidate asks for a promise.
    Prepare(Prepare),
    /// Phase 1b: an acceptor promises and reports what it accepted.
    Promise(Promise),
    /// Phase 2a: the leader asks acceptors to accept a batch for a slot.
    Accept(Accept),
    /// Phase 2b: an acceptor accepted.
    Accepted(Accepted),
    /// The leader tells everyone a slot is decided.
    Decide(Decide),
    /// An acceptor refuses a ballot below the one it promised.
    Nack(Nack),
    /// A follower hands client transfers to the leader.
    Forward(Forward),
}

/// Sent to every peer once per tick. Carries what a peer needs to judge this node as a leader
/// candidate and to notice that it is behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Identifies the round, so late replies from earlier rounds are not counted.
    pub round: u64,
    /// The sender's height, so a peer that is behind starts catching up.
    pub decided: Height,
}

/// The answer to a [`Heartbeat`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// The round being answered.
    pub round: u64,
    /// The replier's own ballot: the one it would lead with.
    pub ballot: Ballot,
    /// Whether the replier heard from a majority (itself included) in its last round; only such
    /// nodes may lead.
    pub quorum_connected: bool,
    /// The leader the replier follows, if it heard that leader directly, quorum-connected, in its
    /// last round. Lets nodes that cannot reach the leader themselves still see it is alive.
    pub leader: Option<Ballot>,
    /// The replier's height.
    pub decided: Height,
}

/// Phase 1a for every slot above `decided`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepare {
    /// The candidate's ballot.
    pub ballot: Ballot,
    /// The candidate's height; the promise reports what the acceptor accepted above it (and above
    /// the acceptor's own height): only what the candidate needs.
    pub decided: Height,
}

/// A value an acceptor accepted for a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedValue {
    /// The slot.
    pub slot: Height,
    /// The ballot it was accepted in.
    pub ballot: Ballot,
    /// The value.
    pub batch: Batch,
}

/// Phase 1b.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promise {
    /// The ballot promised.
    pub ballot: Ballot,
    /// The acceptor's height: every slot up to it is decided.
    pub decided: Height,
    /// Every value the acceptor accepted for a slot above its height and above the candidate's,
    /// with its ballot.
    pub accepted: Vec<AcceptedValue>,
}

/// Phase 2a.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accept {
    /// The leader's ballot.
    pub ballot: Ballot,
    /// The slot.
    pub slot: Height,
    /// The proposed value.
    pub batch: Batch,
}

/// Phase 2b.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The ballot accepted.
    pub ballot: Ballot,
    /// The slot.
    pub slot: Height,
}

/// The value the leader proposed for `slot` in `ballot` is decided. A node the leader did not ask
/// to accept it is sent the value too and learns it from here; a node that was asked learns the
/// value it accepted in that ballot, or fetches the block if it has none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decide {
    /// The leader's ballot.
    pub ballot: Ballot,
    /// The decided slot.
    pub slot: Height,
    /// The decided value, for a node that was not asked to accept it.
    pub batch: Option<Batch>,
}

/// A refusal: the acceptor promised a higher ballot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// The ballot refused.
    pub ballot: Ballot,
    /// The ballot the acceptor promised.
    pub promised: Ballot,
}

/// Client transfers handed towards the leader by the node that took them. A node that cannot
/// reach the leader itself hands them to a peer that can, so they may travel a few hops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    /// The transfers.
    pub transfers: Vec<Transfer>,
    /// How many nodes passed these transfers on already.
    pub hops: u32,
}

impl Message {
    /// Whether the message vouches for state the sender wrote in the same step, so it must not
    /// leave before those writes are durable:
    ///
    /// - a Promise and an Accepted are the acceptor's promise and vote (Paxos' safety rests on
    ///   them surviving a crash);
    /// - a Prepare carries a ballot whose promise the sender just wrote: sent before that is
    ///   durable, a crash could let the node reuse the ballot for other values.
    ///
    /// An Accept does not: only a leader sends one, and its ballot's promise was durable before its
    /// Prepares left. Heartbeats, forwards, refusals and decisions vouch for nothing not already
    /// durable.
    pub fn vouches_for_writes(&self) -> bool {
        matches!(
            self,
            Message::Prepare(_) | Message::Promise(_) | Message::Accepted(_)
        )
    }

    /// Checks that a correct peer of a cluster of `nodes` could have sent this message: every
    /// ballot of a member with a round below [`ROUND_MAX`], every slot in `1..=HEIGHT_MAX`, every
    /// height at most [`HEIGHT_MAX`], batches within [`BATCH_TRANSFERS_LIMIT`]. Every ballot, slot
    /// and height the core computes with afterwards is bounded by this, so no sum overflows.
    pub fn check(&self, nodes: u32) -> Result<(), MessageError> {
        let ballot = |ballot: &Ballot| {
            if ballot.node >= 1 && ballot.node <= nodes && ballot.round < ROUND_MAX {
                Ok(())
            } else {
                Err(MessageError::Ballot {
                    ballot: *ballot,
                    nodes,
                })
            }
        };
        let height = |height: Height| {
            if height <= HEIGHT_MAX {
                Ok(())
            } else {
                Err(MessageError::Height { height })
            }
        };
        let slot = |slot: Height| {
            if slot > 0 && slot <= HEIGHT_MAX {
                Ok(())
            } else {
                Err(MessageError::Slot { slot })
            }
        };
        let batch = |batch: &Batch| {
            if batch.transfers.len() <= BATCH_TRANSFERS_LIMIT && batch.proposer <= nodes {
                Ok(())
            } else {
                Err(MessageError::Batch {
                    transfers: batch.transfers.len(),
                    proposer: batch.proposer,
                    nodes,
                })
            }
        };
        match self {
            Message::Heartbeat(heartbeat) => height(heartbeat.decided),
            Message::HeartbeatReply(reply) => {
                ballot(&reply.ballot)?;
                if let Some(leader) = &reply.leader {
                    ballot(leader)?;
                }
                height(reply.decided)
            }
            Message::Prepare(prepare) => {
                ballot(&prepare.ballot)?;
                height(prepare.decided)
            }
            Message::Promise(promise) => {
                ballot(&promise.ballot)?;
                height(promise.decided)?;
                for value in &promise.accepted {
                    slot(value.slot)?;
                    ballot(&value.ballot)?;
                    batch(&value.batch)?;
                }
                Ok(())
            }
            Message::Accept(accept) => {
                ballot(&accept.ballot)?;
                slot(accept.slot)?;
                batch(&accept.batch)
            }
            Message::Accepted(accepted) => {
                ballot(&accepted.ballot)?;
                slot(accepted.slot)
            }
            Message::Decide(decide) => {
                ballot(&decide.ballot)?;
                slot(decide.slot)?;
                decide.batch.as_ref().map_or(Ok(()), batch)
            }
            Message::Nack(nack) => {
                ballot(&nack.ballot)?;
                ballot(&nack.promised)
            }
            Message::Forward(forward) => {
                if forward.transfers.len() > BATCH_TRANSFERS_LIMIT {
                    return Err(MessageError::Batch {
                        transfers: forward.transfers.len(),
                        proposer: 0,
                        nodes,
                    });
                }
                if forward.hops > FORWARD_HOPS_MAX {
                    return Err(MessageError::Hops { hops: forward.hops });
                }
                Ok(())
            }
        }
    }

    /// The message's name, for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Heartbeat(_) => "heartbeat",
            Message::HeartbeatReply(_) => "heartbeat-reply",
            Message::Prepare(_) => "prepare",
            Message::Promise(_) => "promise",
            Message::Accept(_) => "accept",
            Message::Accepted(_) => "accepted",
            Message::Decide(_) => "decide",
            Message::Nack(_) => "nack",
            Message::Forward(_) => "forward",
        }
    }
}
