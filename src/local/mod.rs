//! The local target: the same `deployer.yaml` run as containers on the local Docker engine,
//! with ECS's concepts mapped one to one (README "Local target"):
//!
//!   project            labels `dev.deployer.project/.service/.revision` on everything made here
//!   image              built by the same pipeline, kept in the engine (no push), skipped when present
//!   task definition    a container spec; its hash is the revision (src/local/spec.rs)
//!   service            `desired_count` containers, restarted by the engine once rolled
//!   rolling update     min/max percent, circuit breaker, timeout (src/local/roll.rs)
//!
//! `up` is the same pipeline as on AWS: config -> secrets preflight -> image -> render ->
//! compare -> roll -> summary; only the platform calls differ.

pub mod engine;
pub mod logs;
pub mod roll;
pub mod spec;
pub mod state;

use crate::cli::ImageFlags;
use crate::config::{Config, Loaded, LocalNetwork};
use crate::deploy::Mode;
use crate::error::{Error, Result};
use crate::image::{self, PublishRequest};
use crate::ui::Ui;
use engine::{Engine, Instance};
use roll::{Roll, RollReport};
use serde::Serialize;
use spec::{ContainerSpec, IDENTITY_VARS, LABEL_PROJECT};
use state::{Revision, State, StateDir};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `up`/`redeploy` did on the local target.
#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub project: String,
    pub target: &'static str,
    /// The engine (`DOCKER_HOST` or the default socket).
    pub engine: String,
    pub images: Vec<ImageReport>,
    pub services: Vec<ServiceReport>,
    /// The host folder of the file data lake, if one is mounted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lake_dir: Option<PathBuf>,
    /// Nothing was built, started or stopped.
    pub unchanged: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub service: String,
    pub image_ref: String,
    pub image_id: String,
    /// False when the engine already had the image (nothing was built).
    pub built: bool,
}

/// What happened to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Every wanted container already ran this revision: nothing started or stopped.
    Unchanged,
    /// Containers of this revision were started (and any others stopped).
    Rolled,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    pub service: String,
    pub revision: u32,
    pub spec_hash: String,
    pub image_ref: String,
    pub action: Action,
    /// The containers running the revision now.
    pub containers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roll: Option<RollReport>,
    /// The pipeline check (`deployment.verify`), when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::verify::Report>,
    #[serde(skip)]
    pub spec: ContainerSpec,
}

/// The secret values of every service, from the deployer's environment: a missing one is bad
/// input before anything starts (its name is given; a value never is).
pub fn secret_values(
    c: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    for (name, s) in &c.services {
        for secret in &s.secrets {
            match env(secret) {
                Some(v) => {
                    values.insert(secret.clone(), v);
                }
                None => missing.push(format!("{secret} (services.{name}.secrets)")),
            }
        }
    }
    if missing.is_empty() {
        return Ok(values);
    }
    Err(Error::bad_input(format!(
        "secret values missing from the environment: {}; nothing was started",
        missing.join(", ")
    ))
    .with_help("export each secret's value in the deployer's environment (the same names as on AWS), then retry"))
}

/// The host folder of the data lake, absolute; created and made writable by any user (the
/// image runs as a non-root user whose uid the host does not know).
fn lake_dir(loaded: &Loaded, create: bool) -> Result<Option<PathBuf>> {
    let Some(rel) = &loaded.config.local.lake_dir else {
        return Ok(None);
    };
    let dir = std::path::absolute(loaded.dir.join(rel)).unwrap_or_else(|_| loaded.dir.join(rel));
    if create {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)))
            .map_err(|e| {
                Error::io(
                    format!("cannot create the data lake folder {}", dir.display()),
                    e,
                )
                .with_help("set local.lake_dir to a writable folder")
            })?;
    }
    Ok(Some(dir))
}

/// `uid:gid` of the lake folder's owner, unless that is root (see `spec::RenderInput::user`).
fn lake_user(lake: Option<&PathBuf>) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(lake?).ok()?;
    (meta.uid() != 0).then(|| format!("{}:{}", meta.uid(), meta.gid()))
}

