//! Image pipeline: build context, build through the Docker Engine API, push to ECR.
//!
//! `publish` runs the whole pipeline for one service:
//! identity (git) -> tag -> "already in the registry?" -> prebuild -> build -> push -> digest.
//! Tags are treated as immutable: when the registry already holds the tag, build and push are
//! skipped and the stored digest is returned. Services are deployed by that digest.

pub mod auth;
pub mod build;
pub mod context;
pub mod dockerignore;
pub mod push;
pub mod tag;

pub use push::RetryPolicy;
pub use tag::TagStyle;

use crate::error::{Error, Result};
use crate::ui::Ui;
use auth::RegistryAuth;
use bollard::Docker;
use context::BuildContext;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tag::SourceIdentity;

/// Target platform of the image, from the service's CPU architecture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Platform {
    /// X86_64 (the default).
    #[default]
    #[serde(rename = "linux/amd64")]
    LinuxAmd64,
    /// ARM64 (Graviton).
    #[serde(rename = "linux/arm64")]
    LinuxArm64,
}

impl Platform {
    /// The engine's platform string.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::LinuxAmd64 => "linux/amd64",
            Platform::LinuxArm64 => "linux/arm64",
        }
    }

    /// The Rust target triple a prebuild step should compile for (`DEPLOYER_RUST_TARGET`).
    pub fn rust_target(self) -> &'static str {
        match self {
            Platform::LinuxAmd64 => "x86_64-unknown-linux-gnu",
            Platform::LinuxArm64 => "aarch64-unknown-linux-gnu",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_context() -> PathBuf {
    PathBuf::from(".")
}

fn default_dockerfile() -> PathBuf {
    PathBuf::from("Dockerfile")
}

/// The `build:` section of a service in deployer.yaml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    /// Build context directory, relative to the config file's directory.
    #[serde(default = "default_context")]
    pub context: PathBuf,
    /// Dockerfile path relative to `context` (default `Dockerfile`); must be inside it.
    #[serde(default = "default_dockerfile")]
    pub dockerfile: PathBuf,
    /// Build arguments (`ARG`).
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// Multi-stage target to stop at.
    #[serde(default)]
    pub target: Option<String>,
    /// Shell command run (`sh -c`) in the config directory before the build, e.g. building the
    /// static flow binary into the context. It sees `DEPLOYER_PLATFORM`, `DEPLOYER_RUST_TARGET`
    /// and `DEPLOYER_CONTEXT` (absolute context path). Skipped when the image already exists.
    #[serde(default)]
    pub prebuild: Option<String>,
    /// Tag with the short (12 hex digits, default) or full commit id.
    #[serde(default)]
    pub tag: TagStyle,
}

impl Default for BuildSpec {
    fn default() -> Self {
        Self {
            context: default_context(),
            dockerfile: default_dockerfile(),
            args: BTreeMap::new(),
            target: None,
            prebuild: None,
            tag: TagStyle::default(),
        }
    }
}

