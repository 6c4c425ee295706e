//! The page's safety banner: `verify`'s checks, run as the cluster grows, at a bounded cost.
//!
//! One chain, the reference, is read block by block (from any node that is up; a node that
//! goes down is replaced by another, whose blocks must then link to the ones already checked):
//! it starts at this cluster's genesis, every block links to the one before and carries the
//! hash of its contents, the balances summed from its applied transfers never go below zero and
//! add up to what the genesis gave out, and (when the cluster signs transfers) every transfer
//! carries its debited account's signature. Every node is then held to it: the head hash each
//! node reports at its height must be the reference's hash at that height, which (the chain
//! being hash-linked) means the node agrees on every block up to there.
//!
//! The cost stays bounded under any load: the chain is read from one node, not all, and a round
//! spends at most [`WORK_PER_ROUND`] checking (signatures are the expensive part, ~40 µs each);
//! under a heavy load the banner says how far it has checked and catches up when the load eases. Unlike
//! `benmoctl verify`, outcomes are not replayed (that needs every transfer id ever seen in
//! memory); verify remains the full check.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benmo::secrets::Secrets;
use benmo::signing;
use benmo_paxos::{Block, Hash, NodeId, Outcome};
use serde_json::{json, Value};

use super::{unix_ms, Shared, AUDIT_INTERVAL};

/// Blocks read per round.
const BLOCKS_PER_ROUND: u64 = 1_000;
/// CPU time a round may spend checking blocks (at least one block is checked per round): 7.5%
/// of one core at one round every two seconds.
pub const WORK_PER_ROUND: Duration = Duration::from_millis(150);
/// Problems kept for the banner.
const PROBLEMS_KEPT: usize = 20;

/// The cluster's shape, and the keys transfers are checked with.
#[derive(Clone)]
pub struct Rules {
    /// How many accounts (= nodes).
    pub accounts: u32,
    /// What each account starts with.
    pub genesis_balance: u64,
    /// The account keys, when the cluster signs transfers.
    pub keys: Option<Secrets>,
}

/// What has been checked so far.
#[derive(Default)]
pub struct Audit {
    /// The reference chain's hash at each height checked, and the node it was read from.
    hashes: Vec<(Hash, NodeId)>,
    balances: Vec<i128>,
    /// The reference failed a check: it is read no further.
    stuck: bool,
    /// Per node: the height up to which it was found to agree.
    agreed: BTreeMap<NodeId, u64>,
    /// Per node: a head it reported that the reference has not reached yet.
    waiting: BTreeMap<NodeId, (u64, Hash)>,
    /// Per node: why it is wrong.
    wrong: BTreeMap<NodeId, String>,
    problems: Vec<String>,
}

impl Audit {
    /// The next height of the reference chain to read, if it is still read.
    pub fn next_height(&self) -> Option<u64> {
        (!self.stuck).then_some(self.hashes.len() as u64)
    }

