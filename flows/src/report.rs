//! Reporting iterations to Prefect, off the data path, with promises that hold through outages.
//!
//! Per iteration: the flow run is created RUNNING when the iteration starts (1 request); when
//! it ends, its task runs go as `prefect.task-run.*` events (what the Python SDK does; the
//! server records them with the client's start and end times) and then its final state
//! (1 + 1). Logs go to `/logs/` in batches (`BULK_LINGER`), after the state if need be.
//!
//! Promises:
//! - **Order.** A run's reports arrive create -> task runs -> final state: a final state is
//!   sent only when no task-run event is held, so no run shows COMPLETED without its tasks.
//! - **Nothing silently lost.** A failed request is retried (with back-off while Prefect is
//!   down), not dropped. What is held is bounded by REPORT_HOLD reports and
//!   REPORT_HOLD_BYTES bytes; past a bound the oldest go first, counted and logged.
//! - **Observed times.** Task runs and logs carry the times the flow saw. Flow-run states are
//!   stamped by the server (its set_state body takes no time), so every run carries the
//!   label `observed.start`, and `observed.end` whenever the final state is delivered late
//!   (more than `LATE` after the iteration ended): Prefect's UI shows delivery times for
//!   such runs, the labels say when they ran.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::PrefectSettings;
use crate::logs::{self, Level};
use crate::prefect::{PrefectClient, PrefectError, RunState};
use crate::source::backoff;
use crate::wire;

const TASK_KEY_PREFIX: &str = "price_stream";
/// Task-run events and logs wait at most this long before they are sent.
const BULK_LINGER: Duration = Duration::from_secs(3);
/// Reports per bulk request.
const BULK_MAX: usize = 200;
/// A final state delivered later than this after the iteration ended is late: the run gets
/// an `observed.end` label.
const LATE: Duration = Duration::from_secs(1);
/// Shutdown flush sizing: per request still needed, twice Prefect's recent latency, at least
/// this.
const FLUSH_PER_REQUEST: Duration = Duration::from_millis(100);
/// At shutdown, no flow run is created in the last this-much of the flush (at most half).
const CREATE_MARGIN: Duration = Duration::from_secs(2);
/// Flow runs created ahead of their final state, at most, while a backlog is delivered.
const CREATE_BATCH: usize = 20;
/// Memory estimates of held records beyond their text (ids, times, names).
const RECORD_OVERHEAD: usize = 256;

/// The bound on reports held while Prefect cannot take them.
#[derive(Debug, Clone, Copy)]
pub struct HoldBound {
    pub reports: usize,
    pub bytes: usize,
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
        ended: DateTime<Utc>,
    },
}

/// Handle the data path holds: never blocks, drops (and counts) when the queue is full.
#[derive(Clone)]
pub struct Reporter {
    tx: Option<mpsc::Sender<Report>>,
    shared: Arc<Shared>,
}

#[derive(Default)]
pub struct Shared {
    pub client: Option<Arc<PrefectClient>>,
    /// run id (ours) -> flow run id (Prefect's), for runs created and not yet finished.
    flow_runs: Mutex<HashMap<Uuid, Uuid>>,
    dropped: AtomicU64,
    delivered: AtomicU64,
    /// Reports queued, and reports delivered or dropped: the gap is what is still in flight.
    accepted: AtomicU64,
    settled: AtomicU64,
    /// Requests the worker still needs for what it holds (sizes the shutdown flush).
    requests_needed: AtomicU64,
    /// After this instant no new flow run is created (the shutdown flush's deadline is near:
    /// a run created then could be left RUNNING).
    create_until: Mutex<Option<Instant>>,
    /// Largest hold seen, in reports and bytes (the stop summary reports them).
    peak_held_reports: AtomicU64,
    peak_held_bytes: AtomicU64,
}

/// What the stop summary says about reporting.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ReportStats {
    pub delivered: u64,
    pub dropped: u64,
    pub requests: u64,
    pub peak_held_reports: u64,
    pub peak_held_bytes: u64,
}

impl Reporter {
    /// A reporter that reports nothing (no PREFECT_API_URL).
    pub fn disabled() -> Self {
        Reporter {
            tx: None,
            shared: Arc::new(Shared::default()),
        }
    }

