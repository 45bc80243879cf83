//! Gate notifications, alerts, the outbox, the failure log and the reference gate
//! (SPEC §6) against real HTTP endpoints.

use crate::support::http::{HttpServer, Receivers, Request, Response};
use crate::support::{Gen, TestEnv, mode, wait_with_deadline};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN: &str = "gate-Tok3n-xyzzy";

/// The signature computed here, independently of ragspool's signer.
fn expected_signature(req: &Request) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("decode secret");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("hmac key");
    let id = req.header("webhook-id").unwrap_or_default();
    let ts = req.header("webhook-timestamp").unwrap_or_default();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&req.body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn gate_env(gate: &HttpServer) -> TestEnv {
    let mut env = TestEnv::new().with_db();
    env.set("GATE_URL", format!("{}/hook", gate.url));
    env.set("GATE_TOKEN", TOKEN);
    env.set("GATE_SECRET", SECRET);
    env.set("RETRY_MAX_SECS", "3");
    env.ready();
    env
}

/// A gate answering through `answer` and an alerts receiver, with a `gate_env`
/// that also sends alerts there (ALERT_URL, set once migrated).
fn alerting_env(
    answer: impl Fn(&Request, usize) -> Response + Send + Sync + 'static,
) -> (HttpServer, HttpServer, TestEnv) {
    let Receivers { gate, alerts } = Receivers::start(answer);
    let mut env = gate_env(&gate);
    env.set("ALERT_URL", format!("{}/alerts", alerts.url));
    (gate, alerts, env)
}

/// A gate's answer: `down_status` until the returned switch is set, then 200.
fn switchable(
    down_status: u16,
) -> (
    impl Fn(&Request, usize) -> Response + Send + Sync + 'static,
    Arc<AtomicBool>,
) {
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    let answer = move |_: &Request, _: usize| {
        Response::status(if flag.load(Ordering::SeqCst) {
            200
        } else {
            down_status
        })
    };
    (answer, up)
}

fn events(server: &HttpServer) -> Vec<serde_json::Value> {
    server.requests().iter().map(Request::json).collect()
}

#[test]
fn gate_open_then_done_with_exact_fields_headers_and_signature() {
    let gate = HttpServer::start(|_, _| Response::status(204));
    let env = gate_env(&gate);
    env.generate(2, 10, 1);
    env.run(&["process"]).output().code(1);
    let reqs = gate.requests();
    assert_eq!(reqs.len(), 2, "{:?}", events(&gate));
    let (open, done) = (reqs[0].json(), reqs[1].json());
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(
        keys(&open),
        ["event", "batch_tag", "files", "bytes", "host", "ts"]
    );
    assert_eq!(
        keys(&done),
        [
            "event",
            "batch_tag",
            "reason",
            "healed",
            "rows",
            "files_ok",
            "files_failed",
            "duration_ms",
            "host",
            "ts"
        ]
    );
    assert_eq!(open["event"], "gate.open");
    assert_eq!(open["files"], 3);
    assert!(open["bytes"].as_u64().unwrap_or(0) > 0);
    assert_eq!(done["event"], "gate.done");
    assert_eq!(done["batch_tag"], open["batch_tag"]);
    assert_eq!(
        (done["reason"].as_str(), done["rows"].as_u64()),
        (Some("failed"), Some(20))
    );
    assert_eq!(
        (done["files_ok"].as_u64(), done["files_failed"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(done["healed"], false);
    assert!(
        done["ts"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 20)
    );
    for r in &reqs {
        assert_eq!(r.path, "/hook");
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("user-agent"),
            Some(concat!("ragspool/", env!("CARGO_PKG_VERSION")))
        );
        assert!(
            r.header("webhook-id")
                .is_some_and(|id| id.starts_with("msg_"))
        );
        let ts: i64 = r
            .header("webhook-timestamp")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        assert!((time::OffsetDateTime::now_utc().unix_timestamp() - ts).abs() < 60);
        assert_eq!(
            r.header("webhook-signature"),
            Some(expected_signature(r).as_str())
        );
    }
    assert!(
        env.files_in("outbox").iter().all(|n| n.starts_with('.')),
        "only the outbox's own bookkeeping stays"
    );
}

#[test]
fn a_503_is_retried_with_the_same_webhook_id() {
    let gate = HttpServer::start(|_, i| Response::status(if i == 0 { 503 } else { 200 }));
    let env = gate_env(&gate);
    env.generate(1, 5, 0);
    env.run(&["process"]).output().code(0);
    let reqs = gate.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].header("webhook-id"), reqs[1].header("webhook-id"));
    assert_eq!(reqs[1].json()["event"], "gate.open");
    assert_ne!(reqs[1].header("webhook-id"), reqs[2].header("webhook-id"));
}

