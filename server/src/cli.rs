//! The `edgenet-server` command line (docs/cli.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::store::EtcdConfig;

/// The DescribeNetworkModel long-poll endpoint of edgenet, with the
/// development STS (AssumeRole), /healthz and /metrics on one listener.
///
/// Every request is authenticated with AWS SigV4 against the keys of
/// --credentials (or not at all with --insecure-no-auth). The cloud model in
/// --model is watched: a valid new content is swapped in atomically and only
/// the parked polls whose node view changed are answered; an invalid one is
/// refused and the last valid model keeps being served. With --etcd the
/// model committed in etcd is served instead, and `edgenet-server model
/// push|pull` write and read it (see `edgenet-server model --help`).
#[derive(Debug, Clone, Parser)]
#[command(name = "edgenet-server", version, max_term_width = 100)]
pub struct Cli {
    /// The cloud model (JSON, docs/model.md). Must exist and be valid at start;
    /// watched afterwards (rename-into-place and in-place writes both work).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "etcd",
        conflicts_with = "etcd"
    )]
    pub model: Option<PathBuf>,

    /// Serve the model committed in etcd v3 instead of a file (docs/store.md):
    /// the endpoints of its members, comma-separated.
    #[arg(long, value_name = "URL[,URL...]")]
    pub etcd: Option<String>,

    #[command(flatten)]
    pub etcd_options: EtcdOptions,

    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8773")]
    pub listen: SocketAddr,

    /// The long-term keys (TOML, docs/cli.md): who may sign requests, which roles
    /// each may assume, the node each is bound to, and which are admins.
    /// Refused unless mode 0600 or stricter.
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,

    /// The 32-byte key that seals STS session tokens; created (mode 0600)
    /// when absent. Replicas sharing it accept each other's tokens. Without
    /// it a random key is used and tokens die with the process.
    #[arg(long, value_name = "FILE")]
    pub token_key: Option<PathBuf>,

    /// The SigV4 region that signatures must be scoped to.
    #[arg(long, value_name = "R", default_value = "eucalyptus")]
    pub region: String,

    /// Longest time a poll is held; larger WaitSeconds are clamped to it.
    #[arg(long, value_name = "N", default_value_t = 60)]
    pub max_wait_seconds: u64,

    /// Most polls parked at once; past it polls get 503 RequestLimitExceeded
    /// with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub max_parked: usize,

    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long, value_name = "F", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "F", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve without authentication (every caller may read everything).
    /// For development only; a warning is printed.
    #[arg(long)]
    pub insecure_no_auth: bool,

    /// A client must send its request headers within this time, so a slow
    /// client cannot hold a socket.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub header_read_timeout_seconds: u64,

    /// Largest request body (form parameters) accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Largest request head (request line and headers), in bytes; larger
    /// heads are answered 431.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// After a model file event, wait this long for the writes to settle
    /// before reading it.
    #[arg(long, value_name = "MS", default_value_t = 20)]
    pub reload_debounce_ms: u64,

    /// On SIGTERM, how long to wait for in-flight answers to be written.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub shutdown_grace_seconds: u64,

    /// Let the development STS grant durations down to 1 s (tests only;
    /// AWS's minimum is 900 s).
    #[arg(long)]
    pub allow_short_sts_durations: bool,
}

/// How to reach etcd, shared by the server and `model push` / `model pull`.
#[derive(Debug, Clone, Args)]
pub struct EtcdOptions {
    /// The key prefix the model lives under.
    #[arg(long, value_name = "P", default_value = crate::store::layout::DEFAULT_PREFIX)]
    pub etcd_prefix: String,

    /// PEM CA certificate that etcd's server certificate must chain to.
    #[arg(long, value_name = "F")]
    pub etcd_ca: Option<PathBuf>,

    /// PEM client certificate for etcd (needs --etcd-key).
    #[arg(long, value_name = "F", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,

    /// PEM private key of --etcd-cert.
    #[arg(long, value_name = "F", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdOptions {
    pub fn config(&self, urls: &str) -> EtcdConfig {
        EtcdConfig {
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            ..EtcdConfig::new(urls, &self.etcd_prefix)
        }
    }
}

/// `edgenet-server model push|pull`: the model in etcd (docs/store.md).
#[derive(Debug, Clone, Parser)]
#[command(name = "edgenet-server model", max_term_width = 100)]
pub struct ModelCli {
    #[command(subcommand)]
    pub action: ModelAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ModelAction {
    /// Validate FILE, write only what differs from the store, then commit.
    /// Exit 1 when FILE is invalid (nothing is written) or another writer
    /// changed the model meanwhile; exit 0 when written or nothing differed.
    Push {
        /// etcd endpoints, comma-separated.
        #[arg(long, value_name = "URL[,URL...]")]
        etcd: String,
        #[command(flatten)]
        options: EtcdOptions,
        /// The model file to write.
        file: PathBuf,
    },
    /// Print the committed model, as a model file, to stdout.
    Pull {
        /// etcd endpoints, comma-separated.
        #[arg(long, value_name = "URL[,URL...]")]
        etcd: String,
        #[command(flatten)]
        options: EtcdOptions,
    },
}
