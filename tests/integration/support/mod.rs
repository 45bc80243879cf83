//! Shared test support: throwaway servers, a per-test environment (spool tempdir,
//! database, Redis db) and a run builder that spawns the real binary with a
//! cleared environment, a deadline, and a full report when an expectation fails.

pub mod certs;
pub mod citus;
pub mod http;
pub mod servers;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ragspool"))
}

/// Names whose values are secrets in failure reports.
const SECRET_NAMES: [&str; 7] = [
    "DATABASE_URL",
    "SUPABASE_DB_URL",
    "GATE_TOKEN",
    "GATE_SECRET",
    "ALERT_TOKEN",
    "EMBED_API_KEY",
    "REDIS_PASSWORD",
];

/// One test's world: a temp dir with a spool, its logs, and the settings it runs with.
pub struct TestEnv {
    /// Kept alive for the test's duration.
    pub dir: tempfile::TempDir,
    /// Variables every run gets.
    pub vars: BTreeMap<String, String>,
}

impl TestEnv {
    /// A spool under a fresh temp dir, logging beside it.
    #[track_caller]
    pub fn new() -> TestEnv {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("cannot create a temp dir: {e}"),
        };
        let mut vars = BTreeMap::new();
        vars.insert(
            "SPOOL_DIR".into(),
            dir.path().join("spool").display().to_string(),
        );
        vars.insert(
            "RAG_LOG_FILE".into(),
            dir.path()
                .join("logs/rag_ingestion.log")
                .display()
                .to_string(),
        );
        vars.insert("WORKERS".into(), "2".into());
        TestEnv { dir, vars }
    }

    /// Also a database of its own (DATABASE_URL).
    #[track_caller]
    pub fn with_db(mut self) -> TestEnv {
        self.vars
            .insert("DATABASE_URL".into(), servers::new_database());
        self
    }

    /// Also a Redis database index of its own (REDIS_HOST/PORT/DB).
    #[track_caller]
    pub fn with_redis(mut self) -> TestEnv {
        let s = servers::servers();
        let db = servers::new_redis_db();
        self.vars.insert("REDIS_HOST".into(), s.redis.0.clone());
        self.vars.insert("REDIS_PORT".into(), s.redis.1.to_string());
        self.vars.insert("REDIS_DB".into(), db.to_string());
        self
    }

    /// Sets a variable for every run.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }

    /// The spool root.
    pub fn spool(&self) -> PathBuf {
        PathBuf::from(&self.vars["SPOOL_DIR"])
    }

    /// `spool/<sub>`.
    pub fn spool_dir(&self, sub: &str) -> PathBuf {
        self.spool().join(sub)
    }

    /// A run of the binary with `args`.
    pub fn run(&self, args: &[&str]) -> Run<'_> {
        Run {
            env: self,
            args: args.iter().map(|s| s.to_string()).collect(),
            extra: BTreeMap::new(),
            timeout: Duration::from_secs(120),
            cwd: None,
        }
    }

    /// Every file under the spool, relative, sorted (for reports and assertions).
    pub fn listing(&self) -> Vec<String> {
        let mut out = Vec::new();
        list(&self.spool(), &self.spool(), &mut out);
        out.sort();
        out
    }

    /// Files directly in `spool/<sub>`, sorted.
    pub fn files_in(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.spool_dir(sub))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !is_bookkeeping(n))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// The spool's own claim-order records, not spooled files.
fn is_bookkeeping(name: &str) -> bool {
    name == ".seq" || name == ".claim"
}

fn list(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            list(root, &p, out);
        } else if !is_bookkeeping(&e.file_name().to_string_lossy()) {
            out.push(p.strip_prefix(root).unwrap_or(&p).display().to_string());
        }
    }
}

/// A pending run of the binary.
#[must_use]
pub struct Run<'a> {
    env: &'a TestEnv,
    args: Vec<String>,
    extra: BTreeMap<String, Option<String>>,
    timeout: Duration,
    cwd: Option<PathBuf>,
}

/// What a finished run printed and returned.
pub struct Output {
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    report: String,
}

impl Output {
    /// Asserts the exit code, printing everything when it differs.
    #[track_caller]
    pub fn code(self, want: i32) -> Output {
        assert_eq!(
            self.code,
            Some(want),
            "unexpected exit status\n{}",
            self.report
        );
        self
    }

    /// Asserts stdout contains `needle`.
    #[track_caller]
    pub fn stdout_has(self, needle: &str) -> Output {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n{}",
            self.report
        );
        self
    }

    /// Asserts stderr contains `needle`.
    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Output {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n{}",
            self.report
        );
        self
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_str(&self.stdout) {
            Ok(v) => v,
            Err(e) => panic!("stdout is not JSON: {e}\n{}", self.report),
        }
    }
}

