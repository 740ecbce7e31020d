//! `edgenet-server model push FILE` and `model pull` (docs/store.md).
//!
//! A push validates the file, reads everything under the prefix, writes
//! only the keys whose value differs (deleting the keys the file no longer
//! has), in as few transactions as etcd's limits allow, and puts `P/commit`
//! last. Every transaction compares the keys it writes against the
//! revision read and the commit against the commit read, so a concurrent
//! writer makes the push fail instead of being overwritten.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use edgenet_model::{parse_model, CloudModel, Route};
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde_json::Value;

use super::feedback::MAX_TXN_OPS;
use super::layout::{entries_of, model_of, to_json, Entries, Key, Layout, COMMIT_SCHEMA};
use super::{kv, read_committed, read_newest, EtcdConfig, StoreError};

/// etcd's default request limit is 1.5 MiB; stay under it with room for
/// the request's own framing.
const MAX_TXN_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is invalid, nothing written:\n{}", .errors.join("\n"))]
    Invalid { path: String, errors: Vec<String> },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("another writer changed the model under {prefix} while this push ran ({written} of {total} transactions written, not committed): read again and retry")]
    Concurrent {
        prefix: String,
        written: usize,
        total: usize,
    },
    #[error("nothing is committed under {0}")]
    NothingCommitted(String),
    #[error("the committed model does not decode:\n{}", .0.join("\n"))]
    Undecodable(Vec<String>),
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    pub puts: usize,
    pub deletes: usize,
    pub transactions: usize,
    /// The revision of the commit written; `None` when nothing differed.
    pub commit_revision: Option<i64>,
}

