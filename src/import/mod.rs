//! JSON Lines into spool files (SPEC §14). Each line's record goes through
//! `process`'s own decoder and file rules ([`crate::ingest::verify::FileCheck`],
//! document by document), so what `import` places in incoming/ is what `process`
//! takes. An input with any bad line places nothing: its files are staged in tmp/
//! and renamed into incoming/ only once the whole input has been read and found
//! good. A document's records stay in one spool file, which needs them
//! contiguous in the input. Memory holds one line (at most MAX_FILE_BYTES) with
//! its JSON and MessagePack forms, one document's chunk indexes, and a 128-bit
//! fingerprint with two line numbers per document seen in the input.

mod jsonl;
mod stage;

use crate::error::Result;
use crate::ingest::verify::{FileCheck, Rules};
use crate::progress::Progress;
use crate::record::Decoder;
use crate::spool::Spool;
use jsonl::{Line, Lines};
pub(crate) use stage::{Limits, Written, remove_on_signal};
use stage::{Run, Staging};
use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{BufReader, Read};
use std::path::PathBuf;

/// The most errors reported for one input; reading it stops there.
pub(crate) const MAX_ERRORS: usize = 100;

/// Buffers above this are given back after the line that grew them.
const KEEP_BUFFER: usize = 16 << 20;

/// Where an input's lines come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// `-`.
    Stdin,
    /// A file named on the command line.
    Path(PathBuf),
}

impl Source {
    /// The source an argument names.
    pub(crate) fn of(arg: &str) -> Source {
        if arg == "-" {
            Source::Stdin
        } else {
            Source::Path(PathBuf::from(arg))
        }
    }

    /// Its name in messages: the path as given, or `<stdin>`.
    pub(crate) fn name(&self) -> String {
        match self {
            Source::Stdin => "<stdin>".to_string(),
            Source::Path(p) => p.display().to_string(),
        }
    }

    /// Its size when it is a regular file (for the progress line).
    pub(crate) fn size(&self) -> Option<u64> {
        match self {
            Source::Stdin => None,
            Source::Path(p) => std::fs::metadata(p)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len()),
        }
    }
}

/// How one input went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct InputReport {
    /// The input's name.
    pub(crate) name: String,
    /// What it placed in incoming/; `None` when it placed nothing.
    pub(crate) written: Option<Written>,
    /// `FILE:LINE: what is wrong`, at most [`MAX_ERRORS`].
    pub(crate) errors: Vec<String>,
    /// Reading stopped at this line, at the error limit.
    pub(crate) stopped_at: Option<u64>,
}

/// One `ragspool import`: inputs are imported one after the other.
pub(crate) struct Importer {
    run: Run,
    rules: Rules,
    limits: Limits,
    progress: Progress,
    /// Bytes read by earlier inputs, for the progress line.
    read_before: u64,
}

impl Importer {
    /// Starts an import into `spool` (its tree must exist); `total` is the size of
    /// the inputs when known, for the progress line.
    pub(crate) fn start(
        spool: &Spool,
        rules: Rules,
        limits: Limits,
        total: Option<u64>,
    ) -> Result<Importer> {
        spool.require()?;
        Ok(Importer {
            run: Run::start(spool)?,
            rules,
            limits,
            progress: Progress::bytes("import", total),
            read_before: 0,
        })
    }

    /// The progress line, for output that must not tear it.
    pub(crate) fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The longest line read: the largest record `process` accepts, and within
    /// what a MessagePack string length can say.
    fn cap(&self) -> u64 {
        self.rules.max_file_bytes.min(u64::from(u32::MAX))
    }

    /// Imports one input: its spool files are all in incoming/, or none is.
    /// `Err` when the spool fails (a full disk): nothing of this input stays.
    pub(crate) fn import(&mut self, source: &Source) -> Result<InputReport> {
        let name = source.name();
        self.read(source, &name)
            .map_err(|e| e.context(format!("importing `{name}`")))
    }

