//! Outgoing peer traffic: every core message becomes a unary RPC to its peer (and a reply, if the
//! RPC has one, comes back to the core as a message from that peer); catch-up fetches stream
//! blocks. A failed call is a lost message: the core retransmits what matters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use benmo::cluster::Cluster;
use benmo::convert::{self, PeerRequest};
use benmo::proto;
use benmo::proto::peer_service_client::PeerServiceClient;
use benmo_paxos::{Block, Hash, Height, Message, NodeId};
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::Channel;
use tracing::debug;

use crate::core_loop::{Command, CoreHandle};
use crate::links::Links;

/// The most blocks asked for in one catch-up fetch.
pub const CATCH_UP_BLOCKS_MAX: u32 = 256;
/// Outgoing messages queued per peer before new ones are dropped.
const PEER_QUEUE_MAX: usize = 8_192;
/// Calls in flight per peer.
const PEER_CALLS_MAX: usize = 256;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a call may take before it counts as lost.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest peer message, either way. A Promise carries every value its acceptor accepted
/// above its height, which can be many blocks: far above gRPC's default of 4 MiB.
pub const PEER_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

enum Outbound {
    Message(Message),
    Fetch(Height),
}

/// Hands outgoing traffic to one task per peer. Cheap to call from the core loop: it never blocks.
pub struct Transport {
    queues: BTreeMap<NodeId, mpsc::Sender<Outbound>>,
}

impl Transport {
    /// Starts one sender task per peer on the current tokio runtime.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        id: NodeId,
        cluster: &Cluster,
        genesis_hash: Hash,
        links: Arc<Links>,
        core: CoreHandle,
    ) -> anyhow::Result<Transport> {
        let mut queues = BTreeMap::new();
        for (peer, address) in cluster.iter().filter(|(peer, _)| *peer != id) {
            let channel = {
                let _guard = runtime.enter();
                benmo::dial::channel(address, CONNECT_TIMEOUT, CALL_TIMEOUT)?
            };
            let (sender, receiver) = mpsc::channel(PEER_QUEUE_MAX);
            let peer_sender = PeerSender {
                peer,
                client: PeerServiceClient::new(channel)
                    .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
                header: convert::header(id, genesis_hash),
                links: links.clone(),
                core: core.clone(),
                calls: Arc::new(Semaphore::new(PEER_CALLS_MAX)),
            };
            runtime.spawn(peer_sender.run(receiver));
            queues.insert(peer, sender);
        }
        Ok(Transport { queues })
    }

    /// Sends `message` to `peer` (or drops it if the peer's queue is full).
    pub fn send(&self, peer: NodeId, message: Message) {
        self.enqueue(peer, Outbound::Message(message));
    }

    /// Fetches `peer`'s blocks from height `from`; they come back as [`Command::Blocks`].
    pub fn fetch(&self, peer: NodeId, from: Height) {
        self.enqueue(peer, Outbound::Fetch(from));
    }

    fn enqueue(&self, peer: NodeId, outbound: Outbound) {
        if let Some(queue) = self.queues.get(&peer) {
            if queue.try_send(outbound).is_err() {
                debug!("queue to node {peer} is full; dropping a message");
            }
        }
    }
}

#[derive(Clone)]
struct PeerSender {
    peer: NodeId,
    client: PeerServiceClient<Channel>,
    header: proto::PeerHeader,
    links: Arc<Links>,
    core: CoreHandle,
    calls: Arc<Semaphore>,
}

impl PeerSender {
    async fn run(self, mut receiver: mpsc::Receiver<Outbound>) {
        while let Some(outbound) = receiver.recv().await {
            if !self.links.sends_to(self.peer) {
                continue;
            }
            let Ok(permit) = self.calls.clone().acquire_owned().await else {
                return;
            };
            let sender = self.clone();
            tokio::spawn(async move {
                match outbound {
                    Outbound::Message(message) => sender.call(message).await,
                    Outbound::Fetch(from) => sender.fetch(from).await,
                }
                drop(permit);
            });
        }
    }

    async fn call(mut self, message: Message) {
        let request = match convert::request(message, self.header.clone()) {
            Ok(request) => request,
            Err(reply) => {
                debug!(
                    "a {} is only ever a reply; not sending it as a request",
                    reply.kind()
                );
                return;
            }
        };
        let reply = match request {
            PeerRequest::Heartbeat(request) => match self.client.heartbeat(request).await {
                Ok(response) => convert::from_heartbeat_reply(response.into_inner()).map(Some),
                Err(status) => return self.lost("heartbeat", status),
            },
            PeerRequest::Prepare(request) => match self.client.prepare(request).await {
                Ok(response) => convert::from_prepare_reply(response.into_inner()),
                Err(status) => return self.lost("prepare", status),
            },
            PeerRequest::Accept(request) => match self.client.accept(request).await {
                Ok(response) => convert::from_accept_reply(response.into_inner()),
                Err(status) => return self.lost("accept", status),
            },
            PeerRequest::Decide(request) => match self.client.decide(request).await {
                Ok(_) => Ok(None),
                Err(status) => return self.lost("decide", status),
            },
            PeerRequest::Forward(request) => match self.client.forward(request).await {
                Ok(_) => Ok(None),
                Err(status) => return self.lost("forward", status),
            },
        };
        match reply {
            Ok(Some(message)) => self.deliver(message),
            Ok(None) => {}
            Err(error) => debug!("malformed reply from node {}: {error}", self.peer),
        }
    }

    fn deliver(&self, message: Message) {
        if !self.links.takes_from(self.peer) {
            return;
        }
        let command = Command::Peer {
            from: self.peer,
            message,
            reply: None,
        };
        if self.core.send(command).is_err() {
            debug!("core loop busy; dropping a reply from node {}", self.peer);
        }
    }

    fn lost(&self, kind: &str, status: tonic::Status) {
        debug!("{kind} to node {} lost: {}", self.peer, status.message());
    }

    async fn fetch(mut self, from: Height) {
        let request = proto::FetchBlocksRequest {
            header: Some(self.header.clone()),
            from_height: from,
            limit: CATCH_UP_BLOCKS_MAX,
        };
        let mut blocks: Vec<Block> = Vec::new();
        match self.client.fetch_blocks(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(block)) => match Block::try_from(block) {
                            Ok(block) => blocks.push(block),
                            Err(error) => {
                                debug!("malformed block from node {}: {error}", self.peer);
                                break;
                            }
                        },
                        Ok(None) => break,
                        Err(status) => {
                            self.lost("fetch", status);
                            break;
                        }
                    }
                }
            }
            Err(status) => self.lost("fetch", status),
        }
        if !self.links.takes_from(self.peer) {
            blocks.clear();
        }
        let command = Command::Blocks {
            from: self.peer,
            blocks,
        };
        if self.core.send(command).is_err() {
            debug!("core loop busy; dropping blocks from node {}", self.peer);
        }
    }
}
