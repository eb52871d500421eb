//! Ctrl-C while a stack operation is in progress, with a scripted SDK fake (aws-smithy-mocks):
//! moto finishes every stack operation synchronously, so it cannot show an in-progress create
//! or update to interrupt. The interrupt is process-global, so this file holds one test that
//! runs both cases in turn.

use aws_sdk_cloudformation::Client;
use aws_sdk_cloudformation::operation::cancel_update_stack::CancelUpdateStackOutput;
use aws_sdk_cloudformation::operation::delete_stack::DeleteStackOutput;
use aws_sdk_cloudformation::operation::describe_stack_events::DescribeStackEventsOutput;
use aws_sdk_cloudformation::operation::execute_change_set::ExecuteChangeSetOutput;
use aws_sdk_cloudformation::operation::get_template::GetTemplateOutput;
use aws_sdk_cloudformation::types::StackStatus;
use aws_smithy_mocks::{MockResponse, Rule, RuleMode, mock, mock_client};
use deployer::error::ExitCode;
use deployer::stacks::{self, Wait};
use deployer::ui::Ui;

#[path = "support/cfn_fakes.rs"]
mod cfn_fakes;
use cfn_fakes::{missing, spec, stack};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

// Stack lifecycle in the fake: 0 before execute, 1 operation in progress, 2 undone.
const BEFORE: u8 = 0;
const RUNNING: u8 = 1;
const UNDONE: u8 = 2;

/// Change set rules shared by both cases; executing it moves the fake to RUNNING.
fn change_set_rules(state: &Arc<AtomicU8>) -> Vec<Rule> {
    let s = state.clone();
    let mut rules = cfn_fakes::change_set_rules();
    rules.extend([
        mock!(Client::execute_change_set).then_compute_output(move |_| {
            s.store(RUNNING, Ordering::SeqCst);
            ExecuteChangeSetOutput::builder().build()
        }),
        mock!(Client::describe_stack_events)
            .then_output(|| DescribeStackEventsOutput::builder().build()),
        mock!(Client::get_template)
            .then_output(|| GetTemplateOutput::builder().template_body("{}").build()),
    ]);
    rules
}

/// DescribeStacks for one lifecycle: `before` until execute, `running` while in progress
/// (the second such answer presses Ctrl-C: the wait has subscribed by then), `undone` after.
fn describe_rule(
    state: &Arc<AtomicU8>,
    before: Option<StackStatus>,
    running: StackStatus,
    undone: StackStatus,
) -> Rule {
    let s = state.clone();
    let polls = Arc::new(AtomicU8::new(0));
    mock!(Client::describe_stacks).then_compute_response(move |_| match s.load(Ordering::SeqCst) {
        BEFORE => match &before {
            Some(status) => MockResponse::Output(stack(status.clone())),
            None => MockResponse::Error(missing()),
        },
        RUNNING => {
            if polls.fetch_add(1, Ordering::SeqCst) == 1 {
                deployer::interrupt::trigger();
            }
            MockResponse::Output(stack(running.clone()))
        }
        _ => MockResponse::Output(stack(undone.clone())),
    })
}

fn fast() -> Wait {
    Wait {
        timeout: Duration::from_secs(10),
        min_poll: Duration::from_millis(5),
        max_poll: Duration::from_millis(10),
    }
}

#[tokio::test]
async fn fake_ctrl_c_deletes_a_stack_being_created_cancels_an_update_and_stops_a_build() {
    // 0. (First: the interrupt is process-global and stays raised.) Interrupted build or
    //    rollout wait, no stack involved: the step is dropped at once
    //    and the error says what was stopped (exit 130).
    let never = std::future::pending::<deployer::error::Result<()>>();
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        deployer::interrupt::trigger();
    });
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        deployer::interrupt::or_interrupted(never, "the image build", "nothing was deployed"),
    )
    .await
    .expect("Ctrl-C did not stop the step")
    .expect_err("an interrupted step must not report success");
    assert_eq!(err.code(), ExitCode::Interrupted);
    assert_eq!(
        err.message(),
        "interrupted during the image build: nothing was deployed"
    );

    // 1. Interrupted create: the stack is deleted and the error says so (exit 130).
    //    (The interrupt of step 0 was handled: clear it, or no change would start at all.)
    deployer::interrupt::reset();
    let state = Arc::new(AtomicU8::new(BEFORE));
    let s = state.clone();
    let delete = mock!(Client::delete_stack).then_compute_output(move |_| {
        s.store(UNDONE, Ordering::SeqCst);
        DeleteStackOutput::builder().build()
    });
    let mut rules = change_set_rules(&state);
    rules.push(describe_rule(
        &state,
        None,
        StackStatus::CreateInProgress,
        StackStatus::DeleteComplete,
    ));
    rules.push(delete.clone());
    let cfn = mock_client!(
        aws_sdk_cloudformation,
        RuleMode::MatchAny,
        &rules.iter().collect::<Vec<_>>()
    );
    let err = stacks::apply(&cfn, &spec(), fast(), &Ui::silent())
        .await
        .expect_err("an interrupted create must not report success");
    assert_eq!(err.code(), ExitCode::Interrupted, "{err}");
    assert_eq!(
        delete.num_calls(),
        1,
        "the stack being created was not deleted"
    );
    assert!(err.message().contains("deleted"), "{err}");

    // 2. Interrupted update: the update is cancelled (not the stack deleted) and the state
    //    it left is named.
    deployer::interrupt::reset();
    let state = Arc::new(AtomicU8::new(BEFORE));
    let s = state.clone();
    let cancel = mock!(Client::cancel_update_stack).then_compute_output(move |_| {
        s.store(UNDONE, Ordering::SeqCst);
        CancelUpdateStackOutput::builder().build()
    });
    let no_delete =
        mock!(Client::delete_stack).then_output(|| DeleteStackOutput::builder().build());
    let mut rules = change_set_rules(&state);
    rules.push(describe_rule(
        &state,
        Some(StackStatus::CreateComplete),
        StackStatus::UpdateInProgress,
        StackStatus::UpdateRollbackComplete,
    ));
    rules.push(cancel.clone());
    rules.push(no_delete.clone());
    let cfn = mock_client!(
        aws_sdk_cloudformation,
        RuleMode::MatchAny,
        &rules.iter().collect::<Vec<_>>()
    );
    let err = stacks::apply(&cfn, &spec(), fast(), &Ui::silent())
        .await
        .expect_err("an interrupted update must not report success");
    assert_eq!(err.code(), ExitCode::Interrupted, "{err}");
    assert_eq!(cancel.num_calls(), 1, "the update was not cancelled");
    assert_eq!(no_delete.num_calls(), 0, "an existing stack was deleted");
    assert!(
        err.message()
            .contains("update cancelled; stack is UPDATE_ROLLBACK_COMPLETE"),
        "{err}"
    );
}
