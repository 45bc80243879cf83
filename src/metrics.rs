//! Prometheus textfile-collector output (SPEC §9): counters kept in process,
//! gauges read when written, the file replaced atomically (temp file + rename).

use crate::batch::Reason;
use crate::error::Result;
use crate::spool::Spool;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A process-wide counter.
pub(crate) struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    /// Adds `n`.
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Batches by reason, in [`Reason::ALL`] order.
pub(crate) static BATCHES: [Counter; 5] = [
    Counter::new(),
    Counter::new(),
    Counter::new(),
    Counter::new(),
    Counter::new(),
];
/// Rows inserted.
pub(crate) static ROWS: Counter = Counter::new();
/// Files archived.
pub(crate) static FILES_OK: Counter = Counter::new();
/// Files failed.
pub(crate) static FILES_FAILED: Counter = Counter::new();
/// Sum of batch durations, in milliseconds.
pub(crate) static BATCH_MS: Counter = Counter::new();
/// Gate deliveries: delivered, retried, dead.
pub(crate) static DELIVERED: Counter = Counter::new();
/// Delivery attempts that will be retried.
pub(crate) static RETRIED: Counter = Counter::new();
/// Events moved to outbox/dead/.
pub(crate) static DEAD: Counter = Counter::new();
/// Partitions created (self-heal and maintenance).
pub(crate) static PARTITIONS_CREATED: Counter = Counter::new();
/// Cache hits and misses counted in this process.
pub(crate) static CACHE_HITS: Counter = Counter::new();
/// Cache misses.
pub(crate) static CACHE_MISSES: Counter = Counter::new();
/// PUBLISHes that reached no subscriber.
pub(crate) static PUBLISH_UNHEARD: Counter = Counter::new();

/// Counts a finished batch.
pub(crate) fn batch(reason: Reason, rows: u64, ok: usize, failed: usize, duration_ms: u64) {
    if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
        BATCHES[i].add(1);
    }
    ROWS.add(rows);
    FILES_OK.add(ok as u64);
    FILES_FAILED.add(failed as u64);
    BATCH_MS.add(duration_ms);
}

/// Gauges read from outside the process when the file is written.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    /// Unix time of the last successful maintenance run.
    pub(crate) last_maintenance_success: Option<i64>,
    /// Partitions still waiting for their HNSW index (with VECTOR_INDEX=hnsw).
    pub(crate) partitions_unindexed: Option<usize>,
}

/// One metric family: HELP, TYPE and its samples (`labels` may be a suffix like `_sum`).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(
        out,
        "# HELP ragspool_{name} {help}\n# TYPE ragspool_{name} {kind}"
    );
    for (labels, value) in samples {
        let _ = writeln!(out, "ragspool_{name}{labels} {value}");
    }
}

