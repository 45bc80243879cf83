//! The target table on a Citus cluster (SPEC §16): the target table, ragspool_docs
//! and ragspool_doc_events are distributed by doc_id and co-located, so that one
//! document's rows, order row and lineage live on one shard group and a file's
//! change set for it touches one worker; the manifest, maintenance runs,
//! failure-log anchor and schema version stay on the coordinator. `migrate`
//! distributes them (a table that already holds rows only when asked to), `check`
//! reports the nodes and the tables, shard names are mapped back to the logical
//! tables, and two-phase commits left in doubt by a node that went away are
//! resolved.

use crate::backoff::Backoff;
use crate::db;
use crate::error::{Error, Result};
use crate::schema::Names;
use postgres::GenericClient;
use std::time::Duration;

/// The distribution column of every distributed table.
const COLUMN: &str = "doc_id";

/// How one of ragspool's tables is placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement {
    /// It does not exist (yet).
    Missing,
    /// A plain table on the coordinator, holding this many rows.
    Local(i64),
    /// A Citus table: its kind (`h` hash-distributed, `n` reference or local),
    /// distribution column and co-location group.
    Citus {
        /// pg_dist_partition.partmethod.
        method: String,
        /// The distribution column, if any.
        column: Option<String>,
        /// The co-location group.
        colocation: i32,
    },
}

impl Placement {
    /// Distributed by doc_id.
    fn by_doc_id(&self) -> bool {
        matches!(self, Placement::Citus { method, column, .. }
            if method == "h" && column.as_deref() == Some(COLUMN))
    }
}

/// The tables distributed by doc_id, the target table first.
pub(crate) fn distributed_tables(names: &Names) -> [&str; 3] {
    [&names.table, &names.docs, &names.doc_events]
}

/// The tables that stay on the coordinator.
pub(crate) fn coordinator_tables(names: &Names) -> [&str; 4] {
    [
        &names.manifest,
        &names.maintenance_runs,
        &names.failure_log_anchor,
        &names.version,
    ]
}

/// Where the distributed tables stand before `migrate` changes anything.
#[derive(Debug)]
pub(crate) struct Survey {
    /// Each of [`distributed_tables`] with its placement.
    pub(crate) tables: Vec<(String, Placement)>,
}

impl Survey {
    /// Tables that exist as plain tables: distributing them moves their rows.
    pub(crate) fn local(&self) -> Vec<(&str, i64)> {
        self.tables
            .iter()
            .filter_map(|(t, p)| match p {
                Placement::Local(rows) => Some((t.as_str(), *rows)),
                _ => None,
            })
            .collect()
    }

    /// What `migrate --distribute` does, one line per table, for the operator to
    /// read before Citus moves rows.
    pub(crate) fn plan(&self) -> String {
        let local = self.local();
        let rows: i64 = local.iter().map(|(_, n)| n).sum();
        let mut text = format!(
            "distributing {} existing table(s) by doc_id: Citus moves {rows} row(s) from the coordinator to the workers' shards\n",
            local.len()
        );
        for (table, n) in &local {
            text.push_str(&format!("  {table}: {n} row(s)\n"));
        }
        text
    }
}

