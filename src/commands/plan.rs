//! `plan`: what `up` would create or change, per stack (AWS) or per container (local).

use super::{Context, Platform, done};
use crate::cli::Plan;
use crate::error::{ExitCode, Result};
use crate::summary;

impl Plan {
    pub async fn run(&self, cx: &Context<'_>) -> Result<ExitCode> {
        let ui = cx.ui;
        let changes = match &cx.platform {
            Platform::Local(local) => {
                let report = local.plan().await?;
                ui.result(summary::local_plan_text(&report).trim_end());
                ui.result_json(&done(&report));
                report.changes
            }
            Platform::Aws(clients) => {
                let report = crate::deploy::plan(&cx.aws(clients, false)).await?;
                ui.result(summary::plan_text(&report).trim_end());
                ui.result_json(&done(&report).api_calls(super::ApiCalls::of(clients)));
                report.changes
            }
        };
        // `--exit-code`: 2 when something would change.
        Ok(if self.exit_code && changes {
            ExitCode::BadInput
        } else {
            ExitCode::Success
        })
    }
}
