//! Embeddings (SPEC §12) against a real HTTP endpoint the tests run: budgets, a 429
//! that pauses every worker, a refused text isolated to its file, no transaction
//! held across a request, and vectors reused for unchanged chunks.

use crate::ingest::{Val, drop_file, record};
use crate::support::http::{HttpServer, Request, Response};
use crate::support::{TestEnv, count, pg};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A deterministic, never-zero vector for a text.
pub(crate) fn vector_of(text: &str) -> Vec<f64> {
    let sum: u64 = text.bytes().map(u64::from).sum();
    vec![
        text.len() as f64,
        f64::from(text.bytes().next().unwrap_or(1)),
        (sum % 97) as f64,
        1.0,
    ]
}

pub(crate) fn answer(req: &Request) -> Response {
    let inputs = req.json()["input"].as_array().cloned().unwrap_or_default();
    let data: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"index": i, "embedding": vector_of(t.as_str().unwrap_or(""))}))
        .collect();
    Response::json(200, &serde_json::json!({"data": data}))
}

pub(crate) fn texts(req: &Request) -> Vec<String> {
    req.json()["input"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect()
}

pub(crate) fn embedding_env(server: &HttpServer) -> TestEnv {
    let mut env = TestEnv::new().with_db();
    env.set("EMBED_BASE_URL", format!("{}/v1", server.url));
    env.set("EMBED_MODEL", "test-embed");
    env.set("EMBED_DIM", "4");
    env
}

pub(crate) fn chunks(doc: &'static str, contents: &[&'static str]) -> Vec<u8> {
    chunks_at(doc, contents, None)
}

/// Records without embeddings, `created_at` set when `at` is.
pub(crate) fn chunks_at(doc: &'static str, contents: &[&'static str], at: Option<i64>) -> Vec<u8> {
    contents
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            let mut fields = vec![
                ("doc_id", Val::Str(doc)),
                ("chunk_index", Val::UInt(i as u64)),
                ("content", Val::Str(c)),
            ];
            fields.extend(at.map(|at| ("created_at", Val::Int(at))));
            record(&fields)
        })
        .collect()
}

#[test]
fn budgets_a_paused_429_and_a_refused_text_that_fails_only_its_file() {
    let server = HttpServer::start(|req, i| {
        if i == 0 {
            let mut r = Response::status(429);
            r.headers.push(("Retry-After".into(), "1".into()));
            return r;
        }
        if texts(req).iter().any(|t| t.contains("POISON")) {
            return Response::json(
                400,
                &serde_json::json!({"error": {"message": "input rejected by policy"}}),
            );
        }
        answer(req)
    });
    let mut env = embedding_env(&server);
    env.set("EMBED_BATCH", "4");
    env.set("EMBED_BATCH_BYTES", "40");
    env.set("WORKERS", "1");
    env.ready();
    let good: Vec<&'static str> = (0..10)
        .map(|i| &*Box::leak(format!("good text {i}").into_boxed_str()))
        .collect();
    let mut bad = good.clone();
    bad[7] = "a POISON text";
    let long: &'static str = Box::leak("x".repeat(100).into_boxed_str());
    drop_file(&env, "a-bad.msgpack", &chunks("bad", &bad));
    drop_file(&env, "b-good.msgpack", &chunks("good", &good));
    drop_file(&env, "c-long.msgpack", &chunks("long", &[long, "short"]));
    let started = Instant::now();
    env.run(&["process"]).output().code(1);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the 429 paused"
    );
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 12);
    let reason: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            env.spool().join(
                env.listing()
                    .into_iter()
                    .find(|p| p.ends_with("a-bad.msgpack.reason.json"))
                    .expect("reason.json"),
            ),
        )
        .expect("read"),
    )
    .expect("json");
    assert_eq!(reason["record_index"], 7, "{reason}");
    let error = reason["error"].as_str().unwrap_or("");
    assert!(error.contains("input rejected by policy"), "{error}");
    assert!(
        !error.contains("POISON"),
        "no content in reason.json: {error}"
    );
    for req in server.requests().iter().skip(1) {
        let t = texts(req);
        let bytes: usize = t.iter().map(String::len).sum();
        assert!(t.len() <= 4, "{t:?}");
        assert!(bytes <= 40 || t.len() == 1, "{t:?}");
    }
    let embedded = count(
        &env.db_url(),
        "SELECT embedded FROM ragspool_manifest WHERE file_name = 'b-good.msgpack'",
    );
    assert_eq!(embedded, 10);
}

