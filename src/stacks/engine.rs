//! Create/update through change sets, wait with a deadline while streaming events, delete.

use super::{StackSpec, templates};
use crate::aws::Context;
use crate::aws::{self, describe as describe_err, message};
use crate::error::{Error, Result};
use crate::retry::{self, Blips};
use crate::ui::{Spinner, Ui};
use crate::{interrupt, lock};
use aws_sdk_cloudformation::Client;
use aws_sdk_cloudformation::types::{
    Capability, ChangeSetStatus, ChangeSetType, Parameter, StackStatus, Tag, TemplateStage,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// Deadline and poll pacing for waits. Polls start fast and back off to `max_poll`.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    pub timeout: Duration,
    pub min_poll: Duration,
    pub max_poll: Duration,
}

impl Default for Wait {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30 * 60),
            min_poll: Duration::from_millis(500),
            max_poll: Duration::from_secs(5),
        }
    }
}

/// A stack as CloudFormation reports it.
#[derive(Debug, Clone)]
pub struct LiveStack {
    pub name: String,
    pub status: StackStatus,
    pub parameters: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ResourceChange {
    pub action: String,
    pub logical_id: String,
    pub resource_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
}

/// What `up` would do to one stack.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum StackPlan {
    Create {
        stack: String,
        changes: Vec<ResourceChange>,
    },
    Update {
        stack: String,
        changes: Vec<ResourceChange>,
    },
    /// A failed earlier create left ROLLBACK_COMPLETE: it is deleted and created again.
    Recreate {
        stack: String,
        changes: Vec<ResourceChange>,
    },
    NoChange {
        stack: String,
    },
}

impl StackPlan {
    pub fn has_changes(&self) -> bool {
        !matches!(self, StackPlan::NoChange { .. })
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ApplyAction {
    Created,
    Updated,
    Recreated,
    Unchanged,
}

#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub stack: String,
    pub action: ApplyAction,
    pub outputs: BTreeMap<String, String>,
    /// The stack's parameters before this apply (empty when it was created): lets a caller
    /// see what an update changed (a capacity move needs a forced deployment).
    #[serde(skip)]
    pub previous_parameters: BTreeMap<String, String>,
}

fn is_missing<E: aws_sdk_cloudformation::error::ProvideErrorMetadata, R>(
    e: &aws_sdk_cloudformation::error::SdkError<E, R>,
) -> bool {
    message(e).is_some_and(|m| m.contains("does not exist"))
}

/// Questions asked of a stack status: CloudFormation's own enum, never a string compared by
/// hand at the call sites.
pub trait StatusExt {
    /// Some operation is under way (`*_IN_PROGRESS`).
    fn in_progress(&self) -> bool;
    /// An operation is under way that ends by itself: REVIEW_IN_PROGRESS (a stack made by a
    /// change set never executed) stays as it is.
    fn running(&self) -> bool;
    /// Settled in a `*_COMPLETE` state (which may be a rollback's).
    fn complete(&self) -> bool;
}

impl StatusExt for StackStatus {
    fn in_progress(&self) -> bool {
        self.as_str().ends_with("_IN_PROGRESS")
    }
    fn running(&self) -> bool {
        self.in_progress() && *self != StackStatus::ReviewInProgress
    }
    fn complete(&self) -> bool {
        self.as_str().ends_with("_COMPLETE")
    }
}

/// CloudFormation returns a CommaDelimitedList parameter as `a,b`; moto returns Python's
/// `['a', 'b']`. Read both as `a,b` so an unchanged list is not mistaken for a change.
fn list_value(v: &str) -> String {
    match v.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        Some(items) => items
            .split(',')
            .map(|i| i.trim().trim_matches('\''))
            .collect::<Vec<_>>()
            .join(","),
        None => v.to_string(),
    }
}

/// DescribeStacks for one stack; `None` when it does not exist.
pub async fn describe(cfn: &Client, name: &str) -> Result<Option<LiveStack>> {
    describe_with(cfn, name, None).await
}

/// A wait's poll of one stack: a transient failure (throttling, 5xx, a dropped or hung
/// connection) is retried within `remaining` (src/retry.rs) instead of ending the wait.
async fn describe_polled(
    cfn: &Client,
    name: &str,
    remaining: Duration,
    sp: &Spinner,
) -> Result<Option<LiveStack>> {
    describe_with(cfn, name, Some((remaining, sp))).await
}

async fn describe_with(
    cfn: &Client,
    name: &str,
    poll: Option<(Duration, &Spinner)>,
) -> Result<Option<LiveStack>> {
    let call = || cfn.describe_stacks().stack_name(name).send();
    let sent = match poll {
        None => call().await,
        Some((remaining, sp)) => {
            retry::poll(Blips::default(), remaining, call, |cause, delay| {
                sp.println(format!(
                    "  {name}: poll failed ({cause:?}); retrying in {:.1}s",
                    delay.as_secs_f64()
                ))
            })
            .await
        }
    };
    let out = match sent {
        Ok(o) => o,
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(aws::failure(&format!("describe stack {name}"), e)),
    };
    let Some(s) = out.stacks().first() else {
        return Ok(None);
    };
    if s.stack_status() == Some(&StackStatus::DeleteComplete) {
        return Ok(None);
    }
    Ok(Some(LiveStack {
        name: name.to_string(),
        status: s
            .stack_status()
            .cloned()
            .unwrap_or_else(|| StackStatus::from("UNKNOWN")),
        parameters: s
            .parameters()
            .iter()
            .filter_map(|p| {
                Some((
                    p.parameter_key()?.to_string(),
                    list_value(p.parameter_value()?),
                ))
            })
            .collect(),
        tags: s
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect(),
        outputs: s
            .outputs()
            .iter()
            .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
            .collect(),
    }))
}

