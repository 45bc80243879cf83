//! RAG storage (SPEC §10) on a real PostgreSQL with pgvector: the vector column and
//! its HNSW index, document replace and delete in claim order, month partitions,
//! history without a bound into the past, and the storage parameter.

use crate::ingest::{Val, drop_file, record, today_noonish};
use crate::support::{TestEnv, count, pg};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn vector_env(dim: usize) -> TestEnv {
    let mut env = TestEnv::new().with_db();
    env.set("EMBEDDING_TYPE", "vector");
    env.set("EMBED_DIM", dim.to_string());
    env.ready();
    env
}

fn chunk(doc: &'static str, i: u64, content: &'static str, v: Vec<f32>) -> Vec<u8> {
    record(&[
        ("doc_id", Val::Str(doc)),
        ("chunk_index", Val::UInt(i)),
        ("content", Val::Str(content)),
        ("embedding", Val::Floats(v)),
    ])
}

#[test]
fn vectors_land_in_a_pgvector_column_and_answer_nearest_neighbour_queries() {
    let env = vector_env(3);
    let mut file = chunk("a", 0, "east", vec![1.0, 0.0, 0.0]);
    file.extend(chunk("b", 0, "north", vec![0.0, 1.0, 0.0]));
    file.extend(record(&[
        ("doc_id", Val::Str("c")),
        ("chunk_index", Val::UInt(0)),
        ("content", Val::Str("up, as little-endian bin")),
        ("embedding", Val::LeBin(vec![0.0, 0.25, 1.5])),
    ]));
    drop_file(&env, "good.msgpack", &file);
    drop_file(
        &env,
        "short.msgpack",
        &chunk("d", 0, "two dims", vec![1.0, 2.0]),
    );
    drop_file(
        &env,
        "zero.msgpack",
        &chunk("e", 0, "no direction", vec![0.0, 0.0, 0.0]),
    );
    env.run(&["process"]).output().code(1);
    let mut c = pg(&env.db_url());
    assert_eq!(crate::support::embedding_type(&mut c), "vector(3)");
    let nearest: Vec<String> = c
        .query(
            "SELECT doc_id FROM rag_chunks ORDER BY embedding <=> '[0.9,0.1,0]' LIMIT 3",
            &[],
        )
        .expect("knn")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(nearest, vec!["a", "b", "c"]);
    let exact: String = c
        .query_one(
            "SELECT embedding::text FROM rag_chunks WHERE doc_id = 'c'",
            &[],
        )
        .expect("bin vector")
        .get(0);
    assert_eq!(exact, "[0,0.25,1.5]");
    for (name, needle) in [("short", "EMBED_DIM is 3"), ("zero", "all zeros")] {
        let reason = std::fs::read_to_string(
            env.spool()
                .join("failed")
                .read_dir()
                .expect("failed/")
                .flatten()
                .next()
                .expect("a failed batch")
                .path()
                .join(format!("{name}.msgpack.reason.json")),
        )
        .expect("reason.json");
        let json: serde_json::Value = serde_json::from_str(&reason).expect("json");
        assert_eq!(json["record_index"], 0, "{reason}");
        assert!(
            json["error"].as_str().unwrap_or("").contains(needle),
            "{reason}"
        );
    }
}

/// A 3-dimension vector table whose partitions get HNSW once sealed, at once.
fn sealed_hnsw_env() -> TestEnv {
    let mut env = vector_env(3);
    env.set("VECTOR_INDEX", "hnsw");
    env.set("VECTOR_INDEX_QUIET_SECS", "0");
    env
}

/// Chunk `i` of `doc`, created at `ts`.
fn dated(doc: &'static str, i: u64, ts: i64) -> Vec<u8> {
    record(&[
        ("doc_id", Val::Str(doc)),
        ("chunk_index", Val::UInt(i)),
        ("content", Val::Str("x")),
        ("embedding", Val::Floats(vec![1.0, 2.0, 3.0])),
        ("created_at", Val::UInt(ts as u64)),
    ])
}

/// Valid HNSW indexes on partition `part`.
fn valid_hnsw(url: &str, part: &str) -> i64 {
    crate::support::valid_indexes(url, part, "hnsw")
}

