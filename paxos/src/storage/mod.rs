//! What a node keeps on disk, as the core sees it.
//!
//! Every step of the core yields one batch of [`Write`]s that the host must make durable, atomically,
//! before it releases anything else the step produced. [`Storage`] is the trait both the in-memory
//! store (for the simulator and tests) and the node's sled store implement; [`conformance`] is the
//! test suite both must pass.

pub mod conformance;
mod memory;

use std::collections::BTreeMap;

pub use memory::{MemoryArchive, MemoryStorage, MemoryStorageError};

use std::sync::Arc;

use crate::ledger::{
    Archive, Batch, Block, ChainError, Ledger, LedgerSnapshot, Transfer, TransferId,
};
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
    /// The ledger's state at the head block (follows every `AppendBlock`), so a restart resumes
    /// from it instead of replaying the chain.
    Snapshot(LedgerSnapshot),
}

impl Write {
    /// Whether something this node tells others, or a client, rests on this write: a promise or
    /// vote (Paxos needs it durable before the reply leaves) or a transfer taken into the pending
    /// log (the client is told only once it survives a crash). Such writes must be synced before
    /// anything they vouch for is released.
    ///
    /// The others are derived from decisions a quorum already holds durably: a decided block, the
    /// ledger's snapshot, a transfer leaving the pending log. A node may write them lazily, synced
    /// with the next write that vouches for something; if a crash loses them, the node still holds
    /// the block's accepted value (written, and synced, before it) or learns the block again from
    /// its peers, and a transfer left pending is simply found decided again.
    pub fn vouches(&self) -> bool {
        match self {
            Write::Promise(_) | Write::Accept { .. } | Write::AddPending(_) => true,
            Write::AppendBlock(_) | Write::RemovePending(_) | Write::Snapshot(_) => false,
        }
    }
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

    /// The last snapshot written, if any.
    fn snapshot(&self) -> Result<Option<LedgerSnapshot>, Self::Error>;

    /// A handle that looks up transfer records in the stored chain, for the ledger's
    /// [`Archive`]. It sees every batch as soon as [`Storage::write`] returns.
    fn archive(&self) -> Arc<dyn Archive>;
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
    /// The stored state holds something no correct node writes.
    #[error("the stored state is impossible: {0}")]
    Impossible(String),
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

/// Reads a node's durable state and checks it. The ledger resumes from the stored snapshot when
/// it matches the head block (it always does for stores written by this version); otherwise the
/// chain is replayed, checking every block. An empty store yields the genesis state; the caller
/// writes the genesis block on first start.
pub fn restore<S: Storage>(
    storage: &S,
    accounts: u32,
    genesis_balance: u64,
) -> Result<Restored, RestoreError<S::Error>> {
    let mut acceptor = storage.acceptor_state().map_err(RestoreError::Storage)?;
    if acceptor.promised.round >= crate::types::ROUND_MAX {
        return Err(RestoreError::Impossible(format!(
            "the promised ballot {} has a round no correct node reaches",
            acceptor.promised
        )));
    }
    let archive = storage.archive();
    let mut ledger = Ledger::genesis(accounts, genesis_balance);
    ledger.set_archive(archive.clone());
    if let Some(height) = storage.height().map_err(RestoreError::Storage)? {
        let genesis = storage.blocks(0, 1).map_err(RestoreError::Storage)?;
        let replayed =
            Ledger::replay(accounts, genesis_balance, &genesis).map_err(RestoreError::Chain)?;
        let snapshot = storage.snapshot().map_err(RestoreError::Storage)?;
        ledger = match snapshot.filter(|snapshot| snapshot.height == height) {
            Some(snapshot) => resume(storage, accounts, genesis_balance, snapshot, archive)?,
            None => {
                // The archive already holds every stored record, later blocks' included: the
                // replay must not consult it, or every transfer would look like a duplicate.
                let mut ledger = replayed;
                replay_rest(storage, &mut ledger, height)?;
                ledger.set_archive(archive);
                ledger.archive_through(height);
                ledger
            }
        };
    }
    // A value accepted for a slot the chain already holds is settled: the block is what was
    // decided there. Stores drop such values with the block; one left behind is harmless.
    acceptor.accepted = acceptor.accepted.split_off(&(ledger.height() + 1));
    Ok(Restored { acceptor, ledger })
}

/// Resumes from `snapshot` after checking it against the stored head block and the genesis total.
fn resume<S: Storage>(
    storage: &S,
    accounts: u32,
    genesis_balance: u64,
    snapshot: LedgerSnapshot,
    archive: Arc<dyn Archive>,
) -> Result<Ledger, RestoreError<S::Error>> {
    let head = storage
        .blocks(snapshot.height, 1)
        .map_err(RestoreError::Storage)?
        .pop()
        .ok_or_else(|| {
            RestoreError::Impossible(format!(
                "the snapshot is at block {} but the chain holds no such block",
                snapshot.height
            ))
        })?;
    if head.hash != snapshot.head_hash {
        return Err(RestoreError::Impossible(format!(
            "the snapshot names block {} {:?} but the chain holds {:?}",
            snapshot.height, snapshot.head_hash, head.hash
        )));
    }
    let total: u128 = snapshot
        .balances
        .iter()
        .map(|balance| *balance as u128)
        .sum();
    if snapshot.balances.len() != accounts as usize
        || total != genesis_balance as u128 * accounts as u128
    {
        return Err(RestoreError::Impossible(format!(
            "the snapshot's balances {:?} do not sum to the genesis total",
            snapshot.balances
        )));
    }
    Ok(Ledger::resume(accounts, genesis_balance, snapshot, archive))
}

/// Replays the stored blocks above the ledger's height up to `height`, checking each.
fn replay_rest<S: Storage>(
    storage: &S,
    ledger: &mut Ledger,
    height: Height,
) -> Result<(), RestoreError<S::Error>> {
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
    Ok(())
}
