//! The real `deployer` binary from source to a deployed digest: moto for the AWS APIs, the
//! real Docker engine and the local registry for the image (scripts/test.sh starts all three).

mod support;

use serde_json::Value;
use support::*;

/// `deployer up --registry` with a service built from C source by its prebuild step: the
/// image is pushed to the local registry and the task definition and service stack reference
/// it by digest. A second `up` finds the tag in the registry and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn up_from_source_deploys_the_pushed_digest() {
    let registry = registry();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let project = unique("it-img-up");
    // Unique content: a layer another run already pushed would be mounted, not uploaded.
    write(
        root,
        "src/web.c",
        c_program(&format!("serving {project}"), 0),
    );
    write(
        root,
        "app/Dockerfile",
        "FROM scratch\nCOPY web /web\nUSER 65532:65532\nENTRYPOINT [\"/web\"]\n",
    );
    write(
        root,
        "deployer.yaml",
        format!(
            // The prebuild fails if it can see the service's secret: build scripts get none.
            "project: {project}\nregion: us-east-1\nservices:\n  web:\n    secrets: [BUILD_SECRET]\n    build:\n      context: app\n      prebuild: 'test -z \"${{BUILD_SECRET:-}}\" && {}'\n",
            gcc_static("src/web.c", "app/web")
        ),
    );

    // A committed work tree whose prebuild output is ignored, as in a real repository. The
    // artifacts `up` writes (.deployer/) must not make the tree dirty for the second `up`.
    write(root, ".gitignore", "app/web\n");
    git(root, &["init", "-q"]);
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "one"]);
    let commit = git(root, &["rev-parse", "HEAD"]);

    let first = deployer(root, &["up", "--registry", &registry, "--json"])
        .expect(0)
        .json();
    let image = &first["images"][0];
    assert_eq!(image["service"], "web", "{first:#}");
    assert!(
        image["tag"].as_str().unwrap().starts_with("ctx-"),
        "tagged by content: {image:#}"
    );
    assert_eq!(
        image["commit"],
        commit.as_str(),
        "the commit deployed: {image:#}"
    );
    assert_eq!(image["skipped_push"], false);
    assert_eq!(image["layers_pushed"], 1, "{image:#}");
    let digest = image["digest"].as_str().expect("digest").to_string();
    let tag = image["tag"].as_str().expect("tag").to_string();
    let by_digest = format!("{registry}/{project}@{digest}");
    assert_eq!(image["image_uri"], by_digest.as_str());
    // The registry really holds that manifest under the tag.
    assert_eq!(
        manifest_digest(&registry, &project, &tag).as_deref(),
        Some(digest.as_str())
    );

    // Deployed by digest: the report, the registered task definition, the service stack.
    let service = &first["services"][0];
    assert_eq!(service["image"], by_digest.as_str(), "{first:#}");
    let td_arn = service["task_definition_arn"]
        .as_str()
        .expect("task definition arn");
    let cl = clients().await;
    let td = cl
        .ecs
        .describe_task_definition()
        .task_definition(td_arn)
        .send()
        .await
        .expect("describe task definition");
    let containers = td
        .task_definition()
        .expect("task definition")
        .container_definitions();
    assert_eq!(containers[0].image(), Some(by_digest.as_str()));
    let stacks = cl
        .cfn
        .describe_stacks()
        .stack_name(format!("{project}-svc-web"))
        .send()
        .await
        .expect("service stack");
    let stack = &stacks.stacks()[0];
    let param = stack
        .parameters()
        .iter()
        .find(|p| p.parameter_key() == Some("TaskDefinitionArn"))
        .and_then(|p| p.parameter_value());
    assert_eq!(param, Some(td_arn));
    let artifact: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join(".deployer/web/task-definition.json"))
            .expect("artifact"),
    )
    .expect("json");
    assert_eq!(
        artifact["containerDefinitions"][0]["image"],
        by_digest.as_str()
    );

    // Same sources again: the registry has the tag, so nothing is built, pushed or changed.
    let second = deployer(root, &["up", "--registry", &registry, "--json"])
        .expect(0)
        .json();
    let image = &second["images"][0];
    assert_eq!(image["skipped_push"], true, "{second:#}");
    assert_eq!(
        (&image["layers_pushed"], &image["bytes_pushed"]),
        (&0.into(), &0.into())
    );
    assert_eq!(image["image_uri"], by_digest.as_str());
    assert_eq!(second["services"][0]["registered"], false);
    assert_eq!(second["unchanged"], true, "{second:#}");

    // A new commit that changes nothing the image is built from (a README edit): the content
    // tag is in the registry, so 0 builds, 0 pushes, 0 revisions, 0 rollouts, 0 changes.
    write(root, "README.md", "a note that is not part of the image\n");
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "docs only"]);
    let new_commit = git(root, &["rev-parse", "HEAD"]);
    let third = deployer(root, &["up", "--registry", &registry, "--json"])
        .expect(0)
        .json();
    let image = &third["images"][0];
    assert_eq!(image["skipped_push"], true, "{third:#}");
    assert_eq!(image["build_steps"], 0, "nothing was built: {third:#}");
    assert_eq!(image["image_uri"], by_digest.as_str(), "the same image");
    assert_eq!(
        image["commit"],
        new_commit.as_str(),
        "the deployed commit is shown"
    );
    assert_eq!(third["services"][0]["registered"], false, "no new revision");
    assert_eq!(third["unchanged"], true, "no rollout: {third:#}");
    let mutating = &third["api_calls"]["mutating"];
    assert!(
        mutating.as_object().is_some_and(serde_json::Map::is_empty),
        "no mutating call: {mutating}"
    );
    remove_repository_images(&docker().await, &format!("{registry}/{project}")).await;
}

