//! `build`: each service's image, pushed with `--push` (to ECR on AWS, or `--registry`).

use super::{Context, Platform, done};
use crate::cli::Build;
use crate::error::{Error, ExitCode, Result};

impl Build {
    pub async fn run(&self, cx: &Context<'_>) -> Result<ExitCode> {
        let loaded = cx.loaded;
        let ecr = match &cx.platform {
            Platform::Aws(clients) => Some(&clients.ecr),
            Platform::Local(_) => None,
        };
        let images = crate::interrupt::or_interrupted(
            crate::deploy::build_images(
                &loaded.config,
                &loaded.dir,
                ecr,
                &self.image,
                self.push,
                cx.ui,
            ),
            "the image build",
            "the build was stopped",
        )
        .await?;
        if images.is_empty() {
            return Err(Error::bad_input(format!(
                "{}: no service has a `build:` section; nothing to build",
                loaded.path.display()
            )));
        }
        for i in &images {
            cx.ui.result(format!("{} {}", i.service, i.image.image_uri));
        }
        cx.ui
            .result_json(&done(&serde_json::json!({ "images": images })));
        Ok(ExitCode::Success)
    }
}
