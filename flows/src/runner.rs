//! The loop: one iteration = one flow run of extract -> transform -> load -> alert.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::alert::{self, Crossing, CrossingState, Slack, Threshold, ThresholdOrigin};
use crate::config::Config;
use crate::identity::Identity;
use crate::lease::{Lease, Standing};
use crate::logs::{self, Level};
use crate::prefect::RunState;
use crate::report::{LogRecord, Report, Reporter, TaskRecord};
use crate::sink::Sink;
use crate::source::{self, PriceSource};
use crate::transform::{self, PriceRow};
use std::sync::Arc;

/// Threshold reads from Prefect may not hold the alert task longer than this.
const THRESHOLD_BUDGET: Duration = Duration::from_secs(2);
/// Longest pause after repeated failures.
const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(60);
/// How often a long iteration asks Prefect whether its run was cancelled from the UI.
const CANCEL_POLL: Duration = Duration::from_secs(1);

pub struct Runner {
    cfg: Config,
    /// This instance (the `holder` column of every row).
    instance: String,
    /// The single-consumer lease, when on (src/lease.rs).
    lease: Option<Arc<Lease>>,
    source: Box<dyn PriceSource>,
    sink: Sink,
    slack: Option<Slack>,
    reporter: Reporter,
    crossing: Mutex<CrossingState>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub iterations: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// What one task returns besides its value: the line that goes into its log.
struct TaskOk<T> {
    value: T,
    message: String,
}

#[derive(Clone)]
struct CurrentTask {
    id: Uuid,
    name: &'static str,
    start: DateTime<Utc>,
    upstream: Option<Uuid>,
}

/// Per-iteration context: identity plus the in-flight task, so an aborted iteration can still
/// close the task run it was in.
struct Iteration<'a> {
    run_id: Uuid,
    number: u64,
    reporter: &'a Reporter,
    current: Mutex<Option<CurrentTask>>,
}

impl Iteration<'_> {
    fn log(
        &self,
        level: Level,
        task_run_id: Option<Uuid>,
        task: Option<&str>,
        message: &str,
        extra: Value,
    ) {
        let at = Utc::now();
        let mut fields = json!({ "run_id": self.run_id, "iteration": self.number });
        if let Some(t) = task {
            fields["task"] = json!(t);
        }
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                fields[k] = v;
            }
        }
        logs::emit_at(at, level, message, fields);
        self.reporter.send(Report::Log(LogRecord {
            run_id: self.run_id,
            task_run_id,
            level,
            message: message.to_string(),
            at,
        }));
    }

    /// Runs one task: catches errors and panics, reports the task run with its upstream edge.
    async fn task<T, F>(
        &self,
        name: &'static str,
        upstream: Option<Uuid>,
        fut: F,
    ) -> Result<(T, Uuid), String>
    where
        F: Future<Output = Result<TaskOk<T>, String>>,
    {
        let id = Uuid::new_v4();
        let start = Utc::now();
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(CurrentTask {
            id,
            name,
            start,
            upstream,
        });
        let outcome = match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(r) => r,
            Err(panic) => Err(format!("task panicked: {}", panic_message(&*panic))),
        };
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let end = Utc::now();
        let elapsed_ms = (end - start).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        let (state, message) = match &outcome {
            Ok(ok) => (RunState::Completed, ok.message.clone()),
            Err(e) => (RunState::Failed, e.clone()),
        };
        let level = if state == RunState::Completed {
            Level::Info
        } else {
            Level::Error
        };
        self.log(
            level,
            Some(id),
            Some(name),
            &message,
            json!({ "task_ms": elapsed_ms }),
        );
        self.reporter.send(Report::Task(TaskRecord {
            id,
            run_id: self.run_id,
            task: name,
            iteration: self.number,
            start,
            end,
            state,
            message,
            upstream,
        }));
        outcome.map(|ok| (ok.value, id))
    }

    /// Closes the task run an aborted iteration was in.
    fn cancel_current(&self, why: &str) {
        let current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(c) = current {
            self.reporter.send(Report::Task(TaskRecord {
                id: c.id,
                run_id: self.run_id,
                task: c.name,
                iteration: self.number,
                start: c.start,
                end: Utc::now(),
                state: RunState::Cancelled,
                message: why.to_string(),
                upstream: c.upstream,
            }));
        }
    }
}

pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}

impl Runner {
    pub fn new(
        cfg: Config,
        reporter: Reporter,
        identity: &Identity,
        lease: Option<Arc<Lease>>,
    ) -> Result<Self, crate::http::ClientError> {
        let source = source::build(
            &cfg.source,
            cfg.source_timeout,
            cfg.source_retries,
            cfg.source_max_bytes,
        )?;
        let sink = Sink::new(&cfg.sink)?;
        let slack = cfg
            .alert
            .slack_webhook
            .clone()
            .map(Slack::new)
            .transpose()?;
        Ok(Runner {
            cfg,
            instance: identity.instance.clone(),
            lease,
            source,
            sink,
            slack,
            reporter,
            crossing: Mutex::new(CrossingState::default()),
        })
    }

    pub fn describe(&self) -> Value {
        json!({
            "source": self.source.describe(),
            "sink": self.sink.describe(),
            "interval_seconds": self.cfg.interval.as_secs_f64(),
            "iterations": self.cfg.iterations,
            "prefect": self.reporter.enabled(),
            "slack": self.slack.is_some(),
            "threshold_variable": self.cfg.alert.variable,
            "threshold_block": self.cfg.alert.block,
            "threshold_fallback": self.cfg.alert.fallback,
            "health_file": self.cfg.health_file.display().to_string(),
            "leader_lease": self.lease.is_some(),
        })
    }

