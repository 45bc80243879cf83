//! Producers (SPEC §14): `import` of JSON Lines into incoming/, read by `process`
//! exactly once; bad and adversarial inputs placing nothing; `validate` saying
//! what `process` writes in reason.json.

use crate::support::{TestEnv, bin, count};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix seconds now.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `lines` (one JSON value each) to `name` in the test's directory.
fn write_jsonl(env: &TestEnv, name: &str, lines: &[Value]) -> PathBuf {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    write_raw(env, name, text.as_bytes())
}

fn write_raw(env: &TestEnv, name: &str, bytes: &[u8]) -> PathBuf {
    let path = env.dir.path().join(name);
    std::fs::write(&path, bytes).expect("write input");
    path
}

/// A chunk of `doc` with optional vector and extras.
fn chunk(doc: &str, index: u32, content: &str, extra: Value) -> Value {
    let mut v = json!({"doc_id": doc, "chunk_index": index, "content": content});
    if let (Some(map), Value::Object(more)) = (v.as_object_mut(), extra) {
        map.extend(more);
    }
    v
}

/// Asserts that nothing reached incoming/ and nothing is left in tmp/.
#[track_caller]
fn assert_nothing_placed(env: &TestEnv) {
    assert_eq!(env.files_in("incoming"), Vec::<String>::new(), "incoming/");
    assert_eq!(env.files_in("tmp"), Vec::<String>::new(), "tmp/");
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// What a run with its own standard input gave: exit code, stdout, stderr and
/// peak resident set in MiB.
struct Fed {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    peak_mib: f64,
}

/// Runs the binary with `args`, `feed` writing its standard input on a thread of
/// its own, while the peak RSS (VmHWM) is sampled.
fn run_fed(
    env: &TestEnv,
    args: &[&str],
    feed: impl FnOnce(&mut dyn Write) -> std::io::Result<()> + Send + 'static,
) -> Fed {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_clear()
        .envs(&env.vars)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    let mut child = cmd.spawn().expect("spawn ragspool");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        // A refused input may be closed early: a broken pipe is expected then.
        let _ = feed(&mut stdin);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let (code, peak_mib) = crate::support::wait_with_peak(&mut child, Duration::from_secs(300));
    let _ = writer.join();
    Fed {
        code,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        peak_mib,
    }
}

#[test]
fn an_import_is_ingested_by_process_exactly_once() {
    let env = TestEnv::new().with_db();
    env.ready();
    let now = now_secs();
    let stamp = time_rfc3339(now);
    let mut lines = Vec::new();
    for d in 0..6u32 {
        for c in 0..3u32 {
            let extra = match d % 3 {
                0 => json!({"embedding": [0.25, -1, 3e-3], "created_at": stamp}),
                1 => {
                    json!({"metadata": {"d": d, "tags": ["x", "é"]}, "source": "s", "created_at": now})
                }
                _ => json!({"chunk_count": 3}),
            };
            lines.push(chunk(
                &format!("doc{d}"),
                c,
                &format!("text {d}.{c} ünïcode"),
                extra,
            ));
        }
    }
    let input = write_jsonl(&env, "chunks.jsonl", &lines);
    let out = env
        .run(&["import", "--max-records", "4", path_str(&input)])
        .env_remove("DATABASE_URL")
        .output()
        .code(0)
        .stdout_has("imported 6 spool file(s), 18 record(s)");
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    assert_eq!(env.files_in("incoming").len(), 6);
    assert_eq!(env.files_in("tmp"), Vec::<String>::new());
    env.run(&["process"]).output().code(0);
    let url = env.db_url();
    assert_eq!(count(&url, "SELECT count(*) FROM rag_chunks"), 18);
    assert_eq!(
        count(
            &url,
            "SELECT count(DISTINCT (doc_id, chunk_index)) FROM rag_chunks"
        ),
        18
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM rag_chunks WHERE embedding = '{0.25,-1,0.003}'::real[]"
        ),
        6
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM rag_chunks WHERE metadata->'tags'->>1 = 'é' AND source = 's'"
        ),
        6
    );
    assert_eq!(
        count(
            &url,
            &format!("SELECT count(*) FROM rag_chunks WHERE created_at = to_timestamp({now})")
        ),
        12
    );
    assert_eq!(env.count_files("archive", ".msgpack"), 6);

    // Delete records: an import that deletes doc0 and doc1, and adds doc9.
    let lines = [
        json!({"doc_id": "doc0", "delete": true}),
        json!({"doc_id": "doc1", "delete": true}),
        chunk("doc9", 0, "new", json!({})),
    ];
    let input = write_jsonl(&env, "deletes.jsonl", &lines);
    env.run(&["import", path_str(&input)]).output().code(0);
    env.run(&["process"]).output().code(0);
    assert_eq!(count(&url, "SELECT count(*) FROM rag_chunks"), 13);
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM rag_chunks WHERE doc_id IN ('doc0', 'doc1')"
        ),
        0
    );
}

