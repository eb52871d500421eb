//! What the local target keeps on disk, in `<config dir>/.deployer/local/<project>/`:
//!
//! - `state.json`: per service, the last [`KEEP_REVISIONS`] revisions (number, spec hash, the
//!   spec itself) and which one is current, so `rollback` works after the old containers are
//!   gone. Specs hold secret names and keyed hashes only (src/local/spec.rs).
//! - `key`: 32 random bytes, the key of the secrets' keyed hashes (mode 0600).
//! - `lock`: the deploy lock, an advisory file lock (`flock`) that the kernel releases when the
//!   process dies, so a crashed run never leaves a stale lock; its content names the holder.
//!
//! The engine stays the source of truth for what runs (containers carry the labels); the
//! state file is the memory of what ran before. The folder ignores itself for git.

use super::spec::ContainerSpec;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Revisions (with their images) kept per service for `rollback`.
pub const KEEP_REVISIONS: usize = 5;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub services: BTreeMap<String, ServiceState>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceState {
    /// Oldest first; at most [`KEEP_REVISIONS`].
    #[serde(default)]
    pub revisions: Vec<Revision>,
    /// The revision the last finished roll left running.
    #[serde(default)]
    pub current: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub number: u32,
    pub hash: String,
    /// Unix seconds.
    pub created: u64,
    pub spec: ContainerSpec,
}

impl ServiceState {
    /// The revision for `spec`: the kept one with the same hash, or a new number (registered
    /// in the list; the oldest beyond [`KEEP_REVISIONS`] are dropped, never the current one).
    /// Returns the revision and whether it is new.
    pub fn revision_for(&mut self, spec: &ContainerSpec) -> (Revision, bool) {
        let hash = spec.hash();
        if let Some(r) = self.revisions.iter().find(|r| r.hash == hash) {
            return (r.clone(), false);
        }
        let number = self.revisions.iter().map(|r| r.number).max().unwrap_or(0) + 1;
        let rev = Revision {
            number,
            hash,
            created: now(),
            spec: spec.clone(),
        };
        self.revisions.push(rev.clone());
        while self.revisions.len() > KEEP_REVISIONS {
            let Some(i) = self
                .revisions
                .iter()
                .position(|r| Some(r.number) != self.current && r.number != number)
            else {
                break;
            };
            self.revisions.remove(i);
        }
        (rev, true)
    }

    pub fn by_number(&self, n: u32) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.number == n)
    }

    pub fn by_hash(&self, hash: &str) -> Option<&Revision> {
        self.revisions.iter().find(|r| r.hash == hash)
    }

    /// The newest kept revision older than `than` (what `rollback` goes back to).
    pub fn previous(&self, than: u32) -> Option<&Revision> {
        self.revisions
            .iter()
            .filter(|r| r.number < than)
            .max_by_key(|r| r.number)
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The project's state folder.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub path: PathBuf,
}

impl StateDir {
    /// `<config dir>/.deployer/local/<project>`.
    pub fn new(config_dir: &Path, project: &str) -> Self {
        Self {
            path: config_dir.join(".deployer").join("local").join(project),
        }
    }

    pub fn exists(&self) -> bool {
        self.path.join("state.json").exists()
    }

    fn io_error(&self, what: &str, e: &std::io::Error) -> Error {
        Error::failure(format!("{what} {}: {e}", self.path.display()))
            .with_help("the local target keeps its state there; make the folder writable")
    }

    fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.path).map_err(|e| self.io_error("cannot create", &e))?;
        // `.deployer/` holds artifacts and state, never sources (see deploy::write_artifacts).
        if let Some(root) = self.path.parent().and_then(Path::parent) {
            let ignore = root.join(".gitignore");
            if !ignore.exists() {
                let _ =
                    std::fs::write(ignore, "# written by deployer: artifacts, not sources\n*\n");
            }
        }
        Ok(())
    }

    pub fn load(&self) -> Result<State> {
        let file = self.path.join("state.json");
        match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::failure(format!("{} is not readable: {e}", file.display())).with_help(
                    "the file is the deployer's memory of earlier revisions; move it away to start afresh (running containers are found by their labels)",
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(self.io_error("cannot read", &e)),
        }
    }

    /// Write atomically (temporary file, then rename): a crash never leaves half a file.
    pub fn save(&self, state: &State) -> Result<()> {
        self.create()?;
        let tmp = self.path.join("state.json.tmp");
        let json = serde_json::to_vec_pretty(state).unwrap_or_default();
        std::fs::write(&tmp, json)
            .and_then(|_| std::fs::rename(&tmp, self.path.join("state.json")))
            .map_err(|e| self.io_error("cannot write state in", &e))
    }

    /// The secrets' hash key, created on first use.
    pub fn key(&self) -> Result<Vec<u8>> {
        let file = self.path.join("key");
        match std::fs::read(&file) {
            Ok(k) if k.len() == 32 => return Ok(k),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io_error("cannot read the key in", &e)),
        }
        self.create()?;
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| Error::failure(format!("no random bytes for the secrets' key: {e}")))?;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&file)
            .and_then(|mut f| f.write_all(&key))
            .map_err(|e| self.io_error("cannot write the key in", &e))?;
        Ok(key)
    }

    /// Remove the state (destroy). The lock file goes with it; the held lock stays valid
    /// until the process ends (the descriptor keeps the inode).
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_error("cannot remove", &e)),
        }
    }

    /// Take the project's deploy lock, waiting up to `wait` for another run to finish;
    /// exit 5 (locked) when it does not.
    pub async fn lock(&self, command: &str, wait: Duration) -> Result<LocalLock> {
        self.create()?;
        let file_path = self.path.join("lock");
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&file_path)
                .map_err(|e| self.io_error("cannot open the lock in", &e))?;
            match file.try_lock() {
                Ok(()) => {
                    let holder = format!(
                        "{{\"pid\":{},\"command\":\"{command}\",\"since\":{}}}\n",
                        std::process::id(),
                        now()
                    );
                    let _ = file
                        .set_len(0)
                        .and_then(|_| file.rewind())
                        .and_then(|_| file.write_all(holder.as_bytes()));
                    return Ok(LocalLock { _file: file });
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    if tokio::time::Instant::now() >= deadline {
                        let mut text = String::new();
                        let _ = file.read_to_string(&mut text);
                        return Err(locked(&text, wait));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(self.io_error("cannot lock", &e));
                }
            }
        }
    }
}

fn locked(holder: &str, waited: Duration) -> Error {
    #[derive(Deserialize)]
    struct Holder {
        pid: u32,
        command: String,
        since: u64,
    }
    let who = match serde_json::from_str::<Holder>(holder.trim()) {
        Ok(h) => format!(
            "`deployer {}` (pid {}) since {} s ago",
            h.command,
            h.pid,
            now().saturating_sub(h.since)
        ),
        Err(_) => "another deployer run".into(),
    };
    let waited = if waited.is_zero() {
        String::new()
    } else {
        format!(" (waited {} s)", waited.as_secs())
    };
    Error::locked(format!("locked by {who}{waited}; nothing was changed"))
        .with_help("wait for it to finish, or pass --wait-for-lock SECONDS")
}

/// A held deploy lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct LocalLock {
    _file: std::fs::File,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LocalNetwork;
    use crate::error::ExitCode;

    fn spec(image: &str) -> ContainerSpec {
        ContainerSpec {
            service: "web".into(),
            image_id: image.into(),
            image_ref: "demo:1".into(),
            command: vec![],
            environment: BTreeMap::new(),
            secrets: BTreeMap::new(),
            health_check: None,
            cpu: 256,
            memory: 512,
            stop_timeout: 30,
            network: LocalNetwork::Host,
            mounts: vec![],
            user: None,
        }
    }

    #[test]
    fn revisions_are_numbered_reused_by_hash_and_bounded_but_the_current_one_stays() {
        let mut s = ServiceState::default();
        let (r1, new) = s.revision_for(&spec("a"));
        assert_eq!((r1.number, new), (1, true));
        s.current = Some(1);
        let (again, new) = s.revision_for(&spec("a"));
        assert_eq!((again.number, new), (1, false));
        for i in 0..10 {
            s.revision_for(&spec(&format!("img{i}")));
        }
        assert_eq!(s.revisions.len(), KEEP_REVISIONS);
        assert!(s.by_number(1).is_some(), "the current revision is kept");
        assert_eq!(s.revisions.last().map(|r| r.number), Some(11));
        assert_eq!(s.previous(11).map(|r| r.number), Some(10));
    }

    #[tokio::test]
    async fn the_lock_is_exclusive_names_its_holder_and_goes_with_the_guard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path(), "demo");
        let held = state.lock("up", Duration::ZERO).await.expect("first lock");
        let e = state
            .lock("destroy", Duration::from_millis(300))
            .await
            .expect_err("second lock");
        assert_eq!(e.code(), ExitCode::Locked);
        assert!(e.message().contains("`deployer up`"), "{}", e.message());
        drop(held);
        state
            .lock("destroy", Duration::ZERO)
            .await
            .expect("free again");
    }

    #[test]
    fn state_round_trips_and_the_key_is_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sd = StateDir::new(dir.path(), "demo");
        assert!(!sd.exists());
        let mut st = State::default();
        st.services
            .entry("web".into())
            .or_default()
            .revision_for(&spec("a"));
        sd.save(&st).expect("save");
        assert!(sd.exists());
        assert_eq!(sd.load().expect("load").services["web"].revisions.len(), 1);
        let k = sd.key().expect("key");
        assert_eq!(k, sd.key().expect("same key"));
        assert!(
            dir.path().join(".deployer/.gitignore").exists(),
            "the folder ignores itself"
        );
    }
}
