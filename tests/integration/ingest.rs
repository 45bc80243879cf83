//! migrate and process against a real PostgreSQL (SPEC §3–§5).

use crate::support::http::{HttpServer, Response};
use crate::support::servers::OwnPg;
use crate::support::{Gen, TestEnv, count, pg};
use postgres::fallible_iterator::FallibleIterator;
use rmp::encode as mp;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A value in a hand-built record.
pub(crate) enum Val {
    Str(&'static str),
    UInt(u64),
    Int(i64),
    Bool(bool),
    Float(f64),
    Ts(i64, u32),
    Floats(Vec<f32>),
    LeBin(Vec<f32>),
    Json(serde_json::Value),
}

pub(crate) fn record(fields: &[(&str, Val)]) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = mp::write_map_len(&mut out, fields.len() as u32);
    for (k, v) in fields {
        let _ = mp::write_str(&mut out, k);
        match v {
            Val::Str(s) => {
                let _ = mp::write_str(&mut out, s);
            }
            Val::UInt(n) => {
                let _ = mp::write_uint(&mut out, *n);
            }
            Val::Int(n) => {
                let _ = mp::write_sint(&mut out, *n);
            }
            Val::Bool(b) => {
                let _ = mp::write_bool(&mut out, *b);
            }
            Val::Float(f) => {
                let _ = mp::write_f64(&mut out, *f);
            }
            Val::Ts(secs, nanos) => {
                let _ = mp::write_ext_meta(&mut out, 12, -1);
                out.extend_from_slice(&nanos.to_be_bytes());
                out.extend_from_slice(&secs.to_be_bytes());
            }
            Val::Floats(fs) => {
                let _ = mp::write_array_len(&mut out, fs.len() as u32);
                for f in fs {
                    let _ = mp::write_f32(&mut out, *f);
                }
            }
            Val::LeBin(fs) => {
                let bytes: Vec<u8> = fs.iter().flat_map(|f| f.to_le_bytes()).collect();
                let _ = mp::write_bin(&mut out, &bytes);
            }
            Val::Json(j) => out.extend(rmp_serde::to_vec(j).unwrap_or_default()),
        }
    }
    out
}

/// Drops a file into incoming/ the way producers do (tmp/, then rename).
pub(crate) fn drop_file(env: &TestEnv, name: &str, bytes: &[u8]) {
    let tmp = env.spool_dir("tmp").join(name);
    std::fs::write(&tmp, bytes).expect("write tmp file");
    std::fs::rename(&tmp, env.spool_dir("incoming").join(name)).expect("rename into incoming");
}

/// Drops a file into incoming/ with an mtime `age` in the past, so that claim
/// order (oldest mtime first) is the order of the calls.
pub(crate) fn drop_aged(env: &TestEnv, name: &str, bytes: &[u8], age: u64) {
    drop_file(env, name, bytes);
    let when = SystemTime::now() - Duration::from_secs(age);
    std::fs::File::options()
        .write(true)
        .open(env.spool_dir("incoming").join(name))
        .and_then(|f| f.set_modified(when))
        .expect("set mtime");
}

pub(crate) fn today_noonish() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    now - now % 86_400 + 60
}

/// doc_id, chunk_index, content, embedding, metadata, source, created_at (epoch), batch_tag.
type Row = (
    String,
    i32,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    f64,
    String,
);

