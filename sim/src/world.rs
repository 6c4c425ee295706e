//! A whole cluster of real [`Replica`]s on a simulated network, disk and clock.
//!
//! Every choice (delays, losses, faults, client behaviour, election jitter) is drawn from one
//! seeded generator, so a run is a pure function of its seed and options: any failure replays
//! exactly. Events sit in one queue ordered by simulated time and insertion; processing one event
//! is one step, and the checkers run after every step.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use benmo_paxos::{
    restore, Block, Config, Fetch, Height, Input, MemoryStorage, Message, NodeId, PlantedBugs,
    ProposeError, Ready, Replica, Reply, Storage, Transfer, TransferId, Write,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checkers::{
    check_node_total, Acknowledgements, Agreement, HashLinks, LedgerModel, Promises, Violation,
};

/// Simulated milliseconds.
pub type Millis = u64;

/// The heartbeat interval: one core tick.
pub const TICK_MS: Millis = 50;
/// The longest a simulated fsync takes.
const DISK_SYNC_MS_MAX: Millis = 2;
/// The most blocks a node serves for one catch-up fetch.
pub const CATCH_UP_BLOCKS_MAX: usize = 64;
/// A client that hears nothing for this long asks again, at another node.
const CLIENT_TIMEOUT_MS: Millis = 1_500;

/// What a run is made of.
#[derive(Clone, Debug)]
pub struct Options {
    /// The seed every choice derives from.
    pub seed: u64,
    /// The cluster size.
    pub nodes: u32,
    /// Bugs planted in the core (tests only).
    pub planted_bugs: PlantedBugs,
    /// Print every step.
    pub trace: bool,
    /// Draw the nodes' batching, pipelining and queue limits from the seed instead of using the
    /// defaults, so runs also cover one-transfer blocks, a single slot in flight and full queues.
    pub vary_config: bool,
}

/// How hostile the network is; drawn per seed, changed by faults.
#[derive(Clone, Debug)]
pub struct NetworkFaults {
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Probability a message is delayed far beyond the usual.
    pub slow: f64,
    /// The usual one-way delay is 1..=this many ms.
    pub delay_ms_max: Millis,
}

impl NetworkFaults {
    /// A network that only delays, a little.
    pub fn calm() -> NetworkFaults {
        NetworkFaults {
            loss: 0.0,
            duplicate: 0.0,
            slow: 0.0,
            delay_ms_max: 5,
        }
    }
}

/// What travels the simulated network between nodes.
#[derive(Clone, Debug)]
enum Packet {
    Paxos(Message),
    FetchRequest { from: Height },
    FetchResponse { blocks: Vec<Block> },
}

/// Something scheduled to happen.
#[derive(Clone, Debug)]
enum Event {
    /// A node's heartbeat interval passed (for the given incarnation of the node).
    Tick(NodeId, u64),
    Deliver {
        from: NodeId,
        to: NodeId,
        packet: Packet,
    },
    ClientNext(usize),
    ClientRequest {
        client: usize,
        node: NodeId,
        transfer: Transfer,
    },
    ClientReply {
        client: usize,
        transfer: Transfer,
        result: Result<benmo_paxos::Committed, ProposeError>,
    },
    ClientRetry {
        client: usize,
        attempt: u32,
    },
    /// A node's fsync completes (for the given incarnation of the node).
    Flush(NodeId, u64),
    Fault,
    Restart(NodeId),
    Heal {
        from: NodeId,
        to: NodeId,
    },
    HealAll,
    CalmNetwork,
    EndFaults,
}

/// One step's output that waits for the disk: its writes, and what may leave only after them.
struct Unflushed {
    writes: Vec<Write>,
    messages: Vec<benmo_paxos::Outgoing>,
    replies: Vec<Reply>,
}

struct SimNode {
    config: Config,
    replica: Option<Replica>,
    /// What has reached the disk: all a crash leaves.
    disk: MemoryStorage,
    /// Steps whose writes are still on their way to the disk, oldest first.
    unflushed: std::collections::VecDeque<Unflushed>,
    /// How many of the oldest unflushed steps the fsync in progress covers.
    flushing: Option<usize>,
    /// Clients waiting for an answer about a transfer id.
    waiting: BTreeMap<TransferId, Vec<usize>>,
    /// Bumped on every restart so ticks of an earlier life are ignored.
    incarnation: u64,
}

/// What a client is waiting for.
#[derive(Clone, Debug)]
struct Outstanding {
    transfer: Transfer,
    /// A transfer that can never apply: the answer must be a refusal.
    malformed: bool,
    attempt: u32,
}

