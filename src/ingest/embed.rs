//! Embeddings for records that arrive without one (SPEC §12): OpenAI-compatible
//! `POST {EMBED_BASE_URL}/embeddings` in requests of at most EMBED_BATCH texts and
//! EMBED_BATCH_BYTES bytes, at most EMBED_MAX_RPS requests a second across every
//! worker of the process (a 429's Retry-After pauses them all), retried within
//! RETRY_MAX_SECS; a request the endpoint refuses is split in halves until the one
//! offending text is found.

use crate::backoff::Backoff;
use crate::config::EmbedSettings;
use crate::error::{Error, Result};
use crate::redact::Secret;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// The shared pace of one process's requests.
#[derive(Debug)]
struct Pace {
    /// When the next request may start (EMBED_MAX_RPS).
    next: Instant,
    /// Until when a 429 paused every worker.
    paused_until: Instant,
}

/// A client for the embeddings endpoint, shared by the workers of one process.
#[derive(Clone)]
pub(crate) struct Embedder {
    agent: ureq::Agent,
    url: String,
    model: String,
    key: Option<Secret>,
    dim: Option<usize>,
    budget: Duration,
    batch: usize,
    batch_bytes: usize,
    reuse: bool,
    interval: Option<Duration>,
    pace: Arc<Mutex<Pace>>,
}

/// Timeout of one embeddings request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl Embedder {
    /// From EMBED_* settings.
    pub(crate) fn new(
        settings: &EmbedSettings,
        dim: Option<usize>,
        budget: Duration,
    ) -> Result<Embedder> {
        let now = Instant::now();
        Ok(Embedder {
            agent: crate::http::agent(REQUEST_TIMEOUT, [settings.base_url.as_str()])?,
            url: format!("{}/embeddings", settings.base_url),
            model: settings.model.clone(),
            key: settings.api_key.clone(),
            dim,
            budget,
            batch: settings.batch.max(1),
            batch_bytes: settings.batch_bytes.max(1),
            reuse: settings.reuse,
            interval: (settings.max_rps > 0)
                .then(|| Duration::from_secs_f64(1.0 / f64::from(settings.max_rps))),
            pace: Arc::new(Mutex::new(Pace {
                next: now,
                paused_until: now,
            })),
        })
    }

    /// EMBED_MODEL, recorded with every row whose vector it made.
    pub(crate) fn model(&self) -> &str {
        &self.model
    }

    /// EMBED_REUSE.
    pub(crate) fn reuse(&self) -> bool {
        self.reuse
    }

    /// The requests for `texts`: index ranges of at most EMBED_BATCH texts and
    /// EMBED_BATCH_BYTES bytes; a text over the byte budget goes alone.
    pub(crate) fn groups(&self, texts: &[&str]) -> Vec<std::ops::Range<usize>> {
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

    /// One vector per text, in order; a refused request is split until the
    /// offending text is found. `on_fault` is called for each answer with the wrong
    /// number or length of vectors (retried as an endpoint fault).
    pub(crate) fn embed(
        &self,
        texts: &[&str],
        on_fault: &mut dyn FnMut(),
    ) -> std::result::Result<Vec<Vec<f32>>, EmbedError> {
        match self.request(texts, on_fault) {
            Err(EmbedError::Rejected { .. }) if texts.len() > 1 => {
                let mid = texts.len() / 2;
                let mut left = self.embed(&texts[..mid], on_fault)?;
                let right = self.embed(&texts[mid..], on_fault).map_err(|e| match e {
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

    /// Waits for this process's next request slot (EMBED_MAX_RPS, a 429's pause).
    fn wait_turn(&self) {
        loop {
            let wait = {
                let mut pace = self.pace.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let at = pace.next.max(pace.paused_until);
                if at <= now {
                    if let Some(interval) = self.interval {
                        pace.next = now + interval;
                    }
                    None
                } else {
                    Some(at - now)
                }
            };
            match wait {
                None => return,
                Some(d) => std::thread::sleep(d),
            }
        }
    }

    /// Pauses every worker's requests for `d` (a 429's Retry-After).
    fn pause(&self, d: Duration) {
        let mut pace = self.pace.lock().unwrap_or_else(|p| p.into_inner());
        pace.paused_until = pace.paused_until.max(Instant::now() + d);
    }

    fn request(
        &self,
        texts: &[&str],
        on_fault: &mut dyn FnMut(),
    ) -> std::result::Result<Vec<Vec<f32>>, EmbedError> {
        let body = json!({"model": self.model, "input": texts});
        let mut backoff = Backoff::new(self.budget);
        loop {
            self.wait_turn();
            let mut req = self
                .agent
                .post(&self.url)
                .set("User-Agent", crate::http::USER_AGENT);
            if let Some(key) = &self.key {
                req = req.set("Authorization", &format!("Bearer {}", key.expose()));
            }
            let sent = req.send_json(body.clone());
            crate::heartbeat::beat();
            let (why, hint) = match sent {
                Ok(resp) => match self.parse(resp, texts.len()) {
                    Ok(Answer::Vectors(v)) => return Ok(v),
                    Ok(Answer::Bad { index, message }) => {
                        return Err(EmbedError::Rejected { index, message });
                    }
                    Err(fault) => {
                        on_fault();
                        (fault, None)
                    }
                },
                Err(ureq::Error::Status(code, resp)) => match code {
                    400 | 413 | 422 => {
                        return Err(EmbedError::Rejected {
                            index: 0,
                            message: format!(
                                "the embeddings endpoint rejected the text ({code}): {}",
                                endpoint_message(resp)
                            ),
                        });
                    }
                    401 | 403 | 404 => {
                        return Err(EmbedError::Unavailable(
                            Error::config(format!("the embeddings endpoint answered {code}"))
                                .with_note("check EMBED_BASE_URL, EMBED_MODEL and EMBED_API_KEY"),
                        ));
                    }
                    _ => {
                        let hint = crate::http::retry_after(&resp);
                        if let (429, Some(d)) = (code, hint) {
                            self.pause(d);
                        }
                        (format!("answered {code}"), hint)
                    }
                },
                Err(ureq::Error::Transport(t)) => (t.to_string(), None),
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

    /// The vectors of an answer; `Err` for an endpoint fault (wrong count or length).
    fn parse(&self, resp: ureq::Response, n: usize) -> std::result::Result<Answer, String> {
        let value: serde_json::Value = resp
            .into_json()
            .map_err(|e| format!("answered unreadable JSON: {e}"))?;
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
                return Ok(Answer::Bad {
                    index,
                    message: format!(
                        "the embeddings endpoint answered a vector whose element {i} is not a finite f32"
                    ),
                });
            }
            vectors.push(v);
        }
        Ok(Answer::Vectors(vectors))
    }
}

/// A parsed answer.
enum Answer {
    Vectors(Vec<Vec<f32>>),
    Bad { index: usize, message: String },
}

/// The endpoint's own error message (OpenAI's `error.message`, else the start of the
/// body), cut to a length fit for a reason file.
fn endpoint_message(resp: ureq::Response) -> String {
    let text = resp.into_string().unwrap_or_default();
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
            reuse: true,
        };
        Embedder::new(&settings, None, Duration::from_secs(1)).ok()
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
