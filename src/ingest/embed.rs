//! Embeddings for records that arrive without one (SPEC §12, §13): OpenAI-compatible
//! `POST {EMBED_BASE_URL}/embeddings` in requests of at most EMBED_BATCH texts and
//! EMBED_BATCH_BYTES bytes. One pool of EMBED_CONCURRENCY threads sends the
//! requests of every file of the process, earliest-claimed file first, as the
//! shared pace allows (see `pace.rs`); a file queues its requests while it reads
//! on, and takes the answers back in record order ([`Fetch`]). Each request is
//! retried within RETRY_MAX_SECS; a request the endpoint refuses is split in halves
//! until the one offending text is found.

use crate::backoff::Backoff;
use crate::config::EmbedSettings;
use crate::error::Error;
use crate::ingest::pace::{Pace, Permit};
use crate::redact::Secret;
use std::collections::{BinaryHeap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
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
    /// EMBED_MEMORY_BYTES.
    memory_bytes: usize,
    /// The column is halfvec: a vector with an element beyond f16's range is a
    /// fault of the endpoint's answer (SPEC §15), like a wrong length.
    half: bool,
    pace: Arc<Pace>,
    pool: Arc<Pool>,
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
            memory_bytes: settings.memory_bytes,
            half: false,
            pace: Arc::new(Pace::new(
                settings.concurrency,
                settings.max_rps,
                settings.max_tpm,
            )),
            pool: Arc::new(Pool::default()),
        }
    }

    /// The embedder for a table whose column is `embedding`.
    pub(crate) fn storing(self, embedding: crate::storage::EmbeddingType) -> Embedder {
        Embedder {
            half: embedding.half(),
            ..self
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

    /// EMBED_MEMORY_BYTES.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.memory_bytes
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

    /// A file's requests, queued as it reads and answered in order (see [`Fetch`]).
    /// `seq` (its claim sequence) sets its place in the pool's queue: the
    /// earliest-claimed file's requests go first, so that files finish fetching one
    /// after another and their COPY overlaps the fetching of the next.
    pub(crate) fn fetch(&self, seq: i64, spent: Arc<Spent>) -> Fetch<'_> {
        self.pool.start(self);
        Fetch {
            embedder: self,
            seq,
            spent,
            next: 0,
            waiting: VecDeque::new(),
        }
    }

    /// One vector per text, in order; a refused request is split until the
    /// offending text is found.
    pub(crate) fn embed(
        &self,
        texts: &[&str],
        spent: &Spent,
    ) -> std::result::Result<Answered, EmbedError> {
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
    fn request(&self, texts: &[&str], spent: &Spent) -> std::result::Result<Answered, EmbedError> {
        // Serialized from the borrowed texts (a `json!` tree would copy each
        // first) into this thread's buffer, kept from request to request.
        let mut kept = BODY.take();
        kept.clear();
        serde_json::to_writer(
            &mut kept,
            &Request {
                model: &self.model,
                input: texts,
            },
        )
        .map_err(|e| EmbedError::Unavailable(Error::failed(format!("encoding a request: {e}"))))?;
        let sent = self.send(&kept, texts, spent);
        // A request far larger than the usual does not pin its buffer.
        if kept.capacity() <= BODY_KEPT {
            BODY.set(kept);
        }
        sent
    }

    /// [`Embedder::request`] with its body encoded.
    fn send(
        &self,
        body: &[u8],
        texts: &[&str],
        spent: &Spent,
    ) -> std::result::Result<Answered, EmbedError> {
        let bearer = self.key.as_ref().map(|k| format!("Bearer {}", k.expose()));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(b) = &bearer {
            headers.push(("Authorization", b.as_str()));
        }
        let mut backoff = Backoff::new(self.budget);
        loop {
            let permit = self.pace.acquire(estimate(texts));
            let sent = crate::http::post(&self.url, &headers, body, self.timeout);
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
    ) -> std::result::Result<std::result::Result<Answered, (String, Option<Duration>)>, EmbedError>
    {
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
                permit.throttled(hint, self.budget);
                Ok(Err((format!("answered {code}"), hint)))
            }
            _ => Ok(Err((
                format!("answered {code}"),
                crate::http::retry_after(&resp),
            ))),
        }
    }

    /// The vectors of an answer and its `usage.total_tokens`; `Err` for an endpoint
    /// fault (unreadable, the wrong count or length of vectors, or for a halfvec
    /// column an element beyond f16's range).
    fn parse(
        &self,
        resp: &mut crate::http::Response,
        n: usize,
    ) -> std::result::Result<(Answer, Option<u64>), String> {
        // Straight into typed vectors as the answer streams in: a generic JSON tree
        // of every element would take ten times the answer's size, and reading the
        // whole answer first (what ureq's `read_json` does) would hold its text
        // beside its vectors, in each of EMBED_CONCURRENCY threads at once. The
        // small buffer spares serde_json a call into the connection per byte.
        // The values land in an answer buffer, in the order they come: the order
        // of the texts, as endpoints answer, so that it is the answer as it is.
        STAGE.set(spare_answer(n * self.dim.unwrap_or(0)));
        // No more values than n vectors can hold: an endpoint that streams numbers
        // without end would otherwise grow the buffer up to ANSWER_LIMIT, in every
        // request thread at once.
        STAGE_CAP.set(n.saturating_mul(self.dim.unwrap_or(MAX_DIM)));
        let reader = resp.body_mut().with_config().limit(ANSWER_LIMIT).reader();
        let body: Body =
            serde_json::from_reader(std::io::BufReader::with_capacity(ANSWER_BUFFER, reader))
                .map_err(|e| {
                    // Not kept for the thread's next request: it may be large.
                    drop(STAGE.take());
                    format!("answered unreadable JSON: {e}")
                })?;
        let tokens = body.usage.and_then(|u| u.total_tokens);
        let stage = STAGE.take();
        self.order(body.data, stage, n)
            .map(|answer| (answer, tokens))
    }

    /// The vectors staged for an answer's items, in text order, checked.
    fn order(
        &self,
        items: Vec<Item>,
        stage: Vec<f32>,
        n: usize,
    ) -> std::result::Result<Answer, String> {
        let mut data: Vec<(usize, Range<usize>)> = Vec::with_capacity(n);
        for (i, item) in items.into_iter().enumerate() {
            let index = item.index.map_or(i, |x| x as usize);
            let span = item.embedding.ok_or("answered without vectors")?.0;
            data.push((index, span));
        }
        if data.len() != n {
            return Err(format!("answered {} vectors for {n} texts", data.len()));
        }
        data.sort_by_key(|(i, _)| *i);
        // Each text's vector exactly once: an index repeated or out of range would
        // put a vector on another record's row.
        if data.iter().enumerate().any(|(at, (i, _))| *i != at) {
            return Err("answered vectors whose indexes are not 0 to n - 1, each once".into());
        }
        let want = self.dim.or_else(|| data.first().map(|(_, r)| r.len()));
        if want == Some(0) {
            return Err("answered empty vectors".into());
        }
        if let Some((_, r)) = data.iter().find(|(_, r)| Some(r.len()) != want) {
            return Err(match self.dim {
                Some(dim) => format!(
                    "answered a vector of {} values, EMBED_DIM is {dim}",
                    r.len()
                ),
                None => "answered vectors of different lengths".to_string(),
            });
        }
        let dim = want.unwrap_or(0);
        let in_place = data
            .iter()
            .enumerate()
            .all(|(i, (_, r))| r.start == i * dim)
            && stage.len() == n * dim;
        let mut floats = if in_place {
            Vec::new()
        } else {
            spare_answer(n * dim)
        };
        for (index, r) in data {
            let v = stage.get(r).unwrap_or_default();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                let message = format!(
                    "the embeddings endpoint answered a vector whose element {i} is not a finite f32"
                );
                give_back_answer(floats);
                give_back_answer(stage);
                return Ok(Answer::Bad { index, message });
            }
            // Finite but beyond f16: not the text's fault, the answer's (a model
            // whose vectors a halfvec cannot hold), so retried and counted.
            if self.half
                && let Some((i, x)) = crate::binary16::first_beyond(v)
            {
                give_back_answer(floats);
                give_back_answer(stage);
                return Err(format!(
                    "answered a vector whose element {i} ({x}) is beyond halfvec's range (±{}), for text {index} of the request",
                    crate::binary16::MAX
                ));
            }
            if !in_place {
                floats.extend_from_slice(v);
            }
        }
        let floats = if in_place {
            stage
        } else {
            give_back_answer(stage);
            floats
        };
        Ok(Answer::Vectors(Answered {
            parts: vec![Flat {
                floats,
                dim,
                count: n,
            }],
        }))
    }
}

