//! The node's durable state in sled, behind the core's [`Storage`] trait.
//!
//! One sled tree holds everything under one-byte key prefixes, so every batch of the core is one
//! atomic `apply_batch`:
//!
//! | key                  | value                                  |
//! |----------------------|----------------------------------------|
//! | `m` + name           | identity: format, node id, cluster size, genesis balance and hash |
//! | `p`                  | the promised ballot                    |
//! | `a` + slot (u64 BE)  | an accepted value (protobuf)           |
//! | `c` + height (u64 BE)| a block of the chain (protobuf)        |
//! | `q` + transfer id    | a pending transfer (protobuf)          |
//! | `s`                  | the ledger's state at the head block (see [`encode_snapshot`]) |
//! | `r`, `k`             | the dedup index: sorted runs of id hashes and where each id was first ordered (see [`crate::dedup_index`]) |
//! | `w`                  | the end of the last write-ahead log record applied here |
//!
//! The dedup index is the ledger's [`Archive`]: the core keeps only recent transfer ids in memory
//! and looks older ones up here, and restarts resume from the `s` snapshot instead of replaying the
//! chain, so memory and start-up time stay flat however long the chain grows. An [`IdFilter`] in
//! memory answers for ids the index does not hold (every new transfer) without reading sled.
//!
//! The index holds a key per 256 ids, not one per id, because sled's cost is per key: its leaves
//! hold at most 16 keys and it keeps a page-table entry per leaf in memory and reads all of them
//! when it opens. With one key per id, a node with 10M transfers took 0.2–1.25 s and 423 MiB to
//! start. What still grows is a first start after a long run: sled 0.34 snapshots its page table
//! only when it opens, so it first replays what was written since. Earlier formats of the index
//! (`x` + id, one key per id; `i` + bucket, entries bucketed by hash) are moved into runs when a
//! store is opened.
//!
//! Durability comes from the write-ahead log ([`crate::wal`]), not from sled: [`SledStorage::write`]
//! appends the batch to the log as one record and `fdatasync`s it (one sync per group of writes,
//! on one file), then applies it to sled without flushing. sled is made durable in the background
//! now and then (a checkpoint: sled's flush, then `fdatasync` of its data file, since on Linux its
//! flush issues `sync_file_range` but no `fsync`, spacejam/sled#1452), after which the log's older
//! segments are deleted. Each sled batch also records the log position it came from (`w`), so on
//! opening, exactly the records sled does not hold yet are applied again.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use benmo::convert::ConvertError;
use benmo::proto;
use std::sync::Arc;

use benmo_paxos::storage::AcceptorState;
use benmo_paxos::{
    Archive, Ballot, Batch, Block, Hash, Height, LedgerSnapshot, NodeId, Record, Storage, Transfer,
    TransferId, Write,
};
use prost::Message;

use crate::dedup_index::{decode_entries, id_hash, DedupIndex, IndexEntry, StagedRun, RUN_CHUNK};
use crate::id_filter::IdFilter;
use crate::wal::{LogFormat, Position, Wal, WalError};

/// The on-disk format this code writes and reads. Version 3 writes the log into zero-filled files,
/// whose zeros end it: a binary of version 2 would read them as empty records and write after
/// them, where version 3 would never look, so it must refuse such a store.
const FORMAT: &[u8] = b"benmo-sled-v3";
/// The format before the log's ready files: its log is read by its own rules once, then left
/// behind (see [`SledStorage::open`]).
const FORMAT_V2: &[u8] = b"benmo-sled-v2";
/// The format before the index moved to runs (version 2 keeps it in runs): opened, and moved over.
const FORMAT_V1: &[u8] = b"benmo-sled-v1";
/// sled writes an item larger than a quarter of a segment as a separate "blob" file, without any
/// sync at all. With 8 MiB segments no block (at most 10,000 transfers) comes near that.
const SEGMENT_BYTES: usize = 8 * 1024 * 1024;
/// sled's page cache.
const SLED_CACHE_BYTES: u64 = 128 * 1024 * 1024;

const META: u8 = b'm';
const PROMISED: u8 = b'p';
const ACCEPTED: u8 = b'a';
const CHAIN: u8 = b'c';
const PENDING: u8 = b'q';
const SNAPSHOT: u8 = b's';
const WAL_POSITION: u8 = b'w';
/// The dedup index of format 1, bucketed by hash (`i` + bucket, u32 BE): moved into runs on opening.
const INDEX_BUCKETS: u8 = b'i';
/// The dedup index before buckets, one key per id (`x` + id): moved into runs on opening.
const INDEX_PER_ID: u8 = b'x';
/// Old index keys moved per batch when an earlier version's store is opened: at 10M ids, about
/// 300,000 ids (6 MiB) from buckets.
const MIGRATE_BATCH_KEYS: usize = 16_384;

/// Who a data directory belongs to. A node refuses a directory written for anyone else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The node id.
    pub node: NodeId,
    /// The cluster size.
    pub nodes: u32,
    /// The genesis balance of every account.
    pub genesis_balance: u64,
}

impl Identity {
    fn genesis(&self) -> Block {
        Block::genesis(self.nodes, self.genesis_balance)
    }
}

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What happened.
        source: std::io::Error,
    },
    /// The directory holds another node's or another cluster's data.
    #[error("data directory {path} belongs to {found}, not to {expected}")]
    WrongIdentity {
        /// The directory.
        path: PathBuf,
        /// What it says it is.
        found: String,
        /// What this node is.
        expected: String,
    },
    /// The directory holds data but not a Benmo identity.
    #[error("data directory {path} is not a Benmo data directory (no identity record): refusing to touch it")]
    NotBenmo {
        /// The directory.
        path: PathBuf,
    },
    /// The directory was initialized but its database is empty or gone.
    #[error("data directory {path} was initialized (it has an IDENTITY file) but its database is empty or missing: it was lost or corrupted; refusing to start with an empty ledger")]
    Lost {
        /// The directory.
        path: PathBuf,
    },
    /// A stored record does not decode.
    #[error("corrupted record {key}: {reason}")]
    Corrupted {
        /// The record's key.
        key: String,
        /// Why it is unreadable.
        reason: String,
    },
    /// A batch would break the chain or lower the promise.
    #[error("refused write: {0}")]
    Refused(String),
    /// The write-ahead log failed.
    #[error("{0}")]
    Wal(#[from] WalError),
}

/// The node's store: a write-ahead log for durability, sled for lookups.
pub struct SledStorage {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    wal: Wal,
    /// Where the last checkpoint was asked for: the next one comes a segment later.
    checkpointed: Position,
    /// Wakes the checkpoint thread (which holds sled's data file, fsynced after each flush).
    checkpoints: std::sync::mpsc::Sender<()>,
    /// Writes durable in the log but not yet applied to sled (see [`SledStorage::apply_backlog`]).
    backlog: RefCell<Backlog>,
    /// Backlogs taken out so far (see [`SledStorage::detach_backlog`]): each one's turn to be
    /// applied.
    detached: std::cell::Cell<u64>,
    /// What applies backlogs to sled, in the order they were taken; it holds the handles the
    /// store shares with it (the dedup index, its filter, the blocks not yet in sled).
    applier: Applier,
    /// The stored chain's height (None before the genesis), the backlog included.
    height: Option<Height>,
    /// The stored promise, the backlog included.
    promised: Ballot,
    /// Stops the threads that merge the index's runs when the store is dropped (the applier
    /// wakes them).
    _merges: Merges,
}

/// Blocks the chain's readers find outside sled: decided (see [`DecidedBlocks`]) or written, and
/// not yet applied to sled. A block leaves only once sled holds it.
type WaitingBlocks = Arc<Mutex<BTreeMap<Height, Arc<Block>>>>;

/// Writes waiting to be applied to sled, in order, with the log position they end at.
#[derive(Default)]
struct Backlog {
    writes: Vec<Write>,
    end: Position,
    since: Option<Instant>,
}

/// sled pays a write and a `sync_file_range` of its own for every batch applied to it, and the
/// dedup index a run, so the log's records are applied in bulk: taken out for sled this long
/// after the first one waiting... (The node applies them on a thread of its own, off the commit
/// path: see [`SledStorage::detach_backlog`].)
pub const SLED_APPLY_DELAY: Duration = Duration::from_millis(200);
/// ... or once this many writes wait.
const SLED_BACKLOG_WRITES_MAX: usize = 8_192;

/// The folder of the write-ahead log, beside sled's own files.
const WAL_FOLDER: &str = "wal";

/// The file that marks a directory as initialized, beside sled's own files.
const IDENTITY_FILE: &str = "IDENTITY";

