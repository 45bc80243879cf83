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
        crate::spool::make_dir(dir)?;
    }
    check(path)?;
    crate::spool::open_append(path, MODE)
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

/// The open failure log: append-only, hash-chained, fsynced per record.
pub(crate) struct FailureLog {
    path: std::path::PathBuf,
    state: std::sync::Mutex<(std::fs::File, String)>,
}

impl FailureLog {
    /// Opens (creating 0600) the log at `path`, refusing a symlink or a wide mode (78).
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
        let prev = last_line_hash(path)?;
        Ok(FailureLog {
            path: path.to_path_buf(),
            state: std::sync::Mutex::new((file, prev)),
        })
    }

    /// Appends one record (its `prev` is filled in) and fsyncs.
    pub(crate) fn append(&self, mut entry: Entry) -> Result<()> {
        use std::io::Write;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        entry.prev = state.1.clone();
        let line = serde_json::to_string(&entry)
            .map_err(|e| Error::failed(format!("cannot encode a failure-log record: {e}")))?;
        let (file, prev) = &mut *state;
        file.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| file.sync_data())
            .with_context(|| format!("cannot append to failure log `{}`", self.path.display()))?;
        *prev = sha256_hex(line.as_bytes());
        Ok(())
    }
}

/// Hash of the last line of the file, or of "" when it is empty.
fn last_line_hash(path: &Path) -> Result<String> {
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read failure log `{}`", path.display()))?;
    let body = text.strip_suffix(b"\n").unwrap_or(&text);
    let last = body.rsplit(|b| *b == b'\n').next().unwrap_or(b"");
    Ok(sha256_hex(last))
}

/// What verifying the chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    /// Records read.
    pub(crate) lines: usize,
    /// The first line (1-based) whose `prev` does not match, if any.
    pub(crate) first_broken: Option<usize>,
}

/// Checks every record's `prev` against the line before it.
pub(crate) fn verify(path: &Path) -> Result<Verified> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Verified {
                lines: 0,
                first_broken: None,
            });
        }
        Err(e) => {
            return Err(
                Error::from(e).context(format!("cannot read failure log `{}`", path.display()))
            );
        }
    };
    let mut expected = sha256_hex(b"");
    let mut lines = 0;
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() && i > 0 {
            continue;
        }
        if line.is_empty() {
            break;
        }
        lines += 1;
        let prev = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["prev"].as_str().map(str::to_string));
        if prev.as_deref() != Some(expected.as_str()) {
            return Ok(Verified {
                lines,
                first_broken: Some(i + 1),
            });
        }
        expected = sha256_hex(line);
    }
    Ok(Verified {
        lines,
        first_broken: None,
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
                first_broken: None
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
