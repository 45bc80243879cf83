//! Settings, loaded flag > environment > env file > default (SPEC §2). Stage one
//! collects raw values with their origin; stage two checks them all and reports
//! every problem at once, naming the variable and where it came from. Loading
//! never touches the network.

pub(crate) mod defs;
pub(crate) mod envfile;

use crate::error::{Error, Result};
use crate::redact::Secret;
use defs::{Default, SETTINGS, Setting};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a setting's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A command-line flag (its long name).
    Flag(&'static str),
    /// The process environment (under this name).
    Env(&'static str),
    /// An env file, at this line (under this name).
    File(PathBuf, usize, &'static str),
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(long) => write!(f, "flag --{long}"),
            Origin::Env(name) => write!(f, "environment {name}"),
            Origin::File(path, line, name) => write!(f, "{}:{line} {name}", path.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// One effective setting as `check` and `status --json` show it.
#[derive(Debug, Clone)]
pub(crate) struct Shown {
    /// Variable name.
    pub(crate) name: &'static str,
    /// Value for display (secrets as `***`), or `None` when unset.
    pub(crate) value: Option<String>,
    /// Where it came from.
    pub(crate) origin: Origin,
    /// The default as the docs give it.
    pub(crate) default: &'static str,
    /// What it does.
    pub(crate) doc: &'static str,
}

/// Redis connection settings; present only when REDIS_HOST or a SPEC §11
/// topology is set.
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    /// Standalone, REDIS_CLUSTER_NODES or REDIS_SENTINELS.
    pub(crate) topology: crate::cache::Topology,
    /// REDIS_HOST.
    pub(crate) host: String,
    /// REDIS_PORT.
    pub(crate) port: u16,
    /// REDIS_DB.
    pub(crate) db: i64,
    /// REDIS_USERNAME.
    pub(crate) username: Option<String>,
    /// REDIS_PASSWORD.
    pub(crate) password: Option<Secret>,
    /// REDIS_SSL.
    pub(crate) ssl: bool,
    /// REDIS_CA_CERT.
    pub(crate) ca_cert: Option<PathBuf>,
    /// REDIS_TIMEOUT_MS.
    pub(crate) timeout_ms: u64,
}

/// The embeddings endpoint; present only when EMBED_BASE_URL is set.
#[derive(Debug, Clone)]
pub(crate) struct EmbedSettings {
    /// EMBED_BASE_URL without a trailing slash.
    pub(crate) base_url: String,
    /// EMBED_MODEL.
    pub(crate) model: String,
    /// EMBED_API_KEY.
    pub(crate) api_key: Option<Secret>,
    /// EMBED_BATCH.
    pub(crate) batch: usize,
    /// EMBED_BATCH_BYTES.
    pub(crate) batch_bytes: usize,
    /// EMBED_MAX_RPS; 0 for no limit.
    pub(crate) max_rps: u32,
    /// EMBED_MAX_TPM; 0 for no limit.
    pub(crate) max_tpm: u64,
    /// EMBED_CONCURRENCY.
    pub(crate) concurrency: usize,
    /// EMBED_TIMEOUT_SECS.
    pub(crate) timeout: std::time::Duration,
    /// EMBED_REUSE.
    pub(crate) reuse: bool,
    /// EMBED_MEMORY_BYTES.
    pub(crate) memory_bytes: usize,
}

/// Every setting, checked and typed.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// SPOOL_DIR.
    pub(crate) spool_dir: PathBuf,
    /// RAG_LOG_FILE; `None` means stderr only.
    pub(crate) log_file: Option<PathBuf>,
    /// FAILURE_LOG.
    pub(crate) failure_log: PathBuf,
    /// DATABASE_URL or SUPABASE_DB_URL.
    pub(crate) database_url: Option<Secret>,
    /// PGHOST: libpq's host (or socket directory) for a URL that names none.
    pub(crate) pg_host: String,
    /// PGPORT: libpq's port for a URL that names none.
    pub(crate) pg_port: Option<String>,
    /// PGUSER: libpq's user for a URL that names none (else the login name).
    pub(crate) pg_user: Option<String>,
    /// RAGSPOOL_TABLE.
    pub(crate) table: String,
    /// EMBED_BASE_URL, EMBED_MODEL, EMBED_API_KEY.
    pub(crate) embed: Option<EmbedSettings>,
    /// EMBED_DIM.
    pub(crate) embed_dim: Option<usize>,
    /// GATE_URL.
    pub(crate) gate_url: Option<String>,
    /// GATE_TOKEN.
    pub(crate) gate_token: Option<Secret>,
    /// GATE_SECRET.
    pub(crate) gate_secret: Option<Secret>,
    /// GATE_TIMEOUT_MS.
    pub(crate) gate_timeout_ms: u64,
    /// GATE_TEMPLATE_DIR.
    pub(crate) gate_template_dir: Option<PathBuf>,
    /// ALERT_URL.
    pub(crate) alert_url: Option<String>,
    /// ALERT_TOKEN.
    pub(crate) alert_token: Option<Secret>,
    /// RAGSPOOL_USER.
    pub(crate) user: Option<String>,
    /// BATCH_MAX_FILES.
    pub(crate) batch_max_files: usize,
    /// BATCH_MAX_BYTES.
    pub(crate) batch_max_bytes: u64,
    /// BATCH_MAX_AGE_SECS.
    pub(crate) batch_max_age_secs: u64,
    /// ORPHAN_RECOVER_SECS.
    pub(crate) orphan_recover_secs: u64,
    /// WORKERS.
    pub(crate) workers: usize,
    /// MAX_FILE_BYTES.
    pub(crate) max_file_bytes: u64,
    /// FILE_MAX_FAULTS.
    pub(crate) file_max_faults: u32,
    /// RETRY_MAX_SECS.
    pub(crate) retry_max_secs: u64,
    /// DB_STATEMENT_TIMEOUT_MS and DB_LOCK_TIMEOUT_MS.
    pub(crate) db_timeouts: (u64, u64),
    /// PARTITION_PREMAKE_DAYS.
    pub(crate) partition_premake_days: u32,
    /// PARTITION_RETENTION_DAYS.
    pub(crate) partition_retention_days: Option<u32>,
    /// PARTITION_DROP.
    pub(crate) partition_drop: bool,
    /// MAINTENANCE_ALERT_AFTER.
    pub(crate) maintenance_alert_after: u32,
    /// SPEC §10: embedding type, vector index, DOC_MODE, partitions.
    pub(crate) storage: crate::storage::Storage,
    /// DISTRIBUTION (SPEC §16).
    pub(crate) distribution: Distribution,
    /// METRICS_FILE.
    pub(crate) metrics_file: Option<PathBuf>,
    /// REDIS_*; `None` when REDIS_HOST is unset.
    pub(crate) redis: Option<RedisSettings>,
    /// DEFAULT_TTL_SECONDS.
    pub(crate) default_ttl_seconds: u64,
    /// REDIS_BUILD_CHANNEL.
    pub(crate) redis_build_channel: String,
    /// CACHE_REDELETE_MS.
    pub(crate) cache_redelete_ms: u64,
    /// Every setting with its display value and origin.
    pub(crate) shown: Vec<Shown>,
    /// Every set value, unredacted but never printable, for `watch --exec`.
    pub(crate) effective: Vec<(&'static str, Secret)>,
    /// What loading noticed but did not refuse (an unknown key in the env file),
    /// for the caller to log once logging is set up.
    pub(crate) warnings: Vec<String>,
}

/// Where the target table lives (SPEC §16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Distribution {
    /// One PostgreSQL server.
    None,
    /// DATABASE_URL is a Citus coordinator; the table is distributed by doc_id.
    Citus,
}

/// Raw values with their origins, before checking.
struct Raw {
    values: HashMap<&'static str, (String, Origin)>,
    /// The env file's syntax errors, reported with the invalid values.
    problems: Vec<Problem>,
    /// The env file's unknown keys.
    warnings: Vec<String>,
}

/// One reason the settings are refused, and how to fix it when that is not plain.
struct Problem {
    text: String,
    note: Option<&'static str>,
}

impl From<String> for Problem {
    fn from(text: String) -> Problem {
        Problem { text, note: None }
    }
}

impl Raw {
    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|(v, _)| v.as_str())
    }

    /// The value as text, when set.
    fn text(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }

    /// The value as a whole number, when set (stage one checked its form).
    fn num(&self, name: &str) -> Option<u64> {
        self.get(name).and_then(|v| v.parse::<u64>().ok())
    }

    /// The value kept out of logs and reports.
    fn secret(&self, name: &str) -> Option<Secret> {
        self.get(name).map(Secret::new)
    }

    /// The value as a boolean, `default` when unset.
    fn flag(&self, name: &str, default: bool) -> bool {
        self.get(name).and_then(defs::parse_bool).unwrap_or(default)
    }
}

