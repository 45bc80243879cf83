//! Prometheus textfile-collector output (SPEC §9). A leaf: the modules that count
//! report to it, and `gauges.rs` reads what it shows from the database and spool.
//! Counters add up across every command that writes the file and across restarts: under an flock on
//! `<METRICS_FILE>.lock`, a writer reads the file, adds what it counted since its
//! own last write, and replaces the file atomically (temp file + rename). So
//! `maintain` never lowers an ingest counter, `process` runs add up, a restarted
//! `watch` goes on from the file, and two writers at once lose no increment.
//! Gauges (spool and outbox depth, maintenance, unindexed partitions) are read
//! afresh by every writer; one it cannot read keeps the file's last value.

use crate::batch::Reason;
use crate::error::Result;
use crate::spool::{Depth, Spool};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A process-wide counter, with what of it the metrics file already holds.
pub(crate) struct Counter {
    value: AtomicU64,
    flushed: AtomicU64,
}

impl Counter {
    const fn new() -> Counter {
        Counter {
            value: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        }
    }

    /// Adds `n`.
    pub(crate) fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// A counter family with one label whose values are known only at run time (an
/// HTTP status, a model name): a counter per value seen, few by nature.
pub(crate) struct Labeled {
    name: &'static str,
    label: &'static str,
    series: std::sync::Mutex<Vec<(String, &'static Counter)>>,
}

impl Labeled {
    const fn new(name: &'static str, label: &'static str) -> Labeled {
        Labeled {
            name,
            label,
            series: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Adds `n` to the series of `value`.
    pub(crate) fn add(&self, value: &str, n: u64) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = series.iter().find(|(v, _)| v == value) {
            return c.add(n);
        }
        // A counter lives as long as the process, as the static ones do; the values
        // are few (status codes, one model), so what this keeps is bounded.
        let counter: &'static Counter = Box::leak(Box::new(Counter::new()));
        counter.add(n);
        series.push((value.to_string(), counter));
    }

    /// The key prefix of this family's series.
    fn prefix(&self) -> String {
        format!("ragspool_{}{{{}=\"", self.name, self.label)
    }

    fn series(&self) -> Vec<Series> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series
            .iter()
            .map(|(v, counter)| Series {
                key: format!("{}{}\"}}", self.prefix(), escape_label(v)),
                counter,
                scale: 1.0,
            })
            .collect()
    }
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Embeddings requests by answer: the HTTP status, or `error` for none.
pub(crate) static EMBED_REQUESTS: Labeled = Labeled::new("embed_requests_total", "code");
/// Tokens sent to the embeddings endpoint, by model.
pub(crate) static EMBED_TOKENS: Labeled = Labeled::new("embed_tokens_total", "model");
/// The labelled families, in file order.
static LABELED: [&Labeled; 2] = [&EMBED_TOKENS, &EMBED_REQUESTS];

/// Requests in flight and the concurrency in effect, once this process embeds.
static EMBED_PACE: std::sync::Mutex<Option<(usize, usize)>> = std::sync::Mutex::new(None);

/// Records the embeddings pace for the gauges of the next write.
pub(crate) fn set_embed_pace(in_flight: usize, concurrency: usize) {
    *EMBED_PACE.lock().unwrap_or_else(|p| p.into_inner()) = Some((in_flight, concurrency));
}

/// Bucket bounds of the lag histograms, in seconds (SPEC §12).
pub(crate) const LAG_BUCKETS: [f64; 11] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A histogram whose buckets are cumulative counters, so that it merges into the
/// file like every other counter.
pub(crate) struct Histogram {
    buckets: [Counter; LAG_BUCKETS.len()],
    count: Counter,
    sum_micros: Counter,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { Counter::new() }; LAG_BUCKETS.len()],
            count: Counter::new(),
            sum_micros: Counter::new(),
        }
    }

    /// Counts one observation of `secs` seconds (negative ones as 0).
    pub(crate) fn observe(&self, secs: f64) {
        let secs = secs.max(0.0);
        for (bound, bucket) in LAG_BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.add(1);
            }
        }
        self.count.add(1);
        self.sum_micros.add((secs * 1e6) as u64);
    }

    fn series(&'static self, name: &str) -> Vec<Series> {
        // `le` as Prometheus spells it: f64's Display writes 1.0 as `1`.
        let mut all: Vec<Series> = LAG_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(le, b)| Series {
                key: format!("ragspool_{name}_bucket{{le=\"{le}\"}}"),
                counter: b,
                scale: 1.0,
            })
            .collect();
        all.push(Series {
            key: format!("ragspool_{name}_bucket{{le=\"+Inf\"}}"),
            counter: &self.count,
            scale: 1.0,
        });
        all.push(Series {
            key: format!("ragspool_{name}_sum"),
            counter: &self.sum_micros,
            scale: 1e-6,
        });
        all.push(Series {
            key: format!("ragspool_{name}_count"),
            counter: &self.count,
            scale: 1.0,
        });
        all
    }
}

