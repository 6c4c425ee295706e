//! `benmoctl dashboard`: a live web page of the real cluster.
//!
//! The page (plain HTML, CSS and JS in `src/dashboard/assets`, built into the binary, so nothing
//! is fetched from outside the machine) learns everything from one Server-Sent Events stream,
//! `GET /events`, and acts through `POST /api/*`. Behind it:
//!
//! - one `Watch` stream per node ([`watch`]): status changes, per-peer message counts, notes;
//!   a node whose stream breaks is shown down until a new stream opens;
//! - the chain's tail and balances, read again whenever the head moves (at most twice a second);
//! - throughput and commit latency, from the nodes' Prometheus counters once a second
//!   ([`metrics`]);
//! - the safety banner, from `verify`'s checks run incrementally on every node's chain
//!   ([`audit`]);
//! - actions, which run the very commands `benmoctl` runs (so the page shows the line to type),
//!   partition presets among them ([`presets`]).
//!
//! Every event goes through one bounded broadcast channel; a page that falls behind is sent the
//! current state again instead of the events it missed, so a slow browser never holds anything
//! up, least of all the nodes.

mod audit;
mod metrics;
mod presets;
mod watch;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use benmo::proto;
use benmo::secrets::Secrets;
use benmo_paxos::NodeId;
use futures_util::Stream;
use serde_json::{json, Value};
use tokio::sync::{broadcast, Notify};

use super::{run_command, Context};
use crate::cli::{Command, DashboardArgs, Format, HealArgs, LocalArgs, LocalCommand, TransferArgs};
use crate::connect::Nodes;
use crate::{exit, Terminal};

const INDEX_HTML: &str = include_str!("../../dashboard/assets/index.html");
const APP_JS: &str = include_str!("../../dashboard/assets/app.js");
const STYLE_CSS: &str = include_str!("../../dashboard/assets/style.css");

/// How many events a page may be behind before it is sent the state afresh.
const EVENTS_BUFFERED: usize = 2048;
/// Seconds of throughput and latency a newly opened page gets (the chart spans five minutes).
const STATS_KEPT: usize = 300;
/// Log lines a newly opened page gets.
const LOG_KEPT: usize = 200;
/// Blocks of the chain's tail the page shows.
const TAIL_BLOCKS: u64 = 12;
/// Transfers shown per block (the count says how many there are).
const TRANSFERS_PER_BLOCK: usize = 20;
/// How often the chain's tail may be read again while the head moves.
const CHAIN_INTERVAL: Duration = Duration::from_millis(500);
/// How often throughput and latency are sampled.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the safety checks run.
const AUDIT_INTERVAL: Duration = Duration::from_secs(2);

/// Milliseconds since the Unix epoch, as the page's clock.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// One Server-Sent Event: its name and its JSON text.
struct Frame {
    name: &'static str,
    data: String,
}

/// What a page that opens now must be told before the live events.
#[derive(Default)]
struct Current {
    /// Each node's latest `node` event.
    nodes: BTreeMap<NodeId, Value>,
    /// The status of each node that is up.
    statuses: BTreeMap<NodeId, proto::StatusReply>,
    chain: Option<Value>,
    balances: Option<Value>,
    safety: Option<Value>,
    stats: VecDeque<Value>,
    log: VecDeque<Value>,
}

/// Where events meet pages.
struct Hub {
    sender: broadcast::Sender<Arc<Frame>>,
    current: Mutex<Current>,
    /// Woken when a node appends a block, so the chain's tail is read again.
    head_moved: Notify,
}

