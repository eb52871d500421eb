//! Task definitions and service deployments.

pub mod taskdef;
pub mod track;