#[test]
fn no_transaction_or_copy_is_held_while_a_request_waits() {
    let waiting = Arc::new(AtomicBool::new(false));
    let flag = waiting.clone();
    // Requests begun: a look counts only if one request was waiting all through it.
    let begun = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = begun.clone();
    let server = HttpServer::start(move |req, _| {
        started.fetch_add(1, Ordering::SeqCst);
        flag.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(700));
        flag.store(false, Ordering::SeqCst);
        answer(req)
    });
    let mut env = embedding_env(&server);
    // One worker: another worker's own transaction may rightly be open while this
    // one waits for its file's vectors.
    env.set("WORKERS", "1");
    env.set("EMBED_BATCH", "5");
    env.ready();
    for f in 0..3 {
        let name = format!("f{f}.msgpack");
        let doc: &'static str = Box::leak(format!("doc-{f}").into_boxed_str());
        let texts = ["one", "two", "three", "four", "five", "six"];
        drop_file(&env, &name, &chunks(doc, &texts));
    }
    let mut child = env.run(&["process"]).spawn();
    let mut c = pg(&env.db_url());
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        let request = begun.load(Ordering::SeqCst);
        if waiting.load(Ordering::SeqCst) {
            let held = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND pid <> pg_backend_pid() AND (state LIKE 'idle in transaction%' \
                     OR (state = 'active' AND query ILIKE 'COPY%'))",
                    &[],
                )
                .expect("pg_stat_activity")
                .get::<_, i64>(0);
            // Under load the request may have ended, and the next file's
            // transaction begun, while pg_stat_activity was read: such a look
            // proves nothing either way.
            if waiting.load(Ordering::SeqCst) && begun.load(Ordering::SeqCst) == request {
                assert_eq!(held, 0, "a backend is in a transaction during a request");
                seen += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, _, err) = crate::support::wait_with_deadline(&mut child, Duration::from_secs(30));
    assert!(seen > 5, "looked {seen} times while requests waited");
    assert_eq!(
        count(&env.db_url(), "SELECT count(*) FROM rag_chunks"),
        18,
        "{err}"
    );
}

/// A corpus of 10 documents × 10 chunks; `version` changes one chunk in ten.
fn corpus(env: &TestEnv, version: u32, prefix: &str) {
    for d in 0..10 {
        let doc: &'static str = Box::leak(format!("doc-{d}").into_boxed_str());
        let contents: Vec<&'static str> = (0..10)
            .map(|c| {
                let text = if c == d % 10 && version > 1 {
                    format!("doc {d} chunk {c} revised in version {version}")
                } else {
                    format!("doc {d} chunk {c}")
                };
                &*Box::leak(text.into_boxed_str())
            })
            .collect();
        drop_file(
            env,
            &format!("{prefix}-{d}.msgpack"),
            &chunks(doc, &contents),
        );
    }
}

