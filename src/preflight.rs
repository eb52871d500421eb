//! Preflight: everything knowable is checked before the first mutating call and reported
//! together (exit 2), so a failure after the first change can only come from AWS itself.
//! config.rs checks the file (keys, ranges, CIDRs, names); this module checks what needs
//! the file system, the rendered task definition, the Docker engine and read-only AWS calls.
//! `plan` runs the same checks as `up`, so a config `plan` accepts is never refused by `up`
//! for a reason knowable before the first write.

use crate::config::{Config, Loaded};
use crate::error::{Error, Result};
use crate::rollout::taskdef;
use std::collections::HashMap;
use std::path::Path;

/// ECS's limit on a registered task definition (the JSON it is sent as).
pub const TASK_DEFINITION_MAX_BYTES: usize = 64 * 1024;

/// A prebuilt image in ECR: `<account>.dkr.ecr.<region>.amazonaws.com/<repo>[:tag|@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrImage {
    pub account: String,
    pub region: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl EcrImage {
    pub fn parse(uri: &str) -> Option<Self> {
        let (host, rest) = uri.split_once('/')?;
        let mut parts = host.split('.');
        let account = parts.next()?;
        if parts.next()? != "dkr" || parts.next()? != "ecr" {
            return None;
        }
        let region = parts.next()?.to_string();
        if !account.chars().all(|c| c.is_ascii_digit()) || account.len() != 12 {
            return None;
        }
        let (rest, digest) = match rest.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (rest, None),
        };
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_string(), Some(t.to_string())),
            _ => (rest.to_string(), None),
        };
        Some(Self {
            account: account.to_string(),
            region,
            repository,
            tag,
            digest,
        })
    }

    /// The repository's ARN, for the execution role's pull policy.
    pub fn repository_arn(&self, partition: &str) -> String {
        format!(
            "arn:{partition}:ecr:{}:{}:repository/{}",
            self.region, self.account, self.repository
        )
    }
}

/// The ECR repositories of prebuilt images outside the project's own repository: the
/// execution role gets pull rights on exactly these (cluster stack parameter).
pub fn extra_pull_repositories(c: &Config, partition: &str) -> Vec<String> {
    let mut arns: Vec<String> = c
        .services
        .values()
        .filter_map(|s| s.image.as_deref().and_then(EcrImage::parse))
        .filter(|i| i.repository != c.names().repository())
        .map(|i| i.repository_arn(partition))
        .collect();
    arns.sort();
    arns.dedup();
    arns
}

/// Local checks: build sources on disk and the rendered task definitions' limits.
pub fn local(loaded: &Loaded) -> Vec<String> {
    let mut p = Vec::new();
    let c = &loaded.config;
    for (name, s) in &c.services {
        if let Some(b) = &s.build {
            build_sources(&loaded.dir, name, b, &mut p);
        }
        let image = s.image.as_deref().unwrap_or(
            // The longest form a built image takes: <account>.dkr.ecr.<region>.amazonaws.com/<repo>@sha256:<64>.
            "123456789012.dkr.ecr.ap-southeast-2.amazonaws.com/placeholder-repository-name-of-some-length@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        );
        let role = format!("arn:aws-us-gov:iam::123456789012:role/{}", "r".repeat(64));
        let td = taskdef::render(&taskdef::RenderInput {
            project: &c.project,
            service_name: name,
            service: s,
            image,
            region: "ap-southeast-2",
            account: "123456789012",
            partition: "aws-us-gov",
            execution_role_arn: &role,
            task_role_arn: &role,
            sink_url: Some("s3://a-bucket-name-of-the-longest-length-allowed-by-s3-63-chars/x/"),
        });
        let size = serde_json::to_vec(&td).map(|v| v.len()).unwrap_or(0);
        if size > TASK_DEFINITION_MAX_BYTES {
            p.push(format!(
                "services.{name}: the rendered task definition is {size} bytes; ECS accepts at most {TASK_DEFINITION_MAX_BYTES} (64 KiB): move large environment values to a file in the image or to secrets"
            ));
        }
    }
    p
}

/// The build context, Dockerfile and prebuild command exist (a prebuild may create the
/// context, so then only the command is checked).
fn build_sources(dir: &Path, name: &str, b: &crate::image::BuildSpec, p: &mut Vec<String>) {
    let k = format!("services.{name}.build");
    let context = dir.join(&b.context);
    if let Some(cmd) = &b.prebuild {
        let program = cmd.split_whitespace().next().unwrap_or("");
        if program.contains('/') {
            let path = dir.join(program);
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => {
                    use std::os::unix::fs::PermissionsExt;
                    if m.permissions().mode() & 0o111 == 0 {
                        p.push(format!(
                            "{k}.prebuild: {} is not executable; run `chmod +x {program}`",
                            path.display()
                        ));
                    }
                }
                _ => p.push(format!(
                    "{k}.prebuild: {} does not exist (paths are relative to the config file's folder)",
                    path.display()
                )),
            }
        }
        return;
    }
    if !context.is_dir() {
        p.push(format!(
            "{k}.context: {} is not a directory (paths are relative to the config file's folder)",
            context.display()
        ));
        return;
    }
    let dockerfile = context.join(&b.dockerfile);
    if std::fs::File::open(&dockerfile).is_err() || !dockerfile.is_file() {
        p.push(format!(
            "{k}.dockerfile: {} is not a readable file inside the context",
            dockerfile.display()
        ));
    }
}

