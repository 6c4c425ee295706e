//! `benmoctl log`: the pending log of each node (or of --node).

use benmo::proto;
use serde_json::{json, Value};

use super::{on_every_node, Context};
use crate::cli::Format;
use crate::render::{self, Table};
use crate::{exit, Terminal};

pub async fn run(context: &Context, terminal: &mut Terminal<'_>) -> i32 {
    let nodes = context.nodes.clone();
    let results = on_every_node(&context.candidates(), move |node| {
        let nodes = nodes.clone();
        async move {
            let mut client = nodes.ledger(node)?;
            client
                .pending(proto::PendingRequest {})
                .await
                .map(|response| response.into_inner().transfers)
                .map_err(|status| nodes.error(node, status))
        }
    })
    .await;
    let reachable = results.iter().filter(|(_, result)| result.is_ok()).count();
    if context.format == Format::Json {
        let list: Vec<Value> = results
            .iter()
            .map(|(node, result)| match result {
                Ok(transfers) => {
                    let transfers: Vec<Value> = transfers
                        .iter()
                        .map(|transfer| {
                            json!({
                                "id": transfer.id,
                                "from": transfer.from,
                                "to": transfer.to,
                                "amount": transfer.amount,
                            })
                        })
                        .collect();
                    json!({ "node": node, "up": true, "pending": transfers })
                }
                Err(error) => json!({ "node": node, "up": false, "error": error.to_string() }),
            })
            .collect();
        let _ = render::json(terminal.out, &json!({ "nodes": list }));
    } else {
        let mut table = Table::new(&["NODE", "TRANSFER", "FROM", "TO", "AMOUNT"]);
        for (node, result) in &results {
            match result {
                Ok(transfers) if transfers.is_empty() => {
                    table.row(vec![node.to_string(), "(nothing pending)".to_string()]);
                }
                Ok(transfers) => {
                    for transfer in transfers {
                        table.row(vec![
                            node.to_string(),
                            transfer.id.clone(),
                            transfer.from.to_string(),
                            transfer.to.to_string(),
                            transfer.amount.to_string(),
                        ]);
                    }
                }
                Err(error) => {
                    table.row(vec![node.to_string(), "(down)".to_string()]);
                    let _ = writeln!(terminal.err, "warning: {error}");
                }
            }
        }
        let _ = table.write(terminal.out);
    }
    if reachable == 0 {
        exit::UNREACHABLE
    } else {
        exit::OK
    }
}
