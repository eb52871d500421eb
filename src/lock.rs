//! One deploy at a time per project. `up`, `redeploy`, `rollback` and `destroy` take the lock
//! just before their first change ([`before_change`]), so a no-op `up` never touches it,
//! hold it while they run (renewing its expiry), and release it at the end (main).
//!
//! Store: one S3 object per project, `s3://deployer-locks-<account>-<region>/<project>.json`,
//! written with S3 conditional writes: `If-None-Match: *` takes a free lock, `If-Match:
//! <ETag>` takes over an expired one or renews ours, and `DeleteObject If-Match` releases
//! only our own. Each is one compare-and-swap on the server, so two runs can never both
//! win. (SSM parameters have no compare-and-swap for a takeover; a DynamoDB conditional put
//! would do too, but needs a table and another SDK crate, while S3 is already in the
//! workspace and moto 5.2.5 models both conditions.) The bucket is shared by the
//! account's projects in that region and left in place by `destroy`.
//!
//! [`Store`] is an enum so another target (the local Docker engine) can add a local-file
//! variant with the same semantics.

use crate::error::{Error, Result};
use crate::ui::Ui;
use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

/// How long a lock is valid without renewal: a run that died leaves a lock others take over
/// after at most this long. A live run renews it every [`RENEW_EVERY`].
pub const TTL: Duration = Duration::from_secs(300);
pub const RENEW_EVERY: Duration = Duration::from_secs(60);

/// What the lock object says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    pub owner: String,
    pub command: String,
    /// Unix seconds.
    pub started: u64,
    pub expires: u64,
}

impl LockInfo {
    pub fn new(owner: &str, command: &str, now: u64) -> Self {
        Self {
            owner: owner.to_string(),
            command: command.to_string(),
            started: now,
            expires: now + TTL.as_secs(),
        }
    }
}

/// Where locks live.
#[derive(Clone, Debug)]
pub enum Store {
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        key: String,
        region: String,
    },
}

/// The store's version of the lock object (the S3 ETag): what a compare-and-swap compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(String);

/// The outcome of one conditional write.
#[derive(Debug)]
pub enum Write {
    Done(Version),
    /// Someone else wrote first (the condition failed).
    Lost,
}

impl Store {
    /// The S3 store for `project` in this account and region.
    pub fn s3(client: aws_sdk_s3::Client, account: &str, region: &str, project: &str) -> Self {
        Store::S3 {
            client,
            bucket: crate::names::lock_bucket(account, region),
            key: crate::names::Names::new(project).lock_key(),
            region: region.to_string(),
        }
    }

    fn name(&self) -> String {
        match self {
            Store::S3 { bucket, key, .. } => format!("s3://{bucket}/{key}"),
        }
    }

    /// Create the bucket if it does not exist yet (once per account and region).
    async fn prepare(&self) -> Result<()> {
        let Store::S3 {
            client,
            bucket,
            region,
            ..
        } = self;
        if client.head_bucket().bucket(bucket).send().await.is_ok() {
            return Ok(());
        }
        let mut req = client.create_bucket().bucket(bucket);
        if region != "us-east-1" {
            req = req.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                        region.as_str(),
                    ))
                    .build(),
            );
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(crate::aws::failure(
                &format!("create the lock bucket {bucket} (s3:CreateBucket)"),
                e,
            )),
        }
    }

    /// The current lock and its version; None when free.
    async fn read(&self) -> Result<Option<(LockInfo, Version)>> {
        let Store::S3 {
            client,
            bucket,
            key,
            ..
        } = self;
        let out = match client.get_object().bucket(bucket).key(key).send().await {
            Ok(o) => o,
            Err(e)
                if e.as_service_error().is_some_and(
                    aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key,
                ) =>
            {
                return Ok(None);
            }
            Err(e) => {
                return Err(crate::aws::failure(
                    &format!("read the deploy lock {} (s3:GetObject)", self.name()),
                    e,
                ));
            }
        };
        let version = Version(out.e_tag().unwrap_or_default().to_string());
        let body = out.body.collect().await.map_err(|e| {
            Error::failure(format!("read the deploy lock {}: {e}", self.name())).because(e)
        })?;
        // An unreadable lock object is still a lock: treat it as expired so it can be taken
        // over (with a warning) instead of blocking every deploy forever.
        let info = serde_json::from_slice(&body.into_bytes()).unwrap_or(LockInfo {
            owner: "unknown (unreadable lock object)".into(),
            command: "unknown".into(),
            started: 0,
            expires: 0,
        });
        Ok(Some((info, version)))
    }

    /// Write `info` if no lock exists (`expected` None) or if the lock is still at `expected`.
    async fn write(&self, info: &LockInfo, expected: Option<&Version>) -> Result<Write> {
        let Store::S3 {
            client,
            bucket,
            key,
            ..
        } = self;
        let body = serde_json::to_vec(info).unwrap_or_default();
        let mut req = client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        req = match expected {
            None => req.if_none_match("*"),
            Some(v) => req.if_match(&v.0),
        };
        match req.send().await {
            Ok(o) => Ok(Write::Done(Version(
                o.e_tag().unwrap_or_default().to_string(),
            ))),
            Err(e) if precondition_failed(&e) => Ok(Write::Lost),
            Err(e) => Err(crate::aws::failure(
                &format!("write the deploy lock {} (s3:PutObject)", self.name()),
                e,
            )),
        }
    }

    /// Delete the lock if it is still at `version` (ours).
    async fn remove(&self, version: &Version) -> Result<Write> {
        let Store::S3 {
            client,
            bucket,
            key,
            ..
        } = self;
        match client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .if_match(&version.0)
            .send()
            .await
        {
            Ok(_) => Ok(Write::Done(version.clone())),
            Err(e) if precondition_failed(&e) => Ok(Write::Lost),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.meta().code() == Some("NoSuchKey")) =>
            {
                Ok(Write::Lost)
            }
            Err(e) => Err(crate::aws::failure(
                &format!("release the deploy lock {} (s3:DeleteObject)", self.name()),
                e,
            )),
        }
    }
}

