//! The replica: one node's Multi-Paxos roles and its copy of the ledger, as a state machine.
//!
//! [`Replica::step`] takes one [`Input`] and returns a [`Ready`]: writes to make durable, then
//! messages to send, blocks to fetch, and client replies. The handlers live by role:
//!
//! - `election`: heartbeats, quorum connectivity and who leads (ballot leader election);
//! - `acceptor`: Prepare and Accept, promises and votes;
//! - `leader`: Phase 1 as a candidate, then Phase 2 and batching as the leader;
//! - `learner`: decided values, applying blocks in order, catch-up from peers;
//! - `client`: client proposals, the pending log and forwarding to the leader.

mod acceptor;
mod client;
mod election;
mod leader;
mod learner;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::bugs::PlantedBug;
use crate::config::{Config, ConfigError};
use crate::ledger::{
    Batch, Block, Hash, IdHasher, Ledger, Outcome, Rejection, Transfer, TransferId,
};
use crate::message::{Decide, Message};
use crate::storage::{Restored, Write};
use crate::types::{Ballot, Height, NodeId};

use election::Election;

/// One thing that happens to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A heartbeat interval passed.
    Tick,
    /// A message from a peer arrived.
    Receive {
        /// The sender, as authenticated by the transport.
        from: NodeId,
        /// The message.
        message: Message,
    },
    /// A client asks this node to order a transfer.
    Propose(Transfer),
    /// Decided blocks fetched from a peer, answering a [`Fetch`]. An empty list says the fetch
    /// failed or the peer had nothing to give: either way, another peer is asked next.
    Blocks {
        /// The peer that served them.
        from: NodeId,
        /// Consecutive blocks, in order.
        blocks: Vec<Block>,
    },
    /// The transport's connection with `peer` closed under it: the peer's process ended (a cut
    /// link does not close connections, so this is never sent for one). If that peer led, a
    /// quorum-connected follower starts an election at once instead of waiting out its timeout.
    Disconnected(NodeId),
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The receiver.
    pub to: NodeId,
    /// The message.
    pub message: Message,
}

/// A request to read decided blocks from a peer's chain, starting at height `from`. The host
/// answers with [`Input::Blocks`] (or not at all, if the peer cannot be reached).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetch {
    /// The peer to read from.
    pub peer: NodeId,
    /// The first height wanted.
    pub from: Height,
}

/// A transfer is in the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The block that holds it.
    pub height: Height,
    /// That block's hash.
    pub block_hash: Hash,
    /// What it did.
    pub outcome: Outcome,
}

/// Why a proposal was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// The transfer can never apply (unknown account, same account, zero amount); it was not ordered.
    #[error("{0}")]
    Invalid(Rejection),
    /// The id already names a different transfer.
    #[error("transfer id {id} is already used by a transfer of {amount} from {from} to {to}")]
    IdConflict {
        /// The id.
        id: TransferId,
        /// The first transfer's debited account.
        from: NodeId,
        /// The first transfer's credited account.
        to: NodeId,
        /// The first transfer's amount.
        amount: u64,
    },
    /// The pending log is full; retry later.
    #[error("node is busy: {limit} transfers are already pending")]
    Busy {
        /// The pending log's limit.
        limit: usize,
    },
}

/// The answer to a client's transfer, sent once it is decided or refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The transfer id the client waits on.
    pub id: TransferId,
    /// Where it was ordered, or why it was not.
    pub result: Result<Committed, ProposeError>,
}

