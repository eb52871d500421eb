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
