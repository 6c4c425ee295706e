//! `benmo-node`'s flags. Every flag has an environment equivalent (`BENMO_*`), which is how the
//! compose file configures the containers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use benmo::cluster::{Cluster, DEFAULT_CLUSTER};
use benmo_paxos::config::ConfigError;
use benmo_paxos::{Config, NodeId};
use clap::Parser;

/// A Benmo node: one replica of the Multi-Paxos ledger, serving gRPC.
#[derive(Parser, Clone, Debug)]
#[command(name = "benmo-node", version, about)]
pub struct Options {
    /// This node's id, in 1..=N.
    #[arg(long, env = "BENMO_ID")]
    pub id: NodeId,

    /// Every node of the cluster with its gRPC address: 1=http://host:port,2=...
    #[arg(long, env = "BENMO_CLUSTER", default_value = DEFAULT_CLUSTER)]
    pub cluster: Cluster,

    /// Address to serve clients on (default: all interfaces, on the port this node has in
    /// --cluster).
    #[arg(long, env = "BENMO_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Address to serve peers on (default: the client address's host, on the client port + 1000;
    /// peers are dialled the same way, from their --cluster address).
    #[arg(long, env = "BENMO_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,

    /// Address to serve Prometheus metrics on, at /metrics (default: the client address's host,
    /// on the client port + 2000).
    #[arg(long, env = "BENMO_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// The cluster's secrets (made by `benmoctl secrets init`, `benmoctl local up` or `docker
    /// compose up`): with them, peers talk over mutual TLS, faults need the operator token, and
    /// transfers must be signed by the account they debit. Without them the node runs open, and
    /// says so.
    #[arg(long, env = "BENMO_SECRETS")]
    pub secrets: Option<PathBuf>,

    /// Where the node keeps its sled database (default: ./benmo-data/node-<id>).
    #[arg(long, env = "BENMO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Every account's balance at the genesis block.
    #[arg(long, env = "BENMO_GENESIS_BALANCE", default_value_t = 100)]
    pub genesis_balance: u64,

    /// Heartbeat interval: one tick of the consensus core.
    #[arg(long, env = "BENMO_HEARTBEAT_MS", default_value_t = 50)]
    pub heartbeat_ms: u64,

    /// Shortest election timeout; each timeout is drawn at random between min and max.
    #[arg(long, env = "BENMO_ELECTION_TIMEOUT_MIN_MS", default_value_t = 200)]
    pub election_timeout_min_ms: u64,

    /// Longest election timeout.
    #[arg(long, env = "BENMO_ELECTION_TIMEOUT_MAX_MS", default_value_t = 400)]
    pub election_timeout_max_ms: u64,

    /// The most transfers in one block.
    #[arg(long, env = "BENMO_BATCH_MAX", default_value_t = 1024)]
    pub batch_max: usize,

    /// The most slots a leader keeps in flight. More pipelines deeper; fewer makes larger blocks,
    /// which wins when every node shares a few cores (measured on two cores, interleaved runs:
    /// 1 against 2 gave 26% more transfers/s at 16 clients, 10% at 64, 3% at 256, the same at 1
    /// and 1024; 2 beat 8).
    #[arg(long, env = "BENMO_IN_FLIGHT_MAX", default_value_t = 1)]
    pub in_flight_max: usize,

    /// The most transfers this node keeps pending before it tells clients to retry.
    #[arg(long, env = "BENMO_PENDING_MAX", default_value_t = 100_000)]
    pub pending_max: usize,

    /// How long a Transfer call waits for its commit when the client sets no timeout.
    #[arg(long, env = "BENMO_TRANSFER_TIMEOUT_MS", default_value_t = 5_000)]
    pub transfer_timeout_ms: u64,

    /// Threads that run gRPC and the core loop (the disk writer has its own). One keeps every
    /// hand-off on one thread, which is fastest when several nodes share a few cores.
    #[arg(long, env = "BENMO_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,

    /// Tests only: sleep this long after every fsync, to play a slow disk.
    #[arg(
        long,
        env = "BENMO_TEST_FSYNC_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    pub test_fsync_delay_ms: u64,
}

/// Everything the node needs to run, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The core's configuration.
    pub core: Config,
    /// The cluster's members.
    pub cluster: Cluster,
    /// Where to serve clients.
    pub listen: SocketAddr,
    /// Where to serve peers.
    pub peer_listen: SocketAddr,
    /// Where to serve metrics.
    pub metrics_listen: SocketAddr,
    /// The cluster's secrets, if the node runs secure.
    pub secrets: Option<PathBuf>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// One tick.
    pub heartbeat: Duration,
    /// The default wait of a Transfer call.
    pub transfer_timeout: Duration,
    /// Threads for gRPC and the core loop.
    pub threads: usize,
    /// Sleep after every fsync (tests only).
    pub fsync_delay: Duration,
}

/// The default metrics port is the client port plus this.
pub const METRICS_PORT_OFFSET: u16 = 2_000;

/// The shortest heartbeat interval accepted.
pub const HEARTBEAT_MS_MIN: u64 = 5;
/// The longest heartbeat interval accepted.
pub const HEARTBEAT_MS_MAX: u64 = 10_000;

impl Options {
    /// Names the flag behind a core setting the core refused.
    fn blame(&self, error: ConfigError) -> anyhow::Error {
        match &error {
            ConfigError::GenesisBalance { .. } => {
                anyhow!("--genesis-balance {}: {error}", self.genesis_balance)
            }
            ConfigError::ElectionTimeout { .. } => anyhow!(
                "--election-timeout-min-ms {} / --election-timeout-max-ms {}: {error} (a tick is --heartbeat-ms {} ms)",
                self.election_timeout_min_ms,
                self.election_timeout_max_ms,
                self.heartbeat_ms
            ),
            ConfigError::Limit { name, .. } => {
                let flag = match *name {
                    "batch_transfers_max" => "--batch-max",
                    "in_flight_slots_max" => "--in-flight-max",
                    "pending_transfers_max" => "--pending-max",
                    _ => name,
                };
                anyhow!("{flag}: {error}")
            }
            _ => anyhow!("invalid settings: {error}"),
        }
    }

