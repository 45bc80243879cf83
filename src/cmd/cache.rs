//! `ragspool cache`: probe, get, set, del, key, publish, stats, deps.

use crate::cache::{Cache, CacheError, Encoding, hit_ratio, query_key};
use crate::cli::Args;
use crate::config::Config;
use crate::error::{Error, Outcome, Result};

/// Runs `ragspool cache ACTION …`; every action but `key` needs Redis configured.
pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let words: Vec<&str> = args.positionals.iter().map(String::as_str).collect();
    let (action, rest) = words.split_first().map_or(("", &[][..]), |(a, r)| (*a, r));
    if action == "key" {
        return key(rest);
    }
    let settings = config.cache().ok_or_else(|| {
        Error::config("`REDIS_HOST` is not set, so there is no cache").with_note(
            "set REDIS_HOST (and REDIS_PORT, REDIS_DB…), REDIS_CLUSTER_NODES or REDIS_SENTINELS",
        )
    })?;
    let mut cache = Cache::new(settings);
    let encoding = Encoding::of(args.has("msgpack"));
    let outcome = match action {
        "probe" => return arity(rest, 0, "probe").and_then(|()| probe(&mut cache)),
        "get" => get(&mut cache, encoding, rest)?,
        "set" => set(&mut cache, encoding, rest, args)?,
        "del" => del(&mut cache, encoding, rest)?,
        "publish" => publish(&mut cache, rest)?,
        "stats" => stats(&mut cache, rest)?,
        "deps" => deps(&mut cache, rest)?,
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

/// A usage error unless the action got exactly `n` arguments.
fn arity(rest: &[&str], n: usize, usage: &str) -> Result<()> {
    if rest.len() == n {
        Ok(())
    } else {
        Err(Error::usage(format!("usage: ragspool cache {usage}")))
    }
}

/// A JSON argument, or a usage error.
fn json_arg(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text)
        .map_err(|e| Error::usage(format!("JSON argument does not parse: {e}")))
}

/// A whole-number argument, or a usage error naming it as `what`.
fn whole<T: std::str::FromStr>(text: &str, what: &str) -> Result<T> {
    text.parse()
        .map_err(|_| Error::usage(format!("{what} must be a whole number, got `{text}`")))
}

/// Prints `text`; the action went well.
fn say(text: &str) -> Result<Outcome> {
    super::emit(text).map(|()| Outcome::Clean)
}

/// `key QUERY TOP_K`: the legacy query key, without Redis.
fn key(rest: &[&str]) -> Result<Outcome> {
    arity(rest, 2, "key QUERY TOP_K")?;
    let top_k: u32 = whole(rest[1], "TOP_K")?;
    say(&format!("{}\n", query_key(rest[0], top_k)))
}

/// `get NS KEY`: the value on stdout; a miss is said on stderr and exits 1.
fn get(cache: &mut Cache, encoding: Encoding, rest: &[&str]) -> Result<Outcome> {
    arity(rest, 2, "get NS KEY [--msgpack]")?;
    match cache.get_namespace(encoding, rest[0], rest[1])? {
        Some(v) => say(&format!("{v}\n")),
        None => {
            eprintln!("ragspool: miss: {}", encoding.key(rest[0], rest[1]));
            Ok(Outcome::InputFailed)
        }
    }
}

/// `set NS KEY JSON [--ttl SECS]`: stores the value and says its expiry.
fn set(cache: &mut Cache, encoding: Encoding, rest: &[&str], args: &Args) -> Result<Outcome> {
    arity(rest, 3, "set NS KEY JSON [--ttl SECS] [--msgpack]")?;
    let value = json_arg(rest[2])?;
    let ttl = args.value("ttl").map(|t| whole(t, "`--ttl`")).transpose()?;
    cache.set_namespace(encoding, rest[0], rest[1], &value, ttl, &[])?;
    let (key, expiry) = (encoding.key(rest[0], rest[1]), cache.expiry(ttl));
    say(&format!("set {key} ({expiry})\n"))
}

/// `del NS KEY`: deletes the key and says whether it existed.
fn del(cache: &mut Cache, encoding: Encoding, rest: &[&str]) -> Result<Outcome> {
    arity(rest, 2, "del NS KEY [--msgpack]")?;
    let key = encoding.key(rest[0], rest[1]);
    let existed = cache.delete(&key)?;
    let verdict = if existed { "deleted" } else { "absent" };
    say(&format!("{verdict} {key}\n"))
}

/// `publish JSON`: one build update; one that no subscriber heard is counted.
fn publish(cache: &mut Cache, rest: &[&str]) -> Result<Outcome> {
    arity(rest, 1, "publish JSON")?;
    let fields = json_arg(rest[0])?;
    let update = cache.publish_build_update(&fields)?;
    if update.receivers == 0 {
        crate::metrics::PUBLISH_UNHEARD.add(1);
    }
    say(&format!(
        "generation {} published to {} subscriber(s)\n",
        update.generation, update.receivers
    ))
}

/// `stats`: hits, misses and their ratio summed across processes.
fn stats(cache: &mut Cache, rest: &[&str]) -> Result<Outcome> {
    arity(rest, 0, "stats")?;
    let (hits, misses) = cache.stats()?;
    let ratio = hit_ratio(hits, misses);
    say(&format!(
        "hits {hits}\nmisses {misses}\nhit_ratio {ratio:.3}\n"
    ))
}

/// `deps DOC_ID`: the cached keys recorded as computed from the document, one a line.
fn deps(cache: &mut Cache, rest: &[&str]) -> Result<Outcome> {
    arity(rest, 1, "deps DOC_ID")?;
    let keys = cache.deps(rest[0])?;
    say(&keys.iter().map(|k| format!("{k}\n")).collect::<String>())
}

/// A probe's verdict: 0 healthy, 75 unreachable, 1 anything else.
fn probe(cache: &mut Cache) -> Result<Outcome> {
    match cache.probe() {
        Ok(p) => say(&format!("ok: {}\n", p.summary())),
        Err(CacheError::Unavailable(m)) => Err(Error::temp(format!("redis unavailable: {m}"))),
        Err(e) => super::emit(&format!("unhealthy: {e}\n")).map(|()| Outcome::InputFailed),
    }
}
