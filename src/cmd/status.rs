//! `ragspool status`: spool depth per directory and the oldest waiting file.

use crate::cli::Args;
use crate::config::Config;
use crate::error::{Outcome, Result};
use crate::ingest::manifest::{self, BatchSummary};
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
    let from_db = from_database(config);
    let batches = from_db.as_ref().map(|v| v.batches.clone());
    let last_maintenance = from_db.as_ref().ok().and_then(|v| v.maintenance.clone());
    let empty = Partitions::default();
    let partitions = from_db.as_ref().map_or(&empty, |v| &v.partitions);
    let (outbox, dead) = crate::notify::gate::outbox_depth(&config.spool_dir);
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
            "outbox": {"waiting": outbox, "dead": dead},
            "recent_batches": batches.as_ref().ok(),
            "last_maintenance": last_maintenance,
            "partitions_unindexed": partitions.unindexed,
            "partitions_without_toast_tuple_target": partitions.lacking_storage,
            "database_error": batches.as_ref().err(),
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
    out.push_str(&format!("outbox: {outbox} waiting, {dead} dead\n"));
    match &last_maintenance {
        Some(m) => out.push_str(&format!(
            "last maintenance: {} {} expected={} created={} finished {}\n",
            m.mode,
            m.outcome,
            m.expected,
            m.created_partitions,
            m.finished_at.as_deref().unwrap_or("-")
        )),
        None => out.push_str("last maintenance: none recorded\n"),
    }
    // Default-partition and short-window warnings travel in the run's detail.
    if let Some(detail) = last_maintenance.as_ref().and_then(|m| m.detail.as_deref()) {
        out.push_str(&format!("  detail: {detail}\n"));
    }
    if !partitions.unindexed.is_empty() {
        out.push_str(&format!(
            "partitions waiting for their HNSW index: {}\n",
            partitions.unindexed.join(", ")
        ));
    }
    if !partitions.lacking_storage.is_empty() {
        out.push_str(&format!(
            "partitions without TOAST_TUPLE_TARGET: {} (`ragspool migrate` sets it)\n",
            partitions.lacking_storage.join(", ")
        ));
    }
    match &batches {
        Ok(list) if list.is_empty() => out.push_str("recent batches: none\n"),
        Ok(list) => {
            out.push_str("recent batches:\n");
            for b in list {
                out.push_str(&format!(
                    "  {}  files={} done={} failed={} open={} rows={}{}  finished {}\n",
                    b.batch_tag,
                    b.files,
                    b.done,
                    b.failed,
                    b.open,
                    b.rows,
                    if b.healed { " healed" } else { "" },
                    b.finished_at.as_deref().unwrap_or("-")
                ));
            }
        }
        Err(e) => out.push_str(&format!("recent batches: unavailable ({e})\n")),
    }
    super::emit(&out)?;
    Ok(Outcome::Clean)
}

/// Partitions that lack what SPEC §10 gives them.
#[derive(Debug, Default)]
struct Partitions {
    unindexed: Vec<String>,
    lacking_storage: Vec<String>,
}

/// What the database tells `status`.
struct DbView {
    batches: Vec<BatchSummary>,
    maintenance: Option<crate::maintenance::Run>,
    partitions: Partitions,
}

/// The last ten batches, the last maintenance run and the partitions still
/// waiting for their index or storage parameter, or why they cannot be shown.
fn from_database(config: &Config) -> std::result::Result<DbView, String> {
    let names = crate::schema::Names::from_config(config);
    let read = || -> Result<DbView> {
        let db = crate::db::Db::from_config(config)?;
        let mut client = db
            .connect_once()
            .map_err(|e| crate::db::classify(e, "connecting"))?;
        if crate::schema::current_version(&mut client, &names)? == 0 {
            return Ok(DbView {
                batches: Vec::new(),
                maintenance: None,
                partitions: Partitions::default(),
            });
        }
        Ok(DbView {
            batches: manifest::recent_batches(&mut client, &names, 10)?,
            maintenance: crate::maintenance::last_run(&mut client, &names)?,
            partitions: Partitions {
                unindexed: crate::partition::unindexed(&mut client, &names)?
                    .into_iter()
                    .map(|(p, _)| p)
                    .collect(),
                lacking_storage: crate::partition::lacking_storage(&mut client, &names)?
                    .into_iter()
                    .collect(),
            },
        })
    };
    read().map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())
}
