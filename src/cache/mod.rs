//! The Redis query cache that RAG services read (SPEC §8), as a small public API.
//!
//! Keys, byte for byte:
//! - legacy query key: `rag:q:<sha1 hex of the UTF-8 query>:<top_k>` ([`query_key`]);
//! - namespaced JSON: `rag:<ns>:<key>` ([`json_key`]);
//! - namespaced MessagePack: `rag:<ns>:m:<md5 hex of ns + key>` ([`msgpack_key`]).
//!
//! Values are written with one atomic `SET … EX` (no expiry when the TTL is 0).
//! The client is the `redis` crate, on one server, a Redis Cluster or the master
//! that Sentinels name ([`Topology`]); a connection that hit any error (a timeout
//! above all) is dropped, never reused, so a late reply is never read as the
//! answer to the next command.
//! Hits and misses are counted in process and added to the `rag:cache_metrics`
//! hash by [`Cache::flush_stats`].
//!
//! ```no_run
//! use ragspool::cache::{Cache, CacheConfig};
//! let mut cache = Cache::new(CacheConfig::new("127.0.0.1", 6379));
//! cache.set_json_namespace("answers", "q1", &serde_json::json!({"text": "…"}), None)?;
//! let hit = cache.get_json_namespace("answers", "q1")?;
//! # Ok::<(), ragspool::cache::CacheError>(())
//! ```
//!
//! An answer computed from documents names them, so that it goes when ragspool
//! replaces or deletes any of them (README.md shows this same example):
//!
//! ```no_run
//! use ragspool::cache::{Cache, CacheConfig};
//! let mut cache = Cache::new(CacheConfig::new("127.0.0.1", 6379));
//! let answer = serde_json::json!({"text": "Refunds take 14 days.", "sources": ["policy-7", "faq-2"]});
//! cache.set_json_namespace_deps("answers", "refund-time", &answer, Some(3600), &["policy-7", "faq-2"])?;
//! // After a batch replaces policy-7, this is a miss and the service answers afresh.
//! let cached = cache.get_json_namespace("answers", "refund-time")?;
//! # let _ = cached;
//! # Ok::<(), ragspool::cache::CacheError>(())
//! ```

mod conn;
mod encoding;
pub(crate) mod invalidation;

use crate::digest::hex;
use crate::error::Error;
use conn::Conn;
pub(crate) use encoding::Encoding;
use md5::Md5;
use sha1::{Digest, Sha1};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Hash where hits and misses are summed across processes.
pub const METRICS_KEY: &str = "rag:cache_metrics";
/// How often a Sentinel client checks that its master is still the master.
const MASTER_RECHECK: Duration = Duration::from_secs(1);
/// Counter behind [`Cache::publish_build_update`]'s generation.
pub const GENERATION_KEY: &str = "rag:build_generation";

/// Which Redis deployment the cache talks to (SPEC §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server at `host:port` of [`CacheConfig`].
    Standalone,
    /// REDIS_CLUSTER_NODES: seed nodes of a Redis Cluster.
    Cluster(Vec<(String, u16)>),
    /// REDIS_SENTINELS and REDIS_SENTINEL_MASTER: the master the sentinels name.
    Sentinel {
        /// The sentinels, asked in order.
        sentinels: Vec<(String, u16)>,
        /// The service name.
        master: String,
        /// REDIS_SENTINEL_USERNAME (else REDIS_USERNAME).
        username: Option<String>,
        /// REDIS_SENTINEL_PASSWORD (else REDIS_PASSWORD); never printed.
        password: Option<String>,
    },
}

/// A reply to a raw [`Cache::command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A status such as `OK` or `PONG`.
    Status(String),
    /// An integer.
    Int(i64),
    /// A bulk string, or nil.
    Bulk(Option<Vec<u8>>),
    /// An array.
    Array(Vec<Reply>),
    /// Anything else, as text.
    Other(String),
}

impl From<redis::Value> for Reply {
    fn from(v: redis::Value) -> Reply {
        match v {
            redis::Value::Nil => Reply::Bulk(None),
            redis::Value::Int(n) => Reply::Int(n),
            redis::Value::BulkString(b) => Reply::Bulk(Some(b)),
            redis::Value::SimpleString(s) => Reply::Status(s),
            redis::Value::Okay => Reply::Status("OK".into()),
            redis::Value::Array(items) | redis::Value::Set(items) => {
                Reply::Array(items.into_iter().map(Reply::from).collect())
            }
            redis::Value::VerbatimString { text, .. } => Reply::Bulk(Some(text.into_bytes())),
            other => Reply::Other(format!("{other:?}")),
        }
    }
}

