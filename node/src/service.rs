//! The gRPC services and the server: PeerService for other nodes, LedgerService for clients,
//! FaultService for fault injection, plus gRPC health and server reflection.
//!
//! Handlers are thin: they check and convert requests at the edge and hand them to the core loop.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use benmo::convert::{self, ConvertError};
use benmo::proto;
use benmo::proto::fault_service_server::{FaultService, FaultServiceServer};
use benmo::proto::ledger_service_server::{LedgerService, LedgerServiceServer};
use benmo::proto::peer_service_server::{PeerService, PeerServiceServer};
use benmo_paxos::{restore, Hash, NodeId, ProposeError, Replica, RoleName, Transfer};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::core_loop::{self, Command, CoreHandle, NodeEnvironment, Waiter, WriterOptions};
use crate::host::{Host, TransferResult};
use crate::links::{Direction, Links};
use crate::options::Settings;
use crate::storage::{ChainReader, Identity, SledStorage};
use crate::telemetry::Telemetry;
use crate::transport::{Transport, CATCH_UP_BLOCKS_MAX, PEER_MESSAGE_BYTES_MAX};
use benmo::secrets::Secrets;
use benmo::signing::SignatureError;

/// The longest wait a client may ask a Transfer call for.
const TRANSFER_TIMEOUT_MAX: Duration = Duration::from_secs(300);
/// How long a timed-out Transfer call waits for its transfer to reach the disk before it may say
/// "still pending".
const DURABLE_WAIT_MAX: Duration = Duration::from_secs(10);
/// Blocks read from disk at a time when streaming a chain.
const CHAIN_CHUNK_BLOCKS: usize = 16;
/// Blocks a chain stream holds for a slow reader beyond the chunk being sent. With the chunk, a
/// reader holds at most 24 blocks (about 5 MiB at the largest batch) of the node's memory.
const CHAIN_STREAM_BUFFER_BLOCKS: usize = 8;
/// How often a watched node checks its status for changes.
const WATCH_STATUS_EVERY: Duration = Duration::from_millis(50);
/// A watched node sends its status at least this often, changed or not.
const WATCH_STATUS_QUIET_MAX: Duration = Duration::from_secs(1);
/// How often an unwatched node reads its status, for the metrics' gauges.
const METRICS_STATUS_EVERY: Duration = Duration::from_millis(500);
/// Events buffered per watcher's connection beyond the node's shared buffer.
const WATCH_STREAM_BUFFER: usize = 256;
/// Client chain streams served at once; more are refused with RESOURCE_EXHAUSTED.
const CHAIN_READERS_MAX: usize = 16;
/// A chain reader that takes no block for this long is dropped, and frees its place.
const CHAIN_READER_STALL_MAX: Duration = Duration::from_secs(30);

type BlockStream = Pin<Box<dyn Stream<Item = Result<proto::Block, Status>> + Send>>;

/// What every handler shares.
#[derive(Clone)]
struct Node {
    id: NodeId,
    nodes: u32,
    genesis_hash: Hash,
    core: CoreHandle,
    chain: ChainReader,
    links: Arc<Links>,
    started: Instant,
    transfer_timeout: Duration,
    /// The cluster's secrets: set when the node runs secure.
    secrets: Option<Arc<Secrets>>,
    /// Places for client chain streams.
    chain_readers: Arc<tokio::sync::Semaphore>,
    /// Metrics and watch events.
    telemetry: Arc<Telemetry>,
}

/// The largest client request: a Transfer, a read or a fault (nothing a client sends is large).
const CLIENT_MESSAGE_BYTES_MAX: usize = 64 * 1024;

fn invalid(error: ConvertError) -> Status {
    Status::invalid_argument(error.to_string())
}

fn overloaded() -> Status {
    Status::resource_exhausted("the node is overloaded; retry shortly")
}

async fn answer<T>(receiver: oneshot::Receiver<T>) -> Result<T, Status> {
    receiver
        .await
        .map_err(|_| Status::unavailable("the node is shutting down"))
}

