//! Task definitions: render from settings, normalise, compare with the live revision,
//! register only when something changed. The same struct is the `task-definition.json` artifact.

use crate::aws::Context;
use crate::error::{Error, Result};
use aws_sdk_ecs::types::{
    Compatibility, ContainerDefinition, CpuArchitecture, KeyValuePair, LogConfiguration, LogDriver,
    NetworkMode, OsFamily, RuntimePlatform, Secret, Tag,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The fields the deployer owns, in ECS's JSON shape. Read-only fields (revision, status,
/// registeredAt, ...) are not part of it, so comparing two of these is a normalised diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDef {
    pub family: String,
    pub cpu: String,
    pub memory: String,
    pub network_mode: String,
    pub requires_compatibilities: Vec<String>,
    pub runtime_platform: Platform,
    pub execution_role_arn: String,
    pub task_role_arn: String,
    pub container_definitions: Vec<Container>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub cpu_architecture: String,
    pub operating_system_family: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    pub essential: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Sorted by name (ECS returns them in any order).
    pub environment: Vec<NameValue>,
    /// SSM parameter ARNs only: values never appear in a task definition.
    pub secrets: Vec<SecretRef>,
    pub stop_timeout: u32,
    pub log_configuration: Logs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Health>,
}

/// ECS `healthCheck`, in its JSON shape (`command` starts with "CMD").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub command: Vec<String>,
    pub interval: u32,
    pub timeout: u32,
    pub retries: u32,
    pub start_period: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    pub name: String,
    pub value_from: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Logs {
    pub log_driver: String,
    pub options: BTreeMap<String, String>,
}

/// Everything a task definition is rendered from.
pub struct RenderInput<'a> {
    pub project: &'a str,
    pub service_name: &'a str,
    pub service: &'a crate::config::Service,
    pub image: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    /// ARN partition: `aws`, `aws-cn` or `aws-us-gov`.
    pub partition: &'a str,
    pub execution_role_arn: &'a str,
    pub task_role_arn: &'a str,
    /// The data lake (`s3://bucket/prefix`): the service's SINK_URL unless it sets its own.
    pub sink_url: Option<&'a str>,
}

pub fn render(i: &RenderInput<'_>) -> TaskDef {
    let s = i.service;
    let mut environment: Vec<NameValue> = s
        .environment
        .iter()
        .map(|(k, v)| NameValue {
            name: k.clone(),
            value: v.clone(),
        })
        .collect();
    if let Some(sink) = i.sink_url
        && !s.environment.contains_key("SINK_URL")
        && !s.secrets.iter().any(|n| n == "SINK_URL")
    {
        environment.push(NameValue {
            name: "SINK_URL".into(),
            value: sink.into(),
        });
    }
    environment.sort_by(|a, b| a.name.cmp(&b.name));
    let mut secrets: Vec<SecretRef> = s
        .secrets
        .iter()
        .map(|name| SecretRef {
            name: name.clone(),
            value_from: format!(
                "arn:{}:ssm:{}:{}:parameter/{}/{}/{name}",
                i.partition, i.region, i.account, i.project, i.service_name
            ),
        })
        .collect();
    secrets.sort_by(|a, b| a.name.cmp(&b.name));
    TaskDef {
        family: crate::names::Names::new(i.project).family(i.service_name),
        cpu: s.cpu.to_string(),
        memory: s.memory.to_string(),
        network_mode: "awsvpc".into(),
        requires_compatibilities: vec!["FARGATE".into()],
        runtime_platform: Platform {
            cpu_architecture: s.architecture.ecs_name().into(),
            operating_system_family: "LINUX".into(),
        },
        execution_role_arn: i.execution_role_arn.into(),
        task_role_arn: i.task_role_arn.into(),
        container_definitions: vec![Container {
            name: i.service_name.into(),
            image: i.image.into(),
            essential: true,
            command: s.command.clone(),
            environment,
            secrets,
            stop_timeout: s.stop_timeout,
            health_check: s.health_check.as_ref().map(|h| Health {
                command: std::iter::once("CMD".to_string())
                    .chain(h.command.iter().cloned())
                    .collect(),
                interval: h.interval,
                timeout: h.timeout,
                retries: h.retries,
                start_period: h.start_period,
            }),
            log_configuration: Logs {
                log_driver: "awslogs".into(),
                options: BTreeMap::from([
                    (
                        "awslogs-group".into(),
                        crate::names::Names::new(i.project).log_group(i.service_name),
                    ),
                    ("awslogs-region".into(), i.region.into()),
                    ("awslogs-stream-prefix".into(), i.service_name.into()),
                ]),
            },
        }],
    }
}

