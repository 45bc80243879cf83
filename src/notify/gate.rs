//! Gate notifications and alerts (SPEC §6): events rendered from templates and
//! queued in the outbox — gate.open when a batch is claimed, gate.done when it
//! ends, ingest.alert once per batch on its first failure, ingest.recovered once
//! when the gate answers again, maintenance.alert on stalls.

use crate::batch::{BatchReport, BatchTag, Reason};
use crate::config::Config;
use crate::error::Result;
use crate::failure_log::FailureLog;
use crate::notify::alert::AlertKind;
use crate::notify::outbox::{self, Flushed, Notice, Outbox, Stored, Target};
use crate::notify::template::{Event, Template, Vars};
use crate::notify::webhook::{self, Endpoint};
use crate::redact::Secret;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Renders events and queues them for delivery.
pub(crate) struct Notifier {
    outbox: Outbox,
    open: Template,
    done: Template,
    alert: Template,
    host: String,
}

impl Notifier {
    /// From settings; templates are loaded and checked now, so a broken one stops
    /// the command at start (78) rather than at the first batch.
    pub(crate) fn new(
        config: &Config,
        failure_log: Option<Arc<FailureLog>>,
        host: &str,
    ) -> Result<Notifier> {
        let key = match &config.gate_secret {
            Some(s) => Some(webhook::signing_key(s.expose())?),
            None => None,
        };
        let endpoint = |url: &Option<String>, token: &Option<Secret>, key: Option<Vec<u8>>| {
            url.as_ref().map(|url| Endpoint {
                url: url.clone(),
                token: token.clone(),
                key,
            })
        };
        let outbox = Outbox::new(
            &config.spool_dir.join("outbox"),
            endpoint(&config.gate_url, &config.gate_token, key),
            endpoint(&config.alert_url, &config.alert_token, None),
            Duration::from_secs(config.retry_max_secs),
            Duration::from_millis(config.gate_timeout_ms),
            failure_log,
            host.to_string(),
        )?;
        let dir = config.gate_template_dir.as_deref();
        Ok(Notifier {
            outbox,
            open: Template::load_checked(Event::GateOpen, dir)?,
            done: Template::load_checked(Event::GateDone, dir)?,
            alert: Template::load_checked(Event::Alert, dir)?,
            host: host.to_string(),
        })
    }

    fn vars(&self, tag: &str) -> Vars {
        let mut v = Vars::new();
        v.insert("batch_tag", tag.to_string());
        v.insert("host", self.host.clone());
        v.insert("ts", crate::clock::now_rfc3339());
        v
    }

    fn enqueue(&self, target: Target, event: &str, tag: &str, body: String) -> Result<()> {
        self.enqueue_with(outbox::new_id(), target, event, tag, body, Vec::new())
    }

    fn enqueue_with(
        &self,
        id: String,
        target: Target,
        event: &str,
        tag: &str,
        body: String,
        mtimes: Vec<f64>,
    ) -> Result<()> {
        self.outbox.enqueue(&Stored {
            id,
            target,
            event: event.to_string(),
            batch_tag: tag.to_string(),
            body,
            mtimes,
        })
    }

    /// Queues gate.open for a claimed batch.
    pub(crate) fn gate_open(&self, tag: &BatchTag, files: usize, bytes: u64) -> Result<()> {
        if !self.outbox.wants(Target::Gate) {
            return Ok(());
        }
        let mut v = self.vars(tag.as_str());
        v.insert("files", files.to_string());
        v.insert("bytes", bytes.to_string());
        self.enqueue_with(
            outbox::batch_event_id(tag.as_str(), "gate.open"),
            Target::Gate,
            "gate.open",
            tag.as_str(),
            self.open.render(&v)?,
            Vec::new(),
        )
    }

    /// Queues gate.done for a finished batch.
    pub(crate) fn gate_done(&self, r: &BatchReport) -> Result<()> {
        if !self.outbox.wants(Target::Gate) {
            return Ok(());
        }
        let mut v = self.vars(r.tag.as_str());
        v.insert("reason", r.reason.as_str().to_string());
        v.insert("healed", r.healed.to_string());
        v.insert("rows", r.rows.to_string());
        v.insert("files_ok", r.files_ok.to_string());
        v.insert("files_failed", r.files_failed.to_string());
        v.insert("duration_ms", r.duration_ms.to_string());
        // The gate.done of a batch that ended is the same event however often a
        // crash makes it queued; an interim one (files left in processing/ by an
        // outage, reason other_error) is not that event and gets an id of its own.
        let id = match r.error {
            None => outbox::batch_event_id(r.tag.as_str(), "gate.done"),
            Some(_) => outbox::new_id(),
        };
        self.enqueue_with(
            id,
            Target::Gate,
            "gate.done",
            r.tag.as_str(),
            self.done.render(&v)?,
            r.mtimes.clone(),
        )
    }

