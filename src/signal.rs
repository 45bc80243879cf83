//! Signals for the daemon: SIGTERM/SIGINT ask it to stop after the batch in
//! flight, SIGHUP reopens RAG_LOG_FILE. A signal thread turns them into messages
//! on the watcher's channel, so the main loop sleeps instead of polling.

use crate::error::{Error, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// Stop claiming, finish the batch in flight, flush, exit 0.
    Stop,
    /// Reopen the log file.
    Reopen,
}

/// Starts the signal thread; `stop` is set at once on SIGTERM/SIGINT so a batch
/// loop can check it between batches.
pub(crate) fn listen<T: From<Request> + Send + 'static>(
    tx: Sender<T>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| Error::temp(format!("cannot install signal handlers: {e}")))?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let request = if signal == SIGHUP {
                crate::log::request_reopen();
                Request::Reopen
            } else {
                stop.store(true, Ordering::SeqCst);
                Request::Stop
            };
            if tx.send(request.into()).is_err() {
                return;
            }
        }
    });
    Ok(())
}
