//! Clients that attack the connection layer rather than use it: framing
//! that other servers refuse, clients that stop reading, pipelining without
//! end. Driven with raw sockets against `edgenet_server::http1` on loopback;
//! the descriptor-exhaustion cases against the real binary are in
//! `http1_fd_limit.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgenet_server::http1::{serve_connection, Config, ConnError, RequestBody};
use http::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// Answers fit for the cases here: `/big` is larger than any socket
/// buffer, everything else is a few bytes.
async fn service(req: Request<RequestBody>) -> Response<Bytes> {
    match req.uri().path() {
        "/big" => Response::new(Bytes::from(vec![b'v'; 32 << 20])),
        path => Response::new(Bytes::from(path.to_owned())),
    }
}

/// A listener on loopback; how each connection ended is reported on `ended`.
struct Harness {
    addr: std::net::SocketAddr,
    ended: mpsc::UnboundedReceiver<Result<(), ConnError>>,
    _stop: watch::Sender<bool>,
}

impl Harness {
    async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let (report, ended) = mpsc::unbounded_channel();
        let config = Arc::new(config);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (config, stop, report) = (config.clone(), stop_rx.clone(), report.clone());
                tokio::spawn(async move {
                    let _ = report.send(serve_connection(tcp, config, stop, service).await);
                });
            }
        });
        Harness {
            addr,
            ended,
            _stop: stop,
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    /// How the next connection to end ended; `None` if none did within
    /// `within` (the failure these tests look for is "never").
    async fn next_ended(&mut self, within: Duration) -> Option<Result<(), ConnError>> {
        tokio::time::timeout(within, self.ended.recv())
            .await
            .ok()
            .flatten()
    }
}

fn config() -> Config {
    Config {
        max_head_bytes: 4096,
        head_timeout: Duration::from_secs(30),
        max_body_bytes: 1024,
        body_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_millis(500),
        max_pipelined: 8,
    }
}

/// Everything the server sends until it closes (or `within` passes).
async fn read_all(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let closed = matches!(
        tokio::time::timeout(within, s.read_to_end(&mut out)).await,
        Ok(Ok(_))
    );
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// The status line of every answer in `text` (bodies here hold no "HTTP/").
fn status_lines(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.")
        .map(|(at, _)| text[at..].split("\r\n").next().unwrap_or_default())
        .collect()
}

/// RFC 9112 6.1 and 3.2, and what nginx answers: a transfer coding before
/// the final chunked is not implemented (501) rather than ignored, and an
/// HTTP/1.1 request needs exactly one Host (400). Each is refused, then the
/// connection closed.
#[tokio::test]
async fn framing_that_nginx_refuses_is_refused() {
    let h = Harness::start(config()).await;
    let cases: [(&str, &str); 6] = [
        (
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 501 Not Implemented",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 501 Not Implemented",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 501 Not Implemented",
        ),
        ("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
    ];
    for (request, expected) in cases {
        let mut s = h.connect().await;
        s.write_all(request.as_bytes()).await.unwrap();
        let (answer, closed) = read_all(&mut s, Duration::from_secs(5)).await;
        assert_eq!(status_lines(&answer), [expected], "{request:?}");
        assert!(closed, "{request:?}: not closed");
    }
    // The plain forms still work.
    let mut s = h.connect().await;
    s.write_all(b"POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nGET /ok HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_all(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status_lines(&answer), ["HTTP/1.1 200 OK"], "{answer}");
}

/// A client that asks for an answer larger than the socket buffers and
/// never reads it: the write stops making progress, and after the write
/// timeout the connection is dropped (it used to be kept until the client
/// left, however long that was).
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped() {
    let mut h = Harness::start(config()).await;
    let mut s = h.connect().await;
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let ended = h.next_ended(Duration::from_secs(10)).await;
    assert!(
        matches!(ended, Some(Err(ConnError::WriteTimeout))),
        "the stalled connection is still open or ended otherwise: {ended:?}"
    );
    // What the client finally reads stops short of the answer, then the close.
    let (_, closed) = read_all(&mut s, Duration::from_secs(10)).await;
    assert!(closed);
}

/// A client that pipelines request after request and never reads: the
/// server answers a bounded number, the last with `Connection: close`, and
/// closes, instead of answering as many as the socket buffers take and
/// then keeping the connection.
#[tokio::test]
async fn pipelining_without_reading_gets_a_bounded_number_of_answers() {
    let mut h = Harness::start(config()).await;
    let mut s = h.connect().await;
    let burst = "GET /p HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200);
    s.write_all(burst.as_bytes()).await.unwrap();
    let ended = h.next_ended(Duration::from_secs(10)).await;
    assert!(matches!(ended, Some(Ok(()))), "{ended:?}");
    let (answer, closed) = read_all(&mut s, Duration::from_secs(10)).await;
    assert!(closed);
    // The first request, then `max_pipelined` more behind it.
    assert_eq!(status_lines(&answer).len(), 1 + config().max_pipelined);
    assert_eq!(answer.matches("connection: close").count(), 1);
    assert!(answer.trim_end().ends_with("/p"));
}

/// A client that reads every answer before it sends the next request is
/// not pipelining, however many requests it makes.
#[tokio::test]
async fn a_reading_client_is_never_cut_off() {
    let h = Harness::start(config()).await;
    let mut s = h.connect().await;
    let mut pending = Vec::new();
    for i in 0..(3 * config().max_pipelined) {
        let request = format!("GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let expected = format!("/r{i}");
        while !String::from_utf8_lossy(&pending).ends_with(&expected) {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("an answer in time")
                .unwrap();
            assert!(n > 0, "closed after {i} requests");
            pending.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&pending).into_owned();
        assert!(!text.contains("connection: close"), "{text}");
        pending.clear();
    }
}
