//! `ragspool trace DOC_ID`: a document's history and what the table holds now.

use crate::cli::Args;
use crate::config::Config;
use crate::db::Db;
use crate::error::{Error, Outcome, Result};
use crate::ingest::lineage::{self, Trace};
use crate::schema::{self, Names};

pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let doc_id = args
        .positionals
        .first()
        .ok_or_else(|| Error::usage("`trace` needs a DOC_ID"))?;
    let db = Db::from_config(config)?;
    let names = Names::from_config(config);
    let mut client = db.connect()?;
    schema::require_current(&mut client, &names)?;
    let gate_done = crate::notify::gate::done_states(&config.spool_dir, config.gate_url.is_some());
    let trace = lineage::trace(&mut client, &names, doc_id, |tag| {
        gate_done(tag).to_string()
    })?;
    if args.has("json") {
        let value = serde_json::to_value(&trace)
            .map_err(|e| Error::failed(format!("cannot encode the trace: {e}")))?;
        super::emit_json(&value)?;
    } else {
        super::emit(&describe(&trace))?;
    }
    Ok(Outcome::failed_if(!trace.seen()))
}

fn describe(t: &Trace) -> String {
    if !t.seen() {
        return format!("document {}: never seen\n", t.doc_id);
    }
    let mut out = format!("document {}\n", t.doc_id);
    for e in &t.events {
        out.push_str(&format!(
            "  {}  {:<6} +{} -{}  {}/{}  sha256 {}  gate.done {}\n",
            e.committed_at,
            e.action,
            e.rows_added,
            e.rows_removed,
            e.batch_tag,
            e.file,
            &e.sha256[..e.sha256.len().min(12)],
            e.gate_done
        ));
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    // The text says `record` for vectors the records brought; JSON has null.
    let mut models: Vec<String> = t
        .now
        .embedding_models
        .iter()
        .map(|m| m.clone().unwrap_or_else(|| "record".into()))
        .collect();
    models.sort();
    out.push_str(&format!(
        "now: {} row(s); partitions {}; embedding models {}\n",
        t.now.rows,
        list(&t.now.partitions),
        list(&models)
    ));
    out
}
