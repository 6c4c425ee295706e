//! The ledger state machine: balances derived by applying decided batches in height order.
//!
//! Applying is deterministic, so every node derives the same block, with the same outcomes and the
//! same hash, from the same decided batch.

mod block;
mod transfer;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

pub use block::{Batch, Block, Entry, Hash};
pub use transfer::{
    AccountId, IdHasher, Outcome, Rejection, Signature, Transfer, TransferId, TransferIdError,
};

use crate::bugs::{PlantedBug, PlantedBugs};
use crate::types::{Height, NodeId};

/// Where and how a transfer id was first ordered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The block that holds it.
    pub height: Height,
    /// That block's hash.
    pub block_hash: Hash,
    /// The transfer as first ordered under this id.
    pub transfer: Transfer,
    /// What it did.
    pub outcome: Outcome,
}

/// The records of transfers the ledger no longer keeps in memory: every id ordered in a block at
/// or below the height given to [`Ledger::archive_through`]. A node's store keeps them on disk, so
/// the ledger's memory stays bounded however long the chain grows.
///
/// A lookup that cannot read its store panics: storage errors are fatal to a node.
pub trait Archive: Send + Sync + fmt::Debug {
    /// The record of `id`, if a block at or below the archived height holds it.
    fn lookup(&self, id: &TransferId) -> Option<Record>;
}

/// The ledger's state at a block, small enough to write with every block: what a node restores
/// from instead of replaying its whole chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerSnapshot {
    /// The block the state is at.
    pub height: Height,
    /// Its hash.
    pub head_hash: Hash,
    /// Balances of accounts `1..=N`.
    pub balances: Vec<u64>,
    /// How many distinct transfer ids the chain holds up to `height`.
    pub transfers: u64,
}

/// A block that does not extend the chain it was offered to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The block is not the next one.
    #[error("expected block {expected}, got block {got}")]
    WrongHeight {
        /// The height that would extend the chain.
        expected: Height,
        /// The height offered.
        got: Height,
    },
    /// The genesis block is not this cluster's.
    #[error("genesis block {got:?} is not this cluster's genesis {expected:?}")]
    WrongGenesis {
        /// This cluster's genesis hash.
        expected: Hash,
        /// The hash offered.
        got: Hash,
    },
    /// The block's previous-hash is not the head's hash.
    #[error("block {height} links to {got:?} but the chain's head is {expected:?}")]
    BrokenLink {
        /// The offered block's height.
        height: Height,
        /// The head's hash.
        expected: Hash,
        /// The previous-hash the block carries.
        got: Hash,
    },
    /// Applying the block's transfers gives other outcomes than the block records.
    #[error("block {height} records outcomes that its transfers do not produce")]
    WrongOutcomes {
        /// The offered block's height.
        height: Height,
    },
    /// The block's hash does not match its contents.
    #[error("block {height} has hash {got:?} but its contents hash to {expected:?}")]
    WrongHash {
        /// The offered block's height.
        height: Height,
        /// The hash of the contents.
        expected: Hash,
        /// The hash the block carries.
        got: Hash,
    },
}

/// Balances, the chain's head and the index of applied transfer ids. The index keeps in memory
/// only the records above the archived height; older ones are looked up in the [`Archive`].
#[derive(Clone)]
pub struct Ledger {
    genesis_hash: Hash,
    balances: Vec<u64>,
    height: Height,
    head_hash: Hash,
    /// Records of blocks above the archived height.
    recent: HashMap<TransferId, Record, IdHasher>,
    /// The ids of `recent`, by block, oldest first, so archiving can drop them.
    recent_by_height: VecDeque<(Height, Vec<TransferId>)>,
    archive: Option<Arc<dyn Archive>>,
    transfers: u64,
    planted: PlantedBugs,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Ledger")
            .field("height", &self.height)
            .field("head_hash", &self.head_hash)
            .field("balances", &self.balances)
            .field("transfers", &self.transfers)
            .field("recent", &self.recent.len())
            .finish()
    }
}

