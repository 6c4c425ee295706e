//! The cluster's secrets, in one folder (`benmo-secrets/` by default), made once when the cluster
//! is created and read by nodes and benmoctl alike:
//!
//! | file                      | what                                                 | mode |
//! |---------------------------|------------------------------------------------------|------|
//! | `cluster.json`            | cluster id, size, account public keys, the operator token's SHA-256 | 0644 |
//! | `ca.pem`                  | the cluster CA's certificate                         | 0644 |
//! | `ca.key`                  | the CA's private key (to issue certificates later)    | 0600 |
//! | `node-N.pem`, `node-N.key`| node N's certificate and private key                 | 0644 / 0600 |
//! | `operator.token`          | the operator credential for the fault service        | 0600 |
//! | `accounts/N.key`          | account N's ed25519 signing key (hex)                | 0600 |
//!
//! A node's certificate binds its id twice: a URI SAN `benmo://<cluster id>/node/<N>` (what a
//! node checks on every peer call) and a DNS SAN `node-<N>.<cluster id>.benmo` (the name a peer
//! dials it by, so TLS checks the id before anything is said). Its other SANs (`localhost`,
//! `node<N>`, `127.0.0.1`) only let the usual tools reach it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use benmo_paxos::NodeId;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Where benmoctl looks for the secrets when told nothing: this folder in the working directory.
pub const DEFAULT_DIR: &str = "benmo-secrets";

/// Why the secrets could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What happened.
        source: std::io::Error,
    },
    /// A file holds something else than expected.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The folder holds the secrets of a cluster of another size.
    #[error("{path} holds the secrets of a {found}-node cluster, not of {wanted} nodes; use another folder (--secrets) or remove it")]
    OtherCluster {
        /// The folder.
        path: PathBuf,
        /// Its cluster's size.
        found: u32,
        /// The size asked for.
        wanted: u32,
    },
    /// Making a certificate failed.
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecretsError + '_ {
    move |source| SecretsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `cluster.json`: what every node and client may know.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ClusterFile {
    cluster_id: String,
    nodes: u32,
    /// Account N's ed25519 public key, hex, at index N - 1.
    account_keys: Vec<String>,
    /// SHA-256 of the operator token, hex.
    operator_token_sha256: String,
}

/// The public part of a cluster's secrets, loaded from its folder.
#[derive(Clone, Debug)]
pub struct Secrets {
    dir: PathBuf,
    cluster_id: String,
    nodes: u32,
    ca_pem: String,
    account_keys: Vec<VerifyingKey>,
    operator_token_sha256: [u8; 32],
}

