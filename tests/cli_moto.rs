//! The real `deployer` binary against moto (started by scripts/test.sh, with the change-set
//! patch in scripts/moto_server.py). Each test uses its own project name: moto's state is shared.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use support::{Run, SECRET_VALUE, clients};

/// A prebuilt image in moto's ECR (`support::moto_ecr_image` puts it there once): the
/// deployer's preflight checks that prebuilt ECR images exist.
const IMAGE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/flow@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn ensure_image() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        assert_eq!(support::moto_ecr_image("flow"), IMAGE);
    });
}

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(name: &str, services_yaml: &str) -> Self {
        ensure_image();
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "project: {name}\nregion: us-east-1\ndata_lake: {{bucket: lake-{name}, prefix: crypto/}}\nservices:\n{services_yaml}"
        );
        std::fs::write(dir.path().join("deployer.yaml"), text).unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Run {
        support::deployer(self.path(), args)
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        support::deployer_env(self.path(), args, env)
    }
}

const SERVICE: &str = "  flow:\n    image: IMAGE\n    secrets: [PRICE_API_KEY]\n    environment: {SINK_URL: 's3://lake/crypto/'}\n    health_check: {command: [/price-stream, healthcheck]}\n";

fn service_yaml() -> String {
    SERVICE.replace("IMAGE", IMAGE)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[tokio::test]
async fn up_noop_plan_change_status_destroy() {
    let p = Project::new("it-lifecycle", &service_yaml());

    // 1. From nothing: every stack created, a first revision registered, the secret stored.
    let first = p.run(&["up", "--image", IMAGE, "--json"]).expect(0).json();
    let actions: Vec<(&str, &str)> = first["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stack"].as_str().unwrap(), s["action"].as_str().unwrap()))
        .collect();
    for stack in [
        "it-lifecycle-registry",
        "it-lifecycle-network",
        "it-lifecycle-cluster",
        "it-lifecycle-svc-flow",
    ] {
        assert!(
            actions.contains(&(stack, "created")),
            "{stack} not created: {actions:?}"
        );
    }
    assert_eq!(first["services"][0]["revision"], 1);
    assert_eq!(first["services"][0]["image"], IMAGE);
    assert_eq!(first["secrets"][0]["action"], "created");
    assert_eq!(first["unchanged"], false);

    // The artifact names the secret by ARN, never by value.
    let artifact =
        std::fs::read_to_string(p.path().join(".deployer/flow/task-definition.json")).unwrap();
    let td: Value = serde_json::from_str(&artifact).unwrap();
    assert_eq!(
        td["containerDefinitions"][0]["secrets"][0]["valueFrom"],
        "arn:aws:ssm:us-east-1:123456789012:parameter/it-lifecycle/flow/PRICE_API_KEY"
    );
    // ECS runs the flow's own health check (it ignores the image's HEALTHCHECK).
    assert_eq!(
        td["containerDefinitions"][0]["healthCheck"]["command"],
        serde_json::json!(["CMD", "/price-stream", "healthcheck"])
    );
    for f in files_under(p.path()) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        assert!(
            !text.contains(SECRET_VALUE),
            "secret value in {}",
            f.display()
        );
    }
    let cl = clients().await;
    let stored = cl
        .ssm
        .get_parameter()
        .name("/it-lifecycle/flow/PRICE_API_KEY")
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.parameter().unwrap().value(), Some(SECRET_VALUE));
    assert_eq!(
        stored
            .parameter()
            .unwrap()
            .r#type()
            .map(aws_sdk_ssm::types::ParameterType::as_str),
        Some("SecureString")
    );

    // 2. Again: nothing to change, and not one mutating API call.
    let second = p.run(&["up", "--json"]).expect(0).json();
    assert_eq!(second["unchanged"], true, "{second:#}");
    assert!(
        second["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["action"] == "unchanged")
    );
    assert_eq!(
        second["api_calls"]["mutating"],
        serde_json::json!({}),
        "{:#}",
        second["api_calls"]
    );
    assert_eq!(second["services"][0]["revision"], 1);

    // 3. plan --exit-code: 0 without changes, 2 with a cpu change; nothing applied by plan.
    p.run(&["plan", "--exit-code"]).expect(0);
    // A rotated secret is a pending change too (the value itself is never shown).
    let rotated = p.run_env(
        &["plan", "--exit-code"],
        &[("PRICE_API_KEY", "sk-rotated-plan-never-print-me")],
    );
    assert!(
        !rotated.stdout.contains("never-print-me") && !rotated.stderr.contains("never-print-me")
    );
    let rotated = rotated.expect(2);
    assert!(
        rotated
            .stdout
            .contains("secret /it-lifecycle/flow/PRICE_API_KEY: update"),
        "{}",
        rotated.stdout
    );
    let planned = p
        .run(&[
            "plan",
            "--exit-code",
            "--cpu",
            "512",
            "--memory",
            "1024",
            "--json",
        ])
        .expect(2)
        .json();
    assert_eq!(planned["changes"], true);
    assert_eq!(planned["task_definitions"][0]["action"], "register");
    let diffs = planned["task_definitions"][0]["differences"].to_string();
    assert!(diffs.contains("cpu: \\\"256\\\" -> \\\"512\\\""), "{diffs}");
    p.run(&["plan", "--exit-code"]).expect(0);

    // 4. up applies the cpu change as a new revision; then there is nothing left to plan.
    let third = p
        .run(&["up", "--cpu", "512", "--memory", "1024", "--json"])
        .expect(0)
        .json();
    assert_eq!(third["services"][0]["revision"], 2);
    assert_eq!(third["services"][0]["registered"], true);
    let svc_stack = third["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stack"] == "it-lifecycle-svc-flow")
        .unwrap()
        .clone();
    assert_eq!(svc_stack["action"], "updated");
    p.run(&["plan", "--exit-code", "--cpu", "512", "--memory", "1024"])
        .expect(0);

    // 5. status: stacks, desired/running, revision, image.
    let status = p.run(&["status", "--json"]).expect(0).json();
    assert!(
        status["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"].as_str().unwrap().ends_with("_COMPLETE")),
        "{status:#}"
    );
    assert_eq!(status["services"][0]["revision"], 2);
    assert_eq!(status["services"][0]["desired"], 1);
    assert_eq!(status["services"][0]["image"], IMAGE);
    let text = p.run(&["status"]).expect(0).stdout;
    assert!(
        text.contains("it-lifecycle-svc-flow") && text.contains("revision 2"),
        "{text}"
    );

    // 6. destroy: refuses without --yes off a TTY, deleting nothing.
    let refused = p.run(&["destroy"]).expect(2);
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    assert!(
        cl.cfn
            .describe_stacks()
            .stack_name("it-lifecycle-svc-flow")
            .send()
            .await
            .is_ok()
    );

    // 7. destroy --yes leaves no stack, repository, parameter or active task definition.
    let gone = p.run(&["destroy", "--yes", "--json"]).expect(0).json();
    assert_eq!(
        gone["deleted_parameters"][0],
        "/it-lifecycle/flow/PRICE_API_KEY"
    );
    for stack in [
        "it-lifecycle-svc-flow",
        "it-lifecycle-cluster",
        "it-lifecycle-network",
        "it-lifecycle-registry",
    ] {
        let d = cl.cfn.describe_stacks().stack_name(stack).send().await;
        // Gone, or listed only as DELETE_COMPLETE (as CloudFormation does by stack id).
        let status = d.ok().and_then(|o| {
            o.stacks()
                .first()
                .and_then(|s| s.stack_status().map(|s| s.as_str().to_string()))
        });
        assert!(
            status.is_none() || status.as_deref() == Some("DELETE_COMPLETE"),
            "{stack}: {status:?}"
        );
    }
    assert!(
        cl.ecr
            .describe_repositories()
            .repository_names("it-lifecycle")
            .send()
            .await
            .is_err(),
        "repository left"
    );
    assert!(
        cl.ssm
            .get_parameter()
            .name("/it-lifecycle/flow/PRICE_API_KEY")
            .send()
            .await
            .is_err(),
        "parameter left"
    );
    let tds = cl
        .ecs
        .list_task_definitions()
        .family_prefix("it-lifecycle-flow")
        .status(aws_sdk_ecs::types::TaskDefinitionStatus::Active)
        .send()
        .await
        .unwrap();
    assert!(
        tds.task_definition_arns().is_empty(),
        "{:?}",
        tds.task_definition_arns()
    );
    let after = p.run(&["status", "--json"]).expect(0).json();
    assert!(
        after["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "NOT_FOUND"),
        "{after:#}"
    );
}

