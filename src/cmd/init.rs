//! `ragspool init`: the spool tree, log directory and failure log, with safe modes.

use crate::cli::Args;
use crate::config::Config;
use crate::error::{Context, Error, Outcome, Result};
use crate::privdrop::{self, Owner};
use crate::spool::{DIRS, Spool};
use std::path::{Path, PathBuf};

pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let owner = match args.value("owner") {
        Some(spec) => {
            if privdrop::euid() != 0 {
                return Err(Error::usage("`--owner` needs root")
                    .with_note("run init with sudo, or drop --owner"));
            }
            Some(privdrop::resolve(spec)?)
        }
        None => None,
    };
    let uid = owner.map_or_else(privdrop::euid, |o| o.uid);
    let spool = Spool::new(&config.spool_dir);
    let mut report: Vec<Line> = Vec::new();
    // The spool tree is ragspool's own: owned by it, closed to others.
    let mut spool_dirs: Vec<PathBuf> = vec![spool.root().to_path_buf()];
    spool_dirs.extend(DIRS.iter().map(|d| spool.dir(d)));
    for dir in &spool_dirs {
        ensure(
            dir,
            0o027,
            Some(uid),
            owner,
            &mut report,
            crate::fs::make_dir,
        )
        .map_err(|e| denied(e, config, "SPOOL_DIR"))?;
    }
    // Log directories may be shared ones like /var/log: only world-writable is unsafe.
    let mut log_dirs: Vec<&Path> = Vec::new();
    for file in [
        config.log_file.as_deref(),
        Some(config.failure_log.as_path()),
    ] {
        if let Some(dir) = file
            .and_then(Path::parent)
            .filter(|d| !d.as_os_str().is_empty())
            && !log_dirs.contains(&dir)
        {
            log_dirs.push(dir);
        }
    }
    for dir in log_dirs {
        let setting = if config.log_file.as_deref().and_then(Path::parent) == Some(dir) {
            "RAG_LOG_FILE"
        } else {
            "FAILURE_LOG"
        };
        ensure(dir, 0o002, None, owner, &mut report, crate::fs::make_dir)
            .map_err(|e| denied(e, config, setting))?;
    }
    // The log file belongs to the service user, who writes it after a privilege drop.
    if let Some(file) = config.log_file.as_deref() {
        ensure(file, 0o002, Some(uid), owner, &mut report, create_log_file)
            .map_err(|e| denied(e, config, "RAG_LOG_FILE"))?;
    }
    // The failure log stays with whoever runs init (root, for the packages): a
    // service started as root with --user opens it before dropping privileges,
    // so the unprivileged process can append to it but never rewrite it.
    let log = &config.failure_log;
    ensure(log, 0o077, Some(privdrop::euid()), None, &mut report, |p| {
        let existed = std::fs::symlink_metadata(p).is_ok();
        crate::failure_log::create(p)?;
        Ok(!existed)
    })
    .map_err(|e| denied(e, config, "FAILURE_LOG"))?;
    let unsafe_paths = report.iter().filter(|l| l.state == "unsafe").count();
    if args.has("json") {
        super::emit_json(&json_report(&report))?;
    } else {
        super::emit(&report.iter().map(Line::text).collect::<String>())?;
    }
    if unsafe_paths > 0 {
        log::warn!(
            "{unsafe_paths} existing path(s) have unsafe modes or owners; fix them and run init again"
        );
    }
    Ok(Outcome::failed_if(unsafe_paths > 0))
}

/// A refused permission is the settings' fault, not a passing one: exit 78 with a
/// note naming the setting (and its flag) that points there, or sudo.
fn denied(e: Error, config: &Config, setting: &str) -> Error {
    if e.io_kind() != Some(std::io::ErrorKind::PermissionDenied) {
        return e;
    }
    let uid = privdrop::euid();
    let fix = match setting {
        "SPOOL_DIR" => {
            "point SPOOL_DIR (or --spool-dir) at a directory this user may create, e.g. `--spool-dir \"$HOME/ragspool\"`"
        }
        "RAG_LOG_FILE" => {
            "point RAG_LOG_FILE (or --log-file) at a file this user may create, or `-` for stderr only"
        }
        _ => "point FAILURE_LOG at a file this user may create",
    };
    let via = config.named(setting);
    e.into_config().with_note(format!(
        "uid {uid} may not write where {via} points: {fix}; or create it as root with `sudo ragspool init --owner USER[:GROUP]`, which hands the tree to the service user"
    ))
}

/// Creates RAG_LOG_FILE (mode 0640) when missing; true when it was created.
fn create_log_file(path: &Path) -> Result<bool> {
    let existed = std::fs::symlink_metadata(path).is_ok();
    crate::fs::open_append(path, 0o640)
        .with_context(|| format!("cannot create log file `{}` (RAG_LOG_FILE)", path.display()))?;
    Ok(!existed)
}

/// What init found or did at one path.
struct Line {
    /// `created`, `ok` or `unsafe`.
    state: &'static str,
    path: PathBuf,
    /// Why an existing path is unsafe.
    why: Option<String>,
}

impl Line {
    /// The line as the text report shows it.
    fn text(&self) -> String {
        match &self.why {
            Some(why) => format!("unsafe  {}: {why}\n", self.path.display()),
            None => format!("{:<7}  {}\n", self.state, self.path.display()),
        }
    }
}

/// The paths by what happened to them, for scripts (`init --json`).
fn json_report(lines: &[Line]) -> serde_json::Value {
    let paths = |state: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.state == state)
            .map(|l| l.path.display().to_string())
            .collect()
    };
    let unsafe_paths: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.state == "unsafe")
        .map(|l| serde_json::json!({"path": l.path.display().to_string(), "why": l.why}))
        .collect();
    serde_json::json!({"created": paths("created"), "ok": paths("ok"), "unsafe": unsafe_paths})
}

/// Creates `path` with `create` when missing; reports an existing unsafe one.
fn ensure(
    path: &Path,
    forbidden: u32,
    uid: Option<u32>,
    owner: Option<Owner>,
    report: &mut Vec<Line>,
    create: impl FnOnce(&Path) -> Result<bool>,
) -> Result<()> {
    if let Some(why) = crate::fs::unsafe_reason(path, forbidden, uid) {
        report.push(Line {
            state: "unsafe",
            path: path.to_path_buf(),
            why: Some(why),
        });
        return Ok(());
    }
    let created = create(path)?;
    if created && let Some(o) = owner {
        std::os::unix::fs::chown(path, Some(o.uid), Some(o.gid))
            .with_context(|| format!("cannot chown `{}`", path.display()))?;
    }
    report.push(Line {
        state: if created { "created" } else { "ok" },
        path: path.to_path_buf(),
        why: None,
    });
    Ok(())
}
