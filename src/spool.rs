//! The spool directory protocol (SPEC §3). A file leaves incoming/ only by
//! rename() into processing/<batch_tag>/, and leaves processing/ only by rename()
//! into archive/ or failed/; every rename is followed by an fsync of the
//! directories involved, so a crash at any instant leaves each file in exactly
//! one place. Files are opened with O_NOFOLLOW and must be regular files.

use crate::batch::BatchTag;
use crate::error::{Context, Error, Result};
use crate::fs::{fsync_dir, make_dir, write_atomic};
use crate::sequence::SeqFile;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The spool's directories, in the order `status` shows them.
pub(crate) const DIRS: [&str; 6] = [
    "tmp",
    "incoming",
    "processing",
    "archive",
    "failed",
    "outbox",
];

/// A file waiting in incoming/.
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    /// Base name.
    pub(crate) name: String,
    /// Size in bytes when listed.
    pub(crate) bytes: u64,
    /// Last modification time when listed.
    pub(crate) modified: SystemTime,
}

/// A file in processing/<batch_tag>/.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    /// Base name.
    pub(crate) name: String,
    /// Full path under processing/.
    pub(crate) path: PathBuf,
    /// Its place in claim order (SPEC §10): higher was claimed later. Kept in
    /// processing/<batch_tag>/.claim so that a recovered file keeps its place.
    pub(crate) seq: i64,
}

/// The claim-order record of a batch directory.
const CLAIM_FILE: &str = ".claim";
/// The last claim sequence handed out, in processing/.
const SEQ_FILE: &str = ".seq";
/// In a batch directory: the batch's gate.done is queued.
const DONE_FILE: &str = ".done";
/// In a batch directory: `<host> <pid>` of its claimer, refreshed while it runs.
const OWNER_FILE: &str = ".owner";
/// A batch directory being made, before it is renamed to its tag.
const STAGING_SUFFIX: &str = ".claiming";

/// Who claims batches in this process, and when another host's claimer counts as
/// gone. A claimer of this host is gone exactly when its flock is free (the kernel
/// frees it when the process dies); a spool shared with other hosts may sit on a
/// filesystem whose flock they do not see, so their claimers are also judged by
/// how fresh their `.owner` is.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    /// This host's name.
    pub(crate) host: String,
    /// A foreign `.owner` older than this is a claimer gone.
    pub(crate) stale_after: Duration,
}

impl Owner {
    fn record(&self) -> String {
        format!("{} {}\n", self.host, std::process::id())
    }

    /// What a staging directory's name says of its claimer: this host (hashed, as
    /// a host name may hold what a file name must not) and this process. It is
    /// there from the mkdir on, before the claimer holds its flock or has written
    /// its `.owner`.
    fn staging_mark(&self) -> String {
        format!("{}-{}", self.host_mark(), std::process::id())
    }

    fn host_mark(&self) -> String {
        crate::digest::sha256_hex(self.host.as_bytes())[..8].to_string()
    }

    /// Whether staging directory `name` was made by a process of this host that
    /// is gone.
    fn made_by_one_gone(&self, name: &str) -> bool {
        let mark = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(STAGING_SUFFIX))
            .and_then(|n| n.rsplit_once('.'))
            .and_then(|(_, mark)| mark.split_once('-'));
        let Some((host, pid)) = mark else {
            return false;
        };
        host == self.host_mark()
            && pid
                .parse::<i32>()
                .is_ok_and(|pid| !crate::host::process_alive(pid))
    }

    /// Whether the batch in `dir`, whose flock was free, may be taken over.
    fn may_take(&self, dir: &Path) -> bool {
        let path = dir.join(OWNER_FILE);
        let Ok(text) = fs::read_to_string(&path) else {
            return true;
        };
        let host = text.split_whitespace().next().unwrap_or_default();
        if host == self.host {
            return true;
        }
        let age = fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        age >= self.stale_after
    }
}

/// Why a claimed file cannot be read as input.
#[derive(Debug)]
pub(crate) enum Unreadable {
    /// Bad input: the file fails permanently with this message.
    Bad(String),
    /// The filesystem failed: the file stays where it is.
    Io(Error),
}

/// Files and bytes in one directory tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Depth {
    /// Regular files.
    pub(crate) files: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
}