/// Something worth a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// This node follows a new leader (or none).
    LeaderChanged {
        /// The new leader's ballot.
        leader: Option<Ballot>,
    },
    /// This node started Phase 1.
    ElectionStarted {
        /// Its ballot.
        ballot: Ballot,
    },
    /// Phase 1 succeeded: this node leads.
    BecameLeader {
        /// Its ballot.
        ballot: Ballot,
        /// Slots re-proposed from the promises.
        reproposed: usize,
    },
    /// This node stopped being candidate or leader.
    SteppedDown {
        /// The ballot it gave up.
        ballot: Ballot,
        /// A higher ballot it saw, if that is why.
        higher: Option<Ballot>,
    },
    /// Blocks from a peer extended the chain.
    CaughtUp {
        /// The peer.
        peer: NodeId,
        /// The first height added.
        from: Height,
        /// The last height added.
        to: Height,
    },
    /// A peer served a block that does not extend this chain.
    ChainRejected {
        /// The peer.
        peer: NodeId,
        /// Why.
        error: crate::ledger::ChainError,
    },
    /// A message was dropped because it cannot be valid.
    MessageRejected {
        /// The sender.
        from: NodeId,
        /// The message's kind.
        kind: &'static str,
        /// Why.
        reason: String,
    },
}

/// What one step produced, and when the host may release each part.
///
/// `writes` must become durable as one atomic batch, after the batches of every earlier step.
/// Messages in `messages_after_writes` vouch for state in those writes (a promise, a vote, a
/// ballot not to be reused), so the host releases them only once this step's writes, and every
/// earlier step's, are durable. Everything else may leave at once, even while the writes are still
/// on their way to disk:
///
/// - an Accept: the leader's promise of its ballot was durable before its Prepares left, and its
///   own vote is counted only once durable (below);
/// - a Decide and a commit acknowledgement: they rest only on votes that were durable before they
///   were counted, so the value is chosen and survives any minority of crashes, whatever becomes
///   of this node's own copy;
/// - heartbeats, forwards, refusals: they vouch for nothing.
///
/// One message may be addressed to this node itself: the leader's own vote (an Accepted). The host
/// feeds it back through [`Replica::step`] once the writes before it are durable, exactly like a
/// vote from a peer; that is how a leader sends its Accepts while it writes its own vote and counts
/// that vote only once it is on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// One atomic batch of durable writes.
    pub writes: Vec<Write>,
    /// Messages that may be sent at once.
    pub messages: Vec<Outgoing>,
    /// Messages to send only once the writes are durable (Prepare, Promise, Accepted).
    pub messages_after_writes: Vec<Outgoing>,
    /// Blocks to fetch from peers.
    pub fetches: Vec<Fetch>,
    /// Answers to clients: commit acknowledgements and refusals. They may be sent at once.
    pub replies: Vec<Reply>,
    /// Things worth a log line.
    pub events: Vec<Event>,
}

impl Ready {
    /// Whether the step produced nothing at all.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.messages.is_empty()
            && self.messages_after_writes.is_empty()
            && self.fetches.is_empty()
            && self.replies.is_empty()
            && self.events.is_empty()
    }

    /// Every message, whenever it may leave.
    pub fn all_messages(&self) -> impl Iterator<Item = &Outgoing> {
        self.messages.iter().chain(&self.messages_after_writes)
    }

    /// The blocks this step appended to the chain.
    pub fn appended_blocks(&self) -> impl Iterator<Item = &Block> {
        self.writes.iter().filter_map(|write| match write {
            Write::AppendBlock(block) => Some(block),
            _ => None,
        })
    }
}

/// A node's part in Multi-Paxos at this moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleName {
    /// Follows a leader (or waits for one).
    Follower,
    /// Runs Phase 1.
    Candidate,
    /// Completed Phase 1 and proposes.
    Leader,
}

/// A snapshot of a node's state for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: RoleName,
    /// The leader it follows (its own ballot if it leads).
    pub leader: Option<Ballot>,
    /// The ballot it would lead with, or leads with.
    pub ballot: Ballot,
    /// The highest ballot it promised as an acceptor.
    pub promised: Ballot,
    /// Whether it heard from a majority in its last heartbeat round.
    pub quorum_connected: bool,
    /// Its chain's height.
    pub height: Height,
    /// Its chain head's hash.
    pub head_hash: Hash,
    /// Transfers in its pending log.
    pub pending: usize,
    /// Slots it has proposed and not yet seen decided (leader only).
    pub in_flight: usize,
    /// The highest height any peer reported.
    pub peer_height_max: Height,
}

