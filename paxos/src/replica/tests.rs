//! Unit tests of the replica: feed it inputs, assert on exactly what comes out.

use super::leader::UNTOLD_TRANSFERS_MAX;
use super::*;
use crate::bugs::PlantedBugs;
use crate::message::{
    Accept, Accepted, AcceptedValue, Decide, Forward, Heartbeat, HeartbeatReply, Nack, Prepare,
    Promise,
};
use crate::storage::{AcceptorState, Storage};

fn transfer(id: &str, from: NodeId, to: NodeId, amount: u64) -> Transfer {
    Transfer {
        id: TransferId::new(id).unwrap(),
        from,
        to,
        amount,
        signature: None,
    }
}

fn batch(proposer: NodeId, transfers: &[Transfer]) -> Batch {
    Batch {
        proposer,
        transfers: transfers.to_vec(),
    }
}

fn fresh(id: NodeId, nodes: u32) -> Replica {
    let restored = Restored {
        acceptor: AcceptorState::default(),
        ledger: Ledger::genesis(nodes, 100),
    };
    Replica::new(Config::new(id, nodes), restored, 7).unwrap()
}

fn receive(replica: &mut Replica, from: NodeId, message: Message) -> Ready {
    replica.step(Input::Receive { from, message })
}

/// Feeds the leader its own vote for `slot`, as the host does once the vote's write is durable.
fn own_vote(replica: &mut Replica, slot: Height) -> Ready {
    let ballot = replica.election.ballot();
    let id = replica.config.id;
    receive(replica, id, Message::Accepted(Accepted { ballot, slot }))
}

fn messages_to(ready: &Ready, to: NodeId) -> Vec<&Message> {
    ready
        .all_messages()
        .filter(|outgoing| outgoing.to == to)
        .map(|outgoing| &outgoing.message)
        .collect()
}

/// Makes node 1 of `nodes` the leader with ballot 1.1 by feeding it promises.
fn leader(nodes: u32) -> Replica {
    let mut replica = fresh(1, nodes);
    replica.start_election();
    let ballot = replica.election.ballot();
    for peer in 2..=(nodes / 2 + 1) {
        receive(
            &mut replica,
            peer,
            Message::Promise(Promise {
                ballot,
                decided: 0,
                accepted: vec![],
            }),
        );
    }
    assert_eq!(replica.role(), RoleName::Leader);
    replica
}

#[test]
fn a_promise_is_written_in_the_same_batch_that_sends_it() {
    // Paxos phase 1b: the promise must be durable before it is sent; the host writes `writes`
    // before it sends `messages`, so both must come out of the same step.
    let mut replica = fresh(2, 3);
    let ballot = Ballot::new(3, 1);
    let ready = receive(
        &mut replica,
        1,
        Message::Prepare(Prepare { ballot, decided: 0 }),
    );
    assert_eq!(ready.writes, vec![Write::Promise(ballot)]);
    assert_eq!(
        messages_to(&ready, 1),
        vec![&Message::Promise(Promise {
            ballot,
            decided: 0,
            accepted: vec![]
        })]
    );
    assert_eq!(replica.promised(), ballot);
}

#[test]
fn a_prepare_below_the_promise_is_refused_and_changes_nothing() {
    let mut replica = fresh(2, 3);
    receive(
        &mut replica,
        3,
        Message::Prepare(Prepare {
            ballot: Ballot::new(5, 3),
            decided: 0,
        }),
    );
    let low = Ballot::new(5, 1);
    let ready = receive(
        &mut replica,
        1,
        Message::Prepare(Prepare {
            ballot: low,
            decided: 0,
        }),
    );
    assert!(ready.writes.is_empty());
    assert_eq!(
        messages_to(&ready, 1),
        vec![&Message::Nack(Nack {
            ballot: low,
            promised: Ballot::new(5, 3)
        })]
    );
    assert_eq!(replica.promised(), Ballot::new(5, 3));
}

#[test]
fn a_promise_reports_every_accepted_value() {
    let mut replica = fresh(2, 3);
    let first = Ballot::new(1, 1);
    let value = batch(1, &[transfer("a", 1, 2, 5)]);
    let ready = receive(
        &mut replica,
        1,
        Message::Accept(Accept {
            ballot: first,
            slot: 1,
            batch: value.clone(),
        }),
    );
    assert_eq!(
        ready.writes,
        vec![
            Write::Promise(first),
            Write::Accept {
                slot: 1,
                ballot: first,
                batch: value.clone()
            }
        ]
    );
    assert_eq!(
        messages_to(&ready, 1),
        vec![&Message::Accepted(Accepted {
            ballot: first,
            slot: 1
        })]
    );
    let second = Ballot::new(2, 3);
    let ready = receive(
        &mut replica,
        3,
        Message::Prepare(Prepare {
            ballot: second,
            decided: 0,
        }),
    );
    assert_eq!(
        messages_to(&ready, 3),
        vec![&Message::Promise(Promise {
            ballot: second,
            decided: 0,
            accepted: vec![AcceptedValue {
                slot: 1,
                ballot: first,
                batch: value
            }]
        })]
    );
}

#[test]
fn an_accept_below_the_promise_is_refused() {
    let mut replica = fresh(2, 3);
    receive(
        &mut replica,
        3,
        Message::Prepare(Prepare {
            ballot: Ballot::new(2, 3),
            decided: 0,
        }),
    );
    let ready = receive(
        &mut replica,
        1,
        Message::Accept(Accept {
            ballot: Ballot::new(2, 1),
            slot: 1,
            batch: batch(1, &[]),
        }),
    );
    assert!(ready.writes.is_empty());
    assert!(matches!(messages_to(&ready, 1)[..], [Message::Nack(_)]));
    assert!(replica.accepted().is_empty());
}

