//! Where a transfer goes when no `--node` is given: to the leader that a quorum follows, so that
//! it commits even while part of the cluster is cut off.
//!
//! Every node is asked for its status at once. The choice, in order:
//!
//! 1. the quorum-connected leader with the highest ballot (it heard a majority in its last
//!    heartbeat round, so it can commit);
//! 2. a quorum-connected node that follows the highest ballot any node follows (it forwards to the
//!    leader);
//! 3. the first node that answers at all.

use benmo::proto;
use benmo_paxos::NodeId;

use super::{on_every_node, Context};

/// A node chosen for a transfer, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The node.
    pub node: NodeId,
    /// Why it was chosen.
    pub reason: Reason,
}

/// A route, and what the nodes said of the cluster while it was found.
#[derive(Clone, Debug)]
pub struct Found {
    /// Where to send.
    pub route: Route,
    /// The status of the node chosen.
    pub status: proto::StatusReply,
}

/// Why a node was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The `--node` flag named it.
    Named,
    /// It leads, and a majority hears it.
    Leader,
    /// It follows the leader, and a majority hears it.
    FollowsLeader,
    /// It was the first to answer; no node knows of a leader a majority follows.
    FirstToAnswer,
}

impl Reason {
    /// The reason in a few words, for `--verbose` and JSON.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Named => "named with --node",
            Reason::Leader => "the leader a quorum follows",
            Reason::FollowsLeader => "follows the leader a quorum follows",
            Reason::FirstToAnswer => "first node to answer (no leader known)",
        }
    }
}

fn ballot(ballot: Option<&proto::Ballot>) -> Option<(u64, u32)> {
    ballot.map(|ballot| (ballot.round, ballot.node))
}

/// Picks a node from the statuses of the nodes that answered, in node order.
pub fn choose(statuses: &[(NodeId, proto::StatusReply)]) -> Option<Route> {
    let leader = statuses
        .iter()
        .filter(|(_, status)| status.role == proto::Role::Leader as i32 && status.quorum_connected)
        .max_by_key(|(node, status)| (ballot(status.ballot.as_ref()), std::cmp::Reverse(*node)));
    if let Some((node, _)) = leader {
        return Some(Route {
            node: *node,
            reason: Reason::Leader,
        });
    }
    let followed = statuses
        .iter()
        .filter_map(|(_, status)| ballot(status.leader.as_ref()))
        .max();
    let follower = statuses.iter().find(|(_, status)| {
        status.quorum_connected && followed.is_some() && ballot(status.leader.as_ref()) == followed
    });
    if let Some((node, _)) = follower {
        return Some(Route {
            node: *node,
            reason: Reason::FollowsLeader,
        });
    }
    statuses.first().map(|(node, _)| Route {
        node: *node,
        reason: Reason::FirstToAnswer,
    })
}

/// Asks every node for its status and picks where to send a transfer; `None` if no node answers.
/// With `--node`, that node (asked for its status only).
pub async fn find(context: &Context) -> Option<Found> {
    let asked = match context.node {
        Some(node) => vec![node],
        None => context.nodes.ids(),
    };
    let nodes = context.nodes.clone();
    let answers = on_every_node(&asked, move |node| {
        let nodes = nodes.clone();
        async move {
            let mut client = nodes.ledger(node)?;
            client
                .status(proto::StatusRequest {})
                .await
                .map(|response| response.into_inner())
                .map_err(|status| nodes.error(node, status))
        }
    })
    .await;
    let statuses: Vec<(NodeId, proto::StatusReply)> = answers
        .into_iter()
        .filter_map(|(node, answer)| answer.ok().map(|status| (node, status)))
        .collect();
    let route = match context.node {
        Some(node) => Route {
            node,
            reason: Reason::Named,
        },
        None => choose(&statuses)?,
    };
    let status = statuses
        .into_iter()
        .find(|(node, _)| *node == route.node)
        .map(|(_, status)| status)?;
    Some(Found { route, status })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        role: proto::Role,
        leader: Option<(u64, u32)>,
        quorum_connected: bool,
    ) -> proto::StatusReply {
        let ballot = |(round, node)| proto::Ballot { round, node };
        proto::StatusReply {
            role: role as i32,
            leader: leader.map(ballot),
            ballot: leader.map(ballot),
            quorum_connected,
            ..Default::default()
        }
    }

    #[test]
    fn the_leader_a_quorum_hears_wins_over_a_stale_one() {
        // Node 1 still believes it leads with ballot 3.1 but hears no majority (it is cut off);
        // node 4 leads with 5.4 on the majority's side.
        let statuses = vec![
            (1, status(proto::Role::Leader, Some((3, 1)), false)),
            (2, status(proto::Role::Follower, Some((3, 1)), false)),
            (4, status(proto::Role::Leader, Some((5, 4)), true)),
            (5, status(proto::Role::Follower, Some((5, 4)), true)),
        ];
        assert_eq!(
            choose(&statuses),
            Some(Route {
                node: 4,
                reason: Reason::Leader
            })
        );
    }

    #[test]
    fn without_a_reachable_leader_a_connected_follower_is_next() {
        let statuses = vec![
            (1, status(proto::Role::Follower, Some((3, 1)), false)),
            (2, status(proto::Role::Follower, Some((5, 4)), true)),
        ];
        assert_eq!(
            choose(&statuses),
            Some(Route {
                node: 2,
                reason: Reason::FollowsLeader
            })
        );
        let lost = vec![(3, status(proto::Role::Follower, None, false))];
        assert_eq!(
            choose(&lost),
            Some(Route {
                node: 3,
                reason: Reason::FirstToAnswer
            })
        );
        assert_eq!(choose(&[]), None);
    }
}