/// A batch being derived but not yet committed: the balances it leads to and the ids it holds.
/// There are only a handful of accounts, so a copy of the balances is the cheapest overlay.
struct Overlay<'a> {
    balances: Vec<u64>,
    ids: HashSet<&'a TransferId, IdHasher>,
}

impl Ledger {
    /// A ledger at the genesis block: `accounts` accounts holding `genesis_balance` each.
    pub fn genesis(accounts: u32, genesis_balance: u64) -> Ledger {
        let genesis = Block::genesis(accounts, genesis_balance);
        Ledger {
            genesis_hash: genesis.hash,
            balances: vec![genesis_balance; accounts as usize],
            height: 0,
            head_hash: genesis.hash,
            recent: HashMap::default(),
            recent_by_height: VecDeque::new(),
            archive: None,
            transfers: 0,
            planted: PlantedBugs::default(),
        }
    }

    /// A ledger resumed from a snapshot of its state; records of blocks at or below the
    /// snapshot's height come from `archive`.
    pub fn resume(
        accounts: u32,
        genesis_balance: u64,
        snapshot: LedgerSnapshot,
        archive: Arc<dyn Archive>,
    ) -> Ledger {
        let mut ledger = Ledger::genesis(accounts, genesis_balance);
        ledger.balances = snapshot.balances;
        ledger.height = snapshot.height;
        ledger.head_hash = snapshot.head_hash;
        ledger.transfers = snapshot.transfers;
        ledger.archive = Some(archive);
        ledger
    }

    /// Hands the records at or below the archived height to `archive` from now on.
    pub fn set_archive(&mut self, archive: Arc<dyn Archive>) {
        self.archive = Some(archive);
    }

    /// Forgets the in-memory records of blocks at or below `height`: the archive holds them now
    /// (the host calls this once those blocks' writes are done). Without an archive, keeps them.
    pub fn archive_through(&mut self, height: Height) {
        if self.archive.is_none() {
            return;
        }
        while let Some((block_height, _)) = self.recent_by_height.front() {
            if *block_height > height {
                break;
            }
            let (_, ids) = self.recent_by_height.pop_front().expect("front exists");
            for id in ids {
                self.recent.remove(&id);
            }
        }
    }

    /// The state to write beside the head block.
    pub fn snapshot(&self) -> LedgerSnapshot {
        LedgerSnapshot {
            height: self.height,
            head_hash: self.head_hash,
            balances: self.balances.clone(),
            transfers: self.transfers,
        }
    }

    /// How many records the ledger keeps in memory.
    pub fn records_in_memory(&self) -> usize {
        self.recent.len()
    }

