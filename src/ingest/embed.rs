//! Embeddings for records that arrive without one (SPEC §12, §13): OpenAI-compatible
//! `POST {EMBED_BASE_URL}/embeddings` in requests of at most EMBED_BATCH texts and
//! EMBED_BATCH_BYTES bytes. A file's requests go out concurrently, as many as the
//! process's shared pace allows (see `pace.rs`), and their answers are handed back
//! in record order; each is retried within RETRY_MAX_SECS; a request the endpoint
//! refuses is split in halves until the one offending text is found.

use crate::backoff::Backoff;
use crate::config::EmbedSettings;
use crate::error::Error;
use crate::ingest::pace::{Pace, Permit};
use crate::redact::Secret;
use serde_json::json;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
/// What an embedding request can end in, besides vectors.
#[derive(Debug)]
pub(crate) enum EmbedError {
    /// The endpoint refused one text (400, 413, 422), or answered a vector that
    /// cannot be stored for it: the file holding it fails.
    Rejected {
        /// Index of the text in the slice given.
        index: usize,
        /// The endpoint's message or what is wrong with the vector (never the text).
        message: String,
    },
    /// Unreachable, throttled, misconfigured or answering wrongly: the file stays
    /// for a later run.
    Unavailable(Error),
}

/// A client for the embeddings endpoint, shared by the workers of one process.
#[derive(Clone)]
pub(crate) struct Embedder {
    url: String,
    model: String,
    key: Option<Secret>,
    dim: Option<usize>,
    budget: Duration,
    timeout: Duration,
    batch: usize,
    batch_bytes: usize,
    reuse: bool,
    pace: Arc<Pace>,
}

/// What the requests of one file's texts cost and what they were answered.
#[derive(Debug, Default)]
pub(crate) struct Spent {
    /// Tokens, as the endpoint's `usage.total_tokens` counts them (else estimated).
    pub(crate) tokens: AtomicU64,
    /// Answers with the wrong number or length of vectors (endpoint faults).
    pub(crate) faults: AtomicU64,
}

/// The estimate of a text's tokens until the endpoint counts them (SPEC §13).
fn estimate(texts: &[&str]) -> u64 {
    texts.iter().map(|t| (t.len() as u64).div_ceil(4)).sum()
}

impl Embedder {
    /// From EMBED_* settings.
    pub(crate) fn new(settings: &EmbedSettings, dim: Option<usize>, budget: Duration) -> Embedder {
        Embedder {
            url: format!("{}/embeddings", settings.base_url),
            model: settings.model.clone(),
            key: settings.api_key.clone(),
            dim,
            budget,
            timeout: settings.timeout,
            batch: settings.batch.max(1),
            batch_bytes: settings.batch_bytes.max(1),
            reuse: settings.reuse,
            pace: Arc::new(Pace::new(
                settings.concurrency,
                settings.max_rps,
                settings.max_tpm,
            )),
        }
    }

    /// EMBED_MODEL, recorded with every row whose vector it made.
    pub(crate) fn model(&self) -> &str {
        &self.model
    }

    /// EMBED_REUSE.
    pub(crate) fn reuse(&self) -> bool {
        self.reuse
    }

    /// EMBED_CONCURRENCY.
    pub(crate) fn concurrency(&self) -> usize {
        self.pace.max()
    }

    /// The requests for `texts`: index ranges of at most EMBED_BATCH texts and
    /// EMBED_BATCH_BYTES bytes; a text over the byte budget goes alone.
    pub(crate) fn groups(&self, texts: &[&str]) -> Vec<Range<usize>> {
        let mut groups = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, t) in texts.iter().enumerate() {
            let full = i - start == self.batch || (i > start && bytes + t.len() > self.batch_bytes);
            if full {
                groups.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += t.len();
        }
        if start < texts.len() {
            groups.push(start..texts.len());
        }
        groups
    }

