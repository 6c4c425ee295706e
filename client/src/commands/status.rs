//! `benmoctl status`: one line per node.

use benmo::proto;
use serde_json::{json, Value};

use super::{on_every_node, Context};
use crate::cli::Format;
use crate::render::{self, Table};
use crate::{exit, Terminal};

/// Every node's status, or why it could not be read.
pub async fn fetch(
    context: &Context,
) -> Vec<(u32, Result<proto::StatusReply, crate::connect::CallError>)> {
    let nodes = context.nodes.clone();
    on_every_node(&context.candidates(), move |node| {
        let nodes = nodes.clone();
        async move {
            let mut client = nodes.ledger(node)?;
            client
                .status(proto::StatusRequest {})
                .await
                .map(|response| response.into_inner())
                .map_err(|status| nodes.error(node, status))
        }
    })
    .await
}

/// A node's role in the words status, JSON and the dashboard use.
pub fn role(status: &proto::StatusReply) -> &'static str {
    match proto::Role::try_from(status.role) {
        Ok(proto::Role::Leader) => "leader",
        Ok(proto::Role::Candidate) => "candidate",
        Ok(proto::Role::Follower) => "follower",
        _ => "unknown",
    }
}

/// The cut links of a node in words: `4` for both directions, `4 out`, `4 in`.
fn cuts(status: &proto::StatusReply) -> String {
    let mut peers: Vec<u32> = status
        .cut_outgoing
        .iter()
        .chain(&status.cut_incoming)
        .copied()
        .collect();
    peers.sort_unstable();
    peers.dedup();
    if peers.is_empty() {
        return "-".to_string();
    }
    peers
        .iter()
        .map(|peer| {
            match (
                status.cut_outgoing.contains(peer),
                status.cut_incoming.contains(peer),
            ) {
                (true, true) => peer.to_string(),
                (true, false) => format!("{peer} out"),
                _ => format!("{peer} in"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(context: &Context, terminal: &mut Terminal<'_>) -> i32 {
    let results = fetch(context).await;
    let reachable = results.iter().filter(|(_, result)| result.is_ok()).count();
    if context.format == Format::Json {
        let nodes: Vec<Value> = results
            .iter()
            .map(|(node, result)| match result {
                Ok(status) => json!({
                    "node": node,
                    "up": true,
                    "role": role(status),
                    "leader": status.leader.as_ref().map(|ballot| ballot.node),
                    "ballot": render::ballot(status.ballot.as_ref()),
                    "promised": render::ballot(status.promised.as_ref()),
                    "quorum_connected": status.quorum_connected,
                    "height": status.height,
                    "head_hash": render::hash_bytes(&status.head_hash).to_hex(),
                    "pending": status.pending,
                    "cut_outgoing": status.cut_outgoing,
                    "cut_incoming": status.cut_incoming,
                    "uptime_ms": status.uptime_ms,
                    "in_flight": status.in_flight,
                    "genesis_hash": render::hash_bytes(&status.genesis_hash).to_hex(),
                    "cpu_time_us": status.cpu_time_us,
                    "secure": status.secure,
                    "signed_transfers": status.signed_transfers,
                }),
                Err(error) => json!({ "node": node, "up": false, "error": error.to_string() }),
            })
            .collect();
        let _ = render::json(terminal.out, &json!({ "nodes": nodes }));
    } else {
        let mut table = Table::new(&[
            "NODE", "STATE", "ROLE", "LEADER", "PROMISED", "HEIGHT", "HEAD", "PENDING", "CUT",
        ]);
        for (node, result) in &results {
            match result {
                Ok(status) => table.row(vec![
                    node.to_string(),
                    if status.quorum_connected {
                        "up"
                    } else {
                        "up (no quorum)"
                    }
                    .to_string(),
                    role(status).to_string(),
                    status
                        .leader
                        .as_ref()
                        .map_or("-".to_string(), |ballot| ballot.node.to_string()),
                    render::ballot(status.promised.as_ref()),
                    status.height.to_string(),
                    render::short(&render::hash_bytes(&status.head_hash)),
                    status.pending.to_string(),
                    cuts(status),
                ]),
                Err(error) => {
                    table.row(vec![node.to_string(), "down".to_string()]);
                    let _ = writeln!(terminal.err, "warning: {error}");
                }
            }
        }
        let _ = table.write(terminal.out);
        let open: Vec<String> = results
            .iter()
            .filter(|(_, result)| result.as_ref().is_ok_and(|status| !status.secure))
            .map(|(node, _)| node.to_string())
            .collect();
        if !open.is_empty() {
            let _ = writeln!(
                terminal.err,
                "warning: node {} runs open (no --secrets): any caller can speak Paxos to it, inject faults and move any account's money",
                open.join(", ")
            );
        }
    }
    if reachable == 0 {
        exit::UNREACHABLE
    } else {
        exit::OK
    }
}