/// Refuses (78) a server that is not a Citus coordinator with the extension in
/// this database, saying how to get there.
pub(crate) fn require_coordinator(client: &mut impl GenericClient) -> Result<()> {
    let row = client
        .query_one(
            "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'citus'), \
                    EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'citus')",
            &[],
        )
        .map_err(|e| db::classify(e, "looking for the citus extension"))?;
    let (created, available): (Option<String>, bool) = (row.get(0), row.get(1));
    if created.is_none() {
        let (what, note) = if available {
            (
                "the citus extension is not created in this database",
                "with shared_preload_libraries = 'citus' on every node: CREATE EXTENSION citus in this database \
                 on the coordinator and on every worker, then on the coordinator \
                 SELECT citus_set_coordinator_host('<host>', <port>) and SELECT citus_add_node('<worker>', <port>) per worker",
            )
        } else {
            (
                "the database server has no Citus extension",
                "install Citus on the coordinator and every worker (Citus's own packages, e.g. \
                 postgresql-15-citus-13.2 from https://packagecloud.io/citusdata/community, or a build from \
                 https://github.com/citusdata/citus), set shared_preload_libraries = 'citus' and \
                 max_prepared_transactions > 0, or set DISTRIBUTION=none",
            )
        };
        return Err(Error::config(format!("`DISTRIBUTION` is citus, but {what}")).with_note(note));
    }
    let coordinator: bool = client
        .query_one("SELECT citus_is_coordinator()", &[])
        .map_err(|e| db::classify(e, "asking Citus for the coordinator"))?
        .get(0);
    if !coordinator {
        return Err(Error::config(
            "`DISTRIBUTION` is citus, but DATABASE_URL names a Citus worker, not the coordinator",
        )
        .with_note("point DATABASE_URL at the coordinator, whose pg_dist_node lists the workers"));
    }
    Ok(())
}

/// The placement of `table`.
pub(crate) fn placement(client: &mut impl GenericClient, table: &str) -> Result<Placement> {
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL, p.partmethod::text, \
                    column_to_column_name(p.logicalrelid, p.partkey)::text, p.colocationid \
             FROM (SELECT 1) AS one LEFT JOIN pg_dist_partition p ON p.logicalrelid = to_regclass($1)",
            &[&table],
        )
        .map_err(|e| db::classify(e, &format!("reading how {table} is distributed")))?;
    let (exists, method): (bool, Option<String>) = (row.get(0), row.get(1));
    Ok(match (exists, method) {
        (false, _) => Placement::Missing,
        (true, Some(method)) => Placement::Citus {
            method,
            column: row.get(2),
            colocation: row.get(3),
        },
        (true, None) => {
            let rows: i64 = client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .map_err(|e| db::classify(e, &format!("counting the rows of {table}")))?
                .get(0);
            Placement::Local(rows)
        }
    })
}

/// Whether the target table is a Citus table (checked without assuming Citus is
/// installed): `check` warns when DISTRIBUTION=none says otherwise.
pub(crate) fn is_citus_table(client: &mut impl GenericClient, names: &Names) -> Result<bool> {
    let catalog: bool = client
        .query_one(
            "SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL",
            &[],
        )
        .map_err(|e| db::classify(e, "looking for Citus's catalog"))?
        .get(0);
    Ok(catalog && matches!(placement(client, &names.table)?, Placement::Citus { .. }))
}

/// Where the distributed tables stand now.
pub(crate) fn survey(client: &mut impl GenericClient, names: &Names) -> Result<Survey> {
    let mut tables = Vec::new();
    for table in distributed_tables(names) {
        tables.push((table.to_string(), placement(client, table)?));
    }
    Ok(Survey { tables })
}

/// Refuses (78) to distribute existing plain tables unless `confirmed`
/// (`migrate --distribute`); the note shows what it would do.
pub(crate) fn require_confirmation(survey: &Survey, confirmed: bool) -> Result<()> {
    if confirmed || survey.local().is_empty() {
        return Ok(());
    }
    let tables: Vec<&str> = survey.local().iter().map(|(t, _)| *t).collect();
    let verb = if tables.len() == 1 {
        "exists and is"
    } else {
        "exist and are"
    };
    Err(Error::config(format!(
        "`DISTRIBUTION` is citus, but {} {verb} not distributed",
        tables.join(", ")
    ))
    .with_note(format!(
        "`ragspool migrate --distribute` distributes them; it would do this:\n{}",
        survey.plan().trim_end()
    )))
}

