//! The dedup index on disk: for every transfer id the chain holds, where it was first ordered.
//!
//! The index is a set of immutable sorted *runs* in sled, as in a log-structured merge tree:
//!
//! | key                                         | value                                   |
//! |---------------------------------------------|-----------------------------------------|
//! | `r` + run (u64 BE)                          | how many entries the run holds (u64 BE) |
//! | `k` + run (u64 BE) + first hash (u64 BE)    | up to [`CHUNK_ENTRIES`] of the run's entries, sorted by hash (see [`IndexEntry`]) |
//!
//! Each batch the writer applies to sled adds its blocks' ids as one new run, in the same sled
//! batch as the blocks, so the index changes atomically with the chain and costs a key per
//! [`CHUNK_ENTRIES`] ids. The previous layout, buckets of entries keyed by hash, cost a sled read
//! and a sled write *per id*: measured on a 5-node cluster at 256 clients, those were 60% of each
//! writer thread's CPU, a third of the machine's.
//!
//! A thread of its own merges runs into bigger ones, size-tiered: a run's tier grows with the log
//! of its size (base [`FANOUT`]), and once [`FANOUT`] runs share a tier they are merged into one
//! of the next. So each id is rewritten about log8(ids / 64) times, in bulk, and a lookup reads one
//! chunk in each of at most `FANOUT - 1` runs per tier once merges catch up: at most 49 runs at
//! 10M ids, 56 at 100M. (A fanout of 4 rewrote each id half as often again, for 30 runs at 10M;
//! since lookups are rare, the merges' CPU counts more: at 256 clients it fell from about 5 to
//! 3.5 µs per transfer.) Two threads merge, so a long merge of big runs does not hold back small
//! ones.
//! Lookups are rare: the [`IdFilter`] answers for every id the index does not hold, so only
//! retries of committed transfers, the filter's false positives, and lookups before the filter is
//! filled at start-up read the runs.
//!
//! A merge streams: it reads its runs chunk by chunk and writes the merged run in sled batches of
//! [`CHUNKS_PER_BATCH`] chunks, so neither its memory nor any one batch (sled applies a batch under
//! a lock that holds back every other write, the writer's included) grows with the runs. A marker
//! names each merge in progress; the merged run becomes visible in one small batch that adds its
//! size and removes its sources' sizes; only then are the sources' chunks removed. After a crash,
//! the next merge first removes whichever side's chunks the marker shows unused (lookups read only
//! runs whose size is stored, so they never see those).
//!
//! Concurrency: a lookup that listed the runs before a merge and read them after it would miss ids,
//! so lookups hold `swap` for reading while they read runs, and a merge makes its switch under it
//! for writing (the sources' chunks go only after that). Runs the writer adds are read only once
//! the ledger has archived their blocks, which is after they are registered here.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use benmo_paxos::Height;

use crate::id_filter::IdFilter;
use crate::storage::{corrupted, StorageError};

/// Key prefix of a run's size.
pub(crate) const RUN_META: u8 = b'r';
/// Key prefix of a run's chunks.
pub(crate) const RUN_CHUNK: u8 = b'k';
/// Key prefix of a merge in progress: `g` + merged run (u64 BE) holds its sources (u64 BE each).
pub(crate) const MERGE_MARKER: u8 = b'g';
/// Entries per chunk (5 KiB): a lookup reads one chunk per run.
const CHUNK_ENTRIES: usize = 256;
/// Runs below this many entries are tier 0; each tier above holds runs [`FANOUT`] times bigger.
const TIER_BASE: u64 = 64;
/// How many runs of one tier wait before they are merged.
const FANOUT: usize = 8;
/// Chunks per sled batch when a merge writes its run (320 KiB), and removals per batch when it
/// removes its sources.
const CHUNKS_PER_BATCH: usize = 64;
const REMOVALS_PER_BATCH: usize = 1_024;

/// Where a transfer was first ordered. The id itself is in the block; an entry holds only a 64-bit
/// hash of it, so a reader checks the block's entry and reads on past another id with that hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct IndexEntry {
    /// [`id_hash`] of the id.
    pub hash: u64,
    /// The block.
    pub height: Height,
    /// The transfer's position in its block.
    pub entry: u32,
}

