//! The TEXT_SEARCH column (SPEC §15): `content_tsv`, generated from `content` by
//! `to_tsvector` under one text search configuration. `migrate` adds it; every
//! command refuses (78) a table whose column uses another configuration, naming
//! the statements that change it. The configuration's name reaches DDL only as a
//! quoted literal, and only once the server has said it has such a configuration.

use crate::db;
use crate::error::{Error, Result};
use postgres::GenericClient;

/// The column's name.
pub(crate) const COLUMN: &str = "content_tsv";

/// `'text'` with its quotes doubled: a SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The generation expression for `config` as PostgreSQL prints it back.
fn expression(config: &str) -> String {
    format!("to_tsvector({}::regconfig, content)", literal(config))
}

/// The column's definition for `config`.
fn definition(config: &str) -> String {
    format!(
        "{COLUMN} tsvector GENERATED ALWAYS AS ({}) STORED",
        expression(config)
    )
}

/// The configuration's name as the server prints it (qualified when its schema
/// is not on the search path, as the column's expression prints it), or 78
/// naming TEXT_SEARCH when the server has no such configuration.
fn canonical(client: &mut impl GenericClient, config: &str) -> Result<String> {
    let (schema, name) = match config.split_once('.') {
        Some((s, n)) => (Some(s), n),
        None => (None, config),
    };
    // Found in pg_ts_config first: a cast of an unknown name would be an error
    // that aborts the migration's transaction.
    let found = client
        .query_opt(
            "SELECT c.oid::regconfig::text FROM pg_ts_config c \
             JOIN pg_namespace n ON n.oid = c.cfgnamespace \
             WHERE c.cfgname = $2 AND CASE WHEN $1::text IS NULL \
               THEN pg_ts_config_is_visible(c.oid) ELSE n.nspname = $1 END",
            &[&schema, &name],
        )
        .map_err(|e| db::classify(e, "looking up the text search configuration"))?;
    if let Some(row) = found {
        return Ok(row.get(0));
    }
    let known: String = client
        .query_one(
            "SELECT coalesce(string_agg(oid::regconfig::text, ', ' ORDER BY 1), 'none') \
             FROM pg_ts_config",
            &[],
        )
        .map_err(|e| db::classify(e, "listing text search configurations"))?
        .get(0);
    Err(Error::config(format!(
        "`TEXT_SEARCH` is `{config}`, but the database server has no text search configuration of that name"
    ))
    .with_note(format!(
        "configurations it has: {known}; or create one with CREATE TEXT SEARCH CONFIGURATION"
    )))
}

/// What the table has as `content_tsv`: nothing, or its type and, when
/// generated, the expression.
fn existing(
    client: &mut impl GenericClient,
    table: &str,
) -> Result<Option<(String, Option<String>)>> {
    let row = client
        .query_opt(
            "SELECT format_type(a.atttypid, a.atttypmod), \
             CASE WHEN a.attgenerated = 's' THEN pg_get_expr(d.adbin, d.adrelid) END \
             FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped",
            &[&table, &COLUMN],
        )
        .map_err(|e| db::classify(e, "reading the content_tsv column"))?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// `migrate`: adds the column to `table` when it lacks it (every partition is
/// rewritten to compute it); returns whether it did. A column of another
/// configuration is refused.
pub(crate) fn add(client: &mut impl GenericClient, table: &str, config: &str) -> Result<bool> {
    let canonical = canonical(client, config)?;
    if existing(client, table)?.is_some() {
        require_column(client, table, config, &canonical)?;
        return Ok(false);
    }
    client
        .batch_execute(&format!(
            "ALTER TABLE {table} ADD COLUMN {}",
            definition(&canonical)
        ))
        .map_err(|e| db::classify(e, "adding the content_tsv column"))?;
    Ok(true)
}

/// Every other command: `table` must have the column, generated under `config`
/// (78 otherwise, with the fix).
pub(crate) fn require(client: &mut impl GenericClient, table: &str, config: &str) -> Result<()> {
    let canonical = canonical(client, config)?;
    require_column(client, table, config, &canonical)
}

fn require_column(
    client: &mut impl GenericClient,
    table: &str,
    config: &str,
    canonical: &str,
) -> Result<()> {
    let want = expression(canonical);
    let have = match existing(client, table)? {
        None => {
            return Err(Error::config(format!(
                "`TEXT_SEARCH` is `{config}`, but {table} has no {COLUMN} column"
            ))
            .with_note("run `ragspool migrate`, which adds it"));
        }
        Some((kind, Some(expr))) if kind == "tsvector" && expr == want => return Ok(()),
        Some((kind, Some(expr))) => format!("{kind} generated as {expr}"),
        Some((kind, None)) => format!("{kind}, not generated"),
    };
    Err(Error::config(format!(
        "`TEXT_SEARCH` is `{config}`, but {table}.{COLUMN} is {have}"
    ))
    .with_note(format!(
        "set TEXT_SEARCH to the table's configuration, or change the column once (each partition \
         is rewritten; its GIN indexes go with the old column and `ragspool maintain` builds them \
         again): ALTER TABLE {table} DROP COLUMN {COLUMN}; ALTER TABLE {table} ADD COLUMN {};",
        definition(canonical)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_goes_in_as_a_quoted_literal() {
        assert_eq!(
            definition("english"),
            "content_tsv tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, content)) STORED"
        );
        assert_eq!(
            expression("it's"),
            "to_tsvector('it''s'::regconfig, content)"
        );
    }
}
