//! price-stream: streaming price ETL, one Prefect flow run per iteration.

mod alert;
mod body;
mod config;
mod http;
mod identity;
mod lease;
mod logs;
mod prefect;
mod report;
mod runner;
mod sink;
mod source;
mod transform;
mod wire;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use tokio::sync::watch;

use config::{Cli, Command, Config};
use report::Reporter;
use runner::Runner;

/// At shutdown, how long reports may take to land before the lease is handed over anyway.
const HANDOFF_FLUSH: Duration = Duration::from_secs(2);

/// When SIGTERM/SIGINT arrived (the stop timeout runs from there).
static SHUTDOWN_AT: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();

/// Floor for the health check window, so slow sources with retries are not reported dead.
const HEALTH_MIN_SECONDS: u64 = 60;

/// TLS for every HTTP client: rustls with the `ring` provider, a fraction of the size of the
/// default aws-lc-rs one. Installed before any client is built.
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn main() -> ExitCode {
    install_tls_provider();
    let cli = Cli::parse();
    if let Some(Command::Healthcheck(h)) = cli.command {
        let now = chrono::Utc::now().timestamp();
        return match runner::check_health(&h.health_file, h.max_intervals, HEALTH_MIN_SECONDS, now)
        {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("{msg}");
                ExitCode::FAILURE
            }
        };
    }
    let cfg = match Config::from_args(cli.run) {
        Ok(c) => c,
        Err(e) => {
            logs::error("invalid configuration", json!({ "error": e.to_string() }));
            return ExitCode::from(2);
        }
    };
    // Panics inside tasks are caught and reported; this keeps their message in JSON too.
    std::panic::set_hook(Box::new(|info| {
        logs::error("panic", json!({ "detail": info.to_string() }));
    }));
    // One thread is plenty: the work is I/O-bound and tasks yield at every request. Fewer
    // threads also means fewer malloc arenas, which keeps resident memory small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            logs::error("cannot start runtime", json!({ "error": e.to_string() }));
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cfg))
}

type Started = (
    Reporter,
    Option<tokio::task::JoinHandle<()>>,
    Option<std::sync::Arc<lease::Lease>>,
    Runner,
);

/// The reporter, the lease and the runner with every HTTP client they use: a client that
/// cannot be built stops the flow here, before the first iteration.
fn start(cfg: Config, identity: &identity::Identity) -> Result<Started, http::ClientError> {
    let (reporter, worker) = match &cfg.prefect {
        Some(p) => {
            let (r, h) = Reporter::start(p, identity)?;
            (r, Some(h))
        }
        None => (Reporter::disabled(), None),
    };
    let lease = match (&cfg.prefect, cfg.leader_lease) {
        (Some(p), true) => Some(lease::Lease::new(
            std::sync::Arc::new(prefect::PrefectClient::new(
                &p.api_url,
                p.api_key.clone(),
                Duration::from_secs(5),
            )?),
            identity,
        )),
        _ => None,
    };
    let runner = Runner::new(cfg, reporter.clone(), identity, lease.clone())?;
    Ok((reporter, worker, lease, runner))
}

/// Kept whole: start to shutdown in order (signals, reporter, lease, loop, flush, handoff),
/// sharing the stop budget.
async fn run(cfg: Config) -> ExitCode {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    if let Err(e) = spawn_signal_handler(shutdown_tx) {
        logs::error(
            "cannot install signal handlers",
            json!({ "error": e.to_string() }),
        );
        return ExitCode::FAILURE;
    }
    let flush = cfg.prefect.as_ref().map_or(Duration::ZERO, |p| p.flush);
    let stop_timeout = cfg.stop_timeout;
    let flow_name = cfg
        .prefect
        .as_ref()
        .map_or("price-stream", |p| p.flow_name.as_str());
    let identity = identity::resolve(&|k| std::env::var(k).ok(), flow_name).await;
    logs::info(
        "deployment identity",
        json!({ "deployment": identity.parameter() }),
    );
    let (mut reporter, worker, lease, runner) = match start(cfg, &identity) {
        Ok(started) => started,
        Err(e) => {
            logs::error("cannot start", json!({ "error": e.to_string() }));
            return ExitCode::FAILURE;
        }
    };
    logs::info("price-stream starting", runner.describe());
    let summary = runner.run(shutdown_rx).await;
    drop(runner);

    // Deliver what is queued (final states first of all), within a deadline. The lease goes
    // once the reports are out, so a standby's first run follows this instance's last one in
    // Prefect's timeline; but a slow Prefect must not stall the stream: after
    // HANDOFF_FLUSH the lease is released anyway and delivery goes on until the deadline.
    reporter.close();
    // What is left before the SIGKILL that follows a SIGTERM by the stop timeout (2 s kept
    // for the lease release and the last log lines).
    let budget = SHUTDOWN_AT.get().map(|at| {
        stop_timeout
            .saturating_sub(at.elapsed())
            .saturating_sub(Duration::from_secs(2))
    });
    let flush = reporter.begin_flush(flush, budget);
    let deadline = tokio::time::Instant::now() + flush;
    if reporter.client().is_some() {
        logs::info(
            "flushing reports to prefect",
            json!({ "flush_deadline_s": flush.as_secs_f64() }),
        );
    }
    let mut worker = worker;
    if let Some(w) = worker.as_mut() {
        let _ = tokio::time::timeout(HANDOFF_FLUSH.min(flush), w).await;
    }
    if let Some(lease) = &lease {
        lease.release().await;
    }
    if let Some(w) = worker.as_mut()
        && !w.is_finished()
        && tokio::time::timeout_at(deadline, w).await.is_err()
    {
        let n = reporter.abandon_pending();
        logs::warn(
            "prefect flush deadline reached; undelivered reports dropped",
            json!({ "dropped": n, "flush_deadline_s": flush.as_secs_f64() }),
        );
    }
    let stats = reporter.stats();
    logs::info(
        "price-stream stopped",
        json!({
            "iterations": summary.iterations,
            "completed": summary.completed,
            "failed": summary.failed,
            "cancelled": summary.cancelled,
            "prefect_requests": stats.requests,
            "reports_delivered": stats.delivered,
            "reports_dropped": stats.dropped,
            "reports_held_peak": stats.peak_held_reports,
            "reports_held_peak_bytes": stats.peak_held_bytes,
            "peak_rss_kib": body::peak_rss_kib(),
        }),
    );
    ExitCode::SUCCESS
}

/// SIGTERM (ECS stop) or SIGINT flips the shutdown flag; the loop drains and exits 0.
fn spawn_signal_handler(tx: watch::Sender<bool>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        let _ = SHUTDOWN_AT.set(tokio::time::Instant::now());
        logs::info(
            "shutdown requested; finishing the in-flight iteration",
            json!({ "signal": name }),
        );
        let _ = tx.send(true);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn https_clients_build_with_the_ring_provider() {
        super::install_tls_provider();
        let provider = rustls::crypto::CryptoProvider::get_default().expect("provider installed");
        assert!(!provider.cipher_suites.is_empty());
        reqwest::Client::builder()
            .https_only(true)
            .build()
            .expect("an HTTPS client builds");
    }
}
