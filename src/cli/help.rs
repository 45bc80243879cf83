//! `--help` and `--version` text, rendered from the registry so it cannot drift.

use super::defs::{COMMANDS, Command, Flag, GLOBAL_FLAGS};
use std::fmt::Write;

/// `ragspool --version`.
pub(crate) fn version() -> String {
    format!("ragspool {}\n", env!("CARGO_PKG_VERSION"))
}

/// `ragspool --help`.
pub(crate) fn global() -> String {
    let mut out = format!(
        "ragspool {} - ingest MessagePack RAG chunks from a spool into PostgreSQL\n\n\
         Usage: ragspool [OPTIONS] <COMMAND> [ARGS]\n\nCommands:\n",
        env!("CARGO_PKG_VERSION")
    );
    let width = COMMANDS.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in COMMANDS {
        let _ = writeln!(out, "  {:width$}  {}", c.name, c.summary);
    }
    out.push_str("\nOptions:\n");
    flags(&mut out, GLOBAL_FLAGS);
    out.push_str(
        "\nSettings come from flags, the environment, --env-file, then defaults;\n\
         see ragspool(1) for every setting.\n\
         Exit status: 0 done, 1 some input failed, 2 usage error,\n\
         75 temporary failure (run again later), 78 configuration error.\n",
    );
    out
}

/// `ragspool <command> --help`.
pub(crate) fn command(c: &Command) -> String {
    let mut out = format!(
        "ragspool {} - {}\n\nUsage: ragspool [OPTIONS] {}",
        c.name, c.summary, c.name
    );
    if !c.usage.is_empty() {
        out.push(' ');
        out.push_str(c.usage);
    }
    out.push_str("\n\n");
    out.push_str(c.doc);
    out.push('\n');
    if !c.actions.is_empty() {
        let mut title = c.action_kind.to_string();
        if let Some(first) = title.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        let _ = writeln!(out, "\n{title}s:");
        let labels: Vec<String> = c
            .actions
            .iter()
            .map(|a| format!("{} {}", a.name, a.args).trim_end().to_string())
            .collect();
        let width = labels.iter().map(String::len).max().unwrap_or(0);
        for (a, label) in c.actions.iter().zip(&labels) {
            let _ = writeln!(out, "  {label:width$}  {}", a.doc);
        }
    }
    if !c.flags.is_empty() {
        out.push_str("\nOptions:\n");
        flags(&mut out, c.flags);
    }
    out.push_str("\nGlobal options (see `ragspool --help`) are accepted too.\n");
    out
}

/// How a flag is written in help and in the man page: `-v, --verbose` or `--files N`.
pub(crate) fn flag_label(f: &Flag) -> String {
    let mut label = match f.short {
        Some(s) => format!("-{s}, --{}", f.long),
        None => format!("--{}", f.long),
    };
    if let Some(v) = f.value {
        label.push(' ');
        label.push_str(v);
    }
    label
}

fn flags(out: &mut String, list: &[Flag]) {
    let labels: Vec<String> = list.iter().map(flag_label).collect();
    let width = labels.iter().map(String::len).max().unwrap_or(0);
    for (f, label) in list.iter().zip(&labels) {
        let _ = writeln!(out, "  {label:width$}  {}", f.doc);
    }
}
