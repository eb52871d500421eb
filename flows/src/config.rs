//! Command line and environment: the one place settings are read and validated.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

/// The public cryptocompare endpoint the system we replace used (BTC and ETH in USD).
pub const DEFAULT_SOURCE_URL: &str =
    "https://min-api.cryptocompare.com/data/pricemulti?fsyms=BTC,ETH&tsyms=USD";

/// Default health file. The parent folder is created on demand, so it also works in a
/// `FROM scratch` image (no /tmp there) as long as the process may create it.
pub const DEFAULT_HEALTH_FILE: &str = "/tmp/price-stream.health";

#[derive(Debug, Parser)]
#[command(
    name = "price-stream",
    version,
    about = "Streaming price ETL: extract -> transform -> load -> alert, one Prefect flow run per iteration",
    long_about = "Streaming price ETL: extract -> transform -> load -> alert, one Prefect flow run per \
iteration.\n\nEvery flag can be set through the environment variable shown next to it (what an ECS \
task definition sets). Logs are JSON lines on stdout. SIGTERM/SIGINT finish the in-flight iteration \
(or cancel it after --shutdown-grace-seconds), flush reports to Prefect and exit 0."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Exit 0 when an iteration ended recently (container health check), 1 otherwise.
    Healthcheck(HealthArgs),
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// File the running loop stamps after every iteration.
    #[arg(long, env = "HEALTH_FILE", default_value = DEFAULT_HEALTH_FILE)]
    pub health_file: PathBuf,
    /// Unhealthy when no iteration ended within this many intervals (with a 60 s floor).
    #[arg(long, env = "HEALTH_MAX_INTERVALS", default_value_t = 3)]
    pub max_intervals: u32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Price API: an http(s) URL returning cryptocompare `pricemulti` JSON, or `simulated`
    /// (offline random walk for demos; never used unless chosen here).
    #[arg(long, env = "SOURCE_URL", default_value = DEFAULT_SOURCE_URL)]
    pub source_url: String,
    /// Data lake: `s3://bucket/prefix` (AWS_ENDPOINT_URL overrides the endpoint) or `file:///path`.
    #[arg(long, env = "SINK_URL", default_value = "file:///data/price-lake")]
    pub sink_url: String,
    /// Pause between iterations in seconds; 0 runs them back to back.
    #[arg(long, env = "INTERVAL_SECONDS", default_value_t = 10.0)]
    pub interval_seconds: f64,
    /// Stop after N iterations (default: run until SIGTERM/SIGINT).
    #[arg(long, env = "ITERATIONS")]
    pub iterations: Option<u64>,
    /// Prefect API base, e.g. http://prefect:4200/api. Unset: no Prefect reporting.
    #[arg(long, env = "PREFECT_API_URL")]
    pub prefect_api_url: Option<String>,
    /// Prefect Cloud API key (secret; never logged).
    #[arg(long, env = "PREFECT_API_KEY", hide_env_values = true)]
    pub prefect_api_key: Option<String>,
    /// Flow name shown in Prefect.
    #[arg(long, env = "FLOW_NAME", default_value = "price-stream")]
    pub flow_name: String,
    /// Slack incoming webhook URL for threshold alerts (secret; never logged).
    #[arg(long, env = "SLACK_WEBHOOK_URL", hide_env_values = true)]
    pub slack_webhook_url: Option<String>,
    /// Prefect Variable holding the BTC threshold (string or number), read every iteration.
    #[arg(long, env = "PRICE_THRESHOLD_VARIABLE")]
    pub price_threshold_variable: Option<String>,
    /// Prefect String block holding the BTC threshold (what Prefect 2 setups use).
    #[arg(long, env = "PRICE_THRESHOLD_BLOCK")]
    pub price_threshold_block: Option<String>,
    /// Fallback BTC threshold when neither the Variable nor the block gives one.
    #[arg(long, env = "PRICE_THRESHOLD")]
    pub price_threshold: Option<f64>,
    /// Symbol whose price is compared with the threshold.
    #[arg(long, env = "ALERT_SYMBOL", default_value = "BTC")]
    pub alert_symbol: String,
    /// Per-request timeout for the price API, seconds.
    #[arg(long, env = "SOURCE_TIMEOUT_SECONDS", default_value_t = 10.0)]
    pub source_timeout_seconds: f64,
    /// Retries for the price API after the first attempt (exponential backoff with jitter).
    #[arg(long, env = "SOURCE_RETRIES", default_value_t = 3)]
    pub source_retries: u32,
    /// Largest price API reply read, in bytes; a larger one fails the run unread (or as soon
    /// as the stream passes it), so memory stays flat whatever the source sends.
    #[arg(long, env = "SOURCE_MAX_BYTES", default_value_t = crate::body::SOURCE_DEFAULT)]
    pub source_max_bytes: usize,
    /// On SIGTERM, how long the in-flight iteration may take before it is cancelled.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 20.0)]
    pub shutdown_grace_seconds: f64,
    /// At shutdown, time given to deliver held reports to Prefect; more when what is held
    /// needs more (sized from Prefect's recent latency), never past STOP_TIMEOUT_SECONDS.
    #[arg(long, env = "REPORT_FLUSH_SECONDS", default_value_t = 5.0)]
    pub report_flush_seconds: f64,
    /// The container's stop timeout (ECS `stopTimeout`, the deployer's `stop_timeout`, 30 s
    /// by default): SIGKILL follows SIGTERM after it, so the shutdown flush ends 2 s before.
    #[arg(long, env = "STOP_TIMEOUT_SECONDS", default_value_t = 30.0)]
    pub stop_timeout_seconds: f64,
    /// Reports (flow runs, task runs, log lines) held while Prefect is unreachable; past it the
    /// oldest are dropped, counted and logged.
    #[arg(long, env = "REPORT_HOLD", default_value_t = 20_000)]
    pub report_hold: usize,
    /// Bytes of reports held while Prefect is unreachable (same policy as REPORT_HOLD).
    #[arg(long, env = "REPORT_HOLD_BYTES", default_value_t = 16 << 20)]
    pub report_hold_bytes: usize,
    /// Bound of the Prefect report queue; reports beyond it are dropped and counted.
    #[arg(long, env = "REPORT_QUEUE_CAPACITY", default_value_t = 10_000)]
    pub report_queue_capacity: usize,
    /// File stamped after every iteration, read by `price-stream healthcheck`.
    #[arg(long, env = "HEALTH_FILE", default_value = DEFAULT_HEALTH_FILE)]
    pub health_file: PathBuf,
    /// Re-run one iteration for an earlier flow run id: its files are overwritten, not duplicated.
    #[arg(long, env = "REPLAY_RUN_ID")]
    pub replay: Option<Uuid>,
    /// `on`: at most one instance of the service runs iterations (a lease in Prefect; the
    /// others stand by and take over). `off`: every instance iterates (availability over a
    /// single consumer). Without PREFECT_API_URL there is no lease.
    #[arg(long, env = "LEADER_LEASE", value_enum, default_value_t = LeaseMode::On)]
    pub leader_lease: LeaseMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LeaseMode {
    On,
    Off,
}

