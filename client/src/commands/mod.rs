//! One module per subcommand, and what they share: which node to ask, and how to say a node
//! could not be reached.

mod balances;
mod bench;
mod chain;
mod dashboard;
mod faults;
mod local;
mod log;
mod route;
mod secrets;
mod signer;
mod status;
mod transfer;
mod verify;

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use benmo_paxos::NodeId;
use tokio::task::JoinSet;

use std::path::PathBuf;

use benmo::secrets::Secrets;

use crate::cli::{Cli, Command, Format, LocalCommand, SecretsCommand};
use crate::connect::{CallError, Nodes};
use crate::{exit, Terminal};

/// What every command gets.
pub struct Context {
    /// The cluster.
    pub nodes: Nodes,
    /// Tables or JSON.
    pub format: Format,
    /// The node picked with --node.
    pub node: Option<NodeId>,
    /// Say more about what the command does (which node a transfer went to, and why).
    pub verbose: bool,
    /// The cluster's secrets, if benmoctl found them.
    pub secrets: Option<Secrets>,
    /// Where the secrets are (or would be made).
    pub secrets_dir: PathBuf,
}

/// Runs a parsed command and returns the exit code.
pub async fn dispatch(cli: Cli, terminal: &mut Terminal<'_>) -> i32 {
    if let Some(node) = cli.node {
        if !cli.cluster.contains(node) {
            let _ = writeln!(
                terminal.err,
                "error: --node {node} is not in the cluster (nodes are 1..={})",
                cli.cluster.size()
            );
            return exit::USAGE;
        }
    }
    // The secrets: those named with --secrets (or BENMO_SECRETS) must be there; the default
    // folder is used if it exists.
    let named = cli.secrets.is_some();
    let secrets_dir = cli
        .secrets
        .clone()
        .unwrap_or_else(|| PathBuf::from(benmo::secrets::DEFAULT_DIR));
    let making_secrets = matches!(
        cli.command,
        Command::Secrets(_) | Command::Local(LocalCommand::Up(_))
    );
    let secrets = if secrets_dir.join("cluster.json").exists() {
        match Secrets::load(&secrets_dir) {
            Ok(secrets) => Some(secrets),
            Err(error) => {
                let _ = writeln!(terminal.err, "error: {error}");
                return exit::USAGE;
            }
        }
    } else if named && !making_secrets {
        let _ = writeln!(
            terminal.err,
            "error: --secrets {}: no cluster.json there (make the secrets with `benmoctl secrets init`)",
            secrets_dir.display()
        );
        return exit::USAGE;
    } else {
        None
    };
    let mut nodes = Nodes::new(cli.cluster, Duration::from_millis(cli.rpc_timeout_ms));
    if let Some(token) = secrets
        .as_ref()
        .and_then(|secrets| secrets.operator_token().ok())
    {
        nodes = nodes.with_operator_token(&token);
    }
    let context = Context {
        nodes,
        format: cli.output,
        node: cli.node,
        verbose: cli.verbose,
        secrets,
        secrets_dir,
    };
    if context.format == Format::Json {
        // Scripts read stdout: a failed command still prints one JSON object there.
        let mut out = Counted::new(&mut *terminal.out);
        let mut err = Recorded::new(&mut *terminal.err);
        let code = {
            let mut inner = Terminal {
                out: &mut out,
                err: &mut err,
            };
            run_command(&context, cli.command, &mut inner).await
        };
        if code != exit::OK && out.written == 0 {
            let message = err.last_line();
            let _ = writeln!(
                terminal.out,
                "{}",
                serde_json::json!({ "ok": false, "exit_code": code, "error": message })
            );
        }
        return code;
    }
    run_command(&context, cli.command, terminal).await
}

/// Counts what passes through to stdout.
struct Counted<'a> {
    inner: &'a mut (dyn Write + Send),
    written: usize,
}

impl<'a> Counted<'a> {
    fn new(inner: &'a mut (dyn Write + Send)) -> Counted<'a> {
        Counted { inner, written: 0 }
    }
}

impl Write for Counted<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.written += written;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Passes stderr through and keeps its text, so a JSON error object can repeat the reason.
struct Recorded<'a> {
    inner: &'a mut (dyn Write + Send),
    text: Vec<u8>,
}