/// File mtime to its commit.
pub(crate) static INGEST_LAG: Histogram = Histogram::new();
/// File mtime to its batch's gate.done delivered.
pub(crate) static SEARCHABLE_LAG: Histogram = Histogram::new();

/// Seconds from `mtime` (unix seconds) to now.
pub(crate) fn since(mtime: f64) -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
        - mtime
}

/// One counter series of the file: its name with labels, its counter, and the
/// factor from the counter's unit to the exported one.
struct Series {
    key: String,
    counter: &'static Counter,
    scale: f64,
}

/// Every counter series, in the order the file lists them. `merged` walks this
/// one list, so a counter missing from it would never reach the file.
fn counter_series() -> Vec<Series> {
    let mut all = batch_series();
    all.extend(SCALAR_SERIES.iter().map(|&(key, counter, scale)| Series {
        key: key.to_string(),
        counter,
        scale,
    }));
    all.extend(INGEST_LAG.series("ingest_lag_seconds"));
    all.extend(SEARCHABLE_LAG.series("searchable_lag_seconds"));
    all.extend(LABELED.iter().flat_map(|l| l.series()));
    all
}

/// Zipped with [`Reason::ALL`], the order [`batch`] indexes [`BATCHES`] by, so
/// that each key names the reason its counter counts.
fn batch_series() -> Vec<Series> {
    Reason::ALL
        .iter()
        .zip(&BATCHES)
        .map(|(r, counter)| Series {
            key: format!("ragspool_batches_total{{reason=\"{}\"}}", r.as_str()),
            counter,
            scale: 1.0,
        })
        .collect()
}

/// The counters of one series each, as (key, counter, scale), in file order. A
/// table rather than code, so that each key stands next to the static it reads
/// and a new counter is one more row.
static SCALAR_SERIES: [(&str, &Counter, f64); 14] = [
    ("ragspool_rows_total", &ROWS, 1.0),
    ("ragspool_files_total{outcome=\"ok\"}", &FILES_OK, 1.0),
    (
        "ragspool_files_total{outcome=\"failed\"}",
        &FILES_FAILED,
        1.0,
    ),
    ("ragspool_batch_duration_seconds_sum", &BATCH_MS, 0.001),
    (
        "ragspool_gate_deliveries_total{outcome=\"delivered\"}",
        &DELIVERED,
        1.0,
    ),
    (
        "ragspool_gate_deliveries_total{outcome=\"retried\"}",
        &RETRIED,
        1.0,
    ),
    (
        "ragspool_gate_deliveries_total{outcome=\"dead\"}",
        &DEAD,
        1.0,
    ),
    (
        "ragspool_partitions_created_total",
        &PARTITIONS_CREATED,
        1.0,
    ),
    (
        "ragspool_embeddings_total{source=\"fetched\"}",
        &EMBEDDINGS_FETCHED,
        1.0,
    ),
    (
        "ragspool_embeddings_total{source=\"reused\"}",
        &EMBEDDINGS_REUSED,
        1.0,
    ),
    (
        "ragspool_embeddings_total{source=\"record\"}",
        &EMBEDDINGS_RECORD,
        1.0,
    ),
    ("ragspool_cache_hits_total", &CACHE_HITS, 1.0),
    ("ragspool_cache_misses_total", &CACHE_MISSES, 1.0),
    (
        "ragspool_build_updates_unheard_total",
        &PUBLISH_UNHEARD,
        1.0,
    ),
];

/// The samples of a metrics file: series (name with labels) → value.
pub(crate) type Samples = std::collections::HashMap<String, f64>;

