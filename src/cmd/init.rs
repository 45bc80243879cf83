//! `ragspool init`: the spool tree, log directory and failure log, with safe modes.

use crate::cli::Args;
use crate::config::Config;
use crate::error::{Context, Error, Outcome, Result};
use crate::privdrop::{self, Owner};
use crate::spool::{self, DIRS, Spool};
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
    let mut dirs: Vec<PathBuf> = vec![spool.root().to_path_buf()];
    dirs.extend(DIRS.iter().map(|d| spool.dir(d)));
    if let Some(dir) = config
        .log_file
        .as_deref()
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
    {
        dirs.push(dir.to_path_buf());
    }
    if let Some(dir) = config
        .failure_log
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        && !dirs.iter().any(|d| d == dir)
    {
        dirs.push(dir.to_path_buf());
    }
    let mut report = String::new();
    let mut unsafe_paths = 0;
    for dir in &dirs {
        unsafe_paths += ensure(dir, 0o027, uid, owner, &mut report, spool::make_dir)?;
    }
    let log = &config.failure_log;
    unsafe_paths += ensure(log, 0o077, uid, owner, &mut report, |p| {
        let existed = std::fs::symlink_metadata(p).is_ok();
        crate::failure_log::create(p)?;
        Ok(!existed)
    })?;
    super::emit(&report)?;
    if unsafe_paths > 0 {
        log::warn!(
            "{unsafe_paths} existing path(s) have unsafe modes or owners; fix them and run init again"
        );
    }
    Ok(Outcome::failed_if(unsafe_paths > 0))
}

/// Creates `path` with `create` when missing; reports an existing unsafe one.
fn ensure(
    path: &Path,
    forbidden: u32,
    uid: u32,
    owner: Option<Owner>,
    report: &mut String,
    create: impl FnOnce(&Path) -> Result<bool>,
) -> Result<u32> {
    if let Some(why) = spool::unsafe_reason(path, forbidden, Some(uid)) {
        report.push_str(&format!("unsafe  {}: {why}\n", path.display()));
        return Ok(1);
    }
    let created = create(path)?;
    if created && let Some(o) = owner {
        std::os::unix::fs::chown(path, Some(o.uid), Some(o.gid))
            .with_context(|| format!("cannot chown `{}`", path.display()))?;
    }
    report.push_str(&format!(
        "{}  {}\n",
        if created { "created" } else { "ok     " },
        path.display()
    ));
    Ok(0)
}