#[test]
fn hnsw_is_built_by_maintain_on_sealed_partitions_and_status_lists_the_rest() {
    let mut env = sealed_hnsw_env();
    let yesterday = today_noonish() - 86_400;
    let mut file = Vec::new();
    for (i, ts) in [yesterday, today_noonish()].into_iter().enumerate() {
        file.extend(dated("d", i as u64, ts));
    }
    drop_file(&env, "two-days.msgpack", &file);
    env.run(&["process"]).output().code(0);
    let sealed = crate::support::partition_of(yesterday);
    env.run(&["status"]).output().code(0).stdout_has(&sealed);
    env.run(&["maintain", "--dry-run"])
        .output()
        .code(0)
        .stdout_has("would build the HNSW index on");
    env.run(&["maintain"])
        .output()
        .code(0)
        .stdout_has(&format!("built the HNSW index on: {sealed}"));
    let url = env.db_url();
    let hnsw = |part: &str| valid_hnsw(&url, part);
    assert_eq!(hnsw(&sealed), 1);
    assert_eq!(
        hnsw(&crate::support::partition_of(today_noonish())),
        0,
        "today's partition stays open"
    );
    // An index a build left invalid is dropped and built again.
    let mut c = pg(&url);
    c.batch_execute(&format!(
        "UPDATE pg_index SET indisvalid = false WHERE indrelid = '{sealed}'::regclass"
    ))
    .expect("invalidate");
    env.run(&["maintain"]).output().code(0);
    assert_eq!(hnsw(&sealed), 1);
    // `always` keeps the index on every partition from its creation.
    env.set("VECTOR_INDEX_BUILD", "always");
    env.run(&["migrate"]).output().code(0);
    assert_eq!(hnsw(&crate::support::partition_of(today_noonish())), 1);
}

#[test]
fn settings_that_cannot_work_together_exit_78_naming_them() {
    let env = TestEnv::new();
    env.run(&["check"])
        .env("EMBEDDING_TYPE", "vector")
        .output()
        .code(78)
        .stderr_has("`EMBEDDING_TYPE` is vector, which needs `EMBED_DIM`");
    env.run(&["check"])
        .env("VECTOR_INDEX", "hnsw")
        .output()
        .code(78)
        .stderr_has("`VECTOR_INDEX`");
    env.run(&["check"])
        .env("EMBEDDING_TYPE", "halfvec")
        .output()
        .code(78)
        .stderr_has("`EMBEDDING_TYPE`");
    // A table whose column disagrees with the settings is refused with the fix.
    let env = TestEnv::new().with_db();
    env.ready();
    env.run(&["process"])
        .env("EMBEDDING_TYPE", "vector")
        .env("EMBED_DIM", "3")
        .output()
        .code(78)
        .stderr_has("ALTER TABLE rag_chunks ALTER COLUMN embedding TYPE vector(3)");
}

/// One file of the ordering test: per document, either the chunks that replace it
/// or a delete record.
pub(crate) type Version = BTreeMap<&'static str, Option<u32>>;

pub(crate) fn write_versions(env: &TestEnv, versions: &[Version]) {
    let base = SystemTime::now() - Duration::from_secs(3600);
    for (i, v) in versions.iter().enumerate() {
        // A delete of a document of its own makes every file's content unique (an
        // identical file would be a duplicate, which changes nothing) and none empty.
        let marker: &'static str = Box::leak(format!("marker-{i}").into_boxed_str());
        let mut bytes = record(&[("doc_id", Val::Str(marker)), ("delete", Val::Bool(true))]);
        for (doc, chunks) in v {
            match chunks {
                None => bytes.extend(record(&[
                    ("doc_id", Val::Str(doc)),
                    ("delete", Val::Bool(true)),
                ])),
                Some(n) => {
                    for c in 0..*n {
                        let content: &'static str = Box::leak(format!("v{i}").into_boxed_str());
                        bytes.extend(record(&[
                            ("doc_id", Val::Str(doc)),
                            ("chunk_index", Val::UInt(u64::from(c))),
                            ("content", Val::Str(content)),
                        ]));
                    }
                }
            }
        }
        // Names in reverse so that only mtime gives the claim order.
        let name = format!("{:03}.msgpack", versions.len() - i);
        let tmp = env.spool_dir("tmp").join(&name);
        std::fs::write(&tmp, &bytes).expect("write");
        let f = std::fs::File::options()
            .write(true)
            .open(&tmp)
            .expect("open");
        f.set_modified(base + Duration::from_millis(i as u64 * 10))
            .expect("mtime");
        std::fs::rename(&tmp, env.spool_dir("incoming").join(&name)).expect("rename");
    }
}

