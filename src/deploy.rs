//! `up`, `redeploy` and `plan`: settings + live state -> stack specs -> apply (or plan) in dependency order.
//!
//!   registry ──> images (build + push) ─┐
//!   network ────────────────────────────┼──> secrets ──> per service: task definition ──> service stack ──> rollout
//!   cluster ────────────────────────────┘
//! The three stacks and the image build run concurrently; every service waits for all of them.

use crate::aws::{self, Clients, Identity};
use crate::cli::ImageFlags;
use crate::config::{Config, Loaded};
use crate::error::{Error, Result};
use crate::image::{self, Platform, PublishRequest, PublishedImage};
use crate::names::StackPart;
use crate::rollout::{taskdef, track};
use crate::stacks::specs::{
    NetworkOut, cluster_spec, network_out, network_spec, registry_spec, service_spec,
};
use crate::stacks::{
    self, Applied, ApplyAction, StackPlan, StackSpec, StackStatus, StatusExt, Wait,
};
use crate::ui::Ui;
use crate::{interrupt, secrets};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

pub struct Ctx<'a> {
    pub loaded: &'a Loaded,
    pub clients: &'a Clients,
    pub ui: Ui,
    pub wait: Wait,
    /// An interrupted rollout wait stops the deployment with a rollback (`--rollback-on-interrupt`).
    pub rollback_on_interrupt: bool,
}

pub fn platform(s: &crate::config::Service) -> Platform {
    match s.architecture {
        crate::config::Architecture::X86_64 => Platform::LinuxAmd64,
        crate::config::Architecture::Arm64 => Platform::LinuxArm64,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    pub service: String,
    pub image: String,
    pub task_definition_arn: String,
    pub revision: i32,
    /// A new task definition revision was registered.
    pub registered: bool,
    pub stack: ApplyAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<track::ServiceState>,
    /// The pipeline check (`deployment.verify`), when configured and a deployment ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::verify::Report>,
    #[serde(skip)]
    pub task_definition: Option<taskdef::TaskDef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub project: String,
    pub region: String,
    pub account: String,
    pub stacks: Vec<Applied>,
    pub images: Vec<ImageReport>,
    pub secrets: Vec<secrets::SecretOutcome>,
    pub services: Vec<ServiceReport>,
    /// True when nothing was created, updated or registered.
    pub unchanged: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub service: String,
    #[serde(flatten)]
    pub image: PublishedImage,
}

/// Build (and push) every service that has a `build:` section. Returns service -> image URI.
pub async fn build_images(
    c: &Config,
    base_dir: &Path,
    ecr: Option<&aws_sdk_ecr::Client>,
    flags: &ImageFlags,
    push: bool,
    ui: &Ui,
) -> Result<Vec<ImageReport>> {
    let mut out = Vec::new();
    for (name, s) in &c.services {
        let Some(spec) = &s.build else { continue };
        let mut req = PublishRequest::new(spec, base_dir, c.names().repository());
        req.platform = platform(s);
        req.registry_override = flags.registry.clone();
        req.require_clean = flags.require_clean;
        req.hidden_env = c
            .services
            .values()
            .flat_map(|s| s.secrets.iter().cloned())
            .collect();
        req.push = push;
        ui.step(format!("{name}: image ({})", req.platform));
        let image = image::publish(&req, ecr, ui).await?;
        out.push(ImageReport {
            service: name.clone(),
            image,
        });
    }
    Ok(out)
}

/// `up` applies every stack; `redeploy` only rolls images and services onto the infrastructure
/// an earlier `up` created (faster, and it cannot change the network or cluster by accident).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    Redeploy,
}

impl Mode {
    /// The command's name (for the deploy lock and messages).
    pub fn command(self) -> &'static str {
        match self {
            Mode::Up => "up",
            Mode::Redeploy => "redeploy",
        }
    }
}

