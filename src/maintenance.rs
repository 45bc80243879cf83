//! Partition maintenance runs (SPEC §7) as ragspool_maintenance_runs records them.

use crate::db;
use crate::error::Result;
use crate::schema::Names;
use postgres::GenericClient;

/// One recorded maintenance run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Run {
    /// pg_partman or native.
    pub(crate) mode: String,
    /// Partitions missing from the window before the run.
    pub(crate) expected: i32,
    /// Partitions the run created.
    pub(crate) created_partitions: i32,
    /// ok, stalled, skipped, error, dry_run.
    pub(crate) outcome: String,
    /// What happened.
    pub(crate) detail: Option<String>,
    /// When it finished (RFC 3339 UTC).
    pub(crate) finished_at: Option<String>,
}

/// The most recent run, if any.
pub(crate) fn last_run(client: &mut impl GenericClient, names: &Names) -> Result<Option<Run>> {
    let sql = format!(
        "SELECT mode, expected, created_partitions, outcome, detail, \
         to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
         FROM {} ORDER BY id DESC LIMIT 1",
        names.maintenance_runs
    );
    let row = client
        .query_opt(&sql, &[])
        .map_err(|e| db::classify(e, "reading the last maintenance run"))?;
    Ok(row.map(|r| Run {
        mode: r.get(0),
        expected: r.get(1),
        created_partitions: r.get(2),
        outcome: r.get(3),
        detail: r.get(4),
        finished_at: r.get(5),
    }))
}

use crate::partition::{self, Manager};
use crate::storage::PartitionIndex;
use std::collections::BTreeSet;
use time::{Date, Duration, OffsetDateTime};

/// What maintenance is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// PARTITION_PREMAKE_DAYS.
    pub(crate) premake_days: u32,
    /// PARTITION_RETENTION_DAYS.
    pub(crate) retention_days: Option<u32>,
    /// PARTITION_DROP.
    pub(crate) drop: bool,
    /// Show, change nothing.
    pub(crate) dry_run: bool,
    /// This host.
    pub(crate) host: String,
}

/// What one run found and did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    /// pg_partman or native.
    pub(crate) mode: String,
    /// The premake window, first and last day.
    pub(crate) window: Option<(Date, Date)>,
    /// Days of the window missing before the run.
    pub(crate) missing: Vec<Date>,
    /// Partitions created (pg_inherits after − before).
    pub(crate) created: i64,
    /// Partitions detached or dropped by retention.
    pub(crate) retired: Vec<String>,
    /// Indexes built on partitions (or that would be, in a dry run).
    pub(crate) indexed: Vec<(PartitionIndex, String)>,
    /// ok, stalled, skipped or dry_run.
    pub(crate) outcome: String,
    /// Warnings worth an operator's eye (default partition, short window).
    pub(crate) warnings: Vec<String>,
    /// Why the run stalled, if it did.
    pub(crate) error: Option<String>,
}

/// The session advisory lock `maintain` holds while it creates and retires
/// partitions; self-heal takes the same key per transaction, so the two never
/// ATTACH at once.
fn try_lock(client: &mut postgres::Client, names: &Names, lock: bool) -> Result<bool> {
    let (_, key) = partition::lock_sql(names);
    try_key(client, &key, lock)
}

/// The session advisory lock `maintain` holds while it builds indexes: apart from
/// the partitions' lock, so that self-heal is not held up for the length of an
/// HNSW build (minutes on a large partition), and one key still, so that a second
/// run does not take the first one's index, invalid until its build ends, for
/// one an interrupted build left and drop it. Retention takes it too, briefly, so
/// that it never detaches a partition under a build.
fn try_index_lock(client: &mut postgres::Client, names: &Names, lock: bool) -> Result<bool> {
    try_key(client, &format!("ragspool.indexes:{}", names.table), lock)
}

fn try_key(client: &mut postgres::Client, key: &str, lock: bool) -> Result<bool> {
    let sql = if lock {
        "SELECT pg_try_advisory_lock(hashtext($1))"
    } else {
        "SELECT pg_advisory_unlock(hashtext($1))"
    };
    Ok(client
        .query_one(sql, &[&key])
        .map_err(|e| db::classify(e, "taking the maintenance lock"))?
        .get(0))
}