    /// Start the reporting worker; every flow run carries `identity` (tags and a parameter).
    pub fn start(
        settings: &PrefectSettings,
        identity: &crate::identity::Identity,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), crate::http::ClientError> {
        let client = Arc::new(PrefectClient::new(
            &settings.api_url,
            settings.api_key.clone(),
            Duration::from_secs(5),
        )?);
        let shared = Arc::new(Shared {
            client: Some(client.clone()),
            ..Shared::default()
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
            events: Bulk::default(),
            logs: Bulk::default(),
            pending: VecDeque::new(),
            unfinished: HashMap::new(),
            hold: settings.hold,
        };
        let handle = tokio::spawn(worker.run(rx));
        Ok((
            Reporter {
                tx: Some(tx),
                shared,
            },
            handle,
        ))
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
            Err(e) => {
                let reason = match e {
                    mpsc::error::TrySendError::Full(_) => "queue full (REPORT_QUEUE_CAPACITY)",
                    mpsc::error::TrySendError::Closed(_) => "reporter stopped",
                };
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                self.shared.warn_drop(1, reason, json!({}));
            }
        }
    }

    /// Counts reports still queued or held as dropped (after the flush deadline).
    pub fn abandon_pending(&self) -> u64 {
        let n = self.shared.unsettled();
        self.shared.discard(n);
        n
    }

    pub fn flow_run_id(&self, run_id: Uuid) -> Option<Uuid> {
        self.shared.flow_run(run_id)
    }

    /// Starts the shutdown flush and returns how long it may take: `base`
    /// (REPORT_FLUSH_SECONDS), longer when what is held needs more (requests still needed x
    /// twice Prefect's recent latency), never past `budget` (what is left before the
    /// container's SIGKILL). New flow runs are created only until `CREATE_MARGIN` before its
    /// end, so what was created can still be finished.
    pub fn begin_flush(&self, base: Duration, budget: Option<Duration>) -> Duration {
        let needed = self.shared.requests_needed.load(Ordering::Relaxed);
        // Reports still in the queue need requests too: an iteration is about ten reports
        // (start, four task runs, logs, end) for four requests.
        let queued = self.shared.unsettled();
        let per_request = self.shared.client.as_ref().map_or(FLUSH_PER_REQUEST, |c| {
            (c.latency() * 2).max(FLUSH_PER_REQUEST)
        });
        let flush = sized_deadline(base, budget, needed + queued.div_ceil(2), per_request);
        if let Ok(mut t) = self.shared.create_until.lock() {
            *t = Some(Instant::now() + flush - CREATE_MARGIN.min(flush / 2));
        }
        flush
    }

