//! The deployer under faults: the real binary against moto behind a fault proxy
//! (tests/support/fault_proxy.rs) that slows, throttles, fails, drops and hangs calls, and
//! with signals at seeded moments. Each test uses its own project names (moto is shared).

mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::fault_proxy::{Fault, FaultProxy, Seen};
use support::{deployer_command, moto_url, unique};

/// A prebuilt image in moto's ECR (`support::moto_ecr_image` puts it there once): the
/// deployer's preflight checks that prebuilt ECR images exist.
const IMAGE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/flow@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn ensure_image() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        assert_eq!(support::moto_ecr_image("flow"), IMAGE);
    });
}

/// The calls an interrupted step may still make: the documented undo.
const UNDO_OPS: &[&str] = &["DeleteStack", "CancelUpdateStack", "DeleteChangeSet"];

fn project(name: &str, services: usize) -> tempfile::TempDir {
    ensure_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = format!("project: {name}\nregion: us-east-1\nservices:\n");
    for i in 0..services {
        text.push_str(&format!("  s{i}:\n    image: {IMAGE}\n"));
    }
    std::fs::write(dir.path().join("deployer.yaml"), text).expect("write config");
    dir
}

fn spawn(dir: &Path, args: &[&str], endpoint: &str) -> Child {
    deployer_command(dir, args, endpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn deployer")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{sig} failed");
}

fn text(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Run to the end against moto directly; returns (code, stdout, stderr).
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    text(
        &deployer_command(dir, args, &moto_url())
            .output()
            .expect("run"),
    )
}

/// Mutating calls (other than the undo and the lock's own S3 calls) that reached the proxy
/// more than `slack` after `t`: a call already on its way when the signal came is not new.
fn changes_after(seen: &[Seen], t: Instant, slack: Duration) -> Vec<String> {
    seen.iter()
        .filter(|s| s.at > t + slack && s.is_mutating())
        .filter(|s| !s.op.starts_with("S3.") && !UNDO_OPS.contains(&s.op.as_str()))
        .map(|s| s.op.clone())
        .collect()
}

fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *seed >> 33
}

