//! Storage formats (SPEC §15) on a real PostgreSQL with pgvector: halfvec rows
//! whose every element is checked against PostgreSQL's own f32 → f16 cast, the
//! elements f16 cannot hold, halfvec with an embeddings endpoint (reuse, replace,
//! trace, sealed indexes), the TEXT_SEARCH column with its GIN indexes, and the
//! README's hybrid query.

use crate::embeddings::{chunks, chunks_at, texts};
use crate::ingest::{Val, drop_file, record, today_noonish};
use crate::support::http::{HttpServer, Request, Response};
use crate::support::{TestEnv, count, partition_of, pg};

fn halfvec_env(dim: usize) -> TestEnv {
    let mut env = TestEnv::new().with_db();
    env.set("EMBEDDING_TYPE", "halfvec");
    env.set("EMBED_DIM", dim.to_string());
    env
}

/// `[a,b,...]` of f32s, each printed so that it parses back to the same f32.
fn vector_text(v: &[f32]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
    format!("[{}]", parts.join(","))
}

/// reason.json of the failed file `name`.
fn reason(env: &TestEnv, name: &str) -> serde_json::Value {
    let path = env
        .listing()
        .into_iter()
        .find(|p| p.starts_with("failed/") && p.ends_with(&format!("/{name}.reason.json")))
        .unwrap_or_else(|| panic!("{name} did not fail: {:?}", env.listing()));
    let text = std::fs::read_to_string(env.spool().join(path)).expect("read reason.json");
    serde_json::from_str(&text).expect("reason.json is JSON")
}

fn vector_record(doc: &'static str, embedding: Val) -> Vec<u8> {
    record(&[
        ("doc_id", Val::Str(doc)),
        ("chunk_index", Val::UInt(0)),
        ("content", Val::Str("x")),
        ("embedding", embedding),
    ])
}

/// Values across f16's range: magnitudes from 2^-30 to 2^15 (exclusive), each a random
/// significand, signs mixed (a fixed seed, so a failure repeats).
fn spread(seed: &mut u64, n: usize) -> Vec<f32> {
    use crate::support::next_random;
    (0..n)
        .map(|_| {
            let exp = (next_random(seed) % 45) as i32 - 30;
            let frac = (next_random(seed) & 0x7f_ffff) as f32 / (1 << 23) as f32;
            let x = 2f32.powi(exp) * (1.0 + frac);
            if next_random(seed) & 1 == 1 { -x } else { x }
        })
        .collect()
}

