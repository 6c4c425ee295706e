//! `benmoctl verify`: fetch every node's chain and check it from outside.
//!
//! Per node: the chain replays from this cluster's genesis with every hash link, hash and outcome
//! intact, and the balances the node reports match the replay; when the cluster signs transfers,
//! every transfer carries its debited account's signature (checked with the public keys in the
//! secrets' `cluster.json`). Across nodes: every pair agrees on their common prefix. And, summed
//! independently from the applied transfers: the total is conserved and no balance is ever below
//! zero. A node that cannot be reached fails the check unless `--allow-down`.

use benmo::proto;
use benmo::secrets::Secrets;
use benmo::signing;
use benmo_paxos::{Block, Ledger, Outcome};
use serde_json::{json, Value};

use super::{chain, on_every_node, Context};
use crate::cli::Format;
use crate::connect::CallError;
use crate::render::{self, Table};
use crate::{exit, Terminal};

/// What verify learned about one node.
struct NodeReport {
    node: u32,
    height: u64,
    head: String,
    problems: Vec<String>,
}

/// Everything one node says about itself.
struct Snapshot {
    status: proto::StatusReply,
    balances: proto::BalancesReply,
    blocks: Vec<Block>,
}

async fn snapshot(nodes: crate::connect::Nodes, node: u32) -> Result<Snapshot, CallError> {
    let mut client = nodes.ledger(node)?;
    let status = client
        .status(proto::StatusRequest {})
        .await
        .map_err(|status| nodes.error(node, status))?
        .into_inner();
    let balances = client
        .balances(proto::BalancesRequest {})
        .await
        .map_err(|status| nodes.error(node, status))?
        .into_inner();
    // The chain up to the height the balances were read at, so both describe the same moment.
    let blocks = chain::read(&nodes, node, 0, Some(balances.height)).await?;
    Ok(Snapshot {
        status,
        balances,
        blocks,
    })
}

/// Sums balances from the applied transfers alone, and finds the first one that goes negative.
fn independent_totals(
    blocks: &[Block],
    accounts: u32,
    genesis_balance: u64,
) -> Result<i128, String> {
    let mut balances = vec![genesis_balance as i128; accounts as usize];
    for block in blocks {
        for entry in &block.entries {
            if entry.outcome != Outcome::Applied {
                continue;
            }
            let transfer = &entry.transfer;
            let (from, to) = (transfer.from as usize, transfer.to as usize);
            if from == 0 || to == 0 || from > balances.len() || to > balances.len() {
                return Err(format!(
                    "block {} applies {} between accounts that do not exist",
                    block.height, transfer.id
                ));
            }
            balances[from - 1] -= transfer.amount as i128;
            balances[to - 1] += transfer.amount as i128;
            if balances[from - 1] < 0 {
                return Err(format!(
                    "block {} takes account {from} below zero ({})",
                    block.height,
                    balances[from - 1]
                ));
            }
        }
    }
    Ok(balances.iter().sum())
}

/// Checks every transfer's signature with the accounts' public keys; returns the first problem.
fn check_signatures(blocks: &[Block], secrets: &Secrets) -> Result<usize, String> {
    let Some(genesis) = blocks.first() else {
        return Ok(0);
    };
    let mut checked = 0;
    for block in blocks {
        for entry in &block.entries {
            let transfer = &entry.transfer;
            signing::verify(transfer, secrets.account_key(transfer.from), &genesis.hash)
                .map_err(|error| format!("block {}: {error}", block.height))?;
            checked += 1;
        }
    }
    Ok(checked)
}

fn check_node(node: u32, snapshot: &Snapshot, secrets: Option<&Secrets>) -> NodeReport {
    let mut problems = Vec::new();
    if snapshot.status.signed_transfers {
        match secrets {
            Some(secrets) if secrets.nodes() != snapshot.status.nodes => problems.push(format!(
                "the secrets in {} are for {} nodes, this cluster has {}",
                secrets.dir().display(),
                secrets.nodes(),
                snapshot.status.nodes
            )),
            Some(secrets) => {
                if let Err(problem) = check_signatures(&snapshot.blocks, secrets) {
                    problems.push(problem);
                }
            }
            None => {}
        }
    }
    let accounts = snapshot.status.nodes;
    let genesis_balance = snapshot.status.genesis_balance;
    match Ledger::replay(accounts, genesis_balance, &snapshot.blocks) {
        Ok(ledger) => {
            if ledger.height() != snapshot.balances.height {
                problems.push(format!(
                    "the chain ends at block {} but balances are at block {}",
                    ledger.height(),
                    snapshot.balances.height
                ));
            }
            let reported: Vec<u64> = snapshot
                .balances
                .balances
                .iter()
                .map(|b| b.balance)
                .collect();
            if reported != ledger.balances() {
                problems.push(format!(
                    "reported balances {reported:?} differ from the chain's {:?}",
                    ledger.balances()
                ));
            }
        }
        Err(error) => problems.push(format!("chain does not verify: {error}")),
    }
    match independent_totals(&snapshot.blocks, accounts, genesis_balance) {
        Ok(total) => {
            let expected = genesis_balance as i128 * accounts as i128;
            if total != expected {
                problems.push(format!("total is {total}, not {expected}"));
            }
        }
        Err(problem) => problems.push(problem),
    }
    let head = snapshot
        .blocks
        .last()
        .map_or(String::new(), |block| render::short(&block.hash));
    NodeReport {
        node,
        height: snapshot.blocks.last().map_or(0, |block| block.height),
        head,
        problems,
    }
}