#[test]
fn rows_land_with_exact_values() {
    let env = TestEnv::new().with_db();
    env.ready();
    let t = today_noonish();
    let a = record(&[
        ("doc_id", Val::Str("doc-ü")),
        ("chunk_index", Val::UInt(0)),
        ("content", Val::Str("héllo 東京 \"quoted\"")),
        ("embedding", Val::Floats(vec![0.5, -1.25])),
        (
            "metadata",
            Val::Json(serde_json::json!({"lang": "de", "n": [1, 2.5], "deep": {"x": null}})),
        ),
        ("source", Val::Str("wiki/Zürich")),
        ("created_at", Val::Ts(t, 250_000_000)),
        ("ignored", Val::Str("unknown keys are ignored")),
    ]);
    let b = record(&[
        ("doc_id", Val::Str("doc-b")),
        ("chunk_index", Val::UInt(7)),
        ("content", Val::Str("no optional fields")),
    ]);
    let c = record(&[
        ("doc_id", Val::Str("doc-c")),
        ("chunk_index", Val::UInt(1)),
        ("content", Val::Str("c")),
        ("embedding", Val::LeBin(vec![1.5, 2.0, -3.0])),
        ("created_at", Val::UInt(t as u64 + 1)),
    ]);
    let d = record(&[
        ("doc_id", Val::Str("doc-d")),
        ("chunk_index", Val::UInt(2)),
        ("content", Val::Str("d")),
        ("created_at", Val::Float(t as f64 + 2.5)),
    ]);
    let stamp = time_text(t + 3);
    let e = record(&[
        ("doc_id", Val::Str("doc-e")),
        ("chunk_index", Val::UInt(3)),
        ("content", Val::Str("e")),
        ("created_at", Val::Str(Box::leak(stamp.into_boxed_str()))),
    ]);
    drop_file(&env, "stream.msgpack", &[a, b].concat());
    let mut array = Vec::new();
    let _ = mp::write_array_len(&mut array, 3);
    array.extend([c, d, e].concat());
    drop_file(&env, "array.msgpack", &array);
    drop_file(&env, "empty-array.msgpack", &[0x90]);
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    env.run(&["process"])
        .output()
        .code(0)
        .stdout_has("3 file(s) ingested, 0 failed, 5 row(s)");
    let mut client = pg(&env.db_url());
    let rows = client
        .query(
            "SELECT doc_id, chunk_index, content, embedding::text, metadata::text, source, \
             extract(epoch from created_at)::float8, batch_tag FROM rag_chunks ORDER BY doc_id",
            &[],
        )
        .expect("query rows");
    assert_eq!(rows.len(), 5);
    let get = |i: usize| -> Row {
        let r = &rows[i];
        (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
            r.get(7),
        )
    };
    let (doc, chunk, content, emb, meta, source, created, tag) = get(4);
    assert_eq!(
        (doc.as_str(), chunk, content.as_str()),
        ("doc-ü", 0, "héllo 東京 \"quoted\"")
    );
    assert_eq!(emb.as_deref(), Some("{0.5,-1.25}"));
    let meta: serde_json::Value =
        serde_json::from_str(&meta.unwrap_or_default()).unwrap_or_default();
    assert_eq!(
        meta,
        serde_json::json!({"lang": "de", "n": [1, 2.5], "deep": {"x": null}})
    );
    assert_eq!(source.as_deref(), Some("wiki/Zürich"));
    assert!((created - (t as f64 + 0.25)).abs() < 1e-6, "{created}");
    assert_eq!(tag.len(), 25);
    let (_, _, _, emb, meta, source, created, _) = get(0);
    assert_eq!((emb, meta, source), (None, None, None));
    assert!(
        created >= before - 1.0,
        "missing created_at means ingest time"
    );
    assert_eq!(get(1).3.as_deref(), Some("{1.5,2,-3}"));
    assert!((get(1).6 - (t as f64 + 1.0)).abs() < 1e-6);
    assert!((get(2).6 - (t as f64 + 2.5)).abs() < 1e-6);
    assert!((get(3).6 - (t as f64 + 3.0)).abs() < 1e-6);
    let manifest = client
        .query("SELECT file_name, status, rows, length(sha256), bytes FROM ragspool_manifest ORDER BY file_name", &[])
        .expect("manifest");
    let summary: Vec<(String, String, i64, i32)> = manifest
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("array.msgpack".into(), "done".into(), 3, 64),
            ("empty-array.msgpack".into(), "done".into(), 0, 64),
            ("stream.msgpack".into(), "done".into(), 2, 64),
        ]
    );
    assert_eq!(env.count_files("archive", ".msgpack"), 3);
    assert!(env.files_in("incoming").is_empty() && env.files_in("processing").is_empty());
}

