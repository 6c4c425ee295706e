//! A whole cluster on a simulated network, disk and clock. Each node is the node's own host loop
//! ([`benmo_node::host::Host`]) around the real consensus core, exactly the code `benmo-node`
//! runs; the simulator only replaces the world around it (see [`crate::environment`]).
//!
//! Every choice (delays, losses, faults, disk latency, client behaviour, election jitter) is drawn
//! from one seeded generator, so a run is a pure function of its seed and options: any failure
//! replays exactly. Events sit in one queue ordered by simulated time and insertion; processing one
//! event is one step, and the checkers run after every step.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use benmo_node::host::{Durability, Host};
use benmo_paxos::{
    restore, Block, Config, Height, MemoryStorage, Message, NodeId, PlantedBug, PlantedBugs,
    ProposeError, Storage, Transfer, TransferId, Write,
};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checkers::{
    check_node_total, Acknowledgements, Agreement, ChosenValues, HashLinks, LedgerModel,
    PendingClaims, Promises, Violation,
};
use crate::environment::{SimEnvironment, SimWaiter};

/// Simulated milliseconds.
pub type Millis = u64;

/// The heartbeat interval: one core tick.
pub const TICK_MS: Millis = 50;
/// The longest an ordinary simulated fsync takes.
const DISK_SYNC_MS_MAX: Millis = 2;
/// The most blocks a node serves for one catch-up fetch.
pub const CATCH_UP_BLOCKS_MAX: usize = 64;
/// A client that hears nothing for this long asks again, at another node (healing mode only: in
/// the lasting mode a client waits on its node, since that node must answer).
const CLIENT_TIMEOUT_MS: Millis = 1_500;
/// How long the cluster has to converge once faults stop.
pub const LIVENESS_BOUND_MS: Millis = 20_000;
/// In the lasting mode, how long a node of the connected majority (or connected to it) may take to
/// answer a transfer, from its submission or from the moment the lasting faults began, whichever
/// is later: this many of the longest election timeouts.
pub const LASTING_BOUND_ELECTION_TIMEOUTS: u64 = 8;
/// In the lasting mode, how many times leadership may change once the cluster commits again.
pub const LASTING_LEADER_CHANGES_MAX: u32 = 2;
/// How long clients keep submitting once the lasting faults are in place.
const LASTING_LOAD_MS: Millis = 6_000;

/// Which liveness promise a run checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Faults, then everything heals and restarts: every transfer is decided and all chains
    /// converge.
    Healing,
    /// Faults, then a lasting set of faults that still leaves a connected majority (a minority
    /// crashed for good, links cut for good outside it, one-way cuts, slow disks): every transfer
    /// sent to a node that can talk to that majority is answered within a bound, and leadership
    /// stays put. Then everything heals, as in [`Mode::Healing`].
    Lasting,
}

impl Mode {
    /// The mode's name, as the simulator's `--mode` flag takes it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Healing => "healing",
            Mode::Lasting => "lasting",
        }
    }
}

/// What a run is made of.
#[derive(Clone, Debug)]
pub struct Options {
    /// The seed every choice derives from.
    pub seed: u64,
    /// The cluster size.
    pub nodes: u32,
    /// Bugs planted in the core or the host (tests only).
    pub planted_bugs: PlantedBugs,
    /// Print every step.
    pub trace: bool,
    /// Draw the nodes' batching, pipelining and queue limits from the seed instead of using the
    /// defaults, so runs also cover one-transfer blocks, a single slot in flight and full queues.
    pub vary_config: bool,
    /// Which liveness promise to check.
    pub mode: Mode,
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

/// How a node's disk behaves: an ordinary fsync takes up to 2 ms; a spike takes far longer.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskProfile {
    /// Probability an fsync is a spike.
    pub spike_probability: f64,
    /// The shortest spike, in ms.
    pub spike_ms_min: Millis,
    /// The longest spike, in ms.
    pub spike_ms_max: Millis,
}

impl DiskProfile {
    /// A disk without spikes.
    pub fn healthy() -> DiskProfile {
        DiskProfile {
            spike_probability: 0.0,
            spike_ms_min: 0,
            spike_ms_max: 0,
        }
    }

    /// A disk under load: fsyncs of 10 to 200 ms, often.
    pub fn slow() -> DiskProfile {
        DiskProfile {
            spike_probability: 0.5,
            spike_ms_min: 10,
            spike_ms_max: 200,
        }
    }
}

/// What travels the simulated network between nodes.
#[derive(Clone, Debug)]
pub(crate) enum Packet {
    /// The messages one batch of a node produced for one peer.
    Frame(Vec<Message>),
    FetchRequest {
        from: Height,
    },
    FetchResponse {
        blocks: Vec<Block>,
    },
}

/// Something scheduled to happen.
#[derive(Clone, Debug)]
pub(crate) enum Event {
    /// A node's heartbeat interval passed (for the given incarnation of the node).
    Tick(NodeId, u64),
    Deliver {
        from: NodeId,
        to: NodeId,
        packet: Packet,
    },
    /// `to` sees its connection with `peer` close (`peer` crashed).
    Disconnected {
        peer: NodeId,
        to: NodeId,
    },
    /// A node's write completes (for the given incarnation of the node).
    WriteDone(NodeId, u64),
    ClientNext(usize),
    ClientRequest {
        client: usize,
        node: NodeId,
        transfer: Transfer,
    },
    ClientReply {
        client: usize,
        node: NodeId,
        transfer: Transfer,
        result: Result<benmo_paxos::Committed, ProposeError>,
    },
    ClientRetry {
        client: usize,
        attempt: u32,
    },
    Fault,
    Restart(NodeId),
    Heal {
        from: NodeId,
        to: NodeId,
    },
    HealAll,
    CalmNetwork,
    EndFaults,
    /// The lasting faults begin.
    Lasting,
    /// One more lasting fault, a little after the others (see [`World::impose_late_fault`]):
    /// to the node given, or to the node outside the majority with the longest chain.
    LateFault(Option<NodeId>),
    /// Clients stop submitting in the lasting phase.
    LastingLoadEnds,
}

