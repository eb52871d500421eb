//! The rolling update, with ECS's rules, run by the deployer (on the local target it is the
//! service scheduler): start new containers up to `max_percent`, wait until they are healthy,
//! stop old ones (SIGTERM, `stop_timeout`, SIGKILL) never going below `min_healthy_percent`.
//!
//! A new container that exits or turns unhealthy is a failed start: it is removed and
//! replaced. At the circuit breaker's threshold (ECS's rule: half the desired count, at least 3,
//! at most 200) the roll is undone: the new containers go, the old revision keeps (or gets back)
//! its containers, and the verdict names the exit codes and last log lines. `rollout_timeout`
//! and an interrupt undo the roll the same way, so two revisions never stay running; a
//! deployer that crashed mid-roll leaves labelled containers that the next `up` sorts out
//! (those of the wanted revision count as new, every other revision as old).
//!
//! The decision of each step ([`decide`]) is a pure function of what runs, so it is tested
//! apart from the engine.

use super::engine::{Engine, Instance};
use super::spec::ContainerSpec;
use super::state::Revision;
use crate::error::{Error, Result};
use crate::interrupt;
use crate::ui::Ui;
use bollard::models::{ContainerStateStatusEnum, HealthStatusEnum};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Without a health check, a container counts as healthy once it has run this long (a
/// container that crashes at start must not replace a working one).
pub const STABLE_WITHOUT_CHECK: Duration = Duration::from_secs(3);
/// How often the roll looks at the containers.
const TICK: Duration = Duration::from_millis(250);
/// Log lines kept per failed start.
const FAILED_LOG_LINES: usize = 20;
/// After an interrupt the undo must fit in main's grace period: new containers get this long
/// to stop before SIGKILL.
const INTERRUPT_STOP: Duration = Duration::from_secs(2);

/// ECS's circuit breaker threshold: half the desired count, at least 3, at most 200.
pub fn failure_threshold(desired: u32) -> u32 {
    desired.div_ceil(2).clamp(3, 200)
}

/// What a step sees (counts of one service's containers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View {
    /// Old-revision containers still running and not yet told to stop.
    pub old_running: u32,
    /// Of those, the healthy ones.
    pub old_healthy: u32,
    /// Old containers stopping (they still take room).
    pub old_stopping: u32,
    /// New-revision containers alive (starting or healthy).
    pub new_total: u32,
    pub new_healthy: u32,
}

/// What to do now: stop this many old containers (unhealthy ones first), start this many new
/// ones, stop this many surplus new ones (scaling down).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    pub stop_old: u32,
    pub start_new: u32,
    pub stop_new: u32,
}

/// The rules, for `desired` containers with `min_healthy`/`max_total` already derived from
/// the percentages (ECS rounds the minimum up and the maximum down).
pub fn decide(v: View, desired: u32, min_healthy: u32, max_total: u32) -> Step {
    let unhealthy_old = v.old_running - v.old_healthy;
    let healthy_after =
        |stop: u32| v.new_healthy + v.old_healthy - stop.saturating_sub(unhealthy_old);
    let mut stop_old = 0;
    while stop_old < v.old_running {
        let remaining = v.old_running - stop_old;
        let surplus = v.new_healthy + remaining > desired;
        let need_room =
            v.new_total < desired && remaining + v.old_stopping + v.new_total >= max_total;
        if !(surplus || need_room) || healthy_after(stop_old + 1) < min_healthy {
            break;
        }
        stop_old += 1;
    }
    // Old containers told to stop still take room until they are gone.
    let present = v.old_running + v.old_stopping + v.new_total;
    let start_new = desired
        .saturating_sub(v.new_total)
        .min(max_total.saturating_sub(present));
    Step {
        stop_old,
        start_new,
        stop_new: v.new_total.saturating_sub(desired),
    }
}

/// `min_healthy_percent`/`max_percent` as counts, as ECS derives them.
pub fn bounds(desired: u32, min_percent: u32, max_percent: u32) -> (u32, u32) {
    let min = (desired * min_percent).div_ceil(100);
    let max = (desired * max_percent / 100).max(desired).max(1);
    (min, max)
}

