//! Track *this* deployment (by task definition ARN) to COMPLETED or FAILED.
//! The stock `services-stable` waiter reports success after a circuit-breaker rollback;
//! this looks at the deployment that carries our task definition instead.

use crate::aws::describe as describe_err;
use crate::error::{Error, ExitCode, Result};
use crate::stacks::Wait;
use crate::ui::Ui;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct ServiceState {
    pub service: String,
    pub status: String,
    pub desired: i32,
    pub running: i32,
    pub pending: i32,
    pub task_definition: String,
    pub rollout: String,
}

/// DescribeServices for one service; None when it does not exist (or is INACTIVE).
pub async fn describe(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    service: &str,
) -> Result<Option<ServiceState>> {
    let out = ecs
        .describe_services()
        .cluster(cluster)
        .services(service)
        .send()
        .await
        .map_err(|e| Error::failure(format!("describe service {service}: {}", describe_err(&e))))?;
    let Some(s) = out.services().first() else {
        return Ok(None);
    };
    if s.status() == Some("INACTIVE") {
        return Ok(None);
    }
    let primary = s
        .deployments()
        .iter()
        .find(|d| d.status() == Some("PRIMARY"));
    Ok(Some(ServiceState {
        service: service.to_string(),
        status: s.status().unwrap_or_default().to_string(),
        desired: s.desired_count(),
        running: s.running_count(),
        pending: s.pending_count(),
        task_definition: s.task_definition().unwrap_or_default().to_string(),
        rollout: primary
            .and_then(|d| d.rollout_state())
            .map(|r| r.as_str().to_string())
            .unwrap_or_else(|| "UNKNOWN".into()),
    }))
}

/// Why tasks of `task_definition` stopped (newest first, at most five): the answer to "why did
/// my deploy fail" that service events alone do not give. Best effort: a failed lookup
/// yields no lines rather than hiding the deployment error.
pub async fn stopped_tasks(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    service: &str,
    task_definition: &str,
) -> Vec<String> {
    let Ok(list) = ecs
        .list_tasks()
        .cluster(cluster)
        .service_name(service)
        .desired_status(aws_sdk_ecs::types::DesiredStatus::Stopped)
        .send()
        .await
    else {
        return Vec::new();
    };
    if list.task_arns().is_empty() {
        return Vec::new();
    }
    let Ok(tasks) = ecs
        .describe_tasks()
        .cluster(cluster)
        .set_tasks(Some(list.task_arns().to_vec()))
        .send()
        .await
    else {
        return Vec::new();
    };
    let mut ours: Vec<_> = tasks
        .tasks()
        .iter()
        .filter(|t| t.task_definition_arn() == Some(task_definition))
        .collect();
    ours.sort_by_key(|t| std::cmp::Reverse(t.stopped_at().map(|d| d.secs())));
    ours.iter()
        .take(5)
        .map(|t| {
            let id = t
                .task_arn()
                .and_then(|a| a.rsplit('/').next())
                .unwrap_or("?");
            let containers: Vec<String> = t
                .containers()
                .iter()
                .filter(|c| c.exit_code().is_some_and(|code| code != 0) || c.reason().is_some())
                .map(|c| {
                    let mut s = c.name().unwrap_or("container").to_string();
                    if let Some(code) = c.exit_code() {
                        s.push_str(&format!(" exited {code}"));
                    }
                    if let Some(r) = c.reason() {
                        s.push_str(&format!(" ({r})"));
                    }
                    s
                })
                .collect();
            format!(
                "    task {id}: {}{}",
                t.stopped_reason().unwrap_or("stopped"),
                if containers.is_empty() {
                    String::new()
                } else {
                    format!("; {}", containers.join(", "))
                }
            )
        })
        .collect()
}

/// The stopped tasks of `task_definition` as a section of an error message ("" if none).
pub async fn stopped_section(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    service: &str,
    task_definition: &str,
) -> String {
    let stopped = stopped_tasks(ecs, cluster, service, task_definition).await;
    if stopped.is_empty() {
        return String::new();
    }
    format!(
        "\n  stopped tasks of this revision:\n{}",
        stopped.join("\n")
    )
}

/// Service events and stopped tasks, for a deployment error message.
async fn diagnosis(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    service: &str,
    task_definition: &str,
    events: &[String],
) -> String {
    format!(
        "\n  last events:\n{}{}",
        events.join("\n"),
        stopped_section(ecs, cluster, service, task_definition).await
    )
}