fn time_text(secs: i64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Files several times a worker's 16 MiB window are read window by window: every
/// row lands once, and two workers on two such files stay far below the files' size.
#[test]
fn large_files_are_ingested_in_bounded_memory() {
    let mut env = TestEnv::new().with_db();
    env.set("WORKERS", "2");
    env.set("EMBED_DIM", "16");
    // Both files in one batch, so that both workers hold one at the same time.
    env.set("BATCH_MAX_BYTES", "1000000000");
    env.ready();
    env.generate_with(Gen {
        files: 2,
        records: 80_000,
        dim: Some(16),
        days: Some(1),
        ..Gen::default()
    });
    let bytes: u64 = env
        .files_in("incoming")
        .iter()
        .filter_map(|f| std::fs::metadata(env.spool_dir("incoming").join(f)).ok())
        .map(|m| m.len())
        .sum();
    assert!(
        bytes > 140 << 20,
        "the files are {bytes} bytes, expected over 140 MiB"
    );
    let (code, peak) = env
        .run(&["process"])
        .timeout(Duration::from_secs(300))
        .peak_rss();
    assert_eq!(code, Some(0));
    assert_eq!(
        count(&env.db_url(), "SELECT count(*) FROM rag_chunks"),
        160_000
    );
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(DISTINCT (doc_id, chunk_index)) FROM rag_chunks"
        ),
        160_000
    );
    // Two windows of 16 MiB, two COPY buffers, the per-document bookkeeping of
    // 160,000 documents and the process itself (72 MiB measured); holding the files
    // whole took 188 MiB.
    assert!(
        peak < 110.0,
        "peak RSS {peak:.1} MiB for {} MiB of files",
        bytes >> 20
    );
}

#[test]
fn duplicates_are_archived_without_rows() {
    let env = TestEnv::new().with_db();
    env.ready();
    env.generate_with(Gen {
        files: 2,
        records: 20,
        seed: Some(5),
        ..Gen::default()
    });
    env.run(&["process"]).output().code(0);
    // A producer sends the same files again under other names.
    for (i, path) in env
        .listing()
        .iter()
        .filter(|p| p.starts_with("archive/"))
        .enumerate()
    {
        let bytes = std::fs::read(env.spool().join(path)).unwrap_or_default();
        drop_file(&env, &format!("again-{i}.msgpack"), &bytes);
    }
    env.run(&["process"])
        .output()
        .code(0)
        .stdout_has("2 file(s) ingested, 0 failed, 0 row(s)");
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 40);
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(*) FROM ragspool_manifest WHERE duplicate"
        ),
        2
    );
    assert_eq!(env.count_files("archive", ".msgpack"), 4);
}

/// Files that only add rows go in several to a transaction, each still exactly
/// once: its own manifest row, and its rows and lineage rows at its own claim
/// sequence.
#[test]
fn files_that_only_add_rows_go_in_together_each_exactly_once() {
    let mut env = TestEnv::new().with_db();
    env.set("WORKERS", "1");
    env.ready();
    env.generate_with(Gen {
        files: 6,
        records: 20,
        seed: Some(11),
        days: Some(1),
        ..Gen::default()
    });
    env.run(&["process"])
        .output()
        .code(0)
        .stdout_has("6 file(s) ingested, 0 failed, 120 row(s)");
    let url = env.db_url();
    assert_went_in_together(&url);
    let q = "SELECT count(*) FROM ragspool_manifest WHERE status = 'done' AND rows = 20 AND deleted = 0";
    assert_eq!(count(&url, q), 6);
    let q = "SELECT count(*) FROM rag_chunks c JOIN ragspool_manifest m \
             ON m.seq = c.ragspool_seq AND m.batch_tag = c.batch_tag";
    assert_eq!(count(&url, q), 120);
}