/// A value proposed by the leader for one slot, waiting for a majority.
#[derive(Clone, Debug)]
struct Proposal {
    batch: Batch,
    accepted_by: BTreeSet<NodeId>,
    sent_at: u64,
    /// Peers with a client waiting on this batch: they hear it is decided at once.
    waiting: BTreeSet<NodeId>,
    /// The peers first asked to accept it (see `Leader::asked`); the others are sent the value
    /// with its Decide.
    asked: BTreeSet<NodeId>,
    /// For a probe, which went to every peer: the peers that voted, in the order they did.
    probe_votes: Option<Vec<NodeId>>,
}

/// A transfer queued by the leader, with the node it came from (the leader itself, or the peer
/// that forwarded it).
#[derive(Clone, Debug)]
struct Queued {
    transfer: Transfer,
    from: NodeId,
}

/// A decision not yet told to every peer (see `Leader::untold`).
#[derive(Clone, Debug)]
struct Untold {
    decide: Decide,
    told: BTreeSet<NodeId>,
    /// The decided value, for the peers not in `asked`.
    batch: Batch,
    /// The peers that were asked to accept it.
    asked: BTreeSet<NodeId>,
}

/// Phase 1 in progress.
#[derive(Clone, Debug)]
struct Candidate {
    ballot: Ballot,
    /// When Phase 1 began, in ticks: a candidate that cannot finish within an election timeout
    /// starts over with a higher ballot, collecting promises from whoever answers now.
    started_at: u64,
    promises: BTreeMap<NodeId, crate::message::Promise>,
    /// Transfers forwarded to this node while it runs Phase 1, proposed once it leads.
    forwarded: Vec<Queued>,
}

/// Phase 2: this node leads with `ballot`.
#[derive(Clone, Debug)]
struct Leader {
    ballot: Ballot,
    next_slot: Height,
    in_flight: BTreeMap<Height, Proposal>,
    queue: VecDeque<Queued>,
    /// Ids in `queue` or in an in-flight batch, so a transfer forwarded twice is proposed once.
    proposed: HashSet<TransferId, IdHasher>,
    /// Decisions that peers with no client waiting on them have not heard yet. They ride with
    /// the next Accepts, or go in front of the next heartbeat or heartbeat reply (which report our
    /// height): when one client at a time waits, that saves every follower a frame, a wake-up and
    /// a write per block.
    untold: Vec<Untold>,
    /// The peers new proposals go to: the majority less this node that voted first for the last
    /// probe. The rest of the peers take no part in deciding a slot; they learn it from a Decide
    /// that carries the value, and spend no disk flush, no vote and no wake-up per block on it.
    /// Empty until a probe finds them.
    asked: BTreeSet<NodeId>,
    /// The next proposal goes to every peer, and the order of their votes chooses `asked` anew:
    /// set once a tick, so a peer that slowed down or went away is replaced within a tick.
    probe_due: bool,
}

#[derive(Clone, Debug)]
enum Role {
    Follower,
    Candidate(Candidate),
    Leader(Leader),
}

/// A transfer this node took from a client and has not yet seen decided.
#[derive(Clone, Debug)]
struct Pending {
    transfer: Transfer,
    /// When it was last handed towards the leader.
    forwarded_at: Option<u64>,
}

/// A catch-up fetch waiting for its answer.
#[derive(Clone, Copy, Debug)]
struct FetchInFlight {
    peer: NodeId,
    sent_at: u64,
}

/// One node of the cluster: proposer, acceptor and learner, with its ledger.
#[derive(Clone, Debug)]
pub struct Replica {
    config: Config,
    rng: ChaCha8Rng,
    /// Ticks since this replica started.
    now: u64,

    promised: Ballot,
    accepted: BTreeMap<Height, (Ballot, Batch)>,

