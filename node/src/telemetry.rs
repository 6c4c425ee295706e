//! What the node tells the outside about itself while it runs: Prometheus metrics, and the live
//! events `LedgerService.Watch` streams to dashboards.
//!
//! Everything here is fed from the core loop, the writer thread, the transport and the gRPC
//! handlers, and none of it may slow them: counters are atomics, and watch events go into a
//! bounded broadcast channel that never waits (a watcher that falls behind loses events and is
//! told how many).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use benmo::proto;
use benmo_paxos::{Block, Event, Message, NodeId};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::broadcast;
use tonic::codegen::http;

/// Watch events buffered for the slowest watcher before it starts losing them.
const WATCH_BUFFER_EVENTS: usize = 1_024;
/// How often message counts go to watchers.
pub const MESSAGE_COUNTS_EVERY: Duration = Duration::from_millis(100);
/// Blocks sent to watchers one by one per message-count window; beyond it, status heights tell.
const BLOCK_EVENTS_PER_WINDOW: u32 = 8;

/// The kinds of traffic counted per peer (the proto's `MessageKind`, without the unspecified).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Kind {
    Heartbeat,
    HeartbeatReply,
    Prepare,
    Promise,
    Accept,
    Accepted,
    Decide,
    Nack,
    Forward,
    Fetch,
}

impl Kind {
    const ALL: [Kind; 10] = [
        Kind::Heartbeat,
        Kind::HeartbeatReply,
        Kind::Prepare,
        Kind::Promise,
        Kind::Accept,
        Kind::Accepted,
        Kind::Decide,
        Kind::Nack,
        Kind::Forward,
        Kind::Fetch,
    ];

    /// The kind of a Paxos message.
    pub fn of(message: &Message) -> Kind {
        match message {
            Message::Heartbeat(_) => Kind::Heartbeat,
            Message::HeartbeatReply(_) => Kind::HeartbeatReply,
            Message::Prepare(_) => Kind::Prepare,
            Message::Promise(_) => Kind::Promise,
            Message::Accept(_) => Kind::Accept,
            Message::Accepted(_) => Kind::Accepted,
            Message::Decide(_) => Kind::Decide,
            Message::Nack(_) => Kind::Nack,
            Message::Forward(_) => Kind::Forward,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Heartbeat => "heartbeat",
            Kind::HeartbeatReply => "heartbeat_reply",
            Kind::Prepare => "prepare",
            Kind::Promise => "promise",
            Kind::Accept => "accept",
            Kind::Accepted => "accepted",
            Kind::Decide => "decide",
            Kind::Nack => "nack",
            Kind::Forward => "forward",
            Kind::Fetch => "fetch",
        }
    }

    fn proto(self) -> proto::MessageKind {
        match self {
            Kind::Heartbeat => proto::MessageKind::Heartbeat,
            Kind::HeartbeatReply => proto::MessageKind::HeartbeatReply,
            Kind::Prepare => proto::MessageKind::Prepare,
            Kind::Promise => proto::MessageKind::Promise,
            Kind::Accept => proto::MessageKind::Accept,
            Kind::Accepted => proto::MessageKind::Accepted,
            Kind::Decide => proto::MessageKind::Decide,
            Kind::Nack => proto::MessageKind::Nack,
            Kind::Forward => proto::MessageKind::Forward,
            Kind::Fetch => proto::MessageKind::Fetch,
        }
    }
}

impl EncodeLabelValue for Kind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.name())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerKind {
    peer: u32,
    kind: Kind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Outcome {
    Committed,
    Rejected,
    Failed,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let name = match self {
            Outcome::Committed => "committed",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        };
        std::fmt::Write::write_str(encoder, name)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    code: String,
}

/// One counter per peer and kind, for the watch stream's deltas.
struct Counts {
    cells: Vec<[AtomicU64; Kind::ALL.len()]>,
}

impl Counts {
    fn new(nodes: u32) -> Counts {
        Counts {
            cells: (0..nodes)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
        }
    }