/// Everything one local command needs.
pub struct Local<'a> {
    pub loaded: &'a Loaded,
    pub ui: &'a Ui,
    pub state_dir: StateDir,
    pub wait_for_lock: Duration,
}

impl<'a> Local<'a> {
    pub fn new(loaded: &'a Loaded, ui: &'a Ui, wait_for_lock: Duration) -> Self {
        Self {
            state_dir: StateDir::new(&loaded.dir, &loaded.config.project),
            loaded,
            ui,
            wait_for_lock,
        }
    }

    fn config(&self) -> &Config {
        &self.loaded.config
    }

    /// `up` / `redeploy`: build, render, and roll every service whose revision changed.
    ///
    /// Kept whole: the local `up` mirrors deploy::up step by step (preflight, images, secrets,
    /// roll per service), the same order as AWS.
    pub async fn up(&self, flags: &ImageFlags, out_dir: &Path, mode: Mode) -> Result<UpReport> {
        let c = self.config();
        if mode == Mode::Redeploy && !self.state_dir.exists() {
            return Err(Error::bad_input(format!("{} has not been deployed to the local target", c.project))
                .with_help("run `deployer up --target local` first: redeploy rolls onto an existing deployment"));
        }
        crate::preflight::refuse(self.loaded, &crate::preflight::local(self.loaded))?;
        let secrets = secret_values(c, &|k| std::env::var(k).ok())?;
        let engine = Engine::connect().await?;
        self.check_names(&engine).await?;
        let _lock = self
            .state_dir
            .lock(mode.command(), self.wait_for_lock)
            .await?;
        let images = self.images(&engine, flags).await?;
        let lake = lake_dir(self.loaded, true)?;
        if c.local.network == LocalNetwork::Bridge && engine.ensure_network(&c.project).await? {
            self.ui
                .step(format!("created network {}", c.names().local_network()));
        }
        let key = self.state_dir.key()?;
        let mut state = self.state_dir.load()?;
        let mut targets = Vec::new();
        for (name, image) in &images {
            let spec = spec::render(
                c,
                &spec::RenderInput {
                    service: name,
                    image_id: &image.image_id,
                    image_ref: &image.image_ref,
                    lake_dir: lake.clone(),
                    secret_values: &secrets,
                    key: &key,
                    user: lake_user(lake.as_ref()),
                },
            );
            let svc = state.services.entry(name.clone()).or_default();
            let previous = svc.current.and_then(|n| svc.by_number(n)).cloned();
            let (target, _) = svc.revision_for(&spec);
            targets.push((name.clone(), target, previous));
        }
        // Kept before rolling: a crash mid-roll still knows the revisions involved.
        self.state_dir.save(&state)?;
        let env = |rev: &Revision, container: &str| container_env(c, rev, container, &secrets);
        let rolls = targets.iter().map(|(name, target, previous)| {
            self.service(&engine, name, target, previous.as_ref(), &env)
        });
        // The rolls undo themselves on an interrupt; recording what runs afterwards is part
        // of that (main waits for self-undoing steps up to its grace, not just its settle).
        let (results, noted) = crate::interrupt::self_undoing(async {
            let results = futures::future::join_all(rolls).await;
            // The current revision is what runs now (the target, or the previous one after
            // an undone roll or a verify rollback).
            let mut noted = Ok(());
            for name in c.services.keys() {
                noted = self.note_current(&engine, &mut state, name).await;
                if noted.is_err() {
                    break;
                }
            }
            (results, noted)
        })
        .await;
        noted?;
        let mut services = Vec::new();
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(report) => services.push(report),
                Err(e) => errors.push(e),
            }
        }
        self.state_dir.save(&state)?;
        crate::target::record(
            &self.loaded.dir,
            &c.project,
            crate::config::TargetKind::Local,
        )?;
        if let Some(first) = first_error(errors, self.ui) {
            return Err(first);
        }
        self.prune_images(&engine, &state).await;
        write_artifacts(out_dir, &services)?;
        let unchanged = services.iter().all(|s| s.action == Action::Unchanged)
            && images.values().all(|i| !i.built);
        Ok(UpReport {
            project: c.project.clone(),
            target: "local",
            engine: engine.host.clone(),
            images: images.into_values().collect(),
            services,
            lake_dir: lake,
            unchanged,
        })
    }

    /// Refuse (exit 2) before anything starts when a container name the roll may use belongs
    /// to a container the deployer did not create for this project.
    async fn check_names(&self, engine: &Engine) -> Result<()> {
        let c = self.config();
        let state = self.state_dir.load()?;
        let mut clashes = Vec::new();
        for (name, s) in &c.services {
            // The names a roll may use: a new revision's and the kept ones' (for a rollback).
            let kept: Vec<u32> = state
                .services
                .get(name)
                .map_or(vec![], |st| st.revisions.iter().map(|r| r.number).collect());
            let next = kept.iter().max().copied().unwrap_or(0) + 1;
            let (_, max_total) = roll::bounds(
                s.desired_count,
                s.deployment.min_healthy_percent,
                s.deployment.max_percent,
            );
            for rev in kept.into_iter().chain([next]) {
                for slot in 1..=max_total {
                    let container = c.names().local_container(name, rev, slot);
                    if let Some(labels) = engine.labels_of(&container).await?
                        && !(labels.get(LABEL_PROJECT) == Some(&c.project)
                            && labels.contains_key(spec::LABEL_SPEC))
                    {
                        clashes.push(container);
                    }
                }
            }
        }
        if clashes.is_empty() {
            return Ok(());
        }
        Err(Error::bad_input(format!(
            "container name(s) taken by containers the deployer did not create for {}: {}; nothing was started",
            c.project,
            clashes.join(", ")
        ))
        .with_help("rename or remove those containers, or choose another `project` name"))
    }

    /// Build (or find) each service's image in the local engine.
    async fn images(
        &self,
        engine: &Engine,
        flags: &ImageFlags,
    ) -> Result<BTreeMap<String, ImageReport>> {
        let c = self.config();
        let mut out = BTreeMap::new();
        for (name, s) in &c.services {
            let report = match (&s.build, &s.image) {
                (Some(spec), _) => {
                    let mut req =
                        PublishRequest::new(spec, &self.loaded.dir, c.names().repository());
                    req.platform = crate::deploy::platform(s);
                    req.require_clean = flags.require_clean;
                    req.push = false;
                    req.hidden_env = c
                        .services
                        .values()
                        .flat_map(|s| s.secrets.iter().cloned())
                        .collect();
                    req.labels =
                        BTreeMap::from([(spec::LABEL_IMAGE_OF.to_string(), c.project.clone())]);
                    self.ui.step(format!("{name}: image ({})", req.platform));
                    let published = crate::interrupt::or_interrupted(
                        image::publish(&req, None, self.ui),
                        "the image build",
                        "the build was stopped; nothing was started or stopped",
                    )
                    .await?;
                    let image_id = match published.image_id {
                        Some(id) => id,
                        None => engine
                            .image_id(&published.tagged_ref)
                            .await?
                            .ok_or_else(|| {
                                Error::failure(format!(
                                    "the engine has no image {} after the build",
                                    published.tagged_ref
                                ))
                            })?,
                    };
                    ImageReport {
                        service: name.clone(),
                        image_ref: published.tagged_ref,
                        image_id,
                        built: !published.skipped_push,
                    }
                }
                (None, Some(uri)) => {
                    let id = engine.image_id(uri).await?.ok_or_else(|| {
                        Error::failure(format!("services.{name}.image: {uri} is not in the local Docker engine"))
                            .with_help(format!("pull it first (`docker pull {uri}`), or give the service a `build:` section"))
                    })?;
                    ImageReport {
                        service: name.clone(),
                        image_ref: uri.clone(),
                        image_id: id,
                        built: false,
                    }
                }
                (None, None) => {
                    return Err(Error::bad_input(format!(
                        "services.{name}: no image source"
                    )));
                }
            };
            out.insert(name.clone(), report);
        }
        Ok(out)
    }

    /// One service: nothing to do when every wanted container runs the target revision;
    /// otherwise roll.
    async fn service(
        &self,
        engine: &Engine,
        name: &str,
        target: &Revision,
        previous: Option<&Revision>,
        env: &(dyn Fn(&Revision, &str) -> Result<Vec<String>> + Sync),
    ) -> Result<ServiceReport> {
        let c = self.config();
        let s = &c.services[name];
        let live = engine.instances(&c.project, Some(name)).await?;
        let settled = live.len() == s.desired_count as usize
            && live
                .iter()
                .all(|i| i.spec_hash == target.hash && i.running());
        let (roll, verify) = if settled {
            self.ui.step(format!(
                "{name}: revision {} is running ({} container(s)); nothing to change",
                target.number,
                live.len()
            ));
            (None, None)
        } else {
            let report = self.roll(engine, name, target, previous, env).await?;
            let verify = self.verify(engine, name, target, previous, env).await?;
            (Some(report), verify)
        };
        let containers = engine
            .instances(&c.project, Some(name))
            .await?
            .into_iter()
            .filter(|i| i.spec_hash == target.hash)
            .map(|i| i.name)
            .collect();
        Ok(ServiceReport {
            service: name.to_string(),
            revision: target.number,
            spec_hash: target.hash.clone(),
            image_ref: target.spec.image_ref.clone(),
            action: if roll.is_some() {
                Action::Rolled
            } else {
                Action::Unchanged
            },
            containers,
            roll,
            verify,
            spec: target.spec.clone(),
        })
    }

    /// Record as current the revision every running container of the service runs, if one.
    async fn note_current(&self, engine: &Engine, state: &mut State, name: &str) -> Result<()> {
        let live = engine.instances(&self.config().project, Some(name)).await?;
        let mut hashes = live
            .iter()
            .filter(|i| i.running())
            .map(|i| i.spec_hash.as_str());
        let Some(first) = hashes.next() else {
            return Ok(());
        };
        if hashes.all(|h| h == first)
            && let Some(svc) = state.services.get_mut(name)
            && let Some(n) = svc.by_hash(first).map(|r| r.number)
        {
            svc.current = Some(n);
        }
        Ok(())
    }

    /// Roll one service to `target` (src/local/roll.rs).
    async fn roll(
        &self,
        engine: &Engine,
        name: &str,
        target: &Revision,
        previous: Option<&Revision>,
        env: &(dyn Fn(&Revision, &str) -> Result<Vec<String>> + Sync),
    ) -> Result<RollReport> {
        let c = self.config();
        let s = &c.services[name];
        self.ui.step(format!(
            "{name}: rolling to revision {} ({} container(s))",
            target.number, s.desired_count
        ));
        let d = &s.deployment;
        let report = Roll {
            engine,
            project: &c.project,
            service: name,
            target,
            previous,
            desired: s.desired_count,
            min_healthy_percent: d.min_healthy_percent,
            max_percent: d.max_percent,
            circuit_breaker: d.circuit_breaker,
            timeout: Duration::from_secs(d.rollout_timeout),
            env,
            ui: self.ui,
        }
        .run()
        .await?;
        self.ui.step(format!(
            "{name}: revision {} rolled out in {:.1}s",
            target.number, report.seconds
        ));
        Ok(report)
    }

    /// `deployment.verify`: wait for the new revision's own flow runs; on a bad verdict roll
    /// back to `previous` when asked to.
    async fn verify(
        &self,
        engine: &Engine,
        name: &str,
        target: &Revision,
        previous: Option<&Revision>,
        env: &(dyn Fn(&Revision, &str) -> Result<Vec<String>> + Sync),
    ) -> Result<Option<crate::verify::Report>> {
        let c = self.config();
        let Some(v) = &c.services[name].deployment.verify else {
            return Ok(None);
        };
        let prefect = crate::verify::Prefect::from_env(
            target
                .spec
                .environment
                .get("PREFECT_API_URL")
                .map(String::as_str),
        )?;
        let service = c.names().family(name);
        let (verdict, report) =
            crate::verify::wait(&prefect, &service, &target.hash, v, self.ui).await;
        if verdict == crate::verify::Verdict::Passed {
            return Ok(Some(report));
        }
        let back = previous.filter(|p| {
            v.rollback && p.hash != target.hash && verdict == crate::verify::Verdict::Failed
        });
        if let Some(prev) = back {
            self.ui.step(format!(
                "{name}: verify failed; rolling back to revision {}",
                prev.number
            ));
            self.roll(engine, name, prev, Some(target), env).await?;
        }
        Err(crate::verify::error(
            &service,
            verdict,
            &report,
            v,
            back.map(|p| p.number.to_string()).as_deref(),
        ))
    }

    /// Remove images built for the project that no kept revision uses any more.
    async fn prune_images(&self, engine: &Engine, state: &State) {
        let kept: std::collections::BTreeSet<&str> = state
            .services
            .values()
            .flat_map(|s| s.revisions.iter().map(|r| r.spec.image_id.as_str()))
            .collect();
        let Ok(ids) = engine.project_images(&self.config().project).await else {
            return;
        };
        for id in ids.iter().filter(|id| !kept.contains(id.as_str())) {
            if let Ok(true) = engine.remove_image(id).await {
                self.ui
                    .detail(format!("removed image {id} (no kept revision uses it)"));
            }
        }
    }
}

