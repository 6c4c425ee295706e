//! The invariant checkers, one per property, run after every step of the simulation.
//!
//! Each checker keeps its own record of what it has seen and judges every new observation
//! against it; none of them trusts the core's own bookkeeping.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use benmo_paxos::{
    Ballot, Batch, Block, Committed, Hash, Height, Message, NodeId, Outcome, Rejection, Replica,
    Transfer, TransferId, Write,
};

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The checker that caught it.
    pub checker: &'static str,
    /// What exactly is wrong.
    pub detail: String,
}

fn violation(checker: &'static str, detail: String) -> Result<(), Violation> {
    Err(Violation { checker, detail })
}

/// Agreement: at most one block per height across all nodes, ever.
#[derive(Debug, Default)]
pub struct Agreement {
    /// The first block seen at each height.
    chosen: Vec<Block>,
}

impl Agreement {
    /// Judges a block a node appended; returns whether the height is new to the cluster.
    pub fn observe(&mut self, node: NodeId, block: &Block) -> Result<bool, Violation> {
        let height = block.height as usize;
        if let Some(chosen) = self.chosen.get(height) {
            if chosen.hash != block.hash {
                return Err(Violation {
                    checker: "agreement",
                    detail: format!(
                        "node {node} appended block {height} with hash {:?}, but block {height} is {:?} elsewhere",
                        block.hash, chosen.hash
                    ),
                });
            }
            return Ok(false);
        }
        if height != self.chosen.len() {
            return Err(Violation {
                checker: "agreement",
                detail: format!(
                    "node {node} appended block {height} before the cluster had block {}",
                    self.chosen.len()
                ),
            });
        }
        self.chosen.push(block.clone());
        Ok(true)
    }

    /// The chosen block at `height`, if any node has it.
    pub fn block(&self, height: Height) -> Option<&Block> {
        self.chosen.get(height as usize)
    }

    /// The greatest height any node reached.
    pub fn height(&self) -> Height {
        self.chosen.len().saturating_sub(1) as Height
    }
}

/// Hash links: every block a node appends extends that node's own chain and hashes correctly.
#[derive(Debug)]
pub struct HashLinks {
    /// Each node's head: (height, hash).
    heads: Vec<(Height, Hash)>,
}

impl HashLinks {
    /// Starts every node at the genesis block.
    pub fn new(nodes: u32, genesis: &Block) -> HashLinks {
        HashLinks {
            heads: vec![(0, genesis.hash); nodes as usize],
        }
    }

    /// Judges a block node `node` appended.
    pub fn observe(&mut self, node: NodeId, block: &Block) -> Result<(), Violation> {
        let (height, hash) = self.heads[node as usize - 1];
        if block.height != height + 1 {
            return violation(
                "hash-links",
                format!(
                    "node {node} appended block {} on top of block {height}",
                    block.height
                ),
            );
        }
        if block.prev_hash != hash {
            return violation(
                "hash-links",
                format!(
                    "node {node} block {} links to {:?}, its head is {:?}",
                    block.height, block.prev_hash, hash
                ),
            );
        }
        if !block.hash_is_valid() {
            return violation(
                "hash-links",
                format!(
                    "node {node} block {} hash does not match its contents",
                    block.height
                ),
            );
        }
        self.heads[node as usize - 1] = (block.height, block.hash);
        Ok(())
    }

    /// A restarted node's chain: it ends at a block the cluster chose at that height (a decided
    /// block never changes), and it is where this node's chain continues from. Blocks that had
    /// not reached the disk are legitimately gone; the node fetches them again.
    pub fn restart(
        &mut self,
        node: NodeId,
        height: Height,
        hash: Hash,
        chosen: Option<Hash>,
    ) -> Result<(), Violation> {
        let (before, _) = self.heads[node as usize - 1];
        if height > before || chosen != Some(hash) {
            return violation(
                "decided-blocks-durable",
                format!(
                    "node {node} restarted at block {height} {hash:?}; before the crash it had reached block {before}, and the cluster chose {chosen:?} there"
                ),
            );
        }
        self.heads[node as usize - 1] = (height, hash);
        Ok(())
    }
}

