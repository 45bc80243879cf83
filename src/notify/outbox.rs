//! The durable outbox (SPEC §6): every event is written to outbox/ (fsynced) before
//! any attempt to send it, and delivered strictly in order per target, so an event
//! not delivered now is retried by a later run and a batch's gate.done never
//! overtakes its gate.open. Permanent refusals go to outbox/dead/.

use crate::backoff::Backoff;
use crate::error::{Context, Error, Result};
use crate::failure_log::{Entry, FailureLog};
use crate::fs::LockFile;
use crate::fs::{fsync_dir, make_dir, write_atomic};
use crate::notify::webhook::{self, Attempt, Endpoint};
use crate::sequence::SeqFile;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Who an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Target {
    /// GATE_URL.
    Gate,
    /// ALERT_URL.
    Alert,
}

/// An event as stored in outbox/.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Stored {
    /// webhook-id, the same on every attempt.
    pub(crate) id: String,
    /// Who it is for.
    pub(crate) target: Target,
    /// Event name (gate.open, gate.done, ingest.alert, ...).
    pub(crate) event: String,
    /// The batch it is about, if any.
    pub(crate) batch_tag: String,
    /// The rendered JSON body, sent byte for byte.
    pub(crate) body: String,
    /// For gate.done: the mtimes (unix seconds) of the batch's ingested files, for
    /// the searchable-lag histogram when it is delivered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) mtimes: Vec<f64>,
}

/// What a flush did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Flushed {
    /// Events delivered.
    pub(crate) delivered: usize,
    /// Events moved to outbox/dead/.
    pub(crate) dead: usize,
    /// Events still waiting because their target is unreachable.
    pub(crate) pending: usize,
}

/// Something the outbox wants the caller to turn into an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// An event was refused for good.
    Dead {
        /// The event.
        stored_event: String,
        /// Its batch.
        batch_tag: String,
        /// The status code.
        status: u16,
    },
    /// The gate answers again after failures.
    Recovered,
    /// A queued event could not be read and was moved to outbox/dead/.
    Unreadable {
        /// Its file name.
        name: String,
    },
}

/// The outbox of one spool.
pub(crate) struct Outbox {
    dir: PathBuf,
    gate: Option<Endpoint>,
    alert: Option<Endpoint>,
    /// GATE_TIMEOUT_MS: one delivery's deadline.
    timeout: Duration,
    budget: Duration,
    failure_log: Option<Arc<FailureLog>>,
    host: String,
    down: Mutex<BTreeSet<Target>>,
}

/// The last event number handed out, in outbox/.
const SEQ_FILE: &str = ".seq";
/// Held by the one process delivering the outbox.
const FLUSH_LOCK: &str = ".flush";

impl Outbox {
    /// An outbox in `dir` delivering to the given endpoints.
    pub(crate) fn new(
        dir: &Path,
        gate: Option<Endpoint>,
        alert: Option<Endpoint>,
        budget: Duration,
        timeout: Duration,
        failure_log: Option<Arc<FailureLog>>,
        host: String,
    ) -> Result<Outbox> {
        Ok(Outbox {
            timeout,
            dir: dir.to_path_buf(),
            gate,
            alert,
            budget,
            failure_log,
            host,
            down: Mutex::new(BTreeSet::new()),
        })
    }

    /// Whether events for `target` are wanted (its URL is set).
    pub(crate) fn wants(&self, target: Target) -> bool {
        self.endpoint(target).is_some()
    }

    fn endpoint(&self, target: Target) -> Option<&Endpoint> {
        match target {
            Target::Gate => self.gate.as_ref(),
            Target::Alert => self.alert.as_ref(),
        }
    }

    /// Writes an event to outbox/ (fsynced) for a later [`Outbox::flush`].
    pub(crate) fn enqueue(&self, stored: &Stored) -> Result<()> {
        if !self.wants(stored.target) {
            return Ok(());
        }
        let bytes = serde_json::to_vec(stored)
            .map_err(|e| Error::failed(format!("cannot encode an event: {e}")))?;
        // Delivery follows the names: a number that only grows, taken and used under
        // one lock, so that a clock stepped back cannot put gate.done before gate.open.
        let mut seq = SeqFile::lock(&self.dir.join(SEQ_FILE))?;
        let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
        let name = format!("{:020}.json", seq.take(1, nanos)?);
        write_atomic(&self.dir, &name, &bytes, 0o640).context("writing an event to the outbox")
    }

