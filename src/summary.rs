//! Deployment summaries: human text (stdout), Markdown (job summary, `<out>/summary.md`)
//! and GitHub Actions outputs. One report struct feeds all of them; `--json` serialises it.

use crate::deploy::{PlanReport, UpReport};
use crate::destroy::DestroyReport;
use crate::secrets::SecretAction;
use crate::stacks::{ApplyAction, StackPlan};
use crate::status::StatusReport;
use std::fmt::Write as _;
use std::path::Path;

fn action(a: ApplyAction) -> &'static str {
    match a {
        ApplyAction::Created => "created",
        ApplyAction::Updated => "updated",
        ApplyAction::Recreated => "recreated",
        ApplyAction::Unchanged => "unchanged",
    }
}

pub fn up_text(r: &UpReport) -> String {
    let mut s = String::new();
    if r.unchanged {
        let _ = writeln!(
            s,
            "{}: nothing to change (account {}, {})",
            r.project, r.account, r.region
        );
    } else {
        let _ = writeln!(
            s,
            "{}: deployed (account {}, {})",
            r.project, r.account, r.region
        );
    }
    for st in &r.stacks {
        let _ = writeln!(s, "  stack   {:<32} {}", st.stack, action(st.action));
    }
    for i in &r.images {
        let how = if i.image.skipped_push {
            "already in registry"
        } else {
            "pushed"
        };
        let _ = writeln!(
            s,
            "  image   {:<32} {} ({how})",
            i.service, i.image.image_uri
        );
    }
    for sv in &r.services {
        let state = sv
            .state
            .as_ref()
            .map(|st| format!("{}/{} running, {}", st.running, st.desired, st.rollout))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  service {:<32} revision {}{} {state}\n          image {}",
            sv.service,
            sv.revision,
            if sv.registered { " (new)" } else { "" },
            sv.image
        );
    }
    s
}

pub fn up_markdown(r: &UpReport) -> String {
    let mut s = format!(
        "## deployer up: {}\n\n{} in account `{}`, region `{}`.\n\n| stack | action |\n|---|---|\n",
        r.project,
        if r.unchanged {
            "Nothing to change"
        } else {
            "Deployed"
        },
        r.account,
        r.region
    );
    for st in &r.stacks {
        let _ = writeln!(s, "| `{}` | {} |", st.stack, action(st.action));
    }
    s.push_str("\n| service | revision | image | running |\n|---|---|---|---|\n");
    for sv in &r.services {
        let running = sv
            .state
            .as_ref()
            .map(|st| format!("{}/{}", st.running, st.desired))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "| `{}` | {} | `{}` | {running} |",
            sv.service, sv.revision, sv.image
        );
    }
    s
}

/// `key=value` lines for `$GITHUB_OUTPUT`.
pub fn up_outputs(r: &UpReport) -> String {
    let mut s = format!("changed={}\n", !r.unchanged);
    for sv in &r.services {
        let _ = writeln!(s, "{}-image={}", sv.service, sv.image);
        let _ = writeln!(
            s,
            "{}-task-definition-arn={}",
            sv.service, sv.task_definition_arn
        );
    }
    if let [only] = r.services.as_slice() {
        let _ = writeln!(
            s,
            "image={}\ntask-definition-arn={}",
            only.image, only.task_definition_arn
        );
    }
    s
}

/// Append to a file named by an environment variable (GitHub's job summary and outputs).
pub fn append_env_file(var: &str, text: &str) -> std::io::Result<()> {
    let Some(path) = std::env::var_os(var) else {
        return Ok(());
    };
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(&path))?
        .write_all(text.as_bytes())
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", Path::new(&path).display())))
}

