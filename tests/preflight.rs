//! Preflight: every class of bad input is refused with exit 2 before the first mutating API
//! call, naming the key (or file, line and column) and what is allowed. The real binary runs
//! `up --json` against moto; the error object's `api_calls` shows what was called (absent when
//! the config was refused before any client existed). One table: a new class is one row.

mod support;

use serde_json::Value;
use support::{Run, deployer_command, moto_url};

const BASE: &str = "project: PROJECT\nregion: us-east-1\nservices:\n  flow:\n    image: IMAGE\n    secrets: [PRICE_API_KEY]\n";

struct Case {
    class: &'static str,
    /// Replaces the whole file when it contains `project:`; otherwise appended to the service.
    yaml: &'static str,
    args: &'static [&'static str],
    /// What the message must contain (the key, or the position).
    expect: &'static [&'static str],
    /// Text that must never be printed (a value given where a name belongs).
    never: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case {
        class: "CIDR that does not parse",
        yaml: "",
        args: &["--set", "network.vpc_cidr=10.0.0.0/33"],
        expect: &["network.vpc_cidr", "/16"],
        never: None,
    },
    Case {
        class: "subnet outside the VPC",
        yaml: "",
        args: &["--set", "network.subnet_cidrs=[10.9.0.0/24, 10.0.1.0/24]"],
        expect: &["network.subnet_cidrs[0]", "not inside network.vpc_cidr"],
        never: None,
    },
    Case {
        class: "overlapping subnets",
        yaml: "",
        args: &["--set", "network.subnet_cidrs=[10.0.0.0/24, 10.0.0.0/23]"],
        expect: &["network.subnet_cidrs[1]", "overlaps"],
        never: None,
    },
    Case {
        class: "private tasks on a network without NAT or endpoints",
        yaml: "",
        args: &["--set", "network.assign_public_ip=false"],
        expect: &["network.assign_public_ip", "NAT"],
        never: None,
    },
    Case {
        class: "health check timeout beyond ECS's 60 s",
        yaml: "    health_check: {command: [x], timeout: 90}\n",
        args: &[],
        expect: &["services.flow.health_check.timeout", "2..=60"],
        never: None,
    },
    Case {
        class: "stop timeout beyond Fargate's 120 s",
        yaml: "",
        args: &["--stop-timeout-placeholder"],
        expect: &[],
        never: None,
    },
    Case {
        class: "memory not valid for the cpu",
        yaml: "",
        args: &["--cpu", "256", "--memory", "4096"],
        expect: &["services.flow.memory", "allowed: 512, 1024, 2048"],
        never: None,
    },
    Case {
        class: "environment variable name",
        yaml: "    environment: {1BAD: x}\n",
        args: &[],
        expect: &["services.flow.environment.1BAD"],
        never: None,
    },
    Case {
        class: "task definition over 64 KiB",
        yaml: "",
        args: &["--big-env-placeholder"],
        expect: &["64 KiB"],
        never: None,
    },
    Case {
        class: "desired count",
        yaml: "    desired_count: 1001\n",
        args: &[],
        expect: &["services.flow.desired_count", "0..=1000"],
        never: None,
    },
    Case {
        class: "deployment percents",
        yaml: "    deployment: {max_percent: 300}\n",
        args: &[],
        expect: &["services.flow.deployment.max_percent", "100..=200"],
        never: None,
    },
    Case {
        class: "SSM-reserved parameter path",
        yaml: "project: awsome\nregion: us-east-1\nservices:\n  flow:\n    image: IMAGE\n    secrets: [PRICE_API_KEY]\n",
        args: &[],
        expect: &["project", "SSM reserves"],
        never: None,
    },
    Case {
        class: "build context missing",
        yaml: "project: PROJECT\nregion: us-east-1\nservices:\n  flow:\n    build: {context: no-such-dir}\n",
        args: &[],
        expect: &["services.flow.build.context", "no-such-dir"],
        never: None,
    },
    Case {
        class: "Dockerfile missing",
        yaml: "project: PROJECT\nregion: us-east-1\nservices:\n  flow:\n    build: {context: ., dockerfile: Nope.Dockerfile}\n",
        args: &[],
        expect: &["services.flow.build.dockerfile"],
        never: None,
    },
    Case {
        class: "prebuild command missing",
        yaml: "project: PROJECT\nregion: us-east-1\nservices:\n  flow:\n    build: {context: out, prebuild: scripts/nope.sh}\n",
        args: &[],
        expect: &["services.flow.build.prebuild", "does not exist"],
        never: None,
    },
    Case {
        class: "override that would add a service",
        yaml: "",
        args: &["--set", "services.nope.cpu=512"],
        expect: &["--set services.nope.cpu=512", "no service `nope`"],
        never: None,
    },
    Case {
        class: "override of a key the schema lacks",
        yaml: "",
        args: &["--set", "services.flow.cpus=512"],
        expect: &["services.flow", "unknown field `cpus`"],
        never: None,
    },
    Case {
        class: "YAML indented with a tab",
        yaml: "project: PROJECT\nservices:\n\tflow:\n    image: IMAGE\n",
        args: &[],
        expect: &["line 3", "tab"],
        never: None,
    },
    Case {
        class: "YAML duplicate key",
        yaml: "project: PROJECT\nproject: other\nservices: {}\n",
        args: &[],
        expect: &["line 2", "twice"],
        never: None,
    },
    Case {
        class: "a secret's value where its name belongs",
        yaml: "project: PROJECT\nregion: us-east-1\nservices:\n  flow:\n    image: IMAGE\n    secrets: [sk-live-9a8b7c6d5e4f]\n",
        args: &[],
        expect: &["services.flow.secrets[0]"],
        never: Some("sk-live-9a8b7c6d5e4f"),
    },
    Case {
        class: "prebuilt ECR image that does not exist",
        yaml: "project: PROJECT\nregion: us-east-1\nservices:\n  flow:\n    image: 123456789012.dkr.ecr.us-east-1.amazonaws.com/flow@sha256:0000000000000000000000000000000000000000000000000000000000000000\n",
        args: &[],
        expect: &["services.flow.image", "is not in ECR"],
        never: None,
    },
    Case {
        class: "existing network whose VPC, subnet and security group do not exist",
        yaml: "project: PROJECT\nregion: us-east-1\nnetwork:\n  existing:\n    vpc_id: vpc-0badbadbadbad0000\n    subnet_ids: [subnet-0badbadbadbad0000]\n    security_group_ids: [sg-0badbadbadbad0000]\nservices:\n  flow:\n    image: IMAGE\n",
        args: &[],
        expect: &[
            "network.existing.vpc_id: VPC vpc-0badbadbadbad0000 does not exist in us-east-1",
            "network.existing.subnet_ids[0]: subnet subnet-0badbadbadbad0000 does not exist",
            "network.existing.security_group_ids[0]: security group sg-0badbadbadbad0000 does not exist",
        ],
        never: None,
    },
    Case {
        class: "existing network whose subnet belongs to another VPC",
        yaml: "project: PROJECT\nregion: us-east-1\nnetwork:\n  existing:\n    vpc_id: OUR_VPC\n    subnet_ids: [OUR_SUBNET, FOREIGN_SUBNET]\n    security_group_ids: [OUR_SG]\nservices:\n  flow:\n    image: IMAGE\n",
        args: &[],
        expect: &[
            "network.existing.subnet_ids[1]",
            "not in network.existing.vpc_id",
        ],
        never: None,
    },
    Case {
        class: "unknown key in local:",
        yaml: "",
        args: &["--set", "local.networks=host"],
        expect: &["local", "unknown field `networks`"],
        never: None,
    },
    Case {
        class: "secret value missing from the environment",
        yaml: "",
        args: &["--unset-secret-placeholder"],
        expect: &["PRICE_API_KEY"],
        never: None,
    },
];

