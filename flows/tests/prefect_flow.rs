//! price-stream against a real Prefect server, local price/Slack stand-ins and a file lake.
//! Needs scripts/test.sh (DEPLOYER_TEST_PREFECT_URL).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn base_env(flow: &str, price: &PriceApi) -> Vec<(&'static str, String)> {
    vec![
        ("PREFECT_API_URL", prefect_url()),
        ("FLOW_NAME", flow.to_string()),
        ("SOURCE_URL", price.url.clone()),
        // The suite shares one SQLite-backed server that answers 503 in bursts under load.
        ("REPORT_FLUSH_SECONDS", "30".to_string()),
    ]
}

fn param<'a>(run: &'a Value, name: &str) -> &'a str {
    run["parameters"][name].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn iterations_become_completed_flow_runs_with_four_tasks_logs_and_parquet() {
    let prefect = Prefect::new();
    let price = PriceApi::start(91234.5, 3000.25).await;
    let flow = unique("ps-iter");
    let mut p = spawn(&base_env(&flow, &price), &["--iterations", "3"]);
    assert_eq!(p.exit_code(WAIT).await, 0);
    assert!(
        !p.stdout_text().contains("PRICE-API-SECRET"),
        "source API key leaked into logs"
    );

    let runs = prefect
        .wait_runs(&flow, WAIT, |r| {
            r.len() == 3 && r.iter().all(|r| r["state_type"] == "COMPLETED")
        })
        .await;
    let lake = read_lake(&p.lake());
    assert_eq!(
        lake.len(),
        6,
        "3 iterations x 2 symbols: {:?}",
        lake.iter().map(|f| &f.0).collect::<Vec<_>>()
    );

    let mut iterations: Vec<i64> = Vec::new();
    for run in &runs {
        let id = run["id"].as_str().unwrap();
        let tasks = prefect.wait_task_runs(id, 4, WAIT).await;
        assert_eq!(tasks.len(), 4, "{tasks:#?}");
        let by_key = |k: &str| {
            tasks
                .iter()
                .find(|t| t["task_key"] == format!("price_stream.{k}"))
                .unwrap_or_else(|| panic!("no {k} task run in {tasks:#?}"))
        };
        // Dependency edges extract -> transform -> load -> alert.
        for (down, up) in [
            ("transform", "extract"),
            ("load", "transform"),
            ("alert", "load"),
        ] {
            assert_eq!(
                by_key(down)["task_inputs"]["upstream"][0]["id"],
                by_key(up)["id"],
                "{down} must depend on {up}"
            );
        }
        for t in &tasks {
            assert_eq!(t["state_type"], "COMPLETED", "{t:#}");
            assert!(!t["start_time"].is_null() && !t["end_time"].is_null());
        }
        // Logs: one per task run at least, attached to the task runs.
        let deadline = tokio::time::Instant::now() + WAIT;
        let logs = loop {
            let logs = prefect.logs(id).await;
            if logs.len() >= 5 || tokio::time::Instant::now() > deadline {
                break logs;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for t in &tasks {
            assert!(
                logs.iter().any(|l| l["task_run_id"] == t["id"]),
                "no log for task {} in {logs:#?}",
                t["name"]
            );
        }
        // The rows of this run carry its run id and iteration.
        let run_id = param(run, "run_id");
        let rows: Vec<&Row> = lake
            .iter()
            .flat_map(|f| &f.1)
            .filter(|r| r.run_id == run_id)
            .collect();
        assert_eq!(rows.len(), 2, "run {run_id}");
        let it = run["parameters"]["iteration"].as_i64().unwrap();
        assert!(
            rows.iter()
                .all(|r| r.iteration == it && r.currency == "USD")
        );
        iterations.push(it);
        let btc = rows.iter().find(|r| r.symbol == "BTC").unwrap();
        assert_eq!(btc.price, 91234.5);
        let eth = rows.iter().find(|r| r.symbol == "ETH").unwrap();
        assert_eq!(eth.price, 3000.25);
        let today = chrono_like_date(btc.observed_at_us);
        assert_eq!(btc.date, today);
    }
    iterations.sort();
    assert_eq!(iterations, vec![1, 2, 3]);
}

/// YYYY-MM-DD of a UTC microsecond timestamp (civil-from-days, no date crate needed).
fn chrono_like_date(us: i64) -> String {
    let days = us.div_euclid(86_400_000_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_source_fails_runs_and_the_loop_goes_on() {
    let prefect = Prefect::new();
    let price = PriceApi::start(91000.0, 3000.0).await;
    price.state.lock().unwrap().script = vec![PriceMode::Status(500), PriceMode::Malformed];
    let flow = unique("ps-fail");
    let mut p = spawn(&base_env(&flow, &price), &["--iterations", "3"]);
    assert_eq!(p.exit_code(WAIT).await, 0);

    let runs = prefect
        .wait_runs(&flow, WAIT, |r| {
            r.len() == 3 && r.iter().all(|r| r["state_type"] != "RUNNING")
        })
        .await;
    let state_of = |i: i64| {
        runs.iter()
            .find(|r| r["parameters"]["iteration"] == i)
            .unwrap_or_else(|| panic!("no run for iteration {i}"))
    };
    let (r1, r2, r3) = (state_of(1), state_of(2), state_of(3));
    assert_eq!(r1["state_type"], "FAILED");
    assert_eq!(r2["state_type"], "FAILED");
    assert_eq!(r3["state_type"], "COMPLETED");
    assert!(
        r1["state"]["message"]
            .as_str()
            .unwrap()
            .contains("HTTP 500"),
        "{:#}",
        r1["state"]
    );
    assert!(
        r2["state"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed"),
        "{:#}",
        r2["state"]
    );

    let tasks = prefect
        .wait_task_runs(r1["id"].as_str().unwrap(), 1, WAIT)
        .await;
    assert_eq!(tasks.len(), 1, "only extract ran: {tasks:#?}");
    assert_eq!(tasks[0]["state_type"], "FAILED");
    prefect
        .wait_task_runs(r3["id"].as_str().unwrap(), 4, WAIT)
        .await;
    // The successful iteration wrote its data.
    assert_eq!(read_lake(&p.lake()).len(), 2);
    // The API key in SOURCE_URL's query never reaches logs or Prefect messages.
    assert!(!p.stdout_text().contains("PRICE-API-SECRET"));
    assert!(
        !r1["state"]["message"]
            .as_str()
            .unwrap()
            .contains("PRICE-API-SECRET")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prefect_down_still_writes_data_and_counts_drops() {
    let price = PriceApi::start(91000.0, 3000.0).await;
    // A port nothing listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = vec![
        ("PREFECT_API_URL", format!("http://127.0.0.1:{port}/api")),
        ("SOURCE_URL", price.url.clone()),
        ("REPORT_FLUSH_SECONDS", "2".to_string()),
        // Availability mode: with the lease on, an unreachable Prefect fences the loop
        // (flows/tests/lease.rs shows that).
        ("LEADER_LEASE", "off".to_string()),
    ];
    let started = std::time::Instant::now();
    let mut p = spawn(&env, &["--iterations", "5"]);
    assert_eq!(p.exit_code(WAIT).await, 0);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a dead Prefect slowed the loop: {:?}",
        started.elapsed()
    );
    let lake = read_lake(&p.lake());
    assert_eq!(lake.len(), 10);
    let out = p.stdout_text();
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["msg"], "price-stream stopped");
    assert_eq!(last["completed"], 5);
    assert!(last["reports_dropped"].as_u64().unwrap() > 0, "{last}");
    assert!(out.contains("dropped"), "the drop is logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_iteration_completes_the_run_and_exits_zero() {
    let prefect = Prefect::new();
    let price = PriceApi::start(91000.0, 3000.0).await;
    price.set_delay(Duration::from_secs(3));
    let flow = unique("ps-term");
    let mut env = base_env(&flow, &price);
    env.push(("SHUTDOWN_GRACE_SECONDS", "20".into()));
    let mut p = spawn(&env, &[]);
    prefect
        .wait_runs(&flow, WAIT, |r| {
            r.iter().any(|r| r["state_type"] == "RUNNING")
        })
        .await;
    p.signal("TERM");
    assert_eq!(p.exit_code(WAIT).await, 0);
    let runs = prefect.flow_runs(&flow).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(
        runs[0]["state_type"], "COMPLETED",
        "in-flight iteration finishes within the grace"
    );
    assert_eq!(read_lake(&p.lake()).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_past_the_grace_cancels_the_run_and_exits_zero() {
    let prefect = Prefect::new();
    let price = PriceApi::start(91000.0, 3000.0).await;
    price.set_delay(Duration::from_secs(30));
    let flow = unique("ps-abort");
    let mut env = base_env(&flow, &price);
    env.push(("SHUTDOWN_GRACE_SECONDS", "0.5".into()));
    env.push(("SOURCE_TIMEOUT_SECONDS", "60".into()));
    let mut p = spawn(&env, &[]);
    let runs = prefect
        .wait_runs(&flow, WAIT, |r| {
            r.iter().any(|r| r["state_type"] == "RUNNING")
        })
        .await;
    let id = runs[0]["id"].as_str().unwrap().to_string();
    p.signal("TERM");
    assert_eq!(p.exit_code(Duration::from_secs(10)).await, 0);
    let run = prefect.flow_run(&id).await;
    assert_eq!(run["state_type"], "CANCELLED", "{:#}", run["state"]);
    let tasks = prefect.wait_task_runs(&id, 1, WAIT).await;
    assert_eq!(tasks[0]["task_key"], "price_stream.extract");
    assert_eq!(tasks[0]["state_type"], "CANCELLED");
    assert!(
        prefect
            .flow_runs(&flow)
            .await
            .iter()
            .all(|r| r["state_type"] != "RUNNING")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_from_the_ui_ends_the_run_cancelled_and_the_loop_continues() {
    let prefect = Prefect::new();
    let price = PriceApi::start(91000.0, 3000.0).await;
    price.set_delay(Duration::from_secs(8));
    let flow = unique("ps-cancel");
    let mut env = base_env(&flow, &price);
    env.push(("SOURCE_TIMEOUT_SECONDS", "30".into()));
    let mut p = spawn(&env, &[]);
    let runs = prefect
        .wait_runs(&flow, WAIT, |r| {
            r.iter().any(|r| r["state_type"] == "RUNNING")
        })
        .await;
    let id = runs[0]["id"].as_str().unwrap().to_string();
    // What the UI's Cancel button does for a run no worker owns.
    let resp = prefect.set_state(&id, "CANCELLING").await;
    assert_eq!(resp["status"], "ACCEPT", "{resp:#}");
    price.set_delay(Duration::ZERO);
    let line = p.wait_iteration(Duration::from_secs(15)).await;
    assert_eq!(line["state"], "CANCELLED", "{line}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let run = prefect.flow_run(&id).await;
        if run["state_type"] == "CANCELLED" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run stuck in {:#}",
            run["state"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The service keeps going: the next iteration completes.
    let next = p.wait_iteration(WAIT).await;
    assert_eq!(next["state"], "COMPLETED", "{next}");
    p.signal("TERM");
    assert_eq!(p.exit_code(WAIT).await, 0);
    let runs = prefect.flow_runs(&flow).await;
    assert!(
        runs.iter()
            .all(|r| r["state_type"] != "RUNNING" && r["state_type"] != "CANCELLING")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn threshold_changes_apply_without_restart_and_alert_once_per_crossing() {
    let prefect = Prefect::new();
    let price = PriceApi::start(100_000.0, 3000.0).await;
    let slack = SlackSink::start().await;
    let flow = unique("ps-alert");
    let var = unique("btc_threshold").replace('-', "_");
    prefect.set_variable(&var, json!("95000")).await;
    let mut env = base_env(&flow, &price);
    env.push(("PRICE_THRESHOLD_VARIABLE", var.clone()));
    env.push(("PRICE_THRESHOLD", "1".into()));
    env.push(("SLACK_WEBHOOK_URL", slack.url.clone()));
    // Changes are made right after an iteration ends; the pause keeps them ahead of the next.
    env.push(("INTERVAL_SECONDS", "3".into()));
    let mut p = spawn(&env, &[]);

    // (price, threshold before the iteration, expected posts after it)
    let steps: [(f64, Value, usize); 6] = [
        (100_000.0, json!("95000"), 0), // above
        (90_000.0, json!("95000"), 1),  // crosses down: alert
        (90_000.0, json!("95000"), 1),  // still below: no repeat
        (90_000.0, json!(80000), 1),    // threshold lowered (a number now): recovery
        (90_000.0, json!("95000"), 2),  // raised again: a new crossing
        (89_000.0, json!("95000"), 2),  // still below
    ];
    for (i, (btc, threshold, posts)) in steps.iter().enumerate() {
        let t0 = std::time::Instant::now();
        price.set_btc(*btc);
        prefect.set_variable(&var, threshold.clone()).await;
        assert!(
            t0.elapsed() < Duration::from_millis(2500),
            "Prefect too slow to stage step {i}"
        );
        let line = p.wait_iteration(WAIT).await;
        assert_eq!(line["state"], "COMPLETED", "step {i}: {line}");
        assert_eq!(slack.count(), *posts, "step {i}: {line}");
        if i == 3 {
            assert!(p.stdout_text().contains("recovered"), "recovery is logged");
        }
    }
    p.signal("TERM");
    assert_eq!(p.exit_code(WAIT).await, 0);
    let posts = slack.posts.lock().unwrap().clone();
    assert!(
        posts[0]["text"]
            .as_str()
            .unwrap()
            .contains("fell below the threshold 95000"),
        "{posts:?}"
    );
    assert!(posts[0]["text"].as_str().unwrap().contains(&var));
    // The webhook URL is a secret.
    assert!(!p.stdout_text().contains("SLACK-SECRET-TOKEN"));
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_failure_fails_the_alert_task_without_leaking_the_webhook_and_retries() {
    let prefect = Prefect::new();
    let price = PriceApi::start(10_000.0, 3000.0).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let flow = unique("ps-slackdown");
    let mut env = base_env(&flow, &price);
    env.push(("PRICE_THRESHOLD", "20000".into()));
    env.push((
        "SLACK_WEBHOOK_URL",
        format!("http://127.0.0.1:{dead}/services/T/B/SLACK-SECRET-TOKEN"),
    ));
    let mut p = spawn(&env, &["--iterations", "2"]);
    assert_eq!(p.exit_code(WAIT).await, 0);
    let runs = prefect
        .wait_runs(&flow, WAIT, |r| {
            r.len() == 2 && r.iter().all(|r| r["state_type"] == "FAILED")
        })
        .await;
    for run in &runs {
        let msg = run["state"]["message"].as_str().unwrap();
        assert!(msg.contains("Slack webhook post failed"), "{msg}");
        assert!(!msg.contains("SLACK-SECRET-TOKEN"), "{msg}");
        let tasks = prefect
            .wait_task_runs(run["id"].as_str().unwrap(), 4, WAIT)
            .await;
        let alert = tasks
            .iter()
            .find(|t| t["task_key"] == "price_stream.alert")
            .unwrap();
        assert_eq!(alert["state_type"], "FAILED");
    }
    // Data was still loaded before the alert failed.
    assert_eq!(read_lake(&p.lake()).len(), 4);
    assert!(!p.stdout_text().contains("SLACK-SECRET-TOKEN"));
}

#[tokio::test(flavor = "multi_thread")]
async fn threshold_from_a_prefect_string_block() {
    let prefect = Prefect::new();
    let price = PriceApi::start(10_000.0, 3000.0).await;
    let slack = SlackSink::start().await;
    let block = unique("price");
    // A fresh Prefect 3 server has no `string` block type: register it (idempotently).
    let (_, bt) = prefect
        .call(reqwest::Method::GET, "/block_types/slug/string", None)
        .await;
    let bt_id = match bt["id"].as_str() {
        Some(id) => id.to_string(),
        None => {
            let (s, v) = prefect
                .call(
                    reqwest::Method::POST,
                    "/block_types/",
                    Some(json!({ "name": "String", "slug": "string" })),
                )
                .await;
            if s == 409 {
                prefect
                    .call(reqwest::Method::GET, "/block_types/slug/string", None)
                    .await
                    .1["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            } else {
                v["id"].as_str().unwrap().to_string()
            }
        }
    };
    let (_, schema) = prefect
        .call(
            reqwest::Method::POST,
            "/block_schemas/",
            Some(json!({
                "fields": { "title": "String", "type": "object",
                            "properties": { "value": { "title": "Value", "type": "string" } },
                            "required": ["value"], "block_type_slug": "string",
                            "secret_fields": [], "block_schema_references": {} },
                "block_type_id": bt_id, "capabilities": [],
            })),
        )
        .await;
    let (s, v) = prefect
        .call(
            reqwest::Method::POST,
            "/block_documents/",
            Some(json!({ "name": block, "data": { "value": "20000" },
                         "block_type_id": bt_id, "block_schema_id": schema["id"] })),
        )
        .await;
    assert!(s < 300, "{s} {v}");

    let mut env = base_env(&flow_name(), &price);
    env.push(("PRICE_THRESHOLD_BLOCK", block.clone()));
    env.push(("SLACK_WEBHOOK_URL", slack.url.clone()));
    let mut p = spawn(&env, &["--iterations", "2"]);
    assert_eq!(p.exit_code(WAIT).await, 0);
    assert_eq!(slack.count(), 1);
    let text = slack.posts.lock().unwrap()[0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("20000") && text.contains(&block), "{text}");
}

fn flow_name() -> String {
    unique("ps-block")
}

#[tokio::test(flavor = "multi_thread")]
async fn prefect_outage_defers_reports_and_delivers_them_when_it_recovers() {
    let prefect = Prefect::new();
    let price = PriceApi::start(91000.0, 3000.0).await;
    let flaky = FlakyPrefect::start(true).await;
    let flow = unique("ps-outage");
    let mut env = base_env(&flow, &price);
    env[0] = ("PREFECT_API_URL", flaky.url.clone());
    // Availability mode: the data path goes on without Prefect (the lease would fence it).
    env.push(("LEADER_LEASE", "off".to_string()));
    let started = std::time::Instant::now();
    let mut p = spawn(&env, &["--iterations", "3"]);
    // The data path does not wait for Prefect: all three iterations complete during the outage.
    for _ in 0..3 {
        let line = p.wait_iteration(WAIT).await;
        assert_eq!(line["state"], "COMPLETED", "{line}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "iterations waited for Prefect: {:?}",
        started.elapsed()
    );
    // Keep the outage up past the client's own retry budget, then recover.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(flaky.refused() > 0, "the outage was not exercised");
    assert!(prefect.flow_runs(&flow).await.is_empty());
    let recovered_at = chrono::Utc::now();
    flaky.set_down(false);
    assert_eq!(p.exit_code(Duration::from_secs(40)).await, 0);

    let runs = prefect
        .wait_runs(&flow, WAIT, |r| {
            r.len() == 3 && r.iter().all(|r| r["state_type"] == "COMPLETED")
        })
        .await;
    for run in &runs {
        let tasks = prefect
            .wait_task_runs(run["id"].as_str().unwrap(), 4, WAIT)
            .await;
        assert_eq!(tasks.len(), 4);
        for t in &tasks {
            assert_eq!(t["state_type"], "COMPLETED", "{t:#}");
            // Task times are the client's (during the outage), not the delivery's.
            let start =
                chrono::DateTime::parse_from_rfc3339(t["start_time"].as_str().unwrap()).unwrap();
            assert!(start < recovered_at, "{t:#}");
        }
        assert!(!prefect.logs(run["id"].as_str().unwrap()).await.is_empty());
    }
    let out = p.stdout_text();
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["msg"], "price-stream stopped");
    assert_eq!(last["reports_dropped"], 0, "{last}");
    assert_eq!(read_lake(&p.lake()).len(), 6);
}
