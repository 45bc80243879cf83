//! Logging: stderr at the chosen verbosity plus RAG_LOG_FILE, which SIGHUP (via
//! [`request_reopen`]) reopens so logrotate can move it away without copytruncate.

use crate::error::{Context, Result};
use log::LevelFilter;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, SharedLogger, TermLogger, TerminalMode, WriteLogger,
};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

static REOPEN: AtomicBool = AtomicBool::new(false);

/// Asks the log writer to reopen its file before the next line (safe from a signal handler).
pub(crate) fn request_reopen() {
    REOPEN.store(true, Ordering::SeqCst);
}

/// A log file that reopens itself by path when asked.
struct ReopeningFile {
    path: PathBuf,
    file: File,
}

impl Write for ReopeningFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if REOPEN.swap(false, Ordering::SeqCst) {
            // Keep the old handle if the new path cannot be opened: a log line lost
            // to a rotated file is better than none at all.
            if let Ok(file) = open_log(&self.path) {
                self.file = file;
            }
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn open_log(path: &Path) -> std::io::Result<File> {
    crate::fs::open_append(path, 0o640)
}

/// Stderr level for a verbosity: -1 quiet, 0 normal, 1 debug, 2+ trace.
fn level(verbosity: i8) -> LevelFilter {
    match verbosity {
        i8::MIN..=-1 => LevelFilter::Error,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Starts logging to stderr and, when `file` is given, to that file (its directory is created).
pub(crate) fn init(verbosity: i8, file: Option<&Path>) -> Result<()> {
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .build();
    let mut loggers: Vec<Box<dyn SharedLogger>> = vec![TermLogger::new(
        level(verbosity),
        config.clone(),
        TerminalMode::Stderr,
        ColorChoice::Never,
    )];
    if let Some(path) = file {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .with_context(|| {
                    format!(
                        "cannot create log directory `{}` (RAG_LOG_FILE)",
                        dir.display()
                    )
                })?;
        }
        let opened = open_log(path)
            .with_context(|| format!("cannot open log file `{}` (RAG_LOG_FILE)", path.display()))?;
        let writer = ReopeningFile {
            path: path.to_path_buf(),
            file: opened,
        };
        loggers.push(WriteLogger::new(
            level(verbosity).max(LevelFilter::Info),
            config,
            writer,
        ));
    }
    // A second init (tests calling the entry twice) keeps the first logger.
    let _ = CombinedLogger::init(loggers);
    Ok(())
}