/// The vectors of a request's answer, in text order: one run of vectors of one
/// length per request answered (several when a refused request was split).
#[derive(Debug, Default)]
pub(crate) struct Answered {
    pub(crate) parts: Vec<Flat>,
}

impl Answered {
    fn extend(&mut self, other: Answered) {
        self.parts.extend(other.parts);
    }
}

/// The vectors of one request's answer end to end, in one allocation: one per
/// vector, made by a request thread and freed by another, left the allocator's
/// per-thread arenas fragmented.
#[derive(Debug)]
pub(crate) struct Flat {
    floats: Vec<f32>,
    dim: usize,
    count: usize,
}

impl Flat {
    /// How many vectors it holds.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Vector `i`.
    pub(crate) fn get(&self, i: usize) -> &[f32] {
        self.floats
            .get(i * self.dim..(i + 1) * self.dim)
            .unwrap_or_default()
    }

    /// Done with: its buffer serves a later answer.
    pub(crate) fn recycle(self) {
        give_back_answer(self.floats);
    }
}

/// Answer buffers done with, for later answers: there are never more of them than
/// answers held at once (at most 2 × EMBED_CONCURRENCY, see [`Pace::hold`]).
static SPARE_ANSWERS: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// An empty buffer for `floats` values.
fn spare_answer(floats: usize) -> Vec<f32> {
    let spare = SPARE_ANSWERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop();
    let mut v = spare.unwrap_or_default();
    v.clear();
    v.reserve_exact(floats);
    v
}

