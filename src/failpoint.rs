//! Crash points for the fault tests and the fault campaign: with
//! `RAGSPOOL_FAILPOINT=<step>[:<n>]` in its environment, the process aborts (no
//! destructor, no flush, as a SIGKILL would leave it) the n-th time (default the
//! first) it reaches the named step. Unset, a step costs one relaxed load. The
//! steps are the instants between two durable writes that recovery must handle:
//! they are listed in [`STEPS`], and README.md's reliability section names them.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every step a failpoint can name.
pub(crate) const STEPS: [&str; 5] = [
    // A file's transaction committed; the file is still in processing/.
    "file-committed",
    // Every file of a batch settled; nothing of its end is queued yet.
    "batch-settled",
    // The batch's gate.done is queued; its `.done` marker is not written.
    "gate-done-queued",
    // The batch directory is gone; the outbox is not yet delivered, the cache's
    // invalidations not applied, the build update not published.
    "batch-closed",
    // `import`: one of an input's spool files renamed into incoming/, the others
    // still staged in tmp/ (the next import finishes the commit).
    "import-renamed",
];

struct Armed {
    step: String,
    at: u64,
    seen: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let raw = std::env::var("RAGSPOOL_FAILPOINT").ok()?;
            let (step, at) = match raw.split_once(':') {
                Some((s, n)) => (s.to_string(), n.parse().ok()?),
                None => (raw, 1),
            };
            STEPS.contains(&step.as_str()).then_some(Armed {
                step,
                at,
                seen: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process if RAGSPOOL_FAILPOINT names `step` and this is its n-th hit.
pub(crate) fn hit(step: &'static str) {
    let Some(a) = armed() else { return };
    if a.step == step && a.seen.fetch_add(1, Ordering::SeqCst) + 1 == a.at {
        log::error!("failpoint {step}: aborting as RAGSPOOL_FAILPOINT asks");
        std::process::abort();
    }
}