/// Writes the marker file and makes it durable, directory entry included.
fn write_marker(marker: &Path, identity: &Identity) -> Result<(), StorageError> {
    let io = |source| StorageError::Io {
        path: marker.to_path_buf(),
        source,
    };
    let text = format!(
        "benmo data directory\nformat {}\nnode {}\nnodes {}\ngenesis_balance {}\ngenesis {}\n",
        String::from_utf8_lossy(FORMAT),
        identity.node,
        identity.nodes,
        identity.genesis_balance,
        identity.genesis().hash
    );
    let mut file = File::create(marker).map_err(io)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    if let Some(directory) = marker.parent() {
        File::open(directory)
            .and_then(|directory| directory.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// How sled is opened. Its own periodic flush is off: every batch is flushed and synced. Its cache
/// is capped well below sled's default of 1 GiB, so a node's memory stays flat as its chain grows
/// (the hot reads, recent blocks and the index chunks a lookup reads, fit easily).
/// Checks the store belongs to `identity` (writing the identity into an empty one); returns
/// the store's format, [`FORMAT`] or an earlier one ([`FORMAT_V2`], [`FORMAT_V1`]).
fn check_identity(
    tree: &sled::Tree,
    path: &Path,
    identity: &Identity,
) -> Result<&'static [u8], StorageError> {
    let expected = vec![
        (key(META, b"format"), FORMAT.to_vec()),
        (key(META, b"node"), identity.node.to_be_bytes().to_vec()),
        (key(META, b"nodes"), identity.nodes.to_be_bytes().to_vec()),
        (
            key(META, b"genesis_balance"),
            identity.genesis_balance.to_be_bytes().to_vec(),
        ),
        (key(META, b"genesis"), identity.genesis().hash.0.to_vec()),
    ];
    let describe = |node: &[u8], nodes: &[u8], balance: &[u8]| {
        let node = node.try_into().map(u32::from_be_bytes);
        let nodes = nodes.try_into().map(u32::from_be_bytes);
        let balance = balance.try_into().map(u64::from_be_bytes);
        match (node, nodes, balance) {
            (Ok(node), Ok(nodes), Ok(balance)) => {
                format!("node {node} of a {nodes}-node cluster with genesis balance {balance}")
            }
            _ => "an unreadable identity".to_string(),
        }
    };
    let expected_text = describe(
        &identity.node.to_be_bytes(),
        &identity.nodes.to_be_bytes(),
        &identity.genesis_balance.to_be_bytes(),
    );
    if tree.get(key(META, b"format"))?.is_none() {
        if !tree.is_empty() {
            return Err(StorageError::NotBenmo {
                path: path.to_path_buf(),
            });
        }
        let mut batch = sled::Batch::default();
        for (name, value) in expected {
            batch.insert(name, value);
        }
        tree.apply_batch(batch)?;
        return Ok(FORMAT);
    }
    let mut found = Vec::new();
    for (name, _) in &expected {
        found.push(
            tree.get(name)?
                .map(|value| value.to_vec())
                .unwrap_or_default(),
        );
    }
    let format = match &found[0][..] {
        FORMAT => FORMAT,
        FORMAT_V2 => FORMAT_V2,
        FORMAT_V1 => FORMAT_V1,
        _ => {
            return Err(StorageError::WrongIdentity {
                path: path.to_path_buf(),
                found: format!("format {:?}", String::from_utf8_lossy(&found[0])),
                expected: format!("format {:?}", String::from_utf8_lossy(FORMAT)),
            })
        }
    };
    // The format was checked above.
    let same = expected
        .iter()
        .zip(&found)
        .skip(1)
        .all(|((_, want), got)| want == got);
    if !same {
        return Err(StorageError::WrongIdentity {
            path: path.to_path_buf(),
            found: describe(&found[1], &found[2], &found[3]),
            expected: expected_text,
        });
    }
    Ok(format)
}

fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        .segment_size(SEGMENT_BYTES)
        .cache_capacity(SLED_CACHE_BYTES)
        .flush_every_ms(None)
}

fn key(prefix: u8, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + suffix.len());
    key.push(prefix);
    key.extend_from_slice(suffix);
    key
}

fn describe_key(key: &[u8]) -> String {
    match key.split_first() {
        Some((prefix, rest)) if rest.len() == 8 && matches!(*prefix, ACCEPTED | CHAIN) => {
            let number = u64::from_be_bytes(rest.try_into().expect("8 bytes"));
            format!("{}{number}", *prefix as char)
        }
        Some((&INDEX_BUCKETS, rest)) if rest.len() == 4 => {
            let bucket = u32::from_be_bytes(rest.try_into().expect("4 bytes"));
            format!("index bucket {bucket}")
        }
        Some((&RUN_CHUNK, rest)) if rest.len() == 16 => {
            let run = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            let first = u64::from_be_bytes(rest[8..].try_into().expect("8 bytes"));
            format!("index run {run} chunk {first:016x}")
        }
        Some((prefix, rest)) => format!("{}{}", *prefix as char, String::from_utf8_lossy(rest)),
        None => "(empty key)".to_string(),
    }
}

/// The error for a stored record at `key` that does not read.
pub(crate) fn corrupted(key: &[u8], reason: impl ToString) -> StorageError {
    StorageError::Corrupted {
        key: describe_key(key),
        reason: reason.to_string(),
    }
}

fn encode_ballot(ballot: Ballot) -> [u8; 12] {
    let mut bytes = [0; 12];
    bytes[..8].copy_from_slice(&ballot.round.to_be_bytes());
    bytes[8..].copy_from_slice(&ballot.node.to_be_bytes());
    bytes
}

fn decode_ballot(key: &[u8], bytes: &[u8]) -> Result<Ballot, StorageError> {
    let bytes: [u8; 12] = bytes
        .try_into()
        .map_err(|_| corrupted(key, "a ballot is 12 bytes"))?;
    Ok(Ballot::new(
        u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
        u32::from_be_bytes(bytes[8..].try_into().expect("4 bytes")),
    ))
}

fn decode<T: Message + Default>(key: &[u8], bytes: &[u8]) -> Result<T, StorageError> {
    T::decode(bytes).map_err(|error| corrupted(key, error))
}

fn converted<T>(key: &[u8], result: Result<T, ConvertError>) -> Result<T, StorageError> {
    result.map_err(|error| corrupted(key, error))
}

/// The snapshot's bytes: height (u64 BE), head hash (32 bytes), transfer count (u64 BE), then
/// each balance (u64 BE).
fn encode_snapshot(snapshot: &LedgerSnapshot) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(48 + 8 * snapshot.balances.len());
    bytes.extend_from_slice(&snapshot.height.to_be_bytes());
    bytes.extend_from_slice(&snapshot.head_hash.0);
    bytes.extend_from_slice(&snapshot.transfers.to_be_bytes());
    for balance in &snapshot.balances {
        bytes.extend_from_slice(&balance.to_be_bytes());
    }
    bytes
}

fn decode_snapshot(key: &[u8], bytes: &[u8]) -> Result<LedgerSnapshot, StorageError> {
    if bytes.len() < 48 || (bytes.len() - 48) % 8 != 0 {
        return Err(corrupted(key, "a snapshot is 48 bytes and 8 per account"));
    }
    let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Ok(LedgerSnapshot {
        height: u64_at(0),
        head_hash: Hash(bytes[8..40].try_into().expect("32 bytes")),
        transfers: u64_at(40),
        balances: (48..bytes.len()).step_by(8).map(u64_at).collect(),
    })
}

/// A group of writes as one write-ahead log record.
fn encode_record(writes: &[Write]) -> Vec<u8> {
    use proto::stored_write::Kind;
    let writes = writes
        .iter()
        .map(|write| {
            let kind = match write {
                Write::Promise(ballot) => Kind::Promise((*ballot).into()),
                Write::Accept {
                    slot,
                    ballot,
                    batch,
                } => Kind::Accept(proto::AcceptedValue {
                    slot: *slot,
                    ballot: Some((*ballot).into()),
                    batch: Some(batch.into()),
                }),
                Write::AppendBlock(block) => Kind::AppendBlock(block.into()),
                Write::AddPending(transfer) => Kind::AddPending(transfer.into()),
                Write::RemovePending(id) => Kind::RemovePending(id.as_str().to_string()),
                Write::Snapshot(snapshot) => Kind::Snapshot(proto::LedgerSnapshot {
                    height: snapshot.height,
                    head_hash: snapshot.head_hash.0.to_vec(),
                    balances: snapshot.balances.clone(),
                    transfers: snapshot.transfers,
                }),
            };
            proto::StoredWrite { kind: Some(kind) }
        })
        .collect();
    proto::WalRecord { writes }.encode_to_vec()
}

/// Reads [`encode_record`].
fn decode_record(payload: &[u8]) -> Result<Vec<Write>, StorageError> {
    use proto::stored_write::Kind;
    const KEY: &[u8] = b"write-ahead log record";
    let record: proto::WalRecord = decode(KEY, payload)?;
    record
        .writes
        .into_iter()
        .map(|write| {
            let missing = || corrupted(KEY, "a write of no kind");
            Ok(match write.kind.ok_or_else(missing)? {
                Kind::Promise(ballot) => Write::Promise(ballot.into()),
                Kind::Accept(value) => {
                    Write::Accept {
                        slot: value.slot,
                        ballot: value
                            .ballot
                            .ok_or_else(|| corrupted(KEY, "an accepted value without a ballot"))?
                            .into(),
                        batch: converted(
                            KEY,
                            Batch::try_from(value.batch.ok_or_else(|| {
                                corrupted(KEY, "an accepted value without a batch")
                            })?),
                        )?,
                    }
                }
                Kind::AppendBlock(block) => {
                    Write::AppendBlock(converted(KEY, Block::try_from(block))?)
                }
                Kind::AddPending(transfer) => {
                    Write::AddPending(converted(KEY, Transfer::try_from(transfer))?)
                }
                Kind::RemovePending(id) => Write::RemovePending(converted(
                    KEY,
                    TransferId::new(id).map_err(ConvertError::from),
                )?),
                Kind::Snapshot(snapshot) => Write::Snapshot(LedgerSnapshot {
                    height: snapshot.height,
                    head_hash: converted(
                        KEY,
                        benmo::convert::hash(&snapshot.head_hash, "snapshot.head_hash"),
                    )?,
                    balances: snapshot.balances,
                    transfers: snapshot.transfers,
                }),
            })
        })
        .collect()
}

/// Adds every id in the dedup index to the store's filter, then marks it complete (see
/// [`crate::id_filter`]). Ids indexed meanwhile are added by the writer, so it may run at any time.
pub struct IdFilterScan {
    index: Arc<DedupIndex>,
    filter: Arc<IdFilter>,
}

