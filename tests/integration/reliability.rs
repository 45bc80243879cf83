//! The promises, each proved by a test that can fail: nothing lost, nothing
//! duplicated, bad input gets a clear error, nobody gets in, secrets stay secret.

use crate::support::http::{HttpServer, Receivers, Request, Response};
use crate::support::servers::{OwnPg, OwnRedis};
use crate::support::{Gen, TestEnv, count, wait_with_deadline};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `process` until it exits 0 (an outage may make a run exit 75 first).
#[track_caller]
fn process_until_clean(env: &TestEnv) {
    for _ in 0..5 {
        let out = env.run(&["process"]).output();
        match out.code {
            Some(0) => return,
            Some(75) => std::thread::sleep(Duration::from_millis(500)),
            _ => {
                out.code(0);
                return;
            }
        }
    }
    panic!("process never came clean");
}

#[test]
fn postgres_restarted_mid_copy_and_mid_commit_loses_and_duplicates_nothing() {
    let own = OwnPg::start();
    let env = TestEnv::on_own_pg(&own, "restarts", 20);
    env.generate(30, 300, 0);
    let mut child = env.run(&["process"]).env("BATCH_MAX_FILES", "5").spawn();
    let mut s = crate::support::test_seed("postgres_restarted_mid_copy_and_mid_commit");
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(
            100 + crate::support::next_random(&mut s) % 300,
        ));
        own.stop();
        std::thread::sleep(Duration::from_millis(300));
        own.restart();
    }
    let (status, _, stderr) = wait_with_deadline(&mut child, Duration::from_secs(120));
    let code = status.and_then(|s| s.code());
    assert!(matches!(code, Some(0) | Some(75)), "{code:?}\n{stderr}");
    // The restarts landed in the run: it lost its connection and retried.
    let log =
        std::fs::read_to_string(env.dir.path().join("logs/rag_ingestion.log")).unwrap_or_default();
    let retried = log
        .lines()
        .filter(|l| l.contains("(transient; retrying)") || l.contains("; reconnecting"))
        .count();
    assert!(retried > 0, "no retry in the log:\n{log}");
    eprintln!("{retried} retry line(s) in the log");
    process_until_clean(&env);
    let url = env.db_url();
    assert_eq!(count(&url, "SELECT count(*) FROM rag_chunks"), 9000);
    assert_eq!(
        count(
            &url,
            "SELECT coalesce(sum(rows), 0)::bigint FROM ragspool_manifest WHERE status = 'done'"
        ),
        9000
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(DISTINCT (doc_id, chunk_index)) FROM rag_chunks"
        ),
        9000
    );
    assert_eq!(env.count_files("archive", ".msgpack"), 30);
    assert_eq!(env.count_files("failed", ".msgpack"), 0);
}

#[test]
fn a_flapping_gate_gets_every_event_once_per_id_and_in_order() {
    // What the gate accepted: (webhook-id, event, batch_tag), in arrival order.
    let accepted: Arc<Mutex<Vec<(String, String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let log = accepted.clone();
    let gate = HttpServer::start(move |req, i| {
        let roll = (i as u64).wrapping_mul(2_654_435_761) % 100;
        if roll < 20 {
            return Response::status(503);
        }
        if roll < 28 {
            return Response::status(0); // connection reset
        }
        let v = req.json();
        let entry = (
            req.header("webhook-id").unwrap_or_default().to_string(),
            v["event"].as_str().unwrap_or_default().to_string(),
            v["batch_tag"].as_str().unwrap_or_default().to_string(),
        );
        log.lock().map(|mut l| l.push(entry)).unwrap_or(());
        if roll < 36 {
            std::thread::sleep(Duration::from_millis(400)); // the client times out; the gate got it
        }
        Response::status(200)
    });
    let mut env = TestEnv::new().with_db();
    env.set("GATE_URL", gate.url.clone());
    env.set("GATE_TIMEOUT_MS", "250");
    env.set("RETRY_MAX_SECS", "30");
    env.set("BATCH_MAX_FILES", "1");
    env.ready();
    env.generate(100, 2, 0);
    process_until_clean(&env);
    let accepted = accepted.lock().map(|a| a.clone()).unwrap_or_default();
    let mut by_id: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, event, tag) in &accepted {
        if by_id
            .insert(id.clone(), (event.clone(), tag.clone()))
            .is_none()
        {
            order.entry(tag.clone()).or_default().push(event.clone());
        }
    }
    assert_eq!(
        by_id.len(),
        200,
        "100 batches, two events each, every one delivered"
    );
    assert_eq!(order.len(), 100);
    for (tag, events) in &order {
        assert_eq!(events, &["gate.open", "gate.done"], "batch {tag}");
    }
}

