//! Findings 1 and 2 of the liveness issue, built exactly (see `scenarios::promiser_lost` and
//! `scenarios::follower_cut_one_way`): each must recover within a stated bound, and each finding,
//! planted back behind its test-only switch, must be caught. Finding 3 (heartbeats behind a slow
//! disk) is caught by the random lasting mode itself (`tests/planted_bugs.rs`).

use benmo_paxos::{PlantedBug, PlantedBugs};
use benmo_sim::scenarios::{
    election_timeout_ms_max, follower_cut_one_way, promiser_lost, promiser_lost_with,
    BUILT_BOUND_ELECTION_TIMEOUTS,
};
use benmo_sim::Violation;

const SEEDS: u64 = 20;

fn assert_recovers(name: &str, sizes: &[u32], run: impl Fn(u64, u32) -> Result<u64, Violation>) {
    let bound = BUILT_BOUND_ELECTION_TIMEOUTS * election_timeout_ms_max();
    for &nodes in sizes {
        let mut slowest = 0;
        for seed in 0..SEEDS {
            let recovery = run(seed, nodes).unwrap_or_else(|violation| {
                panic!("{name}, {nodes} nodes, seed {seed}: {violation:?}")
            });
            assert!(
                recovery <= bound,
                "{name}, {nodes} nodes, seed {seed}: {recovery} ms"
            );
            slowest = slowest.max(recovery);
        }
        println!(
            "{name} on {nodes} nodes: recovered within {slowest} ms ({:.2} election timeouts)",
            slowest as f64 / election_timeout_ms_max() as f64
        );
    }
}

fn assert_caught(name: &str, sizes: &[u32], run: impl Fn(u64, u32) -> Result<u64, Violation>) {
    for &nodes in sizes {
        let caught =
            (0..SEEDS).find_map(|seed| run(seed, nodes).err().map(|violation| (seed, violation)));
        let (seed, violation) = caught
            .unwrap_or_else(|| panic!("{name}: the bug survived {SEEDS} seeds on {nodes} nodes"));
        assert_eq!(violation.checker, "liveness-lasting", "{violation:?}");
        println!("{name} on {nodes} nodes: caught at seed {seed}");
    }
}

#[test]
fn a_candidate_recovers_when_a_promiser_it_needs_blocks_from_is_lost() {
    assert_recovers("promiser-lost", &[5, 7], |seed, nodes| {
        promiser_lost(seed, nodes, false)
    });
}

#[test]
fn a_candidate_that_waits_on_one_promiser_is_caught() {
    let bug = PlantedBugs::only(PlantedBug::FetchOnlyFromAheadPromiser);
    assert_caught("promiser-lost", &[5, 7], |seed, nodes| {
        promiser_lost_with(seed, nodes, bug, false)
    });
}

#[test]
fn a_follower_that_cannot_send_to_the_leader_catches_up_from_the_others() {
    assert_recovers("follower-cut-one-way", &[3, 5, 7], |seed, nodes| {
        follower_cut_one_way(seed, nodes, PlantedBugs::default(), false)
    });
}

// Not on 7 nodes: there the restarted follower is seldom among the peers the leader asks to
// accept, so the Accept far above its height that made it ask the leader first comes once a tick
// (with a probe) instead of with every slot, and a reachable peer has usually answered before. The
// bug is still there on 7 nodes (seed 43 of the first 100 shows it), and the fix's recovery is
// checked on 3, 5 and 7 above.
#[test]
fn a_follower_that_keeps_fetching_from_an_unreachable_peer_is_caught() {
    let bug = PlantedBugs::only(PlantedBug::FetchFromSamePeer);
    assert_caught("follower-cut-one-way", &[3, 5], |seed, nodes| {
        follower_cut_one_way(seed, nodes, bug, false)
    });
}