pub(crate) struct SimNode {
    pub(crate) config: Config,
    pub(crate) host: Option<Host<SimWaiter>>,
    /// What has reached the disk: all a crash leaves.
    pub(crate) disk: MemoryStorage,
    /// The batch being written, and how; lost if the node crashes first.
    pub(crate) writing: Option<(Vec<Write>, Durability)>,
    /// Lazy batches written but not yet synced, oldest first: the next synced batch takes them to
    /// the disk; a crash before then keeps them (the process died, the system's cache lived) or
    /// loses them (the machine lost power), at random.
    pub(crate) unsynced: Vec<Vec<Write>>,
    /// Blocks the core decided that may not be on the disk yet, by height, as the node's
    /// `DecidedBlocks` shows them to its chain readers: a fetch sees them whether their write has
    /// started or not (a decided block may wait up to a tick for a write to join). A crash loses
    /// them.
    pub(crate) decided: BTreeMap<Height, Block>,
    /// Bumped on every restart so ticks and writes of an earlier life are ignored.
    pub(crate) incarnation: u64,
    pub(crate) disk_profile: DiskProfile,
    /// The next write fails: the node stops rather than answer.
    fail_next_write: bool,
    /// The node's data was wiped while it was down: it refuses to start.
    wiped: bool,
    /// Crashed for good in the lasting phase.
    down_for_good: bool,
}

/// What a client is waiting for.
#[derive(Clone, Debug)]
pub(crate) struct Outstanding {
    pub(crate) transfer: Transfer,
    /// A transfer that can never apply: the answer must be a refusal.
    malformed: bool,
    attempt: u32,
    /// In the lasting mode: when the node it waits on must have answered.
    deadline: Option<Millis>,
    /// In the lasting mode: when the current wait began.
    waiting_since: Millis,
}

#[derive(Debug, Default)]
pub(crate) struct SimClient {
    pub(crate) outstanding: Option<Outstanding>,
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
    /// Faults injected (crashes, cuts, partitions, loss bursts, disk faults).
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
    /// Lasting mode: ms from the start of the lasting faults to the first commit after it.
    pub lasting_recovery_ms: Millis,
    /// Lasting mode: the longest a required node took to answer a transfer.
    pub lasting_answer_ms_max: Millis,
    /// Lasting mode: leader changes after the cluster committed again.
    pub lasting_leader_changes: u32,
}

/// The lasting phase: which nodes must answer, and since when.
#[derive(Debug)]
struct Lasting {
    started_at: Millis,
    bound_ms: Millis,
    /// The connected majority and every live node with a two-way link to it.
    required: BTreeSet<NodeId>,
    /// The connected majority.
    majority: BTreeSet<NodeId>,
    /// The height when the lasting faults began; a commit above it is the first after them.
    height_at_start: Height,
    committed_again: bool,
    /// Whether the late fault has struck.
    late_fault_done: bool,
}

/// The simulated cluster.
pub struct World {
    /// A violation found where it cannot be returned (in a crash), reported after the event.
    late_violation: Option<Violation>,
    pub(crate) options: Options,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) time: Millis,
    queue: BTreeMap<(Millis, u64), Event>,
    sequence: u64,
    pub(crate) nodes: Vec<SimNode>,
    /// Directed links that drop everything: (from, to).
    cuts: BTreeSet<(NodeId, NodeId)>,
    network: NetworkFaults,
    base_network: NetworkFaults,
    pub(crate) clients: Vec<SimClient>,
    /// Every transfer clients submitted, by id (several when clients reuse an id).
    pub(crate) submitted: HashMap<TransferId, Vec<Transfer>>,
    /// The ids of `submitted` in the order they were first used, to pick one to reuse.
    submitted_ids: Vec<TransferId>,
    /// Whether clients start new transfers (they stop when faults stop, and finish what they began).
    load: bool,
    faults_on: bool,
    faults_end_ms: Millis,
    lasting: Option<Lasting>,
    /// See [`World::arm_fetch_nemesis`].
    fetch_nemesis: Option<NodeId>,
    /// The nodes running Phase 1, as their events tell (a node's host is out of reach while it
    /// steps).
    running: BTreeSet<NodeId>,

    pub(crate) agreement: Agreement,
    pub(crate) links: HashLinks,
    pub(crate) model: LedgerModel,
    pub(crate) promises: Promises,
    pub(crate) acknowledgements: Acknowledgements,
    pub(crate) chosen: ChosenValues,
    pub(crate) claims: PendingClaims,

    pub(crate) stats: Stats,
    trace: Vec<String>,
}

