//! `up` and `redeploy`: the pipeline (src/deploy.rs on AWS, src/local/ on the engine), then
//! the summaries and the result; a failure still writes what happened and what exists now.

use super::envelope::{ApiCalls, FailedDeploy, write_summaries};
use super::{Context, Platform, done};
use crate::cli::{DeployArgs, Redeploy, Up};
use crate::config::TargetKind;
use crate::deploy::Mode;
use crate::error::{ExitCode, Result};
use crate::local::Local;
use crate::summary;
use std::time::Instant;

impl Up {
    pub async fn run(&self, cx: &Context<'_>) -> Result<ExitCode> {
        Box::pin(deploy(cx, &self.deploy, Mode::Up)).await
    }
}

impl Redeploy {
    pub async fn run(&self, cx: &Context<'_>) -> Result<ExitCode> {
        Box::pin(deploy(cx, &self.deploy, Mode::Redeploy)).await
    }
}

async fn deploy(cx: &Context<'_>, args: &DeployArgs, mode: Mode) -> Result<ExitCode> {
    match &cx.platform {
        Platform::Local(local) => on_local(cx, local, args, mode).await,
        Platform::Aws(clients) => Box::pin(on_aws(cx, clients, args, mode)).await,
    }
}

async fn on_local(
    cx: &Context<'_>,
    local: &Local<'_>,
    args: &DeployArgs,
    mode: Mode,
) -> Result<ExitCode> {
    let started = Instant::now();
    let report = match local.up(&args.image, &args.out_dir, mode).await {
        Ok(r) => r,
        Err(e) => {
            let failed = FailedDeploy {
                command: mode.command(),
                project: &cx.loaded.config.project,
                target: "local",
                exists: local.exists_now().await,
                out_dir: &args.out_dir,
            };
            return Err(failed.report(e, cx.ui));
        }
    };
    let md = summary::local_up_markdown(&report);
    write_summaries(
        &args.out_dir,
        &md,
        &summary::local_up_outputs(&report),
        cx.ui,
    )?;
    cx.ui.result(summary::local_up_text(&report).trim_end());
    cx.ui.result_json(
        &done(&report)
            .target("local")
            .seconds(started.elapsed().as_secs_f64()),
    );
    Ok(ExitCode::Success)
}

async fn on_aws(
    cx: &Context<'_>,
    clients: &crate::aws::Clients,
    args: &DeployArgs,
    mode: Mode,
) -> Result<ExitCode> {
    let (ui, loaded) = (cx.ui, cx.loaded);
    let started = Instant::now();
    cx.lock(clients, mode.command()).await?;
    if mode == Mode::Up {
        crate::target::record(&loaded.dir, &loaded.config.project, TargetKind::Aws)?;
    }
    let ctx = cx.aws(clients, args.rollback_on_interrupt());
    let report = crate::deploy::up(&ctx, &args.image, &args.out_dir, mode).await?;
    write_summaries(
        &args.out_dir,
        &summary::up_markdown(&report),
        &summary::up_outputs(&report),
        ui,
    )?;
    ui.result(summary::up_text(&report).trim_end());
    let calls = ApiCalls::of(clients);
    ui.detail(format!(
        "{:.2}s, AWS API calls: {calls}",
        started.elapsed().as_secs_f64()
    ));
    ui.result_json(
        &done(&report)
            .seconds(started.elapsed().as_secs_f64())
            .api_calls(calls),
    );
    Ok(ExitCode::Success)
}
