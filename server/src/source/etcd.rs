//! The `--etcd` source: a full read of the committed model, then a watch
//! from the revision after the commit. Entity events are held until a put
//! of `P/commit`, then applied together as one change, so no node ever sees
//! half of a writer's change (docs/store.md).
//!
//! A lost watch, a compaction or an etcd error leads to a full read again
//! (after a backoff with jitter); a full read that finds what is served is
//! no change for anyone. An invalid committed model is refused and the last
//! valid one stays served, as with the file.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use edgenet_model::{CloudModel, ModelChange};
use etcd_client::{Client, EventType, WatchOptions};
use rand::Rng;
use tokio::sync::watch;

use super::{install, SourceKind, SourceStatus};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::status::FeedbackStore;
use crate::store::layout::{add_entry, empty_model, Entries, Key, Layout};
use crate::store::{self, read_committed, EtcdConfig, Snapshot, StoreError};

/// First wait after a failure; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The etcd side of what is served.
pub struct EtcdSource {
    layout: Layout,
    status: Arc<SourceStatus>,
    feedback: Arc<FeedbackStore>,
    /// The model keys as of the latest commit seen (valid or not).
    committed: Entries,
    /// The model keys of the model served (the latest valid commit).
    served: Entries,
    /// Keys where `committed` and `served` may differ.
    dirty: BTreeSet<Key>,
    /// Events since the latest commit; `None`: deleted.
    pending: BTreeMap<Key, Option<Vec<u8>>>,
    /// A full read succeeded since the last failure: the next failure
    /// starts the backoff afresh.
    read_since_failure: bool,
}

impl EtcdSource {
    pub fn new(config: &EtcdConfig, feedback: Arc<FeedbackStore>) -> Self {
        let layout = config.layout();
        EtcdSource {
            status: SourceStatus::new(SourceKind::Etcd, layout.prefix().to_owned()),
            layout,
            feedback,
            committed: Entries::new(),
            served: Entries::new(),
            dirty: BTreeSet::new(),
            pending: BTreeMap::new(),
            read_since_failure: false,
        }
    }

    pub fn status(&self) -> Arc<SourceStatus> {
        self.status.clone()
    }

    /// The model to start serving: an empty one until the first read.
    pub fn initial_model() -> CloudModel {
        empty_model()
    }