/// The ECR path against moto: DescribeImages finds the content's tag, so `build --push`
/// skips the build and push and reports ECR's digest; the authorization token is never
/// printed, even with -vv; a dirty work tree is refused under --require-clean.
#[tokio::test(flavor = "multi_thread")]
async fn ecr_skip_if_present_require_clean_and_token_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let project = unique("it-img-ecr");
    write(root, "app/Dockerfile", "FROM scratch\nCOPY a.txt /\n");
    write(root, "app/a.txt", "a");
    write(
        root,
        "deployer.yaml",
        format!(
            "project: {project}\nregion: us-east-1\nservices:\n  web:\n    build:\n      context: app\n"
        ),
    );
    git(root, &["init", "-q"]);
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "one"]);
    // Tags name the content: the context's hash and this service's build recipe.
    let spec = deployer::image::BuildSpec {
        context: "app".into(),
        ..Default::default()
    };
    let tag = &deployer::image::content_tag(&spec, root, deployer::image::Platform::LinuxAmd64)
        .await
        .expect("content tag");

    // The repository holds this content's tag already (as after an earlier `up`).
    let cl = clients().await;
    cl.ecr
        .create_repository()
        .repository_name(&project)
        .send()
        .await
        .expect("create repository");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2, "digest": format!("sha256:{}", "4".repeat(64))},
        "layers": []
    })
    .to_string();
    let put = cl
        .ecr
        .put_image()
        .repository_name(&project)
        .image_manifest(manifest)
        .image_tag(tag)
        .send()
        .await
        .expect("put image");
    let digest = put
        .image()
        .and_then(|i| i.image_id())
        .and_then(|i| i.image_digest())
        .expect("digest")
        .to_string();
    let token = cl
        .ecr
        .get_authorization_token()
        .send()
        .await
        .expect("token");
    let data = &token.authorization_data()[0];
    let encoded = data.authorization_token().expect("token").to_string();
    let host = data
        .proxy_endpoint()
        .expect("endpoint")
        .trim_start_matches("https://")
        .to_string();
    let password = "123456789012-auth-token"; // moto's token is base64("AWS:" + this)
    let never_printed = |run: &Run| {
        for secret in [encoded.as_str(), password] {
            assert!(
                !run.stdout.contains(secret) && !run.stderr.contains(secret),
                "the ECR token was printed:\nstdout:\n{}\nstderr:\n{}",
                run.stdout,
                run.stderr
            );
        }
    };

    let run = deployer(
        root,
        &["build", "--push", "--json", "-vv", "--require-clean"],
    );
    never_printed(&run);
    let out = run.expect(0).json();
    let image = &out["images"][0];
    assert_eq!(image["skipped_push"], true, "{out:#}");
    assert_eq!(image["build_steps"], 0, "nothing was built: {out:#}");
    assert_eq!(image["digest"], digest.as_str());
    assert_eq!(
        image["image_uri"],
        format!("{host}/{project}@{digest}").as_str()
    );

    // Uncommitted changes: a distinct tag, and refused outright under --require-clean.
    write(root, "app/a.txt", "changed");
    let run = deployer(root, &["build", "--push", "--require-clean"]);
    never_printed(&run);
    let run = run.expect(2);
    assert!(run.stderr.contains("uncommitted changes"), "{}", run.stderr);
}