#[test]
fn every_halfvec_element_is_the_nearest_f16_as_postgres_casts_it() {
    let env = halfvec_env(8);
    env.ready();
    let tiny = 2f32.powi(-24);
    // The f32 just below 65504 rounds to it (65488 is the f16 below).
    let below_max = f32::from_bits(65504f32.to_bits() - 1);
    // Ties to even, subnormals, underflow and both ends of the range.
    let edges: [(&'static str, Vec<f32>); 3] = [
        (
            "ties",
            vec![
                1.0 + 2f32.powi(-11),
                1.0 + 3.0 * 2f32.powi(-11),
                tiny / 2.0,
                tiny * 1.5,
                65504.0,
                below_max,
                -below_max,
                -0.0,
            ],
        ),
        (
            "subnormals",
            vec![
                tiny,
                2f32.powi(-14) - tiny / 2.0,
                2f32.powi(-14),
                3e-8,
                -1e-9,
                0.1,
                -1.0 / 3.0,
                12345.678,
            ],
        ),
        (
            "mixed",
            vec![-65504.0, 2.5 * tiny, 0.5, -0.25, 1e-7, 7.0, -7.5, 1024.5],
        ),
    ];
    let start = crate::support::test_seed("halfvec-elements");
    let mut seed = start;
    let mut file = Vec::new();
    let mut rows: Vec<(String, Vec<f32>)> = Vec::new();
    for (i, (doc, v)) in edges.iter().enumerate() {
        // Each of the decoder's layouts: bin of f32, array of f32, array of f64.
        let embedding = match i {
            0 => Val::LeBin(v.clone()),
            1 => Val::Floats(v.clone()),
            _ => Val::Json(serde_json::json!(
                v.iter().map(|x| f64::from(*x)).collect::<Vec<_>>()
            )),
        };
        file.extend(vector_record(doc, embedding));
        rows.push((doc.to_string(), v.clone()));
    }
    for i in 0..60 {
        let doc: &'static str = Box::leak(format!("spread-{i:02}").into_boxed_str());
        let v = spread(&mut seed, 8);
        file.extend(vector_record(doc, Val::Floats(v.clone())));
        rows.push((doc.to_string(), v));
    }
    drop_file(&env, "elements.msgpack", &file);
    env.run(&["process"]).output().code(0);
    let mut c = pg(&env.db_url());
    assert_eq!(crate::support::embedding_type(&mut c), "halfvec(8)");
    for (doc, v) in &rows {
        let row = c
            .query_one(
                "SELECT embedding::text, $2::text::vector::halfvec::text FROM rag_chunks WHERE doc_id = $1",
                &[doc, &vector_text(v)],
            )
            .expect("row and cast");
        let (stored, cast): (String, String) = (row.get(0), row.get(1));
        assert_eq!(stored, cast, "{doc}: {v:?} (RAGSPOOL_TEST_SEED={start})");
    }
    // The edges, spelled out: ties went to the even neighbour.
    let ties: Vec<f32> = c
        .query_one(
            "SELECT embedding::real[] FROM rag_chunks WHERE doc_id = 'ties'",
            &[],
        )
        .expect("ties")
        .get(0);
    let want = [
        1.0,
        1.0 + 2f32.powi(-9),
        0.0,
        2.0 * tiny,
        65504.0,
        65504.0,
        -65504.0,
        -0.0,
    ];
    assert_eq!(
        ties.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        "{ties:?}"
    );
}

#[test]
fn elements_f16_cannot_hold_fail_their_file_with_the_record_index() {
    let env = halfvec_env(4);
    env.ready();
    let ok = |doc| vector_record(doc, Val::Floats(vec![1.0, 2.0, 3.0, 4.0]));
    drop_file(
        &env,
        "edge.msgpack",
        &vector_record("edge", Val::Floats(vec![65504.0, -65504.0, 0.5, 1.0])),
    );
    // SPEC §15: beyond 65504 fails, even a value that would round down to it.
    let below_tie = f32::from_bits(65520f32.to_bits() - 1);
    drop_file(
        &env,
        "rounds-down.msgpack",
        &vector_record("r0", Val::Floats(vec![0.5, below_tie, 0.5, 1.0])),
    );
    let mut beyond = ok("b0");
    beyond.extend(vector_record(
        "b1",
        Val::Floats(vec![1.0, 2.0, 3.0, 65520.0]),
    ));
    drop_file(&env, "beyond.msgpack", &beyond);
    drop_file(
        &env,
        "negative.msgpack",
        &vector_record("n0", Val::LeBin(vec![-1e6, 0.0, 0.0, 1.0])),
    );
    let mut nan = ok("x0");
    nan.extend(ok("x1"));
    nan.extend(vector_record(
        "x2",
        Val::LeBin(vec![1.0, f32::NAN, 0.0, 0.0]),
    ));
    drop_file(&env, "nan.msgpack", &nan);
    drop_file(
        &env,
        "vanishing.msgpack",
        &vector_record("v0", Val::Floats(vec![1e-9, -2e-9, 0.0, 1e-10])),
    );
    env.run(&["process"]).output().code(1);
    for (name, index, needle) in [
        (
            "beyond.msgpack",
            1,
            "embedding[3] is 65520, beyond halfvec's range",
        ),
        ("negative.msgpack", 0, "embedding[0] is -1000000"),
        (
            "rounds-down.msgpack",
            0,
            "embedding[1] is 65519.996, beyond",
        ),
        ("nan.msgpack", 2, "embedding[1] is not a finite number"),
        ("vanishing.msgpack", 0, "rounds to all zeros in halfvec"),
    ] {
        let r = reason(&env, name);
        assert_eq!(r["record_index"], index, "{name}: {r}");
        let error = r["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{name}: {error}");
    }
    // Nothing of a failed file landed; the file at the very edge of the range did.
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 1);
    let edge: String = pg(&env.db_url())
        .query_one("SELECT embedding::text FROM rag_chunks", &[])
        .expect("edge row")
        .get(0);
    assert_eq!(edge, "[65504,-65504,0.5,1]");
}