impl IdFilterScan {
    /// Runs the scan on a thread of its own. If the index cannot be read, the filter stays
    /// incomplete: lookups keep reading sled, which reports the damage where it matters.
    pub fn start(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("benmo-id-filter".to_string())
            .spawn(move || {
                if let Err(error) = self.run() {
                    tracing::warn!(%error, "cannot read the dedup index into its filter; lookups read sled");
                }
            })
    }

    /// Runs the scan here.
    pub fn run(self) -> Result<(), StorageError> {
        // Once the store and its archives are gone nobody will ask, and sled's lock is released
        // sooner.
        let wanted = || Arc::strong_count(&self.filter) > 1;
        if self.index.fill(&self.filter, wanted)? {
            self.filter.mark_complete();
        }
        Ok(())
    }
}

/// Starts the thread that makes sled durable when asked (a checkpoint) and then deletes the log
/// segments sled now covers. It ends when the store is dropped.
fn start_checkpoints(
    db: sled::Db,
    tree: sled::Tree,
    data_file: File,
    wal_folder: PathBuf,
) -> Result<std::sync::mpsc::Sender<()>, StorageError> {
    let (sender, requests) = std::sync::mpsc::channel::<()>();
    let folder = wal_folder.clone();
    let io = move |source| StorageError::Io {
        path: folder,
        source,
    };
    std::thread::Builder::new()
        .name("benmo-checkpoint".to_string())
        .spawn(move || {
            while requests.recv().is_ok() {
                // Every record up to `applied` is in sled before the flush begins, so durable
                // after it.
                let applied = match tree.get([WAL_POSITION]) {
                    Ok(Some(bytes)) => Position::from_bytes(&bytes),
                    _ => None,
                };
                let synced = db.flush().is_ok() && data_file.sync_data().is_ok();
                if let (true, Some(applied)) = (synced, applied) {
                    if let Err(error) = Wal::forget_before(&wal_folder, applied) {
                        tracing::warn!(%error, "cannot delete old write-ahead log segments");
                    }
                } else {
                    tracing::warn!("a checkpoint of sled failed; the log keeps its segments");
                }
            }
        })
        .map_err(io)?;
    Ok(sender)
}

/// Lowers the calling thread's scheduling priority (nice 10), for work nothing waits on: applying
/// the log to sled, merging the index. On a machine whose cores the nodes share, their bursts
/// then give way to the threads a commit waits on (the core loop, the log's writer).
pub fn in_background() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take and return plain integers; on failure the thread
        // keeps its priority, which is only slower.
        unsafe {
            let thread = libc::gettid();
            let _ = libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, 10);
        }
    }
}

/// How many threads merge the dedup index's runs: two, so that a long merge of big runs does not
/// hold back the small ones (see [`crate::dedup_index`]).
const MERGE_THREADS: usize = 2;

/// Wakes the threads that merge the dedup index's runs; dropped, it stops them (each after the
/// merge it is in).
struct Merges {
    signal: Arc<MergeSignal>,
}

#[derive(Default)]
struct MergeSignal {
    /// How many times the threads were woken, and whether the store is gone.
    state: Mutex<(u64, bool)>,
    woken: std::sync::Condvar,
}

impl MergeSignal {
    fn closed(&self) -> bool {
        self.state.lock().expect("not poisoned").1
    }

    fn wake(&self) {
        self.state.lock().expect("not poisoned").0 += 1;
        self.woken.notify_all();
    }
}

impl Drop for Merges {
    fn drop(&mut self) {
        self.signal.state.lock().expect("not poisoned").1 = true;
        self.signal.woken.notify_all();
    }
}

/// Starts the threads that merge the dedup index's runs when woken. A merge that fails ends the
/// process, as a failed write does: sled may hold part of its switch, and only a fresh start
/// reads the index's state back from sled.
fn start_merges(index: Arc<DedupIndex>) -> Result<Merges, StorageError> {
    let signal = Arc::new(MergeSignal::default());
    for thread in 0..MERGE_THREADS {
        let (index, signal) = (index.clone(), signal.clone());
        std::thread::Builder::new()
            .name(format!("benmo-index-{thread}"))
            .spawn(move || {
                in_background();
                let mut seen = 0;
                loop {
                    {
                        let mut state = signal.state.lock().expect("not poisoned");
                        while state.0 == seen && !state.1 {
                            state = signal.woken.wait(state).expect("not poisoned");
                        }
                        if state.1 {
                            return;
                        }
                        seen = state.0;
                    }
                    while !signal.closed() {
                        match index.merge_once() {
                            Ok(true) => {}
                            Ok(false) => break,
                            Err(error) => {
                                tracing::error!(%error, "cannot merge the dedup index's runs; stopping");
                                std::process::exit(74);
                            }
                        }
                    }
                }
            })
            .map_err(|source| StorageError::Io {
                path: PathBuf::from("(thread benmo-index)"),
                source,
            })?;
    }
    Ok(Merges { signal })
}

fn encode_accepted(ballot: Ballot, batch: &Batch) -> Vec<u8> {
    proto::AcceptedValue {
        slot: 0,
        ballot: Some(ballot.into()),
        batch: Some(batch.into()),
    }
    .encode_to_vec()
}

/// The u64 after a key's prefix byte.
fn number(key: &[u8]) -> Result<u64, StorageError> {
    be_u64(key, &key[1..])
}