#[test]
fn retry_after_is_honoured_on_429() {
    let gate = HttpServer::start(|_, i| {
        if i == 0 {
            Response {
                status: 429,
                headers: vec![("Retry-After".into(), "2".into())],
                body: Vec::new(),
            }
        } else {
            Response::status(200)
        }
    });
    let mut env = gate_env(&gate);
    env.set("RETRY_MAX_SECS", "10");
    env.generate(1, 5, 0);
    let started = Instant::now();
    env.run(&["process"]).output().code(0);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(gate.requests().len(), 3);
}

#[test]
fn a_gate_that_is_down_keeps_events_for_the_next_run_in_order() {
    let (answer, up) = switchable(503);
    let gate = HttpServer::start(answer);
    let mut env = gate_env(&gate);
    env.set("RETRY_MAX_SECS", "1");
    env.generate(4, 5, 0);
    env.run(&["process"])
        .env("BATCH_MAX_FILES", "2")
        .output()
        .code(75)
        .stderr_has("wait in outbox/");
    assert_eq!(
        env.files_in("outbox")
            .iter()
            .filter(|n| n.ends_with(".json"))
            .count(),
        4
    );
    up.store(true, Ordering::SeqCst);
    let before = gate.requests().len();
    env.run(&["process"]).output().code(0);
    let delivered: Vec<serde_json::Value> = gate.requests()[before..]
        .iter()
        .map(Request::json)
        .collect();
    let order: Vec<(String, String)> = delivered
        .iter()
        .map(|v| {
            (
                v["event"].as_str().unwrap_or("").to_string(),
                v["batch_tag"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(order.len(), 4, "{order:?}");
    assert_eq!(
        (order[0].0.as_str(), order[1].0.as_str()),
        ("gate.open", "gate.done")
    );
    assert_eq!(
        (order[2].0.as_str(), order[3].0.as_str()),
        ("gate.open", "gate.done")
    );
    assert_eq!(order[0].1, order[1].1);
    assert_eq!(order[2].1, order[3].1);
    assert!(env.files_in("outbox").iter().all(|n| !n.ends_with(".json")));
}

#[test]
fn a_400_goes_to_dead_letters_with_failure_log_and_alert() {
    let (_gate, alerts, mut env) = alerting_env(|_, _| Response::status(400));
    env.set("ALERT_TOKEN", "alert-Tok3n");
    env.generate(1, 5, 0);
    env.run(&["process"]).output().code(0);
    let dead = env.spool_dir("outbox").join("dead");
    assert_eq!(std::fs::read_dir(&dead).map(|d| d.count()).unwrap_or(0), 2);
    let log =
        std::fs::read_to_string(env.dir.path().join("logs/rag_failures.jsonl")).unwrap_or_default();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"dead_letter\""))
            .count(),
        2,
        "{log}"
    );
    let alert_events = events(&alerts);
    assert!(
        alert_events.iter().all(|a| a["event"] == "ingest.alert"),
        "{alert_events:?}"
    );
    assert!(
        alert_events
            .iter()
            .any(|a| a["detail"].as_str().is_some_and(|d| d.contains("400")))
    );
    assert!(
        alerts
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer alert-Tok3n"))
    );
    env.run(&["check"])
        .output()
        .code(1)
        .stdout_has("outbox/dead/");
}

#[test]
fn self_heal_alerts_once_with_healed_true_and_the_log_stays_clean() {
    let (gate, alerts, env) = alerting_env(|_, _| Response::status(200));
    // Three days of data: two days lack partitions, several files heal.
    env.generate_with(Gen {
        files: 4,
        records: 30,
        days: Some(3),
        bad: Some(2),
        ..Gen::default()
    });
    let _ = env.run(&["process"]).output().code(1);
    let a = events(&alerts);
    assert_eq!(a.len(), 1, "one alert per batch: {a:?}");
    assert_eq!(a[0]["event"], "ingest.alert");
    let done = events(&gate)
        .into_iter()
        .find(|e| e["event"] == "gate.done")
        .unwrap_or_default();
    assert_eq!(done["reason"], "failed");
    assert_eq!(done["healed"], true);
    let log_path = env.dir.path().join("logs/rag_failures.jsonl");
    assert_eq!(mode(&log_path), 0o600);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log.lines().any(|l| l.contains("\"reason\":\"healed_partition\"") && l.contains("\"healed\":true")));
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"reason\":\"failed\""))
            .count(),
        2
    );
    for secret in [
        TOKEN,
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "wiki/",
        "retrieval",
    ] {
        assert!(!log.contains(secret), "failure log holds {secret}");
    }
    env.run(&["check"])
        .output()
        .code(0)
        .stdout_has("ok    failure log chain");
    let edited = log.replacen("healed_partition", "healed_partitioN", 1);
    let _ = std::fs::write(&log_path, edited);
    env.run(&["check"])
        .output()
        .code(1)
        .stdout_has("breaks the hash chain");
}

