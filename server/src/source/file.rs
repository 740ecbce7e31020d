//! The `--model FILE` source: the first load at start, then an inotify watch
//! of the file's directory that reloads the model when the file changes.
//! A reload diffs the new model against the served one into the
//! entity-level change the hub installs.
//!
//! Only events that can change the content count (a write, a close after
//! writing, a create, a rename, a removal): reading the file raises access
//! events of its own, and counting those would make every read trigger the
//! next one.
//!
//! The directory is watched, not the file, so replacing the file by rename
//! (the safe way to write it) is seen. In-place writes are read once the
//! writer has closed the file and events have been quiet for the debounce
//! time; a file read half-written fails validation and is refused like any
//! invalid file, and the next complete write is picked up.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use edgenet_model::{parse_model, CloudModel, ModelError};
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::{SourceKind, SourceStatus};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// How long an unclosed in-place write may stay silent before the file is
/// read anyway (a writer that keeps the file open, e.g. an editor).
const OPEN_WRITE_PATIENCE: Duration = Duration::from_millis(1000);
/// After the file became whole, how long to wait for more events (a burst of
/// writes closed one after the other) before reading it.
const SETTLED_QUIET: Duration = Duration::from_millis(2);
/// A slow safety net in case an inotify event is lost (e.g. the watch had to
/// be re-established): the file's size and mtime are compared this often.
const RECHECK_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read model file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("model file {path} is invalid:\n{}", .errors.join("\n"))]
    Invalid { path: PathBuf, errors: Vec<String> },
    #[error("cannot watch {path}: {reason}")]
    Watch { path: PathBuf, reason: String },
}

/// The model file and what became of its last reads.
pub struct FileSource {
    path: PathBuf,
    status: Arc<SourceStatus>,
    /// Fingerprint of the last content read, to skip events that changed nothing.
    last_content: Mutex<u64>,
}

impl FileSource {
    /// Reads and validates the file at start: a missing or invalid file
    /// stops the server.
    pub fn load_initial(path: &Path) -> Result<(Arc<Self>, CloudModel), SourceError> {
        let bytes = std::fs::read(path).map_err(|e| SourceError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let model = parse_model(&bytes).map_err(|e| SourceError::Invalid {
            path: path.to_owned(),
            errors: e.lines(),
        })?;
        let source = FileSource {
            path: path.to_owned(),
            status: SourceStatus::new(SourceKind::File, path.display().to_string()),
            last_content: Mutex::new(fingerprint(&bytes)),
        };
        Ok((Arc::new(source), model))
    }

    pub fn status(&self) -> Arc<SourceStatus> {
        self.status.clone()
    }

    /// Watches the file until `stop` turns true, reloading on changes.
    pub async fn watch(
        self: Arc<Self>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        debounce: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), SourceError> {
        let (tx, mut events) = mpsc::unbounded_channel();
        let _watcher = self.start_watcher(tx)?;
        // A write that landed between the first read and the watch made no
        // event: read once more now that nothing can be missed (content
        // equal to the first read is skipped).
        self.reload(&hub, &metrics).await;
        let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
        let mut last_meta = file_meta(&self.path);
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { return Ok(()) };
                    let open_write = self.settle(event, &mut events, debounce).await;
                    if open_write {
                        tracing::debug!(path = %self.path.display(), "reading model file still open for writing");
                    }
                }
                _ = recheck.tick() => {
                    let meta = file_meta(&self.path);
                    if meta == last_meta { continue; }
                }
                _ = stop.changed() => return Ok(()),
            }
            last_meta = file_meta(&self.path);
            self.reload(&hub, &metrics).await;
        }
    }

    fn start_watcher(
        &self,
        tx: mpsc::UnboundedSender<Event>,
    ) -> Result<notify::RecommendedWatcher, SourceError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = self.path.file_name().map(|n| n.to_owned());
        let watch_error = |e: notify::Error| SourceError::Watch {
            path: dir.clone(),
            reason: e.to_string(),
        };
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<Event>| match res {
                Ok(event) => {
                    let ours = event.paths.iter().any(|p| p.file_name() == name.as_deref());
                    if ours && may_change_content(&event.kind) {
                        let _ = tx.send(event);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "model file watch error"),
            })
            .map_err(watch_error)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        tracing::info!(path = %self.path.display(), "watching model file");
        Ok(watcher)
    }

    /// Waits until the file is complete and the events about it are quiet:
    /// [`SETTLED_QUIET`] after a close-after-write or a rename into place
    /// (the content is whole: read it at once), `debounce` after other
    /// events, and while a writer holds it open, until it closes it or has
    /// been silent for [`OPEN_WRITE_PATIENCE`]. Returns whether a write was
    /// still open.
    async fn settle(
        &self,
        first: Event,
        events: &mut mpsc::UnboundedReceiver<Event>,
        debounce: Duration,
    ) -> bool {
        let mut open_write = opens_write(&first.kind);
        let mut complete = completes(&first.kind);
        loop {
            let quiet = if open_write {
                OPEN_WRITE_PATIENCE
            } else if complete {
                SETTLED_QUIET.min(debounce)
            } else {
                debounce
            };
            match tokio::time::timeout(quiet, events.recv()).await {
                Ok(Some(event)) => {
                    if completes(&event.kind) {
                        (open_write, complete) = (false, true);
                    } else if opens_write(&event.kind) {
                        (open_write, complete) = (true, false);
                    }
                }
                Ok(None) | Err(_) => return open_write,
            }
        }
    }

    /// Reads the file; a valid new content is swapped in, an invalid one is
    /// refused and recorded, and the last valid model stays.
    pub async fn reload(&self, hub: &Arc<Hub>, metrics: &Metrics) {
        metrics.model_read();
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "model file unreadable; keeping the last valid model");
                return;
            }
        };
        let print = fingerprint(&bytes);
        {
            let mut last = self.last_content.lock().unwrap_or_else(|p| p.into_inner());
            if *last == print {
                tracing::debug!(path = %self.path.display(), "model file event without a content change");
                return;
            }
            *last = print;
        }
        let hub = hub.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let model = parse_model(&bytes)?;
            Ok::<_, ModelError>(hub.install_model(Arc::new(model)))
        })
        .await;
        match outcome {
            Ok(Ok(report)) => {
                metrics.reload_ok();
                self.status.loaded(None);
                tracing::info!(
                    path = %self.path.display(),
                    changed_views = report.changed_nodes.len(),
                    woken_polls = report.woken_polls,
                    "model reloaded and swapped in"
                );
            }
            Ok(Err(e)) => self.refuse(metrics, e.lines()),
            Err(e) => self.refuse(metrics, vec![format!("model reload failed: {e}")]),
        }
    }

    fn refuse(&self, metrics: &Metrics, errors: Vec<String>) {
        let what = self.path.display().to_string();
        self.status.refused(metrics, &what, &errors);
    }
}

