//! The byte streams the layer serves, and how each waits for a request
//! without holding a read buffer.

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

/// A connection's byte stream.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Resolves once the peer has sent something or closed, holding no
    /// buffer while it waits (an idle keep-alive connection can wait for
    /// minutes). A byte it had to take off the stream to find out is pushed
    /// onto `carry`. `Ok(false)`: the peer closed.
    fn wait_readable(
        &mut self,
        carry: &mut Vec<u8>,
    ) -> impl Future<Output = io::Result<bool>> + Send;
}

impl Transport for TcpStream {
    async fn wait_readable(&mut self, _carry: &mut Vec<u8>) -> io::Result<bool> {
        // A peek, not `readable()`: readiness can be spurious (seen with a
        // pooled client connection that never sent a byte), and the wait
        // that follows it would then hold a buffer and ignore shutdown.
        let mut one = [0u8; 1];
        Ok(self.peek(&mut one).await? > 0)
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    async fn wait_readable(&mut self, carry: &mut Vec<u8>) -> io::Result<bool> {
        // rustls keeps its own record buffers, so this only saves ours.
        read_one(self, carry).await
    }
}

/// Reads a single byte into `carry`; `Ok(false)` on EOF. A one-byte array is
/// all the waiting future holds.
pub async fn read_one<T: AsyncRead + Unpin>(io: &mut T, carry: &mut Vec<u8>) -> io::Result<bool> {
    let mut one = [0u8; 1];
    if io.read(&mut one).await? == 0 {
        return Ok(false);
    }
    carry.push(one[0]);
    Ok(true)
}
