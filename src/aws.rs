//! One `SdkConfig` for the whole run (profile, region, endpoint), and the clients built from it.

use crate::error::{Error, Result};
use aws_config::{BehaviorVersion, Region};
use aws_sdk_cloudformation as cfn;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, Metadata};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where to reach AWS. Empty fields fall back to the SDK's own chain (env, profile, IMDS);
/// `AWS_ENDPOINT_URL` works through aws-config even without `--endpoint-url`.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub profile: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// SDK retry attempts (an emulator answers unimplemented calls with retriable 500s).
    pub max_attempts: Option<u32>,
    /// Bound on each API call, retries included (`--api-timeout`); None: [`API_TIMEOUT`].
    pub api_timeout: Option<Duration>,
}

/// Default bound on one API call, retries included (`--api-timeout`, DEPLOYER_API_TIMEOUT).
/// Each attempt gets half of it and the connect timeout is [`CONNECT_TIMEOUT`], so a hung
/// endpoint is named after at most this long and a refused one at once.
pub const API_TIMEOUT: Duration = Duration::from_secs(60);
/// TCP+TLS connect bound (also capped by the API timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// SDK attempts per call (adaptive mode: throttling also slows the client down).
pub const MAX_ATTEMPTS: u32 = 3;

/// The SDK timeouts for one API-call bound.
pub fn timeouts(api: Duration) -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT.min(api))
        .operation_attempt_timeout(api / 2)
        .operation_timeout(api)
        .build()
}

/// The error an interceptor returns for a mutating call refused after an interrupt.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not started: {} (interrupted)", self.0)
    }
}

impl std::error::Error for Refused {}

/// Counts every AWS API call by `Service.Operation` (reported with `-v` and in `--json`),
/// so "a no-op deploy makes no mutating call" is something a test can check.
#[derive(Debug, Clone, Default)]
pub struct CallCounter(Arc<Mutex<BTreeMap<String, u32>>>);

impl CallCounter {
    pub fn snapshot(&self) -> BTreeMap<String, u32> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Calls that may change something (everything but Describe/Get/List reads).
    pub fn mutating(&self) -> BTreeMap<String, u32> {
        self.snapshot()
            .into_iter()
            .filter(|(op, _)| !is_read_only(op))
            .collect()
    }
}

fn is_read_only(op: &str) -> bool {
    let name = op.rsplit('.').next().unwrap_or(op);
    [
        "Describe",
        "Get",
        "List",
        "BatchGet",
        "BatchCheck",
        "Validate",
        "Filter",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }

    /// After an interrupt no mutating call starts, except inside `interrupt::undo`.
    /// (Once per call, before any attempt: the operation's metadata is known by then.)
    fn read_before_serialization(
        &self,
        _ctx: &BeforeSerializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>() {
            let op = format!("{}.{}", m.service(), m.name());
            if !is_read_only(&op) && !crate::interrupt::may_change() {
                return Err(Box::new(Refused(op)));
            }
        }
        Ok(())
    }

    fn read_before_transmit(
        &self,
        _ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>()
            && let Ok(mut map) = self.0.lock()
        {
            *map.entry(format!("{}.{}", m.service(), m.name()))
                .or_default() += 1;
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct Clients {
    pub calls: CallCounter,
    pub region: String,
    pub cfn: cfn::Client,
    pub ecr: aws_sdk_ecr::Client,
    /// EC2, read-only: an `existing` network's VPC, subnets and security groups (preflight).
    pub ec2: aws_sdk_ec2::Client,
    pub ecs: aws_sdk_ecs::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub sts: aws_sdk_sts::Client,
    /// CloudWatch Logs (src/cloudwatch.rs): `logs`, failed tasks' last lines, teardown.
    pub logs: aws_sdk_cloudwatchlogs::Client,
    /// S3 for the data lake (src/lake.rs), counted with the deployment's calls.
    pub s3_data: aws_sdk_s3::Client,
    /// The deploy lock's store (src/lock.rs), counted apart in `lock_calls` so a no-op
    /// deploy still shows zero mutating calls in `calls`.
    pub s3: aws_sdk_s3::Client,
    pub lock_calls: CallCounter,
}

impl Clients {
    /// Kept whole: one loader, then one client per service, all counted by the same
    /// interceptor.
    pub async fn new(target: &Target) -> Result<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(p) = &target.profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = &target.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(url) = &target.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        // Adaptive: on throttling the client also paces itself instead of retrying at once.
        loader = loader
            .retry_config(
                aws_config::retry::RetryConfig::adaptive()
                    .with_max_attempts(target.max_attempts.unwrap_or(MAX_ATTEMPTS)),
            )
            .timeout_config(timeouts(target.api_timeout.unwrap_or(API_TIMEOUT)));
        let sdk = loader.load().await;
        let region = sdk
            .region()
            .map(std::string::ToString::to_string)
            .ok_or_else(|| {
                Error::bad_input("no AWS region configured").with_help(
                    "set `region:` in deployer.yaml, pass --region, or export AWS_REGION",
                )
            })?;
        let calls = CallCounter::default();
        let lock_calls = CallCounter::default();
        let c = calls.clone();
        Ok(Self {
            region,
            cfn: cfn::Client::from_conf(
                cfn::config::Builder::from(&sdk)
                    .interceptor(c.clone())
                    .build(),
            ),
            ecr: aws_sdk_ecr::Client::from_conf(
                aws_sdk_ecr::config::Builder::from(&sdk)
                    .interceptor(c.clone())
                    .build(),
            ),
            ec2: aws_sdk_ec2::Client::from_conf(
                aws_sdk_ec2::config::Builder::from(&sdk)
                    .interceptor(c.clone())
                    .build(),
            ),
            ecs: aws_sdk_ecs::Client::from_conf(
                aws_sdk_ecs::config::Builder::from(&sdk)
                    .interceptor(c.clone())
                    .build(),
            ),
            ssm: aws_sdk_ssm::Client::from_conf(
                aws_sdk_ssm::config::Builder::from(&sdk)
                    .interceptor(c.clone())
                    .build(),
            ),
            sts: aws_sdk_sts::Client::from_conf(
                aws_sdk_sts::config::Builder::from(&sdk)
                    .interceptor(c.clone())
                    .build(),
            ),
            logs: aws_sdk_cloudwatchlogs::Client::from_conf(
                aws_sdk_cloudwatchlogs::config::Builder::from(&sdk)
                    .interceptor(c.clone())
                    .build(),
            ),
            s3_data: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&sdk)
                    .interceptor(c)
                    .force_path_style(sdk.endpoint_url().is_some())
                    .build(),
            ),
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&sdk)
                    .interceptor(lock_calls.clone())
                    // Emulators and custom endpoints serve buckets by path, not by host name.
                    .force_path_style(sdk.endpoint_url().is_some())
                    .build(),
            ),
            lock_calls,
            calls,
        })
    }
}

