//! The build context: a deterministic tar of the context directory honouring `.dockerignore`,
//! streamed to the engine through a small bounded channel so memory stays flat however large
//! the directory is (time and memory follow what is sent, not what is skipped).

use super::dockerignore::DockerIgnore;
use crate::error::{Error, Result};
use bytes::Bytes;
use futures::Stream;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunk size of the streamed tar and the channel depth: at most ~CHUNK * (DEPTH + 2) bytes
/// of context are in memory at once.
const CHUNK: usize = 256 * 1024;
const DEPTH: usize = 4;

/// A context directory ready to be archived.
#[derive(Debug, Clone)]
pub struct BuildContext {
    root: PathBuf,
    /// The Dockerfile's path inside the context, `/`-separated (sent as the API's `dockerfile`).
    dockerfile: String,
    ignore: DockerIgnore,
}

/// What was sent. `sha256` identifies the context: identical inputs give an identical tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextStats {
    pub files: u64,
    /// Bytes of regular file content sent.
    pub content_bytes: u64,
    /// Size of the tar stream.
    pub tar_bytes: u64,
    /// Entries skipped because of `.dockerignore` (an excluded directory counts once).
    pub excluded: u64,
    pub sha256: String,
}

impl BuildContext {
    /// Open `root` with the Dockerfile at `dockerfile` (relative to `root`). Reads
    /// `.dockerignore` and forces the Dockerfile and `.dockerignore` in, as the docker CLI does.
    pub fn open(root: &Path, dockerfile: &Path) -> Result<Self> {
        let meta = fs::metadata(root).map_err(|e| {
            Error::bad_input(format!(
                "build context {} is not readable: {e}",
                root.display()
            ))
            .with_help("check `build.context` in deployer.yaml (relative to the config file)")
        })?;
        if !meta.is_dir() {
            return Err(Error::bad_input(format!(
                "build context {} is not a directory",
                root.display()
            )));
        }
        let dockerfile = relative_slash_path(dockerfile).ok_or_else(|| {
            Error::bad_input(format!(
                "dockerfile `{}` must be a relative path inside the build context",
                dockerfile.display()
            ))
        })?;
        if !root.join(&dockerfile).is_file() {
            return Err(Error::bad_input(format!(
                "Dockerfile {} not found",
                root.join(&dockerfile).display()
            ))
            .with_help("check `build.dockerfile` (relative to `build.context`)"));
        }
        let ignore_path = root.join(".dockerignore");
        let mut ignore = match fs::read_to_string(&ignore_path) {
            Ok(text) => DockerIgnore::parse(&text)
                .map_err(|e| Error::bad_input(format!("{}: {e}", ignore_path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => DockerIgnore::default(),
            Err(e) => {
                return Err(Error::bad_input(format!(
                    "cannot read {}: {e}",
                    ignore_path.display()
                )));
            }
        };
        for keep in [".dockerignore", dockerfile.as_str()] {
            if ignore.is_excluded(keep) {
                ignore
                    .keep(keep)
                    .map_err(|e| Error::bad_input(e.to_string()))?;
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            dockerfile,
            ignore,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dockerfile(&self) -> &str {
        &self.dockerfile
    }

    /// Write the tar to `out` (blocking I/O). Entries are sorted by name, owners are 0:0,
    /// mtimes are 0 and modes normalised (0755 executables and directories, 0644 otherwise),
    /// so the tar and the image layers built from it do not depend on the checkout.
    pub fn write_tar<W: Write>(&self, out: W) -> io::Result<ContextStats> {
        let mut hashing = HashingWriter {
            inner: out,
            hasher: Sha256::new(),
            bytes: 0,
        };
        let mut counts = Counts::default();
        {
            let mut tar = tar::Builder::new(&mut hashing);
            tar.mode(tar::HeaderMode::Deterministic);
            tar.follow_symlinks(false);
            self.walk(&mut tar, &self.root, "", &mut counts)?;
            tar.finish()?;
        }
        hashing.inner.flush()?;
        Ok(ContextStats {
            files: counts.files,
            content_bytes: counts.content_bytes,
            tar_bytes: hashing.bytes,
            excluded: counts.excluded,
            sha256: hex::encode(hashing.hasher.finalize()),
        })
    }

    fn walk<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        dir: &Path,
        rel: &str,
        counts: &mut Counts,
    ) -> io::Result<()> {
        let mut entries: Vec<(String, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().into_string().map_err(|name| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("non-UTF-8 file name in build context: {name:?}"),
                )
            })?;
            entries.push((name, entry.path()));
        }
        // Byte order of names: the same on every machine and locale.
        entries.sort();
        for (name, path) in entries {
            let rel_path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = fs::symlink_metadata(&path)?;
            let excluded = !self.ignore.is_empty() && self.ignore.is_excluded(&rel_path);
            if meta.is_dir() {
                if excluded {
                    counts.excluded += 1;
                    // Descend only if an exception may re-include something below (Docker's rule);
                    // the directory entry itself is not sent.
                    if self.ignore.has_exceptions() && self.ignore.may_reinclude_below(&rel_path) {
                        self.walk(tar, &path, &rel_path, counts)?;
                    }
                    continue;
                }
                let mut header = header(tar::EntryType::Directory, 0o755, 0);
                tar.append_data(&mut header, format!("{rel_path}/"), io::empty())?;
                self.walk(tar, &path, &rel_path, counts)?;
            } else if excluded {
                counts.excluded += 1;
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path)?;
                let mut header = header(tar::EntryType::Symlink, 0o777, 0);
                tar.append_link(&mut header, &rel_path, target)?;
                counts.files += 1;
            } else if meta.is_file() {
                let mode = if executable(&meta) { 0o755 } else { 0o644 };
                let mut header = header(tar::EntryType::Regular, mode, meta.len());
                let file = fs::File::open(&path)?;
                // `take`: a file growing while we read must not corrupt the archive.
                tar.append_data(&mut header, &rel_path, file.take(meta.len()))?;
                counts.files += 1;
                counts.content_bytes += meta.len();
            }
            // Sockets, FIFOs and devices are not sent (Docker's CLI skips them too).
        }
        Ok(())
    }

    /// Stream the tar: a blocking task writes it into a bounded channel read by the returned
    /// stream (the HTTP request body). The handle yields the stats once the stream is drained.
    pub fn stream(
        self,
    ) -> (
        impl Stream<Item = io::Result<Bytes>> + Send + 'static,
        JoinHandle<io::Result<ContextStats>>,
    ) {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(DEPTH);
        let handle = tokio::task::spawn_blocking(move || {
            let mut writer = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHUNK),
            };
            let result = self.write_tar(&mut writer);
            if let Err(e) = &result {
                // Fail the request body so the engine never builds from a truncated context.
                let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            result
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        (stream, handle)
    }
}

#[derive(Default)]
struct Counts {
    files: u64,
    content_bytes: u64,
    excluded: u64,
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

#[cfg(unix)]
fn executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn executable(_meta: &fs::Metadata) -> bool {
    false
}

/// `a/./b` -> `a/b`; rejects absolute paths and `..` escapes.
fn relative_slash_path(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::Normal(part) => parts.push(part.to_str()?.to_string()),
            std::path::Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Buffers writes into CHUNK-sized `Bytes` and blocks while the channel is full.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the Docker engine stopped reading the build context",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() >= CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    use crate::test_files as files;
    use files::write;

    fn names(ctx: &BuildContext) -> Vec<String> {
        let mut buf = Vec::new();
        ctx.write_tar(&mut buf).expect("tar");
        files::tar_entries(&buf)
    }

    #[test]
    fn honours_dockerignore_and_always_sends_dockerfile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "Dockerfile", "FROM scratch\n");
        write(root, ".dockerignore", "*\n!app\n!data/keep.txt\n");
        write(root, "app", "bin");
        write(root, "notes.md", "x");
        write(root, "data/big.bin", "x");
        write(root, "data/keep.txt", "x");
        let ctx = BuildContext::open(root, Path::new("Dockerfile")).expect("open");
        assert_eq!(
            names(&ctx),
            [".dockerignore", "Dockerfile", "app", "data/keep.txt"]
        );
    }

    #[test]
    fn identical_inputs_give_identical_tars() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        for root in [a.path(), b.path()] {
            write(root, "Dockerfile", "FROM scratch\n");
            write(root, "src/z.txt", "z");
            write(root, "src/a.txt", "a");
        }
        // Different mtimes must not matter.
        fs::File::options()
            .append(true)
            .open(b.path().join("src/a.txt"))
            .and_then(|f| f.set_modified(std::time::SystemTime::UNIX_EPOCH))
            .expect("touch");
        let stats = |root: &Path| {
            BuildContext::open(root, Path::new("Dockerfile"))
                .and_then(|c| {
                    c.write_tar(io::sink())
                        .map_err(|e| Error::failure(e.to_string()))
                })
                .expect("tar")
        };
        let (sa, sb) = (stats(a.path()), stats(b.path()));
        assert_eq!(sa.sha256, sb.sha256);
        assert_eq!(sa.files, 3);
        write(b.path(), "src/a.txt", "changed");
        assert_ne!(stats(a.path()).sha256, stats(b.path()).sha256);
    }

    #[test]
    fn rejects_dockerfile_outside_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "Dockerfile", "FROM scratch\n");
        assert!(BuildContext::open(dir.path(), Path::new("../Dockerfile")).is_err());
        assert!(BuildContext::open(dir.path(), Path::new("missing")).is_err());
    }

    #[tokio::test]
    async fn stream_matches_write_tar() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "Dockerfile", "FROM scratch\n");
        write(dir.path(), "big", "x".repeat(3 * CHUNK + 17));
        let ctx = BuildContext::open(dir.path(), Path::new("Dockerfile")).expect("open");
        let mut direct = Vec::new();
        let expected = ctx.write_tar(&mut direct).expect("tar");
        let (stream, handle) = ctx.stream();
        let chunks: Vec<Bytes> = stream.map(|c| c.expect("chunk")).collect().await;
        let streamed: Vec<u8> = chunks.concat();
        assert!(chunks.iter().all(|c| c.len() <= CHUNK));
        assert_eq!(streamed, direct);
        assert_eq!(handle.await.expect("join").expect("stats"), expected);
    }
}