impl Node {
    /// Admits a peer call: a node of this cluster, not this node, and (when the node runs
    /// secure) the node its TLS certificate names. This runs before anything of the call's body is
    /// read.
    fn admit<T>(&self, request: &Request<T>) -> Result<NodeId, Status> {
        let caller = convert::caller(request.metadata()).map_err(invalid)?;
        if let Some(secrets) = &self.secrets {
            let certified = request
                .peer_certs()
                .and_then(|certificates| {
                    certificates
                        .first()
                        .and_then(|certificate| secrets.node_of_certificate(certificate))
                })
                .ok_or_else(|| {
                    Status::unauthenticated(
                        "peer calls need a node certificate of this cluster (mutual TLS)",
                    )
                })?;
            if certified != caller.node {
                return Err(Status::permission_denied(format!(
                    "the certificate is node {certified}'s, but the call claims node {}",
                    caller.node
                )));
            }
        }
        self.admit_caller(caller)
    }

    /// Admits the node a peer call names: of this cluster, not this node.
    fn admit_caller(&self, caller: convert::Caller) -> Result<NodeId, Status> {
        if caller.node == 0 || caller.node > self.nodes || caller.node == self.id {
            return Err(Status::permission_denied(format!(
                "node {} is not a peer of node {} (cluster of {})",
                caller.node, self.id, self.nodes
            )));
        }
        if caller.genesis_hash != self.genesis_hash {
            return Err(Status::failed_precondition(format!(
                "node {} belongs to another cluster (genesis {}, here {})",
                caller.node, caller.genesis_hash, self.genesis_hash
            )));
        }
        Ok(caller.node)
    }

    /// Streams blocks `from..=to` (to the head if `to` is None) from disk, holding `place` (if
    /// any) until the stream ends. A reader that goes away, or takes nothing for
    /// [`CHAIN_READER_STALL_MAX`], ends it.
    fn stream_chain(
        &self,
        from: u64,
        to: Option<u64>,
        limit: Option<u64>,
        place: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> BlockStream {
        let (sender, receiver) = mpsc::channel(CHAIN_STREAM_BUFFER_BLOCKS);
        let chain = self.chain.clone();
        tokio::spawn(async move {
            let _place = place;
            let mut next = from;
            let mut sent = 0u64;
            loop {
                let remaining = limit.map_or(u64::MAX, |limit| limit.saturating_sub(sent));
                let until = match to {
                    None => u64::MAX,
                    Some(to) if next > to => 0,
                    Some(to) => (to - next).saturating_add(1),
                };
                let count = (CHAIN_CHUNK_BLOCKS as u64).min(remaining).min(until) as usize;
                if count == 0 {
                    return;
                }
                // Disk reads and decoding run off the async threads, which the core loop and
                // the peer streams share.
                let reader = chain.clone();
                let read = tokio::task::spawn_blocking(move || {
                    reader.blocks(next, count).map(|blocks| {
                        blocks
                            .iter()
                            .map(proto::Block::from)
                            .collect::<Vec<proto::Block>>()
                    })
                })
                .await;
                let blocks = match read {
                    Ok(Ok(blocks)) => blocks,
                    Ok(Err(error)) => {
                        let _ = sender.send(Err(Status::internal(error.to_string()))).await;
                        return;
                    }
                    Err(_) => return,
                };
                if blocks.is_empty() {
                    return;
                }
                let read = blocks.len();
                for block in blocks {
                    let sent = sender.send_timeout(Ok(block), CHAIN_READER_STALL_MAX).await;
                    if sent.is_err() {
                        return;
                    }
                }
                next += read as u64;
                sent += read as u64;
                if read < count {
                    return;
                }
            }
        });
        Box::pin(ReceiverStream::new(receiver))
    }
}

#[tonic::async_trait]
impl PeerService for Node {
    async fn stream(
        &self,
        request: Request<Streaming<proto::PeerFrame>>,
    ) -> Result<Response<proto::StreamClosed>, Status> {
        let from = self.admit(&request)?;
        let mut frames = request.into_inner();
        loop {
            let frame = match frames.message().await {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(Response::new(proto::StreamClosed {})),
                Err(status) => {
                    // The connection broke under the stream: the peer's process is gone. A cut
                    // link closes no connection, and carries nothing, not even this.
                    if self.links.takes_from(from) {
                        let _ = self.core.send(Command::Disconnected(from));
                    }
                    return Err(status);
                }
            };
            if !self.links.takes_from(from) {
                continue;
            }
            let messages = convert::messages(frame).map_err(invalid)?;
            // A message no correct peer sends ends the stream with the reason: it is bad input,
            // never a reason for this node to stop (the core would drop it too).
            for message in &messages {
                if let Err(error) = message.check(self.nodes) {
                    warn!("refused a {} from node {from}: {error}", message.kind());
                    return Err(Status::invalid_argument(format!(
                        "node {from} sent an impossible {}: {error}",
                        message.kind()
                    )));
                }
            }
            if self.core.send(Command::Peer { from, messages }).is_err() {
                tracing::debug!("core loop busy; dropping a frame from node {from}");
            }
        }
    }

