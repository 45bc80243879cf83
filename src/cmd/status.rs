//! `ragspool status`: spool depth per directory and the oldest waiting file.

use crate::cli::Args;
use crate::config::Config;
use crate::error::{Outcome, Result};
use crate::ingest::manifest::BatchSummary;
use crate::inspect::{self, DbView, Partitions};
use crate::maintenance::Run;
use crate::spool::{Depth, Spool};
use crate::storage::PartitionIndex;
use serde_json::json;

/// What `status` shows, read once and then printed as text or JSON.
struct Status {
    depth: Vec<(&'static str, Depth)>,
    oldest: Option<u64>,
    db: DbView,
    outbox: (usize, usize),
}

/// Shows the spool, the outbox and what the database knows; a database that
/// cannot be read is reported, not a failure.
pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let spool = Spool::new(&config.spool_dir);
    spool.require()?;
    let status = Status {
        depth: spool.depth()?,
        oldest: inspect::oldest_waiting_secs(&spool)?,
        db: inspect::database_view(config),
        outbox: crate::notify::gate::outbox_depth(&config.spool_dir),
    };
    if args.has("json") {
        super::emit_json(&json_report(&spool, &status))?;
    } else {
        super::emit(&text_report(&spool, &status))?;
    }
    Ok(Outcome::Clean)
}

/// Everything in one JSON object, for scripts.
fn json_report(spool: &Spool, s: &Status) -> serde_json::Value {
    let dirs: serde_json::Map<String, serde_json::Value> = s
        .depth
        .iter()
        .map(|(name, d)| {
            (
                name.to_string(),
                json!({"files": d.files, "bytes": d.bytes}),
            )
        })
        .collect();
    let (outbox, dead) = s.outbox;
    json!({
        "spool_dir": spool.root().display().to_string(),
        "dirs": dirs,
        "oldest_waiting_secs": s.oldest,
        "outbox": {"waiting": outbox, "dead": dead},
        "recent_batches": s.db.batches.as_ref().ok(),
        "last_maintenance": s.db.maintenance,
        "partitions_unindexed": s.db.partitions.unindexed.iter().map(|(_, p)| p)
            .collect::<std::collections::BTreeSet<_>>(),
        "partitions_without_toast_tuple_target": s.db.partitions.lacking_storage,
        "embed_tokens_24h": s.db.tokens_24h,
        "database_error": s.db.batches.as_ref().err(),
    })
}

/// The spool table, then one section a line or list, for the operator.
fn text_report(spool: &Spool, s: &Status) -> String {
    let mut out = format!(
        "spool {}\n  {:<11} {:>8} {:>14}\n",
        spool.root().display(),
        "directory",
        "files",
        "bytes"
    );
    for (name, d) in &s.depth {
        out.push_str(&format!("  {name:<11} {:>8} {:>14}\n", d.files, d.bytes));
    }
    match s.oldest {
        Some(secs) => out.push_str(&format!("oldest waiting file: {secs}s old\n")),
        None => out.push_str("oldest waiting file: none waiting\n"),
    }
    let ((outbox, dead), tokens) = (s.outbox, s.db.tokens_24h);
    out.push_str(&format!("outbox: {outbox} waiting, {dead} dead\n"));
    let tokens = tokens.map(|t| format!("embeddings: {t} tokens in the last 24 hours\n"));
    out.push_str(&tokens.unwrap_or_default());
    maintenance_lines(&mut out, s.db.maintenance.as_ref());
    partition_lines(&mut out, &s.db.partitions);
    batch_lines(&mut out, &s.db.batches);
    out
}

/// The last maintenance run with its detail, where the default-partition and
/// short-window warnings travel.
fn maintenance_lines(out: &mut String, last: Option<&Run>) {
    match last {
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
    if let Some(detail) = last.and_then(|m| m.detail.as_deref()) {
        out.push_str(&format!("  detail: {detail}\n"));
    }
}

/// Only partitions that lack something are listed: a healthy table adds no line.
fn partition_lines(out: &mut String, partitions: &Partitions) {
    for (kind, waiting) in PartitionIndex::grouped(&partitions.unindexed) {
        out.push_str(&format!(
            "partitions waiting for their {} index: {}\n",
            kind.label(),
            waiting.join(", ")
        ));
    }
    if !partitions.lacking_storage.is_empty() {
        out.push_str(&format!(
            "partitions without TOAST_TUPLE_TARGET: {} (`ragspool migrate` sets it)\n",
            partitions.lacking_storage.join(", ")
        ));
    }
}

/// The recent batches, or why the database could not give them.
fn batch_lines(out: &mut String, batches: &std::result::Result<Vec<BatchSummary>, String>) {
    match batches {
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
}
