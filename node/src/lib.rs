//! `benmo-node`: the consensus core driven by real time, real disks and real networks.
//!
//! - [`options`]: command-line flags (with environment equivalents) and their validation.
//! - [`storage`]: the sled store behind the core's storage trait, with fsync after every batch.
//! - [`core_loop`]: the thread that owns the core: steps it, writes each group of steps' batch
//!   durably, then releases messages and replies.
//! - [`transport`]: outgoing peer RPCs and catch-up fetches.
//! - [`service`]: the gRPC services (peer, ledger, faults) and the server.
//! - [`links`]: the per-peer switches that `benmoctl sever` and `heal` flip.

pub mod core_loop;
pub mod links;
pub mod options;
pub mod service;
pub mod storage;
pub mod transport;
