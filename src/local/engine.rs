//! The Docker engine as the local target sees it (bollard): containers, the project network
//! and images, always selected by the project's labels. Every call has a timeout, and a
//! missing engine is named (with `DOCKER_HOST`) within [`CONNECT_TIMEOUT`].

use super::spec::{
    ContainerSpec, LABEL_IMAGE_OF, LABEL_PROJECT, LABEL_REVISION, LABEL_SERVICE, LABEL_SPEC,
};
use crate::config::LocalNetwork;
use crate::error::{Error, Result};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerUpdateBody, HealthConfig,
    HealthStatusEnum, HostConfig, NetworkCreateRequest, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    ListNetworksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

/// How long the engine may take to answer the first ping.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one ordinary engine call (create, start, inspect, list, remove).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

const NS_PER_S: i64 = 1_000_000_000;

#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// Where the engine is (`DOCKER_HOST` or the default socket), for messages.
    pub host: String,
}

/// One container of the project, as the engine reports it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub service: String,
    pub revision: u32,
    pub spec_hash: String,
    pub status: ContainerStateStatusEnum,
    /// None when the container has no health check.
    pub health: Option<HealthStatusEnum>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub restart_count: i64,
    pub image: String,
    /// The last health check's output (why it is unhealthy).
    pub health_output: Option<String>,
}

impl Instance {
    pub fn running(&self) -> bool {
        self.status == ContainerStateStatusEnum::RUNNING
    }

    /// `running`, `running (healthy)`, `exited (2)`, ...
    pub fn describe(&self) -> String {
        let mut s = self.status.to_string();
        if let Some(h) = self.health.filter(|_| self.running()) {
            s.push_str(&format!(" ({h})"));
        }
        if !self.running()
            && let Some(code) = self.exit_code
        {
            s.push_str(&format!(
                " (exit code {code}{})",
                if self.oom_killed { ", OOM killed" } else { "" }
            ));
        }
        s
    }
}

fn engine_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

