//! The image pipeline against the real Docker engine and the real local registry
//! (scripts/test.sh starts both and exports DEPLOYER_TEST_REGISTRY).
//!
//! Every test builds `FROM scratch` (no pull) into its own repository name and works outside
//! git, so sources are identified by the build context's hash: the same inputs give the same
//! tag, which is what makes "push again" a skip.

mod support;

use deployer::image::push::push_image;
use deployer::image::{self, BuildSpec, PublishRequest, PublishedImage, RetryPolicy};
use deployer::ui::Ui;
use std::path::Path;
use std::time::Duration;
use support::*;

/// ECR is never contacted when the registry is overridden; the client only fills the slot.
fn offline_ecr() -> aws_sdk_ecr::Client {
    let conf = aws_sdk_ecr::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_ecr::config::Region::new("us-east-1"))
        .build();
    aws_sdk_ecr::Client::from_conf(conf)
}

async fn publish(spec: &BuildSpec, base: &Path, repo: &str, registry: &str) -> PublishedImage {
    try_publish(spec, base, repo, registry, RetryPolicy::default())
        .await
        .unwrap_or_else(|e| panic!("publish {repo}: {e}"))
}

async fn try_publish(
    spec: &BuildSpec,
    base: &Path,
    repo: &str,
    registry: &str,
    retry: RetryPolicy,
) -> deployer::error::Result<PublishedImage> {
    let mut req = PublishRequest::new(spec, base, repo);
    req.registry_override = Some(registry.to_string());
    req.retry = retry;
    image::publish(&req, Some(&offline_ecr()), &Ui::silent()).await
}

fn assert_pushed_by_digest(p: &PublishedImage, registry: &str, repo: &str) {
    let digest = p.digest.clone().expect("a pushed image has a digest");
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    assert_eq!(p.image_uri, format!("{registry}/{repo}@{digest}"));
    assert_eq!(
        manifest_digest(registry, repo, &p.tag).as_deref(),
        Some(digest.as_str()),
        "the registry serves {repo}:{} with another digest",
        p.tag
    );
}

/// The default image of the bundled flow, built exactly as `deployer up` builds it: the
/// bundled prebuild script stages the static binary and CA bundle, the engine builds
/// flows/Dockerfile with no pull, the image runs, is pushed, and a second publish uploads
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn flow_image_builds_runs_and_pushes_once() {
    let registry = registry();
    let docker = docker().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = unique("it-flow");
    let script = repo_root().join("scripts/build-flow-binary.sh");
    // As in deployer.example.yaml: the script stages into DEPLOYER_CONTEXT.
    let spec = BuildSpec {
        context: "flow-image".into(),
        prebuild: Some(script.display().to_string()),
        ..BuildSpec::default()
    };

    let first = publish(&spec, dir.path(), &repo, &registry).await;
    assert!(!first.skipped_push);
    assert_pushed_by_digest(&first, &registry, &repo);
    // scratch has no base layers: the CA bundle, the writable /tmp and the binary are the
    // image's three layers. (Uploaded, or mounted when an earlier run pushed the same
    // binary to this registry.)
    assert_eq!(first.layers_pushed + first.layers_skipped, 3, "{first:#?}");

    // What the image is: small, non-root, health-checked by the flow itself.
    let inspect = docker
        .inspect_image(&first.tagged_ref)
        .await
        .expect("inspect");
    let size = inspect.size.expect("size");
    assert!(
        size <= 20_000_000,
        "the default flow image is {size} bytes (goal <= 20 MB)"
    );
    assert_eq!(inspect.architecture.as_deref(), Some("amd64"));
    let config = inspect.config.expect("config");
    assert_eq!(config.user.as_deref(), Some("65532:65532"));
    assert_eq!(config.entrypoint, Some(vec!["/price-stream".to_string()]));
    assert_eq!(
        config.healthcheck.and_then(|h| h.test),
        Some(vec![
            "CMD".to_string(),
            "/price-stream".to_string(),
            "healthcheck".to_string()
        ])
    );
    assert!(
        config
            .env
            .unwrap_or_default()
            .contains(&"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".to_string())
    );

    // The static binary runs inside the scratch image as uid 65532.
    let (code, out) = run_once(&docker, &first.tagged_ref, &["--help"]).await;
    assert_eq!(code, 0, "price-stream --help in the image: {out}");
    assert!(
        out.contains("healthcheck"),
        "usage lists the health subcommand: {out}"
    );
    // The health subcommand works too: no heartbeat file yet, so it reports unhealthy (1).
    let (code, out) = run_once(&docker, &first.tagged_ref, &["healthcheck"]).await;
    assert_eq!(code, 1, "healthcheck without a heartbeat: {out}");
    assert!(!out.trim().is_empty(), "healthcheck explains itself");
    // The flow itself runs as uid 65532 in the scratch image: offline source, file sink in
    // /tmp, health file stamped after each iteration. Fails if /tmp is not writable.
    let (code, out) = run_once(
        &docker,
        &first.tagged_ref,
        &[
            "--source-url",
            "simulated",
            "--sink-url",
            "file:///tmp/lake",
            "--interval-seconds",
            "0",
            "--iterations",
            "2",
        ],
    )
    .await;
    assert_eq!(code, 0, "two offline iterations in the image: {out}");
    assert!(
        !out.contains("cannot write health file"),
        "the health check could never pass in this image: {out}"
    );

    // Publish the same sources again (same recipe, prebuild included: it is part of the
    // tag): the tag is in the registry, so nothing is built or uploaded.
    let second = publish(&spec, dir.path(), &repo, &registry).await;
    assert!(second.skipped_push, "{second:#?}");
    assert_eq!(
        (
            second.layers_pushed,
            second.bytes_pushed,
            second.build_steps
        ),
        (0, 0, 0)
    );
    assert_eq!(second.image_uri, first.image_uri);

    // And a forced re-push of the same image uploads zero layers: the registry has them all.
    let repo_ref = format!("{registry}/{repo}");
    let again = push_image(
        &docker,
        &repo_ref,
        &first.tag,
        None,
        &RetryPolicy::default(),
        &Ui::silent(),
    )
    .await
    .expect("push again");
    assert_eq!(
        (
            again.layers_pushed,
            again.layers_skipped,
            again.bytes_pushed
        ),
        (0, 3, 0),
        "{again:#?}"
    );
    assert_eq!(Some(again.digest), first.digest);

    remove_images(&docker, &[&first.tagged_ref]).await;
}

