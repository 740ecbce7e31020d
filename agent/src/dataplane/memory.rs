//! An in-memory kernel, for agent tests that are not about the kernel.
//!
//! It behaves like the Linux dataplane where the agent can tell: nft
//! changes are all-or-nothing, changes on devices that are "down" are
//! deferred, and tampering with the state sends a drift event. It counts
//! what it is asked to do.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{ApplyReport, Dataplane, DataplaneError, DeferredChange};
use crate::diff::{Change, ChangeSet};
use crate::state::{DriftEvent, DriftKind, KernelState};

/// Counters of what the memory dataplane was asked to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub reads: usize,
    pub applies: usize,
    pub failed_applies: usize,
    /// Route and address changes made (one netlink request each on Linux).
    pub netlink_ops: usize,
    /// nft changes made.
    pub nft_changes: usize,
    pub nft_transactions: usize,
}

#[derive(Debug, Default)]
struct Inner {
    kernel: KernelState,
    stats: MemoryStats,
    fail_next_applies: usize,
    missing_devices: BTreeSet<String>,
    drift_tx: Option<mpsc::Sender<DriftEvent>>,
}

/// Cheap to clone: clones share the same kernel, so a test keeps a handle
/// to inspect and tamper with while the agent owns another.
#[derive(Debug, Clone, Default)]
pub struct MemoryDataplane {
    inner: Arc<Mutex<Inner>>,
    drift_rx: Arc<Mutex<Option<mpsc::Receiver<DriftEvent>>>>,
}

impl MemoryDataplane {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(64);
        let dataplane = MemoryDataplane::default();
        dataplane.lock().drift_tx = Some(tx);
        *dataplane.drift_rx.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
        dataplane
    }

    /// Starts with `kernel` already in place (a restart on a set-up node).
    pub fn with_state(kernel: KernelState) -> Self {
        let dataplane = MemoryDataplane::new();
        dataplane.lock().kernel = kernel;
        dataplane
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn kernel(&self) -> KernelState {
        self.lock().kernel.clone()
    }

    pub fn stats(&self) -> MemoryStats {
        self.lock().stats.clone()
    }

    /// The next `n` applies fail (with nothing applied).
    pub fn fail_next_applies(&self, n: usize) {
        self.lock().fail_next_applies = n;
    }

    /// Changes on this device are deferred until `set_device_up`.
    pub fn set_device_down(&self, device: &str) {
        self.lock().missing_devices.insert(device.to_string());
    }

    pub fn set_device_up(&self, device: &str) {
        self.lock().missing_devices.remove(device);
    }

    /// Someone else changes the kernel. A drift event is sent for each
    /// route or address that was ours and is gone or different.
    pub fn tamper(&self, change: impl FnOnce(&mut KernelState)) {
        let mut inner = self.lock();
        let before = inner.kernel.clone();
        change(&mut inner.kernel);
        let events = drift_between(&before, &inner.kernel);
        if let Some(tx) = &inner.drift_tx {
            for event in events {
                let _ = tx.try_send(event);
            }
        }
    }
}

fn drift_between(before: &KernelState, after: &KernelState) -> Vec<DriftEvent> {
    let mut events = Vec::new();
    for (key, spec) in &before.routes {
        let what = match after.routes.get(key) {
            None => DriftKind::Removed,
            Some(now) if now != spec => DriftKind::Changed,
            Some(_) => continue,
        };
        events.push(DriftEvent {
            object: format!("route {}", spec.describe(key)),
            what,
        });
    }
    for entry in before.addresses.difference(&after.addresses) {
        events.push(DriftEvent {
            object: format!("address {entry}"),
            what: DriftKind::Removed,
        });
    }
    events
}

fn device_of<'a>(change: &Change<'a>) -> Option<&'a str> {
    match *change {
        Change::AddRoute { spec, .. } | Change::ChangeRoute { new: spec, .. } => {
            spec.device.as_deref()
        }
        Change::AddAddress(entry) => Some(entry.device.as_str()),
        _ => None,
    }
}

#[async_trait]
impl Dataplane for MemoryDataplane {
    async fn read(&mut self) -> Result<KernelState, DataplaneError> {
        let mut inner = self.lock();
        inner.stats.reads += 1;
        Ok(inner.kernel.clone())
    }

