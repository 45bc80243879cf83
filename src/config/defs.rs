//! The one registry of settings (SPEC §2): name, fallback, default, doc, whether it
//! is secret, and how its value is checked. Docs and `check` read it from here.

/// How a setting's default is known.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Default {
    /// No default: unset unless given.
    None,
    /// This literal value.
    Value(&'static str),
    /// Worked out at start; the text says how (for docs).
    Computed(&'static str),
}

/// A setting and how to read it.
#[derive(Debug)]
pub(crate) struct Setting {
    /// Variable name.
    pub(crate) name: &'static str,
    /// A variable read when `name` is not set in the same source.
    pub(crate) fallback: Option<&'static str>,
    /// The default.
    pub(crate) default: Default,
    /// One line for docs.
    pub(crate) doc: &'static str,
    /// Shown as `***` everywhere.
    pub(crate) secret: bool,
    /// Checks a raw value; the message says what was expected.
    pub(crate) check: fn(&str) -> Result<(), String>,
}

impl Setting {
    /// The default as docs print it, or `-` for none.
    pub(crate) fn default_text(&self) -> &'static str {
        match self.default {
            Default::None => "-",
            Default::Value(v) | Default::Computed(v) => v,
        }
    }
}

/// Any value.
pub(crate) fn any(_: &str) -> Result<(), String> {
    Ok(())
}

fn in_range(raw: &str, min: u64, max: u64) -> Result<(), String> {
    match raw.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(()),
        _ if min == 0 && max == u64::MAX => Err(format!("must be a whole number, got `{raw}`")),
        _ if max == u64::MAX => Err(format!(
            "must be a whole number of at least {min}, got `{raw}`"
        )),
        _ => Err(format!(
            "must be a whole number from {min} to {max}, got `{raw}`"
        )),
    }
}

fn positive(raw: &str) -> Result<(), String> {
    in_range(raw, 1, u64::MAX)
}

fn whole(raw: &str) -> Result<(), String> {
    in_range(raw, 0, u64::MAX)
}

fn workers(raw: &str) -> Result<(), String> {
    in_range(raw, 1, 256)
}

fn port(raw: &str) -> Result<(), String> {
    in_range(raw, 1, 65535)
}

fn days(raw: &str) -> Result<(), String> {
    in_range(raw, 0, 366)
}

fn dim(raw: &str) -> Result<(), String> {
    in_range(raw, 1, 65536)
}

/// `host:port[,host:port...]`.
pub(crate) fn parse_host_ports(raw: &str) -> Result<Vec<(String, u16)>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (host, port) = p
                .rsplit_once(':')
                .ok_or_else(|| format!("`{p}` is not host:port"))?;
            let port: u16 = port
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("`{p}` has no valid port"))?;
            if host.is_empty() {
                return Err(format!("`{p}` has no host"));
            }
            Ok((host.trim_matches(['[', ']']).to_string(), port))
        })
        .collect::<Result<Vec<_>, String>>()
        .and_then(|v| {
            if v.is_empty() {
                Err("must list at least one host:port".into())
            } else {
                Ok(v)
            }
        })
}

fn host_ports(raw: &str) -> Result<(), String> {
    parse_host_ports(raw).map(|_| ())
}

fn embed_batch(raw: &str) -> Result<(), String> {
    in_range(raw, 1, 2048)
}

fn one_of(raw: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&raw) {
        Ok(())
    } else {
        Err(format!("must be {}, got `{raw}`", allowed.join(" or ")))
    }
}

fn embedding_type(raw: &str) -> Result<(), String> {
    one_of(raw, &["array", "vector", "halfvec"])
}

/// A text search configuration's name as it goes into DDL (SPEC §15): `name` or
/// `schema.name` of lowercase letters, digits and `_`, so that it needs no
/// quoting; whether the server has it is asked before it is used.
fn text_search(raw: &str) -> Result<(), String> {
    let ident = |s: &str| {
        let mut b = s.bytes();
        s.len() <= 63
            && matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c == b'_')
            && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    };
    let valid = match raw.split_once('.') {
        Some((schema, name)) => ident(schema) && ident(name),
        None => ident(raw),
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "must name a text search configuration (`english`, `simple`, or `schema.name`; lowercase letters, digits and `_`), got `{raw}`"
        ))
    }
}