    /// The vectors of `texts`, request by request (see [`Embedder::groups`]): up to
    /// EMBED_CONCURRENCY requests in flight (as the shared pace allows), each
    /// group's vectors handed to `take` in order. At most twice the concurrency's
    /// worth of groups are fetched ahead of what `take` has taken, so the answers
    /// held here stay bounded. Stops at the first group (in order) that fails.
    pub(crate) fn embed_all<E: From<EmbedError>>(
        &self,
        texts: &[&str],
        spent: &Spent,
        mut take: impl FnMut(Range<usize>, Vec<Vec<f32>>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let groups = self.groups(texts);
        let ahead = 2 * self.pace.limit().max(1);
        let order = Order::new(ahead, &self.pace);
        let threads = groups.len().min(self.pace.limit().max(1));
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    while let Some(g) = order.next_start(groups.len()) {
                        let group = groups[g].clone();
                        let got = self
                            .embed(&texts[group.clone()], spent)
                            .map_err(|e| match e {
                                EmbedError::Rejected { index, message } => EmbedError::Rejected {
                                    index: index + group.start,
                                    message,
                                },
                                other => other,
                            });
                        order.finish(g, got);
                    }
                });
            }
            let outcome = (0..groups.len()).try_for_each(|g| {
                let vectors = order.wait(g).map_err(E::from)?;
                take(groups[g].clone(), vectors)
            });
            order.stop();
            outcome
        })
    }

    /// One vector per text, in order; a refused request is split until the
    /// offending text is found.
    pub(crate) fn embed(
        &self,
        texts: &[&str],
        spent: &Spent,
    ) -> std::result::Result<Vec<Vec<f32>>, EmbedError> {
        match self.request(texts, spent) {
            Err(EmbedError::Rejected { .. }) if texts.len() > 1 => {
                let mid = texts.len() / 2;
                let mut left = self.embed(&texts[..mid], spent)?;
                let right = self.embed(&texts[mid..], spent).map_err(|e| match e {
                    EmbedError::Rejected { index, message } => EmbedError::Rejected {
                        index: index + mid,
                        message,
                    },
                    other => other,
                })?;
                left.extend(right);
                Ok(left)
            }
            other => other,
        }
    }

    /// One request, retried within RETRY_MAX_SECS while the endpoint is unavailable.
    fn request(
        &self,
        texts: &[&str],
        spent: &Spent,
    ) -> std::result::Result<Vec<Vec<f32>>, EmbedError> {
        let body = json!({"model": self.model, "input": texts}).to_string();
        let bearer = self.key.as_ref().map(|k| format!("Bearer {}", k.expose()));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(b) = &bearer {
            headers.push(("Authorization", b.as_str()));
        }
        let mut backoff = Backoff::new(self.budget);
        loop {
            let permit = self.pace.acquire(estimate(texts));
            let sent = crate::http::post(&self.url, &headers, body.as_bytes(), self.timeout);
            crate::heartbeat::beat();
            let (why, hint) = match self.answer(sent, permit, texts.len(), spent)? {
                Ok(vectors) => return Ok(vectors),
                Err(retry) => retry,
            };
            log::warn!("embeddings endpoint {why}; retrying");
            if !backoff.wait(hint) {
                return Err(EmbedError::Unavailable(
                    Error::temp(format!("the embeddings endpoint {why}"))
                        .context("computing embeddings")
                        .with_note("nothing was lost; the files stay and a later run retries them"),
                ));
            }
        }
    }

    /// What an answer means: vectors, a refusal or misconfiguration (`Err`), or
    /// something to retry (`Ok(Err((why, Retry-After)))`).
    #[allow(clippy::type_complexity)]
    fn answer(
        &self,
        sent: std::result::Result<crate::http::Response, ureq::Error>,
        permit: Permit<'_>,
        n: usize,
        spent: &Spent,
    ) -> std::result::Result<
        std::result::Result<Vec<Vec<f32>>, (String, Option<Duration>)>,
        EmbedError,
    > {
        let mut resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                crate::metrics::EMBED_REQUESTS.add("error", 1);
                let why = match e {
                    ureq::Error::Timeout(_) => {
                        format!(
                            "did not answer within EMBED_TIMEOUT_SECS ({}s)",
                            self.timeout.as_secs()
                        )
                    }
                    other => other.to_string(),
                };
                return Ok(Err((why, None)));
            }
        };
        let code = resp.status().as_u16();
        crate::metrics::EMBED_REQUESTS.add(&code.to_string(), 1);
        match code {
            200..=299 => match self.parse(&mut resp, n) {
                Ok((Answer::Vectors(v), tokens)) => {
                    let tokens = tokens.unwrap_or_else(|| permit.estimate());
                    spent.tokens.fetch_add(tokens, Ordering::Relaxed);
                    crate::metrics::EMBED_TOKENS.add(&self.model, tokens);
                    permit.succeeded(Some(tokens));
                    Ok(Ok(v))
                }
                Ok((Answer::Bad { index, message }, _)) => {
                    Err(EmbedError::Rejected { index, message })
                }
                Err(fault) => {
                    spent.faults.fetch_add(1, Ordering::Relaxed);
                    Ok(Err((fault, None)))
                }
            },
            400 | 413 | 422 => Err(EmbedError::Rejected {
                index: 0,
                message: format!(
                    "the embeddings endpoint rejected the text ({code}): {}",
                    endpoint_message(&mut resp)
                ),
            }),
            401 | 403 | 404 => Err(EmbedError::Unavailable(
                Error::config(format!("the embeddings endpoint answered {code}"))
                    .with_note("check EMBED_BASE_URL, EMBED_MODEL and EMBED_API_KEY"),
            )),
            429 | 503 => {
                let hint = crate::http::retry_after(&resp);
                permit.throttled(hint);
                Ok(Err((format!("answered {code}"), hint)))
            }
            _ => Ok(Err((
                format!("answered {code}"),
                crate::http::retry_after(&resp),
            ))),
        }
    }

    /// The vectors of an answer and its `usage.total_tokens`; `Err` for an endpoint
    /// fault (unreadable, or the wrong count or length of vectors).
    fn parse(
        &self,
        resp: &mut crate::http::Response,
        n: usize,
    ) -> std::result::Result<(Answer, Option<u64>), String> {
        let value: serde_json::Value = resp
            .body_mut()
            .with_config()
            .limit(ANSWER_LIMIT)
            .read_json()
            .map_err(|e| format!("answered unreadable JSON: {e}"))?;
        let tokens = value["usage"]["total_tokens"].as_u64();
        let mut data: Vec<(usize, Vec<f64>)> = Vec::with_capacity(n);
        for (i, item) in value["data"].as_array().into_iter().flatten().enumerate() {
            let index = item["index"].as_u64().map_or(i, |x| x as usize);
            let vector = item["embedding"]
                .as_array()
                .ok_or("answered without vectors")?
                .iter()
                .map(|x| x.as_f64().unwrap_or(f64::NAN))
                .collect();
            data.push((index, vector));
        }
        if data.len() != n {
            return Err(format!("answered {} vectors for {n} texts", data.len()));
        }
        data.sort_by_key(|(i, _)| *i);
        let want = self.dim.or_else(|| data.first().map(|(_, v)| v.len()));
        if let Some((_, v)) = data.iter().find(|(_, v)| Some(v.len()) != want) {
            return Err(match self.dim {
                Some(dim) => format!(
                    "answered a vector of {} values, EMBED_DIM is {dim}",
                    v.len()
                ),
                None => "answered vectors of different lengths".to_string(),
            });
        }
        let mut vectors = Vec::with_capacity(n);
        for (index, v) in data {
            let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                let message = format!(
                    "the embeddings endpoint answered a vector whose element {i} is not a finite f32"
                );
                return Ok((Answer::Bad { index, message }, tokens));
            }
            vectors.push(v);
        }
        Ok((Answer::Vectors(vectors), tokens))
    }
}