/// RFC 3339 UTC text for unix seconds.
fn time_rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn replace_mode_follows_input_order_across_inputs_and_imports() {
    let mut env = TestEnv::new().with_db();
    env.set("DOC_MODE", "replace");
    env.ready();
    let version = |v: u32, chunks: u32| -> Vec<Value> {
        (0..chunks)
            .map(|c| chunk("doc", c, &format!("v{v}"), json!({"chunk_count": chunks})))
            .chain([chunk(&format!("other{v}"), 0, "o", json!({}))])
            .collect()
    };
    let one = write_jsonl(&env, "v1.jsonl", &version(1, 3));
    let two = write_jsonl(&env, "v2.jsonl", &version(2, 2));
    let three = write_jsonl(&env, "v3.jsonl", &version(3, 4));
    // One record per file: many files, all claimed by one batch.
    env.run(&[
        "import",
        "--max-records",
        "1",
        path_str(&one),
        path_str(&two),
    ])
    .output()
    .code(0);
    env.run(&["import", "--max-records", "1", path_str(&three)])
        .output()
        .code(0);
    env.run(&["process"]).output().code(0);
    let url = env.db_url();
    assert_eq!(
        count(&url, "SELECT count(*) FROM rag_chunks WHERE doc_id = 'doc'"),
        4
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM rag_chunks WHERE doc_id = 'doc' AND content = 'v3'"
        ),
        4
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM rag_chunks WHERE doc_id LIKE 'other%'"
        ),
        3
    );
}

#[test]
fn files_split_by_records_and_bytes_keep_each_document_whole() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let mut lines = Vec::new();
    for (d, n) in [(0u32, 2u32), (1, 2), (2, 9), (3, 1), (4, 3), (5, 3)] {
        for c in 0..n {
            let pad = "x".repeat(200);
            lines.push(chunk(&format!("d{d}"), c, &pad, json!({"chunk_count": n})));
        }
    }
    let input = write_jsonl(&env, "split.jsonl", &lines);
    env.run(&["import", "--max-records", "4", path_str(&input)])
        .output()
        .code(0);
    // chunk_count on every record: validate passing proves every document whole.
    let files = spooled(&env);
    let counts = validate_counts(&env, &files);
    assert_eq!(
        counts,
        [(4, 2), (9, 1), (4, 2), (3, 1)],
        "(records, documents)"
    );

    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let input = write_jsonl(&env, "split.jsonl", &lines);
    // Room for three 247-byte records a file, not four.
    env.run(&["import", "--max-bytes", "800", path_str(&input)])
        .output()
        .code(0);
    let counts = validate_counts(&env, &spooled(&env));
    assert_eq!(counts, [(2, 1), (2, 1), (9, 1), (1, 1), (3, 1), (3, 1)]);
}

/// The files in incoming/, full paths, in name order.
fn spooled(env: &TestEnv) -> Vec<String> {
    env.files_in("incoming")
        .iter()
        .map(|f| env.spool_dir("incoming").join(f).display().to_string())
        .collect()
}

