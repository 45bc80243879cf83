//! Read-only looks at an installation for the commands that report on it: the
//! findings `check` lists (spool, failure log, database, Redis, endpoints) and
//! what the database tells `status`. Kept out of the commands so that they only
//! choose the output; nothing here writes or repairs.

use crate::cache::{Cache, CacheConfig, Topology};
use crate::config::Config;
use crate::error::Result;
use crate::ingest::manifest::{self, BatchSummary};
use crate::schema::Names;
use crate::spool::{DIRS, Spool};
use std::path::Path;
use std::time::SystemTime;

/// What `check` says of a spool directory or failure log that `init` creates.
const MISSING: &str = "missing; run `ragspool init`";

/// One check and what it found.
pub(crate) struct Finding {
    /// What was checked, as the operator reads it.
    pub(crate) what: String,
    /// Why it fails, or `None` when it passes.
    pub(crate) problem: Option<String>,
}

/// Every check of `check`, in the order it lists them.
pub(crate) fn findings(config: &Config) -> Vec<Finding> {
    let mut found = spool_dirs(config);
    let log = failure_log(&config.failure_log);
    // A log that is missing or unsafe has no chain to judge: an "ok" for its chain
    // or its anchor beside the log's FAIL would contradict it. An anchor that
    // finds records gone is still said.
    let log_ok = log.problem.is_none();
    found.push(log);
    if log_ok {
        found.extend(failure_log_chain(&config.failure_log));
    }
    let (db, anchor, cluster) = database(config);
    found.push(db);
    found.extend(anchor.filter(|a| log_ok || a.problem.is_some()));
    found.extend(cluster);
    found.push(redis(config));
    found.extend(endpoints(config));
    found
}

/// Each spool directory must exist and be neither a symlink nor world-writable:
/// either would let another user drop or swap the files that are ingested.
fn spool_dirs(config: &Config) -> Vec<Finding> {
    let spool = Spool::new(&config.spool_dir);
    DIRS.iter()
        .map(|name| {
            let dir = spool.dir(name);
            let problem = if !dir.is_dir() {
                Some(MISSING.to_string())
            } else {
                crate::fs::unsafe_reason(&dir, 0o002, None)
            };
            Finding {
                what: format!("spool directory {}", dir.display()),
                problem,
            }
        })
        .collect()
}

/// The log records what failed and why, so a symlink or a mode open to group or
/// others is a finding; a missing one is named too, since `init` is what creates
/// it with its mode.
fn failure_log(log: &Path) -> Finding {
    Finding {
        what: format!("failure log {}", log.display()),
        problem: match crate::failure_log::check(log) {
            Err(e) => Some(e.to_string()),
            Ok(()) if !log.exists() => Some(MISSING.into()),
            Ok(()) => None,
        },
    }
}

/// The hash chain catches an edit or a cut that the file's mode cannot show; a
/// log that cannot be read has no chain to judge, so it adds no finding.
fn failure_log_chain(log: &Path) -> Option<Finding> {
    let v = crate::failure_log::verify(log).ok()?;
    let torn = if v.torn {
        ", then a torn record that the next run removes"
    } else {
        ""
    };
    Some(Finding {
        what: format!("failure log chain ({} records{torn})", v.lines),
        problem: v
            .first_broken
            .map(|line| format!("line {line} breaks the hash chain: the log was edited or cut")),
    })
}

/// Redis, when configured: a probe (TLS, AUTH, SELECT, PING).
fn redis(config: &Config) -> Finding {
    match config.cache() {
        None => Finding {
            what: "redis: not configured (REDIS_HOST unset), no cache or build updates".into(),
            problem: None,
        },
        Some(settings) => {
            let what = redis_target(&settings);
            let problem = Cache::new(settings).probe().err().map(|e| e.to_string());
            Finding { what, problem }
        }
    }
}

/// Names the Redis the probe reached by its topology, since a cluster or a
/// sentinel-managed master is not one host and port.
fn redis_target(settings: &CacheConfig) -> String {
    match &settings.topology {
        Topology::Standalone => format!(
            "redis {}:{} db {}",
            settings.host, settings.port, settings.db
        ),
        Topology::Cluster(nodes) => format!("redis cluster via {} seed node(s)", nodes.len()),
        Topology::Sentinel {
            sentinels, master, ..
        } => format!(
            "redis master `{master}` via {} sentinel(s), db {}",
            sentinels.len(),
            settings.db
        ),
    }
}