/// A batch's hold on processing/<batch_tag>/: an exclusive flock on the directory,
/// held while the batch runs and released by the kernel if the process dies, so
/// recovery takes over only batches whose owner is gone.
#[derive(Debug)]
pub(crate) struct BatchLock {
    _dir: File,
}

impl BatchLock {
    /// Locks `dir`; `None` when a live process holds it.
    fn try_take(dir: &Path) -> Result<Option<BatchLock>> {
        let file = File::open(dir).with_context(|| format!("cannot open `{}`", dir.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(BatchLock { _dir: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::from(e).context(format!("cannot lock `{}`", dir.display())))
            }
        }
    }
}

/// A batch in processing/ with its lock.
pub(crate) type InFlight = (BatchTag, Vec<Claimed>, BatchLock);

/// The spool rooted at SPOOL_DIR.
#[derive(Debug, Clone)]
pub(crate) struct Spool {
    root: PathBuf,
}

/// The files of a batch directory (dotfiles are its bookkeeping); `None` when
/// the directory went away meanwhile.
fn batch_files(dir: &Path) -> Result<Option<Vec<(String, PathBuf)>>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::from(e).context(format!("cannot list `{}`", dir.display())));
        }
    };
    let mut names = Vec::new();
    for f in entries {
        let f = f.with_context(|| format!("cannot list `{}`", dir.display()))?;
        if let Some(name) = f.file_name().to_str()
            && !name.starts_with('.')
        {
            names.push((name.to_string(), f.path()));
        }
    }
    Ok(Some(names))
}

/// processing/<tag>/.claim as name → sequence (empty when missing or unreadable).
fn claim_order(dir: &Path) -> std::collections::HashMap<String, i64> {
    claim_records(dir)
        .into_iter()
        .map(|(seq, _, name)| (name, seq))
        .collect()
}

