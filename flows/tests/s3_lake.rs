//! The S3 sink against moto: Hive-partitioned Parquet read back, replays overwrite.
//! Needs scripts/test.sh (DEPLOYER_TEST_MOTO_URL).

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(60);

async fn s3() -> aws_sdk_s3::Client {
    let endpoint = moto_url();
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&conf)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

async fn read_bucket(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Vec<(String, Vec<Row>)> {
    let list = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    let mut out = Vec::new();
    for obj in list.contents() {
        let key = obj.key().unwrap().to_string();
        let body = s3
            .get_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        let bytes = body.body.collect().await.unwrap().into_bytes();
        out.push((key.clone(), read_parquet(&key, bytes)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn s3_env(sink: String, price: &PriceApi) -> Vec<(&'static str, String)> {
    vec![
        ("SINK_URL", sink),
        ("SOURCE_URL", price.url.clone()),
        ("AWS_ENDPOINT_URL", moto_url()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_lake_holds_partitioned_parquet_and_a_replay_leaves_no_duplicates() {
    let s3 = s3().await;
    let bucket = unique("ps-lake");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let price = PriceApi::start(91234.5, 3000.25).await;
    let sink = format!("s3://{bucket}/crypto");

    let mut p = spawn(&s3_env(sink.clone(), &price), &["--iterations", "2"]);
    assert_eq!(p.exit_code(WAIT).await, 0);
    let files = read_bucket(&s3, &bucket, "crypto/").await;
    assert_eq!(
        files.len(),
        4,
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (key, rows) in &files {
        // crypto/symbol=BTC/date=YYYY-MM-DD/<run id>.parquet
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 4, "{key}");
        assert!(
            parts[1].starts_with("symbol=") && parts[2].starts_with("date="),
            "{key}"
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(parts[3], format!("{}.parquet", rows[0].run_id));
    }
    let all: Vec<&Row> = files.iter().flat_map(|f| &f.1).collect();
    assert_eq!(
        all.iter()
            .filter(|r| r.symbol == "BTC" && r.price == 91234.5)
            .count(),
        2
    );
    assert_eq!(
        all.iter()
            .filter(|r| r.symbol == "ETH" && r.price == 3000.25)
            .count(),
        2
    );

    // Replay the first run with a new price: its files are replaced, nothing is added.
    let replayed = all[0].run_id.clone();
    price.set_btc(80_000.0);
    let mut p = spawn(&s3_env(sink, &price), &["--replay", &replayed]);
    assert_eq!(p.exit_code(WAIT).await, 0);
    let files = read_bucket(&s3, &bucket, "crypto/").await;
    assert_eq!(files.len(), 4, "replay must overwrite, not add");
    let all: Vec<&Row> = files.iter().flat_map(|f| &f.1).collect();
    assert_eq!(all.len(), 4, "no duplicate rows");
    let of_run: Vec<&&Row> = all.iter().filter(|r| r.run_id == replayed).collect();
    assert_eq!(of_run.len(), 2);
    assert_eq!(
        of_run.iter().find(|r| r.symbol == "BTC").unwrap().price,
        80_000.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_bucket_fails_the_load_task_and_the_process_keeps_going() {
    let price = PriceApi::start(91234.5, 3000.25).await;
    let sink = format!("s3://{}/x", unique("ps-nobucket"));
    let mut p = spawn(&s3_env(sink, &price), &["--iterations", "2"]);
    let line = p.wait_iteration(WAIT).await;
    assert_eq!(line["state"], "FAILED");
    assert!(
        line["msg"].as_str().unwrap().contains("NoSuchBucket"),
        "{line}"
    );
    assert_eq!(p.exit_code(WAIT).await, 0);
}

/// On ECS the task role's credentials come from the container credentials endpoint; they are
/// fetched once and reused until shortly before they expire.
#[tokio::test(flavor = "multi_thread")]
async fn s3_sink_uses_ecs_container_credentials_and_caches_them() {
    let s3 = s3().await;
    let bucket = unique("ps-ecs");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let price = PriceApi::start(91234.5, 3000.25).await;
    let fetches = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let f = fetches.clone();
    let expires = (chrono::Utc::now() + chrono::TimeDelta::hours(6)).to_rfc3339();
    let creds = serve(std::sync::Arc::new(move |req: &Request| {
        f.lock().unwrap().push(req.path.clone());
        Response {
            status: 200,
            body: serde_json::json!({
                "AccessKeyId": "ASIATESTROLE", "SecretAccessKey": "role-secret",
                "Token": "role-session-token", "Expiration": expires,
            })
            .to_string(),
            delay: Duration::ZERO,
        }
    }))
    .await;
    let env = vec![
        ("SINK_URL", format!("s3://{bucket}/crypto")),
        ("SOURCE_URL", price.url.clone()),
        ("AWS_ENDPOINT_URL", moto_url()),
        ("AWS_REGION", "us-east-1".into()),
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{creds}/v2/credentials/task"),
        ),
    ];
    let mut p = spawn(&env, &["--iterations", "3"]);
    assert_eq!(p.exit_code(WAIT).await, 0);
    let files = read_bucket(&s3, &bucket, "crypto/").await;
    assert_eq!(files.len(), 6, "3 iterations x 2 symbols");
    assert_eq!(
        fetches.lock().unwrap().clone(),
        vec!["/v2/credentials/task".to_string()],
        "credentials fetched once for 6 uploads"
    );
    let out = p.stdout_text();
    assert!(!out.contains("role-secret") && !out.contains("role-session-token"));

    // Without any credentials source the load task fails with an actionable message.
    let env = vec![
        ("SINK_URL", format!("s3://{bucket}/crypto")),
        ("SOURCE_URL", price.url.clone()),
        ("AWS_ENDPOINT_URL", moto_url()),
    ];
    let mut p = spawn(&env, &["--iterations", "1"]);
    let line = p.wait_iteration(WAIT).await;
    assert_eq!(line["state"], "FAILED");
    assert!(
        line["msg"].as_str().unwrap().contains("no AWS credentials"),
        "{line}"
    );
    assert_eq!(p.exit_code(WAIT).await, 0);
}
