//! What an AWS error means (typed, from the SDK's error kind, the service's error code and the
//! HTTP status: never by searching the message text), and the one retry mechanism for
//! polls that must survive blips (`backon`).
//!
//! The SDK's own retries (adaptive mode, src/aws.rs) absorb short bursts inside one call.
//! A wait that polls for minutes needs more: a poll that still fails transiently after
//! those attempts is retried with backoff within the wait's deadline ([`poll`]); only a
//! persistent failure (the blip budget spent) or the deadline ends the wait.

use aws_sdk_cloudformation::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use backon::{ExponentialBuilder, Retryable};
use std::future::Future;
use std::time::Duration;

/// Why a call failed, as far as the fix is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// No credentials, or the service rejected them (unknown key, bad signature, expired).
    Credentials,
    /// The service asked us to slow down.
    Throttling,
    /// The credentials are valid but lack a permission.
    PermissionDenied,
    /// No connection: refused, reset, DNS, TLS, or the connect timeout.
    Unreachable,
    /// Connected, but no answer within the attempt or operation timeout.
    Timeout,
    /// The service failed (HTTP 5xx) or sent a response that could not be read.
    ServerError,
    /// The deployer refused to start a mutating call after an interrupt.
    Interrupted,
    /// Anything else (validation errors, missing resources): not retried.
    Other,
}

impl Cause {
    /// Worth trying again later: the same request may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Cause::Throttling | Cause::Unreachable | Cause::Timeout | Cause::ServerError
        )
    }

    /// The next action for this cause, or None when the service's own message says it.
    pub fn help(self) -> Option<&'static str> {
        Some(match self {
            Cause::Credentials => {
                "configure credentials: AWS_PROFILE / --profile, OIDC in GitHub Actions, or AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones)"
            }
            Cause::Throttling => {
                "AWS is throttling this account's API calls (other tools or deploys share the limit): wait a minute and run the command again"
            }
            Cause::PermissionDenied => {
                "the credentials work but lack a permission: grant the action named above to this identity (see README \"Permissions\")"
            }
            Cause::Unreachable => {
                "the AWS endpoint cannot be reached: check the network, proxy settings, --region and --endpoint-url / AWS_ENDPOINT_URL"
            }
            Cause::Timeout => {
                "the AWS endpoint did not answer in time, or kept throttling (the adaptive retry mode waits between attempts): check the network and --endpoint-url, or raise --api-timeout (DEPLOYER_API_TIMEOUT)"
            }
            Cause::ServerError => {
                "AWS answered with a server error: it is usually brief, run the command again"
            }
            Cause::Interrupted | Cause::Other => return None,
        })
    }
}

const CREDENTIAL_CODES: &[&str] = &[
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidAccessKeyId",
    "AuthFailure",
    "IncompleteSignature",
    "MissingAuthenticationToken",
];
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
    "ProvisionedThroughputExceededException",
];
const PERMISSION_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedException",
];

/// The cause of one SDK error.
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> Cause
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::TimeoutError(_) => Cause::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => Cause::Unreachable,
        SdkError::DispatchFailure(d) if d.is_io() => Cause::Unreachable,
        SdkError::DispatchFailure(_) => source_cause(err).unwrap_or(Cause::Unreachable),
        SdkError::ResponseError(_) => Cause::ServerError,
        SdkError::ConstructionFailure(_) => source_cause(err).unwrap_or(Cause::Other),
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            by_code(se.err().code()).unwrap_or(match status {
                429 => Cause::Throttling,
                500..=599 => Cause::ServerError,
                401 => Cause::Credentials,
                403 => Cause::PermissionDenied,
                _ => Cause::Other,
            })
        }
        _ => Cause::Other,
    }
}

fn by_code(code: Option<&str>) -> Option<Cause> {
    let code = code?;
    [
        (CREDENTIAL_CODES, Cause::Credentials),
        (THROTTLING_CODES, Cause::Throttling),
        (PERMISSION_CODES, Cause::PermissionDenied),
    ]
    .into_iter()
    .find(|(codes, _)| codes.contains(&code))
    .map(|(_, cause)| cause)
}