pub fn plan_text(r: &PlanReport) -> String {
    let mut s = String::new();
    for p in &r.stacks {
        let (verb, stack, changes) = match p {
            StackPlan::Create { stack, changes } => ("create", stack, changes.as_slice()),
            StackPlan::Recreate { stack, changes } => (
                "recreate (failed earlier create)",
                stack,
                changes.as_slice(),
            ),
            StackPlan::Update { stack, changes } => ("update", stack, changes.as_slice()),
            StackPlan::NoChange { stack } => ("no change", stack, &[][..]),
        };
        let _ = writeln!(s, "{stack}: {verb}");
        for c in changes {
            let repl = c
                .replacement
                .as_deref()
                .filter(|r| *r == "True")
                .map(|_| " (replacement)")
                .unwrap_or("");
            let _ = writeln!(
                s,
                "  {:<7} {} {}{repl}",
                c.action, c.logical_id, c.resource_type
            );
        }
    }
    for t in &r.task_definitions {
        let _ = writeln!(s, "task definition {}: {}", t.family, t.action);
        for d in &t.differences {
            let _ = writeln!(s, "  {d}");
        }
    }
    for x in &r.secrets {
        let verb = match x.action {
            SecretAction::Created => "create",
            SecretAction::Updated => "update (new tasks will read it)",
            SecretAction::Kept => "keep the stored value (not in the environment)",
            SecretAction::Unchanged => "no change",
        };
        let _ = writeln!(s, "secret {}: {verb}", x.parameter);
    }
    let _ = writeln!(
        s,
        "{}",
        if r.changes {
            "changes pending: run `deployer up` to apply"
        } else {
            "no changes"
        }
    );
    s
}

pub fn status_text(r: &StatusReport) -> String {
    let mut s = String::new();
    for st in &r.stacks {
        let _ = writeln!(s, "stack   {:<32} {}", st.stack, st.status);
    }
    for sv in &r.services {
        let _ = writeln!(
            s,
            "service {:<32} {} {}/{} running ({} pending) rollout {} revision {} image {}",
            sv.service,
            sv.status,
            sv.running,
            sv.desired,
            sv.pending,
            if sv.rollout.is_empty() {
                "-"
            } else {
                &sv.rollout
            },
            sv.revision
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
            sv.image.as_deref().unwrap_or("-")
        );
    }
    s
}

pub fn destroy_text(r: &DestroyReport) -> String {
    let lake = match &r.data_lake {
        Some(k) if k.deleted => format!(
            "  deleted the data lake bucket {} and its {} object(s)\n",
            k.bucket, k.objects
        ),
        Some(k) => format!(
            "  kept the data lake: s3://{}/ ({} object(s)); it outlives the deployment. Delete it with `deployer destroy --delete-data`\n",
            k.bucket, k.objects
        ),
        None => String::new(),
    };
    if r.nothing {
        return format!(
            "{}: nothing to delete (no stack or parameter of the project exists)\n{lake}",
            r.project
        );
    }
    let mut s = format!("{}: destroyed\n", r.project);
    for st in &r.deleted_stacks {
        let _ = writeln!(s, "  deleted stack {st}");
    }
    if r.deregistered_task_definitions > 0 {
        let _ = writeln!(
            s,
            "  deregistered {} task definition revision(s)",
            r.deregistered_task_definitions
        );
    }
    if r.deleted_images > 0 {
        let _ = writeln!(s, "  deleted {} image(s)", r.deleted_images);
    }
    for p in &r.deleted_parameters {
        let _ = writeln!(s, "  deleted SSM parameter {p}");
    }
    for g in &r.deleted_log_groups {
        let _ = writeln!(s, "  deleted log group {g}");
    }
    s.push_str(&lake);
    s
}

/// `up`/`redeploy` on the local target, for people (stdout).
pub fn local_up_text(r: &crate::local::UpReport) -> String {
    let mut s = format!(
        "{}: {} (local target, engine {})\n",
        r.project,
        if r.unchanged {
            "nothing to change"
        } else {
            "deployed"
        },
        r.engine
    );
    for i in &r.images {
        let how = if i.built {
            "built"
        } else {
            "already in the engine"
        };
        let _ = writeln!(s, "  image   {:<32} {} ({how})", i.service, i.image_ref);
    }
    for sv in &r.services {
        let roll = sv.roll.as_ref().map_or(String::new(), |roll| {
            format!(
                " (rolled in {:.1}s: {} started, {} stopped{})",
                roll.seconds,
                roll.started.len(),
                roll.stopped.len(),
                if roll.failed_starts.is_empty() {
                    String::new()
                } else {
                    format!(", {} failed start(s)", roll.failed_starts.len())
                }
            )
        });
        let verify = sv.verify.as_ref().map_or(String::new(), |v| {
            format!(
                "\n          verify: {} completed flow run(s) of the revision in {:.1}s",
                v.completed, v.seconds
            )
        });
        let _ = writeln!(
            s,
            "  service {:<32} revision {} {}{roll}\n          containers {}{verify}",
            sv.service,
            sv.revision,
            match sv.action {
                crate::local::Action::Unchanged => "unchanged",
                crate::local::Action::Rolled => "running",
            },
            sv.containers.join(", ")
        );
    }
    if let Some(lake) = &r.lake_dir {
        let _ = writeln!(s, "  data lake {}", lake.display());
    }
    s
}