#[test]
fn gate_recovery_sends_one_recovered_alert() {
    let (answer, up) = switchable(502);
    let (_gate, alerts, mut env) = alerting_env(answer);
    env.set("RETRY_MAX_SECS", "1");
    env.generate(1, 5, 0);
    env.run(&["process"]).output().code(75);
    env.run(&["process"]).output().code(75);
    up.store(true, Ordering::SeqCst);
    env.run(&["process"]).output().code(0);
    env.run(&["process"]).output().code(0);
    let recovered: Vec<_> = events(&alerts)
        .into_iter()
        .filter(|a| a["event"] == "ingest.recovered")
        .collect();
    assert_eq!(recovered.len(), 1, "{:?}", events(&alerts));
}

#[test]
fn notify_for_scripts_and_template_checks() {
    let gate = HttpServer::start(|_, _| Response::status(200));
    let env = gate_env(&gate);
    let tag = "20260101T000000Z-0a1b2c3d";
    env.run(&[
        "notify",
        "gate.done",
        "--batch-tag",
        tag,
        "--reason",
        "done",
    ])
    .output()
    .code(2)
    .stderr_has("success, healed_partition, failed, partition_missing, other_error");
    env.run(&["notify", "gate.open", "--batch-tag", "nope"])
        .output()
        .code(2);
    env.run(&[
        "notify",
        "gate.open",
        "--batch-tag",
        tag,
        "--var",
        "files=3",
        "--var",
        "bytes=99",
    ])
    .output()
    .code(0);
    env.run(&[
        "notify",
        "gate.done",
        "--batch-tag",
        tag,
        "--reason",
        "partition_missing",
        "--var",
        "rows=7",
    ])
    .output()
    .code(0);
    let e = events(&gate);
    assert_eq!(
        (e[0]["event"].as_str(), e[0]["files"].as_u64()),
        (Some("gate.open"), Some(3))
    );
    assert_eq!(
        (e[1]["reason"].as_str(), e[1]["rows"].as_u64()),
        (Some("partition_missing"), Some(7))
    );
    let out = env.run(&["notify", "--check-templates"]).output().code(0);
    for reason in [
        "success",
        "failed",
        "healed_partition",
        "partition_missing",
        "other_error",
    ] {
        assert!(out.stdout.contains(reason), "{}", out.stdout);
    }
    let dir = env.dir.path().join("templates");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("gate.done.json"),
        r#"{"event":"gate.done","rows":{{row_count}}}"#,
    );
    env.run(&["notify", "--check-templates"])
        .env("GATE_TEMPLATE_DIR", dir.display().to_string())
        .output()
        .code(78)
        .stderr_has("gate.done.json")
        .stderr_has("{{row_count}}");
}

