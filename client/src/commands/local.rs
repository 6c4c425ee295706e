//! `benmoctl local up | start | down`: a cluster of `benmo-node` processes on this machine, with
//! data, logs and process ids under one folder. The cluster list (`--cluster`, default the five
//! ports `docker compose up` would publish) says which nodes run on which local ports.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use benmo::proto;
use benmo_paxos::NodeId;

use super::Context;
use crate::cli::LocalArgs;
use crate::{exit, Terminal};

/// How long `up` and `start` wait for a node to answer.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `down` waits for a node to exit before it kills it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

fn data_dir(local: &LocalArgs, node: NodeId) -> PathBuf {
    local.dir.join(format!("node-{node}"))
}

fn pid_file(local: &LocalArgs, node: NodeId) -> PathBuf {
    local.dir.join(format!("node-{node}.pid"))
}

fn log_file(local: &LocalArgs, node: NodeId) -> PathBuf {
    local.dir.join(format!("node-{node}.log"))
}

fn node_binary(local: &LocalArgs) -> PathBuf {
    if let Some(binary) = &local.node_binary {
        return binary.clone();
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("benmo-node")))
        .filter(|path| path.is_file())
    {
        return sibling;
    }
    PathBuf::from("benmo-node")
}

/// The process id of `node`, if a process we started for it is still running. A stale pid file
/// whose number now belongs to another program is ignored: we never signal what we did not start.
fn running(local: &LocalArgs, node: NodeId) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_file(local, node))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let data = data_dir(local, node);
    let ours = cmdline.contains("benmo-node") && cmdline.contains(&*data.to_string_lossy());
    (ours && !exited(pid)).then_some(pid)
}

fn local_port(address: &str) -> Option<u16> {
    let rest = address.strip_prefix("http://")?;
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':')?;
    if !matches!(host, "127.0.0.1" | "localhost") {
        return None;
    }
    port.parse().ok()
}

fn spawn(context: &Context, local: &LocalArgs, node: NodeId) -> Result<i32, String> {
    if let Some(pid) = running(local, node) {
        return Ok(pid);
    }
    let address = context.nodes.address(node);
    let port = local_port(&address).ok_or_else(|| {
        format!("node {node}'s address {address} is not on 127.0.0.1; a local cluster runs on this machine only")
    })?;
    fs::create_dir_all(&local.dir).map_err(|error| format!("{}: {error}", local.dir.display()))?;
    let log_path = log_file(local, node);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|error| format!("{}: {error}", log_path.display()))?;
    let stderr = log.try_clone().map_err(|error| error.to_string())?;
    let binary = node_binary(local);
    let mut command = Command::new(&binary);
    command
        .arg("--id")
        .arg(node.to_string())
        .arg("--cluster")
        .arg(context.nodes.cluster().to_string())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir(local, node));
    if context.secrets_dir.join("cluster.json").exists() {
        let secrets = fs::canonicalize(&context.secrets_dir)
            .map_err(|error| format!("{}: {error}", context.secrets_dir.display()))?;
        command.arg("--secrets").arg(secrets);
    }
    command.stdin(Stdio::null()).stdout(log).stderr(stderr);
    // Its own process group: a Ctrl-C in this terminal does not reach the node.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command.spawn().map_err(|error| {
        format!(
            "cannot start {}: {error} (build it with cargo build --release, or pass --node-binary)",
            binary.display()
        )
    })?;
    let pid = child.id() as i32;
    fs::write(pid_file(local, node), pid.to_string()).map_err(|error| error.to_string())?;
    Ok(pid)
}