/// The Markdown job summary of a local `up`.
pub fn local_up_markdown(r: &crate::local::UpReport) -> String {
    let mut s = format!(
        "## deployer up: {} (local)\n\n{} on `{}`.\n\n| service | revision | image | containers |\n|---|---|---|---|\n",
        r.project,
        if r.unchanged {
            "Nothing to change"
        } else {
            "Deployed"
        },
        r.engine
    );
    for sv in &r.services {
        let _ = writeln!(
            s,
            "| `{}` | {} | `{}` | {} |",
            sv.service,
            sv.revision,
            sv.image_ref,
            sv.containers.len()
        );
    }
    s
}

/// `key=value` lines for `$GITHUB_OUTPUT` after a local `up`.
pub fn local_up_outputs(r: &crate::local::UpReport) -> String {
    let mut s = format!("changed={}\n", !r.unchanged);
    for sv in &r.services {
        let _ = writeln!(s, "{}-image={}", sv.service, sv.image_ref);
        let _ = writeln!(s, "{}-revision={}", sv.service, sv.revision);
    }
    s
}

pub fn local_status_text(r: &crate::local::StatusReport) -> String {
    let mut s = format!("{} (local target, engine {})\n", r.project, r.engine);
    for sv in &r.services {
        let _ = writeln!(
            s,
            "service {:<24} {}/{} running, revision {}",
            sv.service,
            sv.running,
            sv.desired,
            sv.revision.map_or("-".to_string(), |n| n.to_string())
        );
        for c in &sv.containers {
            let _ = writeln!(
                s,
                "  {:<40} revision {:<3} {}{} restarts {} image {}",
                c.name,
                c.revision,
                c.state,
                c.health
                    .as_ref()
                    .map_or(String::new(), |h| format!(" ({h})")),
                c.restarts,
                c.image
            );
        }
    }
    s
}

pub fn local_destroy_text(r: &crate::local::DestroyReport) -> String {
    let mut s = if r.nothing {
        format!("{}: nothing to delete on the local target\n", r.project)
    } else {
        format!("{}: destroyed (local target)\n", r.project)
    };
    for c in &r.containers {
        let _ = writeln!(
            s,
            "  removed container {} (revision {}, exit code {})",
            c.container,
            c.revision,
            c.exit_code.map_or("-".to_string(), |x| x.to_string())
        );
    }
    if r.network_removed {
        let _ = writeln!(
            s,
            "  removed network {}",
            crate::names::Names::new(&r.project).local_network()
        );
    }
    if r.images_kept {
        let _ = writeln!(s, "  kept the project's images (--keep-images)");
    } else if r.images_removed > 0 {
        let _ = writeln!(s, "  removed {} image(s)", r.images_removed);
    }
    match &r.lake_dir {
        Some(lake) if r.lake_deleted => {
            let _ = writeln!(s, "  deleted the data lake folder {}", lake.display());
        }
        Some(lake) => {
            let _ = writeln!(
                s,
                "  kept the data lake {} (delete it with `deployer destroy --target local --delete-data`)",
                lake.display()
            );
        }
        None => {}
    }
    s
}

pub fn local_plan_text(r: &crate::local::PlanReport) -> String {
    use crate::local::PlanAction;
    let mut s = String::new();
    for sv in &r.services {
        let current = sv
            .current
            .map_or(String::new(), |n| format!(" (running revision {n})"));
        let verb = match sv.action {
            PlanAction::Create => "start",
            PlanAction::Roll => "roll a new revision",
            PlanAction::Scale => "scale",
            PlanAction::Unchanged => "no change",
        };
        let _ = writeln!(s, "service {}{current}: {verb}", sv.service);
        for d in &sv.differences {
            let _ = writeln!(s, "  {d}");
        }
    }
    let _ = writeln!(
        s,
        "{}",
        if r.changes {
            "changes pending: run `deployer up --target local` to apply"
        } else {
            "no changes"
        }
    );
    s
}

