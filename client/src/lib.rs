//! `benmoctl`: the command-line client of a Benmo cluster. It talks to the nodes only over gRPC.
//!
//! - [`cli`]: the commands and flags.
//! - [`connect`]: one gRPC client per node, and how unreachable nodes are reported.
//! - [`render`]: tables for people, JSON for scripts.
//! - [`commands`]: one module per subcommand.
//!
//! [`run`] is the whole program; `main` only hands it the process's arguments and streams.

pub mod cli;
pub mod commands;
pub mod connect;
pub mod render;

use std::io::Write;

use clap::Parser;

pub use cli::Cli;

/// Exit codes scripts can rely on.
pub mod exit {
    /// The command did what was asked.
    pub const OK: i32 = 0;
    /// The command ran but the answer is a failure: a rejected transfer, a verify violation.
    pub const FAILED: i32 = 1;
    /// Bad input: flags, node ids, amounts. Nothing was sent.
    pub const USAGE: i32 = 2;
    /// A transfer was not committed in time; it is still pending under its id.
    pub const PENDING: i32 = 3;
    /// A node the command needed could not be reached.
    pub const UNREACHABLE: i32 = 4;
}

/// Where a command writes: results to `out`, diagnostics to `err`.
pub struct Terminal<'a> {
    /// Results (tables or JSON).
    pub out: &'a mut (dyn Write + Send),
    /// Errors and warnings.
    pub err: &'a mut (dyn Write + Send),
}

/// Runs benmoctl with `arguments` (the first is the program name) and returns the exit code.
pub async fn run<I, T>(arguments: I, terminal: &mut Terminal<'_>) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(arguments) {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let text = error.render().to_string();
            let stream: &mut dyn Write = if error.use_stderr() {
                terminal.err
            } else {
                terminal.out
            };
            let _ = stream.write_all(text.as_bytes());
            return code;
        }
    };
    commands::dispatch(cli, terminal).await
}
