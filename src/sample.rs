//! Deterministic sample spool files for demos, tests and benchmarks: good files with
//! realistic records in every accepted form, and broken files of assorted kinds.
//! Files are written to tmp/, fsynced, then renamed into incoming/ as producers do.

use crate::error::{Context, Error, Result};
use crate::fs::fsync_dir;
use crate::spool::Spool;
use rmp::encode as mp;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What to generate.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Good files.
    pub(crate) files: u64,
    /// Records per good file.
    pub(crate) records: u64,
    /// Embedding length; 0 = records without embeddings.
    pub(crate) dim: usize,
    /// created_at spread over the last `days` UTC days.
    pub(crate) days: u64,
    /// Seed: the same seed on the same day gives the same bytes.
    pub(crate) seed: u64,
    /// Broken files.
    pub(crate) bad: u64,
}

/// What was written.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Good files.
    pub(crate) files: u64,
    /// Records in them.
    pub(crate) records: u64,
    /// Broken files.
    pub(crate) bad: u64,
    /// Bytes in all files.
    pub(crate) bytes: u64,
}

/// The kinds of broken file, in the order `--bad` cycles through them.
pub(crate) const BAD_KINDS: [&str; 7] = [
    "truncated",
    "wrong-type",
    "invalid-utf8",
    "missing-doc-id",
    "huge-length",
    "empty",
    "not-msgpack",
];

/// SplitMix64: small, fast and good enough for sample data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

const WORDS: &[&str] = &[
    "retrieval",
    "augmented",
    "generation",
    "chunk",
    "embedding",
    "vector",
    "index",
    "query",
    "latency",
    "partition",
    "naïve",
    "Zürich",
    "café",
    "façade",
    "São Paulo",
    "Kraków",
    "東京",
    "데이터",
    "Ελληνικά",
    "данные",
    "über",
    "résumé",
    "piñata",
    "smörgåsbord",
    "coöperate",
    "the",
    "of",
    "and",
    "a",
    "to",
    "in",
    "is",
    "for",
    "with",
    "on",
    "model",
    "document",
    "token",
    "context",
    "answer",
    "source",
    "cache",
];

/// Writes the plan's files into incoming/.
pub(crate) fn generate(spool: &Spool, plan: &Plan) -> Result<Written> {
    let now = OffsetDateTime::now_utc();
    let stamp = crate::batch::BatchTag::at(now, [0; 4]).as_str()[..16].to_string();
    let mut rng = Rng(plan.seed ^ 0x5eed_5eed_5eed_5eed);
    let mut written = Written::default();
    let progress = crate::progress::Progress::new("gen", plan.files + plan.bad);
    for i in 0..plan.files {
        let bytes = good_file(&mut rng, plan, i, now);
        let name = format!("sample-{stamp}-s{}-{i:05}.msgpack", plan.seed);
        written.bytes += bytes.len() as u64;
        deliver(spool, &name, &bytes)?;
        written.files += 1;
        written.records += plan.records;
        progress.add(1);
    }
    for i in 0..plan.bad {
        let kind = BAD_KINDS[(i % BAD_KINDS.len() as u64) as usize];
        let bytes = bad_file(&mut rng, plan, kind, now);
        let name = format!("bad-{stamp}-s{}-{i:05}-{kind}.msgpack", plan.seed);
        written.bytes += bytes.len() as u64;
        deliver(spool, &name, &bytes)?;
        written.bad += 1;
        progress.add(1);
    }
    Ok(written)
}

