//! Extract: where prices come from. A trait so other APIs can be added beside cryptocompare.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;
use serde_json::Value;

use crate::config::SourceKind;

/// One price as the source reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    pub symbol: String,
    pub currency: String,
    pub price: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("price API at {endpoint} unreachable after {attempts} attempt(s): {reason}")]
    Unreachable {
        endpoint: String,
        attempts: u32,
        reason: String,
    },
    #[error("price API at {endpoint} answered HTTP {status} after {attempts} attempt(s)")]
    Status {
        endpoint: String,
        status: u16,
        attempts: u32,
    },
    #[error("price API returned an error: {0}")]
    Api(String),
    #[error(
        "price API at {endpoint}: {reason}; raise SOURCE_MAX_BYTES if such replies are expected"
    )]
    TooLarge { endpoint: String, reason: String },
    #[error(
        "malformed price payload: {0} (expected cryptocompare pricemulti JSON like {{\"BTC\":{{\"USD\":91234.5}}}})"
    )]
    Malformed(String),
}

pub trait PriceSource: Send + Sync {
    /// Where the prices come from, safe to log (no query string, which may hold an API key).
    fn describe(&self) -> String;
    fn fetch(&self) -> BoxFuture<'_, Result<Vec<Quote>, SourceError>>;
}

pub fn build(
    kind: &SourceKind,
    timeout: Duration,
    retries: u32,
    max_bytes: usize,
) -> Result<Box<dyn PriceSource>, crate::http::ClientError> {
    Ok(match kind {
        SourceKind::Http(url) => {
            Box::new(HttpSource::new(url.clone(), timeout, retries, max_bytes)?)
        }
        SourceKind::Simulated => Box::new(SimulatedSource::new()),
    })
}

/// Parses cryptocompare `pricemulti`: `{"BTC":{"USD":1.0,"EUR":0.9},"ETH":{...}}`.
/// Output is sorted by symbol then currency so files are deterministic.
pub fn parse_pricemulti(body: &[u8]) -> Result<Vec<Quote>, SourceError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| SourceError::Malformed(format!("not JSON ({e})")))?;
    let Value::Object(symbols) = value else {
        return Err(SourceError::Malformed("top level is not an object".into()));
    };
    // cryptocompare reports errors with HTTP 200 and this shape.
    if symbols.get("Response").and_then(Value::as_str) == Some("Error") {
        let msg = symbols
            .get("Message")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        return Err(SourceError::Api(msg.chars().take(300).collect()));
    }
    let mut out = Vec::new();
    let sorted: BTreeMap<_, _> = symbols.into_iter().collect();
    for (symbol, currencies) in sorted {
        let Value::Object(currencies) = currencies else {
            return Err(SourceError::Malformed(format!(
                "`{symbol}` is not an object of currency prices"
            )));
        };
        let sorted: BTreeMap<_, _> = currencies.into_iter().collect();
        for (currency, price) in sorted {
            let price = price
                .as_f64()
                .filter(|p| p.is_finite() && *p >= 0.0)
                .ok_or_else(|| {
                    SourceError::Malformed(format!(
                        "`{symbol}.{currency}` is not a non-negative number"
                    ))
                })?;
            out.push(Quote {
                symbol: symbol.clone(),
                currency,
                price,
            });
        }
    }
    if out.is_empty() {
        return Err(SourceError::Malformed("no prices in payload".into()));
    }
    Ok(out)
}

pub struct HttpSource {
    client: reqwest::Client,
    url: reqwest::Url,
    retries: u32,
    /// Replies above this are refused unread (or as soon as the stream passes it).
    max_bytes: usize,
}

impl HttpSource {
    pub fn new(
        url: reqwest::Url,
        timeout: Duration,
        retries: u32,
        max_bytes: usize,
    ) -> Result<Self, crate::http::ClientError> {
        let client = crate::http::client("the price API", timeout, Duration::from_secs(5), |b| {
            b.user_agent(concat!("price-stream/", env!("CARGO_PKG_VERSION")))
        })?;
        Ok(HttpSource {
            client,
            url,
            retries,
            max_bytes,
        })
    }

    async fn attempt(&self) -> Result<Vec<Quote>, Attempt> {
        let resp = self
            .client
            .get(self.url.clone())
            .send()
            .await
            // without_url: the query may carry an api_key.
            .map_err(|e| Attempt::Retry(crate::logs::http_error(e)))?;
        let status = resp.status();
        if !status.is_success() {
            let retry = status.is_server_error() || status.as_u16() == 429;
            return Err(if retry {
                Attempt::RetryStatus(status.as_u16())
            } else {
                Attempt::Fatal(SourceError::Status {
                    endpoint: redacted_endpoint(&self.url),
                    status: status.as_u16(),
                    attempts: 1,
                })
            });
        }
        let body = match crate::body::read_capped(resp, self.max_bytes).await {
            Ok(b) => b,
            Err(crate::body::BodyError::Transport(e)) => return Err(Attempt::Retry(e)),
            // The same source will send the same oversized reply again: fail the run now.
            Err(e @ crate::body::BodyError::TooLarge { .. }) => {
                return Err(Attempt::Fatal(SourceError::TooLarge {
                    endpoint: redacted_endpoint(&self.url),
                    reason: e.to_string(),
                }));
            }
        };
        // A malformed payload will not get better by asking again right away.
        parse_pricemulti(&body).map_err(Attempt::Fatal)
    }
}

enum Attempt {
    Retry(String),
    RetryStatus(u16),
    Fatal(SourceError),
}

