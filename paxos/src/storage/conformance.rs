//! The conformance suite every [`Storage`] must pass: the in-memory store and the node's sled store
//! run the same checks, so the simulator's disk and the real one cannot drift apart.
//!
//! A store's test module implements [`Harness`] and calls [`run_all`].

use super::{restore, Storage, Write};
use crate::ledger::{Batch, Block, Ledger, Transfer, TransferId};
use crate::types::Ballot;

/// Makes stores for the suite.
pub trait Harness {
    /// The store under test.
    type Store: Storage;

    /// A new, empty store.
    fn create(&mut self) -> Self::Store;

    /// Closes `store` and opens it again from what it made durable, as after a crash.
    fn reopen(&mut self, store: Self::Store) -> Self::Store;
}

/// Runs every check of the suite, each on a fresh store.
pub fn run_all<H: Harness>(harness: &mut H) {
    an_empty_store_holds_nothing(harness);
    the_promise_survives_reopening(harness);
    accepted_values_survive_and_are_dropped_by_blocks(harness);
    blocks_read_back_in_ranges(harness);
    the_pending_log_survives_reopening(harness);
    a_bad_batch_changes_nothing(harness);
    a_reopened_store_restores_the_same_ledger(harness);
    a_store_resumes_from_its_snapshot_and_archives_records(harness);
    a_snapshot_that_does_not_match_the_chain_is_refused(harness);
}

fn transfer(id: &str, from: u32, to: u32, amount: u64) -> Transfer {
    Transfer {
        id: TransferId::new(id).expect("valid id"),
        from,
        to,
        amount,
        signature: None,
    }
}

fn batch(proposer: u32, ids: &[&str]) -> Batch {
    Batch {
        proposer,
        transfers: ids.iter().map(|id| transfer(id, 1, 2, 1)).collect(),
    }
}

/// A chain of `length` blocks after the genesis, each with one transfer.
fn chain(length: u64) -> (Vec<Block>, Ledger) {
    let mut ledger = Ledger::genesis(5, 100);
    let mut blocks = vec![Block::genesis(5, 100)];
    for height in 1..=length {
        let id = format!("t{height}");
        blocks.push(ledger.apply(1, &[transfer(&id, 1 + (height % 5) as u32, 1, 1)]));
    }
    (blocks, ledger)
}

fn write<S: Storage>(store: &mut S, writes: &[Write]) {
    store.write(writes).expect("write succeeds");
}

fn an_empty_store_holds_nothing<H: Harness>(harness: &mut H) {
    let store = harness.create();
    let state = store.acceptor_state().expect("read");
    assert_eq!(state.promised, Ballot::ZERO);
    assert!(state.accepted.is_empty());
    assert!(state.pending.is_empty());
    assert_eq!(store.height().expect("read"), None);
    assert!(store.blocks(0, 10).expect("read").is_empty());
}

fn the_promise_survives_reopening<H: Harness>(harness: &mut H) {
    let mut store = harness.create();
    write(&mut store, &[Write::Promise(Ballot::new(3, 2))]);
    write(&mut store, &[Write::Promise(Ballot::new(4, 1))]);
    let store = harness.reopen(store);
    assert_eq!(
        store.acceptor_state().expect("read").promised,
        Ballot::new(4, 1)
    );
}

fn accepted_values_survive_and_are_dropped_by_blocks<H: Harness>(harness: &mut H) {
    let mut store = harness.create();
    let (blocks, _) = chain(2);
    write(&mut store, &[Write::AppendBlock(blocks[0].clone())]);
    let ballot = Ballot::new(1, 1);
    write(
        &mut store,
        &[
            Write::Promise(ballot),
            Write::Accept {
                slot: 1,
                ballot,
                batch: batch(1, &["old"]),
            },
            Write::Accept {
                slot: 2,
                ballot,
                batch: batch(1, &["b"]),
            },
            Write::Accept {
                slot: 3,
                ballot,
                batch: batch(1, &["c"]),
            },
        ],
    );
    // A later ballot overwrites the value of a slot.
    let later = Ballot::new(2, 3);
    write(
        &mut store,
        &[
            Write::Promise(later),
            Write::Accept {
                slot: 1,
                ballot: later,
                batch: batch(3, &["new"]),
            },
        ],
    );
    let mut store = harness.reopen(store);
    let accepted = store.acceptor_state().expect("read").accepted;
    assert_eq!(accepted.len(), 3);
    assert_eq!(accepted[&1], (later, batch(3, &["new"])));
    assert_eq!(accepted[&3], (ballot, batch(1, &["c"])));

    write(
        &mut store,
        &[
            Write::AppendBlock(blocks[1].clone()),
            Write::AppendBlock(blocks[2].clone()),
        ],
    );
    let mut store = harness.reopen(store);
    let accepted = store.acceptor_state().expect("read").accepted;
    assert_eq!(accepted.keys().copied().collect::<Vec<_>>(), vec![3]);

    // A value accepted and decided within one batch (group commit) leaves nothing behind.
    let (more, _) = chain(4);
    write(
        &mut store,
        &[
            Write::Accept {
                slot: 4,
                ballot: later,
                batch: batch(3, &["d"]),
            },
            Write::AppendBlock(more[3].clone()),
            Write::AppendBlock(more[4].clone()),
        ],
    );
    let store = harness.reopen(store);
    let accepted = store.acceptor_state().expect("read").accepted;
    assert!(accepted.is_empty(), "{accepted:?}");
}

