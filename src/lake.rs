//! The data lake (`data_lake:`): where it is, the data stack that makes it (bucket + Glue
//! table, templates/data.yaml), adopting a bucket an earlier stack retained, and deleting it
//! only when asked (`destroy --delete-data`). User data is never deleted by accident: the
//! bucket has DeletionPolicy Retain, so deleting the stack leaves it and its objects.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::names::StackPart;
use crate::stacks::{self, StackSpec, templates};
use crate::ui::Ui;
use serde::Serialize;
use std::collections::BTreeMap;

/// Where the flows write: bucket and prefix, and whether the deployer owns the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub bucket: String,
    pub prefix: String,
    /// The bucket is made (and retained) by the data stack.
    pub managed: bool,
}

impl Location {
    /// `s3://bucket/prefix`: the services' SINK_URL.
    pub fn sink_url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// The lake of a config, given the deploying account and region.
pub fn location(c: &Config, account: &str, region: &str) -> Option<Location> {
    let lake = c.data_lake.as_ref()?;
    Some(Location {
        bucket: lake.bucket_name(&c.project, account, region),
        prefix: lake.prefix.clone(),
        managed: lake.create,
    })
}

/// The table name, from flows/schema.json (the one source of the lake's columns).
pub fn table_name() -> String {
    serde_json::from_str::<serde_json::Value>(SCHEMA)
        .ok()
        .and_then(|v| v["table"].as_str().map(str::to_string))
        .unwrap_or_else(|| "prices".into())
}

/// The flow's published schema (columns and partition keys of every Parquet file).
pub const SCHEMA: &str = include_str!("../flows/schema.json");

/// The data stack, when the deployer makes the lake. `create_bucket` is false when adopting a
/// bucket an earlier stack retained.
pub fn data_spec(c: &Config, loc: &Location, create_bucket: bool) -> Option<StackSpec> {
    let lake = c.data_lake.as_ref().filter(|l| l.create)?;
    let params = [
        ("Project", c.project.clone()),
        ("BucketName", loc.bucket.clone()),
        ("CreateBucket", create_bucket.to_string()),
        ("Prefix", loc.prefix.clone()),
        ("DatabaseName", c.names().glue_database()),
        ("TableName", table_name()),
        ("Symbols", lake.symbol_values(&c.services).join(",")),
        (
            "NoncurrentVersionDays",
            lake.noncurrent_version_days.to_string(),
        ),
    ];
    Some(StackSpec {
        name: c.names().stack(StackPart::Data),
        template: templates::DATA,
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        tags: stacks::project_tags(&c.project),
    })
}

/// Before the data stack is created: make the bucket, or adopt the one an earlier stack
/// retained (it carries the project's tags). A bucket of that name that is not ours is bad
/// input: nothing is changed.
pub async fn create_bucket(
    s3: &aws_sdk_s3::Client,
    cfn: &aws_sdk_cloudformation::Client,
    c: &Config,
    loc: &Location,
) -> Result<bool> {
    if let Some(live) = stacks::describe(cfn, &c.names().stack(StackPart::Data)).await? {
        // The stack exists: keep what it does today.
        return Ok(live
            .parameters
            .get("CreateBucket")
            .is_none_or(|v| v == "true"));
    }
    match s3.get_bucket_tagging().bucket(&loc.bucket).send().await {
        Ok(out) => {
            let tags: BTreeMap<String, String> = out
                .tag_set()
                .iter()
                .map(|t| (t.key().to_string(), t.value().to_string()))
                .collect();
            if stacks::owned_by(&tags, &c.project) {
                Ok(false)
            } else {
                Err(taken(&loc.bucket, &c.project))
            }
        }
        Err(e) => {
            let code = e.as_service_error().and_then(|se| {
                aws_sdk_s3::error::ProvideErrorMetadata::code(se).map(str::to_string)
            });
            match code.as_deref() {
                Some("NoSuchBucket") => Ok(true),
                // A bucket without tags, or someone else's.
                Some("NoSuchTagSet" | "AccessDenied" | "AllAccessDisabled") => {
                    Err(taken(&loc.bucket, &c.project))
                }
                _ if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(true),
                _ => Err(crate::aws::failure(
                    &format!("cannot check bucket {}", loc.bucket),
                    e,
                )),
            }
        }
    }
}

fn taken(bucket: &str, project: &str) -> Error {
    Error::bad_input(format!(
        "data_lake: bucket {bucket} exists but is not the deployer's for project {project} (its tags say otherwise); nothing was changed"
    ))
    .with_help("set data_lake.bucket to another name, or data_lake.create: false to use that bucket as it is")
}

/// What `destroy` left of the lake, or deleted with `--delete-data`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Kept {
    pub bucket: String,
    pub objects: u64,
    pub deleted: bool,
}

