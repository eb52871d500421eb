//! `status`: stacks and their states, per service desired/running, revision and image.

use crate::config::Config;
use crate::error::Result;
use crate::names::StackPart;
use crate::rollout::{taskdef, track};
use crate::stacks;
use crate::stacks::specs::network_spec;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct StackState {
    pub stack: String,
    /// CloudFormation status, or "NOT_FOUND".
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub service: String,
    pub status: String,
    pub desired: i32,
    pub running: i32,
    pub pending: i32,
    pub rollout: String,
    pub task_definition: String,
    pub revision: Option<i32>,
    pub image: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub project: String,
    pub stacks: Vec<StackState>,
    pub services: Vec<ServiceStatus>,
}

pub fn stack_names(c: &Config) -> Vec<String> {
    let mut names = vec![c.names().stack(StackPart::Registry)];
    names.extend(network_spec(c).map(|s| s.name));
    names.push(c.names().stack(StackPart::Cluster));
    if c.data_lake.as_ref().is_some_and(|l| l.create) {
        names.push(c.names().stack(StackPart::Data));
    }
    names.extend(
        c.services
            .keys()
            .map(|s| c.names().stack(StackPart::Service(s))),
    );
    names
}

pub async fn status(c: &Config, cl: &crate::aws::Clients) -> Result<StatusReport> {
    let lives = futures::future::join_all(stack_names(c).into_iter().map(|n| async move {
        let live = stacks::describe(&cl.cfn, &n).await;
        (n, live)
    }))
    .await;
    let mut stacks_out = Vec::new();
    let mut cluster_name = c.names().cluster();
    for (name, live) in lives {
        let live = live?;
        if name == c.names().stack(StackPart::Cluster) {
            cluster_name = c.names().live_cluster(live.as_ref().map(|l| &l.outputs));
        }
        stacks_out.push(StackState {
            stack: name,
            status: live.map_or_else(|| "NOT_FOUND".into(), |l| l.status.to_string()),
        });
    }
    let mut services = Vec::new();
    for name in c.services.keys() {
        // None: no cluster or no service yet (a denied or throttled call is an error).
        let state = track::describe(&cl.ecs, &cluster_name, name).await?;
        let Some(state) = state else {
            services.push(ServiceStatus {
                service: name.clone(),
                status: "NOT_FOUND".into(),
                desired: 0,
                running: 0,
                pending: 0,
                rollout: String::new(),
                task_definition: String::new(),
                revision: None,
                image: None,
            });
            continue;
        };
        let td = taskdef::latest(&cl.ecs, &state.task_definition).await?;
        services.push(ServiceStatus {
            service: name.clone(),
            status: state.status,
            desired: state.desired,
            running: state.running,
            pending: state.pending,
            rollout: state.rollout,
            revision: td.as_ref().map(|t| t.revision),
            image: td.and_then(|t| t.def.container_definitions.first().map(|c| c.image.clone())),
            task_definition: state.task_definition,
        });
    }
    Ok(StatusReport {
        project: c.project.clone(),
        stacks: stacks_out,
        services,
    })
}
