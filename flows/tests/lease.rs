//! The single-consumer lease (src/lease.rs) against the real Prefect server: two processes of
//! one service never iterate at once; SIGTERM hands over at once; SIGKILL is taken over when
//! the lease expires and the killed run is marked CRASHED; a holder that cannot reach Prefect
//! stops iterating (fenced) and resumes after.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// One instance of a service: the same service identity, its own instance id, a shared lake.
fn instance_env(
    service: &str,
    instance: &str,
    price: &PriceApi,
    lake: &std::path::Path,
    prefect: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("PREFECT_API_URL", prefect.to_string()),
        ("FLOW_NAME", service.to_string()),
        ("DEPLOYER_SERVICE", service.to_string()),
        ("DEPLOYER_INSTANCE", instance.to_string()),
        ("DEPLOYER_REVISION", "r1".to_string()),
        ("SOURCE_URL", price.url.clone()),
        ("SINK_URL", format!("file://{}", lake.display())),
        // One iteration a second: the suite shares one SQLite-backed Prefect server, and a
        // holder's reports must be delivered before it hands over.
        ("INTERVAL_SECONDS", "1".to_string()),
        ("REPORT_FLUSH_SECONDS", "30".to_string()),
    ]
}

fn tag<'a>(run: &'a Value, prefix: &str) -> &'a str {
    run["tags"]
        .as_array()
        .and_then(|t| {
            t.iter()
                .filter_map(Value::as_str)
                .find_map(|t| t.strip_prefix(prefix))
        })
        .unwrap_or("")
}

fn secs(v: &Value) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.timestamp_micros() as f64 / 1e6)
}

/// No run of one instance overlaps in time with a run of another.
fn assert_no_overlap(runs: &[Value]) {
    let spans: Vec<(f64, f64, &str)> = runs
        .iter()
        .filter_map(|r| {
            Some((
                secs(&r["start_time"])?,
                secs(&r["end_time"])?,
                tag(r, "instance:"),
            ))
        })
        .collect();
    for a in &spans {
        for b in &spans {
            if a.2 != b.2 {
                assert!(
                    a.1 <= b.0 || b.1 <= a.0,
                    "runs of {} and {} overlap: {a:?} {b:?}",
                    a.2,
                    b.2
                );
            }
        }
    }
}