#[test]
fn tokens_are_never_sent_over_plain_http_to_other_hosts() {
    let env = TestEnv::new();
    env.run(&["process"])
        .env("GATE_URL", "http://gate.example/hook")
        .env("GATE_TOKEN", "t")
        .output()
        .code(78)
        .stderr_has("`GATE_URL` is plain http");
}

fn start_gate(env: &TestEnv, extra: &[&str]) -> (std::process::Child, String, std::path::PathBuf) {
    let port = crate::support::servers::free_port().expect("free port");
    let listen = format!("127.0.0.1:{port}");
    let events = env.dir.path().join("gate-events.jsonl");
    let mut args = vec![
        "gate",
        "serve",
        "--listen",
        &listen,
        "--events",
        events.to_str().unwrap_or(""),
    ];
    args.extend_from_slice(extra);
    let child = env
        .run(&args)
        .env("GATE_TOKEN", TOKEN)
        .env("GATE_SECRET", SECRET)
        .spawn();
    let url = format!("http://{listen}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&listen).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, url, events)
}

fn signed_post(url: &str, token: &str, id: &str, ts: i64, body: &str, sig: Option<&str>) -> u16 {
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("key");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("hmac");
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    let good = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .post(url)
        .header("Authorization", &format!("Bearer {token}"))
        .header("webhook-id", id)
        .header("webhook-timestamp", &ts.to_string())
        .header("webhook-signature", sig.unwrap_or(&good))
        .send(body);
    match resp {
        Ok(r) => {
            let code = r.status().as_u16();
            if code == 429 {
                assert!(
                    r.headers()
                        .get("Retry-After")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.parse::<u64>().is_ok())
                );
            }
            code
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn gate_serve_checks_token_signature_window_and_throttles() {
    let env = TestEnv::new();
    let (mut child, url, events) = start_gate(&env, &["--rate", "1", "--burst", "6"]);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = r#"{"event":"gate.open","batch_tag":"t"}"#;
    assert_eq!(signed_post(&url, TOKEN, "msg_1", now, body, None), 200);
    assert_eq!(
        signed_post(&url, TOKEN, "msg_1", now, body, None),
        200,
        "a repeated id is acknowledged"
    );
    assert_eq!(
        signed_post(&url, "wrong-token", "msg_2", now, body, None),
        401
    );
    assert_eq!(
        signed_post(&url, TOKEN, "msg_3", now, body, Some("v1,AAAA")),
        401
    );
    assert_eq!(
        signed_post(&url, TOKEN, "msg_4", now - 400, body, None),
        401
    );
    assert_eq!(
        signed_post(&url, TOKEN, "msg_5", now + 400, body, None),
        401,
        "a timestamp more than 5 minutes ahead is refused too"
    );
    let codes: Vec<u16> = (0..5)
        .map(|i| signed_post(&url, TOKEN, &format!("msg_b{i}"), now, body, None))
        .collect();
    assert!(codes.contains(&429), "{codes:?}");
    let _ = child.kill();
    let _ = wait_with_deadline(&mut child, Duration::from_secs(5));
    let lines = std::fs::read_to_string(events).unwrap_or_default();
    assert_eq!(
        lines.lines().filter(|l| l.contains("gate.open")).count(),
        1 + codes.iter().filter(|c| **c == 200).count()
    );
}

#[test]
fn process_delivers_to_the_reference_gate_end_to_end() {
    let mut env = TestEnv::new().with_db();
    env.ready();
    let (mut child, url, events) = start_gate(&env, &[]);
    env.set("GATE_URL", url);
    env.set("GATE_TOKEN", TOKEN);
    env.set("GATE_SECRET", SECRET);
    env.generate(3, 5, 0);
    env.run(&["process"]).output().code(0);
    let _ = child.kill();
    let _ = wait_with_deadline(&mut child, Duration::from_secs(5));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let names: Vec<&str> = lines.iter().filter_map(|v| v["event"].as_str()).collect();
    assert_eq!(names, ["gate.open", "gate.done"]);
    assert_eq!(lines[1]["rows"], 15);
}

#[test]
fn started_as_root_with_user_the_failure_log_stays_root_only() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut env = TestEnv::new().with_db();
    let _ = std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755));
    env.run(&["init", "--owner", "nobody:nogroup"])
        .output()
        .code(0);
    let log = env.dir.path().join("logs/rag_failures.jsonl");
    env.set("RAGSPOOL_USER", "nobody");
    env.run(&["migrate"]).output().code(0);
    env.generate(1, 5, 1);
    env.run(&["process"]).output().code(1);
    let meta = std::fs::metadata(&log).expect("failure log");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        text.lines().count(),
        1,
        "written through the descriptor opened before the drop"
    );
    let archived = env
        .listing()
        .into_iter()
        .find(|p| p.starts_with("archive/"))
        .expect("archived");
    let owner = std::fs::metadata(env.spool().join(archived))
        .map(|m| m.uid())
        .unwrap_or(0);
    assert_ne!(owner, 0);
    let rag_log = std::fs::metadata(env.dir.path().join("logs/rag_ingestion.log"))
        .map(|m| m.uid())
        .unwrap_or(0);
    assert_ne!(rag_log, 0, "the log file is opened after the drop");
}

