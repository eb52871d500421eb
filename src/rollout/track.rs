//! Track *this* deployment to its verdict. The stock `services-stable` waiter reports success
//! after a circuit-breaker rollback; "the first deployment with this task definition" can be
//! an old COMPLETED one (a secret-only change or a forced deployment keeps the ARN). So the
//! wait follows the deployment created after the update started, through ECS's
//! service-deployment API (`ListServiceDeployments`: each deployment's own status, rollback
//! included), and falls back to the service's deployments list, by id, where the endpoint
//! does not implement that API (the emulator).

use crate::aws::Context;
use crate::aws::describe as describe_err;
use crate::error::{Error, Result};
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
    let out = match ecs
        .describe_services()
        .cluster(cluster)
        .services(service)
        .send()
        .await
    {
        Ok(out) => out,
        // No cluster: nothing of the project is deployed. Any other error (a missing
        // permission, throttling) is reported, never read as "not found".
        Err(e)
            if e.as_service_error()
                .is_some_and(aws_sdk_ecs::operation::describe_services::DescribeServicesError::is_cluster_not_found_exception) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(crate::aws::failure(
                &format!("describe service {service}"), e,
            ));
        }
    };
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
) -> Vec<(String, String)> {
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
    ours.sort_by_key(|t| std::cmp::Reverse(t.stopped_at().map(aws_smithy_types::DateTime::secs)));
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
            let line = format!(
                "    task {id}: {}{}",
                t.stopped_reason().unwrap_or("stopped"),
                if containers.is_empty() {
                    String::new()
                } else {
                    format!("; {}", containers.join(", "))
                }
            );
            (id.to_string(), line)
        })
        .collect()
}

/// Where a service's container logs are, to quote a failed task's last lines.
#[derive(Debug, Clone, Copy)]
pub struct Logs<'a> {
    pub client: &'a aws_sdk_cloudwatchlogs::Client,
    pub group: &'a str,
}

/// Log lines quoted per failed task, and how many tasks are quoted.
const TAIL_LINES: i32 = 5;
const TAIL_TASKS: usize = 2;

/// The stopped tasks of `task_definition` as a section of an error message ("" if none),
/// with the last lines the first few of them logged.
pub async fn stopped_section(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    service: &str,
    task_definition: &str,
    logs: Option<Logs<'_>>,
) -> String {
    let stopped = stopped_tasks(ecs, cluster, service, task_definition).await;
    if stopped.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n  stopped tasks of this revision:");
    for (i, (id, line)) in stopped.iter().enumerate() {
        out.push('\n');
        out.push_str(line);
        let Some(l) = logs.filter(|_| i < TAIL_TASKS) else {
            continue;
        };
        let stream = crate::cloudwatch::task_stream(service, id);
        for text in crate::cloudwatch::task_tail(l.client, l.group, &stream, TAIL_LINES).await {
            out.push_str(&format!("\n      | {text}"));
        }
    }
    out
}