/// Validity and conservation over the chosen chain, judged by an independent model of the
/// ledger's rules: only submitted transfers, each applied at most once, outcomes that follow
/// from balances, money neither made nor destroyed, no balance below zero.
#[derive(Debug)]
pub struct LedgerModel {
    accounts: u32,
    balances: Vec<i128>,
    total: i128,
    /// The first height of each id in the chain.
    first_seen: HashMap<TransferId, Height>,
}

impl LedgerModel {
    /// The model at the genesis.
    pub fn new(accounts: u32, genesis_balance: u64) -> LedgerModel {
        LedgerModel {
            accounts,
            balances: vec![genesis_balance as i128; accounts as usize],
            total: genesis_balance as i128 * accounts as i128,
            first_seen: HashMap::new(),
        }
    }

    /// Applies a newly chosen block, judging each entry. `submitted` holds every transfer a
    /// client submitted under each id (more than one when clients reused an id).
    pub fn apply(
        &mut self,
        block: &Block,
        submitted: &HashMap<TransferId, Vec<Transfer>>,
    ) -> Result<(), Violation> {
        for entry in &block.entries {
            let transfer = &entry.transfer;
            let known = submitted
                .get(&transfer.id)
                .is_some_and(|variants| variants.contains(transfer));
            if !known {
                return violation(
                    "validity",
                    format!(
                        "block {} holds transfer {transfer:?}, which no client submitted",
                        block.height
                    ),
                );
            }
            if let Some(first) = self.first_seen.get(&transfer.id) {
                if entry.outcome
                    != (Outcome::Duplicate {
                        first_height: *first,
                    })
                {
                    return violation(
                        "validity",
                        format!(
                            "block {} orders transfer {} again ({}), it was first ordered in block {first}",
                            block.height, transfer.id, entry.outcome
                        ),
                    );
                }
                continue;
            }
            self.first_seen.insert(transfer.id.clone(), block.height);
            self.judge(block.height, transfer, &entry.outcome)?;
        }
        let sum: i128 = self.balances.iter().sum();
        if sum != self.total {
            return violation(
                "conservation",
                format!(
                    "after block {} the balances sum to {sum}, not {}",
                    block.height, self.total
                ),
            );
        }
        Ok(())
    }

    fn judge(
        &mut self,
        height: Height,
        transfer: &Transfer,
        outcome: &Outcome,
    ) -> Result<(), Violation> {
        let valid_account = |account: u32| account >= 1 && account <= self.accounts;
        let shape_ok = valid_account(transfer.from)
            && valid_account(transfer.to)
            && transfer.from != transfer.to
            && transfer.amount > 0;
        match outcome {
            Outcome::Applied => {
                if !shape_ok {
                    return violation(
                        "validity",
                        format!("block {height} applied malformed transfer {transfer:?}"),
                    );
                }
                let from = transfer.from as usize - 1;
                let to = transfer.to as usize - 1;
                self.balances[from] -= transfer.amount as i128;
                self.balances[to] += transfer.amount as i128;
                if self.balances[from] < 0 {
                    return violation(
                        "no-negative-balance",
                        format!(
                            "block {height} took account {} to {}",
                            transfer.from, self.balances[from]
                        ),
                    );
                }
            }
            Outcome::Rejected(Rejection::InsufficientFunds {
                account,
                balance,
                amount,
            }) => {
                let actual = self.balances[transfer.from as usize - 1];
                if !shape_ok
                    || *account != transfer.from
                    || *amount != transfer.amount
                    || *balance as i128 != actual
                    || actual >= *amount as i128
                {
                    return violation(
                        "validity",
                        format!("block {height} rejected {transfer:?} for funds ({outcome}) but account {} holds {actual}", transfer.from),
                    );
                }
            }
            Outcome::Rejected(Rejection::BalanceOverflow { .. }) => {
                return violation(
                    "validity",
                    format!("block {height} reports an overflow that cannot happen: {transfer:?}"),
                );
            }
            Outcome::Rejected(_) => {
                if shape_ok {
                    return violation(
                        "validity",
                        format!("block {height} rejected well-formed {transfer:?}: {outcome}"),
                    );
                }
            }
            Outcome::Duplicate { first_height } => {
                return violation(
                    "validity",
                    format!("block {height} calls {} a duplicate of block {first_height}, but it is its first appearance", transfer.id),
                );
            }
        }
        Ok(())
    }

