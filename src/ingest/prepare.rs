//! A file up to its transaction: read and hashed, known as a duplicate or opened
//! in the manifest, refused when poisoned, its missing vectors fetched. None of it
//! holds a transaction, so it can run on a prefetch thread with a shared
//! connection while the workers COPY other files (SPEC §13), or in line on a
//! worker when nothing is to be fetched.

use super::{BadFile, FileOutcome, Ingest, Job, vectors};
use crate::batch::{BatchTag, Reason};
use crate::db::{self, Conn};
use crate::error::Result;
use crate::ingest::embed::Spent;
use crate::ingest::manifest::{self, FileKey};
use crate::ingest::window::{self, FileBytes};
use crate::spool::{Claimed, Unreadable};
use crate::storage::DocMode;
use std::sync::atomic::Ordering;

/// A file as far as its transaction.
pub(crate) enum Prepared {
    /// It ended before a transaction: bad, a duplicate, poisoned or refused.
    Ended((FileOutcome, u32)),
    /// Ready for its transaction.
    Ready(Ready),
}

/// What a file's transaction needs from its preparation.
pub(crate) struct Ready {
    sha: String,
    attempt: u32,
    ingest_time: i64,
    /// Its fetched or reused vectors, when it lacks some and an endpoint is set.
    pub(crate) vectors: Option<vectors::Vectors>,
}

impl Ready {
    /// The file's transaction's view of it.
    pub(crate) fn job<'a>(&'a self, tag: &'a BatchTag, file: &'a Claimed) -> Job<'a> {
        Job {
            key: FileKey {
                tag,
                name: &file.name,
            },
            file,
            sha: &self.sha,
            ingest_time: self.ingest_time,
            attempt: self.attempt,
        }
    }
}

impl Ingest {
    /// Prepares a file on a prefetch thread: read in small windows (several such
    /// threads run at once), its statements on the shared connection `conn`.
    pub(crate) fn prepare(
        &self,
        conn: &impl Conn,
        tag: &BatchTag,
        file: &Claimed,
    ) -> Result<Prepared> {
        self.prepare_in(conn, tag, file, window::PREFETCH_WINDOW)
    }

    /// Prepares a file on the worker's own connection, read in the worker's
    /// windows: the first step of files that go in together (see `group`).
    pub(crate) fn prepare_own(
        &self,
        client: &mut postgres::Client,
        tag: &BatchTag,
        file: &Claimed,
    ) -> Result<Prepared> {
        self.prepare_in(&crate::db::Own::new(client), tag, file, window::WINDOW)
    }

    fn prepare_in(
        &self,
        conn: &impl Conn,
        tag: &BatchTag,
        file: &Claimed,
        window: usize,
    ) -> Result<Prepared> {
        window::with_file_in(
            &file.path,
            self.max_file_bytes,
            window,
            |opened| match opened {
                Ok(mut bytes) => self.front(conn, tag, file, &mut bytes),
                Err(u) => self.unreadable(conn, tag, file, u).map(Prepared::Ended),
            },
        )
    }

    /// A file that cannot be read as input fails; one the filesystem cannot read
    /// stays in processing/.
    pub(crate) fn unreadable(
        &self,
        conn: &impl Conn,
        tag: &BatchTag,
        file: &Claimed,
        why: Unreadable,
    ) -> Result<(FileOutcome, u32)> {
        let why = match why {
            Unreadable::Io(e) => return Err(e),
            Unreadable::Bad(why) => why,
        };
        let key = FileKey {
            tag,
            name: &file.name,
        };
        let attempt =
            conn.with(|c| manifest::open(c, &self.names, &key, "", 0, &self.host, file.seq))?;
        let bad = BadFile::unreadable(&why);
        self.fail_file(conn, &key, bad, attempt.attempt)
    }

    /// Its sha256, the manifest's word on it, and the vectors it lacks.
    pub(crate) fn front(
        &self,
        conn: &impl Conn,
        tag: &BatchTag,
        file: &Claimed,
        bytes: &mut FileBytes<'_>,
    ) -> Result<Prepared> {
        let key = FileKey {
            tag,
            name: &file.name,
        };
        let sha = bytes.sha256_hex()?;
        if let Some(outcome) = self.already_ingested(conn, &key, &sha, bytes.len(), file.seq)? {
            return Ok(Prepared::Ended((outcome, 1)));
        }
        let len = bytes.len() as i64;
        let tries =
            conn.with(|c| manifest::open(c, &self.names, &key, &sha, len, &self.host, file.seq))?;
        if tries.faults >= self.max_faults {
            let bad = self.poisoned(tries.faults);
            return self
                .fail_file(conn, &key, bad, tries.attempt)
                .map(Prepared::Ended);
        }
        let ingest_time = crate::clock::now_micros();
        let vectors = match self.prefetch(conn, &key, bytes, &file.path, file.seq)? {
            Ok(v) => v,
            Err(bad) => {
                return self
                    .fail_file(conn, &key, bad, tries.attempt)
                    .map(Prepared::Ended);
            }
        };
        Ok(Prepared::Ready(Ready {
            sha,
            attempt: tries.attempt,
            ingest_time,
            vectors,
        }))
    }