/// For `redeploy`: an infrastructure stack must already exist, be healthy and be ours.
async fn existing(
    cfn: &aws_sdk_cloudformation::Client,
    spec: &StackSpec,
    project: &str,
    ui: &Ui,
) -> Result<Applied> {
    let fix = "run `deployer up` first: redeploy only rolls images and services onto existing infrastructure";
    let live = stacks::describe(cfn, &spec.name).await?.ok_or_else(|| {
        Error::bad_input(format!("stack {} does not exist", spec.name)).with_help(fix)
    })?;
    if !stacks::owned_by(&live.tags, project) {
        return Err(Error::bad_input(format!(
            "stack {} exists but is not tagged as the deployer's for project {project}",
            spec.name
        ))
        .with_help("pick another `project` name, or delete the foreign stack"));
    }
    let healthy = matches!(
        live.status,
        StackStatus::CreateComplete
            | StackStatus::UpdateComplete
            | StackStatus::UpdateRollbackComplete
            | StackStatus::ImportComplete
    );
    if !healthy {
        return Err(
            Error::failure(format!("stack {} is {}", spec.name, live.status)).with_help(fix),
        );
    }
    // A push can carry infrastructure changes (a template, a parameter): redeploy never applies
    // them, so it says so instead of leaving them pending unnoticed.
    if !stacks::is_current(cfn, spec, &live, ui).await? {
        return Err(Error::bad_input(format!(
            "stack {} has infrastructure changes pending (its template, parameters or tags differ from the config); redeploy does not apply them",
            spec.name
        ))
        .with_help("run `deployer up` to apply them (it also rolls the services)"));
    }
    Ok(Applied {
        stack: spec.name.clone(),
        action: ApplyAction::Unchanged,
        outputs: live.outputs,
        previous_parameters: live.parameters,
    })
}

/// Everything `up` (or `redeploy`) does, in order; see the module comment.
pub async fn up(ctx: &Ctx<'_>, flags: &ImageFlags, out_dir: &Path, mode: Mode) -> Result<UpReport> {
    let c = &ctx.loaded.config;
    let (cl, ui) = (&ctx.clients, &ctx.ui);
    let identity = aws::identity(&cl.sts).await?;
    ui.step(format!(
        "deploying {} to account {} in {} as {}",
        c.project, identity.account, cl.region, identity.arn
    ));
    // Everything knowable is checked before the first change (src/preflight.rs).
    preflight(ctx, &identity).await?;
    engine_if_building(c).await?;
    // Read every secret first: a missing one aborts before anything changes.
    let pending = secrets::preflight(&cl.ssm, c, &|k| std::env::var(k).ok()).await?;

    let lake = crate::lake::location(c, &identity.account, &cl.region);
    // Boxed: the joined stack and image futures are large (clippy::large_futures).
    let infra = Box::pin(infrastructure(ctx, flags, mode, &identity, lake.as_ref())).await?;
    let mut applied_stacks = infra.stacks;

    // Writing a changed secret is a change: take the deploy lock first (reads stay lock-free).
    let read_at = std::time::Instant::now();
    for p in &pending {
        if secrets::compare(&cl.ssm, p).await?.writes() {
            crate::lock::before_change(read_at).await?;
            break;
        }
    }
    let secret_outcomes = secrets::apply(&cl.ssm, &c.project, &pending, ui).await?;

    let sink = lake.as_ref().map(crate::lake::Location::sink_url);
    let shared = Shared {
        exec_role: &infra.exec_role,
        task_role: &infra.task_role,
        identity: &identity,
        net: &infra.net,
        cluster: &infra.cluster,
        sink_url: sink.as_deref(),
    };
    let (services, service_stacks) =
        deploy_services(ctx, &infra.images, &shared, &secret_outcomes).await?;
    applied_stacks.extend(service_stacks);
    let known: Vec<String> = applied_stacks.iter().map(|a| a.stack.clone()).collect();
    for orphan in stacks::other_service_stacks(&cl.cfn, &c.project, &known).await? {
        ui.warn(format!(
            "{orphan}: its service is no longer in {} but keeps running; delete the stack (or run `deployer destroy`) to stop it",
            ctx.loaded.path.display()
        ));
    }
    write_artifacts(out_dir, &services)?;
    let images = infra.images;
    let unchanged = applied_stacks
        .iter()
        .all(|a| a.action == ApplyAction::Unchanged)
        && services.iter().all(|s| !s.registered)
        && secret_outcomes.iter().all(|s| !s.action.writes())
        && images.iter().all(|i| i.image.skipped_push);
    Ok(UpReport {
        project: c.project.clone(),
        region: cl.region.clone(),
        account: identity.account,
        stacks: applied_stacks,
        images,
        secrets: secret_outcomes,
        services,
        unchanged,
    })
}

