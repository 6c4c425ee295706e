//! The small concrete types every part of the core speaks in.

use std::cmp::Ordering;
use std::fmt;

/// A node of the cluster, numbered `1..=N`. Node `n` also owns account `n`.
pub type NodeId = u32;

/// A block height. Slot `h` of Multi-Paxos decides block `h`; block 0 is the genesis.
pub type Height = u64;

/// The highest ballot round a correct node ever uses. Rounds grow by one per election, so no
/// cluster comes near it; a message with a higher round is impossible and is refused, which keeps
/// `round + 1` from ever overflowing.
pub const ROUND_MAX: u64 = u64::MAX / 4;

/// The highest slot or height a correct node ever names. A message naming a higher one is
/// impossible and is refused, which keeps `height + 1` and similar sums from ever overflowing.
pub const HEIGHT_MAX: Height = u64::MAX / 4;

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

    /// The first ballot of `node` above every round in `rounds`, or `None` if that round would pass
    /// [`ROUND_MAX`] (only an impossible ballot that slipped past the checks could cause that).
    pub fn above(rounds: impl IntoIterator<Item = u64>, node: NodeId) -> Option<Ballot> {
        let round = rounds.into_iter().max().unwrap_or(0).checked_add(1)?;
        (round <= ROUND_MAX).then_some(Ballot { round, node })
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

    #[test]
    fn a_ballot_above_never_overflows() {
        assert_eq!(Ballot::above([3, 7, 5], 2), Some(Ballot::new(8, 2)));
        assert_eq!(Ballot::above([], 1), Some(Ballot::new(1, 1)));
        assert_eq!(
            Ballot::above([ROUND_MAX - 1], 1),
            Some(Ballot::new(ROUND_MAX, 1))
        );
        assert_eq!(Ballot::above([ROUND_MAX], 1), None);
        assert_eq!(Ballot::above([u64::MAX], 1), None);
    }
}
