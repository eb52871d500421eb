//! Push through the Docker engine (bollard) with per-layer progress, retries with backoff on
//! transient failures, and errors that name the cause (auth, missing repository, unreachable).

use super::auth::RegistryAuth;
use super::build::human_bytes;
use crate::error::{Error, Result};
use crate::ui::Ui;
use backon::{ExponentialBuilder, Retryable};
use bollard::Docker;
use bollard::query_parameters::PushImageOptionsBuilder;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Retries for transient push failures: `attempts` tries in all, the delay doubling from
/// `initial_delay` up to `max_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The delays between attempts (`attempts - 1` of them), for `backon`.
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.attempts.saturating_sub(1) as usize)
    }
}

/// A finished push.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    /// Manifest digest `sha256:...` as stored by the registry.
    pub digest: String,
    pub layers_pushed: u32,
    /// Layers the registry already had (or mounted from another repository).
    pub layers_skipped: u32,
    /// Layer bytes uploaded, as the engine reports them (uncompressed tar bytes read; an
    /// estimate when two layers of identical size upload at once, since the engine's layer ids
    /// are not exposed by bollard).
    pub bytes_pushed: u64,
    pub attempts: u32,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Transient,
    Unreachable,
    Auth,
    MissingRepository,
    Other,
}

fn classify(message: &str) -> Failure {
    let m = message.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
    if any(&[
        "connection refused",
        "no such host",
        "no route to host",
        "network is unreachable",
    ]) {
        Failure::Unreachable
    } else if any(&[
        "name unknown",
        "name_unknown",
        "does not exist",
        "repository not found",
    ]) {
        Failure::MissingRepository
    } else if any(&[
        "unauthorized",
        "authentication required",
        "denied",
        "no basic auth",
        "forbidden",
    ]) {
        Failure::Auth
    } else if any(&[
        "timeout",
        "timed out",
        "connection reset",
        "broken pipe",
        "eof",
        "too many requests",
        "internal server error",
        "bad gateway",
        "service unavailable",
        "tls handshake",
        "temporar",
    ]) || ["502", "503", "504", "429"]
        .iter()
        .any(|c| has_status(&m, c))
    {
        Failure::Transient
    } else {
        Failure::Other
    }
}

/// `code` as a word of its own ("HTTP status: 503 Service Unavailable"), never as digits
/// inside a digest or a size (`sha256:…5029…`), which the engine's messages also carry.
fn has_status(message: &str, code: &str) -> bool {
    message.match_indices(code).any(|(i, _)| {
        let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        !alnum(message[..i].chars().next_back()) && !alnum(message[i + code.len()..].chars().next())
    })
}

/// Push `repository:tag` (`repository` includes the registry host).
///
/// Kept whole: one retried push and its cause-specific verdicts.
pub async fn push_image(
    docker: &Docker,
    repository: &str,
    tag: &str,
    auth: Option<&RegistryAuth>,
    retry: &RetryPolicy,
    ui: &Ui,
) -> Result<Pushed> {
    let started = Instant::now();
    let host = repository.split('/').next().unwrap_or(repository);
    let spinner = ui.spinner(format!("pushing {repository}:{tag}"));
    // One tally across attempts: layers a failed attempt uploaded are skipped by the next.
    // (Sync cells: the push future may be sent between threads.)
    let total = Mutex::new(LayerTally::default());
    let attempt = AtomicU32::new(0);
    let result = (|| async {
        attempt.fetch_add(1, Ordering::Relaxed);
        let mut tally = LayerTally::default();
        let result = push_once(docker, repository, tag, auth, &mut tally, &spinner, ui).await;
        let mut t = total
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.pushed += tally.pushed;
        t.bytes += tally.bytes();
        t.skipped = tally.skipped;
        result
    })
    .retry(retry.backoff())
    .when(|e| matches!(classify(e), Failure::Transient | Failure::Unreachable))
    .notify(|e, delay| {
        spinner.println(format!(
            "push attempt {}/{} failed ({}); retrying in {:.1}s",
            attempt.load(Ordering::Relaxed),
            retry.attempts,
            e.trim(),
            delay.as_secs_f64()
        ))
    })
    .await;
    let attempt = attempt.into_inner();
    let total = total
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let error = match result {
        Ok(digest) => {
            let seconds = started.elapsed().as_secs_f64();
            spinner.finish(format!(
                "pushed {repository}:{tag} in {seconds:.1}s: {} layers uploaded ({}), {} already present",
                total.pushed,
                human_bytes(total.bytes),
                total.skipped
            ));
            return Ok(Pushed {
                digest,
                layers_pushed: total.pushed,
                layers_skipped: total.skipped,
                bytes_pushed: total.bytes,
                attempts: attempt,
                seconds,
            });
        }
        Err(error) => error,
    };
    spinner.finish("push failed");
    Err(match classify(&error) {
        Failure::Unreachable => Error::failure(format!(
            "registry {host} is unreachable after {attempt} attempts: {}",
            error.trim()
        ))
        .with_help("check that the registry is running and reachable from the Docker engine (for a local one: scripts/start-registry.sh PORT DIR)"),
        Failure::Transient => Error::failure(format!(
            "push to {host} kept failing after {attempt} attempts: {}",
            error.trim()
        ))
        .with_help("retry later; the registry or the network is having trouble"),
        Failure::Auth => Error::failure(format!(
            "registry {host} refused the push (authentication/authorization): {}",
            error.trim()
        ))
        .with_help("check the AWS credentials: the caller needs ecr:GetAuthorizationToken and push permissions on the repository"),
        Failure::MissingRepository => Error::failure(format!(
            "repository {repository} does not exist in the registry: {}",
            error.trim()
        ))
        .with_help("create it first (`deployer up` creates the ECR repository)"),
        Failure::Other => Error::failure(format!("push of {repository}:{tag} failed: {}", error.trim())),
    })
}

