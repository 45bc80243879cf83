//! A file's change set (SPEC §10, §12): the documents it removes (delete records,
//! and in replace mode every doc_id it carries) and adds, applied in the file's
//! transaction after its COPY so that the table ends as if files had been applied
//! one at a time in claim order, whatever order their transactions commit in; its
//! whole-document checks (`chunk_count`); and its lineage rows.
//!
//! Every row carries its file's claim sequence (`ragspool_seq`) and
//! `ragspool_docs` keeps, per document, the highest sequence of a file that removed
//! it. A remover at sequence s deletes the document's rows of lower sequence; an
//! adder whose sequence is below the document's removal withdraws its rows, since
//! a later file already removed them. The upsert on `ragspool_docs` row-locks each
//! document, in one order for every transaction, so files touching one document
//! serialise and files touching different documents do not wait on each other. (On
//! Citus the order holds within each shard, whose rows a worker locks in the
//! order given, but the shards' tasks run apart: two transactions that share
//! documents on two shards can deadlock; Citus detects it, and the file is tried
//! again, or the group goes in file by file.)

use crate::ingest::copy::Rows;
use crate::schema::Names;
use postgres::Transaction;
use postgres::types::ToSql;
use std::collections::{BTreeSet, HashMap};

/// What one file does to one document.
#[derive(Debug, Default)]
struct DocEntry {
    /// Rows the file adds.
    rows: u64,
    /// The file holds a delete record for it.
    deleted: bool,
    /// chunk_index of each row, for the whole-document check.
    chunks: Vec<i32>,
    /// The chunk_count its records declare, if any does.
    declared: Option<u32>,
    /// Some rows declare a chunk_count and some another or none.
    inconsistent: bool,
}

/// The documents one file touches. Their ids are copied (once per document):
/// a large file's records outlive no window of it.
#[derive(Debug, Default)]
pub(crate) struct DocSet {
    docs: Vec<(String, DocEntry)>,
    index: HashMap<String, usize>,
    last: Option<usize>,
}

impl DocSet {
    fn entry(&mut self, doc_id: &str) -> &mut DocEntry {
        // Chunks of one document usually come together: skip the hash lookup then.
        let at = match self.last {
            Some(i) if self.docs[i].0 == doc_id => i,
            _ => match self.index.get(doc_id) {
                Some(i) => *i,
                None => {
                    let i = self.docs.len();
                    self.index.insert(doc_id.to_string(), i);
                    self.docs.push((doc_id.to_string(), DocEntry::default()));
                    i
                }
            },
        };
        self.last = Some(at);
        &mut self.docs[at].1
    }

    /// A row of `doc_id`.
    pub(crate) fn add(&mut self, doc_id: &str, chunk_index: i32, chunk_count: Option<u32>) {
        let e = self.entry(doc_id);
        e.rows += 1;
        e.chunks.push(chunk_index);
        match (e.declared, chunk_count) {
            (None, Some(n)) if e.rows == 1 => e.declared = Some(n),
            (Some(d), Some(n)) if d == n => {}
            (None, None) => {}
            _ => e.inconsistent = true,
        }
    }

    /// How many documents the file touches.
    pub(crate) fn len(&self) -> usize {
        self.docs.len()
    }

    /// A delete record for `doc_id`.
    pub(crate) fn remove(&mut self, doc_id: &str) {
        self.entry(doc_id).deleted = true;
    }

    /// SPEC §12's whole-document rule: a document whose records declare
    /// chunk_count must have exactly chunk_index 0..chunk_count-1, each once, all
    /// with the same chunk_count. Returns why not for the first that breaks it.
    pub(crate) fn check_whole(&mut self) -> Result<(), String> {
        for (doc, e) in &mut self.docs {
            let Some(expected) = e.declared else {
                continue;
            };
            if e.inconsistent {
                return Err(format!(
                    "document `{doc}`: its records do not all carry the same chunk_count (first seen: {expected})"
                ));
            }
            e.chunks.sort_unstable();
            let mut missing = Vec::new();
            let mut repeated = Vec::new();
            let mut next = 0i64;
            for (i, c) in e.chunks.iter().enumerate() {
                if i > 0 && e.chunks[i - 1] == *c {
                    repeated.push(i64::from(*c));
                    continue;
                }
                while next < i64::from(*c).min(i64::from(expected)) {
                    missing.push(next);
                    next += 1;
                }
                next = i64::from(*c) + 1;
            }
            missing.extend(next..i64::from(expected));
            let beyond: Vec<i64> = e
                .chunks
                .iter()
                .map(|c| i64::from(*c))
                .filter(|c| *c >= i64::from(expected))
                .collect();
            if missing.is_empty() && repeated.is_empty() && beyond.is_empty() {
                continue;
            }
            let mut why = format!(
                "document `{doc}` declares chunk_count {expected} but the file holds {} chunk(s)",
                e.chunks.len()
            );
            for (label, list) in [
                ("missing", &missing),
                ("repeated", &repeated),
                ("beyond the count", &beyond),
            ] {
                if !list.is_empty() {
                    why.push_str(&format!("; {label} chunk_index {}", short_list(list)));
                }
            }
            return Err(why);
        }
        Ok(())
    }
}