#[derive(Debug, Default)]
struct SimClient {
    outstanding: Option<Outstanding>,
    sequence: u64,
    /// The last acknowledged transfer, which the client sometimes submits again to check that a
    /// retry returns the first outcome.
    last_acknowledged: Option<Transfer>,
}

/// Counters for the summary line.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Events processed.
    pub steps: u64,
    /// Faults injected (crashes, cuts, partitions, loss bursts).
    pub faults: u64,
    /// Crashes among them.
    pub crashes: u64,
    /// Transfers submitted by clients (new ids).
    pub submitted: u64,
    /// Transfers acknowledged as committed.
    pub acknowledged: u64,
    /// The chain's height at the end.
    pub height: Height,
    /// Simulated ms from the end of faults until the cluster converged.
    pub recovery_ms: Millis,
    /// Simulated ms at the end.
    pub time_ms: Millis,
}

/// The simulated cluster.
pub struct World {
    options: Options,
    rng: ChaCha8Rng,
    time: Millis,
    queue: BTreeMap<(Millis, u64), Event>,
    sequence: u64,
    nodes: Vec<SimNode>,
    /// Directed links that drop everything: (from, to).
    cuts: BTreeSet<(NodeId, NodeId)>,
    network: NetworkFaults,
    base_network: NetworkFaults,
    clients: Vec<SimClient>,
    submitted: HashMap<TransferId, Transfer>,
    /// Whether clients start new transfers (they stop when faults stop, and finish what they began).
    load: bool,
    faults_on: bool,
    faults_end_ms: Millis,

    agreement: Agreement,
    links: HashLinks,
    model: LedgerModel,
    promises: Promises,
    acknowledgements: Acknowledgements,

    stats: Stats,
    trace: Vec<String>,
}