/// The bytes of one [`IndexEntry`]: hash (u64 BE), height (u64 BE), position (u32 BE).
pub(crate) const INDEX_ENTRY_BYTES: usize = 20;

impl IndexEntry {
    /// The entry of `id`, ordered at `height` as the block's `entry`th transfer.
    pub(crate) fn new(id: &str, height: Height, entry: u32) -> IndexEntry {
        IndexEntry {
            hash: id_hash(id),
            height,
            entry,
        }
    }

    fn encode_into(&self, bytes: &mut Vec<u8>) {
        bytes.extend_from_slice(&self.hash.to_be_bytes());
        bytes.extend_from_slice(&self.height.to_be_bytes());
        bytes.extend_from_slice(&self.entry.to_be_bytes());
    }
}

/// Reads entries written by [`IndexEntry::encode_into`], one after the other.
pub(crate) fn decode_entries(key: &[u8], bytes: &[u8]) -> Result<Vec<IndexEntry>, StorageError> {
    if bytes.len() % INDEX_ENTRY_BYTES != 0 {
        return Err(corrupted(key, "a truncated index entry"));
    }
    Ok(bytes
        .chunks_exact(INDEX_ENTRY_BYTES)
        .map(|entry| IndexEntry {
            hash: u64::from_be_bytes(entry[..8].try_into().expect("8 bytes")),
            height: u64::from_be_bytes(entry[8..16].try_into().expect("8 bytes")),
            entry: u32::from_be_bytes(entry[16..].try_into().expect("4 bytes")),
        })
        .collect())
}

/// The 64-bit hash naming a transfer id in the index and its filter: bytes 4..12 of its SHA-256
/// (as every earlier layout of the index had it, so old entries move over unchanged).
pub(crate) fn id_hash(id: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    u64::from_be_bytes(digest[4..12].try_into().expect("8 bytes"))
}

fn meta_key(run: u64) -> Vec<u8> {
    let mut key = vec![RUN_META];
    key.extend_from_slice(&run.to_be_bytes());
    key
}

fn chunk_prefix(run: u64) -> Vec<u8> {
    let mut key = vec![RUN_CHUNK];
    key.extend_from_slice(&run.to_be_bytes());
    key
}

fn chunk_key(run: u64, first_hash: u64) -> Vec<u8> {
    let mut key = chunk_prefix(run);
    key.extend_from_slice(&first_hash.to_be_bytes());
    key
}

/// Which tier a run of `entries` belongs to.
fn tier(entries: u64) -> u32 {
    let mut tier = 0;
    let mut bound = TIER_BASE;
    while entries >= bound {
        tier += 1;
        bound = bound.saturating_mul(FANOUT as u64);
    }
    tier
}

/// A run staged into a sled batch, to [`DedupIndex::register`] once the batch is applied.
#[must_use = "a staged run must be registered once its batch is applied"]
#[derive(Debug)]
pub(crate) struct StagedRun {
    run: u64,
    entries: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct DedupIndex {
    tree: sled::Tree,
    /// Every run in sled: its number and how many entries it holds.
    runs: RwLock<BTreeMap<u64, u64>>,
    /// Held for reading while runs are read, for writing while a merge swaps runs in sled.
    swap: RwLock<()>,
    /// The runs being merged: no two merges pick the same run.
    merging: Mutex<HashSet<u64>>,
    /// Merges a crash cut short (merged run, sources), finished by the next merge.
    interrupted: Mutex<Vec<(u64, Vec<u64>)>>,
    next_run: AtomicU64,
}

impl DedupIndex {
    /// The index stored in `tree`.
    pub(crate) fn open(tree: sled::Tree) -> Result<DedupIndex, StorageError> {
        // A merge a crash cut short is finished by the next merge (lookups never read its unused
        // chunks); no new run may take its merged run's number meanwhile.
        let mut interrupted = Vec::new();
        for item in tree.scan_prefix([MERGE_MARKER]) {
            let (key, sources) = item?;
            interrupted.push(decode_marker(&key, &sources)?);
        }
        let mut runs = BTreeMap::new();
        for item in tree.scan_prefix([RUN_META]) {
            let (key, value) = item?;
            let run = key
                .get(1..)
                .and_then(|run| <[u8; 8]>::try_from(run).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupted(&key, "a run number is 8 bytes"))?;
            let entries = <[u8; 8]>::try_from(&value[..])
                .map(u64::from_be_bytes)
                .map_err(|_| corrupted(&key, "a run's size is 8 bytes"))?;
            runs.insert(run, entries);
        }
        let next_run = runs.keys().next_back().copied().unwrap_or(0).max(
            interrupted
                .iter()
                .map(|(merged, _)| *merged)
                .max()
                .unwrap_or(0),
        ) + 1;
        Ok(DedupIndex {
            tree,
            runs: RwLock::new(runs),
            swap: RwLock::new(()),
            merging: Mutex::new(HashSet::new()),
            interrupted: Mutex::new(interrupted),
            next_run: AtomicU64::new(next_run),
        })
    }

