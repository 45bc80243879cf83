//! One updating progress line on stderr during long work (`process` over a
//! backlog, `gen`, `import`), drawn by indicatif: only on a terminal, never on a pipe,
//! under systemd (JOURNAL_STREAM) or with `-q`, so logs and pipes stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// `-q` was given: no progress line.
pub(crate) fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether a progress line may be drawn: stderr is a terminal, no `-q`, and not
/// under systemd (whose journal would take every redraw as a log line).
fn wanted() -> bool {
    std::io::stderr().is_terminal()
        && !QUIET.load(Ordering::Relaxed)
        && std::env::var_os("JOURNAL_STREAM").is_none()
}

/// Counters behind the ingest line.
#[derive(Default)]
struct Counts {
    files: AtomicU64,
    rows: AtomicU64,
    failed: AtomicU64,
}

/// A progress line, or nothing when it is not wanted. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    counts: Arc<Counts>,
    total_files: Arc<AtomicU64>,
    started: std::time::Instant,
}

impl Progress {
    fn with(bar: Option<ProgressBar>, total_files: u64) -> Progress {
        Progress {
            bar,
            counts: Arc::default(),
            total_files: Arc::new(AtomicU64::new(total_files)),
            started: std::time::Instant::now(),
        }
    }

    /// A counter of `total` steps of `label` (`gen`).
    pub(crate) fn new(label: &str, total: u64) -> Progress {
        let bar = wanted().then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(10));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix}: {pos}/{len} {wide_bar} {per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        Progress::with(bar, total)
    }

    /// The ingest line of `process`: files done of total, rows, rows/s, bytes/s,
    /// ETA (by bytes) and failures so far.
    pub(crate) fn ingest(total_files: u64, total_bytes: u64) -> Progress {
        let bar = wanted().then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total_bytes),
                ProgressDrawTarget::stderr_with_hz(10),
            );
            bar.set_style(
                ProgressStyle::with_template("{msg}  {binary_bytes_per_sec}  ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let p = Progress::with(bar, total_files);
        p.redraw();
        p
    }

    /// A byte counter of `label` (`import`): bytes read of `total` when known,
    /// and a message the caller keeps current.
    pub(crate) fn bytes(label: &str, total: Option<u64>) -> Progress {
        let bar = wanted().then(|| {
            let bar =
                ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(10));
            let template = match total {
                Some(_) => "{prefix}: {msg}  {binary_bytes}/{binary_total_bytes}  {binary_bytes_per_sec}  ETA {eta}",
                None => "{prefix}: {msg}  {binary_bytes}  {binary_bytes_per_sec}",
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        Progress::with(bar, 0)
    }

    /// Sets the text of the line (`import`: what has been read and written).
    pub(crate) fn message(&self, text: impl FnOnce() -> String) {
        if let Some(bar) = &self.bar {
            bar.set_message(text());
        }
    }

    /// Moves a byte counter to `bytes` (`import`).
    pub(crate) fn set_position(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
        }
    }

    /// Runs `f` with the line cleared, for lines of its own on stderr.
    pub(crate) fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Records `n` more steps (`gen`).
    pub(crate) fn add(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// One file ended: its bytes, the rows it added, whether it failed.
    pub(crate) fn file_done(&self, bytes: u64, rows: u64, failed: bool) {
        self.counts.files.fetch_add(1, Ordering::Relaxed);
        self.counts.rows.fetch_add(rows, Ordering::Relaxed);
        if failed {
            self.counts.failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
        self.redraw();
    }

    fn redraw(&self) {
        let Some(bar) = &self.bar else { return };
        let rows = self.counts.rows.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let files = self.counts.files.load(Ordering::Relaxed);
        bar.set_message(format!(
            "ingest: {files}/{} files  {rows} rows  {:.0} rows/s  {} failed",
            self.total_files.load(Ordering::Relaxed).max(files),
            rows as f64 / secs,
            self.counts.failed.load(Ordering::Relaxed),
        ));
    }

    /// Clears the line; the command's summary follows on stdout.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // The last clone clears the line, whatever ended the work.
        if Arc::strong_count(&self.counts) == 1 {
            self.finish();
        }
    }
}