/// Count the objects (current versions) of a bucket; None when it does not exist.
pub async fn count_objects(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<Option<u64>> {
    let mut n = 0u64;
    let mut token = None;
    loop {
        let out = match s3
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e)
                if e.as_service_error().is_some_and(
                    aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error::is_no_such_bucket,
                ) =>
            {
                return Ok(None);
            }
            Err(e) => {
                return Err(crate::aws::failure(&format!("list bucket {bucket}"), e));
            }
        };
        n += out.contents().len() as u64;
        token = out.next_continuation_token().map(str::to_string);
        if token.is_none() {
            return Ok(Some(n));
        }
    }
}

/// Empty the bucket (every version and delete marker: it is versioned) and delete it.
pub async fn delete_bucket(s3: &aws_sdk_s3::Client, bucket: &str, ui: &Ui) -> Result<u64> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    let fail = |what: &str, e: String| Error::failure(format!("{what} {bucket}: {e}"));
    let mut deleted = 0u64;
    loop {
        let out = s3
            .list_object_versions()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| fail("list versions of", crate::aws::describe(&e)))?;
        let ids: Vec<ObjectIdentifier> = out
            .versions()
            .iter()
            .map(|v| (v.key(), v.version_id()))
            .chain(
                out.delete_markers()
                    .iter()
                    .map(|m| (m.key(), m.version_id())),
            )
            .filter_map(|(k, v)| {
                ObjectIdentifier::builder()
                    .key(k?)
                    .set_version_id(v.map(str::to_string))
                    .build()
                    .ok()
            })
            .collect();
        if ids.is_empty() {
            break;
        }
        for chunk in ids.chunks(1000) {
            let del = Delete::builder()
                .set_objects(Some(chunk.to_vec()))
                .quiet(true)
                .build()
                .map_err(|e| fail("delete objects of", e.to_string()))?;
            let r = s3
                .delete_objects()
                .bucket(bucket)
                .delete(del)
                .send()
                .await
                .map_err(|e| fail("delete objects of", crate::aws::describe(&e)))?;
            if let Some(err) = r.errors().first() {
                return Err(fail(
                    "delete objects of",
                    format!(
                        "{}: {}",
                        err.key().unwrap_or("?"),
                        err.message().unwrap_or("refused")
                    ),
                ));
            }
            deleted += chunk.len() as u64;
        }
    }
    s3.delete_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| fail("delete bucket", crate::aws::describe(&e)))?;
    ui.step(format!(
        "deleted the data lake bucket {bucket} ({deleted} object version(s))"
    ));
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        crate::config::parse(
            &format!("project: demo-lake\n{extra}services:\n  web:\n    image: i\n    environment: {{SOURCE_URL: 'https://x/data?fsyms=btc,ETH,Dash&tsyms=USD'}}\n"),
            Path::new("t.yaml"),
            &[],
        )
        .expect("valid")
    }

    #[test]
    fn a_created_lake_is_named_per_account_and_region_and_its_symbols_come_from_the_source() {
        let c = config("data_lake: {create: true, prefix: crypto/}\n");
        let loc = location(&c, "123456789012", "eu-west-1").expect("lake");
        assert_eq!(loc.bucket, "demo-lake-data-123456789012-eu-west-1");
        assert_eq!(
            loc.sink_url(),
            "s3://demo-lake-data-123456789012-eu-west-1/crypto/"
        );
        let spec = data_spec(&c, &loc, true).expect("data stack");
        assert_eq!(spec.name, "demo-lake-data");
        assert_eq!(spec.parameters["Symbols"], "BTC,DASH,ETH");
        assert_eq!(spec.parameters["DatabaseName"], "demo_lake");
        let mut declared = crate::stacks::templates::parameters(spec.template);
        declared.sort();
        assert_eq!(
            declared,
            spec.parameters.keys().cloned().collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_existing_bucket_has_no_data_stack() {
        let c = config("data_lake: {bucket: mine, prefix: x/}\n");
        let loc = location(&c, "1", "r").expect("lake");
        assert_eq!((loc.bucket.as_str(), loc.managed), ("mine", false));
        assert!(data_spec(&c, &loc, true).is_none());
    }
}
