//! `benmoctl crash`, `sever`, `heal` and `partition`: faults on command.

use std::collections::BTreeSet;
use std::time::Duration;

use benmo::proto;
use benmo_paxos::NodeId;
use serde_json::json;

use super::Context;
use crate::cli::{Format, HealArgs};
use crate::connect::CallError;
use crate::render;
use crate::{exit, Terminal};

/// How many times `crash` looks for the node to be gone, and how long it waits between looks.
const CRASH_CHECKS: u32 = 20;
const CRASH_CHECK_INTERVAL: Duration = Duration::from_millis(100);

fn check_node(context: &Context, node: NodeId, terminal: &mut Terminal<'_>) -> Result<(), i32> {
    if context.nodes.cluster().contains(node) {
        return Ok(());
    }
    let _ = writeln!(
        terminal.err,
        "error: node {node} is not in the cluster (nodes are 1..={})",
        context.nodes.cluster().size()
    );
    Err(exit::USAGE)
}

/// Checks that `a` and `b` name a link: two different nodes of the cluster.
fn check_link(
    context: &Context,
    a: NodeId,
    b: NodeId,
    terminal: &mut Terminal<'_>,
) -> Result<(), i32> {
    check_node(context, a, terminal)?;
    check_node(context, b, terminal)?;
    if a == b {
        let _ = writeln!(
            terminal.err,
            "error: a node has no link to itself ({a} and {b})"
        );
        return Err(exit::USAGE);
    }
    Ok(())
}

async fn is_up(context: &Context, node: NodeId) -> Result<bool, CallError> {
    let mut client = context.nodes.ledger(node)?;
    match client.status(proto::StatusRequest {}).await {
        Ok(_) => Ok(true),
        Err(status) => match context.nodes.error(node, status) {
            error if error.is_unreachable() => Ok(false),
            error => Err(error),
        },
    }
}

pub async fn crash(context: &Context, node: NodeId, terminal: &mut Terminal<'_>) -> i32 {
    if let Err(code) = check_node(context, node, terminal) {
        return code;
    }
    match is_up(context, node).await {
        Ok(true) => {}
        Ok(false) => {
            let _ = writeln!(
                terminal.err,
                "error: node {node} is not reachable at {}: already down?",
                context.nodes.address(node)
            );
            return exit::UNREACHABLE;
        }
        Err(error) => {
            let _ = writeln!(terminal.err, "error: {error}");
            return exit::FAILED;
        }
    }
    if let Ok(mut client) = context.nodes.faults(node) {
        // The node dies while it takes the call, so the call itself fails; what counts is below.
        // A refusal, though, is the node's answer: it did not crash, and says why.
        if let Err(status) = client.crash(proto::CrashRequest {}).await {
            if matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ) {
                let _ = writeln!(terminal.err, "error: {}", context.nodes.error(node, status));
                return exit::FAILED;
            }
        }
    }
    // Down means unreachable at two looks in a row: by the second, the process has been gone
    // for a check interval, long enough for a supervisor (Docker) to have seen it exit, so a
    // `docker compose start` typed next really starts it.
    let mut down_looks = 0;
    for _ in 0..CRASH_CHECKS {
        down_looks = match is_up(context, node).await {
            Ok(false) => down_looks + 1,
            _ => 0,
        };
        if down_looks == 2 {
            if context.format == Format::Json {
                let _ = render::json(terminal.out, &json!({ "node": node, "crashed": true }));
            } else {
                let _ = writeln!(terminal.out, "node {node} crashed");
            }
            return exit::OK;
        }
        tokio::time::sleep(CRASH_CHECK_INTERVAL).await;
    }
    let _ = writeln!(
        terminal.err,
        "error: node {node} still answers after the crash request"
    );
    exit::FAILED
}

/// Applies one switch on one node; returns the node's cut links after it, or an error.
async fn switch(
    context: &Context,
    node: NodeId,
    peer: NodeId,
    direction: proto::Direction,
    sever: bool,
) -> Result<proto::LinksReply, CallError> {
    let mut client = context.nodes.faults(node)?;
    let reply = if sever {
        client
            .sever(proto::SeverRequest {
                peer,
                direction: direction as i32,
            })
            .await
    } else {
        client
            .heal(proto::HealRequest {
                peer,
                direction: direction as i32,
            })
            .await
    };
    reply
        .map(|response| response.into_inner())
        .map_err(|status| context.nodes.error(node, status))
}