/// What the services are deployed onto.
struct Infra {
    /// Registry, network, cluster and data stacks, as applied (or found, for `redeploy`).
    stacks: Vec<Applied>,
    images: Vec<ImageReport>,
    net: NetworkOut,
    exec_role: String,
    task_role: String,
    cluster: String,
}

/// The registry (then the images), network, cluster and data stacks, side by side; every
/// failure among them is reported.
///
/// Kept whole: the four stacks are joined in one place, so every failure among them is reported
/// together.
async fn infrastructure(
    ctx: &Ctx<'_>,
    flags: &ImageFlags,
    mode: Mode,
    identity: &Identity,
    lake: Option<&crate::lake::Location>,
) -> Result<Infra> {
    let c = &ctx.loaded.config;
    let (cl, ui, wait) = (&ctx.clients, &ctx.ui, ctx.wait);
    let registry = registry_spec(c);
    let cluster = cluster_spec(
        c,
        &crate::preflight::extra_pull_repositories(c, identity.partition()),
        lake,
    );
    let network = network_spec(c);
    // The data stack makes the bucket, or adopts the one an earlier stack retained (a read;
    // a bucket of that name that is not ours is refused here, before any change).
    let data = match lake {
        Some(loc) if loc.managed => {
            let create = crate::lake::create_bucket(&cl.s3_data, &cl.cfn, c, loc).await?;
            crate::lake::data_spec(c, loc, create)
        }
        _ => None,
    };
    let project = c.project.as_str();
    let infra = |spec: &StackSpec| {
        let spec = spec.clone();
        async move {
            match mode {
                Mode::Up => stacks::apply(&cl.cfn, &spec, wait, ui).await,
                Mode::Redeploy => existing(&cl.cfn, &spec, project, ui).await,
            }
        }
    };
    let registry_and_images = async {
        let applied = infra(&registry).await?;
        let images = interrupt::or_interrupted(
            build_images(c, &ctx.loaded.dir, Some(&cl.ecr), flags, true, ui),
            "the image build",
            "the build was stopped; no service was changed",
        )
        .await?;
        Ok::<_, Error>((applied, images))
    };
    let optional = |spec: Option<StackSpec>| async move {
        match spec {
            Some(spec) => infra(&spec).await.map(Some),
            None => Ok(None),
        }
    };
    let joined = tokio::join!(
        registry_and_images,
        optional(network.clone()),
        infra(&cluster),
        optional(data)
    );
    // Concurrent steps can fail together: every failure is reported.
    let ((registry_applied, images), net, clu, dat) = match joined {
        (Ok(r), Ok(n), Ok(c), Ok(d)) => (r, n, c, d),
        (r, n, c, d) => {
            let errors = [r.err(), n.err(), c.err(), d.err()];
            return Err(Error::all(errors.into_iter().flatten().collect())
                .unwrap_or_else(|| Error::failure("the infrastructure steps failed")));
        }
    };
    let net_out = network_out(c, net.as_ref().map(|a| &a.outputs))?;
    let role = |k: &str| {
        clu.outputs
            .get(k)
            .cloned()
            .ok_or_else(|| Error::failure(format!("{} has no output {k}", cluster.name)))
    };
    let (exec_role, task_role) = (role("ExecutionRoleArn")?, role("TaskRoleArn")?);
    let cluster_name = c.names().live_cluster(Some(&clu.outputs));
    let mut stacks = vec![registry_applied];
    stacks.extend(net);
    stacks.push(clu);
    stacks.extend(dat);
    Ok(Infra {
        stacks,
        images,
        net: net_out,
        exec_role,
        task_role,
        cluster: cluster_name,
    })
}

