//! The small concrete types every part of the core speaks in.

use std::cmp::Ordering;
use std::fmt;

/// A node of the cluster, numbered `1..=N`. Node `n` also owns account `n`.
pub type NodeId = u32;

/// A block height. Slot `h` of Multi-Paxos decides block `h`; block 0 is the genesis.
pub type Height = u64;

/// A Paxos ballot: totally ordered by `round`, then by `node`, so two nodes never share one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ballot {
    /// The round; a node starting an election picks a round above every one it has seen.
    pub round: u64,
    /// The node that owns the ballot; breaks ties between equal rounds.
    pub node: NodeId,
}

impl Ballot {
    /// The ballot below every ballot a node can use; nothing has been promised yet.
    pub const ZERO: Ballot = Ballot { round: 0, node: 0 };

    /// Creates the ballot `(round, node)`.
    pub fn new(round: u64, node: NodeId) -> Ballot {
        Ballot { round, node }
    }
}

impl Ord for Ballot {
    fn cmp(&self, other: &Ballot) -> Ordering {
        (self.round, self.node).cmp(&(other.round, other.node))
    }
}

impl PartialOrd for Ballot {
    fn partial_cmp(&self, other: &Ballot) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}.{}", self.round, self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_node() {
        assert!(Ballot::new(1, 5) < Ballot::new(2, 1));
        assert!(Ballot::new(2, 1) < Ballot::new(2, 3));
        assert_ne!(Ballot::new(2, 1), Ballot::new(2, 3));
        assert!(Ballot::ZERO < Ballot::new(0, 1));
    }
}
