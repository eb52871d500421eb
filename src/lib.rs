//! deployer: run real-time data pipelines as always-on ECS Fargate services.
//!
//! Each command is a pipeline of typed steps; see README.md ("Architecture").

// Lets the test fixtures shared with the integration tests (tests/support/cfn_fakes.rs)
// name this crate as they do, `deployer::…`.
extern crate self as deployer;

pub mod aws;
pub mod cli;
pub mod cloudwatch;
pub mod commands;
pub mod config;
pub mod deploy;
pub mod destroy;
pub mod error;
pub mod image;
pub mod interrupt;
pub mod lake;
pub mod local;
pub mod lock;
pub mod names;
pub mod preflight;
pub mod retry;
pub mod rollout;
pub mod secrets;
pub mod stacks;
pub mod status;
pub mod summary;
pub mod target;
pub mod ui;
pub mod verify;

/// File, git and tar helpers shared with the integration tests.
#[cfg(test)]
#[path = "../tests/support/files.rs"]
mod test_files;
