//! `ragspool migrate`: create or upgrade the schema, hand the table to pg_partman
//! when it is installed in the database, the premake window, and the partitions'
//! storage parameter; with DISTRIBUTION=citus, the tables distributed by doc_id.

use crate::cli::Args;
use crate::config::{Config, Distribution};
use crate::db::Db;
use crate::distribution;
use crate::error::{Error, Outcome, Result};
use crate::partition;
use crate::schema::{self, Names};
use std::collections::BTreeSet;

pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let citus = config.distribution == Distribution::Citus;
    if args.has("distribute") && !citus {
        return Err(Error::config(
            "`migrate --distribute` needs `DISTRIBUTION` set to citus",
        ));
    }
    let db = Db::from_config(config)?;
    let mut client = db.connect()?;
    let names = Names::from_config(config);
    let confirmed = args.has("distribute");
    if citus {
        announce(&mut client, &names, confirmed, args.has("json"))?;
    }
    let mut distributed = Vec::new();
    let migrated = schema::migrate(&mut client, &names, |tx| {
        if citus {
            distributed = distribution::distribute(tx, &names, confirmed)?;
        }
        Ok(())
    })?;
    let (before, after) = (migrated.before, migrated.after);
    let today = time::OffsetDateTime::now_utc().date();
    let window: BTreeSet<time::Date> = (0..=i64::from(config.partition_premake_days))
        .map(|d| today + time::Duration::days(d))
        .collect();
    let registered = partition::register_with_partman(&mut client, &names, &window)?;
    let created = match partition::manager(&mut client, &names)? {
        partition::Manager::Native => partition::create_days(&mut client, &names, &window)?,
        partition::Manager::Partman { .. } => 0,
    };
    // Existing partitions get the storage parameter too; it applies to rows
    // written from now on.
    let lacking = partition::lacking_storage(&mut client, &names)?;
    partition::set_storage(&mut client, &names, &lacking)?;
    let verb = if before == after {
        "is already at"
    } else {
        "migrated to"
    };
    let mut message = format!(
        "schema for {} {verb} version {after}; {created} partition(s) created\n",
        names.table
    );
    if registered {
        message.push_str("table handed to pg_partman\n");
    }
    if migrated.text_search_added {
        message.push_str(&format!(
            "content_tsv added (TEXT_SEARCH={}); `ragspool maintain` builds its GIN indexes\n",
            names.storage.text_search.as_deref().unwrap_or_default()
        ));
    }
    if !distributed.is_empty() {
        message.push_str(&format!(
            "distributed by doc_id on the Citus coordinator: {}\n",
            distributed.join(", ")
        ));
    }
    if !lacking.is_empty() {
        message.push_str(&format!(
            "toast_tuple_target={} set on {} existing partition(s)\n",
            names.storage.toast_tuple_target,
            lacking.len()
        ));
    }
    log::info!("{}", message.trim_end().replace('\n', "; "));
    if args.has("json") {
        super::emit_json(&serde_json::json!({
            "table": names.table,
            "schema_version_before": before,
            "schema_version": after,
            "partitions_created": created,
            "handed_to_partman": registered,
            "toast_tuple_target_set_on": lacking,
            "distributed": distributed,
        }))?;
    } else {
        super::emit(&message)?;
    }
    Ok(Outcome::Clean)
}

/// Before anything changes: refuses (78) a server that is no Citus coordinator,
/// or existing plain tables unless `confirmed`, and otherwise prints what Citus
/// will move (to stderr under --json, whose stdout is one object). The migration
/// surveys again under its lock and acts on that.
fn announce(
    client: &mut postgres::Client,
    names: &Names,
    confirmed: bool,
    json: bool,
) -> Result<()> {
    distribution::require_coordinator(client)?;
    let survey = distribution::survey(client, names)?;
    distribution::require_confirmation(&survey, confirmed)?;
    if survey.local().is_empty() {
        return Ok(());
    }
    if json {
        eprint!("{}", survey.plan());
        Ok(())
    } else {
        super::emit(&survey.plan())
    }
}