fn child_count(client: &mut impl GenericClient, names: &Names) -> Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass($1)",
            &[&names.table],
        )
        .map_err(|e| db::classify(e, "counting partitions"))?
        .get(0))
}

/// The day the premake window starts from: today, or for pg_partman without
/// infinite_time_partitions, the newest day that holds data (it premakes from there).
fn window_start(client: &mut postgres::Client, names: &Names, manager: &Manager) -> Result<Date> {
    let today = OffsetDateTime::now_utc().date();
    let Manager::Partman { schema, parent } = manager else {
        return Ok(today);
    };
    let infinite: Option<bool> = client
        .query_opt(
            &format!(
                "SELECT infinite_time_partitions FROM {schema}.part_config WHERE parent_table = $1"
            ),
            &[parent],
        )
        .map_err(|e| db::classify(e, "reading pg_partman's part_config"))?
        .map(|r| r.get(0));
    if infinite.unwrap_or(true) {
        return Ok(today);
    }
    let newest: Option<OffsetDateTime> = client
        .query_one(&format!("SELECT max(created_at) FROM {}", names.table), &[])
        .map_err(|e| db::classify(e, "finding the newest row"))?
        .get(0);
    Ok(newest.map_or(today, |t| t.date().min(today)))
}

/// Runs maintenance once (SPEC §7) and records it.
pub(crate) fn run(client: &mut postgres::Client, names: &Names, s: &Settings) -> Result<Report> {
    let manager = partition::manager(client, names)?;
    let mut report = Report {
        mode: match manager {
            Manager::Native => "native".into(),
            Manager::Partman { .. } => "pg_partman".into(),
        },
        ..Report::default()
    };
    if !try_lock(client, names, true)? {
        report.outcome = "skipped".into();
        report
            .warnings
            .push("another maintenance run holds the lock; nothing done".into());
        if !s.dry_run {
            record(client, names, s, &report)?;
        }
        return Ok(report);
    }
    let result = run_locked(client, names, s, &manager, &mut report);
    let _ = try_lock(client, names, false);
    result?;
    if !s.dry_run {
        // The run is recorded whatever the builds did: its partitions were made.
        let built = build_indexes(client, names, &mut report);
        if let Err(e) = &built {
            report.error.get_or_insert_with(|| e.to_string());
        }
        record(client, names, s, &report)?;
        built?;
    }
    Ok(report)
}

/// Builds the indexes sealed partitions wait for, under the index lock alone.
fn build_indexes(client: &mut postgres::Client, names: &Names, report: &mut Report) -> Result<()> {
    if names.storage.indexes().is_empty() {
        return Ok(());
    }
    if !try_index_lock(client, names, true)? {
        report
            .warnings
            .push("another maintenance run is building indexes; this one built none".into());
        return Ok(());
    }
    let built = partition::index_sealed(client, names, false);
    let _ = try_index_lock(client, names, false);
    report.indexed = built?;
    Ok(())
}