impl Run<'_> {
    /// Sets (or overrides) one variable for this run.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.extra.insert(name.into(), Some(value.into()));
        self
    }

    /// Removes one of the test's variables for this run.
    pub fn env_remove(mut self, name: &str) -> Self {
        self.extra.insert(name.into(), None);
        self
    }

    /// Runs in `dir` instead of the test's working directory (for relative paths).
    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// Changes the deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn vars(&self) -> BTreeMap<String, String> {
        let mut vars = self.env.vars.clone();
        for (k, v) in &self.extra {
            match v {
                Some(v) => vars.insert(k.clone(), v.clone()),
                None => vars.remove(k),
            };
        }
        vars
    }

    /// Starts the binary without waiting.
    #[track_caller]
    pub fn spawn(self) -> Child {
        let mut cmd = self.command();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot spawn {}: {e}", bin().display()),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(&self.args)
            .env_clear()
            .envs(self.vars())
            .stdin(Stdio::null());
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Runs to completion with its output discarded; returns its exit code and its
    /// peak resident set in MiB: the kernel's high-water mark (VmHWM), read every
    /// 10 ms until the process exits, so at most its last 10 ms go unseen.
    #[track_caller]
    pub fn peak_rss(self) -> (Option<i32>, f64) {
        let mut child = match self
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("cannot spawn {}: {e}", bin().display()),
        };
        wait_with_peak(&mut child, self.timeout)
    }

    /// Runs to completion (killed at the deadline).
    #[track_caller]
    pub fn output(self) -> Output {
        let vars = self.vars();
        let started = Instant::now();
        let mut child = match self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("cannot spawn {}: {e}", bin().display()),
        };
        let (status, stdout, stderr) = wait_with_deadline(&mut child, self.timeout);
        let code = status.and_then(|s| s.code());
        let shown: Vec<String> = vars
            .iter()
            .map(|(k, v)| {
                let secret = SECRET_NAMES.contains(&k.as_str());
                format!("{k}={}", if secret { "***" } else { v })
            })
            .collect();
        let log = std::fs::read_to_string(vars.get("RAG_LOG_FILE").cloned().unwrap_or_default())
            .unwrap_or_default();
        let log_tail: Vec<&str> = log
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let report = format!(
            "command: ragspool {}\nenv: {}\nstatus: {status:?} after {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- spool\n{}\n--- log tail\n{}",
            self.args.join(" "),
            shown.join(" "),
            started.elapsed(),
            self.env.listing().join("\n"),
            log_tail.join("\n")
        );
        Output {
            code,
            stdout,
            stderr,
            report,
        }
    }
}

/// A random seed for a test, printed so that a failure can be rerun with it:
/// RAGSPOOL_TEST_SEED when set, else from the clock.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("RAGSPOOL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u64 | 1)
                .unwrap_or(7)
        });
    eprintln!("{test}: seed {seed} (RAGSPOOL_TEST_SEED={seed} reruns it)");
    seed
}

/// The next value of a test's linear congruential sequence.
pub fn next_random(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *seed >> 33
}

/// Whether a batch is in flight: a file in a processing/<batch_tag>/ directory.
pub fn batch_in_flight(env: &TestEnv) -> bool {
    std::fs::read_dir(env.spool_dir("processing"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .any(|e| {
            std::fs::read_dir(e.path())
                .into_iter()
                .flatten()
                .flatten()
                .any(|f| f.file_name().to_string_lossy().ends_with(".msgpack"))
        })
}

/// Waits for `child`, killing it at the deadline; returns status and both outputs.
pub fn wait_with_deadline(
    child: &mut Child,
    timeout: Duration,
) -> (Option<ExitStatus>, String, String) {
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    (
        status,
        out_reader.join().unwrap_or_default(),
        err_reader.join().unwrap_or_default(),
    )
}

/// Makes sure `command` is installed, from the Debian package `package` when it
/// is missing and we are root (as the server harness does); fails with an
/// install hint otherwise, never skips.
#[track_caller]
pub fn ensure_command(command: &str, package: &str) {
    let have = |c: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have(command) {
        return;
    }
    let script = format!(
        "export DEBIAN_FRONTEND=noninteractive; \
         apt-get install -y -qq {package} >/dev/null 2>&1 || \
         {{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq {package} >/dev/null 2>&1; }}"
    );
    let installed = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed && have(command),
        "`{command}` is needed; install it with: sudo apt-get install {package}"
    );
}

/// Mode bits of a path.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .map(|m| m.mode() & 0o7777)
        .unwrap_or(0)
}

/// A client for `url`.
#[track_caller]
pub fn pg(url: &str) -> postgres::Client {
    match postgres::Client::connect(url, postgres::NoTls) {
        Ok(c) => c,
        Err(e) => panic!("cannot connect to {url}: {e}"),
    }
}

