//! CloudFormation stacks: what a stack should be (`StackSpec`), what it is (`LiveStack`),
//! planning through change sets, applying with streamed events, and deletion.

mod engine;
pub mod specs;
pub mod templates;

pub use aws_sdk_cloudformation::types::StackStatus;
pub use engine::{
    Applied, ApplyAction, LiveStack, ResourceChange, StackPlan, StatusExt, Wait, apply, delete,
    describe, is_current, other_service_stacks, plan,
};

use std::collections::BTreeMap;

/// Tag every stack (and SSM parameter) carries; `destroy` refuses anything without it.
pub const MANAGED_BY_KEY: &str = "managed-by";
pub const MANAGED_BY_VALUE: &str = "deployer";
pub const PROJECT_KEY: &str = "project";

/// The desired state of one stack.
#[derive(Debug, Clone)]
pub struct StackSpec {
    pub name: String,
    pub template: &'static str,
    pub parameters: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

/// The tags every resource of a project carries.
pub fn project_tags(project: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (PROJECT_KEY.to_string(), project.to_string()),
        (MANAGED_BY_KEY.to_string(), MANAGED_BY_VALUE.to_string()),
    ])
}

/// True when `tags` say the resource belongs to `project` and was made by the deployer.
pub fn owned_by(tags: &BTreeMap<String, String>, project: &str) -> bool {
    tags.get(MANAGED_BY_KEY).map(String::as_str) == Some(MANAGED_BY_VALUE)
        && tags.get(PROJECT_KEY).map(String::as_str) == Some(project)
}