/// The full environment of one container: the spec's values, the secrets' values, and the
/// deployment identity the flow tags its runs with.
pub fn container_env(
    c: &Config,
    rev: &Revision,
    container: &str,
    secrets: &BTreeMap<String, String>,
) -> Result<Vec<String>> {
    let mut env: Vec<String> = rev
        .spec
        .environment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for name in rev.spec.secrets.keys() {
        let value = secrets
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .ok_or_else(|| {
                Error::bad_input(format!(
                    "secret {name} (revision {}) has no value in the environment",
                    rev.number
                ))
                .with_help("export it in the deployer's environment, then retry")
            })?;
        env.push(format!("{name}={value}"));
    }
    let identity = [
        c.names().family(&rev.spec.service),
        rev.hash.clone(),
        rev.spec.image_id.clone(),
        container.to_string(),
    ];
    env.extend(
        IDENTITY_VARS
            .iter()
            .zip(identity)
            .map(|(k, v)| format!("{k}={v}")),
    );
    // The bundled flow ends its shutdown flush before the SIGKILL that follows SIGTERM by
    // this much (its default is ECS's 30 s); the user's own value wins.
    if !rev.spec.environment.contains_key("STOP_TIMEOUT_SECONDS") {
        env.push(format!("STOP_TIMEOUT_SECONDS={}", rev.spec.stop_timeout));
    }
    Ok(env)
}

