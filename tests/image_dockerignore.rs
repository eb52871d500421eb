//! `.dockerignore`: Docker's documented examples against the matcher, then the same cases
//! end to end — the files the engine receives from the deployer's context must be exactly
//! the files it receives from the docker CLI itself (the reference implementation) for the
//! same directory and `.dockerignore`.

mod support;

use deployer::image::Platform;
use deployer::image::build::{BuildRequest, build_image};
use deployer::image::context::BuildContext;
use deployer::image::dockerignore::DockerIgnore;
use deployer::ui::Ui;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use support::*;

fn ignore(text: &str) -> DockerIgnore {
    DockerIgnore::parse(text).expect("valid .dockerignore")
}

/// docs.docker.com/build/concepts/context/#dockerignore-files, example by example.
#[test]
fn docker_documented_examples() {
    // "# comment / */temp* / */*/temp* / temp?"
    let di = ignore("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
    for excluded in [
        "somedir/temporary.txt",
        "somedir/temp",
        "somedir/temp/inside.txt",
        "somedir/subdir/temporary.txt",
        "tempa",
        "tempb",
    ] {
        assert!(di.is_excluded(excluded), "{excluded} should be excluded");
    }
    for kept in ["temp", "temporary.txt", "a/b/c/temp", "tempab", "# comment"] {
        assert!(!di.is_excluded(kept), "{kept} should be kept");
    }

    // "**/*.go excludes all files that end with .go found anywhere in the build context".
    let di = ignore("**/*.go\n");
    assert!(di.is_excluded("main.go") && di.is_excluded("a/b/c/main.go"));
    assert!(!di.is_excluded("main.gox"));

    // "*.md / !README.md": markdown files right under the root except README.md are
    // excluded; markdown files in subdirectories are still included.
    let di = ignore("*.md\n!README.md\n");
    assert!(di.is_excluded("CHANGELOG.md"));
    assert!(!di.is_excluded("README.md"));
    assert!(!di.is_excluded("docs/guide.md"));

    // "*.md / !README*.md / README-secret.md": no markdown except README files other
    // than README-secret.md.
    let di = ignore("*.md\n!README*.md\nREADME-secret.md\n");
    assert!(di.is_excluded("CHANGELOG.md") && di.is_excluded("README-secret.md"));
    assert!(!di.is_excluded("README.md") && !di.is_excluded("README-public.md"));

    // "*.md / README-secret.md / !README*.md": all README files are included; the middle
    // line has no effect because !README*.md comes last.
    let di = ignore("*.md\nREADME-secret.md\n!README*.md\n");
    assert!(!di.is_excluded("README-secret.md"));
    assert!(di.is_excluded("CHANGELOG.md"));

    // Preprocessing with filepath.Clean: whitespace trimmed, `.` and `..` resolved, a
    // leading `/` means the context root; lines blank after preprocessing are ignored.
    let di = ignore("  /secret.txt  \n./build/../out\n\n   \n");
    assert!(di.is_excluded("secret.txt") && di.is_excluded("out/x"));
    assert!(!di.is_excluded("build"));
    // The lone `!` is rejected by Docker ("illegal exclusion pattern").
    assert!(DockerIgnore::parse("!\n").is_err());
}

/// The Dockerfile and .dockerignore are always sent, even when `.dockerignore` excludes
/// them (the engine drops them from COPY itself).
#[test]
fn dockerfile_and_dockerignore_are_always_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "build/Dockerfile", "FROM scratch\n");
    write(root, ".dockerignore", "*\n!app\n");
    write(root, "app", "x");
    write(root, "other", "x");
    let ctx = BuildContext::open(root, Path::new("build/Dockerfile")).expect("open");
    let mut tar = Vec::new();
    ctx.write_tar(&mut tar).expect("tar");
    let names = support::tar_entries(&tar);
    assert_eq!(names, [".dockerignore", "app", "build/Dockerfile"]);
}

