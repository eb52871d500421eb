//! Single-consumer handoff: at most one instance of a service runs iterations at a time.
//!
//! The lease store is Prefect itself (already the coordination plane): a global concurrency
//! limit with one slot per service (`deployer-lease-<service>`), taken with
//! `increment-with-lease`, kept with `leases/{id}/renew`, given back with
//! `decrement-with-lease`. A second taker gets HTTP 423 and stands by. Measured on Prefect
//! 3.9.1: `lease_duration` must be at least 60 s and an unrenewed lease is reclaimed about
//! 60-67 s after its last renewal.
//!
//! - **TTL 60 s** (the server's minimum: the fastest takeover after a crash), renewed every
//!   15 s by a background task, so a long iteration keeps its lease.
//! - **Graceful handoff**: on SIGTERM the holder finishes its in-flight iteration, delivers its
//!   reports, then releases; a standby polls every 0.25 s during its first two minutes (a
//!   rolling update's overlap), every 5 s after, so the takeover follows the release at once.
//! - **Fencing**: an iteration starts only while the lease is known valid for another 15 s
//!   (last successful renewal + TTL - 15 s). A holder that cannot renew (Prefect down) stops
//!   iterating before the server could hand the lease to anyone else, and resumes when it
//!   holds the lease again: never two consumers, at the price of pausing the stream during a
//!   Prefect outage longer than ~45 s. `LEADER_LEASE=off` chooses availability instead.
//! - **Who holds it**: the lease API does not say, so the holder publishes itself in the
//!   Variable `deployer-holder-<service>` (standbys name it in their health message;
//!   takeovers name the lost instance).
//! - **Crash reconciliation**: whoever takes the lease marks the service's runs still RUNNING
//!   or PENDING of any other instance as CRASHED, naming the lost instance: after a SIGKILL,
//!   an OOM kill or a lost host no run stays Running.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::identity::Identity;
use crate::logs;
use crate::prefect::{PrefectClient, PrefectError};

/// Lease duration (Prefect's minimum).
pub const TTL: Duration = Duration::from_secs(60);
/// Renewal period, and the margin before expiry after which no iteration starts.
pub const RENEW_EVERY: Duration = Duration::from_secs(15);
const FAST_POLL: Duration = Duration::from_millis(250);
/// How often a standby reads who holds the lease (one more request; only for its health note).
const HOLDER_READ: Duration = Duration::from_secs(5);
const SLOW_POLL: Duration = Duration::from_secs(5);
/// How long a standby polls fast (a rolling update hands over within this).
const FAST_FOR: Duration = Duration::from_secs(120);

/// What the loop may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// This instance holds the lease: iterate.
    Holder,
    /// Another instance holds it (named when known).
    Standby(Option<String>),
    /// Prefect cannot be asked: neither iterate nor assume anything.
    Unreachable(String),
}

struct Held {
    id: Uuid,
    valid_until: Instant,
}

pub struct Lease {
    client: Arc<PrefectClient>,
    limit: String,
    variable: String,
    service_tag: String,
    me: String,
    held: Mutex<Option<Held>>,
    limit_ready: Mutex<bool>,
    /// The last holder a standby read, and when.
    seen_holder: Mutex<Option<(Option<String>, Instant)>>,
}

/// Prefect Variable names: lowercase letters, digits, `-` and `_`.
fn variable_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