/// Several services can fail together: show every failure, return the first.
pub fn first_error(errors: Vec<Error>, ui: &Ui) -> Option<Error> {
    let mut it = errors.into_iter();
    let first = it.next()?;
    for e in it {
        ui.error(&e);
    }
    Some(first)
}

/// `<out>/<service>/container-spec.json`: what runs, secrets as names (and keyed hashes) only.
fn write_artifacts(out_dir: &Path, services: &[ServiceReport]) -> Result<()> {
    for s in services {
        let dir = out_dir.join(&s.service);
        let json = serde_json::to_string_pretty(&s.spec).unwrap_or_default();
        std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(dir.join("container-spec.json"), json + "\n"))
            .map_err(|e| {
                Error::io(format!("write {}/container-spec.json", dir.display()), e).with_help(
                    "the deployment itself succeeded; pass --out-dir to a writable directory",
                )
            })?;
    }
    crate::deploy::ignore_out_dir(out_dir)
}

/// Per service, what runs (status).
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub project: String,
    pub target: &'static str,
    pub engine: String,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub service: String,
    pub desired: u32,
    pub running: u32,
    /// The revision the last finished roll left (state file).
    pub revision: Option<u32>,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerStatus {
    pub name: String,
    pub revision: u32,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    pub restarts: i64,
    pub image: String,
}

