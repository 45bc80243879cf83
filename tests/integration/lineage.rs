//! Whole documents, lineage and `trace` (SPEC §12) through the real binary.

use crate::ingest::{Val, drop_file, record};
use crate::support::{TestEnv, count, pg};

fn chunk(doc: &'static str, i: u64, n: Option<u64>) -> Vec<u8> {
    let mut fields = vec![
        ("doc_id", Val::Str(doc)),
        ("chunk_index", Val::UInt(i)),
        ("content", Val::Str("text")),
    ];
    if let Some(n) = n {
        fields.push(("chunk_count", Val::UInt(n)));
    }
    record(&fields)
}

#[test]
fn a_truncated_document_fails_its_file_and_its_batch_mates_land() {
    let env = TestEnv::new().with_db();
    env.ready();
    let whole: Vec<u8> = (0..3).flat_map(|i| chunk("whole", i, Some(3))).collect();
    let cut: Vec<u8> = [0, 2, 2]
        .into_iter()
        .flat_map(|i| chunk("cut", i, Some(4)))
        .collect();
    drop_file(&env, "whole.msgpack", &whole);
    drop_file(&env, "cut.msgpack", &cut);
    env.run(&["process"]).output().code(1);
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 3);
    let failed = env
        .listing()
        .into_iter()
        .find(|p| p.ends_with("cut.msgpack.reason.json"))
        .expect("reason.json");
    let reason = std::fs::read_to_string(env.spool().join(failed)).expect("read");
    for needle in [
        "document `cut` declares chunk_count 4",
        "missing chunk_index 1, 3",
        "repeated chunk_index 2",
    ] {
        assert!(reason.contains(needle), "{reason}");
    }
}

fn trace(env: &TestEnv, doc: &str) -> serde_json::Value {
    env.run(&["trace", doc, "--json"]).output().code(0).json()
}

#[test]
fn trace_shows_the_true_history_through_replace_delete_and_recovery() {
    let mut env = TestEnv::new().with_db();
    env.set("DOC_MODE", "replace");
    env.ready();
    let v1: Vec<u8> = (0..3).flat_map(|i| chunk("story", i, None)).collect();
    drop_file(&env, "v1.msgpack", &v1);
    env.run(&["process"]).output().code(0);
    let v2: Vec<u8> = (0..2).flat_map(|i| chunk("story", i, Some(2))).collect();
    drop_file(&env, "v2.msgpack", &v2);
    env.run(&["process"]).output().code(0);
    drop_file(
        &env,
        "gone.msgpack",
        &record(&[("doc_id", Val::Str("story")), ("delete", Val::Bool(true))]),
    );
    env.run(&["process"]).output().code(0);
    let t = trace(&env, "story");
    let steps: Vec<(String, i64, i64, String)> = t["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_string(),
                e["rows_added"].as_i64().unwrap_or(-1),
                e["rows_removed"].as_i64().unwrap_or(-1),
                e["file"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            ("upsert".into(), 3, 0, "v1.msgpack".into()),
            ("upsert".into(), 2, 3, "v2.msgpack".into()),
            ("delete".into(), 0, 2, "gone.msgpack".into()),
        ]
    );
    assert_eq!(t["now"]["rows"], 0, "the deletion stays provable: {t}");
    // A batch a crash left in processing/ is recovered; its file joins the history.
    let tag = "20991231T235959Z-0a1b2c3d";
    let dir = env.spool_dir("processing").join(tag);
    std::fs::create_dir_all(&dir).expect("processing/<tag>");
    std::fs::write(dir.join("v3.msgpack"), chunk("story", 0, Some(1))).expect("v3");
    env.run(&["process"]).output().code(0);
    let t = trace(&env, "story");
    let last = &t["events"][3];
    assert_eq!(
        (
            last["action"].as_str(),
            last["batch_tag"].as_str(),
            last["rows_added"].as_i64()
        ),
        (Some("upsert"), Some(tag), Some(1))
    );
    assert_eq!(t["now"]["rows"], 1);
    assert_eq!(t["now"]["partitions"].as_array().map(Vec::len), Some(1));
    env.run(&["trace", "never-seen"])
        .output()
        .code(1)
        .stdout_has("never seen");
    env.run(&["trace", "story"])
        .output()
        .code(0)
        .stdout_has("delete +0 -2");
}