/// One bigint from a query (count(*) and the like).
#[track_caller]
pub fn count(url: &str, sql: &str) -> i64 {
    match pg(url).query_one(sql, &[]) {
        Ok(r) => r.get(0),
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// Valid indexes of access method `method` (hnsw, gin) on partition `part`.
pub fn valid_indexes(url: &str, part: &str, method: &str) -> i64 {
    count(
        url,
        &format!(
            "SELECT count(*) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
             JOIN pg_am am ON am.oid = i.relam WHERE x.indrelid = '{part}'::regclass \
             AND am.amname = '{method}' AND x.indisvalid"
        ),
    )
}

/// Waits for `child` (killed after `timeout`, then `None`) and returns its exit
/// code and peak resident set in MiB: the kernel's high-water mark (VmHWM), read
/// every 10 ms, so at most its last 10 ms go unseen.
pub fn wait_with_peak(child: &mut Child, timeout: Duration) -> (Option<i32>, f64) {
    let status_file = format!("/proc/{}/status", child.id());
    let deadline = Instant::now() + timeout;
    let mut peak_kib = 0u64;
    loop {
        let hwm = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0);
        peak_kib = peak_kib.max(hwm);
        match child.try_wait() {
            Ok(Some(status)) => return (status.code(), peak_kib as f64 / 1024.0),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return (None, peak_kib as f64 / 1024.0);
            }
        }
    }
}

/// The name of the daily partition of `rag_chunks` that holds unix time `secs`.
pub fn partition_of(secs: i64) -> String {
    let d = time::OffsetDateTime::from_unix_timestamp(secs)
        .expect("a time in range")
        .date();
    format!(
        "rag_chunks_p{:04}_{:02}_{:02}",
        d.year(),
        u8::from(d.month()),
        d.day()
    )
}

/// The type of `rag_chunks.embedding` as PostgreSQL names it (`vector(3)`).
#[track_caller]
pub fn embedding_type(c: &mut postgres::Client) -> String {
    c.query_one(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = 'rag_chunks'::regclass AND attname = 'embedding'",
        &[],
    )
    .expect("the embedding column's type")
    .get(0)
}

/// The flags of one `ragspool gen`: `--files` and `--records` always, each other
/// flag only when set, so that gen's own default applies to one left `None`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gen {
    /// Good files (`--files`).
    pub files: u32,
    /// Records per good file (`--records`).
    pub records: u32,
    /// Broken files besides (`--bad`).
    pub bad: Option<u32>,
    /// Embedding length, 0 for none (`--dim`).
    pub dim: Option<u32>,
    /// Days that created_at spreads over, back from today (`--days`).
    pub days: Option<u32>,
    /// Random seed (`--seed`).
    pub seed: Option<u64>,
}

impl TestEnv {
    /// A spool whose DATABASE_URL is database `db` on `own`, retrying for `retry_secs`; migrated.
    #[track_caller]
    pub fn on_own_pg(own: &servers::OwnPg, db: &str, retry_secs: u32) -> TestEnv {
        let mut env = TestEnv::new();
        env.set("DATABASE_URL", own.create_db(db));
        env.set("RETRY_MAX_SECS", retry_secs.to_string());
        env.ready();
        env
    }

    /// The test database's URL.
    pub fn db_url(&self) -> String {
        self.vars.get("DATABASE_URL").cloned().unwrap_or_default()
    }

    /// `ragspool gen` of `files` good files of `records` records (today's dates) and
    /// `bad` broken files; must succeed.
    #[track_caller]
    pub fn generate(&self, files: u32, records: u32, bad: u32) {
        self.generate_with(Gen {
            files,
            records,
            days: Some(1),
            bad: Some(bad),
            ..Gen::default()
        });
    }

    /// `ragspool gen` with the flags `opts` sets; must succeed.
    #[track_caller]
    pub fn generate_with(&self, opts: Gen) -> Output {
        let mut args = vec![
            "gen".to_string(),
            "--files".into(),
            opts.files.to_string(),
            "--records".into(),
            opts.records.to_string(),
        ];
        let flags = [
            ("--dim", opts.dim.map(u64::from)),
            ("--days", opts.days.map(u64::from)),
            ("--seed", opts.seed),
            ("--bad", opts.bad.map(u64::from)),
        ];
        for (flag, value) in flags {
            if let Some(value) = value {
                args.push(flag.into());
                args.push(value.to_string());
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args).output().code(0)
    }

    /// init + migrate.
    #[track_caller]
    pub fn ready(&self) {
        self.run(&["init"]).output().code(0);
        self.run(&["migrate"]).output().code(0);
    }

    /// Files anywhere under `spool/<sub>` (recursively).
    pub fn count_files(&self, sub: &str, suffix: &str) -> usize {
        self.listing()
            .iter()
            .filter(|p| p.starts_with(&format!("{sub}/")) && p.ends_with(suffix))
            .count()
    }
}
