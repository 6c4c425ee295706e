//! Planted bugs: test-only switches that break the protocol on purpose, one at a time, so the
//! simulator's tests can show that each invariant checker catches the bug it exists for.
//!
//! The enum always exists so call sites read plainly; it can only be switched on when the crate is
//! built with the `planted-bugs` feature, which only the simulator's tests enable.

/// One deliberate bug. See `Config::planted_bug`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlantedBug {
    /// An acceptor sends its promise or accepted vote before the write is part of a durable batch:
    /// the write only goes out with the next step, so a crash in between loses it.
    ReplyBeforePersist,
    /// An acceptor restarted after a crash forgets the ballot it promised and the values it accepted.
    ForgetPromiseOnRestart,
    /// A new leader ignores the accepted values its promises carry and proposes fresh batches.
    IgnorePromisedValues,
    /// Ballots compare by round only, so two nodes with the same round both think they hold it.
    BallotWithoutNodeId,
    /// The ledger forgets which transfer ids it has applied, so a retried transfer debits twice.
    SkipDeduplication,
    /// The ledger lets an account go below zero (its balance wraps around).
    SkipFundsCheck,
}

impl PlantedBug {
    /// Every planted bug, for tests that try them all.
    pub const ALL: [PlantedBug; 6] = [
        PlantedBug::ReplyBeforePersist,
        PlantedBug::ForgetPromiseOnRestart,
        PlantedBug::IgnorePromisedValues,
        PlantedBug::BallotWithoutNodeId,
        PlantedBug::SkipDeduplication,
        PlantedBug::SkipFundsCheck,
    ];

    /// The bug's name in kebab case, as the simulator's `--planted-bug` flag takes it.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::ReplyBeforePersist => "reply-before-persist",
            PlantedBug::ForgetPromiseOnRestart => "forget-promise-on-restart",
            PlantedBug::IgnorePromisedValues => "ignore-promised-values",
            PlantedBug::BallotWithoutNodeId => "ballot-without-node-id",
            PlantedBug::SkipDeduplication => "skip-deduplication",
            PlantedBug::SkipFundsCheck => "skip-funds-check",
        }
    }

    /// Parses a name produced by [`PlantedBug::name`].
    pub fn from_name(name: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

/// Which bug, if any, is planted. Without the `planted-bugs` feature this is always empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    #[cfg(feature = "planted-bugs")]
    bug: Option<PlantedBug>,
}

impl PlantedBugs {
    /// Plants `bug`.
    #[cfg(feature = "planted-bugs")]
    pub fn only(bug: PlantedBug) -> PlantedBugs {
        PlantedBugs { bug: Some(bug) }
    }

    /// Whether `bug` is planted.
    #[inline]
    pub fn has(&self, bug: PlantedBug) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.bug == Some(bug)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            let _ = bug;
            false
        }
    }
}
