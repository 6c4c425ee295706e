//! The dashboard in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`,
//! installed by `scripts/install-browser`), driven over WebDriver against five real nodes and a
//! real `benmoctl dashboard`.
//!
//! The page loads with five nodes and one leader; clicking a link severs it, and both the page
//! and `benmoctl status` show the cut; crashing the leader from the page shows a new leader; a
//! transfer made from the page appears in the page's chain; the safety banner stays green.
//! Screenshots of each moment are saved in `target/dashboard-screenshots/` (the README's come
//! from there). How long the page takes to show what a terminal did is printed, not asserted:
//! timing belongs to benchmarks.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::{Cluster, PATIENCE};

/// A chromedriver process of this test's own; killed when the test ends, however it ends.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("address")
        .port()
}

/// Starts chromedriver and waits until it accepts connections.
async fn start_driver() -> Driver {
    let program = on_path("chromedriver").expect(
        "chromedriver is not on PATH: the browser test needs Debian's chromium and \
         chromium-driver packages (scripts/install-browser installs them)",
    );
    let port = free_port();
    let mut command = Command::new(program);
    command
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // If the test process dies without unwinding, the driver (and its browser) die too.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let driver = Driver {
        child: command.spawn().expect("start chromedriver"),
        port,
    };
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(started.elapsed() < PATIENCE, "chromedriver never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver
}

async fn open_browser(driver: &Driver) -> Client {
    let mut options = json!({
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1440,900", "--hide-scrollbars",
        ],
    });
    if let Some(chromium) = on_path("chromium") {
        options["binary"] = json!(chromium);
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".to_string(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a browser session")
}

/// What the page shows of the cluster, read in one script.
async fn page_state(browser: &Client) -> Value {
    browser
        .execute(
            r#"
            const nodes = {};
            for (const el of document.querySelectorAll('svg [data-node]')) {
              nodes[el.dataset.node] = { role: el.dataset.role, up: el.dataset.up };
            }
            const links = {};
            for (const el of document.querySelectorAll('[data-link]')) {
              links[el.dataset.link] = el.dataset.cut;
            }
            const leader = document.getElementById('leader');
            const safety = document.getElementById('safety');
            const result = document.getElementById('transfer-result');
            const transfers = Array.from(document.querySelectorAll('#chain [data-transfer-id]'))
              .map((el) => el.dataset.transferId);
            return {
              nodes, links, transfers,
              leader: leader ? leader.dataset.leader : null,
              safety: safety ? safety.dataset.ok : null,
              result: result ? { state: result.dataset.state, text: result.textContent } : null,
            };
            "#,
            vec![],
        )
        .await
        .expect("read the page")
}

