//! File helpers every module may use and that use nothing of ours but errors:
//! opens that never follow a symlink, atomic writes (temporary, fsync, rename,
//! fsync the directory), directories created with their mode whatever the umask,
//! and lock files. The spool, the outbox, the failure log, the metrics file and the
//! log all write through these.

use crate::error::{Context, Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every spool directory.
pub(crate) const DIR_MODE: u32 = 0o750;

/// fsyncs a directory so renames into or out of it survive a crash.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory `{}`", dir.display()))
}

/// Opens `path` for appending, creating it with `mode`, never through a symlink.
pub(crate) fn open_append(path: &Path, mode: u32) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Creates `dir` (and missing parents) with the spool mode; true when it was created.
pub(crate) fn make_dir(dir: &Path) -> Result<bool> {
    if fs::symlink_metadata(dir).is_ok() {
        return Ok(false);
    }
    // Level by level, each with its mode set explicitly: the service runs with
    // UMask=0077, and the spool's directories are group-readable on purpose.
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && fs::symlink_metadata(a).is_err())
        .collect();
    for d in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(DIR_MODE).create(d) {
            Ok(()) => fs::set_permissions(d, fs::Permissions::from_mode(DIR_MODE))
                .with_context(|| format!("cannot set the mode of `{}`", d.display()))?,
            // Another process made it meanwhile.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(
                    Error::from(e).context(format!("cannot create directory `{}`", d.display()))
                );
            }
        }
    }
    Ok(true)
}

/// Writes `bytes` to `dir/name` atomically: a hidden temporary file, fsync, rename, fsync dir.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .with_context(|| format!("cannot create `{}`", tmp.display()))?;
    // The mode exactly, whatever the umask (the service runs with UMask=0077).
    file.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of `{}`", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write `{}`", tmp.display()))?;
    fs::rename(&tmp, &target)
        .with_context(|| format!("cannot rename into `{}`", target.display()))?;
    fsync_dir(dir)
}

/// Renames `from` to `to` unless `to` exists (then `ErrorKind::AlreadyExists`),
/// in one step: checking first and renaming after would overwrite a file that
/// landed in between. std has no such rename, hence renameat2(RENAME_NOREPLACE);
/// where the filesystem lacks it (EINVAL, e.g. NFS), a hard link (which never
/// replaces) and an unlink of the old name do the same.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    match renameat2_noreplace(from, to) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        done => done,
    }
}

/// [`rename_noreplace`] for a name only this process writes (an import's file
/// into incoming/): where the filesystem lacks RENAME_NOREPLACE, a check and a
/// plain rename, never the hard link, because the spool fails a file it finds
/// with two links.
pub(crate) fn rename_own_name(from: &Path, to: &Path) -> std::io::Result<()> {
    match renameat2_noreplace(from, to) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            if fs::symlink_metadata(to).is_ok() {
                return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
            }
            fs::rename(from, to)
        }
        done => done,
    }
}

/// renameat2(RENAME_NOREPLACE); EINVAL where the filesystem lacks it.
#[allow(unsafe_code)]
fn renameat2_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_from = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let c_to = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both pointers are NUL-terminated strings that outlive the call, and
    // AT_FDCWD resolves them as rename(2) would; the call reads nothing else.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c_from.as_ptr(),
            libc::AT_FDCWD,
            c_to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The sha256 (hex) of the regular file at `path`, read in small pieces, never
/// through a symlink.
pub(crate) fn sha256_of(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(crate::digest::hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Whether the regular file at `path` begins with `prefix` (false when it cannot
/// be read), never through a symlink.
pub(crate) fn starts_with(path: &Path, prefix: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; prefix.len()];
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .and_then(|f| f.read_exact_at(&mut buf, 0))
        .is_ok_and(|()| buf == prefix)
}

/// What makes an existing path unsafe: a symlink, a mode with any of `forbidden`
/// bits, or an owner other than `uid` (when given). `None` when it is missing or safe.
pub(crate) fn unsafe_reason(path: &Path, forbidden: u32, uid: Option<u32>) -> Option<String> {
    let meta = fs::symlink_metadata(path).ok()?;
    if meta.file_type().is_symlink() {
        return Some("is a symbolic link".into());
    }
    let mode = meta.mode() & 0o7777;
    if mode & forbidden != 0 {
        return Some(format!(
            "has mode {mode:04o}; expected no bits of {forbidden:04o}"
        ));
    }
    match uid {
        Some(uid) if meta.uid() != uid => {
            Some(format!("is owned by uid {}, expected {uid}", meta.uid()))
        }
        _ => None,
    }
}

/// A file that exists to be locked: an exclusive flock, held until the value is
/// dropped (or the process dies, which the kernel releases for it). The outbox's
/// one flusher (outbox/.flush), the metrics file's writers (`<file>.lock`) and the
/// sequence files all serialise through it.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_noreplace_never_replaces_and_keeps_the_source() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, b"mine")?;
        fs::write(&b, b"theirs")?;
        let err = rename_noreplace(&a, &b).err().map(|e| e.kind());
        assert_eq!(err, Some(ErrorKind::AlreadyExists));
        assert_eq!(fs::read(&a)?, b"mine");
        assert_eq!(fs::read(&b)?, b"theirs");
        fs::remove_file(&b)?;
        rename_noreplace(&a, &b)?;
        assert!(!a.exists());
        assert_eq!(fs::read(&b)?, b"mine");
        Ok(())
    }
}
