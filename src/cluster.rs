//! The cluster's membership as written on the command line: `1=http://host:port,2=...`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use benmo_paxos::config::NODES_MAX;
use benmo_paxos::NodeId;

/// The default cluster: the five client ports `docker compose up` publishes on localhost.
pub const DEFAULT_CLUSTER: &str = "1=http://127.0.0.1:50051,2=http://127.0.0.1:50052,3=http://127.0.0.1:50053,4=http://127.0.0.1:50054,5=http://127.0.0.1:50055";

/// Node ids and the gRPC address of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    addresses: BTreeMap<NodeId, String>,
}

/// A cluster list that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// An item is not `id=address`.
    #[error("{item:?} is not of the form id=http://host:port")]
    Item {
        /// The offending item.
        item: String,
    },
    /// An id is not a number in range.
    #[error("node id {id:?} is not a number from 1 to {NODES_MAX}")]
    Id {
        /// The offending id.
        id: String,
    },
    /// An address is not an http(s) URL.
    #[error("address {address:?} of node {id} must start with http:// or https://")]
    Address {
        /// The node.
        id: NodeId,
        /// The offending address.
        address: String,
    },
    /// An address without a port (or with one that is not a number up to 65535).
    #[error("address {address:?} of node {id} needs a port: write it as http://host:port")]
    Port {
        /// The node.
        id: NodeId,
        /// The offending address.
        address: String,
    },
    /// The same id twice.
    #[error("node {id} is listed twice")]
    Duplicate {
        /// The id.
        id: NodeId,
    },
    /// The ids are not exactly `1..=N`.
    #[error("node ids must be exactly 1..=N; got {ids:?}")]
    Gaps {
        /// The ids given.
        ids: Vec<NodeId>,
    },
}

impl Cluster {
    /// The number of nodes.
    pub fn size(&self) -> u32 {
        self.addresses.len() as u32
    }

    /// The address of node `id`.
    pub fn address(&self, id: NodeId) -> Option<&str> {
        self.addresses.get(&id).map(String::as_str)
    }

    /// Whether `id` is a node of this cluster.
    pub fn contains(&self, id: NodeId) -> bool {
        self.addresses.contains_key(&id)
    }

    /// Every node id, in order.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.addresses.keys().copied()
    }

    /// Every node with its address, in order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &str)> {
        self.addresses
            .iter()
            .map(|(id, address)| (*id, address.as_str()))
    }
}

/// Peers talk on their own port: the client port plus this (etcd keeps peer and client URLs
/// apart the same way).
pub const PEER_PORT_OFFSET: u16 = 1_000;

/// Splits `scheme://host:port[/]` into its host and port.
fn split_address(address: &str) -> Option<(&str, u16)> {
    let rest = address.split_once("://")?.1.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((host, port.parse().ok()?))
}

impl Cluster {
    /// The port node `id` serves clients on.
    pub fn port(&self, id: NodeId) -> Option<u16> {
        Some(split_address(self.address(id)?)?.1)
    }

    /// Where node `id` takes its peers' traffic: its host, on its client port plus
    /// [`PEER_PORT_OFFSET`], over TLS if `secure`. `None` if that port does not exist.
    pub fn peer_address(&self, id: NodeId, secure: bool) -> Option<String> {
        let (host, port) = split_address(self.address(id)?)?;
        let port = port.checked_add(PEER_PORT_OFFSET)?;
        let scheme = if secure { "https" } else { "http" };
        Some(format!("{scheme}://{host}:{port}"))
    }
}

impl FromStr for Cluster {
    type Err = ClusterError;

    fn from_str(text: &str) -> Result<Cluster, ClusterError> {
        let mut addresses = BTreeMap::new();
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let (id, address) = item.split_once('=').ok_or_else(|| ClusterError::Item {
                item: item.to_string(),
            })?;
            let id: NodeId = id
                .trim()
                .parse()
                .ok()
                .filter(|id| (1..=NODES_MAX).contains(id))
                .ok_or_else(|| ClusterError::Id { id: id.to_string() })?;
            let address = address.trim().to_string();
            if !(address.starts_with("http://") || address.starts_with("https://")) {
                return Err(ClusterError::Address { id, address });
            }
            if split_address(&address).is_none() {
                return Err(ClusterError::Port { id, address });
            }
            if addresses.insert(id, address).is_some() {
                return Err(ClusterError::Duplicate { id });
            }
        }
        let ids: Vec<NodeId> = addresses.keys().copied().collect();
        if ids.is_empty() || ids.iter().copied().ne(1..=ids.len() as NodeId) {
            return Err(ClusterError::Gaps { ids });
        }
        Ok(Cluster { addresses })
    }
}

impl fmt::Display for Cluster {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .addresses
            .iter()
            .map(|(id, address)| format!("{id}={address}"))
            .collect();
        formatter.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cluster_parses() {
        let cluster: Cluster = DEFAULT_CLUSTER.parse().unwrap();
        assert_eq!(cluster.size(), 5);
        assert_eq!(cluster.address(3), Some("http://127.0.0.1:50053"));
        assert_eq!(cluster.to_string(), DEFAULT_CLUSTER);
        assert_eq!(
            cluster.peer_address(2, true).as_deref(),
            Some("https://127.0.0.1:51052")
        );
        assert_eq!(cluster.port(5), Some(50055));
    }

    #[test]
    fn bad_lists_are_explained() {
        assert!(matches!(
            "1".parse::<Cluster>(),
            Err(ClusterError::Item { .. })
        ));
        assert!(matches!(
            "x=http://a:1".parse::<Cluster>(),
            Err(ClusterError::Id { .. })
        ));
        assert!(matches!(
            "0=http://a:1".parse::<Cluster>(),
            Err(ClusterError::Id { .. })
        ));
        assert!(matches!(
            "1=a:1".parse::<Cluster>(),
            Err(ClusterError::Address { .. })
        ));
        let no_port = "1=http://a".parse::<Cluster>().unwrap_err();
        assert!(matches!(no_port, ClusterError::Port { id: 1, .. }));
        assert!(no_port.to_string().contains("needs a port"), "{no_port}");
        assert_eq!(
            "1=http://a:1,1=http://b:1".parse::<Cluster>(),
            Err(ClusterError::Duplicate { id: 1 })
        );
        assert_eq!(
            "1=http://a:1,3=http://b:1".parse::<Cluster>(),
            Err(ClusterError::Gaps { ids: vec![1, 3] })
        );
        assert_eq!(
            "".parse::<Cluster>(),
            Err(ClusterError::Gaps { ids: vec![] })
        );
    }
}