/// Wait until the deployment running `task_definition` completes. A FAILED rollout
/// (circuit breaker) or a service that rolled back to another revision is an error
/// with exit code 4, carrying the last service events.
pub async fn wait_deployed(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    service: &str,
    task_definition: &str,
    wait: Wait,
    ui: &Ui,
) -> Result<ServiceState> {
    let sp = ui.spinner(format!("{service}: waiting for the deployment to finish"));
    let started = Instant::now();
    let mut poll = wait.min_poll;
    loop {
        let out = ecs
            .describe_services()
            .cluster(cluster)
            .services(service)
            .send()
            .await
            .map_err(|e| {
                Error::failure(format!("describe service {service}: {}", describe_err(&e)))
            })?;
        let svc = out.services().first().ok_or_else(|| {
            Error::failure(format!("service {service} not found in cluster {cluster}"))
        })?;
        let ours = svc
            .deployments()
            .iter()
            .find(|d| d.task_definition() == Some(task_definition));
        // moto's UpdateService changes the service's task definition without starting a new
        // deployment; ECS itself always has a deployment for the service's task definition.
        if ours.is_none()
            && svc.task_definition() == Some(task_definition)
            && svc.running_count() >= svc.desired_count()
        {
            sp.finish(format!(
                "{service}: deployed ({} running)",
                svc.running_count()
            ));
            return Ok(ServiceState {
                service: service.into(),
                status: svc.status().unwrap_or_default().into(),
                desired: svc.desired_count(),
                running: svc.running_count(),
                pending: svc.pending_count(),
                task_definition: task_definition.into(),
                rollout: "COMPLETED".into(),
            });
        }
        let events: Vec<String> = svc
            .events()
            .iter()
            .take(5)
            .filter_map(|e| e.message().map(|m| format!("    {m}")))
            .collect();
        match ours {
            None if svc.task_definition() == Some(task_definition) => {}
            None => {
                sp.finish(format!("{service}: rolled back"));
                let why = diagnosis(ecs, cluster, service, task_definition, &events).await;
                return Err(Error::new(
                    ExitCode::RolledBack,
                    format!(
                        "{service}: the deployment of {task_definition} is gone; the service runs {} (rolled back){why}",
                        svc.task_definition().unwrap_or("?"),
                    ),
                ));
            }
            Some(d) => {
                let state = d
                    .rollout_state()
                    .map(|r| r.as_str().to_string())
                    .unwrap_or_default();
                sp.set_message(format!(
                    "{service}: {} running, {} pending of {} desired ({})",
                    d.running_count(),
                    d.pending_count(),
                    d.desired_count(),
                    if state.is_empty() {
                        "IN_PROGRESS"
                    } else {
                        &state
                    }
                ));
                let done = state == "COMPLETED"
                    || (state.is_empty()
                        && svc.deployments().len() == 1
                        && d.running_count() >= d.desired_count());
                if done {
                    sp.finish(format!(
                        "{service}: deployed ({} running)",
                        d.running_count()
                    ));
                    return Ok(ServiceState {
                        service: service.into(),
                        status: svc.status().unwrap_or_default().into(),
                        desired: svc.desired_count(),
                        running: svc.running_count(),
                        pending: svc.pending_count(),
                        task_definition: task_definition.into(),
                        rollout: "COMPLETED".into(),
                    });
                }
                if state == "FAILED" {
                    sp.finish(format!("{service}: deployment failed"));
                    let why = diagnosis(ecs, cluster, service, task_definition, &events).await;
                    return Err(Error::new(
                        ExitCode::RolledBack,
                        format!(
                            "{service}: deployment failed: {}{why}",
                            d.rollout_state_reason().unwrap_or("no reason given"),
                        ),
                    )
                    .with_help(
                        "check the container logs (/ecs/<project>/<service>) for why tasks stopped",
                    ));
                }
            }
        }
        if started.elapsed() > wait.timeout {
            sp.finish(format!("{service}: still rolling out"));
            let why = diagnosis(ecs, cluster, service, task_definition, &events).await;
            return Err(Error::timeout(format!(
                "{service}: deployment not finished after {}s{why}",
                wait.timeout.as_secs(),
            ))
            .with_help(
                "raise services.<name>.deployment.rollout_timeout, or check `deployer status`",
            ));
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(wait.max_poll);
    }
}

#[cfg(test)]
mod tests {
    //! Scripted SDK fakes: moto never fails or rolls back an ECS deployment.
    use super::*;
    use aws_sdk_ecs::operation::describe_services::DescribeServicesOutput;
    use aws_sdk_ecs::types::{Deployment, DeploymentRolloutState, Service, ServiceEvent};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use std::time::Duration;

    fn fast() -> Wait {
        Wait {
            timeout: Duration::from_secs(5),
            min_poll: Duration::from_millis(1),
            max_poll: Duration::from_millis(5),
        }
    }

    fn out(deployments: Vec<Deployment>, td: &str) -> DescribeServicesOutput {
        DescribeServicesOutput::builder()
            .services(
                Service::builder()
                    .service_name("web")
                    .status("ACTIVE")
                    .task_definition(td)
                    .set_deployments(Some(deployments))
                    .events(
                        ServiceEvent::builder()
                            .message("(service web) has started 1 tasks")
                            .build(),
                    )
                    .build(),
            )
            .build()
    }

    /// ListTasks with no stopped tasks (the failure paths look them up).
    fn no_stopped_tasks() -> aws_smithy_mocks::Rule {
        mock!(aws_sdk_ecs::Client::list_tasks)
            .then_output(|| aws_sdk_ecs::operation::list_tasks::ListTasksOutput::builder().build())
    }

    fn dep(td: &str, state: DeploymentRolloutState, running: i32) -> Deployment {
        Deployment::builder()
            .status("PRIMARY")
            .task_definition(td)
            .desired_count(1)
            .running_count(running)
            .rollout_state(state)
            .rollout_state_reason("ECS deployment circuit breaker: tasks failed to start.")
            .build()
    }

    #[tokio::test]
    async fn fake_deployment_in_progress_then_completed() {
        let rule = mock!(aws_sdk_ecs::Client::describe_services)
            .sequence()
            .output(|| {
                out(
                    vec![dep("td:2", DeploymentRolloutState::InProgress, 0)],
                    "td:2",
                )
            })
            .times(2)
            .output(|| {
                out(
                    vec![dep("td:2", DeploymentRolloutState::Completed, 1)],
                    "td:2",
                )
            })
            .build();
        let ecs = mock_client!(aws_sdk_ecs, RuleMode::Sequential, [&rule]);
        let s = wait_deployed(&ecs, "c", "web", "td:2", fast(), &Ui::silent())
            .await
            .unwrap();
        assert_eq!(s.rollout, "COMPLETED");
        assert_eq!(rule.num_calls(), 3);
    }

    #[tokio::test]
    async fn fake_circuit_breaker_failure_is_rolled_back_exit_code() {
        use aws_sdk_ecs::operation::{
            describe_tasks::DescribeTasksOutput, list_tasks::ListTasksOutput,
        };
        use aws_sdk_ecs::types::{Container, Task};
        let rule = mock!(aws_sdk_ecs::Client::describe_services)
            .then_output(|| out(vec![dep("td:3", DeploymentRolloutState::Failed, 0)], "td:3"));
        let list = mock!(aws_sdk_ecs::Client::list_tasks).then_output(|| {
            ListTasksOutput::builder()
                .task_arns("arn:aws:ecs:us-east-1:1:task/c/aaa")
                .task_arns("arn:aws:ecs:us-east-1:1:task/c/bbb")
                .build()
        });
        let tasks = mock!(aws_sdk_ecs::Client::describe_tasks).then_output(|| {
            let task = |id: &str, td: &str| {
                Task::builder()
                    .task_arn(format!("arn:aws:ecs:us-east-1:1:task/c/{id}"))
                    .task_definition_arn(td)
                    .stopped_reason("Essential container in task exited")
                    .containers(Container::builder().name("web").exit_code(101).build())
                    .build()
            };
            DescribeTasksOutput::builder()
                .tasks(task("aaa", "td:3"))
                .tasks(task("bbb", "td:2")) // an older revision's task: not ours
                .build()
        });
        let ecs = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&rule, &list, &tasks]);
        let e = wait_deployed(&ecs, "c", "web", "td:3", fast(), &Ui::silent())
            .await
            .unwrap_err();
        assert_eq!(e.code, ExitCode::RolledBack);
        assert!(e.message.contains("circuit breaker"), "{e}");
        assert!(e.message.contains("has started 1 tasks"), "{e}");
        // Why the new revision's tasks stopped, and only those.
        assert!(
            e.message
                .contains("task aaa: Essential container in task exited; web exited 101"),
            "{e}"
        );
        assert!(!e.message.contains("task bbb"), "{e}");
    }

    #[tokio::test]
    async fn fake_rollback_to_previous_revision_is_not_success() {
        // After a rollback the service is stable again, on the OLD revision: the stock
        // waiter says success; we must not.
        let rule = mock!(aws_sdk_ecs::Client::describe_services).then_output(|| {
            out(
                vec![dep("td:1", DeploymentRolloutState::Completed, 1)],
                "td:1",
            )
        });
        let none = no_stopped_tasks();
        let ecs = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&rule, &none]);
        let e = wait_deployed(&ecs, "c", "web", "td:4", fast(), &Ui::silent())
            .await
            .unwrap_err();
        assert_eq!(e.code, ExitCode::RolledBack);
    }

    #[tokio::test]
    async fn fake_stuck_deployment_times_out() {
        let rule = mock!(aws_sdk_ecs::Client::describe_services)
            .sequence()
            .output(|| {
                out(
                    vec![dep("td:5", DeploymentRolloutState::InProgress, 0)],
                    "td:5",
                )
            })
            .repeatedly()
            .build();
        let none = no_stopped_tasks();
        let ecs = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&rule, &none]);
        let wait = Wait {
            timeout: Duration::from_millis(30),
            ..fast()
        };
        let e = wait_deployed(&ecs, "c", "web", "td:5", wait, &Ui::silent())
            .await
            .unwrap_err();
        assert_eq!(e.code, ExitCode::Timeout);
    }
}
