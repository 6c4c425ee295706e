//! The simulated world as the host loop sees it: [`SimEnvironment`] implements the node's
//! [`Environment`] on the simulated network, disk and clients, and feeds every observation to
//! the checkers.

use benmo_node::host::{Durability, Environment, TransferResult};
use benmo_paxos::{Block, Event, Height, Message, NodeId, Transfer, TransferId, Write};

use crate::checkers::Violation;
use crate::world::{describe_messages, Packet, World};

/// A client waiting at a node for its transfer.
#[derive(Debug)]
pub struct SimWaiter {
    /// The client.
    pub client: usize,
    /// The transfer it sent.
    pub transfer: Transfer,
}

/// Node `id`'s view of the world during one batch of its host.
pub struct SimEnvironment<'a> {
    world: &'a mut World,
    id: NodeId,
    violation: Option<Violation>,
}

impl<'a> SimEnvironment<'a> {
    pub(crate) fn new(world: &'a mut World, id: NodeId) -> SimEnvironment<'a> {
        SimEnvironment {
            world,
            id,
            violation: None,
        }
    }

    /// The first invariant the batch broke, if any.
    pub(crate) fn into_violation(self) -> Option<Violation> {
        self.violation
    }

    fn record(&mut self, result: Result<(), Violation>) {
        if let Err(violation) = result {
            self.violation.get_or_insert(violation);
        }
    }
}

impl Environment for SimEnvironment<'_> {
    type Waiter = SimWaiter;

    fn send(&mut self, peer: NodeId, messages: Vec<Message>) {
        for message in &messages {
            self.world.promises.observe_sent(self.id, message);
        }
        let id = self.id;
        self.world.note(|| {
            let text = describe_messages(&messages);
            if text.is_empty() {
                String::new()
            } else {
                format!("node {id} -> {peer}: {text}")
            }
        });
        self.world.send(self.id, peer, Packet::Frame(messages));
    }

    fn fetch(&mut self, peer: NodeId, from: Height) {
        let id = self.id;
        self.world
            .note(|| format!("node {id}: fetch from {peer} at {from}"));
        if self.world.fetch_requested(self.id, peer) {
            self.world
                .send(self.id, peer, Packet::FetchRequest { from });
        }
    }

    fn write(&mut self, writes: Vec<Write>, durability: Durability) {
        self.world.start_write(self.id, writes, durability);
    }

    fn answer(&mut self, waiter: SimWaiter, result: TransferResult) {
        self.world.answer(self.id, waiter, result);
    }

    fn taken(&mut self, _waiter: &mut SimWaiter, id: &TransferId) {
        self.world.claims.claim(self.id, id);
    }

    fn appended(&mut self, block: &Block) {
        let id = self.id;
        let world = &mut *self.world;
        world.nodes[id as usize - 1]
            .decided
            .insert(block.height, block.clone());
        let result = world
            .links
            .observe(id, block)
            .and_then(|()| world.chosen.check_block(id, block))
            .and_then(|()| world.agreement.observe(id, block))
            .and_then(|new| {
                if new {
                    world.model.apply(block, &world.submitted)
                } else {
                    Ok(())
                }
            });
        self.record(result);
    }

    fn event(&mut self, event: &Event) {
        self.world.note_role(self.id, event);
        let id = self.id;
        if !matches!(event, Event::MessageRejected { .. }) {
            self.world.note(|| format!("node {id}: {event:?}"));
        }
    }
}
