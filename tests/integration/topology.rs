//! The cache in a Redis Cluster and behind Sentinels (SPEC §11), on real servers.

use crate::support::servers::{OwnCluster, OwnSentinel, redis_cli};
use crate::support::{Gen, TestEnv};
use ragspool::cache::{Cache, CacheConfig, Topology};
use std::time::{Duration, Instant};

fn addrs(list: &str) -> Vec<(String, u16)> {
    list.split(',')
        .filter_map(|a| a.rsplit_once(':'))
        .map(|(h, p)| (h.to_string(), p.parse().unwrap_or(0)))
        .collect()
}

#[test]
fn a_cluster_spreads_keys_over_every_master_and_takes_build_updates() {
    let cluster = OwnCluster::start();
    let mut cfg = CacheConfig::new("unused", 1);
    cfg.topology = Topology::Cluster(addrs(&cluster.seeds()));
    let mut cache = Cache::new(cfg);
    for i in 0..60 {
        let key = format!("q{i}");
        cache
            .set_json_namespace("answers", &key, &serde_json::json!({ "n": i }), None)
            .expect("set in the cluster");
    }
    for i in 0..60 {
        let key = format!("q{i}");
        assert_eq!(
            cache.get_json_namespace("answers", &key).ok().flatten(),
            Some(serde_json::json!({ "n": i }))
        );
    }
    for node in &cluster.nodes {
        let keys: u64 = redis_cli(node.port, &["DBSIZE"])
            .trim()
            .parse()
            .unwrap_or(0);
        assert!(keys > 0, "master {} holds none of the keys", node.port);
    }
    let mut env = TestEnv::new().with_db();
    env.set("REDIS_CLUSTER_NODES", cluster.seeds());
    env.run(&["cache", "probe"])
        .output()
        .code(0)
        .stdout_has("cluster 3 masters");
    env.ready();
    env.generate(2, 5, 0);
    env.run(&["process"]).output().code(0);
    let generation = cache
        .command(&["GET", "rag:build_generation"])
        .expect("generation");
    assert_eq!(
        generation,
        ragspool::cache::Reply::Bulk(Some(b"1".to_vec())),
        "one build update for the one batch"
    );
    env.run(&["cache", "get", "answers", "q7"])
        .output()
        .code(0)
        .stdout_has("{\"n\":7}");
    env.run(&["check"])
        .env("REDIS_DB", "3")
        .output()
        .code(78)
        .stderr_has("`REDIS_DB` must be 0");
}

/// Waits for the replica to be in sync, then asks the sentinel until it takes the
/// failover on.
fn start_failover(s: &OwnSentinel) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !redis_cli(s.replica.port, &["INFO", "replication"]).contains("master_link_status:up")
        || !redis_cli(s.port, &["SENTINEL", "FAILOVER", "mymaster"]).contains("OK")
    {
        assert!(
            Instant::now() < deadline,
            "the sentinel never took the failover on"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sentinels_name_the_master_and_the_cache_follows_a_failover() {
    let s = OwnSentinel::start();
    let mut cfg = CacheConfig::new("unused", 1);
    cfg.timeout = Duration::from_millis(500);
    cfg.topology = Topology::Sentinel {
        sentinels: vec![("127.0.0.1".into(), s.port)],
        master: "mymaster".into(),
        username: None,
        password: None,
    };
    let mut cache = Cache::new(cfg);
    let probe = cache.probe().expect("probe");
    assert_eq!(
        probe.topology,
        format!("sentinel master 127.0.0.1:{}", s.master.port)
    );
    let mut env = TestEnv::new();
    env.set("REDIS_SENTINELS", format!("127.0.0.1:{}", s.port));
    env.set("REDIS_SENTINEL_MASTER", "mymaster");
    env.run(&["cache", "probe"])
        .output()
        .code(0)
        .stdout_has(&format!("sentinel master 127.0.0.1:{}", s.master.port));
    env.run(&["check"])
        .env_remove("REDIS_SENTINEL_MASTER")
        .output()
        .code(78)
        .stderr_has("`REDIS_SENTINEL_MASTER`");
    // Cache commands go on through a failover and reach the new master. A value
    // read back is the one just written, or, while the cache is still on the
    // demoted master (it checks once a second), an earlier one: a write the old
    // master took and the new one never got (Redis replicates asynchronously).
    // Never a later or foreign value, and no more lost writes than a second holds.
    start_failover(&s);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ok_after_failover = 0;
    let mut lost = Vec::new();
    let mut i = 0;
    // The sentinels may leave the old master taking writes for seconds; the cache
    // checks the master once a second, so 40 rounds (2 s) after the switch its
    // writes land on the new master.
    while ok_after_failover < 40 {
        assert!(
            Instant::now() < deadline,
            "the cache never followed the failover"
        );
        i += 1;
        let value = serde_json::json!({ "i": i });
        if cache.set_json_namespace("fo", "k", &value, None).is_ok()
            && let Ok(got) = cache.get_json_namespace("fo", "k")
        {
            let got_i = got.as_ref().and_then(|g| g["i"].as_i64());
            if got != Some(value) {
                // None: even the first writes went to the old master only.
                assert!(
                    got.is_none() || got_i.is_some_and(|j| j < i),
                    "a misplaced reply: {got:?} after writing {i}"
                );
                lost.push(i);
            } else if s.master_port() == Some(s.replica.port) {
                ok_after_failover += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // One second of rounds (50 ms apart) at the most.
    assert!(lost.len() <= 20, "writes lost to the old master: {lost:?}");
    assert_eq!(
        cache.probe().expect("probe").topology,
        format!("sentinel master 127.0.0.1:{}", s.replica.port)
    );
    assert!(
        redis_cli(s.replica.port, &["GET", "rag:fo:k"]).contains("\"i\""),
        "the value lives on the promoted replica"
    );
}

#[test]
fn watch_publishes_build_updates_through_a_sentinel_failover() {
    let s = OwnSentinel::start();
    let mut env = TestEnv::new().with_db();
    env.set("REDIS_SENTINELS", format!("127.0.0.1:{}", s.port));
    env.set("REDIS_SENTINEL_MASTER", "mymaster");
    env.set("REDIS_TIMEOUT_MS", "500");
    env.set("BATCH_MAX_AGE_SECS", "0");
    env.ready();
    let mut watch = env.run(&["watch"]).spawn();
    let produce = |seed: u64| {
        env.generate_with(Gen {
            files: 1,
            records: 5,
            days: Some(1),
            seed: Some(seed),
            ..Gen::default()
        });
    };
    let drained = |env: &TestEnv| {
        env.files_in("incoming").is_empty() && env.files_in("processing").is_empty()
    };
    produce(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !drained(&env) {
        assert!(Instant::now() < deadline, "the first file never went in");
        std::thread::sleep(Duration::from_millis(50));
    }
    start_failover(&s);
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.master_port() != Some(s.replica.port) {
        assert!(Instant::now() < deadline, "the failover never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Batches after the failover publish to the new master.
    for seed in 2..6 {
        produce(seed);
        std::thread::sleep(Duration::from_millis(1200));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !drained(&env) {
        assert!(Instant::now() < deadline, "the spool never drained");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = watch.kill();
    let _ = watch.wait();
    let generation: u64 = redis_cli(s.replica.port, &["GET", "rag:build_generation"])
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        generation >= 4,
        "the new master took the build updates of the batches after the failover: {generation}"
    );
}