#[test]
fn signals_at_seeded_moments_of_up_exit_130_change_nothing_after_and_up_converges() {
    let mut seed = 0x5eed_0012_u64;
    let mut interrupted = 0;
    for round in 0..5 {
        let name = unique(&format!("sig{round}"));
        let dir = project(&name, 2);
        let proxy = FaultProxy::start(&moto_url(), |_, _| Fault::Delay(Duration::from_millis(40)));
        let at = Duration::from_millis(300 + next(&mut seed) % 3500);
        let sig = if next(&mut seed).is_multiple_of(2) {
            "INT"
        } else {
            "TERM"
        };
        let child = spawn(dir.path(), &["up"], &proxy.url());
        std::thread::sleep(at);
        let sent = Instant::now();
        signal(&child, sig);
        let out = child.wait_with_output().expect("wait");
        let took = sent.elapsed();
        let (code, _, stderr) = text(&out);
        let ctx = format!("round {round} (SIG{sig} at {at:?}): exit {code}\n{stderr}");
        if code == 0 {
            assert!(
                !stderr.contains("interrupted"),
                "exit 0 after an interrupt: {ctx}"
            );
        } else {
            interrupted += 1;
            assert_eq!(code, 130, "{ctx}");
            assert!(stderr.contains("interrupted"), "{ctx}");
        }
        assert!(
            took < Duration::from_millis(7500),
            "exit took {took:?}: {ctx}"
        );
        let late = changes_after(&proxy.seen(), sent, Duration::from_millis(200));
        assert!(
            late.is_empty(),
            "changes started after the signal: {late:?}\n{ctx}"
        );
        // The next `up` converges, and the one after it has nothing left to do.
        let (code, _, err) = run(dir.path(), &["up"]);
        assert_eq!(code, 0, "converging up after {ctx}\n{err}");
        let (code, json, err) = run(dir.path(), &["up", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v["unchanged"], true, "{json}");
    }
    assert!(
        interrupted >= 2,
        "too few rounds were interrupted mid-run: {interrupted}"
    );
}

#[test]
fn sigint_then_sigterm_is_one_cancel_and_exits_130_inside_7_5_s() {
    let dir = project(&unique("sigterm"), 1);
    let hang = Arc::new(AtomicBool::new(false));
    let h = hang.clone();
    // After the SIGINT every call hangs: even the undo gets no answer, so only the
    // deployer's own bounds make it exit.
    let proxy = FaultProxy::start(&moto_url(), move |_, _| {
        if h.load(Ordering::SeqCst) {
            Fault::Hang
        } else {
            Fault::Delay(Duration::from_millis(40))
        }
    });
    let child = spawn(dir.path(), &["up", "-v"], &proxy.url());
    std::thread::sleep(Duration::from_millis(1500));
    hang.store(true, Ordering::SeqCst);
    let sent = Instant::now();
    signal(&child, "INT");
    std::thread::sleep(Duration::from_millis(1000));
    signal(&child, "TERM");
    let out = child.wait_with_output().expect("wait");
    let took = sent.elapsed();
    let (code, _, stderr) = text(&out);
    assert_eq!(code, 130, "{stderr}");
    assert!(
        took < Duration::from_millis(7500),
        "took {took:?}\n{stderr}"
    );
    assert_eq!(
        stderr.matches("interrupted (SIGINT)").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("SIGTERM: already cancelling"), "{stderr}");
    assert!(!stderr.contains("interrupted again"), "{stderr}");
    let late = changes_after(&proxy.seen(), sent, Duration::from_millis(200));
    assert!(late.is_empty(), "{late:?}");
}

#[test]
fn a_hung_endpoint_is_named_within_the_api_timeout_and_sigterm_ends_it_at_once() {
    let dir = project(&unique("hung"), 1);
    let proxy = FaultProxy::start(&moto_url(), |_, _| Fault::Hang);
    let started = Instant::now();
    let out = deployer_command(dir.path(), &["status", "--api-timeout", "3"], &proxy.url())
        .output()
        .expect("run");
    let took = started.elapsed();
    let (code, _, stderr) = text(&out);
    assert_eq!(code, 3, "{stderr}");
    assert!(took < Duration::from_secs(6), "took {took:?}\n{stderr}");
    assert!(
        stderr.contains("describe stack"),
        "the call is named: {stderr}"
    );
    assert!(stderr.contains("--api-timeout"), "{stderr}");

    let child = spawn(dir.path(), &["up"], &proxy.url());
    std::thread::sleep(Duration::from_millis(800));
    let sent = Instant::now();
    signal(&child, "TERM");
    let out = child.wait_with_output().expect("wait");
    let (code, _, stderr) = text(&out);
    assert_eq!(code, 130, "{stderr}");
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "SIGTERM took {:?}\n{stderr}",
        sent.elapsed()
    );
}

#[test]
fn throttling_500s_and_lost_responses_are_absorbed() {
    let dir = project(&unique("blips"), 2);
    let proxy = FaultProxy::start(&moto_url(), |op, n| match (op, n) {
        // Absorbed by the SDK's attempts (adaptive retry mode: throttling also slows the
        // client down, so only a few calls are throttled to keep the test short).
        ("GetCallerIdentity" | "DescribeStacks" | "ECS.RegisterTaskDefinition", 0) => {
            Fault::Throttle
        }
        ("GetCallerIdentity" | "CreateChangeSet" | "ECS.RegisterTaskDefinition", 1) => {
            Fault::ServerError
        }
        // A burst in the middle of the stack waits (their own retry past the SDK's
        // attempts is shown by src/retry.rs's tests; here it may land on any describe).
        ("DescribeStacks", 6..=7) => Fault::ServerError,
        // The first execution runs but its answer is lost: the SDK retries it.
        ("ExecuteChangeSet", 2) => Fault::LoseResponse,
        _ => Fault::Pass,
    });
    let out = deployer_command(dir.path(), &["up"], &proxy.url())
        .output()
        .expect("run");
    let (code, _, stderr) = text(&out);
    assert_eq!(code, 0, "{stderr}");
    let seen = proxy.seen();
    let count = |f: Fault| seen.iter().filter(|s| s.fault == f).count();
    assert_eq!(count(Fault::Throttle), 3, "{seen:?}");
    assert_eq!(count(Fault::ServerError), 5, "{seen:?}");
    assert_eq!(count(Fault::LoseResponse), 1);
    let (code, json, _) = run(dir.path(), &["up", "--json"]);
    assert_eq!(code, 0);
    assert!(json.contains("\"unchanged\": true"), "{json}");
}

