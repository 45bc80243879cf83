//! `ragspool process`: recover, ingest everything waiting in batches, exit.

use crate::batch::BatchReport;
use crate::cli::Args;
use crate::config::Config;
use crate::db::Db;
use crate::error::{Error, Outcome, Result};
use crate::host::host_name;
use crate::ingest::Ingest;
use crate::ingest::embed::Embedder;
use crate::notify::gate::Notifier;
use crate::runner::Runner;
use crate::schema::{self, Names};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// SIGTERM and SIGINT stop it as they stop `watch`: the batch in flight finishes,
/// the outbox is flushed, and what still waits in incoming/ is left for the next run.
pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let stop = Arc::new(AtomicBool::new(false));
    // The receiver lives as long as the run: dropping it would end the signal
    // thread and give SIGTERM its default action back.
    let (tx, _requests) = std::sync::mpsc::channel::<crate::signal::Request>();
    crate::signal::listen(tx, stop.clone())?;
    let mut runner = runner(config)?;
    let depth = runner.spool.depth()?;
    let (files, bytes) = depth
        .iter()
        .filter(|(dir, _)| matches!(*dir, "incoming" | "processing"))
        .fold((0, 0), |(f, b), (_, d)| (f + d.files, b + d.bytes));
    let progress = crate::progress::Progress::ingest(files, bytes);
    runner.set_progress(progress.clone());
    runner.flush();
    let mut reports = runner.recover()?;
    if reports.iter().all(|r| r.error.is_none()) {
        while !stop.load(Ordering::SeqCst) {
            let Some(report) = runner.next()? else {
                break;
            };
            let failed = report.error.is_some();
            reports.push(report);
            if failed {
                break;
            }
        }
    }
    progress.finish();
    if stop.load(Ordering::SeqCst) {
        log::info!(
            "stopped by a signal after the batch in flight; files still in incoming/ wait for the next run"
        );
    }
    runner.flush();
    // The second pass of this run's cache invalidations (CACHE_REDELETE_MS after
    // the build updates) before exiting; a Redis outage leaves it queued.
    runner.settle_invalidations(true);
    crate::gauges::write_configured(config);
    summarize(&reports, runner.undelivered(), args.has("json"))
}

/// A runner with everything a batch needs, from settings, and the hang guard.
pub(crate) fn runner(config: &Config) -> Result<Runner> {
    crate::spool::Spool::new(&config.spool_dir).require()?;
    if let Some(limit) = hang_limit(config) {
        crate::heartbeat::hang_guard(limit);
    }
    let failure_log = crate::failure_log::shared(&config.failure_log)?;
    let host = host_name();
    let notifier = Notifier::new(config, Some(failure_log.clone()), &host)?;
    let (ingest, client) = ingest(config)?;
    let runner = Runner::new(config, ingest, notifier, failure_log);
    // The connection that checked the schema serves the first batch's first worker.
    runner.idle.keep(client);
    Ok(runner)
}

/// How long a batch may go without progress before the process gives up (exit
/// 75): from the longest single wait the settings allow; none when statements
/// may run for ever (DB_STATEMENT_TIMEOUT_MS=0).
fn hang_limit(config: &Config) -> Option<Duration> {
    let (statement, lock) = config.db_timeouts;
    if statement == 0 {
        return None;
    }
    let mut longest = Duration::from_millis(statement.max(lock)).max(Duration::from_secs(10));
    if config.gate_url.is_some() || config.alert_url.is_some() {
        longest = longest.max(Duration::from_millis(config.gate_timeout_ms));
    }
    if let Some(embed) = &config.embed {
        longest = longest.max(embed.timeout);
    }
    Some(crate::heartbeat::hang_limit(longest))
}

/// The per-file ingest context from settings, after checking the schema on the
/// connection it returns.
fn ingest(config: &Config) -> Result<(Ingest, postgres::Client)> {
    let db = Db::from_config(config)?;
    let names = Names::from_config(config);
    let mut client = db.connect()?;
    schema::require_current(&mut client, &names)?;
    if config.distribution == crate::config::Distribution::Citus {
        crate::distribution::require_distributed(&mut client, &names)?;
        // On the connection just made: a second Db would load the system's trust
        // store for its TLS once more (see pgtls), 40 ms of every run's start.
        crate::distribution::resolve_in_doubt(&mut client);
    }
    let budget = Duration::from_secs(config.retry_max_secs);
    let embedder = config.embed.as_ref().map(|settings| {
        Embedder::new(settings, config.embed_dim, budget).storing(names.storage.embedding)
    });
    let ingest = Ingest {
        names,
        db,
        embedder,
        embed_dim: config.embed_dim,
        max_file_bytes: config.max_file_bytes,
        max_faults: config.file_max_faults,
        host: host_name(),
        citus: config.distribution == crate::config::Distribution::Citus,
    };
    Ok((ingest, client))
}

/// Prints a summary (a line, or with `json` one object) and turns the reports
/// into the command's result.
fn summarize(reports: &[BatchReport], undelivered: usize, json: bool) -> Result<Outcome> {
    let files: usize = reports.iter().map(|r| r.files_ok).sum();
    let failed: usize = reports.iter().map(|r| r.files_failed).sum();
    let rows: u64 = reports.iter().map(|r| r.rows).sum();
    if json {
        super::emit_json(&json_summary(reports, undelivered))?;
    } else {
        super::emit(&format!(
            "{} batch(es): {files} file(s) ingested, {failed} failed, {rows} row(s)\n",
            reports.len()
        ))?;
    }
    if let Some(e) = reports.iter().find_map(|r| r.error.as_ref()) {
        return Err(e
            .to_error()
            .with_note("files left in processing/ are retried by the next run"));
    }
    if undelivered > 0 {
        return Err(Error::temp(format!(
            "{undelivered} notification(s) could not be delivered and wait in outbox/"
        ))
        .with_note(
            "the gate or alert endpoint is unreachable; the next run delivers them in order",
        ));
    }
    Ok(Outcome::failed_if(failed > 0))
}

/// The run as one JSON object: totals, then each batch (README, `process --json`).
fn json_summary(reports: &[BatchReport], undelivered: usize) -> serde_json::Value {
    let batches: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "batch_tag": r.tag.as_str(),
                "files": r.files,
                "bytes": r.bytes,
                "files_ingested": r.files_ok,
                "files_failed": r.files_failed,
                "rows": r.rows,
                "rows_removed": r.deleted,
                "reason": r.reason.as_str(),
                "healed": r.healed,
                "duration_ms": r.duration_ms,
                "error": r.error.as_ref().map(|e| e.text.clone()),
            })
        })
        .collect();
    serde_json::json!({
        "batches": batches,
        "files_ingested": reports.iter().map(|r| r.files_ok).sum::<usize>(),
        "files_failed": reports.iter().map(|r| r.files_failed).sum::<usize>(),
        "rows": reports.iter().map(|r| r.rows).sum::<u64>(),
        "undelivered": undelivered,
    })
}