/// Where settings come from, so tests can supply them without touching the process.
pub(crate) struct Sources<'a> {
    /// Settings given as flags.
    pub(crate) flags: &'a [(&'static str, String)],
    /// `--env-file`, if given.
    pub(crate) env_file: Option<&'a Path>,
    /// Reads a process environment variable.
    pub(crate) env: &'a dyn Fn(&str) -> Option<String>,
}

/// Reads the process environment; a non-UTF-8 value is reported as invalid.
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// Loads and checks every setting; all problems are reported at once (exit 78).
pub(crate) fn load(sources: &Sources<'_>) -> Result<Config> {
    let mut raw = collect(sources)?;
    let mut problems = std::mem::take(&mut raw.problems);
    for setting in SETTINGS {
        if let Some((value, origin)) = raw.values.get(setting.name)
            && let Err(why) = (setting.check)(value)
        {
            problems.push(Problem {
                text: format!("`{}` ({origin}) {why}", setting.name),
                note: (setting.name == "DATABASE_URL").then_some(crate::pgurl::FORM),
            });
        }
    }
    let mut cross = Vec::new();
    let config = build(&raw, &mut cross);
    problems.extend(cross.into_iter().map(Problem::from));
    if problems.is_empty() {
        return Ok(config);
    }
    let mut msg = String::from("invalid configuration:");
    let mut notes: Vec<&str> = Vec::new();
    for p in &problems {
        msg.push_str("\n  ");
        msg.push_str(&p.text);
        if let Some(note) = p.note.filter(|n| !notes.contains(n)) {
            notes.push(note);
        }
    }
    // A misspelt key is often why a value is missing: said here too, since the
    // run stops before its warnings would be logged.
    for w in &raw.warnings {
        msg.push_str("\n  ");
        msg.push_str(w);
    }
    notes.push("fix the variables named above (see ragspool(1), ENVIRONMENT)");
    Err(Error::config(msg).with_note(notes.join("\nnote: ")))
}

