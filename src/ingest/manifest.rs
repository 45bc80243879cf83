//! ragspool_manifest: one row per file, failed files included. A file's `done`
//! update commits in the same transaction as its rows; a partial unique index on
//! sha256 makes a second ingest of the same content impossible.

use crate::batch::BatchTag;
use crate::db;
use crate::error::Result;
use crate::schema::Names;
use postgres::GenericClient;

/// A file as the manifest knows it.
#[derive(Debug, Clone)]
pub(crate) struct FileKey<'a> {
    /// The batch.
    pub(crate) tag: &'a BatchTag,
    /// Base name of the file.
    pub(crate) name: &'a str,
}

/// A file's tries so far, as [`open`] counted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tries {
    /// This attempt's number.
    pub(crate) attempt: u32,
    /// Earlier tries that ended in a fault of the file's own making.
    pub(crate) faults: u32,
}

/// Records that a file is being ingested (status open, one more attempt), with
/// its claim sequence, so that a later-claimed copy of its content can tell it
/// came first (see [`earlier_copy`]).
pub(crate) fn open(
    client: &mut impl GenericClient,
    names: &Names,
    key: &FileKey<'_>,
    sha256: &str,
    bytes: i64,
    host: &str,
    seq: i64,
) -> Result<Tries> {
    let sql = format!(
        "INSERT INTO {m} (batch_tag, file_name, sha256, bytes, status, host, seq) VALUES ($1, $2, $3, $4, 'open', $5, $6) \
         ON CONFLICT (batch_tag, file_name) DO UPDATE SET status = 'open', sha256 = EXCLUDED.sha256, \
         bytes = EXCLUDED.bytes, host = EXCLUDED.host, seq = EXCLUDED.seq, attempts = {m}.attempts + 1, reason = NULL, \
         started_at = now(), finished_at = NULL WHERE {m}.status <> 'done' RETURNING attempts, faults",
        m = names.manifest
    );
    client
        .query_opt(
            &sql,
            &[&key.tag.as_str(), &key.name, &sha256, &bytes, &host, &seq],
        )
        .map(|row| Tries {
            attempt: row.as_ref().map_or(1, |r| r.get::<_, i32>(0).max(1) as u32),
            faults: row.as_ref().map_or(0, |r| r.get::<_, i32>(1).max(0) as u32),
        })
        .map_err(|e| db::classify(e, "recording the file in the manifest"))
}

/// Opens the manifest row of a file that has none yet (see `open`); false when
/// it has one, whatever its status.
pub(crate) fn open_new(
    client: &mut impl GenericClient,
    names: &Names,
    key: &FileKey<'_>,
    sha256: &str,
    bytes: i64,
    host: &str,
    seq: i64,
) -> Result<bool> {
    let sql = format!(
        "INSERT INTO {} (batch_tag, file_name, sha256, bytes, status, host, seq) VALUES ($1, $2, $3, $4, 'open', $5, $6) \
         ON CONFLICT (batch_tag, file_name) DO NOTHING",
        names.manifest
    );
    client
        .execute(
            &sql,
            &[&key.tag.as_str(), &key.name, &sha256, &bytes, &host, &seq],
        )
        .map(|n| n > 0)
        .map_err(|e| db::classify(e, "recording an earlier copy in the manifest"))
}

/// Who already ingested content with this sha256, if anyone: (batch_tag, file_name).
pub(crate) fn ingested_by(
    client: &mut impl GenericClient,
    names: &Names,
    sha256: &str,
) -> Result<Option<(String, String)>> {
    let sql = format!(
        "SELECT batch_tag, file_name FROM {} WHERE sha256 = $1 AND status = 'done' AND NOT duplicate",
        names.manifest
    );
    client
        .query_opt(&sql, &[&sha256])
        .map(|r| r.map(|r| (r.get(0), r.get(1))))
        .map_err(|e| db::classify(e, "looking up the file's sha256"))
}

/// A file claimed before another of the same content and not yet settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EarlierCopy {
    /// Its batch.
    pub(crate) tag: BatchTag,
    /// Its base name.
    pub(crate) name: String,
    /// Its claim sequence.
    pub(crate) seq: i64,
}

/// The earliest-claimed file of content `sha256` that is still open and was
/// claimed before `seq`, row-locked for the caller's transaction. By SPEC §3 it
/// is the original and the caller's file its duplicate, whichever commits first.
pub(crate) fn earlier_copy(
    client: &mut impl GenericClient,
    names: &Names,
    sha256: &str,
    seq: i64,
) -> Result<Option<EarlierCopy>> {
    let sql = format!(
        "SELECT batch_tag, file_name, seq FROM {} WHERE sha256 = $1 AND status = 'open' AND seq < $2 \
         ORDER BY seq LIMIT 1 FOR UPDATE",
        names.manifest
    );
    let row = client
        .query_opt(&sql, &[&sha256, &seq])
        .map_err(|e| db::classify(e, "looking for an earlier copy of the file"))?;
    Ok(row.and_then(|r| {
        Some(EarlierCopy {
            tag: BatchTag::parse(r.get::<_, &str>(0))?,
            name: r.get(1),
            seq: r.get(2),
        })
    }))
}

