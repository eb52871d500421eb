//! `deployer.yaml` -> validated, typed settings. The only place YAML is read.
//!
//! Loading is three steps: parse the file into a YAML tree, apply `--set` overrides to the
//! tree (so overrides are validated exactly like the file), then deserialise with unknown
//! keys rejected and validate values. Every failure is `ExitCode::BadInput` with the file,
//! the key path, what is wrong and what is allowed.

use crate::error::{Error, Result};
use crate::image::BuildSpec;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const DEFAULT_FILE: &str = "deployer.yaml";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names stacks (`<project>-network`, ...), the ECR repository, log groups and SSM paths.
    pub project: String,
    /// AWS region; falls back to `--region`, AWS_REGION or the profile.
    #[serde(default)]
    pub region: Option<String>,
    /// Where the services run: ECS Fargate (`aws`, the default) or the local Docker engine.
    /// `--target` and `DEPLOYER_TARGET` override it.
    #[serde(default)]
    pub target: TargetKind,
    /// What differs on the local target (only read there).
    #[serde(default)]
    pub local: Local,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub cluster: Cluster,
    #[serde(default)]
    pub registry: Registry,
    /// Where flows write data; scopes the task role's S3 permissions.
    #[serde(default)]
    pub data_lake: Option<DataLake>,
    pub services: BTreeMap<String, Service>,
}

/// Where a project's services run (see src/target.rs).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// ECS Fargate services, through CloudFormation and the ECS API.
    #[default]
    Aws,
    /// Containers on the local Docker engine, rolled with ECS's rules by the deployer.
    Local,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::Local => "local",
        }
    }
}

impl std::fmt::Display for TargetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `local:` section: what differs when the services run on a laptop's Docker engine.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Local {
    /// `host` (default): containers share the host's network namespace and reach services on
    /// 127.0.0.1 (a local Prefect server). `bridge`: a project network `deployer-<project>`;
    /// the host is `host.docker.internal` there.
    #[serde(default)]
    pub network: LocalNetwork,
    /// Host directory for the file data lake, relative to the config file. The deployer creates
    /// it (writable by the image's non-root user), mounts it at `lake_mount`, and never deletes it.
    #[serde(default)]
    pub lake_dir: Option<PathBuf>,
    /// Where `lake_dir` appears inside every container.
    #[serde(default = "default_lake_mount")]
    pub lake_mount: String,
    /// Per service: environment values that replace or add to `services.<name>.environment`.
    #[serde(default)]
    pub services: BTreeMap<String, LocalService>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalService {
    #[serde(default)]
    #[serde(deserialize_with = "env_values")]
    pub environment: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LocalNetwork {
    #[default]
    Host,
    Bridge,
}

impl Default for Local {
    fn default() -> Self {
        Self {
            network: LocalNetwork::default(),
            lake_dir: None,
            lake_mount: default_lake_mount(),
            services: BTreeMap::new(),
        }
    }
}

/// Environment values are strings to the container, but YAML (and `--set`) reads `10` as a
/// number and `true` as a bool: accept any scalar, as its text. Lists and maps are refused.
fn env_values<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    let raw: Option<BTreeMap<String, Scalar>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Scalar::S(s) => s,
                Scalar::I(i) => i.to_string(),
                Scalar::F(f) => f.to_string(),
                Scalar::B(b) => b.to_string(),
            };
            (k, text)
        })
        .collect())
}

fn default_lake_mount() -> String {
    "/lake".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Use an existing VPC instead of creating one.
    #[serde(default)]
    pub existing: Option<ExistingNetwork>,
    #[serde(default = "default_vpc_cidr")]
    pub vpc_cidr: String,
    /// Two public subnets in two availability zones.
    #[serde(default = "default_subnet_cidrs")]
    pub subnet_cidrs: Vec<String>,
    /// Tasks in public subnets need a public IP to reach ECR and the internet (no NAT gateway).
    #[serde(default = "yes")]
    pub assign_public_ip: bool,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            existing: None,
            vpc_cidr: default_vpc_cidr(),
            subnet_cidrs: default_subnet_cidrs(),
            assign_public_ip: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExistingNetwork {
    pub vpc_id: String,
    pub subnet_ids: Vec<String>,
    pub security_group_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    #[serde(default = "yes")]
    pub container_insights: bool,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            container_insights: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Lifecycle policy: images kept in the repository.
    #[serde(default = "default_keep_images")]
    pub keep_images: u32,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            keep_images: default_keep_images(),
        }
    }
}

/// `data_lake:`: where the flows write Parquet. With `create: true` the deployer makes the
/// bucket (retained when the stack goes) and a Glue table over it (templates/data.yaml);
/// otherwise `bucket` names an existing one. The task role may write under `prefix` and
/// nowhere else; services get `SINK_URL` unless they set it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataLake {
    #[serde(default)]
    pub create: bool,
    /// An existing bucket (with `create: false`); with `create: true` the name is
    /// `<project>-data-<account>-<region>` unless given here.
    #[serde(default)]
    pub bucket: Option<String>,
    #[serde(default)]
    pub prefix: String,
    /// Values of the `symbol` partition for Athena's partition projection. Default: the
    /// `fsyms` of the services' SOURCE_URL, else BTC and ETH.
    #[serde(default)]
    pub symbols: Vec<String>,
    /// Days a replaced or deleted object's old version is kept (the bucket is versioned).
    #[serde(default = "default_noncurrent_days")]
    pub noncurrent_version_days: u32,
}