/// One roll.
pub struct Roll<'a> {
    pub engine: &'a Engine,
    pub project: &'a str,
    pub service: &'a str,
    pub target: &'a Revision,
    /// The revision to go back to when the roll is undone (the last completed one).
    pub previous: Option<&'a Revision>,
    pub desired: u32,
    pub min_healthy_percent: u32,
    pub max_percent: u32,
    pub circuit_breaker: bool,
    pub timeout: Duration,
    /// The full environment of a container (values included) for a revision and a name.
    pub env: &'a (dyn Fn(&Revision, &str) -> Result<Vec<String>> + Sync),
    pub ui: &'a Ui,
}

/// A container that failed to start: why, and its last lines.
#[derive(Debug, Clone, Serialize)]
pub struct FailedStart {
    pub container: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    pub last_log_lines: Vec<String>,
}

/// An old container the roll stopped, and how it ended (0 after a graceful SIGTERM).
#[derive(Debug, Clone, Serialize)]
pub struct Stopped {
    pub container: String,
    pub revision: u32,
    pub exit_code: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RollReport {
    pub started: Vec<String>,
    pub stopped: Vec<Stopped>,
    pub failed_starts: Vec<FailedStart>,
    pub seconds: f64,
    /// Seconds during which both revisions had a running container.
    pub overlap_seconds: f64,
}

/// How a new container is doing.
enum Phase {
    Starting,
    Healthy,
    Failed(String),
}

struct Tracker<'a> {
    roll: &'a Roll<'a>,
    report: RollReport,
    /// When each new container was first seen running.
    first_running: BTreeMap<String, Instant>,
    stopping: JoinSet<(String, u32, Result<Option<i64>>)>,
    stopping_names: BTreeSet<String>,
    overlap_from: Option<Instant>,
    overlap_until: Option<Instant>,
}

impl Roll<'_> {
    /// Roll to `target` and wait for the verdict. Ok: every wanted container is the target's
    /// and healthy, no old one is left. Err: exit 4 (rolled back by the breaker; 1 when there
    /// was nothing to go back to), 3 (timeout), 130 (interrupt), each after undoing the roll.
    pub async fn run(&self) -> Result<RollReport> {
        let started = Instant::now();
        let mut t = Tracker {
            roll: self,
            report: RollReport::default(),
            first_running: BTreeMap::new(),
            stopping: JoinSet::new(),
            stopping_names: BTreeSet::new(),
            overlap_from: None,
            overlap_until: None,
        };
        // The roll undoes itself on an interrupt, and main waits for that up to its grace:
        // the undo too runs inside `self_undoing`, or main would stop it half-way (between two
        // of its calls nothing else says an undo is under way).
        let result = interrupt::self_undoing(Box::pin(async {
            let outcome = t.drive(started + self.timeout).await;
            t.report.seconds = started.elapsed().as_secs_f64();
            if let (Some(a), Some(b)) = (t.overlap_from, t.overlap_until) {
                t.report.overlap_seconds = b.saturating_duration_since(a).as_secs_f64();
            }
            match outcome {
                Ok(()) => Ok(()),
                Err(cause) => Err(t.undo(cause).await),
            }
        }))
        .await;
        result.map(|()| t.report)
    }
}

/// Why a roll is being undone.
enum Undo {
    Breaker,
    Timeout,
    Interrupt,
    Engine(Error),
}

