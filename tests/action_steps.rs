//! The composite action's steps run here as the GitHub runner runs them: each `run:` script of
//! .github/actions/deployer/action.yml under `bash --noprofile --norc -eo pipefail`, with
//! GITHUB_OUTPUT, GITHUB_STEP_SUMMARY and GITHUB_PATH as temporary files and CI=true.
//!
//! - install: a fake release served from 127.0.0.1 (our own binary, named as release.yml names
//!   it); the right binary lands on GITHUB_PATH; a checksum mismatch fails clearly and installs
//!   nothing.
//! - run: `up` against moto; the outputs and the job summary later steps read are there.

mod support;

use serde_yaml_ng::Value;
use std::path::Path;
use std::process::{Command, Stdio};

fn action() -> Value {
    let text =
        std::fs::read_to_string(support::repo_root().join(".github/actions/deployer/action.yml"))
            .expect("action.yml");
    serde_yaml_ng::from_str(&text).expect("YAML")
}

fn step(name: &str) -> Value {
    action()["runs"]["steps"]
        .as_sequence()
        .expect("steps")
        .iter()
        .find(|s| s["name"].as_str() == Some(name))
        .cloned()
        .unwrap_or_else(|| panic!("no step {name}"))
}

/// The runner's shell for `shell: bash` in a composite action.
fn bash(script: &str, dir: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["--noprofile", "--norc", "-eo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("CI", "true")
        .env(
            "GITHUB_ACTION_PATH",
            support::repo_root().join(".github/actions/deployer"),
        );
    cmd
}

/// A static file server on 127.0.0.1 (Python's), for the fake release.
struct Server {
    child: std::process::Child,
    url: String,
}

impl Server {
    fn start(root: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server");
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
}

#[test]
fn the_install_step_installs_a_verified_release_binary_or_nothing() {
    let install = step("Install deployer");
    let script = install["run"].as_str().expect("run");
    assert_eq!(install["shell"].as_str(), Some("bash"));
    let releases = tempfile::tempdir().expect("tempdir");
    let version = "v9.9.9";
    let binary = Path::new(env!("CARGO_BIN_EXE_deployer"));
    let asset = releases
        .path()
        .join(version)
        .join(format!("deployer-{version}-x86_64-unknown-linux-gnu"));
    std::fs::create_dir_all(asset.parent().expect("dir")).expect("mkdir");
    std::fs::copy(binary, &asset).expect("copy");
    let server = Server::start(releases.path());
    let work = tempfile::tempdir().expect("tempdir");

    let run = |sum: &str, dest: &Path| {
        let github_path = work.path().join(format!("path-{sum:.8}"));
        std::fs::write(&github_path, "").expect("GITHUB_PATH");
        let out = bash(script, work.path())
            .env("DEPLOYER_VERSION", version)
            .env("DEPLOYER_SHA256_X86_64", sum)
            .env("DEPLOYER_SHA256_AARCH64", sum)
            .env("DEPLOYER_RELEASE_URL", &server.url)
            .env("DEPLOYER_INSTALL_DIR", dest)
            .env("GITHUB_PATH", &github_path)
            .output()
            .expect("run install");
        (
            out,
            std::fs::read_to_string(&github_path).unwrap_or_default(),
        )
    };

    // The right binary, verified, on the PATH of later steps.
    let good = work.path().join("good");
    let (out, path) = run(&sha256(&asset), &good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(path.trim(), good.display().to_string());
    assert_eq!(
        sha256(&good.join("deployer")),
        sha256(binary),
        "the release binary was installed"
    );
    let version_out = Command::new(good.join("deployer"))
        .arg("--version")
        .output()
        .expect("installed binary runs");
    assert!(String::from_utf8_lossy(&version_out.stdout).starts_with("deployer "));

    // A checksum mismatch: a clear error, nothing installed, nothing on the PATH.
    let bad = work.path().join("bad");
    let (out, path) = run(&"0".repeat(64), &bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SHA-256 mismatch") && err.contains("nothing was installed"),
        "{err}"
    );
    assert!(
        !bad.join("deployer").exists(),
        "a binary that failed its checksum was installed"
    );
    assert!(path.trim().is_empty(), "GITHUB_PATH was changed: {path}");
}

#[test]
fn the_run_step_deploys_and_leaves_outputs_and_a_job_summary() {
    let run = step("deployer");
    let script = run["run"].as_str().expect("run");
    let dir = tempfile::tempdir().expect("tempdir");
    let name = support::unique("it-action");
    let image = support::moto_ecr_image("flow");
    std::fs::write(
        dir.path().join("deployer.yaml"),
        format!("project: {name}\nregion: us-east-1\nservices:\n  web:\n    image: {image}\n"),
    )
    .expect("write");
    let outputs = dir.path().join("github-output");
    let summary = dir.path().join("step-summary");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_deployer"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = bash(script, dir.path())
        .env("PATH", path)
        .env("DEPLOYER_CONFIG", "deployer.yaml")
        .env("COMMAND", "up")
        // An argument with a shell metacharacter stays an argument (inputs reach the script
        // through the environment, never spliced into it).
        .env("ARGS", "--set services.web.environment.NOTE=a;b")
        .env("GITHUB_OUTPUT", &outputs)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env("AWS_ENDPOINT_URL", support::moto_url())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run step");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o = std::fs::read_to_string(&outputs).expect("GITHUB_OUTPUT");
    assert!(o.contains("changed=true"), "{o}");
    assert!(o.contains(&format!("image={image}")), "{o}");
    assert!(o.contains("task-definition-arn=arn:aws:ecs:"), "{o}");
    let s = std::fs::read_to_string(&summary).expect("GITHUB_STEP_SUMMARY");
    assert!(s.contains(&format!("## deployer up: {name}")), "{s}");
    // The action's outputs read exactly these keys.
    for (key, value) in action()["outputs"].as_mapping().expect("outputs") {
        let expr = value["value"].as_str().unwrap_or("");
        let k = key.as_str().unwrap_or("");
        assert!(
            expr.contains(&format!("steps.run.outputs.{k}")),
            "output {k} reads {expr}"
        );
    }
    support::deployer(dir.path(), &["destroy", "--yes"]).expect(0);
}