    /// Runs until `--iterations` are done or `shutdown` flips to true.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Summary {
        let mut summary = Summary::default();
        let mut consecutive_failures: u32 = 0;
        let limit = if self.cfg.replay.is_some() {
            Some(1)
        } else {
            self.cfg.iterations
        };
        loop {
            if *shutdown.borrow() || limit.is_some_and(|n| summary.iterations >= n) {
                break;
            }
            if let Some(lease) = &self.lease {
                let health = &self.cfg.health_file;
                let pause = self.cfg.interval;
                let standby = |s: &Standing| -> futures::future::BoxFuture<'static, ()> {
                    Box::pin(write_standby_health(health.clone(), s.clone(), pause))
                };
                if !lease.ensure(&mut shutdown, &standby).await {
                    break;
                }
            }
            summary.iterations += 1;
            let state = self.one(summary.iterations, shutdown.clone()).await;
            match state {
                RunState::Completed => {
                    summary.completed += 1;
                    consecutive_failures = 0;
                }
                RunState::Failed => {
                    summary.failed += 1;
                    consecutive_failures += 1;
                }
                RunState::Cancelled => summary.cancelled += 1,
            }
            let mut pause = self.cfg.interval;
            if consecutive_failures > 0 {
                // Back off after consecutive failures so a broken source is not hammered.
                let b = source::backoff(
                    consecutive_failures - 1,
                    Duration::from_secs(1),
                    MAX_FAILURE_BACKOFF,
                );
                pause = pause.max(b);
            }
            write_health(&self.cfg.health_file, state, pause).await;
            if limit.is_some_and(|n| summary.iterations >= n) || *shutdown.borrow() {
                break;
            }
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
            }
        }
        summary
    }

    /// One iteration with its flow run; returns how the run ended.
    async fn one(&self, number: u64, mut shutdown: watch::Receiver<bool>) -> RunState {
        // UUIDv7: the id carries the iteration's time, which names its date partition, so a
        // replay (REPLAY_RUN_ID) lands where the original did, whatever day it runs.
        let run_id = self.cfg.replay.unwrap_or_else(Uuid::now_v7);
        let started = Utc::now();
        let clock = Instant::now();
        self.reporter.send(Report::RunStarted {
            run_id,
            iteration: number,
            started,
            replay_of: self.cfg.replay,
        });
        let it = Iteration {
            run_id,
            number,
            reporter: &self.reporter,
            current: Mutex::new(None),
        };
        let grace = self.cfg.shutdown_grace;
        let outcome = tokio::select! {
            r = self.iteration(&it) => r.map_err(|e| (RunState::Failed, e)),
            why = watch_cancel(&self.reporter, run_id) => Err((RunState::Cancelled, why)),
            _ = async {
                let _ = shutdown.wait_for(|s| *s).await;
                tokio::time::sleep(grace).await;
            } => Err((RunState::Cancelled, format!("shutdown grace of {:.1}s exceeded", grace.as_secs_f64()))),
        };
        let data_ms = clock.elapsed().as_secs_f64() * 1000.0;
        let (state, message) = match outcome {
            Ok(msg) => (RunState::Completed, msg),
            Err((state, msg)) => {
                if state == RunState::Cancelled {
                    it.cancel_current(&msg);
                }
                (state, msg)
            }
        };
        let level = match state {
            RunState::Completed => Level::Info,
            RunState::Failed => Level::Error,
            RunState::Cancelled => Level::Warning,
        };
        it.log(
            level,
            None,
            None,
            &format!(
                "iteration {}: {message}",
                state.display_name().to_lowercase()
            ),
            json!({ "event": "iteration", "state": state.type_name(), "data_path_ms": data_ms }),
        );
        self.reporter.send(Report::RunFinished {
            run_id,
            state,
            message,
            ended: Utc::now(),
        });
        state
    }

    async fn iteration(&self, it: &Iteration<'_>) -> Result<String, String> {
        // Start the threshold read now so Prefect latency overlaps extract/load.
        let threshold = self.spawn_threshold();

        let (quotes, extract_id) = it
            .task("extract", None, async {
                let quotes = self.source.fetch().await.map_err(|e| e.to_string())?;
                Ok(TaskOk {
                    message: format!(
                        "fetched {} price(s) from {}",
                        quotes.len(),
                        self.source.describe()
                    ),
                    value: quotes,
                })
            })
            .await?;

        let (parts, transform_id) = it
            .task("transform", Some(extract_id), async {
                let rows =
                    transform::to_rows(&quotes, Utc::now(), it.run_id, it.number, &self.instance);
                let parts = transform::partition(rows);
                let mut encoded = Vec::with_capacity(parts.len());
                let mut n = 0;
                for (p, rows) in &parts {
                    n += rows.len();
                    encoded.push((
                        p.key(it.run_id),
                        transform::to_parquet(rows).map_err(|e| e.to_string())?,
                    ));
                }
                Ok(TaskOk {
                    message: format!("{n} row(s) in {} partition(s)", parts.len()),
                    value: (
                        encoded,
                        parts.into_values().flatten().collect::<Vec<PriceRow>>(),
                    ),
                })
            })
            .await?;
        let (files, rows) = parts;

        let ((), load_id) = it
            .task("load", Some(transform_id), async {
                let mut written = Vec::with_capacity(files.len());
                for (key, body) in files {
                    written.push(self.sink.put(&key, body).await.map_err(|e| e.to_string())?);
                }
                Ok(TaskOk {
                    message: format!("wrote {} file(s): {}", written.len(), written.join(", ")),
                    value: (),
                })
            })
            .await?;

        let (alert_msg, _) = it
            .task("alert", Some(load_id), self.alert(it, &rows, threshold))
            .await?;
        Ok(format!("{} row(s) loaded; {alert_msg}", rows.len()))
    }

    fn spawn_threshold(&self) -> tokio::task::JoinHandle<(Option<Threshold>, Vec<String>)> {
        let settings = self.cfg.alert.clone();
        let client = self.reporter.client();
        tokio::spawn(async move {
            alert::resolve_threshold(&settings, client.as_ref(), THRESHOLD_BUDGET).await
        })
    }

    /// Kept whole: one threshold crossing, from the price row to the Slack post and the task
    /// record.
    async fn alert(
        &self,
        it: &Iteration<'_>,
        rows: &[PriceRow],
        threshold: tokio::task::JoinHandle<(Option<Threshold>, Vec<String>)>,
    ) -> Result<TaskOk<String>, String> {
        let symbol = &self.cfg.alert.symbol;
        let pick = |c: &str| rows.iter().find(|r| &r.symbol == symbol && r.currency == c);
        let Some(row) = pick("USD").or_else(|| rows.iter().find(|r| &r.symbol == symbol)) else {
            return Ok(TaskOk {
                value: format!("{symbol} not in payload; nothing to compare"),
                message: format!("{symbol} not in payload; nothing to compare"),
            });
        };
        let (threshold, notes) = threshold
            .await
            .unwrap_or((None, vec!["threshold read crashed".into()]));
        for note in notes {
            it.log(Level::Warning, None, Some("alert"), &note, json!({}));
        }
        let Some(t) = threshold else {
            let m = "no threshold configured (PRICE_THRESHOLD_VARIABLE/BLOCK/PRICE_THRESHOLD)"
                .to_string();
            return Ok(TaskOk {
                value: m.clone(),
                message: m,
            });
        };
        let origin = match &t.origin {
            ThresholdOrigin::Variable(n) => format!("Prefect Variable `{n}`"),
            ThresholdOrigin::Block(n) => format!("Prefect String block `{n}`"),
            ThresholdOrigin::Environment => "PRICE_THRESHOLD".to_string(),
        };
        let crossing = self
            .crossing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .observe(row.price, t.value);
        let fields = json!({ "symbol": symbol, "price": row.price, "threshold": t.value, "threshold_origin": origin });
        let msg = match crossing {
            Crossing::Down => {
                let text = format!(
                    "{symbol} price {:.2} {} fell below the threshold {} ({origin})",
                    row.price, row.currency, t.value
                );
                it.log(
                    Level::Warning,
                    None,
                    Some("alert"),
                    &format!("ALERT: {text}"),
                    fields,
                );
                if let Some(slack) = &self.slack {
                    if let Err(e) = slack.post(&text).await {
                        // Try again next iteration rather than lose the alert.
                        self.crossing
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .undo_down();
                        return Err(e.to_string());
                    }
                    format!("alert posted to Slack: {text}")
                } else {
                    format!("alert (no SLACK_WEBHOOK_URL set): {text}")
                }
            }
            Crossing::Recovered => {
                let text = format!(
                    "{symbol} recovered: {:.2} is at or above the threshold {} ({origin})",
                    row.price, t.value
                );
                it.log(Level::Info, None, Some("alert"), &text, fields);
                text
            }
            Crossing::StillBelow => format!(
                "{symbol} {:.2} still below {} (already alerted)",
                row.price, t.value
            ),
            Crossing::StillAbove => {
                format!("{symbol} {:.2} above threshold {}", row.price, t.value)
            }
        };
        Ok(TaskOk {
            value: msg.clone(),
            message: msg,
        })
    }
}

