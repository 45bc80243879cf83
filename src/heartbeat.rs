//! Progress beats: systemd's watchdog is pinged WATCHDOG=1 only while something
//! moves (a COPY chunk sent, a file done, an embeddings request answered, an event
//! delivered, a bounded retry waited out, the idle loop turned), so a batch longer
//! than WatchdogSec keeps the daemon alive and a hung one gets it restarted. The
//! hang guard does the same without systemd: a batch with no beat for far longer
//! than any single wait may last ends the process with exit 75.

use crate::sdnotify::Notify;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

static BEATS: AtomicU64 = AtomicU64::new(0);
/// Batches running now.
static BUSY: AtomicU64 = AtomicU64::new(0);

/// Something moved.
pub(crate) fn beat() {
    BEATS.fetch_add(1, Ordering::Relaxed);
}

/// Starts the thread that sends WATCHDOG=1 every `interval` in which a beat came,
/// until `stop` is set.
pub(crate) fn watchdog(interval: Duration, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let notify = Notify::from_env();
        let mut seen = BEATS.load(Ordering::Relaxed);
        // The first interval counts as progress: start-up is not a hang.
        notify.send("WATCHDOG=1");
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(interval);
            let now = BEATS.load(Ordering::Relaxed);
            if now != seen {
                notify.send("WATCHDOG=1");
                seen = now;
            } else {
                log::debug!("no progress for {interval:?}; watchdog not pinged");
            }
        }
    });
}

/// Marks a batch running until the returned guard drops.
pub(crate) fn busy() -> Busy {
    BUSY.fetch_add(1, Ordering::SeqCst);
    beat();
    Busy
}

/// A running batch (see [`busy`]).
pub(crate) struct Busy;

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.fetch_sub(1, Ordering::SeqCst);
        beat();
    }
}

/// How long a batch may go without a beat: twice the longest single wait
/// (`longest`: a statement or lock timeout, a request timeout) plus 10 s.
pub(crate) fn hang_limit(longest: Duration) -> Duration {
    longest * 2 + Duration::from_secs(10)
}

/// Starts the hang guard: when a batch runs and nothing has moved for `limit`,
/// the process exits 75. A PostgreSQL stopped outright (SIGSTOP, a frozen VM)
/// answers no statement_timeout and its kernel still acknowledges TCP, so nothing
/// else would ever end the wait; the files stay in processing/ for the next run,
/// which recovers them exactly once.
pub(crate) fn hang_guard(limit: Duration) {
    std::thread::spawn(move || {
        let mut seen = BEATS.load(Ordering::Relaxed);
        let mut since = std::time::Instant::now();
        loop {
            std::thread::sleep((limit / 8).max(Duration::from_millis(100)));
            let now = BEATS.load(Ordering::Relaxed);
            if now != seen || BUSY.load(Ordering::SeqCst) == 0 {
                seen = now;
                since = std::time::Instant::now();
                continue;
            }
            if since.elapsed() >= limit {
                log::error!(
                    "no progress for {} s while a batch ran (a server or endpoint that hangs); \
                     exiting 75: the files stay in processing/ and the next run recovers them",
                    limit.as_secs()
                );
                log::logger().flush();
                std::process::exit(75);
            }
        }
    });
}