    /// Delivers what waits, in order per target; returns what happened and any
    /// notices (dead letters, recovery) for the caller to alert on. One flusher
    /// at a time per spool (an flock on outbox/.flush): two daemons, or watch and
    /// process, never deliver or remove the same event twice.
    pub(crate) fn flush(&self) -> Result<(Flushed, Vec<Notice>)> {
        let _flushing = LockFile::acquire(&self.dir.join(FLUSH_LOCK), 0o640)?;
        let mut report = Flushed::default();
        let mut notices = Vec::new();
        let mut blocked: BTreeSet<Target> = BTreeSet::new();
        for (path, stored) in read_queue::<Stored>(&self.dir)? {
            let stored = match stored {
                Ok(s) => s,
                Err(why) => {
                    notices.push(self.bury_unreadable(&path, &why)?);
                    continue;
                }
            };
            let Some(endpoint) = self.endpoint(stored.target) else {
                continue;
            };
            if blocked.contains(&stored.target) {
                report.pending += 1;
                continue;
            }
            match self.deliver(endpoint, &stored) {
                Attempt::Delivered => {
                    crate::heartbeat::beat();
                    crate::metrics::DELIVERED.add(1);
                    for m in &stored.mtimes {
                        crate::metrics::SEARCHABLE_LAG.observe(crate::metrics::since(*m));
                    }
                    remove_delivered(&path)?;
                    fsync_dir(&self.dir)?;
                    report.delivered += 1;
                    if stored.target == Target::Gate && self.clear_failing()? {
                        notices.push(Notice::Recovered);
                    }
                }
                Attempt::Permanent { status } => {
                    crate::metrics::DEAD.add(1);
                    self.bury(&path, &stored, status)?;
                    report.dead += 1;
                    notices.push(Notice::Dead {
                        stored_event: stored.event.clone(),
                        batch_tag: stored.batch_tag.clone(),
                        status,
                    });
                }
                Attempt::Retry { why, .. } => {
                    log::warn!(
                        "outbox: {} for batch {} not delivered ({why}); kept for a later run",
                        stored.event,
                        stored.batch_tag
                    );
                    blocked.insert(stored.target);
                    report.pending += 1;
                }
            }
        }
        Ok((report, notices))
    }

    /// One event: attempts with backoff within the budget (one attempt once the
    /// target was found down in this run).
    fn deliver(&self, endpoint: &Endpoint, stored: &Stored) -> Attempt {
        let mut backoff = Backoff::new(self.budget);
        loop {
            let attempt = webhook::post(endpoint, &stored.id, &stored.body, self.timeout);
            let Attempt::Retry { why, hint } = &attempt else {
                if matches!(attempt, Attempt::Delivered) {
                    self.set_down(stored.target, false);
                }
                return attempt;
            };
            crate::metrics::RETRIED.add(1);
            if stored.target == Target::Gate {
                self.mark_failing();
            }
            log::debug!("outbox: {} {why}; retrying", stored.event);
            if self.is_down(stored.target) || !backoff.wait(*hint) {
                self.set_down(stored.target, true);
                return attempt;
            }
        }
    }

    fn is_down(&self, target: Target) -> bool {
        self.down
            .lock()
            .map(|d| d.contains(&target))
            .unwrap_or(false)
    }

    fn set_down(&self, target: Target, down: bool) {
        if let Ok(mut d) = self.down.lock() {
            if down {
                d.insert(target);
            } else {
                d.remove(&target);
            }
        }
    }

    fn failing_marker(&self) -> PathBuf {
        self.dir.join(".gate-failing")
    }

    /// Remembers, across runs, that gate delivery is failing.
    fn mark_failing(&self) {
        let marker = self.failing_marker();
        if !marker.exists() {
            let _ = std::fs::write(&marker, b"");
        }
    }