impl<'a> Recorded<'a> {
    fn new(inner: &'a mut (dyn Write + Send)) -> Recorded<'a> {
        Recorded {
            inner,
            text: Vec::new(),
        }
    }

    fn last_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.text);
        let line = text
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("");
        line.trim_start_matches("error: ").to_string()
    }
}

impl Write for Recorded<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(bytes);
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

async fn run_command(context: &Context, command: Command, terminal: &mut Terminal<'_>) -> i32 {
    match command {
        Command::Transfer(arguments) => transfer::run(context, arguments, terminal).await,
        Command::Status => status::run(context, terminal).await,
        Command::Balances => balances::run(context, terminal).await,
        Command::Chain(arguments) => chain::run(context, arguments, terminal).await,
        Command::Log => log::run(context, terminal).await,
        Command::Verify { allow_down } => verify::run(context, allow_down, terminal).await,
        Command::Crash { node } => faults::crash(context, node, terminal).await,
        Command::Sever { a, b, one_way } => faults::sever(context, a, b, one_way, terminal).await,
        Command::Heal(arguments) => faults::heal(context, arguments, terminal).await,
        Command::Partition { groups } => faults::partition(context, &groups, terminal).await,
        Command::Bench(arguments) => bench::run(context, arguments, terminal).await,
        Command::Dashboard(arguments) => dashboard::run(context, arguments, terminal).await,
        Command::Local(LocalCommand::Up(local)) => local::up(context, &local, terminal).await,
        Command::Local(LocalCommand::Start { node, local }) => {
            local::start(context, node, &local, terminal).await
        }
        Command::Local(LocalCommand::Down { purge, local }) => {
            local::down(context, purge, &local, terminal).await
        }
        Command::Secrets(SecretsCommand::Init { nodes, owner_of }) => {
            secrets::init(context, nodes, owner_of.as_deref(), terminal)
        }
    }
}

impl Context {
    /// The nodes to try for a one-node command: --node, or every node in order.
    pub fn candidates(&self) -> Vec<NodeId> {
        match self.node {
            Some(node) => vec![node],
            None => self.nodes.ids(),
        }
    }

    /// The nodes to try for a read that should reflect every acknowledged transfer: --node, or
    /// the leader a quorum follows (it applied each transfer before acknowledging it, while a
    /// follower learns of it a moment later), then every other node in order.
    pub async fn leader_first(&self) -> Vec<NodeId> {
        let mut nodes = self.candidates();
        if self.node.is_none() {
            if let Some(found) = route::find(self).await {
                nodes.retain(|node| *node != found.route.node);
                nodes.insert(0, found.route.node);
            }
        }
        nodes
    }

    /// Asks the first node that answers (--node only, if given). Unreachable nodes are reported
    /// on the way; a refusal ends the search.
    pub async fn ask_one<T, F, Fut>(
        &self,
        terminal: &mut Terminal<'_>,
        call: F,
    ) -> Result<(NodeId, T), i32>
    where
        F: FnMut(NodeId) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        self.ask_first_of(self.candidates(), terminal, call).await
    }

    /// Asks `nodes` in turn until one answers. Unreachable nodes are reported on the way; a
    /// refusal ends the search.
    pub async fn ask_first_of<T, F, Fut>(
        &self,
        nodes: Vec<NodeId>,
        terminal: &mut Terminal<'_>,
        mut call: F,
    ) -> Result<(NodeId, T), i32>
    where
        F: FnMut(NodeId) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        for node in nodes {
            match call(node).await {
                Ok(value) => return Ok((node, value)),
                Err(error) if error.is_unreachable() => {
                    let _ = writeln!(terminal.err, "warning: {error}");
                }
                Err(error) => {
                    let _ = writeln!(terminal.err, "error: {error}");
                    return Err(exit::FAILED);
                }
            }
        }
        let _ = writeln!(terminal.err, "error: no node could be reached");
        Err(exit::UNREACHABLE)
    }
}

/// Runs `call` against every node at once; results come back in node order.
pub async fn on_every_node<T, F, Fut>(
    nodes: &[NodeId],
    call: F,
) -> Vec<(NodeId, Result<T, CallError>)>
where
    T: Send + 'static,
    F: Fn(NodeId) -> Fut,
    Fut: Future<Output = Result<T, CallError>> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    for node in nodes {
        let node = *node;
        let future = call(node);
        tasks.spawn(async move { (node, future.await) });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(result) = joined {
            results.push(result);
        }
    }
    results.sort_by_key(|(node, _)| *node);
    results
}
