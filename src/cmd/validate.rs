//! `ragspool validate`: spool files checked offline by `process`'s rules (SPEC §14).

use crate::cli::Args;
use crate::config::Config;
use crate::error::{Outcome, Result};
use crate::ingest::BadFile;
use crate::ingest::verify::{self, Counts, Rules, Verdict};
use std::path::Path;

pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let rules = Rules::of(config);
    let json = args.has("json");
    let mut bad_files = 0;
    for name in &args.positionals {
        // A file that cannot be opened is reported like a bad one: validate
        // judges the files it is given, it does not move them.
        let verdict = verify::file(Path::new(name), &rules)
            .unwrap_or_else(|e| Verdict::Bad(BadFile::unreadable_io(&e.to_string())));
        if matches!(verdict, Verdict::Bad(_)) {
            bad_files += 1;
        }
        super::emit(&match (json, &verdict) {
            (true, v) => format!("{}\n", as_json(name, v)),
            (false, Verdict::Good(c)) => format!("{name}: ok: {}\n", counts(c)),
            (false, Verdict::Bad(bad)) => format!("{name}: bad: {}\n", reason(bad)),
        })?;
    }
    if !json {
        let total = args.positionals.len();
        super::emit(&format!(
            "{total} file(s): {} ok, {bad_files} bad\n",
            total - bad_files
        ))?;
    }
    Ok(Outcome::failed_if(bad_files > 0))
}

fn counts(c: &Counts) -> String {
    format!(
        "{} records, {} documents, {} delete records, {} with vectors, {} without, {} bytes",
        c.records, c.documents, c.deletes, c.with_vectors, c.without_vectors, c.bytes
    )
}

fn reason(bad: &BadFile) -> String {
    match (bad.record_index, bad.byte_offset) {
        (Some(i), Some(o)) => format!("{} (record_index {i}, byte_offset {o})", bad.error),
        (Some(i), None) => format!("{} (record_index {i})", bad.error),
        _ => bad.error.clone(),
    }
}

/// A good file's counts, or a bad one's reason.json with `"ok": false`.
fn as_json(name: &str, verdict: &Verdict) -> serde_json::Value {
    match verdict {
        Verdict::Good(c) => serde_json::json!({
            "file": name,
            "ok": true,
            "records": c.records,
            "documents": c.documents,
            "deletes": c.deletes,
            "with_vectors": c.with_vectors,
            "without_vectors": c.without_vectors,
            "bytes": c.bytes,
        }),
        Verdict::Bad(bad) => {
            let mut value = bad.reason(name);
            if let Some(map) = value.as_object_mut() {
                map.insert("ok".into(), false.into());
            }
            value
        }
    }
}
