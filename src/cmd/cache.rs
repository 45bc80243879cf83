//! `ragspool cache`: probe, get, set, del, key, publish, stats.

use crate::cache::{Cache, CacheError, json_key, msgpack_key, query_key};
use crate::cli::Args;
use crate::config::Config;
use crate::error::{Error, Outcome, Result};

pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let words: Vec<&str> = args.positionals.iter().map(String::as_str).collect();
    let (action, rest) = words.split_first().map_or(("", &[][..]), |(a, r)| (*a, r));
    let arity = |n: usize, usage: &str| -> Result<()> {
        if rest.len() == n {
            Ok(())
        } else {
            Err(Error::usage(format!("usage: ragspool cache {usage}")))
        }
    };
    if action == "key" {
        arity(2, "key QUERY TOP_K")?;
        let top_k: u32 = rest[1].parse().map_err(|_| {
            Error::usage(format!("TOP_K must be a whole number, got `{}`", rest[1]))
        })?;
        return super::emit(&format!("{}\n", query_key(rest[0], top_k))).map(|()| Outcome::Clean);
    }
    let settings = config.cache().ok_or_else(|| {
        Error::config("`REDIS_HOST` is not set, so there is no cache").with_note(
            "set REDIS_HOST (and REDIS_PORT, REDIS_DB…), REDIS_CLUSTER_NODES or REDIS_SENTINELS",
        )
    })?;
    let mut cache = Cache::new(settings);
    let msgpack = args.has("msgpack");
    let key_of = |ns: &str, key: &str| {
        if msgpack {
            msgpack_key(ns, key)
        } else {
            json_key(ns, key)
        }
    };
    let outcome = match action {
        "probe" => {
            arity(0, "probe")?;
            return probe(&mut cache);
        }
        "get" => {
            arity(2, "get NS KEY [--msgpack]")?;
            let value = if msgpack {
                cache.get_msgpack_namespace(rest[0], rest[1])
            } else {
                cache.get_json_namespace(rest[0], rest[1])
            }
            .map_err(error)?;
            match value {
                Some(v) => {
                    super::emit(&format!("{v}\n"))?;
                    Outcome::Clean
                }
                None => {
                    eprintln!("ragspool: miss: {}", key_of(rest[0], rest[1]));
                    Outcome::InputFailed
                }
            }
        }
        "set" => {
            arity(3, "set NS KEY JSON [--ttl SECS] [--msgpack]")?;
            let value: serde_json::Value = serde_json::from_str(rest[2])
                .map_err(|e| Error::usage(format!("JSON argument does not parse: {e}")))?;
            let ttl = match args.value("ttl") {
                Some(t) => Some(t.parse::<u64>().map_err(|_| {
                    Error::usage(format!("`--ttl` must be a whole number, got `{t}`"))
                })?),
                None => None,
            };
            if msgpack {
                cache.set_msgpack_namespace(rest[0], rest[1], &value, ttl)
            } else {
                cache.set_json_namespace(rest[0], rest[1], &value, ttl)
            }
            .map_err(error)?;
            let ttl = cache.ttl(ttl);
            let expiry = if ttl == 0 {
                "no expiry".to_string()
            } else {
                format!("ttl {ttl}s")
            };
            super::emit(&format!("set {} ({expiry})\n", key_of(rest[0], rest[1])))?;
            Outcome::Clean
        }
        "del" => {
            arity(2, "del NS KEY [--msgpack]")?;
            let key = key_of(rest[0], rest[1]);
            let existed = cache.delete(&key).map_err(error)?;
            super::emit(&format!(
                "{} {key}\n",
                if existed { "deleted" } else { "absent" }
            ))?;
            Outcome::Clean
        }
        "publish" => {
            arity(1, "publish JSON")?;
            let fields: serde_json::Value = serde_json::from_str(rest[0])
                .map_err(|e| Error::usage(format!("JSON argument does not parse: {e}")))?;
            let update = cache.publish_build_update(&fields).map_err(error)?;
            if update.receivers == 0 {
                crate::metrics::PUBLISH_UNHEARD.add(1);
            }
            super::emit(&format!(
                "generation {} published to {} subscriber(s)\n",
                update.generation, update.receivers
            ))?;
            Outcome::Clean
        }
        "stats" => {
            arity(0, "stats")?;
            let (hits, misses) = cache.stats().map_err(error)?;
            let total = hits + misses;
            let ratio = if total == 0 {
                0.0
            } else {
                hits as f64 / total as f64
            };
            super::emit(&format!(
                "hits {hits}\nmisses {misses}\nhit_ratio {ratio:.3}\n"
            ))?;
            Outcome::Clean
        }
        "deps" => {
            arity(1, "deps DOC_ID")?;
            let keys = cache.deps(rest[0]).map_err(error)?;
            let mut out = String::new();
            for k in &keys {
                out.push_str(k);
                out.push('\n');
            }
            super::emit(&out)?;
            Outcome::Clean
        }
        "" => {
            return Err(Error::usage(
                "`cache` needs an action: probe, get, set, del, key, publish, stats or deps",
            ));
        }
        other => {
            return Err(Error::usage(format!(
                "unknown cache action `{other}`; valid: probe, get, set, del, key, publish, stats, deps"
            )));
        }
    };
    if let Err(e) = cache.flush_stats() {
        log::warn!("cannot add hits and misses to rag:cache_metrics: {e}");
    }
    Ok(outcome)
}

/// A probe's verdict: 0 healthy, 75 unreachable, 1 anything else.
fn probe(cache: &mut Cache) -> Result<Outcome> {
    match cache.probe() {
        Ok(p) => {
            super::emit(&format!(
                "ok: redis {} {} latency {:.2} ms tls {}\n",
                p.version,
                p.topology,
                p.latency.as_secs_f64() * 1000.0,
                if p.tls { "yes" } else { "no" }
            ))?;
            Ok(Outcome::Clean)
        }
        Err(CacheError::Unavailable(m)) => Err(Error::temp(format!("redis unavailable: {m}"))),
        Err(e) => {
            super::emit(&format!("unhealthy: {e}\n"))?;
            Ok(Outcome::InputFailed)
        }
    }
}

/// A cache error as the command's error: unreachable 75, credentials 78, else 1.
pub(crate) fn error(e: CacheError) -> Error {
    match e {
        CacheError::Unavailable(_) => Error::temp(e.to_string()),
        CacheError::Auth(_) => {
            Error::config(e.to_string()).with_note("check REDIS_USERNAME and REDIS_PASSWORD")
        }
        CacheError::Invalid(_) => Error::config(e.to_string()),
        CacheError::Server(_) => Error::failed(e.to_string()),
    }
}
