//! The core loop: one tokio task drives the [`Host`] (and through it the core), and one thread
//! owns the [`SledStorage`] and makes each group of writes durable.
//!
//! The task waits for the next command, tick or finished write, takes every command already queued
//! as one batch (up to [`COMMANDS_PER_BATCH_MAX`]), and ends the batch with [`Host::flush`]: one
//! frame of messages per peer, and the next group of writes handed to the writer if it is idle.
//! The leader's writes never block the task, so its Accepts leave while its vote is written; a
//! follower on a fast disk writes its votes itself (see [`INLINE_SYNC_MAX`]), and on a slow one
//! hands them to the writer too, so heartbeats and their replies never wait behind a slow flush.
//! When a tick and replies are both ready, the replies are taken first, so they count in the
//! round that the tick ends.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use benmo_paxos::{
    Block, Event, Hash, Height, Message, NodeId, RoleName, Status, Storage, Transfer, TransferId,
    Write,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tracing::{debug, error, info, warn};

use crate::host::{Durability, Environment, Host, TransferResult};
use crate::storage::{DecidedBlocks, SledStorage, StorageError};
use crate::telemetry::Telemetry;
use crate::transport::Transport;

/// The most commands taken into one batch before its messages and writes go out.
pub const COMMANDS_PER_BATCH_MAX: usize = 1_024;
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
/// crash loses no more than a machine crash would have within this window.
const LAZY_HOLD_MAX: Duration = Duration::from_millis(10);

/// A node that is not leading writes its synced groups on the core loop's own thread while the
/// last sync took less than this. Handing a group to the writer thread and hearing back costs two
/// thread wake-ups, which on a small machine take longer than a fast disk's sync; a follower has
/// nothing to do meanwhile but wait for that write (its vote leaves only once it is durable). On
/// a slower disk the writer thread takes every group again, so heartbeats and their replies never
/// wait behind a sync for long: a sync this short is far below the shortest heartbeat interval.
pub const INLINE_SYNC_MAX: Duration = Duration::from_millis(1);

/// What the writer thread is asked to do.
enum Job {
    /// Write a group of writes, synced or lazily.
    Write(Vec<Write>, Durability),
    /// The core loop wrote a group itself into an idle store (or filled its backlog): the store
    /// now holds writes to apply to sled, and the thread's wait must end by the time they are due.
    Rearm,
}

/// The store, shared by the writer thread and the core loop (for the groups it writes itself).
/// The core loop never waits for the lock: if the thread holds it, the group goes to the thread.
struct SharedStore {
    storage: std::sync::Mutex<SledStorage>,
    /// How long the last synced write took, in µs (the test's slow-disk delay included);
    /// `u64::MAX` before the first, so the first goes to the writer thread and is timed there.
    last_sync_micros: std::sync::atomic::AtomicU64,
    options: WriterOptions,
}