fn table(url: &str) -> Vec<(String, i32, String, String, Option<String>)> {
    pg(url)
        .query(
            "SELECT doc_id, chunk_index, content, embedding::text, embedding_model FROM rag_chunks \
             ORDER BY doc_id, chunk_index",
            &[],
        )
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

#[test]
fn unchanged_chunks_keep_their_vectors_and_only_changed_ones_are_fetched() {
    let server = HttpServer::start(|req, _| answer(req));
    let mut env = embedding_env(&server);
    env.set("EMBEDDING_TYPE", "vector");
    env.set("DOC_MODE", "replace");
    env.set("WORKERS", "4");
    env.set("BATCH_MAX_FILES", "3");
    env.ready();
    corpus(&env, 1, "v1");
    env.run(&["process"]).output().code(0);
    let first = server.requests().len();
    corpus(&env, 2, "v2");
    // A SIGKILL in the middle of the second load, then a run to the end.
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7);
    let mut child = env.run(&["process"]).spawn();
    std::thread::sleep(Duration::from_millis(30 + u64::from(seed % 120)));
    let _ = child.kill();
    let _ = child.wait();
    env.run(&["process"]).output().code(0);
    let fetched: Vec<String> = server
        .requests()
        .iter()
        .skip(first)
        .flat_map(texts)
        .collect();
    assert!(!fetched.is_empty());
    assert!(
        fetched.iter().all(|t| t.contains("revised")),
        "only changed chunks are fetched: {fetched:?}"
    );
    let reused = count(
        &env.db_url(),
        "SELECT coalesce(sum(reused), 0)::bigint FROM ragspool_manifest WHERE file_name LIKE 'v2-%'",
    );
    assert!(reused > 0);
    // The table is exactly what a fresh load of version 2 gives, vectors included.
    let fresh_server = HttpServer::start(|req, _| answer(req));
    let mut fresh = embedding_env(&fresh_server);
    fresh.set("EMBEDDING_TYPE", "vector");
    fresh.set("DOC_MODE", "replace");
    fresh.ready();
    corpus(&fresh, 2, "v2");
    fresh.run(&["process"]).output().code(0);
    assert_eq!(table(&env.db_url()), table(&fresh.db_url()), "seed {seed}");
}

/// systemd's watchdog during a batch far longer than WatchdogSec: `watch` pings
/// while the batch moves (each embeddings answer is progress) and stops pinging
/// while it is stuck (one request held for 3 s), so systemd would restart a hung
/// daemon and never a busy one.
#[test]
fn the_watchdog_is_pinged_while_a_long_batch_moves_and_not_while_it_hangs() {
    use std::os::unix::net::UnixDatagram;
    let server = HttpServer::start(|req, i| {
        std::thread::sleep(Duration::from_millis(if i == 12 { 3000 } else { 150 }));
        answer(req)
    });
    let mut env = embedding_env(&server);
    env.set("EMBED_BATCH", "1");
    // One request at a time: the held one is then a silence of the whole batch.
    env.set("EMBED_CONCURRENCY", "1");
    env.set("BATCH_MAX_AGE_SECS", "0");
    let sock_path = env.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    env.set("NOTIFY_SOCKET", sock_path.display().to_string());
    // WatchdogSec=1: pings are due every 0.5 s.
    env.set("WATCHDOG_USEC", "1000000");
    env.ready();
    let contents: Vec<&'static str> = (0..30)
        .map(|i| &*Box::leak(format!("chunk number {i}").into_boxed_str()))
        .collect();
    drop_file(&env, "long.msgpack", &chunks("long-doc", &contents));
    let mut child = env.run(&["watch"]).spawn();
    let started = Instant::now();
    let mut pings = Vec::new();
    let mut buf = [0u8; 512];
    while env.count_files("archive", ".msgpack") == 0 && started.elapsed() < Duration::from_secs(60)
    {
        if let Ok(n) = sock.recv(&mut buf)
            && &buf[..n] == b"WATCHDOG=1"
        {
            pings.push(started.elapsed());
        }
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = crate::support::wait_with_deadline(&mut child, Duration::from_secs(20));
    assert_eq!(env.count_files("archive", ".msgpack"), 1);
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 30);
    let took = started.elapsed();
    assert!(took > Duration::from_secs(6), "the batch took {took:?}");
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    let long = gaps
        .iter()
        .filter(|g| **g > Duration::from_millis(1500))
        .count();
    // One silence, the held request; every other gap within twice the interval.
    assert_eq!(long, 1, "pings at {pings:?}");
    assert!(
        gaps.iter()
            .filter(|g| **g <= Duration::from_millis(1500))
            .all(|g| *g < Duration::from_millis(1100)),
        "pings at {pings:?}"
    );
    assert!(pings.len() >= 8, "pings at {pings:?}");
}

