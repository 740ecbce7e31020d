//! Where views come from, and the local one: a cloud-model file on disk.
//!
//! Both sources (this file watcher and the long-poll client in
//! `poller.rs`) publish [`Snapshot`]s into a `watch` channel: the reconcile
//! loop only ever sees the latest one, which is exactly "latest snapshot
//! wins while an apply runs".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashSet;

use edgenet_model::{parse_model, sanitize_view, view_for, Instance, NodeView};

use crate::render::{fail_closed_for, render, RenderSettings, Rendered};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

/// One node view as received, ready for the reconcile loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub node: String,
    /// The id the source gave (the server's `StateId`, or the id the model
    /// crate computes for a local file): the id fed back as `AppliedStateId`.
    pub state_id: String,
    /// The view with every invalid entity left out; `None` when nothing in
    /// it can be used (the applied state is then kept).
    pub view: Option<Arc<NodeView>>,
    /// What was left out, one `path: message` line each.
    pub left_out: Vec<String>,
    /// Instances the view named but that were left out as invalid. They
    /// must fail closed: without them in the view, render would give their
    /// addresses no verdict at all, and traffic to them would pass.
    pub removed_instances: Vec<Instance>,
}

impl Snapshot {
    /// Validates `view` the way an agent must (MODEL.md): leave out what is
    /// invalid, keep the rest.
    pub fn from_view(node: &str, state_id: String, view: &NodeView) -> Snapshot {
        let sanitized = sanitize_view(view);
        let kept: HashSet<&Instance> = sanitized
            .view
            .iter()
            .flat_map(|clean| &clean.instances)
            .collect();
        let removed_instances = view
            .instances
            .iter()
            .filter(|instance| !kept.contains(instance))
            .cloned()
            .collect();
        Snapshot {
            node: node.to_string(),
            state_id,
            view: sanitized.view.map(Arc::new),
            left_out: sanitized.left_out.iter().map(ToString::to_string).collect(),
            removed_instances,
        }
    }

    /// The kernel state this snapshot asks for, with the instances that were
    /// left out failing closed. `None` when nothing in the view is usable.
    pub fn render(&self, settings: &RenderSettings) -> Option<Rendered> {
        let view = self.view.as_deref()?;
        let mut rendered = render(view, settings);
        fail_closed_for(&mut rendered.desired, &self.removed_instances);
        rendered.desired.state_id = Some(self.state_id.clone());
        Some(rendered)
    }
}

/// The channel the sources publish into. `None` until the first snapshot.
pub type SnapshotSender = watch::Sender<Option<Arc<Snapshot>>>;
pub type SnapshotReceiver = watch::Receiver<Option<Arc<Snapshot>>>;

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

    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cloud.json")
    }

    /// MODEL.md: an instance that fails validation gets no access. Gone
    /// from the view, its address must still meet a `drop`, never no rule.
    #[test]
    fn an_invalid_instance_fails_closed() {
        use crate::desired::{Family, TableId, DROP_VALUE};
        use crate::render::instances_map_name;

        let model = parse_model(&std::fs::read(example()).unwrap()).unwrap();
        let mut view = view_for(&model, "nc-1").unwrap();
        view.instances[0].mac = "not-a-mac".into();
        let invalid_ip = view.instances[0].private_ip.clone();
        let snapshot = Snapshot::from_view("nc-1", "v1-test".into(), &view);
        assert_eq!(snapshot.removed_instances.len(), 1);
        assert!(
            snapshot.left_out[0].contains(".mac:"),
            "{:?}",
            snapshot.left_out
        );

        let rendered = snapshot.render(&RenderSettings::default()).unwrap();
        let inet = &rendered.desired.tables[&TableId::ours(Family::Inet)];
        let verdicts = &inet.sets[&instances_map_name(crate::desired::IpFamily::V4)].elements;
        assert_eq!(verdicts[invalid_ip.as_str()].as_deref(), Some(DROP_VALUE));
        let valid_ip = &view.instances[1].private_ip;
        assert_ne!(verdicts[valid_ip.as_str()].as_deref(), Some(DROP_VALUE));
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
