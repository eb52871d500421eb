//! Commands and flags (clap derive). No logic here: each command is a type whose `run` lives
//! in src/commands/ (one file per command).

use crate::config::TargetKind;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "deployer",
    version,
    about = "Run real-time data pipelines as always-on ECS Fargate services",
    after_help = "Exit codes: 0 success, 1 failure, 2 bad input (or `plan --exit-code`: changes), \
                  3 timeout, 4 rolled back, 5 locked (another deploy of the project is running), \
                  130 interrupted."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Config file.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "DEPLOYER_CONFIG",
        default_value = "deployer.yaml"
    )]
    pub config: PathBuf,
    /// Where the services run: `aws` (ECS Fargate) or `local` (the local Docker engine).
    /// Overrides `target:` in the config.
    #[arg(long, global = true, env = "DEPLOYER_TARGET", value_enum)]
    pub target: Option<TargetKind>,
    /// AWS profile (shared config/credentials files).
    #[arg(long, global = true, env = "AWS_PROFILE")]
    pub profile: Option<String>,
    /// AWS region (overrides `region:` in the config).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Send every AWS API call here (e.g. a local emulator). AWS_ENDPOINT_URL also works.
    #[arg(long, global = true)]
    pub endpoint_url: Option<String>,
    /// Print one JSON result object on stdout; progress stays on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// More detail (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Deadline for each stack operation and rollout wait, in seconds.
    #[arg(long, global = true, default_value_t = 1800)]
    pub timeout: u64,
    /// Bound on each AWS API call, retries included, in seconds (connect: 5 s; each
    /// attempt: half of it).
    #[arg(long, global = true, env = "DEPLOYER_API_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_timeout: u64,
    /// Wait up to this many seconds for another deploy of the project to finish, instead of
    /// exiting 5 at once.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 0)]
    pub wait_for_lock: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented starter deployer.yaml for the bundled flow.
    Init(Init),
    /// Show what `up` would create or change, per stack.
    Plan(Plan),
    /// Deploy everything: registry, network, cluster, secrets, services.
    Up(Up),
    /// Roll new images and task definitions onto the infrastructure `up` created, and wait.
    Redeploy(Redeploy),
    /// Put services back on an earlier task definition revision and wait for the deployment.
    /// The next `up`/`redeploy` rolls forward to what the config says.
    Rollback(Rollback),
    /// Build each service's image (and push it with --push).
    Build(Build),
    /// Delete everything `up` created, in order.
    Destroy(Destroy),
    /// The services' logs (local target: the containers' logs, prefixed by container).
    Logs(Logs),
    /// Stacks, services, task definition revisions and images.
    Status(Status),
}

impl Command {
    /// The config overrides of a command that loads the config (every one but `init`).
    pub fn overrides(&self) -> Option<&Overrides> {
        Some(match self {
            Command::Init(_) => return None,
            Command::Plan(c) => &c.overrides,
            Command::Up(Up { deploy }) | Command::Redeploy(Redeploy { deploy }) => {
                &deploy.overrides
            }
            Command::Rollback(c) => &c.overrides,
            Command::Build(c) => &c.overrides,
            Command::Destroy(c) => &c.overrides,
            Command::Logs(c) => &c.overrides,
            Command::Status(c) => &c.overrides,
        })
    }
}

#[derive(Debug, Args)]
pub struct Init {
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct Plan {
    #[command(flatten)]
    pub overrides: Overrides,
    /// Exit 0 when nothing would change, 2 when something would (for CI).
    #[arg(long)]
    pub exit_code: bool,
}

#[derive(Debug, Args)]
pub struct Up {
    #[command(flatten)]
    pub deploy: DeployArgs,
}

#[derive(Debug, Args)]
pub struct Redeploy {
    #[command(flatten)]
    pub deploy: DeployArgs,
}

#[derive(Debug, Args)]
pub struct Rollback {
    /// Only this service (default: every service).
    #[arg(long)]
    pub service: Option<String>,
    /// This revision number (default: the newest ACTIVE revision older than the running one).
    #[arg(long, value_name = "REVISION")]
    pub to: Option<i32>,
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Args)]
pub struct Build {
    #[command(flatten)]
    pub overrides: Overrides,
    /// Push to the registry after building.
    #[arg(long)]
    pub push: bool,
    #[command(flatten)]
    pub image: ImageFlags,
}

