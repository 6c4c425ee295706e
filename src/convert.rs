//! Protobuf messages to core types and back. Everything that arrives over gRPC passes through
//! here, so a malformed message is refused at the edge with a reason and never reaches the core.

use benmo_paxos::message::{
    Accept, Accepted, AcceptedValue, Decide, Forward, Heartbeat, HeartbeatReply, Nack, Prepare,
    Promise,
};
use benmo_paxos::{
    Ballot, Batch, Block, Entry, Hash, Message, NodeId, Outcome, Rejection, Signature, Transfer,
    TransferId,
};

use crate::proto;

/// A protobuf message that does not describe a valid core value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A required field is unset.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A transfer id breaks the id rules.
    #[error("{0}")]
    TransferId(#[from] benmo_paxos::ledger::TransferIdError),
    /// A signature is neither empty nor 64 bytes.
    #[error("a transfer's signature is 64 bytes (ed25519), got {length}")]
    SignatureLength {
        /// Its length.
        length: usize,
    },
    /// A field does not parse.
    #[error("field {0} is malformed")]
    Malformed(&'static str),
    /// A hash is not 32 bytes.
    #[error("{field} must be 32 bytes, got {length}")]
    HashLength {
        /// Which field.
        field: &'static str,
        /// Its length.
        length: usize,
    },
}

/// The type the peer RPCs identify their caller with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The calling node.
    pub node: NodeId,
    /// The genesis hash of the caller's cluster.
    pub genesis_hash: Hash,
}

fn required<T>(value: Option<T>, field: &'static str) -> Result<T, ConvertError> {
    value.ok_or(ConvertError::Missing(field))
}

/// Parses a 32-byte hash field.
pub fn hash(bytes: &[u8], field: &'static str) -> Result<Hash, ConvertError> {
    let array: [u8; 32] = bytes.try_into().map_err(|_| ConvertError::HashLength {
        field,
        length: bytes.len(),
    })?;
    Ok(Hash(array))
}

impl From<Ballot> for proto::Ballot {
    fn from(ballot: Ballot) -> proto::Ballot {
        proto::Ballot {
            round: ballot.round,
            node: ballot.node,
        }
    }
}

impl From<proto::Ballot> for Ballot {
    fn from(ballot: proto::Ballot) -> Ballot {
        Ballot::new(ballot.round, ballot.node)
    }
}

fn ballot(value: Option<proto::Ballot>, field: &'static str) -> Result<Ballot, ConvertError> {
    required(value, field).map(Ballot::from)
}

impl From<&Transfer> for proto::Transfer {
    fn from(transfer: &Transfer) -> proto::Transfer {
        proto::Transfer {
            id: transfer.id.as_str().to_string(),
            from: transfer.from,
            to: transfer.to,
            amount: transfer.amount,
            signature: transfer
                .signature
                .as_ref()
                .map(|signature| signature.as_bytes().to_vec())
                .unwrap_or_default(),
        }
    }
}

impl TryFrom<proto::Transfer> for Transfer {
    type Error = ConvertError;

    fn try_from(transfer: proto::Transfer) -> Result<Transfer, ConvertError> {
        let signature = match transfer.signature.len() {
            0 => None,
            _ => Some(Signature::new(transfer.signature[..].try_into().map_err(
                |_| ConvertError::SignatureLength {
                    length: transfer.signature.len(),
                },
            )?)),
        };
        Ok(Transfer {
            id: TransferId::new(transfer.id)?,
            from: transfer.from,
            to: transfer.to,
            amount: transfer.amount,
            signature,
        })
    }
}

fn transfers(list: Vec<proto::Transfer>) -> Result<Vec<Transfer>, ConvertError> {
    list.into_iter().map(Transfer::try_from).collect()
}

impl From<&Batch> for proto::Batch {
    fn from(batch: &Batch) -> proto::Batch {
        proto::Batch {
            proposer: batch.proposer,
            transfers: batch.transfers.iter().map(proto::Transfer::from).collect(),
        }
    }
}

impl TryFrom<proto::Batch> for Batch {
    type Error = ConvertError;

    fn try_from(batch: proto::Batch) -> Result<Batch, ConvertError> {
        Ok(Batch {
            proposer: batch.proposer,
            transfers: transfers(batch.transfers)?,
        })
    }
}