/// Runs a list of switches, reporting each node that could not be reached; returns the exit code.
async fn switches(
    context: &Context,
    plan: &[(NodeId, NodeId, proto::Direction, bool)],
    done: &str,
    terminal: &mut Terminal<'_>,
) -> i32 {
    let mut failed: BTreeSet<NodeId> = BTreeSet::new();
    let mut refused = false;
    for (node, peer, direction, sever) in plan {
        if failed.contains(node) {
            continue;
        }
        if let Err(error) = switch(context, *node, *peer, *direction, *sever).await {
            let _ = writeln!(terminal.err, "warning: {error}");
            refused |= !error.is_unreachable();
            failed.insert(*node);
        }
    }
    let applied: Vec<NodeId> = plan
        .iter()
        .map(|(node, ..)| *node)
        .filter(|node| !failed.contains(node))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if context.format == Format::Json {
        let _ = render::json(
            terminal.out,
            &json!({ "done": done, "applied_on": applied, "unreachable": failed }),
        );
    } else if failed.is_empty() {
        let _ = writeln!(terminal.out, "{done}");
    } else {
        let _ = writeln!(
            terminal.out,
            "{done}, on nodes {applied:?} only: nodes {failed:?} could not be reached"
        );
    }
    match (refused, failed.is_empty()) {
        (true, _) => exit::FAILED,
        (false, true) => exit::OK,
        (false, false) => exit::UNREACHABLE,
    }
}

pub async fn sever(
    context: &Context,
    a: NodeId,
    b: NodeId,
    one_way: bool,
    terminal: &mut Terminal<'_>,
) -> i32 {
    if let Err(code) = check_link(context, a, b, terminal) {
        return code;
    }
    use proto::Direction::{Both, Incoming, Outgoing};
    let (plan, done) = if one_way {
        (
            vec![(a, b, Outgoing, true), (b, a, Incoming, true)],
            format!("severed {a} -> {b} (one way)"),
        )
    } else {
        (
            vec![(a, b, Both, true), (b, a, Both, true)],
            format!("severed {a} <-> {b}"),
        )
    };
    switches(context, &plan, &done, terminal).await
}

pub async fn heal(context: &Context, arguments: HealArgs, terminal: &mut Terminal<'_>) -> i32 {
    use proto::Direction::Both;
    if arguments.all {
        let plan: Vec<_> = context
            .nodes
            .ids()
            .into_iter()
            .map(|node| (node, 0, Both, false))
            .collect();
        return switches(context, &plan, "healed every link", terminal).await;
    }
    let [a, b] = arguments.nodes[..] else {
        let _ = writeln!(terminal.err, "error: name two nodes, or pass --all");
        return exit::USAGE;
    };
    if let Err(code) = check_link(context, a, b, terminal) {
        return code;
    }
    let plan = vec![(a, b, Both, false), (b, a, Both, false)];
    switches(context, &plan, &format!("healed {a} <-> {b}"), terminal).await
}

/// Parses `1,2 3,4,5` into groups of known, distinct nodes.
fn parse_groups(context: &Context, groups: &[String]) -> Result<Vec<Vec<NodeId>>, String> {
    let mut seen = BTreeSet::new();
    let mut parsed = Vec::new();
    for group in groups {
        let mut members = Vec::new();
        for item in group
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let node: NodeId = item
                .parse()
                .map_err(|_| format!("{item:?} in {group:?} is not a node id"))?;
            if !context.nodes.cluster().contains(node) {
                return Err(format!(
                    "node {node} is not in the cluster (nodes are 1..={})",
                    context.nodes.cluster().size()
                ));
            }
            if !seen.insert(node) {
                return Err(format!("node {node} is in more than one group"));
            }
            members.push(node);
        }
        if members.is_empty() {
            return Err(format!("group {group:?} names no node"));
        }
        parsed.push(members);
    }
    Ok(parsed)
}

pub async fn partition(context: &Context, groups: &[String], terminal: &mut Terminal<'_>) -> i32 {
    let groups = match parse_groups(context, groups) {
        Ok(groups) => groups,
        Err(message) => {
            let _ = writeln!(terminal.err, "error: {message}");
            return exit::USAGE;
        }
    };
    use proto::Direction::Both;
    let mut plan = Vec::new();
    for node in context.nodes.ids() {
        plan.push((node, 0, Both, false));
        let own = groups.iter().position(|group| group.contains(&node));
        for (index, group) in groups.iter().enumerate() {
            if own.is_some() && own != Some(index) {
                for peer in group {
                    plan.push((node, *peer, Both, true));
                }
            }
        }
    }
    let shape: Vec<String> = groups
        .iter()
        .map(|group| {
            let members: Vec<String> = group.iter().map(ToString::to_string).collect();
            format!("{{{}}}", members.join(","))
        })
        .collect();
    let done = format!("partitioned {}", shape.join(" | "));
    switches(context, &plan, &done, terminal).await
}