/// Whether the manifest holds a row of content `shas` besides the open rows of
/// batch `tag`'s files `files`: a file that ingested it, or another file of it
/// open. When
/// not, no file of those contents comes before them in the manifest (only, perhaps,
/// one claimed and not yet opened, in processing/): one statement for files that go
/// in together, where [`ingested_by`] and [`earlier_copy`] are two per file.
pub(crate) fn known_elsewhere(
    client: &mut impl GenericClient,
    names: &Names,
    tag: &BatchTag,
    files: &[&str],
    shas: &[&str],
) -> Result<bool> {
    // Two lookups, each served by its partial index on sha256 (the manifest keeps
    // every file it ever saw): the done rows [`ingested_by`] reads, the open rows
    // [`earlier_copy`] reads.
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {m} WHERE sha256 = ANY($1) AND status = 'done' AND NOT duplicate) \
         OR EXISTS (SELECT 1 FROM {m} WHERE sha256 = ANY($1) AND status = 'open' \
         AND NOT (batch_tag = $2 AND file_name = ANY($3)))",
        m = names.manifest
    );
    client
        .query_one(&sql, &[&shas, &tag.as_str(), &files])
        .map(|r| r.get(0))
        .map_err(|e| db::classify(e, "looking up the files' sha256"))
}

/// What a file's `done` row says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done {
    /// Rows inserted.
    pub(crate) rows: i64,
    /// Earlier rows its change set removed.
    pub(crate) deleted: i64,
    /// The claim sequence it was applied at; `None` keeps the one `open` recorded
    /// (a duplicate's own place in claim order).
    pub(crate) seq: Option<i64>,
    /// A self-heal happened.
    pub(crate) healed: bool,
    /// Its content was already ingested.
    pub(crate) duplicate: bool,
    /// Vectors fetched from the embeddings endpoint.
    pub(crate) embedded: i64,
    /// Vectors reused from rows it replaced.
    pub(crate) reused: i64,
}

impl Done {
    /// A duplicate: nothing written.
    pub(crate) fn duplicate(healed: bool) -> Done {
        Done {
            rows: 0,
            deleted: 0,
            seq: None,
            healed,
            duplicate: true,
            embedded: 0,
            reused: 0,
        }
    }
}

/// Marks the file done (inside the transaction that holds its rows).
pub(crate) fn done(
    client: &mut impl GenericClient,
    names: &Names,
    key: &FileKey<'_>,
    d: &Done,
) -> std::result::Result<(), postgres::Error> {
    mark_done(client, names, key.tag, &[(key.name, d)], "").map(|_| ())
}

/// [`done`] for files of batch `tag` that must still be open, in one statement:
/// `false` unless every one of them was (another transaction may have committed
/// one meanwhile, as the file whose content a later-claimed copy brought in).
pub(crate) fn done_all_if_open(
    client: &mut impl GenericClient,
    names: &Names,
    tag: &BatchTag,
    files: &[(&str, &Done)],
) -> std::result::Result<bool, postgres::Error> {
    let marked = mark_done(client, names, tag, files, " AND m.status = 'open'")?;
    Ok(marked == files.len() as u64)
}

fn mark_done(
    client: &mut impl GenericClient,
    names: &Names,
    tag: &BatchTag,
    files: &[(&str, &Done)],
    only: &str,
) -> std::result::Result<u64, postgres::Error> {
    let reason = |d: &Done| {
        if d.duplicate {
            Some("duplicate")
        } else if d.healed {
            Some("healed_partition")
        } else {
            None
        }
    };
    let column = |f: fn(&Done) -> i64| files.iter().map(|(_, d)| f(d)).collect::<Vec<i64>>();
    let sql = format!(
        "UPDATE {} AS m SET status = 'done', rows = u.rows, healed = u.healed, duplicate = u.duplicate, \
         reason = u.reason, deleted = u.deleted, seq = coalesce(u.seq, m.seq), embedded = u.embedded, \
         reused = u.reused, finished_at = now() \
         FROM unnest($2::text[], $3::bigint[], $4::bool[], $5::bool[], $6::text[], $7::bigint[], \
         $8::bigint[], $9::bigint[], $10::bigint[]) \
         AS u(file_name, rows, healed, duplicate, reason, deleted, seq, embedded, reused) \
         WHERE m.batch_tag = $1 AND m.file_name = u.file_name{only}",
        names.manifest
    );
    client.execute(
        &sql,
        &[
            &tag.as_str(),
            &files.iter().map(|(n, _)| *n).collect::<Vec<&str>>(),
            &column(|d| d.rows),
            &files.iter().map(|(_, d)| d.healed).collect::<Vec<bool>>(),
            &files
                .iter()
                .map(|(_, d)| d.duplicate)
                .collect::<Vec<bool>>(),
            &files
                .iter()
                .map(|(_, d)| reason(d))
                .collect::<Vec<Option<&str>>>(),
            &column(|d| d.deleted),
            &files
                .iter()
                .map(|(_, d)| d.seq)
                .collect::<Vec<Option<i64>>>(),
            &column(|d| d.embedded),
            &column(|d| d.reused),
        ],
    )
}