    fn problem(&mut self, problem: String) {
        if self.problems.len() < PROBLEMS_KEPT && !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    /// Checks `blocks`, read from `node`, as the next blocks of the reference chain; stops once
    /// `budget` is spent (after one block at least). Returns how many blocks it took.
    pub fn extend(
        &mut self,
        node: NodeId,
        blocks: &[Block],
        rules: &Rules,
        budget: Duration,
    ) -> usize {
        let started = Instant::now();
        for (taken, block) in blocks.iter().enumerate() {
            if taken > 0 && started.elapsed() >= budget {
                return taken;
            }
            if let Err(problem) = self.extend_one(node, block, rules) {
                self.stuck = true;
                self.problem(problem);
                return taken;
            }
        }
        blocks.len()
    }

    fn extend_one(&mut self, node: NodeId, block: &Block, rules: &Rules) -> Result<(), String> {
        let height = block.height;
        let Some(&(head, head_node)) = self.hashes.last() else {
            let genesis = Block::genesis(rules.accounts, rules.genesis_balance);
            if height != 0 || block.hash != genesis.hash {
                return Err(format!(
                    "node {node}: its chain does not start at this cluster's genesis block"
                ));
            }
            self.balances = vec![i128::from(rules.genesis_balance); rules.accounts as usize];
            self.hashes.push((genesis.hash, node));
            return Ok(());
        };
        let expected = self.hashes.len() as u64;
        if height != expected {
            return Err(format!(
                "node {node}: sent block {height} for block {expected}"
            ));
        }
        if block.prev_hash != head {
            return Err(format!(
                "node {node}'s block {height} does not link to block {} as node {head_node} has it",
                height - 1
            ));
        }
        let hash = Block::compute_hash(height, &block.prev_hash, block.proposer, &block.entries);
        if hash != block.hash {
            return Err(format!(
                "node {node}: block {height} does not carry the hash of its contents"
            ));
        }
        let genesis = self.hashes[0].0;
        let mut balances = self.balances.clone();
        for entry in &block.entries {
            let transfer = &entry.transfer;
            if let Some(keys) = &rules.keys {
                signing::verify(transfer, keys.account_key(transfer.from), &genesis)
                    .map_err(|error| format!("node {node}: block {height}: {error}"))?;
            }
            if entry.outcome != Outcome::Applied {
                continue;
            }
            let (from, to) = (transfer.from as usize, transfer.to as usize);
            if from == 0 || to == 0 || from > balances.len() || to > balances.len() {
                return Err(format!(
                    "node {node}: block {height} applies {} between accounts that do not exist",
                    transfer.id
                ));
            }
            balances[from - 1] -= i128::from(transfer.amount);
            balances[to - 1] += i128::from(transfer.amount);
            if balances[from - 1] < 0 {
                return Err(format!(
                    "node {node}: block {height} takes account {from} below zero"
                ));
            }
        }
        let expected = i128::from(rules.genesis_balance) * i128::from(rules.accounts);
        let total: i128 = balances.iter().sum();
        if total != expected {
            return Err(format!(
                "node {node}: after block {height} the total is {total}, not {expected}"
            ));
        }
        self.balances = balances;
        self.hashes.push((block.hash, node));
        Ok(())
    }

    /// Holds `node`'s reported head (`height`, `hash`) to the reference chain: now if the
    /// reference reaches that height, else once it does.
    pub fn compare(&mut self, node: NodeId, height: u64, hash: Hash) {
        if self.wrong.contains_key(&node) {
            return;
        }
        // An older report still waiting is compared first, so a node that keeps moving ahead
        // of the reference is still compared, at the heights it passed through.
        let (height, hash) = match self.waiting.remove(&node) {
            Some(older) if (older.0 as usize) < self.hashes.len() || older.0 >= height => older,
            Some(older) => {
                self.waiting.insert(node, older);
                return;
            }
            None => (height, hash),
        };
        match self.hashes.get(height as usize) {
            Some((reference, _)) if *reference == hash => {
                let agreed = self.agreed.entry(node).or_insert(0);
                *agreed = (*agreed).max(height);
            }
            Some((_, source)) => {
                let problem = format!(
                    "node {node} and node {source} have different blocks at height {height}"
                );
                self.wrong.insert(node, problem.clone());
                self.problem(problem);
            }
            None => {
                self.waiting.insert(node, (height, hash));
            }
        }
    }

    /// The banner's event: each node up, how far it agrees, and the problems found.
    pub fn report(&self, up: &[NodeId], rules: &Rules) -> Value {
        let checked: Vec<Value> = up
            .iter()
            .filter_map(|node| self.agreed.get(node).map(|height| (node, height)))
            .map(|(node, height)| {
                json!({
                    "node": node,
                    "height": height,
                    "ok": !self.wrong.contains_key(node),
                    "problem": self.wrong.get(node),
                })
            })
            .collect();
        let agreed_height = up
            .iter()
            .filter_map(|node| self.agreed.get(node))
            .min()
            .copied();
        let total: i128 = self.balances.iter().sum();
        json!({
            "ok": self.problems.is_empty(),
            "unix_ms": unix_ms(),
            "checked": checked,
            "checked_height": self.hashes.len().saturating_sub(1),
            "agreed_height": agreed_height,
            "total": u64::try_from(total).ok(),
            "expected": u64::from(rules.accounts) * rules.genesis_balance,
            "problems": self.problems,
        })
    }
}

/// Checks the chain and every node's head every couple of seconds and publishes the banner.
pub async fn run(shared: Arc<Shared>) {
    let mut audit = Audit::default();
    let mut interval = tokio::time::interval(AUDIT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let statuses = shared.hub.statuses();
        let Some((_, any)) = statuses.first() else {
            continue;
        };
        let rules = Rules {
            accounts: any.nodes,
            genesis_balance: any.genesis_balance,
            keys: shared.secrets.clone().filter(|_| any.signed_transfers),
        };
        // The reference grows from the node furthest ahead.
        let source = statuses
            .iter()
            .max_by_key(|(node, status)| (status.height, std::cmp::Reverse(*node)));
        if let (Some(from), Some((node, status))) = (audit.next_height(), source) {
            if from <= status.height {
                let to = status.height.min(from + BLOCKS_PER_ROUND - 1);
                // A node that does not answer now is read next round.
                if let Ok(blocks) =
                    super::super::chain::read(&shared.nodes, *node, from, Some(to)).await
                {
                    let node = *node;
                    let rules = rules.clone();
                    // Hashes and signatures are CPU work: off the async threads.
                    audit = match tokio::task::spawn_blocking(move || {
                        audit.extend(node, &blocks, &rules, WORK_PER_ROUND);
                        audit
                    })
                    .await
                    {
                        Ok(audit) => audit,
                        Err(_) => return,
                    };
                }
            }
        }
        for (node, status) in &statuses {
            let hash = crate::render::hash_bytes(&status.head_hash);
            audit.compare(*node, status.height, hash);
        }
        let up: Vec<NodeId> = statuses.iter().map(|(node, _)| *node).collect();
        let report = audit.report(&up, &rules);
        for problem in report["problems"].as_array().into_iter().flatten() {
            log_once(&shared, problem);
        }
        shared.hub.publish("safety", report);
    }
}

/// Puts a problem in the page's log, once.
fn log_once(shared: &Shared, problem: &Value) {
    let text = problem.as_str().unwrap_or_default().to_string();
    let seen = shared
        .hub
        .current()
        .log
        .iter()
        .any(|line| line["text"].as_str() == Some(text.as_str()));
    if !seen {
        shared.hub.log(0, "warn", text);
    }
}

#[cfg(test)]
mod tests {
    use benmo_paxos::{Ledger, Transfer, TransferId};