    /// Forgets the failing state; true when it was set (the gate recovered).
    fn clear_failing(&self) -> Result<bool> {
        match std::fs::remove_file(self.failing_marker()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::from(e).context("clearing the gate-failing marker")),
        }
    }

    /// Moves a refused event to outbox/dead/ and records it in the failure log.
    fn bury(&self, path: &Path, stored: &Stored, status: u16) -> Result<()> {
        quarantine(path)?;
        log::error!(
            "outbox: {} for batch {} refused with {status}; moved to outbox/dead/",
            stored.event,
            stored.batch_tag
        );
        self.record_dead(
            &stored.batch_tag,
            &stored.event,
            format!(
                "{:?} endpoint answered {status}; event moved to outbox/dead/",
                stored.target
            ),
        )
    }

    /// Moves an event file that cannot be decoded to outbox/dead/, so that it
    /// neither warns on every run nor hides among the events that go out.
    fn bury_unreadable(&self, path: &Path, why: &str) -> Result<Notice> {
        quarantine(path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        log::error!("outbox: `{name}` cannot be read ({why}); moved to outbox/dead/");
        self.record_dead(
            "",
            &name,
            format!("queued event cannot be read ({why}); moved to outbox/dead/"),
        )?;
        Ok(Notice::Unreadable { name })
    }

    fn record_dead(&self, batch_tag: &str, file: &str, detail: String) -> Result<()> {
        let Some(log) = &self.failure_log else {
            return Ok(());
        };
        log.append(Entry {
            ts: crate::clock::now_rfc3339(),
            batch_tag: batch_tag.to_string(),
            file: file.to_string(),
            reason: "dead_letter".into(),
            healed: false,
            detail,
            attempt: 1,
            host: self.host.clone(),
            prev: String::new(),
        })
    }

    /// Events in outbox/ and in outbox/dead/.
    pub(crate) fn depth(dir: &Path) -> (usize, usize) {
        let count = |d: &Path| {
            std::fs::read_dir(d)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| {
                            e.file_name()
                                .to_str()
                                .is_some_and(|n| n.ends_with(".json") && !n.starts_with('.'))
                        })
                        .count()
                })
                .unwrap_or(0)
        };
        (count(dir), count(&dir.join("dead")))
    }
}

/// Removes a delivered event; one already gone is fine.
fn remove_delivered(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::from(e).context(format!("cannot remove `{}`", path.display())))
        }
        _ => Ok(()),
    }
}

/// Moves a queued file into dead/ beside it.
pub(crate) fn quarantine(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let dead = dir.join("dead");
    if make_dir(&dead)? {
        fsync_dir(dir)?;
    }
    let name = path.file_name().map(PathBuf::from).unwrap_or_default();
    std::fs::rename(path, dead.join(&name))
        .with_context(|| format!("cannot move `{}` to {}", path.display(), dead.display()))?;
    fsync_dir(&dead)?;
    fsync_dir(dir)
}

/// The `*.json` entries of a queue directory, oldest name first, each decoded or
/// with why not. Dotfiles (write_atomic's temporaries, locks) are left out. Serves
/// outbox/ and outbox/cache/.
pub(crate) fn read_queue<T: serde::de::DeserializeOwned>(
    dir: &Path,
) -> Result<Vec<(PathBuf, std::result::Result<T, String>)>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list `{}`", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.'))
        })
        .collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for path in names {
        // Gone since the listing: another flusher delivered it.
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let decoded = serde_json::from_slice::<T>(&bytes).map_err(|e| e.to_string());
        out.push((path, decoded));
    }
    Ok(out)
}

/// The webhook-id of a batch's gate event: the same for every copy of it, so
/// that a gate.done queued again after a crash (before the batch's `.done` marker
/// was written) is one the gate can drop as already seen.
pub(crate) fn batch_event_id(batch_tag: &str, event: &str) -> String {
    let digest = crate::digest::sha256_hex(format!("{batch_tag} {event}").as_bytes());
    format!("msg_{}", &digest[..24])
}

/// A new webhook-id.
pub(crate) fn new_id() -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    format!("msg_{}", crate::digest::hex(&b))
}