/// In the migration's transaction, under its lock: surveys the tables again
/// (another host's migrate may have gone first since the survey shown to the
/// operator), refuses plain tables that hold rows unless `confirmed`, and a
/// Citus table placed otherwise than by doc_id with the target table; then
/// distributes by doc_id, co-located with the target table, each table that is
/// still plain, and removes the copy of its rows left on the coordinator.
/// Returns the tables it distributed.
pub(crate) fn distribute(
    tx: &mut impl GenericClient,
    names: &Names,
    confirmed: bool,
) -> Result<Vec<String>> {
    let survey = survey(tx, names)?;
    // The tables this migration just created are plain and empty here; only rows
    // that Citus would move need the operator's word.
    if survey.local().iter().any(|(_, rows)| *rows > 0) {
        require_confirmation(&survey, confirmed)?;
    }
    require_colocated(&survey, names)?;
    let mut done = Vec::new();
    for (table, before) in &survey.tables {
        if matches!(before, Placement::Citus { .. }) {
            continue;
        }
        // The target table opens its co-location group; the others join it.
        let colocate = if *table == names.table {
            "default"
        } else {
            names.table.as_str()
        };
        tx.execute(
            "SELECT create_distributed_table($1::text::regclass, $2, colocate_with => $3)",
            &[table, &COLUMN, &colocate],
        )
        .map_err(|e| db::classify(e, &format!("distributing {table} by doc_id")))?;
        // Always, not only when the survey counted rows: the count was taken
        // before this statement, and a plain table's rows would otherwise stay
        // hidden on the coordinator under the distributed one.
        if matches!(before, Placement::Local(_)) {
            tx.execute(
                "SELECT truncate_local_data_after_distributing_table($1::text::regclass)",
                &[table],
            )
            .map_err(|e| {
                db::classify(
                    e,
                    &format!("removing {table}'s rows left on the coordinator"),
                )
            })?;
        }
        done.push(table.clone());
    }
    Ok(done)
}

/// Refuses (78) a table that is already a Citus table but not distributed by
/// doc_id in the target table's co-location group: a document's change set
/// would then span shards (SPEC §10), which `migrate` must not accept silently.
fn require_colocated(survey: &Survey, names: &Names) -> Result<()> {
    let group = survey.tables.iter().find_map(|(t, p)| match p {
        Placement::Citus { colocation, .. } if *t == names.table => Some(*colocation),
        _ => None,
    });
    for (table, p) in &survey.tables {
        let Placement::Citus { colocation, .. } = p else {
            continue;
        };
        let wrong = if !p.by_doc_id() {
            "is a Citus table, but not distributed by doc_id"
        } else if group.is_some_and(|g| g != *colocation) {
            "is distributed by doc_id, but not co-located with the target table"
        } else {
            continue;
        };
        return Err(
            Error::config(format!("{table} {wrong} (DISTRIBUTION=citus)")).with_note(format!(
                "make it a plain table again with `SELECT undistribute_table('{table}')` on the \
             coordinator, then run `ragspool migrate --distribute`"
            )),
        );
    }
    Ok(())
}

/// Before ingest with DISTRIBUTION=citus: the server is a coordinator and the
/// three tables are distributed by doc_id in one group, or 78 saying which
/// `migrate` puts that right (rows must not pile up on the coordinator).
pub(crate) fn require_distributed(client: &mut impl GenericClient, names: &Names) -> Result<()> {
    require_coordinator(client)?;
    let survey = survey(client, names)?;
    require_colocated(&survey, names)?;
    let plain: Vec<&str> = survey
        .tables
        .iter()
        .filter(|(_, p)| !matches!(p, Placement::Citus { .. }))
        .map(|(t, _)| t.as_str())
        .collect();
    if plain.is_empty() {
        return Ok(());
    }
    Err(Error::config(format!(
        "`DISTRIBUTION` is citus, but {} not distributed",
        plain.join(", ")
    ))
    .with_note(
        "run `ragspool migrate` (`ragspool migrate --distribute` for tables that hold rows)",
    ))
}