fn default_noncurrent_days() -> u32 {
    30
}

impl DataLake {
    /// The bucket's name, given the deploying account and region.
    pub fn bucket_name(&self, project: &str, account: &str, region: &str) -> String {
        self.bucket
            .clone()
            .unwrap_or_else(|| crate::names::Names::new(project).data_bucket(account, region))
    }

    /// The symbol partition's values (see `symbols`).
    pub fn symbol_values(&self, services: &BTreeMap<String, Service>) -> Vec<String> {
        if !self.symbols.is_empty() {
            return self.symbols.clone();
        }
        let mut from_sources: Vec<String> = services
            .values()
            .filter_map(|s| s.environment.get("SOURCE_URL"))
            .filter_map(|u| {
                u.split(['?', '&'])
                    .find_map(|kv| kv.strip_prefix("fsyms="))
                    .map(|v| {
                        v.split(',')
                            .map(|x| x.trim().to_uppercase())
                            .collect::<Vec<_>>()
                    })
            })
            .flatten()
            .filter(|x| !x.is_empty())
            .collect();
        from_sources.sort();
        from_sources.dedup();
        if from_sources.is_empty() {
            vec!["BTC".into(), "ETH".into()]
        } else {
            from_sources
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// A prebuilt image URI (`repo@sha256:...` preferred). Exclusive with `build`.
    #[serde(default)]
    pub image: Option<String>,
    /// Build the image from a Dockerfile.
    #[serde(default)]
    pub build: Option<BuildSpec>,
    #[serde(default = "default_cpu")]
    pub cpu: u32,
    #[serde(default = "default_memory")]
    pub memory: u32,
    #[serde(default)]
    pub architecture: Architecture,
    #[serde(default = "one")]
    pub desired_count: u32,
    #[serde(default)]
    pub capacity: Capacity,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    #[serde(deserialize_with = "env_values")]
    pub environment: BTreeMap<String, String>,
    /// Names of secrets: values come from the deployer's environment at deploy time and are
    /// stored as SSM SecureString parameters `/<project>/<service>/<NAME>`.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Seconds between SIGTERM and SIGKILL (Fargate allows 2..=120).
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: u32,
    #[serde(default = "default_log_retention")]
    pub log_retention_days: u32,
    /// Container health check run by ECS (ECS ignores an image's HEALTHCHECK).
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub deployment: Deployment,
}

/// ECS container health check: `command` runs inside the container (exec form, no shell);
/// exit 0 is healthy. An unhealthy essential container is replaced.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub command: Vec<String>,
    /// Seconds between checks (5..=300).
    #[serde(default = "default_hc_interval")]
    pub interval: u32,
    /// Seconds before one check counts as failed (2..=60).
    #[serde(default = "default_hc_timeout")]
    pub timeout: u32,
    /// Consecutive failures before the container is unhealthy (1..=10).
    #[serde(default = "default_hc_retries")]
    pub retries: u32,
    /// Grace seconds after start during which failures do not count (0..=300).
    #[serde(default = "default_hc_start_period")]
    pub start_period: u32,
}

fn default_hc_interval() -> u32 {
    30
}
fn default_hc_timeout() -> u32 {
    5
}
fn default_hc_retries() -> u32 {
    3
}
fn default_hc_start_period() -> u32 {
    60
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    #[default]
    X86_64,
    Arm64,
}

impl Architecture {
    /// ECS `runtimePlatform.cpuArchitecture`.
    pub fn ecs_name(self) -> &'static str {
        match self {
            Self::X86_64 => "X86_64",
            Self::Arm64 => "ARM64",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Capacity {
    #[default]
    Fargate,
    /// Up to 70 % cheaper; tasks can be interrupted with a two-minute warning.
    FargateSpot,
}

impl Capacity {
    pub fn provider(self) -> &'static str {
        match self {
            Self::Fargate => "FARGATE",
            Self::FargateSpot => "FARGATE_SPOT",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// 100 keeps the old task running until the new one is up: zero downtime.
    #[serde(default = "default_min_healthy")]
    pub min_healthy_percent: u32,
    #[serde(default = "default_max_percent")]
    pub max_percent: u32,
    /// Deployment circuit breaker with automatic rollback.
    #[serde(default = "yes")]
    pub circuit_breaker: bool,
    /// Seconds to wait for a rollout before giving up (exit code 3).
    #[serde(default = "default_rollout_timeout")]
    pub rollout_timeout: u64,
    /// After the platform says the deployment completed, wait for the new revision's own
    /// flow runs in Prefect (src/verify.rs). Off unless set.
    #[serde(default)]
    pub verify: Option<Verify>,
}

/// `deployment.verify`: the verdict includes the pipeline, not only the containers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// Completed flow runs of the new revision that make the deployment good; as many failed
    /// (FAILED/CRASHED) runs first make it bad.
    #[serde(default = "default_verify_runs")]
    pub flow_runs: u32,
    /// Seconds to wait for that verdict (exit 3 past it).
    #[serde(default = "default_verify_within")]
    pub within: u64,
    /// On a bad verdict, roll back to the previous revision (exit 4) instead of leaving the
    /// new one running (exit 1).
    #[serde(default)]
    pub rollback: bool,
}

fn default_verify_runs() -> u32 {
    2
}

fn default_verify_within() -> u64 {
    300
}

impl Default for Deployment {
    fn default() -> Self {
        Self {
            min_healthy_percent: default_min_healthy(),
            max_percent: default_max_percent(),
            circuit_breaker: true,
            rollout_timeout: default_rollout_timeout(),
            verify: None,
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn default_vpc_cidr() -> String {
    "10.0.0.0/16".into()
}
fn default_subnet_cidrs() -> Vec<String> {
    vec!["10.0.0.0/24".into(), "10.0.1.0/24".into()]
}
fn default_keep_images() -> u32 {
    30
}
fn default_cpu() -> u32 {
    256
}
fn default_memory() -> u32 {
    512
}
fn default_stop_timeout() -> u32 {
    120
}
fn default_log_retention() -> u32 {
    14
}
fn default_min_healthy() -> u32 {
    100
}
fn default_max_percent() -> u32 {
    200
}
fn default_rollout_timeout() -> u64 {
    1800
}

/// CloudWatch Logs' allowed retention values (days).
pub const LOG_RETENTION_DAYS: &[u32] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// Valid Fargate memory values (MiB) for a task cpu value (units), or None for an invalid cpu.
pub fn fargate_memory_values(cpu: u32) -> Option<Vec<u32>> {
    let gib = |from: u32, to: u32, step: u32| (from..=to).step_by(step as usize).map(|g| g * 1024);
    Some(match cpu {
        256 => vec![512, 1024, 2048],
        512 => gib(1, 4, 1).collect(),
        1024 => gib(2, 8, 1).collect(),
        2048 => gib(4, 16, 1).collect(),
        4096 => gib(8, 30, 1).collect(),
        8192 => gib(16, 60, 4).collect(),
        16384 => gib(32, 120, 8).collect(),
        _ => return None,
    })
}

pub const FARGATE_CPU_VALUES: &[u32] = &[256, 512, 1024, 2048, 4096, 8192, 16384];

/// A loaded configuration and where it came from (paths in it are relative to `dir`).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    pub dir: PathBuf,
}

/// Read, override and validate a config file.
pub fn load(path: &Path, overrides: &[String]) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::bad_input(format!("cannot read config {}: {e}", path.display()))
            .because(e)
            .with_help("create one with `deployer init`, or pass --config PATH to an existing file")
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        Error::bad_input(format!(
            "{}: not UTF-8: invalid byte at offset {at} (line {})",
            path.display(),
            e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1
        ))
        .with_help("save the file as UTF-8")
    })?;
    let config = parse(&text, path, overrides)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(Loaded {
        config,
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
    })
}

/// Parse config text; `origin` names the file in messages.
pub fn parse(text: &str, origin: &Path, overrides: &[String]) -> Result<Config> {
    let file = origin.display();
    let mut tree: Value = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(&file, text, &e))?;
    for o in overrides {
        apply_override(&mut tree, o).map_err(|e| Error::bad_input(format!("--set {o}: {e}")))?;
    }
    // serde_path_to_error names the key path (`services.web.cpu`) that serde alone loses.
    let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        Error::bad_input(format!("{file}: {at}{}", e.into_inner()))
            .with_help("see README.md \"Configuration\" for every key and its allowed values")
    })?;
    let problems = validate(&config);
    if problems.is_empty() {
        return Ok(config);
    }
    let mut msg = format!("{file}: invalid configuration");
    for p in &problems {
        let _ = write!(msg, "\n  - {p}");
    }
    Err(Error::bad_input(msg))
}

