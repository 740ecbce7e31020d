//! Where the served model comes from: the model file (`--model`, [`file`])
//! or etcd (`--etcd`, [`etcd`]). Both hand the hub the same thing: a
//! validated model and the entity-level change from the one served before,
//! so the index recomputes only the views the change reaches. Both refuse an
//! invalid model and keep serving the last valid one (docs/store.md).

pub mod etcd;
pub mod file;

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use edgenet_model::{CloudModel, ModelChange};

use crate::hub::{Hub, SwapReport};
use crate::metrics::Metrics;
use crate::status::ModelStatus;

/// Which kind of source serves the model (`DescribeNodeStatus.Model.Source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    File,
    Etcd,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::File => "file",
            SourceKind::Etcd => "etcd",
        }
    }
}

/// What became of a source's last reads, shared between the source task
/// and the request handlers.
pub struct SourceStatus {
    status: Mutex<ModelStatus>,
}

impl SourceStatus {
    /// `path`: the file, or for etcd the key prefix.
    pub fn new(kind: SourceKind, path: String) -> Arc<Self> {
        Arc::new(SourceStatus {
            status: Mutex::new(ModelStatus {
                source: kind,
                path,
                loaded_at: SystemTime::now(),
                last_error: None,
                invalid_count: 0,
                revision: None,
                store_error: None,
            }),
        })
    }

    pub fn snapshot(&self) -> ModelStatus {
        self.lock().clone()
    }

    /// A valid model is served (at `revision` for etcd).
    pub fn loaded(&self, revision: Option<i64>) {
        let mut status = self.lock();
        status.loaded_at = SystemTime::now();
        status.last_error = None;
        status.revision = revision.or(status.revision);
    }

    /// A model was refused: every error is kept until a valid one loads.
    pub fn refused(&self, metrics: &Metrics, what: &str, errors: &[String]) {
        metrics.reload_refused();
        for line in errors {
            tracing::error!(source = what, "{line}");
        }
        tracing::error!(
            source = what,
            errors = errors.len(),
            "model refused; still serving the last valid model"
        );
        let mut status = self.lock();
        status.invalid_count += 1;
        status.last_error = Some(errors.join("\n"));
    }

    /// The store cannot be reached (`Some(reason)`) or can again (`None`).
    pub fn set_store_error(&self, reason: Option<String>) {
        self.lock().store_error = reason;
    }

    /// Why the server is not healthy, if it is not: `/healthz` answers 503
    /// with this reason (the last model is still served).
    pub fn unhealthy_reason(&self) -> Option<String> {
        self.lock().store_error.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ModelStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Installs a validated `model` that is the served one with `change`
/// applied, off the async threads (the index work is CPU-bound). An empty
/// change installs nothing: a re-read that found the same model is no
/// change for anyone.
pub async fn install(hub: &Arc<Hub>, model: CloudModel, change: ModelChange) -> SwapReport {
    if change.is_empty() {
        return SwapReport::default();
    }
    let hub = hub.clone();
    tokio::task::spawn_blocking(move || hub.install_change(Arc::new(model), &change))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "installing a model failed; still serving the last one");
            SwapReport::default()
        })
}