fn vector_index(raw: &str) -> Result<(), String> {
    one_of(raw, &["none", "hnsw"])
}

fn index_build(raw: &str) -> Result<(), String> {
    one_of(raw, &["sealed", "always"])
}

fn metric(raw: &str) -> Result<(), String> {
    one_of(raw, &["cosine", "l2", "ip"])
}

fn doc_mode(raw: &str) -> Result<(), String> {
    one_of(raw, &["append", "replace"])
}

fn distribution(raw: &str) -> Result<(), String> {
    one_of(raw, &["none", "citus"])
}

fn interval(raw: &str) -> Result<(), String> {
    one_of(raw, &["day", "month"])
}

fn toast_target(raw: &str) -> Result<(), String> {
    // PostgreSQL accepts 128..=8160; 0 means "leave PostgreSQL's default".
    match raw.parse::<u64>() {
        Ok(0) | Ok(128..=8160) => Ok(()),
        _ => Err(format!(
            "must be 0 (PostgreSQL's default) or a whole number from 128 to 8160, got `{raw}`"
        )),
    }
}

fn future_days(raw: &str) -> Result<(), String> {
    in_range(raw, 0, 3660)
}

fn redis_db(raw: &str) -> Result<(), String> {
    in_range(raw, 0, 65535)
}

/// A boolean as people write them.
pub(crate) fn parse_bool(raw: &str) -> Option<bool> {
    match raw.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn boolean(raw: &str) -> Result<(), String> {
    parse_bool(raw)
        .map(|_| ())
        .ok_or_else(|| format!("must be true or false (also 1/0, yes/no, on/off), got `{raw}`"))
}

fn http_url(raw: &str) -> Result<(), String> {
    let rest = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
        .ok_or_else(|| {
            format!(
                "must be an http:// or https:// URL, got `{}`",
                crate::redact::url(raw)
            )
        })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("has no host: `{}`", crate::redact::url(raw)));
    }
    Ok(())
}

fn postgres_url(raw: &str) -> Result<(), String> {
    crate::pgurl::check(raw)
}

/// A table name: `name` or `schema.name`, lowercase identifiers short enough that
/// `<name>_pYYYY_MM_DD` still fits PostgreSQL's 63-byte limit.
pub(crate) fn table(raw: &str) -> Result<(), String> {
    let parts: Vec<&str> = raw.split('.').collect();
    let ok_ident = |s: &str| {
        let mut b = s.bytes();
        matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c == b'_')
            && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    };
    let valid = match parts.as_slice() {
        [name] => ok_ident(name) && name.len() <= 51,
        [schema, name] => {
            ok_ident(schema) && schema.len() <= 63 && ok_ident(name) && name.len() <= 51
        }
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "must be `name` or `schema.name` of lowercase letters, digits and `_` (name at most 51 bytes), got `{raw}`"
        ))
    }
}

fn not_empty(raw: &str) -> Result<(), String> {
    if raw.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(())
    }
}

const fn s(
    name: &'static str,
    default: Default,
    doc: &'static str,
    check: fn(&str) -> Result<(), String>,
) -> Setting {
    Setting {
        name,
        fallback: None,
        default,
        doc,
        secret: false,
        check,
    }
}

const fn secret(name: &'static str, doc: &'static str) -> Setting {
    Setting {
        name,
        fallback: None,
        default: Default::None,
        doc,
        secret: true,
        check: any,
    }
}

use self::Default::{Computed, None as Unset, Value};

