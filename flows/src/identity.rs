//! Which deployment this process is: service, revision, image and instance. Every flow run
//! carries them as tags (`service:…`, `revision:…`, `instance:…`) and as a `deployment`
//! parameter, so Prefect can filter runs by revision (the deployer's verdict does) and by
//! instance (crash reconciliation does).
//!
//! Sources, first match wins per field:
//! 1. `DEPLOYER_SERVICE`, `DEPLOYER_REVISION`, `DEPLOYER_IMAGE_DIGEST`, `DEPLOYER_INSTANCE`
//!    (the deployer's local target sets them; anyone else may);
//! 2. on ECS, the task metadata endpoint v4 (`ECS_CONTAINER_METADATA_URI_V4`): family as the
//!    service, family:revision as the revision, the container's image digest, the task id as
//!    the instance. Read at start, so nothing in the task definition names the revision and an
//!    unchanged `up` still registers nothing;
//! 3. otherwise the service is the flow name, the revision `unknown`, the instance random.

use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub service: String,
    pub revision: String,
    pub image: Option<String>,
    pub instance: String,
}

impl Identity {
    /// Prefect tags; values are kept short and free of spaces.
    pub fn tags(&self) -> Vec<String> {
        vec![
            format!("service:{}", self.service),
            format!("revision:{}", self.revision),
            format!("instance:{}", self.instance),
        ]
    }

    /// The `deployment` parameter of every flow run.
    pub fn parameter(&self) -> Value {
        json!({
            "service": self.service,
            "revision": self.revision,
            "image": self.image,
            "instance": self.instance,
        })
    }
}

/// What the metadata endpoint answers (only the fields used).
#[derive(Debug, Deserialize)]
struct TaskMetadata {
    #[serde(rename = "TaskARN")]
    task_arn: String,
    #[serde(rename = "Family")]
    family: String,
    #[serde(rename = "Revision")]
    revision: String,
}

#[derive(Debug, Deserialize)]
struct ContainerMetadata {
    #[serde(rename = "ImageID", default)]
    image_id: Option<String>,
}

/// Resolve the identity from `env` (a lookup, so tests need not touch the process
/// environment) and, on ECS, the metadata endpoint.
pub async fn resolve(env: &dyn Fn(&str) -> Option<String>, flow_name: &str) -> Identity {
    let var = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let ecs = match var("ECS_CONTAINER_METADATA_URI_V4") {
        Some(uri) => ecs_metadata(&uri).await,
        None => None,
    };
    let (ecs_service, ecs_revision, ecs_image, ecs_instance) = match ecs {
        Some((task, image)) => (
            Some(task.family.clone()),
            Some(format!("{}:{}", task.family, task.revision)),
            image,
            task.task_arn.rsplit('/').next().map(str::to_string),
        ),
        None => (None, None, None, None),
    };
    Identity {
        service: var("DEPLOYER_SERVICE")
            .or(ecs_service)
            .unwrap_or_else(|| flow_name.to_string()),
        revision: var("DEPLOYER_REVISION")
            .or(ecs_revision)
            .unwrap_or_else(|| "unknown".into()),
        image: var("DEPLOYER_IMAGE_DIGEST").or(ecs_image),
        instance: var("DEPLOYER_INSTANCE")
            .or(ecs_instance)
            .unwrap_or_else(|| Uuid::new_v4().simple().to_string()[..12].to_string()),
    }
}

/// The task's and this container's metadata; None when the endpoint does not answer (the
/// identity then falls back, it never stops the flow).
async fn ecs_metadata(uri: &str) -> Option<(TaskMetadata, Option<String>)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let task: TaskMetadata = crate::body::json_capped(
        http.get(format!("{}/task", uri.trim_end_matches('/')))
            .send()
            .await
            .ok()?,
        crate::body::SMALL,
    )
    .await
    .ok()?;
    let container: Option<ContainerMetadata> = match http.get(uri).send().await {
        Ok(r) => crate::body::json_capped(r, crate::body::SMALL).await.ok(),
        Err(_) => None,
    };
    Some((task, container.and_then(|c| c.image_id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[tokio::test]
    async fn deployer_variables_win_and_the_fallback_is_named() {
        let env = HashMap::from([
            ("DEPLOYER_SERVICE", "demo-price-stream"),
            ("DEPLOYER_REVISION", "3f2a9c1d7e8b"),
            ("DEPLOYER_INSTANCE", "demo-price-stream-2-1"),
        ]);
        let id = resolve(
            &|k| env.get(k).map(std::string::ToString::to_string),
            "price-stream",
        )
        .await;
        assert_eq!(
            id.tags(),
            vec![
                "service:demo-price-stream",
                "revision:3f2a9c1d7e8b",
                "instance:demo-price-stream-2-1"
            ]
        );
        let none = resolve(&|_| None, "price-stream").await;
        assert_eq!(
            (none.service.as_str(), none.revision.as_str()),
            ("price-stream", "unknown")
        );
        assert_eq!(none.instance.len(), 12);
    }

    /// The ECS metadata endpoint v4, served by a local stand-in with the documented shapes.
    #[tokio::test(flavor = "multi_thread")]
    async fn ecs_task_metadata_gives_family_revision_image_and_task_id() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        crate::install_tls_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 2048];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let body = if req.starts_with("GET /v4/abc/task ") {
                    r#"{"Cluster":"c","TaskARN":"arn:aws:ecs:us-east-1:123456789012:task/c/0f1e2d3c4b5a","Family":"demo-price-stream","Revision":"7"}"#
                } else {
                    r#"{"Name":"price-stream","ImageID":"sha256:1234","Image":"repo@sha256:1234"}"#
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let uri = format!("http://{addr}/v4/abc");
        let id = resolve(
            &|k| (k == "ECS_CONTAINER_METADATA_URI_V4").then(|| uri.clone()),
            "price-stream",
        )
        .await;
        assert_eq!(id.service, "demo-price-stream");
        assert_eq!(id.revision, "demo-price-stream:7");
        assert_eq!(id.image.as_deref(), Some("sha256:1234"));
        assert_eq!(id.instance, "0f1e2d3c4b5a");
    }
}
