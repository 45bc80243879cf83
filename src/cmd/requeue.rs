//! `ragspool requeue`: failed files back to incoming/.

use crate::batch::BatchTag;
use crate::cli::Args;
use crate::config::Config;
use crate::error::{Error, Outcome, Result};
use crate::spool::Spool;

pub(crate) fn run(config: &Config, args: &Args) -> Result<Outcome> {
    let spool = Spool::new(&config.spool_dir);
    spool.require()?;
    let tags = match (args.positionals.first(), args.has("all")) {
        (Some(_), true) => return Err(Error::usage("give a batch tag or --all, not both")),
        (None, false) => return Err(Error::usage("`requeue` needs a batch tag or --all")),
        (None, true) => spool.failed_batches()?,
        (Some(raw), false) => {
            let tag = BatchTag::parse(raw).ok_or_else(|| {
                Error::usage(format!(
                    "`{raw}` is not a batch tag (20260101T000000Z-0a1b2c3d)"
                ))
            })?;
            if !spool.dir("failed").join(tag.as_str()).is_dir() {
                return Err(Error::usage(format!(
                    "no failed/{tag}/ in {}",
                    spool.root().display()
                )));
            }
            vec![tag]
        }
    };
    let mut out = String::new();
    let (mut all_moved, mut all_left) = (Vec::new(), Vec::new());
    for tag in tags {
        let (moved, left) = spool.requeue(&tag)?;
        for name in &moved {
            out.push_str(&format!("requeued  {tag}/{name}\n"));
        }
        for name in &left {
            out.push_str(&format!(
                "left      {tag}/{name}: a file of that name already waits in incoming/\n"
            ));
        }
        all_moved.extend(moved.iter().map(|n| format!("{tag}/{n}")));
        all_left.extend(left.iter().map(|n| format!("{tag}/{n}")));
        log::info!(
            "requeue {tag}: {} file(s) moved back to incoming/, {} left",
            moved.len(),
            left.len()
        );
    }
    if out.is_empty() {
        out.push_str("nothing to requeue\n");
    }
    if args.has("json") {
        super::emit_json(&serde_json::json!({"requeued": all_moved, "left": all_left}))?;
    } else {
        super::emit(&out)?;
    }
    Ok(Outcome::failed_if(!all_left.is_empty()))
}