/// `0, 1, 2, ... (N more)` for an error message.
fn short_list(values: &[i64]) -> String {
    let shown: Vec<String> = values.iter().take(10).map(i64::to_string).collect();
    match values.len() {
        n if n > 10 => format!("{} ... ({} more)", shown.join(", "), n - 10),
        _ => shown.join(", "),
    }
}

/// Which file a change set belongs to, for its lineage rows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileRef<'a> {
    /// Its content's sha256.
    pub(crate) sha256: &'a str,
    /// Its batch.
    pub(crate) batch_tag: &'a str,
    /// Its base name.
    pub(crate) name: &'a str,
    /// Its claim sequence.
    pub(crate) seq: i64,
}

/// What the change set did besides the COPY.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// Earlier rows removed (the manifest's `deleted`).
    pub(crate) deleted: u64,
    /// Rows of this file withdrawn because a later file already removed their document.
    pub(crate) withdrawn: u64,
    /// Documents whose earlier rows it replaced or deleted: their cached answers go.
    pub(crate) removed_docs: Vec<String>,
}

/// Applies the removals, the order check and the lineage rows for `file`, whose
/// rows were just copied; `replace` is DOC_MODE=replace, `citus` DISTRIBUTION=citus.
pub(crate) fn apply(
    tx: &mut Transaction<'_>,
    names: &Names,
    docs: &DocSet,
    replace: bool,
    file: FileRef<'_>,
    citus: bool,
) -> Result<Change, postgres::Error> {
    let seq = file.seq;
    let all: Vec<&str> = docs.docs.iter().map(|(d, _)| d.as_str()).collect();
    if all.is_empty() {
        return Ok(Change::default());
    }
    let superseded: BTreeSet<String> = lock(tx, names, &in_lock_order(all), citus)?
        .into_iter()
        .filter(|(_, removed)| *removed > seq)
        .map(|(d, _)| d)
        .collect();
    let live = || {
        docs.docs
            .iter()
            .filter(|(d, _)| !superseded.contains(d.as_str()))
    };
    let removers: Vec<&str> = live()
        .filter(|(_, e)| e.deleted || (replace && e.rows > 0))
        .map(|(d, _)| d.as_str())
        .collect();
    let withdrawn: Vec<&str> = docs
        .docs
        .iter()
        .filter(|(d, e)| e.rows > 0 && superseded.contains(d.as_str()))
        .map(|(d, _)| d.as_str())
        .collect();
    if !removers.is_empty() || !withdrawn.is_empty() {
        // Right after a bulk load the partitions' statistics can be stale enough for
        // the planner to scan whole partitions: a document's rows are always few, so
        // the (doc_id, ragspool_seq) index is the plan (for this transaction only).
        tx.batch_execute("SET LOCAL enable_seqscan = off")?;
    }
    let mut change = Change::default();
    let mut removed: HashMap<String, i64> = HashMap::new();
    if !removers.is_empty() {
        for r in tx.query(
            &format!(
                "WITH gone AS (DELETE FROM {} WHERE doc_id = ANY($1) AND ragspool_seq < $2 RETURNING doc_id) \
                 SELECT doc_id, count(*) FROM gone GROUP BY doc_id",
                names.table
            ),
            &[&removers, &seq],
        )? {
            let n: i64 = r.get(1);
            change.deleted += n as u64;
            removed.insert(r.get(0), n);
        }
        tx.execute(
            &format!(
                "UPDATE {} SET removed_seq = $2, updated_at = now() WHERE doc_id = ANY($1)",
                names.docs
            ),
            &[&removers, &seq],
        )?;
    }
    if !withdrawn.is_empty() {
        change.withdrawn = tx.execute(
            &format!(
                "DELETE FROM {} WHERE doc_id = ANY($1) AND ragspool_seq = $2",
                names.table
            ),
            &[&withdrawn, &seq],
        )?;
    }
    let mut lineage = Lineage::default();
    for (doc, e) in &docs.docs {
        // A document a later file already superseded is not changed by this one.
        if !superseded.contains(doc.as_str()) {
            let gone = removed.get(doc.as_str()).copied().unwrap_or(0);
            lineage.push(file, doc, e, gone);
        }
    }
    lineage.insert(tx, names)?;
    change.removed_docs = removers.iter().map(|d| d.to_string()).collect();
    Ok(change)
}

