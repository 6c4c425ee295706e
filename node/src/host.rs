//! The host loop's logic, with no I/O of its own: what a node does with each step of the core.
//!
//! [`Host`] owns the [`Replica`] and keeps its release contract (see [`benmo_paxos::Ready`]):
//!
//! - writes go to disk in groups (group commit): while one group is being written, the steps that
//!   follow keep running and their writes gather into the next group, so the core never waits for
//!   the disk, and heartbeats never wait behind a flush;
//! - what vouches for a group's writes (promises, votes, ballots, the leader's own vote) is
//!   released only once that group is durable; the leader's own vote goes back into the core then;
//! - everything else leaves at the end of the batch of inputs that produced it, one batch of
//!   messages per peer, with transfers forwarded to one peer merged into one message;
//! - clients waiting on a transfer are answered when the core answers, and told once their
//!   transfer is durably in this node's pending log.
//!
//! The world is behind [`Environment`]: the node's is tokio, gRPC streams and a sled writer thread
//! (`core_loop`); the simulator's is a simulated network and disk (`benmo-sim`). Both drive this
//! same code.

use std::collections::{BTreeMap, HashSet, VecDeque};

use benmo_paxos::ledger::IdHasher;
use benmo_paxos::message::Forward;
use benmo_paxos::{
    Block, Committed, Event, Height, Input, Message, NodeId, Outgoing, PlantedBug, ProposeError,
    Ready, Replica, Reply, Transfer, TransferId, Write,
};

/// What a client waiting on a transfer receives.
pub type TransferResult = Result<Committed, ProposeError>;

/// How a group of writes must reach the disk before [`Host::write_done`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Synced: something released after the write rests on it (see [`Write::vouches`]).
    Synced,
    /// Written, but synced only with the next synced group (or sooner, by the system): nothing
    /// waits on it, and a crash may lose it.
    Lazy,
}

/// The world a [`Host`] runs in.
pub trait Environment {
    /// A client waiting for a transfer's outcome.
    type Waiter;

    /// Sends `messages` to `peer`, in order, as one batch.
    fn send(&mut self, peer: NodeId, messages: Vec<Message>);

    /// Reads `peer`'s blocks from height `from`; the answer comes back through [`Host::blocks`].
    fn fetch(&mut self, peer: NodeId, from: Height);

    /// Starts writing `writes` as one atomic batch, synced or not as `durability` says.
    /// [`Host::write_done`] follows once they are written; until then the host starts no other
    /// write.
    fn write(&mut self, writes: Vec<Write>, durability: Durability);

    /// Answers a waiting client.
    fn answer(&mut self, waiter: Self::Waiter, result: TransferResult);

    /// The transfer `waiter` waits for is in this node's pending log, durably: it survives a crash
    /// of this node.
    fn taken(&mut self, waiter: &mut Self::Waiter, id: &TransferId);

    /// A block joined this node's chain (it is decided; its write may still be on its way).
    fn appended(&mut self, block: &Block);

    /// Something worth a log line.
    fn event(&mut self, event: &Event);
}

/// The output of steps whose writes go to disk together.
#[derive(Default)]
struct Group {
    writes: Vec<Write>,
    /// Messages that may leave only once `writes` are durable.
    messages: Vec<Outgoing>,
    /// Transfers whose entry into the pending log is among `writes`.
    pending: Vec<TransferId>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.messages.is_empty()
    }

    /// Whether these writes only take transfers into the pending log (and perhaps write decided
    /// blocks): no promise, no vote, no message waits on them.
    fn only_takes_pending(&self) -> bool {
        self.messages.is_empty()
            && !self
                .writes
                .iter()
                .any(|write| matches!(write, Write::Promise(_) | Write::Accept { .. }))
    }

    /// Whether something rests on these writes: a promise, a vote or a pending transfer in them,
    /// or a message or a client that waits for them. A group that holds none of these (typically
    /// decided blocks and their snapshot) may be written lazily.
    fn needs_sync(&self) -> bool {
        !self.messages.is_empty()
            || !self.pending.is_empty()
            || self.writes.iter().any(Write::vouches)
    }
}