impl World {
    /// A fresh cluster: every node at the genesis block, nothing scheduled yet.
    pub fn new(options: Options) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let genesis = Block::genesis(options.nodes, 100);
        let mut template = Config::new(1, options.nodes);
        if options.vary_config {
            template.batch_transfers_max = [1, 2, 4, 64, 1_024][rng.random_range(0..5)];
            template.in_flight_slots_max = [1, 2, 8, 16][rng.random_range(0..4)];
            if rng.random_bool(0.2) {
                template.pending_transfers_max = rng.random_range(1..=4);
                template.queue_transfers_max = rng.random_range(1..=8);
            }
        }
        let mut nodes = Vec::new();
        for id in 1..=options.nodes {
            let mut config = template.clone();
            config.id = id;
            config.planted_bugs = options.planted_bugs;
            let mut disk = MemoryStorage::new();
            disk.write(&[Write::AppendBlock(genesis.clone())])
                .expect("a fresh disk takes the genesis block");
            nodes.push(SimNode {
                config,
                replica: None,
                disk,
                unflushed: std::collections::VecDeque::new(),
                flushing: None,
                waiting: BTreeMap::new(),
                incarnation: 0,
            });
        }
        let base_network = NetworkFaults::calm();
        let mut world = World {
            rng: ChaCha8Rng::seed_from_u64(rng.next_u64()),
            time: 0,
            queue: BTreeMap::new(),
            sequence: 0,
            nodes,
            cuts: BTreeSet::new(),
            network: base_network.clone(),
            base_network,
            clients: Vec::new(),
            submitted: HashMap::new(),
            load: false,
            faults_on: false,
            faults_end_ms: 0,
            agreement: Agreement::default(),
            links: HashLinks::new(options.nodes, &genesis),
            model: LedgerModel::new(options.nodes, 100),
            promises: Promises::new(options.nodes),
            acknowledgements: Acknowledgements::default(),
            stats: Stats::default(),
            trace: Vec::new(),
            options,
        };
        world
            .agreement
            .observe(1, &genesis)
            .expect("the first block is the genesis");
        for id in 1..=world.options.nodes {
            world.start_node(id).expect("a fresh node starts");
        }
        world
    }

    /// The current simulated time.
    pub fn now(&self) -> Millis {
        self.time
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The cluster size.
    pub fn nodes(&self) -> u32 {
        self.options.nodes
    }

    /// The replica of node `id`, if it is up.
    pub fn replica(&self, id: NodeId) -> Option<&Replica> {
        self.nodes[id as usize - 1].replica.as_ref()
    }

    /// The greatest height any node reached.
    pub fn height(&self) -> Height {
        self.agreement.height()
    }

    /// The node that leads with the highest ballot, if any node leads.
    pub fn leader(&self) -> Option<NodeId> {
        (1..=self.options.nodes)
            .filter_map(|id| self.replica(id).map(|replica| (id, replica.status())))
            .filter(|(_, status)| status.role == benmo_paxos::RoleName::Leader)
            .max_by_key(|(_, status)| status.ballot)
            .map(|(id, _)| id)
    }

    /// Sets how hostile the network is.
    pub fn set_network(&mut self, network: NetworkFaults) {
        self.base_network = network.clone();
        self.network = network;
    }

    /// Cuts the link from `from` to `to` (one direction).
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.cuts.insert((from, to));
    }

    /// Cuts both directions between `a` and `b`.
    pub fn sever(&mut self, a: NodeId, b: NodeId) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Restores every link.
    pub fn heal_all(&mut self) {
        self.cuts.clear();
    }

    /// Starts `count` clients that keep submitting transfers.
    pub fn start_clients(&mut self, count: usize) {
        self.load = true;
        for _ in 0..count {
            self.clients.push(SimClient::default());
            let client = self.clients.len() - 1;
            let delay = self.rng.random_range(0..TICK_MS);
            self.schedule(delay, Event::ClientNext(client));
        }
    }

    /// Stops clients from starting new transfers; they finish the ones they began.
    pub fn stop_load(&mut self) {
        self.load = false;
    }

    /// Submits one transfer from a new client to node `node` and returns its id; the client
    /// retries (at random nodes) until it gets an answer.
    pub fn submit_to(&mut self, node: NodeId, transfer: Transfer) -> TransferId {
        self.clients.push(SimClient::default());
        let client = self.clients.len() - 1;
        let id = transfer.id.clone();
        self.submitted.insert(id.clone(), transfer.clone());
        self.stats.submitted += 1;
        self.clients[client].outstanding = Some(Outstanding {
            transfer,
            malformed: false,
            attempt: 0,
        });
        self.send_client_request_to(client, node);
        id
    }

    /// Whether the transfer with `id` is in the chain.
    pub fn is_decided(&self, id: &TransferId) -> bool {
        (1..=self.options.nodes)
            .filter_map(|node| self.replica(node))
            .any(|replica| replica.ledger().lookup(id).is_some())
    }

    /// Runs a whole randomized scenario: faults, then calm, then the liveness check.
    pub fn run_random(&mut self) -> Result<(), Violation> {
        let fault_phase_ms = self.rng.random_range(4_000..=12_000);
        let network = NetworkFaults {
            loss: self.rng.random_range(0.0..0.08),
            duplicate: self.rng.random_range(0.0..0.05),
            slow: self.rng.random_range(0.0..0.05),
            delay_ms_max: self.rng.random_range(1..=20),
        };
        self.set_network(network);
        let clients = if self.rng.random_bool(0.2) {
            self.rng.random_range(10..=30)
        } else {
            self.rng.random_range(2..=6)
        };
        self.start_clients(clients);
        self.faults_on = true;
        self.faults_end_ms = fault_phase_ms;
        let first_fault = self.rng.random_range(0..500);
        self.schedule(first_fault, Event::Fault);
        self.schedule(fault_phase_ms, Event::EndFaults);
        self.run_until(fault_phase_ms)?;
        self.check_liveness(LIVENESS_BOUND_MS)
    }

    /// Processes events up to simulated time `until`.
    pub fn run_until(&mut self, until: Millis) -> Result<(), Violation> {
        while self.step_before(until)? {}
        self.time = self.time.max(until);
        Ok(())
    }

    /// Runs until `condition` holds (checked after every step) or `limit` passes; returns the
    /// time it first held.
    pub fn run_until_condition(
        &mut self,
        limit: Millis,
        mut condition: impl FnMut(&World) -> bool,
    ) -> Result<Option<Millis>, Violation> {
        while !condition(self) {
            if !self.step_before(limit)? {
                return Ok(None);
            }
        }
        Ok(Some(self.time))
    }

    /// Processes the next event if it is due by `limit`; returns whether there was one.
    fn step_before(&mut self, limit: Millis) -> Result<bool, Violation> {
        let Some(entry) = self.queue.first_entry() else {
            return Ok(false);
        };
        let (time, _) = *entry.key();
        if time > limit {
            return Ok(false);
        }
        let event = entry.remove();
        self.time = time;
        self.stats.steps += 1;
        self.process(event)?;
        Ok(true)
    }

    /// After faults stop: every client's transfer is answered and every node holds the same chain,
    /// within `bound` simulated ms.
    pub fn check_liveness(&mut self, bound: Millis) -> Result<(), Violation> {
        self.end_faults();
        let start = self.time;
        let converged_at = self.run_until_condition(start + bound, World::converged)?;
        let Some(converged_at) = converged_at else {
            return Err(Violation {
                checker: "liveness",
                detail: format!(
                    "the cluster did not converge within {bound} ms after faults stopped: {}",
                    self.describe()
                ),
            });
        };
        self.stats.recovery_ms = converged_at - start;
        self.stats.time_ms = self.time;
        self.stats.height = self.agreement.height();
        for (id, committed) in self.acknowledgements.all() {
            let block = self
                .agreement
                .block(committed.height)
                .expect("acknowledged blocks were checked to exist");
            if !block.entries.iter().any(|entry| &entry.transfer.id == id) {
                return Err(Violation {
                    checker: "acknowledged-transfers",
                    detail: format!(
                        "acknowledged transfer {id} is missing from block {}",
                        committed.height
                    ),
                });
            }
        }
        Ok(())
    }

    /// Every node up, at the same head, with nothing pending, and every client answered.
    pub fn converged(&self) -> bool {
        let clients_done = self
            .clients
            .iter()
            .all(|client| client.outstanding.is_none());
        if !clients_done {
            return false;
        }
        let mut heads = self.nodes.iter().map(|node| {
            node.replica.as_ref().map(|replica| {
                (
                    replica.ledger().height(),
                    replica.ledger().head_hash(),
                    replica.pending().next().is_none(),
                )
            })
        });
        let Some(Some(first)) = heads.next() else {
            return false;
        };
        first.2 && first.0 == self.agreement.height() && heads.all(|head| head == Some(first))
    }

    /// A one-line account of every node, for failure reports.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for node in &self.nodes {
            match &node.replica {
                None => {
                    let _ = write!(text, "[node {} down] ", node.config.id);
                }
                Some(replica) => {
                    let status = replica.status();
                    let _ = write!(
                        text,
                        "[node {} {:?} leader {:?} ballot {} promised {} qc {} height {} pending {}] ",
                        status.id,
                        status.role,
                        status.leader.map(|ballot| ballot.to_string()),
                        status.ballot,
                        status.promised,
                        status.quorum_connected,
                        status.height,
                        status.pending
                    );
                }
            }
        }
        let waiting = self
            .clients
            .iter()
            .filter(|client| client.outstanding.is_some())
            .count();
        let _ = write!(
            text,
            "cluster height {}, {waiting} clients waiting, cuts {:?}",
            self.agreement.height(),
            self.cuts
        );
        text
    }

    /// The last steps, when tracing.
    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    fn schedule(&mut self, delay: Millis, event: Event) {
        self.sequence += 1;
        self.queue.insert((self.time + delay, self.sequence), event);
    }

    fn note(&mut self, text: impl FnOnce() -> String) {
        if self.options.trace {
            let line = format!("{:>7} ms  {}", self.time, text());
            println!("{line}");
            self.trace.push(line);
        }
    }

    fn process(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Tick(id, incarnation) => self.tick(id, incarnation),
            Event::Deliver { from, to, packet } => self.deliver(from, to, packet),
            Event::ClientNext(client) => {
                self.client_next(client);
                Ok(())
            }
            Event::ClientRequest {
                client,
                node,
                transfer,
            } => self.client_request(client, node, transfer),
            Event::ClientReply {
                client,
                transfer,
                result,
            } => self.client_reply(client, transfer, result),
            Event::ClientRetry { client, attempt } => {
                let current = self.clients[client].outstanding.as_ref().map(|o| o.attempt);
                if current == Some(attempt) {
                    self.send_client_request(client);
                }
                Ok(())
            }
            Event::Flush(id, incarnation) => self.flush(id, incarnation),
            Event::Fault => {
                self.inject_fault();
                Ok(())
            }
            Event::Restart(id) => self.restart(id),
            Event::Heal { from, to } => {
                self.cuts.remove(&(from, to));
                Ok(())
            }
            Event::HealAll => {
                self.cuts.clear();
                Ok(())
            }
            Event::CalmNetwork => {
                self.network = self.base_network.clone();
                Ok(())
            }
            Event::EndFaults => {
                self.end_faults();
                Ok(())
            }
        }
    }

    fn end_faults(&mut self) {
        self.note(|| "faults stop: heal all, restart all, calm network".to_string());
        self.faults_on = false;
        self.load = false;
        self.cuts.clear();
        self.set_network(NetworkFaults::calm());
        for id in 1..=self.options.nodes {
            if self.nodes[id as usize - 1].replica.is_none() {
                self.schedule(0, Event::Restart(id));
            }
        }
    }

    fn start_node(&mut self, id: NodeId) -> Result<(), Violation> {
        let seed = self.rng.next_u64();
        let node = &mut self.nodes[id as usize - 1];
        let restored = restore(&node.disk, node.config.nodes, node.config.genesis_balance)
            .map_err(|error| Violation {
                checker: "restart",
                detail: format!("node {id} cannot restore from its disk: {error}"),
            })?;
        let replica = Replica::new(node.config.clone(), restored, seed).expect("valid config");
        let (height, hash) = (replica.ledger().height(), replica.ledger().head_hash());
        node.replica = Some(replica);
        node.incarnation += 1;
        let chosen = self.agreement.block(height).map(|block| block.hash);
        self.links.restart(id, height, hash, chosen)?;
        let replica = self.nodes[id as usize - 1]
            .replica
            .as_ref()
            .expect("just started");
        self.promises.check(id, replica)?;
        let incarnation = self.nodes[id as usize - 1].incarnation;
        let phase = self.rng.random_range(1..=TICK_MS);
        self.schedule(phase, Event::Tick(id, incarnation));
        Ok(())
    }

    fn crash(&mut self, id: NodeId) {
        let node = &mut self.nodes[id as usize - 1];
        if node.replica.take().is_none() {
            return;
        }
        // Whatever had not reached the disk is gone, and so is what waited for it.
        node.unflushed.clear();
        node.flushing = None;
        self.stats.crashes += 1;
        let waiting: Vec<usize> = std::mem::take(&mut node.waiting)
            .into_values()
            .flatten()
            .collect();
        self.note(|| format!("node {id} crashes"));
        // The clients' connections break: they retry elsewhere.
        for client in waiting {
            if let Some(outstanding) = &self.clients[client].outstanding {
                let attempt = outstanding.attempt;
                let delay = self.rng.random_range(5..50);
                self.schedule(delay, Event::ClientRetry { client, attempt });
            }
        }
    }

    fn restart(&mut self, id: NodeId) -> Result<(), Violation> {
        if self.nodes[id as usize - 1].replica.is_some() {
            return Ok(());
        }
        self.note(|| format!("node {id} restarts"));
        self.start_node(id)
    }

    fn tick(&mut self, id: NodeId, incarnation: u64) -> Result<(), Violation> {
        let node = &self.nodes[id as usize - 1];
        if node.replica.is_none() || node.incarnation != incarnation {
            // A node that is down does not tick; its restart starts a new series of ticks.
            return Ok(());
        }
        self.schedule(TICK_MS, Event::Tick(id, incarnation));
        self.step(id, Input::Tick)
    }

    fn step(&mut self, id: NodeId, input: Input) -> Result<(), Violation> {
        let node = &mut self.nodes[id as usize - 1];
        let Some(replica) = node.replica.as_mut() else {
            return Ok(());
        };
        let ready = replica.step(input);
        self.release(id, ready)
    }

    /// Does what a correct host does with a step's output: checks the blocks, sends at once what
    /// may leave at once, and queues the writes (and what waits for them) for the disk.
    fn release(&mut self, id: NodeId, ready: Ready) -> Result<(), Violation> {
        for block in ready.appended_blocks() {
            self.links.observe(id, block)?;
            if self.agreement.observe(id, block)? {
                self.model.apply(block, &self.submitted)?;
            }
        }
        if self.options.trace && !ready.is_empty() {
            let summary = summarize(&ready);
            self.note(|| format!("node {id}: {summary}"));
        }
        let Ready {
            writes,
            messages,
            messages_after_writes,
            fetches,
            replies,
            replies_after_writes,
            events: _,
        } = ready;
        self.send_all(id, messages);
        for Fetch { peer, from } in fetches {
            self.send(id, peer, Packet::FetchRequest { from });
        }
        for reply in replies {
            self.answer(id, reply);
        }
        let waits = !writes.is_empty()
            || !messages_after_writes.is_empty()
            || !replies_after_writes.is_empty();
        if waits {
            let node = &mut self.nodes[id as usize - 1];
            node.unflushed.push_back(Unflushed {
                writes,
                messages: messages_after_writes,
                replies: replies_after_writes,
            });
            self.start_flush(id);
        }
        let replica = self.nodes[id as usize - 1]
            .replica
            .as_ref()
            .expect("a node that stepped is up");
        self.promises.check(id, replica)?;
        check_node_total(id, replica, self.model.total())?;
        Ok(())
    }

    fn send_all(&mut self, id: NodeId, messages: Vec<benmo_paxos::Outgoing>) {
        for outgoing in &messages {
            self.promises.observe_sent(id, &outgoing.message);
        }
        for outgoing in messages {
            self.send(id, outgoing.to, Packet::Paxos(outgoing.message));
        }
    }

    /// Starts an fsync of everything unflushed, unless one is in progress (group commit: steps
    /// that arrive meanwhile wait for the next one).
    fn start_flush(&mut self, id: NodeId) {
        let node = &mut self.nodes[id as usize - 1];
        if node.flushing.is_some() || node.unflushed.is_empty() {
            return;
        }
        node.flushing = Some(node.unflushed.len());
        let incarnation = node.incarnation;
        let latency = self.rng.random_range(0..=DISK_SYNC_MS_MAX);
        self.schedule(latency, Event::Flush(id, incarnation));
    }

    /// An fsync completes: its steps' writes are durable, and what waited for them leaves.
    fn flush(&mut self, id: NodeId, incarnation: u64) -> Result<(), Violation> {
        let node = &mut self.nodes[id as usize - 1];
        if node.replica.is_none() || node.incarnation != incarnation {
            return Ok(());
        }
        let covered = node.flushing.take().unwrap_or(0);
        let batches: Vec<Unflushed> = node.unflushed.drain(..covered).collect();
        // Group commit, as the node does it: every covered step's writes in one atomic batch.
        let writes: Vec<Write> = batches
            .iter()
            .flat_map(|batch| batch.writes.iter().cloned())
            .collect();
        node.disk.write(&writes).map_err(|error| Violation {
            checker: "storage",
            detail: format!("node {id} wrote a batch its disk refuses: {error}"),
        })?;
        for batch in batches {
            self.send_all(id, batch.messages);
            for reply in batch.replies {
                self.answer(id, reply);
            }
        }
        self.start_flush(id);
        Ok(())
    }

    fn send(&mut self, from: NodeId, to: NodeId, packet: Packet) {
        if self.rng.random_bool(self.network.loss) {
            return;
        }
        let copies = if self.rng.random_bool(self.network.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.rng.random_range(1..=self.network.delay_ms_max);
            if self.rng.random_bool(self.network.slow) {
                delay += self.rng.random_range(TICK_MS..=10 * TICK_MS);
            }
            self.schedule(
                delay,
                Event::Deliver {
                    from,
                    to,
                    packet: packet.clone(),
                },
            );
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, packet: Packet) -> Result<(), Violation> {
        if self.cuts.contains(&(from, to)) || self.nodes[to as usize - 1].replica.is_none() {
            return Ok(());
        }
        match packet {
            Packet::Paxos(message) => self.step(to, Input::Receive { from, message }),
            Packet::FetchRequest { from: height } => {
                let blocks = self.nodes[to as usize - 1]
                    .disk
                    .blocks(height, CATCH_UP_BLOCKS_MAX)
                    .expect("the memory disk reads");
                self.send(to, from, Packet::FetchResponse { blocks });
                Ok(())
            }
            Packet::FetchResponse { blocks } => self.step(to, Input::Blocks { from, blocks }),
        }
    }

    fn answer(&mut self, id: NodeId, reply: Reply) {
        let Some(clients) = self.nodes[id as usize - 1].waiting.remove(&reply.id) else {
            return;
        };
        for client in clients {
            let Some(transfer) = self.submitted.get(&reply.id).cloned() else {
                continue;
            };
            let delay = self.rng.random_range(1..=3);
            self.schedule(
                delay,
                Event::ClientReply {
                    client,
                    transfer,
                    result: reply.result.clone(),
                },
            );
        }
    }

    fn client_next(&mut self, client: usize) {
        if self.clients[client].outstanding.is_some() || !self.load {
            return;
        }
        let again = self.clients[client].last_acknowledged.take();
        let (transfer, malformed) = match again {
            Some(transfer) if self.rng.random_bool(0.1) => (transfer, false),
            _ => self.new_transfer(client),
        };
        if !self.submitted.contains_key(&transfer.id) {
            self.submitted.insert(transfer.id.clone(), transfer.clone());
            self.stats.submitted += 1;
        }
        self.clients[client].outstanding = Some(Outstanding {
            transfer,
            malformed,
            attempt: 0,
        });
        self.send_client_request(client);
    }

    fn new_transfer(&mut self, client: usize) -> (Transfer, bool) {
        let nodes = self.options.nodes;
        let sequence = {
            let state = &mut self.clients[client];
            state.sequence += 1;
            state.sequence
        };
        let id = TransferId::new(format!("c{client}-{sequence}")).expect("valid id");
        let from = self.rng.random_range(1..=nodes);
        let mut to = self.rng.random_range(1..nodes);
        if to >= from {
            to += 1;
        }
        let mut transfer = Transfer {
            id,
            from,
            to,
            amount: self.rng.random_range(1..=60),
        };
        let malformed = self.rng.random_bool(0.08);
        if malformed {
            match self.rng.random_range(0..4) {
                0 => transfer.to = nodes + 1,
                1 => transfer.from = 0,
                2 => transfer.to = transfer.from,
                _ => transfer.amount = 0,
            }
        }
        (transfer, malformed)
    }

    /// Sends the client's outstanding transfer to a random node.
    fn send_client_request(&mut self, client: usize) {
        let node = self.rng.random_range(1..=self.options.nodes);
        self.send_client_request_to(client, node);
    }

    /// Sends the client's outstanding transfer to `node`, and arms its retry timer.
    fn send_client_request_to(&mut self, client: usize, node: NodeId) {
        let Some(outstanding) = self.clients[client].outstanding.as_mut() else {
            return;
        };
        outstanding.attempt += 1;
        let attempt = outstanding.attempt;
        let transfer = outstanding.transfer.clone();
        let delay = self.rng.random_range(1..=3);
        self.schedule(
            delay,
            Event::ClientRequest {
                client,
                node,
                transfer,
            },
        );
        self.schedule(CLIENT_TIMEOUT_MS, Event::ClientRetry { client, attempt });
    }

    fn client_request(
        &mut self,
        client: usize,
        node: NodeId,
        transfer: Transfer,
    ) -> Result<(), Violation> {
        let attempt = match &self.clients[client].outstanding {
            Some(outstanding) if outstanding.transfer.id == transfer.id => outstanding.attempt,
            _ => return Ok(()),
        };
        let sim_node = &mut self.nodes[node as usize - 1];
        if sim_node.replica.is_none() {
            // Connection refused: try elsewhere shortly.
            let delay = self.rng.random_range(5..50);
            self.schedule(delay, Event::ClientRetry { client, attempt });
            return Ok(());
        }
        sim_node
            .waiting
            .entry(transfer.id.clone())
            .or_default()
            .push(client);
        self.step(node, Input::Propose(transfer))
    }

    fn client_reply(
        &mut self,
        client: usize,
        transfer: Transfer,
        result: Result<benmo_paxos::Committed, ProposeError>,
    ) -> Result<(), Violation> {
        if let Ok(committed) = &result {
            self.acknowledgements
                .observe(&transfer, committed, &self.agreement)?;
        }
        let Some(outstanding) = self.clients[client].outstanding.clone() else {
            return Ok(());
        };
        if outstanding.transfer.id != transfer.id {
            return Ok(());
        }
        match result {
            Ok(_) if outstanding.malformed => {
                return Err(Violation {
                    checker: "validity",
                    detail: format!("malformed transfer {transfer:?} was committed"),
                })
            }
            Ok(_) => {
                self.stats.acknowledged += 1;
                self.clients[client].last_acknowledged = Some(transfer);
            }
            Err(ProposeError::Invalid(_)) if outstanding.malformed => {}
            Err(ProposeError::Busy { .. }) => {
                let attempt = outstanding.attempt;
                self.schedule(TICK_MS, Event::ClientRetry { client, attempt });
                return Ok(());
            }
            Err(error) => {
                return Err(Violation {
                    checker: "validity",
                    detail: format!("transfer {transfer:?} was refused: {error}"),
                })
            }
        }
        self.clients[client].outstanding = None;
        let think = self.rng.random_range(0..=30);
        self.schedule(think, Event::ClientNext(client));
        Ok(())
    }

    /// Injects one random fault and schedules the next.
    fn inject_fault(&mut self) {
        if !self.faults_on {
            return;
        }
        let gap = self.rng.random_range(50..=700);
        if self.time + gap < self.faults_end_ms {
            self.schedule(gap, Event::Fault);
        }
        self.stats.faults += 1;
        let nodes = self.options.nodes;
        let a = self.rng.random_range(1..=nodes);
        let mut b = self.rng.random_range(1..nodes);
        if b >= a {
            b += 1;
        }
        let heal_after = self.rng.random_range(100..=3_000);
        match self.rng.random_range(0..100) {
            0..=24 => {
                // Crash the leader half of the time: that is where the protocol is most exposed.
                let victim = match self.leader() {
                    Some(leader) if self.rng.random_bool(0.5) => leader,
                    _ => a,
                };
                self.crash(victim);
                let down_for = self.rng.random_range(20..=2_500);
                self.schedule(down_for, Event::Restart(victim));
            }
            25..=44 => {
                self.note(|| format!("sever {a} <-> {b}"));
                self.sever(a, b);
                self.schedule(heal_after, Event::Heal { from: a, to: b });
                self.schedule(heal_after, Event::Heal { from: b, to: a });
            }
            45..=54 => {
                self.note(|| format!("cut {a} -> {b}"));
                self.cut(a, b);
                self.schedule(heal_after, Event::Heal { from: a, to: b });
            }
            55..=64 => {
                let mut side: Vec<bool> = (0..nodes).map(|_| self.rng.random_bool(0.5)).collect();
                side[0] = !side[1];
                self.note(|| format!("partition {side:?}"));
                for x in 1..=nodes {
                    for y in 1..=nodes {
                        if side[x as usize - 1] != side[y as usize - 1] {
                            self.cut(x, y);
                        }
                    }
                }
                self.schedule(heal_after, Event::HealAll);
            }
            65..=79 => {
                let shape = self.rng.random_range(0..3);
                let leader = self.leader().unwrap_or(a);
                let hub = if b == leader { a } else { b };
                match shape {
                    0 => self.quorum_loss(leader, hub),
                    1 => self.constrained_election(leader, hub),
                    _ => self.chain(leader),
                }
                self.schedule(heal_after, Event::HealAll);
            }
            80..=89 => {
                self.note(|| "heal all".to_string());
                self.cuts.clear();
            }
            _ => {
                self.note(|| "loss burst".to_string());
                self.network.loss = 0.3;
                let calm_after = self.rng.random_range(100..=1_000);
                self.schedule(calm_after, Event::CalmNetwork);
            }
        }
    }

    /// OmniPaxos' quorum-loss shape: only `hub` keeps its links to everyone; every other link is
    /// cut, so the leader can reach only the hub and nobody else reaches a majority.
    pub fn quorum_loss(&mut self, leader: NodeId, hub: NodeId) {
        self.note(|| format!("quorum loss: leader {leader}, hub {hub}"));
        self.cuts.clear();
        for x in 1..=self.options.nodes {
            for y in 1..=self.options.nodes {
                if x != y && x != hub && y != hub {
                    self.cut(x, y);
                }
            }
        }
    }

    /// OmniPaxos' constrained-election shape: the leader is cut off entirely, and the remaining
    /// nodes keep links only to `hub`, so the hub is the one node that can gather a majority,
    /// whatever its log looks like.
    pub fn constrained_election(&mut self, leader: NodeId, hub: NodeId) {
        self.note(|| format!("constrained election: leader {leader}, hub {hub}"));
        self.cuts.clear();
        for x in 1..=self.options.nodes {
            for y in 1..=self.options.nodes {
                let isolated = x == leader || y == leader;
                let spoke = x != hub && y != hub;
                if x != y && (isolated || spoke) {
                    self.cut(x, y);
                }
            }
        }
    }

    /// OmniPaxos' chained shape: nodes in a line, the leader at one end, each linked only to its
    /// neighbours.
    pub fn chain(&mut self, leader: NodeId) {
        let nodes = self.options.nodes;
        let order: Vec<NodeId> = (0..nodes)
            .map(|offset| (leader - 1 + offset) % nodes + 1)
            .collect();
        self.note(|| format!("chain {order:?}"));
        self.cuts.clear();
        for (i, x) in order.iter().enumerate() {
            for (j, y) in order.iter().enumerate() {
                if i != j && i.abs_diff(j) > 1 {
                    self.cut(*x, *y);
                }
            }
        }
    }
}

