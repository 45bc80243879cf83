//! A file's missing vectors, obtained before its transaction opens (SPEC §12): no
//! transaction, COPY or lock is held across an embeddings request. Reused vectors
//! (EMBED_REUSE) come from the rows the file will replace; the rest are fetched in
//! budgeted requests. They are kept in record order for the COPY pass to take one
//! by one: in memory while the vectors of every file of the process that wait for
//! their COPY take at most EMBED_MEMORY_BYTES, beyond that spilled to a file
//! beside the claimed one in processing/, read back sequentially.

use super::BadFile;
use crate::batch::Reason;
use crate::db::Conn;
use crate::error::{Context, Error, Result};
use crate::ingest::embed::{Answered, EmbedError, Embedder, Flat, Spent, Texts};
use crate::ingest::window::FileBytes;
use crate::schema::Names;
use postgres::types::{FromSql, Type};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The size of a block of vectors in memory.
const BLOCK: usize = 256 << 10;

/// The floats of a block.
const BLOCK_FLOATS: usize = BLOCK / 4;

/// The process's blocks of vectors: at most EMBED_MEMORY_BYTES of them are
/// ever allocated, and a file done with its blocks gives them back here for the
/// next file rather than to the allocator. Freed and allocated anew, file after
/// file on threads of their own, they left the allocator's per-thread arenas
/// holding several times the bound.
struct Blocks {
    free: Vec<Vec<f32>>,
    allocated: usize,
}

static BLOCKS: std::sync::Mutex<Blocks> = std::sync::Mutex::new(Blocks {
    free: Vec::new(),
    allocated: 0,
});

/// An empty block, when one is free or the bound leaves room for another.
fn take_block(bound: usize) -> Option<Vec<f32>> {
    let mut blocks = BLOCKS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(block) = blocks.free.pop() {
        return Some(block);
    }
    if blocks.allocated + BLOCK > bound {
        return None;
    }
    blocks.allocated += BLOCK;
    Some(Vec::with_capacity(BLOCK_FLOATS))
}

/// Gives `used` back for other files.
fn give_back(used: impl Iterator<Item = Vec<f32>>) {
    let mut blocks = BLOCKS.lock().unwrap_or_else(|p| p.into_inner());
    blocks.free.extend(used.map(|mut b| {
        b.clear();
        b
    }));
}

/// Where a file's prefetched vectors wait for its COPY.
pub(crate) struct Vectors {
    /// Blocks of whole vectors (none straddles two), from the process's blocks.
    memory: Vec<Vec<f32>>,
    /// The process's bound on vectors in memory.
    bound: usize,
    spill_path: PathBuf,
    spill: Option<(PathBuf, BufWriter<File>)>,
    reader: Option<BufReader<File>>,
    /// The block and the offset in it of the next vector to read.
    read_at: (usize, usize),
    dim: usize,
    /// Vectors fetched from the endpoint.
    pub(crate) fetched: u64,
    /// Vectors reused from rows the file replaces.
    pub(crate) reused: u64,
}

/// How a spill file is read back: in the COPY's worker, for every row.
const SPILL_READ_BUFFER: usize = 64 << 10;

impl Vectors {
    fn new(spill_path: PathBuf, bound: usize) -> Vectors {
        // The spill file is created only when needed: most files never spill.
        Vectors {
            memory: Vec::new(),
            bound,
            spill_path,
            spill: None,
            reader: None,
            read_at: (0, 0),
            dim: 0,
            fetched: 0,
            reused: 0,
        }
    }