/// An input held back while a write runs, with the `SynchronousWrites` planted bug only.
enum Held<W> {
    Tick,
    Receive(NodeId, Vec<Message>),
    Propose(Transfer, W),
    Blocks(NodeId, Vec<Block>),
    Disconnected(NodeId),
}

/// A node's core and the bookkeeping around it. See the module documentation.
pub struct Host<W> {
    replica: Replica,
    id: NodeId,
    /// Clients waiting, by transfer id (ordered, so a simulated crash replays exactly).
    waiters: BTreeMap<TransferId, Vec<W>>,
    /// Steps since the last write began.
    collecting: Group,
    /// The group being written now.
    writing: Option<Group>,
    /// Messages that may leave now, by peer, sent at the end of the batch of inputs.
    outbox: BTreeMap<NodeId, Vec<Message>>,
    /// Transfers to forward, by peer and hop count, merged into one message each.
    forwards: BTreeMap<(NodeId, u32), Vec<Transfer>>,
    /// Ids whose `AddPending` is not yet durable.
    unflushed_pending: HashSet<TransferId, IdHasher>,
    /// With the `SynchronousWrites` planted bug: inputs that arrived during a write.
    held: VecDeque<Held<W>>,
    /// A tick passed since the last write started. Until then a group of lazy writes waits for
    /// the next synced one to join, rather than waking the writer on its own.
    lazy_write_due: bool,
}

impl<W> Host<W> {
    /// Wraps a replica restored from this node's disk.
    pub fn new(replica: Replica) -> Host<W> {
        let id = replica.config().id;
        Host {
            replica,
            id,
            waiters: BTreeMap::new(),
            collecting: Group::default(),
            writing: None,
            outbox: BTreeMap::new(),
            forwards: BTreeMap::new(),
            unflushed_pending: HashSet::default(),
            held: VecDeque::new(),
            lazy_write_due: false,
        }
    }

    /// The core, for reads (status, balances, pending).
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Whether a write is on its way to disk.
    pub fn is_writing(&self) -> bool {
        self.writing.is_some()
    }

    /// How many clients wait on a transfer.
    pub fn waiting(&self) -> usize {
        self.waiters.values().map(Vec::len).sum()
    }

    fn holds_inputs(&self) -> bool {
        self.writing.is_some()
            && self
                .replica
                .config()
                .planted_bugs
                .has(PlantedBug::SynchronousWrites)
    }

    /// A heartbeat interval passed.
    pub fn tick<E: Environment<Waiter = W>>(&mut self, env: &mut E) {
        self.lazy_write_due = true;
        if self.holds_inputs() {
            self.held.push_back(Held::Tick);
            return;
        }
        self.step(Input::Tick, env);
    }

    /// Messages from a peer arrived, in the order it sent them.
    pub fn receive<E: Environment<Waiter = W>>(
        &mut self,
        from: NodeId,
        messages: Vec<Message>,
        env: &mut E,
    ) {
        if self.holds_inputs() {
            self.held.push_back(Held::Receive(from, messages));
            return;
        }
        for message in messages {
            self.step(Input::Receive { from, message }, env);
        }
    }

    /// Blocks fetched from `from` arrived (none if the fetch failed).
    pub fn blocks<E: Environment<Waiter = W>>(
        &mut self,
        from: NodeId,
        blocks: Vec<Block>,
        env: &mut E,
    ) {
        if self.holds_inputs() {
            self.held.push_back(Held::Blocks(from, blocks));
            return;
        }
        self.step(Input::Blocks { from, blocks }, env);
    }

    /// The connection with `peer` closed: its process ended.
    pub fn disconnected<E: Environment<Waiter = W>>(&mut self, peer: NodeId, env: &mut E) {
        if self.holds_inputs() {
            self.held.push_back(Held::Disconnected(peer));
            return;
        }
        self.step(Input::Disconnected(peer), env);
    }

