//! Outgoing peer traffic. For every peer, one long-lived `Stream` call stays open, and the core
//! loop writes each frame of messages it has for that peer straight into it, in order; the peer's
//! own messages arrive on the stream it keeps open to us (see `service`). Catch-up fetches are
//! separate server-streaming calls on the same connection.
//!
//! Frames go into the call from the core loop's own step, not through a task of the transport's:
//! on the node's single thread (the default `--threads 1`) each task hop waits its turn behind
//! every other ready task, a task per client call under load.
//!
//! A frame that cannot be sent (the peer is down, its stream's buffer is full, the link is cut)
//! is a lost message: the core retransmits what matters. A call that ends is opened again with the
//! next frame, so a restarted peer is reached as soon as it listens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use benmo::cluster::Cluster;
use benmo::convert;
use benmo::proto;
use benmo::proto::peer_service_client::PeerServiceClient;
use benmo::secrets::Secrets;
use benmo_paxos::{Block, Hash, Height, Message, NodeId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tracing::debug;

use crate::core_loop::{Command, CoreHandle};
use crate::links::Links;
use crate::telemetry::{Kind, Telemetry};

/// The most blocks asked for in one catch-up fetch.
pub const CATCH_UP_BLOCKS_MAX: u32 = 256;
/// Frames buffered in an open stream before new ones are dropped (the peer is not reading).
const STREAM_FRAMES_MAX: usize = 1_024;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a catch-up fetch may take before it counts as lost.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest peer frame or block, either way. A Promise carries at most twice the deepest
/// pipeline of accepted batches (see the core's `ACCEPT_AHEAD_MAX`), and a batch at most
/// `BATCH_TRANSFERS_LIMIT` transfers; with the default batch limit a Promise stays below a few MiB.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Hands outgoing traffic to each peer's stream. Cheap to call from the core loop: it never blocks.
pub struct Transport {
    peers: BTreeMap<NodeId, Peer>,
    id: NodeId,
    genesis_hash: Hash,
    links: Arc<Links>,
    core: CoreHandle,
    telemetry: Arc<Telemetry>,
}

/// One peer's connection and the stream open on it, if any.
struct Peer {
    client: PeerServiceClient<Channel>,
    stream: Option<mpsc::Sender<proto::PeerFrame>>,
}

impl Transport {
    /// Sets up a connection to every peer; connections are made, and streams opened, on first use,
    /// on the current tokio runtime.
    pub fn start(
        id: NodeId,
        cluster: &Cluster,
        genesis_hash: Hash,
        secrets: Option<&Secrets>,
        links: Arc<Links>,
        core: CoreHandle,
        telemetry: Arc<Telemetry>,
    ) -> anyhow::Result<Transport> {
        let mut peers = BTreeMap::new();
        let identity = match secrets {
            Some(secrets) => {
                let (certificate, key) = secrets.node_identity(id)?;
                Some(Identity::from_pem(certificate, key))
            }
            None => None,
        };
        for peer in cluster.ids().filter(|peer| *peer != id) {
            let address = cluster
                .peer_address(peer, secrets.is_some())
                .with_context(|| {
                    format!("node {peer}'s client port leaves no room for its peer port")
                })?;
            // With secrets, the peer must show the certificate of exactly this node id: TLS
            // checks it under the name only that certificate carries.
            let tls = secrets.zip(identity.clone()).map(|(secrets, identity)| {
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(secrets.ca_pem()))
                    .identity(identity)
                    .domain_name(secrets.peer_name(peer))
            });
            // Calls of their own have no deadline: a stream lives as long as both nodes do.
            let channel = benmo::dial::channel_with_tls(&address, CONNECT_TIMEOUT, None, tls)?;
            let client = PeerServiceClient::new(channel)
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
            peers.insert(
                peer,
                Peer {
                    client,
                    stream: None,
                },
            );
        }
        Ok(Transport {
            peers,
            id,
            genesis_hash,
            links,
            core,
            telemetry,
        })
    }

    /// Sends `messages` to `peer` as one frame, or drops them if the link is cut or the peer's
    /// stream is full.
    pub fn send(&mut self, peer: NodeId, messages: Vec<Message>) {
        if !self.links.sends_to(peer) {
            self.telemetry.failed_messages(peer, &messages);
            return;
        }
        let Some(connection) = self.peers.get_mut(&peer) else {
            return;
        };
        let open = connection
            .stream
            .as_ref()
            .filter(|stream| !stream.is_closed());
        let stream = match open {
            Some(stream) => stream,
            None => connection.stream.insert(open_stream(
                &connection.client,
                self.id,
                peer,
                self.genesis_hash,
            )),
        };
        if stream.try_send(convert::frame(&messages)).is_err() {
            debug!("stream to node {peer} is full or closing; dropping a frame");
            self.telemetry.failed_messages(peer, &messages);
        }
    }

    /// Fetches `peer`'s blocks from height `from`; they come back as [`Command::Blocks`] (none if
    /// the fetch failed).
    pub fn fetch(&self, peer: NodeId, from: Height) {
        let Some(connection) = self.peers.get(&peer) else {
            return;
        };
        let fetcher = Fetcher {
            id: self.id,
            peer,
            client: connection.client.clone(),
            genesis_hash: self.genesis_hash,
            links: self.links.clone(),
            core: self.core.clone(),
        };
        if self.links.sends_to(peer) {
            self.telemetry.fetch_sent(peer);
            tokio::spawn(fetcher.fetch(from));
        } else {
            self.telemetry.failed(peer, Kind::Fetch, 1);
            fetcher.deliver_blocks(Vec::new());
        }
    }
}

