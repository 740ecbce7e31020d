//! edgenet-server: the `DescribeNetworkModel` long-poll endpoint, the
//! development STS, `/healthz` and `/metrics`, on one listener.
//!
//! [`start`] runs a server from a [`Cli`] inside the current tokio runtime;
//! the binary and the integration tests both use it.

pub mod cli;
pub mod errors;
pub mod handlers;
pub mod http1;
pub mod hub;
pub mod metrics;
pub mod params;
pub mod source;
pub mod status;
pub mod store;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use edgenet_auth::{DevSts, DevStsConfig, KeyStore, KeysError, TokenKey};
use edgenet_model::ModelIndex;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use cli::{Cli, ModelAction, ModelCli};
use handlers::{AppState, Auth, Limits};
use hub::Hub;
use metrics::Metrics;
use source::etcd::EtcdSource;
use source::file::{FileSource, SourceError};
use source::SourceStatus;
use status::FeedbackStore;
use store::StoreError;
use tls::TlsError;

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("refusing to start without authentication: give --credentials FILE (or --insecure-no-auth for development only)")]
    NoAuthentication,
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Model(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
}

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    tls: bool,
    stop: watch::Sender<bool>,
    serving: JoinHandle<()>,
    state: Arc<AppState>,
}

impl Server {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://addr/` or `https://addr/`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.local_addr)
    }

    /// Polls parked right now.
    pub fn parked_polls(&self) -> usize {
        self.state.hub.parked()
    }

    /// Stops accepting, answers every parked poll `304` at once, lets the
    /// in-flight answers be written (up to the grace time), then returns.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        if let Err(e) = self.serving.await {
            tracing::error!(error = %e, "server task failed");
        }
    }
}

/// A model source ready to run once the hub exists.
enum Source {
    File(Arc<FileSource>),
    Etcd(Box<(EtcdSource, etcd_client::Client)>),
}

/// Loads credentials and the model, binds the listener and starts serving.
pub async fn start(cli: &Cli) -> Result<Server, StartError> {
    let auth = build_auth(cli)?;
    let feedback = Arc::new(match cli.etcd {
        Some(_) => FeedbackStore::replicated(),
        None => FeedbackStore::default(),
    });
    let (source, status, model) = open_source(cli, &feedback).await?;
    let model = Arc::new(model);
    let index = tokio::task::spawn_blocking(move || ModelIndex::build(model))
        .await
        .expect("building the model index does not panic");
    tracing::info!(nodes = index.len(), "model loaded");
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let listener = bind(cli.listen).map_err(|e| StartError::Bind {
        addr: cli.listen,
        reason: e.to_string(),
    })?;
    let local_addr = listener.local_addr().map_err(|e| StartError::Bind {
        addr: cli.listen,
        reason: e.to_string(),
    })?;
    let hub = Arc::new(Hub::new(index, cli.max_parked));
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AppState {
        hub: hub.clone(),
        metrics: metrics.clone(),
        feedback: feedback.clone(),
        source: status,
        auth,
        limits: Limits {
            max_wait: Duration::from_secs(cli.max_wait_seconds),
        },
    });
    let (stop, stop_rx) = watch::channel(false);
    let debounce = Duration::from_millis(cli.reload_debounce_ms);
    match source {
        Source::File(source) => {
            tokio::spawn(async move {
                if let Err(e) = source.watch(hub, metrics, debounce, stop_rx).await {
                    tracing::error!(error = %e, "model file watch stopped");
                }
            });
        }
        Source::Etcd(etcd) => {
            let (source, client) = *etcd;
            let layout = cli.etcd_options.config("").layout();
            let flush = store::feedback::flush_loop(
                client.clone(),
                layout,
                feedback,
                metrics.clone(),
                stop_rx.clone(),
            );
            tokio::spawn(flush);
            tokio::spawn(source.run(client, hub, metrics, stop_rx));
        }
    }
    let admission = http1::Admission::for_this_process();
    tracing::info!(budget = admission.budget(), "connection budget");
    let conn = Connections {
        state: state.clone(),
        admission,
        http: Arc::new(http_config(cli)),
        tls: tls.clone(),
        handshake_timeout: Duration::from_secs(cli.header_read_timeout_seconds.max(1)),
    };
    let grace = Duration::from_secs(cli.shutdown_grace_seconds);
    let serving = tokio::spawn(serve(listener, conn, stop.subscribe(), grace));
    tracing::info!(%local_addr, tls = tls.is_some(), "edgenet-server listening");
    Ok(Server {
        local_addr,
        tls: tls.is_some(),
        stop,
        serving,
        state,
    })
}

/// Thousands of agents reconnect at once after a restart or failover: a deep
/// accept backlog keeps their SYNs from being dropped (and retried seconds later).
const LISTEN_BACKLOG: u32 = 4096;