/// Stage one: every source's raw value, highest source first.
fn collect(sources: &Sources<'_>) -> Result<Raw> {
    let file_path = sources.env_file.map(Path::to_path_buf).or_else(|| {
        (sources.env)("RAGSPOOL_ENV_FILE")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    });
    let parsed = match &file_path {
        Some(path) => read_env_file(path)?,
        None => envfile::Parsed::default(),
    };
    let shown_path = file_path.clone().unwrap_or_default();
    let problems = parsed
        .errors
        .iter()
        .map(|e| Problem {
            text: format!("{}:{}: {}", shown_path.display(), e.line, e.message),
            note: Some("the env file follows systemd's EnvironmentFile syntax: KEY=VALUE lines, # comments"),
        })
        .collect();
    let warnings = unknown_keys(&parsed.entries, &shown_path);
    let file_entries = parsed.entries;
    let mut values = HashMap::new();
    for setting in SETTINGS {
        let names: Vec<&'static str> = std::iter::once(setting.name)
            .chain(setting.fallback)
            .collect();
        let found = sources
            .flags
            .iter()
            .rev()
            .find(|(n, _)| *n == setting.name)
            .map(|(_, v)| (v.clone(), Origin::Flag(flag_of(setting.name))))
            .or_else(|| {
                names.iter().find_map(|n| {
                    (sources.env)(n)
                        .filter(|v| !v.is_empty())
                        .map(|v| (v, Origin::Env(n)))
                })
            })
            .or_else(|| {
                names.iter().find_map(|n| {
                    file_entries
                        .iter()
                        .rev()
                        .find(|e| e.key == *n && !e.value.is_empty())
                        .map(|e| (e.value.clone(), Origin::File(shown_path.clone(), e.line, n)))
                })
            });
        if let Some(found) = found {
            values.insert(setting.name, found);
        } else if let Default::Value(v) = setting.default {
            values.insert(setting.name, (v.to_string(), Origin::Default));
        }
    }
    Ok(Raw {
        values,
        problems,
        warnings,
    })
}

