//! `ragspool migrate`: create or upgrade the schema, and the premake window.

use crate::cli::Args;
use crate::config::Config;
use crate::db::Db;
use crate::error::{Outcome, Result};
use crate::partition;
use crate::schema::{self, Names};
use std::collections::BTreeSet;

pub(crate) fn run(config: &Config, _args: &Args) -> Result<Outcome> {
    let db = Db::from_config(config)?;
    let mut client = db.connect()?;
    let names = Names::new(&config.table);
    let (before, after) = schema::migrate(&mut client, &names)?;
    let today = time::OffsetDateTime::now_utc().date();
    let window: BTreeSet<time::Date> = (0..=i64::from(config.partition_premake_days))
        .map(|d| today + time::Duration::days(d))
        .collect();
    let created = match partition::manager(&mut client, &names)? {
        partition::Manager::Native => partition::create_days(&mut client, &names, &window)?,
        partition::Manager::Partman { .. } => 0,
    };
    let verb = if before == after {
        "is already at"
    } else {
        "migrated to"
    };
    let message = format!(
        "schema for {} {verb} version {after}; {created} daily partition(s) created\n",
        names.table
    );
    log::info!("{}", message.trim_end());
    super::emit(&message)?;
    Ok(Outcome::Clean)
}
