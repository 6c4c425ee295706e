//! Benmo's consensus core: Multi-Paxos and the money-transfer ledger as one deterministic state
//! machine with no I/O, no clock and no global randomness.
//!
//! - [`types`]: node ids, heights (slots), ballots.
//! - [`ledger`]: transfers, blocks and their hash chain, and the ledger that derives balances.
//! - [`message`]: what nodes say to each other.
//! - [`replica`]: the state machine itself. Inputs (ticks, messages, client proposals, fetched
//!   blocks) go in through [`Replica::step`]; a [`Ready`] comes out: one atomic batch of durable
//!   writes, and the messages, fetches and client replies of the step, those that vouch for the
//!   writes marked to be released only once the writes are durable.
//! - [`storage`]: the durable state as the core sees it, the [`Storage`] trait, an in-memory store
//!   and the conformance suite every store must pass.
//! - [`config`]: configuration and its limits.
//! - [`bugs`]: planted bugs for proving the simulator's checkers (test builds only).

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod bugs;
pub mod config;
pub mod ledger;
pub mod message;
pub mod replica;
pub mod storage;
pub mod types;

pub use bugs::{PlantedBug, PlantedBugs};
pub use config::{Config, ConfigError};
pub use ledger::{
    AccountId, Archive, Batch, Block, ChainError, Entry, Hash, Ledger, LedgerSnapshot, Outcome,
    Record, Rejection, Signature, Transfer, TransferId,
};
pub use message::Message;
pub use replica::{
    Committed, Event, Fetch, Input, Outgoing, ProposeError, Ready, Replica, Reply, RoleName, Status,
};
pub use storage::{restore, MemoryStorage, Restored, Storage, Write};
pub use types::{Ballot, Height, NodeId};