pub async fn run(context: &Context, allow_down: bool, terminal: &mut Terminal<'_>) -> i32 {
    let nodes = context.nodes.clone();
    let results = on_every_node(&context.candidates(), move |node| {
        snapshot(nodes.clone(), node)
    })
    .await;
    let mut reports = Vec::new();
    let mut snapshots = Vec::new();
    let mut unreachable = Vec::new();
    for (node, result) in results {
        match result {
            Ok(snapshot) => {
                reports.push(check_node(node, &snapshot, context.secrets.as_ref()));
                snapshots.push((node, snapshot));
            }
            Err(error) => {
                let _ = writeln!(terminal.err, "warning: {error}");
                unreachable.push(node);
            }
        }
    }
    if snapshots.is_empty() {
        let _ = writeln!(terminal.err, "error: no node could be reached");
        return exit::UNREACHABLE;
    }
    let mut violations: Vec<String> = reports
        .iter()
        .flat_map(|report| {
            report
                .problems
                .iter()
                .map(move |problem| format!("node {}: {problem}", report.node))
        })
        .collect();
    // Agreement on the common prefix of every pair.
    for (index, (a, first)) in snapshots.iter().enumerate() {
        for (b, second) in &snapshots[index + 1..] {
            let diverged = first
                .blocks
                .iter()
                .zip(&second.blocks)
                .find(|(x, y)| x.hash != y.hash);
            if let Some((x, _)) = diverged {
                violations.push(format!("nodes {a} and {b} disagree on block {}", x.height));
            }
        }
        if first.status.genesis_hash != snapshots[0].1.status.genesis_hash {
            violations.push(format!(
                "node {a} belongs to another cluster (other genesis)"
            ));
        }
    }
    if !allow_down {
        for node in &unreachable {
            violations.push(format!(
                "node {node} could not be checked (down or unreachable; --allow-down to check only the others)"
            ));
        }
    }
    let signed = snapshots
        .iter()
        .any(|(_, snapshot)| snapshot.status.signed_transfers);
    let signatures = match (signed, context.secrets.is_some()) {
        (true, true) => "every transfer signed by its debited account",
        (true, false) => "signatures NOT checked (no secrets: --secrets DIR or BENMO_SECRETS)",
        (false, _) => "the cluster does not sign transfers",
    };
    let top = reports
        .iter()
        .map(|report| report.height)
        .max()
        .unwrap_or(0);
    let total = snapshots[0].1.status.genesis_balance as u128 * snapshots[0].1.status.nodes as u128;
    if context.format == Format::Json {
        let nodes: Vec<Value> = reports
            .iter()
            .map(|report| {
                json!({
                    "node": report.node,
                    "up": true,
                    "height": report.height,
                    "behind": top - report.height,
                    "problems": report.problems,
                })
            })
            .chain(
                unreachable
                    .iter()
                    .map(|node| json!({ "node": node, "up": false })),
            )
            .collect();
        let _ = render::json(
            terminal.out,
            &json!({
                "ok": violations.is_empty(),
                "height": top,
                "total": total.to_string(),
                "nodes": nodes,
                "violations": violations,
                "signatures_checked": signed && context.secrets.is_some(),
            }),
        );
    } else {
        let mut table = Table::new(&["NODE", "HEIGHT", "HEAD", "BEHIND", "CHECK"]);
        for report in &reports {
            table.row(vec![
                report.node.to_string(),
                report.height.to_string(),
                report.head.clone(),
                (top - report.height).to_string(),
                if report.problems.is_empty() {
                    "ok".to_string()
                } else {
                    report.problems.join("; ")
                },
            ]);
        }
        for node in &unreachable {
            table.row(vec![
                node.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "down: not checked".into(),
            ]);
        }
        let _ = table.write(terminal.out);
        if violations.is_empty() {
            let _ = writeln!(
                terminal.out,
                "ok: {} nodes checked; hash links intact, chains agree on their common prefix, total {total} conserved, no negative balance; {signatures}",
                reports.len()
            );
        } else {
            for violation in &violations {
                let _ = writeln!(terminal.out, "VIOLATION: {violation}");
            }
        }
    }
    if violations.is_empty() {
        exit::OK
    } else {
        exit::FAILED
    }
}
