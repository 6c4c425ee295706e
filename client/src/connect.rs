//! One gRPC client per node, created lazily, and plain words for a node that does not answer.

use std::time::Duration;

use benmo::cluster::Cluster;
use benmo::proto::fault_service_client::FaultServiceClient;
use benmo::proto::ledger_service_client::LedgerServiceClient;
use benmo_paxos::NodeId;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long connecting to a node may take before it counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);

/// The cluster as benmoctl reaches it.
#[derive(Clone)]
pub struct Nodes {
    cluster: Cluster,
    rpc_timeout: Duration,
    operator: OperatorToken,
}

/// Puts the operator token, if benmoctl has one, on every fault call.
#[derive(Clone, Default)]
pub struct OperatorToken(Option<MetadataValue<Ascii>>);

impl Interceptor for OperatorToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// A fault client that carries the operator token.
pub type FaultClient = FaultServiceClient<InterceptedService<Channel, OperatorToken>>;

/// A node that could not be asked, or refused the request.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CallError {
    /// The node is down or cut off from this client.
    #[error("node {node} is unreachable at {address}: {reason}")]
    Unreachable {
        /// The node.
        node: NodeId,
        /// Its address.
        address: String,
        /// What the transport said.
        reason: String,
    },
    /// The node answered with an error.
    #[error("node {node}: {message}")]
    Refused {
        /// The node.
        node: NodeId,
        /// The gRPC status code.
        code: Code,
        /// The node's explanation.
        message: String,
    },
}

impl CallError {
    /// Whether the node could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CallError::Unreachable { .. })
    }
}

impl Nodes {
    /// The cluster with a per-call timeout.
    pub fn new(cluster: Cluster, rpc_timeout: Duration) -> Nodes {
        Nodes {
            cluster,
            rpc_timeout,
            operator: OperatorToken::default(),
        }
    }

    /// Sends `token` with every fault call (`authorization: Bearer <token>`).
    pub fn with_operator_token(mut self, token: &str) -> Nodes {
        self.operator = OperatorToken(format!("Bearer {token}").parse().ok());
        self
    }

    /// The cluster list.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Every node id.
    pub fn ids(&self) -> Vec<NodeId> {
        self.cluster.ids().collect()
    }

    fn channel(&self, node: NodeId, timeout: Duration) -> Result<Channel, CallError> {
        let address = self.address(node);
        benmo::dial::channel(&address, CONNECT_TIMEOUT, Some(timeout)).map_err(|error| {
            CallError::Unreachable {
                node,
                address: address.clone(),
                reason: error.to_string(),
            }
        })
    }

    /// The address of `node` (empty if it is not in the cluster).
    pub fn address(&self, node: NodeId) -> String {
        self.cluster.address(node).unwrap_or_default().to_string()
    }

    /// A ledger client for `node` whose calls may take up to `timeout`.
    pub fn ledger_with_timeout(
        &self,
        node: NodeId,
        timeout: Duration,
    ) -> Result<LedgerServiceClient<Channel>, CallError> {
        Ok(LedgerServiceClient::new(self.channel(node, timeout)?))
    }

    /// A ledger client for `node`.
    pub fn ledger(&self, node: NodeId) -> Result<LedgerServiceClient<Channel>, CallError> {
        self.ledger_with_timeout(node, self.rpc_timeout)
    }

    /// A fault client for `node`, with the operator token if benmoctl has one.
    pub fn faults(&self, node: NodeId) -> Result<FaultClient, CallError> {
        Ok(FaultServiceClient::with_interceptor(
            self.channel(node, self.rpc_timeout)?,
            self.operator.clone(),
        ))
    }

    /// Turns a failed call into words: unreachable, or what the node said.
    pub fn error(&self, node: NodeId, status: Status) -> CallError {
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
                if !status.message().contains("severed") =>
            {
                let reason = match status.message() {
                    "" => format!("{:?}", status.code()),
                    message
                        if message.contains("transport error")
                            || message.contains("tcp connect") =>
                    {
                        "connection refused or timed out (is it running?)".to_string()
                    }
                    message => message.to_string(),
                };
                CallError::Unreachable {
                    node,
                    address: self.address(node),
                    reason,
                }
            }
            code => CallError::Refused {
                node,
                code,
                message: status.message().to_string(),
            },
        }
    }
}
