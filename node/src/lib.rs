//! `benmo-node`: the consensus core driven by real time, real disks and real networks.
//!
//! - [`options`]: command-line flags (with environment equivalents) and their validation.
//! - [`storage`]: the node's store behind the core's storage trait: a write-ahead log for
//!   durability (one fsync per group of writes), sled for lookups, checkpointed in the background.
//! - [`wal`]: the write-ahead log's segments and records.
//! - [`dedup_index`]: the dedup index on disk, sorted runs merged in the background, so an id
//!   costs no sled read or write of its own.
//! - [`id_filter`]: a Bloom filter in front of the dedup index, so new ids cost no sled read.
//! - [`host`]: the host loop's logic with no I/O: group commit, release after durability,
//!   batching per peer, waiting clients. The simulator drives the same code.
//! - [`core_loop`]: the node's environment for the host: a tokio task that steps it and a writer
//!   thread that makes each group of writes durable.
//! - [`transport`]: one long-lived outgoing stream per peer, and catch-up fetches.
//! - [`service`]: the gRPC services (peer, ledger, faults) and the server.
//! - [`links`]: the per-peer switches that `benmoctl sever` and `heal` flip.

pub mod core_loop;
pub mod dedup_index;
pub mod host;
pub mod id_filter;
pub mod links;
pub mod options;
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod transport;
pub mod wal;
