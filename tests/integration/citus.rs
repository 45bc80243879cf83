//! SPEC §16 on a real Citus coordinator with two workers: migrate distributes
//! the tables (existing ones only with --distribute), check reports the cluster,
//! process is exactly once under SIGKILL and under a worker stopped mid-batch (no
//! prepared transaction left behind), files that only add rows go in together, claim order holds for documents on
//! different workers, self-heal and maintain create distributed partitions with
//! their HNSW and GIN (TEXT_SEARCH) indexes on every shard, and trace and status name logical partitions.

use crate::rag::{actual, expected, versions, write_versions};
use crate::support::citus::{Citus, citus};
use crate::support::{Gen, TestEnv, count, pg};
use std::time::Duration;

/// A spool on a fresh database of `cluster`, DISTRIBUTION=citus, pgvector column.
fn env_on(cluster: &Citus) -> TestEnv {
    let mut env = TestEnv::new();
    env.set("DATABASE_URL", cluster.new_database());
    env.set("DISTRIBUTION", "citus");
    env.set("EMBEDDING_TYPE", "vector");
    env.set("EMBED_DIM", "8");
    env
}

/// Rows per node of `table`'s shards: (port, rows), by port.
fn rows_per_node(url: &str, table: &str) -> Vec<(i32, i64)> {
    let mut c = pg(url);
    let rows = c
        .query(
            "SELECT nodeport, sum(result::bigint)::bigint FROM run_command_on_placements($1::text::regclass, 'SELECT count(*) FROM %s') \
             GROUP BY nodeport ORDER BY nodeport",
            &[&table],
        )
        .expect("rows per node");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Prepared transactions on every node of the database of `url`.
fn prepared_everywhere(cluster: &Citus, url: &str) -> i64 {
    cluster
        .node_urls(url)
        .iter()
        .map(|u| count(u, "SELECT count(*) FROM pg_prepared_xacts"))
        .sum()
}

/// The exactly-once invariants after `files` files of `records` records each.
#[track_caller]
fn assert_exactly_once(env: &TestEnv, files: i64, records: i64) {
    let url = env.db_url();
    let rows = files * records;
    assert_eq!(count(&url, "SELECT count(*) FROM rag_chunks"), rows);
    assert_eq!(
        count(
            &url,
            "SELECT count(DISTINCT (doc_id, chunk_index)) FROM rag_chunks"
        ),
        rows
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM ragspool_manifest WHERE status = 'done' AND NOT duplicate"
        ),
        files
    );
    assert_eq!(
        count(
            &url,
            "SELECT coalesce(sum(rows), 0)::bigint FROM ragspool_manifest WHERE status = 'done'"
        ),
        rows
    );
    assert_eq!(env.count_files("archive", ".msgpack"), files as usize);
    assert_eq!(env.files_in("incoming"), Vec::<String>::new());
    assert_eq!(env.files_in("processing"), Vec::<String>::new());
    assert_eq!(env.count_files("failed", ".msgpack"), 0);
}

/// Whether `text` names a shard table (`<table>_pYYYY_MM_DD_<shardid>`).
fn names_a_shard(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter_map(|word| word.strip_prefix("rag_chunks_p"))
        .any(|rest| rest.split('_').count() > 3)
}

