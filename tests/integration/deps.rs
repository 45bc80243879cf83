//! Cached answers never outlive their documents (SPEC §12): dependent keys go when
//! a document is replaced or deleted, once more after the build update, and after
//! a Redis outage; keys of other documents stay.

use crate::cache::api;
use crate::ingest::{Val, drop_file, record};
use crate::support::servers::{OwnRedis, redis_cli};
use crate::support::{TestEnv, count};
use std::time::{Duration, Instant};

fn doc(name: &str, doc_id: &'static str, version: &'static str) -> (String, Vec<u8>) {
    (
        name.to_string(),
        record(&[
            ("doc_id", Val::Str(doc_id)),
            ("chunk_index", Val::UInt(0)),
            ("content", Val::Str(version)),
        ]),
    )
}

fn delete(doc_id: &'static str) -> Vec<u8> {
    record(&[("doc_id", Val::Str(doc_id)), ("delete", Val::Bool(true))])
}

fn answer(n: u32) -> serde_json::Value {
    serde_json::json!({ "answer": n })
}

#[test]
fn answers_go_with_their_documents_and_others_stay() {
    let mut env = TestEnv::new().with_db().with_redis();
    env.set("DOC_MODE", "replace");
    env.set("CACHE_REDELETE_MS", "200");
    env.ready();
    for (name, bytes) in [
        doc("a1.msgpack", "A", "a v1"),
        doc("b1.msgpack", "B", "b v1"),
    ] {
        drop_file(&env, &name, &bytes);
    }
    env.run(&["process"]).output().code(0);
    let mut cache = api(&env);
    cache
        .set_json_namespace_deps("answers", "qa", &answer(1), None, &["A"])
        .expect("qa");
    cache
        .set_json_namespace_deps("answers", "qb", &answer(2), None, &["B"])
        .expect("qb");
    cache
        .set_msgpack_namespace_deps("answers", "qab", &answer(3), Some(50), &["A", "B"])
        .expect("qab");
    let out = env.run(&["cache", "deps", "A"]).output().code(0);
    assert_eq!(
        out.stdout.lines().count(),
        2,
        "qa and qab depend on A: {}",
        out.stdout
    );
    // Replacing A takes qa and qab; qb stays.
    let (name, bytes) = doc("a2.msgpack", "A", "a v2");
    drop_file(&env, &name, &bytes);
    env.run(&["process"]).output().code(0);
    assert_eq!(
        cache.get_json_namespace("answers", "qa").ok().flatten(),
        None
    );
    assert_eq!(
        cache.get_msgpack_namespace("answers", "qab").ok().flatten(),
        None
    );
    assert_eq!(
        cache.get_json_namespace("answers", "qb").ok().flatten(),
        Some(answer(2))
    );
    assert_eq!(env.run(&["cache", "deps", "A"]).output().code(0).stdout, "");
    // Deleting B takes qb.
    drop_file(&env, "b-gone.msgpack", &delete("B"));
    env.run(&["process"]).output().code(0);
    assert_eq!(
        cache.get_json_namespace("answers", "qb").ok().flatten(),
        None
    );
}

#[test]
fn an_answer_stored_during_the_commit_goes_with_the_second_pass() {
    let mut env = TestEnv::new().with_db().with_redis();
    env.set("DOC_MODE", "replace");
    env.set("CACHE_REDELETE_MS", "2500");
    env.ready();
    let (name, bytes) = doc("d1.msgpack", "D", "d v1");
    drop_file(&env, &name, &bytes);
    env.run(&["process"]).output().code(0);
    let (name, bytes) = doc("d2.msgpack", "D", "d v2");
    drop_file(&env, &name, &bytes);
    let mut child = env.run(&["process"]).spawn();
    // A query service answers from the old rows while the batch commits, and
    // stores its answer after the first invalidation pass.
    let url = env.db_url();
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(
        &url,
        "SELECT count(*) FROM rag_chunks WHERE content = 'd v2'",
    ) == 0
    {
        assert!(Instant::now() < deadline, "the batch never committed");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut cache = api(&env);
    cache
        .set_json_namespace_deps("answers", "late", &answer(9), None, &["D"])
        .expect("late answer");
    let (status, _, err) = crate::support::wait_with_deadline(&mut child, Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{err}");
    assert_eq!(
        cache.get_json_namespace("answers", "late").ok().flatten(),
        None,
        "the second pass took the answer stored meanwhile"
    );
}

#[test]
fn a_redis_outage_delays_the_invalidation_and_never_loses_it() {
    let redis = OwnRedis::start(&[], false, |_| {});
    let mut env = TestEnv::new().with_db();
    env.set("REDIS_HOST", "127.0.0.1");
    env.set("REDIS_PORT", redis.port.to_string());
    env.set("REDIS_DB", "0");
    env.set("REDIS_TIMEOUT_MS", "300");
    env.set("CACHE_REDELETE_MS", "100");
    env.ready();
    let (name, bytes) = doc("c1.msgpack", "C", "c v1");
    drop_file(&env, &name, &bytes);
    env.run(&["process"]).output().code(0);
    let mut cache = api(&env);
    cache
        .set_json_namespace_deps("answers", "qc", &answer(5), None, &["C"])
        .expect("qc");
    cache
        .set_json_namespace_deps("answers", "other", &answer(6), None, &["E"])
        .expect("other");
    // Redis stops answering (its data kept) while the batch deletes C.
    let _ = redis_cli(redis.port, &["CLIENT", "PAUSE", "4000", "ALL"]);
    drop_file(&env, "c-gone.msgpack", &delete("C"));
    env.run(&["process"]).output().code(0);
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(*) FROM rag_chunks WHERE doc_id = 'C'"
        ),
        0,
        "ingest went on"
    );
    let queued = std::fs::read_dir(env.spool_dir("outbox").join("cache"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(queued, 1, "the invalidation waits in outbox/cache/");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        cache.get_json_namespace("answers", "qc").ok().flatten(),
        Some(answer(5)),
        "not applied yet"
    );
    // The next run applies it.
    env.run(&["process"]).output().code(0);
    assert_eq!(
        cache.get_json_namespace("answers", "qc").ok().flatten(),
        None
    );
    assert_eq!(
        cache.get_json_namespace("answers", "other").ok().flatten(),
        Some(answer(6))
    );
    let queued = std::fs::read_dir(env.spool_dir("outbox").join("cache"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(queued, 0);
}
