//! The GitHub workflows and the composite action are half of the product: their contract is
//! checked here (zizmor and checkov lint them in scripts/test.sh).
//!
//! - every `uses:` is pinned to a full commit SHA with its version in a comment (or local);
//! - the artifact path is where `up` really writes (the binary is asked, against moto);
//! - artifacts upload hidden files, fail when missing, and upload on failure too;
//! - the OIDC session outlives the longest wait; only jobs that assume the role get
//!   `id-token: write`; checkout keeps no credentials;
//! - the redeploy path filter covers what shapes the image;
//! - every secret a workflow passes into the deployer is documented in the starter and README.

mod support;

use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};

fn files() -> Vec<PathBuf> {
    let root = support::repo_root();
    let mut out = vec![root.join(".github/actions/deployer/action.yml")];
    for e in std::fs::read_dir(root.join(".github/workflows")).expect("workflows") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn load(p: &Path) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(p).expect("read")).expect("YAML")
}

/// Every step of every job (workflows) or of the action.
fn steps(doc: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(s) = doc
        .get("runs")
        .and_then(|r| r.get("steps"))
        .and_then(Value::as_sequence)
    {
        out.extend(s.iter().cloned());
    }
    if let Some(jobs) = doc.get("jobs").and_then(Value::as_mapping) {
        for (_, job) in jobs {
            if let Some(s) = job.get("steps").and_then(Value::as_sequence) {
                out.extend(s.iter().cloned());
            }
        }
    }
    out
}

#[test]
fn every_action_is_pinned_to_a_commit_with_its_version_in_a_comment() {
    for f in files() {
        let text = std::fs::read_to_string(&f).expect("read");
        for line in text.lines().filter(|l| {
            l.trim_start().starts_with("- uses:") || l.trim_start().starts_with("uses:")
        }) {
            let reference = line.split("uses:").nth(1).unwrap_or("").trim();
            if reference.starts_with("./") {
                continue;
            }
            let (_, rest) = reference
                .split_once('@')
                .unwrap_or_else(|| panic!("{}: `{line}` has no ref", f.display()));
            let sha = rest.split_whitespace().next().unwrap_or("");
            assert!(
                sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit()),
                "{}: `{line}` is not pinned to a full commit SHA",
                f.display()
            );
            assert!(
                rest.contains("# v"),
                "{}: `{line}` lacks the version comment",
                f.display()
            );
        }
    }
}

#[test]
fn permissions_are_least_privilege_and_checkout_keeps_no_credentials() {
    for f in files()
        .iter()
        .filter(|f| f.to_string_lossy().contains("/workflows/"))
    {
        let doc = load(f);
        let top = doc
            .get("permissions")
            .unwrap_or_else(|| panic!("{}: no top-level permissions", f.display()));
        assert!(
            top.get("id-token").is_none(),
            "{}: id-token at the top level",
            f.display()
        );
        for (name, job) in doc["jobs"].as_mapping().expect("jobs") {
            let assumes = job["steps"].as_sequence().is_some_and(|s| {
                s.iter().any(|s| {
                    s["uses"]
                        .as_str()
                        .is_some_and(|u| u.starts_with("aws-actions/configure-aws-credentials"))
                })
            });
            let id_token = job
                .get("permissions")
                .and_then(|p| p.get("id-token"))
                .and_then(Value::as_str);
            assert_eq!(
                id_token == Some("write"),
                assumes,
                "{}: job {:?}: id-token: write exactly when it assumes the role",
                f.display(),
                name
            );
        }
        for s in steps(&doc) {
            if s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/checkout"))
            {
                assert_eq!(
                    s["with"]["persist-credentials"].as_bool(),
                    Some(false),
                    "{}: checkout keeps its credentials",
                    f.display()
                );
            }
            if let Some(run) = s["run"].as_str() {
                assert!(
                    !run.contains("${{"),
                    "{}: an expression inside `run:` (pass it through env): {run}",
                    f.display()
                );
            }
        }
    }
}

