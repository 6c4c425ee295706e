//! The core loop: one thread owns the [`Replica`] and the [`SledStorage`].
//!
//! It waits for a command or the next tick, then takes every command already queued (up to
//! [`STEPS_PER_WRITE_MAX`]), steps the core once for each, and writes all their batches as one
//! atomic, fsynced sled batch (group commit). What a step marks as vouching for its writes
//! (promises, votes, ballots) is released only after that fsync; the rest (heartbeats, forwards,
//! decisions, client answers) leaves as soon as the step produced it. That is the core's
//! persist-before-reply contract, paid with one fsync per group rather than per message.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use benmo_paxos::{
    Block, Committed, Event, Hash, Height, Input, Message, NodeId, ProposeError, Ready, Replica,
    Status, Storage, Transfer, TransferId, Write,
};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::storage::SledStorage;
use crate::transport::Transport;

/// The most commands stepped before their writes are made durable together.
pub const STEPS_PER_WRITE_MAX: usize = 1_024;
/// The most commands waiting for the core loop; beyond it peers' messages are dropped and
/// clients are told the node is busy.
pub const COMMAND_QUEUE_MAX: usize = 65_536;

/// Which answer a peer RPC waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// A heartbeat reply.
    Heartbeat,
    /// A Promise or a Nack.
    Prepare,
    /// An Accepted or a Nack.
    Accept,
}

impl ReplyKind {
    fn matches(self, message: &Message) -> bool {
        matches!(
            (self, message),
            (ReplyKind::Heartbeat, Message::HeartbeatReply(_))
                | (ReplyKind::Prepare, Message::Promise(_) | Message::Nack(_))
                | (ReplyKind::Accept, Message::Accepted(_) | Message::Nack(_))
        )
    }
}

/// A committed transfer and the hash of its block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferCommitted {
    /// Where and how it was ordered.
    pub committed: Committed,
    /// The hash of the block at `committed.height`.
    pub block_hash: Hash,
}

/// What a client's Transfer call receives.
pub type TransferResult = Result<TransferCommitted, ProposeError>;

/// This node's state for `Status`, plus what only the node knows.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    /// The core's status.
    pub core: Status,
    /// The cluster size.
    pub nodes: u32,
    /// The genesis hash.
    pub genesis_hash: Hash,
    /// Every account's balance at the genesis.
    pub genesis_balance: u64,
}

/// Balances at the head.
#[derive(Clone, Debug)]
pub struct Balances {
    /// The head's height.
    pub height: Height,
    /// The head's hash.
    pub head_hash: Hash,
    /// Balances of accounts 1..=N.
    pub balances: Vec<u64>,
}

/// Work for the core loop.
pub enum Command {
    /// A message from a peer. If `reply` is set, the core's answer to it goes back through it.
    Peer {
        /// The sender.
        from: NodeId,
        /// The message.
        message: Message,
        /// Where the answer goes, for request/response RPCs.
        reply: Option<(ReplyKind, oneshot::Sender<Option<Message>>)>,
    },
    /// Blocks fetched from a peer (empty if the fetch failed).
    Blocks {
        /// The peer.
        from: NodeId,
        /// The blocks.
        blocks: Vec<Block>,
    },
    /// A client's transfer.
    Transfer {
        /// The transfer.
        transfer: Transfer,
        /// Where the outcome goes.
        waiter: oneshot::Sender<TransferResult>,
    },
    /// A status read.
    Status(oneshot::Sender<NodeStatus>),
    /// A balances read.
    Balances(oneshot::Sender<Balances>),
    /// A read of the pending log.
    Pending(oneshot::Sender<Vec<Transfer>>),
}

/// Sends commands to the core loop without ever blocking the caller.
#[derive(Clone)]
pub struct CoreHandle {
    sender: SyncSender<Command>,
}

/// The core loop is gone or its queue is full.
#[derive(Debug, thiserror::Error)]
#[error("the node is overloaded or shutting down")]
pub struct Overloaded;

impl CoreHandle {
    /// Queues a command; fails at once if the queue is full.
    pub fn send(&self, command: Command) -> Result<(), Overloaded> {
        match self.sender.try_send(command) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Overloaded),
        }
    }
}

/// Creates the command queue.
pub fn channel() -> (CoreHandle, Receiver<Command>) {
    let (sender, receiver) = std::sync::mpsc::sync_channel(COMMAND_QUEUE_MAX);
    (CoreHandle { sender }, receiver)
}

/// A read answered once the group it arrived in is durable, so it never shows state that a
/// crash could still take back.
type Read = Box<dyn FnOnce(&CoreLoop) + Send>;