#[tokio::test]
async fn destroy_refuses_a_stack_without_the_deployer_tags() {
    let p = Project::new("it-foreign", &service_yaml());
    let cl = clients().await;
    // Someone else's stack with the name the deployer would use for the registry.
    cl.cfn
        .create_stack()
        .stack_name("it-foreign-registry")
        .template_body("Resources:\n  Topic:\n    Type: AWS::SNS::Topic\n")
        .send()
        .await
        .unwrap();
    let r = p.run(&["destroy", "--yes"]).expect(1);
    assert!(
        r.stderr.contains("refusing to destroy") && r.stderr.contains("it-foreign-registry"),
        "{}",
        r.stderr
    );
    assert!(
        cl.cfn
            .describe_stacks()
            .stack_name("it-foreign-registry")
            .send()
            .await
            .is_ok(),
        "foreign stack deleted"
    );
    // Nor does `up` adopt it: bad input, and the foreign stack keeps its template.
    let r = p.run(&["up", "--image", IMAGE]).expect(2);
    assert!(
        r.stderr.contains("it-foreign-registry")
            && r.stderr.contains("not created by the deployer"),
        "{}",
        r.stderr
    );
    let template = cl
        .cfn
        .get_template()
        .stack_name("it-foreign-registry")
        .send()
        .await
        .unwrap();
    assert!(
        template
            .template_body()
            .unwrap_or_default()
            .contains("AWS::SNS::Topic"),
        "foreign stack changed"
    );
}

