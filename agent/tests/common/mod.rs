//! A hostile HTTP/1.1 server on loopback, written on a bare TCP socket so it
//! can send what a well-behaved library never would (a 304 with a body, an
//! endless body, a gzip bomb), and an agent (poller, reconcile loop, memory
//! dataplane) to point at it.
#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgenet_agent::dataplane::MemoryDataplane;
use edgenet_agent::ops::metrics::Metrics;
use edgenet_agent::reconcile::{ReconcileSettings, Reconciler};
use edgenet_agent::source::poller::{Poller, PollerConfig};
use edgenet_auth::ClockSkew;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const NODE: &str = "nc-1";

/// What the server writes for one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// These bytes, at once.
    Now(Vec<u8>),
    /// These bytes after a wait (a held poll).
    After(Duration, Vec<u8>),
    /// `head`, then `first`, then `repeat` again and again until the client
    /// goes away or `up_to` bytes of it were written (a bound that keeps a
    /// client without a cap from filling the test machine's memory).
    Endless {
        head: Vec<u8>,
        first: Vec<u8>,
        repeat: Vec<u8>,
        up_to: u64,
    },
}

type Handler = dyn Fn(&str) -> Answer + Send + Sync;

pub struct HostileServer {
    handler: Mutex<Arc<Handler>>,
    /// The request target of every request, in arrival order.
    targets: Mutex<Vec<String>>,
    requests: AtomicU64,
    /// Bytes of `Endless` bodies written (what the client took).
    streamed: AtomicU64,
}

impl HostileServer {
    /// Listens on `ip` (any free port); the handler gets each request's
    /// target (path and query) and says what to write.
    pub async fn start(
        ip: &str,
        handler: impl Fn(&str) -> Answer + Send + Sync + 'static,
    ) -> (Arc<Self>, String) {
        let server = Arc::new(HostileServer {
            handler: Mutex::new(Arc::new(handler)),
            targets: Mutex::default(),
            requests: AtomicU64::new(0),
            streamed: AtomicU64::new(0),
        });
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let accepting = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(accepting.clone().serve(stream));
            }
        });
        (server, url)
    }

    pub fn set(&self, handler: impl Fn(&str) -> Answer + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Arc::new(handler);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }

    pub fn streamed(&self) -> u64 {
        self.streamed.load(Ordering::SeqCst)
    }

    /// Requests that arrive while `window` passes.
    pub async fn requests_during(&self, window: Duration) -> u64 {
        let before = self.requests();
        tokio::time::sleep(window).await;
        self.requests() - before
    }

    async fn serve(self: Arc<Self>, mut stream: TcpStream) {
        let mut buffer = Vec::new();
        while let Some(target) = read_request(&mut stream, &mut buffer).await {
            self.requests.fetch_add(1, Ordering::SeqCst);
            self.targets.lock().unwrap().push(target.clone());
            let handler = self.handler.lock().unwrap().clone();
            let written = match handler(&target) {
                Answer::Now(bytes) => stream.write_all(&bytes).await,
                Answer::After(wait, bytes) => {
                    tokio::time::sleep(wait).await;
                    stream.write_all(&bytes).await
                }
                Answer::Endless {
                    head,
                    first,
                    repeat,
                    up_to,
                } => {
                    let _ = stream.write_all(&head).await;
                    let _ = stream.write_all(&first).await;
                    while self.streamed() < up_to && stream.write_all(&repeat).await.is_ok() {
                        self.streamed
                            .fetch_add(repeat.len() as u64, Ordering::SeqCst);
                    }
                    return;
                }
            };
            if written.is_err() {
                return;
            }
        }
    }
}

/// The next request's target, its body read and dropped; `None` at EOF.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let target = head.split(' ').nth(1).unwrap_or("").to_string();
    let length: usize = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    buffer.drain(..head_end + length);
    Some(target)
}

/// An HTTP/1.1 answer with a `Content-Length` for `body`.
pub fn http(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n", body.len());
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A describe answer: 200, the id as ETag, the body.
pub fn view_answer(id: &str, body: &[u8]) -> Vec<u8> {
    let etag = format!("\"{id}\"");
    http(
        "200 OK",
        &[("content-type", "application/json"), ("etag", &etag)],
        body,
    )
}

/// The value of `name` in a request target's query.
pub fn query_param(target: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(&format!("http://server{target}")).ok()?;
    url.query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

pub fn sample_model() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cloud.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

pub fn with_route(mut model: Value, destination: &str) -> Value {
    model["routes"].as_array_mut().unwrap().push(json!({
        "node": NODE, "destination": destination, "gateway": "10.1.0.254"
    }));
    model
}

/// `(id, answer body)` of `node`'s view of `model`.
pub fn answer_for(model: &Value, node: &str) -> (String, Vec<u8>) {
    let parsed = edgenet_model::parse_model(&serde_json::to_vec(model).unwrap()).unwrap();
    let view = edgenet_model::view_for(&parsed, node).unwrap();
    let id = view.state_id().as_str().to_string();
    (id.clone(), body_with_id(&id, &view))
}

/// An answer body that gives `view` the id `id`, whatever its content.
pub fn body_with_id(id: &str, view: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(&json!({"StateId": id, "NodeId": NODE, "View": view})).unwrap()
}

pub async fn eventually(limit: Duration, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The agent: poller, reconcile loop and a memory dataplane.
pub struct Agent {
    pub dataplane: MemoryDataplane,
    pub metrics: Arc<Metrics>,
    pub poller: JoinHandle<()>,
    reconcile: JoinHandle<
        Result<Option<edgenet_agent::reconcile::Applied>, edgenet_agent::reconcile::ReconcileError>,
    >,
    _stop: watch::Sender<bool>,
}

impl Agent {
    /// Polls `url` with `config` as `tune` leaves it (starting from short
    /// waits and a 1 s backoff ceiling).
    pub fn start(url: &str, tune: impl FnOnce(&mut PollerConfig)) -> Agent {
        let dataplane = MemoryDataplane::new();
        let metrics = Metrics::new();
        let mut settings = ReconcileSettings::new(NODE);
        settings.resync = Duration::from_secs(3600);
        let (reconciler, feedback) =
            Reconciler::new(settings, Box::new(dataplane.clone()), metrics.clone());
        let (snapshot_tx, snapshot_rx) = watch::channel(None);
        let mut config = PollerConfig::new(NODE, vec![url.to_string()]);
        config.wait_seconds = 1;
        config.skew_allowance = Duration::from_secs(1);
        config.backoff_max = Duration::from_secs(1);
        tune(&mut config);
        let poller =
            Poller::new(config, None, Arc::new(ClockSkew::new()), metrics.clone()).unwrap();
        let poller = tokio::spawn(poller.run(None, snapshot_tx, feedback));
        let (stop, stop_rx) = watch::channel(false);
        let reconcile = tokio::spawn(reconciler.run(snapshot_rx, stop_rx));
        Agent {
            dataplane,
            metrics,
            poller,
            reconcile,
            _stop: stop,
        }
    }

    pub fn applied_id(&self) -> Option<String> {
        self.dataplane.kernel().state_id
    }

    /// Waits until `id` is the applied state.
    pub async fn wait_applied(&self, id: &str) {
        eventually(Duration::from_secs(15), || {
            self.applied_id().as_deref() == Some(id)
        })
        .await;
    }

    pub fn assert_alive(&self, case: &str) {
        assert!(!self.poller.is_finished(), "{case} stopped the poller");
        assert!(!self.reconcile.is_finished(), "{case} stopped the loop");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.poller.abort();
        self.reconcile.abort();
    }
}