    /// Rebuilds a ledger by applying a stored chain from the genesis, checking every link,
    /// outcome and hash on the way.
    pub fn replay<'a>(
        accounts: u32,
        genesis_balance: u64,
        blocks: impl IntoIterator<Item = &'a Block>,
    ) -> Result<Ledger, ChainError> {
        let mut ledger = Ledger::genesis(accounts, genesis_balance);
        let mut blocks = blocks.into_iter();
        if let Some(genesis) = blocks.next() {
            if genesis.height != 0 {
                return Err(ChainError::WrongHeight {
                    expected: 0,
                    got: genesis.height,
                });
            }
            if genesis.hash != ledger.genesis_hash {
                return Err(ChainError::WrongGenesis {
                    expected: ledger.genesis_hash,
                    got: genesis.hash,
                });
            }
        }
        for block in blocks {
            ledger.append(block)?;
        }
        Ok(ledger)
    }

    /// Switches on a planted bug (tests only).
    pub(crate) fn plant(&mut self, planted: PlantedBugs) {
        self.planted = planted;
    }

    /// The number of accounts.
    pub fn accounts(&self) -> u32 {
        self.balances.len() as u32
    }

    /// The height of the last applied block.
    pub fn height(&self) -> Height {
        self.height
    }

    /// The hash of the last applied block.
    pub fn head_hash(&self) -> Hash {
        self.head_hash
    }

    /// The hash of block 0.
    pub fn genesis_hash(&self) -> Hash {
        self.genesis_hash
    }

    /// Balances of accounts `1..=N`, in order.
    pub fn balances(&self) -> &[u64] {
        &self.balances
    }

    /// The balance of `account`, if it exists.
    pub fn balance(&self, account: AccountId) -> Option<u64> {
        let index = (account as usize).checked_sub(1)?;
        self.balances.get(index).copied()
    }

    /// The sum of all balances.
    pub fn total(&self) -> u128 {
        self.balances.iter().map(|balance| *balance as u128).sum()
    }

    /// Where `id` was first ordered, if it was.
    pub fn lookup(&self, id: &TransferId) -> Option<Record> {
        if let Some(record) = self.recent.get(id) {
            return Some(record.clone());
        }
        self.archive.as_ref()?.lookup(id)
    }

    /// The height where `id` was first ordered, if it was.
    fn first_height(&self, id: &TransferId) -> Option<Height> {
        if let Some(record) = self.recent.get(id) {
            return Some(record.height);
        }
        self.archive
            .as_ref()?
            .lookup(id)
            .map(|record| record.height)
    }

    /// How many distinct transfer ids the chain holds.
    pub fn transfer_count(&self) -> u64 {
        self.transfers
    }

    /// The checks that do not depend on balances: both accounts exist, they differ, the amount is
    /// positive. A transfer failing them is refused before it is ever ordered.
    pub fn check_shape(&self, transfer: &Transfer) -> Result<(), Rejection> {
        let accounts = self.accounts();
        for account in [transfer.from, transfer.to] {
            if account == 0 || account > accounts {
                return Err(Rejection::UnknownAccount { account, accounts });
            }
        }
        if transfer.from == transfer.to {
            return Err(Rejection::SameAccount {
                account: transfer.from,
            });
        }
        if transfer.amount == 0 {
            return Err(Rejection::ZeroAmount);
        }
        Ok(())
    }

    /// Applies a decided batch as the next block and returns the block.
    pub fn apply(&mut self, proposer: NodeId, transfers: &[Transfer]) -> Block {
        let height = self.height + 1;
        let (entries, balances) = self.derive(height, transfers);
        let hash = Block::compute_hash(height, &self.head_hash, proposer, &entries);
        let block = Block {
            height,
            prev_hash: self.head_hash,
            proposer,
            entries,
            hash,
        };
        self.commit(&block, balances);
        block
    }

    /// Appends a block received from elsewhere (a peer, the disk) after checking that it is the
    /// next block, links to the head, and records exactly what its transfers do here.
    pub fn append(&mut self, block: &Block) -> Result<(), ChainError> {
        let expected = self.height + 1;
        if block.height != expected {
            return Err(ChainError::WrongHeight {
                expected,
                got: block.height,
            });
        }
        if block.prev_hash != self.head_hash {
            return Err(ChainError::BrokenLink {
                height: block.height,
                expected: self.head_hash,
                got: block.prev_hash,
            });
        }
        let transfers: Vec<Transfer> = block
            .entries
            .iter()
            .map(|entry| entry.transfer.clone())
            .collect();
        let (entries, balances) = self.derive(block.height, &transfers);
        if entries != block.entries {
            return Err(ChainError::WrongOutcomes {
                height: block.height,
            });
        }
        let hash = Block::compute_hash(block.height, &block.prev_hash, block.proposer, &entries);
        if hash != block.hash {
            return Err(ChainError::WrongHash {
                height: block.height,
                expected: hash,
                got: block.hash,
            });
        }
        self.commit(block, balances);
        Ok(())
    }

    /// Computes the entries of a batch at `height` without changing the ledger.
    fn derive(&self, height: Height, transfers: &[Transfer]) -> (Vec<Entry>, Vec<u64>) {
        let mut overlay = Overlay {
            balances: self.balances.clone(),
            ids: HashSet::with_capacity_and_hasher(transfers.len(), IdHasher::default()),
        };
        let mut entries = Vec::with_capacity(transfers.len());
        for transfer in transfers {
            let outcome = self.derive_outcome(&mut overlay, height, transfer);
            overlay.ids.insert(&transfer.id);
            entries.push(Entry {
                transfer: transfer.clone(),
                outcome,
            });
        }
        (entries, overlay.balances)
    }

    fn derive_outcome(
        &self,
        overlay: &mut Overlay<'_>,
        height: Height,
        transfer: &Transfer,
    ) -> Outcome {
        if !self.planted.has(PlantedBug::SkipDeduplication) {
            if let Some(first_height) = self.first_height(&transfer.id) {
                return Outcome::Duplicate { first_height };
            }
            if overlay.ids.contains(&transfer.id) {
                return Outcome::Duplicate {
                    first_height: height,
                };
            }
        }
        if let Err(rejection) = self.check_shape(transfer) {
            return Outcome::Rejected(rejection);
        }
        let from_balance = overlay.balances[transfer.from as usize - 1];
        let to_balance = overlay.balances[transfer.to as usize - 1];
        let debited = if self.planted.has(PlantedBug::SkipFundsCheck) {
            Some(from_balance.wrapping_sub(transfer.amount))
        } else {
            from_balance.checked_sub(transfer.amount)
        };
        let Some(debited) = debited else {
            return Outcome::Rejected(Rejection::InsufficientFunds {
                account: transfer.from,
                balance: from_balance,
                amount: transfer.amount,
            });
        };
        let Some(credited) = to_balance.checked_add(transfer.amount) else {
            return Outcome::Rejected(Rejection::BalanceOverflow {
                account: transfer.to,
                balance: to_balance,
                amount: transfer.amount,
            });
        };
        overlay.balances[transfer.from as usize - 1] = debited;
        overlay.balances[transfer.to as usize - 1] = credited;
        Outcome::Applied
    }

    fn commit(&mut self, block: &Block, balances: Vec<u64>) {
        self.balances = balances;
        let mut ids = Vec::with_capacity(block.entries.len());
        for entry in &block.entries {
            if matches!(entry.outcome, Outcome::Duplicate { .. }) {
                continue;
            }
            ids.push(entry.transfer.id.clone());
            self.recent.insert(
                entry.transfer.id.clone(),
                Record {
                    height: block.height,
                    block_hash: block.hash,
                    transfer: entry.transfer.clone(),
                    outcome: entry.outcome.clone(),
                },
            );
        }
        self.transfers += ids.len() as u64;
        self.recent_by_height.push_back((block.height, ids));
        self.height = block.height;
        self.head_hash = block.hash;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(id: &str, from: AccountId, to: AccountId, amount: u64) -> Transfer {
        Transfer {
            id: TransferId::new(id).unwrap(),
            from,
            to,
            amount,
            signature: None,
        }
    }

    #[test]
    fn applying_moves_money_and_links_blocks() {
        let mut ledger = Ledger::genesis(5, 100);
        let genesis = ledger.head_hash();
        let block = ledger.apply(1, &[transfer("a", 1, 3, 20)]);
        assert_eq!(block.height, 1);
        assert_eq!(block.prev_hash, genesis);
        assert!(block.hash_is_valid());
        assert_eq!(block.entries[0].outcome, Outcome::Applied);
        assert_eq!(ledger.balances(), &[80, 100, 120, 100, 100]);
        assert_eq!(ledger.head_hash(), block.hash);
        assert_eq!(ledger.total(), 500);
    }

    #[test]
    fn each_rejection_names_its_reason_and_moves_nothing() {
        let mut ledger = Ledger::genesis(5, 100);
        let block = ledger.apply(
            1,
            &[
                transfer("unknown", 1, 6, 1),
                transfer("zero-account", 0, 2, 1),
                transfer("same", 2, 2, 1),
                transfer("zero", 1, 2, 0),
                transfer("poor", 1, 2, 101),
            ],
        );
        let outcomes: Vec<Outcome> = block.entries.iter().map(|e| e.outcome.clone()).collect();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Rejected(Rejection::UnknownAccount {
                    account: 6,
                    accounts: 5
                }),
                Outcome::Rejected(Rejection::UnknownAccount {
                    account: 0,
                    accounts: 5
                }),
                Outcome::Rejected(Rejection::SameAccount { account: 2 }),
                Outcome::Rejected(Rejection::ZeroAmount),
                Outcome::Rejected(Rejection::InsufficientFunds {
                    account: 1,
                    balance: 100,
                    amount: 101
                }),
            ]
        );
        assert_eq!(ledger.balances(), &[100; 5]);
    }

    #[test]
    fn an_overflowing_credit_is_rejected() {
        let mut ledger = Ledger::genesis(3, u64::MAX / 2 + 1);
        let block = ledger.apply(1, &[transfer("big", 1, 2, u64::MAX / 2 + 1)]);
        assert!(matches!(
            block.entries[0].outcome,
            Outcome::Rejected(Rejection::BalanceOverflow { account: 2, .. })
        ));
        assert_eq!(ledger.balances(), &[u64::MAX / 2 + 1; 3]);
    }

    #[test]
    fn an_id_is_applied_at_most_once_even_within_a_batch() {
        let mut ledger = Ledger::genesis(5, 100);
        let first = ledger.apply(1, &[transfer("a", 1, 2, 10), transfer("a", 1, 2, 10)]);
        assert_eq!(
            first.entries[1].outcome,
            Outcome::Duplicate { first_height: 1 }
        );
        let second = ledger.apply(2, &[transfer("a", 1, 2, 10)]);
        assert_eq!(
            second.entries[0].outcome,
            Outcome::Duplicate { first_height: 1 }
        );
        assert_eq!(ledger.balances(), &[90, 110, 100, 100, 100]);
        assert_eq!(
            ledger
                .lookup(&TransferId::new("a").unwrap())
                .unwrap()
                .height,
            1
        );
    }

    #[test]
    fn funds_are_checked_against_earlier_transfers_of_the_same_batch() {
        let mut ledger = Ledger::genesis(3, 100);
        let block = ledger.apply(1, &[transfer("a", 1, 2, 60), transfer("b", 1, 3, 60)]);
        assert_eq!(block.entries[0].outcome, Outcome::Applied);
        assert_eq!(
            block.entries[1].outcome,
            Outcome::Rejected(Rejection::InsufficientFunds {
                account: 1,
                balance: 40,
                amount: 60
            })
        );
    }

    #[test]
    fn replay_rebuilds_the_same_state_and_refuses_tampering() {
        let mut ledger = Ledger::genesis(5, 100);
        let mut chain = vec![Block::genesis(5, 100)];
        chain.push(ledger.apply(1, &[transfer("a", 1, 2, 10)]));
        chain.push(ledger.apply(2, &[transfer("b", 2, 3, 50), transfer("c", 4, 5, 500)]));
        let replayed = Ledger::replay(5, 100, &chain).unwrap();
        assert_eq!(replayed.balances(), ledger.balances());
        assert_eq!(replayed.head_hash(), ledger.head_hash());

        let mut tampered = chain.clone();
        tampered[1].entries[0].transfer.amount = 11;
        assert_eq!(
            Ledger::replay(5, 100, &tampered).unwrap_err(),
            ChainError::WrongHash {
                height: 1,
                expected: Block::compute_hash(1, &chain[0].hash, 1, &tampered[1].entries),
                got: chain[1].hash
            }
        );
        let mut wrong_outcome = chain.clone();
        wrong_outcome[2].entries[1].outcome = Outcome::Applied;
        assert_eq!(
            Ledger::replay(5, 100, &wrong_outcome).unwrap_err(),
            ChainError::WrongOutcomes { height: 2 }
        );
        let skipped = [chain[0].clone(), chain[2].clone()];
        assert_eq!(
            Ledger::replay(5, 100, &skipped).unwrap_err(),
            ChainError::WrongHeight {
                expected: 1,
                got: 2
            }
        );
        assert!(matches!(
            Ledger::replay(3, 100, &chain).unwrap_err(),
            ChainError::WrongGenesis { .. }
        ));
    }
}
