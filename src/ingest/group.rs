//! Several files of one batch in one transaction, when each of them only adds
//! rows (DOC_MODE=append, no delete records) and brings its own vectors or none
//! (no embeddings endpoint: its prefetch stage hands files over one by one): one
//! COPY of all their rows, one upsert of their documents, one statement for their
//! lineage rows, and each file's manifest `done`, committed together.
//!
//! On a Citus coordinator each statement that reaches the shards pays a start on
//! every shard, and each commit a two-phase commit: for files of a few thousand
//! rows that cost more than the rows themselves (docs/benchmark.md, Citus). Each
//! file stays exactly once: its rows and its manifest row commit in one
//! transaction, which now holds other files' too, and claim order is kept because
//! every row and lineage row carries its own file's sequence. Anything out of the
//! ordinary (a bad record, a copy of the same content, a document a later file
//! removed, a conflict, an outage, a commit whose outcome is unknown) rolls the
//! group back, and its files go in one at a time as always, which handles each
//! case. A missing partition is healed for the group's files, as for a file alone,
//! and the group tried once more.

use super::{CopyFail, Encoded, Ingest, Job, Original, broken, send};
use crate::batch::BatchTag;
use crate::db;
use crate::error::{Error, Result};
use crate::ingest::changeset;
use crate::ingest::copy::CopyEncoder;
use crate::ingest::manifest;
use crate::ingest::window;
use crate::ingest::{FileOutcome, Ready};
use crate::partition;
use crate::spool::Claimed;
use postgres::Client;
use std::collections::HashSet;

/// Files that go in together: no more than this many...
pub(crate) const MAX_FILES: usize = 64;
/// ...and no more input than this, so that a group that must be rolled back and
/// done again one file at a time wastes a bounded COPY.
pub(crate) const MAX_BYTES: u64 = 128 << 20;

/// A file ready for its transaction.
pub(crate) type ReadyFile = (Claimed, Ready);

/// Why files go in one at a time after all.
type Apart = &'static str;

/// A partition the rows need is missing: the group heals and goes again.
const NO_PARTITION: Apart = "a partition their rows need is missing";