/// Waits until the page shows what `condition` wants; returns that state and how long it took.
async fn wait_for_page<F>(browser: &Client, what: &str, condition: F) -> (Value, Duration)
where
    F: Fn(&Value) -> bool,
{
    let started = Instant::now();
    loop {
        let state = page_state(browser).await;
        if condition(&state) {
            return (state, started.elapsed());
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the page never showed {what}; it shows {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn leaders(state: &Value) -> Vec<u32> {
    state["nodes"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, node)| node["role"] == "leader" && node["up"] == "true")
        .map(|(id, _)| id.parse().expect("a node id"))
        .collect()
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("a folder for screenshots");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = screenshots_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("save the screenshot");
    eprintln!("screenshot: {}", path.display());
}

async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("no {css} on the page: {error}"))
        .click()
        .await
        .unwrap_or_else(|error| panic!("cannot click {css}: {error}"));
}

async fn type_into(browser: &Client, id: &str, text: &str) {
    let field = browser
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|error| panic!("no #{id}: {error}"));
    field.clear().await.expect("clear the field");
    field.send_keys(text).await.expect("type into the field");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_and_drives_it_from_a_real_browser() {
    let mut cluster = Cluster::start(5).await;
    let leader = cluster.wait_for_leader().await;
    let port = free_port();
    let secrets = cluster
        .target
        .secrets
        .as_ref()
        .map(|dir| dir.display().to_string())
        .expect("the test cluster is secure");
    let arguments = vec![
        "benmoctl".to_string(),
        "--cluster".to_string(),
        cluster.target.list.clone(),
        "--secrets".to_string(),
        secrets,
        "dashboard".to_string(),
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--restart-hint".to_string(),
        "start node {node} again".to_string(),
    ];
    // The dashboard runs in this process, for as long as the test body does.
    let dashboard = async move {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut terminal = benmoctl::Terminal {
            out: &mut out,
            err: &mut err,
        };
        let code = benmoctl::run(arguments, &mut terminal).await;
        panic!(
            "the dashboard stopped with {code}: {}",
            String::from_utf8_lossy(&err)
        );
    };
    let driver = start_driver().await;
    let body = async {
        let browser = open_browser(&driver).await;
        let started = Instant::now();
        loop {
            if browser
                .goto(&format!("http://127.0.0.1:{port}/"))
                .await
                .is_ok()
                && browser.find(Locator::Id("safety")).await.is_ok()
            {
                break;
            }
            assert!(started.elapsed() < PATIENCE, "the page never loaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // What the container's health check runs: a dashboard answers here, and not elsewhere.
        let listen = format!("127.0.0.1:{port}");
        let check = cluster
            .ctl(&["dashboard", "--listen", &listen, "--health-check"])
            .await;
        assert_eq!(check.code, 0, "{check:?}");
        let nowhere = format!("127.0.0.1:{}", free_port());
        let check = cluster
            .ctl(&["dashboard", "--listen", &nowhere, "--health-check"])
            .await;
        assert_eq!(check.code, 4, "{check:?}");

        // Five nodes up, one leader, and the chain checked safe.
        let (state, _) = wait_for_page(&browser, "five nodes up with one leader", |state| {
            let nodes = state["nodes"].as_object();
            nodes.is_some_and(|nodes| nodes.len() == 5 && nodes.values().all(|n| n["up"] == "true"))
                && leaders(state) == vec![leader]
        })
        .await;
        assert_eq!(state["leader"], leader.to_string(), "{state}");
        assert_eq!(
            state["links"].as_object().map(|links| links.len()),
            Some(10)
        );
        cluster.transfer(1, 2, 5).await;
        wait_for_page(&browser, "a safe, checked chain", |state| {
            state["safety"] == "true"
        })
        .await;
        screenshot(&browser, "normal").await;

        // Clicking a link between two followers severs it: the page and benmoctl status show it.
        let followers: Vec<u32> = (1..=5).filter(|node| *node != leader).collect();
        let (a, b) = (followers[0], followers[1]);
        let link = format!("[data-link=\"{a}-{b}\"]");
        click(&browser, &link).await;
        let (_, shown_after) = wait_for_page(&browser, "the cut link", |state| {
            state["links"][format!("{a}-{b}")] == "both"
        })
        .await;
        let status = cluster.status().await;
        let node_a = status
            .iter()
            .find(|node| node["node"] == a)
            .expect("node a's status");
        assert_eq!(
            node_a["cut_outgoing"],
            json!([b]),
            "benmoctl status: {node_a}"
        );
        assert_eq!(
            node_a["cut_incoming"],
            json!([b]),
            "benmoctl status: {node_a}"
        );
        eprintln!("sever clicked -> cut shown on the page: {shown_after:?}");

        // A cut made in a terminal shows on the page too.
        let (c, d) = (followers[2], followers[3]);
        let typed = Instant::now();
        let run = cluster
            .ctl(&["sever", &c.to_string(), &d.to_string(), "--one-way"])
            .await;
        assert_eq!(run.code, 0, "{run:?}");
        let (_, shown) = wait_for_page(&browser, "a one-way cut typed in a terminal", |state| {
            state["links"][format!("{}-{}", c.min(d), c.max(d))]
                == if c < d { "a-to-b" } else { "b-to-a" }
        })
        .await;
        eprintln!(
            "benmoctl sever --one-way typed -> shown on the page: {:?} (the command itself: {:?})",
            typed.elapsed(),
            typed.elapsed() - shown
        );
        screenshot(&browser, "cut").await;

        // Crashing the leader from the page shows a new leader.
        click(
            &browser,
            &format!("[data-action=\"crash-node\"][data-node=\"{leader}\"]"),
        )
        .await;
        let clicked = Instant::now();
        let (state, _) = wait_for_page(&browser, "a new leader after the crash", |state| {
            state["nodes"][leader.to_string()]["up"] == "false"
                && leaders(state).len() == 1
                && leaders(state)[0] != leader
        })
        .await;
        eprintln!(
            "leader {leader} crashed from the page -> node {} shown leading after {:?}",
            leaders(&state)[0],
            clicked.elapsed()
        );
        let new_leader = leaders(&state)[0];
        screenshot(&browser, "failover").await;
        cluster.reap(leader);

        // A transfer made from the page commits and appears in the page's chain.
        let from = followers[0];
        let to = followers[1];
        type_into(&browser, "transfer-from", &from.to_string()).await;
        type_into(&browser, "transfer-to", &to.to_string()).await;
        type_into(&browser, "transfer-amount", "3").await;
        click(&browser, "#transfer-send").await;
        let (state, _) = wait_for_page(&browser, "the transfer committed", |state| {
            state["result"]["state"] == "committed"
        })
        .await;
        let (_, chain) = cluster
            // The leader has every committed block; a follower may learn of it a moment later.
            .ctl_json(&["--node", &new_leader.to_string(), "chain"])
            .await;
        let id = chain["blocks"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|block| block["transfers"].as_array().into_iter().flatten())
            .find(|transfer| {
                transfer["from"] == from && transfer["to"] == to && transfer["amount"] == 3
            })
            .map(|transfer| transfer["id"].as_str().expect("an id").to_string())
            .unwrap_or_else(|| panic!("the page's transfer is in no chain: {state}"));
        wait_for_page(&browser, "the transfer in the chain's tail", |state| {
            state["transfers"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|shown| shown == id.as_str()))
        })
        .await;

        // The crashed node comes back, every cut is healed from the page, and all is safe.
        cluster.spawn(leader);
        click(&browser, "#heal-all").await;
        wait_for_page(&browser, "every node up, every link whole, safe", |state| {
            state["nodes"]
                .as_object()
                .is_some_and(|nodes| nodes.values().all(|n| n["up"] == "true"))
                && state["links"]
                    .as_object()
                    .is_some_and(|links| links.values().all(|cut| cut == "none"))
                && state["safety"] == "true"
        })
        .await;
        let verify = cluster.ctl(&["verify"]).await;
        assert_eq!(verify.code, 0, "{verify:?}");
        browser.close().await.expect("close the browser");
    };
    tokio::select! {
        () = dashboard => {}
        () = body => {}
    }
}