/// The tree every end-to-end case filters.
const TREE: &[&str] = &[
    "README.md",
    "README-secret.md",
    "CHANGELOG.md",
    "docs/guide.md",
    "docs/README.md",
    "somedir/temporary.txt",
    "somedir/temp/inside.txt",
    "somedir/subdir/temporary.txt",
    "somedir/subdir/keep.txt",
    "tempa",
    "temp",
    "main.go",
    "a/b/c/main.go",
    "a/b/c/temp",
    "target/release/app",
    "data/big.bin",
    "data/keep.txt",
    "data/nested/keep.txt",
    "node_modules/x/y.js",
    "src/target.rs",
    "src/main.rs",
    "sub/target/x",
    "afoo",
    "x/y/foo",
    "logs/a/b",
    "secret.txt",
    "out/x",
    "with space.txt",
    "empty-after-filter/only.tmp",
];

const CASES: &[&str] = &[
    "# comment\n*/temp*\n*/*/temp*\ntemp?\n",
    "*.md\n!README*.md\nREADME-secret.md\n",
    "*.md\nREADME-secret.md\n!README*.md\n",
    "**/*.go\n**/*.tmp\n",
    "target\nnode_modules/\n/secret.txt\n./build/../out\n",
    "data\n!data/keep.txt\n",
    "data\n!**/keep.txt\n",
    "*\n!src\n!data/keep.txt\n",
    "logs/**\n**foo\n[a-c]*\n!a/b/c/temp\n",
    "**\n!**/*.md\nDockerfile\n.dockerignore\n",
];

/// Files and directories under /ctx in the image the engine built from `COPY . /ctx/`.
async fn files_in_image(docker: &bollard::Docker, image: &str) -> BTreeSet<String> {
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::RemoveContainerOptionsBuilder;
    let created = docker
        .create_container(
            None,
            ContainerCreateBody {
                image: Some(image.to_string()),
                cmd: Some(vec!["/none".into()]),
                ..Default::default()
            },
        )
        .await
        .expect("create container");
    let mut tar = Vec::new();
    let mut export = docker.export_container(&created.id);
    while let Some(chunk) = export.next().await {
        tar.extend_from_slice(&chunk.expect("export"));
    }
    let _ = docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    tar::Archive::new(tar.as_slice())
        .entries()
        .expect("entries")
        .filter_map(|e| {
            let path = e
                .expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string();
            let rel = path.strip_prefix("ctx/")?.trim_end_matches('/').to_string();
            (!rel.is_empty()).then_some(rel)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_receives_what_the_docker_cli_would_send() {
    let docker = docker().await;
    let run = unique("it-di");
    for (i, case) in CASES.iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for file in TREE {
            write(root, file, *file);
        }
        write(root, "Dockerfile", "FROM scratch\nCOPY . /ctx/\n");
        write(root, ".dockerignore", case);

        let ours = format!("{run}-ours-{i}");
        build_image(
            &docker,
            BuildRequest {
                context: BuildContext::open(root, Path::new("Dockerfile")).expect("open"),
                image_ref: &ours,
                args: &BTreeMap::new(),
                target: None,
                platform: Platform::LinuxAmd64,
                labels: BTreeMap::new(),
            },
            &Ui::silent(),
        )
        .await
        .unwrap_or_else(|e| panic!("case {i}: build: {e}"));

        let reference = format!("{run}-cli-{i}");
        let cli = std::process::Command::new("docker")
            .args(["build", "-q", "-t", &reference, "."])
            .current_dir(root)
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .expect(
                "the docker CLI is the reference implementation: install docker-ce-cli / docker.io",
            );
        assert!(
            cli.status.success(),
            "case {i}: docker build: {}",
            String::from_utf8_lossy(&cli.stderr)
        );

        let (got, want) = (
            files_in_image(&docker, &ours).await,
            files_in_image(&docker, &reference).await,
        );
        remove_images(&docker, &[&ours, &reference]).await;
        let missing: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "case {i} {case:?}: missing {missing:?}, extra {extra:?}\nours: {got:?}"
        );
        // Sanity: every case keeps something and drops something.
        assert!(
            TREE.iter().any(|f| want.contains(*f)) && TREE.iter().any(|f| !want.contains(*f)),
            "case {i}: {want:?}"
        );
    }
}
