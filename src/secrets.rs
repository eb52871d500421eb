//! Secrets: values read from the deployer's environment at deploy time, stored as SSM
//! SecureString parameters `/<project>/<service>/<NAME>`, referenced by ARN from the task
//! definition. Values live only in `SecretString` and are never printed or serialised.

use crate::aws::Context;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::stacks::{owned_by, project_tags};
use crate::ui::Ui;
use aws_sdk_ssm::types::{ParameterType, ResourceTypeForTagging, Tag};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use std::collections::BTreeMap;

/// One secret to put in place. `value` is None when the environment does not set it and
/// the parameter already exists: the stored value is kept.
pub struct Pending {
    pub service: String,
    pub name: String,
    pub parameter: String,
    pub value: Option<SecretString>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretOutcome {
    pub parameter: String,
    pub action: SecretAction,
}

/// What happens to one secret's SSM parameter. Serialised (and displayed) lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretAction {
    Created,
    Updated,
    Unchanged,
    /// Not in the environment: the stored value is kept.
    Kept,
}

impl SecretAction {
    /// A write is needed (and new tasks will read the value).
    pub fn writes(self) -> bool {
        matches!(self, SecretAction::Created | SecretAction::Updated)
    }
}

impl std::fmt::Display for SecretAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SecretAction::Created => "created",
            SecretAction::Updated => "updated",
            SecretAction::Unchanged => "unchanged",
            SecretAction::Kept => "kept",
        })
    }
}

/// Read every configured secret from `env` and check the ones it lacks already exist.
/// Runs before anything is changed, so a missing value aborts with nothing half-applied.
pub async fn preflight(
    ssm: &aws_sdk_ssm::Client,
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Pending>> {
    let mut pending = Vec::new();
    let mut missing = Vec::new();
    for (service, s) in &config.services {
        for name in &s.secrets {
            let parameter = config.names().secret_parameter(service, name);
            let value = env(name).filter(|v| !v.is_empty()).map(SecretString::from);
            if value.is_none() && !exists(ssm, &parameter).await? {
                missing.push(format!(
                    "{name} (services.{service}.secrets -> {parameter})"
                ));
            }
            pending.push(Pending {
                service: service.clone(),
                name: name.clone(),
                parameter,
                value,
            });
        }
    }
    if !missing.is_empty() {
        return Err(Error::bad_input(format!(
            "secret values missing from the environment, and not stored yet:\n  - {}",
            missing.join("\n  - ")
        ))
        .with_help("export each variable before running the deployer (in GitHub Actions: env: NAME: ${{ secrets.NAME }})"));
    }
    Ok(pending)
}

async fn exists(ssm: &aws_sdk_ssm::Client, parameter: &str) -> Result<bool> {
    match ssm.get_parameter().name(parameter).send().await {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error().is_some_and(
                aws_sdk_ssm::operation::get_parameter::GetParameterError::is_parameter_not_found,
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(crate::aws::failure(
            &format!("read SSM parameter {parameter}"),
            e,
        )),
    }
}

/// What `apply` would do with one secret, without writing: kept (not in the environment),
/// unchanged, updated or created. Reading back with decryption is what makes a no-op deploy
/// free of writes.
pub async fn compare(ssm: &aws_sdk_ssm::Client, p: &Pending) -> Result<SecretAction> {
    let Some(value) = &p.value else {
        return Ok(SecretAction::Kept);
    };
    match ssm
        .get_parameter()
        .name(&p.parameter)
        .with_decryption(true)
        .send()
        .await
    {
        Ok(o) => Ok(match o.parameter().and_then(|p| p.value()) {
            Some(current) if current == value.expose_secret() => SecretAction::Unchanged,
            _ => SecretAction::Updated,
        }),
        Err(e)
            if e.as_service_error().is_some_and(
                aws_sdk_ssm::operation::get_parameter::GetParameterError::is_parameter_not_found,
            ) =>
        {
            Ok(SecretAction::Created)
        }
        Err(e) => Err(crate::aws::failure(
            &format!("read SSM parameter {}", p.parameter),
            e,
        )),
    }
}

/// Write the secrets whose value changed. Reading back with decryption is what makes a
/// no-op deploy free of writes.
pub async fn apply(
    ssm: &aws_sdk_ssm::Client,
    project: &str,
    pending: &[Pending],
    ui: &Ui,
) -> Result<Vec<SecretOutcome>> {
    let mut outcomes = Vec::new();
    for p in pending {
        let action = compare(ssm, p).await?;
        if action == SecretAction::Kept {
            ui.detail(format!(
                "{}: not in the environment; keeping the stored value",
                p.parameter
            ));
        }
        outcomes.push(SecretOutcome {
            parameter: p.parameter.clone(),
            action,
        });
        let Some(value) = p.value.as_ref().filter(|_| action.writes()) else {
            continue;
        };
        ssm.put_parameter()
            .name(&p.parameter)
            .value(value.expose_secret())
            .r#type(ParameterType::SecureString)
            .overwrite(true)
            .description(format!(
                "deployer secret {} of service {}",
                p.name, p.service
            ))
            .send()
            .await
            .context(format!("write SSM parameter {}", p.parameter))?;
        let tags: Vec<Tag> = project_tags(project)
            .into_iter()
            .filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok())
            .collect();
        ssm.add_tags_to_resource()
            .resource_type(ResourceTypeForTagging::Parameter)
            .resource_id(&p.parameter)
            .set_tags(Some(tags))
            .send()
            .await
            .context(format!("tag SSM parameter {}", p.parameter))?;
        ui.step(format!("secret {}: {action}", p.parameter));
    }
    Ok(outcomes)
}

/// Parameters under `/<project>/` that carry the deployer's tags (what `destroy` may delete).
pub async fn owned_parameters(ssm: &aws_sdk_ssm::Client, project: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut next: Option<String> = None;
    let path = crate::names::Names::new(project).secrets_path();
    loop {
        let out = ssm
            .get_parameters_by_path()
            .path(&path)
            .recursive(true)
            .set_next_token(next.clone())
            .send()
            .await
            .context(format!("list SSM parameters {path}"))?;
        names.extend(
            out.parameters()
                .iter()
                .filter_map(|p| p.name().map(str::to_string)),
        );
        next = out.next_token().map(str::to_string);
        if next.is_none() {
            break;
        }
    }
    let mut owned = Vec::new();
    for name in names {
        let tags = ssm
            .list_tags_for_resource()
            .resource_type(ResourceTypeForTagging::Parameter)
            .resource_id(&name)
            .send()
            .await
            .context(format!("read tags of {name}"))?;
        let tags: BTreeMap<String, String> = tags
            .tag_list()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect();
        if owned_by(&tags, project) {
            owned.push(name);
        }
    }
    Ok(owned)
}

pub async fn delete(ssm: &aws_sdk_ssm::Client, names: &[String]) -> Result<()> {
    for chunk in names.chunks(10) {
        ssm.delete_parameters()
            .set_names(Some(chunk.to_vec()))
            .send()
            .await
            .context("delete SSM parameters")?;
    }
    Ok(())
}
