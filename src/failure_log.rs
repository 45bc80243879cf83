//! The secure failure log (SPEC §6): created 0600, opened append-only with
//! O_NOFOLLOW, never a symlink, never readable by group or others.

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
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
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
