//! Transfers signed by the debited account's ed25519 key, over
//! [`Transfer::signing_message`](benmo_paxos::Transfer::signing_message).

use benmo_paxos::{Hash, Signature, Transfer};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};

/// Why a transfer's signature was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// It has none, and the cluster requires one.
    #[error("transfer {id} is not signed: this cluster takes only transfers signed with the key of the account they debit (account {from})")]
    Missing {
        /// The transfer's id.
        id: String,
        /// The debited account.
        from: u32,
    },
    /// The debited account does not exist, so no key can sign for it.
    #[error("account {0} has no key in this cluster")]
    NoKey(u32),
    /// The signature is not the debited account's over this transfer in this cluster.
    #[error(
        "the signature of transfer {id} is not account {from}'s over this transfer in this cluster"
    )]
    Wrong {
        /// The transfer's id.
        id: String,
        /// The debited account.
        from: u32,
    },
}

/// Signs `transfer` with `key` for the cluster whose genesis hash is `genesis_hash`.
pub fn sign(transfer: &mut Transfer, key: &SigningKey, genesis_hash: &Hash) {
    let signature = key.sign(&transfer.signing_message(genesis_hash));
    transfer.signature = Some(Signature::new(signature.to_bytes()));
}

/// Checks that `transfer` carries the signature of `key` (its debited account's) for the cluster
/// whose genesis hash is `genesis_hash`.
pub fn verify(
    transfer: &Transfer,
    key: Option<&VerifyingKey>,
    genesis_hash: &Hash,
) -> Result<(), SignatureError> {
    let Some(signature) = &transfer.signature else {
        return Err(SignatureError::Missing {
            id: transfer.id.to_string(),
            from: transfer.from,
        });
    };
    let key = key.ok_or(SignatureError::NoKey(transfer.from))?;
    key.verify(
        &transfer.signing_message(genesis_hash),
        &ed25519_dalek::Signature::from_bytes(signature.as_bytes()),
    )
    .map_err(|_| SignatureError::Wrong {
        id: transfer.id.to_string(),
        from: transfer.from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use benmo_paxos::TransferId;

    fn transfer(id: &str) -> Transfer {
        Transfer {
            id: TransferId::new(id).unwrap(),
            from: 1,
            to: 2,
            amount: 5,
            signature: None,
        }
    }

    #[test]
    fn a_signature_binds_the_cluster_the_id_and_the_transfer() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key();
        let genesis = Hash([1; 32]);
        let mut signed = transfer("a");
        sign(&mut signed, &key, &genesis);
        assert_eq!(verify(&signed, Some(&public), &genesis), Ok(()));
        assert!(matches!(
            verify(&transfer("a"), Some(&public), &genesis),
            Err(SignatureError::Missing { .. })
        ));
        // Another cluster, another id (a replayed signature), another amount, another key.
        assert!(verify(&signed, Some(&public), &Hash([2; 32])).is_err());
        let replayed = Transfer {
            id: TransferId::new("b").unwrap(),
            ..signed.clone()
        };
        assert!(verify(&replayed, Some(&public), &genesis).is_err());
        let more = Transfer {
            amount: 6,
            ..signed.clone()
        };
        assert!(verify(&more, Some(&public), &genesis).is_err());
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(verify(&signed, Some(&other), &genesis).is_err());
        assert_eq!(
            verify(&signed, None, &genesis),
            Err(SignatureError::NoKey(1))
        );
    }

    #[test]
    fn the_signed_bytes_are_those_the_proto_documents() {
        // The layout on `Transfer.signature` in proto/benmo/v1/benmo.proto, byte by byte, so a
        // client in another language can check its encoding against this one.
        let mut transfer = transfer("t-1");
        transfer.from = 1;
        transfer.to = 3;
        transfer.amount = 20;
        let genesis = Hash([0xab; 32]);
        let mut expected = b"benmo.transfer.v1".to_vec();
        expected.extend_from_slice(&[0xab; 32]);
        expected.extend_from_slice(&[3, b't', b'-', b'1']);
        expected.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 3]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 20]);
        assert_eq!(transfer.signing_message(&genesis), expected);
    }
}
