//! Prefect over REST: the client, its retries and the calls the flow makes. What is reported
//! when, and how it survives outages, is src/report.rs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crate::config::Secret;
use crate::logs;
use crate::wire;
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
    /// The API root (`…/api`); paths are appended as encoded segments ([`Self::url`]).
    base: Url,
    api_key: Option<Secret>,
    requests: AtomicU64,
    /// Moving average of answered requests' latency, microseconds (sizes the shutdown flush).
    latency_us: AtomicU64,
}

impl PrefectClient {
    pub fn new(
        base: &Url,
        api_key: Option<Secret>,
        timeout: Duration,
    ) -> Result<Self, crate::http::ClientError> {
        let http = crate::http::client("Prefect", timeout, Duration::from_secs(3), |b| {
            b.pool_max_idle_per_host(4)
        })?;
        Ok(PrefectClient {
            http,
            base: base.clone(),
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

    /// The API root joined with `segments`, each percent-encoded as one path segment (a
    /// name with `/` or spaces stays one segment); `""` last gives the trailing slash some
    /// Prefect routes need.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// A request's name in messages: its path below the API root (a Cloud root names the
    /// account and workspace, so it is never printed).
    fn named(&self, url: &Url) -> String {
        let root = self.base.path().trim_end_matches('/');
        url.path().strip_prefix(root).unwrap_or("").to_string()
    }

    /// One call with retries on 429/502/503 and transport errors (short jittered backoff),
    /// the body serialised from its wire type.
    async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&B>,
    ) -> Result<(StatusCode, String), PrefectError> {
        let body = body
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| PrefectError::Body(format!("{method} /{}: {e}", path.join("/"))))?;
        self.call_raw(method, path, body).await
    }

    /// `call` with an already serialised JSON body (bulk items are kept as text: a JSON
    /// tree costs several times its text in memory). Success and 404 give the status and the
    /// body's text; any other status is an error.
    async fn call_raw(
        &self,
        method: Method,
        path: &[&str],
        body: Option<String>,
    ) -> Result<(StatusCode, String), PrefectError> {
        let url = self.url(path);
        let path = self.named(&url);
        let send = || async {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
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
            return Ok((status, text));
        }
        Err(PrefectError::Status {
            what: format!("{method} {path}"),
            status: status.as_u16(),
            body: text.chars().take(300).collect(),
        })
    }

    /// The answer's body as its wire type.
    fn read<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, PrefectError> {
        serde_json::from_str(text).map_err(|_| PrefectError::Body(what.into()))
    }

    pub async fn ensure_flow(&self, name: &str) -> Result<Uuid, PrefectError> {
        let body = wire::FlowCreate { name };
        let (_, text) = self.call(Method::POST, &["flows", ""], Some(&body)).await?;
        Ok(Self::read::<wire::Created>("POST /flows/", &text)?.id)
    }

    pub async fn create_flow_run(
        &self,
        body: &wire::FlowRunCreate<'_>,
    ) -> Result<Uuid, PrefectError> {
        let (_, text) = self
            .call(Method::POST, &["flow_runs", ""], Some(body))
            .await?;
        Ok(Self::read::<wire::Created>("POST /flow_runs/", &text)?.id)
    }

    pub async fn set_flow_run_state(
        &self,
        id: Uuid,
        state: &str,
        message: &str,
    ) -> Result<SetState, PrefectError> {
        let body = wire::SetStateRequest {
            state: wire::StateCreate {
                kind: state,
                name: None,
                message,
            },
        };
        let id = id.to_string();
        let (_, text) = self
            .call(Method::POST, &["flow_runs", &id, "set_state"], Some(&body))
            .await?;
        // An unreadable answer is not an acceptance.
        let answer: Option<wire::SetStateResponse> = serde_json::from_str(&text).ok();
        Ok(SetState {
            accepted: answer
                .as_ref()
                .is_some_and(|a| a.status.as_deref() == Some("ACCEPT")),
            current_type: answer.and_then(|a| a.state).and_then(|s| s.kind),
        })
    }

    /// The run's current state type, None when the run does not exist.
    pub async fn flow_run_state(&self, id: Uuid) -> Result<Option<String>, PrefectError> {
        let id = id.to_string();
        let (status, text) = self
            .call::<()>(Method::GET, &["flow_runs", &id], None)
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(serde_json::from_str::<wire::FlowRunState>(&text)
            .ok()
            .and_then(|r| r.state_type))
    }

    /// Task-run events: `body` is a JSON array already serialised.
    pub async fn post_events(&self, body: String) -> Result<(), PrefectError> {
        self.call_raw(Method::POST, &["events"], Some(body))
            .await
            .map(|_| ())
    }

    /// Log entries: `body` is a JSON array already serialised.
    pub async fn post_logs(&self, body: String) -> Result<(), PrefectError> {
        self.call_raw(Method::POST, &["logs", ""], Some(body))
            .await
            .map(|_| ())
    }

    /// Merge `labels` into a flow run's labels.
    pub async fn patch_labels(&self, id: Uuid, labels: &wire::Labels) -> Result<(), PrefectError> {
        let id = id.to_string();
        self.call(Method::PATCH, &["flow_runs", &id, "labels"], Some(labels))
            .await
            .map(|_| ())
    }

    /// A Variable's value (any JSON), None when it does not exist.
    pub async fn variable(&self, name: &str) -> Result<Option<Value>, PrefectError> {
        let (status, text) = self
            .call::<()>(Method::GET, &["variables", "name", name], None)
            .await?;
        Ok((status != StatusCode::NOT_FOUND).then(|| {
            serde_json::from_str::<wire::VariableValue>(&text)
                .map(|v| v.value)
                .unwrap_or(Value::Null)
        }))
    }

    /// A String block's `value`, None when the block (or its type) does not exist.
    pub async fn string_block(&self, name: &str) -> Result<Option<Value>, PrefectError> {
        let path = [
            "block_types",
            "slug",
            "string",
            "block_documents",
            "name",
            name,
        ];
        let (status, text) = self.call::<()>(Method::GET, &path, None).await?;
        Ok((status != StatusCode::NOT_FOUND).then(|| {
            serde_json::from_str::<wire::BlockDocument>(&text)
                .map(|b| b.data.value)
                .unwrap_or(Value::Null)
        }))
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
        let body = wire::LimitCreate { name, limit: 1 };
        match self
            .call(Method::POST, &["v2", "concurrency_limits", ""], Some(&body))
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
        let body = wire::LeaseIncrement {
            names: [limit],
            slots: 1,
            lease_duration: ttl.as_secs_f64(),
        };
        let path = ["v2", "concurrency_limits", "increment-with-lease"];
        match self.call(Method::POST, &path, Some(&body)).await {
            Ok((_, text)) => Self::read::<wire::LeaseGranted>("increment-with-lease", &text)
                .map(|g| Some(g.lease_id)),
            Err(PrefectError::Status { status: 423, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Extend a lease: false when the server no longer has it (expired and reclaimed).
    pub async fn renew_lease(&self, id: Uuid, ttl: Duration) -> Result<bool, PrefectError> {
        let body = wire::LeaseRenew {
            lease_duration: ttl.as_secs_f64(),
        };
        let id = id.to_string();
        let path = ["v2", "concurrency_limits", "leases", &id, "renew"];
        match self.call(Method::POST, &path, Some(&body)).await {
            Ok((status, _)) => Ok(status != StatusCode::NOT_FOUND),
            Err(PrefectError::Status { status: 410, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn release_lease(&self, id: Uuid) -> Result<(), PrefectError> {
        let body = wire::LeaseRelease { lease_id: id };
        let path = ["v2", "concurrency_limits", "decrement-with-lease"];
        self.call(Method::POST, &path, Some(&body))
            .await
            .map(|_| ())
    }

    /// Set a Variable (create it when absent).
    pub async fn put_variable(&self, name: &str, value: &Value) -> Result<(), PrefectError> {
        let update = wire::VariableValue {
            value: value.clone(),
        };
        let (status, _) = self
            .call(Method::PATCH, &["variables", "name", name], Some(&update))
            .await?;
        if status == StatusCode::NOT_FOUND {
            let create = wire::VariableCreate { name, value };
            self.call(Method::POST, &["variables", ""], Some(&create))
                .await?;
        }
        Ok(())
    }

    /// Flow runs carrying `tag` that are still RUNNING or PENDING.
    pub async fn open_runs(&self, tag: &str) -> Result<Vec<OpenRun>, PrefectError> {
        let body = wire::FlowRunFilter {
            flow_runs: wire::RunCriteria {
                tags: wire::All { all_: &[tag] },
                state: wire::StateCriteria {
                    kind: wire::Any {
                        any_: &["RUNNING", "PENDING"],
                    },
                },
            },
            limit: 200,
        };
        let (_, text) = self
            .call(Method::POST, &["flow_runs", "filter"], Some(&body))
            .await?;
        // Run by run: one odd entry must not hide the others from crash reconciliation.
        let runs: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
        Ok(runs
            .into_iter()
            .filter_map(|r| serde_json::from_value::<wire::FlowRunRead>(r).ok())
            .map(|r| OpenRun {
                id: r.id,
                instance: r
                    .tags
                    .unwrap_or_default()
                    .iter()
                    .find_map(|t| t.strip_prefix("instance:"))
                    .map(str::to_string),
                start: r.start_time,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_encoded_path_segment() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = Url::parse("http://127.0.0.1:4200/api/").expect("url");
        let c = PrefectClient::new(&base, None, Duration::from_secs(1)).expect("client");
        assert_eq!(
            c.url(&["variables", "name", "a b/c"]).as_str(),
            "http://127.0.0.1:4200/api/variables/name/a%20b%2Fc"
        );
        assert_eq!(
            c.url(&["variables", "name", "btc_price-1"]).as_str(),
            "http://127.0.0.1:4200/api/variables/name/btc_price-1"
        );
        assert_eq!(
            c.url(&["flows", ""]).as_str(),
            "http://127.0.0.1:4200/api/flows/"
        );
        let cloud =
            Url::parse("https://api.prefect.cloud/api/accounts/a1/workspaces/w1").expect("url");
        let c = PrefectClient::new(&cloud, None, Duration::from_secs(1)).expect("client");
        let logs = c.url(&["logs", ""]);
        assert_eq!(logs.path(), "/api/accounts/a1/workspaces/w1/logs/");
        assert_eq!(c.named(&logs), "/logs/", "messages never name the account");
    }
}
