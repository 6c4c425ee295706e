//! The per-peer switches behind `benmoctl sever` and `heal`. A cut outgoing link drops what this
//! node sends to the peer (replies to the peer's requests included); a cut incoming link refuses
//! the peer's requests and drops its replies. Client traffic never passes through here.

use std::sync::atomic::{AtomicU32, Ordering};

use benmo_paxos::NodeId;

/// Which way a cut or heal applies, seen from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Both ways.
    Both,
    /// What this node sends to the peer.
    Outgoing,
    /// What this node takes from the peer.
    Incoming,
}

/// The switches, one bit per peer (clusters have at most nine nodes).
#[derive(Debug, Default)]
pub struct Links {
    cut_outgoing: AtomicU32,
    cut_incoming: AtomicU32,
}

fn bit(peer: NodeId) -> u32 {
    1 << peer
}

fn members(mask: u32) -> Vec<NodeId> {
    (0..32).filter(|peer| mask & bit(*peer) != 0).collect()
}

impl Links {
    /// Whether this node may send to `peer`.
    pub fn sends_to(&self, peer: NodeId) -> bool {
        self.cut_outgoing.load(Ordering::Relaxed) & bit(peer) == 0
    }

    /// Whether this node takes messages from `peer`.
    pub fn takes_from(&self, peer: NodeId) -> bool {
        self.cut_incoming.load(Ordering::Relaxed) & bit(peer) == 0
    }

    /// Cuts the link with `peer` in `direction`.
    pub fn sever(&self, peer: NodeId, direction: Direction) {
        if direction != Direction::Incoming {
            self.cut_outgoing.fetch_or(bit(peer), Ordering::Relaxed);
        }
        if direction != Direction::Outgoing {
            self.cut_incoming.fetch_or(bit(peer), Ordering::Relaxed);
        }
    }

    /// Restores the link with `peer` (every peer if `None`) in `direction`.
    pub fn heal(&self, peer: Option<NodeId>, direction: Direction) {
        let mask = peer.map_or(u32::MAX, bit);
        if direction != Direction::Incoming {
            self.cut_outgoing.fetch_and(!mask, Ordering::Relaxed);
        }
        if direction != Direction::Outgoing {
            self.cut_incoming.fetch_and(!mask, Ordering::Relaxed);
        }
    }

    /// Peers this node sends nothing to.
    pub fn cut_outgoing(&self) -> Vec<NodeId> {
        members(self.cut_outgoing.load(Ordering::Relaxed))
    }

    /// Peers this node takes nothing from.
    pub fn cut_incoming(&self) -> Vec<NodeId> {
        members(self.cut_incoming.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_and_heals_by_direction() {
        let links = Links::default();
        links.sever(2, Direction::Both);
        links.sever(4, Direction::Outgoing);
        assert!(!links.sends_to(2) && !links.takes_from(2));
        assert!(!links.sends_to(4) && links.takes_from(4));
        assert!(links.sends_to(3) && links.takes_from(3));
        assert_eq!(links.cut_outgoing(), vec![2, 4]);
        assert_eq!(links.cut_incoming(), vec![2]);
        links.heal(Some(2), Direction::Incoming);
        assert!(!links.sends_to(2) && links.takes_from(2));
        links.heal(None, Direction::Both);
        assert!(links.cut_outgoing().is_empty() && links.cut_incoming().is_empty());
    }
}
