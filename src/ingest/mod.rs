//! One file, exactly once: its rows (binary COPY), its change set (removals and the
//! claim-order check, SPEC §10) and its manifest `done` commit in one transaction;
//! content whose sha256 is already done is a duplicate; a row without a partition
//! triggers one bounded self-heal and one retry (SPEC §5, §10).

mod changeset;
pub(crate) mod copy;
pub(crate) mod embed;
pub(crate) mod group;
pub(crate) mod lineage;
pub(crate) mod manifest;
mod pace;
mod prepare;
mod vectors;
pub(crate) mod verify;
pub(crate) mod window;

use crate::batch::{BatchTag, Reason};
use crate::db::{self, Db, Own};
use crate::error::{Error, Result};
use crate::ingest::copy::{COLUMNS, CopyEncoder, RowMeta};
use crate::ingest::embed::Embedder;
use crate::ingest::manifest::FileKey;
use crate::ingest::window::FileBytes;
use crate::partition;
use crate::record::{Embedding, RecordError};
use crate::schema::Names;
use crate::spool::{Claimed, Unreadable};
use crate::storage::DocMode;
use changeset::FileRef;
use postgres::Client;
pub(crate) use prepare::{Prepared, Ready};
use std::collections::BTreeSet;
use std::io::Write;

/// Bytes buffered before they are written to the COPY stream.
const COPY_CHUNK: usize = copy::CHUNK;

/// Everything a worker needs to ingest files.
#[derive(Clone)]
pub(crate) struct Ingest {
    /// Relation names.
    pub(crate) names: Names,
    /// The database.
    pub(crate) db: Db,
    /// Embeddings client, when EMBED_BASE_URL is set.
    pub(crate) embedder: Option<Embedder>,
    /// EMBED_DIM.
    pub(crate) embed_dim: Option<usize>,
    /// MAX_FILE_BYTES.
    pub(crate) max_file_bytes: u64,
    /// FILE_MAX_FAULTS.
    pub(crate) max_faults: u32,
    /// This host's name, for the manifest.
    pub(crate) host: String,
    /// DATABASE_URL is a Citus coordinator (DISTRIBUTION=citus).
    pub(crate) citus: bool,
}

/// How one file ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FileOutcome {
    /// Its rows are in (or it was already in: `duplicate`).
    Ingested {
        /// Rows inserted.
        rows: u64,
        /// Earlier rows its change set removed.
        deleted: u64,
        /// Documents it replaced or deleted (their cached answers go).
        changed_docs: Vec<String>,
        /// A partition was created for it.
        healed: bool,
        /// Its content was already ingested; no rows inserted.
        duplicate: bool,
    },
    /// It failed permanently and belongs in failed/.
    Bad(BadFile),
}

/// Why a file failed, for its reason.json, the manifest and the batch reason.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BadFile {
    /// Failed or PartitionMissing.
    pub(crate) reason: Reason,
    /// A self-heal happened before it failed.
    pub(crate) healed: bool,
    /// What is wrong (never record content).
    pub(crate) error: String,
    /// The record, when one is to blame.
    pub(crate) record_index: Option<u64>,
    /// The byte offset, when known.
    pub(crate) byte_offset: Option<u64>,
}

impl BadFile {
    fn new(reason: Reason, error: impl Into<String>) -> BadFile {
        BadFile {
            reason,
            healed: false,
            error: error.into(),
            record_index: None,
            byte_offset: None,
        }
    }

    /// A file that cannot be read as input (empty, too large, not a regular file).
    pub(crate) fn unreadable(why: &str) -> BadFile {
        BadFile::new(Reason::Failed, format!("file {why}"))
    }

    /// A file that `validate` could not read at all (missing, unreadable).
    pub(crate) fn unreadable_io(why: &str) -> BadFile {
        BadFile::new(Reason::Failed, why)
    }

    /// The `<file>.reason.json` body (SPEC §4).
    pub(crate) fn reason_json(&self, file: &str) -> String {
        self.reason(file).to_string()
    }

