//! What a node keeps on disk, as the core sees it.
//!
//! Every step of the core yields one batch of [`Write`]s that the host must make durable, atomically,
//! before it releases anything else the step produced. [`Storage`] is the trait both the in-memory
//! store (for the simulator and tests) and the node's sled store implement; [`conformance`] is the
//! test suite both must pass.

pub mod conformance;
mod memory;

use std::collections::BTreeMap;

pub use memory::{MemoryStorage, MemoryStorageError};

use crate::ledger::{Batch, Block, ChainError, Ledger, Transfer, TransferId};
use crate::types::{Ballot, Height};

/// One change to durable state. A step's writes form one atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// The acceptor promised this ballot (it never goes down).
    Promise(Ballot),
    /// The acceptor accepted `batch` for `slot` in `ballot`.
    Accept {
        /// The slot.
        slot: Height,
        /// The ballot.
        ballot: Ballot,
        /// The value.
        batch: Batch,
    },
    /// A decided block joins the chain. Accepted values at or below its height are no longer needed.
    AppendBlock(Block),
    /// A client's transfer enters this node's pending log.
    AddPending(Transfer),
    /// A transfer leaves the pending log (it is in a block, or was refused).
    RemovePending(TransferId),
}

/// What the acceptor and the pending log hold on disk (the chain is read separately).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceptorState {
    /// The highest ballot promised.
    pub promised: Ballot,
    /// Accepted values of slots above the chain's head.
    pub accepted: BTreeMap<Height, (Ballot, Batch)>,
    /// Transfers taken from clients and not yet in a block, by id.
    pub pending: BTreeMap<TransferId, Transfer>,
}

/// Durable storage for one node.
pub trait Storage {
    /// What can go wrong; storage errors are fatal to the node.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies `writes` atomically: after a crash either all of them or none are visible. Returns
    /// only when they are durable.
    fn write(&mut self, writes: &[Write]) -> Result<(), Self::Error>;

    /// The promise, accepted values and pending log.
    fn acceptor_state(&self) -> Result<AcceptorState, Self::Error>;

    /// The height of the last stored block, or `None` before the genesis block is written.
    fn height(&self) -> Result<Option<Height>, Self::Error>;

    /// Up to `limit` consecutive blocks starting at height `from`, in order.
    fn blocks(&self, from: Height, limit: usize) -> Result<Vec<Block>, Self::Error>;
}

/// Why a node could not be restored from its storage.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError<E: std::error::Error + 'static> {
    /// Reading failed.
    #[error("storage: {0}")]
    Storage(#[source] E),
    /// The stored chain does not verify.
    #[error("the stored chain is broken: {0}")]
    Chain(#[source] ChainError),
}

/// Everything a node needs from disk to resume, checked.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The acceptor's state and the pending log.
    pub acceptor: AcceptorState,
    /// The ledger rebuilt by replaying the stored chain.
    pub ledger: Ledger,
}

/// The number of blocks read at a time while replaying the chain.
const REPLAY_BLOCKS_PER_READ: usize = 1_024;

/// Reads a node's durable state and replays its chain, checking every block. An empty store yields
/// the genesis state; the caller writes the genesis block on first start.
pub fn restore<S: Storage>(
    storage: &S,
    accounts: u32,
    genesis_balance: u64,
) -> Result<Restored, RestoreError<S::Error>> {
    let acceptor = storage.acceptor_state().map_err(RestoreError::Storage)?;
    let mut ledger = Ledger::genesis(accounts, genesis_balance);
    if let Some(height) = storage.height().map_err(RestoreError::Storage)? {
        let genesis = storage.blocks(0, 1).map_err(RestoreError::Storage)?;
        ledger =
            Ledger::replay(accounts, genesis_balance, &genesis).map_err(RestoreError::Chain)?;
        while ledger.height() < height {
            let blocks = storage
                .blocks(ledger.height() + 1, REPLAY_BLOCKS_PER_READ)
                .map_err(RestoreError::Storage)?;
            if blocks.is_empty() {
                return Err(RestoreError::Chain(ChainError::WrongHeight {
                    expected: ledger.height() + 1,
                    got: height,
                }));
            }
            for block in &blocks {
                ledger.append(block).map_err(RestoreError::Chain)?;
            }
        }
    }
    let mut acceptor = acceptor;
    // A value accepted for a slot the chain already holds is settled: the block is what was
    // decided there. Stores drop such values with the block; one left behind is harmless.
    acceptor.accepted = acceptor.accepted.split_off(&(ledger.height() + 1));
    Ok(Restored { acceptor, ledger })
}