/// One transaction wrote every `done` manifest row, and each file has one lineage
/// row per document at its own claim sequence.
#[track_caller]
pub(crate) fn assert_went_in_together(url: &str) {
    let q = "SELECT count(DISTINCT xmin::text) FROM ragspool_manifest WHERE status = 'done'";
    assert_eq!(count(url, q), 1, "one transaction");
    let q = "SELECT count(*) FROM ragspool_doc_events e JOIN ragspool_manifest m \
             ON m.seq = e.seq AND m.file_name = e.file_name AND m.sha256 = e.sha256 \
             AND m.batch_tag = e.batch_tag WHERE e.action = 'upsert' AND e.rows_removed = 0";
    let per_file = "SELECT count(*) FROM (SELECT DISTINCT doc_id, ragspool_seq FROM rag_chunks) d";
    assert_eq!(count(url, q), count(url, per_file));
}

/// Files that go in together and need partitions that do not exist yet get them
/// (self-heal, as each file alone would) and still go in together; each file that
/// brought a missing day is recorded as healed.
#[test]
fn files_that_go_in_together_heal_the_partitions_they_need() {
    let mut env = TestEnv::new().with_db();
    env.set("WORKERS", "1");
    env.ready();
    env.generate_with(Gen {
        files: 4,
        records: 40,
        seed: Some(12),
        days: Some(5),
        ..Gen::default()
    });
    let out = env.run(&["process"]).output().code(0);
    assert!(
        out.stderr.contains("reason=healed_partition healed=true"),
        "{}",
        out.stderr
    );
    let url = env.db_url();
    assert_eq!(count(&url, "SELECT count(*) FROM rag_chunks"), 160);
    assert_went_in_together(&url);
    let healed = count(
        &url,
        "SELECT count(*) FROM ragspool_manifest WHERE healed AND status = 'done'",
    );
    assert!((1..=4).contains(&healed), "{healed} files healed");
}

/// Files that cannot go in with others go in one at a time, in claim order: a
/// copy of another file's content (the later-claimed one is the duplicate) and a
/// file whose delete record removes an earlier file's document.
#[test]
fn files_that_cannot_go_in_together_go_in_alone_in_claim_order() {
    let mut env = TestEnv::new().with_db();
    env.set("WORKERS", "1");
    env.ready();
    let chunk = |doc: &'static str| {
        record(&[
            ("doc_id", Val::Str(doc)),
            ("chunk_index", Val::UInt(0)),
            ("content", Val::Str("text")),
        ])
    };
    let delete = record(&[("doc_id", Val::Str("A")), ("delete", Val::Bool(true))]);
    drop_aged(&env, "1-a.msgpack", &chunk("A"), 50);
    drop_aged(&env, "2-c.msgpack", &chunk("C"), 40);
    drop_aged(&env, "3-c-again.msgpack", &chunk("C"), 30);
    drop_aged(&env, "4-delete-a.msgpack", &delete, 20);
    drop_aged(&env, "5-b.msgpack", &chunk("B"), 10);
    env.run(&["process"])
        .output()
        .code(0)
        .stdout_has("5 file(s) ingested, 0 failed, 3 row(s)");
    let url = env.db_url();
    let docs = "SELECT string_agg(doc_id, ',' ORDER BY doc_id) FROM rag_chunks";
    let got: String = pg(&url)
        .query_one(docs, &[])
        .map(|r| r.get(0))
        .unwrap_or_default();
    assert_eq!(got, "B,C");
    let q = "SELECT count(*) FROM ragspool_manifest WHERE duplicate AND file_name = '3-c-again.msgpack'";
    assert_eq!(count(&url, q), 1);
    let q = "SELECT count(*) FROM ragspool_manifest WHERE file_name = '4-delete-a.msgpack' AND deleted = 1";
    assert_eq!(count(&url, q), 1);
    // The delete's lineage row comes after the file whose row it removed.
    let q =
        "SELECT string_agg(action, ',' ORDER BY seq) FROM ragspool_doc_events WHERE doc_id = 'A'";
    let got: String = pg(&url)
        .query_one(q, &[])
        .map(|r| r.get(0))
        .unwrap_or_default();
    assert_eq!(got, "upsert,delete");
    // A content an earlier batch ingested, beside one never seen: the manifest
    // knows the first, and the two go in one at a time.
    drop_aged(&env, "6-b-again.msgpack", &chunk("B"), 10);
    drop_aged(&env, "7-d.msgpack", &chunk("D"), 5);
    env.run(&["process"])
        .output()
        .code(0)
        .stdout_has("2 file(s) ingested, 0 failed, 1 row(s)");
    let q = "SELECT count(*) FROM ragspool_manifest WHERE duplicate AND file_name = '6-b-again.msgpack'";
    assert_eq!(count(&url, q), 1);
    assert_eq!(count(&url, "SELECT count(*) FROM rag_chunks"), 3);
}