    /// The `<file>.reason.json` object (SPEC §4), which `validate` prints too.
    pub(crate) fn reason(&self, file: &str) -> serde_json::Value {
        serde_json::json!({
            "file": file,
            "error": self.error,
            "record_index": self.record_index,
            "byte_offset": self.byte_offset,
        })
    }
}

impl From<RecordError> for BadFile {
    fn from(e: RecordError) -> BadFile {
        BadFile {
            reason: Reason::Failed,
            healed: false,
            error: e.message,
            record_index: Some(e.record_index),
            byte_offset: Some(e.byte_offset),
        }
    }
}

impl FileOutcome {
    /// A file whose transaction committed earlier, as its manifest row says.
    fn committed(done: manifest::Committed) -> FileOutcome {
        FileOutcome::Ingested {
            rows: done.rows,
            deleted: done.deleted,
            changed_docs: done.changed_docs,
            healed: done.healed,
            duplicate: false,
        }
    }

    /// A file whose content another file committed: archived, no rows.
    fn duplicate(healed: bool) -> FileOutcome {
        FileOutcome::Ingested {
            rows: 0,
            deleted: 0,
            changed_docs: Vec::new(),
            healed,
            duplicate: true,
        }
    }
}

/// One file on its way through its transaction.
pub(crate) struct Job<'a> {
    key: FileKey<'a>,
    file: &'a Claimed,
    sha: &'a str,
    /// `ingested_at` of rows without `created_at` (fixed across retries).
    ingest_time: i64,
    /// Which try of the file this is (the manifest counts them).
    attempt: u32,
}

impl Job<'_> {
    /// The file whose content this is, by claim order: this one, or `earlier`.
    fn file_ref_as<'e>(&'e self, earlier: Option<&'e manifest::EarlierCopy>) -> FileRef<'e> {
        earlier.map_or_else(
            || self.file_ref(),
            |e| FileRef {
                sha256: self.sha,
                batch_tag: e.tag.as_str(),
                name: &e.name,
                seq: e.seq,
            },
        )
    }

    /// Deadlocks and serialization failures that went on past RETRY_MAX_SECS.
    fn kept_conflicting(&self) -> Error {
        Error::temp("the file kept conflicting with concurrent ingests")
            .context(format!("ingesting {}", self.file.name))
            .with_note("nothing was lost: the file stays in processing/; run again later")
    }

    /// The file as its change set and lineage rows name it.
    fn file_ref(&self) -> FileRef<'_> {
        FileRef {
            sha256: self.sha,
            batch_tag: self.key.tag.as_str(),
            name: &self.file.name,
            seq: self.file.seq,
        }
    }
}

/// Which file a file's content goes in as.
enum Original {
    /// This one: no earlier-claimed file holds it.
    ThisFile,
    /// An earlier-claimed file, not yet committed: as that file, at its sequence.
    Earlier(manifest::EarlierCopy),
    /// Another file committed it: this one is its duplicate.
    Duplicate,
    /// A later-claimed copy committed it on this file's behalf: this file is in.
    CommittedForIt,
}

/// What a failed COPY leads to.
enum Retry {
    /// The missing partitions were created: the transaction runs again at once.
    Healed,
    /// A deadlock or serialization failure: again, after a backoff.
    Conflict,
    /// The file fails for this reason.
    Fail(BadFile),
}

/// What one file's transaction wrote.
#[derive(Debug, Clone)]
struct Applied {
    rows: u64,
    deleted: u64,
    changed_docs: Vec<String>,
    /// Rows whose record brought its vector.
    brought: u64,
}

/// One file's records in a COPY stream.
struct Encoded {
    /// The documents it touches.
    docs: changeset::DocSet,
    /// Rows it adds.
    rows: u64,
    /// Its delete records.
    deletes: u64,
    /// Rows whose record brought its vector.
    brought: u64,
}

/// Why a COPY attempt stopped.
enum CopyFail {
    Bad(BadFile),
    Db(postgres::Error),
    Temp(Error),
    /// Writing to the COPY stream failed; `finish` says why.
    Broken,
}

impl From<Error> for CopyFail {
    fn from(e: Error) -> CopyFail {
        CopyFail::Temp(e)
    }
}

