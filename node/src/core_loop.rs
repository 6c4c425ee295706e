//! The core loop: one tokio task drives the [`Host`] (and through it the core), and one thread
//! owns the [`SledStorage`] and makes each group of writes durable.
//!
//! The task waits for the next command, tick or finished write, takes every command already queued
//! as one batch (up to [`COMMANDS_PER_BATCH_MAX`]), and ends the batch with [`Host::flush`]: one
//! frame of messages per peer, and the next group of writes handed to the writer if it is idle
//! (a group of decided blocks only, which needs no sync, waits for one that does, or a tick).
//! Beyond the first few, the batch's answers to clients go out after that, a group at a time (see
//! [`Answers`]).
//! The writer never blocks the task, so heartbeats and their replies never wait behind a flush;
//! and when a tick and replies are both ready, the replies are taken first, so they count in the
//! round that the tick ends.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use benmo_paxos::{
    Block, Event, Hash, Height, Message, NodeId, Status, Storage, Transfer, TransferId, Write,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tracing::{debug, error, info, warn};

use crate::host::{Durability, Environment, Host, TransferResult};
use crate::storage::{DecidedBlocks, DetachedBacklog, SledStorage, StorageError};
use crate::telemetry::Telemetry;
use crate::transport::Transport;

/// The most commands taken into one batch before its messages and writes go out.
pub const COMMANDS_PER_BATCH_MAX: usize = 1_024;
/// Callers answered in one group before the core loop yields to let their answers leave (see
/// [`Answers`]). Interleaved runs on two cores, 5 nodes, all load to the leader over one
/// connection, 6 pairs each: against all at once, 10% more transfers/s at 64 clients and 15% at
/// 256 (medians), the same at one client; 8 and 32 did worse than 16.
pub const ANSWERS_PER_YIELD: usize = 16;
/// The most commands waiting for the core loop; beyond it peers' frames are dropped and clients
/// are told the node is busy.
pub const COMMAND_QUEUE_MAX: usize = 65_536;

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

/// A client's Transfer call, waiting.
pub struct Waiter {
    /// Where the outcome goes.
    pub result: oneshot::Sender<TransferResult>,
    /// Fired once the transfer is durably in this node's pending log, so the call may say "still
    /// pending" truthfully when it times out.
    pub taken: Option<oneshot::Sender<()>>,
}

/// Work for the core loop.
pub enum Command {
    /// A frame of messages from a peer, in the order it sent them.
    Peer {
        /// The sender.
        from: NodeId,
        /// The messages.
        messages: Vec<Message>,
    },
    /// Blocks fetched from a peer (empty if the fetch failed).
    Blocks {
        /// The peer.
        from: NodeId,
        /// The blocks.
        blocks: Vec<Block>,
    },
    /// The peer's stream ended under it: its process is gone.
    Disconnected(NodeId),
    /// A client's transfer.
    Transfer {
        /// The transfer.
        transfer: Transfer,
        /// Who waits for it.
        waiter: Waiter,
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
    sender: mpsc::Sender<Command>,
}

/// The core loop is gone or its queue is full.
#[derive(Debug, thiserror::Error)]
#[error("the node is overloaded or shutting down")]
pub struct Overloaded;

impl CoreHandle {
    /// Queues a command; fails at once if the queue is full.
    pub fn send(&self, command: Command) -> Result<(), Overloaded> {
        self.sender.try_send(command).map_err(|_| Overloaded)
    }
}

/// Creates the command queue.
pub fn channel() -> (CoreHandle, mpsc::Receiver<Command>) {
    let (sender, receiver) = mpsc::channel(COMMAND_QUEUE_MAX);
    (CoreHandle { sender }, receiver)
}

/// The longest the writer holds lazy records in memory (see `Wal::write_out`) when no synced
/// write comes to take them to the file: they are then written, unsynced, so that a process
/// crash loses no more than a machine crash would have within this window. (Before that they
/// may wait in the core loop for up to a tick, see `Host`'s `lazy_write_due`: a crash may lose
/// a tick's decided blocks, which the node then has as accepted values or fetches again.)
const LAZY_HOLD_MAX: Duration = Duration::from_millis(10);

/// Backlogs handed to the sled thread and not yet applied, beyond the one it is applying: when
/// sled falls this far behind, the writer waits for it (and through it the core loop's writes).
const SLED_BACKLOGS_QUEUED_MAX: usize = 1;

/// Where the core loop hands the writer thread each group of writes.
pub type WriteSender = std_mpsc::Sender<(Vec<Write>, Durability)>;

/// How the writer thread makes writes durable.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriterOptions {
    /// Sleep this long after every fsync: a slow disk, for tests only.
    pub fsync_delay: Duration,
}

