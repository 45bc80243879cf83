//! Partition maintenance runs (SPEC §7) as ragspool_maintenance_runs records them.

use crate::db;
use crate::error::Result;
use crate::schema::Names;
use postgres::GenericClient;

/// One recorded maintenance run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Run {
    /// pg_partman or native.
    pub(crate) mode: String,
    /// Partitions missing from the window before the run.
    pub(crate) expected: i32,
    /// Partitions the run created.
    pub(crate) created_partitions: i32,
    /// ok, stalled, skipped, error, dry_run.
    pub(crate) outcome: String,
    /// What happened.
    pub(crate) detail: Option<String>,
    /// When it finished (RFC 3339 UTC).
    pub(crate) finished_at: Option<String>,
}

/// The most recent run, if any.
pub(crate) fn last_run(client: &mut impl GenericClient, names: &Names) -> Result<Option<Run>> {
    let sql = format!(
        "SELECT mode, expected, created_partitions, outcome, detail, \
         to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
         FROM {} ORDER BY id DESC LIMIT 1",
        names.maintenance_runs
    );
    let row = client
        .query_opt(&sql, &[])
        .map_err(|e| db::classify(e, "reading the last maintenance run"))?;
    Ok(row.map(|r| Run {
        mode: r.get(0),
        expected: r.get(1),
        created_partitions: r.get(2),
        outcome: r.get(3),
        detail: r.get(4),
        finished_at: r.get(5),
    }))
}
