//! The local target end to end: the real `deployer` binary, the real Docker engine, the real
//! flow image (built from source by the bundled prebuild) and the real Prefect server that
//! scripts/test.sh starts. AWS is pointed at a closed port: nothing here may need it.
//!
//! Every test uses its own project and flow name (the flow runs are told apart in Prefect by
//! flow name) and destroys what it made, also when it fails.

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use support::prefect;
use support::*;

/// A throw-away project on the local target.
struct Project {
    dir: tempfile::TempDir,
    name: String,
    flow: String,
}

impl Project {
    /// `extra` is appended to the service's settings (8 spaces of indent); `tail` to the file.
    fn new(prefix: &str, extra: &str, tail: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let name = unique(prefix);
        let flow = format!("flow-{name}");
        let script = repo_root().join("scripts/build-flow-binary.sh");
        let config = format!(
            "project: {name}\ntarget: local\nservices:\n  price-stream:\n    build:\n      context: flow-image\n      prebuild: {script}\n    \
             secrets: [PRICE_API_KEY]\n    environment:\n      SOURCE_URL: simulated\n      INTERVAL_SECONDS: \"1\"\n      \
             FLOW_NAME: {flow}\n      PREFECT_API_URL: {prefect}\n      SHUTDOWN_GRACE_SECONDS: \"10\"\n    stop_timeout: 30\n    \
             health_check:\n      command: [/price-stream, healthcheck]\n      interval: 5\n      timeout: 2\n      retries: 1\n      start_period: 5\n\
             {extra}local:\n  lake_dir: lake\n  services:\n    price-stream:\n      environment:\n        SINK_URL: file:///lake\n{tail}",
            script = script.display(),
            prefect = prefect::url(),
        );
        write(dir.path(), "deployer.yaml", config);
        Self { dir, name, flow }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The deployer with AWS unreachable (a closed port): the local target must not need it.
    fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let out = deployer_command(self.path(), args, "http://127.0.0.1:9")
            .envs(env.iter().copied())
            .output()
            .expect("run deployer");
        Run::from(out)
    }

    /// Parquet files in the lake per symbol, by run id.
    fn lake(&self, symbol: &str) -> Vec<String> {
        let mut out = Vec::new();
        let root = self.path().join("lake").join(format!("symbol={symbol}"));
        for date in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(date.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = f.file_name().to_string_lossy().to_string();
                if let Some(id) = name.strip_suffix(".parquet") {
                    out.push(id.to_string());
                }
            }
        }
        out
    }
}

impl Drop for Project {
    /// Leave nothing behind, whatever the test did.
    fn drop(&mut self) {
        let _ = self.run(&["destroy", "--yes"]);
    }
}

fn docker_cli(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Names of the project's containers (by the deployer's labels).
fn containers(project: &str) -> Vec<String> {
    let out = docker_cli(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=dev.deployer.project={project}"),
        "--format",
        "{{.Names}}",
    ]);
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