impl World {
    /// A fresh cluster: every node at the genesis block, nothing scheduled yet.
    pub fn new(options: Options) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let genesis = Block::genesis(options.nodes, 100);
        let mut template = Config::new(1, options.nodes);
        if options.vary_config {
            // The lasting mode holds nodes to a deadline under sustained load: it needs blocks
            // that can carry the load (one-transfer blocks behind 200 ms fsyncs cannot).
            let batches: &[usize] = match options.mode {
                Mode::Healing => &[1, 2, 4, 64, 1_024],
                Mode::Lasting => &[64, 1_024],
            };
            template.batch_transfers_max = batches[rng.random_range(0..batches.len())];
            template.in_flight_slots_max = [1, 2, 8, 16][rng.random_range(0..4)];
            // Tiny queues turn clients away on purpose; the lasting mode's deadline assumes a
            // cluster that is not overloaded.
            if rng.random_bool(0.2) && options.mode == Mode::Healing {
                template.pending_transfers_max = rng.random_range(1..=4);
                template.queue_transfers_max = rng.random_range(1..=8);
            }
        }
        let mut nodes = Vec::new();
        for id in 1..=options.nodes {
            let mut config = template.clone();
            config.id = id;
            config.planted_bugs = options.planted_bugs;
            nodes.push(SimNode {
                config,
                host: None,
                disk: fresh_disk(&genesis),
                writing: None,
                unsynced: Vec::new(),
                decided: BTreeMap::new(),
                incarnation: 0,
                disk_profile: DiskProfile::healthy(),
                fail_next_write: false,
                wiped: false,
                down_for_good: false,
            });
        }
        let base_network = NetworkFaults::calm();
        let mut world = World {
            late_violation: None,
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
            submitted_ids: Vec::new(),
            load: false,
            faults_on: false,
            faults_end_ms: 0,
            lasting: None,
            fetch_nemesis: None,
            running: BTreeSet::new(),
            agreement: Agreement::default(),
            links: HashLinks::new(options.nodes, &genesis),
            model: LedgerModel::new(options.nodes, 100),
            promises: Promises::new(options.nodes),
            acknowledgements: Acknowledgements::default(),
            chosen: ChosenValues::new(options.nodes),
            claims: PendingClaims::new(options.nodes),
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
    pub fn replica(&self, id: NodeId) -> Option<&benmo_paxos::Replica> {
        self.nodes[id as usize - 1].host.as_ref().map(Host::replica)
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

    /// Sets how node `id`'s disk behaves.
    pub fn set_disk(&mut self, id: NodeId, profile: DiskProfile) {
        self.nodes[id as usize - 1].disk_profile = profile;
    }

    /// Cuts the link from `from` to `to` (one direction).
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.cuts.insert((from, to));
    }

    /// Restores the link from `from` to `to` (one direction).
    pub fn heal(&mut self, from: NodeId, to: NodeId) {
        self.cuts.remove(&(from, to));
    }

    /// Crashes node `id`; it is not restarted until the run heals everything at its end.
    pub fn crash_for_good(&mut self, id: NodeId) {
        self.crash(id);
        self.nodes[id as usize - 1].down_for_good = true;
    }

    /// Arms a nemesis around node `node`: its requests for blocks are lost until it runs for
    /// leader, and then the first peer it asks is cut off from everyone before the request
    /// arrives (finding 1 of the liveness issue, built on purpose).
    pub fn arm_fetch_nemesis(&mut self, node: NodeId) {
        self.fetch_nemesis = Some(node);
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

    fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cuts.contains(&(from, to))
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
        self.record_submission(&transfer);
        self.clients[client].outstanding = Some(Outstanding {
            transfer,
            malformed: false,
            attempt: 0,
            deadline: None,
            waiting_since: self.time,
        });
        self.send_client_request_to(client, node);
        id
    }

    /// Submits one transfer from a new client to node `node`, which the client waits on for good
    /// (it never asks elsewhere); returns the client, for [`World::is_answered`].
    pub fn submit_and_wait(&mut self, node: NodeId, transfer: Transfer) -> usize {
        self.clients.push(SimClient::default());
        let client = self.clients.len() - 1;
        self.record_submission(&transfer);
        self.clients[client].outstanding = Some(Outstanding {
            transfer: transfer.clone(),
            malformed: false,
            attempt: 1,
            deadline: Some(Millis::MAX),
            waiting_since: self.time,
        });
        let delay = self.rng.random_range(1..=3);
        self.schedule(
            delay,
            Event::ClientRequest {
                client,
                node,
                transfer,
            },
        );
        client
    }

    /// Whether `client` has its answer.
    pub fn is_answered(&self, client: usize) -> bool {
        self.clients[client].outstanding.is_none()
    }

    /// Restarts node `id` now, from its disk.
    pub fn restart_now(&mut self, id: NodeId) -> Result<(), Violation> {
        self.restart(id)
    }

    fn record_submission(&mut self, transfer: &Transfer) {
        let variants = self.submitted.entry(transfer.id.clone()).or_default();
        if variants.is_empty() {
            self.stats.submitted += 1;
            self.submitted_ids.push(transfer.id.clone());
        }
        if !variants.contains(transfer) {
            variants.push(transfer.clone());
        }
    }

    /// Whether the transfer with `id` is in the chain.
    pub fn is_decided(&self, id: &TransferId) -> bool {
        (1..=self.options.nodes)
            .filter_map(|node| self.replica(node))
            .any(|replica| replica.ledger().lookup(id).is_some())
    }

    /// Runs a whole randomized scenario: faults, then (in the lasting mode) lasting faults, then
    /// calm, then the liveness check.
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
        match self.options.mode {
            Mode::Healing => {
                self.schedule(fault_phase_ms, Event::EndFaults);
                self.run_until(fault_phase_ms)?;
            }
            Mode::Lasting => {
                self.schedule(fault_phase_ms, Event::Lasting);
                let end = fault_phase_ms + LASTING_LOAD_MS;
                self.schedule(LASTING_LOAD_MS + fault_phase_ms, Event::LastingLoadEnds);
                self.run_until(end)?;
                self.finish_lasting()?;
            }
        }
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
        if let Some(violation) = self.late_violation.take() {
            return Err(violation);
        }
        self.check_lasting()?;
        Ok(true)
    }

    /// After faults stop: every client's transfer is answered and every node that can start holds
    /// the same chain, within `bound` simulated ms.
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

