//! Every name the deployer derives for a project, pinned: a live name that changes orphans
//! what existing deployments made (stacks, repository, parameters, log groups, containers).
//! A change to this snapshot is a migration, not a refactor.

use deployer::config::{StackPart, parse};
use std::path::Path;

#[test]
fn every_derived_name_is_pinned() {
    let c = parse(
        "project: demo\nservices:\n  flow:\n    image: i\n    secrets: [PRICE_API_KEY]\n  web:\n    image: i\n",
        Path::new("deployer.yaml"),
        &[],
    )
    .expect("fixture config");
    let mut lines = vec![
        format!("repository: {}", c.repository_name()),
        format!("stack registry: {}", c.stack_name(StackPart::Registry)),
        format!("stack network: {}", c.stack_name(StackPart::Network)),
        format!("stack cluster: {}", c.stack_name(StackPart::Cluster)),
        format!("stack data: {}", c.stack_name(StackPart::Data)),
        format!(
            "local network: {}",
            deployer::local::spec::network_name("demo")
        ),
    ];
    for s in ["flow", "web"] {
        lines.extend([
            format!("{s}: stack {}", c.stack_name(StackPart::Service(s))),
            format!(
                "{s}: family {}",
                deployer::rollout::taskdef::family("demo", s)
            ),
            format!("{s}: log group {}", deployer::cloudwatch::group("demo", s)),
            format!("{s}: secret {}", c.secret_parameter(s, "PRICE_API_KEY")),
            format!(
                "{s}: container {}",
                deployer::local::spec::container_name("demo", s, 3, 1)
            ),
        ]);
    }
    insta::assert_snapshot!(lines.join("\n"));
}
