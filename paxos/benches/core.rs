//! Benchmarks of the consensus core's CPU cost, with no network or disk: applying and hashing a
//! block, and committing transfers through a three-node cluster whose messages are delivered in
//! memory. `cargo bench -p benmo-paxos`.

use std::collections::VecDeque;

use benmo_paxos::storage::AcceptorState;
use benmo_paxos::{
    Block, Config, Input, Ledger, Message, NodeId, Replica, Restored, RoleName, Transfer,
    TransferId,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn transfers(count: usize, accounts: usize, prefix: &str) -> Vec<Transfer> {
    (0..count)
        .map(|index| Transfer {
            id: TransferId::new(format!("{prefix}-{index}")).unwrap(),
            from: (index % accounts) as u32 + 1,
            to: ((index + 1) % accounts) as u32 + 1,
            amount: 1,
            signature: None,
        })
        .collect()
}

fn ledger(criterion: &mut Criterion) {
    let batch = transfers(1_024, 5, "t");
    let mut group = criterion.benchmark_group("ledger");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("apply a block of 1024 transfers", |bencher| {
        bencher.iter_batched(
            || Ledger::genesis(5, 1_000_000),
            |mut ledger| ledger.apply(1, &batch),
            BatchSize::SmallInput,
        )
    });
    let block = Ledger::genesis(5, 1_000_000).apply(1, &batch);
    group.bench_function("hash a block of 1024 transfers", |bencher| {
        bencher.iter(|| Block::compute_hash(block.height, &block.prev_hash, 1, &block.entries))
    });
    group.finish();
}

/// Three replicas whose messages are delivered at once, in order, with no loss.
struct Cluster {
    replicas: Vec<Replica>,
    queue: VecDeque<(NodeId, NodeId, Message)>,
}

impl Cluster {
    fn new() -> Cluster {
        let replicas = (1..=3)
            .map(|id| {
                let restored = Restored {
                    acceptor: AcceptorState::default(),
                    ledger: Ledger::genesis(3, 1_000_000),
                };
                let mut config = Config::new(id, 3);
                config.genesis_balance = 1_000_000;
                Replica::new(config, restored, id as u64).unwrap()
            })
            .collect();
        let mut cluster = Cluster {
            replicas,
            queue: VecDeque::new(),
        };
        while !cluster
            .replicas
            .iter()
            .any(|replica| replica.role() == RoleName::Leader)
        {
            for id in 1..=3 {
                cluster.step(id, Input::Tick);
            }
            cluster.deliver();
        }
        cluster
    }

    fn leader(&self) -> NodeId {
        self.replicas
            .iter()
            .find(|replica| replica.role() == RoleName::Leader)
            .map(|replica| replica.config().id)
            .unwrap()
    }

    fn step(&mut self, id: NodeId, input: Input) {
        let ready = self.replicas[id as usize - 1].step(input);
        for outgoing in ready
            .messages
            .into_iter()
            .chain(ready.messages_after_writes)
        {
            self.queue.push_back((id, outgoing.to, outgoing.message));
        }
    }

    fn deliver(&mut self) {
        while let Some((from, to, message)) = self.queue.pop_front() {
            self.step(to, Input::Receive { from, message });
        }
    }
}

fn commit(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("replica");
    for count in [1, 64, 1_024] {
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(format!("commit {count} transfers on 3 nodes"), |bencher| {
            bencher.iter_batched(
                || (Cluster::new(), transfers(count, 3, "c")),
                |(mut cluster, batch)| {
                    let leader = cluster.leader();
                    for transfer in batch {
                        cluster.step(leader, Input::Propose(transfer));
                    }
                    cluster.deliver();
                    assert_eq!(
                        cluster.replicas[leader as usize - 1]
                            .ledger()
                            .transfer_count(),
                        count as u64
                    );
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, ledger, commit);
criterion_main!(benches);