impl From<&Rejection> for proto::Rejection {
    fn from(rejection: &Rejection) -> proto::Rejection {
        use proto::rejection::Reason;
        let reason = match *rejection {
            Rejection::UnknownAccount { account, accounts } => {
                Reason::UnknownAccount(proto::UnknownAccount { account, accounts })
            }
            Rejection::SameAccount { account } => {
                Reason::SameAccount(proto::SameAccount { account })
            }
            Rejection::ZeroAmount => Reason::ZeroAmount(proto::ZeroAmount {}),
            Rejection::InsufficientFunds {
                account,
                balance,
                amount,
            } => Reason::InsufficientFunds(proto::InsufficientFunds {
                account,
                balance,
                amount,
            }),
            Rejection::BalanceOverflow {
                account,
                balance,
                amount,
            } => Reason::BalanceOverflow(proto::BalanceOverflow {
                account,
                balance,
                amount,
            }),
        };
        proto::Rejection {
            reason: Some(reason),
        }
    }
}

impl TryFrom<proto::Rejection> for Rejection {
    type Error = ConvertError;

    fn try_from(rejection: proto::Rejection) -> Result<Rejection, ConvertError> {
        use proto::rejection::Reason;
        Ok(match required(rejection.reason, "rejection.reason")? {
            Reason::UnknownAccount(reason) => Rejection::UnknownAccount {
                account: reason.account,
                accounts: reason.accounts,
            },
            Reason::SameAccount(reason) => Rejection::SameAccount {
                account: reason.account,
            },
            Reason::ZeroAmount(_) => Rejection::ZeroAmount,
            Reason::InsufficientFunds(reason) => Rejection::InsufficientFunds {
                account: reason.account,
                balance: reason.balance,
                amount: reason.amount,
            },
            Reason::BalanceOverflow(reason) => Rejection::BalanceOverflow {
                account: reason.account,
                balance: reason.balance,
                amount: reason.amount,
            },
        })
    }
}

impl From<&Outcome> for proto::Outcome {
    fn from(outcome: &Outcome) -> proto::Outcome {
        use proto::outcome::Kind;
        let kind = match outcome {
            Outcome::Applied => Kind::Applied(proto::Applied {}),
            Outcome::Rejected(rejection) => Kind::Rejected(rejection.into()),
            Outcome::Duplicate { first_height } => Kind::Duplicate(proto::Duplicate {
                first_height: *first_height,
            }),
        };
        proto::Outcome { kind: Some(kind) }
    }
}

impl TryFrom<proto::Outcome> for Outcome {
    type Error = ConvertError;

    fn try_from(outcome: proto::Outcome) -> Result<Outcome, ConvertError> {
        use proto::outcome::Kind;
        Ok(match required(outcome.kind, "outcome.kind")? {
            Kind::Applied(_) => Outcome::Applied,
            Kind::Rejected(rejection) => Outcome::Rejected(rejection.try_into()?),
            Kind::Duplicate(duplicate) => Outcome::Duplicate {
                first_height: duplicate.first_height,
            },
        })
    }
}

impl From<&Block> for proto::Block {
    fn from(block: &Block) -> proto::Block {
        proto::Block {
            height: block.height,
            prev_hash: block.prev_hash.0.to_vec(),
            proposer: block.proposer,
            entries: block
                .entries
                .iter()
                .map(|entry| proto::Entry {
                    transfer: Some((&entry.transfer).into()),
                    outcome: Some((&entry.outcome).into()),
                })
                .collect(),
            hash: block.hash.0.to_vec(),
        }
    }
}

impl TryFrom<proto::Block> for Block {
    type Error = ConvertError;

    fn try_from(block: proto::Block) -> Result<Block, ConvertError> {
        let entries = block
            .entries
            .into_iter()
            .map(|entry| {
                Ok(Entry {
                    transfer: required(entry.transfer, "entry.transfer")?.try_into()?,
                    outcome: required(entry.outcome, "entry.outcome")?.try_into()?,
                })
            })
            .collect::<Result<Vec<Entry>, ConvertError>>()?;
        Ok(Block {
            height: block.height,
            prev_hash: hash(&block.prev_hash, "block.prev_hash")?,
            proposer: block.proposer,
            entries,
            hash: hash(&block.hash, "block.hash")?,
        })
    }
}

/// The request metadata key that names the calling node on peer calls.
pub const NODE_METADATA: &str = "benmo-node";
/// The request metadata key that names the calling node's cluster (its genesis hash, in hex).
pub const GENESIS_METADATA: &str = "benmo-genesis";

/// Reads the caller out of a peer call's metadata.
pub fn caller(metadata: &tonic::metadata::MetadataMap) -> Result<Caller, ConvertError> {
    let text = |key: &'static str| {
        metadata
            .get(key)
            .ok_or(ConvertError::Missing(key))?
            .to_str()
            .map_err(|_| ConvertError::Malformed(key))
    };
    let node = text(NODE_METADATA)?
        .parse::<NodeId>()
        .map_err(|_| ConvertError::Malformed(NODE_METADATA))?;
    let genesis_hash =
        Hash::from_hex(text(GENESIS_METADATA)?).ok_or(ConvertError::Malformed(GENESIS_METADATA))?;
    Ok(Caller { node, genesis_hash })
}

