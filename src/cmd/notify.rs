//! `ragspool notify`: one gate event for scripts, or `--check-templates`.

use crate::batch::{BatchTag, Reason};
use crate::cli::Args;
use crate::config::Config;
use crate::error::{Error, Outcome, Result};
use crate::notify::gate::Notifier;
use crate::notify::template::{Event, Vars};

pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    if args.has("check-templates") {
        let checked = crate::notify::template::check_all(config.gate_template_dir.as_deref())?;
        let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        let mut out = String::new();
        for origin in checked {
            out.push_str(&format!(
                "ok  {origin} (rendered for {})\n",
                reasons.join(", ")
            ));
        }
        super::emit(&out)?;
        return Ok(Outcome::Clean);
    }
    let event = match args.positionals.first() {
        Some(e) => Event::parse(e)?,
        None => {
            return Err(Error::usage(format!(
                "`notify` needs an event ({}) or --check-templates",
                Event::list()
            )));
        }
    };
    let tag = args
        .value("batch-tag")
        .ok_or_else(|| Error::usage("`notify` needs `--batch-tag TAG`"))?;
    let tag = BatchTag::parse(tag).ok_or_else(|| {
        Error::usage(format!(
            "`--batch-tag` must look like 20260101T000000Z-0a1b2c3d, got `{tag}`"
        ))
    })?;
    let vars = vars(event, args)?;
    let failure_log = crate::failure_log::shared(&config.failure_log)?;
    let notifier = Notifier::new(config, Some(failure_log), &crate::host::host_name())?;
    if !notifier.wants(event) {
        let var = if event == Event::Alert {
            "ALERT_URL"
        } else {
            "GATE_URL"
        };
        return Err(Error::config(format!(
            "`{var}` is not set, so there is nowhere to send {}",
            event.name()
        )));
    }
    crate::spool::Spool::new(&config.spool_dir).require()?;
    notifier.custom(event, tag.as_str(), &vars)?;
    let flushed = notifier.flush()?;
    if args.has("json") {
        super::emit_json(&serde_json::json!({
            "event": event.name(),
            "batch_tag": tag.as_str(),
            "delivered": flushed.delivered,
            "dead": flushed.dead,
            "waiting": flushed.pending,
        }))?;
    } else {
        super::emit(&format!(
            "{} for {tag}: {} delivered, {} dead, {} waiting in outbox/\n",
            event.name(),
            flushed.delivered,
            flushed.dead,
            flushed.pending
        ))?;
    }
    if flushed.pending > 0 {
        return Err(Error::temp(
            "the endpoint is unreachable; the event waits in outbox/ for the next run",
        ));
    }
    Ok(Outcome::failed_if(flushed.dead > 0))
}

/// `--reason` and `--var KEY=VALUE` checked against the event's placeholders.
fn vars(event: Event, args: &Args) -> Result<Vars> {
    let mut vars = Vars::new();
    if let Some(reason) = args.value("reason") {
        vars.insert("reason", Reason::parse(reason)?.as_str().to_string());
    } else if event == Event::GateDone {
        let valid: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        return Err(Error::usage(format!(
            "gate.done needs `--reason`, one of: {}",
            valid.join(", ")
        )));
    }
    for pair in args.values("var") {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| Error::usage(format!("`--var` takes KEY=VALUE, got `{pair}`")))?;
        let name = event.names().iter().find(|n| **n == key).ok_or_else(|| {
            Error::usage(format!(
                "{} has no value `{key}`; it has {}",
                event.name(),
                event.names().join(", ")
            ))
        })?;
        if *name == "reason" {
            Reason::parse(value)?;
        }
        vars.insert(name, value.to_string());
    }
    Ok(vars)
}
