//! The HTTP/1.1 connection layer (`edgenet_server::http1`) on its own: a
//! real listener on loopback with a small test service, driven with raw TCP
//! sockets so every byte on the wire is the test's choice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgenet_server::http1::{serve_connection, BodyError, Config, RequestBody};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// `/counted` handlers running right now (parked ones included); only one
/// test uses that path, so tests running in parallel do not disturb it.
static COUNTED: AtomicUsize = AtomicUsize::new(0);

struct Counted;
impl Counted {
    fn enter() -> Self {
        COUNTED.fetch_add(1, Ordering::SeqCst);
        Counted
    }
}
impl Drop for Counted {
    fn drop(&mut self) {
        COUNTED.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `/echo`: `METHOD PATH LEN:BODY`; `/slow?N`: the same after N ms;
/// `/park` and `/counted`: never answer; `/panic`: panics. A refused body
/// is 413/408/400.
async fn service(req: Request<RequestBody>) -> Response<Bytes> {
    let _counted = (req.uri().path() == "/counted").then(Counted::enter);
    let (parts, body) = req.into_parts();
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let status = match e {
                BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::Timeout => StatusCode::REQUEST_TIMEOUT,
                BodyError::BadChunk(_) => StatusCode::BAD_REQUEST,
            };
            let mut r = Response::new(Bytes::from(e.to_string()));
            *r.status_mut() = status;
            return r;
        }
    };
    match parts.uri.path() {
        "/slow" => {
            let ms = parts.uri.query().and_then(|q| q.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        "/park" | "/counted" => std::future::pending::<()>().await,
        "/panic" => panic!("test handler panics on purpose"),
        _ => {}
    }
    let text = format!(
        "{} {} {}:{}",
        parts.method,
        parts.uri.path(),
        body.len(),
        String::from_utf8_lossy(&body)
    );
    Response::new(Bytes::from(text))
}

struct Harness {
    addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
}

impl Harness {
    async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let config = Arc::new(config);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (config, stop) = (config.clone(), stop_rx.clone());
                tokio::spawn(serve_connection(tcp, config, stop, service));
            }
        });
        Harness { addr, stop }
    }

    async fn default() -> Self {
        Self::start(config()).await
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }
}

fn config() -> Config {
    Config {
        max_head_bytes: 4096,
        head_timeout: Duration::from_secs(1),
        max_body_bytes: 1024,
        body_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(1),
        max_pipelined: 32,
    }
}

/// One response, parsed just enough: status line, headers, body.
#[derive(Debug)]
struct Answer {
    status_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn status(&self) -> u16 {
        self.status_line.split(' ').nth(1).unwrap().parse().unwrap()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response from `s`, leaving anything after it in `pending`.
async fn read_answer(s: &mut TcpStream, pending: &mut Vec<u8>) -> Answer {
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(s, pending).await;
    };
    let head = String::from_utf8(pending[..head_end].to_vec()).unwrap();
    let mut lines = head.trim_end().split("\r\n");
    let status_line = lines.next().unwrap().to_owned();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut answer = Answer {
        status_line,
        headers,
        body: String::new(),
    };
    let no_body = answer.status() == 304 || answer.status() < 200;
    let len = if no_body { 0 } else { len };
    while pending.len() < head_end + len {
        read_more(s, pending).await;
    }
    answer.body = String::from_utf8(pending[head_end..head_end + len].to_vec()).unwrap();
    pending.drain(..head_end + len);
    answer
}

async fn read_more(s: &mut TcpStream, pending: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(n > 0, "closed early: {}", String::from_utf8_lossy(pending));
    pending.extend_from_slice(&buf[..n]);
}

/// True when the server closes `s` (after whatever it still sends) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut sink = Vec::new();
    matches!(
        tokio::time::timeout(within, s.read_to_end(&mut sink)).await,
        Ok(Ok(_))
    )
}