    ledger: Ledger,
    /// Decided values above the ledger's height, waiting for the slots below them.
    decided: BTreeMap<Height, Batch>,
    /// The highest height each node reported (index `node - 1`).
    peer_heights: Vec<Height>,
    /// When each node was last heard from, in ticks (index `node - 1`); `None` if never, or not
    /// since its connection closed. Catch-up asks only peers heard recently.
    peer_heard_at: Vec<Option<u64>>,
    /// Until when each node is not asked for blocks (index `node - 1`), after a fetch from it
    /// failed or timed out, so the next fetch goes to another peer.
    fetch_avoid_until: Vec<u64>,
    fetch: Option<FetchInFlight>,

    election: Election,
    role: Role,

    pending: BTreeMap<TransferId, Pending>,

    /// What the current step produced so far.
    ready: Ready,
    /// Writes held back for the next step (only with the `ReplyBeforePersist` planted bug).
    deferred_writes: Vec<Write>,
}

impl Replica {
    /// Starts a node from its restored durable state. `seed` drives the election timeouts; give
    /// every node (and every restart) its own.
    pub fn new(config: Config, restored: Restored, seed: u64) -> Result<Replica, ConfigError> {
        config.validate()?;
        let Restored {
            mut acceptor,
            mut ledger,
        } = restored;
        assert_eq!(ledger.accounts(), config.nodes, "ledger of another cluster");
        ledger.plant(config.planted_bugs);
        if config.planted_bugs.has(PlantedBug::ForgetPromiseOnRestart) {
            acceptor.promised = Ballot::ZERO;
            acceptor.accepted.clear();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let election = Election::new(&config, &mut rng);
        let pending = acceptor
            .pending
            .into_values()
            .map(|transfer| {
                (
                    transfer.id.clone(),
                    Pending {
                        transfer,
                        forwarded_at: None,
                    },
                )
            })
            .collect();
        let nodes = config.nodes as usize;
        Ok(Replica {
            config,
            rng,
            now: 0,
            promised: acceptor.promised,
            accepted: acceptor.accepted,
            ledger,
            decided: BTreeMap::new(),
            peer_heights: vec![0; nodes],
            peer_heard_at: vec![None; nodes],
            fetch_avoid_until: vec![0; nodes],
            fetch: None,
            election,
            role: Role::Follower,
            pending,
            ready: Ready::default(),
            deferred_writes: Vec::new(),
        })
    }

    /// Feeds one input to the node and returns everything it produced.
    pub fn step(&mut self, input: Input) -> Ready {
        self.ready.writes.append(&mut self.deferred_writes);
        match input {
            Input::Tick => self.tick(),
            Input::Receive { from, message } => self.receive(from, message),
            Input::Propose(transfer) => self.propose(transfer),
            Input::Blocks { from, blocks } => self.receive_blocks(from, blocks),
            Input::Disconnected(peer) => self.disconnected(peer),
        }
        std::mem::take(&mut self.ready)
    }

    fn tick(&mut self) {
        self.now += 1;
        self.end_heartbeat_round();
        self.start_heartbeat_round();
        match &self.role {
            Role::Follower => {}
            Role::Candidate(_) => self.resend_prepare(),
            Role::Leader(_) => self.resend_accepts(),
        }
        self.forward_pending();
        self.fetch_if_behind();
    }

    fn receive(&mut self, from: NodeId, message: Message) {
        if from == self.config.id {
            // Only this node's own vote comes back to it, once durable (see `Ready`).
            match message {
                Message::Accepted(accepted) => self.handle_accepted(from, accepted),
                message => self.reject(
                    from,
                    &message,
                    "a node sends itself only its own vote".to_string(),
                ),
            }
            return;
        }
        if from == 0 || from > self.config.nodes {
            self.reject(
                from,
                &message,
                "sender is not a peer in this cluster".to_string(),
            );
            return;
        }
        if let Err(error) = message.check(self.config.nodes) {
            let reason = error.to_string();
            self.reject(from, &message, reason);
            return;
        }
        self.peer_heard_at[from as usize - 1] = Some(self.now);
        match message {
            Message::Heartbeat(heartbeat) => self.handle_heartbeat(from, heartbeat),
            Message::HeartbeatReply(reply) => self.handle_heartbeat_reply(from, reply),
            Message::Prepare(prepare) => self.handle_prepare(from, prepare),
            Message::Promise(promise) => self.handle_promise(from, promise),
            Message::Accept(accept) => self.handle_accept(from, accept),
            Message::Accepted(accepted) => self.handle_accepted(from, accepted),
            Message::Decide(decide) => self.handle_decide(from, decide),
            Message::Nack(nack) => self.handle_nack(from, nack),
            Message::Forward(forward) => self.handle_forward(from, forward),
        }
    }

    fn reject(&mut self, from: NodeId, message: &Message, reason: String) {
        self.ready.events.push(Event::MessageRejected {
            from,
            kind: message.kind(),
            reason,
        });
    }

    fn send(&mut self, to: NodeId, message: Message) {
        let outgoing = Outgoing { to, message };
        if outgoing.message.vouches_for_writes() {
            self.ready.messages_after_writes.push(outgoing);
        } else {
            self.ready.messages.push(outgoing);
        }
    }

    /// Answers a client. A commit acknowledgement needs no write of this node's: the block it
    /// names was chosen by a majority of durable votes (see `Ready`).
    fn answer(&mut self, reply: Reply) {
        self.ready.replies.push(reply);
    }

    fn broadcast(&mut self, message: Message) {
        for peer in self.config.peers().collect::<Vec<_>>() {
            self.send(peer, message.clone());
        }
    }

    /// Writes that an acceptor's answer depends on. With the `ReplyBeforePersist` planted bug they
    /// are held back to the next step, so the answer goes out before they are durable.
    fn write_acceptor_state(&mut self, write: Write) {
        if self.config.planted_bugs.has(PlantedBug::ReplyBeforePersist) {
            self.deferred_writes.push(write);
        } else {
            self.ready.writes.push(write);
        }
    }

    /// `a < b`, unless the `BallotWithoutNodeId` planted bug compares rounds only.
    fn ballot_below(&self, a: Ballot, b: Ballot) -> bool {
        if self
            .config
            .planted_bugs
            .has(PlantedBug::BallotWithoutNodeId)
        {
            a.round < b.round
        } else {
            a < b
        }
    }

    fn note_peer_height(&mut self, peer: NodeId, height: Height) {
        let known = &mut self.peer_heights[peer as usize - 1];
        *known = (*known).max(height);
    }

    /// The blocks up to `height` are written (the host's write of them is done): their transfer
    /// records may leave memory, as the store's archive holds them now.
    pub fn archive_through(&mut self, height: Height) {
        self.ledger.archive_through(height);
    }

    /// This node's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This node's ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The highest ballot promised.
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// The values accepted for slots above the chain's head.
    pub fn accepted(&self) -> &BTreeMap<Height, (Ballot, Batch)> {
        &self.accepted
    }

    /// The transfers of this node's pending log.
    pub fn pending(&self) -> impl Iterator<Item = &Transfer> {
        self.pending.values().map(|pending| &pending.transfer)
    }

    /// The node's role.
    pub fn role(&self) -> RoleName {
        match self.role {
            Role::Follower => RoleName::Follower,
            Role::Candidate(_) => RoleName::Candidate,
            Role::Leader(_) => RoleName::Leader,
        }
    }

    /// The slots this node proposed as leader and has not yet seen decided (0 unless leader).
    pub fn in_flight(&self) -> usize {
        match &self.role {
            Role::Leader(leader) => leader.in_flight.len(),
            _ => 0,
        }
    }

    /// A snapshot for status displays.
    pub fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: self.role(),
            leader: self.election.leader(),
            ballot: self.election.ballot(),
            promised: self.promised,
            quorum_connected: self.election.quorum_connected(),
            height: self.ledger.height(),
            head_hash: self.ledger.head_hash(),
            pending: self.pending.len(),
            in_flight: self.in_flight(),
            peer_height_max: self.peer_heights.iter().copied().max().unwrap_or(0),
        }
    }
}