/// `validate --json` of `files`: (records, documents) of each, all good.
fn validate_counts(env: &TestEnv, files: &[String]) -> Vec<(u64, u64)> {
    let mut args = vec!["validate", "--json"];
    args.extend(files.iter().map(String::as_str));
    let out = env.run(&args).output().code(0);
    out.stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("JSON line");
            assert_eq!(v["ok"], true, "{l}");
            (
                v["records"].as_u64().unwrap_or(0),
                v["documents"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn standard_input_is_an_input() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let fed = run_fed(&env, &["import", "-"], |w| {
        for c in 0..5 {
            writeln!(w, "{}", chunk("d", c, "from a pipe", json!({})))?;
        }
        Ok(())
    });
    assert_eq!(fed.code, Some(0), "{}{}", fed.stdout, fed.stderr);
    assert!(
        fed.stdout
            .contains("imported <stdin>: 1 spool file(s), 5 record(s)"),
        "{}",
        fed.stdout
    );
    assert_eq!(env.files_in("incoming").len(), 1);
}

#[test]
fn usage_and_permission_errors_say_what_to_do() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let input = write_jsonl(&env, "in.jsonl", &[chunk("d", 0, "x", json!({}))]);
    let input = path_str(&input);
    env.run(&["import", "-", "-"]).output().code(2);
    env.run(&["import"])
        .output()
        .code(2)
        .stderr_has("takes at least 1 argument(s)");
    env.run(&["import", "--max-records", "0", input])
        .output()
        .code(2);
    env.run(&["import", "--max-bytes", "300000000", input])
        .output()
        .code(2)
        .stderr_has("MAX_FILE_BYTES (268435456)");
    env.run(&["validate"]).output().code(2);
    // A user who may not write tmp/ is told whose spool it is (78, never 75).
    use std::os::unix::fs::PermissionsExt;
    let open = std::fs::Permissions::from_mode(0o755);
    for dir in [
        env.dir.path().to_path_buf(),
        env.spool(),
        env.spool_dir("incoming"),
    ] {
        std::fs::set_permissions(&dir, open.clone()).expect("chmod");
    }
    env.run(&["--user", "nobody", "import", input])
        .output()
        .code(78)
        .stderr_has("SPOOL_DIR=")
        .stderr_has("note: run import as the owner of the spool");
    assert_nothing_placed(&env);
}

#[test]
fn every_bad_line_is_named_and_its_input_places_nothing_while_the_others_go_on() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let good = write_jsonl(&env, "good.jsonl", &[chunk("g", 0, "fine", json!({}))]);
    let mut bad = Vec::new();
    let lines: [&[u8]; 9] = [
        br#"{"doc_id":"a","chunk_index":0,"content":"ok"}"#,
        b"{\"doc_id\":\"a\",\"chunk_index\":1,\"content\":\"bad \xff byte\"}",
        br#"{"doc_id":"b","chunk_index":0,"content":"x","embedding":[0.5,NaN]}"#,
        br#"{"doc_id":"b","chunk_index":1,"content":"x","embedding":[1e39]}"#,
        br#"{"doc_id":"a","chunk_index":2,"content":"x"}"#,
        br#"{"doc_id":"c","chunk_index":0,"content":"x","created_at":"last tuesday"}"#,
        br#"{"doc_id":"d","chunk_index":0,"content":"x","chunk_count":2}"#,
        br#"{"doc_id":"e","chunk_index":0}"#,
        br#"{"doc_id":"f","chunk_index":0,"content":"x","embedding":[1,2]}"#,
    ];
    for l in lines {
        bad.extend_from_slice(l);
        bad.push(b'\n');
    }
    let bad = write_raw(&env, "bad.jsonl", &bad);
    let missing = env.dir.path().join("gone.jsonl");
    let out = env
        .run(&[
            "import",
            path_str(&bad),
            path_str(&missing),
            path_str(&good),
        ])
        .env("EMBED_DIM", "3")
        .output()
        .code(1)
        .stdout_has(&format!(
            "imported {}: 1 spool file(s), 1 record(s)",
            path_str(&good)
        ))
        .stdout_has(&format!(
            "refused {}: 8 error(s); nothing placed",
            path_str(&bad)
        ))
        .stdout_has("; 2 of 3 input(s) refused");
    let b = path_str(&bad);
    let want = [
        (
            format!("{b}:2: "),
            "not valid UTF-8 (at byte 46 of the line)",
        ),
        (format!("{b}:3: "), "`NaN` is not a JSON number"),
        (
            format!("{b}:4: "),
            "embedding[0] is beyond the range of f32",
        ),
        (
            format!("{b}:5: "),
            "document `a` comes back after other documents (it is on lines 1-1 already)",
        ),
        (
            format!("{b}:6: "),
            "created_at is not an RFC 3339 timestamp",
        ),
        (
            format!("{b}:7: "),
            "document `d` declares chunk_count 2 but the file holds 1 chunk(s)",
        ),
        (format!("{b}:8: "), "required key `content` is missing"),
        (format!("{b}:9: "), "embedding has 2 values, EMBED_DIM is 3"),
        (
            format!("{}: ", path_str(&missing)),
            "cannot open: No such file",
        ),
    ];
    let got: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(got.len(), want.len(), "{}", out.stderr);
    for (got, (prefix, text)) in got.iter().zip(&want) {
        assert!(
            got.starts_with(prefix.as_str()) && got.contains(text),
            "got  {got}\nwant {prefix}...{text}"
        );
    }
    // Only the good input's file is in incoming/.
    assert_eq!(env.files_in("incoming").len(), 1);
    assert_eq!(env.files_in("tmp"), Vec::<String>::new());
}

