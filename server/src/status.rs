//! Per-node feedback (`AppliedStateId`, `ApplyError`, last seen), the model
//! file's load status, and the `DescribeNodeStatus` document.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use edgenet_model::ModelIndex;
use serde::Serialize;

use crate::params::Feedback;
use crate::source::SourceKind;

/// What a node last told the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRecord {
    pub last_seen: Option<SystemTime>,
    pub applied_state_id: Option<String>,
    pub error: Option<String>,
}

/// Feedback of every node that polled. With replicas (etcd) it also holds
/// what the other replicas wrote, and remembers which records changed here
/// since they were last written to the store.
#[derive(Default)]
pub struct FeedbackStore {
    inner: Mutex<Records>,
}

#[derive(Default)]
struct Records {
    nodes: HashMap<String, NodeRecord>,
    /// Nodes recorded here since they were last taken by
    /// [`FeedbackStore::take_dirty`]: whether the applied id or error
    /// changed (not just LastSeen), and when the node was first marked.
    dirty: Option<HashMap<String, (bool, u64)>>,
    /// Counts markings, to take the longest-waiting records first.
    marks: u64,
}

impl FeedbackStore {
    /// A store whose local records are written out for the other replicas.
    pub fn replicated() -> Self {
        FeedbackStore {
            inner: Mutex::new(Records {
                nodes: HashMap::new(),
                dirty: Some(HashMap::new()),
                marks: 0,
            }),
        }
    }

    /// Records a poll of `node` (docs/protocol.md "Feedback semantics"): an
    /// `ApplyError` is kept; `AppliedStateId` without `ApplyError` clears it;
    /// a poll with neither only updates LastSeen.
    pub fn record(&self, node: &str, feedback: &Feedback, now: SystemTime) {
        let mut inner = self.lock();
        let record = inner.nodes.entry(node.to_owned()).or_default();
        let before = (record.applied_state_id.clone(), record.error.clone());
        record.last_seen = Some(now);
        if let Some(applied) = &feedback.applied_state_id {
            record.applied_state_id = Some(applied.clone()).filter(|a| !a.is_empty());
            record.error = None;
        }
        if let Some(error) = &feedback.apply_error {
            record.error = Some(error.clone());
        }
        let changed = before != (record.applied_state_id.clone(), record.error.clone());
        inner.marks += 1;
        let mark = inner.marks;
        if let Some(dirty) = inner.dirty.as_mut() {
            dirty.entry(node.to_owned()).or_insert((false, mark)).0 |= changed;
        }
    }

    /// Takes in another replica's record of `node` if it saw the node last.
    pub fn merge(&self, node: &str, remote: NodeRecord) {
        let mut inner = self.lock();
        let local = inner.nodes.entry(node.to_owned()).or_default();
        if remote.last_seen > local.last_seen {
            *local = remote;
        }
    }

    /// Up to `max` records changed here: those whose applied id or error
    /// changed first, then the longest waiting; the rest stay for the next
    /// call, so under any load every record is written in its turn.
    pub fn take_dirty(&self, max: usize) -> Vec<(String, NodeRecord)> {
        let mut inner = self.lock();
        let Some(dirty) = inner.dirty.as_mut() else {
            return Vec::new();
        };
        let mut nodes: Vec<(String, (bool, u64))> =
            dirty.iter().map(|(n, m)| (n.clone(), *m)).collect();
        nodes.sort_by(|(_, (changed_a, mark_a)), (_, (changed_b, mark_b))| {
            changed_b.cmp(changed_a).then(mark_a.cmp(mark_b))
        });
        nodes.truncate(max);
        for (node, _) in &nodes {
            dirty.remove(node);
        }
        nodes
            .into_iter()
            .filter_map(|(node, _)| {
                let record = inner.nodes.get(&node)?.clone();
                Some((node, record))
            })
            .collect()
    }

    pub fn get(&self, node: &str) -> NodeRecord {
        self.lock().nodes.get(node).cloned().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The model source as last read.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    pub source: SourceKind,
    /// The model file, or the etcd key prefix.
    pub path: String,
    pub loaded_at: SystemTime,
    /// Validation errors of the last refused file, until a valid one loads.
    pub last_error: Option<String>,
    pub invalid_count: u64,
    /// With etcd: the commit revision served.
    pub revision: Option<i64>,
    /// With etcd: why the store cannot be reached now.
    pub store_error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct StatusDoc<'a> {
    nodes: Vec<NodeDoc>,
    model: ModelDoc<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeDoc {
    node_id: String,
    current_state_id: String,
    applied_state_id: Option<String>,
    last_seen: Option<String>,
    error: Option<String>,
    converged: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ModelDoc<'a> {
    source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    store_error: Option<&'a str>,
    path: &'a str,
    loaded_at: String,
    last_error: Option<&'a str>,
    invalid_count: u64,
}

/// The `DescribeNodeStatus` JSON: every node of the model, sorted by id.
pub fn describe_node_status(
    index: &ModelIndex,
    feedback: &FeedbackStore,
    model: &ModelStatus,
) -> Vec<u8> {
    let mut node_ids: Vec<&str> = index.node_ids().collect();
    node_ids.sort_unstable();
    let nodes = node_ids
        .into_iter()
        .filter_map(|node| {
            let current = index.state_id(node)?.as_str().to_owned();
            let record = feedback.get(node);
            let converged = record.error.is_none()
                && record.applied_state_id.as_deref() == Some(current.as_str());
            Some(NodeDoc {
                node_id: node.to_owned(),
                current_state_id: current,
                applied_state_id: record.applied_state_id,
                last_seen: record.last_seen.map(rfc3339),
                error: record.error,
                converged,
            })
        })
        .collect();
    let doc = StatusDoc {
        nodes,
        model: ModelDoc {
            source: model.source.as_str(),
            revision: model.revision,
            store_error: model.store_error.as_deref(),
            path: &model.path,
            loaded_at: rfc3339(model.loaded_at),
            last_error: model.last_error.as_deref(),
            invalid_count: model.invalid_count,
        },
    };
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// RFC 3339 UTC with whole seconds, e.g. `2026-11-27T17:40:26Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from(t)
        .format(&fmt)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fb(applied: Option<&str>, error: Option<&str>) -> Feedback {
        Feedback {
            applied_state_id: applied.map(str::to_owned),
            apply_error: error.map(str::to_owned),
        }
    }

    #[test]
    fn feedback_semantics() {
        let store = FeedbackStore::default();
        let now = SystemTime::UNIX_EPOCH;
        store.record("nc-1", &fb(None, None), now);
        assert_eq!(store.get("nc-1").last_seen, Some(now));
        store.record("nc-1", &fb(Some("v1-a"), Some("bad rule")), now);
        let r = store.get("nc-1");
        assert_eq!(
            (r.applied_state_id.as_deref(), r.error.as_deref()),
            (Some("v1-a"), Some("bad rule"))
        );
        store.record("nc-1", &fb(None, None), now);
        assert_eq!(
            store.get("nc-1").error.as_deref(),
            Some("bad rule"),
            "a bare poll changes nothing"
        );
        store.record("nc-1", &fb(Some("v1-b"), None), now);
        let r = store.get("nc-1");
        assert_eq!(
            (r.applied_state_id.as_deref(), r.error),
            (Some("v1-b"), None)
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_801_226);
        assert_eq!(rfc3339(t), "2026-11-27T17:40:26Z");
    }
}