    /// Checks the flags and turns them into settings.
    pub fn settings(&self) -> Result<Settings> {
        let nodes = self.cluster.size();
        let Some(own_address) = self.cluster.address(self.id) else {
            bail!("--id {} is not in --cluster (ids are 1..={nodes})", self.id);
        };
        if !(HEARTBEAT_MS_MIN..=HEARTBEAT_MS_MAX).contains(&self.heartbeat_ms) {
            bail!(
                "--heartbeat-ms must be between {HEARTBEAT_MS_MIN} and {HEARTBEAT_MS_MAX} (got {})",
                self.heartbeat_ms
            );
        }
        if self.election_timeout_min_ms > self.election_timeout_max_ms {
            bail!(
                "--election-timeout-min-ms ({}) is above --election-timeout-max-ms ({})",
                self.election_timeout_min_ms,
                self.election_timeout_max_ms
            );
        }
        let ticks = |ms: u64| ms.div_ceil(self.heartbeat_ms);
        let mut core = Config::new(self.id, nodes);
        core.genesis_balance = self.genesis_balance;
        core.election_timeout_ticks_min = ticks(self.election_timeout_min_ms);
        core.election_timeout_ticks_max = ticks(self.election_timeout_max_ms);
        core.batch_transfers_max = self.batch_max;
        core.in_flight_slots_max = self.in_flight_max;
        core.pending_transfers_max = self.pending_max;
        core.validate().map_err(|error| self.blame(error))?;
        let listen = match self.listen {
            Some(listen) => listen,
            None => {
                let port = self.cluster.port(self.id).with_context(|| {
                    format!("cannot find a port in {own_address:?}; pass --listen")
                })?;
                SocketAddr::from(([0, 0, 0, 0], port))
            }
        };
        let peer_listen = match self.peer_listen {
            Some(address) => address,
            None => {
                let port = listen
                    .port()
                    .checked_add(benmo::cluster::PEER_PORT_OFFSET)
                    .with_context(|| {
                        format!(
                            "no peer port above client port {}; pass --peer-listen",
                            listen.port()
                        )
                    })?;
                SocketAddr::new(listen.ip(), port)
            }
        };
        let metrics_listen = match self.metrics_listen {
            Some(address) => address,
            None => {
                let port = listen
                    .port()
                    .checked_add(METRICS_PORT_OFFSET)
                    .with_context(|| {
                        format!(
                            "no metrics port above client port {}; pass --metrics-listen",
                            listen.port()
                        )
                    })?;
                SocketAddr::new(listen.ip(), port)
            }
        };
        Ok(Settings {
            core,
            cluster: self.cluster.clone(),
            listen,
            peer_listen,
            metrics_listen,
            secrets: self.secrets.clone(),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("benmo-data/node-{}", self.id))),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            transfer_timeout: Duration::from_millis(self.transfer_timeout_ms),
            threads: usize::from(self.threads),
            fsync_delay: Duration::from_millis(self.test_fsync_delay_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arguments: &[&str]) -> Result<Settings> {
        // Explicit flags, so a BENMO_* variable in the environment cannot change the outcome.
        let mut all = vec!["benmo-node"];
        if !arguments.contains(&"--cluster") {
            all.extend_from_slice(&["--cluster", DEFAULT_CLUSTER]);
        }
        all.extend_from_slice(arguments);
        Options::try_parse_from(all)?.settings()
    }

    #[test]
    fn defaults_follow_the_cluster_list() {
        let settings = parse(&["--id", "3"]).unwrap();
        assert_eq!(settings.listen, "0.0.0.0:50053".parse().unwrap());
        assert_eq!(settings.core.nodes, 5);
        assert_eq!(settings.core.election_timeout_ticks_min, 4);
        assert_eq!(settings.core.election_timeout_ticks_max, 8);
        assert_eq!(settings.data_dir, PathBuf::from("benmo-data/node-3"));
    }

    #[test]
    fn bad_flags_are_explained() {
        let message = |arguments: &[&str]| parse(arguments).unwrap_err().to_string();
        assert!(message(&["--id", "6"]).contains("not in --cluster"));
        assert!(message(&["--id", "1", "--heartbeat-ms", "0"]).contains("--heartbeat-ms"));
        assert!(message(&[
            "--id",
            "1",
            "--election-timeout-min-ms",
            "500",
            "--election-timeout-max-ms",
            "100"
        ])
        .contains("is above"));
        // Core settings the core refuses are blamed on the flag that set them.
        let batch = message(&["--id", "1", "--batch-max", "0"]);
        assert!(batch.starts_with("--batch-max: "), "{batch}");
        assert!(!batch.contains("election"), "{batch}");
        let pending = message(&["--id", "1", "--pending-max", "0"]);
        assert!(pending.starts_with("--pending-max: "), "{pending}");
        let balance = message(&["--id", "1", "--genesis-balance", "18446744073709551615"]);
        assert!(balance.starts_with("--genesis-balance "), "{balance}");
        assert!(balance.contains("overflows"), "{balance}");
        let timeouts = message(&["--id", "1", "--election-timeout-max-ms", "100000000"]);
        assert!(timeouts.contains("--election-timeout-max-ms"), "{timeouts}");
        assert!(message(&["--id", "1", "--cluster", "1=nowhere"]).contains("http://"));
    }
}
