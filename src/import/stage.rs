//! The spool files of one input, staged in tmp/ until the whole input has been
//! checked, then renamed into incoming/ together; until then nothing of the input
//! is where `watch` or `process` look. Disk holds the staged files, not memory:
//! a document that overflows its file is moved, from the disk, to a new one.
//! Staged files are removed on every way out short of a commit: an error (Drop),
//! SIGINT/SIGTERM/SIGHUP (the signal thread), and a crash (the next import
//! clears what a run whose lock is free left behind). tmp/ is never read by
//! `process` or `watch`, and staged names do not end in `.msgpack`.

use crate::error::{Context, Error, Result};
use crate::fs::{LockFile, fsync_dir, rename_noreplace, rename_own_name};
use crate::spool::Spool;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Mode of a spool file, as `gen` and producers write them.
const FILE_MODE: u32 = 0o640;
/// Suffix of a staged file in tmp/ (never `.msgpack`, so never mistaken for input).
const STAGED_SUFFIX: &str = ".msgpack.staged";
/// Suffix of a run's commit marker in tmp/: the files it is renaming into incoming/.
const COMMIT_SUFFIX: &str = ".commit";
/// A stale run's lock older than this is cleared even when another host wrote it
/// (a spool shared over a filesystem whose flock that host does not share).
const FOREIGN_STALE: Duration = Duration::from_secs(24 * 3600);

/// Every staged file (and run lock) of this process that a signal must remove.
/// Held while a file is created and while an input commits, so that the signal
/// thread removes a consistent set and nothing is half-committed.
static STAGED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn staged() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    STAGED.lock().unwrap_or_else(|p| p.into_inner())
}

/// The most records and bytes of one spool file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `--max-records`.
    pub(crate) records: u64,
    /// `--max-bytes`.
    pub(crate) bytes: u64,
}

/// What an input's commit placed in incoming/.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Written {
    /// Spool files.
    pub(crate) files: u64,
    /// Records in them.
    pub(crate) records: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
}

/// One `ragspool import`: its name prefix, its lock in tmp/, the next file number.
pub(crate) struct Run {
    tmp: PathBuf,
    incoming: PathBuf,
    id: String,
    next: u64,
    /// When run as root: the owner of incoming/, who must be able to read the files.
    owner: Option<(u32, u32)>,
    lock: LockFile,
}

