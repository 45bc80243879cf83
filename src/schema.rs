//! The database schema (SPEC §5): table names derived from RAGSPOOL_TABLE, the
//! idempotent migration under an advisory lock, and the checks that make other
//! commands refuse a schema that is too old or a table that disagrees with the
//! storage settings (exit 78).

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
            storage: config.storage.clone(),
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

/// What a migration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Migrated {
    /// The schema version before.
    pub(crate) before: i32,
    /// The schema version after.
    pub(crate) after: i32,
    /// Whether it added the TEXT_SEARCH column to an existing table.
    pub(crate) text_search_added: bool,
}

/// Brings the schema up to [`VERSION`] under an advisory lock, and the table to
/// what the storage settings ask (SPEC §10, §15). `finish` runs last in the
/// migration's transaction, under its lock (a Citus coordinator distributes the
/// tables there, SPEC §16), so that a crash leaves either all of it or none.
pub(crate) fn migrate(
    client: &mut Client,
    names: &Names,
    finish: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<()>,
) -> Result<Migrated> {
    let mut tx = client
        .transaction()
        .map_err(|e| db::classify(e, "starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .map_err(|e| db::classify(e, "taking the migration lock"))?;
    // Indexes over existing partitions may take long; migrate is run by hand.
    tx.batch_execute("SET LOCAL statement_timeout = 0")
        .map_err(|e| db::classify(e, "lifting statement_timeout for the migration"))?;
    let embedding = names.storage.embedding;
    if embedding.pgvector() {
        create_vector_extension(&mut tx, embedding)?;
    }
    let before = current_version(&mut tx, names)?;
    let fresh = tx
        .query_one("SELECT to_regclass($1) IS NULL", &[&names.table])
        .map_err(|e| db::classify(e, "looking for the target table"))?
        .get::<_, bool>(0);
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let to = i as i32 + 1;
        if to > before {
            tx.batch_execute(&names.render(sql))
                .map_err(|e| db::classify(e, &format!("applying schema version {to}")))?;
        }
    }
    require_embedding_type(&mut tx, names)?;
    let text_search_added = match &names.storage.text_search {
        Some(config) => crate::text_search::add(&mut tx, &names.table, config)? && !fresh,
        None => false,
    };
    for index in names.storage.indexes_always() {
        let sql = format!(
            "CREATE INDEX IF NOT EXISTS {name}_{column}_{method} ON {table} USING {using}",
            name = names.table_name,
            column = index.column(),
            method = index.method(),
            table = names.table,
            using = names.storage.index_using(index),
        );
        tx.batch_execute(&sql)
            .map_err(|e| db::classify(e, &format!("creating the {} index", index.label())))?;
    }
    finish(&mut tx)?;
    tx.commit()
        .map_err(|e| db::classify(e, "committing the migration"))?;
    Ok(Migrated {
        before,
        after: VERSION,
        text_search_added,
    })
}

/// `CREATE EXTENSION vector`, or exit 78 saying how to install it; for halfvec,
/// pgvector 0.7 or later.
fn create_vector_extension(
    tx: &mut postgres::Transaction<'_>,
    embedding: EmbeddingType,
) -> Result<()> {
    let kind = if embedding.half() {
        "halfvec"
    } else {
        "vector"
    };
    let available: Option<String> = tx
        .query_opt(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'",
            &[],
        )
        .map_err(|e| db::classify(e, "looking for pgvector"))?
        .map(|r| r.get(0));
    let Some(available) = available else {
        return Err(Error::config(format!(
            "`EMBEDDING_TYPE` is {kind}, but the database server has no pgvector extension"
        ))
        .with_note(
            "install pgvector on the server (Debian/Ubuntu: apt-get install postgresql-<version>-pgvector; \
             or build it from https://github.com/pgvector/pgvector), or set EMBEDDING_TYPE=array",
        ));
    };
    tx.batch_execute("CREATE EXTENSION IF NOT EXISTS vector")
        .map_err(|e| match db::classify(e, "creating the vector extension") {
            e if e.class() == crate::error::Class::TempFail => e,
            e => Error::config(format!("`EMBEDDING_TYPE` is {kind}: {e}")).with_note(
                "CREATE EXTENSION needs a superuser or the database owner (PostgreSQL 13+ trusted extension); \
                 run `CREATE EXTENSION vector` once as such a role",
            ),
        })?;
    if !embedding.half() {
        return Ok(());
    }
    let installed: String = tx
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
            &[],
        )
        .map_err(|e| db::classify(e, "reading pgvector's version"))?
        .get(0);
    if has_halfvec(&installed) {
        return Ok(());
    }
    let note = if has_halfvec(&available) {
        format!(
            "the server has pgvector {available}: run `ALTER EXTENSION vector UPDATE` once \
             (as the extension's owner or a superuser), or set EMBEDDING_TYPE=vector"
        )
    } else {
        "install pgvector 0.7 or later on the server (https://github.com/pgvector/pgvector), \
         then run `ALTER EXTENSION vector UPDATE`; or set EMBEDDING_TYPE=vector"
            .to_string()
    };
    Err(Error::config(format!(
        "`EMBEDDING_TYPE` is halfvec, which needs pgvector 0.7 or later; the database has pgvector {installed}"
    ))
    .with_note(note))
}

/// Whether pgvector `version` (`major.minor[.patch]`) has halfvec (0.7.0).
fn has_halfvec(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (0, 7),
        _ => false,
    }
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
    require_embedding_type(client, names)?;
    match &names.storage.text_search {
        Some(config) => crate::text_search::require(client, &names.table, config),
        None => Ok(()),
    }
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

    #[test]
    fn halfvec_needs_pgvector_0_7() {
        assert!(has_halfvec("0.7.0") && has_halfvec("0.8.0") && has_halfvec("1.0"));
        assert!(!has_halfvec("0.6.2") && !has_halfvec("0.5") && !has_halfvec("dev"));
    }
}