#[test]
fn a_full_disk_loses_nothing_and_says_so() {
    let mut env = TestEnv::new().with_db();
    let spool = env.dir.path().join("small-spool");
    std::fs::create_dir_all(&spool).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4M,mode=0750", "tmpfs"])
        .arg(&spool)
        .status();
    assert!(
        mounted.is_ok_and(|s| s.success()),
        "mounting a small tmpfs needs root (CI runs as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(spool.clone());
    env.set("SPOOL_DIR", spool.display().to_string());
    env.ready();
    env.generate(3, 20, 2);
    // Fill what is left, so writing a reason file or an event fails.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "count=200"])
        .arg(format!("of={}/filler", spool.display()))
        .output();
    let out = env.run(&["process"]).output();
    assert!(
        out.code == Some(75),
        "expected 75 on a full disk:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("No space left on device"),
        "{}",
        out.stderr
    );
    let spread = ["incoming", "processing", "archive", "failed"]
        .iter()
        .map(|d| env.count_files(d, ".msgpack"))
        .sum::<usize>();
    assert_eq!(spread, 5, "every file is somewhere: {:?}", env.listing());
    let _ = std::fs::remove_file(spool.join("filler"));
    env.run(&["process"]).output().code(1);
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 60);
    assert_eq!(env.count_files("archive", ".msgpack"), 3);
    assert_eq!(env.count_files("failed", ".reason.json"), 2);
}

#[test]
fn permission_denied_on_archive_keeps_files_and_rerun_is_exact() {
    let mut env = TestEnv::new().with_db();
    let _ = std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755));
    env.run(&["init", "--owner", "nobody:nogroup"])
        .output()
        .code(0);
    env.set("RAGSPOOL_USER", "nobody");
    env.run(&["migrate"]).output().code(0);
    env.generate(4, 5, 0);
    let archive = env.spool_dir("archive");
    let _ = std::os::unix::fs::chown(&archive, Some(0), Some(0));
    let out = env.run(&["process"]).output().code(75);
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    assert_eq!(
        env.count_files("failed", ".msgpack"),
        0,
        "a filesystem problem never fails input"
    );
    assert_eq!(
        env.count_files("processing", ".msgpack") + env.count_files("incoming", ".msgpack"),
        4
    );
    let _ = std::os::unix::fs::chown(&archive, Some(65534), Some(65534));
    env.run(&["process"]).output().code(0);
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 20);
    assert_eq!(env.count_files("archive", ".msgpack"), 4);
}

