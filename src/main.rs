//! Parse args, set up output, run one command, map errors to exit codes.

use clap::Parser;
use deployer::aws::{Clients, Target};
use deployer::cli::{Cli, Command, DeployArgs, Global, Overrides};
use deployer::config::{self, Loaded, TargetKind};
use deployer::deploy::{self, Ctx};
use deployer::error::{Error, ExitCode, Result};
use deployer::local::Local;
use deployer::rollout::rollback;
use deployer::stacks::Wait;
use deployer::ui::Ui;
use deployer::{destroy, interrupt, status, summary, target};
use serde_json::json;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

fn main() {
    let cli = Cli::parse();
    let verbosity = if cli.global.quiet {
        -1
    } else {
        cli.global.verbose.min(2) as i8
    };
    let ui = Ui::new(cli.global.json, verbosity);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            ui.error(format!("cannot start the async runtime: {e}"));
            std::process::exit(ExitCode::Failure as i32);
        }
    };
    let code = runtime.block_on(async {
        interrupt::install_with(ui.clone());
        let result = interrupt_bounded(Box::pin(run(&cli, &ui))).await;
        // The deploy lock goes last, on every path (also after an interrupt: it is undo).
        deployer::lock::release().await;
        match result {
            Ok(_) if interrupt::requested() => {
                ui.warn("interrupted as the run finished: nothing was changed after the interrupt; the result above is the state");
                ExitCode::Interrupted
            }
            Ok(code) => code,
            Err(e) => {
                let e = interrupt::settle(e);
                ui.error(&e);
                ui.result_json(&Failed {
                    ok: false,
                    exit_code: e.code as i32,
                    error: &e.message,
                    help: e.help.as_deref(),
                    report: e.report.as_deref().filter(|r| r.is_object()),
                });
                e.code
            }
        }
    });
    std::process::exit(code as i32);
}

/// Run the command; after an interrupt give it `interrupt::SETTLE` to fail on a refused call
/// or start its undo, and an undo up to `interrupt::grace()`; then stop it (a hung call must not
/// hold the exit).
async fn interrupt_bounded(
    run: impl std::future::Future<Output = Result<ExitCode>>,
) -> Result<ExitCode> {
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => return r,
        _ = interrupt::cancelled() => {}
    }
    let cancelled_at = tokio::time::Instant::now();
    let settle = cancelled_at + interrupt::SETTLE;
    loop {
        let tick = tokio::time::sleep(std::time::Duration::from_millis(50));
        tokio::select! {
            r = &mut run => return r,
            _ = tick => {}
        }
        let now = tokio::time::Instant::now();
        if now >= cancelled_at + interrupt::grace() || (now >= settle && !interrupt::undoing()) {
            return Err(Error::new(
                ExitCode::Interrupted,
                "interrupted: stopped the step in progress (a read, or an undo that ran out of time)",
            )
            .with_help("nothing was changed after the interrupt; run `deployer status` to see what exists, then `deployer up` to converge"));
        }
    }
}

/// Commands that change things take the deploy lock before their first change (src/lock.rs).
async fn install_lock(
    g: &Global,
    clients: &Clients,
    project: &str,
    command: &str,
    ui: &Ui,
) -> Result<()> {
    let identity = deployer::aws::identity(&clients.sts).await?;
    let store = deployer::lock::Store::s3(
        clients.s3.clone(),
        &identity.account,
        &clients.region,
        project,
    );
    deployer::lock::install(deployer::lock::Gate::new(
        store,
        command,
        Duration::from_secs(g.wait_for_lock),
        ui.clone(),
    ));
    Ok(())
}

