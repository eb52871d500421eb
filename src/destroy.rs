//! `destroy`: services -> task definitions -> cluster -> network -> ECR images and repository
//! -> SSM parameters. Only what carries the deployer's tags for this project; anything else
//! with a colliding name is refused before a single deletion.

use crate::aws::Clients;
use crate::aws::Context;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::names::StackPart;
use crate::secrets;
use crate::stacks::specs::network_spec;
use crate::stacks::{self, Wait};
use crate::status::stack_names;
use crate::ui::Ui;
use aws_sdk_ecr::types::ImageIdentifier;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Default)]
pub struct DestroyReport {
    pub project: String,
    pub deleted_stacks: Vec<String>,
    pub deregistered_task_definitions: u32,
    pub deleted_images: u32,
    pub deleted_parameters: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deleted_log_groups: Vec<String>,
    /// The data lake bucket: kept (the default) or deleted (`--delete-data`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_lake: Option<crate::lake::Kept>,
    /// Nothing of the project existed.
    pub nothing: bool,
    /// What is left when a step failed (empty on success).
    pub remaining: Vec<String>,
}

/// Stacks of this project that exist, after checking every one is ours.
async fn owned_stacks(c: &Config, cl: &Clients) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut foreign = Vec::new();
    for name in stack_names(c) {
        if let Some(live) = stacks::describe(&cl.cfn, &name).await? {
            if stacks::owned_by(&live.tags, &c.project) {
                found.push(name);
            } else {
                foreign.push(name);
            }
        }
    }
    // Services removed from the config since they were deployed are still ours to delete.
    let others = stacks::other_service_stacks(&cl.cfn, &c.project, &found).await?;
    found.extend(others);
    if !foreign.is_empty() {
        return Err(Error::failure(format!(
            "refusing to destroy: stack(s) {} lack the tags managed-by=deployer, project={}",
            foreign.join(", "),
            c.project
        ))
        .with_help("these were not created by the deployer for this project; delete them yourself if intended"));
    }
    Ok(found)
}

/// `delete_data`: also empty and delete the data lake bucket the deployer made (never a
/// bucket it did not make). Without it the bucket and every object in it stay.
pub async fn destroy(
    c: &Config,
    cl: &Clients,
    wait: Wait,
    ui: &Ui,
    delete_data: bool,
    confirm: impl FnOnce(&[String]) -> Result<()>,
) -> Result<DestroyReport> {
    let existing = owned_stacks(c, cl).await?;
    let parameters = secrets::owned_parameters(&cl.ssm, &c.project).await?;
    let lake = match &c.data_lake {
        Some(_) => {
            let id = crate::aws::identity(&cl.sts).await?;
            crate::lake::location(c, &id.account, &cl.region)
        }
        None => None,
    };
    if delete_data && lake.as_ref().is_some_and(|l| !l.managed) {
        return Err(Error::bad_input(
            "--delete-data deletes only a bucket the deployer made (data_lake.create: true); this project writes to an existing bucket, which destroy never touches",
        )
        .with_help("delete that bucket's data yourself if you mean to"));
    }
    let objects = match lake.as_ref().filter(|l| l.managed) {
        Some(l) => crate::lake::count_objects(&cl.s3_data, &l.bucket).await?,
        None => None,
    };
    let mut what: Vec<String> = existing.clone();
    what.extend(parameters.iter().map(|p| format!("SSM parameter {p}")));
    if let (true, Some(l), Some(n)) = (delete_data, &lake, objects) {
        what.push(format!(
            "the data lake bucket {} and its {n} object(s), every version",
            l.bucket
        ));
    }
    let mut report = DestroyReport {
        project: c.project.clone(),
        ..Default::default()
    };
    if let (Some(l), Some(n)) = (&lake, objects) {
        report.data_lake = Some(crate::lake::Kept {
            bucket: l.bucket.clone(),
            objects: n,
            deleted: false,
        });
    }
    if what.is_empty() {
        report.nothing = true;
        return Ok(report);
    }
    confirm(&what)?;
    let result = run(c, cl, wait, ui, &existing, &parameters, &mut report).await;
    let result = match (result, delete_data, &mut report.data_lake) {
        (Ok(()), true, Some(kept)) => crate::lake::delete_bucket(&cl.s3_data, &kept.bucket, ui)
            .await
            .map(|_| kept.deleted = true),
        (r, _, _) => r,
    };
    if let Err(e) = result {
        report.remaining = remaining(c, cl).await;
        let left = if report.remaining.is_empty() {
            "nothing".into()
        } else {
            report.remaining.join(", ")
        };
        let help = e
            .help
            .clone()
            .unwrap_or_else(|| "fix the cause and run `deployer destroy` again".into());
        return Err(e
            .with_note(format!("still present: {left}"))
            .with_help(help));
    }
    Ok(report)
}

