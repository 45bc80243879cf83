//! The gauges METRICS_FILE shows, read where they live (the database, the spool,
//! the outbox), and the write of the file after a command's work; kept out of
//! metrics.rs so that the counters stay a leaf every module can report to.

use crate::config::Config;
use crate::metrics::Gauges;
use crate::spool::Spool;

/// Writes METRICS_FILE, when set, with gauges read from the database (one
/// attempt; an unreachable database leaves them out rather than delaying).
pub(crate) fn write_configured(config: &Config) {
    let Some(path) = &config.metrics_file else {
        return;
    };
    let names = crate::schema::Names::from_config(config);
    let mut client = crate::db::Db::from_config(config)
        .ok()
        .and_then(|db| db.connect_once().ok());
    let last_maintenance_success = client
        .as_mut()
        .and_then(|c| crate::maintenance::last_success(c, &names).ok().flatten());
    let partitions_unindexed = match (&names.storage.index, client.as_mut()) {
        (Some(_), Some(c)) => crate::partition::unindexed(c, &names).ok().map(|p| p.len()),
        _ => None,
    };
    let gauges = Gauges {
        last_maintenance_success,
        partitions_unindexed,
        outbox: crate::gate::outbox_depth(&config.spool_dir),
    };
    let spool = Spool::new(&config.spool_dir);
    if let Err(e) = crate::metrics::write(path, &spool, &gauges) {
        log::warn!("cannot write METRICS_FILE `{}`: {e}", path.display());
    }
}
