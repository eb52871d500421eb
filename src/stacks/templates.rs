//! The CloudFormation templates, embedded at build time so the binary is self-contained.
//! They are sent as text: `!Ref`/`!Sub` tags do not round-trip through serde.

use serde_yaml_ng::Value;

pub const NETWORK: &str = include_str!("../../templates/network.yaml");
pub const CLUSTER: &str = include_str!("../../templates/cluster.yaml");
pub const REGISTRY: &str = include_str!("../../templates/registry.yaml");
pub const SERVICE: &str = include_str!("../../templates/service.yaml");
pub const DATA: &str = include_str!("../../templates/data.yaml");

/// (logical id, resource type) of every resource in a template, for plans of new stacks
/// (a CREATE change set would leave a REVIEW_IN_PROGRESS stack behind).
pub fn resources(template: &str) -> Vec<(String, String)> {
    let Ok(doc) = serde_yaml_ng::from_str::<Value>(template) else {
        return Vec::new();
    };
    let Some(map) = doc.get("Resources").and_then(Value::as_mapping) else {
        return Vec::new();
    };
    map.iter()
        .filter_map(|(k, v)| {
            let ty = v.get("Type").and_then(Value::as_str)?;
            Some((k.as_str()?.to_string(), ty.to_string()))
        })
        .collect()
}

/// Parameter names a template declares.
pub fn parameters(template: &str) -> Vec<String> {
    serde_yaml_ng::from_str::<Value>(template)
        .ok()
        .and_then(|d| d.get("Parameters").and_then(Value::as_mapping).cloned())
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses_and_has_resources() {
        for t in [NETWORK, CLUSTER, REGISTRY, SERVICE] {
            assert!(!resources(t).is_empty());
            assert!(parameters(t).contains(&"Project".to_string()));
        }
        assert!(resources(NETWORK).contains(&("Vpc".into(), "AWS::EC2::VPC".into())));
    }

    #[test]
    fn iam_names_arns_instead_of_wildcards() {
        for t in [NETWORK, CLUSTER, REGISTRY, SERVICE] {
            let lines: Vec<&str> = t.lines().map(str::trim).collect();
            for (i, l) in lines.iter().enumerate() {
                assert!(
                    !l.starts_with("Action: \"*") && !l.contains(":*\"") && !l.ends_with(":*"),
                    "{l}"
                );
                if *l == "Resource: \"*\"" {
                    // Only GetAuthorizationToken, which has no resource-level permissions.
                    assert_eq!(lines[i - 1], "Action: ecr:GetAuthorizationToken");
                }
            }
        }
    }
}