fn image() -> String {
    support::moto_ecr_image("flow")
}

/// Run one case: `up --json` in a fresh folder.
fn run(case: &Case, project: &str) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image();
    let text = if case.yaml.contains("project:") {
        case.yaml.to_string()
    } else {
        format!("{BASE}{}", case.yaml)
    }
    .replace("PROJECT", project)
    .replace("IMAGE", &img);
    let text = with_moto_network(text);
    std::fs::write(dir.path().join("deployer.yaml"), text).expect("write");
    let big = format!("services.flow.environment.BIG={}", "x".repeat(70 * 1024));
    let mut args: Vec<String> = vec!["up".into(), "--json".into()];
    let mut unset_secret = false;
    for a in case.args {
        match *a {
            "--stop-timeout-placeholder" => {
                args.extend(["--set".into(), "services.flow.stop_timeout=121".into()])
            }
            "--big-env-placeholder" => args.extend(["--set".into(), big.clone()]),
            "--unset-secret-placeholder" => unset_secret = true,
            other => args.push(other.to_string()),
        }
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = deployer_command(dir.path(), &argv, &moto_url());
    if unset_secret {
        cmd.env_remove("PRICE_API_KEY");
    }
    Run::from(cmd.output().expect("run deployer"))
}

/// A case naming OUR_VPC etc. gets a network made in moto for it.
fn with_moto_network(text: String) -> String {
    if !text.contains("OUR_VPC") {
        return text;
    }
    let n = support::moto_network();
    text.replace("OUR_VPC", &n.vpc)
        .replace("OUR_SUBNET", &n.subnet)
        .replace("FOREIGN_SUBNET", &n.foreign_subnet)
        .replace("OUR_SG", &n.security_group)
}