    type FetchBlocksStream = BlockStream;

    async fn fetch_blocks(
        &self,
        request: Request<proto::FetchBlocksRequest>,
    ) -> Result<Response<BlockStream>, Status> {
        let from = self.admit(&request)?;
        if !self.links.sends_to(from) || !self.links.takes_from(from) {
            return Err(Status::unavailable(format!(
                "the link between node {} and node {from} is severed",
                self.id
            )));
        }
        let request = request.into_inner();
        let limit = u64::from(request.limit.clamp(1, CATCH_UP_BLOCKS_MAX));
        Ok(Response::new(self.stream_chain(
            request.from_height,
            None,
            Some(limit),
            None,
        )))
    }
}

impl Node {
    /// This node's status now.
    async fn status_reply(&self) -> Result<proto::StatusReply, Status> {
        let (sender, receiver) = oneshot::channel();
        self.core
            .send(Command::Status(sender))
            .map_err(|_| overloaded())?;
        let status = answer(receiver).await?;
        let core = status.core;
        let role = match core.role {
            RoleName::Follower => proto::Role::Follower,
            RoleName::Candidate => proto::Role::Candidate,
            RoleName::Leader => proto::Role::Leader,
        };
        Ok(proto::StatusReply {
            node: core.id,
            nodes: status.nodes,
            role: role as i32,
            leader: core.leader.map(proto::Ballot::from),
            ballot: Some(core.ballot.into()),
            promised: Some(core.promised.into()),
            quorum_connected: core.quorum_connected,
            height: core.height,
            head_hash: core.head_hash.0.to_vec(),
            pending: core.pending as u32,
            in_flight: core.in_flight as u32,
            cut_outgoing: self.links.cut_outgoing(),
            cut_incoming: self.links.cut_incoming(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            genesis_hash: status.genesis_hash.0.to_vec(),
            genesis_balance: status.genesis_balance,
            cpu_time_us: process_cpu_time_us(),
            secure: self.secrets.is_some(),
            signed_transfers: self.secrets.is_some(),
        })
    }

    /// Feeds the status gauges, and watchers with the status whenever it changes (at most every
    /// [`WATCH_STATUS_EVERY`], at least every [`WATCH_STATUS_QUIET_MAX`]). Runs until the process
    /// ends.
    async fn publish_status(self) {
        let mut last: Option<(proto::StatusReply, Instant)> = None;
        loop {
            let every = if self.telemetry.watched() {
                WATCH_STATUS_EVERY
            } else {
                METRICS_STATUS_EVERY
            };
            tokio::time::sleep(every).await;
            let Ok(status) = self.status_reply().await else {
                continue;
            };
            self.telemetry.status(&status);
            if !self.telemetry.watched() {
                last = None;
                continue;
            }
            let changed = last.as_ref().is_none_or(|(previous, at)| {
                at.elapsed() >= WATCH_STATUS_QUIET_MAX || !same_view(previous, &status)
            });
            if changed {
                self.telemetry
                    .publish(proto::watch_event::Kind::Status(status.clone()));
                last = Some((status, Instant::now()));
            }
        }
    }
}

/// Whether two statuses show the same view (uptime and CPU time aside).
fn same_view(a: &proto::StatusReply, b: &proto::StatusReply) -> bool {
    a.role == b.role
        && a.leader == b.leader
        && a.ballot == b.ballot
        && a.promised == b.promised
        && a.quorum_connected == b.quorum_connected
        && a.height == b.height
        && a.pending == b.pending
        && a.in_flight == b.in_flight
        && a.cut_outgoing == b.cut_outgoing
        && a.cut_incoming == b.cut_incoming
}

impl Node {
    /// Takes a client's transfer: checks it, hands it to the core, waits for its commit.
    async fn take_transfer(
        &self,
        request: Request<proto::TransferRequest>,
    ) -> Result<Response<proto::TransferReply>, Status> {
        let request = request.into_inner();
        let transfer = request
            .transfer
            .ok_or_else(|| Status::invalid_argument("missing field transfer"))?;
        let transfer = Transfer::try_from(transfer).map_err(invalid)?;
        if let Some(secrets) = &self.secrets {
            // Checked before the transfer enters the pending log: a transfer this node takes is
            // the debited account holder's. (A malformed one is refused by the core, with its
            // reason, whatever its signature.)
            let key = secrets.account_key(transfer.from);
            if key.is_some() {
                benmo::signing::verify(&transfer, key, &self.genesis_hash).map_err(|error| {
                    match error {
                        SignatureError::Missing { .. } => {
                            Status::unauthenticated(error.to_string())
                        }
                        _ => Status::permission_denied(error.to_string()),
                    }
                })?;
            }
        }
        let timeout = match request.timeout_ms {
            0 => self.transfer_timeout,
            ms => Duration::from_millis(u64::from(ms)).min(TRANSFER_TIMEOUT_MAX),
        };
        let id = transfer.id.clone();
        let (result, mut outcome) = oneshot::channel::<TransferResult>();
        let (taken, mut taken_durably) = oneshot::channel();
        let waiter = Waiter {
            result,
            taken: Some(taken),
        };
        self.core
            .send(Command::Transfer { transfer, waiter })
            .map_err(|_| overloaded())?;
        use proto::transfer_reply::Result as Reply;
        let answer = match tokio::time::timeout(timeout, &mut outcome).await {
            Ok(answer) => Some(answer),
            // "Still pending" must be true: the transfer must be durably in the pending log. A
            // refusal or a commit that comes meanwhile is the answer instead.
            Err(_) => {
                let wait = async {
                    tokio::select! {
                        biased;
                        answer = &mut outcome => Some(answer),
                        taken = &mut taken_durably => match taken {
                            Ok(()) => None,
                            Err(_) => Some((&mut outcome).await),
                        },
                    }
                };
                tokio::time::timeout(DURABLE_WAIT_MAX, wait)
                    .await
                    .map_err(|_| Status::unavailable("the node's disk does not answer"))?
            }
        };
        let result = match answer {
            None => Reply::Pending(proto::StillPending {
                id: id.as_str().to_string(),
            }),
            Some(answer) => {
                let answer =
                    answer.map_err(|_| Status::unavailable("the node is shutting down"))?;
                let committed = answer.map_err(transfer_status)?;
                Reply::Committed(proto::Committed {
                    height: committed.height,
                    outcome: Some((&committed.outcome).into()),
                    block_hash: committed.block_hash.0.to_vec(),
                })
            }
        };
        Ok(Response::new(proto::TransferReply {
            result: Some(result),
        }))
    }
}

fn transfer_status(error: ProposeError) -> Status {
    let message = error.to_string();
    match error {
        ProposeError::Invalid(_) => Status::invalid_argument(message),
        ProposeError::IdConflict { .. } => Status::already_exists(message),
        ProposeError::Busy { .. } => Status::resource_exhausted(message),
    }
}

#[tonic::async_trait]
impl LedgerService for Node {
    async fn transfer(
        &self,
        request: Request<proto::TransferRequest>,
    ) -> Result<Response<proto::TransferReply>, Status> {
        let started = Instant::now();
        let result = self.take_transfer(request).await;
        use proto::outcome::Kind as OutcomeKind;
        use proto::transfer_reply::Result as Reply;
        let committed = match &result {
            Ok(reply) => match &reply.get_ref().result {
                Some(Reply::Committed(committed)) => Some(!matches!(
                    committed
                        .outcome
                        .as_ref()
                        .and_then(|outcome| outcome.kind.as_ref()),
                    Some(OutcomeKind::Rejected(_))
                )),
                _ => None,
            },
            Err(status) => match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::ResourceExhausted
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Internal => None,
                _ => Some(false),
            },
        };
        self.telemetry.transfer_done(committed, started.elapsed());
        result
    }

    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        self.status_reply().await.map(Response::new)
    }