impl Engine {
    /// Connect and ping within [`CONNECT_TIMEOUT`]; the error names `DOCKER_HOST`.
    pub async fn connect() -> Result<Engine> {
        let host = engine_host();
        let unreachable = |why: String| {
            Error::failure(format!(
                "cannot reach the Docker engine at {host} (DOCKER_HOST): {why}"
            ))
            .with_help("start Docker (`docker info` must work) or point DOCKER_HOST at a running engine; nothing was changed")
        };
        let docker = Docker::connect_with_defaults()
            .map_err(|e| unreachable(e.to_string()))?
            .with_timeout(CALL_TIMEOUT);
        let ready = async {
            let docker = docker.negotiate_version().await?;
            docker.ping().await?;
            Ok::<_, bollard::errors::Error>(docker)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, ready).await {
            Ok(Ok(docker)) => Ok(Engine { docker, host }),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!(
                "no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn fail(&self, what: String) -> impl FnOnce(bollard::errors::Error) -> Error {
        let host = self.host.clone();
        move |e| Error::docker(format!("Docker engine ({host}): {what}"), e)
    }

    /// Every container of the project (optionally one service), running or not.
    pub async fn instances(&self, project: &str, service: Option<&str>) -> Result<Vec<Instance>> {
        // The spec label is set only by the deployer (never inherited from an image).
        let mut labels = vec![format!("{LABEL_PROJECT}={project}"), LABEL_SPEC.to_string()];
        if let Some(s) = service {
            labels.push(format!("{LABEL_SERVICE}={s}"));
        }
        let filters = HashMap::from([("label".to_string(), labels)]);
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(self.fail("list containers".into()))?;
        let mut out = Vec::new();
        for c in list {
            let Some(name) = c.names.and_then(|n| n.first().cloned()) else {
                continue;
            };
            if let Some(i) = self.inspect(name.trim_start_matches('/')).await? {
                out.push(i);
            }
        }
        out.sort_by(|a, b| {
            (a.service.as_str(), a.revision, a.name.as_str()).cmp(&(
                b.service.as_str(),
                b.revision,
                b.name.as_str(),
            ))
        });
        Ok(out)
    }

    /// One container by name; None when it does not exist (or vanished meanwhile).
    pub async fn inspect(&self, name: &str) -> Result<Option<Instance>> {
        let c = match self.docker.inspect_container(name, None).await {
            Ok(c) => c,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Ok(None);
            }
            Err(e) => return Err(self.fail(format!("inspect container {name}"))(e)),
        };
        let labels = c
            .config
            .as_ref()
            .and_then(|k| k.labels.clone())
            .unwrap_or_default();
        let state = c.state.unwrap_or_default();
        let health = state
            .health
            .as_ref()
            .and_then(|h| h.status)
            .filter(|h| !matches!(h, HealthStatusEnum::EMPTY | HealthStatusEnum::NONE));
        let health_output = state
            .health
            .as_ref()
            .and_then(|h| h.log.as_ref())
            .and_then(|l| l.last())
            .and_then(|r| r.output.clone())
            .map(|o| o.trim().to_string());
        Ok(Some(Instance {
            name: name.to_string(),
            service: labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
            revision: labels
                .get(LABEL_REVISION)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            spec_hash: labels.get(LABEL_SPEC).cloned().unwrap_or_default(),
            status: state.status.unwrap_or(ContainerStateStatusEnum::EMPTY),
            health,
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
            restart_count: c.restart_count.unwrap_or(0),
            image: c.image.unwrap_or_default(),
            health_output,
        }))
    }

    /// The labels of a container with this name, if one exists (for the name-clash check).
    pub async fn labels_of(&self, name: &str) -> Result<Option<HashMap<String, String>>> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c.config.and_then(|k| k.labels).unwrap_or_default())),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.fail(format!("inspect container {name}"))(e)),
        }
    }

    /// Create and start one instance of a revision. `env` is the spec's environment with the
    /// secret values and the identity variables added (never stored by the deployer).
    ///
    /// Kept whole: one container create request, field by field as ECS's container definition
    /// maps onto it.
    pub async fn start(
        &self,
        project: &str,
        name: &str,
        revision: u32,
        spec: &ContainerSpec,
        env: Vec<String>,
    ) -> Result<()> {
        let labels = HashMap::from([
            (LABEL_PROJECT.to_string(), project.to_string()),
            (LABEL_SERVICE.to_string(), spec.service.clone()),
            (LABEL_REVISION.to_string(), revision.to_string()),
            (LABEL_SPEC.to_string(), spec.hash()),
        ]);
        let healthcheck = Some(match &spec.health_check {
            Some(h) => HealthConfig {
                test: Some(
                    std::iter::once("CMD".to_string())
                        .chain(h.command.iter().cloned())
                        .collect(),
                ),
                interval: Some(i64::from(h.interval) * NS_PER_S),
                timeout: Some(i64::from(h.timeout) * NS_PER_S),
                retries: Some(i64::from(h.retries)),
                start_period: Some(i64::from(h.start_period) * NS_PER_S),
                // Engines with API 1.44+ probe every second during the start period, so a
                // new container is known healthy soon after its first good check; older
                // engines ignore the field and probe at `interval`. Not part of the revision.
                start_interval: (h.start_period > 0).then_some(NS_PER_S),
            },
            // ECS ignores an image's HEALTHCHECK; so does the local target.
            None => HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..Default::default()
            },
        });
        let (network_mode, extra_hosts) = match spec.network {
            LocalNetwork::Host => ("host".to_string(), None),
            LocalNetwork::Bridge => (
                crate::names::Names::new(project).local_network(),
                Some(vec!["host.docker.internal:host-gateway".to_string()]),
            ),
        };
        let tmpfs = spec
            .user
            .as_ref()
            .map(|_| HashMap::from([("/tmp".to_string(), "rw,mode=1777,size=64m".to_string())]));
        let body = ContainerCreateBody {
            image: Some(spec.image_id.clone()),
            user: spec.user.clone(),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(env),
            labels: Some(labels),
            healthcheck,
            stop_timeout: Some(i64::from(spec.stop_timeout)),
            host_config: Some(HostConfig {
                network_mode: Some(network_mode),
                extra_hosts,
                // 1024 cpu units = one core, as on ECS.
                nano_cpus: Some(i64::from(spec.cpu) * NS_PER_S / 1024),
                memory: Some(i64::from(spec.memory) * 1024 * 1024),
                binds: Some(
                    spec.mounts
                        .iter()
                        .map(|m| format!("{}:{}", m.host.display(), m.container))
                        .collect(),
                ),
                // The deployer schedules the roll; the engine restarts only once it is done.
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                tmpfs,
                init: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(name).build()),
                body,
            )
            .await
            .map_err(self.fail(format!("create container {name}")))?;
        self.docker
            .start_container(name, None)
            .await
            .map_err(self.fail(format!("start container {name}")))
    }

    /// From now on the engine replaces the container when it exits (the service scheduler's
    /// job once the roll is done; no deployer process is needed in steady state).
    pub async fn keep_running(&self, name: &str) -> Result<()> {
        self.docker
            .update_container(
                name,
                ContainerUpdateBody {
                    restart_policy: Some(RestartPolicy {
                        name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                        maximum_retry_count: None,
                    }),
                    ..Default::default()
                },
            )
            .await
            .map_err(self.fail(format!("set the restart policy of {name}")))
    }

    /// SIGTERM, then SIGKILL after `timeout`; returns the exit code.
    pub async fn stop(&self, name: &str, timeout: Duration) -> Result<Option<i64>> {
        let t = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
        // The call blocks until the container is gone: give it the stop timeout on top.
        let docker = self.docker.clone().with_timeout(timeout + CALL_TIMEOUT);
        match docker
            .stop_container(
                name,
                Some(StopContainerOptionsBuilder::default().t(t).build()),
            )
            .await
        {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(self.fail(format!("stop container {name}"))(e)),
        }
        Ok(self.inspect(name).await?.and_then(|i| i.exit_code))
    }

    /// Remove a container (forced: a running one is killed).
    pub async fn remove(&self, name: &str) -> Result<()> {
        match self
            .docker
            .remove_container(
                name,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await
        {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.fail(format!("remove container {name}"))(e)),
        }
    }

    /// The last `lines` lines of a container's output (stdout and stderr).
    pub async fn tail(&self, name: &str, lines: usize) -> Vec<String> {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.docker.logs(name, Some(opts));
        let mut out = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            let text = chunk.to_string();
            out.extend(text.lines().map(str::to_string));
        }
        let skip = out.len().saturating_sub(lines);
        out.split_off(skip)
    }

    /// The output stream of a container (for `logs`).
    pub fn logs(
        &self,
        name: &str,
        follow: bool,
        since_unix: Option<i64>,
        tail: Option<u32>,
    ) -> impl futures::Stream<
        Item = std::result::Result<bollard::container::LogOutput, bollard::errors::Error>,
    > + use<> {
        let mut b = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail.map_or("all".to_string(), |t| t.to_string()));
        if let Some(s) = since_unix {
            b = b.since(i32::try_from(s).unwrap_or(i32::MAX));
        }
        // Following streams for as long as the user wants: no request timeout.
        let docker = if follow {
            self.docker
                .clone()
                .with_timeout(Duration::from_secs(u64::from(u32::MAX)))
        } else {
            self.docker.clone()
        };
        docker.logs(name, Some(b.build()))
    }

    /// Create the project's bridge network unless it exists; refuse one the deployer did not make.
    pub async fn ensure_network(&self, project: &str) -> Result<bool> {
        let name = crate::names::Names::new(project).local_network();
        if let Some(labels) = self.network_labels(&name).await? {
            if labels.get(LABEL_PROJECT).map(String::as_str) == Some(project) {
                return Ok(false);
            }
            return Err(Error::bad_input(format!(
                "a Docker network named {name} exists but was not created by the deployer for project {project}"
            ))
            .with_help("remove or rename that network, or use `local.network: host`"));
        }
        self.docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                labels: Some(HashMap::from([(
                    LABEL_PROJECT.to_string(),
                    project.to_string(),
                )])),
                ..Default::default()
            })
            .await
            .map_err(self.fail(format!("create network {name}")))?;
        Ok(true)
    }

    /// The labels of the network with exactly this name, if it exists.
    pub async fn network_labels(&self, name: &str) -> Result<Option<HashMap<String, String>>> {
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let list = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(self.fail("list networks".into()))?;
        Ok(list
            .into_iter()
            .find(|n| n.name.as_deref() == Some(name))
            .map(|n| n.labels.unwrap_or_default()))
    }

    /// Remove the project's network if it exists and is the deployer's.
    pub async fn remove_network(&self, project: &str) -> Result<bool> {
        let name = crate::names::Names::new(project).local_network();
        match self.network_labels(&name).await? {
            Some(l) if l.get(LABEL_PROJECT).map(String::as_str) == Some(project) => {
                self.docker
                    .remove_network(&name)
                    .await
                    .map_err(self.fail(format!("remove network {name}")))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The image id of a local reference (`repo:tag` or an id), if the engine has it.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(i.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.fail(format!("inspect image {reference}"))(e)),
        }
    }

    /// Ids of the images built for the project (labelled at build time).
    pub async fn project_images(&self, project: &str) -> Result<Vec<String>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_IMAGE_OF}={project}")],
        )]);
        let list = self
            .docker
            .list_images(Some(
                ListImagesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(self.fail("list images".into()))?;
        Ok(list.into_iter().map(|i| i.id).collect())
    }

    /// Remove an image (all its tags). An image still used by a container is kept.
    pub async fn remove_image(&self, id: &str) -> Result<bool> {
        match self
            .docker
            .remove_image(
                id,
                Some(RemoveImageOptionsBuilder::default().force(true).build()),
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(false),
            Err(e) => Err(self.fail(format!("remove image {id}"))(e)),
        }
    }
}
