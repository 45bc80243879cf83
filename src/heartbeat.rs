//! Progress beats for systemd's watchdog: the daemon pings WATCHDOG=1 only while
//! something moves (a COPY chunk sent, a file done, an embeddings request
//! answered, an event delivered, a bounded retry waited out, the idle loop turned),
//! so a batch longer than WatchdogSec keeps the daemon alive and a hung one
//! gets it restarted.

use crate::sdnotify::Notify;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

static BEATS: AtomicU64 = AtomicU64::new(0);

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
