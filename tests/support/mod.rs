//! Shared helpers of the integration tests (tests/cli_moto.rs, tests/image_*.rs): the real
//! `deployer` binary, the Docker engine, the local registry and moto that scripts/test.sh starts. Nothing here skips a test: a missing
//! component is a panic that says how to provide it.
#![allow(dead_code)]

pub mod fault_proxy;
pub mod files;
pub mod prefect;

use bollard::Docker;
use futures::StreamExt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `127.0.0.1:PORT` of the local registry (scripts/test.sh exports it).
pub fn registry() -> String {
    std::env::var("DEPLOYER_TEST_REGISTRY").expect(
        "DEPLOYER_TEST_REGISTRY is not set: run the suite with scripts/test.sh, or start a \
         registry with `scripts/start-registry.sh PORT DIR` and export \
         DEPLOYER_TEST_REGISTRY=127.0.0.1:PORT",
    )
}

/// moto's URL (scripts/test.sh exports it).
pub fn moto_url() -> String {
    std::env::var("DEPLOYER_TEST_MOTO_URL").expect(
        "DEPLOYER_TEST_MOTO_URL is not set: run the suite with scripts/test.sh (it starts moto)",
    )
}

/// The repository root (the deployer package).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A name unique to this process and call: registry and moto state outlive a test run.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = (u64::from(std::process::id()) << 20 ^ u64::from(nanos)) % 0xff_ffff;
    format!("{prefix}-{n:06x}")
}

pub async fn docker() -> Docker {
    deployer::image::build::connect()
        .await
        .expect("the Docker engine must be reachable (scripts/test.sh starts dockerd if needed)")
}

// (Each test binary uses some of them.)
#[allow(unused_imports)]
pub use files::{git, tar_entries, write};

/// A C program that prints `message` and exits with `code`, for a FROM scratch image.
pub fn c_program(message: &str, code: i32) -> String {
    format!(
        "#include <stdio.h>\nint main(void) {{ fputs({message:?} \"\\n\", stderr); puts(\"stdout: {message}\"); return {code}; }}\n"
    )
}

/// The command line that compiles `src` into a static `out` (used as a `prebuild` step too).
pub fn gcc_static(src: &str, out: &str) -> String {
    format!("gcc -static -O2 -o {out} {src}")
}

