//! A lean HTTP/1.1 server connection, in place of hyper's.
//!
//! Why not hyper: it gives every connection an 8 KiB read and an 8 KiB write
//! buffer for the connection's whole life, and a parked long poll is a
//! connection that is alive for a minute doing nothing. Here buffers exist
//! only while a request is read or an answer written: a connection waiting
//! for its next request, or holding a parked poll, owns no buffer at all.
//!
//! Scope: what edgenet's endpoint needs. Requests are read whole (head with
//! httparse, then a `Content-Length` or chunked body, capped) before the
//! handler runs; answers are `Response<Bytes>` with a `Content-Length`.
//! Pipelined requests are answered in order. No upgrades, no HTTP/2.
//!
//! Against clients that make the server wait: every read and write has a
//! deadline, a client that keeps pipelining without reading is closed after
//! a bounded number of answers, and [`Admission`] decides who keeps a
//! descriptor when they run short.

pub mod admission;
mod body;
mod head;
mod response;
mod transport;
mod write;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

pub use admission::{AcceptErrors, Admission, Binder, Refused, Ticket};
pub use head::MAX_HEADERS;
pub use transport::Transport;

use head::Framing as BodyFraming;
use response::Framing;

/// Limits of one connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// Request line and headers, in bytes; beyond is 431.
    pub max_head_bytes: usize,
    /// From the start of the wait for a request to its last header byte; an
    /// idle keep-alive connection is closed after it, a slow head gets 408.
    pub head_timeout: Duration,
    /// Decoded body bytes; beyond, the handler gets [`BodyError::TooLarge`].
    pub max_body_bytes: usize,
    /// From the end of the head to the end of the body.
    pub body_timeout: Duration,
    /// Longest a write to the client may make no progress; past it the
    /// connection is dropped (the client stopped reading).
    pub write_timeout: Duration,
    /// Requests answered in a row that were already sent when the answer
    /// before them was written (pipelined); the next one is answered with
    /// `Connection: close`. A client that pipelines without reading thus
    /// makes the server queue a bounded number of answers, not as many as
    /// the socket buffers take.
    pub max_pipelined: usize,
}

/// A request body as read by the layer: all of it, or why not. The handler
/// decides what to answer; the connection is closed after that answer.
pub type RequestBody = Result<Bytes, BodyError>;

/// Why a request body was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request body not received in time")]
    Timeout,
    #[error("malformed chunked request body: {0}")]
    BadChunk(&'static str),
}

/// Why a connection ended other than by a clean close.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} request headers")]
    TooManyHeaders(usize),
    #[error("malformed request head: {0}")]
    BadHead(String),
    #[error("bad request framing: {0}")]
    BadFraming(&'static str),
    #[error("not implemented: {0}")]
    Unimplemented(&'static str),
    #[error("request head not complete in time")]
    HeadTimeout,
    #[error("client closed the connection in the middle of a request")]
    ClosedMidRequest,
    #[error("client went away while its request was being answered")]
    ClientGone,
    #[error("client did not take the answer in time")]
    WriteTimeout,
    #[error("request handler panicked")]
    HandlerPanicked,
}

impl ConnError {
    /// The answer the layer gives on its own before closing, if any.
    fn status(&self) -> Option<StatusCode> {
        match self {
            ConnError::HeadTooLarge(_) | ConnError::TooManyHeaders(_) => {
                Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            }
            ConnError::BadHead(_) | ConnError::BadFraming(_) => Some(StatusCode::BAD_REQUEST),
            ConnError::Unimplemented(_) => Some(StatusCode::NOT_IMPLEMENTED),
            ConnError::HeadTimeout => Some(StatusCode::REQUEST_TIMEOUT),
            ConnError::HandlerPanicked => Some(StatusCode::INTERNAL_SERVER_ERROR),
            ConnError::Io(_)
            | ConnError::ClosedMidRequest
            | ConnError::ClientGone
            | ConnError::WriteTimeout => None,
        }
    }
}

/// [`Config::write_timeout`] by default: as long as a head may take.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// [`Config::max_pipelined`] by default. Agents never pipeline; clients
/// that do rarely keep more than a few requests in flight.
pub const DEFAULT_MAX_PIPELINED: usize = 32;

/// First read buffer of a request; grown by doubling up to the limits.
const FIRST_READ: usize = 2048;
/// Grow the read buffer when less than this is free.
const MIN_READ: usize = 512;

/// Serves requests on `io` one after another until the client closes, asks
/// to close, breaks the protocol, or `stop` turns true (then an idle
/// connection closes at once and a busy one after its answer).
pub fn serve_connection<T, S, F>(
    io: T,
    config: Arc<Config>,
    stop: watch::Receiver<bool>,
    service: S,
) -> impl Future<Output = Result<(), ConnError>>
where
    T: Transport,
    S: Fn(Request<RequestBody>) -> F,
    F: Future<Output = Response<Bytes>>,
{
    // Not an `async fn`: a wrapper future would hold its own copy of the
    // arguments next to the inner one's, in every connection's task.
    serve_admitted(io, &admission::UNLISTED, config, stop, service)
}

/// [`serve_connection`] for a connection admitted with `ticket`: it tells
/// the ticket whose turn it is, so that only a connection waiting on its
/// client can be evicted.
pub async fn serve_admitted<T, S, F>(
    io: T,
    ticket: &Ticket,
    config: Arc<Config>,
    mut stop: watch::Receiver<bool>,
    service: S,
) -> Result<(), ConnError>
where
    T: Transport,
    S: Fn(Request<RequestBody>) -> F,
    F: Future<Output = Response<Bytes>>,
{
    // Owned, not borrowed: references to the locals would take room in
    // every connection's task, which is what a parked poll costs.
    let mut conn = Conn {
        io,
        carry: Vec::new(),
        config,
        ticket,
    };
    let result = serve_requests(&mut conn, &mut stop, &service).await;
    conn.carry = Vec::new();
    if let Some(status) = result.as_ref().err().and_then(ConnError::status) {
        conn.ticket.client_turn();
        let timeout = conn.config.write_timeout;
        Box::pin(write::refuse(&mut conn.io, status, timeout)).await;
    }
    result
}

/// What serving one connection works with.
struct Conn<'a, T> {
    io: T,
    /// Bytes read past the current request: the start of the next one.
    carry: Vec<u8>,
    config: Arc<Config>,
    ticket: &'a Ticket,
}

