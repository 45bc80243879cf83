//! Daily partitions of the target table: which days are covered, creating missing
//! days natively (CREATE TABLE + ATTACH, under the advisory lock that `maintain`
//! also takes, so the two never race on ATTACH) or through pg_partman when it
//! manages the table, and the self-heal bounds of SPEC §5.

use crate::db;
use crate::error::Result;
use crate::schema::Names;
use postgres::GenericClient;
use std::collections::BTreeSet;
use time::{Date, Duration, OffsetDateTime};

/// At most this many missing days are healed for one file, each within this many
/// days of today: one bad timestamp must not create a thousand partitions.
pub(crate) const HEAL_MAX_DAYS: usize = 31;

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

/// Finds out whether pg_partman manages the target table.
pub(crate) fn manager(client: &mut impl GenericClient, names: &Names) -> Result<Manager> {
    let row = client
        .query_opt(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
             WHERE e.extname = 'pg_partman'",
            &[],
        )
        .map_err(|e| db::classify(e, "looking for pg_partman"))?;
    let Some(row) = row else {
        return Ok(Manager::Native);
    };
    let schema: String = row.get(0);
    let parent: Option<String> = client
        .query_one(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = to_regclass($1)",
            &[&names.table],
        )
        .map_err(|e| db::classify(e, "resolving the target table"))?
        .get(0);
    let Some(parent) = parent else {
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
    let todo = missing(&ranges, days.iter().copied());
    match manager(&mut tx, names)? {
        Manager::Native => {
            for day in &todo {
                create_native(&mut tx, names, *day)?;
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
    tx.commit()
        .map_err(|e| db::classify(e, "committing new partitions"))?;
    Ok(created)
}

fn create_native(tx: &mut postgres::Transaction<'_>, names: &Names, day: Date) -> Result<()> {
    let part = names.partition(day);
    let next = day + Duration::days(1);
    // CREATE + ATTACH rather than CREATE ... PARTITION OF: ATTACH takes only a SHARE
    // UPDATE EXCLUSIVE lock, so COPYs into other partitions go on meanwhile.
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {part} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);\n\
         ALTER TABLE {table} ATTACH PARTITION {part} FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00');",
        table = names.table
    );
    tx.batch_execute(&sql)
        .map_err(|e| db::classify(e, &format!("creating partition {part}")))
}

/// The UTC day of microseconds since the epoch.
pub(crate) fn day_of(micros: i64) -> Option<Date> {
    OffsetDateTime::from_unix_timestamp(micros.div_euclid(1_000_000))
        .ok()
        .map(|t| t.date())
}

/// Whether self-heal may create `days`: at most [`HEAL_MAX_DAYS`] of them, each
/// within [`HEAL_MAX_DAYS`] days of `today`. Returns why not, otherwise.
pub(crate) fn heal_refusal(days: &BTreeSet<Date>, today: Date) -> Option<String> {
    if days.len() > HEAL_MAX_DAYS {
        return Some(format!(
            "{} days lack a partition; self-heal creates at most {HEAL_MAX_DAYS} per file",
            days.len()
        ));
    }
    let bound = Duration::days(HEAL_MAX_DAYS as i64);
    days.iter().find(|d| (**d - today).abs() > bound).map(|d| {
        format!("created_at day {d} lacks a partition and lies beyond the {HEAL_MAX_DAYS}-day self-heal bound")
    })
}

/// Whether a database error is PostgreSQL's "no partition of relation … found for row".
pub(crate) fn is_no_partition(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code().code() == "23514" && db.message().starts_with("no partition of relation")
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
    fn heal_is_bounded() {
        let today = date!(2026 - 11 - 29);
        let near: BTreeSet<Date> = [date!(2026 - 11 - 01), date!(2026 - 12 - 30)].into();
        assert_eq!(heal_refusal(&near, today), None);
        let far: BTreeSet<Date> = [date!(2030 - 01 - 01)].into();
        assert!(heal_refusal(&far, today).is_some_and(|m| m.contains("2030-01-01")));
        let many: BTreeSet<Date> = (0..32).map(|i| today - Duration::days(i)).collect();
        assert!(heal_refusal(&many, today).is_some());
        assert_eq!(day_of(86_400 * 1_000_000 - 1), Some(date!(1970 - 01 - 01)));
    }
}