/// One push attempt; returns the manifest digest or the engine's error text.
async fn push_once(
    docker: &Docker,
    repository: &str,
    tag: &str,
    auth: Option<&RegistryAuth>,
    tally: &mut LayerTally,
    spinner: &crate::ui::Spinner,
    ui: &Ui,
) -> std::result::Result<String, String> {
    let options = PushImageOptionsBuilder::default().tag(tag).build();
    let credentials = auth.map(RegistryAuth::docker_credentials);
    let mut stream = docker.push_image(repository, Some(options), credentials);
    let mut digest = None;
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => return Err(error),
            Err(e) => return Err(e.to_string()),
        };
        let Some(status) = info.status.as_deref() else {
            continue;
        };
        match status {
            "Pushed" => {
                tally.pushed += 1;
                spinner.set_message(format!("pushing: {}", tally.summary()));
            }
            "Layer already exists" => {
                tally.skipped += 1;
                spinner.set_message(format!("pushing: {}", tally.summary()));
            }
            s if s.starts_with("Mounted from") => {
                tally.skipped += 1;
                spinner.set_message(format!("pushing: {}", tally.summary()));
            }
            "Pushing" => {
                if let Some(p) = info.progress_detail {
                    tally.progress(p.current, p.total);
                }
                // Byte-level updates only animate a spinner; in CI they would flood the log.
                if ui.is_tty() {
                    spinner.set_message(format!("pushing: {}", tally.summary()));
                }
            }
            s => {
                if let Some(d) = parse_digest(s) {
                    digest = Some(d);
                }
            }
        }
    }
    digest.ok_or_else(|| "the engine finished the push without reporting a digest".to_string())
}

/// `"<tag>: digest: sha256:... size: 524"` -> `sha256:...`.
fn parse_digest(status: &str) -> Option<String> {
    let (_, rest) = status.split_once(": digest: ")?;
    let digest = rest.split_whitespace().next()?;
    (digest.starts_with("sha256:") && digest.len() == 71).then(|| digest.to_string())
}

#[derive(Debug, Default)]
struct LayerTally {
    pushed: u32,
    skipped: u32,
    /// Layer size -> bytes read so far (bollard drops the layer id; the size stands in for it).
    uploading: HashMap<i64, u64>,
    bytes: u64,
}

impl LayerTally {
    fn progress(&mut self, current: Option<i64>, total: Option<i64>) {
        if let (Some(current), Some(total)) = (current, total) {
            let seen = self.uploading.entry(total).or_default();
            *seen = (*seen).max(u64::try_from(current).unwrap_or(0));
        }
    }

    fn bytes(&self) -> u64 {
        self.bytes + self.uploading.values().sum::<u64>()
    }

    fn summary(&self) -> String {
        format!(
            "{} layers uploaded ({}), {} already present",
            self.pushed,
            human_bytes(self.bytes()),
            self.skipped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_engine_errors() {
        assert_eq!(
            classify(
                "Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused"
            ),
            Failure::Unreachable
        );
        assert_eq!(
            classify("denied: Your authorization token has expired"),
            Failure::Auth
        );
        assert_eq!(
            classify("unauthorized: authentication required"),
            Failure::Auth
        );
        assert_eq!(
            classify("name unknown: The repository with name 'x' does not exist in the registry"),
            Failure::MissingRepository
        );
        assert_eq!(
            classify("received unexpected HTTP status: 503 Service Unavailable"),
            Failure::Transient
        );
        assert_eq!(classify("manifest invalid"), Failure::Other);
        // Status digits inside a digest or a size are not a status.
        assert_eq!(
            classify("manifest sha256:ab5029c4290e5039 size 5040 invalid"),
            Failure::Other
        );
        assert_eq!(classify("toomanyrequests: 429"), Failure::Transient);
    }

    #[test]
    fn parses_digest_and_backs_off() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(parse_digest(&format!("1: digest: {d} size: 524")), Some(d));
        assert_eq!(parse_digest("Preparing"), None);
        let r = RetryPolicy {
            attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
        };
        use backon::BackoffBuilder;
        let ms: Vec<u128> = r.backoff().build().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 300, 300], "four waits between five attempts");
    }
}