/// A group of steps: their writes, and what waits for those writes to be durable.
#[derive(Default)]
struct Group {
    writes: Vec<Write>,
    /// Hashes of the blocks appended in this group, for answers that name their block.
    appended: BTreeMap<Height, Hash>,
    messages: Vec<benmo_paxos::Outgoing>,
    replies: Vec<benmo_paxos::Reply>,
    peer_replies: Vec<(oneshot::Sender<Option<Message>>, Option<Message>)>,
    /// Transfers to forward, by peer and hop count, sent together before the fsync.
    forwards: BTreeMap<(NodeId, u32), Vec<Transfer>>,
    reads: Vec<Read>,
    steps: usize,
}

/// The thread that owns the core.
pub struct CoreLoop {
    replica: Replica,
    storage: SledStorage,
    transport: Transport,
    commands: Receiver<Command>,
    heartbeat: Duration,
    waiters: HashMap<TransferId, Vec<oneshot::Sender<TransferResult>>>,
    /// Decided heights not yet logged: logged once per tick, not once per block.
    decided_unlogged: Option<(Height, Height, usize)>,
    genesis_hash: Hash,
}

impl CoreLoop {
    /// Prepares the loop; [`CoreLoop::run`] starts it.
    pub fn new(
        replica: Replica,
        storage: SledStorage,
        transport: Transport,
        commands: Receiver<Command>,
        heartbeat: Duration,
        genesis_hash: Hash,
    ) -> CoreLoop {
        CoreLoop {
            replica,
            storage,
            transport,
            commands,
            heartbeat,
            waiters: HashMap::new(),
            decided_unlogged: None,
            genesis_hash,
        }
    }

