//! The commands and their flags.

use std::path::PathBuf;

use benmo::cluster::{Cluster, DEFAULT_CLUSTER};
use benmo_paxos::NodeId;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Transfers, reads and faults for a Benmo cluster.
///
/// With no --cluster, benmoctl talks to the five nodes `docker compose up` (or `benmoctl local
/// up`) publishes on 127.0.0.1:50051..50055.
#[derive(Parser, Debug)]
#[command(name = "benmoctl", version)]
pub struct Cli {
    /// Every node with its gRPC address: 1=http://host:port,2=...
    #[arg(long, env = "BENMO_CLUSTER", default_value = DEFAULT_CLUSTER, global = true)]
    pub cluster: Cluster,

    /// Ask this node, and only this node. Without it, transfers, bench and balances go to the
    /// leader a quorum follows, and other commands ask the first node that answers.
    #[arg(long = "node", id = "only_node", value_name = "NODE", global = true)]
    pub node: Option<NodeId>,

    /// Say more: for a transfer, which node it went to and why.
    #[arg(long, short, global = true)]
    pub verbose: bool,

    /// The cluster's secrets: account keys to sign transfers with, the operator token for
    /// faults, the public keys `verify` checks signatures with (default: ./benmo-secrets, made by
    /// `docker compose up` or `benmoctl local up`).
    #[arg(long, env = "BENMO_SECRETS", global = true)]
    pub secrets: Option<PathBuf>,

    /// How results are printed.
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,

    /// How long one call to a node may take, in ms.
    #[arg(long, default_value_t = 3_000, global = true, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub rpc_timeout_ms: u64,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Tables for people.
    Table,
    /// JSON for scripts (stable field names).
    Json,
}

/// What benmoctl can do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Move money: waits for the commit and prints the block.
    #[command(
        after_help = "Examples:\n  benmoctl transfer --from 1 --to 3 --amount 20\n  benmoctl transfer --from 1 --to 3 --amount 20 --id rent-may   # retry safely with the same id"
    )]
    Transfer(TransferArgs),
    /// One line per node: up or down, role, leader, ballot, height, head, pending, cut links.
    #[command(after_help = "Example:\n  benmoctl status\n  benmoctl status --output json")]
    Status,
    /// Balances at a node's head.
    #[command(after_help = "Example:\n  benmoctl balances --node 2")]
    Balances,
    /// Blocks of a node's chain.
    #[command(after_help = "Example:\n  benmoctl chain --from 10 --to 20")]
    Chain(ChainArgs),
    /// Pending transfers: taken by a node, not yet in a block.
    #[command(after_help = "Example:\n  benmoctl log --node 1")]
    Log,
    /// Fetch every node's chain and check it: hash links, agreement, conservation, signatures.
    #[command(
        after_help = "Examples:\n  benmoctl verify\n  benmoctl verify --allow-down   # while a node is crashed"
    )]
    Verify {
        /// Check the nodes that answer and pass even if some are down (by default a node that
        /// cannot be checked fails the check).
        #[arg(long)]
        allow_down: bool,
    },
    /// Kill a node at once, as kill -9 would.
    #[command(
        after_help = "Example:\n  benmoctl crash 3        # then: docker compose start node3, or benmoctl local start 3"
    )]
    Crash {
        /// The node.
        node: NodeId,
    },
    /// Cut the link between two nodes (both directions unless --one-way).
    #[command(
        after_help = "Examples:\n  benmoctl sever 2 4\n  benmoctl sever 2 4 --one-way   # 2 no longer reaches 4; 4 still reaches 2"
    )]
    Sever {
        /// One end.
        a: NodeId,
        /// The other end.
        b: NodeId,
        /// Cut only what A sends to B.
        #[arg(long)]
        one_way: bool,
    },
    /// Restore the link between two nodes, or every link with --all.
    #[command(after_help = "Examples:\n  benmoctl heal 2 4\n  benmoctl heal --all")]
    Heal(HealArgs),
    /// Cut every link between groups, and heal every link within them: `partition 1,2 3,4,5`.
    #[command(
        after_help = "Example:\n  benmoctl partition 1,2 3,4,5   # the side of three nodes keeps committing"
    )]
    Partition {
        /// Two or more comma-separated groups of node ids.
        #[arg(required = true, num_args = 2..)]
        groups: Vec<String>,
    },
    /// Load the cluster with concurrent clients; prints throughput and latency percentiles.
    #[command(
        after_help = "Examples:\n  benmoctl bench --clients 64 --duration-s 10\n  benmoctl bench --failover-rounds 5 --restart-command \"benmoctl local start {node}\""
    )]
    Bench(BenchArgs),
    /// Serve a live web page of the cluster: nodes, links, messages, chain, safety, and buttons
    /// for transfers and faults.
    #[command(
        after_help = "Examples:\n  benmoctl dashboard                         # http://127.0.0.1:8080\n  benmoctl dashboard --listen 0.0.0.0:8080   # reachable from other machines"
    )]
    Dashboard(DashboardArgs),
    /// Run a cluster of local processes on 127.0.0.1 (no Docker needed).
    #[command(subcommand)]
    Local(LocalCommand),
    /// The cluster's secrets: CA, node certificates, operator token, account keys.
    #[command(subcommand)]
    Secrets(SecretsCommand),
}