async fn wait_until_serving(context: &Context, node: NodeId) -> bool {
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        if let Ok(mut client) = context.nodes.ledger(node) {
            if client.status(proto::StatusRequest {}).await.is_ok() {
                return true;
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    false
}

async fn start_nodes(
    context: &Context,
    local: &LocalArgs,
    nodes: &[NodeId],
    terminal: &mut Terminal<'_>,
) -> i32 {
    let mut started = Vec::new();
    for node in nodes {
        match spawn(context, local, *node) {
            Ok(pid) => started.push((*node, pid)),
            Err(message) => {
                let _ = writeln!(terminal.err, "error: node {node}: {message}");
                return exit::FAILED;
            }
        }
    }
    let mut code = exit::OK;
    for (node, pid) in started {
        if wait_until_serving(context, node).await {
            let _ = writeln!(
                terminal.out,
                "node {node} up: pid {pid}, {}, data {}, log {}",
                context.nodes.address(node),
                data_dir(local, node).display(),
                log_file(local, node).display()
            );
        } else {
            let _ = writeln!(
                terminal.err,
                "error: node {node} did not answer within {} s; see {}",
                START_TIMEOUT.as_secs(),
                log_file(local, node).display()
            );
            code = exit::FAILED;
        }
    }
    code
}

pub async fn up(context: &Context, local: &LocalArgs, terminal: &mut Terminal<'_>) -> i32 {
    let nodes = context.nodes.ids();
    // Secure by default: the cluster's secrets are made on the first start, and reused after.
    match benmo::secrets::create(&context.secrets_dir, nodes.len() as u32) {
        Ok((secrets, true)) => {
            let _ = writeln!(
                terminal.out,
                "made the secrets of cluster {} in {} (private keys readable by you only)",
                secrets.cluster_id(),
                context.secrets_dir.display()
            );
        }
        Ok((_, false)) => {}
        Err(error) => {
            let _ = writeln!(terminal.err, "error: {error}");
            return exit::FAILED;
        }
    }
    let code = start_nodes(context, local, &nodes, terminal).await;
    if code == exit::OK {
        let _ = writeln!(
            terminal.out,
            "local cluster of {} nodes is up. Try: benmoctl status; benmoctl transfer --from 1 --to 3 --amount 20",
            nodes.len()
        );
    }
    code
}

pub async fn start(
    context: &Context,
    node: NodeId,
    local: &LocalArgs,
    terminal: &mut Terminal<'_>,
) -> i32 {
    if !context.nodes.cluster().contains(node) {
        let _ = writeln!(
            terminal.err,
            "error: node {node} is not in the cluster (nodes are 1..={})",
            context.nodes.cluster().size()
        );
        return exit::USAGE;
    }
    start_nodes(context, local, &[node], terminal).await
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill takes plain integers; the pid was checked to be a benmo-node we started.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Whether process `pid` is gone (or only a zombie): its files, and sled's lock, are released.
fn exited(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

async fn stop(local: &LocalArgs, node: NodeId) -> Option<i32> {
    let pid = running(local, node)?;
    signal(pid, libc::SIGTERM);
    let started = Instant::now();
    while !exited(pid) {
        if started.elapsed() > STOP_TIMEOUT {
            signal(pid, libc::SIGKILL);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Some(pid)
}

pub async fn down(
    context: &Context,
    purge: bool,
    local: &LocalArgs,
    terminal: &mut Terminal<'_>,
) -> i32 {
    for node in context.nodes.ids() {
        if let Some(pid) = stop(local, node).await {
            let _ = writeln!(terminal.out, "node {node} stopped (pid {pid})");
        }
        let _ = fs::remove_file(pid_file(local, node));
    }
    if purge && local.dir.exists() {
        if let Err(error) = remove_cluster_dir(&local.dir) {
            let _ = writeln!(terminal.err, "error: {error}");
            return exit::FAILED;
        }
        let _ = writeln!(terminal.out, "removed {}", local.dir.display());
    }
    exit::OK
}

/// Removes the local cluster's folder, refusing one that holds anything a local cluster would
/// not have made.
fn remove_cluster_dir(dir: &Path) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("node-") {
            return Err(format!(
                "{} holds {name:?}, which a local cluster does not make; not removing it",
                dir.display()
            ));
        }
    }
    fs::remove_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))
}
