//! A one-line progress counter on stderr during long work, shown only on a terminal
//! so logs and pipes stay clean.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Counts steps of a long task and redraws one stderr line at most 10 times a second.
pub(crate) struct Progress {
    label: String,
    total: u64,
    done: u64,
    shown: Option<Instant>,
    enabled: bool,
}

impl Progress {
    /// A counter for `total` steps of `label`.
    pub(crate) fn new(label: impl Into<String>, total: u64) -> Progress {
        Progress {
            label: label.into(),
            total,
            done: 0,
            shown: None,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// Records `n` more steps.
    pub(crate) fn add(&mut self, n: u64) {
        self.done += n;
        if !self.enabled {
            return;
        }
        let due = self
            .shown
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if due || self.done == self.total {
            self.shown = Some(Instant::now());
            let _ = write!(
                std::io::stderr(),
                "\r{}: {}/{}",
                self.label,
                self.done,
                self.total
            );
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.enabled && self.shown.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}
