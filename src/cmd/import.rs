//! `ragspool import`: JSON Lines into spool files in incoming/ (SPEC §14).

use crate::cli::Args;
use crate::config::Config;
use crate::error::{Error, Outcome, Result};
use crate::import::{Importer, InputReport, Limits, Source, Written};
use crate::ingest::verify::Rules;
use crate::spool::Spool;

/// Records in one spool file unless `--max-records` says otherwise.
const DEFAULT_RECORDS: u64 = 2000;
/// Bytes in one spool file unless `--max-bytes` says otherwise.
const DEFAULT_BYTES: u64 = 64 << 20;

pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let limits = limits(config, args)?;
    let sources: Vec<Source> = args.positionals.iter().map(|a| Source::of(a)).collect();
    if sources.iter().filter(|s| **s == Source::Stdin).count() > 1 {
        return Err(Error::usage("`-` (standard input) is given more than once"));
    }
    let total = sources.iter().map(Source::size).sum::<Option<u64>>();
    let spool = Spool::new(&config.spool_dir);
    crate::import::remove_on_signal()?;
    let mut importer = Importer::start(&spool, Rules::of(config), limits, total)?;
    let mut sum = Written::default();
    let mut refused = 0;
    for (done, source) in sources.iter().enumerate() {
        let report = importer.import(source).map_err(|e| {
            e.or_note(format!(
                "nothing of this input reached incoming/; the {done} input(s) reported before it stay imported"
            ))
        })?;
        // Lines of their own, with the progress line out of their way.
        importer.progress().suspend(|| -> Result<()> {
            for line in &report.errors {
                eprintln!("{line}");
            }
            super::emit(&input_line(&report))
        })?;
        match report.written {
            Some(w) => {
                sum.files += w.files;
                sum.records += w.records;
                sum.bytes += w.bytes;
            }
            None => refused += 1,
        }
    }
    importer.progress().finish();
    super::emit(&format!(
        "imported {} spool file(s), {} record(s), {} bytes into {}; {refused} of {} input(s) refused\n",
        sum.files,
        sum.records,
        sum.bytes,
        spool.dir("incoming").display(),
        sources.len()
    ))?;
    Ok(Outcome::failed_if(refused > 0))
}

/// `--max-records` and `--max-bytes`, checked: a file past MAX_FILE_BYTES would
/// fail in `process`.
fn limits(config: &Config, args: &Args) -> Result<Limits> {
    let records = args.parse_or("max-records", DEFAULT_RECORDS, "a whole number from 1")?;
    let max = config.max_file_bytes;
    let bytes = args.parse_or(
        "max-bytes",
        DEFAULT_BYTES.min(max),
        "a whole number of bytes",
    )?;
    if records == 0 {
        return Err(Error::usage("`--max-records` must be at least 1, got `0`"));
    }
    if bytes == 0 || bytes > max {
        return Err(Error::usage(format!(
            "`--max-bytes` must be from 1 to MAX_FILE_BYTES ({max}), got `{bytes}`"
        ))
        .with_note("process fails a spool file larger than MAX_FILE_BYTES"));
    }
    Ok(Limits { records, bytes })
}

/// One input's line of the report.
fn input_line(report: &InputReport) -> String {
    match (&report.written, report.stopped_at) {
        (Some(w), _) => format!(
            "imported {}: {} spool file(s), {} record(s), {} bytes\n",
            report.name, w.files, w.records, w.bytes
        ),
        (None, Some(line)) => format!(
            "refused {}: reading stopped at line {line} after {} errors; nothing placed in incoming/\n",
            report.name,
            report.errors.len()
        ),
        (None, None) => format!(
            "refused {}: {} error(s); nothing placed in incoming/\n",
            report.name,
            report.errors.len()
        ),
    }
}