#[derive(Debug, Args)]
pub struct Destroy {
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Local target: keep the project's images in the engine (containers and the network
    /// are still removed).
    #[arg(long)]
    pub keep_images: bool,
    /// Also delete the data lake the deployer made (the bucket and every object version;
    /// locally the lake folder). Without it the data always stays.
    #[arg(long)]
    pub delete_data: bool,
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Args)]
pub struct Status {
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Flags of `logs`; one definition for both targets.
#[derive(Debug, Args)]
pub struct Logs {
    /// Only this service (default: every service).
    #[arg(long)]
    pub service: Option<String>,
    /// Keep printing new lines until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only lines newer than this: seconds, or a duration such as 90s, 10m, 2h, 1d.
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    pub since: Option<std::time::Duration>,
    /// At most this many lines per container before following (default: all).
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// `90`, `90s`, `10m`, `2h`, `1d` -> a duration.
pub fn parse_since(raw: &str) -> Result<std::time::Duration, String> {
    let raw = raw.trim();
    let (digits, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration; use e.g. 90s, 10m, 2h, 1d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{raw}`: unknown unit `{unit}`; use s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// Flags shared by `up` and `redeploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub overrides: Overrides,
    /// Write the deployment summary and task-definition.json artifacts here.
    #[arg(long, default_value = ".deployer")]
    pub out_dir: PathBuf,
    #[command(flatten)]
    pub image: ImageFlags,
    /// When a rollout wait is interrupted (Ctrl-C, SIGTERM, a cancelled CI job), stop the
    /// deployment with a rollback (ECS StopServiceDeployment) instead of leaving it to run on.
    /// Default: on when CI is set, off otherwise. The local target always undoes its roll.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub rollback_on_interrupt: Option<bool>,
}

impl DeployArgs {
    /// `--rollback-on-interrupt`, defaulting to whether CI is set.
    pub fn rollback_on_interrupt(&self) -> bool {
        self.rollback_on_interrupt
            .unwrap_or_else(|| std::env::var_os("CI").is_some_and(|v| !v.is_empty()))
    }
}

#[derive(Debug, Args, Default)]
pub struct Overrides {
    /// Override a config value: KEY.PATH=VALUE (e.g. services.web.cpu=512; `*` = every service).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Task cpu units for every service (same as --set services.*.cpu=N).
    #[arg(long)]
    pub cpu: Option<u32>,
    /// Task memory (MiB) for every service (same as --set services.*.memory=N).
    #[arg(long)]
    pub memory: Option<u32>,
    /// Deploy this prebuilt image URI to every service (no Docker needed).
    #[arg(long, value_name = "URI")]
    pub image: Option<String>,
}

impl Overrides {
    /// All overrides as `--set` expressions, in the order they apply.
    pub fn as_set(&self) -> Vec<String> {
        let mut out = self.set.clone();
        if let Some(cpu) = self.cpu {
            out.push(format!("services.*.cpu={cpu}"));
        }
        if let Some(memory) = self.memory {
            out.push(format!("services.*.memory={memory}"));
        }
        if let Some(image) = &self.image {
            // A prebuilt image replaces the build section.
            out.push(format!(
                "services.*.image={}",
                serde_json::Value::String(image.clone())
            ));
            out.push("services.*.build=null".into());
        }
        out
    }
}

#[derive(Debug, Args, Default)]
pub struct ImageFlags {
    /// Push to this registry (HOST:PORT) instead of ECR's endpoint (e.g. a local registry).
    #[arg(long, env = "DEPLOYER_REGISTRY", value_name = "HOST:PORT")]
    pub registry: Option<String>,
    /// Refuse to build from a work tree with uncommitted changes (for CI).
    #[arg(long)]
    pub require_clean: bool,
}

#[cfg(test)]
mod help_tests {
    use super::Cli;
    use clap::CommandFactory;

    /// `[env: NAME=value]` -> `[env: NAME]`: the snapshot must not depend on the environment
    /// the tests run in.
    fn without_env_values(help: &str) -> String {
        let mut out = String::with_capacity(help.len());
        let mut rest = help;
        while let Some(i) = rest.find("[env: ") {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            let end = tail.find(']').unwrap_or(tail.len() - 1);
            let inner = &tail[..end];
            out.push_str(inner.split_once('=').map_or(inner, |(name, _)| name));
            out.push(']');
            rest = &tail[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// `--help` of the deployer and of every command, pinned: a change to a flag, its wording
    /// or its default shows up in review.
    #[test]
    fn help_of_every_command() {
        let mut root = Cli::command().term_width(100);
        root.build();
        let mut text = format!("$ deployer --help\n{}\n", root.render_long_help());
        for sub in root.get_subcommands_mut() {
            let name = sub.get_name().to_string();
            let help = sub.clone().term_width(100).render_long_help();
            text.push_str(&format!("\n$ deployer {name} --help\n{help}\n"));
        }
        insta::assert_snapshot!("help", without_env_values(&text));
    }

    #[test]
    fn env_values_are_dropped_from_help() {
        assert_eq!(
            without_env_values("a [env: AWS_PROFILE=secret-ish] b [env: X]"),
            "a [env: AWS_PROFILE] b [env: X]"
        );
    }
}
