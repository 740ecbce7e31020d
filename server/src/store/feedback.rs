//! Node feedback shared by the replicas: each writes what its nodes told it
//! to `P/status/<node>` in one transaction a second at most, and takes in
//! what the others wrote through its model watch, so `DescribeNodeStatus`
//! on any replica shows the whole fleet (docs/store.md).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{Client, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::layout::{Key, Layout};
use crate::metrics::Metrics;
use crate::status::{FeedbackStore, NodeRecord};

/// How often a replica writes its nodes' feedback.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// etcd's default limit of operations in one transaction.
pub const MAX_TXN_OPS: usize = 128;

/// The value of `P/status/<node>`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StatusValue {
    applied_state_id: Option<String>,
    error: Option<String>,
    /// RFC 3339 with milliseconds, so replicas order polls within a second.
    last_seen: Option<String>,
}

pub fn encode(record: &NodeRecord) -> Vec<u8> {
    let value = StatusValue {
        applied_state_id: record.applied_state_id.clone(),
        error: record.error.clone(),
        last_seen: record.last_seen.and_then(|t| {
            let t = OffsetDateTime::from(t);
            let t = t
                .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
                .ok()?;
            t.format(&Rfc3339).ok()
        }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

pub fn decode(bytes: &[u8]) -> Option<NodeRecord> {
    let value: StatusValue = serde_json::from_slice(bytes).ok()?;
    let last_seen = match value.last_seen {
        Some(text) => Some(SystemTime::from(
            OffsetDateTime::parse(&text, &Rfc3339).ok()?,
        )),
        None => None,
    };
    Some(NodeRecord {
        last_seen,
        applied_state_id: value.applied_state_id,
        error: value.error,
    })
}

impl FeedbackStore {
    /// [`FeedbackStore::merge`] of a `P/status/<node>` value; one that does
    /// not decode is ignored (another writer's mistake must not stop us).
    pub fn merge_encoded(&self, node: &str, bytes: &[u8]) {
        match decode(bytes) {
            Some(record) => self.merge(node, record),
            None => tracing::debug!(node, "ignoring an undecodable status record"),
        }
    }
}

/// Writes the records changed here once a [`FLUSH_INTERVAL`], at most
/// [`MAX_TXN_OPS`] of them in one transaction; the rest wait their turn.
/// Records that fail to be written are marked again by the next poll.
pub async fn flush_loop(
    client: Client,
    layout: Layout,
    feedback: Arc<FeedbackStore>,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let records = feedback.take_dirty(MAX_TXN_OPS);
        if records.is_empty() {
            continue;
        }
        let ops: Vec<TxnOp> = records
            .iter()
            .map(|(node, record)| {
                let key = layout.key(&Key::Status(node.clone()));
                TxnOp::put(key, encode(record), None::<PutOptions>)
            })
            .collect();
        if let Err(e) = super::kv(&client).txn(Txn::new().and_then(ops)).await {
            metrics.etcd_error();
            tracing::warn!(error = %e, records = records.len(), "cannot write node feedback to etcd");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_the_store_to_the_millisecond() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_801_226_123);
        let record = NodeRecord {
            last_seen: Some(at),
            applied_state_id: Some("v1-abc".into()),
            error: None,
        };
        assert_eq!(decode(&encode(&record)), Some(record));
    }

    #[test]
    fn the_later_poll_wins_whichever_replica_saw_it() {
        let store = FeedbackStore::replicated();
        let early = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let late = early + Duration::from_millis(5);
        let feedback = crate::params::Feedback {
            applied_state_id: Some("v1-new".into()),
            apply_error: None,
        };
        store.record("nc-1", &feedback, late);
        let older = NodeRecord {
            last_seen: Some(early),
            applied_state_id: Some("v1-old".into()),
            error: None,
        };
        store.merge("nc-1", older);
        assert_eq!(
            store.get("nc-1").applied_state_id.as_deref(),
            Some("v1-new")
        );
        let dirty = store.take_dirty(MAX_TXN_OPS);
        assert_eq!(dirty.len(), 1);
        assert!(store.take_dirty(MAX_TXN_OPS).is_empty());
    }

    #[test]
    fn changed_records_go_first_then_the_longest_waiting() {
        let store = FeedbackStore::replicated();
        let now = SystemTime::UNIX_EPOCH;
        let seen = crate::params::Feedback::default();
        let applied = crate::params::Feedback {
            applied_state_id: Some("v1-a".into()),
            apply_error: None,
        };
        store.record("nc-9", &seen, now);
        store.record("nc-1", &seen, now);
        store.record("nc-5", &applied, now);
        let order = |records: Vec<(String, NodeRecord)>| -> Vec<String> {
            records.into_iter().map(|(node, _)| node).collect()
        };
        assert_eq!(order(store.take_dirty(2)), ["nc-5", "nc-9"]);
        assert_eq!(order(store.take_dirty(2)), ["nc-1"]);
    }
}