/// Refuse with every problem at once, naming the file.
pub fn refuse(loaded: &Loaded, problems: &[String]) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    let mut msg = format!(
        "{}: cannot be deployed as it is; nothing was changed",
        loaded.path.display()
    );
    for p in problems {
        msg.push_str(&format!("\n  - {p}"));
    }
    Err(Error::bad_input(msg))
}

/// Read-only AWS checks: prebuilt ECR images of this account and region exist.
pub async fn ecr_images(
    c: &Config,
    ecr: &aws_sdk_ecr::Client,
    account: &str,
    region: &str,
) -> Vec<String> {
    let mut p = Vec::new();
    for (name, s) in &c.services {
        let Some(uri) = &s.image else { continue };
        let Some(img) = EcrImage::parse(uri) else {
            continue;
        };
        if img.account != account || img.region != region {
            continue; // another account's or region's registry: not ours to list
        }
        let id = aws_sdk_ecr::types::ImageIdentifier::builder()
            .set_image_digest(img.digest.clone())
            .set_image_tag(if img.digest.is_none() {
                img.tag.clone().or(Some("latest".into()))
            } else {
                None
            })
            .build();
        match ecr
            .describe_images()
            .repository_name(&img.repository)
            .image_ids(id)
            .send()
            .await
        {
            Ok(out) if !out.image_details().is_empty() => {}
            Ok(_) => p.push(format!("services.{name}.image: {uri} is not in ECR")),
            Err(e) => match e.as_service_error() {
                Some(se) if se.is_image_not_found_exception() => p.push(format!(
                    "services.{name}.image: {uri} is not in ECR repository {} (push it first, or fix the tag/digest)",
                    img.repository
                )),
                Some(se) if se.is_repository_not_found_exception() => p.push(format!(
                    "services.{name}.image: ECR repository {} does not exist in {account}/{region}",
                    img.repository
                )),
                _ => p.push(format!(
                    "services.{name}.image: cannot check {uri} in ECR: {}",
                    crate::aws::describe(&e)
                )),
            },
        }
    }
    p
}

/// Read-only AWS check of `network.existing`: the VPC, every subnet and every security group
/// exist in this account and region, and all belong to that VPC. A filter, unlike a list of
/// ids, answers with what exists instead of failing on the first missing id, so one call per
/// kind names every missing or foreign id at once.
pub async fn existing_network(c: &Config, ec2: &aws_sdk_ec2::Client, region: &str) -> Vec<String> {
    use aws_sdk_ec2::types::Filter;
    let Some(e) = &c.network.existing else {
        return Vec::new();
    };
    let mut p = Vec::new();
    let cannot = |what: &str, err: String| {
        format!(
            "network.existing: cannot check the {what} in {region}: {err} (the deploying identity needs ec2:Describe* on them)"
        )
    };
    let filter = |name: &str, ids: &[String]| {
        Filter::builder()
            .name(name)
            .set_values(Some(ids.to_vec()))
            .build()
    };
    match ec2
        .describe_vpcs()
        .filters(filter("vpc-id", std::slice::from_ref(&e.vpc_id)))
        .send()
        .await
    {
        Ok(out) if out.vpcs().is_empty() => p.push(format!(
            "network.existing.vpc_id: VPC {} does not exist in {region} (check the id and the region)",
            e.vpc_id
        )),
        Ok(_) => {}
        Err(err) => p.push(cannot("VPC", crate::aws::describe(&err))),
    }
    // Each lookup as (id, its VPC) pairs, or the reason it could not be made.
    type Found = Result<HashMap<String, Option<String>>, String>;
    let pairs = |items: Vec<(Option<&str>, Option<&str>)>| {
        items
            .into_iter()
            .filter_map(|(id, vpc)| Some((id?.to_string(), vpc.map(str::to_string))))
            .collect()
    };
    let subnets: Found = ec2
        .describe_subnets()
        .filters(filter("subnet-id", &e.subnet_ids))
        .send()
        .await
        .map(|out| {
            pairs(
                out.subnets()
                    .iter()
                    .map(|s| (s.subnet_id(), s.vpc_id()))
                    .collect(),
            )
        })
        .map_err(|err| crate::aws::describe(&err));
    let groups: Found = ec2
        .describe_security_groups()
        .filters(filter("group-id", &e.security_group_ids))
        .send()
        .await
        .map(|out| {
            let groups = out.security_groups().iter();
            pairs(groups.map(|g| (g.group_id(), g.vpc_id())).collect())
        })
        .map_err(|err| crate::aws::describe(&err));
    let lookups = [
        ("subnet_ids", "subnet", "subnets", &e.subnet_ids, subnets),
        (
            "security_group_ids",
            "security group",
            "security groups",
            &e.security_group_ids,
            groups,
        ),
    ];
    for (key, kind, plural, ids, found) in lookups {
        match found {
            Ok(found) => p.extend(belonging(key, kind, ids, &found, &e.vpc_id, region)),
            Err(err) => p.push(cannot(plural, err)),
        }
    }
    p
}