/// Every setting, in the order docs list them.
pub(crate) static SETTINGS: &[Setting] = &[
    s(
        "SPOOL_DIR",
        Value("/var/spool/ragspool"),
        "spool root",
        not_empty,
    ),
    s(
        "RAG_LOG_FILE",
        Value("./logs/rag_ingestion.log"),
        "log file; `-` = stderr only (packages set /var/log/rag_ingestion.log)",
        not_empty,
    ),
    s(
        "FAILURE_LOG",
        Computed("rag_failures.jsonl beside RAG_LOG_FILE"),
        "secure append-only failure log (JSON Lines, hash-chained)",
        not_empty,
    ),
    Setting {
        name: "DATABASE_URL",
        fallback: Some("SUPABASE_DB_URL"),
        default: Unset,
        doc: "postgres:// URL (else SUPABASE_DB_URL); sslmode and sslrootcert honoured",
        secret: true,
        check: postgres_url,
    },
    s(
        "PGHOST",
        Value("/var/run/postgresql"),
        "as libpq: the socket directory (or host names) used when DATABASE_URL names no host",
        not_empty,
    ),
    s(
        "PGPORT",
        Computed("5432"),
        "as libpq: the port (and socket file .s.PGSQL.PORT) used when DATABASE_URL names none",
        port,
    ),
    s(
        "PGUSER",
        Computed("the login name"),
        "as libpq: the user when DATABASE_URL names none",
        not_empty,
    ),
    s(
        "RAGSPOOL_TABLE",
        Value("rag_chunks"),
        "target table (schema-qualified allowed)",
        table,
    ),
    s(
        "EMBED_BASE_URL",
        Unset,
        "OpenAI-compatible base URL; POST {base}/embeddings",
        http_url,
    ),
    s("EMBED_MODEL", Unset, "embedding model name", not_empty),
    secret("EMBED_API_KEY", "bearer token for the embeddings endpoint"),
    s(
        "EMBED_DIM",
        Unset,
        "expected embedding length; a mismatch is a bad record",
        dim,
    ),
    s(
        "EMBED_BATCH",
        Value("64"),
        "most texts in one embeddings request",
        embed_batch,
    ),
    s(
        "EMBED_BATCH_BYTES",
        Value("1000000"),
        "most UTF-8 bytes of text in one embeddings request; a longer text goes alone",
        positive,
    ),
    s(
        "EMBED_MAX_RPS",
        Value("0"),
        "embeddings requests per second, shared by every worker (0: no limit); a 429's Retry-After pauses all",
        whole,
    ),
    s(
        "EMBED_CONCURRENCY",
        Value("8"),
        "most embeddings requests in flight at once, shared by every worker of the process; a file's requests go out concurrently, and the concurrency in effect adapts to 429 and 503 answers",
        positive,
    ),
    s(
        "EMBED_MAX_TPM",
        Value("0"),
        "most tokens sent to the embeddings endpoint per minute, shared by every worker of the process (0: no limit); counted as the endpoint's usage reports them, estimated as ceil(bytes / 4) per text until it answers",
        whole,
    ),
    s(
        "EMBED_TIMEOUT_SECS",
        Value("60"),
        "one embeddings request's deadline; a request past it is a transient endpoint fault, retried within RETRY_MAX_SECS",
        positive,
    ),
    s(
        "EMBED_MEMORY_BYTES",
        Value("4194304"),
        "most bytes of fetched vectors the process holds in memory for files waiting for their COPY; the rest spill to processing/<batch_tag>/.<file>.vectors and are read back during the COPY (0: all spill)",
        whole,
    ),
    s(
        "EMBED_REUSE",
        Value("true"),
        "replace mode: a chunk whose content equals a row its file removes, embedded by the same EMBED_MODEL, keeps that vector",
        boolean,
    ),
    s(
        "EMBEDDING_TYPE",
        Value("array"),
        "`array`: embedding real[]; `vector`: pgvector's vector(EMBED_DIM); `halfvec`: pgvector's halfvec(EMBED_DIM), 2 bytes an element (pgvector 0.7+); EMBED_DIM required with either",
        embedding_type,
    ),
    s(
        "VECTOR_INDEX",
        Value("none"),
        "`hnsw`: partitions carry an HNSW index on embedding (needs EMBEDDING_TYPE=vector or halfvec)",
        vector_index,
    ),
    s(
        "VECTOR_INDEX_BUILD",
        Value("sealed"),
        "when partitions get their HNSW and GIN indexes: `sealed`: maintain indexes partitions whose range ended and that are quiet; `always`: from creation",
        index_build,
    ),
    s(
        "VECTOR_INDEX_QUIET_SECS",
        Value("600"),
        "sealed: a partition is indexed once it took no row for this long",
        whole,
    ),
    s(
        "VECTOR_METRIC",
        Value("cosine"),
        "HNSW operator class: `cosine`, `l2` or `ip`",
        metric,
    ),
    s(
        "TEXT_SEARCH",
        Unset,
        "a text search configuration (`english`, `simple`, ...): the table gets content_tsv, generated by to_tsvector, and partitions a GIN index on it as VECTOR_INDEX_BUILD says",
        text_search,
    ),
    s(
        "DOC_MODE",
        Value("append"),
        "`append`: a file's rows are added; `replace`: they replace every row of each doc_id the file carries",
        doc_mode,
    ),
    s(
        "DISTRIBUTION",
        Value("none"),
        "`none`: one PostgreSQL server; `citus`: DATABASE_URL is a Citus coordinator and the target table is distributed by doc_id",
        distribution,
    ),
    s("GATE_URL", Unset, "gate webhook URL", http_url),
    secret("GATE_TOKEN", "bearer token sent to the gate"),
    secret(
        "GATE_SECRET",
        "Standard Webhooks signing secret (whsec_ base64 or raw)",
    ),
    s(
        "GATE_TIMEOUT_MS",
        Value("10000"),
        "timeout of one webhook request (gate and alerts); a timeout is retried",
        positive,
    ),
    s(
        "GATE_TEMPLATE_DIR",
        Computed("built-in templates"),
        "directory of <event>.json templates overriding the built-ins",
        not_empty,
    ),
    s(
        "ALERT_URL",
        Unset,
        "dev-dashboard alert webhook URL",
        http_url,
    ),
    secret("ALERT_TOKEN", "bearer token sent to ALERT_URL"),
    s(
        "RAGSPOOL_USER",
        Unset,
        "started as root, drop to this user after opening the failure log",
        not_empty,
    ),
    s(
        "BATCH_MAX_FILES",
        Value("50"),
        "watcher: run a batch at this many waiting files",
        positive,
    ),
    s(
        "BATCH_MAX_BYTES",
        Value("67108864"),
        "watcher: ... or at this many waiting bytes",
        positive,
    ),
    s(
        "BATCH_MAX_AGE_SECS",
        Value("5"),
        "watcher: ... or when the oldest waiting file is this old",
        whole,
    ),
    s(
        "ORPHAN_RECOVER_SECS",
        Value("30"),
        "while watch runs, a batch whose claiming process has gone (killed, on this host or another sharing the spool) is recovered within this many seconds",
        positive,
    ),
    s(
        "WORKERS",
        Computed("number of CPUs"),
        "parallel file ingest within a batch (one DB connection each)",
        workers,
    ),
    s(
        "MAX_FILE_BYTES",
        Value("268435456"),
        "larger files fail as bad input",
        positive,
    ),
    s(
        "FILE_MAX_FAULTS",
        Value("25"),
        "tries of one file that may end in a fault of its own (the embeddings endpoint's wrong answer for its texts, a statement timeout on its rows) before it fails as bad input; outages never count",
        positive,
    ),
    s(
        "DB_STATEMENT_TIMEOUT_MS",
        Value("600000"),
        "statement_timeout of every ingest statement; a statement past it is cancelled and retried as transient (0: none)",
        whole,
    ),
    s(
        "DB_LOCK_TIMEOUT_MS",
        Value("60000"),
        "lock_timeout: a lock wait past it is given up and retried as transient (0: none)",
        whole,
    ),
    s(
        "RETRY_MAX_SECS",
        Value("60"),
        "how long transient database and embedding errors are retried before exit 75",
        whole,
    ),
    s(
        "PARTITION_PREMAKE_DAYS",
        Value("4"),
        "maintenance keeps partitions covering today through today + this many days (UTC)",
        days,
    ),
    s(
        "PARTITION_INTERVAL",
        Value("day"),
        "`day` (<table>_pYYYY_MM_DD) or `month` (<table>_pYYYY_MM) partitions",
        interval,
    ),
    s(
        "TOAST_TUPLE_TARGET",
        Value("8160"),
        "toast_tuple_target of every partition ragspool creates; rows up to this size stay inline (0: PostgreSQL's default)",
        toast_target,
    ),
    s(
        "HEAL_MAX_PARTITIONS",
        Value("400"),
        "most partitions self-heal creates for one file; more fails it with partition_missing",
        positive,
    ),
    s(
        "HEAL_MAX_FUTURE_DAYS",
        Value("31"),
        "a row dated after today + this many days (UTC) fails its file with partition_missing",
        future_days,
    ),
    s(
        "PARTITION_RETENTION_DAYS",
        Unset,
        "maintenance detaches daily partitions older than this many days",
        positive,
    ),
    s(
        "PARTITION_DROP",
        Value("false"),
        "retention drops detached partitions instead of keeping them",
        boolean,
    ),
    s(
        "MAINTENANCE_ALERT_AFTER",
        Value("3"),
        "alert after this many consecutive stalled maintenance runs",
        positive,
    ),
    s(
        "METRICS_FILE",
        Unset,
        "Prometheus textfile-collector output, replaced atomically",
        not_empty,
    ),
    s(
        "REDIS_HOST",
        Unset,
        "Redis host; unset = no Redis",
        not_empty,
    ),
    s("REDIS_PORT", Value("6379"), "Redis port", port),
    s("REDIS_DB", Value("0"), "Redis database index", redis_db),
    s("REDIS_USERNAME", Unset, "Redis ACL user", not_empty),
    secret("REDIS_PASSWORD", "Redis password"),
    s(
        "REDIS_SSL",
        Value("false"),
        "connect to Redis with TLS",
        boolean,
    ),
    s(
        "REDIS_CA_CERT",
        Unset,
        "PEM CA certificate added to the system's for TLS to Redis",
        not_empty,
    ),
    s(
        "REDIS_CLUSTER_NODES",
        Unset,
        "comma-separated host:port seed nodes of a Redis Cluster (REDIS_HOST/PORT then ignored, REDIS_DB must be 0)",
        host_ports,
    ),
    s(
        "REDIS_SENTINELS",
        Unset,
        "comma-separated host:port of Redis Sentinels naming the master (with REDIS_SENTINEL_MASTER)",
        host_ports,
    ),
    s(
        "REDIS_SENTINEL_MASTER",
        Unset,
        "the sentinel service name; required with REDIS_SENTINELS",
        not_empty,
    ),
    Setting {
        name: "REDIS_SENTINEL_USERNAME",
        fallback: None,
        default: Computed("REDIS_USERNAME"),
        doc: "ACL user for the sentinels themselves",
        secret: false,
        check: not_empty,
    },
    Setting {
        name: "REDIS_SENTINEL_PASSWORD",
        fallback: None,
        default: Computed("REDIS_PASSWORD"),
        doc: "password for the sentinels themselves",
        secret: true,
        check: any,
    },
    s(
        "REDIS_TIMEOUT_MS",
        Value("2000"),
        "connect, read and write timeout for Redis; a connection that times out is dropped",
        positive,
    ),
    s(
        "DEFAULT_TTL_SECONDS",
        Value("3600"),
        "cache TTL when none is given; 0 = no expiry",
        whole,
    ),
    s(
        "CACHE_REDELETE_MS",
        Value("1000"),
        "after a batch replaces or deletes documents, their cached answers are deleted again this long after the build update",
        whole,
    ),
    s(
        "REDIS_BUILD_CHANNEL",
        Value("build_updates"),
        "build-update channel",
        not_empty,
    ),
];

