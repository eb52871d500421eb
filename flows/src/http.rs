//! Every HTTP client of the flow is built here. A client that cannot be built (no TLS
//! provider, an unreadable system configuration) stops the flow at start, naming which one:
//! falling back to `Client::default()` would silently drop its timeouts and caps.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for {what}: {source}")]
pub struct ClientError {
    what: &'static str,
    #[source]
    source: reqwest::Error,
}

/// A client with a whole-request `timeout` and a connect timeout of at most `connect`.
pub fn client(
    what: &'static str,
    timeout: Duration,
    connect: Duration,
    more: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client, ClientError> {
    more(
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(connect)),
    )
    .build()
    .map_err(|source| ClientError { what, source })
}
