//! Errors and the exit codes they map to (documented in README.md "Exit codes").

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

/// The deployer's error: what went wrong, and the next action for the user.
#[derive(Debug)]
pub struct Error {
    pub code: ExitCode,
    pub message: String,
    pub help: Option<String>,
    /// A failure report (src/summary.rs `Failure`) merged into the `--json` error object.
    pub report: Option<Box<serde_json::Value>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            help: None,
            report: None,
        }
    }
    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Failure, message)
    }
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(ExitCode::BadInput, message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Timeout, message)
    }
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    pub fn with_report(mut self, report: serde_json::Value) -> Self {
        self.report = Some(Box::new(report));
        self
    }

    /// Every failure of steps that ran side by side (one per service), as one error: each
    /// message and help kept, in order. The exit code is theirs when they agree, else 1.
    pub fn all(errors: Vec<Error>) -> Option<Error> {
        if errors.len() <= 1 {
            return errors.into_iter().next();
        }
        let code = if errors.iter().all(|e| e.code == errors[0].code) {
            errors[0].code
        } else {
            ExitCode::Failure
        };
        let mut message = format!("{} steps failed:", errors.len());
        let mut helps: Vec<String> = Vec::new();
        let mut report = None;
        for e in errors {
            message.push_str(&format!("\n  - {}", e.message.replace('\n', "\n    ")));
            if let Some(h) = e.help
                && !helps.contains(&h)
            {
                helps.push(h);
            }
            report = report.or(e.report);
        }
        Some(Error {
            code,
            message,
            help: (!helps.is_empty()).then(|| helps.join("\n  help: ")),
            report,
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_failures_are_kept_and_the_code_is_shared_or_1() {
        assert!(Error::all(Vec::new()).is_none());
        let one = Error::all(vec![Error::timeout("a")]).expect("one");
        assert_eq!((one.code, one.message.as_str()), (ExitCode::Timeout, "a"));
        let same = Error::all(vec![Error::timeout("a"), Error::timeout("b")]).expect("two");
        assert_eq!(same.code, ExitCode::Timeout);
        let mixed = Error::all(vec![
            Error::timeout("svc a timed out").with_help("raise --timeout"),
            Error::new(ExitCode::RolledBack, "svc b rolled back\nreason")
                .with_help("raise --timeout"),
        ])
        .expect("mixed");
        assert_eq!(mixed.code, ExitCode::Failure);
        assert_eq!(
            mixed.to_string(),
            "2 steps failed:\n  - svc a timed out\n  - svc b rolled back\n    reason\n  help: raise --timeout"
        );
    }
}