/// The events that can mean new content. Not the access events (open,
/// read, close without writing) that every read of the file raises itself,
/// nor attribute changes.
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) | EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => false,
    }
}

fn opens_write(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Modify(ModifyKind::Data(_))
            | EventKind::Create(CreateKind::File | CreateKind::Any)
    )
}

/// A close after writing, or a rename into place: the file is whole now.
fn completes(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
    )
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Size, mtime and inode: enough to notice a change inotify did not report.
fn file_meta(path: &Path) -> Option<(u64, SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgenet_model::ModelIndex;

    const EXAMPLE: &str = include_str!("../../../examples/cloud.json");

    /// A write between the start-up read and the inotify watch makes no
    /// event; the watch must still pick it up, and long before the slow
    /// metadata recheck.
    #[tokio::test]
    async fn a_write_before_the_watch_starts_is_not_missed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.json");
        std::fs::write(&path, EXAMPLE).unwrap();
        let (source, model) = FileSource::load_initial(&path).unwrap();
        let hub = Arc::new(Hub::new(ModelIndex::build(Arc::new(model)), 100));
        let metrics = Arc::new(Metrics::default());

        let mut invalid: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        invalid["instances"][0]["private_ip"] = "10.9.9.9".into();
        std::fs::write(&path, invalid.to_string()).unwrap();

        let (stop_tx, stop_rx) = watch::channel(false);
        let watching = tokio::spawn(source.clone().watch(
            hub,
            metrics,
            Duration::from_millis(20),
            stop_rx,
        ));
        let deadline = tokio::time::Instant::now() + RECHECK_INTERVAL / 2;
        while source.status().snapshot().invalid_count == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the early write was missed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(source
            .status()
            .snapshot()
            .last_error
            .unwrap()
            .contains("private_ip"));
        stop_tx.send(true).unwrap();
        watching.await.unwrap().unwrap();
    }
}