    /// Adds `entries` to `batch` as a new run. Once the batch is applied, the run must be handed
    /// to [`DedupIndex::register`].
    pub(crate) fn stage(
        &self,
        batch: &mut sled::Batch,
        mut entries: Vec<IndexEntry>,
    ) -> Option<StagedRun> {
        if entries.is_empty() {
            return None;
        }
        entries.sort_unstable();
        entries.dedup();
        let run = self.next_run.fetch_add(1, Ordering::Relaxed);
        write_run(batch, run, &entries);
        Some(StagedRun {
            run,
            entries: entries.len() as u64,
        })
    }

    /// Makes a run whose batch is applied visible to lookups; says whether a merge is due.
    pub(crate) fn register(&self, staged: StagedRun) -> bool {
        let mut runs = self.runs.write().expect("not poisoned");
        runs.insert(staged.run, staged.entries);
        // Due even if some of those runs are being merged: a thread woken for nothing waits again.
        pick(&runs, &HashSet::new()).is_some()
    }

    /// Every entry whose hash is `hash`, in the order their transfers were ordered.
    pub(crate) fn candidates(&self, hash: u64) -> Result<Vec<IndexEntry>, StorageError> {
        let _swap = self.swap.read().expect("not poisoned");
        let runs: Vec<u64> = self
            .runs
            .read()
            .expect("not poisoned")
            .keys()
            .copied()
            .collect();
        let mut found = Vec::new();
        for run in runs {
            // The chunk that would hold `hash`: the last one starting at or below it (a run never
            // splits equal hashes between chunks).
            let chunk = self
                .tree
                .range(chunk_key(run, 0)..=chunk_key(run, hash))
                .next_back();
            if let Some(item) = chunk {
                let (key, bytes) = item?;
                found.extend(
                    decode_entries(&key, &bytes)?
                        .into_iter()
                        .filter(|entry| entry.hash == hash),
                );
            }
        }
        found.sort_unstable_by_key(|entry| (entry.height, entry.entry));
        found.dedup();
        Ok(found)
    }

    /// How many entries the index holds.
    pub(crate) fn len(&self) -> u64 {
        self.runs.read().expect("not poisoned").values().sum()
    }

    /// How many runs the index holds.
    #[cfg(test)]
    pub(crate) fn runs(&self) -> usize {
        self.runs.read().expect("not poisoned").len()
    }

    /// Merges one group of runs that is due, if any; says whether it merged.
    /// Several may run at once, on different runs: a long merge of big runs does not hold back
    /// the small ones.
    pub(crate) fn merge_once(&self) -> Result<bool, StorageError> {
        self.finish_interrupted_merges()?;
        let sources = {
            let mut merging = self.merging.lock().expect("not poisoned");
            let Some(sources) = pick(&self.runs.read().expect("not poisoned"), &merging) else {
                return Ok(false);
            };
            merging.extend(&sources);
            sources
        };
        let merged = self.merge(&sources);
        let mut merging = self.merging.lock().expect("not poisoned");
        for run in &sources {
            merging.remove(run);
        }
        merged.map(|()| true)
    }