/// Who we are deploying as (STS GetCallerIdentity).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Identity {
    pub account: String,
    pub arn: String,
}

impl Identity {
    /// The ARN partition (`aws`, `aws-cn`, `aws-us-gov`) from the caller's own ARN.
    pub fn partition(&self) -> &str {
        self.arn
            .split(':')
            .nth(1)
            .filter(|p| !p.is_empty())
            .unwrap_or("aws")
    }
}

pub async fn identity(sts: &aws_sdk_sts::Client) -> Result<Identity> {
    let out = sts
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| failure("cannot verify AWS credentials (sts:GetCallerIdentity)", e))?;
    Ok(Identity {
        account: out.account().unwrap_or_default().to_string(),
        arn: out.arn().unwrap_or_default().to_string(),
    })
}

/// A readable one-line description of any SDK error: `code: message (request id …)` when the
/// service answered, the transport's own account otherwise (never a debug dump).
pub fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let id = e
                .meta()
                .extra("aws_request_id")
                .map(|id| format!(" (request id {id})"))
                .unwrap_or_default();
            match (e.code(), e.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}{id}"),
                (Some(c), None) => format!("{c}{id}"),
                _ => format!("{}{id}", DisplayErrorContext(err)),
            }
        }
        _ => DisplayErrorContext(err).to_string(),
    }
}

/// `.context("describe stack {name}")?`: an SDK error as the deployer's error, named by what
/// was being done, with the exit code and help that match its cause ([`failure`]).
pub trait Context<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T>;
}

impl<T, E> Context<T> for std::result::Result<T, SdkError<E, HttpResponse>>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| failure(&what.to_string(), e))
    }
}

/// `what: <error>` ([`crate::error::Kind::Aws`], keeping the SDK error as its source) with the
/// help line that matches the cause (credentials, throttling, unreachable, timeout,
/// permission, server error); the cause also picks the exit code.
pub fn failure<E>(what: &str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let cause = crate::retry::classify(&err);
    let e: Error = crate::error::Kind::Aws {
        what: what.to_string(),
        detail: describe(&err),
        cause,
        source: Box::new(err),
    }
    .into();
    match cause.help() {
        Some(h) => e.with_help(h),
        None => e,
    }
}

/// The error's service message, if any (for matching well-known CloudFormation messages).
pub fn message<E, R>(err: &aws_sdk_cloudformation::error::SdkError<E, R>) -> Option<String>
where
    E: aws_sdk_cloudformation::error::ProvideErrorMetadata,
{
    err.as_service_error()
        .and_then(|e| e.message())
        .map(str::to_string)
}

#[cfg(test)]
mod partition_tests {
    use super::Identity;

    #[test]
    fn partition_comes_from_the_callers_arn() {
        let id = |arn: &str| Identity {
            account: "1".into(),
            arn: arn.into(),
        };
        assert_eq!(id("arn:aws:iam::1:user/a").partition(), "aws");
        assert_eq!(
            id("arn:aws-cn:sts::1:assumed-role/r/s").partition(),
            "aws-cn"
        );
        assert_eq!(id("arn:aws-us-gov:iam::1:role/r").partition(), "aws-us-gov");
        assert_eq!(id("").partition(), "aws");
    }
}
