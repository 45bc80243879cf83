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
    let partitions_unindexed = match client.as_mut() {
        Some(c) if !names.storage.indexes().is_empty() => {
            crate::partition::unindexed(c, &names).ok().map(|waiting| {
                let parts: std::collections::BTreeSet<String> =
                    waiting.into_iter().map(|w| w.partition).collect();
                parts.len()
            })
        }
        _ => None,
    };
    let partitions_ahead_days = client
        .as_mut()
        .and_then(|c| crate::partition::coverage(c, &names).ok())
        .map(|(ranges, _)| days_ahead(&ranges));
    let spool = Spool::new(&config.spool_dir);
    let oldest_waiting_secs = spool.waiting().ok().map(|w| {
        w.iter()
            .filter_map(|f| f.modified.elapsed().ok())
            .map(|d| d.as_secs_f64())
            .fold(0.0, f64::max)
    });
    let build_generation = config.cache().and_then(|c| {
        match crate::cache::Cache::new(c).command(&["GET", crate::cache::GENERATION_KEY]) {
            Ok(crate::cache::Reply::Bulk(Some(b))) => String::from_utf8_lossy(&b).parse().ok(),
            Ok(_) => Some(0),
            Err(_) => None,
        }
    });
    let gauges = Gauges {
        last_maintenance_success,
        partitions_unindexed,
        outbox: crate::notify::gate::outbox_depth(&config.spool_dir),
        oldest_waiting_secs,
        partitions_ahead_days,
        build_generation,
    };
    if let Err(e) = crate::metrics::write(path, &spool, &gauges) {
        log::warn!("cannot write METRICS_FILE `{}`: {e}", path.display());
    }
}

/// Days from today (UTC) covered by `ranges` without a gap: 0 when today has no
/// partition, 1 when only today, and so on.
fn days_ahead(ranges: &[(time::Date, time::Date)]) -> i64 {
    let today = time::OffsetDateTime::now_utc().date();
    let mut day = today;
    while let Some((_, to)) = ranges.iter().find(|(from, to)| *from <= day && day < *to) {
        day = *to;
    }
    (day - today).whole_days()
}
