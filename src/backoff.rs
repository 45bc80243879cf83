//! Exponential backoff with jitter inside a time budget, shared by every retry loop
//! (database, embeddings, webhooks) so they all back off the same way.

use std::time::{Duration, Instant};

/// Retry pacing: delays double from `base` up to `cap`, each jittered to 50–100 %,
/// and no retry starts after the budget is spent.
#[derive(Debug)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    deadline: Instant,
    attempt: u32,
}

impl Backoff {
    /// A backoff that gives up `budget` from now.
    pub(crate) fn new(budget: Duration) -> Backoff {
        Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            deadline: Instant::now() + budget,
            attempt: 0,
        }
    }

    /// The next delay, or `None` when the budget is spent. `hint` (a server's
    /// Retry-After) replaces the computed delay when it is longer.
    pub(crate) fn next_delay(&mut self, hint: Option<Duration>) -> Option<Duration> {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt += 1;
        let mut delay = jitter(exp.min(self.cap));
        if let Some(h) = hint {
            delay = delay.max(h);
        }
        let now = Instant::now();
        (now + delay <= self.deadline).then_some(delay)
    }

    /// Sleeps the next delay; false when the budget is spent (the caller gives up).
    pub(crate) fn wait(&mut self, hint: Option<Duration>) -> bool {
        match self.next_delay(hint) {
            Some(d) => {
                std::thread::sleep(d);
                // A bounded wait is not a hang (see heartbeat).
                crate::heartbeat::beat();
                true
            }
            None => false,
        }
    }
}

/// `d` scaled by a random factor in [0.5, 1.0).
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if getrandom::fill(&mut b).is_ok() {
        u16::from_le_bytes(b)
    } else {
        0
    };
    d.mul_f64(0.5 + f64::from(r) / f64::from(u16::MAX) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_jittered_and_stop_at_the_budget() {
        let mut b = Backoff::new(Duration::from_secs(3600));
        let delays: Vec<Duration> = (0..8).filter_map(|_| b.next_delay(None)).collect();
        assert_eq!(delays.len(), 8);
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(200));
        assert!(delays[3] >= Duration::from_millis(800) && delays[3] < Duration::from_millis(1600));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(5)));
        let mut short = Backoff::new(Duration::from_millis(50));
        assert_eq!(short.next_delay(Some(Duration::from_secs(1))), None);
    }

    #[test]
    fn retry_after_hint_wins_when_longer() {
        let mut b = Backoff::new(Duration::from_secs(60));
        assert!(
            b.next_delay(Some(Duration::from_secs(7)))
                .is_some_and(|d| d >= Duration::from_secs(7))
        );
    }
}