#[test]
fn a_file_growing_in_place_or_renamed_during_a_scan_is_taken_whole_and_once() {
    use std::io::Write;
    let gate = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    env.set("GATE_URL", gate.url.clone());
    env.set("BATCH_MAX_AGE_SECS", "0");
    env.ready();
    env.generate_with(Gen {
        files: 2,
        records: 40,
        days: Some(1),
        seed: Some(3),
        ..Gen::default()
    });
    let samples: Vec<std::path::PathBuf> = {
        let mut v: Vec<_> = std::fs::read_dir(env.spool_dir("incoming"))
            .expect("ls")
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    };
    let held = env.dir.path().join("held");
    std::fs::create_dir_all(&held).expect("mkdir");
    for p in &samples {
        std::fs::rename(p, held.join(p.file_name().unwrap_or_default())).expect("move aside");
    }
    let mut child = env.run(&["watch"]).spawn();
    std::thread::sleep(Duration::from_millis(800));
    let first = std::fs::read(held.join(samples[0].file_name().unwrap_or_default())).expect("read");
    let growing = env.spool_dir("incoming").join("growing.msgpack");
    let mut f = std::fs::File::create(&growing).expect("create");
    f.write_all(&first[..first.len() / 2]).expect("write half");
    f.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(growing.exists(), "a file still being written was taken");
    f.write_all(&first[first.len() / 2..]).expect("write rest");
    drop(f);
    let second = held.join(samples[1].file_name().unwrap_or_default());
    let tmp = env.spool_dir("tmp").join("r.msgpack");
    std::fs::rename(&second, &tmp).expect("to tmp");
    std::fs::rename(&tmp, env.spool_dir("incoming").join("a.msgpack")).expect("into incoming");
    let _ = std::fs::rename(
        env.spool_dir("incoming").join("a.msgpack"),
        env.spool_dir("incoming").join("b.msgpack"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.count_files("archive", ".msgpack") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = wait_with_deadline(&mut child, Duration::from_secs(30));
    assert_eq!(
        env.count_files("archive", ".msgpack"),
        2,
        "{:?}",
        env.listing()
    );
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 80);
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(DISTINCT (doc_id, chunk_index)) FROM rag_chunks"
        ),
        80
    );
}

#[test]
fn hostile_spool_input_is_refused_or_failed_never_followed() {
    use std::os::unix::ffi::OsStrExt;
    let mut env = TestEnv::new().with_db();
    env.set("MAX_FILE_BYTES", "4000");
    env.ready();
    env.generate_with(Gen {
        files: 1,
        records: 2,
        dim: Some(4),
        days: Some(1),
        ..Gen::default()
    });
    let inc = env.spool_dir("incoming");
    let outside = env.dir.path().join("outside.msgpack");
    std::fs::copy(inc.join(env.files_in("incoming")[0].clone()), &outside).expect("copy");
    let before = std::fs::read(&outside).expect("read");
    std::os::unix::fs::symlink(&outside, inc.join("symlink.msgpack")).expect("symlink");
    std::fs::hard_link(&outside, inc.join("hardlink.msgpack")).expect("hard link");
    assert!(
        Command::new("mkfifo")
            .arg(inc.join("fifo.msgpack"))
            .status()
            .is_ok_and(|s| s.success())
    );
    assert!(
        Command::new("mknod")
            .arg(inc.join("device.msgpack"))
            .args(["c", "1", "3"])
            .status()
            .is_ok_and(|s| s.success())
    );
    std::fs::write(inc.join("new\nline.msgpack"), &before).expect("newline name");
    let bad_utf8 = std::ffi::OsStr::from_bytes(b"\xff\xfe.msgpack");
    std::fs::write(inc.join(bad_utf8), &before).expect("invalid UTF-8 name");
    std::fs::write(inc.join("empty.msgpack"), b"").expect("empty");
    std::fs::write(inc.join("big.msgpack"), vec![0x90u8; 5000]).expect("big");
    std::fs::write(
        inc.join("huge-header.msgpack"),
        [0x81, 0xdb, 0xff, 0xff, 0xff, 0xff, b'x'],
    )
    .expect("huge");
    let out = env
        .run(&["process"])
        .timeout(Duration::from_secs(60))
        .output()
        .code(1);
    assert!(out.stderr.contains("refused, never read"), "{}", out.stderr);
    assert_eq!(env.count_files("archive", ".msgpack"), 1);
    let reasons: Vec<String> = env
        .listing()
        .into_iter()
        .filter(|p| p.ends_with(".reason.json"))
        .map(|p| std::fs::read_to_string(env.spool().join(p)).unwrap_or_default())
        .collect();
    for want in ["hard links", "0 bytes", "MAX_FILE_BYTES", "truncated"] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "no reason mentions {want}: {reasons:?}"
        );
    }
    let mut left: Vec<String> = env.files_in("incoming");
    left.sort();
    assert_eq!(
        left.len(),
        5,
        "symlink, FIFO, device and the two odd names stay: {left:?}"
    );
    assert_eq!(
        std::fs::read(&outside).expect("outside"),
        before,
        "nothing outside the spool changed"
    );
    assert!(
        env.listing()
            .iter()
            .any(|p| p.starts_with("failed/") && p.ends_with("hardlink.msgpack.reason.json"))
    );
}

