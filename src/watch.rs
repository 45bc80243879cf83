//! The daemon loop (`ragspool watch`): inotify on incoming/ (added before the
//! first scan, so nothing arriving meanwhile is missed), batches on the count,
//! bytes and age thresholds through the same runner `process` uses, a rescan on
//! queue overflow and on a slow safety timer, and systemd readiness, watchdog and
//! status pings from the loop that does the work. It sleeps on a channel while
//! idle: no polling.

use crate::config::Config;
use crate::error::{Error, Outcome, Result};
use crate::runner::Runner;
use crate::sdnotify::Notify;
use crate::signal::{self, Request};
use crate::spool::{Spool, Waiting};
use inotify::{EventMask, Inotify, WatchMask};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

/// How often the whole of incoming/ is rescanned even without events.
const SAFETY_RESCAN: Duration = Duration::from_secs(30);
/// A file no event announced (an overflow dropped it) counts as ready once
/// unchanged this long. Producers that write in place must not pause longer.
const SETTLE: Duration = Duration::from_secs(5);
/// How often undelivered notifications are retried while idle.
const OUTBOX_TICK: Duration = Duration::from_secs(10);
/// How often METRICS_FILE is rewritten while idle.
const METRICS_TICK: Duration = Duration::from_secs(60);

/// What wakes the loop.
#[derive(Debug)]
pub(crate) enum Wake {
    /// Files were closed after writing or renamed in.
    Ready(Vec<String>),
    /// The kernel dropped events: rescan everything.
    Overflow,
    /// A signal.
    Signal(Request),
    /// The inotify reader failed.
    Broken(String),
}

impl From<Request> for Wake {
    fn from(r: Request) -> Wake {
        Wake::Signal(r)
    }
}

/// What a threshold firing does.
pub(crate) enum Action {
    /// Ingest in-process.
    Ingest(Box<Runner>),
    /// Run this shell command with the settings in its environment.
    Exec(String),
}

/// The watcher's state.
struct Watcher<'a> {
    config: &'a Config,
    spool: Spool,
    action: Action,
    notify: Notify,
    stop: Arc<AtomicBool>,
    ready: HashSet<String>,
    failed_batches: u32,
    next_retry: Option<Instant>,
    last_metrics: Instant,
    last_rescan: Instant,
    last_orphan_scan: Instant,
}

/// Runs the daemon until SIGTERM or SIGINT; exits 0 after finishing the batch in
/// flight. Signal handlers go in first, then `make` builds the action (database
/// connections and all), so a SIGTERM during start-up is a clean stop too.
pub(crate) fn run(config: &Config, make: impl FnOnce() -> Result<Action>) -> Result<Outcome> {
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    signal::listen(tx.clone(), stop.clone())?;
    let spool = Spool::new(&config.spool_dir);
    spool.require()?;
    let action = make()?;
    start_inotify(&spool, tx)?;
    let mut w = Watcher {
        config,
        spool,
        action,
        notify: Notify::from_env(),
        stop,
        ready: HashSet::new(),
        failed_batches: 0,
        next_retry: None,
        last_metrics: Instant::now(),
        last_rescan: Instant::now(),
        last_orphan_scan: Instant::now(),
    };
    if let Action::Ingest(runner) = &w.action {
        runner.flush();
        for report in runner.recover()? {
            w.count(&report);
        }
    }
    // Everything there before the watch began counts as complete.
    w.ready = w.spool.waiting()?.into_iter().map(|f| f.name).collect();
    w.notify.send("READY=1");
    log::info!("watching {}", w.spool.dir("incoming").display());
    w.run_loop(&rx)?;
    w.notify.send("STOPPING=1");
    if let Action::Ingest(runner) = &w.action {
        runner.flush();
    }
    w.write_metrics();
    log::info!("stopped");
    Ok(Outcome::Clean)
}

/// The inotify watch and a thread that forwards its events.
fn start_inotify(spool: &Spool, tx: mpsc::Sender<Wake>) -> Result<()> {
    let incoming = spool.dir("incoming");
    let mut inotify =
        Inotify::init().map_err(|e| Error::temp(format!("cannot start inotify: {e}")))?;
    inotify
        .watches()
        .add(&incoming, WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO)
        .map_err(|e| Error::temp(format!("cannot watch `{}`: {e}", incoming.display())))?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let events = match inotify.read_events_blocking(&mut buf) {
                Ok(events) => events,
                Err(e) => {
                    let _ = tx.send(Wake::Broken(e.to_string()));
                    return;
                }
            };
            let mut names = Vec::new();
            let mut overflow = false;
            for event in events {
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    overflow = true;
                } else if let Some(name) = event.name.and_then(|n| n.to_str())
                    && crate::spool::is_candidate(event.name.unwrap_or_default())
                {
                    names.push(name.to_string());
                }
            }
            let wake = if overflow {
                Wake::Overflow
            } else {
                Wake::Ready(names)
            };
            if tx.send(wake).is_err() {
                return;
            }
        }
    });
    Ok(())
}