/// Opens a `Stream` call to `peer`; frames put into the returned sender travel on it, in order.
/// When the call ends, the sender reports closed and the next frame opens a new call.
fn open_stream(
    client: &PeerServiceClient<Channel>,
    id: NodeId,
    peer: NodeId,
    genesis_hash: Hash,
) -> mpsc::Sender<proto::PeerFrame> {
    let (sender, frames) = mpsc::channel(STREAM_FRAMES_MAX);
    let mut request = tonic::Request::new(ReceiverStream::new(frames));
    convert::name_caller(&mut request, id, genesis_hash);
    let mut client = client.clone();
    tokio::spawn(async move {
        if let Err(status) = client.stream(request).await {
            debug!("stream to node {peer} ended: {}", status.message());
        }
    });
    sender
}

/// One catch-up fetch from one peer.
struct Fetcher {
    id: NodeId,
    peer: NodeId,
    client: PeerServiceClient<Channel>,
    genesis_hash: Hash,
    links: Arc<Links>,
    core: CoreHandle,
}

impl Fetcher {
    async fn fetch(mut self, from: Height) {
        let mut request = tonic::Request::new(proto::FetchBlocksRequest {
            from_height: from,
            limit: CATCH_UP_BLOCKS_MAX,
        });
        convert::name_caller(&mut request, self.id, self.genesis_hash);
        request.set_timeout(FETCH_TIMEOUT);
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
                            debug!("fetch from node {} failed: {}", self.peer, status.message());
                            break;
                        }
                    }
                }
            }
            Err(status) => debug!("fetch from node {} failed: {}", self.peer, status.message()),
        }
        if !self.links.takes_from(self.peer) {
            blocks.clear();
        }
        self.deliver_blocks(blocks);
    }

    /// Hands fetched blocks to the core; none says the fetch failed.
    fn deliver_blocks(&self, blocks: Vec<Block>) {
        let command = Command::Blocks {
            from: self.peer,
            blocks,
        };
        if self.core.send(command).is_err() {
            debug!("core loop busy; dropping blocks from node {}", self.peer);
        }
    }
}
