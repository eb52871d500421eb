//! Prefect over REST: the client, its retries and the calls the flow makes. What is reported
//! when, and how it survives outages, is src/report.rs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::Secret;
use crate::logs;
use backon::Retryable;

/// The SQLite-backed server answers 503 in bursts under write load; ride them out (six
/// attempts in all).
const RETRIES: usize = 5;

/// One sent request that did not succeed: retried when Prefect is busy or the connection
/// failed before an answer.
enum Sent {
    /// 429/502/503: the response, kept so the last one is read like any other.
    Busy(reqwest::Response),
    Transport(reqwest::Error),
}

impl Sent {
    fn retryable(&self) -> bool {
        match self {
            Sent::Busy(_) => true,
            Sent::Transport(e) => e.is_connect() || e.is_timeout() || e.is_request(),
        }
    }
}

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
    /// Moving average of answered requests' latency, microseconds (sizes the shutdown flush).
    latency_us: AtomicU64,
}

impl PrefectClient {
    pub fn new(
        base: &str,
        api_key: Option<Secret>,
        timeout: Duration,
    ) -> Result<Self, crate::http::ClientError> {
        let http = crate::http::client("Prefect", timeout, Duration::from_secs(3), |b| {
            b.pool_max_idle_per_host(4)
        })?;
        Ok(PrefectClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            api_key,
            requests: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
        })
    }

    /// Recent latency of answered requests (zero before the first).
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }

    fn observe_latency(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).map_or(u64::MAX / 8, |t| t.min(u64::MAX / 8));
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 { took } else { (old * 7 + took) / 8 };
        self.latency_us.store(new, Ordering::Relaxed);
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
        let send = || async {
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
            let sent = std::time::Instant::now();
            let resp = req.send().await.map_err(Sent::Transport)?;
            self.observe_latency(sent.elapsed());
            if matches!(resp.status().as_u16(), 429 | 502 | 503) {
                return Err(Sent::Busy(resp));
            }
            Ok(resp)
        };
        let outcome = send
            .retry(
                crate::source::schedule(Duration::from_millis(100), Duration::from_secs(2))
                    .with_max_times(RETRIES),
            )
            .when(Sent::retryable)
            .await;
        // without_url: a Cloud URL names the account; the key is a header and never printed.
        let resp = match outcome {
            Ok(resp) | Err(Sent::Busy(resp)) => resp,
            Err(Sent::Transport(e)) => return Err(PrefectError::Transport(logs::http_error(e))),
        };
        let status = resp.status();
        let text = crate::body::text_capped(resp, crate::body::PREFECT)
            .await
            .map_err(|e| match e {
                crate::body::BodyError::Transport(t) => PrefectError::Transport(t),
                too_large => PrefectError::Body(format!("{method} {path}: {too_large}")),
            })?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            let value = if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::Null)
            };
            return Ok((status, value));
        }
        Err(PrefectError::Status {
            what: format!("{method} {path}"),
            status: status.as_u16(),
            body: text.chars().take(300).collect(),
        })
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

    /// Task-run events: `body` is a JSON array already serialised.
    pub async fn post_events(&self, body: String) -> Result<(), PrefectError> {
        self.call_raw(Method::POST, "/events", Some(body))
            .await
            .map(|_| ())
    }

    /// Log entries: `body` is a JSON array already serialised.
    pub async fn post_logs(&self, body: String) -> Result<(), PrefectError> {
        self.call_raw(Method::POST, "/logs/", Some(body))
            .await
            .map(|_| ())
    }

    /// Merge `labels` into a flow run's labels.
    pub async fn patch_labels(&self, id: Uuid, labels: &Value) -> Result<(), PrefectError> {
        self.call(
            Method::PATCH,
            &format!("/flow_runs/{id}/labels"),
            Some(labels),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_path_encoded() {
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
        assert_eq!(encode("btc_price-1"), "btc_price-1");
    }
}