async fn serve_requests<T, S, F>(
    conn: &mut Conn<'_, T>,
    stop: &mut watch::Receiver<bool>,
    service: &S,
) -> Result<(), ConnError>
where
    T: Transport,
    S: Fn(Request<RequestBody>) -> F,
    F: Future<Output = Response<Bytes>>,
{
    // u32, not usize: this lives in every parked poll's task.
    let mut pipelined_in_a_row: u32 = 0;
    let mut answered_before = false;
    loop {
        if !conn.ticket.client_turn() {
            return Ok(());
        }
        let Some(incoming) = next_request(conn, stop).await? else {
            return Ok(());
        };
        if !conn.ticket.server_turn() {
            return Ok(());
        }
        let Incoming {
            request,
            mut framing,
            body_complete,
            pipelined,
        } = *incoming;
        // A first request has no answer before it to be pipelined behind.
        pipelined_in_a_row = if pipelined && answered_before {
            pipelined_in_a_row.saturating_add(1)
        } else {
            0
        };
        answered_before = true;
        let response = respond(&mut conn.io, &mut conn.carry, service(request)).await?;
        conn.ticket.client_turn();
        framing.keep_alive &= body_complete
            && !*stop.borrow()
            && (pipelined_in_a_row as usize) < conn.config.max_pipelined;
        let timeout = conn.config.write_timeout;
        Box::pin(write::answer(&mut conn.io, response, framing, timeout)).await?;
        if !framing.keep_alive {
            if body_complete && conn.carry.is_empty() && !pipelined {
                write::close(&mut conn.io, timeout).await;
            } else {
                Box::pin(write::linger(&mut conn.io, timeout)).await;
            }
            return Ok(());
        }
    }
}

/// A request read whole, ready for the handler.
struct Incoming {
    request: Request<RequestBody>,
    framing: Framing,
    /// False when the body was refused: the rest of the input cannot be
    /// framed, so the connection closes after the answer.
    body_complete: bool,
    /// Its first byte was there before the server was ready for it: sent
    /// before the previous answer was taken.
    pipelined: bool,
}

/// Waits for and reads the next request. `Ok(None)`: close quietly (the
/// client closed or stayed idle too long, or the server is stopping).
async fn next_request<T: Transport>(
    conn: &mut Conn<'_, T>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Box<Incoming>>, ConnError> {
    let deadline = Instant::now() + conn.config.head_timeout;
    let pipelined = match conn.carry.is_empty() {
        false => true,
        true => match wait_for_input(&mut conn.io, &mut conn.carry, stop, deadline).await? {
            Input::Closed => return Ok(None),
            Input::Waited => false,
            Input::AlreadyThere => true,
        },
    };
    // Boxed: reading is brief, and unboxed its state would be part of every
    // connection's task for the connection's whole life.
    // The request is boxed too: a `let` bound to an await's result keeps
    // its storage during that await, which put a whole request (264 bytes)
    // in every waiting connection's task.
    let (io, carry, config) = (&mut conn.io, &mut conn.carry, &conn.config);
    Ok(Box::pin(read_request(io, carry, config, deadline))
        .await?
        .map(|mut incoming| {
            incoming.pipelined = pipelined;
            Box::new(incoming)
        }))
}

