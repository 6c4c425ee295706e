//! The page's safety banner: `verify`'s checks, run on every node's chain as it grows, each block
//! read once per node.
//!
//! Per node: the chain starts at this cluster's genesis, every block links to the one before and
//! carries the hash of its contents, the balances summed from its applied transfers never go below
//! zero and add up to what the genesis gave out, and (when the cluster signs transfers) every
//! transfer carries its debited account's signature. Across nodes: every node has the same block
//! at every height two of them reached. Unlike `benmoctl verify`, outcomes are not replayed (that
//! needs every transfer id ever seen in memory, which a page left open for days cannot afford);
//! verify remains the full check.

use std::collections::BTreeMap;
use std::sync::Arc;

use benmo::secrets::Secrets;
use benmo::signing;
use benmo_paxos::{Block, Hash, NodeId, Outcome};
use serde_json::{json, Value};

use super::{unix_ms, Shared, AUDIT_INTERVAL};

/// Blocks read from one node per round, so a long chain is checked over several rounds.
const BLOCKS_PER_ROUND: u64 = 2_000;
/// Problems kept for the banner.
const PROBLEMS_KEPT: usize = 20;

/// How far one node's chain has been checked.
struct Checked {
    height: u64,
    head: Hash,
    genesis: Hash,
    balances: Vec<i128>,
    /// Set once the chain fails a check; the node is not read further.
    problem: Option<String>,
}

/// The cluster's shape, and the keys transfers are checked with.
pub struct Rules<'a> {
    /// How many accounts (= nodes).
    pub accounts: u32,
    /// What each account starts with.
    pub genesis_balance: u64,
    /// The account keys, when the cluster signs transfers.
    pub keys: Option<&'a Secrets>,
}

/// What has been checked so far.
#[derive(Default)]
pub struct Audit {
    nodes: BTreeMap<NodeId, Checked>,
    /// The hash of the block at each height, and the node it was first read from.
    hashes: Vec<(Hash, NodeId)>,
    problems: Vec<String>,
}

impl Audit {
    /// The next height to read from `node`.
    pub fn next_height(&self, node: NodeId) -> Option<u64> {
        match self.nodes.get(&node) {
            None => Some(0),
            Some(checked) if checked.problem.is_none() => Some(checked.height + 1),
            Some(_) => None,
        }
    }

    fn problem(&mut self, node: NodeId, problem: String) {
        if self.problems.len() < PROBLEMS_KEPT && !self.problems.contains(&problem) {
            self.problems.push(problem.clone());
        }
        if let Some(checked) = self.nodes.get_mut(&node) {
            checked.problem.get_or_insert(problem);
        }
    }

    /// Checks `blocks`, the next blocks of `node`'s chain.
    pub fn check(&mut self, node: NodeId, blocks: &[Block], rules: &Rules<'_>) {
        for block in blocks {
            if let Err(problem) = self.check_block(node, block, rules) {
                self.problem(node, problem);
                return;
            }
        }
    }

    fn check_block(
        &mut self,
        node: NodeId,
        block: &Block,
        rules: &Rules<'_>,
    ) -> Result<(), String> {
        let Some(checked) = self.nodes.get_mut(&node) else {
            let genesis = Block::genesis(rules.accounts, rules.genesis_balance);
            if block.height != 0 || block.hash != genesis.hash {
                let problem =
                    format!("node {node}: chain does not start at this cluster's genesis block");
                self.nodes.insert(
                    node,
                    Checked {
                        height: 0,
                        head: block.hash,
                        genesis: genesis.hash,
                        balances: Vec::new(),
                        problem: Some(problem.clone()),
                    },
                );
                return Err(problem);
            }
            self.nodes.insert(
                node,
                Checked {
                    height: 0,
                    head: genesis.hash,
                    genesis: genesis.hash,
                    balances: vec![rules.genesis_balance as i128; rules.accounts as usize],
                    problem: None,
                },
            );
            return self.agree(node, block);
        };
        let height = block.height;
        if height != checked.height + 1 {
            return Err(format!(
                "node {node}: block {height} came after block {}",
                checked.height
            ));
        }
        if block.prev_hash != checked.head {
            return Err(format!(
                "node {node}: block {height} does not link to block {}",
                checked.height
            ));
        }
        let hash = Block::compute_hash(height, &block.prev_hash, block.proposer, &block.entries);
        if hash != block.hash {
            return Err(format!(
                "node {node}: block {height} does not carry the hash of its contents"
            ));
        }
        for entry in &block.entries {
            let transfer = &entry.transfer;
            if let Some(keys) = rules.keys {
                signing::verify(transfer, keys.account_key(transfer.from), &checked.genesis)
                    .map_err(|error| format!("node {node}: block {height}: {error}"))?;
            }
            if entry.outcome != Outcome::Applied {
                continue;
            }
            let (from, to) = (transfer.from as usize, transfer.to as usize);
            let accounts = checked.balances.len();
            if from == 0 || to == 0 || from > accounts || to > accounts {
                return Err(format!(
                    "node {node}: block {height} applies {} between accounts that do not exist",
                    transfer.id
                ));
            }
            checked.balances[from - 1] -= i128::from(transfer.amount);
            checked.balances[to - 1] += i128::from(transfer.amount);
            if checked.balances[from - 1] < 0 {
                return Err(format!(
                    "node {node}: block {height} takes account {from} below zero"
                ));
            }
        }
        let expected = i128::from(rules.genesis_balance) * i128::from(rules.accounts);
        let total: i128 = checked.balances.iter().sum();
        if total != expected {
            return Err(format!(
                "node {node}: after block {height} the total is {total}, not {expected}"
            ));
        }
        checked.height = height;
        checked.head = block.hash;
        self.agree(node, block)
    }

