//! Embeddings at the endpoint's pace (SPEC §13), against a real HTTP endpoint that
//! counts the requests it holds at once: one file's requests go out concurrently,
//! files share EMBED_CONCURRENCY, a 429 lowers the pace and honours Retry-After,
//! a hung request times out, tokens are counted in the manifest, the metrics and
//! `status`, and a misbehaving endpoint under concurrency loses nothing.

use crate::embeddings::{answer, chunks, embedding_env, texts, vector_of};
use crate::ingest::drop_file;
use crate::support::http::{HttpServer, Request, Response};
use crate::support::{TestEnv, count, pg};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Requests held at once, now and at most.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl InFlight {
    fn enter(&self) -> usize {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        n
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// An endpoint that answers after `latency`, with usage counting one token a text;
/// above `cap` requests at once it answers 429 with Retry-After: 1.
fn endpoint(latency: Duration, cap: usize) -> (HttpServer, Arc<InFlight>) {
    let flight = Arc::new(InFlight::default());
    let f = flight.clone();
    let server = HttpServer::start(move |req, _| {
        let n = f.enter();
        if n > cap {
            f.leave();
            let mut r = Response::status(429);
            r.headers.push(("Retry-After".into(), "1".into()));
            return r;
        }
        std::thread::sleep(latency);
        f.leave();
        with_usage(req)
    });
    (server, flight)
}

/// [`answer`] with `usage.total_tokens`: 3 per text.
fn with_usage(req: &Request) -> Response {
    let n = texts(req).len();
    let mut body: serde_json::Value =
        serde_json::from_slice(&answer(req).body).unwrap_or(serde_json::Value::Null);
    body["usage"] = serde_json::json!({"prompt_tokens": 3 * n, "total_tokens": 3 * n});
    Response::json(200, &body)
}

fn contents(prefix: &str, n: usize) -> Vec<&'static str> {
    (0..n)
        .map(|i| &*Box::leak(format!("{prefix} chunk {i}").into_boxed_str()))
        .collect()
}

/// Every row's vector is the one its own text was answered with.
fn vectors_land_on_their_rows(env: &TestEnv) {
    let mut c = pg(&env.db_url());
    let rows = c
        .query("SELECT content, embedding FROM rag_chunks", &[])
        .expect("rows");
    assert!(!rows.is_empty());
    for r in rows {
        let content: String = r.get(0);
        let got: Vec<f32> = r.get(1);
        let want: Vec<f32> = vector_of(&content).into_iter().map(|x| x as f32).collect();
        assert_eq!(got, want, "{content}");
    }
}

fn metric(env: &TestEnv, key: &str) -> f64 {
    let text = std::fs::read_to_string(env.dir.path().join("metrics.prom")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn one_files_requests_go_out_at_once_up_to_embed_concurrency() {
    let (server, flight) = endpoint(Duration::from_millis(150), usize::MAX);
    let mut env = embedding_env(&server);
    env.set("EMBED_BATCH", "2");
    env.set("EMBED_CONCURRENCY", "8");
    env.set("WORKERS", "1");
    env.set(
        "METRICS_FILE",
        env.dir.path().join("metrics.prom").display().to_string(),
    );
    env.ready();
    drop_file(&env, "big.msgpack", &chunks("big", &contents("big", 60)));
    env.run(&["process"]).output().code(0);
    assert_eq!(flight.peak(), 8, "30 requests, 8 at once");
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 60);
    vectors_land_on_their_rows(&env);
    // Cost: 3 tokens a text, in the manifest, the metrics and status.
    assert_eq!(
        count(&env.db_url(), "SELECT tokens FROM ragspool_manifest"),
        180
    );
    assert_eq!(
        metric(&env, "ragspool_embed_tokens_total{model=\"test-embed\"}"),
        180.0
    );
    assert_eq!(
        metric(&env, "ragspool_embed_requests_total{code=\"200\"}"),
        30.0
    );
    assert_eq!(metric(&env, "ragspool_embed_concurrency"), 8.0);
    env.run(&["status"])
        .output()
        .code(0)
        .stdout_has("embeddings: 180 tokens in the last 24 hours");
    let json = env.run(&["status", "--json"]).output().code(0).json();
    assert_eq!(json["embed_tokens_24h"], 180);
}

#[test]
fn files_share_embed_concurrency_and_are_fetched_ahead_of_their_copy() {
    let (server, flight) = endpoint(Duration::from_millis(150), usize::MAX);
    let mut env = embedding_env(&server);
    env.set("EMBED_BATCH", "1");
    env.set("EMBED_CONCURRENCY", "12");
    env.set("WORKERS", "2");
    env.ready();
    for f in 0..8 {
        let name = format!("f{f}.msgpack");
        let doc: &'static str = Box::leak(format!("doc-{f}").into_boxed_str());
        drop_file(&env, &name, &chunks(doc, &contents(doc, 3)));
    }
    env.run(&["process"]).output().code(0);
    // Three requests a file: more than two files (the two workers') at once.
    assert_eq!(flight.peak(), 12, "files prefetched ahead, within the cap");
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 24);
    vectors_land_on_their_rows(&env);
}

#[test]
fn a_429_lowers_the_pace_honours_retry_after_and_loses_nothing() {
    let (server, flight) = endpoint(Duration::from_millis(100), 4);
    let mut env = embedding_env(&server);
    env.set("EMBED_BATCH", "1");
    env.set("EMBED_CONCURRENCY", "16");
    env.set("WORKERS", "2");
    env.set(
        "METRICS_FILE",
        env.dir.path().join("metrics.prom").display().to_string(),
    );
    env.ready();
    drop_file(&env, "a.msgpack", &chunks("a", &contents("a", 40)));
    drop_file(&env, "b.msgpack", &chunks("b", &contents("b", 40)));
    env.run(&["process"]).output().code(0);
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 80);
    vectors_land_on_their_rows(&env);
    assert_eq!(
        metric(&env, "ragspool_embed_requests_total{code=\"200\"}"),
        80.0
    );
    let refused = metric(&env, "ragspool_embed_requests_total{code=\"429\"}");
    assert!(refused >= 1.0, "the cap was found by refusals");
    assert!(
        metric(&env, "ragspool_embed_concurrency") < 16.0,
        "a refusal lowered the concurrency in effect"
    );
    assert!(flight.peak() > 4);
}