/// Reads a request whose first bytes have arrived (or are in `carry`).
async fn read_request<T: Transport>(
    io: &mut T,
    carry: &mut Vec<u8>,
    config: &Config,
    deadline: Instant,
) -> Result<Option<Incoming>, ConnError> {
    let mut buf = std::mem::take(carry);
    let Some(head) = read_head(io, &mut buf, config, deadline).await? else {
        return Ok(None);
    };
    let (body, end) = read_body(io, &mut buf, &head, config).await?;
    let body_complete = body.is_ok();
    // Pipelined bytes are copied out so the (larger) read buffer can go.
    // After a refused body the rest cannot be framed and is not kept.
    if body_complete {
        *carry = buf.get(end..).map(<[u8]>::to_vec).unwrap_or_default();
    }
    drop(buf);
    let framing = Framing {
        version: head.request.version(),
        head_request: head.request.method() == Method::HEAD,
        keep_alive: head.keep_alive,
    };
    Ok(Some(Incoming {
        request: head.request.map(|()| body),
        framing,
        body_complete,
        pipelined: false,
    }))
}

/// How the wait for a request ended.
enum Input {
    /// Close quietly: the client closed, stayed idle too long, or the
    /// server is stopping.
    Closed,
    /// The request came after the server was ready for it.
    Waited,
    /// It was already there when the server looked.
    AlreadyThere,
}

/// The idle wait: no buffer held.
async fn wait_for_input<T: Transport>(
    io: &mut T,
    carry: &mut Vec<u8>,
    stop: &mut watch::Receiver<bool>,
    deadline: Instant,
) -> Result<Input, ConnError> {
    if *stop.borrow_and_update() {
        return Ok(Input::Closed);
    }
    let mut waited = false;
    let readable = io.wait_readable(carry);
    tokio::pin!(readable);
    let readable = std::future::poll_fn(|cx| {
        let poll = readable.as_mut().poll(cx);
        waited |= poll.is_pending();
        poll
    });
    let open = tokio::select! {
        biased;
        readable = readable => readable?,
        _ = stop.changed() => false,
        () = tokio::time::sleep_until(deadline) => false,
    };
    Ok(match (open, waited) {
        (false, _) => Input::Closed,
        (true, true) => Input::Waited,
        (true, false) => Input::AlreadyThere,
    })
}

/// Reads until `buf` starts with a complete head. `Ok(None)`: the client
/// closed (or never sent a byte) before a request began.
async fn read_head<T: Transport>(
    io: &mut T,
    buf: &mut Vec<u8>,
    config: &Config,
    deadline: Instant,
) -> Result<Option<head::Head>, ConnError> {
    let mut scanned = 0;
    loop {
        // Parse on the first bytes too, so garbage is refused at once
        // instead of after the timeout.
        if !buf.is_empty() && (scanned == 0 || head::may_be_complete(buf, scanned)) {
            if let Some(head) = head::parse(buf, config.max_head_bytes)? {
                return Ok(Some(head));
            }
        }
        if buf.len() >= config.max_head_bytes {
            return Err(ConnError::HeadTooLarge(config.max_head_bytes));
        }
        scanned = buf.len();
        match fill(io, buf, deadline).await {
            Ok(_) => {}
            Err(Fill::Eof | Fill::Timeout) if buf.is_empty() => return Ok(None),
            Err(Fill::Eof) => return Err(ConnError::ClosedMidRequest),
            Err(Fill::Timeout) => return Err(ConnError::HeadTimeout),
            Err(Fill::Io(e)) => return Err(e.into()),
        }
    }
}

