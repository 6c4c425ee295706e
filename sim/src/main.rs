//! `benmo-sim`: runs the deterministic cluster simulation for one seed or a range of seeds.
//!
//!     benmo-sim --seed 123456                      # one seed, with its details
//!     benmo-sim --first-seed 1000000 --seeds 10000 # a range; prints "K passed, F failed"

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Result};
use benmo_paxos::{PlantedBug, PlantedBugs};
use benmo_sim::scenarios::{self, election_timeout_ms_max, Shape};
use benmo_sim::{replay_command, run_seed, Mode, SeedReport};
use clap::Parser;

/// Simulates a Benmo cluster under faults and checks every invariant after every step.
#[derive(Parser, Debug)]
#[command(name = "benmo-sim", version)]
struct Arguments {
    /// Run exactly this seed and print its details (replays a failure).
    #[arg(long, conflicts_with_all = ["first_seed", "seeds"])]
    seed: Option<u64>,
    /// The first seed of a range.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// How many consecutive seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// Cluster size.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=9))]
    nodes: u32,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print every step of a single seed.
    #[arg(long, requires = "seed")]
    trace: bool,
    /// Plant a known bug in the core (needs the `planted-bugs` feature).
    #[arg(long)]
    planted_bug: Option<String>,
    /// Which liveness promise to check: `healing` (faults, then everything heals: every transfer
    /// decided, chains converge) or `lasting` (faults, then a lasting fault set that leaves a
    /// connected majority: every transfer sent to a node that can talk to it is answered within a
    /// bound, and leadership stays put).
    #[arg(long, default_value = "healing", value_parser = parse_mode)]
    mode: Mode,
    /// Instead of random faults, build one fault shape per seed and report how long the cluster
    /// takes to commit again: the OmniPaxos shapes quorum-loss, constrained-election and chained,
    /// or the lasting-fault findings promiser-lost and follower-cut-one-way.
    #[arg(long)]
    scenario: Option<String>,
}

fn main() -> Result<()> {
    let arguments = Arguments::parse();
    let planted = match &arguments.planted_bug {
        None => None,
        Some(name) => match PlantedBug::from_name(name) {
            Some(bug) => Some(bug),
            None => bail!(
                "unknown planted bug {name:?}; known: {}",
                PlantedBug::ALL.map(|bug| bug.name()).join(", ")
            ),
        },
    };
    let planted_bugs = planted_bugs(planted)?;
    if let Some(name) = &arguments.scenario {
        let first = arguments.seed.unwrap_or(arguments.first_seed);
        let count = if arguments.seed.is_some() {
            1
        } else {
            arguments.seeds
        };
        let (nodes, trace) = (arguments.nodes, arguments.trace);
        let run: Box<dyn Fn(u64) -> Result<u64, benmo_sim::Violation>> = match name.as_str() {
            "promiser-lost" => {
                if nodes < 5 {
                    bail!("promiser-lost needs 5 nodes or more: losing the leader and a promiser must leave a majority");
                }
                Box::new(move |seed| {
                    scenarios::promiser_lost_with(seed, nodes, planted_bugs, trace)
                })
            }
            "follower-cut-one-way" => Box::new(move |seed| {
                scenarios::follower_cut_one_way(seed, nodes, planted_bugs, trace)
            }),
            name => {
                let Some(shape) = Shape::from_name(name) else {
                    bail!("unknown scenario {name:?}; known: quorum-loss, constrained-election, chained, promiser-lost, follower-cut-one-way");
                };
                if !shape.applies_to(nodes) {
                    bail!("{name} does not apply to {nodes} nodes: no node could reach a majority");
                }
                Box::new(move |seed| {
                    scenarios::run(seed, nodes, shape, trace).map(|recovery| recovery.recovery_ms)
                })
            }
        };
        return run_scenario(name, &*run, first, count, nodes);
    }
    if let Some(seed) = arguments.seed {
        let report = run_seed(
            seed,
            arguments.nodes,
            arguments.mode,
            planted_bugs,
            arguments.trace,
        );
        print_report(&report, arguments.nodes, arguments.mode, planted);
        if report.result.is_err() {
            std::process::exit(1);
        }
        return Ok(());
    }
    let threads = arguments
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = Instant::now();
    let next = AtomicU64::new(arguments.first_seed);
    let end = arguments.first_seed.saturating_add(arguments.seeds);
    let failures: Mutex<Vec<SeedReport>> = Mutex::new(Vec::new());
    let totals = Mutex::new((0u64, 0u64, 0u64));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                let report = run_seed(seed, arguments.nodes, arguments.mode, planted_bugs, false);
                {
                    let mut totals = totals.lock().expect("no panics while holding it");
                    totals.0 += report.stats.steps;
                    totals.1 += report.stats.faults;
                    totals.2 += report.stats.acknowledged;
                }
                if report.result.is_err() {
                    print_report(&report, arguments.nodes, arguments.mode, planted);
                    failures
                        .lock()
                        .expect("no panics while holding it")
                        .push(report);
                }
            });
        }
    });
    let failures = failures.into_inner().expect("threads are done");
    let (steps, faults, acknowledged) = totals.into_inner().expect("threads are done");
    let failed = failures.len() as u64;
    let mut seeds: Vec<u64> = failures.iter().map(|report| report.seed).collect();
    seeds.sort_unstable();
    println!(
        "{} passed, {failed} failed ({} nodes, seeds {}..{end}, {steps} steps, {faults} faults, {acknowledged} transfers acknowledged, {:.1} s){}",
        arguments.seeds - failed,
        arguments.nodes,
        arguments.first_seed,
        started.elapsed().as_secs_f64(),
        if seeds.is_empty() {
            String::new()
        } else {
            format!("; failing seeds: {seeds:?}")
        }
    );
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(feature = "planted-bugs")]
fn planted_bugs(planted: Option<PlantedBug>) -> Result<PlantedBugs> {
    Ok(planted.map(PlantedBugs::only).unwrap_or_default())
}