/// A live revision: its ARN and the owned fields, normalised.
#[derive(Debug, Clone)]
pub struct LiveTaskDef {
    pub arn: String,
    pub revision: i32,
    pub def: TaskDef,
}

/// The latest ACTIVE revision of a family, or None.
pub async fn latest(ecs: &aws_sdk_ecs::Client, family: &str) -> Result<Option<LiveTaskDef>> {
    let out = match ecs
        .describe_task_definition()
        .task_definition(family)
        .send()
        .await
    {
        Ok(o) => o,
        Err(e) => {
            let msg = crate::aws::message(&e).unwrap_or_default();
            // ECS answers a missing family with a ClientException "Unable to describe task
            // definition"; other ClientExceptions (a malformed name, a denied call) are errors.
            if e.as_service_error()
                .is_some_and(aws_sdk_ecs::operation::describe_task_definition::DescribeTaskDefinitionError::is_client_exception)
                && (msg.contains("Unable to describe")
                    || msg.contains("not found")
                    || msg.contains("does not exist"))
            {
                return Ok(None);
            }
            return Err(crate::aws::failure(
                &format!("describe task definition {family}"),
                e,
            ));
        }
    };
    let Some(td) = out.task_definition() else {
        return Ok(None);
    };
    if td.status().is_some_and(|s| s.as_str() != "ACTIVE") {
        return Ok(None);
    }
    Ok(Some(LiveTaskDef {
        arn: td.task_definition_arn().unwrap_or_default().to_string(),
        revision: td.revision(),
        def: from_live(td),
    }))
}

/// Kept whole: one field of ECS's answer per line, in the order of the rendered definition.
fn from_live(td: &aws_sdk_ecs::types::TaskDefinition) -> TaskDef {
    let containers = td
        .container_definitions()
        .iter()
        .map(|c| {
            let mut environment: Vec<NameValue> = c
                .environment()
                .iter()
                .map(|kv| NameValue {
                    name: kv.name().unwrap_or_default().into(),
                    value: kv.value().unwrap_or_default().into(),
                })
                .collect();
            environment.sort_by(|a, b| a.name.cmp(&b.name));
            let mut secrets: Vec<SecretRef> = c
                .secrets()
                .iter()
                .map(|s| SecretRef {
                    name: s.name().into(),
                    value_from: s.value_from().into(),
                })
                .collect();
            secrets.sort_by(|a, b| a.name.cmp(&b.name));
            let log = c.log_configuration();
            Container {
                name: c.name().unwrap_or_default().into(),
                image: c.image().unwrap_or_default().into(),
                essential: c.essential().unwrap_or(true),
                command: c.command().to_vec(),
                environment,
                secrets,
                stop_timeout: u32::try_from(c.stop_timeout().unwrap_or(30)).unwrap_or(30),
                health_check: c.health_check().map(|h| Health {
                    command: h.command().to_vec(),
                    // ECS fills these defaults when they are not sent.
                    interval: u32::try_from(h.interval().unwrap_or(30)).unwrap_or(30),
                    timeout: u32::try_from(h.timeout().unwrap_or(5)).unwrap_or(5),
                    retries: u32::try_from(h.retries().unwrap_or(3)).unwrap_or(3),
                    start_period: u32::try_from(h.start_period().unwrap_or(0)).unwrap_or(0),
                }),
                log_configuration: Logs {
                    log_driver: log
                        .map(|l| l.log_driver().as_str().to_string())
                        .unwrap_or_default(),
                    options: log
                        .and_then(|l| l.options())
                        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default(),
                },
            }
        })
        .collect();
    TaskDef {
        family: td.family().unwrap_or_default().into(),
        cpu: td.cpu().unwrap_or_default().into(),
        memory: td.memory().unwrap_or_default().into(),
        network_mode: td
            .network_mode()
            .map(|m| m.as_str().to_string())
            .unwrap_or_default(),
        requires_compatibilities: td
            .requires_compatibilities()
            .iter()
            .map(|c| c.as_str().to_string())
            .collect(),
        runtime_platform: Platform {
            cpu_architecture: td
                .runtime_platform()
                .and_then(|p| p.cpu_architecture())
                .map(|a| a.as_str().to_string())
                .unwrap_or_else(|| "X86_64".into()),
            operating_system_family: td
                .runtime_platform()
                .and_then(|p| p.operating_system_family())
                .map(|a| a.as_str().to_string())
                .unwrap_or_else(|| "LINUX".into()),
        },
        execution_role_arn: td.execution_role_arn().unwrap_or_default().into(),
        task_role_arn: td.task_role_arn().unwrap_or_default().into(),
        container_definitions: containers,
    }
}