impl Hub {
    fn new() -> Hub {
        Hub {
            sender: broadcast::channel(EVENTS_BUFFERED).0,
            current: Mutex::new(Current::default()),
            head_moved: Notify::new(),
        }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Keeps `value` as current state where it is state, and sends it to every open page.
    fn publish(&self, name: &'static str, value: Value) {
        {
            let mut current = self.current();
            match name {
                "node" => {
                    if let Some(id) = value["id"].as_u64() {
                        current.nodes.insert(id as NodeId, value.clone());
                    }
                }
                "chain" => current.chain = Some(value.clone()),
                "balances" => current.balances = Some(value.clone()),
                "safety" => current.safety = Some(value.clone()),
                "stats" => {
                    if current.stats.len() == STATS_KEPT {
                        current.stats.pop_front();
                    }
                    current.stats.push_back(value.clone());
                }
                "log" => {
                    if current.log.len() == LOG_KEPT {
                        current.log.pop_front();
                    }
                    current.log.push_back(value.clone());
                }
                _ => {}
            }
        }
        let frame = Frame {
            name,
            data: value.to_string(),
        };
        // No page open is no error.
        let _ = self.sender.send(Arc::new(frame));
    }

    /// A line for the page's log; `node` 0 is the dashboard itself.
    fn log(&self, node: NodeId, level: &str, text: String) {
        self.publish(
            "log",
            json!({ "unix_ms": unix_ms(), "node": node, "level": level, "text": text }),
        );
    }

    /// Records a node's status (it is up) or forgets it (it is down).
    fn set_status(&self, node: NodeId, status: Option<proto::StatusReply>) {
        let mut current = self.current();
        match status {
            Some(status) => current.statuses.insert(node, status),
            None => current.statuses.remove(&node),
        };
    }

    /// The status of every node that is up, in node order.
    fn statuses(&self) -> Vec<(NodeId, proto::StatusReply)> {
        self.current()
            .statuses
            .iter()
            .map(|(node, status)| (*node, status.clone()))
            .collect()
    }
}

/// How a crashed node comes back.
#[derive(Clone)]
enum Restart {
    /// `benmoctl local start`, with this folder.
    Local(PathBuf),
    /// The page shows this command ({node} replaced).
    Hint(String),
}

/// What every handler and task shares.
struct Shared {
    hub: Hub,
    nodes: Nodes,
    secrets: Option<Secrets>,
    secrets_dir: PathBuf,
    restart: Restart,
    metrics_port_offset: u16,
}

impl Shared {
    /// A context for running one benmoctl command on the page's behalf, with JSON output.
    fn context(&self) -> Context {
        Context {
            nodes: self.nodes.clone(),
            format: Format::Json,
            node: None,
            verbose: false,
            secrets: self.secrets.clone(),
            secrets_dir: self.secrets_dir.clone(),
        }
    }

    /// The `hello` event: the cluster's shape and what the page keeps of the past.
    fn hello(&self) -> Value {
        let current = self.hub.current();
        let (restart, hint) = match &self.restart {
            Restart::Local(_) => ("local", Value::Null),
            Restart::Hint(hint) => ("hint", json!(hint)),
        };
        let cluster: Vec<Value> = self
            .nodes
            .ids()
            .into_iter()
            .map(|id| json!({ "id": id, "address": self.nodes.address(id) }))
            .collect();
        let genesis_balance = current
            .statuses
            .values()
            .next()
            .map(|status| status.genesis_balance);
        json!({
            "nodes": self.nodes.ids().len(),
            "cluster": cluster,
            "restart": restart,
            "restart_hint": hint,
            "genesis_balance": genesis_balance,
            "stats": current.stats,
            "log": current.log,
        })
    }

    /// Everything a page must be sent to show the present: `hello`, then the state.
    fn replay(&self) -> VecDeque<Arc<Frame>> {
        let hello = self.hello();
        let current = self.hub.current();
        let mut frames = VecDeque::new();
        let mut push = |name: &'static str, value: &Value| {
            frames.push_back(Arc::new(Frame {
                name,
                data: value.to_string(),
            }));
        };
        push("hello", &hello);
        for node in current.nodes.values() {
            push("node", node);
        }
        for (name, value) in [
            ("chain", &current.chain),
            ("balances", &current.balances),
            ("safety", &current.safety),
        ] {
            if let Some(value) = value {
                push(name, value);
            }
        }
        frames
    }
}

