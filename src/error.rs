//! Errors and outcomes, and the one place that turns them into exit codes (SPEC §1).
//!
//! A bad input file is never an `Err`: it is an [`Outcome::InputFailed`]. An `Err`
//! means the command itself could not do its work, and its [`Class`] says why.

use std::fmt;
use std::process::ExitCode;

/// Why a command could not do its work; each class has one exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Unknown command or flag, bad argument (exit 2).
    Usage,
    /// A server or the filesystem failed; nothing was lost, run again later (exit 75).
    TempFail,
    /// A setting is missing or invalid (exit 78).
    Config,
    /// The command ran but found something unhealthy (exit 1).
    Failed,
}

/// How a command that ran to its end went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done, nothing failed.
    Clean,
    /// Done, but some input failed or a probe said unhealthy.
    InputFailed,
}

impl Outcome {
    /// `InputFailed` when `failed` holds, else `Clean`.
    pub(crate) fn failed_if(failed: bool) -> Outcome {
        if failed {
            Outcome::InputFailed
        } else {
            Outcome::Clean
        }
    }
}

/// An error with its class, a chain of "while doing X" contexts and an optional hint.
#[derive(Debug)]
pub(crate) struct Error {
    class: Class,
    message: String,
    context: Vec<String>,
    note: Option<String>,
    /// The kind of the I/O error it came from, so a caller can tell a refused
    /// permission (the operator's to fix) from a passing fault.
    io_kind: Option<std::io::ErrorKind>,
}

/// The result every command and most domain calls return.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `class` saying `message`.
    pub(crate) fn new(class: Class, message: impl Into<String>) -> Error {
        Error {
            class,
            message: message.into(),
            context: Vec::new(),
            note: None,
            io_kind: None,
        }
    }

    /// A usage error (exit 2).
    pub(crate) fn usage(message: impl Into<String>) -> Error {
        Error::new(Class::Usage, message)
    }

    /// A configuration error (exit 78).
    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error::new(Class::Config, message)
    }

    /// A temporary failure (exit 75).
    pub(crate) fn temp(message: impl Into<String>) -> Error {
        Error::new(Class::TempFail, message)
    }

    /// A failure that is neither usage, config nor temporary (exit 1).
    pub(crate) fn failed(message: impl Into<String>) -> Error {
        Error::new(Class::Failed, message)
    }

    /// Adds a `note:` line telling the operator how to fix it.
    pub(crate) fn with_note(mut self, note: impl Into<String>) -> Error {
        self.note = Some(note.into());
        self
    }

    /// Adds a `note:` line unless the error already has a more precise one.
    pub(crate) fn or_note(self, note: impl Into<String>) -> Error {
        if self.note.is_some() {
            return self;
        }
        self.with_note(note)
    }

    /// Wraps the error in one more context, outermost first when printed.
    pub(crate) fn context(mut self, context: impl Into<String>) -> Error {
        self.context.push(context.into());
        self
    }

    /// The class, which decides the exit code.
    pub(crate) fn class(&self) -> Class {
        self.class
    }

    /// The kind of the I/O error it came from, if it came from one.
    pub(crate) fn io_kind(&self) -> Option<std::io::ErrorKind> {
        self.io_kind
    }

    /// The same error as a configuration error (exit 78), for a caller that knows
    /// retrying cannot fix it (a permission the settings point at).
    pub(crate) fn into_config(mut self) -> Error {
        self.class = Class::Config;
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for context in self.context.iter().rev() {
            write!(f, "{context}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(note) = &self.note {
            write!(f, "\nnote: {note}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    /// A filesystem error is temporary: nothing moved, the operator fixes and reruns.
    fn from(err: std::io::Error) -> Error {
        let mut e = Error::temp(err.to_string());
        e.io_kind = Some(err.kind());
        e
    }
}

/// Adds context to any result whose error converts into [`Error`].
pub(crate) trait Context<T> {
    /// Wraps the error with `context`.
    fn context(self, context: impl Into<String>) -> Result<T>;
    /// Wraps the error with a context built only on failure.
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }

    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

/// The exit code of a finished command (SPEC §1): the only place these numbers live.
pub(crate) fn exit_code(result: &Result<Outcome>) -> ExitCode {
    ExitCode::from(exit_number(result))
}

/// The exit number of a finished command.
pub(crate) fn exit_number(result: &Result<Outcome>) -> u8 {
    match result {
        Ok(Outcome::Clean) => 0,
        Ok(Outcome::InputFailed) => 1,
        Err(e) => match e.class() {
            Class::Failed => 1,
            Class::Usage => 2,
            Class::TempFail => 75,
            Class::Config => 78,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_numbers_follow_the_spec() {
        assert_eq!(exit_number(&Ok(Outcome::Clean)), 0);
        assert_eq!(exit_number(&Ok(Outcome::InputFailed)), 1);
        assert_eq!(exit_number(&Err(Error::usage("x"))), 2);
        assert_eq!(exit_number(&Err(Error::temp("x"))), 75);
        assert_eq!(exit_number(&Err(Error::config("x"))), 78);
    }

    #[test]
    fn a_precise_note_is_kept() {
        let kept = Error::temp("x").with_note("precise").or_note("general");
        assert_eq!(kept.to_string(), "x\nnote: precise");
        assert_eq!(
            Error::temp("x").or_note("general").to_string(),
            "x\nnote: general"
        );
    }

    #[test]
    fn context_prints_outermost_first_with_note() {
        let e = Error::temp("connection refused")
            .context("while connecting to the database")
            .context("migrate")
            .with_note("start PostgreSQL");
        assert_eq!(
            e.to_string(),
            "migrate: while connecting to the database: connection refused\nnote: start PostgreSQL"
        );
    }
}
