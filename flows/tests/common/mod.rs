//! Shared test support: the environment scripts/test.sh provides, local stand-ins for the
//! price API and the Slack webhook, a Prefect read client, and the spawned binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Reads a variable the test harness must set; never lets a test pass silently without it.
pub fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => panic!(
            "{name} is not set: these tests need the real services; run scripts/test.sh \
             (it starts Prefect and moto and exports DEPLOYER_TEST_PREFECT_URL / DEPLOYER_TEST_MOTO_URL)"
        ),
    }
}

pub fn prefect_url() -> String {
    required_env("DEPLOYER_TEST_PREFECT_URL")
        .trim_end_matches('/')
        .to_string()
}

pub fn moto_url() -> String {
    required_env("DEPLOYER_TEST_MOTO_URL")
        .trim_end_matches('/')
        .to_string()
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

// ---------------------------------------------------------------- tiny HTTP server

/// One parsed request: method, path, body.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

pub struct Response {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Serves HTTP/1.1 on 127.0.0.1:0, one request per connection (Connection: close).
pub async fn serve(handler: Handler) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let header_end = loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
                let mut lines = head.lines();
                let mut first = lines.next().unwrap_or("").split_whitespace();
                let method = first.next().unwrap_or("").to_string();
                let path = first.next().unwrap_or("").to_string();
                let len = lines
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                while buf.len() < header_end + len {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = buf[header_end..].to_vec();
                let resp = handler(&Request { method, path, body });
                if !resp.delay.is_zero() {
                    tokio::time::sleep(resp.delay).await;
                }
                let text = format!(
                    "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                    resp.status,
                    resp.body.len(),
                    resp.body
                );
                let _ = sock.write_all(text.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// What the price stand-in answers next.
#[derive(Debug, Clone)]
pub enum PriceMode {
    Ok,
    Status(u16),
    Malformed,
}

#[derive(Debug)]
pub struct PriceState {
    pub prices: HashMap<String, f64>,
    pub mode: PriceMode,
    pub delay: Duration,
    pub served: usize,
    /// Modes for the next requests, used before `mode`.
    pub script: Vec<PriceMode>,
}

#[derive(Clone)]
pub struct PriceApi {
    pub url: String,
    pub state: Arc<Mutex<PriceState>>,
}

impl PriceApi {
    pub async fn start(btc: f64, eth: f64) -> PriceApi {
        let state = Arc::new(Mutex::new(PriceState {
            prices: HashMap::from([("BTC".into(), btc), ("ETH".into(), eth)]),
            mode: PriceMode::Ok,
            delay: Duration::ZERO,
            served: 0,
            script: Vec::new(),
        }));
        let s = state.clone();
        let base = serve(Arc::new(move |_req: &Request| {
            let mut st = s.lock().unwrap();
            st.served += 1;
            let mode = if st.script.is_empty() {
                st.mode.clone()
            } else {
                st.script.remove(0)
            };
            let body = match mode {
                PriceMode::Ok => {
                    let mut m = serde_json::Map::new();
                    for (k, v) in &st.prices {
                        m.insert(k.clone(), json!({ "USD": v }));
                    }
                    Value::Object(m).to_string()
                }
                PriceMode::Status(_) => r#"{"error":"down"}"#.to_string(),
                PriceMode::Malformed => "<html>not json</html>".to_string(),
            };
            let status = match mode {
                PriceMode::Status(s) => s,
                _ => 200,
            };
            Response {
                status,
                body,
                delay: st.delay,
            }
        }))
        .await;
        PriceApi {
            url: format!("{base}/data/pricemulti?fsyms=BTC,ETH&tsyms=USD&api_key=PRICE-API-SECRET"),
            state,
        }
    }

    pub fn set_btc(&self, v: f64) {
        self.state.lock().unwrap().prices.insert("BTC".into(), v);
    }
    pub fn set_delay(&self, d: Duration) {
        self.state.lock().unwrap().delay = d;
    }
    pub fn served(&self) -> usize {
        self.state.lock().unwrap().served
    }
}

/// Records Slack webhook posts.
#[derive(Clone)]
pub struct SlackSink {
    pub url: String,
    pub posts: Arc<Mutex<Vec<Value>>>,
}

impl SlackSink {
    pub async fn start() -> SlackSink {
        let posts = Arc::new(Mutex::new(Vec::new()));
        let p = posts.clone();
        let base = serve(Arc::new(move |req: &Request| {
            if req.method == "POST" {
                p.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&req.body).unwrap_or(Value::Null));
            }
            Response {
                status: 200,
                body: "ok".into(),
                delay: Duration::ZERO,
            }
        }))
        .await;
        SlackSink {
            url: format!("{base}/services/T000/B000/SLACK-SECRET-TOKEN"),
            posts,
        }
    }
    pub fn count(&self) -> usize {
        self.posts.lock().unwrap().len()
    }
}

// ---------------------------------------------------------------- Prefect read side

pub struct Prefect {
    pub base: String,
    http: reqwest::Client,
}

impl Prefect {
    pub fn new() -> Prefect {
        // reqwest is built without a default TLS provider (as in the binary): install ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Prefect {
            base: prefect_url(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    /// Calls the API, retrying the SQLite server's occasional 503.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        // Up to ~20 s: under the whole suite the server is briefly swamped now and then.
        for attempt in 0..20u64 {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base));
            if let Some(b) = &body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(r) if !matches!(r.status().as_u16(), 429 | 502 | 503) => {
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    return (status, serde_json::from_str(&text).unwrap_or(Value::Null));
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis((100 * (attempt + 1)).min(2000))).await
                }
            }
        }
        panic!("Prefect at {} kept failing for {path}", self.base);
    }

    pub async fn flow_runs(&self, flow_name: &str) -> Vec<Value> {
        let (_, v) = self
            .call(
                reqwest::Method::POST,
                "/flow_runs/filter",
                Some(json!({ "flows": { "name": { "any_": [flow_name] } }, "sort": "EXPECTED_START_TIME_ASC", "limit": 200 })),
            )
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    pub async fn flow_run(&self, id: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/flow_runs/{id}"), None)
            .await
            .1
    }

    pub async fn task_runs(&self, flow_run_id: &str) -> Vec<Value> {
        let (_, v) = self
            .call(
                reqwest::Method::POST,
                "/task_runs/filter",
                Some(json!({ "flow_runs": { "id": { "any_": [flow_run_id] } } })),
            )
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    pub async fn logs(&self, flow_run_id: &str) -> Vec<Value> {
        let (_, v) = self
            .call(
                reqwest::Method::POST,
                "/logs/filter",
                Some(json!({ "logs": { "flow_run_id": { "any_": [flow_run_id] } }, "limit": 200 })),
            )
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    pub async fn set_state(&self, flow_run_id: &str, ty: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            &format!("/flow_runs/{flow_run_id}/set_state"),
            Some(json!({ "state": { "type": ty } })),
        )
        .await
        .1
    }

    pub async fn set_variable(&self, name: &str, value: Value) {
        let (status, _) = self
            .call(
                reqwest::Method::PATCH,
                &format!("/variables/name/{name}"),
                Some(json!({ "value": value })),
            )
            .await;
        if status == 404 {
            let (status, body) = self
                .call(
                    reqwest::Method::POST,
                    "/variables/",
                    Some(json!({ "name": name, "value": value })),
                )
                .await;
            assert!(status < 300, "creating variable {name}: {status} {body}");
        }
    }

    /// Polls until `check` accepts the flow runs of `flow_name`, or panics with the last view.
    pub async fn wait_runs<F>(&self, flow_name: &str, timeout: Duration, check: F) -> Vec<Value>
    where
        F: Fn(&[Value]) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let runs = self.flow_runs(flow_name).await;
            if check(&runs) {
                return runs;
            }
            if tokio::time::Instant::now() > deadline {
                let view: Vec<_> = runs
                    .iter()
                    .map(|r| (r["name"].clone(), r["state_type"].clone()))
                    .collect();
                panic!("timed out waiting on flow runs of {flow_name}: {view:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Task runs arrive through the server's event pipeline, a little after the flow run.
    pub async fn wait_task_runs(
        &self,
        flow_run_id: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let tasks = self.task_runs(flow_run_id).await;
            let finished = tasks
                .iter()
                .filter(|t| t["state_type"] != "RUNNING" && !t["end_time"].is_null())
                .count();
            if finished >= n {
                return tasks;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("flow run {flow_run_id}: expected {n} finished task runs, have {tasks:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

// ---------------------------------------------------------------- the binary

pub struct Flow {
    pub child: Child,
    pub lines: mpsc::UnboundedReceiver<Value>,
    pub all: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
    /// The stdout reader; done once the child closed stdout.
    reader: Option<tokio::task::JoinHandle<()>>,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_price-stream"))
}

/// Starts price-stream with a clean environment plus `env`. Health file and default lake go
/// into a fresh temp dir.
pub fn spawn(env: &[(&str, String)], args: &[&str]) -> Flow {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary());
    cmd.env_clear()
        .env("HEALTH_FILE", dir.path().join("health"))
        .env(
            "SINK_URL",
            format!("file://{}", dir.path().join("lake").display()),
        )
        .env("SOURCE_RETRIES", "0")
        .env("SOURCE_TIMEOUT_SECONDS", "10")
        .env("INTERVAL_SECONDS", "0")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn price-stream");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let all = Arc::new(Mutex::new(Vec::new()));
    let all2 = all.clone();
    let reader = tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            eprintln!("[price-stream] {line}");
            all2.lock().unwrap().push(line.clone());
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
            let _ = tx.send(v);
        }
    });
    Flow {
        child,
        lines: rx,
        all,
        dir,
        reader: Some(reader),
    }
}

impl Flow {
    pub fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    /// Waits for a stdout JSON line matching `pred`.
    pub async fn wait_line<F: Fn(&Value) -> bool>(&mut self, timeout: Duration, pred: F) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(v)) if pred(&v) => return v,
                Ok(Some(_)) => {}
                Ok(None) => panic!("price-stream exited before the expected log line"),
                Err(_) => panic!("timed out waiting for a log line"),
            }
        }
    }

    pub async fn wait_iteration(&mut self, timeout: Duration) -> Value {
        self.wait_line(timeout, |v| v["event"] == "iteration").await
    }

    pub async fn exit_code(&mut self, timeout: Duration) -> i32 {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("price-stream did not exit in time")
            .unwrap();
        // Let the reader take in the last lines before anyone looks at them.
        if let Some(reader) = self.reader.take() {
            tokio::time::timeout(Duration::from_secs(10), reader)
                .await
                .expect("stdout not closed after exit")
                .expect("stdout reader failed");
        }
        status.code().expect("price-stream killed by a signal")
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args(["-s", sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -s {sig} {pid}");
    }

    pub fn stdout_text(&self) -> String {
        self.all.lock().unwrap().join("\n")
    }
}

// ---------------------------------------------------------------- Parquet read-back

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub symbol: String,
    pub date: String,
    pub currency: String,
    pub price: f64,
    pub run_id: String,
    pub iteration: i64,
    pub observed_at_us: i64,
    /// The instance that wrote the row (the lease holder).
    pub holder: String,
}

