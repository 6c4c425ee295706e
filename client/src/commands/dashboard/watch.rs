//! One `Watch` stream per node: its events become the page's `node`, `messages` and `log`
//! events. A stream that breaks means the node is down (or restarting) until a new one opens.

use std::sync::Arc;
use std::time::Duration;

use benmo::proto;
use benmo::proto::watch_event::Kind;
use benmo_paxos::NodeId;
use serde_json::{json, Value};

use super::{unix_ms, Shared};
use crate::render;

/// How long to wait before watching a node again after its stream broke.
const RETRY_AFTER: Duration = Duration::from_millis(250);
/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);
/// How often a node's event may reach the page when only its progress (height, pending) moved;
/// a change of role, leader, ballot or links goes at once.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// What of a status is more than progress.
fn shape(status: &proto::StatusReply) -> impl PartialEq {
    (
        status.role,
        status.leader,
        status.ballot,
        status.promised,
        status.quorum_connected,
        status.cut_outgoing.clone(),
        status.cut_incoming.clone(),
    )
}

/// Watches `node` for as long as the dashboard runs.
pub async fn watch_node(shared: Arc<Shared>, node: NodeId) {
    let mut down_for: Option<String> = None;
    loop {
        let reason = watch_once(&shared, node, &mut down_for).await;
        if down_for.as_deref() != Some(reason.as_str()) {
            shared.hub.set_status(node, None);
            shared.hub.publish(
                "node",
                json!({ "id": node, "up": false, "reason": reason, "unix_ms": unix_ms() }),
            );
            if down_for.is_none() {
                shared.hub.log(node, "warn", format!("down: {reason}"));
            }
            down_for = Some(reason);
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

/// Follows one stream until it breaks; returns why it did.
async fn watch_once(shared: &Shared, node: NodeId, down_for: &mut Option<String>) -> String {
    let address = shared.nodes.address(node);
    // No call timeout: the stream lasts as long as the node does.
    let channel = match benmo::dial::channel(&address, CONNECT_TIMEOUT, None) {
        Ok(channel) => channel,
        Err(error) => return format!("bad address {address}: {error}"),
    };
    let mut client = proto::ledger_service_client::LedgerServiceClient::new(channel);
    let mut stream = match client.watch(proto::WatchRequest {}).await {
        Ok(response) => response.into_inner(),
        Err(status) => return shared.nodes.error(node, status).to_string(),
    };
    let mut shown: Option<(proto::StatusReply, std::time::Instant)> = None;
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => return "its event stream ended".to_string(),
            Err(status) => return shared.nodes.error(node, status).to_string(),
        };
        if down_for.take().is_some() {
            shared
                .hub
                .log(node, "info", "up: watching it again".to_string());
        }
        match event.kind {
            Some(Kind::Status(status)) => {
                let moved = shared
                    .hub
                    .current()
                    .statuses
                    .get(&node)
                    .is_none_or(|old| old.height != status.height);
                let due = match &shown {
                    None => true,
                    Some((old, at)) => {
                        shape(old) != shape(&status) || at.elapsed() >= PROGRESS_INTERVAL
                    }
                };
                if due {
                    shared
                        .hub
                        .publish("node", node_json(node, &status, event.unix_ms));
                    shown = Some((status.clone(), std::time::Instant::now()));
                }
                shared.hub.set_status(node, Some(status));
                if moved {
                    shared.hub.head_moved.notify_one();
                }
            }
            Some(Kind::Messages(messages)) => {
                shared
                    .hub
                    .publish("messages", messages_json(node, &messages));
            }
            Some(Kind::Block(_)) => shared.hub.head_moved.notify_one(),
            Some(Kind::Note(text)) => shared.hub.log(node, "info", text),
            Some(Kind::Dropped(count)) => shared.hub.log(
                node,
                "warn",
                format!("the dashboard fell behind this node: {count} events skipped"),
            ),
            None => {}
        }
    }
}

fn ballot_json(ballot: Option<&proto::Ballot>) -> Value {
    match ballot {
        Some(ballot) if ballot.node != 0 => json!({ "round": ballot.round, "node": ballot.node }),
        _ => Value::Null,
    }
}

/// A node's status as the page's `node` event.
pub fn node_json(node: NodeId, status: &proto::StatusReply, unix_ms: u64) -> Value {
    let head = render::hash_bytes(&status.head_hash);
    json!({
        "id": node,
        "up": true,
        "role": super::super::status::role(status),
        "leader": status.leader.as_ref().map(|ballot| ballot.node).filter(|node| *node != 0),
        "ballot": ballot_json(status.ballot.as_ref()),
        "promised": ballot_json(status.promised.as_ref()),
        "quorum_connected": status.quorum_connected,
        "height": status.height,
        "head": head.to_hex()[..8].to_string(),
        "pending": status.pending,
        "in_flight": status.in_flight,
        "cut_outgoing": status.cut_outgoing,
        "cut_incoming": status.cut_incoming,
        "uptime_ms": status.uptime_ms,
        "unix_ms": unix_ms,
    })
}

/// A kind of message in the page's words: `accept`, `heartbeat_reply`, ...
pub fn kind_name(kind: i32) -> String {
    proto::MessageKind::try_from(kind)
        .map(|kind| {
            kind.as_str_name()
                .trim_start_matches("MESSAGE_KIND_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "unknown".to_string())
}

/// A node's message counts as the page's `messages` event.
pub fn messages_json(node: NodeId, messages: &proto::MessageCounts) -> Value {
    let counts: Vec<Value> = messages
        .counts
        .iter()
        .map(|count| {
            json!({
                "to": count.to,
                "kind": kind_name(count.kind),
                "count": count.count,
                "failed": count.failed,
            })
        })
        .collect();
    json!({ "from": node, "window_ms": messages.window_ms, "counts": counts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_kinds_read_as_the_page_names_them() {
        assert_eq!(kind_name(proto::MessageKind::Accept as i32), "accept");
        assert_eq!(
            kind_name(proto::MessageKind::HeartbeatReply as i32),
            "heartbeat_reply"
        );
        assert_eq!(kind_name(999), "unknown");
    }

    #[test]
    fn a_status_names_its_cuts_and_leader() {
        let status = proto::StatusReply {
            node: 2,
            nodes: 5,
            role: proto::Role::Follower as i32,
            leader: Some(proto::Ballot { round: 7, node: 3 }),
            cut_outgoing: vec![4],
            cut_incoming: vec![],
            height: 12,
            ..Default::default()
        };
        let value = node_json(2, &status, 1);
        assert_eq!(value["role"], "follower");
        assert_eq!(value["leader"], 3);
        assert_eq!(value["ballot"], Value::Null);
        assert_eq!(value["cut_outgoing"], json!([4]));
        assert_eq!(value["height"], 12);
    }
}