/// Kept whole: the numbered teardown order below is the point of the function.
async fn run(
    c: &Config,
    cl: &Clients,
    wait: Wait,
    ui: &Ui,
    existing: &[String],
    parameters: &[String],
    report: &mut DestroyReport,
) -> Result<()> {
    let has = |n: &str| existing.iter().any(|e| e == n);
    // 1. Services, all at once.
    let svc_prefix = c.names().service_stack_prefix();
    let services: Vec<String> = existing
        .iter()
        .filter(|n| n.starts_with(&svc_prefix))
        .cloned()
        .collect();
    let results = futures::future::join_all(
        services
            .iter()
            .map(|n| stacks::delete(&cl.cfn, n, wait, ui)),
    )
    .await;
    // Every failure is reported (each stack needs its own look), after what did go is noted.
    let mut errors = Vec::new();
    for (n, r) in services.iter().zip(results) {
        match r {
            Ok(()) => report.deleted_stacks.push(n.clone()),
            Err(e) => errors.push(e),
        }
    }
    if let Some(e) = Error::all(errors) {
        return Err(e);
    }
    // 2. Task definition revisions the deployer registered.
    let mut families: Vec<String> = c.services.keys().map(|s| c.names().family(s)).collect();
    families.extend(
        services
            .iter()
            .filter_map(|n| n.strip_prefix(&svc_prefix))
            .map(|s| c.names().family(s)),
    );
    families.sort();
    families.dedup();
    for family in &families {
        report.deregistered_task_definitions += deregister_family(cl, family, ui).await?;
    }
    // 3. The cluster once its tasks have stopped (a deleted service's tasks take up to their
    //    stop timeout to go), then the network (Fargate ENIs take minutes to release).
    let cluster_stack = c.names().stack(StackPart::Cluster);
    if has(&cluster_stack) {
        delete_cluster(c, cl, wait, ui, cluster_stack, report).await?;
    }
    if let Some(network) = network_spec(c).map(|s| s.name).filter(|n| has(n)) {
        delete_network(&cl.cfn, &network, wait, ui, ENI_RETRY).await?;
        report.deleted_stacks.push(network);
    }
    // 4. Images, then the repository's stack (CloudFormation cannot delete a non-empty repository).
    let registry = c.names().stack(StackPart::Registry);
    if has(&registry) {
        report.deleted_images = delete_images(&cl.ecr, &c.names().repository(), ui).await?;
        stacks::delete(&cl.cfn, &registry, wait, ui).await?;
        report.deleted_stacks.push(registry);
    }
    // 5. The data stack: its Glue table goes, its bucket stays (DeletionPolicy Retain).
    let data = c.names().stack(StackPart::Data);
    if has(&data) {
        stacks::delete(&cl.cfn, &data, wait, ui).await?;
        report.deleted_stacks.push(data);
    }
    // 6. The secrets it stored.
    if !parameters.is_empty() {
        secrets::delete(&cl.ssm, parameters).await?;
        ui.step(format!(
            "deleted {} SSM parameter(s) under {}",
            parameters.len(),
            c.names().secrets_path()
        ));
        report.deleted_parameters = parameters.to_vec();
    }
    Ok(())
}

/// The cluster stack once the cluster runs no task (a deleted service's tasks take up to
/// their stop timeout to go), and the Container Insights log group it wrote to.
async fn delete_cluster(
    c: &Config,
    cl: &Clients,
    wait: Wait,
    ui: &Ui,
    cluster_stack: String,
    report: &mut DestroyReport,
) -> Result<()> {
    let live = stacks::describe(&cl.cfn, &cluster_stack).await?;
    let cluster = c.names().live_cluster(live.as_ref().map(|l| &l.outputs));
    let longest = c
        .services
        .values()
        .map(|s| s.stop_timeout)
        .max()
        .unwrap_or(120);
    let bound = Duration::from_secs(u64::from(longest) + 60).min(wait.timeout);
    wait_tasks_stopped(&cl.ecs, &cluster, bound, TASK_POLL, ui).await?;
    stacks::delete(&cl.cfn, &cluster_stack, wait, ui).await?;
    report.deleted_stacks.push(cluster_stack);
    if crate::cloudwatch::delete_insights_group(&cl.logs, &cluster).await? {
        ui.step(format!(
            "deleted the Container Insights log group of {cluster}"
        ));
        report
            .deleted_log_groups
            .push(crate::names::insights_log_group(&cluster));
    }
    Ok(())
}