/// Reads the body that follows the head. Returns it (or why it was refused)
/// and where the next request starts in `buf`.
async fn read_body<T: Transport>(
    io: &mut T,
    buf: &mut Vec<u8>,
    head: &head::Head,
    config: &Config,
) -> Result<(RequestBody, usize), ConnError> {
    let deadline = Instant::now() + config.body_timeout;
    let limit = config.max_body_bytes;
    let length = match head.framing {
        BodyFraming::Chunked => return read_chunked(io, buf, head, config, deadline).await,
        BodyFraming::Length(n) => n,
    };
    // Refused unread: the client may still be sending it, which `linger` absorbs.
    let Some(length) = usize::try_from(length).ok().filter(|&n| n <= limit) else {
        return Ok((Err(BodyError::TooLarge { limit }), head.len));
    };
    let end = head.len + length;
    if buf.len() < end {
        send_continue(io, head, config).await?;
        buf.reserve(end - buf.len());
    }
    while buf.len() < end {
        match fill(io, buf, deadline).await {
            Ok(_) => {}
            Err(Fill::Eof) => return Err(ConnError::ClosedMidRequest),
            Err(Fill::Timeout) => return Ok((Err(BodyError::Timeout), end)),
            Err(Fill::Io(e)) => return Err(e.into()),
        }
    }
    Ok((Ok(Bytes::copy_from_slice(&buf[head.len..end])), end))
}

async fn read_chunked<T: Transport>(
    io: &mut T,
    buf: &mut Vec<u8>,
    head: &head::Head,
    config: &Config,
    deadline: Instant,
) -> Result<(RequestBody, usize), ConnError> {
    let mut decoder = body::Chunked::new(head.len, config.max_body_bytes);
    let mut decoded = Vec::new();
    let mut asked = false;
    loop {
        match decoder.decode(buf, &mut decoded) {
            Ok(true) => return Ok((Ok(decoded.into()), decoder.pos)),
            Ok(false) => {}
            Err(e) => return Ok((Err(e), buf.len())),
        }
        // Decoded input is dropped, so chunk framing overhead cannot grow
        // the buffer past what one read adds.
        buf.drain(..decoder.pos);
        decoder.pos = 0;
        if !asked {
            send_continue(io, head, config).await?;
            asked = true;
        }
        match fill(io, buf, deadline).await {
            Ok(_) => {}
            Err(Fill::Eof) => return Err(ConnError::ClosedMidRequest),
            Err(Fill::Timeout) => return Ok((Err(BodyError::Timeout), buf.len())),
            Err(Fill::Io(e)) => return Err(e.into()),
        }
    }
}

async fn send_continue<T: Transport>(
    io: &mut T,
    head: &head::Head,
    config: &Config,
) -> Result<(), ConnError> {
    if head.expect_continue {
        write::interim_continue(io, config.write_timeout).await?;
    }
    Ok(())
}

/// Why a read added nothing.
enum Fill {
    Eof,
    Timeout,
    Io(std::io::Error),
}

/// One read into `buf`'s spare room, growing it by doubling when short.
async fn fill<T: Transport>(
    io: &mut T,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<usize, Fill> {
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(buf.capacity().max(FIRST_READ));
    }
    match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
        Err(_) => Err(Fill::Timeout),
        Ok(Ok(0)) => Err(Fill::Eof),
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(Fill::Io(e)),
    }
}

pin_project_lite::pin_project! {
    /// Runs the handler while watching the socket: a client that hangs up
    /// while its poll is parked ends the poll (and frees its slot) at once.
    /// A handler that panics answers 500 on its own connection only.
    ///
    /// Written out by hand because this is what a parked poll's task holds
    /// for a minute: an `async fn` taking the handler would store it twice
    /// (its argument and its pinned local).
    struct Respond<'a, T, F> {
        io: &'a mut T,
        carry: &'a mut Vec<u8>,
        #[pin]
        handler: F,
    }
}

fn respond<'a, T: Transport, F: Future>(
    io: &'a mut T,
    carry: &'a mut Vec<u8>,
    handler: F,
) -> Respond<'a, T, F> {
    Respond { io, carry, handler }
}

impl<T: Transport, F: Future> Future for Respond<'_, T, F> {
    type Output = Result<F::Output, ConnError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let handler = this.handler;
        match std::panic::catch_unwind(AssertUnwindSafe(|| handler.poll(cx))) {
            Ok(Poll::Ready(answer)) => return Poll::Ready(Ok(answer)),
            Ok(Poll::Pending) => {}
            Err(_) => return Poll::Ready(Err(ConnError::HandlerPanicked)),
        }
        // Once a byte is in `carry` (a pipelined request) the socket is no
        // longer watched; that request waits for its turn.
        if this.carry.is_empty() {
            let mut one = [0u8; 1];
            let mut read = ReadBuf::new(&mut one);
            match Pin::new(&mut **this.io).poll_read(cx, &mut read) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    return Poll::Ready(Err(ConnError::ClientGone))
                }
                Poll::Ready(Ok(())) => this.carry.push(one[0]),
                Poll::Ready(Err(_)) => return Poll::Ready(Err(ConnError::ClientGone)),
            }
        }
        Poll::Pending
    }
}

/// A small deterministic pseudo-random source for the noise tests.
#[cfg(test)]
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