impl Run {
    /// Starts a run on `spool`: takes its lock, clears what crashed runs left.
    pub(crate) fn start(spool: &Spool) -> Result<Run> {
        let tmp = spool.dir("tmp");
        let incoming = spool.dir("incoming");
        let now = time::OffsetDateTime::now_utc();
        let mut random = [0u8; 4];
        getrandom::fill(&mut random)
            .map_err(|e| Error::temp(format!("cannot read random bytes for a file name: {e}")))?;
        let stamp = now
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second].[subsecond digits:6]Z"
            ))
            .unwrap_or_default();
        // Names sort by time: files one commit places share an mtime, and a
        // batch takes files of one mtime in name order (SPEC §10).
        let id = format!("{stamp}-{}", crate::digest::hex(&random));
        let lock_path = tmp.join(format!("import-{id}.lock"));
        let lock = {
            let mut list = staged();
            let lock = take_lock(&lock_path, spool)?;
            list.push(lock_path.clone());
            lock
        };
        let owner = (crate::privdrop::euid() == 0)
            .then(|| fs::metadata(&incoming).ok().map(|m| (m.uid(), m.gid())))
            .flatten();
        // Built before anything else can fail, so that its Drop removes the lock.
        let run = Run {
            tmp,
            incoming,
            id,
            next: 1,
            owner,
            lock,
        };
        // Who holds it: a stale lock of this host is cleared at once (its flock
        // free proves its run gone), another host's only when a day old.
        let record = format!("{} {}\n", crate::host::host_name(), std::process::id());
        (&run.lock.file)
            .write_all(record.as_bytes())
            .with_context(|| format!("cannot write `{}`", lock_path.display()))?;
        run.clear_stale();
        Ok(run)
    }

    /// Removes the staged files of runs that died (their lock is free), on this
    /// host, or on any host when the lock is a day old.
    fn clear_stale(&self) {
        let Ok(entries) = fs::read_dir(&self.tmp) else {
            return;
        };
        let host = crate::host::host_name();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("import-"))
                .and_then(|n| n.strip_suffix(".lock"))
            else {
                continue;
            };
            if id == self.id || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let path = entry.path();
            let Ok(file) = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
            else {
                continue;
            };
            if file.try_lock().is_err() {
                continue;
            }
            let mut text = String::new();
            let _ = (&file).read_to_string(&mut text);
            let ours = text.split_whitespace().next() == Some(host.as_str());
            let old = file
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age >= FOREIGN_STALE);
            if ours || old {
                self.finish_commit(id);
                self.remove_run(id, &path);
            }
        }
    }

    /// Writes (and fsyncs) the list of `files` about to be renamed into incoming/
    /// with mtime `when`: `<nanoseconds>` on the first line, then one name a line.
    /// Atomically (a temporary file renamed): a marker cut short by a crash would
    /// make the next import finish the commit with only the names it lists.
    fn write_marker(&self, files: &[Staged], when: SystemTime) -> Result<PathBuf> {
        let name = format!("import-{}{COMMIT_SUFFIX}", self.id);
        let nanos = when
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut text = format!("{nanos}\n");
        for f in files {
            text.push_str(&f.name);
            text.push('\n');
        }
        crate::fs::write_atomic(&self.tmp, &name, text.as_bytes(), FILE_MODE)?;
        Ok(self.tmp.join(name))
    }

    /// Finishes the commit a dead run `id` had begun: the files its marker lists
    /// that are still staged go into incoming/ as that commit would have put them.
    fn finish_commit(&self, id: &str) {
        let marker = self.tmp.join(format!("import-{id}{COMMIT_SUFFIX}"));
        let Ok(text) = read_nofollow(&marker) else {
            return;
        };
        let mut lines = text.lines();
        let when = lines
            .next()
            .and_then(|l| l.parse::<u64>().ok())
            .map(|n| SystemTime::UNIX_EPOCH + Duration::from_nanos(n));
        let mut finished = 0;
        for name in lines.filter(|n| is_spool_name(n)) {
            let from = self.tmp.join(format!("{name}.staged"));
            let to = self.incoming.join(name);
            let moved = when
                .map_or(Ok(()), |when| set_mtime(&from, when))
                .and_then(|()| rename_own_name(&from, &to));
            if moved.is_ok() {
                finished += 1;
            }
        }
        if finished > 0 && fsync_dir(&self.incoming).is_err() {
            return;
        }
        let _ = fs::remove_file(&marker);
        log::info!(
            "finished the commit an interrupted import {id} had begun: {finished} more file(s) into incoming/"
        );
    }

    /// Removes the staged files of run `id` and then its lock.
    fn remove_run(&self, id: &str, lock: &Path) {
        let prefix = format!("import-{id}-");
        let mut removed = 0;
        for entry in fs::read_dir(&self.tmp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(&prefix)
                && name.ends_with(STAGED_SUFFIX)
                && fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        // A marker's temporary file, when the run died while writing it.
        let _ = fs::remove_file(self.tmp.join(format!(".import-{id}{COMMIT_SUFFIX}.tmp")));
        let _ = fs::remove_file(lock);
        log::info!("cleared {removed} staged file(s) that an interrupted import {id} left in tmp/");
    }

    /// The staging of one input's files.
    pub(crate) fn stage(&mut self, limits: Limits) -> Staging<'_> {
        Staging {
            run: self,
            limits,
            done: Vec::new(),
            current: None,
            doc_start: (0, 0),
        }
    }

    /// A new staged file, registered for removal as it is created (under the
    /// list's lock, so a signal never misses it).
    fn open(&mut self) -> Result<Open> {
        let name = format!("import-{}-{:08}.msgpack", self.id, self.next);
        self.next += 1;
        let path = self.tmp.join(format!("{name}.staged"));
        let mut list = staged();
        let file =
            create_new(&path).with_context(|| format!("cannot create `{}`", path.display()))?;
        list.push(path.clone());
        drop(list);
        // The mode exactly, whatever the umask; the owner `process` runs as.
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .with_context(|| format!("cannot set the mode of `{}`", path.display()))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .with_context(|| format!("cannot chown `{}`", path.display()))?;
        }
        Ok(Open {
            out: BufWriter::with_capacity(1 << 20, file),
            path,
            name,
            records: 0,
            bytes: 0,
        })
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Whatever of this run is still staged (a file dropped on a failed move
        // included) goes with it; its lock last, so a crash before leaves it to
        // the next import's clearing.
        let prefix = format!("import-{}-", self.id);
        for entry in fs::read_dir(&self.tmp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(STAGED_SUFFIX))
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        let path = self.lock.path.clone();
        let _ = fs::remove_file(&path);
        staged().retain(|p| *p != path);
    }
}