/// tmp/ → fsync → rename into incoming/, never replacing a file already there.
fn deliver(spool: &Spool, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = spool.dir("tmp").join(name);
    let incoming = spool.dir("incoming");
    let target = incoming.join(name);
    if std::fs::symlink_metadata(&target).is_ok() {
        return Err(
            Error::failed(format!("`{}` already exists", target.display()))
                .with_note("use another --seed, or wait a second"),
        );
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .with_context(|| format!("cannot create `{}`", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write `{}`", tmp.display()))?;
    std::fs::rename(&tmp, &target)
        .with_context(|| format!("cannot rename into `{}`", target.display()))?;
    fsync_dir(&incoming)
}

fn sentence(rng: &mut Rng, target_bytes: usize) -> String {
    let mut s = String::with_capacity(target_bytes + 32);
    while s.len() < target_bytes {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    s.push('.');
    s
}

/// Microseconds since the epoch within the last `days` UTC days, never in the future.
fn created_at(rng: &mut Rng, days: u64, now: OffsetDateTime) -> i64 {
    let now_s = now.unix_timestamp();
    let today = now_s - now_s.rem_euclid(86_400);
    let day = rng.below(days.max(1)) as i64;
    let span = if day == 0 {
        (now_s - today).max(1) as u64
    } else {
        86_400
    };
    let secs = today - day * 86_400 + rng.below(span) as i64;
    secs * 1_000_000 + rng.below(1_000_000) as i64
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    let _ = mp::write_str(out, s);
}

fn good_file(rng: &mut Rng, plan: &Plan, file: u64, now: OffsetDateTime) -> Vec<u8> {
    let mut out = Vec::with_capacity((plan.records as usize) * (900 + plan.dim * 5));
    let as_array = file % 2 == 1;
    if as_array {
        let _ = mp::write_array_len(&mut out, plan.records as u32);
    }
    for r in 0..plan.records {
        let optional = rng.below(4);
        let fields = 4 + u32::from(optional != 0) * 2 + u32::from(plan.dim > 0);
        let _ = mp::write_map_len(&mut out, fields);
        write_str(&mut out, "doc_id");
        write_str(&mut out, &format!("doc-{}-{file}-{}", plan.seed, r / 8));
        write_str(&mut out, "chunk_index");
        let _ = mp::write_uint(&mut out, r % 8);
        write_str(&mut out, "content");
        let len = 600 + rng.below(400) as usize;
        write_str(&mut out, &sentence(rng, len));
        write_str(&mut out, "created_at");
        write_created_at(&mut out, created_at(rng, plan.days, now), r);
        if optional != 0 {
            write_str(&mut out, "source");
            write_str(
                &mut out,
                &format!("wiki/{}", WORDS[rng.below(WORDS.len() as u64) as usize]),
            );
            write_str(&mut out, "metadata");
            let _ = mp::write_map_len(&mut out, 3);
            write_str(&mut out, "lang");
            write_str(
                &mut out,
                ["en", "de", "ja", "ko", "el"][rng.below(5) as usize],
            );
            write_str(&mut out, "section");
            let _ = mp::write_uint(&mut out, rng.below(50));
            write_str(&mut out, "tags");
            let _ = mp::write_array_len(&mut out, 2);
            write_str(&mut out, "sample");
            write_str(&mut out, WORDS[rng.below(WORDS.len() as u64) as usize]);
        }
        if plan.dim > 0 {
            write_str(&mut out, "embedding");
            write_embedding(&mut out, rng, plan.dim, file.is_multiple_of(2));
        }
    }
    out
}

/// Cycles through every created_at form of SPEC §4.
fn write_created_at(out: &mut Vec<u8>, micros: i64, r: u64) {
    let secs = micros.div_euclid(1_000_000);
    match r % 4 {
        0 => {
            let nanos = (micros.rem_euclid(1_000_000) * 1000) as u32;
            let _ = mp::write_ext_meta(out, 12, -1);
            out.extend_from_slice(&nanos.to_be_bytes());
            out.extend_from_slice(&secs.to_be_bytes());
        }
        1 => {
            let _ = mp::write_sint(out, secs);
        }
        2 => {
            let _ = mp::write_f64(out, micros as f64 / 1e6);
        }
        _ => {
            let text = OffsetDateTime::from_unix_timestamp(secs)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default();
            write_str(out, &text);
        }
    }
}

fn write_embedding(out: &mut Vec<u8>, rng: &mut Rng, dim: usize, as_bin: bool) {
    if as_bin {
        let _ = mp::write_bin_len(out, (dim * 4) as u32);
        for _ in 0..dim {
            out.extend_from_slice(&rng.unit().to_le_bytes());
        }
    } else {
        let _ = mp::write_array_len(out, dim as u32);
        for _ in 0..dim {
            let _ = mp::write_f32(out, rng.unit());
        }
    }
}

fn bad_file(rng: &mut Rng, plan: &Plan, kind: &str, now: OffsetDateTime) -> Vec<u8> {
    let one = Plan {
        records: 3,
        ..plan.clone()
    };
    let mut out = Vec::new();
    match kind {
        "truncated" => {
            out = good_file(rng, &one, 0, now);
            out.truncate(out.len() / 2);
        }
        "wrong-type" | "invalid-utf8" | "missing-doc-id" => {
            let _ = mp::write_map_len(&mut out, if kind == "missing-doc-id" { 2 } else { 3 });
            if kind != "missing-doc-id" {
                write_str(&mut out, "doc_id");
                write_str(&mut out, "bad-doc");
            }
            write_str(&mut out, "chunk_index");
            if kind == "wrong-type" {
                write_str(&mut out, "zero");
            } else {
                let _ = mp::write_uint(&mut out, 0);
            }
            write_str(&mut out, "content");
            if kind == "invalid-utf8" {
                let _ = mp::write_str_len(&mut out, 3);
                out.extend_from_slice(&[0xff, 0xfe, 0x41]);
            } else {
                write_str(&mut out, "text");
            }
        }
        "huge-length" => {
            let _ = mp::write_map_len(&mut out, 1);
            write_str(&mut out, "doc_id");
            out.extend_from_slice(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'x']);
        }
        "not-msgpack" => out.extend_from_slice(b"this is not MessagePack\n"),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Decoder;

    fn plan() -> Plan {
        Plan {
            files: 2,
            records: 10,
            dim: 4,
            days: 3,
            seed: 7,
            bad: 0,
        }
    }

    #[test]
    fn good_files_decode_and_are_deterministic() {
        let now = OffsetDateTime::now_utc();
        for file in 0..2 {
            let a = good_file(&mut Rng(1), &plan(), file, now);
            assert_eq!(a, good_file(&mut Rng(1), &plan(), file, now));
            let records: Result<Vec<_>, _> = Decoder::new(&a, Some(4)).collect();
            let records = records.unwrap_or_default();
            assert_eq!(records.len(), 10);
            let horizon = (now.unix_timestamp() - 3 * 86_400) * 1_000_000;
            let now_us = now.unix_timestamp() * 1_000_000 + 1_000_000;
            assert!(
                records
                    .iter()
                    .all(|r| r.created_at.is_some_and(|c| c > horizon && c <= now_us))
            );
        }
    }

    #[test]
    fn bad_files_fail_to_decode() {
        let now = OffsetDateTime::now_utc();
        for kind in BAD_KINDS {
            let b = bad_file(&mut Rng(1), &plan(), kind, now);
            let decoded: Result<Vec<_>, _> = Decoder::new(&b, None).collect();
            assert!(b.is_empty() || decoded.is_err(), "{kind}");
        }
    }
}