/// The largest answer read (EMBED_BATCH texts of 4,096 dimensions as JSON fit).
const ANSWER_LIMIT: u64 = 1 << 30;

/// The groups of one file in flight: which to start next, and the answers that
/// came back before the ones ahead of them were taken. Each started group holds
/// one of the process's places (see [`Pace::hold`]) until its answer is taken.
struct Order<'p> {
    state: Mutex<OrderState>,
    changed: Condvar,
    ahead: usize,
    pace: &'p Pace,
}

type Got = std::result::Result<Vec<Vec<f32>>, EmbedError>;

struct OrderState {
    next: usize,
    taken: usize,
    stopped: bool,
    done: BTreeMap<usize, Got>,
}

impl<'p> Order<'p> {
    fn new(ahead: usize, pace: &'p Pace) -> Order<'p> {
        Order {
            pace,
            state: Mutex::new(OrderState {
                next: 0,
                taken: 0,
                stopped: false,
                done: BTreeMap::new(),
            }),
            changed: Condvar::new(),
            ahead,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OrderState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next group to request, once it is within `ahead` of the last taken;
    /// `None` when all are started or the file stopped.
    fn next_start(&self, len: usize) -> Option<usize> {
        self.pace.hold();
        let mut s = self.lock();
        loop {
            if s.stopped || s.next >= len {
                drop(s);
                self.pace.release();
                return None;
            }
            if s.next < s.taken + self.ahead {
                s.next += 1;
                return Some(s.next - 1);
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn finish(&self, g: usize, got: Got) {
        let mut s = self.lock();
        if s.stopped {
            self.pace.release();
            return;
        }
        s.done.insert(g, got);
        self.changed.notify_all();
    }

    /// Waits for group `g`'s answer.
    fn wait(&self, g: usize) -> Got {
        let mut s = self.lock();
        loop {
            if let Some(got) = s.done.remove(&g) {
                s.taken = g + 1;
                self.pace.release();
                self.changed.notify_all();
                return got;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// No more groups start (the file failed, or all were taken).
    fn stop(&self) {
        let mut s = self.lock();
        s.stopped = true;
        for _ in std::mem::take(&mut s.done) {
            self.pace.release();
        }
        self.changed.notify_all();
    }
}

/// A parsed answer.
enum Answer {
    Vectors(Vec<Vec<f32>>),
    Bad { index: usize, message: String },
}

/// The endpoint's own error message (OpenAI's `error.message`, else the start of the
/// body), cut to a length fit for a reason file.
fn endpoint_message(resp: &mut crate::http::Response) -> String {
    let text = resp
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(text);
    let mut cut: String = message.chars().take(300).collect();
    if cut.len() < message.len() {
        cut.push('…');
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedder(batch: usize, batch_bytes: usize) -> Option<Embedder> {
        let settings = EmbedSettings {
            base_url: "http://127.0.0.1:9".into(),
            model: "m".into(),
            api_key: None,
            batch,
            batch_bytes,
            max_rps: 0,
            max_tpm: 0,
            concurrency: 8,
            timeout: Duration::from_secs(60),
            reuse: true,
        };
        Some(Embedder::new(&settings, None, Duration::from_secs(1)))
    }

    #[test]
    fn requests_respect_count_and_byte_budgets() {
        let Some(e) = embedder(3, 10) else {
            unreachable!("an embedder")
        };
        let texts = ["aaaa", "bbbb", "c", "dddddddddddddddd", "e", "f", "g", "h"];
        assert_eq!(e.groups(&texts), vec![0..3, 3..4, 4..7, 7..8]);
        assert!(e.groups(&[]).is_empty());
    }
}