    /// A client asks this node to order `transfer` and waits for the outcome.
    pub fn propose<E: Environment<Waiter = W>>(
        &mut self,
        transfer: Transfer,
        mut waiter: W,
        env: &mut E,
    ) {
        if self.holds_inputs() {
            self.held.push_back(Held::Propose(transfer, waiter));
            return;
        }
        let id = transfer.id.clone();
        let mut ready = self.replica.step(Input::Propose(transfer));
        // A refusal of this very proposal (malformed, id reused, busy) answers this caller only:
        // others waiting on the same id wait for their own transfer.
        let refused = ready
            .replies
            .iter()
            .position(|reply| reply.id == id && reply.result.is_err());
        if let Some(index) = refused {
            let reply = ready.replies.remove(index);
            env.answer(waiter, reply.result);
        } else {
            let durable = self.replica.pending().any(|pending| pending.id == id)
                && !self.unflushed_pending.contains(&id)
                && !ready
                    .writes
                    .iter()
                    .any(|write| matches!(write, Write::AddPending(pending) if pending.id == id));
            if durable {
                env.taken(&mut waiter, &id);
            }
            self.waiters.entry(id).or_default().push(waiter);
        }
        self.absorb(ready, env);
    }

    /// Ends a batch of inputs: sends what may leave, one batch per peer, and starts writing what
    /// gathered if no write is running. A group of decided blocks only (it needs no sync) waits
    /// for a group that needs one, or for the next tick.
    pub fn flush<E: Environment<Waiter = W>>(&mut self, env: &mut E) {
        let limit = self.replica.config().batch_transfers_max;
        for ((peer, hops), transfers) in std::mem::take(&mut self.forwards) {
            for chunk in transfers.chunks(limit) {
                self.outbox
                    .entry(peer)
                    .or_default()
                    .push(Message::Forward(Forward {
                        transfers: chunk.to_vec(),
                        hops,
                    }));
            }
        }
        for (peer, messages) in std::mem::take(&mut self.outbox) {
            env.send(peer, messages);
        }
        self.start_write(env);
    }

    /// The running write is durable: release what waited for it, then start the next one.
    pub fn write_done<E: Environment<Waiter = W>>(&mut self, env: &mut E) {
        let group = self
            .writing
            .take()
            .expect("write_done follows a write the host started");
        for id in group.pending {
            self.unflushed_pending.remove(&id);
            if let Some(waiters) = self.waiters.get_mut(&id) {
                for waiter in waiters {
                    env.taken(waiter, &id);
                }
            }
        }
        for outgoing in group.messages {
            if outgoing.to == self.id {
                self.step(
                    Input::Receive {
                        from: self.id,
                        message: outgoing.message,
                    },
                    env,
                );
            } else {
                self.outbox
                    .entry(outgoing.to)
                    .or_default()
                    .push(outgoing.message);
            }
        }
        self.release_held(env);
        self.flush(env);
    }

    /// Ends the host (its node crashed) and hands back every client still waiting, whose calls
    /// break with it.
    pub fn into_waiters(self) -> Vec<W> {
        self.waiters.into_values().flatten().collect()
    }

    /// The store's archive holds every block up to `height` now (its dedup index can answer for
    /// them), so the core may forget their transfer records.
    pub fn archived(&mut self, height: Height) {
        self.replica.archive_through(height);
    }

    /// Drops the waiters `abandoned` says are gone (their clients stopped waiting).
    pub fn forget_waiters(&mut self, mut abandoned: impl FnMut(&W) -> bool) {
        self.waiters.retain(|_, waiters| {
            waiters.retain(|waiter| !abandoned(waiter));
            !waiters.is_empty()
        });
    }

    /// The planted bug's order: the tick first, then what queued behind the write.
    fn release_held<E: Environment<Waiter = W>>(&mut self, env: &mut E) {
        if self.held.is_empty() {
            return;
        }
        let held: Vec<Held<W>> = self.held.drain(..).collect();
        let ticks = held
            .iter()
            .filter(|input| matches!(input, Held::Tick))
            .count();
        for _ in 0..ticks {
            self.step(Input::Tick, env);
        }
        for input in held {
            match input {
                Held::Tick => {}
                Held::Receive(from, messages) => {
                    for message in messages {
                        self.step(Input::Receive { from, message }, env);
                    }
                }
                Held::Propose(transfer, waiter) => {
                    let id = transfer.id.clone();
                    let ready = self.replica.step(Input::Propose(transfer));
                    self.waiters.entry(id).or_default().push(waiter);
                    self.absorb(ready, env);
                }
                Held::Blocks(from, blocks) => self.step(Input::Blocks { from, blocks }, env),
                Held::Disconnected(peer) => self.step(Input::Disconnected(peer), env),
            }
        }
    }