/// The change sets of several files that only add rows (DOC_MODE=append, no
/// delete records), applied as one: one upsert locks the documents of them all,
/// one statement writes their lineage rows. `false` when one of their documents
/// was already removed by a later-claimed file: that file's rows must be withdrawn,
/// which [`apply`] does, file by file.
pub(crate) fn apply_appends(
    tx: &mut Transaction<'_>,
    names: &Names,
    files: &[(FileRef<'_>, &DocSet)],
    citus: bool,
) -> Result<bool, postgres::Error> {
    let all: Vec<&str> = files
        .iter()
        .flat_map(|(_, docs)| docs.docs.iter().map(|(d, _)| d.as_str()))
        .collect();
    if all.is_empty() {
        return Ok(true);
    }
    let all = in_lock_order(all);
    let removed: HashMap<String, i64> = if citus && insert_new(tx, names, &all)? {
        HashMap::new()
    } else {
        lock(tx, names, &all, citus)?.into_iter().collect()
    };
    let mut lineage = Lineage::default();
    for (file, docs) in files {
        for (doc, e) in &docs.docs {
            if e.deleted || removed.get(doc.as_str()).is_some_and(|r| *r > file.seq) {
                return Ok(false);
            }
            lineage.push(*file, doc, e, 0);
        }
    }
    lineage.insert(tx, names)?;
    Ok(true)
}

/// `docs` sorted and deduplicated: the one order in which every transaction locks
/// documents.
fn in_lock_order(mut docs: Vec<&str>) -> Vec<&str> {
    docs.sort_unstable();
    docs.dedup();
    docs
}

/// On a Citus coordinator, inserts `docs` (in [`in_lock_order`]) into
/// `ragspool_docs` with one COPY, under a savepoint: `true` when each was new;
/// `false`, with nothing inserted, when the COPY failed as it does when one of
/// them has a row already, and [`lock`] then upserts them; `Err` when it failed
/// otherwise (a timeout, a deadlock, a lost connection).
///
/// Files that only add rows mostly bring documents not seen before. The COPY
/// streams their ids to the shards; the multi-row upsert has Citus deparse a
/// statement per shard, which the worker parses and plans: 140 ms against about
/// 20 for the 6,250 documents of a group at 32 shards. A row this transaction
/// inserts is locked by it as the upsert would lock it (another transaction's
/// upsert or insert of the document waits for its end), and its removed_seq is 0:
/// no file removed the document yet. A row already there fails the COPY; Citus
/// reports a worker's unique violation during a COPY as an internal error
/// (XX000), so either goes back to the savepoint and to the upsert, which reports
/// what is really wrong, if anything is.
fn insert_new(
    tx: &mut Transaction<'_>,
    names: &Names,
    docs: &[&str],
) -> Result<bool, postgres::Error> {
    tx.batch_execute("SAVEPOINT ragspool_new_docs")?;
    let mut rows = Rows::with_capacity(docs.iter().map(|d| 6 + d.len()).sum());
    for doc in docs {
        rows.row(1);
        rows.text(doc);
    }
    let sql = format!("COPY {} (doc_id) FROM STDIN (FORMAT binary)", names.docs);
    let copied = copy_stream(tx, &sql, &rows.finish());
    match copied {
        Ok(n) if n == docs.len() as u64 => {
            tx.batch_execute("RELEASE SAVEPOINT ragspool_new_docs")?;
            return Ok(true);
        }
        // A timeout, a deadlock, a lost connection: the upsert would only wait
        // as long again, or fail the same way.
        Err(e) if !may_be_known(&e) => return Err(e),
        _ => {}
    }
    tx.batch_execute("ROLLBACK TO SAVEPOINT ragspool_new_docs")?;
    Ok(false)
}

/// Whether a failed COPY of new documents may have met one already there: a
/// unique violation, which Citus reports from a worker as an internal error.
fn may_be_known(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    matches!(
        e.code(),
        Some(c) if *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::INTERNAL_ERROR
    )
}

/// Sends `stream` (a whole binary COPY stream) with the COPY statement `sql`; the
/// rows it took.
fn copy_stream(tx: &mut Transaction<'_>, sql: &str, stream: &[u8]) -> Result<u64, postgres::Error> {
    let mut writer = tx.copy_in(sql)?;
    // In chunks, each sent as it is written: the driver copies what it is given
    // whole before sending it. A stream the server broke is reported by `finish`.
    let _ = stream
        .chunks(crate::ingest::copy::CHUNK)
        .try_for_each(|chunk| std::io::Write::write_all(&mut writer, chunk));
    writer.finish()
}

/// Upserts `ragspool_docs` rows for `docs` (in [`in_lock_order`]) and returns each
/// document's `removed_seq`.
///
/// On a Citus coordinator (`citus`) they go as multi-row VALUES, which Citus
/// routes to each shard in one task (in the order given, within the shard; past
/// VALUES_MAX documents, chunk by chunk). `INSERT ... SELECT FROM unnest(...)`, one
/// parameter and the better plan on one server, goes through the coordinator
/// there: intermediate results on every shard, then a second task on each, which
/// made it 230 ms against 160 for 6,250 documents at 32 shards.
fn lock(
    tx: &mut Transaction<'_>,
    names: &Names,
    docs: &[&str],
    citus: bool,
) -> Result<Vec<(String, i64)>, postgres::Error> {
    let upsert = |rows: &str| {
        format!(
            "INSERT INTO {docs} AS d (doc_id) {rows} \
             ON CONFLICT (doc_id) DO UPDATE SET removed_seq = d.removed_seq RETURNING d.doc_id, d.removed_seq",
            docs = names.docs
        )
    };
    let locked = |rows: Vec<postgres::Row>| {
        rows.iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect::<Vec<_>>()
    };
    if !citus {
        let rows = "SELECT x FROM unnest($1::text[]) AS x ORDER BY x COLLATE \"C\"";
        return Ok(locked(tx.query(&upsert(rows), &[&docs])?));
    }
    let mut all = Vec::with_capacity(docs.len());
    // A statement takes at most 65,535 parameters; the chunks keep the order.
    for chunk in docs.chunks(VALUES_MAX) {
        let values: Vec<String> = (1..=chunk.len()).map(|i| format!("(${i})")).collect();
        let params: Vec<&(dyn ToSql + Sync)> =
            chunk.iter().map(|d| d as &(dyn ToSql + Sync)).collect();
        let rows = format!("VALUES {}", values.join(","));
        all.extend(locked(tx.query(&upsert(&rows), &params)?));
    }
    Ok(all)
}

/// Documents per multi-row VALUES upsert.
const VALUES_MAX: usize = 30_000;

/// `ragspool_doc_events` rows, one per document a file changed, gathered for one
/// COPY: on a Citus coordinator `INSERT ... SELECT FROM unnest(...)` evaluated the
/// arrays there and then copied the rows to the shards anyway (the COPY saves 0.12
/// of 5.8 CPU-seconds over 200,000 rows, client, coordinator and workers together).
struct Lineage {
    rows: Rows,
    count: usize,
}

impl Default for Lineage {
    fn default() -> Lineage {
        Lineage {
            rows: Rows::with_capacity(16 << 10),
            count: 0,
        }
    }
}

impl Lineage {
    /// The row of `doc`, which `file` changed as `e` says, removing `gone` rows.
    fn push(&mut self, file: FileRef<'_>, doc: &str, e: &DocEntry, gone: i64) {
        let r = &mut self.rows;
        r.row(8);
        r.text(doc);
        r.int8(file.seq);
        r.text(file.sha256);
        r.text(file.batch_tag);
        r.text(file.name);
        r.text(if e.rows > 0 { "upsert" } else { "delete" });
        r.int8(e.rows as i64);
        r.int8(gone);
        self.count += 1;
    }

    fn insert(self, tx: &mut Transaction<'_>, names: &Names) -> Result<(), postgres::Error> {
        if self.count == 0 {
            return Ok(());
        }
        let sql = format!(
            "COPY {} (doc_id, seq, sha256, batch_tag, file_name, action, rows_added, rows_removed) \
             FROM STDIN (FORMAT binary)",
            names.doc_events
        );
        copy_stream(tx, &sql, &self.rows.finish())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_tracked_with_their_rows_and_deletes() {
        let mut d = DocSet::default();
        d.add("a", 0, None);
        d.add("a", 1, None);
        d.add("b", 0, None);
        d.remove("c");
        d.add("a", 2, None);
        let seen: Vec<(&str, u64, bool)> = d
            .docs
            .iter()
            .map(|(k, e)| (k.as_str(), e.rows, e.deleted))
            .collect();
        assert_eq!(seen, vec![("a", 3, false), ("b", 1, false), ("c", 0, true)]);
    }

    #[test]
    fn whole_documents_name_what_is_missing_or_repeated() {
        let mut d = DocSet::default();
        for i in [0, 1, 2] {
            d.add("ok", i, Some(3));
        }
        assert_eq!(d.check_whole(), Ok(()));
        for i in [0, 2, 2, 5] {
            d.add("cut", i, Some(4));
        }
        let why = d.check_whole().err().unwrap_or_default();
        assert!(why.contains("`cut` declares chunk_count 4"), "{why}");
        assert!(why.contains("missing chunk_index 1, 3"), "{why}");
        assert!(why.contains("repeated chunk_index 2"), "{why}");
        assert!(why.contains("beyond the count chunk_index 5"), "{why}");
        let mut d = DocSet::default();
        d.add("mixed", 0, Some(2));
        d.add("mixed", 1, None);
        assert!(d.check_whole().is_err());
    }
}
