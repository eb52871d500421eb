//! Image tags and source identity from git. A clean commit gets its commit id as the tag; a
//! dirty work tree gets `<commit>-dirty-<hash of the changes>`, so a clean commit's tag is never
//! reused for different content (registry tags are treated as immutable).

use super::Platform;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// Commit id length in tags: `short` (12 hex digits, safe from collisions in large repos) or
/// `full` (40).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagStyle {
    #[default]
    Short,
    Full,
}

/// Where the sources came from, as far as git can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitState {
    pub commit: String,
    /// Committer date (strict ISO 8601), used as the image's creation label: unlike the wall
    /// clock it is the same on every rebuild, so rebuilding a commit gives the same image.
    pub commit_time: String,
    /// Hash of the uncommitted changes (tracked diff plus untracked files), if any.
    pub dirty: Option<String>,
    /// `remote.origin.url` with any credentials removed.
    pub source: Option<String>,
}

/// What identifies the image's sources: a git state, or (outside git / before the first
/// commit) the hash of the build context itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceIdentity {
    Git(GitState),
    Context { sha256: String },
}

impl SourceIdentity {
    /// The image tag. Non-default platforms get a suffix so one commit can be published for
    /// both architectures without the tags colliding.
    pub fn tag(&self, style: TagStyle, platform: Platform) -> String {
        let base = match self {
            SourceIdentity::Git(git) => {
                let commit = match style {
                    TagStyle::Short => git.commit.get(..12).unwrap_or(&git.commit),
                    TagStyle::Full => git.commit.as_str(),
                };
                match &git.dirty {
                    None => commit.to_string(),
                    Some(hash) => format!("{commit}-dirty-{}", hash.get(..12).unwrap_or(hash)),
                }
            }
            SourceIdentity::Context { sha256 } => {
                format!("ctx-{}", sha256.get(..16).unwrap_or(sha256))
            }
        };
        match platform {
            Platform::LinuxAmd64 => base,
            Platform::LinuxArm64 => format!("{base}-arm64"),
        }
    }

    pub fn is_clean_commit(&self) -> bool {
        matches!(self, SourceIdentity::Git(GitState { dirty: None, .. }))
    }

    /// Refuse anything but a clean commit (CI's `--require-clean`).
    pub fn ensure_clean(&self) -> Result<()> {
        match self {
            SourceIdentity::Git(GitState { dirty: None, .. }) => Ok(()),
            SourceIdentity::Git(GitState { commit, .. }) => Err(Error::bad_input(format!(
                "the work tree has uncommitted changes on top of {}",
                commit.get(..12).unwrap_or(commit)
            ))
            .with_help("commit or stash the changes, or build without --require-clean")),
            SourceIdentity::Context { .. } => Err(Error::bad_input(
                "the sources are not a git commit (no repository or no commits yet)",
            )
            .with_help("commit the sources, or build without --require-clean")),
        }
    }
}

async fn git(dir: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .output()
        .await
        .ok()?;
    out.status.success().then_some(out.stdout)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

/// Read the git state of the repository containing `dir`. `None` when `dir` is not in a
/// repository, the repository has no commits, or git is not installed.
pub async fn git_state(dir: &Path) -> Result<Option<GitState>> {
    let Some(head) = git(dir, &["show", "-s", "--format=%H%n%cI", "HEAD"]).await else {
        return Ok(None);
    };
    let head = text(&head);
    let mut lines = head.lines();
    let (Some(commit), Some(commit_time)) = (lines.next(), lines.next()) else {
        return Ok(None);
    };
    let status = git(
        dir,
        &["status", "--porcelain=v1", "-z", "--untracked-files=all"],
    )
    .await
    .ok_or_else(|| Error::failure(format!("`git status` failed in {}", dir.display())))?;
    let dirty = if status.is_empty() {
        None
    } else {
        Some(changes_hash(dir).await?)
    };
    let source = git(dir, &["config", "--get", "remote.origin.url"])
        .await
        .map(|b| text(&b))
        .filter(|s| !s.is_empty())
        .map(|url| strip_credentials(&url));
    Ok(Some(GitState {
        commit: commit.to_string(),
        commit_time: commit_time.to_string(),
        dirty,
        source,
    }))
}

/// Hash of everything that differs from HEAD: the binary diff of tracked files plus the names
/// and contents of untracked, non-ignored files.
async fn changes_hash(dir: &Path) -> Result<String> {
    let fail = |what: &str| Error::failure(format!("`git {what}` failed in {}", dir.display()));
    let top = git(dir, &["rev-parse", "--show-toplevel"])
        .await
        .map(|b| text(&b))
        .ok_or_else(|| fail("rev-parse"))?;
    let diff = git(
        dir,
        &["diff", "HEAD", "--binary", "--no-ext-diff", "--no-color"],
    )
    .await
    .ok_or_else(|| fail("diff"))?;
    let untracked = git(
        dir,
        &[
            "ls-files",
            "--others",
            "--exclude-standard",
            "--full-name",
            "-z",
            ":/",
        ],
    )
    .await
    .ok_or_else(|| fail("ls-files"))?;
    let top = PathBuf::from(top);
    tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        hasher.update(&diff);
        for name in untracked.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            hasher.update(b"\0untracked\0");
            hasher.update(name);
            let path = top.join(String::from_utf8_lossy(name).as_ref());
            // A file deleted between listing and reading hashes as its name alone.
            if let Ok(mut file) = std::fs::File::open(&path) {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = std::io::Read::read(&mut file, &mut buf) {
                    hasher.update(&buf[..n]);
                }
            }
        }
        hex::encode(hasher.finalize())
    })
    .await
    .map_err(|e| Error::failure(format!("hashing uncommitted changes: {e}")))
}