/// Edit one source file: the prebuild recompiles it, the engine reuses the cached layer of
/// the unchanged asset, and the push uploads only the binary's layer.
#[tokio::test(flavor = "multi_thread")]
async fn changed_source_reuses_cached_layers_and_uploads_only_the_changed_layer() {
    let registry = registry();
    let docker = docker().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let repo = unique("it-layers");
    // A 2 MB asset that does not change, and a program that does.
    // Unique content per run: a layer already in the registry would be mounted, not uploaded.
    let mut asset: Vec<u8> = repo.as_bytes().to_vec();
    asset.extend((0..2_000_000u32).map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1]));
    write(root, "ctx/assets/table.bin", &asset);
    write(
        root,
        "ctx/Dockerfile",
        "FROM scratch\nCOPY assets/ /assets/\nCOPY app /app\nENTRYPOINT [\"/app\"]\n",
    );
    write(root, "ctx/.dockerignore", "*.c\n");
    write(
        root,
        "src/app.c",
        c_program(&format!("version one {repo}"), 0),
    );
    let spec = BuildSpec {
        context: "ctx".into(),
        prebuild: Some(gcc_static("src/app.c", "ctx/app")),
        ..BuildSpec::default()
    };

    let first = publish(&spec, root, &repo, &registry).await;
    assert_pushed_by_digest(&first, &registry, &repo);
    assert_eq!((first.layers_pushed, first.layers_skipped), (2, 0));
    let (code, out) = run_once(&docker, &first.tagged_ref, &[]).await;
    assert_eq!((code, out.contains("version one")), (0, true), "{out}");

    write(
        root,
        "src/app.c",
        c_program(&format!("version two {repo}"), 0),
    );
    let second = publish(&spec, root, &repo, &registry).await;
    assert_ne!(second.tag, first.tag, "new sources, new tag");
    assert_pushed_by_digest(&second, &registry, &repo);
    assert_ne!(second.digest, first.digest);
    // Steps: FROM, COPY assets (cached), COPY app (new), ENTRYPOINT (new).
    assert_eq!(
        (second.build_steps, second.cached_steps),
        (4, 1),
        "{second:#?}"
    );
    assert_eq!(
        (second.layers_pushed, second.layers_skipped),
        (1, 1),
        "{second:#?}"
    );
    assert!(
        second.bytes_pushed < asset.len() as u64,
        "only the binary's layer is uploaded, not the 2 MB asset: {second:#?}"
    );
    let (code, out) = run_once(&docker, &second.tagged_ref, &[]).await;
    assert_eq!((code, out.contains("version two")), (0, true), "{out}");

    remove_images(&docker, &[&first.tagged_ref, &second.tagged_ref]).await;
}