/// The metrics text.
pub(crate) fn render(spool: &Spool, gauges: &Gauges) -> String {
    let mut out = String::new();
    let by_reason: Vec<(String, f64)> = Reason::ALL
        .iter()
        .zip(&BATCHES)
        .map(|(r, c)| (format!("{{reason=\"{}\"}}", r.as_str()), c.get() as f64))
        .collect();
    family(
        &mut out,
        "batches_total",
        "counter",
        "Batches by gate.done reason.",
        &by_reason,
    );
    family(
        &mut out,
        "rows_total",
        "counter",
        "Rows inserted.",
        &[(String::new(), ROWS.get() as f64)],
    );
    let files = [
        ("{outcome=\"ok\"}".to_string(), FILES_OK.get() as f64),
        (
            "{outcome=\"failed\"}".to_string(),
            FILES_FAILED.get() as f64,
        ),
    ];
    family(
        &mut out,
        "files_total",
        "counter",
        "Files by outcome.",
        &files,
    );
    let count: u64 = BATCHES.iter().map(Counter::get).sum();
    let duration = [
        ("_sum".to_string(), BATCH_MS.get() as f64 / 1000.0),
        ("_count".to_string(), count as f64),
    ];
    family(
        &mut out,
        "batch_duration_seconds",
        "summary",
        "Batch wall time.",
        &duration,
    );
    if let Ok(depth) = spool.depth() {
        let files: Vec<_> = depth
            .iter()
            .map(|(d, x)| (format!("{{dir=\"{d}\"}}"), x.files as f64))
            .collect();
        let bytes: Vec<_> = depth
            .iter()
            .map(|(d, x)| (format!("{{dir=\"{d}\"}}"), x.bytes as f64))
            .collect();
        family(
            &mut out,
            "spool_files",
            "gauge",
            "Files per spool directory.",
            &files,
        );
        family(
            &mut out,
            "spool_bytes",
            "gauge",
            "Bytes per spool directory.",
            &bytes,
        );
    }
    let deliveries = [
        (
            "{outcome=\"delivered\"}".to_string(),
            DELIVERED.get() as f64,
        ),
        ("{outcome=\"retried\"}".to_string(), RETRIED.get() as f64),
        ("{outcome=\"dead\"}".to_string(), DEAD.get() as f64),
    ];
    family(
        &mut out,
        "gate_deliveries_total",
        "counter",
        "Webhook delivery attempts by outcome.",
        &deliveries,
    );
    let (waiting, dead) = crate::gate::outbox_depth(spool.root());
    family(
        &mut out,
        "outbox_depth",
        "gauge",
        "Events waiting in outbox/.",
        &[(String::new(), waiting as f64)],
    );
    family(
        &mut out,
        "outbox_dead",
        "gauge",
        "Events in outbox/dead/.",
        &[(String::new(), dead as f64)],
    );
    let created = [(String::new(), PARTITIONS_CREATED.get() as f64)];
    family(
        &mut out,
        "partitions_created_total",
        "counter",
        "Partitions created.",
        &created,
    );
    if let Some(t) = gauges.last_maintenance_success {
        let last = [(String::new(), t as f64)];
        family(
            &mut out,
            "last_maintenance_success_timestamp_seconds",
            "gauge",
            "Unix time of the last good maintenance run.",
            &last,
        );
    }
    if let Some(n) = gauges.partitions_unindexed {
        family(
            &mut out,
            "partitions_unindexed",
            "gauge",
            "Partitions still waiting for their HNSW index.",
            &[(String::new(), n as f64)],
        );
    }
    family(
        &mut out,
        "cache_hits_total",
        "counter",
        "Cache hits in this process.",
        &[(String::new(), CACHE_HITS.get() as f64)],
    );
    family(
        &mut out,
        "cache_misses_total",
        "counter",
        "Cache misses in this process.",
        &[(String::new(), CACHE_MISSES.get() as f64)],
    );
    let unheard = [(String::new(), PUBLISH_UNHEARD.get() as f64)];
    family(
        &mut out,
        "build_updates_unheard_total",
        "counter",
        "Build updates no subscriber received.",
        &unheard,
    );
    out
}

/// Writes METRICS_FILE, when set, with gauges read from the database (one
/// attempt; an unreachable database leaves them out rather than delaying).
pub(crate) fn write_configured(config: &crate::config::Config) {
    let Some(path) = &config.metrics_file else {
        return;
    };
    let names = crate::schema::Names::from_config(config);
    let mut client = crate::db::Db::from_config(config)
        .ok()
        .and_then(|db| db.connect_once().ok());
    let last_maintenance_success = client
        .as_mut()
        .and_then(|c| crate::maintenance::last_success(c, &names).ok().flatten());
    let partitions_unindexed = match (&names.storage.index, client.as_mut()) {
        (Some(_), Some(c)) => crate::partition::unindexed(c, &names).ok().map(|p| p.len()),
        _ => None,
    };
    let gauges = Gauges {
        last_maintenance_success,
        partitions_unindexed,
    };
    let spool = Spool::new(&config.spool_dir);
    if let Err(e) = write(path, &spool, &gauges) {
        log::warn!("cannot write METRICS_FILE `{}`: {e}", path.display());
    }
}

/// Writes the metrics to `path` atomically.
pub(crate) fn write(path: &Path, spool: &Spool, gauges: &Gauges) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("ragspool.prom");
    crate::spool::write_atomic(dir, name, render(spool, gauges).as_bytes(), 0o644)
}