/// The verdict of a deploy command, for people and machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Failed,
    BadInput,
    TimedOut,
    RolledBack,
    Locked,
    Interrupted,
}

impl From<crate::error::ExitCode> for Verdict {
    fn from(code: crate::error::ExitCode) -> Self {
        use crate::error::ExitCode as E;
        match code {
            E::Success | E::Failure => Verdict::Failed,
            E::BadInput => Verdict::BadInput,
            E::Timeout => Verdict::TimedOut,
            E::RolledBack => Verdict::RolledBack,
            E::Locked => Verdict::Locked,
            E::Interrupted => Verdict::Interrupted,
        }
    }
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Failed => "failed",
            Verdict::BadInput => "refused (bad input)",
            Verdict::TimedOut => "timed out",
            Verdict::RolledBack => "rolled back",
            Verdict::Locked => "locked by another deploy",
            Verdict::Interrupted => "interrupted",
        }
    }
}

/// A failed, rolled-back, timed-out or interrupted `up`/`redeploy`: still summarised, with
/// the reason (which carries stopped-task reasons, service events and log lines) and what
/// exists now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    pub command: String,
    pub project: String,
    pub target: String,
    pub verdict: Verdict,
    pub exit_code: i32,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    pub exists_now: Vec<String>,
}

impl Failure {
    pub fn new(
        command: &str,
        project: &str,
        target: &str,
        e: &crate::error::Error,
        exists_now: Vec<String>,
    ) -> Self {
        Self {
            command: command.into(),
            project: project.into(),
            target: target.into(),
            verdict: e.code().into(),
            exit_code: e.code() as i32,
            reason: e.message(),
            next: e.help.clone(),
            exists_now,
        }
    }
}

/// The Markdown job summary of a failed deploy.
pub fn failure_markdown(f: &Failure) -> String {
    let mut s = format!(
        "## deployer {}: {} ({}) {}\n\n**Verdict:** {} (exit {})\n\n**Why:**\n\n```\n{}\n```\n",
        f.command,
        f.project,
        f.target,
        match f.verdict {
            Verdict::RolledBack => "↩️",
            Verdict::Interrupted => "⏹️",
            _ => "❌",
        },
        f.verdict.text(),
        f.exit_code,
        f.reason.trim_end()
    );
    if let Some(next) = &f.next {
        let _ = writeln!(s, "\n**Next:** {next}");
    }
    s.push_str("\n**Exists now:**\n\n");
    if f.exists_now.is_empty() {
        s.push_str("- nothing of the project\n");
    }
    for e in &f.exists_now {
        let _ = writeln!(s, "- {e}");
    }
    s
}

/// `$GITHUB_OUTPUT` lines after a failed deploy.
pub fn failure_outputs(f: &Failure) -> String {
    format!(
        "changed=unknown\nverdict={}\nexit-code={}\n",
        serde_json::to_value(f.verdict)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        f.exit_code
    )
}

#[cfg(test)]
mod failure_tests {
    use super::*;

    fn fixture() -> Failure {
        let e = crate::error::Error::rolled_back(
            "web: the deployment was rolled back: ECS deployment circuit breaker: tasks failed to start.\n  last events:\n    (service web) has started 1 tasks\n  stopped tasks of this revision:\n    task aaa: Essential container in task exited; web exited 2\n      | error: unexpected argument '--bogus' found",
        )
        .with_help("check the container logs (/ecs/<project>/<service>) for why tasks stopped");
        Failure::new(
            "up",
            "demo",
            "aws",
            &e,
            vec![
                "stack demo-registry (CREATE_COMPLETE)".into(),
                "stack demo-svc-web (UPDATE_COMPLETE)".into(),
            ],
        )
    }

    #[test]
    fn failure_summary_snapshot() {
        insta::assert_snapshot!(failure_markdown(&fixture()));
        insta::assert_snapshot!(failure_outputs(&fixture()), @r"
        changed=unknown
        verdict=rolled_back
        exit-code=4
        ");
        insta::assert_json_snapshot!(fixture());
    }
}
