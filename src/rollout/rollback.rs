//! `rollback`: put a service back on an earlier task definition revision and track that
//! deployment like any other. Only the service stack's `TaskDefinitionArn` parameter changes;
//! every other parameter is kept as it is live, so a rollback cannot drift the network or the
//! deployment settings. The next `up`/`redeploy` rolls forward to what the config says.

use crate::aws::Context;
use crate::error::{Error, Result};
use crate::rollout::track::{self, ServiceState};
use crate::stacks::{self, Applied, StackSpec, Wait, templates};
use crate::ui::Ui;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub service: String,
    pub from: String,
    pub to: String,
    pub stack: Applied,
    pub state: ServiceState,
}

/// ACTIVE revisions of a family, newest first.
async fn active_revisions(ecs: &aws_sdk_ecs::Client, family: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut pages = ecs
        .list_task_definitions()
        .family_prefix(family)
        .status(aws_sdk_ecs::types::TaskDefinitionStatus::Active)
        .sort(aws_sdk_ecs::types::SortOrder::Desc)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.context(format!("list task definitions of {family}"))?;
        // family_prefix also matches longer family names: keep exact matches only.
        out.extend(
            page.task_definition_arns()
                .iter()
                .filter(|a| family_of(a) == Some(family))
                .cloned(),
        );
    }
    // Not every implementation honours `sort` (moto does not): order here.
    out.sort_by_key(|a| std::cmp::Reverse(revision_of(a)));
    Ok(out)
}

/// `arn:...:task-definition/<family>:<rev>` -> `<family>:<rev>`, for messages.
pub fn short(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// `arn:...:task-definition/<family>:<rev>` -> family.
fn family_of(arn: &str) -> Option<&str> {
    arn.rsplit_once('/')?.1.rsplit_once(':').map(|(f, _)| f)
}

fn revision_of(arn: &str) -> Option<i32> {
    arn.rsplit_once(':')?.1.parse().ok()
}

/// Which revision to go back to: `to`, or the newest ACTIVE one older than `current`.
pub fn pick_target(revisions: &[String], current: &str, to: Option<i32>) -> Result<String> {
    let current_rev = revision_of(current).unwrap_or(i32::MAX);
    let found = match to {
        Some(n) => revisions.iter().find(|a| revision_of(a) == Some(n)),
        None => revisions
            .iter()
            .filter(|a| revision_of(a).is_some_and(|r| r < current_rev))
            .max_by_key(|a| revision_of(a)),
    };
    let listed = revisions
        .iter()
        .filter_map(|a| revision_of(a))
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    match found {
        Some(a) if a == current => Err(Error::bad_input(format!(
            "the service already runs revision {}",
            revision_of(a).unwrap_or_default()
        ))),
        Some(a) => Ok(a.clone()),
        None => Err(match to {
            Some(n) => Error::bad_input(format!("revision {n} is not an ACTIVE revision"))
                .with_help(format!("ACTIVE revisions: {listed}")),
            None => Error::bad_input("there is no earlier ACTIVE revision to roll back to")
                .with_help(format!("ACTIVE revisions: {listed}")),
        }),
    }
}

/// One deployed service, by the names its resources carry.
#[derive(Debug, Clone)]
pub struct ServiceRef {
    pub service: String,
    pub stack: String,
    pub family: String,
    pub cluster: String,
    /// Where its tasks log (`/ecs/<project>/<service>`).
    pub log_group: String,
}

/// Roll one service back (to `to`, or the previous ACTIVE revision) and wait for the deployment.
pub async fn rollback(
    cl: &crate::aws::Clients,
    svc: &ServiceRef,
    to: Option<i32>,
    wait: Wait,
    ui: &Ui,
) -> Result<RollbackReport> {
    let (stack_name, service) = (svc.stack.as_str(), svc.service.as_str());
    let live = stacks::describe(&cl.cfn, stack_name)
        .await?
        .ok_or_else(|| {
            Error::bad_input(format!("stack {stack_name} does not exist"))
                .with_help("nothing to roll back: run `deployer up` first")
        })?;
    let current = live
        .parameters
        .get("TaskDefinitionArn")
        .cloned()
        .ok_or_else(|| {
            Error::failure(format!("{stack_name} has no TaskDefinitionArn parameter"))
        })?;
    let revisions = active_revisions(&cl.ecs, &svc.family).await?;
    let target = pick_target(&revisions, &current, to)?;
    ui.step(format!(
        "{service}: rolling back {} -> {}",
        short(&current),
        short(&target)
    ));
    let mut parameters = live.parameters.clone();
    parameters.insert("TaskDefinitionArn".into(), target.clone());
    let spec = StackSpec {
        name: stack_name.to_string(),
        template: templates::SERVICE,
        parameters,
        tags: live.tags.clone(),
    };
    let since = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
    let applied = stacks::apply(&cl.cfn, &spec, wait, ui).await?;
    let follow = track::Follow {
        cluster: &svc.cluster,
        service,
        task_definition: &target,
        since,
        deployment_id: None,
        rollback_on_interrupt: false,
        logs: Some(track::Logs {
            client: &cl.logs,
            group: &svc.log_group,
        }),
    };
    let state = track::wait_deployed(&cl.ecs, &follow, wait, ui).await?;
    Ok(RollbackReport {
        service: service.to_string(),
        from: current,
        to: target,
        stack: applied,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: &str = "arn:aws:ecs:us-east-1:1:task-definition/p-web";

    fn revs(ns: &[i32]) -> Vec<String> {
        ns.iter().map(|n| format!("{F}:{n}")).collect()
    }

    #[test]
    fn picks_the_newest_older_revision() {
        let r = revs(&[5, 4, 2]);
        assert_eq!(
            pick_target(&r, &format!("{F}:5"), None).unwrap(),
            format!("{F}:4")
        );
        // After rolling back to 4, the next rollback goes to 2, not forward to 5.
        assert_eq!(
            pick_target(&r, &format!("{F}:4"), None).unwrap(),
            format!("{F}:2")
        );
    }

    #[test]
    fn explicit_revision_must_be_active_and_different() {
        let r = revs(&[5, 4, 2]);
        assert_eq!(
            pick_target(&r, &format!("{F}:5"), Some(2)).unwrap(),
            format!("{F}:2")
        );
        let e = pick_target(&r, &format!("{F}:5"), Some(3)).unwrap_err();
        assert!(e.to_string().contains("ACTIVE revisions: 5, 4, 2"), "{e}");
        assert!(pick_target(&r, &format!("{F}:5"), Some(5)).is_err());
        assert!(pick_target(&revs(&[1]), &format!("{F}:1"), None).is_err());
    }

    #[test]
    fn family_parsing_ignores_longer_families() {
        assert_eq!(family_of(&format!("{F}:3")), Some("p-web"));
        assert_eq!(family_of(&format!("{F}-two:3")), Some("p-web-two"));
        assert_eq!(revision_of(&format!("{F}:12")), Some(12));
    }
}
