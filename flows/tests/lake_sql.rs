//! "Validate the data": a lake the real flow wrote is read by DuckDB through exactly the Glue
//! table's partitioning (Hive `symbol=`/`date=` folders, scripts/validate-lake.py, the query
//! README.md shows for Athena), and every row is found. Needs scripts/test.sh
//! (DEPLOYER_TEST_DUCKDB_PYTHON: a Python with the pinned duckdb).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn duckdb_reads_every_row_the_flow_wrote_through_the_tables_partitioning() {
    let python = required_env("DEPLOYER_TEST_DUCKDB_PYTHON");
    let price = PriceApi::start(91000.0, 3000.0).await;
    let mut p = spawn(&[("SOURCE_URL", price.url.clone())], &["--iterations", "4"]);
    assert_eq!(p.exit_code(Duration::from_secs(60)).await, 0);
    let files = read_lake(&p.lake());
    let rows: usize = files.iter().map(|(_, r)| r.len()).sum();
    assert_eq!(rows, 8, "4 iterations x 2 symbols");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/validate-lake.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(p.lake())
        .arg("--json")
        .output()
        .expect("run duckdb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json rows");
    let by_symbol: Vec<(String, i64, i64)> = result
        .iter()
        .map(|r| {
            (
                r["symbol"].as_str().unwrap_or("").to_string(),
                r["rows"].as_i64().unwrap_or(0),
                r["runs"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        by_symbol,
        vec![("BTC".to_string(), 4, 4), ("ETH".to_string(), 4, 4)],
        "{result:?}"
    );
    assert!(result[0]["low"].as_f64().is_some_and(|v| v > 0.0));
}