#[test]
fn a_request_past_embed_timeout_secs_is_retried() {
    let first = Arc::new(AtomicUsize::new(0));
    let f = first.clone();
    let server = HttpServer::start(move |req, _| {
        if f.fetch_add(1, Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_secs(4));
        }
        answer(req)
    });
    let mut env = embedding_env(&server);
    env.set("EMBED_TIMEOUT_SECS", "1");
    env.set(
        "METRICS_FILE",
        env.dir.path().join("metrics.prom").display().to_string(),
    );
    env.ready();
    drop_file(&env, "a.msgpack", &chunks("a", &["one", "two"]));
    env.run(&["process"]).output().code(0);
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 2);
    assert_eq!(
        metric(&env, "ragspool_embed_requests_total{code=\"error\"}"),
        1.0
    );
}

/// Wrong-length vectors, garbage and reset connections, many requests at once: no
/// file is lost or failed, none is half in, and the run exits 75.
#[test]
fn a_misbehaving_endpoint_under_concurrency_loses_nothing() {
    let server = HttpServer::start(|req, i| match i % 3 {
        0 => Response::json(
            200,
            &serde_json::json!({"data": [{"index": 0, "embedding": [1.0]}]}),
        ),
        1 => Response::json(200, &serde_json::json!("garbage")),
        _ => {
            let _ = texts(req);
            Response::status(0)
        }
    });
    let mut env = embedding_env(&server);
    env.set("EMBED_BATCH", "1");
    env.set("RETRY_MAX_SECS", "2");
    env.set("FILE_MAX_FAULTS", "1000");
    env.ready();
    for f in 0..4 {
        let doc: &'static str = Box::leak(format!("doc-{f}").into_boxed_str());
        drop_file(
            &env,
            &format!("f{f}.msgpack"),
            &chunks(doc, &contents(doc, 6)),
        );
    }
    env.run(&["process"]).output().code(75);
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 0);
    assert_eq!(env.count_files("failed", ".msgpack"), 0);
    assert_eq!(
        env.count_files("processing", ".msgpack"),
        4,
        "{:?}",
        env.listing()
    );
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state LIKE 'idle in transaction%'"
        ),
        0
    );
}

/// Bisection of a refused request with many requests in flight: only the file with
/// the offending text fails, naming its record; every other vector lands on its
/// own row.
#[test]
fn a_refused_text_among_many_concurrent_requests_fails_only_its_file() {
    let flight = Arc::new(InFlight::default());
    let f = flight.clone();
    let server = HttpServer::start(move |req, _| {
        f.enter();
        std::thread::sleep(Duration::from_millis(50));
        f.leave();
        if texts(req).iter().any(|t| t.contains("poison")) {
            return Response::json(400, &serde_json::json!({"error": {"message": "bad input"}}));
        }
        answer(req)
    });
    let mut env = embedding_env(&server);
    env.set("EMBED_BATCH", "4");
    env.set("EMBED_CONCURRENCY", "8");
    env.ready();
    let mut bad = contents("bad", 40);
    bad[27] = "a poison chunk";
    drop_file(&env, "bad.msgpack", &chunks("bad", &bad));
    drop_file(&env, "good.msgpack", &chunks("good", &contents("good", 40)));
    env.run(&["process"]).output().code(1);
    assert!(
        flight.peak() > 4,
        "requests went out at once: {}",
        flight.peak()
    );
    let reason = std::fs::read_to_string(
        env.listing()
            .iter()
            .find(|p| p.ends_with("bad.msgpack.reason.json"))
            .map(|p| env.spool().join(p))
            .expect("a reason file"),
    )
    .expect("reason");
    let reason: serde_json::Value = serde_json::from_str(&reason).expect("json");
    assert_eq!(reason["record_index"], 27, "{reason}");
    assert!(
        reason["error"]
            .as_str()
            .is_some_and(|e| e.contains("bad input"))
    );
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 40);
    vectors_land_on_their_rows(&env);
}
