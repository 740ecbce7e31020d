//! edgenetd against a hostile describe endpoint: a tiny hyper server that
//! answers 500s, truncated JSON, unusable views, a 1 GiB body, silence after
//! the headers and wrong ETags. The agent must survive each, and none of
//! them may change the applied state.

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use edgenet_agent::dataplane::MemoryDataplane;
use edgenet_agent::ops::metrics::Metrics;
use edgenet_agent::reconcile::{ReconcileSettings, Reconciler};
use edgenet_agent::source::poller::{Poller, PollerConfig};
use edgenet_auth::ClockSkew;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::watch;

const NODE: &str = "nc-1";
const GIB: u64 = 1 << 30;
const CHUNK: usize = 1 << 20;

#[derive(Debug, Clone)]
enum Mode {
    Valid { id: String, body: Vec<u8> },
    Status500,
    Unavailable503,
    NodeNotFound,
    TruncatedJson { id: String, body: Vec<u8> },
    UnusableView { id: String, body: Vec<u8> },
    WrongNode { id: String, body: Vec<u8> },
    GibChunked,
    GibDeclared,
    HangAfterHeaders,
    WrongEtag { body: Vec<u8> },
}

struct Hostile {
    mode: Mutex<Mode>,
    requests: AtomicU64,
    body_bytes_sent: AtomicU64,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

impl Hostile {
    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    fn answer(self: &Arc<Self>) -> Response<Body> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mode = self.mode.lock().unwrap().clone();
        let ok = |etag: &str, body: Body| {
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("etag", format!("\"{etag}\""))
                .body(body)
                .unwrap()
        };
        match mode {
            Mode::Valid { id, body }
            | Mode::UnusableView { id, body }
            | Mode::WrongNode { id, body } => ok(&id, full(body)),
            Mode::TruncatedJson { id, body } => ok(&id, full(body[..body.len() / 2].to_vec())),
            Mode::WrongEtag { body } => ok("v1-00000000000000000000000000000000", full(body)),
            Mode::Status500 => Response::builder()
                .status(500)
                .body(full(
                    r#"{"Error":{"Code":"InternalError","Message":"boom"},"RequestId":"x"}"#,
                ))
                .unwrap(),
            Mode::NodeNotFound => Response::builder()
                .status(404)
                .body(full(
                    r#"{"Error":{"Code":"InvalidNodeId.NotFound","Message":"no node nc-1"},"RequestId":"x"}"#,
                ))
                .unwrap(),
            Mode::Unavailable503 => Response::builder()
                .status(503)
                .header("retry-after", "0")
                .body(full("<html>busy</html>"))
                .unwrap(),
            Mode::GibChunked => ok("v1-big", self.gib_stream()),
            Mode::GibDeclared => {
                let mut response = ok("v1-big", self.gib_stream());
                response
                    .headers_mut()
                    .insert("content-length", GIB.to_string().parse().unwrap());
                response
            }
            Mode::HangAfterHeaders => {
                let never = futures::stream::pending::<Result<Frame<Bytes>, Infallible>>();
                ok("v1-hang", BodyExt::boxed(StreamBody::new(never)))
            }
        }
    }

    /// 1 GiB of spaces, produced chunk by chunk as the client reads: the
    /// counter says how much the client actually took.
    fn gib_stream(self: &Arc<Self>) -> Body {
        let this = self.clone();
        let chunks = (GIB as usize) / CHUNK;
        let stream = futures::stream::iter(0..chunks).map(move |_| {
            this.body_bytes_sent
                .fetch_add(CHUNK as u64, Ordering::SeqCst);
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[b' '; CHUNK])))
        });
        BodyExt::boxed(StreamBody::new(stream))
    }
}

use futures::StreamExt as _;

