//! A fault-injecting HTTP proxy in front of moto, for tests/faults.rs and the benches: it
//! forwards each AWS API request (one per connection) and, per a policy the test gives,
//! delays it, answers 500 or a throttling error, hangs, or drops the connection. It logs
//! every request's operation and arrival time, so a test can check which calls started
//! after a signal.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the proxy does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// Forward after this delay (a slow emulator).
    Delay(Duration),
    /// Answer HTTP 500 (InternalFailure) without forwarding.
    ServerError,
    /// Answer 400 Throttling without forwarding.
    Throttle,
    /// Answer 403 with this service error code (e.g. AccessDenied, InvalidClientTokenId).
    Deny(&'static str),
    /// Accept the request and never answer.
    Hang,
    /// Close the connection without an answer.
    Drop,
    /// Forward, then close the connection instead of returning moto's answer (the call ran,
    /// the client never hears so).
    LoseResponse,
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    /// `Service.Operation` for JSON protocols (from X-Amz-Target), the `Action` of query
    /// protocols (CloudFormation, STS), `S3.<METHOD>` for S3.
    pub op: String,
    pub fault: Fault,
}

impl Seen {
    /// Changes something (the deployer's CallCounter rule: not a read).
    pub fn is_mutating(&self) -> bool {
        let name = self.op.rsplit('.').next().unwrap_or(&self.op);
        ![
            "Describe",
            "Get",
            "List",
            "BatchGet",
            "BatchCheck",
            "Validate",
            "HEAD",
            "GET",
        ]
        .iter()
        .any(|p| name.starts_with(p))
    }
}

type Policy = dyn Fn(&str, usize) -> Fault + Send + Sync;

pub struct FaultProxy {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Proxy to `upstream` (`http://127.0.0.1:PORT`). `policy(op, n)` picks the fault for the
    /// n-th (0-based) request of operation `op`.
    pub fn start(
        upstream: &str,
        policy: impl Fn(&str, usize) -> Fault + Send + Sync + 'static,
    ) -> Self {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let policy: Arc<Policy> = Arc::new(policy);
        let (s, st) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (up, s, st, p) = (upstream.clone(), s.clone(), st.clone(), policy.clone());
                thread::spawn(move || serve(conn, &up, &s, &st, &*p));
            }
        });
        Self { port, seen, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake the accept loop
    }
}

struct Request {
    head: Vec<String>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.iter().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn op(&self) -> String {
        if let Some(t) = self.header("x-amz-target") {
            // e.g. AmazonEC2ContainerServiceV20141113.RegisterTaskDefinition
            let (svc, op) = t.split_once('.').unwrap_or(("", t));
            let svc = if svc.contains("ContainerService") {
                "ECS"
            } else if svc.contains("SSM") {
                "SSM"
            } else if svc.contains("ECR") || svc.contains("ContainerRegistry") {
                "ECR"
            } else {
                svc
            };
            return format!("{svc}.{op}");
        }
        let body = String::from_utf8_lossy(&self.body);
        if let Some(action) = body.split('&').find_map(|kv| kv.strip_prefix("Action=")) {
            return action.to_string();
        }
        let method = self.head[0].split(' ').next().unwrap_or("?");
        format!("S3.{method}")
    }

    fn is_json(&self) -> bool {
        self.header("x-amz-target").is_some()
    }
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let mut req = Request {
        head,
        body: Vec::new(),
    };
    let len: usize = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    req.body = body;
    Some(req)
}

fn serve(
    conn: TcpStream,
    upstream: &str,
    seen: &Mutex<Vec<Seen>>,
    stop: &AtomicBool,
    policy: &Policy,
) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let Some(req) = read_request(&mut reader) else {
        return;
    };
    let op = req.op();
    let fault = {
        let mut s = seen.lock().expect("log");
        let n = s.iter().filter(|x| x.op == op).count();
        let fault = policy(&op, n);
        s.push(Seen {
            at: Instant::now(),
            op: op.clone(),
            fault,
        });
        fault
    };
    let mut conn = conn;
    match fault {
        Fault::Pass => forward(&req, upstream, &mut conn, true),
        Fault::Delay(d) => {
            thread::sleep(d);
            forward(&req, upstream, &mut conn, true)
        }
        Fault::LoseResponse => forward(&req, upstream, &mut conn, false),
        Fault::ServerError => error(&mut conn, &req, 500, "InternalFailure", "fault proxy: 500"),
        Fault::Throttle => error(&mut conn, &req, 400, "Throttling", "Rate exceeded"),
        Fault::Deny(code) => error(&mut conn, &req, 403, code, "fault proxy: denied"),
        Fault::Hang => {
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(50));
            }
        }
        Fault::Drop => {}
    }
    let _ = conn.shutdown(Shutdown::Both);
}

fn forward(req: &Request, upstream: &str, conn: &mut TcpStream, answer: bool) {
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    let mut out = String::new();
    for (i, line) in req.head.iter().enumerate() {
        let name = line.split(':').next().unwrap_or("").trim();
        if i > 0 && name.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    if up.write_all(out.as_bytes()).is_err() || up.write_all(&req.body).is_err() {
        return;
    }
    let mut response = Vec::new();
    let _ = up.read_to_end(&mut response);
    if answer {
        let _ = conn.write_all(&response);
    }
}

fn error(conn: &mut TcpStream, req: &Request, status: u16, code: &str, message: &str) {
    // S3 speaks REST-XML and throttles with 503 SlowDown.
    let s3 = req.op().starts_with("S3.");
    let (status, code) = match (s3, code) {
        (true, "Throttling") => (503, "SlowDown"),
        (true, "InternalFailure") => (500, "InternalError"),
        _ => (status, code),
    };
    let (ctype, body) = if s3 {
        (
            "application/xml",
            format!("<Error><Code>{code}</Code><Message>{message}</Message></Error>"),
        )
    } else if req.is_json() {
        (
            "application/x-amz-json-1.1",
            format!(r#"{{"__type":"{code}","message":"{message}"}}"#),
        )
    } else {
        (
            "text/xml",
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>"
            ),
        )
    };
    let reason = match status {
        500 => "Internal Server Error",
        403 => "Forbidden",
        503 => "Slow Down",
        _ => "Bad Request",
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nx-amzn-ErrorType: {code}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