/// A vector of fractions for a text, so that every element is rounded.
fn vector_for(text: &str) -> Vec<f64> {
    let sum: u64 = text.bytes().map(u64::from).sum();
    vec![
        text.len() as f64 / 7.0,
        f64::from(text.bytes().next().unwrap_or(1)) / 3.0,
        (sum % 97) as f64 / 11.0 + 0.1,
        0.123_456_789,
    ]
}

fn halfvec_answer(req: &Request) -> Response {
    let data: Vec<_> = texts(req)
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = if t.contains("HUGE") {
                vec![70000.0, 1.0, 1.0, 1.0]
            } else {
                vector_for(t)
            };
            serde_json::json!({"index": i, "embedding": v})
        })
        .collect();
    Response::json(200, &serde_json::json!({"data": data}))
}

/// The endpoint's f64s as ragspool reads them (nearest f32), as a vector literal.
fn endpoint_vector_text(text: &str) -> String {
    let v: Vec<f32> = vector_for(text).into_iter().map(|x| x as f32).collect();
    vector_text(&v)
}

#[test]
fn halfvec_from_the_endpoint_is_reused_replaced_traced_and_indexed_when_sealed() {
    let server = HttpServer::start(|req, _| halfvec_answer(req));
    let mut env = halfvec_env(4);
    env.set("EMBED_BASE_URL", format!("{}/v1", server.url));
    env.set("EMBED_MODEL", "test-embed");
    env.set("DOC_MODE", "replace");
    env.set("VECTOR_INDEX", "hnsw");
    env.set("VECTOR_INDEX_QUIET_SECS", "0");
    env.set("TEXT_SEARCH", "english");
    env.ready();
    let yesterday = today_noonish() - 86_400;
    let v1 = ["the first chunk", "the second chunk", "the third chunk"];
    drop_file(
        &env,
        "v1.msgpack",
        &chunks_at("story", &v1, Some(yesterday)),
    );
    env.run(&["process"]).output().code(0);
    let url = env.db_url();
    let stored = |c: &mut postgres::Client| -> Vec<(String, String, String)> {
        c.query(
            "SELECT content, embedding::text, embedding_model FROM rag_chunks ORDER BY chunk_index",
            &[],
        )
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    };
    let mut c = pg(&url);
    for (content, embedding, model) in stored(&mut c) {
        let cast: String = c
            .query_one(
                "SELECT $1::text::vector::halfvec::text",
                &[&endpoint_vector_text(&content)],
            )
            .expect("cast")
            .get(0);
        assert_eq!(embedding, cast, "{content}");
        assert_eq!(model, "test-embed");
    }
    let first = server.requests().len();
    // Version 2 changes one chunk: only its text is fetched, the others keep
    // their halfvec as it was stored.
    let v2 = [
        "the first chunk",
        "the second chunk, revised",
        "the third chunk",
    ];
    drop_file(
        &env,
        "v2.msgpack",
        &chunks_at("story", &v2, Some(yesterday)),
    );
    env.run(&["process"]).output().code(0);
    let fetched: Vec<String> = server
        .requests()
        .iter()
        .skip(first)
        .flat_map(texts)
        .collect();
    assert_eq!(fetched, vec!["the second chunk, revised".to_string()]);
    assert_eq!(
        count(
            &url,
            "SELECT reused FROM ragspool_manifest WHERE file_name = 'v2.msgpack'"
        ),
        2
    );
    let after = stored(&mut c);
    assert_eq!(after.len(), 3);
    for (content, embedding, _) in &after {
        let cast: String = c
            .query_one(
                "SELECT $1::text::vector::halfvec::text",
                &[&endpoint_vector_text(content)],
            )
            .expect("cast")
            .get(0);
        assert_eq!(*embedding, cast, "{content}");
    }
    let trace = env
        .run(&["trace", "story", "--json"])
        .output()
        .code(0)
        .json();
    assert_eq!(trace["events"].as_array().map(Vec::len), Some(2), "{trace}");
    assert_eq!(trace["now"]["rows"], 3, "{trace}");
    // maintain builds both indexes on the sealed partition, HNSW with halfvec's class.
    let sealed = partition_of(yesterday);
    env.run(&["maintain"])
        .output()
        .code(0)
        .stdout_has(&format!("built the HNSW index on: {sealed}"))
        .stdout_has(&format!("built the GIN index on: {sealed}"));
    let opclass: String = c
        .query_one(
            "SELECT opc.opcname FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid \
             JOIN pg_am am ON am.oid = ic.relam JOIN pg_opclass opc ON opc.oid = x.indclass[0] \
             WHERE x.indrelid = $1::text::regclass AND am.amname = 'hnsw'",
            &[&sealed],
        )
        .expect("the HNSW index")
        .get(0);
    assert_eq!(opclass, "halfvec_cosine_ops");
    c.batch_execute("SET enable_seqscan = off").expect("set");
    let nearest: String = c
        .query_one(
            "SELECT content FROM rag_chunks ORDER BY embedding <=> $1::text::halfvec LIMIT 1",
            &[&endpoint_vector_text("the third chunk")],
        )
        .expect("knn")
        .get(0);
    assert_eq!(nearest, "the third chunk");
}

