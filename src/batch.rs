//! Batch identity and outcome: the `batch_tag` format (SPEC §3) and the gate.done
//! `Reason` codes with their precedence (SPEC §6), and what a batch did
//! (`BatchReport`): used by the runner and by notify alike.

use crate::error::{Class, Error, Result};
use std::fmt;
use time::OffsetDateTime;
use time::macros::format_description;

/// A batch tag: `YYYYMMDDTHHMMSSZ-<8 lowercase hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct BatchTag(String);

impl BatchTag {
    /// A new tag for a batch starting now.
    pub(crate) fn new() -> Result<BatchTag> {
        let mut random = [0u8; 4];
        getrandom::fill(&mut random)
            .map_err(|e| Error::temp(format!("cannot read random bytes for a batch tag: {e}")))?;
        Ok(BatchTag::at(OffsetDateTime::now_utc(), random))
    }

    /// The tag for `when` with the given random suffix.
    pub(crate) fn at(when: OffsetDateTime, random: [u8; 4]) -> BatchTag {
        let stamp = when
            .format(format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_default();
        let hex = crate::digest::hex(&random);
        BatchTag(format!("{stamp}-{hex}"))
    }

    /// Parses a tag given by an operator or found on disk.
    pub(crate) fn parse(raw: &str) -> Option<BatchTag> {
        is_valid(raw).then(|| BatchTag(raw.to_string()))
    }

    /// The tag text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BatchTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_valid(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.len() == 25
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// Why a batch ended as it did: the gate.done reason codes, exactly these (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Reason {
    /// Every file in, no self-heal.
    Success,
    /// All rows in after a partition self-heal.
    HealedPartition,
    /// Some file failed permanently.
    Failed,
    /// A row had no partition and self-heal was impossible.
    PartitionMissing,
    /// Anything else went wrong.
    OtherError,
}

impl Reason {
    /// Every reason, lowest precedence first.
    pub(crate) const ALL: [Reason; 5] = [
        Reason::Success,
        Reason::HealedPartition,
        Reason::Failed,
        Reason::PartitionMissing,
        Reason::OtherError,
    ];

    /// The wire string.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Success => "success",
            Reason::HealedPartition => "healed_partition",
            Reason::Failed => "failed",
            Reason::PartitionMissing => "partition_missing",
            Reason::OtherError => "other_error",
        }
    }

    /// Parses a wire string; a usage error lists the valid ones.
    pub(crate) fn parse(raw: &str) -> Result<Reason> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == raw)
            .ok_or_else(|| {
                let valid: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
                Error::usage(format!(
                    "unknown reason `{raw}`; valid reasons: {}",
                    valid.join(", ")
                ))
            })
    }

    /// The reason of a batch in which both `self` and `other` apply
    /// (other_error > partition_missing > failed > healed_partition > success).
    pub(crate) fn combine(self, other: Reason) -> Reason {
        self.max(other)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one batch did.
#[derive(Debug, Clone)]
pub(crate) struct BatchReport {
    /// The batch.
    pub(crate) tag: BatchTag,
    /// Files claimed.
    pub(crate) files: usize,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// Files archived.
    pub(crate) files_ok: usize,
    /// Files moved to failed/.
    pub(crate) files_failed: usize,
    /// Rows inserted.
    pub(crate) rows: u64,
    /// Earlier rows removed by replaces and deletes.
    pub(crate) deleted: u64,
    /// Mtimes (unix seconds) of the files whose rows went in.
    pub(crate) mtimes: Vec<f64>,
    /// Documents the batch replaced or deleted.
    pub(crate) changed_docs: Vec<String>,
    /// The gate.done reason.
    pub(crate) reason: Reason,
    /// Whether a self-heal happened.
    pub(crate) healed: bool,
    /// Wall time.
    pub(crate) duration_ms: u64,
    /// Why files were left in processing/, if any were.
    pub(crate) error: Option<ErrorSummary>,
}

impl BatchReport {
    /// A batch of `files` files and `bytes` bytes that has done nothing yet.
    pub(crate) fn new(tag: &BatchTag, files: usize, bytes: u64) -> BatchReport {
        BatchReport {
            tag: tag.clone(),
            files,
            bytes,
            files_ok: 0,
            files_failed: 0,
            rows: 0,
            deleted: 0,
            mtimes: Vec::new(),
            changed_docs: Vec::new(),
            reason: Reason::Success,
            healed: false,
            duration_ms: 0,
            error: None,
        }
    }
}

/// An error that stopped part of a batch, kept printable and classed.
#[derive(Debug, Clone)]
pub(crate) struct ErrorSummary {
    /// Its class (decides the exit code).
    pub(crate) class: Class,
    /// Its text.
    pub(crate) text: String,
}

impl ErrorSummary {
    pub(crate) fn of(e: &Error) -> ErrorSummary {
        ErrorSummary {
            class: e.class(),
            text: e.to_string(),
        }
    }

    /// Back to an error for the command's exit.
    pub(crate) fn to_error(&self) -> Error {
        Error::new(self.class, self.text.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn tag_format() {
        let t = BatchTag::at(datetime!(2026-03-04 05:06:07 UTC), [0xde, 0xad, 0x0b, 0xef]);
        assert_eq!(t.as_str(), "20260304T050607Z-dead0bef");
        assert!(BatchTag::parse(t.as_str()).is_some());
        assert!(BatchTag::parse("20260304T050607Z-DEAD0BEF").is_none());
        assert!(BatchTag::parse("../etc").is_none());
        assert!(BatchTag::new().is_ok_and(|t| BatchTag::parse(t.as_str()).is_some()));
    }

    #[test]
    fn reason_precedence() {
        use Reason::*;
        assert_eq!(Success.combine(HealedPartition), HealedPartition);
        assert_eq!(HealedPartition.combine(Failed), Failed);
        assert_eq!(Failed.combine(PartitionMissing), PartitionMissing);
        assert_eq!(OtherError.combine(PartitionMissing), OtherError);
        assert_eq!(Success.combine(Success), Success);
    }

    #[test]
    fn reason_wire_strings_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()).ok(), Some(r));
        }
        let e = Reason::parse("ok")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("success, healed_partition, failed, partition_missing, other_error"),
            "{e}"
        );
    }
}
