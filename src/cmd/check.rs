//! `ragspool check`: effective settings with origins, spool and failure-log safety.

use crate::cli::Args;
use crate::config::Config;
use crate::error::{Outcome, Result};
use crate::inspect::{self, Finding};
use serde_json::json;

/// Lists the settings with their origins and every check; fails when one does.
pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let findings = inspect::findings(config);
    let failed = findings.iter().any(|f| f.problem.is_some());
    if args.has("json") {
        super::emit_json(&json_report(config, &findings, failed))?;
    } else {
        super::emit(&text_report(config, &findings))?;
    }
    Ok(Outcome::failed_if(failed))
}

/// The settings and checks as one JSON object, for scripts.
fn json_report(config: &Config, findings: &[Finding], failed: bool) -> serde_json::Value {
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
    json!({"settings": settings, "checks": checks, "ok": !failed})
}

/// The settings and checks as aligned lines for the operator.
fn text_report(config: &Config, findings: &[Finding]) -> String {
    let mut out = String::from("settings:\n");
    for s in &config.shown {
        let value = s.value.as_deref().unwrap_or("(unset)");
        out.push_str(&format!("  {:<24} {value}  [{}]\n", s.name, s.origin));
    }
    out.push_str("checks:\n");
    for f in findings {
        match &f.problem {
            None => out.push_str(&format!("  ok    {}\n", f.what)),
            Some(p) => out.push_str(&format!("  FAIL  {}: {p}\n", f.what)),
        }
    }
    out
}
