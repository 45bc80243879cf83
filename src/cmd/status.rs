//! `ragspool status`: spool depth per directory and the oldest waiting file.

use crate::cli::Args;
use crate::config::Config;
use crate::error::{Outcome, Result};
use crate::spool::Spool;
use serde_json::json;
use std::time::SystemTime;

pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let spool = Spool::new(&config.spool_dir);
    spool.require()?;
    let depth = spool.depth()?;
    let oldest = spool.waiting()?.iter().map(|w| w.modified).min().map(|m| {
        SystemTime::now()
            .duration_since(m)
            .map_or(0, |d| d.as_secs())
    });
    if args.has("json") {
        let dirs: serde_json::Map<String, serde_json::Value> = depth
            .iter()
            .map(|(name, d)| {
                (
                    name.to_string(),
                    json!({"files": d.files, "bytes": d.bytes}),
                )
            })
            .collect();
        return super::emit_json(&json!({
            "spool_dir": spool.root().display().to_string(),
            "dirs": dirs,
            "oldest_waiting_secs": oldest,
        }))
        .map(|()| Outcome::Clean);
    }
    let mut out = format!(
        "spool {}\n  {:<11} {:>8} {:>14}\n",
        spool.root().display(),
        "directory",
        "files",
        "bytes"
    );
    for (name, d) in &depth {
        out.push_str(&format!("  {name:<11} {:>8} {:>14}\n", d.files, d.bytes));
    }
    match oldest {
        Some(s) => out.push_str(&format!("oldest waiting file: {s}s old\n")),
        None => out.push_str("oldest waiting file: none waiting\n"),
    }
    super::emit(&out)?;
    Ok(Outcome::Clean)
}