    fn start_write<E: Environment<Waiter = W>>(&mut self, env: &mut E) {
        if self.writing.is_some() || self.collecting.is_empty() {
            return;
        }
        let needs_sync = self.collecting.needs_sync();
        // A lazy group on its own would cost the writer thread a wake-up and the loop another
        // for its end, on the path of the next client's answer: it waits, up to a tick, for the
        // next synced group, whose record carries it at no extra cost.
        if !needs_sync && !self.lazy_write_due {
            return;
        }
        // Likewise a leader's group that only takes client transfers into its pending log, while
        // a slot is in flight: the slot's decision brings the next proposal, whose vote's record
        // carries them. Written on their own they would cost a second sync per block, and the
        // next vote would often wait behind it. They still wait at most a tick, and each caller
        // is told its transfer is taken only once it is durable.
        if needs_sync
            && !self.lazy_write_due
            && self.collecting.only_takes_pending()
            && self.replica.in_flight() > 0
        {
            return;
        }
        self.lazy_write_due = false;
        let mut group = std::mem::take(&mut self.collecting);
        let writes = std::mem::take(&mut group.writes);
        let lazy = !needs_sync
            || self
                .replica
                .config()
                .planted_bugs
                .has(PlantedBug::LazyVotes);
        self.writing = Some(group);
        let durability = if lazy {
            Durability::Lazy
        } else {
            Durability::Synced
        };
        env.write(writes, durability);
    }

    fn step<E: Environment<Waiter = W>>(&mut self, input: Input, env: &mut E) {
        let ready = self.replica.step(input);
        self.absorb(ready, env);
    }

    /// Takes a step's output: what may leave at once goes to the outbox, the writes join the
    /// collecting group, and what vouches for them waits in it.
    fn absorb<E: Environment<Waiter = W>>(&mut self, ready: Ready, env: &mut E) {
        let Ready {
            writes,
            messages,
            messages_after_writes,
            fetches,
            replies,
            events,
        } = ready;
        for event in &events {
            env.event(event);
        }
        for write in &writes {
            match write {
                Write::AppendBlock(block) => env.appended(block),
                Write::AddPending(transfer) => {
                    self.unflushed_pending.insert(transfer.id.clone());
                    self.collecting.pending.push(transfer.id.clone());
                }
                _ => {}
            }
        }
        self.collecting.writes.extend(writes);
        for outgoing in messages {
            if outgoing.to == self.id {
                // Only the planted bug `LeaderVoteBeforeWrite` sends a vote to itself at once.
                self.step(
                    Input::Receive {
                        from: self.id,
                        message: outgoing.message,
                    },
                    env,
                );
                continue;
            }
            match outgoing.message {
                Message::Forward(forward) => self
                    .forwards
                    .entry((outgoing.to, forward.hops))
                    .or_default()
                    .extend(forward.transfers),
                message => self.outbox.entry(outgoing.to).or_default().push(message),
            }
        }
        self.collecting.messages.extend(messages_after_writes);
        for fetch in fetches {
            env.fetch(fetch.peer, fetch.from);
        }
        for reply in replies {
            self.answer(reply, env);
        }
    }