/// Causes the SDK wraps inside a failure: a missing credentials provider, our own refusal.
fn source_cause(err: &(dyn std::error::Error + 'static)) -> Option<Cause> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if e.is::<aws_credential_types::provider::error::CredentialsError>() {
            return Some(Cause::Credentials);
        }
        if e.is::<crate::aws::Refused>() {
            return Some(Cause::Interrupted);
        }
        next = e.source();
    }
    None
}

/// Backoff for a poll that fails transiently: how long one blip may last in total.
#[derive(Debug, Clone, Copy)]
pub struct Blips {
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Total time spent retrying one poll before its failure counts as persistent.
    pub budget: Duration,
}

impl Default for Blips {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(5),
            budget: Duration::from_secs(60),
        }
    }
}

/// Run one poll, retrying it while it fails transiently, for at most `blips.budget` or
/// until `remaining` (the wait's deadline) is spent, whichever comes first. `on_retry`
/// hears each retried failure (for a progress line).
pub async fn poll<T, E, F, Fut>(
    blips: Blips,
    remaining: Duration,
    mut call: F,
    on_retry: impl Fn(Cause, Duration),
) -> Result<T, SdkError<E, HttpResponse>>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(blips.first_delay)
        .with_max_delay(blips.max_delay)
        .with_total_delay(Some(blips.budget.min(remaining)))
        .without_max_times()
        .with_jitter();
    (|| call())
        .retry(backoff)
        .when(|e| classify(e).is_transient())
        .notify(|e, d| on_retry(classify(e), d))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_cloudformation::operation::describe_stacks::DescribeStacksError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn service(code: Option<&str>, status: u16) -> SdkError<DescribeStacksError, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message("m");
        if let Some(c) = code {
            meta = meta.code(c);
        }
        SdkError::service_error(
            DescribeStacksError::generic(meta.build()),
            HttpResponse::new(
                StatusCode::try_from(status).expect("status"),
                SdkBody::empty(),
            ),
        )
    }

    #[test]
    fn causes_come_from_codes_and_statuses_not_message_text() {
        assert_eq!(
            classify(&service(Some("Throttling"), 400)),
            Cause::Throttling
        );
        assert_eq!(
            classify(&service(Some("InvalidClientTokenId"), 403)),
            Cause::Credentials
        );
        assert_eq!(
            classify(&service(Some("AccessDenied"), 403)),
            Cause::PermissionDenied
        );
        assert_eq!(classify(&service(None, 502)), Cause::ServerError);
        assert_eq!(classify(&service(None, 429)), Cause::Throttling);
        assert_eq!(
            classify(&service(Some("ValidationError"), 400)),
            Cause::Other
        );
        assert!(Cause::Throttling.is_transient() && !Cause::Credentials.is_transient());
        assert!(Cause::Credentials.help().unwrap().contains("credentials"));
        assert!(
            !Cause::Throttling
                .help()
                .unwrap()
                .contains("configure credentials")
        );
    }

    fn fast() -> Blips {
        Blips {
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            budget: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_poll_survives_a_burst_of_500s_and_stops_on_a_persistent_error() {
        let calls = AtomicU32::new(0);
        let r = poll(
            fast(),
            Duration::from_secs(5),
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=3 => Err(service(None, 500)),
                    _ => Ok(7),
                }
            },
            |_, _| {},
        )
        .await;
        assert_eq!(r.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 5);

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = poll(
            fast(),
            Duration::from_secs(5),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(service(Some("ValidationError"), 400))
            },
            |_, _| {},
        )
        .await;
        assert!(r.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a non-transient error is not retried"
        );
    }

    #[tokio::test]
    async fn a_blip_that_outlasts_the_budget_ends_the_poll() {
        let blips = Blips {
            budget: Duration::from_millis(30),
            ..fast()
        };
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = poll(
            blips,
            Duration::from_secs(5),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(service(Some("Throttling"), 400))
            },
            |_, _| {},
        )
        .await;
        assert_eq!(classify(&r.unwrap_err()), Cause::Throttling);
        assert!(calls.load(Ordering::SeqCst) > 2);
    }
}
