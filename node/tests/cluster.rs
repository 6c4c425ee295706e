//! Integration tests: real `benmo-node` processes on loopback, driven by benmoctl.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::{leader, Cluster, PATIENCE};

async fn balances(cluster: &Cluster, node: u32) -> (u64, Vec<u64>) {
    let (code, json) = cluster
        .ctl_json(&["--node", &node.to_string(), "balances"])
        .await;
    assert_eq!(code, 0, "balances at node {node}: {json}");
    let list = json["balances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["balance"].as_u64().unwrap())
        .collect();
    (json["height"].as_u64().unwrap(), list)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_commits_and_every_node_agrees_on_the_balances() {
    let cluster = Cluster::start(5).await;
    let committed = cluster.transfer(1, 3, 20).await;
    assert_eq!(committed["outcome"]["status"], "applied");
    let height = committed["height"].as_u64().unwrap();
    assert!(height >= 1);
    assert_eq!(committed["block_hash"].as_str().unwrap().len(), 64);
    cluster.wait_until_converged(height).await;
    for node in 1..=5 {
        let (_, list) = balances(&cluster, node).await;
        assert_eq!(list, vec![80, 100, 120, 100, 100], "node {node}");
    }
    let run = cluster
        .ctl(&["transfer", "--from", "2", "--to", "5", "--amount", "7"])
        .await;
    assert_eq!(run.code, 0);
    assert!(run.out.starts_with("committed transfer t-"), "{}", run.out);
    let verify = cluster.ctl(&["verify"]).await;
    assert_eq!(verify.code, 0, "{verify:?}");
    // A follower learns of the last block with the leader's next message; node 1's chain is read
    // twice below, so it must hold that block first.
    cluster.wait_until_converged(height + 1).await;

    // Chain ranges are exact, at both ends.
    let heights = |json: serde_json::Value| -> Vec<u64> {
        json["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|block| block["height"].as_u64().unwrap())
            .collect()
    };
    let (code, json) = cluster
        .ctl_json(&["chain", "--from", "1", "--to", "1"])
        .await;
    assert_eq!(code, 0);
    assert_eq!(heights(json), vec![1]);
    let (_, json) = cluster.ctl_json(&["chain", "--to", "0"]).await;
    assert_eq!(heights(json), vec![0]);
    let (_, json) = cluster.ctl_json(&["--node", "1", "chain"]).await;
    let head = *heights(json.clone()).last().unwrap();
    assert_eq!(heights(json), (0..=head).collect::<Vec<_>>());
    let backwards = cluster.ctl(&["chain", "--from", "2", "--to", "1"]).await;
    assert_eq!(backwards.code, 2, "{backwards:?}");
    let (code, json) = cluster
        .ctl_json(&["--node", "1", "chain", "--to", &u64::MAX.to_string()])
        .await;
    assert_eq!(code, 0, "{json}");
    assert_eq!(
        heights(json),
        (0..=head).collect::<Vec<_>>(),
        "a range to u64::MAX is the whole chain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transfers_are_refused_with_reasons_and_move_nothing() {
    let cluster = Cluster::start(3).await;
    let cases: [(&[&str], i32, &str); 6] = [
        (
            &["--from", "1", "--to", "9", "--amount", "5"],
            1,
            "account 9 does not exist (accounts are 1..=3)",
        ),
        (
            &["--from", "2", "--to", "2", "--amount", "5"],
            1,
            "cannot transfer from account 2 to itself",
        ),
        (
            &["--from", "1", "--to", "2", "--amount", "0"],
            2,
            "amounts are positive",
        ),
        (
            &["--from", "1", "--to", "2", "--amount", "-3"],
            2,
            "negative",
        ),
        (
            &[
                "--from",
                "1",
                "--to",
                "2",
                "--amount",
                "99999999999999999999",
            ],
            2,
            "larger than the largest amount",
        ),
        (
            &[
                "--from", "1", "--to", "2", "--amount", "5", "--id", "bad id",
            ],
            2,
            "transfer id has the character ' '",
        ),
    ];
    for (arguments, code, message) in cases {
        let mut all = vec!["transfer"];
        all.extend_from_slice(arguments);
        let run = cluster.ctl(&all).await;
        assert_eq!(run.code, code, "{arguments:?}: {run:?}");
        assert!(run.err.contains(message), "{arguments:?}: {run:?}");
    }
    // Insufficient funds is decided when the transfer is ordered: recorded, and no money moves.
    let run = cluster
        .ctl(&["transfer", "--from", "1", "--to", "2", "--amount", "101"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.out
            .contains("insufficient funds: account 1 has 100, transfer needs 101"),
        "{run:?}"
    );
    let (_, list) = balances(&cluster, 1).await;
    assert_eq!(list, vec![100, 100, 100]);
    let unknown_node = cluster.ctl(&["--node", "4", "status"]).await;
    assert_eq!(unknown_node.code, 2);
    assert!(unknown_node.err.contains("--node 4 is not in the cluster"));
    let crash_unknown = cluster.ctl(&["crash", "7"]).await;
    assert_eq!(crash_unknown.code, 2);
    assert!(
        crash_unknown
            .err
            .starts_with("error: node 7 is not in the cluster (nodes are 1..=3)"),
        "{crash_unknown:?}"
    );
    let no_port = support::ctl(
        &support::Target {
            list: "1=http://a".to_string(),
            secrets: None,
        },
        &["status"],
    )
    .await;
    assert_eq!(no_port.code, 2);
    assert!(no_port.err.contains("needs a port"), "{no_port:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_id_debits_once_and_a_reused_id_is_refused() {
    let cluster = Cluster::start(3).await;
    let arguments = [
        "transfer", "--from", "1", "--to", "2", "--amount", "30", "--id", "pay-1",
    ];
    let (code, first) = cluster.ctl_json(&arguments).await;
    assert_eq!(code, 0);
    // The retry goes to another node on purpose: deduplication is the cluster's, not a node's.
    let mut retry = vec!["--node", "3"];
    retry.extend_from_slice(&arguments);
    let (code, second) = cluster.ctl_json(&retry).await;
    assert_eq!(code, 0, "{second}");
    assert_eq!(first["height"], second["height"]);
    assert_eq!(first["block_hash"], second["block_hash"]);
    let height = first["height"].as_u64().unwrap();
    cluster.wait_until_converged(height).await;
    let (_, list) = balances(&cluster, 2).await;
    assert_eq!(list, vec![70, 130, 100]);
    let reused = cluster
        .ctl(&[
            "transfer", "--from", "1", "--to", "3", "--amount", "5", "--id", "pay-1",
        ])
        .await;
    assert_eq!(reused.code, 1, "{reused:?}");
    assert!(reused.err.contains("already used"), "{reused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_leader_crashes_a_new_leader_commits() {
    let mut cluster = Cluster::start(5).await;
    let old = cluster.wait_for_leader().await;
    let run = cluster.ctl(&["crash", &old.to_string()]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.out.contains(&format!("node {old} crashed")));
    let exit = cluster.reap(old);
    assert!(!exit.success(), "a crash is not a clean exit: {exit:?}");
    let from = if old == 1 { 2 } else { 1 };
    let committed = cluster.transfer(from, old, 10).await;
    assert_eq!(committed["outcome"]["status"], "applied");
    let status = cluster.status().await;
    let new = leader(&status).expect("a new leader");
    assert_ne!(new, old);
    assert_eq!(status[old as usize - 1]["up"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_and_verify_passes() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = if leader == 3 { 2 } else { 3 };
    // The follower is killed in the middle of a load, so it dies with writes in flight.
    let until = Instant::now() + Duration::from_secs(3);
    let load = async {
        let (a, b) = tokio::join!(
            support::steady_client(&cluster.target, 3, 1, until),
            support::steady_client(&cluster.target, 3, 2, until),
        );
        a.into_iter().chain(b).collect::<support::Acknowledged>()
    };
    let kill = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let run = cluster.ctl(&["crash", &follower.to_string()]).await;
        assert_eq!(run.code, 0, "{run:?}");
    };
    let (acknowledged, ()) = tokio::join!(load, kill);
    cluster.reap(follower);
    let verify = cluster.ctl(&["verify"]).await;
    assert_eq!(
        verify.code, 1,
        "a node that cannot be checked fails the check: {verify:?}"
    );
    assert!(
        verify
            .out
            .contains(&format!("node {follower} could not be checked")),
        "{verify:?}"
    );
    let verify = cluster.ctl(&["verify", "--allow-down"]).await;
    assert_eq!(
        verify.code, 0,
        "with --allow-down, a node being down is not a violation: {verify:?}"
    );
    assert!(
        verify
            .out
            .contains("every transfer signed by its debited account"),
        "{verify:?}"
    );
    assert!(verify
        .err
        .contains(&format!("node {follower} is unreachable")));
    // The load may have drained any account, so the richest one pays.
    let (_, list) = balances(&cluster, leader).await;
    let richest = (1..=3u32).max_by_key(|id| list[*id as usize - 1]).unwrap();
    let height = cluster.transfer(richest, richest % 3 + 1, 1).await["height"]
        .as_u64()
        .unwrap();
    cluster.spawn(follower);
    cluster.wait_until_serving(follower).await;
    cluster.wait_until_converged(height).await;
    let (code, report) = cluster.ctl_json(&["verify"]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["ok"], true);
    for node in report["nodes"].as_array().unwrap() {
        assert_eq!(node["behind"], 0, "{report}");
    }
    assert!(acknowledged.len() >= 10, "{}", acknowledged.len());
    support::assert_acknowledged_in_chain(&cluster.target, follower, &acknowledged).await;
    let (_, list) = balances(&cluster, follower).await;
    assert_eq!(list.iter().sum::<u64>(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sever_shows_in_status_and_a_minority_partition_waits_for_the_heal() {
    let cluster = Cluster::start(5).await;
    let run = cluster.ctl(&["sever", "2", "4"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let status = cluster.status().await;
    assert_eq!(status[1]["cut_outgoing"], serde_json::json!([4]));
    assert_eq!(status[1]["cut_incoming"], serde_json::json!([4]));
    assert_eq!(status[3]["cut_outgoing"], serde_json::json!([2]));
    let table = cluster.ctl(&["status"]).await;
    assert!(
        table.out.lines().nth(2).unwrap().ends_with('4'),
        "{}",
        table.out
    );
    cluster.transfer(2, 4, 5).await;

    // A minority partition: {1, 2} against {3, 4, 5}.
    let run = cluster.ctl(&["partition", "1,2", "3,4,5"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    cluster
        .wait_until("the majority side has a leader", |nodes| {
            nodes
                .iter()
                .any(|node| node["role"] == "leader" && node["node"].as_u64().unwrap() >= 3)
        })
        .await;
    let majority = cluster
        .ctl_json(&[
            "--node", "4", "transfer", "--from", "3", "--to", "4", "--amount", "1",
        ])
        .await;
    assert_eq!(majority.0, 0, "{}", majority.1);
    let minority = cluster
        .ctl_json(&[
            "--node",
            "1",
            "transfer",
            "--from",
            "1",
            "--to",
            "5",
            "--amount",
            "2",
            "--id",
            "minority-1",
            "--timeout-ms",
            "1000",
        ])
        .await;
    assert_eq!(minority.0, 3, "the minority cannot commit: {}", minority.1);
    assert_eq!(minority.1["pending"], true);
    let (_, log) = cluster.ctl_json(&["--node", "1", "log"]).await;
    assert_eq!(log["nodes"][0]["pending"][0]["id"], "minority-1");

    // A client waits on the pending transfer at node 1 while another client reuses its id for a
    // different transfer: only the second is refused, and the first commits after the heal,
    // exactly once.
    let waiting = cluster.ctl_json(&[
        "--node",
        "1",
        "transfer",
        "--from",
        "1",
        "--to",
        "5",
        "--amount",
        "2",
        "--id",
        "minority-1",
        "--timeout-ms",
        "20000",
    ]);
    let interfere_then_heal = async {
        // A round trip to node 1 first, so the waiting call (sent first) is in before the reuse.
        let (code, _) = cluster.ctl_json(&["--node", "1", "log"]).await;
        assert_eq!(code, 0);
        let reused = cluster
            .ctl(&[
                "--node",
                "1",
                "transfer",
                "--from",
                "1",
                "--to",
                "5",
                "--amount",
                "3",
                "--id",
                "minority-1",
            ])
            .await;
        assert_eq!(reused.code, 1, "{reused:?}");
        assert!(reused.err.contains("already used"), "{reused:?}");
        let run = cluster.ctl(&["heal", "--all"]).await;
        assert_eq!(run.code, 0, "{run:?}");
    };
    let (again, ()) = tokio::join!(waiting, interfere_then_heal);
    assert_eq!(again.0, 0, "{}", again.1);
    let height = again.1["height"].as_u64().unwrap();
    cluster.wait_until_converged(height).await;
    let (code, report) = cluster.ctl_json(&["verify"]).await;
    assert_eq!(code, 0, "{report}");
    let (_, list) = balances(&cluster, 5).await;
    assert_eq!(list, vec![98, 95, 99, 106, 102]);
}

/// Builds a shape of cut links with benmoctl and checks that a transfer sent to `probe` commits.
async fn assert_commits_under(cluster: &Cluster, cuts: &[(u32, u32)], probe: u32, shape: &str) {
    for (a, b) in cuts {
        let run = cluster
            .ctl(&["sever", &a.to_string(), &b.to_string()])
            .await;
        assert_eq!(run.code, 0, "{run:?}");
    }
    let started = Instant::now();
    let to = if probe == 1 { "2" } else { "1" };
    let (code, json) = cluster
        .ctl_json(&[
            "--node",
            &probe.to_string(),
            "transfer",
            "--from",
            &probe.to_string(),
            "--to",
            to,
            "--amount",
            "1",
            "--timeout-ms",
            "10000",
        ])
        .await;
    assert_eq!(code, 0, "{shape}: {json}");
    let elapsed = started.elapsed();
    println!(
        "{shape}: committed again {} ms after the cut",
        elapsed.as_millis()
    );
    // The simulator holds the protocol to 3 election timeouts (1.2 s); real processes on a
    // loaded two-core machine get slack, but not the transfer's whole 10 s.
    assert!(
        elapsed < Duration::from_secs(4),
        "{shape}: committed again only after {elapsed:?}"
    );
    let run = cluster.ctl(&["heal", "--all"]).await;
    assert_eq!(run.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partial_connectivity_shape_commits() {
    let cluster = Cluster::start(5).await;
    let all_pairs = |keep: &dyn Fn(u32, u32) -> bool| -> Vec<(u32, u32)> {
        let mut cuts = Vec::new();
        for a in 1..=5 {
            for b in a + 1..=5 {
                if !keep(a, b) {
                    cuts.push((a, b));
                }
            }
        }
        cuts
    };
    // Quorum loss: only the hub keeps its links; the leader reaches the hub alone.
    let old = cluster.wait_for_leader().await;
    let hub = old % 5 + 1;
    let cuts = all_pairs(&|a, b| a == hub || b == hub);
    assert_commits_under(&cluster, &cuts, hub, "quorum-loss").await;

    // Constrained election: the leader is cut off, the others reach only the hub.
    let old = cluster.wait_for_leader().await;
    let hub = old % 5 + 1;
    let cuts = all_pairs(&|a, b| (a == hub || b == hub) && a != old && b != old);
    assert_commits_under(&cluster, &cuts, hub, "constrained-election").await;

    // Chained: a line with the leader at one end.
    let old = cluster.wait_for_leader().await;
    let line: Vec<u32> = (0..5).map(|offset| (old - 1 + offset) % 5 + 1).collect();
    let position = |node: u32| line.iter().position(|x| *x == node).unwrap();
    let cuts = all_pairs(&|a, b| position(a).abs_diff(position(b)) == 1);
    assert_commits_under(&cluster, &cuts, line[2], "chained").await;

    let (code, report) = cluster.ctl_json(&["verify"]).await;
    assert_eq!(code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_another_node_or_a_corrupted_one_is_refused() {
    let mut cluster = Cluster::start(3).await;
    cluster.transfer(1, 2, 1).await;
    cluster.kill(1);
    cluster.kill(2);
    let message = refused_start(&cluster, 1, &cluster.data_dir(2)).await;
    assert!(
        message.contains("belongs to node 2 of a 3-node cluster"),
        "{message}"
    );
    // Overwrite sled's data file with garbage, and delete the write-ahead log that could rebuild
    // it: the node must refuse, not start empty.
    let data_file = cluster.data_dir(1).join("db");
    let length = std::fs::metadata(&data_file).unwrap().len() as usize;
    std::fs::write(&data_file, vec![0x5a; length]).unwrap();
    std::fs::remove_dir_all(cluster.data_dir(1).join("wal")).unwrap();
    let message = refused_start(&cluster, 1, &cluster.data_dir(1)).await;
    assert!(message.contains("refusing to start"), "{message}");
}

/// Starts node `id` on `data_dir`, expects it to exit with an error on its own, and returns
/// what it logged. A node that keeps running fails the test (and is killed).
async fn refused_start(cluster: &Cluster, id: u32, data_dir: &std::path::Path) -> String {
    let log = cluster.log_path(id);
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    let mut child = tokio::process::Command::from(cluster.command(id, data_dir))
        .kill_on_drop(true)
        .spawn()
        .expect("run benmo-node");
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "node {id} started on {} instead of refusing",
                data_dir.display()
            )
        })
        .expect("wait for benmo-node");
    assert!(!status.success());
    std::fs::read_to_string(&log).unwrap_or_default()[before..].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_under_faults_are_all_kept_after_the_heal() {
    let mut cluster = Cluster::start(5).await;
    let until = Instant::now() + Duration::from_secs(6);
    let faults = async {
        let mut crashed = Vec::new();
        let steps: [&[&str]; 4] = [
            &["sever", "1", "3"],
            &["sever", "2", "5", "--one-way"],
            &["partition", "1,2", "3,4,5"],
            &["heal", "--all"],
        ];
        for step in steps {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let run = cluster.ctl(step).await;
            assert_eq!(run.code, 0, "{step:?}: {run:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let leader = cluster.wait_for_leader().await;
        let run = cluster.ctl(&["crash", &leader.to_string()]).await;
        assert_eq!(run.code, 0, "{run:?}");
        crashed.push(leader);
        crashed
    };
    let clients = async {
        let mut all = BTreeMap::new();
        let results = futures_join(&cluster, until).await;
        for acknowledged in results {
            all.extend(acknowledged);
        }
        all
    };
    let (crashed, acknowledged) = tokio::join!(faults, clients);
    for node in crashed {
        cluster.reap(node);
        cluster.spawn(node);
        cluster.wait_until_serving(node).await;
    }
    let top = acknowledged
        .values()
        .map(|(height, _)| *height)
        .max()
        .unwrap_or(0);
    let status = cluster.wait_until_converged(top).await;
    let height = status[0]["height"].as_u64().unwrap();
    assert!(
        acknowledged.len() >= 20,
        "too few transfers got through: {}",
        acknowledged.len()
    );
    let (code, report) = cluster.ctl_json(&["verify"]).await;
    assert_eq!(code, 0, "{report}");
    for node in 1..=5 {
        let chain_height =
            support::assert_acknowledged_in_chain(&cluster.target, node, &acknowledged).await;
        assert_eq!(chain_height, height, "node {node}");
    }
    println!(
        "{} transfers acknowledged, chain height {height}, all found exactly once",
        acknowledged.len()
    );
}

async fn futures_join(cluster: &Cluster, until: Instant) -> Vec<support::Acknowledged> {
    let list = &cluster.target;
    let (a, b, c, d) = tokio::join!(
        support::steady_client(list, 5, 1, until),
        support::steady_client(list, 5, 2, until),
        support::steady_client(list, 5, 3, until),
        support::steady_client(list, 5, 4, until),
    );
    vec![a, b, c, d]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benmoctl_local_runs_a_cluster_of_processes() {
    let directory = tempfile::tempdir().unwrap();
    let ports = support::free_ports(3);
    let secrets = directory.path().join("secrets").display().to_string();
    let cluster_list = ports
        .iter()
        .enumerate()
        .map(|(index, port)| format!("{}=http://127.0.0.1:{port}", index + 1))
        .collect::<Vec<_>>()
        .join(",");
    let dir = directory.path().join("local");
    let binary = support::node_binary();
    let ctl = |arguments: Vec<String>| {
        let cluster_list = cluster_list.clone();
        let secrets = secrets.clone();
        async move {
            let mut all = vec![
                "benmoctl".to_string(),
                "--cluster".to_string(),
                cluster_list,
                "--secrets".to_string(),
                secrets,
            ];
            all.extend(arguments);
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = benmoctl::run(
                all,
                &mut benmoctl::Terminal {
                    out: &mut out,
                    err: &mut err,
                },
            )
            .await;
            (
                code,
                String::from_utf8_lossy(&out).to_string(),
                String::from_utf8_lossy(&err).to_string(),
            )
        }
    };
    let local = |command: &str| -> Vec<String> {
        vec![
            "local".into(),
            command.into(),
            "--dir".into(),
            dir.display().to_string(),
            "--node-binary".into(),
            binary.display().to_string(),
        ]
    };
    // Whatever happens below, stop what `local up` started.
    struct Down<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Down<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let pid_dir = dir.clone();
    let _down = Down(move || {
        for node in 1..=3 {
            if let Ok(pid) = std::fs::read_to_string(pid_dir.join(format!("node-{node}.pid"))) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    if String::from_utf8_lossy(&cmdline).contains("benmo-node") {
                        // SAFETY: kill takes integers; the pid is a benmo-node this test started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
    });

    let (code, out, err) = ctl(local("up")).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches(" up: pid ").count(), 3, "{out}");
    assert!(out.contains("made the secrets"), "secure by default: {out}");
    assert!(
        std::path::Path::new(&secrets).join("cluster.json").exists(),
        "{out}"
    );
    let started = Instant::now();
    loop {
        let (code, out, _) = ctl(vec![
            "transfer".into(),
            "--from".into(),
            "1".into(),
            "--to".into(),
            "3".into(),
            "--amount".into(),
            "20".into(),
        ])
        .await;
        if code == 0 {
            assert!(out.contains("committed"));
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the local cluster never committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _, _) = ctl(vec!["crash".into(), "3".into()]).await;
    assert_eq!(code, 0);
    let mut start = local("start");
    start.insert(2, "3".into());
    let (code, out, err) = ctl(start).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("node 3 up"), "{out}");
    let mut down = local("down");
    down.push("--purge".into());
    let (code, out, err) = ctl(down).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches(" stopped (pid ").count(), 3, "{out}");
    assert!(!dir.exists(), "--purge removes the data");
}

/// Every chain holds transfer `id` exactly once (any later copy is a duplicate).
async fn assert_applied_once_everywhere(cluster: &Cluster, id: &str, nodes: u32) {
    for node in 1..=nodes {
        let (_, seen) = support::chain_index(&cluster.target, node).await;
        let appearances = seen
            .get(id)
            .unwrap_or_else(|| panic!("{id} is missing from node {node}'s chain"));
        let ordered = appearances
            .iter()
            .filter(|(_, outcome)| outcome != "duplicate")
            .count();
        assert_eq!(ordered, 1, "node {node}: {appearances:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_without_node_goes_to_the_side_that_can_commit() {
    // Seven nodes; node 1 ends up in the minority {1, 2, 3} and the majority {4..7} leads.
    let cluster = Cluster::start(7).await;
    cluster.wait_for_leader().await;
    let run = cluster.ctl(&["partition", "1,2,3", "4,5,6,7"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    cluster
        .wait_until("the majority side has a leader a quorum hears", |nodes| {
            nodes.iter().any(|node| {
                node["role"] == "leader"
                    && node["quorum_connected"] == true
                    && node["node"].as_u64().unwrap() >= 4
            })
        })
        .await;
    let started = Instant::now();
    let (code, json) = cluster
        .ctl_json(&[
            "transfer", "--from", "4", "--to", "6", "--amount", "1", "--id", "routed-1",
        ])
        .await;
    let elapsed = started.elapsed();
    assert_eq!(code, 0, "{json}");
    assert!(json["node"].as_u64().unwrap() >= 4, "{json}");
    assert_eq!(json["routed"], "the leader a quorum follows");
    // One election timeout (400 ms) plus a commit, with room for a loaded test machine.
    assert!(elapsed < Duration::from_millis(2_500), "took {elapsed:?}");

    // Verbose says where it went, on stderr.
    let run = cluster
        .ctl(&[
            "--verbose",
            "transfer",
            "--from",
            "5",
            "--to",
            "6",
            "--amount",
            "1",
        ])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.err.contains("the leader a quorum follows"),
        "{}",
        run.err
    );

    // --node keeps its meaning: exactly that node, which cannot commit from the minority.
    let (code, json) = cluster
        .ctl_json(&[
            "--node",
            "1",
            "transfer",
            "--from",
            "1",
            "--to",
            "2",
            "--amount",
            "1",
            "--timeout-ms",
            "800",
        ])
        .await;
    assert_eq!(code, 3, "the minority cannot commit: {json}");
    assert_eq!(json["node"], 1);

    run_heal_and_check(&cluster, "routed-1").await;
}

async fn run_heal_and_check(cluster: &Cluster, id: &str) {
    let run = cluster.ctl(&["heal", "--all"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let height = cluster.transfer(1, 2, 1).await["height"].as_u64().unwrap();
    cluster.wait_until_converged(height).await;
    assert_applied_once_everywhere(cluster, id, cluster.nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_follows_the_leader_when_its_node_is_cut_off_during_the_wait() {
    let cluster = Cluster::start(5).await;
    let leader = cluster.wait_for_leader().await;
    // The leader is cut off from everyone, and the transfer starts at once: the leader still
    // reports the majority it heard in its last heartbeat round, so it is where the transfer
    // usually goes first, and where it cannot commit. The client must take it, under the same id,
    // to the new leader's side, and it must be applied exactly once.
    let others: Vec<String> = (1..=5)
        .filter(|node| *node != leader)
        .map(|node| node.to_string())
        .collect();
    let run = cluster
        .ctl(&["partition", &leader.to_string(), &others.join(",")])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let started = Instant::now();
    let run = cluster
        .ctl(&[
            "--verbose",
            "--output",
            "json",
            "transfer",
            "--from",
            &others[0],
            "--to",
            &others[1],
            "--amount",
            "1",
            "--id",
            "rerouted-1",
            "--timeout-ms",
            "8000",
        ])
        .await;
    let elapsed = started.elapsed();
    assert_eq!(run.code, 0, "{run:?}");
    let answered_by = run.json()["node"].as_u64().unwrap() as u32;
    assert_ne!(
        answered_by, leader,
        "the cut-off node cannot commit: {run:?}"
    );
    let first = format!("sending transfer rerouted-1 to node {leader} ");
    if run.err.contains(&first) {
        assert!(
            run.err.contains("re-routing transfer rerouted-1"),
            "{}",
            run.err
        );
    }
    println!("{}", run.err.trim());
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    run_heal_and_check(&cluster, "rerouted-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_does_not_make_leadership_flap() {
    // Every fsync takes 40 ms more (an ordinary cloud disk under load), longer than a heartbeat.
    // Writes run beside the core, so heartbeats and their replies never wait behind one: the
    // leader elected at the start keeps leading through a load run.
    let cluster = Cluster::start_with(3, &["--test-fsync-delay-ms", "40"]).await;
    let leader = cluster.wait_for_leader().await;
    let before = cluster.status().await;
    let ballot = before[leader as usize - 1]["ballot"].clone();
    let elections = |cluster: &Cluster| -> usize {
        (1..=3)
            .map(|node| {
                std::fs::read_to_string(cluster.log_path(node))
                    .unwrap_or_default()
                    .matches("starting election")
                    .count()
            })
            .sum()
    };
    let elections_before = elections(&cluster);
    let (code, bench) = cluster
        .ctl_json(&["bench", "--clients", "8", "--duration-s", "6"])
        .await;
    assert_eq!(code, 0, "{bench}");
    assert!(bench["committed"].as_u64().unwrap() > 0, "{bench}");
    let after = cluster.status().await;
    assert_eq!(after[leader as usize - 1]["role"], "leader", "{after:#?}");
    assert_eq!(after[leader as usize - 1]["ballot"], ballot, "{after:#?}");
    assert_eq!(
        elections(&cluster),
        elections_before,
        "no election during the load run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_a_cut_link_and_a_leader_change() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = leader % 3 + 1;
    let text = cluster.metrics(leader);
    for name in [
        "benmo_is_leader",
        "benmo_has_leader",
        "benmo_leader_changes_total",
        "benmo_ballot_round",
        "benmo_decided_height",
        "benmo_applied_height",
        "benmo_pending_transfers",
        "benmo_commit_latency_seconds_bucket",
        "benmo_flush_seconds_bucket",
        "benmo_peer_messages_sent_total",
        "benmo_peer_messages_received_total",
        "benmo_peer_heartbeat_rtt_seconds_bucket",
        "benmo_grpc_requests_total",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    cluster.transfer(1, 2, 1).await;
    let committed = "benmo_transfers_total{outcome=\"committed\"}";
    let served: f64 = (1..=3).map(|node| cluster.metric(node, committed)).sum();
    assert_eq!(served, 1.0);

    // A severed link shows in the sender's failure counters.
    let failed =
        format!("benmo_peer_messages_failed_total{{peer=\"{follower}\",kind=\"heartbeat\"}}");
    assert_eq!(cluster.metric(leader, &failed), 0.0);
    let run = cluster
        .ctl(&["sever", &leader.to_string(), &follower.to_string()])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let started = Instant::now();
    while cluster.metric(leader, &failed) == 0.0 {
        assert!(started.elapsed() < PATIENCE, "no failed heartbeat counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = cluster.ctl(&["heal", "--all"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    // The cut may have moved leadership: the crash below is aimed at the node whose own gauge
    // says it leads (a node others name may still be finishing its Phase 1).
    let started = Instant::now();
    let leader = loop {
        if let Some(node) = (1..=3).find(|node| cluster.metric(*node, "benmo_is_leader") == 1.0) {
            break node;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no node's gauge says it leads"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // A leader crash shows in the survivors' leader-change counters and the new leader's gauge.
    let changes = "benmo_leader_changes_total";
    let survivors: Vec<u32> = (1..=3).filter(|node| *node != leader).collect();
    let before: Vec<f64> = survivors
        .iter()
        .map(|node| cluster.metric(*node, changes))
        .collect();
    let run = cluster.ctl(&["crash", &leader.to_string()]).await;
    assert_eq!(run.code, 0, "{run:?}");
    cluster.reap(leader);
    let status = cluster
        .wait_until("a new leader", |nodes| {
            support::leader(nodes).is_some_and(|new| new != leader)
        })
        .await;
    let new_leader = support::leader(&status).unwrap();
    let started = Instant::now();
    while cluster.metric(new_leader, "benmo_is_leader") != 1.0 {
        assert!(started.elapsed() < PATIENCE, "is_leader never set");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (node, before) in survivors.iter().zip(before) {
        assert!(cluster.metric(*node, changes) > before, "node {node}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_status_changes_blocks_messages_and_notes_live() {
    use benmo::proto;
    use benmo::proto::watch_event::Kind;
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = leader % 3 + 1;
    let channel = benmo::dial::channel(&cluster.address(leader), Duration::from_secs(1), None)
        .expect("an address");
    let mut events = proto::ledger_service_client::LedgerServiceClient::new(channel)
        .watch(proto::WatchRequest {})
        .await
        .expect("watch")
        .into_inner();
    async fn next(events: &mut tonic::Streaming<proto::WatchEvent>) -> proto::WatchEvent {
        tokio::time::timeout(PATIENCE, events.message())
            .await
            .expect("an event in time")
            .expect("a live stream")
            .expect("not ended")
    }
    let first = next(&mut events).await;
    let Some(Kind::Status(status)) = first.kind else {
        panic!("the first event is the status: {first:?}");
    };
    assert_eq!(status.node, leader);
    assert!(first.unix_ms > 0);

    let run = cluster
        .ctl(&["sever", &leader.to_string(), &follower.to_string()])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let committed = cluster.transfer(1, 2, 1).await;
    let height = committed["height"].as_u64().unwrap();
    let (mut saw_cut, mut saw_block, mut saw_messages) = (false, false, false);
    while !(saw_cut && saw_block && saw_messages) {
        match next(&mut events).await.kind.expect("a kind") {
            Kind::Status(status) => saw_cut |= status.cut_outgoing.contains(&follower),
            Kind::Block(block) => saw_block |= block.height == height && block.transfers >= 1,
            Kind::Messages(counts) => {
                saw_messages |= counts.counts.iter().any(|count| count.count > 0);
                assert_eq!(counts.window_ms, 100);
            }
            Kind::Note(_) | Kind::Dropped(_) => {}
        }
    }
    let run = cluster.ctl(&["heal", "--all"]).await;
    assert_eq!(run.code, 0, "{run:?}");
}