    use super::*;

    /// Time enough to check anything.
    const ALL: Duration = Duration::from_secs(3_600);

    fn rules() -> Rules {
        Rules {
            accounts: 3,
            genesis_balance: 100,
            keys: None,
        }
    }

    fn transfer(id: &str, from: NodeId, to: NodeId, amount: u64) -> Transfer {
        Transfer {
            id: TransferId::new(id).unwrap(),
            from,
            to,
            amount,
            signature: None,
        }
    }

    /// A valid chain of `blocks` blocks, each moving 10 from account 1 to account 2.
    fn chain(blocks: u64) -> Vec<Block> {
        let mut ledger = Ledger::genesis(3, 100);
        let mut chain = vec![Block::genesis(3, 100)];
        for height in 1..=blocks {
            chain.push(ledger.apply(1, &[transfer(&format!("t{height}"), 1, 2, 10)]));
        }
        chain
    }

    #[test]
    fn a_valid_chain_read_from_several_nodes_and_agreeing_heads_pass() {
        let chain = chain(6);
        let mut audit = Audit::default();
        assert_eq!(audit.extend(1, &chain[..4], &rules(), ALL), 4);
        // Node 1 went down: node 2 carries on from where node 1 stopped.
        assert_eq!(audit.next_height(), Some(4));
        audit.extend(2, &chain[4..], &rules(), ALL);
        audit.compare(1, 3, chain[3].hash);
        audit.compare(2, 6, chain[6].hash);
        let report = audit.report(&[1, 2], &rules());
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["agreed_height"], 3);
        assert_eq!(report["checked_height"], 6);
        assert_eq!(report["total"], 300);
    }