    fn merge(&self, sources: &[u64]) -> Result<(), StorageError> {
        let merged = self.next_run.fetch_add(1, Ordering::Relaxed);
        self.tree.insert(marker_key(merged), encode_runs(sources))?;
        // Runs never change, and only this merge removes these: they are read without `swap`.
        let mut cursors = sources
            .iter()
            .map(|&run| RunCursor::new(&self.tree, run))
            .collect::<Vec<_>>();
        let mut heads = BinaryHeap::new();
        for (source, cursor) in cursors.iter_mut().enumerate() {
            if let Some(entry) = cursor.next()? {
                heads.push(Reverse((entry, source)));
            }
        }
        let mut chunks = ChunkBuilder::new(merged);
        let mut batch = sled::Batch::default();
        let mut batched = 0;
        let mut last = None;
        while let Some(Reverse((entry, source))) = heads.pop() {
            if let Some(next) = cursors[source].next()? {
                heads.push(Reverse((next, source)));
            }
            if last == Some(entry) {
                continue;
            }
            last = Some(entry);
            if let Some((key, bytes)) = chunks.push(entry) {
                batch.insert(key, bytes);
                batched += 1;
                if batched == CHUNKS_PER_BATCH {
                    self.tree.apply_batch(std::mem::take(&mut batch))?;
                    batched = 0;
                }
            }
        }
        let entries = chunks.entries;
        if let Some((key, bytes)) = chunks.finish() {
            batch.insert(key, bytes);
        }
        self.tree.apply_batch(batch)?;
        {
            let _swap = self.swap.write().expect("not poisoned");
            let mut switch = sled::Batch::default();
            switch.insert(meta_key(merged), entries.to_be_bytes().to_vec());
            for &run in sources {
                switch.remove(meta_key(run));
            }
            self.tree.apply_batch(switch)?;
            let mut runs = self.runs.write().expect("not poisoned");
            for run in sources {
                runs.remove(run);
            }
            runs.insert(merged, entries);
        }
        for &run in sources {
            remove_chunks(&self.tree, run)?;
        }
        self.tree.remove(marker_key(merged))?;
        Ok(())
    }

    /// Removes the unused chunks of the merges a crash cut short (found when the index was
    /// opened): the merged run's if the switch had not been made, the sources' if it had. Runs
    /// of merges begun since are never touched.
    fn finish_interrupted_merges(&self) -> Result<(), StorageError> {
        let interrupted = std::mem::take(&mut *self.interrupted.lock().expect("not poisoned"));
        for (merged, sources) in interrupted {
            if self.tree.get(meta_key(merged))?.is_some() {
                for run in sources {
                    remove_chunks(&self.tree, run)?;
                }
            } else {
                remove_chunks(&self.tree, merged)?;
            }
            self.tree.remove(marker_key(merged))?;
        }
        Ok(())
    }

    /// Adds every id in the index to `filter`; stops early, returning false, once `wanted` says
    /// nobody needs the result. It holds no lock while it reads (a whole run can take a while):
    /// a run merged away under it, even half read, left its ids in a newer run, which is listed
    /// from the switch on and read in turn.
    pub(crate) fn fill(
        &self,
        filter: &IdFilter,
        wanted: impl Fn() -> bool,
    ) -> Result<bool, StorageError> {
        let mut read = HashSet::new();
        loop {
            let next = self
                .runs
                .read()
                .expect("not poisoned")
                .keys()
                .copied()
                .find(|run| !read.contains(run));
            let Some(run) = next else {
                return Ok(true);
            };
            for item in self.tree.scan_prefix(chunk_prefix(run)) {
                if !wanted() {
                    return Ok(false);
                }
                let (key, bytes) = item?;
                for entry in decode_entries(&key, &bytes)? {
                    filter.insert(entry.hash);
                }
            }
            read.insert(run);
        }
    }
}

/// The runs to merge next: every run of the lowest tier that holds [`FANOUT`] of them, leaving
/// out runs another merge is merging.
fn pick(runs: &BTreeMap<u64, u64>, merging: &HashSet<u64>) -> Option<Vec<u64>> {
    let mut tiers: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (&run, &entries) in runs {
        if !merging.contains(&run) {
            tiers.entry(tier(entries)).or_default().push(run);
        }
    }
    tiers.into_values().find(|runs| runs.len() >= FANOUT)
}

/// Cuts a run's sorted, distinct entries into chunks, never splitting equal hashes (so a lookup
/// reads one chunk per run).
struct ChunkBuilder {
    run: u64,
    bytes: Vec<u8>,
    first: Option<IndexEntry>,
    last: Option<IndexEntry>,
    /// Entries pushed so far.
    entries: u64,
}

impl ChunkBuilder {
    fn new(run: u64) -> ChunkBuilder {
        ChunkBuilder {
            run,
            bytes: Vec::with_capacity(CHUNK_ENTRIES * INDEX_ENTRY_BYTES),
            first: None,
            last: None,
            entries: 0,
        }
    }

