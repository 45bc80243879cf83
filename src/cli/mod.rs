//! Parses argv against the registry in [`defs`]; `--help` and `--version` are answered
//! here, before any setting or env file is read, so help works on a broken box.

mod complete;
pub(crate) mod defs;
pub(crate) mod help;

use crate::error::{Error, Result};
use crate::suggest::closest;
use defs::{Action, Command, Flag, GLOBAL_FLAGS};
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
    check_arguments(command, &args)?;
    check_flag_values(command, &args, &globals)?;
    let first = args.positionals.first().map(String::as_str);
    match (command.name, first) {
        ("help", None) => return Ok(Request::Print(help::global())),
        ("help", Some(word)) => return Ok(Request::Print(help::command(find_command(word)?))),
        ("completions", Some(shell)) => {
            return Ok(Request::Print(complete::script(shell).unwrap_or_default()));
        }
        _ => {}
    }
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
        .with_note(usage(command)));
    }
    Ok(())
}

/// `usage: ragspool NAME USAGE`, for notes.
fn usage(command: &Command) -> String {
    format!("usage: ragspool {} {}", command.name, command.usage)
}

/// The first argument: one of the command's actions with its own count of
/// arguments and the flags it needs, or the switch that stands instead of it.
fn check_arguments(command: &'static Command, args: &Args) -> Result<()> {
    let first = args.positionals.first();
    if let Some(switch) = command.or_switch {
        match (first, args.has(switch)) {
            (Some(_), true) => {
                return Err(Error::usage(format!(
                    "`{}` takes {} or `--{switch}`, not both",
                    command.name,
                    wanted(command)
                ))
                .with_note(usage(command)));
            }
            (None, false) => {
                return Err(Error::usage(format!(
                    "`{}` needs {} or `--{switch}`",
                    command.name,
                    wanted(command)
                ))
                .with_note(usage(command)));
            }
            _ => {}
        }
    }
    let Some(first) = first else { return Ok(()) };
    if command.actions.is_empty() {
        return match command.arg_check.map(|check| check(first)) {
            Some(Err(why)) => Err(Error::usage(format!(
                "the argument of `{}` {why}",
                command.name
            ))
            .with_note(usage(command))),
            _ => Ok(()),
        };
    }
    let action = find_action(command, first)?;
    let rest = args.positionals.len() - 1;
    let note = format!(
        "usage: ragspool {} {} {}",
        command.name, action.name, action.args
    );
    let note = note.trim_end().to_string();
    if rest < action.arity.0 || rest > action.arity.1 {
        return Err(Error::usage(format!(
            "`{} {}` takes {} argument(s), got {rest}",
            command.name, action.name, action.arity.1
        ))
        .with_note(note));
    }
    for need in action.needs {
        if args.value(need).is_none() {
            return Err(Error::usage(format!(
                "`{} {}` needs `--{need}`",
                command.name, action.name
            ))
            .with_note(note));
        }
    }
    Ok(())
}

/// What the first argument of `command` is, for messages: "an event (gate.open, ...)".
fn wanted(command: &Command) -> String {
    if command.actions.is_empty() {
        return command
            .usage
            .split_whitespace()
            .next()
            .unwrap_or("an argument")
            .to_string();
    }
    let names: Vec<&str> = command.actions.iter().map(|a| a.name).collect();
    let article = if command.action_kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {} ({})", command.action_kind, names.join(", "))
}

