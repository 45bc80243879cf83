//! A batch's lifecycle, the one path `process` and `watch` share: claim from
//! incoming/, tell the gate, ingest the files on WORKERS connections, archive or
//! fail each file only after its transaction committed, alert once on the first
//! failure, record failures in the failure log, and tell the gate the outcome.

use crate::batch::{BatchReport, BatchTag, ErrorSummary, Reason};
use crate::config::Config;
use crate::error::{Class, Error, Result};
use crate::failure_log::{Entry, FailureLog};
use crate::handoff::{Handoff, Side};
use crate::ingest::manifest::Settled;
use crate::ingest::{BadFile, FileOutcome, Ingest, group};
use crate::notify::alert::AlertKind;
use crate::notify::gate::Notifier;
use crate::spool::{BatchLock, Claimed, Owner, Spool, Waiting};
use crate::storage::DocMode;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Default)]
struct Totals {
    files_ok: usize,
    files_failed: usize,
    rows: u64,
    deleted: u64,
    mtimes: Vec<f64>,
    changed_docs: std::collections::BTreeSet<String>,
    reason: Option<Reason>,
    healed: bool,
    error: Option<ErrorSummary>,
}

impl From<Settled> for Totals {
    /// What the files of a batch that settled before a stop add up to.
    fn from(s: Settled) -> Totals {
        let mut t = Totals {
            files_ok: s.files_ok,
            files_failed: s.files_failed,
            rows: s.rows,
            deleted: s.deleted,
            changed_docs: s.changed_docs.into_iter().collect(),
            healed: s.healed,
            ..Totals::default()
        };
        if s.files_ok + s.files_failed > 0 {
            let reason = s
                .failed_reasons
                .iter()
                .filter_map(|r| Reason::parse(r).ok())
                .chain(s.healed.then_some(Reason::HealedPartition))
                .fold(Reason::Success, Reason::combine);
            t.reason(reason);
        }
        t
    }
}

impl Totals {
    /// The report of a batch of `files` files and `bytes` bytes that came to this.
    fn report(self, tag: &BatchTag, files: usize, bytes: u64, duration_ms: u64) -> BatchReport {
        BatchReport {
            files_ok: self.files_ok,
            files_failed: self.files_failed,
            rows: self.rows,
            deleted: self.deleted,
            mtimes: self.mtimes,
            changed_docs: self.changed_docs.into_iter().collect(),
            reason: self.reason.unwrap_or(Reason::Success),
            healed: self.healed,
            duration_ms,
            error: self.error,
            ..BatchReport::new(tag, files, bytes)
        }
    }

    fn reason(&mut self, r: Reason) {
        self.reason = Some(self.reason.map_or(r, |old| old.combine(r)));
    }
}

/// One batch in flight: its tag, queue, totals and whether it has alerted.
struct Flight<'a> {
    tag: &'a BatchTag,
    queue: Mutex<VecDeque<Claimed>>,
    /// Files per worker when the batch started.
    share: usize,
    totals: Mutex<Totals>,
    alerted: AtomicBool,
}

/// Where a file of a group stands: its try ended (committed with the group, or
/// ended before a transaction), or ready for its own transaction.
enum Step {
    Ended(Result<(FileOutcome, u32)>),
    Ready(crate::ingest::Ready),
}

/// A file prepared by the prefetch stage, on its way to a worker.
type Ready = (Claimed, Result<crate::ingest::Prepared>);
/// The prefetch stage's hand-off to the workers.
type Prepared<'a> = Handoff<Ready>;

