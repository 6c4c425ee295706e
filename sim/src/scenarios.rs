//! The partial-connectivity scenarios of the OmniPaxos paper (Ng et al., EuroSys 2023), built
//! exactly, under load, with the time the cluster takes to commit again.

use benmo_paxos::{Config, NodeId, PlantedBugs, Transfer, TransferId};

use crate::checkers::Violation;
use crate::world::{Millis, NetworkFaults, Options, World, TICK_MS};

/// The three shapes of cut links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Only one node (the hub) keeps its links; the leader reaches just the hub.
    QuorumLoss,
    /// The leader is cut off; the others reach only the hub, which is behind on the chain.
    ConstrainedElection,
    /// The nodes form a line with the leader at one end; each reaches only its neighbours.
    Chained,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 3] = [
        Shape::QuorumLoss,
        Shape::ConstrainedElection,
        Shape::Chained,
    ];

    /// The shape's name, as the paper calls it.
    pub fn name(self) -> &'static str {
        match self {
            Shape::QuorumLoss => "quorum-loss",
            Shape::ConstrainedElection => "constrained-election",
            Shape::Chained => "chained",
        }
    }

    /// Whether the shape leaves some node able to reach a majority in a cluster of `nodes`, which
    /// is what liveness needs. A line of 7 nodes does not: the best-placed node reaches 3 of 7.
    pub fn applies_to(self, nodes: u32) -> bool {
        match self {
            Shape::QuorumLoss | Shape::ConstrainedElection => nodes >= 3,
            Shape::Chained => nodes == 3 || nodes == 5,
        }
    }

    /// Parses [`Shape::name`].
    pub fn from_name(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|shape| shape.name() == name)
    }
}

/// The longest election timeout of the default configuration, in simulated ms.
pub fn election_timeout_ms_max() -> Millis {
    Config::new(1, 3).election_timeout_ticks_max * TICK_MS
}

/// How one run of a scenario went.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// The leader when the links were cut.
    pub old_leader: NodeId,
    /// The node that led when the probe transfer was decided.
    pub new_leader: Option<NodeId>,
    /// How far the hub was behind the chain's head when the links were cut.
    pub hub_behind: u64,
    /// Simulated ms from the cut to the decision of a transfer submitted right after it.
    pub recovery_ms: Millis,
}

/// How long a scenario waits for the cluster to commit again before calling it stuck.
const RECOVERY_LIMIT_MS: Millis = 30_000;

/// The lasting-fault findings built exactly ([`promiser_lost`], [`follower_cut_one_way`]) must
/// recover within this many of the longest election timeouts: the random lasting mode allows more,
/// as it also slows disks down.
pub const BUILT_BOUND_ELECTION_TIMEOUTS: u64 = 3;

/// Builds `shape` on a loaded cluster of `nodes` and measures how long until a transfer submitted
/// right after the cut is decided. Every invariant is checked throughout.
///
/// Panics if the shape does not apply to the cluster size (see [`Shape::applies_to`]).
pub fn run(seed: u64, nodes: u32, shape: Shape, trace: bool) -> Result<Recovery, Violation> {
    assert!(
        shape.applies_to(nodes),
        "{} does not apply to {nodes} nodes",
        shape.name()
    );
    let options = Options {
        seed,
        nodes,
        planted_bugs: PlantedBugs::default(),
        trace,
        vary_config: false,
        mode: crate::world::Mode::Healing,
    };
    let mut world = World::new(options);
    world.set_network(NetworkFaults::calm());
    world.start_clients(3);
    world.run_until(1_500)?;
    let stuck = |detail: String| Violation {
        checker: "liveness",
        detail,
    };
    let leader = world
        .leader()
        .ok_or_else(|| stuck(format!("no leader after 1.5 s: {}", world.describe())))?;
    // The hub is the node after the leader; the probe goes where a majority can be reached.
    let hub = leader % nodes + 1;
    let mut hub_behind = 0;
    match shape {
        Shape::QuorumLoss => world.quorum_loss(leader, hub),
        Shape::ConstrainedElection => {
            // Let the hub fall behind first: it hears nobody for a while under load.
            for node in 1..=nodes {
                if node != hub {
                    world.cut(node, hub);
                }
            }
            let now = world.now();
            world.run_until(now + 1_000)?;
            let hub_height = world
                .replica(hub)
                .map_or(0, |replica| replica.ledger().height());
            hub_behind = world.height() - hub_height;
            world.constrained_election(leader, hub);
        }
        Shape::Chained => world.chain(leader),
    }
    let probe_node = match shape {
        Shape::QuorumLoss | Shape::ConstrainedElection => hub,
        // The middle of the line reaches a majority.
        Shape::Chained => (leader - 1 + nodes / 2) % nodes + 1,
    };
    let cut_at = world.now();
    let probe = Transfer {
        id: TransferId::new(format!("probe-{seed}")).expect("valid id"),
        from: probe_node,
        to: leader,
        amount: 1,
        signature: None,
    };
    let id = world.submit_to(probe_node, probe);
    let decided_at = world
        .run_until_condition(cut_at + RECOVERY_LIMIT_MS, |world| world.is_decided(&id))?
        .ok_or_else(|| {
            stuck(format!(
                "{}: probe not decided {RECOVERY_LIMIT_MS} ms after the cut: {}",
                shape.name(),
                world.describe()
            ))
        })?;
    let new_leader = world.leader();
    world.stop_load();
    world.check_liveness(crate::world::LIVENESS_BOUND_MS)?;
    Ok(Recovery {
        old_leader: leader,
        new_leader,
        hub_behind,
        recovery_ms: decided_at - cut_at,
    })
}