/// The table as applying `versions` one at a time would leave it.
pub(crate) fn expected(versions: &[Version]) -> BTreeMap<String, Vec<(i32, String)>> {
    let mut table: BTreeMap<String, Vec<(i32, String)>> = BTreeMap::new();
    for (i, v) in versions.iter().enumerate() {
        for (doc, chunks) in v {
            table.remove(*doc);
            if let Some(n) = chunks {
                let rows = (0..*n).map(|c| (c as i32, format!("v{i}"))).collect();
                table.insert(doc.to_string(), rows);
            }
        }
    }
    table
}

pub(crate) fn actual(env: &TestEnv) -> BTreeMap<String, Vec<(i32, String)>> {
    let mut table: BTreeMap<String, Vec<(i32, String)>> = BTreeMap::new();
    let mut c = pg(&env.db_url());
    for r in c
        .query(
            "SELECT doc_id, chunk_index, content FROM rag_chunks ORDER BY doc_id, chunk_index",
            &[],
        )
        .expect("rows")
    {
        table
            .entry(r.get(0))
            .or_default()
            .push((r.get(1), r.get(2)));
    }
    table
}

/// Many files updating the same few documents, replaces and deletes mixed.
pub(crate) fn versions(files: usize, seed: u64) -> Vec<Version> {
    let docs = ["alpha", "beta", "gamma", "delta"];
    let mut s = seed | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..files)
        .map(|_| {
            let mut v = Version::new();
            for d in docs {
                match next() % 5 {
                    0 => {
                        v.insert(d, None);
                    }
                    1 | 2 => {
                        v.insert(d, Some(1 + (next() % 4) as u32));
                    }
                    _ => {}
                }
            }
            v
        })
        .collect()
}

#[test]
fn replace_and_delete_end_as_if_applied_one_at_a_time_in_claim_order() {
    let mut env = TestEnv::new().with_db();
    env.set("DOC_MODE", "replace");
    env.set("WORKERS", "4");
    env.set("BATCH_MAX_FILES", "7");
    env.ready();
    let v = versions(60, 0x5eed);
    write_versions(&env, &v);
    env.run(&["process"]).output().code(0);
    assert_eq!(actual(&env), expected(&v));
    let deleted = count(
        &env.db_url(),
        "SELECT coalesce(sum(deleted), 0)::bigint FROM ragspool_manifest",
    );
    assert!(deleted > 0, "replaced and deleted rows are counted");
}

#[test]
fn replace_order_holds_across_sigkills() {
    let mut env = TestEnv::new().with_db();
    env.set("DOC_MODE", "replace");
    env.set("WORKERS", "4");
    env.set("BATCH_MAX_FILES", "5");
    env.ready();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7) as u64;
    let v = versions(80, seed);
    write_versions(&env, &v);
    let mut s = seed;
    for _ in 0..10 {
        s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let mut child = env.run(&["process"]).spawn();
        std::thread::sleep(Duration::from_millis(20 + (s >> 33) % 200));
        let _ = child.kill();
        let _ = child.wait();
    }
    env.run(&["process"]).output().code(0);
    assert_eq!(actual(&env), expected(&v), "seed {seed}");
    assert_eq!(env.count_files("archive", ".msgpack"), 80);
}

#[test]
fn a_delete_record_with_row_fields_fails_its_file_and_append_mode_deletes_too() {
    let env = TestEnv::new().with_db();
    env.ready();
    drop_file(
        &env,
        "a.msgpack",
        &record(&[
            ("doc_id", Val::Str("gone")),
            ("chunk_index", Val::UInt(0)),
            ("content", Val::Str("x")),
        ]),
    );
    env.run(&["process"]).output().code(0);
    drop_file(
        &env,
        "junk.msgpack",
        &record(&[
            ("doc_id", Val::Str("gone")),
            ("delete", Val::Bool(true)),
            ("content", Val::Str("x")),
        ]),
    );
    drop_file(
        &env,
        "del.msgpack",
        &record(&[("doc_id", Val::Str("gone")), ("delete", Val::Bool(true))]),
    );
    env.run(&["process"]).output().code(1);
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 0);
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT deleted FROM ragspool_manifest WHERE file_name = 'del.msgpack'"
        ),
        1
    );
    assert_eq!(env.count_files("failed", ".reason.json"), 1);
}