fn load(global: &Global, overrides: &Overrides) -> Result<Loaded> {
    config::load(&global.config, &overrides.as_set())
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

fn wait(global: &Global) -> Wait {
    Wait {
        timeout: Duration::from_secs(global.timeout),
        ..Wait::default()
    }
}

/// API call counts for `-v` and `--json`.
fn calls_json(cl: &Clients) -> ApiCalls {
    api_calls(&cl.calls, &cl.lock_calls)
}

fn api_calls(calls: &deployer::aws::CallCounter, lock: &deployer::aws::CallCounter) -> ApiCalls {
    let by_operation = calls.snapshot();
    ApiCalls {
        total: by_operation.values().sum(),
        by_operation,
        mutating: calls.mutating(),
        lock: lock.snapshot(),
    }
}

async fn run(cli: &Cli, ui: &Ui) -> Result<ExitCode> {
    let g = &cli.global;
    let overrides = match &cli.command {
        Command::Init { force } => return init(&g.config, *force, ui),
        Command::Plan { overrides, .. }
        | Command::Build { overrides, .. }
        | Command::Status { overrides }
        | Command::Rollback { overrides, .. }
        | Command::Destroy { overrides, .. } => overrides,
        Command::Logs(args) => &args.overrides,
        Command::Up(args) | Command::Redeploy(args) => &args.overrides,
    };
    let loaded = load(g, overrides)?;
    let target = target::resolve(g.target, &loaded);
    target::guard(&loaded, target)?;
    match target {
        TargetKind::Local => Box::pin(run_local(cli, ui, &loaded)).await,
        TargetKind::Aws => run_aws(cli, ui, loaded).await,
    }
}

/// Every command on the local Docker engine (src/local/).
async fn run_local(cli: &Cli, ui: &Ui, loaded: &Loaded) -> Result<ExitCode> {
    let g = &cli.global;
    let local = Local::new(loaded, ui, Duration::from_secs(g.wait_for_lock));
    match &cli.command {
        Command::Init { .. } => unreachable!("init runs before a config is loaded"),
        Command::Plan { exit_code, .. } => {
            let report = local.plan().await?;
            ui.result(summary::local_plan_text(&report).trim_end());
            ui.result_json(&done(&report));
            Ok(if *exit_code && report.changes {
                ExitCode::BadInput
            } else {
                ExitCode::Success
            })
        }
        Command::Up(args) | Command::Redeploy(args) => {
            local_deploy(cli, ui, loaded, &local, args).await
        }
        Command::Build { push, image, .. } => {
            let images = interrupt::or_interrupted(
                deploy::build_images(&loaded.config, &loaded.dir, None, image, *push, ui),
                "the image build",
                "the build was stopped",
            )
            .await?;
            print_images(loaded, &images, ui)
        }
        Command::Rollback { service, to, .. } => {
            local_rollback(ui, &local, service.as_deref(), *to).await
        }
        Command::Destroy {
            yes,
            keep_images,
            delete_data,
            ..
        } => {
            let confirm = |what: &[String]| confirm_destroy(&loaded.config.project, what, *yes, ui);
            let report = local.destroy(*keep_images, *delete_data, confirm).await?;
            ui.result(summary::local_destroy_text(&report).trim_end());
            ui.result_json(&done(&report));
            Ok(ExitCode::Success)
        }
        Command::Status { .. } => {
            let report = local.status().await?;
            ui.result(summary::local_status_text(&report).trim_end());
            ui.result_json(&done(&report));
            Ok(ExitCode::Success)
        }
        Command::Logs(args) => {
            let lines = deployer::local::logs::print(&loaded.config, args, ui).await?;
            ui.result_json(&Done {
                target: Some("local"),
                ..done(&json!({ "lines": lines }))
            });
            Ok(ExitCode::Success)
        }
    }
}

/// `up` or `redeploy` on the local engine (src/local/).
async fn local_deploy(
    cli: &Cli,
    ui: &Ui,
    loaded: &Loaded,
    local: &Local<'_>,
    args: &DeployArgs,
) -> Result<ExitCode> {
    let started = Instant::now();
    let mode = match &cli.command {
        Command::Redeploy(_) => deploy::Mode::Redeploy,
        _ => deploy::Mode::Up,
    };
    let report = match local.up(&args.image, &args.out_dir, mode).await {
        Ok(r) => r,
        Err(e) => {
            let exists = local.exists_now().await;
            return Err(failed(mode, loaded, "local", e, exists, &args.out_dir, ui));
        }
    };
    let md = summary::local_up_markdown(&report);
    write_summaries(&args.out_dir, &md, &summary::local_up_outputs(&report), ui)?;
    ui.result(summary::local_up_text(&report).trim_end());
    ui.result_json(&Done {
        target: Some("local"),
        seconds: Some(started.elapsed().as_secs_f64()),
        ..done(&report)
    });
    Ok(ExitCode::Success)
}

/// `rollback` on the local engine: to the previous kept revision, or `--to N`.
async fn local_rollback(
    ui: &Ui,
    local: &Local<'_>,
    service: Option<&str>,
    to: Option<i32>,
) -> Result<ExitCode> {
    let to =
        match to {
            Some(n) => Some(u32::try_from(n).map_err(|_| {
                Error::bad_input(format!("--to {n}: a revision is a positive number"))
            })?),
            None => None,
        };
    let rolled_back = local.rollback(service, to).await?;
    for (service, from, to) in &rolled_back {
        ui.result(format!("{service}: rolled back revision {from} -> {to}"));
    }
    let list: Vec<_> = rolled_back
        .iter()
        .map(|(s, f, t)| json!({"service": s, "from": f, "to": t}))
        .collect();
    ui.result_json(&Done {
        target: Some("local"),
        ..done(&json!({ "rollbacks": list }))
    });
    Ok(ExitCode::Success)
}

/// A failed `up`/`redeploy`: the job summary, outputs and `--json` still say what happened
/// and what exists now; the error gains the list.
fn failed(
    mode: deploy::Mode,
    loaded: &Loaded,
    target: &str,
    e: Error,
    exists: Vec<String>,
    out_dir: &Path,
    ui: &Ui,
) -> Error {
    // Bad input and a held lock changed nothing: no report to write.
    if matches!(e.code, ExitCode::BadInput | ExitCode::Locked) {
        return e;
    }
    let f = summary::Failure::new(mode.command(), &loaded.config.project, target, &e, exists);
    let _ = std::fs::create_dir_all(out_dir);
    if let Err(w) = write_summaries(
        out_dir,
        &summary::failure_markdown(&f),
        &summary::failure_outputs(&f),
        ui,
    ) {
        ui.warn(w.message);
    }
    let now = if f.exists_now.is_empty() {
        "nothing of the project".to_string()
    } else {
        f.exists_now.join(", ")
    };
    let report = serde_json::to_value(&f).unwrap_or_default();
    Error {
        message: format!("{}\n  exists now: {now}", e.message),
        report: Some(Box::new(report)),
        ..e
    }
}

/// The `--json` object of a command that succeeded: `"ok": true`, the report's own fields,
/// then what the command adds. One shape for every command.
#[derive(serde::Serialize)]
struct Done<'a, T: serde::Serialize> {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'static str>,
    #[serde(flatten)]
    report: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_calls: Option<ApiCalls>,
}