/// Every id in `ids` was found, and in `vpc`; one problem per id that was not.
fn belonging(
    key: &str,
    kind: &str,
    ids: &[String],
    found: &HashMap<String, Option<String>>,
    vpc: &str,
    region: &str,
) -> Vec<String> {
    let mut p = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        match found.get(id).map(Option::as_deref) {
            None => p.push(format!(
                "network.existing.{key}[{i}]: {kind} {id} does not exist in {region}"
            )),
            Some(Some(v)) if v != vpc => p.push(format!(
                "network.existing.{key}[{i}]: {kind} {id} is in {v}, not in network.existing.vpc_id {vpc}; tasks can only use a {kind} of their own VPC"
            )),
            Some(_) => {}
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_uris_parse_and_others_do_not() {
        let i = EcrImage::parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app@sha256:ab")
            .expect("ecr");
        assert_eq!(
            (i.account.as_str(), i.region.as_str(), i.repository.as_str()),
            ("123456789012", "eu-west-1", "team/app")
        );
        assert_eq!(i.digest.as_deref(), Some("sha256:ab"));
        assert_eq!(
            i.repository_arn("aws"),
            "arn:aws:ecr:eu-west-1:123456789012:repository/team/app"
        );
        let t =
            EcrImage::parse("123456789012.dkr.ecr.us-east-1.amazonaws.com/app:v1").expect("ecr");
        assert_eq!(t.tag.as_deref(), Some("v1"));
        assert!(EcrImage::parse("docker.io/library/nginx:1").is_none());
        assert!(EcrImage::parse("ghcr.io/x/y@sha256:1").is_none());
    }

    #[test]
    fn build_sources_are_checked_and_a_prebuild_may_create_the_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = "project: demo\nservices:\n  a:\n    build: {context: missing}\n  b:\n    build: {context: ., dockerfile: nope.Dockerfile}\n  c:\n    build: {context: later, prebuild: scripts/make.sh}\n  d:\n    build: {context: later, prebuild: make image}\n";
        std::fs::write(dir.path().join("deployer.yaml"), yaml).expect("write");
        let loaded = crate::config::load(&dir.path().join("deployer.yaml"), &[]).expect("config");
        let p = local(&loaded);
        assert!(
            p.iter().any(|x| x.starts_with("services.a.build.context:")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|x| x.starts_with("services.b.build.dockerfile:")),
            "{p:?}"
        );
        assert!(
            p.iter().any(
                |x| x.starts_with("services.c.build.prebuild:") && x.contains("does not exist")
            ),
            "{p:?}"
        );
        assert!(
            !p.iter().any(|x| x.starts_with("services.d.")),
            "a command on PATH is not checked: {p:?}"
        );
    }

    #[test]
    fn an_oversized_task_definition_is_refused_before_aws_sees_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = "x".repeat(70 * 1024);
        let yaml = format!(
            "project: demo\nservices:\n  a:\n    image: repo@sha256:1\n    environment: {{BIG: '{big}'}}\n"
        );
        std::fs::write(dir.path().join("deployer.yaml"), yaml).expect("write");
        let loaded = crate::config::load(&dir.path().join("deployer.yaml"), &[]).expect("config");
        let p = local(&loaded);
        assert!(
            p.iter().any(|x| x.contains("ECS accepts at most 65536")),
            "{p:?}"
        );
    }
}