/// Keeps `v` for a later answer, unless it is oversized or enough are kept.
fn give_back_answer(v: Vec<f32>) {
    if v.capacity() > ANSWER_KEPT {
        return;
    }
    let mut spare = SPARE_ANSWERS.lock().unwrap_or_else(|p| p.into_inner());
    if spare.len() < SPARE_MAX {
        spare.push(v);
    }
}

/// The largest answer buffer kept for a later answer, in values.
const ANSWER_KEPT: usize = 1 << 20;

/// The most answer buffers kept for later answers.
const SPARE_MAX: usize = 2 * 1024;

/// An OpenAI-compatible request.
#[derive(serde::Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [&'a str],
}

/// An OpenAI-compatible answer, as far as it is read.
#[derive(serde::Deserialize)]
struct Body {
    #[serde(default)]
    data: Vec<Item>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// One vector of an answer.
#[derive(serde::Deserialize)]
struct Item {
    index: Option<u64>,
    embedding: Option<Floats>,
}

/// A vector of an answer, read straight into f32s at the end of this thread's
/// staging buffer (its range there): a number beyond f32's range becomes an
/// infinity and a null a NaN, so that the check above fails the vector's file for
/// either.
struct Floats(Range<usize>);

impl<'de> serde::Deserialize<'de> for Floats {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Floats, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Floats;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of numbers")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Floats, A::Error> {
                // Taken out for the array and put back after it (an error drops
                // it: the answer is not used then). Values already staged stay:
                // they are the answer's earlier vectors.
                let mut stage = STAGE.take();
                let start = stage.len();
                let cap = STAGE_CAP.get();
                while let Some(x) = seq.next_element::<Option<f64>>()? {
                    if stage.len() >= cap {
                        return Err(serde::de::Error::custom(format!(
                            "more values than {cap}, what the texts' vectors can hold"
                        )));
                    }
                    stage.push(x.map_or(f32::NAN, |x| x as f32));
                }
                let end = stage.len();
                STAGE.set(stage);
                Ok(Floats(start..end))
            }
        }
        d.deserialize_seq(Visit)
    }
}

thread_local! {
    /// The values of the answer this request thread is reading, end to end, in
    /// the buffer that becomes the answer's.
    static STAGE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    /// How many values the answer being read may hold in all.
    static STAGE_CAP: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    /// This request thread's request body.
    static BODY: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The largest request body a request thread keeps for its next request.
const BODY_KEPT: usize = 4 << 20;

/// What an answer says it cost.
#[derive(serde::Deserialize)]
struct Usage {
    total_tokens: Option<u64>,
}

/// The most dimensions a vector may have when EMBED_DIM is not set (pgvector's
/// own limit for a `vector` column is 16,000).
const MAX_DIM: usize = 16_000;

/// The largest answer read (EMBED_BATCH texts of 4,096 dimensions as JSON fit).
const ANSWER_LIMIT: u64 = 1 << 30;

/// The buffer an answer is parsed through.
const ANSWER_BUFFER: usize = 8 << 10;

/// An answer of one request: its vectors, or why there are none.
pub(crate) type Got = std::result::Result<Answered, EmbedError>;

/// A request's texts, owned: one buffer rather than one allocation per text.
pub(crate) struct Texts {
    all: String,
    ends: Vec<usize>,
}

impl Texts {
    /// A copy of `texts`.
    pub(crate) fn of(texts: &[&str]) -> Texts {
        let mut all = String::with_capacity(texts.iter().map(|t| t.len()).sum());
        let mut ends = Vec::with_capacity(texts.len());
        for t in texts {
            all.push_str(t);
            ends.push(all.len());
        }
        Texts { all, ends }
    }

    /// The texts, in order.
    fn list(&self) -> Vec<&str> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let t = self.all.get(start..end).unwrap_or_default();
                start = end;
                t
            })
            .collect()
    }
}

