//! The data lake as part of the deployment (`data_lake.create: true`, templates/data.yaml).
//!
//! - The Glue table's columns and partition keys equal the flow's published schema
//!   (flows/schema.json; the flow's writer is tested against the same file in
//!   flows/src/transform.rs).
//! - Against moto: `up` creates the bucket (moto's CloudFormation applies its encryption and
//!   tags; the public access block, versioning and bucket policy are not modelled there, so
//!   they are checked on the template by cfn-lint in scripts/test.sh) and points every
//!   service's SINK_URL at it; `destroy` deletes everything else and never an object of the
//!   lake; a later `up` adopts the retained bucket; `destroy --delete-data --yes` removes it.
//!   moto does not model Glue through CloudFormation: the table is checked on the template.

mod support;

use support::{Run, deployer_command, moto_url};

fn template_columns(block: &str) -> Vec<(String, String)> {
    let text = include_str!("../templates/data.yaml");
    let start = text.find(&format!("{block}:")).expect("block in template");
    text[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.trim_start().starts_with("- {Name:"))
        .map(|l| {
            let inner = l.trim().trim_start_matches("- {").trim_end_matches('}');
            let mut name = String::new();
            let mut ty = String::new();
            for part in inner.split(',') {
                let (k, v) = part.split_once(':').expect("key: value");
                match k.trim() {
                    "Name" => name = v.trim().to_string(),
                    "Type" => ty = v.trim().to_string(),
                    _ => {}
                }
            }
            (name, ty)
        })
        .collect()
}

fn schema(key: &str) -> Vec<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("../flows/schema.json")).expect("schema.json");
    v[key]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_string(),
                c["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn the_table_is_the_flows_published_schema() {
    assert_eq!(template_columns("Columns"), schema("columns"));
    assert_eq!(template_columns("PartitionKeys"), schema("partition_keys"));
    let text = include_str!("../templates/data.yaml");
    for needle in [
        "DeletionPolicy: Retain",
        "UpdateReplacePolicy: Retain",
        "projection.enabled: \"true\"",
        "symbol=${!symbol}/date=${!date}/",
        "aws:SecureTransport: \"false\"",
        "Status: Enabled",
    ] {
        assert!(text.contains(needle), "the data template lacks {needle}");
    }
}

fn run(dir: &std::path::Path, args: &[&str]) -> Run {
    Run::from(
        deployer_command(dir, args, &moto_url())
            .output()
            .expect("run deployer"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lake_outlives_destroy_is_adopted_again_and_deleted_only_when_asked() {
    let name = support::unique("it-lake");
    let image = support::moto_ecr_image("flow");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("deployer.yaml"),
        format!(
            "project: {name}\nregion: us-east-1\ndata_lake: {{create: true, prefix: crypto/}}\nservices:\n  flow:\n    image: {image}\n"
        ),
    )
    .expect("write");
    let up = run(dir.path(), &["up", "--json"]).expect(0).json();
    let bucket = format!("{name}-data-123456789012-us-east-1");
    assert!(
        up["stacks"].to_string().contains(&format!("{name}-data")),
        "{up:#}"
    );
    let cl = support::clients().await;
    let tags = cl
        .s3_data
        .get_bucket_tagging()
        .bucket(&bucket)
        .send()
        .await
        .expect("the bucket exists, tagged");
    assert!(
        tags.tag_set()
            .iter()
            .any(|t| t.key() == "project" && t.value() == name)
    );
    let enc = cl
        .s3_data
        .get_bucket_encryption()
        .bucket(&bucket)
        .send()
        .await
        .expect("encrypted");
    assert!(enc.server_side_encryption_configuration().is_some());
    // Every service writes there without repeating the bucket in the config.
    let td = cl
        .ecs
        .describe_task_definition()
        .task_definition(format!("{name}-flow"))
        .send()
        .await
        .expect("task definition");
    let env = td
        .task_definition()
        .and_then(|t| t.container_definitions().first())
        .map(|c| c.environment().to_vec())
        .unwrap_or_default();
    assert!(
        env.iter().any(|kv| kv.name() == Some("SINK_URL")
            && kv.value() == Some(format!("s3://{bucket}/crypto/").as_str())),
        "{env:?}"
    );
    for i in 0..3 {
        cl.s3_data
            .put_object()
            .bucket(&bucket)
            .key(format!("crypto/symbol=BTC/date=2026-12-06/{i}.parquet"))
            .body(vec![1u8, 2, 3].into())
            .send()
            .await
            .expect("put");
    }

    let gone = run(dir.path(), &["destroy", "--yes"]).expect(0);
    assert!(
        gone.stdout
            .contains(&format!("kept the data lake: s3://{bucket}/ (3 object(s))")),
        "{}",
        gone.stdout
    );
    assert!(gone.stdout.contains("--delete-data"), "{}", gone.stdout);
    let left = cl
        .s3_data
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("the bucket outlived destroy");
    assert_eq!(left.contents().len(), 3, "destroy deleted an object");

    // A later `up` adopts the retained bucket instead of failing on "already exists".
    run(dir.path(), &["up"]).expect(0);
    let data = cl
        .cfn
        .describe_stacks()
        .stack_name(format!("{name}-data"))
        .send()
        .await
        .expect("data stack again");
    let adopted = data.stacks()[0]
        .parameters()
        .iter()
        .any(|p| p.parameter_key() == Some("CreateBucket") && p.parameter_value() == Some("false"));
    assert!(adopted, "the second data stack adopts the bucket");

    let deleted = run(dir.path(), &["destroy", "--yes", "--delete-data", "--json"])
        .expect(0)
        .json();
    assert_eq!(deleted["data_lake"]["deleted"], true, "{deleted:#}");
    assert!(
        cl.s3_data
            .head_bucket()
            .bucket(&bucket)
            .send()
            .await
            .is_err(),
        "--delete-data removes the bucket"
    );
}

/// A bucket of the lake's name that the deployer did not make is refused before any change.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_bucket_of_the_same_name_is_refused() {
    let name = support::unique("it-lakef");
    let image = support::moto_ecr_image("flow");
    let bucket = format!("{name}-data-123456789012-us-east-1");
    let cl = support::clients().await;
    cl.s3_data
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("someone else's bucket");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("deployer.yaml"),
        format!("project: {name}\nregion: us-east-1\ndata_lake: {{create: true}}\nservices:\n  flow:\n    image: {image}\n"),
    )
    .expect("write");
    let r = run(dir.path(), &["up", "--json"]).expect(2);
    assert!(r.stderr.contains("is not the deployer's"), "{}", r.stderr);
    let mutating = &r.json()["api_calls"]["mutating"];
    assert!(
        mutating.as_object().is_some_and(serde_json::Map::is_empty),
        "{mutating}"
    );
}
