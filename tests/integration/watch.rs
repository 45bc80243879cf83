//! `ragspool watch`: thresholds, idle cost, signals, crashes, floods, hostile
//! names, systemd notifications and --exec, against real servers and processes.

use crate::support::http::{HttpServer, Request, Response};
use crate::support::{Gen, TestEnv, count, wait_with_deadline};
use std::os::unix::net::UnixDatagram;
use std::process::Child;
use std::time::{Duration, Instant};

pub(crate) fn signal(child: &Child, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status();
}

/// Waits until `cond` holds, failing after `secs`.
#[track_caller]
pub(crate) fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the process has a handler for SIGTERM yet (bit 15 of SigCgt).
pub(crate) fn handles_sigterm(child: &Child) -> bool {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << 14) != 0)
}

pub(crate) fn stop(mut child: Child) -> String {
    wait_for(30, "signal handlers", || handles_sigterm(&child));
    signal(&child, "TERM");
    let (status, _, stderr) = wait_with_deadline(&mut child, Duration::from_secs(60));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "watch did not exit 0 on SIGTERM:\n{stderr}"
    );
    stderr
}

pub(crate) fn gate_dones(gate: &HttpServer) -> Vec<serde_json::Value> {
    gate.requests()
        .iter()
        .map(Request::json)
        .filter(|v| v["event"] == "gate.done")
        .collect()
}

fn watched(env: &mut TestEnv, gate: &HttpServer, vars: &[(&str, &str)]) -> Child {
    env.set("GATE_URL", gate.url.clone());
    for (k, v) in vars {
        env.set(k, *v);
    }
    env.ready();
    let child = env.run(&["watch"]).spawn();
    wait_until_watching(env, 1);
    child
}

/// Waits until the log says `watching` for the `n`-th time: the inotify watch is
/// in place and the first scan is done.
#[track_caller]
fn wait_until_watching(env: &TestEnv, n: usize) {
    let log = env.dir.path().join("logs/rag_ingestion.log");
    wait_for(60, "the watcher to be ready", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("] watching ")
            .count()
            >= n
    });
}