#[test]
fn persistent_failures_at_sts_get_the_help_that_matches_the_cause() {
    let dir = project(&unique("causes"), 1);
    let cases: [(Fault, &str); 4] = [
        // Adaptive retry paces a throttled client: it may run out of --api-timeout (exit 3)
        // before its attempts do (exit 1); either way the help names throttling.
        (Fault::Throttle, "throttling"),
        (Fault::ServerError, "server error"),
        (Fault::Deny("AccessDenied"), "lack a permission"),
        (Fault::Deny("InvalidClientTokenId"), "configure credentials"),
    ];
    for (fault, help) in cases {
        let proxy = FaultProxy::start(&moto_url(), move |op, _| {
            if op == "GetCallerIdentity" {
                fault
            } else {
                Fault::Pass
            }
        });
        let out = deployer_command(dir.path(), &["up", "--api-timeout", "8"], &proxy.url())
            .output()
            .expect("run");
        let (code, _, stderr) = text(&out);
        let codes: &[i32] = if fault == Fault::Throttle {
            &[1, 3]
        } else {
            &[1]
        };
        assert!(codes.contains(&code), "{fault:?}: exit {code}: {stderr}");
        assert!(stderr.contains("sts:GetCallerIdentity"), "{stderr}");
        assert!(
            stderr.contains(help),
            "{fault:?} wants help {help:?}: {stderr}"
        );
        if help != "configure credentials" {
            assert!(
                !stderr.contains("configure credentials"),
                "{fault:?}: {stderr}"
            );
        }
    }
    // Nothing listens on port 9: unreachable, not a credentials problem.
    let out = deployer_command(dir.path(), &["up"], "http://127.0.0.1:9")
        .output()
        .expect("run");
    let (code, _, stderr) = text(&out);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot be reached"), "{stderr}");
    assert!(!stderr.contains("configure credentials"), "{stderr}");
}

/// An AWS error reads as one line (`what: code: message (request id)`); the SDK error it
/// wraps is kept as its source and printed as Rust sees it only at `-vv`.
#[test]
fn an_aws_error_is_one_line_and_its_cause_chain_shows_only_at_vv() {
    let dir = project(&unique("chain"), 1);
    let proxy = FaultProxy::start(&moto_url(), |op, _| {
        if op == "GetCallerIdentity" {
            Fault::Deny("AccessDenied")
        } else {
            Fault::Pass
        }
    });
    let (code_vv, _, vv) = text(
        &deployer_command(dir.path(), &["up", "-vv"], &proxy.url())
            .output()
            .expect("run"),
    );
    let (code_plain_up, _, plain_up) = text(
        &deployer_command(dir.path(), &["up"], &proxy.url())
            .output()
            .expect("run"),
    );
    assert_eq!((code_vv, code_plain_up), (1, 1), "{vv}\n{plain_up}");
    let line = plain_up
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {plain_up}"));
    assert!(
        line.contains("sts:GetCallerIdentity") && line.contains("AccessDenied"),
        "{line}"
    );
    for dump in ["caused by", "ServiceError {", "raw: Response"] {
        assert!(
            !plain_up.contains(dump),
            "a debug dump without -vv: {plain_up}"
        );
    }
    assert!(
        vv.contains("  caused by: ServiceError"),
        "-vv names the SDK error: {vv}"
    );
}

fn revisions(project: &str, service: &str) -> usize {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cl = support::clients().await;
        let family = deployer::names::Names::new(project).family(service);
        cl.ecs
            .list_task_definitions()
            .family_prefix(&family)
            .send()
            .await
            .expect("list task definitions")
            .task_definition_arns()
            .len()
    })
}