#[test]
fn a_two_gigabyte_line_is_refused_without_being_held() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let fed = run_fed(&env, &["import", "-"], |w| {
        w.write_all(b"{\"doc_id\":\"x\",\"chunk_index\":0,\"content\":\"")?;
        let block = vec![b'a'; 1 << 20];
        for _ in 0..2048 {
            w.write_all(&block)?;
        }
        w.write_all(b"\"}\n")?;
        writeln!(w, "{}", chunk("after", 0, "short", json!({})))
    });
    assert_eq!(fed.code, Some(1), "{}{}", fed.stdout, fed.stderr);
    assert!(
        fed.stderr
            .starts_with("<stdin>:1: the line is longer than 268435456 bytes"),
        "{}",
        fed.stderr
    );
    assert!(fed.stderr.contains("MAX_FILE_BYTES"), "{}", fed.stderr);
    // The line is held up to MAX_FILE_BYTES (256 MiB), never 2 GiB.
    assert!(fed.peak_mib < 400.0, "peak RSS {:.0} MiB", fed.peak_mib);
    assert_nothing_placed(&env);

    // With a smaller MAX_FILE_BYTES, a smaller hold.
    let mut env = env;
    env.set("MAX_FILE_BYTES", (1u64 << 20).to_string());
    let fed = run_fed(&env, &["import", "-"], |w| {
        let block = vec![b' '; 1 << 20];
        for _ in 0..128 {
            w.write_all(&block)?;
        }
        Ok(())
    });
    assert_eq!(fed.code, Some(1), "{}", fed.stderr);
    assert!(
        fed.stderr
            .contains(":1: the line is longer than 1048576 bytes"),
        "{}",
        fed.stderr
    );
    assert!(fed.peak_mib < 48.0, "peak RSS {:.0} MiB", fed.peak_mib);
    assert_nothing_placed(&env);
}

#[test]
fn an_input_that_ends_mid_line_or_cannot_be_read_places_nothing() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    // A writer that dies in the middle of a line: the FIFO ends there.
    let fifo = env.dir.path().join("feed.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let writer_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&writer_path)
            .expect("open fifo");
        for c in 0..3000 {
            writeln!(f, "{}", chunk(&format!("d{c}"), 0, "streamed", json!({}))).expect("write");
        }
        f.write_all(br#"{"doc_id":"cut","chunk_ind"#)
            .expect("write");
    });
    let out = env
        .run(&["import", "--max-records", "100", path_str(&fifo)])
        .output()
        .code(1);
    let _ = writer.join();
    assert!(
        out.stderr
            .starts_with(&format!("{}:3001: invalid JSON", path_str(&fifo))),
        "{}",
        out.stderr
    );
    assert_nothing_placed(&env);

    // A read that fails (a directory given as input).
    let out = env
        .run(&["import", path_str(env.dir.path())])
        .output()
        .code(1);
    assert!(
        out.stderr
            .contains(": cannot read after line 0: Is a directory"),
        "{}",
        out.stderr
    );
    assert_nothing_placed(&env);
}