#[test]
fn an_endpoint_vector_beyond_f16_is_an_endpoint_fault_until_file_max_faults() {
    let server = HttpServer::start(|req, _| halfvec_answer(req));
    let mut env = halfvec_env(4);
    env.set("EMBED_BASE_URL", format!("{}/v1", server.url));
    env.set("EMBED_MODEL", "test-embed");
    env.set("RETRY_MAX_SECS", "1");
    env.set("FILE_MAX_FAULTS", "2");
    env.ready();
    drop_file(&env, "huge.msgpack", &chunks("h", &["a HUGE text"]));
    // Not the file's fault: it stays in processing/ and the run exits 75, each
    // try counted.
    env.run(&["process"])
        .output()
        .code(75)
        .stderr_has("beyond halfvec's range (±65504), for text 0 of the request");
    assert_eq!(env.count_files("processing", "huge.msgpack"), 1);
    assert!(
        count(
            &env.db_url(),
            "SELECT faults::bigint FROM ragspool_manifest WHERE file_name = 'huge.msgpack'"
        ) >= 1
    );
    let mut runs = 0;
    while env.count_files("failed", "huge.msgpack") == 0 && runs < 5 {
        env.run(&["process"]).output();
        runs += 1;
    }
    let r = reason(&env, "huge.msgpack");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("FILE_MAX_FAULTS=2")),
        "{r}"
    );
}

