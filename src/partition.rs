//! Partitions of the target table (a day or a month each, PARTITION_INTERVAL):
//! which days are covered, creating missing ones natively (CREATE TABLE + ATTACH,
//! under the advisory lock that `maintain` also takes, so the two never race on
//! ATTACH) or through pg_partman when it manages the table, their storage parameter
//! and indexes (HNSW, GIN), and the self-heal bounds of SPEC §10.

use crate::db;
use crate::error::Result;
use crate::schema::Names;
use crate::storage::{IndexBuild, PartitionIndex};
use postgres::GenericClient;
use std::collections::BTreeSet;
use time::{Date, Duration, OffsetDateTime};

/// The advisory lock key shared by self-heal and maintenance for a table.
pub(crate) fn lock_sql(names: &Names) -> (String, String) {
    (
        "SELECT pg_advisory_xact_lock(hashtext($1))".to_string(),
        format!("ragspool.partitions:{}", names.table),
    )
}

/// How partitions of the table are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Manager {
    /// ragspool creates daily partitions itself.
    Native,
    /// pg_partman manages the table; its schema and the table as it knows it.
    Partman {
        /// Schema pg_partman is installed in.
        schema: String,
        /// `schema.table` as registered in part_config.
        parent: String,
    },
}

/// `schema.table` of the target table as the catalog names it, if it exists.
fn qualified_parent(client: &mut impl GenericClient, names: &Names) -> Result<Option<String>> {
    Ok(client
        .query_one(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1)",
            &[&names.table],
        )
        .map_err(|e| db::classify(e, "resolving the target table"))?
        .get(0))
}

/// The target table's default partition, if it has one.
pub(crate) fn default_partition(
    client: &mut impl GenericClient,
    names: &Names,
) -> Result<Option<String>> {
    Ok(client
        .query_opt(
            "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass($1) AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'",
            &[&names.table],
        )
        .map_err(|e| db::classify(e, "finding the default partition"))?
        .map(|r| r.get(0)))
}

/// The schema and version of the pg_partman extension, when it is installed.
fn partman_extension(client: &mut impl GenericClient) -> Result<Option<(String, String)>> {
    Ok(client
        .query_opt(
            "SELECT n.nspname, e.extversion FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
             WHERE e.extname = 'pg_partman'",
            &[],
        )
        .map_err(|e| db::classify(e, "looking for pg_partman"))?
        .map(|r| (r.get(0), r.get(1))))
}

/// Finds out whether pg_partman manages the target table.
pub(crate) fn manager(client: &mut impl GenericClient, names: &Names) -> Result<Manager> {
    let Some((schema, _)) = partman_extension(client)? else {
        return Ok(Manager::Native);
    };
    manager_in(client, names, schema)
}

/// Whether pg_partman, installed in `schema`, manages the target table.
fn manager_in(client: &mut impl GenericClient, names: &Names, schema: String) -> Result<Manager> {
    let Some(parent) = qualified_parent(client, names)? else {
        return Ok(Manager::Native);
    };
    let managed = client
        .query_opt(
            &format!("SELECT 1 FROM {schema}.part_config WHERE parent_table = $1"),
            &[&parent],
        )
        .map_err(|e| db::classify(e, "reading pg_partman's part_config"))?
        .is_some();
    Ok(if managed {
        Manager::Partman { schema, parent }
    } else {
        Manager::Native
    })
}

