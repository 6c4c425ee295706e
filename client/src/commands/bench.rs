//! `benmoctl bench`: concurrent clients, each with one transfer in flight, for a fixed time.
//! Reports committed transfers per second and commit latency percentiles; transfers the ledger
//! rejected (insufficient funds) are counted apart from errors.

use std::time::{Duration, Instant};

use benmo::proto;
use benmo::proto::ledger_service_client::LedgerServiceClient;
use benmo::proto::transfer_reply::Result as Reply;
use benmo_paxos::{NodeId, Outcome};
use rand::{Rng, RngCore};
use serde_json::json;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use std::sync::Arc;

use super::signer::Signer;
use super::{route, Context};
use crate::cli::{BenchArgs, Format};
use crate::connect::Nodes;
use crate::render;
use crate::{exit, Terminal};

/// How long one bench transfer may wait for its commit.
const TRANSFER_TIMEOUT_MS: u32 = 10_000;
/// How long a client waits after an error before its next transfer.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    rejected: u64,
    pending: u64,
    errors: u64,
}

#[allow(clippy::too_many_arguments)]
async fn client(
    mut ledger: LedgerServiceClient<Channel>,
    accounts: u32,
    debitable: Vec<NodeId>,
    signer: Arc<Signer>,
    amount: u64,
    prefix: String,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut sequence = 0u64;
    while Instant::now() < deadline {
        sequence += 1;
        let (from, to) = {
            let mut rng = rand::rng();
            let from = debitable[rng.random_range(0..debitable.len())];
            let mut to = rng.random_range(1..accounts);
            if to >= from {
                to += 1;
            }
            (from, to)
        };
        let mut transfer = proto::Transfer {
            id: format!("{prefix}-{sequence}"),
            from,
            to,
            amount,
            signature: Vec::new(),
        };
        if signer.sign(&mut transfer).is_err() {
            tally.errors += 1;
            continue;
        }
        let request = proto::TransferRequest {
            transfer: Some(transfer),
            timeout_ms: TRANSFER_TIMEOUT_MS,
        };
        let started = Instant::now();
        match ledger
            .transfer(request)
            .await
            .map(|response| response.into_inner().result)
        {
            Ok(Some(Reply::Committed(committed))) => {
                let applied = matches!(
                    committed.outcome.map(Outcome::try_from),
                    Some(Ok(Outcome::Applied))
                );
                if applied {
                    tally
                        .latencies_us
                        .push(started.elapsed().as_micros() as u64);
                } else {
                    tally.rejected += 1;
                }
            }
            Ok(Some(Reply::Pending(_))) => tally.pending += 1,
            Ok(None) | Err(_) => {
                tally.errors += 1;
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    tally
}

fn percentile(sorted: &[u64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * quantile).round() as usize;
    sorted[index] as f64 / 1_000.0
}

pub async fn run(context: &Context, arguments: BenchArgs, terminal: &mut Terminal<'_>) -> i32 {
    if let Some(rounds) = arguments.failover_rounds {
        return failover(
            context,
            rounds,
            arguments.restart_command.as_deref(),
            terminal,
        )
        .await;
    }
    match (arguments.catch_up_blocks, &arguments.restart_command) {
        (Some(blocks), Some(command)) => return catch_up(context, blocks, command, terminal).await,
        (None, Some(_)) => {
            let _ = writeln!(
                terminal.err,
                "error: --restart-command goes with --failover-rounds or --catch-up-blocks"
            );
            return exit::USAGE;
        }
        _ => {}
    }
    let accounts = context.nodes.cluster().size();
    if accounts < 2 {
        let _ = writeln!(terminal.err, "error: a bench needs at least two accounts");
        return exit::USAGE;
    }
    // All load goes where a transfer would: the leader a quorum follows (or --node).
    let Some(found) = route::find(context).await else {
        let _ = writeln!(terminal.err, "error: no node could be reached");
        return exit::UNREACHABLE;
    };
    let route = found.route;
    let signer = Arc::new(Signer::new(context, &found.status));
    let debitable: Vec<NodeId> = (1..=accounts)
        .filter(|account| signer.can_debit(*account))
        .collect();
    if debitable.is_empty() {
        let _ = writeln!(
            terminal.err,
            "error: this cluster takes only signed transfers, and benmoctl holds no account key (point --secrets or BENMO_SECRETS at the cluster's secrets)"
        );
        return exit::USAGE;
    }
    let _ = writeln!(
        terminal.err,
        "bench: {} clients for {} s against node {} ({})",
        arguments.clients,
        arguments.duration_s,
        route.node,
        route.reason.describe()
    );
    let cpu_before = server_cpu_us(context).await;
    let run = format!("bench-{:08x}", rand::rng().next_u32());
    let duration = Duration::from_secs(arguments.duration_s);
    let started = Instant::now();
    let deadline = started + duration;
    let progress = tokio::spawn(report_progress(
        context.nodes.clone(),
        route.node,
        started,
        duration,
        context.format,
    ));
    // As etcd's benchmark tool does, the clients share a few HTTP/2 connections: one per client
    // would cost the node a socket, and wake-ups, per client.
    let mut connections = Vec::new();
    for _ in 0..arguments.conns {
        match context
            .nodes
            .ledger_with_timeout(route.node, Duration::from_secs(15))
        {
            Ok(ledger) => connections.push(ledger),
            Err(error) => {
                let _ = writeln!(terminal.err, "error: {error}");
                return exit::UNREACHABLE;
            }
        }
    }
    let mut tasks = JoinSet::new();
    for index in 0..arguments.clients {
        tasks.spawn(client(
            connections[(index % arguments.conns) as usize].clone(),
            accounts,
            debitable.clone(),
            signer.clone(),
            arguments.amount,
            format!("{run}-{index}"),
            deadline,
        ));
    }
    let mut total = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(tally) = joined {
            total.latencies_us.extend(tally.latencies_us);
            total.rejected += tally.rejected;
            total.pending += tally.pending;
            total.errors += tally.errors;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    progress.abort();
    let cpu_after = server_cpu_us(context).await;
    total.latencies_us.sort_unstable();
    let committed = total.latencies_us.len() as u64;
    let decided = committed + total.rejected;
    let throughput = committed as f64 / elapsed;
    let (p50, p90, p99, max) = (
        percentile(&total.latencies_us, 0.5),
        percentile(&total.latencies_us, 0.9),
        percentile(&total.latencies_us, 0.99),
        percentile(&total.latencies_us, 1.0),
    );
    // Server CPU per decided transfer, over the nodes that answered both before and after.
    let cpu_us_per_op = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if decided > 0 && after >= before => {
            Some((after - before) as f64 / decided as f64)
        }
        _ => None,
    };
    if context.format == Format::Json {
        let _ = render::json(
            terminal.out,
            &json!({
                "clients": arguments.clients,
                "node": route.node,
                "duration_s": elapsed,
                "committed": committed,
                "rejected": total.rejected,
                "pending": total.pending,
                "errors": total.errors,
                "throughput_per_s": throughput,
                "ops_per_s": decided as f64 / elapsed,
                "latency_ms_p50": p50,
                "latency_ms_p90": p90,
                "latency_ms_p99": p99,
                "latency_ms_max": max,
                "server_cpu_us_per_op": cpu_us_per_op,
            }),
        );
    } else {
        let cpu = cpu_us_per_op.map_or("unknown (a node did not answer)".to_string(), |cpu| {
            format!("{cpu:.0} µs per transfer")
        });
        let _ = writeln!(
            terminal.out,
            "{} clients for {elapsed:.1} s against node {}: {committed} committed ({throughput:.0}/s), {} rejected by the ledger, {} errors, {} not committed in time\nlatency: p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, max {max:.2} ms\nserver CPU: {cpu}",
            arguments.clients, route.node, total.rejected, total.errors, total.pending
        );
    }
    if committed == 0 {
        exit::FAILED
    } else {
        exit::OK
    }
}

/// The CPU time every node's process used so far, summed, in µs; `None` if a node did not
/// answer (the sum would mean nothing).
async fn server_cpu_us(context: &Context) -> Option<u64> {
    let nodes = context.nodes.clone();
    let answers = super::on_every_node(&context.nodes.ids(), move |node| {
        let nodes = nodes.clone();
        async move {
            let mut client = nodes.ledger(node)?;
            client
                .status(proto::StatusRequest {})
                .await
                .map(|response| response.into_inner().cpu_time_us)
                .map_err(|status| nodes.error(node, status))
        }
    })
    .await;
    answers
        .into_iter()
        .map(|(_, answer)| answer.ok())
        .sum::<Option<u64>>()
}

/// Prints the chain's height and the commits per second once a second on stderr while a table
/// bench runs, so a long run shows it is alive.
async fn report_progress(
    nodes: Nodes,
    node: NodeId,
    started: Instant,
    duration: Duration,
    format: Format,
) {
    if format == Format::Json {
        return;
    }
    let mut last: Option<(Instant, u64)> = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let Ok(mut client) = nodes.ledger(node) else {
            return;
        };
        let Ok(status) = client.status(proto::StatusRequest {}).await else {
            continue;
        };
        let status = status.into_inner();
        let now = Instant::now();
        if let Some((at, blocks)) = last {
            let rate = status.height.saturating_sub(blocks) as f64 / (now - at).as_secs_f64();
            eprintln!(
                "  {:>4.0} s of {} s: height {}, {rate:.0} blocks/s",
                started.elapsed().as_secs_f64(),
                duration.as_secs(),
                status.height
            );
        }
        last = Some((now, status.height));
    }
}

/// A signer for the cluster, from the status of a node that answers.
async fn cluster_signer(context: &Context) -> Option<Arc<Signer>> {
    let found = route::find(context).await?;
    Some(Arc::new(Signer::new(context, &found.status)))
}

/// How long failover rounds wait for a leader, or for a restarted node to answer.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(30);

/// The node that leads with the highest ballot, and a node that is up and does not lead.
async fn leader_and_survivor(context: &Context) -> Option<(NodeId, NodeId)> {
    let statuses = super::status::fetch(context).await;
    let up: Vec<(NodeId, &proto::StatusReply)> = statuses
        .iter()
        .filter_map(|(node, result)| result.as_ref().ok().map(|status| (*node, status)))
        .collect();
    let leader = up
        .iter()
        .filter(|(_, status)| status.role == proto::Role::Leader as i32)
        .max_by_key(|(_, status)| status.ballot.map(|ballot| (ballot.round, ballot.node)))
        .map(|(node, _)| *node)?;
    let survivor = up
        .iter()
        .map(|(node, _)| *node)
        .find(|node| *node != leader)?;
    Some((leader, survivor))
}

async fn wait_for<T, F, Fut>(mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    while started.elapsed() < FAILOVER_PATIENCE {
        if let Some(value) = probe().await {
            return Some(value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Crashes the leader `rounds` times and times how long until a transfer sent right after each
/// crash commits at a surviving node: detection, election and the commit itself.
async fn failover(
    context: &Context,
    rounds: u32,
    restart_command: Option<&str>,
    terminal: &mut Terminal<'_>,
) -> i32 {
    let nodes = context.nodes.cluster().size();
    if restart_command.is_none() && rounds > (nodes - 1) / 2 {
        let _ = writeln!(
            terminal.err,
            "error: {rounds} rounds would crash a majority of {nodes} nodes; pass --restart-command to bring each crashed leader back"
        );
        return exit::USAGE;
    }
    let Some(signer) = cluster_signer(context).await else {
        let _ = writeln!(terminal.err, "error: no node could be reached");
        return exit::UNREACHABLE;
    };
    let run = format!("failover-{:08x}", rand::rng().next_u32());
    let mut times_ms = Vec::new();
    for round in 1..=rounds {
        let Some((leader, survivor)) = wait_for(|| leader_and_survivor(context)).await else {
            let _ = writeln!(
                terminal.err,
                "error: round {round}: no leader within {} s",
                FAILOVER_PATIENCE.as_secs()
            );
            return exit::FAILED;
        };
        let accounts = (1..=nodes)
            .filter(|node| *node != leader && signer.can_debit(*node))
            .take(2)
            .collect::<Vec<_>>();
        if accounts.len() < 2 {
            let _ = writeln!(
                terminal.err,
                "error: this cluster takes only signed transfers, and benmoctl holds too few account keys"
            );
            return exit::USAGE;
        }
        if let Ok(mut faults) = context.nodes.faults(leader) {
            let _ = faults.crash(proto::CrashRequest {}).await;
        }
        let crashed = Instant::now();
        let mut transfer = proto::Transfer {
            id: format!("{run}-{round}"),
            from: accounts[0],
            to: accounts[1],
            amount: 1,
            signature: Vec::new(),
        };
        let _ = signer.sign(&mut transfer);
        let request = proto::TransferRequest {
            transfer: Some(transfer),
            timeout_ms: FAILOVER_PATIENCE.as_millis() as u32,
        };
        let reply = match context
            .nodes
            .ledger_with_timeout(survivor, FAILOVER_PATIENCE + Duration::from_secs(5))
        {
            Ok(mut client) => client
                .transfer(request)
                .await
                .map(|response| response.into_inner().result),
            Err(error) => {
                let _ = writeln!(terminal.err, "error: {error}");
                return exit::UNREACHABLE;
            }
        };
        let elapsed_ms = crashed.elapsed().as_secs_f64() * 1_000.0;
        match reply {
            Ok(Some(Reply::Committed(_))) => {
                let _ = writeln!(
                    terminal.err,
                    "round {round}: crashed leader node {leader}; a transfer at node {survivor} committed {elapsed_ms:.0} ms later"
                );
                times_ms.push(elapsed_ms);
            }
            other => {
                let _ = writeln!(
                    terminal.err,
                    "error: round {round}: the transfer after the crash did not commit: {other:?}"
                );
                return exit::FAILED;
            }
        }
        if let Some(command) = restart_command {
            if let Err(message) = restart(context, leader, command).await {
                let _ = writeln!(terminal.err, "error: {message}");
                return exit::FAILED;
            }
        }
    }
    times_ms.sort_by(f64::total_cmp);
    let median = times_ms[times_ms.len() / 2];
    let (min, max) = (times_ms[0], times_ms[times_ms.len() - 1]);
    if context.format == Format::Json {
        let _ = render::json(
            terminal.out,
            &json!({ "rounds": rounds, "failover_ms": times_ms, "failover_ms_median": median, "failover_ms_min": min, "failover_ms_max": max }),
        );
    } else {
        let _ = writeln!(
            terminal.out,
            "failover after a leader crash, {rounds} rounds: median {median:.0} ms, min {min:.0} ms, max {max:.0} ms"
        );
    }
    exit::OK
}

/// Runs the restart command for `node` and waits until the node answers.
async fn restart(context: &Context, node: NodeId, command: &str) -> Result<(), String> {
    let command = command.replace("{node}", &node.to_string());
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .status()
        .await;
    if !matches!(status, Ok(status) if status.success()) {
        return Err(format!("restart command {command:?} failed: {status:?}"));
    }
    match wait_for(|| height_of(context, node)).await {
        Some(_) => Ok(()),
        None => Err(format!("node {node} did not come back after {command:?}")),
    }
}

async fn height_of(context: &Context, node: NodeId) -> Option<u64> {
    let mut client = context.nodes.ledger(node).ok()?;
    client
        .status(proto::StatusRequest {})
        .await
        .ok()
        .map(|response| response.into_inner().height)
}

/// Crashes a follower, commits at least `blocks` blocks without it, restarts it, and times how
/// long it takes to reach the height the cluster had when it came back.
async fn catch_up(
    context: &Context,
    blocks: u64,
    restart_command: &str,
    terminal: &mut Terminal<'_>,
) -> i32 {
    let Some((leader, follower)) = wait_for(|| leader_and_survivor(context)).await else {
        let _ = writeln!(
            terminal.err,
            "error: no leader within {} s",
            FAILOVER_PATIENCE.as_secs()
        );
        return exit::FAILED;
    };
    if let Ok(mut faults) = context.nodes.faults(follower) {
        let _ = faults.crash(proto::CrashRequest {}).await;
    }
    let Some(start) = height_of(context, leader).await else {
        let _ = writeln!(terminal.err, "error: node {leader} stopped answering");
        return exit::UNREACHABLE;
    };
    let goal = start + blocks;
    let accounts = context.nodes.cluster().size();
    let Some(signer) = cluster_signer(context).await else {
        let _ = writeln!(terminal.err, "error: no node could be reached");
        return exit::UNREACHABLE;
    };
    let run = format!("catch-up-{:08x}", rand::rng().next_u32());
    // A small concurrent load at the leader: many blocks of few transfers each.
    let mut tasks = JoinSet::new();
    for index in 0..4u64 {
        let nodes = context.nodes.clone();
        let run = run.clone();
        let signer = signer.clone();
        tasks.spawn(async move {
            let Ok(mut ledger) = nodes.ledger_with_timeout(leader, Duration::from_secs(15)) else {
                return;
            };
            for sequence in 0u64.. {
                let from = ((index + sequence) % u64::from(accounts)) as u32 + 1;
                let to = from % accounts + 1;
                let mut transfer = proto::Transfer {
                    id: format!("{run}-{index}-{sequence}"),
                    from,
                    to,
                    amount: 1,
                    signature: Vec::new(),
                };
                if signer.sign(&mut transfer).is_err() {
                    return;
                }
                let request = proto::TransferRequest {
                    transfer: Some(transfer),
                    timeout_ms: TRANSFER_TIMEOUT_MS,
                };
                match ledger
                    .transfer(request)
                    .await
                    .map(|response| response.into_inner().result)
                {
                    Ok(Some(Reply::Committed(committed))) if committed.height >= goal => return,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let Some(target) = height_of(context, leader)
        .await
        .filter(|height| *height >= goal)
    else {
        let _ = writeln!(
            terminal.err,
            "error: the cluster did not reach height {goal} without node {follower}"
        );
        return exit::FAILED;
    };
    let restarted = Instant::now();
    if let Err(message) = restart(context, follower, restart_command).await {
        let _ = writeln!(terminal.err, "error: {message}");
        return exit::FAILED;
    }
    let serving_ms = restarted.elapsed().as_secs_f64() * 1_000.0;
    let caught_up = wait_for(|| async {
        height_of(context, follower)
            .await
            .filter(|height| *height >= target)
    })
    .await;
    if caught_up.is_none() {
        let _ = writeln!(
            terminal.err,
            "error: node {follower} did not reach height {target}"
        );
        return exit::FAILED;
    }
    let elapsed = restarted.elapsed().as_secs_f64();
    let missed = target - start;
    let rate = missed as f64 / elapsed;
    if context.format == Format::Json {
        let _ = render::json(
            terminal.out,
            &json!({ "node": follower, "blocks_missed": missed, "serving_ms": serving_ms, "caught_up_ms": elapsed * 1_000.0, "blocks_per_s": rate }),
        );
    } else {
        let _ = writeln!(
            terminal.out,
            "node {follower} missed {missed} blocks; after its restart it served again in {serving_ms:.0} ms and was at height {target} in {:.0} ms ({rate:.0} blocks/s, restart included)",
            elapsed * 1_000.0
        );
    }
    exit::OK
}
