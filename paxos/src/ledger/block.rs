//! Blocks, batches and the SHA-256 hash that links them.

use std::fmt;

use sha2::{Digest, Sha256};

use super::transfer::{Outcome, Rejection, Transfer};
use crate::types::{Height, NodeId};

/// A SHA-256 digest.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The all-zero hash: the genesis block's "previous block".
    pub const ZERO: Hash = Hash([0; 32]);

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Option<Hash> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
        }
        Some(Hash(bytes))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", &self.to_hex()[..12])
    }
}

/// What one Paxos slot decides: the transfers a leader put in one block, and which node proposed
/// them. A new leader re-proposes an accepted batch exactly as it was; an empty batch fills a gap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Batch {
    /// The leader that first proposed the batch (0 for a gap filled by a later leader).
    pub proposer: NodeId,
    /// The transfers, in the order they are applied.
    pub transfers: Vec<Transfer>,
}

/// One transfer of a block with what the ledger made of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The transfer as decided.
    pub transfer: Transfer,
    /// What applying it did.
    pub outcome: Outcome,
}

/// A decided, applied block of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    /// The height; also the Paxos slot that decided it. The genesis block is height 0.
    pub height: Height,
    /// The hash of the block at `height - 1` (zero for the genesis).
    pub prev_hash: Hash,
    /// The node that proposed the batch.
    pub proposer: NodeId,
    /// The batch's transfers with their outcomes, in order.
    pub entries: Vec<Entry>,
    /// SHA-256 over everything above (see [`Block::compute_hash`]).
    pub hash: Hash,
}

impl Block {
    /// The genesis block of a ledger with `accounts` accounts of `genesis_balance` each. Its hash
    /// binds the cluster's shape, so a node never mistakes another cluster's chain for its own.
    pub fn genesis(accounts: u32, genesis_balance: u64) -> Block {
        let mut hasher = Sha256::new();
        hasher.update(b"benmo.genesis.v1");
        hasher.update(accounts.to_be_bytes());
        hasher.update(genesis_balance.to_be_bytes());
        Block {
            height: 0,
            prev_hash: Hash::ZERO,
            proposer: 0,
            entries: Vec::new(),
            hash: Hash(hasher.finalize().into()),
        }
    }

    /// The transfers of the block as the batch that was decided for its slot.
    pub fn batch(&self) -> Batch {
        Batch {
            proposer: self.proposer,
            transfers: self
                .entries
                .iter()
                .map(|entry| entry.transfer.clone())
                .collect(),
        }
    }

    /// The hash of a block with these contents: SHA-256 over a fixed binary encoding of the
    /// height, the previous hash, the proposer and every entry with its outcome.
    pub fn compute_hash(
        height: Height,
        prev_hash: &Hash,
        proposer: NodeId,
        entries: &[Entry],
    ) -> Hash {
        let mut hasher = Sha256::new();
        hasher.update(b"benmo.block.v2");
        hasher.update(height.to_be_bytes());
        hasher.update(prev_hash.0);
        hasher.update(proposer.to_be_bytes());
        hasher.update((entries.len() as u64).to_be_bytes());
        for entry in entries {
            hash_entry(&mut hasher, entry);
        }
        Hash(hasher.finalize().into())
    }

    /// Whether `hash` matches the contents.
    pub fn hash_is_valid(&self) -> bool {
        if self.height == 0 {
            // The genesis hash covers the cluster's shape, which the block does not carry;
            // the ledger checks it against its own genesis instead.
            return true;
        }
        self.hash == Block::compute_hash(self.height, &self.prev_hash, self.proposer, &self.entries)
    }
}

fn hash_entry(hasher: &mut Sha256, entry: &Entry) {
    let transfer = &entry.transfer;
    let id = transfer.id.as_str().as_bytes();
    hasher.update([id.len() as u8]);
    hasher.update(id);
    hasher.update(transfer.from.to_be_bytes());
    hasher.update(transfer.to.to_be_bytes());
    hasher.update(transfer.amount.to_be_bytes());
    match &transfer.signature {
        None => hasher.update([0]),
        Some(signature) => {
            hasher.update([1]);
            hasher.update(signature.as_bytes());
        }
    }
    match &entry.outcome {
        Outcome::Applied => hasher.update([0]),
        Outcome::Duplicate { first_height } => {
            hasher.update([1]);
            hasher.update(first_height.to_be_bytes());
        }
        Outcome::Rejected(rejection) => {
            hasher.update([2]);
            hash_rejection(hasher, rejection);
        }
    }
}

fn hash_rejection(hasher: &mut Sha256, rejection: &Rejection) {
    match rejection {
        Rejection::UnknownAccount { account, accounts } => {
            hasher.update([0]);
            hasher.update(account.to_be_bytes());
            hasher.update(accounts.to_be_bytes());
        }
        Rejection::SameAccount { account } => {
            hasher.update([1]);
            hasher.update(account.to_be_bytes());
        }
        Rejection::ZeroAmount => hasher.update([2]),
        Rejection::InsufficientFunds {
            account,
            balance,
            amount,
        } => {
            hasher.update([3]);
            hasher.update(account.to_be_bytes());
            hasher.update(balance.to_be_bytes());
            hasher.update(amount.to_be_bytes());
        }
        Rejection::BalanceOverflow {
            account,
            balance,
            amount,
        } => {
            hasher.update([4]);
            hasher.update(account.to_be_bytes());
            hasher.update(balance.to_be_bytes());
            hasher.update(amount.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::transfer::TransferId;

    fn entry(id: &str, amount: u64, outcome: Outcome) -> Entry {
        Entry {
            transfer: Transfer {
                id: TransferId::new(id).unwrap(),
                from: 1,
                to: 2,
                amount,
                signature: None,
            },
            outcome,
        }
    }

    #[test]
    fn hex_round_trips() {
        let hash = Block::genesis(5, 100).hash;
        assert_eq!(Hash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(Hash::from_hex("zz"), None);
    }

    #[test]
    fn the_hash_covers_every_field() {
        let prev = Block::genesis(5, 100).hash;
        let entries = vec![entry("a", 5, Outcome::Applied)];
        let base = Block::compute_hash(1, &prev, 1, &entries);
        assert_ne!(base, Block::compute_hash(2, &prev, 1, &entries));
        assert_ne!(base, Block::compute_hash(1, &Hash::ZERO, 1, &entries));
        assert_ne!(base, Block::compute_hash(1, &prev, 2, &entries));
        assert_ne!(base, Block::compute_hash(1, &prev, 1, &[]));
        let other_amount = vec![entry("a", 6, Outcome::Applied)];
        assert_ne!(base, Block::compute_hash(1, &prev, 1, &other_amount));
        let other_outcome = vec![entry("a", 5, Outcome::Rejected(Rejection::ZeroAmount))];
        assert_ne!(base, Block::compute_hash(1, &prev, 1, &other_outcome));
        let other_id = vec![entry("b", 5, Outcome::Applied)];
        assert_ne!(base, Block::compute_hash(1, &prev, 1, &other_id));
    }

    #[test]
    fn genesis_depends_on_the_cluster_shape() {
        assert_ne!(Block::genesis(5, 100).hash, Block::genesis(3, 100).hash);
        assert_ne!(Block::genesis(5, 100).hash, Block::genesis(5, 101).hash);
    }
}
