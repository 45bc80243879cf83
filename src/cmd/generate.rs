//! `ragspool gen`: sample files into incoming/.

use crate::cli::Args;
use crate::config::Config;
use crate::error::{Outcome, Result};
use crate::sample::{self, Plan};
use crate::spool::Spool;

pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let number = "a whole number";
    let plan = Plan {
        files: args.parse_or("files", 10, number)?,
        records: args.parse_or("records", 100, number)?,
        dim: args.parse_or("dim", 384, number)?,
        days: args.parse_or("days", 3, number)?,
        seed: args.parse_or("seed", 1, number)?,
        bad: args.parse_or("bad", 0, number)?,
    };
    let spool = Spool::new(&config.spool_dir);
    spool.require()?;
    let w = sample::generate(&spool, &plan)?;
    if args.has("json") {
        super::emit_json(&serde_json::json!({
            "files": w.files,
            "records": w.records,
            "bad": w.bad,
            "bytes": w.bytes,
            "incoming": spool.dir("incoming").display().to_string(),
        }))?;
        return Ok(Outcome::Clean);
    }
    super::emit(&format!(
        "wrote {} file(s) with {} record(s) and {} broken file(s), {} bytes, into {}\n",
        w.files,
        w.records,
        w.bad,
        w.bytes,
        spool.dir("incoming").display()
    ))?;
    Ok(Outcome::Clean)
}