fn run_locked(
    client: &mut postgres::Client,
    names: &Names,
    s: &Settings,
    manager: &Manager,
    report: &mut Report,
) -> Result<()> {
    let start = window_start(client, names, manager)?;
    let end = start + Duration::days(i64::from(s.premake_days));
    report.window = Some((start, end));
    let window: BTreeSet<Date> = (0..=i64::from(s.premake_days))
        .map(|d| start + Duration::days(d))
        .collect();
    let (ranges, default) = partition::coverage(client, names)?;
    report.missing = partition::missing(&ranges, window.iter().copied())
        .into_iter()
        .collect();
    warn_about(client, names, &ranges, default, report)?;
    if s.dry_run {
        report.outcome = "dry_run".into();
        report.indexed = partition::index_sealed(client, names, true)?;
        report.retired = retirees(&ranges, names, s)?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        return Ok(());
    }
    let before = child_count(client, names)?;
    // pg_partman does not carry the storage parameter to its partitions: the new
    // ones get it below.
    let children_before = match manager {
        Manager::Partman { .. } => partition::children(client, names)?,
        Manager::Native => BTreeSet::new(),
    };
    let made = match manager {
        Manager::Native => {
            let missing: BTreeSet<Date> = report.missing.iter().copied().collect();
            partition::create_days(client, names, &missing).map(|_| ())
        }
        Manager::Partman { schema, parent } => client
            .execute(
                &format!("SELECT {schema}.run_maintenance(p_parent_table := $1)"),
                &[parent],
            )
            .map(|_| ())
            .map_err(|e| db::classify(e, "running pg_partman's run_maintenance")),
    };
    if let Err(e) = &made {
        if e.class() == crate::error::Class::TempFail {
            return made;
        }
        report.error = Some(e.to_string());
    }
    report.created = child_count(client, names)? - before;
    if let Manager::Partman { .. } = manager {
        let new = partition::children(client, names)?
            .difference(&children_before)
            .cloned()
            .collect();
        partition::set_storage(client, names, &new)?;
    }
    crate::metrics::PARTITIONS_CREATED.add(report.created.max(0) as u64);
    if *manager == Manager::Native {
        report.retired = retire(client, names, &ranges, s)?;
    }
    let (after, _) = partition::coverage(client, names)?;
    let still = partition::missing(&after, window.iter().copied());
    report.outcome = if !report.missing.is_empty() && report.created == 0 && !still.is_empty() {
        "stalled".into()
    } else {
        "ok".into()
    };
    Ok(())
}

/// Warnings: a default partition (rows in it block new partitions) and a premake
/// window that reaches less than a day ahead.
fn warn_about(
    client: &mut postgres::Client,
    names: &Names,
    ranges: &[(Date, Date)],
    default: bool,
    report: &mut Report,
) -> Result<()> {
    if default && let Some(name) = partition::default_partition(client, names)? {
        let rows: bool = client
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {name})"), &[])
            .map_err(|e| db::classify(e, "looking into the default partition"))?
            .get(0);
        report.warnings.push(if rows {
            format!("default partition {name} holds rows: they block creating the partitions they belong in")
        } else {
            format!("default partition {name} exists (empty)")
        });
    }
    let tomorrow = OffsetDateTime::now_utc().date() + Duration::days(1);
    if !ranges
        .iter()
        .any(|(from, to)| *from <= tomorrow && tomorrow < *to)
    {
        report
            .warnings
            .push("the partitions reach less than one day ahead".into());
    }
    Ok(())
}

/// Partitions wholly older than the retention window: (name, range end).
fn retirees(ranges: &[(Date, Date)], names: &Names, s: &Settings) -> Result<Vec<(String, Date)>> {
    let Some(days) = s.retention_days else {
        return Ok(Vec::new());
    };
    let cutoff = OffsetDateTime::now_utc().date() - Duration::days(i64::from(days));
    Ok(ranges
        .iter()
        .filter(|(from, to)| *to <= cutoff && *to - *from == Duration::days(1))
        .map(|(from, to)| (names.partition(*from), *to))
        .collect())
}

/// Detaches (or drops, with PARTITION_DROP) partitions past retention.
fn retire(
    client: &mut postgres::Client,
    names: &Names,
    ranges: &[(Date, Date)],
    s: &Settings,
) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let due = retirees(ranges, names, s)?;
    if due.is_empty() {
        return Ok(done);
    }
    // Not while another run builds indexes: a DETACH would wait on the build's
    // lock while holding the table's, and so hold up every ingest meanwhile.
    if !try_index_lock(client, names, true)? {
        log::warn!(
            "retention: another maintenance run is building indexes; {} partition(s) wait for the next run",
            due.len()
        );
        return Ok(done);
    }
    for (part, _) in due {
        let mut sql = vec![format!(
            "ALTER TABLE {} DETACH PARTITION {part}",
            names.table
        )];
        if s.drop {
            sql.push(format!("DROP TABLE {part}"));
        }
        match retire_one(client, &sql) {
            Ok(()) => done.push(part),
            Err(e) => log::warn!("retention: cannot retire {part}: {}", db::describe(&e)),
        }
    }
    let _ = try_index_lock(client, names, false);
    Ok(done)
}

/// One partition's DETACH (and DROP) in one transaction, a statement at a time:
/// a Citus coordinator refuses DDL on a distributed table that shares a query
/// string with other statements.
fn retire_one(client: &mut postgres::Client, sql: &[String]) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    for statement in sql {
        tx.batch_execute(statement)?;
    }
    tx.commit()
}