    /// Records the block at its height, or checks it against the one recorded there.
    fn agree(&mut self, node: NodeId, block: &Block) -> Result<(), String> {
        let height = block.height as usize;
        match self.hashes.get(height) {
            Some((hash, _)) if *hash == block.hash => Ok(()),
            Some((_, first)) => Err(format!(
                "node {node} and node {first} differ at block {height}"
            )),
            None if height == self.hashes.len() => {
                self.hashes.push((block.hash, node));
                Ok(())
            }
            // Heights are checked in order per node, and some node recorded every lower one.
            None => Err(format!("node {node}: block {height} read out of order")),
        }
    }

    /// The banner's event: every node checked, how far, and the problems found.
    pub fn report(&self, up: &[NodeId], rules: &Rules<'_>) -> Value {
        let checked: Vec<Value> = up
            .iter()
            .filter_map(|node| self.nodes.get(node).map(|checked| (node, checked)))
            .map(|(node, checked)| {
                json!({
                    "node": node,
                    "height": checked.height,
                    "ok": checked.problem.is_none(),
                    "problem": checked.problem,
                })
            })
            .collect();
        let agreed_height = up
            .iter()
            .filter_map(|node| self.nodes.get(node))
            .map(|checked| checked.height)
            .min();
        let total: Option<i128> = up
            .iter()
            .filter_map(|node| self.nodes.get(node))
            .filter(|checked| checked.problem.is_none())
            .max_by_key(|checked| checked.height)
            .map(|checked| checked.balances.iter().sum());
        json!({
            "ok": self.problems.is_empty(),
            "unix_ms": unix_ms(),
            "checked": checked,
            "agreed_height": agreed_height,
            "total": total.map(|total| total.to_string().parse::<u64>().unwrap_or(0)),
            "expected": u64::from(rules.accounts) * rules.genesis_balance,
            "problems": self.problems,
        })
    }
}

/// Checks every node's new blocks every couple of seconds and publishes the banner.
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
        let signed = any.signed_transfers;
        let rules = Rules {
            accounts: any.nodes,
            genesis_balance: any.genesis_balance,
            keys: shared.secrets.as_ref().filter(|_| signed),
        };
        for (node, status) in &statuses {
            let Some(from) = audit.next_height(*node) else {
                continue;
            };
            if from > status.height {
                continue;
            }
            let to = status.height.min(from + BLOCKS_PER_ROUND - 1);
            // A node that does not answer now is read next round.
            if let Ok(blocks) =
                super::super::chain::read(&shared.nodes, *node, from, Some(to)).await
            {
                audit.check(*node, &blocks, &rules);
            }
        }
        let up: Vec<NodeId> = statuses.iter().map(|(node, _)| *node).collect();
        let report = audit.report(&up, &rules);
        if report["ok"] == false {
            for problem in report["problems"].as_array().into_iter().flatten() {
                log_once(&shared, problem);
            }
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

    const RULES: Rules<'static> = Rules {
        accounts: 3,
        genesis_balance: 100,
        keys: None,
    };

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
    fn agreeing_valid_chains_pass_in_any_number_of_pieces() {
        let chain = chain(6);
        let mut audit = Audit::default();
        audit.check(1, &chain, &RULES);
        audit.check(2, &chain[..3], &RULES);
        assert_eq!(audit.next_height(2), Some(3));
        audit.check(2, &chain[3..], &RULES);
        let report = audit.report(&[1, 2], &RULES);
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["agreed_height"], 6);
        assert_eq!(report["total"], 300);
    }

    #[test]
    fn two_nodes_with_different_blocks_at_a_height_are_caught() {
        let ours = chain(3);
        let mut ledger = Ledger::genesis(3, 100);
        let mut theirs = vec![Block::genesis(3, 100)];
        theirs.push(ledger.apply(2, &[transfer("other", 2, 3, 5)]));
        let mut audit = Audit::default();
        audit.check(1, &ours, &RULES);
        audit.check(2, &theirs, &RULES);
        let report = audit.report(&[1, 2], &RULES);
        assert_eq!(report["ok"], false);
        assert_eq!(report["problems"][0], "node 2 and node 1 differ at block 1");
        assert_eq!(
            audit.next_height(2),
            None,
            "a node found wrong is read no further"
        );
    }

    #[test]
    fn a_tampered_block_or_a_broken_link_is_caught() {
        let mut tampered = chain(2);
        tampered[2].entries[0].transfer.amount = 90;
        let mut audit = Audit::default();
        audit.check(1, &tampered, &RULES);
        assert!(
            audit.problems[0].contains("hash of its contents"),
            "{:?}",
            audit.problems
        );

        let mut relinked = chain(2);
        relinked.remove(1);
        let mut audit = Audit::default();
        audit.check(1, &relinked, &RULES);
        assert!(
            audit.problems[0].contains("came after"),
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
        let hash = Block::compute_hash(1, &chain[1].prev_hash, 1, &entries);
        chain[1].entries = entries;
        chain[1].hash = hash;
        let mut audit = Audit::default();
        audit.check(1, &chain, &RULES);
        assert!(
            audit.problems[0].contains("below zero"),
            "{:?}",
            audit.problems
        );
    }

    #[test]
    fn another_clusters_genesis_is_caught() {
        let mut audit = Audit::default();
        audit.check(1, &[Block::genesis(5, 100)], &RULES);
        assert!(audit.problems[0].contains("genesis"));
    }
}