/// The outbox's order comes from a number that only grows (outbox/.seq), not from
/// the clock; an event file that cannot be read goes to outbox/dead/ with a
/// failure-log record and an alert; two processes flushing one outbox at once
/// deliver each event once.
#[test]
fn outbox_order_survives_a_clock_step_and_two_flushers_deliver_each_event_once() {
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    // Slow when up, so that the two flushers below overlap.
    let (gate, alerts, mut env) = alerting_env(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(40));
            Response::status(200)
        } else {
            Response::status(503)
        }
    });
    env.set("RETRY_MAX_SECS", "1");
    env.set("BATCH_MAX_FILES", "1");
    env.set("ALERT_TOKEN", "alert-Tok3n");
    env.generate(3, 5, 0);
    env.run(&["process"]).output().code(75);
    // The clock "was" far ahead when the last event was queued, and has stepped
    // back since: later events must still sort after the earlier ones.
    let outbox = env.spool_dir("outbox");
    std::fs::write(outbox.join(".seq"), "9000000000000000000\n").expect("write .seq");
    std::fs::write(outbox.join("00000000000000000001.json"), b"{not json").expect("plant");
    env.generate(3, 5, 0);
    env.run(&["process"]).output().code(75);
    let queued: Vec<String> = env
        .files_in("outbox")
        .into_iter()
        .filter(|n| n.ends_with(".json") && n != "00000000000000000001.json")
        .collect();
    assert_eq!(queued.len(), 12, "{queued:?}");
    assert!(
        queued.iter().filter(|n| n.starts_with("09000")).count() == 6,
        "{queued:?}"
    );

    up.store(true, Ordering::SeqCst);
    let before = gate.requests().len();
    let a = env.run(&["process"]).spawn();
    let b = env.run(&["process"]).spawn();
    for mut child in [a, b] {
        let (status, _, stderr) = wait_with_deadline(&mut child, Duration::from_secs(60));
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    }
    let delivered: Vec<Request> = gate.requests()[before..].to_vec();
    let mut ids: Vec<&str> = delivered
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 12, "each event once");
    assert_eq!(delivered.len(), 12, "no event twice");
    // Batch by batch, in the order they were queued: open, done, open, done ...
    let order: Vec<(String, String)> = delivered
        .iter()
        .map(Request::json)
        .map(|v| {
            (
                v["event"].as_str().unwrap_or("").to_string(),
                v["batch_tag"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for pair in order.chunks(2) {
        assert_eq!(pair[0].0, "gate.open", "{order:?}");
        assert_eq!(pair[1].0, "gate.done", "{order:?}");
        assert_eq!(pair[0].1, pair[1].1, "{order:?}");
    }
    assert!(outbox.join("dead/00000000000000000001.json").exists());
    let log =
        std::fs::read_to_string(env.dir.path().join("logs/rag_failures.jsonl")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("dead_letter") && l.contains("00000000000000000001.json")),
        "{log}"
    );
    assert!(
        events(&alerts).iter().any(|a| a["detail"]
            .as_str()
            .is_some_and(|d| d.contains("00000000000000000001.json"))),
        "{:?}",
        events(&alerts)
    );
}
