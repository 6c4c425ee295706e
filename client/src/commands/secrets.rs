//! `benmoctl secrets init`: the cluster's secrets, made once.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::json;

use super::Context;
use crate::cli::Format;
use crate::render;
use crate::{exit, Terminal};

/// Makes the secrets of a cluster of `nodes` (default: the size of --cluster) in --secrets,
/// unless they are there; gives them to the owner of `owner_of` if asked.
pub fn init(
    context: &Context,
    nodes: Option<u32>,
    owner_of: Option<&Path>,
    terminal: &mut Terminal<'_>,
) -> i32 {
    let nodes = nodes.unwrap_or_else(|| context.nodes.cluster().size());
    if !(1..=benmo_paxos::config::NODES_MAX).contains(&nodes) {
        let _ = writeln!(
            terminal.err,
            "error: --nodes {nodes}: a cluster has 1 to {} nodes",
            benmo_paxos::config::NODES_MAX
        );
        return exit::USAGE;
    }
    let dir = &context.secrets_dir;
    let (secrets, new) = match benmo::secrets::create(dir, nodes) {
        Ok(made) => made,
        Err(error) => {
            let _ = writeln!(terminal.err, "error: {error}");
            return exit::FAILED;
        }
    };
    if let Some(owner_of) = owner_of {
        let owner = match std::fs::metadata(owner_of) {
            Ok(metadata) => metadata,
            Err(error) => {
                let _ = writeln!(terminal.err, "error: {}: {error}", owner_of.display());
                return exit::USAGE;
            }
        };
        if let Err(error) = benmo::secrets::give_to(dir, owner.uid(), owner.gid()) {
            let _ = writeln!(terminal.err, "error: {error}");
            return exit::FAILED;
        }
    }
    if context.format == Format::Json {
        let _ = render::json(
            terminal.out,
            &json!({ "dir": dir.display().to_string(), "cluster_id": secrets.cluster_id(), "nodes": nodes, "new": new }),
        );
    } else if new {
        let _ = writeln!(
            terminal.out,
            "made the secrets of cluster {} ({nodes} nodes) in {}: CA, node certificates, operator token, account keys (private keys readable by their owner only)",
            secrets.cluster_id(),
            dir.display()
        );
    } else {
        let _ = writeln!(
            terminal.out,
            "the secrets of cluster {} ({nodes} nodes) are in {} already",
            secrets.cluster_id(),
            dir.display()
        );
    }
    exit::OK
}