    /// Runs until every command sender is gone. A storage error ends the process: a node that
    /// cannot write cannot keep its promises.
    pub fn run(mut self) {
        let mut next_tick = Instant::now() + self.heartbeat;
        loop {
            let mut group = Group::default();
            let now = Instant::now();
            if now >= next_tick {
                self.step(&mut group, Input::Tick);
                self.log_decided();
                self.forget_abandoned_waiters();
                next_tick += self.heartbeat;
                if next_tick < now {
                    // The loop fell behind (a long fsync): skip the missed ticks.
                    next_tick = now + self.heartbeat;
                }
            } else {
                match self.commands.recv_timeout(next_tick - now) {
                    Ok(command) => self.handle(&mut group, command),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            while group.steps < STEPS_PER_WRITE_MAX {
                match self.commands.try_recv() {
                    Ok(command) => self.handle(&mut group, command),
                    Err(_) => break,
                }
            }
            self.send_forwards(&mut group);
            if let Err(error) = self.storage.write(&group.writes) {
                error!(%error, "cannot write to the data directory; stopping");
                std::process::exit(74);
            }
            self.release(group);
        }
    }

    fn handle(&mut self, group: &mut Group, command: Command) {
        match command {
            Command::Peer {
                from,
                message,
                reply,
            } => {
                let mut ready = self.replica.step(Input::Receive { from, message });
                if let Some((kind, sender)) = reply {
                    let matches = |outgoing: &benmo_paxos::Outgoing| {
                        outgoing.to == from && kind.matches(&outgoing.message)
                    };
                    if let Some(index) = ready.messages.iter().position(matches) {
                        let _ = sender.send(Some(ready.messages.remove(index).message));
                    } else if let Some(index) = ready.messages_after_writes.iter().position(matches)
                    {
                        let answer = ready.messages_after_writes.remove(index).message;
                        group.peer_replies.push((sender, Some(answer)));
                    } else {
                        let _ = sender.send(None);
                    }
                }
                self.absorb(group, ready);
            }
            Command::Blocks { from, blocks } => self.step(group, Input::Blocks { from, blocks }),
            Command::Transfer { transfer, waiter } => {
                let id = transfer.id.clone();
                let mut ready = self.replica.step(Input::Propose(transfer));
                // A refusal of this very proposal (malformed, id reused, busy) answers this
                // caller only: others waiting on the same id wait for their own transfer.
                let refused = ready
                    .replies
                    .iter()
                    .position(|reply| reply.id == id && reply.result.is_err());
                match refused {
                    Some(index) => {
                        if let Err(error) = ready.replies.remove(index).result {
                            let _ = waiter.send(Err(error));
                        }
                    }
                    None => self.waiters.entry(id).or_default().push(waiter),
                }
                self.absorb(group, ready);
            }
            Command::Status(sender) => group.reads.push(Box::new(move |core: &CoreLoop| {
                let _ = sender.send(NodeStatus {
                    core: core.replica.status(),
                    nodes: core.replica.config().nodes,
                    genesis_hash: core.genesis_hash,
                    genesis_balance: core.replica.config().genesis_balance,
                });
            })),
            Command::Balances(sender) => group.reads.push(Box::new(move |core: &CoreLoop| {
                let ledger = core.replica.ledger();
                let _ = sender.send(Balances {
                    height: ledger.height(),
                    head_hash: ledger.head_hash(),
                    balances: ledger.balances().to_vec(),
                });
            })),
            Command::Pending(sender) => group.reads.push(Box::new(move |core: &CoreLoop| {
                let _ = sender.send(core.replica.pending().cloned().collect());
            })),
        }
    }

    fn step(&mut self, group: &mut Group, input: Input) {
        let ready = self.replica.step(input);
        self.absorb(group, ready);
    }

    /// Takes a step's output: what may leave at once leaves now; the writes join the group's
    /// batch, and what vouches for them waits in the group.
    fn absorb(&mut self, group: &mut Group, ready: Ready) {
        group.steps += 1;
        let Ready {
            writes,
            messages,
            messages_after_writes,
            fetches,
            replies,
            replies_after_writes,
            events,
        } = ready;
        for event in &events {
            log_event(event);
        }
        for write in &writes {
            if let Write::AppendBlock(block) = write {
                group.appended.insert(block.height, block.hash);
                let (first, _, transfers) =
                    self.decided_unlogged
                        .unwrap_or((block.height, block.height, 0));
                self.decided_unlogged =
                    Some((first, block.height, transfers + block.entries.len()));
            }
        }
        group.writes.extend(writes);
        for outgoing in messages {
            match outgoing.message {
                // Transfers forwarded to the same peer in one group travel in one message.
                Message::Forward(forward) => group
                    .forwards
                    .entry((outgoing.to, forward.hops))
                    .or_default()
                    .extend(forward.transfers),
                message => self.transport.send(outgoing.to, message),
            }
        }
        for fetch in fetches {
            self.transport.fetch(fetch.peer, fetch.from);
        }
        for reply in replies {
            self.answer(reply, &group.appended);
        }
        group.messages.extend(messages_after_writes);
        group.replies.extend(replies_after_writes);
    }

    /// Sends the group's forwarded transfers, one message per peer and hop count, each no larger
    /// than a block.
    fn send_forwards(&mut self, group: &mut Group) {
        let limit = self.replica.config().batch_transfers_max;
        for ((peer, hops), transfers) in std::mem::take(&mut group.forwards) {
            for chunk in transfers.chunks(limit) {
                let forward = benmo_paxos::message::Forward {
                    transfers: chunk.to_vec(),
                    hops,
                };
                self.transport.send(peer, Message::Forward(forward));
            }
        }
    }

    /// The group's writes are durable: release what waited for them.
    fn release(&mut self, group: Group) {
        for (sender, answer) in group.peer_replies {
            let _ = sender.send(answer);
        }
        for outgoing in group.messages {
            self.transport.send(outgoing.to, outgoing.message);
        }
        for reply in group.replies {
            self.answer(reply, &group.appended);
        }
        for read in group.reads {
            read(self);
        }
    }

    fn answer(&mut self, reply: benmo_paxos::Reply, appended: &BTreeMap<Height, Hash>) {
        let Some(waiters) = self.waiters.remove(&reply.id) else {
            return;
        };
        let result = match reply.result {
            Ok(committed) => {
                let block_hash = match appended.get(&committed.height) {
                    Some(hash) => *hash,
                    None => match self.storage.block(committed.height) {
                        Ok(Some(block)) => block.hash,
                        Ok(None) | Err(_) => Hash::ZERO,
                    },
                };
                Ok(TransferCommitted {
                    committed,
                    block_hash,
                })
            }
            Err(error) => Err(error),
        };
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }

    /// Drops the waiters of Transfer calls that timed out (the client got "still pending").
    fn forget_abandoned_waiters(&mut self) {
        self.waiters.retain(|_, waiters| {
            waiters.retain(|waiter| !waiter.is_closed());
            !waiters.is_empty()
        });
    }

    fn log_decided(&mut self) {
        if let Some((first, last, transfers)) = self.decided_unlogged.take() {
            let head = self.replica.ledger().head_hash();
            info!(
                "decided blocks {first}..={last} ({transfers} transfers), head {}",
                &head.to_hex()[..12]
            );
        }
    }
}

fn log_event(event: &Event) {
    match event {
        Event::LeaderChanged { leader } => match leader {
            Some(ballot) => info!("following leader node {} (ballot {ballot})", ballot.node),
            None => info!("no leader"),
        },
        Event::ElectionStarted { ballot } => info!("starting election with ballot {ballot}"),
        Event::BecameLeader { ballot, reproposed } => {
            info!("became leader with ballot {ballot}, re-proposing {reproposed} slots")
        }
        Event::SteppedDown { ballot, higher } => match higher {
            Some(higher) => info!("stepped down from ballot {ballot}: saw ballot {higher}"),
            None => info!("stepped down from ballot {ballot}"),
        },
        Event::CaughtUp { peer, from, to } => {
            info!("caught up blocks {from}..={to} from node {peer}")
        }
        Event::ChainRejected { peer, error } => {
            warn!("refused blocks from node {peer}: {error}")
        }
        Event::MessageRejected { from, kind, reason } => {
            debug!("dropped {kind} from node {from}: {reason}")
        }
    }
}
