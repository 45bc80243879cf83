//! `ragspool maintain`: partition maintenance for cron or the systemd timer.

use crate::cli::Args;
use crate::config::Config;
use crate::db::Db;
use crate::error::{Outcome, Result};
use crate::failure_log::Entry;
use crate::host::host_name;
use crate::maintenance::{self, Report, Settings};
use crate::notify::alert::AlertKind;
use crate::notify::gate::Notifier;
use crate::schema::{self, Names};

pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let db = Db::from_config(config)?;
    let names = Names::from_config(config);
    let mut client = db.connect()?;
    schema::require_current(&mut client, &names)?;
    let settings = Settings {
        premake_days: config.partition_premake_days,
        retention_days: config.partition_retention_days,
        drop: config.partition_drop,
        dry_run: args.has("dry-run"),
        host: host_name(),
    };
    let report = maintenance::run(&mut client, &names, &settings)?;
    if args.has("json") {
        super::emit_json(&json_report(&report, &names, &settings))?;
    } else {
        super::emit(&report.describe(&names, &settings))?;
    }
    if settings.dry_run || report.outcome == "skipped" {
        return Ok(Outcome::Clean);
    }
    let stalled = report.outcome == "stalled";
    if stalled {
        log::warn!(
            "maintenance of {} stalled: {} partition(s) missing, none created{}",
            names.table,
            report.missing.len(),
            report
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        let streak = maintenance::stall_streak(&mut client, &names)?;
        if streak == config.maintenance_alert_after {
            alert(config, &names, &report, streak, &settings.host)?;
        }
    } else {
        log::info!(
            "maintenance of {}: created {} partition(s)",
            names.table,
            report.created
        );
    }
    crate::gauges::write_configured(config);
    Ok(Outcome::failed_if(stalled))
}

/// The run as one JSON object (README, `maintain --json`).
fn json_report(r: &Report, names: &Names, s: &Settings) -> serde_json::Value {
    let missing: std::collections::BTreeSet<String> =
        r.missing.iter().map(|d| names.partition(*d)).collect();
    serde_json::json!({
        "table": names.table,
        "mode": r.mode,
        "dry_run": s.dry_run,
        "window": r.window.map(|(a, b)| [a.to_string(), b.to_string()]),
        "missing": missing,
        "created": r.created,
        "retired": r.retired,
        "retired_by": if s.drop { "drop" } else { "detach" },
        "indexed": r
            .indexed
            .iter()
            .map(|(index, partition)| serde_json::json!({"partition": partition, "index": index.method()}))
            .collect::<Vec<_>>(),
        "outcome": r.outcome,
        "error": r.error,
        "warnings": r.warnings,
    })
}

/// maintenance.alert and a failure-log record, once per stall streak.
fn alert(config: &Config, names: &Names, r: &Report, streak: u32, host: &str) -> Result<()> {
    let detail = format!(
        "{streak} consecutive maintenance runs of {} expected partitions and created none{}",
        names.table,
        r.error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    let failure_log = crate::failure_log::shared(&config.failure_log)?;
    failure_log.append(Entry {
        ts: crate::clock::now_rfc3339(),
        batch_tag: String::new(),
        file: names.table.clone(),
        reason: "maintenance_stalled".into(),
        healed: false,
        detail: detail.clone(),
        attempt: streak,
        host: host.to_string(),
        prev: String::new(),
    })?;
    let notifier = Notifier::new(config, Some(failure_log), host)?;
    notifier.alert(
        AlertKind::Maintenance,
        "",
        "partition_missing",
        false,
        &detail,
    )?;
    notifier.flush()?;
    Ok(())
}
