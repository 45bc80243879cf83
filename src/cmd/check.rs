//! `ragspool check`: effective settings with origins, spool and failure-log safety.

use crate::cli::Args;
use crate::config::Config;
use crate::error::{Outcome, Result};
use crate::spool::{DIRS, Spool};
use serde_json::json;

/// One check and what it found.
struct Finding {
    what: String,
    problem: Option<String>,
}

pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let findings = findings(config);
    let failed = findings.iter().any(|f| f.problem.is_some());
    if args.has("json") {
        let settings: Vec<_> = config
            .shown
            .iter()
            .map(|s| {
                json!({"name": s.name, "value": s.value, "origin": s.origin.to_string(),
                       "default": s.default, "doc": s.doc})
            })
            .collect();
        let checks: Vec<_> = findings
            .iter()
            .map(|f| json!({"check": f.what, "ok": f.problem.is_none(), "problem": f.problem}))
            .collect();
        super::emit_json(&json!({"settings": settings, "checks": checks, "ok": !failed}))?;
        return Ok(Outcome::failed_if(failed));
    }
    let mut out = String::from("settings:\n");
    for s in &config.shown {
        let value = s.value.as_deref().unwrap_or("(unset)");
        out.push_str(&format!("  {:<24} {value}  [{}]\n", s.name, s.origin));
    }
    out.push_str("checks:\n");
    for f in &findings {
        match &f.problem {
            None => out.push_str(&format!("  ok    {}\n", f.what)),
            Some(p) => out.push_str(&format!("  FAIL  {}: {p}\n", f.what)),
        }
    }
    super::emit(&out)?;
    Ok(Outcome::failed_if(failed))
}

fn findings(config: &Config) -> Vec<Finding> {
    let spool = Spool::new(&config.spool_dir);
    let mut found = Vec::new();
    for name in DIRS {
        let dir = spool.dir(name);
        let problem = if !dir.is_dir() {
            Some("missing; run `ragspool init`".to_string())
        } else {
            crate::fs::unsafe_reason(&dir, 0o002, None)
        };
        found.push(Finding {
            what: format!("spool directory {}", dir.display()),
            problem,
        });
    }
    let log = &config.failure_log;
    found.push(Finding {
        what: format!("failure log {}", log.display()),
        problem: match crate::failure_log::check(log) {
            Err(e) => Some(e.to_string()),
            Ok(()) if !log.exists() => Some("missing; run `ragspool init`".into()),
            Ok(()) => None,
        },
    });
    if let Ok(v) = crate::failure_log::verify(log) {
        let torn = if v.torn {
            ", then a torn record that the next run removes"
        } else {
            ""
        };
        found.push(Finding {
            what: format!("failure log chain ({} records{torn})", v.lines),
            problem: v.first_broken.map(|line| {
                format!("line {line} breaks the hash chain: the log was edited or cut")
            }),
        });
    }
    found.extend(database(config));
    found.push(redis(config));
    found.extend(gate(config));
    found
}

/// Redis, when configured: a probe (TLS, AUTH, SELECT, PING).
fn redis(config: &Config) -> Finding {
    match config.cache() {
        None => Finding {
            what: "redis: not configured (REDIS_HOST unset), no cache or build updates".into(),
            problem: None,
        },
        Some(settings) => {
            let what = match &settings.topology {
                crate::cache::Topology::Standalone => format!(
                    "redis {}:{} db {}",
                    settings.host, settings.port, settings.db
                ),
                crate::cache::Topology::Cluster(nodes) => {
                    format!("redis cluster via {} seed node(s)", nodes.len())
                }
                crate::cache::Topology::Sentinel {
                    sentinels, master, ..
                } => format!(
                    "redis master `{master}` via {} sentinel(s), db {}",
                    sentinels.len(),
                    settings.db
                ),
            };
            let problem = crate::cache::Cache::new(settings)
                .probe()
                .err()
                .map(|e| e.to_string());
            Finding { what, problem }
        }
    }
}

/// Gate and alert URLs, templates and dead letters.
fn gate(config: &Config) -> Vec<Finding> {
    let mut found = Vec::new();
    for (name, url) in [
        ("gate", &config.gate_url),
        ("alert endpoint", &config.alert_url),
    ] {
        found.push(Finding {
            what: match url {
                Some(u) => format!("{name} {}", crate::redact::url(u)),
                None => format!("{name}: not configured, nothing is sent"),
            },
            problem: None,
        });
    }
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
/// and, on the same connection, the failure log against its anchor there.
fn database(config: &Config) -> Vec<Finding> {
    let names = crate::schema::Names::from_config(config);
    let mut what = format!("database, table {}", names.table);
    let mut anchor = None;
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
        if version >= crate::schema::VERSION {
            anchor = anchor_finding(&mut client, &names, &config.failure_log);
        }
        Ok((version < crate::schema::VERSION).then(|| {
            format!(
                "schema at version {version}, needs {}; run `ragspool migrate`",
                crate::schema::VERSION
            )
        }))
    })();
    let database = Finding {
        what,
        problem: problem.unwrap_or_else(|e| Some(e.to_string().replace('\n', "; "))),
    };
    std::iter::once(database).chain(anchor).collect()
}

/// The failure log against its anchor in the database, when there is one.
fn anchor_finding(
    client: &mut postgres::Client,
    names: &crate::schema::Names,
    log: &std::path::Path,
) -> Option<Finding> {
    let (records, head) = crate::failure_log::read_anchor(client, names, log).ok()??;
    Some(Finding {
        what: format!("failure log anchor ({records} records anchored in the database)"),
        problem: crate::failure_log::check_anchor(log, records, &head),
    })
}
