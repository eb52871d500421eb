//! `destroy`: services -> task definitions -> cluster -> network -> ECR images and repository
//! -> SSM parameters. Only what carries the deployer's tags for this project; anything else
//! with a colliding name is refused before a single deletion.

use crate::aws::{Clients, describe as describe_err};
use crate::config::{Config, StackPart};
use crate::deploy::network_spec;
use crate::error::{Error, Result};
use crate::rollout::taskdef;
use crate::secrets;
use crate::stacks::{self, Wait};
use crate::status::stack_names;
use crate::ui::Ui;
use aws_sdk_ecr::types::ImageIdentifier;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, Default)]
pub struct DestroyReport {
    pub project: String,
    pub deleted_stacks: Vec<String>,
    pub deregistered_task_definitions: u32,
    pub deleted_images: u32,
    pub deleted_parameters: Vec<String>,
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

pub async fn destroy(
    c: &Config,
    cl: &Clients,
    wait: Wait,
    ui: &Ui,
    confirm: impl FnOnce(&[String]) -> Result<()>,
) -> Result<DestroyReport> {
    let existing = owned_stacks(c, cl).await?;
    let parameters = secrets::owned_parameters(&cl.ssm, &c.project).await?;
    let mut what: Vec<String> = existing.clone();
    what.extend(parameters.iter().map(|p| format!("SSM parameter {p}")));
    if what.is_empty() {
        ui.step(format!("nothing of project {} exists", c.project));
    } else {
        confirm(&what)?;
    }
    let mut report = DestroyReport {
        project: c.project.clone(),
        ..Default::default()
    };
    let result = run(c, cl, wait, ui, &existing, &parameters, &mut report).await;
    if let Err(e) = result {
        report.remaining = remaining(c, cl).await;
        let left = if report.remaining.is_empty() {
            "nothing".into()
        } else {
            report.remaining.join(", ")
        };
        return Err(
            Error::new(e.code, format!("{}\n  still present: {left}", e.message)).with_help(
                e.help
                    .unwrap_or_else(|| "fix the cause and run `deployer destroy` again".into()),
            ),
        );
    }
    Ok(report)
}

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
    let svc_prefix = format!("{}-svc-", c.project);
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
    for (n, r) in services.iter().zip(results) {
        r?;
        report.deleted_stacks.push(n.clone());
    }
    // 2. Task definition revisions the deployer registered.
    let mut families: Vec<String> = c
        .services
        .keys()
        .map(|s| taskdef::family(&c.project, s))
        .collect();
    families.extend(
        services
            .iter()
            .filter_map(|n| n.strip_prefix(&svc_prefix))
            .map(|s| taskdef::family(&c.project, s)),
    );
    families.sort();
    families.dedup();
    for family in &families {
        report.deregistered_task_definitions += deregister_family(cl, family, ui).await?;
    }
    // 3. Cluster, then network (its subnets were in use until the services were gone).
    let mut ordered = vec![c.stack_name(StackPart::Cluster)];
    ordered.extend(network_spec(c).map(|s| s.name));
    for n in ordered.iter().filter(|n| has(n)) {
        stacks::delete(&cl.cfn, n, wait, ui).await?;
        report.deleted_stacks.push(n.clone());
    }
    // 4. Images, then the repository's stack (CloudFormation cannot delete a non-empty repository).
    let registry = c.stack_name(StackPart::Registry);
    if has(&registry) {
        report.deleted_images = delete_images(cl, &c.repository_name(), ui).await?;
        stacks::delete(&cl.cfn, &registry, wait, ui).await?;
        report.deleted_stacks.push(registry);
    }
    // 5. The secrets it stored.
    if !parameters.is_empty() {
        secrets::delete(&cl.ssm, parameters).await?;
        ui.step(format!(
            "deleted {} SSM parameter(s) under /{}/",
            parameters.len(),
            c.project
        ));
        report.deleted_parameters = parameters.to_vec();
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
            .map_err(|e| {
                Error::failure(format!(
                    "list task definitions {family}: {}",
                    describe_err(&e)
                ))
            })?;
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
            .map_err(|e| Error::failure(format!("deregister {arn}: {}", describe_err(&e))))?;
    }
    if !arns.is_empty() {
        ui.step(format!(
            "deregistered {} revision(s) of {family}",
            arns.len()
        ));
    }
    Ok(arns.len() as u32)
}

async fn delete_images(cl: &Clients, repository: &str, ui: &Ui) -> Result<u32> {
    let mut ids: Vec<ImageIdentifier> = Vec::new();
    let mut next = None;
    loop {
        let out = match cl
            .ecr
            .describe_images()
            .repository_name(repository)
            .set_next_token(next)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_not_found_exception()) =>
            {
                return Ok(0);
            }
            Err(e) => {
                return Err(Error::failure(format!(
                    "list images of {repository}: {}",
                    describe_err(&e)
                )));
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
    for chunk in ids.chunks(100) {
        cl.ecr
            .batch_delete_image()
            .repository_name(repository)
            .set_image_ids(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| {
                Error::failure(format!(
                    "delete images of {repository}: {}",
                    describe_err(&e)
                ))
            })?;
    }
    if !ids.is_empty() {
        ui.step(format!("deleted {} image(s) from {repository}", ids.len()));
    }
    Ok(ids.len() as u32)
}

/// Everything of the project still present (best effort, for the failure message).
async fn remaining(c: &Config, cl: &Clients) -> Vec<String> {
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
