//! Ctrl-C (or CI's cancel) during a rollout wait, with a scripted SDK fake of ECS's
//! service-deployment API (moto implements neither it nor an in-progress deployment).
//! With `--rollback-on-interrupt` the wait stops our deployment with a rollback
//! (StopServiceDeployment, stop type ROLLBACK) and exits 130 at once; without it the
//! deployment is left to run on. The interrupt is process-global: one test runs both cases.

use aws_sdk_ecs::operation::describe_services::DescribeServicesOutput;
use aws_sdk_ecs::operation::list_service_deployments::ListServiceDeploymentsOutput;
use aws_sdk_ecs::operation::stop_service_deployment::StopServiceDeploymentOutput;
use aws_sdk_ecs::types::{
    Service, ServiceDeploymentBrief, ServiceDeploymentStatus, StopServiceDeploymentStopType,
};
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use deployer::error::ExitCode;
use deployer::rollout::track::{self, Follow};
use deployer::stacks::Wait;
use deployer::ui::Ui;
use std::time::{Duration, Instant};

const ARN: &str = "arn:aws:ecs:us-east-1:123456789012:service-deployment/c/web/abc";

#[tokio::test]
async fn fake_interrupted_rollout_is_rolled_back_when_asked_and_left_running_otherwise() {
    for rollback in [true, false] {
        deployer::interrupt::reset();
        let list = mock!(aws_sdk_ecs::Client::list_service_deployments).then_output(|| {
            ListServiceDeploymentsOutput::builder()
                .service_deployments(
                    ServiceDeploymentBrief::builder()
                        .service_deployment_arn(ARN)
                        .created_at(aws_smithy_types::DateTime::from_secs(1_800_000_001))
                        .status(ServiceDeploymentStatus::InProgress)
                        .build(),
                )
                .build()
        });
        let stop = mock!(aws_sdk_ecs::Client::stop_service_deployment)
            .match_requests(|r| {
                r.service_deployment_arn() == Some(ARN)
                    && r.stop_type() == Some(&StopServiceDeploymentStopType::Rollback)
            })
            .then_output(|| StopServiceDeploymentOutput::builder().build());
        let svc = mock!(aws_sdk_ecs::Client::describe_services).then_output(|| {
            DescribeServicesOutput::builder()
                .services(Service::builder().service_name("web").build())
                .build()
        });
        let ecs = mock_client!(aws_sdk_ecs, RuleMode::MatchAny, [&list, &stop, &svc]);
        let follow = Follow {
            cluster: "c",
            service: "web",
            task_definition: "td:2",
            since: aws_smithy_types::DateTime::from_secs(1_800_000_000),
            deployment_id: None,
            rollback_on_interrupt: rollback,
            logs: None,
        };
        let wait = Wait {
            timeout: Duration::from_secs(60),
            min_poll: Duration::from_millis(20),
            max_poll: Duration::from_millis(50),
        };
        let cancel = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            deployer::interrupt::trigger();
        });
        let started = Instant::now();
        let e = track::wait_deployed(&ecs, &follow, wait, &Ui::silent())
            .await
            .expect_err("an interrupted rollout is not a success");
        let _ = cancel.await;
        assert_eq!(e.code(), ExitCode::Interrupted, "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the cancel took {:?} (CI sends SIGTERM 7.5 s after SIGINT)",
            started.elapsed()
        );
        if rollback {
            assert_eq!(
                stop.num_calls(),
                1,
                "the deployment was not stopped with a rollback"
            );
            assert!(e.message().contains("being rolled back by ECS"), "{e}");
            assert!(
                e.message().contains("describe-service-deployments"),
                "how to watch it: {e}"
            );
        } else {
            assert_eq!(
                stop.num_calls(),
                0,
                "the deployment was stopped although not asked"
            );
            assert!(e.message().contains("goes on in ECS"), "{e}");
        }
    }
}
