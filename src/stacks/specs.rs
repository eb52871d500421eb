//! The stack specs: what each CloudFormation stack of a project should be, built from the
//! config and the names of src/names.rs, beside the templates whose parameters they fill
//! (`specs_pass_every_template_parameter` keeps the two in step).

use super::{StackSpec, project_tags, templates};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::names::StackPart;
use std::collections::BTreeMap;

fn params(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// The registry stack: the ECR repository.
pub fn registry_spec(c: &Config) -> StackSpec {
    StackSpec {
        name: c.names().stack(StackPart::Registry),
        template: templates::REGISTRY,
        parameters: params(&[
            ("Project", c.project.clone()),
            ("RepositoryName", c.names().repository()),
            ("KeepImages", c.registry.keep_images.to_string()),
        ]),
        tags: project_tags(&c.project),
    }
}

/// None when the config uses an existing VPC.
pub fn network_spec(c: &Config) -> Option<StackSpec> {
    if c.network.existing.is_some() {
        return None;
    }
    let subnet = |i: usize| c.network.subnet_cidrs.get(i).cloned().unwrap_or_default();
    Some(StackSpec {
        name: c.names().stack(StackPart::Network),
        template: templates::NETWORK,
        parameters: params(&[
            ("Project", c.project.clone()),
            ("VpcCidr", c.network.vpc_cidr.clone()),
            ("SubnetACidr", subnet(0)),
            ("SubnetBCidr", subnet(1)),
        ]),
        tags: project_tags(&c.project),
    })
}

/// `extra_pull`: ARNs of other ECR repositories prebuilt images come from
/// (`preflight::extra_pull_repositories`).
pub fn cluster_spec(
    c: &Config,
    extra_pull: &[String],
    lake: Option<&crate::lake::Location>,
) -> StackSpec {
    let (bucket, prefix) = lake
        .map(|l| (l.bucket.clone(), l.prefix.clone()))
        .unwrap_or_default();
    StackSpec {
        name: c.names().stack(StackPart::Cluster),
        template: templates::CLUSTER,
        parameters: params(&[
            ("Project", c.project.clone()),
            ("RepositoryName", c.names().repository()),
            (
                "ContainerInsights",
                if c.cluster.container_insights {
                    "enabled"
                } else {
                    "disabled"
                }
                .to_string(),
            ),
            ("DataLakeBucket", bucket),
            ("DataLakePrefix", prefix),
            ("ExtraPullRepositories", extra_pull.join(",")),
        ]),
        tags: project_tags(&c.project),
    }
}

/// Subnets and security groups services run in: the network stack's outputs or the existing VPC's.
#[derive(Debug, Clone, Default)]
pub struct NetworkOut {
    pub subnets: String,
    pub security_groups: String,
}

pub fn network_out(c: &Config, outputs: Option<&BTreeMap<String, String>>) -> Result<NetworkOut> {
    if let Some(e) = &c.network.existing {
        return Ok(NetworkOut {
            subnets: e.subnet_ids.join(","),
            security_groups: e.security_group_ids.join(","),
        });
    }
    let o = outputs.ok_or_else(|| Error::failure("network stack has no outputs"))?;
    let get = |k: &str| {
        o.get(k).cloned().ok_or_else(|| {
            Error::failure(format!(
                "{} has no output {k}",
                c.names().stack(StackPart::Network)
            ))
        })
    };
    Ok(NetworkOut {
        subnets: get("SubnetIds")?,
        security_groups: get("SecurityGroupId")?,
    })
}

/// A service's stack: the ECS service on a registered task definition.
pub fn service_spec(
    c: &Config,
    name: &str,
    task_definition_arn: &str,
    net: &NetworkOut,
) -> StackSpec {
    let s = &c.services[name];
    StackSpec {
        name: c.names().stack(StackPart::Service(name)),
        template: templates::SERVICE,
        parameters: params(&[
            ("Project", c.project.clone()),
            ("ServiceName", name.to_string()),
            ("TaskDefinitionArn", task_definition_arn.to_string()),
            ("DesiredCount", s.desired_count.to_string()),
            ("Subnets", net.subnets.clone()),
            ("SecurityGroups", net.security_groups.clone()),
            (
                "AssignPublicIp",
                if c.network.assign_public_ip {
                    "ENABLED"
                } else {
                    "DISABLED"
                }
                .to_string(),
            ),
            ("CapacityProvider", s.capacity.provider().to_string()),
            (
                "MinHealthyPercent",
                s.deployment.min_healthy_percent.to_string(),
            ),
            ("MaxPercent", s.deployment.max_percent.to_string()),
            ("CircuitBreaker", s.deployment.circuit_breaker.to_string()),
            ("LogRetentionDays", s.log_retention_days.to_string()),
        ]),
        tags: project_tags(&c.project),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    /// A one-service fixture config (`extra` appended), shared with src/deploy.rs's tests.
    pub(crate) fn config(extra: &str) -> Config {
        crate::config::parse(
            &format!("project: demo\nservices:\n  web:\n    image: repo@sha256:1\n{extra}"),
            Path::new("t.yaml"),
            &[],
        )
        .unwrap()
    }

    #[test]
    fn specs_pass_every_template_parameter() {
        let c = config("");
        let net = NetworkOut {
            subnets: "subnet-1,subnet-2".into(),
            security_groups: "sg-1".into(),
        };
        for spec in [
            registry_spec(&c),
            network_spec(&c).unwrap(),
            cluster_spec(&c, &[], None),
            service_spec(&c, "web", "arn:td", &net),
        ] {
            let mut declared = templates::parameters(spec.template);
            declared.sort();
            let passed: Vec<String> = spec.parameters.keys().cloned().collect();
            assert_eq!(declared, passed, "{}", spec.name);
            assert!(super::super::owned_by(&spec.tags, "demo"));
        }
    }

    #[test]
    fn existing_network_skips_the_network_stack() {
        let c = crate::config::parse(
            "project: demo\nnetwork:\n  existing:\n    vpc_id: vpc-1\n    subnet_ids: [subnet-a]\n    security_group_ids: [sg-a]\nservices:\n  web:\n    image: i\n",
            Path::new("t.yaml"),
            &[],
        )
        .unwrap();
        assert!(network_spec(&c).is_none());
        let n = network_out(&c, None).unwrap();
        assert_eq!(
            (n.subnets.as_str(), n.security_groups.as_str()),
            ("subnet-a", "sg-a")
        );
    }
}