pub async fn run(context: &Context, arguments: DashboardArgs, terminal: &mut Terminal<'_>) -> i32 {
    if arguments.health_check {
        return health_check(arguments.listen, terminal).await;
    }
    let listener = match tokio::net::TcpListener::bind(arguments.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            let _ = writeln!(
                terminal.err,
                "error: cannot serve the dashboard on {}: {error}",
                arguments.listen
            );
            return exit::FAILED;
        }
    };
    let local_dir = arguments
        .local_dir
        .clone()
        .or_else(|| Some(PathBuf::from("benmo-local")).filter(|dir| dir.is_dir()));
    let restart = match local_dir {
        Some(dir) => Restart::Local(dir),
        None => Restart::Hint(arguments.restart_hint.clone()),
    };
    let shared = Arc::new(Shared {
        hub: Hub::new(),
        nodes: context.nodes.clone(),
        secrets: context.secrets.clone(),
        secrets_dir: context.secrets_dir.clone(),
        restart,
        metrics_port_offset: arguments.metrics_port_offset,
    });
    for node in shared.nodes.ids() {
        tokio::spawn(watch::watch_node(shared.clone(), node));
    }
    tokio::spawn(follow_chain(shared.clone()));
    tokio::spawn(metrics::sample(shared.clone()));
    tokio::spawn(audit::run(shared.clone()));

    let app = Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/events", get(events))
        .route("/api/{action}", post(act))
        .with_state(shared.clone());
    let address = listener
        .local_addr()
        .map_or(arguments.listen.to_string(), |address| address.to_string());
    let _ = writeln!(
        terminal.out,
        "dashboard: http://{address} (watching {} nodes; Ctrl-C stops it)",
        shared.nodes.ids().len()
    );
    let _ = terminal.out.flush();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    match served {
        Ok(()) => exit::OK,
        Err(error) => {
            let _ = writeln!(terminal.err, "error: the dashboard stopped: {error}");
            exit::FAILED
        }
    }
}

/// Why a plain HTTP GET got no page.
enum HttpGetError {
    /// Nothing answered in time (or the connection broke).
    Unreachable(String),
    /// Something answered, but not `200` (the status line).
    Refused(String),
}

/// GETs `path` from `address` with plain HTTP/1.0 (the server closes after the body): the body
/// of a `200` answer. The dashboard's only HTTP client, for the nodes' metrics and its own
/// health check.
async fn http_get(address: &str, path: &str, timeout: Duration) -> Result<String, HttpGetError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(response)) => String::from_utf8_lossy(&response).into_owned(),
        Ok(Err(error)) => return Err(HttpGetError::Unreachable(error.to_string())),
        Err(_) => {
            return Err(HttpGetError::Unreachable(format!(
                "no answer in {} ms",
                timeout.as_millis()
            )))
        }
    };
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or("");
    if status.starts_with("HTTP/1.") && status.split(' ').nth(1) == Some("200") {
        Ok(body.to_string())
    } else {
        Err(HttpGetError::Refused(status.to_string()))
    }
}