    fn push(&mut self, v: &[f32]) -> Result<()> {
        if self.dim == 0 {
            self.dim = v.len();
        }
        if self.spill.is_none() && v.len() <= BLOCK_FLOATS {
            let room = self
                .memory
                .last()
                .is_some_and(|b| b.capacity() - b.len() >= v.len());
            if !room && let Some(block) = take_block(self.bound) {
                self.memory.push(block);
            }
            if let Some(block) = self.memory.last_mut()
                && block.capacity() - block.len() >= v.len()
            {
                block.extend_from_slice(v);
                return Ok(());
            }
        }
        if self.spill.is_none() {
            let path = self.spill_path.clone();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .with_context(|| format!("cannot create `{}`", path.display()))?;
            self.spill = Some((path, BufWriter::new(file)));
        }
        if let Some((path, w)) = &mut self.spill {
            for x in v {
                w.write_all(&x.to_le_bytes())
                    .with_context(|| format!("cannot write `{}`", path.display()))?;
            }
        }
        Ok(())
    }

    /// Ready for reading from the first vector (again, when a transaction is retried).
    pub(crate) fn rewind(&mut self) -> Result<()> {
        if let Some((path, w)) = &mut self.spill {
            w.flush()
                .with_context(|| format!("cannot write `{}`", path.display()))?;
            let file =
                File::open(&*path).with_context(|| format!("cannot read `{}`", path.display()))?;
            self.reader = Some(BufReader::with_capacity(SPILL_READ_BUFFER, file));
        }
        self.read_at = (0, 0);
        Ok(())
    }