/// Every service at once; every failure reported, not the first (each needs its own fix).
async fn deploy_services(
    ctx: &Ctx<'_>,
    images: &[ImageReport],
    shared: &Shared<'_>,
    secret_outcomes: &[secrets::SecretOutcome],
) -> Result<(Vec<ServiceReport>, Vec<Applied>)> {
    let c = &ctx.loaded.config;
    let image_for = |name: &str| -> Result<String> {
        if let Some(i) = images.iter().find(|i| i.service == name) {
            return Ok(i.image.image_uri.clone());
        }
        c.services[name]
            .image
            .clone()
            .ok_or_else(|| Error::bad_input(format!("services.{name}: no image")))
    };
    let deploys = c.services.keys().map(|name| {
        let image = image_for(name);
        // Tasks read secrets at start: a changed value needs new tasks even when the task
        // definition (which holds only the parameter ARN) is unchanged.
        let prefix = c.names().service_secrets_path(name);
        let secrets_changed = secret_outcomes.iter().any(|o| {
            o.parameter.starts_with(&prefix) && o.action == secrets::SecretAction::Updated
        });
        async move { Box::pin(deploy_service(ctx, name, &image?, shared, secrets_changed)).await }
    });
    let mut services = Vec::new();
    let mut stacks = Vec::new();
    let mut errors = Vec::new();
    for r in futures::future::join_all(deploys).await {
        match r {
            Ok((report, applied)) => {
                stacks.push(applied);
                services.push(report);
            }
            Err(e) => errors.push(e),
        }
    }
    match Error::all(errors) {
        Some(e) => Err(e),
        None => Ok((services, stacks)),
    }
}

/// The checks `plan` and `up` share: local (files, rendered task definitions) and read-only
/// AWS (prebuilt ECR images, an existing network); every problem reported at once, exit 2.
async fn preflight(ctx: &Ctx<'_>, identity: &Identity) -> Result<()> {
    let c = &ctx.loaded.config;
    let mut problems = crate::preflight::local(ctx.loaded);
    let has_prefect = std::env::var("PREFECT_API_URL").is_ok_and(|u| !u.trim().is_empty());
    if c.services.values().any(|s| s.deployment.verify.is_some()) && !has_prefect {
        problems.push("services.*.deployment.verify: reads the flow runs from Prefect, but PREFECT_API_URL is not set in the deployer's environment (add PREFECT_API_KEY for Prefect Cloud)".into());
    }
    problems.extend(
        crate::preflight::ecr_images(c, &ctx.clients.ecr, &identity.account, &ctx.clients.region)
            .await,
    );
    problems
        .extend(crate::preflight::existing_network(c, &ctx.clients.ec2, &ctx.clients.region).await);
    crate::preflight::refuse(ctx.loaded, &problems)
}

/// A service built from source needs the Docker engine: ask it before the first change
/// rather than after the registry stack exists.
async fn engine_if_building(c: &Config) -> Result<()> {
    if c.services.values().all(|s| s.build.is_none()) {
        return Ok(());
    }
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    match tokio::time::timeout(Duration::from_secs(5), image::build::connect()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Error::failure(format!("{}; nothing was changed", e.message())).with_help(
            e.help.unwrap_or_else(|| "start Docker or set DOCKER_HOST".into()),
        )),
        Err(_) => Err(Error::failure(format!(
            "the Docker engine at {host} (DOCKER_HOST) did not answer within 5 s; nothing was changed"
        ))
        .with_help("start Docker (`docker info` must work), set DOCKER_HOST, or deploy a prebuilt image with --image URI")),
    }
}

/// What every service deployment shares: roles, identity, network and cluster.
struct Shared<'a> {
    exec_role: &'a str,
    task_role: &'a str,
    identity: &'a Identity,
    net: &'a NetworkOut,
    cluster: &'a str,
    /// The data lake's `s3://bucket/prefix`, if any.
    sink_url: Option<&'a str>,
}

