//! Commands as units: each command is a type in src/cli.rs with a `run` in a file of its own
//! here, written once for both targets. [`run`] loads the config, resolves the target, builds
//! the [`Context`] (and with it the platform behind the target boundary) once, dispatches,
//! and adds the AWS API calls made to a failure. main.rs parses, runs, maps the error to an
//! exit code.

mod build;
mod deploy;
mod destroy;
mod envelope;
mod init;
mod logs;
mod plan;
mod rollback;
mod status;

pub use envelope::Failed;

use crate::aws::{Clients, Target};
use crate::cli::{Cli, Command, Global, Overrides};
use crate::config::{self, Loaded, TargetKind};
use crate::error::{ExitCode, Result};
use crate::local::Local;
use crate::stacks::Wait;
use crate::ui::Ui;
use envelope::{ApiCalls, Done};
use std::time::Duration;

/// What a command acts on, behind the target boundary (src/target.rs).
pub enum Platform<'a> {
    /// ECS Fargate through the AWS APIs.
    Aws(Clients),
    /// The local Docker engine.
    Local(Local<'a>),
}

/// What every command gets: the global flags, the output, the loaded config and the platform.
pub struct Context<'a> {
    pub global: &'a Global,
    pub ui: &'a Ui,
    pub loaded: &'a Loaded,
    pub platform: Platform<'a>,
}

impl Context<'_> {
    /// The rollout and stack-operation deadline (`--timeout`).
    fn wait(&self) -> Wait {
        Wait {
            timeout: Duration::from_secs(self.global.timeout),
            ..Wait::default()
        }
    }

    /// The pipeline context of src/deploy.rs on AWS.
    fn aws<'c>(
        &'c self,
        clients: &'c Clients,
        rollback_on_interrupt: bool,
    ) -> crate::deploy::Ctx<'c> {
        crate::deploy::Ctx {
            loaded: self.loaded,
            clients,
            ui: self.ui.clone(),
            wait: self.wait(),
            rollback_on_interrupt,
        }
    }

    /// Commands that change things on AWS take the deploy lock before their first change
    /// (src/lock.rs).
    async fn lock(&self, clients: &Clients, command: &str) -> Result<()> {
        let identity = crate::aws::identity(&clients.sts).await?;
        let store = crate::lock::Store::s3(
            clients.s3.clone(),
            &identity.account,
            &clients.region,
            &self.loaded.config.project,
        );
        crate::lock::install(crate::lock::Gate::new(
            store,
            command,
            Duration::from_secs(self.global.wait_for_lock),
            self.ui.clone(),
        ));
        Ok(())
    }
}

/// Run the command line's command.
pub async fn run(cli: &Cli, ui: &Ui) -> Result<ExitCode> {
    let g = &cli.global;
    // `init` writes the config: there is none to load yet.
    if let Command::Init(init) = &cli.command {
        return init.run(&g.config, ui);
    }
    let none = Overrides::default();
    let overrides = cli.command.overrides().unwrap_or(&none);
    let loaded = config::load(&g.config, &overrides.as_set())?;
    let target = crate::target::resolve(g.target, &loaded);
    crate::target::guard(&loaded, target)?;
    let platform = match target {
        TargetKind::Local => Platform::Local(Local::new(
            &loaded,
            ui,
            Duration::from_secs(g.wait_for_lock),
        )),
        TargetKind::Aws => Platform::Aws(clients(g, &loaded).await?),
    };
    let cx = Context {
        global: g,
        ui,
        loaded: &loaded,
        platform,
    };
    Box::pin(dispatch(&cli.command, &cx)).await.map_err(|e| {
        // On AWS a failure carries the API calls made (`api_calls` in the `--json` error), so
        // "refused before the first mutating call" is something a test can see.
        match &cx.platform {
            Platform::Aws(clients) => envelope::with_api_calls(e, ApiCalls::of(clients)),
            Platform::Local(_) => e,
        }
    })
}

async fn dispatch(command: &Command, cx: &Context<'_>) -> Result<ExitCode> {
    match command {
        Command::Init(c) => c.run(&cx.global.config, cx.ui),
        Command::Plan(c) => c.run(cx).await,
        Command::Up(c) => Box::pin(c.run(cx)).await,
        Command::Redeploy(c) => Box::pin(c.run(cx)).await,
        Command::Rollback(c) => c.run(cx).await,
        Command::Build(c) => c.run(cx).await,
        Command::Destroy(c) => c.run(cx).await,
        Command::Logs(c) => c.run(cx).await,
        Command::Status(c) => c.run(cx).await,
    }
}

async fn clients(global: &Global, loaded: &Loaded) -> Result<Clients> {
    // Precedence: --region, then the config file, then the SDK chain (AWS_REGION, profile).
    let region = global
        .region
        .clone()
        .or_else(|| loaded.config.region.clone());
    Clients::new(&Target {
        profile: global.profile.clone(),
        region,
        endpoint_url: global.endpoint_url.clone(),
        max_attempts: None,
        api_timeout: Some(Duration::from_secs(global.api_timeout)),
    })
    .await
}

/// A command's result object for `--json` (see [`Done`]).
fn done<T: serde::Serialize>(report: &T) -> Done<'_, T> {
    Done::new(report)
}
