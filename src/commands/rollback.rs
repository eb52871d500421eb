//! `rollback`: services back on an earlier revision (the previous one, or `--to N`), waited on.

use super::{Context, Platform, done};
use crate::cli::Rollback;
use crate::error::{Error, ExitCode, Result};
use crate::rollout::rollback;
use serde_json::json;

impl Rollback {
    pub async fn run(&self, cx: &Context<'_>) -> Result<ExitCode> {
        match &cx.platform {
            Platform::Local(local) => {
                let to = match self.to {
                    Some(n) => Some(u32::try_from(n).map_err(|_| {
                        Error::bad_input(format!("--to {n}: a revision is a positive number"))
                    })?),
                    None => None,
                };
                let rolled_back = local.rollback(self.service.as_deref(), to).await?;
                for (service, from, to) in &rolled_back {
                    cx.ui
                        .result(format!("{service}: rolled back revision {from} -> {to}"));
                }
                let list: Vec<_> = rolled_back
                    .iter()
                    .map(|(s, f, t)| json!({"service": s, "from": f, "to": t}))
                    .collect();
                cx.ui
                    .result_json(&done(&json!({ "rollbacks": list })).target("local"));
            }
            Platform::Aws(clients) => {
                cx.lock(clients, "rollback").await?;
                let refs = crate::deploy::service_refs(
                    &cx.loaded.config,
                    &clients.cfn,
                    self.service.as_deref(),
                )
                .await?;
                let mut rolled_back = Vec::new();
                for r in &refs {
                    let report = rollback::rollback(clients, r, self.to, cx.wait(), cx.ui).await?;
                    cx.ui.result(format!(
                        "{}: rolled back {} -> {}",
                        report.service,
                        rollback::short(&report.from),
                        rollback::short(&report.to)
                    ));
                    rolled_back.push(report);
                }
                cx.ui
                    .result_json(&done(&json!({ "rollbacks": rolled_back })));
            }
        }
        Ok(ExitCode::Success)
    }
}