/// Deregister every ACTIVE revision of exactly this family (ListTaskDefinitions matches prefixes).
async fn deregister_family(cl: &Clients, family: &str, ui: &Ui) -> Result<u32> {
    let mut arns = Vec::new();
    let mut next = None;
    loop {
        let out = cl
            .ecs
            .list_task_definitions()
            .family_prefix(family)
            .set_next_token(next)
            .send()
            .await
            .context(format!("list task definitions {family}"))?;
        arns.extend(
            out.task_definition_arns()
                .iter()
                .filter(|a| {
                    a.rsplit_once(':')
                        .is_some_and(|(head, _)| head.ends_with(&format!("/{family}")))
                })
                .cloned(),
        );
        next = out.next_token().map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    for arn in &arns {
        cl.ecs
            .deregister_task_definition()
            .task_definition(arn)
            .send()
            .await
            .context(format!("deregister {arn}"))?;
    }
    if !arns.is_empty() {
        ui.step(format!(
            "deregistered {} revision(s) of {family}",
            arns.len()
        ));
    }
    Ok(u32::try_from(arns.len()).unwrap_or(u32::MAX))
}

/// Wait until the cluster runs no task (ECS refuses to delete a cluster with active tasks).
pub async fn wait_tasks_stopped(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    bound: Duration,
    poll: Duration,
    ui: &Ui,
) -> Result<()> {
    let started = std::time::Instant::now();
    let mut announced = false;
    loop {
        let out = match ecs.list_tasks().cluster(cluster).send().await {
            Ok(o) => o,
            Err(e)
                if e.as_service_error()
                    .is_some_and(aws_sdk_ecs::operation::list_tasks::ListTasksError::is_cluster_not_found_exception) =>
            {
                return Ok(());
            }
            Err(e) => {
                return Err(crate::aws::failure(
                    &format!("list the tasks of cluster {cluster}"), e,
                ));
            }
        };
        let n = out.task_arns().len();
        if n == 0 {
            return Ok(());
        }
        if started.elapsed() >= bound {
            return Err(Error::timeout(format!(
                "cluster {cluster} still runs {n} task(s) after {} s; the cluster was not deleted",
                bound.as_secs()
            ))
            .with_help("wait for the tasks to stop (`aws ecs list-tasks --cluster ...`), then run `deployer destroy` again"));
        }
        if !announced {
            ui.step(format!(
                "waiting for {n} task(s) of cluster {cluster} to stop before deleting it"
            ));
            announced = true;
        }
        tokio::time::sleep(poll).await;
    }
}

/// Delete the network stack, retrying while released ENIs still hold the VPC
/// (DependencyViolation) for up to the wait's timeout; then name what held it.
pub async fn delete_network(
    cfn: &aws_sdk_cloudformation::Client,
    name: &str,
    wait: Wait,
    ui: &Ui,
    first_pause: Duration,
) -> Result<()> {
    let started = std::time::Instant::now();
    let mut pause = first_pause;
    loop {
        match stacks::delete(cfn, name, wait, ui).await {
            Ok(()) => return Ok(()),
            Err(e) if held_by_dependencies(&e) && started.elapsed() + pause < wait.timeout => {
                ui.step(format!(
                    "{name}: the VPC is still in use (network interfaces of stopped tasks are released asynchronously); retrying in {} s",
                    pause.as_secs()
                ));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(120));
            }
            Err(e) if held_by_dependencies(&e) => {
                let held = started.elapsed().as_secs();
                return Err(e
                    .with_note(format!("the VPC was still held after {held} s of retries"))
                    .with_help("list what holds it: `aws ec2 describe-network-interfaces --filters Name=vpc-id,Values=<vpc>`; delete those, then run `deployer destroy` again"));
            }
            Err(e) => return Err(e),
        }
    }
}

/// CloudFormation's reason for a resource that could not go because something still uses it.
fn held_by_dependencies(e: &Error) -> bool {
    e.message().contains("DependencyViolation") || e.message().contains("has dependencies")
}

