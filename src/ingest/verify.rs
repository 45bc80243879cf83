//! A file's records held to `process`'s rules, and a whole spool file checked by
//! them offline. [`FileCheck`] is the one place where the rules beyond a single
//! record's decoding live (a vector with no direction under cosine distance, the
//! whole-document `chunk_count` rule): a file's transaction applies it to every
//! record it copies, `validate` to the files it is given and `import` to every
//! document it writes, so the three can never disagree. What only the database or
//! the embeddings endpoint can say (duplicates, partitions, refused texts) is not
//! checked offline.

use super::BadFile;
use super::changeset::DocSet;
use crate::batch::Reason;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::record::{Embedding, Record};
use crate::spool::Unreadable;
use std::path::Path;

/// The settings that decide whether a file is good input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rules {
    /// EMBED_DIM: the length every embedding must have, when set.
    pub(crate) embed_dim: Option<usize>,
    /// MAX_FILE_BYTES: larger files fail.
    pub(crate) max_file_bytes: u64,
    /// EMBEDDING_TYPE=vector with VECTOR_METRIC=cosine: an all-zero vector fails.
    pub(crate) needs_direction: bool,
}

impl Rules {
    /// The rules the settings in `config` make.
    pub(crate) fn of(config: &Config) -> Rules {
        Rules {
            embed_dim: config.embed_dim,
            max_file_bytes: config.max_file_bytes,
            needs_direction: config.storage.needs_direction(),
        }
    }
}

/// What a good file holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Record maps, delete records included.
    pub(crate) records: u64,
    /// Distinct doc_ids.
    pub(crate) documents: u64,
    /// Delete records.
    pub(crate) deletes: u64,
    /// Rows whose record brings its embedding.
    pub(crate) with_vectors: u64,
    /// Rows without one (embedded via EMBED_BASE_URL, else stored NULL).
    pub(crate) without_vectors: u64,
    /// The file's size.
    pub(crate) bytes: u64,
}

/// The rules over a file's decoded records, fed one record at a time in order.
#[derive(Debug)]
pub(crate) struct FileCheck {
    docs: DocSet,
    needs_direction: bool,
    counts: Counts,
}

impl FileCheck {
    /// A check of a file's records; `needs_direction` as in [`Rules`].
    pub(crate) fn new(needs_direction: bool) -> FileCheck {
        FileCheck {
            docs: DocSet::default(),
            needs_direction,
            counts: Counts::default(),
        }
    }

    /// Record `index` of the file, as the decoder gave it.
    pub(crate) fn record(&mut self, index: u64, r: &Record<'_>) -> Result<(), BadFile> {
        self.counts.records += 1;
        if r.delete {
            self.counts.deletes += 1;
            self.docs.remove(r.doc_id);
            return Ok(());
        }
        self.docs.add(r.doc_id, r.chunk_index, r.chunk_count);
        match &r.embedding {
            Some(v) => {
                self.counts.with_vectors += 1;
                self.vector(v, index)
            }
            None => {
                self.counts.without_vectors += 1;
                Ok(())
            }
        }
    }

    /// Under cosine distance an all-zero vector has no direction: the file fails.
    fn vector(&self, v: &Embedding<'_>, index: u64) -> Result<(), BadFile> {
        if self.needs_direction && v.all_zero() {
            return Err(BadFile {
                record_index: Some(index),
                ..BadFile::new(
                    Reason::Failed,
                    "embedding is all zeros, which has no cosine distance (VECTOR_METRIC=cosine)",
                )
            });
        }
        Ok(())
    }

    /// After the last record: the whole-document rule (SPEC §12). Gives the
    /// file's documents (its change set) and its counts.
    pub(crate) fn finish(mut self) -> Result<(DocSet, Counts), BadFile> {
        self.docs
            .check_whole()
            .map_err(|why| BadFile::new(Reason::Failed, why))?;
        self.counts.documents = self.docs.len() as u64;
        Ok((self.docs, self.counts))
    }
}

/// What `process` would make of a file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// It would be ingested (unless the database or the endpoint says otherwise).
    Good(Counts),
    /// It would fail, with this reason.json.
    Bad(BadFile),
}

/// Why walking a file's records stopped.
enum Stop {
    Bad(BadFile),
    Io(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Io(e)
    }
}