/// The build recipe's part of a tag: 8 hex digits of a hash over everything besides the
/// sources that shapes the image (context, Dockerfile, args, target, prebuild), so two
/// services built from one commit with different recipes never share a tag (the second would
/// otherwise find the first one's image "already pushed" and deploy it).
pub fn recipe_hash(spec: &BuildSpec) -> String {
    use sha2::{Digest, Sha256};
    let recipe = serde_json::json!({
        "context": spec.context,
        "dockerfile": spec.dockerfile,
        "args": spec.args,
        "target": spec.target,
        "prebuild": spec.prebuild,
    });
    let digest = Sha256::digest(recipe.to_string().as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// One `publish` call: build (and optionally push) the image of one service.
#[derive(Debug, Clone)]
pub struct PublishRequest<'a> {
    pub spec: &'a BuildSpec,
    /// Directory of the config file: `spec.context` and `prebuild` are relative to it, and its
    /// git repository gives the tag.
    pub base_dir: &'a Path,
    pub platform: Platform,
    /// Repository name (the ECR repository, e.g. `price-stream`).
    pub repository: String,
    /// `HOST:PORT` of another registry (e.g. a local one): push there, and ask it (not ECR)
    /// whether the tag exists. No credentials are sent to it.
    pub registry_override: Option<String>,
    /// Refuse a dirty work tree or sources outside git (CI).
    pub require_clean: bool,
    /// Push (and check the registry first). Without it the image is only built and tagged
    /// locally, and ECR is not contacted unless it is needed for the registry host.
    pub push: bool,
    /// Retries for transient push failures.
    pub retry: RetryPolicy,
    /// Environment variables the prebuild command must not see (the deployer's secrets: a
    /// build script has no business reading them, and its output is printed on failure).
    pub hidden_env: Vec<String>,
    /// Labels added to the image besides the source labels (the local target marks its
    /// images with the project, so `destroy` finds them).
    pub labels: BTreeMap<String, String>,
}

impl<'a> PublishRequest<'a> {
    /// `<source identity>-<recipe>[-arm64]`, e.g. `3f2a9c1d7e8b-1a2b3c4d`.
    pub fn tag(&self, identity: &SourceIdentity) -> String {
        let base = identity.tag(self.spec.tag, Platform::LinuxAmd64);
        let recipe = recipe_hash(self.spec);
        match self.platform {
            Platform::LinuxAmd64 => format!("{base}-{recipe}"),
            Platform::LinuxArm64 => format!("{base}-{recipe}-arm64"),
        }
    }

    /// A request with defaults: linux/amd64, ECR, dirty trees allowed, push on.
    pub fn new(spec: &'a BuildSpec, base_dir: &'a Path, repository: impl Into<String>) -> Self {
        Self {
            spec,
            base_dir,
            platform: Platform::default(),
            repository: repository.into(),
            registry_override: None,
            require_clean: false,
            push: true,
            retry: RetryPolicy::default(),
            hidden_env: Vec::new(),
            labels: BTreeMap::new(),
        }
    }
}

/// The outcome of `publish`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PublishedImage {
    /// What services deploy: `HOST/repo@sha256:...` after a push or a skip. Without `push`
    /// (nothing in a registry) the local reference `HOST/repo:tag` (or `repo:tag`).
    pub image_uri: String,
    pub tag: String,
    /// `HOST/repo:tag` (or `repo:tag` for a local-only build).
    pub tagged_ref: String,
    /// Registry manifest digest `sha256:...` (None for a local-only build).
    pub digest: Option<String>,
    /// The tag was already in the registry (for a local-only build: in the engine): nothing
    /// was built or pushed.
    pub skipped_push: bool,
    /// Local image id (config digest) when the image was built.
    pub image_id: Option<String>,
    pub layers_pushed: u32,
    pub layers_skipped: u32,
    pub bytes_pushed: u64,
    /// Size of the build context tar sent to the engine.
    pub context_bytes: u64,
    /// Dockerfile steps run, and how many of them came from the engine's layer cache.
    pub build_steps: u32,
    pub cached_steps: u32,
    pub build_seconds: f64,
    pub push_seconds: f64,
    /// The commit being deployed (provenance; the image may have been first built from an
    /// earlier commit with the same content, see its `org.opencontainers.image.revision`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// Where the image goes.
enum Registry {
    Ecr(RegistryAuth),
    Override(String),
    /// Build only, no registry known: a plain local tag.
    Local,
}

impl Registry {
    fn host(&self) -> Option<&str> {
        match self {
            Registry::Ecr(auth) => Some(&auth.host),
            Registry::Override(host) => Some(host),
            Registry::Local => None,
        }
    }
}

/// Build and push one service image. See the module docs for the order of steps. `ecr` is
/// needed only to push to ECR (no `registry_override`); a local-only build (`push: false`)
/// contacts no registry.
///
/// Kept whole: the steps in the module docs' order, sharing the registry, repository and tag.
pub async fn publish(
    req: &PublishRequest<'_>,
    ecr: Option<&aws_sdk_ecr::Client>,
    ui: &Ui,
) -> Result<PublishedImage> {
    validate_repository(&req.repository)?;
    let context_dir = req.base_dir.join(&req.spec.context);
    let git = tag::git_state(req.base_dir).await?;
    if req.require_clean {
        match &git {
            Some(state) => SourceIdentity::Git(state.clone()).ensure_clean()?,
            None => SourceIdentity::Context {
                sha256: String::new(),
            }
            .ensure_clean()?,
        }
    }
    let registry = registry(req, ecr).await?;
    let repo_ref = match registry.host() {
        Some(host) => format!("{host}/{}", req.repository),
        None => req.repository.clone(),
    };
    let mut docker: Option<Docker> = None;

    // The image is named by what it is built from, not by the commit: the context after the
    // prebuild (a deterministic tar: sorted, normalised times and owners), with the recipe
    // (Dockerfile, args, target) and the platform in the tag. A commit that changes none of it
    // (a README edit) finds its tag in the registry: no build, no push, the same digest, so no
    // new revision and no rollout. The prebuild runs every time (the bundled flow's is a cargo
    // no-op when nothing changed) because only its output says what the image would be.
    if let Some(command) = &req.spec.prebuild {
        prebuild(command, req, &context_dir, ui).await?;
    }
    let context = BuildContext::open(&context_dir, &req.spec.dockerfile)?;
    let identity = SourceIdentity::Context {
        sha256: context_sha256(&context).await?,
    };
    let current_commit = git.as_ref().map(|g| g.commit.clone());
    let tag = req.tag(&identity);
    if let Some(mut done) = existing(req, &registry, &repo_ref, &tag, ecr, &mut docker, ui).await? {
        done.commit = current_commit;
        return Ok(done);
    }
    let tagged_ref = format!("{repo_ref}:{tag}");
    let docker = match docker {
        Some(d) => d,
        None => build::connect().await?,
    };

    let built = build::build_image(
        &docker,
        build::BuildRequest {
            context,
            image_ref: &tagged_ref,
            args: &req.spec.args,
            target: req.spec.target.as_deref(),
            platform: req.platform,
            labels: labels(git.as_ref())
                .into_iter()
                .chain(req.labels.clone())
                .collect(),
        },
        ui,
    )
    .await?;

    let mut published = PublishedImage {
        image_uri: tagged_ref.clone(),
        tag: tag.clone(),
        tagged_ref: tagged_ref.clone(),
        digest: None,
        skipped_push: false,
        image_id: Some(built.image_id.clone()),
        layers_pushed: 0,
        layers_skipped: 0,
        bytes_pushed: 0,
        context_bytes: built.context.tar_bytes,
        build_steps: built.steps,
        cached_steps: built.cached_steps,
        build_seconds: built.seconds,
        push_seconds: 0.0,
        commit: current_commit,
    };
    if !req.push {
        return Ok(published);
    }
    let auth = match &registry {
        Registry::Ecr(auth) => Some(auth),
        _ => None,
    };
    let pushed = push::push_image(&docker, &repo_ref, &tag, auth, &req.retry, ui).await?;
    published.image_uri = format!("{repo_ref}@{}", pushed.digest);
    published.digest = Some(pushed.digest);
    published.layers_pushed = pushed.layers_pushed;
    published.layers_skipped = pushed.layers_skipped;
    published.bytes_pushed = pushed.bytes_pushed;
    published.push_seconds = pushed.seconds;
    Ok(published)
}

/// Where the image goes: the `--registry` override, ECR (authenticated), or nowhere.
async fn registry(req: &PublishRequest<'_>, ecr: Option<&aws_sdk_ecr::Client>) -> Result<Registry> {
    Ok(match (&req.registry_override, req.push, ecr) {
        (Some(host), _, _) => Registry::Override(host.clone()),
        (None, true, Some(ecr)) => Registry::Ecr(auth::ecr_auth(ecr).await?),
        (None, true, None) => {
            return Err(Error::failure(
                "no registry to push to: ECR needs AWS access and none was set up",
            )
            .with_help("pass --registry HOST:PORT, or build without pushing"));
        }
        (None, false, _) => Registry::Local,
    })
}

/// If the registry already has `tag`, the finished result (nothing built or pushed).
async fn existing(
    req: &PublishRequest<'_>,
    registry: &Registry,
    repo_ref: &str,
    tag: &str,
    ecr: Option<&aws_sdk_ecr::Client>,
    docker: &mut Option<Docker>,
    ui: &Ui,
) -> Result<Option<PublishedImage>> {
    let started = Instant::now();
    if !req.push {
        return local_image(repo_ref, tag, docker, ui, started).await;
    }
    let digest = match (registry, ecr) {
        (Registry::Ecr(_), Some(ecr)) => ecr_digest(ecr, &req.repository, tag).await?,
        (Registry::Ecr(_), None) => None,
        (Registry::Override(_), _) => {
            if docker.is_none() {
                *docker = Some(build::connect().await?);
            }
            match docker {
                Some(d) => registry_digest(d, &format!("{repo_ref}:{tag}"), ui).await,
                None => None,
            }
        }
        (Registry::Local, _) => None,
    };
    Ok(digest.map(|digest| {
        ui.step(format!(
            "{repo_ref}:{tag} is already in the registry ({digest}); skipping build and push (tags are immutable)"
        ));
        PublishedImage {
            image_uri: format!("{repo_ref}@{digest}"),
            tag: tag.to_string(),
            tagged_ref: format!("{repo_ref}:{tag}"),
            digest: Some(digest),
            skipped_push: true,
            image_id: None,
            layers_pushed: 0,
            layers_skipped: 0,
            bytes_pushed: 0,
            context_bytes: 0,
            build_steps: 0,
            cached_steps: 0,
            build_seconds: 0.0,
            push_seconds: started.elapsed().as_secs_f64(),
            commit: None,
        }
    }))
}

/// A local-only build whose tag the engine already has: nothing to build (tags name their
/// inputs: commit, uncommitted changes and recipe, or the context's content).
async fn local_image(
    repo_ref: &str,
    tag: &str,
    docker: &mut Option<Docker>,
    ui: &Ui,
    started: Instant,
) -> Result<Option<PublishedImage>> {
    if docker.is_none() {
        *docker = Some(build::connect().await?);
    }
    let Some(d) = docker else { return Ok(None) };
    let tagged_ref = format!("{repo_ref}:{tag}");
    let Ok(found) = d.inspect_image(&tagged_ref).await else {
        return Ok(None);
    };
    let Some(id) = found.id else { return Ok(None) };
    ui.step(format!(
        "{tagged_ref} is already in the local engine ({id}); skipping the build"
    ));
    Ok(Some(PublishedImage {
        image_uri: tagged_ref.clone(),
        tag: tag.to_string(),
        tagged_ref,
        digest: None,
        skipped_push: true,
        image_id: Some(id),
        layers_pushed: 0,
        layers_skipped: 0,
        bytes_pushed: 0,
        context_bytes: 0,
        build_steps: 0,
        cached_steps: 0,
        build_seconds: 0.0,
        push_seconds: started.elapsed().as_secs_f64(),
        commit: None,
    }))
}

/// ECR DescribeImages for one tag: its digest, or None when the tag is absent.
async fn ecr_digest(
    ecr: &aws_sdk_ecr::Client,
    repository: &str,
    tag: &str,
) -> Result<Option<String>> {
    let id = aws_sdk_ecr::types::ImageIdentifier::builder()
        .image_tag(tag)
        .build();
    match ecr.describe_images().repository_name(repository).image_ids(id).send().await {
        Ok(out) => Ok(out.image_details().first().and_then(|d| d.image_digest()).map(str::to_string)),
        Err(e) => match e.as_service_error() {
            Some(se) if se.is_image_not_found_exception() => Ok(None),
            Some(se) if se.is_repository_not_found_exception() => Err(Error::failure(format!(
                "ECR repository `{repository}` does not exist"
            ))
            .with_help("run `deployer up` (it creates the repository) or check the repository name and region")),
            _ => Err(Error::failure(format!(
                "ECR DescribeImages failed: {}",
                aws_sdk_ecr::error::DisplayErrorContext(&e)
            ))
            .with_help("check the AWS credentials and region (the caller needs ecr:DescribeImages)")),
        },
    }
}

/// Ask a (non-ECR) registry through the engine's distribution endpoint. Any failure (absent
/// tag, unreachable registry) means "not known to exist": the push reports real problems.
async fn registry_digest(docker: &Docker, reference: &str, ui: &Ui) -> Option<String> {
    match docker.inspect_registry_image(reference, None).await {
        Ok(found) => found.descriptor.digest,
        Err(e) => {
            ui.detail(format!("{reference} not found in the registry ({e})"));
            None
        }
    }
}

/// The tag the context gives today (as `publish` computes it after the prebuild): for tools
/// and tests that need to know an image's name without building it.
pub async fn content_tag(spec: &BuildSpec, base_dir: &Path, platform: Platform) -> Result<String> {
    let context = BuildContext::open(&base_dir.join(&spec.context), &spec.dockerfile)?;
    let mut req = PublishRequest::new(spec, base_dir, "unused");
    req.platform = platform;
    Ok(req.tag(&SourceIdentity::Context {
        sha256: context_sha256(&context).await?,
    }))
}

/// The SHA-256 of the context's deterministic tar: the image's content identity.
pub async fn context_sha256(context: &BuildContext) -> Result<String> {
    let ctx = context.clone();
    let stats = tokio::task::spawn_blocking(move || ctx.write_tar(std::io::sink()))
        .await
        .map_err(|e| Error::failure(format!("hashing the build context: {e}")).because(e))?
        .map_err(|e| Error::io("cannot read the build context", e))?;
    Ok(stats.sha256)
}

/// Labels that identify the sources: the provenance of the build (the commit that first built
/// this content). `created` is the commit time, not the wall clock: a
/// build-time label would give every rebuild a new config and digest (a redeploy with no
/// change, and a config upload every time), while the commit time keeps rebuilds identical.
/// (The content hash is in the tag, not in a label: a label would add a build step and change
/// the image whenever the content does, which the tag already says.)
fn labels(git: Option<&tag::GitState>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    if let Some(git) = git {
        labels.insert(
            "org.opencontainers.image.revision".into(),
            git.commit.clone(),
        );
        labels.insert(
            "org.opencontainers.image.created".into(),
            git.commit_time.clone(),
        );
        if let Some(source) = &git.source {
            labels.insert("org.opencontainers.image.source".into(), source.clone());
        }
        if let Some(dirty) = &git.dirty {
            labels.insert("dev.deployer.dirty".into(), dirty.clone());
        }
    }
    labels
}

/// ECR's repository name rule (also valid for any registry).
fn validate_repository(name: &str) -> Result<()> {
    let ok_chars = name.chars().all(|c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/')
    });
    let ok_ends = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok_chars && ok_ends && name.len() <= 256 {
        Ok(())
    } else {
        Err(
            Error::bad_input(format!("invalid repository name `{name}`"))
                .with_help("use lowercase letters, digits and . _ - / (e.g. `price-stream`)"),
        )
    }
}

