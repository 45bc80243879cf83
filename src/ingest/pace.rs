//! The pace of one process's embeddings requests (SPEC §13), shared by every
//! worker and every file: at most the concurrency in effect in flight, EMBED_MAX_RPS
//! starts a second, EMBED_MAX_TPM tokens a minute, and nothing while a 429's or
//! 503's Retry-After runs.
//!
//! The concurrency in effect adapts. It starts at EMBED_CONCURRENCY. Each 429 or
//! 503 cuts it by 4 % (not below 1): an endpoint that serves C requests at once
//! refuses about one request per request beyond C, so a round of refusals brings
//! the concurrency near C at once (from 2 C: 2 C × 0.96^C, about C for C up to 64)
//! rather than halving it. Each success raises it by 1/(32 × itself), about one
//! more request in flight per 32 round trips, up to EMBED_CONCURRENCY. It so
//! settles within a request or two of C, probing above it rarely (one refused
//! request per some hundreds: each refusal pauses every request for its
//! Retry-After, so probing often would cost more than it finds), rather than
//! swinging around it.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A refusal keeps this much of the concurrency in effect.
const CUT: f64 = 0.96;
/// Successes, in units of the concurrency in effect, per +1 of it.
const RAISE_EVERY: f64 = 32.0;
/// The pause after a 429 or 503 without Retry-After.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// The window of EMBED_MAX_TPM.
const MINUTE: Duration = Duration::from_secs(60);

/// The shared pace.
#[derive(Debug)]
pub(crate) struct Pace {
    state: Mutex<State>,
    changed: Condvar,
    max: usize,
    interval: Option<Duration>,
    tpm: u64,
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    next: Instant,
    paused_until: Instant,
    /// Tokens of answered requests in the last minute, by when they were sent.
    sent: VecDeque<(Instant, u64)>,
    sent_total: u64,
    /// Estimated tokens of requests in flight.
    reserved: u64,
    /// Requests started whose answers no file has taken yet (see [`Pace::hold`]).
    held: usize,
}

/// Leave to send one request; dropping it without an outcome counts as neither
/// success nor refusal (an error without an answer).
pub(crate) struct Permit<'a> {
    pace: &'a Pace,
    estimate: u64,
    started: Instant,
    done: bool,
}

impl Pace {
    /// At most `max` requests at once (EMBED_CONCURRENCY), `rps` a second and `tpm`
    /// tokens a minute (0: no cap).
    pub(crate) fn new(max: usize, rps: u32, tpm: u64) -> Pace {
        let now = Instant::now();
        let max = max.max(1);
        crate::metrics::set_embed_pace(0, max);
        Pace {
            state: Mutex::new(State {
                limit: max as f64,
                in_flight: 0,
                next: now,
                paused_until: now,
                sent: VecDeque::new(),
                sent_total: 0,
                reserved: 0,
                held: 0,
            }),
            changed: Condvar::new(),
            max,
            interval: (rps > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rps))),
            tpm,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a request of about `estimate` tokens may start.
    pub(crate) fn acquire(&self, estimate: u64) -> Permit<'_> {
        let mut s = self.lock();
        loop {
            let now = Instant::now();
            match self.wait_for(&mut s, now, estimate) {
                None => break,
                Some(None) => s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(Some(d)) => {
                    // In slices of a second, each a beat: a bounded wait for the
                    // endpoint (a Retry-After, the rate caps) is not a hang.
                    s = self
                        .changed
                        .wait_timeout(s, d.min(Duration::from_secs(1)))
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                    crate::heartbeat::beat();
                }
            }
        }
        let now = Instant::now();
        s.in_flight += 1;
        s.reserved += estimate;
        if let Some(i) = self.interval {
            s.next = now + i;
        }
        crate::metrics::set_embed_pace(s.in_flight, s.limit as usize);
        Permit {
            pace: self,
            estimate,
            started: now,
            done: false,
        }
    }

    /// `None` when a request may start now; else how long to wait (`None`: until
    /// another request ends).
    fn wait_for(&self, s: &mut State, now: Instant, estimate: u64) -> Option<Option<Duration>> {
        if s.in_flight >= (s.limit as usize).max(1) {
            return Some(None);
        }
        let at = s.next.max(s.paused_until);
        if at > now {
            return Some(Some(at - now));
        }
        if self.tpm > 0 {
            while s
                .sent
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) >= MINUTE)
            {
                if let Some((_, n)) = s.sent.pop_front() {
                    s.sent_total -= n;
                }
            }
            let used = s.sent_total + s.reserved;
            // A request larger than the cap goes alone, when nothing else counts.
            if used > 0 && used + estimate > self.tpm {
                return Some(
                    s.sent
                        .front()
                        .map(|(t, _)| (*t + MINUTE).saturating_duration_since(now)),
                );
            }
        }
        None
    }

    /// Takes one of the process's 2 × EMBED_CONCURRENCY places for a request
    /// whose answer is not yet taken: queued, in flight, or back before the answers
    /// ahead of it in its file; false when none is free. Bounds the texts and
    /// answers that the files fetching at once hold.
    pub(crate) fn try_hold(&self) -> bool {
        let mut s = self.lock();
        if s.held >= 2 * self.max {
            return false;
        }
        s.held += 1;
        true
    }

    /// Gives a place of [`Pace::try_hold`] back.
    pub(crate) fn release(&self) {
        let mut s = self.lock();
        s.held = s.held.saturating_sub(1);
        self.changed.notify_all();
    }

    /// Wakes the files waiting for an answer or a place.
    pub(crate) fn answered(&self) {
        let _s = self.lock();
        self.changed.notify_all();
    }

    /// Waits up to `d` for an answer, a place or a slot to come free.
    pub(crate) fn wait_answer(&self, d: Duration) {
        let s = self.lock();
        let _ = self.changed.wait_timeout(s, d);
    }

    /// EMBED_CONCURRENCY.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// The concurrency in effect.
    #[cfg(test)]
    pub(crate) fn limit(&self) -> usize {
        self.lock().limit as usize
    }
}

