//! A cluster of real `benmo-node` processes on loopback for integration tests, driven by
//! benmoctl (its library, in-process). Every process is killed when the cluster is dropped,
//! whether the test passed or panicked.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a test waits for the cluster to reach a state before it fails.
pub const PATIENCE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);

/// What one benmoctl run printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub out: String,
    pub err: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.out.trim())
            .unwrap_or_else(|error| panic!("benmoctl printed no JSON ({error}): {self:?}"))
    }
}

/// Where benmoctl finds a cluster: its node list and, when the cluster is secure, its secrets.
#[derive(Clone, Debug)]
pub struct Target {
    pub list: String,
    pub secrets: Option<PathBuf>,
}

pub struct Cluster {
    pub directory: tempfile::TempDir,
    pub nodes: u32,
    pub target: Target,
    children: Vec<Option<Child>>,
    /// Extra flags every node starts with.
    flags: Vec<String>,
}

/// `count` client ports, each with its peer port (client port + 1000) and metrics port (client
/// port + 2000) free as well.
pub fn free_ports(count: u32) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < count as usize {
        let client = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = client.local_addr().expect("address").port();
        let offsets = [
            benmo::cluster::PEER_PORT_OFFSET,
            benmo_node::options::METRICS_PORT_OFFSET,
        ];
        let others: Option<Vec<TcpListener>> = offsets
            .iter()
            .map(|offset| {
                let other = port.checked_add(*offset)?;
                TcpListener::bind(("127.0.0.1", other)).ok()
            })
            .collect();
        if let Some(others) = others {
            ports.push(port);
            held.push((client, others));
        }
    }
    ports
}

pub fn node_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_benmo-node"))
}

impl Cluster {
    /// Starts `nodes` nodes and waits until a leader has committed nothing yet but is elected.
    pub async fn start(nodes: u32) -> Cluster {
        Cluster::start_with(nodes, &[]).await
    }

    /// Like [`Cluster::start`], with extra flags for every node.
    pub async fn start_with(nodes: u32, flags: &[&str]) -> Cluster {
        Cluster::launch(nodes, flags, true).await
    }

    /// Starts `nodes` nodes without secrets: no TLS, no signatures, no operator token.
    pub async fn start_open(nodes: u32) -> Cluster {
        Cluster::launch(nodes, &[], false).await
    }

    async fn launch(nodes: u32, flags: &[&str], secure: bool) -> Cluster {
        let ports = free_ports(nodes);
        let list = ports
            .iter()
            .enumerate()
            .map(|(index, port)| format!("{}=http://127.0.0.1:{port}", index + 1))
            .collect::<Vec<_>>()
            .join(",");
        let directory = tempfile::tempdir().expect("temp dir");
        let secrets = secure.then(|| {
            let dir = directory.path().join("secrets");
            benmo::secrets::create(&dir, nodes).expect("make the cluster's secrets");
            dir
        });
        let mut this = Cluster {
            directory,
            nodes,
            target: Target { list, secrets },
            children: (0..nodes).map(|_| None).collect(),
            flags: flags.iter().map(|flag| flag.to_string()).collect(),
        };
        for id in 1..=nodes {
            this.spawn(id);
        }
        for id in 1..=nodes {
            this.wait_until_serving(id).await;
        }
        this.wait_for_leader().await;
        this
    }

    pub fn data_dir(&self, id: u32) -> PathBuf {
        self.directory.path().join(format!("node-{id}"))
    }

    pub fn log_path(&self, id: u32) -> PathBuf {
        self.directory.path().join(format!("node-{id}.log"))
    }

    /// The command line that starts node `id` with data in `data_dir`.
    pub fn command(&self, id: u32, data_dir: &Path) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log file");
        let mut command = Command::new(node_binary());
        // Only the flags below configure the node, whatever BENMO_* the test runs under.
        for (name, _) in std::env::vars() {
            if name.starts_with("BENMO_") {
                command.env_remove(name);
            }
        }
        command
            .arg("--id")
            .arg(id.to_string())
            .arg("--cluster")
            .arg(&self.target.list)
            .arg("--listen")
            .arg(self.address(id).trim_start_matches("http://"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(&self.flags)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        // If the test process dies without unwinding (killed by a timeout), its nodes die too.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        if let Some(secrets) = &self.target.secrets {
            command.arg("--secrets").arg(secrets);
        }
        command
    }