/// Gate and alert URLs, templates and dead letters. The URLs are shown, never
/// called: `check` must not deliver an event.
fn endpoints(config: &Config) -> Vec<Finding> {
    let mut found: Vec<Finding> = [
        ("gate", &config.gate_url),
        ("alert endpoint", &config.alert_url),
    ]
    .into_iter()
    .map(|(name, url)| Finding {
        what: match url {
            Some(u) => format!("{name} {}", crate::redact::url(u)),
            None => format!("{name}: not configured, nothing is sent"),
        },
        problem: None,
    })
    .collect();
    found.push(Finding {
        what: "templates".into(),
        problem: crate::notify::template::check_all(config.gate_template_dir.as_deref())
            .err()
            .map(|e| e.to_string().replace('\n', "; ")),
    });
    let (waiting, dead) = crate::notify::gate::outbox_depth(&config.spool_dir);
    found.push(Finding {
        what: format!("outbox ({waiting} waiting)"),
        problem: (dead > 0)
            .then(|| format!("{dead} event(s) in outbox/dead/ were refused by their endpoint")),
    });
    found
}

/// The database: reachable (one attempt, no retries) and at the schema version;
/// and, on the same connection, the failure log against its anchor there and
/// (SPEC §16) the Citus cluster's nodes and tables.
fn database(config: &Config) -> (Finding, Option<Finding>, Vec<Finding>) {
    let names = Names::from_config(config);
    let mut what = format!("database, table {}", names.table);
    let mut anchor = None;
    let mut cluster = Vec::new();
    let problem = (|| -> Result<Option<String>> {
        let db = crate::db::Db::from_config(config)?;
        let mut client = db
            .connect_once()
            .map_err(|e| crate::db::classify(e, "connecting"))?;
        // With a multi-host DATABASE_URL, which host answered (the primary).
        if let Ok(row) = client.query_one(
            "SELECT coalesce(host(inet_server_addr()), 'local socket') || ':' || current_setting('port')",
            &[],
        ) {
            what = format!("database {}, table {}", row.get::<_, String>(0), names.table);
        }
        let version = crate::schema::current_version(&mut client, &names)?;
        if config.distribution == crate::config::Distribution::Citus {
            cluster = citus(&mut client, &names);
        } else if crate::distribution::is_citus_table(&mut client, &names)? {
            cluster = vec![Finding {
                what: "distribution".into(),
                problem: Some(format!(
                    "{} is a Citus distributed table, but DISTRIBUTION is none; set DISTRIBUTION=citus",
                    names.table
                )),
            }];
        }
        if version < crate::schema::VERSION {
            return Ok(Some(format!(
                "schema at version {version}, needs {}; run `ragspool migrate`",
                crate::schema::VERSION
            )));
        }
        anchor = anchor_finding(&mut client, &names, &config.failure_log);
        // The table as the storage settings say (embedding type, TEXT_SEARCH):
        // what every other command would refuse, with the fix.
        match crate::schema::require_current(&mut client, &names) {
            Ok(()) => Ok(None),
            Err(e) if e.class() == crate::error::Class::Config => {
                Ok(Some(e.to_string().replace('\n', "; ")))
            }
            Err(e) => Err(e),
        }
    })();
    let database = Finding {
        what,
        problem: problem.unwrap_or_else(|e| Some(e.to_string().replace('\n', "; "))),
    };
    (database, anchor, cluster)
}

/// SPEC §16: the coordinator, the workers it lists (each reached through it), and
/// whether each table is distributed or on the coordinator as it should be.
fn citus(client: &mut postgres::Client, names: &Names) -> Vec<Finding> {
    use crate::distribution;
    if let Err(e) = distribution::require_coordinator(client) {
        return vec![Finding {
            what: "citus coordinator".into(),
            problem: Some(e.to_string().replace('\n', "; ")),
        }];
    }
    let mut found = match distribution::nodes(client) {
        Ok(nodes) => nodes_findings(nodes),
        Err(e) => vec![Finding {
            what: "citus nodes".into(),
            problem: Some(e.to_string()),
        }],
    };
    match distribution::table_findings(client, names) {
        Ok(tables) => found.extend(
            tables
                .into_iter()
                .map(|(what, problem)| Finding { what, problem }),
        ),
        Err(e) => found.push(Finding {
            what: "citus tables".into(),
            problem: Some(e.to_string()),
        }),
    }
    found
}