#[cfg(not(feature = "planted-bugs"))]
fn planted_bugs(planted: Option<PlantedBug>) -> Result<PlantedBugs> {
    if planted.is_some() {
        bail!("--planted-bug needs a build with the planted-bugs feature (cargo run -p benmo-sim --features planted-bugs)");
    }
    Ok(PlantedBugs::default())
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    match text {
        "healing" => Ok(Mode::Healing),
        "lasting" => Ok(Mode::Lasting),
        _ => Err(format!("unknown mode {text:?}; known: healing, lasting")),
    }
}

fn print_report(report: &SeedReport, nodes: u32, mode: Mode, planted: Option<PlantedBug>) {
    let stats = &report.stats;
    match &report.result {
        Ok(()) => {
            println!(
                "seed {} passed: {} steps, {} faults ({} crashes), {} submitted, {} acknowledged, height {}, converged {} ms after faults stopped",
                report.seed, stats.steps, stats.faults, stats.crashes, stats.submitted, stats.acknowledged, stats.height, stats.recovery_ms
            );
            if mode == Mode::Lasting {
                println!(
                    "lasting faults: committed again after {} ms, slowest answer {} ms, {} leader changes after that",
                    stats.lasting_recovery_ms, stats.lasting_answer_ms_max, stats.lasting_leader_changes
                );
            }
        }
        Err(violation) => {
            println!(
                "seed {} FAILED after {} steps: {} violated: {}",
                report.seed, stats.steps, violation.checker, violation.detail
            );
            println!(
                "replay: {}",
                replay_command(report.seed, nodes, mode, planted)
            );
        }
    }
}

fn run_scenario(
    name: &str,
    run: &dyn Fn(u64) -> Result<u64, benmo_sim::Violation>,
    first: u64,
    count: u64,
    nodes: u32,
) -> Result<()> {
    let mut recoveries = Vec::new();
    let mut failed = Vec::new();
    for seed in first..first.saturating_add(count) {
        match run(seed) {
            Ok(recovery) => recoveries.push(recovery),
            Err(violation) => {
                println!(
                    "seed {seed} FAILED: {} violated: {}",
                    violation.checker, violation.detail
                );
                failed.push(seed);
            }
        }
    }
    recoveries.sort_unstable();
    let timeout = election_timeout_ms_max() as f64;
    let at = |quantile: f64| {
        recoveries
            .get(((recoveries.len() as f64 - 1.0) * quantile).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let (median, p99, max) = (at(0.5), at(0.99), recoveries.last().copied().unwrap_or(0));
    println!(
        "{name}: {} passed, {} failed ({nodes} nodes); commit again after the fault: median {median} ms ({:.2} election timeouts), p99 {p99} ms ({:.2}), max {max} ms ({:.2}); election timeout max {timeout} ms",
        recoveries.len(),
        failed.len(),
        median as f64 / timeout,
        p99 as f64 / timeout,
        max as f64 / timeout,
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
