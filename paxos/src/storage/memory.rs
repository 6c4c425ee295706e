//! An in-memory [`Storage`]: the simulator's disk, and the reference the sled store is tested against.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{AcceptorState, Storage, Write};
use crate::ledger::{Archive, Block, LedgerSnapshot, Outcome, Record, TransferId};
use crate::types::Height;

/// Keeps everything in memory. Cloning it copies the whole store (the clone shares nothing).
#[derive(Debug, Default)]
pub struct MemoryStorage {
    acceptor: AcceptorState,
    blocks: Vec<Block>,
    snapshot: Option<LedgerSnapshot>,
    records: Arc<MemoryArchive>,
}

impl Clone for MemoryStorage {
    fn clone(&self) -> MemoryStorage {
        let records = self.records.records.read().expect("not poisoned").clone();
        MemoryStorage {
            acceptor: self.acceptor.clone(),
            blocks: self.blocks.clone(),
            snapshot: self.snapshot.clone(),
            records: Arc::new(MemoryArchive {
                records: RwLock::new(records),
            }),
        }
    }
}

/// The transfer records of a [`MemoryStorage`]'s chain, shared with the ledger as its archive.
#[derive(Debug, Default)]
pub struct MemoryArchive {
    records: RwLock<HashMap<TransferId, Record>>,
}

impl Archive for MemoryArchive {
    fn lookup(&self, id: &TransferId) -> Option<Record> {
        self.records.read().expect("not poisoned").get(id).cloned()
    }
}

/// A write the in-memory store refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemoryStorageError {
    /// An appended block is not the next height.
    #[error("block {got} appended where block {expected} was due")]
    NotNextBlock {
        /// The next height.
        expected: Height,
        /// The height offered.
        got: Height,
    },
    /// A promise lower than the stored one.
    #[error("promise {got} is lower than the stored promise {stored}")]
    PromiseDecreased {
        /// The stored promise.
        stored: crate::types::Ballot,
        /// The promise offered.
        got: crate::types::Ballot,
    },
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// Every stored block, from the genesis.
    pub fn chain(&self) -> &[Block] {
        &self.blocks
    }

    /// The stored acceptor state.
    pub fn acceptor(&self) -> &AcceptorState {
        &self.acceptor
    }

    /// Checks a batch against the state it would apply to, without applying it.
    fn check(&self, writes: &[Write]) -> Result<(), MemoryStorageError> {
        let mut next_height = self.blocks.len() as Height;
        let mut promised = self.acceptor.promised;
        for write in writes {
            match write {
                Write::AppendBlock(block) => {
                    if block.height != next_height {
                        return Err(MemoryStorageError::NotNextBlock {
                            expected: next_height,
                            got: block.height,
                        });
                    }
                    next_height += 1;
                }
                Write::Promise(ballot) => {
                    if *ballot < promised {
                        return Err(MemoryStorageError::PromiseDecreased {
                            stored: promised,
                            got: *ballot,
                        });
                    }
                    promised = *ballot;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Storage for MemoryStorage {
    type Error = MemoryStorageError;

    fn write(&mut self, writes: &[Write]) -> Result<(), MemoryStorageError> {
        self.check(writes)?;
        for write in writes {
            match write {
                Write::Promise(ballot) => self.acceptor.promised = *ballot,
                Write::Accept {
                    slot,
                    ballot,
                    batch,
                } => {
                    self.acceptor
                        .accepted
                        .insert(*slot, (*ballot, batch.clone()));
                }
                Write::AppendBlock(block) => {
                    self.acceptor
                        .accepted
                        .retain(|slot, _| *slot > block.height);
                    let mut records = self.records.records.write().expect("not poisoned");
                    for entry in &block.entries {
                        if !matches!(entry.outcome, Outcome::Duplicate { .. }) {
                            records.insert(
                                entry.transfer.id.clone(),
                                Record {
                                    height: block.height,
                                    block_hash: block.hash,
                                    transfer: entry.transfer.clone(),
                                    outcome: entry.outcome.clone(),
                                },
                            );
                        }
                    }
                    self.blocks.push(block.clone());
                }
                Write::Snapshot(snapshot) => self.snapshot = Some(snapshot.clone()),
                Write::AddPending(transfer) => {
                    self.acceptor
                        .pending
                        .insert(transfer.id.clone(), transfer.clone());
                }
                Write::RemovePending(id) => {
                    self.acceptor.pending.remove(id);
                }
            }
        }
        Ok(())
    }

    fn acceptor_state(&self) -> Result<AcceptorState, MemoryStorageError> {
        Ok(self.acceptor.clone())
    }

    fn height(&self) -> Result<Option<Height>, MemoryStorageError> {
        Ok((self.blocks.len() as Height).checked_sub(1))
    }

    fn blocks(&self, from: Height, limit: usize) -> Result<Vec<Block>, MemoryStorageError> {
        let start = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(self.blocks.len());
        let end = start.saturating_add(limit).min(self.blocks.len());
        Ok(self.blocks[start..end].to_vec())
    }

    fn snapshot(&self) -> Result<Option<LedgerSnapshot>, MemoryStorageError> {
        Ok(self.snapshot.clone())
    }

    fn archive(&self) -> Arc<dyn Archive> {
        self.records.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance;

    struct Memory;

    impl conformance::Harness for Memory {
        type Store = MemoryStorage;

        fn create(&mut self) -> MemoryStorage {
            MemoryStorage::new()
        }

        fn reopen(&mut self, store: MemoryStorage) -> MemoryStorage {
            store
        }
    }

    #[test]
    fn memory_storage_passes_the_conformance_suite() {
        conformance::run_all(&mut Memory);
    }
}
