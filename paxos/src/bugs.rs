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
    /// A leader counts its own vote for a slot before that vote is written (it sends its
    /// Accepted to itself at once instead of once durable).
    LeaderVoteBeforeWrite,
    /// A leader decides a slot one vote short of a majority, so a transfer is acknowledged before
    /// a quorum holds it durably.
    DecideWithoutQuorum,
    /// A client's transfer enters the pending log in memory only: a crash of its node loses it.
    SkipPendingWrite,
    /// A node answers a client whose transfer id was taken by a different transfer as if its own
    /// transfer had committed.
    AcknowledgeConflictingId,
    /// An acceptor accepts values in ballots below the one it promised.
    AcceptBelowPromise,
    /// Finding 1 of the liveness issue: a candidate fetches the blocks it lacks only from the
    /// promiser that reported them, and never gives up its candidacy.
    FetchOnlyFromAheadPromiser,
    /// Finding 2 of the liveness issue: catch-up always asks the peer reporting the greatest
    /// height, whether or not it can be reached.
    FetchFromSamePeer,
    /// Finding 3 of the liveness issue: the host steps nothing while a write is on its way to
    /// disk, and then takes the tick before the replies that queued up meanwhile.
    SynchronousWrites,
    /// A node whose data directory was emptied starts anew, as if the cluster were new, instead of
    /// refusing to start: it forgets its promises and votes.
    StartOnWipedDisk,
    /// A candidate that no longer hears a majority runs again with a higher ballot after each
    /// election timeout, instead of going back to following: its Prepares, which still arrive,
    /// depose every leader the majority elects.
    RerunWithoutQuorum,
    /// The host writes a group of writes lazily (without a sync) whatever it holds, so a crash can
    /// lose a vote or a promise that already left.
    LazyVotes,
    /// A leader that asks only some peers to accept a slot never asks the others for it: not when
    /// the slot stays undecided, not when one of the peers asked disconnects. One of them crashed
    /// or cut off stalls every slot it was asked for.
    AskedPeersOnly,
}

impl PlantedBug {
    /// Every planted bug, for tests that try them all.
    pub const ALL: [PlantedBug; 18] = [
        PlantedBug::ReplyBeforePersist,
        PlantedBug::ForgetPromiseOnRestart,
        PlantedBug::IgnorePromisedValues,
        PlantedBug::BallotWithoutNodeId,
        PlantedBug::SkipDeduplication,
        PlantedBug::SkipFundsCheck,
        PlantedBug::LeaderVoteBeforeWrite,
        PlantedBug::DecideWithoutQuorum,
        PlantedBug::SkipPendingWrite,
        PlantedBug::AcknowledgeConflictingId,
        PlantedBug::AcceptBelowPromise,
        PlantedBug::FetchOnlyFromAheadPromiser,
        PlantedBug::FetchFromSamePeer,
        PlantedBug::SynchronousWrites,
        PlantedBug::StartOnWipedDisk,
        PlantedBug::RerunWithoutQuorum,
        PlantedBug::LazyVotes,
        PlantedBug::AskedPeersOnly,
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
            PlantedBug::LeaderVoteBeforeWrite => "leader-vote-before-write",
            PlantedBug::DecideWithoutQuorum => "decide-without-quorum",
            PlantedBug::SkipPendingWrite => "skip-pending-write",
            PlantedBug::AcknowledgeConflictingId => "acknowledge-conflicting-id",
            PlantedBug::AcceptBelowPromise => "accept-below-promise",
            PlantedBug::FetchOnlyFromAheadPromiser => "fetch-only-from-ahead-promiser",
            PlantedBug::FetchFromSamePeer => "fetch-from-same-peer",
            PlantedBug::SynchronousWrites => "synchronous-writes",
            PlantedBug::StartOnWipedDisk => "start-on-wiped-disk",
            PlantedBug::RerunWithoutQuorum => "rerun-without-quorum",
            PlantedBug::LazyVotes => "lazy-votes",
            PlantedBug::AskedPeersOnly => "asked-peers-only",
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
