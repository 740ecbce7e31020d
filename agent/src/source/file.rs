//! The local source: a cloud-model file on disk, watched, projected to
//! this node's view.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edgenet_model::{parse_model, view_for};

use crate::snapshot::{Snapshot, SnapshotSender};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read model {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid model {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("model {path} has no node {node:?}")]
    NoSuchNode { path: PathBuf, node: String },
    #[error("cannot watch {path}: {message}")]
    Watch { path: PathBuf, message: String },
}

/// Reads `path` and projects `node`'s view from it, with the same model
/// code the server uses.
pub fn snapshot_from_model_file(path: &Path, node: &str) -> Result<Snapshot, SourceError> {
    let bytes = std::fs::read(path).map_err(|source| SourceError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    snapshot_from_model_bytes(path, &bytes, node)
}

fn snapshot_from_model_bytes(
    path: &Path,
    bytes: &[u8],
    node: &str,
) -> Result<Snapshot, SourceError> {
    let model = parse_model(bytes).map_err(|e| SourceError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string().replace('\n', ";"),
    })?;
    let view = view_for(&model, node).ok_or_else(|| SourceError::NoSuchNode {
        path: path.to_path_buf(),
        node: node.to_string(),
    })?;
    let state_id = view.state_id().as_str().to_string();
    Ok(Snapshot::from_view(node, state_id, &view))
}

/// How long the file must stay quiet before it is read: editors and
/// `cp` write in several steps, and one reload per burst is enough.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches a cloud-model file and publishes this node's view whenever its
/// content changes. Invalid content is refused (logged) and the last valid
/// snapshot stays in force.
pub struct LocalSource {
    path: PathBuf,
    node: String,
}

impl LocalSource {
    pub fn new(path: impl Into<PathBuf>, node: impl Into<String>) -> Self {
        LocalSource {
            path: path.into(),
            node: node.into(),
        }
    }

    /// Publishes the first snapshot, then follows the file until the
    /// receiver side is gone. The first read must succeed: there is nothing
    /// to keep yet, and a wrong path should fail loudly at start.
    pub async fn run(self, tx: SnapshotSender) -> Result<(), SourceError> {
        // Watch before the first read, so a write between the two is seen.
        let (_watcher, mut events) = self.watch_parent()?;
        let first = snapshot_from_model_file(&self.path, &self.node)?;
        let mut last_id = first.state_id.clone();
        tx.send_replace(Some(Arc::new(first)));
        loop {
            // Wait for an event that concerns our file, then for quiet.
            if events.recv().await.is_none() {
                return Ok(());
            }
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, events.recv()).await {}
            if tx.is_closed() {
                return Ok(());
            }
            self.reload(&tx, &mut last_id);
        }
    }

    fn reload(&self, tx: &SnapshotSender, last_id: &mut String) {
        match snapshot_from_model_file(&self.path, &self.node) {
            Ok(snapshot) if snapshot.state_id == *last_id => {
                tracing::debug!(state_id = %last_id, "model file changed, this node's view did not");
            }
            Ok(snapshot) => {
                tracing::info!(from = %last_id, to = %snapshot.state_id, "model file changed");
                *last_id = snapshot.state_id.clone();
                tx.send_replace(Some(Arc::new(snapshot)));
            }
            Err(SourceError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::warn!(path = %self.path.display(), "model file is gone; keeping the last valid view");
            }
            Err(error) => {
                tracing::error!(%error, "refusing the new model file; keeping the last valid view");
            }
        }
    }

    /// Watches the directory, not the file: editors and deploy tools
    /// replace files by renaming, which a watch on the old inode would miss.
    fn watch_parent(
        &self,
    ) -> Result<(notify::RecommendedWatcher, mpsc::Receiver<()>), SourceError> {
        let watch_error = |message: String| SourceError::Watch {
            path: self.path.clone(),
            message,
        };
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self.path.file_name().map(|n| n.to_os_string());
        let (tx, rx) = mpsc::channel(16);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                let ours = event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == name);
                if ours && !matches!(event.kind, notify::EventKind::Access(_)) {
                    // A full channel already holds a wake-up: dropping is fine.
                    let _ = tx.try_send(());
                }
            })
            .map_err(|e| watch_error(e.to_string()))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| watch_error(e.to_string()))?;
        Ok((watcher, rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cloud.json")
    }

    #[test]
    fn projects_the_node_view_with_the_model_id() {
        let snapshot = snapshot_from_model_file(&example(), "nc-1").unwrap();
        assert!(snapshot.state_id.starts_with("v1-"));
        assert!(snapshot.view.is_some());
        assert!(snapshot.left_out.is_empty());
        let err = snapshot_from_model_file(&example(), "nc-99").unwrap_err();
        assert!(err.to_string().contains("no node \"nc-99\""), "{err}");
    }

    #[test]
    fn invalid_models_are_one_line_errors() {
        let err = snapshot_from_model_bytes(Path::new("m.json"), b"{\"schema\": 1", "nc-1")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid model m.json"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[tokio::test]
    async fn follows_changes_and_keeps_the_last_valid_view() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.json");
        let original = std::fs::read_to_string(example()).unwrap();
        std::fs::write(&path, &original).unwrap();
        let (tx, mut rx) = watch::channel(None);
        let task = tokio::spawn(LocalSource::new(&path, "nc-1").run(tx));
        rx.changed().await.unwrap();
        let first = rx.borrow_and_update().clone().unwrap();

        // Invalid content: refused, nothing published.
        std::fs::write(&path, b"{ not json").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(800), rx.changed()).await;
        assert!(quiet.is_err(), "an invalid file must not publish");

        // A real change to nc-1 (a new route) is published, via rename.
        let changed = original.replacen(
            "\"routes\": [",
            "\"routes\": [{\"destination\": \"10.9.0.0/16\", \"gateway\": \"10.1.0.254\"},",
            1,
        );
        assert_ne!(changed, original);
        let staging = dir.path().join(".cloud.json.tmp");
        std::fs::write(&staging, changed).unwrap();
        std::fs::rename(&staging, &path).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("change published")
            .unwrap();
        let second = rx.borrow_and_update().clone().unwrap();
        assert_ne!(first.state_id, second.state_id);
        task.abort();
    }
}