impl Tracker<'_> {
    async fn drive(&mut self, deadline: Instant) -> std::result::Result<(), Undo> {
        let r = self.roll;
        let (min_healthy, max_total) = bounds(r.desired, r.min_healthy_percent, r.max_percent);
        let threshold = failure_threshold(r.desired);
        loop {
            if interrupt::requested() {
                return Err(Undo::Interrupt);
            }
            if Instant::now() >= deadline {
                return Err(Undo::Timeout);
            }
            self.collect_stopped().await;
            let all = r
                .engine
                .instances(r.project, Some(r.service))
                .await
                .map_err(Undo::Engine)?;
            let (new, old): (Vec<Instance>, Vec<Instance>) = all
                .into_iter()
                .filter(|i| !self.stopping_names.contains(&i.name))
                .partition(|i| i.spec_hash == r.target.hash);
            let mut view = View {
                old_stopping: count(self.stopping_names.len()),
                ..View::default()
            };
            let mut alive_new = Vec::new();
            for i in new {
                match self.phase(&i) {
                    Phase::Failed(reason) => self.failed(&i, reason).await.map_err(Undo::Engine)?,
                    p => {
                        view.new_total += 1;
                        view.new_healthy += u32::from(matches!(p, Phase::Healthy));
                        alive_new.push(i);
                    }
                }
            }
            if r.circuit_breaker && count(self.report.failed_starts.len()) >= threshold {
                return Err(Undo::Breaker);
            }
            let mut old_live = Vec::new();
            for i in old {
                if i.running() {
                    view.old_running += 1;
                    view.old_healthy += u32::from(old_healthy(&i));
                    old_live.push(i);
                } else {
                    // A dead old container helps nobody: clear it away.
                    r.engine.remove(&i.name).await.map_err(Undo::Engine)?;
                }
            }
            self.note_overlap(&alive_new, view);
            if view.old_running == 0
                && view.old_stopping == 0
                && view.new_healthy >= r.desired
                && view.new_total == r.desired
            {
                return self.finish(&alive_new).await.map_err(Undo::Engine);
            }
            let step = decide(view, r.desired, min_healthy, max_total);
            self.apply(step, old_live, &alive_new)
                .await
                .map_err(Undo::Engine)?;
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = interrupt::cancelled() => {}
            }
        }
    }

    fn phase(&mut self, i: &Instance) -> Phase {
        let has_check = self.roll.target.spec.health_check.is_some();
        match (i.status, i.health) {
            (ContainerStateStatusEnum::RUNNING, _)
                if i.health == Some(HealthStatusEnum::UNHEALTHY) =>
            {
                Phase::Failed(format!(
                    "unhealthy: {}",
                    i.health_output.as_deref().unwrap_or("health check failed")
                ))
            }
            (ContainerStateStatusEnum::RUNNING, Some(HealthStatusEnum::HEALTHY)) if has_check => {
                Phase::Healthy
            }
            (ContainerStateStatusEnum::RUNNING, _) => {
                let since = *self
                    .first_running
                    .entry(i.name.clone())
                    .or_insert_with(Instant::now);
                if !has_check && since.elapsed() >= STABLE_WITHOUT_CHECK {
                    Phase::Healthy
                } else {
                    Phase::Starting
                }
            }
            (ContainerStateStatusEnum::CREATED | ContainerStateStatusEnum::EMPTY, _) => {
                Phase::Starting
            }
            _ => Phase::Failed(match i.exit_code {
                Some(code) if i.oom_killed => format!("exited with code {code} (out of memory)"),
                Some(code) => format!("exited with code {code}"),
                None => format!("{}", i.status),
            }),
        }
    }

    async fn failed(&mut self, i: &Instance, reason: String) -> Result<()> {
        let r = self.roll;
        let last_log_lines = r.engine.tail(&i.name, FAILED_LOG_LINES).await;
        r.ui.warn(format!("{}: {} {reason}", r.service, i.name));
        r.engine.remove(&i.name).await?;
        self.first_running.remove(&i.name);
        self.report.failed_starts.push(FailedStart {
            container: i.name.clone(),
            reason,
            exit_code: i.exit_code.filter(|_| !i.running()),
            last_log_lines,
        });
        Ok(())
    }

    fn note_overlap(&mut self, new: &[Instance], v: View) {
        let new_running = new.iter().any(Instance::running);
        if new_running && (v.old_running > 0 || v.old_stopping > 0) {
            self.overlap_from.get_or_insert_with(Instant::now);
        }
    }

    async fn apply(&mut self, step: Step, mut old: Vec<Instance>, new: &[Instance]) -> Result<()> {
        let r = self.roll;
        // Unhealthy old containers go first: they serve nobody.
        old.sort_by_key(old_healthy);
        for i in old.into_iter().take(step.stop_old as usize) {
            self.stop_in_background(
                i.name,
                i.revision,
                Duration::from_secs(u64::from(r.target.spec.stop_timeout).max(1)),
            );
        }
        let mut surplus: Vec<&Instance> = new.iter().collect();
        surplus.reverse();
        for i in surplus.into_iter().take(step.stop_new as usize) {
            self.stop_in_background(
                i.name.clone(),
                i.revision,
                Duration::from_secs(u64::from(r.target.spec.stop_timeout)),
            );
        }
        let used: BTreeSet<u32> = new.iter().filter_map(|i| slot_of(&i.name)).collect();
        let mut free = (1..).filter(|s| !used.contains(s));
        for _ in 0..step.start_new {
            // No new container after an interrupt: the loop undoes what runs.
            if interrupt::requested() {
                break;
            }
            let slot = free.next().unwrap_or(1);
            let name = crate::names::Names::new(r.project).local_container(
                r.service,
                r.target.number,
                slot,
            );
            let env = (r.env)(r.target, &name)?;
            r.engine.remove(&name).await?;
            r.engine
                .start(r.project, &name, r.target.number, &r.target.spec, env)
                .await?;
            r.ui.step(format!(
                "{}: started {name} (revision {})",
                r.service, r.target.number
            ));
            self.report.started.push(name);
        }
        Ok(())
    }

    fn stop_in_background(&mut self, name: String, revision: u32, timeout: Duration) {
        let engine = self.roll.engine.clone();
        self.roll.ui.step(format!(
            "{}: stopping {name} (revision {revision}; SIGTERM, then SIGKILL after {} s)",
            self.roll.service,
            timeout.as_secs()
        ));
        self.stopping_names.insert(name.clone());
        self.stopping.spawn(async move {
            let code = engine.stop(&name, timeout).await;
            let code = match code {
                Ok(c) => engine.remove(&name).await.map(|_| c),
                Err(e) => Err(e),
            };
            (name, revision, code)
        });
    }

    /// Record the old containers that finished stopping.
    async fn collect_stopped(&mut self) {
        while let Some(done) = self.stopping.try_join_next() {
            self.record_stopped(done);
        }
    }

    fn record_stopped(
        &mut self,
        done: std::result::Result<(String, u32, Result<Option<i64>>), tokio::task::JoinError>,
    ) {
        let Ok((name, revision, code)) = done else {
            return;
        };
        self.stopping_names.remove(&name);
        let exit_code = match code {
            Ok(c) => c,
            Err(e) => {
                self.roll.ui.warn(format!("{}: {e}", self.roll.service));
                None
            }
        };
        self.roll.ui.step(format!(
            "{}: {name} stopped (exit code {})",
            self.roll.service,
            exit_code.map_or("unknown".into(), |c| c.to_string())
        ));
        if revision != self.roll.target.number {
            self.overlap_until = Some(Instant::now());
        }
        self.report.stopped.push(Stopped {
            container: name,
            revision,
            exit_code,
        });
    }

    /// The roll is done: the engine keeps the new containers running from now on.
    async fn finish(&mut self, new: &[Instance]) -> Result<()> {
        while let Some(done) = self.stopping.join_next().await {
            self.record_stopped(done);
        }
        for i in new {
            self.roll.engine.keep_running(&i.name).await?;
        }
        Ok(())
    }

    /// Undo the roll: remove the new containers, give the previous revision its containers
    /// back, and return the verdict's error.
    async fn undo(&mut self, cause: Undo) -> Error {
        let r = self.roll;
        let quick = matches!(cause, Undo::Interrupt);
        let result = interrupt::undo(async {
            let stop = if quick {
                INTERRUPT_STOP
            } else {
                Duration::from_secs(u64::from(r.target.spec.stop_timeout))
            };
            let all = r.engine.instances(r.project, Some(r.service)).await?;
            let mut removals = JoinSet::new();
            for i in all.iter().filter(|i| i.spec_hash == r.target.hash) {
                let (engine, name) = (r.engine.clone(), i.name.clone());
                removals.spawn(async move {
                    let _ = engine.stop(&name, stop).await;
                    engine.remove(&name).await
                });
            }
            while let Some(done) = removals.join_next().await {
                if let Ok(Err(e)) = done {
                    r.ui.warn(e);
                }
            }
            // Old containers that were stopping finish on their own; count what still runs.
            let old_running = count(
                all.iter()
                    .filter(|i| {
                        i.spec_hash != r.target.hash
                            && i.running()
                            && !self.stopping_names.contains(&i.name)
                    })
                    .count(),
            );
            self.restore_previous(old_running).await
        })
        .await;
        let now_running = self.running_now().await;
        let mut e = match cause {
            Undo::Breaker => self.breaker_error(),
            Undo::Timeout => Error::timeout(format!(
                "{}: revision {} was not healthy within rollout_timeout ({} s); the new containers were removed",
                r.service, r.target.number, r.timeout.as_secs()
            ))
            .with_help("see the failed starts above and `deployer logs`; raise deployment.rollout_timeout if the service needs longer to become healthy"),
            Undo::Interrupt => Error::interrupted(format!(
                "interrupted during the roll of {}: the new containers were removed",
                r.service
            ))
            .with_help("run `deployer up` again to roll forward"),
            Undo::Engine(e) => e,
        };
        if let Err(undo_err) = result {
            e = e.with_note(format!("the undo did not finish: {undo_err}"));
        }
        e.with_note(format!("running now: {now_running}"))
    }

    /// Start containers of the previous revision up to the desired count (those stopped by
    /// the roll, with min_healthy_percent below 100).
    async fn restore_previous(&mut self, running: u32) -> Result<()> {
        let r = self.roll;
        let Some(prev) = r.previous.filter(|p| p.hash != r.target.hash) else {
            return Ok(());
        };
        let existing: BTreeSet<u32> = r
            .engine
            .instances(r.project, Some(r.service))
            .await?
            .iter()
            .filter(|i| i.spec_hash == prev.hash)
            .filter_map(|i| slot_of(&i.name))
            .collect();
        let mut free = (1..).filter(|s| !existing.contains(s));
        for _ in running..r.desired {
            let name = crate::names::Names::new(r.project).local_container(
                r.service,
                prev.number,
                free.next().unwrap_or(1),
            );
            let env = (r.env)(prev, &name)?;
            r.engine.remove(&name).await?;
            r.engine
                .start(r.project, &name, prev.number, &prev.spec, env)
                .await?;
            r.engine.keep_running(&name).await?;
            r.ui.step(format!(
                "{}: started {name} (back to revision {})",
                r.service, prev.number
            ));
        }
        Ok(())
    }

    async fn running_now(&self) -> String {
        let r = self.roll;
        match r.engine.instances(r.project, Some(r.service)).await {
            Ok(all) => {
                let live: Vec<String> = all
                    .iter()
                    .filter(|i| i.running())
                    .map(|i| format!("{} (revision {})", i.name, i.revision))
                    .collect();
                if live.is_empty() {
                    "nothing".into()
                } else {
                    live.join(", ")
                }
            }
            Err(e) => format!("unknown ({e})"),
        }
    }

    fn breaker_error(&self) -> Error {
        let r = self.roll;
        let n = self.report.failed_starts.len();
        let mut msg = match r.previous.filter(|p| p.hash != r.target.hash) {
            Some(p) => format!(
                "{}: revision {} failed to start {n} times (circuit breaker); rolled back to revision {}",
                r.service, r.target.number, p.number
            ),
            None => format!(
                "{}: revision {} failed to start {n} times (circuit breaker); there is no earlier revision to roll back to",
                r.service, r.target.number
            ),
        };
        msg.push_str(&failed_starts_text(&self.report.failed_starts));
        let rolled_back = r.previous.is_some_and(|p| p.hash != r.target.hash);
        let e = if rolled_back {
            Error::rolled_back(msg)
        } else {
            Error::failure(msg)
        };
        e.with_help("fix the service (its exit codes and logs are above), then `deployer up` again")
    }
}