/// Reads the samples of the file at `path` (none when it is missing or unreadable).
fn read_samples(path: &Path) -> Samples {
    // A missing file is the first write, with nothing to merge; an unreadable one is
    // treated the same rather than failing a command whose work is already done.
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The file's counters plus what this process counted since its last write;
/// returns them with the counter values they include.
fn merged(previous: &Samples) -> (Samples, Vec<(&'static Counter, u64)>) {
    let mut out = Samples::new();
    let mut taken = Vec::new();
    for s in counter_series() {
        let now = s.counter.get();
        let delta = now.saturating_sub(s.counter.flushed.load(Ordering::Relaxed));
        let before = previous.get(&s.key).copied().unwrap_or(0.0);
        out.insert(s.key, before + delta as f64 * s.scale);
        taken.push((s.counter, now));
    }
    // A labelled series the file has and this process never counted stays.
    for l in LABELED {
        let prefix = l.prefix();
        for (k, v) in previous.iter().filter(|(k, _)| k.starts_with(&prefix)) {
            out.entry(k.clone()).or_insert(*v);
        }
    }
    let batches: f64 = out
        .iter()
        .filter(|(k, _)| k.starts_with("ragspool_batches_total"))
        .map(|(_, v)| v)
        .sum();
    out.insert("ragspool_batch_duration_seconds_count".into(), batches);
    (out, taken)
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
/// Vectors fetched from the embeddings endpoint.
pub(crate) static EMBEDDINGS_FETCHED: Counter = Counter::new();
/// Vectors reused from rows a file replaced.
pub(crate) static EMBEDDINGS_REUSED: Counter = Counter::new();
/// Vectors the records brought.
pub(crate) static EMBEDDINGS_RECORD: Counter = Counter::new();
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
    /// Events waiting in outbox/ and in outbox/dead/.
    pub(crate) outbox: (usize, usize),
    /// Age in seconds of the oldest file waiting in incoming/ (0 when none waits).
    pub(crate) oldest_waiting_secs: Option<f64>,
    /// Days from today (UTC) that the partitions cover without a gap.
    pub(crate) partitions_ahead_days: Option<i64>,
    /// `rag:build_generation` as Redis holds it.
    pub(crate) build_generation: Option<i64>,
}

/// One metric family: HELP, TYPE and its samples (`labels` may be a suffix like `_sum`).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    // Writing to a String cannot fail, so the fmt::Result carries nothing.
    let _ = writeln!(
        out,
        "# HELP ragspool_{name} {help}\n# TYPE ragspool_{name} {kind}"
    );
    for (labels, value) in samples {
        let _ = writeln!(out, "ragspool_{name}{labels} {value}");
    }
}

/// Samples of one family from `values`, by label suffix (`""`, `{reason="x"}`, `_sum`).
fn pick(values: &Samples, name: &str, suffixes: &[String]) -> Vec<(String, f64)> {
    suffixes
        .iter()
        .map(|sfx| {
            let key = format!("ragspool_{name}{sfx}");
            (sfx.clone(), values.get(&key).copied().unwrap_or(0.0))
        })
        .collect()
}

/// Label suffixes for [`pick`] spelled in one place, so that every labelled
/// family quotes its values the same way the counter keys do.
fn labels(key: &str, values: &[&str]) -> Vec<String> {
    values
        .iter()
        .map(|v| format!("{{{key}=\"{v}\"}}"))
        .collect()
}

/// The metrics text: `counters` merged with the file's, gauges read now, and for a
/// gauge this writer cannot read, the value `previous` (the file) had.
pub(crate) fn render(
    spool: &Spool,
    gauges: &Gauges,
    counters: &Samples,
    previous: &Samples,
) -> String {
    let mut out = String::new();
    batch_families(&mut out, counters);
    spool_families(&mut out, spool);
    delivery_families(&mut out, counters, gauges.outbox);
    counter_family(
        &mut out,
        counters,
        "partitions_created_total",
        "Partitions created.",
        &[String::new()],
    );
    kept_gauge_families(&mut out, gauges, previous);
    counter_family(
        &mut out,
        counters,
        "embeddings_total",
        "Vectors by source: fetched from the endpoint, reused, or brought by the record.",
        &labels("source", &["fetched", "reused", "record"]),
    );
    lag_families(&mut out, counters);
    embed_families(&mut out, counters, previous);
    for (name, help) in [
        ("cache_hits_total", "Cache hits."),
        ("cache_misses_total", "Cache misses."),
        (
            "build_updates_unheard_total",
            "Build updates no subscriber received.",
        ),
    ] {
        counter_family(&mut out, counters, name, help, &[String::new()]);
    }
    out
}

/// A counter family whose samples come from the merged counters, so that the
/// file shows a series at 0 before anything counted it rather than leaving it out.
fn counter_family(out: &mut String, counters: &Samples, name: &str, help: &str, sfx: &[String]) {
    family(out, name, "counter", help, &pick(counters, name, sfx));
}

/// A gauge with a single unlabelled sample; most gauges are one number, and
/// spelling the empty label set once keeps the callers to name, help and value.
fn single_gauge(out: &mut String, name: &str, help: &str, value: f64) {
    family(out, name, "gauge", help, &[(String::new(), value)]);
}

/// Batches, rows, files and batch time come first because they describe the
/// same batches: the summary's `_count` is the sum of the batch counters.
fn batch_families(out: &mut String, counters: &Samples) {
    let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    counter_family(
        out,
        counters,
        "batches_total",
        "Batches by gate.done reason.",
        &labels("reason", &reasons),
    );
    counter_family(
        out,
        counters,
        "rows_total",
        "Rows inserted.",
        &[String::new()],
    );
    counter_family(
        out,
        counters,
        "files_total",
        "Files by outcome.",
        &labels("outcome", &["ok", "failed"]),
    );
    family(
        out,
        "batch_duration_seconds",
        "summary",
        "Batch wall time.",
        &pick(
            counters,
            "batch_duration_seconds",
            &["_sum".into(), "_count".into()],
        ),
    );
}

/// Spool depth is local and cheap to read, so it is never carried over from the
/// file: when the spool cannot be listed its families are left out, not guessed.
fn spool_families(out: &mut String, spool: &Spool) {
    let Ok(depth) = spool.depth() else {
        return;
    };
    let per_dir = |value: fn(&Depth) -> u64| -> Vec<(String, f64)> {
        depth
            .iter()
            .map(|(d, x)| (format!("{{dir=\"{d}\"}}"), value(x) as f64))
            .collect()
    };
    family(
        out,
        "spool_files",
        "gauge",
        "Files per spool directory.",
        &per_dir(|x| x.files),
    );
    family(
        out,
        "spool_bytes",
        "gauge",
        "Bytes per spool directory.",
        &per_dir(|x| x.bytes),
    );
}

/// Delivery attempts and the outbox they drain are one concern, the webhook's
/// backlog, so their families are written together.
fn delivery_families(out: &mut String, counters: &Samples, (waiting, dead): (usize, usize)) {
    counter_family(
        out,
        counters,
        "gate_deliveries_total",
        "Webhook delivery attempts by outcome.",
        &labels("outcome", &["delivered", "retried", "dead"]),
    );
    single_gauge(
        out,
        "outbox_depth",
        "Events waiting in outbox/.",
        waiting as f64,
    );
    single_gauge(out, "outbox_dead", "Events in outbox/dead/.", dead as f64);
}

/// A gauge this writer could not read (the database or Redis down, or the spool
/// unreadable) must not blank what another writer read: each keeps the file's
/// last value, and is left out only when neither has one.
fn kept_gauge_families(out: &mut String, gauges: &Gauges, previous: &Samples) {
    for (name, help, now) in [
        (
            "last_maintenance_success_timestamp_seconds",
            "Unix time of the last good maintenance run.",
            gauges.last_maintenance_success.map(|t| t as f64),
        ),
        (
            "oldest_waiting_seconds",
            "Age of the oldest file waiting in incoming/.",
            gauges.oldest_waiting_secs,
        ),
        (
            "partitions_ahead_days",
            "Days from today (UTC) the partitions cover without a gap.",
            gauges.partitions_ahead_days.map(|d| d as f64),
        ),
        (
            "build_generation",
            "rag:build_generation in Redis.",
            gauges.build_generation.map(|g| g as f64),
        ),
        (
            "partitions_unindexed",
            "Partitions still waiting for their HNSW index.",
            gauges.partitions_unindexed.map(|n| n as f64),
        ),
    ] {
        let kept = now.or_else(|| previous.get(&format!("ragspool_{name}")).copied());
        if let Some(value) = kept {
            single_gauge(out, name, help, value);
        }
    }
}

/// What embedding costs and how fast it goes (SPEC §13): tokens by model, requests
/// by answer, and, from the process that embeds (else as the file had them), the
/// requests in flight and the concurrency in effect.
fn embed_families(out: &mut String, counters: &Samples, previous: &Samples) {
    for (l, help) in [
        (
            &EMBED_TOKENS,
            "Tokens sent to the embeddings endpoint, by model.",
        ),
        (
            &EMBED_REQUESTS,
            "Embeddings requests by answer: the HTTP status, or error for none.",
        ),
    ] {
        let prefix = l.prefix();
        let mut samples: Vec<(String, f64)> = counters
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k[format!("ragspool_{}", l.name).len()..].to_string(), *v))
            .collect();
        samples.sort_by(|a, b| a.0.cmp(&b.0));
        family(out, l.name, "counter", help, &samples);
    }
    let pace = *EMBED_PACE.lock().unwrap_or_else(|p| p.into_inner());
    for (name, help, now) in [
        (
            "embed_in_flight",
            "Embeddings requests in flight.",
            pace.map(|p| p.0 as f64),
        ),
        (
            "embed_concurrency",
            "The embeddings concurrency in effect (adapts to 429 and 503).",
            pace.map(|p| p.1 as f64),
        ),
    ] {
        let kept = now.or_else(|| previous.get(&format!("ragspool_{name}")).copied());
        if let Some(value) = kept {
            single_gauge(out, name, help, value);
        }
    }
}

