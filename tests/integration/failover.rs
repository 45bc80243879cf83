//! PostgreSQL failover: a multi-host DATABASE_URL with target_session_attrs, a
//! streaming standby promoted in the middle of a `watch` run.

use crate::support::servers::OwnPg;
use crate::support::{Gen, TestEnv, count};
use std::time::{Duration, Instant};

#[test]
fn watch_follows_a_promoted_standby_and_loses_and_duplicates_nothing() {
    let primary = OwnPg::start_with(|_| {}, |_| "-c full_page_writes=on".into());
    primary.create_db("failover");
    let standby = primary.standby();
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/failover?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let mut env = TestEnv::new();
    env.set("DATABASE_URL", url);
    env.set("RETRY_MAX_SECS", "60");
    env.set("BATCH_MAX_AGE_SECS", "0");
    env.set("WORKERS", "2");
    env.ready();
    let mut watch = env.run(&["watch"]).spawn();
    let (files, records) = (3u32, 40u32);
    let rounds = 8u32;
    for round in 0..rounds {
        env.generate_with(Gen {
            files,
            records,
            days: Some(1),
            seed: Some(u64::from(round + 10)),
            ..Gen::default()
        });
        if round == 3 {
            // The primary goes away cleanly (its WAL reaches the standby first)
            // and the standby takes over.
            primary.stop_fast();
            standby.promote();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while !(env.files_in("incoming").is_empty() && env.files_in("processing").is_empty()) {
        assert!(Instant::now() < deadline, "the spool never drained");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = nix_term(&watch);
    let _ = watch.wait();
    let new_primary = standby.url("127.0.0.1", "failover");
    let total = i64::from(rounds * files * records);
    assert_eq!(
        count(&new_primary, "SELECT count(*) FROM rag_chunks"),
        total
    );
    assert_eq!(
        count(
            &new_primary,
            "SELECT count(*) FROM (SELECT DISTINCT doc_id, chunk_index, content FROM rag_chunks) d"
        ),
        total
    );
    assert_eq!(
        count(
            &new_primary,
            "SELECT count(*) FROM ragspool_manifest WHERE status = 'done' AND NOT duplicate"
        ),
        i64::from(rounds * files)
    );
    assert_eq!(
        env.count_files("archive", ".msgpack"),
        (rounds * files) as usize
    );
    // Maintenance runs on the new primary, under its advisory lock.
    env.run(&["maintain"]).output().code(0);
    env.run(&["check"])
        .output()
        .stdout_has(&format!("127.0.0.1:{}", standby.port));
}

fn nix_term(child: &std::process::Child) -> std::io::Result<std::process::ExitStatus> {
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
}
