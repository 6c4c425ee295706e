//! Transfers, their ids and what the ledger decides about them.

use std::fmt;
use std::sync::Arc;

use crate::types::{Height, NodeId};

/// An account is owned by the node with the same number: accounts are `1..=N`.
pub type AccountId = NodeId;

/// A client-chosen transfer id. The ledger applies a given id at most once.
///
/// 1 to [`TransferId::LEN_MAX`] characters from `A-Z a-z 0-9 . _ : -`, so ids print safely in
/// tables and logs and hash the same everywhere.
///
/// Shared, not copied, when cloned: one id travels in the pending log, the leader's queue, every
/// Accept of its block and the ledger's records, and a leader clones it once per peer asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(Arc<str>);

/// Why a string is not a valid [`TransferId`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferIdError {
    /// The id is the empty string.
    #[error("transfer id is empty")]
    Empty,
    /// The id is longer than [`TransferId::LEN_MAX`].
    #[error("transfer id is {length} characters long; the limit is {limit}")]
    TooLong {
        /// The id's length in bytes.
        length: usize,
        /// [`TransferId::LEN_MAX`].
        limit: usize,
    },
    /// The id has a character outside `A-Z a-z 0-9 . _ : -`.
    #[error("transfer id has the character {character:?}; use only A-Z a-z 0-9 . _ : -")]
    BadCharacter {
        /// The first offending character.
        character: char,
    },
}

/// How maps and sets keyed by [`TransferId`] hash. Ids are chosen by clients, so the hash is
/// keyed, with a seed drawn at random per process, and no one can aim ids at one bucket; and it
/// is foldhash's, not the standard SipHash, because ids are hashed several times per transfer on
/// every node (the ledger's records, the leader's proposed set, the host's pending writes).
pub type IdHasher = foldhash::quality::RandomState;

impl TransferId {
    /// The longest id accepted, in bytes.
    pub const LEN_MAX: usize = 64;

    /// Checks `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<TransferId, TransferIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(TransferIdError::Empty);
        }
        if let Some(character) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(TransferIdError::BadCharacter { character });
        }
        if id.len() > TransferId::LEN_MAX {
            return Err(TransferIdError::TooLong {
                length: id.len(),
                limit: TransferId::LEN_MAX,
            });
        }
        Ok(TransferId(id.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A request to move `amount` from account `from` to account `to`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Transfer {
    /// The client-chosen id; a retry reuses it.
    pub id: TransferId,
    /// The account debited.
    pub from: AccountId,
    /// The account credited.
    pub to: AccountId,
    /// How much moves; must be positive.
    pub amount: u64,
    /// The debited account holder's ed25519 signature over [`Transfer::signing_message`]. The
    /// node that takes the transfer from a client checks it (when the cluster has account keys);
    /// the core only carries it, into the block and under the block's hash.
    pub signature: Option<Signature>,
}

/// An ed25519 signature: 64 bytes, shared rather than copied when its transfer is cloned (a
/// transfer is cloned into every Accept and record of its block), so that a [`Transfer`] stays
/// small to move.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Signature(Arc<[u8; 64]>);

impl Signature {
    /// Wraps the signature's bytes.
    pub fn new(bytes: [u8; 64]) -> Signature {
        Signature(Arc::new(bytes))
    }

    /// The signature's bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.0[..6]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        write!(formatter, "Signature({hex}…)")
    }
}

impl Transfer {
    /// The bytes the debited account signs: the cluster's genesis hash (so a signature is good in
    /// one cluster only), the id (so a signature cannot be replayed under a new id), and the
    /// transfer itself. Exactly, in order:
    ///
    /// `"benmo.transfer.v1"` · genesis hash (32 bytes) · id length (1 byte) · id (ASCII) ·
    /// from (u32 BE) · to (u32 BE) · amount (u64 BE)
    pub fn signing_message(&self, genesis_hash: &crate::ledger::Hash) -> Vec<u8> {
        let id = self.id.as_str().as_bytes();
        let mut message = Vec::with_capacity(17 + 32 + 1 + id.len() + 16);
        message.extend_from_slice(b"benmo.transfer.v1");
        message.extend_from_slice(&genesis_hash.0);
        message.push(id.len() as u8);
        message.extend_from_slice(id);
        message.extend_from_slice(&self.from.to_be_bytes());
        message.extend_from_slice(&self.to.to_be_bytes());
        message.extend_from_slice(&self.amount.to_be_bytes());
        message
    }
}

/// Why the ledger refuses a transfer. Every node reaches the same verdict for the same transfer at
/// the same height, so rejections are recorded in blocks like any other outcome.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejection {
    /// An account outside `1..=accounts`.
    #[error("account {account} does not exist (accounts are 1..={accounts})")]
    UnknownAccount {
        /// The account named in the transfer.
        account: AccountId,
        /// How many accounts the ledger has.
        accounts: u32,
    },
    /// The same account on both sides.
    #[error("cannot transfer from account {account} to itself")]
    SameAccount {
        /// The account named twice.
        account: AccountId,
    },
    /// An amount of zero.
    #[error("amount must be positive")]
    ZeroAmount,
    /// The debited account holds less than the amount.
    #[error("insufficient funds: account {account} has {balance}, transfer needs {amount}")]
    InsufficientFunds {
        /// The debited account.
        account: AccountId,
        /// Its balance when the transfer was ordered.
        balance: u64,
        /// The amount asked for.
        amount: u64,
    },
    /// The credited account would exceed `u64::MAX`.
    #[error("account {account} has {balance}; adding {amount} would overflow")]
    BalanceOverflow {
        /// The credited account.
        account: AccountId,
        /// Its balance when the transfer was ordered.
        balance: u64,
        /// The amount asked for.
        amount: u64,
    },
}

/// What ordering a transfer did.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The money moved.
    Applied,
    /// The transfer was refused; no money moved.
    Rejected(Rejection),
    /// The id was already ordered at `first_height`; this copy did nothing. Copies arise when a
    /// transfer is retried across a change of leader.
    Duplicate {
        /// Where the id was first ordered.
        first_height: Height,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Applied => formatter.write_str("applied"),
            Outcome::Rejected(rejection) => write!(formatter, "rejected: {rejection}"),
            Outcome::Duplicate { first_height } => {
                write!(
                    formatter,
                    "duplicate of the transfer in block {first_height}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_ids_accept_the_documented_alphabet() {
        assert!(TransferId::new("t-01.a_b:C").is_ok());
        assert_eq!(TransferId::new(""), Err(TransferIdError::Empty));
        assert_eq!(
            TransferId::new("a b"),
            Err(TransferIdError::BadCharacter { character: ' ' })
        );
        assert_eq!(
            TransferId::new("x".repeat(65)),
            Err(TransferIdError::TooLong {
                length: 65,
                limit: 64
            })
        );
        assert!(TransferId::new("x".repeat(64)).is_ok());
    }
}
