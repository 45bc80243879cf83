//! A file's change set (SPEC §10): the documents it removes (delete records, and in
//! replace mode every doc_id it carries) and adds, applied in the file's
//! transaction after its COPY so that the table ends as if files had been applied
//! one at a time in claim order, whatever order their transactions commit in.
//!
//! Every row carries its file's claim sequence (`ragspool_seq`) and
//! `ragspool_docs` keeps, per document, the highest sequence of a file that removed
//! it. A remover at sequence s deletes the document's rows of lower sequence; an
//! adder whose sequence is below the document's removal withdraws its rows, since
//! a later file already removed them. The upsert on `ragspool_docs` row-locks each
//! document, in one order for every transaction, so files touching one document
//! serialise and files touching different documents do not wait on each other.

use crate::schema::Names;
use postgres::Transaction;
use std::collections::BTreeSet;

/// The documents one file touches, borrowed from its buffer.
#[derive(Debug, Default)]
pub(crate) struct DocSet<'a> {
    adds: BTreeSet<&'a str>,
    removes: BTreeSet<&'a str>,
    last_add: Option<&'a str>,
}

impl<'a> DocSet<'a> {
    /// A row of `doc_id`; in replace mode the document's earlier rows go too.
    pub(crate) fn add(&mut self, doc_id: &'a str, replace: bool) {
        // Chunks of one document usually come together: skip the set lookups then.
        if self.last_add == Some(doc_id) {
            return;
        }
        self.last_add = Some(doc_id);
        self.adds.insert(doc_id);
        if replace {
            self.removes.insert(doc_id);
        }
    }

    /// A delete record for `doc_id`.
    pub(crate) fn remove(&mut self, doc_id: &'a str) {
        self.removes.insert(doc_id);
    }

    fn all(&self) -> Vec<&'a str> {
        self.adds.union(&self.removes).copied().collect()
    }
}

/// What the change set did besides the COPY.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    /// Earlier rows removed (the manifest's `deleted`).
    pub(crate) deleted: u64,
    /// Rows of this file withdrawn because a later file already removed their document.
    pub(crate) withdrawn: u64,
}

/// Applies the removals and the order check for a file of claim sequence `seq`
/// whose rows were just copied.
pub(crate) fn apply(
    tx: &mut Transaction<'_>,
    names: &Names,
    docs: &DocSet<'_>,
    seq: i64,
) -> Result<Change, postgres::Error> {
    let all = docs.all();
    if all.is_empty() {
        return Ok(Change::default());
    }
    let locked = tx.query(
        &format!(
            "INSERT INTO {docs} AS d (doc_id) SELECT x FROM unnest($1::text[]) AS x ORDER BY x COLLATE \"C\" \
             ON CONFLICT (doc_id) DO UPDATE SET removed_seq = d.removed_seq RETURNING d.doc_id, d.removed_seq",
            docs = names.docs
        ),
        &[&all],
    )?;
    let superseded: BTreeSet<String> = locked
        .iter()
        .filter(|r| r.get::<_, i64>(1) > seq)
        .map(|r| r.get(0))
        .collect();
    let removers: Vec<&str> = docs
        .removes
        .iter()
        .filter(|d| !superseded.contains(**d))
        .copied()
        .collect();
    let mut change = Change::default();
    if !removers.is_empty() || !superseded.is_empty() {
        // Right after a bulk load the partitions' statistics can be stale enough for
        // the planner to scan whole partitions: a document's rows are always few, so
        // the (doc_id, ragspool_seq) index is the plan (for this transaction only).
        tx.batch_execute("SET LOCAL enable_seqscan = off")?;
    }
    if !removers.is_empty() {
        change.deleted = tx.execute(
            &format!(
                "DELETE FROM {} WHERE doc_id = ANY($1) AND ragspool_seq < $2",
                names.table
            ),
            &[&removers, &seq],
        )?;
        tx.execute(
            &format!(
                "UPDATE {} SET removed_seq = $2, updated_at = now() WHERE doc_id = ANY($1)",
                names.docs
            ),
            &[&removers, &seq],
        )?;
    }
    let withdrawn: Vec<&str> = docs
        .adds
        .iter()
        .filter(|d| superseded.contains(**d))
        .copied()
        .collect();
    if !withdrawn.is_empty() {
        change.withdrawn = tx.execute(
            &format!(
                "DELETE FROM {} WHERE doc_id = ANY($1) AND ragspool_seq = $2",
                names.table
            ),
            &[&withdrawn, &seq],
        )?;
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_mode_removes_what_it_adds_and_deletes_stay_deletes() {
        let mut d = DocSet::default();
        d.add("a", true);
        d.add("a", true);
        d.add("b", false);
        d.remove("c");
        assert_eq!(d.all(), vec!["a", "b", "c"]);
        assert_eq!(
            d.removes.iter().copied().collect::<Vec<_>>(),
            vec!["a", "c"]
        );
    }
}