async fn ask(s: &mut TcpStream, request: &str) -> Answer {
    s.write_all(request.as_bytes()).await.unwrap();
    read_answer(s, &mut Vec::new()).await
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let h = Harness::default().await;
    let mut s = h.connect().await;
    for i in 0..5 {
        let a = ask(&mut s, &format!("GET /echo{i} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert_eq!(a.status_line, "HTTP/1.1 200 OK");
        assert_eq!(a.body, format!("GET /echo{i} 0:"));
        assert_eq!(
            a.header("content-length"),
            Some(a.body.len().to_string().as_str())
        );
        assert!(
            a.header("date").is_some_and(|d| d.ends_with(" GMT")),
            "{a:?}"
        );
        assert_eq!(a.header("connection"), None);
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let h = Harness::default().await;
    let mut s = h.connect().await;
    // The first is the slowest: the answers must still come in request order.
    let burst = "GET /slow?150 HTTP/1.1\r\nHost: x\r\n\r\n\
                 POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                 GET /slow?10 HTTP/1.1\r\nHost: x\r\n\r\n\
                 GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    s.write_all(burst.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    let bodies = [
        "GET /slow 0:",
        "POST /echo 5:hello",
        "GET /slow 0:",
        "GET /last 0:",
    ];
    for expected in bodies {
        assert_eq!(read_answer(&mut s, &mut pending).await.body, expected);
    }
    assert!(pending.is_empty());
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let h = Harness::default().await;
    let mut s = h.connect().await;
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    )
    .await
    .unwrap();
    let mut pending = Vec::new();
    let interim = read_answer(&mut s, &mut pending).await;
    assert_eq!(interim.status_line, "HTTP/1.1 100 Continue");
    s.write_all(b"ping").await.unwrap();
    let a = read_answer(&mut s, &mut pending).await;
    assert_eq!((a.status(), a.body.as_str()), (200, "POST /echo 4:ping"));
    // Too large for the limit: refused at once, no 100, then closed.
    let mut s = h.connect().await;
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
    )
    .await
    .unwrap();
    let a = read_answer(&mut s, &mut Vec::new()).await;
    assert_eq!(a.status(), 413);
    assert_eq!(a.header("connection"), Some("close"));
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
}