fn be_u64(key: &[u8], bytes: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupted(key, "expected a big-endian u64"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// What applies the log's records to sled: handles shared with the store, so that a backlog can
/// be applied without holding the store (see [`SledStorage::detach_backlog`]).
#[derive(Clone)]
struct Applier {
    tree: sled::Tree,
    /// The dedup index.
    index: Arc<DedupIndex>,
    /// Every id in the dedup index, once [`IdFilterScan`] has run (see [`crate::id_filter`]).
    filter: Arc<IdFilter>,
    merges: Arc<MergeSignal>,
    /// Blocks not yet in sled, decided or written, for the chain's readers.
    waiting_blocks: WaitingBlocks,
    order: Arc<ApplyOrder>,
}

/// Whose turn it is to apply a detached backlog: sled must see the log's records in log order.
#[derive(Default)]
struct ApplyOrder {
    next: Mutex<u64>,
    turn: std::sync::Condvar,
}

/// A backlog taken out of the store (see [`SledStorage::detach_backlog`]). Every later one waits
/// for it to be applied: dropped unapplied, it holds them back (sled must never record a log
/// position past records it does not hold).
pub struct DetachedBacklog {
    applier: Applier,
    backlog: Backlog,
    turn: u64,
}

impl DetachedBacklog {
    /// Applies the backlog to sled as one batch, after every backlog detached before it; returns
    /// the highest block it applied, if any.
    pub fn apply(self) -> Result<Option<Height>, StorageError> {
        let order = &self.applier.order;
        {
            let mut next = order.next.lock().expect("not poisoned");
            while *next != self.turn {
                next = order.turn.wait(next).expect("not poisoned");
            }
        }
        let applied = self.applier.apply_backlog(&self.backlog);
        *order.next.lock().expect("not poisoned") += 1;
        order.turn.notify_all();
        applied
    }
}

impl Applier {
    fn apply_backlog(&self, backlog: &Backlog) -> Result<Option<Height>, StorageError> {
        if backlog.writes.is_empty() {
            return Ok(None);
        }
        self.apply(&backlog.writes, backlog.end)?;
        let applied = backlog.writes.iter().rev().find_map(|write| match write {
            Write::AppendBlock(block) => Some(block.height),
            _ => None,
        });
        if let Some(height) = applied {
            // In sled now: readers find them there.
            let mut waiting = self.waiting_blocks.lock().expect("not poisoned");
            *waiting = waiting.split_off(&(height + 1));
        }
        Ok(applied)
    }

    /// Applies a batch that is already durable in the log at `position` to sled.
    ///
    /// The writes are netted first, so sled does only what is left at the end: a transfer that
    /// entered and left the pending log within the batch never reaches sled, a value accepted and
    /// then settled by a block is never inserted, and only the last snapshot is kept.
    fn apply(&self, writes: &[Write], position: Position) -> Result<(), StorageError> {
        // Key to its final value; `None` removes the key.
        let mut net: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        // Pending-log keys added within the batch: a transfer enters the pending log once.
        let mut pending_added = std::collections::HashSet::new();
        let mut settled_through = None;
        let mut indexed = Vec::new();
        for write in writes {
            match write {
                Write::Promise(ballot) => {
                    net.insert(vec![PROMISED], Some(encode_ballot(*ballot).to_vec()));
                }
                Write::Accept {
                    slot,
                    ballot,
                    batch: value,
                } => {
                    net.insert(
                        key(ACCEPTED, &slot.to_be_bytes()),
                        Some(encode_accepted(*ballot, value)),
                    );
                }
                Write::AppendBlock(block) => {
                    // Accepted values at or below the block are settled: those written earlier
                    // in this batch now, those already in sled below.
                    let settled = key(ACCEPTED, &[])..=key(ACCEPTED, &block.height.to_be_bytes());
                    for (_, value) in net.range_mut(settled) {
                        *value = None;
                    }
                    settled_through = Some(block.height);
                    net.insert(
                        key(CHAIN, &block.height.to_be_bytes()),
                        Some(proto::Block::from(block).encode_to_vec()),
                    );
                    for (index, entry) in block.entries.iter().enumerate() {
                        if !matches!(entry.outcome, benmo_paxos::Outcome::Duplicate { .. }) {
                            indexed.push(IndexEntry::new(
                                entry.transfer.id.as_str(),
                                block.height,
                                index as u32,
                            ));
                        }
                    }
                }
                Write::Snapshot(snapshot) => {
                    net.insert(vec![SNAPSHOT], Some(encode_snapshot(snapshot)));
                }
                Write::AddPending(transfer) => {
                    let pending = key(PENDING, transfer.id.as_str().as_bytes());
                    pending_added.insert(pending.clone());
                    net.insert(
                        pending,
                        Some(proto::Transfer::from(transfer).encode_to_vec()),
                    );
                }
                Write::RemovePending(id) => {
                    let pending = key(PENDING, id.as_str().as_bytes());
                    if pending_added.remove(&pending) {
                        net.remove(&pending);
                    } else {
                        net.insert(pending, None);
                    }
                }
            }
        }
        let mut batch = sled::Batch::default();
        if let Some(height) = settled_through {
            for stale in self
                .tree
                .range(key(ACCEPTED, &[])..=key(ACCEPTED, &height.to_be_bytes()))
                .keys()
            {
                batch.remove(stale?);
            }
        }
        for (key, value) in net {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        let run = self.index_into(&mut batch, indexed);
        batch.insert(vec![WAL_POSITION], position.to_bytes().to_vec());
        self.tree.apply_batch(batch)?;
        self.register(run);
        Ok(())
    }

    /// Stages `entries` as a new run of the dedup index, in `batch`; [`SledStorage::register`]
    /// it once the batch is applied.
    fn index_into(&self, batch: &mut sled::Batch, entries: Vec<IndexEntry>) -> Option<StagedRun> {
        // Into the filter before the run is written: a lookup may rely on it from then on.
        for entry in &entries {
            self.filter.insert(entry.hash);
        }
        self.index.stage(batch, entries)
    }

    /// Makes a staged run visible to lookups, and wakes the merges if it completes a tier.
    fn register(&self, run: Option<StagedRun>) {
        if let Some(run) = run {
            if self.index.register(run) {
                self.merges.wake();
            }
        }
    }
}

impl SledStorage {
    /// Opens a node's data directory, creating it (with its identity and the genesis block) on
    /// first start. An existing directory must carry the same identity.
    ///
    /// Besides the identity inside sled, the directory holds an `IDENTITY` file written once at
    /// first start. If sled comes up empty in a directory that has one, its data file was lost or
    /// damaged beyond sled's recovery: starting would forget promises and the chain, so the node
    /// refuses.
    pub fn open_node(path: &Path, identity: &Identity) -> Result<SledStorage, StorageError> {
        let marker = path.join(IDENTITY_FILE);
        let initialized = marker.exists();
        let fresh_sled = !path.join("db").exists();
        if initialized && fresh_sled {
            return Err(StorageError::Lost {
                path: path.to_path_buf(),
            });
        }
        let mut storage = SledStorage::open(path, identity)?;
        if initialized && storage.height.is_none() {
            return Err(StorageError::Lost {
                path: path.to_path_buf(),
            });
        }
        if storage.height.is_none() {
            storage.write(&[Write::AppendBlock(identity.genesis())])?;
            storage.checkpoint()?;
            // The directory entries of sled's files must be durable too.
            File::open(path)
                .and_then(|directory| directory.sync_all())
                .map_err(|source| StorageError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        // Written only once the genesis is durable: a crash before this point leaves a directory
        // that simply initializes again.
        if !initialized {
            write_marker(&marker, identity)?;
        }
        Ok(storage)
    }

    /// Opens (or creates) the store for `identity` without writing the genesis block.
    pub fn open(path: &Path, identity: &Identity) -> Result<SledStorage, StorageError> {
        std::fs::create_dir_all(path).map_err(|source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let db = sled_config(path).open()?;
        let tree = db.open_tree("benmo")?;
        let data_path = path.join("db");
        let data_file = File::open(&data_path).map_err(|source| StorageError::Io {
            path: data_path.clone(),
            source,
        })?;
        let applied = match tree.get([WAL_POSITION])? {
            None => Position::default(),
            Some(bytes) => Position::from_bytes(&bytes)
                .ok_or_else(|| corrupted(&[WAL_POSITION], "a log position is 16 bytes"))?,
        };
        // Before the log is touched: a store of another node, cluster or format is refused as
        // it is found.
        let format = check_identity(&tree, path, identity)?;
        let wal_folder = path.join(WAL_FOLDER);
        let log_format = if format == FORMAT {
            LogFormat::Current
        } else {
            LogFormat::Plain
        };
        let (wal, replay) = Wal::open(&wal_folder, applied, log_format)?;
        let checkpoints = start_checkpoints(db.clone(), tree.clone(), data_file, wal_folder)?;
        let index = Arc::new(DedupIndex::open(tree.clone())?);
        let merges = start_merges(index.clone())?;
        let applier = Applier {
            tree: tree.clone(),
            index,
            filter: Arc::new(IdFilter::new()),
            merges: merges.signal.clone(),
            waiting_blocks: Arc::new(Mutex::new(BTreeMap::new())),
            order: Arc::new(ApplyOrder::default()),
        };
        let mut storage = SledStorage {
            path: path.to_path_buf(),
            db,
            tree,
            checkpointed: wal.position(),
            wal,
            checkpoints,
            backlog: RefCell::new(Backlog::default()),
            detached: std::cell::Cell::new(0),
            applier,
            height: None,
            promised: Ballot::ZERO,
            _merges: merges,
        };
        if format == FORMAT_V1 {
            // Before anything moves: a binary of format 1 must refuse a store whose index is even
            // partly in runs (it would not read them). This one moves whatever is left on every
            // opening.
            storage.mark_format(FORMAT_V2)?;
        }
        storage.migrate_index()?;
        storage.height = storage.read_height()?;
        storage.promised = storage.read_promised()?;
        if applied == Position::default()
            && replay.first().is_some_and(|record| record.end.segment > 1)
        {
            // sled holds nothing of the log, yet the log's first segments were deleted because
            // sled held them: sled's data is gone.
            return Err(StorageError::Lost {
                path: path.to_path_buf(),
            });
        }
        let replayed = !replay.is_empty();
        for record in replay {
            let writes = decode_record(&record.payload)?;
            // Stores written by another version may hold some of these already.
            let writes = storage.not_yet_applied(writes);
            storage.track(&writes);
            storage.applier.apply(&writes, record.end)?;
        }
        if replayed && log_format == LogFormat::Current {
            storage.checkpoint()?;
        }
        if log_format == LogFormat::Plain {
            // The earlier format's log is read only by the earlier rules: leave none of it (the
            // checkpoint also covers what was replayed), then say so durably, and only then
            // write the current way.
            storage.wal.start_segment()?;
            storage.checkpoint()?;
            storage.mark_format(FORMAT)?;
            storage.wal.start_current_format();
        }
        Ok(storage)
    }

    /// Records the store's format durably (sled's own flush does not sync, spacejam/sled#1452).
    fn mark_format(&self, format: &[u8]) -> Result<(), StorageError> {
        self.tree.insert(key(META, b"format"), format)?;
        self.db.flush()?;
        self.sync_sled_data()
    }

    fn sync_sled_data(&self) -> Result<(), StorageError> {
        let data_path = self.path.join("db");
        File::open(&data_path)
            .and_then(|file| file.sync_data())
            .map_err(|source| StorageError::Io {
                path: data_path,
                source,
            })
    }

    /// What fills the dedup index's filter: until it has run, lookups read sled. A node starts it
    /// once it serves, so that it never slows the node's start.
    pub fn id_filter_scan(&self) -> IdFilterScan {
        IdFilterScan {
            index: self.applier.index.clone(),
            filter: self.applier.filter.clone(),
        }
    }

    /// Since when the log holds lazy writes in memory only (see [`Wal::unwritten_since`]).
    pub fn unwritten_since(&self) -> Option<std::time::Instant> {
        self.wal.unwritten_since()
    }

    /// Writes what the log holds in memory from lazy writes (see [`Wal::write_out`]), unsynced.
    pub fn write_out(&mut self) -> Result<(), StorageError> {
        Ok(self.wal.write_out()?)
    }

    /// Writes `writes` without syncing them (see [`Write::vouches`]): the next synced write, or a
    /// checkpoint, makes them durable, and a crash before then may lose them. A write that vouches
    /// for something is refused.
    pub fn write_lazily(&mut self, writes: &[Write]) -> Result<(), StorageError> {
        if let Some(write) = writes.iter().find(|write| write.vouches()) {
            return Err(StorageError::Refused(format!(
                "{write:?} must be synced, not written lazily"
            )));
        }
        self.write_record(writes, false)
    }

    fn write_record(&mut self, writes: &[Write], sync: bool) -> Result<(), StorageError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.check(writes)?;
        let record = encode_record(writes);
        let position = if sync {
            self.wal.append(&record)?
        } else {
            self.wal.append_unsynced(&record)?
        };
        self.track(writes);
        let blocks: Vec<&Block> = writes
            .iter()
            .filter_map(|write| match write {
                Write::AppendBlock(block) => Some(block),
                _ => None,
            })
            .collect();
        if !blocks.is_empty() {
            let mut waiting = self.applier.waiting_blocks.lock().expect("not poisoned");
            for block in blocks {
                // A node's core showed it when it decided it (see `DecidedBlocks`).
                waiting
                    .entry(block.height)
                    .or_insert_with(|| Arc::new(block.clone()));
            }
        }
        {
            let mut backlog = self.backlog.borrow_mut();
            backlog.writes.extend_from_slice(writes);
            backlog.end = position;
            backlog.since.get_or_insert_with(Instant::now);
        }
        if position.segment > self.checkpointed.segment {
            // A segment is full: sled catches up in the background, then the log shrinks.
            self.checkpointed = position;
            let _ = self.checkpoints.send(());
        }
        Ok(())
    }

    /// Drops writes the store already holds (a block at or below its height, a lower promise),
    /// so that applying a log record twice changes nothing.
    fn not_yet_applied(&self, writes: Vec<Write>) -> Vec<Write> {
        let next = self.height.map_or(0, |height| height + 1);
        writes
            .into_iter()
            .filter(|write| match write {
                Write::AppendBlock(block) => block.height >= next,
                Write::Promise(ballot) => *ballot >= self.promised,
                _ => true,
            })
            .collect()
    }

    /// Makes everything applied so far durable in sled, and deletes the log segments it covers.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        self.apply_backlog()?;
        let position = self.wal.position();
        self.db.flush()?;
        self.sync_sled_data()?;
        Wal::forget_before(&self.path.join(WAL_FOLDER), position)?;
        self.checkpointed = position;
        Ok(())
    }

    fn read_height(&self) -> Result<Option<Height>, StorageError> {
        match self.tree.scan_prefix([CHAIN]).keys().next_back() {
            None => Ok(None),
            Some(key) => Ok(Some(number(&key?)?)),
        }
    }

    fn read_promised(&self) -> Result<Ballot, StorageError> {
        let key = [PROMISED];
        match self.tree.get(key)? {
            None => Ok(Ballot::ZERO),
            Some(bytes) => decode_ballot(&key, &bytes),
        }
    }

    /// Follows the promise and the chain's height through `writes`, which are durable.
    fn track(&mut self, writes: &[Write]) {
        for write in writes {
            match write {
                Write::Promise(ballot) => self.promised = self.promised.max(*ballot),
                Write::AppendBlock(block) => self.height = Some(block.height),
                _ => {}
            }
        }
    }

    /// How long until the backlog must be applied to sled (`None` if nothing waits): at once
    /// if it holds [`SLED_BACKLOG_WRITES_MAX`] writes.
    pub fn backlog_due_in(&self) -> Option<Duration> {
        let backlog = self.backlog.borrow();
        let since = backlog.since?;
        if backlog.writes.len() >= SLED_BACKLOG_WRITES_MAX {
            return Some(Duration::ZERO);
        }
        Some(SLED_APPLY_DELAY.saturating_sub(since.elapsed()))
    }

    /// Takes the backlog out of the store, to be applied to sled by [`DetachedBacklog::apply`]
    /// without holding the store: writes to the log go on meanwhile. Backlogs are applied in the
    /// order they were taken, whoever applies them; the chain's readers find the blocks among
    /// the waiting ones until they are in sled.
    pub fn detach_backlog(&self) -> DetachedBacklog {
        let turn = self.detached.get();
        self.detached.set(turn + 1);
        DetachedBacklog {
            applier: self.applier.clone(),
            backlog: std::mem::take(&mut *self.backlog.borrow_mut()),
            turn,
        }
    }

    /// Applies every write waiting in the backlog to sled as one batch; returns the highest
    /// block it applied, if any. Reads of this store apply the backlog first, so they see every
    /// write; the archive sees it once applied, the chain's readers ([`ChainReader`]) sooner.
    pub fn apply_backlog(&self) -> Result<Option<Height>, StorageError> {
        // Also waits for backlogs detached earlier, so that reads of sled that follow see them.
        self.detach_backlog().apply()
    }

    /// Checks a batch against the stored state before anything is written.
    fn check(&self, writes: &[Write]) -> Result<(), StorageError> {
        let mut next = self.height.map_or(0, |height| height + 1);
        let mut promised = self.promised;
        for write in writes {
            match write {
                Write::AppendBlock(block) => {
                    if block.height != next {
                        return Err(StorageError::Refused(format!(
                            "block {} appended where block {next} was due",
                            block.height
                        )));
                    }
                    if block.height > 0 && !block.hash_is_valid() {
                        return Err(StorageError::Refused(format!(
                            "block {} does not match its hash",
                            block.height
                        )));
                    }
                    next += 1;
                }
                Write::Promise(ballot) => {
                    if *ballot < promised {
                        return Err(StorageError::Refused(format!(
                            "promise {ballot} is below the stored promise {promised}"
                        )));
                    }
                    promised = *ballot;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The block at `height`, if stored.
    pub fn block(&self, height: Height) -> Result<Option<Block>, StorageError> {
        self.apply_backlog()?;
        let key = key(CHAIN, &height.to_be_bytes());
        match self.tree.get(&key)? {
            None => Ok(None),
            Some(bytes) => {
                let block: proto::Block = decode(&key, &bytes)?;
                Ok(Some(converted(&key, Block::try_from(block))?))
            }
        }
    }

    /// Where the transfer `id` was first ordered, from the dedup index.
    pub fn first_height(&self, id: &TransferId) -> Result<Option<Height>, StorageError> {
        self.apply_backlog()?;
        let archive = SledArchive {
            tree: self.tree.clone(),
            filter: self.applier.filter.clone(),
            index: self.applier.index.clone(),
        };
        Ok(archive.read(id)?.map(|record| record.height))
    }

    /// Where decided blocks wait for their write, for the chain's readers.
    pub fn decided_blocks(&self) -> DecidedBlocks {
        DecidedBlocks {
            waiting: self.applier.waiting_blocks.clone(),
        }
    }

    /// A read-only handle on the chain.
    pub fn reader(&self) -> ChainReader {
        ChainReader {
            tree: self.tree.clone(),
            waiting: self.applier.waiting_blocks.clone(),
        }
    }

    /// The number of ids in the dedup index.
    pub fn indexed_transfers(&self) -> Result<usize, StorageError> {
        self.apply_backlog()?;
        Ok(self.applier.index.len() as usize)
    }

    /// Moves the dedup index of earlier versions (one key per id, or buckets) into runs, a batch
    /// at a time; each batch moves its keys atomically, so a crash in between loses nothing.
    fn migrate_index(&self) -> Result<(), StorageError> {
        let mut moved = 0usize;
        for prefix in [INDEX_PER_ID, INDEX_BUCKETS] {
            loop {
                let mut old_keys = Vec::new();
                let mut entries = Vec::new();
                for item in self.tree.scan_prefix([prefix]).take(MIGRATE_BATCH_KEYS) {
                    let (old_key, value) = item?;
                    if prefix == INDEX_BUCKETS {
                        entries.extend(decode_entries(&old_key, &value)?);
                    } else {
                        let id = std::str::from_utf8(&old_key[1..])
                            .map_err(|_| corrupted(&old_key, "an id is ASCII"))?;
                        if value.len() != 12 {
                            return Err(corrupted(&old_key, "an index entry is 12 bytes"));
                        }
                        entries.push(IndexEntry::new(
                            id,
                            be_u64(&old_key, &value[..8])?,
                            u32::from_be_bytes(value[8..].try_into().expect("4 bytes")),
                        ));
                    }
                    old_keys.push(old_key);
                }
                if old_keys.is_empty() {
                    break;
                }
                moved += entries.len();
                let mut batch = sled::Batch::default();
                let run = self.applier.index_into(&mut batch, entries);
                for old_key in old_keys {
                    batch.remove(old_key);
                }
                self.tree.apply_batch(batch)?;
                self.applier.register(run);
            }
        }
        if moved > 0 {
            self.db.flush()?;
            tracing::info!(ids = moved, "moved the dedup index into runs");
        }
        Ok(())
    }
}

impl Storage for SledStorage {
    type Error = StorageError;

    fn write(&mut self, writes: &[Write]) -> Result<(), StorageError> {
        self.write_record(writes, true)
    }

    fn acceptor_state(&self) -> Result<AcceptorState, StorageError> {
        self.apply_backlog()?;
        let mut accepted = BTreeMap::new();
        for item in self.tree.scan_prefix([ACCEPTED]) {
            let (key, bytes) = item?;
            let slot = number(&key)?;
            let value: proto::AcceptedValue = decode(&key, &bytes)?;
            let ballot: Ballot = value
                .ballot
                .ok_or_else(|| corrupted(&key, "missing ballot"))?
                .into();
            let batch = value
                .batch
                .ok_or_else(|| corrupted(&key, "missing batch"))?;
            accepted.insert(slot, (ballot, converted(&key, Batch::try_from(batch))?));
        }
        let mut pending = BTreeMap::new();
        for item in self.tree.scan_prefix([PENDING]) {
            let (key, bytes) = item?;
            let transfer: proto::Transfer = decode(&key, &bytes)?;
            let transfer = converted(&key, Transfer::try_from(transfer))?;
            if key[1..] != *transfer.id.as_str().as_bytes() {
                return Err(corrupted(&key, "stored under another id"));
            }
            pending.insert(transfer.id.clone(), transfer);
        }
        Ok(AcceptorState {
            promised: self.read_promised()?,
            accepted,
            pending,
        })
    }

    fn height(&self) -> Result<Option<Height>, StorageError> {
        Ok(self.height)
    }

    fn blocks(&self, from: Height, limit: usize) -> Result<Vec<Block>, StorageError> {
        self.apply_backlog()?;
        read_blocks(&self.tree, from, limit)
    }

    fn snapshot(&self) -> Result<Option<LedgerSnapshot>, StorageError> {
        self.apply_backlog()?;
        let key = [SNAPSHOT];
        match self.tree.get(key)? {
            None => Ok(None),
            Some(bytes) => decode_snapshot(&key, &bytes).map(Some),
        }
    }

    fn archive(&self) -> Arc<dyn Archive> {
        Arc::new(SledArchive {
            tree: self.tree.clone(),
            filter: self.applier.filter.clone(),
            index: self.applier.index.clone(),
        })
    }
}

/// The dedup index on disk, as the ledger's archive. A read that fails ends the node's core (the
/// ledger cannot decide a transfer's outcome without it), as every storage error does.
#[derive(Debug)]
struct SledArchive {
    tree: sled::Tree,
    filter: Arc<IdFilter>,
    index: Arc<DedupIndex>,
}

impl SledArchive {
    fn read(&self, id: &TransferId) -> Result<Option<Record>, StorageError> {
        let hash = id_hash(id.as_str());
        if !self.filter.may_contain(hash) {
            return Ok(None);
        }
        // Almost always one candidate at most; another id with the same 64-bit hash is skipped.
        let damaged =
            |reason: String| corrupted(format!("the dedup index entry of {id}").as_bytes(), reason);
        for place in self.index.candidates(hash)? {
            let height = place.height;
            let block = read_blocks(&self.tree, height, 1)?
                .pop()
                .ok_or_else(|| damaged(format!("names missing block {height}")))?;
            let found = block
                .entries
                .get(place.entry as usize)
                .ok_or_else(|| damaged(format!("names no entry of block {height}")))?;
            if found.transfer.id == *id {
                return Ok(Some(Record {
                    height,
                    block_hash: block.hash,
                    transfer: found.transfer.clone(),
                    outcome: found.outcome.clone(),
                }));
            }
        }
        Ok(None)
    }
}

impl Archive for SledArchive {
    fn lookup(&self, id: &TransferId) -> Option<Record> {
        match self.read(id) {
            Ok(record) => record,
            Err(error) => panic!("cannot read the dedup index: {error}"),
        }
    }
}

/// Reads up to `limit` consecutive blocks from `from`, checking each is stored under its height.
fn read_blocks(tree: &sled::Tree, from: Height, limit: usize) -> Result<Vec<Block>, StorageError> {
    let mut blocks = Vec::new();
    if limit == 0 {
        return Ok(blocks);
    }
    for item in tree.range(key(CHAIN, &from.to_be_bytes())..).take(limit) {
        let (key, bytes) = item?;
        if key.first() != Some(&CHAIN) {
            break;
        }
        let height = number(&key)?;
        let block: proto::Block = decode(&key, &bytes)?;
        let block = converted(&key, Block::try_from(block))?;
        if block.height != height || height != from + blocks.len() as Height {
            return Err(corrupted(&key, format!("holds block {}", block.height)));
        }
        blocks.push(block);
    }
    Ok(blocks)
}

/// A read-only handle on the chain, for serving peers' catch-up and clients' chain reads while the
/// writer writes. It sees every block as soon as the core has it (see [`DecidedBlocks`]) or the
/// writer wrote it: from sled, and from the blocks not yet applied to sled. (Every such block is
/// decided, so serving one is safe.)
#[derive(Clone)]
pub struct ChainReader {
    tree: sled::Tree,
    waiting: WaitingBlocks,
}

/// Where the core loop puts each block as it joins the core's chain, before its write: a read of
/// the chain then never ends below the height the core reports (balances, status), which a
/// client reading both, like `benmoctl verify`, relies on.
#[derive(Clone)]
pub struct DecidedBlocks {
    waiting: WaitingBlocks,
}

impl DecidedBlocks {
    /// Shows `block` to the chain's readers until sled holds it.
    pub fn insert(&self, block: &Block) {
        let block = Arc::new(block.clone());
        let mut waiting = self.waiting.lock().expect("not poisoned");
        waiting.insert(block.height, block);
    }
}

impl ChainReader {
    /// Up to `limit` consecutive blocks from `from`.
    pub fn blocks(&self, from: Height, limit: usize) -> Result<Vec<Block>, StorageError> {
        // The waiting blocks first, then sled: a block leaves `waiting` only once sled holds it,
        // so whatever was in neither then is newer than both. The lock is held only to copy
        // handles: the core loop takes it for every block it decides.
        let waiting: Vec<Arc<Block>> = {
            let waiting = self.waiting.lock().expect("not poisoned");
            waiting
                .range(from..from.saturating_add(limit as Height))
                .map(|(_, block)| block.clone())
                .collect()
        };
        let mut blocks = read_blocks(&self.tree, from, limit)?;
        let mut next = from + blocks.len() as Height;
        for block in waiting {
            if blocks.len() >= limit {
                break;
            }
            if block.height == next {
                blocks.push(Block::clone(&block));
                next += 1;
            } else if block.height > next {
                break;
            }
        }
        Ok(blocks)
    }
}

/// The genesis hash a directory for `identity` must hold.
pub fn genesis_hash(identity: &Identity) -> Hash {
    identity.genesis().hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use benmo_paxos::storage::conformance;

    struct Sled {
        directories: Vec<tempfile::TempDir>,
    }

    /// Opens a store the test just dropped. sled's background threads (and the checkpoint
    /// thread) can hold the file lock for a moment after the last handle is gone (a real restart is a new process, where the
    /// lock is gone with the old one), so this waits for the lock, and only for the lock: any
    /// other error comes back at once.
    fn reopen(
        path: &Path,
        identity: &Identity,
        open: fn(&Path, &Identity) -> Result<SledStorage, StorageError>,
    ) -> Result<SledStorage, StorageError> {
        let started = std::time::Instant::now();
        loop {
            match open(path, identity) {
                Err(StorageError::Sled(sled::Error::Io(error)))
                    if error.to_string().contains("could not acquire lock")
                        && started.elapsed() < std::time::Duration::from_secs(10) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                result => return result,
            }
        }
    }

    const IDENTITY: Identity = Identity {
        node: 1,
        nodes: 5,
        genesis_balance: 100,
    };

    impl conformance::Harness for Sled {
        type Store = SledStorage;

        fn create(&mut self) -> SledStorage {
            let directory = tempfile::tempdir().expect("temp dir");
            let path = directory.path().join("data");
            self.directories.push(directory);
            SledStorage::open(&path, &IDENTITY).expect("open")
        }

        fn reopen(&mut self, store: SledStorage) -> SledStorage {
            let path = store.path.clone();
            drop(store);
            reopen(&path, &IDENTITY, SledStorage::open).expect("reopen")
        }
    }

    #[test]
    fn sled_storage_passes_the_conformance_suite() {
        conformance::run_all(&mut Sled {
            directories: Vec::new(),
        });
    }

    #[test]
    fn a_directory_of_another_node_or_cluster_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("data");
        drop(SledStorage::open_node(&path, &IDENTITY).unwrap());
        let other_node = Identity {
            node: 2,
            ..IDENTITY
        };
        let error = reopen(&path, &other_node, SledStorage::open).err().unwrap();
        assert!(
            error
                .to_string()
                .contains("belongs to node 1 of a 5-node cluster"),
            "{error}"
        );
        let other_cluster = Identity {
            nodes: 3,
            ..IDENTITY
        };
        assert!(matches!(
            reopen(&path, &other_cluster, SledStorage::open),
            Err(StorageError::WrongIdentity { .. })
        ));
        // The right identity still opens it.
        assert!(reopen(&path, &IDENTITY, SledStorage::open).is_ok());
    }

    #[test]
    fn an_initialized_directory_whose_database_is_gone_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("data");
        drop(SledStorage::open_node(&path, &IDENTITY).unwrap());
        for entry in std::fs::read_dir(&path).unwrap().flatten() {
            if entry.file_name() != IDENTITY_FILE {
                let _ = std::fs::remove_file(entry.path());
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        assert!(matches!(
            reopen(&path, &IDENTITY, SledStorage::open_node),
            Err(StorageError::Lost { .. })
        ));
    }

    #[test]
    fn a_sled_directory_without_identity_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("data");
        {
            let db = sled_config(&path).open().unwrap();
            db.open_tree("benmo").unwrap().insert(b"zzz", b"x").unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(
            reopen(&path, &IDENTITY, SledStorage::open),
            Err(StorageError::NotBenmo { .. })
        ));
    }

    #[test]
    fn a_corrupted_record_is_reported_with_its_key() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("data");
        let store = SledStorage::open_node(&path, &IDENTITY).unwrap();
        store
            .tree
            .insert(
                key(CHAIN, &0u64.to_be_bytes()),
                b"\xff\xff garbage".to_vec(),
            )
            .unwrap();
        let error = store.blocks(0, 1).unwrap_err();
        assert!(error.to_string().contains("corrupted record c0"), "{error}");
    }

    #[test]
    fn the_dedup_index_records_first_heights() {
        let directory = tempfile::tempdir().unwrap();
        let (mut store, mut ledger) = fresh(&directory);
        let transfer = Transfer {
            id: TransferId::new("a").unwrap(),
            from: 1,
            to: 2,
            amount: 1,
            signature: None,
        };
        let first = ledger.apply(1, std::slice::from_ref(&transfer));
        let second = ledger.apply(1, std::slice::from_ref(&transfer));
        store
            .write(&[Write::AppendBlock(first), Write::AppendBlock(second)])
            .unwrap();
        assert_eq!(store.first_height(&transfer.id).unwrap(), Some(1));
        assert_eq!(store.indexed_transfers().unwrap(), 1);
    }

    /// A fresh store in `directory` and the genesis ledger of its cluster.
    fn fresh(directory: &tempfile::TempDir) -> (SledStorage, benmo_paxos::Ledger) {
        let store = SledStorage::open_node(&directory.path().join("data"), &IDENTITY).unwrap();
        (store, benmo_paxos::Ledger::genesis(5, 100))
    }

    fn block_of(ledger: &mut benmo_paxos::Ledger, ids: &[String]) -> Block {
        let batch: Vec<Transfer> = ids
            .iter()
            .map(|id| Transfer {
                id: TransferId::new(id.clone()).unwrap(),
                from: 1,
                to: 2,
                amount: 1,
                signature: None,
            })
            .collect();
        ledger.apply(1, &batch)
    }

    #[test]
    fn ids_in_one_block_and_in_later_ones_each_find_their_own_block() {
        let directory = tempfile::tempdir().unwrap();
        let (mut store, mut ledger) = fresh(&directory);
        let one = block_of(&mut ledger, &["first".to_string(), "other".to_string()]);
        let two = block_of(&mut ledger, &["second".to_string()]);
        store.write(&[Write::AppendBlock(one)]).unwrap();
        store.apply_backlog().unwrap();
        store.write(&[Write::AppendBlock(two)]).unwrap();
        store.apply_backlog().unwrap();
        let archive = store.archive();
        let found = |id: &str| archive.lookup(&TransferId::new(id).unwrap());
        assert_eq!(found("first").map(|record| record.height), Some(1));
        let record = found("other").unwrap();
        assert_eq!((record.height, record.transfer.id.as_str()), (1, "other"));
        assert_eq!(found("second").map(|record| record.height), Some(2));
        assert!(found("never-seen").is_none());
        assert_eq!(store.indexed_transfers().unwrap(), 3);
    }

    /// Many batches, each a run, merged in the background while they are looked up.
    #[test]
    fn every_id_is_found_while_runs_are_merged() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("data");
        let (mut store, mut ledger) = fresh(&directory);
        let mut ids = Vec::new();
        for height in 1..=120u64 {
            let block: Vec<String> = (0..height % 40 + 1)
                .map(|n| format!("b{height}-{n}"))
                .collect();
            store
                .write(&[Write::AppendBlock(block_of(&mut ledger, &block))])
                .unwrap();
            store.apply_backlog().unwrap();
            ids.extend(block.into_iter().map(|id| (id, height)));
            let (id, height) = &ids[(height as usize * 7) % ids.len()];
            let id = TransferId::new(id.clone()).unwrap();
            assert_eq!(store.first_height(&id).unwrap(), Some(*height));
        }
        // Whatever the merge thread has not merged yet is merged here; the tiers bound the rest.
        while store.applier.index.merge_once().unwrap() {}
        assert!(
            store.applier.index.runs() <= 19,
            "{} runs",
            store.applier.index.runs()
        );
        assert_eq!(store.indexed_transfers().unwrap(), ids.len());
        store.checkpoint().unwrap();
        drop(store);
        let store = reopen(&path, &IDENTITY, SledStorage::open_node).unwrap();
        store.id_filter_scan().run().unwrap();
        let archive = store.archive();
        for (id, height) in &ids {
            let record = archive.lookup(&TransferId::new(id.clone()).unwrap());
            assert_eq!(record.map(|record| record.height), Some(*height), "{id}");
        }
        assert!(archive
            .lookup(&TransferId::new("never-seen").unwrap())
            .is_none());
    }

    #[test]
    fn the_id_filter_holds_every_id_indexed_in_this_life_and_earlier_ones() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("data");
        let (mut store, mut ledger) = fresh(&directory);
        let earlier: Vec<String> = (0..300).map(|n| format!("earlier{n}")).collect();
        store
            .write(&[Write::AppendBlock(block_of(&mut ledger, &earlier))])
            .unwrap();
        store.checkpoint().unwrap();
        drop(store);
        let mut store = reopen(&path, &IDENTITY, SledStorage::open_node).unwrap();
        assert!(
            !store.applier.filter.is_complete(),
            "complete only once scanned"
        );
        store.id_filter_scan().run().unwrap();
        assert!(store.applier.filter.is_complete());
        let now: Vec<String> = (0..300).map(|n| format!("now{n}")).collect();
        store
            .write(&[Write::AppendBlock(block_of(&mut ledger, &now))])
            .unwrap();
        store.apply_backlog().unwrap();
        // A complete filter answers "absent" without reading sled: a missing id would be lost.
        let archive = store.archive();
        let height = |id: &String| {
            archive
                .lookup(&TransferId::new(id.clone()).unwrap())
                .map(|record| record.height)
        };
        assert!(earlier.iter().all(|id| height(id) == Some(1)));
        assert!(now.iter().all(|id| height(id) == Some(2)));
        assert_eq!(height(&"never-seen".to_string()), None);
    }

    #[test]
    fn writes_after_a_lost_lazy_record_survive_the_next_restart() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("data");
        let (mut store, mut ledger) = fresh(&directory);
        let refused = store.write_lazily(&[Write::Promise(Ballot::new(1, 1))]);
        assert!(
            matches!(refused, Err(StorageError::Refused(_))),
            "{refused:?}"
        );
        store.write(&[Write::Promise(Ballot::new(1, 1))]).unwrap();
        let synced = store.wal.position();
        let ids: Vec<String> = (0..200).map(|n| format!("lazy{n}")).collect();
        store
            .write_lazily(&[Write::AppendBlock(block_of(&mut ledger, &ids))])
            .unwrap();
        let lazy = store.wal.position();
        // sled took the block and kept it; the machine then lost the log's unsynced tail (its
        // bytes read as zeros again, as in a ready file, or are gone, as in a plain one).
        store.apply_backlog().unwrap();
        store.db.flush().unwrap();
        drop(store);
        let lost_from = if lazy.segment == synced.segment {
            synced.offset
        } else {
            0
        };
        let segment = path
            .join(WAL_FOLDER)
            .join(format!("{:020}.wal", lazy.segment));
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new()
                .write(true)
                .open(&segment)
                .unwrap(),
            &vec![0; (lazy.offset - lost_from) as usize],
            lost_from,
        )
        .unwrap();
        let mut store = reopen(&path, &IDENTITY, SledStorage::open_node).unwrap();
        assert_eq!(store.height().unwrap(), Some(1));
        store.write(&[Write::Promise(Ballot::new(2, 1))]).unwrap();
        drop(store);
        let store = reopen(&path, &IDENTITY, SledStorage::open_node).unwrap();
        assert_eq!(store.acceptor_state().unwrap().promised, Ballot::new(2, 1));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn background_threads_give_way_and_only_they_do() {
        fn nice() -> i64 {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            // The fields after the command name, which ends with the last ')': nice is the 19th
            // field of the line, the 17th after it.
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            after.split(' ').nth(16).unwrap().parse().unwrap()
        }
        let before = nice();
        let lowered = std::thread::spawn(|| {
            in_background();
            nice()
        })
        .join()
        .unwrap();
        assert!(
            lowered >= before.max(10),
            "nice {lowered}, the test's {before}"
        );
        assert_eq!(nice(), before, "the calling thread only");
    }

    #[test]
    fn a_decided_block_is_read_before_its_write_and_after_it() {
        let directory = tempfile::tempdir().unwrap();
        let (mut store, mut ledger) = fresh(&directory);
        let block = block_of(&mut ledger, &["a".to_string()]);
        let reader = store.reader();
        let heights = || -> Vec<Height> {
            let blocks = reader.blocks(0, 10).unwrap();
            blocks.iter().map(|block| block.height).collect()
        };
        assert_eq!(heights(), vec![0]);
        store.decided_blocks().insert(&block);
        assert_eq!(heights(), vec![0, 1]);
        store.write(&[Write::AppendBlock(block)]).unwrap();
        store.apply_backlog().unwrap();
        assert!(store.applier.waiting_blocks.lock().unwrap().is_empty());
        assert_eq!(heights(), vec![0, 1]);
    }

    #[test]
    fn detached_backlogs_reach_sled_in_the_order_they_were_taken() {
        let directory = tempfile::tempdir().unwrap();
        let (mut store, mut ledger) = fresh(&directory);
        let one = block_of(&mut ledger, &["a".to_string()]);
        store.write(&[Write::AppendBlock(one)]).unwrap();
        let first = store.detach_backlog();
        // The log goes on while the first backlog waits to be applied.
        let two = block_of(&mut ledger, &["b".to_string()]);
        store.write(&[Write::AppendBlock(two)]).unwrap();
        let second = store.detach_backlog();
        let end = store.wal.position();
        let (finished, later) = std::sync::mpsc::channel();
        std::thread::spawn(move || finished.send(second.apply().unwrap()).unwrap());
        // The later backlog waits for its turn (what must not happen can only be waited for).
        assert_eq!(
            later.recv_timeout(std::time::Duration::from_millis(200)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        assert_eq!(first.apply().unwrap(), Some(1));
        assert_eq!(later.recv().unwrap(), Some(2));
        // sled holds the later backlog's log position: the earlier one, applied after it, would
        // let a checkpoint keep records sled already holds, or (the other way round) drop some.
        let applied = store.tree.get([WAL_POSITION]).unwrap().unwrap();
        assert_eq!(Position::from_bytes(&applied), Some(end));
        let heights: Vec<Height> = store
            .reader()
            .blocks(1, 10)
            .unwrap()
            .iter()
            .map(|block| block.height)
            .collect();
        assert_eq!(heights, vec![1, 2]);
        assert!(store.applier.waiting_blocks.lock().unwrap().is_empty());
    }

    #[test]
    fn a_lookup_reads_past_another_id_with_the_same_hash() {
        let directory = tempfile::tempdir().unwrap();
        let (mut store, mut ledger) = fresh(&directory);
        let one = block_of(&mut ledger, &["b".to_string()]);
        let two = block_of(&mut ledger, &["a".to_string()]);
        store
            .write(&[Write::AppendBlock(one), Write::AppendBlock(two)])
            .unwrap();
        store.apply_backlog().unwrap();
        // As if "b" (block 1) had the same 64-bit hash as "a": an entry for "a" that names it.
        let mut batch = sled::Batch::default();
        let run = store
            .applier
            .index_into(&mut batch, vec![IndexEntry::new("a", 1, 0)]);
        store.tree.apply_batch(batch).unwrap();
        store.applier.register(run);
        let id = TransferId::new("a").unwrap();
        assert_eq!(store.first_height(&id).unwrap(), Some(2));
        let record = store.archive().lookup(&id).unwrap();
        assert_eq!(record.transfer.id, id);
    }

    /// A store whose block 1 holds `ids`, checkpointed, with its dedup index runs removed, as if
    /// it had never held any: the test writes the index as an earlier version kept it.
    fn store_without_runs(directory: &tempfile::TempDir, ids: &[String]) -> SledStorage {
        let (mut store, mut ledger) = fresh(directory);
        store
            .write(&[Write::AppendBlock(block_of(&mut ledger, ids))])
            .unwrap();
        store.checkpoint().unwrap();
        for prefix in [crate::dedup_index::RUN_META, RUN_CHUNK] {
            for item in store.tree.scan_prefix([prefix]).keys() {
                store.tree.remove(item.unwrap()).unwrap();
            }
        }
        store
    }

    #[test]
    fn an_index_of_one_key_per_id_is_moved_into_runs() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("data");
        let ids: Vec<String> = (0..50).map(|n| format!("old{n}")).collect();
        let store = store_without_runs(&directory, &ids);
        // The index as the earliest version kept it: one key per id.
        for (entry, id) in ids.iter().enumerate() {
            let mut place = 1u64.to_be_bytes().to_vec();
            place.extend_from_slice(&(entry as u32).to_be_bytes());
            store
                .tree
                .insert(key(INDEX_PER_ID, id.as_bytes()), place)
                .unwrap();
        }
        store.db.flush().unwrap();
        drop(store);
        let store = reopen(&path, &IDENTITY, SledStorage::open_node).unwrap();
        assert_eq!(store.tree.scan_prefix([INDEX_PER_ID]).count(), 0);
        assert_eq!(store.indexed_transfers().unwrap(), ids.len());
        for id in &ids {
            let id = TransferId::new(id.clone()).unwrap();
            assert_eq!(store.first_height(&id).unwrap(), Some(1));
        }
    }

    #[test]
    fn a_format_1_store_has_its_buckets_moved_into_runs_and_is_marked_format_2() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("data");
        let ids: Vec<String> = (0..300).map(|n| format!("v1-{n}")).collect();
        let store = store_without_runs(&directory, &ids);
        // The store as format 1 kept it: entries in buckets of 2^19 by hash.
        let mut buckets: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        for (entry, id) in ids.iter().enumerate() {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(id.as_bytes());
            let bucket = u32::from_be_bytes(digest[..4].try_into().unwrap()) % (1 << 19);
            let bytes = buckets.entry(bucket).or_default();
            bytes.extend_from_slice(&id_hash(id).to_be_bytes());
            bytes.extend_from_slice(&1u64.to_be_bytes());
            bytes.extend_from_slice(&(entry as u32).to_be_bytes());
        }
        for (bucket, bytes) in buckets {
            store
                .tree
                .insert(key(INDEX_BUCKETS, &bucket.to_be_bytes()), bytes)
                .unwrap();
        }
        store.tree.insert(key(META, b"format"), FORMAT_V1).unwrap();
        store.db.flush().unwrap();
        drop(store);
        let store = reopen(&path, &IDENTITY, SledStorage::open_node).unwrap();
        assert_eq!(store.tree.scan_prefix([INDEX_BUCKETS]).count(), 0);
        assert_eq!(
            store.tree.get(key(META, b"format")).unwrap().as_deref(),
            Some(FORMAT)
        );
        assert_eq!(store.indexed_transfers().unwrap(), ids.len());
        store.id_filter_scan().run().unwrap();
        let archive = store.archive();
        for id in &ids {
            let record = archive.lookup(&TransferId::new(id.clone()).unwrap());
            assert_eq!(record.map(|record| record.height), Some(1), "{id}");
        }
    }

    #[test]
    fn a_format_1_store_is_marked_format_2_before_its_index_moves() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("data");
        let store = SledStorage::open_node(&path, &IDENTITY).unwrap();
        // A format-1 store whose index cannot all be moved: the move stops at a damaged bucket.
        store
            .tree
            .insert(key(INDEX_BUCKETS, &7u32.to_be_bytes()), b"\x05ab".to_vec())
            .unwrap();
        store.tree.insert(key(META, b"format"), FORMAT_V1).unwrap();
        store.db.flush().unwrap();
        drop(store);
        let error = reopen(&path, &IDENTITY, SledStorage::open_node)
            .err()
            .unwrap();
        assert!(error.to_string().contains("index bucket 7"), "{error}");
        // A binary of format 1 would not read what did move: it must find format 2 and refuse.
        let started = std::time::Instant::now();
        let db = loop {
            match sled_config(&path).open() {
                Ok(db) => break db,
                Err(error) if started.elapsed() < std::time::Duration::from_secs(10) => {
                    assert!(error.to_string().contains("lock"), "{error}");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(error) => panic!("{error}"),
            }
        };
        let format = db
            .open_tree("benmo")
            .unwrap()
            .get(key(META, b"format"))
            .unwrap();
        assert_eq!(format.as_deref(), Some(FORMAT_V2));
    }

    #[test]
    fn a_format_2_log_is_read_by_its_own_rules_then_left_behind() {
        // Format 2 read a header of zeros as an empty record and went on: a record after one
        // was durable, and must come back. Format 3 ends the log at zeros, so the store may be
        // marked 3 only once none of its format-2 log is left.
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("data");
        let (mut store, _) = fresh(&directory);
        store.checkpoint().unwrap();
        let applied = store.wal.position();
        store.mark_format(FORMAT_V2).unwrap();
        drop(store);
        let wal = path.join(WAL_FOLDER);
        for entry in std::fs::read_dir(&wal).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        let record = |ballot: Ballot| {
            let payload = encode_record(&[Write::Promise(ballot)]);
            let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
            bytes.extend_from_slice(&payload);
            bytes
        };
        let mut segment = record(Ballot::new(2, 1));
        segment.extend_from_slice(&[0; 8]);
        segment.extend_from_slice(&record(Ballot::new(3, 1)));
        let old_segment = wal.join(format!("{:020}.wal", applied.segment + 1));
        std::fs::write(&old_segment, segment).unwrap();
        let store = reopen(&path, &IDENTITY, SledStorage::open_node).unwrap();
        assert_eq!(store.acceptor_state().unwrap().promised, Ballot::new(3, 1));
        assert_eq!(
            store.tree.get(key(META, b"format")).unwrap().as_deref(),
            Some(FORMAT)
        );
        assert!(!old_segment.exists(), "no format-2 segment is left");
        drop(store);
        let store = reopen(&path, &IDENTITY, SledStorage::open_node).unwrap();
        assert_eq!(store.acceptor_state().unwrap().promised, Ballot::new(3, 1));
    }

    #[test]
    fn a_store_of_a_later_format_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("data");
        let store = SledStorage::open_node(&path, &IDENTITY).unwrap();
        store
            .tree
            .insert(key(META, b"format"), b"benmo-sled-v4".to_vec())
            .unwrap();
        store.db.flush().unwrap();
        drop(store);
        let error = reopen(&path, &IDENTITY, SledStorage::open_node)
            .err()
            .unwrap();
        assert!(error.to_string().contains("benmo-sled-v4"), "{error}");
    }

    #[test]
    fn a_damaged_index_run_is_an_error_not_a_miss() {
        let directory = tempfile::tempdir().unwrap();
        let (mut store, mut ledger) = fresh(&directory);
        store
            .write(&[Write::AppendBlock(block_of(
                &mut ledger,
                &["a".to_string()],
            ))])
            .unwrap();
        store.apply_backlog().unwrap();
        let chunk = store
            .tree
            .scan_prefix([RUN_CHUNK])
            .keys()
            .next()
            .unwrap()
            .unwrap();
        store.tree.insert(&chunk, b"\x05ab".to_vec()).unwrap();
        let error = store
            .first_height(&TransferId::new("a").unwrap())
            .unwrap_err();
        assert!(error.to_string().contains("index run"), "{error}");
    }

    fn copy_folder(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap().flatten() {
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_folder(&entry.path(), &target);
            } else {
                // A file renamed or deleted since the listing by a thread of the open store
                // (the log's ready file, sled's own files): a crash now would not have it either.
                if let Err(error) = std::fs::copy(entry.path(), target) {
                    assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}");
                }
            }
        }
    }

    #[test]
    fn writes_survive_a_crash_before_sled_is_flushed() {
        // A copy of the folder taken while the store is open is what a crash leaves: the log is
        // synced after every write, sled only at checkpoints. Everything written must be there.
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("data");
        let (mut store, mut ledger) = fresh(&directory);
        for round in 1..=40u64 {
            let transfer = Transfer {
                id: TransferId::new(format!("t{round}")).unwrap(),
                from: 1,
                to: 2,
                amount: 1,
                signature: None,
            };
            let ballot = Ballot::new(round, 1);
            let block = ledger.apply(1, std::slice::from_ref(&transfer));
            store
                .write(&[
                    Write::Promise(ballot),
                    Write::Accept {
                        slot: round + 1,
                        ballot,
                        batch: Batch::default(),
                    },
                    Write::AddPending(transfer),
                    Write::AppendBlock(block),
                    Write::Snapshot(ledger.snapshot()),
                ])
                .unwrap();
        }
        let crashed = directory.path().join("crashed");
        copy_folder(&path, &crashed);
        drop(store);
        let store = SledStorage::open_node(&crashed, &IDENTITY).unwrap();
        assert_eq!(store.height().unwrap(), Some(40));
        let state = store.acceptor_state().unwrap();
        assert_eq!(state.promised, Ballot::new(40, 1));
        assert_eq!(state.accepted.keys().copied().collect::<Vec<_>>(), vec![41]);
        assert_eq!(state.pending.len(), 40);
        let restored = benmo_paxos::restore(&store, 5, 100).unwrap();
        assert_eq!(restored.ledger.head_hash(), ledger.head_hash());
        assert_eq!(restored.ledger.balances(), ledger.balances());
    }
}
