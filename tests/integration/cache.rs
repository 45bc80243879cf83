//! The Redis cache (SPEC §8): the CLI and the public API against real redis-servers.

use crate::support::certs::make_certs;
use crate::support::servers::{OwnRedis, servers};
use crate::support::{TestEnv, wait_with_deadline};
use ragspool::cache::{Cache, CacheConfig, CacheError, Reply};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

fn redis_env() -> TestEnv {
    TestEnv::new().with_redis()
}

pub(crate) fn api(env: &TestEnv) -> Cache {
    let mut cfg = CacheConfig::new(
        &env.vars["REDIS_HOST"],
        env.vars["REDIS_PORT"].parse().unwrap_or(6379),
    );
    cfg.db = env.vars["REDIS_DB"].parse().unwrap_or(0);
    Cache::new(cfg)
}

#[test]
fn set_get_ttl_and_persistence() {
    let env = redis_env();
    env.run(&[
        "cache",
        "set",
        "answers",
        "q1",
        r#"{"text":"héllo","n":[1,2]}"#,
        "--ttl",
        "1",
    ])
    .output()
    .code(0)
    .stdout_has("set rag:answers:q1 (ttl 1s)");
    env.run(&["cache", "get", "answers", "q1"])
        .output()
        .code(0)
        .stdout_has(r#"{"text":"héllo","n":[1,2]}"#);
    std::thread::sleep(Duration::from_millis(2100));
    env.run(&["cache", "get", "answers", "q1"])
        .output()
        .code(1)
        .stderr_has("miss: rag:answers:q1");
    env.run(&["cache", "set", "answers", "forever", "1", "--ttl", "0"])
        .output()
        .code(0)
        .stdout_has("no expiry");
    assert_eq!(
        api(&env).command(&["TTL", "rag:answers:forever"]).ok(),
        Some(Reply::Int(-1))
    );
    env.run(&["cache", "set", "answers", "dflt", "1"])
        .env("DEFAULT_TTL_SECONDS", "77")
        .output()
        .code(0);
    assert!(
        matches!(api(&env).command(&["TTL", "rag:answers:dflt"]), Ok(Reply::Int(t)) if t > 70 && t <= 77)
    );
    env.run(&[
        "cache",
        "set",
        "emb",
        "Straße ✓",
        r#"{"v":[0.5,1.5]}"#,
        "--msgpack",
    ])
    .output()
    .code(0)
    .stdout_has("rag:emb:m:9eb23ca1b4bcf744348f1da5793c662f");
    env.run(&["cache", "get", "emb", "Straße ✓", "--msgpack"])
        .output()
        .code(0)
        .stdout_has(r#"{"v":[0.5,1.5]}"#);
    env.run(&["cache", "del", "emb", "Straße ✓", "--msgpack"])
        .output()
        .code(0)
        .stdout_has("deleted");
    env.run(&[
        "cache",
        "key",
        "what is retrieval augmented generation?",
        "5",
    ])
    .output()
    .code(0)
    .stdout_has("rag:q:05fa920edd52f6c8d5eb10b1d2bc0d24a15aeb35:5");
}

#[test]
fn stats_count_hits_and_misses() {
    let env = redis_env();
    env.run(&["cache", "set", "s", "k", "true"])
        .output()
        .code(0);
    env.run(&["cache", "get", "s", "k"]).output().code(0);
    env.run(&["cache", "get", "s", "k"]).output().code(0);
    env.run(&["cache", "get", "s", "nope"]).output().code(1);
    env.run(&["cache", "stats"])
        .output()
        .code(0)
        .stdout_has("hits 2\nmisses 1\nhit_ratio 0.667");
}

#[test]
fn probe_answers_0_75_and_1() {
    let env = redis_env();
    env.run(&["cache", "probe"])
        .output()
        .code(0)
        .stdout_has("ok: redis 7");
    let closed = crate::support::servers::free_port().unwrap_or(1);
    env.run(&["cache", "probe"])
        .env("REDIS_PORT", closed.to_string())
        .output()
        .code(75);
    let locked = OwnRedis::start(&["--requirepass", "right-pw"], false, |_| {});
    let mut admin_cfg = CacheConfig::new("127.0.0.1", locked.port);
    admin_cfg.password = Some("right-pw".into());
    let acl = Cache::new(admin_cfg).command(&[
        "ACL",
        "SETUSER",
        "alice",
        "on",
        ">alice-pw",
        "~*",
        "&*",
        "+@all",
    ]);
    assert_eq!(acl.ok(), Some(Reply::Status("OK".into())));
    let port = locked.port.to_string();
    env.run(&["cache", "probe"])
        .env("REDIS_PORT", &port)
        .env("REDIS_DB", "0")
        .env("REDIS_PASSWORD", "wrong")
        .output()
        .code(1);
    env.run(&["cache", "probe"])
        .env("REDIS_PORT", &port)
        .env("REDIS_DB", "0")
        .env("REDIS_PASSWORD", "right-pw")
        .output()
        .code(0);
    env.run(&["cache", "probe"])
        .env("REDIS_PORT", &port)
        .env("REDIS_DB", "0")
        .env("REDIS_USERNAME", "alice")
        .env("REDIS_PASSWORD", "alice-pw")
        .output()
        .code(0);
    let out = env
        .run(&["cache", "set", "a", "b", "1"])
        .env("REDIS_PORT", &port)
        .env("REDIS_DB", "0")
        .env("REDIS_USERNAME", "alice")
        .env("REDIS_PASSWORD", "wrong-Secr3t")
        .output()
        .code(78);
    assert!(!out.stderr.contains("wrong-Secr3t"), "{}", out.stderr);
}

#[test]
fn tls_verifies_the_server_and_refuses_a_wrong_ca() {
    let tls = OwnRedis::start(&[], true, make_certs);
    let env = redis_env();
    let run = |ca: &str, host: &str| {
        env.run(&["cache", "probe"])
            .env("REDIS_HOST", host)
            .env("REDIS_PORT", tls.port.to_string())
            .env("REDIS_DB", "0")
            .env("REDIS_SSL", "true")
            .env("REDIS_CA_CERT", tls.dir.join(ca).display().to_string())
            .output()
    };
    run("ca.pem", "localhost").code(0).stdout_has("tls yes");
    run("wrong-ca.pem", "localhost").code(1).stdout_has("TLS");
    run("ca.pem", "127.0.0.1").code(1);
}

#[test]
fn a_reply_that_comes_too_late_is_never_taken_for_the_next_one() {
    let slow = OwnRedis::start(&["--enable-debug-command", "yes"], false, |_| {});
    let mut cfg = CacheConfig::new("127.0.0.1", slow.port);
    cfg.timeout = Duration::from_millis(300);
    let mut cache = Cache::new(cfg);
    cache
        .set_json_namespace("t", "a", &serde_json::json!("value-a"), None)
        .expect("set");
    match cache.command(&["DEBUG", "SLEEP", "1"]) {
        Err(CacheError::Unavailable(m)) => assert!(m.contains("timed out"), "{m}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The late +OK of DEBUG SLEEP must not be read as this GET's reply.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        cache.get_json_namespace("t", "a").ok().flatten(),
        Some(serde_json::json!("value-a"))
    );
    assert_eq!(
        cache.command(&["PING"]).ok(),
        Some(Reply::Status("PONG".into()))
    );
}

#[test]
fn a_subscriber_gets_the_build_update_after_process() {
    let mut env = TestEnv::new().with_db().with_redis();
    let channel = format!("builds_{}", std::process::id());
    env.set("REDIS_BUILD_CHANNEL", channel.clone());
    env.ready();
    let s = servers();
    let mut sub = TcpStream::connect((s.redis.0.as_str(), s.redis.1)).expect("subscriber");
    sub.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    sub.write_all(
        format!(
            "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{channel}\r\n",
            channel.len()
        )
        .as_bytes(),
    )
    .expect("subscribe");
    let mut reader = BufReader::new(sub);
    let mut lines = Vec::new();
    for _ in 0..6 {
        let mut l = String::new();
        let _ = reader.read_line(&mut l);
        lines.push(l);
    }
    env.generate(2, 3, 0);
    let mut child = env.run(&["process"]).spawn();
    let (status, _, err) = wait_with_deadline(&mut child, Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{err}");
    let mut message = String::new();
    for _ in 0..7 {
        let mut l = String::new();
        let _ = reader.read_line(&mut l);
        if l.starts_with('{') {
            message = l;
            break;
        }
    }
    let v: serde_json::Value = serde_json::from_str(message.trim()).unwrap_or_default();
    assert_eq!(v["type"], "build_update", "{message:?}");
    assert_eq!(v["version"], 1);
    assert!(v["generation"].as_i64().is_some_and(|g| g >= 1));
    assert_eq!(
        (
            v["rows"].as_u64(),
            v["reason"].as_str(),
            v["healed"].as_bool()
        ),
        (Some(6), Some("success"), Some(false))
    );
    let keys: Vec<&str> = v
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        [
            "type",
            "version",
            "generation",
            "batch_tag",
            "reason",
            "rows",
            "healed",
            "host",
            "ts"
        ]
    );
}

#[test]
fn a_redis_outage_never_fails_ingest() {
    let mut env = TestEnv::new().with_db();
    env.set("REDIS_HOST", "127.0.0.1");
    env.set(
        "REDIS_PORT",
        crate::support::servers::free_port()
            .unwrap_or(1)
            .to_string(),
    );
    env.ready();
    env.generate(1, 3, 0);
    env.run(&["process"])
        .output()
        .code(0)
        .stderr_has("build update not published");
}
