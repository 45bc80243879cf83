//! `ragspool gate serve`: the reference gate endpoint.

use crate::cli::Args;
use crate::config::Config;
use crate::error::{Context, Error, Outcome, Result};
use crate::gate_server::{Gate, Policy};
use std::io::Write;

pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    match args.positionals.first().map(String::as_str) {
        Some("serve") => {}
        Some(other) => {
            return Err(Error::usage(format!(
                "unknown gate action `{other}`; the one action is `serve`"
            )));
        }
        None => {
            return Err(Error::usage(
                "`gate` needs an action: `gate serve --listen ADDR`",
            ));
        }
    }
    let listen = args
        .value("listen")
        .ok_or_else(|| Error::usage("`gate serve` needs `--listen ADDR`, e.g. 127.0.0.1:8787"))?;
    let token = config.gate_token.clone().ok_or_else(|| {
        Error::config("`GATE_TOKEN` must be set: it is the token the gate accepts")
    })?;
    let key = match &config.gate_secret {
        Some(s) => Some(crate::notify::webhook::signing_key(s.expose())?),
        None => None,
    };
    let rate: f64 = args.parse_or("rate", 50.0, "a positive number")?;
    let burst: f64 = args.parse_or("burst", 100.0, "a positive number")?;
    if !(rate > 0.0 && burst >= 1.0) {
        return Err(Error::usage(
            "`--rate` must be above 0 and `--burst` at least 1",
        ));
    }
    let events: Box<dyn Write> = match args.value("events") {
        Some(path) => Box::new(
            crate::fs::open_append(std::path::Path::new(path), 0o640)
                .with_context(|| format!("cannot open `--events {path}`"))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let gate = Gate::new(
        Policy {
            token,
            key,
            rate,
            burst,
        },
        events,
    );
    crate::gate_server::serve(listen, gate)?;
    Ok(Outcome::Clean)
}
