//! The local target's "task definition": one container spec per service, rendered from the same
//! settings as the ECS task definition (plus the `local:` overrides), and identified by a hash
//! of itself: the revision. Two renders of unchanged settings give the same hash, so an
//! unchanged `up` starts and stops nothing.
//!
//! Secret values are never part of a spec: each secret is represented by a keyed hash of its
//! value (HMAC-SHA-256 with a per-project key kept in the state folder), so a rotated value
//! changes the revision (new containers read it) while nothing stored or printed can reveal it.

use crate::config::{Config, LocalNetwork};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The labels live in the naming layer (src/names.rs); the local target's modules use them
/// from here.
pub use crate::names::{LABEL_IMAGE_OF, LABEL_PROJECT, LABEL_REVISION, LABEL_SERVICE, LABEL_SPEC};

/// Environment variables the deployer adds to every container so the flow can tag its runs
/// with its deployment (service, revision, image, instance). Not part of the revision hash:
/// they are derived from it.
pub const IDENTITY_VARS: [&str; 4] = [
    "DEPLOYER_SERVICE",
    "DEPLOYER_REVISION",
    "DEPLOYER_IMAGE_DIGEST",
    "DEPLOYER_INSTANCE",
];

/// What one revision of a service runs. Serialised as the `container-spec.json` artifact and
/// kept in the state file (for `rollback`); it holds secret names and keyed hashes, never values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub service: String,
    /// Local image id (`sha256:...`): the container runs exactly this image.
    pub image_id: String,
    /// The tag it was built or pulled as, for people.
    pub image_ref: String,
    /// Replaces the image's CMD (ECS `command`); empty keeps it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Plain values: `services.<name>.environment` with `local.services.<name>.environment` on top.
    pub environment: BTreeMap<String, String>,
    /// Secret name -> keyed hash of its value (see the module docs).
    pub secrets: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<crate::config::HealthCheck>,
    /// Task cpu units (1024 = one core) and memory (MiB), as Docker limits.
    pub cpu: u32,
    pub memory: u32,
    /// Seconds between SIGTERM and SIGKILL.
    pub stop_timeout: u32,
    pub network: LocalNetwork,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// `uid:gid` to run as instead of the image's user (see [`RenderInput::user`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute host path.
    pub host: PathBuf,
    pub container: String,
}

impl ContainerSpec {
    /// The revision's identity: 12 hex digits of SHA-256 over the canonical JSON (maps sorted).
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..6])
    }
}

/// Everything a spec is rendered from besides the config.
pub struct RenderInput<'a> {
    pub service: &'a str,
    pub image_id: &'a str,
    pub image_ref: &'a str,
    /// Absolute host path of `local.lake_dir`, if set.
    pub lake_dir: Option<PathBuf>,
    /// Secret values by name, read from the deployer's environment.
    pub secret_values: &'a BTreeMap<String, String>,
    /// Per-project key for the secrets' keyed hashes.
    pub key: &'a [u8],
    /// Run as this `uid:gid` (the owner of the data lake folder when the deployer is not
    /// root): what the flow writes into the mounted lake then belongs to the user, who can
    /// read and delete it without root. The container gets a fresh tmpfs `/tmp` that any
    /// user may write, since the image's `/tmp` belongs to its own user.
    pub user: Option<String>,
}

pub fn render(c: &Config, i: &RenderInput<'_>) -> ContainerSpec {
    let s = &c.services[i.service];
    let mut environment = s.environment.clone();
    if let Some(local) = c.local.services.get(i.service) {
        environment.extend(local.environment.clone());
    }
    let secrets = s
        .secrets
        .iter()
        .map(|name| {
            let value = i.secret_values.get(name).map(String::as_str).unwrap_or("");
            (name.clone(), keyed_hash(i.key, name, value))
        })
        .collect();
    ContainerSpec {
        service: i.service.to_string(),
        image_id: i.image_id.to_string(),
        image_ref: i.image_ref.to_string(),
        command: s.command.clone(),
        environment,
        secrets,
        health_check: s.health_check.clone(),
        cpu: s.cpu,
        memory: s.memory,
        stop_timeout: s.stop_timeout,
        network: c.local.network,
        mounts: i
            .lake_dir
            .iter()
            .map(|host| Mount {
                host: host.clone(),
                container: c.local.lake_mount.clone(),
            })
            .collect(),
        user: i.user.clone(),
    }
}