/// When the pg_partman extension is installed in the database and the table has no
/// partition yet and is not registered, registers it with `create_parent` at
/// PARTITION_INTERVAL, with a premake that covers `window`. pg_partman 4.x takes
/// `p_type => 'native'`; 5.x dropped that value and takes `'range'`. No default
/// partition: a row without its partition must reach self-heal, not hide in a
/// default that would then block creating the partition. Returns whether it
/// registered the table.
pub(crate) fn register_with_partman(
    client: &mut postgres::Client,
    names: &Names,
    window: &BTreeSet<Date>,
) -> Result<bool> {
    let Some((schema, version)) = partman_extension(client)? else {
        return Ok(false);
    };
    if manager_in(client, names, schema.clone())? != Manager::Native
        || !children(client, names)?.is_empty()
    {
        return Ok(false);
    }
    // 4.x always makes a default partition (dropped below, while it is empty); 5.x
    // takes p_default_table.
    let (p_type, no_default) = if version.starts_with("4.") {
        ("native", "")
    } else {
        ("range", ", p_default_table => false")
    };
    let premake = periods(names, window).len().max(1) as i32;
    let parent = qualified_parent(client, names)?.unwrap_or_else(|| names.table.clone());
    client
        .execute(
            &format!(
                "SELECT {schema}.create_parent(p_parent_table => $1::text, p_control => 'created_at', \
                 p_type => $2::text, p_interval => $3::text, p_premake => $4::int{no_default})"
            ),
            &[&parent, &p_type, &names.storage.interval.partman(), &premake],
        )
        .map_err(|e| db::classify(e, "registering the table with pg_partman"))?;
    if let Some(default) = default_partition(client, names)? {
        client
            .batch_execute(&format!("DROP TABLE {default}"))
            .map_err(|e| db::classify(e, "dropping pg_partman's empty default partition"))?;
    }
    client
        .execute(
            &format!(
                "UPDATE {schema}.part_config SET infinite_time_partitions = true WHERE parent_table = $1"
            ),
            &[&parent],
        )
        .map_err(|e| db::classify(e, "configuring pg_partman"))?;
    Ok(true)
}

/// Ranges [from, to) of days covered by the table's partitions, and whether a
/// default partition exists.
pub(crate) fn coverage(
    client: &mut impl GenericClient,
    names: &Names,
) -> Result<(Vec<(Date, Date)>, bool)> {
    let rows = client
        .query(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass($1)",
            &[&names.table],
        )
        .map_err(|e| db::classify(e, "listing partitions"))?;
    let mut ranges = Vec::new();
    let mut default = false;
    for row in rows {
        let bound: String = row.get(0);
        if bound.trim() == "DEFAULT" {
            default = true;
        } else if let Some(range) = parse_bound(&bound) {
            ranges.push(range);
        }
    }
    Ok((ranges, default))
}