    /// Queues an alert (`ingest.alert`, `ingest.recovered`, `maintenance.alert`).
    pub(crate) fn alert(
        &self,
        kind: AlertKind,
        tag: &str,
        reason: &str,
        healed: bool,
        detail: &str,
    ) -> Result<()> {
        if !self.outbox.wants(Target::Alert) {
            return Ok(());
        }
        let event = kind.as_str();
        let mut v = self.vars(tag);
        v.insert("event", event.to_string());
        v.insert("reason", reason.to_string());
        v.insert("healed", healed.to_string());
        v.insert("detail", detail.to_string());
        self.enqueue(Target::Alert, event, tag, self.alert.render(&v)?)
    }

    /// Queues `event` for `tag` with the standard values overridden by `extra`
    /// (what `ragspool notify` sends for scripts).
    pub(crate) fn custom(&self, event: Event, tag: &str, extra: &Vars) -> Result<()> {
        let (target, template) = match event {
            Event::GateOpen => (Target::Gate, &self.open),
            Event::GateDone => (Target::Gate, &self.done),
            Event::Alert => (Target::Alert, &self.alert),
        };
        let mut v = self.vars(tag);
        for name in event.names() {
            let default = match *name {
                "healed" => "false",
                "reason" => Reason::Success.as_str(),
                "event" => AlertKind::Ingest.as_str(),
                "detail" | "batch_tag" | "host" | "ts" => "",
                _ => "0",
            };
            v.entry(name).or_insert_with(|| default.to_string());
        }
        v.extend(extra.iter().map(|(k, val)| (*k, val.clone())));
        let name = match event {
            Event::Alert => v.get("event").cloned().unwrap_or_default(),
            other => other.name().to_string(),
        };
        self.enqueue(target, &name, tag, template.render(&v)?)
    }

    /// Whether events for the gate (or alerts) are configured.
    pub(crate) fn wants(&self, event: Event) -> bool {
        self.outbox.wants(if event == Event::Alert {
            Target::Alert
        } else {
            Target::Gate
        })
    }

    /// Delivers what waits; dead letters and a recovered gate become alerts,
    /// which are delivered in the same call.
    pub(crate) fn flush(&self) -> Result<Flushed> {
        let (mut total, notices) = self.outbox.flush()?;
        if notices.is_empty() {
            return Ok(total);
        }
        for notice in notices {
            match notice {
                Notice::Dead {
                    stored_event,
                    batch_tag,
                    status,
                } => self.alert(
                    AlertKind::Ingest,
                    &batch_tag,
                    Reason::OtherError.as_str(),
                    false,
                    &format!(
                        "the gate refused {stored_event} with {status}; it is in outbox/dead/"
                    ),
                )?,
                Notice::Unreadable { name } => self.alert(
                    AlertKind::Ingest,
                    "",
                    Reason::OtherError.as_str(),
                    false,
                    &format!("the queued event `{name}` cannot be read; it is in outbox/dead/"),
                )?,
                Notice::Recovered => self.alert(
                    AlertKind::Recovered,
                    "",
                    Reason::Success.as_str(),
                    false,
                    "gate delivery works again after failures",
                )?,
            }
        }
        let (more, _) = self.outbox.flush()?;
        total.delivered += more.delivered;
        total.dead += more.dead;
        total.pending = more.pending;
        Ok(total)
    }
}

/// Where each batch's gate.done stands, from one read of the outbox: `waiting` in
/// outbox/, `dead` in outbox/dead/, else `delivered` (or `no gate` when GATE_URL is
/// unset).
pub(crate) fn done_states(spool_dir: &Path, gate: bool) -> impl Fn(&str) -> &'static str {
    let mut states = std::collections::HashMap::new();
    if gate {
        let outbox = spool_dir.join("outbox");
        // Dead letters are read last: they win over a stale waiting copy.
        for (dir, state) in [(outbox.clone(), "waiting"), (outbox.join("dead"), "dead")] {
            let queue = outbox::read_queue::<Stored>(&dir).unwrap_or_default();
            for stored in queue.into_iter().filter_map(|(_, s)| s.ok()) {
                if stored.event == "gate.done" {
                    states.insert(stored.batch_tag, state);
                }
            }
        }
    }
    move |tag: &str| match gate {
        false => "no gate",
        true => states.get(tag).copied().unwrap_or("delivered"),
    }
}

/// Events waiting in a spool's outbox and dead letters.
pub(crate) fn outbox_depth(spool_dir: &Path) -> (usize, usize) {
    Outbox::depth(&spool_dir.join("outbox"))
}