/// Compile `source` into a static binary at `out` (FROM scratch images have no libc).
pub fn static_binary(out: &Path, source: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("main.c");
    std::fs::write(&src, source).expect("write");
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(gcc_static(
            &src.display().to_string(),
            &out.display().to_string(),
        ))
        .output()
        .expect("gcc runs (install gcc and the static libc, Debian's libc6-dev)");
    assert!(
        status.status.success(),
        "gcc -static failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// The manifest digest the registry serves for `repo:reference`, asked over its HTTP API
/// (independently of the engine). None when the registry does not have it.
pub fn manifest_digest(registry: &str, repo: &str, reference: &str) -> Option<String> {
    let mut stream = TcpStream::connect(registry).expect("registry reachable");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let request = format!(
        "HEAD /v2/{repo}/manifests/{reference} HTTP/1.1\r\nHost: {registry}\r\n\
         Accept: application/vnd.docker.distribution.manifest.v2+json, \
         application/vnd.oci.image.manifest.v1+json, \
         application/vnd.docker.distribution.manifest.list.v2+json, \
         application/vnd.oci.image.index.v1+json\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    if !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    response.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("docker-content-digest")
            .then(|| value.trim().to_string())
    })
}

/// Run `image` once with `cmd` through the engine API; returns (exit code, stdout+stderr).
pub async fn run_once(docker: &Docker, image: &str, cmd: &[&str]) -> (i64, String) {
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::{LogsOptionsBuilder, RemoveContainerOptionsBuilder};
    let created = docker
        .create_container(
            None,
            ContainerCreateBody {
                image: Some(image.to_string()),
                cmd: Some(cmd.iter().map(std::string::ToString::to_string).collect()),
                network_disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("create a container from {image}: {e}"));
    let id = created.id;
    docker
        .start_container(&id, None)
        .await
        .unwrap_or_else(|e| panic!("start {image} {cmd:?}: {e}"));
    let mut code = None;
    let mut wait = docker.wait_container(&id, None);
    while let Some(item) = wait.next().await {
        match item {
            Ok(r) => code = Some(r.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => code = Some(c),
            Err(e) => panic!("wait for {image}: {e}"),
        }
    }
    let mut output = String::new();
    let mut logs = docker.logs(
        &id,
        Some(
            LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .build(),
        ),
    );
    while let Some(Ok(chunk)) = logs.next().await {
        output.push_str(&chunk.to_string());
    }
    let _ = docker
        .remove_container(
            &id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    (code.expect("the engine reported no exit code"), output)
}

/// Remove local images by reference, ignoring absent ones.
pub async fn remove_images(docker: &Docker, refs: &[&str]) {
    use bollard::query_parameters::RemoveImageOptionsBuilder;
    for r in refs {
        let _ = docker
            .remove_image(
                r,
                Some(RemoveImageOptionsBuilder::default().force(true).build()),
                None,
            )
            .await;
    }
}

/// Remove every local tag of `repository` (e.g. `127.0.0.1:5000/app`).
pub async fn remove_repository_images(docker: &Docker, repository: &str) {
    use bollard::query_parameters::ListImagesOptionsBuilder;
    let filters = std::collections::HashMap::from([("reference", vec![format!("{repository}:*")])]);
    let images = docker
        .list_images(Some(
            ListImagesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap_or_default();
    let tags: Vec<String> = images.into_iter().flat_map(|i| i.repo_tags).collect();
    let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    remove_images(docker, &refs).await;
}

/// Deploy-time secret values in every run's environment (tests list them under `secrets:`
/// where they need one). `Run::expect` fails if any of them is ever printed.
pub const SECRET_VALUE: &str = "sk-test-9f8e7d6c5b4a-never-print-me";
pub const BUILD_SECRET_VALUE: &str = "build-secret-never-in-prebuild";

/// AWS clients against moto, for checking what a command left behind.
pub async fn clients() -> deployer::aws::Clients {
    deployer::aws::Clients::new(&deployer::aws::Target {
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto_url()),
        max_attempts: Some(1),
        ..deployer::aws::Target::default()
    })
    .await
    .expect("clients")
}

/// The real `deployer` binary, run in `dir` against moto with test credentials.
pub fn deployer(dir: &Path, args: &[&str]) -> Run {
    deployer_env(dir, args, &[])
}

/// `deployer` with extra environment variables (e.g. a rotated secret value).
pub fn deployer_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    run_deployer(dir, args, &moto_url(), env)
}

/// The real `deployer` binary for commands that must not call AWS: every AWS call goes to a
/// closed local port and fails at once.
pub fn deployer_offline(dir: &Path, args: &[&str]) -> Run {
    run_deployer(dir, args, "http://127.0.0.1:9", &[])
}

fn run_deployer(dir: &Path, args: &[&str], endpoint: &str, env: &[(&str, &str)]) -> Run {
    let out = deployer_command(dir, args, endpoint)
        .envs(env.iter().copied())
        .output()
        .expect("run deployer");
    Run::from(out)
}

/// The `deployer` command line with the test environment, for tests that spawn it (signals,
/// concurrent runs) or point it at another endpoint (tests/support/fault_proxy.rs).
pub fn deployer_command(dir: &Path, args: &[&str], endpoint: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deployer"));
    cmd.args(args)
        .current_dir(dir)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("PRICE_API_KEY", SECRET_VALUE)
        .env("BUILD_SECRET", BUILD_SECRET_VALUE)
        .env_remove("AWS_PROFILE")
        .env_remove("DEPLOYER_CONFIG")
        .env_remove("DEPLOYER_REGISTRY");
    cmd
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }
}

impl Run {
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        for secret in [SECRET_VALUE, BUILD_SECRET_VALUE] {
            assert!(
                !self.stdout.contains(secret) && !self.stderr.contains(secret),
                "secret value printed"
            );
        }
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// The digest moto gives every image put into its ECR (it hashes an empty body).
pub const MOTO_DIGEST: &str =
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A prebuilt image that exists in moto's ECR (`repo@MOTO_DIGEST`), so the deployer's
/// preflight finds it; the repository is created if needed. Blocking: usable from sync setup.
pub fn moto_ecr_image(repo: &str) -> String {
    moto_ecr_put(repo, None)
}

/// The same image under a tag (`repo:tag`): another image URI in the same repository (moto
/// gives every image one digest, so tags are how tests tell images apart).
pub fn moto_ecr_tagged(repo: &str, tag: &str) -> String {
    moto_ecr_put(repo, Some(tag.to_string()))
}

fn moto_ecr_put(repo: &str, tag: Option<String>) -> String {
    let repo = repo.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let cl = clients().await;
            let _ = cl.ecr.create_repository().repository_name(&repo).send().await;
            let manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1,"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111"},"layers":[]}"#;
            let out = cl
                .ecr
                .put_image()
                .repository_name(&repo)
                .image_manifest(manifest)
                .set_image_tag(tag.clone())
                .send()
                .await;
            let digest = match out {
                Ok(o) => o
                    .image()
                    .and_then(|i| i.image_id())
                    .and_then(|i| i.image_digest())
                    .map(str::to_string)
                    .unwrap_or_else(|| MOTO_DIGEST.to_string()),
                // Already there (moto refuses the same manifest twice).
                Err(_) => MOTO_DIGEST.to_string(),
            };
            match tag {
                Some(t) => format!("123456789012.dkr.ecr.us-east-1.amazonaws.com/{repo}:{t}"),
                None => format!("123456789012.dkr.ecr.us-east-1.amazonaws.com/{repo}@{digest}"),
            }
        })
    })
    .join()
    .expect("moto ECR setup")
}

