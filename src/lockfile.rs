//! A file that exists to be locked: an exclusive flock, held until the value is
//! dropped (or the process dies, which the kernel releases for it). The outbox's
//! one flusher (outbox/.flush), the metrics file's writers (`<file>.lock`) and the
//! sequence files all serialise through it.

use crate::error::{Context, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An exclusively locked file; the lock goes with it.
pub(crate) struct LockFile {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
}

impl LockFile {
    /// Opens (creating with `mode`, never through a symlink) and locks the file at
    /// `path`; blocks while another process holds it.
    pub(crate) fn acquire(path: &Path, mode: u32) -> Result<LockFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("cannot open `{}`", path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock `{}`", path.display()))?;
        Ok(LockFile {
            file,
            path: path.to_path_buf(),
        })
    }
}