#[test]
fn bad_files_are_quarantined_while_batch_mates_land() {
    let env = TestEnv::new().with_db();
    env.ready();
    env.generate_with(Gen {
        files: 3,
        records: 10,
        bad: Some(7),
        ..Gen::default()
    });
    env.run(&["process"])
        .output()
        .code(1)
        .stdout_has("3 file(s) ingested, 7 failed, 30 row(s)");
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 30);
    assert_eq!(env.count_files("failed", ".msgpack"), 7);
    assert_eq!(env.count_files("failed", ".reason.json"), 7);
    let reason_path = env
        .listing()
        .into_iter()
        .find(|p| p.contains("huge-length") && p.ends_with(".reason.json"))
        .expect("reason file");
    let reason: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.spool().join(&reason_path)).unwrap_or_default(),
    )
    .unwrap_or_default();
    let keys: Vec<&str> = reason
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(keys, vec!["file", "error", "record_index", "byte_offset"]);
    assert_eq!(reason["record_index"], 0);
    assert!(
        reason["file"]
            .as_str()
            .unwrap_or_default()
            .ends_with("huge-length.msgpack")
    );
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(*) FROM ragspool_manifest WHERE status = 'failed' AND reason = 'failed'"
        ),
        7
    );
}

#[test]
fn missing_partitions_are_healed_within_bounds() {
    let env = TestEnv::new().with_db();
    env.ready();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let old = record(&[
        ("doc_id", Val::Str("old")),
        ("chunk_index", Val::UInt(0)),
        ("content", Val::Str("ten days ago")),
        ("created_at", Val::UInt(now - 10 * 86_400)),
    ]);
    drop_file(&env, "old.msgpack", &old);
    let out = env.run(&["process"]).output().code(0);
    assert!(
        out.stderr.contains("reason=healed_partition healed=true"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 1);
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(*) FROM ragspool_manifest WHERE healed AND status = 'done'"
        ),
        1
    );
    let far = record(&[
        ("doc_id", Val::Str("far")),
        ("chunk_index", Val::UInt(0)),
        ("content", Val::Str("far future")),
        ("created_at", Val::UInt(now + 400 * 86_400)),
    ]);
    drop_file(&env, "far.msgpack", &far);
    let out = env.run(&["process"]).output().code(1);
    assert!(
        out.stderr.contains("reason=partition_missing"),
        "{}",
        out.stderr
    );
    let partitions = count(
        &env.db_url(),
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'rag_chunks'::regclass",
    );
    assert_eq!(
        partitions, 6,
        "premake window of 5 plus one healed day, nothing for the far day"
    );
    assert_eq!(env.count_files("failed", ".msgpack"), 1);
}

#[test]
fn manifest_changes_are_notified() {
    let env = TestEnv::new().with_db();
    env.ready();
    let mut listener = pg(&env.db_url());
    listener
        .batch_execute("LISTEN ragspool_manifest")
        .expect("listen");
    env.generate_with(Gen {
        files: 2,
        records: 5,
        ..Gen::default()
    });
    env.run(&["process"]).output().code(0);
    let mut seen = Vec::new();
    let mut notes = listener.notifications();
    let mut it = notes.timeout_iter(Duration::from_secs(5));
    while let Ok(Some(n)) = it.next() {
        seen.push(serde_json::from_str::<serde_json::Value>(n.payload()).unwrap_or_default());
        if seen.iter().filter(|v| v["status"] == "done").count() == 2 {
            break;
        }
    }
    assert!(seen.iter().any(|v| v["status"] == "open"), "{seen:?}");
    let done: Vec<_> = seen.iter().filter(|v| v["status"] == "done").collect();
    assert_eq!(done.len(), 2, "{seen:?}");
    assert_eq!(done[0]["rows"], 5);
}

