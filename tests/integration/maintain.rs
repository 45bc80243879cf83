//! `ragspool maintain` (SPEC §7) on a real PostgreSQL, natively and with pg_partman.

use crate::support::http::{HttpServer, Request, Response};
use crate::support::servers::ensure_partman;
use crate::support::{TestEnv, count, pg};

fn runs(env: &TestEnv) -> Vec<(String, String, i32, i32)> {
    pg(&env.db_url())
        .query("SELECT mode, outcome, expected, created_partitions FROM ragspool_maintenance_runs ORDER BY id", &[])
        .expect("runs")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn partitions(env: &TestEnv) -> i64 {
    count(
        &env.db_url(),
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'rag_chunks'::regclass",
    )
}

#[test]
fn native_premake_creates_exactly_the_window_then_nothing() {
    let mut env = TestEnv::new().with_db();
    env.ready();
    assert_eq!(partitions(&env), 5, "migrate makes today..today+4");
    env.set("PARTITION_PREMAKE_DAYS", "7");
    let out = env.run(&["maintain", "--dry-run"]).output().code(0);
    assert!(
        out.stdout.contains("would create 3 partition(s)"),
        "{}",
        out.stdout
    );
    assert_eq!(partitions(&env), 5);
    assert!(runs(&env).is_empty(), "a dry run records nothing");
    env.run(&["maintain"])
        .output()
        .code(0)
        .stdout_has("expected 3, created 3, outcome ok");
    env.run(&["maintain"])
        .output()
        .code(0)
        .stdout_has("expected 0, created 0, outcome ok");
    assert_eq!(partitions(&env), 8);
    assert_eq!(
        runs(&env),
        vec![
            ("native".into(), "ok".into(), 3, 3),
            ("native".into(), "ok".into(), 0, 0)
        ]
    );
    env.run(&["status"])
        .output()
        .code(0)
        .stdout_has("last maintenance: native ok expected=0 created=0");
}

#[test]
fn stalls_alert_once_after_the_configured_count_and_reset() {
    let alerts = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    env.set("ALERT_URL", alerts.url.clone());
    env.set("MAINTENANCE_ALERT_AFTER", "2");
    env.ready();
    env.set("PARTITION_PREMAKE_DAYS", "6");
    let day = |n: i64| {
        let d = time::OffsetDateTime::now_utc().date() + time::Duration::days(n);
        format!(
            "rag_chunks_p{:04}_{:02}_{:02}",
            d.year(),
            u8::from(d.month()),
            d.day()
        )
    };
    // A table of the partition's name but the wrong shape: ATTACH fails every time.
    let block = |on: bool, days: [i64; 2]| {
        let sql = if on {
            format!(
                "CREATE TABLE {} (x int); CREATE TABLE {} (x int)",
                day(days[0]),
                day(days[1])
            )
        } else {
            format!("DROP TABLE {}; DROP TABLE {}", day(days[0]), day(days[1]))
        };
        pg(&env.db_url()).batch_execute(&sql).expect("block");
    };
    let alert_count = || {
        alerts
            .requests()
            .iter()
            .map(Request::json)
            .filter(|a| a["event"] == "maintenance.alert")
            .count()
    };
    block(true, [5, 6]);
    env.run(&["maintain"])
        .output()
        .code(1)
        .stdout_has("outcome stalled");
    assert_eq!(alert_count(), 0);
    env.run(&["maintain"]).output().code(1);
    assert_eq!(alert_count(), 1);
    env.run(&["maintain"]).output().code(1);
    assert_eq!(alert_count(), 1, "once per stall streak");
    block(false, [5, 6]);
    env.run(&["maintain"])
        .output()
        .code(0)
        .stdout_has("created 2");
    // A healthy run reset the streak: a new one alerts again after two stalls.
    block(true, [7, 8]);
    env.set("PARTITION_PREMAKE_DAYS", "8");
    env.run(&["maintain"]).output().code(1);
    assert_eq!(alert_count(), 1);
    env.run(&["maintain"]).output().code(1);
    assert_eq!(alert_count(), 2);
    let a = alerts
        .requests()
        .iter()
        .map(Request::json)
        .find(|a| a["event"] == "maintenance.alert")
        .unwrap_or_default();
    assert_eq!(a["reason"], "partition_missing");
    assert!(
        a["detail"]
            .as_str()
            .is_some_and(|d| d.contains("2 consecutive")),
        "{a}"
    );
    let log =
        std::fs::read_to_string(env.dir.path().join("logs/rag_failures.jsonl")).unwrap_or_default();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("maintenance_stalled"))
            .count(),
        2,
        "{log}"
    );
}

#[test]
fn a_second_concurrent_run_is_skipped_and_recorded() {
    let env = TestEnv::new().with_db();
    env.ready();
    let mut holder = pg(&env.db_url());
    holder
        .execute(
            "SELECT pg_advisory_lock(hashtext('ragspool.partitions:rag_chunks'))",
            &[],
        )
        .expect("take the lock");
    env.run(&["maintain"])
        .output()
        .code(0)
        .stdout_has("another maintenance run holds the lock");
    assert_eq!(
        runs(&env).last().map(|r| r.1.clone()),
        Some("skipped".to_string())
    );
    drop(holder);
    env.run(&["maintain"])
        .output()
        .code(0)
        .stdout_has("outcome ok");
}

