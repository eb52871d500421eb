//! Transform: quotes -> typed rows -> one Parquet file per Hive partition.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::TimestampMicrosecondArray;
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use uuid::Uuid;

use crate::source::Quote;

#[derive(Debug, Clone, PartialEq)]
pub struct PriceRow {
    pub symbol: String,
    pub currency: String,
    pub price: f64,
    pub observed_at: DateTime<Utc>,
    pub run_id: Uuid,
    pub iteration: u64,
    /// The instance that wrote the row (the lease holder, src/lease.rs): an overlap of two
    /// consumers would show in the data as two holders for one moment.
    pub holder: String,
}

pub fn to_rows(
    quotes: &[Quote],
    observed_at: DateTime<Utc>,
    run_id: Uuid,
    iteration: u64,
    holder: &str,
) -> Vec<PriceRow> {
    quotes
        .iter()
        .map(|q| PriceRow {
            symbol: q.symbol.clone(),
            currency: q.currency.clone(),
            price: q.price,
            observed_at,
            run_id,
            iteration,
            holder: holder.to_string(),
        })
        .collect()
}

/// A Hive partition: `symbol=BTC/date=2026-11-25`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Partition {
    pub symbol: String,
    pub date: String,
}

impl Partition {
    /// Object key below the sink prefix. Named after the run id so a replayed or retried
    /// iteration overwrites its own file instead of adding rows.
    pub fn key(&self, run_id: Uuid) -> String {
        format!(
            "symbol={}/date={}/{run_id}.parquet",
            sanitize(&self.symbol),
            self.date
        )
    }
}

/// Keeps partition values path-safe whatever the API sends as a symbol.
fn sanitize(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The UTC day an iteration belongs to: the time inside its run id (UUIDv7), so a replay of
/// the iteration (same run id, another day) writes the same partition and overwrites its own
/// file; ids without a time (v4, from before v7 ids) fall back to the observation time.
pub fn partition_date(run_id: Uuid, observed_at: DateTime<Utc>) -> String {
    run_id
        .get_timestamp()
        .and_then(|t| {
            let (secs, nanos) = t.to_unix();
            DateTime::<Utc>::from_timestamp(i64::try_from(secs).ok()?, nanos)
        })
        .unwrap_or(observed_at)
        .format("%Y-%m-%d")
        .to_string()
}

pub fn partition(rows: Vec<PriceRow>) -> BTreeMap<Partition, Vec<PriceRow>> {
    let mut parts: BTreeMap<Partition, Vec<PriceRow>> = BTreeMap::new();
    for row in rows {
        let key = Partition {
            symbol: row.symbol.clone(),
            date: partition_date(row.run_id, row.observed_at),
        };
        parts.entry(key).or_default().push(row);
    }
    parts
}

/// File schema. `symbol` and `date` live in the path only: Athena/Glue reject a partition
/// key that is also a file column, and DuckDB/pyarrow add them back from the path.
pub fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("currency", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new(
            "observed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("run_id", DataType::Utf8, false),
        Field::new("iteration", DataType::Int64, false),
        Field::new("holder", DataType::Utf8, false),
    ]))
}

#[derive(Debug, thiserror::Error)]
#[error("encoding Parquet failed: {0}")]
pub struct EncodeError(String);