/// True when the live stack already has this template, these parameters and these tags:
/// then there is nothing to do and no mutating call is made.
/// The live stack already is what `spec` describes (parameters, tags, template body).
pub async fn is_current(cfn: &Client, spec: &StackSpec, live: &LiveStack, ui: &Ui) -> Result<bool> {
    let changed: Vec<&String> = spec
        .parameters
        .iter()
        .filter(|(k, v)| live.parameters.get(*k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    let tags_same = spec.tags.iter().all(|(k, v)| live.tags.get(k) == Some(v));
    if !changed.is_empty() {
        ui.detail(format!("{}: parameters changed: {changed:?}", spec.name));
        return Ok(false);
    }
    if !tags_same || !live.status.complete() {
        ui.detail(format!(
            "{}: tags changed or status {}",
            spec.name, live.status
        ));
        return Ok(false);
    }
    let body = cfn
        .get_template()
        .stack_name(&spec.name)
        .template_stage(TemplateStage::Original)
        .send()
        .await
        .context(format!("get template of {}", spec.name))?;
    let same = body.template_body() == Some(spec.template);
    if !same {
        ui.detail(format!("{}: template changed", spec.name));
    }
    Ok(same)
}

fn create_plan_changes(spec: &StackSpec) -> Vec<ResourceChange> {
    templates::resources(spec.template)
        .into_iter()
        .map(|(logical_id, resource_type)| ResourceChange {
            action: "Add".into(),
            logical_id,
            resource_type,
            replacement: None,
        })
        .collect()
}

/// What applying `spec` would change. Updates are computed by a change set that is then
/// deleted; new stacks list the template's resources (no change set, nothing left behind).
pub async fn plan(cfn: &Client, spec: &StackSpec, wait: Wait) -> Result<StackPlan> {
    let stack = spec.name.clone();
    let Some(live) = describe(cfn, &spec.name).await? else {
        return Ok(StackPlan::Create {
            stack,
            changes: create_plan_changes(spec),
        });
    };
    if matches!(
        live.status,
        StackStatus::RollbackComplete | StackStatus::ReviewInProgress
    ) {
        return Ok(StackPlan::Recreate {
            stack,
            changes: create_plan_changes(spec),
        });
    }
    if is_current(cfn, spec, &live, &Ui::silent()).await? {
        return Ok(StackPlan::NoChange { stack });
    }
    let Some(cs) = create_change_set(cfn, spec, ChangeSetType::Update, wait).await? else {
        return Ok(StackPlan::NoChange { stack });
    };
    delete_change_set(cfn, &spec.name, &cs.name).await;
    // An empty list still means an update: parameters or tags change without touching a resource.
    Ok(StackPlan::Update {
        stack,
        changes: cs.changes,
    })
}

struct ChangeSet {
    name: String,
    changes: Vec<ResourceChange>,
}

fn cfn_parameters(spec: &StackSpec) -> Vec<Parameter> {
    spec.parameters
        .iter()
        .map(|(k, v)| {
            Parameter::builder()
                .parameter_key(k)
                .parameter_value(v)
                .build()
        })
        .collect()
}

fn cfn_tags(spec: &StackSpec) -> Vec<Tag> {
    spec.tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

fn is_empty_change_set_reason(reason: &str) -> bool {
    reason.contains("didn't contain changes") || reason.contains("No updates are to be performed")
}

/// Create a change set and wait until it is ready. `None`: it contains no changes
/// (already deleted). Real CloudFormation marks such a set FAILED; moto raises ValidationError.
///
/// Kept whole: one create-then-poll loop whose outcomes (ready, empty, failed, timed out) are
/// one match.
async fn create_change_set(
    cfn: &Client,
    spec: &StackSpec,
    kind: ChangeSetType,
    wait: Wait,
) -> Result<Option<ChangeSet>> {
    // Unique per call, not just per millisecond: stacks applied at once must not share a
    // name (moto 5.2.5 resolves change sets by name alone; see scripts/moto_server.py).
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "deployer-{}-{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let created = cfn
        .create_change_set()
        .stack_name(&spec.name)
        .change_set_name(&name)
        .change_set_type(kind)
        .template_body(spec.template)
        .set_parameters(Some(cfn_parameters(spec)))
        .set_tags(Some(cfn_tags(spec)))
        .capabilities(Capability::CapabilityIam)
        .send()
        .await;
    if let Err(e) = created {
        if message(&e).is_some_and(|m| is_empty_change_set_reason(&m)) {
            return Ok(None);
        }
        let err = aws::failure(&format!("create change set for {}", spec.name), e);
        return Err(match err.help {
            Some(_) => err,
            None => err
                .with_help("check the template parameters; `deployer plan -v` shows what is sent"),
        });
    }
    let started = Instant::now();
    let mut poll = wait.min_poll;
    loop {
        let remaining = wait.timeout.saturating_sub(started.elapsed());
        let d = retry::poll(
            Blips::default(),
            remaining,
            || {
                cfn.describe_change_set()
                    .stack_name(&spec.name)
                    .change_set_name(&name)
                    .send()
            },
            |_, _| {},
        )
        .await
        .map_err(|e| aws::failure(&format!("describe change set for {}", spec.name), e))?;
        match d.status() {
            Some(ChangeSetStatus::CreateComplete) => {
                let changes = d
                    .changes()
                    .iter()
                    .filter_map(|c| c.resource_change())
                    .map(|rc| ResourceChange {
                        action: rc
                            .action()
                            .map(|a| a.as_str().to_string())
                            .unwrap_or_default(),
                        logical_id: rc.logical_resource_id().unwrap_or_default().to_string(),
                        resource_type: rc.resource_type().unwrap_or_default().to_string(),
                        replacement: rc.replacement().map(|r| r.as_str().to_string()),
                    })
                    .collect();
                return Ok(Some(ChangeSet { name, changes }));
            }
            Some(ChangeSetStatus::Failed) => {
                let reason = d.status_reason().unwrap_or_default().to_string();
                delete_change_set(cfn, &spec.name, &name).await;
                if is_empty_change_set_reason(&reason) {
                    return Ok(None);
                }
                return Err(Error::failure(format!(
                    "change set for {} failed: {reason}",
                    spec.name
                )));
            }
            _ => {}
        }
        if started.elapsed() > wait.timeout {
            return Err(Error::timeout(format!(
                "change set for {} not ready after {:?}",
                spec.name, wait.timeout
            )));
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(wait.max_poll);
    }
}

async fn delete_change_set(cfn: &Client, stack: &str, name: &str) {
    // Best effort: a leftover change set is harmless and expires with the next apply.
    let _ = cfn
        .delete_change_set()
        .stack_name(stack)
        .change_set_name(name)
        .send()
        .await;
}

/// Service stacks (`<project>-svc-*`) of this project that exist and carry its tags, other
/// than the `known` ones: a service removed from the config keeps running until its stack is
/// deleted, and `destroy` must find it.
pub async fn other_service_stacks(
    cfn: &Client,
    project: &str,
    known: &[String],
) -> Result<Vec<String>> {
    let prefix = crate::names::Names::new(project).service_stack_prefix();
    // ListStacks returns summaries (cheap, no tags): describe only the names that match.
    let mut candidates = Vec::new();
    let mut pages = cfn.list_stacks().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.context("list stacks")?;
        candidates.extend(
            page.stack_summaries()
                .iter()
                .filter(|st| st.stack_status() != Some(&StackStatus::DeleteComplete))
                .filter_map(|st| st.stack_name())
                .filter(|name| name.starts_with(&prefix) && !known.iter().any(|k| k == name))
                .map(str::to_string),
        );
    }
    candidates.sort();
    candidates.dedup();
    let mut out = Vec::new();
    for name in candidates {
        if describe(cfn, &name)
            .await?
            .is_some_and(|l| super::owned_by(&l.tags, project))
        {
            out.push(name);
        }
    }
    Ok(out)
}

/// Bring one stack to `spec`: create, update, recreate after a failed create, or nothing.
pub async fn apply(cfn: &Client, spec: &StackSpec, wait: Wait, ui: &Ui) -> Result<Applied> {
    let read_at = Instant::now();
    // 1. Prepare: a settled stack of ours, or none (a failed create is deleted first).
    let Some(Prepared { live, recreated }) = prepare(cfn, spec, wait, ui, read_at).await? else {
        // Decided before holding the lock: decide again (another deploy may have applied it).
        return Box::pin(apply(cfn, spec, wait, ui)).await;
    };
    let creating = live.is_none()
        || live
            .as_ref()
            .is_some_and(|l| l.status == StackStatus::ReviewInProgress);
    // 2. Compare: nothing to do when the live stack already is the spec.
    if let Some(l) = &live
        && !creating
        && is_current(cfn, spec, l, ui).await?
    {
        ui.detail(format!("{}: up to date", spec.name));
        return Ok(Applied {
            stack: spec.name.clone(),
            action: ApplyAction::Unchanged,
            outputs: l.outputs.clone(),
            previous_parameters: l.parameters.clone(),
        });
    }
    if lock::before_change(read_at).await? {
        return Box::pin(apply(cfn, spec, wait, ui)).await;
    }
    // 3. Execute, through a change set, to a verdict.
    execute_changes(cfn, spec, live, creating, recreated, wait, ui).await
}

/// The live stack `apply` starts from.
struct Prepared {
    live: Option<LiveStack>,
    /// A failed create was deleted to be created again.
    recreated: bool,
}

/// Wait for an operation in progress, refuse a stack that is not ours or is stuck, delete one
/// a failed create left behind. None: the lock was taken after the decision, decide again.
async fn prepare(
    cfn: &Client,
    spec: &StackSpec,
    wait: Wait,
    ui: &Ui,
    read_at: Instant,
) -> Result<Option<Prepared>> {
    let mut live = describe(cfn, &spec.name).await?;
    // Another operation may be running on the stack (a concurrent deploy, a rollback).
    if let Some(l) = &live
        && l.status.running()
    {
        let sp = ui.spinner(format!("{}: waiting for {} to finish", spec.name, l.status));
        wait_settled(cfn, &spec.name, Op::Observe, wait, &sp).await?;
        sp.finish(format!("{}: settled", spec.name));
        live = describe(cfn, &spec.name).await?;
    }
    // Never adopt a stack the deployer did not create: applying our template to someone
    // else's `<project>-network` would replace their resources.
    if let Some(l) = &live
        && let Some(project) = spec.tags.get(super::PROJECT_KEY)
        && !super::owned_by(&l.tags, project)
    {
        return Err(Error::bad_input(format!(
            "stack {} exists but was not created by the deployer for project {project} (its tags say otherwise)",
            spec.name
        ))
        .with_help("pick another `project` name, or delete or rename the other stack"));
    }
    let mut recreated = false;
    if let Some(l) = &live {
        match l.status {
            StackStatus::RollbackComplete | StackStatus::RollbackFailed => {
                ui.step(format!(
                    "{}: left in {} by an earlier failed create; deleting it to create it again",
                    spec.name, l.status
                ));
                if lock::before_change(read_at).await? {
                    return Ok(None);
                }
                delete(cfn, &spec.name, wait, ui).await?;
                live = None;
                recreated = true;
            }
            StackStatus::UpdateRollbackFailed => {
                return Err(Error::failure(format!("{} is in UPDATE_ROLLBACK_FAILED", spec.name)).with_help(format!(
                    "fix the resource that blocks the rollback, then run `aws cloudformation continue-update-rollback --stack-name {}`",
                    spec.name
                )));
            }
            StackStatus::DeleteFailed => {
                return Err(Error::failure(format!("{} is in DELETE_FAILED", spec.name))
                    .with_help(
                        "run `deployer destroy` again, or delete the remaining resources by hand",
                    ));
            }
            _ => {}
        }
    }
    Ok(Some(Prepared { live, recreated }))
}

/// Create the change set, execute it, wait for the stack to settle and read its outputs.
///
/// Kept whole: change set, execute, wait and verdict, sharing the change set and the start time
/// the events are read from.
async fn execute_changes(
    cfn: &Client,
    spec: &StackSpec,
    live: Option<LiveStack>,
    creating: bool,
    recreated: bool,
    wait: Wait,
    ui: &Ui,
) -> Result<Applied> {
    let kind = if creating {
        ChangeSetType::Create
    } else {
        ChangeSetType::Update
    };
    let Some(cs) = create_change_set(cfn, spec, kind, wait).await? else {
        ui.step(format!("{}: no changes", spec.name));
        let (outputs, previous_parameters) =
            live.map(|l| (l.outputs, l.parameters)).unwrap_or_default();
        return Ok(Applied {
            stack: spec.name.clone(),
            action: ApplyAction::Unchanged,
            outputs,
            previous_parameters,
        });
    };
    // Step boundary: an interrupt while the change set was prepared stops here.
    if interrupt::requested() {
        return Err(abandon(cfn, &spec.name, &cs.name, creating).await);
    }
    let verb = if creating { "creating" } else { "updating" };
    let sp = ui.spinner(format!(
        "{}: {verb} ({} changes)",
        spec.name,
        cs.changes.len()
    ));
    let since = aws_sdk_cloudformation::primitives::DateTime::from(std::time::SystemTime::now());
    execute(cfn, &spec.name, &cs.name, &sp).await?;
    let op = if creating { Op::Create } else { Op::Update };
    let status = wait_settled_from(cfn, &spec.name, op, wait, &sp, Some(since)).await?;
    let ok = if creating {
        StackStatus::CreateComplete
    } else {
        StackStatus::UpdateComplete
    };
    if status != ok {
        sp.finish(format!("{}: {status}", spec.name));
        let cause = first_failure(cfn, &spec.name, since).await;
        // An update CloudFormation rolled back (e.g. the ECS circuit breaker fired while the
        // service stabilised) left the previous state running: "rolled back", not "failed".
        let message = format!("{} ended in {status}{cause}", spec.name);
        let e = if status == StackStatus::UpdateRollbackComplete {
            Error::rolled_back(message)
        } else {
            Error::failure(message)
        };
        return Err(e.with_help("fix the cause above and run `deployer up` again"));
    }
    sp.finish(format!(
        "{}: {}",
        spec.name,
        if creating { "created" } else { "updated" }
    ));
    let outputs = describe(cfn, &spec.name)
        .await?
        .map(|l| l.outputs)
        .unwrap_or_default();
    let action = match (creating, recreated) {
        (true, true) => ApplyAction::Recreated,
        (true, false) => ApplyAction::Created,
        _ => ApplyAction::Updated,
    };
    Ok(Applied {
        stack: spec.name.clone(),
        action,
        outputs,
        previous_parameters: if creating {
            BTreeMap::new()
        } else {
            live.map(|l| l.parameters).unwrap_or_default()
        },
    })
}

/// ExecuteChangeSet, tolerating the SDK's own retry of it: when an attempt's response was
/// lost (dropped connection, attempt timeout) the retry is refused with
/// InvalidChangeSetStatus although the first attempt went through; then the change set is
/// executing or executed, and the wait that follows sees the outcome.
async fn execute(cfn: &Client, stack: &str, change_set: &str, sp: &Spinner) -> Result<()> {
    let Err(e) = cfn
        .execute_change_set()
        .stack_name(stack)
        .change_set_name(change_set)
        .send()
        .await
    else {
        return Ok(());
    };
    let refused_status = e
        .as_service_error()
        .is_some_and(aws_sdk_cloudformation::operation::execute_change_set::ExecuteChangeSetError::is_invalid_change_set_status_exception);
    if refused_status {
        let d = cfn
            .describe_change_set()
            .stack_name(stack)
            .change_set_name(change_set)
            .send()
            .await;
        use aws_sdk_cloudformation::types::ExecutionStatus;
        if let Ok(d) = d
            && matches!(
                d.execution_status(),
                Some(ExecutionStatus::ExecuteInProgress | ExecutionStatus::ExecuteComplete)
            )
        {
            sp.println(format!(
                "  {stack}: an earlier attempt of ExecuteChangeSet went through; following it"
            ));
            return Ok(());
        }
    }
    Err(aws::failure(&format!("execute change set for {stack}"), e))
}

/// Interrupted before executing a change set: nothing changed yet. A create's change set left
/// an empty REVIEW_IN_PROGRESS stack, which is deleted (the documented undo of a create);
/// an update's change set is deleted.
async fn abandon(cfn: &Client, stack: &str, change_set: &str, creating: bool) -> Error {
    let left = interrupt::undo(async {
        if creating {
            match cfn.delete_stack().stack_name(stack).send().await {
                Ok(_) => "not created (its prepared change set was deleted)".to_string(),
                Err(e) => format!(
                    "not created, but its REVIEW_IN_PROGRESS placeholder could not be deleted ({})",
                    describe_err(&e)
                ),
            }
        } else {
            delete_change_set(cfn, stack, change_set).await;
            "not updated (its prepared change set was deleted)".to_string()
        }
    });
    let left = tokio::time::timeout(UNDO_WAIT, left)
        .await
        .unwrap_or_else(|_| "not changed (the prepared change set is left; it is harmless)".into());
    Error::interrupted(format!("interrupted: {stack}: {left}"))
        .with_help("run `deployer up` again to converge")
}

/// Delete a stack and wait until it is gone. A stack that does not exist is success.
pub async fn delete(cfn: &Client, name: &str, wait: Wait, ui: &Ui) -> Result<()> {
    let read_at = Instant::now();
    let Some(_) = describe(cfn, name).await? else {
        return Ok(());
    };
    if lock::before_change(read_at).await? && describe(cfn, name).await?.is_none() {
        return Ok(()); // deleted by the run that held the lock before us
    }
    let since = aws_sdk_cloudformation::primitives::DateTime::from(std::time::SystemTime::now());
    if let Err(e) = cfn.delete_stack().stack_name(name).send().await {
        // moto deletes synchronously and can report a resource's failure while the stack is
        // gone anyway; the goal (no stack) is what counts, so check before failing.
        if describe(cfn, name).await?.is_some() {
            return Err(crate::aws::failure(&format!("delete stack {name}"), e));
        }
        ui.warn(format!(
            "{name}: deleted, but CloudFormation reported: {}",
            describe_err(&e)
        ));
        return Ok(());
    }
    let sp = ui.spinner(format!("{name}: deleting"));
    let status = wait_settled_from(cfn, name, Op::Delete, wait, &sp, Some(since)).await?;
    if status != StackStatus::DeleteComplete {
        sp.finish(format!("{name}: {status}"));
        let cause = first_failure(cfn, name, since).await;
        return Err(Error::failure(format!("{name} ended in {status}{cause}")));
    }
    sp.finish(format!("{name}: deleted"));
    Ok(())
}

#[cfg(test)]
#[test]
fn list_parameters_read_the_same_from_aws_and_moto() {
    assert_eq!(list_value("['subnet-1', 'subnet-2']"), "subnet-1,subnet-2");
    assert_eq!(list_value("subnet-1,subnet-2"), "subnet-1,subnet-2");
    assert_eq!(list_value("[]"), "");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Update,
    Delete,
    /// Someone else's operation: wait, never cancel.
    Observe,
}

async fn wait_settled(
    cfn: &Client,
    name: &str,
    op: Op,
    wait: Wait,
    sp: &Spinner,
) -> Result<StackStatus> {
    wait_settled_from(cfn, name, op, wait, sp, None).await
}

/// Poll until the stack leaves *_IN_PROGRESS, printing new events. Returns the final status
/// ("DELETE_COMPLETE" once a deleted stack is gone). Ctrl-C cancels our own create (delete)
/// or update (cancel-update-stack) and reports the state left behind.
async fn wait_settled_from(
    cfn: &Client,
    name: &str,
    op: Op,
    wait: Wait,
    sp: &Spinner,
    since: Option<aws_sdk_cloudformation::primitives::DateTime>,
) -> Result<StackStatus> {
    let started = Instant::now();
    let mut poll = wait.min_poll;
    let mut seen: HashSet<String> = HashSet::new();
    loop {
        if let Some(since) = since {
            for line in new_events(cfn, name, since, &mut seen).await {
                sp.println(line);
            }
        }
        let remaining = wait.timeout.saturating_sub(started.elapsed());
        // A slow or hung poll must not delay the undo after an interrupt.
        let polled = tokio::select! {
            r = describe_polled(cfn, name, remaining, sp) => r?,
            _ = interrupt::cancelled() => return Err(cancel(cfn, name, op, sp).await),
        };
        let status = match polled {
            None => return Ok(StackStatus::DeleteComplete),
            Some(l) => l.status,
        };
        sp.set_message(format!("{name}: {status}"));
        if !status.running() {
            return Ok(status);
        }
        if started.elapsed() > wait.timeout {
            return Err(Error::timeout(format!(
                "{name} still {status} after {}s; it keeps going in CloudFormation",
                wait.timeout.as_secs()
            ))
            .with_help("raise --timeout, or watch it with `deployer status`"));
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = interrupt::cancelled() => return Err(cancel(cfn, name, op, sp).await),
        }
        poll = (poll * 2).min(wait.max_poll);
    }
}

/// How long the undo waits for CloudFormation to finish it before reporting it as under
/// way: the process must exit well inside CI's 7.5 s between SIGINT and SIGTERM.
const UNDO_WAIT: Duration = Duration::from_secs(3);

/// Undo our own in-flight operation after Ctrl-C and say what state it left.
async fn cancel(cfn: &Client, name: &str, op: Op, sp: &Spinner) -> Error {
    // Bounded as a whole: a hung endpoint must not hold the exit past the grace period.
    let left = match tokio::time::timeout(
        UNDO_WAIT + Duration::from_secs(1),
        interrupt::undo(undo_op(cfn, name, op, sp)),
    )
    .await
    {
        Ok(left) => left,
        Err(_) => format!(
            "the undo ({op:?}) got no answer within {}s; the stack may still be changing",
            UNDO_WAIT.as_secs() + 1
        ),
    };
    Error::interrupted(format!("interrupted: {name}: {left}"))
        .with_help("run `deployer status` to see what exists, and `deployer up` again to converge")
}

/// The documented undo of one operation (the only mutating calls allowed after an interrupt).
async fn undo_op(cfn: &Client, name: &str, op: Op, sp: &Spinner) -> String {
    let wait = Wait {
        timeout: UNDO_WAIT,
        ..Wait::default()
    };
    match op {
        Op::Create => {
            sp.println(format!(
                "{name}: interrupted during create; deleting the stack"
            ));
            match cfn.delete_stack().stack_name(name).send().await {
                Ok(_) => match wait_quiet(cfn, name, wait).await {
                    Some(s) if s.ends_with("_IN_PROGRESS") => {
                        format!("deletion started ({s}); it continues in CloudFormation")
                    }
                    Some(s) => format!("deletion ended in {s}"),
                    None => "deleted".into(),
                },
                Err(e) => format!(
                    "could not delete it ({}); delete it by hand",
                    describe_err(&e)
                ),
            }
        }
        Op::Update => {
            sp.println(format!(
                "{name}: interrupted during update; cancelling the update"
            ));
            match cfn.cancel_update_stack().stack_name(name).send().await {
                Ok(_) => match wait_quiet(cfn, name, wait).await {
                    Some(s) if s.ends_with("_IN_PROGRESS") => {
                        format!("update cancel started ({s}); it continues in CloudFormation")
                    }
                    Some(s) => format!("update cancelled; stack is {s}"),
                    None => "stack is gone".into(),
                },
                Err(e) => format!("could not cancel the update ({})", describe_err(&e)),
            }
        }
        Op::Delete | Op::Observe => {
            "left as it was; the operation continues in CloudFormation".into()
        }
    }
}

/// Wait without events or cancellation (used while cleaning up after Ctrl-C).
/// `None` when the stack no longer exists.
async fn wait_quiet(cfn: &Client, name: &str, wait: Wait) -> Option<String> {
    let started = Instant::now();
    let last = std::sync::Mutex::new(String::from("unknown"));
    let polls = async {
        loop {
            match describe(cfn, name).await {
                Ok(None) => return None,
                Ok(Some(l)) if !l.status.in_progress() || started.elapsed() > wait.timeout => {
                    return Some(l.status.to_string());
                }
                Err(e) => return Some(format!("unknown ({e})")),
                Ok(Some(l)) => {
                    if let Ok(mut s) = last.lock() {
                        *s = l.status.to_string();
                    }
                    tokio::time::sleep(wait.min_poll).await
                }
            }
        }
    };
    match tokio::time::timeout(wait.timeout, polls).await {
        Ok(r) => r,
        Err(_) => Some(last.lock().map(|s| s.clone()).unwrap_or_default()),
    }
}

/// Events after `since` not printed yet, oldest first.
async fn new_events(
    cfn: &Client,
    name: &str,
    since: aws_sdk_cloudformation::primitives::DateTime,
    seen: &mut HashSet<String>,
) -> Vec<String> {
    let Ok(out) = cfn.describe_stack_events().stack_name(name).send().await else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for ev in out.stack_events().iter().rev() {
        let Some(id) = ev.event_id() else { continue };
        if ev.timestamp().is_some_and(|t| t.secs() < since.secs()) || !seen.insert(id.to_string()) {
            continue;
        }
        let status = ev
            .resource_status()
            .map(aws_sdk_cloudformation::types::ResourceStatus::as_str)
            .unwrap_or_default();
        let mut line = format!(
            "  {name} {} {} {status}",
            ev.logical_resource_id().unwrap_or_default(),
            ev.resource_type().unwrap_or_default()
        );
        if let Some(r) = ev.resource_status_reason() {
            line.push_str(&format!(": {r}"));
        }
        lines.push(line);
    }
    lines
}

/// ": <resource> <status>: <reason>" for the first failed resource event after `since`.
async fn first_failure(
    cfn: &Client,
    name: &str,
    since: aws_sdk_cloudformation::primitives::DateTime,
) -> String {
    let Ok(out) = cfn.describe_stack_events().stack_name(name).send().await else {
        return String::new();
    };
    out.stack_events()
        .iter()
        .rev()
        .filter(|e| e.timestamp().is_none_or(|t| t.secs() >= since.secs()))
        .find(|e| {
            e.resource_status()
                .is_some_and(|s| s.as_str().ends_with("_FAILED"))
                && e.logical_resource_id() != Some(name)
        })
        .map(|e| {
            format!(
                ": {} ({}) {}: {}",
                e.logical_resource_id().unwrap_or_default(),
                e.resource_type().unwrap_or_default(),
                e.resource_status()
                    .map(aws_sdk_cloudformation::types::ResourceStatus::as_str)
                    .unwrap_or_default(),
                e.resource_status_reason().unwrap_or("no reason given")
            )
        })
        .unwrap_or_default()
}

/// Test fixtures shared with the integration tests.
#[cfg(test)]
#[path = "../../tests/support/cfn_fakes.rs"]
mod cfn_fakes;

#[cfg(test)]
mod fakes {
    //! Scripted SDK fakes for what moto cannot show: stacks that stay IN_PROGRESS with
    //! per-resource events, a failed create ending in ROLLBACK_COMPLETE and its recovery,
    //! the network stack's deletion, deadlines.
    use super::*;
    use crate::error::ExitCode;
    use aws_sdk_cloudformation::operation::create_change_set::CreateChangeSetOutput;
    use aws_sdk_cloudformation::operation::delete_change_set::DeleteChangeSetOutput;
    use aws_sdk_cloudformation::operation::delete_stack::DeleteStackOutput;
    use aws_sdk_cloudformation::operation::describe_change_set::DescribeChangeSetOutput;
    use aws_sdk_cloudformation::operation::describe_stack_events::DescribeStackEventsOutput;
    use aws_sdk_cloudformation::operation::execute_change_set::ExecuteChangeSetOutput;
    use aws_sdk_cloudformation::operation::get_template::GetTemplateOutput;
    use aws_sdk_cloudformation::primitives::DateTime;
    use aws_sdk_cloudformation::types::{ResourceStatus, StackEvent};
    use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};

    use super::cfn_fakes;
    use cfn_fakes::{NAME, missing, spec, stack};

    fn fast() -> Wait {
        Wait {
            timeout: Duration::from_secs(5),
            min_poll: Duration::from_millis(1),
            max_poll: Duration::from_millis(2),
        }
    }

    fn event(
        id: &str,
        logical: &str,
        ty: &str,
        status: ResourceStatus,
        reason: Option<&str>,
    ) -> StackEvent {
        StackEvent::builder()
            .event_id(id)
            .stack_name(NAME)
            .logical_resource_id(logical)
            .resource_type(ty)
            .resource_status(status)
            .set_resource_status_reason(reason.map(str::to_string))
            .timestamp(DateTime::from(
                std::time::SystemTime::now() + Duration::from_secs(1),
            ))
            .build()
    }

    /// DescribeStackEvents returns newest first.
    fn events(mut oldest_first: Vec<StackEvent>) -> Rule {
        oldest_first.reverse();
        mock!(Client::describe_stack_events).then_compute_output(move |_| {
            DescribeStackEventsOutput::builder()
                .set_stack_events(Some(oldest_first.clone()))
                .build()
        })
    }

    /// The shared change set, executed as a no-op: create, describe, execute, delete (the
    /// tests index them in this order).
    fn change_set_rules() -> Vec<Rule> {
        let mut rules = cfn_fakes::change_set_rules();
        rules.insert(
            2,
            mock!(Client::execute_change_set)
                .then_output(|| ExecuteChangeSetOutput::builder().build()),
        );
        rules
    }

    #[tokio::test]
    async fn fake_create_in_progress_with_resource_events_then_complete() {
        let describe = mock!(Client::describe_stacks)
            .sequence()
            .error(missing)
            .output(|| stack(StackStatus::CreateInProgress))
            .times(3)
            .output(|| stack(StackStatus::CreateComplete))
            .repeatedly()
            .build();
        let ev = events(vec![
            event(
                "1",
                "Vpc",
                "AWS::EC2::VPC",
                ResourceStatus::CreateInProgress,
                None,
            ),
            event(
                "2",
                "Vpc",
                "AWS::EC2::VPC",
                ResourceStatus::CreateComplete,
                None,
            ),
        ]);
        let mut rules = change_set_rules();
        rules.extend([describe.clone(), ev.clone()]);
        let cfn = mock_client!(
            aws_sdk_cloudformation,
            RuleMode::MatchAny,
            &rules.iter().collect::<Vec<_>>()
        );
        let applied = apply(&cfn, &spec(), fast(), &Ui::silent()).await.unwrap();
        assert_eq!(applied.action, ApplyAction::Created);
        assert_eq!(applied.outputs["VpcId"], "vpc-1");
        // Polled through the IN_PROGRESS states, reading events on each poll.
        assert!(describe.num_calls() >= 5, "{}", describe.num_calls());
        assert!(ev.num_calls() >= 4);
    }

    #[tokio::test]
    async fn fake_new_events_are_printed_once_oldest_first() {
        let ev = events(vec![
            event(
                "1",
                "Vpc",
                "AWS::EC2::VPC",
                ResourceStatus::CreateInProgress,
                None,
            ),
            event(
                "2",
                "SubnetA",
                "AWS::EC2::Subnet",
                ResourceStatus::CreateFailed,
                Some("CIDR conflicts"),
            ),
        ]);
        let cfn = mock_client!(aws_sdk_cloudformation, RuleMode::MatchAny, [&ev]);
        let since = DateTime::from_secs(0);
        let mut seen = HashSet::new();
        let first = new_events(&cfn, NAME, since, &mut seen).await;
        assert_eq!(first.len(), 2);
        assert!(
            first[0].contains("Vpc AWS::EC2::VPC CREATE_IN_PROGRESS"),
            "{first:?}"
        );
        assert!(
            first[1].contains("SubnetA AWS::EC2::Subnet CREATE_FAILED: CIDR conflicts"),
            "{first:?}"
        );
        assert!(new_events(&cfn, NAME, since, &mut seen).await.is_empty());
    }

    #[tokio::test]
    async fn fake_failed_create_reports_first_failed_resource() {
        let describe = mock!(Client::describe_stacks)
            .sequence()
            .error(missing)
            .output(|| stack(StackStatus::RollbackInProgress))
            .output(|| stack(StackStatus::RollbackComplete))
            .repeatedly()
            .build();
        let ev = events(vec![
            event(
                "1",
                "Vpc",
                "AWS::EC2::VPC",
                ResourceStatus::CreateComplete,
                None,
            ),
            event(
                "2",
                "SubnetA",
                "AWS::EC2::Subnet",
                ResourceStatus::CreateFailed,
                Some("The CIDR '10.1.0.0/24' is invalid"),
            ),
            event(
                "3",
                "SubnetB",
                "AWS::EC2::Subnet",
                ResourceStatus::CreateFailed,
                Some("Resource creation cancelled"),
            ),
            event(
                "4",
                "Vpc",
                "AWS::EC2::VPC",
                ResourceStatus::DeleteComplete,
                None,
            ),
        ]);
        let mut rules = change_set_rules();
        rules.extend([describe, ev]);
        let cfn = mock_client!(
            aws_sdk_cloudformation,
            RuleMode::MatchAny,
            &rules.iter().collect::<Vec<_>>()
        );
        let err = apply(&cfn, &spec(), fast(), &Ui::silent())
            .await
            .unwrap_err();
        assert_eq!(err.code(), ExitCode::Failure);
        assert!(err.message().contains("ROLLBACK_COMPLETE"), "{err}");
        assert!(
            err.message().contains(
                "SubnetA (AWS::EC2::Subnet) CREATE_FAILED: The CIDR '10.1.0.0/24' is invalid"
            ),
            "{err}"
        );
        assert!(
            !err.message().contains("cancelled"),
            "the first failure is the cause: {err}"
        );
    }

    #[tokio::test]
    async fn fake_update_rolled_back_by_circuit_breaker_exits_rolled_back() {
        // On AWS, CloudFormation waits for the ECS service to stabilise; when the deployment
        // circuit breaker fires, the stack update rolls back. That is exit 4, not 1.
        let describe = mock!(Client::describe_stacks)
            .sequence()
            .output(|| stack(StackStatus::UpdateComplete))
            .output(|| stack(StackStatus::UpdateInProgress))
            .output(|| stack(StackStatus::UpdateRollbackInProgress))
            .output(|| stack(StackStatus::UpdateRollbackComplete))
            .repeatedly()
            .build();
        let ev = events(vec![event(
            "1",
            "Service",
            "AWS::ECS::Service",
            ResourceStatus::UpdateFailed,
            Some("Error occurred during operation 'ECS Deployment Circuit Breaker was triggered'."),
        )]);
        let mut rules = change_set_rules();
        rules.extend([describe, ev]);
        let cfn = mock_client!(
            aws_sdk_cloudformation,
            RuleMode::MatchAny,
            &rules.iter().collect::<Vec<_>>()
        );
        let err = apply(&cfn, &spec(), fast(), &Ui::silent())
            .await
            .unwrap_err();
        assert_eq!(err.code(), ExitCode::RolledBack, "{err}");
        assert!(err.message().contains("UPDATE_ROLLBACK_COMPLETE"), "{err}");
        assert!(
            err.message().contains("Circuit Breaker was triggered"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn fake_rollback_complete_is_deleted_and_recreated() {
        let describe = mock!(Client::describe_stacks)
            .sequence()
            .output(|| stack(StackStatus::RollbackComplete)) // apply: what is there
            .output(|| stack(StackStatus::RollbackComplete)) // delete: exists?
            .output(|| stack(StackStatus::DeleteInProgress))
            .error(missing) // deleted
            .output(|| stack(StackStatus::CreateComplete))
            .repeatedly()
            .build();
        let delete =
            mock!(Client::delete_stack).then_output(|| DeleteStackOutput::builder().build());
        let mut rules = change_set_rules();
        rules.extend([describe, delete.clone(), events(vec![])]);
        let cfn = mock_client!(
            aws_sdk_cloudformation,
            RuleMode::MatchAny,
            &rules.iter().collect::<Vec<_>>()
        );
        let applied = apply(&cfn, &spec(), fast(), &Ui::silent()).await.unwrap();
        assert_eq!(applied.action, ApplyAction::Recreated);
        assert_eq!(delete.num_calls(), 1);
    }

    #[tokio::test]
    async fn fake_network_stack_deletion_waits_until_gone() {
        let describe = mock!(Client::describe_stacks)
            .sequence()
            .output(|| stack(StackStatus::CreateComplete))
            .output(|| stack(StackStatus::DeleteInProgress))
            .times(3)
            .error(missing)
            .build();
        let delete_rule =
            mock!(Client::delete_stack).then_output(|| DeleteStackOutput::builder().build());
        let ev = events(vec![event(
            "1",
            "SubnetA",
            "AWS::EC2::Subnet",
            ResourceStatus::DeleteComplete,
            None,
        )]);
        let cfn = mock_client!(
            aws_sdk_cloudformation,
            RuleMode::MatchAny,
            [&describe, &delete_rule, &ev]
        );
        delete(&cfn, NAME, fast(), &Ui::silent()).await.unwrap();
        assert_eq!(describe.num_calls(), 5);
    }

    #[tokio::test]
    async fn fake_network_stack_delete_failed_names_the_resource() {
        let describe = mock!(Client::describe_stacks)
            .sequence()
            .output(|| stack(StackStatus::CreateComplete))
            .output(|| stack(StackStatus::DeleteFailed))
            .repeatedly()
            .build();
        let delete_rule =
            mock!(Client::delete_stack).then_output(|| DeleteStackOutput::builder().build());
        let ev = events(vec![event(
            "1",
            "Vpc",
            "AWS::EC2::VPC",
            ResourceStatus::DeleteFailed,
            Some("The vpc 'vpc-1' has dependencies and cannot be deleted."),
        )]);
        let cfn = mock_client!(
            aws_sdk_cloudformation,
            RuleMode::MatchAny,
            [&describe, &delete_rule, &ev]
        );
        let err = delete(&cfn, NAME, fast(), &Ui::silent()).await.unwrap_err();
        assert!(
            err.message().contains("DELETE_FAILED")
                && err.message().contains("Vpc (AWS::EC2::VPC)"),
            "{err}"
        );
        assert!(err.message().contains("has dependencies"), "{err}");
    }

    #[tokio::test]
    async fn fake_stack_stuck_in_progress_times_out() {
        let describe = mock!(Client::describe_stacks)
            .sequence()
            .error(missing)
            .output(|| stack(StackStatus::CreateInProgress))
            .repeatedly()
            .build();
        let mut rules = change_set_rules();
        rules.extend([describe, events(vec![])]);
        let cfn = mock_client!(
            aws_sdk_cloudformation,
            RuleMode::MatchAny,
            &rules.iter().collect::<Vec<_>>()
        );
        let wait = Wait {
            timeout: Duration::from_millis(20),
            ..fast()
        };
        let err = apply(&cfn, &spec(), wait, &Ui::silent()).await.unwrap_err();
        assert_eq!(err.code(), ExitCode::Timeout);
        assert!(err.message().contains("CREATE_IN_PROGRESS"), "{err}");
    }

    #[tokio::test]
    async fn fake_plan_of_an_update_deletes_its_change_set() {
        let describe =
            mock!(Client::describe_stacks).then_output(|| stack(StackStatus::UpdateComplete));
        let template = mock!(Client::get_template)
            .then_output(|| GetTemplateOutput::builder().template_body("old").build());
        let rules = change_set_rules();
        let delete_cs = rules[3].clone();
        let mut all = rules;
        all.extend([describe, template]);
        let cfn = mock_client!(
            aws_sdk_cloudformation,
            RuleMode::MatchAny,
            &all.iter().collect::<Vec<_>>()
        );
        let p = plan(&cfn, &spec(), fast()).await.unwrap();
        match p {
            StackPlan::Update { changes, .. } => assert_eq!(changes[0].logical_id, "Vpc"),
            other => panic!("expected an update, got {other:?}"),
        }
        assert_eq!(
            delete_cs.num_calls(),
            1,
            "plan must not leave its change set behind"
        );
    }

    #[tokio::test]
    async fn fake_empty_change_set_means_nothing_to_do() {
        let describe =
            mock!(Client::describe_stacks).then_output(|| stack(StackStatus::UpdateComplete));
        let template = mock!(Client::get_template)
            .then_output(|| GetTemplateOutput::builder().template_body("old").build());
        let create = mock!(Client::create_change_set)
            .then_output(|| CreateChangeSetOutput::builder().id("cs").build());
        let failed = mock!(Client::describe_change_set).then_output(|| {
            DescribeChangeSetOutput::builder()
                .status(ChangeSetStatus::Failed)
                .status_reason("The submitted information didn't contain changes. Submit different information to create a change set.")
                .build()
        });
        let execute = mock!(Client::execute_change_set)
            .then_output(|| ExecuteChangeSetOutput::builder().build());
        let del = mock!(Client::delete_change_set)
            .then_output(|| DeleteChangeSetOutput::builder().build());
        let cfn = mock_client!(
            aws_sdk_cloudformation,
            RuleMode::MatchAny,
            [&describe, &template, &create, &failed, &execute, &del]
        );
        let applied = apply(&cfn, &spec(), fast(), &Ui::silent()).await.unwrap();
        assert_eq!(applied.action, ApplyAction::Unchanged);
        assert_eq!(execute.num_calls(), 0);
    }
}