/// The action `word` of `command`, or a usage error with the nearest one.
fn find_action(command: &'static Command, word: &str) -> Result<&'static Action> {
    if let Some(a) = command.actions.iter().find(|a| a.name == word) {
        return Ok(a);
    }
    let names: Vec<&str> = command.actions.iter().map(|a| a.name).collect();
    let err = Error::usage(format!(
        "unknown {} {} `{word}`; valid: {}",
        command.name,
        command.action_kind,
        names.join(", ")
    ));
    let help = format!("see `ragspool {} --help`", command.name);
    Err(match closest(word, names.iter().copied()) {
        Some(s) => err.with_note(format!("did you mean `{s}`? {help}")),
        None => err.with_note(help),
    })
}

/// Every typed flag's value, and every setting given as a flag by its setting's
/// own rule: a bad one is a usage error naming the flag, before any setting is read.
fn check_flag_values(command: &Command, args: &Args, globals: &Globals) -> Result<()> {
    let bad = |flag: &Flag, why: String| {
        Error::usage(format!("`--{}` {why}", flag.long)).with_note(match flag.setting {
            Some(setting) => format!(
                "`--{}` stands for {setting}; see `ragspool --help`",
                flag.long
            ),
            None => format!("see `ragspool {} --help`", command.name),
        })
    };
    for (long, value) in &args.flags {
        let flag = command.flags.iter().find(|f| f.long == *long);
        if let (Some(flag), Some(value)) = (flag, value)
            && let Some(Err(why)) = flag.check.map(|check| check(value))
        {
            return Err(bad(flag, why));
        }
    }
    for (setting, value) in &globals.settings {
        let Some(flag) = GLOBAL_FLAGS.iter().find(|f| f.setting == Some(*setting)) else {
            continue;
        };
        let rule = crate::config::defs::setting(setting).map(|s| s.check);
        for check in rule.into_iter().chain(flag.check) {
            if let Err(why) = check(value) {
                return Err(bad(flag, why));
            }
        }
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

    /// A value that `--long`'s rule accepts.
    fn sample(long: &str) -> String {
        match long {
            "batch-tag" => "20260101T000000Z-0a1b2c3d".into(),
            "reason" => crate::batch::Reason::ALL[0].as_str().into(),
            "var" => "k=v".into(),
            "listen" => "127.0.0.1:1".into(),
            "user" | "owner" => "root".into(),
            "table" => "rag_chunks".into(),
            "spool-dir" | "log-file" | "env-file" => "/tmp/x".into(),
            _ => "1".into(),
        }
    }

    /// A command line of `c` that its rules accept, with `--flag` added.
    fn argv_with(c: &defs::Command, f: &Flag) -> Vec<String> {
        let mut argv = vec![c.name.to_string(), format!("--{}", f.long)];
        if f.value.is_some() {
            argv.push(sample(f.long));
        }
        if c.or_switch == Some(f.long) {
            return argv;
        }
        let mut needs: Vec<&str> = Vec::new();
        match c.actions.first() {
            Some(a) => {
                argv.push(a.name.into());
                argv.extend((0..a.arity.0).map(|_| "p".to_string()));
                needs.extend(a.needs.iter().filter(|n| **n != f.long));
            }
            None if c.positionals.0 > 0 || c.or_switch.is_some() => {
                argv.push(sample("batch-tag"));
            }
            None => {}
        }
        for need in needs {
            argv.push(format!("--{need}"));
            argv.push(sample(need));
        }
        argv
    }

    #[test]
    fn every_registered_flag_parses() {
        for c in defs::COMMANDS {
            for f in c.flags.iter().chain(GLOBAL_FLAGS) {
                if matches!(f.long, "help" | "version") {
                    continue;
                }
                let argv = argv_with(c, f);
                let parsed = parse(argv.iter().map(OsString::from));
                let want_print = matches!(c.name, "help" | "completions");
                assert!(
                    matches!(
                        (&parsed, want_print),
                        (Ok(Request::Run(_)), false) | (Ok(Request::Print(_)), true)
                    ),
                    "{argv:?}: {parsed:?}"
                );
            }
        }
    }

    #[test]
    fn the_command_line_is_checked_before_any_setting() {
        let usage = |args: &[&str]| {
            let e = run(args).err();
            assert!(
                matches!(
                    e.as_ref().map(Error::class),
                    Some(crate::error::Class::Usage)
                ),
                "{args:?}: {e:?}"
            );
            e.map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(usage(&["cache", "frob"]).contains("unknown cache action `frob`"));
        assert!(usage(&["cache", "prob"]).contains("did you mean `probe`"));
        assert!(usage(&["cache", "get", "ns"]).contains("usage: ragspool cache get NS KEY"));
        assert!(usage(&["--workers", "0", "status"]).contains("`--workers` must be"));
        assert!(
            usage(&["status", "--user", "no-such-user-xyz"])
                .contains("`--user` names unknown user")
        );
        assert!(usage(&["gen", "--files", "many"]).contains("`--files` must be a whole number"));
        assert!(
            usage(&[
                "notify",
                "gate.done",
                "--batch-tag",
                "20260101T000000Z-0a1b2c3d"
            ])
            .contains("needs `--reason`")
        );
        assert!(usage(&["notify"]).contains("gate.open, gate.done, alert"));
        assert!(
            usage(&["notify", "--batch-tag", "x", "gate.open"])
                .contains("`--batch-tag` must look like")
        );
        assert!(usage(&["requeue"]).contains("--all"));
        assert!(usage(&["requeue", "x", "--all"]).contains("not both"));
        assert!(usage(&["requeue", "nope"]).contains("must look like"));
        assert!(usage(&["gate", "serve"]).contains("needs `--listen`"));
        assert!(usage(&["gate", "serve", "--listen", "x", "--rate", "0"]).contains("`--listen`"));
        assert!(usage(&["help", "proces"]).contains("did you mean `process`"));
        assert!(usage(&["completions", "tcsh"]).contains("bash, zsh, fish"));
        // Help still wins over a bad value.
        assert!(matches!(
            run(&["--workers", "0", "--help"]),
            Ok(Request::Print(_))
        ));
    }

    #[test]
    fn help_command_prints_the_same_text_as_the_flag() {
        let text = |args: &[&str]| match run(args) {
            Ok(Request::Print(t)) => t,
            other => unreachable!("{other:?}"),
        };
        assert_eq!(text(&["help", "process"]), text(&["process", "--help"]));
        assert_eq!(text(&["help"]), text(&["--help"]));
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
