//! The simulator over ranges of seeds: every invariant after every step, liveness after faults.
//!
//! CI runs these in the test profile (the core and the simulator are optimised there). Each test
//! prints the command that replays any failing seed exactly.

use benmo_paxos::PlantedBugs;
use benmo_sim::{replay_command, run_seed, Mode, Options, World};

/// Runs `count` seeds from `first` on `nodes` nodes and fails with every failing seed's replay line.
fn run_range(first: u64, count: u64, nodes: u32, mode: Mode) {
    let mut failures = Vec::new();
    let (mut steps, mut faults, mut acknowledged) = (0, 0, 0);
    for seed in first..first + count {
        let report = run_seed(seed, nodes, mode, PlantedBugs::default(), false);
        steps += report.stats.steps;
        faults += report.stats.faults;
        acknowledged += report.stats.acknowledged;
        if let Err(violation) = &report.result {
            failures.push(format!(
                "seed {seed}: {} violated: {}\n  replay: {}",
                violation.checker,
                violation.detail,
                replay_command(seed, nodes, mode, None)
            ));
        }
    }
    println!(
        "{nodes} nodes, {} mode: {} seeds, {steps} steps, {faults} faults, {acknowledged} transfers acknowledged",
        mode.name(),
        count
    );
    assert!(
        steps >= 1_000 * count,
        "seeds should run thousands of steps each"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn three_thousand_seeds_on_three_nodes() {
    run_range(3_000_000, 3_000, 3, Mode::Healing);
}

#[test]
fn three_thousand_seeds_on_five_nodes() {
    run_range(5_000_000, 3_000, 5, Mode::Healing);
}

#[test]
fn two_thousand_seeds_on_seven_nodes() {
    run_range(7_000_000, 2_000, 7, Mode::Healing);
}

#[test]
fn a_thousand_seeds_on_three_nodes_under_lasting_faults() {
    run_range(13_000_000, 1_000, 3, Mode::Lasting);
}

#[test]
fn a_thousand_seeds_on_five_nodes_under_lasting_faults() {
    run_range(15_000_000, 1_000, 5, Mode::Lasting);
}

#[test]
fn six_hundred_seeds_on_seven_nodes_under_lasting_faults() {
    run_range(17_000_000, 600, 7, Mode::Lasting);
}

#[test]
fn a_seed_replays_exactly() {
    let run = |seed| {
        let mut world = World::new(Options {
            seed,
            nodes: 5,
            planted_bugs: PlantedBugs::default(),
            trace: true,
            vary_config: true,
            mode: Mode::Lasting,
        });
        let result = world.run_random();
        (result, world.trace().to_vec(), world.stats().steps)
    };
    let first = run(42);
    let second = run(42);
    assert!(first.0.is_ok());
    assert!(first.2 > 1_000);
    assert_eq!(first.1, second.1, "the same seed must take the same steps");
    assert_ne!(run(43).1, first.1, "another seed must take other steps");
}