/// HTTP 412 (a failed If-Match / If-None-Match) or 409 (a concurrent conditional write).
fn precondition_failed<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> bool {
    e.raw_response()
        .is_some_and(|r| matches!(r.status().as_u16(), 412 | 409))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2026-12-02 06:16:05 UTC` for a unix time (no date crate needed for one format).
pub fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Who is deploying: the CI run, or user@host and the process id.
pub fn owner() -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(repo), Some(run)) = (env("GITHUB_REPOSITORY"), env("GITHUB_RUN_ID")) {
        return format!("GitHub Actions run {run} of {repo}");
    }
    let user = env("USER").unwrap_or_else(|| "someone".into());
    let host = env("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host} (pid {})", std::process::id())
}

/// The lock one command takes when it first needs it.
pub struct Gate {
    store: Store,
    info: LockInfo,
    wait_for: Duration,
    ui: Ui,
    held: Mutex<Option<Held>>,
}

struct Held {
    /// When this run got the lock: state read before it may be stale.
    at: std::time::Instant,
    version: Arc<std::sync::Mutex<Version>>,
    renew: tokio::task::JoinHandle<()>,
}

static GATE: OnceLock<Gate> = OnceLock::new();

impl Gate {
    pub fn new(store: Store, command: &str, wait_for: Duration, ui: Ui) -> Self {
        Self {
            store,
            info: LockInfo::new(&owner(), command, now()),
            wait_for,
            ui,
            held: Mutex::new(None),
        }
    }

    /// Take the lock if not held yet; waits up to `wait_for`, else exit 5. True when the
    /// lock was taken after `read_at`: what the caller read then may have been changed by
    /// the previous holder, so it reads again under the lock.
    pub async fn ensure(&self, read_at: std::time::Instant) -> Result<bool> {
        let mut held = self.held.lock().await;
        if let Some(h) = held.as_ref() {
            return Ok(h.at > read_at);
        }
        self.store.prepare().await?;
        let version = self.acquire().await?;
        self.ui.detail(format!(
            "took the deploy lock {} ({} until {})",
            self.store.name(),
            self.info.owner,
            utc(self.info.expires)
        ));
        let version = Arc::new(std::sync::Mutex::new(version));
        let renew = tokio::spawn(renew(
            self.store.clone(),
            self.info.clone(),
            version.clone(),
            self.ui.clone(),
        ));
        *held = Some(Held {
            at: std::time::Instant::now(),
            version,
            renew,
        });
        Ok(true)
    }

    async fn acquire(&self) -> Result<Version> {
        let deadline = tokio::time::Instant::now() + self.wait_for;
        let mut said_waiting = false;
        loop {
            let mine = LockInfo::new(&self.info.owner, &self.info.command, now());
            if let Write::Done(v) = self.store.write(&mine, None).await? {
                return Ok(v);
            }
            let Some((theirs, version)) = self.store.read().await? else {
                continue; // released between our write and our read
            };
            if theirs.expires <= now() {
                self.ui.warn(format!(
                    "taking over the deploy lock of {} ({}, since {}): it expired at {} without being renewed, so that run is gone",
                    theirs.owner, theirs.command, utc(theirs.started), utc(theirs.expires)
                ));
                if let Write::Done(v) = self.store.write(&mine, Some(&version)).await? {
                    return Ok(v);
                }
                continue; // someone else took it over first
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(locked(&theirs, self.wait_for));
            }
            if !said_waiting {
                self.ui.step(format!(
                    "waiting for the deploy lock: held by {} ({}) since {}",
                    theirs.owner,
                    theirs.command,
                    utc(theirs.started)
                ));
                said_waiting = true;
            }
            let left = deadline - tokio::time::Instant::now();
            tokio::select! {
                _ = tokio::time::sleep(left.min(Duration::from_secs(2))) => {}
                _ = crate::interrupt::cancelled() => {
                    return Err(Error::interrupted("interrupted while waiting for the deploy lock: nothing was changed"));
                }
            }
        }
    }

    /// Release the lock if this run holds it (also after an interrupt: it is part of the undo).
    pub async fn release(&self) {
        let Some(held) = self.held.lock().await.take() else {
            return;
        };
        held.renew.abort();
        let version = held.version.lock().map(|v| v.clone());
        let Ok(version) = version else { return };
        // After an interrupt the exit must stay prompt: a lock left behind expires by itself.
        let bound = if crate::interrupt::requested() {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(30)
        };
        let removed =
            tokio::time::timeout(bound, crate::interrupt::undo(self.store.remove(&version)))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::failure(format!(
                        "no answer within {} s",
                        bound.as_secs()
                    )))
                });
        match removed {
            Ok(Write::Done(_)) => self
                .ui
                .detail(format!("released the deploy lock {}", self.store.name())),
            Ok(Write::Lost) => self.ui.warn(format!(
                "the deploy lock {} was taken over by another run before this one released it",
                self.store.name()
            )),
            Err(e) => self.ui.warn(format!(
                "could not release the deploy lock {}: {e}\n  it expires by itself within {} s",
                self.store.name(),
                TTL.as_secs()
            )),
        }
    }
}

/// Push the expiry forward while the run holds the lock.
async fn renew(store: Store, info: LockInfo, version: Arc<std::sync::Mutex<Version>>, ui: Ui) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let current = match version.lock() {
            Ok(v) => v.clone(),
            Err(_) => return,
        };
        let next = LockInfo {
            expires: now() + TTL.as_secs(),
            ..info.clone()
        };
        match store.write(&next, Some(&current)).await {
            Ok(Write::Done(v)) => {
                if let Ok(mut slot) = version.lock() {
                    *slot = v;
                }
            }
            Ok(Write::Lost) => {
                ui.warn(
                    "the deploy lock was taken over by another run: two deploys may now overlap",
                );
                return;
            }
            Err(e) => ui.warn(format!("could not renew the deploy lock: {e}")),
        }
    }
}

fn locked(theirs: &LockInfo, waited: Duration) -> Error {
    Error::locked(format!(
            "locked by {} since {} (`{}`; the lock expires at {} unless renewed)",
            theirs.owner,
            utc(theirs.started),
            theirs.command,
            utc(theirs.expires)
        ),
    )
    .with_help(if waited.is_zero() {
        "another deploy of this project is running: wait for it, or pass --wait-for-lock SECONDS to wait in line".to_string()
    } else {
        format!("waited {} s; pass a longer --wait-for-lock, or check that run", waited.as_secs())
    })
}

/// Make `gate` the lock this run's changes take (main, for commands that change things).
pub fn install(gate: Gate) {
    let _ = GATE.set(gate);
}

/// Called before a step's first mutating call: takes the lock once (a no-op without a gate:
/// `plan`, `status`, library use and tests). True when it was taken after `read_at`, when the
/// caller read the state it decided on: another run may have changed it meanwhile, so the
/// caller reads again (that is what keeps two deploys from registering the same revision).
pub async fn before_change(read_at: std::time::Instant) -> Result<bool> {
    match GATE.get() {
        Some(g) => g.ensure(read_at).await,
        None => Ok(false),
    }
}

/// Release the installed gate's lock, if taken (main, at the end of every run).
pub async fn release() {
    if let Some(g) = GATE.get() {
        g.release().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExitCode;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_191_565), "2026-12-02 06:06:05 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn a_lock_expires_after_its_ttl_and_the_error_names_owner_and_time() {
        let l = LockInfo::new("ci run 7", "up", 100);
        assert_eq!(l.expires, 100 + TTL.as_secs());
        let e = locked(&l, Duration::ZERO);
        assert_eq!(e.code(), ExitCode::Locked);
        assert!(
            e.message()
                .starts_with("locked by ci run 7 since 1970-01-01 00:01:40 UTC"),
            "{e}"
        );
        assert!(e.help.unwrap().contains("--wait-for-lock"));
    }
}
