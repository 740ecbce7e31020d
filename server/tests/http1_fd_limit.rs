//! The real `edgenet-server` binary at `RLIMIT_NOFILE` 1024 (systemd's
//! default soft limit), set with `prlimit` on the child only, while 1,100
//! hostile connections from the same address as a normal client exist: the
//! normal client must still be served.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_edgenet-server");
const FD_LIMIT: &str = "1024";
const HOSTILE: usize = 1100;
/// Far beyond what a normal answer takes even on a loaded machine, far
/// short of the timeouts that used to be the only way out (the server runs
/// with a 120 s idle and head timeout, so a request stuck behind them shows).
const NORMAL_ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// The server under `prlimit`, killed when the test ends.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// Lines of the log that report a failed accept.
    accept_failed_lines: Arc<AtomicUsize>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(dir: &tempfile::TempDir) -> Self {
        let model = dir.path().join("cloud.json");
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cloud.json");
        std::fs::copy(example, &model).unwrap();
        let mut child = Command::new("prlimit")
            .arg(format!("--nofile={FD_LIMIT}:{FD_LIMIT}"))
            .arg("--")
            .arg(BIN)
            .arg("--model")
            .arg(&model)
            .args(["--insecure-no-auth", "--listen", "127.0.0.1:0"])
            .args(["--header-read-timeout-seconds", "120"])
            .env("EDGENET_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("prlimit (util-linux) runs the server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let accept_failed_lines = Arc::new(AtomicUsize::new(0));
        let counter = accept_failed_lines.clone();
        // Drained for the server's whole life, so logging never blocks it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("accept failed") {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                if let Some(rest) = line.split("local_addr=").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("server did not report its address");
        Server {
            child,
            addr: addr.parse().unwrap(),
            accept_failed_lines,
        }
    }

    /// A full descriptor table is logged once and then counted, not a
    /// line per retry (it used to be hundreds of lines).
    fn assert_accept_failures_not_spinning(&self) {
        let lines = self.accept_failed_lines.load(Ordering::SeqCst);
        assert!(lines <= 3, "{lines} lines of 'accept failed'");
    }
}

/// The test process itself holds the hostile sockets: make sure it may.
fn allow_this_process_many_fds() {
    let pid = std::process::id().to_string();
    let ok = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=8192:"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot raise this test's own descriptor limit to 8192");
}

/// One request on a fresh connection, as a normal client makes it: the
/// status code, or why there was none in time.
fn normal_request(addr: SocketAddr) -> Result<u16, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, NORMAL_ANSWER_WITHIN).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(NORMAL_ANSWER_WITHIN)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if answer.is_empty() => return Err(format!("no answer: {e}")),
        Err(_) => {}
    }
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an answer: {text:?}"))
}

/// Eight normal requests, one after another: all must be answered 200.
fn assert_normal_client_served(addr: SocketAddr, while_what: &str) {
    for i in 0..8 {
        let started = Instant::now();
        let result = normal_request(addr);
        eprintln!(
            "with {while_what}: normal request {i}: {result:?} in {:?}",
            started.elapsed()
        );
        assert_eq!(result, Ok(200), "with {while_what}, normal request {i}");
    }
}

/// Connections that connect and never send a byte.
fn idle_connections(addr: SocketAddr) -> Vec<TcpStream> {
    (0..HOSTILE)
        .map(|_| TcpStream::connect(addr).expect("the listen backlog takes them"))
        .collect()
}

/// Connections that pipeline requests (unsigned ones would do as well) and
/// never read: each sends as much as the socket takes without blocking.
fn pipelining_connections(addr: SocketAddr) -> Vec<TcpStream> {
    let burst = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    (0..HOSTILE)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("the listen backlog takes them");
            s.set_nonblocking(true).unwrap();
            let mut rest = burst.as_bytes();
            while !rest.is_empty() {
                match s.write(rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("hostile write: {e}"),
                }
            }
            s
        })
        .collect()
}

#[test]
fn idle_connections_holding_every_descriptor_do_not_starve_a_normal_client() {
    allow_this_process_many_fds();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir);
    assert_normal_client_served(server.addr, "no one else");
    let idle = idle_connections(server.addr);
    assert_normal_client_served(server.addr, "1,100 idle connections");
    server.assert_accept_failures_not_spinning();
    drop(idle);
}

#[test]
fn clients_that_pipeline_and_never_read_do_not_starve_a_normal_client() {
    allow_this_process_many_fds();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir);
    let hostile = pipelining_connections(server.addr);
    assert_normal_client_served(server.addr, "1,100 pipelining, never-reading connections");
    server.assert_accept_failures_not_spinning();
    drop(hostile);
}