/// Finding 1 of the liveness issue, built exactly: a candidate counts a promise from a peer
/// further ahead, and that peer goes away before the candidate has its blocks.
///
/// On a loaded cluster of `nodes` (5 or more), one node (the candidate-to-be) stops hearing
/// anyone and falls behind, and its requests for blocks are lost; the leader then goes away
/// silently (its links cut, then its process); the candidate-to-be hears the others again and
/// runs for leader, still behind. The first peer it asks for blocks as a candidate is cut off from
/// everyone as the request leaves. A majority of nodes is
/// still up and connected, so a transfer submitted to the candidate must be decided within
/// [`BUILT_BOUND_ELECTION_TIMEOUTS`]. Returns the ms from the leader's loss to that decision.
pub fn promiser_lost(seed: u64, nodes: u32, trace: bool) -> Result<Millis, Violation> {
    promiser_lost_with(seed, nodes, PlantedBugs::default(), trace)
}

/// [`promiser_lost`] with planted bugs (tests only).
pub fn promiser_lost_with(
    seed: u64,
    nodes: u32,
    planted_bugs: PlantedBugs,
    trace: bool,
) -> Result<Millis, Violation> {
    assert!(
        nodes >= 5,
        "losing the leader and one promiser must leave a majority"
    );
    let options = Options {
        seed,
        nodes,
        planted_bugs,
        trace,
        vary_config: false,
        mode: crate::world::Mode::Healing,
    };
    let mut world = World::new(options);
    world.set_network(NetworkFaults::calm());
    world.start_clients(3);
    world.run_until(1_500)?;
    let stuck = |detail: String| Violation {
        checker: "liveness-lasting",
        detail,
    };
    let leader = world
        .leader()
        .ok_or_else(|| stuck(format!("no leader after 1.5 s: {}", world.describe())))?;
    let candidate = leader % nodes + 1;
    for peer in (1..=nodes).filter(|peer| *peer != candidate) {
        world.cut(peer, candidate);
    }
    world.arm_fetch_nemesis(candidate);
    let now = world.now();
    world.run_until(now + 600)?;
    for peer in (1..=nodes).filter(|peer| *peer != leader) {
        world.sever(leader, peer);
    }
    world.crash_for_good(leader);
    for peer in (1..=nodes).filter(|peer| *peer != leader && *peer != candidate) {
        world.heal(peer, candidate);
    }
    let lost_at = world.now();
    let probe = Transfer {
        id: TransferId::new(format!("probe-{seed}")).expect("valid id"),
        from: candidate,
        to: leader,
        amount: 1,
        signature: None,
    };
    let id = world.submit_to(candidate, probe);
    let bound = BUILT_BOUND_ELECTION_TIMEOUTS * election_timeout_ms_max();
    let decided_at = world
        .run_until_condition(lost_at + bound, |world| world.is_decided(&id))?
        .ok_or_else(|| {
            stuck(format!(
                "probe not decided {bound} ms after the leader and a promiser were lost: {}",
                world.describe()
            ))
        })?;
    world.stop_load();
    world.check_liveness(crate::world::LIVENESS_BOUND_MS)?;
    Ok(decided_at - lost_at)
}

/// Finding 2 of the liveness issue, built exactly: a follower far behind cannot send to the
/// leader (a lasting one-way cut) but hears it, and hears the others both ways.
///
/// On a loaded cluster of `nodes`, a follower crashes, the cluster commits without it for a
/// while, and it comes back with its link to the leader cut one way. The leader reports the
/// greatest height, so that is where catch-up asks first; the requests never arrive. The follower
/// must catch up from the others, and answer a transfer submitted to it within
/// [`BUILT_BOUND_ELECTION_TIMEOUTS`]. Returns the ms from the restart to that answer.
pub fn follower_cut_one_way(
    seed: u64,
    nodes: u32,
    planted_bugs: PlantedBugs,
    trace: bool,
) -> Result<Millis, Violation> {
    let options = Options {
        seed,
        nodes,
        planted_bugs,
        trace,
        vary_config: false,
        mode: crate::world::Mode::Healing,
    };
    let mut world = World::new(options);
    world.set_network(NetworkFaults::calm());
    // Busy: the leader is usually a block or two ahead of the others.
    world.start_clients(24);
    world.run_until(1_500)?;
    let stuck = |detail: String| Violation {
        checker: "liveness-lasting",
        detail,
    };
    let leader = world
        .leader()
        .ok_or_else(|| stuck(format!("no leader after 1.5 s: {}", world.describe())))?;
    // The follower is one the leader outranks in catch-up's old choice (among peers of equal
    // height, the lowest id): the highest id but the leader's.
    let follower = (1..=nodes)
        .rev()
        .find(|node| *node != leader)
        .expect("a cluster has a follower");
    world.crash(follower);
    let now = world.now();
    world.run_until(now + 1_500)?;
    world.cut(follower, leader);
    world.restart_now(follower)?;
    let restarted_at = world.now();
    let probe = Transfer {
        id: TransferId::new(format!("probe-{seed}")).expect("valid id"),
        from: follower,
        to: leader,
        amount: 1,
        signature: None,
    };
    let client = world.submit_and_wait(follower, probe);
    let bound = BUILT_BOUND_ELECTION_TIMEOUTS * election_timeout_ms_max();
    let answered_at = world
        .run_until_condition(restarted_at + bound, |world| world.is_answered(client))?
        .ok_or_else(|| {
            stuck(format!(
                "node {follower} did not answer within {bound} ms of its restart: {}",
                world.describe()
            ))
        })?;
    world.stop_load();
    world.check_liveness(crate::world::LIVENESS_BOUND_MS)?;
    Ok(answered_at - restarted_at)
}
