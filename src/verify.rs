//! A verdict that includes the pipeline (`deployment.verify`): after the platform reports the
//! deployment complete (ECS, or the local roll), wait until the new revision's own flow runs
//! show that it does its work. The bundled flow tags every run with `service:<s>` and
//! `revision:<r>` (flows/src/identity.rs), so Prefect is asked for exactly this revision's
//! runs: `flow_runs` COMPLETED make it good, as many FAILED/CRASHED first make it bad, nothing
//! decisive within `within` seconds is a timeout (exit 3).
//!
//! The deployer reads `PREFECT_API_URL` / `PREFECT_API_KEY` from its own environment (the
//! same values it stores as secrets); the key is held as a secret and never printed.

use crate::config::Verify;
use crate::error::{Error, Result};
use crate::ui::Ui;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_secs(2);

/// Prefect's REST API, as far as the verdict needs it.
pub struct Prefect {
    http: reqwest::Client,
    base: String,
    key: Option<SecretString>,
}

impl Prefect {
    /// From the deployer's environment; `fallback_url` (the service's own plain
    /// `PREFECT_API_URL`, on the local target) when the environment has none.
    pub fn from_env(fallback_url: Option<&str>) -> Result<Self> {
        let url = std::env::var("PREFECT_API_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .or_else(|| fallback_url.map(str::to_string))
            .ok_or_else(|| {
                Error::bad_input("deployment.verify needs Prefect: PREFECT_API_URL is not set")
                    .with_help("export PREFECT_API_URL (and PREFECT_API_KEY for Prefect Cloud) in the deployer's environment, or remove deployment.verify")
            })?;
        let parsed = reqwest::Url::parse(url.trim()).map_err(|e| {
            Error::bad_input(format!("PREFECT_API_URL is not a URL ({e})"))
                .with_help("e.g. http://127.0.0.1:4200/api")
        })?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| Error::failure(format!("cannot build an HTTP client: {e}")).because(e))?;
        Ok(Self {
            http,
            base: parsed.as_str().trim_end_matches('/').to_string(),
            key: std::env::var("PREFECT_API_KEY")
                .ok()
                .filter(|k| !k.is_empty())
                .map(SecretString::from),
        })
    }

    /// The runs carrying every tag in `tags`, oldest first (at most 200).
    async fn runs(&self, tags: &[String]) -> std::result::Result<Vec<Value>, String> {
        let mut req = self
            .http
            .post(format!("{}/flow_runs/filter", self.base))
            .json(&json!({ "flow_runs": { "tags": { "all_": tags } }, "sort": "START_TIME_ASC", "limit": 200 }));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key.expose_secret());
        }
        // Errors carry no URL: a Cloud URL names the account.
        let resp = req.send().await.map_err(|e| e.without_url().to_string())?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("Prefect answered HTTP {status}"));
        }
        resp.json::<Value>()
            .await
            .map(|v| v.as_array().cloned().unwrap_or_default())
            .map_err(|e| e.without_url().to_string())
    }
}

/// One run that ended badly, for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct BadRun {
    pub name: String,
    pub state: String,
    pub message: String,
}

/// What the verdict saw.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub revision: String,
    pub completed: u32,
    pub failed: Vec<BadRun>,
    pub seconds: f64,
}

/// How the pipeline check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Passed,
    Failed,
    TimedOut,
}

/// Wait for the verdict on the runs tagged `service:<service>` and `revision:<revision>`.
pub async fn wait(
    prefect: &Prefect,
    service: &str,
    revision: &str,
    v: &Verify,
    ui: &Ui,
) -> (Verdict, Report) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(v.within);
    let tags = [format!("service:{service}"), format!("revision:{revision}")];
    let mut report = Report {
        revision: revision.to_string(),
        completed: 0,
        failed: Vec::new(),
        seconds: 0.0,
    };
    let spinner = ui.spinner(format!(
        "{service}: waiting for {} completed flow run(s) of revision {revision} in Prefect",
        v.flow_runs
    ));
    let mut last_error = None;
    let verdict = loop {
        match prefect.runs(&tags).await {
            Ok(runs) => {
                last_error = None;
                tally(&runs, &mut report);
                if report.completed >= v.flow_runs {
                    break Verdict::Passed;
                }
                if u32::try_from(report.failed.len()).unwrap_or(u32::MAX) >= v.flow_runs {
                    break Verdict::Failed;
                }
            }
            Err(e) => {
                if last_error.is_none() {
                    ui.warn(format!("{service}: verify: {e}; retrying"));
                }
                last_error = Some(e);
            }
        }
        if Instant::now() >= deadline || crate::interrupt::requested() {
            break Verdict::TimedOut;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = crate::interrupt::cancelled() => {}
        }
    };
    report.seconds = started.elapsed().as_secs_f64();
    spinner.finish(format!(
        "{service}: verify {}: {} completed, {} failed run(s) of revision {revision} in {:.1}s{}",
        match verdict {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::TimedOut => "timed out",
        },
        report.completed,
        report.failed.len(),
        report.seconds,
        last_error.map_or(String::new(), |e| format!(" (last error: {e})"))
    ));
    (verdict, report)
}

