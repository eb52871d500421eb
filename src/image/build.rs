//! Build through the Docker Engine API (bollard, classic builder: it needs no BuildKit session
//! and builds `FROM scratch` images with no pull). Progress shows the current Dockerfile step;
//! a failing step is reported with its output.

use super::Platform;
use super::context::{BuildContext, ContextStats};
use crate::error::{Error, Result};
use crate::ui::Ui;
use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long the engine may take to answer its first ping.
pub const ENGINE_ANSWER: Duration = Duration::from_secs(5);

/// Lines of step output kept for the error report of a failing step.
const OUTPUT_TAIL: usize = 40;

/// Connect to the engine named by `DOCKER_HOST` (default: the local socket) and agree on an
/// API version, so older engines (e.g. 20.10, API 1.41) work.
pub async fn connect() -> Result<Docker> {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let unreachable = |e: bollard::errors::Error| {
        Error::docker(format!("cannot reach the Docker engine at {host}"), e)
            .with_help("start Docker (`docker info` must work) or set DOCKER_HOST")
    };
    let docker = Docker::connect_with_defaults().map_err(unreachable)?;
    // Builds and pushes stream for minutes; bollard's default 120 s request timeout is too short.
    let docker = docker.with_timeout(Duration::from_secs(3600));
    // ...but an engine that accepts and never answers must not hold the run for an hour.
    let ready = async {
        let docker = docker.negotiate_version().await?;
        docker.ping().await?;
        Ok::<_, bollard::errors::Error>(docker)
    };
    match tokio::time::timeout(ENGINE_ANSWER, ready).await {
        Ok(r) => r.map_err(unreachable),
        Err(_) => Err(Error::failure(format!(
            "the Docker engine at {host} did not answer within {} s",
            ENGINE_ANSWER.as_secs()
        ))
        .with_help("check the engine (`docker info` must answer) or DOCKER_HOST")),
    }
}

/// One image build.
#[derive(Debug)]
pub struct BuildRequest<'a> {
    pub context: BuildContext,
    /// Local name to tag the result with, e.g. `host/repo:tag`.
    pub image_ref: &'a str,
    pub args: &'a BTreeMap<String, String>,
    pub target: Option<&'a str>,
    pub platform: Platform,
    pub labels: BTreeMap<String, String>,
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct Built {
    /// `sha256:...` image id (the config digest).
    pub image_id: String,
    pub context: ContextStats,
    pub steps: u32,
    pub cached_steps: u32,
    pub seconds: f64,
}

/// Build `req` and tag it as `req.image_ref`.
///
/// Kept whole: one streamed build, the engine's messages and the context upload handled
/// together, then one verdict from both.
pub async fn build_image(docker: &Docker, req: BuildRequest<'_>, ui: &Ui) -> Result<Built> {
    let started = Instant::now();
    let args: HashMap<String, String> = req
        .args
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let labels: HashMap<String, String> = req.labels.into_iter().collect();
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(req.context.dockerfile())
        .t(req.image_ref)
        .rm(true)
        .forcerm(true)
        .platform(req.platform.as_str())
        .buildargs(&args)
        .labels(&labels);
    if let Some(target) = req.target {
        options = options.target(target);
    }
    let (body, context_task) = req.context.stream();
    let spinner = ui.spinner(format!("building {}", req.image_ref));
    let mut stream =
        docker.build_image(options.build(), None, Some(bollard::body_try_stream(body)));

    let mut progress = BuildProgress::default();
    let mut image_id = None;
    let mut failure = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(text) = info.stream.as_deref() {
                    for line in progress.push(text) {
                        match line {
                            Line::Step(step) => spinner.set_message(format!("building: {step}")),
                            Line::Output(out) => ui.detail(format!("  {out}")),
                        }
                    }
                }
                if let Some(id) = info.aux.and_then(|aux| aux.id) {
                    image_id = Some(id);
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                failure = Some(error);
                break;
            }
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    drop(stream);
    let context = match context_task.await {
        Ok(Ok(stats)) => Some(stats),
        Ok(Err(e)) => {
            spinner.finish("build failed");
            return Err(Error::io("cannot read the build context", e)
                .with_help("check file permissions in the build context"));
        }
        // The body was dropped early (build failed before reading the whole context).
        Err(_) => None,
    };
    if let Some(error) = failure {
        spinner.finish("build failed");
        return Err(progress.failure(&error));
    }
    progress.flush();
    let image_id = match image_id {
        Some(id) => id,
        None => docker
            .inspect_image(req.image_ref)
            .await
            .ok()
            .and_then(|i| i.id)
            .ok_or_else(|| {
                Error::failure("the Docker engine reported no image id for the build")
            })?,
    };
    let context =
        context.ok_or_else(|| Error::failure("the build context stream did not finish"))?;
    let seconds = started.elapsed().as_secs_f64();
    spinner.finish(format!(
        "built {} in {seconds:.1}s ({} of {} steps cached, context {} files, {})",
        req.image_ref,
        progress.cached,
        progress.steps,
        context.files,
        human_bytes(context.tar_bytes)
    ));
    Ok(Built {
        image_id,
        context,
        steps: progress.steps,
        cached_steps: progress.cached,
        seconds,
    })
}

