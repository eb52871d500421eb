//! deployer: run real-time data pipelines as always-on ECS Fargate services.
//!
//! Each command is a pipeline of typed steps; see README.md ("Architecture").

pub mod aws;
pub mod cli;
pub mod cloudwatch;
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
