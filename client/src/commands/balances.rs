//! `benmoctl balances`: balances at a node's head.

use benmo::proto;
use serde_json::json;

use super::Context;
use crate::cli::Format;
use crate::render::{self, Table};
use crate::{exit, Terminal};

pub async fn run(context: &Context, terminal: &mut Terminal<'_>) -> i32 {
    let nodes = &context.nodes;
    let candidates = context.leader_first().await;
    let answer = context
        .ask_first_of(candidates, terminal, |node| async move {
            let mut client = nodes.ledger(node)?;
            client
                .balances(proto::BalancesRequest {})
                .await
                .map(|response| response.into_inner())
                .map_err(|status| nodes.error(node, status))
        })
        .await;
    let (node, reply) = match answer {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    let total: u128 = reply
        .balances
        .iter()
        .map(|balance| balance.balance as u128)
        .sum();
    let head = render::hash_bytes(&reply.head_hash);
    if context.format == Format::Json {
        let balances: Vec<_> = reply
            .balances
            .iter()
            .map(|balance| json!({ "account": balance.account, "balance": balance.balance }))
            .collect();
        let _ = render::json(
            terminal.out,
            &json!({
                "node": node,
                "height": reply.height,
                "head_hash": head.to_hex(),
                "balances": balances,
                "total": total.to_string(),
            }),
        );
    } else {
        let _ = writeln!(
            terminal.out,
            "balances at node {node}, block {} ({}):",
            reply.height,
            render::short(&head)
        );
        let mut table = Table::new(&["ACCOUNT", "BALANCE"]);
        for balance in &reply.balances {
            table.row(vec![
                balance.account.to_string(),
                balance.balance.to_string(),
            ]);
        }
        table.row(vec!["total".to_string(), total.to_string()]);
        let _ = table.write(terminal.out);
    }
    exit::OK
}
