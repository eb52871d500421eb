//! `init`: write a commented starter config for the bundled flow.

use super::done;
use crate::cli::Init;
use crate::error::{Error, ExitCode, Result};
use crate::ui::Ui;
use std::path::Path;

impl Init {
    pub fn run(&self, path: &Path, ui: &Ui) -> Result<ExitCode> {
        if path.exists() && !self.force {
            return Err(
                Error::bad_input(format!("{} already exists", path.display()))
                    .with_help("pass --force to overwrite it, or --config to write another file"),
            );
        }
        std::fs::write(path, crate::config::STARTER)
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        ui.result(format!(
            "wrote {}: edit `project`, `data_lake` and `services`, then run `deployer plan`",
            path.display()
        ));
        ui.result_json(&done(&serde_json::json!({ "path": path })));
        Ok(ExitCode::Success)
    }
}