/// The file read at start (missing or invalid stops the server), or etcd:
/// an empty model until the source's first read, which it does itself.
async fn open_source(
    cli: &Cli,
    feedback: &Arc<FeedbackStore>,
) -> Result<(Source, Arc<SourceStatus>, edgenet_model::CloudModel), StartError> {
    match (&cli.model, &cli.etcd) {
        (_, Some(urls)) => {
            let config = cli.etcd_options.config(urls);
            let client = config.connect().await?;
            let source = EtcdSource::new(&config, feedback.clone());
            let status = source.status();
            tracing::info!(endpoints = urls, prefix = %config.layout().prefix(), "model from etcd");
            Ok((
                Source::Etcd(Box::new((source, client))),
                status,
                EtcdSource::initial_model(),
            ))
        }
        (Some(path), None) => {
            let (source, model) = FileSource::load_initial(path)?;
            tracing::info!(path = %path.display(), "model from file");
            let status = source.status();
            Ok((Source::File(source), status, model))
        }
        (None, None) => unreachable!("clap requires --model or --etcd"),
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn build_auth(cli: &Cli) -> Result<Auth, StartError> {
    let sts = match &cli.credentials {
        None => None,
        Some(path) => {
            let keys = KeyStore::load(path)?;
            let token_key = match &cli.token_key {
                Some(p) => TokenKey::load_or_create(p)?,
                None => {
                    tracing::info!("no --token-key: session tokens are sealed with a random key and die with this process");
                    TokenKey::generate()
                }
            };
            let mut config = DevStsConfig::new(cli.region.clone());
            if cli.allow_short_sts_durations {
                config = config.allow_short_durations();
            }
            tracing::info!(keys = keys.len(), path = %path.display(), "credentials loaded");
            Some(DevSts::new(keys, &token_key, config))
        }
    };
    match (cli.insecure_no_auth, sts) {
        (true, sts) => {
            tracing::warn!("--insecure-no-auth: requests are NOT authenticated; every caller may read every node's view");
            Ok(Auth::Insecure { sts })
        }
        (false, Some(sts)) => Ok(Auth::Verify {
            verifier: sts.verifier(),
            sts,
        }),
        (false, None) => Err(StartError::NoAuthentication),
    }
}

fn http_config(cli: &Cli) -> http1::Config {
    let timeout = Duration::from_secs(cli.header_read_timeout_seconds.max(1));
    http1::Config {
        max_head_bytes: cli.max_header_bytes,
        head_timeout: timeout,
        max_body_bytes: cli.max_body_bytes,
        body_timeout: timeout,
        write_timeout: http1::DEFAULT_WRITE_TIMEOUT,
        max_pipelined: http1::DEFAULT_MAX_PIPELINED,
    }
}

/// How accepted connections are served.
struct Connections {
    state: Arc<AppState>,
    /// Who keeps a file descriptor when they run short.
    admission: Arc<http1::Admission>,
    http: Arc<http1::Config>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
}

async fn serve(
    listener: TcpListener,
    conn: Connections,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    // Every connection holds a receiver: `true` tells it to finish, and the
    // sender's `closed()` is the moment the last one has.
    let (open, open_rx) = watch::channel(false);
    let mut accept_errors = http1::AcceptErrors::default();
    loop {
        conn.admission.settle().await;
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    accept_errors.recovered();
                    conn.spawn(tcp, peer.ip(), open_rx.clone());
                }
                Err(e) => {
                    // Out of file descriptors and the like: keep serving.
                    let pause = accept_errors.failed(&e, &conn.admission);
                    tokio::time::sleep(pause).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    tracing::info!(
        parked = conn.state.hub.parked(),
        "shutting down: answering parked polls 304"
    );
    conn.state.hub.shut_down();
    open.send_replace(true);
    drop(open_rx);
    if tokio::time::timeout(grace, open.closed()).await.is_err() {
        tracing::warn!("shutdown grace time over with connections still open");
    }
    tracing::info!("server stopped");
}

/// What a refused plain-HTTP client reads before the close.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n";

impl Connections {
    fn spawn(&self, tcp: TcpStream, peer: IpAddr, stop: watch::Receiver<bool>) {
        let ticket = match self.admission.admit(peer) {
            Ok(ticket) => ticket,
            Err(refused) => {
                tracing::debug!(%peer, error = %refused, "connection refused");
                if self.tls.is_none() {
                    let _ = tcp.try_write(REFUSAL);
                }
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (state, http) = (self.state.clone(), self.http.clone());
        let binder = ticket.binder();
        // Separate tasks for plain and TLS connections: one task type for
        // both would give every plain connection the size of the TLS state
        // (~5 KB instead of ~1 KB).
        let task = match self.tls.clone() {
            None => tokio::spawn(serve_io(state, http, tcp, ticket, stop)),
            Some(acceptor) => {
                let timeout = self.handshake_timeout;
                let tls = Handshake { acceptor, timeout };
                tokio::spawn(serve_tls(state, http, tcp, ticket, stop, tls))
            }
        };
        binder.bind(task.abort_handle());
    }
}

struct Handshake {
    acceptor: TlsAcceptor,
    timeout: Duration,
}

async fn serve_tls(
    state: Arc<AppState>,
    http: Arc<http1::Config>,
    tcp: TcpStream,
    ticket: http1::Ticket,
    stop: watch::Receiver<bool>,
    tls: Handshake,
) {
    match tokio::time::timeout(tls.timeout, tls.acceptor.accept(tcp)).await {
        Ok(Ok(io)) => serve_io(state, http, io, ticket, stop).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!("TLS handshake timed out"),
    }
}

async fn serve_io<I: http1::Transport>(
    state: Arc<AppState>,
    http: Arc<http1::Config>,
    io: I,
    ticket: http1::Ticket,
    stop: watch::Receiver<bool>,
) {
    let service = |req| handlers::handle(state.clone(), req);
    match http1::serve_admitted(io, &ticket, http, stop, service).await {
        Err(e @ http1::ConnError::HandlerPanicked) => tracing::error!(error = %e, "answered 500"),
        Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
        Ok(()) => {}
    }
}
