//! The page's partition presets: the shapes OmniPaxos showed break Raft and Multi-Paxos
//! elections (quorum loss, constrained election, chained), and cutting the leader off. Each is the
//! set of links to cut once every link is healed.

use benmo_paxos::NodeId;

/// The presets the page offers, with what each does.
pub const PRESETS: [(&str, &str); 4] = [
    (
        "quorum-loss",
        "only a hub node keeps its links; the leader reaches nobody else",
    ),
    (
        "constrained-election",
        "the leader is cut off; the others reach only a hub",
    ),
    ("chained", "a line of nodes, the leader at one end"),
    ("isolate-leader", "the leader is cut off from every node"),
];

/// The links (both directions) to cut for preset `name` on `nodes` nodes whose leader is `leader`
/// (node 1 stands in when there is none). The hub is the node after the leader.
pub fn cuts(
    name: &str,
    nodes: NodeId,
    leader: Option<NodeId>,
) -> Result<Vec<(NodeId, NodeId)>, String> {
    let leader = leader.unwrap_or(1);
    let hub = leader % nodes + 1;
    let pairs = (1..=nodes).flat_map(|a| (a + 1..=nodes).map(move |b| (a, b)));
    let cut: Vec<(NodeId, NodeId)> = match name {
        "quorum-loss" => pairs.filter(|(a, b)| *a != hub && *b != hub).collect(),
        "constrained-election" => pairs
            .filter(|(a, b)| {
                let touches_leader = *a == leader || *b == leader;
                let spoke = *a != hub && *b != hub;
                touches_leader || spoke
            })
            .collect(),
        "chained" => {
            if nodes != 3 && nodes != 5 {
                return Err(format!(
                    "the chained shape needs 3 or 5 nodes; with {nodes} no node in a line reaches \
                     a majority"
                ));
            }
            // The line starts at the leader: leader, leader+1, ... wrapping around.
            let place = |node: NodeId| (node + nodes - leader) % nodes;
            pairs
                .filter(|(a, b)| place(*a).abs_diff(place(*b)) > 1)
                .collect()
        }
        "isolate-leader" => pairs
            .filter(|(a, b)| *a == leader || *b == leader)
            .collect(),
        _ => {
            let known: Vec<&str> = PRESETS.iter().map(|(name, _)| *name).collect();
            return Err(format!("no preset {name:?}; known: {}", known.join(", ")));
        }
    };
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who can talk to whom once `cut` is applied to a full mesh.
    fn linked(cut: &[(NodeId, NodeId)], a: NodeId, b: NodeId) -> bool {
        a != b && !cut.contains(&(a.min(b), a.max(b)))
    }

    fn degree(nodes: NodeId, cut: &[(NodeId, NodeId)], node: NodeId) -> usize {
        (1..=nodes).filter(|peer| linked(cut, node, *peer)).count()
    }

    #[test]
    fn quorum_loss_leaves_only_the_hub_with_a_majority() {
        for nodes in [3, 5, 7] {
            let cut = cuts("quorum-loss", nodes, Some(2)).unwrap();
            let hub = 3;
            assert_eq!(degree(nodes, &cut, hub) as NodeId, nodes - 1);
            for node in (1..=nodes).filter(|node| *node != hub) {
                assert_eq!(degree(nodes, &cut, node), 1, "node {node} of {nodes}");
                assert!(linked(&cut, node, hub));
            }
        }
    }

    #[test]
    fn constrained_election_isolates_the_leader_and_keeps_a_hub() {
        let cut = cuts("constrained-election", 5, Some(5)).unwrap();
        assert_eq!(degree(5, &cut, 5), 0, "the leader is cut off");
        assert_eq!(
            degree(5, &cut, 1),
            3,
            "the hub (after 5 comes 1) reaches the rest"
        );
        for node in 2..=4 {
            assert_eq!(degree(5, &cut, node), 1);
        }
    }

    #[test]
    fn chained_is_a_line_that_starts_at_the_leader() {
        let cut = cuts("chained", 5, Some(4)).unwrap();
        // The line 4-5-1-2-3.
        for (a, b) in [(4, 5), (5, 1), (1, 2), (2, 3)] {
            assert!(linked(&cut, a, b), "{a}-{b}");
        }
        assert_eq!(degree(5, &cut, 4), 1);
        assert_eq!(degree(5, &cut, 3), 1);
        assert_eq!(cut.len(), 10 - 4);
        assert!(cuts("chained", 7, Some(1)).unwrap_err().contains("3 or 5"));
    }

    #[test]
    fn isolating_the_leader_cuts_its_links_only() {
        let cut = cuts("isolate-leader", 7, None).unwrap();
        assert_eq!(cut.len(), 6);
        assert!(cut.iter().all(|(a, _)| *a == 1));
        assert!(cuts("everything", 5, None)
            .unwrap_err()
            .contains("quorum-loss"));
    }
}
