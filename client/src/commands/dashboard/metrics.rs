//! Throughput and commit latency for the page's chart, from each node's Prometheus counters:
//! transfers committed, and the commit-latency histogram, differenced once a second and summed
//! over the nodes (each counts the transfers clients handed to it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benmo_paxos::NodeId;
use serde_json::json;

use super::{unix_ms, Shared, STATS_INTERVAL};

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);
/// The counter of committed transfers.
const COMMITTED: &str = "benmo_transfers_total{outcome=\"committed\"}";
/// The commit-latency histogram's buckets.
const LATENCY_BUCKET: &str = "benmo_commit_latency_seconds_bucket{le=\"";

/// What one scrape of a node read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// Transfers committed since the node started.
    pub committed: f64,
    /// The latency histogram: (upper bound in seconds, cumulative count), by bound.
    pub buckets: Vec<(f64, f64)>,
}

/// Reads the counters the chart needs from a Prometheus text exposition.
pub fn parse(text: &str) -> Reading {
    let mut reading = Reading::default();
    for line in text.lines() {
        if let Some(value) = line.strip_prefix(COMMITTED) {
            reading.committed = value.trim().parse().unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix(LATENCY_BUCKET) {
            let Some((bound, value)) = rest.split_once("\"}") else {
                continue;
            };
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().unwrap_or(f64::NAN)
            };
            if let Ok(count) = value.trim().parse::<f64>() {
                if !bound.is_nan() {
                    reading.buckets.push((bound, count));
                }
            }
        }
    }
    reading
        .buckets
        .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    reading
}

/// What happened between two readings of one node; a node that restarted counts from zero.
pub fn since(before: Option<&Reading>, now: &Reading) -> Reading {
    let before = match before {
        Some(before) if before.committed <= now.committed => before,
        _ => return now.clone(),
    };
    let buckets = now
        .buckets
        .iter()
        .map(|(bound, count)| {
            let old = before
                .buckets
                .iter()
                .find(|(old_bound, _)| old_bound == bound)
                .map_or(0.0, |(_, old)| *old);
            (*bound, (count - old).max(0.0))
        })
        .collect();
    Reading {
        committed: now.committed - before.committed,
        buckets,
    }
}

/// Adds two nodes' differences.
fn add(total: &mut Reading, more: &Reading) {
    total.committed += more.committed;
    for (bound, count) in &more.buckets {
        match total.buckets.iter_mut().find(|(old, _)| old == bound) {
            Some((_, old)) => *old += count,
            None => total.buckets.push((*bound, *count)),
        }
    }
    total
        .buckets
        .sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
}

/// The `q` quantile of a cumulative histogram, in seconds, interpolated within its bucket (as
/// Prometheus' `histogram_quantile` does); `None` if it is empty.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (bound, count) in buckets {
        if *count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let within = count - lower.1;
            let share = if within > 0.0 {
                (rank - lower.1) / within
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (*bound, *count);
    }
    Some(lower.0)
}

/// Where `node`'s metrics are: its gRPC host, at its gRPC port plus the offset.
fn metrics_address(shared: &Shared, node: NodeId) -> Option<String> {
    let address = shared.nodes.address(node);
    let authority = address.split("://").nth(1).unwrap_or(&address);
    let authority = authority.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    Some(format!(
        "{host}:{}",
        port.checked_add(shared.metrics_port_offset)?
    ))
}

/// Publishes a `stats` event once a second for as long as the dashboard runs.
pub async fn sample(shared: Arc<Shared>) {
    let mut previous: BTreeMap<NodeId, Reading> = BTreeMap::new();
    let mut last = Instant::now();
    let mut leader: Option<NodeId> = None;
    let mut interval = tokio::time::interval(STATS_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let statuses = shared.hub.statuses();
        let mut scrapes = tokio::task::JoinSet::new();
        for (node, _) in &statuses {
            if let Some(address) = metrics_address(&shared, *node) {
                let node = *node;
                scrapes.spawn(async move {
                    let text = super::http_get(&address, "/metrics", SCRAPE_TIMEOUT).await;
                    (node, text.ok())
                });
            }
        }
        let mut total = Reading::default();
        while let Some(Ok((node, text))) = scrapes.join_next().await {
            let Some(text) = text else { continue };
            let now = parse(&text);
            add(&mut total, &since(previous.get(&node), &now));
            previous.insert(node, now);
        }
        let elapsed = last.elapsed().as_secs_f64().max(0.001);
        last = Instant::now();
        let now_leader = super::super::route::choose(&statuses)
            .filter(|route| route.reason == super::super::route::Reason::Leader)
            .map(|route| route.node);
        if now_leader != leader {
            let text = match now_leader {
                Some(node) => format!("node {node} leads, followed by a quorum"),
                None => "no leader a quorum follows".to_string(),
            };
            shared.hub.log(0, "info", text);
            leader = now_leader;
        }
        let up = statuses.len();
        let cut = statuses
            .iter()
            .any(|(_, status)| !status.cut_outgoing.is_empty() || !status.cut_incoming.is_empty());
        let fault = up < shared.nodes.ids().len() || cut;
        let height = statuses.iter().map(|(_, status)| status.height).max();
        let ms = |seconds: Option<f64>| seconds.map(|seconds| seconds * 1_000.0);
        shared.hub.publish(
            "stats",
            json!({
                "unix_ms": unix_ms(),
                "committed_per_s": total.committed / elapsed,
                "latency_p50_ms": ms(quantile(&total.buckets, 0.5)),
                "latency_p99_ms": ms(quantile(&total.buckets, 0.99)),
                "leader": leader,
                "fault": fault,
                "height": height,
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP benmo_transfers_total Transfers.\n\
        benmo_transfers_total{outcome=\"committed\"} 10\n\
        benmo_transfers_total{outcome=\"rejected\"} 3\n\
        benmo_commit_latency_seconds_bucket{le=\"0.001\"} 2\n\
        benmo_commit_latency_seconds_bucket{le=\"0.002\"} 8\n\
        benmo_commit_latency_seconds_bucket{le=\"+Inf\"} 10\n";

    #[test]
    fn a_scrape_reads_the_committed_counter_and_the_latency_buckets() {
        let reading = parse(TEXT);
        assert_eq!(reading.committed, 10.0);
        assert_eq!(
            reading.buckets,
            vec![(0.001, 2.0), (0.002, 8.0), (f64::INFINITY, 10.0)]
        );
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let buckets = parse(TEXT).buckets;
        // The 5th of 10 lies half-way through the (1 ms, 2 ms] bucket's six.
        let p50 = quantile(&buckets, 0.5).unwrap();
        assert!((p50 - 0.0015).abs() < 1e-9, "{p50}");
        // Beyond the last finite bound, the bound is all we know.
        assert_eq!(quantile(&buckets, 0.99), Some(0.002));
        assert_eq!(quantile(&[(0.001, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
    }

    #[test]
    fn differences_restart_from_zero_when_a_node_did() {
        let before = parse(TEXT);
        let mut now = before.clone();
        now.committed = 15.0;
        now.buckets[2].1 = 15.0;
        let delta = since(Some(&before), &now);
        assert_eq!(delta.committed, 5.0);
        assert_eq!(delta.buckets[2], (f64::INFINITY, 5.0));
        let restarted = Reading {
            committed: 1.0,
            buckets: vec![(f64::INFINITY, 1.0)],
        };
        assert_eq!(since(Some(&before), &restarted), restarted);
    }
}
