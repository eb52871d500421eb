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

/// Run `fut` unless Ctrl-C arrives first; then drop it (which aborts an in-flight build or
/// push: the engine stops when its connection closes) and report what was stopped.
/// `left` says what state that leaves (e.g. "nothing was deployed").
pub async fn or_interrupted<T>(
    fut: impl std::future::Future<Output = crate::error::Result<T>>,
    what: &str,
    left: &str,
) -> crate::error::Result<T> {
    let mut rx = subscribe();
    if requested() {
        return Err(interrupted(what, left));
    }
    tokio::select! {
        r = fut => r,
        _ = rx.changed() => Err(interrupted(what, left)),
    }
}

fn interrupted(what: &str, left: &str) -> crate::error::Error {
    crate::error::Error::new(
        crate::error::ExitCode::Interrupted,
        format!("interrupted during {what}: {left}"),
    )
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_finished_future_is_not_interrupted() {
        let r = super::or_interrupted(async { Ok(7) }, "a step", "nothing changed").await;
        assert_eq!(r.unwrap(), 7);
    }
}
