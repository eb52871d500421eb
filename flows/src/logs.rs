//! Structured JSON log lines on stdout (CloudWatch reads them one event per line).

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

/// Python's numeric levels (debug is never emitted), because Prefect stores log levels that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Level {
    Info = 20,
    Warning = 30,
    Error = 40,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
        }
    }
}

pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Writes one JSON object per line. `fields` must be a JSON object (or null).
pub fn emit(level: Level, message: &str, fields: Value) {
    emit_at(Utc::now(), level, message, fields);
}

pub fn emit_at(at: DateTime<Utc>, level: Level, message: &str, fields: Value) {
    let mut line = Map::new();
    line.insert("ts".into(), Value::String(timestamp(at)));
    line.insert("level".into(), Value::String(level.as_str().into()));
    line.insert("msg".into(), Value::String(message.into()));
    if let Value::Object(extra) = fields {
        for (k, v) in extra {
            line.insert(k, v);
        }
    }
    let mut text = Value::Object(line).to_string();
    text.push('\n');
    // One write call per line keeps lines whole when tasks log concurrently.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

pub fn info(message: &str, fields: Value) {
    emit(Level::Info, message, fields);
}

pub fn warn(message: &str, fields: Value) {
    emit(Level::Warning, message, fields);
}

pub fn error(message: &str, fields: Value) {
    emit(Level::Error, message, fields);
}

/// A reqwest error with its causes ("error sending request: ... invalid peer certificate:
/// UnknownIssuer"), without the URL (it may carry an API key or a webhook secret).
pub fn http_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