/// The lines of processing/<tag>/.claim: (sequence, size when claimed, name).
/// `<seq>\t<size>\t<name>`; records of earlier releases, `<seq> <name>`, have no
/// size.
fn claim_records(dir: &Path) -> Vec<(i64, Option<u64>, String)> {
    fs::read_to_string(dir.join(CLAIM_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| match l.split_once('\t') {
            Some((seq, rest)) => {
                let (size, name) = rest.split_once('\t')?;
                Some((seq.parse().ok()?, size.parse().ok(), name.to_string()))
            }
            None => {
                let (seq, name) = l.split_once(' ')?;
                Some((seq.parse().ok()?, None, name.to_string()))
            }
        })
        .collect()
}

/// A file claimed, and still in processing/.
#[derive(Debug, Clone)]
pub(crate) struct Earlier {
    /// Its batch.
    pub(crate) tag: BatchTag,
    /// Its name.
    pub(crate) name: String,
    /// Its claim sequence.
    pub(crate) seq: i64,
    /// Where it is.
    pub(crate) path: PathBuf,
}

/// A batch's start in microseconds, from its tag: the claim order of files a
/// release without claim records left in processing/.
fn tag_micros(tag: &BatchTag) -> i64 {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    tag.as_str()
        .get(..16)
        .and_then(|t| time::PrimitiveDateTime::parse(t, format).ok())
        .map_or(0, |t| t.assume_utc().unix_timestamp() * 1_000_000)
}

/// Whether a directory entry name is ever taken from incoming/: `*.msgpack`, not a
/// dotfile, valid UTF-8 without control characters (a name goes into logs, JSON
/// and the manifest, where a newline could forge a line).
pub(crate) fn is_candidate(name: &OsStr) -> bool {
    name.to_str().is_some_and(|n| {
        !n.starts_with('.')
            && n.len() > ".msgpack".len()
            && n.ends_with(".msgpack")
            && !n.chars().any(char::is_control)
    })
}

/// Names refused for their spelling, each reported once per process.
static REFUSED: std::sync::Mutex<Vec<std::ffi::OsString>> = std::sync::Mutex::new(Vec::new());

/// Logs, once, why a `*.msgpack` entry with an unusable name is left alone.
fn refuse_name(name: &OsStr) {
    use std::os::unix::ffi::OsStrExt;
    let bytes = name.as_bytes();
    if bytes.starts_with(b".") || !bytes.ends_with(b".msgpack") {
        return;
    }
    let mut refused = REFUSED.lock().unwrap_or_else(|p| p.into_inner());
    if refused.iter().any(|n| n == name) || refused.len() > 10_000 {
        return;
    }
    refused.push(name.to_os_string());
    log::warn!(
        "incoming/{}: refused, never read: the name is not UTF-8 or holds control characters; rename it",
        name.to_string_lossy().escape_debug()
    );
}

impl Spool {
    /// The spool at `root`.
    pub(crate) fn new(root: impl Into<PathBuf>) -> Spool {
        Spool { root: root.into() }
    }

    /// The spool root.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// `root/<name>`.
    pub(crate) fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Fails with a config error naming SPOOL_DIR when the tree is not there.
    pub(crate) fn require(&self) -> Result<()> {
        for name in DIRS {
            let dir = self.dir(name);
            if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                return Err(Error::config(format!(
                    "spool directory `{}` is missing (SPOOL_DIR={})",
                    dir.display(),
                    self.root.display()
                ))
                .with_note("run `ragspool init` first"));
            }
        }
        Ok(())
    }

    /// Files ready in incoming/, oldest first. Dotfiles, other suffixes, symlinks and
    /// non-regular files are not listed and never opened.
    pub(crate) fn waiting(&self) -> Result<Vec<Waiting>> {
        let dir = self.dir("incoming");
        let mut found = Vec::new();
        let entries =
            fs::read_dir(&dir).with_context(|| format!("cannot list `{}`", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list `{}`", dir.display()))?;
            let name = entry.file_name();
            if !is_candidate(&name) {
                refuse_name(&name);
                continue;
            }
            // DirEntry::metadata does not follow symlinks.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.file_type().is_file() {
                continue;
            }
            let Some(name) = name.to_str() else { continue };
            found.push(Waiting {
                name: name.to_string(),
                bytes: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        found.sort_by(|a, b| {
            a.modified
                .cmp(&b.modified)
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(found)
    }

    /// Moves `files` from incoming/ into processing/<tag>/ under the batch's lock. A
    /// file another process claimed first is skipped. Returns what this call claimed.
    pub(crate) fn claim(
        &self,
        tag: &BatchTag,
        files: &[Waiting],
        owner: &Owner,
    ) -> Result<(Vec<Claimed>, BatchLock)> {
        let incoming = self.dir("incoming");
        let processing = self.dir("processing");
        let target = processing.join(tag.as_str());
        // The directory appears under its tag already locked and owned, so that a
        // recovery scanning processing/ meanwhile never takes a batch being made.
        let staging = processing.join(format!(".{tag}.{}{STAGING_SUFFIX}", owner.staging_mark()));
        make_dir(&staging)?;
        let lock = BatchLock::try_take(&staging)?.ok_or_else(|| {
            Error::temp(format!(
                "`{}` is locked by another process",
                staging.display()
            ))
        })?;
        write_atomic(&staging, OWNER_FILE, owner.record().as_bytes(), 0o640)?;
        fs::rename(&staging, &target)
            .with_context(|| format!("cannot rename `{}`", staging.display()))?;
        fsync_dir(&processing)?;
        // One claim at a time per spool, so that claim order is one total order:
        // sequences are handed out and the files renamed under this lock.
        let mut seq_lock = SeqFile::lock(&processing.join(SEQ_FILE))?;
        let base = seq_lock.take(files.len(), crate::clock::now_micros())?;
        let order: String = files
            .iter()
            .zip(base..)
            // Tabs apart: a name may hold spaces but no control character.
            .map(|(f, seq)| format!("{seq}\t{}\t{}\n", f.bytes, f.name))
            .collect();
        write_atomic(&target, CLAIM_FILE, order.as_bytes(), 0o640)?;
        let mut claimed = Vec::with_capacity(files.len());
        for (file, seq) in files.iter().zip(base..) {
            let from = incoming.join(&file.name);
            let to = target.join(&file.name);
            match fs::rename(&from, &to) {
                Ok(()) => claimed.push(Claimed {
                    name: file.name.clone(),
                    path: to,
                    seq,
                }),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(
                        Error::from(e).context(format!("cannot claim `{}`", from.display()))
                    );
                }
            }
        }
        fsync_dir(&target)?;
        fsync_dir(&incoming)?;
        drop(seq_lock);
        if claimed.is_empty() {
            self.forget(tag);
        }
        Ok((claimed, lock))
    }

    /// Batches a crash left in processing/, with their files, locked for the
    /// caller and recorded as its own; batches a live claimer still holds are
    /// left alone (see [`Owner`]).
    /// At most `max` of them, leaving out those in `skip`.
    pub(crate) fn in_flight(
        &self,
        owner: &Owner,
        skip: &std::collections::HashSet<BatchTag>,
        max: usize,
    ) -> Result<Vec<InFlight>> {
        let processing = self.dir("processing");
        let mut batches = Vec::new();
        let mut entries: Vec<fs::DirEntry> = fs::read_dir(&processing)
            .with_context(|| format!("cannot list `{}`", processing.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot list `{}`", processing.display()))?;
        // Oldest batch first (tags sort by time).
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if batches.len() >= max {
                break;
            }
            let name = entry.file_name();
            let Some(tag) = name.to_str().and_then(BatchTag::parse) else {
                self.clear_staging(&name, owner);
                continue;
            };
            if skip.contains(&tag) {
                continue;
            }
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = entry.path();
            // Another process may finish the batch and remove its directory
            // between the listing and these calls: then there is nothing to recover.
            // (Its remover holds the lock and drops it after the directory went,
            // so a lock taken does not prove the directory is still there.)
            let taken = BatchLock::try_take(&dir).and_then(|lock| match lock {
                Some(lock) if owner.may_take(&dir) => {
                    let names = batch_files(&dir)?;
                    write_atomic(&dir, OWNER_FILE, owner.record().as_bytes(), 0o640)?;
                    Ok(names.map(|n| (lock, n)))
                }
                _ => Ok(None),
            });
            let (lock, mut names) = match taken {
                Ok(Some(taken)) => taken,
                Ok(None) => continue,
                Err(e) if !dir.exists() => {
                    log::debug!("batch {tag}: gone while listed ({e})");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let order = claim_order(&dir);
            names.sort();
            let fallback = tag_micros(&tag);
            let mut files: Vec<Claimed> = names
                .into_iter()
                .zip(fallback..)
                .map(|((name, path), fallback)| Claimed {
                    seq: order.get(&name).copied().unwrap_or(fallback),
                    name,
                    path,
                })
                .collect();
            files.sort_by_key(|f| f.seq);
            batches.push((tag, files, lock));
        }
        batches.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(batches)
    }

    /// Removes a batch directory whose claimer died before it got its tag (it holds
    /// nothing but its `.owner`: files move in only after the rename). One whose
    /// name says a process of this host made it goes once that process is gone, at
    /// whatever step it died (before its flock, its `.owner`, or after); one whose
    /// `.owner` names this host, as soon as its flock is free (that claimer wrote
    /// it under the lock, so a free lock means it died). Otherwise only one a
    /// minute old: a claimer renames its own within milliseconds, also on another
    /// host whose flock this one does not see, and one that has not yet written
    /// its `.owner` may not yet hold its lock either.
    fn clear_staging(&self, name: &OsStr, owner: &Owner) {
        let Some(name) = name.to_str() else { return };
        if !(name.starts_with('.') && name.ends_with(STAGING_SUFFIX)) {
            return;
        }
        let dir = self.dir("processing").join(name);
        let tmp = dir.join(format!(".{OWNER_FILE}.tmp"));
        let ours = owner.made_by_one_gone(name)
            || fs::read_to_string(dir.join(OWNER_FILE))
                .is_ok_and(|text| text.split_whitespace().next() == Some(owner.host.as_str()));
        let old = fs::symlink_metadata(&dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age >= Duration::from_secs(60));
        if !(ours || old) {
            return;
        }
        if let Ok(Some(_lock)) = BatchLock::try_take(&dir) {
            let _ = fs::remove_file(dir.join(OWNER_FILE));
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_dir(&dir);
        }
    }

    /// Tells other hosts that the claimer of batch `tag` lives (see [`Owner`]).
    pub(crate) fn touch_owner(&self, tag: &BatchTag) {
        let path = self.dir("processing").join(tag.as_str()).join(OWNER_FILE);
        let touched = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        if let Err(e) = touched {
            log::debug!("batch {tag}: cannot refresh `{}`: {e}", path.display());
        }
    }

    /// The files of `size` bytes claimed before sequence `seq` (by any process
    /// sharing this spool) and still in processing/, earliest first: the only
    /// files that can be an earlier copy of a file of that size.
    pub(crate) fn claimed_before(&self, seq: i64, size: u64) -> Vec<Earlier> {
        let processing = self.dir("processing");
        let mut found = Vec::new();
        for entry in fs::read_dir(&processing).into_iter().flatten().flatten() {
            let Some(tag) = entry.file_name().to_str().and_then(BatchTag::parse) else {
                continue;
            };
            let dir = entry.path();
            for (s, bytes, name) in claim_records(&dir) {
                let path = dir.join(&name);
                let same = bytes.is_none_or(|b| b == size)
                    && fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == size);
                if s < seq && same {
                    found.push(Earlier {
                        tag: tag.clone(),
                        name,
                        seq: s,
                        path,
                    });
                }
            }
        }
        found.sort_by_key(|e| e.seq);
        found
    }

    /// The spool that holds the claimed file at `path` (`<root>/processing/<tag>/<name>`).
    pub(crate) fn holding(path: &Path) -> Option<Spool> {
        path.ancestors().nth(3).map(Spool::new)
    }

    /// Records in processing/<tag>/ that the batch's gate.done is queued, so that
    /// a crash before the directory goes does not queue it twice.
    pub(crate) fn mark_done_queued(&self, tag: &BatchTag) -> Result<()> {
        let dir = self.dir("processing").join(tag.as_str());
        write_atomic(&dir, DONE_FILE, b"", 0o640)
    }

    /// Whether the batch's gate.done was queued (see [`Spool::mark_done_queued`]).
    pub(crate) fn done_queued(&self, tag: &BatchTag) -> bool {
        self.dir("processing")
            .join(tag.as_str())
            .join(DONE_FILE)
            .exists()
    }

    /// Removes processing/<tag>/ once no file of the batch is left in it; its
    /// bookkeeping (dotfiles: the claim-order record, the done marker, and the
    /// temporary of one a crash cut short) goes with it. A directory still holding
    /// files stays.
    pub(crate) fn forget(&self, tag: &BatchTag) {
        let dir = self.dir("processing").join(tag.as_str());
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        let names: Vec<std::ffi::OsString> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        if names.iter().any(|n| !n.to_string_lossy().starts_with('.')) {
            return;
        }
        for name in names {
            let _ = fs::remove_file(dir.join(name));
        }
        if fs::remove_dir(&dir).is_ok() {
            let _ = fsync_dir(&self.dir("processing"));
        }
    }

    /// Moves a claimed file to archive/<day>/<tag>/.
    pub(crate) fn archive(&self, tag: &BatchTag, file: &Claimed, day: &str) -> Result<PathBuf> {
        let archive = self.dir("archive");
        let day_dir = archive.join(day);
        let dir = day_dir.join(tag.as_str());
        if make_dir(&dir)? {
            fsync_dir(&archive)?;
            fsync_dir(&day_dir)?;
        }
        self.move_out(file, &dir)
    }

    /// Moves a claimed file to failed/<tag>/ beside `<file>.reason.json`.
    pub(crate) fn fail(
        &self,
        tag: &BatchTag,
        file: &Claimed,
        reason_json: &str,
    ) -> Result<PathBuf> {
        let failed = self.dir("failed");
        let dir = failed.join(tag.as_str());
        if make_dir(&dir)? {
            fsync_dir(&failed)?;
        }
        write_atomic(
            &dir,
            &format!("{}.reason.json", file.name),
            reason_json.as_bytes(),
            0o640,
        )?;
        self.move_out(file, &dir)
    }

    fn move_out(&self, file: &Claimed, dir: &Path) -> Result<PathBuf> {
        let to = dir.join(&file.name);
        fs::rename(&file.path, &to).with_context(|| {
            format!(
                "cannot move `{}` to `{}`",
                file.path.display(),
                dir.display()
            )
        })?;
        fsync_dir(dir)?;
        if let Some(from) = file.path.parent() {
            fsync_dir(from)?;
        }
        Ok(to)
    }

    /// Moves the files of failed/<tag>/ back to incoming/; their reason files go to
    /// failed/<tag>/requeued/. A name already waiting in incoming/ is left where
    /// it is and reported. Returns (moved, left).
    pub(crate) fn requeue(&self, tag: &BatchTag) -> Result<(Vec<String>, Vec<String>)> {
        let dir = self.dir("failed").join(tag.as_str());
        let incoming = self.dir("incoming");
        let aside = dir.join("requeued");
        let mut names: Vec<String> = fs::read_dir(&dir)
            .with_context(|| format!("cannot list `{}`", dir.display()))?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.ends_with(".reason.json"))
            .collect();
        names.sort();
        let (mut moved, mut left) = (Vec::new(), Vec::new());
        for name in names {
            let target = incoming.join(&name);
            if fs::symlink_metadata(&target).is_ok() {
                left.push(name);
                continue;
            }
            // A producer's file of the same name may land in incoming/ between the
            // check above and this rename: it is left, never overwritten.
            match crate::fs::rename_noreplace(&dir.join(&name), &target) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    left.push(name);
                    continue;
                }
                Err(e) => {
                    return Err(
                        Error::from(e).context(format!("cannot move `{name}` back to incoming/"))
                    );
                }
            }
            let reason = dir.join(format!("{name}.reason.json"));
            if reason.exists() {
                make_dir(&aside)?;
                fs::rename(&reason, aside.join(format!("{name}.reason.json")))
                    .with_context(|| format!("cannot move `{}` aside", reason.display()))?;
            }
            moved.push(name);
        }
        if aside.exists() {
            fsync_dir(&aside)?;
        }
        fsync_dir(&dir)?;
        fsync_dir(&incoming)?;
        Ok((moved, left))
    }

    /// Batches with files in failed/, oldest first.
    pub(crate) fn failed_batches(&self) -> Result<Vec<BatchTag>> {
        let dir = self.dir("failed");
        let mut tags: Vec<BatchTag> = fs::read_dir(&dir)
            .with_context(|| format!("cannot list `{}`", dir.display()))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(BatchTag::parse))
            .collect();
        tags.sort();
        Ok(tags)
    }

    /// Files and bytes under each directory of [`DIRS`].
    pub(crate) fn depth(&self) -> Result<Vec<(&'static str, Depth)>> {
        DIRS.iter()
            .map(|name| Ok((*name, tree_depth(&self.dir(name))?)))
            .collect()
    }
}

fn tree_depth(dir: &Path) -> Result<Depth> {
    let mut depth = Depth::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::from(e).context(format!("cannot list `{}`", d.display()))),
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && !entry.file_name().as_encoded_bytes().starts_with(b".") {
                // Dotfiles are bookkeeping (claim order, sequences), not spooled files.
                depth.files += 1;
                depth.bytes += meta.len();
            }
        }
    }
    Ok(depth)
}