/// `secrets`' subcommands.
#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Make the secrets of a new cluster (in --secrets, default ./benmo-secrets), unless they are
    /// there already. Private keys are readable by their owner only.
    #[command(after_help = "Example:\n  benmoctl secrets init --nodes 3 --secrets ./my-secrets")]
    Init {
        /// The cluster's size (default: as many nodes as --cluster lists).
        #[arg(long)]
        nodes: Option<u32>,
        /// Give the files to the owner of this folder (for a container that runs as root but
        /// writes into a folder of the host's user).
        #[arg(long)]
        owner_of: Option<PathBuf>,
    },
}

/// `transfer`'s flags.
#[derive(Args, Debug)]
pub struct TransferArgs {
    /// The account debited.
    #[arg(long)]
    pub from: NodeId,
    /// The account credited.
    #[arg(long)]
    pub to: NodeId,
    /// How much; a positive whole number.
    #[arg(long, value_parser = parse_amount, allow_negative_numbers = true)]
    pub amount: u64,
    /// The transfer id; reuse one to retry safely (default: a random id).
    #[arg(long)]
    pub id: Option<String>,
    /// How long to wait for the commit, in ms.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=300_000))]
    pub timeout_ms: u64,
}

/// `chain`'s flags.
#[derive(Args, Debug)]
pub struct ChainArgs {
    /// The first height (default 0, the genesis).
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// The last height (default: the head).
    #[arg(long)]
    pub to: Option<u64>,
}

/// `heal`'s arguments: two nodes, or --all.
#[derive(Args, Debug)]
pub struct HealArgs {
    /// The two ends of the link.
    #[arg(num_args = 0..=2, required_unless_present = "all", conflicts_with = "all")]
    pub nodes: Vec<NodeId>,
    /// Heal every link of every node.
    #[arg(long)]
    pub all: bool,
}

/// `bench`'s flags.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Concurrent clients, each with one transfer in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub clients: u64,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub duration_s: u64,
    /// HTTP/2 connections to the node, shared by the clients (client i uses connection i mod
    /// conns), as etcd's benchmark tool and `loadgen` do.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub conns: u64,
    /// The amount of every transfer.
    #[arg(long, default_value_t = 1, value_parser = parse_amount, allow_negative_numbers = true)]
    pub amount: u64,
    /// Measure failover instead of load: this many times, crash the leader and time how long
    /// until a transfer sent right after the crash commits.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub failover_rounds: Option<u32>,
    /// Measure catch-up instead of load: crash a follower, commit at least this many blocks
    /// without it, restart it and time how long it takes to fetch and apply them.
    #[arg(long, conflicts_with = "failover_rounds", requires = "restart_command", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub catch_up_blocks: Option<u64>,
    /// With --failover-rounds or --catch-up-blocks: the shell command that brings a crashed node
    /// back ({node} is replaced by its id), e.g. "benmoctl local start {node}", or on Docker
    /// "docker compose wait node{node}; docker compose start node{node}" (right after a crash,
    /// Docker may not have seen the container stop yet, and `start` alone would do nothing).
    #[arg(long)]
    pub restart_command: Option<String>,
}