#[test]
fn a_batch_runs_by_count_by_age_and_by_bytes() {
    let gate = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    let child = watched(
        &mut env,
        &gate,
        &[("BATCH_MAX_FILES", "5"), ("BATCH_MAX_AGE_SECS", "3600")],
    );
    env.generate(5, 2, 0);
    wait_for(20, "a batch by count", || gate_dones(&gate).len() == 1);
    assert_eq!(gate_dones(&gate)[0]["files_ok"], 5);
    env.generate_with(Gen {
        files: 3,
        records: 2,
        days: Some(1),
        seed: Some(2),
        ..Gen::default()
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        gate_dones(&gate).len(),
        1,
        "3 files under every threshold must wait"
    );
    stop(child);

    let gate = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    let child = watched(
        &mut env,
        &gate,
        &[("BATCH_MAX_FILES", "1000"), ("BATCH_MAX_AGE_SECS", "2")],
    );
    let started = Instant::now();
    env.generate(2, 2, 0);
    wait_for(20, "a batch by age", || gate_dones(&gate).len() == 1);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(gate_dones(&gate)[0]["files_ok"], 2);
    stop(child);

    let gate = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    let vars = [
        ("BATCH_MAX_FILES", "1000"),
        ("BATCH_MAX_AGE_SECS", "3600"),
        ("BATCH_MAX_BYTES", "20000"),
    ];
    let child = watched(&mut env, &gate, &vars);
    env.generate(2, 10, 0);
    wait_for(20, "a batch by bytes", || !gate_dones(&gate).is_empty());
    stop(child);
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
}

#[test]
fn idle_watch_uses_next_to_no_cpu() {
    let gate = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    let child = watched(&mut env, &gate, &[]);
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_ticks(child.id());
    std::thread::sleep(Duration::from_secs(4));
    let used = cpu_ticks(child.id()) - before;
    assert!(used <= 3, "idle watch used {used} clock ticks in 4 s");
    stop(child);
}

#[test]
fn sigterm_mid_batch_finishes_the_batch_and_exits_0() {
    let gate = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    let child = watched(
        &mut env,
        &gate,
        &[("BATCH_MAX_FILES", "40"), ("WORKERS", "1")],
    );
    env.generate(40, 300, 0);
    wait_for(20, "a batch in flight", || {
        !env.files_in("processing").is_empty()
    });
    stop(child);
    assert!(env.files_in("processing").is_empty(), "{:?}", env.listing());
    assert_eq!(
        env.count_files("archive", ".msgpack") + env.files_in("incoming").len(),
        40
    );
    assert_eq!(
        count(&env.db_url(), "SELECT count(*) FROM rag_chunks") as usize,
        300 * env.count_files("archive", ".msgpack")
    );
    let events = gate
        .requests()
        .iter()
        .map(Request::json)
        .collect::<Vec<_>>();
    assert_eq!(
        events.last().map(|e| e["event"].clone()),
        Some(serde_json::json!("gate.done"))
    );
}

#[test]
fn sighup_reopens_a_rotated_log() {
    let gate = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    let child = watched(&mut env, &gate, &[("BATCH_MAX_AGE_SECS", "0")]);
    let log = env.dir.path().join("logs/rag_ingestion.log");
    let rotated = env.dir.path().join("logs/rag_ingestion.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    signal(&child, "HUP");
    std::thread::sleep(Duration::from_millis(300));
    env.generate(1, 2, 0);
    wait_for(20, "a batch line in the new log", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("batch ")
    });
    stop(child);
    assert!(
        std::fs::read_to_string(&rotated)
            .unwrap_or_default()
            .contains("watching")
    );
}

#[test]
fn sigkill_over_a_stream_of_files_loses_and_duplicates_nothing() {
    let gate = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    env.set("GATE_URL", gate.url.clone());
    env.set("BATCH_MAX_FILES", "7");
    env.set("BATCH_MAX_AGE_SECS", "0");
    env.ready();
    let mut seed = crate::support::test_seed("watch sigkill_over_a_stream");
    let mut produced = 0;
    let mut mid_batch = 0;
    for round in 0..14 {
        let mut child = env.run(&["watch"]).spawn();
        env.generate_with(Gen {
            files: 15,
            records: 4,
            days: Some(1),
            seed: Some(round + 100),
            ..Gen::default()
        });
        produced += 15;
        std::thread::sleep(Duration::from_millis(
            50 + crate::support::next_random(&mut seed) % 400,
        ));
        if crate::support::batch_in_flight(&env) {
            mid_batch += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let child = env.run(&["watch"]).spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(env.count_files("incoming", ".msgpack") == 0
        && env.count_files("processing", ".msgpack") == 0)
    {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(env.dir.path().join("logs/rag_ingestion.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "the spool did not drain; seed {}\n{:?}\n{}",
                seed,
                env.listing(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(child);
    eprintln!("{mid_batch} of 14 kills landed while a batch was in processing/");
    assert_eq!(produced, 210);
    assert_eq!(env.count_files("archive", ".msgpack"), 210);
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT coalesce(sum(rows), 0)::bigint FROM ragspool_manifest WHERE status = 'done'"
        ),
        840
    );
    // Every batch's gate.open reached the gate before its gate.done, and no batch
    // the manifest knows went without either.
    let mut opened = std::collections::HashSet::new();
    let mut done = std::collections::HashSet::new();
    for e in gate.requests().iter().map(|r| r.json()) {
        let tag = e["batch_tag"].as_str().unwrap_or("").to_string();
        match e["event"].as_str() {
            Some("gate.open") => {
                opened.insert(tag);
            }
            Some("gate.done") => {
                assert!(
                    opened.contains(&tag),
                    "gate.done before gate.open for {tag}"
                );
                done.insert(tag);
            }
            _ => {}
        }
    }
    let mut client = crate::support::pg(&env.db_url());
    for row in client
        .query("SELECT DISTINCT batch_tag FROM ragspool_manifest", &[])
        .unwrap_or_default()
    {
        let tag: String = row.get(0);
        assert!(done.contains(&tag), "no gate.done for batch {tag}");
    }
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 840);
    assert_eq!(
        count(
            &env.db_url(),
            "SELECT count(DISTINCT (doc_id, chunk_index)) FROM rag_chunks"
        ),
        840
    );
}

#[test]
fn a_flood_of_files_is_all_ingested_even_past_the_inotify_queue() {
    let gate = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    // A tiny event queue for this watcher alone (root only): the flood overflows it.
    let knob = "/proc/sys/fs/inotify/max_queued_events";
    let original = std::fs::read_to_string(knob).unwrap_or_default();
    let lowered = std::fs::write(knob, "8").is_ok();
    let child = watched(
        &mut env,
        &gate,
        &[("BATCH_MAX_FILES", "500"), ("BATCH_MAX_AGE_SECS", "1")],
    );
    if lowered {
        let _ = std::fs::write(knob, original.trim());
    }
    // Frozen, the watcher reads no events while the flood arrives: the queue overflows.
    signal(&child, "STOP");
    env.generate_with(Gen {
        files: 1500,
        records: 1,
        dim: Some(4),
        days: Some(1),
        ..Gen::default()
    });
    signal(&child, "CONT");
    wait_for(120, "the flood to be ingested", || {
        env.count_files("archive", ".msgpack") == 1500
    });
    let stderr = stop(child);
    assert!(
        !lowered || stderr.contains("overflowed"),
        "expected an overflow rescan:\n{stderr}"
    );
    assert_eq!(
        count(&env.db_url(), "SELECT count(*) FROM rag_chunks"),
        1500
    );
}

#[test]
fn symlinks_dotfiles_and_other_names_are_never_read() {
    let gate = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    let child = watched(&mut env, &gate, &[("BATCH_MAX_AGE_SECS", "0")]);
    let incoming = env.spool_dir("incoming");
    let secret = env.dir.path().join("secret.msgpack");
    std::fs::write(&secret, b"outside the spool").expect("write");
    std::os::unix::fs::symlink(&secret, incoming.join("link.msgpack")).expect("symlink");
    std::fs::write(incoming.join(".hidden.msgpack"), b"x").expect("write");
    std::fs::write(incoming.join("notes.txt"), b"x").expect("write");
    env.generate(1, 2, 0);
    wait_for(20, "the good file", || {
        env.count_files("archive", ".msgpack") == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    stop(child);
    let left = env.files_in("incoming");
    assert_eq!(left, vec![".hidden.msgpack", "link.msgpack", "notes.txt"]);
    assert!(env.files_in("failed").is_empty());
}

#[test]
fn systemd_gets_ready_watchdog_status_and_stopping() {
    let gate = HttpServer::start(|_, _| Response::status(200));
    let mut env = TestEnv::new().with_db();
    let sock_path = env.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    env.set("NOTIFY_SOCKET", sock_path.display().to_string());
    env.set("WATCHDOG_USEC", "400000");
    let child = watched(&mut env, &gate, &[]);
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && !(seen.iter().any(|m: &String| m == "READY=1")
            && seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3)
    {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(seen.iter().any(|m| m == "READY=1"), "{seen:?}");
    assert!(
        seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3,
        "{seen:?}"
    );
    assert!(seen.iter().any(|m| m.starts_with("STATUS=")), "{seen:?}");
    stop(child);
    let mut rest = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if rest.iter().any(|m| m == "STOPPING=1") {
            break;
        }
    }
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");
}

#[test]
fn exec_runs_the_command_with_the_settings_on_threshold() {
    let mut env = TestEnv::new().with_db();
    env.set("BATCH_MAX_AGE_SECS", "0");
    env.ready();
    let marker = env.dir.path().join("fired");
    let cmd = format!(
        "echo \"$SPOOL_DIR\" >> {}; RAGSPOOL_BIN={} {}/scripts/process_spool.sh",
        marker.display(),
        crate::support::bin().display(),
        env!("CARGO_MANIFEST_DIR")
    );
    let child = env.run(&["watch", "--exec", &cmd]).spawn();
    wait_until_watching(&env, 1);
    env.generate(3, 2, 0);
    wait_for(20, "the command to ingest", || {
        env.count_files("archive", ".msgpack") == 3
    });
    stop(child);
    let fired = std::fs::read_to_string(&marker).unwrap_or_default();
    assert!(
        fired.contains(&env.spool().display().to_string()),
        "{fired}"
    );
    assert_eq!(count(&env.db_url(), "SELECT count(*) FROM rag_chunks"), 6);
}

#[test]
fn requeue_moves_failed_files_back_and_status_shows_everything() {
    let env = TestEnv::new().with_db();
    env.ready();
    env.generate(1, 2, 2);
    env.run(&["process"]).output().code(1);
    let tag = env
        .files_in("failed")
        .first()
        .cloned()
        .expect("a failed batch");
    env.run(&["requeue", "20260101T000000Z-00000000"])
        .output()
        .code(2)
        .stderr_has("no failed/");
    env.run(&["requeue", &tag])
        .output()
        .code(0)
        .stdout_has("requeued");
    assert_eq!(env.files_in("incoming").len(), 2);
    assert_eq!(
        std::fs::read_dir(env.spool_dir("failed").join(&tag).join("requeued"))
            .map(|d| d.count())
            .unwrap_or(0),
        2
    );
    env.run(&["process"]).output().code(1);
    env.run(&["requeue", "--all"])
        .output()
        .code(0)
        .stdout_has("requeued");
    let json = env.run(&["status", "--json"]).output().code(0).json();
    assert_eq!(json["outbox"]["waiting"], 0);
    assert_eq!(json["dirs"]["incoming"]["files"], 2);
    assert!(
        json["recent_batches"]
            .as_array()
            .is_some_and(|b| b.len() == 2)
    );
    env.run(&["status"])
        .output()
        .code(0)
        .stdout_has("outbox: 0 waiting, 0 dead")
        .stdout_has("last maintenance");
}