enum Line {
    Step(String),
    Output(String),
}

/// Reassembles the engine's `stream` fragments into lines and tracks the current step.
#[derive(Default)]
struct BuildProgress {
    partial: String,
    step: Option<String>,
    /// Output of the current step only: that is what explains a failure.
    output: VecDeque<String>,
    steps: u32,
    cached: u32,
}

impl BuildProgress {
    fn push(&mut self, text: &str) -> Vec<Line> {
        self.partial.push_str(text);
        let mut lines = Vec::new();
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            if let Some(line) = self.line(line.trim_end()) {
                lines.push(line);
            }
        }
        lines
    }

    fn flush(&mut self) {
        let rest = std::mem::take(&mut self.partial);
        let _ = self.line(rest.trim_end());
    }

    fn line(&mut self, line: &str) -> Option<Line> {
        if line.trim().is_empty() {
            return None;
        }
        if line.starts_with("Step ") {
            self.steps += 1;
            self.step = Some(line.to_string());
            self.output.clear();
            return Some(Line::Step(line.to_string()));
        }
        if line.trim() == "---> Using cache" {
            self.cached += 1;
        }
        // Engine bookkeeping, not step output.
        let noise =
            line.starts_with(" ---> ") || line.starts_with("Removing intermediate container");
        if !noise {
            if self.output.len() == OUTPUT_TAIL {
                self.output.pop_front();
            }
            self.output.push_back(line.to_string());
        }
        Some(Line::Output(line.to_string()))
    }

    fn failure(&mut self, error: &str) -> Error {
        self.flush();
        let mut message = match &self.step {
            Some(step) => format!("docker build failed at `{step}`: {}", error.trim()),
            None => format!("docker build failed: {}", error.trim()),
        };
        if !self.output.is_empty() {
            message.push_str("\n  step output:");
            for line in &self.output {
                message.push_str("\n    ");
                message.push_str(line);
            }
        }
        Error::failure(message)
            .with_help("fix the failing Dockerfile step; `-v` shows the full build log")
    }
}

pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_tracks_steps_cache_and_failure_output() {
        let mut p = BuildProgress::default();
        p.push("Step 1/3 : FROM scratch");
        p.push("\n ---> \nStep 2/3 : COPY a /a\n ---> Using cache\n ---> 3b8a\n");
        p.push("Step 3/3 : RUN false\n ---> Running in 40\nsome output\nmore");
        let err = p.failure("The command '/bin/sh -c false' returned a non-zero code: 1");
        assert_eq!((p.steps, p.cached), (3, 1));
        let text = err.to_string();
        assert!(text.contains("failed at `Step 3/3 : RUN false`"), "{text}");
        assert!(
            text.contains("some output") && text.contains("more"),
            "{text}"
        );
        assert!(
            !text.contains("COPY"),
            "only the failing step's output: {text}"
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2_500_000), "2.5 MB");
    }
}
