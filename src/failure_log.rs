//! The secure failure log (SPEC §6): created 0600, opened append-only with
//! O_NOFOLLOW, never a symlink, never readable by group or others.

use crate::digest::sha256_hex;
use crate::error::{Context, Error, Result};
use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Mode the failure log is created with.
pub(crate) const MODE: u32 = 0o600;

/// Creates the failure log if missing (mode 0600) and checks it is safe to use.
pub(crate) fn create(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fs::make_dir(dir)?;
    }
    check(path)?;
    crate::fs::open_append(path, MODE)
        .with_context(|| format!("cannot open failure log `{}` (FAILURE_LOG)", path.display()))?;
    Ok(())
}

/// Refuses (78) a failure log that is a symlink or readable by group or others.
pub(crate) fn check(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(
                Error::from(e).context(format!("cannot stat failure log `{}`", path.display()))
            );
        }
    };
    if meta.file_type().is_symlink() {
        return Err(Error::config(format!(
            "failure log `{}` (FAILURE_LOG) is a symbolic link",
            path.display()
        ))
        .with_note("point FAILURE_LOG at a regular file; a link could redirect the log"));
    }
    if !meta.file_type().is_file() {
        return Err(Error::config(format!(
            "failure log `{}` (FAILURE_LOG) is not a regular file",
            path.display()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(Error::config(format!(
            "failure log `{}` (FAILURE_LOG) has mode {:04o}; it must not be readable by group or others",
            path.display(),
            meta.mode() & 0o7777
        ))
        .with_note(format!("run `chmod 600 {}`", path.display())));
    }
    Ok(())
}

/// One failure-log record, in the field order SPEC §6 gives.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Entry {
    /// When (RFC 3339 UTC).
    pub(crate) ts: String,
    /// The batch, if any.
    pub(crate) batch_tag: String,
    /// The file (or event) concerned.
    pub(crate) file: String,
    /// The reason code.
    pub(crate) reason: String,
    /// Whether a self-heal happened.
    pub(crate) healed: bool,
    /// What happened (never record content or secrets).
    pub(crate) detail: String,
    /// Which attempt this was.
    pub(crate) attempt: u32,
    /// This host.
    pub(crate) host: String,
    /// Hex SHA-256 of the previous line (of "" for the first).
    pub(crate) prev: String,
}

static PREOPENED: std::sync::OnceLock<std::sync::Arc<FailureLog>> = std::sync::OnceLock::new();

/// Opens the failure log before privileges are dropped, for [`shared`] to hand out.
pub(crate) fn preopen(path: &Path) -> Result<()> {
    let log = std::sync::Arc::new(FailureLog::open(path)?);
    let _ = PREOPENED.set(log);
    Ok(())
}

/// The failure log at `path`: the one opened before a privilege drop, else opened now.
pub(crate) fn shared(path: &Path) -> Result<std::sync::Arc<FailureLog>> {
    match PREOPENED.get() {
        Some(log) if log.path == path => Ok(log.clone()),
        _ => Ok(std::sync::Arc::new(FailureLog::open(path)?)),
    }
}

/// The open failure log: append-only, hash-chained, fsynced per record, and
/// anchored in the database ([`FailureLog::anchor`]).
pub(crate) struct FailureLog {
    path: std::path::PathBuf,
    state: std::sync::Mutex<Chain>,
}

/// The log's end as this process knows it.
struct Chain {
    file: std::fs::File,
    /// Hash of the last record ("" hashed when none).
    head: String,
    /// Records in the file.
    records: u64,
    /// Its length in bytes, for undoing a torn append.
    len: u64,
    /// Records at the last anchor written.
    anchored: u64,
}

impl FailureLog {
    /// Opens (creating 0600) the log at `path`, refusing a symlink or a wide mode (78).
    /// A torn last record (a crash or a full disk mid-append) is cut off: its append
    /// never completed, and the chain goes on from the record before it.
    pub(crate) fn open(path: &Path) -> Result<FailureLog> {
        create(path)?;
        let file = OpenOptions::new()
            .append(true)
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .with_context(|| {
                format!("cannot open failure log `{}` (FAILURE_LOG)", path.display())
            })?;
        check(path)?;
        let log = FailureLog {
            path: path.to_path_buf(),
            state: std::sync::Mutex::new(Chain {
                file,
                head: sha256_hex(b""),
                records: 0,
                len: u64::MAX,
                anchored: u64::MAX,
            }),
        };
        {
            let mut chain = log.state.lock().unwrap_or_else(|p| p.into_inner());
            log.locked(&mut chain, |_| Ok(()))?;
        }
        Ok(log)
    }

    /// Runs `f` under an exclusive lock on the file, after catching up with what
    /// other processes (a `maintain` beside `watch`) appended, and cutting off a
    /// torn last record: a crash or a full disk mid-append, whose append never
    /// completed; the chain goes on from the record before it.
    fn locked<T>(&self, chain: &mut Chain, f: impl FnOnce(&mut Chain) -> Result<T>) -> Result<T> {
        let what = || format!("failure log `{}`", self.path.display());
        chain
            .file
            .lock()
            .with_context(|| format!("cannot lock {}", what()))?;
        let result = (|| {
            let len = chain
                .file
                .metadata()
                .with_context(|| format!("cannot stat {}", what()))?
                .len();
            if len != chain.len {
                // Through the descriptor: after a privilege drop the path may not
                // be readable any more (root's 0600 file).
                let mut text = vec![0u8; len as usize];
                std::os::unix::fs::FileExt::read_exact_at(&chain.file, &mut text, 0)
                    .with_context(|| format!("cannot read {}", what()))?;
                let log = Records::of(&text);
                if log.torn {
                    log::warn!(
                        "{}: removing a torn last record ({} bytes without a newline)",
                        what(),
                        text.len() - log.whole
                    );
                    chain
                        .file
                        .set_len(log.whole as u64)
                        .and_then(|()| chain.file.sync_data())
                        .with_context(|| format!("cannot repair {}", what()))?;
                }
                chain.head = sha256_hex(log.lines.last().map_or(&b""[..], |(_, l)| l));
                chain.records = log.lines.len() as u64;
                chain.len = log.whole as u64;
            }
            f(chain)
        })();
        let _ = chain.file.unlock();
        result
    }

    /// Appends one record (its `prev` is filled in) and fsyncs. A write that fails
    /// part way (a full disk) is undone, so that the next record does not follow
    /// a torn one.
    pub(crate) fn append(&self, mut entry: Entry) -> Result<()> {
        use std::io::Write;
        let mut chain = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.locked(&mut chain, |chain| {
            entry.prev = chain.head.clone();
            let line = serde_json::to_string(&entry)
                .map_err(|e| Error::failed(format!("cannot encode a failure-log record: {e}")))?;
            let bytes = format!("{line}\n");
            let written = chain
                .file
                .write_all(bytes.as_bytes())
                .and_then(|()| chain.file.sync_data());
            if let Err(e) = written {
                let _ = chain.file.set_len(chain.len);
                return Err(Error::from(e).context(format!(
                    "cannot append to failure log `{}`",
                    self.path.display()
                )));
            }
            chain.head = sha256_hex(line.as_bytes());
            chain.records += 1;
            chain.len += bytes.len() as u64;
            Ok(())
        })
    }

    /// Records the log's record count and head in the database, when they changed
    /// since the last anchor: `check` then catches a cut anywhere in the file, also
    /// one that leaves a well-formed chain (the tail, or the whole file).
    pub(crate) fn anchor(
        &self,
        client: &mut impl postgres::GenericClient,
        names: &crate::schema::Names,
        host: &str,
    ) -> Result<()> {
        let mut chain = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if chain.anchored == chain.records {
            return Ok(());
        }
        let path = self.path.display().to_string();
        let records = chain.records as i64;
        client
            .execute(
                &format!(
                    "INSERT INTO {t} AS a (path, host, records, head) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (path) DO UPDATE SET host = EXCLUDED.host, \
                     records = EXCLUDED.records, head = EXCLUDED.head, updated_at = now() \
                     WHERE a.records <= EXCLUDED.records",
                    t = names.failure_log_anchor
                ),
                &[&path, &host, &records, &chain.head],
            )
            .map_err(|e| crate::db::classify(e, "anchoring the failure log"))?;
        chain.anchored = chain.records;
        Ok(())
    }
}

/// The anchor of the log at `path`, if the database holds one: (records, head).
pub(crate) fn read_anchor(
    client: &mut impl postgres::GenericClient,
    names: &crate::schema::Names,
    path: &Path,
) -> Result<Option<(u64, String)>> {
    let row = client
        .query_opt(
            &format!(
                "SELECT records, head FROM {} WHERE path = $1",
                names.failure_log_anchor
            ),
            &[&path.display().to_string()],
        )
        .map_err(|e| crate::db::classify(e, "reading the failure log's anchor"))?;
    Ok(row.map(|r| (r.get::<_, i64>(0).max(0) as u64, r.get(1))))
}

/// Whether the log at `path` still holds the anchored record at its place: `None`
/// when it does, else what is wrong.
pub(crate) fn check_anchor(path: &Path, records: u64, head: &str) -> Option<String> {
    if records == 0 {
        return None;
    }
    let text = std::fs::read(path).unwrap_or_default();
    let lines = Records::of(&text).lines;
    if (lines.len() as u64) < records {
        return Some(format!(
            "holds {} record(s), but {records} were anchored in the database: the log was cut",
            lines.len()
        ));
    }
    (sha256_hex(lines[records as usize - 1].1) != head).then(|| {
        format!(
            "record {records} is not the one anchored in the database: the log was cut or replaced"
        )
    })
}

/// A log's bytes as its complete records: each with its 1-based line number, blank
/// lines skipped; a last line without its newline is a torn record, not one of them.
struct Records<'a> {
    lines: Vec<(usize, &'a [u8])>,
    /// Bytes up to and with the last newline.
    whole: usize,
    /// Bytes follow the last newline.
    torn: bool,
}

impl Records<'_> {
    fn of(text: &[u8]) -> Records<'_> {
        let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let lines = text[..whole]
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.is_empty())
            .map(|(i, l)| (i + 1, l))
            .collect();
        Records {
            lines,
            whole,
            torn: whole < text.len(),
        }
    }
}