/// A node of the cluster as the coordinator's pg_dist_node lists it.
#[derive(Debug)]
pub(crate) struct Node {
    /// `host:port`.
    pub(crate) address: String,
    /// The coordinator (group 0) or a worker.
    pub(crate) coordinator: bool,
    /// Citus routes queries to it.
    pub(crate) active: bool,
    /// Why the coordinator cannot reach it, when it cannot.
    pub(crate) unreachable: Option<String>,
}

/// The nodes the coordinator knows, the coordinator first, each worker probed
/// through the coordinator (`run_command_on_workers`) as ingest would reach it.
pub(crate) fn nodes(client: &mut impl GenericClient) -> Result<Vec<Node>> {
    let rows = client
        .query(
            "SELECT nodename || ':' || nodeport, groupid = 0, isactive FROM pg_dist_node \
             WHERE noderole = 'primary' ORDER BY groupid, nodeid",
            &[],
        )
        .map_err(|e| db::classify(e, "reading pg_dist_node"))?;
    let probes = client
        .query(
            "SELECT nodename || ':' || nodeport, success, result FROM run_command_on_workers('SELECT 1')",
            &[],
        )
        .map_err(|e| db::classify(e, "probing the workers"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let address: String = r.get(0);
            let unreachable = probes
                .iter()
                .find(|p| p.get::<_, String>(0) == address && !p.get::<_, bool>(1))
                .map(|p| p.get::<_, String>(2));
            Node {
                address,
                coordinator: r.get(1),
                active: r.get(2),
                unreachable,
            }
        })
        .collect())
}

/// What `check` says of each table's placement: (what, problem).
pub(crate) fn table_findings(
    client: &mut impl GenericClient,
    names: &Names,
) -> Result<Vec<(String, Option<String>)>> {
    let mut found = Vec::new();
    let target = placement(client, &names.table)?;
    for table in distributed_tables(names) {
        let p = if table == names.table {
            target.clone()
        } else {
            placement(client, table)?
        };
        let colocated = match (&p, &target) {
            (Placement::Citus { colocation: a, .. }, Placement::Citus { colocation: b, .. }) => {
                a == b
            }
            _ => false,
        };
        let problem = match &p {
            Placement::Missing => Some("missing; run `ragspool migrate`".to_string()),
            Placement::Local(_) => {
                Some("not distributed; run `ragspool migrate --distribute`".to_string())
            }
            _ if !p.by_doc_id() => Some("a Citus table, but not distributed by doc_id".into()),
            _ if !colocated => Some(format!("not co-located with {}", names.table)),
            _ => None,
        };
        let what = if table == names.table {
            format!("table {table}: distributed by doc_id")
        } else {
            format!(
                "table {table}: distributed by doc_id, co-located with {}",
                names.table
            )
        };
        found.push((what, problem));
    }
    for table in coordinator_tables(names) {
        let problem = match placement(client, table)? {
            Placement::Citus { .. } => {
                Some("a Citus table; it must stay a plain table on the coordinator".to_string())
            }
            _ => None,
        };
        found.push((format!("table {table}: on the coordinator"), problem));
    }
    Ok(found)
}

/// Shard tables named as the logical tables they belong to: a worker reports a
/// row's `tableoid` as `<partition>_<shardid>`, which no operator knows. Names
/// that are no shard's come back unchanged.
pub(crate) fn logical_names(
    client: &mut impl GenericClient,
    relations: Vec<String>,
) -> Result<Vec<String>> {
    let shard_id = |name: &str| -> Option<i64> {
        let (_, digits) = name.rsplit_once('_')?;
        digits.parse().ok()
    };
    let ids: Vec<i64> = relations.iter().filter_map(|r| shard_id(r)).collect();
    if ids.is_empty() {
        return Ok(relations);
    }
    let citus: bool = client
        .query_one(
            "SELECT to_regclass('pg_catalog.pg_dist_shard') IS NOT NULL",
            &[],
        )
        .map_err(|e| db::classify(e, "looking for Citus's shard catalog"))?
        .get(0);
    if !citus {
        return Ok(relations);
    }
    let rows = client
        .query(
            "SELECT shardid, logicalrelid::regclass::text FROM pg_dist_shard WHERE shardid = ANY($1)",
            &[&ids],
        )
        .map_err(|e| db::classify(e, "naming the shards' tables"))?;
    let mut named: Vec<String> = relations
        .into_iter()
        .map(|r| {
            shard_id(&r)
                .and_then(|id| rows.iter().find(|row| row.get::<_, i64>(0) == id))
                .map_or(r, |row| row.get(1))
        })
        .collect();
    named.sort();
    named.dedup();
    Ok(named)
}