#[test]
fn migrate_distributes_the_tables_and_check_reports_the_cluster() {
    let cluster = citus();
    let env = env_on(cluster);
    env.run(&["init"]).output().code(0);
    // Two hosts' migrate at once on a fresh database: one distributes, the other
    // finds it done under the lock, and both succeed.
    let mut both: Vec<_> = (0..2).map(|_| env.run(&["migrate"]).spawn()).collect();
    let outs: Vec<_> = both
        .iter_mut()
        .map(|child| crate::support::wait_with_deadline(child, Duration::from_secs(120)))
        .collect();
    for (status, _, stderr) in &outs {
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    }
    let said: Vec<&String> = outs
        .iter()
        .map(|(_, stdout, _)| stdout)
        .filter(|o| {
            o.contains("distributed by doc_id on the Citus coordinator: rag_chunks, ragspool_docs, ragspool_doc_events")
        })
        .collect();
    assert_eq!(said.len(), 1, "{outs:?}");
    let url = env.db_url();
    // One co-location group for the three tables and the partitions migrate made.
    assert_eq!(
        count(
            &url,
            "SELECT count(DISTINCT colocationid) FROM pg_dist_partition WHERE partmethod = 'h' \
             AND column_to_column_name(logicalrelid, partkey) = 'doc_id'"
        ),
        1
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text IN \
             ('rag_chunks', 'ragspool_docs', 'ragspool_doc_events')"
        ),
        3
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE 'rag_chunks_p%'"
        ),
        5,
        "today through today + PARTITION_PREMAKE_DAYS, distributed"
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text IN ('ragspool_manifest', \
             'ragspool_maintenance_runs', 'ragspool_failure_log_anchor', 'ragspool_schema_version')"
        ),
        0,
        "the coordinator's tables stay plain tables"
    );
    let check = env.run(&["check"]).output().code(0);
    for needle in [
        format!("ok    citus coordinator 127.0.0.1:{}", cluster.coordinator),
        format!("ok    citus worker 127.0.0.1:{}", cluster.workers[0]),
        format!("ok    citus worker 127.0.0.1:{}", cluster.workers[1]),
        "ok    table rag_chunks: distributed by doc_id".into(),
        "ok    table ragspool_doc_events: distributed by doc_id, co-located with rag_chunks".into(),
        "ok    table ragspool_manifest: on the coordinator".into(),
    ] {
        assert!(check.stdout.contains(&needle), "{needle}\n{}", check.stdout);
    }
    // Again: nothing left to distribute, nothing asked.
    env.run(&["migrate"]).output().code(0);
    env.run(&["check"])
        .env("DISTRIBUTION", "none")
        .output()
        .code(1)
        .stdout_has("set DISTRIBUTION=citus");
    // A server without Citus: 78 naming DISTRIBUTION, with how to install it,
    // from migrate and from process (whose schema is otherwise current).
    let plain = crate::support::servers::new_database();
    env.run(&["migrate"])
        .env("DATABASE_URL", &plain)
        .output()
        .code(78)
        .stderr_has("`DISTRIBUTION` is citus, but the citus extension is not created")
        .stderr_has("note: ");
    env.run(&["migrate"])
        .env("DATABASE_URL", &plain)
        .env("DISTRIBUTION", "none")
        .output()
        .code(0);
    env.run(&["process"])
        .env("DATABASE_URL", &plain)
        .output()
        .code(78)
        .stderr_has("`DISTRIBUTION` is citus, but the citus extension is not created");
    env.run(&["migrate", "--distribute"])
        .env("DISTRIBUTION", "none")
        .output()
        .code(78)
        .stderr_has("`DISTRIBUTION`");
    // A table distributed by doc_id but in a group of its own: refused, with the fix.
    pg(&url)
        .batch_execute("SELECT alter_distributed_table('ragspool_docs', colocate_with := 'none')")
        .expect("move ragspool_docs out of the group");
    env.run(&["migrate"])
        .output()
        .code(78)
        .stderr_has(
            "ragspool_docs is distributed by doc_id, but not co-located with the target table",
        )
        .stderr_has("undistribute_table('ragspool_docs')");
}

#[test]
fn existing_tables_are_distributed_only_by_migrate_distribute() {
    let cluster = citus();
    let env = env_on(cluster);
    env.run(&["init"]).output().code(0);
    env.run(&["migrate"])
        .env("DISTRIBUTION", "none")
        .output()
        .code(0);
    env.generate_with(Gen {
        files: 3,
        records: 40,
        dim: Some(8),
        days: Some(1),
        ..Gen::default()
    });
    env.run(&["process"])
        .env("DISTRIBUTION", "none")
        .output()
        .code(0);
    let url = env.db_url();
    env.run(&["migrate"])
        .output()
        .code(78)
        .stderr_has("rag_chunks, ragspool_docs, ragspool_doc_events exist and are not distributed")
        .stderr_has("ragspool migrate --distribute")
        .stderr_has("rag_chunks: 120 row(s)");
    env.run(&["check"])
        .output()
        .code(1)
        .stdout_has("not distributed; run `ragspool migrate --distribute`");
    env.run(&["migrate", "--distribute"])
        .output()
        .code(0)
        .stdout_has("Citus moves")
        .stdout_has("rag_chunks: 120 row(s)")
        .stdout_has("distributed by doc_id on the Citus coordinator");
    assert_eq!(count(&url, "SELECT count(*) FROM rag_chunks"), 120);
    let nodes = rows_per_node(&url, "rag_chunks");
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert_eq!(nodes.iter().map(|(_, n)| n).sum::<i64>(), 120, "{nodes:?}");
    // No copy of the rows is left behind on the coordinator.
    assert_eq!(
        count(
            &url,
            "SELECT coalesce(sum(pg_relation_size(inhrelid)), 0)::bigint FROM pg_inherits \
             WHERE inhparent = 'rag_chunks'::regclass"
        ),
        0
    );
    env.run(&["check"]).output().code(0);
}

