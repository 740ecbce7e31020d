//! The model in etcd (docs/store.md): connecting, the key layout, reading
//! the committed model, `model push` / `model pull`, and the replicas'
//! shared node feedback.

pub mod feedback;
pub mod layout;
pub mod push;

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};

use layout::{Entries, Key, Layout};

/// Keys read per range request: a page of big entities stays well under
/// the 4 MiB a gRPC message may carry by default.
const PAGE_KEYS: i64 = 2_000;
/// Largest etcd answer accepted (a watch answer may carry a whole import
/// transaction).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How to reach etcd: `--etcd`, `--etcd-prefix`, `--etcd-ca/-cert/-key`.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("cannot read {path}: {reason}")]
    ReadFile { path: PathBuf, reason: String },
    #[error("--etcd-cert and --etcd-key go together")]
    HalfIdentity,
    #[error("the revision {0} has been compacted")]
    Compacted(i64),
}

impl EtcdConfig {
    /// Splits `URL[,URL...]`; a URL without a scheme gets `http://` (or
    /// `https://` when a CA is given).
    pub fn new(urls: &str, prefix: &str) -> Self {
        EtcdConfig {
            endpoints: urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
            prefix: prefix.to_owned(),
            ca: None,
            cert: None,
            key: None,
        }
    }

    pub fn layout(&self) -> Layout {
        Layout::new(&self.prefix)
    }

    /// A client; it connects lazily, so an unreachable etcd is no error yet.
    pub async fn connect(&self) -> Result<Client, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(15))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            // A member cut off from its quorum fails requests and watches
            // at once instead of answering from a stale copy.
            .with_require_leader(true);
        let tls = self.ca.is_some() || self.cert.is_some();
        if tls {
            options = options.with_tls(self.tls_options()?);
        }
        let endpoints: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| match (e.contains("://"), tls) {
                (true, _) => e.clone(),
                (false, true) => format!("https://{e}"),
                (false, false) => format!("http://{e}"),
            })
            .collect();
        Ok(Client::connect(endpoints, Some(options)).await?)
    }

    fn tls_options(&self) -> Result<TlsOptions, StoreError> {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => return Err(StoreError::HalfIdentity),
        }
        Ok(tls)
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::ReadFile {
        path: path.clone(),
        reason: e.to_string(),
    })
}

/// Everything under the prefix at one revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The revision read at.
    pub revision: i64,
    /// The revision of the latest `P/commit` put; `None`: never committed.
    pub commit_revision: Option<i64>,
    pub model: Entries,
    /// Model keys modified after the commit (not to be served yet), with
    /// their values at `revision`.
    pub uncommitted: Entries,
    /// `P/status/<node>` values.
    pub status: Vec<(String, Vec<u8>)>,
}

/// Reads the prefix as of the latest commit: at the commit's revision when
/// etcd still has it, else (compacted) at the newest revision with the
/// keys written after the commit set apart in `uncommitted`.
pub async fn read_committed(client: &mut Client, layout: &Layout) -> Result<Snapshot, StoreError> {
    let commit_key = layout.key(&Key::Commit);
    let answer = kv(client).get(commit_key, None).await?;
    let newest = answer.header().map(|h| h.revision()).unwrap_or(0);
    let commit_revision = answer.kvs().first().map(|kv| kv.mod_revision());
    let Some(commit) = commit_revision else {
        let mut snapshot = read_prefix(client, layout, newest).await?;
        snapshot.uncommitted = std::mem::take(&mut snapshot.model);
        return Ok(snapshot);
    };
    match read_prefix(client, layout, commit).await {
        Ok(snapshot) => Ok(snapshot),
        Err(StoreError::Compacted(_)) => {
            let snapshot = read_prefix(client, layout, newest).await?;
            tracing::warn!(
                commit,
                uncommitted = snapshot.uncommitted.len(),
                "the commit's revision is compacted: read the newest, keys written since held back"
            );
            Ok(snapshot)
        }
        Err(e) => Err(e),
    }
}

/// Everything under the prefix now, the keys written after the latest
/// commit set apart in `uncommitted` (what a writer must read).
pub async fn read_newest(client: &mut Client, layout: &Layout) -> Result<Snapshot, StoreError> {
    read_prefix(client, layout, 0).await
}

/// Pages through the prefix at `revision` (0: the newest). Keys written
/// after the commit seen at that revision go to `uncommitted`.
async fn read_prefix(
    client: &mut Client,
    layout: &Layout,
    revision: i64,
) -> Result<Snapshot, StoreError> {
    let mut snapshot = Snapshot {
        revision,
        ..Snapshot::default()
    };
    let end = prefix_end(layout.prefix());
    let mut from = layout.prefix().as_bytes().to_vec();
    let mut kv = kv(client);
    let commit = kv
        .get(
            layout.key(&Key::Commit),
            Some(GetOptions::new().with_revision(revision)),
        )
        .await
        .map_err(compacted(revision))?;
    if revision == 0 {
        // The newest: every page is read at the revision of the first.
        snapshot.revision = commit.header().map(|h| h.revision()).unwrap_or(0);
    }
    let revision = snapshot.revision;
    let commit_revision = commit.kvs().first().map(|kv| kv.mod_revision());
    snapshot.commit_revision = commit_revision;
    loop {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_revision(revision)
            .with_limit(PAGE_KEYS);
        let answer = kv
            .get(from.clone(), Some(options))
            .await
            .map_err(compacted(revision))?;
        for kv in answer.kvs() {
            match layout.parse(kv.key()) {
                Some(Key::Status(node)) => snapshot.status.push((node, kv.value().to_vec())),
                Some(key) if key.is_model() => {
                    let late = commit_revision.is_some_and(|c| kv.mod_revision() > c);
                    let bucket = if late {
                        &mut snapshot.uncommitted
                    } else {
                        &mut snapshot.model
                    };
                    bucket.insert(key, kv.value().to_vec());
                }
                _ => {}
            }
        }
        match answer.kvs().last() {
            Some(last) if answer.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(snapshot)
}

fn compacted(revision: i64) -> impl Fn(etcd_client::Error) -> StoreError {
    move |e| match &e {
        etcd_client::Error::GRpcStatus(status) if status.message().contains("compacted") => {
            StoreError::Compacted(revision)
        }
        _ => StoreError::Etcd(e),
    }
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A KV client that accepts answers up to [`MAX_MESSAGE_BYTES`].
pub fn kv(client: &Client) -> etcd_client::KvClient {
    client
        .kv_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// A watch client that accepts answers up to [`MAX_MESSAGE_BYTES`].
pub fn watch_client(client: &Client) -> etcd_client::WatchClient {
    client
        .watch_client()
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
}