/// What a committed file did, as the manifest and the lineage record it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Committed {
    /// Rows it added.
    pub(crate) rows: u64,
    /// Earlier rows it removed.
    pub(crate) deleted: u64,
    /// A self-heal happened for it.
    pub(crate) healed: bool,
    /// Documents whose earlier rows it replaced or deleted.
    pub(crate) changed_docs: Vec<String>,
}

/// What the committed file `key` did.
pub(crate) fn committed(
    client: &mut impl GenericClient,
    names: &Names,
    key: &FileKey<'_>,
) -> Result<Committed> {
    let row = client
        .query_opt(
            &format!(
                "SELECT rows, deleted, healed, sha256 FROM {} WHERE batch_tag = $1 AND file_name = $2",
                names.manifest
            ),
            &[&key.tag.as_str(), &key.name],
        )
        .map_err(|e| db::classify(e, "reading the file's manifest row"))?;
    let sha256: String = row.as_ref().map(|r| r.get(3)).unwrap_or_default();
    let docs = client
        .query(
            &format!(
                "SELECT doc_id FROM {} WHERE batch_tag = $1 AND file_name = $2 \
                 AND sha256 = $3 AND (action = 'delete' OR rows_removed > 0)",
                names.doc_events
            ),
            &[&key.tag.as_str(), &key.name, &sha256],
        )
        .map_err(|e| db::classify(e, "reading the file's lineage"))?;
    Ok(Committed {
        rows: row.as_ref().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64),
        deleted: row.as_ref().map_or(0, |r| r.get::<_, i64>(1).max(0) as u64),
        healed: row.as_ref().is_some_and(|r| r.get(2)),
        changed_docs: docs.iter().map(|r| r.get(0)).collect(),
    })
}

/// What a batch's files came to, from the manifest: for a batch whose every file
/// was settled but whose gate.done was never queued (a crash in between).
#[derive(Debug, Clone, Default)]
pub(crate) struct Settled {
    /// Files done (duplicates included).
    pub(crate) files_ok: usize,
    /// Files failed.
    pub(crate) files_failed: usize,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// Rows inserted.
    pub(crate) rows: u64,
    /// Earlier rows removed.
    pub(crate) deleted: u64,
    /// Some file self-healed.
    pub(crate) healed: bool,
    /// The reason codes of its failed files.
    pub(crate) failed_reasons: Vec<String>,
    /// Documents replaced or deleted.
    pub(crate) changed_docs: Vec<String>,
}

impl Settled {
    /// Files counted.
    pub(crate) fn files(&self) -> usize {
        self.files_ok + self.files_failed
    }
}

/// The manifest's account of the settled files of batch `tag`, leaving out the
/// files named in `except` (those still in processing/, which the caller runs).
pub(crate) fn settled(
    client: &mut impl GenericClient,
    names: &Names,
    tag: &BatchTag,
    except: &[&str],
) -> Result<Settled> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'failed'), \
                 coalesce(sum(rows), 0)::bigint, coalesce(sum(deleted), 0)::bigint, coalesce(bool_or(healed), false), \
                 coalesce(array_agg(DISTINCT reason) FILTER (WHERE status = 'failed' AND reason IS NOT NULL), '{{}}'), \
                 coalesce(sum(bytes) FILTER (WHERE status IN ('done', 'failed')), 0)::bigint \
                 FROM {} WHERE batch_tag = $1 AND NOT (file_name = ANY($2))",
                names.manifest
            ),
            &[&tag.as_str(), &except],
        )
        .map_err(|e| db::classify(e, "reading the batch's manifest rows"))?;
    let docs = client
        .query(
            &format!(
                "SELECT DISTINCT doc_id FROM {} WHERE batch_tag = $1 AND NOT (file_name = ANY($2)) \
                 AND (action = 'delete' OR rows_removed > 0)",
                names.doc_events
            ),
            &[&tag.as_str(), &except],
        )
        .map_err(|e| db::classify(e, "reading the batch's lineage"))?;
    Ok(Settled {
        files_ok: row.get::<_, i64>(0).max(0) as usize,
        files_failed: row.get::<_, i64>(1).max(0) as usize,
        bytes: row.get::<_, i64>(6).max(0) as u64,
        rows: row.get::<_, i64>(2).max(0) as u64,
        deleted: row.get::<_, i64>(3).max(0) as u64,
        healed: row.get(4),
        failed_reasons: row.get(5),
        changed_docs: docs.iter().map(|r| r.get(0)).collect(),
    })
}

