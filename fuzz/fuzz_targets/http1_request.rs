//! Any bytes, delivered in pieces of any size, as the input of one server
//! connection (`edgenet_server::http1`): request heads, framing, bodies
//! (length, chunked, trailers, `Expect`), pipelining and the close. Nothing
//! may panic or hang, and what the server writes must be a sequence of
//! well-formed answers, one per request handed on, plus at most one
//! refusal of its own at the end.
#![no_main]

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use std::{io, pin::Pin};

use bytes::Bytes;
use edgenet_server::http1::{serve_connection, Config, RequestBody, Transport};
use http::{Method, Request, Response};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// Small limits, so the fuzzer reaches them.
const MAX_BODY: usize = 256;

fn config() -> Config {
    Config {
        max_head_bytes: 1024,
        head_timeout: Duration::from_secs(1),
        max_body_bytes: MAX_BODY,
        body_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(1),
        max_pipelined: 4,
    }
}

/// The client side: `input` handed out in pieces whose sizes come from
/// `seed`, then EOF; everything written kept in `output`.
struct Wire {
    input: Vec<u8>,
    pos: usize,
    max_piece: usize,
    seed: u64,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Wire {
    fn next_piece(&mut self, room: usize) -> &[u8] {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let len = 1 + (self.seed as usize) % self.max_piece;
        let end = (self.pos + len.min(room)).min(self.input.len());
        let piece = &self.input[self.pos..end];
        self.pos = end;
        piece
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let piece = this.next_piece(buf.remaining());
        buf.put_slice(piece);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.output.lock().unwrap().extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for Wire {
    async fn wait_readable(&mut self, carry: &mut Vec<u8>) -> io::Result<bool> {
        let piece = self.next_piece(1).to_vec();
        carry.extend_from_slice(&piece);
        Ok(!piece.is_empty())
    }
}

/// Splits `out` into answers: (status, body length) each; panics on
/// anything that is not a well-formed answer. `to_head[i]`: the i-th final
/// answer is to a HEAD request (its length is announced, not sent).
fn answers(mut out: &[u8], to_head: &[bool]) -> Vec<(u16, usize)> {
    let mut found = Vec::new();
    let mut finals = 0;
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "not an answer ({other:?}): {:?}",
                String::from_utf8_lossy(out)
            ),
        };
        let status = response.code.expect("a status code");
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
        let head_request = status >= 200 && to_head.get(finals).copied().unwrap_or(false);
        finals += usize::from(status >= 200);
        let body = match status {
            100..=199 | 204 | 304 => 0,
            _ if head_request => 0,
            _ => length.expect("a final answer has a Content-Length"),
        };
        assert!(out.len() >= head_len + body, "answer cut short");
        found.push((status, body));
        out = &out[head_len + body..];
    }
    found
}

thread_local! {
    /// Paused time: the layer's timeouts fire as soon as nothing else can
    /// happen, so a wait that would never end shows as a hang, not a delay.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
}

fuzz_target!(|data: &[u8]| {
    let Some((&shape, wire)) = data.split_first() else {
        return;
    };
    let output = Arc::new(Mutex::new(Vec::new()));
    let io = Wire {
        input: wire.to_vec(),
        pos: 0,
        max_piece: 1 + usize::from(shape & 0x3f) * 4,
        seed: 0x9e37_79b9_7f4a_7c15 ^ u64::from(shape),
        output: output.clone(),
    };
    // Per request handed on: was it a HEAD?
    let handled = Arc::new(Mutex::new(Vec::new()));
    let record = handled.clone();
    let service = move |req: Request<RequestBody>| {
        record.lock().unwrap().push(req.method() == Method::HEAD);
        let body = req.into_body();
        if let Ok(b) = &body {
            assert!(b.len() <= MAX_BODY, "a body past the limit was handed on");
        }
        let text = format!("{:?}", body.map(|b| b.len()));
        async move { Response::new(Bytes::from(text)) }
    };
    let (_stop, stop_rx) = watch::channel(false);
    let result =
        RUNTIME.with(|rt| rt.block_on(serve_connection(io, Arc::new(config()), stop_rx, service)));
    let out = output.lock().unwrap();
    let to_head = handled.lock().unwrap().clone();
    let finals: Vec<u16> = answers(&out, &to_head)
        .into_iter()
        .map(|(status, _)| status)
        .filter(|&s| s >= 200)
        .collect();
    let handled = to_head.len();
    // One answer per request handed on, and the layer's own refusal (a
    // 4xx/5xx) only when the connection ended in an error, last.
    assert!(finals.len() >= handled, "{finals:?} for {handled} handled");
    let refusals = finals.len() - handled;
    assert!(refusals <= 1, "{finals:?} for {handled} handled");
    if refusals == 1 {
        assert!(result.is_err() && finals.last().is_some_and(|&s| s >= 400));
    }
});
