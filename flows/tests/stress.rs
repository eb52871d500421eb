//! price-stream under stress: sources that send too much, Prefect outages (shorter and longer
//! than the hold bound) and a SIGTERM during an outage. Real Prefect server (behind a proxy
//! that can refuse everything), local source stand-ins. Needs scripts/test.sh.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .to_utc()
}

/// The environment every stress test starts from: Prefect at `prefect`, the source at
/// `source`, availability mode (no lease: the loop goes on while Prefect is down), then
/// `extra` (later entries win).
fn stress_env(
    prefect: &str,
    flow: &str,
    source: &str,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PREFECT_API_URL", prefect.to_string()),
        ("FLOW_NAME", flow.to_string()),
        ("SOURCE_URL", source.to_string()),
        ("LEADER_LEASE", "off".to_string()),
    ];
    env.extend_from_slice(extra);
    env
}

fn last_line(p: &Flow) -> Value {
    let out = p.stdout_text();
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["msg"], "price-stream stopped", "{last}");
    last
}

/// Log lines whose message starts with `msg`.
fn lines(p: &Flow, msg: &str) -> Vec<Value> {
    p.stdout_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["msg"].as_str().is_some_and(|m| m.starts_with(msg)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_endless_source_replies_fail_runs_and_memory_stays_flat() {
    let prefect = Prefect::new();
    let source = FloodSource::start(vec![
        Flood::Sized(10 << 20),
        Flood::Streamed(1 << 30),
        Flood::Endless,
        Flood::Fine,
    ])
    .await;
    let flow = unique("ps-flood");
    let env = stress_env(
        &prefect_url(),
        &flow,
        &source.url,
        &[("REPORT_FLUSH_SECONDS", "30".to_string())],
    );
    let mut p = spawn(&env, &["--iterations", "4"]);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(p.wait_iteration(WAIT).await);
    }
    assert_eq!(p.exit_code(WAIT).await, 0);
    for (i, line) in seen[..3].iter().enumerate() {
        assert_eq!(line["state"], "FAILED", "reply {i}: {line}");
        let msg = line["msg"].as_str().unwrap();
        assert!(
            msg.contains("1048576-byte cap") && msg.contains("SOURCE_MAX_BYTES"),
            "reply {i}: {msg}"
        );
    }
    assert!(
        seen[0]["msg"].as_str().unwrap().contains("not read"),
        "an announced 10 MB reply is refused unread: {}",
        seen[0]
    );
    assert_eq!(
        seen[3]["state"], "COMPLETED",
        "the loop goes on: {}",
        seen[3]
    );
    assert_eq!(last_line(&p)["reports_dropped"], 0);
    // The flow's own accounting: its peak resident memory stays far below even one reply
    // read whole, and the stand-in could push only what the socket buffers hold.
    let last = last_line(&p);
    let peak = last["peak_rss_kib"].as_u64().expect("peak_rss_kib");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB: {last}");
    assert!(
        source.sent() < 64 << 20,
        "{} bytes were sent: the flow kept reading",
        source.sent()
    );
    let runs = prefect
        .wait_runs(&flow, WAIT, |r| {
            r.len() == 4
                && r.iter()
                    .all(|r| matches!(r["state_type"].as_str(), Some("FAILED" | "COMPLETED")))
        })
        .await;
    let failed = runs.iter().filter(|r| r["state_type"] == "FAILED").count();
    assert_eq!(failed, 3);
}

/// For every flow run, the request that set its final state came after every task-run event
/// naming it, and after its `observed.end` label when it has one.
fn assert_wire_order(wire: &[(String, String)]) {
    let mut checked = 0;
    for (i, (line, _)) in wire.iter().enumerate() {
        let Some(fr) = line
            .strip_prefix("POST ")
            .and_then(|l| l.split_whitespace().next())
            .and_then(|p| p.strip_suffix("/set_state"))
            .and_then(|p| p.rsplit('/').next())
        else {
            continue;
        };
        let needle = format!("prefect.flow-run.{fr}");
        let later = wire[i + 1..].iter().find(|(l, b)| {
            (l.contains(" /api/events") && b.contains(&needle))
                || (l.starts_with("PATCH") && l.contains(&format!("/flow_runs/{fr}/labels")))
        });
        assert!(
            later.is_none(),
            "flow run {fr}: final state sent before {:?}",
            later.map(|l| &l.0)
        );
        checked += 1;
    }
    assert!(checked > 0, "no final state went through the proxy");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ten_second_outage_loses_nothing_and_keeps_order_and_observed_times() {
    let prefect = Prefect::new();
    let price = PriceApi::start(91000.0, 3000.0).await;
    let flaky = FlakyPrefect::start(false).await;
    let flow = unique("ps-outage10");
    let env = stress_env(
        &flaky.url,
        &flow,
        &price.url,
        &[
            ("INTERVAL_SECONDS", "0.5".to_string()),
            ("REPORT_FLUSH_SECONDS", "30".to_string()),
        ],
    );
    let total = 30;
    let mut p = spawn(&env, &["--iterations", &total.to_string()]);
    for _ in 0..4 {
        p.wait_iteration(WAIT).await;
    }
    flaky.set_down(true);
    let down_at = Utc::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(flaky.refused() > 0, "the outage was not exercised");
    let up_at = Utc::now();
    flaky.set_down(false);
    assert_eq!(p.exit_code(WAIT).await, 0);
    let last = last_line(&p);
    assert_eq!(last["reports_dropped"], 0, "{last}");

    let runs = prefect
        .wait_runs(&flow, WAIT, |r| {
            r.len() == total && r.iter().all(|r| r["state_type"] == "COMPLETED")
        })
        .await;
    // Exactly once: every iteration, no duplicate.
    let iterations: BTreeSet<u64> = runs
        .iter()
        .map(|r| r["parameters"]["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(iterations, (1..=total as u64).collect());
    let mut late = 0;
    for run in &runs {
        let id = run["id"].as_str().unwrap();
        let tasks = prefect.wait_task_runs(id, 4, WAIT).await;
        assert_eq!(tasks.len(), 4, "{run:#}");
        let observed_start = time(&run["labels"]["observed.start"]);
        // Runs that ran during the outage say so, whatever Prefect's own times are.
        if observed_start > down_at && observed_start < up_at {
            let observed_end = time(&run["labels"]["observed.end"]);
            assert!(observed_end < up_at, "{run:#}");
            assert!(time(&run["end_time"]) > up_at, "delivered late: {run:#}");
            for t in &tasks {
                assert!(
                    time(&t["start_time"]) < up_at,
                    "task times are observed: {t:#}"
                );
            }
            late += 1;
        }
    }
    assert!(late >= 5, "only {late} iterations ran during the outage");
    assert_wire_order(&flaky.wire.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_past_the_hold_bound_drops_the_oldest_and_says_how_many() {
    let prefect = Prefect::new();
    let price = PriceApi::start(91000.0, 3000.0).await;
    let flaky = FlakyPrefect::start(true).await;
    let flow = unique("ps-hold");
    let hold = 40;
    let env = stress_env(
        &flaky.url,
        &flow,
        &price.url,
        &[
            // Slow enough that the reporter keeps up once Prefect is back, even on a busy
            // machine.
            ("INTERVAL_SECONDS", "0.5".to_string()),
            ("REPORT_FLUSH_SECONDS", "30".to_string()),
            ("REPORT_HOLD", hold.to_string()),
        ],
    );
    let mut p = spawn(&env, &[]);
    for _ in 0..15 {
        p.wait_iteration(WAIT).await;
    }
    // Past the client's own retries, then back; stop once the backlog went out.
    tokio::time::sleep(Duration::from_secs(4)).await;
    flaky.set_down(false);
    p.wait_line(WAIT, |v| v["msg"] == "prefect reachable again")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.signal("TERM");
    assert_eq!(p.exit_code(WAIT).await, 0);
    let last = last_line(&p);
    let total = last["iterations"].as_u64().unwrap();
    let dropped = last["reports_dropped"].as_u64().unwrap();
    assert!(dropped > 0, "{last}");
    assert!(
        last["reports_held_peak"].as_u64().unwrap() <= hold,
        "{last}"
    );
    let warning = lines(&p, "prefect reports dropped");
    assert!(
        warning.iter().any(
            |w| w["reason"].as_str().unwrap().contains("hold bound reached")
                && w["hold_reports"] == hold
                && w["dropped"].as_u64().unwrap() > 0
        ),
        "{warning:?}"
    );

    // What was kept arrives whole, each once with its task runs; the oldest went first.
    let runs = prefect
        .wait_runs(&flow, WAIT, |r| {
            r.len() as u64 > 1 && r.iter().all(|r| r["state_type"] == "COMPLETED")
        })
        .await;
    let iterations: BTreeSet<u64> = runs
        .iter()
        .map(|r| r["parameters"]["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(iterations.len(), runs.len(), "a run was reported twice");
    assert!((runs.len() as u64) < total, "{iterations:?} of {total}");
    assert!(
        !iterations.contains(&1),
        "the oldest go first: {iterations:?}"
    );
    assert!(
        iterations.contains(&total),
        "{iterations:?} of {total}; the flow said:\n{}",
        p.stdout_text()
            .lines()
            .filter(|l| !l.contains("\"iteration\":"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for run in &runs {
        let tasks = prefect
            .wait_task_runs(run["id"].as_str().unwrap(), 4, WAIT)
            .await;
        assert_eq!(tasks.len(), 4, "{run:#}");
        assert!(run["labels"]["observed.start"].is_string(), "{run:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_an_outage_ends_the_flush_before_the_stop_timeout() {
    let price = PriceApi::start(91000.0, 3000.0).await;
    let flaky = FlakyPrefect::start(true).await;
    let flow = unique("ps-flush");
    let stop_timeout = 6.0;
    let env = stress_env(
        &flaky.url,
        &flow,
        &price.url,
        &[
            ("INTERVAL_SECONDS", "0.1".to_string()),
            ("REPORT_FLUSH_SECONDS", "1".to_string()),
            ("STOP_TIMEOUT_SECONDS", stop_timeout.to_string()),
        ],
    );
    let mut p = spawn(&env, &[]);
    // Enough held that the sized deadline would pass the stop budget.
    for _ in 0..40 {
        p.wait_iteration(WAIT).await;
    }
    p.signal("TERM");
    assert_eq!(p.exit_code(WAIT).await, 0);
    let flushing = lines(&p, "flushing reports to prefect");
    assert_eq!(flushing.len(), 1, "{}", p.stdout_text());
    let deadline = flushing[0]["flush_deadline_s"].as_f64().unwrap();
    assert!(
        deadline > 1.0 && deadline <= stop_timeout - 2.0,
        "sized past REPORT_FLUSH_SECONDS, within the stop budget: {}",
        flushing[0]
    );
    // What could not be delivered is counted, and said: at the deadline, or earlier when
    // no run could be created any more.
    let last = last_line(&p);
    let said: u64 = lines(&p, "prefect flush deadline")
        .iter()
        .map(|l| l["dropped"].as_u64().unwrap())
        .sum();
    assert!(said > 0, "{}", p.stdout_text());
    assert_eq!(last["reports_dropped"], said, "{last}");
    // The flow's own clock: from the stop request to the end, within the stop timeout.
    let asked = time(&lines(&p, "shutdown requested")[0]["ts"]);
    let took = (time(&last["ts"]) - asked).to_std().unwrap();
    assert!(
        took < Duration::from_secs_f64(stop_timeout),
        "stop took {took:?}, past the {stop_timeout} s stop timeout"
    );
}