/// How to reach Redis and the cache's defaults.
#[derive(Clone)]
pub struct CacheConfig {
    /// The deployment: standalone (`host`, `port`), cluster or sentinel.
    pub topology: Topology,
    /// REDIS_HOST.
    pub host: String,
    /// REDIS_PORT.
    pub port: u16,
    /// REDIS_DB.
    pub db: i64,
    /// REDIS_USERNAME (ACL user).
    pub username: Option<String>,
    /// REDIS_PASSWORD; never printed.
    pub password: Option<String>,
    /// REDIS_SSL.
    pub ssl: bool,
    /// REDIS_CA_CERT: a PEM CA added to the system's for TLS.
    pub ca_cert: Option<PathBuf>,
    /// DEFAULT_TTL_SECONDS.
    pub default_ttl: u64,
    /// REDIS_BUILD_CHANNEL.
    pub build_channel: String,
    /// Connect, read and write timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("topology", &topology_shown(&self.topology))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ssl", &self.ssl)
            .finish_non_exhaustive()
    }
}

/// A topology for display, the sentinels' password as `***`.
fn topology_shown(t: &Topology) -> String {
    match t {
        Topology::Standalone => "standalone".into(),
        Topology::Cluster(nodes) => format!("cluster {nodes:?}"),
        Topology::Sentinel {
            sentinels, master, ..
        } => format!("sentinel {master} via {sentinels:?}"),
    }
}

