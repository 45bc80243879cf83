//! A document's provable history (SPEC §12): the lineage rows its files wrote in
//! their own transactions, in claim order, and what the table holds for it now.
//! Every query here is an index lookup: `ragspool_doc_events` by its primary key
//! (doc_id, seq), and the target table by the (doc_id, ragspool_seq) index of each
//! partition.

use crate::db;
use crate::error::Result;
use crate::schema::Names;
use postgres::GenericClient;
use serde::Serialize;

/// One committed file that changed the document.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event {
    /// Claim sequence (the order of application).
    pub(crate) seq: i64,
    /// The file's batch.
    pub(crate) batch_tag: String,
    /// The file's base name.
    pub(crate) file: String,
    /// Its content's sha256.
    pub(crate) sha256: String,
    /// `upsert` or `delete`.
    pub(crate) action: String,
    /// Rows of the document it added.
    pub(crate) rows_added: i64,
    /// Rows of the document it removed.
    pub(crate) rows_removed: i64,
    /// When its transaction committed (RFC 3339 UTC).
    pub(crate) committed_at: String,
    /// Whether its batch's gate.done was delivered, is waiting or dead.
    pub(crate) gate_done: String,
}

/// What the table holds for the document now.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Now {
    /// Rows.
    pub(crate) rows: i64,
    /// Partitions holding them.
    pub(crate) partitions: Vec<String>,
    /// Embedding models of their vectors; `None` (JSON null) for vectors the
    /// records brought, which no model of ragspool's made.
    pub(crate) embedding_models: Vec<Option<String>>,
}

/// A document's history and present.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Trace {
    /// The document.
    pub(crate) doc_id: String,
    /// Every committed file that changed it, in claim order.
    pub(crate) events: Vec<Event>,
    /// The table now.
    pub(crate) now: Now,
}

impl Trace {
    /// Whether ragspool ever saw the document.
    pub(crate) fn seen(&self) -> bool {
        !self.events.is_empty() || self.now.rows > 0
    }
}

/// Reads the trace of `doc_id`; `gate_done` tells a batch's gate.done state.
pub(crate) fn trace(
    client: &mut impl GenericClient,
    names: &Names,
    doc_id: &str,
    gate_done: impl Fn(&str) -> String,
) -> Result<Trace> {
    let rows = client
        .query(
            &format!(
                "SELECT seq, batch_tag, file_name, sha256, action, rows_added, rows_removed, \
                 to_char(committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
                 FROM {} WHERE doc_id = $1 ORDER BY seq",
                names.doc_events
            ),
            &[&doc_id],
        )
        .map_err(|e| db::classify(e, "reading the document's lineage"))?;
    let events = rows
        .iter()
        .map(|r| {
            let batch_tag: String = r.get(1);
            Event {
                seq: r.get(0),
                gate_done: gate_done(&batch_tag),
                batch_tag,
                file: r.get(2),
                sha256: r.get(3),
                action: r.get(4),
                rows_added: r.get(5),
                rows_removed: r.get(6),
                committed_at: r.get(7),
            }
        })
        .collect();
    let now = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(array_agg(DISTINCT tableoid::regclass::text), '{{}}'), \
                 coalesce(array_agg(DISTINCT embedding_model) FILTER (WHERE embedding IS NOT NULL), '{{}}') \
                 FROM {} WHERE doc_id = $1",
                names.table
            ),
            &[&doc_id],
        )
        .map_err(|e| db::classify(e, "reading the document's rows"))?;
    // On Citus a row's tableoid is its shard's: name the logical partition.
    let partitions = crate::distribution::logical_names(client, now.get(1))?;
    Ok(Trace {
        doc_id: doc_id.to_string(),
        events,
        now: Now {
            rows: now.get(0),
            partitions,
            embedding_models: now.get(2),
        },
    })
}
