//! Parse args, set up output, run one command (src/commands/), map errors to exit codes.

use clap::Parser;
use deployer::cli::Cli;
use deployer::commands::{self, Failed};
use deployer::error::{Error, ExitCode, Result};
use deployer::interrupt;
use deployer::ui::Ui;

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
        let result = interrupt_bounded(Box::pin(commands::run(&cli, &ui))).await;
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
                // The wrapped errors as Rust sees them, for a bug report: only at -vv.
                for cause in e.causes() {
                    ui.debug(format!("  caused by: {cause}"));
                }
                ui.result_json(&Failed::new(&e));
                e.code()
            }
        }
    });
    std::process::exit(code as i32);
}

/// Run the command; after an interrupt give it `interrupt::SETTLE` to fail on a refused call
/// or start its undo (and again once an undo is over, to report it), and an undo up to
/// `interrupt::grace()`; then stop it (a hung call must not hold the exit).
async fn interrupt_bounded(
    run: impl std::future::Future<Output = Result<ExitCode>>,
) -> Result<ExitCode> {
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => return r,
        _ = interrupt::cancelled() => {}
    }
    let cancelled_at = tokio::time::Instant::now();
    let mut settle = cancelled_at + interrupt::SETTLE;
    let mut grace = interrupt::grace();
    loop {
        let tick = tokio::time::sleep(std::time::Duration::from_millis(50));
        tokio::select! {
            r = &mut run => return r,
            _ = tick => {}
        }
        let now = tokio::time::Instant::now();
        // What follows an undo (saying what exists now, writing the summaries) is the end of
        // that undo: it gets a settle of its own once the undo is over, within the grace the
        // undo had (the longer one, once a self-undoing step ran).
        grace = grace.max(interrupt::grace());
        if interrupt::undoing() {
            settle = now + interrupt::SETTLE;
        }
        if now >= cancelled_at + grace || (now >= settle && !interrupt::undoing()) {
            return Err(Error::interrupted(
                "interrupted: stopped the step in progress (a read, or an undo that ran out of time)",
            )
            .with_help("nothing was changed after the interrupt; run `deployer status` to see what exists, then `deployer up` to converge"));
        }
    }
}