/// A staged file being written.
struct Open {
    out: BufWriter<File>,
    path: PathBuf,
    name: String,
    records: u64,
    bytes: u64,
}

impl Open {
    fn io(&self, e: std::io::Error) -> Error {
        Error::from(e).context(format!("cannot write `{}`", self.path.display()))
    }
}

/// A staged file complete and fsynced.
struct Staged {
    path: PathBuf,
    name: String,
    records: u64,
    bytes: u64,
}

/// One input's staged files; dropped without [`Staging::commit`], it removes them.
pub(crate) struct Staging<'r> {
    run: &'r mut Run,
    limits: Limits,
    done: Vec<Staged>,
    current: Option<Open>,
    /// Where the document being written starts in the current file: (bytes, records).
    doc_start: (u64, u64),
}

impl Staging<'_> {
    /// The records that follow belong to a new document.
    pub(crate) fn begin_doc(&mut self) {
        self.doc_start = self
            .current
            .as_ref()
            .map_or((0, 0), |o| (o.bytes, o.records));
    }

    /// Appends one encoded record of the current document. When it would take
    /// the file past its limits, the document moves to a new file, unless it
    /// fills its file alone: a document larger than the limits stays whole.
    pub(crate) fn push(&mut self, record: &[u8]) -> Result<()> {
        let len = record.len() as u64;
        if let Some(open) = &self.current {
            let full =
                open.records + 1 > self.limits.records || open.bytes + len > self.limits.bytes;
            if full && self.doc_start.0 > 0 {
                self.move_document()?;
            }
        }
        let open = match &mut self.current {
            Some(open) => open,
            None => {
                self.doc_start = (0, 0);
                self.current.insert(self.run.open()?)
            }
        };
        if let Err(e) = open.out.write_all(record) {
            return Err(open.io(e));
        }
        open.records += 1;
        open.bytes += len;
        Ok(())
    }

    /// The current document ended; a file at its limits is closed.
    pub(crate) fn end_doc(&mut self) -> Result<()> {
        let full = self
            .current
            .as_ref()
            .is_some_and(|o| o.records >= self.limits.records || o.bytes >= self.limits.bytes);
        if full {
            self.close()?;
        }
        Ok(())
    }

    /// Moves the current document's records from the end of the current file
    /// to the start of a new one, and closes the current file without them.
    fn move_document(&mut self) -> Result<()> {
        let Some(mut old) = self.current.take() else {
            return Ok(());
        };
        let (start, start_records) = self.doc_start;
        let mut new = self.run.open()?;
        let moved = (|| -> std::io::Result<u64> {
            old.out.flush()?;
            let file = old.out.get_mut();
            file.seek(SeekFrom::Start(start))?;
            let n = std::io::copy(&mut Read::take(&mut *file, old.bytes - start), &mut new.out)?;
            file.set_len(start)?;
            Ok(n)
        })()
        .map_err(|e| old.io(e))?;
        new.records = old.records - start_records;
        new.bytes = moved;
        old.records = start_records;
        old.bytes = start;
        self.current = Some(old);
        self.close()?;
        self.current = Some(new);
        self.doc_start = (0, 0);
        Ok(())
    }

    /// Flushes and fsyncs the current file; it is complete.
    fn close(&mut self) -> Result<()> {
        let Some(mut open) = self.current.take() else {
            return Ok(());
        };
        let synced = open
            .out
            .flush()
            .and_then(|()| open.out.get_ref().sync_all());
        let staged = Staged {
            path: open.path.clone(),
            name: std::mem::take(&mut open.name),
            records: open.records,
            bytes: open.bytes,
        };
        // Registered as done before the error is returned, so that Drop removes it.
        self.done.push(staged);
        synced.map_err(|e| open.io(e))
    }

    /// Removes every staged file: the input places nothing, and from now on
    /// [`Staging::push`] is not to be called.
    pub(crate) fn discard(&mut self) {
        let mut list = staged();
        let open = self.current.take().map(|o| o.path);
        for path in self.done.drain(..).map(|s| s.path).chain(open) {
            let _ = fs::remove_file(&path);
            list.retain(|p| *p != path);
        }
    }

    /// Renames every staged file into incoming/, in order, then fsyncs incoming/.
    /// They get one mtime, so a batch takes them in name order, which is input
    /// order. A failed rename moves back those already renamed.
    pub(crate) fn commit(mut self) -> Result<Written> {
        self.close()?;
        let mut written = Written::default();
        // Held to the end: a signal now waits until every file is in incoming/.
        let mut list = staged();
        let when = SystemTime::now();
        // Before the first rename, the commit is written down, so that a crash in
        // the middle is finished by the next import rather than cut short.
        let marker = self.run.write_marker(&self.done, when)?;
        let mut placed: Vec<(PathBuf, PathBuf)> = Vec::new();
        for staged in &self.done {
            let target = self.run.incoming.join(&staged.name);
            let moved = set_mtime(&staged.path, when)
                .and_then(|()| rename_own_name(&staged.path, &target))
                .with_context(|| {
                    format!("cannot rename `{}` into incoming/", staged.path.display())
                });
            if let Err(e) = moved {
                let back = placed
                    .iter()
                    .filter(|(from, to)| rename_noreplace(to, from).is_err())
                    .count();
                let _ = fs::remove_file(&marker);
                let e = if back == 0 {
                    e.with_note("nothing of this input was left in incoming/")
                } else {
                    e.with_note(format!(
                        "{back} of its files could not be moved back and stay in incoming/"
                    ))
                };
                return Err(e);
            }
            list.retain(|p| *p != staged.path);
            crate::failpoint::hit("import-renamed");
            placed.push((staged.path.clone(), target));
            written.files += 1;
            written.records += staged.records;
            written.bytes += staged.bytes;
        }
        self.done.clear();
        fsync_dir(&self.run.incoming).map_err(|e| {
            e.with_note(format!(
                "all {} file(s) of this input were renamed into incoming/, but their renames may not survive a power cut",
                written.files
            ))
        })?;
        let _ = fs::remove_file(&marker);
        drop(list);
        Ok(written)
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        self.discard();
    }
}

