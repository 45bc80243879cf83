//! The kinds of alert the alert endpoint receives (SPEC §6), their wire names in
//! one place so that a payload, a test and the docs cannot spell one differently.

/// An alert's `event` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AlertKind {
    /// A batch's first failure event, a dead letter or an unreadable queued event.
    Ingest,
    /// Gate delivery works again after failures.
    Recovered,
    /// Maintenance stalled MAINTENANCE_ALERT_AFTER runs in a row.
    Maintenance,
}

impl AlertKind {
    /// The `event` value on the wire.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AlertKind::Ingest => "ingest.alert",
            AlertKind::Recovered => "ingest.recovered",
            AlertKind::Maintenance => "maintenance.alert",
        }
    }
}
