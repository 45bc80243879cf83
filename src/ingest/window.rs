//! A claimed file's bytes, read through one buffer that each worker keeps from
//! file to file: a file up to [`WINDOW`] bytes is read whole, once, and every
//! pass over it (hash, embeddings, COPY, self-heal) decodes that copy; a larger
//! file is read again for each pass in windows of whole records, so that a
//! worker holds at most [`WINDOW`] bytes of it (or its largest record, when that
//! is bigger) whatever its size up to MAX_FILE_BYTES.

use crate::error::{Error, Result};
use crate::record::{Decoder, Resume};
use crate::spool::{self, Unreadable};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Files up to this size are held whole; larger ones are read in windows this size.
pub(crate) const WINDOW: usize = 16 << 20;

/// The window of a thread that reads a file only for its texts while other files
/// COPY (the embeddings prefetch): small, since several such threads run at once.
pub(crate) const PREFETCH_WINDOW: usize = 256 << 10;

thread_local! {
    /// The worker's buffer: reused, so a file costs no allocation or page faults.
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One claimed file, open, held whole in the worker's buffer or read in windows.
pub(crate) struct FileBytes<'b> {
    file: File,
    len: u64,
    whole: bool,
    window: usize,
    buf: &'b mut Vec<u8>,
    path: PathBuf,
}

/// Opens the claimed file at `path` (refusing what [`spool::open_claimed`] refuses)
/// and runs `f` on it with this thread's buffer.
pub(crate) fn with_file<T>(
    path: &Path,
    max_bytes: u64,
    f: impl FnOnce(std::result::Result<FileBytes<'_>, Unreadable>) -> T,
) -> T {
    with_file_in(path, max_bytes, WINDOW, f)
}

/// [`with_file`] with windows of `window` bytes.
pub(crate) fn with_file_in<T>(
    path: &Path,
    max_bytes: u64,
    window: usize,
    f: impl FnOnce(std::result::Result<FileBytes<'_>, Unreadable>) -> T,
) -> T {
    BUFFER.with(|cell| {
        let mut buf = cell.borrow_mut();
        let out = f(open(path, max_bytes, window, &mut buf));
        // One file with a giant record must not keep its buffer for ever.
        if buf.capacity() > 2 * window {
            *buf = Vec::new();
        }
        out
    })
}

fn open<'b>(
    path: &Path,
    max_bytes: u64,
    window: usize,
    buf: &'b mut Vec<u8>,
) -> std::result::Result<FileBytes<'b>, Unreadable> {
    let (file, len) = spool::open_claimed(path, max_bytes)?;
    let mut bytes = FileBytes {
        file,
        len,
        whole: len <= window as u64,
        window,
        buf,
        path: path.to_path_buf(),
    };
    if bytes.whole {
        bytes.buf.clear();
        // The file's size at once: grown by doubling, the buffer would end up to
        // twice the file (and be kept at that from file to file).
        bytes.buf.reserve_exact((len as usize).saturating_add(1));
        // One byte past the limit, so that a file that grew after fstat is caught.
        (&bytes.file)
            .take(max_bytes + 1)
            .read_to_end(bytes.buf)
            .map_err(|e| Unreadable::Io(bytes.io(e)))?;
        if bytes.buf.len() as u64 > max_bytes {
            return Err(Unreadable::Bad(format!(
                "grew past MAX_FILE_BYTES ({max_bytes}) while being read"
            )));
        }
        bytes.len = bytes.buf.len() as u64;
    }
    Ok(bytes)
}