#[test]
fn history_goes_into_month_partitions_without_a_bound_into_the_past() {
    let mut env = TestEnv::new().with_db();
    env.set("PARTITION_INTERVAL", "month");
    env.ready();
    let old = [
        978_307_200 + 86_400 * 40, // 2001-02-10
        915_148_800,               // 1999-01-01
        1_326_000_000,             // 2012-01-08
    ];
    let mut file = Vec::new();
    for (i, ts) in old.into_iter().enumerate() {
        file.extend(record(&[
            ("doc_id", Val::Str("history")),
            ("chunk_index", Val::UInt(i as u64)),
            ("content", Val::Str("old")),
            ("created_at", Val::UInt(ts)),
        ]));
    }
    drop_file(&env, "history.msgpack", &file);
    env.run(&["process"]).output().code(0);
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 3);
    for part in [
        "rag_chunks_p2001_02",
        "rag_chunks_p1999_01",
        "rag_chunks_p2012_01",
    ] {
        assert_eq!(
            count(
                &env.db_url(),
                &format!(
                    "SELECT count(*) FROM pg_class WHERE relname = '{part}' \
                     AND reloptions @> ARRAY['toast_tuple_target=8160']"
                )
            ),
            1,
            "{part} exists with the storage parameter"
        );
    }
    // Too far ahead fails the file; the past has no bound but the partition count.
    let far = today_noonish() + 86_400 * 40;
    drop_file(
        &env,
        "future.msgpack",
        &record(&[
            ("doc_id", Val::Str("f")),
            ("chunk_index", Val::UInt(0)),
            ("content", Val::Str("x")),
            ("created_at", Val::UInt(far as u64)),
        ]),
    );
    env.run(&["process"])
        .output()
        .code(1)
        .stderr_has("partition_missing");
    let mut decades = Vec::new();
    for (i, year) in (1950..1960).enumerate() {
        let ts = (year - 1970) * 31_557_600;
        decades.extend(record(&[
            ("doc_id", Val::Str("fifties")),
            ("chunk_index", Val::UInt(i as u64)),
            ("content", Val::Str("x")),
            ("created_at", Val::Int(ts)),
        ]));
    }
    drop_file(&env, "fifties.msgpack", &decades);
    env.run(&["process"])
        .env("HEAL_MAX_PARTITIONS", "5")
        .output()
        .code(1)
        .stderr_has("partition_missing");
    env.run(&["maintain"]).output().code(0);
}

#[test]
fn self_heal_does_not_wait_for_an_index_build() {
    let env = sealed_hnsw_env();
    let yesterday = today_noonish() - 86_400;
    drop_file(&env, "yesterday.msgpack", &dated("a", 0, yesterday));
    env.run(&["process"]).output().code(0);
    // A snapshot held open: the concurrent build of yesterday's HNSW index waits
    // for it to end, as it would for a long report.
    let url = env.db_url();
    let mut reader = pg(&url);
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM rag_chunks")
        .expect("hold a snapshot");
    let mut maintain = env
        .run(&["maintain"])
        .env("DB_LOCK_TIMEOUT_MS", "120000")
        .spawn();
    let building = || {
        count(
            &url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' \
             AND query LIKE 'CREATE INDEX CONCURRENTLY%'",
        ) > 0
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !building() {
        assert!(std::time::Instant::now() < deadline, "no index build began");
        assert!(
            matches!(maintain.try_wait(), Ok(None)),
            "maintain ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Meanwhile a file needs a partition nobody made: self-heal makes it now,
    // within a lock wait far shorter than the build.
    let past = today_noonish() - 5 * 86_400;
    drop_file(&env, "older.msgpack", &dated("b", 0, past));
    env.run(&["process"])
        .env("DB_LOCK_TIMEOUT_MS", "2000")
        .env("RETRY_MAX_SECS", "3")
        .output()
        .code(0);
    assert!(building(), "the build ended before the file went in");
    assert_eq!(
        count(&url, "SELECT count(*) FROM rag_chunks WHERE doc_id = 'b'"),
        1
    );
    reader.batch_execute("COMMIT").expect("let the build end");
    let status = maintain.wait().expect("maintain ends");
    assert_eq!(status.code(), Some(0));
    let sealed = crate::support::partition_of(yesterday);
    assert_eq!(valid_hnsw(&url, &sealed), 1);
}
