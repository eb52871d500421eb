//! Ctrl-C handling. The first Ctrl-C is broadcast so waits can undo their own in-flight
//! operation (delete a stack being created, cancel an update) and report the state left;
//! a second Ctrl-C exits at once.

use std::sync::OnceLock;
use tokio::sync::watch;

static CHANNEL: OnceLock<watch::Sender<bool>> = OnceLock::new();

fn sender() -> &'static watch::Sender<bool> {
    CHANNEL.get_or_init(|| watch::channel(false).0)
}

/// Start listening for SIGINT/SIGTERM (call once from main, inside the runtime).
pub fn install() {
    tokio::spawn(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let next = async {
            match term.as_mut() {
                Some(t) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = t.recv() => {}
                    }
                }
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        next.await;
        eprintln!("interrupted: cleaning up (press Ctrl-C again to exit at once)");
        let _ = sender().send(true);
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
}

/// Broadcast an interrupt as if Ctrl-C were pressed: waits cancel their own operation.
/// For callers that embed the deployer, and for tests.
pub fn trigger() {
    let _ = sender().send(true);
}

/// A receiver whose `changed()` completes on the first interrupt.
pub fn subscribe() -> watch::Receiver<bool> {
    sender().subscribe()
}

/// True once an interrupt arrived (checked between pipeline steps).
pub fn requested() -> bool {
    *sender().borrow()
}