/// The service's last events and the stopped tasks of our revision, for an error message.
async fn diagnosis(ecs: &aws_sdk_ecs::Client, f: &Follow<'_>, _: &[String]) -> String {
    let events: Vec<String> = match ecs
        .describe_services()
        .cluster(f.cluster)
        .services(f.service)
        .send()
        .await
    {
        Ok(out) => out
            .services()
            .first()
            .map(|s| {
                s.events()
                    .iter()
                    .take(5)
                    .filter_map(|e| e.message().map(|m| format!("    {m}")))
                    .collect()
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let events = if events.is_empty() {
        String::new()
    } else {
        format!("\n  last events:\n{}", events.join("\n"))
    };
    format!(
        "{events}{}",
        stopped_section(ecs, f.cluster, f.service, f.task_definition, f.logs).await
    )
}

/// The deployment a rollout wait follows.
#[derive(Debug, Clone)]
pub struct Follow<'a> {
    pub cluster: &'a str,
    pub service: &'a str,
    /// The task definition the deployment should run (for messages and stopped tasks).
    pub task_definition: &'a str,
    /// The update started at this instant: the first deployment created at or after it is
    /// ours (a stack update gives no deployment id; a forced UpdateService does, see below).
    pub since: aws_smithy_types::DateTime,
    /// The PRIMARY deployment UpdateService returned, for endpoints without the
    /// service-deployment API.
    pub deployment_id: Option<String>,
    /// On an interrupt, stop the deployment with a rollback (`StopServiceDeployment`,
    /// stop type ROLLBACK) instead of leaving it to run on.
    pub rollback_on_interrupt: bool,
    /// Where the tasks log, to quote failed tasks' last lines.
    pub logs: Option<Logs<'a>>,
}

/// What became of our deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Not created yet, pending or in progress.
    Going,
    Completed,
    /// ECS (the circuit breaker, an alarm, a stop with rollback) rolled it back.
    RolledBack(String),
    /// Failed, stopped, or replaced by a later deployment: not ours to call a success.
    Failed(String),
}

/// Classify the service deployments created since the update started (oldest first).
pub fn classify(deployments: &[ServiceDeploymentBrief]) -> Seen {
    use aws_sdk_ecs::types::ServiceDeploymentStatus as S;
    let Some(ours) = deployments.first() else {
        return Seen::Going;
    };
    let reason = ours
        .status_reason()
        .unwrap_or("no reason given")
        .to_string();
    match ours.status() {
        Some(S::Successful) => Seen::Completed,
        Some(S::RollbackRequested | S::RollbackInProgress | S::RollbackSuccessful) => {
            Seen::RolledBack(reason)
        }
        Some(S::RollbackFailed) => Seen::Failed(format!("its rollback failed: {reason}")),
        Some(S::Stopped | S::StopRequested) => match deployments.get(1) {
            Some(later) => Seen::Failed(format!(
                "replaced by a later deployment ({}) before it completed",
                later
                    .service_deployment_arn()
                    .and_then(|a| a.rsplit('/').next())
                    .unwrap_or("?")
            )),
            None => Seen::Failed(format!("stopped: {reason}")),
        },
        _ => Seen::Going,
    }
}

use aws_sdk_ecs::types::ServiceDeploymentBrief;

/// The service deployments created since `since`, oldest first; None when the endpoint does
/// not implement the API (an emulator: unmodelled 5xx with no error code).
async fn service_deployments(
    ecs: &aws_sdk_ecs::Client,
    f: &Follow<'_>,
) -> Result<Option<(Vec<ServiceDeploymentBrief>, usize)>> {
    let after = aws_sdk_ecs::types::CreatedAt::builder()
        .after(f.since)
        .build();
    match ecs
        .list_service_deployments()
        .cluster(f.cluster)
        .service(f.service)
        .created_at(after)
        .send()
        .await
    {
        Ok(out) => {
            let mut list = out.service_deployments().to_vec();
            list.sort_by_key(|d| d.created_at().map(|t| (t.secs(), t.subsec_nanos())));
            let n = list.len();
            Ok(Some((list, n)))
        }
        Err(e) if unimplemented(&e) => Ok(None),
        Err(e) => Err(crate::aws::failure(
            &format!("list service deployments of {}", f.service),
            e,
        )),
    }
}

/// An operation the endpoint does not model (moto answers those with an HTML 500).
fn unimplemented<E: aws_sdk_ecs::error::ProvideErrorMetadata, R>(
    e: &aws_sdk_ecs::error::SdkError<E, aws_smithy_runtime_api::http::Response<R>>,
) -> bool {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.as_service_error().and_then(|se| se.code());
    matches!(status, Some(500 | 501 | 404)) && code.is_none()
}

/// Wait until *our* deployment completes: the first one created since the update started
/// (the service-deployment API reports its own status, rollback included); without that API,
/// the service's deployments list by id. Exit codes: 0 only for our own completed deployment,
/// 4 rolled back, 3 past the deadline, 1 failed/stopped/replaced, 130 interrupted (after
/// stopping the deployment with a rollback when asked).
pub async fn wait_deployed(
    ecs: &aws_sdk_ecs::Client,
    f: &Follow<'_>,
    wait: Wait,
    ui: &Ui,
) -> Result<ServiceState> {
    let service = f.service;
    let sp = ui.spinner(format!("{service}: waiting for the deployment to finish"));
    let started = Instant::now();
    let mut poll = wait.min_poll;
    let mut ours_arn: Option<String> = None;
    loop {
        match observe(ecs, f, &sp, &mut ours_arn).await? {
            Seen::Going => {}
            Seen::Completed => {
                sp.finish(format!("{service}: deployed"));
                return describe(ecs, f.cluster, service).await?.ok_or_else(|| {
                    Error::failure(format!("service {service} vanished after its deployment"))
                });
            }
            Seen::RolledBack(reason) => {
                sp.finish(format!("{service}: rolled back"));
                let why = diagnosis(ecs, f, &[]).await;
                return Err(Error::rolled_back(format!(
                    "{service}: the deployment was rolled back: {reason}{why}"
                ))
                .with_help(
                    "check the container logs (/ecs/<project>/<service>) for why tasks stopped",
                ));
            }
            Seen::Failed(reason) => {
                sp.finish(format!("{service}: deployment did not complete"));
                let why = diagnosis(ecs, f, &[]).await;
                return Err(Error::failure(format!(
                    "{service}: the deployment did not complete: {reason}{why}"
                ))
                .with_help(
                    "see `deployer status`; run `deployer up` again when the cause is fixed",
                ));
            }
        }
        if started.elapsed() > wait.timeout {
            sp.finish(format!("{service}: still rolling out"));
            let why = diagnosis(ecs, f, &[]).await;
            return Err(Error::timeout(format!(
                "{service}: deployment not finished after {}s{why}",
                wait.timeout.as_secs(),
            ))
            .with_help(
                "raise services.<name>.deployment.rollout_timeout, or check `deployer status`",
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = crate::interrupt::cancelled() => {
                sp.finish(format!("{service}: interrupted"));
                return Err(interrupted(ecs, f, ours_arn.as_deref(), ui).await);
            }
        }
        poll = (poll * 2).min(wait.max_poll);
    }
}

/// One look at our deployment: through the service-deployment API (remembering our
/// deployment's ARN the first time it appears), else the service's deployments list.
async fn observe(
    ecs: &aws_sdk_ecs::Client,
    f: &Follow<'_>,
    sp: &crate::ui::Spinner,
    ours_arn: &mut Option<String>,
) -> Result<Seen> {
    let Some((list, _)) = service_deployments(ecs, f).await? else {
        return from_deployments_list(ecs, f, sp).await;
    };
    if let Some(arn) = list.first().and_then(|d| d.service_deployment_arn()) {
        ours_arn.get_or_insert_with(|| arn.to_string());
    }
    sp.set_message(format!(
        "{}: deployment {} {}",
        f.service,
        ours_arn
            .as_deref()
            .and_then(|a| a.rsplit('/').next())
            .unwrap_or("(not started yet)"),
        list.first()
            .and_then(|d| d.status())
            .map_or("PENDING", |s| s.as_str())
    ));
    Ok(classify(&list))
}

/// An interrupted rollout wait: stop our deployment with a rollback when asked (the
/// documented undo, let through after the interrupt), and say how to watch it.
async fn interrupted(
    ecs: &aws_sdk_ecs::Client,
    f: &Follow<'_>,
    arn: Option<&str>,
    ui: &Ui,
) -> Error {
    use aws_sdk_ecs::types::StopServiceDeploymentStopType;
    let service = f.service;
    let left = match (f.rollback_on_interrupt, arn) {
        (true, Some(arn)) => {
            let stop = crate::interrupt::undo(
                ecs.stop_service_deployment()
                    .service_deployment_arn(arn)
                    .stop_type(StopServiceDeploymentStopType::Rollback)
                    .send(),
            )
            .await;
            match stop {
                Ok(_) => {
                    ui.step(format!("{service}: stopping deployment {arn} with a rollback"));
                    format!(
                        "deployment {arn} is being rolled back by ECS; watch it with `deployer status` or `aws ecs describe-service-deployments --service-deployment-arns {arn}`"
                    )
                }
                Err(e) => format!(
                    "the rollback of {arn} could not be requested ({}); the deployment goes on in ECS",
                    describe_err(&e)
                ),
            }
        }
        (true, None) => "no deployment of ours was found to roll back; anything started goes on in ECS".into(),
        (false, _) => "the deployment goes on in ECS (the circuit breaker rolls it back if it fails); watch it with `deployer status`".into(),
    };
    Error::interrupted(format!(
        "interrupted during the rollout of {service}: {left}"
    ))
}

/// Without the service-deployment API (emulators): follow our deployment in the service's
/// deployments list, by the id UpdateService returned or by creation time.
async fn from_deployments_list(
    ecs: &aws_sdk_ecs::Client,
    f: &Follow<'_>,
    sp: &crate::ui::Spinner,
) -> Result<Seen> {
    let out = ecs
        .describe_services()
        .cluster(f.cluster)
        .services(f.service)
        .send()
        .await
        .context(format!("describe service {}", f.service))?;
    let svc = out.services().first().ok_or_else(|| {
        Error::failure(format!(
            "service {} not found in cluster {}",
            f.service, f.cluster
        ))
    })?;
    let since = (f.since.secs(), f.since.subsec_nanos());
    let ours = svc.deployments().iter().find(|d| match &f.deployment_id {
        Some(id) => d.id() == Some(id.as_str()),
        None => d
            .created_at()
            .is_some_and(|t| (t.secs(), t.subsec_nanos()) >= since),
    });
    let Some(d) = ours else {
        // moto's UpdateService changes the task definition without a new deployment; ECS
        // itself always creates one (and then the branch above finds it).
        if f.deployment_id.is_none()
            && svc.task_definition() == Some(f.task_definition)
            && svc.running_count() >= svc.desired_count()
        {
            return Ok(Seen::Completed);
        }
        if f.deployment_id.is_some() || svc.task_definition() != Some(f.task_definition) {
            return Ok(Seen::RolledBack(format!(
                "the deployment is gone; the service runs {}",
                svc.task_definition().unwrap_or("?")
            )));
        }
        return Ok(Seen::Going);
    };
    let state = d
        .rollout_state()
        .map(|r| r.as_str().to_string())
        .unwrap_or_default();
    sp.set_message(format!(
        "{}: {} running, {} pending of {} desired ({})",
        f.service,
        d.running_count(),
        d.pending_count(),
        d.desired_count(),
        if state.is_empty() {
            "IN_PROGRESS"
        } else {
            &state
        }
    ));
    Ok(match state.as_str() {
        "COMPLETED" => Seen::Completed,
        "FAILED" => Seen::RolledBack(
            d.rollout_state_reason()
                .unwrap_or("no reason given")
                .to_string(),
        ),
        _ if state.is_empty()
            && svc.deployments().len() == 1
            && d.running_count() >= d.desired_count() =>
        {
            Seen::Completed
        }
        _ => Seen::Going,
    })
}

#[cfg(test)]
mod tests {
    //! Scripted SDK fakes: moto never fails or rolls back an ECS deployment, and does not
    //! implement the service-deployment API.
    use super::*;
    use crate::error::ExitCode;
    use aws_sdk_ecs::operation::describe_services::DescribeServicesOutput;
    use aws_sdk_ecs::operation::list_service_deployments::ListServiceDeploymentsOutput;
    use aws_sdk_ecs::types::{
        Deployment, DeploymentRolloutState, Service, ServiceDeploymentStatus as S, ServiceEvent,
    };
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use std::time::Duration;

    fn fast() -> Wait {
        Wait {
            timeout: Duration::from_secs(5),
            min_poll: Duration::from_millis(1),
            max_poll: Duration::from_millis(5),
        }
    }

    const T0: i64 = 1_800_000_000;

    fn follow(td: &str) -> Follow<'_> {
        Follow {
            cluster: "c",
            service: "web",
            task_definition: td,
            since: aws_smithy_types::DateTime::from_secs(T0),
            deployment_id: None,
            rollback_on_interrupt: false,
            logs: None,
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

    /// The emulator's answer to an operation it does not implement.
    fn no_service_deployment_api() -> aws_smithy_mocks::Rule {
        mock!(aws_sdk_ecs::Client::list_service_deployments).then_http_response(|| {
            HttpResponse::new(
                StatusCode::try_from(500).expect("status"),
                SdkBody::from("<html>not implemented</html>"),
            )
        })
    }

    /// A deployment created after the update started (`since`), unless `old`.
    fn dep(td: &str, state: DeploymentRolloutState, running: i32) -> Deployment {
        Deployment::builder()
            .id("ecs-svc/2")
            .status("PRIMARY")
            .task_definition(td)
            .desired_count(1)
            .running_count(running)
            .created_at(aws_smithy_types::DateTime::from_secs(T0 + 1))
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
            .times(2)
            .build();
        let api = no_service_deployment_api();
        let ecs = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&rule, &api]);
        let s = wait_deployed(&ecs, &follow("td:2"), fast(), &Ui::silent())
            .await
            .unwrap();
        assert_eq!(s.rollout, "COMPLETED");
        // Three polls, then one describe for the final state.
        assert_eq!(rule.num_calls(), 4);
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
        let api = no_service_deployment_api();
        let ecs = mock_client!(
            aws_sdk_ecs,
            RuleMode::MatchAny,
            [&rule, &list, &tasks, &api]
        );
        let e = wait_deployed(&ecs, &follow("td:3"), fast(), &Ui::silent())
            .await
            .unwrap_err();
        assert_eq!(e.code(), ExitCode::RolledBack);
        assert!(e.message().contains("circuit breaker"), "{e}");
        assert!(e.message().contains("has started 1 tasks"), "{e}");
        // Why the new revision's tasks stopped, and only those.
        assert!(
            e.message()
                .contains("task aaa: Essential container in task exited; web exited 101"),
            "{e}"
        );
        assert!(!e.message().contains("task bbb"), "{e}");
    }

    #[tokio::test]
    async fn fake_rollback_to_previous_revision_is_not_success() {
        // After a rollback the service is stable again, on the OLD revision: the stock
        // waiter says success; we must not. The only deployment predates our update.
        let rule = mock!(aws_sdk_ecs::Client::describe_services).then_output(|| {
            let mut old = dep("td:1", DeploymentRolloutState::Completed, 1);
            old.created_at = Some(aws_smithy_types::DateTime::from_secs(T0 - 100));
            out(vec![old], "td:1")
        });
        let none = no_stopped_tasks();
        let api = no_service_deployment_api();
        let ecs = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&rule, &none, &api]);
        let e = wait_deployed(&ecs, &follow("td:4"), fast(), &Ui::silent())
            .await
            .unwrap_err();
        assert_eq!(e.code(), ExitCode::RolledBack);
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
        let api = no_service_deployment_api();
        let ecs = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&rule, &none, &api]);
        let wait = Wait {
            timeout: Duration::from_millis(30),
            ..fast()
        };
        let e = wait_deployed(&ecs, &follow("td:5"), wait, &Ui::silent())
            .await
            .unwrap_err();
        assert_eq!(e.code(), ExitCode::Timeout);
    }

    fn brief(n: i64, status: S, reason: &str) -> ServiceDeploymentBrief {
        ServiceDeploymentBrief::builder()
            .service_deployment_arn(format!(
                "arn:aws:ecs:us-east-1:1:service-deployment/c/web/d{n}"
            ))
            .created_at(aws_smithy_types::DateTime::from_secs(T0 + n))
            .status(status)
            .status_reason(reason)
            .build()
    }

    /// What ListServiceDeployments shows, poll after poll, for one change kind and outcome.
    fn script(kind: Kind, outcome: Outcome) -> Vec<Vec<ServiceDeploymentBrief>> {
        let ours = |s: S, r: &str| brief(1, s, r);
        let going = vec![ours(S::InProgress, "")];
        let last = match (kind, outcome) {
            (Kind::Replaced, _) => {
                vec![ours(S::Stopped, "superseded"), brief(2, S::InProgress, "")]
            }
            (Kind::Stopped, _) => vec![ours(S::Stopped, "stopped by a user")],
            (_, Outcome::Completed) => vec![ours(S::Successful, "")],
            (_, Outcome::Failed) => vec![ours(S::RollbackFailed, "tasks failed to start")],
            (_, Outcome::RolledBack) => {
                vec![ours(
                    S::RollbackSuccessful,
                    "ECS deployment circuit breaker: rolled back",
                )]
            }
            (_, Outcome::TimedOut) => going.clone(),
        };
        // A forced deployment (secret-only, forced, capacity move) may take a poll to show up.
        let first = match kind {
            Kind::SecretOnly | Kind::Forced | Kind::Capacity => vec![],
            _ => going.clone(),
        };
        vec![first, going, last]
    }

    #[derive(Debug, Clone, Copy)]
    enum Kind {
        NewTaskDefinition,
        SecretOnly,
        Forced,
        Capacity,
        Replaced,
        Stopped,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Outcome {
        Completed,
        Failed,
        RolledBack,
        TimedOut,
    }

    /// The verdict matrix: exit 0 only for the completion of our own deployment, 4 for a
    /// rollback, 3 past the deadline, 1 for anything else.
    #[tokio::test]
    async fn fake_verdict_matrix_of_change_kinds_and_outcomes() {
        use Kind::*;
        use Outcome::*;
        for kind in [
            NewTaskDefinition,
            SecretOnly,
            Forced,
            Capacity,
            Replaced,
            Stopped,
        ] {
            for outcome in [Completed, Failed, RolledBack, TimedOut] {
                let polls = script(kind, outcome);
                let n = polls.len();
                let mut b = mock!(aws_sdk_ecs::Client::list_service_deployments).sequence();
                for p in polls {
                    b = b.output(move || {
                        ListServiceDeploymentsOutput::builder()
                            .set_service_deployments(Some(p.clone()))
                            .build()
                    });
                }
                let last = script(kind, outcome).pop().unwrap_or_default();
                let list = b
                    .output(move || {
                        ListServiceDeploymentsOutput::builder()
                            .set_service_deployments(Some(last.clone()))
                            .build()
                    })
                    .repeatedly()
                    .build();
                let svc = mock!(aws_sdk_ecs::Client::describe_services).then_output(|| {
                    out(
                        vec![dep("td:2", DeploymentRolloutState::Completed, 1)],
                        "td:2",
                    )
                });
                let none = no_stopped_tasks();
                let ecs = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&list, &svc, &none]);
                let wait = Wait {
                    timeout: Duration::from_millis(60),
                    ..fast()
                };
                let mut f = follow("td:2");
                if matches!(kind, SecretOnly | Forced | Capacity) {
                    f.deployment_id = Some("ecs-svc/2".into());
                }
                let got = wait_deployed(&ecs, &f, wait, &Ui::silent())
                    .await
                    .map(|_| ExitCode::Success)
                    .unwrap_or_else(|e| e.code());
                let want = match (kind, outcome) {
                    (Replaced | Stopped, _) => ExitCode::Failure,
                    (_, Completed) => ExitCode::Success,
                    (_, RolledBack) => ExitCode::RolledBack,
                    (_, TimedOut) => ExitCode::Timeout,
                    (_, Failed) => ExitCode::Failure,
                };
                assert_eq!(got, want, "{kind:?} x {outcome:?} ({n} scripted polls)");
            }
        }
    }

    #[test]
    fn an_old_completed_deployment_is_never_ours() {
        // Only deployments created since the update started are listed: none yet is "going".
        assert_eq!(classify(&[]), Seen::Going);
        assert_eq!(classify(&[brief(1, S::Successful, "")]), Seen::Completed);
    }
}