/// Whether a dashboard serves its page on `listen`'s port (on loopback if it listens on every
/// address).
async fn health_check(listen: std::net::SocketAddr, terminal: &mut Terminal<'_>) -> i32 {
    let mut address = listen;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    match http_get(&address.to_string(), "/", Duration::from_secs(2)).await {
        Ok(_) => {
            let _ = writeln!(terminal.out, "dashboard on {address}: serving");
            exit::OK
        }
        Err(HttpGetError::Refused(status)) => {
            let _ = writeln!(
                terminal.err,
                "error: dashboard on {address} answered {status:?}"
            );
            exit::FAILED
        }
        Err(HttpGetError::Unreachable(reason)) => {
            let _ = writeln!(terminal.err, "error: no dashboard on {address}: {reason}");
            exit::UNREACHABLE
        }
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The event stream of one page: the present, then live events; the present again if it falls
/// behind.
async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = shared.hub.sender.subscribe();
    let backlog = shared.replay();
    let stream = futures_util::stream::unfold(
        (backlog, receiver, shared),
        |(mut backlog, mut receiver, shared)| async move {
            loop {
                if let Some(frame) = backlog.pop_front() {
                    let event = Event::default().event(frame.name).data(&frame.data);
                    return Some((Ok(event), (backlog, receiver, shared)));
                }
                match receiver.recv().await {
                    Ok(frame) => {
                        let event = Event::default().event(frame.name).data(&frame.data);
                        return Some((Ok(event), (backlog, receiver, shared)));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => backlog = shared.replay(),
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Reads the chain's tail and balances from the node with the highest chain whenever it grows.
async fn follow_chain(shared: Arc<Shared>) {
    let mut shown: Option<(u64, Vec<u8>)> = None;
    loop {
        tokio::select! {
            () = shared.hub.head_moved.notified() => {}
            () = tokio::time::sleep(STATS_INTERVAL) => {}
        }
        let highest = shared
            .hub
            .statuses()
            .into_iter()
            .max_by_key(|(node, status)| (status.height, std::cmp::Reverse(*node)));
        let Some((node, status)) = highest else {
            continue;
        };
        let head = (status.height, status.head_hash.clone());
        if shown.as_ref() == Some(&head) {
            continue;
        }
        let from = status.height.saturating_sub(TAIL_BLOCKS - 1);
        let Ok(blocks) = super::chain::read(&shared.nodes, node, from, Some(status.height)).await
        else {
            continue;
        };
        let blocks: Vec<Value> = blocks.iter().map(block_json).collect();
        shared.hub.publish(
            "chain",
            json!({ "height": status.height, "node": node, "blocks": blocks }),
        );
        if let Ok(mut client) = shared.nodes.ledger(node) {
            if let Ok(reply) = client.balances(proto::BalancesRequest {}).await {
                let reply = reply.into_inner();
                let balances: Vec<u64> = reply.balances.iter().map(|b| b.balance).collect();
                shared.hub.publish(
                    "balances",
                    json!({ "node": node, "height": reply.height, "balances": balances }),
                );
            }
        }
        shown = Some(head);
        tokio::time::sleep(CHAIN_INTERVAL).await;
    }
}

/// The first 8 hex digits of a hash: enough to see links match on a page.
fn short_hash(hash: &benmo_paxos::Hash) -> String {
    hash.to_hex()[..8].to_string()
}

/// A block as the page shows it: short hashes, its first transfers and how many there are.
fn block_json(block: &benmo_paxos::Block) -> Value {
    let transfers: Vec<Value> = block
        .entries
        .iter()
        .take(TRANSFERS_PER_BLOCK)
        .map(super::chain::entry_json)
        .collect();
    json!({
        "height": block.height,
        "hash": short_hash(&block.hash),
        "prev_hash": short_hash(&block.prev_hash),
        "proposer": block.proposer,
        "transfers": transfers,
        "transfer_count": block.entries.len(),
    })
}

/// What the page asked for, as the benmoctl command that does it.
fn command_for(action: &str, body: &Value, shared: &Shared) -> Result<Vec<Command>, String> {
    let node = |field: &str| -> Result<NodeId, String> {
        body[field]
            .as_u64()
            .and_then(|id| NodeId::try_from(id).ok())
            .ok_or_else(|| format!("{field} must be a node id"))
    };
    Ok(match action {
        "transfer" => vec![Command::Transfer(TransferArgs {
            from: node("from")?,
            to: node("to")?,
            amount: body["amount"]
                .as_u64()
                .filter(|amount| *amount > 0)
                .ok_or("amount must be a positive whole number")?,
            id: None,
            timeout_ms: 5_000,
        })],
        "crash" => vec![Command::Crash {
            node: node("node")?,
        }],
        "restart" => match &shared.restart {
            Restart::Local(dir) => vec![Command::Local(LocalCommand::Start {
                node: node("node")?,
                local: LocalArgs {
                    dir: dir.clone(),
                    node_binary: None,
                },
            })],
            Restart::Hint(_) => Vec::new(),
        },
        "sever" => vec![Command::Sever {
            a: node("a")?,
            b: node("b")?,
            one_way: body["one_way"].as_bool().unwrap_or(false),
        }],
        "heal" if body["all"] == true => vec![Command::Heal(HealArgs {
            nodes: Vec::new(),
            all: true,
        })],
        "heal" => vec![Command::Heal(HealArgs {
            nodes: vec![node("a")?, node("b")?],
            all: false,
        })],
        "preset" => {
            let name = body["name"]
                .as_str()
                .ok_or("name must be a preset's name")?;
            let statuses = shared.hub.statuses();
            let leader = super::route::choose(&statuses)
                .filter(|route| route.reason == super::route::Reason::Leader)
                .map(|route| route.node);
            let cuts = presets::cuts(name, shared.nodes.ids().len() as NodeId, leader)?;
            let heal_all = Command::Heal(HealArgs {
                nodes: Vec::new(),
                all: true,
            });
            std::iter::once(heal_all)
                .chain(cuts.into_iter().map(|(a, b)| Command::Sever {
                    a,
                    b,
                    one_way: false,
                }))
                .collect()
        }
        _ => return Err(format!("no such action: {action}")),
    })
}

/// A command as the line a user would type.
fn command_line(command: &Command) -> String {
    match command {
        Command::Transfer(transfer) => format!(
            "benmoctl transfer --from {} --to {} --amount {}",
            transfer.from, transfer.to, transfer.amount
        ),
        Command::Crash { node } => format!("benmoctl crash {node}"),
        Command::Local(LocalCommand::Start { node, local }) => {
            format!("benmoctl local start {node} --dir {}", local.dir.display())
        }
        Command::Sever { a, b, one_way } => {
            format!(
                "benmoctl sever {a} {b}{}",
                if *one_way { " --one-way" } else { "" }
            )
        }
        Command::Heal(heal) if heal.all => "benmoctl heal --all".to_string(),
        Command::Heal(heal) => format!(
            "benmoctl heal {}",
            heal.nodes
                .iter()
                .map(|node| node.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Command::Partition { groups } => format!("benmoctl partition {}", groups.join(" ")),
        _ => "benmoctl".to_string(),
    }
}

/// Runs an action for the page: the benmoctl commands it stands for, one after the other.
async fn act(
    State(shared): State<Arc<Shared>>,
    Path(action): Path<String>,
    body: String,
) -> Response {
    let body: Value = match serde_json::from_str(&body) {
        Ok(body) => body,
        Err(error) => return refuse(format!("the request is not JSON: {error}")),
    };
    let commands = match command_for(&action, &body, &shared) {
        Ok(commands) => commands,
        Err(error) => return refuse(error),
    };
    if let (true, Restart::Hint(hint)) = (commands.is_empty(), &shared.restart) {
        let node = body["node"].as_u64().unwrap_or(0);
        let hint = hint.replace("{node}", &node.to_string());
        return axum::Json(json!({
            "ok": false,
            "command": Value::Null,
            "output": Value::Null,
            "error": format!("the dashboard cannot start node {node} here; run: {hint}"),
            "hint": hint,
        }))
        .into_response();
    }
    let lines: Vec<String> = commands.iter().map(command_line).collect();
    let line = lines.join(" && ");
    shared.hub.log(0, "action", line.clone());
    let mut outputs = Vec::new();
    let mut failure = None;
    for command in commands {
        let context = shared.context();
        // The commands are the CLI's own, written for a terminal: they run on a blocking thread
        // of their own, on this runtime, so a slow one never holds up the page's events.
        let handle = tokio::runtime::Handle::current();
        let ran = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let code = handle.block_on(async {
                let mut terminal = Terminal {
                    out: &mut out,
                    err: &mut err,
                };
                run_command(&context, command, &mut terminal).await
            });
            (code, out, err)
        })
        .await;
        let Ok((code, out, err)) = ran else {
            failure = Some("the command panicked".to_string());
            break;
        };
        let output: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&out).trim().to_string()));
        outputs.push(output);
        if code != exit::OK {
            let err = String::from_utf8_lossy(&err);
            let reason = err
                .lines()
                .rev()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("failed")
                .trim_start_matches("error: ")
                .to_string();
            failure = Some(format!("exit {code}: {reason}"));
            break;
        }
    }
    if let Some(failure) = &failure {
        shared.hub.log(0, "warn", format!("{line}: {failure}"));
    }
    let output = match outputs.len() {
        1 => outputs.pop().unwrap_or(Value::Null),
        _ => Value::Array(outputs),
    };
    axum::Json(json!({
        "ok": failure.is_none(),
        "command": line,
        "output": output,
        "error": failure,
        "hint": Value::Null,
    }))
    .into_response()
}

fn refuse(error: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({
            "ok": false,
            "command": Value::Null,
            "output": Value::Null,
            "error": error,
            "hint": Value::Null,
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves one connection with `response`, after reading the request.
    async fn serve_once(response: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0; 1024];
            let _ = stream.read(&mut request).await;
            stream.write_all(response.as_bytes()).await.unwrap();
        });
        address
    }

    #[tokio::test]
    async fn a_get_returns_the_body_of_a_200_and_names_anything_else() {
        let address = serve_once("HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
        assert_eq!(
            http_get(&address, "/", Duration::from_secs(5)).await.ok(),
            Some("hello".to_string())
        );
        let address = serve_once("HTTP/1.0 404 Not Found\r\n\r\n").await;
        match http_get(&address, "/", Duration::from_secs(5)).await {
            Err(HttpGetError::Refused(status)) => assert_eq!(status, "HTTP/1.0 404 Not Found"),
            _ => panic!("a 404 is a refusal"),
        }
        let nobody = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = nobody.local_addr().unwrap().to_string();
        drop(nobody);
        assert!(matches!(
            http_get(&address, "/", Duration::from_secs(5)).await,
            Err(HttpGetError::Unreachable(_))
        ));
    }
}