    fn read(&mut self, source: &Source, name: &str) -> Result<InputReport> {
        let file = match source {
            Source::Stdin => None,
            // An input is the operator's own file, named on the command line: it
            // is opened as `cat` would open it, symlinks followed.
            Source::Path(p) => match File::open(p) {
                Ok(f) => Some(f),
                Err(e) => {
                    return Ok(InputReport {
                        errors: vec![format!("{name}: cannot open: {e}")],
                        name: name.to_string(),
                        ..InputReport::default()
                    });
                }
            },
        };
        let size_at_open = regular_size(file.as_ref());
        let reader: Box<dyn Read + '_> = match &file {
            Some(f) => Box::new(f),
            None => Box::new(std::io::stdin()),
        };
        let mut lines = Lines::new(BufReader::with_capacity(1 << 20, reader), self.cap());
        let (progress, read_before) = (self.progress.clone(), self.read_before);
        progress.message(|| name.to_string());
        let mut input = Input::new(name, self.rules, self.run.stage(self.limits));
        let whole = input.read(&mut lines, |number, consumed| {
            if number % 1024 == 0 {
                progress.message(|| format!("{name}: line {number}"));
            }
            progress.set_position(read_before + consumed);
        })?;
        self.read_before += lines.consumed();
        if whole {
            input.end_doc()?;
            if let Some(why) = changed(file.as_ref(), size_at_open, lines.consumed()) {
                input.error(None, why);
            }
        }
        input.finish()
    }
}

