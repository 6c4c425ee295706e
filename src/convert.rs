//! Protobuf messages to core types and back. Everything that arrives over gRPC passes through
//! here, so a malformed message is refused at the edge with a reason and never reaches the core.

use benmo_paxos::message::{
    Accept, Accepted, AcceptedValue, Decide, Forward, Heartbeat, HeartbeatReply, Nack, Prepare,
    Promise,
};
use benmo_paxos::{
    Ballot, Batch, Block, Entry, Hash, Message, NodeId, Outcome, Rejection, Transfer, TransferId,
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
        }
    }
}

impl TryFrom<proto::Transfer> for Transfer {
    type Error = ConvertError;

    fn try_from(transfer: proto::Transfer) -> Result<Transfer, ConvertError> {
        Ok(Transfer {
            id: TransferId::new(transfer.id)?,
            from: transfer.from,
            to: transfer.to,
            amount: transfer.amount,
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

/// Reads the caller out of a peer request's header.
pub fn caller(header: Option<proto::PeerHeader>) -> Result<Caller, ConvertError> {
    let header = required(header, "header")?;
    Ok(Caller {
        node: header.from,
        genesis_hash: hash(&header.genesis_hash, "header.genesis_hash")?,
    })
}

/// The header a node puts on its peer requests.
pub fn header(node: NodeId, genesis_hash: Hash) -> proto::PeerHeader {
    proto::PeerHeader {
        from: node,
        genesis_hash: genesis_hash.0.to_vec(),
    }
}

/// A core message as the peer RPC that carries it. Replies (Promise, Accepted, Nack, heartbeat
/// replies) are not requests: they travel back as the response of the request they answer.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerRequest {
    /// `PeerService.Heartbeat`.
    Heartbeat(proto::HeartbeatRequest),
    /// `PeerService.Prepare`.
    Prepare(proto::PrepareRequest),
    /// `PeerService.Accept`.
    Accept(proto::AcceptRequest),
    /// `PeerService.Decide`.
    Decide(proto::DecideRequest),
    /// `PeerService.Forward`.
    Forward(proto::ForwardRequest),
}

/// Maps an outgoing core message to its request, or returns the message back if it is a reply.
pub fn request(message: Message, header: proto::PeerHeader) -> Result<PeerRequest, Message> {
    let header = Some(header);
    Ok(match message {
        Message::Heartbeat(heartbeat) => PeerRequest::Heartbeat(proto::HeartbeatRequest {
            header,
            round: heartbeat.round,
            decided: heartbeat.decided,
        }),
        Message::Prepare(prepare) => PeerRequest::Prepare(proto::PrepareRequest {
            header,
            ballot: Some(prepare.ballot.into()),
            decided: prepare.decided,
        }),
        Message::Accept(accept) => PeerRequest::Accept(proto::AcceptRequest {
            header,
            ballot: Some(accept.ballot.into()),
            slot: accept.slot,
            batch: Some((&accept.batch).into()),
        }),
        Message::Decide(decide) => PeerRequest::Decide(proto::DecideRequest {
            header,
            ballot: Some(decide.ballot.into()),
            slot: decide.slot,
        }),
        Message::Forward(forward) => PeerRequest::Forward(proto::ForwardRequest {
            header,
            transfers: forward
                .transfers
                .iter()
                .map(proto::Transfer::from)
                .collect(),
            hops: forward.hops,
        }),
        reply @ (Message::HeartbeatReply(_)
        | Message::Promise(_)
        | Message::Accepted(_)
        | Message::Nack(_)) => return Err(reply),
    })
}

/// An incoming `Heartbeat` as a core message.
pub fn from_heartbeat(request: proto::HeartbeatRequest) -> Result<(Caller, Message), ConvertError> {
    Ok((
        caller(request.header)?,
        Message::Heartbeat(Heartbeat {
            round: request.round,
            decided: request.decided,
        }),
    ))
}

/// An incoming `Prepare` as a core message.
pub fn from_prepare(request: proto::PrepareRequest) -> Result<(Caller, Message), ConvertError> {
    Ok((
        caller(request.header)?,
        Message::Prepare(Prepare {
            ballot: ballot(request.ballot, "ballot")?,
            decided: request.decided,
        }),
    ))
}

/// An incoming `Accept` as a core message.
pub fn from_accept(request: proto::AcceptRequest) -> Result<(Caller, Message), ConvertError> {
    Ok((
        caller(request.header)?,
        Message::Accept(Accept {
            ballot: ballot(request.ballot, "ballot")?,
            slot: request.slot,
            batch: required(request.batch, "batch")?.try_into()?,
        }),
    ))
}

/// An incoming `Decide` as a core message.
pub fn from_decide(request: proto::DecideRequest) -> Result<(Caller, Message), ConvertError> {
    Ok((
        caller(request.header)?,
        Message::Decide(Decide {
            ballot: ballot(request.ballot, "ballot")?,
            slot: request.slot,
        }),
    ))
}

/// An incoming `Forward` as a core message.
pub fn from_forward(request: proto::ForwardRequest) -> Result<(Caller, Message), ConvertError> {
    Ok((
        caller(request.header)?,
        Message::Forward(Forward {
            transfers: transfers(request.transfers)?,
            hops: request.hops,
        }),
    ))
}

/// The response to a `Heartbeat`.
pub fn heartbeat_reply(reply: &HeartbeatReply) -> proto::HeartbeatReply {
    proto::HeartbeatReply {
        round: reply.round,
        ballot: Some(reply.ballot.into()),
        quorum_connected: reply.quorum_connected,
        leader: reply.leader.map(proto::Ballot::from),
        decided: reply.decided,
    }
}

/// A `Heartbeat` response as a core message.
pub fn from_heartbeat_reply(reply: proto::HeartbeatReply) -> Result<Message, ConvertError> {
    Ok(Message::HeartbeatReply(HeartbeatReply {
        round: reply.round,
        ballot: ballot(reply.ballot, "ballot")?,
        quorum_connected: reply.quorum_connected,
        leader: reply.leader.map(Ballot::from),
        decided: reply.decided,
    }))
}

fn nack(nack: &Nack) -> proto::Nack {
    proto::Nack {
        ballot: Some(nack.ballot.into()),
        promised: Some(nack.promised.into()),
    }
}

fn from_nack(nack: proto::Nack) -> Result<Message, ConvertError> {
    Ok(Message::Nack(Nack {
        ballot: ballot(nack.ballot, "nack.ballot")?,
        promised: ballot(nack.promised, "nack.promised")?,
    }))
}

/// The response to a `Prepare`: the core's Promise or Nack, if it produced one.
pub fn prepare_reply(reply: Option<&Message>) -> proto::PrepareReply {
    use proto::prepare_reply::Reply;
    let reply = match reply {
        Some(Message::Promise(promise)) => Some(Reply::Promise(proto::Promise {
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
        })),
        Some(Message::Nack(refusal)) => Some(Reply::Nack(nack(refusal))),
        _ => None,
    };
    proto::PrepareReply { reply }
}

/// A `Prepare` response as a core message.
pub fn from_prepare_reply(reply: proto::PrepareReply) -> Result<Option<Message>, ConvertError> {
    use proto::prepare_reply::Reply;
    Ok(match reply.reply {
        None => None,
        Some(Reply::Nack(refusal)) => Some(from_nack(refusal)?),
        Some(Reply::Promise(promise)) => {
            let accepted = promise
                .accepted
                .into_iter()
                .map(|value| {
                    Ok(AcceptedValue {
                        slot: value.slot,
                        ballot: ballot(value.ballot, "accepted.ballot")?,
                        batch: required(value.batch, "accepted.batch")?.try_into()?,
                    })
                })
                .collect::<Result<Vec<AcceptedValue>, ConvertError>>()?;
            Some(Message::Promise(Promise {
                ballot: ballot(promise.ballot, "promise.ballot")?,
                decided: promise.decided,
                accepted,
            }))
        }
    })
}

/// The response to an `Accept`: the core's Accepted or Nack, if it produced one.
pub fn accept_reply(reply: Option<&Message>) -> proto::AcceptReply {
    use proto::accept_reply::Reply;
    let reply = match reply {
        Some(Message::Accepted(accepted)) => Some(Reply::Accepted(proto::Accepted {
            ballot: Some(accepted.ballot.into()),
            slot: accepted.slot,
        })),
        Some(Message::Nack(refusal)) => Some(Reply::Nack(nack(refusal))),
        _ => None,
    };
    proto::AcceptReply { reply }
}

/// An `Accept` response as a core message.
pub fn from_accept_reply(reply: proto::AcceptReply) -> Result<Option<Message>, ConvertError> {
    use proto::accept_reply::Reply;
    Ok(match reply.reply {
        None => None,
        Some(Reply::Nack(refusal)) => Some(from_nack(refusal)?),
        Some(Reply::Accepted(accepted)) => Some(Message::Accepted(Accepted {
            ballot: ballot(accepted.ballot, "accepted.ballot")?,
            slot: accepted.slot,
        })),
    })
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
        };
        assert!(matches!(
            Transfer::try_from(bad_id),
            Err(ConvertError::TransferId(_))
        ));
        let short_hash = proto::PeerHeader {
            from: 1,
            genesis_hash: vec![0; 31],
        };
        assert_eq!(
            caller(Some(short_hash)),
            Err(ConvertError::HashLength {
                field: "header.genesis_hash",
                length: 31
            })
        );
        assert_eq!(caller(None), Err(ConvertError::Missing("header")));
        let no_ballot = proto::PrepareRequest {
            header: Some(header(1, Hash::ZERO)),
            ballot: None,
            decided: 0,
        };
        assert_eq!(
            from_prepare(no_ballot),
            Err(ConvertError::Missing("ballot"))
        );
    }

    #[test]
    fn peer_messages_round_trip() {
        let ballot = Ballot::new(4, 2);
        let batch = Batch {
            proposer: 2,
            transfers: vec![transfer("a")],
        };
        let accept = Message::Accept(Accept {
            ballot,
            slot: 7,
            batch: batch.clone(),
        });
        let Ok(PeerRequest::Accept(wire)) = request(accept.clone(), header(2, Hash::ZERO)) else {
            panic!("an Accept is a request");
        };
        let (caller, message) = from_accept(wire).unwrap();
        assert_eq!(caller.node, 2);
        assert_eq!(message, accept);

        let promise = Message::Promise(Promise {
            ballot,
            decided: 3,
            accepted: vec![AcceptedValue {
                slot: 4,
                ballot,
                batch,
            }],
        });
        assert_eq!(
            from_prepare_reply(prepare_reply(Some(&promise))).unwrap(),
            Some(promise.clone())
        );
        assert_eq!(
            request(promise.clone(), header(2, Hash::ZERO)),
            Err(promise)
        );
        let nack = Message::Nack(Nack {
            ballot,
            promised: Ballot::new(5, 1),
        });
        assert_eq!(
            from_accept_reply(accept_reply(Some(&nack))).unwrap(),
            Some(nack)
        );
        assert_eq!(from_accept_reply(accept_reply(None)).unwrap(), None);
    }
}