#[test]
fn halfvec_needs_pgvector_0_7_and_says_how_to_update() {
    let mut env = halfvec_env(4);
    env.set("EMBEDDING_TYPE", "vector");
    env.ready();
    // The server's pgvector as an older release would have left it in this
    // database (no older install script ships beside 0.8.0).
    pg(&env.db_url())
        .batch_execute("UPDATE pg_extension SET extversion = '0.6.2' WHERE extname = 'vector'")
        .expect("pretend 0.6.2");
    env.run(&["migrate"])
        .env("EMBEDDING_TYPE", "halfvec")
        .output()
        .code(78)
        .stderr_has("`EMBEDDING_TYPE` is halfvec, which needs pgvector 0.7 or later; the database has pgvector 0.6.2")
        .stderr_has("ALTER EXTENSION vector UPDATE");
    // A vector table is refused as halfvec with the statement that converts it.
    pg(&env.db_url())
        .batch_execute("UPDATE pg_extension SET extversion = '0.8.0' WHERE extname = 'vector'")
        .expect("back to 0.8.0");
    env.run(&["process"])
        .env("EMBEDDING_TYPE", "halfvec")
        .output()
        .code(78)
        .stderr_has("ALTER TABLE rag_chunks ALTER COLUMN embedding TYPE halfvec(4) USING embedding::halfvec(4)");
}

fn text_record(doc: &'static str, i: u64, content: &'static str, at: i64) -> Vec<u8> {
    record(&[
        ("doc_id", Val::Str(doc)),
        ("chunk_index", Val::UInt(i)),
        ("content", Val::Str(content)),
        ("created_at", Val::Int(at)),
    ])
}

fn gin_on(url: &str, part: &str) -> i64 {
    crate::support::valid_indexes(url, part, "gin")
}

#[test]
fn text_search_is_added_by_migrate_indexed_when_sealed_and_guarded() {
    let mut env = TestEnv::new().with_db();
    env.set("VECTOR_INDEX_QUIET_SECS", "0");
    env.ready();
    let (today, yesterday) = (today_noonish(), today_noonish() - 86_400);
    let mut file = text_record("cats", 0, "The cats were jumping over fences", yesterday);
    file.extend(text_record("dogs", 0, "A dog sleeps all day", today));
    drop_file(&env, "before.msgpack", &file);
    env.run(&["process"]).output().code(0);
    // TEXT_SEARCH on a table without the column: refused until migrate adds it.
    env.set("TEXT_SEARCH", "english");
    env.run(&["process"])
        .output()
        .code(78)
        .stderr_has("`TEXT_SEARCH` is `english`, but rag_chunks has no content_tsv column")
        .stderr_has("ragspool migrate");
    env.run(&["migrate"])
        .output()
        .code(0)
        .stdout_has("content_tsv added (TEXT_SEARCH=english)");
    let url = env.db_url();
    // Existing rows got their tsvector; English stemming finds "jump" in "jumping".
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM rag_chunks WHERE content_tsv @@ to_tsquery('english', 'jump & cat')"
        ),
        1
    );
    // A partition that self-heal creates carries the generated column too.
    let old = today - 86_400 * 40;
    drop_file(
        &env,
        "old.msgpack",
        &text_record("old", 0, "An old letter about fences", old),
    );
    env.run(&["process"]).output().code(0);
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM rag_chunks WHERE content_tsv @@ to_tsquery('english', 'fence')"
        ),
        2
    );
    // GIN on sealed partitions only, by maintain; status names the rest.
    let sealed = partition_of(yesterday);
    env.run(&["status"])
        .output()
        .code(0)
        .stdout_has("partitions waiting for their GIN index:")
        .stdout_has(&sealed);
    env.run(&["maintain"])
        .output()
        .code(0)
        .stdout_has("built the GIN index on:")
        .stdout_has(&sealed);
    assert_eq!(gin_on(&url, &sealed), 1);
    assert_eq!(gin_on(&url, &partition_of(old)), 1);
    assert_eq!(gin_on(&url, &partition_of(today)), 0, "today's stays open");
    // Another configuration is refused, with the statements that change it.
    let fix = "ALTER TABLE rag_chunks DROP COLUMN content_tsv; ALTER TABLE rag_chunks ADD COLUMN \
               content_tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, content)) STORED;";
    for cmd in ["migrate", "process"] {
        env.run(&[cmd])
            .env("TEXT_SEARCH", "simple")
            .output()
            .code(78)
            .stderr_has("`TEXT_SEARCH` is `simple`, but rag_chunks.content_tsv is tsvector generated as to_tsvector('english'::regconfig, content)")
            .stderr_has(fix);
    }
    env.run(&["check"])
        .env("TEXT_SEARCH", "simple")
        .output()
        .code(1)
        .stdout_has("FAIL  database")
        .stdout_has("content_tsv is tsvector generated as to_tsvector('english'::regconfig, content); note: set TEXT_SEARCH");
    pg(&url).batch_execute(fix).expect("the note's statements");
    env.set("TEXT_SEARCH", "simple");
    env.run(&["process"]).output().code(0);
    // The schema-qualified name is the same configuration.
    env.run(&["process"])
        .env("TEXT_SEARCH", "pg_catalog.simple")
        .output()
        .code(0);
    env.run(&["maintain"]).output().code(0);
    assert_eq!(gin_on(&url, &sealed), 1, "built again for the new column");
    // A name the server lacks, and one that is no name at all.
    env.run(&["migrate"])
        .env("TEXT_SEARCH", "klingon")
        .output()
        .code(78)
        .stderr_has(
            "`TEXT_SEARCH` is `klingon`, but the database server has no text search configuration",
        )
        .stderr_has("english");
    env.run(&["check"])
        .env("TEXT_SEARCH", "english'); DROP TABLE rag_chunks; --")
        .output()
        .code(78)
        .stderr_has("`TEXT_SEARCH`");
    // `always` puts GIN on the parent: every partition has it.
    env.run(&["migrate"])
        .env("VECTOR_INDEX_BUILD", "always")
        .output()
        .code(0);
    assert_eq!(gin_on(&url, &partition_of(today)), 1);
}