/// Kept whole: it reads in the order a service deploys (render, revision, stack, forced tasks,
/// rollout, verify), and its steps share the rollout deadline, log group and start time.
async fn deploy_service(
    ctx: &Ctx<'_>,
    name: &str,
    image: &str,
    shared: &Shared<'_>,
    secrets_changed: bool,
) -> Result<(ServiceReport, Applied)> {
    let Shared {
        exec_role,
        task_role,
        identity,
        net,
        cluster,
        sink_url,
    } = *shared;
    let c = &ctx.loaded.config;
    let (cl, ui) = (&ctx.clients, &ctx.ui);
    let svc = &c.services[name];
    let desired = taskdef::render(&taskdef::RenderInput {
        project: &c.project,
        service_name: name,
        service: svc,
        image,
        region: &cl.region,
        account: &identity.account,
        partition: identity.partition(),
        execution_role_arn: exec_role,
        task_role_arn: task_role,
        sink_url,
    });
    let (arn, revision, registered) = ensure_revision(ctx, name, &desired).await?;
    let spec = service_spec(c, name, &arn, net);
    // CloudFormation waits for the ECS service to stabilise during the stack update, so that
    // wait is the rollout: it gets the rollout's deadline.
    let rollout_wait = Wait {
        timeout: Duration::from_secs(svc.deployment.rollout_timeout),
        ..ctx.wait
    };
    let log_group = c.names().log_group(name);
    let logs = track::Logs {
        client: &cl.logs,
        group: &log_group,
    };
    // Deployments created from here on are this run's (src/rollout/track.rs).
    let mut since = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
    let applied = match stacks::apply(&cl.cfn, &spec, rollout_wait, ui).await {
        Ok(a) => a,
        Err(e) if e.code() == crate::error::ExitCode::RolledBack => {
            let stopped = track::stopped_section(&cl.ecs, cluster, name, &arn, Some(logs)).await;
            return Err(match stopped.strip_prefix("\n  ") {
                Some(section) => e.with_note(section),
                None => e,
            });
        }
        Err(e) => return Err(e),
    };
    // A capacity move (fargate <-> fargate_spot) updates the service without starting a
    // deployment in ECS, and tasks read secrets only at start: both need new tasks.
    let capacity_moved = applied.action == ApplyAction::Updated
        && applied.previous_parameters.get("CapacityProvider")
            != spec.parameters.get("CapacityProvider");
    let secret_only = applied.action == ApplyAction::Unchanged && secrets_changed;
    let mut deployment_id = None;
    if secret_only || capacity_moved {
        ui.step(format!(
            "{name}: {}; starting new tasks",
            if capacity_moved {
                "the capacity provider changed"
            } else {
                "a secret changed (tasks read it at start)"
            }
        ));
        (since, deployment_id) = force_new_deployment(ctx, cluster, name).await?;
    }
    let deployed = applied.action != ApplyAction::Unchanged || secret_only;
    let state = if !deployed {
        track::describe(&cl.ecs, cluster, name).await?
    } else {
        let follow = track::Follow {
            cluster,
            service: name,
            task_definition: &arn,
            since,
            deployment_id,
            rollback_on_interrupt: ctx.rollback_on_interrupt,
            logs: Some(logs),
        };
        Some(track::wait_deployed(&cl.ecs, &follow, rollout_wait, ui).await?)
    };
    let verify = match (&svc.deployment.verify, deployed) {
        (Some(v), true) => Some(verify_on_ecs(ctx, name, &desired.family, revision, v).await?),
        _ => None,
    };
    let report = ServiceReport {
        service: name.to_string(),
        image: image.to_string(),
        task_definition_arn: arn,
        revision,
        registered,
        stack: applied.action,
        state,
        verify,
        task_definition: Some(desired),
    };
    Ok((report, applied))
}

/// The live revision when it already is `desired`, else a newly registered one:
/// (ARN, revision, registered).
async fn ensure_revision(
    ctx: &Ctx<'_>,
    name: &str,
    desired: &taskdef::TaskDef,
) -> Result<(String, i32, bool)> {
    let (cl, ui) = (&ctx.clients, &ctx.ui);
    let current = |l: Option<taskdef::LiveTaskDef>| l.filter(|l| l.def == *desired);
    let read_at = std::time::Instant::now();
    let mut live = current(taskdef::latest(&cl.ecs, &desired.family).await?);
    // Registering is a change: take the deploy lock, then look again (a deploy that held the
    // lock meanwhile may have registered this very definition: no duplicate revision).
    if live.is_none() && crate::lock::before_change(read_at).await? {
        live = current(taskdef::latest(&cl.ecs, &desired.family).await?);
    }
    Ok(match live {
        Some(l) => {
            ui.detail(format!(
                "{name}: task definition {}:{} is current",
                desired.family, l.revision
            ));
            (l.arn, l.revision, false)
        }
        None => {
            let tags = stacks::project_tags(&ctx.loaded.config.project);
            let (arn, rev) = taskdef::register(&cl.ecs, desired, &tags).await?;
            ui.step(format!(
                "{name}: registered task definition {}:{rev}",
                desired.family
            ));
            (arn, rev, true)
        }
    })
}

