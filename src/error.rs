//! Errors and the exit codes they map to (documented in README.md "Exit codes").
//!
//! [`Kind`] says what failed, and the exit code is a function of it ([`Kind::exit_code`]),
//! never a number set beside it. A kind that wraps another error (an AWS call, a Docker
//! Engine call, a file) keeps that error as its `source()`: the message stays one readable
//! line, and `-vv` prints the chain. [`Error`] adds what any kind can carry: notes (what exists
//! now), the next action (`help`) and a failure report for `--json`.

use crate::retry::Cause;
use std::fmt;

/// Process exit codes. Stable: CI scripts depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Success = 0,
    /// An operation failed (AWS API error, stack failure, build failure).
    Failure = 1,
    /// Bad input: config, flags, templates, missing secret values. Also `plan --exit-code` "changes present".
    BadInput = 2,
    /// A wait ran past its deadline, or an API call got no answer within `--api-timeout`.
    Timeout = 3,
    /// A deployment was rolled back (ECS circuit breaker, or a stack update CloudFormation rolled back).
    RolledBack = 4,
    /// Another deploy of the project holds the deploy lock (src/lock.rs).
    Locked = 5,
    /// Interrupted by the user (Ctrl-C) after cleaning up.
    Interrupted = 130,
}

/// Any error a step wraps (boxed: the SDK's errors are generic over each operation).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What failed. Each variant's exit code is [`Kind::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum Kind {
    /// An operation failed (exit 1).
    #[error("{message}")]
    Failed {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Bad input: config, flags, templates, secret values, a refused confirmation (exit 2).
    #[error("{message}")]
    BadInput {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A wait ran past its deadline (exit 3).
    #[error("{message}")]
    TimedOut {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A deployment or a stack update was rolled back; the previous state runs (exit 4).
    #[error("{message}")]
    RolledBack {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Another deploy of the project holds the deploy lock; nothing was changed (exit 5).
    #[error("{message}")]
    Locked {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Interrupted; what could be undone was (exit 130). The source is the failure the
    /// interrupt caused, when there was one.
    #[error("{message}")]
    Interrupted {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// An AWS API call failed: `what: code: message (request id …)`. Its cause picks the
    /// exit code: no answer within `--api-timeout` is 3, a call refused after an interrupt
    /// 130, anything else 1.
    #[error("{what}: {detail}")]
    Aws {
        what: String,
        detail: String,
        cause: Cause,
        #[source]
        source: BoxError,
    },
    /// A Docker Engine call failed (exit 1).
    #[error("{what}: {source}")]
    Docker {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// A file, folder or process could not be read, written or run (exit 1).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Steps that ran side by side (one per service) each failed: every one is kept. The exit
    /// code is theirs when they agree, else 1.
    #[error("{}", several(.0))]
    Several(Vec<Error>),
}

fn several(errors: &[Error]) -> String {
    let mut message = format!("{} steps failed:", errors.len());
    for e in errors {
        message.push_str(&format!("\n  - {}", e.message().replace('\n', "\n    ")));
    }
    message
}

impl Kind {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Kind::Failed { .. } | Kind::Docker { .. } | Kind::Io { .. } => ExitCode::Failure,
            Kind::BadInput { .. } => ExitCode::BadInput,
            Kind::TimedOut { .. } => ExitCode::Timeout,
            Kind::RolledBack { .. } => ExitCode::RolledBack,
            Kind::Locked { .. } => ExitCode::Locked,
            Kind::Interrupted { .. } => ExitCode::Interrupted,
            Kind::Aws { cause, .. } => match cause {
                Cause::Interrupted => ExitCode::Interrupted,
                Cause::Timeout => ExitCode::Timeout,
                _ => ExitCode::Failure,
            },
            Kind::Several(errors) => {
                let first = errors.first().map_or(ExitCode::Failure, Error::code);
                if errors.iter().all(|e| e.code() == first) {
                    first
                } else {
                    ExitCode::Failure
                }
            }
        }
    }

    /// The slot for a wrapped error, in the kinds that take one from the caller.
    fn source_slot(&mut self) -> Option<&mut Option<BoxError>> {
        match self {
            Kind::Failed { source, .. }
            | Kind::BadInput { source, .. }
            | Kind::TimedOut { source, .. }
            | Kind::RolledBack { source, .. }
            | Kind::Locked { source, .. }
            | Kind::Interrupted { source, .. } => Some(source),
            Kind::Aws { .. } | Kind::Docker { .. } | Kind::Io { .. } | Kind::Several(_) => None,
        }
    }
}

/// The deployer's error: what failed ([`Kind`]), what exists now, and the next action.
#[derive(Debug)]
pub struct Error {
    /// Boxed: errors travel in every `Result`, and the kinds that wrap an error are large.
    pub kind: Box<Kind>,
    /// Lines printed under the message (e.g. "exists now: …"), in order.
    pub notes: Vec<String>,
    pub help: Option<String>,
    /// A failure report (src/summary.rs `Failure`) merged into the `--json` error object.
    pub report: Option<Box<serde_json::Value>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Kind> for Error {
    fn from(kind: Kind) -> Self {
        Self {
            kind: Box::new(kind),
            notes: Vec::new(),
            help: None,
            report: None,
        }
    }
}

impl Error {
    pub fn failure(message: impl Into<String>) -> Self {
        Kind::Failed {
            message: message.into(),
            source: None,
        }
        .into()
    }
    pub fn bad_input(message: impl Into<String>) -> Self {
        Kind::BadInput {
            message: message.into(),
            source: None,
        }
        .into()
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Kind::TimedOut {
            message: message.into(),
            source: None,
        }
        .into()
    }
    pub fn rolled_back(message: impl Into<String>) -> Self {
        Kind::RolledBack {
            message: message.into(),
            source: None,
        }
        .into()
    }
    pub fn locked(message: impl Into<String>) -> Self {
        Kind::Locked {
            message: message.into(),
            source: None,
        }
        .into()
    }
    pub fn interrupted(message: impl Into<String>) -> Self {
        Kind::Interrupted {
            message: message.into(),
            source: None,
        }
        .into()
    }
    /// `what: <the io error>`, keeping the io error as the source.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Kind::Io {
            what: what.into(),
            source,
        }
        .into()
    }
    /// `what: <the engine's error>`, keeping it as the source.
    pub fn docker(what: impl Into<String>, source: bollard::errors::Error) -> Self {
        Kind::Docker {
            what: what.into(),
            source,
        }
        .into()
    }

    /// Keep `source` as the cause of a message kind (the kinds that wrap a typed error have
    /// theirs already and keep it).
    pub fn because(mut self, source: impl Into<BoxError>) -> Self {
        if let Some(slot) = self.kind.source_slot() {
            *slot = Some(source.into());
        }
        self
    }
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }
    pub fn with_report(mut self, report: serde_json::Value) -> Self {
        self.report = Some(Box::new(report));
        self
    }

    pub fn code(&self) -> ExitCode {
        self.kind.exit_code()
    }

    /// The message and its notes, without the help line.
    pub fn message(&self) -> String {
        let mut m = self.kind.to_string();
        for note in &self.notes {
            m.push_str("\n  ");
            m.push_str(note);
        }
        m
    }

    /// The chain of wrapped errors, outermost first, as debug dumps (printed at `-vv`).
    pub fn causes(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut next = std::error::Error::source(self.kind.as_ref());
        while let Some(e) = next {
            out.push(format!("{e:?}"));
            next = e.source();
        }
        out
    }

    /// Every failure of steps that ran side by side (one per service), as one error: each
    /// message kept, in order, and every distinct help. The exit code is theirs when they
    /// agree, else 1 ([`Kind::Several`]).
    pub fn all(mut errors: Vec<Error>) -> Option<Error> {
        if errors.len() <= 1 {
            return errors.pop();
        }
        let mut helps: Vec<String> = Vec::new();
        let mut report = None;
        for e in &mut errors {
            if let Some(h) = e.help.take()
                && !helps.contains(&h)
            {
                helps.push(h);
            }
            report = report.or(e.report.take());
        }
        Some(Error {
            kind: Box::new(Kind::Several(errors)),
            notes: Vec::new(),
            help: (!helps.is_empty()).then(|| helps.join("\n  help: ")),
            report,
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(self.kind.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_failures_are_kept_and_the_code_is_shared_or_1() {
        assert!(Error::all(Vec::new()).is_none());
        let one = Error::all(vec![Error::timeout("a")]).expect("one");
        assert_eq!(
            (one.code(), one.message().as_str()),
            (ExitCode::Timeout, "a")
        );
        let same = Error::all(vec![Error::timeout("a"), Error::timeout("b")]).expect("two");
        assert_eq!(same.code(), ExitCode::Timeout);
        let mixed = Error::all(vec![
            Error::timeout("svc a timed out").with_help("raise --timeout"),
            Error::rolled_back("svc b rolled back\nreason").with_help("raise --timeout"),
        ])
        .expect("mixed");
        assert_eq!(mixed.code(), ExitCode::Failure);
        assert_eq!(
            mixed.to_string(),
            "2 steps failed:\n  - svc a timed out\n  - svc b rolled back\n    reason\n  help: raise --timeout"
        );
    }

    #[test]
    fn the_exit_code_follows_the_kind_and_an_aws_cause() {
        let aws = |cause| -> Error {
            Kind::Aws {
                what: "describe stack x".into(),
                detail: "boom".into(),
                cause,
                source: "boom".into(),
            }
            .into()
        };
        assert_eq!(aws(Cause::Timeout).code(), ExitCode::Timeout);
        assert_eq!(aws(Cause::Interrupted).code(), ExitCode::Interrupted);
        assert_eq!(aws(Cause::PermissionDenied).code(), ExitCode::Failure);
        assert_eq!(Error::locked("held").code(), ExitCode::Locked);
        let io = Error::io("cannot write x", std::io::Error::other("disk full"));
        assert_eq!(io.code(), ExitCode::Failure);
        assert_eq!(io.to_string(), "cannot write x: disk full");
    }

    #[test]
    fn a_wrapped_error_is_the_source_and_notes_follow_the_message() {
        let inner = Error::io("cannot read a", std::io::Error::other("gone"));
        let e = Error::interrupted("interrupted: cannot read a: gone")
            .because(inner)
            .with_note("exists now: nothing of the project")
            .with_help("run it again");
        assert_eq!(e.code(), ExitCode::Interrupted);
        assert_eq!(
            e.to_string(),
            "interrupted: cannot read a: gone\n  exists now: nothing of the project\n  help: run it again"
        );
        let causes = e.causes();
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert!(causes[0].contains("cannot read a"), "{causes:?}");
        assert!(causes[1].contains("gone"), "{causes:?}");
    }
}