const TASK_POLL: Duration = Duration::from_secs(5);
/// First pause before deleting the network again (then doubling, at most 2 minutes).
const ENI_RETRY: Duration = Duration::from_secs(15);

async fn delete_images(ecr: &aws_sdk_ecr::Client, repository: &str, ui: &Ui) -> Result<u32> {
    let mut ids: Vec<ImageIdentifier> = Vec::new();
    let mut next = None;
    loop {
        let out = match ecr
            .describe_images()
            .repository_name(repository)
            .set_next_token(next)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e)
                if e.as_service_error()
                    .is_some_and(aws_sdk_ecr::operation::describe_images::DescribeImagesError::is_repository_not_found_exception) =>
            {
                return Ok(0);
            }
            Err(e) => {
                return Err(crate::aws::failure(
                    &format!("list images of {repository}"), e,
                ));
            }
        };
        ids.extend(
            out.image_details()
                .iter()
                .filter_map(|d| d.image_digest())
                .map(|d| ImageIdentifier::builder().image_digest(d).build()),
        );
        next = out.next_token().map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    let mut failures = Vec::new();
    for chunk in ids.chunks(100) {
        let out = ecr
            .batch_delete_image()
            .repository_name(repository)
            .set_image_ids(Some(chunk.to_vec()))
            .send()
            .await
            .context(format!("delete images of {repository}"))?;
        // BatchDeleteImage answers 200 with per-image failures: name them here, or the
        // repository's stack fails next with a misleading "repository not empty".
        failures.extend(out.failures().iter().map(|f| {
            format!(
                "{}: {} {}",
                f.image_id().and_then(|i| i.image_digest()).unwrap_or("?"),
                f.failure_code().map_or("", |c| c.as_str()),
                f.failure_reason().unwrap_or("")
            )
        }));
    }
    if !failures.is_empty() {
        return Err(Error::failure(format!(
            "{} image(s) of {repository} could not be deleted:\n    {}",
            failures.len(),
            failures.join("\n    ")
        ))
        .with_help("fix the cause above (e.g. a replication or a retention rule), then run `deployer destroy` again"));
    }
    if !ids.is_empty() {
        ui.step(format!("deleted {} image(s) from {repository}", ids.len()));
    }
    Ok(u32::try_from(ids.len()).unwrap_or(u32::MAX))
}

/// Everything of the project still present (best effort, for failure messages and reports).
pub async fn remaining(c: &Config, cl: &Clients) -> Vec<String> {
    let mut left = Vec::new();
    for name in stack_names(c) {
        if let Ok(Some(l)) = stacks::describe(&cl.cfn, &name).await {
            left.push(format!("stack {name} ({})", l.status));
        }
    }
    if let Ok(params) = secrets::owned_parameters(&cl.ssm, &c.project).await {
        left.extend(params.into_iter().map(|p| format!("SSM parameter {p}")));
    }
    left
}

#[cfg(test)]
mod tests {
    //! Scripted SDK fakes for what moto cannot show: tasks that take a while to stop, a VPC
    //! held by network interfaces being released, per-image delete failures.
    use super::*;
    use aws_sdk_cloudformation::operation::delete_stack::DeleteStackOutput;
    use aws_sdk_cloudformation::operation::describe_stack_events::DescribeStackEventsOutput;
    use aws_sdk_cloudformation::operation::describe_stacks::DescribeStacksOutput;
    use aws_sdk_cloudformation::types::{ResourceStatus, Stack, StackEvent, StackStatus};
    use aws_sdk_ecs::operation::list_tasks::ListTasksOutput;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    fn fast() -> Wait {
        Wait {
            timeout: Duration::from_secs(5),
            min_poll: Duration::from_millis(1),
            max_poll: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn fake_the_cluster_waits_for_stopping_tasks_and_gives_up_with_a_clear_error() {
        let tasks = |n: usize| {
            ListTasksOutput::builder()
                .set_task_arns(Some((0..n).map(|i| format!("arn:task/{i}")).collect()))
                .build()
        };
        let rule = mock!(aws_sdk_ecs::Client::list_tasks)
            .sequence()
            .output(move || tasks(2))
            .output(move || tasks(1))
            .output(move || tasks(0))
            .build();
        let ecs = mock_client!(aws_sdk_ecs, RuleMode::Sequential, [&rule]);
        let poll = Duration::from_millis(1);
        wait_tasks_stopped(&ecs, "c", Duration::from_secs(60), poll, &Ui::silent())
            .await
            .expect("the tasks stopped in time");
        assert_eq!(rule.num_calls(), 3);

        let stuck = mock!(aws_sdk_ecs::Client::list_tasks).then_output(move || tasks(1));
        let ecs = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&stuck]);
        let e = wait_tasks_stopped(&ecs, "c", Duration::from_millis(50), poll, &Ui::silent())
            .await
            .expect_err("a task that never stops");
        assert_eq!(e.code(), crate::error::ExitCode::Timeout);
        assert!(e.message().contains("still runs 1 task(s)"), "{e}");
    }