/// A failing `RUN` step: `deployer build` exits non-zero and shows the step and its output.
#[test]
fn failing_dockerfile_step_is_reported_with_its_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let project = unique("it-fail");
    static_binary(
        &root.join("app/check"),
        &c_program("boom: the widget table is missing", 3),
    );
    write(
        root,
        "app/Dockerfile",
        "FROM scratch\nCOPY check /check\nRUN [\"/check\"]\nCOPY check /never\n",
    );
    write(
        root,
        "deployer.yaml",
        format!(
            "project: {project}\nregion: us-east-1\nservices:\n  web:\n    build:\n      context: app\n"
        ),
    );
    let run = deployer_offline(root, &["build"]);
    assert_eq!(
        run.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    for needle in [
        "Step 3/4 : RUN [\"/check\"]",
        "boom: the widget table is missing",
        "returned a non-zero code: 3",
    ] {
        assert!(
            run.stderr.contains(needle),
            "stderr lacks `{needle}`:\n{}",
            run.stderr
        );
    }
    assert!(
        !run.stderr.contains("COPY check /never"),
        "the steps after the failure never ran:\n{}",
        run.stderr
    );
}

/// Nothing listens on the registry port: the push is retried with backoff, then fails with
/// an error that names the registry and the number of attempts.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_registry_fails_clearly_after_retries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "ctx/Dockerfile", "FROM scratch\nCOPY hello.txt /\n");
    write(root, "ctx/hello.txt", unique("content"));
    // A port that was free a moment ago and has no listener now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dead = format!("127.0.0.1:{port}");
    let spec = BuildSpec {
        context: "ctx".into(),
        ..BuildSpec::default()
    };
    let retry = RetryPolicy {
        attempts: 3,
        initial_delay: Duration::from_millis(200),
        max_delay: Duration::from_millis(400),
    };
    let started = std::time::Instant::now();
    let err = try_publish(&spec, root, "it-unreachable", &dead, retry)
        .await
        .expect_err("nothing listens there");
    let text = err.to_string();
    assert!(
        text.contains(&format!("registry {dead} is unreachable after 3 attempts")),
        "{text}"
    );
    assert!(text.contains("connection refused"), "{text}");
    assert!(
        err.help
            .as_deref()
            .is_some_and(|h| h.contains("start-registry.sh")),
        "{err:?}"
    );
    // Two back-off sleeps (200 ms, 400 ms) happened: it did retry.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    remove_repository_images(&docker().await, &format!("{dead}/it-unreachable")).await;
}

/// A Graviton service: the image is built for linux/arm64 (a FROM scratch build needs no
/// emulation), tagged apart from the amd64 image of the same commit, and labelled with the
/// commit it was built from.
#[tokio::test(flavor = "multi_thread")]
async fn arm64_build_is_tagged_by_content_and_labelled() {
    let docker = docker().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "ctx/Dockerfile", "FROM scratch\nCOPY a.txt /\n");
    write(root, "ctx/a.txt", unique("a"));
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "one"]);
    let commit = git(&["rev-parse", "HEAD"]);
    let spec = BuildSpec {
        context: "ctx".into(),
        ..BuildSpec::default()
    };
    let repo = unique("it-arm");
    let mut req = PublishRequest::new(&spec, root, &repo);
    req.platform = deployer::image::Platform::LinuxArm64;
    req.push = false;
    let built = image::publish(&req, Some(&offline_ecr()), &Ui::silent())
        .await
        .expect("arm64 build");
    // Named by content (context hash and recipe), not by the commit; arm64 apart.
    let expected = image::content_tag(&spec, root, deployer::image::Platform::LinuxArm64)
        .await
        .expect("content tag");
    assert!(
        expected.starts_with("ctx-")
            && expected.ends_with(&format!("-{}-arm64", image::recipe_hash(&spec))),
        "{expected}"
    );
    assert_eq!(built.tag, expected);
    assert_eq!(built.tagged_ref, format!("{repo}:{}", built.tag));
    assert_eq!(built.digest, None, "nothing was pushed");
    let inspect = docker
        .inspect_image(&built.tagged_ref)
        .await
        .expect("inspect");
    assert_eq!(inspect.architecture.as_deref(), Some("arm64"));
    let labels = inspect.config.and_then(|c| c.labels).expect("labels");
    assert_eq!(
        labels.get("org.opencontainers.image.revision"),
        Some(&commit)
    );
    assert!(labels.contains_key("org.opencontainers.image.created"));
    assert!(!labels.contains_key("dev.deployer.dirty"));
    remove_images(&docker, &[&built.tagged_ref]).await;
}