impl Ingest {
    /// Ingests one claimed file; returns how it ended and which attempt this was.
    /// `Err` means the file must stay in processing/ (an outage or a problem that
    /// is not the file's fault). Its vectors, when it lacks some, are fetched
    /// before its transaction opens.
    pub(crate) fn file(
        &self,
        client: &mut Client,
        tag: &BatchTag,
        file: &Claimed,
    ) -> Result<(FileOutcome, u32)> {
        window::with_file(&file.path, self.max_file_bytes, |opened| {
            let mut bytes = match opened {
                Ok(b) => b,
                Err(u) => return self.unreadable(&Own::new(client), tag, file, u),
            };
            match self.front(&Own::new(client), tag, file, &mut bytes)? {
                Prepared::Ended(outcome) => Ok(outcome),
                Prepared::Ready(mut ready) => {
                    let vectors = ready.vectors.take();
                    self.transact(client, &ready.job(tag, file), &mut bytes, vectors)
                }
            }
        })
    }

    /// The transaction of a file that [`Ingest::prepare`] made ready, on the
    /// worker's own connection.
    pub(crate) fn complete(
        &self,
        client: &mut Client,
        tag: &BatchTag,
        file: &Claimed,
        prepared: Result<Prepared>,
    ) -> Result<(FileOutcome, u32)> {
        let mut ready = match prepared? {
            Prepared::Ended(outcome) => return Ok(outcome),
            Prepared::Ready(ready) => ready,
        };
        let vectors = ready.vectors.take();
        self.reopen(file, window::WINDOW, |bytes| {
            self.transact(client, &ready.job(tag, file), bytes, vectors)
        })
    }