async fn start_hostile(mode: Mode) -> (Arc<Hostile>, String) {
    let hostile = Arc::new(Hostile {
        mode: Mutex::new(mode),
        requests: AtomicU64::new(0),
        body_bytes_sent: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let server = hostile.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let server = server.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.answer()) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (hostile, url)
}

fn sample_model() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cloud.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `(id, answer body)` of `node`'s view of `model`.
fn answer_for(model: &Value, node: &str) -> (String, Vec<u8>) {
    let parsed = edgenet_model::parse_model(&serde_json::to_vec(model).unwrap()).unwrap();
    let view = edgenet_model::view_for(&parsed, node).unwrap();
    let id = view.state_id().as_str().to_string();
    let body = serde_json::to_vec(&json!({"StateId": id, "NodeId": node, "View": view})).unwrap();
    (id, body)
}

fn with_route(mut model: Value, destination: &str) -> Value {
    model["routes"].as_array_mut().unwrap().push(json!({
        "node": NODE, "destination": destination, "gateway": "10.1.0.254"
    }));
    model
}

async fn eventually(limit: Duration, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_hostile_endpoint_without_changing_applied_state() {
    let (first_id, first_body) = answer_for(&sample_model(), NODE);
    let (hostile, url) = start_hostile(Mode::Valid {
        id: first_id.clone(),
        body: first_body,
    })
    .await;

    let dataplane = MemoryDataplane::new();
    let metrics = Metrics::new();
    let mut settings = ReconcileSettings::new(NODE);
    settings.resync = Duration::from_secs(3600);
    let (reconciler, feedback) =
        Reconciler::new(settings, Box::new(dataplane.clone()), metrics.clone());
    let (snapshot_tx, snapshot_rx) = watch::channel(None);
    let mut config = PollerConfig::new(NODE, vec![url]);
    // Short waits so a silent server is given up on in about two seconds.
    config.wait_seconds = 1;
    config.skew_allowance = Duration::from_secs(1);
    config.backoff_max = Duration::from_millis(200);
    // "Slowly" in production (60 s); quick here.
    config.not_found_retry = Duration::from_millis(300);
    let poller = Poller::new(config, None, Arc::new(ClockSkew::new()), metrics.clone()).unwrap();
    let poller = tokio::spawn(poller.run(None, snapshot_tx, feedback));
    let (stop, stop_rx) = watch::channel(false);
    let reconcile = tokio::spawn(reconciler.run(snapshot_rx, stop_rx));

    eventually(Duration::from_secs(10), || {
        dataplane.kernel().state_id.as_deref() == Some(first_id.as_str())
    })
    .await;
    let applied = dataplane.kernel();
    let applies = dataplane.stats().applies;

    let changed = with_route(sample_model(), "10.9.0.0/16");
    let (changed_id, changed_body) = answer_for(&changed, NODE);
    let mut unusable: Value = serde_json::from_slice(&changed_body).unwrap();
    unusable["View"]["schema"] = json!(99);
    let (_, nc2_body) = answer_for(&sample_model(), "nc-2");
    let cases = [
        ("500s", Mode::Status500),
        ("503 with Retry-After", Mode::Unavailable503),
        ("InvalidNodeId.NotFound", Mode::NodeNotFound),
        (
            "truncated JSON",
            Mode::TruncatedJson {
                id: changed_id.clone(),
                body: changed_body.clone(),
            },
        ),
        (
            "an unusable view",
            Mode::UnusableView {
                id: changed_id.clone(),
                body: serde_json::to_vec(&unusable).unwrap(),
            },
        ),
        (
            "another node's view",
            Mode::WrongNode {
                id: answer_for(&sample_model(), "nc-2").0,
                body: nc2_body,
            },
        ),
        ("a 1 GiB chunked body", Mode::GibChunked),
        ("a declared 1 GiB body", Mode::GibDeclared),
        ("silence after the headers", Mode::HangAfterHeaders),
        (
            "a wrong ETag",
            Mode::WrongEtag {
                body: changed_body.clone(),
            },
        ),
    ];
    for (name, mode) in cases {
        hostile.set(mode);
        let before = hostile.requests();
        // Two full requests in this mode (the first may have been parked
        // before the switch).
        eventually(Duration::from_secs(20), || hostile.requests() >= before + 3).await;
        assert_eq!(
            dataplane.kernel(),
            applied,
            "{name} changed the applied state"
        );
        assert_eq!(dataplane.stats().applies, applies, "{name} caused an apply");
        assert!(!poller.is_finished(), "{name} stopped the poller");
        assert!(!reconcile.is_finished(), "{name} stopped the loop");
    }
    let streamed = hostile.body_bytes_sent.load(Ordering::SeqCst);
    assert!(
        streamed >= 64 << 20,
        "the chunked body was streamed: {streamed}"
    );
    assert!(
        streamed < 4 * (64 << 20),
        "the 1 GiB bodies were abandoned at the cap, not read: {streamed} bytes sent"
    );
    assert!(metrics.polls("bad_answer") >= 6, "{}", metrics.render());
    assert!(metrics.polls("server_error") >= 2);
    assert!(metrics.polls("node_not_found") >= 2);
    assert!(
        metrics.polls("transport_error") >= 1,
        "the silent server timed out"
    );

    // Still alive: a good view is applied as soon as one comes.
    hostile.set(Mode::Valid {
        id: changed_id.clone(),
        body: changed_body,
    });
    eventually(Duration::from_secs(10), || {
        dataplane.kernel().state_id.as_deref() == Some(changed_id.as_str())
    })
    .await;
    stop.send_replace(true);
    reconcile.await.unwrap().unwrap();
    poller.abort();
}