impl Watcher<'_> {
    fn run_loop(&mut self, rx: &Receiver<Wake>) -> Result<()> {
        let watchdog = Notify::watchdog_interval();
        if let Some(interval) = watchdog {
            // Pinged from its own thread, on progress, so that a long batch keeps
            // the daemon alive and a hung one does not.
            crate::heartbeat::watchdog(interval, self.stop.clone());
        }
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            crate::heartbeat::beat();
            self.recover_orphans();
            let (waiting, unsettled) = self.ready_files()?;
            if self.due(&waiting) {
                self.fire(waiting);
                continue;
            }
            self.status(&waiting);
            let timeout = self
                .timeout(&waiting, watchdog)
                .min(unsettled.unwrap_or(Duration::MAX));
            match rx.recv_timeout(timeout) {
                Ok(Wake::Ready(names)) => self.ready.extend(names),
                Ok(Wake::Overflow) => {
                    log::warn!("inotify queue overflowed; rescanning incoming/");
                    self.mark_all_ready()?;
                }
                Ok(Wake::Signal(Request::Stop)) => return Ok(()),
                Ok(Wake::Signal(Request::Reopen)) => log::info!("reopened the log file"),
                Ok(Wake::Broken(e)) => return Err(Error::temp(format!("inotify failed: {e}"))),
                Err(RecvTimeoutError::Timeout) => self.tick()?,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::temp("the inotify reader stopped"));
                }
            }
        }
    }

    /// Waiting files that are complete: announced by an event, present before
    /// the watch began, or unchanged for [`SETTLE`]; and how long until the next
    /// unannounced file settles.
    fn ready_files(&mut self) -> Result<(Vec<Waiting>, Option<Duration>)> {
        let all = self.spool.waiting()?;
        let present: HashSet<&str> = all.iter().map(|w| w.name.as_str()).collect();
        self.ready.retain(|n| present.contains(n.as_str()));
        let now = SystemTime::now();
        let mut unsettled: Option<Duration> = None;
        let mut ready = Vec::with_capacity(all.len());
        for w in all {
            let age = now.duration_since(w.modified).unwrap_or_default();
            if self.ready.contains(&w.name) || age >= SETTLE {
                ready.push(w);
            } else {
                let left = SETTLE - age;
                unsettled = Some(unsettled.map_or(left, |u| u.min(left)));
            }
        }
        Ok((ready, unsettled))
    }

    fn mark_all_ready(&mut self) -> Result<()> {
        self.ready
            .extend(self.spool.waiting()?.into_iter().map(|w| w.name));
        Ok(())
    }

    fn oldest_age(waiting: &[Waiting]) -> Duration {
        let now = SystemTime::now();
        waiting
            .iter()
            .filter_map(|w| now.duration_since(w.modified).ok())
            .max()
            .unwrap_or_default()
    }

    /// Whether a threshold fires (and a retry back-off is not holding us).
    fn due(&self, waiting: &[Waiting]) -> bool {
        if waiting.is_empty() || self.next_retry.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let bytes: u64 = waiting.iter().map(|w| w.bytes).sum();
        waiting.len() >= self.config.batch_max_files
            || bytes >= self.config.batch_max_bytes
            || Self::oldest_age(waiting) >= Duration::from_secs(self.config.batch_max_age_secs)
    }

    fn timeout(&self, waiting: &[Waiting], watchdog: Option<Duration>) -> Duration {
        let mut t = SAFETY_RESCAN.saturating_sub(self.last_rescan.elapsed());
        if !waiting.is_empty() {
            let age = Duration::from_secs(self.config.batch_max_age_secs);
            t = t.min(age.saturating_sub(Self::oldest_age(waiting)));
        }
        if let Some(at) = self.next_retry {
            t = t.min(at.saturating_duration_since(Instant::now()));
        }
        if let Action::Ingest(runner) = &self.action
            && runner.undelivered() > 0
        {
            t = t.min(OUTBOX_TICK);
        }
        if let Action::Ingest(runner) = &self.action
            && let Some(due) = runner.invalidations_due()
        {
            t = t.min(due);
        }
        if self.config.metrics_file.is_some() {
            t = t.min(METRICS_TICK.saturating_sub(self.last_metrics.elapsed()));
        }
        if let Some(w) = watchdog {
            t = t.min(w);
        }
        if let Action::Ingest(_) = &self.action {
            t = t.min(
                self.orphan_scan_every()
                    .saturating_sub(self.last_orphan_scan.elapsed()),
            );
        }
        t.max(Duration::from_millis(10))
    }

    /// How often processing/ is looked at for batches whose claimer has gone: a
    /// quarter of ORPHAN_RECOVER_SECS, so that one is recovered well within it.
    fn orphan_scan_every(&self) -> Duration {
        (Duration::from_secs(self.config.orphan_recover_secs) / 4).max(Duration::from_millis(250))
    }

    /// Recovers, when a scan is due, the batches of claimers that have gone (a
    /// killed `process`, a second watch, another host's): without this they would
    /// wait in processing/ for the next start.
    fn recover_orphans(&mut self) {
        let Action::Ingest(runner) = &self.action else {
            return;
        };
        // A batch of our own that an outage left waits for the back-off, not for
        // the next scan.
        if self.last_orphan_scan.elapsed() < self.orphan_scan_every()
            || self.next_retry.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        self.last_orphan_scan = Instant::now();
        match runner.recover() {
            Ok(reports) => {
                for report in &reports {
                    log::info!("recovered orphaned batch {}", report.tag);
                }
                for report in reports {
                    self.count(&report);
                }
            }
            Err(e) => {
                log::error!("recovering orphaned batches: {e}");
                self.back_off();
            }
        }
    }

    /// Periodic work when nothing happened: rescan, outbox retries, metrics.
    fn tick(&mut self) -> Result<()> {
        if self.last_rescan.elapsed() >= SAFETY_RESCAN {
            self.last_rescan = Instant::now();
        }
        if let Action::Ingest(runner) = &self.action
            && runner.undelivered() > 0
        {
            runner.flush();
        }
        if let Action::Ingest(runner) = &self.action {
            runner.settle_invalidations(false);
            runner.idle.expire();
        }
        if self.last_metrics.elapsed() >= METRICS_TICK {
            self.write_metrics();
        }
        Ok(())
    }

    /// Runs one batch (or the --exec command).
    fn fire(&mut self, waiting: Vec<Waiting>) {
        match &self.action {
            Action::Ingest(runner) => {
                let result = if self.failed_batches > 0 {
                    runner.recover().map(|r| r.into_iter().next())
                } else {
                    let chosen = runner.select(&waiting);
                    runner.claim_and_run(&chosen)
                };
                match result {
                    Ok(Some(report)) => self.count(&report),
                    Ok(None) => self.failed_batches = 0,
                    Err(e) => {
                        log::error!("{e}");
                        self.back_off();
                    }
                }
            }
            Action::Exec(cmd) => {
                let status = std::process::Command::new("sh")
                    .args(["-c", cmd])
                    .envs(settings_env(self.config))
                    .stdin(std::process::Stdio::null())
                    .status();
                // Whatever the command did, look again only after a pause: a command
                // that leaves files behind must not be re-run in a tight loop.
                self.next_retry = Some(Instant::now() + Duration::from_secs(1));
                match status {
                    Ok(s) if s.success() => log::info!("--exec command finished"),
                    Ok(s) => {
                        log::warn!("--exec command exited with {s}");
                        self.back_off();
                    }
                    Err(e) => {
                        log::error!("cannot run --exec command: {e}");
                        self.back_off();
                    }
                }
            }
        }
        self.write_metrics();
    }

    /// Remembers a batch's outcome; a batch that left files in processing/ makes
    /// the next attempt wait and recover them first.
    fn count(&mut self, report: &crate::batch::BatchReport) {
        if report.error.is_some() {
            self.back_off();
        } else {
            self.failed_batches = 0;
            self.next_retry = None;
        }
    }

    fn back_off(&mut self) {
        self.failed_batches += 1;
        let secs = 2u64.saturating_pow(self.failed_batches.min(6)).min(60);
        self.next_retry = Some(Instant::now() + Duration::from_secs(secs));
    }

    fn status(&self, waiting: &[Waiting]) {
        let (outbox, _) = crate::notify::gate::outbox_depth(self.spool.root());
        self.notify.send(&format!(
            "STATUS=waiting {} file(s), outbox {outbox}",
            waiting.len()
        ));
    }

    fn write_metrics(&mut self) {
        self.last_metrics = Instant::now();
        crate::gauges::write_configured(self.config);
    }
}

/// The effective settings as environment variables, for --exec.
fn settings_env(config: &Config) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = crate::config::process_env_pairs(config);
    env.push(("RAGSPOOL_TRIGGER".into(), "watch".into()));
    env
}