/// The lag histograms' suffixes are built from [`LAG_BUCKETS`] as
/// [`Histogram::series`] builds its keys, so the file lists exactly the buckets
/// that are counted, `+Inf` last as Prometheus requires.
fn lag_families(out: &mut String, counters: &Samples) {
    let mut sfx: Vec<String> = LAG_BUCKETS
        .iter()
        .map(|le| format!("_bucket{{le=\"{le}\"}}"))
        .chain(["_bucket{le=\"+Inf\"}".to_string()])
        .collect();
    sfx.extend(["_sum".to_string(), "_count".to_string()]);
    for (name, help) in [
        ("ingest_lag_seconds", "File mtime to its rows committed."),
        (
            "searchable_lag_seconds",
            "File mtime to its batch's gate.done delivered.",
        ),
    ] {
        family(out, name, "histogram", help, &pick(counters, name, &sfx));
    }
}

/// Merges this process's counts into the file at `path` and replaces it atomically,
/// under an flock on `<path>.lock` so that concurrent writers lose no increment.
pub(crate) fn write(path: &Path, spool: &Spool, gauges: &Gauges) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("ragspool.prom");
    let lock_path = dir.join(format!("{name}.lock"));
    let _lock = crate::fs::LockFile::acquire(&lock_path, 0o644)?;
    let previous = read_samples(path);
    let (counters, taken) = merged(&previous);
    let text = render(spool, gauges, &counters, &previous);
    crate::fs::write_atomic(dir, name, text.as_bytes(), 0o644)?;
    for (counter, value) in taken {
        counter.flushed.store(value, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family the file can hold, from a render with every gauge present.
    fn families() -> std::collections::BTreeSet<String> {
        let dir = std::env::temp_dir();
        let gauges = Gauges {
            last_maintenance_success: Some(1),
            partitions_unindexed: Some(0),
            outbox: (0, 0),
            oldest_waiting_secs: Some(0.0),
            partitions_ahead_days: Some(4),
            build_generation: Some(1),
        };
        let text = render(
            &Spool::new(dir),
            &gauges,
            &merged(&Samples::new()).0,
            &Samples::new(),
        );
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn lag_buckets_are_spelled_as_prometheus_expects() {
        let keys: Vec<String> = INGEST_LAG
            .series("ingest_lag_seconds")
            .into_iter()
            .map(|s| s.key)
            .collect();
        let le: Vec<&str> = keys
            .iter()
            .filter_map(|k| k.split("le=\"").nth(1))
            .map(|v| v.trim_end_matches("\"}"))
            .collect();
        assert_eq!(
            le,
            [
                "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "300", "+Inf"
            ]
        );
    }

    #[test]
    fn the_dashboard_queries_only_metrics_the_program_writes_and_imports() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/packaging/grafana/ragspool-dashboard.json"
        ))
        .unwrap_or_default();
        let dash: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        for field in [
            "uid",
            "title",
            "schemaVersion",
            "panels",
            "time",
            "templating",
        ] {
            assert!(!dash[field].is_null(), "the dashboard lacks `{field}`");
        }
        let known = families();
        let panels = dash["panels"].as_array().cloned().unwrap_or_default();
        assert!(panels.len() >= 12);
        for panel in &panels {
            for field in ["id", "type", "title", "gridPos", "targets"] {
                assert!(!panel[field].is_null(), "a panel lacks `{field}`: {panel}");
            }
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or("");
                for (at, _) in expr.match_indices("ragspool_") {
                    let name: String = expr[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(&name);
                    assert!(
                        known.contains(family),
                        "{name} in `{expr}` is not written by ragspool"
                    );
                }
            }
        }
    }
}