impl Local<'_> {
    /// What of the project runs now (best effort, for failure reports).
    pub async fn exists_now(&self) -> Vec<String> {
        let Ok(engine) = Engine::connect().await else {
            return vec!["unknown (the Docker engine did not answer)".into()];
        };
        match engine.instances(&self.config().project, None).await {
            Ok(all) => all
                .iter()
                .map(|i| {
                    format!(
                        "container {} (revision {}, {})",
                        i.name,
                        i.revision,
                        i.describe()
                    )
                })
                .collect(),
            Err(e) => vec![format!("unknown ({e})")],
        }
    }

    pub async fn status(&self) -> Result<StatusReport> {
        let c = self.config();
        let engine = Engine::connect().await?;
        let state = self.state_dir.load()?;
        let all = engine.instances(&c.project, None).await?;
        let mut names: Vec<String> = c.services.keys().cloned().collect();
        for i in &all {
            if !names.contains(&i.service) {
                names.push(i.service.clone());
            }
        }
        let services = names
            .into_iter()
            .map(|name| {
                let mine: Vec<&Instance> = all.iter().filter(|i| i.service == name).collect();
                ServiceStatus {
                    desired: c.services.get(&name).map_or(0, |s| s.desired_count),
                    running: u32::try_from(mine.iter().filter(|i| i.running()).count())
                        .unwrap_or(u32::MAX),
                    revision: state.services.get(&name).and_then(|s| s.current),
                    containers: mine
                        .iter()
                        .map(|i| ContainerStatus {
                            name: i.name.clone(),
                            revision: i.revision,
                            state: i.status.to_string(),
                            health: i.health.map(|h| h.to_string()),
                            restarts: i.restart_count,
                            // The tag the revision was built as, when the state still knows it.
                            image: state
                                .services
                                .get(&i.service)
                                .and_then(|st| st.by_hash(&i.spec_hash))
                                .map_or_else(|| i.image.clone(), |r| r.spec.image_ref.clone()),
                        })
                        .collect(),
                    service: name,
                }
            })
            .collect();
        Ok(StatusReport {
            project: c.project.clone(),
            target: "local",
            engine: engine.host.clone(),
            services,
        })
    }
}