/// Reads one Parquet file; symbol and date come from the Hive path.
pub fn read_parquet(key: &str, bytes: bytes::Bytes) -> Vec<Row> {
    use arrow_array::{Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let part = |name: &str| {
        key.split('/')
            .find_map(|seg| seg.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{key} lacks {name}= partition"))
            .to_string()
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let b = batch.unwrap();
        let col = |n: &str| b.column(b.schema().index_of(n).unwrap()).clone();
        let cur = col("currency");
        let cur = cur.as_any().downcast_ref::<StringArray>().unwrap();
        let price = col("price");
        let price = price.as_any().downcast_ref::<Float64Array>().unwrap();
        let run = col("run_id");
        let run = run.as_any().downcast_ref::<StringArray>().unwrap();
        let it = col("iteration");
        let it = it.as_any().downcast_ref::<Int64Array>().unwrap();
        let holder = col("holder");
        let holder = holder.as_any().downcast_ref::<StringArray>().unwrap();
        let ts = col("observed_at");
        let ts = ts
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(ts.timezone(), Some("UTC"));
        for i in 0..b.num_rows() {
            assert!(!price.is_null(i));
            out.push(Row {
                symbol: part("symbol"),
                date: part("date"),
                currency: cur.value(i).to_string(),
                price: price.value(i),
                run_id: run.value(i).to_string(),
                iteration: it.value(i),
                observed_at_us: ts.value(i),
                holder: holder.value(i).to_string(),
            });
        }
    }
    out
}

/// Every Parquet file below `root`, as (relative key, rows).
pub fn read_lake(root: &Path) -> Vec<(String, Vec<Row>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let key = p.strip_prefix(root).unwrap().display().to_string();
                assert!(key.ends_with(".parquet"), "unexpected file in lake: {key}");
                let bytes = bytes::Bytes::from(std::fs::read(&p).unwrap());
                out.push((key.clone(), read_parquet(&key, bytes)));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

// ---------------------------------------------------------------- flaky Prefect in front of the real one

/// A proxy in front of the real Prefect server: while `down` is set it answers every request
/// with 503 (what the SQLite-backed server does under load), otherwise it forwards the request
/// unchanged (one request per connection) and relays the answer.
pub struct FlakyPrefect {
    pub url: String,
    pub down: Arc<std::sync::atomic::AtomicBool>,
    pub refused: Arc<std::sync::atomic::AtomicUsize>,
    pub forwarded: Arc<std::sync::atomic::AtomicUsize>,
    /// Forwarded requests in the order they reached the proxy: (request line, body).
    pub wire: Arc<Mutex<Vec<(String, String)>>>,
}

impl FlakyPrefect {
    pub async fn start(down: bool) -> FlakyPrefect {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let upstream = prefect_url();
        let rest = upstream
            .strip_prefix("http://")
            .expect("DEPLOYER_TEST_PREFECT_URL must be http://host:port/api");
        let (hostport, api_path) = rest.split_once('/').unwrap_or((rest, ""));
        let hostport = hostport.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(down));
        let refused = Arc::new(AtomicUsize::new(0));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let wire = Arc::new(Mutex::new(Vec::new()));
        let (d, r, f, w) = (
            down.clone(),
            refused.clone(),
            forwarded.clone(),
            wire.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (d, r, f, w, hostport) =
                    (d.clone(), r.clone(), f.clone(), w.clone(), hostport.clone());
                tokio::spawn(async move {
                    let Some((head, body)) = read_request(&mut sock).await else {
                        return;
                    };
                    if d.load(Ordering::SeqCst) {
                        r.fetch_add(1, Ordering::SeqCst);
                        let text = "{\"exception_message\":\"Service Unavailable\"}";
                        let resp = format!(
                            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                            text.len()
                        );
                        let _ = sock.write_all(resp.as_bytes()).await;
                        let _ = sock.shutdown().await;
                        return;
                    }
                    f.fetch_add(1, Ordering::SeqCst);
                    w.lock().unwrap().push((
                        head.lines().next().unwrap_or("").to_string(),
                        String::from_utf8_lossy(&body).into_owned(),
                    ));
                    // Same request, but ask the upstream to close so the answer ends at EOF.
                    let mut out = String::new();
                    for (i, line) in head.split("\r\n").enumerate() {
                        if line.is_empty() {
                            continue;
                        }
                        let lower = line.to_ascii_lowercase();
                        if i > 0
                            && (lower.starts_with("connection:")
                                || lower.starts_with("keep-alive:"))
                        {
                            continue;
                        }
                        out.push_str(line);
                        out.push_str("\r\n");
                    }
                    out.push_str("connection: close\r\n\r\n");
                    let Ok(mut up) = tokio::net::TcpStream::connect(&hostport).await else {
                        return;
                    };
                    if up.write_all(out.as_bytes()).await.is_err()
                        || up.write_all(&body).await.is_err()
                    {
                        return;
                    }
                    let _ = tokio::io::copy(&mut up, &mut sock).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        FlakyPrefect {
            url: format!("http://{addr}/{api_path}"),
            down,
            refused,
            forwarded,
            wire,
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Reads one HTTP/1.1 request with a Content-Length body: (head, body).
async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((head, buf[header_end..].to_vec()))
}

// ---------------------------------------------------------------- a source that sends too much

/// What the oversized source stand-in sends next.
#[derive(Debug, Clone, Copy)]
pub enum Flood {
    /// A body of this many bytes with its Content-Length.
    Sized(u64),
    /// A chunked body of this many bytes (no length announced), generated as it is sent.
    Streamed(u64),
    /// A chunked body that never ends.
    Endless,
    /// A normal pricemulti reply.
    Fine,
}

/// A price API stand-in that generates its replies as it writes them (nothing stored, so a
/// 1 GB reply costs the test nothing) and counts the bytes it managed to send.
pub struct FloodSource {
    pub url: String,
    pub sent: Arc<std::sync::atomic::AtomicU64>,
}

impl FloodSource {
    pub async fn start(script: Vec<Flood>) -> FloodSource {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let counter = sent.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mode = script.lock().unwrap().pop_front().unwrap_or(Flood::Fine);
                let counter = counter.clone();
                tokio::spawn(async move {
                    if read_request(&mut sock).await.is_none() {
                        return;
                    }
                    let chunk = vec![b' '; 64 * 1024];
                    let (head, total) = match mode {
                        Flood::Fine => {
                            let body = r#"{"BTC":{"USD":91000.5},"ETH":{"USD":3000.25}}"#;
                            let text = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = sock.write_all(text.as_bytes()).await;
                            let _ = sock.shutdown().await;
                            return;
                        }
                        Flood::Sized(n) => (
                            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {n}\r\nconnection: close\r\n\r\n"),
                            Some(n),
                        ),
                        Flood::Streamed(n) => (
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_string(),
                            Some(n),
                        ),
                        Flood::Endless => (
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_string(),
                            None,
                        ),
                    };
                    let chunked = !matches!(mode, Flood::Sized(_));
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut left = total;
                    loop {
                        let n = left.map_or(chunk.len() as u64, |l| l.min(chunk.len() as u64));
                        if n == 0 {
                            break;
                        }
                        let piece = &chunk[..usize::try_from(n).unwrap_or(chunk.len())];
                        let ok = if chunked {
                            let mut framed = format!("{n:x}\r\n").into_bytes();
                            framed.extend_from_slice(piece);
                            framed.extend_from_slice(b"\r\n");
                            sock.write_all(&framed).await.is_ok()
                        } else {
                            sock.write_all(piece).await.is_ok()
                        };
                        if !ok {
                            return;
                        }
                        counter.fetch_add(n, Ordering::Relaxed);
                        left = left.map(|l| l - n);
                    }
                    if chunked {
                        let _ = sock.write_all(b"0\r\n\r\n").await;
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        FloodSource {
            url: format!("http://{addr}/data/pricemulti?fsyms=BTC,ETH&tsyms=USD"),
            sent,
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }
}