/// A YAML error with its line and column, and a hint where the cause is a common one.
fn yaml_error(file: &dyn std::fmt::Display, text: &str, e: &serde_yaml_ng::Error) -> Error {
    let msg = e.to_string();
    // The parser places a duplicate key at its mapping; point at the second occurrence.
    let duplicate_line = msg
        .split('"')
        .nth(1)
        .filter(|_| msg.contains("duplicate"))
        .and_then(|key| {
            text.lines()
                .enumerate()
                .filter(|(_, l)| {
                    l.trim_start()
                        .strip_prefix(key)
                        .is_some_and(|r| r.trim_start().starts_with(':'))
                })
                .nth(1)
                .map(|(i, l)| (i + 1, l.len() - l.trim_start().len() + 1))
        });
    let at = match (duplicate_line, e.location()) {
        (Some((line, col)), _) => format!(" at line {line}, column {col}"),
        (None, Some(l)) => format!(" at line {}, column {}", l.line(), l.column()),
        (None, None) => String::new(),
    };
    let hint = if msg.contains("duplicate") {
        Some(
            "a key appears twice in the same mapping: keep one (YAML does not merge them)"
                .to_string(),
        )
    } else if msg.contains("recursion limit")
        || msg.contains("repetition limit")
        || msg.contains("alias") && msg.contains("limit")
    {
        Some("anchors and aliases expand past the parser's limit: write the values out".to_string())
    } else {
        text.lines()
            .position(|l| l.trim_start_matches(' ').starts_with('\t'))
            .map(|line| {
                format!(
                    "line {} is indented with a tab; YAML allows only spaces",
                    line + 1
                )
            })
    };
    let err = Error::bad_input(format!("{file}: invalid YAML{at}: {msg}"));
    match hint {
        Some(h) => err.with_help(h),
        None => err,
    }
}

