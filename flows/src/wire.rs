//! Prefect's REST shapes the flow sends and reads, as serde structs (docs: the Prefect 3 REST
//! API; measured against the server in ../shared/reference/prefect-rest.md). Only the fields
//! the flow uses are read; Prefect's other fields are ignored. The task-run events
//! (src/report.rs `task_events`) keep the event schema's own nesting as JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// `POST /flows/`: a flow by name (the server returns the existing one).
#[derive(Serialize)]
pub struct FlowCreate<'a> {
    pub name: &'a str,
}

/// A state to propose or to start a run in.
#[derive(Serialize)]
pub struct StateCreate<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub message: &'a str,
}

/// `POST /flow_runs/`: one iteration's flow run, created already RUNNING with our times.
#[derive(Serialize)]
pub struct FlowRunCreate<'a> {
    pub flow_id: Uuid,
    pub name: String,
    pub parameters: RunParameters<'a>,
    pub tags: &'a [String],
    pub labels: Labels,
    /// Our run id: a retried create returns the same flow run instead of a second one.
    pub idempotency_key: String,
    pub state: StateCreate<'a>,
}

/// A flow run's parameters: which iteration of which deployment (and what it replays).
#[derive(Serialize)]
pub struct RunParameters<'a> {
    pub run_id: Uuid,
    pub iteration: u64,
    pub deployment: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<Uuid>,
}

/// The observed times of a run, as labels (`PATCH /flow_runs/{id}/labels` merges them).
#[derive(Serialize)]
pub struct Labels {
    #[serde(rename = "observed.start", skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(rename = "observed.end", skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

/// `POST /flow_runs/{id}/set_state`.
#[derive(Serialize)]
pub struct SetStateRequest<'a> {
    pub state: StateCreate<'a>,
}

/// A created object (flow, flow run): its id.
#[derive(Deserialize)]
pub struct Created {
    pub id: Uuid,
}

/// The orchestration answer to `set_state`: ACCEPT, or REJECT/ABORT/WAIT with the current state.
#[derive(Deserialize)]
pub struct SetStateResponse {
    pub status: Option<String>,
    pub state: Option<StateRead>,
}

#[derive(Deserialize)]
pub struct StateRead {
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// `GET /flow_runs/{id}`: only its state type is read.
#[derive(Deserialize)]
pub struct FlowRunState {
    pub state_type: Option<String>,
}

/// Each run of `POST /flow_runs/filter`.
#[derive(Deserialize)]
pub struct FlowRunRead {
    pub id: Uuid,
    pub tags: Option<Vec<String>>,
    pub start_time: Option<String>,
}

/// `POST /flow_runs/filter`: runs with every one of the tags, in one of the state types.
#[derive(Serialize)]
pub struct FlowRunFilter<'a> {
    pub flow_runs: RunCriteria<'a>,
    pub limit: u32,
}

#[derive(Serialize)]
pub struct RunCriteria<'a> {
    pub tags: All<'a>,
    pub state: StateCriteria<'a>,
}

#[derive(Serialize)]
pub struct All<'a> {
    pub all_: &'a [&'a str],
}

#[derive(Serialize)]
pub struct StateCriteria<'a> {
    #[serde(rename = "type")]
    pub kind: Any<'a>,
}

#[derive(Serialize)]
pub struct Any<'a> {
    pub any_: &'a [&'a str],
}

/// One entry of `POST /logs/`.
#[derive(Serialize)]
pub struct LogCreate<'a> {
    pub name: &'a str,
    pub level: u8,
    pub message: &'a str,
    pub timestamp: String,
    pub flow_run_id: Uuid,
    pub task_run_id: Option<Uuid>,
}

/// A Variable: `GET /variables/name/{name}` reads it, `PATCH` sets its value.
#[derive(Serialize, Deserialize)]
pub struct VariableValue {
    #[serde(default)]
    pub value: Value,
}

/// `POST /variables/`.
#[derive(Serialize)]
pub struct VariableCreate<'a> {
    pub name: &'a str,
    pub value: &'a Value,
}

/// A String block document: its `data.value`.
#[derive(Deserialize)]
pub struct BlockDocument {
    #[serde(default)]
    pub data: VariableValue,
}

impl Default for VariableValue {
    fn default() -> Self {
        Self { value: Value::Null }
    }
}

/// `POST /v2/concurrency_limits/`.
#[derive(Serialize)]
pub struct LimitCreate<'a> {
    pub name: &'a str,
    pub limit: u32,
}

/// `POST /v2/concurrency_limits/increment-with-lease`.
#[derive(Serialize)]
pub struct LeaseIncrement<'a> {
    pub names: [&'a str; 1],
    pub slots: u32,
    pub lease_duration: f64,
}

#[derive(Deserialize)]
pub struct LeaseGranted {
    pub lease_id: Uuid,
}

/// `POST /v2/concurrency_limits/leases/{id}/renew`.
#[derive(Serialize)]
pub struct LeaseRenew {
    pub lease_duration: f64,
}

/// `POST /v2/concurrency_limits/decrement-with-lease`.
#[derive(Serialize)]
pub struct LeaseRelease {
    pub lease_id: Uuid,
}
