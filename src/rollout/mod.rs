//! Task definitions and service deployments.

pub mod rollback;
pub mod taskdef;
pub mod track;
