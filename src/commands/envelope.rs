//! What a command leaves behind besides its text: the `--json` objects (one shape for every
//! command), the job summary and step outputs, and the failure report of a deploy.

use crate::aws::{CallCounter, Clients};
use crate::error::{Error, ExitCode, Result};
use crate::summary;
use crate::ui::Ui;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The `--json` object of a command that succeeded: `"ok": true`, the report's own fields,
/// then what the command adds.
#[derive(Serialize)]
pub struct Done<'a, T: Serialize> {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'static str>,
    #[serde(flatten)]
    report: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_calls: Option<ApiCalls>,
}

impl<'a, T: Serialize> Done<'a, T> {
    pub fn new(report: &'a T) -> Self {
        Self {
            ok: true,
            target: None,
            report,
            seconds: None,
            api_calls: None,
        }
    }
    pub fn target(self, target: &'static str) -> Self {
        Self {
            target: Some(target),
            ..self
        }
    }
    pub fn seconds(self, seconds: f64) -> Self {
        Self {
            seconds: Some(seconds),
            ..self
        }
    }
    pub fn api_calls(self, calls: ApiCalls) -> Self {
        Self {
            api_calls: Some(calls),
            ..self
        }
    }
}

/// The `--json` object of a command that failed; a failure report's fields (src/summary.rs)
/// are merged in.
#[derive(Serialize)]
pub struct Failed<'a> {
    ok: bool,
    exit_code: i32,
    error: String,
    help: Option<&'a str>,
    #[serde(flatten)]
    report: Option<&'a serde_json::Value>,
}

impl<'a> Failed<'a> {
    pub fn new(e: &'a Error) -> Self {
        Self {
            ok: false,
            exit_code: e.code() as i32,
            error: e.message(),
            help: e.help.as_deref(),
            report: e.report.as_deref().filter(|r| r.is_object()),
        }
    }
}

/// The AWS API calls a command made, by operation; `mutating` is what changed something.
#[derive(Serialize)]
pub struct ApiCalls {
    total: u32,
    by_operation: BTreeMap<String, u32>,
    mutating: BTreeMap<String, u32>,
    lock: BTreeMap<String, u32>,
}

impl ApiCalls {
    pub fn of(clients: &Clients) -> Self {
        Self::counted(&clients.calls, &clients.lock_calls)
    }

    fn counted(calls: &CallCounter, lock: &CallCounter) -> Self {
        let by_operation = calls.snapshot();
        Self {
            total: by_operation.values().sum(),
            by_operation,
            mutating: calls.mutating(),
            lock: lock.snapshot(),
        }
    }
}

impl std::fmt::Display for ApiCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| std::fmt::Error)?)
    }
}

/// The error with `api_calls` added to its report.
pub fn with_api_calls(e: Error, calls: ApiCalls) -> Error {
    let mut report = e
        .report
        .as_deref()
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    report["api_calls"] = serde_json::to_value(calls).unwrap_or_default();
    e.with_report(report)
}

/// `<out>/summary.md`, the job summary and the step outputs. The summary file is a
/// convenience; failing to write it must not fail a deploy. The step outputs are not: later
/// steps of the job would read them empty, so failing to write them is an error (exit 1).
pub fn write_summaries(out_dir: &Path, md: &str, outputs: &str, ui: &Ui) -> Result<()> {
    if let Err(e) = std::fs::write(out_dir.join("summary.md"), md) {
        ui.warn(format!(
            "could not write {}/summary.md: {e}",
            out_dir.display()
        ));
    }
    for (var, text) in [("GITHUB_STEP_SUMMARY", md), ("GITHUB_OUTPUT", outputs)] {
        summary::append_env_file(var, text).map_err(|e| {
            Error::failure(format!(
                "could not write ${var} ({e}): later steps of the job would read empty outputs (the command's own summary is in {}/summary.md)",
                out_dir.display()
            ))
            .because(e)
            .with_help(format!("make ${var} a writable file, or unset it outside GitHub Actions"))
        })?;
    }
    Ok(())
}

/// A failed `up`/`redeploy`: the job summary, outputs and `--json` still say what happened
/// and what exists now; the error gains the list.
pub struct FailedDeploy<'a> {
    pub command: &'a str,
    pub project: &'a str,
    pub target: &'a str,
    pub exists: Vec<String>,
    pub out_dir: &'a Path,
}

impl FailedDeploy<'_> {
    pub fn report(self, e: Error, ui: &Ui) -> Error {
        // Bad input and a held lock changed nothing: no report to write.
        if matches!(e.code(), ExitCode::BadInput | ExitCode::Locked) {
            return e;
        }
        let f = summary::Failure::new(self.command, self.project, self.target, &e, self.exists);
        let _ = std::fs::create_dir_all(self.out_dir);
        if let Err(w) = write_summaries(
            self.out_dir,
            &summary::failure_markdown(&f),
            &summary::failure_outputs(&f),
            ui,
        ) {
            ui.warn(w.message());
        }
        let now = if f.exists_now.is_empty() {
            "nothing of the project".to_string()
        } else {
            f.exists_now.join(", ")
        };
        let report = serde_json::to_value(&f).unwrap_or_default();
        e.with_note(format!("exists now: {now}"))
            .with_report(report)
    }
}