    async fn apply<'a>(
        &mut self,
        changes: &ChangeSet<'a>,
        _desired: &KernelState,
        state_id: &str,
    ) -> Result<ApplyReport<'a>, DataplaneError> {
        let mut inner = self.lock();
        inner.stats.applies += 1;
        if inner.fail_next_applies > 0 {
            inner.fail_next_applies -= 1;
            inner.stats.failed_applies += 1;
            return Err(DataplaneError::Injected {
                context: format!("memory dataplane refused {} changes", changes.len()),
            });
        }
        let mut report = ApplyReport::default();
        let deferred: Vec<DeferredChange> = changes
            .netlink_changes()
            .filter_map(|change| {
                let device = device_of(change)?;
                inner
                    .missing_devices
                    .contains(device)
                    .then(|| DeferredChange {
                        change: *change,
                        reason: format!("device {device} does not exist"),
                    })
            })
            .collect();
        report.deferred = deferred;
        let skipped = report.deferred_changes();
        changes.apply_to(&mut inner.kernel, &skipped);
        let netlink = changes.netlink_changes().count() - skipped.len();
        let nft = changes.nft_changes().count();
        let state_changed = inner.kernel.state_id.as_deref() != Some(state_id);
        report.netlink_ops = netlink;
        report.nft_transactions = usize::from(nft > 0 || state_changed);
        report.applied = netlink + nft;
        inner.kernel.state_id = Some(state_id.to_string());
        inner.stats.netlink_ops += netlink;
        inner.stats.nft_changes += nft;
        inner.stats.nft_transactions += report.nft_transactions;
        Ok(report)
    }

    fn drift_events(&mut self) -> Option<mpsc::Receiver<DriftEvent>> {
        self.drift_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::diff;
    use crate::render::{render, RenderSettings};

    fn desired() -> KernelState {
        let view = serde_json::from_str(include_str!("testdata/view-nc-1.json"))
            .expect("fixture view parses");
        render(&view, &RenderSettings::default()).desired
    }

    #[tokio::test]
    async fn apply_then_read_back_then_nothing_to_do() {
        let mut dp = MemoryDataplane::new();
        let want = desired();
        let actual = dp.read().await.unwrap();
        let changes = diff(&actual, &want);
        let report = dp.apply(&changes, &want, "v1-a").await.unwrap();
        assert_eq!(report.applied, changes.len());
        let back = dp.read().await.unwrap();
        assert_eq!(back.state_id.as_deref(), Some("v1-a"));
        assert!(diff(&back, &want).is_empty());
        let again = dp.apply(&diff(&back, &want), &want, "v1-a").await.unwrap();
        assert_eq!((again.applied, again.nft_transactions), (0, 0));
    }

    #[tokio::test]
    async fn failed_apply_changes_nothing_and_missing_device_defers() {
        let mut dp = MemoryDataplane::new();
        let want = desired();
        let empty = KernelState::default();
        let changes = diff(&empty, &want);
        dp.fail_next_applies(1);
        assert!(dp.apply(&changes, &want, "v1-a").await.is_err());
        assert_eq!(dp.kernel(), KernelState::default());
        dp.set_device_down("br0");
        let report = dp.apply(&changes, &want, "v1-a").await.unwrap();
        assert_eq!(report.deferred.len(), 1);
        dp.set_device_up("br0");
        let now = dp.read().await.unwrap();
        let rest = diff(&now, &want);
        assert_eq!(rest.len(), 1);
        dp.apply(&rest, &want, "v1-a").await.unwrap();
        assert!(diff(&dp.read().await.unwrap(), &want).is_empty());
    }

    #[tokio::test]
    async fn tampering_with_our_route_sends_a_drift_event() {
        let want = desired();
        let mut kernel = want.clone();
        kernel.state_id = Some("v1-a".into());
        let mut dp = MemoryDataplane::with_state(kernel);
        let mut events = dp.drift_events().expect("first call has the receiver");
        assert!(dp.drift_events().is_none());
        dp.tamper(|k| k.routes.clear());
        let event = events.recv().await.unwrap();
        assert_eq!(event.what, DriftKind::Removed);
        assert!(event.object.starts_with("route 10.2.0.0/16"));
    }
}