/// scheme://host[:port]/path, without the query (API keys live there).
pub fn redacted_endpoint(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

/// The source's retries: `times` waits from 200 ms doubling to 5 s, with jitter.
fn retries(times: u32) -> ExponentialBuilder {
    schedule(Duration::from_millis(200), Duration::from_secs(5)).with_max_times(times as usize)
}

/// The flow's one backoff schedule (backon's): waits doubling from `base` to `cap`, each drawn
/// from [w/2, w) (backon's jitter adds up to the delay itself, so it starts from half).
pub fn schedule(base: Duration, cap: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(base / 2)
        .with_max_delay(cap / 2)
        .without_max_times()
        .with_jitter()
}

/// The wait after `attempt` earlier consecutive failures, for loops that pace themselves
/// (the runner after failed iterations, the reporter while Prefect is down).
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    use backon::BackoffBuilder;
    schedule(base, cap)
        .build()
        .nth(attempt.min(32) as usize)
        .unwrap_or(cap)
}

impl PriceSource for HttpSource {
    fn describe(&self) -> String {
        redacted_endpoint(&self.url)
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Vec<Quote>, SourceError>> {
        Box::pin(async move {
            let attempts = std::sync::atomic::AtomicU32::new(0);
            let outcome = (|| {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.attempt()
            })
            .retry(retries(self.retries))
            .when(|f| !matches!(f, Attempt::Fatal(_)))
            .await;
            let attempts = attempts.into_inner();
            let endpoint = || redacted_endpoint(&self.url);
            match outcome {
                Ok(quotes) => Ok(quotes),
                Err(Attempt::Fatal(SourceError::Status { status, .. }))
                | Err(Attempt::RetryStatus(status)) => Err(SourceError::Status {
                    endpoint: endpoint(),
                    status,
                    attempts,
                }),
                Err(Attempt::Fatal(e)) => Err(e),
                Err(Attempt::Retry(reason)) => Err(SourceError::Unreachable {
                    endpoint: endpoint(),
                    attempts,
                    reason,
                }),
            }
        })
    }
}

/// Offline demo source: a multiplicative random walk, each step uniform in +-0.5 %,
/// starting from BTC 90,000 USD and ETH 3,000 USD. Chosen only with SOURCE_URL=simulated.
pub struct SimulatedSource {
    prices: Mutex<Vec<Quote>>,
}

impl SimulatedSource {
    pub fn new() -> Self {
        let q = |s: &str, p: f64| Quote {
            symbol: s.into(),
            currency: "USD".into(),
            price: p,
        };
        SimulatedSource {
            prices: Mutex::new(vec![q("BTC", 90_000.0), q("ETH", 3_000.0)]),
        }
    }
}

impl Default for SimulatedSource {
    fn default() -> Self {
        Self::new()
    }
}

impl PriceSource for SimulatedSource {
    fn describe(&self) -> String {
        "simulated random walk".into()
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Vec<Quote>, SourceError>> {
        Box::pin(async move {
            let mut prices = self
                .prices
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for q in prices.iter_mut() {
                let step = (fastrand::f64() - 0.5) * 0.01;
                q.price = (q.price * (1.0 + step) * 100.0).round() / 100.0;
            }
            Ok(prices.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pricemulti_sorted() {
        let q = parse_pricemulti(br#"{"ETH":{"USD":3000.5},"BTC":{"USD":91234.5,"EUR":80000}}"#)
            .unwrap();
        let flat: Vec<_> = q
            .iter()
            .map(|q| (q.symbol.as_str(), q.currency.as_str(), q.price))
            .collect();
        assert_eq!(
            flat,
            vec![
                ("BTC", "EUR", 80000.0),
                ("BTC", "USD", 91234.5),
                ("ETH", "USD", 3000.5)
            ]
        );
    }

    #[test]
    fn malformed_payloads_are_clear_errors() {
        for body in [
            &b"<html>"[..],
            b"[1,2]",
            b"{}",
            br#"{"BTC":5}"#,
            br#"{"BTC":{"USD":"x"}}"#,
            br#"{"BTC":{"USD":-1}}"#,
        ] {
            let err = parse_pricemulti(body).unwrap_err();
            assert!(matches!(err, SourceError::Malformed(_)), "{err}");
        }
        let err = parse_pricemulti(br#"{"Response":"Error","Message":"rate limit"}"#).unwrap_err();
        assert!(err.to_string().contains("rate limit"));
    }

    #[test]
    fn endpoint_redaction_drops_query_and_credentials() {
        let u = reqwest::Url::parse("https://u:p@x.example/data?api_key=SECRET").unwrap();
        let r = redacted_endpoint(&u);
        assert!(!r.contains("SECRET") && !r.contains(":p@"), "{r}");
    }

    #[test]
    fn retries_wait_times_times_and_cap() {
        use backon::BackoffBuilder;
        let waits: Vec<Duration> = retries(6).build().collect();
        assert_eq!(waits.len(), 6);
        assert!(waits[0] >= Duration::from_millis(100) && waits[0] < Duration::from_millis(200));
        assert!(
            waits.iter().all(|w| *w < Duration::from_secs(5)),
            "{waits:?}"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = Duration::from_millis(100);
        let cap = Duration::from_secs(1);
        assert!(backoff(0, b, cap) <= b);
        assert!(backoff(0, b, cap) >= b / 2);
        assert!(backoff(10, b, cap) <= cap);
        assert!(backoff(10, b, cap) >= cap / 2);
        assert!(backoff(u32::MAX, b, cap) >= cap / 2);
    }

    #[tokio::test]
    async fn simulated_walk_stays_positive() {
        let s = SimulatedSource::new();
        for _ in 0..100 {
            let q = s.fetch().await.unwrap();
            assert_eq!(q.len(), 2);
            assert!(q.iter().all(|q| q.price > 0.0));
        }
    }
}