    /// The sum of the model's balances.
    pub fn total(&self) -> i128 {
        self.total
    }
}

/// Conservation on every node: the node's own ledger sums to the genesis total.
pub fn check_node_total(node: NodeId, replica: &Replica, total: i128) -> Result<(), Violation> {
    let sum = replica.ledger().total() as i128;
    if sum != total {
        return violation(
            "conservation",
            format!(
                "node {node}'s balances sum to {sum}, not {total}, at block {}",
                replica.ledger().height()
            ),
        );
    }
    Ok(())
}

/// Promises and votes are never broken: a node's promise never falls below a ballot it promised
/// or voted for, even across a restart, and a vote for a slot is never forgotten before the slot
/// is in the node's chain.
#[derive(Debug)]
pub struct Promises {
    vouched: Vec<Ballot>,
    votes: Vec<BTreeMap<Height, Ballot>>,
}

impl Promises {
    /// No promises yet.
    pub fn new(nodes: u32) -> Promises {
        Promises {
            vouched: vec![Ballot::ZERO; nodes as usize],
            votes: vec![BTreeMap::new(); nodes as usize],
        }
    }

    /// Records what a message sent by `node` vouches for.
    pub fn observe_sent(&mut self, node: NodeId, message: &Message) {
        let index = node as usize - 1;
        match message {
            Message::Promise(promise) => {
                self.vouched[index] = self.vouched[index].max(promise.ballot);
            }
            Message::Accepted(accepted) => {
                self.vouched[index] = self.vouched[index].max(accepted.ballot);
                let vote = self.votes[index]
                    .entry(accepted.slot)
                    .or_insert(accepted.ballot);
                *vote = (*vote).max(accepted.ballot);
            }
            _ => {}
        }
    }

