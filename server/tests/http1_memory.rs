//! What a waiting connection costs in heap, counted by a global allocator
//! (its own test binary, so no other test's allocations are counted). The
//! point of `edgenet_server::http1` is that a connection waiting for its
//! next request, or holding a parked request, owns no read or write buffer:
//! hyper's layer held 16 KiB of buffers per connection here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgenet_server::http1::{serve_connection, Config, RequestBody};
use http::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static PARKED: AtomicUsize = AtomicUsize::new(0);

/// Every request parks for good, like a long poll whose view never changes;
/// like edgenet's handler, it frees the request before it parks.
fn park(req: Request<RequestBody>) -> impl std::future::Future<Output = Response<Bytes>> {
    drop(req);
    PARKED.fetch_add(1, Ordering::SeqCst);
    async {
        std::future::pending::<()>().await;
        Response::new(Bytes::new())
    }
}

const N: usize = 300;

/// Heap bytes per connection after `N` blocking (allocation-free) client
/// sockets connect and send `request` (empty: nothing).
async fn heap_per_connection(request: &'static [u8]) -> isize {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stop_rx) = watch::channel(false);
    let config = Arc::new(Config {
        max_head_bytes: 16 * 1024,
        head_timeout: Duration::from_secs(30),
        max_body_bytes: 64 * 1024,
        body_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(30),
        max_pipelined: 32,
    });
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(serve_connection(tcp, config.clone(), stop_rx.clone(), park));
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    // Warm up lazily built runtime state with one connection of each kind.
    let mut clients = vec![connect(addr, request)];
    settle(&accepted, 1, request, 1).await;
    let before = LIVE.load(Ordering::SeqCst);
    let parked_before = PARKED.load(Ordering::SeqCst);
    clients.extend((0..N).map(|_| connect(addr, request)));
    settle(&accepted, N + 1, request, parked_before + N).await;
    let after = LIVE.load(Ordering::SeqCst);
    drop(clients);
    (after - before) / N as isize
}

fn connect(addr: std::net::SocketAddr, request: &[u8]) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    s
}

async fn settle(accepted: &AtomicUsize, connections: usize, request: &[u8], parked: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.load(Ordering::SeqCst) < connections
        || (!request.is_empty() && PARKED.load(Ordering::SeqCst) < parked)
    {
        assert!(Instant::now() < deadline, "connections did not settle");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let every connection task reach its waiting state.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_connections_hold_no_buffers() {
    let idle = heap_per_connection(b"").await;
    let parked = heap_per_connection(
        b"GET /?Action=DescribeNetworkModel&NodeId=nc-1 HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n",
    )
    .await;
    eprintln!("heap per connection: idle {idle} B, holding a parked request {parked} B");
    // The task (its future is ~1 KB) and tokio's socket registration; a
    // read buffer alone is 2 KiB, hyper's two were 16 KiB.
    assert!(idle < 2048, "an idle connection holds {idle} B");
    assert!(parked < 2048, "a parked connection holds {parked} B");
}
