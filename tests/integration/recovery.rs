//! Guarantees that must hold across crashes and concurrent claimers (SPEC §3):
//! orphaned batches recovered while watch runs, duplicates in claim order, a
//! recovered batch's gate.done counting every file, one webhook-id per gate.done,
//! invalidations that survive a crash. Crashes come as SIGKILLs and as aborts at
//! the named steps of RAGSPOOL_FAILPOINT.

use crate::embeddings::{answer, chunks, embedding_env};
use crate::ingest::{Val, drop_aged, drop_file, record};
use crate::support::http::{HttpServer, Request, Response};
use crate::support::{TestEnv, count, pg, wait_with_deadline};
use crate::watch::{handles_sigterm, signal, stop, wait_for};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// An embeddings endpoint whose first request waits until `release` is set;
/// `seen` counts the requests.
fn first_request_held() -> (HttpServer, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let release = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0));
    let (r, n) = (release.clone(), seen.clone());
    let server = HttpServer::start(move |req: &Request, _| {
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            while !r.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        answer(req)
    });
    (server, release, seen)
}

/// f1 (X v1), f2 (X v2) and f3 (a copy of f1) ended as claim order says: X holds
/// v2, f1 is the original and f3 its duplicate.
#[track_caller]
fn claim_order_held(url: &str, err: &str) {
    let mut c = pg(url);
    let contents: Vec<String> = c
        .query("SELECT content FROM rag_chunks WHERE doc_id = 'X'", &[])
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        contents,
        vec!["x version two"],
        "claim order gives v2\n{err}"
    );
    let duplicate: Vec<(String, bool)> = c
        .query(
            "SELECT file_name, duplicate FROM ragspool_manifest \
             WHERE file_name IN ('f1.msgpack', 'f3.msgpack') ORDER BY file_name",
            &[],
        )
        .expect("manifest")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        duplicate,
        vec![("f1.msgpack".into(), false), ("f3.msgpack".into(), true)]
    );
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn watch_recovers_a_batch_whose_claimer_was_killed() {
    let (server, release, seen) = first_request_held();
    let mut env = embedding_env(&server);
    env.set("WORKERS", "1");
    env.set("ORPHAN_RECOVER_SECS", "2");
    // Thresholds watch never reaches: only the orphan scan can move these files.
    env.set("BATCH_MAX_FILES", "1000");
    env.set("BATCH_MAX_AGE_SECS", "86400");
    env.ready();
    let watch = env.run(&["watch"]).spawn();
    wait_for(30, "watch's signal handlers", || handles_sigterm(&watch));
    for f in 0..3 {
        let doc: &'static str = Box::leak(format!("doc-{f}").into_boxed_str());
        drop_file(&env, &format!("f{f}.msgpack"), &chunks(doc, &["a", "b"]));
    }
    let mut process = env.run(&["process"]).spawn();
    wait_for(30, "process's first embeddings request", || {
        seen.load(Ordering::SeqCst) > 0
    });
    signal(&process, "KILL");
    let _ = wait_with_deadline(&mut process, Duration::from_secs(10));
    assert!(crate::support::batch_in_flight(&env), "{:?}", env.listing());
    release.store(true, Ordering::SeqCst);
    // Recovered by the running watch, with no fresh process to help.
    wait_for(60, "the orphaned batch to be ingested by watch", || {
        count(&env.db_url(), "SELECT count(*) FROM rag_chunks") == 6
            && env.count_files("archive", ".msgpack") == 3
    });
    stop(watch);
    assert!(!crate::support::batch_in_flight(&env));
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(*) FROM ragspool_manifest WHERE status = 'done'"
        ),
        3
    );
}