fn done<T: serde::Serialize>(report: &T) -> Done<'_, T> {
    Done {
        ok: true,
        target: None,
        report,
        seconds: None,
        api_calls: None,
    }
}

/// The `--json` object of a command that failed; a failure report's fields (src/summary.rs)
/// are merged in.
#[derive(serde::Serialize)]
struct Failed<'a> {
    ok: bool,
    exit_code: i32,
    error: &'a str,
    help: Option<&'a str>,
    #[serde(flatten)]
    report: Option<&'a serde_json::Value>,
}

/// The AWS API calls a command made, by operation; `mutating` is what changed something.
#[derive(serde::Serialize)]
struct ApiCalls {
    total: u32,
    by_operation: std::collections::BTreeMap<String, u32>,
    mutating: std::collections::BTreeMap<String, u32>,
    lock: std::collections::BTreeMap<String, u32>,
}

impl std::fmt::Display for ApiCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| std::fmt::Error)?)
    }
}

/// `<out>/summary.md`, the job summary and the step outputs. The summary file is a
/// convenience; failing to write it must not fail a deploy. The step outputs are not: later
/// steps of the job would read them empty, so failing to write them is an error (exit 1).
fn write_summaries(out_dir: &Path, md: &str, outputs: &str, ui: &Ui) -> Result<()> {
    if let Err(e) = std::fs::write(out_dir.join("summary.md"), md) {
        ui.warn(format!(
            "could not write {}/summary.md: {e}",
            out_dir.display()
        ));
    }
    for (var, text) in [("GITHUB_STEP_SUMMARY", md), ("GITHUB_OUTPUT", outputs)] {
        summary::append_env_file(var, text).map_err(|e| {
            Error::failure(format!(
                "could not write ${var} ({e}): later steps of the job would read empty outputs (the command's own summary is in {}/summary.md)",
                out_dir.display()
            ))
            .with_help(format!("make ${var} a writable file, or unset it outside GitHub Actions"))
        })?;
    }
    Ok(())
}