    fn answer<E: Environment<Waiter = W>>(&mut self, reply: Reply, env: &mut E) {
        let Some(waiters) = self.waiters.remove(&reply.id) else {
            return;
        };
        for waiter in waiters {
            env.answer(waiter, reply.result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    //! The host's contract, tested like the core: feed it inputs, look at exactly what reaches the
    //! environment, and when.

    use super::*;
    use benmo_paxos::message::{Accept, Heartbeat, Prepare, Promise};
    use benmo_paxos::storage::AcceptorState;
    use benmo_paxos::{Ballot, Config, Ledger, Restored};

    #[derive(Default)]
    struct Recorder {
        sent: Vec<(NodeId, Vec<Message>)>,
        fetches: Vec<(NodeId, Height)>,
        writes: Vec<Vec<Write>>,
        durability: Vec<Durability>,
        answers: Vec<(u32, TransferResult)>,
        taken: Vec<(u32, TransferId)>,
        appended: Vec<Height>,
    }

    impl Recorder {
        fn sent_to(&self, peer: NodeId) -> Vec<&Message> {
            self.sent
                .iter()
                .filter(|(to, _)| *to == peer)
                .flat_map(|(_, messages)| messages)
                .collect()
        }

        fn frames_to(&self, peer: NodeId) -> usize {
            self.sent.iter().filter(|(to, _)| *to == peer).count()
        }

        /// Whether `waiter` was told that transfer `id` is durably pending.
        fn was_taken(&self, waiter: u32, id: &str) -> bool {
            self.taken
                .iter()
                .any(|(taken, taken_id)| *taken == waiter && taken_id.as_str() == id)
        }

        /// The Accept sent to `peer`; `why` says why one must have left.
        fn accept_sent_to(&self, peer: NodeId, why: &str) -> Accept {
            self.sent_to(peer)
                .into_iter()
                .find_map(|message| match message {
                    Message::Accept(accept) => Some(accept.clone()),
                    _ => None,
                })
                .expect(why)
        }
    }

    /// `peer` votes for `accept`.
    fn vote(host: &mut Host<u32>, env: &mut Recorder, peer: NodeId, accept: &Accept) {
        let accepted = benmo_paxos::message::Accepted {
            ballot: accept.ballot,
            slot: accept.slot,
        };
        host.receive(peer, vec![Message::Accepted(accepted)], env);
    }

    impl Environment for Recorder {
        type Waiter = u32;

        fn send(&mut self, peer: NodeId, messages: Vec<Message>) {
            self.sent.push((peer, messages));
        }

        fn fetch(&mut self, peer: NodeId, from: Height) {
            self.fetches.push((peer, from));
        }

        fn write(&mut self, writes: Vec<Write>, durability: Durability) {
            self.durability.push(durability);
            self.writes.push(writes);
        }

        fn answer(&mut self, waiter: u32, result: TransferResult) {
            self.answers.push((waiter, result));
        }

        fn taken(&mut self, waiter: &mut u32, id: &TransferId) {
            self.taken.push((*waiter, id.clone()));
        }

        fn appended(&mut self, block: &Block) {
            self.appended.push(block.height);
        }

        fn event(&mut self, _event: &Event) {}
    }

    fn host(id: NodeId, nodes: u32) -> Host<u32> {
        host_with(Config::new(id, nodes))
    }

    fn host_with(config: Config) -> Host<u32> {
        let restored = Restored {
            acceptor: AcceptorState::default(),
            ledger: Ledger::genesis(config.nodes, 100),
        };
        Host::new(Replica::new(config, restored, 1).expect("valid config"))
    }

    fn transfer(id: &str, from: NodeId, to: NodeId, amount: u64) -> Transfer {
        Transfer {
            id: TransferId::new(id).expect("valid id"),
            from,
            to,
            amount,
            signature: None,
        }
    }

    /// Makes node 1 of 3 the leader: it starts an election on ticks, and node 2 promises.
    fn leader() -> (Host<u32>, Recorder) {
        leader_from(host(1, 3))
    }

    /// Makes `host`, node 1 of 3, the leader (see [`leader`]).
    fn leader_from(mut host: Host<u32>) -> (Host<u32>, Recorder) {
        let mut env = Recorder::default();
        for _ in 0..20 {
            host.tick(&mut env);
            host.flush(&mut env);
            // Node 2 answers every heartbeat (claiming no majority of its own, so it is no rival):
            // node 1 is quorum-connected, sees no leader, and runs.
            let rounds: Vec<u64> = env
                .sent_to(2)
                .iter()
                .filter_map(|message| match message {
                    Message::Heartbeat(Heartbeat { round, .. }) => Some(*round),
                    _ => None,
                })
                .collect();
            for round in rounds {
                let reply = benmo_paxos::message::HeartbeatReply {
                    round,
                    ballot: Ballot::new(0, 2),
                    quorum_connected: false,
                    leader: None,
                    decided: 0,
                };
                host.receive(2, vec![Message::HeartbeatReply(reply)], &mut env);
            }
            host.flush(&mut env);
            if host.is_writing() {
                host.write_done(&mut env);
            }
            let prepare = env
                .sent_to(2)
                .into_iter()
                .find_map(|message| match message {
                    Message::Prepare(prepare) => Some(prepare.clone()),
                    _ => None,
                });
            env.sent.clear();
            if let Some(Prepare { ballot, .. }) = prepare {
                let promise = Promise {
                    ballot,
                    decided: 0,
                    accepted: vec![],
                };
                host.receive(2, vec![Message::Promise(promise)], &mut env);
                host.flush(&mut env);
                assert_eq!(host.replica().role(), benmo_paxos::RoleName::Leader);
                while host.is_writing() {
                    host.write_done(&mut env);
                }
                return (host, Recorder::default());
            }
        }
        panic!("node 1 never ran for leader");
    }

    #[test]
    fn a_promise_leaves_only_once_its_write_is_done() {
        let mut host = host(2, 3);
        let mut env = Recorder::default();
        let ballot = Ballot::new(4, 1);
        host.receive(
            1,
            vec![Message::Prepare(Prepare { ballot, decided: 0 })],
            &mut env,
        );
        host.flush(&mut env);
        assert_eq!(env.writes, vec![vec![Write::Promise(ballot)]]);
        assert!(env.sent_to(1).is_empty(), "the promise waits for its write");
        host.write_done(&mut env);
        assert!(matches!(env.sent_to(1)[..], [Message::Promise(_)]));
    }

    #[test]
    fn the_core_keeps_stepping_while_a_write_runs() {
        // Heartbeats must never wait behind a flush: with a write outstanding, a heartbeat from a
        // peer is answered at once, and the next writes gather into the next group.
        let mut host = host(2, 3);
        let mut env = Recorder::default();
        host.receive(
            1,
            vec![Message::Prepare(Prepare {
                ballot: Ballot::new(4, 1),
                decided: 0,
            })],
            &mut env,
        );
        host.flush(&mut env);
        assert!(host.is_writing());
        host.receive(
            3,
            vec![Message::Heartbeat(Heartbeat {
                round: 7,
                decided: 0,
            })],
            &mut env,
        );
        host.receive(
            1,
            vec![Message::Prepare(Prepare {
                ballot: Ballot::new(5, 1),
                decided: 0,
            })],
            &mut env,
        );
        host.flush(&mut env);
        assert!(matches!(env.sent_to(3)[..], [Message::HeartbeatReply(_)]));
        assert_eq!(env.writes.len(), 1, "one write at a time");
        host.write_done(&mut env);
        assert_eq!(
            env.writes.len(),
            2,
            "the next group starts once the first is done"
        );
        assert_eq!(env.writes[1], vec![Write::Promise(Ballot::new(5, 1))]);
        let promises = env
            .sent_to(1)
            .iter()
            .filter(|message| matches!(message, Message::Promise(_)))
            .count();
        assert_eq!(promises, 1, "the second promise waits for the second write");
    }

    #[test]
    fn a_refusal_answers_only_its_caller_and_a_commit_answers_everyone_waiting() {
        let (mut host, mut env) = leader();
        host.propose(transfer("a", 1, 2, 5), 10, &mut env);
        host.propose(transfer("a", 1, 2, 5), 11, &mut env);
        host.propose(transfer("a", 2, 3, 9), 12, &mut env);
        host.flush(&mut env);
        assert_eq!(
            env.answers.len(),
            1,
            "only the conflicting caller hears at once"
        );
        assert_eq!(env.answers[0].0, 12);
        assert!(matches!(
            env.answers[0].1,
            Err(ProposeError::IdConflict { .. })
        ));
        // The leader's own vote counts once its write is done; node 2's vote makes a majority.
        host.write_done(&mut env);
        let accept = env.accept_sent_to(2, "the Accept left at once");
        vote(&mut host, &mut env, 2, &accept);
        host.flush(&mut env);
        let waiters: Vec<u32> = env.answers[1..].iter().map(|(waiter, _)| *waiter).collect();
        assert_eq!(waiters, vec![10, 11]);
        assert!(env.answers[1..].iter().all(|(_, result)| result.is_ok()));
    }

    #[test]
    fn the_leaders_own_vote_counts_only_once_written() {
        let (mut host, mut env) = leader();
        host.propose(transfer("a", 1, 2, 5), 1, &mut env);
        host.flush(&mut env);
        let accept = env.accept_sent_to(2, "the Accept leaves while the vote is written");
        // Node 2 votes before the leader's own write is done: one durable vote of three.
        vote(&mut host, &mut env, 2, &accept);
        host.flush(&mut env);
        assert!(
            env.appended.is_empty(),
            "not decided before the leader's vote is durable"
        );
        host.write_done(&mut env);
        assert_eq!(env.appended, vec![accept.slot]);
        assert!(matches!(env.answers[..], [(1, Ok(_))]));
    }

    /// A leader proposes one transfer, its vote is synced, node 2 votes and the leader's write
    /// ends: the transfer is decided, and its block is not written yet.
    fn leader_with_one_decided() -> (Host<u32>, Recorder) {
        let (mut host, mut env) = leader();
        host.propose(transfer("a", 1, 2, 5), 1, &mut env);
        host.flush(&mut env);
        assert_eq!(
            env.durability,
            vec![Durability::Synced],
            "the vote is synced"
        );
        let accept = env.accept_sent_to(2, "the Accept left");
        vote(&mut host, &mut env, 2, &accept);
        host.write_done(&mut env);
        assert!(matches!(env.answers[..], [(1, Ok(_))]), "decided");
        (host, env)
    }

    #[test]
    fn votes_are_synced_and_decided_blocks_written_lazily() {
        let (mut host, mut env) = leader_with_one_decided();
        assert_eq!(
            env.writes.len(),
            1,
            "the decided block waits for a synced write or a tick"
        );
        host.tick(&mut env);
        host.flush(&mut env);
        assert_eq!(env.writes.len(), 2, "the tick starts the lazy write");
        assert!(env.writes[1]
            .iter()
            .any(|write| matches!(write, Write::AppendBlock(_))));
        assert!(env.writes[1].iter().all(|write| !write.vouches()));
        assert_eq!(
            env.durability[1],
            Durability::Lazy,
            "the block is not synced"
        );
    }

    #[test]
    fn a_decided_block_joins_the_next_vote_write() {
        let (mut host, mut env) = leader_with_one_decided();
        host.propose(transfer("b", 1, 2, 5), 1, &mut env);
        host.flush(&mut env);
        assert_eq!(env.writes.len(), 2, "one write for the block and the vote");
        assert_eq!(env.durability[1], Durability::Synced, "the vote is synced");
        let position = |wanted: fn(&Write) -> bool| env.writes[1].iter().position(wanted);
        let block = position(|write| matches!(write, Write::AppendBlock(_)))
            .expect("the decided block is in the write");
        let vote = position(|write| matches!(write, Write::Accept { .. }))
            .expect("the next slot's vote is in the write");
        assert!(block < vote, "the block keeps its place before the vote");
    }

    /// A leader of 3 that keeps one slot in flight (as a node does by default), with slot 1
    /// proposed for transfer "a", its own vote durable and node 2's vote still to come; and the
    /// Accept node 2 was sent.
    fn leader_with_a_slot_in_flight() -> (Host<u32>, Recorder, Accept) {
        let mut config = Config::new(1, 3);
        config.in_flight_slots_max = 1;
        let (mut host, mut env) = leader_from(host_with(config));
        host.propose(transfer("a", 1, 2, 5), 1, &mut env);
        host.flush(&mut env);
        let accept = env.accept_sent_to(2, "the Accept left");
        host.write_done(&mut env);
        assert_eq!(host.replica().in_flight(), 1);
        assert!(!host.is_writing());
        (host, env, accept)
    }

    fn takes_pending(writes: &[Write], id: &str) -> bool {
        writes
            .iter()
            .any(|write| matches!(write, Write::AddPending(transfer) if transfer.id.as_str() == id))
    }

    #[test]
    fn a_leader_takes_transfers_into_its_pending_log_with_its_next_vote() {
        let (mut host, mut env, accept) = leader_with_a_slot_in_flight();
        host.propose(transfer("b", 1, 3, 5), 2, &mut env);
        host.flush(&mut env);
        assert_eq!(
            env.writes.len(),
            1,
            "no write of its own for b's pending entry"
        );
        vote(&mut host, &mut env, 2, &accept);
        host.flush(&mut env);
        assert!(matches!(env.answers[..], [(1, Ok(_))]), "slot 1 is decided");
        assert_eq!(
            env.writes.len(),
            2,
            "one write for b's entry and slot 2's vote"
        );
        assert_eq!(env.durability[1], Durability::Synced);
        assert!(takes_pending(&env.writes[1], "b"));
        assert!(env.writes[1]
            .iter()
            .any(|write| matches!(write, Write::Accept { slot: 2, .. })));
        assert!(
            env.taken.iter().all(|(waiter, _)| *waiter != 2),
            "b is taken only once durable"
        );
        host.write_done(&mut env);
        assert!(env.was_taken(2, "b"));
    }

    #[test]
    fn a_leaders_pending_entries_wait_for_its_next_vote_at_most_a_tick() {
        let (mut host, mut env, _accept) = leader_with_a_slot_in_flight();
        host.propose(transfer("b", 1, 3, 5), 2, &mut env);
        host.flush(&mut env);
        assert_eq!(env.writes.len(), 1);
        // Node 2 never votes: the tick writes b's entry on its own, synced.
        host.tick(&mut env);
        host.flush(&mut env);
        assert_eq!(env.writes.len(), 2);
        assert_eq!(env.durability[1], Durability::Synced);
        assert!(takes_pending(&env.writes[1], "b"));
        host.write_done(&mut env);
        assert!(env.was_taken(2, "b"));
    }

    #[test]
    fn transfers_forwarded_to_one_peer_travel_together() {
        let mut host = host(2, 3);
        let mut env = Recorder::default();
        // Node 2 follows node 1, then takes three transfers in one batch of inputs.
        host.receive(
            1,
            vec![Message::Prepare(Prepare {
                ballot: Ballot::new(1, 1),
                decided: 0,
            })],
            &mut env,
        );
        host.flush(&mut env);
        host.write_done(&mut env);
        env.sent.clear();
        for (index, id) in ["a", "b", "c"].into_iter().enumerate() {
            host.propose(transfer(id, 2, 3, 1), index as u32, &mut env);
        }
        host.flush(&mut env);
        assert_eq!(env.frames_to(1), 1, "one frame to the leader");
        let forwarded: Vec<usize> = env
            .sent_to(1)
            .iter()
            .filter_map(|message| match message {
                Message::Forward(forward) => Some(forward.transfers.len()),
                _ => None,
            })
            .collect();
        assert_eq!(forwarded, vec![3], "one Forward with all three");
    }

    #[test]
    fn a_waiter_is_told_once_its_transfer_is_durably_pending() {
        let mut host = host(2, 3);
        let mut env = Recorder::default();
        host.propose(transfer("a", 2, 3, 1), 7, &mut env);
        host.flush(&mut env);
        assert!(env.taken.is_empty(), "not before the write is done");
        host.write_done(&mut env);
        assert_eq!(env.taken, vec![(7, TransferId::new("a").unwrap())]);
        // A second caller for the same, already durable, transfer is told at once.
        host.propose(transfer("a", 2, 3, 1), 8, &mut env);
        assert_eq!(env.taken.len(), 2);
        assert_eq!(env.taken[1].0, 8);
    }

    #[test]
    fn a_batch_goes_to_the_writer_whole() {
        let mut host = host(2, 3);
        let mut env = Recorder::default();
        for id in ["a", "b"] {
            host.propose(transfer(id, 2, 3, 1), 0, &mut env);
        }
        host.flush(&mut env);
        assert_eq!(
            env.writes.len(),
            1,
            "one write for the whole batch of inputs"
        );
        assert_eq!(env.writes[0].len(), 2);
    }
}
