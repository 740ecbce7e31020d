//! Writing to the client: answers, interim `100 Continue`, refusals, and the
//! lingering close. Every write is bounded in time: a client that stops
//! reading fills the socket's send buffer, and without a bound the write
//! (and the connection's descriptor) would wait for it forever.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::response::{self, Framing};
use super::{ConnError, Transport};

/// Input drained before closing after an error answer, and for how long.
const LINGER_BYTES: usize = 256 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Writes all of `buf`; each write must make progress within `timeout`
/// (like nginx's `send_timeout`), so a slow but reading client on a poor
/// link still gets a large answer.
pub async fn write_all<T: Transport>(
    io: &mut T,
    mut buf: &[u8],
    timeout: Duration,
) -> Result<(), ConnError> {
    while !buf.is_empty() {
        match tokio::time::timeout(timeout, io.write(buf)).await {
            Err(_) => return Err(ConnError::WriteTimeout),
            Ok(Ok(0)) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
            Ok(Ok(n)) => buf = &buf[n..],
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn flush<T: Transport>(io: &mut T, timeout: Duration) -> Result<(), ConnError> {
    match tokio::time::timeout(timeout, io.flush()).await {
        Err(_) => Err(ConnError::WriteTimeout),
        Ok(result) => Ok(result?),
    }
}

/// Writes one answer.
pub async fn answer<T: Transport>(
    io: &mut T,
    response: Response<Bytes>,
    framing: Framing,
    timeout: Duration,
) -> Result<(), ConnError> {
    let (head, rest) = response::encode(response, framing);
    write_all(io, &head, timeout).await?;
    drop(head);
    if let Some(body) = rest {
        write_all(io, &body, timeout).await?;
    }
    flush(io, timeout).await
}

/// `Expect: 100-continue` clients (curl with a body over 1 KiB) wait for
/// this before they send the body.
pub async fn interim_continue<T: Transport>(
    io: &mut T,
    timeout: Duration,
) -> Result<(), ConnError> {
    write_all(io, b"HTTP/1.1 100 Continue\r\n\r\n", timeout).await?;
    flush(io, timeout).await
}

/// The layer's own answer to a request it cannot hand on, then the close.
pub async fn refuse<T: Transport>(io: &mut T, status: StatusCode, timeout: Duration) {
    let refusal = response::error(status);
    let _ = write_all(io, &refusal, timeout).await;
    drop(refusal);
    linger(io, timeout).await;
}

/// Ends our side after the last answer.
pub async fn close<T: Transport>(io: &mut T, timeout: Duration) {
    // TLS sends close_notify here, which a client that does not read can
    // also refuse to take.
    let _ = tokio::time::timeout(timeout, io.shutdown()).await;
}

/// Closing a socket with unread input makes the kernel send a reset, which
/// can destroy the answer before the client reads it: shut our side, then
/// drain theirs for a moment before closing.
pub async fn linger<T: Transport>(io: &mut T, timeout: Duration) {
    close(io, timeout).await;
    let mut sink = vec![0u8; 4096];
    let mut drained = 0;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while drained < LINGER_BYTES {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}