    /// Adds the next entry; returns the chunk it completes (key and value) if it starts a new one.
    fn push(&mut self, entry: IndexEntry) -> Option<(Vec<u8>, Vec<u8>)> {
        let full = self.bytes.len() >= CHUNK_ENTRIES * INDEX_ENTRY_BYTES
            && self.last.is_some_and(|last| last.hash != entry.hash);
        let done = if full { self.take() } else { None };
        self.first.get_or_insert(entry);
        self.last = Some(entry);
        entry.encode_into(&mut self.bytes);
        self.entries += 1;
        done
    }

    /// The last chunk, if any entries wait.
    fn finish(mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        self.take()
    }

    fn take(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        let first = self.first.take()?;
        let bytes = std::mem::replace(
            &mut self.bytes,
            Vec::with_capacity(CHUNK_ENTRIES * INDEX_ENTRY_BYTES),
        );
        Some((chunk_key(self.run, first.hash), bytes))
    }
}

/// Writes sorted, distinct `entries` as run `run`: its chunks and its size.
fn write_run(batch: &mut sled::Batch, run: u64, entries: &[IndexEntry]) {
    let mut chunks = ChunkBuilder::new(run);
    for &entry in entries {
        if let Some((key, bytes)) = chunks.push(entry) {
            batch.insert(key, bytes);
        }
    }
    if let Some((key, bytes)) = chunks.finish() {
        batch.insert(key, bytes);
    }
    batch.insert(meta_key(run), (entries.len() as u64).to_be_bytes().to_vec());
}

/// Reads one run's entries in order, a chunk at a time.
struct RunCursor {
    chunks: sled::Iter,
    chunk: std::vec::IntoIter<IndexEntry>,
}

impl RunCursor {
    fn new(tree: &sled::Tree, run: u64) -> RunCursor {
        RunCursor {
            chunks: tree.scan_prefix(chunk_prefix(run)),
            chunk: Vec::new().into_iter(),
        }
    }

