//! `destroy`: everything `up` made, in order, after a confirmation; the data lake stays
//! unless `--delete-data`.

use super::{Context, Platform, done};
use crate::cli::Destroy;
use crate::error::{Error, ExitCode, Result};
use crate::summary;
use crate::ui::Ui;
use std::io::IsTerminal;

impl Destroy {
    pub async fn run(&self, cx: &Context<'_>) -> Result<ExitCode> {
        let (ui, loaded) = (cx.ui, cx.loaded);
        let project = &loaded.config.project;
        let confirm = |what: &[String]| confirm(project, what, self.yes, ui);
        match &cx.platform {
            Platform::Local(local) => {
                let report = local
                    .destroy(self.keep_images, self.delete_data, confirm)
                    .await?;
                ui.result(summary::local_destroy_text(&report).trim_end());
                ui.result_json(&done(&report));
            }
            Platform::Aws(clients) => {
                if self.keep_images {
                    ui.warn("--keep-images applies to the local target; on AWS the repository and its images are deleted");
                }
                cx.lock(clients, "destroy").await?;
                let report = crate::destroy::destroy(
                    &loaded.config,
                    clients,
                    cx.wait(),
                    ui,
                    self.delete_data,
                    confirm,
                )
                .await?;
                crate::target::clear(&loaded.dir, project);
                ui.result(summary::destroy_text(&report).trim_end());
                ui.result_json(&done(&report));
            }
        }
        Ok(ExitCode::Success)
    }
}

/// On a TTY ask for the project name; elsewhere require --yes.
fn confirm(project: &str, what: &[String], yes: bool, ui: &Ui) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(
            Error::bad_input("destroy needs confirmation and stdin is not a terminal")
                .with_help("pass --yes to destroy without a prompt"),
        );
    }
    ui.step(format!("This deletes:\n  {}", what.join("\n  ")));
    let line = ui.prompt(format!("Type the project name ({project}) to confirm: "));
    if line.trim() == project {
        Ok(())
    } else {
        Err(Error::bad_input(
            "destroy not confirmed; nothing was deleted",
        ))
    }
}