#[test]
fn secrets_appear_nowhere_but_the_authorization_header() {
    const PW: &str = "Pg-Secr3t-7731";
    const TOKEN: &str = "Gate-Secr3t-7731";
    const SECRET: &str = "whsec_U2VjcmV0LVNpZ25pbmctNzczMQ==";
    const ALERT: &str = "Alert-Secr3t-7731";
    const EMBED: &str = "Embed-Secr3t-7731";
    const REDIS: &str = "Redis-Secr3t-7731";
    let secrets = [
        PW,
        TOKEN,
        SECRET,
        "U2VjcmV0LVNpZ25pbmctNzczMQ",
        ALERT,
        EMBED,
        REDIS,
    ];
    let Receivers { gate, alerts } =
        Receivers::start(|_, i| Response::status(if i == 3 { 400 } else { 200 }));
    let embed = HttpServer::start(|req, _| {
        let n = req.json()["input"].as_array().map_or(0, Vec::len);
        let data: Vec<_> = (0..n)
            .map(|i| serde_json::json!({"index": i, "embedding": [0.0, 1.0]}))
            .collect();
        Response::json(200, &serde_json::json!({"data": data}))
    });
    let redis = OwnRedis::start(&["--requirepass", REDIS], false, |_| {});
    let mut env = TestEnv::new().with_db();
    let url = env
        .db_url()
        .replacen("postgres@", &format!("postgres:{PW}@"), 1);
    env.set("DATABASE_URL", url);
    env.set("GATE_URL", gate.url.clone());
    env.set("GATE_TOKEN", TOKEN);
    env.set("GATE_SECRET", SECRET);
    env.set("ALERT_URL", alerts.url.clone());
    env.set("ALERT_TOKEN", ALERT);
    env.set("EMBED_BASE_URL", embed.url.clone());
    env.set("EMBED_MODEL", "m");
    env.set("EMBED_API_KEY", EMBED);
    env.set("REDIS_HOST", "127.0.0.1");
    env.set("REDIS_PORT", redis.port.to_string());
    env.set("REDIS_PASSWORD", REDIS);
    env.set(
        "METRICS_FILE",
        env.dir.path().join("metrics.prom").display().to_string(),
    );
    let tag = "20260101T000000Z-0a1b2c3d";
    let runs: Vec<Vec<&str>> = vec![
        vec!["--help"],
        vec!["init"],
        vec!["migrate"],
        vec![
            "gen",
            "--files",
            "2",
            "--records",
            "3",
            "--dim",
            "0",
            "--days",
            "3",
            "--bad",
            "2",
        ],
        vec!["process"],
        vec!["status"],
        vec!["status", "--json"],
        vec!["check"],
        vec!["check", "--json"],
        vec!["notify", "gate.open", "--batch-tag", tag],
        vec!["notify", "--check-templates"],
        vec!["maintain"],
        vec!["cache", "probe"],
        vec!["cache", "set", "ns", "k", "1"],
        vec!["cache", "get", "ns", "k"],
        vec!["cache", "stats"],
        vec!["requeue", "--all"],
        vec!["-v", "process"],
    ];
    let mut seen = String::new();
    for args in &runs {
        let out = env.run(args).output();
        seen.push_str(&out.stdout);
        seen.push_str(&out.stderr);
    }
    // A wrong password must not echo either.
    let wrong = env
        .run(&["cache", "probe"])
        .env("REDIS_PASSWORD", "Wrong-Secr3t-7731")
        .output();
    assert!(!format!("{}{}", wrong.stdout, wrong.stderr).contains("Wrong-Secr3t-7731"));
    for entry in walk(env.dir.path()) {
        seen.push_str(&String::from_utf8_lossy(
            &std::fs::read(&entry).unwrap_or_default(),
        ));
    }
    for server in [&gate, &alerts, &embed] {
        for r in server.requests() {
            seen.push_str(&String::from_utf8_lossy(&r.body));
            for (name, value) in &r.headers {
                if name != "authorization" {
                    seen.push_str(value);
                }
            }
        }
    }
    let mut db = crate::support::pg(&env.db_url().replacen(&format!(":{PW}"), "", 1));
    for row in db
        .query("SELECT row_to_json(m)::text FROM ragspool_manifest m", &[])
        .expect("manifest")
    {
        seen.push_str(&row.get::<_, String>(0));
    }
    for row in db
        .query(
            "SELECT row_to_json(r)::text FROM ragspool_maintenance_runs r",
            &[],
        )
        .expect("runs")
    {
        seen.push_str(&row.get::<_, String>(0));
    }
    for s in secrets {
        assert!(!seen.contains(s), "secret {s} leaked");
    }
    assert!(
        gate.requests()
            .iter()
            .any(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}")))
    );
    assert!(
        seen.len() > 10_000,
        "the check read too little to mean anything"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

#[test]
fn soak_under_a_steady_producer_with_faults() {
    let secs: u64 = std::env::var("RAGSPOOL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let own = OwnPg::start();
    let gate = HttpServer::start(|_, i| {
        Response::status(if (i as u64).wrapping_mul(2_654_435_761) % 100 < 10 {
            503
        } else {
            200
        })
    });
    let mut env = TestEnv::new();
    env.set("DATABASE_URL", own.create_db("soak"));
    env.set("GATE_URL", gate.url.clone());
    env.set("RETRY_MAX_SECS", "20");
    env.set("BATCH_MAX_AGE_SECS", "1");
    env.ready();
    let mut child = env.run(&["watch"]).spawn();
    let pid = child.id();
    let started = Instant::now();
    let (mut good, mut bad, mut round) = (0u64, 0u64, 0u64);
    let mut rss_early = 0.0;
    let mut restarted = false;
    while started.elapsed() < Duration::from_secs(secs) {
        round += 1;
        // 5 files every 100 ms is 50 files/s; every tenth round one of them is broken.
        let bad_now = u32::from(round % 10 == 0);
        let files = 5 - bad_now;
        env.generate_with(Gen {
            files,
            records: 2,
            dim: Some(8),
            days: Some(1),
            seed: Some(10_000 + round),
            bad: Some(bad_now),
        });
        good += u64::from(files);
        bad += u64::from(bad_now);
        if !restarted && started.elapsed() > Duration::from_secs(secs / 2) {
            own.stop();
            std::thread::sleep(Duration::from_millis(500));
            own.restart();
            restarted = true;
        }
        if rss_early == 0.0 && started.elapsed() > Duration::from_secs(secs / 4) {
            rss_early = rss_mib(pid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while (env.count_files("incoming", ".msgpack") > 0
        || env.count_files("processing", ".msgpack") > 0)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss_late = rss_mib(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let (status, _, stderr) = wait_with_deadline(&mut child, Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    assert_eq!(
        count(&env.db_url(), "SELECT count(*) FROM rag_chunks") as u64,
        good * 2
    );
    assert_eq!(env.count_files("archive", ".msgpack") as u64, good);
    assert_eq!(env.count_files("failed", ".msgpack") as u64, bad);
    assert_eq!(env.count_files("failed", ".reason.json") as u64, bad);
    // Tight enough for a slow leak: 4 MiB over three quarters of the run is about
    // 2.7 KiB per file at 50 files/s for 30 s (measured: 0.1 MiB).
    eprintln!("soak RSS {rss_early:.1} MiB after a quarter, {rss_late:.1} MiB at the end");
    assert!(
        rss_late - rss_early < 4.0,
        "RSS grew from {rss_early:.1} to {rss_late:.1} MiB"
    );
    let tags: BTreeSet<String> = gate
        .requests()
        .iter()
        .map(Request::json)
        .filter_map(|v| v["batch_tag"].as_str().map(String::from))
        .collect();
    assert!(!tags.is_empty());
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| {
            v.split_whitespace()
                .next()
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[test]
fn a_held_lock_is_a_bounded_wait_then_exit_75_and_a_rerun_is_exact() {
    let mut env = TestEnv::new().with_db();
    env.set("DB_LOCK_TIMEOUT_MS", "300");
    env.set("RETRY_MAX_SECS", "2");
    env.ready();
    env.generate(2, 10, 0);
    // Another session holds the table: a COPY would wait for ever without a bound.
    let mut holder = crate::support::pg(&env.db_url());
    let mut tx = holder.transaction().expect("transaction");
    tx.batch_execute("LOCK TABLE rag_chunks IN ACCESS EXCLUSIVE MODE")
        .expect("lock");
    let started = std::time::Instant::now();
    env.run(&["process"])
        .output()
        .code(75)
        .stderr_has("lock timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(
        env.count_files("failed", ".msgpack"),
        0,
        "an outage fails nothing"
    );
    tx.rollback().expect("release");
    env.run(&["process"]).output().code(0);
    assert_eq!(
        crate::support::count(&env.db_url(), "SELECT count(*) FROM rag_chunks"),
        20
    );
}

/// `process` stops on SIGTERM as `watch` does: the batch in flight finishes with
/// its gate.done, nothing stays in processing/, the rest waits in incoming/, and
/// the next run ingests it exactly once.
#[test]
fn process_finishes_the_batch_in_flight_on_sigterm() {
    use crate::support::http::{HttpServer, Response};
    // A slow gate keeps each batch open long enough to be interrupted.
    let gate = HttpServer::start(|_, _| {
        std::thread::sleep(Duration::from_millis(150));
        Response::status(200)
    });
    let mut env = TestEnv::new().with_db();
    env.set("GATE_URL", format!("{}/hook", gate.url));
    env.set("BATCH_MAX_FILES", "1");
    env.ready();
    env.generate(20, 10, 0);
    let mut child = env.run(&["process"]).spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while gate.requests().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let (status, _, stderr) = wait_with_deadline(&mut child, Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    let archived = env.count_files("archive", ".msgpack");
    assert!(
        (1..20).contains(&archived),
        "{archived} file(s) archived before the stop"
    );
    assert_eq!(env.count_files("processing", ".msgpack"), 0);
    assert_eq!(env.count_files("incoming", ".msgpack"), 20 - archived);
    let events: Vec<serde_json::Value> = gate.requests().iter().map(|r| r.json()).collect();
    let opens = events.iter().filter(|e| e["event"] == "gate.open").count();
    let dones = events.iter().filter(|e| e["event"] == "gate.done").count();
    assert_eq!((opens, dones), (archived, archived), "{events:?}");
    env.run(&["process"]).output().code(0);
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 200);
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(DISTINCT (doc_id, chunk_index)) FROM rag_chunks"
        ),
        200
    );
}

/// The failure log is anchored in the database: `check` catches a cut at the tail
/// and a truncation to nothing, which leave a well-formed chain behind, and takes
/// a torn last record (an append cut short) for what it is.
#[test]
fn check_catches_a_cut_failure_log_against_its_anchor() {
    use std::io::Write;
    let env = TestEnv::new().with_db();
    env.ready();
    env.generate(2, 3, 3);
    env.run(&["process"]).output().code(1);
    let log = env.dir.path().join("logs/rag_failures.jsonl");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(text.lines().count(), 3, "{text}");
    env.run(&["check"])
        .output()
        .code(0)
        .stdout_has("failure log anchor (3 records anchored in the database)");
    // The tail cut: the two first records still chain.
    let two: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&log, &two).expect("cut");
    env.run(&["check"])
        .output()
        .code(1)
        .stdout_has("holds 2 record(s), but 3 were anchored");
    std::fs::write(&log, "").expect("truncate");
    env.run(&["check"])
        .output()
        .code(1)
        .stdout_has("holds 0 record(s), but 3 were anchored");
    // Back whole, then an append cut short: reported, not a break.
    std::fs::write(&log, &text).expect("restore");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(br#"{"ts":"2026"#))
        .expect("torn");
    env.run(&["check"])
        .output()
        .code(0)
        .stdout_has("a torn record that the next run removes");
    env.generate(0, 0, 1);
    env.run(&["process"]).output().code(1);
    let after = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(after.lines().count(), 4, "{after}");
    env.run(&["check"])
        .output()
        .code(0)
        .stdout_has("failure log anchor (4 records anchored");
}

/// A crash after a batch's last file settled and before its gate.done was queued
/// leaves an empty processing/<tag>/: the next run queues that gate.done from the
/// manifest (rows and files as they were), once.
#[test]
fn a_batch_settled_before_a_crash_still_gets_its_gate_done() {
    let gate = HttpServer::start(|_, _| Response::status(200));
    let env = TestEnv::new().with_db();
    env.ready();
    env.generate(3, 4, 1);
    // First without a gate: the batch settles and no event is queued.
    env.run(&["process"]).output().code(1);
    let tag = env
        .listing()
        .iter()
        .find_map(|p| {
            p.strip_prefix("archive/")
                .and_then(|p| p.split('/').nth(1))
                .map(str::to_string)
        })
        .expect("an archived batch");
    // What a crash right after the last file left behind.
    std::fs::create_dir(env.spool_dir("processing").join(&tag)).expect("batch dir");
    let run = |env: &TestEnv| {
        env.run(&["process"])
            .env("GATE_URL", format!("{}/hook", gate.url))
            .output()
    };
    // Its report counts the failed file again, as the batch's own run did.
    run(&env).code(1);
    let events: Vec<serde_json::Value> = gate.requests().iter().map(Request::json).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "gate.done");
    assert_eq!(events[0]["batch_tag"], tag.as_str());
    assert_eq!(events[0]["rows"], 12);
    assert_eq!(events[0]["files_ok"], 3);
    assert_eq!(events[0]["files_failed"], 1);
    assert_eq!(events[0]["reason"], "failed");
    assert!(
        env.files_in("processing")
            .iter()
            .all(|n| n.starts_with('.'))
    );
    run(&env).code(0);
    assert_eq!(gate.requests().len(), 1, "queued once");
}

/// A PostgreSQL stopped outright mid-run (SIGSTOP: no statement_timeout fires and
/// its kernel still acknowledges TCP) ends the run by the hang guard with exit 75
/// after twice the longest single wait plus 10 s, and a rerun is exact.
#[test]
fn a_postgres_stopped_outright_ends_the_run_with_75_and_a_rerun_is_exact() {
    let own = OwnPg::start();
    let mut env = TestEnv::on_own_pg(&own, "frozen", 20);
    env.set("DB_STATEMENT_TIMEOUT_MS", "1000");
    env.set("DB_LOCK_TIMEOUT_MS", "1000");
    env.set("WORKERS", "1");
    env.set("BATCH_MAX_FILES", "1");
    env.generate(60, 1000, 0);
    let mut child = env.run(&["process"]).spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.count_files("archive", ".msgpack") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    own.signal_all("STOP");
    let frozen = Instant::now();
    let (status, _, stderr) = wait_with_deadline(&mut child, Duration::from_secs(120));
    let waited = frozen.elapsed();
    own.signal_all("CONT");
    assert_eq!(status.and_then(|s| s.code()), Some(75), "{stderr}");
    // The limit: 2 × 10 s (the longest wait: a connection attempt) + 10 s.
    assert!(
        waited >= Duration::from_secs(25) && waited < Duration::from_secs(60),
        "ended after {waited:?}"
    );
    let log =
        std::fs::read_to_string(env.dir.path().join("logs/rag_ingestion.log")).unwrap_or_default();
    assert!(log.contains("no progress for 30 s"), "{log}");
    process_until_clean(&env);
    assert_eq!(
        count(&env.db_url(), "SELECT count(*) FROM rag_chunks"),
        60_000
    );
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(DISTINCT (doc_id, chunk_index)) FROM rag_chunks"
        ),
        60_000
    );
    assert_eq!(env.count_files("archive", ".msgpack"), 60);
}
