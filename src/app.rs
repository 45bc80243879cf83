//! The program's top level: parse argv, load settings, start logging, dispatch,
//! and print the one error line. `main.rs` only calls [`run`].

use crate::cli::{self, Request};
use crate::config::{self, Sources};
use crate::error::{self, Outcome, Result};
use std::process::ExitCode;

/// Runs ragspool with the process arguments and environment.
pub fn run() -> ExitCode {
    let result = run_inner();
    if let Err(e) = &result {
        eprintln!("ragspool: {e}");
    }
    error::exit_code(&result)
}

fn run_inner() -> Result<Outcome> {
    let inv = match cli::parse_env()? {
        Request::Print(text) => return crate::cmd::emit(&text).map(|()| Outcome::Clean),
        Request::Run(inv) => inv,
    };
    let env = config::process_env;
    let config = config::load(&Sources {
        flags: &inv.globals.settings,
        env_file: inv.globals.env_file.as_deref(),
        env: &env,
    })?;
    if let Some(user) = &config.user {
        // The failure log is opened as root (owner root, 0600); everything after,
        // the spool included, runs as the unprivileged user.
        if crate::privdrop::euid() == 0 {
            crate::failure_log::preopen(&config.failure_log)?;
        }
        crate::privdrop::drop_to(user, &config.named("RAGSPOOL_USER"))?;
    }
    let log_file = if crate::cmd::logs_to_file(inv.command.name) {
        config.log_file.as_deref()
    } else {
        None
    };
    crate::log::init(inv.globals.verbosity, log_file)?;
    crate::progress::set_quiet(inv.globals.verbosity < 0);
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
    crate::cmd::dispatch(&inv, &config)
}