#[test]
fn process_heal_maintain_hnsw_and_gin_on_a_coordinator_and_two_workers() {
    let mut env = env_on(citus());
    env.set("VECTOR_INDEX", "hnsw");
    env.set("TEXT_SEARCH", "english");
    env.set("VECTOR_INDEX_QUIET_SECS", "0");
    env.ready();
    // Six days back: self-heal attaches the missing partitions.
    env.generate_with(Gen {
        files: 8,
        records: 150,
        dim: Some(8),
        days: Some(6),
        ..Gen::default()
    });
    env.run(&["process"])
        .output()
        .code(0)
        .stdout_has("8 file(s) ingested");
    assert_exactly_once(&env, 8, 150);
    let url = env.db_url();
    let nodes = rows_per_node(&url, "rag_chunks");
    assert!(
        nodes.len() == 2 && nodes.iter().all(|(_, n)| *n > 0),
        "{nodes:?}"
    );
    let undistributed = "SELECT count(*) FROM pg_inherits i WHERE i.inhparent = 'rag_chunks'::regclass \
         AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = i.inhrelid)";
    assert_eq!(count(&url, undistributed), 0);
    let parts = count(
        &url,
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'rag_chunks'::regclass",
    );
    assert!(parts > 5, "{parts} partitions after self-heal");
    // maintain premakes further ahead: distributed too; and seals the past days.
    env.run(&["maintain"])
        .env("PARTITION_PREMAKE_DAYS", "7")
        .output()
        .code(0)
        .stdout_has("built the HNSW index on: rag_chunks_p")
        .stdout_has("built the GIN index on: rag_chunks_p");
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'rag_chunks'::regclass"
        ),
        parts + 3
    );
    assert_eq!(count(&url, undistributed), 0);
    // Every shard of every sealed partition has its valid HNSW and GIN indexes.
    let mut c = pg(&url);
    for method in ["hnsw", "gin"] {
        assert_every_shard_indexed(&mut c, method);
    }
    // trace and status name logical partitions, never shard tables.
    let doc: String = c
        .query_one("SELECT doc_id FROM rag_chunks LIMIT 1", &[])
        .expect("a document")
        .get(0);
    let trace = env.run(&["trace", &doc]).output().code(0);
    assert!(
        trace.stdout.contains("partitions rag_chunks_p"),
        "{}",
        trace.stdout
    );
    assert!(!names_a_shard(&trace.stdout), "{}", trace.stdout);
    let json = env.run(&["trace", &doc, "--json"]).output().code(0);
    assert!(!names_a_shard(&json.stdout), "{}", json.stdout);
    let status = env.run(&["status"]).output().code(0);
    assert!(!names_a_shard(&status.stdout), "{}", status.stdout);
    let status = env.run(&["status", "--json"]).output().code(0);
    assert!(!names_a_shard(&status.stdout), "{}", status.stdout);
    // Retention drops distributed partitions too.
    let out = env
        .run(&["maintain"])
        .env("PARTITION_RETENTION_DAYS", "2")
        .env("PARTITION_DROP", "true")
        .output()
        .code(0)
        .stdout_has("dropped: rag_chunks_p");
    assert!(!out.stderr.contains("cannot retire"), "{}", out.stderr);
}

