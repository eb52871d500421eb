//! Load: put Parquet objects into the data lake (S3 or a local folder).
//!
//! S3 is one `PutObject` over the flow's own HTTP client, to a URL presigned by the sans-IO
//! `rusty-s3` crate, rather than aws-sdk-s3 + aws-config: the SDK roughly doubled the static
//! binary and its resident memory for a single call. Credentials come from the environment
//! (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`) or, on ECS/Fargate, from
//! the task role through the container credentials endpoint
//! (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `_FULL_URI`). Region: `AWS_REGION` or
//! `AWS_DEFAULT_REGION` (default us-east-1). `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL` override
//! the endpoint (path-style addressing then, as MinIO and moto expect).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusty_s3::actions::{PutObject, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};

use crate::config::SinkKind;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing s3://{bucket}/{key} failed: {reason}")]
    S3 {
        bucket: String,
        key: String,
        reason: String,
    },
    #[error("writing {path} failed: {reason}")]
    File { path: String, reason: String },
}

pub enum Sink {
    S3(Box<S3Sink>),
    File { root: PathBuf },
}

impl Sink {
    pub fn new(kind: &SinkKind) -> Result<Sink, crate::http::ClientError> {
        Ok(match kind {
            SinkKind::S3 { bucket, prefix } => {
                Sink::S3(Box::new(S3Sink::from_env(bucket.clone(), prefix.clone())?))
            }
            SinkKind::File { root } => Sink::File { root: root.clone() },
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Sink::S3(s) => format!("s3://{}/{}", s.bucket_name, s.prefix),
            Sink::File { root } => format!("file://{}", root.display()),
        }
    }

    /// Writes (or overwrites) one object. Returns its full location.
    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<String, SinkError> {
        match self {
            Sink::S3(s) => s.put(key, body).await,
            Sink::File { root } => {
                let path = root.join(key);
                let fail = |e: std::io::Error| SinkError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                };
                // tokio::fs: a slow disk (a network mount) must not stall the reporter and
                // the lease, which share this one-thread runtime.
                if let Some(dir) = path.parent() {
                    tokio::fs::create_dir_all(dir).await.map_err(fail)?;
                }
                // Write then rename: readers never see a half-written file, and a replay
                // replaces the old file atomically.
                let tmp = path.with_extension(format!("parquet.tmp-{}", std::process::id()));
                tokio::fs::write(&tmp, &body).await.map_err(fail)?;
                tokio::fs::rename(&tmp, &path).await.map_err(fail)?;
                Ok(format!("file://{}", path.display()))
            }
        }
    }
}

/// Credentials from the container endpoint, kept until shortly before they expire.
struct Cached {
    creds: Credentials,
    expires: DateTime<Utc>,
}

pub struct S3Sink {
    http: reqwest::Client,
    bucket_name: String,
    prefix: String,
    /// Err: the bucket/endpoint cannot form a URL; reported by every put.
    bucket: Result<Bucket, String>,
    cached: Mutex<Option<Cached>>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Path-style on an explicit endpoint (moto, MinIO), virtual-hosted style on AWS.
fn bucket(name: &str, region: &str, endpoint: Option<reqwest::Url>) -> Result<Bucket, String> {
    let (url, style) = match endpoint {
        Some(ep) => (ep, UrlStyle::Path),
        None => (
            reqwest::Url::parse(&format!("https://s3.{region}.amazonaws.com"))
                .map_err(|_| format!("invalid region {region:?}"))?,
            UrlStyle::VirtualHost,
        ),
    };
    Bucket::new(url, style, name.to_string(), region.to_string())
        .map_err(|e| format!("invalid S3 bucket or endpoint: {e}"))
}

const CONTENT_TYPE: &str = "application/vnd.apache.parquet";

/// A presigned `PutObject` URL. It carries a signature: never log it.
fn presign_put(bucket: &Bucket, creds: &Credentials, key: &str) -> reqwest::Url {
    let mut action = PutObject::new(bucket, Some(creds), key);
    action.headers_mut().insert("content-type", CONTENT_TYPE);
    // Used at once; a few minutes leave room for clock skew and a slow upload start.
    action.sign(Duration::from_secs(300))
}

impl S3Sink {
    fn from_env(bucket_name: String, prefix: String) -> Result<Self, crate::http::ClientError> {
        let endpoint = env("AWS_ENDPOINT_URL_S3")
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .and_then(|u| reqwest::Url::parse(&u).ok());
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let http =
            crate::http::client("S3", Duration::from_secs(30), Duration::from_secs(5), |b| b)?;
        Ok(S3Sink {
            http,
            bucket: bucket(&bucket_name, &region, endpoint),
            bucket_name,
            prefix,
            cached: Mutex::new(None),
        })
    }

    fn fail(&self, key: &str, reason: String) -> SinkError {
        SinkError::S3 {
            bucket: self.bucket_name.clone(),
            key: key.to_string(),
            reason,
        }
    }

    async fn credentials(&self) -> Result<Credentials, String> {
        if let Some(c) = Credentials::from_env() {
            return Ok(c);
        }
        if let Some(c) = &*self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            && c.expires - chrono::TimeDelta::minutes(5) > Utc::now()
        {
            return Ok(c.creds.clone());
        }
        let (creds, expires) = self.container_credentials().await?;
        if let Some(expires) = expires {
            *self
                .cached
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Cached {
                creds: creds.clone(),
                expires,
            });
        }
        Ok(creds)
    }