/// Resolves when Prefect says the run is CANCELLING/CANCELLED (UI cancellation). Fast
/// iterations never poll: the first check happens after CANCEL_POLL.
async fn watch_cancel(reporter: &Reporter, run_id: Uuid) -> String {
    let Some(client) = reporter.client() else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(CANCEL_POLL).await;
        let Some(fr) = reporter.flow_run_id(run_id) else {
            continue;
        };
        if let Ok(Some(state)) = client.flow_run_state(fr).await
            && matches!(state.as_str(), "CANCELLING" | "CANCELLED")
        {
            return "cancelled from Prefect".to_string();
        }
    }
}

/// Stamps the health file read by `price-stream healthcheck`. Failures are logged, once.
async fn write_health(path: &Path, state: RunState, pause: Duration) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let body = json!({
        "last_iteration_end_unix": Utc::now().timestamp(),
        "last_state": state.type_name(),
        "pause_seconds": pause.as_secs_f64(),
    })
    .to_string();
    let result = write_file_atomically(path, &body).await;
    if let Err(e) = result
        && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        logs::warn(
            "cannot write health file; set HEALTH_FILE to a writable path",
            json!({ "path": path.display().to_string(), "error": e.to_string() }),
        );
    }
}

/// A standby (or fenced) instance is healthy: it is ready to take over, and replacing it
/// would not help. The health file says why it does not iterate.
async fn write_standby_health(path: PathBuf, standing: Standing, pause: Duration) {
    let (state, note) = match &standing {
        Standing::Standby(holder) => (
            "STANDBY",
            format!(
                "standby, lease held by {}",
                holder.as_deref().unwrap_or("another instance")
            ),
        ),
        Standing::Unreachable(e) => ("FENCED", format!("fenced, Prefect unreachable: {e}")),
        Standing::Holder => return,
    };
    let body = json!({
        "last_iteration_end_unix": Utc::now().timestamp(),
        "last_state": state,
        "note": note,
        "pause_seconds": pause.as_secs_f64(),
    });
    let _ = write_file_atomically(&path, &body.to_string()).await;
}

