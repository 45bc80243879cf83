//! Parses argv against the registry in [`defs`]; `--help` and `--version` are answered
//! here, before any setting or env file is read, so help works on a broken box.

pub(crate) mod defs;
pub(crate) mod help;

use crate::error::{Error, Result};
use defs::{Command, Flag, GLOBAL_FLAGS};
use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;

/// What the command line asked for.
#[derive(Debug)]
pub(crate) enum Request {
    /// Print this text to stdout and exit 0.
    Print(String),
    /// Run a command.
    Run(Invocation),
}

/// Global options that apply to every command.
#[derive(Debug, Default)]
pub(crate) struct Globals {
    /// `--env-file PATH`.
    pub(crate) env_file: Option<PathBuf>,
    /// +1 per `-v`, -1 for `-q`.
    pub(crate) verbosity: i8,
    /// Settings given as flags: (setting name, value).
    pub(crate) settings: Vec<(&'static str, String)>,
}

/// A command with its parsed arguments.
#[derive(Debug)]
pub(crate) struct Invocation {
    /// Options before or after the command word.
    pub(crate) globals: Globals,
    /// The command's registry entry.
    pub(crate) command: &'static Command,
    /// The command's own flags and positionals.
    pub(crate) args: Args,
}

/// A command's own flags and positional arguments.
#[derive(Debug, Default)]
pub(crate) struct Args {
    flags: Vec<(&'static str, Option<String>)>,
    /// Positional arguments in order.
    pub(crate) positionals: Vec<String>,
}

impl Args {
    /// Whether the switch `--long` was given.
    pub(crate) fn has(&self, long: &str) -> bool {
        self.flags.iter().any(|(l, _)| *l == long)
    }

    /// The last value given for `--long`.
    pub(crate) fn value(&self, long: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(l, _)| *l == long)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Every value given for `--long`, in order.
    pub(crate) fn values(&self, long: &str) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(l, _)| *l == long)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }

    /// `--long` parsed as `T`, or `default` when absent; a bad value is a usage error naming the flag.
    pub(crate) fn parse_or<T: FromStr>(&self, long: &str, default: T, expected: &str) -> Result<T> {
        match self.value(long) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|_| Error::usage(format!("`--{long}` must be {expected}, got `{raw}`"))),
        }
    }
}

/// Parses the process arguments.
pub(crate) fn parse_env() -> Result<Request> {
    parse(std::env::args_os().skip(1))
}

/// Parses `args` (without the program name).
pub(crate) fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Request> {
    use lexopt::Arg;
    let mut parser = lexopt::Parser::from_args(args);
    let mut globals = Globals::default();
    let mut command: Option<&'static Command> = None;
    let mut args = Args::default();
    let mut want_help = false;
    while let Some(arg) = parser.next().map_err(usage_error)? {
        let (name, flag) = match arg {
            Arg::Value(v) => {
                let v = into_string(v)?;
                match command {
                    None => command = Some(find_command(&v)?),
                    Some(_) => args.positionals.push(v),
                }
                continue;
            }
            Arg::Short(c) => {
                let flag = lookup(command, |f| f.short == Some(c))
                    .ok_or_else(|| unknown_flag(&format!("-{c}"), command))?;
                (format!("-{c}"), flag)
            }
            Arg::Long(l) => {
                let flag = lookup(command, |f| f.long == l)
                    .ok_or_else(|| unknown_flag(&format!("--{l}"), command))?;
                (format!("--{l}"), flag)
            }
        };
        let value = match flag.value {
            Some(_) => {
                Some(into_string(parser.value().map_err(|e| {
                    Error::usage(format!("`{name}` needs a value: {e}"))
                })?)?)
            }
            None => None,
        };
        let is_global = GLOBAL_FLAGS.iter().any(|g| std::ptr::eq(g, flag));
        if !is_global {
            args.flags.push((flag.long, value));
            continue;
        }
        match (flag.long, value) {
            ("help", _) => want_help = true,
            ("version", _) => return Ok(Request::Print(help::version())),
            (_, value) => globals.apply(flag, value),
        }
    }
    if want_help {
        return Ok(Request::Print(match command {
            Some(c) => help::command(c),
            None => help::global(),
        }));
    }
    let Some(command) = command else {
        return Err(Error::usage("no command given")
            .with_note("run `ragspool --help` for the list of commands"));
    };
    check_arity(command, args.positionals.len())?;
    Ok(Request::Run(Invocation {
        globals,
        command,
        args,
    }))
}