#[test]
fn a_batch_whose_claimer_lives_is_left_alone_until_it_has_gone() {
    let mut env = TestEnv::new().with_db();
    env.set("ORPHAN_RECOVER_SECS", "1");
    env.set("BATCH_MAX_AGE_SECS", "86400");
    env.ready();
    // A claimer of this host, alive: it holds the batch directory's flock.
    let tag = "20260101T000000Z-0000beef";
    let dir = env.spool_dir("processing").join(tag);
    std::fs::create_dir(&dir).expect("batch dir");
    let bytes = record(&[
        ("doc_id", Val::Str("held")),
        ("chunk_index", Val::UInt(0)),
        ("content", Val::Str("x")),
    ]);
    std::fs::write(dir.join("held.msgpack"), &bytes).expect("file");
    std::fs::write(dir.join(".owner"), format!("{} 1\n", host_name())).expect("owner");
    let claimer = std::fs::File::open(&dir).expect("open dir");
    claimer.lock().expect("flock");
    let watch = env.run(&["watch"]).spawn();
    wait_for(30, "watch's signal handlers", || handles_sigterm(&watch));
    // Six orphan scans go by.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(dir.join("held.msgpack").is_file(), "{:?}", env.listing());
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 0);
    drop(claimer);
    wait_for(
        30,
        "the batch to be taken over once its claimer went",
        || count(&env.db_url(), "SELECT count(*) FROM rag_chunks") == 1,
    );
    stop(watch);
}

/// SPEC §3: of two byte-identical files, the earlier-claimed is the original,
/// whichever commits first. f1 (X v1) waits on its embeddings in one `process`
/// while another claims f2 (X v2) and f3 (a copy of f1) and commits both: the
/// table must end with v2, and f3 be the duplicate.
#[test]
fn duplicates_follow_claim_order_not_commit_order() {
    // The first request is f1's (its process runs alone then): it waits.
    let (server, release, seen) = first_request_held();
    let mut env = embedding_env(&server);
    env.set("DOC_MODE", "replace");
    env.set("WORKERS", "2");
    env.ready();
    let v1 = chunks("X", &["x version one"]);
    drop_file(&env, "f1.msgpack", &v1);
    let mut first = env.run(&["process"]).spawn();
    wait_for(30, "f1's embeddings request", || {
        seen.load(Ordering::SeqCst) == 1
    });
    drop_aged(&env, "f2.msgpack", &chunks("X", &["x version two"]), 20);
    drop_aged(&env, "f3.msgpack", &v1, 10);
    let second = env.run(&["process"]).output();
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    release.store(true, Ordering::SeqCst);
    let (status, _, err) = wait_with_deadline(&mut first, Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{err}");
    let url = env.db_url();
    claim_order_held(&url, &err);
    assert_eq!(env.count_files("archive", ".msgpack"), 3);
}

fn gate_dones(gate: &HttpServer) -> Vec<Request> {
    gate.requests()
        .into_iter()
        .filter(|r| r.json()["event"] == "gate.done")
        .collect()
}

fn one_chunk(doc: &'static str, content: &'static str) -> Vec<u8> {
    record(&[
        ("doc_id", Val::Str(doc)),
        ("chunk_index", Val::UInt(0)),
        ("content", Val::Str(content)),
    ])
}

/// A batch whose first file failed before a crash: its recovered gate.done still
/// counts that file.
#[test]
fn a_recovered_batch_counts_the_files_that_settled_before_the_crash() {
    let gate = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    env.set("WORKERS", "1");
    env.set("GATE_URL", gate.url.clone());
    env.ready();
    drop_aged(&env, "a-bad.msgpack", b"\xc1 not msgpack", 30);
    drop_aged(&env, "b.msgpack", &one_chunk("B", "b"), 20);
    drop_aged(&env, "c.msgpack", &one_chunk("C", "c"), 10);
    // The crash: right after b's commit, a having failed.
    let out = env
        .run(&["process"])
        .env("RAGSPOOL_FAILPOINT", "file-committed:1")
        .output();
    assert_eq!(out.code, None, "the failpoint aborts: {}", out.stderr);
    assert_eq!(env.count_files("failed", ".msgpack"), 1);
    // The batch had a failed file: its report, now, says so.
    env.run(&["process"]).output().code(1);
    let done = gate_dones(&gate);
    assert_eq!(done.len(), 1, "{:?}", gate.requests());
    let done = done[0].json();
    assert_eq!(done["files_ok"], 2, "{done}");
    assert_eq!(done["files_failed"], 1, "{done}");
    assert_eq!(done["reason"], "failed", "{done}");
    assert_eq!(done["rows"], 2, "{done}");
}

/// A crash between queueing a batch's gate.done and its `.done` marker queues
/// the gate.done again on recovery: both copies carry one webhook-id.
#[test]
fn a_gate_done_queued_twice_across_a_crash_carries_one_webhook_id() {
    let gate = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    env.set("GATE_URL", gate.url.clone());
    env.ready();
    drop_file(&env, "a.msgpack", &one_chunk("A", "a"));
    let out = env
        .run(&["process"])
        .env("RAGSPOOL_FAILPOINT", "gate-done-queued")
        .output();
    assert_eq!(out.code, None, "the failpoint aborts: {}", out.stderr);
    env.run(&["process"]).output().code(0);
    let done = gate_dones(&gate);
    assert_eq!(done.len(), 2, "queued before and after the crash");
    let ids: Vec<Option<&str>> = done.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids[0].is_some());
    assert_eq!(ids[0], ids[1]);
    assert_eq!(done[0].json()["rows"], 1);
    assert_eq!(done[1].json()["rows"], 1);
}