    async fn balances(
        &self,
        _request: Request<proto::BalancesRequest>,
    ) -> Result<Response<proto::BalancesReply>, Status> {
        let (sender, receiver) = oneshot::channel();
        self.core
            .send(Command::Balances(sender))
            .map_err(|_| overloaded())?;
        let balances = answer(receiver).await?;
        Ok(Response::new(proto::BalancesReply {
            height: balances.height,
            head_hash: balances.head_hash.0.to_vec(),
            balances: balances
                .balances
                .iter()
                .enumerate()
                .map(|(index, balance)| proto::Balance {
                    account: index as u32 + 1,
                    balance: *balance,
                })
                .collect(),
        }))
    }

    type ChainStream = BlockStream;

    async fn chain(
        &self,
        request: Request<proto::ChainRequest>,
    ) -> Result<Response<BlockStream>, Status> {
        let request = request.into_inner();
        if let Some(to) = request.to_height {
            if to < request.from_height {
                return Err(Status::invalid_argument(format!(
                    "to_height {to} is below from_height {}",
                    request.from_height
                )));
            }
        }
        let place = self
            .chain_readers
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "{CHAIN_READERS_MAX} chain streams are being served; retry when one ends"
                ))
            })?;
        Ok(Response::new(self.stream_chain(
            request.from_height,
            request.to_height,
            None,
            Some(place),
        )))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEvent, Status>> + Send>>;

    async fn watch(
        &self,
        _request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Subscribed before the first status is read, so no change falls in between.
        let mut events = self.telemetry.subscribe();
        let first = self.status_reply().await?;
        let (sender, receiver) = mpsc::channel(WATCH_STREAM_BUFFER);
        let node = self.clone();
        tokio::spawn(async move {
            let event = |kind| proto::WatchEvent {
                unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_millis() as u64),
                kind: Some(kind),
            };
            if sender
                .send(Ok(event(proto::watch_event::Kind::Status(first))))
                .await
                .is_err()
            {
                return;
            }
            loop {
                let next = match events.recv().await {
                    Ok(next) => next,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(lost)) => {
                        if sender
                            .send(Ok(event(proto::watch_event::Kind::Dropped(lost))))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        match node.status_reply().await {
                            Ok(status) => event(proto::watch_event::Kind::Status(status)),
                            Err(_) => continue,
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if sender.send(Ok(next)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn pending(
        &self,
        _request: Request<proto::PendingRequest>,
    ) -> Result<Response<proto::PendingReply>, Status> {
        let (sender, receiver) = oneshot::channel();
        self.core
            .send(Command::Pending(sender))
            .map_err(|_| overloaded())?;
        let transfers = answer(receiver).await?;
        Ok(Response::new(proto::PendingReply {
            transfers: transfers.iter().map(proto::Transfer::from).collect(),
        }))
    }
}

fn direction(value: i32) -> Result<Direction, Status> {
    match proto::Direction::try_from(value) {
        Ok(proto::Direction::Both | proto::Direction::Unspecified) => Ok(Direction::Both),
        Ok(proto::Direction::Outgoing) => Ok(Direction::Outgoing),
        Ok(proto::Direction::Incoming) => Ok(Direction::Incoming),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown direction {value}"
        ))),
    }
}

fn describe(peer: Option<NodeId>, direction: Direction) -> String {
    let peer = peer.map_or("every node".to_string(), |peer| format!("node {peer}"));
    match direction {
        Direction::Both => format!("{peer}, both directions"),
        Direction::Outgoing => format!("{peer}, outgoing"),
        Direction::Incoming => format!("{peer}, incoming"),
    }
}

impl Node {
    /// Admits a fault call: when the node runs secure, only with the operator token, as
    /// `authorization: Bearer <token>`.
    fn admit_operator<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(secrets) = &self.secrets else {
            return Ok(());
        };
        let Some(value) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "faults need the operator token (authorization: Bearer <token>; benmoctl reads it from operator.token in the cluster's secrets)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !secrets.is_operator(token) {
            return Err(Status::permission_denied(
                "the operator token is wrong: faults are for this cluster's operator only",
            ));
        }
        Ok(())
    }

    fn links_reply(&self) -> proto::LinksReply {
        proto::LinksReply {
            cut_outgoing: self.links.cut_outgoing(),
            cut_incoming: self.links.cut_incoming(),
        }
    }

    fn check_peer(&self, peer: NodeId) -> Result<(), Status> {
        if peer == 0 || peer > self.nodes {
            return Err(Status::invalid_argument(format!(
                "node {peer} is not in the cluster (nodes are 1..={})",
                self.nodes
            )));
        }
        if peer == self.id {
            return Err(Status::invalid_argument(format!(
                "node {peer} cannot cut a link to itself"
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl FaultService for Node {
    async fn crash(
        &self,
        request: Request<proto::CrashRequest>,
    ) -> Result<Response<proto::CrashReply>, Status> {
        self.admit_operator(&request)?;
        warn!("crash requested: dying now, as kill -9 would");
        crash_now()
    }

    async fn sever(
        &self,
        request: Request<proto::SeverRequest>,
    ) -> Result<Response<proto::LinksReply>, Status> {
        self.admit_operator(&request)?;
        let request = request.into_inner();
        self.check_peer(request.peer)?;
        let direction = direction(request.direction)?;
        self.links.sever(request.peer, direction);
        info!(
            "severed link with {}",
            describe(Some(request.peer), direction)
        );
        Ok(Response::new(self.links_reply()))
    }

    async fn heal(
        &self,
        request: Request<proto::HealRequest>,
    ) -> Result<Response<proto::LinksReply>, Status> {
        self.admit_operator(&request)?;
        let request = request.into_inner();
        let peer = match request.peer {
            0 => None,
            peer => {
                self.check_peer(peer)?;
                Some(peer)
            }
        };
        let direction = direction(request.direction)?;
        self.links.heal(peer, direction);
        info!("healed link with {}", describe(peer, direction));
        Ok(Response::new(self.links_reply()))
    }
}

/// The CPU time (user + system) this process has used, in µs.
fn process_cpu_time_us() -> u64 {
    // SAFETY: getrusage writes only into the struct it is given, which lives on this stack.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |time: libc::timeval| time.tv_sec as u64 * 1_000_000 + time.tv_usec as u64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// Ends the process at once: no destructor runs and nothing is flushed, as with `kill -9`.
fn crash_now() -> ! {
    // SAFETY: both calls take plain integers and touch no memory of this process. SIGKILL to
    // ourselves is the real thing; as PID 1 of a container the kernel ignores it, so `_exit`
    // follows, which likewise ends the process without running any user-space cleanup.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
        libc::_exit(137)
    }
}

/// How many times, and how far apart, the node tries a port that is in use. A port in the
/// ephemeral range (the defaults 50051..50055 are) can be held by someone else's outgoing
/// connection, and then by its TIME_WAIT, for up to a minute (see `benmo::dial`); a port held by
/// another server stays held, and the node gives up after that minute.
const BIND_ATTEMPTS: u32 = 65;
const BIND_RETRY_INTERVAL: Duration = Duration::from_secs(1);

async fn bind(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let mut attempt = 1;
    loop {
        match tokio::net::TcpListener::bind(address).await {
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse && attempt < BIND_ATTEMPTS =>
            {
                warn!(
                    "{address} is in use; trying again in a second ({attempt} of {BIND_ATTEMPTS})"
                );
                attempt += 1;
                tokio::time::sleep(BIND_RETRY_INTERVAL).await;
            }
            result => return result,
        }
    }
}

/// Starts the node: opens and checks the data directory, restores the core, starts the core
/// loop and the transport, and serves gRPC until the process ends.
pub async fn serve(settings: Settings) -> Result<()> {
    let core_config = settings.core.clone();
    let identity = Identity {
        node: core_config.id,
        nodes: core_config.nodes,
        genesis_balance: core_config.genesis_balance,
    };
    let storage = SledStorage::open_node(&settings.data_dir, &identity)
        .with_context(|| format!("cannot use data directory {}", settings.data_dir.display()))?;
    let restored =
        restore(&storage, core_config.nodes, core_config.genesis_balance).with_context(|| {
            format!(
                "data directory {} is corrupted; refusing to start",
                settings.data_dir.display()
            )
        })?;
    let genesis_hash = restored.ledger.genesis_hash();
    let height = restored.ledger.height();
    let pending = restored.acceptor.pending.len();
    let replica = Replica::new(core_config.clone(), restored, rand::rng().next_u64())?;

    let secrets = match &settings.secrets {
        Some(dir) => {
            let secrets = Secrets::load(dir).with_context(|| {
                format!("cannot read the cluster's secrets in {}", dir.display())
            })?;
            if secrets.nodes() != core_config.nodes {
                anyhow::bail!(
                    "the secrets in {} are for a {}-node cluster, but --cluster lists {} nodes",
                    dir.display(),
                    secrets.nodes(),
                    core_config.nodes
                );
            }
            Some(Arc::new(secrets))
        }
        None => {
            warn!("running open, without the cluster's secrets (--secrets): any caller can speak the peer protocol, inject faults and move any account's money");
            None
        }
    };
    let listener = bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let peer_listener = bind(settings.peer_listen)
        .await
        .with_context(|| format!("cannot listen for peers on {}", settings.peer_listen))?;

    let metrics_listener = bind(settings.metrics_listen)
        .await
        .with_context(|| format!("cannot serve metrics on {}", settings.metrics_listen))?;

    let telemetry = Telemetry::new(core_config.id, core_config.nodes);
    let links = Arc::new(Links::default());
    let (core, commands) = core_loop::channel();
    let transport = Transport::start(
        core_config.id,
        &settings.cluster,
        genesis_hash,
        secrets.as_deref(),
        links.clone(),
        core.clone(),
        telemetry.clone(),
    )?;
    let node = Node {
        id: core_config.id,
        nodes: core_config.nodes,
        genesis_hash,
        core,
        chain: storage.reader(),
        links,
        started: Instant::now(),
        transfer_timeout: settings.transfer_timeout,
        secrets: secrets.clone(),
        chain_readers: Arc::new(tokio::sync::Semaphore::new(CHAIN_READERS_MAX)),
        telemetry: telemetry.clone(),
    };
    tokio::spawn(node.clone().publish_status());
    tokio::spawn(telemetry.clone().publish_message_counts());
    let writer = WriterOptions {
        fsync_delay: settings.fsync_delay,
    };
    let id_filter_scan = storage.id_filter_scan();
    let decided = storage.decided_blocks();
    let (writer, written) = core_loop::start_writer(storage, writer, telemetry.clone())
        .context("cannot start the writer thread")?;
    let core_task = tokio::spawn(core_loop::run(
        Host::new(replica),
        NodeEnvironment::new(transport, writer, decided, telemetry.clone()),
        commands,
        written,
        settings.heartbeat,
        genesis_hash,
    ));
    tokio::spawn(async move {
        // A panic in the core is a broken invariant (say, two values decided for one slot).
        // The node must not limp on without its core: the whole process ends, loudly.
        if core_task.await.is_err() {
            tracing::error!("the consensus core stopped on a broken invariant; exiting");
            std::process::exit(70);
        }
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<LedgerServiceServer<Node>>().await;
    health.set_serving::<PeerServiceServer<Node>>().await;
    health.set_serving::<FaultServiceServer<Node>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;

    info!(
        "node {} of {} serving clients on {}, peers on {} ({}) and metrics on http://{}/metrics; data in {}; chain height {height}, {pending} pending; genesis {}",
        core_config.id,
        core_config.nodes,
        settings.listen,
        settings.peer_listen,
        if secrets.is_some() { "mutual TLS" } else { "open" },
        settings.metrics_listen,
        settings.data_dir.display(),
        &genesis_hash.to_hex()[..12]
    );
    let mut peers = tonic::transport::Server::builder();
    if let Some(secrets) = &secrets {
        let (certificate, key) = secrets.node_identity(core_config.id)?;
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(certificate, key))
            .client_ca_root(tonic::transport::Certificate::from_pem(secrets.ca_pem()));
        peers = peers.tls_config(tls).context("bad TLS configuration")?;
    }
    let peers = peers
        .add_service(
            PeerServiceServer::new(node.clone())
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
        )
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(peer_listener).with_nodelay(Some(true)),
        );
    let counted = telemetry.clone();
    let clients = tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(move |inner| {
            crate::telemetry::CountRequests::new(inner, counted.clone())
        }))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            LedgerServiceServer::new(node.clone())
                .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX),
        )
        .add_service(
            FaultServiceServer::new(node).max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX),
        )
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        );
    let metrics = crate::telemetry::serve_metrics(metrics_listener, telemetry);
    // Now that the node is up, so that it does not slow the start (lookups read sled until then).
    id_filter_scan
        .start()
        .context("cannot start the dedup index's filter scan")?;
    tokio::try_join!(
        async { peers.await.context("the peer gRPC server failed") },
        async { clients.await.context("the client gRPC server failed") },
        async { metrics.await.context("the metrics server failed") },
    )?;
    Ok(())
}
