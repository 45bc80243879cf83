//! The database schema (SPEC §5): table names derived from RAGSPOOL_TABLE, the
//! idempotent migration under an advisory lock, and the version check that makes
//! other commands refuse a schema that is too old (exit 78).

use crate::db;
use crate::error::{Error, Result};
use postgres::Client;

/// The schema version this build writes and needs.
pub(crate) const VERSION: i32 = 1;

/// Migrations in order; entry `i` brings the schema to version `i + 1`.
const MIGRATIONS: [&str; 1] = [include_str!("../sql/001_schema.sql")];

/// Advisory lock key for migrations ("ragspool" as a number).
const MIGRATE_LOCK: i64 = 0x7261_6773_706f_6f6c;

/// The names of every relation ragspool uses, qualified by the target's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    /// Schema of the target table, if RAGSPOOL_TABLE names one.
    pub(crate) schema: Option<String>,
    /// Bare name of the target table.
    pub(crate) table_name: String,
    /// Qualified target table.
    pub(crate) table: String,
    /// Qualified manifest table.
    pub(crate) manifest: String,
    /// Qualified maintenance-runs table.
    pub(crate) maintenance_runs: String,
    /// Qualified schema-version table.
    pub(crate) version: String,
}

impl Names {
    /// From a RAGSPOOL_TABLE value already checked by the settings registry.
    pub(crate) fn new(table: &str) -> Names {
        let (schema, name) = match table.split_once('.') {
            Some((s, n)) => (Some(s.to_string()), n.to_string()),
            None => (None, table.to_string()),
        };
        let prefix = schema.as_ref().map(|s| format!("{s}.")).unwrap_or_default();
        Names {
            table: format!("{prefix}{name}"),
            manifest: format!("{prefix}ragspool_manifest"),
            maintenance_runs: format!("{prefix}ragspool_maintenance_runs"),
            version: format!("{prefix}ragspool_schema_version"),
            schema,
            table_name: name,
        }
    }

    /// The qualified name of the daily partition for `day` (`<table>_pYYYY_MM_DD`).
    pub(crate) fn partition(&self, day: time::Date) -> String {
        let prefix = self
            .schema
            .as_ref()
            .map(|s| format!("{s}."))
            .unwrap_or_default();
        format!(
            "{prefix}{}_p{:04}_{:02}_{:02}",
            self.table_name,
            day.year(),
            u8::from(day.month()),
            day.day()
        )
    }

    fn render(&self, sql: &str) -> String {
        let prefix = self
            .schema
            .as_ref()
            .map(|s| format!("{s}."))
            .unwrap_or_default();
        let create_schema = match &self.schema {
            Some(s) => format!("CREATE SCHEMA IF NOT EXISTS {s};"),
            None => String::new(),
        };
        sql.replace("{create_schema}", &create_schema)
            .replace("{schema}", &prefix)
            .replace("{table}", &self.table)
    }
}

/// Brings the schema up to [`VERSION`] under an advisory lock; returns (before, after).
pub(crate) fn migrate(client: &mut Client, names: &Names) -> Result<(i32, i32)> {
    let mut tx = client
        .transaction()
        .map_err(|e| db::classify(e, "starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .map_err(|e| db::classify(e, "taking the migration lock"))?;
    let before = current_version(&mut tx, names)?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let to = i as i32 + 1;
        if to > before {
            tx.batch_execute(&names.render(sql))
                .map_err(|e| db::classify(e, &format!("applying schema version {to}")))?;
        }
    }
    tx.commit()
        .map_err(|e| db::classify(e, "committing the migration"))?;
    Ok((before, VERSION))
}

/// The applied schema version, 0 when ragspool never migrated this database.
pub(crate) fn current_version(
    client: &mut impl postgres::GenericClient,
    names: &Names,
) -> Result<i32> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&names.version])
        .map_err(|e| db::classify(e, "reading the schema version"))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {}", names.version),
            &[],
        )
        .map_err(|e| db::classify(e, "reading the schema version"))?;
    Ok(row.get(0))
}

/// Refuses (78) a schema older than this build needs.
pub(crate) fn require_current(client: &mut Client, names: &Names) -> Result<()> {
    let version = current_version(client, names)?;
    if version < VERSION {
        return Err(Error::config(format!(
            "the database schema for `{}` is at version {version}; this ragspool needs version {VERSION}",
            names.table
        ))
        .with_note("run `ragspool migrate`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn names_follow_the_target_schema() {
        let n = Names::new("rag.chunks");
        assert_eq!(n.manifest, "rag.ragspool_manifest");
        assert_eq!(n.partition(date!(2026 - 03 - 04)), "rag.chunks_p2026_03_04");
        let n = Names::new("rag_chunks");
        assert_eq!(n.partition(date!(2026 - 12 - 31)), "rag_chunks_p2026_12_31");
        assert!(n.render("{create_schema}{table}").starts_with("rag_chunks"));
    }
}