/// A crash after the batch directory went, before its invalidations ran: they
/// were queued first, and the next run applies them.
#[test]
fn a_crash_after_a_batch_closes_loses_no_cache_invalidation() {
    let mut env = TestEnv::new().with_db().with_redis();
    env.set("DOC_MODE", "replace");
    env.set("CACHE_REDELETE_MS", "100");
    env.ready();
    drop_file(&env, "a1.msgpack", &one_chunk("A", "a v1"));
    env.run(&["process"]).output().code(0);
    let mut cache = crate::cache::api(&env);
    let value = serde_json::json!({"answer": 1});
    cache
        .set_json_namespace_deps("answers", "qa", &value, None, &["A"])
        .expect("qa");
    drop_file(&env, "a2.msgpack", &one_chunk("A", "a v2"));
    let out = env
        .run(&["process"])
        .env("RAGSPOOL_FAILPOINT", "batch-closed")
        .output();
    assert_eq!(out.code, None, "the failpoint aborts: {}", out.stderr);
    assert!(!crate::support::batch_in_flight(&env));
    assert_eq!(
        cache.get_json_namespace("answers", "qa").ok().flatten(),
        Some(value),
        "not yet invalidated when the crash came"
    );
    env.run(&["process"]).output().code(0);
    assert_eq!(
        cache.get_json_namespace("answers", "qa").ok().flatten(),
        None,
        "the queued invalidation ran on the next run"
    );
}

/// An original whose own vectors are then refused, after a later copy committed
/// its content on its behalf, stays committed: its manifest row never turns
/// `failed` (a requeue would insert its rows again).
#[test]
fn a_committed_original_is_never_turned_into_a_failure() {
    let release = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0));
    let (r, n) = (release.clone(), seen.clone());
    let server = HttpServer::start(move |req: &Request, _| {
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            while !r.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            // f1's request is refused once its copy has committed.
            return Response::json(400, &serde_json::json!({"error": {"message": "refused"}}));
        }
        answer(req)
    });
    let env = embedding_env(&server);
    env.ready();
    let body = chunks("Y", &["y text"]);
    drop_file(&env, "f1.msgpack", &body);
    let mut first = env.run(&["process"]).spawn();
    wait_for(30, "f1's embeddings request", || {
        seen.load(Ordering::SeqCst) == 1
    });
    drop_file(&env, "f3.msgpack", &body);
    env.run(&["process"]).output().code(0);
    let url = env.db_url();
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM ragspool_manifest WHERE file_name = 'f1.msgpack' AND status = 'done'"
        ),
        1,
        "f3 committed f1's content"
    );
    release.store(true, Ordering::SeqCst);
    let (status, _, err) = wait_with_deadline(&mut first, Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{err}");
    assert_eq!(
        env.count_files("failed", ".msgpack"),
        0,
        "{:?}",
        env.listing()
    );
    assert_eq!(env.count_files("archive", ".msgpack"), 2);
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM ragspool_manifest WHERE status = 'failed'"
        ),
        0
    );
    assert_eq!(count(&url, "SELECT count(*) FROM rag_chunks"), 1);
}