impl Ingest {
    /// Commits `files` (in claim order) in one transaction and returns how each
    /// ended; `Err(why)`, with nothing committed, when they cannot go in together
    /// and are to go in one at a time.
    pub(crate) fn group(
        &self,
        client: &mut Client,
        tag: &BatchTag,
        files: &[ReadyFile],
    ) -> std::result::Result<Vec<(FileOutcome, u32)>, String> {
        if files.iter().any(|(_, r)| r.vectors.is_some()) {
            return Err("their vectors were fetched".into());
        }
        let jobs: Vec<Job<'_>> = files.iter().map(|(f, r)| r.job(tag, f)).collect();
        match self.together(client, &jobs) {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(why)) => Err(why.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The group's transaction; after a missing partition, self-heal and once more.
    fn together(
        &self,
        client: &mut Client,
        jobs: &[Job<'_>],
    ) -> Result<std::result::Result<Vec<(FileOutcome, u32)>, Apart>> {
        match self.try_group(client, jobs, &vec![false; jobs.len()])? {
            Err(NO_PARTITION) => {}
            tried => return Ok(tried),
        }
        match self.heal_all(client, jobs)? {
            Ok(healed) => self.try_group(client, jobs, &healed),
            Err(why) => Ok(Err(why)),
        }
    }

    /// Self-heal for each file in claim order, as each would have alone: which of
    /// them needed a partition (a later file whose days an earlier one brought in
    /// did not); `Err` when self-heal is not allowed for one (it fails alone).
    fn heal_all(
        &self,
        client: &mut Client,
        jobs: &[Job<'_>],
    ) -> Result<std::result::Result<Vec<bool>, Apart>> {
        let mut healed = Vec::with_capacity(jobs.len());
        for job in jobs {
            let heal = self.reopen(job.file, window::WINDOW, |bytes| {
                self.heal(client, bytes, job.ingest_time)
            })?;
            match heal {
                Ok(needed) => healed.push(needed),
                Err(_) => return Ok(Err("self-heal is not allowed for one of them")),
            }
        }
        Ok(Ok(healed))
    }

    fn try_group(
        &self,
        client: &mut Client,
        jobs: &[Job<'_>],
        healed: &[bool],
    ) -> Result<std::result::Result<Vec<(FileOutcome, u32)>, Apart>> {
        // Of two copies of one content the later-claimed is the duplicate, which
        // the file-by-file path decides.
        let shas: Vec<&str> = jobs.iter().map(|j| j.sha).collect();
        let mut seen = HashSet::new();
        if !shas.iter().all(|s| seen.insert(s)) {
            return Ok(Err("two of them hold the same content"));
        }
        let Some(tag) = jobs.first().map(|j| j.key.tag) else {
            return Ok(Ok(Vec::new()));
        };
        let mut tx = self.begin(client, "starting the files' transaction")?;
        let files: Vec<&str> = jobs.iter().map(|j| j.key.name).collect();
        let elsewhere = manifest::known_elsewhere(&mut tx, &self.names, tag, &files, &shas)?;
        for job in jobs {
            // Which file a content goes in as needs only the file's size and first
            // bytes: small windows, so that it is not read whole for that. The
            // manifest is asked file by file only when it knows one of the contents.
            let original =
                self.reopen(job.file, window::PREFETCH_WINDOW, |bytes| match elsewhere {
                    true => self.original(&mut tx, job, bytes),
                    false => self.original_beside(&mut tx, job, bytes, None),
                })?;
            if !matches!(original, Original::ThisFile) {
                return Ok(Err("one's content is another file's too"));
            }
        }
        let encoded = match self.copy_all(&mut tx, jobs)? {
            Ok(encoded) => encoded,
            Err(why) => return Ok(Err(why)),
        };
        let sets: Vec<_> = jobs
            .iter()
            .zip(&encoded)
            .map(|(j, e)| (j.file_ref(), &e.docs))
            .collect();
        let applied = changeset::apply_appends(&mut tx, &self.names, &sets, self.citus)
            .map_err(|e| db::classify(e, "applying the files' change sets"))?;
        if !applied {
            return Ok(Err("a later-claimed file removed one of their documents"));
        }
        let done: Vec<manifest::Done> = jobs
            .iter()
            .zip(&encoded)
            .zip(healed)
            .map(|((job, e), healed)| manifest::Done {
                rows: e.rows as i64,
                deleted: 0,
                seq: Some(job.file.seq),
                healed: *healed,
                duplicate: false,
                embedded: 0,
                reused: 0,
            })
            .collect();
        let marks: Vec<(&str, &manifest::Done)> = files.iter().copied().zip(&done).collect();
        let open = manifest::done_all_if_open(&mut tx, &self.names, tag, &marks)
            .map_err(|e| db::classify(e, "recording the files"))?;
        if !open {
            return Ok(Err("one of them was committed meanwhile"));
        }
        tx.commit()
            .map_err(|e| db::classify(e, "committing the files"))?;
        Ok(Ok(committed(jobs, &encoded, healed)))
    }

    /// One COPY of every file's rows; `Err(why)` (the COPY aborted) when a file is
    /// bad or holds delete records, whose change set goes before its rows.
    fn copy_all(
        &self,
        tx: &mut postgres::Transaction<'_>,
        jobs: &[Job<'_>],
    ) -> Result<std::result::Result<Vec<Encoded>, Apart>> {
        let mut writer = tx
            .copy_in(&self.copy_statement())
            .map_err(|e| db::classify(e, "copying rows"))?;
        let mut enc = CopyEncoder::new(&self.names.storage);
        let mut all = Vec::with_capacity(jobs.len());
        for job in jobs {
            let encoded = self.reopen(job.file, window::WINDOW, |bytes| {
                let (file, at) = (job.file_ref(), job.ingest_time);
                Ok(self.encode_file(&mut writer, &mut enc, file, bytes, at, None))
            })?;
            // Dropped unfinished, the writer aborts the COPY.
            match encoded {
                Ok(e) if e.deletes == 0 => all.push(e),
                Ok(_) => return Ok(Err("one holds delete records")),
                Err(CopyFail::Broken) => return copy_broke(writer),
                Err(_) => return Ok(Err("one holds a bad record")),
            }
        }
        enc.finish();
        if !send(&mut writer, &mut enc) {
            return copy_broke(writer);
        }
        let copied = match writer.finish() {
            Ok(copied) => copied,
            Err(e) => return copy_failed(e),
        };
        if copied != all.iter().map(|e| e.rows).sum::<u64>() {
            return Err(Error::temp(
                "the COPY took another number of rows than sent",
            ));
        }
        Ok(Ok(all))
    }
}

/// A COPY the server ended: a missing partition sends the group to self-heal;
/// anything else is an error (the files then go in one by one, which reports it).
fn copy_failed<T>(e: postgres::Error) -> Result<std::result::Result<T, Apart>> {
    if partition::is_no_partition(&e) {
        return Ok(Err(NO_PARTITION));
    }
    Err(db::classify(e, "copying rows"))
}

/// Why the COPY stream broke, which the server says.
fn copy_broke<T>(writer: postgres::CopyInWriter<'_>) -> Result<std::result::Result<T, Apart>> {
    match broken(writer) {
        CopyFail::Db(e) => copy_failed(e),
        CopyFail::Temp(e) => Err(e),
        CopyFail::Bad(_) | CopyFail::Broken => Err(Error::temp("the COPY stream broke")),
    }
}

/// How each file of a committed group ended, counted as a file's commit is.
fn committed(jobs: &[Job<'_>], encoded: &[Encoded], healed: &[bool]) -> Vec<(FileOutcome, u32)> {
    let mut out = Vec::with_capacity(jobs.len());
    for ((job, e), healed) in jobs.iter().zip(encoded).zip(healed) {
        crate::failpoint::hit("file-committed");
        crate::metrics::EMBEDDINGS_RECORD.add(e.brought);
        let outcome = FileOutcome::Ingested {
            rows: e.rows,
            deleted: 0,
            changed_docs: Vec::new(),
            healed: *healed,
            duplicate: false,
        };
        out.push((outcome, job.attempt));
    }
    out
}