/// New tasks without a new revision (UpdateService with forceNewDeployment): from when, and
/// the deployment ECS started, to follow.
async fn force_new_deployment(
    ctx: &Ctx<'_>,
    cluster: &str,
    name: &str,
) -> Result<(aws_smithy_types::DateTime, Option<String>)> {
    crate::lock::before_change(std::time::Instant::now()).await?;
    let since = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
    let out = ctx
        .clients
        .ecs
        .update_service()
        .cluster(cluster)
        .service(name)
        .force_new_deployment(true)
        .send()
        .await
        .map_err(|e| aws::failure(&format!("force a new deployment of {name}"), e))?;
    let deployment_id = out.service().and_then(|s| {
        s.deployments()
            .iter()
            .find(|d| d.status() == Some("PRIMARY"))
            .and_then(|d| d.id())
            .map(str::to_string)
    });
    Ok((since, deployment_id))
}

/// `deployment.verify` on ECS: the flow tags its runs with its task's family and
/// family:revision (task metadata endpoint, flows/src/identity.rs); on a bad verdict roll the
/// service back to the previous revision when asked.
async fn verify_on_ecs(
    ctx: &Ctx<'_>,
    name: &str,
    family: &str,
    revision: i32,
    v: &crate::config::Verify,
) -> Result<crate::verify::Report> {
    use crate::verify::{self, Verdict};
    let prefect = verify::Prefect::from_env(None)?;
    let rev = format!("{family}:{revision}");
    let (verdict, report) = verify::wait(&prefect, family, &rev, v, &ctx.ui).await;
    if verdict == Verdict::Passed {
        return Ok(report);
    }
    let mut back = None;
    if v.rollback && verdict == Verdict::Failed {
        ctx.ui.step(format!("{name}: verify failed; rolling back"));
        let refs = service_refs(&ctx.loaded.config, &ctx.clients.cfn, Some(name)).await?;
        if let Some(r) = refs.first() {
            let done =
                crate::rollout::rollback::rollback(ctx.clients, r, None, ctx.wait, &ctx.ui).await?;
            back = Some(crate::rollout::rollback::short(&done.to).to_string());
        }
    }
    Err(verify::error(name, verdict, &report, v, back.as_deref()))
}

/// `<out>/<service>/task-definition.json`: what was deployed, secrets as ARNs only.
/// The folder ignores itself for git (as cargo's `target/` does): artifacts written inside a
/// work tree must not make the next build's tree "dirty" and so give it a new image tag.
fn write_artifacts(out_dir: &Path, services: &[ServiceReport]) -> Result<()> {
    ignore_out_dir(out_dir)?;
    for s in services {
        let Some(td) = &s.task_definition else {
            continue;
        };
        let dir = out_dir.join(&s.service);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let json = serde_json::to_string_pretty(td).map_err(std::io::Error::other)?;
            std::fs::write(dir.join("task-definition.json"), json + "\n")
        };
        write().map_err(|e| {
            Error::io(format!("write {}/task-definition.json", dir.display()), e).with_help(
                "the deployment itself succeeded; pass --out-dir to a writable directory",
            )
        })?;
    }
    Ok(())
}

/// Make the artifacts folder ignore itself for git (see [`write_artifacts`]).
pub fn ignore_out_dir(out_dir: &Path) -> Result<()> {
    let ignore = out_dir.join(".gitignore");
    if ignore.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(out_dir)
        .and_then(|_| {
            std::fs::write(
                &ignore,
                "# written by deployer: artifacts, not sources\n*\n",
            )
        })
        .map_err(|e| {
            Error::io(format!("cannot write {}", ignore.display()), e).with_help(
                "the deployment itself succeeded; pass --out-dir to a writable directory",
            )
        })
}

/// One entry of `plan`'s output.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub project: String,
    pub stacks: Vec<StackPlan>,
    pub task_definitions: Vec<TaskDefPlan>,
    /// What `up` would do with each secret (never its value).
    pub secrets: Vec<secrets::SecretOutcome>,
    pub changes: bool,
}

/// What `up` does with a service's task definition. Serialised (and displayed) lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskDefAction {
    Register,
    Unchanged,
}

impl std::fmt::Display for TaskDefAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskDefAction::Register => "register",
            TaskDefAction::Unchanged => "unchanged",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskDefPlan {
    pub service: String,
    pub family: String,
    pub action: TaskDefAction,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<String>,
}