fn print_images(loaded: &Loaded, images: &[deploy::ImageReport], ui: &Ui) -> Result<ExitCode> {
    if images.is_empty() {
        return Err(Error::bad_input(format!(
            "{}: no service has a `build:` section; nothing to build",
            loaded.path.display()
        )));
    }
    for i in images {
        ui.result(format!("{} {}", i.service, i.image.image_uri));
    }
    ui.result_json(&done(&json!({ "images": images })));
    Ok(ExitCode::Success)
}

/// Every command against AWS. A failure carries the API calls made (`api_calls` in the
/// `--json` error), so "refused before the first mutating call" is something a test can see.
async fn run_aws(cli: &Cli, ui: &Ui, loaded: Loaded) -> Result<ExitCode> {
    let clients = clients(&cli.global, &loaded).await?;
    let counters = (clients.calls.clone(), clients.lock_calls.clone());
    Box::pin(aws_command(cli, ui, loaded, clients))
        .await
        .map_err(|e| {
            let calls = api_calls(&counters.0, &counters.1);
            let mut report = e.report.as_deref().cloned().unwrap_or_else(|| json!({}));
            report["api_calls"] = serde_json::to_value(calls).unwrap_or_default();
            e.with_report(report)
        })
}

/// Kept whole: a dispatch, one short arm per command.
async fn aws_command(cli: &Cli, ui: &Ui, loaded: Loaded, clients: Clients) -> Result<ExitCode> {
    let g = &cli.global;
    match &cli.command {
        Command::Init { .. } => unreachable!("init runs before a config is loaded"),
        Command::Plan { exit_code, .. } => {
            let ctx = Ctx {
                loaded,
                clients,
                ui: ui.clone(),
                wait: wait(g),
                rollback_on_interrupt: false,
            };
            let report = deploy::plan(&ctx).await?;
            ui.result(summary::plan_text(&report).trim_end());
            ui.result_json(&Done {
                api_calls: Some(calls_json(&ctx.clients)),
                ..done(&report)
            });
            Ok(if *exit_code && report.changes {
                ExitCode::BadInput
            } else {
                ExitCode::Success
            })
        }
        Command::Up(args) | Command::Redeploy(args) => {
            Box::pin(aws_deploy(cli, ui, loaded, clients, args)).await
        }
        Command::Build { push, image, .. } => {
            let images = interrupt::or_interrupted(
                deploy::build_images(
                    &loaded.config,
                    &loaded.dir,
                    Some(&clients.ecr),
                    image,
                    *push,
                    ui,
                ),
                "the image build",
                "the build was stopped",
            )
            .await?;
            print_images(&loaded, &images, ui)
        }
        Command::Rollback { service, to, .. } => {
            install_lock(g, &clients, &loaded.config.project, "rollback", ui).await?;
            let refs =
                deploy::service_refs(&loaded.config, &clients.cfn, service.as_deref()).await?;
            let mut rolled_back = Vec::new();
            for r in &refs {
                let report = rollback::rollback(&clients, r, *to, wait(g), ui).await?;
                ui.result(format!(
                    "{}: rolled back {} -> {}",
                    report.service,
                    rollback::short(&report.from),
                    rollback::short(&report.to)
                ));
                rolled_back.push(report);
            }
            ui.result_json(&done(&json!({ "rollbacks": rolled_back })));
            Ok(ExitCode::Success)
        }
        Command::Destroy {
            yes,
            keep_images,
            delete_data,
            ..
        } => aws_destroy(cli, ui, &loaded, &clients, *yes, *keep_images, *delete_data).await,
        Command::Status { .. } => {
            let report = status::status(&loaded.config, &clients).await?;
            ui.result(summary::status_text(&report).trim_end());
            ui.result_json(&done(&report));
            Ok(ExitCode::Success)
        }
        Command::Logs(args) => {
            let lines =
                deployer::cloudwatch::print(&clients.logs, &loaded.config, args, ui).await?;
            ui.result_json(&Done {
                target: Some("aws"),
                ..done(&json!({ "lines": lines }))
            });
            Ok(ExitCode::Success)
        }
    }
}

