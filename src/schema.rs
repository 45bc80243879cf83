//! The database schema (SPEC §5): table names derived from RAGSPOOL_TABLE, the
//! idempotent migration under an advisory lock, and the version check that makes
//! other commands refuse a schema that is too old (exit 78).

use crate::db;
use crate::error::{Error, Result};
use crate::storage::{EmbeddingType, Storage};
use postgres::Client;

/// The schema version this build writes and needs.
pub(crate) const VERSION: i32 = 4;

/// Migrations in order; entry `i` brings the schema to version `i + 1`.
const MIGRATIONS: [&str; 4] = [
    include_str!("../sql/001_schema.sql"),
    include_str!("../sql/002_rag_storage.sql"),
    include_str!("../sql/003_reliability.sql"),
    include_str!("../sql/004_embed_cost.sql"),
];

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
    /// Qualified per-document state table (SPEC §10 order).
    pub(crate) docs: String,
    /// Qualified lineage table (SPEC §12).
    pub(crate) doc_events: String,
    /// Qualified failure-log anchor table.
    pub(crate) failure_log_anchor: String,
    /// How the table stores chunks and is partitioned.
    pub(crate) storage: Storage,
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
            docs: format!("{prefix}ragspool_docs"),
            doc_events: format!("{prefix}ragspool_doc_events"),
            failure_log_anchor: format!("{prefix}ragspool_failure_log_anchor"),
            storage: Storage::default(),
            schema,
            table_name: name,
        }
    }

    /// The names for the configured table, with its storage settings.
    pub(crate) fn from_config(config: &crate::config::Config) -> Names {
        Names {
            storage: config.storage,
            ..Names::new(&config.table)
        }
    }

    /// The qualified name of the partition holding `day` (`<table>_pYYYY_MM_DD`,
    /// or `<table>_pYYYY_MM` for month partitions).
    pub(crate) fn partition(&self, day: time::Date) -> String {
        let interval = self.storage.interval;
        format!(
            "{}{}_{}",
            self.prefix(),
            self.table_name,
            interval.suffix(interval.start(day))
        )
    }

    /// `schema.` or nothing.
    fn prefix(&self) -> String {
        self.schema
            .as_ref()
            .map(|s| format!("{s}."))
            .unwrap_or_default()
    }

    fn render(&self, sql: &str) -> String {
        let prefix = self.prefix();
        let create_schema = match &self.schema {
            Some(s) => format!("CREATE SCHEMA IF NOT EXISTS {s};"),
            None => String::new(),
        };
        sql.replace("{create_schema}", &create_schema)
            .replace("{schema}", &prefix)
            .replace("{table}", &self.table)
            .replace("{table_name}", &self.table_name)
            .replace("{embedding_type}", &self.storage.embedding.sql())
    }
}

/// Brings the schema up to [`VERSION`] under an advisory lock; returns (before, after).
/// `finish` runs last in the migration's transaction, under its lock (a Citus
/// coordinator distributes the tables there, SPEC §16), so that a crash leaves
/// either all of it or none.
pub(crate) fn migrate(
    client: &mut Client,
    names: &Names,
    finish: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<()>,
) -> Result<(i32, i32)> {
    let mut tx = client
        .transaction()
        .map_err(|e| db::classify(e, "starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .map_err(|e| db::classify(e, "taking the migration lock"))?;
    // Indexes over existing partitions may take long; migrate is run by hand.
    tx.batch_execute("SET LOCAL statement_timeout = 0")
        .map_err(|e| db::classify(e, "lifting statement_timeout for the migration"))?;
    if let EmbeddingType::Vector(_) = names.storage.embedding {
        create_vector_extension(&mut tx)?;
    }
    let before = current_version(&mut tx, names)?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let to = i as i32 + 1;
        if to > before {
            tx.batch_execute(&names.render(sql))
                .map_err(|e| db::classify(e, &format!("applying schema version {to}")))?;
        }
    }
    require_embedding_type(&mut tx, names)?;
    if let Some(metric) = names.storage.index_always() {
        let sql = format!(
            "CREATE INDEX IF NOT EXISTS {name}_embedding_hnsw ON {table} USING hnsw (embedding {ops})",
            name = names.table_name,
            table = names.table,
            ops = metric.opclass()
        );
        tx.batch_execute(&sql)
            .map_err(|e| db::classify(e, "creating the HNSW index"))?;
    }
    finish(&mut tx)?;
    tx.commit()
        .map_err(|e| db::classify(e, "committing the migration"))?;
    Ok((before, VERSION))
}

/// `CREATE EXTENSION vector`, or exit 78 saying how to install it.
fn create_vector_extension(tx: &mut postgres::Transaction<'_>) -> Result<()> {
    let available: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')",
            &[],
        )
        .map_err(|e| db::classify(e, "looking for pgvector"))?
        .get(0);
    if !available {
        return Err(Error::config(
            "`EMBEDDING_TYPE` is vector, but the database server has no pgvector extension",
        )
        .with_note(
            "install pgvector on the server (Debian/Ubuntu: apt-get install postgresql-<version>-pgvector; \
             or build it from https://github.com/pgvector/pgvector), or set EMBEDDING_TYPE=array",
        ));
    }
    tx.batch_execute("CREATE EXTENSION IF NOT EXISTS vector")
        .map_err(|e| match db::classify(e, "creating the vector extension") {
            e if e.class() == crate::error::Class::TempFail => e,
            e => Error::config(format!("`EMBEDDING_TYPE` is vector: {e}")).with_note(
                "CREATE EXTENSION needs a superuser or the database owner (PostgreSQL 13+ trusted extension); \
                 run `CREATE EXTENSION vector` once as such a role",
            ),
        })
}

/// The table's embedding column must be what EMBEDDING_TYPE says (78 otherwise).
pub(crate) fn require_embedding_type(
    client: &mut impl postgres::GenericClient,
    names: &Names,
) -> Result<()> {
    let row = client
        .query_opt(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attname = 'embedding' AND NOT a.attisdropped",
            &[&names.table],
        )
        .map_err(|e| db::classify(e, "reading the embedding column's type"))?;
    let Some(row) = row else { return Ok(()) };
    let have: String = row.get(0);
    let want = names.storage.embedding.sql();
    if have == want {
        return Ok(());
    }
    Err(Error::config(format!(
        "`EMBEDDING_TYPE`/`EMBED_DIM` say embedding {want}, but {} has embedding {have}",
        names.table
    ))
    .with_note(format!(
        "set EMBEDDING_TYPE and EMBED_DIM to match the table, or convert it once: \
         ALTER TABLE {} ALTER COLUMN embedding TYPE {want} USING embedding::{want}",
        names.table
    )))
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
    require_embedding_type(client, names)
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
        let mut n = Names::new("rag_chunks");
        assert_eq!(n.partition(date!(2026 - 12 - 31)), "rag_chunks_p2026_12_31");
        assert!(n.render("{create_schema}{table}").starts_with("rag_chunks"));
        n.storage.interval = crate::storage::Interval::Month;
        assert_eq!(n.partition(date!(2001 - 02 - 17)), "rag_chunks_p2001_02");
    }
}
