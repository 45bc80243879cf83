//! A file's missing vectors, obtained before its transaction opens (SPEC §12): no
//! transaction, COPY or lock is held across an embeddings request. Reused vectors
//! (EMBED_REUSE) come from the rows the file will replace; the rest are fetched in
//! budgeted requests. They are kept in record order for the COPY pass to take one
//! by one: in memory while the vectors of every file of the process that wait for
//! their COPY take at most [`MEMORY_BOUND`] bytes, beyond that spilled to a file
//! beside the claimed one in processing/, read back sequentially.

use super::BadFile;
use crate::batch::Reason;
use crate::db::Conn;
use crate::error::{Context, Error, Result};
use crate::ingest::embed::{EmbedError, Embedder, Spent};
use crate::ingest::window::FileBytes;
use crate::schema::Names;
use postgres::types::{FromSql, Type};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Vectors kept in memory, across every file of the process, before the rest
/// spill to disk: prepared files wait for a worker with their vectors.
pub(crate) const MEMORY_BOUND: usize = 32 << 20;

/// Bytes of vectors in memory now, across the process.
static IN_MEMORY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Takes `bytes` of the process's vector memory, when that much is left.
fn take_memory(bytes: usize) -> bool {
    use std::sync::atomic::Ordering;
    IN_MEMORY
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
            (used + bytes <= MEMORY_BOUND).then_some(used + bytes)
        })
        .is_ok()
}

/// Where a file's prefetched vectors wait for its COPY.
pub(crate) struct Vectors {
    memory: Vec<f32>,
    spill_path: PathBuf,
    spill: Option<(PathBuf, BufWriter<File>)>,
    reader: Option<BufReader<File>>,
    read_at: usize,
    dim: usize,
    /// Vectors fetched from the endpoint.
    pub(crate) fetched: u64,
    /// Vectors reused from rows the file replaces.
    pub(crate) reused: u64,
}

impl Vectors {
    fn new(spill_path: PathBuf) -> Vectors {
        // The spill file is created only when needed: most files never spill.
        Vectors {
            memory: Vec::new(),
            spill_path,
            spill: None,
            reader: None,
            read_at: 0,
            dim: 0,
            fetched: 0,
            reused: 0,
        }
    }

    fn push(&mut self, v: &[f32]) -> Result<()> {
        if self.dim == 0 {
            self.dim = v.len();
        }
        if self.spill.is_none() && take_memory(v.len() * 4) {
            self.memory.extend_from_slice(v);
            return Ok(());
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
            self.reader = Some(BufReader::with_capacity(1 << 20, file));
        }
        self.read_at = 0;
        Ok(())
    }

