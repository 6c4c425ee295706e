//! End-to-end on real containers: `docker compose` with the benmo image, real network cuts
//! (`docker network disconnect`) and real kills (`docker kill`), checked from outside.
//!
//! Run by `scripts/e2e`, which builds the image first. `cargo test` skips it (it needs Docker);
//! run directly, it fails loudly when no Docker engine answers instead of passing silently.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{ctl, ctl_json, leader, steady_client, Target};

const NODES: u32 = 5;
/// How long the e2e waits for containers to be healthy or the cluster to converge.
const PATIENCE: Duration = Duration::from_secs(120);

/// A compose project with a name unique to this run; `down -v` runs when it is dropped, pass
/// or fail.
struct Compose {
    project: String,
    file: PathBuf,
    ports: Vec<u16>,
    /// Each node's published metrics port.
    metrics_ports: Vec<u16>,
    /// Where the dashboard is published.
    dashboard_port: u16,
    /// The secrets the compose project's `secrets` service makes (a folder of this test's own).
    secrets: tempfile::TempDir,
    target: Target,
}

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    output
}

fn ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

impl Compose {
    fn up() -> Compose {
        let engine = run(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]));
        assert!(
            engine.status.success(),
            "NO DOCKER ENGINE ANSWERS: the end-to-end tests cannot run here.\n{}",
            String::from_utf8_lossy(&engine.stderr)
        );
        // All held at once, so no two are the same.
        let held: Vec<std::net::TcpListener> = (0..2 * NODES + 1)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let mut free = held
            .iter()
            .map(|listener| listener.local_addr().expect("an address").port());
        let ports: Vec<u16> = free.by_ref().take(NODES as usize).collect();
        let metrics_ports: Vec<u16> = free.by_ref().take(NODES as usize).collect();
        let dashboard_port = free.next().expect("a port");
        drop(held);
        let list = ports
            .iter()
            .enumerate()
            .map(|(index, port)| format!("{}=http://127.0.0.1:{port}", index + 1))
            .collect::<Vec<_>>()
            .join(",");
        let secrets = tempfile::tempdir().expect("temp dir");
        let target = Target {
            list,
            secrets: Some(secrets.path().to_path_buf()),
        };
        let compose = Compose {
            project: format!("benmo-e2e-{}", std::process::id()),
            file: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml"),
            ports,
            metrics_ports,
            dashboard_port,
            secrets,
            target,
        };
        ok(compose
            .compose()
            .args(["up", "--detach", "--wait", "--wait-timeout", "120"]));
        compose
    }

    fn compose(&self) -> Command {
        let mut command = Command::new("docker");
        command
            .args(["compose", "--project-name", &self.project, "--file"])
            .arg(&self.file);
        for (index, port) in self.ports.iter().enumerate() {
            command.env(format!("BENMO_PORT_{}", index + 1), port.to_string());
        }
        for (index, port) in self.metrics_ports.iter().enumerate() {
            command.env(
                format!("BENMO_METRICS_PORT_{}", index + 1),
                port.to_string(),
            );
        }
        command.env("BENMO_DASHBOARD_PORT", self.dashboard_port.to_string());
        command.env("BENMO_SECRETS_DIR", self.secrets.path());
        command
    }

    fn container(&self, node: u32) -> String {
        ok(self
            .compose()
            .args(["ps", "--all", "--quiet", &format!("node{node}")]))
    }

    fn network(&self) -> String {
        format!("{}_default", self.project)
    }

    fn disconnect(&self, node: u32) {
        ok(Command::new("docker").args([
            "network",
            "disconnect",
            &self.network(),
            &self.container(node),
        ]));
    }

    fn connect(&self, node: u32) {
        // The service name is a DNS alias on the project network; it must come back with the node.
        let alias = format!("node{node}");
        ok(Command::new("docker").args([
            "network",
            "connect",
            "--alias",
            &alias,
            &self.network(),
            &self.container(node),
        ]));
    }

    fn kill(&self, node: u32) {
        ok(Command::new("docker").args(["kill", &self.container(node)]));
    }

    fn start(&self, node: u32) {
        ok(self.compose().args(["start", &format!("node{node}")]));
    }

    async fn status(&self) -> Vec<serde_json::Value> {
        support::status(&self.target).await
    }

    async fn wait_until(
        &self,
        what: &str,
        condition: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        support::wait_until(&self.target, PATIENCE, what, condition).await
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let output =
            run(self
                .compose()
                .args(["down", "--volumes", "--remove-orphans", "--timeout", "2"]));
        if !output.status.success() {
            eprintln!(
                "docker compose down failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// A plain HTTP GET on loopback; the response's body. The containers publish their ports as
/// soon as they run, so the first answer may take a moment.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let started = Instant::now();
    loop {
        let answer = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        });
        match answer {
            Ok(response) if response.starts_with("HTTP/1.") && response.contains(" 200 ") => {
                return response;
            }
            answer => assert!(
                started.elapsed() < PATIENCE,
                "GET 127.0.0.1:{port}{path}: {answer:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the benmo image: run scripts/e2e"]
async fn containers_survive_cuts_and_kills_and_lose_nothing() {
    let started = Instant::now();
    let compose = Compose::up();
    let list = compose.target.clone();
    let nodes = compose
        .wait_until("a leader is elected", |nodes| leader(nodes).is_some())
        .await;
    assert!(
        nodes.iter().all(|node| node["secure"] == true),
        "compose runs secure by default: {nodes:#?}"
    );
    // The metrics and the dashboard are published on loopback.
    for port in &compose.metrics_ports {
        let metrics = http_get(*port, "/metrics");
        assert!(metrics.contains("benmo_has_leader 1"), "{metrics}");
    }
    let page = http_get(compose.dashboard_port, "/");
    assert!(page.contains("/app.js"), "{page}");
    // Without the secrets, a caller can neither inject a fault nor move money.
    let stranger = Target {
        list: list.list.clone(),
        secrets: None,
    };
    let refused = ctl(&stranger, &["sever", "1", "2"]).await;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.err.contains("operator"), "{refused:?}");
    let refused = ctl(
        &stranger,
        &["transfer", "--from", "1", "--to", "3", "--amount", "20"],
    )
    .await;
    assert_ne!(refused.code, 0, "{refused:?}");
    let first = ctl(
        &list,
        &["transfer", "--from", "1", "--to", "3", "--amount", "20"],
    )
    .await;
    assert_eq!(first.code, 0, "{first:?}");

    let until = Instant::now() + Duration::from_secs(20);
    let mut faults = 0;
    let faults_run = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let run = ctl(&list, &["sever", "1", "2"]).await;
        assert_eq!(run.code, 0, "{run:?}");
        faults += 1;
        let run = ctl(&list, &["sever", "3", "4", "--one-way"]).await;
        assert_eq!(run.code, 0, "{run:?}");
        faults += 1;

        tokio::time::sleep(Duration::from_secs(2)).await;
        compose.disconnect(5);
        faults += 1;
        tokio::time::sleep(Duration::from_secs(3)).await;
        compose.connect(5);

        tokio::time::sleep(Duration::from_secs(2)).await;
        let nodes = compose.status().await;
        let victim = leader(&nodes).unwrap_or(1);
        compose.kill(victim);
        faults += 1;
        tokio::time::sleep(Duration::from_secs(3)).await;
        compose.start(victim);

        tokio::time::sleep(Duration::from_secs(2)).await;
        let run = ctl(&list, &["heal", "--all"]).await;
        assert_eq!(run.code, 0, "{run:?}");
        faults
    };
    let clients = async {
        let (a, b, c, d) = tokio::join!(
            steady_client(&list, NODES, 1, until),
            steady_client(&list, NODES, 2, until),
            steady_client(&list, NODES, 3, until),
            steady_client(&list, NODES, 4, until),
        );
        let mut all = BTreeMap::new();
        for acknowledged in [a, b, c, d] {
            all.extend(acknowledged);
        }
        all
    };
    let (faults, acknowledged) = tokio::join!(faults_run, clients);
    let top = acknowledged
        .values()
        .map(|(height, _)| *height)
        .max()
        .unwrap_or(0);
    let status = compose
        .wait_until(
            "every node is up, agrees and has nothing pending",
            |nodes| {
                nodes.len() == NODES as usize
                    && nodes.iter().all(|node| {
                        node["up"] == true
                            && node["height"].as_u64().unwrap_or(0) >= top
                            && node["height"] == nodes[0]["height"]
                            && node["head_hash"] == nodes[0]["head_hash"]
                            && node["pending"] == 0
                    })
            },
        )
        .await;
    let height = status[0]["height"].as_u64().expect("height");

    let (code, report) = ctl_json(&list, &["verify"]).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["ok"], true);
    for node in 1..=NODES {
        let chain_height = support::assert_acknowledged_in_chain(&list, node, &acknowledged).await;
        assert_eq!(chain_height, height);
    }
    assert!(
        acknowledged.len() >= 50,
        "too few transfers got through: {}",
        acknowledged.len()
    );
    println!(
        "e2e: {} transfers acknowledged, all {} found exactly once in each of {NODES} chains (height {height}); {faults} faults injected (2 benmoctl severs, 1 docker network disconnect, 1 docker kill); total conserved; {:.0} s",
        acknowledged.len(),
        acknowledged.len(),
        started.elapsed().as_secs_f64()
    );
}