    #[test]
    fn a_node_whose_head_differs_is_caught_even_after_the_reference_catches_up() {
        let ours = chain(3);
        let mut ledger = Ledger::genesis(3, 100);
        let theirs = ledger.apply(2, &[transfer("other", 2, 3, 5)]);
        let mut audit = Audit::default();
        audit.extend(1, &ours[..1], &rules(), ALL);
        // Node 2 reports a head the reference has not reached: it waits, then is compared.
        audit.compare(2, 1, theirs.hash);
        assert_eq!(audit.report(&[2], &rules())["ok"], true);
        audit.extend(1, &ours[1..], &rules(), ALL);
        audit.compare(2, 2, theirs.hash);
        let report = audit.report(&[1, 2], &rules());
        assert_eq!(report["ok"], false);
        assert_eq!(
            report["problems"][0],
            "node 2 and node 1 have different blocks at height 1"
        );
    }

    #[test]
    fn a_node_that_diverged_cannot_extend_the_reference() {
        let ours = chain(3);
        let mut ledger = Ledger::genesis(3, 100);
        let mut theirs = vec![Block::genesis(3, 100)];
        theirs.push(ledger.apply(2, &[transfer("other", 2, 3, 5)]));
        theirs.push(ledger.apply(2, &[transfer("more", 2, 3, 5)]));
        let mut audit = Audit::default();
        audit.extend(1, &ours[..2], &rules(), ALL);
        audit.extend(2, &theirs[2..], &rules(), ALL);
        assert!(audit.problems[0].contains("does not link to block 1 as node 1 has it"));
        assert_eq!(
            audit.next_height(),
            None,
            "the reference is read no further"
        );
    }

    #[test]
    fn a_tampered_block_or_a_missing_one_is_caught() {
        let mut tampered = chain(2);
        tampered[2].entries[0].transfer.amount = 90;
        let mut audit = Audit::default();
        audit.extend(1, &tampered, &rules(), ALL);
        assert!(
            audit.problems[0].contains("hash of its contents"),
            "{:?}",
            audit.problems
        );

        let mut gap = chain(2);
        gap.remove(1);
        let mut audit = Audit::default();
        audit.extend(1, &gap, &rules(), ALL);
        assert!(
            audit.problems[0].contains("sent block 2 for block 1"),
            "{:?}",
            audit.problems
        );
    }

    #[test]
    fn money_made_from_nothing_is_caught_even_with_a_valid_hash() {
        // A block whose contents hash correctly but whose applied transfer overdraws account 3.
        let mut chain = chain(1);
        let mut entries = chain[1].entries.clone();
        entries[0].transfer = transfer("big", 3, 1, 500);
        chain[1].hash = Block::compute_hash(1, &chain[1].prev_hash, 1, &entries);
        chain[1].entries = entries;
        let mut audit = Audit::default();
        audit.extend(1, &chain, &rules(), ALL);
        assert!(
            audit.problems[0].contains("below zero"),
            "{:?}",
            audit.problems
        );
    }

    #[test]
    fn another_clusters_genesis_is_caught() {
        let mut audit = Audit::default();
        audit.extend(1, &[Block::genesis(5, 100)], &rules(), ALL);
        assert!(audit.problems[0].contains("genesis"));
    }

    #[test]
    fn a_round_with_its_budget_spent_stops_and_the_next_goes_on() {
        let chain = chain(5);
        let mut audit = Audit::default();
        assert_eq!(audit.extend(1, &chain, &rules(), Duration::ZERO), 1);
        assert_eq!(audit.next_height(), Some(1));
        assert_eq!(audit.extend(1, &chain[1..], &rules(), Duration::ZERO), 1);
        audit.extend(1, &chain[2..], &rules(), ALL);
        assert_eq!(audit.report(&[], &rules())["checked_height"], 5);
    }
}