/// The long name of the flag that sets `setting`.
fn flag_of(setting: &str) -> &'static str {
    crate::cli::defs::GLOBAL_FLAGS
        .iter()
        .find(|f| f.setting == Some(setting))
        .map_or("", |f| f.long)
}

/// A warning for each key of the env file that is no setting: a typo there is
/// otherwise ignored without a word. The nearest setting is suggested.
fn unknown_keys(entries: &[envfile::Entry], path: &Path) -> Vec<String> {
    let known = || {
        SETTINGS
            .iter()
            .flat_map(|s| std::iter::once(s.name).chain(s.fallback))
            .chain(["RAGSPOOL_ENV_FILE"])
    };
    entries
        .iter()
        .filter(|e| !known().any(|k| k == e.key))
        .map(|e| {
            let hint = crate::suggest::closest(&e.key, known())
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            format!(
                "{}:{}: `{}` is not a ragspool setting and is ignored{hint}",
                path.display(),
                e.line,
                e.key
            )
        })
        .collect()
}

fn read_env_file(path: &Path) -> Result<envfile::Parsed> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!("cannot read env file `{}`: {e}", path.display()))
            .with_note("check --env-file / RAGSPOOL_ENV_FILE and the file's permissions")
    })?;
    Ok(envfile::parse(&text))
}