fn stopped_exit_codes(v: &Value) -> Vec<Option<i64>> {
    v["services"][0]["roll"]["stopped"]
        .as_array()
        .map(|a| a.iter().map(|s| s["exit_code"].as_i64()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn up_runs_the_pipeline_and_a_second_up_changes_nothing() {
    let p = Project::new("lt-up", "", "");
    let up = p.run(&["up", "--json"]).expect(0).json();
    assert_eq!(up["target"], "local");
    assert_eq!(up["services"][0]["action"], "rolled", "{up:#}");
    assert_eq!(up["services"][0]["revision"], 1);
    assert_eq!(up["images"][0]["built"], true);

    // The pipeline runs for real: flow runs in Prefect, Parquet in the lake.
    let runs = prefect::wait_completed(&p.flow, 3, Duration::from_secs(90)).await;
    let completed: BTreeSet<String> = runs
        .iter()
        .filter(|r| r.state == "COMPLETED")
        .map(|r| r.run_id.clone())
        .collect();
    let btc: BTreeSet<String> = p.lake("BTC").into_iter().collect();
    assert!(
        completed.iter().all(|id| btc.contains(id)),
        "every completed run wrote its BTC file"
    );
    // The deployment's identity reaches the flow as documented environment variables.
    let name = &up["services"][0]["containers"][0];
    let env = docker_cli(&[
        "inspect",
        "--format",
        "{{json .Config.Env}}",
        name.as_str().expect("name"),
    ]);
    assert!(
        env.contains(&format!("DEPLOYER_SERVICE={}-price-stream", p.name)),
        "{env}"
    );
    assert!(env.contains("DEPLOYER_REVISION="), "{env}");

    // Unchanged: nothing built, started or stopped.
    let again = p.run(&["up", "--json"]).expect(0).json();
    assert_eq!(again["unchanged"], true, "{again:#}");
    assert_eq!(again["services"][0]["action"], "unchanged");
    assert_eq!(again["images"][0]["built"], false);
    assert_eq!(
        again["services"][0]["containers"],
        up["services"][0]["containers"]
    );
    p.run(&["plan", "--exit-code"]).expect(0);
    p.run(&[
        "plan",
        "--exit-code",
        "--set",
        "services.price-stream.environment.X=1",
    ])
    .expect(2);

    let status = p.run(&["status", "--json"]).expect(0).json();
    assert_eq!(status["services"][0]["running"], 1, "{status:#}");
    assert_eq!(status["services"][0]["containers"][0]["health"], "healthy");
    let logs = p.run(&["logs", "--tail", "5"]).expect(0);
    assert!(
        logs.stdout
            .contains(&format!("{name} | ", name = name.as_str().expect("name"))),
        "{}",
        logs.stdout
    );
    assert!(logs.stdout.contains("iteration"), "{}", logs.stdout);

    // The secret reached the container but no artifact, label or output.
    let spec = std::fs::read_to_string(p.path().join(".deployer/price-stream/container-spec.json"))
        .expect("artifact");
    assert!(
        spec.contains("PRICE_API_KEY") && !spec.contains(SECRET_VALUE),
        "{spec}"
    );
    let labels = docker_cli(&[
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        name.as_str().expect("name"),
    ]);
    assert!(!labels.contains(SECRET_VALUE), "{labels}");
    assert!(
        std::fs::read_to_string(
            p.path()
                .join(".deployer/local")
                .join(&p.name)
                .join("state.json")
        )
        .is_ok_and(|s| !s.contains(SECRET_VALUE))
    );
}

/// Five redeploys at a 1 s interval: the stream goes on, old containers stop gracefully, no
/// run is left open, and the lake holds exactly the completed runs.
#[tokio::test(flavor = "multi_thread")]
async fn five_redeploys_keep_the_pipeline_running() {
    let p = Project::new("lt-roll", "", "");
    p.run(&["up"]).expect(0);
    prefect::wait_completed(&p.flow, 2, Duration::from_secs(90)).await;
    for i in 1..=5 {
        let marker = format!("services.price-stream.environment.MARK={i}");
        let v = p
            .run(&["redeploy", "--json", "--set", &marker])
            .expect(0)
            .json();
        assert_eq!(v["services"][0]["revision"], i + 1, "{v:#}");
        let codes = stopped_exit_codes(&v);
        assert_eq!(
            codes,
            vec![Some(0)],
            "the old container exits 0 after SIGTERM: {v:#}"
        );
    }
    prefect::wait_completed(&p.flow, 12, Duration::from_secs(90)).await;
    p.run(&["destroy", "--yes"]).expect(0);
    let runs = prefect::settled(&p.flow, Duration::from_secs(30)).await;
    let open: Vec<_> = runs
        .iter()
        .filter(|r| matches!(r.state.as_str(), "RUNNING" | "PENDING"))
        .collect();
    assert!(open.is_empty(), "runs left open: {open:?}");
    let completed: Vec<_> = runs.iter().filter(|r| r.state == "COMPLETED").collect();
    // No downtime: the largest gap between one run's end and the next run's start stays
    // far below what a stopped pipeline would show (10 intervals; the benchmark reports it).
    let mut gap: f64 = 0.0;
    for w in completed.windows(2) {
        if let (Some(end), Some(start)) = (w[0].end, w[1].start) {
            gap = gap.max(start - end);
        }
    }
    assert!(gap <= 10.0, "largest gap between runs {gap:.1}s");
    for symbol in ["BTC", "ETH"] {
        let files = p.lake(symbol);
        let unique: BTreeSet<&String> = files.iter().collect();
        assert_eq!(unique.len(), files.len(), "no duplicate (run id, {symbol})");
        let ids: BTreeSet<String> = completed.iter().map(|r| r.run_id.clone()).collect();
        let lake: BTreeSet<String> = files.into_iter().collect();
        assert_eq!(
            lake, ids,
            "{symbol}: the lake holds exactly the completed runs"
        );
    }
}

/// A revision whose containers exit at once is rolled back by the circuit breaker; the old
/// container is untouched and keeps producing runs. A revision that never turns healthy is
/// rolled back the same way.
#[tokio::test(flavor = "multi_thread")]
async fn failing_revisions_are_rolled_back_and_the_old_container_keeps_working() {
    let p = Project::new("lt-fail", "", "");
    let up = p.run(&["up", "--json"]).expect(0).json();
    let old = up["services"][0]["containers"][0]
        .as_str()
        .expect("container")
        .to_string();
    let crash = p
        .run(&[
            "redeploy",
            "--json",
            "--set",
            "services.price-stream.command=[--no-such-flag]",
        ])
        .expect(4);
    // The failure is still summarised: verdict, reason, what exists now (JSON and Markdown).
    let report = crash.json();
    assert_eq!(report["ok"], false);
    assert_eq!(report["verdict"], "rolled_back", "{report:#}");
    assert!(
        report["exists_now"].to_string().contains(&old),
        "{report:#}"
    );
    let md = std::fs::read_to_string(p.path().join(".deployer/summary.md")).expect("summary.md");
    assert!(
        md.contains("rolled back (exit 4)") && md.contains("exited with code 2"),
        "{md}"
    );
    assert!(
        crash.stderr.contains("exited with code 2"),
        "{}",
        crash.stderr
    );
    assert!(crash.stderr.contains("circuit breaker"), "{}", crash.stderr);
    assert!(
        crash.stderr.contains("unexpected argument"),
        "the failed container's last log lines: {}",
        crash.stderr
    );
    assert_eq!(
        containers(&p.name),
        vec![old.clone()],
        "only the old container is left"
    );
    let restarts = docker_cli(&[
        "inspect",
        "--format",
        "{{.RestartCount}} {{.State.Status}}",
        &old,
    ]);
    assert_eq!(restarts, "0 running", "the old container was not touched");
    let before = prefect::runs(&p.flow).await.len();
    prefect::wait_completed(&p.flow, before + 2, Duration::from_secs(60)).await;

    let sick = p
        .run(&[
            "redeploy",
            "--set",
            "services.price-stream.health_check.command=[/price-stream, no-such-subcommand]",
        ])
        .expect(4);
    assert!(sick.stderr.contains("unhealthy"), "{}", sick.stderr);
    assert_eq!(
        containers(&p.name),
        vec![old],
        "still only the old container"
    );
    let status = p.run(&["status", "--json"]).expect(0).json();
    assert_eq!(
        status["services"][0]["revision"], 1,
        "the current revision is still the first"
    );
}

/// Ctrl-C mid-roll removes the new containers and keeps the old one (exit 130); `rollback`
/// goes back one revision the same rolling way.
#[tokio::test(flavor = "multi_thread")]
async fn interrupt_undoes_the_roll_and_rollback_goes_back() {
    let p = Project::new("lt-int", "", "");
    let first = p.run(&["up", "--json"]).expect(0).json();
    let old = first["services"][0]["containers"][0]
        .as_str()
        .expect("container")
        .to_string();
    let mut child = deployer_command(
        p.path(),
        &[
            "redeploy",
            "--set",
            "services.price-stream.environment.MARK=x",
        ],
        "http://127.0.0.1:9",
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("spawn");
    // Wait until the new container exists, then interrupt.
    let deadline = Instant::now() + Duration::from_secs(60);
    while containers(&p.name).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the roll never started a container"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let signalled = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    let elapsed = signalled.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err).expect("read");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        elapsed < Duration::from_secs(7),
        "the undo fits before CI's SIGTERM: {elapsed:?}"
    );
    assert!(err.contains(&format!("running now: {old}")), "{err}");
    assert_eq!(containers(&p.name), vec![old.clone()]);

    let second = p
        .run(&[
            "redeploy",
            "--json",
            "--set",
            "services.price-stream.environment.MARK=y",
        ])
        .expect(0)
        .json();
    let rev = second["services"][0]["revision"]
        .as_u64()
        .expect("revision");
    assert!(rev >= 2, "{second:#}");
    let back = p.run(&["rollback", "--json"]).expect(0).json();
    assert_eq!(back["rollbacks"][0]["from"], rev);
    assert!(back["rollbacks"][0]["to"].as_u64() < Some(rev), "{back:#}");
    let status = p.run(&["status", "--json"]).expect(0).json();
    assert_eq!(
        status["services"][0]["containers"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        status["services"][0]["revision"],
        back["rollbacks"][0]["to"]
    );
}

/// `destroy` removes the project's containers, network and images, never a container it did
/// not create (even one started from the project's own image), keeps the data lake, and a
/// second `destroy` is a no-op.
#[tokio::test(flavor = "multi_thread")]
async fn destroy_removes_only_the_projects_things_and_keeps_the_lake() {
    let p = Project::new(
        "lt-destroy",
        "",
        // Prefect (on the host's 127.0.0.1) is out of reach from the bridge network: without
        // the lease the flow still iterates and writes the lake.
        "        LEADER_LEASE: \"off\"\n  network: bridge\n",
    );
    let up = p.run(&["up", "--json"]).expect(0).json();
    let image = up["images"][0]["image_ref"]
        .as_str()
        .expect("image")
        .to_string();
    let network = format!("deployer-{}", p.name);
    assert_eq!(
        docker_cli(&[
            "network",
            "ls",
            "--filter",
            &format!("name=^{network}$"),
            "--format",
            "{{.Name}}"
        ]),
        network
    );
    // On the bridge network 127.0.0.1 is the container itself (the test's Prefect server is
    // out of reach there): the lake shows the pipeline running.
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.lake("BTC").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no iteration reached the lake on the bridge network"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let decoy = format!("{}-decoy", p.name);
    docker_cli(&[
        "create",
        "--name",
        &decoy,
        &image,
        "--source-url",
        "simulated",
    ]);
    let lake_files = p.lake("BTC").len();
    assert!(lake_files > 0);

    let gone = p.run(&["destroy", "--yes", "--json"]).expect(0).json();
    assert_eq!(gone["network_removed"], true, "{gone:#}");
    assert!(gone["images_removed"].as_u64() >= Some(1), "{gone:#}");
    assert!(containers(&p.name).is_empty());
    assert_eq!(
        docker_cli(&[
            "network",
            "ls",
            "--filter",
            &format!("name=^{network}$"),
            "--format",
            "{{.Name}}"
        ]),
        ""
    );
    assert_eq!(
        docker_cli(&[
            "ps",
            "-a",
            "--filter",
            &format!("name=^{decoy}$"),
            "--format",
            "{{.Names}}"
        ]),
        decoy,
        "the decoy is untouched"
    );
    assert!(p.lake("BTC").len() >= lake_files, "the data lake stays");
    let again = p.run(&["destroy", "--yes"]).expect(0);
    assert!(
        again.stdout.contains("nothing to delete"),
        "{}",
        again.stdout
    );
    docker_cli(&["rm", "-f", &decoy]);
    docker_cli(&["rmi", "-f", &image]);
}

/// Bad input and faults, each refused before anything starts.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_before_anything_starts() {
    let p = Project::new("lt-bad", "", "");
    // A missing secret value: exit 2 naming it, nothing started.
    let mut cmd = deployer_command(p.path(), &["up"], "http://127.0.0.1:9");
    cmd.env_remove("PRICE_API_KEY");
    let missing = Run::from(cmd.output().expect("run")).expect(2);
    assert!(
        missing.stderr.contains("PRICE_API_KEY"),
        "{}",
        missing.stderr
    );
    assert!(containers(&p.name).is_empty());

    // No engine: exit 1 naming DOCKER_HOST, within the 2 s bound (plus process start).
    let started = Instant::now();
    let no_engine = p
        .run_env(&["up"], &[("DOCKER_HOST", "tcp://127.0.0.1:9")])
        .expect(1);
    assert!(
        no_engine.stderr.contains("DOCKER_HOST"),
        "{}",
        no_engine.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // An unknown `local:` key, and local settings for a service that does not exist.
    let bad_key = p.run(&["up", "--set", "local.networks=host"]).expect(2);
    assert!(
        bad_key.stderr.contains("local") && bad_key.stderr.contains("networks"),
        "{}",
        bad_key.stderr
    );
    let no_service = p
        .run(&["up", "--set", "local.services.nope.environment.A=1"])
        .expect(2);
    assert!(
        no_service.stderr.contains("local.services.nope"),
        "{}",
        no_service.stderr
    );

    // A container name the deployer would use, taken by someone else (a container started
    // from the project's own image: it inherits the image's labels, not the deployer's).
    let taken = format!("{}-price-stream-1-1", p.name);
    let built = p.run(&["build", "--json"]).expect(0).json();
    let image = built["images"][0]["image_uri"]
        .as_str()
        .expect("image")
        .to_string();
    docker_cli(&["create", "--name", &taken, &image]);
    let clash = p.run(&["up"]).expect(2);
    assert!(clash.stderr.contains(&taken), "{}", clash.stderr);
    assert_eq!(
        containers(&p.name),
        Vec::<String>::new(),
        "nothing of the project was started"
    );
    docker_cli(&["rm", "-f", &taken]);

    // The project on one target is refused on the other.
    p.run(&["up"]).expect(0);
    let other = p.run(&["status", "--target", "aws"]).expect(2);
    assert!(
        other.stderr.contains("deployed on the local target"),
        "{}",
        other.stderr
    );
}

/// `deployment.verify`: a revision passes once its own flow runs complete; a revision whose
/// every run fails is rolled back (exit 4) with the runs' messages, and the old revision runs.
#[tokio::test(flavor = "multi_thread")]
async fn verify_waits_for_the_revisions_own_runs_and_rolls_back_a_failing_one() {
    let p = Project::new(
        "lt-verify",
        "    deployment:\n      verify: {flow_runs: 2, within: 90, rollback: true}\n",
        "",
    );
    let up = p.run(&["up", "--json"]).expect(0).json();
    let verify = &up["services"][0]["verify"];
    assert!(verify["completed"].as_u64() >= Some(2), "{up:#}");

    // Extract fails on a closed port: every run of the new revision fails.
    let bad = p
        .run(&[
            "redeploy",
            "--set",
            "local.services.price-stream.environment.SOURCE_URL=http://127.0.0.1:9/prices",
        ])
        .expect(4);
    assert!(
        bad.stderr.contains("failed its pipeline check"),
        "{}",
        bad.stderr
    );
    assert!(bad.stderr.contains("FAILED"), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("rolled back to revision 1"),
        "{}",
        bad.stderr
    );
    let status = p.run(&["status", "--json"]).expect(0).json();
    assert_eq!(status["services"][0]["revision"], 1, "{status:#}");
    let running: Vec<&str> = status["services"][0]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(running.len(), 1, "{status:#}");
    assert!(
        running[0].ends_with("-1-1"),
        "revision 1 runs again: {running:?}"
    );
}