/// What `destroy` removed on the local target.
#[derive(Debug, Clone, Serialize)]
pub struct DestroyReport {
    pub project: String,
    pub target: &'static str,
    pub containers: Vec<roll::Stopped>,
    pub network_removed: bool,
    pub images_removed: u32,
    pub images_kept: bool,
    /// The data lake folder, which `destroy` keeps unless `--delete-data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lake_dir: Option<PathBuf>,
    pub lake_deleted: bool,
    /// There was nothing of the project to delete.
    pub nothing: bool,
}

impl Local<'_> {
    /// Stop (gracefully) and remove the project's containers, its network, its images (unless
    /// `keep_images`) and its state; the data lake folder stays.
    ///
    /// Kept whole: it lists everything first (the confirmation shows it), then removes it in
    /// order.
    pub async fn destroy(
        &self,
        keep_images: bool,
        delete_data: bool,
        confirm: impl FnOnce(&[String]) -> Result<()>,
    ) -> Result<DestroyReport> {
        let c = self.config();
        let engine = Engine::connect().await?;
        let all = engine.instances(&c.project, None).await?;
        let images = if keep_images {
            Vec::new()
        } else {
            engine.project_images(&c.project).await?
        };
        let network = engine
            .network_labels(&c.names().local_network())
            .await?
            .is_some_and(|l| l.get(LABEL_PROJECT) == Some(&c.project));
        let lake = lake_dir(self.loaded, false)?;
        let drop_lake = lake.clone().filter(|d| delete_data && d.exists());
        let nothing = all.is_empty()
            && images.is_empty()
            && !network
            && !self.state_dir.exists()
            && drop_lake.is_none();
        if nothing {
            crate::target::clear(&self.loaded.dir, &c.project);
            return Ok(DestroyReport {
                project: c.project.clone(),
                target: "local",
                containers: vec![],
                network_removed: false,
                images_removed: 0,
                images_kept: keep_images,
                lake_dir: lake,
                lake_deleted: false,
                nothing,
            });
        }
        let mut what: Vec<String> = all
            .iter()
            .map(|i| format!("container {} (revision {})", i.name, i.revision))
            .collect();
        if network {
            what.push(format!("network {}", c.names().local_network()));
        }
        what.extend(images.iter().map(|i| format!("image {i}")));
        what.push(format!("state {}", self.state_dir.path.display()));
        if let Some(d) = &drop_lake {
            what.push(format!(
                "the data lake folder {} and everything in it",
                d.display()
            ));
        }
        confirm(&what)?;
        let _lock = self.state_dir.lock("destroy", self.wait_for_lock).await?;
        let containers = self.stop_and_remove(&engine, &all).await?;
        let network_removed = engine.remove_network(&c.project).await?;
        let mut images_removed = 0;
        for id in &images {
            images_removed += u32::from(engine.remove_image(id).await?);
        }
        self.state_dir.remove()?;
        crate::target::clear(&self.loaded.dir, &c.project);
        if let Some(d) = &drop_lake {
            std::fs::remove_dir_all(d).map_err(|e| {
                Error::io(format!("cannot delete the data lake folder {}", d.display()), e)
                    .with_help("its files may belong to the container's user: delete them with the same rights")
            })?;
        }
        Ok(DestroyReport {
            project: c.project.clone(),
            target: "local",
            containers,
            network_removed,
            images_removed,
            images_kept: keep_images,
            lake_dir: lake,
            lake_deleted: drop_lake.is_some(),
            nothing,
        })
    }

    /// Stop (SIGTERM, then SIGKILL after the service's stop timeout) and remove every
    /// container, all at once.
    async fn stop_and_remove(
        &self,
        engine: &Engine,
        all: &[Instance],
    ) -> Result<Vec<roll::Stopped>> {
        let c = self.config();
        let stops = all.iter().map(|i| {
            let timeout = Duration::from_secs(u64::from(
                c.services.get(&i.service).map_or(30, |s| s.stop_timeout),
            ));
            async move {
                self.ui.step(format!(
                    "stopping {} (SIGTERM, then SIGKILL after {} s)",
                    i.name,
                    timeout.as_secs()
                ));
                let code = if i.running() {
                    engine.stop(&i.name, timeout).await?
                } else {
                    i.exit_code
                };
                engine.remove(&i.name).await?;
                Ok::<_, Error>(roll::Stopped {
                    container: i.name.clone(),
                    revision: i.revision,
                    exit_code: code,
                })
            }
        });
        futures::future::join_all(stops).await.into_iter().collect()
    }

    /// Put services back on the previous (or a given) kept revision, rolled like any other.
    pub async fn rollback(
        &self,
        only: Option<&str>,
        to: Option<u32>,
    ) -> Result<Vec<(String, u32, u32)>> {
        let c = self.config();
        if !self.state_dir.exists() {
            return Err(Error::bad_input(format!(
                "{} has not been deployed to the local target",
                c.project
            ))
            .with_help("run `deployer up --target local` first"));
        }
        let engine = Engine::connect().await?;
        let _lock = self.state_dir.lock("rollback", self.wait_for_lock).await?;
        let mut state = self.state_dir.load()?;
        let secrets = secret_values(c, &|k| std::env::var(k).ok())?;
        let env = |rev: &Revision, container: &str| container_env(c, rev, container, &secrets);
        let mut done = Vec::new();
        for name in c
            .services
            .keys()
            .filter(|k| only.is_none_or(|o| o == k.as_str()))
        {
            let svc = state.services.get(name).cloned().unwrap_or_default();
            let current = svc.current.and_then(|n| svc.by_number(n)).ok_or_else(|| {
                Error::bad_input(format!("{name}: no finished roll to go back from"))
            })?;
            let target = match to {
                Some(n) => svc.by_number(n).ok_or_else(|| {
                    Error::bad_input(format!(
                        "{name}: revision {n} is not kept (kept: {})",
                        svc.revisions
                            .iter()
                            .map(|r| r.number.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?,
                None => svc.previous(current.number).ok_or_else(|| {
                    Error::bad_input(format!(
                        "{name}: no kept revision older than {}",
                        current.number
                    ))
                })?,
            };
            if engine.image_id(&target.spec.image_id).await?.is_none() {
                return Err(Error::failure(format!(
                    "{name}: the image of revision {} ({}) is no longer in the engine",
                    target.number, target.spec.image_ref
                ))
                .with_help("rebuild it with `deployer up` on that commit"));
            }
            self.service(&engine, name, target, Some(current), &env)
                .await?;
            if let Some(s) = state.services.get_mut(name) {
                s.current = Some(target.number);
            }
            self.state_dir.save(&state)?;
            done.push((name.clone(), current.number, target.number));
        }
        if done.is_empty() {
            return Err(Error::bad_input(format!(
                "no service named {} in the config",
                only.unwrap_or_default()
            )));
        }
        Ok(done)
    }
}

/// What `up` would do on the local target, per service.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub project: String,
    pub target: &'static str,
    pub services: Vec<ServicePlan>,
    pub changes: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServicePlan {
    pub service: String,
    /// The revision running now, if any.
    pub current: Option<u32>,
    pub action: PlanAction,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanAction {
    /// No container yet: the first revision starts.
    Create,
    /// A new revision rolls out.
    Roll,
    /// The containers run the revision the config describes, at the desired count.
    Unchanged,
    /// Same revision, another container count.
    Scale,
}

impl Local<'_> {
    /// Render every service against what runs. A service built from source keeps its running
    /// image in the comparison: the image is only known after the build (as on AWS).
    pub async fn plan(&self) -> Result<PlanReport> {
        let c = self.config();
        crate::preflight::refuse(self.loaded, &crate::preflight::local(self.loaded))?;
        let secrets = secret_values(c, &|k| std::env::var(k).ok())?;
        let engine = Engine::connect().await?;
        let state = self.state_dir.load()?;
        let key = if self.state_dir.exists() {
            self.state_dir.key()?
        } else {
            Vec::new()
        };
        let lake = lake_dir(self.loaded, false)?;
        let mut services = Vec::new();
        for (name, s) in &c.services {
            let live = engine.instances(&c.project, Some(name)).await?;
            let svc = state.services.get(name);
            let current = svc.and_then(|st| st.current.and_then(|n| st.by_number(n)));
            let (image_id, image_ref) = match (&s.image, current) {
                (Some(uri), _) => (
                    engine.image_id(uri).await?.unwrap_or_else(|| uri.clone()),
                    uri.clone(),
                ),
                (None, Some(cur)) => (cur.spec.image_id.clone(), cur.spec.image_ref.clone()),
                (None, None) => (
                    "(built at deploy time)".into(),
                    "(built at deploy time)".into(),
                ),
            };
            let desired = spec::render(
                c,
                &spec::RenderInput {
                    service: name,
                    image_id: &image_id,
                    image_ref: &image_ref,
                    lake_dir: lake.clone(),
                    secret_values: &secrets,
                    key: &key,
                    user: lake_user(lake.as_ref()),
                },
            );
            let (action, differences) = match current {
                None => (PlanAction::Create, vec!["new service".to_string()]),
                Some(cur) => {
                    let d = spec::diff(&cur.spec, &desired);
                    let at_count = live
                        .iter()
                        .filter(|i| i.spec_hash == cur.hash && i.running())
                        .count()
                        == s.desired_count as usize
                        && live.len() == s.desired_count as usize;
                    match (d.is_empty(), at_count) {
                        (false, _) => (PlanAction::Roll, d),
                        (true, true) => (PlanAction::Unchanged, d),
                        (true, false) => (
                            PlanAction::Scale,
                            vec![format!("containers: {} -> {}", live.len(), s.desired_count)],
                        ),
                    }
                }
            };
            services.push(ServicePlan {
                service: name.clone(),
                current: current.map(|r| r.number),
                action,
                differences,
            });
        }
        let changes = services.iter().any(|s| s.action != PlanAction::Unchanged);
        Ok(PlanReport {
            project: c.project.clone(),
            target: "local",
            services,
            changes,
        })
    }
}