impl Flight<'_> {
    /// The next file in claim order, when one is left.
    fn next_file(&self) -> Option<Claimed> {
        self.queue().pop_front()
    }

    /// The next files in claim order for a worker to ingest together: its share
    /// of the batch, up to group::MAX_FILES files and group::MAX_BYTES of input
    /// (at least one file, when one is left).
    fn next_files(&self) -> Vec<Claimed> {
        let mut queue = self.queue();
        let mut files = Vec::new();
        let mut bytes = 0;
        while files.len() < self.share.min(group::MAX_FILES) {
            let Some(file) = queue.front() else { break };
            bytes += std::fs::symlink_metadata(&file.path).map_or(0, |m| m.len());
            if !files.is_empty() && bytes > group::MAX_BYTES {
                break;
            }
            files.extend(queue.pop_front());
        }
        files
    }

    /// Files taken for a group that another worker may take (in claim order).
    fn give_back(&self, files: Vec<Claimed>) {
        let mut queue = self.queue();
        for file in files.into_iter().rev() {
            queue.push_front(file);
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Claimed>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn totals(&self) -> std::sync::MutexGuard<'_, Totals> {
        self.totals.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_error(&self, e: &Error) {
        let mut t = self.totals();
        t.reason(Reason::OtherError);
        if t.error
            .as_ref()
            .is_none_or(|old| old.class != Class::TempFail)
        {
            t.error = Some(ErrorSummary::of(e));
        }
    }
}

/// Refreshes a running batch's `.owner` from its own thread, so that a long COPY
/// or a slow endpoint never makes the batch look orphaned to another host.
struct OwnerBeat {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OwnerBeat {
    fn start(spool: &Spool, tag: &BatchTag, every: std::time::Duration) -> OwnerBeat {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (spool, tag) = (spool.clone(), tag.clone());
        let every = every.max(std::time::Duration::from_millis(100));
        let thread = std::thread::Builder::new()
            .name("owner-beat".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(every)
                {
                    spool.touch_owner(&tag);
                }
            })
            .ok();
        OwnerBeat {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for OwnerBeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A file whose transaction ended, on its way to archive/ or failed/.
struct EndedFile<'f, 'a> {
    flight: &'f Flight<'a>,
    file: &'f Claimed,
    /// Which try of the file this was.
    attempt: u32,
}

/// Runs batches over one spool.
pub(crate) struct Runner {
    /// Per-file ingest.
    pub(crate) ingest: Ingest,
    /// The spool.
    pub(crate) spool: Spool,
    /// Gate events and alerts.
    pub(crate) notifier: Notifier,
    failure_log: Arc<FailureLog>,
    cache: Option<Mutex<crate::cache::Cache>>,
    workers: usize,
    max_files: usize,
    max_bytes: u64,
    undelivered: AtomicUsize,
    invalidations: crate::cache::invalidation::Invalidations,
    progress: Option<crate::progress::Progress>,
    owner: Owner,
    /// How often a running batch refreshes its `.owner` (ORPHAN_RECOVER_SECS / 6).
    heartbeat: std::time::Duration,
    /// The workers' connections between batches.
    pub(crate) idle: crate::db::Idle,
}

impl Runner {
    /// From settings.
    pub(crate) fn new(
        config: &Config,
        ingest: Ingest,
        notifier: Notifier,
        failure_log: Arc<FailureLog>,
    ) -> Runner {
        let ingest_host = ingest.host.clone();
        Runner {
            ingest,
            spool: Spool::new(&config.spool_dir),
            notifier,
            failure_log,
            cache: config
                .cache()
                .map(|c| Mutex::new(crate::cache::Cache::new(c))),
            workers: config.workers.max(1),
            max_files: config.batch_max_files.max(1),
            max_bytes: config.batch_max_bytes.max(1),
            undelivered: AtomicUsize::new(0),
            invalidations: crate::cache::invalidation::Invalidations::new(
                &config.spool_dir,
                std::time::Duration::from_millis(config.cache_redelete_ms),
            ),
            progress: None,
            owner: Owner {
                host: ingest_host,
                stale_after: std::time::Duration::from_secs(config.orphan_recover_secs) / 2,
            },
            heartbeat: std::time::Duration::from_secs(config.orphan_recover_secs) / 6,
            idle: crate::db::Idle::default(),
        }
    }

    /// Shows each settled file on `progress` (`process` on a terminal).
    pub(crate) fn set_progress(&mut self, progress: crate::progress::Progress) {
        self.progress = Some(progress);
    }

    /// Delivers what waits in the outbox; remembers how many events stayed.
    pub(crate) fn flush(&self) {
        match self.notifier.flush() {
            Ok(f) => self.undelivered.store(f.pending, Ordering::SeqCst),
            Err(e) => log::error!("outbox: {e}"),
        }
    }

    /// Events the last flush could not deliver.
    pub(crate) fn undelivered(&self) -> usize {
        self.undelivered.load(Ordering::SeqCst)
    }

    /// Runs again every batch a crash left in processing/.
    pub(crate) fn recover(&self) -> Result<Vec<BatchReport>> {
        let mut reports = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // One at a time, so that a batch taken over is owned (and its `.owner`
        // refreshed) only while it runs; each at most once per call.
        while let Some((tag, files, lock)) = self.spool.in_flight(&self.owner, &seen, 1)?.pop() {
            seen.insert(tag.clone());
            if files.is_empty() {
                // Every file settled; a crash may have come before gate.done.
                let settled = if self.spool.done_queued(&tag) {
                    None
                } else {
                    self.settled(&tag)?
                };
                match settled {
                    Some(report) => reports.push(self.finish(report, lock)),
                    None => self.spool.forget(&tag),
                }
                continue;
            }
            log::info!(
                "recovering batch {tag}: {} file(s) left in processing/",
                files.len()
            );
            // The files that settled before the stop count in the batch's gate.done
            // as much as those that run now.
            let here: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
            let prior = self.with_client(|c| {
                crate::ingest::manifest::settled(c, &self.ingest.names, &tag, &here)
            })?;
            reports.push(self.run_rest(&tag, files, lock, prior));
        }
        Ok(reports)
    }

    /// Picks the next batch from what waits: oldest first, up to BATCH_MAX_FILES
    /// files and BATCH_MAX_BYTES bytes (one file at least).
    pub(crate) fn select(&self, waiting: &[Waiting]) -> Vec<Waiting> {
        let mut bytes = 0u64;
        let mut chosen = Vec::new();
        for w in waiting.iter().take(self.max_files) {
            if !chosen.is_empty() && bytes + w.bytes > self.max_bytes {
                break;
            }
            bytes += w.bytes;
            chosen.push(w.clone());
        }
        chosen
    }

    /// Claims and runs the next batch; `None` when nothing waits.
    pub(crate) fn next(&self) -> Result<Option<BatchReport>> {
        loop {
            let waiting = self.spool.waiting()?;
            if waiting.is_empty() {
                return Ok(None);
            }
            // Another process may have claimed everything we listed; look again.
            if let Some(report) = self.claim_and_run(&self.select(&waiting))? {
                return Ok(Some(report));
            }
        }
    }

    /// Claims `chosen` as a new batch and runs it; `None` when another process
    /// claimed all of them first.
    pub(crate) fn claim_and_run(&self, chosen: &[Waiting]) -> Result<Option<BatchReport>> {
        let tag = BatchTag::new()?;
        let (claimed, lock) = self.spool.claim(&tag, chosen, &self.owner)?;
        if claimed.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.run(&tag, claimed, lock)))
    }

    /// Runs one batch, holding its lock: gate.open, ingest, gate.done.
    pub(crate) fn run(&self, tag: &BatchTag, files: Vec<Claimed>, lock: BatchLock) -> BatchReport {
        self.run_rest(tag, files, lock, Settled::default())
    }

    /// Runs the files of a batch of which `prior` settled before a stop.
    fn run_rest(
        &self,
        tag: &BatchTag,
        files: Vec<Claimed>,
        lock: BatchLock,
        prior: Settled,
    ) -> BatchReport {
        let _busy = crate::heartbeat::busy();
        let _alive = OwnerBeat::start(&self.spool, tag, self.heartbeat);
        let started = Instant::now();
        let count = files.len() + prior.files();
        let bytes: u64 = prior.bytes
            + files
                .iter()
                .filter_map(|f| std::fs::symlink_metadata(&f.path).ok())
                .map(|m| m.len())
                .sum::<u64>();
        if let Err(e) = self.notifier.gate_open(tag, count, bytes) {
            // A batch never moves past an event it could not queue: its files stay
            // in processing/ for a later run, which queues gate.open first.
            log::error!("batch {tag}: cannot queue gate.open: {e}; the batch waits");
            let e = Error::temp(format!("cannot queue gate.open: {e}"))
                .with_note("the files stay in processing/; free the outbox's disk and run again");
            return BatchReport {
                reason: Reason::OtherError,
                error: Some(ErrorSummary::of(&e)),
                ..BatchReport::new(tag, count, bytes)
            };
        }
        self.flush();
        let flight = Flight {
            tag,
            // A failure before the stop already alerted.
            alerted: AtomicBool::new(prior.files_failed > 0 || prior.healed),
            totals: Mutex::new(Totals::from(prior)),
            // Each worker's share of the batch, taken at once by files that go in
            // together, so that the workers end together.
            share: files.len().div_ceil(self.workers.min(files.len()).max(1)),
            queue: Mutex::new(files.into_iter().collect()),
        };
        self.work_all(&flight, count);
        let t = flight
            .totals
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        let report = t.report(tag, count, bytes, started.elapsed().as_millis() as u64);
        log::info!(
            "batch {}: files={} bytes={} ok={} failed={} rows={} deleted={} reason={} healed={} duration_ms={}",
            report.tag,
            report.files,
            report.bytes,
            report.files_ok,
            report.files_failed,
            report.rows,
            report.deleted,
            report.reason,
            report.healed,
            report.duration_ms
        );
        crate::metrics::batch(
            report.reason,
            report.rows,
            report.files_ok,
            report.files_failed,
            report.duration_ms,
        );
        self.finish(report, lock)
    }

    /// A batch's end: its cache invalidations and gate.done queued, delivered with
    /// what else waits, then the invalidations applied and the build update
    /// published.
    fn finish(&self, report: BatchReport, lock: BatchLock) -> BatchReport {
        crate::failpoint::hit("batch-settled");
        let report = self.close(report, lock);
        crate::failpoint::hit("batch-closed");
        self.flush();
        self.settle_invalidations(false);
        self.publish_build_update(&report);
        report
    }

    /// Queues the batch's cache invalidations and its gate.done, then lets its
    /// directory go. Both are queued while the directory stays: a crash before it
    /// goes finds the batch in processing/, and recovery queues them again (the
    /// gate.done with the same webhook-id). What cannot be queued keeps the
    /// directory for the next run.
    fn close(&self, mut report: BatchReport, lock: BatchLock) -> BatchReport {
        let tag = report.tag.clone();
        let queued = self
            .queue_invalidations(&report)
            .map_err(|e| ("its cache invalidations", e))
            .and_then(|()| {
                self.notifier
                    .gate_done(&report)
                    .map_err(|e| ("gate.done", e))
            });
        match queued {
            Ok(()) => {
                crate::failpoint::hit("gate-done-queued");
                if report.error.is_none() {
                    if let Err(e) = self.spool.mark_done_queued(&tag) {
                        log::warn!("batch {tag}: {e}");
                    }
                    self.spool.forget(&tag);
                }
            }
            Err((what, e)) => {
                log::error!("batch {tag}: cannot queue {what}: {e}; the batch waits");
                let e = Error::temp(format!("cannot queue {what}: {e}")).with_note(
                    "free the outbox's disk and run again: the batch's gate.done is queued then",
                );
                report.error.get_or_insert(ErrorSummary::of(&e));
            }
        }
        drop(lock);
        report
    }

    /// The report, from the manifest, of batch `tag` whose files all settled before
    /// a crash and whose gate.done was never queued; `None` when no file of it
    /// reached the manifest (a claim that moved nothing).
    fn settled(&self, tag: &BatchTag) -> Result<Option<BatchReport>> {
        let s = self
            .with_client(|c| crate::ingest::manifest::settled(c, &self.ingest.names, tag, &[]))?;
        if s.files() == 0 {
            return Ok(None);
        }
        log::info!("batch {tag}: settled before a stop; queueing its gate.done");
        let (files, bytes) = (s.files(), s.bytes);
        Ok(Some(Totals::from(s).report(tag, files, bytes, 0)))
    }

    /// Runs `op` on a fresh connection (recovery's few reads).
    fn with_client<T>(&self, op: impl FnOnce(&mut postgres::Client) -> Result<T>) -> Result<T> {
        let mut client = self.connect()?;
        op(&mut client)
    }

    /// A connection, within the retry budget; on a Citus coordinator, once it
    /// reaches its workers too (a worker that restarts is waited for).
    fn connect(&self) -> Result<postgres::Client> {
        let mut client = self.ingest.db.connect()?;
        if self.ingest.citus {
            let budget = self.ingest.db.retry_budget();
            crate::distribution::wait_for_workers(&mut client, budget)?;
        }
        Ok(client)
    }

    /// Queues (durably, in outbox/cache/) the invalidation of the cached answers
    /// of every document the batch replaced or deleted.
    fn queue_invalidations(&self, r: &BatchReport) -> Result<()> {
        if self.cache.is_none() {
            return Ok(());
        }
        self.invalidations
            .queue(r.tag.as_str(), r.changed_docs.clone())
    }

    /// How long until a queued second invalidation pass is due, when one waits
    /// and Redis is configured.
    pub(crate) fn invalidations_due(&self) -> Option<std::time::Duration> {
        self.cache.as_ref()?;
        self.invalidations.next_due()
    }

    /// Runs the cache invalidations that are due (a later turn of `watch`); with
    /// `wait`, first waits for the queued second passes (`process` before it exits).
    pub(crate) fn settle_invalidations(&self, wait: bool) {
        let Some(cache) = &self.cache else { return };
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if wait {
            self.invalidations.drain(&mut cache);
        } else {
            self.invalidations.apply_due(&mut cache);
        }
    }

    /// Tells query services about the new build (SPEC §8). A Redis outage never
    /// fails or blocks ingestion: it is logged, and the publish tried once more.
    fn publish_build_update(&self, r: &BatchReport) {
        let Some(cache) = &self.cache else { return };
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        let fields = serde_json::json!({
            "batch_tag": r.tag.as_str(),
            "reason": r.reason.as_str(),
            "rows": r.rows,
            "healed": r.healed,
            "host": self.ingest.host,
            "ts": crate::clock::now_rfc3339(),
        });
        let result = cache.publish_build_update(&fields).or_else(|e| {
            log::warn!(
                "batch {}: build update not published ({e}); trying once more",
                r.tag
            );
            cache.publish_build_update(&fields)
        });
        match result {
            Ok(update) if update.receivers == 0 => crate::metrics::PUBLISH_UNHEARD.add(1),
            Ok(_) => {}
            Err(e) => log::warn!("batch {}: build update not published: {e}", r.tag),
        }
    }

    /// Runs the batch's files on WORKERS threads. With an embeddings endpoint, a
    /// prefetch stage runs ahead of them: threads that read the next files and
    /// fetch their vectors (on one shared connection, holding no transaction)
    /// while the workers COPY the files already prepared.
    fn work_all(&self, flight: &Flight<'_>, count: usize) {
        let workers = self.workers.min(count).max(1);
        // As many files fetching at once as requests may be in flight (a file of
        // one request still fills its place), up to 8: a large file fills
        // EMBED_CONCURRENCY alone, eight of a few requests each fill 64, and each
        // of these threads holds a window of PREFETCH_WINDOW bytes.
        let feeders = self
            .ingest
            .embedder
            .as_ref()
            .map_or(0, |e| e.concurrency().clamp(1, 8).min(count));
        if feeders == 0 {
            std::thread::scope(|s| {
                for _ in 0..workers {
                    s.spawn(|| self.work(flight, None));
                }
            });
            return;
        }
        let shared = match self.ingest.db.connect() {
            Ok(c) => crate::db::Shared::new(c),
            Err(e) => {
                log::error!("batch {}: {e}", flight.tag);
                return flight.record_error(&e);
            }
        };
        let handoff = Handoff::new(workers);
        std::thread::scope(|s| {
            for side in (0..feeders).map(|_| handoff.producer()) {
                let (shared, handoff) = (&shared, &handoff);
                s.spawn(move || self.feed(flight, shared, handoff, side));
            }
            for side in (0..workers).map(|_| handoff.consumer()) {
                let handoff = &handoff;
                s.spawn(move || self.work(flight, Some((handoff, side))));
            }
        });
    }

    /// One prefetch thread: files from the shared queue, prepared (their vectors
    /// fetched) and handed to the workers, until the queue is empty or every
    /// worker has stopped (a file not handed over stays in processing/).
    fn feed(
        &self,
        flight: &Flight<'_>,
        shared: &crate::db::Shared,
        to: &Prepared<'_>,
        _side: Side<'_, Ready>,
    ) {
        while let Some(file) = flight.next_file() {
            let prepared = self.ingest.prepare(shared, flight.tag, &file);
            if to.push((file, prepared)).is_err() {
                return;
            }
        }
    }

    /// One worker: its own connection, files until none is left, either from the
    /// shared queue or, prepared, from the prefetch stage.
    fn work(&self, flight: &Flight<'_>, from: Option<(&Prepared<'_>, Side<'_, Ready>)>) {
        let tag = flight.tag;
        let mut client = match self.idle.take(&self.ingest.db) {
            Ok(c) => c,
            Err(e) => {
                log::error!("batch {tag}: {e}");
                return flight.record_error(&e);
            }
        };
        // Files that only add rows go in several to a transaction, until a group
        // must go in one file at a time: then this worker's rest of the batch does.
        let mut grouping = from.is_none() && self.ingest.names.storage.doc_mode == DocMode::Append;
        loop {
            let next = match &from {
                None if grouping => {
                    let mut files = flight.next_files();
                    if files.len() > 1 {
                        match self.work_group(flight, &mut client, files) {
                            Some(together) => grouping = together,
                            None => return,
                        }
                        continue;
                    }
                    files.pop().map(|f| (f, None))
                }
                None => flight.next_file().map(|f| (f, None)),
                Some((handoff, _)) => handoff.pop().map(|(f, p)| (f, Some(p))),
            };
            let Some((file, prepared)) = next else {
                // What this batch added to the failure log is anchored in the
                // database before its workers leave (see FailureLog::anchor).
                let anchored =
                    self.failure_log
                        .anchor(&mut client, &self.ingest.names, &self.ingest.host);
                if let Err(e) = anchored {
                    log::warn!("batch {tag}: {e}");
                }
                return self.idle.keep(client);
            };
            // Only a failure of this worker's own connection is worth a second try
            // here; the prefetch stage already spent RETRY_MAX_SECS on the endpoint.
            let (first, own) = match prepared {
                None => (self.ingest.file(&mut client, tag, &file), true),
                Some(Err(e)) => (Err(e), false),
                Some(Ok(p)) => (self.ingest.complete(&mut client, tag, &file, Ok(p)), true),
            };
            if !self.finish_file(flight, &mut client, &file, first, own) {
                return;
            }
        }
    }

    /// Settles a file after its try `first`; `false` when the worker must stop (an
    /// outage: its files stay in processing/). With `own`, a transient failure of
    /// the worker's connection gets a second try on a new one.
    fn finish_file(
        &self,
        flight: &Flight<'_>,
        client: &mut postgres::Client,
        file: &Claimed,
        first: Result<(FileOutcome, u32)>,
        own: bool,
    ) -> bool {
        let tag = flight.tag;
        let result = first.or_else(|e| {
            if e.class() != Class::TempFail || !own {
                return Err(e);
            }
            // The connection is suspect: reconnect (within the retry budget) and try
            // this file again; if that fails too, it stays in processing/.
            log::warn!("batch {tag}: {}: {e}; reconnecting", file.name);
            self.try_again(client, tag, file)
        });
        let settled =
            result.and_then(|(outcome, attempt)| self.settle(flight, file, &outcome, attempt));
        match settled {
            Err(e) => {
                log::error!("batch {tag}: {}: {e}", file.name);
                flight.record_error(&e);
                e.class() != Class::TempFail
            }
            Ok(()) => true,
        }
    }

    /// Ingests `files` (in claim order) in one transaction when they can go in
    /// together, else one at a time. `Some(false)` when they had to go in one at a
    /// time, `None` when the worker must stop (the files it has not settled go
    /// back to the queue, for the other workers).
    fn work_group(
        &self,
        flight: &Flight<'_>,
        client: &mut postgres::Client,
        files: Vec<Claimed>,
    ) -> Option<bool> {
        let tag = flight.tag;
        let mut ready = Vec::new();
        let mut steps = VecDeque::new();
        let mut failed = None;
        let mut files = files.into_iter();
        for file in files.by_ref() {
            match self.ingest.prepare_own(client, tag, &file) {
                Ok(crate::ingest::Prepared::Ready(r)) => ready.push((file, r)),
                Ok(crate::ingest::Prepared::Ended(ended)) => {
                    steps.push_back((file, Step::Ended(Ok(ended))))
                }
                Err(e) => {
                    failed = Some((file, Step::Ended(Err(e))));
                    break;
                }
            }
        }
        // After a file's outage the files not yet read are another worker's too.
        flight.give_back(files.collect());
        let done = match ready.len() {
            0 | 1 => None,
            n => match self.ingest.group(client, tag, &ready) {
                Ok(done) => Some(done),
                Err(why) => {
                    log::info!("batch {tag}: {n} files go in one at a time: {why}");
                    None
                }
            },
        };
        let together = done.is_some() || ready.len() < 2;
        match done {
            Some(done) => {
                let ended = done.into_iter().map(|d| Step::Ended(Ok(d)));
                steps.extend(ready.into_iter().map(|(f, _)| f).zip(ended));
            }
            None => steps.extend(ready.into_iter().map(|(f, r)| (f, Step::Ready(r)))),
        }
        steps.extend(failed);
        while let Some((file, step)) = steps.pop_front() {
            let first = match step {
                Step::Ended(first) => first,
                Step::Ready(r) => {
                    let r = Ok(crate::ingest::Prepared::Ready(r));
                    self.ingest.complete(client, tag, &file, r)
                }
            };
            if !self.finish_file(flight, client, &file, first, true) {
                flight.give_back(steps.into_iter().map(|(f, _)| f).collect());
                return None;
            }
        }
        Some(together)
    }

    /// Tries a file again on a new connection after a transient failure: once; on a
    /// Citus coordinator, until it goes in or RETRY_MAX_SECS is spent, since a worker
    /// that restarted fails statements that reach it for a while after it answers.
    fn try_again(
        &self,
        client: &mut postgres::Client,
        tag: &BatchTag,
        file: &Claimed,
    ) -> Result<(FileOutcome, u32)> {
        let mut backoff = crate::backoff::Backoff::new(self.ingest.db.retry_budget());
        loop {
            *client = self.connect()?;
            match self.ingest.file(client, tag, file) {
                Err(e)
                    if self.ingest.citus && e.class() == Class::TempFail && backoff.wait(None) =>
                {
                    log::warn!("batch {tag}: {}: {e}; trying again", file.name);
                }
                other => return other,
            }
        }
    }

    /// Moves a file whose transaction ended to archive/ or failed/, counts it, and
    /// records failures and self-heals.
    fn settle(
        &self,
        flight: &Flight<'_>,
        file: &Claimed,
        outcome: &FileOutcome,
        attempt: u32,
    ) -> Result<()> {
        crate::heartbeat::beat();
        // Read once, before the file moves: its size for the progress line, its
        // mtime for the lag histograms.
        let meta = std::fs::symlink_metadata(&file.path).ok();
        if let Some(p) = &self.progress {
            let bytes = meta.as_ref().map_or(0, |m| m.len());
            let (rows, failed) = match outcome {
                FileOutcome::Ingested { rows, .. } => (*rows, false),
                FileOutcome::Bad(_) => (0, true),
            };
            p.file_done(bytes, rows, failed);
        }
        let ended = EndedFile {
            flight,
            file,
            attempt,
        };
        match outcome {
            FileOutcome::Ingested { .. } => self.archive(&ended, outcome, meta.as_ref()),
            FileOutcome::Bad(bad) => self.fail(&ended, bad),
        }
    }

    /// Archives a file whose rows went in (or that duplicated another) and counts it.
    fn archive(
        &self,
        s: &EndedFile<'_, '_>,
        outcome: &FileOutcome,
        meta: Option<&std::fs::Metadata>,
    ) -> Result<()> {
        let FileOutcome::Ingested {
            rows,
            deleted,
            changed_docs,
            healed,
            duplicate,
        } = outcome
        else {
            return Ok(());
        };
        let (tag, file) = (s.flight.tag, s.file);
        let mtime = meta
            .and_then(|m| m.modified().ok())
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
            .filter(|_| !*duplicate);
        self.spool.archive(tag, file, &today())?;
        if let Some(m) = mtime {
            crate::metrics::INGEST_LAG.observe(crate::metrics::since(m));
        }
        if *duplicate {
            log::info!(
                "batch {tag}: {} already ingested; archived as a duplicate",
                file.name
            );
        }
        if *healed {
            let detail = "rows had no partition; created it and retried";
            self.record_failure(s, Reason::HealedPartition, true, detail)?;
        }
        let mut t = s.flight.totals();
        t.files_ok += 1;
        t.rows += rows;
        t.deleted += deleted;
        t.mtimes.extend(mtime);
        t.changed_docs.extend(changed_docs.iter().cloned());
        t.healed |= healed;
        t.reason(if *healed {
            Reason::HealedPartition
        } else {
            Reason::Success
        });
        Ok(())
    }

    /// Moves a bad file to failed/ with its reason and counts it.
    fn fail(&self, s: &EndedFile<'_, '_>, bad: &BadFile) -> Result<()> {
        let (tag, file) = (s.flight.tag, s.file);
        self.spool.fail(tag, file, &bad.reason_json(&file.name))?;
        log::warn!(
            "batch {tag}: {} failed ({}): {}",
            file.name,
            bad.reason,
            bad.error
        );
        self.record_failure(s, bad.reason, bad.healed, &describe(bad))?;
        let mut t = s.flight.totals();
        t.files_failed += 1;
        t.healed |= bad.healed;
        t.reason(bad.reason);
        if bad.healed {
            t.reason(Reason::HealedPartition);
        }
        Ok(())
    }

    /// A failure-log record, and the batch's one alert on its first failure event.
    fn record_failure(
        &self,
        s: &EndedFile<'_, '_>,
        reason: Reason,
        healed: bool,
        detail: &str,
    ) -> Result<()> {
        let (flight, file, attempt) = (s.flight, s.file, s.attempt);
        self.failure_log.append(Entry {
            ts: crate::clock::now_rfc3339(),
            batch_tag: flight.tag.to_string(),
            file: file.name.clone(),
            reason: reason.as_str().to_string(),
            healed,
            detail: detail.to_string(),
            attempt,
            host: self.ingest.host.clone(),
            prev: String::new(),
        })?;
        if !flight.alerted.swap(true, Ordering::SeqCst) {
            let detail = format!("{}: {detail}", file.name);
            self.notifier.alert(
                AlertKind::Ingest,
                flight.tag.as_str(),
                reason.as_str(),
                healed,
                &detail,
            )?;
        }
        Ok(())
    }
}

fn describe(bad: &BadFile) -> String {
    match (bad.record_index, bad.byte_offset) {
        (Some(r), Some(b)) => format!("record {r} at byte {b}: {}", bad.error),
        _ => bad.error.clone(),
    }
}

/// Today's UTC date as `YYYY-MM-DD` (the archive directory).
fn today() -> String {
    time::OffsetDateTime::now_utc().date().to_string()
}