/// Stage two: typed values; cross-setting problems are added to `problems`.
fn build(raw: &Raw, problems: &mut Vec<String>) -> Config {
    let (text, num, secret) = (
        |n: &str| raw.text(n),
        |n: &str| raw.num(n),
        |n: &str| raw.secret(n),
    );
    let log_raw = text("RAG_LOG_FILE").unwrap_or_default();
    let log_file = (log_raw != "-").then(|| PathBuf::from(&log_raw));
    let failure_log = match text("FAILURE_LOG") {
        Some(p) => PathBuf::from(p),
        None => default_failure_log(log_file.as_deref()),
    };
    let embed = embed_settings(raw, problems);
    check_endpoints(raw, problems);
    let redis = redis_settings(raw, problems);
    let workers = num("WORKERS")
        .map(|w| w as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let storage = storage(raw, problems);
    let shown = shown(raw, workers, &failure_log);
    Config {
        spool_dir: PathBuf::from(text("SPOOL_DIR").unwrap_or_default()),
        log_file,
        failure_log,
        database_url: secret("DATABASE_URL"),
        pg_host: text("PGHOST").unwrap_or_default(),
        pg_port: text("PGPORT"),
        pg_user: text("PGUSER"),
        table: text("RAGSPOOL_TABLE").unwrap_or_default(),
        embed,
        embed_dim: num("EMBED_DIM").map(to_usize),
        gate_url: text("GATE_URL"),
        gate_token: secret("GATE_TOKEN"),
        gate_secret: secret("GATE_SECRET"),
        gate_template_dir: text("GATE_TEMPLATE_DIR").map(PathBuf::from),
        gate_timeout_ms: num("GATE_TIMEOUT_MS").unwrap_or(10_000),
        alert_url: text("ALERT_URL"),
        alert_token: secret("ALERT_TOKEN"),
        user: text("RAGSPOOL_USER"),
        batch_max_files: num("BATCH_MAX_FILES").map_or(50, to_usize),
        batch_max_bytes: num("BATCH_MAX_BYTES").unwrap_or(67_108_864),
        batch_max_age_secs: num("BATCH_MAX_AGE_SECS").unwrap_or(5),
        orphan_recover_secs: num("ORPHAN_RECOVER_SECS").unwrap_or(30).max(1),
        workers,
        max_file_bytes: num("MAX_FILE_BYTES").unwrap_or(268_435_456),
        file_max_faults: num("FILE_MAX_FAULTS").map_or(25, |n| n.min(u64::from(u32::MAX)) as u32),
        retry_max_secs: num("RETRY_MAX_SECS").unwrap_or(60),
        db_timeouts: (
            num("DB_STATEMENT_TIMEOUT_MS").unwrap_or(600_000),
            num("DB_LOCK_TIMEOUT_MS").unwrap_or(60_000),
        ),
        partition_premake_days: num("PARTITION_PREMAKE_DAYS").map_or(4, |d| d as u32),
        partition_retention_days: num("PARTITION_RETENTION_DAYS")
            .map(|d| d.min(u64::from(u32::MAX)) as u32),
        partition_drop: raw.flag("PARTITION_DROP", false),
        maintenance_alert_after: num("MAINTENANCE_ALERT_AFTER").map_or(3, |d| d as u32),
        storage,
        distribution: if raw.get("DISTRIBUTION") == Some("citus") {
            Distribution::Citus
        } else {
            Distribution::None
        },
        metrics_file: text("METRICS_FILE").map(PathBuf::from),
        redis,
        default_ttl_seconds: num("DEFAULT_TTL_SECONDS").unwrap_or(3600),
        redis_build_channel: text("REDIS_BUILD_CHANNEL").unwrap_or_default(),
        cache_redelete_ms: num("CACHE_REDELETE_MS").unwrap_or(1000),
        shown,
        effective: raw
            .values
            .iter()
            .map(|(k, (v, _))| (*k, Secret::new(v.clone())))
            .collect(),
        warnings: raw.warnings.clone(),
    }
}

/// The embeddings client's settings, when EMBED_BASE_URL is set.
fn embed_settings(raw: &Raw, problems: &mut Vec<String>) -> Option<EmbedSettings> {
    match (raw.text("EMBED_BASE_URL"), raw.text("EMBED_MODEL")) {
        (Some(base), Some(model)) => Some(EmbedSettings {
            base_url: base.trim_end_matches('/').to_string(),
            model,
            api_key: raw.secret("EMBED_API_KEY"),
            batch: raw.num("EMBED_BATCH").map_or(64, |n| n as usize),
            batch_bytes: raw
                .num("EMBED_BATCH_BYTES")
                .map_or(1_000_000, |n| n as usize),
            max_rps: raw
                .num("EMBED_MAX_RPS")
                .map_or(0, |n| n.min(u64::from(u32::MAX)) as u32),
            max_tpm: raw.num("EMBED_MAX_TPM").unwrap_or(0),
            concurrency: raw
                .num("EMBED_CONCURRENCY")
                .map_or(8, |n| n.clamp(1, 1024) as usize),
            timeout: std::time::Duration::from_secs(
                raw.num("EMBED_TIMEOUT_SECS").unwrap_or(60).max(1),
            ),
            reuse: raw.flag("EMBED_REUSE", true),
            memory_bytes: raw
                .num("EMBED_MEMORY_BYTES")
                .map_or(4 << 20, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        }),
        (Some(_), None) => {
            problems.push("`EMBED_MODEL` must be set when EMBED_BASE_URL is set".into());
            None
        }
        _ => None,
    }
}

/// Tokens are never sent in plain http beyond loopback, and GATE_SECRET must be
/// usable as a signing key.
fn check_endpoints(raw: &Raw, problems: &mut Vec<String>) {
    for (url_var, token_var) in [
        ("GATE_URL", "GATE_TOKEN"),
        ("ALERT_URL", "ALERT_TOKEN"),
        ("EMBED_BASE_URL", "EMBED_API_KEY"),
    ] {
        if let (Some(url), Some(_)) = (raw.get(url_var), raw.get(token_var))
            && url.starts_with("http://")
            && !crate::notify::webhook::is_loopback(url)
        {
            problems.push(format!(
                "`{url_var}` is plain http to a non-loopback host; {token_var} is never sent that way (use https://)"
            ));
        }
    }
    if let Some(secret) = raw.get("GATE_SECRET")
        && let Err(e) = crate::notify::webhook::signing_key(secret)
    {
        problems.push(e.to_string());
    }
}

/// Redis's settings, when REDIS_HOST or a cluster or sentinel topology is set.
fn redis_settings(raw: &Raw, problems: &mut Vec<String>) -> Option<RedisSettings> {
    let topology = topology(raw, problems);
    let wanted = raw.get("REDIS_HOST").is_some() || topology != crate::cache::Topology::Standalone;
    wanted.then(|| RedisSettings {
        topology,
        host: raw.text("REDIS_HOST").unwrap_or_default(),
        port: raw
            .num("REDIS_PORT")
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(6379),
        db: raw
            .num("REDIS_DB")
            .and_then(|d| i64::try_from(d).ok())
            .unwrap_or(0),
        username: raw.text("REDIS_USERNAME"),
        password: raw.secret("REDIS_PASSWORD"),
        ssl: raw.flag("REDIS_SSL", false),
        ca_cert: raw.text("REDIS_CA_CERT").map(PathBuf::from),
        timeout_ms: raw.num("REDIS_TIMEOUT_MS").unwrap_or(2000),
    })
}

/// SPEC §11's topology, with the rules that tie its settings together.
fn topology(raw: &Raw, problems: &mut Vec<String>) -> crate::cache::Topology {
    use crate::cache::Topology;
    let list = |name: &str| raw.get(name).and_then(|v| defs::parse_host_ports(v).ok());
    match (list("REDIS_CLUSTER_NODES"), list("REDIS_SENTINELS")) {
        (Some(_), Some(_)) => {
            problems.push(
                "`REDIS_CLUSTER_NODES` and `REDIS_SENTINELS` are both set; a cache is one or the other"
                    .into(),
            );
            Topology::Standalone
        }
        (Some(nodes), None) => {
            if raw.get("REDIS_DB").is_some_and(|d| d != "0") {
                problems.push(
                    "`REDIS_DB` must be 0 with REDIS_CLUSTER_NODES (a Redis Cluster has one database)"
                        .into(),
                );
            }
            Topology::Cluster(nodes)
        }
        (None, Some(sentinels)) => match raw.get("REDIS_SENTINEL_MASTER") {
            Some(master) => Topology::Sentinel {
                sentinels,
                master: master.to_string(),
                username: raw
                    .get("REDIS_SENTINEL_USERNAME")
                    .or(raw.get("REDIS_USERNAME"))
                    .map(str::to_string),
                password: raw
                    .get("REDIS_SENTINEL_PASSWORD")
                    .or(raw.get("REDIS_PASSWORD"))
                    .map(str::to_string),
            },
            None => {
                problems.push(
                    "`REDIS_SENTINEL_MASTER` must name the sentinel service when REDIS_SENTINELS is set"
                        .into(),
                );
                Topology::Standalone
            }
        },
        (None, None) => Topology::Standalone,
    }
}

/// SPEC §10's and §15's settings, typed, with the rules that tie them together.
fn storage(raw: &Raw, problems: &mut Vec<String>) -> crate::storage::Storage {
    use crate::storage::{
        DocMode, EmbeddingType, IndexBuild, IndexPolicy, Interval, Metric, Storage,
    };
    let num = |name: &str| raw.get(name).and_then(|v| v.parse::<u64>().ok());
    let dim = num("EMBED_DIM").and_then(|d| usize::try_from(d).ok());
    let embedding = match (raw.get("EMBEDDING_TYPE"), dim) {
        (Some("vector"), Some(dim)) => EmbeddingType::Vector(dim),
        (Some("halfvec"), Some(dim)) => EmbeddingType::Halfvec(dim),
        (Some(kind @ ("vector" | "halfvec")), None) => {
            problems.push(format!(
                "`EMBEDDING_TYPE` is {kind}, which needs `EMBED_DIM` (the {kind} column's dimension)"
            ));
            EmbeddingType::Array
        }
        _ => EmbeddingType::Array,
    };
    let metric = match raw.get("VECTOR_METRIC") {
        Some("l2") => Metric::L2,
        Some("ip") => Metric::Ip,
        _ => Metric::Cosine,
    };
    let hnsw = raw.get("VECTOR_INDEX") == Some("hnsw");
    if hnsw && !matches!(raw.get("EMBEDDING_TYPE"), Some("vector" | "halfvec")) {
        problems.push(
            "`VECTOR_INDEX` is hnsw, which needs EMBEDDING_TYPE=vector or halfvec (an HNSW index cannot be built on real[])"
                .into(),
        );
    }
    let index_policy = IndexPolicy {
        build: if raw.get("VECTOR_INDEX_BUILD") == Some("always") {
            IndexBuild::Always
        } else {
            IndexBuild::Sealed
        },
        quiet_secs: num("VECTOR_INDEX_QUIET_SECS").unwrap_or(600),
    };
    let defaults = Storage::default();
    Storage {
        embedding,
        hnsw: hnsw && embedding.pgvector(),
        text_search: raw.text("TEXT_SEARCH"),
        index_policy,
        metric,
        doc_mode: if raw.get("DOC_MODE") == Some("replace") {
            DocMode::Replace
        } else {
            DocMode::Append
        },
        interval: if raw.get("PARTITION_INTERVAL") == Some("month") {
            Interval::Month
        } else {
            Interval::Day
        },
        toast_tuple_target: num("TOAST_TUPLE_TARGET")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(defaults.toast_tuple_target),
        heal_max_partitions: num("HEAL_MAX_PARTITIONS")
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(defaults.heal_max_partitions),
        heal_max_future_days: num("HEAL_MAX_FUTURE_DAYS")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(defaults.heal_max_future_days),
    }
}

impl Config {
    /// How an error names `setting`: by the flag when it was given as one
    /// (`--user`), else by its variable (`RAGSPOOL_USER`).
    pub(crate) fn named(&self, setting: &str) -> String {
        match self
            .shown
            .iter()
            .find(|s| s.name == setting)
            .map(|s| &s.origin)
        {
            Some(Origin::Flag(long)) => format!("`--{long}`"),
            _ => format!("`{setting}`"),
        }
    }

    /// The cache client's settings, when REDIS_HOST is set.
    pub(crate) fn cache(&self) -> Option<crate::cache::CacheConfig> {
        self.redis.as_ref().map(|r| crate::cache::CacheConfig {
            topology: r.topology.clone(),
            host: r.host.clone(),
            port: r.port,
            db: r.db,
            username: r.username.clone(),
            password: r.password.as_ref().map(|p| p.expose().to_string()),
            ssl: r.ssl,
            ca_cert: r.ca_cert.clone(),
            default_ttl: self.default_ttl_seconds,
            build_channel: self.redis_build_channel.clone(),
            timeout: std::time::Duration::from_millis(r.timeout_ms),
        })
    }
}

/// The effective settings as environment variables (for a child process).
pub(crate) fn process_env_pairs(config: &Config) -> Vec<(String, String)> {
    config
        .effective
        .iter()
        .map(|(k, v)| (k.to_string(), v.expose().to_string()))
        .collect()
}

/// `rag_failures.jsonl` beside the log file (or under ./logs when logging to stderr).
fn default_failure_log(log_file: Option<&Path>) -> PathBuf {
    let dir = log_file
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("./logs"));
    dir.join("rag_failures.jsonl")
}

fn shown(raw: &Raw, workers: usize, failure_log: &Path) -> Vec<Shown> {
    SETTINGS
        .iter()
        .map(|s: &Setting| match raw.values.get(s.name) {
            Some((v, origin)) => Shown {
                name: s.name,
                value: Some(display_value(s, v)),
                origin: origin.clone(),
                default: s.default_text(),
                doc: s.doc,
            },
            None => Shown {
                name: s.name,
                value: computed_value(raw, s, workers, failure_log),
                origin: Origin::Default,
                default: s.default_text(),
                doc: s.doc,
            },
        })
        .collect()
}

/// The value in effect of an unset setting whose default is worked out, so that
/// `check` shows what is used rather than "(unset)".
fn computed_value(raw: &Raw, s: &Setting, workers: usize, failure_log: &Path) -> Option<String> {
    match s.name {
        "WORKERS" => Some(workers.to_string()),
        "FAILURE_LOG" => Some(failure_log.display().to_string()),
        "GATE_TEMPLATE_DIR" => Some("(built-in templates)".into()),
        "PGPORT" => Some("5432".into()),
        "PGUSER" => crate::privdrop::login_name(),
        "REDIS_SENTINEL_USERNAME" => raw.get("REDIS_USERNAME").map(str::to_string),
        "REDIS_SENTINEL_PASSWORD" => raw.get("REDIS_PASSWORD").map(|_| "***".into()),
        _ => None,
    }
}

fn display_value(setting: &Setting, value: &str) -> String {
    if setting.secret && !value.contains("://") {
        "***".into()
    } else {
        crate::redact::url(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_with(
        flags: &[(&'static str, String)],
        env: &[(&str, &str)],
        file: Option<&Path>,
    ) -> Result<Config> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |n: &str| env.get(n).cloned();
        load(&Sources {
            flags,
            env_file: file,
            env: &lookup,
        })
    }

    #[test]
    fn defaults_apply() -> Result<()> {
        let c = load_with(&[], &[], None)?;
        assert_eq!(c.spool_dir, PathBuf::from("/var/spool/ragspool"));
        assert_eq!(c.failure_log, PathBuf::from("./logs/rag_failures.jsonl"));
        assert_eq!(c.batch_max_files, 50);
        assert_eq!(c.table, "rag_chunks");
        assert!(c.redis.is_none() && c.database_url.is_none());
        Ok(())
    }

    #[test]
    fn precedence_is_flag_env_file_default() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("env");
        let mut f = std::fs::File::create(&path)?;
        writeln!(f, "BATCH_MAX_FILES=7\nWORKERS=3\nSPOOL_DIR=/file")?;
        let c = load_with(
            &[("SPOOL_DIR", "/flag".into())],
            &[("WORKERS", "5")],
            Some(&path),
        )?;
        assert_eq!(c.spool_dir, PathBuf::from("/flag"));
        assert_eq!(c.workers, 5);
        assert_eq!(c.batch_max_files, 7);
        let origin = c
            .shown
            .iter()
            .find(|s| s.name == "BATCH_MAX_FILES")
            .map(|s| s.origin.to_string());
        assert_eq!(
            origin,
            Some(format!("{}:1 BATCH_MAX_FILES", path.display()))
        );
        Ok(())
    }

    #[test]
    fn database_url_wins_over_supabase() -> Result<()> {
        let c = load_with(
            &[],
            &[
                ("SUPABASE_DB_URL", "postgres://s/db"),
                ("DATABASE_URL", "postgres://d/db"),
            ],
            None,
        )?;
        assert_eq!(
            c.database_url.as_ref().map(Secret::expose),
            Some("postgres://d/db")
        );
        let c = load_with(&[], &[("SUPABASE_DB_URL", "postgres://s/db")], None)?;
        assert_eq!(
            c.database_url.as_ref().map(Secret::expose),
            Some("postgres://s/db")
        );
        Ok(())
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load_with(
            &[],
            &[
                ("WORKERS", "many"),
                ("REDIS_PORT", "0"),
                ("REDIS_SSL", "perhaps"),
            ],
            None,
        )
        .err()
        .map(|e| (e.class(), e.to_string()));
        let Some((class, text)) = err else {
            unreachable!("should fail")
        };
        assert_eq!(class, crate::error::Class::Config);
        for name in ["`WORKERS`", "`REDIS_PORT`", "`REDIS_SSL`", "environment"] {
            assert!(text.contains(name), "{text}");
        }
    }

    #[test]
    fn tokens_never_go_over_plain_http_to_other_hosts() {
        let bad = load_with(
            &[],
            &[
                ("GATE_URL", "http://gate.example/hook"),
                ("GATE_TOKEN", "t"),
            ],
            None,
        );
        assert!(bad.is_err_and(|e| e.to_string().contains("`GATE_URL` is plain http")));
        let local = load_with(
            &[],
            &[("GATE_URL", "http://127.0.0.1:9/hook"), ("GATE_TOKEN", "t")],
            None,
        );
        assert!(local.is_ok());
        let tls = load_with(
            &[],
            &[("ALERT_URL", "https://a.example/"), ("ALERT_TOKEN", "t")],
            None,
        );
        assert!(tls.is_ok());
        let secret = load_with(&[], &[("GATE_SECRET", "whsec_***")], None);
        assert!(secret.is_err_and(|e| e.to_string().contains("`GATE_SECRET`")));
        let key = load_with(
            &[],
            &[
                ("EMBED_BASE_URL", "http://embed.example/v1"),
                ("EMBED_MODEL", "m"),
                ("EMBED_API_KEY", "sk"),
            ],
            None,
        );
        assert!(key.is_err_and(|e| e.to_string().contains("`EMBED_BASE_URL` is plain http")));
    }

    #[test]
    fn secrets_are_shown_redacted() -> Result<()> {
        let c = load_with(
            &[],
            &[
                ("DATABASE_URL", "postgres://u:hunter2@h/db"),
                ("GATE_TOKEN", "tok-123"),
            ],
            None,
        )?;
        let text = format!("{:?}", c.shown);
        assert!(
            !text.contains("hunter2") && !text.contains("tok-123"),
            "{text}"
        );
        assert!(!format!("{c:?}").contains("hunter2"));
        Ok(())
    }
}