    /// The ECS task role, from the container credentials endpoint.
    async fn container_credentials(&self) -> Result<(Credentials, Option<DateTime<Utc>>), String> {
        let url = if let Some(rel) = env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
            format!("http://169.254.170.2{rel}")
        } else if let Some(full) = env("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            full
        } else {
            return Err(
                "no AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or run \
                        with an ECS task role (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI)"
                    .into(),
            );
        };
        let mut req = self.http.get(&url).timeout(Duration::from_secs(5));
        let token = match env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
            Some(path) => tokio::fs::read_to_string(path).await.ok(),
            None => env("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        };
        if let Some(t) = token {
            req = req.header("Authorization", t.trim());
        }
        let resp = req.send().await.map_err(|e| {
            format!(
                "container credentials endpoint: {}",
                crate::logs::http_error(e)
            )
        })?;
        if !resp.status().is_success() {
            return Err(format!(
                "container credentials endpoint answered HTTP {}",
                resp.status().as_u16()
            ));
        }
        let v: serde_json::Value = crate::body::json_capped(resp, crate::body::SMALL)
            .await
            .map_err(|e| format!("container credentials: {e}"))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|x| !x.is_empty());
        let key = field("AccessKeyId").ok_or("container credentials lack AccessKeyId")?;
        let secret =
            field("SecretAccessKey").ok_or("container credentials lack SecretAccessKey")?;
        let creds = match field("Token") {
            Some(token) => Credentials::new_with_token(key, secret, token),
            None => Credentials::new(key, secret),
        };
        let expires = field("Expiration")
            .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
            .map(|e| e.to_utc());
        Ok((creds, expires))
    }

    async fn put(&self, key: &str, body: Vec<u8>) -> Result<String, SinkError> {
        let key = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        let bucket = self
            .bucket
            .as_ref()
            .map_err(|e| self.fail(&key, e.clone()))?;
        let creds = self.credentials().await.map_err(|e| self.fail(&key, e))?;
        let url = presign_put(bucket, &creds, &key);
        let resp = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(reqwest::header::CONTENT_LENGTH, body.len())
            .body(body)
            .send()
            .await
            // http_error drops the (presigned) URL.
            .map_err(|e| self.fail(&key, crate::logs::http_error(e)))?;
        let status = resp.status();
        if !status.is_success() {
            let text = crate::body::text_capped(resp, crate::body::SMALL)
                .await
                .unwrap_or_default();
            let code = xml_tag(&text, "Code").unwrap_or("no error code");
            let msg = xml_tag(&text, "Message").unwrap_or("");
            return Err(self.fail(
                &key,
                format!("HTTP {}: {code} {msg}", status.as_u16())
                    .trim()
                    .to_string(),
            ));
        }
        Ok(format!("s3://{}/{key}", self.bucket_name))
    }
}

fn xml_tag<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let start = text.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    Some(&text[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_sink_overwrites_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::new(&SinkKind::File {
            root: dir.path().to_path_buf(),
        })
        .unwrap();
        let loc = sink
            .put("symbol=BTC/date=2026-01-01/a.parquet", vec![1, 2])
            .await
            .unwrap();
        sink.put("symbol=BTC/date=2026-01-01/a.parquet", vec![3])
            .await
            .unwrap();
        let path = loc.strip_prefix("file://").unwrap();
        assert_eq!(std::fs::read(path).unwrap(), vec![3]);
        let n = std::fs::read_dir(dir.path().join("symbol=BTC/date=2026-01-01"))
            .unwrap()
            .count();
        assert_eq!(n, 1, "no temp files left behind");
    }

    #[test]
    fn presigned_put_carries_the_credential_scope_and_session_token() {
        let creds = Credentials::new_with_token("AKIDEXAMPLE", "secret", "session/token+1=");
        let b = bucket("lake", "eu-west-1", None).unwrap();
        let url = presign_put(&b, &creds, "crypto/symbol=BTC/date=2026-01-01/a b.parquet");
        assert_eq!(url.host_str(), Some("lake.s3.eu-west-1.amazonaws.com"));
        assert_eq!(
            url.path(),
            "/crypto/symbol%3DBTC/date%3D2026-01-01/a%20b.parquet"
        );
        let q: std::collections::HashMap<_, _> = url.query_pairs().collect();
        let today = Utc::now().format("%Y%m%d");
        assert_eq!(
            q["X-Amz-Credential"],
            format!("AKIDEXAMPLE/{today}/eu-west-1/s3/aws4_request")
        );
        assert_eq!(q["X-Amz-Security-Token"], "session/token+1=");
        assert_eq!(q["X-Amz-SignedHeaders"], "content-type;host");
        assert!(q.contains_key("X-Amz-Signature"));

        let ep = reqwest::Url::parse("http://127.0.0.1:5000").unwrap();
        let b = bucket("lake", "us-east-1", Some(ep)).unwrap();
        let url = presign_put(&b, &Credentials::new("AKIDEXAMPLE", "secret"), "k.parquet");
        assert_eq!(url.authority(), "127.0.0.1:5000");
        assert_eq!(url.path(), "/lake/k.parquet");
        assert!(!url.as_str().contains("X-Amz-Security-Token"));
    }

    #[test]
    fn s3_error_codes_are_extracted() {
        let body = "<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(xml_tag(body, "Code"), Some("NoSuchBucket"));
        assert_eq!(xml_tag(body, "Nope"), None);
    }
}