/// One container of the task definition as the ECS API takes it.
fn container_definition(c: &Container) -> Result<ContainerDefinition> {
    let log = LogConfiguration::builder()
        .log_driver(LogDriver::from(c.log_configuration.log_driver.as_str()))
        .set_options(Some(
            c.log_configuration.options.clone().into_iter().collect(),
        ))
        .build()
        .map_err(|e| Error::failure(format!("task definition log configuration: {e}")))?;
    let secrets = c
        .secrets
        .iter()
        .map(|s| {
            Secret::builder()
                .name(&s.name)
                .value_from(&s.value_from)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::failure(format!("task definition secrets: {e}")))?;
    let health = c
        .health_check
        .as_ref()
        .map(|h| {
            aws_sdk_ecs::types::HealthCheck::builder()
                .set_command(Some(h.command.clone()))
                .interval(h.interval as i32)
                .timeout(h.timeout as i32)
                .retries(h.retries as i32)
                .start_period(h.start_period as i32)
                .build()
        })
        .transpose()
        .map_err(|e| Error::failure(format!("task definition health check: {e}")))?;
    Ok(ContainerDefinition::builder()
        .name(&c.name)
        .image(&c.image)
        .essential(c.essential)
        .set_command((!c.command.is_empty()).then(|| c.command.clone()))
        .set_environment(Some(
            c.environment
                .iter()
                .map(|e| {
                    KeyValuePair::builder()
                        .name(&e.name)
                        .value(&e.value)
                        .build()
                })
                .collect(),
        ))
        .set_secrets(Some(secrets))
        .stop_timeout(c.stop_timeout as i32)
        .set_health_check(health)
        .log_configuration(log)
        .build())
}

/// Register a new revision. Returns (ARN, revision).
pub async fn register(
    ecs: &aws_sdk_ecs::Client,
    def: &TaskDef,
    tags: &BTreeMap<String, String>,
) -> Result<(String, i32)> {
    let containers = def
        .container_definitions
        .iter()
        .map(container_definition)
        .collect::<Result<Vec<_>>>()?;
    let out = ecs
        .register_task_definition()
        .family(&def.family)
        .cpu(&def.cpu)
        .memory(&def.memory)
        .network_mode(NetworkMode::from(def.network_mode.as_str()))
        .requires_compatibilities(Compatibility::Fargate)
        .runtime_platform(
            RuntimePlatform::builder()
                .cpu_architecture(CpuArchitecture::from(
                    def.runtime_platform.cpu_architecture.as_str(),
                ))
                .operating_system_family(OsFamily::from(
                    def.runtime_platform.operating_system_family.as_str(),
                ))
                .build(),
        )
        .execution_role_arn(&def.execution_role_arn)
        .task_role_arn(&def.task_role_arn)
        .set_container_definitions(Some(containers))
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect(),
        ))
        .send()
        .await
        .context(format!("register task definition {}", def.family))?;
    let td = out.task_definition().ok_or_else(|| {
        Error::failure(format!(
            "register task definition {}: empty response",
            def.family
        ))
    })?;
    Ok((
        td.task_definition_arn().unwrap_or_default().to_string(),
        td.revision(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> crate::config::Service {
        let c = crate::config::parse(
            "project: p\nservices:\n  s:\n    image: i\n    environment: {B: '2', A: '1'}\n    secrets: [Z_KEY, A_KEY]\n",
            std::path::Path::new("t.yaml"),
            &[],
        )
        .unwrap();
        c.services["s"].clone()
    }

    #[test]
    fn render_is_sorted_and_holds_no_secret_values() {
        let svc = service();
        let td = render(&RenderInput {
            project: "p",
            service_name: "s",
            service: &svc,
            image: "repo@sha256:1",
            region: "us-east-1",
            account: "123",
            partition: "aws",
            execution_role_arn: "arn:exec",
            task_role_arn: "arn:task",
            sink_url: None,
        });
        let c = &td.container_definitions[0];
        assert_eq!(
            c.environment
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>(),
            ["A", "B"]
        );
        assert_eq!(c.secrets[0].name, "A_KEY");
        assert_eq!(
            c.secrets[0].value_from,
            "arn:aws:ssm:us-east-1:123:parameter/p/s/A_KEY"
        );
        assert_eq!(td.family, "p-s");
        assert_eq!((td.cpu.as_str(), td.memory.as_str()), ("256", "512"));
    }
}