/// Waits, within `budget`, until the coordinator reaches every worker: after a
/// transient failure a worker that restarts is waited for, as `Db::connect` waits
/// for a server that restarts, rather than failing the batch at once (exit 75).
pub(crate) fn wait_for_workers(client: &mut impl GenericClient, budget: Duration) -> Result<()> {
    let mut backoff = Backoff::new(budget);
    loop {
        let down = client
            .query(
                "SELECT nodename || ':' || nodeport, result FROM run_command_on_workers('SELECT 1') \
                 WHERE NOT success",
                &[],
            )
            .map_err(|e| db::classify(e, "probing the Citus workers"))?;
        let Some(first) = down.first() else {
            return Ok(());
        };
        let (node, why): (String, String) = (first.get(0), first.get(1));
        log::warn!("citus worker {node} unreachable: {why} (waiting for it)");
        if !backoff.wait(None) {
            return Err(Error::temp(format!("citus worker {node} unreachable: {why}"))
                .context("waiting for the Citus workers")
                .with_note("the worker stayed down for RETRY_MAX_SECS; nothing was lost, run again later"));
        }
    }
}

/// Commits or rolls back the prepared transactions that a node which went away
/// in the middle of a two-phase commit left in doubt, before a run recovers its
/// files (Citus's own maintenance daemon does so too, on its interval). Until then
/// their rows are invisible and their row locks held. Best effort: a coordinator
/// out of reach, or a role that may not run it, leaves them to the daemon.
pub(crate) fn resolve_in_doubt(client: &mut postgres::Client) {
    let resolved = client.query_one("SELECT recover_prepared_transactions()", &[]);
    match resolved {
        Ok(row) => {
            let resolved: i32 = row.get(0);
            if resolved > 0 {
                log::info!(
                    "resolved {resolved} prepared transaction(s) left in doubt on the workers"
                );
            }
        }
        Err(e) => log::warn!(
            "could not resolve prepared transactions left in doubt: {}; Citus's maintenance daemon will",
            db::describe(&e)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_counts_the_rows_that_move() {
        let survey = Survey {
            tables: vec![
                ("rag_chunks".into(), Placement::Local(1200)),
                ("ragspool_docs".into(), Placement::Missing),
                ("ragspool_doc_events".into(), Placement::Local(30)),
            ],
        };
        let plan = survey.plan();
        assert!(plan.contains("2 existing table(s)"), "{plan}");
        assert!(plan.contains("moves 1230 row(s)"), "{plan}");
        assert!(plan.contains("  rag_chunks: 1200 row(s)"), "{plan}");
        assert!(require_confirmation(&survey, true).is_ok());
        let refused = require_confirmation(&survey, false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains("--distribute"), "{refused}");
    }

    #[test]
    fn only_doc_id_hash_distribution_counts() {
        let by = |method: &str, column: Option<&str>| Placement::Citus {
            method: method.into(),
            column: column.map(str::to_string),
            colocation: 1,
        };
        assert!(by("h", Some("doc_id")).by_doc_id());
        assert!(!by("h", Some("source")).by_doc_id());
        assert!(!by("n", None).by_doc_id());
        assert!(!Placement::Local(0).by_doc_id());
    }
}