#[test]
fn trace_reads_only_indexed_paths_on_a_million_rows() {
    let env = TestEnv::new().with_db();
    env.ready();
    let mut c = pg(&env.db_url());
    c.batch_execute(
        "INSERT INTO rag_chunks (doc_id, chunk_index, content, created_at, batch_tag) \
           SELECT 'doc-' || i, 0, 'x', now(), 'b' FROM generate_series(1, 1000000) i;
         INSERT INTO ragspool_doc_events (doc_id, seq, sha256, batch_tag, file_name, action, rows_added, rows_removed) \
           SELECT 'doc-' || i, i, 's', 'b', 'f', 'upsert', 1, 0 FROM generate_series(1, 1000000) i;
         ANALYZE;",
    )
    .expect("a million rows");
    // auto_explain reports every plan of the binary's own queries to it as NOTICEs,
    // which ragspool logs on stderr.
    let db: String = c
        .query_one("SELECT current_database()", &[])
        .expect("db")
        .get(0);
    c.batch_execute(&format!(
        "ALTER DATABASE \"{db}\" SET session_preload_libraries = 'auto_explain';
         ALTER DATABASE \"{db}\" SET auto_explain.log_min_duration = 0;
         ALTER DATABASE \"{db}\" SET auto_explain.log_level = 'notice';"
    ))
    .expect("auto_explain");
    let out = env.run(&["trace", "doc-500000"]).output().code(0);
    assert!(out.stdout.contains("now: 1 row(s)"), "{}", out.stdout);
    let plans = &out.stderr;
    assert!(plans.contains("Index"), "no plan reached stderr: {plans}");
    // Empty partitions (the days ahead) cost nothing to scan; the full one must not be.
    for table in ["rag_chunks", "ragspool_doc_events"] {
        let scans: Vec<&str> = plans
            .lines()
            .filter(|l| l.contains(&format!("Seq Scan on {table}")))
            .filter(|l| !l.contains("cost=0.00..0.00"))
            .collect();
        assert!(scans.is_empty(), "trace scans {table}: {scans:?}");
    }
    assert!(
        plans.contains("Index Scan using ragspool_doc_events_pkey"),
        "{plans}"
    );
    assert!(
        plans.contains("_doc_id_ragspool_seq_idx on rag_chunks_p"),
        "{plans}"
    );
}

#[test]
fn a_file_recovered_after_its_commit_reports_its_rows() {
    let env = TestEnv::new().with_db();
    env.ready();
    let file: Vec<u8> = (0..4).flat_map(|i| chunk("kept", i, None)).collect();
    drop_file(&env, "kept.msgpack", &file);
    env.run(&["process"]).output().code(0);
    // As if the process died after the commit and before the archive rename.
    let archived = env
        .listing()
        .into_iter()
        .find(|p| p.ends_with("kept.msgpack"))
        .expect("archived");
    let tag = std::path::Path::new(&archived)
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .expect("batch tag")
        .to_string();
    let back = env.spool_dir("processing").join(&tag);
    std::fs::create_dir_all(&back).expect("processing/<tag>");
    std::fs::rename(env.spool().join(&archived), back.join("kept.msgpack")).expect("move back");
    env.run(&["process"])
        .output()
        .code(0)
        .stdout_has("1 file(s) ingested, 0 failed, 4 row(s)");
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 4);
}

/// A vector that came with its record was made by no model ragspool knows: JSON
/// says null (a model may well be called "record"); the text keeps its word.
#[test]
fn trace_json_gives_null_for_the_model_of_vectors_records_brought() {
    let env = TestEnv::new().with_db();
    env.ready();
    let rec = record(&[
        ("doc_id", Val::Str("brought")),
        ("chunk_index", Val::UInt(0)),
        ("content", Val::Str("text")),
        ("embedding", Val::Floats(vec![0.5, 0.25, 1.0])),
    ]);
    drop_file(&env, "brought.msgpack", &rec);
    env.run(&["process"]).output().code(0);
    let t = trace(&env, "brought");
    assert_eq!(
        t["now"]["embedding_models"],
        serde_json::json!([null]),
        "{t}"
    );
    env.run(&["trace", "brought"])
        .output()
        .code(0)
        .stdout_has("embedding models record\n");
}
