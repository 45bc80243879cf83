//! Numbers that only grow, across processes, restarts and clock steps: the clock's
//! reading, or one past the last handed out when the clock is behind it, kept in a
//! file under an exclusive lock. Claim order (processing/.seq) and outbox order
//! (outbox/.seq) come from here, never from the wall clock alone.

use crate::error::{Context, Result};
use crate::fs::LockFile;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// A locked sequence file; the lock goes with it.
pub(crate) struct SeqFile(LockFile);

impl SeqFile {
    /// Opens (creating) and locks the sequence file at `path`; blocks while another
    /// process holds it, which is never for long.
    pub(crate) fn lock(path: &Path) -> Result<SeqFile> {
        LockFile::acquire(path, 0o640).map(SeqFile)
    }

    /// Hands out `n` numbers and returns the first: `now`, or one past the last
    /// handed out when `now` is not beyond it.
    pub(crate) fn take(&mut self, n: usize, now: i64) -> Result<i64> {
        let LockFile { file, path } = &mut self.0;
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let last: i64 = text.trim().parse().unwrap_or(0);
        let base = now.max(last.saturating_add(1));
        let end = base + n.max(1) as i64 - 1;
        // Overwritten in place at a fixed width, never truncated first: a kill
        // between a truncate and the write would leave an empty file read as 0,
        // and the next number would come from the clock, the case this file is
        // for. One write of 21 bytes lands whole or not at all.
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(format!("{end:020}\n").as_bytes()))
            .and_then(|()| file.sync_data())
            .with_context(|| format!("cannot write `{}`", path.display()))?;
        Ok(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_grow_when_the_clock_steps_back() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(".seq");
        let a = SeqFile::lock(&path)?.take(3, 1000)?;
        assert_eq!(a, 1000);
        // The clock went back: the next number still follows the last one.
        let b = SeqFile::lock(&path)?.take(1, 10)?;
        assert_eq!(b, 1003);
        let c = SeqFile::lock(&path)?.take(1, 5000)?;
        assert_eq!(c, 5000);
        Ok(())
    }

    #[test]
    fn the_file_is_never_empty_and_older_short_records_still_read() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(".seq");
        // A record written before the fixed width, shorter than it.
        std::fs::write(&path, "1234\n")?;
        assert_eq!(SeqFile::lock(&path)?.take(1, 10)?, 1235);
        let text = std::fs::read_to_string(&path)?;
        assert_eq!(text, "00000000000000001235\n");
        assert_eq!(SeqFile::lock(&path)?.take(2, 10)?, 1236);
        assert_eq!(
            std::fs::read_to_string(&path)?.trim().parse::<i64>().ok(),
            Some(1237)
        );
        Ok(())
    }
}