/// Every partition with a valid `method` index has it, valid, on each of its
/// shards; at least four partitions are sealed.
#[track_caller]
fn assert_every_shard_indexed(c: &mut postgres::Client, method: &str) {
    let sealed: Vec<String> = c
        .query(
            "SELECT DISTINCT x.indrelid::regclass::text FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
             JOIN pg_am am ON am.oid = i.relam WHERE am.amname = $1 AND x.indisvalid",
            &[&method],
        )
        .expect("sealed partitions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(sealed.len() >= 4, "{method}: {sealed:?}");
    for part in &sealed {
        let command = format!(
            "SELECT count(*) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_am am ON am.oid = i.relam \
             WHERE x.indrelid = '%s'::regclass AND am.amname = '{method}' AND x.indisvalid"
        );
        let rows = c
            .query(
                "SELECT result FROM run_command_on_placements($1::text::regclass, $2)",
                &[part, &command],
            )
            .expect("indexes per shard");
        assert!(!rows.is_empty());
        for r in rows {
            assert_eq!(
                r.get::<_, String>(0),
                "1",
                "a shard of {part} lacks its {method} index"
            );
        }
    }
}

#[test]
fn replace_and_delete_keep_claim_order_for_documents_on_different_workers() {
    let mut env = env_on(citus());
    env.set("DOC_MODE", "replace");
    env.set("WORKERS", "4");
    env.set("BATCH_MAX_FILES", "7");
    env.ready();
    let url = env.db_url();
    // The test's documents live on both workers.
    assert_eq!(
        count(
            &url,
            "SELECT count(DISTINCT p.groupid) FROM unnest(ARRAY['alpha', 'beta', 'gamma', 'delta']) AS d \
             JOIN pg_dist_placement p ON p.shardid = get_shard_id_for_distribution_column('rag_chunks', d)"
        ),
        2
    );
    let v = versions(40, 0xc175);
    write_versions(&env, &v);
    env.run(&["process"]).output().code(0);
    assert_eq!(actual(&env), expected(&v));
    assert!(
        count(
            &url,
            "SELECT coalesce(sum(deleted), 0)::bigint FROM ragspool_manifest"
        ) > 0
    );
}

#[test]
fn sigkill_at_random_points_loses_and_duplicates_nothing_on_citus() {
    let env = env_on(citus());
    env.ready();
    // Enough batches that a run outlasts the kills' random moments (it takes
    // about a second).
    env.generate_with(Gen {
        files: 48,
        records: 50,
        dim: Some(8),
        days: Some(1),
        ..Gen::default()
    });
    let mut seed = crate::support::test_seed("citus sigkill_at_random_points");
    let mut mid_batch = 0;
    for _ in 0..8 {
        let mut child = env.run(&["process"]).env("BATCH_MAX_FILES", "3").spawn();
        // From its first claim on (a run's start on Citus takes a while), at a
        // random moment: in a COPY, a two-phase commit, between batches.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !crate::support::batch_in_flight(&env)
            && std::time::Instant::now() < deadline
            && child.try_wait().ok().flatten().is_none()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(
            crate::support::next_random(&mut seed) % 400,
        ));
        if crate::support::batch_in_flight(&env) {
            mid_batch += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    eprintln!("{mid_batch} of 8 kills landed while a batch was in processing/");
    assert!(mid_batch > 0, "no kill landed mid-batch");
    env.run(&["process"]).output().code(0);
    assert_exactly_once(&env, 48, 50);
}

/// Files that only add rows go in several to one (two-phase) transaction through
/// the coordinator, each still exactly once with its own lineage rows.
#[test]
fn files_that_only_add_rows_go_in_together_through_the_coordinator() {
    let mut env = env_on(citus());
    env.set("WORKERS", "1");
    env.ready();
    env.generate_with(Gen {
        files: 6,
        records: 50,
        dim: Some(8),
        days: Some(1),
        ..Gen::default()
    });
    env.run(&["process"]).output().code(0);
    assert_exactly_once(&env, 6, 50);
    let url = env.db_url();
    crate::ingest::assert_went_in_together(&url);
    assert_eq!(prepared_everywhere(citus(), &url), 0);
}

/// Through a coordinator the documents of files that go in together are inserted
/// by one COPY under a savepoint; a document that has a row already fails it, and
/// the group goes back to the savepoint and upserts them: still one transaction,
/// each file once, each document one row.
#[test]
fn files_that_go_in_together_add_to_documents_already_known() {
    let mut env = env_on(citus());
    env.set("WORKERS", "1");
    env.ready();
    env.generate_with(Gen {
        files: 4,
        records: 40,
        dim: Some(8),
        days: Some(1),
        seed: Some(7),
        ..Gen::default()
    });
    let url = env.db_url();
    pg(&url)
        .batch_execute("INSERT INTO ragspool_docs (doc_id) VALUES ('doc-7-0-0'), ('doc-7-3-2')")
        .expect("documents known before");
    env.run(&["process"]).output().code(0);
    assert_exactly_once(&env, 4, 40);
    crate::ingest::assert_went_in_together(&url);
    assert_eq!(
        count(&url, "SELECT count(*) FROM ragspool_docs"),
        count(&url, "SELECT count(DISTINCT doc_id) FROM rag_chunks")
    );
}

#[test]
fn a_worker_stopped_and_restarted_mid_batch_loses_and_doubles_nothing() {
    let cluster = Citus::own();
    let mut env = env_on(&cluster);
    env.set("RETRY_MAX_SECS", "30");
    env.ready();
    env.generate_with(Gen {
        files: 30,
        records: 100,
        dim: Some(8),
        days: Some(1),
        ..Gen::default()
    });
    let mut child = env.run(&["process"]).env("BATCH_MAX_FILES", "4").spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !crate::support::batch_in_flight(&env) {
        assert!(std::time::Instant::now() < deadline, "no batch started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    cluster.stop_worker(0);
    // Meanwhile check names the worker the coordinator cannot reach.
    env.run(&["check"]).output().code(1).stdout_has(&format!(
        "FAIL  citus worker 127.0.0.1:{}: unreachable",
        cluster.workers[0]
    ));
    std::thread::sleep(Duration::from_secs(1));
    cluster.start_worker(0);
    let (status, _, stderr) =
        crate::support::wait_with_deadline(&mut child, Duration::from_secs(120));
    // The batch waits for the worker and goes on; had it outlasted RETRY_MAX_SECS,
    // it would be 75 with every file still in processing/.
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{stderr}");
    assert_eq!(
        env.count_files("failed", ".msgpack"),
        0,
        "an outage fails no file"
    );
    // The next run resolves what the restart left in doubt before anything else.
    env.run(&["process"]).output().code(0);
    assert_exactly_once(&env, 30, 100);
    assert_eq!(prepared_everywhere(&cluster, &env.db_url()), 0);
}

#[test]
fn pg_partman_partitions_are_distributed_with_the_table() {
    crate::support::servers::ensure_partman();
    let env = env_on(citus());
    let url = env.db_url();
    pg(&url)
        .batch_execute("CREATE SCHEMA partman; CREATE EXTENSION pg_partman SCHEMA partman")
        .expect("pg_partman on the coordinator");
    env.run(&["init"]).output().code(0);
    env.run(&["migrate"])
        .output()
        .code(0)
        .stdout_has("table handed to pg_partman")
        .stdout_has("distributed by doc_id");
    // Three days back: self-heal goes through pg_partman's create_partition_time.
    env.generate_with(Gen {
        files: 4,
        records: 50,
        dim: Some(8),
        days: Some(3),
        ..Gen::default()
    });
    env.run(&["process"]).output().code(0);
    // maintain: pg_partman makes again the newest partition, dropped here (and
    // perhaps one more: it counts its premake from the newest row's time,
    // rounding, so after noon UTC it makes one day further).
    let newest: String = pg(&url)
        .query_one(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'rag_chunks'::regclass \
             ORDER BY inhrelid::regclass::text DESC LIMIT 1",
            &[],
        )
        .expect("newest partition")
        .get(0);
    pg(&url)
        .batch_execute(&format!("DROP TABLE {newest}"))
        .expect("drop");
    env.run(&["maintain"])
        .output()
        .code(0)
        .stdout_has("(pg_partman)");
    assert_eq!(
        count(
            &url,
            &format!(
                "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text = '{newest}'"
            )
        ),
        1
    );
    assert_exactly_once(&env, 4, 50);
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM pg_inherits i WHERE i.inhparent = 'rag_chunks'::regclass \
             AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = i.inhrelid)"
        ),
        0
    );
}