/// HMAC-SHA-256(key, name NUL value), 16 hex digits: enough to tell a rotation, nothing to
/// recover a value from.
pub fn keyed_hash(key: &[u8], name: &str, value: &str) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(name.as_bytes());
    mac.update(&[0]);
    mac.update(value.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..8])
}

/// Field-level differences between two specs (`plan`), e.g. `environment.INTERVAL_SECONDS: "10" -> "2"`.
/// Secrets show as "rotated", never with their hashes.
pub fn diff(live: &ContainerSpec, desired: &ContainerSpec) -> Vec<String> {
    let mut out = Vec::new();
    let (a, b) = (
        serde_json::to_value(live).unwrap_or_default(),
        serde_json::to_value(desired).unwrap_or_default(),
    );
    let (serde_json::Value::Object(a), serde_json::Value::Object(b)) = (a, b) else {
        return out;
    };
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let null = serde_json::Value::Null;
    for k in keys {
        let (x, y) = (a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null));
        if x == y {
            continue;
        }
        match (k.as_str(), x, y) {
            (
                "environment" | "secrets",
                serde_json::Value::Object(x),
                serde_json::Value::Object(y),
            ) => {
                let names: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for n in names {
                    let (u, v) = (x.get(n), y.get(n));
                    if u == v {
                        continue;
                    }
                    if k == "secrets" {
                        let what = match (u, v) {
                            (None, _) => "added",
                            (_, None) => "removed",
                            _ => "value rotated",
                        };
                        out.push(format!("secrets.{n}: {what}"));
                    } else {
                        out.push(format!("environment.{n}: {} -> {}", show(u), show(v)));
                    }
                }
            }
            _ => out.push(format!("{k}: {} -> {}", show(Some(x)), show(Some(y)))),
        }
    }
    out
}

fn show(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => "(none)".into(),
        Some(v) => {
            let s = v.to_string();
            if s.len() > 80 {
                format!("{}...", &s[..s.floor_char_boundary(77)])
            } else {
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        crate::config::parse(
            &format!(
                "project: demo\nservices:\n  web:\n    image: i\n    secrets: [API_KEY]\n    environment: {{A: '1', B: '2'}}\n{extra}"
            ),
            Path::new("t.yaml"),
            &[],
        )
        .expect("valid")
    }

    fn spec(c: &Config, secret: &str) -> ContainerSpec {
        let values = BTreeMap::from([("API_KEY".to_string(), secret.to_string())]);
        render(
            c,
            &RenderInput {
                service: "web",
                image_id: "sha256:abc",
                image_ref: "demo:1",
                lake_dir: None,
                secret_values: &values,
                key: b"k",
                user: None,
            },
        )
    }

    #[test]
    fn same_settings_same_revision_and_a_rotated_secret_is_a_new_one() {
        let c = config("");
        assert_eq!(spec(&c, "s1").hash(), spec(&c, "s1").hash());
        assert_ne!(spec(&c, "s1").hash(), spec(&c, "s2").hash());
        let json = serde_json::to_string(&spec(&c, "very-secret-value")).expect("json");
        assert!(!json.contains("very-secret-value"), "{json}");
        assert_eq!(
            diff(&spec(&c, "s1"), &spec(&c, "s2")),
            vec!["secrets.API_KEY: value rotated"]
        );
    }

    #[test]
    fn local_environment_overrides_the_service_environment() {
        let c = config("local:\n  services:\n    web:\n      environment: {B: local, C: '3'}\n");
        let s = spec(&c, "x");
        let env: Vec<(&str, &str)> = s
            .environment
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env, vec![("A", "1"), ("B", "local"), ("C", "3")]);
        let base = spec(&config(""), "x");
        assert_eq!(
            diff(&base, &s),
            vec![
                "environment.B: \"2\" -> \"local\"",
                "environment.C: (none) -> \"3\""
            ]
        );
    }

    #[test]
    fn keyed_hash_depends_on_key_name_and_value() {
        let h = keyed_hash(b"k1", "A", "v");
        assert_eq!(h.len(), 16);
        assert_ne!(h, keyed_hash(b"k2", "A", "v"));
        assert_ne!(h, keyed_hash(b"k1", "B", "v"));
        assert_ne!(h, keyed_hash(b"k1", "A", "w"));
    }
}