    fn add(&self, peer: NodeId, kind: Kind, count: u64) {
        if let Some(cells) = self.cells.get((peer as usize).wrapping_sub(1)) {
            cells[kind.index()].fetch_add(count, Ordering::Relaxed);
        }
    }

    fn get(&self, peer: NodeId, kind: Kind) -> u64 {
        self.cells[peer as usize - 1][kind.index()].load(Ordering::Relaxed)
    }
}

/// The node's metrics and watch events.
pub struct Telemetry {
    id: NodeId,
    nodes: u32,
    registry: Registry,
    events: broadcast::Sender<proto::WatchEvent>,
    sent: Counts,
    failed: Counts,
    blocks_in_window: AtomicU32,
    /// Per peer: the heartbeat round last sent and when, to time its reply.
    heartbeats: Mutex<Vec<Option<(u64, Instant)>>>,

    is_leader: Gauge,
    has_leader: Gauge,
    leader_changes: Counter,
    ballot_round: Gauge,
    promised_round: Gauge,
    decided_height: Gauge,
    applied_height: Gauge,
    pending: Gauge,
    transfers: Family<OutcomeLabel, Counter>,
    commit_seconds: Histogram,
    flush_seconds: Histogram,
    batch_transfers: Histogram,
    messages_sent: Family<PeerKind, Counter>,
    messages_received: Family<PeerKind, Counter>,
    messages_failed: Family<PeerKind, Counter>,
    heartbeat_rtt_seconds: Family<PeerLabel, Histogram>,
    catch_up_blocks: Counter,
    requests: Family<RequestLabels, Counter>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Telemetry {
    /// Telemetry for node `id` of a cluster of `nodes`.
    pub fn new(id: NodeId, nodes: u32) -> Arc<Telemetry> {
        let mut registry = Registry::with_prefix("benmo");
        let latency_buckets = || exponential_buckets(0.000_125, 2.0, 16);
        let telemetry = Telemetry {
            id,
            nodes,
            events: broadcast::channel(WATCH_BUFFER_EVENTS).0,
            sent: Counts::new(nodes),
            failed: Counts::new(nodes),
            blocks_in_window: AtomicU32::new(0),
            heartbeats: Mutex::new(vec![None; nodes as usize]),
            is_leader: Gauge::default(),
            has_leader: Gauge::default(),
            leader_changes: Counter::default(),
            ballot_round: Gauge::default(),
            promised_round: Gauge::default(),
            decided_height: Gauge::default(),
            applied_height: Gauge::default(),
            pending: Gauge::default(),
            transfers: Family::default(),
            commit_seconds: Histogram::new(latency_buckets()),
            flush_seconds: Histogram::new(latency_buckets()),
            batch_transfers: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            messages_sent: Family::default(),
            messages_received: Family::default(),
            messages_failed: Family::default(),
            heartbeat_rtt_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_125, 2.0, 16))
            }),
            catch_up_blocks: Counter::default(),
            requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "is_leader",
            "1 if this node leads",
            telemetry.is_leader.clone(),
        );
        registry.register(
            "has_leader",
            "1 if this node follows a leader (itself included)",
            telemetry.has_leader.clone(),
        );
        registry.register(
            "leader_changes",
            "Times the leader this node follows changed (to another node, to none, or to itself)",
            telemetry.leader_changes.clone(),
        );
        registry.register(
            "ballot_round",
            "The round of this node's ballot",
            telemetry.ballot_round.clone(),
        );
        registry.register(
            "promised_round",
            "The round of the highest ballot this node promised",
            telemetry.promised_round.clone(),
        );
        registry.register(
            "decided_height",
            "The height of the last block this node decided",
            telemetry.decided_height.clone(),
        );
        registry.register(
            "applied_height",
            "The height of the ledger's head (every decided block is applied at once)",
            telemetry.applied_height.clone(),
        );
        registry.register(
            "pending_transfers",
            "Transfers taken by this node and not yet in a block",
            telemetry.pending.clone(),
        );
        registry.register(
            "transfers",
            "Transfer calls by outcome: committed (applied or recorded), rejected (refused), failed (not committed in time, overloaded)",
            telemetry.transfers.clone(),
        );
        registry.register(
            "commit_latency_seconds",
            "From a Transfer call's arrival to its commit",
            telemetry.commit_seconds.clone(),
        );
        registry.register(
            "flush_seconds",
            "One group of writes made durable (write-ahead log append and fdatasync)",
            telemetry.flush_seconds.clone(),
        );
        registry.register(
            "batch_transfers",
            "Transfers per decided block",
            telemetry.batch_transfers.clone(),
        );
        registry.register(
            "peer_messages_sent",
            "Paxos messages sent to a peer, by kind (failed ones included)",
            telemetry.messages_sent.clone(),
        );
        registry.register(
            "peer_messages_received",
            "Paxos messages received from a peer, by kind",
            telemetry.messages_received.clone(),
        );
        registry.register(
            "peer_messages_failed",
            "Paxos messages that could not be sent to a peer (link cut, queue full, peer unreachable), by kind",
            telemetry.messages_failed.clone(),
        );
        registry.register(
            "peer_heartbeat_rtt_seconds",
            "From a heartbeat to its reply, per peer (a cut link stops its samples)",
            telemetry.heartbeat_rtt_seconds.clone(),
        );
        registry.register(
            "catch_up_blocks",
            "Blocks this node learned by catch-up from peers",
            telemetry.catch_up_blocks.clone(),
        );
        registry.register(
            "grpc_requests",
            "Client gRPC requests by method and status code",
            telemetry.requests.clone(),
        );
        Arc::new(Telemetry {
            registry,
            ..telemetry
        })
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// Starts watching: events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<proto::WatchEvent> {
        self.events.subscribe()
    }

    /// Whether anyone watches.
    pub fn watched(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Sends an event to every watcher, never waiting.
    pub fn publish(&self, kind: proto::watch_event::Kind) {
        if self.watched() {
            let _ = self.events.send(proto::WatchEvent {
                unix_ms: unix_ms(),
                kind: Some(kind),
            });
        }
    }

    /// The core loop handed `messages` to the transport for `peer`.
    pub fn sent(&self, peer: NodeId, messages: &[Message]) {
        for message in messages {
            let kind = Kind::of(message);
            self.sent.add(peer, kind, 1);
            self.messages_sent
                .get_or_create(&PeerKind { peer, kind })
                .inc();
            if let Message::Heartbeat(heartbeat) = message {
                if let Some(slot) = self
                    .heartbeats
                    .lock()
                    .expect("not poisoned")
                    .get_mut((peer as usize).wrapping_sub(1))
                {
                    *slot = Some((heartbeat.round, Instant::now()));
                }
            }
        }
    }

    /// `count` messages of `kind` for `peer` were dropped before they left.
    pub fn failed(&self, peer: NodeId, kind: Kind, count: u64) {
        self.failed.add(peer, kind, count);
        self.messages_failed
            .get_or_create(&PeerKind { peer, kind })
            .inc_by(count);
    }

    /// Messages that could not be sent, counted by kind.
    pub fn failed_messages(&self, peer: NodeId, messages: &[Message]) {
        for message in messages {
            self.failed(peer, Kind::of(message), 1);
        }
    }

    /// A catch-up request for `peer`'s blocks left.
    pub fn fetch_sent(&self, peer: NodeId) {
        self.sent.add(peer, Kind::Fetch, 1);
        self.messages_sent
            .get_or_create(&PeerKind {
                peer,
                kind: Kind::Fetch,
            })
            .inc();
    }

    /// A frame from `peer` reached the core loop.
    pub fn received(&self, peer: NodeId, messages: &[Message]) {
        for message in messages {
            let kind = Kind::of(message);
            self.messages_received
                .get_or_create(&PeerKind { peer, kind })
                .inc();
            if let Message::HeartbeatReply(reply) = message {
                let sent = self
                    .heartbeats
                    .lock()
                    .expect("not poisoned")
                    .get((peer as usize).wrapping_sub(1))
                    .copied()
                    .flatten();
                if let Some((round, at)) = sent {
                    if round == reply.round {
                        self.heartbeat_rtt_seconds
                            .get_or_create(&PeerLabel { peer })
                            .observe(at.elapsed().as_secs_f64());
                    }
                }
            }
        }
    }

    /// Something the core did.
    pub fn event(&self, event: &Event, description: &str) {
        match event {
            Event::LeaderChanged { .. } | Event::BecameLeader { .. } => {
                self.leader_changes.inc();
            }
            Event::CaughtUp { from, to, .. } => {
                self.catch_up_blocks
                    .inc_by(to.saturating_sub(*from).saturating_add(1));
            }
            _ => {}
        }
        self.publish(proto::watch_event::Kind::Note(description.to_string()));
    }

    /// A block was appended to the chain.
    pub fn appended(&self, block: &Block) {
        self.decided_height.set(block.height as i64);
        self.applied_height.set(block.height as i64);
        self.batch_transfers.observe(block.entries.len() as f64);
        if self.watched()
            && self.blocks_in_window.fetch_add(1, Ordering::Relaxed) < BLOCK_EVENTS_PER_WINDOW
        {
            self.publish(proto::watch_event::Kind::Block(proto::BlockAppended {
                height: block.height,
                hash: block.hash.0.to_vec(),
                transfers: block.entries.len() as u32,
            }));
        }
    }

    /// A group of writes became durable in `elapsed`.
    pub fn flushed(&self, elapsed: Duration) {
        self.flush_seconds.observe(elapsed.as_secs_f64());
    }

    /// The node's status, read now: gauges follow it.
    pub fn status(&self, status: &proto::StatusReply) {
        let role = proto::Role::try_from(status.role).unwrap_or(proto::Role::Unspecified);
        self.is_leader.set(i64::from(role == proto::Role::Leader));
        self.has_leader.set(i64::from(status.leader.is_some()));
        self.ballot_round.set(
            status
                .ballot
                .as_ref()
                .map_or(0, |ballot| ballot.round as i64),
        );
        self.promised_round.set(
            status
                .promised
                .as_ref()
                .map_or(0, |ballot| ballot.round as i64),
        );
        self.pending.set(i64::from(status.pending));
        self.applied_height.set(status.height as i64);
        self.decided_height.set(status.height as i64);
    }

    /// A Transfer call ended: committed (applied or recorded), rejected, or failed; `elapsed`
    /// since it arrived.
    pub fn transfer_done(&self, committed: Option<bool>, elapsed: Duration) {
        let outcome = match committed {
            Some(true) => Outcome::Committed,
            Some(false) => Outcome::Rejected,
            None => Outcome::Failed,
        };
        if outcome == Outcome::Committed {
            self.commit_seconds.observe(elapsed.as_secs_f64());
        }
        self.transfers
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A client request to `method` ended with `code`.
    pub fn request(&self, method: &str, code: tonic::Code) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// Sends watchers, every [`MESSAGE_COUNTS_EVERY`], the messages sent since the last time.
    /// Runs until the process ends.
    pub async fn publish_message_counts(self: Arc<Telemetry>) {
        let peers: Vec<NodeId> = (1..=self.nodes).filter(|peer| *peer != self.id).collect();
        let snapshot = |counts: &Counts| -> Vec<[u64; Kind::ALL.len()]> {
            (1..=self.nodes)
                .map(|peer| Kind::ALL.map(|kind| counts.get(peer, kind)))
                .collect()
        };
        let mut last_sent = snapshot(&self.sent);
        let mut last_failed = snapshot(&self.failed);
        let mut ticker = tokio::time::interval(MESSAGE_COUNTS_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.blocks_in_window.store(0, Ordering::Relaxed);
            let sent = snapshot(&self.sent);
            let failed = snapshot(&self.failed);
            let mut counts = Vec::new();
            for peer in &peers {
                let index = *peer as usize - 1;
                for kind in Kind::ALL {
                    let count = sent[index][kind.index()] - last_sent[index][kind.index()];
                    let lost = failed[index][kind.index()] - last_failed[index][kind.index()];
                    if count > 0 || lost > 0 {
                        counts.push(proto::MessageCount {
                            to: *peer,
                            kind: kind.proto() as i32,
                            count,
                            failed: lost,
                        });
                    }
                }
            }
            last_sent = sent;
            last_failed = failed;
            if !counts.is_empty() {
                self.publish(proto::watch_event::Kind::Messages(proto::MessageCounts {
                    window_ms: MESSAGE_COUNTS_EVERY.as_millis() as u32,
                    counts,
                }));
            }
        }
    }
}

/// Counts client gRPC requests by method and status code (from the `grpc-status` header, which
/// tonic sets on every error a handler returns; a call without it counts as OK).
#[derive(Clone)]
pub struct CountRequests<S> {
    inner: S,
    telemetry: Arc<Telemetry>,
}

impl<S> CountRequests<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, telemetry: Arc<Telemetry>) -> CountRequests<S> {
        CountRequests { inner, telemetry }
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for CountRequests<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let telemetry = self.telemetry.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from_i32);
            telemetry.request(&method, code);
            Ok(response)
        })
    }
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until the process ends.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    telemetry: Arc<Telemetry>,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let telemetry = telemetry.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    telemetry.encode(),
                )
            }
        }),
    );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use benmo_paxos::message::{Heartbeat, HeartbeatReply};
    use benmo_paxos::Ballot;

    #[test]
    fn metrics_count_messages_by_peer_and_kind_and_time_heartbeats() {
        let telemetry = Telemetry::new(1, 3);
        telemetry.sent(
            2,
            &[Message::Heartbeat(Heartbeat {
                round: 7,
                decided: 0,
            })],
        );
        telemetry.received(
            2,
            &[Message::HeartbeatReply(HeartbeatReply {
                round: 7,
                ballot: Ballot::new(0, 2),
                quorum_connected: true,
                leader: None,
                decided: 0,
            })],
        );
        telemetry.failed(3, Kind::Accept, 2);
        let text = telemetry.encode();
        assert!(
            text.contains("benmo_peer_messages_sent_total{peer=\"2\",kind=\"heartbeat\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "benmo_peer_messages_received_total{peer=\"2\",kind=\"heartbeat_reply\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("benmo_peer_messages_failed_total{peer=\"3\",kind=\"accept\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("benmo_peer_heartbeat_rtt_seconds_count{peer=\"2\"} 1"),
            "{text}"
        );
        assert!(!text.contains("rtt_seconds_count{peer=\"3\"}"), "{text}");
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_loses_events_and_never_blocks_the_node() {
        let telemetry = Telemetry::new(1, 3);
        let mut watcher = telemetry.subscribe();
        for index in 0..WATCH_BUFFER_EVENTS * 3 {
            telemetry.publish(proto::watch_event::Kind::Note(format!("event {index}")));
        }
        match watcher.recv().await {
            Err(broadcast::error::RecvError::Lagged(lost)) => {
                assert_eq!(lost as usize, WATCH_BUFFER_EVENTS * 2)
            }
            other => panic!("expected the watcher to have lagged, got {other:?}"),
        }
        let next = watcher.recv().await.expect("the newest events are kept");
        assert_eq!(
            next.kind,
            Some(proto::watch_event::Kind::Note(format!(
                "event {}",
                WATCH_BUFFER_EVENTS * 2
            )))
        );
    }
}