    fn stack(status: StackStatus) -> DescribeStacksOutput {
        DescribeStacksOutput::builder()
            .stacks(
                Stack::builder()
                    .stack_name("demo-network")
                    .stack_status(status)
                    .creation_time(aws_smithy_types::DateTime::from_secs(0))
                    .build(),
            )
            .build()
    }

    #[tokio::test]
    async fn fake_the_network_is_deleted_again_while_released_interfaces_hold_the_vpc() {
        use aws_sdk_cloudformation::Client;
        let describe = mock!(Client::describe_stacks)
            .sequence()
            .output(|| stack(StackStatus::CreateComplete))
            .output(|| stack(StackStatus::DeleteFailed))
            .output(|| stack(StackStatus::DeleteFailed))
            .output(|| stack(StackStatus::DeleteComplete))
            .repeatedly()
            .build();
        let delete =
            mock!(Client::delete_stack).then_output(|| DeleteStackOutput::builder().build());
        let later = aws_smithy_types::DateTime::from(
            std::time::SystemTime::now() + Duration::from_secs(60),
        );
        let events = mock!(Client::describe_stack_events).then_output(move || {
            DescribeStackEventsOutput::builder()
                .stack_events(
                    StackEvent::builder()
                        .event_id("1")
                        .stack_name("demo-network")
                        .logical_resource_id("SubnetA")
                        .resource_type("AWS::EC2::Subnet")
                        .resource_status(ResourceStatus::DeleteFailed)
                        .resource_status_reason("The subnet 'subnet-1' has dependencies and cannot be deleted. (Service: Ec2, Status Code: 400, Error Code: DependencyViolation)")
                        .timestamp(later)
                        .build(),
                )
                .build()
        });
        let cfn = mock_client!(
            aws_sdk_cloudformation,
            RuleMode::MatchAny,
            [&describe, &delete, &events]
        );
        delete_network(
            &cfn,
            "demo-network",
            fast(),
            &Ui::silent(),
            Duration::from_millis(1),
        )
        .await
        .expect("deleted on the second attempt");
        assert_eq!(
            delete.num_calls(),
            2,
            "deleted again after the DependencyViolation"
        );
    }

    #[tokio::test]
    async fn fake_per_image_delete_failures_are_named() {
        use aws_sdk_ecr::operation::batch_delete_image::BatchDeleteImageOutput;
        use aws_sdk_ecr::operation::describe_images::DescribeImagesOutput;
        use aws_sdk_ecr::types::{ImageDetail, ImageFailure, ImageFailureCode};
        let list = mock!(aws_sdk_ecr::Client::describe_images).then_output(|| {
            DescribeImagesOutput::builder()
                .image_details(ImageDetail::builder().image_digest("sha256:aa").build())
                .image_details(ImageDetail::builder().image_digest("sha256:bb").build())
                .build()
        });
        let batch = mock!(aws_sdk_ecr::Client::batch_delete_image).then_output(|| {
            BatchDeleteImageOutput::builder()
                .image_ids(ImageIdentifier::builder().image_digest("sha256:aa").build())
                .failures(
                    ImageFailure::builder()
                        .image_id(ImageIdentifier::builder().image_digest("sha256:bb").build())
                        .failure_code(ImageFailureCode::ImageReferencedByManifestList)
                        .failure_reason("referenced by an image index")
                        .build(),
                )
                .build()
        });
        let ecr = mock_client!(aws_sdk_ecr, RuleMode::MatchAny, [&list, &batch]);
        let e = delete_images(&ecr, "demo", &Ui::silent())
            .await
            .expect_err("a partial failure is an error");
        assert!(
            e.message()
                .contains("1 image(s) of demo could not be deleted"),
            "{e}"
        );
        assert!(
            e.message()
                .contains("sha256:bb: ImageReferencedByManifestList referenced by an image index"),
            "{e}"
        );
    }
}