/// Where a request's answer lands for its file to take.
#[derive(Default)]
struct Slot {
    got: Mutex<Option<Got>>,
}

/// One queued request: its texts (owned, so that its file reads on), its file's
/// claim sequence and its place among the file's requests.
struct Job {
    seq: i64,
    group: usize,
    texts: Texts,
    spent: Arc<Spent>,
    slot: Arc<Slot>,
}

impl PartialEq for Job {
    fn eq(&self, other: &Job) -> bool {
        (self.seq, self.group) == (other.seq, other.group)
    }
}

impl Eq for Job {}

impl PartialOrd for Job {
    fn partial_cmp(&self, other: &Job) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Job {
    /// The max-heap pops the earliest-claimed file's first request.
    fn cmp(&self, other: &Job) -> std::cmp::Ordering {
        (other.seq, other.group).cmp(&(self.seq, self.group))
    }
}

/// The process's request threads (EMBED_CONCURRENCY of them, started with the
/// first file that needs one) and their queue.
#[derive(Default)]
struct Pool {
    jobs: Mutex<BinaryHeap<Job>>,
    queued: Condvar,
    started: OnceLock<()>,
}

impl Pool {
    fn start(&self, embedder: &Embedder) {
        self.started.get_or_init(|| {
            for n in 0..embedder.pace.max() {
                let e = embedder.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("embed-{n}"))
                    .spawn(move || e.pool.serve(&e));
                if let Err(err) = spawned {
                    log::warn!("cannot start an embeddings request thread: {err}");
                }
            }
        });
    }

    fn serve(&self, embedder: &Embedder) {
        loop {
            let job = {
                let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if let Some(job) = jobs.pop() {
                        break job;
                    }
                    jobs = self.queued.wait(jobs).unwrap_or_else(|p| p.into_inner());
                }
            };
            let texts = job.texts.list();
            let got = embedder.embed(&texts, &job.spent);
            *job.slot.got.lock().unwrap_or_else(|p| p.into_inner()) = Some(got);
            embedder.pace.answered();
        }
    }

    fn push(&self, job: Job) {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(job);
        self.queued.notify_one();
    }
}

/// One file's requests: queued in order as the file is read, answers taken back
/// in the same order. At most 2 × EMBED_CONCURRENCY requests of the whole process
/// are queued, in flight or answered and not yet taken (see [`Pace::hold`]), so
/// the answers and texts held here stay bounded whatever the file's size.
pub(crate) struct Fetch<'e> {
    embedder: &'e Embedder,
    seq: i64,
    spent: Arc<Spent>,
    next: usize,
    waiting: VecDeque<Arc<Slot>>,
}

impl Fetch<'_> {
    /// Queues a request for `texts`, once a place is free; meanwhile hands the
    /// answers that are back, in order, to `take`.
    pub(crate) fn submit<E: From<EmbedError>>(
        &mut self,
        texts: Texts,
        take: &mut impl FnMut(Answered) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        loop {
            self.take_ready(take)?;
            if self.embedder.pace.try_hold() {
                break;
            }
            // Places are freed by answers taken, this file's or another's: look
            // again shortly (the oldest of ours may be back by then).
            self.embedder.pace.wait_answer(Duration::from_millis(5));
        }
        let slot = Arc::new(Slot::default());
        self.embedder.pool.push(Job {
            seq: self.seq,
            group: self.next,
            texts,
            spent: self.spent.clone(),
            slot: slot.clone(),
        });
        self.next += 1;
        self.waiting.push_back(slot);
        Ok(())
    }

    /// Waits for the oldest request's answer and hands it (and any after it that
    /// are back) to `take`; false when none is waiting.
    pub(crate) fn take_next<E: From<EmbedError>>(
        &mut self,
        take: &mut impl FnMut(Answered) -> std::result::Result<(), E>,
    ) -> std::result::Result<bool, E> {
        let before = self.waiting.len();
        while before > 0 && self.waiting.len() == before {
            self.take_ready(take)?;
            if self.waiting.len() == before {
                self.embedder.pace.wait_answer(Duration::from_millis(5));
            }
        }
        Ok(before > 0)
    }

    /// Hands every remaining answer, in order, to `take`.
    pub(crate) fn finish<E: From<EmbedError>>(
        &mut self,
        take: &mut impl FnMut(Answered) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        while !self.waiting.is_empty() {
            self.take_ready(take)?;
            if !self.waiting.is_empty() {
                self.embedder.pace.wait_answer(Duration::from_millis(5));
            }
        }
        Ok(())
    }

    /// The answers at the front that are back, in order.
    fn take_ready<E: From<EmbedError>>(
        &mut self,
        take: &mut impl FnMut(Answered) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        while let Some(front) = self.waiting.front() {
            let Some(got) = front.got.lock().unwrap_or_else(|p| p.into_inner()).take() else {
                return Ok(());
            };
            self.waiting.pop_front();
            self.embedder.pace.release();
            take(got?)?;
        }
        Ok(())
    }
}