fn blocks_read_back_in_ranges<H: Harness>(harness: &mut H) {
    let mut store = harness.create();
    let (blocks, _) = chain(9);
    let writes: Vec<Write> = blocks.iter().cloned().map(Write::AppendBlock).collect();
    write(&mut store, &writes);
    let store = harness.reopen(store);
    assert_eq!(store.height().expect("read"), Some(9));
    assert_eq!(store.blocks(0, 100).expect("read"), blocks);
    assert_eq!(store.blocks(3, 4).expect("read"), blocks[3..7].to_vec());
    assert_eq!(store.blocks(8, 4).expect("read"), blocks[8..].to_vec());
    assert!(store.blocks(10, 4).expect("read").is_empty());
    assert!(store.blocks(3, 0).expect("read").is_empty());
}

fn the_pending_log_survives_reopening<H: Harness>(harness: &mut H) {
    let mut store = harness.create();
    let a = transfer("a", 1, 2, 5);
    let b = transfer("b", 2, 3, 7);
    write(
        &mut store,
        &[Write::AddPending(a.clone()), Write::AddPending(b.clone())],
    );
    write(&mut store, &[Write::RemovePending(a.id.clone())]);
    let store = harness.reopen(store);
    let pending = store.acceptor_state().expect("read").pending;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[&b.id], b);
}

fn a_bad_batch_changes_nothing<H: Harness>(harness: &mut H) {
    let mut store = harness.create();
    let (blocks, _) = chain(3);
    write(&mut store, &[Write::AppendBlock(blocks[0].clone())]);
    write(&mut store, &[Write::Promise(Ballot::new(5, 5))]);
    // A valid write followed by a gap in the chain: the whole batch must be refused.
    let refused = store.write(&[
        Write::AddPending(transfer("x", 1, 2, 1)),
        Write::AppendBlock(blocks[2].clone()),
    ]);
    assert!(refused.is_err(), "a block out of order must be refused");
    let refused = store.write(&[Write::Promise(Ballot::new(4, 1))]);
    assert!(refused.is_err(), "a promise must never go down");
    let store = harness.reopen(store);
    assert_eq!(store.height().expect("read"), Some(0));
    let state = store.acceptor_state().expect("read");
    assert!(state.pending.is_empty());
    assert_eq!(state.promised, Ballot::new(5, 5));
}

fn a_reopened_store_restores_the_same_ledger<H: Harness>(harness: &mut H) {
    let mut store = harness.create();
    let (blocks, ledger) = chain(2_100);
    for chunk in blocks.chunks(500) {
        let writes: Vec<Write> = chunk.iter().cloned().map(Write::AppendBlock).collect();
        write(&mut store, &writes);
    }
    let store = harness.reopen(store);
    let restored = restore(&store, 5, 100).expect("restore");
    assert_eq!(restored.ledger.height(), 2_100);
    assert_eq!(restored.ledger.head_hash(), ledger.head_hash());
    assert_eq!(restored.ledger.balances(), ledger.balances());
    assert!(
        restore(&store, 3, 100).is_err(),
        "another cluster's genesis must be refused"
    );
}

fn a_store_resumes_from_its_snapshot_and_archives_records<H: Harness>(harness: &mut H) {
    let mut store = harness.create();
    let mut ledger = Ledger::genesis(5, 100);
    write(&mut store, &[Write::AppendBlock(Block::genesis(5, 100))]);
    for height in 1..=300u64 {
        let id = format!("t{height}");
        let block = ledger.apply(1, &[transfer(&id, 1 + (height % 5) as u32, 1, 1)]);
        write(
            &mut store,
            &[
                Write::AppendBlock(block),
                Write::Snapshot(ledger.snapshot()),
            ],
        );
    }
    let store = harness.reopen(store);
    assert_eq!(store.snapshot().expect("read"), Some(ledger.snapshot()));
    let restored = restore(&store, 5, 100).expect("restore");
    assert_eq!(restored.ledger.height(), 300);
    assert_eq!(restored.ledger.head_hash(), ledger.head_hash());
    assert_eq!(restored.ledger.balances(), ledger.balances());
    assert_eq!(restored.ledger.transfer_count(), 300);
    assert_eq!(
        restored.ledger.records_in_memory(),
        0,
        "a resumed ledger keeps no record in memory"
    );
    let id = TransferId::new("t17").expect("valid id");
    let record = restored.ledger.lookup(&id).expect("the archive has t17");
    assert_eq!(record, ledger.lookup(&id).expect("the ledger has t17"));
    assert_eq!(record.height, 17);
    assert!(restored
        .ledger
        .lookup(&TransferId::new("never").expect("valid id"))
        .is_none());
}

fn a_snapshot_that_does_not_match_the_chain_is_refused<H: Harness>(harness: &mut H) {
    let mut store = harness.create();
    let (blocks, ledger) = chain(3);
    let writes: Vec<Write> = blocks.iter().cloned().map(Write::AppendBlock).collect();
    write(&mut store, &writes);
    let mut wrong = ledger.snapshot();
    wrong.balances[0] += 1;
    write(&mut store, &[Write::Snapshot(wrong)]);
    let store = harness.reopen(store);
    assert!(
        restore(&store, 5, 100).is_err(),
        "balances that do not sum to the genesis total must be refused"
    );
}