    pub fn stats(&self) -> ReportStats {
        let s = &self.shared;
        ReportStats {
            delivered: s.delivered.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            requests: s.client.as_ref().map_or(0, |c| c.requests()),
            peak_held_reports: s.peak_held_reports.load(Ordering::Relaxed),
            peak_held_bytes: s.peak_held_bytes.load(Ordering::Relaxed),
        }
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
        self.flow_runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn flow_run(&self, run_id: Uuid) -> Option<Uuid> {
        self.flow_runs().get(&run_id).copied()
    }

    fn creation_closed(&self) -> bool {
        self.create_until
            .lock()
            .map(|t| t.is_some_and(|t| Instant::now() >= t))
            .unwrap_or(false)
    }

    /// Reports accepted and neither delivered nor dropped yet (queued or held).
    fn unsettled(&self) -> u64 {
        self.accepted
            .load(Ordering::Relaxed)
            .saturating_sub(self.settled.load(Ordering::Relaxed))
    }

    /// Settles `n` accepted reports as dropped (the caller says why, or not).
    fn discard(&self, n: u64) {
        self.settle(n);
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    fn settle(&self, n: u64) {
        self.settled.fetch_add(n, Ordering::Relaxed);
    }

    fn deliver(&self, n: u64) {
        self.settle(n);
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// Drops `n` accepted reports.
    fn count_drop(&self, n: u64, reason: &str, detail: Value) {
        self.discard(n);
        self.warn_drop(n, reason, detail);
    }

    fn warn_drop(&self, n: u64, reason: &str, detail: Value) {
        let before = self.dropped.load(Ordering::Relaxed).saturating_sub(n);
        // Log the first drop and then every 100th so an outage does not flood the log.
        if before == 0 || (before / 100) != (before + n) / 100 {
            let mut fields = json!({ "reason": reason, "dropped": n, "dropped_total": before + n });
            if let (Value::Object(f), Value::Object(d)) = (&mut fields, detail) {
                f.extend(d);
            }
            logs::warn("prefect reports dropped", fields);
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
    /// Task-run events (one item per task run: its two events) and log entries of created
    /// flow runs, serialised, oldest first.
    events: Bulk,
    logs: Bulk,
    /// Iterations whose flow run is not created yet (Prefect slow or down), oldest first.
    pending: VecDeque<PendingRun>,
    /// Flow runs created on the server whose final state is not delivered yet.
    unfinished: HashMap<Uuid, Final>,
    hold: HoldBound,
}

/// Serialised reports waiting for a bulk request, oldest first.
#[derive(Default)]
struct Bulk {
    items: VecDeque<String>,
    bytes: usize,
    /// When the oldest item arrived (for BULK_LINGER).
    since: Option<Instant>,
}

impl Bulk {
    fn push(&mut self, text: String) {
        self.bytes += text.len();
        self.items.push_back(text);
        self.since.get_or_insert_with(Instant::now);
    }

    fn pop(&mut self) -> Option<String> {
        let item = self.items.pop_front()?;
        self.bytes -= item.len();
        if self.items.is_empty() {
            self.since = None;
        }
        Some(item)
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn due(&self) -> Option<Instant> {
        self.since.map(|t| t + BULK_LINGER)
    }

    /// The first `n` items as one JSON array (an item may hold several comma-joined values).
    fn body(&self, n: usize) -> String {
        let items = self.items.iter().take(n);
        let mut out = String::with_capacity(items.clone().map(|i| i.len() + 1).sum::<usize>() + 2);
        out.push('[');
        for (i, item) in items.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(item);
        }
        out.push(']');
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Events,
    Logs,
}

/// How an iteration ended, until Prefect has it.
#[derive(Debug, Clone)]
struct Final {
    state: RunState,
    message: String,
    ended: DateTime<Utc>,
    /// The run carries `observed.end` (set at creation, or patched because the state is late).
    labelled: bool,
}

/// An iteration waiting for its flow run to be created.
struct PendingRun {
    run_id: Uuid,
    iteration: u64,
    started: DateTime<Utc>,
    replay_of: Option<Uuid>,
    tasks: Vec<TaskRecord>,
    logs: Vec<LogRecord>,
    finished: Option<Final>,
    /// Estimated memory held for it.
    bytes: usize,
}

impl PendingRun {
    /// Reports held here: the start, its task runs and logs, and its end once known.
    fn reports(&self) -> usize {
        1 + self.tasks.len() + self.logs.len() + usize::from(self.finished.is_some())
    }
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Report>) {
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = sleep_until_opt(self.next_wake()) => {
                    self.deliver(false).await;
                    self.publish();
                    continue;
                }
            };
            let Some(msg) = msg else { break };
            self.handle(msg);
            self.enforce_bound();
            // Send once the queue is drained: under load one events request then covers the
            // task runs of many iterations.
            if rx.is_empty() && !self.is_down() {
                self.deliver_runs().await;
            }
            for kind in [Kind::Events, Kind::Logs] {
                if self.bulk(kind).len() >= BULK_MAX {
                    self.flush(kind).await;
                }
            }
            self.publish();
        }
        // Queue closed: keep delivering until everything is out; the caller bounds this with
        // the flush deadline and counts what is left as dropped.
        loop {
            self.down_until = None;
            self.deliver(true).await;
            self.publish();
            if self.shared.creation_closed() && !self.pending.is_empty() && self.all_created_done()
            {
                // Past the creation cut-off: what was never created stays out of Prefect (no
                // run may be left RUNNING by the deadline); counted as dropped.
                let runs = self.pending.len();
                let n: usize = self.pending.drain(..).map(|p| p.reports()).sum();
                self.shared.discard(n as u64);
                logs::warn(
                    "prefect flush deadline near: iterations not created in Prefect, dropped",
                    json!({ "runs": runs, "dropped": n }),
                );
                self.flush(Kind::Logs).await;
            }
            if self.idle() {
                break;
            }
            let pause = if self.failures == 0 {
                Duration::from_millis(20)
            } else {
                backoff(
                    self.failures.saturating_sub(1),
                    Duration::from_millis(200),
                    Duration::from_secs(2),
                )
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Every run created in Prefect has its task runs and final state delivered.
    fn all_created_done(&self) -> bool {
        self.unfinished.is_empty() && self.events.is_empty()
    }

    fn idle(&self) -> bool {
        self.pending.is_empty()
            && self.unfinished.is_empty()
            && self.events.is_empty()
            && self.logs.is_empty()
    }

    fn bulk(&mut self, kind: Kind) -> &mut Bulk {
        match kind {
            Kind::Events => &mut self.events,
            Kind::Logs => &mut self.logs,
        }
    }

    /// Reports and bytes held (the queue between the runner and this worker not included:
    /// REPORT_QUEUE_CAPACITY bounds that).
    fn held(&self) -> (usize, usize) {
        let (mut reports, mut bytes) = (self.events.len() + self.logs.len(), 0);
        bytes += self.events.bytes + self.logs.bytes;
        for p in &self.pending {
            reports += p.reports();
            bytes += p.bytes;
        }
        (reports, bytes)
    }

    /// Shares what the shutdown flush and the stop summary need.
    fn publish(&self) {
        let (reports, bytes) = self.held();
        let s = &self.shared;
        s.peak_held_reports
            .fetch_max(reports as u64, Ordering::Relaxed);
        s.peak_held_bytes.fetch_max(bytes as u64, Ordering::Relaxed);
        let requests = 2 * self.pending.len()
            + 2 * self.unfinished.len()
            + self.events.len().div_ceil(BULK_MAX)
            + self.logs.len().div_ceil(BULK_MAX);
        s.requests_needed.store(requests as u64, Ordering::Relaxed);
    }

    /// Past REPORT_HOLD or REPORT_HOLD_BYTES the least valuable and oldest go first: logs
    /// (all of runs already created, so older than any iteration still waiting), then whole
    /// iterations not yet created, oldest first (a run appears with all its task runs or not
    /// at all), and only then task runs of created runs.
    fn enforce_bound(&mut self) {
        let (mut reports, mut bytes) = self.held();
        if reports <= self.hold.reports && bytes <= self.hold.bytes {
            return;
        }
        let (mut dropped, mut runs) = (0usize, 0usize);
        while reports > self.hold.reports || bytes > self.hold.bytes {
            let (n, b) = if let Some(l) = self.logs.pop() {
                (1, l.len())
            } else if let Some(p) = self.pending.pop_front() {
                runs += 1;
                (p.reports(), p.bytes)
            } else if let Some(e) = self.events.pop() {
                (1, e.len())
            } else {
                break;
            };
            dropped += n;
            reports -= n;
            bytes -= b;
        }
        self.shared.count_drop(
            dropped as u64,
            "hold bound reached while prefect is unavailable; oldest reports dropped",
            json!({
                "runs_dropped": runs,
                "held_reports": reports,
                "held_bytes": bytes,
                "hold_reports": self.hold.reports,
                "hold_bytes": self.hold.bytes,
            }),
        );
    }

    /// When the loop must wake without a new report: a linger expiry, or the end of a
    /// back-off pause while something waits for delivery.
    fn next_wake(&self) -> Option<Instant> {
        if self.idle() {
            return None;
        }
        if let Some(t) = self.down_until.filter(|t| Instant::now() < *t) {
            return Some(t);
        }
        let retry = (!self.pending.is_empty() || !self.unfinished.is_empty())
            .then(|| Instant::now() + Duration::from_millis(500));
        [self.events.due(), self.logs.due(), retry]
            .into_iter()
            .flatten()
            .min()
    }

    /// Everything waiting, in order: flow runs to create, task runs, final states, logs (when
    /// their linger is over, or `all`).
    async fn deliver(&mut self, all: bool) {
        self.deliver_runs().await;
        if all || self.logs.due().is_some_and(|t| t <= Instant::now()) {
            self.flush(Kind::Logs).await;
        }
    }

    /// Creates waiting flow runs a few at a time, each batch followed by its task runs and
    /// final states, so few runs are RUNNING in Prefect for longer than their iteration.
    async fn deliver_runs(&mut self) {
        loop {
            let waiting = self.pending.len();
            self.create_pending().await;
            self.flush(Kind::Events).await;
            self.finish_all().await;
            if self.is_down() || self.pending.is_empty() || self.pending.len() == waiting {
                break;
            }
        }
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
                        "prefect reporting failing; data path unaffected, reports held and retried",
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

    /// Takes a report in; sending is the loop's business (no request here).
    fn handle(&mut self, msg: Report) {
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
                    bytes: RECORD_OVERHEAD,
                });
            }
            Report::Task(t) => match self.shared.flow_run(t.run_id) {
                Some(fr) => self.events.push(task_events_text(&t, fr)),
                None => match self.pending.iter_mut().find(|p| p.run_id == t.run_id) {
                    Some(p) => {
                        p.bytes += 2 * RECORD_OVERHEAD + t.message.len();
                        p.tasks.push(t);
                    }
                    None => self
                        .shared
                        .count_drop(1, "task run of a dropped flow run", json!({})),
                },
            },
            Report::Log(l) => match self.shared.flow_run(l.run_id) {
                Some(fr) => self.logs.push(log_text(&l, fr)),
                None => match self.pending.iter_mut().find(|p| p.run_id == l.run_id) {
                    Some(p) => {
                        p.bytes += RECORD_OVERHEAD + l.message.len();
                        p.logs.push(l);
                    }
                    None => self
                        .shared
                        .count_drop(1, "log of a dropped flow run", json!({})),
                },
            },
            Report::RunFinished {
                run_id,
                state,
                message,
                ended,
            } => {
                let fin = Final {
                    state,
                    message,
                    ended,
                    labelled: false,
                };
                let fr = self.shared.flow_runs().remove(&run_id);
                if let Some(fr) = fr {
                    self.unfinished.insert(fr, fin);
                } else if let Some(p) = self.pending.iter_mut().find(|p| p.run_id == run_id) {
                    p.bytes += RECORD_OVERHEAD + fin.message.len();
                    p.finished = Some(fin);
                } else {
                    self.shared
                        .count_drop(1, "final state of a dropped flow run", json!({}));
                }
            }
        }
    }

    /// Creates the flow runs of waiting iterations, oldest first, until one fails.
    async fn create_pending(&mut self) {
        while !self.is_down() && !self.shared.creation_closed() {
            // Finish what was created before creating more (see `deliver_runs`).
            if self.unfinished.len() >= CREATE_BATCH {
                break;
            }
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
            let Some(flow_id) = self.flow_id else { break };
            let started = format!("started {}", logs::timestamp(p.started));
            let body = wire::FlowRunCreate {
                flow_id,
                name: format!(
                    "{}-{iteration}-{}",
                    self.flow_name,
                    &run_id.simple().to_string()[..8]
                ),
                parameters: wire::RunParameters {
                    run_id,
                    iteration,
                    deployment: &self.deployment,
                    replay_of: p.replay_of,
                },
                tags: &self.tags,
                labels: wire::Labels {
                    start: Some(logs::timestamp(p.started)),
                    end: p.finished.as_ref().map(|f| logs::timestamp(f.ended)),
                },
                idempotency_key: run_id.to_string(),
                state: wire::StateCreate {
                    kind: "RUNNING",
                    name: Some("Running"),
                    message: &started,
                },
            };
            match self.client.create_flow_run(&body).await {
                Ok(fr) => {
                    self.mark(Ok(()));
                    let Some(p) = self.pending.pop_front() else {
                        break;
                    };
                    self.shared.deliver(1);
                    for t in &p.tasks {
                        self.events.push(task_events_text(t, fr));
                    }
                    for l in &p.logs {
                        self.logs.push(log_text(l, fr));
                    }
                    match p.finished {
                        Some(fin) => {
                            self.unfinished.insert(
                                fr,
                                Final {
                                    labelled: true,
                                    ..fin
                                },
                            );
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

    /// Final states, oldest first; none while a task-run event is held (order).
    async fn finish_all(&mut self) {
        if !self.events.is_empty() {
            return;
        }
        let mut runs: Vec<(DateTime<Utc>, Uuid)> = self
            .unfinished
            .iter()
            .map(|(fr, f)| (f.ended, *fr))
            .collect();
        runs.sort();
        for (_, fr) in runs {
            if self.is_down() {
                return;
            }
            self.finish(fr).await;
        }
    }

    /// Delivers a final state (after the `observed.end` label when it is late). A run
    /// cancelled from the UI is CANCELLING; Prefect rejects every other target then, so we
    /// complete the cancellation instead.
    async fn finish(&mut self, fr: Uuid) {
        let Some(fin) = self.unfinished.get(&fr).cloned() else {
            return;
        };
        let late = (Utc::now() - fin.ended)
            .to_std()
            .is_ok_and(|lag| lag > LATE);
        if !fin.labelled && late {
            let labels = wire::Labels {
                start: None,
                end: Some(logs::timestamp(fin.ended)),
            };
            match self.client.patch_labels(fr, &labels).await {
                Ok(()) => {
                    self.mark(Ok(()));
                    if let Some(f) = self.unfinished.get_mut(&fr) {
                        f.labelled = true;
                    }
                }
                Err(e) => {
                    self.mark(Err(&e));
                    return;
                }
            }
        }
        let mut result = self
            .client
            .set_flow_run_state(fr, fin.state.type_name(), &fin.message)
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
                self.shared.deliver(1);
            }
            Err(e) => self.mark(Err(&e)),
        }
    }

    /// Sends held items of one kind in batches, oldest first; a failed batch stays held.
    async fn flush(&mut self, kind: Kind) {
        while !self.is_down() && !self.bulk(kind).is_empty() {
            let n = self.bulk(kind).len().min(BULK_MAX);
            let body = self.bulk(kind).body(n);
            let result = match kind {
                Kind::Events => self.client.post_events(body).await,
                Kind::Logs => self.client.post_logs(body).await,
            };
            match result {
                Ok(()) => {
                    self.mark(Ok(()));
                    for _ in 0..n {
                        self.bulk(kind).pop();
                    }
                    self.shared.deliver(n as u64);
                }
                Err(e) => {
                    self.mark(Err(&e));
                    break;
                }
            }
        }
    }
}

fn sized_deadline(
    base: Duration,
    budget: Option<Duration>,
    requests: u64,
    per_request: Duration,
) -> Duration {
    let needed = per_request.saturating_mul(u32::try_from(requests).unwrap_or(u32::MAX));
    let deadline = base.max(needed);
    budget.map_or(deadline, |b| deadline.min(b))
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One log entry for `/logs/`, with the time the flow observed.
fn log_text(l: &LogRecord, flow_run_id: Uuid) -> String {
    let entry = wire::LogCreate {
        name: "price_stream",
        level: l.level as u8,
        message: &l.message,
        timestamp: logs::timestamp(l.at),
        flow_run_id,
        task_run_id: l.task_run_id,
    };
    // Plain structs and strings: serialising cannot fail.
    serde_json::to_string(&entry).unwrap_or_default()
}

/// A task run's two events, comma-joined (one bulk item).
fn task_events_text(t: &TaskRecord, flow_run_id: Uuid) -> String {
    task_events(t, flow_run_id)
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join(",")
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
        // One bulk item holds both events and joins into a valid array.
        let mut bulk = Bulk::default();
        bulk.push(task_events_text(&t, fr));
        bulk.push(task_events_text(&t, fr));
        let parsed: Vec<Value> = serde_json::from_str(&bulk.body(2)).unwrap();
        assert_eq!(parsed.len(), 4);
    }

    #[test]
    fn bulk_accounts_bytes_and_linger() {
        let mut bulk = Bulk::default();
        assert!(bulk.due().is_none());
        bulk.push("{\"a\":1}".into());
        bulk.push("{\"b\":22}".into());
        assert_eq!(bulk.bytes, 15);
        assert!(bulk.due().is_some());
        assert_eq!(bulk.body(1), "[{\"a\":1}]");
        bulk.pop();
        bulk.pop();
        assert_eq!((bulk.bytes, bulk.len()), (0, 0));
        assert!(bulk.due().is_none());
    }

    #[test]
    fn flush_deadline_grows_with_what_is_held_within_the_stop_budget() {
        let base = Duration::from_secs(5);
        let per = Duration::from_millis(100);
        assert_eq!(sized_deadline(base, None, 0, per), base);
        assert_eq!(sized_deadline(base, None, 20, per), base);
        assert_eq!(
            sized_deadline(base, None, 200, per),
            Duration::from_secs(20)
        );
        let budget = Some(Duration::from_secs(8));
        assert_eq!(
            sized_deadline(base, budget, 200, per),
            Duration::from_secs(8)
        );
        assert_eq!(
            sized_deadline(base, Some(Duration::from_secs(1)), 0, per),
            Duration::from_secs(1)
        );
        let r = Reporter::disabled();
        assert_eq!(r.begin_flush(base, None), base);
    }
}
