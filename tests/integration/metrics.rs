//! METRICS_FILE (SPEC §9) across commands and restarts: counters only grow and add
//! up to what the manifest says, and the file parses with Prometheus's own parser.

use crate::support::{Gen, TestEnv, pg};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Parses the file with prometheus_client's text parser (the reference Python
/// client, installed from PyPI when missing); returns series → value.
fn parse(path: &Path) -> HashMap<String, f64> {
    const SCRIPT: &str = r##"
import sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1]).read()
seen = set()
for family in text_string_to_metric_families(text):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        key = s.name + ("{" + labels + "}" if labels else "")
        assert key not in seen, f"duplicate series {key}"
        seen.add(key)
        print(key, s.value)
heads = [l.split()[2] for l in text.splitlines() if l.startswith("# TYPE")]
assert len(heads) == len(set(heads)), "a family has two TYPE lines"
"##;
    let run = || {
        Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(path)
            .output()
            .expect("python3")
    };
    let mut out = run();
    if String::from_utf8_lossy(&out.stderr).contains("No module named 'prometheus_client'") {
        let installed = Command::new("python3")
            .args(["-m", "pip", "install", "-q", "prometheus_client"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            installed,
            "prometheus_client is needed: pip install prometheus_client"
        );
        out = run();
    }
    assert!(
        out.status.success(),
        "{} does not parse: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the manifest says was ingested: rows, files ok and failed, batches by reason.
fn from_manifest(url: &str) -> HashMap<String, f64> {
    let mut c = pg(url);
    let mut want = HashMap::new();
    let row = c
        .query_one(
            "SELECT coalesce(sum(rows) FILTER (WHERE status = 'done'), 0)::float8, \
             count(*) FILTER (WHERE status = 'done')::float8, count(*) FILTER (WHERE status = 'failed')::float8 \
             FROM ragspool_manifest",
            &[],
        )
        .expect("manifest");
    want.insert("ragspool_rows_total".to_string(), row.get::<_, f64>(0));
    want.insert(
        "ragspool_files_total{outcome=\"ok\"}".to_string(),
        row.get::<_, f64>(1),
    );
    want.insert(
        "ragspool_files_total{outcome=\"failed\"}".to_string(),
        row.get::<_, f64>(2),
    );
    // A batch's reason by SPEC §6 precedence from its files.
    for r in c
        .query(
            "SELECT CASE WHEN bool_or(status = 'failed' AND reason = 'partition_missing') THEN 'partition_missing' \
             WHEN bool_or(status = 'failed') THEN 'failed' WHEN bool_or(healed) THEN 'healed_partition' \
             ELSE 'success' END FROM ragspool_manifest GROUP BY batch_tag",
            &[],
        )
        .expect("batches")
    {
        let key = format!("ragspool_batches_total{{reason=\"{}\"}}", r.get::<_, String>(0));
        *want.entry(key).or_insert(0.0) += 1.0;
    }
    want
}

#[test]
fn counters_add_up_across_commands_and_restarts_and_never_go_down() {
    let mut env = TestEnv::new().with_db();
    let metrics = env.spool().parent().expect("tmp").join("ragspool.prom");
    env.set("METRICS_FILE", metrics.display().to_string());
    env.set("BATCH_MAX_AGE_SECS", "0");
    env.ready();
    let url = env.db_url();
    let mut last: HashMap<String, f64> = HashMap::new();
    let mut check = |when: &str| {
        let now = parse(&metrics);
        for (k, v) in &last {
            if k.contains("_total") || k.ends_with("_sum") || k.ends_with("_count") {
                let got = now.get(k).copied().unwrap_or(0.0);
                assert!(got >= *v, "{k} went down from {v} to {got} after {when}");
            }
        }
        last = now;
    };
    let produce = |seed: u32, bad: u32| {
        env.generate_with(Gen {
            files: 3,
            records: 20,
            days: Some(2),
            seed: Some(u64::from(seed)),
            bad: Some(bad),
            ..Gen::default()
        });
    };
    let drained = |env: &TestEnv| {
        env.files_in("incoming").is_empty() && env.files_in("processing").is_empty()
    };
    let settled = |env: &TestEnv| {
        drained(env) && {
            let want = from_manifest(&url);
            let now = parse(&metrics);
            want.iter()
                .all(|(k, v)| now.get(k).copied().unwrap_or(0.0) == *v)
        }
    };
    let mut watch = env.run(&["watch"]).spawn();
    for round in 0..4u32 {
        produce(round * 10 + 1, round % 2);
        wait_for(60, "watch to ingest and write its metrics", || {
            settled(&env)
        });
        check("watch");
        produce(round * 10 + 2, 1);
        env.run(&["process"]).output();
        check("process");
        env.run(&["maintain"]).output().code(0);
        check("maintain");
        wait_for(60, "the spool to drain", || settled(&env));
        if round == 1 {
            // A SIGKILL while idle: the restarted watch goes on from the file's values.
            let _ = watch.kill();
            let _ = watch.wait();
            watch = env.run(&["watch"]).spawn();
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let want = from_manifest(&url);
    let got = parse(&metrics);
    for (k, v) in &want {
        assert_eq!(got.get(k).copied().unwrap_or(0.0), *v, "{k}");
    }
    assert!(want["ragspool_rows_total"] > 0.0);
    // Every file whose rows went in was observed once in the ingest-lag histogram.
    let ingested = crate::support::count(
        &url,
        "SELECT count(*) FROM ragspool_manifest WHERE status = 'done' AND NOT duplicate",
    );
    assert_eq!(
        got.get("ragspool_ingest_lag_seconds_count").copied(),
        Some(ingested as f64)
    );
    assert_eq!(
        got.get("ragspool_ingest_lag_seconds_bucket{le=\"+Inf\"}")
            .copied(),
        Some(ingested as f64)
    );
}