/// A usage error unless `command` takes `n` positional arguments.
fn check_arity(command: &Command, n: usize) -> Result<()> {
    let (min, max) = command.positionals;
    if n < min || n > max {
        return Err(Error::usage(format!(
            "`{}` takes {} argument(s), got {n}",
            command.name,
            if min == max {
                min.to_string()
            } else if max == usize::MAX {
                format!("at least {min}")
            } else {
                format!("{min} to {max}")
            }
        ))
        .with_note(format!(
            "usage: ragspool {} {}",
            command.name, command.usage
        )));
    }
    Ok(())
}

impl Globals {
    /// Takes a global flag other than --help and --version.
    fn apply(&mut self, flag: &Flag, value: Option<String>) {
        match (flag.long, value) {
            ("verbose", _) => self.verbosity = self.verbosity.saturating_add(1),
            ("quiet", _) => self.verbosity = -1,
            ("env-file", Some(v)) => self.env_file = Some(PathBuf::from(v)),
            (_, Some(v)) => {
                if let Some(setting) = flag.setting {
                    self.settings.push((setting, v));
                }
            }
            _ => {}
        }
    }
}

fn lookup(
    command: Option<&'static Command>,
    pred: impl Fn(&Flag) -> bool,
) -> Option<&'static Flag> {
    let own: &'static [Flag] = command.map_or(&[], |c| c.flags);
    GLOBAL_FLAGS.iter().chain(own).find(|f| pred(f))
}

fn find_command(word: &str) -> Result<&'static Command> {
    defs::command(word).ok_or_else(|| {
        let names = defs::COMMANDS.iter().map(|c| c.name);
        let err = Error::usage(format!("unknown command `{word}`"));
        match closest(word, names) {
            Some(s) => err.with_note(format!("did you mean `{s}`? see `ragspool --help`")),
            None => err.with_note("see `ragspool --help` for the list of commands"),
        }
    })
}

fn unknown_flag(given: &str, command: Option<&'static Command>) -> Error {
    let own: &'static [Flag] = command.map_or(&[], |c| c.flags);
    let names = GLOBAL_FLAGS.iter().chain(own).map(|f| f.long);
    let bare = given.trim_start_matches('-');
    let err = Error::usage(format!("unknown flag `{given}`"));
    let help = match command {
        Some(c) => format!("ragspool {} --help", c.name),
        None => "ragspool --help".to_string(),
    };
    match closest(bare, names) {
        Some(s) => err.with_note(format!("did you mean `--{s}`? see `{help}`")),
        None => err.with_note(format!("see `{help}`")),
    }
}

fn usage_error(e: lexopt::Error) -> Error {
    Error::usage(e.to_string()).with_note("see `ragspool --help`")
}

fn into_string(v: OsString) -> Result<String> {
    v.into_string()
        .map_err(|v| Error::usage(format!("argument {v:?} is not valid UTF-8")))
}

/// The candidate nearest to `word` by edit distance, if it is near enough to be a typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Request> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let Ok(Request::Run(inv)) = run(&["-v", "gen", "--files", "3", "--spool-dir", "/x", "-v"])
        else {
            unreachable!("parse failed")
        };
        assert_eq!(inv.command.name, "gen");
        assert_eq!(inv.globals.verbosity, 2);
        assert_eq!(inv.globals.settings, vec![("SPOOL_DIR", "/x".to_string())]);
        assert_eq!(inv.args.value("files"), Some("3"));
    }

    #[test]
    fn every_registered_flag_parses() {
        for c in defs::COMMANDS {
            for f in c.flags {
                let mut argv = vec![c.name.to_string(), format!("--{}", f.long)];
                if f.value.is_some() {
                    argv.push("1".into());
                }
                for _ in 0..c.positionals.0 {
                    argv.push("p".into());
                }
                let parsed = parse(argv.iter().map(OsString::from));
                assert!(
                    matches!(parsed, Ok(Request::Run(_))),
                    "{argv:?}: {parsed:?}"
                );
            }
        }
    }

    #[test]
    fn typos_get_a_suggestion() {
        let e = run(&["proces"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("did you mean `process`"), "{e}");
        let e = run(&["gen", "--file", "2"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("did you mean `--files`"), "{e}");
    }

    #[test]
    fn help_wins_over_missing_arguments() {
        assert!(matches!(run(&["requeue", "--help"]), Ok(Request::Print(_))));
        assert!(matches!(run(&["--version"]), Ok(Request::Print(_))));
    }

    #[test]
    fn wrong_positional_count_is_usage() {
        let e = run(&["init", "extra"]).err();
        assert!(matches!(
            e.map(|e| e.class()),
            Some(crate::error::Class::Usage)
        ));
    }
}