/// Puts this node's name on an outgoing peer call.
pub fn name_caller<T>(request: &mut tonic::Request<T>, node: NodeId, genesis_hash: Hash) {
    let metadata = request.metadata_mut();
    metadata.insert(
        NODE_METADATA,
        node.to_string().parse().expect("digits are valid metadata"),
    );
    metadata.insert(
        GENESIS_METADATA,
        genesis_hash
            .to_hex()
            .parse()
            .expect("hex is valid metadata"),
    );
}

fn nack(nack: &Nack) -> proto::Nack {
    proto::Nack {
        ballot: Some(nack.ballot.into()),
        promised: Some(nack.promised.into()),
    }
}

impl From<&Message> for proto::PeerMessage {
    fn from(message: &Message) -> proto::PeerMessage {
        use proto::peer_message::Kind;
        let kind = match message {
            Message::Heartbeat(heartbeat) => Kind::Heartbeat(proto::Heartbeat {
                round: heartbeat.round,
                decided: heartbeat.decided,
            }),
            Message::HeartbeatReply(reply) => Kind::HeartbeatReply(proto::HeartbeatReply {
                round: reply.round,
                ballot: Some(reply.ballot.into()),
                quorum_connected: reply.quorum_connected,
                leader: reply.leader.map(proto::Ballot::from),
                decided: reply.decided,
            }),
            Message::Prepare(prepare) => Kind::Prepare(proto::Prepare {
                ballot: Some(prepare.ballot.into()),
                decided: prepare.decided,
            }),
            Message::Promise(promise) => Kind::Promise(proto::Promise {
                ballot: Some(promise.ballot.into()),
                decided: promise.decided,
                accepted: promise
                    .accepted
                    .iter()
                    .map(|value| proto::AcceptedValue {
                        slot: value.slot,
                        ballot: Some(value.ballot.into()),
                        batch: Some((&value.batch).into()),
                    })
                    .collect(),
            }),
            Message::Accept(accept) => Kind::Accept(proto::Accept {
                ballot: Some(accept.ballot.into()),
                slot: accept.slot,
                batch: Some((&accept.batch).into()),
            }),
            Message::Accepted(accepted) => Kind::Accepted(proto::Accepted {
                ballot: Some(accepted.ballot.into()),
                slot: accepted.slot,
            }),
            Message::Decide(decide) => Kind::Decide(proto::Decide {
                ballot: Some(decide.ballot.into()),
                slot: decide.slot,
                batch: decide.batch.as_ref().map(Into::into),
            }),
            Message::Nack(refusal) => Kind::Nack(nack(refusal)),
            Message::Forward(forward) => Kind::Forward(proto::Forward {
                transfers: forward
                    .transfers
                    .iter()
                    .map(proto::Transfer::from)
                    .collect(),
                hops: forward.hops,
            }),
        };
        proto::PeerMessage { kind: Some(kind) }
    }
}

impl TryFrom<proto::PeerMessage> for Message {
    type Error = ConvertError;

    fn try_from(message: proto::PeerMessage) -> Result<Message, ConvertError> {
        use proto::peer_message::Kind;
        Ok(match required(message.kind, "message.kind")? {
            Kind::Heartbeat(heartbeat) => Message::Heartbeat(Heartbeat {
                round: heartbeat.round,
                decided: heartbeat.decided,
            }),
            Kind::HeartbeatReply(reply) => Message::HeartbeatReply(HeartbeatReply {
                round: reply.round,
                ballot: ballot(reply.ballot, "heartbeat_reply.ballot")?,
                quorum_connected: reply.quorum_connected,
                leader: reply.leader.map(Ballot::from),
                decided: reply.decided,
            }),
            Kind::Prepare(prepare) => Message::Prepare(Prepare {
                ballot: ballot(prepare.ballot, "prepare.ballot")?,
                decided: prepare.decided,
            }),
            Kind::Promise(promise) => Message::Promise(Promise {
                ballot: ballot(promise.ballot, "promise.ballot")?,
                decided: promise.decided,
                accepted: promise
                    .accepted
                    .into_iter()
                    .map(|value| {
                        Ok(AcceptedValue {
                            slot: value.slot,
                            ballot: ballot(value.ballot, "accepted.ballot")?,
                            batch: required(value.batch, "accepted.batch")?.try_into()?,
                        })
                    })
                    .collect::<Result<Vec<AcceptedValue>, ConvertError>>()?,
            }),
            Kind::Accept(accept) => Message::Accept(Accept {
                ballot: ballot(accept.ballot, "accept.ballot")?,
                slot: accept.slot,
                batch: required(accept.batch, "accept.batch")?.try_into()?,
            }),
            Kind::Accepted(accepted) => Message::Accepted(Accepted {
                ballot: ballot(accepted.ballot, "accepted.ballot")?,
                slot: accepted.slot,
            }),
            Kind::Decide(decide) => Message::Decide(Decide {
                ballot: ballot(decide.ballot, "decide.ballot")?,
                slot: decide.slot,
                batch: decide.batch.map(TryInto::try_into).transpose()?,
            }),
            Kind::Nack(refusal) => Message::Nack(Nack {
                ballot: ballot(refusal.ballot, "nack.ballot")?,
                promised: ballot(refusal.promised, "nack.promised")?,
            }),
            Kind::Forward(forward) => Message::Forward(Forward {
                transfers: transfers(forward.transfers)?,
                hops: forward.hops,
            }),
        })
    }
}

