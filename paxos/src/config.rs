//! The core's configuration and the limits it enforces.

use crate::bugs::PlantedBugs;
use crate::types::NodeId;

/// The largest cluster the core accepts.
pub const NODES_MAX: u32 = 9;
/// The longest election timeout the core accepts, in ticks.
pub const ELECTION_TIMEOUT_TICKS_MAX: u64 = 1_000;
/// The most transfers the core accepts in one batch.
pub const BATCH_TRANSFERS_LIMIT: usize = 10_000;
/// The most slots the core accepts in flight at once.
pub const IN_FLIGHT_SLOTS_LIMIT: usize = 64;
/// How many times a forwarded transfer may be passed on towards the leader.
pub const FORWARD_HOPS_MAX: u32 = 4;

/// How one node runs. Time is counted in ticks: the host calls [`crate::Input::Tick`] once per
/// heartbeat interval, and every timer of the core is a whole number of ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id, in `1..=nodes`.
    pub id: NodeId,
    /// The cluster size N; nodes and accounts are `1..=N`.
    pub nodes: u32,
    /// Every account's balance at the genesis block.
    pub genesis_balance: u64,
    /// A follower that has not seen its leader alive for this many ticks (at least) starts an
    /// election. The actual timeout is drawn anew each time from `min..=max`.
    pub election_timeout_ticks_min: u64,
    /// The upper end of the election timeout, in ticks.
    pub election_timeout_ticks_max: u64,
    /// The most transfers a leader puts into one block.
    pub batch_transfers_max: usize,
    /// The most slots a leader keeps proposed but undecided at once.
    pub in_flight_slots_max: usize,
    /// The most transfers a node keeps in its pending log; beyond it, clients are told to retry.
    pub pending_transfers_max: usize,
    /// The most transfers a leader keeps queued for proposal.
    pub queue_transfers_max: usize,
    /// A transfer still pending after this many ticks is forwarded to the leader again.
    pub forward_retry_ticks: u64,
    /// A catch-up fetch unanswered after this many ticks may be sent again.
    pub fetch_timeout_ticks: u64,
    /// Planted bugs; empty outside the simulator's tests.
    pub planted_bugs: PlantedBugs,
}

/// A [`Config`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The cluster size is out of range.
    #[error("cluster size {nodes} is out of range: a cluster has 1 to {NODES_MAX} nodes")]
    Nodes {
        /// The size given.
        nodes: u32,
    },
    /// The node id is not in the cluster.
    #[error("node id {id} is not in the cluster (ids are 1..={nodes})")]
    Id {
        /// The id given.
        id: NodeId,
        /// The cluster size.
        nodes: u32,
    },
    /// The genesis balances would overflow the total.
    #[error("genesis balance {balance} times {nodes} accounts overflows")]
    GenesisBalance {
        /// The balance given.
        balance: u64,
        /// The cluster size.
        nodes: u32,
    },
    /// The election timeout range is empty or out of bounds.
    #[error("election timeout must satisfy 2 <= min <= max <= {ELECTION_TIMEOUT_TICKS_MAX} ticks (got {min}..={max})")]
    ElectionTimeout {
        /// The minimum given.
        min: u64,
        /// The maximum given.
        max: u64,
    },
    /// A limit is zero or too large.
    #[error("{name} must be in 1..={limit} (got {value})")]
    Limit {
        /// Which limit.
        name: &'static str,
        /// The value given.
        value: usize,
        /// The largest value accepted.
        limit: usize,
    },
    /// A timer is zero.
    #[error("{name} must be at least one tick")]
    Timer {
        /// Which timer.
        name: &'static str,
    },
}

impl Config {
    /// A configuration with the defaults for node `id` of a cluster of `nodes`.
    pub fn new(id: NodeId, nodes: u32) -> Config {
        Config {
            id,
            nodes,
            genesis_balance: 100,
            election_timeout_ticks_min: 4,
            election_timeout_ticks_max: 8,
            batch_transfers_max: 1_024,
            in_flight_slots_max: 2,
            pending_transfers_max: 100_000,
            queue_transfers_max: 100_000,
            forward_retry_ticks: 10,
            fetch_timeout_ticks: 4,
            planted_bugs: PlantedBugs::default(),
        }
    }

    /// The number of nodes that make a majority.
    pub fn majority(&self) -> usize {
        self.nodes as usize / 2 + 1
    }

    /// Every node id but this one.
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        (1..=self.nodes).filter(move |node| *node != self.id)
    }

    /// Checks that the configuration can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes == 0 || self.nodes > NODES_MAX {
            return Err(ConfigError::Nodes { nodes: self.nodes });
        }
        if self.id == 0 || self.id > self.nodes {
            return Err(ConfigError::Id {
                id: self.id,
                nodes: self.nodes,
            });
        }
        if self
            .genesis_balance
            .checked_mul(self.nodes as u64)
            .is_none()
        {
            return Err(ConfigError::GenesisBalance {
                balance: self.genesis_balance,
                nodes: self.nodes,
            });
        }
        let (min, max) = (
            self.election_timeout_ticks_min,
            self.election_timeout_ticks_max,
        );
        if min < 2 || min > max || max > ELECTION_TIMEOUT_TICKS_MAX {
            return Err(ConfigError::ElectionTimeout { min, max });
        }
        let limits = [
            (
                "batch_transfers_max",
                self.batch_transfers_max,
                BATCH_TRANSFERS_LIMIT,
            ),
            (
                "in_flight_slots_max",
                self.in_flight_slots_max,
                IN_FLIGHT_SLOTS_LIMIT,
            ),
            (
                "pending_transfers_max",
                self.pending_transfers_max,
                10_000_000,
            ),
            ("queue_transfers_max", self.queue_transfers_max, 10_000_000),
        ];
        for (name, value, limit) in limits {
            if value == 0 || value > limit {
                return Err(ConfigError::Limit { name, value, limit });
            }
        }
        for (name, value) in [
            ("forward_retry_ticks", self.forward_retry_ticks),
            ("fetch_timeout_ticks", self.fetch_timeout_ticks),
        ] {
            if value == 0 {
                return Err(ConfigError::Timer { name });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_for_every_supported_size() {
        for nodes in 1..=NODES_MAX {
            for id in 1..=nodes {
                assert_eq!(Config::new(id, nodes).validate(), Ok(()));
            }
        }
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            Config::new(1, 0).validate(),
            Err(ConfigError::Nodes { nodes: 0 })
        );
        assert_eq!(
            Config::new(6, 5).validate(),
            Err(ConfigError::Id { id: 6, nodes: 5 })
        );
        let mut config = Config::new(1, 5);
        config.election_timeout_ticks_min = 9;
        assert_eq!(
            config.validate(),
            Err(ConfigError::ElectionTimeout { min: 9, max: 8 })
        );
        let mut config = Config::new(1, 5);
        config.batch_transfers_max = 0;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Limit {
                name: "batch_transfers_max",
                ..
            })
        ));
        let mut config = Config::new(1, 5);
        config.genesis_balance = u64::MAX;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::GenesisBalance { .. })
        ));
    }

    #[test]
    fn majority_is_more_than_half() {
        assert_eq!(Config::new(1, 3).majority(), 2);
        assert_eq!(Config::new(1, 5).majority(), 3);
        assert_eq!(Config::new(1, 7).majority(), 4);
        assert_eq!(Config::new(1, 4).majority(), 3);
    }
}