/// A value that must never reach a log line or an error message.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    Http(reqwest::Url),
    Simulated,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    S3 { bucket: String, prefix: String },
    File { root: PathBuf },
}

#[derive(Debug, Clone)]
pub struct PrefectSettings {
    /// Parsed once here: an http(s) URL (the client appends encoded path segments to it).
    pub api_url: reqwest::Url,
    pub api_key: Option<Secret>,
    pub flow_name: String,
    pub queue_capacity: usize,
    pub flush: Duration,
    pub hold: crate::report::HoldBound,
}

#[derive(Debug, Clone)]
pub struct AlertSettings {
    pub symbol: String,
    pub variable: Option<String>,
    pub block: Option<String>,
    pub fallback: Option<f64>,
    pub slack_webhook: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: SourceKind,
    pub source_timeout: Duration,
    pub source_retries: u32,
    pub source_max_bytes: usize,
    pub sink: SinkKind,
    pub interval: Duration,
    pub iterations: Option<u64>,
    pub prefect: Option<PrefectSettings>,
    pub alert: AlertSettings,
    pub shutdown_grace: Duration,
    pub stop_timeout: Duration,
    pub health_file: PathBuf,
    pub replay: Option<Uuid>,
    /// Single-consumer lease (only with Prefect, and never for a one-off replay).
    pub leader_lease: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("SOURCE_URL must be an http(s) URL or `simulated`: {0}")]
    Source(String),
    #[error("SINK_URL must be `s3://bucket/prefix` or `file:///absolute/path`: {0}")]
    Sink(String),
    #[error("PREFECT_API_URL must be an http(s) URL such as http://127.0.0.1:4200/api: {0}")]
    Prefect(String),
    #[error("SLACK_WEBHOOK_URL must be an http(s) URL")]
    Slack,
    #[error("{name} must be a finite number >= 0, got {value}")]
    Duration { name: &'static str, value: f64 },
    #[error("PRICE_THRESHOLD must be a finite positive number, got {0}")]
    Threshold(f64),
    #[error("REPORT_QUEUE_CAPACITY must be at least 1")]
    Queue,
    #[error("{0} must be at least 1")]
    AtLeastOne(&'static str),
}

fn seconds(name: &'static str, value: f64) -> Result<Duration, ConfigError> {
    if (0.0..1e9).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(ConfigError::Duration { name, value })
    }
}

pub fn parse_source(raw: &str) -> Result<SourceKind, ConfigError> {
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("simulated") {
        return Ok(SourceKind::Simulated);
    }
    // The URL may carry an API key in its query: errors name only scheme and host.
    let url = reqwest::Url::parse(raw).map_err(|e| ConfigError::Source(e.to_string()))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(SourceKind::Http(url)),
        other => Err(ConfigError::Source(format!("unsupported scheme `{other}`"))),
    }
}

