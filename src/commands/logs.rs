//! `logs`: CloudWatch Logs on AWS, the containers' logs locally; one set of flags for both.

use super::{Context, Platform, done};
use crate::cli::Logs;
use crate::error::{ExitCode, Result};

impl Logs {
    pub async fn run(&self, cx: &Context<'_>) -> Result<ExitCode> {
        let config = &cx.loaded.config;
        let (lines, target) = match &cx.platform {
            Platform::Local(_) => (
                crate::local::logs::print(config, self, cx.ui).await?,
                "local",
            ),
            Platform::Aws(clients) => (
                crate::cloudwatch::print(&clients.logs, config, self, cx.ui).await?,
                "aws",
            ),
        };
        cx.ui
            .result_json(&done(&serde_json::json!({ "lines": lines })).target(target));
        Ok(ExitCode::Success)
    }
}