/// What verifying the chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    /// Records read.
    pub(crate) lines: usize,
    /// The first line (1-based) whose `prev` does not match, if any.
    pub(crate) first_broken: Option<usize>,
    /// The file ends in a torn record (an append that never completed), which the
    /// next ragspool run to open the log removes.
    pub(crate) torn: bool,
}

/// Checks every record's `prev` against the line before it.
pub(crate) fn verify(path: &Path) -> Result<Verified> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Verified {
                lines: 0,
                first_broken: None,
                torn: false,
            });
        }
        Err(e) => {
            return Err(
                Error::from(e).context(format!("cannot read failure log `{}`", path.display()))
            );
        }
    };
    let log = Records::of(&text);
    let mut expected = sha256_hex(b"");
    for (n, (line_no, line)) in log.lines.iter().enumerate() {
        let prev = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["prev"].as_str().map(str::to_string));
        if prev.as_deref() != Some(expected.as_str()) {
            return Ok(Verified {
                lines: n + 1,
                first_broken: Some(*line_no),
                torn: log.torn,
            });
        }
        expected = sha256_hex(line);
    }
    Ok(Verified {
        lines: log.lines.len(),
        first_broken: None,
        torn: log.torn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(detail: &str) -> Entry {
        Entry {
            ts: "2026-01-01T00:00:00Z".into(),
            batch_tag: "t".into(),
            file: "f.msgpack".into(),
            reason: "failed".into(),
            healed: false,
            detail: detail.into(),
            attempt: 1,
            host: "h".into(),
            prev: String::new(),
        }
    }

    #[test]
    fn chain_links_and_detects_edits_and_cuts() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f.jsonl");
        let log = FailureLog::open(&path)?;
        log.append(entry("one"))?;
        log.append(entry("two"))?;
        drop(log);
        // Reopening continues the chain.
        FailureLog::open(&path)?.append(entry("three"))?;
        assert_eq!(
            verify(&path)?,
            Verified {
                lines: 3,
                first_broken: None,
                torn: false
            }
        );
        let text = std::fs::read_to_string(&path)?;
        assert!(text.starts_with(r#"{"ts":"2026-01-01T00:00:00Z","batch_tag":"t""#));
        std::fs::write(&path, text.replacen("two", "TWO", 1))?;
        assert_eq!(verify(&path)?.first_broken, Some(3));
        let cut: Vec<&str> = text.lines().skip(1).collect();
        std::fs::write(&path, cut.join("\n") + "\n")?;
        assert_eq!(verify(&path)?.first_broken, Some(1));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
        Ok(())
    }

    #[test]
    fn two_writers_keep_one_chain_and_a_torn_tail_is_cut_off() -> Result<()> {
        use std::io::Write;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f.jsonl");
        // `watch` and `maintain` each hold the log open and append in turn.
        let a = FailureLog::open(&path)?;
        let b = FailureLog::open(&path)?;
        a.append(entry("a1"))?;
        b.append(entry("b1"))?;
        a.append(entry("a2"))?;
        // A crash mid-append leaves half a record without its newline.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)?
            .write_all(br#"{"ts":"2026-01-01T00:00:00Z","batch"#)?;
        let v = verify(&path)?;
        assert_eq!((v.lines, v.first_broken, v.torn), (3, None, true));
        b.append(entry("b2"))?;
        assert_eq!(
            verify(&path)?,
            Verified {
                lines: 4,
                first_broken: None,
                torn: false
            }
        );
        Ok(())
    }

    #[test]
    fn symlinks_and_wide_modes_are_refused() -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let real = dir.path().join("real");
        std::fs::write(&real, "")?;
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600))?;
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link)?;
        assert!(FailureLog::open(&link).is_err_and(|e| e.class() == crate::error::Class::Config));
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640))?;
        assert!(FailureLog::open(&real).is_err_and(|e| e.class() == crate::error::Class::Config));
        Ok(())
    }
}