/// A file of ours in tmp/ that did not exist (never one a symlink points to),
/// read-write, at FILE_MODE before the umask.
fn create_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Creates and locks a run's lock file. A spool the user may not write is a
/// matter of who runs the command, not a passing failure: it says so (78).
fn take_lock(path: &Path, spool: &Spool) -> Result<LockFile> {
    let file = create_new(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Error::config(format!(
                "cannot write to `{}` (SPOOL_DIR={}): {e}",
                spool.dir("tmp").display(),
                spool.root().display()
            ))
            .with_note(
                "run import as the owner of the spool (e.g. `sudo -u ragspool ragspool import ...`), or point SPOOL_DIR / --spool-dir at a spool you own",
            ));
        }
        Err(e) => {
            return Err(Error::from(e).context(format!("cannot create `{}`", path.display())));
        }
    };
    file.lock()
        .with_context(|| format!("cannot lock `{}`", path.display()))?;
    Ok(LockFile {
        file,
        path: path.to_path_buf(),
    })
}

/// Whether `name` is one this import writes (`import-<id>-<n>.msgpack`), so that
/// a marker's lines can never name a path elsewhere.
fn is_spool_name(name: &str) -> bool {
    name.starts_with("import-") && name.ends_with(".msgpack") && !name.contains('/')
}

