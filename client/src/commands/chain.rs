//! `benmoctl chain`: a node's blocks.

use benmo::proto;
use benmo_paxos::{Block, Entry};
use serde_json::{json, Value};

use super::Context;
use crate::cli::{ChainArgs, Format};
use crate::connect::{CallError, Nodes};
use crate::render::{self, Table};
use crate::{exit, Terminal};

/// Reads blocks `from..=to` (to the head if `to` is None) from `node`.
pub async fn read(
    nodes: &Nodes,
    node: u32,
    from: u64,
    to: Option<u64>,
) -> Result<Vec<Block>, CallError> {
    let mut client = nodes.ledger(node)?;
    let request = proto::ChainRequest {
        from_height: from,
        to_height: to,
    };
    let mut stream = client
        .chain(request)
        .await
        .map_err(|status| nodes.error(node, status))?
        .into_inner();
    let mut blocks = Vec::new();
    while let Some(block) = stream
        .message()
        .await
        .map_err(|status| nodes.error(node, status))?
    {
        let block = Block::try_from(block).map_err(|error| CallError::Refused {
            node,
            code: tonic::Code::DataLoss,
            message: format!("sent a malformed block: {error}"),
        })?;
        blocks.push(block);
    }
    Ok(blocks)
}

/// A block's entry (a transfer and its outcome) as JSON with stable field names.
pub fn entry_json(entry: &Entry) -> Value {
    json!({
        "id": entry.transfer.id.as_str(),
        "from": entry.transfer.from,
        "to": entry.transfer.to,
        "amount": entry.transfer.amount,
        "outcome": render::outcome_json(Some((&entry.outcome).into())),
    })
}

/// A block as JSON with stable field names.
pub fn block_json(block: &Block) -> Value {
    let transfers: Vec<Value> = block.entries.iter().map(entry_json).collect();
    json!({
        "height": block.height,
        "hash": block.hash.to_hex(),
        "prev_hash": block.prev_hash.to_hex(),
        "proposer": block.proposer,
        "transfers": transfers,
    })
}

pub async fn run(context: &Context, arguments: ChainArgs, terminal: &mut Terminal<'_>) -> i32 {
    if let Some(to) = arguments.to {
        if to < arguments.from {
            let _ = writeln!(
                terminal.err,
                "error: --to {to} is below --from {}",
                arguments.from
            );
            return exit::USAGE;
        }
    }
    let nodes = &context.nodes;
    let answer = context
        .ask_one(terminal, |node| {
            read(nodes, node, arguments.from, arguments.to)
        })
        .await;
    let (node, blocks) = match answer {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    if context.format == Format::Json {
        let blocks: Vec<Value> = blocks.iter().map(block_json).collect();
        let _ = render::json(terminal.out, &json!({ "node": node, "blocks": blocks }));
        return exit::OK;
    }
    let _ = writeln!(terminal.out, "chain of node {node}:");
    let mut table = Table::new(&["HEIGHT", "HASH", "PREV", "PROPOSER", "TRANSFER", "OUTCOME"]);
    for block in &blocks {
        let head = vec![
            block.height.to_string(),
            render::short(&block.hash),
            render::short(&block.prev_hash),
            if block.height == 0 {
                "genesis".to_string()
            } else {
                block.proposer.to_string()
            },
        ];
        if block.entries.is_empty() {
            let mut row = head.clone();
            row.push("-".to_string());
            table.row(row);
        }
        for (index, entry) in block.entries.iter().enumerate() {
            let mut row = if index == 0 {
                head.clone()
            } else {
                vec![String::new(); 4]
            };
            let transfer = &entry.transfer;
            row.push(format!(
                "{}: {} -> {}, {}",
                transfer.id, transfer.from, transfer.to, transfer.amount
            ));
            row.push(entry.outcome.to_string());
            table.row(row);
        }
    }
    let _ = table.write(terminal.out);
    exit::OK
}