/// Counts `n` more attempts for the file (endpoint faults before its transaction).
pub(crate) fn add_faults(
    client: &mut impl GenericClient,
    names: &Names,
    key: &FileKey<'_>,
    n: u32,
) -> Result<()> {
    add_spent(client, names, key, n, 0)
}

/// Counts what fetching the file's vectors cost: `faults` more attempts (endpoint
/// faults) and `tokens` more tokens sent.
pub(crate) fn add_spent(
    client: &mut impl GenericClient,
    names: &Names,
    key: &FileKey<'_>,
    faults: u32,
    tokens: u64,
) -> Result<()> {
    let sql = format!(
        "UPDATE {} SET attempts = attempts + $3, faults = faults + $3, tokens = tokens + $4 \
         WHERE batch_tag = $1 AND file_name = $2",
        names.manifest
    );
    let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
    client
        .execute(
            &sql,
            &[&key.tag.as_str(), &key.name, &(faults as i32), &tokens],
        )
        .map(|_| ())
        .map_err(|e| db::classify(e, "counting attempts in the manifest"))
}

/// Tokens sent to the embeddings endpoint for files that finished in the last 24 hours.
pub(crate) fn tokens_last_day(client: &mut impl GenericClient, names: &Names) -> Result<i64> {
    let sql = format!(
        "SELECT coalesce(sum(tokens), 0)::bigint FROM {} WHERE finished_at > now() - interval '24 hours'",
        names.manifest
    );
    client
        .query_one(&sql, &[])
        .map(|r| r.get(0))
        .map_err(|e| db::classify(e, "reading the tokens of the last 24 hours"))
}

/// Marks the file failed with its reason code; false when its row is `done`
/// (committed content never turns into a failure, or `requeue` would insert its
/// rows again).
pub(crate) fn failed(
    client: &mut impl GenericClient,
    names: &Names,
    key: &FileKey<'_>,
    reason: &str,
    healed: bool,
) -> Result<bool> {
    let sql = format!(
        "UPDATE {} SET status = 'failed', reason = $3, healed = $4, rows = 0, deleted = 0, finished_at = now() \
         WHERE batch_tag = $1 AND file_name = $2 AND status <> 'done'",
        names.manifest
    );
    let marked = client
        .execute(&sql, &[&key.tag.as_str(), &key.name, &reason, &healed])
        .map_err(|e| db::classify(e, "recording the failure in the manifest"))?;
    if marked > 0 {
        return Ok(true);
    }
    let done = client
        .query_opt(
            &format!(
                "SELECT 1 FROM {} WHERE batch_tag = $1 AND file_name = $2 AND status = 'done'",
                names.manifest
            ),
            &[&key.tag.as_str(), &key.name],
        )
        .map_err(|e| db::classify(e, "reading the file's manifest row"))?;
    Ok(done.is_none())
}

/// One batch as the manifest summarises it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct BatchSummary {
    /// The batch.
    pub(crate) batch_tag: String,
    /// Files.
    pub(crate) files: i64,
    /// Files done.
    pub(crate) done: i64,
    /// Files failed.
    pub(crate) failed: i64,
    /// Files still open.
    pub(crate) open: i64,
    /// Rows ingested.
    pub(crate) rows: i64,
    /// Whether a self-heal happened.
    pub(crate) healed: bool,
    /// When the last file finished (RFC 3339), if any did.
    pub(crate) finished_at: Option<String>,
}

/// The most recent batches, newest first.
pub(crate) fn recent_batches(
    client: &mut impl GenericClient,
    names: &Names,
    limit: i64,
) -> Result<Vec<BatchSummary>> {
    let sql = format!(
        "SELECT batch_tag, count(*), count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'failed'), \
         count(*) FILTER (WHERE status = 'open'), coalesce(sum(rows), 0)::bigint, bool_or(healed), \
         to_char(max(finished_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
         FROM {} GROUP BY batch_tag ORDER BY max(started_at) DESC LIMIT $1",
        names.manifest
    );
    let rows = client
        .query(&sql, &[&limit])
        .map_err(|e| db::classify(e, "reading recent batches"))?;
    Ok(rows
        .iter()
        .map(|r| BatchSummary {
            batch_tag: r.get(0),
            files: r.get(1),
            done: r.get(2),
            failed: r.get(3),
            open: r.get(4),
            rows: r.get(5),
            healed: r.get(6),
            finished_at: r.get(7),
        })
        .collect())
}
