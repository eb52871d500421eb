//! Prefect over REST, off the data path.
//!
//! Per flow run the reporter sends 2 requests (create RUNNING, final state). Task runs travel
//! as `prefect.task-run.*` events (what the Python SDK does; the server's task run recorder
//! turns them into task runs with the client's start/end times) and logs go to `/logs/`;
//! both are batched across iterations, so they add well under one request per iteration.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::{PrefectSettings, Secret};
use crate::logs::{self, Level};
use crate::source::backoff;

const TASK_KEY_PREFIX: &str = "price_stream";
/// Bulk items (task events, logs) wait at most this long before they are sent.
const BULK_LINGER: Duration = Duration::from_secs(3);
const BULK_MAX: usize = 200;
/// Bulk items kept while Prefect is down; beyond this they are dropped (and counted).
const BULK_HOLD_MAX: usize = 2_000;
/// Iterations kept waiting for their flow run while Prefect is down; the oldest go first.
const MAX_PENDING_RUNS: usize = 1_000;
/// The SQLite-backed server answers 503 in bursts under write load; ride them out.
const ATTEMPTS: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum PrefectError {
    #[error("Prefect unreachable ({0})")]
    Transport(String),
    #[error("Prefect answered HTTP {status} to {what}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("Prefect sent an unexpected body for {0}")]
    Body(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Completed,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn type_name(self) -> &'static str {
        match self {
            RunState::Completed => "COMPLETED",
            RunState::Failed => "FAILED",
            RunState::Cancelled => "CANCELLED",
        }
    }
    pub fn display_name(self) -> &'static str {
        match self {
            RunState::Completed => "Completed",
            RunState::Failed => "Failed",
            RunState::Cancelled => "Cancelled",
        }
    }
}

/// The outcome of `set_state`: Prefect answers 200 with REJECT/ABORT when it refuses.
#[derive(Debug, Clone, PartialEq)]
pub struct SetState {
    pub accepted: bool,
    pub current_type: Option<String>,
}

pub struct PrefectClient {
    http: reqwest::Client,
    base: String,
    api_key: Option<Secret>,
    requests: AtomicU64,
}