impl Permit<'_> {
    /// The tokens this request was estimated at.
    pub(crate) fn estimate(&self) -> u64 {
        self.estimate
    }

    /// The endpoint answered with vectors that cost `tokens` (its usage, else the
    /// estimate): the concurrency in effect rises a little.
    pub(crate) fn succeeded(mut self, tokens: Option<u64>) {
        let pace = self.pace;
        let mut s = pace.lock();
        s.limit = (s.limit + 1.0 / (RAISE_EVERY * s.limit)).min(pace.max as f64);
        // The window is kept only for EMBED_MAX_TPM, which prunes it.
        if pace.tpm > 0 {
            s.sent
                .push_back((self.started, tokens.unwrap_or(self.estimate)));
            s.sent_total += tokens.unwrap_or(self.estimate);
        }
        self.end(&mut s);
    }

    /// The endpoint answered 429 or 503: every request pauses for `retry_after` (1 s
    /// when absent; never beyond `budget`, RETRY_MAX_SECS, past which the request
    /// gives up anyway), and the concurrency in effect is cut.
    pub(crate) fn throttled(mut self, retry_after: Option<Duration>, budget: Duration) {
        let pace = self.pace;
        let mut s = pace.lock();
        s.limit = (s.limit * CUT).max(1.0);
        let until = Instant::now() + retry_after.unwrap_or(DEFAULT_PAUSE).min(budget);
        s.paused_until = s.paused_until.max(until);
        self.end(&mut s);
    }

    fn end(&mut self, s: &mut State) {
        if self.done {
            return;
        }
        self.done = true;
        s.in_flight -= 1;
        s.reserved -= self.estimate;
        crate::metrics::set_embed_pace(s.in_flight, s.limit as usize);
        self.pace.changed.notify_all();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done {
            let pace = self.pace;
            let mut s = pace.lock();
            self.end(&mut s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_cut_the_concurrency_near_what_is_served_and_successes_raise_it_slowly() {
        // 32 at once against an endpoint that serves 16: 16 refusals.
        let pace = Pace::new(32, 0, 0);
        let sent: Vec<_> = (0..32).map(|_| pace.acquire(1)).collect();
        for (i, p) in sent.into_iter().enumerate() {
            if i < 16 {
                p.succeeded(None);
            } else {
                p.throttled(Some(Duration::ZERO), Duration::from_secs(1));
            }
        }
        assert_eq!(pace.limit(), 16, "32 × 0.96^16 is 16.6");
        for _ in 0..(32 * 17) {
            pace.acquire(1).succeeded(None);
        }
        assert_eq!(pace.limit(), 17);
        for _ in 0..40000 {
            pace.acquire(1).succeeded(None);
        }
        assert_eq!(pace.limit(), 32, "never above EMBED_CONCURRENCY");
    }

    #[test]
    fn no_more_than_the_limit_is_in_flight() {
        let pace = std::sync::Arc::new(Pace::new(3, 0, 0));
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let now = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| {
                    let p = pace.acquire(1);
                    let n = now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    p.succeeded(None);
                });
            }
        });
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn tokens_per_minute_hold_a_request_that_would_exceed_them() {
        let pace = Pace::new(8, 0, 100);
        pace.acquire(60).succeeded(Some(60));
        let mut s = pace.lock();
        let wait = pace.wait_for(&mut s, Instant::now(), 50);
        assert!(matches!(wait, Some(Some(d)) if d > Duration::from_secs(50)));
        assert_eq!(pace.wait_for(&mut s, Instant::now(), 40), None);
    }
}