/// Run the prebuild command (`sh -c`) in the config directory; its output is shown with `-v`
/// and, on failure, in the error.
async fn prebuild(
    command: &str,
    req: &PublishRequest<'_>,
    context_dir: &Path,
    ui: &Ui,
) -> Result<()> {
    let (base_dir, platform) = (req.base_dir, req.platform);
    let started = Instant::now();
    let spinner = ui.spinner(format!("prebuild: {command}"));
    let context_abs =
        std::path::absolute(context_dir).unwrap_or_else(|_| context_dir.to_path_buf());
    let mut cmd = tokio::process::Command::new("sh");
    for name in &req.hidden_env {
        cmd.env_remove(name);
    }
    let output = cmd
        .arg("-c")
        .arg(command)
        .current_dir(base_dir)
        .env("DEPLOYER_PLATFORM", platform.as_str())
        .env("DEPLOYER_RUST_TARGET", platform.rust_target())
        .env("DEPLOYER_CONTEXT", &context_abs)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| Error::io(format!("cannot run the prebuild command `{command}`"), e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        spinner.finish("prebuild failed");
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n    ");
        return Err(Error::failure(format!(
            "prebuild command `{command}` failed ({}):\n    {tail}",
            output.status
        ))
        .with_help("fix the prebuild step (`build.prebuild` in deployer.yaml) and retry"));
    }
    for line in text.lines() {
        ui.detail(format!("  {line}"));
    }
    spinner.finish(format!(
        "prebuild done in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn recipe_hash_separates_services_built_differently_from_one_commit() {
        let base = BuildSpec::default();
        let same = BuildSpec::default();
        assert_eq!(recipe_hash(&base), recipe_hash(&same));
        assert_eq!(recipe_hash(&base).len(), 8);
        let other_context = BuildSpec {
            context: "services/b".into(),
            ..BuildSpec::default()
        };
        let other_args = BuildSpec {
            args: BTreeMap::from([("SOURCE".to_string(), "b".to_string())]),
            ..BuildSpec::default()
        };
        assert_ne!(recipe_hash(&base), recipe_hash(&other_context));
        assert_ne!(recipe_hash(&base), recipe_hash(&other_args));
        assert_ne!(recipe_hash(&other_context), recipe_hash(&other_args));
    }

    use super::*;

    #[test]
    fn build_spec_defaults_and_strictness() {
        let spec: BuildSpec = serde_json::from_str(r#"{"context":"flows"}"#).expect("valid");
        assert_eq!(spec.dockerfile, PathBuf::from("Dockerfile"));
        assert_eq!(spec.tag, TagStyle::Short);
        let full: BuildSpec = serde_json::from_str(
            r#"{"context":".","args":{"A":"1"},"target":"rt","prebuild":"make","tag":"full"}"#,
        )
        .expect("valid");
        assert_eq!(full.tag, TagStyle::Full);
        assert!(serde_json::from_str::<BuildSpec>(r#"{"contxt":"x"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Platform::LinuxArm64).expect("json"),
            r#""linux/arm64""#
        );
    }

    #[test]
    fn repository_names() {
        assert!(validate_repository("price-stream").is_ok());
        assert!(validate_repository("team/app.v2").is_ok());
        assert!(validate_repository("Upper").is_err());
        assert!(validate_repository("-x").is_err());
        assert!(validate_repository("").is_err());
    }
}
