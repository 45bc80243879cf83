//! One thin file per command: settings → domain calls → report → Outcome.

mod cache;
mod check;
mod gate;
mod generate;
mod import;
mod init;
mod maintain;
mod migrate;
mod notify;
mod process;
mod requeue;
mod status;
mod trace;
mod validate;
mod watch;

use crate::cli::Invocation;
use crate::config::Config;
use crate::error::{Error, Outcome, Result};
use std::io::Write;

/// Whether a command writes RAG_LOG_FILE. Read-only commands log to stderr only,
/// and so does `init`, which must create the log directory with its owner itself,
/// and `import`, which a producer runs under its own account, beside the service.
pub(crate) fn logs_to_file(command: &str) -> bool {
    !matches!(
        command,
        "status" | "check" | "cache" | "init" | "trace" | "import" | "validate"
    )
}

/// Runs the command of `inv` with `config`.
pub(crate) fn dispatch(inv: &Invocation, config: &Config) -> Result<Outcome> {
    let args = &inv.args;
    match inv.command.name {
        "init" => init::run(config, args),
        "migrate" => migrate::run(config, args),
        "watch" => watch::run(config, args),
        "process" => process::run(config, args),
        "notify" => notify::run(config, args),
        "maintain" => maintain::run(config, args),
        "cache" => cache::run(config, args),
        "gate" => gate::run(config, args),
        "status" => status::run(config, args),
        "check" => check::run(config, args, inv.globals.verbosity > 0),
        "requeue" => requeue::run(config, args),
        "trace" => trace::run(config, args),
        "gen" => generate::run(config, args),
        "import" => import::run(config, args),
        "validate" => validate::run(config, args),
        // Every registered command is run by the integration tests, so a gap shows there.
        other => Err(Error::usage(format!(
            "`ragspool {other}` is registered but has no handler"
        ))),
    }
}

/// Prints command output on stdout; a closed pipe (`| head`) is not an error.
pub(crate) fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::from(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// Prints a JSON value on one line.
pub(crate) fn emit_json(value: &serde_json::Value) -> Result<()> {
    emit(&format!("{value}\n"))
}
