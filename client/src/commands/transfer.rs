//! `benmoctl transfer`: order a transfer and wait for its block.

use std::time::Duration;

use benmo::proto;
use benmo::proto::transfer_reply::Result as Reply;
use benmo_paxos::{Outcome, TransferId};
use rand::RngCore;
use serde_json::json;

use super::Context;
use crate::cli::{Format, TransferArgs};
use crate::render;
use crate::{exit, Terminal};

/// A fresh random transfer id.
pub fn random_id() -> String {
    format!("t-{:016x}", rand::rng().next_u64())
}

pub async fn run(context: &Context, arguments: TransferArgs, terminal: &mut Terminal<'_>) -> i32 {
    let id = arguments.id.clone().unwrap_or_else(random_id);
    if let Err(error) = TransferId::new(id.clone()) {
        let _ = writeln!(terminal.err, "error: --id: {error}");
        return exit::USAGE;
    }
    let request = proto::TransferRequest {
        transfer: Some(proto::Transfer {
            id: id.clone(),
            from: arguments.from,
            to: arguments.to,
            amount: arguments.amount,
        }),
        timeout_ms: arguments.timeout_ms as u32,
    };
    // The call itself may take as long as the wait for the commit, plus the usual allowance.
    let call_timeout = Duration::from_millis(arguments.timeout_ms) + Duration::from_secs(3);
    let nodes = &context.nodes;
    let answer = context
        .ask_one(terminal, |node| {
            let request = request.clone();
            async move {
                let mut client = nodes.ledger_with_timeout(node, call_timeout)?;
                client
                    .transfer(request)
                    .await
                    .map(|response| response.into_inner())
                    .map_err(|status| nodes.error(node, status))
            }
        })
        .await;
    let (node, reply) = match answer {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    report(context, node, &id, &arguments, reply.result, terminal)
}

fn report(
    context: &Context,
    node: u32,
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
                    &json!({ "id": id, "node": node, "committed": false, "pending": true }),
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