/// Checks the spool file at `path` as `process` would read it: opened as a
/// claimed file is, decoded window by window, every record through
/// [`FileCheck`]. `Err` when the filesystem fails (or the file is missing).
pub(crate) fn file(path: &Path, rules: &Rules) -> Result<Verdict> {
    super::window::with_file(path, rules.max_file_bytes, |opened| {
        let mut bytes = match opened {
            Ok(b) => b,
            Err(Unreadable::Bad(why)) => return Ok(Verdict::Bad(BadFile::unreadable(&why))),
            Err(Unreadable::Io(e)) => return Err(e),
        };
        let len = bytes.len();
        let mut check = FileCheck::new(rules.needs_direction);
        let walked = bytes.records(rules.embed_dim, |records| {
            while let Some(record) = records.next_indexed() {
                let (index, record) = record.map_err(|e| Stop::Bad(e.into()))?;
                check.record(index, &record).map_err(Stop::Bad)?;
            }
            Ok(())
        });
        match walked {
            Err(Stop::Io(e)) => return Err(e),
            Err(Stop::Bad(bad)) => return Ok(Verdict::Bad(bad)),
            Ok(()) => {}
        }
        Ok(match check.finish() {
            Ok((_, counts)) => Verdict::Good(Counts {
                bytes: len,
                ..counts
            }),
            Err(bad) => Verdict::Bad(bad),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmp::encode as mp;

    fn rules() -> Rules {
        Rules {
            embed_dim: None,
            max_file_bytes: 1 << 20,
            needs_direction: true,
        }
    }

    /// A record of `doc` with `chunk_index`, an optional vector and chunk_count.
    fn record(
        out: &mut Vec<u8>,
        doc: &str,
        index: u64,
        vector: Option<&[f32]>,
        count: Option<u64>,
    ) {
        let fields = 3 + u32::from(vector.is_some()) + u32::from(count.is_some());
        let _ = mp::write_map_len(out, fields);
        let _ = mp::write_str(out, "doc_id");
        let _ = mp::write_str(out, doc);
        let _ = mp::write_str(out, "chunk_index");
        let _ = mp::write_uint(out, index);
        let _ = mp::write_str(out, "content");
        let _ = mp::write_str(out, "text");
        if let Some(v) = vector {
            let _ = mp::write_str(out, "embedding");
            let _ = mp::write_array_len(out, v.len() as u32);
            for x in v {
                let _ = mp::write_f32(out, *x);
            }
        }
        if let Some(n) = count {
            let _ = mp::write_str(out, "chunk_count");
            let _ = mp::write_uint(out, n);
        }
    }

    fn verdict(bytes: &[u8]) -> Result<Verdict> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f.msgpack");
        std::fs::write(&path, bytes)?;
        file(&path, &rules())
    }

    #[test]
    fn a_good_file_is_counted() -> Result<()> {
        let mut b = Vec::new();
        record(&mut b, "a", 0, Some(&[1.0, 2.0]), Some(2));
        record(&mut b, "a", 1, None, Some(2));
        let _ = mp::write_map_len(&mut b, 2);
        let _ = mp::write_str(&mut b, "doc_id");
        let _ = mp::write_str(&mut b, "gone");
        let _ = mp::write_str(&mut b, "delete");
        let _ = mp::write_bool(&mut b, true);
        let want = Counts {
            records: 3,
            documents: 2,
            deletes: 1,
            with_vectors: 1,
            without_vectors: 1,
            bytes: b.len() as u64,
        };
        assert_eq!(verdict(&b)?, Verdict::Good(want));
        Ok(())
    }

    #[test]
    fn bad_files_say_what_process_would_write() -> Result<()> {
        let mut zero = Vec::new();
        record(&mut zero, "a", 0, Some(&[1.0]), None);
        record(&mut zero, "a", 1, Some(&[0.0]), None);
        let Verdict::Bad(bad) = verdict(&zero)? else {
            unreachable!("an all-zero vector passed")
        };
        assert_eq!(bad.record_index, Some(1));
        assert!(bad.error.contains("all zeros"), "{}", bad.error);

        let mut cut = Vec::new();
        record(&mut cut, "a", 0, None, Some(3));
        let Verdict::Bad(bad) = verdict(&cut)? else {
            unreachable!("a cut document passed")
        };
        assert!(
            bad.error.contains("declares chunk_count 3"),
            "{}",
            bad.error
        );
        assert_eq!(bad.record_index, None);

        let Verdict::Bad(bad) = verdict(b"")? else {
            unreachable!("an empty file passed")
        };
        assert_eq!(bad.error, "file is empty (0 bytes)");

        let truncated = &cut[..cut.len() - 1];
        let Verdict::Bad(bad) = verdict(truncated)? else {
            unreachable!("a truncated file passed")
        };
        let want = crate::record::Decoder::new(truncated, None).find_map(|r| r.err());
        let want = want.map(|e| (Some(e.record_index), Some(e.byte_offset), e.message));
        assert_eq!(Some((bad.record_index, bad.byte_offset, bad.error)), want);
        Ok(())
    }
}