/// What `up` would do, without changing anything (change sets are created and deleted).
pub async fn plan(ctx: &Ctx<'_>) -> Result<PlanReport> {
    let c = &ctx.loaded.config;
    let (cl, wait) = (&ctx.clients, ctx.wait);
    let identity = aws::identity(&cl.sts).await?;
    preflight(ctx, &identity).await?;
    let mut specs = vec![registry_spec(c)];
    specs.extend(network_spec(c));
    let lake = crate::lake::location(c, &identity.account, &cl.region);
    specs.push(cluster_spec(
        c,
        &crate::preflight::extra_pull_repositories(c, identity.partition()),
        lake.as_ref(),
    ));
    if let Some(loc) = &lake
        && let Some(spec) = crate::lake::data_spec(c, loc, true)
    {
        specs.push(spec);
    }
    let plans =
        futures::future::join_all(specs.iter().map(|s| stacks::plan(&cl.cfn, s, wait))).await;
    let mut stack_plans = plans.into_iter().collect::<Result<Vec<_>>>()?;

    let cluster_live = stacks::describe(&cl.cfn, &c.names().stack(StackPart::Cluster)).await?;
    let net_live = match network_spec(c) {
        Some(s) => stacks::describe(&cl.cfn, &s.name).await?,
        None => None,
    };
    let sink = lake.as_ref().map(crate::lake::Location::sink_url);
    let live = LiveInfra {
        cluster: cluster_live.as_ref(),
        network: net_live.as_ref(),
        sink: sink.as_deref(),
    };
    let mut td_plans = Vec::new();
    for name in c.services.keys() {
        let (td_plan, stack_plan) = plan_service(ctx, name, &identity, &live).await?;
        td_plans.push(td_plan);
        stack_plans.push(stack_plan);
    }
    // Secrets: a missing value is bad input here too; a new or changed value is a change.
    let pending = secrets::preflight(&cl.ssm, c, &|k| std::env::var(k).ok()).await?;
    let mut secret_plans = Vec::new();
    for p in &pending {
        secret_plans.push(secrets::SecretOutcome {
            parameter: p.parameter.clone(),
            action: secrets::compare(&cl.ssm, p).await?,
        });
    }
    let changes = stack_plans.iter().any(StackPlan::has_changes)
        || td_plans
            .iter()
            .any(|t| t.action != TaskDefAction::Unchanged)
        || secret_plans.iter().any(|s| s.action.writes());
    Ok(PlanReport {
        project: c.project.clone(),
        stacks: stack_plans,
        task_definitions: td_plans,
        secrets: secret_plans,
        changes,
    })
}

/// What `plan` reads once and every service's plan shares.
struct LiveInfra<'a> {
    cluster: Option<&'a stacks::LiveStack>,
    network: Option<&'a stacks::LiveStack>,
    sink: Option<&'a str>,
}