impl FileBytes<'_> {
    /// Its size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::from(e).context(format!("cannot read `{}`", self.path.display()))
    }

    /// Fills `buf[from..]` from file offset `at`; returns the bytes now in it,
    /// fewer than its length only at the end of the file.
    fn fill(&mut self, from: usize, at: u64) -> Result<usize> {
        let mut filled = from;
        while filled < self.buf.len() {
            let n = self
                .file
                .read_at(&mut self.buf[filled..], at + (filled - from) as u64)
                .map_err(|e| self.io(e))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Ok(filled)
    }

    /// Its first `n` bytes (fewer when it is shorter).
    pub(crate) fn head(&self, n: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; n.min(self.len as usize)];
        self.file
            .read_exact_at(&mut out, 0)
            .map_err(|e| self.io(e))?;
        Ok(out)
    }

    /// The SHA-256 of its content, in hex.
    pub(crate) fn sha256_hex(&mut self) -> Result<String> {
        if self.whole {
            return Ok(crate::digest::sha256_hex(self.buf));
        }
        self.buf.resize(self.window, 0);
        let mut hasher = Sha256::new();
        let mut at = 0u64;
        loop {
            let n = self.fill(0, at)?;
            hasher.update(&self.buf[..n]);
            at += n as u64;
            if n < self.buf.len() {
                break;
            }
        }
        self.len = at;
        Ok(crate::digest::hex(&hasher.finalize()))
    }

    /// Runs `each` on a decoder over the records, once for a whole file, once per
    /// window for a large one. `each` is to run the decoder to its end; records
    /// borrow the window and must not outlive the call.
    pub(crate) fn records<E: From<Error>>(
        &mut self,
        embed_dim: Option<usize>,
        mut each: impl FnMut(&mut Decoder<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        if self.whole {
            return each(&mut Decoder::new(&self.buf[..], embed_dim));
        }
        self.buf.resize(self.window, 0);
        let mut at = Resume::default();
        let mut kept = 0;
        loop {
            let filled = self.fill(kept, at.offset + kept as u64)?;
            // A file cut short since it was opened ends here; its last record is
            // then reported truncated.
            let after = if filled < self.buf.len() {
                0
            } else {
                self.len.saturating_sub(at.offset + filled as u64)
            };
            let mut decoder = Decoder::resume(&self.buf[..filled], embed_dim, at, after);
            each(&mut decoder)?;
            let Some(next) = decoder.stalled() else {
                return Ok(());
            };
            let used = (next.offset - at.offset) as usize;
            if used == 0 {
                // A record larger than the window: the window grows to hold it.
                let grown = self.buf.len() * 2;
                self.buf.resize(grown, 0);
            }
            self.buf.copy_within(used..filled, 0);
            kept = filled - used;
            at = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    /// `n` records as one top-level array, each with `pad` bytes of content.
    fn file(n: usize, pad: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = rmp::encode::write_array_len(&mut out, n as u32);
        for i in 0..n {
            let _ = rmp::encode::write_map_len(&mut out, 3);
            let _ = rmp::encode::write_str(&mut out, "doc_id");
            let _ = rmp::encode::write_str(&mut out, &format!("d{i}"));
            let _ = rmp::encode::write_str(&mut out, "chunk_index");
            let _ = rmp::encode::write_uint(&mut out, i as u64);
            let _ = rmp::encode::write_str(&mut out, "content");
            let _ = rmp::encode::write_str(&mut out, &"x".repeat(pad + i % 7));
        }
        out
    }

    fn ids(bytes: &mut FileBytes<'_>) -> Result<Vec<(u64, String)>> {
        let mut seen = Vec::new();
        bytes.records(None, |d| {
            while let Some(r) = d.next_indexed() {
                let (i, r): (u64, Record<'_>) = r.map_err(|e| Error::failed(e.to_string()))?;
                seen.push((i, r.doc_id.to_string()));
            }
            Ok::<(), Error>(())
        })?;
        Ok(seen)
    }

    #[test]
    fn large_files_decode_in_windows_as_they_would_whole() -> Result<()> {
        let dir = tempfile::tempdir()?;
        // Records of 1 KiB and one of twice the window, across several windows.
        let mut data = file(40_000, 1000);
        let whole: Vec<(u64, String)> = {
            let mut d = Decoder::new(&data, None);
            std::iter::from_fn(|| d.next_indexed())
                .map(|r| r.map(|(i, r)| (i, r.doc_id.to_string())))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::failed(e.to_string()))?
        };
        let path = dir.path().join("big.msgpack");
        std::fs::write(&path, &data)?;
        let got = with_file(&path, u64::MAX, |b| -> Result<_> {
            let mut b = b.map_err(|_| Error::failed("unreadable"))?;
            assert!(!b.whole);
            let sha = b.sha256_hex()?;
            Ok((sha, ids(&mut b)?))
        })?;
        assert_eq!(got.0, crate::digest::sha256_hex(&data));
        assert_eq!(got.1, whole);

        data = file(3, 2 * WINDOW);
        std::fs::write(&path, &data)?;
        let got = with_file(&path, u64::MAX, |b| -> Result<_> {
            ids(&mut b.map_err(|_| Error::failed("unreadable"))?)
        })?;
        assert_eq!(got.len(), 3);
        BUFFER.with(|b| assert!(b.borrow().capacity() <= 2 * WINDOW));
        Ok(())
    }

    #[test]
    fn a_truncated_large_file_reports_its_last_record_with_the_file_offset() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let data = file(40_000, 1000);
        let cut = &data[..data.len() - 10];
        let path = dir.path().join("cut.msgpack");
        std::fs::write(&path, cut)?;
        let err = with_file(&path, u64::MAX, |b| -> Result<_> {
            ids(&mut b.map_err(|_| Error::failed("unreadable"))?)
        });
        let want = Decoder::new(cut, None)
            .find_map(|r| r.err())
            .map(|e| e.to_string());
        assert_eq!(err.err().map(|e| e.to_string()), want);
        Ok(())
    }
}