    /// Every node that can start is up, at the same head, with nothing pending, and every client
    /// is answered. A node whose data was wiped refuses to start and is not waited for.
    pub fn converged(&self) -> bool {
        let clients_done = self
            .clients
            .iter()
            .all(|client| client.outstanding.is_none());
        if !clients_done {
            return false;
        }
        let mut heads = self.nodes.iter().filter(|node| !node.wiped).map(|node| {
            node.host.as_ref().map(|host| {
                let replica = host.replica();
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
            match &node.host {
                None if node.wiped => {
                    let _ = write!(text, "[node {} wiped, refuses to start] ", node.config.id);
                }
                None => {
                    let _ = write!(text, "[node {} down] ", node.config.id);
                }
                Some(host) => {
                    let status = host.replica().status();
                    let _ = write!(
                        text,
                        "[node {} {:?} leader {:?} ballot {} promised {} qc {} height {} pending {} waiting {}] ",
                        status.id,
                        status.role,
                        status.leader.map(|ballot| ballot.to_string()),
                        status.ballot,
                        status.promised,
                        status.quorum_connected,
                        status.height,
                        status.pending,
                        host.waiting(),
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
        if let Some(lasting) = &self.lasting {
            let _ = write!(
                text,
                ", lasting since {} ms: majority {:?}, required {:?}",
                lasting.started_at, lasting.majority, lasting.required
            );
        }
        text
    }

    /// The last steps, when tracing.
    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    pub(crate) fn schedule(&mut self, delay: Millis, event: Event) {
        self.sequence += 1;
        self.queue.insert((self.time + delay, self.sequence), event);
    }

    pub(crate) fn note(&mut self, text: impl FnOnce() -> String) {
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
            Event::Disconnected { peer, to } => {
                if self.is_cut(peer, to) {
                    return Ok(());
                }
                self.with_host(to, |host, environment| host.disconnected(peer, environment))
            }
            Event::WriteDone(id, incarnation) => self.write_done(id, incarnation),
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
                node,
                transfer,
                result,
            } => self.client_reply(client, node, transfer, result),
            Event::ClientRetry { client, attempt } => {
                let current = self.clients[client].outstanding.as_ref().map(|o| o.attempt);
                if current == Some(attempt) {
                    self.send_client_request(client);
                }
                Ok(())
            }
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
            Event::Lasting => self.impose_lasting_faults(),
            Event::LateFault(victim) => {
                self.impose_late_fault(victim);
                Ok(())
            }
            Event::LastingLoadEnds => {
                self.load = false;
                Ok(())
            }
        }
    }

    /// Runs `body` on node `id`'s host (if the node is up) with the simulated environment, ends
    /// the batch as the node does (sending what may leave, starting the next write if it may),
    /// and checks the invariants.
    pub(crate) fn with_host(
        &mut self,
        id: NodeId,
        body: impl FnOnce(&mut Host<SimWaiter>, &mut SimEnvironment<'_>),
    ) -> Result<(), Violation> {
        let Some(mut host) = self.nodes[id as usize - 1].host.take() else {
            return Ok(());
        };
        let violation = {
            let mut environment = SimEnvironment::new(self, id);
            body(&mut host, &mut environment);
            host.flush(&mut environment);
            environment.into_violation()
        };
        let replica = host.replica();
        let checked = violation
            .map_or(Ok(()), Err)
            .and_then(|()| self.promises.check(id, replica))
            .and_then(|()| check_node_total(id, replica, self.model.total()));
        self.nodes[id as usize - 1].host = Some(host);
        checked
    }

    fn end_faults(&mut self) {
        self.note(|| "faults stop: heal all, restart all, calm network, healthy disks".to_string());
        self.faults_on = false;
        self.load = false;
        self.lasting = None;
        self.fetch_nemesis = None;
        self.cuts.clear();
        self.set_network(NetworkFaults::calm());
        for id in 1..=self.options.nodes {
            let node = &mut self.nodes[id as usize - 1];
            node.disk_profile = DiskProfile::healthy();
            node.fail_next_write = false;
            node.down_for_good = false;
            if node.host.is_none() {
                self.schedule(0, Event::Restart(id));
            }
        }
    }

    /// Starts node `id` from what its disk holds. A disk that holds nothing (it was wiped) makes
    /// the node refuse to start: it would otherwise make promises and votes with no memory of the
    /// ones it made before, which breaks Paxos. (The `StartOnWipedDisk` planted bug starts it
    /// anyway, as a new node would.)
    fn start_node(&mut self, id: NodeId) -> Result<(), Violation> {
        let seed = self.rng.next_u64();
        let node = &mut self.nodes[id as usize - 1];
        if node.wiped {
            if !node.config.planted_bugs.has(PlantedBug::StartOnWipedDisk) {
                return Ok(());
            }
            node.disk = fresh_disk(&Block::genesis(node.config.nodes, 100));
            node.wiped = false;
        }
        let restored = restore(&node.disk, node.config.nodes, node.config.genesis_balance)
            .map_err(|error| Violation {
                checker: "restart",
                detail: format!("node {id} cannot restore from its disk: {error}"),
            })?;
        let replica =
            benmo_paxos::Replica::new(node.config.clone(), restored, seed).expect("valid config");
        let (height, hash) = (replica.ledger().height(), replica.ledger().head_hash());
        node.host = Some(Host::new(replica));
        node.incarnation += 1;
        node.writing = None;
        let chosen = self.agreement.block(height).map(|block| block.hash);
        self.links.restart(id, height, hash, chosen)?;
        let replica = self.nodes[id as usize - 1]
            .host
            .as_ref()
            .expect("just started")
            .replica();
        self.promises.check(id, replica)?;
        self.claims.restart(id, replica)?;
        let incarnation = self.nodes[id as usize - 1].incarnation;
        let phase = self.rng.random_range(1..=TICK_MS);
        self.schedule(phase, Event::Tick(id, incarnation));
        Ok(())
    }

    pub(crate) fn crash(&mut self, id: NodeId) {
        let node = &mut self.nodes[id as usize - 1];
        let Some(host) = node.host.take() else {
            return;
        };
        // Whatever had not reached the disk is gone, and so is what waited for it.
        node.writing = None;
        node.decided.clear();
        let unsynced = std::mem::take(&mut node.unsynced);
        if !unsynced.is_empty() {
            if self.rng.random_bool(0.5) {
                self.note(|| format!("node {id}: its unsynced writes survive the crash"));
                for writes in unsynced {
                    if let Err(violation) = self.reach_disk(id, &writes) {
                        self.late_violation.get_or_insert(violation);
                    }
                }
            } else {
                self.note(|| format!("node {id}: its unsynced writes are lost"));
            }
        }
        self.running.remove(&id);
        self.stats.crashes += 1;
        self.note(|| format!("node {id} crashes"));
        // The peers' connections with it close; the clients' calls break and they ask again.
        for peer in 1..=self.options.nodes {
            if peer != id {
                let delay = self.rng.random_range(1..=5);
                self.schedule(delay, Event::Disconnected { peer: id, to: peer });
            }
        }
        for waiter in host.into_waiters() {
            if let Some(outstanding) = &self.clients[waiter.client].outstanding {
                let attempt = outstanding.attempt;
                let delay = self.rng.random_range(5..50);
                self.schedule(
                    delay,
                    Event::ClientRetry {
                        client: waiter.client,
                        attempt,
                    },
                );
            }
        }
    }

    fn restart(&mut self, id: NodeId) -> Result<(), Violation> {
        let node = &self.nodes[id as usize - 1];
        if node.host.is_some() || node.down_for_good {
            return Ok(());
        }
        self.note(|| format!("node {id} restarts"));
        self.start_node(id)
    }

    fn tick(&mut self, id: NodeId, incarnation: u64) -> Result<(), Violation> {
        let node = &self.nodes[id as usize - 1];
        if node.host.is_none() || node.incarnation != incarnation {
            // A node that is down does not tick; its restart starts a new series of ticks.
            return Ok(());
        }
        self.schedule(TICK_MS, Event::Tick(id, incarnation));
        self.with_host(id, |host, environment| host.tick(environment))
    }

    /// `writes` reach node `id`'s disk: they survive any crash from now on.
    fn reach_disk(&mut self, id: NodeId, writes: &[Write]) -> Result<(), Violation> {
        self.nodes[id as usize - 1]
            .disk
            .write(writes)
            .map_err(|error| Violation {
                checker: "storage",
                detail: format!("node {id} wrote a batch its disk refuses: {error}"),
            })?;
        self.chosen.observe_durable(id, writes)
    }

    /// Starts writing `writes` on node `id`: a synced batch reaches the disk after the disk's
    /// latency; a lazy one is written at once and reaches the disk with the next synced batch.
    pub(crate) fn start_write(&mut self, id: NodeId, writes: Vec<Write>, durability: Durability) {
        let node = &mut self.nodes[id as usize - 1];
        assert!(
            node.writing.is_none(),
            "the host starts one write at a time"
        );
        node.writing = Some((writes, durability));
        let incarnation = node.incarnation;
        if durability == Durability::Lazy {
            let latency = self.rng.random_range(0..=1);
            self.schedule(latency, Event::WriteDone(id, incarnation));
            return;
        }
        let profile = node.disk_profile.clone();
        let mut latency = self.rng.random_range(0..=DISK_SYNC_MS_MAX);
        if self.rng.random_bool(profile.spike_probability) {
            latency = self
                .rng
                .random_range(profile.spike_ms_min..=profile.spike_ms_max);
        }
        self.schedule(latency, Event::WriteDone(id, incarnation));
    }

    /// A write completes: it is on the disk, atomically, and what waited for it is released. A
    /// write that fails stops the node before it releases anything.
    fn write_done(&mut self, id: NodeId, incarnation: u64) -> Result<(), Violation> {
        let node = &mut self.nodes[id as usize - 1];
        if node.host.is_none() || node.incarnation != incarnation {
            return Ok(());
        }
        if std::mem::take(&mut node.fail_next_write) {
            self.note(|| format!("node {id}: the disk fails a write; the node stops"));
            self.crash(id);
            let down_for = self.rng.random_range(100..=2_000);
            self.schedule(down_for, Event::Restart(id));
            return Ok(());
        }
        let node = &mut self.nodes[id as usize - 1];
        let (writes, durability) = node.writing.take().expect("a write is running");
        if durability == Durability::Lazy {
            node.unsynced.push(writes);
            return self.with_host(id, |host, environment| host.write_done(environment));
        }
        // A sync takes every lazy batch before it to the disk too, in order.
        let mut batches = std::mem::take(&mut node.unsynced);
        batches.push(writes);
        let mut archived = None;
        for writes in batches {
            self.reach_disk(id, &writes)?;
            // The memory disk's archive sees a block as soon as it is on the disk.
            archived = writes
                .iter()
                .rev()
                .find_map(|write| match write {
                    Write::AppendBlock(block) => Some(block.height),
                    _ => None,
                })
                .or(archived);
        }
        if let Some(height) = archived {
            let node = &mut self.nodes[id as usize - 1];
            node.decided = node.decided.split_off(&(height + 1));
        }
        self.with_host(id, |host, environment| {
            host.write_done(environment);
            if let Some(height) = archived {
                host.archived(height);
            }
        })
    }

    pub(crate) fn send(&mut self, from: NodeId, to: NodeId, packet: Packet) {
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
        if self.is_cut(from, to) || self.nodes[to as usize - 1].host.is_none() {
            return Ok(());
        }
        match packet {
            Packet::Frame(messages) => self.with_host(to, |host, environment| {
                host.receive(from, messages, environment)
            }),
            Packet::FetchRequest { from: height } => {
                // As a node's chain reader does: the disk, then the blocks decided since (their
                // writes may not have started: decided blocks are written lazily).
                let node = &self.nodes[to as usize - 1];
                let mut blocks = node
                    .disk
                    .blocks(height, CATCH_UP_BLOCKS_MAX)
                    .expect("the memory disk reads");
                for block in node.decided.range(height..).map(|(_, block)| block) {
                    let next = blocks.last().map_or(height, |last| last.height + 1);
                    if block.height == next && blocks.len() < CATCH_UP_BLOCKS_MAX {
                        blocks.push(block.clone());
                    }
                }
                self.send(to, from, Packet::FetchResponse { blocks });
                Ok(())
            }
            Packet::FetchResponse { blocks } => self.with_host(to, |host, environment| {
                host.blocks(from, blocks, environment)
            }),
        }
    }

    /// A node answers a client: the reply reaches it shortly.
    pub(crate) fn answer(
        &mut self,
        node: NodeId,
        waiter: SimWaiter,
        result: Result<benmo_paxos::Committed, ProposeError>,
    ) {
        let delay = self.rng.random_range(1..=3);
        self.schedule(
            delay,
            Event::ClientReply {
                client: waiter.client,
                node,
                transfer: waiter.transfer,
                result,
            },
        );
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
        self.record_submission(&transfer);
        self.clients[client].outstanding = Some(Outstanding {
            transfer,
            malformed,
            attempt: 0,
            deadline: None,
            waiting_since: self.time,
        });
        self.send_client_request(client);
    }

    /// A new transfer: usually well formed; sometimes malformed (it must be refused); sometimes
    /// reusing an id some client already used, for a different transfer (it must be refused, or
    /// be the one the id names).
    fn new_transfer(&mut self, client: usize) -> (Transfer, bool) {
        let nodes = self.options.nodes;
        let sequence = {
            let state = &mut self.clients[client];
            state.sequence += 1;
            state.sequence
        };
        let mut id = TransferId::new(format!("c{client}-{sequence}")).expect("valid id");
        if self.rng.random_bool(0.03) && !self.submitted_ids.is_empty() {
            let pick = self.rng.random_range(0..self.submitted_ids.len());
            id = self.submitted_ids[pick].clone();
        }
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
            signature: None,
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

    /// Sends the client's outstanding transfer to a random node (in the lasting phase, to a node
    /// that must answer).
    fn send_client_request(&mut self, client: usize) {
        let node = match &self.lasting {
            Some(lasting) => {
                let required: Vec<NodeId> = lasting.required.iter().copied().collect();
                required[self.rng.random_range(0..required.len())]
            }
            None => self.rng.random_range(1..=self.options.nodes),
        };
        self.send_client_request_to(client, node);
    }

    /// Sends the client's outstanding transfer to `node`, and arms its retry timer (outside the
    /// lasting phase: there, the node must answer, so the client waits on it).
    fn send_client_request_to(&mut self, client: usize, node: NodeId) {
        let time = self.time;
        let deadline = self
            .lasting
            .as_ref()
            .map(|lasting| time.max(lasting.started_at) + lasting.bound_ms);
        let Some(outstanding) = self.clients[client].outstanding.as_mut() else {
            return;
        };
        outstanding.attempt += 1;
        outstanding.waiting_since = time;
        outstanding.deadline = deadline;
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
        if deadline.is_none() {
            self.schedule(CLIENT_TIMEOUT_MS, Event::ClientRetry { client, attempt });
        }
    }

    fn client_request(
        &mut self,
        client: usize,
        node: NodeId,
        transfer: Transfer,
    ) -> Result<(), Violation> {
        let attempt = match &self.clients[client].outstanding {
            Some(outstanding) if outstanding.transfer == transfer => outstanding.attempt,
            _ => return Ok(()),
        };
        if self.nodes[node as usize - 1].host.is_none() {
            // Connection refused: try elsewhere shortly.
            let delay = self.rng.random_range(5..50);
            self.schedule(delay, Event::ClientRetry { client, attempt });
            return Ok(());
        }
        let waiter = SimWaiter {
            client,
            transfer: transfer.clone(),
        };
        self.with_host(node, |host, environment| {
            host.propose(transfer, waiter, environment)
        })
    }

    fn client_reply(
        &mut self,
        client: usize,
        node: NodeId,
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
        if outstanding.transfer != transfer {
            return Ok(());
        }
        let reused_id = self
            .submitted
            .get(&transfer.id)
            .is_some_and(|variants| variants.len() > 1);
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
            Err(ProposeError::IdConflict { .. }) if reused_id => {}
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
        if outstanding.deadline.is_some() {
            let waited = self.time - outstanding.waiting_since.max(self.lasting_start());
            self.stats.lasting_answer_ms_max = self.stats.lasting_answer_ms_max.max(waited);
            self.note(|| format!("client {client} answered by node {node} after {waited} ms"));
        }
        self.clients[client].outstanding = None;
        let think = self.rng.random_range(0..=30);
        self.schedule(think, Event::ClientNext(client));
        Ok(())
    }

    fn lasting_start(&self) -> Millis {
        self.lasting
            .as_ref()
            .map_or(0, |lasting| lasting.started_at)
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
            0..=22 => {
                // Crash the leader half of the time: that is where the protocol is most exposed.
                let victim = match self.leader() {
                    Some(leader) if self.rng.random_bool(0.5) => leader,
                    _ => a,
                };
                self.crash(victim);
                let down_for = self.rng.random_range(20..=2_500);
                self.schedule(down_for, Event::Restart(victim));
            }
            23..=24 => self.wipe(a),
            25..=43 => {
                self.note(|| format!("sever {a} <-> {b}"));
                self.sever(a, b);
                self.schedule(heal_after, Event::Heal { from: a, to: b });
                self.schedule(heal_after, Event::Heal { from: b, to: a });
            }
            44..=53 => {
                self.note(|| format!("cut {a} -> {b}"));
                self.cut(a, b);
                self.schedule(heal_after, Event::Heal { from: a, to: b });
            }
            54..=63 => {
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
            64..=77 => {
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
            78..=86 => {
                self.note(|| "heal all".to_string());
                self.cuts.clear();
            }
            87..=89 => {
                self.note(|| format!("node {a}'s disk fails its next write"));
                self.nodes[a as usize - 1].fail_next_write = true;
            }
            90..=92 => {
                self.note(|| format!("node {a}'s disk slows down"));
                self.set_disk(a, DiskProfile::slow());
            }
            _ => {
                self.note(|| "loss burst".to_string());
                self.network.loss = 0.3;
                let calm_after = self.rng.random_range(100..=1_000);
                self.schedule(calm_after, Event::CalmNetwork);
            }
        }
    }

    /// Crashes `id` and empties its disk, unless that would leave no majority of nodes with their
    /// data. The node then refuses to start: its state is gone for good.
    fn wipe(&mut self, id: NodeId) {
        let wiped = self.nodes.iter().filter(|node| node.wiped).count();
        let minority = (self.options.nodes as usize - 1) / 2;
        if wiped >= minority || self.nodes[id as usize - 1].wiped {
            return;
        }
        self.note(|| format!("node {id} crashes and its data directory is emptied"));
        self.crash(id);
        let node = &mut self.nodes[id as usize - 1];
        node.disk = MemoryStorage::new();
        node.wiped = true;
        let down_for = self.rng.random_range(20..=2_500);
        self.schedule(down_for, Event::Restart(id));
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

    /// The lasting faults: random faults stop, and a fault set that stays for good takes their
    /// place. A majority of nodes stays up and fully connected; every other node is crashed for
    /// good or keeps some of its links (each direction cut or not at random, so one-way cuts
    /// arise); some disks turn slow, the majority's included. From now on clients send only to
    /// nodes that can talk to the majority, and wait there for the answer.
    fn impose_lasting_faults(&mut self) -> Result<(), Violation> {
        let nodes = self.options.nodes;
        let majority_size = nodes as usize / 2 + 1;
        self.faults_on = false;
        self.cuts.clear();
        // Heals the random faults scheduled must not undo the lasting cuts below.
        self.queue
            .retain(|_, event| !matches!(event, Event::Heal { .. } | Event::HealAll));
        self.set_network(NetworkFaults::calm());
        // Half the time the leader is lost for good, so an election runs under the lasting faults
        // (unless the nodes left, wiped ones aside, would be no majority).
        let usable = self.nodes.iter().filter(|node| !node.wiped).count();
        let lost_leader = self
            .leader()
            .filter(|_| usable > majority_size && self.rng.random_bool(0.5));
        let mut candidates: Vec<NodeId> = (1..=nodes)
            .filter(|id| !self.nodes[*id as usize - 1].wiped && Some(*id) != lost_leader)
            .collect();
        candidates.shuffle(&mut self.rng);
        if self.rng.random_bool(0.5) {
            // The majority is the nodes furthest behind: whoever leads next must catch up from
            // nodes outside it, which may go away (finding 1 of the liveness issue).
            candidates.sort_by_key(|id| {
                self.replica(*id)
                    .map_or(0, |replica| replica.ledger().height())
            });
        }
        let size = self
            .rng
            .random_range(majority_size..nodes as usize)
            .min(candidates.len());
        assert!(size >= majority_size, "wipes leave a majority of nodes");
        let majority: BTreeSet<NodeId> = candidates[..size].iter().copied().collect();
        let members: Vec<NodeId> = majority.iter().copied().collect();
        let mut restarting_later = BTreeSet::new();
        let current_leader = self.leader();
        for id in 1..=nodes {
            let node = &mut self.nodes[id as usize - 1];
            node.fail_next_write = false;
            node.disk_profile = if self.rng.random_bool(0.3) {
                DiskProfile::slow()
            } else {
                DiskProfile::healthy()
            };
            if majority.contains(&id) || node.wiped {
                continue;
            }
            if Some(id) == lost_leader && self.rng.random_bool(0.5) {
                // The leader keeps its links with one member only, so it can lead no more, but
                // that member may run for leader, take its promise, and need its blocks.
                let friend = members[self.rng.random_range(0..members.len())];
                self.note(|| format!("node {id}, the leader, talks to node {friend} only"));
                for peer in (1..=nodes).filter(|peer| *peer != id && *peer != friend) {
                    self.sever(id, peer);
                }
                continue;
            }
            if Some(id) == lost_leader {
                // Its last words reach only nodes outside the majority: they learn decisions the
                // majority never hears of, so the next leader must get those blocks from them.
                // And only the majority sees its connections close, so a member is first to run
                // for leader.
                self.note(|| format!("node {id}, the leader, crashes for good"));
                for peer in (1..=nodes).filter(|peer| !majority.contains(peer)) {
                    self.cut(id, peer);
                }
                self.crash(id);
                self.nodes[id as usize - 1].down_for_good = true;
                self.queue.retain(|_, event| {
                    !matches!(event, Event::Deliver { from, to, .. } if *from == id && majority.contains(to))
                });
                continue;
            }
            if self.rng.random_bool(0.35) {
                self.note(|| format!("node {id} crashes for good"));
                self.crash(id);
                self.nodes[id as usize - 1].down_for_good = true;
                continue;
            }
            match self.rng.random_range(0..3) {
                0 => {
                    // Each direction of each link cut or not at random: one-way cuts arise.
                    for peer in (1..=nodes).filter(|peer| *peer != id) {
                        if self.rng.random_bool(0.6) {
                            self.cut(id, peer);
                        }
                        if self.rng.random_bool(0.6) {
                            self.cut(peer, id);
                        }
                    }
                }
                1 => {
                    // It cannot send to one member but hears it, and talks to the others both
                    // ways; it restarts a little later, behind (finding 2: a follower that keeps
                    // fetching from a peer it cannot reach). The member is the leader if it is in
                    // the majority (it reports the greatest height, so catch-up picks it), else
                    // the lowest id (among equal heights, the one catch-up used to pick).
                    let deaf = current_leader
                        .filter(|leader| majority.contains(leader))
                        .unwrap_or(members[0]);
                    self.note(|| {
                        format!("node {id} cannot send to node {deaf}, and restarts behind")
                    });
                    self.cut(id, deaf);
                    self.crash(id);
                    let down_for = self.rng.random_range(300..=800);
                    self.schedule(down_for, Event::Restart(id));
                    restarting_later.insert(id);
                }
                _ => {
                    // It talks, both ways, to one member only.
                    let friend = members[self.rng.random_range(0..members.len())];
                    for peer in (1..=nodes).filter(|peer| *peer != id && *peer != friend) {
                        self.sever(id, peer);
                    }
                }
            }
        }
        // Everyone else that is down comes back now.
        for id in 1..=nodes {
            let node = &self.nodes[id as usize - 1];
            if node.host.is_none()
                && !node.down_for_good
                && !node.wiped
                && !restarting_later.contains(&id)
            {
                self.schedule(0, Event::Restart(id));
            }
        }
        let required: BTreeSet<NodeId> = (1..=nodes)
            .filter(|id| {
                let node = &self.nodes[*id as usize - 1];
                if node.down_for_good || node.wiped {
                    return false;
                }
                majority.contains(id)
                    || majority
                        .iter()
                        .any(|peer| !self.is_cut(*id, *peer) && !self.is_cut(*peer, *id))
            })
            .collect();
        let bound_ms = LASTING_BOUND_ELECTION_TIMEOUTS
            * self.nodes[0].config.election_timeout_ticks_max
            * TICK_MS;
        let cuts = format!("{:?}", self.cuts);
        self.note(|| {
            format!("lasting faults: majority {majority:?}, required {required:?}, cuts {cuts}")
        });
        self.lasting = Some(Lasting {
            started_at: self.time,
            bound_ms,
            required: required.clone(),
            majority,
            height_at_start: self.agreement.height(),
            committed_again: false,
            late_fault_done: false,
        });
        // Clients waiting on a node that need not answer ask a node that must; the others keep
        // waiting where they are, now with a deadline.
        for client in 0..self.clients.len() {
            let Some(outstanding) = &self.clients[client].outstanding else {
                continue;
            };
            let attempt = outstanding.attempt;
            self.schedule(0, Event::ClientRetry { client, attempt });
        }
        // Unless the nemesis struck during an election first (see `fetch_requested`), one more
        // node goes away a little later.
        let timeout_ms = bound_ms / LASTING_BOUND_ELECTION_TIMEOUTS;
        let late = self.rng.random_range(2 * timeout_ms..=3 * timeout_ms);
        self.schedule(late, Event::LateFault(None));
        Ok(())
    }

    /// A node asks `peer` for blocks. Under lasting faults, once: if the node is a candidate and
    /// `peer` is outside the majority, the late fault strikes `peer` before the request arrives:
    /// the candidate counted a promise whose blocks it will not get from there (finding 1 of the
    /// liveness issue). A targeted nemesis, in Jepsen's words.
    /// Returns whether the request leaves at all.
    pub(crate) fn fetch_requested(&mut self, node: NodeId, peer: NodeId) -> bool {
        let candidate = self.running.contains(&node);
        if self.fetch_nemesis == Some(node) {
            if !candidate {
                self.note(|| format!("nemesis: node {node}'s request for blocks is lost"));
                return false;
            }
            self.fetch_nemesis = None;
            self.note(|| {
                format!("nemesis: node {peer} is cut off as candidate {node} asks it for blocks")
            });
            for other in (1..=self.options.nodes).filter(|other| *other != peer) {
                self.sever(peer, other);
            }
            return true;
        }
        let Some(lasting) = &self.lasting else {
            return true;
        };
        if lasting.late_fault_done || lasting.majority.contains(&peer) {
            return true;
        }
        if candidate {
            self.schedule(0, Event::LateFault(Some(peer)));
        }
        true
    }

    /// One more lasting fault, while an election may be running: `victim` (by default the node
    /// outside the majority with the longest chain, the one a candidate is likeliest to need
    /// blocks from) crashes for good, or loses its links to the majority.
    fn impose_late_fault(&mut self, victim: Option<NodeId>) {
        let Some(lasting) = &mut self.lasting else {
            return;
        };
        if std::mem::replace(&mut lasting.late_fault_done, true) {
            return;
        }
        let majority = lasting.majority.clone();
        let victim = victim.or_else(|| {
            (1..=self.options.nodes)
                .filter(|id| !majority.contains(id))
                .filter_map(|id| {
                    self.replica(id)
                        .map(|replica| (id, replica.ledger().height()))
                })
                .max_by_key(|(id, height)| (*height, *id))
                .map(|(id, _)| id)
        });
        let Some(victim) = victim else {
            return;
        };
        if self.rng.random_bool(0.5) {
            self.note(|| format!("late: node {victim} crashes for good"));
            self.crash(victim);
            self.nodes[victim as usize - 1].down_for_good = true;
        } else {
            self.note(|| format!("late: node {victim} loses its links to the majority"));
            for peer in majority {
                self.sever(victim, peer);
            }
        }
        if let Some(lasting) = self.lasting.as_mut() {
            lasting.required.remove(&victim);
        }
        // Its clients must now ask elsewhere.
        for client in 0..self.clients.len() {
            if let Some(outstanding) = &self.clients[client].outstanding {
                let attempt = outstanding.attempt;
                self.schedule(0, Event::ClientRetry { client, attempt });
            }
        }
    }

    /// After every step of the lasting phase: no client of a required node waits past its
    /// deadline, and leadership changes at most a few times once the cluster commits again.
    fn check_lasting(&mut self) -> Result<(), Violation> {
        let Some(lasting) = &mut self.lasting else {
            return Ok(());
        };
        if !lasting.committed_again && self.agreement.height() > lasting.height_at_start {
            lasting.committed_again = true;
            self.stats.lasting_recovery_ms = self.time - lasting.started_at;
        }
        let bound_ms = lasting.bound_ms;
        for (client, state) in self.clients.iter().enumerate() {
            let Some(outstanding) = &state.outstanding else {
                continue;
            };
            if outstanding
                .deadline
                .is_some_and(|deadline| self.time > deadline)
            {
                return Err(Violation {
                    checker: "liveness-lasting",
                    detail: format!(
                        "client {client}'s transfer {} was not answered within {} ms of the lasting faults (waiting since {} ms): {}",
                        outstanding.transfer.id,
                        bound_ms,
                        outstanding.waiting_since,
                        self.describe()
                    ),
                });
            }
        }
        if self.stats.lasting_leader_changes > LASTING_LEADER_CHANGES_MAX {
            return Err(Violation {
                checker: "stable-leader",
                detail: format!(
                    "leadership changed {} times under lasting faults after the cluster committed again: {}",
                    self.stats.lasting_leader_changes,
                    self.describe()
                ),
            });
        }
        Ok(())
    }

    /// Follows a node's role from its events.
    pub(crate) fn note_role(&mut self, node: NodeId, event: &benmo_paxos::Event) {
        match event {
            benmo_paxos::Event::ElectionStarted { .. } => {
                self.running.insert(node);
            }
            benmo_paxos::Event::BecameLeader { .. } => {
                self.running.remove(&node);
                self.note_new_leader();
            }
            benmo_paxos::Event::SteppedDown { .. } => {
                self.running.remove(&node);
            }
            _ => {}
        }
    }

    /// A node became leader: under lasting faults, once the cluster commits again, that counts as
    /// a change of leadership.
    fn note_new_leader(&mut self) {
        if self
            .lasting
            .as_ref()
            .is_some_and(|lasting| lasting.committed_again)
        {
            self.stats.lasting_leader_changes += 1;
        }
    }

    /// Ends the lasting phase: every client still waiting on a required node must be answered
    /// within its deadline.
    fn finish_lasting(&mut self) -> Result<(), Violation> {
        let Some(lasting) = &self.lasting else {
            return Ok(());
        };
        let last_deadline = self.time + lasting.bound_ms;
        self.run_until_condition(last_deadline, |world| {
            world.clients.iter().all(|client| {
                client
                    .outstanding
                    .as_ref()
                    .is_none_or(|o| o.deadline.is_none())
            })
        })?;
        if self
            .lasting
            .as_ref()
            .is_some_and(|lasting| !lasting.committed_again)
        {
            return Err(Violation {
                checker: "liveness-lasting",
                detail: format!(
                    "nothing was committed under the lasting faults: {}",
                    self.describe()
                ),
            });
        }
        Ok(())
    }
}

fn fresh_disk(genesis: &Block) -> MemoryStorage {
    let mut disk = MemoryStorage::new();
    disk.write(&[Write::AppendBlock(genesis.clone())])
        .expect("a fresh disk takes the genesis block");
    disk
}

/// A frame's messages in a few words, for traces (heartbeats left out).
pub(crate) fn describe_messages(messages: &[Message]) -> String {
    let mut kinds = Vec::new();
    for message in messages {
        let detail = match message {
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
        kinds.push(detail);
    }
    kinds.join(", ")
}