#[test]
fn every_class_of_bad_input_exits_2_naming_it_before_any_mutating_call() {
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let project = support::unique(&format!("pf{i}"));
        let r = run(case, &project);
        let expect = if case.class.starts_with("stop timeout") {
            &["services.flow.stop_timeout", "2..=120"][..]
        } else {
            case.expect
        };
        let mut why = Vec::new();
        if r.code != 2 {
            why.push(format!("exit {} (want 2)", r.code));
        }
        for e in expect {
            if !r.stderr.contains(e) {
                why.push(format!("message lacks `{e}`"));
            }
        }
        if let Some(secret) = case.never
            && (r.stderr.contains(secret) || r.stdout.contains(secret))
        {
            why.push(format!("echoed `{secret}`"));
        }
        match serde_json::from_str::<Value>(&r.stdout) {
            Ok(v) => {
                let mutating = &v["api_calls"]["mutating"];
                if mutating.as_object().is_some_and(|m| !m.is_empty()) {
                    why.push(format!("mutating calls made: {mutating}"));
                }
                if v["ok"] != false {
                    why.push("the JSON error object lacks ok: false".into());
                }
            }
            Err(e) => why.push(format!("stdout is not one JSON object: {e}")),
        }
        if !why.is_empty() {
            failures.push(format!(
                "{}: {}\n    stderr: {}",
                case.class,
                why.join("; "),
                r.stderr.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} classes:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

/// `plan` refuses exactly what `up` refuses (the same preflight), before any change set.
#[test]
fn plan_and_up_agree_on_what_is_valid() {
    for case in CASES.iter().filter(|c| {
        c.class.contains("ECR")
            || c.class.contains("64 KiB")
            || c.class.contains("Dockerfile")
            || c.class.contains("existing network")
    }) {
        let project = support::unique("pfplan");
        let dir = tempfile::tempdir().expect("tempdir");
        let text = if case.yaml.contains("project:") {
            case.yaml.to_string()
        } else {
            BASE.to_string()
        }
        .replace("PROJECT", &project)
        .replace("IMAGE", &image());
        let text = with_moto_network(text);
        std::fs::write(dir.path().join("deployer.yaml"), text).expect("write");
        let big = format!("services.flow.environment.BIG={}", "x".repeat(70 * 1024));
        let mut args = vec!["plan", "--json"];
        if case.class.contains("64 KiB") {
            args.extend(["--set", big.as_str()]);
        }
        let r = Run::from(
            deployer_command(dir.path(), &args, &moto_url())
                .output()
                .expect("run"),
        );
        assert_eq!(
            r.code, 2,
            "{}: plan must refuse what up refuses\n{}",
            case.class, r.stderr
        );
    }
}

/// A Docker engine that accepts connections and never answers: `up` of a service built from
/// source stops before the first mutating call, naming the engine and the bound (exit 1: the
/// input is fine, the engine is not).
#[test]
fn a_hung_docker_engine_is_named_before_any_change() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Accept and hold every connection, never writing a byte.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").expect("write");
    let project = support::unique("pfhung");
    std::fs::write(
        dir.path().join("deployer.yaml"),
        format!(
            "project: {project}\nregion: us-east-1\nservices:\n  flow:\n    build: {{context: .}}\n"
        ),
    )
    .expect("write");
    let mut cmd = deployer_command(dir.path(), &["up", "--json"], &moto_url());
    cmd.env("DOCKER_HOST", format!("tcp://127.0.0.1:{port}"));
    let started = std::time::Instant::now();
    let r = Run::from(cmd.output().expect("run deployer"));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("did not answer within 5 s") && r.stderr.contains(&port.to_string()),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("nothing was changed"), "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).expect("one JSON object");
    let mutating = &v["api_calls"]["mutating"];
    assert!(
        mutating.as_object().is_none_or(serde_json::Map::is_empty),
        "mutating calls made: {mutating}"
    );
    // Bounded, not hung: well under bollard's default 120 s request timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}