/// tokio::fs: the one runtime thread also carries the reporter and the lease renewals.
async fn write_file_atomically(path: &Path, body: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, body).await?;
    tokio::fs::rename(&tmp, path).await
}

/// `price-stream healthcheck`: healthy when the last iteration ended within
/// max(min_seconds, max_intervals x pause).
pub fn check_health(
    path: &Path,
    max_intervals: u32,
    min_seconds: u64,
    now: i64,
) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "no health file at {} ({e}): no iteration has ended yet",
            path.display()
        )
    })?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("unreadable health file: {e}"))?;
    let last = v["last_iteration_end_unix"]
        .as_i64()
        .ok_or("health file lacks last_iteration_end_unix")?;
    let pause = v["pause_seconds"].as_f64().unwrap_or(0.0);
    let allowed = (pause * f64::from(max_intervals)).max(min_seconds as f64);
    let age = (now - last) as f64;
    if age <= allowed {
        if let Some(note) = v["note"].as_str() {
            return Ok(format!("healthy: {note} ({age:.0}s ago)"));
        }
        Ok(format!(
            "healthy: last iteration ended {age:.0}s ago ({})",
            v["last_state"].as_str().unwrap_or("?")
        ))
    } else {
        Err(format!(
            "unhealthy: last iteration ended {age:.0}s ago, allowed {allowed:.0}s"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iteration(reporter: &Reporter) -> Iteration<'_> {
        Iteration {
            run_id: Uuid::new_v4(),
            number: 1,
            reporter,
            current: Mutex::new(None),
        }
    }

    #[tokio::test]
    async fn panicking_task_becomes_a_failure() {
        let r = Reporter::disabled();
        let it = iteration(&r);
        let out: Result<((), Uuid), String> = it
            .task("extract", None, async {
                if it.number == 1 {
                    panic!("bad input");
                }
                Ok(TaskOk {
                    value: (),
                    message: String::new(),
                })
            })
            .await;
        let err = out.unwrap_err();
        assert!(
            err.contains("panicked") && err.contains("bad input"),
            "{err}"
        );
        assert!(it.current.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn health_check_ages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/health");
        assert!(check_health(&path, 3, 60, 0).is_err());
        write_health(&path, RunState::Completed, Duration::from_secs(100)).await;
        let now = Utc::now().timestamp();
        assert!(check_health(&path, 3, 60, now + 250).is_ok());
        assert!(check_health(&path, 3, 60, now + 400).is_err());
    }
}