impl Drop for Fetch<'_> {
    /// A file that stopped (at a bad record, in an outage) gives up its requests:
    /// those still queued leave the queue, those in flight are left to end (their
    /// answers go nowhere), and every place of this file is given back.
    fn drop(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        {
            let mut jobs = self
                .embedder
                .pool
                .jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let waiting = &self.waiting;
            jobs.retain(|j| !waiting.iter().any(|w| Arc::ptr_eq(w, &j.slot)));
        }
        for _ in self.waiting.drain(..) {
            self.embedder.pace.release();
        }
    }
}

/// A parsed answer.
enum Answer {
    Vectors(Answered),
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
            memory_bytes: 4 << 20,
        };
        Some(Embedder::new(&settings, None, Duration::from_secs(1)))
    }

    /// An answer's body as `parse` reads it.
    fn answer(e: &Embedder, json: &str, n: usize) -> std::result::Result<Answer, String> {
        STAGE.set(Vec::new());
        STAGE_CAP.set(usize::MAX);
        let body: Body = serde_json::from_str(json).map_err(|e| e.to_string())?;
        e.order(body.data, STAGE.take(), n)
    }

    #[test]
    fn answers_land_in_text_order_whatever_order_they_come_in() {
        let Some(e) = embedder(64, 1000) else {
            unreachable!("an embedder")
        };
        let in_order = r#"{"data":[{"index":0,"embedding":[1,2]},{"index":1,"embedding":[3,4]}]}"#;
        let reversed = r#"{"data":[{"index":1,"embedding":[3,4]},{"index":0,"embedding":[1,2]}]}"#;
        for json in [in_order, reversed] {
            let Ok(Answer::Vectors(got)) = answer(&e, json, 2) else {
                unreachable!("vectors for {json}")
            };
            assert_eq!(got.parts.len(), 1);
            assert_eq!(got.parts[0].count(), 2);
            assert_eq!(got.parts[0].get(0), &[1.0, 2.0]);
            assert_eq!(got.parts[0].get(1), &[3.0, 4.0]);
        }
        // A null or an overflow is the text's own bad vector; a repeated index,
        // a short answer or a vector of another length is the endpoint's fault.
        let null = r#"{"data":[{"index":0,"embedding":[1,2]},{"index":1,"embedding":[null,4]}]}"#;
        assert!(matches!(
            answer(&e, null, 2),
            Ok(Answer::Bad { index: 1, .. })
        ));
        let huge = r#"{"data":[{"index":0,"embedding":[1e300,2]},{"index":1,"embedding":[3,4]}]}"#;
        assert!(matches!(
            answer(&e, huge, 2),
            Ok(Answer::Bad { index: 0, .. })
        ));
        let twice = r#"{"data":[{"index":0,"embedding":[1,2]},{"index":0,"embedding":[3,4]}]}"#;
        assert!(answer(&e, twice, 2).is_err());
        assert!(answer(&e, in_order, 3).is_err());
        let ragged = r#"{"data":[{"index":0,"embedding":[1,2]},{"index":1,"embedding":[3]}]}"#;
        assert!(answer(&e, ragged, 2).is_err());
        let empty = r#"{"data":[{"index":0,"embedding":[]},{"index":1,"embedding":[]}]}"#;
        assert!(answer(&e, empty, 2).is_err());
        // No more values than the texts' vectors can hold: a stream of numbers
        // without end is refused as it comes, not buffered.
        STAGE_CAP.set(4);
        let endless = r#"{"data":[{"index":0,"embedding":[1,2,3,4,5]}]}"#;
        let body: std::result::Result<Body, _> = serde_json::from_str(endless);
        assert!(body.is_err_and(|e| e.to_string().contains("more values than 4")));
        STAGE_CAP.set(usize::MAX);
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