    /// A poison file: the same fault every try would keep it, and every file behind
    /// it, in processing/ for ever.
    fn poisoned(&self, faults: u32) -> BadFile {
        BadFile::new(
            Reason::Failed,
            format!(
                "gave up after {} tries that each ended in a fault of this file's own \
                 (the embeddings endpoint's answer for its texts, or a statement timeout \
                 on its rows), FILE_MAX_FAULTS={}",
                faults, self.max_faults
            ),
        )
    }

    /// Records `bad` in the manifest; the file belongs in failed/. A file whose
    /// content was committed meanwhile (on its behalf, by a later-claimed copy)
    /// stays committed: it is archived with what its row says.
    pub(crate) fn fail_file(
        &self,
        conn: &impl Conn,
        key: &FileKey<'_>,
        bad: BadFile,
        attempt: u32,
    ) -> Result<(FileOutcome, u32)> {
        let reason = bad.reason.as_str();
        if conn.with(|c| manifest::failed(c, &self.names, key, reason, bad.healed))? {
            return Ok((FileOutcome::Bad(bad), attempt));
        }
        log::info!(
            "{}: committed meanwhile; not failed ({})",
            key.name,
            bad.error
        );
        let done = conn.with(|c| manifest::committed(c, &self.names, key))?;
        Ok((FileOutcome::committed(done), attempt))
    }

    /// Recovery and duplicates: content already done is not ingested again.
    fn already_ingested(
        &self,
        conn: &impl Conn,
        key: &FileKey<'_>,
        sha: &str,
        len: u64,
        seq: i64,
    ) -> Result<Option<FileOutcome>> {
        conn.with(|client| {
            let Some((tag, name)) = manifest::ingested_by(client, &self.names, sha)? else {
                return Ok(None);
            };
            if tag == key.tag.as_str() && name == key.name {
                // A crash after commit and before archive: the file is in already. Its
                // batch reports the rows the manifest holds for it, and its replaced or
                // deleted documents still get their cached answers invalidated.
                let done = manifest::committed(client, &self.names, key)?;
                return Ok(Some(FileOutcome::committed(done)));
            }
            manifest::open(client, &self.names, key, sha, len as i64, &self.host, seq)?;
            manifest::done(client, &self.names, key, &manifest::Done::duplicate(false))
                .map_err(|e| db::classify(e, "recording the duplicate"))?;
            Ok(Some(FileOutcome::duplicate(false)))
        })
    }

    /// The file's missing vectors, before its transaction opens; `Ok(Err(bad))`
    /// when the file fails for a record or the endpoint's refusal of one. What the
    /// requests cost goes into the file's manifest row whatever the outcome.
    fn prefetch(
        &self,
        conn: &impl Conn,
        key: &FileKey<'_>,
        bytes: &mut FileBytes<'_>,
        path: &std::path::Path,
        seq: i64,
    ) -> Result<std::result::Result<Option<vectors::Vectors>, BadFile>> {
        let Some(embedder) = &self.embedder else {
            return Ok(Ok(None));
        };
        let reuse = embedder.reuse() && self.names.storage.doc_mode == DocMode::Replace;
        let spent = std::sync::Arc::new(Spent::default());
        let input = vectors::FileInput {
            seq,
            embed_dim: self.embed_dim,
            reuse,
            path,
        };
        let got = vectors::prefetch(conn, &self.names, embedder, bytes, &input, &spent);
        let faults = spent.faults.load(Ordering::Relaxed);
        let tokens = spent.tokens.load(Ordering::Relaxed);
        if faults > 0 || tokens > 0 {
            let faults = u32::try_from(faults).unwrap_or(u32::MAX);
            conn.with(|c| manifest::add_spent(c, &self.names, key, faults, tokens))?;
        }
        match got {
            Ok(v) => Ok(Ok(Some(v))),
            Err(vectors::Prefetch::Stop(e)) => Err(e),
            Err(vectors::Prefetch::Bad(bad)) => Ok(Err(bad)),
        }
    }
}