/// What the writer thread reports.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// The write it was given is done: synced, or written lazily if that is what it asked for.
    Done,
    /// Every block up to this height is in sled, where the archive finds it.
    Archived(Height),
}

/// A write that fails ends the process: a node that cannot write cannot keep its promises, and
/// nothing that waited for the write has been released.
fn fail(error: StorageError) -> ! {
    error!(%error, "cannot write to the data directory; stopping");
    std::process::exit(74);
}

/// Starts the thread that owns `storage`: it writes each batch it is given (synced, or lazily, as
/// the batch's [`Durability`] says) and reports it done through the returned channel. Every
/// `SLED_APPLY_DELAY` it takes the log's records out of the store and hands them to a second
/// thread, which applies them to sled and reports the blocks archived on the same channel: sled's
/// own writes never hold up the log's.
pub fn start_writer(
    storage: SledStorage,
    options: WriterOptions,
    telemetry: std::sync::Arc<Telemetry>,
) -> std::io::Result<(WriteSender, mpsc::UnboundedReceiver<Written>)> {
    let (writes, batches) = std_mpsc::channel::<(Vec<Write>, Durability)>();
    let (done, written) = mpsc::unbounded_channel();
    let (backlogs, to_apply) = std_mpsc::sync_channel(SLED_BACKLOGS_QUEUED_MAX);
    let archived = done.clone();
    std::thread::Builder::new()
        .name("benmo-sled".to_string())
        .spawn(move || or_exit(|| run_sled_applier(to_apply, archived)))?;
    std::thread::Builder::new()
        .name("benmo-writer".to_string())
        .spawn(move || {
            or_exit(|| run_writer(storage, batches, done, backlogs, options, &telemetry))
        })?;
    Ok((writes, written))
}

/// Runs `body`; a panic in it ends the process. A panic on the writer's or the sled thread is a
/// broken invariant, and without them the core would wait for its writes for ever: the node stops
/// loudly instead, as it does when the core panics.
fn or_exit(body: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_err() {
        error!("a storage thread stopped on a broken invariant; exiting");
        std::process::exit(70);
    }
}

