//! `ragspool watch`: the daemon.

use crate::cli::Args;
use crate::config::Config;
use crate::error::{Outcome, Result};
use crate::watch::{self, Action};

pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    watch::run(config, || {
        Ok(match args.value("exec") {
            Some(cmd) => Action::Exec(cmd.to_string()),
            None => Action::Ingest(Box::new(super::process::runner(config)?)),
        })
    })
}