#[test]
fn retention_detaches_old_partitions() {
    let mut env = TestEnv::new().with_db();
    env.ready();
    let old = (time::OffsetDateTime::now_utc() - time::Duration::days(20)).unix_timestamp();
    let mut client = pg(&env.db_url());
    let d = time::OffsetDateTime::from_unix_timestamp(old)
        .expect("ts")
        .date();
    let name = format!(
        "rag_chunks_p{:04}_{:02}_{:02}",
        d.year(),
        u8::from(d.month()),
        d.day()
    );
    client
        .batch_execute(&format!(
            "CREATE TABLE {name} PARTITION OF rag_chunks FOR VALUES FROM ('{d} 00:00:00+00') TO ('{} 00:00:00+00')",
            d + time::Duration::days(1)
        ))
        .expect("old partition");
    env.set("PARTITION_RETENTION_DAYS", "10");
    env.run(&["maintain", "--dry-run"])
        .output()
        .code(0)
        .stdout_has(&format!("would detach: {name}"));
    env.run(&["maintain"])
        .output()
        .code(0)
        .stdout_has(&format!("detached: {name}"));
    assert_eq!(partitions(&env), 5);
    assert_eq!(
        count(
            &env.db_url(),
            &format!("SELECT count(*) FROM pg_class WHERE relname = '{name}'")
        ),
        1,
        "detached, not dropped"
    );
}

#[test]
fn pg_partman_maintenance_is_run_and_counted() {
    ensure_partman();
    let env = TestEnv::new().with_db();
    env.ready();
    let mut client = pg(&env.db_url());
    // Hand the table to pg_partman: drop ragspool's own partitions first.
    let parts: Vec<String> = client
        .query("SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'rag_chunks'::regclass", &[])
        .expect("partitions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for p in parts {
        client
            .batch_execute(&format!("DROP TABLE {p}"))
            .expect("drop");
    }
    client
        .batch_execute(
            "CREATE SCHEMA partman; CREATE EXTENSION pg_partman SCHEMA partman;
             SELECT partman.create_parent(p_parent_table => 'public.rag_chunks', p_control => 'created_at',
                    p_type => 'native', p_interval => 'daily', p_premake => 2);
             UPDATE partman.part_config SET premake = 6, infinite_time_partitions = true
              WHERE parent_table = 'public.rag_chunks';",
        )
        .expect("pg_partman setup");
    let before = partitions(&env);
    let out = env.run(&["maintain"]).output().code(0);
    assert!(out.stdout.contains("(pg_partman)"), "{}", out.stdout);
    assert!(
        out.stdout.contains("warning: default partition"),
        "{}",
        out.stdout
    );
    let after = partitions(&env);
    assert!(after > before, "{before} -> {after}");
    let last = runs(&env).pop().expect("a run");
    assert_eq!(
        (last.0.as_str(), last.1.as_str(), i64::from(last.3)),
        ("pg_partman", "ok", after - before)
    );
    env.run(&["maintain"])
        .output()
        .code(0)
        .stdout_has("created 0");
    // Ingest into the pg_partman-managed table.
    env.generate(1, 5, 0);
    env.run(&["process"]).output().code(0);
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 5);
}

#[test]
fn migrate_hands_the_table_to_pg_partman_by_month_and_self_heal_goes_through_it() {
    ensure_partman();
    let mut env = TestEnv::new().with_db();
    env.set("PARTITION_INTERVAL", "month");
    pg(&env.db_url())
        .batch_execute("CREATE SCHEMA partman; CREATE EXTENSION pg_partman SCHEMA partman;")
        .expect("pg_partman");
    env.run(&["init"]).output().code(0);
    env.run(&["migrate"])
        .output()
        .code(0)
        .stdout_has("table handed to pg_partman");
    let interval: String = pg(&env.db_url())
        .query_one(
            "SELECT partition_interval FROM partman.part_config WHERE parent_table = 'public.rag_chunks'",
            &[],
        )
        .expect("part_config")
        .get(0);
    assert!(
        interval.contains("mon") || interval.contains("1 month"),
        "{interval}"
    );
    // A document from 1999 has no partition: self-heal asks pg_partman for it.
    crate::ingest::drop_file(
        &env,
        "old.msgpack",
        &crate::ingest::record(&[
            ("doc_id", crate::ingest::Val::Str("old")),
            ("chunk_index", crate::ingest::Val::UInt(0)),
            ("content", crate::ingest::Val::Str("x")),
            ("created_at", crate::ingest::Val::UInt(915_148_800)),
        ]),
    );
    env.run(&["process"]).output().code(0);
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 1);
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(*) FROM pg_class WHERE relname = 'rag_chunks_p1999_01' \
             AND reloptions @> ARRAY['toast_tuple_target=8160']"
        ),
        1,
        "pg_partman's partition for 1999-01, with the storage parameter"
    );
    env.run(&["maintain"])
        .output()
        .code(0)
        .stdout_has("(pg_partman)");
}