/// A small file's text, never through a symlink nor from a FIFO (non-blocking open).
fn read_nofollow(path: &Path) -> std::io::Result<String> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Sets the mtime of the staged file at `path`.
fn set_mtime(path: &Path, when: SystemTime) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .and_then(|f| f.set_modified(when))
}

/// On SIGINT, SIGTERM or SIGHUP: removes every staged file of this process and
/// its run lock, then dies of the signal as if it were not handled. A commit in
/// progress finishes first (the list is held for it), so an input is placed in
/// incoming/ whole or not at all.
pub(crate) fn remove_on_signal() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| Error::temp(format!("cannot install signal handlers: {e}")))?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            // Never released: the process ends holding it.
            let list = staged();
            let files = list.iter().filter(|p| !is_lock(p)).count();
            for path in list.iter() {
                let _ = fs::remove_file(path);
            }
            eprintln!(
                "ragspool: interrupted: removed {files} staged file(s) from tmp/; the input being read placed nothing in incoming/"
            );
            let _ = signal_hook::low_level::emulate_default_handler(signal);
            // Not reached: the default action of these signals ends the process.
            std::process::exit(75);
        }
    });
    Ok(())
}

fn is_lock(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool() -> Result<(tempfile::TempDir, Spool)> {
        let dir = tempfile::tempdir()?;
        let spool = Spool::new(dir.path());
        for d in crate::spool::DIRS {
            crate::fs::make_dir(&spool.dir(d))?;
        }
        Ok((dir, spool))
    }

    fn names(dir: &Path) -> Result<Vec<String>> {
        let mut out: Vec<String> = fs::read_dir(dir)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        Ok(out)
    }

    #[test]
    fn a_commit_that_fails_midway_moves_back_what_it_placed() -> Result<()> {
        let (_dir, spool) = spool()?;
        let mut run = Run::start(&spool)?;
        let id = run.id.clone();
        let mut stage = run.stage(Limits {
            records: 1,
            bytes: 1 << 20,
        });
        for doc in [b"one", b"two"] {
            stage.begin_doc();
            stage.push(doc)?;
            stage.end_doc()?;
        }
        // The second file's name is taken in incoming/ meanwhile.
        let taken = format!("import-{id}-00000002.msgpack");
        fs::write(spool.dir("incoming").join(&taken), b"theirs")?;
        let err = stage
            .commit()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("nothing of this input was left in incoming/"),
            "{err}"
        );
        assert_eq!(names(&spool.dir("incoming"))?, [taken]);
        assert_eq!(names(&spool.dir("tmp"))?, [format!("import-{id}.lock")]);
        drop(run);
        assert!(names(&spool.dir("tmp"))?.is_empty());
        Ok(())
    }

    #[test]
    fn committed_files_share_one_mtime_and_sort_in_input_order() -> Result<()> {
        let (_dir, spool) = spool()?;
        let mut run = Run::start(&spool)?;
        let mut stage = run.stage(Limits {
            records: 1,
            bytes: 1 << 20,
        });
        for i in 0..12u8 {
            stage.begin_doc();
            stage.push(&[i])?;
            stage.end_doc()?;
        }
        let written = stage.commit()?;
        assert_eq!(
            (written.files, written.records, written.bytes),
            (12, 12, 12)
        );
        let placed = names(&spool.dir("incoming"))?;
        let mut mtimes = Vec::new();
        for (i, name) in placed.iter().enumerate() {
            let path = spool.dir("incoming").join(name);
            assert_eq!(fs::read(&path)?, [i as u8], "{name}");
            let meta = fs::metadata(&path)?;
            assert_eq!(meta.mode() & 0o777, FILE_MODE);
            mtimes.push(meta.modified()?);
        }
        mtimes.dedup();
        assert_eq!(mtimes.len(), 1);
        Ok(())
    }
}