/// One service: its task definition against the live revision, its stack through a change set.
///
/// Kept whole: the task definition and stack plans depend on each other (a new revision is a
/// change of the service).
async fn plan_service(
    ctx: &Ctx<'_>,
    name: &str,
    identity: &Identity,
    infra: &LiveInfra<'_>,
) -> Result<(TaskDefPlan, StackPlan)> {
    let c = &ctx.loaded.config;
    let (cl, wait) = (&ctx.clients, ctx.wait);
    let svc = &c.services[name];
    let (cluster_live, net_live, sink) = (infra.cluster, infra.network, infra.sink);
    let family = c.names().family(name);
    let live = taskdef::latest(&cl.ecs, &family).await?;
    let out = |k: &str| {
        cluster_live
            .as_ref()
            .and_then(|l| l.outputs.get(k).cloned())
            .unwrap_or_default()
    };
    // A service built from source keeps its live image in the plan: the tag is only known after the build.
    let image = match (&svc.image, &live) {
        (Some(i), _) => i.clone(),
        (None, Some(l)) => l
            .def
            .container_definitions
            .first()
            .map(|c| c.image.clone())
            .unwrap_or_default(),
        (None, None) => "(built at deploy time)".into(),
    };
    let desired = taskdef::render(&taskdef::RenderInput {
        project: &c.project,
        service_name: name,
        service: svc,
        image: &image,
        region: &cl.region,
        account: &identity.account,
        partition: identity.partition(),
        execution_role_arn: &out("ExecutionRoleArn"),
        task_role_arn: &out("TaskRoleArn"),
        sink_url: sink,
    });
    let differences = match &live {
        Some(l) => diff_json(&l.def, &desired),
        None => vec!["new family".into()],
    };
    let changed = !differences.is_empty();
    let td_plan = TaskDefPlan {
        service: name.to_string(),
        family,
        action: if changed {
            TaskDefAction::Register
        } else {
            TaskDefAction::Unchanged
        },
        differences,
    };
    let stack_name = c.names().stack(StackPart::Service(name));
    let service_live = stacks::describe(&cl.cfn, &stack_name).await?;
    let plan = match (&service_live, &live) {
        (Some(sl), Some(l))
            if sl.status.complete() && sl.status != StackStatus::RollbackComplete =>
        {
            let net = network_out(c, net_live.as_ref().map(|n| &n.outputs)).unwrap_or_default();
            // Plan against the live revision; a new revision shows as a change of the service.
            let current_arn = sl
                .parameters
                .get("TaskDefinitionArn")
                .cloned()
                .unwrap_or(l.arn.clone());
            let arn = if changed { current_arn } else { l.arn.clone() };
            let p = stacks::plan(&cl.cfn, &service_spec(c, name, &arn, &net), wait).await?;
            match (p, changed) {
                (StackPlan::NoChange { stack }, true) => StackPlan::Update {
                    stack,
                    changes: vec![stacks::ResourceChange {
                        action: "Modify".into(),
                        logical_id: "Service".into(),
                        resource_type: "AWS::ECS::Service".into(),
                        replacement: Some("False".into()),
                    }],
                },
                (p, _) => p,
            }
        }
        _ => {
            let spec = service_spec(c, name, "(new revision)", &NetworkOut::default());
            stacks::plan(&cl.cfn, &spec, wait).await?
        }
    };
    Ok((td_plan, plan))
}

/// Top-level JSON keys (and container fields) that differ, for a readable plan.
fn diff_json(live: &taskdef::TaskDef, desired: &taskdef::TaskDef) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(live).unwrap_or_default(),
        serde_json::to_value(desired).unwrap_or_default(),
    );
    let mut out = Vec::new();
    diff_values("", &a, &b, &mut out);
    out
}

fn diff_values(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_values(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y))
            if x.len() == y.len() && path == "containerDefinitions" =>
        {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                diff_values(&format!("{path}[{i}]"), u, v, out);
            }
        }
        _ if a != b => out.push(format!("{path}: {} -> {}", short(a), short(b))),
        _ => {}
    }
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}...", &s[..s.floor_char_boundary(77)])
    } else {
        s
    }
}

/// The services `rollback` acts on: the one named, or every configured service.
pub async fn service_refs(
    c: &Config,
    cfn: &aws_sdk_cloudformation::Client,
    only: Option<&str>,
) -> Result<Vec<crate::rollout::rollback::ServiceRef>> {
    if let Some(name) = only
        && !c.services.contains_key(name)
    {
        return Err(
            Error::bad_input(format!("no service named {name} in the config")).with_help(format!(
                "services: {}",
                c.services.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        );
    }
    let live = stacks::describe(cfn, &c.names().stack(StackPart::Cluster)).await?;
    let cluster = c.names().live_cluster(live.as_ref().map(|l| &l.outputs));
    Ok(c.services
        .keys()
        .filter(|k| only.is_none_or(|o| o == k.as_str()))
        .map(|name| crate::rollout::rollback::ServiceRef {
            service: name.clone(),
            stack: c.names().stack(StackPart::Service(name)),
            family: c.names().family(name),
            cluster: cluster.clone(),
            log_group: c.names().log_group(name),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::specs::tests::config;

    #[test]
    fn cpu_change_shows_in_task_definition_diff() {
        let c = config("");
        let input = |svc: &crate::config::Service| {
            taskdef::render(&taskdef::RenderInput {
                project: "demo",
                service_name: "web",
                service: svc,
                image: "i",
                region: "r",
                account: "a",
                partition: "aws",
                execution_role_arn: "e",
                task_role_arn: "t",
                sink_url: None,
            })
        };
        let mut bigger = c.services["web"].clone();
        bigger.cpu = 512;
        bigger.memory = 1024;
        let d = diff_json(&input(&c.services["web"]), &input(&bigger));
        assert_eq!(
            d,
            vec!["cpu: \"256\" -> \"512\"", "memory: \"512\" -> \"1024\""]
        );
    }
}