    /// Reads and watches until `stop`, reconnecting after every failure.
    pub async fn run(
        mut self,
        client: Client,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = BACKOFF_START;
        loop {
            let outcome = tokio::select! {
                outcome = self.read_and_watch(&client, &hub, &metrics) => outcome,
                _ = stop.changed() => return,
            };
            match outcome {
                Ok(Restart::Compacted) => {
                    metrics.watch_restarted();
                    backoff = BACKOFF_START;
                    continue;
                }
                Ok(Restart::Lost) => {
                    metrics.watch_restarted();
                    self.status
                        .set_store_error(Some("the etcd watch ended".into()));
                }
                Err(e) => {
                    metrics.etcd_error();
                    tracing::warn!(error = %e, "etcd unreachable; still serving the last valid model");
                    self.status
                        .set_store_error(Some(format!("etcd unreachable: {e}")));
                }
            }
            if std::mem::take(&mut self.read_since_failure) {
                backoff = BACKOFF_START;
            }
            let wait = with_jitter(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One full read, then the watch until it ends.
    async fn read_and_watch(
        &mut self,
        client: &Client,
        hub: &Arc<Hub>,
        metrics: &Metrics,
    ) -> Result<Restart, StoreError> {
        let mut c = client.clone();
        let snapshot = read_committed(&mut c, &self.layout).await?;
        self.status.set_store_error(None);
        self.read_since_failure = true;
        // The read was at the commit's revision (or, past a compaction, at
        // the newest with later keys held back): every event after it is
        // one the state read does not hold yet.
        let watch_from = snapshot.revision + 1;
        let revision = snapshot.commit_revision;
        self.take_snapshot(snapshot);
        if let Some(revision) = revision {
            self.serve_committed(revision, hub, metrics).await;
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(watch_from);
        let mut stream = store::watch_client(client)
            .watch(self.layout.prefix(), Some(options))
            .await?;
        tracing::info!(revision = watch_from, "watching etcd");
        while let Some(answer) = stream.message().await? {
            if answer.compact_revision() > 0 {
                tracing::warn!(
                    compacted = answer.compact_revision(),
                    "the etcd watch fell behind a compaction: reading everything again"
                );
                return Ok(Restart::Compacted);
            }
            if answer.canceled() {
                tracing::warn!(reason = answer.cancel_reason(), "etcd cancelled the watch");
                return Ok(Restart::Lost);
            }
            for event in answer.events() {
                let Some(kv) = event.kv() else { continue };
                let Some(key) = self.layout.parse(kv.key()) else {
                    continue;
                };
                let put = event.event_type() == EventType::Put;
                match key {
                    Key::Commit if put => self.commit(kv.mod_revision(), hub, metrics).await,
                    Key::Commit => {}
                    Key::Status(node) if put => self.feedback.merge_encoded(&node, kv.value()),
                    Key::Status(_) => {}
                    key => {
                        self.pending.insert(key, put.then(|| kv.value().to_vec()));
                    }
                }
            }
        }
        Ok(Restart::Lost)
    }

    /// Replaces what is known of etcd by a full read.
    fn take_snapshot(&mut self, snapshot: Snapshot) {
        for (node, value) in &snapshot.status {
            self.feedback.merge_encoded(node, value);
        }
        self.pending = snapshot
            .uncommitted
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        // Keys written after the commit (only seen when etcd compacted the
        // commit's revision) were read at their newer value: their
        // committed one is gone. Until the next commit they keep the value
        // served; a key never served here takes the newer value, as a
        // missing entity would be worse than an early one (docs/store.md).
        let mut committed = snapshot.model;
        for (key, newer) in &self.pending {
            let value = self.served.get(key).or(newer.as_ref());
            if let Some(value) = value {
                committed.insert(key.clone(), value.clone());
            }
        }
        self.dirty = differing_keys(&self.served, &committed);
        self.committed = committed;
    }

    /// A commit at `revision`: the held events join the committed keys, and
    /// the model they make is served if it is valid.
    async fn commit(&mut self, revision: i64, hub: &Arc<Hub>, metrics: &Metrics) {
        for (key, value) in std::mem::take(&mut self.pending) {
            match value {
                Some(v) => self.committed.insert(key.clone(), v),
                None => self.committed.remove(&key),
            };
            self.dirty.insert(key);
        }
        self.serve_committed(revision, hub, metrics).await;
    }

    /// Serves the committed keys if the model they make is valid.
    async fn serve_committed(&mut self, revision: i64, hub: &Arc<Hub>, metrics: &Metrics) {
        let (change, errors) = self.change_to_committed();
        let mut model = CloudModel::clone(hub.current().model());
        let errors = if errors.is_empty() {
            change.apply_to(&mut model);
            match model.validate() {
                Ok(()) => Vec::new(),
                Err(e) => e.0.iter().map(ToString::to_string).collect(),
            }
        } else {
            errors
        };
        if !errors.is_empty() {
            let what = format!("etcd commit at revision {revision}");
            self.status.refused(metrics, &what, &errors);
            return;
        }
        let touched = change.len();
        let report = install(hub, model, change).await;
        for key in std::mem::take(&mut self.dirty) {
            match self.committed.get(&key) {
                Some(v) => self.served.insert(key, v.clone()),
                None => self.served.remove(&key),
            };
        }
        metrics.reload_ok();
        metrics.commit_revision_served(revision);
        self.status.loaded(Some(revision));
        tracing::info!(
            revision,
            entities = touched,
            changed_views = report.changed_nodes.len(),
            woken_polls = report.woken_polls,
            "etcd commit served"
        );
    }

    /// The change from the served keys to the committed ones, and every key
    /// whose value does not decode.
    fn change_to_committed(&self) -> (ModelChange, Vec<String>) {
        let mut change = ModelChange::default();
        let mut errors = Vec::new();
        for key in &self.dirty {
            let old = self.served.get(key).map(Vec::as_slice);
            let new = self.committed.get(key).map(Vec::as_slice);
            if old == new {
                continue;
            }
            if let Err(e) = add_entry(&mut change, key, old, new) {
                errors.push(e);
            }
        }
        (change, errors)
    }
}

/// Why a watch ended without an etcd error.
enum Restart {
    /// etcd compacted past the watch: read again at once.
    Compacted,
    /// Cancelled or closed: read again after a backoff.
    Lost,
}

/// Keys whose values differ between two entry sets (present in one only
/// included).
fn differing_keys(a: &Entries, b: &Entries) -> BTreeSet<Key> {
    let mut keys: BTreeSet<Key> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    keys.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    keys
}

/// `wait` ± up to a quarter, so replicas that lost etcd together do not
/// come back in step.
fn with_jitter(wait: Duration) -> Duration {
    let quarter = wait.as_millis() as u64 / 4;
    let offset = rand::thread_rng().gen_range(0..=quarter * 2);
    Duration::from_millis(wait.as_millis() as u64 - quarter + offset)
}