/// The frame that carries `messages` to one peer.
pub fn frame(messages: &[Message]) -> proto::PeerFrame {
    proto::PeerFrame {
        messages: messages.iter().map(proto::PeerMessage::from).collect(),
    }
}

/// The messages of a frame, or why it is malformed.
pub fn messages(frame: proto::PeerFrame) -> Result<Vec<Message>, ConvertError> {
    frame.messages.into_iter().map(Message::try_from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use benmo_paxos::Ledger;

    fn transfer(id: &str) -> Transfer {
        Transfer {
            id: TransferId::new(id).unwrap(),
            from: 1,
            to: 2,
            amount: 3,
            signature: None,
        }
    }

    #[test]
    fn blocks_round_trip_with_every_outcome() {
        let mut ledger = Ledger::genesis(3, 100);
        let block = ledger.apply(
            2,
            &[
                transfer("a"),
                transfer("a"),
                Transfer {
                    amount: 1_000,
                    ..transfer("b")
                },
                Transfer {
                    to: 9,
                    ..transfer("c")
                },
            ],
        );
        let wire = proto::Block::from(&block);
        assert_eq!(Block::try_from(wire).unwrap(), block);
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        let bad_id = proto::Transfer {
            id: "no spaces".into(),
            from: 1,
            to: 2,
            amount: 1,
            signature: Vec::new(),
        };
        assert!(matches!(
            Transfer::try_from(bad_id),
            Err(ConvertError::TransferId(_))
        ));
        let mut request = tonic::Request::new(());
        assert_eq!(
            caller(request.metadata()),
            Err(ConvertError::Missing(NODE_METADATA))
        );
        name_caller(&mut request, 3, Hash::ZERO);
        assert_eq!(
            caller(request.metadata()),
            Ok(Caller {
                node: 3,
                genesis_hash: Hash::ZERO
            })
        );
        request
            .metadata_mut()
            .insert(GENESIS_METADATA, "abc".parse().unwrap());
        assert_eq!(
            caller(request.metadata()),
            Err(ConvertError::Malformed(GENESIS_METADATA))
        );
        let no_ballot = proto::PeerMessage {
            kind: Some(proto::peer_message::Kind::Prepare(proto::Prepare {
                ballot: None,
                decided: 0,
            })),
        };
        assert_eq!(
            Message::try_from(no_ballot),
            Err(ConvertError::Missing("prepare.ballot"))
        );
        assert_eq!(
            Message::try_from(proto::PeerMessage { kind: None }),
            Err(ConvertError::Missing("message.kind"))
        );
    }

    #[test]
    fn peer_messages_round_trip() {
        let ballot = Ballot::new(4, 2);
        let batch = Batch {
            proposer: 2,
            transfers: vec![transfer("a")],
        };
        let all = vec![
            Message::Heartbeat(Heartbeat {
                round: 9,
                decided: 3,
            }),
            Message::HeartbeatReply(HeartbeatReply {
                round: 9,
                ballot,
                quorum_connected: true,
                leader: Some(ballot),
                decided: 4,
            }),
            Message::Prepare(Prepare { ballot, decided: 2 }),
            Message::Promise(Promise {
                ballot,
                decided: 3,
                accepted: vec![AcceptedValue {
                    slot: 4,
                    ballot,
                    batch: batch.clone(),
                }],
            }),
            Message::Accept(Accept {
                ballot,
                slot: 7,
                batch: batch.clone(),
            }),
            Message::Accepted(Accepted { ballot, slot: 7 }),
            Message::Decide(Decide {
                ballot,
                slot: 7,
                batch: None,
            }),
            Message::Decide(Decide {
                ballot,
                slot: 8,
                batch: Some(batch),
            }),
            Message::Nack(Nack {
                ballot,
                promised: Ballot::new(5, 1),
            }),
            Message::Forward(Forward {
                transfers: vec![transfer("b")],
                hops: 1,
            }),
        ];
        assert_eq!(messages(frame(&all)).unwrap(), all);
    }
}