#[test]
fn migrate_is_idempotent_and_old_schemas_are_refused() {
    let env = TestEnv::new().with_db();
    env.run(&["init"]).output().code(0);
    env.run(&["process"])
        .output()
        .code(78)
        .stderr_has("run `ragspool migrate`");
    env.run(&["migrate"])
        .output()
        .code(0)
        .stdout_has("migrated to version 4");
    env.run(&["migrate"])
        .output()
        .code(0)
        .stdout_has("already at version 4");
    let mut c = pg(&env.db_url());
    // A database a version-2 build migrated is brought to version 4.
    c.batch_execute("DELETE FROM ragspool_schema_version WHERE version >= 3")
        .expect("back to version 2");
    env.run(&["migrate"])
        .output()
        .code(0)
        .stdout_has("migrated to version 4");
    c.batch_execute("DELETE FROM ragspool_schema_version")
        .expect("downgrade");
    env.run(&["process"])
        .output()
        .code(78)
        .stderr_has("version 0");
    env.run(&["process"])
        .env_remove("DATABASE_URL")
        .output()
        .code(78)
        .stderr_has("`DATABASE_URL`");
}

#[test]
fn schema_qualified_table_works() {
    let mut env = TestEnv::new().with_db();
    env.set("RAGSPOOL_TABLE", "rag.chunks");
    env.ready();
    env.generate(1, 10, 0);
    env.run(&["process"]).output().code(0);
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag.chunks"), 10);
    assert_eq!(
        count(&env.db_url(), "SELECT count(*) FROM rag.ragspool_manifest"),
        1
    );
}

#[test]
fn embeddings_are_fetched_for_records_without_one() {
    let server = HttpServer::start(|req, i| {
        if i == 0 {
            return Response::status(503);
        }
        let inputs = req.json()["input"].as_array().cloned().unwrap_or_default();
        let data: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| serde_json::json!({"index": i, "embedding": [t.as_str().map_or(0, str::len) as f64, 1.0, 2.0, 3.0]}))
            .collect();
        Response::json(200, &serde_json::json!({"data": data, "model": "m"}))
    });
    let mut env = TestEnv::new().with_db();
    env.set("EMBED_BASE_URL", format!("{}/v1", server.url));
    env.set("EMBED_MODEL", "test-embed");
    env.set("EMBED_API_KEY", "sk-test-key");
    env.set("EMBED_DIM", "4");
    env.ready();
    env.generate_with(Gen {
        files: 1,
        records: 100,
        dim: Some(0),
        days: Some(1),
        ..Gen::default()
    });
    env.run(&["process"]).output().code(0);
    let url = env.db_url();
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM rag_chunks WHERE array_length(embedding, 1) = 4"
        ),
        100
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM rag_chunks WHERE embedding[1] = octet_length(content)"
        ),
        100
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3, "one 503, then two batches of at most 64");
    assert!(
        reqs.iter()
            .all(|r| r.path == "/v1/embeddings" && r.method == "POST")
    );
    assert!(
        reqs.iter()
            .all(|r| r.header("authorization") == Some("Bearer sk-test-key"))
    );
    assert_eq!(reqs[1].json()["model"], "test-embed");
}

