//! init, gen, status and check through the real binary.

use crate::support::{Gen, TestEnv, mode};
use std::os::unix::fs::PermissionsExt;

#[test]
fn init_creates_a_safe_tree_and_is_idempotent() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0).stdout_has("created");
    for d in [
        "tmp",
        "incoming",
        "processing",
        "archive",
        "failed",
        "outbox",
    ] {
        assert_eq!(mode(&env.spool_dir(d)), 0o750, "{d}");
    }
    let failure_log = env.dir.path().join("logs/rag_failures.jsonl");
    assert_eq!(mode(&failure_log), 0o600);
    let out = env.run(&["init"]).output().code(0);
    assert!(!out.stdout.contains("created"), "{}", out.stdout);
}

#[test]
fn init_reports_unsafe_existing_paths() {
    let env = TestEnv::new();
    env.run(&["init"]).output().code(0);
    let _ = std::fs::set_permissions(
        env.spool_dir("incoming"),
        std::fs::Permissions::from_mode(0o777),
    );
    let log = env.dir.path().join("logs/rag_failures.jsonl");
    let _ = std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644));
    let out = env.run(&["init"]).output().code(1);
    assert!(
        out.stdout
            .contains(&format!("unsafe  {}", env.spool_dir("incoming").display())),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("rag_failures.jsonl: has mode 0644"),
        "{}",
        out.stdout
    );
}

#[test]
fn init_owner_chowns_what_it_creates() {
    let env = TestEnv::new();
    env.run(&["init", "--owner", "nobody:nogroup"])
        .output()
        .code(0);
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(env.spool_dir("incoming"))
        .map(|m| m.uid())
        .unwrap_or(0);
    assert_ne!(uid, 0);
    env.run(&["init", "--owner", "no-such-user-here"])
        .output()
        .code(2)
        .stderr_has("unknown user");
}

#[test]
fn gen_status_and_check_agree() {
    let env = TestEnv::new().with_db();
    env.run(&["status"])
        .output()
        .code(78)
        .stderr_has("run `ragspool init` first");
    env.run(&["check"])
        .output()
        .code(1)
        .stdout_has("missing; run `ragspool init`");
    env.run(&["init"]).output().code(0);
    env.generate_with(Gen {
        files: 3,
        records: 5,
        dim: Some(8),
        bad: Some(7),
        ..Gen::default()
    })
    .stdout_has("wrote 3 file(s) with 15 record(s) and 7 broken file(s)");
    let incoming = env.files_in("incoming");
    assert_eq!(incoming.len(), 10, "{incoming:?}");
    assert!(incoming.iter().all(|n| n.ends_with(".msgpack")));
    assert!(env.files_in("tmp").is_empty());
    let json = env.run(&["status", "--json"]).output().code(0).json();
    assert_eq!(json["dirs"]["incoming"]["files"], 10);
    assert!(json["dirs"]["incoming"]["bytes"].as_u64().unwrap_or(0) > 0);
    assert!(json["oldest_waiting_secs"].is_u64());
    env.run(&["status"]).output().code(0).stdout_has("incoming");
    env.run(&["check"])
        .output()
        .code(1)
        .stdout_has("ok    failure log")
        .stdout_has("run `ragspool migrate`");
    env.run(&["migrate"]).output().code(0);
    env.run(&["check"])
        .output()
        .code(0)
        .stdout_has("ok    database 127.0.0.1:")
        .stdout_has(", table rag_chunks");
    env.run(&["process"]).output().code(1);
    let json = env.run(&["status", "--json"]).output().code(0).json();
    let batches = json["recent_batches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(batches.len(), 1, "{json}");
    assert_eq!(batches[0]["done"], 3);
    assert_eq!(batches[0]["failed"], 7);
    env.run(&["status"])
        .output()
        .code(0)
        .stdout_has("done=3 failed=7");
    env.run(&["check"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .code(1)
        .stdout_has("FAIL  database");
}

#[test]
fn gen_is_deterministic_for_a_seed() {
    let a = TestEnv::new();
    let b = TestEnv::new();
    for env in [&a, &b] {
        env.run(&["init"]).output().code(0);
        env.generate_with(Gen {
            files: 2,
            records: 4,
            seed: Some(42),
            days: Some(1),
            ..Gen::default()
        });
    }
    let read = |env: &TestEnv| -> Vec<usize> {
        env.files_in("incoming")
            .iter()
            .map(|n| {
                std::fs::read(env.spool_dir("incoming").join(n))
                    .map(|b| b.len())
                    .unwrap_or(0)
            })
            .collect()
    };
    assert_eq!(read(&a), read(&b));
}