impl Secrets {
    /// Reads the secrets in `dir`.
    pub fn load(dir: &Path) -> Result<Secrets, SecretsError> {
        let path = dir.join("cluster.json");
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let malformed = |reason: String| SecretsError::Malformed {
            path: path.clone(),
            reason,
        };
        let file: ClusterFile =
            serde_json::from_str(&text).map_err(|error| malformed(error.to_string()))?;
        let account_keys = file
            .account_keys
            .iter()
            .map(|key| {
                let bytes: [u8; 32] = hex(key)
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or_else(|| malformed(format!("bad account key {key}")))?;
                VerifyingKey::from_bytes(&bytes)
                    .map_err(|error| malformed(format!("bad account key {key}: {error}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if account_keys.len() != file.nodes as usize {
            return Err(malformed(format!(
                "{} account keys for {} accounts",
                account_keys.len(),
                file.nodes
            )));
        }
        let operator_token_sha256 = hex(&file.operator_token_sha256)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| malformed("bad operator_token_sha256".to_string()))?;
        let ca_path = dir.join("ca.pem");
        let ca_pem = fs::read_to_string(&ca_path).map_err(io(&ca_path))?;
        Ok(Secrets {
            dir: dir.to_path_buf(),
            cluster_id: file.cluster_id,
            nodes: file.nodes,
            ca_pem,
            account_keys,
            operator_token_sha256,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster's random id, bound into every node certificate.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The cluster's size.
    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Node `node`'s certificate and private key, PEM.
    pub fn node_identity(&self, node: NodeId) -> Result<(String, String), SecretsError> {
        let certificate = self.dir.join(format!("node-{node}.pem"));
        let key = self.dir.join(format!("node-{node}.key"));
        Ok((
            fs::read_to_string(&certificate).map_err(io(&certificate))?,
            fs::read_to_string(&key).map_err(io(&key))?,
        ))
    }

    /// The name node `node` is dialled by on the peer port; its certificate must carry it.
    pub fn peer_name(&self, node: NodeId) -> String {
        format!("node-{node}.{}.benmo", self.cluster_id)
    }

    /// The public key of account `account`, if it exists.
    pub fn account_key(&self, account: NodeId) -> Option<&VerifyingKey> {
        self.account_keys.get((account as usize).checked_sub(1)?)
    }

    /// Account `account`'s signing key, if this folder holds it.
    pub fn signing_key(&self, account: NodeId) -> Result<SigningKey, SecretsError> {
        let path = self.dir.join("accounts").join(format!("{account}.key"));
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let bytes: [u8; 32] = hex(text.trim())
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| SecretsError::Malformed {
                path: path.clone(),
                reason: "not 32 bytes of hex".to_string(),
            })?;
        Ok(SigningKey::from_bytes(&bytes))
    }

    /// The operator token, if this folder holds it.
    pub fn operator_token(&self) -> Result<String, SecretsError> {
        let path = self.dir.join("operator.token");
        Ok(fs::read_to_string(&path)
            .map_err(io(&path))?
            .trim()
            .to_string())
    }

    /// Whether `token` is the operator token, compared in constant time (over its SHA-256, so
    /// nodes never hold the token itself).
    pub fn is_operator(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        digest.ct_eq(&self.operator_token_sha256).into()
    }

    /// The node a DER certificate names, if it is a node certificate of this cluster: its URI
    /// SAN `benmo://<cluster id>/node/<N>`. (That the CA issued it, TLS checked already.)
    pub fn node_of_certificate(&self, der: &[u8]) -> Option<NodeId> {
        let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
        let names = certificate.subject_alternative_name().ok()??;
        let prefix = format!("benmo://{}/node/", self.cluster_id);
        names
            .value
            .general_names
            .iter()
            .find_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => {
                    uri.strip_prefix(&prefix)?.parse::<NodeId>().ok()
                }
                _ => None,
            })
    }
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&text[index..index + 2], 16).ok())
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Writes `contents` to `path`, readable by its owner only if `private`.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), SecretsError> {
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    // A file that existed keeps its old mode through open: set it.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io(path))?;
    file.write_all(contents).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Makes the secrets of a cluster of `nodes` in `dir`, unless it holds them already (then it
/// loads them, and refuses a folder made for another size). Returns them, and whether they are new.
pub fn create(dir: &Path, nodes: u32) -> Result<(Secrets, bool), SecretsError> {
    if dir.join("cluster.json").exists() {
        let secrets = Secrets::load(dir)?;
        if secrets.nodes != nodes {
            return Err(SecretsError::OtherCluster {
                path: dir.to_path_buf(),
                found: secrets.nodes,
                wanted: nodes,
            });
        }
        return Ok((secrets, false));
    }
    fs::create_dir_all(dir.join("accounts")).map_err(io(dir))?;
    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    let cluster_id = to_hex(&id);

    let ca_key = rcgen::KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("Benmo cluster {cluster_id}"),
    );
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    write_file(&dir.join("ca.pem"), ca.pem().as_bytes(), false)?;

    for node in 1..=nodes {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec![
            format!("node-{node}.{cluster_id}.benmo"),
            format!("node{node}"),
            "localhost".to_string(),
        ])?;
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(rcgen::string::Ia5String::try_from(
                format!("benmo://{cluster_id}/node/{node}"),
            )?));
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("Benmo node {node}"));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let certificate = params.signed_by(&key, &ca)?;
        write_file(
            &dir.join(format!("node-{node}.pem")),
            certificate.pem().as_bytes(),
            false,
        )?;
        write_file(
            &dir.join(format!("node-{node}.key")),
            key.serialize_pem().as_bytes(),
            true,
        )?;
    }
    // The CA's key stays, private, to issue certificates later; nodes never read it.
    write_file(&dir.join("ca.key"), ca_key_pem.as_bytes(), true)?;

    let mut account_keys = Vec::new();
    for account in 1..=nodes {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let key = SigningKey::from_bytes(&seed);
        write_file(
            &dir.join("accounts").join(format!("{account}.key")),
            format!("{}\n", to_hex(&seed)).as_bytes(),
            true,
        )?;
        account_keys.push(to_hex(key.verifying_key().as_bytes()));
    }

    let mut token = [0u8; 32];
    rand::rng().fill_bytes(&mut token);
    let token = to_hex(&token);
    write_file(
        &dir.join("operator.token"),
        format!("{token}\n").as_bytes(),
        true,
    )?;
    let file = ClusterFile {
        cluster_id,
        nodes,
        account_keys,
        operator_token_sha256: to_hex(&Sha256::digest(token.as_bytes())),
    };
    let json = serde_json::to_string_pretty(&file).expect("the cluster file serializes");
    write_file(&dir.join("cluster.json"), json.as_bytes(), false)?;
    Ok((Secrets::load(dir)?, true))
}

/// Gives every file under `dir` (and `dir`) to `uid`:`gid`: a container that makes the secrets
/// as root hands them to the owner of the project folder, so benmoctl on the host reads them.
pub fn give_to(dir: &Path, uid: u32, gid: u32) -> Result<(), SecretsError> {
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        std::os::unix::fs::chown(&folder, Some(uid), Some(gid)).map_err(io(&folder))?;
        for entry in fs::read_dir(&folder).map_err(io(&folder))? {
            let entry = entry.map_err(io(&folder))?;
            let path = entry.path();
            if entry.file_type().map_err(io(&path))?.is_dir() {
                folders.push(path);
            } else {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(io(&path))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_made_once_private_and_bind_node_ids() {
        let folder = tempfile::tempdir().unwrap();
        let dir = folder.path().join("secrets");
        let (secrets, new) = create(&dir, 3).unwrap();
        assert!(new);
        let (again, new) = create(&dir, 3).unwrap();
        assert!(!new, "made once, then reused");
        assert_eq!(again.cluster_id(), secrets.cluster_id());
        assert!(matches!(
            create(&dir, 5),
            Err(SecretsError::OtherCluster { found: 3, .. })
        ));
        for private in ["ca.key", "node-2.key", "operator.token", "accounts/1.key"] {
            let mode = fs::metadata(dir.join(private))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{private}");
        }
        let (certificate, _) = secrets.node_identity(2).unwrap();
        let (_, der) = x509_parser::pem::parse_x509_pem(certificate.as_bytes()).unwrap();
        assert_eq!(secrets.node_of_certificate(&der.contents), Some(2));
        let token = secrets.operator_token().unwrap();
        assert!(secrets.is_operator(&token));
        assert!(!secrets.is_operator("guess"));
        let key = secrets.signing_key(3).unwrap();
        assert_eq!(&key.verifying_key(), secrets.account_key(3).unwrap());
        assert!(secrets.account_key(4).is_none());
    }
}
