//! The OmniPaxos partial-connectivity scenarios (quorum-loss, constrained election, chained), each
//! built exactly under load: the cluster must commit again within a stated number of election
//! timeouts. OmniPaxos guarantees four; Benmo is held to three.

use benmo_sim::scenarios::{election_timeout_ms_max, run, Shape};

/// The bound, in longest election timeouts, from the cut to the decision of a new transfer.
const ELECTION_TIMEOUTS_MAX: u64 = 3;
const SEEDS: u64 = 20;

fn assert_recovers(shape: Shape, nodes: u32) {
    let bound_ms = ELECTION_TIMEOUTS_MAX * election_timeout_ms_max();
    let mut slowest = 0;
    for seed in 0..SEEDS {
        let recovery = run(seed, nodes, shape, false)
            .unwrap_or_else(|violation| panic!("{} seed {seed}: {violation:?}", shape.name()));
        assert!(
            recovery.recovery_ms <= bound_ms,
            "{} on {nodes} nodes, seed {seed}: committed again only after {} ms (bound {bound_ms} ms)",
            shape.name(),
            recovery.recovery_ms
        );
        if shape == Shape::ConstrainedElection {
            assert!(
                recovery.hub_behind > 0,
                "the hub must start behind the chain"
            );
        }
        slowest = slowest.max(recovery.recovery_ms);
    }
    println!(
        "{} on {nodes} nodes: slowest recovery {slowest} ms = {:.2} election timeouts",
        shape.name(),
        slowest as f64 / election_timeout_ms_max() as f64
    );
}

#[test]
fn quorum_loss_recovers() {
    for nodes in [3, 5, 7] {
        assert_recovers(Shape::QuorumLoss, nodes);
    }
}

#[test]
fn constrained_election_recovers() {
    for nodes in [3, 5, 7] {
        assert_recovers(Shape::ConstrainedElection, nodes);
    }
}

#[test]
fn chained_recovers() {
    for nodes in [3, 5] {
        assert_recovers(Shape::Chained, nodes);
    }
}
