//! Interrupts: SIGINT and SIGTERM are one cancel. CI cancels a step with SIGINT, then SIGTERM
//! 7.5 s later, then SIGKILL: a SIGTERM after the first signal is the same cancel, not a
//! second one. The cancel is honoured at the next step boundary: from then on the AWS
//! clients refuse every mutating call (src/aws.rs) except the documented undo, which runs
//! inside [`undo`]; waits undo their own in-flight operation and say what they left, and
//! main gives that cleanup [`GRACE`] before it exits 130. A second, separate Ctrl-C (not
//! the same key press delivered twice) exits at once.
//!
//! The flag lives in a `watch` sender updated with `send_replace`, which stores the value
//! even when nobody subscribed yet (a plain `send` drops it then, which lost early Ctrl-Cs).

use crate::ui::Ui;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long main lets the pipeline finish its undo after a cancel before exiting 130 anyway:
/// well inside CI's 7.5 s between SIGINT and SIGTERM (and 10 s before SIGKILL).
pub const GRACE: Duration = Duration::from_secs(5);

/// The grace of a step that undoes itself ([`self_undoing`]: the local roll stops and removes
/// its new containers, each given 2 s to exit, through a Docker engine that is slow when the
/// machine is busy). Measured: under a loaded CI run that undo now and then took more than 5 s.
/// Still inside CI's 7.5 s before SIGTERM.
pub const SELF_UNDO_GRACE: Duration = Duration::from_millis(6500);

/// How long main waits for the cleanup after a cancel, as of now ([`SELF_UNDO_GRACE`] while a
/// self-undoing step runs, else [`GRACE`]).
pub fn grace() -> Duration {
    if SELF_UNDOING.load(Ordering::SeqCst) > 0 {
        SELF_UNDO_GRACE
    } else {
        GRACE
    }
}

/// Two SIGINTs closer than this are one key press (a terminal and a wrapper script can both
/// forward it); a later one is the user pressing Ctrl-C again.
pub const SAME_PRESS: Duration = Duration::from_millis(300);

/// After a cancel, how long a step may take to start its undo (or fail on a refused call)
/// before main stops it: a step stuck in a hung read has nothing to undo.
pub const SETTLE: Duration = Duration::from_millis(500);

static CHANNEL: OnceLock<watch::Sender<bool>> = OnceLock::new();
static UNDOING: AtomicUsize = AtomicUsize::new(0);
static SELF_UNDOING: AtomicUsize = AtomicUsize::new(0);

tokio::task_local! {
    static UNDO: ();
}

fn sender() -> &'static watch::Sender<bool> {
    CHANNEL.get_or_init(|| watch::channel(false).0)
}

/// The signals the deployer listens for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
}

/// What one signal does, given the cancel already under way (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// The first signal: start the cancel.
    Cancel,
    /// Part of the cancel already under way (CI's SIGTERM, or one key press seen twice).
    SameCancel,
    /// A second, separate Ctrl-C: exit at once.
    ExitNow,
}

/// The decision table, kept pure so it can be tested without sending signals.
pub fn react(first: Option<Instant>, now: Instant, sig: Signal) -> Reaction {
    match (first, sig) {
        (None, _) => Reaction::Cancel,
        (Some(_), Signal::Term) => Reaction::SameCancel,
        (Some(t), Signal::Int) if now.duration_since(t) < SAME_PRESS => Reaction::SameCancel,
        (Some(_), Signal::Int) => Reaction::ExitNow,
    }
}

/// Start listening for SIGINT/SIGTERM with a default Ui (call once, inside the runtime).
pub fn install() {
    install_with(Ui::new(false, 0));
}

/// Start listening for SIGINT/SIGTERM; `ui` prints what the signal does.
pub fn install_with(ui: Ui) {
    use tokio::signal::unix::{SignalKind, signal};
    let (int, term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            ui.warn(format!(
                "cannot listen for SIGINT/SIGTERM ({e}): an interrupt ends the run without cleanup"
            ));
            return;
        }
    };
    tokio::spawn(listen(ui, int, term));
}

async fn listen(
    ui: Ui,
    mut int: tokio::signal::unix::Signal,
    mut term: tokio::signal::unix::Signal,
) {
    let mut first: Option<Instant> = None;
    loop {
        let sig = tokio::select! {
            _ = int.recv() => Signal::Int,
            _ = term.recv() => Signal::Term,
        };
        match react(first, Instant::now(), sig) {
            Reaction::Cancel => {
                first = Some(Instant::now());
                ui.step(format!(
                    "interrupted ({}): no new changes; undoing the step in progress (press Ctrl-C again to exit at once)",
                    name(sig)
                ));
                trigger();
            }
            Reaction::SameCancel => ui.detail(format!("{}: already cancelling", name(sig))),
            Reaction::ExitNow => {
                ui.error("interrupted again: exiting at once; the step in progress was not undone");
                ui.step("help: run `deployer status` to see what exists, then `deployer up` to converge");
                std::process::exit(crate::error::ExitCode::Interrupted as i32);
            }
        }
    }
}