fn health(flow: &Flow) -> String {
    let out = std::process::Command::new(binary())
        .args(["healthcheck", "--health-file"])
        .arg(flow.dir.path().join("health"))
        .output()
        .expect("healthcheck");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_never_iterate_at_once_and_sigterm_hands_over() {
    let prefect = Prefect::new();
    let price = PriceApi::start(91000.0, 3000.0).await;
    let lake = tempfile::tempdir().expect("lake");
    let service = unique("lease-term");
    let mut a = spawn(
        &instance_env(&service, "a", &price, lake.path(), &prefect_url()),
        &[],
    );
    a.wait_iteration(WAIT).await;
    let mut b = spawn(
        &instance_env(&service, "b", &price, lake.path(), &prefect_url()),
        &[],
    );
    let standby = b
        .wait_line(WAIT, |v| {
            v["msg"] == "standby: another instance holds the lease"
        })
        .await;
    assert_eq!(standby["holder"], "a", "{standby}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let h = health(&b);
    assert!(h.contains("healthy: standby, lease held by a"), "{h}");
    assert!(
        !b.stdout_text().contains("\"event\":\"iteration\""),
        "the standby iterated"
    );

    a.signal("TERM");
    assert_eq!(a.exit_code(Duration::from_secs(60)).await, 0);
    let released = Instant::now();
    b.wait_iteration(WAIT).await;
    let takeover = released.elapsed();
    assert!(
        takeover < Duration::from_secs(5),
        "takeover after SIGTERM took {takeover:?}"
    );
    b.wait_iteration(WAIT).await;
    b.signal("TERM");
    assert_eq!(b.exit_code(WAIT).await, 0);

    let runs = prefect
        .wait_runs(&service, WAIT, |r| {
            r.iter().all(|x| x["state_type"] == "COMPLETED")
        })
        .await;
    assert!(
        runs.iter().any(|r| tag(r, "instance:") == "a")
            && runs.iter().any(|r| tag(r, "instance:") == "b")
    );
    assert_no_overlap(&runs);
    // Every row names the instance whose run wrote it.
    let by_run: std::collections::HashMap<String, String> = runs
        .iter()
        .map(|r| {
            (
                r["parameters"]["run_id"].as_str().unwrap_or("").to_string(),
                tag(r, "instance:").to_string(),
            )
        })
        .collect();
    for (_, rows) in read_lake(lake.path()) {
        for row in rows {
            assert_eq!(by_run.get(&row.run_id), Some(&row.holder), "{row:?}");
        }
    }
}

/// SIGKILL mid-run: the standby takes over once the lease expires (about a minute: Prefect's
/// minimum lease) and marks the killed instance's run CRASHED, naming it.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_is_taken_over_after_expiry_and_the_lost_run_is_crashed() {
    let prefect = Prefect::new();
    let price = PriceApi::start(91000.0, 3000.0).await;
    let lake = tempfile::tempdir().expect("lake");
    let service = unique("lease-kill");
    let mut env_a = instance_env(&service, "a", &price, lake.path(), &prefect_url());
    env_a.push(("SOURCE_TIMEOUT_SECONDS", "300".to_string()));
    let mut a = spawn(&env_a, &[]);
    a.wait_iteration(WAIT).await;
    let mut b = spawn(
        &instance_env(&service, "b", &price, lake.path(), &prefect_url()),
        &[],
    );
    b.wait_line(WAIT, |v| {
        v["msg"] == "standby: another instance holds the lease"
    })
    .await;
    // Hold A inside an iteration, visible in Prefect as RUNNING, then kill it.
    price.set_delay(Duration::from_secs(600));
    // (A run RUNNING for 2 s is the one held by the delay, not one about to finish.)
    let held = |x: &Value| {
        let age = chrono::Utc::now().timestamp_micros() as f64 / 1e6
            - secs(&x["start_time"]).unwrap_or(f64::MAX);
        x["state_type"] == "RUNNING" && tag(x, "instance:") == "a" && age > 2.0
    };
    let stuck = prefect
        .wait_runs(&service, WAIT, |r| r.iter().any(held))
        .await;
    let stuck_id = stuck
        .iter()
        .find(|x| held(x))
        .and_then(|x| x["id"].as_str())
        .expect("a running run")
        .to_string();
    a.signal("KILL");
    let killed = Instant::now();
    price.set_delay(Duration::ZERO);
    let took = b
        .wait_line(Duration::from_secs(150), |v| {
            v["msg"] == "lease acquired: this instance runs the iterations"
        })
        .await;
    let takeover = killed.elapsed();
    assert_eq!(took["previous"], "a", "{took}");
    assert!(
        takeover >= Duration::from_secs(40),
        "taken over before the lease could expire: {takeover:?}"
    );
    b.wait_iteration(WAIT).await;
    let run = prefect.flow_run(&stuck_id).await;
    assert_eq!(run["state_type"], "CRASHED", "{run}");
    let message = run["state"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("instance a") && message.contains("taken over by b"),
        "{message}"
    );
    b.signal("TERM");
    assert_eq!(b.exit_code(WAIT).await, 0);
    let runs = prefect.flow_runs(&service).await;
    assert!(
        runs.iter()
            .all(|r| !matches!(r["state_type"].as_str(), Some("RUNNING" | "PENDING"))),
        "no run left open: {runs:?}"
    );
    eprintln!("takeover after SIGKILL: {:.1} s", takeover.as_secs_f64());
}

/// Prefect unreachable for longer than the lease's safety margin: the holder stops starting
/// iterations (fenced) and resumes once Prefect answers again; the standby never iterates
/// meanwhile, so there is still one consumer.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_prefect_fences_the_holder_until_it_returns() {
    let prefect = Prefect::new();
    let price = PriceApi::start(91000.0, 3000.0).await;
    let lake = tempfile::tempdir().expect("lake");
    let service = unique("lease-fence");
    let flaky = FlakyPrefect::start(false).await;
    let mut a = spawn(
        &instance_env(&service, "a", &price, lake.path(), &flaky.url),
        &[],
    );
    a.wait_iteration(WAIT).await;
    let mut b = spawn(
        &instance_env(&service, "b", &price, lake.path(), &flaky.url),
        &[],
    );
    b.wait_line(WAIT, |v| {
        v["msg"] == "standby: another instance holds the lease"
    })
    .await;
    flaky.set_down(true);
    let down = Instant::now();
    a.wait_line(Duration::from_secs(90), |v| {
        v["msg"] == "fenced: the lease cannot be confirmed, so no iteration starts"
    })
    .await;
    let fenced_after = down.elapsed();
    assert!(
        fenced_after <= Duration::from_secs(50),
        "fenced only after {fenced_after:?}"
    );
    // Fenced: no iteration for a while, from either instance.
    let quiet = a.stdout_text().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !a.stdout_text()[quiet..].contains("\"event\":\"iteration\""),
        "a fenced holder iterated"
    );
    assert!(
        !b.stdout_text().contains("\"event\":\"iteration\""),
        "the standby iterated during the outage"
    );
    flaky.set_down(false);
    // Whoever holds the lease after the outage iterates again.
    let deadline = Instant::now() + Duration::from_secs(120);
    let before_a = a.stdout_text().matches("\"event\":\"iteration\"").count();
    loop {
        let a_now = a.stdout_text().matches("\"event\":\"iteration\"").count();
        let b_now = b.stdout_text().matches("\"event\":\"iteration\"").count();
        if a_now > before_a || b_now > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nobody resumed after the outage");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    a.signal("TERM");
    b.signal("TERM");
    assert_eq!(a.exit_code(Duration::from_secs(60)).await, 0);
    assert_eq!(b.exit_code(Duration::from_secs(60)).await, 0);
    let runs = prefect
        .wait_runs(&service, Duration::from_secs(60), |r| {
            r.iter().all(|x| x["end_time"].is_string())
        })
        .await;
    assert_no_overlap(&runs);
    eprintln!("fenced {:.1} s into the outage", fenced_after.as_secs_f64());
}