/// A network the user made, in moto: a VPC with a subnet and a security group, and a subnet
/// of a second VPC (for "does not belong together"). Blocking: usable from sync setup.
pub struct MotoNetwork {
    pub vpc: String,
    pub subnet: String,
    pub security_group: String,
    pub foreign_subnet: String,
}

pub fn moto_network() -> MotoNetwork {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let ec2 = clients().await.ec2;
            let vpc = |cidr: &'static str| {
                let ec2 = ec2.clone();
                async move {
                    let out = ec2.create_vpc().cidr_block(cidr).send().await.expect("vpc");
                    out.vpc()
                        .and_then(|v| v.vpc_id())
                        .expect("vpc id")
                        .to_string()
                }
            };
            let subnet = |vpc: String, cidr: &'static str| {
                let ec2 = ec2.clone();
                async move {
                    let out = ec2
                        .create_subnet()
                        .vpc_id(vpc)
                        .cidr_block(cidr)
                        .send()
                        .await
                        .expect("subnet");
                    out.subnet()
                        .and_then(|s| s.subnet_id())
                        .expect("subnet id")
                        .to_string()
                }
            };
            let (ours, theirs) = (vpc("10.77.0.0/16").await, vpc("10.78.0.0/16").await);
            let security_group = ec2
                .create_security_group()
                .group_name(unique("sg"))
                .description("deployer test")
                .vpc_id(&ours)
                .send()
                .await
                .expect("security group")
                .group_id()
                .expect("group id")
                .to_string();
            MotoNetwork {
                subnet: subnet(ours.clone(), "10.77.1.0/24").await,
                foreign_subnet: subnet(theirs, "10.78.1.0/24").await,
                vpc: ours,
                security_group,
            }
        })
    })
    .join()
    .expect("moto EC2 setup")
}
