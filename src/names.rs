//! Every name the deployer derives from the project and service names, in one place: the
//! stacks, the service-stack prefix, the repository, the cluster, task-definition families,
//! log groups, SSM parameter paths, the deploy lock's object, the data lake's default bucket
//! and Glue database, and the local target's network, containers and labels. These are live names: one that changes orphans what earlier deployments
//! made, so tests/names.rs pins them all in a snapshot.
//!
//! The templates derive their export names and log group from the same `Project` and
//! `ServiceName` parameters (`${Project}-Cluster`, `/ecs/${Project}/${ServiceName}`); the
//! log group here must match theirs.

use std::collections::BTreeMap;

/// The names of one project.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    project: &'a str,
}

/// The stacks of a project.
#[derive(Debug, Clone, Copy)]
pub enum StackPart<'a> {
    Registry,
    Network,
    Cluster,
    /// The data lake (bucket and Glue table), with `data_lake.create: true`.
    Data,
    Service(&'a str),
}

impl<'a> Names<'a> {
    pub fn new(project: &'a str) -> Self {
        Self { project }
    }

    pub fn stack(&self, part: StackPart<'_>) -> String {
        let p = self.project;
        match part {
            StackPart::Registry => format!("{p}-registry"),
            StackPart::Network => format!("{p}-network"),
            StackPart::Cluster => format!("{p}-cluster"),
            StackPart::Data => format!("{p}-data"),
            StackPart::Service(name) => format!("{}{name}", self.service_stack_prefix()),
        }
    }

    /// Every service stack's name starts with this (how `up` and `destroy` find the stacks
    /// of services that left the config).
    pub fn service_stack_prefix(&self) -> String {
        format!("{}-svc-", self.project)
    }

    /// The single ECR repository every service's built image is pushed to (tags differ).
    pub fn repository(&self) -> String {
        self.project.to_string()
    }

    /// The ECS cluster (templates/cluster.yaml names it after the project).
    pub fn cluster(&self) -> String {
        self.project.to_string()
    }

    /// The live cluster's name: the cluster stack's `ClusterName` output when the stack has
    /// one (it is what ECS calls take), else [`Names::cluster`].
    pub fn live_cluster(&self, outputs: Option<&BTreeMap<String, String>>) -> String {
        outputs
            .and_then(|o| o.get("ClusterName").cloned())
            .unwrap_or_else(|| self.cluster())
    }

    /// The task-definition family of a service; also the service's name in the flow's
    /// identity (Prefect tags and the `deployment` parameter) on both targets.
    pub fn family(&self, service: &str) -> String {
        format!("{}-{service}", self.project)
    }

    /// The CloudWatch log group of a service (the service stack creates it).
    pub fn log_group(&self, service: &str) -> String {
        format!("/ecs/{}/{service}", self.project)
    }

    /// Where the project's secrets live in SSM (`GetParametersByPath`).
    pub fn secrets_path(&self) -> String {
        format!("/{}/", self.project)
    }

    /// Where one service's secrets live in SSM.
    pub fn service_secrets_path(&self, service: &str) -> String {
        format!("{}{service}/", self.secrets_path())
    }

    /// The SSM parameter holding one secret.
    pub fn secret_parameter(&self, service: &str, secret: &str) -> String {
        format!("{}{secret}", self.service_secrets_path(service))
    }

    /// The deploy lock's object key in the account's lock bucket ([`lock_bucket`]).
    pub fn lock_key(&self) -> String {
        format!("{}.json", self.project)
    }

    /// The data lake's bucket when the deployer makes it and the config names none.
    pub fn data_bucket(&self, account: &str, region: &str) -> String {
        format!("{}-data-{account}-{region}", self.project)
    }

    /// The lake's Glue database: Glue names allow lowercase letters, digits and `_`.
    pub fn glue_database(&self) -> String {
        self.project.replace('-', "_")
    }

    /// The local target's bridge network.
    pub fn local_network(&self) -> String {
        format!("deployer-{}", self.project)
    }

    /// One local container: `<project>-<service>-<revision>-<slot>`. Deterministic, so a
    /// clash with a container the deployer did not create is found before anything starts.
    pub fn local_container(&self, service: &str, revision: u32, slot: u32) -> String {
        format!("{}-{service}-{revision}-{slot}", self.project)
    }
}

/// Labels on everything the local target makes. Nothing without them is listed, touched or
/// deleted.
pub const LABEL_PROJECT: &str = "dev.deployer.project";
pub const LABEL_SERVICE: &str = "dev.deployer.service";
pub const LABEL_REVISION: &str = "dev.deployer.revision";
/// The spec hash (the revision's identity; the number above is for humans).
pub const LABEL_SPEC: &str = "dev.deployer.spec";
/// On images built for a project. A different key from [`LABEL_PROJECT`]: a container inherits
/// its image's labels, so a container someone else starts from the image must not look like
/// one of the project's.
pub const LABEL_IMAGE_OF: &str = "dev.deployer.image-of";

/// The deploy locks' bucket, one per account and region, shared by every project.
pub fn lock_bucket(account: &str, region: &str) -> String {
    format!("deployer-locks-{account}-{region}")
}

/// The log group Container Insights writes a cluster's metrics to (deleted by `destroy`).
pub fn insights_log_group(cluster: &str) -> String {
    format!("/aws/ecs/containerinsights/{cluster}/performance")
}
