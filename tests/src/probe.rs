//! Real packets: TCP connects, pings and tiny responders inside namespaces.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// Connects from `ns` to `addr` and returns the responder's greeting line.
/// A dropped SYN shows up as a timeout, a rejected one as an error.
pub fn tcp_connect(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<String> {
    let stream = ns.run_in(move || Ok(TcpStream::connect_timeout(&addr, timeout)?))?;
    read_greeting(stream, timeout)
}

/// True when a TCP connection from `ns` to `addr` is established within
/// `timeout` (for servers that do not speak first).
pub fn tcp_open(ns: &Netns, addr: SocketAddr, timeout: Duration) -> bool {
    ns.run_in(move || Ok(TcpStream::connect_timeout(&addr, timeout)?))
        .is_ok()
}

/// Like [`tcp_connect`] but binds the source address first.
pub fn tcp_connect_from(
    ns: &Netns,
    source: std::net::IpAddr,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<String> {
    // std cannot bind before connecting, so this one goes through nix.
    let stream = ns.run_in(move || bound_connect(source, addr, timeout))?;
    read_greeting(stream, timeout)
}

fn bound_connect(
    source: std::net::IpAddr,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let (std::net::IpAddr::V4(src), SocketAddr::V4(dst)) = (source, addr) else {
        bail!("bound connect supports IPv4 only");
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(src, 0)),
    )?;
    match connect(fd.as_raw_fd(), &SockaddrIn::from(dst)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => bail!("connect {addr} from {source}: {e}"),
    }
    let stream = TcpStream::from(fd);
    wait_connected(&stream, timeout)?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn wait_connected(stream: &TcpStream, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = stream.take_error()? {
            bail!("connect failed: {e}");
        }
        if stream.peer_addr().is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("connect timed out after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn read_greeting(mut stream: TcpStream, timeout: Duration) -> Result<String> {
    stream.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).context("reading greeting")?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// True when a TCP connection from `ns` to `addr` is established in time.
pub fn can_connect(ns: &Netns, addr: SocketAddr) -> bool {
    tcp_connect(ns, addr, Duration::from_millis(1500)).is_ok()
}

/// One ICMP echo from `ns`; true when answered within `wait_secs`.
pub fn ping(ns: &Netns, target: &str, wait_secs: u32) -> Result<bool> {
    ping_from(ns, None, target, wait_secs)
}

/// Like [`ping`], with `-I source` (an address) when given.
pub fn ping_from(ns: &Netns, source: Option<&str>, target: &str, wait_secs: u32) -> Result<bool> {
    let wait = wait_secs.to_string();
    let mut args = vec!["-n", "-q", "-c", "1", "-W", &wait];
    if let Some(src) = source {
        args.extend(["-I", src]);
    }
    args.push(target);
    Ok(ns.exec_unchecked("ping", &args)?.status.success())
}

/// What a responder answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A greeting line `<tag>\n` at once, then close.
    Greeting,
    /// Reads an HTTP request, answers `200` with body `<tag>\n`.
    Http,
}

/// A TCP listener in a namespace that answers every connection and records
/// who connected (the source address it saw, for SNAT checks).
pub struct Responder {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Listens on `addr` inside `ns`; answers with `tag`.
    pub fn start(ns: &Netns, addr: SocketAddr, tag: &str, reply: Reply) -> Result<Responder> {
        let listener = ns
            .run_in(move || Ok(TcpListener::bind(addr)?))
            .with_context(|| format!("responder on {addr} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peers, stop, tag) = (peers.clone(), stop.clone(), tag.to_owned());
            thread::spawn(move || serve(listener, &tag, reply, &peers, &stop))
        };
        Ok(Responder {
            addr,
            peers,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Source addresses of the connections seen so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("peers lock").clone()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    listener: TcpListener,
    tag: &str,
    reply: Reply,
    peers: &Mutex<Vec<SocketAddr>>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                peers.lock().expect("peers lock").push(peer);
                let _ = answer(stream, tag, reply);
            }
            // The kernel completes handshakes on its own; the pause only
            // delays greetings, and keeps dozens of idle responders cheap.
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn answer(mut stream: TcpStream, tag: &str, reply: Reply) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    match reply {
        Reply::Greeting => stream.write_all(format!("{tag}\n").as_bytes())?,
        Reply::Http => {
            read_request_head(&mut stream)?;
            let body = format!("{tag}\n");
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes())?;
            stream.write_all(body.as_bytes())?;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

fn read_request_head(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 64 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Counts IPv4 packets from `source` arriving in a namespace, in a table of
/// ours (`inet e2eprobe`) hooked before anything else: proof of what
/// reached a target, independent of whether it could answer.
pub struct ArrivalCounter<'a> {
    ns: &'a Netns,
    chain: String,
}

impl<'a> ArrivalCounter<'a> {
    /// Installs a counter named `name` for packets from `source`.
    pub fn install(ns: &'a Netns, name: &str, source: &str) -> Result<ArrivalCounter<'a>> {
        let chain = format!("from_{name}");
        ns.nft(&["add", "table", "inet", "e2eprobe"])?;
        let hook = "{ type filter hook prerouting priority -400; }";
        ns.nft(&["add", "chain", "inet", "e2eprobe", &chain, hook])?;
        ns.nft(&[
            "add", "rule", "inet", "e2eprobe", &chain, "ip", "saddr", source, "counter",
        ])?;
        Ok(ArrivalCounter { ns, chain })
    }

    /// Packets counted so far.
    pub fn packets(&self) -> Result<u64> {
        let text = self
            .ns
            .nft(&["list", "chain", "inet", "e2eprobe", &self.chain])?;
        let Some(after) = text.split("packets ").nth(1) else {
            bail!("no counter in {text}");
        };
        Ok(after.split_whitespace().next().unwrap_or("0").parse()?)
    }
}
