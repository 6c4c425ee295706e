//! Start-up time and memory of a node whose chain already holds many transfers.
//!
//!     cargo bench -p benmo-node --bench startup                     # 1M transfers
//!     BENMO_STARTUP_TRANSFERS="100000 1000000" cargo bench -p benmo-node --bench startup
//!
//!     BENMO_STARTUP_TRANSFERS=10000000 cargo bench -p benmo-node --bench startup  # ~6 minutes
//!
//! For each size, the data directory of node 1 of a 3-node cluster is written through the node's
//! own storage (blocks of 1,024 transfers, each write with its ledger snapshot, as the node
//! writes them), about a million transfers per process, each resuming the ledger from the store
//! as a restarted node does. Then the release `benmo-node` binary is started on it twice and
//! timed until it answers `Status` at the chain's head; its peak resident memory (VmHWM) is read
//! from `/proc` then. The peers are never started: a node serves its status before it hears
//! from anyone.
//!
//! The first start costs more than the second: sled 0.34 writes the snapshot of its page table
//! only when it opens, so it first replays everything written since its previous opening (here,
//! the last writer's million transfers). A node that wrote all 10M in one life took 3.8 s to
//! start the first time on this machine, 63 ms after that.
//! Needs `cargo build --release` first (it runs `target/release/benmo-node`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use benmo::proto;
use benmo_node::storage::{Identity, SledStorage};
use benmo_paxos::{restore, Storage, Transfer, TransferId, Write};

const BLOCK_TRANSFERS: u64 = 1_024;
/// Blocks per storage write while the directory is built.
const BLOCKS_PER_WRITE: u64 = 64;
/// Blocks written by one writer process (about 1M transfers): see the note at the top.
const BLOCKS_PER_WRITER: u64 = 977;

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

/// Extends the chain in `dir` by `blocks` blocks (creating the directory on first use), resuming
/// the ledger from the store as the node does, so the dedup index is read from disk and the
/// ledger keeps only recent ids. Returns the chain's new height.
fn extend(dir: &Path, blocks: u64) -> u64 {
    let identity = Identity {
        node: 1,
        nodes: 3,
        genesis_balance: 100,
    };
    let mut storage = SledStorage::open_node(dir, &identity).expect("open the data directory");
    // As a node does once it serves: new ids then cost no read of the index.
    storage
        .id_filter_scan()
        .run()
        .expect("fill the dedup index's filter");
    let mut ledger = restore(&storage, 3, 100)
        .expect("restore the ledger")
        .ledger;
    let first = ledger.height() + 1;
    let last = ledger.height() + blocks;
    let mut writes = Vec::new();
    for height in first..=last {
        // 1 -> 2 -> 3 -> 1: every transfer is applied, whatever the balances.
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
        if height % BLOCKS_PER_WRITE == 0 || height == last {
            writes.push(Write::Snapshot(ledger.snapshot()));
            storage.write(&writes).expect("write blocks");
            // What the node's background applier does: the log's backlog goes into sled.
            storage.apply_backlog().expect("apply the log to sled");
            // And what its checkpoints do: sled flushes (it keeps dirty pages in memory until).
            storage.checkpoint().expect("checkpoint");
            ledger.archive_through(height);
            writes.clear();
        }
    }
    storage.checkpoint().expect("checkpoint");
    last
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

/// Set in the child that extends a chain: `<dir> <blocks>`.
const BUILD_ENV: &str = "BENMO_STARTUP_BUILD";

/// Writes a chain of `transfers` transfers (rounded up to whole blocks) into `dir`, about a
/// million at a time, each million by a process of its own that restarts from what the last one
/// left, as a node's earlier lives would have. Returns the height and the writers' peak RSS.
fn build(dir: &Path, transfers: u64) -> (u64, f64) {
    let blocks = transfers.div_ceil(BLOCK_TRANSFERS);
    let mut height = 0;
    let mut writer_peak: f64 = 0.0;
    while height < blocks {
        let chunk = BLOCKS_PER_WRITER.min(blocks - height);
        let output = Command::new(std::env::current_exe().expect("this bench's path"))
            .env(BUILD_ENV, format!("{} {chunk}", dir.display()))
            .stderr(Stdio::inherit())
            .output()
            .expect("run the chain writer");
        assert!(output.status.success(), "the chain writer failed");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (new_height, peak) = stdout
            .trim()
            .split_once(' ')
            .expect("the chain writer prints its height and peak RSS");
        let new_height: u64 = new_height.parse().expect("a height");
        assert_eq!(new_height, height + chunk, "the writer extends the chain");
        height = new_height;
        writer_peak = writer_peak.max(peak.parse().expect("a peak RSS"));
    }
    (height, writer_peak)
}

fn main() {
    if let Ok(job) = std::env::var(BUILD_ENV) {
        let (dir, blocks) = job.rsplit_once(' ').expect("<dir> <blocks>");
        let height = extend(Path::new(dir), blocks.parse().expect("a block count"));
        let (peak, _) = memory(std::process::id());
        println!("{height} {peak:.0}");
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
        let (blocks, writer_peak) = build(&data, transfers);
        let built = building.elapsed();
        let size = fs_size(&data) as f64 / 1024.0 / 1024.0;
        let (first, first_peak, _) = runtime.block_on(measure(&data, blocks));
        let (again, peak, now) = runtime.block_on(measure(&data, blocks));
        println!(
            "{transfers} transfers ({blocks} blocks, {size:.0} MiB on disk, written in {built:.1?}): \
             first start to Status {:.0} ms (peak RSS {first_peak:.0} MiB), \
             restart {:.0} ms (peak RSS {peak:.0} MiB, RSS {now:.0} MiB); \
             the writers' peak RSS {writer_peak:.0} MiB",
            first.as_secs_f64() * 1e3,
            again.as_secs_f64() * 1e3,
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
