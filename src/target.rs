//! The target boundary: where a project's services run. The pipeline (config -> image ->
//! render -> plan -> apply -> track -> summary) is the same; the platform behind it is either
//! AWS (src/deploy.rs, src/stacks/, src/rollout/) or the local Docker engine (src/local/).
//! src/commands/mod.rs picks the backend (`Platform`) once per command from `--target` /
//! `DEPLOYER_TARGET` / `target:`.
//!
//! One project lives on one target at a time: `up` records the target that has the project in
//! `<config dir>/.deployer/targets/<project>`, every command refuses (exit 2) to act on the
//! other one, and `destroy` clears the record. The record is local to the config's folder: it
//! guards against the common slip (a `--target` forgotten or added), not against a deployment
//! made elsewhere.

use crate::config::{Loaded, TargetKind};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// `--target` (or DEPLOYER_TARGET, which clap folds into the flag) over the config's `target:`.
pub fn resolve(flag: Option<TargetKind>, loaded: &Loaded) -> TargetKind {
    flag.unwrap_or(loaded.config.target)
}

fn record_path(config_dir: &Path, project: &str) -> PathBuf {
    config_dir.join(".deployer").join("targets").join(project)
}

/// The target recorded as having the project, if any.
pub fn recorded(config_dir: &Path, project: &str) -> Option<TargetKind> {
    match std::fs::read_to_string(record_path(config_dir, project))
        .ok()?
        .trim()
    {
        "aws" => Some(TargetKind::Aws),
        "local" => Some(TargetKind::Local),
        _ => None,
    }
}

/// Refuse to act on `target` when the project exists on the other one.
pub fn guard(loaded: &Loaded, target: TargetKind) -> Result<()> {
    let project = &loaded.config.project;
    match recorded(&loaded.dir, project) {
        Some(other) if other != target => Err(Error::bad_input(format!(
            "project {project} is deployed on the {other} target (recorded in {}); this command was aimed at the {target} target",
            record_path(&loaded.dir, project).display()
        ))
        .with_help(format!(
            "pass --target {other} to work with it, or run `deployer destroy --target {other}` first to move it to {target}"
        ))),
        _ => Ok(()),
    }
}

/// Record that the project now exists on `target` (before its first change, so a crash
/// mid-way still leaves the record).
pub fn record(config_dir: &Path, project: &str, target: TargetKind) -> Result<()> {
    let path = record_path(config_dir, project);
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let ignore = config_dir.join(".deployer").join(".gitignore");
        if !ignore.exists() {
            std::fs::write(ignore, "# written by deployer: artifacts, not sources\n*\n")?;
        }
        std::fs::write(&path, format!("{target}\n"))
    };
    write().map_err(|e| {
        Error::io(format!("cannot record the target in {}", path.display()), e)
            .with_help("make the config's folder writable")
    })
}

/// Forget the record (after a complete `destroy`).
pub fn clear(config_dir: &Path, project: &str) {
    let _ = std::fs::remove_file(record_path(config_dir, project));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_on_one_target_is_refused_on_the_other_until_destroyed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("deployer.yaml");
        std::fs::write(&path, "project: demo\nservices:\n  web:\n    image: i\n").expect("write");
        let loaded = crate::config::load(&path, &[]).expect("config");
        assert!(guard(&loaded, TargetKind::Aws).is_ok());
        record(dir.path(), "demo", TargetKind::Local).expect("record");
        assert!(guard(&loaded, TargetKind::Local).is_ok());
        let e = guard(&loaded, TargetKind::Aws).expect_err("other target");
        assert_eq!(e.code(), crate::error::ExitCode::BadInput);
        assert!(
            e.message().contains("deployed on the local target"),
            "{}",
            e.message()
        );
        clear(dir.path(), "demo");
        assert!(guard(&loaded, TargetKind::Aws).is_ok());
        assert_eq!(resolve(Some(TargetKind::Local), &loaded), TargetKind::Local);
        assert_eq!(resolve(None, &loaded), TargetKind::Aws);
    }
}