/// The failed starts as indented lines: reason, exit code, last log lines.
pub fn failed_starts_text(failed: &[FailedStart]) -> String {
    let mut s = String::new();
    for f in failed {
        s.push_str(&format!("\n  {}: {}", f.container, f.reason));
        for line in f.last_log_lines.iter().rev().take(5).rev() {
            s.push_str(&format!("\n    | {line}"));
        }
    }
    s
}

fn old_healthy(i: &Instance) -> bool {
    i.running() && matches!(i.health, None | Some(HealthStatusEnum::HEALTHY))
}

/// The slot number at the end of a container name.
fn slot_of(name: &str) -> Option<u32> {
    name.rsplit('-').next()?.parse().ok()
}

/// A spec's containers are of one revision; used to tell the caller which ones the roll made.
pub fn is_of(i: &Instance, spec: &ContainerSpec) -> bool {
    i.spec_hash == spec.hash()
}

/// A count of containers, as the roll's u32 fields hold them.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the rules to the end, the way the engine would answer: started containers become
    /// healthy on the next step, stopped ones are gone on the next step.
    fn simulate(desired: u32, min: u32, max: u32, old: u32) -> (u32, u32) {
        let (min_h, max_t) = bounds(desired, min, max);
        let mut v = View {
            old_running: old,
            old_healthy: old,
            ..View::default()
        };
        let (mut lowest_healthy, mut highest_total) = (u32::MAX, 0);
        for _ in 0..50 {
            lowest_healthy = lowest_healthy.min(v.old_healthy + v.new_healthy);
            highest_total = highest_total.max(v.old_running + v.old_stopping + v.new_total);
            if v.old_running == 0 && v.old_stopping == 0 && v.new_healthy == desired {
                return (lowest_healthy, highest_total);
            }
            let s = decide(v, desired, min_h, max_t);
            v.new_healthy = v.new_total;
            v.old_stopping = s.stop_old;
            v.old_running -= s.stop_old;
            v.old_healthy = v.old_running;
            v.new_total += s.start_new;
        }
        panic!("no convergence for desired {desired} min {min} max {max}");
    }

    #[test]
    fn zero_downtime_defaults_never_drop_below_desired_nor_exceed_twice() {
        for n in 1..=6 {
            let (low, high) = simulate(n, 100, 200, n);
            assert_eq!(low, n, "healthy never below desired ({n})");
            assert!(high <= 2 * n, "at most 200 % ({n}: {high})");
        }
    }

    #[test]
    fn min_zero_max_hundred_stops_first_then_starts() {
        let (min_h, max_t) = bounds(1, 0, 100);
        let v = View {
            old_running: 1,
            old_healthy: 1,
            ..View::default()
        };
        assert_eq!(
            decide(v, 1, min_h, max_t),
            Step {
                stop_old: 1,
                start_new: 0,
                stop_new: 0
            }
        );
        let gone = View::default();
        assert_eq!(decide(gone, 1, min_h, max_t).start_new, 1);
        assert_eq!(
            simulate(2, 50, 150, 2).0,
            1,
            "min 50 % of 2 keeps one healthy"
        );
    }

    #[test]
    fn first_deploy_and_scaling() {
        let (min_h, max_t) = bounds(3, 100, 200);
        assert_eq!(decide(View::default(), 3, min_h, max_t).start_new, 3);
        let more = View {
            new_total: 5,
            new_healthy: 5,
            ..View::default()
        };
        assert_eq!(decide(more, 3, min_h, max_t).stop_new, 2);
    }

    #[test]
    fn an_unhealthy_old_container_goes_first_and_old_ones_wait_for_healthy_new_ones() {
        let (min_h, max_t) = bounds(2, 100, 200);
        let v = View {
            old_running: 2,
            old_healthy: 2,
            new_total: 2,
            ..View::default()
        };
        assert_eq!(
            decide(v, 2, min_h, max_t),
            Step::default(),
            "nothing healthy yet: wait"
        );
        let v = View {
            old_running: 2,
            old_healthy: 1,
            new_total: 2,
            new_healthy: 1,
            ..View::default()
        };
        assert_eq!(decide(v, 2, min_h, max_t).stop_old, 1);
    }

    #[test]
    fn threshold_follows_ecs() {
        assert_eq!(failure_threshold(1), 3);
        assert_eq!(failure_threshold(10), 5);
        assert_eq!(failure_threshold(1000), 200);
        assert_eq!(bounds(1, 100, 200), (1, 2));
        assert_eq!(bounds(3, 50, 150), (2, 4));
    }

    #[test]
    fn slots_come_from_names() {
        assert_eq!(slot_of("demo-web-3-2"), Some(2));
        assert_eq!(slot_of("x"), None);
    }
}