/// Apply `a.b.c=value` to the YAML tree. `*` as a key under `services` means every service.
/// The value is parsed as YAML, so `cpu=512` is a number and `command=[a, b]` a list.
fn apply_override(tree: &mut Value, spec: &str) -> std::result::Result<(), String> {
    let (path, raw) = spec.split_once('=').ok_or("expected KEY.PATH=VALUE")?;
    let value: Value = serde_yaml_ng::from_str(raw).map_err(|e| format!("invalid value: {e}"))?;
    let keys: Vec<&str> = path.split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(format!("invalid key path `{path}`"));
    }
    // An override adjusts a service of the file; it never creates one.
    if let ["services" | "local", rest @ ..] = keys.as_slice() {
        let name = match (keys[0], rest) {
            ("services", [name, _, ..]) => Some(*name),
            ("local", ["services", name, _, ..]) => Some(*name),
            _ => None,
        };
        if let Some(name) = name.filter(|n| *n != "*") {
            let exists = tree.get("services").and_then(|s| s.get(name)).is_some();
            if !exists {
                let names: Vec<String> = tree
                    .get("services")
                    .and_then(Value::as_mapping)
                    .map(|m| {
                        m.keys()
                            .filter_map(|k| k.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                return Err(format!(
                    "no service `{name}` in the file (services: {}); an override cannot add a service",
                    names.join(", ")
                ));
            }
        }
    }
    set_path(tree, &keys, &value)
}

fn set_path(node: &mut Value, keys: &[&str], value: &Value) -> std::result::Result<(), String> {
    let Some((first, rest)) = keys.split_first() else {
        *node = value.clone();
        return Ok(());
    };
    if node.is_null() {
        *node = Value::Mapping(Default::default());
    }
    let map = node
        .as_mapping_mut()
        .ok_or_else(|| format!("`{first}`: parent is not a mapping"))?;
    if *first == "*" {
        if map.is_empty() {
            return Err("`*` matches no entries".into());
        }
        for (_, child) in map.iter_mut() {
            set_path(child, rest, value)?;
        }
        return Ok(());
    }
    let child = map
        .entry(Value::String((*first).to_string()))
        .or_insert(Value::Null);
    set_path(child, rest, value)
}

/// Semantic checks serde cannot express. Each entry names the key path.
pub fn validate(c: &Config) -> Vec<String> {
    let mut p = Vec::new();
    validate_project(c, &mut p);
    match &c.network.existing {
        Some(existing) => validate_existing_network(existing, &mut p),
        None => validate_new_network(&c.network, &mut p),
    }
    if let Some(lake) = &c.data_lake {
        validate_lake(lake, &mut p);
    }
    validate_local(c, &mut p);
    for (name, s) in &c.services {
        validate_service(name, s, &mut p);
    }
    p
}

/// The project's name, what it reserves in SSM, the registry, and that it has services.
fn validate_project(c: &Config, p: &mut Vec<String>) {
    if !valid_name(&c.project, 28) {
        p.push(format!(
            "project: `{}` is not a valid name; use 1-28 lowercase letters, digits and '-', starting with a letter",
            c.project
        ));
    }
    if c.services.is_empty() {
        p.push("services: at least one service is required".into());
    }
    // SSM refuses parameter names whose first segment begins with `aws` or `ssm`: the
    // secrets live at /<project>/<service>/<NAME>.
    let lower = c.project.to_ascii_lowercase();
    if (lower.starts_with("aws") || lower.starts_with("ssm"))
        && c.services.values().any(|s| !s.secrets.is_empty())
    {
        p.push(format!(
            "project: `{}` begins with `{}`, which SSM reserves: the secrets' parameters /{}/... could not be created; rename the project",
            c.project,
            &lower[..3],
            c.project
        ));
    }
    if !(1..=10_000).contains(&c.registry.keep_images) {
        p.push(format!(
            "registry.keep_images: {} is out of range; allowed 1..=10000",
            c.registry.keep_images
        ));
    }
}

/// `network.existing`: ids of the right kinds (their existence is checked against EC2 by
/// src/preflight.rs).
fn validate_existing_network(existing: &ExistingNetwork, p: &mut Vec<String>) {
    if existing.subnet_ids.is_empty() {
        p.push("network.existing.subnet_ids: at least one subnet id is required".into());
    }
    if existing.security_group_ids.is_empty() {
        p.push(
            "network.existing.security_group_ids: at least one security group id is required"
                .into(),
        );
    }
    for (i, s) in existing.subnet_ids.iter().enumerate() {
        if !s.starts_with("subnet-") {
            p.push(format!(
                "network.existing.subnet_ids[{i}]: `{s}` is not a subnet id (subnet-...)"
            ));
        }
    }
    for (i, s) in existing.security_group_ids.iter().enumerate() {
        if !s.starts_with("sg-") {
            p.push(format!("network.existing.security_group_ids[{i}]: `{s}` is not a security group id (sg-...)"));
        }
    }
    if !existing.vpc_id.starts_with("vpc-") {
        p.push(format!(
            "network.existing.vpc_id: `{}` is not a VPC id (vpc-...)",
            existing.vpc_id
        ));
    }
}

fn validate_lake(lake: &DataLake, p: &mut Vec<String>) {
    match &lake.bucket {
        Some(b) if !valid_bucket(b) => p.push(format!(
            "data_lake.bucket: `{b}` is not a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')"
        )),
        None if !lake.create => p.push(
            "data_lake.bucket: required unless data_lake.create is true (then the deployer makes <project>-data-<account>-<region>)".into(),
        ),
        _ => {}
    }
    if !lake.prefix.is_empty() && !lake.prefix.ends_with('/') {
        p.push(format!(
            "data_lake.prefix: `{}` must end with '/' (e.g. crypto/) so partitions are folders under it",
            lake.prefix
        ));
    }
    for (i, sym) in lake.symbols.iter().enumerate() {
        if sym.is_empty()
            || !sym
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            p.push(format!(
                "data_lake.symbols[{i}]: `{sym}` is not a symbol (letters, digits, '-', '_')"
            ));
        }
    }
    if !(1..=3650).contains(&lake.noncurrent_version_days) {
        p.push(format!(
            "data_lake.noncurrent_version_days: {} is out of range; allowed 1..=3650",
            lake.noncurrent_version_days
        ));
    }
    if lake.prefix.starts_with('/') || lake.prefix.contains('*') {
        p.push(format!(
            "data_lake.prefix: `{}` must not start with '/' or contain '*'",
            lake.prefix
        ));
    }
}

/// One service: each concern in its own function, every problem collected.
fn validate_service(name: &str, s: &Service, p: &mut Vec<String>) {
    let k = format!("services.{name}");
    validate_service_source(&k, name, s, p);
    validate_service_size(&k, s, p);
    if let Some(h) = &s.health_check {
        validate_health_check(&k, h, p);
    }
    validate_service_environment(&k, s, p);
    validate_deployment(&k, &s.deployment, p);
}

/// The name, and exactly one image source.
fn validate_service_source(k: &str, name: &str, s: &Service, p: &mut Vec<String>) {
    if !valid_name(name, 32) {
        p.push(format!(
            "{k}: `{name}` is not a valid service name; use 1-32 lowercase letters, digits and '-', starting with a letter"
        ));
    }
    match (&s.image, &s.build) {
        (Some(_), Some(_)) => p.push(format!("{k}: set either `image` or `build`, not both")),
        (None, None) => p.push(format!(
            "{k}: no image source; set `image: URI` (prebuilt) or `build:` (Dockerfile), or pass --image URI"
        )),
        (Some(uri), None) if uri.trim().is_empty() || uri.contains(char::is_whitespace) => {
            p.push(format!("{k}.image: `{uri}` is not an image URI"))
        }
        _ => {}
    }
}

/// Fargate cpu/memory, count, stop timeout and capacity.
fn validate_service_size(k: &str, s: &Service, p: &mut Vec<String>) {
    match fargate_memory_values(s.cpu) {
        None => p.push(format!(
            "{k}.cpu: {} is not a Fargate cpu value; allowed: {}",
            s.cpu,
            join(FARGATE_CPU_VALUES)
        )),
        Some(mem) if !mem.contains(&s.memory) => p.push(format!(
            "{k}.memory: {} MiB is not valid with cpu {}; allowed: {}",
            s.memory,
            s.cpu,
            join(&mem)
        )),
        Some(_) => {}
    }
    if s.desired_count > 1000 {
        p.push(format!(
            "{k}.desired_count: {} is out of range; allowed 0..=1000",
            s.desired_count
        ));
    }
    if !(2..=120).contains(&s.stop_timeout) {
        p.push(format!(
            "{k}.stop_timeout: {} s is out of range; Fargate allows 2..=120",
            s.stop_timeout
        ));
    }
    if s.architecture == Architecture::Arm64 && s.capacity == Capacity::FargateSpot {
        p.push(format!(
            "{k}.capacity: fargate_spot does not run arm64 tasks; use capacity: fargate, or architecture: x86_64"
        ));
    }
}

/// ECS's health check ranges.
fn validate_health_check(k: &str, h: &HealthCheck, p: &mut Vec<String>) {
    if h.command.is_empty() || h.command.iter().any(|c| c.trim().is_empty()) {
        p.push(format!(
            "{k}.health_check.command: must be a non-empty list, e.g. [/price-stream, healthcheck]"
        ));
    }
    for (field, value, range) in [
        ("interval", h.interval, 5..=300),
        ("timeout", h.timeout, 2..=60),
        ("retries", h.retries, 1..=10),
        ("start_period", h.start_period, 0..=300),
    ] {
        if !range.contains(&value) {
            p.push(format!(
                "{k}.health_check.{field}: {value} is out of range; ECS allows {}..={}",
                range.start(),
                range.end()
            ));
        }
    }
}

/// Log retention, variable names, secrets named (never echoed).
fn validate_service_environment(k: &str, s: &Service, p: &mut Vec<String>) {
    if !LOG_RETENTION_DAYS.contains(&s.log_retention_days) {
        p.push(format!(
            "{k}.log_retention_days: {} is not allowed by CloudWatch Logs; allowed: {}",
            s.log_retention_days,
            join(LOG_RETENTION_DAYS)
        ));
    }
    for key in s.environment.keys() {
        if !valid_env_name(key) {
            p.push(format!(
                "{k}.environment.{key}: not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"
            ));
        }
        if s.secrets.contains(key) {
            p.push(format!(
                "{k}.environment.{key}: also listed in secrets; a name is either plain or secret"
            ));
        }
    }
    for (i, secret) in s.secrets.iter().enumerate() {
        if !valid_env_name(secret) {
            // The text is not echoed: a value pasted where its name belongs may be a secret.
            p.push(format!("{k}.secrets[{i}]: not a valid variable name ([A-Za-z_][A-Za-z0-9_]*); give the secret's NAME here (its value comes from the environment); the text given is not shown in case it is the value"));
        }
    }
}

fn validate_deployment(k: &str, d: &Deployment, p: &mut Vec<String>) {
    if d.min_healthy_percent > 100 {
        p.push(format!(
            "{k}.deployment.min_healthy_percent: {} is out of range; allowed 0..=100",
            d.min_healthy_percent
        ));
    }
    if !(100..=200).contains(&d.max_percent) {
        p.push(format!(
            "{k}.deployment.max_percent: {} is out of range; allowed 100..=200",
            d.max_percent
        ));
    }
    if d.min_healthy_percent == 100 && d.max_percent == 100 {
        p.push(format!(
            "{k}.deployment: min_healthy_percent 100 with max_percent 100 can never roll; raise max_percent (200 for zero downtime)"
        ));
    }
    if let Some(v) = &d.verify {
        if !(1..=100).contains(&v.flow_runs) {
            p.push(format!(
                "{k}.deployment.verify.flow_runs: {} is out of range; allowed 1..=100",
                v.flow_runs
            ));
        }
        if !(10..=86_400).contains(&v.within) {
            p.push(format!(
                "{k}.deployment.verify.within: {} s is out of range; allowed 10..=86400",
                v.within
            ));
        }
    }
    if !(30..=86_400).contains(&d.rollout_timeout) {
        p.push(format!(
            "{k}.deployment.rollout_timeout: {} s is out of range; allowed 30..=86400",
            d.rollout_timeout
        ));
    }
}

/// The `local:` section: services it names exist, variable names are valid and not secrets.
fn validate_local(c: &Config, p: &mut Vec<String>) {
    let l = &c.local;
    if !l.lake_mount.starts_with('/') || l.lake_mount == "/" {
        p.push(format!(
            "local.lake_mount: `{}` must be an absolute path inside the container, e.g. /lake",
            l.lake_mount
        ));
    }
    if l.lake_dir
        .as_ref()
        .is_some_and(|d| d.as_os_str().is_empty())
    {
        p.push("local.lake_dir: must not be empty; e.g. .deployer/lake".into());
    }
    for (name, ls) in &l.services {
        let k = format!("local.services.{name}");
        let Some(service) = c.services.get(name) else {
            p.push(format!(
                "{k}: no service `{name}` in `services`; local settings only adjust existing services ({})",
                c.services.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
            continue;
        };
        for key in ls.environment.keys() {
            if !valid_env_name(key) {
                p.push(format!(
                    "{k}.environment.{key}: not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"
                ));
            }
            if service.secrets.contains(key) {
                p.push(format!(
                    "{k}.environment.{key}: `{key}` is a secret of services.{name}; its value comes from the deployer's environment, not the config"
                ));
            }
        }
    }
}

fn join(values: &[u32]) -> String {
    values
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn valid_name(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_lowercase()
        && !s.ends_with('-')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_bucket(s: &str) -> bool {
    (3..=63).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// An IPv4 network AWS accepts for a VPC or subnet: /16 to /28, no host bits set.
fn parse_cidr(key: &str, s: &str, p: &mut Vec<String>) -> Option<ipnet::Ipv4Net> {
    let net: ipnet::Ipv4Net = match s.parse() {
        Ok(n) => n,
        Err(_) => {
            p.push(format!("{key}: `{s}` is not an IPv4 CIDR like 10.0.0.0/16"));
            return None;
        }
    };
    if !(16..=28).contains(&net.prefix_len()) {
        p.push(format!(
            "{key}: `{s}` has a /{} prefix; AWS allows /16 to /28",
            net.prefix_len()
        ));
        return None;
    }
    if net.network() != net.addr() {
        p.push(format!(
            "{key}: `{s}` has host bits set; did you mean {}?",
            net.trunc()
        ));
        return None;
    }
    Some(net)
}

/// The network the deployer creates: CIDRs that parse, two subnets inside the VPC that do not
/// overlap, and public IPs (the created network has no NAT gateway and no VPC endpoints).
fn validate_new_network(n: &Network, p: &mut Vec<String>) {
    let vpc = parse_cidr("network.vpc_cidr", &n.vpc_cidr, p);
    if n.subnet_cidrs.len() != 2 {
        p.push(format!(
            "network.subnet_cidrs: exactly 2 CIDRs are required (one public subnet in each of two AZs), got {}",
            n.subnet_cidrs.len()
        ));
    }
    let subnets: Vec<(usize, ipnet::Ipv4Net)> = n
        .subnet_cidrs
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            parse_cidr(&format!("network.subnet_cidrs[{i}]"), s, p).map(|net| (i, net))
        })
        .collect();
    if let Some(vpc) = vpc {
        for (i, net) in &subnets {
            if !vpc.contains(net) {
                p.push(format!(
                    "network.subnet_cidrs[{i}]: {net} is not inside network.vpc_cidr {vpc}; pick subnets within it (e.g. {})",
                    vpc.subnets(vpc.prefix_len().clamp(24, 28))
                        .ok()
                        .and_then(|mut s| s.next())
                        .map_or_else(|| vpc.to_string(), |s| s.to_string())
                ));
            }
        }
    }
    for (a, (i, x)) in subnets.iter().enumerate() {
        for (j, y) in subnets.iter().skip(a + 1) {
            if x.contains(y) || y.contains(x) {
                p.push(format!(
                    "network.subnet_cidrs[{j}]: {y} overlaps network.subnet_cidrs[{i}] {x}; subnets must not overlap"
                ));
            }
        }
    }
    if !n.assign_public_ip {
        p.push(
            "network.assign_public_ip: false on the network the deployer creates leaves tasks unable to pull images or read secrets (it has no NAT gateway and no VPC endpoints); keep it true, or use network.existing with a NAT gateway or VPC endpoints".into(),
        );
    }
}

impl Config {
    /// Every name derived from the project (src/names.rs).
    pub fn names(&self) -> crate::names::Names<'_> {
        crate::names::Names::new(&self.project)
    }
}

/// The commented starter file written by `deployer init`.
pub const STARTER: &str = include_str!("../deployer.example.yaml");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::StackPart;

    fn parse_ok(text: &str) -> Config {
        parse(text, Path::new("deployer.yaml"), &[]).expect("valid config")
    }

    fn parse_err(text: &str, overrides: &[&str]) -> String {
        let o: Vec<String> = overrides
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        let e = parse(text, Path::new("deployer.yaml"), &o).expect_err("invalid config");
        assert_eq!(e.code(), crate::error::ExitCode::BadInput);
        e.to_string()
    }

    const MIN: &str = "project: demo\nservices:\n  web:\n    image: example.com/web@sha256:abc\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_ok(MIN);
        let s = &c.services["web"];
        assert_eq!((s.cpu, s.memory, s.desired_count), (256, 512, 1));
        assert_eq!(s.deployment.min_healthy_percent, 100);
        assert_eq!(s.deployment.max_percent, 200);
        assert!(s.deployment.circuit_breaker);
        assert_eq!(c.network.subnet_cidrs.len(), 2);
        assert_eq!(c.names().stack(StackPart::Service("web")), "demo-svc-web");
    }

    #[test]
    fn starter_file_is_valid() {
        let c = parse_ok(STARTER);
        assert!(!c.services.is_empty());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse_err(
            "project: demo\nservices:\n  web:\n    image: x\n    cpus: 256\n",
            &[],
        );
        assert!(e.contains("unknown field `cpus`"), "{e}");
        assert!(e.contains("services.web"), "{e}");
        assert!(e.contains("deployer.yaml"), "{e}");
    }

    #[test]
    fn memory_invalid_for_cpu_lists_allowed_values() {
        let e = parse_err(&format!("{MIN}    cpu: 256\n    memory: 4096\n"), &[]);
        assert!(e.contains("services.web.memory"), "{e}");
        assert!(e.contains("allowed: 512, 1024, 2048"), "{e}");
    }

    #[test]
    fn invalid_cpu_lists_allowed_values() {
        let e = parse_err(MIN, &["services.web.cpu=300"]);
        assert!(e.contains("services.web.cpu: 300"), "{e}");
        assert!(e.contains("256, 512, 1024"), "{e}");
    }

    #[test]
    fn overrides_apply_before_validation() {
        let o = vec![
            "services.*.cpu=1024".to_string(),
            "services.web.memory=2048".to_string(),
        ];
        let c = parse(MIN, Path::new("deployer.yaml"), &o).unwrap();
        assert_eq!(
            (c.services["web"].cpu, c.services["web"].memory),
            (1024, 2048)
        );
    }

    #[test]
    fn bad_override_is_named() {
        let e = parse_err(MIN, &["services.web.cpu"]);
        assert!(e.contains("--set services.web.cpu"), "{e}");
    }

    #[test]
    fn environment_values_may_be_numbers_or_bools_but_not_lists() {
        let c = parse(
            &format!("{MIN}    environment: {{A: 10, B: true, C: '1.5', D: 2.5}}\n"),
            Path::new("deployer.yaml"),
            &["services.web.environment.E=7".to_string()],
        )
        .expect("scalars are accepted");
        let env = &c.services["web"].environment;
        assert_eq!(
            env.values().map(String::as_str).collect::<Vec<_>>(),
            ["10", "true", "1.5", "2.5", "7"]
        );
        let e = parse_err(&format!("{MIN}    environment: {{A: [1, 2]}}\n"), &[]);
        assert!(e.contains("services.web.environment"), "{e}");
    }

    #[test]
    fn network_cidrs_subnets_and_public_ips_are_checked() {
        let e = parse_err(MIN, &["network.subnet_cidrs=[10.1.0.0/24, 10.0.0.0/23]"]);
        assert!(
            e.contains(
                "network.subnet_cidrs[0]: 10.1.0.0/24 is not inside network.vpc_cidr 10.0.0.0/16"
            ),
            "{e}"
        );
        assert!(!e.contains("overlaps"), "{e}");
        let e = parse_err(MIN, &["network.subnet_cidrs=[10.0.0.0/24, 10.0.0.0/23]"]);
        assert!(
            e.contains("network.subnet_cidrs[1]: 10.0.0.0/23 overlaps network.subnet_cidrs[0]"),
            "{e}"
        );
        let e = parse_err(MIN, &["network.vpc_cidr=10.0.0.1/16"]);
        assert!(
            e.contains("has host bits set; did you mean 10.0.0.0/16"),
            "{e}"
        );
        let e = parse_err(MIN, &["network.vpc_cidr=10.0.0.0/8"]);
        assert!(e.contains("AWS allows /16 to /28"), "{e}");
        let e = parse_err(MIN, &["network.assign_public_ip=false"]);
        assert!(
            e.contains("network.assign_public_ip") && e.contains("NAT"),
            "{e}"
        );
    }

    #[test]
    fn health_check_timeout_follows_ecs() {
        let hc = "    health_check: {command: [x], timeout: 61}\n";
        let e = parse_err(&format!("{MIN}{hc}"), &[]);
        assert!(
            e.contains("health_check.timeout: 61 is out of range; ECS allows 2..=60"),
            "{e}"
        );
    }

    #[test]
    fn a_secret_pasted_where_its_name_belongs_is_not_echoed() {
        let e = parse_err(&format!("{MIN}    secrets: [sk-live-0123456789]\n"), &[]);
        assert!(e.contains("services.web.secrets[0]"), "{e}");
        assert!(!e.contains("sk-live-0123456789"), "{e}");
    }

    #[test]
    fn ssm_reserved_project_names_are_refused_when_secrets_exist() {
        let e = parse_err(
            "project: aws-prices\nservices:\n  web:\n    image: i\n    secrets: [KEY]\n",
            &[],
        );
        assert!(e.contains("which SSM reserves"), "{e}");
    }

    #[test]
    fn overrides_never_add_a_service() {
        let e = parse_err(MIN, &["services.nope.cpu=512"]);
        assert!(
            e.contains("--set services.nope.cpu=512: no service `nope`"),
            "{e}"
        );
        let e = parse_err(MIN, &["local.services.nope.environment.A=1"]);
        assert!(e.contains("no service `nope`"), "{e}");
        parse(
            MIN,
            Path::new("d.yaml"),
            &[
                "services.*.cpu=512".into(),
                "services.web.memory=1024".into(),
            ],
        )
        .expect("existing services may be adjusted");
    }

    #[test]
    fn yaml_errors_have_a_position_and_a_hint() {
        let e = parse(
            "project: demo\nservices:\n\tweb:\n    image: i\n",
            Path::new("d.yaml"),
            &[],
        )
        .expect_err("tab");
        assert!(e.message().contains("line 3"), "{}", e.message());
        assert!(e.help.as_deref().is_some_and(|h| h.contains("tab")), "{e}");
        let e = parse(
            "project: a\nproject: b\nservices: {}\n",
            Path::new("d.yaml"),
            &[],
        )
        .expect_err("duplicate");
        assert!(
            e.help.as_deref().is_some_and(|h| h.contains("twice")),
            "{e}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("d.yaml");
        std::fs::write(&f, b"project: demo\nservices: \xff\n").expect("write");
        let e = load(&f, &[]).expect_err("utf-8");
        assert!(
            e.message().contains("invalid byte at offset 24 (line 2)"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let e = parse_err(&format!("{MIN}    desired_count: lots\n"), &[]);
        assert!(e.contains("services.web.desired_count"), "{e}");
    }

    #[test]
    fn several_problems_reported_together() {
        let e = parse_err(
            "project: Demo_1\nservices:\n  web:\n    stop_timeout: 500\n    log_retention_days: 8\n",
            &[],
        );
        for needle in [
            "project:",
            "no image source",
            "stop_timeout",
            "log_retention_days: 8",
        ] {
            assert!(e.contains(needle), "{needle} missing in {e}");
        }
    }

    #[test]
    fn secret_and_env_names_checked() {
        let e = parse_err(
            &format!("{MIN}    secrets: [API_KEY, bad-name]\n    environment: {{API_KEY: x}}\n"),
            &[],
        );
        assert!(e.contains("services.web.secrets[1]"), "{e}");
        assert!(e.contains("also listed in secrets"), "{e}");
    }

    #[test]
    fn fargate_table_matches_docs() {
        assert_eq!(
            fargate_memory_values(512).unwrap(),
            vec![1024, 2048, 3072, 4096]
        );
        assert_eq!(fargate_memory_values(4096).unwrap().last(), Some(&30720));
        assert_eq!(fargate_memory_values(8192).unwrap()[..2], [16384, 20480]);
        assert!(fargate_memory_values(100).is_none());
    }
}
