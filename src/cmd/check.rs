//! `ragspool check`: every check, then a one-line verdict; the effective settings
//! with their origins with `-v` (and always in `--json`).

use crate::cli::Args;
use crate::config::Config;
use crate::error::{Outcome, Result};
use crate::inspect::{self, Finding};
use serde_json::json;

/// Runs every check and fails when one does; `verbose` also lists the settings,
/// before the checks so that the verdict stays the last line on screen.
pub(crate) fn run(config: &Config, args: &Args, verbose: bool) -> Result<Outcome> {
    let findings = inspect::findings(config);
    let failed = findings.iter().filter(|f| f.problem.is_some()).count();
    if args.has("json") {
        super::emit_json(&json_report(config, &findings, failed))?;
    } else {
        let mut out = if verbose {
            settings_text(config)
        } else {
            String::new()
        };
        out.push_str(&checks_text(&findings, failed, verbose));
        super::emit(&out)?;
    }
    Ok(Outcome::failed_if(failed > 0))
}

/// The settings and checks as one JSON object, for scripts.
fn json_report(config: &Config, findings: &[Finding], failed: usize) -> serde_json::Value {
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
    json!({"settings": settings, "checks": checks, "ok": failed == 0, "failed": failed})
}

/// Every setting with the value in effect and where it came from.
fn settings_text(config: &Config) -> String {
    let mut out = String::from("settings:\n");
    for s in &config.shown {
        let value = s.value.as_deref().unwrap_or("(unset)");
        out.push_str(&format!("  {:<24} {value}  [{}]\n", s.name, s.origin));
    }
    out
}

/// The checks as aligned lines, then the verdict.
fn checks_text(findings: &[Finding], failed: usize, verbose: bool) -> String {
    let mut out = String::from("checks:\n");
    for f in findings {
        match &f.problem {
            None => out.push_str(&format!("  ok    {}\n", f.what)),
            Some(p) => out.push_str(&format!("  FAIL  {}: {p}\n", f.what)),
        }
    }
    let total = findings.len();
    if failed == 0 {
        out.push_str(&format!("check: all {total} checks passed\n"));
    } else {
        let hint = if verbose {
            ""
        } else {
            " (run with -v to see every setting)"
        };
        out.push_str(&format!("check: {failed} of {total} checks failed{hint}\n"));
    }
    out
}