fn record(client: &mut postgres::Client, names: &Names, s: &Settings, r: &Report) -> Result<()> {
    let mut detail = Vec::new();
    if let Some(e) = &r.error {
        detail.push(e.clone());
    }
    if !r.retired.is_empty() {
        let verb = if s.drop { "dropped" } else { "detached" };
        detail.push(format!("{verb} {}", r.retired.join(", ")));
    }
    detail.extend(r.warnings.iter().cloned());
    let sql = format!(
        "INSERT INTO {} (target_table, mode, expected, created_partitions, outcome, detail, host, finished_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, now())",
        names.maintenance_runs
    );
    let detail = (!detail.is_empty()).then(|| detail.join("; "));
    client
        .execute(
            &sql,
            &[
                &names.table,
                &r.mode,
                &(r.missing.len() as i32),
                &(r.created as i32),
                &r.outcome,
                &detail,
                &s.host,
            ],
        )
        .map(|_| ())
        .map_err(|e| db::classify(e, "recording the maintenance run"))
}

/// Consecutive stalled runs, newest first, skipped runs not counted either way.
pub(crate) fn stall_streak(client: &mut impl GenericClient, names: &Names) -> Result<u32> {
    let rows = client
        .query(
            &format!(
                "SELECT outcome FROM {} WHERE outcome <> 'skipped' ORDER BY id DESC LIMIT 1000",
                names.maintenance_runs
            ),
            &[],
        )
        .map_err(|e| db::classify(e, "reading recent maintenance runs"))?;
    Ok(rows
        .iter()
        .take_while(|r| r.get::<_, String>(0) == "stalled")
        .count() as u32)
}

/// Unix time of the last run that ended ok, for METRICS_FILE.
pub(crate) fn last_success(client: &mut impl GenericClient, names: &Names) -> Result<Option<i64>> {
    let sql = format!(
        "SELECT extract(epoch FROM max(finished_at))::bigint FROM {} WHERE outcome = 'ok'",
        names.maintenance_runs
    );
    Ok(client
        .query_one(&sql, &[])
        .map_err(|e| db::classify(e, "reading the last good maintenance run"))?
        .get(0))
}

impl Report {
    /// The run in a few lines for the operator.
    pub(crate) fn describe(&self, names: &Names, s: &Settings) -> String {
        let r = self;
        let window = r
            .window
            .map(|(a, b)| format!("{a}..{b}"))
            .unwrap_or_else(|| "-".to_string());
        let mut out = format!("maintain {} ({}): window {window}\n", names.table, r.mode);
        let days: Vec<String> = r
            .missing
            .iter()
            .map(|d| names.partition(*d))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if s.dry_run {
            out.push_str(&format!(
                "dry run: would create {} partition(s){}\n",
                days.len(),
                list(&days)
            ));
            if !r.retired.is_empty() {
                let verb = if s.drop { "drop" } else { "detach" };
                out.push_str(&format!("dry run: would {verb}{}\n", list(&r.retired)));
            }
            indexed_lines(&mut out, &r.indexed, "dry run: would build");
        } else {
            out.push_str(&format!(
                "expected {}, created {}, outcome {}\n",
                r.missing.len(),
                r.created,
                r.outcome
            ));
            if !r.retired.is_empty() {
                let verb = if s.drop { "dropped" } else { "detached" };
                out.push_str(&format!("{verb}{}\n", list(&r.retired)));
            }
            indexed_lines(&mut out, &r.indexed, "built");
        }
        if let Some(e) = &r.error {
            out.push_str(&format!("error: {e}\n"));
        }
        for w in &r.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}

/// One line per kind of index built: `<verb> the HNSW index on: a, b`.
fn indexed_lines(out: &mut String, indexed: &[(PartitionIndex, String)], verb: &str) {
    for (kind, parts) in PartitionIndex::grouped(indexed) {
        out.push_str(&format!(
            "{verb} the {} index on: {}\n",
            kind.label(),
            parts.join(", ")
        ));
    }
}

/// `: a, b, c`, or nothing for no items.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!(": {}", items.join(", "))
    }
}