pub fn parse_sink(raw: &str) -> Result<SinkKind, ConfigError> {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(ConfigError::Sink(format!("no bucket in `{raw}`")));
        }
        Ok(SinkKind::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    } else if let Some(path) = raw.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(ConfigError::Sink(format!(
                "`{raw}` is not absolute (use three slashes)"
            )));
        }
        Ok(SinkKind::File {
            root: PathBuf::from(path),
        })
    } else {
        Err(ConfigError::Sink(format!("unsupported `{raw}`")))
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

impl Config {
    pub fn from_args(args: RunArgs) -> Result<Self, ConfigError> {
        let prefect = match non_empty(args.prefect_api_url) {
            None => None,
            Some(url) => {
                // Trailing slashes go: the client appends its paths as segments.
                let parsed = reqwest::Url::parse(url.trim_end_matches('/'))
                    .map_err(|e| ConfigError::Prefect(e.to_string()))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(ConfigError::Prefect(format!(
                        "unsupported scheme `{}`",
                        parsed.scheme()
                    )));
                }
                if args.report_queue_capacity == 0 {
                    return Err(ConfigError::Queue);
                }
                for (name, v) in [
                    ("REPORT_HOLD", args.report_hold),
                    ("REPORT_HOLD_BYTES", args.report_hold_bytes),
                ] {
                    if v == 0 {
                        return Err(ConfigError::AtLeastOne(name));
                    }
                }
                Some(PrefectSettings {
                    api_url: parsed,
                    api_key: non_empty(args.prefect_api_key).map(Secret),
                    flow_name: args.flow_name,
                    queue_capacity: args.report_queue_capacity,
                    flush: seconds("REPORT_FLUSH_SECONDS", args.report_flush_seconds)?,
                    hold: crate::report::HoldBound {
                        reports: args.report_hold,
                        bytes: args.report_hold_bytes,
                    },
                })
            }
        };
        let slack_webhook = match non_empty(args.slack_webhook_url) {
            None => None,
            Some(url) => match reqwest::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(Secret(url)),
                _ => return Err(ConfigError::Slack),
            },
        };
        if let Some(t) = args.price_threshold
            && !(t.is_finite() && t > 0.0)
        {
            return Err(ConfigError::Threshold(t));
        }
        let leader_lease =
            args.leader_lease == LeaseMode::On && prefect.is_some() && args.replay.is_none();
        Ok(Config {
            source: parse_source(&args.source_url)?,
            source_timeout: seconds("SOURCE_TIMEOUT_SECONDS", args.source_timeout_seconds)?,
            source_retries: args.source_retries,
            source_max_bytes: match args.source_max_bytes {
                0 => return Err(ConfigError::AtLeastOne("SOURCE_MAX_BYTES")),
                n => n,
            },
            sink: parse_sink(&args.sink_url)?,
            interval: seconds("INTERVAL_SECONDS", args.interval_seconds)?,
            iterations: args.iterations,
            prefect,
            alert: AlertSettings {
                symbol: args.alert_symbol,
                variable: non_empty(args.price_threshold_variable),
                block: non_empty(args.price_threshold_block),
                fallback: args.price_threshold,
                slack_webhook,
            },
            shutdown_grace: seconds("SHUTDOWN_GRACE_SECONDS", args.shutdown_grace_seconds)?,
            stop_timeout: seconds("STOP_TIMEOUT_SECONDS", args.stop_timeout_seconds)?,
            health_file: args.health_file,
            leader_lease,
            replay: args.replay,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_parse() {
        assert_eq!(
            parse_sink("s3://lake/crypto/").unwrap(),
            SinkKind::S3 {
                bucket: "lake".into(),
                prefix: "crypto".into()
            }
        );
        assert_eq!(
            parse_sink("s3://lake").unwrap(),
            SinkKind::S3 {
                bucket: "lake".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            parse_sink("file:///data/x").unwrap(),
            SinkKind::File {
                root: "/data/x".into()
            }
        );
        assert!(parse_sink("file://relative").is_err());
        assert!(parse_sink("s3:///x").is_err());
        assert!(parse_sink("gs://b/p").is_err());
    }

    #[test]
    fn sources_parse() {
        assert_eq!(parse_source("simulated").unwrap(), SourceKind::Simulated);
        assert!(matches!(
            parse_source("http://127.0.0.1:9/x").unwrap(),
            SourceKind::Http(_)
        ));
        assert!(parse_source("ftp://x").is_err());
        assert!(parse_source("not a url").is_err());
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = Secret("https://hooks.slack.com/services/T/B/XYZ".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
    }

    #[test]
    fn bad_numbers_are_rejected() {
        let cli = Cli::try_parse_from(["price-stream", "--interval-seconds=-1"]).unwrap();
        assert!(matches!(
            Config::from_args(cli.run),
            Err(ConfigError::Duration { .. })
        ));
        let cli = Cli::try_parse_from(["price-stream", "--price-threshold", "0"]).unwrap();
        assert!(matches!(
            Config::from_args(cli.run),
            Err(ConfigError::Threshold(_))
        ));
    }
}