/// The setting named `name`.
pub(crate) fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_defaults_pass_their_own_check() {
        for s in SETTINGS {
            if let Default::Value(v) = s.default {
                assert_eq!((s.check)(v), Ok(()), "{}", s.name);
            }
        }
    }

    #[test]
    fn checks_say_what_was_expected() {
        assert!(positive("0").is_err());
        assert!(
            port("70000")
                .err()
                .unwrap_or_default()
                .contains("1 to 65535")
        );
        assert!(boolean("maybe").is_err());
        assert!(table("public.rag_chunks").is_ok());
        assert!(table("Bad-Name").is_err());
        assert!(table("a.b.c").is_err());
        assert!(postgres_url("postgres://u:p@h/db?sslmode=verify-full").is_ok());
        assert!(postgres_url("postgres://u@h:notaport/db").is_err());
        assert!(postgres_url("postgres://h/db?sslmode=bogus").is_err());
        assert!(postgres_url("mysql://h/db").is_err());
        assert!(http_url("ftp://x").is_err());
        // A text search configuration goes into DDL: an identifier, nothing else.
        assert!(text_search("english").is_ok() && text_search("pg_catalog.simple").is_ok());
        for bad in [
            "English",
            "english'); DROP TABLE x; --",
            "a.b.c",
            "",
            "1st",
            "two words",
        ] {
            assert!(text_search(bad).is_err(), "{bad}");
        }
        assert!(embedding_type("halfvec").is_ok() && embedding_type("half").is_err());
    }
}
