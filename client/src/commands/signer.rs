//! Signing transfers with the keys of the accounts they debit, found in the cluster's secrets.

use std::collections::BTreeMap;

use benmo::proto;
use benmo_paxos::{Hash, NodeId, Transfer};
use ed25519_dalek::SigningKey;

use super::Context;

/// Signs transfers for the accounts whose keys benmoctl holds.
pub struct Signer {
    genesis_hash: Hash,
    keys: BTreeMap<NodeId, SigningKey>,
    /// Whether the cluster takes only signed transfers.
    required: bool,
    /// Where the keys were looked for, for error messages.
    looked_in: String,
}

impl Signer {
    /// A signer for the cluster a node described in `status`.
    pub fn new(context: &Context, status: &proto::StatusReply) -> Signer {
        let genesis_hash =
            benmo::convert::hash(&status.genesis_hash, "genesis_hash").unwrap_or(Hash::ZERO);
        let keys = context
            .secrets
            .iter()
            .flat_map(|secrets| {
                (1..=secrets.nodes())
                    .filter_map(|account| Some((account, secrets.signing_key(account).ok()?)))
            })
            .collect();
        Signer {
            genesis_hash,
            keys,
            required: status.signed_transfers,
            looked_in: context.secrets_dir.join("accounts").display().to_string(),
        }
    }

    /// Whether a transfer from `account` can go to this cluster: signed, or not needing it.
    pub fn can_debit(&self, account: NodeId) -> bool {
        !self.required || self.keys.contains_key(&account)
    }

    /// Signs `transfer` with its debited account's key if benmoctl holds it; fails if the cluster
    /// needs a signature benmoctl cannot make.
    pub fn sign(&self, transfer: &mut proto::Transfer) -> Result<(), String> {
        let Some(key) = self.keys.get(&transfer.from) else {
            if self.required {
                return Err(format!(
                    "this cluster takes only transfers signed by the account they debit, and there is no key for account {} in {} (point --secrets or BENMO_SECRETS at the cluster's secrets)",
                    transfer.from, self.looked_in
                ));
            }
            return Ok(());
        };
        let mut core = Transfer::try_from(transfer.clone()).map_err(|error| error.to_string())?;
        benmo::signing::sign(&mut core, key, &self.genesis_hash);
        *transfer = proto::Transfer::from(&core);
        Ok(())
    }
}