/// Opens a claimed file without following a symlink, refusing anything that is
/// not a regular file of 1 to `max_bytes` bytes; returns it with its size.
pub(crate) fn open_claimed(
    path: &Path,
    max_bytes: u64,
) -> std::result::Result<(File, u64), Unreadable> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Unreadable::Bad(
                "is a symbolic link; spool files must be regular files".into(),
            ));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(Unreadable::Bad("is not a regular file".into()));
        }
        Err(e) => {
            return Err(Unreadable::Io(
                Error::from(e).context(format!("cannot open `{}`", path.display())),
            ));
        }
    };
    let meta = file.metadata().map_err(|e| {
        Unreadable::Io(Error::from(e).context(format!("cannot stat `{}`", path.display())))
    })?;
    if !meta.file_type().is_file() {
        return Err(Unreadable::Bad("is not a regular file".into()));
    }
    if meta.nlink() > 1 {
        return Err(Unreadable::Bad(format!(
            "has {} hard links; spool files must have one (a link could expose a file from elsewhere)",
            meta.nlink()
        )));
    }
    if meta.size() == 0 {
        return Err(Unreadable::Bad("is empty (0 bytes)".into()));
    }
    if meta.size() > max_bytes {
        return Err(Unreadable::Bad(format!(
            "is {} bytes, over MAX_FILE_BYTES ({max_bytes})",
            meta.size()
        )));
    }
    Ok((file, meta.size()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn spool() -> Result<(tempfile::TempDir, Spool)> {
        let dir = tempfile::tempdir()?;
        let spool = Spool::new(dir.path());
        for d in DIRS {
            make_dir(&spool.dir(d))?;
        }
        Ok((dir, spool))
    }

    #[test]
    fn only_regular_msgpack_non_dotfiles_wait() -> Result<()> {
        let (_t, spool) = spool()?;
        let inc = spool.dir("incoming");
        fs::write(inc.join("a.msgpack"), b"x")?;
        fs::write(inc.join(".hidden.msgpack"), b"x")?;
        fs::write(inc.join("b.json"), b"x")?;
        fs::write(inc.join(".msgpack"), b"x")?;
        symlink("/etc/passwd", inc.join("link.msgpack"))?;
        fs::create_dir(inc.join("dir.msgpack"))?;
        let names: Vec<String> = spool.waiting()?.into_iter().map(|w| w.name).collect();
        assert_eq!(names, vec!["a.msgpack"]);
        Ok(())
    }

    fn owner(host: &str) -> Owner {
        Owner {
            host: host.into(),
            stale_after: Duration::from_secs(15),
        }
    }

    #[test]
    fn claim_archive_fail_move_files_once() -> Result<()> {
        let (_t, spool) = spool()?;
        let me = owner("here");
        let inc = spool.dir("incoming");
        fs::write(inc.join("a.msgpack"), b"a")?;
        fs::write(inc.join("b.msgpack"), b"b")?;
        let tag = BatchTag::new()?;
        let waiting = spool.waiting()?;
        let (claimed, lock) = spool.claim(&tag, &waiting, &me)?;
        assert_eq!(claimed.len(), 2);
        // A second claimer of the same listing gets nothing.
        assert!(spool.claim(&BatchTag::new()?, &waiting, &me)?.0.is_empty());
        // Recovery leaves a batch alone while its owner holds the lock.
        assert_eq!(
            spool.in_flight(&me, &Default::default(), usize::MAX)?.len(),
            0
        );
        drop(lock);
        assert_eq!(
            spool.in_flight(&me, &Default::default(), usize::MAX)?.len(),
            1
        );
        spool.archive(&tag, &claimed[0], "2026-01-02")?;
        spool.fail(&tag, &claimed[1], "{}")?;
        spool.forget(&tag);
        assert!(
            spool
                .in_flight(&me, &Default::default(), usize::MAX)?
                .is_empty()
        );
        assert!(
            spool
                .dir("archive")
                .join("2026-01-02")
                .join(tag.as_str())
                .join("a.msgpack")
                .is_file()
        );
        assert!(
            spool
                .dir("failed")
                .join(tag.as_str())
                .join("b.msgpack.reason.json")
                .is_file()
        );
        Ok(())
    }

    #[test]
    fn another_hosts_batch_is_taken_only_once_its_owner_record_is_stale() -> Result<()> {
        let (_t, spool) = spool()?;
        fs::write(spool.dir("incoming").join("a.msgpack"), b"a")?;
        let tag = BatchTag::new()?;
        let (_, lock) = spool.claim(&tag, &spool.waiting()?, &owner("there"))?;
        // The flock is free (a filesystem whose locks the other host does not
        // share), but its claimer refreshed `.owner` just now.
        drop(lock);
        assert!(
            spool
                .in_flight(&owner("here"), &Default::default(), usize::MAX)?
                .is_empty()
        );
        let record = spool.dir("processing").join(tag.as_str()).join(OWNER_FILE);
        let old = SystemTime::now() - Duration::from_secs(16);
        OpenOptions::new()
            .write(true)
            .open(&record)?
            .set_modified(old)?;
        let taken = spool.in_flight(&owner("here"), &Default::default(), usize::MAX)?;
        assert_eq!(taken.len(), 1);
        // Taken over: the record now names this host.
        assert!(fs::read_to_string(&record)?.starts_with("here "));
        drop(taken);
        // A claimer of this host whose flock is free has gone, however fresh.
        assert_eq!(
            spool
                .in_flight(&owner("here"), &Default::default(), usize::MAX)?
                .len(),
            1
        );
        Ok(())
    }

    #[test]
    fn a_batch_directory_that_vanishes_while_listed_is_not_an_error() -> Result<()> {
        let (_t, spool) = spool()?;
        let processing = spool.dir("processing");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let (stop, processing) = (stop.clone(), processing.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Ok(tag) = BatchTag::new() {
                        let dir = processing.join(tag.as_str());
                        let _ = fs::create_dir(&dir);
                        let _ = fs::write(dir.join("f.msgpack"), b"x");
                        let _ = fs::remove_file(dir.join("f.msgpack"));
                        let _ = fs::remove_dir(&dir);
                    }
                }
            })
        };
        let outcome = (0..2000).try_for_each(|_| {
            spool
                .in_flight(&owner("here"), &Default::default(), usize::MAX)
                .map(drop)
        });
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = churn.join();
        outcome
    }

    #[test]
    fn a_staging_directory_left_by_a_dead_claimer_is_cleared() -> Result<()> {
        let (_t, spool) = spool()?;
        let none = || -> Result<bool> {
            Ok(spool
                .in_flight(&owner("here"), &Default::default(), usize::MAX)?
                .is_empty())
        };
        let staging = |host: &str| -> Result<PathBuf> {
            let dir = spool
                .dir("processing")
                .join(format!(".{}{STAGING_SUFFIX}", BatchTag::new()?));
            make_dir(&dir)?;
            fs::write(dir.join(OWNER_FILE), format!("{host} 1\n"))?;
            Ok(dir)
        };
        // This host's claimer, alive (its lock held), is left to rename its own.
        let alive = staging("here")?;
        let lock = BatchLock::try_take(&alive)?;
        assert!(none()? && alive.exists());
        // Once it died (the lock free), its directory goes at once.
        drop(lock);
        assert!(none()? && !alive.exists());
        // Another host's, whose flock this host may not see, only a minute on.
        let foreign = staging("there")?;
        assert!(none()? && foreign.exists());
        let old = SystemTime::now() - Duration::from_secs(61);
        File::open(&foreign)?.set_modified(old)?;
        assert!(none()? && !foreign.exists());
        // Killed between its mkdir and its owner record (or its flock): the name
        // says which process of this host made it. Left while that process lives,
        // cleared at once when it is gone; another host's mark waits its minute.
        let marked = |mark: String| -> Result<PathBuf> {
            let dir = spool
                .dir("processing")
                .join(format!(".{}.{mark}{STAGING_SUFFIX}", BatchTag::new()?));
            make_dir(&dir)?;
            Ok(dir)
        };
        let here = owner("here");
        let living = marked(here.staging_mark())?;
        let mut child = std::process::Command::new("true").spawn()?;
        let gone_pid = child.id();
        child.wait()?;
        let gone = marked(format!("{}-{gone_pid}", here.host_mark()))?;
        let elsewhere = marked(format!("{}-{gone_pid}", owner("there").host_mark()))?;
        assert!(none()?);
        assert!(living.exists() && !gone.exists() && elsewhere.exists());
        Ok(())
    }

    #[test]
    fn open_claimed_refuses_links_empty_and_big_files() -> Result<()> {
        let (t, _spool) = spool()?;
        let p = t.path().join("f.msgpack");
        fs::write(&p, b"")?;
        assert!(matches!(open_claimed(&p, 10), Err(Unreadable::Bad(m)) if m.contains("empty")));
        fs::write(&p, [0u8; 11])?;
        assert!(
            matches!(open_claimed(&p, 10), Err(Unreadable::Bad(m)) if m.contains("MAX_FILE_BYTES"))
        );
        let l = t.path().join("l.msgpack");
        symlink(&p, &l)?;
        assert!(
            matches!(open_claimed(&l, 100), Err(Unreadable::Bad(m)) if m.contains("symbolic link"))
        );
        assert!(matches!(open_claimed(&p, 100), Ok((_, 11))));
        Ok(())
    }
}