    /// The next vector in record order.
    pub(crate) fn next(&mut self) -> Result<Vec<f32>> {
        let dim = self.dim;
        if self.read_at + dim <= self.memory.len() {
            let v = self.memory[self.read_at..self.read_at + dim].to_vec();
            self.read_at += dim;
            return Ok(v);
        }
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
        IN_MEMORY.fetch_sub(self.memory.len() * 4, std::sync::atomic::Ordering::SeqCst);
        if let Some((path, _)) = self.spill.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The file whose vectors are prefetched.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileInput<'a> {
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

/// A vector as pgvector or `real[]` sends it in binary.
struct Stored(Vec<f32>);

impl<'a> FromSql<'a> for Stored {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Stored, Box<dyn std::error::Error + Sync + Send>> {
        if ty.name() == "vector" {
            // int16 dimension, int16 unused, big-endian float4s.
            let body = raw.get(4..).ok_or("short vector")?;
            return Ok(Stored(
                body.chunks_exact(4)
                    .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ));
        }
        Vec::<f32>::from_sql(ty, raw).map(Stored)
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "vector" || <Vec<f32> as FromSql>::accepts(ty)
    }
}

/// Obtains the vectors of every record of `bytes` that lacks one, in record order:
/// reused from rows of its documents with byte-identical content and the same
/// model (`reuse`: replace mode with EMBED_REUSE), else fetched. `spent` counts the
/// tokens and the endpoint faults (for the file's attempts). A large file goes
/// window by window.
pub(crate) fn prefetch(
    conn: &impl Conn,
    names: &Names,
    embedder: &Embedder,
    bytes: &mut FileBytes<'_>,
    file: &FileInput<'_>,
    spent: &Spent,
) -> std::result::Result<Vectors, Prefetch> {
    let name = file
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = Vectors::new(file.path.with_file_name(format!(".{name}.vectors")));
    let window = Window {
        names,
        embedder,
        reuse: file.reuse,
    };
    bytes.records(file.embed_dim, |records| {
        let mut pending: Vec<(u64, &str, &str)> = Vec::new();
        while let Some(record) = records.next_indexed() {
            let (index, record) = record.map_err(|e| Prefetch::Bad(e.into()))?;
            if !record.delete && record.embedding.is_none() {
                pending.push((index, record.doc_id, record.content));
            }
        }
        window.vectors(conn, &pending, &mut out, spent)
    })?;
    out.rewind()?;
    Ok(out)
}

const ZERO_ANSWER: &str =
    "the embeddings endpoint answered an all-zero vector, which has no cosine distance";

/// What one window's pending chunks need to get their vectors.
struct Window<'a> {
    names: &'a Names,
    embedder: &'a Embedder,
    reuse: bool,
}

impl Window<'_> {
    /// Appends to `out` the vectors of `pending` (record index, doc_id, content), in
    /// order: reused or fetched.
    fn vectors(
        &self,
        conn: &impl Conn,
        pending: &[(u64, &str, &str)],
        out: &mut Vectors,
        spent: &Spent,
    ) -> std::result::Result<(), Prefetch> {
        let Window {
            names,
            embedder,
            reuse,
        } = *self;
        if pending.is_empty() {
            return Ok(());
        }
        let known = if reuse {
            conn.with(|c| reusable(c, names, embedder.model(), pending))?
        } else {
            HashMap::new()
        };
        // The vector each pending chunk can keep; content is hashed only when some
        // row could give one.
        let reused: Vec<Option<&Vec<f32>>> = if known.is_empty() {
            vec![None; pending.len()]
        } else {
            pending
                .iter()
                .map(|(_, doc, content)| known.get(&key(doc, content)))
                .collect()
        };
        let fetch: Vec<usize> = (0..pending.len())
            .filter(|i| reused[*i].is_none())
            .collect();
        let texts: Vec<&str> = fetch.iter().map(|i| pending[*i].2).collect();
        let bad = |index: u64, message: String| {
            Prefetch::Bad(BadFile {
                record_index: Some(index),
                ..BadFile::new(Reason::Failed, message)
            })
        };
        let keep = |out: &mut Vectors, index: u64, v: &[f32]| {
            if names.storage.needs_direction() && v.iter().all(|x| *x == 0.0) {
                return Err(bad(index, ZERO_ANSWER.into()));
            }
            out.push(v).map_err(Prefetch::Stop)
        };
        // Vectors go to `out` in record order as the requests' answers are handed
        // over in order, so that no more than a bounded number of answers is held
        // beside what `out` bounds (see Embedder::embed_all).
        let mut cursor = 0;
        let mut next_fetch = 0;
        let take_reused = |out: &mut Vectors, cursor: usize| {
            out.reused += 1;
            keep(
                out,
                pending[cursor].0,
                reused[cursor].map_or(&[], Vec::as_slice),
            )
        };
        let refused = |e: EmbedError| match e {
            EmbedError::Rejected { index, message } => bad(pending[fetch[index]].0, message),
            EmbedError::Unavailable(e) => Prefetch::Stop(e),
        };
        embedder
            .embed_all(&texts, spent, |_, vectors| {
                for v in vectors {
                    while cursor < fetch[next_fetch] {
                        take_reused(out, cursor)?;
                        cursor += 1;
                    }
                    out.fetched += 1;
                    keep(out, pending[cursor].0, &v)?;
                    cursor += 1;
                    next_fetch += 1;
                }
                Ok::<(), Refused>(())
            })
            .map_err(|r| match r {
                Refused::Embed(e) => refused(e),
                Refused::Prefetch(p) => p,
            })?;
        while cursor < pending.len() {
            take_reused(out, cursor)?;
            cursor += 1;
        }
        Ok(())
    }
}

/// Why a file's requests stopped: the endpoint's, or the file's own (a vector
/// that cannot be kept).
enum Refused {
    Embed(EmbedError),
    Prefetch(Prefetch),
}

impl From<EmbedError> for Refused {
    fn from(e: EmbedError) -> Refused {
        Refused::Embed(e)
    }
}

impl From<Prefetch> for Refused {
    fn from(p: Prefetch) -> Refused {
        Refused::Prefetch(p)
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
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get::<_, Stored>(2).0))
        .collect())
}