/// The writer thread's loop; returns once either channel is closed.
fn run_writer(
    mut storage: SledStorage,
    batches: std_mpsc::Receiver<(Vec<Write>, Durability)>,
    done: mpsc::UnboundedSender<Written>,
    backlogs: std_mpsc::SyncSender<DetachedBacklog>,
    options: WriterOptions,
    telemetry: &Telemetry,
) {
    loop {
        let mut wait = storage
            .backlog_due_in()
            .unwrap_or(Duration::from_secs(3600));
        if let Some(since) = storage.unwritten_since() {
            wait = wait.min(LAZY_HOLD_MAX.saturating_sub(since.elapsed()));
        }
        match batches.recv_timeout(wait) {
            Ok((batch, durability)) => {
                let started = Instant::now();
                let written = match durability {
                    Durability::Synced => storage.write(&batch),
                    Durability::Lazy => storage.write_lazily(&batch),
                };
                if let Err(error) = written {
                    fail(error);
                }
                if durability == Durability::Synced {
                    telemetry.flushed(started.elapsed());
                    if !options.fsync_delay.is_zero() {
                        std::thread::sleep(options.fsync_delay);
                    }
                }
                if done.send(Written::Done).is_err() {
                    return;
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if storage
            .unwritten_since()
            .is_some_and(|since| since.elapsed() >= LAZY_HOLD_MAX)
        {
            if let Err(error) = storage.write_out() {
                fail(error);
            }
        }
        if storage.backlog_due_in() == Some(Duration::ZERO)
            && backlogs.send(storage.detach_backlog()).is_err()
        {
            return;
        }
    }
}

/// The sled thread's loop: applies each backlog it is handed, in order, and reports the blocks
/// now in sled; returns once either channel is closed.
fn run_sled_applier(
    backlogs: std_mpsc::Receiver<DetachedBacklog>,
    archived: mpsc::UnboundedSender<Written>,
) {
    crate::storage::in_background();
    while let Ok(backlog) = backlogs.recv() {
        match backlog.apply() {
            Ok(Some(height)) => {
                if archived.send(Written::Archived(height)).is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(error) => fail(error),
        }
    }
}

/// Answers for the callers of one batch. The first [`ANSWERS_PER_YIELD`] go at once; the rest are
/// held until the batch's frames and writes have gone out, then sent a group at a time, the core
/// loop yielding before each group: the callers' tasks and their connection's task run in
/// between, so the first answers are on the wire while the rest are still being handed over.
/// Answered all at once, a decided block's callers would be written to their connection in one
/// go after the last of them, and a client process that waits for them would start its next
/// requests only then, with the machine's other CPU idle meanwhile.
#[derive(Default)]
pub struct Answers {
    sent_at_once: usize,
    held: Vec<(Waiter, TransferResult)>,
}

impl Answers {
    /// Answers `waiter` now, or holds the answer for [`Answers::send_held`].
    pub fn answer(&mut self, waiter: Waiter, result: TransferResult) {
        if self.sent_at_once < ANSWERS_PER_YIELD {
            self.sent_at_once += 1;
            let _ = waiter.result.send(result);
        } else {
            self.held.push((waiter, result));
        }
    }

    /// Sends every held answer, yielding to the runtime before each group; the next batch's first
    /// answers go at once again.
    pub async fn send_held(&mut self) {
        for (index, (waiter, result)) in std::mem::take(&mut self.held).into_iter().enumerate() {
            if index % ANSWERS_PER_YIELD == 0 {
                tokio::task::yield_now().await;
            }
            let _ = waiter.result.send(result);
        }
        self.sent_at_once = 0;
    }
}

/// The node's side of the host's [`Environment`].
pub struct NodeEnvironment {
    transport: Transport,
    writer: WriteSender,
    /// Where each block the core appends is shown to the chain's readers before its write.
    decided: DecidedBlocks,
    telemetry: std::sync::Arc<Telemetry>,
    /// Decided heights not yet logged: logged once per tick, not once per block.
    decided_unlogged: Option<(Height, Height, usize)>,
    /// Callers' outcomes found in this batch.
    answers: Answers,
}

impl NodeEnvironment {
    /// The environment of a node that sends through `transport`, writes through `writer` and
    /// reports to `telemetry`.
    pub fn new(
        transport: Transport,
        writer: WriteSender,
        decided: DecidedBlocks,
        telemetry: std::sync::Arc<Telemetry>,
    ) -> NodeEnvironment {
        NodeEnvironment {
            transport,
            writer,
            decided,
            telemetry,
            decided_unlogged: None,
            answers: Answers::default(),
        }
    }

    fn log_decided(&mut self, head: Hash) {
        if let Some((first, last, transfers)) = self.decided_unlogged.take() {
            info!(
                "decided blocks {first}..={last} ({transfers} transfers), head {}",
                &head.to_hex()[..12]
            );
        }
    }
}

impl Environment for NodeEnvironment {
    type Waiter = Waiter;

    fn send(&mut self, peer: NodeId, messages: Vec<Message>) {
        self.telemetry.sent(peer, &messages);
        self.transport.send(peer, messages);
    }

    fn fetch(&mut self, peer: NodeId, from: Height) {
        self.transport.fetch(peer, from);
    }

    fn write(&mut self, writes: Vec<Write>, durability: Durability) {
        if self.writer.send((writes, durability)).is_err() {
            error!("the writer thread is gone; stopping");
            std::process::exit(74);
        }
    }

    fn answer(&mut self, waiter: Waiter, result: TransferResult) {
        self.answers.answer(waiter, result);
    }

    fn taken(&mut self, waiter: &mut Waiter, _id: &TransferId) {
        if let Some(taken) = waiter.taken.take() {
            let _ = taken.send(());
        }
    }

    fn appended(&mut self, block: &Block) {
        self.decided.insert(block);
        let (first, _, transfers) =
            self.decided_unlogged
                .unwrap_or((block.height, block.height, 0));
        self.decided_unlogged = Some((first, block.height, transfers + block.entries.len()));
        self.telemetry.appended(block);
    }

    fn event(&mut self, event: &Event) {
        let (description, warning) = describe_event(event);
        if warning {
            warn!("{description}");
        } else {
            info!("{description}");
        }
        self.telemetry.event(event, &description);
    }
}

/// Runs the core loop until every command sender is gone.
pub async fn run(
    mut host: Host<Waiter>,
    mut environment: NodeEnvironment,
    mut commands: mpsc::Receiver<Command>,
    mut written: mpsc::UnboundedReceiver<Written>,
    heartbeat: Duration,
    genesis_hash: Hash,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut context = Context {
        environment: &mut environment,
        genesis_hash,
    };
    loop {
        tokio::select! {
            biased;
            Some(event) = written.recv() => context.written(&mut host, event),
            command = commands.recv() => match command {
                Some(command) => context.handle(&mut host, command),
                None => return,
            },
            _ = ticker.tick() => {
                // What already arrived belongs to the round this tick ends.
                while let Ok(event) = written.try_recv() {
                    context.written(&mut host, event);
                }
                context.drain(&mut host, &mut commands);
                host.tick(context.environment);
                context.environment.log_decided(host.replica().ledger().head_hash());
                host.forget_waiters(|waiter| waiter.result.is_closed());
            }
        }
        context.drain(&mut host, &mut commands);
        host.flush(context.environment);
        context.environment.answers.send_held().await;
    }
}

struct Context<'a> {
    environment: &'a mut NodeEnvironment,
    genesis_hash: Hash,
}

impl Context<'_> {
    fn written(&mut self, host: &mut Host<Waiter>, event: Written) {
        match event {
            Written::Done => host.write_done(self.environment),
            Written::Archived(height) => host.archived(height),
        }
    }

    /// Takes the commands already queued, up to a batch.
    fn drain(&mut self, host: &mut Host<Waiter>, commands: &mut mpsc::Receiver<Command>) {
        for _ in 0..COMMANDS_PER_BATCH_MAX {
            match commands.try_recv() {
                Ok(command) => self.handle(host, command),
                Err(_) => return,
            }
        }
    }

    fn handle(&mut self, host: &mut Host<Waiter>, command: Command) {
        match command {
            Command::Peer { from, messages } => {
                self.environment.telemetry.received(from, &messages);
                host.receive(from, messages, self.environment)
            }
            Command::Blocks { from, blocks } => host.blocks(from, blocks, self.environment),
            Command::Disconnected(peer) => {
                debug!("the stream from node {peer} closed");
                host.disconnected(peer, self.environment)
            }
            Command::Transfer { transfer, waiter } => {
                host.propose(transfer, waiter, self.environment)
            }
            Command::Status(sender) => {
                let replica = host.replica();
                let _ = sender.send(NodeStatus {
                    core: replica.status(),
                    nodes: replica.config().nodes,
                    genesis_hash: self.genesis_hash,
                    genesis_balance: replica.config().genesis_balance,
                });
            }
            Command::Balances(sender) => {
                let ledger = host.replica().ledger();
                let _ = sender.send(Balances {
                    height: ledger.height(),
                    head_hash: ledger.head_hash(),
                    balances: ledger.balances().to_vec(),
                });
            }
            Command::Pending(sender) => {
                let _ = sender.send(host.replica().pending().cloned().collect());
            }
        }
    }
}

/// What the core did, in words for the log and for watchers, and whether it is a warning.
fn describe_event(event: &Event) -> (String, bool) {
    match event {
        Event::LeaderChanged { leader } => match leader {
            Some(ballot) => (
                format!("following leader node {} (ballot {ballot})", ballot.node),
                false,
            ),
            None => ("no leader".to_string(), false),
        },
        Event::ElectionStarted { ballot } => {
            (format!("starting election with ballot {ballot}"), false)
        }
        Event::BecameLeader { ballot, reproposed } => (
            format!("became leader with ballot {ballot}, re-proposing {reproposed} slots"),
            false,
        ),
        Event::SteppedDown { ballot, higher } => match higher {
            Some(higher) => (
                format!("stepped down from ballot {ballot}: saw ballot {higher}"),
                false,
            ),
            None => (format!("stepped down from ballot {ballot}"), false),
        },
        Event::CaughtUp { peer, from, to } => (
            format!("caught up blocks {from}..={to} from node {peer}"),
            false,
        ),
        Event::ChainRejected { peer, error } => {
            (format!("refused blocks from node {peer}: {error}"), true)
        }
        Event::MessageRejected { from, kind, reason } => {
            (format!("dropped {kind} from node {from}: {reason}"), true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Identity;
    use benmo_paxos::{Ballot, Ledger};

    const IDENTITY: Identity = Identity {
        node: 2,
        nodes: 3,
        genesis_balance: 100,
    };

    /// How long a test waits for the writer's next report before it fails: reports are awaited,
    /// and on any machine they come far sooner.
    const PATIENCE: Duration = Duration::from_secs(20);

    async fn next(written: &mut mpsc::UnboundedReceiver<Written>) -> Written {
        tokio::time::timeout(PATIENCE, written.recv())
            .await
            .expect("the writer reports in time")
            .expect("the writer thread is alive")
    }

    /// Takes an Archived report, checking that sled only ever moves up; says whether it was one.
    fn archive(report: Written, archived: &mut Height) -> bool {
        match report {
            Written::Archived(height) => {
                assert!(height > *archived, "{height} after {archived}");
                *archived = height;
                true
            }
            Written::Done => false,
        }
    }

    fn waiting(count: usize) -> (Vec<Waiter>, Vec<oneshot::Receiver<TransferResult>>) {
        (0..count)
            .map(|_| {
                let (result, receiver) = oneshot::channel();
                (
                    Waiter {
                        result,
                        taken: None,
                    },
                    receiver,
                )
            })
            .unzip()
    }

    fn busy() -> TransferResult {
        Err(benmo_paxos::ProposeError::Busy { limit: 1 })
    }

    #[tokio::test]
    async fn a_batchs_first_answers_go_at_once_and_the_rest_when_sent() {
        let count = ANSWERS_PER_YIELD * 2 + 3;
        let mut answers = Answers::default();
        let (waiters, mut receivers) = waiting(count);
        for waiter in waiters {
            answers.answer(waiter, busy());
        }
        let arrived = |receivers: &mut Vec<oneshot::Receiver<TransferResult>>| {
            receivers
                .iter_mut()
                .map(|receiver| receiver.try_recv().is_ok())
                .collect::<Vec<bool>>()
        };
        let early = arrived(&mut receivers);
        assert!(early[..ANSWERS_PER_YIELD].iter().all(|&sent| sent));
        assert!(early[ANSWERS_PER_YIELD..].iter().all(|&sent| !sent));
        answers.send_held().await;
        let rest = arrived(&mut receivers.split_off(ANSWERS_PER_YIELD));
        assert!(rest.iter().all(|&sent| sent), "every held answer is sent");
        let (waiters, mut later) = waiting(count);
        // The next batch starts afresh: its first group goes at once.
        for waiter in waiters {
            answers.answer(waiter, busy());
        }
        assert_eq!(
            arrived(&mut later).iter().filter(|&&sent| sent).count(),
            ANSWERS_PER_YIELD
        );
    }

    #[tokio::test]
    async fn other_tasks_run_between_groups_of_held_answers() {
        let mut answers = Answers::default();
        let (waiters, mut receivers) = waiting(ANSWERS_PER_YIELD * 3);
        let mut last = receivers.pop().expect("there are waiters");
        let second_group = receivers.swap_remove(ANSWERS_PER_YIELD);
        for waiter in waiters {
            answers.answer(waiter, busy());
        }
        // On this one-thread runtime, the task runs only when the sender yields.
        let watcher = tokio::spawn(async move {
            assert!(second_group.await.expect("answered").is_err());
            last.try_recv().is_ok()
        });
        answers.send_held().await;
        let last_was_answered = watcher.await.unwrap();
        assert!(
            !last_was_answered,
            "the second group's caller ran before the third group was answered"
        );
    }

    #[tokio::test]
    async fn the_log_is_written_at_once_and_reaches_sled_in_order_behind_it() {
        let directory = tempfile::tempdir().unwrap();
        let storage = SledStorage::open_node(&directory.path().join("data"), &IDENTITY).unwrap();
        let reader = storage.reader();
        let telemetry = Telemetry::new(IDENTITY.node, IDENTITY.nodes);
        let (writer, mut written) =
            start_writer(storage, WriterOptions::default(), telemetry).unwrap();
        let mut ledger = Ledger::genesis(IDENTITY.nodes, IDENTITY.genesis_balance);
        let mut archived = 0;
        for round in 1..=3u64 {
            let block = ledger.apply(1, &[]);
            let writes = vec![
                Write::Promise(Ballot::new(round, 1)),
                Write::AppendBlock(block),
            ];
            writer.send((writes, Durability::Synced)).unwrap();
            // Done as soon as the log holds it; sled follows later, in order.
            while archive(next(&mut written).await, &mut archived) {}
            let heights: Vec<Height> = reader
                .blocks(0, 10)
                .unwrap()
                .iter()
                .map(|block| block.height)
                .collect();
            assert_eq!(heights, (0..=round).collect::<Vec<_>>());
        }
        while archived < 3 {
            let report = next(&mut written).await;
            assert!(archive(report, &mut archived), "no write was asked for");
        }
    }
}
