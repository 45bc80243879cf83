//! Event templates (SPEC §6): `<event>.json` with `{{name}}` placeholders, the
//! built-ins compiled in and GATE_TEMPLATE_DIR overriding them per event. Values
//! are JSON-escaped on substitution; an unknown name is an error naming the file.

use crate::batch::Reason;
use crate::error::{Error, Result};
use crate::notify::alert::AlertKind;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An event kind with a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A batch was claimed.
    GateOpen,
    /// A batch ended.
    GateDone,
    /// An alert (ingest.alert, ingest.recovered, maintenance.alert).
    Alert,
}

impl Event {
    /// Every event, in the order `--check-templates` reports them.
    pub(crate) const ALL: [Event; 3] = [Event::GateOpen, Event::GateDone, Event::Alert];

    /// The event's name, and its template's base name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Event::GateOpen => "gate.open",
            Event::GateDone => "gate.done",
            Event::Alert => "alert",
        }
    }

    /// Every event's name, comma-separated, for messages that list them.
    pub(crate) fn list() -> String {
        Event::ALL.map(Event::name).join(", ")
    }

    /// Parses an event name given on the command line.
    pub(crate) fn parse(raw: &str) -> Result<Event> {
        Event::ALL
            .into_iter()
            .find(|e| e.name() == raw)
            .ok_or_else(|| {
                Error::usage(format!(
                    "unknown event `{raw}`; valid events: {}",
                    Event::list()
                ))
            })
    }

    /// The placeholders this event's template may use.
    pub(crate) fn names(self) -> &'static [&'static str] {
        match self {
            Event::GateOpen => &["batch_tag", "files", "bytes", "host", "ts"],
            Event::GateDone => &[
                "batch_tag",
                "reason",
                "healed",
                "rows",
                "files_ok",
                "files_failed",
                "duration_ms",
                "host",
                "ts",
            ],
            Event::Alert => &[
                "event",
                "batch_tag",
                "reason",
                "healed",
                "detail",
                "host",
                "ts",
            ],
        }
    }

    fn builtin(self) -> &'static str {
        match self {
            Event::GateOpen => include_str!("../../templates/gate.open.json"),
            Event::GateDone => include_str!("../../templates/gate.done.json"),
            Event::Alert => include_str!("../../templates/alert.json"),
        }
    }
}

/// A template's text and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    event: Event,
    text: String,
    origin: String,
}

/// Values to substitute, by placeholder name.
pub(crate) type Vars = BTreeMap<&'static str, String>;

impl Template {
    /// The template for `event`: GATE_TEMPLATE_DIR/<event>.json when present, else the built-in.
    pub(crate) fn load(event: Event, dir: Option<&Path>) -> Result<Template> {
        if let Some(dir) = dir {
            let path: PathBuf = dir.join(format!("{}.json", event.name()));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    return Ok(Template {
                        event,
                        text,
                        origin: path.display().to_string(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::config(format!(
                        "cannot read template `{}` (GATE_TEMPLATE_DIR): {e}",
                        path.display()
                    )));
                }
            }
        }
        Ok(Template {
            event,
            text: event.builtin().to_string(),
            origin: format!("built-in {}.json", event.name()),
        })
    }

    /// Renders with `vars`, checks the result is one JSON object, and returns it
    /// compact on one line.
    pub(crate) fn render(&self, vars: &Vars) -> Result<String> {
        let mut out = String::with_capacity(self.text.len() + 64);
        let mut rest = self.text.as_str();
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| self.fault("an unclosed `{{`".to_string()))?;
            let name = after[..end].trim();
            if !self.event.names().contains(&name) {
                return Err(self.fault(format!(
                    "unknown placeholder `{{{{{name}}}}}`; {} allows {}",
                    self.event.name(),
                    self.event.names().join(", ")
                )));
            }
            let value = vars.get(name).map(String::as_str).unwrap_or("");
            escape_into(&mut out, value);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        let value: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| self.fault(format!("does not render to valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(self.fault("does not render to a JSON object".into()));
        }
        Ok(value.to_string())
    }

    fn fault(&self, what: String) -> Error {
        Error::config(format!("template {}: {what}", self.origin))
            .with_note("fix the template or remove it to use the built-in")
    }
}

/// Appends `value` JSON-escaped, without surrounding quotes.
fn escape_into(out: &mut String, value: &str) {
    let quoted = serde_json::Value::String(value.to_string()).to_string();
    out.push_str(&quoted[1..quoted.len() - 1]);
}

/// Sample values for every placeholder of `event`, with `reason`.
pub(crate) fn sample_vars(event: Event, reason: Reason) -> Vars {
    let mut v = Vars::new();
    for name in event.names() {
        let value = match *name {
            "batch_tag" => "20260101T000000Z-0badc0de",
            "reason" => reason.as_str(),
            "healed" => "true",
            "event" => AlertKind::Ingest.as_str(),
            "detail" => "a \"quoted\" detail\nwith a newline",
            "host" => "host.example",
            "ts" => "2026-01-01T00:00:00Z",
            _ => "1",
        };
        v.insert(name, value.to_string());
    }
    v
}

impl Template {
    /// Renders for every reason code; the first fault names file and placeholder.
    pub(crate) fn check(&self) -> Result<()> {
        Reason::ALL
            .into_iter()
            .try_for_each(|reason| self.render(&sample_vars(self.event, reason)).map(|_| ()))
    }

    /// Loads the template for `event` and checks it.
    pub(crate) fn load_checked(event: Event, dir: Option<&Path>) -> Result<Template> {
        let template = Template::load(event, dir)?;
        template.check()?;
        Ok(template)
    }
}

/// Loads and checks every template; returns where each came from.
pub(crate) fn check_all(dir: Option<&Path>) -> Result<Vec<String>> {
    Event::ALL
        .into_iter()
        .map(|event| Template::load_checked(event, dir).map(|t| t.origin))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_list_names_every_event_as_the_spec_spells_it() {
        assert_eq!(Event::list(), "gate.open, gate.done, alert");
        let err = Event::parse("frob").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("valid events: gate.open, gate.done, alert")));
    }

    #[test]
    fn builtins_render_the_spec_payloads() -> Result<()> {
        let t = Template::load(Event::GateOpen, None)?;
        let mut v = Vars::new();
        v.insert("batch_tag", "T".into());
        v.insert("files", "3".into());
        v.insert("bytes", "123456".into());
        v.insert("host", "h\"x".into());
        v.insert("ts", "2026-01-01T00:00:00Z".into());
        assert_eq!(
            t.render(&v)?,
            r#"{"event":"gate.open","batch_tag":"T","files":3,"bytes":123456,"host":"h\"x","ts":"2026-01-01T00:00:00Z"}"#
        );
        assert_eq!(check_all(None)?.len(), 3);
        Ok(())
    }

    #[test]
    fn unknown_placeholders_and_bad_json_are_named() -> Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("gate.done.json"), r#"{"r":"{{reasn}}"}"#)?;
        let e = check_all(Some(dir.path()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("gate.done.json") && e.contains("{{reasn}}"),
            "{e}"
        );
        std::fs::write(dir.path().join("gate.done.json"), r#"{"rows":{{rows}},}"#)?;
        let e = check_all(Some(dir.path()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("valid JSON"), "{e}");
        Ok(())
    }
}