    /// Runs `f` on a file that was prepared a moment ago, opened again with
    /// windows of `window` bytes (a file no larger is read whole at once).
    fn reopen<T>(
        &self,
        file: &Claimed,
        window: usize,
        f: impl FnOnce(&mut FileBytes<'_>) -> Result<T>,
    ) -> Result<T> {
        window::with_file_in(&file.path, self.max_file_bytes, window, |opened| {
            f(&mut opened.map_err(|u| reread(file, u))?)
        })
    }

    /// The file's transaction, tried again after a deadlock with another file of
    /// the same document, a race to commit the same content, or a self-heal.
    fn transact(
        &self,
        client: &mut Client,
        job: &Job<'_>,
        bytes: &mut FileBytes<'_>,
        mut vectors: Option<vectors::Vectors>,
    ) -> Result<(FileOutcome, u32)> {
        let mut healed = false;
        // Deadlocks and serialization failures between files of one document, and
        // races to commit the same content, are retried within RETRY_MAX_SECS like
        // any transient error; past it the file stays in processing/ (exit 75).
        let mut backoff = crate::backoff::Backoff::new(self.db.retry_budget());
        let mut conflicted = false;
        loop {
            if std::mem::take(&mut conflicted) && !backoff.wait(None) {
                return Err(job.kept_conflicting());
            }
            let mut tx = self.begin(client, "starting the file's transaction")?;
            let earlier = match self.original(&mut tx, job, bytes)? {
                Original::ThisFile => None,
                Original::Earlier(e) => Some(e),
                Original::Duplicate => return self.commit_duplicate(tx, job, healed),
                Original::CommittedForIt => {
                    drop(tx);
                    let done = manifest::committed(client, &self.names, &job.key)?;
                    return Ok((FileOutcome::committed(done), job.attempt));
                }
            };
            if let Some(v) = &mut vectors {
                v.rewind()
                    .map_err(|e| e.context(format!("ingesting {}", job.file.name)))?;
            }
            // An earlier-claimed copy of this content is the original by claim
            // order: its content goes in now as that file, at its claim sequence,
            // and this file is its duplicate.
            let as_file = job.file_ref_as(earlier.as_ref());
            let copied = self.copy_rows(&mut tx, as_file, bytes, job.ingest_time, vectors.as_mut());
            let failure = match copied {
                Ok(applied) => match self.commit(
                    tx,
                    job,
                    earlier.as_ref(),
                    applied,
                    healed,
                    vectors.as_ref(),
                )? {
                    Some(outcome) => return Ok((outcome, job.attempt)),
                    // Another process committed the same content first (go round
                    // again and record this file as its duplicate), or a conflict.
                    None => {
                        conflicted = true;
                        continue;
                    }
                },
                Err(f) => f,
            };
            drop(tx);
            let bad = match self.triage(client, job, bytes, failure, &mut healed)? {
                Retry::Healed => continue,
                Retry::Conflict => {
                    conflicted = true;
                    continue;
                }
                Retry::Fail(bad) => bad,
            };
            return self.fail_file(
                &Own::new(client),
                &job.key,
                BadFile { healed, ..bad },
                job.attempt,
            );
        }
    }

    /// Opens a file's (or a group's) transaction. On a Citus coordinator its
    /// statements over many shards go over one connection per worker: with a
    /// worker's share of a batch in one COPY, up to 16 connections per worker (one
    /// per shard placement, Citus's default) cost more in their starts and in their
    /// backends' contention for the workers' cores than their parallelism gave
    /// (200,000 rows in 4.5-4.8 s against 5.3-5.8 at 32 shards; docs/benchmark.md).
    /// Only ingest's transactions take it: `maintain`'s index builds and scans keep
    /// Citus's parallelism.
    fn begin<'c>(&self, client: &'c mut Client, what: &str) -> Result<postgres::Transaction<'c>> {
        let mut tx = client.transaction().map_err(|e| db::classify(e, what))?;
        if self.citus {
            tx.batch_execute("SET LOCAL citus.max_adaptive_executor_pool_size = 1")
                .map_err(|e| db::classify(e, what))?;
        }
        Ok(tx)
    }

    /// Which file this content goes in as, by claim order (SPEC §3).
    fn original(
        &self,
        tx: &mut postgres::Transaction<'_>,
        job: &Job<'_>,
        bytes: &mut FileBytes<'_>,
    ) -> Result<Original> {
        Ok(match manifest::ingested_by(tx, &self.names, job.sha)? {
            Some((tag, name)) if tag == job.key.tag.as_str() && name == job.key.name => {
                Original::CommittedForIt
            }
            Some(_) => Original::Duplicate,
            None => {
                let open = manifest::earlier_copy(tx, &self.names, job.sha, job.file.seq)?;
                self.original_beside(tx, job, bytes, open)?
            }
        })
    }

    /// [`Ingest::original`] for content that no file has ingested: the earliest of
    /// the copies, `open` (the earliest open one claimed before this file) or one
    /// claimed before that and not yet opened by its batch.
    fn original_beside(
        &self,
        tx: &mut postgres::Transaction<'_>,
        job: &Job<'_>,
        bytes: &mut FileBytes<'_>,
        open: Option<manifest::EarlierCopy>,
    ) -> Result<Original> {
        let before = open.as_ref().map_or(job.file.seq, |e| e.seq);
        Ok(match self.unopened_copy(tx, job, bytes, before)? {
            Some(e) => Original::Earlier(e),
            None => open.map_or(Original::ThisFile, Original::Earlier),
        })
    }

    /// An earlier-claimed copy of this file's content that its batch has not yet
    /// opened in the manifest (queued behind other files, or in a batch whose
    /// claimer died): found in processing/ by its claim record, size and sha256,
    /// and opened here, in this transaction, so that it is the original.
    fn unopened_copy(
        &self,
        tx: &mut postgres::Transaction<'_>,
        job: &Job<'_>,
        bytes: &mut FileBytes<'_>,
        before: i64,
    ) -> Result<Option<manifest::EarlierCopy>> {
        let Some(spool) = crate::spool::Spool::holding(&job.file.path) else {
            return Ok(None);
        };
        let len = bytes.len();
        let mut head = None;
        for e in spool.claimed_before(before, len) {
            if e.tag == *job.key.tag && e.name == job.file.name {
                continue;
            }
            // Files of one size mostly differ in their first bytes: a whole hash
            // only for those that do not.
            if head.is_none() {
                head = Some(bytes.head(4096)?);
            }
            if !crate::fs::starts_with(&e.path, head.as_deref().unwrap_or_default()) {
                continue;
            }
            // Read apart from the worker's buffer, which holds this file now.
            let Ok(sha) = crate::fs::sha256_of(&e.path) else {
                continue;
            };
            if sha != job.sha {
                continue;
            }
            let key = FileKey {
                tag: &e.tag,
                name: &e.name,
            };
            // Only a file with no row yet: one that opened meanwhile is found by
            // earlier_copy, and one that failed stays failed.
            let (sha, host) = (job.sha, self.host.as_str());
            if !manifest::open_new(tx, &self.names, &key, sha, len as i64, host, e.seq)? {
                match manifest::earlier_copy(tx, &self.names, job.sha, before)? {
                    Some(open) => return Ok(Some(open)),
                    None => continue,
                }
            }
            return Ok(Some(manifest::EarlierCopy {
                tag: e.tag,
                name: e.name,
                seq: e.seq,
            }));
        }
        Ok(None)
    }

    /// Records the file as a duplicate of content another file committed.
    fn commit_duplicate(
        &self,
        mut tx: postgres::Transaction<'_>,
        job: &Job<'_>,
        healed: bool,
    ) -> Result<(FileOutcome, u32)> {
        manifest::done(
            &mut tx,
            &self.names,
            &job.key,
            &manifest::Done::duplicate(healed),
        )
        .map_err(|e| db::classify(e, "recording the duplicate"))?;
        tx.commit()
            .map_err(|e| db::classify(e, "committing the duplicate"))?;
        Ok((FileOutcome::duplicate(healed), job.attempt))
    }

    /// Commits the file's rows with its manifest `done` (or, when they went in as
    /// `earlier`, that file's `done` and this one's as its duplicate); `None` when
    /// another process committed the same content first, or on a conflict.
    fn commit(
        &self,
        mut tx: postgres::Transaction<'_>,
        job: &Job<'_>,
        earlier: Option<&manifest::EarlierCopy>,
        applied: Applied,
        healed: bool,
        vectors: Option<&vectors::Vectors>,
    ) -> Result<Option<FileOutcome>> {
        let done = manifest::Done {
            rows: applied.rows as i64,
            deleted: applied.deleted as i64,
            seq: Some(earlier.map_or(job.file.seq, |e| e.seq)),
            healed,
            duplicate: false,
            embedded: vectors.map_or(0, |v| v.fetched as i64),
            reused: vectors.map_or(0, |v| v.reused as i64),
        };
        let committed = match earlier {
            None => manifest::done(&mut tx, &self.names, &job.key, &done),
            Some(e) => {
                let original = FileKey {
                    tag: &e.tag,
                    name: &e.name,
                };
                log::info!(
                    "{}: committed as {}/{}, claimed before it with the same content",
                    job.file.name,
                    e.tag,
                    e.name
                );
                manifest::done(&mut tx, &self.names, &original, &done).and_then(|()| {
                    let dup = manifest::Done::duplicate(healed);
                    manifest::done(&mut tx, &self.names, &job.key, &dup)
                })
            }
        }
        .and_then(|()| tx.commit());
        match committed {
            Ok(()) => {
                crate::failpoint::hit("file-committed");
                if let Some(v) = vectors {
                    crate::metrics::EMBEDDINGS_FETCHED.add(v.fetched);
                    crate::metrics::EMBEDDINGS_REUSED.add(v.reused);
                }
                crate::metrics::EMBEDDINGS_RECORD.add(applied.brought);
                // As a duplicate this file adds no rows; the documents its
                // transaction changed still get their cached answers invalidated.
                let duplicate = earlier.is_some();
                Ok(Some(FileOutcome::Ingested {
                    rows: if duplicate { 0 } else { applied.rows },
                    deleted: if duplicate { 0 } else { applied.deleted },
                    changed_docs: applied.changed_docs,
                    healed,
                    duplicate,
                }))
            }
            Err(e)
                if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
                    || is_conflict(&e) =>
            {
                Ok(None)
            }
            Err(e) => Err(db::classify(e, "committing the file")),
        }
    }

    /// What a failed COPY means: go round again (a deadlock, a self-heal that
    /// created the partition), the file's own fault, or an error that keeps the
    /// file in processing/.
    fn triage(
        &self,
        client: &mut Client,
        job: &Job<'_>,
        bytes: &mut FileBytes<'_>,
        failure: CopyFail,
        healed: &mut bool,
    ) -> Result<Retry> {
        let bad = match failure {
            CopyFail::Temp(e) => return Err(e),
            CopyFail::Broken => {
                return Err(Error::temp("the COPY stream broke").context("copying rows"));
            }
            CopyFail::Bad(bad) => bad,
            // Two files of one document met in a deadlock: go round again.
            CopyFail::Db(e) if is_conflict(&e) => return Ok(Retry::Conflict),
            CopyFail::Db(e) if partition::is_no_partition(&e) && !*healed => {
                match self.heal(client, bytes, job.ingest_time)? {
                    Ok(_) => {
                        *healed = true;
                        return Ok(Retry::Healed);
                    }
                    Err(why) => BadFile::new(Reason::PartitionMissing, why),
                }
            }
            CopyFail::Db(e) if partition::is_no_partition(&e) => BadFile::new(
                Reason::PartitionMissing,
                format!("still no partition after self-heal: {}", db::describe(&e)),
            ),
            CopyFail::Db(e) if db::is_transient(&e) => {
                if e.code() == Some(&postgres::error::SqlState::QUERY_CANCELED) {
                    // A statement timeout on this file's rows: its fault, unlike an
                    // outage, so it counts towards FILE_MAX_FAULTS.
                    let _ = manifest::add_faults(client, &self.names, &job.key, 1);
                }
                return Err(db::classify(e, "copying rows"));
            }
            CopyFail::Db(e) if is_data_error(&e) => BadFile::new(
                Reason::Failed,
                format!("the database rejected a row: {}", db::describe(&e)),
            ),
            CopyFail::Db(e) => return Err(db::classify(e, "copying rows")),
        };
        Ok(Retry::Fail(bad))
    }

    /// Streams the file's records into a binary COPY, then applies its change set.
    fn copy_rows(
        &self,
        tx: &mut postgres::Transaction<'_>,
        file: FileRef<'_>,
        bytes: &mut FileBytes<'_>,
        ingest_time: i64,
        vectors: Option<&mut vectors::Vectors>,
    ) -> std::result::Result<Applied, CopyFail> {
        let replace = self.names.storage.doc_mode == DocMode::Replace;
        let mut writer = tx.copy_in(&self.copy_statement()).map_err(CopyFail::Db)?;
        let mut enc = CopyEncoder::new(&self.names.storage);
        let encoded = self.encode_file(&mut writer, &mut enc, file, bytes, ingest_time, vectors);
        let (docs, brought) = match encoded {
            Err(CopyFail::Broken) => return Err(broken(writer)),
            Err(e) => return Err(e),
            Ok(Encoded { docs, brought, .. }) => (docs, brought),
        };
        enc.finish();
        if !send(&mut writer, &mut enc) {
            return Err(broken(writer));
        }
        let copied = writer.finish().map_err(CopyFail::Db)?;
        let change = changeset::apply(tx, &self.names, &docs, replace, file, self.citus)
            .map_err(CopyFail::Db)?;
        Ok(Applied {
            rows: copied - change.withdrawn,
            deleted: change.deleted,
            changed_docs: change.removed_docs,
            brought,
        })
    }

    /// The COPY statement of the target table's columns.
    fn copy_statement(&self) -> String {
        format!(
            "COPY {} ({COLUMNS}) FROM STDIN (FORMAT binary)",
            self.names.table
        )
    }

    /// Encodes one file's records into the COPY stream `writer` (through `enc`,
    /// which may still hold the tail of its rows), checking them as it goes.
    fn encode_file(
        &self,
        writer: &mut postgres::CopyInWriter<'_>,
        enc: &mut CopyEncoder,
        file: FileRef<'_>,
        bytes: &mut FileBytes<'_>,
        ingest_time: i64,
        mut vectors: Option<&mut vectors::Vectors>,
    ) -> std::result::Result<Encoded, CopyFail> {
        let mut check = verify::FileCheck::new(self.names.storage.needs_direction());
        let model = self.embedder.as_ref().map(Embedder::model);
        let mut brought = 0u64;
        let decoded = bytes.records(self.embed_dim, |records| {
            while let Some(record) = records.next_indexed() {
                let (index, mut record) = record.map_err(|e| CopyFail::Bad(e.into()))?;
                check.record(index, &record).map_err(CopyFail::Bad)?;
                if record.delete {
                    continue;
                }
                let mut embedding_model = None;
                match (&record.embedding, vectors.as_deref_mut()) {
                    (Some(_), _) => brought += 1,
                    (None, Some(store)) => {
                        record.embedding = Some(Embedding::Values(store.next()?));
                        embedding_model = model;
                    }
                    (None, None) => {}
                }
                let meta = RowMeta {
                    created_at: record.created_at.unwrap_or(ingest_time),
                    batch_tag: file.batch_tag,
                    embedding_model,
                    seq: file.seq,
                };
                enc.row(&record, &meta).map_err(|why| {
                    CopyFail::Bad(BadFile {
                        record_index: Some(index),
                        ..BadFile::new(Reason::Failed, why.to_string())
                    })
                })?;
                if enc.len() >= COPY_CHUNK && !send(writer, enc) {
                    return Err(CopyFail::Broken);
                }
            }
            Ok(())
        });
        decoded?;
        let (docs, counts) = check.finish().map_err(CopyFail::Bad)?;
        Ok(Encoded {
            docs,
            rows: counts.with_vectors + counts.without_vectors,
            deletes: counts.deletes,
            brought,
        })
    }

    /// Creates the partitions the file's rows need: `Ok(true)` when some were
    /// missing, `Err(why)` when self-heal is not allowed (SPEC §5 bounds).
    fn heal(
        &self,
        client: &mut Client,
        bytes: &mut FileBytes<'_>,
        ingest_time: i64,
    ) -> Result<std::result::Result<bool, String>> {
        let mut days = BTreeSet::new();
        bytes.records(None, |records| {
            let created = records
                .map_while(|r| r.ok())
                .filter(|r| !r.delete)
                .filter_map(|r| partition::day_of(r.created_at.unwrap_or(ingest_time)));
            days.extend(created);
            Ok::<(), Error>(())
        })?;
        let (ranges, _) = partition::coverage(client, &self.names)?;
        let missing = partition::missing(&ranges, days);
        let today = time::OffsetDateTime::now_utc().date();
        if let Some(why) = partition::heal_refusal(&self.names, &missing, today) {
            return Ok(Err(why));
        }
        if missing.is_empty() {
            return Ok(Ok(false));
        }
        let created = partition::create_days(client, &self.names, &missing)?;
        log::info!(
            "self-heal created {created} partition(s) for {} missing day(s)",
            missing.len()
        );
        Ok(Ok(true))
    }
}

