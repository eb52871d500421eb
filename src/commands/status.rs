//! `status`: stacks, services, revisions and images (AWS), or containers and revisions (local).

use super::{Context, Platform, done};
use crate::cli::Status;
use crate::error::{ExitCode, Result};
use crate::summary;

impl Status {
    pub async fn run(&self, cx: &Context<'_>) -> Result<ExitCode> {
        let ui = cx.ui;
        match &cx.platform {
            Platform::Local(local) => {
                let report = local.status().await?;
                ui.result(summary::local_status_text(&report).trim_end());
                ui.result_json(&done(&report));
            }
            Platform::Aws(clients) => {
                let report = crate::status::status(&cx.loaded.config, clients).await?;
                ui.result(summary::status_text(&report).trim_end());
                ui.result_json(&done(&report));
            }
        }
        Ok(ExitCode::Success)
    }
}
