//! A deterministic simulation of a whole Benmo cluster: every node is the node's own host loop
//! ([`benmo_node::host::Host`]) around the real consensus core ([`benmo_paxos::Replica`]), on a
//! simulated network, disk and clock.
//!
//! - [`world`]: the cluster, the network with its faults, disks that are slow or fail, crashing,
//!   restarting and wiped nodes, and clients that submit valid, invalid and conflicting transfers
//!   and retry; the healing and the lasting-fault modes.
//! - [`environment`]: the host's environment on the simulated world.
//! - [`checkers`]: one checker per invariant, run after every step.
//! - [`scenarios`]: the OmniPaxos partial-connectivity shapes, measured.
//!
//! [`run_seed`] runs one seed end to end; the `benmo-sim` binary runs ranges of seeds.

pub mod checkers;
pub mod environment;
pub mod scenarios;
pub mod world;

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use benmo_paxos::PlantedBugs;

pub use checkers::Violation;
pub use world::{Mode, Options, Stats, World};

/// The outcome of one seed.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// `Ok` if every invariant held and the cluster converged.
    pub result: Result<(), Violation>,
    /// Counters of the run (partial if it failed).
    pub stats: Stats,
}

/// Runs one randomized scenario for `seed` and reports how it went. A panic inside the core (one
/// of its own invariant assertions) is reported as a violation, not propagated.
pub fn run_seed(
    seed: u64,
    nodes: u32,
    mode: Mode,
    planted_bugs: PlantedBugs,
    trace: bool,
) -> SeedReport {
    let options = Options {
        seed,
        nodes,
        planted_bugs,
        trace,
        vary_config: true,
        mode,
    };
    let mut world = World::new(options);
    let outcome = quietly(|| catch_unwind(AssertUnwindSafe(|| world.run_random())));
    let result = match outcome {
        Ok(result) => result,
        Err(panic) => Err(Violation {
            checker: "core-assertion",
            detail: panic_message(&panic),
        }),
    };
    SeedReport {
        seed,
        result,
        stats: world.stats().clone(),
    }
}

thread_local! {
    /// Set while this thread runs a seed: the report carries the panic's message instead.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `body` with panic messages of this thread silenced; other threads (say, a failing test)
/// still print theirs.
fn quietly<T>(body: impl FnOnce() -> T) -> T {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
    QUIET.with(|quiet| quiet.set(true));
    let result = body();
    QUIET.with(|quiet| quiet.set(false));
    result
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic".to_string()
    }
}

/// The command that replays one seed exactly.
pub fn replay_command(
    seed: u64,
    nodes: u32,
    mode: Mode,
    planted: Option<benmo_paxos::PlantedBug>,
) -> String {
    let mode = match mode {
        Mode::Healing => String::new(),
        Mode::Lasting => " --mode lasting".to_string(),
    };
    match planted {
        None => format!("cargo run --release -p benmo-sim -- --seed {seed} --nodes {nodes}{mode}"),
        Some(bug) => format!(
            "cargo run --release -p benmo-sim --features planted-bugs -- --seed {seed} --nodes {nodes}{mode} --planted-bug {}",
            bug.name()
        ),
    }
}