/// The README's hybrid query, from the file `make demo` runs, with its psql
/// variables given as literals.
fn hybrid_query(embedding: &str, text: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let sql = std::fs::read_to_string(format!("{root}/examples/hybrid_search.sql"))
        .expect("examples/hybrid_search.sql");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let body: String = sql
        .lines()
        .filter(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        readme.contains(&body),
        "README.md shows another query than examples/hybrid_search.sql"
    );
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    body.replace(":'query_embedding'", &quote(embedding))
        .replace(":'query_text'", &quote(text))
}

#[test]
fn the_hybrid_query_fuses_meaning_and_words() {
    let mut env = halfvec_env(3);
    env.set("TEXT_SEARCH", "english");
    env.ready();
    let docs: [(&'static str, [f32; 3], &'static str); 4] = [
        (
            "alpha",
            [1.0, 0.0, 0.0],
            "how to tune vacuum for large tables",
        ),
        ("beta", [0.9, 0.1, 0.0], "notes on baking bread at home"),
        (
            "gamma",
            [0.0, 1.0, 0.0],
            "a vacuum tuning checklist for postgres tables",
        ),
        ("delta", [0.0, 0.0, 1.0], "holiday photos from the coast"),
    ];
    let file: Vec<u8> = docs
        .iter()
        .flat_map(|(doc, v, content)| {
            record(&[
                ("doc_id", Val::Str(doc)),
                ("chunk_index", Val::UInt(0)),
                ("content", Val::Str(content)),
                ("embedding", Val::Floats(v.to_vec())),
            ])
        })
        .collect();
    drop_file(&env, "docs.msgpack", &file);
    env.run(&["process"]).output().code(0);
    let rows = pg(&env.db_url())
        .query(&hybrid_query("[1,0,0]", "vacuum tables"), &[])
        .expect("the hybrid query");
    let ranked: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    // alpha is first by meaning and matches the words; gamma, far by meaning,
    // passes beta on its words.
    assert_eq!(ranked, vec!["alpha", "gamma", "beta", "delta"]);
}