/// The size of `file` when it is a regular file.
fn regular_size(file: Option<&File>) -> Option<u64> {
    file.and_then(|f| f.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// Why a regular file read to its end is not the file that was opened: it grew
/// or shrank meanwhile (a producer still writing it, a truncation), so what was
/// read may be a cut of it.
fn changed(file: Option<&File>, at_open: Option<u64>, read: u64) -> Option<String> {
    let at_open = at_open?;
    let now = regular_size(file).unwrap_or(0);
    (at_open != read || now != read).then(|| {
        format!(
            "changed while being read ({at_open} bytes when opened, {read} read, {now} now); import it again once it is complete"
        )
    })
}

/// The document being read.
struct Doc {
    id: String,
    first: u64,
    last: u64,
    check: FileCheck,
    /// Its bytes as MessagePack.
    bytes: u64,
    too_big: bool,
    /// One of its records is bad: the whole-document rule would only repeat it.
    tainted: bool,
    /// The first and last lines of its rows (not its delete records) so far.
    rows: Option<(u64, u64)>,
}

/// One input being read: its errors, its documents, its staged files.
struct Input<'r> {
    name: String,
    rules: Rules,
    report: InputReport,
    errors: usize,
    /// The first [`MAX_ERRORS`] errors: (line, or u64::MAX for the whole input; why).
    found: Vec<(u64, String)>,
    doc: Option<Doc>,
    /// Documents already ended: a 128-bit fingerprint of the doc_id (two keyed
    /// hashes, keys random per process) → its first and last line.
    seen: HashMap<u128, (u64, u64)>,
    keys: (RandomState, RandomState),
    stage: Staging<'r>,
}

impl<'r> Input<'r> {
    fn new(name: &str, rules: Rules, stage: Staging<'r>) -> Input<'r> {
        Input {
            name: name.to_string(),
            rules,
            report: InputReport {
                name: name.to_string(),
                ..InputReport::default()
            },
            errors: 0,
            found: Vec::new(),
            doc: None,
            seen: HashMap::new(),
            keys: (RandomState::new(), RandomState::new()),
            stage,
        }
    }

    /// Records an error at `line` (or of the whole input); the first one
    /// discards what was staged, since the input will place nothing.
    fn error(&mut self, line: Option<u64>, why: String) {
        if self.errors == 0 {
            self.stage.discard();
        }
        self.errors += 1;
        if self.found.len() < MAX_ERRORS {
            self.found.push((line.unwrap_or(u64::MAX), why));
        }
    }

    fn errors_full(&self) -> bool {
        self.errors >= MAX_ERRORS
    }

    fn fingerprint(&self, doc_id: &str) -> u128 {
        let (a, b) = &self.keys;
        (u128::from(a.hash_one(doc_id)) << 64) | u128::from(b.hash_one(doc_id))
    }

    /// Reads every line of `lines`, calling `step` with each line's number and
    /// the bytes read so far; false when reading stopped before the end (a read
    /// error, or the error limit).
    fn read<R: std::io::BufRead>(
        &mut self,
        lines: &mut Lines<R>,
        mut step: impl FnMut(u64, u64),
    ) -> Result<bool> {
        let (mut buf, mut enc) = (Vec::new(), Vec::new());
        loop {
            let line = match lines.next(&mut buf) {
                Ok(line) => line,
                Err(e) => {
                    let why = format!("cannot read after line {}: {e}", lines.number());
                    self.error(None, why);
                    return Ok(false);
                }
            };
            let number = match line {
                Line::End => return Ok(true),
                Line::TooLong(n) => {
                    self.error(Some(n), format!(
                        "the line is longer than {} bytes, the most one record may take (MAX_FILE_BYTES); skipped unread",
                        lines.cap()
                    ));
                    n
                }
                Line::Text(n) => {
                    self.line(n, &buf, &mut enc)?;
                    n
                }
            };
            step(number, lines.consumed());
            if self.errors_full() {
                self.report.stopped_at = Some(number);
                return Ok(false);
            }
            // A long line's buffers are not kept for the short ones after it.
            for b in [&mut buf, &mut enc] {
                if b.capacity() > KEEP_BUFFER {
                    *b = Vec::new();
                }
            }
        }
    }

    /// One line: a record, checked and staged; a blank line is skipped.
    fn line(&mut self, number: u64, text: &[u8], enc: &mut Vec<u8>) -> Result<()> {
        let text = match number {
            // A byte-order mark some editors put first is not part of the JSON.
            1 => text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text),
            _ => text,
        };
        if text.trim_ascii().is_empty() {
            return Ok(());
        }
        if let Err(why) = jsonl::to_msgpack(text, enc) {
            self.error(Some(number), why);
            return Ok(());
        }
        let record = match Decoder::new(enc, self.rules.embed_dim).next() {
            Some(Ok(record)) => record,
            Some(Err(e)) => {
                self.error(Some(number), e.message);
                // A bad record still counts for the contiguity of its document.
                if let Some(id) = jsonl::doc_id(text) {
                    self.enter_doc(&id, number)?;
                    if let Some(doc) = self.doc.as_mut() {
                        doc.tainted = true;
                    }
                }
                return Ok(());
            }
            None => return Ok(()),
        };
        self.enter_doc(record.doc_id, number)?;
        let max_file_bytes = self.rules.max_file_bytes;
        let Some(doc) = self.doc.as_mut() else {
            return Ok(());
        };
        if let Err(bad) = doc.check.record(0, &record) {
            doc.tainted = true;
            self.error(Some(number), bad.error);
            return Ok(());
        }
        match (record.delete, doc.rows) {
            // A file's removals apply to the rows of earlier files only, never to
            // its own: a delete after rows in one file would leave those rows.
            (true, Some((first, last))) => {
                let id = doc.id.clone();
                self.error(Some(number), format!(
                    "deletes document `{id}` after its rows on lines {first}-{last}, which one spool file cannot do (a file's delete removes earlier files' rows, not its own): drop those lines, or put the delete before them to replace the document"
                ));
                return Ok(());
            }
            (false, rows) => doc.rows = Some((rows.map_or(number, |(f, _)| f), number)),
            (true, None) => {}
        }
        doc.bytes += enc.len() as u64;
        if doc.bytes > max_file_bytes && !doc.too_big {
            doc.too_big = true;
            let (id, first) = (doc.id.clone(), doc.first);
            self.error(Some(first), format!(
                "document `{id}` takes more than MAX_FILE_BYTES ({max_file_bytes}) bytes as MessagePack by line {number}; process would refuse the spool file that holds it whole"
            ));
        }
        if self.errors == 0 {
            self.stage.push(enc)?;
        }
        Ok(())
    }

    /// Line `number` holds a record of document `id`: a new document starts
    /// when it is not the one being read.
    fn enter_doc(&mut self, id: &str, number: u64) -> Result<()> {
        if self.doc.as_ref().is_none_or(|d| d.id != id) {
            self.end_doc()?;
            self.begin_doc(id, number);
        }
        if let Some(doc) = self.doc.as_mut() {
            doc.last = number;
        }
        Ok(())
    }

    fn begin_doc(&mut self, id: &str, number: u64) {
        if let Some((first, last)) = self.seen.get(&self.fingerprint(id)).copied() {
            self.error(Some(number), format!(
                "document `{id}` comes back after other documents (it is on lines {first}-{last} already); the records of one document must be contiguous, so that it lands whole in one spool file"
            ));
        }
        self.doc = Some(Doc {
            id: id.to_string(),
            first: number,
            last: number,
            check: FileCheck::new(self.rules.needs_direction),
            bytes: 0,
            too_big: false,
            tainted: false,
            rows: None,
        });
        self.stage.begin_doc();
    }

    /// The document being read ended: the whole-document rule, and its lines
    /// remembered so that its return is caught.
    fn end_doc(&mut self) -> Result<()> {
        let Some(doc) = self.doc.take() else {
            return Ok(());
        };
        if let (false, Err(bad)) = (doc.tainted, doc.check.finish()) {
            let why = format!("{} (lines {}-{})", bad.error, doc.first, doc.last);
            self.error(Some(doc.first), why);
        }
        let key = self.fingerprint(&doc.id);
        self.seen.entry(key).or_insert((doc.first, doc.last));
        if self.errors == 0 {
            self.stage.end_doc()?;
        }
        Ok(())
    }

    /// Commits the input's staged files when it had no error.
    fn finish(mut self) -> Result<InputReport> {
        let mut report = std::mem::take(&mut self.report);
        // In line order: a document's errors are found when it ends, after
        // those of its later lines.
        self.found.sort_by_key(|(line, _)| *line);
        report.errors = self
            .found
            .iter()
            .map(|(line, why)| match *line {
                u64::MAX => format!("{}: {why}", self.name),
                n => format!("{}:{n}: {why}", self.name),
            })
            .collect();
        if self.errors == 0 {
            report.written = Some(self.stage.commit()?);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    struct World {
        _dir: tempfile::TempDir,
        spool: Spool,
        input: PathBuf,
    }

    fn world() -> Result<World> {
        let dir = tempfile::tempdir()?;
        let spool = Spool::new(dir.path().join("spool"));
        for d in crate::spool::DIRS {
            crate::fs::make_dir(&spool.dir(d))?;
        }
        let input = dir.path().join("in.jsonl");
        Ok(World {
            _dir: dir,
            spool,
            input,
        })
    }

    fn rules() -> Rules {
        Rules {
            embed_dim: None,
            max_file_bytes: 1 << 20,
            needs_direction: false,
        }
    }

    /// JSON Lines of documents `(doc_id, chunks)`, in order.
    fn jsonl(docs: &[(&str, u32)]) -> String {
        docs.iter()
            .flat_map(|(doc, n)| {
                (0..*n).map(move |i| {
                    format!("{{\"doc_id\":\"{doc}\",\"chunk_index\":{i},\"content\":\"c\",\"chunk_count\":{n}}}\n")
                })
            })
            .collect()
    }

    /// The doc_ids of each spool file in incoming/, in name order.
    fn placed(spool: &Spool) -> Result<Vec<Vec<String>>> {
        let mut names: Vec<_> = std::fs::read_dir(spool.dir("incoming"))?
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for path in names {
            let bytes = std::fs::read(&path)?;
            let ids = Decoder::new(&bytes, None)
                .map(|r| r.map(|r| r.doc_id.to_string()))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::failed(e.to_string()))?;
            out.push(ids);
        }
        Ok(out)
    }

    fn import(w: &World, limits: Limits, text: &str) -> Result<InputReport> {
        std::fs::write(&w.input, text)?;
        let mut importer = Importer::start(&w.spool, rules(), limits, None)?;
        importer.import(&Source::Path(w.input.clone()))
    }

    #[test]
    fn documents_stay_whole_and_files_keep_their_limits() -> Result<()> {
        let w = world()?;
        let limits = Limits {
            records: 3,
            bytes: 1 << 20,
        };
        let report = import(
            &w,
            limits,
            &jsonl(&[("a", 2), ("b", 2), ("c", 5), ("d", 1)]),
        )?;
        assert_eq!(report.errors, Vec::<String>::new());
        let files = placed(&w.spool)?;
        let docs: Vec<String> = files.iter().map(|f| f.concat()).collect();
        assert_eq!(docs, ["aa", "bb", "ccccc", "d"]);
        assert_eq!(report.written.map(|w| (w.files, w.records)), Some((4, 10)));
        assert_eq!(std::fs::read_dir(w.spool.dir("tmp"))?.count(), 0);
        Ok(())
    }

    #[test]
    fn a_byte_limit_moves_a_document_to_the_next_file() -> Result<()> {
        let w = world()?;
        let one = jsonl(&[("x", 1)]);
        let mut record = Vec::new();
        jsonl::to_msgpack(one.trim_end().as_bytes(), &mut record).map_err(Error::failed)?;
        // Room for three records of this size, not four.
        let limits = Limits {
            records: 100,
            bytes: record.len() as u64 * 7 / 2,
        };
        import(&w, limits, &jsonl(&[("x", 2), ("y", 2), ("z", 1)]))?;
        let docs: Vec<String> = placed(&w.spool)?.iter().map(|f| f.concat()).collect();
        assert_eq!(docs, ["xx", "yyz"]);
        Ok(())
    }

    #[test]
    fn a_bad_line_places_nothing_and_all_errors_are_named() -> Result<()> {
        let w = world()?;
        let limits = Limits {
            records: 1,
            bytes: 1 << 20,
        };
        let mut text = jsonl(&[("a", 2), ("b", 1)]);
        text.push_str("{\"doc_id\":\"a\",\"chunk_index\":5,\"content\":\"c\"}\n");
        text.push_str("{\"doc_id\":\"c\",\"chunk_index\":-1,\"content\":\"c\"}\n");
        let report = import(&w, limits, &text)?;
        assert_eq!(report.written, None);
        let want = [
            "comes back after other documents (it is on lines 1-2 already)",
            "chunk_index must be an unsigned integer below 2^31",
        ];
        assert_eq!(report.errors.len(), 2, "{:?}", report.errors);
        for (got, want) in report.errors.iter().zip(want) {
            assert!(got.contains(want), "{got}");
        }
        assert!(report.errors[0].starts_with(&format!("{}:4: ", w.input.display())));
        assert!(placed(&w.spool)?.is_empty());
        assert_eq!(std::fs::read_dir(w.spool.dir("tmp"))?.count(), 0);
        Ok(())
    }

    #[test]
    fn errors_stop_reading_at_the_limit() -> Result<()> {
        let w = world()?;
        let limits = Limits {
            records: 10,
            bytes: 1 << 20,
        };
        let report = import(&w, limits, &"x\n".repeat(500))?;
        assert_eq!(report.errors.len(), MAX_ERRORS);
        assert_eq!(report.stopped_at, Some(MAX_ERRORS as u64));
        Ok(())
    }
}