/// One finding per node; a cluster without an active worker is one too.
fn nodes_findings(nodes: Vec<crate::distribution::Node>) -> Vec<Finding> {
    let workers = nodes.iter().filter(|n| !n.coordinator).count();
    let mut found: Vec<Finding> = nodes
        .into_iter()
        .map(|n| {
            let role = if n.coordinator {
                "coordinator"
            } else {
                "worker"
            };
            let problem = match (n.active, n.unreachable) {
                (false, _) => Some("inactive in pg_dist_node: Citus routes nothing to it".into()),
                (true, Some(why)) if !n.coordinator => Some(format!("unreachable: {why}")),
                _ => None,
            };
            Finding {
                what: format!("citus {role} {}", n.address),
                problem,
            }
        })
        .collect();
    if workers == 0 {
        found.push(Finding {
            what: "citus workers".into(),
            problem: Some("the coordinator lists no worker; add them with citus_add_node".into()),
        });
    }
    found
}

/// The failure log against its anchor in the database, when there is one.
fn anchor_finding(client: &mut postgres::Client, names: &Names, log: &Path) -> Option<Finding> {
    let (records, head) = crate::failure_log::read_anchor(client, names, log).ok()??;
    Some(Finding {
        what: format!("failure log anchor ({records} records anchored in the database)"),
        problem: crate::failure_log::check_anchor(log, records, &head),
    })
}

/// Whole seconds since the oldest waiting file was last modified, `None` when
/// none waits; a clock behind the file's mtime reads as 0 rather than an error.
pub(crate) fn oldest_waiting_secs(spool: &Spool) -> Result<Option<u64>> {
    let oldest = spool.waiting()?.iter().map(|w| w.modified).min();
    Ok(oldest.map(|m| {
        SystemTime::now()
            .duration_since(m)
            .map_or(0, |d| d.as_secs())
    }))
}

/// Partitions that lack what SPEC §10 gives them.
#[derive(Debug, Default)]
pub(crate) struct Partitions {
    /// Partitions still waiting for an index (HNSW, GIN), with the index.
    pub(crate) unindexed: Vec<(crate::storage::PartitionIndex, String)>,
    /// Partitions without their TOAST_TUPLE_TARGET storage parameter.
    pub(crate) lacking_storage: Vec<String>,
}

/// What the database tells `status`.
#[derive(Debug)]
pub(crate) struct DbView {
    /// The most recent batches, newest first, or why the database could not be
    /// read (as one line, since `status` reports it rather than failing on it).
    pub(crate) batches: std::result::Result<Vec<BatchSummary>, String>,
    /// The last maintenance run, if one is recorded.
    pub(crate) maintenance: Option<crate::maintenance::Run>,
    /// Partitions still missing an index or storage parameter.
    pub(crate) partitions: Partitions,
    /// Tokens sent to the embeddings endpoint for files finished in the last 24 h.
    pub(crate) tokens_24h: Option<i64>,
}

impl DbView {
    /// A view of `batches` alone: a database without the schema has nothing else
    /// to show, and one that cannot be read has only its error.
    fn bare(batches: std::result::Result<Vec<BatchSummary>, String>) -> DbView {
        DbView {
            batches,
            maintenance: None,
            partitions: Partitions::default(),
            tokens_24h: None,
        }
    }
}

/// The last ten batches, the last maintenance run and the partitions still
/// waiting for their index or storage parameter, read on one connection with
/// one attempt, so that `status` answers at once when the database is down.
pub(crate) fn database_view(config: &Config) -> DbView {
    let names = Names::from_config(config);
    let read = || -> Result<DbView> {
        let db = crate::db::Db::from_config(config)?;
        let mut client = db
            .connect_once()
            .map_err(|e| crate::db::classify(e, "connecting"))?;
        if crate::schema::current_version(&mut client, &names)? == 0 {
            return Ok(DbView::bare(Ok(Vec::new())));
        }
        Ok(DbView {
            batches: Ok(manifest::recent_batches(&mut client, &names, 10)?),
            maintenance: crate::maintenance::last_run(&mut client, &names)?,
            partitions: Partitions {
                unindexed: crate::partition::unindexed(&mut client, &names)?
                    .into_iter()
                    .map(|w| (w.index, w.partition))
                    .collect(),
                lacking_storage: crate::partition::lacking_storage(&mut client, &names)?
                    .into_iter()
                    .collect(),
            },
            tokens_24h: Some(manifest::tokens_last_day(&mut client, &names)?),
        })
    };
    read().unwrap_or_else(|e| {
        let first_line = e.to_string().lines().next().unwrap_or_default().to_string();
        DbView::bare(Err(first_line))
    })
}
