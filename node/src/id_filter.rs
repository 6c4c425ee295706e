//! A Bloom filter over the ids in the dedup index, so that looking up an id the index does not
//! hold costs no read of sled.
//!
//! Every new transfer is such an id, and each is looked up at least twice on every node (when it is
//! proposed and when its block is decided). A sled read costs several microseconds of page-cache
//! traversal on the core's thread; a filter probe reads one cache line. Measured on a 5-node
//! cluster at 64 clients, those reads were 12–23% of each node's CPU.
//!
//! The filter lives only in memory. It is built from the index itself, by a thread of its own that
//! the node starts once it serves (so a start is no slower); until that scan ends the filter is
//! *incomplete* and answers "maybe" for everything, so a lookup falls back to sled. Every id indexed while the node runs is added to it
//! before its run is written, so once the scan is done a "no" is always true: the scan covers
//! what was indexed before it began, and the writer covers the rest.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The filter holds 2^27 bits (16 MiB).
const BITS_LOG2: u32 = 27;
/// An id's bits all fall in one block of 2^9 bits, one cache line: a probe costs one cache miss
/// (and one page walk), not one per bit. With four scattered bits the probe was ~1.5% of the
/// cluster's CPU samples at 64 clients.
const BLOCK_BITS_LOG2: u32 = 9;
/// Bits set per id. With 2^27 bits in blocks of 512 and 4 probes, a lookup of an absent id still
/// reads sled for about 1 in 460,000 ids at 1M indexed ids and 1 in 200 at 10M; at 100M most
/// absent ids do, as they did before the filter.
const PROBES: u64 = 4;

/// See the module documentation.
pub struct IdFilter {
    words: Box<[AtomicU64]>,
    complete: AtomicBool,
}

impl std::fmt::Debug for IdFilter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("IdFilter")
            .field("complete", &self.is_complete())
            .finish_non_exhaustive()
    }
}

impl Default for IdFilter {
    fn default() -> Self {
        IdFilter::new()
    }
}

impl IdFilter {
    /// An empty, incomplete filter: it answers "maybe" until [`IdFilter::mark_complete`].
    pub fn new() -> IdFilter {
        let words = (0..1usize << (BITS_LOG2 - 6))
            .map(|_| AtomicU64::new(0))
            .collect();
        IdFilter {
            words,
            complete: AtomicBool::new(false),
        }
    }

    /// Adds the id whose 64-bit index hash is `hash`.
    pub fn insert(&self, hash: u64) {
        for bit in probes(hash) {
            self.words[(bit >> 6) as usize].fetch_or(1 << (bit & 63), Ordering::Relaxed);
        }
    }

    /// Whether the id whose index hash is `hash` may be indexed: `false` only if the filter is
    /// complete and the id was never added.
    pub fn may_contain(&self, hash: u64) -> bool {
        if !self.complete.load(Ordering::Acquire) {
            return true;
        }
        probes(hash).all(|bit| {
            self.words[(bit >> 6) as usize].load(Ordering::Relaxed) & (1 << (bit & 63)) != 0
        })
    }

    /// Every id indexed before the filter began to take insertions has been added.
    pub fn mark_complete(&self) {
        self.complete.store(true, Ordering::Release);
    }

    /// Whether [`IdFilter::mark_complete`] was called.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }
}

/// The bits an id sets: its index hash (a SHA-256 prefix, so already uniform) picks the block by
/// its top bits, and a second hash of it the bits within the block.
fn probes(hash: u64) -> impl Iterator<Item = u64> {
    let block = hash >> (64 - (BITS_LOG2 - BLOCK_BITS_LOG2));
    let within = mix(hash);
    let mask = (1 << BLOCK_BITS_LOG2) - 1;
    (0..PROBES).map(move |index| {
        (block << BLOCK_BITS_LOG2) | ((within >> (index * u64::from(BLOCK_BITS_LOG2))) & mask)
    })
}

/// SplitMix64's finalizer: a second hash independent enough of the first.
fn mix(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct, well-spread 64-bit values, as SHA-256 prefixes are.
    fn hashes(seed: u64, count: u64) -> impl Iterator<Item = u64> {
        (0..count).map(move |n| mix(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n))
    }

    #[test]
    fn an_incomplete_filter_answers_maybe_for_everything() {
        let filter = IdFilter::new();
        assert!(hashes(1, 1_000).all(|hash| filter.may_contain(hash)));
        filter.mark_complete();
        assert!(hashes(1, 1_000).all(|hash| !filter.may_contain(hash)));
    }

    #[test]
    fn an_added_id_is_always_found_and_absent_ids_rarely_are() {
        let filter = IdFilter::new();
        filter.mark_complete();
        for hash in hashes(2, 200_000) {
            filter.insert(hash);
        }
        assert!(hashes(2, 200_000).all(|hash| filter.may_contain(hash)));
        let false_positives = hashes(3, 200_000)
            .filter(|hash| filter.may_contain(*hash))
            .count();
        // About one in 36 million is expected at this load (200k ids in 2^27 bits).
        assert!(false_positives <= 2, "{false_positives} false positives");
    }

    #[test]
    fn an_ids_bits_share_one_cache_line() {
        for hash in hashes(4, 10_000) {
            let bits: Vec<u64> = probes(hash).collect();
            assert_eq!(bits.len(), PROBES as usize);
            let line = bits[0] >> BLOCK_BITS_LOG2;
            assert!(
                bits.iter().all(|bit| bit >> BLOCK_BITS_LOG2 == line),
                "{bits:?}"
            );
            assert!(bits.iter().all(|bit| *bit < 1 << BITS_LOG2));
        }
        // The lines themselves spread over the whole filter.
        let lines: std::collections::HashSet<u64> = hashes(5, 10_000)
            .map(|hash| probes(hash).next().unwrap() >> BLOCK_BITS_LOG2)
            .collect();
        assert!(lines.len() > 9_500, "{} lines", lines.len());
    }
}
