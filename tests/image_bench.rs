//! Benchmark, not a test: ignored by the suite, run by bench/image/run.sh (release mode).
//!
//! Build-context creation for a 200 MB directory whose `.dockerignore` excludes 95 % of it,
//! drained exactly as the engine request body drains it. One case per process so the peak
//! RSS (VmHWM) of each case is its own:
//!   BENCH_DIR=/path BENCH_CASE=filtered|unfiltered|kept-only \
//!     cargo test --release --test image_bench -- --ignored --nocapture
//! `filtered`: the 200 MB tree with `**/*.bin` ignored (10 MB sent); `unfiltered`: the same
//! tree, everything sent; `kept-only`: a tree holding only the 10 MB that `filtered` sends.
//! Time and memory of `filtered` should track `kept-only`, not `unfiltered`.

use deployer::image::context::BuildContext;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

const DIRS: usize = 20;
const FILES_PER_DIR: usize = 20;
const FILE_BYTES: usize = 500_000;

/// Peak resident set size of this process, in KiB (Linux).
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// `root` with DIRS x FILES_PER_DIR files of FILE_BYTES; in each directory one `.txt` file
/// (kept) and the rest `.bin` (ignored by `filtered`). With `kept_only`, just the `.txt` files.
fn ensure_tree(root: &Path, kept_only: bool) {
    let done = root.join(".complete");
    if done.exists() {
        return;
    }
    let mut block = vec![0u8; FILE_BYTES];
    for d in 0..DIRS {
        let dir = root.join(format!("module-{d:02}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..FILES_PER_DIR {
            if kept_only && f != 0 {
                continue;
            }
            // Distinct content per file (no accidental dedup anywhere).
            block[..8].copy_from_slice(&((d * 1000 + f) as u64).to_le_bytes());
            let name = if f == 0 {
                "source.txt".to_string()
            } else {
                format!("blob-{f:02}.bin")
            };
            std::fs::write(dir.join(name), &block).expect("write");
        }
    }
    std::fs::write(root.join("Dockerfile"), "FROM scratch\nCOPY . /\n").expect("write");
    std::fs::write(&done, "").expect("write");
}

fn dir_bytes(root: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(root).expect("read_dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run bench/image/run.sh"]
async fn context_creation() {
    let base = PathBuf::from(
        std::env::var("BENCH_DIR").expect("BENCH_DIR: a scratch directory for the trees"),
    );
    let case = std::env::var("BENCH_CASE").unwrap_or_else(|_| "filtered".into());
    let (root, ignore) = match case.as_str() {
        "filtered" => (base.join("tree"), "**/*.bin\n.complete\n"),
        "unfiltered" => (base.join("tree"), ".complete\n"),
        "kept-only" => (base.join("kept"), ".complete\n"),
        other => panic!("BENCH_CASE={other}: use filtered, unfiltered or kept-only"),
    };
    ensure_tree(&root, case == "kept-only");
    std::fs::write(root.join(".dockerignore"), ignore).expect("write");
    let total = dir_bytes(&root);

    let rss_before = vm_hwm_kib();
    let started = Instant::now();
    let ctx = BuildContext::open(&root, Path::new("Dockerfile")).expect("open");
    let (stream, stats) = ctx.stream();
    let mut stream = std::pin::pin!(stream);
    let mut sent = 0u64;
    while let Some(chunk) = stream.next().await {
        sent += chunk.expect("chunk").len() as u64;
    }
    let stats = stats.await.expect("join").expect("stats");
    let seconds = started.elapsed().as_secs_f64();
    let rss_after = vm_hwm_kib();

    assert_eq!(sent, stats.tar_bytes);
    if case == "filtered" {
        assert_eq!(stats.files, (DIRS + 2) as u64, "{stats:?}");
    }
    println!(
        "BENCH context case={case} dir_mb={:.1} sent_mb={:.1} files_sent={} excluded={} seconds={seconds:.3} mb_per_s_sent={:.0} peak_rss_mib={:.1} peak_rss_growth_mib={:.1}",
        total as f64 / 1e6,
        sent as f64 / 1e6,
        stats.files,
        stats.excluded,
        sent as f64 / 1e6 / seconds,
        rss_after as f64 / 1024.0,
        rss_after.saturating_sub(rss_before) as f64 / 1024.0,
    );
}