/// How long the cluster has to converge once faults stop.
pub const LIVENESS_BOUND_MS: Millis = 20_000;

fn summarize(ready: &Ready) -> String {
    let mut parts = Vec::new();
    for write in &ready.writes {
        parts.push(match write {
            Write::Promise(ballot) => format!("write promise {ballot}"),
            Write::Accept {
                slot,
                ballot,
                batch,
            } => {
                format!(
                    "write accept {slot}@{ballot} ({} transfers)",
                    batch.transfers.len()
                )
            }
            Write::AppendBlock(block) => {
                format!(
                    "append block {} ({} entries)",
                    block.height,
                    block.entries.len()
                )
            }
            Write::AddPending(transfer) => format!("pending + {}", transfer.id),
            Write::RemovePending(id) => format!("pending - {id}"),
        });
    }
    for outgoing in ready.all_messages() {
        let detail = match &outgoing.message {
            Message::Heartbeat(_) | Message::HeartbeatReply(_) => continue,
            Message::Prepare(prepare) => format!("prepare {}", prepare.ballot),
            Message::Promise(promise) => format!(
                "promise {} ({} accepted)",
                promise.ballot,
                promise.accepted.len()
            ),
            Message::Accept(accept) => format!("accept {}@{}", accept.slot, accept.ballot),
            Message::Accepted(accepted) => {
                format!("accepted {}@{}", accepted.slot, accepted.ballot)
            }
            Message::Decide(decide) => format!("decide {}@{}", decide.slot, decide.ballot),
            Message::Nack(nack) => format!("nack {} (promised {})", nack.ballot, nack.promised),
            Message::Forward(forward) => format!("forward {}", forward.transfers.len()),
        };
        parts.push(format!("-> {} {detail}", outgoing.to));
    }
    for fetch in &ready.fetches {
        parts.push(format!("fetch from {} at {}", fetch.peer, fetch.from));
    }
    for event in &ready.events {
        parts.push(format!("{event:?}"));
    }
    parts.join("; ")
}