#[tokio::test]
async fn missing_secret_value_aborts_before_any_change() {
    let p = Project::new(
        "it-nosecret",
        "  flow:\n    image: repo@sha256:1\n    secrets: [NOT_SET_ANYWHERE_XYZ]\n",
    );
    let r = p.run(&["up"]).expect(2);
    assert!(
        r.stderr.contains("NOT_SET_ANYWHERE_XYZ") && r.stderr.contains("services.flow.secrets"),
        "{}",
        r.stderr
    );
    let cl = clients().await;
    assert!(
        cl.cfn
            .describe_stacks()
            .stack_name("it-nosecret-registry")
            .send()
            .await
            .is_err(),
        "a stack was created"
    );
}

#[test]
fn bad_configs_exit_2_naming_file_and_key() {
    let cases: &[(&str, &[&str])] = &[
        (
            "project: x\nservices:\n  web:\n    image: i\n    cpu: 300\n",
            &["deployer.yaml", "services.web.cpu", "256, 512"],
        ),
        (
            "project: x\nservices:\n  web:\n    image: i\n    cpu: 256\n    memory: 4096\n",
            &["services.web.memory", "allowed: 512, 1024, 2048"],
        ),
        (
            "project: x\nservices:\n  web:\n    image: i\n    replicas: 2\n",
            &["services.web", "unknown field `replicas`"],
        ),
        (
            "project: x\nservices:\n  web:\n    image: i\n    desired_count: many\n",
            &["services.web.desired_count"],
        ),
        (
            "project: x\nnetwork:\n  subnet_cidrs: [10.0.0.0/24]\nservices:\n  web:\n    image: i\n",
            &["network.subnet_cidrs", "exactly 2"],
        ),
        (
            "project: Bad_Name\nservices:\n  web:\n    image: i\n",
            &["project:", "lowercase"],
        ),
        (
            "project: x\nservices:\n  web: {}\n",
            &["services.web", "no image source"],
        ),
        (
            "project: x\nservices:\n  web:\n    image: i\n    architecture: arm64\n    capacity: fargate_spot\n",
            &["services.web.capacity", "fargate_spot does not run arm64"],
        ),
        (
            "project: x\nservices:\n  web:\n    image: i\n    health_check: {command: [/bin/check], interval: 1}\n",
            &["services.web.health_check.interval", "5..=300"],
        ),
        ("project: x\nservices: [\n", &["invalid YAML"]),
    ];
    for (yaml, needles) in cases {
        let p = Project::new("unused", "");
        std::fs::write(p.path().join("deployer.yaml"), yaml).unwrap();
        for cmd in [&["plan"][..], &["up", "--json"][..]] {
            let r = p.run(cmd);
            assert_eq!(r.code, 2, "{yaml}\n{}", r.stderr);
            for n in *needles {
                assert!(
                    r.stderr.contains(n),
                    "`{n}` missing for\n{yaml}\nstderr: {}",
                    r.stderr
                );
            }
            assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        }
        // --json still prints one JSON object on stdout, naming the error.
        let r = p.run(&["up", "--json"]);
        assert_eq!(r.json()["exit_code"], 2);
    }
    // Overrides are validated like the file.
    let p = Project::new("unused", &service_yaml());
    let r = p.run(&["plan", "--memory", "3000"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("services.flow.memory: 3000"),
        "{}",
        r.stderr
    );
    let r = p.run(&["plan", "--set", "services.flow.stop_timeout=900"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("services.flow.stop_timeout: 900"),
        "{}",
        r.stderr
    );
    // A missing file says how to make one.
    let r = p.run(&["plan", "--config", "nope.yaml"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("nope.yaml") && r.stderr.contains("deployer init"),
        "{}",
        r.stderr
    );
}

#[test]
fn init_writes_a_valid_starter_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| support::deployer_offline(dir.path(), args);
    run(&["init"]).expect(0);
    let text = std::fs::read_to_string(dir.path().join("deployer.yaml")).unwrap();
    assert!(text.contains("# "), "starter is commented");
    deployer::config::parse(&text, Path::new("deployer.yaml"), &[]).expect("starter parses");
    let again = run(&["init"]).expect(2);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    run(&["init", "--force"]).expect(0);
}

#[tokio::test]
async fn redeploy_needs_up_then_rolls_only_images_and_services() {
    let p = Project::new("it-redeploy", &service_yaml());

    // Before `up`: nothing to redeploy onto; bad input, and nothing created.
    let refused = p.run(&["redeploy", "--image", IMAGE]).expect(2);
    assert!(
        refused.stderr.contains("does not exist") && refused.stderr.contains("deployer up"),
        "{}",
        refused.stderr
    );
    let cl = clients().await;
    assert!(
        cl.cfn
            .describe_stacks()
            .stack_name("it-redeploy-registry")
            .send()
            .await
            .is_err(),
        "redeploy created a stack"
    );

    p.run(&["up", "--image", IMAGE]).expect(0);

    // A push that changes the infrastructure: redeploy never applies it, and says so.
    let pending = p
        .run(&[
            "redeploy",
            "--image",
            IMAGE,
            "--set",
            "cluster.container_insights=false",
        ])
        .expect(2);
    assert!(
        pending
            .stderr
            .contains("it-redeploy-cluster has infrastructure changes pending")
            && pending.stderr.contains("run `deployer up`"),
        "{}",
        pending.stderr
    );

    // A new image: a new revision and a service update; no infrastructure stack is touched.
    let new_image = support::moto_ecr_tagged("flow", "next");
    let r = p
        .run(&["redeploy", "--image", &new_image, "--json"])
        .expect(0)
        .json();
    assert_eq!(r["services"][0]["revision"], 2, "{r:#}");
    assert_eq!(r["services"][0]["image"], new_image.as_str());
    let by_stack = |name: &str| {
        r["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stack"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {r:#}"))["action"]
            .clone()
    };
    assert_eq!(by_stack("it-redeploy-svc-flow"), "updated");
    for infra in [
        "it-redeploy-registry",
        "it-redeploy-network",
        "it-redeploy-cluster",
    ] {
        assert_eq!(by_stack(infra), "unchanged");
    }
    // Only the service stack's change set was created: infrastructure is read, never planned.
    let mutating = &r["api_calls"]["mutating"];
    assert_eq!(
        mutating["CloudFormation.CreateChangeSet"], 1,
        "{mutating:#}"
    );
    assert_eq!(mutating["ECS.RegisterTaskDefinition"], 1, "{mutating:#}");

    // A rotated secret: same task definition (it holds the parameter ARN), but running tasks
    // read the old value, so new tasks are started. The new value is never printed.
    let rotated = "sk-rotated-0a1b2c3d-never-print-me";
    let r = p.run_env(
        &["up", "--image", &new_image, "--json"],
        &[("PRICE_API_KEY", rotated)],
    );
    assert!(!r.stdout.contains(rotated) && !r.stderr.contains(rotated));
    let r = r.expect(0).json();
    assert_eq!(r["secrets"][0]["action"], "updated", "{r:#}");
    assert_eq!(r["services"][0]["registered"], false, "{r:#}");
    assert_eq!(
        r["api_calls"]["mutating"]["ECS.UpdateService"], 1,
        "{:#}",
        r["api_calls"]
    );

    p.run(&["destroy", "--yes"]).expect(0);
}

#[tokio::test]
async fn rollback_goes_to_the_previous_revision_and_up_rolls_forward() {
    let p = Project::new("it-rollback", &service_yaml());
    p.run(&["up", "--image", IMAGE]).expect(0);
    let new_image = support::moto_ecr_tagged("flow", "other");
    p.run(&["up", "--image", &new_image]).expect(0);

    // Back to revision 1: the service stack's task definition changes, nothing else.
    let r = p.run(&["rollback", "--json"]).expect(0).json();
    assert!(
        r["rollbacks"][0]["from"].as_str().unwrap().ends_with(":2"),
        "{r:#}"
    );
    assert!(
        r["rollbacks"][0]["to"].as_str().unwrap().ends_with(":1"),
        "{r:#}"
    );
    let status = p.run(&["status", "--json"]).expect(0).json();
    assert_eq!(status["services"][0]["revision"], 1, "{status:#}");
    assert_eq!(status["services"][0]["image"], IMAGE);

    // Nothing older than 1; an unknown revision names the ones that exist. Both bad input.
    let none = p.run(&["rollback"]).expect(2);
    assert!(
        none.stderr.contains("no earlier ACTIVE revision"),
        "{}",
        none.stderr
    );
    let unknown = p.run(&["rollback", "--to", "7"]).expect(2);
    assert!(
        unknown.stderr.contains("ACTIVE revisions: 2, 1"),
        "{}",
        unknown.stderr
    );

    // The config still says the new image: `up` rolls forward to it without a new revision.
    let fwd = p
        .run(&["up", "--image", &new_image, "--json"])
        .expect(0)
        .json();
    assert_eq!(fwd["services"][0]["revision"], 2, "{fwd:#}");
    assert_eq!(fwd["services"][0]["registered"], false);

    p.run(&["destroy", "--yes"]).expect(0);
}

#[tokio::test]
async fn a_service_removed_from_the_config_is_flagged_by_up_and_removed_by_destroy() {
    let two = format!("{}  other:\n    image: {IMAGE}\n", service_yaml());
    let p = Project::new("it-orphan", &two);
    p.run(&["up"]).expect(0);
    // `other` leaves the config: it keeps running, and `up` says so.
    let one = Project::new("it-orphan", &service_yaml());
    std::fs::copy(
        one.path().join("deployer.yaml"),
        p.path().join("deployer.yaml"),
    )
    .unwrap();
    let r = p.run(&["up"]).expect(0);
    assert!(
        r.stderr.contains("it-orphan-svc-other") && r.stderr.contains("keeps running"),
        "{}",
        r.stderr
    );
    // destroy removes it with the rest, and deregisters its task definitions.
    let gone = p.run(&["destroy", "--yes", "--json"]).expect(0).json();
    let deleted = gone["deleted_stacks"].to_string();
    assert!(deleted.contains("it-orphan-svc-other"), "{gone:#}");
    let cl = clients().await;
    let tds = cl
        .ecs
        .list_task_definitions()
        .family_prefix("it-orphan-other")
        .status(aws_sdk_ecs::types::TaskDefinitionStatus::Active)
        .send()
        .await
        .unwrap();
    assert!(tds.task_definition_arns().is_empty(), "{tds:?}");
}

/// A network the user made (`network.existing`) passes the preflight's EC2 check when its
/// parts belong together; the service stack gets its subnet and security group; `destroy`
/// removes only what the deployer made: the VPC, subnet and security group remain.
#[tokio::test]
async fn an_existing_network_is_used_as_is_and_outlives_destroy() {
    ensure_image();
    let n = support::moto_network();
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "project: it-existing-net\nregion: us-east-1\nnetwork:\n  existing:\n    vpc_id: {}\n    subnet_ids: [{}]\n    security_group_ids: [{}]\nservices:\n{}",
        n.vpc,
        n.subnet,
        n.security_group,
        service_yaml()
    );
    std::fs::write(dir.path().join("deployer.yaml"), text).unwrap();
    let up = support::deployer(dir.path(), &["up", "--json"])
        .expect(0)
        .json();
    let stacks = up["stacks"].to_string();
    assert!(!stacks.contains("it-existing-net-network"), "{up:#}");
    let cl = clients().await;
    // The service stack runs the tasks in the user's subnet and security group (moto's ECS
    // does not echo a service's network configuration, so the stack's parameters are read).
    let stack = cl
        .cfn
        .describe_stacks()
        .stack_name("it-existing-net-svc-flow")
        .send()
        .await
        .unwrap();
    let params: std::collections::HashMap<&str, &str> = stack.stacks()[0]
        .parameters()
        .iter()
        .filter_map(|p| Some((p.parameter_key()?, p.parameter_value()?)))
        .collect();
    // (moto echoes a list parameter as Python's repr of the list.)
    let has = |k: &str, v: &str| params.get(k).is_some_and(|p| p.contains(v));
    assert!(has("Subnets", &n.subnet), "{params:?}");
    assert!(has("SecurityGroups", &n.security_group), "{params:?}");

    support::deployer(dir.path(), &["destroy", "--yes"]).expect(0);
    let left = cl.ec2.describe_vpcs().vpc_ids(&n.vpc).send().await.unwrap();
    assert_eq!(left.vpcs().len(), 1, "destroy removed the user's VPC");
    let left = cl
        .ec2
        .describe_security_groups()
        .group_ids(&n.security_group)
        .send()
        .await
        .unwrap();
    assert_eq!(
        left.security_groups().len(),
        1,
        "destroy removed the user's security group"
    );
}

/// `logs` on AWS reads the service's CloudWatch log group (moto keeps the events), each line
/// prefixed by service and task; `--tail` keeps the last lines; `--follow` prints new ones.
#[tokio::test]
async fn logs_read_the_services_log_group_and_follow_new_lines() {
    let p = Project::new("it-logs", &service_yaml());
    p.run(&["up", "--image", IMAGE]).expect(0);
    let cl = clients().await;
    let group = "/ecs/it-logs/flow";
    let stream = "flow/flow/0f1e2d3c";
    let _ = cl
        .logs
        .create_log_group()
        .log_group_name(group)
        .send()
        .await;
    cl.logs
        .create_log_stream()
        .log_group_name(group)
        .log_stream_name(stream)
        .send()
        .await
        .expect("create stream");
    let put = |lines: &[&str]| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let events: Vec<_> = lines
            .iter()
            .enumerate()
            .map(|(i, m)| {
                aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                    .timestamp(now + i as i64)
                    .message(*m)
                    .build()
                    .expect("event")
            })
            .collect();
        cl.logs
            .put_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .set_log_events(Some(events))
            .send()
    };
    put(&["first line", "second line", "third line"])
        .await
        .expect("put");
    let all = p.run(&["logs"]).expect(0);
    assert!(
        all.stdout.contains("flow/0f1e2d3c | first line")
            && all.stdout.contains("flow/0f1e2d3c | third line"),
        "{}",
        all.stdout
    );
    let tail = p.run(&["logs", "--tail", "1"]).expect(0);
    assert_eq!(tail.stdout.trim(), "flow/0f1e2d3c | third line");
    let none = p.run(&["logs", "--service", "nope"]).expect(2);
    assert!(
        none.stderr.contains("no service named nope"),
        "{}",
        none.stderr
    );

    let follow = support::deployer_command(
        p.path(),
        &["logs", "--follow", "--since", "1m"],
        &support::moto_url(),
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .expect("spawn");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    put(&["a new line"]).await.expect("put");
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let _ = std::process::Command::new("kill")
        .args(["-INT", &follow.id().to_string()])
        .status();
    let out = follow.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("flow/0f1e2d3c | a new line"), "{text}");
    assert_eq!(
        text.matches("first line").count(),
        1,
        "no line twice: {text}"
    );
    p.run(&["destroy", "--yes"]).expect(0);
    let again = p.run(&["destroy", "--yes"]).expect(0);
    assert!(
        again.stdout.contains("nothing to delete"),
        "{}",
        again.stdout
    );
}

/// `deployment.verify` on AWS: moto runs no task, so the test plays the flow's part in a real
/// Prefect server, posting runs tagged as an ECS task of the new revision would tag them
/// (`service:<family>`, `revision:<family>:<n>`). Completed runs pass the deploy; failed runs
/// of the next revision roll it back to the previous one (exit 4).
#[tokio::test(flavor = "multi_thread")]
async fn verify_on_aws_waits_for_the_revisions_runs_and_rolls_back_failing_ones() {
    let name = support::unique("it-verify");
    let p = Project::new(
        &name,
        &format!(
            "{}    deployment: {{verify: {{flow_runs: 2, within: 60, rollback: true}}}}\n",
            service_yaml()
        ),
    );
    let prefect = support::prefect::url();
    let env = [("PREFECT_API_URL", prefect.as_str())];
    let family = format!("{name}-flow");
    let play = |revision: u32, state: &'static str| {
        let family = family.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            for i in 0..2 {
                support::prefect::post_run(
                    &family,
                    &[
                        format!("service:{family}"),
                        format!("revision:{family}:{revision}"),
                    ],
                    state,
                    &format!("{state} run {i} of revision {revision}"),
                )
                .await;
            }
        })
    };
    let first = play(1, "COMPLETED");
    let up = p
        .run_env(&["up", "--image", IMAGE, "--json"], &env)
        .expect(0)
        .json();
    first.await.expect("player");
    assert_eq!(up["services"][0]["verify"]["completed"], 2, "{up:#}");

    let next = support::moto_ecr_tagged("flow", "verify-next");
    let second = play(2, "FAILED");
    let bad = p.run_env(&["up", "--image", &next], &env).expect(4);
    second.await.expect("player");
    assert!(
        bad.stderr.contains("failed its pipeline check"),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr.contains("FAILED run 0 of revision 2"),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr
            .contains(&format!("rolled back to revision {family}:1")),
        "{}",
        bad.stderr
    );
    let status = p.run(&["status", "--json"]).expect(0).json();
    assert_eq!(status["services"][0]["revision"], 1, "{status:#}");
    // Without Prefect in the environment the same config is refused before any change.
    let refused = p.run(&["up", "--image", IMAGE]).expect(2);
    assert!(
        refused.stderr.contains("PREFECT_API_URL"),
        "{}",
        refused.stderr
    );
    p.run(&["destroy", "--yes"]).expect(0);
}
