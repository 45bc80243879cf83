//! Embeddings for records that arrive without one: OpenAI-compatible
//! `POST {EMBED_BASE_URL}/embeddings`, batched, retried within RETRY_MAX_SECS.

use crate::backoff::Backoff;
use crate::config::EmbedSettings;
use crate::error::{Error, Result};
use crate::redact::Secret;
use serde_json::json;
use std::time::Duration;

/// Texts sent in one request.
pub(crate) const BATCH: usize = 64;

/// What an embedding request can end in, besides vectors.
#[derive(Debug)]
pub(crate) enum EmbedError {
    /// The endpoint refused this input (400, 413, 422): the file fails.
    Rejected(String),
    /// Unreachable, throttled or misconfigured: the file stays for a later run.
    Unavailable(Error),
}

/// A client for the embeddings endpoint.
#[derive(Clone)]
pub(crate) struct Embedder {
    agent: ureq::Agent,
    url: String,
    model: String,
    key: Option<Secret>,
    dim: Option<usize>,
    budget: Duration,
}

impl Embedder {
    /// From EMBED_* settings.
    pub(crate) fn new(
        settings: &EmbedSettings,
        dim: Option<usize>,
        budget: Duration,
    ) -> Result<Embedder> {
        Ok(Embedder {
            agent: crate::http::agent(Duration::from_secs(60))?,
            url: format!("{}/embeddings", settings.base_url),
            model: settings.model.clone(),
            key: settings.api_key.clone(),
            dim,
            budget,
        })
    }

    /// EMBED_MODEL, recorded with every row whose vector it made.
    pub(crate) fn model(&self) -> &str {
        &self.model
    }

    /// One vector per text, in order.
    pub(crate) fn embed(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, EmbedError> {
        let body = json!({"model": self.model, "input": texts});
        let mut backoff = Backoff::new(self.budget);
        loop {
            let mut req = self
                .agent
                .post(&self.url)
                .set("User-Agent", crate::http::USER_AGENT);
            if let Some(key) = &self.key {
                req = req.set("Authorization", &format!("Bearer {}", key.expose()));
            }
            let (why, hint) = match req.send_json(body.clone()) {
                Ok(resp) => return self.parse(resp, texts.len()),
                Err(ureq::Error::Status(code, resp)) => match code {
                    400 | 413 | 422 => {
                        return Err(EmbedError::Rejected(format!(
                            "the embeddings endpoint rejected the input ({code})"
                        )));
                    }
                    401 | 403 | 404 => {
                        return Err(EmbedError::Unavailable(
                            Error::config(format!("the embeddings endpoint answered {code}"))
                                .with_note("check EMBED_BASE_URL, EMBED_MODEL and EMBED_API_KEY"),
                        ));
                    }
                    _ => (format!("answered {code}"), crate::http::retry_after(&resp)),
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

    fn parse(
        &self,
        resp: ureq::Response,
        n: usize,
    ) -> std::result::Result<Vec<Vec<f32>>, EmbedError> {
        let unavailable =
            |m: String| EmbedError::Unavailable(Error::temp(m).context("computing embeddings"));
        let value: serde_json::Value = resp.into_json().map_err(|e| {
            unavailable(format!(
                "unreadable answer from the embeddings endpoint: {e}"
            ))
        })?;
        let mut data: Vec<(usize, Vec<f32>)> = Vec::with_capacity(n);
        for (i, item) in value["data"].as_array().into_iter().flatten().enumerate() {
            let index = item["index"].as_u64().map_or(i, |x| x as usize);
            let vector: Option<Vec<f32>> = item["embedding"].as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_f64().map(|f| f as f32))
                    .collect()
            });
            match vector {
                Some(v) => data.push((index, v)),
                None => {
                    return Err(unavailable(
                        "the embeddings endpoint answered without vectors".into(),
                    ));
                }
            }
        }
        if data.len() != n {
            return Err(unavailable(format!(
                "the embeddings endpoint answered {} vectors for {n} texts",
                data.len()
            )));
        }
        data.sort_by_key(|(i, _)| *i);
        let vectors: Vec<Vec<f32>> = data.into_iter().map(|(_, v)| v).collect();
        if let Some(dim) = self.dim
            && let Some(v) = vectors.iter().find(|v| v.len() != dim)
        {
            return Err(EmbedError::Rejected(format!(
                "the embeddings endpoint returned {} values, EMBED_DIM is {dim}",
                v.len()
            )));
        }
        Ok(vectors)
    }
}