    /// Node `id`'s metrics, as a scrape returns them.
    pub fn metrics(&self, id: u32) -> String {
        use std::io::{Read, Write};
        let port: u16 = self
            .address(id)
            .rsplit_once(':')
            .expect("host:port")
            .1
            .parse()
            .expect("port");
        let port = port + benmo_node::options::METRICS_PORT_OFFSET;
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", port)).expect("the metrics port answers");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a timeout");
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .expect("send the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read the response");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }

    /// The value of the metric line that starts with `name` (name and labels) in node `id`'s
    /// metrics, 0 if there is none yet.
    pub fn metric(&self, id: u32, name: &str) -> f64 {
        self.metrics(id)
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |value| value.trim().parse().expect("a number"))
    }

    pub fn address(&self, id: u32) -> String {
        self.target
            .list
            .split(',')
            .find_map(|item| item.strip_prefix(&format!("{id}=")))
            .expect("node in cluster")
            .to_string()
    }

    /// Starts node `id` (again).
    pub fn spawn(&mut self, id: u32) {
        assert!(
            self.children[id as usize - 1].is_none(),
            "node {id} is running"
        );
        let child = self
            .command(id, &self.data_dir(id))
            .spawn()
            .expect("start benmo-node");
        self.children[id as usize - 1] = Some(child);
    }

    /// Kills node `id` as `kill -9` would, and reaps it.
    pub fn kill(&mut self, id: u32) {
        if let Some(mut child) = self.children[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Reaps node `id` after `benmoctl crash` made it die by itself.
    pub fn reap(&mut self, id: u32) -> std::process::ExitStatus {
        let mut child = self.children[id as usize - 1]
            .take()
            .expect("node was running");
        child.wait().expect("wait for node")
    }

    /// Runs benmoctl against this cluster.
    pub async fn ctl(&self, arguments: &[&str]) -> Run {
        ctl(&self.target, arguments).await
    }

    /// Runs benmoctl with `--output json` and returns the exit code and the JSON.
    pub async fn ctl_json(&self, arguments: &[&str]) -> (i32, Value) {
        ctl_json(&self.target, arguments).await
    }

    /// Every node's status, as benmoctl reports it.
    pub async fn status(&self) -> Vec<Value> {
        status(&self.target).await
    }

    /// Polls until `condition` holds on the cluster's status, or fails the test after PATIENCE.
    pub async fn wait_until<F>(&self, what: &str, condition: F) -> Vec<Value>
    where
        F: Fn(&[Value]) -> bool,
    {
        wait_until(&self.target, PATIENCE, what, condition).await
    }

    pub async fn wait_until_serving(&self, id: u32) {
        let started = Instant::now();
        loop {
            let (code, _) = self.ctl_json(&["--node", &id.to_string(), "status"]).await;
            if code == 0 {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "node {id} did not start; log:\n{}",
                std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until some node leads and returns it.
    pub async fn wait_for_leader(&self) -> u32 {
        let status = self
            .wait_until("a leader is elected", |nodes| leader(nodes).is_some())
            .await;
        leader(&status).expect("a leader")
    }

    /// Waits until every running node is at the same height, at least `height`.
    pub async fn wait_until_converged(&self, height: u64) -> Vec<Value> {
        self.wait_until(
            &format!("every node reaches height {height} and agrees"),
            |nodes| {
                let up: Vec<&Value> = nodes.iter().filter(|node| node["up"] == true).collect();
                !up.is_empty()
                    && up.iter().all(|node| {
                        node["height"].as_u64().unwrap_or(0) >= height
                            && node["height"] == up[0]["height"]
                            && node["head_hash"] == up[0]["head_hash"]
                            && node["pending"] == 0
                    })
            },
        )
        .await
    }

    /// Transfers and returns the JSON answer, asserting it committed.
    pub async fn transfer(&self, from: u32, to: u32, amount: u64) -> Value {
        let (code, json) = self
            .ctl_json(&[
                "transfer",
                "--from",
                &from.to_string(),
                "--to",
                &to.to_string(),
                "--amount",
                &amount.to_string(),
            ])
            .await;
        assert_eq!(code, 0, "transfer {from}->{to} {amount} failed: {json}");
        json
    }
}

/// Runs benmoctl (in-process) against `target`, with its secrets if it has them.
pub async fn ctl(target: &Target, arguments: &[&str]) -> Run {
    let secrets = target.secrets.as_ref().map(|dir| dir.display().to_string());
    let mut all = vec!["benmoctl", "--cluster", &target.list];
    if let Some(secrets) = &secrets {
        all.extend_from_slice(&["--secrets", secrets]);
    }
    all.extend_from_slice(arguments);
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = {
        let mut terminal = benmoctl::Terminal {
            out: &mut out,
            err: &mut err,
        };
        benmoctl::run(all, &mut terminal).await
    };
    Run {
        code,
        out: String::from_utf8_lossy(&out).to_string(),
        err: String::from_utf8_lossy(&err).to_string(),
    }
}

/// Runs benmoctl with `--output json` and returns the exit code and the JSON.
pub async fn ctl_json(target: &Target, arguments: &[&str]) -> (i32, Value) {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(arguments);
    let run = ctl(target, &all).await;
    (run.code, run.json())
}

/// What a client was told about a committed transfer: the block, and the outcome status
/// ("applied", or "rejected" when the ledger refused it for funds).
pub type Acknowledged = BTreeMap<String, (u64, String)>;

/// Every node's status, as benmoctl reports it (nodes that are down included).
pub async fn status(target: &Target) -> Vec<Value> {
    let (_, json) = ctl_json(target, &["status"]).await;
    json["nodes"].as_array().cloned().unwrap_or_default()
}

/// Polls the cluster's status until `condition` holds, or fails the test after `patience`.
pub async fn wait_until<F>(
    target: &Target,
    patience: Duration,
    what: &str,
    condition: F,
) -> Vec<Value>
where
    F: Fn(&[Value]) -> bool,
{
    let started = Instant::now();
    loop {
        let nodes = status(target).await;
        if condition(&nodes) {
            return nodes;
        }
        assert!(
            started.elapsed() < patience,
            "timed out waiting until {what}; status: {nodes:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A client that keeps one transfer in flight until `until`, retrying each one with the same id
/// (at another node each time) until it gets an answer. Returns what was acknowledged as
/// committed.
pub async fn steady_client(
    target: &Target,
    nodes: u32,
    client: u32,
    until: Instant,
) -> Acknowledged {
    let mut acknowledged = BTreeMap::new();
    let mut sequence = 0;
    while Instant::now() < until {
        sequence += 1;
        let id = format!("c{client}-{sequence}");
        let from = client % nodes + 1;
        let to = (client + sequence) % nodes + 1;
        let to = if to == from { to % nodes + 1 } else { to };
        let mut attempt = 0;
        let started = Instant::now();
        loop {
            attempt += 1;
            let node = ((client + attempt) % nodes + 1).to_string();
            let (code, json) = ctl_json(
                target,
                &[
                    "--node",
                    &node,
                    "--rpc-timeout-ms",
                    "1000",
                    "transfer",
                    "--from",
                    &from.to_string(),
                    "--to",
                    &to.to_string(),
                    "--amount",
                    "1",
                    "--id",
                    &id,
                    "--timeout-ms",
                    "2000",
                ],
            )
            .await;
            if code == 0 || code == 1 {
                if json["committed"] == true {
                    let status = json["outcome"]["status"].as_str().unwrap().to_string();
                    acknowledged.insert(id.clone(), (json["height"].as_u64().unwrap(), status));
                }
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "transfer {id} never answered: {json}"
            );
        }
    }
    acknowledged
}

/// Reads node `node`'s chain and returns, for every transfer id in it, each (height, outcome).
pub async fn chain_index(
    target: &Target,
    node: u32,
) -> (u64, BTreeMap<String, Vec<(u64, String)>>) {
    let (code, chain) = ctl_json(target, &["--node", &node.to_string(), "chain"]).await;
    assert_eq!(code, 0, "chain of node {node}: {chain}");
    let blocks = chain["blocks"].as_array().expect("blocks");
    let mut seen: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for block in blocks {
        for transfer in block["transfers"].as_array().expect("transfers") {
            seen.entry(transfer["id"].as_str().expect("id").to_string())
                .or_default()
                .push((
                    block["height"].as_u64().expect("height"),
                    transfer["outcome"]["status"]
                        .as_str()
                        .expect("status")
                        .to_string(),
                ));
        }
    }
    (blocks.len() as u64 - 1, seen)
}

/// Checks from outside that every acknowledged transfer is in `node`'s chain exactly once (any
/// further copy is marked a duplicate), at the height and with the outcome it was acknowledged
/// with. Returns the chain's height.
pub async fn assert_acknowledged_in_chain(
    target: &Target,
    node: u32,
    acknowledged: &Acknowledged,
) -> u64 {
    let (height, seen) = chain_index(target, node).await;
    for (id, (at, status)) in acknowledged {
        let appearances = seen
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged transfer {id} is missing from the chain"));
        let ordered: Vec<&(u64, String)> = appearances
            .iter()
            .filter(|(_, outcome)| outcome != "duplicate")
            .collect();
        assert_eq!(
            ordered,
            vec![&(*at, status.clone())],
            "{id}: {appearances:?}"
        );
    }
    height
}

/// The node that leads with the highest ballot, in a status list.
pub fn leader(nodes: &[Value]) -> Option<u32> {
    nodes
        .iter()
        .filter(|node| node["role"] == "leader")
        .max_by_key(|node| {
            let ballot = node["ballot"].as_str().unwrap_or("0.0").to_string();
            let (round, id) = ballot.split_once('.').unwrap_or(("0", "0"));
            (
                round.parse::<u64>().unwrap_or(0),
                id.parse::<u64>().unwrap_or(0),
            )
        })
        .and_then(|node| node["node"].as_u64())
        .map(|node| node as u32)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 1..=self.nodes {
            self.kill(id);
        }
    }
}