impl CacheConfig {
    /// Defaults of SPEC §2 for `host:port`.
    pub fn new(host: &str, port: u16) -> CacheConfig {
        CacheConfig {
            topology: Topology::Standalone,
            host: host.to_string(),
            port,
            db: 0,
            username: None,
            password: None,
            ssl: false,
            ca_cert: None,
            default_ttl: 3600,
            build_channel: "build_updates".into(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a cache call failed.
#[derive(Debug)]
pub enum CacheError {
    /// Redis could not be reached or stopped answering (temporary).
    Unavailable(String),
    /// Redis refused the credentials.
    Auth(String),
    /// Redis answered with an error.
    Server(String),
    /// A value could not be encoded or decoded, or a setting is unusable.
    Invalid(String),
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheError::Unavailable(m) => write!(f, "redis unavailable: {m}"),
            CacheError::Auth(m) => write!(f, "redis refused the credentials: {m}"),
            CacheError::Server(m) => write!(f, "redis error: {m}"),
            CacheError::Invalid(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for CacheError {}

/// A cache failure as the crate's error, whose kind sets a command's exit status:
/// unreachable 75 (it may pass), refused credentials or an unusable value or
/// setting 78 (the operator must act), a server's error 1.
impl From<CacheError> for Error {
    fn from(e: CacheError) -> Error {
        match e {
            CacheError::Unavailable(_) => Error::temp(e.to_string()),
            CacheError::Auth(_) => {
                Error::config(e.to_string()).with_note("check REDIS_USERNAME and REDIS_PASSWORD")
            }
            CacheError::Invalid(_) => Error::config(e.to_string()),
            CacheError::Server(_) => Error::failed(e.to_string()),
        }
    }
}

/// The legacy query key: `rag:q:<sha1 hex of the UTF-8 query>:<top_k>`.
pub fn query_key(query: &str, top_k: u32) -> String {
    format!("rag:q:{}:{top_k}", hex(&Sha1::digest(query.as_bytes())))
}

/// The JSON key of `key` in namespace `ns`: `rag:<ns>:<key>`.
pub fn json_key(ns: &str, key: &str) -> String {
    format!("rag:{ns}:{key}")
}

/// The MessagePack key: `rag:<ns>:m:<md5 hex of ns + key>`.
pub fn msgpack_key(ns: &str, key: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(ns.as_bytes());
    md5.update(key.as_bytes());
    format!("rag:{ns}:m:{}", hex(&md5.finalize()))
}

/// The set of cache keys whose values were computed from document `doc_id`.
pub fn dep_key(doc_id: &str) -> String {
    format!("rag:dep:{doc_id}")
}

/// The share of reads that hit, 0 when there were none (`ragspool cache stats`).
pub(crate) fn hit_ratio(hits: u64, misses: u64) -> f64 {
    let total = hits + misses;
    if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    }
}

/// What a health probe found.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `redis_version` from INFO server.
    pub version: String,
    /// Round trip of PING.
    pub latency: Duration,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// `standalone`, `cluster N masters` or `sentinel master HOST:PORT`.
    pub topology: String,
}

impl Probe {
    /// What the probe found in one line: `redis <version> <topology> latency
    /// <ms> ms tls yes|no`.
    pub(crate) fn summary(&self) -> String {
        format!(
            "redis {} {} latency {:.2} ms tls {}",
            self.version,
            self.topology,
            self.latency.as_secs_f64() * 1000.0,
            if self.tls { "yes" } else { "no" }
        )
    }
}

/// A published build update.
#[derive(Debug, Clone)]
pub struct BuildUpdate {
    /// The new `rag:build_generation`.
    pub generation: i64,
    /// Subscribers that received it (0 is counted, not an error).
    pub receivers: i64,
    /// The envelope as sent.
    pub envelope: serde_json::Value,
}

/// A cache client: one reused connection, dropped after any error.
pub struct Cache {
    config: CacheConfig,
    conn: Option<Conn>,
    master: Option<String>,
    master_checked: Instant,
    hits: u64,
    misses: u64,
}

impl Cache {
    /// A client; it connects on first use.
    pub fn new(config: CacheConfig) -> Cache {
        Cache {
            config,
            conn: None,
            master: None,
            master_checked: Instant::now(),
            hits: 0,
            misses: 0,
        }
    }

    /// The TTL rule: the given value, else DEFAULT_TTL_SECONDS; 0 means no expiry.
    pub fn ttl(&self, given: Option<u64>) -> u64 {
        given.unwrap_or(self.config.default_ttl)
    }

    /// The TTL rule's outcome in words: `ttl <secs>s`, or `no expiry` for 0.
    pub(crate) fn expiry(&self, given: Option<u64>) -> String {
        match self.ttl(given) {
            0 => "no expiry".to_string(),
            ttl => format!("ttl {ttl}s"),
        }
    }

    /// Runs one command on the reused connection (connecting when needed). Any
    /// error drops the connection. Under Sentinel, a connection error or a READONLY
    /// reply (a demoted master) asks the sentinels again and retries once.
    fn call(&mut self, args: &[&[u8]]) -> Result<redis::Value, CacheError> {
        let mut cmd = redis::Cmd::new();
        for a in args {
            cmd.arg(*a);
        }
        match self.call_once(&cmd) {
            Err(e)
                if matches!(self.config.topology, Topology::Sentinel { .. })
                    && conn::needs_new_master(&e) =>
            {
                log::warn!("redis: {e}; asking the sentinels for the master again");
                self.call_once(&cmd)
            }
            other => other,
        }
    }

    fn call_once(&mut self, cmd: &redis::Cmd) -> Result<redis::Value, CacheError> {
        self.recheck_master();
        if self.conn.is_none() {
            let (conn, master) = conn::open(&self.config)?;
            self.conn = Some(conn);
            self.master = master;
            self.master_checked = Instant::now();
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(CacheError::Unavailable("no connection".into()));
        };
        conn.query(cmd).map_err(|e| {
            self.conn = None;
            conn::map_error(e)
        })
    }

    /// Under Sentinel, asks the sentinels at most once a second whether the master
    /// moved, and drops the connection when it did: after a failover the old
    /// master may take writes for seconds before the sentinels demote it, and
    /// those writes would be lost.
    fn recheck_master(&mut self) {
        if self.conn.is_none()
            || !matches!(self.config.topology, Topology::Sentinel { .. })
            || self.master_checked.elapsed() < MASTER_RECHECK
        {
            return;
        }
        self.master_checked = Instant::now();
        match conn::current_master(&self.config) {
            Ok(now) if Some(&now) != self.master.as_ref() => {
                log::warn!(
                    "redis: the sentinels name {now} as master now (was {}); reconnecting",
                    self.master.as_deref().unwrap_or("?")
                );
                self.conn = None;
            }
            Ok(_) => {}
            Err(e) => log::warn!("redis: cannot ask the sentinels: {e}"),
        }
    }

    fn set_raw(&mut self, key: &str, value: &[u8], ttl: Option<u64>) -> Result<(), CacheError> {
        let ttl = self.ttl(ttl);
        let secs = ttl.to_string();
        if ttl == 0 {
            self.call(&[b"SET", key.as_bytes(), value])?;
        } else {
            self.call(&[b"SET", key.as_bytes(), value, b"EX", secs.as_bytes()])?;
        }
        Ok(())
    }

    fn get_raw(&mut self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let value = match Reply::from(self.call(&[b"GET", key.as_bytes()])?) {
            Reply::Bulk(v) => v,
            other => {
                return Err(CacheError::Server(format!(
                    "unexpected reply to GET: {other:?}"
                )));
            }
        };
        if value.is_some() {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        Ok(value)
    }

    /// Stores `value` in `encoding` under its key in namespace `ns` and records
    /// the key in the set `rag:dep:<doc_id>` of each of `doc_ids` (none: no dep
    /// set is touched). The one body of [`Cache::set_json_namespace`],
    /// [`Cache::set_msgpack_namespace`] and their `_deps` twins.
    pub(crate) fn set_namespace(
        &mut self,
        encoding: Encoding,
        ns: &str,
        key: &str,
        value: &serde_json::Value,
        ttl: Option<u64>,
        doc_ids: &[&str],
    ) -> Result<(), CacheError> {
        // Encoded first: a value that cannot be encoded sends nothing to Redis.
        let bytes = encoding.encode(value)?;
        let key = encoding.key(ns, key);
        self.set_raw(&key, &bytes, ttl)?;
        self.add_deps(&key, ttl, doc_ids)
    }

    /// The value stored in `encoding` under its key in namespace `ns`, counting
    /// a hit or a miss: the body of [`Cache::get_json_namespace`] and
    /// [`Cache::get_msgpack_namespace`].
    pub(crate) fn get_namespace(
        &mut self,
        encoding: Encoding,
        ns: &str,
        key: &str,
    ) -> Result<Option<serde_json::Value>, CacheError> {
        match self.get_raw(&encoding.key(ns, key))? {
            None => Ok(None),
            Some(bytes) => encoding.decode(&bytes).map(Some),
        }
    }

    /// Stores `value` as JSON under `rag:<ns>:<key>`.
    pub fn set_json_namespace(
        &mut self,
        ns: &str,
        key: &str,
        value: &serde_json::Value,
        ttl: Option<u64>,
    ) -> Result<(), CacheError> {
        self.set_namespace(Encoding::Json, ns, key, value, ttl, &[])
    }

    /// The JSON value under `rag:<ns>:<key>`, counting a hit or a miss.
    pub fn get_json_namespace(
        &mut self,
        ns: &str,
        key: &str,
    ) -> Result<Option<serde_json::Value>, CacheError> {
        self.get_namespace(Encoding::Json, ns, key)
    }

    /// Stores `value` as MessagePack under `rag:<ns>:m:<md5(ns+key)>`.
    pub fn set_msgpack_namespace(
        &mut self,
        ns: &str,
        key: &str,
        value: &serde_json::Value,
        ttl: Option<u64>,
    ) -> Result<(), CacheError> {
        self.set_namespace(Encoding::MessagePack, ns, key, value, ttl, &[])
    }

    /// Stores `value` as JSON under `rag:<ns>:<key>` and records the key in the
    /// set `rag:dep:<doc_id>` of every document it was computed from, so that
    /// replacing or deleting one of them deletes the value (SPEC §12).
    pub fn set_json_namespace_deps(
        &mut self,
        ns: &str,
        key: &str,
        value: &serde_json::Value,
        ttl: Option<u64>,
        doc_ids: &[&str],
    ) -> Result<(), CacheError> {
        self.set_namespace(Encoding::Json, ns, key, value, ttl, doc_ids)
    }

    /// The MessagePack twin of [`Cache::set_json_namespace_deps`].
    pub fn set_msgpack_namespace_deps(
        &mut self,
        ns: &str,
        key: &str,
        value: &serde_json::Value,
        ttl: Option<u64>,
        doc_ids: &[&str],
    ) -> Result<(), CacheError> {
        self.set_namespace(Encoding::MessagePack, ns, key, value, ttl, doc_ids)
    }

    /// Adds `key` to each document's dep set, whose TTL becomes at least the
    /// value's (no expiry when the value has none).
    fn add_deps(
        &mut self,
        key: &str,
        ttl: Option<u64>,
        doc_ids: &[&str],
    ) -> Result<(), CacheError> {
        let ttl = self.ttl(ttl);
        for doc in doc_ids {
            let set = dep_key(doc);
            let before = match Reply::from(self.call(&[b"TTL", set.as_bytes()])?) {
                Reply::Int(t) => t,
                _ => -2,
            };
            self.call(&[b"SADD", set.as_bytes(), key.as_bytes()])?;
            let secs = match (ttl, before) {
                (0, _) => {
                    self.call(&[b"PERSIST", set.as_bytes()])?;
                    continue;
                }
                // It existed without expiry: keep it so.
                (_, -1) => continue,
                (t, b) if b > 0 => t.max(b as u64),
                (t, _) => t,
            };
            self.call(&[b"EXPIRE", set.as_bytes(), secs.to_string().as_bytes()])?;
        }
        Ok(())
    }

    /// The keys recorded as computed from `doc_id`.
    pub fn deps(&mut self, doc_id: &str) -> Result<Vec<String>, CacheError> {
        let mut keys: Vec<String> =
            match Reply::from(self.call(&[b"SMEMBERS", dep_key(doc_id).as_bytes()])?) {
                Reply::Array(items) => items
                    .into_iter()
                    .filter_map(|r| match r {
                        Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
        keys.sort();
        Ok(keys)
    }

    /// Deletes every key in `doc_id`'s dep set and removes it from the set (an
    /// emptied set vanishes); returns how many cached values went. Members are
    /// removed one by one rather than the set deleted, so that a key added while
    /// this runs stays recorded for the next pass.
    pub fn invalidate(&mut self, doc_id: &str) -> Result<usize, CacheError> {
        let set = dep_key(doc_id);
        let mut gone = 0;
        for key in self.deps(doc_id)? {
            if self.delete(&key)? {
                gone += 1;
            }
            self.call(&[b"SREM", set.as_bytes(), key.as_bytes()])?;
        }
        Ok(gone)
    }

    /// The MessagePack value under `rag:<ns>:m:<md5(ns+key)>`, counting a hit or a miss.
    pub fn get_msgpack_namespace(
        &mut self,
        ns: &str,
        key: &str,
    ) -> Result<Option<serde_json::Value>, CacheError> {
        self.get_namespace(Encoding::MessagePack, ns, key)
    }

    /// Deletes a key; true when it existed.
    pub fn delete(&mut self, key: &str) -> Result<bool, CacheError> {
        match Reply::from(self.call(&[b"DEL", key.as_bytes()])?) {
            Reply::Int(n) => Ok(n > 0),
            other => Err(CacheError::Server(format!(
                "unexpected reply to DEL: {other:?}"
            ))),
        }
    }

    /// INCRs `rag:build_generation` and PUBLISHes the build_update envelope to
    /// REDIS_BUILD_CHANNEL; `fields` (batch_tag, reason, rows, healed, host, ts)
    /// are merged into it.
    pub fn publish_build_update(
        &mut self,
        fields: &serde_json::Value,
    ) -> Result<BuildUpdate, CacheError> {
        let generation = match Reply::from(self.call(&[b"INCR", GENERATION_KEY.as_bytes()])?) {
            Reply::Int(n) => n,
            other => {
                return Err(CacheError::Server(format!(
                    "unexpected reply to INCR: {other:?}"
                )));
            }
        };
        let mut envelope =
            serde_json::json!({"type": "build_update", "version": 1, "generation": generation});
        for name in ["batch_tag", "reason", "rows", "healed", "host", "ts"] {
            envelope[name] = fields.get(name).cloned().unwrap_or(serde_json::Value::Null);
        }
        let channel = self.config.build_channel.clone();
        let receivers = match Reply::from(self.call(&[
            b"PUBLISH",
            channel.as_bytes(),
            envelope.to_string().as_bytes(),
        ])?) {
            Reply::Int(n) => n,
            other => {
                return Err(CacheError::Server(format!(
                    "unexpected reply to PUBLISH: {other:?}"
                )));
            }
        };
        Ok(BuildUpdate {
            generation,
            receivers,
            envelope,
        })
    }

    /// Connects afresh (TLS, AUTH, SELECT), PINGs and reads the server version.
    pub fn probe(&mut self) -> Result<Probe, CacheError> {
        self.conn = None;
        let started = Instant::now();
        match Reply::from(self.call(&[b"PING"])?) {
            Reply::Status(s) if s == "PONG" => {}
            other => {
                return Err(CacheError::Server(format!(
                    "unexpected reply to PING: {other:?}"
                )));
            }
        }
        let latency = started.elapsed();
        let version = conn::info_field(self.call(&[b"INFO", b"server"])?, "redis_version")
            .unwrap_or_default();
        let masters = match (&self.config.topology, self.conn.as_mut()) {
            (Topology::Cluster(_), Some(c)) => conn::cluster_masters(c),
            _ => 0,
        };
        Ok(Probe {
            version,
            latency,
            tls: self.config.ssl,
            topology: conn::describe(&self.config, self.master.as_deref(), masters),
        })
    }

    /// Hits and misses counted in this process and not yet flushed.
    pub fn local_stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// Adds this process's hits and misses to `rag:cache_metrics` and resets them.
    pub fn flush_stats(&mut self) -> Result<(), CacheError> {
        let (hits, misses) = (self.hits.to_string(), self.misses.to_string());
        if self.hits > 0 {
            self.call(&[b"HINCRBY", METRICS_KEY.as_bytes(), b"hits", hits.as_bytes()])?;
        }
        if self.misses > 0 {
            self.call(&[
                b"HINCRBY",
                METRICS_KEY.as_bytes(),
                b"misses",
                misses.as_bytes(),
            ])?;
        }
        self.hits = 0;
        self.misses = 0;
        Ok(())
    }

    /// Hits and misses summed in `rag:cache_metrics`.
    pub fn stats(&mut self) -> Result<(u64, u64), CacheError> {
        let field = |cache: &mut Cache, name: &[u8]| -> Result<u64, CacheError> {
            match Reply::from(cache.call(&[b"HGET", METRICS_KEY.as_bytes(), name])?) {
                Reply::Bulk(Some(v)) => Ok(String::from_utf8_lossy(&v).parse().unwrap_or(0)),
                _ => Ok(0),
            }
        };
        Ok((field(self, b"hits")?, field(self, b"misses")?))
    }

    /// Runs a raw command (for tools and tests); any error drops the connection.
    pub fn command(&mut self, args: &[&str]) -> Result<Reply, CacheError> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.call(&args).map(Reply::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors computed outside Rust (Python's hashlib).
    #[test]
    fn keys_match_outside_vectors() {
        assert_eq!(
            query_key("what is retrieval augmented generation?", 5),
            "rag:q:05fa920edd52f6c8d5eb10b1d2bc0d24a15aeb35:5"
        );
        assert_eq!(
            query_key("Wie funktioniert Zürich? 東京", 10),
            "rag:q:a38b395ae6437cfdbaeacc5d5a49dd488b07df26:10"
        );
        assert_eq!(
            query_key("", 0),
            "rag:q:da39a3ee5e6b4b0d3255bfef95601890afd80709:0"
        );
        assert_eq!(
            msgpack_key("answers", "q1"),
            "rag:answers:m:de65744aadd75dcf92e59cb6c1efd572"
        );
        assert_eq!(
            msgpack_key("emb", "Straße ✓"),
            "rag:emb:m:9eb23ca1b4bcf744348f1da5793c662f"
        );
        assert_eq!(json_key("answers", "q1"), "rag:answers:q1");
    }

    #[test]
    fn ttl_rule() {
        let mut cfg = CacheConfig::new("h", 1);
        cfg.default_ttl = 60;
        let cache = Cache::new(cfg);
        assert_eq!(
            (cache.ttl(None), cache.ttl(Some(5)), cache.ttl(Some(0))),
            (60, 5, 0)
        );
        let shown = format!(
            "{:?}",
            CacheConfig {
                password: Some("pw-secret".into()),
                ..CacheConfig::new("h", 1)
            }
        );
        assert!(!shown.contains("pw-secret"));
    }

    #[test]
    fn hit_ratio_of_no_reads_is_zero() {
        assert_eq!(hit_ratio(0, 0), 0.0);
        assert_eq!(hit_ratio(3, 1), 0.75);
    }
}