/// `https://user:token@host/x.git` -> `https://host/x.git`: labels are public.
fn strip_credentials(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && !userinfo.contains('/')
    {
        return format!("{scheme}://{host}");
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_files as files;

    fn git_sync(dir: &Path, args: &[&str]) {
        files::git(dir, args);
    }

    #[tokio::test]
    async fn clean_dirty_and_untracked_tags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        assert_eq!(
            git_state(root).await.expect("state"),
            None,
            "not a repository"
        );
        git_sync(root, &["init", "-q"]);
        assert_eq!(
            git_state(root).await.expect("state"),
            None,
            "no commits yet"
        );
        std::fs::write(root.join("a.txt"), "one").expect("write");
        git_sync(root, &["add", "."]);
        git_sync(root, &["commit", "-q", "-m", "one"]);

        let clean = SourceIdentity::Git(git_state(root).await.expect("state").expect("repo"));
        let tag = clean.tag(TagStyle::Short, Platform::LinuxAmd64);
        assert_eq!(tag.len(), 12);
        assert_eq!(clean.tag(TagStyle::Full, Platform::LinuxAmd64).len(), 40);
        assert_eq!(
            clean.tag(TagStyle::Short, Platform::LinuxArm64),
            format!("{tag}-arm64")
        );
        assert!(clean.ensure_clean().is_ok());

        std::fs::write(root.join("a.txt"), "two").expect("write");
        let dirty = SourceIdentity::Git(git_state(root).await.expect("state").expect("repo"));
        let dirty_tag = dirty.tag(TagStyle::Short, Platform::LinuxAmd64);
        assert!(
            dirty_tag.starts_with(&format!("{tag}-dirty-")),
            "{dirty_tag}"
        );
        assert!(dirty.ensure_clean().is_err());

        // A different change gives a different tag; the same change the same tag.
        std::fs::write(root.join("a.txt"), "three").expect("write");
        let other = SourceIdentity::Git(git_state(root).await.expect("state").expect("repo"));
        assert_ne!(other.tag(TagStyle::Short, Platform::LinuxAmd64), dirty_tag);
        std::fs::write(root.join("a.txt"), "two").expect("write");
        let again = SourceIdentity::Git(git_state(root).await.expect("state").expect("repo"));
        assert_eq!(again.tag(TagStyle::Short, Platform::LinuxAmd64), dirty_tag);

        // Untracked files count as changes too.
        std::fs::write(root.join("a.txt"), "one").expect("write");
        std::fs::write(root.join("new.txt"), "n").expect("write");
        let untracked = SourceIdentity::Git(git_state(root).await.expect("state").expect("repo"));
        assert!(untracked.ensure_clean().is_err());
    }

    #[test]
    fn context_identity_and_credentials() {
        let id = SourceIdentity::Context {
            sha256: "ab".repeat(32),
        };
        assert_eq!(
            id.tag(TagStyle::Full, Platform::LinuxAmd64),
            format!("ctx-{}", "ab".repeat(8))
        );
        assert!(id.ensure_clean().is_err());
        assert_eq!(
            strip_credentials("https://x:tok@github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(
            strip_credentials("git@github.com:o/r.git"),
            "git@github.com:o/r.git"
        );
    }
}