impl SharedStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, SledStorage> {
        // A panic while holding the lock ends the process (see `fail`), so it is never poisoned
        // in a way anyone could observe; take the store either way.
        self.storage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn last_sync(&self) -> Duration {
        Duration::from_micros(
            self.last_sync_micros
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// A synced write that began at `started` is done: play the slow disk (tests only), then
    /// record how long it took.
    fn synced(&self, started: Instant, telemetry: &Telemetry) {
        telemetry.flushed(started.elapsed());
        if !self.options.fsync_delay.is_zero() {
            std::thread::sleep(self.options.fsync_delay);
        }
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_sync_micros
            .store(micros, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A write that fails ends the process: a node that cannot write cannot keep its promises, and
/// nothing that waited for the write has been released.
fn fail(error: StorageError) -> ! {
    error!(%error, "cannot write to the data directory; stopping");
    std::process::exit(74);
}

/// How the writer thread makes writes durable.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// Sleep this long after every fsync: a slow disk, for tests only.
    pub fsync_delay: Duration,
    /// A node that is not leading writes synced groups itself while the last sync took less
    /// than this (see [`INLINE_SYNC_MAX`], the default).
    pub inline_sync_max: Duration,
}

impl Default for WriterOptions {
    fn default() -> WriterOptions {
        WriterOptions {
            fsync_delay: Duration::ZERO,
            inline_sync_max: INLINE_SYNC_MAX,
        }
    }
}

/// What the writer reports.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// The write it was given is done: synced, or written lazily if that is what it asked for.
    Done,
    /// Every block up to this height is in sled, where the archive finds it.
    Archived(Height),
}

/// Which thread wrote a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrittenBy {
    /// The core loop's own thread, before [`Writer::write`] returned.
    CoreLoop,
    /// The writer thread.
    WriterThread,
}

/// Writes groups of writes: hands them to the writer thread, or, for a node that is not leading
/// on a fast disk, writes synced groups itself (see [`INLINE_SYNC_MAX`]). Either way,
/// [`Written::Done`] follows on the channel [`start_writer`] returned.
pub struct Writer {
    jobs: std_mpsc::Sender<Job>,
    store: std::sync::Arc<SharedStore>,
    done: mpsc::UnboundedSender<Written>,
    telemetry: std::sync::Arc<Telemetry>,
}

impl Writer {
    /// Starts writing `writes`. `leading`: this node leads, so what it sends in the same step
    /// (its Accepts, its answers to clients) must not wait for the write; the writer thread
    /// takes the group.
    pub fn write(&self, writes: Vec<Write>, durability: Durability, leading: bool) -> WrittenBy {
        if !leading
            && durability == Durability::Synced
            && self.store.last_sync() < self.store.options.inline_sync_max
        {
            if let Ok(mut storage) = self.store.storage.try_lock() {
                let was_idle = storage.backlog_due_in().is_none();
                let started = Instant::now();
                if let Err(error) = storage.write(&writes) {
                    fail(error);
                }
                let due_now = storage.backlog_due_in() == Some(Duration::ZERO);
                drop(storage);
                self.store.synced(started, &self.telemetry);
                if was_idle || due_now {
                    // The thread may be asleep with no deadline, or a later one: it applies the
                    // backlog to sled.
                    let _ = self.jobs.send(Job::Rearm);
                }
                let _ = self.done.send(Written::Done);
                return WrittenBy::CoreLoop;
            }
        }
        if self.jobs.send(Job::Write(writes, durability)).is_err() {
            error!("the writer thread is gone; stopping");
            std::process::exit(74);
        }
        WrittenBy::WriterThread
    }
}

/// Starts the thread that owns `storage` (the core loop borrows it for the groups it writes
/// itself): it writes each group it is given (synced, or lazily, as the group's [`Durability`]
/// says), applies the log to sled in bulk (see `SLED_APPLY_DELAY`), and reports both through the
/// returned channel.
pub fn start_writer(
    storage: SledStorage,
    options: WriterOptions,
    telemetry: std::sync::Arc<Telemetry>,
) -> std::io::Result<(Writer, mpsc::UnboundedReceiver<Written>)> {
    let (jobs, queue) = std_mpsc::channel();
    let (done, written) = mpsc::unbounded_channel();
    let store = std::sync::Arc::new(SharedStore {
        storage: std::sync::Mutex::new(storage),
        last_sync_micros: std::sync::atomic::AtomicU64::new(u64::MAX),
        options,
    });
    let thread_store = store.clone();
    let thread_done = done.clone();
    let thread_telemetry = telemetry.clone();
    std::thread::Builder::new()
        .name("benmo-writer".to_string())
        .spawn(move || run_writer(&thread_store, queue, thread_done, &thread_telemetry))?;
    let writer = Writer {
        jobs,
        store,
        done,
        telemetry,
    };
    Ok((writer, written))
}

/// The writer thread's loop; returns once either channel is closed.
fn run_writer(
    store: &SharedStore,
    queue: std_mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Written>,
    telemetry: &Telemetry,
) {
    loop {
        let wait = {
            let storage = store.lock();
            let mut wait = storage
                .backlog_due_in()
                .unwrap_or(Duration::from_secs(3600));
            if let Some(since) = storage.unwritten_since() {
                wait = wait.min(LAZY_HOLD_MAX.saturating_sub(since.elapsed()));
            }
            wait
        };
        match queue.recv_timeout(wait) {
            Ok(Job::Write(batch, durability)) => {
                let started = Instant::now();
                let written = match durability {
                    Durability::Synced => store.lock().write(&batch),
                    Durability::Lazy => store.lock().write_lazily(&batch),
                };
                if let Err(error) = written {
                    fail(error);
                }
                if durability == Durability::Synced {
                    store.synced(started, telemetry);
                }
                if done.send(Written::Done).is_err() {
                    return;
                }
            }
            Ok(Job::Rearm) | Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let mut storage = store.lock();
        if storage
            .unwritten_since()
            .is_some_and(|since| since.elapsed() >= LAZY_HOLD_MAX)
        {
            if let Err(error) = storage.write_out() {
                fail(error);
            }
        }
        if storage.backlog_due_in() == Some(Duration::ZERO) {
            // Applied without holding the store: the core loop's own writes go on meanwhile.
            let backlog = storage.detach_backlog();
            drop(storage);
            match backlog.apply() {
                Ok(Some(height)) => {
                    if done.send(Written::Archived(height)).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(error) => fail(error),
            }
        }
    }
}

/// The node's side of the host's [`Environment`].
pub struct NodeEnvironment {
    transport: Transport,
    writer: Writer,
    /// Whether the core leads now (see [`Writer::write`]); set before each step that may write.
    leading: bool,
    /// Where each block the core appends is shown to the chain's readers before its write.
    decided: DecidedBlocks,
    telemetry: std::sync::Arc<Telemetry>,
    /// Decided heights not yet logged: logged once per tick, not once per block.
    decided_unlogged: Option<(Height, Height, usize)>,
}

impl NodeEnvironment {
    /// The environment of a node that sends through `transport`, writes through `writer` and
    /// reports to `telemetry`.
    pub fn new(
        transport: Transport,
        writer: Writer,
        decided: DecidedBlocks,
        telemetry: std::sync::Arc<Telemetry>,
    ) -> NodeEnvironment {
        NodeEnvironment {
            transport,
            writer,
            leading: false,
            decided,
            telemetry,
            decided_unlogged: None,
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
        self.writer.write(writes, durability, self.leading);
    }

    fn answer(&mut self, waiter: Waiter, result: TransferResult) {
        let _ = waiter.result.send(result);
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
        context.environment.leading = leads(&host);
        host.flush(context.environment);
    }
}

fn leads(host: &Host<Waiter>) -> bool {
    host.replica().role() == RoleName::Leader
}

struct Context<'a> {
    environment: &'a mut NodeEnvironment,
    genesis_hash: Hash,
}

impl Context<'_> {
    fn written(&mut self, host: &mut Host<Waiter>, event: Written) {
        match event {
            Written::Done => {
                self.environment.leading = leads(host);
                host.write_done(self.environment)
            }
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

    fn start(
        directory: &tempfile::TempDir,
        options: WriterOptions,
    ) -> (Writer, mpsc::UnboundedReceiver<Written>) {
        let storage = SledStorage::open_node(&directory.path().join("data"), &IDENTITY).unwrap();
        let telemetry = Telemetry::new(IDENTITY.node, IDENTITY.nodes);
        start_writer(storage, options, telemetry).unwrap()
    }

    async fn next(written: &mut mpsc::UnboundedReceiver<Written>) -> Written {
        tokio::time::timeout(PATIENCE, written.recv())
            .await
            .expect("the writer reports in time")
            .expect("the writer thread is alive")
    }

    fn blocks(count: usize) -> Vec<Block> {
        let mut ledger = Ledger::genesis(IDENTITY.nodes, IDENTITY.genesis_balance);
        (0..count).map(|_| ledger.apply(1, &[])).collect()
    }

    /// Options under which every sync counts as fast, whatever this machine's disk.
    fn fast_disk() -> WriterOptions {
        WriterOptions {
            inline_sync_max: Duration::from_secs(3_600),
            ..WriterOptions::default()
        }
    }

    #[tokio::test]
    async fn a_follower_on_a_fast_disk_writes_its_votes_itself_and_sled_still_catches_up() {
        let directory = tempfile::tempdir().unwrap();
        let (writer, mut written) = start(&directory, fast_disk());
        let mut blocks = blocks(2).into_iter().map(Write::AppendBlock);
        let first = vec![blocks.next().unwrap()];
        // No sync is timed yet: the thread takes the first.
        assert_eq!(
            writer.write(first, Durability::Synced, false),
            WrittenBy::WriterThread
        );
        assert_eq!(next(&mut written).await, Written::Done);
        assert_eq!(next(&mut written).await, Written::Archived(1));
        // The store is idle now, and the thread asleep with nothing due.
        let second = vec![blocks.next().unwrap()];
        assert_eq!(
            writer.write(second, Durability::Synced, false),
            WrittenBy::CoreLoop
        );
        assert_eq!(next(&mut written).await, Written::Done);
        // Told of the core loop's write, the thread applies it to sled.
        assert_eq!(next(&mut written).await, Written::Archived(2));
    }

    #[tokio::test]
    async fn a_leader_and_a_lazy_group_leave_the_write_to_the_thread() {
        let directory = tempfile::tempdir().unwrap();
        let (writer, mut written) = start(&directory, fast_disk());
        let mut blocks = blocks(2).into_iter().map(Write::AppendBlock);
        let promise = |round| vec![Write::Promise(Ballot::new(round, 1))];
        assert_eq!(
            writer.write(promise(1), Durability::Synced, false),
            WrittenBy::WriterThread
        );
        assert_eq!(next(&mut written).await, Written::Done);
        // The leader's Accepts leave while its vote is written: never on its core loop's thread.
        assert_eq!(
            writer.write(promise(2), Durability::Synced, true),
            WrittenBy::WriterThread
        );
        assert_eq!(next(&mut written).await, Written::Done);
        let lazy = vec![blocks.next().unwrap()];
        assert_eq!(
            writer.write(lazy, Durability::Lazy, false),
            WrittenBy::WriterThread
        );
        assert_eq!(next(&mut written).await, Written::Done);
        // The same disk, a follower's synced group: the core loop writes it.
        assert_eq!(
            writer.write(promise(3), Durability::Synced, false),
            WrittenBy::CoreLoop
        );
        assert_eq!(next(&mut written).await, Written::Done);
    }

    #[tokio::test]
    async fn after_a_slow_sync_the_thread_takes_the_writes_again() {
        let directory = tempfile::tempdir().unwrap();
        let options = WriterOptions {
            fsync_delay: Duration::from_millis(5),
            inline_sync_max: Duration::from_millis(5),
        };
        let (writer, mut written) = start(&directory, options);
        for round in 1..=3 {
            let promise = vec![Write::Promise(Ballot::new(round, 1))];
            assert_eq!(
                writer.write(promise, Durability::Synced, false),
                WrittenBy::WriterThread,
                "round {round}"
            );
            assert_eq!(next(&mut written).await, Written::Done);
        }
    }
}