#[test]
fn two_processes_on_one_spool_duplicate_nothing() {
    let env = TestEnv::new().with_db();
    env.ready();
    env.generate(30, 20, 0);
    let a = env.run(&["process"]).env("BATCH_MAX_FILES", "3").spawn();
    let b = env.run(&["process"]).env("BATCH_MAX_FILES", "3").spawn();
    for mut child in [a, b] {
        let (status, _, err) =
            crate::support::wait_with_deadline(&mut child, Duration::from_secs(120));
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{err}");
    }
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 600);
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(DISTINCT (doc_id, chunk_index)) FROM rag_chunks"
        ),
        600
    );
    assert_eq!(env.count_files("archive", ".msgpack"), 30);
}

#[test]
fn sigkill_at_random_points_loses_and_duplicates_nothing() {
    let env = TestEnv::new().with_db();
    env.ready();
    env.generate(40, 50, 0);
    let mut seed = crate::support::test_seed("sigkill_at_random_points");
    let mut mid_batch = 0;
    for round in 0..12 {
        let mut child = env.run(&["process"]).env("BATCH_MAX_FILES", "4").spawn();
        // Every other kill waits for a batch in flight first, so that a loaded
        // machine, slow to start the process, still gets kills mid-batch.
        if round % 2 == 0 {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !crate::support::batch_in_flight(&env)
                && matches!(child.try_wait(), Ok(None))
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let r = crate::support::next_random(&mut seed);
        let pause = if round % 2 == 0 { r % 30 } else { 20 + r % 250 };
        std::thread::sleep(Duration::from_millis(pause));
        if crate::support::batch_in_flight(&env) {
            mid_batch += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    eprintln!("{mid_batch} of 12 kills landed while a batch was in processing/");
    assert!(mid_batch > 0, "no kill landed mid-batch");
    env.run(&["process"]).output().code(0);
    // The manifest agrees: every file done once, its rows counted once.
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT coalesce(sum(rows), 0)::bigint FROM ragspool_manifest WHERE status = 'done'"
        ),
        2000
    );
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(*) FROM ragspool_manifest WHERE status = 'done' AND NOT duplicate"
        ),
        40
    );
    assert_eq!(
        count(&env.db_url(), "SELECT count(*) FROM rag_chunks"),
        2000
    );
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(DISTINCT (doc_id, chunk_index)) FROM rag_chunks"
        ),
        2000
    );
    assert_eq!(env.count_files("archive", ".msgpack"), 40);
    assert_eq!(env.files_in("incoming"), Vec::<String>::new());
    // A batch directory a kill left before it got its tag is cleared too.
    assert_eq!(env.files_in("processing"), Vec::<String>::new());
    assert_eq!(env.count_files("failed", ".msgpack"), 0);
}

#[test]
fn an_outage_exits_75_then_a_rerun_ingests_exactly_once() {
    let own = OwnPg::start();
    let env = TestEnv::on_own_pg(&own, "outage", 2);
    env.generate(30, 200, 0);
    let mut child = env
        .run(&["process"])
        .env("BATCH_MAX_FILES", "5")
        .env("WORKERS", "1")
        .spawn();
    std::thread::sleep(Duration::from_millis(300));
    own.stop();
    let (status, _, stderr) =
        crate::support::wait_with_deadline(&mut child, Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(75), "{stderr}");
    assert_eq!(
        env.count_files("failed", ".msgpack"),
        0,
        "an outage never fails files"
    );
    own.restart();
    env.run(&["process"]).output().code(0);
    let url = env.db_url();
    assert_eq!(count(&url, "SELECT count(*) FROM rag_chunks"), 6000);
    assert_eq!(
        count(
            &url,
            "SELECT count(DISTINCT (doc_id, chunk_index)) FROM rag_chunks"
        ),
        6000
    );
    assert_eq!(env.count_files("archive", ".msgpack"), 30);
}

#[test]
fn database_down_from_the_start_exits_75() {
    let own = OwnPg::start();
    let env = TestEnv::on_own_pg(&own, "down", 1);
    env.generate_with(Gen {
        files: 2,
        records: 5,
        ..Gen::default()
    });
    own.stop();
    env.run(&["process"])
        .output()
        .code(75)
        .stderr_has("run again later");
    assert_eq!(env.files_in("incoming").len(), 2);
}