    fn next(&mut self) -> Result<Option<IndexEntry>, StorageError> {
        loop {
            if let Some(entry) = self.chunk.next() {
                return Ok(Some(entry));
            }
            match self.chunks.next() {
                None => return Ok(None),
                Some(item) => {
                    let (key, bytes) = item?;
                    self.chunk = decode_entries(&key, &bytes)?.into_iter();
                }
            }
        }
    }
}

/// Removes every chunk of `run`, a batch at a time.
fn remove_chunks(tree: &sled::Tree, run: u64) -> Result<(), StorageError> {
    loop {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for key in tree
            .scan_prefix(chunk_prefix(run))
            .keys()
            .take(REMOVALS_PER_BATCH)
        {
            batch.remove(key?);
            removed += 1;
        }
        if removed == 0 {
            return Ok(());
        }
        tree.apply_batch(batch)?;
    }
}

fn marker_key(merged: u64) -> Vec<u8> {
    let mut key = vec![MERGE_MARKER];
    key.extend_from_slice(&merged.to_be_bytes());
    key
}

fn encode_runs(runs: &[u64]) -> Vec<u8> {
    runs.iter().copied().flat_map(u64::to_be_bytes).collect()
}

/// Reads a merge marker: the merged run, and its sources.
fn decode_marker(key: &[u8], sources: &[u8]) -> Result<(u64, Vec<u64>), StorageError> {
    let merged = key
        .get(1..)
        .and_then(|merged| <[u8; 8]>::try_from(merged).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupted(key, "a merged run's number is 8 bytes"))?;
    if sources.len() % 8 != 0 {
        return Err(corrupted(key, "a merge's sources are 8 bytes each"));
    }
    let sources = sources
        .chunks_exact(8)
        .map(|run| u64::from_be_bytes(run.try_into().expect("8 bytes")))
        .collect();
    Ok((merged, sources))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> (tempfile::TempDir, DedupIndex) {
        let directory = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(directory.path())
            .temporary(true)
            .open()
            .unwrap();
        let index = DedupIndex::open(db.open_tree("index").unwrap()).unwrap();
        (directory, index)
    }

    fn add(index: &DedupIndex, entries: Vec<IndexEntry>) -> bool {
        let mut batch = sled::Batch::default();
        let staged = index.stage(&mut batch, entries).unwrap();
        index.tree.apply_batch(batch).unwrap();
        index.register(staged)
    }

    fn entry(hash: u64, height: Height) -> IndexEntry {
        IndexEntry {
            hash,
            height,
            entry: (hash % 7) as u32,
        }
    }

    #[test]
    fn tiers_grow_by_the_fanout() {
        let f = FANOUT as u64;
        assert_eq!(tier(0), 0);
        assert_eq!(tier(TIER_BASE - 1), 0);
        assert_eq!(tier(TIER_BASE), 1);
        assert_eq!(tier(TIER_BASE * f - 1), 1);
        assert_eq!(tier(TIER_BASE * f), 2);
        assert_eq!(tier(TIER_BASE * f.pow(5)), 6);
    }

    #[test]
    fn merges_keep_every_entry_findable_and_bound_the_runs() {
        let (_directory, index) = index();
        // Distinct pseudo-random hashes, and one hash that every block repeats (ids sharing it).
        let hash = |n: u64| n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut all = Vec::new();
        for height in 1..=400u64 {
            let entries: Vec<IndexEntry> = (0..(height % 90) + 1)
                .map(|n| match n {
                    0 => entry(42, height),
                    n => entry(hash(height * 1_000 + n), height),
                })
                .collect();
            all.extend(entries.iter().copied());
            if add(&index, entries) {
                while index.merge_once().unwrap() {}
            }
        }
        assert_eq!(index.len(), all.len() as u64);
        // At most FANOUT - 1 runs wait in each tier.
        let tiers = tier(all.len() as u64) as usize + 1;
        assert!(
            index.runs() <= tiers * (FANOUT - 1),
            "{} runs",
            index.runs()
        );
        for wanted in &all {
            let found = index.candidates(wanted.hash).unwrap();
            assert!(found.contains(wanted), "{wanted:?} lost; found {found:?}");
        }
        assert_eq!(index.candidates(42).unwrap().len(), 400);
        assert!(index.candidates(12_345).unwrap().is_empty());
        let filter = IdFilter::new();
        assert!(index.fill(&filter, || true).unwrap());
        filter.mark_complete();
        assert!(all.iter().all(|entry| filter.may_contain(entry.hash)));
    }

    #[test]
    fn equal_hashes_are_found_across_chunk_boundaries() {
        let (_directory, index) = index();
        // More entries with one hash than a chunk holds, between others.
        let mut entries: Vec<IndexEntry> =
            (0..CHUNK_ENTRIES as u64 - 3).map(|n| entry(n, 1)).collect();
        entries.extend((0..CHUNK_ENTRIES as u64 + 10).map(|height| entry(5_000, height + 2)));
        entries.extend((0..50).map(|n| entry(10_000 + n, 1)));
        add(&index, entries);
        let found = index.candidates(5_000).unwrap();
        assert_eq!(found.len(), CHUNK_ENTRIES + 10);
        assert!(found.windows(2).all(|pair| pair[0].height < pair[1].height));
        assert_eq!(index.candidates(10_049).unwrap().len(), 1);
    }

    fn chunk_keys(tree: &sled::Tree, run: u64) -> usize {
        tree.scan_prefix(chunk_prefix(run)).count()
    }

    fn run_numbers(index: &DedupIndex) -> Vec<u64> {
        index.runs.read().unwrap().keys().copied().collect()
    }

    /// Four runs of one entry each (a tier-0 merge is due); returns the entries.
    /// Just enough one-entry runs for a merge.
    fn one_entry_runs_to_merge(index: &DedupIndex) -> Vec<IndexEntry> {
        let entries: Vec<IndexEntry> = (1..=FANOUT as u64)
            .map(|height| entry(height * 11, height))
            .collect();
        for &one in &entries {
            add(index, vec![one]);
        }
        entries
    }

    fn assert_each_found(index: &DedupIndex, entries: &[IndexEntry]) {
        for wanted in entries {
            assert_eq!(index.candidates(wanted.hash).unwrap(), vec![*wanted]);
        }
    }

    #[test]
    fn a_merge_cut_short_before_its_switch_is_undone_by_the_next_merge() {
        let (_directory, index) = index();
        let entries = one_entry_runs_to_merge(&index);
        let sources = run_numbers(&index);
        // The merged run's chunks are written, its size is not: the crash came before the switch.
        let merged = 99;
        let mut batch = sled::Batch::default();
        write_run(&mut batch, merged, &entries);
        batch.remove(meta_key(merged));
        batch.insert(marker_key(merged), encode_runs(&sources));
        index.tree.apply_batch(batch).unwrap();
        let reopened = DedupIndex::open(index.tree.clone()).unwrap();
        assert_eq!(run_numbers(&reopened), sources);
        // Before the next merge finishes the interrupted one, lookups ignore its chunks...
        assert_each_found(&reopened, &entries);
        let mut batch = sled::Batch::default();
        let staged = reopened.stage(&mut batch, vec![entry(5, 5)]).unwrap();
        assert!(staged.run > merged, "run {} reuses a number", staged.run);
        // ... and after it (which merges the sources too), those chunks are gone.
        assert!(reopened.merge_once().unwrap());
        assert_eq!(chunk_keys(&reopened.tree, merged), 0);
        assert!(reopened.tree.scan_prefix([MERGE_MARKER]).next().is_none());
        assert_each_found(&reopened, &entries);
    }

    #[test]
    fn a_merge_cut_short_after_its_switch_is_finished_by_the_next_merge() {
        let (_directory, index) = index();
        let entries = one_entry_runs_to_merge(&index);
        let old_chunks: Vec<_> = index
            .tree
            .scan_prefix([RUN_CHUNK])
            .map(|item| item.unwrap())
            .collect();
        let sources = run_numbers(&index);
        assert!(index.merge_once().unwrap());
        let merged = run_numbers(&index)[0];
        // The switch was made; the crash came before the sources' chunks were all removed.
        let mut batch = sled::Batch::default();
        for (key, value) in old_chunks {
            batch.insert(key, value);
        }
        batch.insert(marker_key(merged), encode_runs(&sources));
        index.tree.apply_batch(batch).unwrap();
        let reopened = DedupIndex::open(index.tree.clone()).unwrap();
        assert_eq!(run_numbers(&reopened), vec![merged]);
        assert_each_found(&reopened, &entries);
        assert!(!reopened.merge_once().unwrap());
        for run in sources {
            assert_eq!(chunk_keys(&reopened.tree, run), 0, "run {run}");
        }
        assert!(reopened.tree.scan_prefix([MERGE_MARKER]).next().is_none());
        assert_each_found(&reopened, &entries);
    }

    #[test]
    fn a_merge_writes_chunks_in_many_batches_and_keeps_every_entry() {
        let (_directory, index) = index();
        // Enough runs for a merge, each more chunks than one batch of the merge holds.
        let per_run = (CHUNKS_PER_BATCH * CHUNK_ENTRIES) as u64 + 100;
        let runs = FANOUT as u64;
        let mut all = Vec::new();
        for run in 0..runs {
            let entries: Vec<IndexEntry> = (0..per_run)
                .map(|n| {
                    entry(
                        (n * runs + run).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        run + 1,
                    )
                })
                .collect();
            all.extend(entries.iter().copied());
            add(&index, entries);
        }
        assert!(index.merge_once().unwrap());
        assert_eq!((index.runs(), index.len()), (1, all.len() as u64));
        let merged = run_numbers(&index)[0];
        let mut cursor = RunCursor::new(&index.tree, merged);
        let mut merged_entries = Vec::new();
        while let Some(entry) = cursor.next().unwrap() {
            merged_entries.push(entry);
        }
        all.sort_unstable();
        assert_eq!(merged_entries, all);
        assert!(index.tree.scan_prefix([MERGE_MARKER]).next().is_none());
        assert_eq!(
            index.tree.scan_prefix([RUN_CHUNK]).count(),
            chunk_keys(&index.tree, merged)
        );
    }

    #[test]
    fn a_merge_picks_the_lowest_due_tier_that_no_other_merge_holds() {
        let f = FANOUT as u64;
        let (tier_0, tier_1, tier_2) = (TIER_BASE - 1, TIER_BASE, TIER_BASE * f);
        assert_eq!((tier(tier_0), tier(tier_1), tier(tier_2)), (0, 1, 2));
        // A merge's worth of runs in tier 0 (1..=f), another in tier 1, and two in tier 2.
        let runs: BTreeMap<u64, u64> = (1..=2 * f + 2)
            .map(|run| {
                let size = match (run - 1) / f {
                    0 => tier_0,
                    1 => tier_1,
                    _ => tier_2,
                };
                (run, size)
            })
            .collect();
        let first: Vec<u64> = (1..=f).collect();
        let second: Vec<u64> = (f + 1..=2 * f).collect();
        assert_eq!(pick(&runs, &HashSet::new()), Some(first.clone()));
        let busy: HashSet<u64> = first.iter().copied().collect();
        assert_eq!(pick(&runs, &busy), Some(second));
        let busy: HashSet<u64> = (1..=f + 1).collect();
        assert_eq!(pick(&runs, &busy), None);
    }

    #[test]
    fn merges_at_once_on_two_threads_keep_every_entry() {
        let (_directory, index) = index();
        let mut all = Vec::new();
        // A merge's worth of small runs and one of bigger ones: two merges can run at once.
        let f = FANOUT as u64;
        for (run, size) in (0..2 * f).map(|run| (run, if run < f { 10 } else { TIER_BASE })) {
            let entries: Vec<IndexEntry> = (0..size)
                .map(|n| {
                    entry(
                        (run * 1_000 + n).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        run + 1,
                    )
                })
                .collect();
            all.extend(entries.iter().copied());
            let mut batch = sled::Batch::default();
            let staged = index.stage(&mut batch, entries).unwrap();
            index.tree.apply_batch(batch).unwrap();
            index.register(staged);
        }
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| while index.merge_once().unwrap() {});
            }
        });
        while index.merge_once().unwrap() {}
        assert_eq!(index.len(), all.len() as u64);
        assert!(index.runs() <= 2, "{} runs", index.runs());
        for wanted in &all {
            assert_eq!(index.candidates(wanted.hash).unwrap(), vec![*wanted]);
        }
        assert!(index.merging.lock().unwrap().is_empty());
    }

    #[test]
    fn runs_survive_a_reopen() {
        let directory = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(directory.path()).open().unwrap();
        let tree = db.open_tree("index").unwrap();
        let index = DedupIndex::open(tree.clone()).unwrap();
        for height in 1..=10 {
            add(&index, vec![entry(height, height)]);
        }
        while index.merge_once().unwrap() {}
        let runs = index.runs();
        drop(index);
        let reopened = DedupIndex::open(tree).unwrap();
        assert_eq!((reopened.runs(), reopened.len()), (runs, 10));
        assert_eq!(reopened.candidates(3).unwrap(), vec![entry(3, 3)]);
        // New runs never reuse a number.
        let mut batch = sled::Batch::default();
        let staged = reopened.stage(&mut batch, vec![entry(99, 11)]).unwrap();
        assert!(!reopened.runs.read().unwrap().contains_key(&staged.run));
    }
}