/// Serialization failures that go on past RETRY_MAX_SECS are an outage, not the
/// file's fault: it stays in processing/ and the run exits 75; a rerun is exact.
#[test]
fn conflicts_that_persist_exit_75_and_move_nothing_to_failed() {
    let mut env = TestEnv::new().with_db();
    env.set("RETRY_MAX_SECS", "2");
    env.set("DOC_MODE", "replace");
    env.ready();
    let url = env.db_url();
    let mut c = pg(&url);
    c.batch_execute(
        "CREATE TABLE fault (on_ boolean NOT NULL); INSERT INTO fault VALUES (true);
         CREATE FUNCTION conflict() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF (SELECT on_ FROM fault) THEN
             RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = '40001';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER conflict BEFORE INSERT OR UPDATE ON ragspool_docs
           FOR EACH ROW EXECUTE FUNCTION conflict();",
    )
    .expect("fault trigger");
    drop_file(&env, "a.msgpack", &one_chunk("A", "a"));
    env.run(&["process"]).output().code(75);
    assert_eq!(
        env.count_files("failed", ".msgpack"),
        0,
        "{:?}",
        env.listing()
    );
    assert!(crate::support::batch_in_flight(&env));
    c.batch_execute("UPDATE fault SET on_ = false")
        .expect("heal");
    env.run(&["process"]).output().code(0);
    assert_eq!(count(&url, "SELECT count(*) FROM rag_chunks"), 1);
    assert_eq!(env.count_files("archive", ".msgpack"), 1);
}

/// SPEC §3 again, for an earlier copy that its batch has not even opened: f1
/// waits in its batch's queue behind g (whose request is held, one file prepared at
/// a time), while another `process` claims f2 (X v2) and f3 (a copy of f1) and
/// commits both. f1 is still the original: the table ends with v2.
#[test]
fn an_earlier_copy_not_yet_opened_is_still_the_original() {
    let (server, release, seen) = first_request_held();
    let mut env = embedding_env(&server);
    env.set("DOC_MODE", "replace");
    env.set("WORKERS", "1");
    // One request and one file prepared at a time: f1 waits unopened behind g.
    env.set("EMBED_CONCURRENCY", "1");
    env.ready();
    let v1 = chunks("X", &["x version one"]);
    drop_aged(&env, "g.msgpack", &chunks("G", &["g text"]), 40);
    drop_aged(&env, "f1.msgpack", &v1, 30);
    let mut first = env.run(&["process"]).spawn();
    wait_for(30, "g's embeddings request", || {
        seen.load(Ordering::SeqCst) == 1
    });
    let url = env.db_url();
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM ragspool_manifest WHERE file_name = 'f1.msgpack'"
        ),
        0,
        "f1 is claimed and not yet opened"
    );
    drop_aged(&env, "f2.msgpack", &chunks("X", &["x version two"]), 20);
    drop_aged(&env, "f3.msgpack", &v1, 10);
    let second = env.run(&["process"]).output();
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    release.store(true, Ordering::SeqCst);
    let (status, _, err) = wait_with_deadline(&mut first, Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{err}");
    claim_order_held(&url, &err);
    assert_eq!(env.count_files("archive", ".msgpack"), 4);
}