pub fn to_parquet(rows: &[PriceRow]) -> Result<Vec<u8>, EncodeError> {
    let err = |e: &dyn std::fmt::Display| EncodeError(e.to_string());
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.currency.as_str()),
        )),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.price))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|r| r.observed_at.timestamp_micros()),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.run_id.to_string()),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter()
                .map(|r| i64::try_from(r.iteration).unwrap_or(i64::MAX)),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.holder.as_str()),
        )),
    ];
    let batch = RecordBatch::try_new(schema(), columns).map_err(|e| err(&e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut out = Vec::with_capacity(2048);
    let mut writer =
        ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).map_err(|e| err(&e))?;
    writer.write(&batch).map_err(|e| err(&e))?;
    writer.close().map_err(|e| err(&e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn quotes() -> Vec<Quote> {
        vec![
            Quote {
                symbol: "BTC".into(),
                currency: "USD".into(),
                price: 91234.5,
            },
            Quote {
                symbol: "ETH".into(),
                currency: "USD".into(),
                price: 3000.25,
            },
        ]
    }

    #[test]
    fn rows_carry_run_and_iteration() {
        let run = Uuid::new_v4();
        let t = DateTime::parse_from_rfc3339("2026-11-25T23:59:59Z")
            .unwrap()
            .to_utc();
        let rows = to_rows(&quotes(), t, run, 7, "i-1");
        assert_eq!(rows.len(), 2);
        assert!(
            rows.iter()
                .all(|r| r.run_id == run && r.iteration == 7 && r.observed_at == t)
        );
        let parts = partition(rows);
        let keys: Vec<_> = parts.keys().map(|p| p.key(run)).collect();
        assert_eq!(
            keys,
            vec![
                format!("symbol=BTC/date=2026-11-25/{run}.parquet"),
                format!("symbol=ETH/date=2026-11-25/{run}.parquet"),
            ]
        );
    }

    #[test]
    fn a_replay_across_midnight_lands_in_the_original_partition() {
        // An iteration at 23:59:59 on 2026-11-25 ...
        let original = DateTime::parse_from_rfc3339("2026-11-25T23:59:59Z")
            .unwrap()
            .to_utc();
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(original.timestamp()).unwrap(),
            0,
        );
        let run = Uuid::new_v7(ts);
        // ... replayed the next day: same run id, a new observation time.
        let replayed_at = DateTime::parse_from_rfc3339("2026-11-26T08:00:00Z")
            .unwrap()
            .to_utc();
        let parts = partition(to_rows(&quotes(), replayed_at, run, 1, "i-1"));
        let keys: Vec<_> = parts.keys().map(|p| p.key(run)).collect();
        assert_eq!(
            keys,
            vec![
                format!("symbol=BTC/date=2026-11-25/{run}.parquet"),
                format!("symbol=ETH/date=2026-11-25/{run}.parquet"),
            ]
        );
        // A v4 id has no time: the observation's day.
        assert_eq!(partition_date(Uuid::new_v4(), replayed_at), "2026-11-26");
    }

    /// flows/schema.json is the lake's one source of truth: the writer matches it exactly.
    #[test]
    fn the_writer_matches_the_published_schema() {
        let published: serde_json::Value =
            serde_json::from_str(include_str!("../schema.json")).expect("schema.json");
        let columns: Vec<(String, String)> = published["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or("").to_string(),
                    c["type"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let written: Vec<(String, String)> = schema()
            .fields()
            .iter()
            .map(|f| {
                let ty = match f.data_type() {
                    DataType::Utf8 => "string",
                    DataType::Float64 => "double",
                    DataType::Int64 => "bigint",
                    DataType::Timestamp(TimeUnit::Microsecond, _) => "timestamp",
                    other => panic!("no Glue type for {other:?}"),
                };
                (f.name().clone(), ty.to_string())
            })
            .collect();
        assert_eq!(written, columns);
        let keys: Vec<&str> = published["partition_keys"]
            .as_array()
            .expect("partition keys")
            .iter()
            .filter_map(|k| k["name"].as_str())
            .collect();
        assert_eq!(keys, ["symbol", "date"], "the Hive path: symbol=/date=");
    }

    #[test]
    fn partition_values_are_path_safe() {
        let p = Partition {
            symbol: "../x/y".into(),
            date: "2026-01-01".into(),
        };
        assert!(!p.key(Uuid::nil()).contains(".."));
        assert_eq!(p.key(Uuid::nil()).matches('/').count(), 2);
    }

    #[test]
    fn parquet_round_trips() {
        let run = Uuid::new_v4();
        let t = Utc::now();
        let rows = to_rows(&quotes(), t, run, 3, "i-1");
        let bytes = to_parquet(&rows).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
        assert_eq!(
            batches
                .iter()
                .map(arrow_array::RecordBatch::num_rows)
                .sum::<usize>(),
            2
        );
        let b = &batches[0];
        let price = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(price.value(0), 91234.5);
        let ts = b
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(ts.value(1), t.timestamp_micros());
        assert_eq!(ts.timezone(), Some("UTC"));
        assert!(!price.is_null(0));
    }
}