/// Why a file that was prepared cannot be read again.
fn reread(file: &Claimed, u: Unreadable) -> Error {
    match u {
        Unreadable::Io(e) => e,
        // It was read whole a moment ago, under this batch's lock.
        Unreadable::Bad(why) => Error::temp(format!("{}: {why} since it was prepared", file.name)),
    }
}

/// A deadlock or serialization failure between two files' transactions.
fn is_conflict(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
            || *c == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// Data exceptions and integrity violations are the file's fault; others are not.
fn is_data_error(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        let c = c.code();
        c.starts_with("22") || c.starts_with("23") || c.starts_with("54")
    })
}

/// Writes the encoded bytes to the COPY stream; false when the stream broke.
fn send(writer: &mut postgres::CopyInWriter<'_>, enc: &mut CopyEncoder) -> bool {
    let ok = writer.write_all(enc.bytes()).is_ok();
    enc.clear();
    crate::heartbeat::beat();
    ok
}

/// The server's reason for a broken COPY stream, which `finish` reports.
fn broken(writer: postgres::CopyInWriter<'_>) -> CopyFail {
    match writer.finish() {
        Err(e) => CopyFail::Db(e),
        Ok(_) => CopyFail::Temp(Error::temp("the COPY stream broke").context("copying rows")),
    }
}