impl Lease {
    pub fn new(client: Arc<PrefectClient>, identity: &Identity) -> Arc<Self> {
        let service = variable_safe(&identity.service);
        Arc::new(Lease {
            client,
            limit: format!("deployer-lease-{service}"),
            variable: format!("deployer-holder-{service}"),
            service_tag: format!("service:{}", identity.service),
            me: identity.instance.clone(),
            held: Mutex::new(None),
            limit_ready: Mutex::new(false),
            seen_holder: Mutex::new(None),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True while this instance holds a lease known valid for at least [`RENEW_EVERY`] more.
    pub fn may_iterate(&self) -> bool {
        self.held()
            .as_ref()
            .is_some_and(|h| Instant::now() < h.valid_until)
    }

    /// Wait until this instance may iterate (true) or shutdown is asked (false). `standby`
    /// is told what stands in the way each time it is checked (for the health file).
    pub async fn ensure(
        self: &Arc<Self>,
        shutdown: &mut watch::Receiver<bool>,
        standby: &dyn Fn(&Standing) -> futures::future::BoxFuture<'static, ()>,
    ) -> bool {
        if self.may_iterate() {
            return true;
        }
        let since = Instant::now();
        let mut last_note = None;
        loop {
            if *shutdown.borrow() {
                return false;
            }
            let standing = self.try_take().await;
            if standing == Standing::Holder {
                return true;
            }
            if last_note.as_ref() != Some(&standing) {
                match &standing {
                    Standing::Standby(holder) => logs::info(
                        "standby: another instance holds the lease",
                        json!({ "holder": holder, "instance": self.me }),
                    ),
                    Standing::Unreachable(e) => logs::warn(
                        "fenced: the lease cannot be confirmed, so no iteration starts",
                        json!({ "error": e, "instance": self.me }),
                    ),
                    Standing::Holder => {}
                }
                last_note = Some(standing.clone());
            }
            standby(&standing).await;
            let poll = if since.elapsed() < FAST_FOR {
                FAST_POLL
            } else {
                SLOW_POLL
            };
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.wait_for(|s| *s) => return false,
            }
        }
    }

    /// Renew a lease this instance holds, or take a free one.
    async fn try_take(self: &Arc<Self>) -> Standing {
        let current = self.held().as_ref().map(|h| h.id);
        if let Some(id) = current {
            match self.client.renew_lease(id, TTL).await {
                Ok(true) => {
                    self.renewed(id);
                    return Standing::Holder;
                }
                Ok(false) => {
                    logs::warn("lease lost (expired on the server)", json!({ "lease": id }));
                    *self.held() = None;
                }
                Err(e) => return Standing::Unreachable(e.to_string()),
            }
        }
        if let Err(e) = self.ensure_limit().await {
            return Standing::Unreachable(e.to_string());
        }
        match self.client.acquire_lease(&self.limit, TTL).await {
            Ok(Some(id)) => {
                self.renewed(id);
                self.on_acquired(id).await;
                Standing::Holder
            }
            Ok(None) => Standing::Standby(self.standby_holder().await),
            Err(e) => Standing::Unreachable(e.to_string()),
        }
    }

    fn renewed(&self, id: Uuid) {
        *self.held() = Some(Held {
            id,
            valid_until: Instant::now() + TTL - RENEW_EVERY,
        });
    }

    async fn ensure_limit(&self) -> Result<(), PrefectError> {
        if *self
            .limit_ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            return Ok(());
        }
        self.client.ensure_single_slot_limit(&self.limit).await?;
        *self
            .limit_ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        Ok(())
    }

    /// Who holds the lease, read at most every [`HOLDER_READ`] while standing by.
    async fn standby_holder(&self) -> Option<String> {
        let cached = self
            .seen_holder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some((holder, at)) = cached
            && at.elapsed() < HOLDER_READ
        {
            return holder;
        }
        let holder = self.holder().await.map(|h| h.0);
        *self
            .seen_holder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((holder.clone(), Instant::now()));
        holder
    }

    /// The published holder: (instance, released gracefully, acquired at).
    async fn holder(&self) -> Option<(String, bool, String)> {
        let v = self.client.variable(&self.variable).await.ok()??;
        Some((
            v.get("instance")?.as_str()?.to_string(),
            v.get("released").and_then(Value::as_bool).unwrap_or(false),
            v.get("since")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ))
    }

    /// Just took the lease: say so, mark what a lost holder left open as CRASHED, publish
    /// this instance as the holder, and keep the lease renewed from now on.
    async fn on_acquired(self: &Arc<Self>, id: Uuid) {
        let previous = self.holder().await;
        logs::info(
            "lease acquired: this instance runs the iterations",
            json!({ "instance": self.me, "previous": previous.as_ref().map(|p| &p.0), "lease": id }),
        );
        self.reconcile(previous.as_ref()).await;
        let value =
            json!({ "instance": self.me, "since": Utc::now().to_rfc3339(), "released": false });
        if let Err(e) = self.client.put_variable(&self.variable, &value).await {
            logs::warn(
                "cannot publish the lease holder",
                json!({ "error": e.to_string() }),
            );
        }
        let me = Arc::clone(self);
        tokio::spawn(async move { me.renew_loop(id).await });
    }

    /// Runs of this service still RUNNING/PENDING from another instance can only be left by a
    /// holder that died (a live one would still hold the lease): mark them CRASHED.
    async fn reconcile(&self, previous: Option<&(String, bool, String)>) {
        let open = match self.client.open_runs(&self.service_tag).await {
            Ok(runs) => runs,
            Err(e) => {
                logs::warn(
                    "crash reconciliation skipped",
                    json!({ "error": e.to_string() }),
                );
                return;
            }
        };
        for run in open
            .iter()
            .filter(|r| r.instance.as_deref() != Some(self.me.as_str()))
        {
            let lost = run.instance.as_deref().unwrap_or("an unknown instance");
            let since = previous
                .filter(|p| Some(p.0.as_str()) == run.instance.as_deref())
                .map_or(String::new(), |p| format!(", holder since {}", p.2));
            let message = format!(
                "instance {lost} stopped reporting (its lease was not renewed for {} s{since}; this run started {}); taken over by {}",
                TTL.as_secs(),
                run.start.as_deref().unwrap_or("at an unknown time"),
                self.me
            );
            match self
                .client
                .set_flow_run_state(run.id, "CRASHED", &message)
                .await
            {
                Ok(s) if s.accepted => logs::warn(
                    "marked a lost instance's run CRASHED",
                    json!({ "flow_run": run.id, "instance": lost }),
                ),
                Ok(s) => logs::info(
                    "a lost instance's run had already ended",
                    json!({ "flow_run": run.id, "state": s.current_type }),
                ),
                Err(e) => logs::warn(
                    "cannot mark a lost instance's run CRASHED",
                    json!({ "flow_run": run.id, "error": e.to_string() }),
                ),
            }
        }
    }

    /// Keep the lease while it is ours; a failed renewal leaves `valid_until` to run out
    /// (fencing), a lease the server dropped is let go.
    async fn renew_loop(self: Arc<Self>, id: Uuid) {
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            if self.held().as_ref().map(|h| h.id) != Some(id) {
                return;
            }
            match self.client.renew_lease(id, TTL).await {
                Ok(true) => self.renewed(id),
                Ok(false) => {
                    logs::warn("lease lost (expired on the server)", json!({ "lease": id }));
                    *self.held() = None;
                    return;
                }
                Err(e) => logs::warn(
                    "lease renewal failed; iterations stop if it cannot be renewed in time",
                    json!({ "error": e.to_string() }),
                ),
            }
        }
    }

    /// Give the lease back (graceful shutdown, after the last reports were delivered).
    pub async fn release(&self) {
        let Some(held) = self.held().take() else {
            return;
        };
        match self.client.release_lease(held.id).await {
            Ok(()) => logs::info("lease released", json!({ "instance": self.me })),
            Err(e) => logs::warn(
                "cannot release the lease; a standby takes over when it expires",
                json!({ "error": e.to_string() }),
            ),
        }
        let value =
            json!({ "instance": self.me, "since": Utc::now().to_rfc3339(), "released": true });
        let _ = self.client.put_variable(&self.variable, &value).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_fit_prefect_variables() {
        assert_eq!(
            super::variable_safe("Demo.Price_stream:7"),
            "demo-price_stream-7"
        );
    }
}