/// `up` or `redeploy` on AWS: lock, pipeline (src/deploy.rs), summaries, result.
async fn aws_deploy(
    cli: &Cli,
    ui: &Ui,
    loaded: Loaded,
    clients: Clients,
    args: &DeployArgs,
) -> Result<ExitCode> {
    let g = &cli.global;
    let started = Instant::now();
    let mode = match &cli.command {
        Command::Redeploy(_) => deploy::Mode::Redeploy,
        _ => deploy::Mode::Up,
    };
    let DeployArgs { out_dir, image, .. } = args;
    install_lock(g, &clients, &loaded.config.project, mode.command(), ui).await?;
    if mode == deploy::Mode::Up {
        target::record(&loaded.dir, &loaded.config.project, TargetKind::Aws)?;
    }
    let ctx = Ctx {
        loaded,
        clients,
        ui: ui.clone(),
        wait: wait(g),
        rollback_on_interrupt: args.rollback_on_interrupt(),
    };
    let report = deploy::up(&ctx, image, out_dir, mode).await?;
    write_summaries(
        out_dir,
        &summary::up_markdown(&report),
        &summary::up_outputs(&report),
        ui,
    )?;
    ui.result(summary::up_text(&report).trim_end());
    let calls = calls_json(&ctx.clients);
    ui.detail(format!(
        "{:.2}s, AWS API calls: {calls}",
        started.elapsed().as_secs_f64()
    ));
    ui.result_json(&Done {
        seconds: Some(started.elapsed().as_secs_f64()),
        api_calls: Some(calls),
        ..done(&report)
    });
    Ok(ExitCode::Success)
}

/// `destroy` on AWS: lock, confirmation, ordered teardown (src/destroy.rs).
async fn aws_destroy(
    cli: &Cli,
    ui: &Ui,
    loaded: &Loaded,
    clients: &Clients,
    yes: bool,
    keep_images: bool,
    delete_data: bool,
) -> Result<ExitCode> {
    let g = &cli.global;
    if keep_images {
        ui.warn("--keep-images applies to the local target; on AWS the repository and its images are deleted");
    }
    install_lock(g, clients, &loaded.config.project, "destroy", ui).await?;
    let confirm = |what: &[String]| confirm_destroy(&loaded.config.project, what, yes, ui);
    let report =
        destroy::destroy(&loaded.config, clients, wait(g), ui, delete_data, confirm).await?;
    target::clear(&loaded.dir, &loaded.config.project);
    ui.result(summary::destroy_text(&report).trim_end());
    ui.result_json(&done(&report));
    Ok(ExitCode::Success)
}

/// On a TTY ask for the project name; elsewhere require --yes.
fn confirm_destroy(project: &str, what: &[String], yes: bool, ui: &Ui) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(
            Error::bad_input("destroy needs confirmation and stdin is not a terminal")
                .with_help("pass --yes to destroy without a prompt"),
        );
    }
    ui.step(format!("This deletes:\n  {}", what.join("\n  ")));
    let line = ui.prompt(format!("Type the project name ({project}) to confirm: "));
    if line.trim() == project {
        Ok(())
    } else {
        Err(Error::bad_input(
            "destroy not confirmed; nothing was deleted",
        ))
    }
}

fn init(path: &Path, force: bool, ui: &Ui) -> Result<ExitCode> {
    if path.exists() && !force {
        return Err(
            Error::bad_input(format!("{} already exists", path.display()))
                .with_help("pass --force to overwrite it, or --config to write another file"),
        );
    }
    std::fs::write(path, config::STARTER)
        .map_err(|e| Error::failure(format!("cannot write {}: {e}", path.display())))?;
    ui.result(format!(
        "wrote {}: edit `project`, `data_lake` and `services`, then run `deployer plan`",
        path.display()
    ));
    ui.result_json(&done(&json!({ "path": path })));
    Ok(ExitCode::Success)
}