impl PrefectClient {
    pub fn new(base: &str, api_key: Option<Secret>, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .pool_max_idle_per_host(4)
            .build()
            .unwrap_or_default();
        PrefectClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            api_key,
            requests: AtomicU64::new(0),
        }
    }

    /// HTTP requests actually sent, retries included.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// One call with retries on 429/502/503 and transport errors (short jittered backoff).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), PrefectError> {
        self.call_raw(method, path, body.map(Value::to_string))
            .await
    }

    /// `call` with an already serialised JSON body (bulk items are kept as text: a JSON
    /// tree costs several times its text in memory).
    async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Value), PrefectError> {
        let url = format!("{}{}", self.base, path);
        let mut attempt = 0;
        loop {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("X-PREFECT-API-VERSION", "0.8.4");
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key.expose());
            }
            if let Some(b) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = req.send().await;
            let retryable = match &outcome {
                Ok(r) => matches!(r.status().as_u16(), 429 | 502 | 503),
                Err(e) => e.is_connect() || e.is_timeout() || e.is_request(),
            };
            if retryable && attempt + 1 < ATTEMPTS {
                tokio::time::sleep(backoff(
                    attempt,
                    Duration::from_millis(100),
                    Duration::from_secs(2),
                ))
                .await;
                attempt += 1;
                continue;
            }
            // without_url: a Cloud URL names the account; the key is a header and never printed.
            let resp = outcome.map_err(|e| PrefectError::Transport(logs::http_error(e)))?;
            let status = resp.status();
            let text = resp
                .text()
                .await
                .map_err(|e| PrefectError::Transport(logs::http_error(e)))?;
            if status.is_success() || status == StatusCode::NOT_FOUND {
                let value = if text.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&text).unwrap_or(Value::Null)
                };
                return Ok((status, value));
            }
            return Err(PrefectError::Status {
                what: format!("{method} {path}"),
                status: status.as_u16(),
                body: text.chars().take(300).collect(),
            });
        }
    }

    fn id_of(what: &str, v: &Value) -> Result<Uuid, PrefectError> {
        v.get("id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| PrefectError::Body(what.into()))
    }

    pub async fn ensure_flow(&self, name: &str) -> Result<Uuid, PrefectError> {
        let (_, v) = self
            .call(Method::POST, "/flows/", Some(&json!({ "name": name })))
            .await?;
        Self::id_of("POST /flows/", &v)
    }

    pub async fn create_flow_run(&self, body: &Value) -> Result<Uuid, PrefectError> {
        let (_, v) = self.call(Method::POST, "/flow_runs/", Some(body)).await?;
        Self::id_of("POST /flow_runs/", &v)
    }

    pub async fn set_flow_run_state(
        &self,
        id: Uuid,
        state: &str,
        message: &str,
    ) -> Result<SetState, PrefectError> {
        let body = json!({ "state": { "type": state, "message": message } });
        let (_, v) = self
            .call(
                Method::POST,
                &format!("/flow_runs/{id}/set_state"),
                Some(&body),
            )
            .await?;
        let status = v.get("status").and_then(Value::as_str).unwrap_or("");
        Ok(SetState {
            accepted: status == "ACCEPT",
            current_type: v
                .pointer("/state/type")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// The run's current state type, None when the run does not exist.
    pub async fn flow_run_state(&self, id: Uuid) -> Result<Option<String>, PrefectError> {
        let (status, v) = self
            .call(Method::GET, &format!("/flow_runs/{id}"), None)
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(v.get("state_type")
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    pub async fn post_events(&self, events: &[String]) -> Result<(), PrefectError> {
        self.call_raw(Method::POST, "/events", Some(json_array(events)))
            .await
            .map(|_| ())
    }

    pub async fn post_logs(&self, logs: &[String]) -> Result<(), PrefectError> {
        self.call_raw(Method::POST, "/logs/", Some(json_array(logs)))
            .await
            .map(|_| ())
    }

    /// A Variable's value (any JSON), None when it does not exist.
    pub async fn variable(&self, name: &str) -> Result<Option<Value>, PrefectError> {
        let (status, v) = self
            .call(
                Method::GET,
                &format!("/variables/name/{}", encode(name)),
                None,
            )
            .await?;
        Ok((status != StatusCode::NOT_FOUND)
            .then(|| v.get("value").cloned().unwrap_or(Value::Null)))
    }

    /// A String block's `value`, None when the block (or its type) does not exist.
    pub async fn string_block(&self, name: &str) -> Result<Option<Value>, PrefectError> {
        let path = format!(
            "/block_types/slug/string/block_documents/name/{}",
            encode(name)
        );
        let (status, v) = self.call(Method::GET, &path, None).await?;
        Ok((status != StatusCode::NOT_FOUND)
            .then(|| v.pointer("/data/value").cloned().unwrap_or(Value::Null)))
    }
}

/// A flow run left open (RUNNING/PENDING), for crash reconciliation.
#[derive(Debug, Clone)]
pub struct OpenRun {
    pub id: Uuid,
    /// From its `instance:` tag.
    pub instance: Option<String>,
    pub start: Option<String>,
}

/// The leader lease's calls (src/lease.rs): a one-slot global concurrency limit with leases,
/// and the Variable that names the holder.
impl PrefectClient {
    /// Create the one-slot limit unless it exists.
    pub async fn ensure_single_slot_limit(&self, name: &str) -> Result<(), PrefectError> {
        let body = json!({ "name": name, "limit": 1 });
        match self
            .call(Method::POST, "/v2/concurrency_limits/", Some(&body))
            .await
        {
            Ok(_) => Ok(()),
            Err(PrefectError::Status { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Take the slot for `ttl`: the lease id, or None when another holder has it (HTTP 423).
    pub async fn acquire_lease(
        &self,
        limit: &str,
        ttl: Duration,
    ) -> Result<Option<Uuid>, PrefectError> {
        let body = json!({ "names": [limit], "slots": 1, "lease_duration": ttl.as_secs_f64() });
        match self
            .call(
                Method::POST,
                "/v2/concurrency_limits/increment-with-lease",
                Some(&body),
            )
            .await
        {
            Ok((_, v)) => v
                .get("lease_id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
                .map(Some)
                .ok_or_else(|| PrefectError::Body("increment-with-lease".into())),
            Err(PrefectError::Status { status: 423, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Extend a lease: false when the server no longer has it (expired and reclaimed).
    pub async fn renew_lease(&self, id: Uuid, ttl: Duration) -> Result<bool, PrefectError> {
        let body = json!({ "lease_duration": ttl.as_secs_f64() });
        match self
            .call(
                Method::POST,
                &format!("/v2/concurrency_limits/leases/{id}/renew"),
                Some(&body),
            )
            .await
        {
            Ok((status, _)) => Ok(status != StatusCode::NOT_FOUND),
            Err(PrefectError::Status { status: 410, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn release_lease(&self, id: Uuid) -> Result<(), PrefectError> {
        let body = json!({ "lease_id": id });
        self.call(
            Method::POST,
            "/v2/concurrency_limits/decrement-with-lease",
            Some(&body),
        )
        .await
        .map(|_| ())
    }

    /// Set a Variable (create it when absent).
    pub async fn put_variable(&self, name: &str, value: &Value) -> Result<(), PrefectError> {
        let (status, _) = self
            .call(
                Method::PATCH,
                &format!("/variables/name/{}", encode(name)),
                Some(&json!({ "value": value })),
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            self.call(
                Method::POST,
                "/variables/",
                Some(&json!({ "name": name, "value": value })),
            )
            .await?;
        }
        Ok(())
    }

    /// Flow runs carrying `tag` that are still RUNNING or PENDING.
    pub async fn open_runs(&self, tag: &str) -> Result<Vec<OpenRun>, PrefectError> {
        let body = json!({
            "flow_runs": {
                "tags": { "all_": [tag] },
                "state": { "type": { "any_": ["RUNNING", "PENDING"] } }
            },
            "limit": 200
        });
        let (_, v) = self
            .call(Method::POST, "/flow_runs/filter", Some(&body))
            .await?;
        Ok(v.as_array()
            .map(|runs| {
                runs.iter()
                    .filter_map(|r| {
                        Some(OpenRun {
                            id: Uuid::parse_str(r.get("id")?.as_str()?).ok()?,
                            instance: r
                                .get("tags")
                                .and_then(Value::as_array)
                                .and_then(|t| {
                                    t.iter()
                                        .filter_map(Value::as_str)
                                        .find_map(|t| t.strip_prefix("instance:"))
                                })
                                .map(str::to_string),
                            start: r
                                .get("start_time")
                                .and_then(Value::as_str)
                                .map(str::to_string),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// `[a,b,...]` from serialised JSON values.
fn json_array(items: &[String]) -> String {
    let mut out = String::with_capacity(items.iter().map(|i| i.len() + 1).sum::<usize>() + 2);
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
    out
}

/// Percent-encodes a path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A finished (or cancelled) task run, as the runner saw it.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub id: Uuid,
    pub run_id: Uuid,
    pub task: &'static str,
    pub iteration: u64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub state: RunState,
    pub message: String,
    pub upstream: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub struct LogRecord {
    pub run_id: Uuid,
    pub task_run_id: Option<Uuid>,
    pub level: Level,
    pub message: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug)]
pub enum Report {
    RunStarted {
        run_id: Uuid,
        iteration: u64,
        started: DateTime<Utc>,
        replay_of: Option<Uuid>,
    },
    Task(TaskRecord),
    Log(LogRecord),
    RunFinished {
        run_id: Uuid,
        state: RunState,
        message: String,
    },
}

/// Handle the data path holds: never blocks, drops (and counts) when the queue is full.
#[derive(Clone)]
pub struct Reporter {
    tx: Option<mpsc::Sender<Report>>,
    shared: Arc<Shared>,
}

pub struct Shared {
    pub client: Option<Arc<PrefectClient>>,
    /// run id (ours) -> flow run id (Prefect's), for runs created and not yet finished.
    pub flow_runs: Mutex<HashMap<Uuid, Uuid>>,
    pub dropped: AtomicU64,
    pub delivered: AtomicU64,
    /// Reports queued, and reports delivered or dropped: the gap is what is still in flight.
    accepted: AtomicU64,
    settled: AtomicU64,
}

impl Reporter {
    /// A reporter that reports nothing (no PREFECT_API_URL).
    pub fn disabled() -> Self {
        Reporter {
            tx: None,
            shared: Arc::new(Shared {
                client: None,
                flow_runs: Mutex::new(HashMap::new()),
                dropped: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                accepted: AtomicU64::new(0),
                settled: AtomicU64::new(0),
            }),
        }
    }

    /// Start the reporting worker; every flow run carries `identity` (tags and a parameter).
    pub fn start(
        settings: &PrefectSettings,
        identity: &crate::identity::Identity,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let client = Arc::new(PrefectClient::new(
            &settings.api_url,
            settings.api_key.clone(),
            Duration::from_secs(5),
        ));
        let shared = Arc::new(Shared {
            client: Some(client.clone()),
            flow_runs: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            settled: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let worker = Worker {
            client,
            shared: shared.clone(),
            flow_name: settings.flow_name.clone(),
            tags: std::iter::once(settings.flow_name.clone())
                .chain(identity.tags())
                .collect(),
            deployment: identity.parameter(),
            flow_id: None,
            down_until: None,
            failures: 0,
            events: Vec::new(),
            logs: Vec::new(),
            bulk_since: None,
            pending: VecDeque::new(),
            unfinished: HashMap::new(),
        };
        let handle = tokio::spawn(worker.run(rx));
        (
            Reporter {
                tx: Some(tx),
                shared,
            },
            handle,
        )
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn client(&self) -> Option<Arc<PrefectClient>> {
        self.shared.client.clone()
    }

    pub fn send(&self, report: Report) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(report) {
            Ok(()) => {
                self.shared.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.drop_rejected(e),
        }
    }

    fn drop_rejected(&self, e: mpsc::error::TrySendError<Report>) {
        {
            let kind = match e {
                mpsc::error::TrySendError::Full(_) => "queue full",
                mpsc::error::TrySendError::Closed(_) => "reporter stopped",
            };
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            self.shared.warn_drop(1, kind);
        }
    }

    /// Counts reports still queued or buffered as dropped (after the flush deadline).
    pub fn abandon_pending(&self) -> u64 {
        let accepted = self.shared.accepted.load(Ordering::Relaxed);
        let settled = self.shared.settled.load(Ordering::Relaxed);
        let n = accepted.saturating_sub(settled);
        if n > 0 {
            self.shared.settle(n);
            self.shared.dropped.fetch_add(n, Ordering::Relaxed);
        }
        n
    }

    pub fn flow_run_id(&self, run_id: Uuid) -> Option<Uuid> {
        self.shared.flow_run(run_id)
    }

    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.shared.client.as_ref().map_or(0, |c| c.requests())
    }

    /// Closes the queue; the worker then delivers what is left and ends.
    pub fn close(&mut self) {
        self.tx = None;
    }
}

impl Shared {
    /// Our run id -> Prefect flow run id. A panic elsewhere must not stop reporting, so a
    /// poisoned lock is used as is (the map holds plain ids).
    fn flow_runs(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Uuid>> {
        self.flow_runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flow_run(&self, run_id: Uuid) -> Option<Uuid> {
        self.flow_runs().get(&run_id).copied()
    }

    fn settle(&self, n: u64) {
        self.settled.fetch_add(n, Ordering::Relaxed);
    }

    /// Drops `n` accepted reports.
    fn count_drop(&self, n: u64, reason: &str) {
        self.settle(n);
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.warn_drop(n, reason);
    }

    fn warn_drop(&self, n: u64, reason: &str) {
        let before = self.dropped.load(Ordering::Relaxed).saturating_sub(n);
        // Log the first drop and then every 100th so an outage does not flood the log.
        if before == 0 || (before / 100) != (before + n) / 100 {
            logs::warn(
                "prefect reports dropped",
                json!({ "reason": reason, "dropped_total": before + n }),
            );
        }
    }
}

struct Worker {
    client: Arc<PrefectClient>,
    shared: Arc<Shared>,
    flow_name: String,
    /// The flow name and the deployment identity (src/identity.rs) as Prefect tags.
    tags: Vec<String>,
    /// The `deployment` parameter of every flow run.
    deployment: Value,
    flow_id: Option<Uuid>,
    /// After a failed request nothing is sent before this instant (reports wait meanwhile).
    down_until: Option<Instant>,
    failures: u32,
    /// Serialised task-run events and log entries waiting for the next bulk request.
    events: Vec<String>,
    logs: Vec<String>,
    bulk_since: Option<Instant>,
    /// Iterations whose flow run is not created yet (Prefect slow or down): their reports are
    /// kept here, oldest first, and delivered once the run exists (deferred, not lost).
    pending: VecDeque<PendingRun>,
    /// Flow runs created on the server whose final state is not yet delivered. Retried until
    /// delivered so that no run stays RUNNING after an outage.
    unfinished: HashMap<Uuid, (RunState, String)>,
}

/// An iteration waiting for its flow run to be created.
struct PendingRun {
    run_id: Uuid,
    iteration: u64,
    started: DateTime<Utc>,
    replay_of: Option<Uuid>,
    tasks: Vec<TaskRecord>,
    logs: Vec<LogRecord>,
    finished: Option<(RunState, String)>,
}

impl PendingRun {
    /// Reports held here that are not yet settled (the start and its task runs and logs).
    fn reports(&self) -> u64 {
        1 + (self.tasks.len() + self.logs.len()) as u64
    }
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Report>) {
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = sleep_until_opt(self.next_wake()) => {
                    self.deliver().await;
                    continue;
                }
            };
            let Some(msg) = msg else { break };
            self.handle(msg).await;
            if self.events.len() + self.logs.len() >= BULK_MAX {
                self.flush_bulk().await;
            }
        }
        // Queue closed: keep delivering until everything is out; the caller bounds this with
        // the flush deadline (REPORT_FLUSH_SECONDS) and counts what is left as dropped.
        loop {
            self.down_until = None;
            self.deliver().await;
            if self.idle() {
                break;
            }
            let pause = backoff(
                self.failures.saturating_sub(1),
                Duration::from_millis(200),
                Duration::from_secs(2),
            );
            tokio::time::sleep(pause).await;
        }
    }

    fn idle(&self) -> bool {
        self.pending.is_empty()
            && self.unfinished.is_empty()
            && self.events.is_empty()
            && self.logs.is_empty()
    }

    /// When the loop must wake without a new report: bulk linger expiry, or the end of a
    /// back-off pause while something waits for delivery.
    fn next_wake(&self) -> Option<Instant> {
        let linger = self.bulk_since.map(|t| t + BULK_LINGER);
        let retry = if self.pending.is_empty() && self.unfinished.is_empty() {
            None
        } else {
            Some(
                self.down_until
                    .unwrap_or_else(|| Instant::now() + Duration::from_millis(500)),
            )
        };
        match (linger, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Everything waiting: flow runs to create, bulk items, final states.
    async fn deliver(&mut self) {
        self.create_pending().await;
        self.flush_bulk().await;
    }

    fn is_down(&self) -> bool {
        self.down_until.is_some_and(|t| Instant::now() < t)
    }

    fn mark(&mut self, result: Result<(), &PrefectError>) {
        match result {
            Ok(()) => {
                if self.failures > 0 {
                    logs::info("prefect reachable again", json!({}));
                }
                self.failures = 0;
                self.down_until = None;
            }
            Err(e) => {
                if self.failures == 0 {
                    logs::warn(
                        "prefect reporting failing; data path unaffected, reports deferred",
                        json!({ "error": e.to_string() }),
                    );
                }
                let pause = backoff(
                    self.failures,
                    Duration::from_secs(1),
                    Duration::from_secs(30),
                );
                self.failures += 1;
                self.down_until = Some(Instant::now() + pause);
            }
        }
    }

    async fn handle(&mut self, msg: Report) {
        match msg {
            Report::RunStarted {
                run_id,
                iteration,
                started,
                replay_of,
            } => {
                self.pending.push_back(PendingRun {
                    run_id,
                    iteration,
                    started,
                    replay_of,
                    tasks: Vec::new(),
                    logs: Vec::new(),
                    finished: None,
                });
                if self.pending.len() > MAX_PENDING_RUNS
                    && let Some(old) = self.pending.pop_front()
                {
                    self.shared
                        .count_drop(old.reports(), "prefect unavailable; oldest deferred run");
                }
                self.create_pending().await;
                if !self.is_down() {
                    self.retry_unfinished().await;
                }
            }
            Report::Task(t) => match self.shared.flow_run(t.run_id) {
                Some(fr) => {
                    self.events
                        .extend(task_events(&t, fr).iter().map(Value::to_string));
                    self.bulk_since.get_or_insert_with(Instant::now);
                }
                None => match self.pending.iter_mut().find(|p| p.run_id == t.run_id) {
                    Some(p) => p.tasks.push(t),
                    None => self
                        .shared
                        .count_drop(1, "task run of an unreported flow run"),
                },
            },
            Report::Log(l) => match self.shared.flow_run(l.run_id) {
                Some(fr) => self.push_log(&l, fr),
                None => match self.pending.iter_mut().find(|p| p.run_id == l.run_id) {
                    Some(p) => p.logs.push(l),
                    None => self.shared.count_drop(1, "log of an unreported flow run"),
                },
            },
            Report::RunFinished {
                run_id,
                state,
                message,
            } => {
                self.shared.settle(1);
                let fr = self.shared.flow_runs().remove(&run_id);
                if let Some(fr) = fr {
                    self.unfinished.insert(fr, (state, message));
                    if !self.is_down() {
                        self.finish(fr).await;
                    }
                } else if let Some(p) = self.pending.iter_mut().find(|p| p.run_id == run_id) {
                    p.finished = Some((state, message));
                }
            }
        }
    }

    fn push_log(&mut self, l: &LogRecord, fr: Uuid) {
        self.logs.push(
            json!({
                "name": "price_stream",
                "level": l.level as u8,
                "message": l.message,
                "timestamp": logs::timestamp(l.at),
                "flow_run_id": fr,
                "task_run_id": l.task_run_id,
            })
            .to_string(),
        );
        self.bulk_since.get_or_insert_with(Instant::now);
    }

    /// Creates the flow runs of waiting iterations, oldest first, until one fails.
    async fn create_pending(&mut self) {
        while !self.is_down() {
            let Some(p) = self.pending.front() else { break };
            if self.flow_id.is_none() {
                match self.client.ensure_flow(&self.flow_name).await {
                    Ok(id) => self.flow_id = Some(id),
                    Err(e) => {
                        self.mark(Err(&e));
                        break;
                    }
                }
            }
            let (run_id, iteration) = (p.run_id, p.iteration);
            let mut parameters =
                json!({ "run_id": run_id, "iteration": iteration, "deployment": self.deployment });
            if let Some(r) = p.replay_of {
                parameters["replay_of"] = json!(r);
            }
            let body = json!({
                "flow_id": self.flow_id,
                "name": format!("{}-{iteration}-{}", self.flow_name, &run_id.simple().to_string()[..8]),
                "parameters": parameters,
                "tags": self.tags,
                // Our run id: a retried create returns the same flow run instead of a second one.
                "idempotency_key": run_id.to_string(),
                "state": { "type": "RUNNING", "name": "Running",
                           "message": format!("started {}", logs::timestamp(p.started)) },
            });
            match self.client.create_flow_run(&body).await {
                Ok(fr) => {
                    self.mark(Ok(()));
                    let Some(p) = self.pending.pop_front() else {
                        break;
                    };
                    self.shared.delivered.fetch_add(1, Ordering::Relaxed);
                    self.shared.settle(1);
                    for t in &p.tasks {
                        self.events
                            .extend(task_events(t, fr).iter().map(Value::to_string));
                        self.bulk_since.get_or_insert_with(Instant::now);
                    }
                    for l in &p.logs {
                        self.push_log(l, fr);
                    }
                    match p.finished {
                        Some(fin) => {
                            self.unfinished.insert(fr, fin);
                        }
                        None => {
                            self.shared.flow_runs().insert(run_id, fr);
                        }
                    }
                }
                Err(e) => {
                    self.mark(Err(&e));
                    break;
                }
            }
        }
    }

    /// Delivers a final state. A run cancelled from the UI is CANCELLING; Prefect rejects
    /// every other target then, so we complete the cancellation instead.
    async fn finish(&mut self, fr: Uuid) {
        let Some((state, message)) = self.unfinished.get(&fr).cloned() else {
            return;
        };
        let mut result = self
            .client
            .set_flow_run_state(fr, state.type_name(), &message)
            .await;
        if let Ok(s) = &result
            && !s.accepted
            && matches!(s.current_type.as_deref(), Some("CANCELLING"))
        {
            result = self
                .client
                .set_flow_run_state(fr, "CANCELLED", "cancelled from Prefect")
                .await;
        }
        match result {
            Ok(_) => {
                self.mark(Ok(()));
                self.unfinished.remove(&fr);
            }
            Err(e) => self.mark(Err(&e)),
        }
    }

    async fn retry_unfinished(&mut self) {
        let pending: Vec<Uuid> = self.unfinished.keys().copied().collect();
        for fr in pending {
            if self.is_down() {
                return;
            }
            self.finish(fr).await;
        }
    }

    async fn flush_bulk(&mut self) {
        if self.is_down() {
            // Deferred; bounded so a long outage cannot grow memory without limit.
            let held = self.events.len() / 2 + self.logs.len();
            if held > BULK_HOLD_MAX {
                self.events.clear();
                self.logs.clear();
                self.bulk_since = None;
                self.shared
                    .count_drop(held as u64, "prefect unavailable; buffered reports");
            }
            return;
        }
        self.bulk_since = None;
        for (items, is_events) in [
            (std::mem::take(&mut self.events), true),
            (std::mem::take(&mut self.logs), false),
        ] {
            let per_report = if is_events { 2 } else { 1 };
            for chunk in items.chunks(BULK_MAX) {
                let reports = (chunk.len() / per_report) as u64;
                if self.is_down() {
                    self.shared
                        .count_drop(reports, "prefect unavailable; bulk report");
                    continue;
                }
                let r = if is_events {
                    self.client.post_events(chunk).await
                } else {
                    self.client.post_logs(chunk).await
                };
                match r {
                    Ok(()) => {
                        self.mark(Ok(()));
                        self.shared.delivered.fetch_add(reports, Ordering::Relaxed);
                        self.shared.settle(reports);
                    }
                    Err(e) => {
                        self.mark(Err(&e));
                        self.shared.count_drop(reports, "bulk report failed");
                    }
                }
            }
        }
        self.retry_unfinished().await;
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Two `prefect.task-run.*` events (Running at start, final state at end), shaped like the
/// ones the Python SDK emits, so the server records the task run with our times.
pub fn task_events(t: &TaskRecord, flow_run_id: Uuid) -> Vec<Value> {
    let name = format!("{}-{}", t.task, t.iteration);
    let task_key = format!("{TASK_KEY_PREFIX}.{}", t.task);
    let inputs = match t.upstream {
        Some(up) => json!({ "upstream": [{ "input_type": "task_run", "id": up }] }),
        None => json!({}),
    };
    let run_seconds = (t.end - t.start).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let running = ("RUNNING", "Running", t.start, String::new());
    let last = (
        t.state.type_name(),
        t.state.display_name(),
        t.end,
        t.message.clone(),
    );
    let mut out = Vec::with_capacity(2);
    let mut previous: Option<(&str, &str)> = None;
    for (i, (ty, state_name, at, message)) in [running, last].into_iter().enumerate() {
        let done = i == 1;
        let mut task_run = json!({
            "name": name,
            "task_key": task_key,
            "dynamic_key": t.iteration.to_string(),
            "task_inputs": inputs,
            "tags": [],
            "run_count": 1,
            "flow_run_run_count": 1,
            "start_time": logs::timestamp(t.start),
            "total_run_time": if done { run_seconds } else { 0.0 },
        });
        if done {
            task_run["end_time"] = json!(logs::timestamp(t.end));
        }
        out.push(json!({
            "id": Uuid::new_v4(),
            "occurred": logs::timestamp(at),
            "event": format!("prefect.task-run.{state_name}"),
            "resource": {
                "prefect.resource.id": format!("prefect.task-run.{}", t.id),
                "prefect.resource.name": name,
                "prefect.run-count": "1",
                "prefect.state-message": message,
                "prefect.state-name": state_name,
                "prefect.state-timestamp": logs::timestamp(at),
                "prefect.state-type": ty,
                "prefect.orchestration": "client",
            },
            "related": [{
                "prefect.resource.id": format!("prefect.flow-run.{flow_run_id}"),
                "prefect.resource.role": "flow-run",
            }],
            "payload": {
                "intended": { "from": previous.map(|p| p.0), "to": ty },
                "initial_state": previous.map(|(pt, pn)| json!({ "type": pt, "name": pn, "message": "" })),
                "validated_state": { "type": ty, "name": state_name, "message": message,
                                     "state_details": {}, "data": null },
                "task_run": task_run,
            },
        }));
        previous = Some((ty, state_name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_events_carry_edges_and_times() {
        let up = Uuid::new_v4();
        let t = TaskRecord {
            id: Uuid::new_v4(),
            run_id: Uuid::new_v4(),
            task: "transform",
            iteration: 4,
            start: Utc::now(),
            end: Utc::now(),
            state: RunState::Failed,
            message: "boom".into(),
            upstream: Some(up),
        };
        let fr = Uuid::new_v4();
        let ev = task_events(&t, fr);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0]["event"], "prefect.task-run.Running");
        assert_eq!(ev[1]["event"], "prefect.task-run.Failed");
        assert_eq!(ev[1]["payload"]["validated_state"]["message"], "boom");
        assert_eq!(
            ev[1]["payload"]["task_run"]["task_inputs"]["upstream"][0]["id"],
            json!(up)
        );
        assert_eq!(
            ev[0]["related"][0]["prefect.resource.id"],
            format!("prefect.flow-run.{fr}")
        );
        assert!(ev[0]["payload"]["task_run"].get("end_time").is_none());
    }

    #[test]
    fn names_are_path_encoded() {
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
        assert_eq!(encode("btc_price-1"), "btc_price-1");
    }
}
