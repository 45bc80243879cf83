//! Cached answers never outlive their documents (SPEC §12). After a batch commits
//! and before its build update is published, every cached value recorded as
//! computed from a document the batch replaced or deleted is deleted; once more
//! CACHE_REDELETE_MS after the build update, so that an answer computed from the
//! old rows and stored meanwhile goes too. The work is queued in outbox/cache/
//! (fsynced) first, so a Redis outage delays it and never loses it, and never
//! changes ingest's outcome.

use crate::cache::Cache;
use crate::error::{Context, Error, Result};
use crate::fs::{make_dir, write_atomic};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One batch's invalidation as queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    batch_tag: String,
    doc_ids: Vec<String>,
    /// Unix milliseconds of the second pass, once the first was done.
    redelete_at_ms: Option<u64>,
}

/// The queue in outbox/cache/.
#[derive(Debug, Clone)]
pub(crate) struct Invalidations {
    dir: PathBuf,
    redelete: Duration,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Invalidations {
    /// The queue of the spool at `spool_dir`, with CACHE_REDELETE_MS.
    pub(crate) fn new(spool_dir: &Path, redelete: Duration) -> Invalidations {
        Invalidations {
            dir: spool_dir.join("outbox").join("cache"),
            redelete,
        }
    }

    /// Queues the invalidation of `doc_ids` for `batch_tag`.
    pub(crate) fn queue(&self, batch_tag: &str, doc_ids: Vec<String>) -> Result<()> {
        if doc_ids.is_empty() {
            return Ok(());
        }
        make_dir(&self.dir)?;
        let pending = Pending {
            batch_tag: batch_tag.to_string(),
            doc_ids,
            redelete_at_ms: None,
        };
        let name = format!(
            "{:020}-{batch_tag}.json",
            time::OffsetDateTime::now_utc().unix_timestamp_nanos()
        );
        self.write(&name, &pending)
    }

    fn write(&self, name: &str, pending: &Pending) -> Result<()> {
        let bytes = serde_json::to_vec(pending)
            .map_err(|e| Error::failed(format!("cannot encode an invalidation: {e}")))?;
        write_atomic(&self.dir, name, &bytes, 0o640).context("queueing a cache invalidation")
    }

    fn waiting(&self) -> Vec<(String, Pending)> {
        crate::notify::outbox::read_queue(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(path, p)| {
                let p = p
                    .map_err(|why| {
                        log::error!(
                            "`{}` cannot be read ({why}); moved to outbox/cache/dead/",
                            path.display()
                        );
                        let _ = crate::notify::outbox::quarantine(&path);
                    })
                    .ok()?;
                Some((path.file_name()?.to_str()?.to_string(), p))
            })
            .collect()
    }

    /// Runs every pass that is due, oldest first: first passes at once, second
    /// passes once their time came. Stops at the first Redis error (the rest
    /// waits for a later call). Returns how many invalidations remain queued.
    pub(crate) fn apply_due(&self, cache: &mut Cache) -> usize {
        let waiting = self.waiting();
        let mut left = waiting.len();
        for (name, mut p) in waiting {
            let due = p.redelete_at_ms.is_none_or(|at| at <= now_ms());
            if !due {
                continue;
            }
            if let Err(e) = p
                .doc_ids
                .iter()
                .try_for_each(|d| cache.invalidate(d).map(|_| ()))
            {
                log::warn!(
                    "batch {}: cached answers of {} document(s) not yet invalidated ({e}); kept in outbox/cache/",
                    p.batch_tag,
                    p.doc_ids.len()
                );
                return left;
            }
            let done = match p.redelete_at_ms {
                None => {
                    p.redelete_at_ms = Some(now_ms() + self.redelete.as_millis() as u64);
                    self.write(&name, &p).map(|()| false)
                }
                Some(_) => std::fs::remove_file(self.dir.join(&name))
                    .map(|()| true)
                    .map_err(Error::from),
            };
            match done {
                Ok(true) => left -= 1,
                Ok(false) => {}
                Err(e) => log::warn!("outbox/cache/{name}: {e}"),
            }
        }
        left
    }

    /// Applies what is due, then waits for each queued second pass and applies it,
    /// until none is left or Redis stops answering (`process` before it exits).
    pub(crate) fn drain(&self, cache: &mut Cache) {
        let mut left = self.apply_due(cache);
        while left > 0 {
            let Some(d) = self.next_due() else { return };
            std::thread::sleep(d.min(self.redelete));
            let now = self.apply_due(cache);
            if now >= left {
                return;
            }
            left = now;
        }
    }

    /// How long until the next second pass is due (None when none waits).
    pub(crate) fn next_due(&self) -> Option<Duration> {
        let now = now_ms();
        self.waiting()
            .iter()
            .filter_map(|(_, p)| p.redelete_at_ms)
            .min()
            .map(|at| Duration::from_millis(at.saturating_sub(now)))
    }
}