    /// Judges `node`'s state against everything it vouched for.
    pub fn check(&mut self, node: NodeId, replica: &Replica) -> Result<(), Violation> {
        let index = node as usize - 1;
        if replica.promised() < self.vouched[index] {
            return violation(
                "promises-kept",
                format!(
                    "node {node} has promised {} but earlier vouched for ballot {}",
                    replica.promised(),
                    self.vouched[index]
                ),
            );
        }
        let height = replica.ledger().height();
        let votes = &mut self.votes[index];
        *votes = votes.split_off(&(height + 1));
        for (slot, ballot) in votes.iter() {
            match replica.accepted().get(slot) {
                Some((accepted, _)) if accepted >= ballot => {}
                other => {
                    return violation(
                        "votes-kept",
                        format!(
                            "node {node} voted for slot {slot} in ballot {ballot} but now holds {:?}",
                            other.map(|(accepted, _)| *accepted)
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

/// Client acknowledgements: every answer for an id agrees with the first, and names a block that
/// holds the transfer with that outcome. Nothing acknowledged is lost.
#[derive(Debug, Default)]
pub struct Acknowledgements {
    acknowledged: HashMap<TransferId, Committed>,
}

impl Acknowledgements {
    /// Judges an answer a client received.
    pub fn observe(
        &mut self,
        transfer: &Transfer,
        committed: &Committed,
        agreement: &Agreement,
    ) -> Result<(), Violation> {
        if let Some(first) = self.acknowledged.get(&transfer.id) {
            if first != committed {
                return violation(
                    "acknowledged-transfers",
                    format!(
                        "transfer {} was acknowledged as {first:?}, later as {committed:?}",
                        transfer.id
                    ),
                );
            }
            return Ok(());
        }
        let Some(block) = agreement.block(committed.height) else {
            return violation(
                "acknowledged-transfers",
                format!(
                    "transfer {} acknowledged in block {}, which no node has",
                    transfer.id, committed.height
                ),
            );
        };
        let found = block
            .entries
            .iter()
            .any(|entry| &entry.transfer == transfer && entry.outcome == committed.outcome);
        if !found {
            return violation(
                "acknowledged-transfers",
                format!(
                    "transfer {} acknowledged in block {} as {}, but the block does not hold it so",
                    transfer.id, committed.height, committed.outcome
                ),
            );
        }
        self.acknowledged
            .insert(transfer.id.clone(), committed.clone());
        Ok(())
    }

    /// Every acknowledged transfer, for the final check.
    pub fn all(&self) -> impl Iterator<Item = (&TransferId, &Committed)> {
        self.acknowledged.iter()
    }

    /// How many transfers were acknowledged.
    pub fn len(&self) -> usize {
        self.acknowledged.len()
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.acknowledged.is_empty()
    }
}

/// Agreement on chosen values, judged from what reached the disks: a value is chosen for a slot
/// once a majority of nodes durably accepted it in one ballot. No two values are ever chosen for
/// one slot, and no node applies a block whose batch was not chosen first (which catches a leader
/// that decides, or acknowledges, before a majority of its votes is durable).
#[derive(Debug)]
pub struct ChosenValues {
    majority: usize,
    votes: HashMap<(Height, Ballot), (Batch, BTreeSet<NodeId>)>,
    chosen: BTreeMap<Height, Batch>,
}

impl ChosenValues {
    /// Nothing voted yet.
    pub fn new(nodes: u32) -> ChosenValues {
        ChosenValues {
            majority: nodes as usize / 2 + 1,
            votes: HashMap::new(),
            chosen: BTreeMap::new(),
        }
    }

    /// Records the votes among `writes`, which just became durable on `node`.
    pub fn observe_durable(&mut self, node: NodeId, writes: &[Write]) -> Result<(), Violation> {
        for write in writes {
            let Write::Accept {
                slot,
                ballot,
                batch,
            } = write
            else {
                continue;
            };
            let (value, voters) = self
                .votes
                .entry((*slot, *ballot))
                .or_insert_with(|| (batch.clone(), BTreeSet::new()));
            if value != batch {
                return violation(
                    "chosen-agreement",
                    format!(
                        "node {node} accepted another value for slot {slot} in ballot {ballot}"
                    ),
                );
            }
            voters.insert(node);
            if voters.len() < self.majority {
                continue;
            }
            match self.chosen.get(slot) {
                Some(chosen) if chosen != batch => {
                    return violation(
                        "chosen-agreement",
                        format!(
                            "slot {slot} was chosen with one batch and now with another in ballot {ballot} (voters {voters:?})"
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    self.chosen.insert(*slot, batch.clone());
                }
            }
        }
        Ok(())
    }

    /// Judges a block `node` applied: its batch must have been chosen.
    pub fn check_block(&self, node: NodeId, block: &Block) -> Result<(), Violation> {
        if block.height == 0 {
            return Ok(());
        }
        match self.chosen.get(&block.height) {
            Some(chosen) if *chosen == block.batch() => Ok(()),
            Some(_) => violation(
                "chosen-agreement",
                format!(
                    "node {node} applied block {} with a batch other than the chosen one",
                    block.height
                ),
            ),
            None => violation(
                "chosen-agreement",
                format!(
                    "node {node} applied block {} before a majority of nodes held its batch durably",
                    block.height
                ),
            ),
        }
    }
}

/// The pending log survives a crash of its node: every transfer a node told a client it holds
/// durably (its Transfer call may then say "still pending") is, after a restart of that node,
/// still in its pending log or in its chain.
#[derive(Debug)]
pub struct PendingClaims {
    claims: Vec<HashSet<TransferId>>,
}

impl PendingClaims {
    /// No claims yet.
    pub fn new(nodes: u32) -> PendingClaims {
        PendingClaims {
            claims: vec![HashSet::new(); nodes as usize],
        }
    }

    /// `node` holds `id` durably in its pending log.
    pub fn claim(&mut self, node: NodeId, id: &TransferId) {
        self.claims[node as usize - 1].insert(id.clone());
    }

    /// Judges `node`'s restored state against its claims; keeps those still pending.
    pub fn restart(&mut self, node: NodeId, replica: &Replica) -> Result<(), Violation> {
        let pending: HashSet<&TransferId> =
            replica.pending().map(|transfer| &transfer.id).collect();
        let claims = &mut self.claims[node as usize - 1];
        for id in claims.iter() {
            if !pending.contains(id) && replica.ledger().lookup(id).is_none() {
                return violation(
                    "pending-durable",
                    format!(
                        "node {node} held transfer {id} durably in its pending log, but after its restart it is neither pending nor in its chain"
                    ),
                );
            }
        }
        claims.retain(|id| pending.contains(id));
        Ok(())
    }
}
