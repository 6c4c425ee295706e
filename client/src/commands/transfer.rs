//! `benmoctl transfer`: order a transfer and wait for its block. Without `--node` it goes to the
//! leader a quorum follows (see `route`), and follows the leader if that node is cut off while
//! the transfer waits.

use std::time::{Duration, Instant};

use benmo::proto;
use benmo::proto::transfer_reply::Result as Reply;
use benmo_paxos::{NodeId, Outcome, TransferId};
use rand::RngCore;
use serde_json::json;
use tokio::task::JoinSet;

use super::route::{self, Reason};
use super::signer::Signer;
use super::Context;
use crate::cli::{Format, TransferArgs};
use crate::connect::CallError;
use crate::render;
use crate::{exit, Terminal};

/// A fresh random transfer id.
pub fn random_id() -> String {
    format!("t-{:016x}", rand::rng().next_u64())
}

/// How often a transfer waiting on a node checks that the node can still commit it.
const REROUTE_CHECK: Duration = Duration::from_millis(300);

/// One Transfer call's result, with the node it went to.
type CallResult = (NodeId, Result<proto::TransferReply, CallError>);

pub async fn run(context: &Context, arguments: TransferArgs, terminal: &mut Terminal<'_>) -> i32 {
    let id = arguments.id.clone().unwrap_or_else(random_id);
    if let Err(error) = TransferId::new(id.clone()) {
        let _ = writeln!(terminal.err, "error: --id: {error}");
        return exit::USAGE;
    }
    let Some(found) = route::find(context).await else {
        let _ = writeln!(terminal.err, "error: no node could be reached");
        return exit::UNREACHABLE;
    };
    let first = found.route;
    let mut transfer = proto::Transfer {
        id: id.clone(),
        from: arguments.from,
        to: arguments.to,
        amount: arguments.amount,
        signature: Vec::new(),
    };
    if let Err(message) = Signer::new(context, &found.status).sign(&mut transfer) {
        let _ = writeln!(terminal.err, "error: {message}");
        return exit::USAGE;
    }
    let request = proto::TransferRequest {
        transfer: Some(transfer),
        timeout_ms: 0,
    };
    if context.verbose {
        let _ = writeln!(
            terminal.err,
            "sending transfer {id} to node {} ({})",
            first.node,
            first.reason.describe()
        );
    }
    let deadline = Instant::now() + Duration::from_millis(arguments.timeout_ms);
    let mut calls: JoinSet<CallResult> = JoinSet::new();
    let mut tried = vec![first.node];
    call(context, &mut calls, first.node, &request, deadline);
    let mut reroute =
        tokio::time::interval_at(tokio::time::Instant::now() + REROUTE_CHECK, REROUTE_CHECK);
    let mut last_pending = None;
    let mut last_unreachable = None;
    loop {
        tokio::select! {
            joined = calls.join_next() => {
                let Some(joined) = joined else { break };
                let Ok((node, answer)) = joined else { continue };
                match answer {
                    Ok(reply) => match reply.result {
                        Some(Reply::Pending(_)) => last_pending = Some(node),
                        result => return report(context, node, first.reason, &id, &arguments, result, terminal),
                    },
                    Err(error) if error.is_unreachable() => {
                        let _ = writeln!(terminal.err, "warning: {error}");
                        last_unreachable = Some(error);
                    }
                    Err(error) => {
                        let _ = writeln!(terminal.err, "error: {error}");
                        return exit::FAILED;
                    }
                }
            }
            _ = reroute.tick(), if context.node.is_none() && Instant::now() < deadline => {
                // The node may have lost the leader (cut off, say): send the same transfer, under
                // the same id, where it can commit. The id makes that safe: it is applied once.
                let better = route::find(context).await.map(|found| found.route).filter(|route| {
                    route.reason != Reason::FirstToAnswer && !tried.contains(&route.node)
                });
                if let Some(route) = better {
                    if context.verbose {
                        let _ = writeln!(
                            terminal.err,
                            "re-routing transfer {id} to node {} ({})",
                            route.node,
                            route.reason.describe()
                        );
                    }
                    tried.push(route.node);
                    call(context, &mut calls, route.node, &request, deadline);
                }
            }
        }
    }
    match (last_pending, last_unreachable) {
        (Some(node), _) => report(
            context,
            node,
            first.reason,
            &id,
            &arguments,
            Some(Reply::Pending(proto::StillPending { id: id.clone() })),
            terminal,
        ),
        (None, _) => {
            let _ = writeln!(terminal.err, "error: no node could be reached");
            exit::UNREACHABLE
        }
    }
}

/// Sends `request` to `node` with what is left of the wait.
fn call(
    context: &Context,
    calls: &mut JoinSet<CallResult>,
    node: NodeId,
    request: &proto::TransferRequest,
    deadline: Instant,
) {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let mut request = request.clone();
    request.timeout_ms = wait.as_millis() as u32;
    // The call itself may take as long as the wait for the commit, plus the usual allowance.
    let nodes = context.nodes.clone();
    calls.spawn(async move {
        let answer = async {
            let mut client = nodes.ledger_with_timeout(node, wait + Duration::from_secs(3))?;
            client
                .transfer(request)
                .await
                .map(|response| response.into_inner())
                .map_err(|status| nodes.error(node, status))
        }
        .await;
        (node, answer)
    });
}

fn report(
    context: &Context,
    node: u32,
    reason: Reason,
    id: &str,
    arguments: &TransferArgs,
    result: Option<Reply>,
    terminal: &mut Terminal<'_>,
) -> i32 {
    let json = context.format == Format::Json;
    match result {
        Some(Reply::Committed(committed)) => {
            let hash = render::hash_bytes(&committed.block_hash);
            let outcome = committed.outcome.map(Outcome::try_from);
            let applied = matches!(outcome, Some(Ok(Outcome::Applied)));
            if json {
                let _ = render::json(
                    terminal.out,
                    &json!({
                        "id": id,
                        "node": node,
                        "routed": reason.describe(),
                        "committed": true,
                        "height": committed.height,
                        "block_hash": hash.to_hex(),
                        "outcome": render::outcome_json(committed.outcome),
                    }),
                );
            } else if applied {
                let _ = writeln!(
                    terminal.out,
                    "committed transfer {id}: {} from account {} to account {} in block {} ({})",
                    arguments.amount,
                    arguments.from,
                    arguments.to,
                    committed.height,
                    hash.to_hex()
                );
            } else {
                let _ = writeln!(
                    terminal.out,
                    "transfer {id} {} (recorded in block {}, {})",
                    render::outcome(committed.outcome),
                    committed.height,
                    hash.to_hex()
                );
            }
            if applied {
                exit::OK
            } else {
                exit::FAILED
            }
        }
        Some(Reply::Pending(_)) => {
            if json {
                let _ = render::json(
                    terminal.out,
                    &json!({ "id": id, "node": node, "routed": reason.describe(), "committed": false, "pending": true }),
                );
            } else {
                let _ = writeln!(
                    terminal.out,
                    "transfer {id} was not committed within {} ms; it is still pending at node {node} under id {id} (run the same command with --id {id} to wait for it again)",
                    arguments.timeout_ms
                );
            }
            exit::PENDING
        }
        None => {
            let _ = writeln!(terminal.err, "error: node {node} sent an empty answer");
            exit::FAILED
        }
    }
}