#[test]
fn the_oidc_session_outlives_the_longest_wait() {
    let rollout = deployer::config::Deployment::default().rollout_timeout;
    for f in files() {
        for s in steps(&load(&f)) {
            if s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("aws-actions/configure-aws-credentials"))
            {
                let secs = s["with"]["role-duration-seconds"].as_u64().unwrap_or(3600);
                assert!(
                    secs >= rollout + 1800,
                    "{}: role-duration-seconds {secs} < rollout_timeout {rollout} + the build",
                    f.display()
                );
            }
        }
    }
}

#[test]
fn the_redeploy_path_filter_covers_what_shapes_the_image() {
    let doc = load(&support::repo_root().join(".github/workflows/redeploy.yml"));
    let paths: Vec<&str> = doc["on"]["push"]["paths"]
        .as_sequence()
        .expect("paths")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for needed in [
        "flows/**",
        "deployer.yaml",
        "Cargo.lock",
        "Cargo.toml",
        "scripts/build-flow-binary.sh",
    ] {
        assert!(
            paths.contains(&needed),
            "redeploy.yml misses {needed}: {paths:?}"
        );
    }
}

/// `*` matches one path segment.
fn glob_match(pattern: &str, path: &str) -> bool {
    let (p, s): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    p.len() == s.len() && p.iter().zip(&s).all(|(a, b)| *a == "*" || a == b)
}

/// The artifact step uploads what `up` wrote: the binary is run against moto with its defaults.
#[test]
fn the_artifact_step_uploads_what_up_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = support::unique("it-artifact");
    let image = support::moto_ecr_image("flow");
    std::fs::write(
        dir.path().join("deployer.yaml"),
        format!("project: {name}\nregion: us-east-1\nservices:\n  web:\n    image: {image}\n"),
    )
    .expect("write");
    support::deployer(dir.path(), &["up"]).expect(0);
    let mut written = Vec::new();
    let mut stack = vec![dir.path().join(".deployer")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("out dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                written.push(
                    p.strip_prefix(dir.path())
                        .expect("relative")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    for wf in ["deploy.yml", "redeploy.yml"] {
        let doc = load(&support::repo_root().join(".github/workflows").join(wf));
        let upload = steps(&doc)
            .into_iter()
            .find(|s| {
                s["uses"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("actions/upload-artifact"))
            })
            .unwrap_or_else(|| panic!("{wf}: no artifact step"));
        assert_eq!(
            upload["with"]["include-hidden-files"].as_bool(),
            Some(true),
            "{wf}: .deployer/ is hidden"
        );
        assert_eq!(
            upload["with"]["if-no-files-found"].as_str(),
            Some("error"),
            "{wf}"
        );
        assert_eq!(
            upload["if"].as_str(),
            Some("always()"),
            "{wf}: also after a failed deploy"
        );
        let patterns: Vec<String> = upload["with"]["path"]
            .as_str()
            .expect("path")
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        for pattern in &patterns {
            assert!(
                written.iter().any(|w| glob_match(pattern, w)),
                "{wf}: `{pattern}` matches nothing `up` wrote: {written:?}"
            );
        }
    }
    support::deployer(dir.path(), &["destroy", "--yes"]).expect(0);
}

#[test]
fn every_secret_a_workflow_passes_is_documented() {
    let root = support::repo_root();
    let starter = std::fs::read_to_string(root.join("deployer.example.yaml")).expect("starter");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    for f in files() {
        let text = std::fs::read_to_string(&f).expect("read");
        for part in text.split("secrets.").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                continue;
            }
            assert!(
                starter.contains(&name),
                "{}: secret {name} is not documented in deployer.example.yaml",
                f.display()
            );
            assert!(
                readme.contains(&name),
                "{}: secret {name} is not documented in README.md",
                f.display()
            );
        }
    }
}