fn tally(runs: &[Value], report: &mut Report) {
    report.completed = 0;
    report.failed.clear();
    for r in runs {
        match r["state_type"].as_str() {
            Some("COMPLETED") => report.completed += 1,
            Some(s @ ("FAILED" | "CRASHED")) => report.failed.push(BadRun {
                name: r["name"].as_str().unwrap_or("").to_string(),
                state: s.to_string(),
                message: r["state"]["message"].as_str().unwrap_or("").to_string(),
            }),
            _ => {}
        }
    }
}

/// The error for a bad or missing verdict: exit 4 when the deployer rolled back, 1 when the
/// new revision stays, 3 on the deadline.
pub fn error(
    service: &str,
    verdict: Verdict,
    report: &Report,
    v: &Verify,
    rolled_back_to: Option<&str>,
) -> Error {
    let mut msg = match verdict {
        Verdict::TimedOut => format!(
            "{service}: revision {} did not complete {} flow run(s) within {} s (deployment.verify)",
            report.revision, v.flow_runs, v.within
        ),
        _ => format!(
            "{service}: revision {} failed its pipeline check: {} flow run(s) failed before {} completed (deployment.verify)",
            report.revision,
            report.failed.len(),
            v.flow_runs
        ),
    };
    for r in report.failed.iter().take(5) {
        msg.push_str(&format!("\n  {} {}: {}", r.name, r.state, r.message));
    }
    let (kind, help): (fn(String) -> Error, _) = match (verdict, rolled_back_to) {
        (Verdict::TimedOut, _) => (Error::timeout, "check that the flow reaches Prefect (PREFECT_API_URL) and tags its runs; raise deployment.verify.within if runs are slow".to_string()),
        (_, Some(prev)) => {
            msg.push_str(&format!("\n  rolled back to revision {prev} (deployment.verify.rollback)"));
            (Error::rolled_back, "fix the flow (its failed runs are above), then deploy again".to_string())
        }
        (_, None) => (Error::failure, "the new revision is still running; fix it and deploy again, or `deployer rollback` (set deployment.verify.rollback: true to roll back automatically)".to_string()),
    };
    kind(msg).with_help(help)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExitCode;

    #[test]
    fn tally_counts_completed_and_keeps_the_failures_messages() {
        let runs = vec![
            json!({"state_type": "COMPLETED", "name": "a"}),
            json!({"state_type": "FAILED", "name": "b", "state": {"message": "extract: connection refused"}}),
            json!({"state_type": "RUNNING", "name": "c"}),
            json!({"state_type": "CRASHED", "name": "d", "state": {"message": "instance x lost"}}),
        ];
        let mut r = Report {
            revision: "r".into(),
            completed: 0,
            failed: vec![],
            seconds: 0.0,
        };
        tally(&runs, &mut r);
        assert_eq!(r.completed, 1);
        assert_eq!(r.failed.len(), 2);
        let v = Verify {
            flow_runs: 2,
            within: 60,
            rollback: true,
        };
        let e = error("svc", Verdict::Failed, &r, &v, Some("1"));
        assert_eq!(e.code(), ExitCode::RolledBack);
        assert!(
            e.message().contains("connection refused")
                && e.message().contains("rolled back to revision 1"),
            "{}",
            e.message()
        );
        assert_eq!(
            error("svc", Verdict::Failed, &r, &v, None).code(),
            ExitCode::Failure
        );
        assert_eq!(
            error("svc", Verdict::TimedOut, &r, &v, None).code(),
            ExitCode::Timeout
        );
    }
}