/// Validates `file` and writes what differs from the store.
pub async fn push(config: &EtcdConfig, file: &Path) -> Result<PushReport, PushError> {
    let path = file.display().to_string();
    let bytes = std::fs::read(file).map_err(|e| PushError::Read {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let model = parse_model(&bytes).map_err(|e| PushError::Invalid {
        path,
        errors: e.lines(),
    })?;
    let mut client = config.connect().await?;
    push_model(&mut client, &config.layout(), &model).await
}

/// Writes `model` (valid) over what is under the prefix, then commits.
pub async fn push_model(
    client: &mut Client,
    layout: &Layout,
    model: &CloudModel,
) -> Result<PushReport, PushError> {
    PushPlan::read(client, layout, model)
        .await?
        .write(client)
        .await
}

/// The writes of one push, planned against one read of the store.
pub struct PushPlan {
    layout: Layout,
    batches: Vec<Vec<Write>>,
    /// Keys written after the last commit (a push that failed half-way):
    /// overwritten or deleted like the others, and the commit makes the
    /// model whole again, so a commit is due even with nothing to write.
    leftovers: bool,
    guard: Guard,
    report: PushReport,
}

impl PushPlan {
    /// Reads everything under the prefix and plans what differs.
    pub async fn read(
        client: &mut Client,
        layout: &Layout,
        model: &CloudModel,
    ) -> Result<Self, PushError> {
        let snapshot = read_newest(client, layout).await?;
        let mut stored = snapshot.model;
        let leftovers = !snapshot.uncommitted.is_empty();
        stored.extend(snapshot.uncommitted);
        let wanted = keep_route_names(entries_of(model), &stored);
        let ops = writes(&stored, &wanted);
        let report = PushReport {
            puts: ops.iter().filter(|op| op.1.is_some()).count(),
            deletes: ops.iter().filter(|op| op.1.is_none()).count(),
            ..PushReport::default()
        };
        Ok(PushPlan {
            layout: layout.clone(),
            batches: batch(ops),
            leftovers,
            guard: Guard {
                commit_key: layout.key(&Key::Commit),
                commit_revision: snapshot.commit_revision.unwrap_or(0),
                read_revision: snapshot.revision,
            },
            report,
        })
    }

    /// Writes the batches, the commit with the last one when it fits.
    pub async fn write(mut self, client: &mut Client) -> Result<PushReport, PushError> {
        if self.batches.is_empty() && !self.leftovers {
            return Ok(self.report);
        }
        let commit_fits = self.batches.last().is_some_and(|b| b.len() < MAX_TXN_OPS);
        let total = self.batches.len() + usize::from(!commit_fits);
        for (written, batch) in self.batches.iter().enumerate() {
            let with_commit = commit_fits && written + 1 == self.batches.len();
            if !self
                .guard
                .run(client, &self.layout, batch, with_commit)
                .await?
            {
                return Err(self.concurrent(written, total));
            }
            self.report.transactions += 1;
        }
        if !commit_fits {
            if !self.guard.run(client, &self.layout, &[], true).await? {
                return Err(self.concurrent(self.report.transactions, total));
            }
            self.report.transactions += 1;
        }
        let answer = kv(client)
            .get(self.guard.commit_key.clone(), None)
            .await
            .map_err(StoreError::from)?;
        self.report.commit_revision = answer.kvs().first().map(|kv| kv.mod_revision());
        Ok(self.report)
    }

    fn concurrent(&self, written: usize, total: usize) -> PushError {
        PushError::Concurrent {
            prefix: self.layout.prefix().to_owned(),
            written,
            total,
        }
    }
}

/// The committed model as a model file.
pub async fn pull(config: &EtcdConfig) -> Result<CloudModel, PushError> {
    let mut client = config.connect().await?;
    let layout = config.layout();
    let snapshot = read_committed(&mut client, &layout).await?;
    if snapshot.commit_revision.is_none() {
        return Err(PushError::NothingCommitted(layout.prefix().to_owned()));
    }
    model_of(&snapshot.model).map_err(PushError::Undecodable)
}

/// One key to write (`Some(value)`) or delete (`None`).
type Write = (Key, Option<Vec<u8>>);

/// What turns `stored` into `wanted`. Values are compared as JSON, so a
/// controller's formatting or key order is no difference.
fn writes(stored: &Entries, wanted: &Entries) -> Vec<Write> {
    let mut ops = Vec::new();
    for (key, value) in wanted {
        let same = stored.get(key).is_some_and(|old| same_json(old, value));
        if !same {
            ops.push((key.clone(), Some(value.clone())));
        }
    }
    for key in stored.keys().filter(|k| !wanted.contains_key(*k)) {
        ops.push((key.clone(), None));
    }
    ops
}

fn same_json(a: &[u8], b: &[u8]) -> bool {
    a == b
        || matches!(
            (serde_json::from_slice::<Value>(a), serde_json::from_slice::<Value>(b)),
            (Ok(a), Ok(b)) if a == b
        )
}

/// A route that is stored under a name of its writer's keeps that name:
/// routes are their content, and renaming one would be a change for nothing.
fn keep_route_names(mut wanted: Entries, stored: &Entries) -> Entries {
    let mut stored_routes: HashMap<Route, Vec<String>> = HashMap::new();
    for (key, value) in stored {
        if let (Key::Route(name), Ok(route)) = (key, serde_json::from_slice::<Route>(value)) {
            stored_routes.entry(route).or_default().push(name.clone());
        }
    }
    let hashed: Vec<(Key, Vec<u8>)> = wanted
        .iter()
        .filter(|(k, _)| matches!(k, Key::Route(_)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, value) in hashed {
        let Ok(route) = serde_json::from_slice::<Route>(&value) else {
            continue;
        };
        if let Some(name) = stored_routes.get_mut(&route).and_then(Vec::pop) {
            wanted.remove(&key);
            wanted.insert(Key::Route(name), value);
        }
    }
    wanted
}

/// Splits writes into transactions within etcd's limits: one compare per
/// key plus the commit's, so at most `MAX_TXN_OPS - 1` keys each.
fn batch(ops: Vec<Write>) -> Vec<Vec<Write>> {
    let mut batches: Vec<Vec<Write>> = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = 64 + 2 * op.0.suffix().len() + op.1.as_ref().map_or(0, Vec::len);
        let full = batches
            .last()
            .is_none_or(|b| b.len() + 1 >= MAX_TXN_OPS || bytes + size > MAX_TXN_BYTES);
        if full {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        batches.last_mut().expect("just pushed").push(op);
    }
    batches
}

fn commit_op(commit_key: &str) -> TxnOp {
    let at = crate::status::rfc3339(SystemTime::now());
    let value =
        serde_json::json!({"schema": COMMIT_SCHEMA, "by": "edgenet-server model push", "at": at});
    TxnOp::put(commit_key, to_json(&value), None::<PutOptions>)
}

/// The compares every transaction of one push carries.
struct Guard {
    commit_key: String,
    /// 0 when nothing was committed (the key must still not exist).
    commit_revision: i64,
    read_revision: i64,
}

impl Guard {
    /// Runs one transaction of `batch` (and the commit when `with_commit`):
    /// `false` when a compare failed, i.e. someone else wrote.
    async fn run(
        &self,
        client: &mut Client,
        layout: &Layout,
        batch: &[Write],
        with_commit: bool,
    ) -> Result<bool, PushError> {
        let mut compares = vec![Compare::mod_revision(
            self.commit_key.clone(),
            CompareOp::Equal,
            self.commit_revision,
        )];
        let mut ops = Vec::with_capacity(batch.len() + 1);
        for (key, value) in batch {
            let key = layout.key(key);
            // Written (or deleted) after our read: another writer's.
            compares.push(Compare::mod_revision(
                key.clone(),
                CompareOp::Less,
                self.read_revision + 1,
            ));
            ops.push(match value {
                Some(v) => TxnOp::put(key, v.clone(), None::<PutOptions>),
                None => TxnOp::delete(key, None),
            });
        }
        if with_commit {
            ops.push(commit_op(&self.commit_key));
        }
        let answer = kv(client)
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(StoreError::from)?;
        Ok(answer.succeeded())
    }
}