/// `FOR VALUES FROM ('2026-11-29 00:00:00+00') TO ('2026-11-30 00:00:00+00')` → days.
fn parse_bound(bound: &str) -> Option<(Date, Date)> {
    let date_after = |key: &str| -> Option<Date> {
        let at = bound.find(key)? + key.len();
        let text = bound.get(at..at + 10)?;
        Date::parse(
            text,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .ok()
    };
    Some((date_after("FROM ('")?, date_after("TO ('")?))
}

/// Days of `wanted` no partition covers.
pub(crate) fn missing(
    ranges: &[(Date, Date)],
    wanted: impl IntoIterator<Item = Date>,
) -> BTreeSet<Date> {
    wanted
        .into_iter()
        .filter(|d| !ranges.iter().any(|(from, to)| from <= d && d < to))
        .collect()
}

/// The first days of the partitions that hold `days`.
pub(crate) fn periods(names: &Names, days: &BTreeSet<Date>) -> BTreeSet<Date> {
    let interval = names.storage.interval;
    days.iter().map(|d| interval.start(*d)).collect()
}

/// The qualified names of the table's partitions.
pub(crate) fn children(client: &mut impl GenericClient, names: &Names) -> Result<BTreeSet<String>> {
    let rows = client
        .query(
            "SELECT i.inhrelid::regclass::text FROM pg_inherits i WHERE i.inhparent = to_regclass($1)",
            &[&names.table],
        )
        .map_err(|e| db::classify(e, "listing partitions"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Sets TOAST_TUPLE_TARGET on `parts` (PostgreSQL 15 refuses it on the partitioned
/// parent, and pg_partman does not copy it from a template, so each partition gets
/// it once created). A no-op when the setting is 0.
pub(crate) fn set_storage(
    client: &mut impl GenericClient,
    names: &Names,
    parts: &BTreeSet<String>,
) -> Result<()> {
    let target = names.storage.toast_tuple_target;
    if target == 0 {
        return Ok(());
    }
    for part in parts {
        client
            .batch_execute(&format!(
                "ALTER TABLE {part} SET (toast_tuple_target = {target})"
            ))
            .map_err(|e| db::classify(e, &format!("setting toast_tuple_target on {part}")))?;
    }
    Ok(())
}

/// Partitions whose toast_tuple_target is not TOAST_TUPLE_TARGET (empty when it is 0).
pub(crate) fn lacking_storage(
    client: &mut impl GenericClient,
    names: &Names,
) -> Result<BTreeSet<String>> {
    let target = names.storage.toast_tuple_target;
    if target == 0 {
        return Ok(BTreeSet::new());
    }
    let want = format!("toast_tuple_target={target}");
    let rows = client
        .query(
            "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass($1) AND NOT (coalesce(c.reloptions, '{}') @> ARRAY[$2])",
            &[&names.table, &want],
        )
        .map_err(|e| db::classify(e, "reading partitions' storage parameters"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A partition still waiting for one of its indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waiting {
    /// The partition's qualified name.
    pub(crate) partition: String,
    /// The first day after its range.
    pub(crate) ends: Date,
    /// The index it lacks.
    pub(crate) index: PartitionIndex,
}

/// Partitions still waiting for an index they should have (HNSW with
/// VECTOR_INDEX, GIN with TEXT_SEARCH): with `sealed`, those whose range ended
/// before today; with `always`, all. Ordered by partition, then index.
pub(crate) fn unindexed(client: &mut impl GenericClient, names: &Names) -> Result<Vec<Waiting>> {
    let policy = names.storage.index_policy;
    let today = OffsetDateTime::now_utc().date();
    let mut waiting = Vec::new();
    for index in names.storage.indexes() {
        // A valid index of the method on the column counts, whatever its name
        // (one on the parent reaches every partition as its own).
        let rows = client
            .query(
                "SELECT c.oid::regclass::text, pg_get_expr(c.relpartbound, c.oid) \
                 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = to_regclass($1) AND NOT EXISTS ( \
                   SELECT 1 FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid \
                   JOIN pg_am am ON am.oid = ic.relam \
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = x.indkey[0] \
                   WHERE x.indrelid = c.oid AND am.amname = $2 AND a.attname = $3 AND x.indisvalid)",
                &[&names.table, &index.method(), &index.column()],
            )
            .map_err(|e| {
                db::classify(
                    e,
                    &format!("looking for partitions without their {} index", index.label()),
                )
            })?;
        waiting.extend(rows.iter().filter_map(|r| {
            let (_, ends) = parse_bound(&r.get::<_, String>(1))?;
            Some(Waiting {
                partition: r.get(0),
                ends,
                index,
            })
        }));
    }
    waiting.retain(|w| policy.build == IndexBuild::Always || w.ends <= today);
    waiting.sort_by(|a, b| (&a.partition, a.index).cmp(&(&b.partition, b.index)));
    Ok(waiting)
}

/// Builds every index a partition is waiting for (SPEC §10, §15): with `sealed`,
/// once its range ended before today and it took no row for
/// VECTOR_INDEX_QUIET_SECS. CREATE INDEX CONCURRENTLY, so ingest goes on into the
/// partition meanwhile; an index such a build left invalid (interrupted, failed) is
/// dropped and built again. Returns the indexes built (or, with `dry_run`, those
/// that would be).
pub(crate) fn index_sealed(
    client: &mut postgres::Client,
    names: &Names,
    dry_run: bool,
) -> Result<Vec<(PartitionIndex, String)>> {
    let indexes = names.storage.indexes();
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let policy = names.storage.index_policy;
    if !dry_run {
        // An index build on a large partition may rightly outlast
        // DB_STATEMENT_TIMEOUT_MS; it runs concurrently, holding no lock that
        // blocks ingest, so this session lifts the bound.
        client
            .batch_execute("SET statement_timeout = 0")
            .map_err(|e| db::classify(e, "lifting statement_timeout for index builds"))?;
        for index in &indexes {
            drop_invalid_indexes(client, names, *index)?;
        }
    }
    let mut done = Vec::new();
    let mut quiet: Option<(String, bool)> = None;
    for w in unindexed(client, names)? {
        if policy.build == IndexBuild::Sealed {
            // Asked once per partition, however many indexes it waits for.
            let is_quiet = match &quiet {
                Some((p, q)) if *p == w.partition => *q,
                _ => idle_secs(client, &w.partition)? >= policy.quiet_secs as f64,
            };
            quiet = Some((w.partition.clone(), is_quiet));
            if !is_quiet {
                continue;
            }
        }
        if !dry_run {
            let part = &w.partition;
            let bare = part.rsplit('.').next().unwrap_or(part);
            let sql = format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {bare}_{} ON {part} USING {}",
                w.index.suffix(),
                names.storage.index_using(w.index)
            );
            client.batch_execute(&sql).map_err(|e| {
                db::classify(
                    e,
                    &format!("building the {} index on {part}", w.index.label()),
                )
            })?;
        }
        done.push((w.index, w.partition));
    }
    Ok(done)
}

/// Seconds since `part` last took a row (a very large number when it holds none).
fn idle_secs(client: &mut postgres::Client, part: &str) -> Result<f64> {
    Ok(client
        .query_one(
            &format!(
                "SELECT coalesce(extract(epoch FROM now() - max(ingested_at))::float8, 1e12) FROM {part}"
            ),
            &[],
        )
        .map_err(|e| db::classify(e, &format!("reading {part}'s last ingest")))?
        .get(0))
}

/// Drops `index`es on partitions that a failed or interrupted concurrent build
/// left invalid, so that the next build starts clean.
fn drop_invalid_indexes(
    client: &mut postgres::Client,
    names: &Names,
    index: PartitionIndex,
) -> Result<()> {
    let rows = client
        .query(
            "SELECT x.indexrelid::regclass::text FROM pg_inherits i JOIN pg_index x ON x.indrelid = i.inhrelid \
             JOIN pg_class ic ON ic.oid = x.indexrelid JOIN pg_am am ON am.oid = ic.relam \
             JOIN pg_attribute a ON a.attrelid = i.inhrelid AND a.attnum = x.indkey[0] \
             WHERE i.inhparent = to_regclass($1) AND am.amname = $2 AND a.attname = $3 AND NOT x.indisvalid",
            &[&names.table, &index.method(), &index.column()],
        )
        .map_err(|e| db::classify(e, &format!("looking for invalid {} indexes", index.label())))?;
    for row in rows {
        let invalid: String = row.get(0);
        log::warn!(
            "dropping invalid {} index {invalid} left by an interrupted build; it is built again",
            index.label()
        );
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {invalid}"))
            .map_err(|e| db::classify(e, &format!("dropping invalid index {invalid}")))?;
    }
    Ok(())
}

/// Creates partitions for `days` (those still missing once the lock is held);
/// returns how many were created. Runs in its own transaction.
pub(crate) fn create_days(
    client: &mut postgres::Client,
    names: &Names,
    days: &BTreeSet<Date>,
) -> Result<usize> {
    if days.is_empty() {
        return Ok(0);
    }
    let mut tx = client
        .transaction()
        .map_err(|e| db::classify(e, "starting partition creation"))?;
    let (lock, key) = lock_sql(names);
    tx.execute(&lock, &[&key])
        .map_err(|e| db::classify(e, "taking the partition lock"))?;
    let (ranges, _) = coverage(&mut tx, names)?;
    let todo = periods(names, &missing(&ranges, days.iter().copied()));
    let before = children(&mut tx, names)?;
    match manager(&mut tx, names)? {
        Manager::Native => {
            for start in &todo {
                create_native(&mut tx, names, *start)?;
            }
        }
        Manager::Partman { schema, parent } => {
            let times: Vec<OffsetDateTime> =
                todo.iter().map(|d| d.midnight().assume_utc()).collect();
            if !times.is_empty() {
                tx.execute(
                    &format!("SELECT {schema}.create_partition_time($1, $2::timestamptz[])"),
                    &[&parent, &times],
                )
                .map_err(|e| db::classify(e, "creating partitions through pg_partman"))?;
            }
        }
    }
    let (after, _) = coverage(&mut tx, names)?;
    let created = todo.len() - missing(&after, todo.iter().copied()).len();
    let new: BTreeSet<String> = children(&mut tx, names)?
        .difference(&before)
        .cloned()
        .collect();
    set_storage(&mut tx, names, &new)?;
    tx.commit()
        .map_err(|e| db::classify(e, "committing new partitions"))?;
    Ok(created)
}

fn create_native(tx: &mut postgres::Transaction<'_>, names: &Names, start: Date) -> Result<()> {
    let part = names.partition(start);
    let next = names.storage.interval.next(start);
    // CREATE + ATTACH rather than CREATE ... PARTITION OF: ATTACH takes only a SHARE
    // UPDATE EXCLUSIVE lock, so COPYs into other partitions go on meanwhile. ATTACH
    // also builds the parent's indexes (doc_id, and HNSW and GIN with `always`) on it.
    // Two statements, not one string: a Citus coordinator relays the ATTACH of a
    // distributed table's partition wrongly when it shares a query with others.
    let table = &names.table;
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {part} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED){}",
        names.storage.with_clause(),
    );
    let attach = format!(
        "ALTER TABLE {table} ATTACH PARTITION {part} FOR VALUES FROM ('{start} 00:00:00+00') TO ('{next} 00:00:00+00')"
    );
    for sql in [create, attach] {
        tx.batch_execute(&sql)
            .map_err(|e| db::classify(e, &format!("creating partition {part}")))?;
    }
    Ok(())
}

/// The UTC day of microseconds since the epoch.
pub(crate) fn day_of(micros: i64) -> Option<Date> {
    OffsetDateTime::from_unix_timestamp(micros.div_euclid(1_000_000))
        .ok()
        .map(|t| t.date())
}

/// Whether self-heal may create the partitions for `days` (SPEC §10): at most
/// HEAL_MAX_PARTITIONS of them, none after today + HEAL_MAX_FUTURE_DAYS; no bound
/// into the past. Returns why not, otherwise.
pub(crate) fn heal_refusal(names: &Names, days: &BTreeSet<Date>, today: Date) -> Option<String> {
    let storage = &names.storage;
    let future = i64::from(storage.heal_max_future_days);
    if let Some(d) = days
        .iter()
        .rev()
        .find(|d| **d - today > Duration::days(future))
    {
        return Some(format!(
            "created_at day {d} lacks a partition and lies more than HEAL_MAX_FUTURE_DAYS={future} days after today"
        ));
    }
    let needed = periods(names, days).len();
    if needed > storage.heal_max_partitions {
        return Some(format!(
            "{needed} partitions are missing; self-heal creates at most HEAL_MAX_PARTITIONS={} per file",
            storage.heal_max_partitions
        ));
    }
    None
}

/// Whether a database error is PostgreSQL's "no partition of relation … found for row".
/// A Citus coordinator relays a worker's COPY error as XX000, naming the shard.
pub(crate) fn is_no_partition(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        matches!(db.code().code(), "23514" | "XX000")
            && db.message().starts_with("no partition of relation")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn bounds_parse_and_cover() {
        let r =
            parse_bound("FOR VALUES FROM ('2026-11-29 00:00:00+00') TO ('2026-11-30 00:00:00+00')");
        assert_eq!(r, Some((date!(2026 - 11 - 29), date!(2026 - 11 - 30))));
        let ranges = vec![(date!(2026 - 11 - 29), date!(2026 - 12 - 06))];
        let m = missing(
            &ranges,
            [
                date!(2026 - 11 - 28),
                date!(2026 - 11 - 29),
                date!(2026 - 12 - 05),
                date!(2026 - 12 - 06),
            ],
        );
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            vec![date!(2026 - 11 - 28), date!(2026 - 12 - 06)]
        );
    }

    #[test]
    fn heal_is_bounded_ahead_and_in_count_but_not_into_the_past() {
        let mut names = Names::new("rag_chunks");
        let today = date!(2026 - 11 - 29);
        let near: BTreeSet<Date> = [date!(1901 - 11 - 01), date!(2026 - 12 - 30)].into();
        assert_eq!(heal_refusal(&names, &near, today), None);
        let far: BTreeSet<Date> = [date!(2030 - 01 - 01)].into();
        assert!(heal_refusal(&names, &far, today).is_some_and(|m| m.contains("2030-01-01")));
        let many: BTreeSet<Date> = (0..401).map(|i| today - Duration::days(i)).collect();
        assert!(heal_refusal(&names, &many, today).is_some());
        names.storage.interval = crate::storage::Interval::Month;
        assert_eq!(heal_refusal(&names, &many, today), None);
        assert_eq!(day_of(86_400 * 1_000_000 - 1), Some(date!(1970 - 01 - 01)));
    }
}