/// An import reading `fifo`, fed 500 chunks, once it has staged 40 files in tmp/
/// while its input is still open; the FIFO's writing end is returned open.
fn import_staging(env: &TestEnv, fifo: &Path) -> (std::process::Child, std::fs::File) {
    let child = env
        .run(&["import", "--max-records", "10", path_str(fifo)])
        .spawn();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .expect("open fifo");
    for c in 0..500 {
        writeln!(f, "{}", chunk(&format!("d{c}"), 0, "x", json!({}))).expect("write");
    }
    f.flush().expect("flush");
    let deadline = Instant::now() + Duration::from_secs(30);
    while env
        .files_in("tmp")
        .iter()
        .filter(|n| n.ends_with(".staged"))
        .count()
        < 40
    {
        assert!(
            Instant::now() < deadline,
            "nothing staged: {:?}",
            env.listing()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, f)
}

#[test]
fn an_interrupted_import_removes_what_it_staged() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let fifo = env.dir.path().join("slow.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let (child, f) = import_staging(&env, &fifo);
    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(killed.is_ok_and(|s| s.success()));
    let mut child = child;
    let status = child.wait().expect("wait");
    drop(f);
    assert_eq!(status.code(), None, "died of the signal");
    assert_nothing_placed(&env);

    // A crash (SIGKILL) leaves staged files in tmp/, which the next import clears.
    let (child, f) = import_staging(&env, &fifo);
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
    drop(f);
    assert!(!env.files_in("tmp").is_empty());
    assert!(env.files_in("incoming").is_empty());
    let input = write_jsonl(&env, "next.jsonl", &[chunk("n", 0, "x", json!({}))]);
    env.run(&["import", path_str(&input)]).output().code(0);
    assert_eq!(env.files_in("tmp"), Vec::<String>::new());
    assert_eq!(env.files_in("incoming").len(), 1);
}

#[test]
fn a_full_disk_places_nothing_and_exits_75() {
    let mut env = TestEnv::new();
    let spool = env.dir.path().join("small-spool");
    std::fs::create_dir_all(&spool).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2M,mode=0750", "tmpfs"])
        .arg(&spool)
        .status();
    assert!(
        mounted.is_ok_and(|s| s.success()),
        "mounting a small tmpfs needs root (CI runs as root)"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(spool.clone());
    env.set("SPOOL_DIR", spool.display().to_string());
    env.run(&["init"]).output().code(0);
    let small = write_jsonl(&env, "small.jsonl", &[chunk("s", 0, "fits", json!({}))]);
    let big: Vec<Value> = (0..400)
        .map(|c| chunk(&format!("b{c}"), 0, &"y".repeat(10_000), json!({})))
        .collect();
    let big = write_jsonl(&env, "big.jsonl", &big);
    let out = env
        .run(&[
            "import",
            "--max-records",
            "50",
            path_str(&small),
            path_str(&big),
        ])
        .output()
        .code(75);
    assert!(
        out.stderr.contains("No space left on device"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("nothing of this input reached incoming/"),
        "{}",
        out.stderr
    );
    let small_line = format!("imported {}: 1 spool file(s)", path_str(&small));
    assert!(out.stdout.contains(&small_line), "{}", out.stdout);
    // The first input is in; of the second, nothing, and tmp/ is clean.
    assert_eq!(env.files_in("incoming").len(), 1);
    assert_eq!(env.files_in("tmp"), Vec::<String>::new());
}

#[test]
fn validate_says_what_process_writes_in_reason_json() {
    let env = TestEnv::new().with_db();
    env.ready();
    env.generate(2, 30, 7);
    let names = env.files_in("incoming");
    let copies = env.dir.path().join("copies");
    std::fs::create_dir_all(&copies).expect("mkdir");
    for n in &names {
        std::fs::copy(env.spool_dir("incoming").join(n), copies.join(n)).expect("copy");
    }
    let paths: Vec<String> = names
        .iter()
        .map(|n| copies.join(n).display().to_string())
        .collect();
    let mut args = vec!["validate", "--json"];
    args.extend(paths.iter().map(String::as_str));
    let out = env.run(&args).env_remove("DATABASE_URL").output().code(1);
    let verdicts: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(verdicts.len(), 9);
    let mut text_args = vec!["validate"];
    text_args.extend(paths.iter().map(String::as_str));
    let text = env.run(&text_args).output().code(1);
    assert!(
        text.stdout.ends_with("9 file(s): 2 ok, 7 bad\n"),
        "{}",
        text.stdout
    );

    env.run(&["process"]).output().code(1);
    let reasons: Vec<(String, Value)> = env
        .listing()
        .into_iter()
        .filter(|p| p.starts_with("failed/") && p.ends_with(".reason.json"))
        .map(|p| {
            let body = std::fs::read_to_string(env.spool().join(&p)).expect("reason");
            let name = Path::new(&p)
                .file_name()
                .map(|n| {
                    n.to_string_lossy()
                        .trim_end_matches(".reason.json")
                        .to_string()
                })
                .unwrap_or_default();
            (name, serde_json::from_str(&body).expect("reason JSON"))
        })
        .collect();
    assert_eq!(reasons.len(), 7);
    for (name, verdict) in names.iter().zip(&verdicts) {
        match reasons.iter().find(|(n, _)| n == name) {
            Some((_, reason)) => {
                assert_eq!(verdict["ok"], false, "{name}");
                for key in ["error", "record_index", "byte_offset"] {
                    assert_eq!(verdict[key], reason[key], "{name}: {key}");
                }
                let line = text
                    .stdout
                    .lines()
                    .find(|l| l.contains(name.as_str()))
                    .unwrap_or_default();
                let error = reason["error"].as_str().unwrap_or_default();
                assert!(line.contains(&format!(": bad: {error}")), "{line}");
            }
            None => {
                assert_eq!(verdict["ok"], true, "{name}");
                assert_eq!(verdict["records"], 30);
                assert_eq!(verdict["with_vectors"], 30);
            }
        }
    }
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 60);

    // A good file of an import, and one cut short.
    let input = write_jsonl(
        &env,
        "v.jsonl",
        &[chunk("v", 0, "x", json!({"embedding": [1, 0]}))],
    );
    env.run(&["import", path_str(&input)]).output().code(0);
    let file = spooled(&env).pop().unwrap_or_default();
    let out = env.run(&["validate", &file]).output().code(0);
    assert!(
        out.stdout
            .contains(": ok: 1 records, 1 documents, 0 delete records, 1 with vectors, 0 without,"),
        "{}",
        out.stdout
    );
    let bytes = std::fs::read(&file).expect("read");
    let cut = copies.join("cut.msgpack");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).expect("write");
    let out = env
        .run(&["validate", "--json", path_str(&cut)])
        .output()
        .code(1);
    let v = out.json();
    assert_eq!(v["record_index"], 0);
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("truncated"),
        "{v}"
    );
}

