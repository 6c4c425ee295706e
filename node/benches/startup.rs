//! Start-up time and memory of a node whose chain already holds many transfers.
//!
//!     cargo bench -p benmo-node --bench startup                     # 1M transfers
//!     BENMO_STARTUP_TRANSFERS="100000 1000000" cargo bench -p benmo-node --bench startup
//!
//! 10M is not in the default: the chain writer below grows by about 4 KB per transfer written
//! in one process (4.6 GB peak for 1M, 9.5 GB at 2.7M transfers on this machine; not sled's
//! cache, whose capacity makes no difference, nor the ledger, 0.7 GB without the writes), which
//! a running node does not show at that rate; finding where is still to do.
//!
//! For each size, the data directory of node 1 of a 3-node cluster is written through the node's
//! own storage (blocks of 1,024 transfers, each write with its ledger snapshot, as the node
//! writes them) by a process of its own, then the release `benmo-node` binary is started on it and timed until it answers
//! `Status` at the chain's head; its peak resident memory (VmHWM) is read from `/proc` then.
//! The peers are never started: a node serves its status before it hears from anyone.
//! Needs `cargo build --release` first (it runs `target/release/benmo-node`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use benmo::proto;
use benmo_node::storage::{Identity, SledStorage};
use benmo_paxos::{Ledger, Storage, Transfer, TransferId, Write};

const BLOCK_TRANSFERS: u64 = 1_024;
/// Blocks per storage write while the directory is built.
const BLOCKS_PER_WRITE: u64 = 64;

/// Kills the node when the bench ends, however it ends.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Writes a chain of `transfers` transfers (rounded up to whole blocks) into `dir`.
fn build(dir: &Path, transfers: u64) -> u64 {
    let identity = Identity {
        node: 1,
        nodes: 3,
        genesis_balance: 100,
    };
    let mut storage = SledStorage::open_node(dir, &identity).expect("open the data directory");
    let mut ledger = Ledger::genesis(3, 100);
    let blocks = transfers.div_ceil(BLOCK_TRANSFERS);
    let mut writes = Vec::new();
    for height in 1..=blocks {
        // 1 -> 2 -> 3 -> 1: every account keeps its balance, every transfer is applied.
        let batch: Vec<Transfer> = (0..BLOCK_TRANSFERS)
            .map(|index| {
                let from = (index % 3) as u32 + 1;
                Transfer {
                    id: TransferId::new(format!("s{height}-{index}")).expect("an id"),
                    from,
                    to: from % 3 + 1,
                    amount: 1,
                    signature: None,
                }
            })
            .collect();
        let block = ledger.apply(1, &batch);
        writes.push(Write::AppendBlock(block));
        if height % BLOCKS_PER_WRITE == 0 || height == blocks {
            writes.push(Write::Snapshot(ledger.snapshot()));
            storage.write(&writes).expect("write blocks");
            // What the node's background applier does: the log's backlog goes into sled.
            storage.apply_backlog().expect("apply the log to sled");
            // And what its checkpoints do: sled flushes (it keeps dirty pages in memory until).
            storage.checkpoint().expect("checkpoint");
            writes.clear();
        }
    }
    storage.checkpoint().expect("checkpoint");
    blocks
}

fn node_binary() -> PathBuf {
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/benmo-node");
    assert!(
        binary.is_file(),
        "{} is missing: run `cargo build --release` first",
        binary.display()
    );
    binary
}

/// Peak and current resident memory of `pid`, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn measure(dir: &Path, blocks: u64) -> (Duration, f64, f64) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let list = ports
        .iter()
        .enumerate()
        .map(|(index, port)| format!("{}=http://127.0.0.1:{port}", index + 1))
        .collect::<Vec<_>>()
        .join(",");
    let started = Instant::now();
    let node = Node(
        Command::new(node_binary())
            .args(["--id", "1", "--cluster", &list, "--data-dir"])
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{}", ports[0])])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start benmo-node"),
    );
    let address = format!("http://127.0.0.1:{}", ports[0]);
    let mut node = node;
    loop {
        if let Ok(Some(status)) = node.0.try_wait() {
            panic!("benmo-node exited before it answered: {status}");
        }
        let answer = async {
            let mut client =
                proto::ledger_service_client::LedgerServiceClient::connect(address.clone())
                    .await
                    .ok()?;
            client
                .status(proto::StatusRequest {})
                .await
                .ok()
                .map(|reply| reply.into_inner().height)
        };
        if let Some(height) = answer.await {
            assert_eq!(height, blocks, "the node serves the whole chain");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the node never answered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let (peak, now) = memory(node.0.id());
    (elapsed, peak, now)
}

/// Set in the child that writes a chain: `<dir> <transfers>`.
const BUILD_ENV: &str = "BENMO_STARTUP_BUILD";

/// Writes the chain in a process of its own, as a node's earlier life would have: sled's lock
/// and caches are gone with it, as they are for a node that restarts.
fn build_in_child(dir: &Path, transfers: u64) -> u64 {
    let output = Command::new(std::env::current_exe().expect("this bench's path"))
        .env(BUILD_ENV, format!("{} {transfers}", dir.display()))
        .stderr(Stdio::inherit())
        .output()
        .expect("run the chain writer");
    assert!(output.status.success(), "the chain writer failed");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("the chain writer prints the block count")
}

fn main() {
    if let Ok(job) = std::env::var(BUILD_ENV) {
        let (dir, transfers) = job.rsplit_once(' ').expect("<dir> <transfers>");
        let blocks = build(Path::new(dir), transfers.parse().expect("a transfer count"));
        // Reported because it is far above the node's own (see above).
        let (peak, _) = memory(std::process::id());
        eprintln!("chain writer: peak RSS {peak:.0} MiB");
        println!("{blocks}");
        return;
    }
    // `cargo bench` passes --bench; a name filter is not supported here.
    let sizes: Vec<u64> = std::env::var("BENMO_STARTUP_TRANSFERS")
        .unwrap_or_else(|_| "1000000".to_string())
        .split_whitespace()
        .map(|size| {
            size.parse()
                .expect("BENMO_STARTUP_TRANSFERS: whole numbers")
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    for transfers in sizes {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("node-1");
        let building = Instant::now();
        let blocks = build_in_child(&data, transfers);
        let built = building.elapsed();
        let size = fs_size(&data) as f64 / 1024.0 / 1024.0;
        let (startup, peak, now) = runtime.block_on(measure(&data, blocks));
        println!(
            "{transfers} transfers ({blocks} blocks, {size:.0} MiB on disk, written in {built:.1?}): \
             start-up to Status {startup:.0?}, peak RSS {peak:.0} MiB, RSS {now:.0} MiB"
        );
    }
}

fn fs_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => fs_size(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