    /// The next vector in record order.
    pub(crate) fn next(&mut self) -> Result<Vec<f32>> {
        let dim = self.dim;
        let (mut block, mut at) = self.read_at;
        if self.memory.get(block).is_some_and(|b| at + dim > b.len()) {
            (block, at) = (block + 1, 0);
        }
        if let Some(b) = self.memory.get(block)
            && at + dim <= b.len()
        {
            self.read_at = (block, at + dim);
            return Ok(b[at..at + dim].to_vec());
        }
        self.read_at = (block, at);
        let Some(reader) = &mut self.reader else {
            return Err(Error::failed("ran out of prefetched vectors"));
        };
        let mut bytes = vec![0u8; dim * 4];
        reader
            .read_exact(&mut bytes)
            .context("reading spilled vectors")?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

impl Drop for Vectors {
    fn drop(&mut self) {
        give_back(self.memory.drain(..));
        if let Some((path, _)) = self.spill.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The file whose vectors are prefetched.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileInput<'a> {
    /// Its claim sequence (its requests' place in the process's queue).
    pub(crate) seq: i64,
    /// EMBED_DIM.
    pub(crate) embed_dim: Option<usize>,
    /// Whether vectors of rows it replaces may be reused.
    pub(crate) reuse: bool,
    /// Where it lies in processing/ (the spill file goes beside it).
    pub(crate) path: &'a Path,
}

/// Why prefetching stopped.
pub(crate) enum Prefetch {
    /// The file is bad, for this record and reason.
    Bad(BadFile),
    /// Not the file's fault: it stays in processing/.
    Stop(Error),
}

impl From<Error> for Prefetch {
    fn from(e: Error) -> Prefetch {
        Prefetch::Stop(e)
    }
}

/// A vector as pgvector (`vector`, `halfvec`) or `real[]` sends it in binary.
struct Stored(Vec<f32>);

impl<'a> FromSql<'a> for Stored {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Stored, Box<dyn std::error::Error + Sync + Send>> {
        match ty.name() {
            // int16 dimension, int16 unused, big-endian float4s.
            "vector" => Ok(Stored(
                raw.get(4..)
                    .ok_or("short vector")?
                    .chunks_exact(4)
                    .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )),
            // int16 dimension, int16 unused, big-endian f16 bits: each widens to
            // the f32 that rounds back to it, so a reused vector is stored as it was.
            "halfvec" => Ok(Stored(
                raw.get(4..)
                    .ok_or("short halfvec")?
                    .chunks_exact(2)
                    .map(|c| crate::binary16::to_f32(u16::from_be_bytes([c[0], c[1]])))
                    .collect(),
            )),
            _ => Vec::<f32>::from_sql(ty, raw).map(Stored),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.name(), "vector" | "halfvec") || <Vec<f32> as FromSql>::accepts(ty)
    }
}

/// Obtains the vectors of every record of `bytes` that lacks one, in record order:
/// reused from rows of its documents with byte-identical content and the same
/// model (`reuse`: replace mode with EMBED_REUSE), else fetched. The requests are
/// queued as the file is read, window by window, and their answers taken back in
/// order while it goes on (see [`crate::ingest::embed::Fetch`]); `spent` counts the
/// tokens and the endpoint faults (for the file's attempts).
pub(crate) fn prefetch(
    conn: &impl Conn,
    names: &Names,
    embedder: &Embedder,
    bytes: &mut FileBytes<'_>,
    file: &FileInput<'_>,
    spent: &Arc<Spent>,
) -> std::result::Result<Vectors, Prefetch> {
    let name = file
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = Vectors::new(
        file.path.with_file_name(format!(".{name}.vectors")),
        embedder.memory_bytes(),
    );
    let mut plan = Plan {
        entries: VecDeque::new(),
        answers: VecDeque::new(),
        taken: 0,
        needs_direction: names.storage.needs_direction(),
        half: names.storage.embedding.half(),
        reused_bytes: 0,
    };
    let mut fetch = embedder.fetch(file.seq, spent.clone());
    let mut carry: Vec<String> = Vec::new();
    let read = bytes.records(file.embed_dim, |records| {
        let mut pending: Vec<(u64, &str, &str)> = Vec::new();
        while let Some(record) = records.next_indexed() {
            let (index, record) = record.map_err(|e| Refused::Prefetch(Prefetch::Bad(e.into())))?;
            if !record.delete && record.embedding.is_none() {
                pending.push((index, record.doc_id, record.content));
            }
        }
        let known = if file.reuse && !pending.is_empty() {
            conn.with(|c| reusable(c, names, embedder.model(), &pending))
                .map_err(|e| Refused::Prefetch(Prefetch::Stop(e)))?
        } else {
            HashMap::new()
        };
        let mut texts = Vec::new();
        for (index, doc, content) in &pending {
            // Content is hashed only when some row could give a vector.
            let hit = (!known.is_empty())
                .then(|| known.get(&key(doc, content)))
                .flatten();
            match hit {
                Some(v) => {
                    plan.reused_bytes += v.len() * 4;
                    plan.entries.push_back(Entry::Reused(*index, v.clone()));
                }
                None => {
                    plan.entries.push_back(Entry::Fetched(*index));
                    texts.push(*content);
                }
            }
        }
        // The window's last group waits for the next window's texts (at most
        // EMBED_BATCH texts, copied): sent alone, a window's tail would make one
        // short request per window.
        let mut all: Vec<&str> = carry.iter().map(String::as_str).collect();
        all.extend(texts);
        let mut groups = embedder.groups(&all);
        let last = groups.pop();
        for group in groups {
            fetch.submit(Texts::of(&all[group]), &mut |v| plan.take(&mut out, v))?;
        }
        let rest = last.map_or_else(Vec::new, |g| all[g].iter().map(|t| t.to_string()).collect());
        drop(all);
        carry = rest;
        plan.drain(&mut out)?;
        // Reused vectors queued behind an answer not yet back wait in memory: a
        // file that reuses most of its rows waits for answers rather than read on.
        // A carried tail is sent first, or there may be no answer to wait for and
        // every later window's reused vectors would pile up behind it.
        if plan.reused_bytes > REUSED_BOUND && !carry.is_empty() {
            let sent = std::mem::take(&mut carry);
            let tail: Vec<&str> = sent.iter().map(String::as_str).collect();
            fetch.submit(Texts::of(&tail), &mut |v| plan.take(&mut out, v))?;
        }
        while plan.reused_bytes > REUSED_BOUND
            && fetch.take_next(&mut |v| plan.take(&mut out, v))?
        {}
        Ok(())
    });
    let tail: Vec<&str> = carry.iter().map(String::as_str).collect();
    read.and_then(|()| {
        if tail.is_empty() {
            return Ok(());
        }
        fetch.submit(Texts::of(&tail), &mut |v| plan.take(&mut out, v))
    })
    .and_then(|()| fetch.finish(&mut |v| plan.take(&mut out, v)))
    .and_then(|()| plan.drain(&mut out))
    .map_err(|r| plan.refused(r))?;
    out.rewind()?;
    Ok(out)
}

const ZERO_ANSWER: &str =
    "the embeddings endpoint answered an all-zero vector, which has no cosine distance";

const VANISHING_ANSWER: &str = "the embeddings endpoint answered a vector that rounds to all zeros in halfvec, \
     which has no cosine distance";

/// A record whose vector the file needs, in record order.
enum Entry {
    /// Reused from a row the file replaces.
    Reused(u64, Vec<f32>),
    /// Fetched: the next vector of the answers, in order.
    Fetched(u64),
}

/// The records of a file still to get their vectors into [`Vectors`], and the
/// fetched vectors that came back for them.
struct Plan {
    entries: VecDeque<Entry>,
    answers: VecDeque<Flat>,
    /// Vectors of the front answer already moved.
    taken: usize,
    needs_direction: bool,
    /// The column is halfvec: a vector whose elements all round to zero has no
    /// direction either.
    half: bool,
    /// Bytes of the reused vectors in `entries`.
    reused_bytes: usize,
}

/// Reused vectors a file may hold while an answer ahead of them is awaited.
const REUSED_BOUND: usize = 8 << 20;

impl Plan {
    /// One request's vectors, back in order.
    fn take(&mut self, out: &mut Vectors, vectors: Answered) -> std::result::Result<(), Refused> {
        self.answers
            .extend(vectors.parts.into_iter().filter(|p| p.count() > 0));
        self.drain(out)
    }

    /// Fetched vectors back and not yet moved to a file's [`Vectors`].
    fn answered(&self) -> usize {
        self.answers.iter().map(Flat::count).sum::<usize>() - self.taken
    }

    /// Moves to `out` every entry at the front whose vector is at hand.
    fn drain(&mut self, out: &mut Vectors) -> std::result::Result<(), Refused> {
        loop {
            let waiting =
                matches!(self.entries.front(), Some(Entry::Fetched(_))) && self.answers.is_empty();
            if waiting {
                return Ok(());
            }
            match self.entries.pop_front() {
                None => return Ok(()),
                Some(Entry::Reused(index, v)) => {
                    self.reused_bytes -= v.len() * 4;
                    self.place(out, index, &v)?;
                    out.reused += 1;
                }
                Some(Entry::Fetched(index)) => {
                    if let Some(front) = self.answers.front() {
                        self.place(out, index, front.get(self.taken))?;
                    }
                    self.taken += 1;
                    if self.answers.front().is_none_or(|f| self.taken >= f.count()) {
                        self.taken = 0;
                        if let Some(done) = self.answers.pop_front() {
                            done.recycle();
                        }
                    }
                    out.fetched += 1;
                }
            }
        }
    }

    /// Checks record `index`'s vector `v` and moves it to `out`.
    fn place(&self, out: &mut Vectors, index: u64, v: &[f32]) -> std::result::Result<(), Refused> {
        if self.needs_direction && v.iter().all(|x| *x == 0.0) {
            return Err(Refused::Prefetch(bad(index, ZERO_ANSWER.into())));
        }
        if self.needs_direction && self.half && crate::binary16::vanishes(v) {
            return Err(Refused::Prefetch(bad(index, VANISHING_ANSWER.into())));
        }
        // Without EMBED_DIM the first vector sets the file's length; one of
        // another length would shift every vector after it in the COPY.
        if out.dim != 0 && v.len() != out.dim {
            let why = format!(
                "a vector of {} values where the file's others have {}",
                v.len(),
                out.dim
            );
            return Err(Refused::Prefetch(bad(index, why)));
        }
        out.push(v)
            .map_err(|e| Refused::Prefetch(Prefetch::Stop(e)))
    }

    /// Why the file stops: a refused text is named by its record, which is the
    /// refused request's `index`-th text still waiting for a vector.
    fn refused(&self, r: Refused) -> Prefetch {
        match r {
            Refused::Prefetch(p) => p,
            Refused::Embed(EmbedError::Unavailable(e)) => Prefetch::Stop(e),
            Refused::Embed(EmbedError::Rejected { index, message }) => {
                let record = self
                    .entries
                    .iter()
                    .filter_map(|e| match e {
                        Entry::Fetched(i) => Some(*i),
                        Entry::Reused(..) => None,
                    })
                    .nth(self.answered() + index);
                match record {
                    Some(i) => bad(i, message),
                    None => Prefetch::Stop(Error::failed(format!(
                        "a refused text is not among the file's records: {message}"
                    ))),
                }
            }
        }
    }
}

/// The file fails for record `index`.
fn bad(index: u64, message: String) -> Prefetch {
    Prefetch::Bad(BadFile {
        record_index: Some(index),
        ..BadFile::new(Reason::Failed, message)
    })
}

/// Why a file's requests stopped: the endpoint's, or the file's own (a record or
/// a vector that cannot be kept).
enum Refused {
    Embed(EmbedError),
    Prefetch(Prefetch),
}

impl From<EmbedError> for Refused {
    fn from(e: EmbedError) -> Refused {
        Refused::Embed(e)
    }
}

impl From<Error> for Refused {
    fn from(e: Error) -> Refused {
        Refused::Prefetch(Prefetch::Stop(e))
    }
}

/// (doc_id, md5 of content) of a chunk.
fn key(doc: &str, content: &str) -> (String, String) {
    use md5::{Digest, Md5};
    (
        doc.to_string(),
        crate::digest::hex(&Md5::digest(content.as_bytes())),
    )
}

/// Vectors of rows of the pending chunks' documents that `model` made, by
/// (doc_id, md5 of content): what replace mode would delete, reusable as they are.
fn reusable(
    client: &mut postgres::Client,
    names: &Names,
    model: &str,
    pending: &[(u64, &str, &str)],
) -> Result<HashMap<(String, String), Vec<f32>>> {
    let mut docs: Vec<&str> = pending.iter().map(|p| p.1).collect();
    docs.sort_unstable();
    docs.dedup();
    let rows = client
        .query(
            &format!(
                "SELECT doc_id, md5(content), embedding FROM {} \
                 WHERE doc_id = ANY($1) AND embedding_model = $2 AND embedding IS NOT NULL",
                names.table
            ),
            &[&docs, &model],
        )
        .map_err(|e| crate::db::classify(e, "reading vectors to reuse"))?;
    // A stored vector that cannot be read (a NULL element in a real[]) is not
    // reused: its chunk is fetched again.
    Ok(rows
        .iter()
        .filter_map(|r| Some(((r.get(0), r.get(1)), r.try_get::<_, Stored>(2).ok()?.0)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_come_back_in_order_from_blocks_and_spill() -> Result<()> {
        let dir = tempfile::tempdir()?;
        // 65 vectors of 1,000 values fit a block: 300 cross several, and with a
        // bound of one block (or none) most go to the spill file.
        let dim = 1000;
        let all: Vec<Vec<f32>> = (0..300)
            .map(|i| (0..dim).map(|j| (i * dim + j) as f32).collect())
            .collect();
        for bound in [0, BLOCK, 400 * BLOCK] {
            let mut v = Vectors::new(dir.path().join(format!("spill-{bound}")), bound);
            for x in &all {
                v.push(x)?;
            }
            // Twice: a retried transaction reads them again from the first.
            for _ in 0..2 {
                v.rewind()?;
                for x in &all {
                    assert_eq!(&v.next()?, x);
                }
                assert!(v.next().is_err());
            }
        }
        Ok(())
    }
}