#[test]
fn a_crash_in_the_middle_of_a_commit_is_finished_by_the_next_import() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let lines: Vec<Value> = (0..6)
        .flat_map(|d| (0..2).map(move |c| chunk(&format!("d{d}"), c, "text", json!({}))))
        .collect();
    let input = write_jsonl(&env, "six.jsonl", &lines);
    // Aborted (as a SIGKILL would leave it) right after its second rename.
    let out = env
        .run(&["import", "--max-records", "2", path_str(&input)])
        .env("RAGSPOOL_FAILPOINT", "import-renamed:2")
        .output();
    assert_eq!(out.code, None, "aborted: {}", out.stderr);
    assert_eq!(env.files_in("incoming").len(), 2);
    // The next import, of anything, finishes that commit before its own.
    let other = write_jsonl(&env, "one.jsonl", &[chunk("e", 0, "text", json!({}))]);
    env.run(&["import", path_str(&other)]).output().code(0);
    assert_eq!(env.files_in("tmp"), Vec::<String>::new(), "tmp/");
    let counts = validate_counts(&env, &spooled(&env));
    assert_eq!(
        counts,
        [(2, 1), (2, 1), (2, 1), (2, 1), (2, 1), (2, 1), (1, 1)],
        "six files of the first input, one of the second"
    );
}

#[test]
fn a_delete_after_rows_of_its_document_is_refused_and_one_before_them_replaces() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let delete = json!({"doc_id": "d", "delete": true});
    let after = write_jsonl(
        &env,
        "after.jsonl",
        &[
            chunk("d", 0, "a", json!({})),
            chunk("d", 1, "b", json!({})),
            delete.clone(),
        ],
    );
    let out = env.run(&["import", path_str(&after)]).output().code(1);
    assert!(
        out.stderr
            .contains("after.jsonl:3: deletes document `d` after its rows on lines 1-2"),
        "{}",
        out.stderr
    );
    assert_nothing_placed(&env);
    let before = write_jsonl(
        &env,
        "before.jsonl",
        &[delete, chunk("d", 0, "a", json!({}))],
    );
    env.run(&["import", path_str(&before)]).output().code(0);
    assert_eq!(env.files_in("incoming").len(), 1);
}
