//! CloudFormation fixtures for the scripted SDK fakes (aws-smithy-mocks), shared by the stack
//! engine's unit tests (src/stacks/engine.rs includes this file) and tests/fake_interrupt.rs:
//! one network stack of project `demo`, as the deployer made it.
#![allow(dead_code)]

use aws_sdk_cloudformation::Client;
use aws_sdk_cloudformation::operation::create_change_set::CreateChangeSetOutput;
use aws_sdk_cloudformation::operation::delete_change_set::DeleteChangeSetOutput;
use aws_sdk_cloudformation::operation::describe_change_set::DescribeChangeSetOutput;
use aws_sdk_cloudformation::operation::describe_stacks::{
    DescribeStacksError, DescribeStacksOutput,
};
use aws_sdk_cloudformation::primitives::DateTime;
use aws_sdk_cloudformation::types::{
    Change, ChangeAction, ChangeSetStatus, Output, ResourceChange, Stack, StackStatus, Tag,
};
use aws_smithy_mocks::{Rule, mock};
use aws_smithy_types::error::ErrorMetadata;
use deployer::stacks::{StackSpec, templates};
use std::collections::BTreeMap;

pub const NAME: &str = "demo-network";

/// The network stack's spec.
pub fn spec() -> StackSpec {
    StackSpec {
        name: NAME.into(),
        template: templates::NETWORK,
        parameters: BTreeMap::from([("Project".to_string(), "demo".to_string())]),
        tags: deployer::stacks::project_tags("demo"),
    }
}

/// DescribeStacks: the stack in `status`, with the deployer's tags and its VpcId output.
pub fn stack(status: StackStatus) -> DescribeStacksOutput {
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    DescribeStacksOutput::builder()
        .stacks(
            Stack::builder()
                .stack_name(NAME)
                .stack_status(status)
                .creation_time(DateTime::from_secs(0))
                .tags(tag("managed-by", "deployer"))
                .tags(tag("project", "demo"))
                .outputs(
                    Output::builder()
                        .output_key("VpcId")
                        .output_value("vpc-1")
                        .build(),
                )
                .build(),
        )
        .build()
}

/// DescribeStacks of a stack that does not exist (CloudFormation's ValidationError).
pub fn missing() -> DescribeStacksError {
    DescribeStacksError::generic(
        ErrorMetadata::builder()
            .code("ValidationError")
            .message(format!("Stack with id {NAME} does not exist"))
            .build(),
    )
}

/// A change set that adds the VPC: created, described complete, deletable. Executing it is
/// the caller's rule (each test decides what it does to the stack).
pub fn change_set_rules() -> Vec<Rule> {
    vec![
        mock!(Client::create_change_set)
            .then_output(|| CreateChangeSetOutput::builder().id("cs-1").build()),
        mock!(Client::describe_change_set).then_output(|| {
            DescribeChangeSetOutput::builder()
                .status(ChangeSetStatus::CreateComplete)
                .changes(
                    Change::builder()
                        .resource_change(
                            ResourceChange::builder()
                                .action(ChangeAction::Add)
                                .logical_resource_id("Vpc")
                                .resource_type("AWS::EC2::VPC")
                                .build(),
                        )
                        .build(),
                )
                .build()
        }),
        mock!(Client::delete_change_set).then_output(|| DeleteChangeSetOutput::builder().build()),
    ]
}
