//! Reading the real Prefect server that scripts/test.sh starts: the flow runs a test's
//! containers reported, by flow name.

use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The API base (`http://127.0.0.1:PORT/api`).
pub fn url() -> String {
    std::env::var("DEPLOYER_TEST_PREFECT_URL").expect(
        "DEPLOYER_TEST_PREFECT_URL is not set: run the suite with scripts/test.sh (it starts a Prefect server)",
    )
}

/// One flow run as the tests need it.
#[derive(Debug, Clone)]
pub struct FlowRun {
    pub id: String,
    /// The flow's own id of the iteration (`parameters.run_id`): the lake's file names.
    pub run_id: String,
    pub state: String,
    pub start: Option<f64>,
    pub end: Option<f64>,
    pub tags: Vec<String>,
}

async fn post(path: &str, body: Value) -> Value {
    // Under a workspace build reqwest has the flow's `rustls-no-provider` feature.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    for attempt in 0..20 {
        match client
            .post(format!("{}{path}", url()))
            .json(&body)
            .send()
            .await
        {
            // The SQLite-backed server answers 503 now and then under load: retry.
            Ok(r) if r.status().as_u16() == 503 => {}
            Ok(r) => return r.json().await.unwrap_or(Value::Null),
            Err(e) if attempt == 19 => panic!("Prefect {path}: {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("Prefect {path} kept answering 503")
}

fn seconds(v: &Value) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
    Some(t.timestamp_micros() as f64 / 1e6)
}

/// Every flow run of the flow named `flow`, oldest start first.
pub async fn runs(flow: &str) -> Vec<FlowRun> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let page = post(
            "/flow_runs/filter",
            json!({"flows": {"name": {"any_": [flow]}}, "sort": "START_TIME_ASC", "limit": 200, "offset": offset}),
        )
        .await;
        let items = page.as_array().cloned().unwrap_or_default();
        let n = items.len();
        out.extend(items.iter().map(|r| {
            FlowRun {
                id: r["id"].as_str().unwrap_or_default().to_string(),
                run_id: r["parameters"]["run_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                state: r["state_type"].as_str().unwrap_or_default().to_string(),
                start: seconds(&r["start_time"]),
                end: seconds(&r["end_time"]),
                tags: r["tags"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        }));
        if n < 200 {
            break;
        }
        offset += 200;
    }
    out.sort_by(|a, b| {
        a.start
            .partial_cmp(&b.start)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    out
}

/// Wait until the flow has at least `n` COMPLETED runs; returns all its runs.
pub async fn wait_completed(flow: &str, n: usize, within: Duration) -> Vec<FlowRun> {
    let deadline = Instant::now() + within;
    loop {
        let all = runs(flow).await;
        if all.iter().filter(|r| r.state == "COMPLETED").count() >= n {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{flow}: fewer than {n} completed runs within {within:?}: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Wait until no run of the flow is RUNNING or PENDING (reports in flight land), then return them.
pub async fn settled(flow: &str, within: Duration) -> Vec<FlowRun> {
    let deadline = Instant::now() + within;
    loop {
        let all = runs(flow).await;
        let open = all
            .iter()
            .filter(|r| matches!(r.state.as_str(), "RUNNING" | "PENDING"))
            .count();
        if open == 0 || Instant::now() >= deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Create a flow run of `flow` with `tags`, ending in `state` with `message` (a stand-in for
/// what a deployed flow would report).
pub async fn post_run(flow: &str, tags: &[String], state: &str, message: &str) {
    let f = post("/flows/", json!({ "name": flow })).await;
    let flow_id = f["id"].as_str().expect("flow id").to_string();
    let run = post(
        "/flow_runs/",
        json!({ "flow_id": flow_id, "name": format!("{flow}-{}", message.replace(' ', "-")), "tags": tags,
                "state": { "type": "RUNNING", "name": "Running" } }),
    )
    .await;
    let id = run["id"].as_str().expect("run id").to_string();
    post(
        &format!("/flow_runs/{id}/set_state"),
        json!({ "state": { "type": state, "message": message } }),
    )
    .await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefect_times_parse_as_epoch_seconds() {
        let t = super::seconds(&serde_json::json!("2026-12-06T02:32:28.713286Z")).expect("parse");
        assert!((t - 1_796_524_348.713_286).abs() < 1e-3, "{t}");
        let o = super::seconds(&serde_json::json!("1970-01-01T00:00:01+00:00")).expect("parse");
        assert!((o - 1.0).abs() < 1e-9);
    }
}