/// A poison file: the endpoint answers its texts with the wrong number of vectors
/// every time. Each try counts in the manifest (attempts and faults); at
/// FILE_MAX_FAULTS the file fails with a reason that says so, and the files behind
/// it, stalled until then, go on.
#[test]
fn a_poison_file_fails_after_file_max_faults_and_the_spool_goes_on() {
    let server = HttpServer::start(|req, _| {
        if texts(req).iter().any(|t| t.contains("POISON")) {
            return Response::json(200, &serde_json::json!({"data": []}));
        }
        answer(req)
    });
    let mut env = embedding_env(&server);
    env.set("FILE_MAX_FAULTS", "3");
    env.set("RETRY_MAX_SECS", "1");
    env.set("BATCH_MAX_FILES", "1");
    env.ready();
    drop_file(&env, "a-poison.msgpack", &chunks("p", &["POISON text"]));
    drop_file(&env, "b-good.msgpack", &chunks("g", &["good text", "more"]));
    let mut runs = 0;
    while env.count_files("failed", ".msgpack") == 0 && runs < 10 {
        env.run(&["process"]).output();
        runs += 1;
    }
    assert_eq!(env.count_files("failed", ".msgpack"), 1);
    let reason = env
        .listing()
        .iter()
        .find(|p| p.ends_with("a-poison.msgpack.reason.json"))
        .and_then(|p| std::fs::read_to_string(env.spool().join(p)).ok())
        .unwrap_or_default();
    assert!(reason.contains("FILE_MAX_FAULTS=3"), "{reason}");
    env.run(&["process"]).output().code(0);
    assert_eq!(
        env.count_files("archive", ".msgpack"),
        1,
        "{:?}",
        env.listing()
    );
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 2);
    assert!(
        count(
            &env.db_url(),
            "SELECT faults::bigint FROM ragspool_manifest WHERE file_name = 'a-poison.msgpack'"
        ) >= 3
    );
}

/// A file larger than a worker's 16 MiB window whose records lack vectors: they
/// are fetched window by window, each row gets its own text's vector, in order.
#[test]
fn vectors_of_a_file_larger_than_the_window_land_on_their_rows() {
    let server = HttpServer::start(|req, _| answer(req));
    let mut env = embedding_env(&server);
    env.set("EMBED_BATCH", "2048");
    env.set("EMBED_BATCH_BYTES", "1000000");
    env.ready();
    let n = 260_000u32;
    let mut data = Vec::new();
    for i in 0..n {
        let _ = rmp::encode::write_map_len(&mut data, 3);
        let _ = rmp::encode::write_str(&mut data, "doc_id");
        let _ = rmp::encode::write_str(&mut data, &format!("big-{}", i / 10));
        let _ = rmp::encode::write_str(&mut data, "chunk_index");
        let _ = rmp::encode::write_uint(&mut data, u64::from(i % 10));
        let _ = rmp::encode::write_str(&mut data, "content");
        let _ = rmp::encode::write_str(
            &mut data,
            &format!("text {i} {}", "abcdefghij".repeat(1 + (i % 5) as usize)),
        );
    }
    assert!(data.len() > 17 << 20, "{} bytes", data.len());
    drop_file(&env, "big.msgpack", &data);
    env.run(&["process"])
        .timeout(Duration::from_secs(300))
        .output()
        .code(0);
    assert_eq!(
        count(&env.db_url(), "SELECT count(*) FROM rag_chunks"),
        i64::from(n)
    );
    let texts: usize = server.requests().iter().map(|r| texts(r).len()).sum();
    assert_eq!(texts, n as usize, "each text sent once");
    let rows = pg(&env.db_url())
        .query(
            "SELECT content, embedding FROM rag_chunks WHERE chunk_index = 3 ORDER BY doc_id",
            &[],
        )
        .expect("rows");
    assert_eq!(rows.len(), (n / 10) as usize);
    for row in rows {
        let content: String = row.get(0);
        let got: Vec<f32> = row.get(1);
        let want: Vec<f32> = vector_of(&content).into_iter().map(|x| x as f32).collect();
        assert_eq!(got, want, "{content}");
    }
}
