//! Alert: compare a price with a threshold read every iteration; post to Slack once per
//! downward crossing, log the recovery.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{AlertSettings, Secret};
use crate::prefect::PrefectClient;

/// Where this iteration's threshold came from (logged, so operators can see which one won).
#[derive(Debug, Clone, PartialEq)]
pub enum ThresholdOrigin {
    Variable(String),
    Block(String),
    Environment,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub value: f64,
    pub origin: ThresholdOrigin,
}

/// Accepts `20000`, `20000.5` and `"20000"` (Variables hold any JSON; blocks hold strings).
pub fn parse_threshold(v: &Value) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().replace([',', '_'], "").parse::<f64>().ok(),
        _ => None,
    }?;
    (n.is_finite() && n > 0.0).then_some(n)
}

/// Variable first, then String block, then PRICE_THRESHOLD. Prefect errors fall through to
/// the next source (and are returned as notes for the log), so a dead Prefect never blocks
/// alerting on the environment value.
pub async fn resolve_threshold(
    settings: &AlertSettings,
    prefect: Option<&Arc<PrefectClient>>,
    budget: Duration,
) -> (Option<Threshold>, Vec<String>) {
    let mut notes = Vec::new();
    if let Some(client) = prefect {
        if let Some(name) = &settings.variable {
            match tokio::time::timeout(budget, client.variable(name)).await {
                Ok(Ok(Some(v))) => match parse_threshold(&v) {
                    Some(value) => {
                        return (
                            Some(Threshold {
                                value,
                                origin: ThresholdOrigin::Variable(name.clone()),
                            }),
                            notes,
                        );
                    }
                    None => notes.push(format!("variable `{name}` is not a positive number: {v}")),
                },
                Ok(Ok(None)) => notes.push(format!("variable `{name}` not found")),
                Ok(Err(e)) => notes.push(format!("variable `{name}` unreadable: {e}")),
                Err(_) => notes.push(format!("variable `{name}` read timed out")),
            }
        }
        if let Some(name) = &settings.block {
            match tokio::time::timeout(budget, client.string_block(name)).await {
                Ok(Ok(Some(v))) => match parse_threshold(&v) {
                    Some(value) => {
                        return (
                            Some(Threshold {
                                value,
                                origin: ThresholdOrigin::Block(name.clone()),
                            }),
                            notes,
                        );
                    }
                    None => notes.push(format!("block `{name}` is not a positive number: {v}")),
                },
                Ok(Ok(None)) => notes.push(format!("string block `{name}` not found")),
                Ok(Err(e)) => notes.push(format!("string block `{name}` unreadable: {e}")),
                Err(_) => notes.push(format!("string block `{name}` read timed out")),
            }
        }
    } else if settings.variable.is_some() || settings.block.is_some() {
        notes.push(
            "PRICE_THRESHOLD_VARIABLE/BLOCK need PREFECT_API_URL; using PRICE_THRESHOLD".into(),
        );
    }
    let t = settings.fallback.map(|value| Threshold {
        value,
        origin: ThresholdOrigin::Environment,
    });
    (t, notes)
}

/// What one comparison means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// Fell below (or started below): alert.
    Down,
    /// Back at or above after being below: log the recovery.
    Recovered,
    StillBelow,
    StillAbove,
}

/// Remembers which side of the threshold the price was on, across iterations.
#[derive(Debug, Default)]
pub struct CrossingState {
    /// None before the first observation.
    below: Option<bool>,
}

impl CrossingState {
    pub fn observe(&mut self, price: f64, threshold: f64) -> Crossing {
        let below = price < threshold;
        let was = self.below.replace(below);
        match (was, below) {
            (Some(true), true) => Crossing::StillBelow,
            (_, true) => Crossing::Down,
            (Some(true), false) => Crossing::Recovered,
            (_, false) => Crossing::StillAbove,
        }
    }

    /// Forget a Down that could not be delivered, so the next iteration tries again.
    pub fn undo_down(&mut self) {
        self.below = Some(false);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("Slack webhook post failed: {0}")]
pub struct SlackError(String);

pub struct Slack {
    http: reqwest::Client,
    url: Secret,
}

impl Slack {
    pub fn new(url: Secret) -> Result<Self, crate::http::ClientError> {
        let http = crate::http::client(
            "Slack",
            Duration::from_secs(5),
            Duration::from_secs(5),
            |b| b,
        )?;
        Ok(Slack { http, url })
    }

    pub async fn post(&self, text: &str) -> Result<(), SlackError> {
        let resp = self
            .http
            .post(self.url.expose())
            .json(&json!({ "text": text }))
            .send()
            .await
            // The webhook URL is the secret: never let it into an error.
            .map_err(|e| SlackError(crate::logs::http_error(e)))?;
        if !resp.status().is_success() {
            return Err(SlackError(format!("HTTP {}", resp.status().as_u16())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_accept_strings_and_numbers() {
        assert_eq!(parse_threshold(&json!(20000)), Some(20000.0));
        assert_eq!(parse_threshold(&json!("20000.5")), Some(20000.5));
        assert_eq!(parse_threshold(&json!(" 25,000 ")), Some(25000.0));
        assert_eq!(parse_threshold(&json!("abc")), None);
        assert_eq!(parse_threshold(&json!(-1)), None);
        assert_eq!(parse_threshold(&json!(null)), None);
    }

    #[test]
    fn one_alert_per_crossing() {
        let mut s = CrossingState::default();
        let seq: Vec<_> = [100.0, 90.0, 80.0, 85.0, 120.0, 130.0, 70.0]
            .iter()
            .map(|p| s.observe(*p, 95.0))
            .collect();
        use Crossing::*;
        assert_eq!(
            seq,
            vec![
                StillAbove, Down, StillBelow, StillBelow, Recovered, StillAbove, Down
            ]
        );
    }

    #[test]
    fn starting_below_alerts_once() {
        let mut s = CrossingState::default();
        assert_eq!(s.observe(1.0, 2.0), Crossing::Down);
        assert_eq!(s.observe(1.0, 2.0), Crossing::StillBelow);
        s.undo_down();
        assert_eq!(s.observe(1.0, 2.0), Crossing::Down);
    }

    #[tokio::test]
    async fn falls_back_to_environment_without_prefect() {
        let settings = AlertSettings {
            symbol: "BTC".into(),
            variable: Some("v".into()),
            block: None,
            fallback: Some(5.0),
            slack_webhook: None,
        };
        let (t, notes) = resolve_threshold(&settings, None, Duration::from_secs(1)).await;
        assert_eq!(t.unwrap().origin, ThresholdOrigin::Environment);
        assert_eq!(notes.len(), 1);
    }
}