/// `dashboard`'s flags.
#[derive(Args, Debug, Clone)]
pub struct DashboardArgs {
    /// Where the page is served.
    #[arg(long, default_value = "127.0.0.1:8080", env = "BENMO_DASHBOARD_LISTEN")]
    pub listen: std::net::SocketAddr,
    /// The folder of a `benmoctl local up` cluster: with it the page restarts crashed nodes
    /// itself (default: ./benmo-local, if it is there).
    #[arg(long)]
    pub local_dir: Option<PathBuf>,
    /// What the page tells the user to type to bring a crashed node back when it cannot do it
    /// itself ({node} is replaced by the node's id).
    #[arg(long, default_value = "docker compose start node{node}")]
    pub restart_hint: String,
    /// Each node's Prometheus metrics are on its gRPC host, at its gRPC port plus this.
    #[arg(long, default_value_t = 2000)]
    pub metrics_port_offset: u16,
    /// Serve nothing: check that a dashboard answers on --listen's port, and exit 0 if it does
    /// (for container health checks).
    #[arg(long)]
    pub health_check: bool,
}

/// `local`'s subcommands.
#[derive(Subcommand, Debug)]
pub enum LocalCommand {
    /// Start every node as a background process, with data and logs under --dir.
    #[command(
        after_help = "Example:\n  benmoctl local up                 # five nodes on 127.0.0.1:50051..50055\n  benmoctl --cluster 1=http://127.0.0.1:50051,2=http://127.0.0.1:50052,3=http://127.0.0.1:50053 local up"
    )]
    Up(LocalArgs),
    /// Start one node again (after `benmoctl crash`).
    #[command(after_help = "Example:\n  benmoctl local start 3")]
    Start {
        /// The node.
        node: NodeId,
        /// Where the local cluster lives.
        #[command(flatten)]
        local: LocalArgs,
    },
    /// Stop every node of the local cluster.
    #[command(
        after_help = "Examples:\n  benmoctl local down\n  benmoctl local down --purge   # and delete the data"
    )]
    Down {
        /// Also delete the data, as `docker compose down -v` does.
        #[arg(long)]
        purge: bool,
        /// Where the local cluster lives.
        #[command(flatten)]
        local: LocalArgs,
    },
}

/// Where and how the local cluster runs.
#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// The folder for data, logs and process ids.
    #[arg(long, default_value = "benmo-local")]
    pub dir: PathBuf,
    /// The benmo-node binary (default: next to benmoctl, then on PATH).
    #[arg(long)]
    pub node_binary: Option<PathBuf>,
}

/// Parses an amount: a whole number from 1 to 2^64 - 1, with a message that says which rule broke.
pub fn parse_amount(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!("amounts are positive; {text} is negative"));
    }
    match text.parse::<u64>() {
        Ok(0) => Err("amounts are positive; 0 moves nothing".to_string()),
        Ok(amount) => Ok(amount),
        Err(_) if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) => Err(
            format!("{text} is larger than the largest amount, {}", u64::MAX),
        ),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_shows_an_example_in_its_help() {
        fn check(command: &clap::Command, path: &str) {
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.has_subcommands() {
                    check(sub, &path);
                    continue;
                }
                let example = sub.get_after_help().map(|help| help.to_string());
                assert!(
                    example.as_deref().is_some_and(|help| help.contains(&path)),
                    "`{path} --help` shows no example of `{path}`: {example:?}"
                );
            }
        }
        check(&<Cli as clap::CommandFactory>::command(), "benmoctl");
    }

    #[test]
    fn amounts_must_be_positive_whole_numbers() {
        assert_eq!(parse_amount("20"), Ok(20));
        assert!(parse_amount("0").unwrap_err().contains("positive"));
        assert!(parse_amount("-5").unwrap_err().contains("negative"));
        assert!(parse_amount("18446744073709551616")
            .unwrap_err()
            .contains("larger"));
        assert!(parse_amount("2.5").unwrap_err().contains("whole number"));
        assert!(parse_amount("").unwrap_err().contains("whole number"));
    }
}