#[test]
fn a_new_leader_reproposes_the_highest_ballot_value_and_fills_gaps() {
    // Paxos phase 2a after phase 1: for each slot, the value of the highest ballot among the
    // promises; a slot nobody accepted below a used one gets an empty batch.
    let mut replica = fresh(1, 5);
    replica.start_election();
    let ballot = replica.election.ballot();
    let older = batch(2, &[transfer("old", 1, 2, 1)]);
    let newer = batch(3, &[transfer("new", 1, 3, 1)]);
    let far = batch(3, &[transfer("far", 2, 3, 1)]);
    let promise = |accepted| {
        Message::Promise(Promise {
            ballot,
            decided: 0,
            accepted,
        })
    };
    receive(
        &mut replica,
        2,
        promise(vec![AcceptedValue {
            slot: 1,
            ballot: Ballot::new(0, 2),
            batch: older,
        }]),
    );
    let ready = receive(
        &mut replica,
        3,
        promise(vec![
            AcceptedValue {
                slot: 1,
                ballot: Ballot::new(0, 3),
                batch: newer.clone(),
            },
            AcceptedValue {
                slot: 3,
                ballot: Ballot::new(0, 3),
                batch: far.clone(),
            },
        ]),
    );
    assert_eq!(replica.role(), RoleName::Leader);
    let proposed: Vec<(Height, Batch)> = messages_to(&ready, 4)
        .into_iter()
        .filter_map(|message| match message {
            Message::Accept(accept) => Some((accept.slot, accept.batch.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        proposed,
        vec![(1, newer), (2, batch(1, &[])), (3, far)],
        "highest ballot wins slot 1, slot 2 is a gap, slot 3 is kept"
    );
}

#[test]
fn a_candidate_behind_a_promiser_catches_up_before_proposing() {
    let mut replica = fresh(1, 3);
    replica.start_election();
    let ballot = replica.election.ballot();
    let ready = receive(
        &mut replica,
        2,
        Message::Promise(Promise {
            ballot,
            decided: 4,
            accepted: vec![],
        }),
    );
    assert_eq!(replica.role(), RoleName::Candidate);
    assert_eq!(ready.fetches, vec![Fetch { peer: 2, from: 1 }]);
    assert!(
        !ready
            .all_messages()
            .any(|outgoing| matches!(outgoing.message, Message::Accept(_))),
        "slots 1..=4 are decided elsewhere: nothing may be proposed for them"
    );
}

#[test]
fn the_leader_batches_pending_transfers_into_one_slot() {
    let mut replica = leader(3);
    let mut config = replica.config.clone();
    config.in_flight_slots_max = 1;
    replica.config = config;
    let first = replica.step(Input::Propose(transfer("a", 1, 2, 5)));
    assert_eq!(first.writes[0], Write::AddPending(transfer("a", 1, 2, 5)));
    assert_eq!(messages_to(&first, 2).len(), 1, "slot 1 goes out at once");
    // The window is full: these wait and leave together.
    replica.step(Input::Propose(transfer("b", 2, 3, 5)));
    replica.step(Input::Propose(transfer("c", 3, 1, 5)));
    let ballot = replica.election.ballot();
    own_vote(&mut replica, 1);
    let ready = receive(
        &mut replica,
        2,
        Message::Accepted(Accepted { ballot, slot: 1 }),
    );
    let accept = messages_to(&ready, 2)
        .into_iter()
        .find_map(|message| match message {
            Message::Accept(accept) => Some(accept.clone()),
            _ => None,
        })
        .expect("slot 2 proposed once slot 1 is decided");
    assert_eq!(accept.slot, 2);
    assert_eq!(
        accept.batch.transfers,
        vec![transfer("b", 2, 3, 5), transfer("c", 3, 1, 5)]
    );
}

#[test]
fn the_next_batch_waits_for_the_leaders_own_vote_to_be_durable() {
    // Group commit on the leader: while its vote for slot 1 is being written, what arrives
    // queues up, and goes as one batch once the write is done, even with room in the window.
    let mut replica = leader(3);
    assert!(replica.config.in_flight_slots_max >= 2);
    replica.step(Input::Propose(transfer("a", 1, 2, 5)));
    let waiting = replica.step(Input::Propose(transfer("b", 2, 3, 5)));
    assert!(
        messages_to(&waiting, 2).is_empty(),
        "slot 1's vote is still being written"
    );
    replica.step(Input::Propose(transfer("c", 3, 1, 5)));
    let written = own_vote(&mut replica, 1);
    let accept = messages_to(&written, 2)
        .into_iter()
        .find_map(|message| match message {
            Message::Accept(accept) => Some(accept.clone()),
            _ => None,
        })
        .expect("slot 2 goes once slot 1's vote is durable");
    assert_eq!(accept.slot, 2);
    assert_eq!(
        accept.batch.transfers,
        vec![transfer("b", 2, 3, 5), transfer("c", 3, 1, 5)]
    );
    assert!(
        written.appended_blocks().next().is_none(),
        "one vote of three decides nothing"
    );
}

#[test]
fn a_majority_decides_and_the_client_is_answered() {
    let mut replica = leader(5);
    let ballot = replica.election.ballot();
    replica.step(Input::Propose(transfer("a", 1, 3, 20)));
    let ready = receive(
        &mut replica,
        2,
        Message::Accepted(Accepted { ballot, slot: 1 }),
    );
    assert!(ready.writes.is_empty(), "one of five is not a majority");
    let ready = receive(
        &mut replica,
        4,
        Message::Accepted(Accepted { ballot, slot: 1 }),
    );
    assert!(
        ready.writes.is_empty(),
        "the leader's own vote counts only once it is durable"
    );
    let ready = own_vote(&mut replica, 1);
    let block = ready
        .appended_blocks()
        .next()
        .expect("slot 1 decided")
        .clone();
    assert_eq!(block.height, 1);
    assert_eq!(block.entries[0].outcome, Outcome::Applied);
    assert!(ready
        .writes
        .contains(&Write::RemovePending(TransferId::new("a").unwrap())));
    assert_eq!(
        ready.replies,
        vec![Reply {
            id: TransferId::new("a").unwrap(),
            result: Ok(Committed {
                height: 1,
                block_hash: block.hash,
                outcome: Outcome::Applied
            })
        }]
    );
    assert!(
        messages_to(&ready, 3).is_empty(),
        "no client waits at node 3: it hears with the next Accepts or heartbeat"
    );
    assert_eq!(replica.ledger().balances(), &[80, 100, 120, 100, 100]);
}

#[test]
fn peers_whose_clients_wait_hear_a_decision_at_once_and_the_rest_hear_it_next() {
    let mut replica = leader(5);
    let ballot = replica.election.ballot();
    let decide = |slot| {
        Message::Decide(Decide {
            ballot,
            slot,
            batch: None,
        })
    };
    let accepted = |slot| Message::Accepted(Accepted { ballot, slot });
    let no_decides = |ready: &Ready| {
        ready
            .all_messages()
            .all(|outgoing| !matches!(outgoing.message, Message::Decide(_)))
    };
    // Slot 1: a transfer of the leader's own client. Slot 2: one forwarded by node 4. Both go to
    // every peer: no probe has answered yet.
    replica.step(Input::Propose(transfer("a", 1, 3, 20)));
    receive(
        &mut replica,
        4,
        Message::Forward(Forward {
            transfers: vec![transfer("b", 4, 2, 5)],
            hops: 0,
        }),
    );
    own_vote(&mut replica, 1);
    receive(&mut replica, 2, accepted(1));
    let ready = receive(&mut replica, 3, accepted(1));
    assert_eq!(ready.replies.len(), 1, "slot 1 is decided");
    assert!(no_decides(&ready), "no client waits at a peer on slot 1");
    own_vote(&mut replica, 2);
    receive(&mut replica, 5, accepted(2));
    let ready = receive(&mut replica, 2, accepted(2));
    assert!(ready.replies.is_empty(), "node 4 answers its own client");
    assert_eq!(
        messages_to(&ready, 4),
        vec![&decide(2)],
        "node 4's client waits on slot 2: it hears at once"
    );
    for peer in [2, 3, 5] {
        assert!(messages_to(&ready, peer).is_empty(), "node {peer}");
    }
    // Slot 2 was a probe too (none had answered when it was proposed), and nodes 5 and 2 answered
    // it first: the next Accepts go to them only, with what each was not yet told in front.
    let ready = replica.step(Input::Propose(transfer("c", 1, 5, 1)));
    let accept_3 = |message: &Message| matches!(message, Message::Accept(Accept { slot: 3, .. }));
    for peer in [2, 5] {
        let messages = messages_to(&ready, peer);
        assert_eq!(messages.len(), 3, "node {peer}: {messages:?}");
        assert_eq!(messages[..2], [&decide(1), &decide(2)], "node {peer}");
        assert!(accept_3(messages[2]), "node {peer}: {messages:?}");
    }
    for peer in [3, 4] {
        assert!(
            messages_to(&ready, peer).is_empty(),
            "node {peer} is not asked"
        );
    }
    // With nothing more to propose, what reports our height tells first.
    own_vote(&mut replica, 3);
    receive(&mut replica, 2, accepted(3));
    let ready = receive(&mut replica, 5, accepted(3));
    assert_eq!(ready.replies.len(), 1, "slot 3 is decided");
    // A heartbeat's reply reports our height: the peer hears first what it was reached by, so
    // it never fetches a block only because its Decide waited.
    let ready = receive(
        &mut replica,
        2,
        Message::Heartbeat(Heartbeat {
            round: 1,
            decided: 2,
        }),
    );
    let messages = messages_to(&ready, 2);
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0], &decide(3));
    assert!(matches!(
        messages[1],
        Message::HeartbeatReply(HeartbeatReply { decided: 3, .. })
    ));
    // The tick's heartbeats tell the rest, in front of them, once; a peer that was not asked to
    // accept slot 3 gets its value with the decision.
    let ready = replica.step(Input::Tick);
    assert!(
        !messages_to(&ready, 2)
            .iter()
            .any(|message| matches!(message, Message::Decide(_))),
        "node 2 was told"
    );
    let slot_3 = batch(1, &[transfer("c", 1, 5, 1)]);
    let told = |peer| -> Vec<Message> {
        messages_to(&ready, peer)
            .into_iter()
            .filter(|message| matches!(message, Message::Decide(_)))
            .cloned()
            .collect()
    };
    let with_value = Message::Decide(Decide {
        ballot,
        slot: 3,
        batch: Some(slot_3),
    });
    assert_eq!(told(3), vec![decide(1), decide(2), with_value.clone()]);
    assert_eq!(told(4), vec![decide(1), with_value]);
    assert_eq!(told(5), vec![decide(3)]);
    for peer in 3..=5 {
        assert!(messages_to(&ready, peer)
            .iter()
            .any(|message| matches!(message, Message::Heartbeat(_))));
    }
    assert!(
        no_decides(&replica.step(Input::Tick)),
        "each decision is told once"
    );
}

/// Decides slot `slot` on `replica` (node 1 of 5) with votes from itself and `voters`, in order.
fn decide_with(replica: &mut Replica, slot: Height, voters: &[NodeId]) -> Ready {
    let ballot = replica.election.ballot();
    own_vote(replica, slot);
    let mut ready = Ready::default();
    for voter in voters {
        ready = receive(
            replica,
            *voter,
            Message::Accepted(Accepted { ballot, slot }),
        );
    }
    ready
}

fn accepts_to(ready: &Ready) -> BTreeSet<NodeId> {
    ready
        .all_messages()
        .filter(|outgoing| matches!(outgoing.message, Message::Accept(_)))
        .map(|outgoing| outgoing.to)
        .collect()
}

#[test]
fn a_probe_goes_to_every_peer_and_its_first_voters_are_asked_next() {
    let mut replica = leader(5);
    let ready = replica.step(Input::Propose(transfer("a", 1, 2, 1)));
    assert_eq!(accepts_to(&ready), BTreeSet::from([2, 3, 4, 5]), "a probe");
    let ready = decide_with(&mut replica, 1, &[5, 3]);
    assert_eq!(ready.replies.len(), 1, "slot 1 is decided");
    let ready = replica.step(Input::Propose(transfer("b", 1, 2, 1)));
    assert_eq!(
        accepts_to(&ready),
        BTreeSet::from([3, 5]),
        "the first two voters"
    );
    decide_with(&mut replica, 2, &[3, 5]);
    // Once a tick the next proposal is a probe again, and the order of its votes chooses anew.
    replica.step(Input::Tick);
    let ready = replica.step(Input::Propose(transfer("c", 1, 2, 1)));
    assert_eq!(accepts_to(&ready), BTreeSet::from([2, 3, 4, 5]), "a probe");
    decide_with(&mut replica, 3, &[4, 2, 3]);
    let ready = replica.step(Input::Propose(transfer("d", 1, 2, 1)));
    assert_eq!(accepts_to(&ready), BTreeSet::from([2, 4]));
}

#[test]
fn a_slot_its_asked_peers_leave_undecided_goes_to_every_other_peer() {
    let mut replica = leader(5);
    let ballot = replica.election.ballot();
    let vote = |slot| Message::Accepted(Accepted { ballot, slot });
    replica.step(Input::Propose(transfer("a", 1, 2, 1)));
    decide_with(&mut replica, 1, &[2, 3]);
    let ready = replica.step(Input::Propose(transfer("b", 1, 2, 1)));
    assert_eq!(accepts_to(&ready), BTreeSet::from([2, 3]));
    own_vote(&mut replica, 2);
    receive(&mut replica, 2, vote(2));
    // Node 3 never answers: at the next tick every peer that has not voted is asked.
    assert_eq!(
        accepts_to(&replica.step(Input::Tick)),
        BTreeSet::from([3, 4, 5])
    );
    let ready = receive(&mut replica, 4, vote(2));
    assert_eq!(ready.replies.len(), 1, "slot 2 is decided without node 3");
}

#[test]
fn an_asked_peer_that_disconnects_is_replaced_at_once() {
    let mut replica = leader(5);
    let ballot = replica.election.ballot();
    let vote = |slot| Message::Accepted(Accepted { ballot, slot });
    replica.step(Input::Propose(transfer("a", 1, 2, 1)));
    decide_with(&mut replica, 1, &[2, 3]);
    replica.step(Input::Propose(transfer("b", 1, 2, 1)));
    own_vote(&mut replica, 2);
    let ready = replica.step(Input::Disconnected(3));
    assert_eq!(
        accepts_to(&ready),
        BTreeSet::from([4, 5]),
        "slot 2 goes to the peers not asked for it"
    );
    let ready = receive(&mut replica, 5, vote(2));
    assert!(ready.replies.is_empty(), "two votes of five");
    let ready = receive(&mut replica, 2, vote(2));
    assert_eq!(ready.replies.len(), 1, "slot 2 is decided without node 3");
    let ready = replica.step(Input::Propose(transfer("c", 1, 2, 1)));
    assert_eq!(accepts_to(&ready), BTreeSet::from([2, 3, 4, 5]), "a probe");
    // A peer that was not asked disconnecting changes nothing.
    decide_with(&mut replica, 3, &[4, 5]);
    replica.step(Input::Propose(transfer("d", 1, 2, 1)));
    assert!(accepts_to(&replica.step(Input::Disconnected(2))).is_empty());
}

#[test]
fn a_peer_that_disconnects_during_a_probe_is_not_asked() {
    let mut replica = leader(5);
    let ballot = replica.election.ballot();
    let vote = |slot| Message::Accepted(Accepted { ballot, slot });
    replica.step(Input::Propose(transfer("a", 1, 2, 1)));
    own_vote(&mut replica, 1);
    receive(&mut replica, 2, vote(1));
    replica.step(Input::Disconnected(2));
    let ready = receive(&mut replica, 3, vote(1));
    assert_eq!(
        ready.replies.len(),
        1,
        "node 2's vote still counts towards slot 1"
    );
    // Only node 3 answered the probe among the peers still there: the next slot is a probe too.
    let ready = replica.step(Input::Propose(transfer("b", 1, 2, 1)));
    assert_eq!(accepts_to(&ready), BTreeSet::from([2, 3, 4, 5]));
    decide_with(&mut replica, 2, &[4, 3]);
    let ready = replica.step(Input::Propose(transfer("c", 1, 2, 1)));
    assert_eq!(accepts_to(&ready), BTreeSet::from([3, 4]));
}

#[test]
fn values_the_peers_not_asked_lack_are_told_before_they_pile_up() {
    let mut replica = leader(5);
    replica.step(Input::Propose(transfer("probe", 1, 2, 1)));
    decide_with(&mut replica, 1, &[2, 3]);
    // One transfer per slot, no tick: node 4 is not asked, and hears nothing until the values
    // it lacks pass the bound; then it hears every one at once.
    for slot in 2..=(UNTOLD_TRANSFERS_MAX as Height + 2) {
        replica.step(Input::Propose(transfer(&format!("t{slot}"), 1, 2, 1)));
        let ready = decide_with(&mut replica, slot, &[2, 3]);
        assert_eq!(ready.replies.len(), 1, "slot {slot} is decided");
        let told = messages_to(&ready, 4)
            .into_iter()
            .filter(|message| matches!(message, Message::Decide(Decide { batch: Some(_), .. })))
            .count();
        let untold = slot as usize - 1;
        if untold <= UNTOLD_TRANSFERS_MAX {
            assert_eq!(told, 0, "slot {slot}");
        } else {
            assert_eq!(
                told, untold,
                "slot {slot}: every value node 4 lacks, at once"
            );
            return;
        }
    }
    panic!("node 4 was never told");
}

#[test]
fn a_decide_far_above_the_head_is_not_kept_but_fetched() {
    let mut replica = fresh(2, 5);
    let far = acceptor::ACCEPT_AHEAD_MAX + 1;
    let ready = receive(
        &mut replica,
        1,
        Message::Decide(Decide {
            ballot: Ballot::new(1, 1),
            slot: far,
            batch: Some(batch(1, &[])),
        }),
    );
    assert!(replica.decided.is_empty(), "nothing held in memory");
    assert_eq!(ready.fetches, vec![Fetch { peer: 1, from: 1 }]);
    let near = acceptor::ACCEPT_AHEAD_MAX;
    receive(
        &mut replica,
        1,
        Message::Decide(Decide {
            ballot: Ballot::new(1, 1),
            slot: near,
            batch: Some(batch(1, &[])),
        }),
    );
    assert!(replica.decided.contains_key(&near));
}

#[test]
fn a_node_not_asked_learns_the_value_from_its_leaders_decide_only() {
    let mut replica = fresh(2, 5);
    let ballot = Ballot::new(1, 1);
    let value = batch(1, &[transfer("a", 1, 2, 5)]);
    let decide = Message::Decide(Decide {
        ballot,
        slot: 1,
        batch: Some(value.clone()),
    });
    // From a node that does not own the ballot: refused, nothing learned, nothing fetched.
    let ready = receive(&mut replica, 3, decide.clone());
    assert_eq!(replica.ledger().height(), 0);
    assert!(ready.fetches.is_empty());
    assert!(ready
        .events
        .iter()
        .any(|event| matches!(event, Event::MessageRejected { from: 3, .. })));
    let ready = receive(&mut replica, 1, decide);
    assert_eq!(replica.ledger().height(), 1);
    assert_eq!(replica.ledger().balances(), &[95, 105, 100, 100, 100]);
    assert!(ready.fetches.is_empty(), "nothing to fetch");
    assert!(ready
        .writes
        .iter()
        .any(|write| matches!(write, Write::AppendBlock(block) if block.height == 1)));
    // A decision above a gap is kept, and the blocks in between are fetched, from the leader.
    let ready = receive(
        &mut replica,
        1,
        Message::Decide(Decide {
            ballot,
            slot: 3,
            batch: Some(batch(1, &[])),
        }),
    );
    assert_eq!(replica.ledger().height(), 1);
    assert_eq!(ready.fetches, vec![Fetch { peer: 1, from: 2 }]);
}

#[test]
fn a_follower_learns_a_decided_value_it_accepted() {
    let mut replica = fresh(2, 3);
    let ballot = Ballot::new(1, 1);
    let value = batch(1, &[transfer("a", 1, 2, 5)]);
    receive(
        &mut replica,
        1,
        Message::Accept(Accept {
            ballot,
            slot: 1,
            batch: value,
        }),
    );
    let ready = receive(
        &mut replica,
        1,
        Message::Decide(Decide {
            ballot,
            slot: 1,
            batch: None,
        }),
    );
    assert_eq!(ready.appended_blocks().count(), 1);
    assert!(replica.accepted().is_empty());
    // A decision for a value it did not accept makes it fetch instead.
    let ready = receive(
        &mut replica,
        1,
        Message::Decide(Decide {
            ballot,
            slot: 2,
            batch: None,
        }),
    );
    assert_eq!(ready.fetches, vec![Fetch { peer: 1, from: 2 }]);
}

#[test]
fn invalid_transfers_are_refused_at_once_and_change_nothing() {
    let mut replica = fresh(1, 5);
    let ready = replica.step(Input::Propose(transfer("x", 1, 9, 5)));
    assert!(ready.writes.is_empty());
    assert_eq!(ready.all_messages().count(), 0);
    assert_eq!(
        ready.replies,
        vec![Reply {
            id: TransferId::new("x").unwrap(),
            result: Err(ProposeError::Invalid(Rejection::UnknownAccount {
                account: 9,
                accounts: 5
            }))
        }]
    );
    let ready = replica.step(Input::Propose(transfer("y", 2, 2, 5)));
    assert_eq!(
        ready.replies[0].result,
        Err(ProposeError::Invalid(Rejection::SameAccount { account: 2 }))
    );
    let ready = replica.step(Input::Propose(transfer("z", 2, 3, 0)));
    assert_eq!(
        ready.replies[0].result,
        Err(ProposeError::Invalid(Rejection::ZeroAmount))
    );
    assert_eq!(replica.pending().count(), 0);
}

#[test]
fn a_retried_id_gets_the_first_outcome_and_a_reused_id_is_refused() {
    let mut replica = leader(3);
    let ballot = replica.election.ballot();
    replica.step(Input::Propose(transfer("a", 1, 2, 5)));
    own_vote(&mut replica, 1);
    receive(
        &mut replica,
        2,
        Message::Accepted(Accepted { ballot, slot: 1 }),
    );
    let retry = replica.step(Input::Propose(transfer("a", 1, 2, 5)));
    assert!(retry.writes.is_empty());
    assert_eq!(
        retry.replies[0].result,
        Ok(Committed {
            height: 1,
            block_hash: replica.ledger().head_hash(),
            outcome: Outcome::Applied
        })
    );
    let reuse = replica.step(Input::Propose(transfer("a", 1, 3, 7)));
    assert!(matches!(
        reuse.replies[0].result,
        Err(ProposeError::IdConflict { amount: 5, .. })
    ));
    assert_eq!(replica.ledger().balances(), &[95, 105, 100]);
}

#[test]
fn a_follower_forwards_to_the_leader_it_follows() {
    let mut replica = fresh(2, 3);
    // Two rounds of heartbeats in which node 3 reports itself quorum-connected with a high ballot.
    replica.step(Input::Tick);
    let reply = |round| HeartbeatReply {
        round,
        ballot: Ballot::new(4, 3),
        quorum_connected: true,
        leader: Some(Ballot::new(4, 3)),
        decided: 0,
    };
    receive(&mut replica, 3, Message::HeartbeatReply(reply(1)));
    replica.step(Input::Tick);
    assert_eq!(replica.status().leader, Some(Ballot::new(4, 3)));
    let ready = replica.step(Input::Propose(transfer("a", 2, 1, 5)));
    assert_eq!(
        ready.writes,
        vec![Write::AddPending(transfer("a", 2, 1, 5))]
    );
    assert_eq!(
        messages_to(&ready, 3),
        vec![&Message::Forward(Forward {
            transfers: vec![transfer("a", 2, 1, 5)],
            hops: 0
        })]
    );
}

#[test]
fn a_quorum_connected_node_takes_over_after_the_election_timeout() {
    let mut replica = fresh(1, 3);
    let timeout = replica.election.timeout();
    let mut elected_at = None;
    for tick in 1..=timeout + 2 {
        let ready = replica.step(Input::Tick);
        let round = replica.election.round();
        // Node 2 answers every heartbeat, so node 1 is quorum-connected.
        receive(
            &mut replica,
            2,
            Message::HeartbeatReply(HeartbeatReply {
                round,
                ballot: Ballot::new(0, 2),
                quorum_connected: false,
                leader: None,
                decided: 0,
            }),
        );
        if ready
            .events
            .iter()
            .any(|event| matches!(event, Event::ElectionStarted { .. }))
        {
            elected_at = Some(tick);
            break;
        }
    }
    let elected_at = elected_at.expect("an election within the timeout");
    assert!(elected_at >= timeout, "no election before the timeout");
    assert_eq!(replica.role(), RoleName::Candidate);
    assert!(replica.promised().round >= 1);
}

#[test]
fn a_node_that_hears_no_majority_never_starts_an_election() {
    let mut replica = fresh(1, 5);
    for _ in 0..100 {
        let ready = replica.step(Input::Tick);
        assert!(!ready
            .events
            .iter()
            .any(|event| matches!(event, Event::ElectionStarted { .. })));
    }
    assert_eq!(replica.role(), RoleName::Follower);
}

#[test]
fn a_higher_ballot_makes_a_leader_step_down_and_follow_it() {
    let mut replica = leader(3);
    let ballot = replica.election.ballot();
    let ready = receive(
        &mut replica,
        3,
        Message::Nack(Nack {
            ballot,
            promised: Ballot::new(9, 3),
        }),
    );
    assert_eq!(replica.role(), RoleName::Follower);
    assert!(ready
        .events
        .iter()
        .any(|event| matches!(event, Event::SteppedDown { .. })));
    assert_eq!(replica.status().leader, Some(Ballot::new(9, 3)));
}

#[test]
fn a_leader_that_steps_down_first_tells_what_it_decided() {
    let mut replica = leader(3);
    let ballot = replica.election.ballot();
    replica.step(Input::Propose(transfer("a", 1, 3, 20)));
    own_vote(&mut replica, 1);
    let decided = receive(
        &mut replica,
        2,
        Message::Accepted(Accepted { ballot, slot: 1 }),
    );
    assert_eq!(decided.replies.len(), 1, "slot 1 is decided");
    let ready = receive(
        &mut replica,
        2,
        Message::Nack(Nack {
            ballot,
            promised: Ballot::new(9, 2),
        }),
    );
    assert_eq!(replica.role(), RoleName::Follower);
    for peer in [2, 3] {
        assert_eq!(
            messages_to(&ready, peer),
            vec![&Message::Decide(Decide {
                ballot,
                slot: 1,
                batch: None,
            })],
            "node {peer}"
        );
    }
}

#[test]
fn fetched_blocks_that_do_not_link_are_refused() {
    let mut source = Ledger::genesis(3, 100);
    let good = source.apply(1, &[transfer("a", 1, 2, 5)]);
    let mut bad = good.clone();
    bad.prev_hash = Hash::ZERO;
    let mut replica = fresh(2, 3);
    let ready = replica.step(Input::Blocks {
        from: 1,
        blocks: vec![bad],
    });
    assert!(ready.writes.is_empty());
    assert!(matches!(
        ready.events[..],
        [Event::ChainRejected { peer: 1, .. }]
    ));
    let ready = replica.step(Input::Blocks {
        from: 1,
        blocks: vec![good.clone()],
    });
    assert_eq!(
        ready.writes,
        vec![
            Write::AppendBlock(good),
            Write::Snapshot(replica.ledger().snapshot())
        ]
    );
    assert_eq!(replica.ledger().height(), 1);
}

#[test]
fn messages_from_outside_the_cluster_are_dropped() {
    let mut replica = fresh(1, 3);
    let prepare = Message::Prepare(Prepare {
        ballot: Ballot::new(1, 2),
        decided: 0,
    });
    for from in [0, 1, 4] {
        let ready = receive(&mut replica, from, prepare.clone());
        assert!(ready.writes.is_empty() && ready.all_messages().count() == 0);
        assert!(matches!(ready.events[..], [Event::MessageRejected { .. }]));
    }
    let impossible = Message::Prepare(Prepare {
        ballot: Ballot::new(1, 7),
        decided: 0,
    });
    let ready = receive(&mut replica, 2, impossible);
    assert!(ready.writes.is_empty() && ready.all_messages().count() == 0);
    assert_eq!(replica.promised(), Ballot::ZERO);
    let heartbeat = Message::Heartbeat(Heartbeat {
        round: 1,
        decided: 0,
    });
    assert_eq!(receive(&mut replica, 2, heartbeat).messages.len(), 1);
}

#[test]
fn only_messages_that_vouch_for_fresh_writes_wait_for_them() {
    // Persist before you speak: a promise and a vote must be durable before they are sent.
    let mut replica = fresh(2, 3);
    let ballot = Ballot::new(3, 1);
    let ready = receive(
        &mut replica,
        1,
        Message::Prepare(Prepare { ballot, decided: 0 }),
    );
    assert!(ready.messages.is_empty());
    assert!(matches!(
        ready.messages_after_writes[..],
        [Outgoing {
            to: 1,
            message: Message::Promise(_)
        }]
    ));
    // The leader's Accepts leave at once, while it writes its own vote; that vote comes back to
    // it only once durable. A decision, and the client's acknowledgement, rest on votes that were
    // durable before they were counted: they go at once.
    let mut leader = leader(3);
    let ballot = leader.election.ballot();
    let proposed = leader.step(Input::Propose(transfer("a", 1, 2, 5)));
    let accepts = proposed
        .messages
        .iter()
        .filter(|outgoing| matches!(outgoing.message, Message::Accept(_)))
        .count();
    assert_eq!(accepts, 2);
    assert_eq!(
        proposed.messages_after_writes,
        vec![Outgoing {
            to: 1,
            message: Message::Accepted(Accepted { ballot, slot: 1 })
        }]
    );
    own_vote(&mut leader, 1);
    let decided = receive(
        &mut leader,
        2,
        Message::Accepted(Accepted { ballot, slot: 1 }),
    );
    assert!(decided.messages_after_writes.is_empty());
    assert!(
        decided.messages.is_empty(),
        "no client waits at a peer: the Decide rides with the next Accepts"
    );
    assert_eq!(decided.replies.len(), 1);
    // A refusal waits for nothing either.
    let refused = leader.step(Input::Propose(transfer("b", 1, 9, 5)));
    assert_eq!(refused.replies.len(), 1);
}

#[test]
fn a_restarted_acceptor_keeps_its_promise_and_votes() {
    let mut storage = crate::storage::MemoryStorage::new();
    storage
        .write(&[Write::AppendBlock(Block::genesis(3, 100))])
        .unwrap();
    let mut replica = Replica::new(
        Config::new(2, 3),
        crate::storage::restore(&storage, 3, 100).unwrap(),
        1,
    )
    .unwrap();
    let ballot = Ballot::new(4, 1);
    let ready = receive(
        &mut replica,
        1,
        Message::Accept(Accept {
            ballot,
            slot: 1,
            batch: batch(1, &[]),
        }),
    );
    storage.write(&ready.writes).unwrap();
    drop(replica);
    let mut replica = Replica::new(
        Config::new(2, 3),
        crate::storage::restore(&storage, 3, 100).unwrap(),
        2,
    )
    .unwrap();
    assert_eq!(replica.promised(), ballot);
    assert_eq!(replica.accepted()[&1].0, ballot);
    let ready = receive(
        &mut replica,
        3,
        Message::Prepare(Prepare {
            ballot: Ballot::new(4, 1),
            decided: 0,
        }),
    );
    assert!(
        ready.writes.is_empty(),
        "the same ballot is not a new promise"
    );
}

#[test]
fn an_impossible_ballot_is_refused_and_changes_nothing() {
    // A round no correct node reaches (a forged Prepare) must not become a promise: raising a
    // ballot above it would overflow, and the node would be stuck with it for good.
    let mut replica = fresh(2, 3);
    for round in [u64::MAX, crate::types::ROUND_MAX] {
        let ready = receive(
            &mut replica,
            1,
            Message::Prepare(Prepare {
                ballot: Ballot::new(round, 1),
                decided: 0,
            }),
        );
        assert!(ready.writes.is_empty());
        assert_eq!(ready.all_messages().count(), 0);
        assert!(matches!(ready.events[..], [Event::MessageRejected { .. }]));
    }
    for slot in [0, u64::MAX] {
        let ready = receive(
            &mut replica,
            1,
            Message::Accept(Accept {
                ballot: Ballot::new(1, 1),
                slot,
                batch: batch(1, &[]),
            }),
        );
        assert!(ready.writes.is_empty(), "slot {slot}");
        assert!(matches!(ready.events[..], [Event::MessageRejected { .. }]));
    }
    let ready = receive(
        &mut replica,
        1,
        Message::Decide(Decide {
            ballot: Ballot::new(1, 1),
            slot: u64::MAX,
            batch: None,
        }),
    );
    assert!(ready.fetches.is_empty());
    assert_eq!(replica.promised(), Ballot::ZERO);
    // The largest possible ballot still leaves room to raise above it.
    assert!(Ballot::above([crate::types::ROUND_MAX - 1], 2).is_some());
}

#[test]
fn a_promise_carries_only_what_the_candidate_lacks() {
    let mut replica = fresh(2, 3);
    for slot in 1..=3 {
        receive(
            &mut replica,
            1,
            Message::Accept(Accept {
                ballot: Ballot::new(1, 1),
                slot,
                batch: batch(1, &[transfer(&format!("t{slot}"), 1, 2, 1)]),
            }),
        );
    }
    let ready = receive(
        &mut replica,
        3,
        Message::Prepare(Prepare {
            ballot: Ballot::new(2, 3),
            decided: 2,
        }),
    );
    let Some(Message::Promise(promise)) = messages_to(&ready, 3).first().copied() else {
        panic!("a promise");
    };
    let slots: Vec<Height> = promise.accepted.iter().map(|value| value.slot).collect();
    assert_eq!(slots, vec![3], "slots 1 and 2 are decided at the candidate");
}

#[test]
fn an_acceptor_far_behind_declines_to_vote_and_catches_up() {
    let mut replica = fresh(2, 3);
    let far = acceptor::ACCEPT_AHEAD_MAX + 1;
    let ready = receive(
        &mut replica,
        1,
        Message::Accept(Accept {
            ballot: Ballot::new(1, 1),
            slot: far,
            batch: batch(1, &[]),
        }),
    );
    assert!(replica.accepted().is_empty(), "nothing held that far ahead");
    assert!(messages_to(&ready, 1).is_empty(), "no vote");
    assert_eq!(ready.fetches, vec![Fetch { peer: 1, from: 1 }]);
}

/// Node 1 of 3 hears node `peer` report `height` in a heartbeat.
fn hear_height(replica: &mut Replica, peer: NodeId, height: Height) -> Ready {
    receive(
        replica,
        peer,
        Message::Heartbeat(Heartbeat {
            round: 1,
            decided: height,
        }),
    )
}

#[test]
fn a_fetch_that_fails_goes_to_another_peer_next() {
    let mut replica = fresh(1, 3);
    let first = hear_height(&mut replica, 2, 9);
    assert_eq!(first.fetches, vec![Fetch { peer: 2, from: 1 }]);
    hear_height(&mut replica, 3, 7);
    // Node 2 never answers; after the fetch timeout the next fetch goes to node 3, even though
    // node 2 keeps reporting the greater height (its heartbeats reach us, our requests do not).
    let mut fetches = Vec::new();
    for _ in 0..=replica.config.fetch_timeout_ticks {
        fetches.extend(replica.step(Input::Tick).fetches);
        hear_height(&mut replica, 2, 9);
        hear_height(&mut replica, 3, 7);
    }
    assert_eq!(fetches.last(), Some(&Fetch { peer: 3, from: 1 }));
    // An empty answer is a failure too: the next fetch goes elsewhere at once.
    let ready = replica.step(Input::Blocks {
        from: 3,
        blocks: vec![],
    });
    assert!(ready.fetches.iter().all(|fetch| fetch.peer != 3));
}

#[test]
fn catch_up_asks_only_peers_heard_recently() {
    let mut replica = fresh(1, 3);
    hear_height(&mut replica, 2, 9);
    replica.step(Input::Disconnected(2));
    for _ in 0..10 {
        let ready = replica.step(Input::Tick);
        assert!(
            ready.fetches.iter().all(|fetch| fetch.peer != 2),
            "node 2's connection closed: it is not asked"
        );
    }
}

#[test]
fn a_candidate_drops_a_promise_whose_blocks_it_cannot_get() {
    // Finding 1 of the liveness issue: the candidate counted node 2's promise, which says slots up
    // to 4 are decided; node 2 then goes away. The candidate must not wait on it for good.
    let mut replica = fresh(1, 5);
    replica.start_election();
    let ballot = replica.election.ballot();
    let promise = |decided| {
        Message::Promise(Promise {
            ballot,
            decided,
            accepted: vec![],
        })
    };
    receive(&mut replica, 2, promise(4));
    let ready = receive(&mut replica, 3, promise(0));
    assert_eq!(replica.role(), RoleName::Candidate);
    assert_eq!(ready.fetches, vec![Fetch { peer: 2, from: 1 }]);
    replica.step(Input::Disconnected(2));
    // Without node 2's promise there is no majority (1, 3): one more promise finishes Phase 1.
    assert_eq!(replica.role(), RoleName::Candidate);
    receive(&mut replica, 4, promise(0));
    assert_eq!(replica.role(), RoleName::Leader);
}

#[test]
fn a_candidate_that_cannot_finish_starts_over() {
    // Its Prepares are lost, but it hears a majority: after an election timeout it runs again
    // with a higher ballot instead of waiting on the promises it has not got.
    let mut replica = fresh(1, 5);
    replica.start_election();
    let first = replica.election.ballot();
    let mut ballots = Vec::new();
    for _ in 0..=replica.config.election_timeout_ticks_max + 1 {
        let round = replica.election.round();
        for peer in [2, 3] {
            receive(
                &mut replica,
                peer,
                Message::HeartbeatReply(HeartbeatReply {
                    round,
                    ballot: Ballot::new(0, peer),
                    quorum_connected: false,
                    leader: None,
                    decided: 0,
                }),
            );
        }
        let ready = replica.step(Input::Tick);
        for event in &ready.events {
            if let Event::ElectionStarted { ballot } = event {
                ballots.push(*ballot);
            }
        }
    }
    assert_eq!(replica.role(), RoleName::Candidate);
    assert!(
        ballots.iter().any(|ballot| *ballot > first),
        "a new Phase 1 with a higher ballot within an election timeout: {ballots:?}"
    );
}

#[test]
fn a_closed_connection_to_the_leader_starts_an_election_at_once() {
    let mut replica = fresh(2, 3);
    // Node 2 is quorum-connected and follows node 1.
    receive(
        &mut replica,
        1,
        Message::Prepare(Prepare {
            ballot: Ballot::new(1, 1),
            decided: 0,
        }),
    );
    replica.election.quorum_connected_for_tests();
    let ready = replica.step(Input::Disconnected(1));
    assert!(ready
        .events
        .iter()
        .any(|event| matches!(event, Event::ElectionStarted { .. })));
    assert_eq!(replica.role(), RoleName::Candidate);
    // A closed connection to anyone else changes nothing.
    let mut follower = fresh(2, 3);
    receive(
        &mut follower,
        1,
        Message::Prepare(Prepare {
            ballot: Ballot::new(1, 1),
            decided: 0,
        }),
    );
    follower.election.quorum_connected_for_tests();
    let ready = follower.step(Input::Disconnected(3));
    assert!(ready.events.is_empty());
}

/// Node 5 of 5 runs, then hears only node 2, which keeps reporting node 5's ballot as the
/// leader it heard (as a stale report would), for three election timeouts. Returns the ballot it
/// first ran with, the ballots it started elections with afterwards, and its role at the end.
fn candidate_that_hears_one_peer(planted_bugs: PlantedBugs) -> (Ballot, Vec<Ballot>, RoleName) {
    let mut config = Config::new(5, 5);
    config.planted_bugs = planted_bugs;
    let restored = Restored {
        acceptor: AcceptorState::default(),
        ledger: Ledger::genesis(5, 100),
    };
    let mut replica = Replica::new(config, restored, 7).unwrap();
    replica.election.quorum_connected_for_tests();
    replica.start_election();
    let first = replica.election.ballot();
    let mut ballots = Vec::new();
    for _ in 0..3 * replica.config.election_timeout_ticks_max {
        let round = replica.election.round();
        receive(
            &mut replica,
            2,
            Message::HeartbeatReply(HeartbeatReply {
                round,
                ballot: Ballot::new(0, 2),
                quorum_connected: true,
                leader: Some(first),
                decided: 0,
            }),
        );
        let ready = replica.step(Input::Tick);
        for event in &ready.events {
            if let Event::ElectionStarted { ballot } = event {
                ballots.push(*ballot);
            }
        }
    }
    (first, ballots, replica.role())
}

#[test]
fn a_candidate_that_no_longer_hears_a_majority_stops_running() {
    // Node 5 cannot win; running again with higher ballots would only depose, each time, the
    // leader the other nodes elect. It must go back to following within an election timeout and
    // never start a higher ballot.
    let (_, ballots, role) = candidate_that_hears_one_peer(PlantedBugs::default());
    assert!(ballots.is_empty(), "ran again with {ballots:?}");
    assert_eq!(role, RoleName::Follower);
}

/// The planted bug behind the lasting mode's finding on 7 nodes (see `PlantedBug`) is caught by
/// the case built above. (The simulator found it at one seed of its random lasting mode; that
/// seed stopped showing it when the leader began to hold back Decides, so the case is kept here,
/// built exactly, where no change of message pattern can hide it.)
#[cfg(feature = "planted-bugs")]
#[test]
fn a_candidate_that_keeps_running_without_a_majority_is_caught() {
    let (first, ballots, _) = candidate_that_hears_one_peer(PlantedBugs::only(
        crate::bugs::PlantedBug::RerunWithoutQuorum,
    ));
    assert!(
        !ballots.is_empty(),
        "the planted bug went unnoticed: it never ran again"
    );
    assert!(
        ballots.iter().all(|ballot| *ballot > first),
        "it ran again with higher ballots than {first}: {ballots:?}"
    );
}
