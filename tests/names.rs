//! Every name the deployer derives for a project, pinned: a live name that changes orphans
//! what existing deployments made (stacks, repository, parameters, log groups, containers).
//! A change to this snapshot is a migration, not a refactor.

use deployer::config::parse;
use deployer::names::{StackPart, insights_log_group, lock_bucket};
use std::path::Path;

fn fixture(yaml: &str) -> deployer::config::Config {
    parse(yaml, Path::new("deployer.yaml"), &[]).expect("fixture config")
}

#[test]
fn every_derived_name_is_pinned() {
    let c = fixture(
        "project: demo\nservices:\n  flow:\n    image: i\n    secrets: [PRICE_API_KEY]\n  web:\n    image: i\n",
    );
    let n = c.names();
    let mut lines = vec![
        format!("repository: {}", n.repository()),
        format!("stack registry: {}", n.stack(StackPart::Registry)),
        format!("stack network: {}", n.stack(StackPart::Network)),
        format!("stack cluster: {}", n.stack(StackPart::Cluster)),
        format!("stack data: {}", n.stack(StackPart::Data)),
        format!("local network: {}", n.local_network()),
    ];
    for s in ["flow", "web"] {
        lines.extend([
            format!("{s}: stack {}", n.stack(StackPart::Service(s))),
            format!("{s}: family {}", n.family(s)),
            format!("{s}: log group {}", n.log_group(s)),
            format!("{s}: secret {}", n.secret_parameter(s, "PRICE_API_KEY")),
            format!("{s}: container {}", n.local_container(s, 3, 1)),
        ]);
    }
    // Pinned when the naming layer was made (src/names.rs); the lines above predate it.
    lines.extend([
        format!("cluster: {}", n.cluster()),
        format!("service stack prefix: {}", n.service_stack_prefix()),
        format!("secrets path: {}", n.secrets_path()),
        format!("flow: secrets path {}", n.service_secrets_path("flow")),
        format!(
            "deploy lock: s3://{}/{}",
            lock_bucket("123456789012", "eu-west-1"),
            n.lock_key()
        ),
        format!("insights log group: {}", insights_log_group(&n.cluster())),
    ]);
    // Pinned before the data lake's names and the local labels moved into src/names.rs (the
    // lines were first produced by config's bucket_name, lake::database_name and the
    // constants of src/local/spec.rs).
    let lake =
        fixture("project: demo\ndata_lake:\n  create: true\nservices:\n  flow:\n    image: i\n");
    let at = deployer::lake::location(&lake, "123456789012", "eu-west-1").expect("a lake");
    use deployer::names::{
        LABEL_IMAGE_OF, LABEL_PROJECT, LABEL_REVISION, LABEL_SERVICE, LABEL_SPEC,
    };
    lines.extend([
        format!("data lake bucket: {}", at.bucket),
        format!("glue database: {}", n.glue_database()),
        format!("glue database of my-app: {}", deployer::names::Names::new("my-app").glue_database()),
        format!(
            "local labels: {LABEL_PROJECT} {LABEL_SERVICE} {LABEL_REVISION} {LABEL_SPEC} {LABEL_IMAGE_OF}"
        ),
    ]);
    insta::assert_snapshot!(lines.join("\n"));
}

/// The cluster the ECS calls use: the cluster stack's `ClusterName` output when it has one
/// (a stack made by an older template may name it otherwise), else the derived name.
#[test]
fn the_live_cluster_is_the_stacks_output_else_the_derived_name() {
    let c = fixture("project: demo\nservices:\n  flow:\n    image: i\n");
    let n = c.names();
    let mut outputs = std::collections::BTreeMap::new();
    assert_eq!(n.live_cluster(None), "demo");
    assert_eq!(n.live_cluster(Some(&outputs)), "demo");
    outputs.insert("ClusterName".to_string(), "demo-renamed".to_string());
    assert_eq!(n.live_cluster(Some(&outputs)), "demo-renamed");
}