#[tokio::test]
async fn an_oversized_head_or_too_many_headers_is_431() {
    let h = Harness::default().await;
    let mut s = h.connect().await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "y".repeat(10_000)
    );
    // The server may answer before the whole head is written.
    let _ = s.write_all(big.as_bytes()).await;
    let a = read_answer(&mut s, &mut Vec::new()).await;
    assert_eq!(a.status(), 431);
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    let many: String = (0..65).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut s = h.connect().await;
    let a = ask(&mut s, &format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")).await;
    assert_eq!(a.status(), 431);
    // 64 headers (Host and 63 more) are fine.
    let many: String = (0..63).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut s = h.connect().await;
    assert_eq!(
        ask(&mut s, &format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_slow_head_is_cut_off_and_an_idle_connection_closed() {
    let h = Harness::default().await;
    let mut slow = h.connect().await;
    let started = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        // Trickling bytes does not extend the deadline.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = slow.write_all(b"X-A: b\r\n").await;
    }
    let a = read_answer(&mut slow, &mut Vec::new()).await;
    assert_eq!(a.status(), 408);
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert!(closed_within(&mut slow, Duration::from_secs(3)).await);
    // A connection that never sends a byte is closed without an answer.
    let mut idle = h.connect().await;
    let started = Instant::now();
    let mut out = Vec::new();
    idle.read_to_end(&mut out).await.unwrap();
    assert!(out.is_empty());
    assert!(started.elapsed() < Duration::from_millis(1900));
}

#[tokio::test]
async fn garbage_is_400_and_harms_no_one_else() {
    let h = Harness::default().await;
    let mut bystander = h.connect().await;
    assert_eq!(
        ask(&mut bystander, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .status(),
        200
    );
    let inputs: [&[u8]; 5] = [
        b"\x00\x01GARBAGE \xff\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    ];
    for input in inputs {
        let mut s = h.connect().await;
        s.write_all(input).await.unwrap();
        let a = read_answer(&mut s, &mut Vec::new()).await;
        assert_eq!(a.status(), 400, "{}", String::from_utf8_lossy(input));
        assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    }
    // Random bytes, many sizes: never a hang, never a crash.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for len in [1usize, 7, 100, 3000] {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut s = h.connect().await;
        s.write_all(&junk).await.unwrap();
        s.write_all(b"\r\n\r\n").await.unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    }
    assert_eq!(
        ask(&mut bystander, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .body,
        "GET /b 0:"
    );
}

#[tokio::test]
async fn http_1_0_closes_unless_asked_to_keep_alive() {
    let h = Harness::default().await;
    let mut s = h.connect().await;
    let a = ask(&mut s, "GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(a.status_line, "HTTP/1.0 200 OK");
    assert_eq!(a.body, "GET /old 0:");
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
    let mut s = h.connect().await;
    let a = ask(
        &mut s,
        "GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    assert_eq!(a.header("connection"), Some("keep-alive"));
    let a = ask(
        &mut s,
        "GET /two HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    assert_eq!(a.body, "GET /two 0:");
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let h = Harness::default().await;
    let mut s = h.connect().await;
    let a = ask(
        &mut s,
        "GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(a.header("connection"), Some("close"));
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn a_body_split_across_many_writes_arrives_whole() {
    let h = Harness::default().await;
    let mut s = h.connect().await;
    let body = "Action=DescribeNetworkModel&NodeId=nc-1&WaitSeconds=0";
    let request = format!(
        "POST /form HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for piece in request.as_bytes().chunks(3) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let a = read_answer(&mut s, &mut Vec::new()).await;
    assert_eq!(a.body, format!("POST /form {}:{body}", body.len()));
    // The same as a chunked body, also trickled.
    let chunked = "POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                   6\r\nAction\r\n1;ext=y\r\n=\r\nF\r\nDescribeNetwork\r\n0\r\nX-Trailer: t\r\n\r\n";
    for piece in chunked.as_bytes().chunks(4) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let a = read_answer(&mut s, &mut Vec::new()).await;
    assert_eq!(a.body, "POST /chunked 22:Action=DescribeNetwork");
    // And the connection is still good for the next request.
    assert_eq!(
        ask(&mut s, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .body,
        "GET /next 0:"
    );
}

#[tokio::test]
async fn refused_bodies_reach_the_handler_and_close_the_connection() {
    let h = Harness::default().await;
    // Larger than the limit.
    let mut s = h.connect().await;
    let big = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n{}",
        "x".repeat(2000)
    );
    let a = ask(&mut s, &big).await;
    assert_eq!((a.status(), a.header("connection")), (413, Some("close")));
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    // Chunked, larger than the limit once decoded.
    let mut s = h.connect().await;
    let a = ask(
        &mut s,
        &format!(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{}\r\n0\r\n\r\n",
            "x".repeat(2000)
        ),
    )
    .await;
    assert_eq!(a.status(), 413);
    // Announced but never sent: the body-read timeout.
    let mut s = h.connect().await;
    let started = Instant::now();
    let a = ask(
        &mut s,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
    )
    .await;
    assert_eq!(a.status(), 408);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
}

#[tokio::test]
async fn head_requests_get_the_length_but_no_body() {
    let h = Harness::default().await;
    let mut s = h.connect().await;
    // Pipelined: a body wrongly sent after the HEAD answer would show up
    // where the GET answer must start.
    s.write_all(b"HEAD /thing HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut pending = Vec::new();
    while pending.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2 {
        read_more(&mut s, &mut pending).await;
    }
    let text = String::from_utf8_lossy(&pending).into_owned();
    let (head_answer, rest) = text.split_once("\r\n\r\n").unwrap();
    // "HEAD /thing 0:" is 14 bytes; none of them is sent.
    assert!(head_answer.contains("content-length: 14"), "{head_answer}");
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
    let mut rest = rest.as_bytes().to_vec();
    assert_eq!(read_answer(&mut s, &mut rest).await.body, "GET /after 0:");
}

#[tokio::test]
async fn a_panicking_handler_gets_500_and_harms_no_other_connection() {
    let h = Harness::default().await;
    let mut parked = h.connect().await;
    parked
        .write_all(b"GET /park HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut other = h.connect().await;
    assert_eq!(
        ask(&mut other, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .status(),
        200
    );
    let mut s = h.connect().await;
    let a = ask(&mut s, "GET /panic HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(a.status(), 500);
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    // The kept-alive neighbour and a new connection are still served, and
    // the parked one is still open.
    assert_eq!(
        ask(&mut other, "GET /y HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .body,
        "GET /y 0:"
    );
    let mut fresh = h.connect().await;
    assert_eq!(
        ask(&mut fresh, "GET /z HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .status(),
        200
    );
    assert!(!closed_within(&mut parked, Duration::from_millis(200)).await);
}

#[tokio::test]
async fn a_client_that_hangs_up_ends_its_parked_handler() {
    let h = Harness::default().await;
    let mut s = h.connect().await;
    s.write_all(b"GET /counted HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while COUNTED.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the handler did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(s);
    while COUNTED.load(Ordering::SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "the parked handler outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn stop_closes_idle_connections_and_lets_answers_finish() {
    let h = Harness::default().await;
    let mut idle = h.connect().await;
    assert_eq!(
        ask(&mut idle, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .status(),
        200
    );
    let mut busy = h.connect().await;
    busy.write_all(b"GET /slow?300 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.stop.send_replace(true);
    assert!(closed_within(&mut idle, Duration::from_millis(500)).await);
    let a = read_answer(&mut busy, &mut Vec::new()).await;
    assert_eq!((a.status(), a.header("connection")), (200, Some("close")));
    assert!(closed_within(&mut busy, Duration::from_secs(1)).await);
}