#[test]
fn two_ups_at_once_one_proceeds_the_other_waits_or_exits_5_and_no_revision_is_doubled() {
    let name = unique("lock");
    let dir = project(&name, 2);
    let proxy = FaultProxy::start(&moto_url(), |_, _| Fault::Delay(Duration::from_millis(30)));
    // No waiting: the loser exits 5 and names the holder.
    let (a, b) = (
        spawn(dir.path(), &["up"], &proxy.url()),
        spawn(dir.path(), &["up"], &proxy.url()),
    );
    let (a, b) = (
        text(&a.wait_with_output().unwrap()),
        text(&b.wait_with_output().unwrap()),
    );
    let mut codes = [a.0, b.0];
    codes.sort();
    assert_eq!(codes, [0, 5], "a: {}\nb: {}", a.2, b.2);
    let loser = if a.0 == 5 { &a.2 } else { &b.2 };
    assert!(
        loser.contains("locked by ") && loser.contains(" since "),
        "{loser}"
    );
    assert!(loser.contains("--wait-for-lock"), "{loser}");
    assert_eq!(revisions(&name, "s0"), 1);

    // Waiting: both finish, the second finds the first's revision and registers no copy.
    let args = [
        "up",
        "--cpu",
        "512",
        "--memory",
        "1024",
        "--wait-for-lock",
        "120",
    ];
    let (a, b) = (
        spawn(dir.path(), &args, &proxy.url()),
        spawn(dir.path(), &args, &proxy.url()),
    );
    let (a, b) = (
        text(&a.wait_with_output().unwrap()),
        text(&b.wait_with_output().unwrap()),
    );
    assert_eq!((a.0, b.0), (0, 0), "a: {}\nb: {}", a.2, b.2);
    assert!(
        a.2.contains("waiting for the deploy lock") || b.2.contains("waiting for the deploy lock"),
        "a: {}\nb: {}",
        a.2,
        b.2
    );
    for s in ["s0", "s1"] {
        assert_eq!(revisions(&name, s), 2, "{s}: one new revision, not two");
    }
}

#[test]
fn an_expired_lock_is_taken_over_with_a_warning_and_a_noop_up_never_touches_the_lock() {
    let name = unique("stale");
    let dir = project(&name, 1);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let bucket = "deployer-locks-123456789012-us-east-1";
    let key = format!("{name}.json");
    rt.block_on(async {
        let cl = support::clients().await;
        let _ = cl.s3.create_bucket().bucket(bucket).send().await;
        cl.s3
            .put_object()
            .bucket(bucket)
            .key(&key)
            .body(
                br#"{"owner":"ghost@gone (pid 1)","command":"up","started":1,"expires":2}"#
                    .to_vec()
                    .into(),
            )
            .send()
            .await
            .expect("plant a stale lock");
    });
    let (code, _, stderr) = run(dir.path(), &["up"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("taking over the deploy lock of ghost@gone (pid 1)"),
        "{stderr}"
    );
    let gone = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let cl = support::clients().await;
            cl.s3
                .head_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .is_err()
        })
    };
    assert!(gone(&rt), "the lock is released at the end");

    let (code, json, stderr) = run(dir.path(), &["up", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["unchanged"], true);
    assert_eq!(v["api_calls"]["mutating"], serde_json::json!({}), "{json}");
    assert_eq!(v["api_calls"]["lock"], serde_json::json!({}), "{json}");

    // destroy takes the lock and removes it last.
    let (code, _, stderr) = run(dir.path(), &["destroy", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(gone(&rt));
}

#[test]
fn an_eight_service_project_applies_reliably() {
    for round in 0..2 {
        let dir = project(&unique(&format!("wide{round}")), 8);
        let (code, _, stderr) = run(dir.path(), &["up"]);
        assert_eq!(code, 0, "round {round}: {stderr}");
        let (code, json, _) = run(dir.path(), &["up", "--json"]);
        assert_eq!(code, 0);
        assert!(json.contains("\"unchanged\": true"), "{json}");
    }
}

/// `status` never reads a denied call as "not deployed": AccessDenied on DescribeServices is
/// an error with the permission help (exit 1), not a NOT_FOUND service and exit 0.
#[test]
fn status_reports_a_denied_call_instead_of_not_found() {
    let dir = project(&unique("denied"), 1);
    let proxy = FaultProxy::start(&moto_url(), |op, _| {
        if op.ends_with("DescribeServices") {
            Fault::Deny("AccessDenied")
        } else {
            Fault::Pass
        }
    });
    let out = deployer_command(dir.path(), &["status"], &proxy.url())
        .output()
        .expect("run");
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("AccessDenied") && stderr.contains("lack a permission"),
        "{stderr}"
    );
    assert!(!stdout.contains("NOT_FOUND"), "{stdout}");
}

/// A step output that cannot be written fails the command (exit 1, naming the variable):
/// later steps of the job would otherwise read empty outputs.
#[test]
fn an_unwritable_github_output_is_an_error() {
    let dir = project(&unique("ghout"), 1);
    let out = deployer_command(dir.path(), &["up"], &moto_url())
        // A directory: appending to it fails.
        .env("GITHUB_OUTPUT", dir.path())
        .output()
        .expect("run");
    let (code, _, stderr) = text(&out);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("could not write $GITHUB_OUTPUT"),
        "{stderr}"
    );
}