fn name(sig: Signal) -> &'static str {
    match sig {
        Signal::Int => "SIGINT",
        Signal::Term => "SIGTERM",
    }
}

/// Raise the interrupt as if Ctrl-C were pressed: waits cancel their own operation.
/// For callers that embed the deployer, and for tests.
pub fn trigger() {
    sender().send_replace(true);
}

/// Clear a handled interrupt (for embedders that run several pipelines, and for tests that
/// interrupt several steps in one process).
pub fn reset() {
    sender().send_replace(false);
}

/// A receiver whose `changed()` completes on the first interrupt (if it has not come yet).
pub fn subscribe() -> watch::Receiver<bool> {
    sender().subscribe()
}

/// True once an interrupt arrived (checked between pipeline steps).
pub fn requested() -> bool {
    *sender().borrow()
}

/// Completes once an interrupt has arrived (at once if it already has).
pub async fn cancelled() {
    let mut rx = subscribe();
    // wait_for checks the current value first, so an earlier interrupt is not missed.
    let _ = rx.wait_for(|v| *v).await;
}

/// Run `fut` as the documented undo of an interrupted step (delete the stack being created,
/// cancel the update, release the lock): its mutating calls are let through after a cancel.
pub async fn undo<F: Future>(fut: F) -> F::Output {
    struct Active;
    impl Drop for Active {
        fn drop(&mut self) {
            UNDOING.fetch_sub(1, Ordering::SeqCst);
        }
    }
    UNDOING.fetch_add(1, Ordering::SeqCst);
    let _active = Active;
    UNDO.scope((), fut).await
}

/// True while some step runs its undo, or runs a step that undoes itself on an interrupt
/// (main waits for it, up to [`GRACE`]).
pub fn undoing() -> bool {
    UNDOING.load(Ordering::SeqCst) > 0 || SELF_UNDOING.load(Ordering::SeqCst) > 0
}

/// Run a step that notices an interrupt itself and undoes what it did (the local target's
/// roll: an engine call in flight when the signal comes must finish, then be undone). Main
/// gives it [`GRACE`] instead of [`SETTLE`].
pub async fn self_undoing<F: Future>(fut: F) -> F::Output {
    struct Active;
    impl Drop for Active {
        fn drop(&mut self) {
            SELF_UNDOING.fetch_sub(1, Ordering::SeqCst);
        }
    }
    SELF_UNDOING.fetch_add(1, Ordering::SeqCst);
    let _active = Active;
    fut.await
}

/// True inside [`undo`].
pub fn in_undo() -> bool {
    UNDO.try_with(|_| ()).is_ok()
}

/// A mutating call may start: no interrupt yet, or it is part of the undo.
pub fn may_change() -> bool {
    !requested() || in_undo()
}

/// Run `fut` unless an interrupt arrives first; then drop it (which aborts an in-flight build
/// or push: the engine stops when its connection closes) and report what was stopped.
/// `left` says what state that leaves (e.g. "nothing was deployed").
pub async fn or_interrupted<T>(
    fut: impl std::future::Future<Output = crate::error::Result<T>>,
    what: &str,
    left: &str,
) -> crate::error::Result<T> {
    if requested() {
        return Err(interrupted(what, left));
    }
    tokio::select! {
        r = fut => r,
        _ = cancelled() => Err(interrupted(what, left)),
    }
}

fn interrupted(what: &str, left: &str) -> crate::error::Error {
    crate::error::Error::interrupted(format!("interrupted during {what}: {left}"))
}

/// The run's outcome once an interrupt arrived: any failure becomes exit 130 (the failure is
/// what the cancel left: a refused call, an undone step), with the next action.
pub fn settle(e: crate::error::Error) -> crate::error::Error {
    use crate::error::{Error, ExitCode};
    if !requested() || e.code() == ExitCode::Interrupted {
        return e;
    }
    Error::interrupted(format!("interrupted: {}", e.message()))
        .because(e)
        .with_help(
            "nothing was changed after the interrupt; run `deployer status` to see what exists, \
         and `deployer up` again to converge",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_finished_future_is_not_interrupted() {
        let r = super::or_interrupted(async { Ok(7) }, "a step", "nothing changed").await;
        assert_eq!(r.unwrap(), 7);
    }

    #[test]
    fn sigterm_after_sigint_is_the_same_cancel_and_a_second_ctrl_c_exits() {
        let t0 = Instant::now();
        assert_eq!(react(None, t0, Signal::Int), Reaction::Cancel);
        assert_eq!(react(None, t0, Signal::Term), Reaction::Cancel);
        let later = t0 + Duration::from_millis(7500);
        assert_eq!(react(Some(t0), later, Signal::Term), Reaction::SameCancel);
        assert_eq!(react(Some(t0), later, Signal::Int), Reaction::ExitNow);
        let echo = t0 + Duration::from_millis(50);
        assert_eq!(react(Some(t0), echo, Signal::Int), Reaction::SameCancel);
    }

    #[tokio::test]
    async fn undo_scope_is_seen_only_inside_it() {
        assert!(!in_undo());
        assert!(undo(async { in_undo() }).await);
        assert!(!in_undo());
    }
}
